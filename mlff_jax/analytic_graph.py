"""Graph layouts for the analytic sweep, and the message-passing steps written for each.

The sweep in :mod:`mlff_jax.analytic` works on "unique edges" u: every geometric quantity (vec, d,
dir, the radial filter W) is computed once per unique edge. Layouts:

* :class:`~mlff_jax.graph.Edges` (directed, any edge set): unique edge = directed edge; sums over
  edges are scatter-adds (``segment_sum``). Correct for any edge list, symmetric or not.
* :class:`PairGraph` (symmetric edge sets): unique edge = unordered pair {i, j}. The two directed
  edges i -> j and j -> i share d and W and have opposite directions, so the filter network runs
  once per pair (half the work of the dominant matmuls). Sums over edges are either scatter-adds
  over the pair's two atoms, or (with a per-atom neighbour table) gathers reduced over the table's
  slot axis: no atomics, the same result on every run.

For a pair p the canonical edge is first -> second: ``vec_p = R_first - R_second + shift_p``. The
reverse edge second -> first has vector ``-vec_p`` (exactly: IEEE negation and subtraction are
antisymmetric), hence the same d and the direction ``-dir_p``.

Each layout provides, as functions of (graph, ...): ``edge_vectors``, ``message``,
``message_backward``, ``positions_gradient`` and ``edge_structures``; :func:`ops_for` picks them.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mlff_jax.graph import Edges


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PairGraph:
    """Unordered pairs, optionally with a per-atom neighbour table (P pairs, N atoms, M slots per atom).

    Attributes:
      first, second: [P] int32, the pair's atoms; the canonical edge is first -> second.
      shifts: [P, 3] Å, periodic shift of the canonical edge: vec_p = R_first - R_second + shift_p.
      mask: [P] bool, False for padding pairs (they contribute exactly zero).
      neighbors: [N, M] int32, for atom a and slot m, the atom b of the incoming edge b -> a.
      neighbor_pairs: [N, M] int32, the pair of that edge (padding slots: a pair whose mask is False).
      neighbor_signs: [N, M] float, +1 when a is the pair's ``second`` (the incoming edge is the
        canonical one, direction +dir_p), -1 when a is its ``first`` (direction -dir_p), 0 for
        padding slots.

    Every pair fills exactly two slots: (row second, sign +1) and (row first, sign -1); a periodic
    self-image pair (first == second) fills two slots of the same row.

    Without the neighbour table (the three fields None) the sums over edges are scatter-adds over
    the pairs' two atoms instead: same pair folding, no padded table, but atomics on a GPU (the
    summation order, hence the last bits, may change from run to run).
    """

    first: jax.Array
    second: jax.Array
    shifts: jax.Array
    mask: jax.Array
    neighbors: jax.Array | None = None
    neighbor_pairs: jax.Array | None = None
    neighbor_signs: jax.Array | None = None

    @property
    def num_pairs(self) -> int:
        return self.first.shape[0]


# ------------------------------------------------------------------------------------- builders
def _neighbor_table(first: np.ndarray, second: np.ndarray, num_atoms: int, max_neighbors: int | None):
    """Host-side neighbour table of a pair list. Padding slots point at pair index P (the caller
    appends one masked pair there). Slots of a row are sorted by pair, so the layout is deterministic."""
    num_pairs = len(first)
    rows = np.concatenate([second, first]).astype(np.int64)
    nbrs = np.concatenate([first, second])
    pairs = np.concatenate([np.arange(num_pairs), np.arange(num_pairs)])
    signs = np.concatenate([np.ones(num_pairs), -np.ones(num_pairs)])
    order = np.lexsort((signs, pairs, rows))
    rows, nbrs, pairs, signs = rows[order], nbrs[order], pairs[order], signs[order]
    degree = np.bincount(rows, minlength=num_atoms)
    width = int(degree.max(initial=0))
    if max_neighbors is not None:
        if max_neighbors < width:
            raise ValueError(f"max_neighbors={max_neighbors} is smaller than the largest degree {width}")
        width = max_neighbors
    starts = np.concatenate([[0], np.cumsum(degree)[:-1]])
    slot = np.arange(len(rows)) - starts[rows]
    table_nbrs = np.tile(np.arange(num_atoms, dtype=np.int32)[:, None], (1, width))
    table_pairs = np.full((num_atoms, width), num_pairs, np.int32)
    table_signs = np.zeros((num_atoms, width))
    table_nbrs[rows, slot] = nbrs
    table_pairs[rows, slot] = pairs
    table_signs[rows, slot] = signs
    needs_padding_pair = bool((table_signs == 0).any())
    return table_nbrs, table_pairs, table_signs, needs_padding_pair


ACCUMULATIONS = ("gather", "scatter")
# What PaiNNStudent uses for molecules, per platform, by measurement:
# - CPU (XLA, student-427k, 300-atom water box, one thread): scatter-adds take 0.64x the time of the
#   neighbour-table gathers (XLA's CPU loops over the [N, M, ...] gathers are slow);
# - GPU (H100): the same speed for 1,024 molecules of 10-30 atoms (9.87 µs/molecule with gathers,
#   9.90 with scatter-adds; benchmarks/results/throughput_layouts_h100.json); gathers are
#   deterministic (no atomics: the same bits every run), so they are the GPU default.
PLATFORM_ACCUMULATION = {"cpu": "scatter", "gpu": "gather", "cuda": "gather", "rocm": "gather"}
# Benchmarks may set this to "gather"/"scatter" to override the platform's choice for new traces.
ACCUMULATION_OVERRIDE: str | None = None


def default_accumulation() -> str:
    """The accumulation layout PaiNNStudent uses on the default backend (see PLATFORM_ACCUMULATION)."""
    if ACCUMULATION_OVERRIDE is not None:
        _check_accumulate(ACCUMULATION_OVERRIDE)
        return ACCUMULATION_OVERRIDE
    return PLATFORM_ACCUMULATION.get(jax.default_backend(), "scatter")


def _check_accumulate(accumulate: str) -> None:
    if accumulate not in ACCUMULATIONS:
        raise ValueError(f"accumulate must be one of {ACCUMULATIONS}, got {accumulate!r}")


def pair_graph_from_pairs(
    first, second, shifts, num_atoms: int, mask=None, max_neighbors: int | None = None, dtype=np.float64, accumulate: str = "gather"
) -> PairGraph:
    """Builds a :class:`PairGraph` on the host from an unordered pair list (numpy in, jax out).

    Args:
      first, second: [P] int atom indices (each unordered pair once).
      shifts: [P, 3] Å (vec = R_first - R_second + shift), or None for zeros.
      num_atoms: N.
      mask: optional [P] bool (default: all real).
      max_neighbors: optional slot count M (default: the largest degree); padding slots get sign 0.
      accumulate: "gather" (build the neighbour table) or "scatter" (no table).
    If any slot is padding, one masked pair is appended (index P) for those slots to point at.
    """
    _check_accumulate(accumulate)
    first = np.asarray(first, np.int32).reshape(-1)
    second = np.asarray(second, np.int32).reshape(-1)
    num_pairs = len(first)
    shifts = np.zeros((num_pairs, 3)) if shifts is None else np.asarray(shifts, np.float64).reshape(num_pairs, 3)
    mask = np.ones(num_pairs, bool) if mask is None else np.asarray(mask, bool).reshape(num_pairs)
    if len(second) != num_pairs:
        raise ValueError(f"first and second must have the same length, got {num_pairs} and {len(second)}")
    if num_pairs and (min(first.min(), second.min()) < 0 or max(first.max(), second.max()) >= num_atoms):
        raise ValueError(f"pair atom indices must lie in 0..{num_atoms - 1}")
    pair_arrays = (jnp.asarray(first), jnp.asarray(second), jnp.asarray(shifts, dtype), jnp.asarray(mask))
    if accumulate == "scatter":
        return PairGraph(*pair_arrays)
    nbrs, pairs, signs, needs_padding_pair = _neighbor_table(first, second, num_atoms, max_neighbors)
    if needs_padding_pair:
        first, second = np.append(first, 0), np.append(second, 0)
        shifts, mask = np.concatenate([shifts, np.zeros((1, 3))]), np.append(mask, False)
        pair_arrays = (jnp.asarray(first), jnp.asarray(second), jnp.asarray(shifts, dtype), jnp.asarray(mask))
    return PairGraph(*pair_arrays, jnp.asarray(nbrs), jnp.asarray(pairs), jnp.asarray(signs, dtype))


def pair_graph_from_edges(edges: Edges, num_atoms: int, max_neighbors: int | None = None, accumulate: str = "gather") -> PairGraph:
    """Host-side conversion of a symmetric directed edge list (concrete arrays) to a PairGraph.

    Masked edges are dropped. Raises ValueError when a real edge a -> b (shift S) has no real
    reverse b -> a (shift -S).
    """
    senders, receivers = np.asarray(edges.senders), np.asarray(edges.receivers)
    shifts, mask = np.asarray(edges.shifts, np.float64), np.asarray(edges.mask, bool)
    senders, receivers, shifts = senders[mask], receivers[mask], shifts[mask]
    key = {}
    for e, (a, b, s) in enumerate(zip(senders.tolist(), receivers.tolist(), map(tuple, shifts.tolist()))):
        key.setdefault((a, b, s), []).append(e)
    used = np.zeros(len(senders), bool)
    first, second, pair_shifts = [], [], []
    for e in range(len(senders)):
        if used[e]:
            continue
        a, b, s = int(senders[e]), int(receivers[e]), tuple(shifts[e].tolist())
        reverse = [r for r in key.get((b, a, tuple(-x + 0.0 for x in s)), []) if not used[r] and r != e]
        if not reverse:
            raise ValueError(f"edge {a} -> {b} (shift {list(s)}) has no reverse edge {b} -> {a}: the edge set is not symmetric")
        used[e] = used[reverse[0]] = True
        first.append(a), second.append(b), pair_shifts.append(s)
    return pair_graph_from_pairs(first, second, np.reshape(pair_shifts, (-1, 3)), num_atoms, max_neighbors=max_neighbors, dtype=edges.shifts.dtype, accumulate=accumulate)


@functools.lru_cache(maxsize=64)
def _all_pairs_layout(num_atoms: int):
    first, second = np.triu_indices(num_atoms, 1)
    nbrs, pairs, signs, _ = _neighbor_table(first, second, num_atoms, None)
    return first.astype(np.int32), second.astype(np.int32), nbrs, pairs, signs


def all_pairs_graph(atom_mask: jax.Array, batch: jax.Array, dtype=jnp.float32, accumulate: str = "gather") -> PairGraph:
    """Every unordered pair of real atoms of the same structure: P = N (N - 1) / 2, M = N - 1.

    The index tables are static (cached per N); only the mask depends on the inputs, so this works
    under ``jit``. atom_mask: [N] bool; batch: [N] int structure index; accumulate: "gather"
    (neighbour table) or "scatter".
    """
    _check_accumulate(accumulate)
    first, second, nbrs, pairs, signs = _all_pairs_layout(atom_mask.shape[0])
    mask = atom_mask[first] & atom_mask[second] & (batch[first] == batch[second])
    shifts = jnp.zeros((len(first), 3), dtype)
    if accumulate == "scatter":
        return PairGraph(jnp.asarray(first), jnp.asarray(second), shifts, mask)
    return PairGraph(jnp.asarray(first), jnp.asarray(second), shifts, mask, jnp.asarray(nbrs), jnp.asarray(pairs), jnp.asarray(signs, dtype))


def fold_symmetric_edges(edges: Edges, num_pairs: int | None = None) -> PairGraph:
    """A symmetric directed edge list as a PairGraph (scatter accumulation), under ``jit``.

    Symmetric: every real edge a -> b with shift S has a real reverse b -> a with shift -S, as in
    any neighbour list within a cutoff (``mlff_jax.neighbors``: row b lists (a, S), row a lists
    (b, -S)). Keeps one direction of each pair (a < b; for a periodic self-image a == b, the shift
    whose first non-zero component is positive) and compacts them into ``num_pairs`` slots
    (default E // 2, always enough); the rest are masked. Gradients flow back to the kept edges'
    ``shifts`` only (a reverse shift is taken to be minus its partner's), so derivatives with
    respect to anything that moves both alike (strain, cell) are exact.

    Edges listed beyond the model's cutoff (a skin) may lack their reverse at round-off; they carry
    no weight (W = 0 for d > rc), so dropping or keeping them changes nothing.
    """
    senders, receivers, shifts = edges.senders, edges.receivers, edges.shifts
    x, y, z = shifts[:, 0], shifts[:, 1], shifts[:, 2]
    positive = (x > 0) | ((x == 0) & ((y > 0) | ((y == 0) & (z > 0))))
    canonical = edges.mask & ((senders < receivers) | ((senders == receivers) & positive))
    size = edges.num_edges // 2 if num_pairs is None else num_pairs
    (index,) = jnp.nonzero(canonical, size=size, fill_value=0)
    real = (jnp.arange(size) < jnp.sum(canonical)) & canonical[index]
    return PairGraph(senders[index], receivers[index], shifts[index], real)


def edges_from_pair_graph(graph: PairGraph) -> Edges:
    """The directed edge list of a PairGraph (both directions of each pair): E = 2P."""
    return Edges(
        jnp.concatenate([graph.first, graph.second]),
        jnp.concatenate([graph.second, graph.first]),
        jnp.concatenate([graph.shifts, -graph.shifts]),
        jnp.concatenate([graph.mask, graph.mask]),
    )


# ------------------------------------------------------------------------------ Edges (directed)
def _split3(w):
    h = w.shape[-1] // 3
    return w[..., :h], w[..., h : 2 * h], w[..., 2 * h :]


def _directed_edge_vectors(positions, edges: Edges):
    return positions[edges.senders] - positions[edges.receivers] + edges.shifts, edges.mask


def _directed_message(edges: Edges, s, v, w, direction, first_block: bool):
    """The message increments (ds, dv): ds_b = sum_{a->b} s_a Ws, dv_b = sum_{a->b} (v_a Wv1 + dir (x) Wv2).
    In the first block v = 0, so its term is skipped."""
    n = s.shape[0]
    ws, wv1, wv2 = _split3(w)
    ds = jax.ops.segment_sum(s[edges.senders] * ws, edges.receivers, n)
    dv_edge = direction[:, :, None] * wv2[:, None, :]
    if not first_block:
        dv_edge = dv_edge + v[edges.senders] * wv1[:, None, :]
    return ds, jax.ops.segment_sum(dv_edge, edges.receivers, n)


def _directed_message_backward(edges: Edges, gs_out, gv_out, s, v, w, direction, first_block: bool):
    """Reverse of :func:`_directed_message`. Returns the increments (gs, gv) of the block inputs'
    adjoints (the identity part, gs_out and gv_out, is the caller's), gw [E, 3H] and gdir [E, 3];
    gs, gv are None in the first block (its inputs are the embedding and zeros)."""
    ws, wv1, wv2 = _split3(w)
    gs_rcv, gv_rcv = gs_out[edges.receivers], gv_out[edges.receivers]
    gws = gs_rcv * s[edges.senders]
    gwv2 = jnp.sum(gv_rcv * direction[:, :, None], axis=1)
    gdir = jnp.sum(gv_rcv * wv2[:, None, :], axis=2)
    if first_block:
        return None, None, jnp.concatenate([gws, jnp.zeros_like(gws), gwv2], axis=-1), gdir
    gwv1 = jnp.sum(gv_rcv * v[edges.senders], axis=1)
    n = s.shape[0]
    gs = jax.ops.segment_sum(gs_rcv * ws, edges.senders, n)
    gv = jax.ops.segment_sum(gv_rcv * wv1[:, None, :], edges.senders, n)
    return gs, gv, jnp.concatenate([gws, gwv1, gwv2], axis=-1), gdir


def _directed_positions_gradient(edges: Edges, gvec, num_atoms: int):
    """dE/dR_a = sum_{edges a->*} dE/dvec - sum_{edges *->a} dE/dvec."""
    return jax.ops.segment_sum(gvec, edges.senders, num_atoms) - jax.ops.segment_sum(gvec, edges.receivers, num_atoms)


def _directed_edge_structures(edges: Edges, batch):
    return batch[edges.senders]


# ------------------------------------------------------------------------------------ PairGraph
def _pair_edge_vectors(positions, graph: PairGraph):
    return positions[graph.first] - positions[graph.second] + graph.shifts, graph.mask


def _pair_message(graph: PairGraph, s, v, w, direction, first_block: bool):
    """The message step, per pair: both directions from one W_p (sums by gather or scatter)."""
    if graph.neighbors is None:
        return _pair_message_scatter(graph, s, v, w, direction, first_block)
    return _pair_message_gather(graph, s, v, w, direction, first_block)


def _pair_message_scatter(graph: PairGraph, s, v, w, direction, first_block: bool):
    """Edge i -> j adds s_i Ws + ..., + dir_p Wv2 to atom j; edge j -> i adds s_j Ws, - dir_p Wv2 to i."""
    i, j, n = graph.first, graph.second, s.shape[0]
    ws, wv1, wv2 = _split3(w)
    ds = jax.ops.segment_sum(s[i] * ws, j, n) + jax.ops.segment_sum(s[j] * ws, i, n)
    radial = direction[:, :, None] * wv2[:, None, :]
    to_j, to_i = radial, -radial
    if not first_block:
        to_j, to_i = to_j + v[i] * wv1[:, None, :], to_i + v[j] * wv1[:, None, :]
    return ds, jax.ops.segment_sum(to_j, j, n) + jax.ops.segment_sum(to_i, i, n)


def _pair_message_gather(graph: PairGraph, s, v, w, direction, first_block: bool):
    """The message step with gather-based sums over each atom's neighbour table.

    Slot (a, m) holds the incoming edge b -> a (b = neighbors[a, m]) of pair p, whose filter is
    W_p and whose direction is sign * dir_p. Padding slots point at a masked pair (W = 0, sign = 0).
    """
    ws, wv1, wv2 = _split3(w[graph.neighbor_pairs])  # [N, M, H] each
    ds = jnp.sum(s[graph.neighbors] * ws, axis=1)
    slot_dir = graph.neighbor_signs[:, :, None] * direction[graph.neighbor_pairs]  # [N, M, 3]
    dv = jnp.sum(slot_dir[:, :, :, None] * wv2[:, :, None, :], axis=1)
    if not first_block:
        dv = dv + jnp.sum(v[graph.neighbors] * wv1[:, :, None, :], axis=1)
    return ds, dv


def _pair_message_backward(graph: PairGraph, gs_out, gv_out, s, v, w, direction, first_block: bool):
    """Reverse of :func:`_pair_message`, folded per pair.

    For pair p = (i, j): the edges i -> j (dir +dir_p) and j -> i (dir -dir_p) share W_p, so
      gWs_p  = Gs_j s_i + Gs_i s_j,   gWv1_p = sum_x (Gv_j v_i + Gv_i v_j),
      gWv2_p = sum_x (Gv_j - Gv_i) dir_p,   gdir_p = sum_h (Gv_j - Gv_i) Wv2_p.
    The atom gradients sum over outgoing edges a -> b, i.e. over a's own neighbour slots:
      gs_a += sum_m Gs_b Ws_p,  gv_a += sum_m Gv_b Wv1_p.
    """
    i, j = graph.first, graph.second
    _, _, wv2 = _split3(w)
    gs_i, gs_j, gv_i, gv_j = gs_out[i], gs_out[j], gv_out[i], gv_out[j]
    gws = gs_j * s[i] + gs_i * s[j]
    gv_diff = gv_j - gv_i
    gwv2 = jnp.sum(gv_diff * direction[:, :, None], axis=1)
    gdir = jnp.sum(gv_diff * wv2[:, None, :], axis=2)
    if first_block:
        return None, None, jnp.concatenate([gws, jnp.zeros_like(gws), gwv2], axis=-1), gdir
    gwv1 = jnp.sum(gv_j * v[i] + gv_i * v[j], axis=1)
    if graph.neighbors is None:  # outgoing edges: i -> j (receiver j) and j -> i (receiver i)
        ws, wv1, _ = _split3(w)
        n = s.shape[0]
        gs = jax.ops.segment_sum(gs_j * ws, i, n) + jax.ops.segment_sum(gs_i * ws, j, n)
        gv = jax.ops.segment_sum(gv_j * wv1[:, None, :], i, n) + jax.ops.segment_sum(gv_i * wv1[:, None, :], j, n)
    else:
        slot_ws, slot_wv1, _ = _split3(w[graph.neighbor_pairs])
        gs = jnp.sum(gs_out[graph.neighbors] * slot_ws, axis=1)
        gv = jnp.sum(gv_out[graph.neighbors] * slot_wv1[:, :, None, :], axis=1)
    return gs, gv, jnp.concatenate([gws, gwv1, gwv2], axis=-1), gdir


def _pair_positions_gradient(graph: PairGraph, gvec, num_atoms: int):
    """dE/dR_a = sum over a's slots of -sign * dE/dvec_p (vec_p = R_first - R_second + shift)."""
    if graph.neighbors is None:
        return jax.ops.segment_sum(gvec, graph.first, num_atoms) - jax.ops.segment_sum(gvec, graph.second, num_atoms)
    return -jnp.sum(graph.neighbor_signs[:, :, None] * gvec[graph.neighbor_pairs], axis=1)


def _pair_edge_structures(graph: PairGraph, batch):
    return batch[graph.first]


class LayoutOps(NamedTuple):
    edge_vectors: Callable
    message: Callable
    message_backward: Callable
    positions_gradient: Callable
    edge_structures: Callable


_DIRECTED = LayoutOps(_directed_edge_vectors, _directed_message, _directed_message_backward, _directed_positions_gradient, _directed_edge_structures)
_PAIRS = LayoutOps(_pair_edge_vectors, _pair_message, _pair_message_backward, _pair_positions_gradient, _pair_edge_structures)


def ops_for(graph) -> LayoutOps:
    """The message-passing steps for ``graph`` (an :class:`Edges` or a :class:`PairGraph`)."""
    if isinstance(graph, PairGraph):
        return _PAIRS
    if isinstance(graph, Edges):
        return _DIRECTED
    raise TypeError(f"graph must be an Edges or a PairGraph, got {type(graph).__name__}")
