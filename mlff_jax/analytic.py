"""Energy, forces and virial of the PaiNN student from one forward and one hand-derived backward sweep.

No ``jax.grad`` is involved in forces: :func:`energy_forces_virial` runs the forward pass of
:mod:`mlff_jax.painn` while keeping a small tape, then the reverse sweep derived in
``docs/analytic-forces.md`` (readout, update blocks, message blocks, radial basis, geometry).
It works on an :class:`~mlff_jax.graph.Edges` (any directed edge list, scatter-based) or a
:class:`~mlff_jax.analytic_graph.PairGraph` (symmetric edge sets: the filter network runs once per
unordered pair, and all sums are gathers; the fast layout).

Every function here is plain JAX, so autodiff through it works: the parameter gradient of a
force-matching loss is ``jax.grad`` of a loss of these forces. :func:`structure_energies` is a
drop-in replacement for :func:`mlff_jax.painn.structure_energies` whose ``jax.custom_vjp`` rule
returns the analytic position (and shift) gradients; its parameter cotangent comes from reverse-mode
autodiff of the forward sweep (documented switch: the hand-derived sweep covers positions only).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mlff_jax import painn
from mlff_jax.analytic_graph import ops_for
from mlff_jax.config import PaiNNConfig
from mlff_jax.graph import Edges
from mlff_jax.radial_table import tabulated_filter, tabulated_filter_slope

HIGHEST = jax.lax.Precision.HIGHEST


class AnalyticResult(NamedTuple):
    """Output of :func:`energy_forces_virial`.

    energies: [B] eV per structure; forces: [N, 3] eV/Å; virial: [B, 3, 3] eV, sum over unique
    edges of vec_u (x) F_u (equal to -dE/d(strain), see the doc); edge_forces: [U, 3] eV/Å, F_u =
    -dE/dvec_u, the force that unique edge u puts on its first atom / sender (minus that on the other).
    """

    energies: jax.Array
    forces: jax.Array
    virial: jax.Array
    edge_forces: jax.Array


class EdgeGeometry(NamedTuple):
    vec: jax.Array  # [U, 3] Å, safe (1.0) on masked edges
    d: jax.Array  # [U] Å
    direction: jax.Array  # [U, 3]
    within: jax.Array  # [U] bool, mask & d <= rc
    mask: jax.Array  # [U] bool
    envelope: Any = None  # (env [U], env' [U] 1/Å) of the filter envelope, or None (upstream: none)


class BlockTape(NamedTuple):
    """What the forward sweep keeps of block t (node-sized, except the optional filter)."""

    s_in: jax.Array  # [N, H] block input s
    v_in: jax.Array  # [N, 3, H] block input v
    filters: Any  # [U, 3H] the network's W before the envelope, or None when the backward sweep recomputes it
    v_mid: jax.Array  # [N, 3, H] v after the message
    norm: jax.Array  # [N, H] ||v_mid||
    update_pre: jax.Array  # [N, H] pre-activation of the update net's first layer
    update_out: jax.Array  # [N, 3H] (a, g1, g2)


# ---------------------------------------------------------------------------------- primitives
def silu_with_slope(x):
    """SiLU(x) = x sigma(x) and its derivative sigma(x) (1 + x (1 - sigma(x)))."""
    sig = jax.nn.sigmoid(x)
    return x * sig, sig * (1.0 + x * (1.0 - sig))


def dense_transpose(g, layer, precision):
    """Reverse of y = x @ kernel + b for x: g @ kernel^T."""
    return jnp.dot(g, layer["kernel"].T, precision=precision)


def edge_geometry(vec, mask, cutoff: float) -> EdgeGeometry:
    """d = |vec|, dir = vec / (d + 1e-8) (``painn.edge_geometry`` on precomputed vectors)."""
    safe_vec = jnp.where(mask[:, None], vec, 1.0)
    d = jnp.sqrt(jnp.sum(safe_vec * safe_vec, axis=-1))
    return EdgeGeometry(safe_vec, d, safe_vec / (d + painn.DIR_EPS)[:, None], mask & (d <= cutoff), mask)


def geometry_backward(geom: EdgeGeometry, gd, gdir):
    """dE/dvec from dE/dd and dE/ddir [U, 3]:
    gvec = gd vec / d + gdir / (d + eps) - vec (gdir . vec) / (d (d + eps)^2); 0 on masked edges."""
    d_safe = jnp.where(geom.d > 0, geom.d, 1.0)  # coincident atoms: finite, never NaN
    d_eps = geom.d + painn.DIR_EPS
    radial = gd / d_safe - jnp.sum(gdir * geom.vec, axis=-1) / (d_safe * d_eps * d_eps)
    gvec = radial[:, None] * geom.vec + gdir / d_eps[:, None]
    return jnp.where(geom.mask[:, None], gvec, 0.0)


def radial_backward(d, g_rbf, centers, widths, cutoff: float):
    """dE/dd from dE/de [U, K], e_k = phi_k fc: de_k/dd = phi_k (-2 (d - mu_k) / w_k^2 fc + fc')."""
    phi = jnp.exp(-((d[:, None] - centers) ** 2) / widths**2)
    inside = d < cutoff
    fc = jnp.where(inside, 0.5 * (jnp.cos(jnp.pi * d / cutoff) + 1.0), 0.0)
    dfc = jnp.where(inside, -0.5 * (jnp.pi / cutoff) * jnp.sin(jnp.pi * d / cutoff), 0.0)
    de_dd = phi * (-2.0 * (d[:, None] - centers) / widths**2 * fc[:, None] + dfc[:, None])
    return jnp.sum(g_rbf * de_dd, axis=-1)


def filter_forward(block, rbf, within, precision):
    """(W, pre): W = Linear2(SiLU(pre)) * within, pre = Linear1(e). [U, 3H], [U, H]."""
    pre = painn.dense(rbf, block["filter_in"], precision)
    return painn.dense(jax.nn.silu(pre), block["filter_out"], precision) * within[:, None], pre


def with_envelope(w_net, envelope):
    """env(d) W [U, 3H] (W itself when the model has no envelope)."""
    return w_net if envelope is None else w_net * envelope[0][:, None]


def block_filter(block, rbf, geom: EdgeGeometry, cutoff: float, precision):
    """(W [U, 3H], W_net) of one block: W = env(d) W_net(e(d)) with W_net the filter network
    (``W_net`` is returned too: the backward sweep needs it for the envelope's derivative), or W
    read from the compressed table (``filter_table``, mlff_jax.compress; it tabulates env W
    itself), then W_net is None."""
    if "filter_table" in block:
        return tabulated_filter(block["filter_table"], geom.d, cutoff) * geom.within[:, None], None
    w_net = filter_forward(block, rbf, geom.within, precision)[0]
    return with_envelope(w_net, geom.envelope), w_net


def filter_backward(block, rbf, gw, within, precision):
    """dE/de [U, K] from dE/dW [U, 3H] (pre is recomputed: one [U, K] x [K, H] matmul)."""
    pre = painn.dense(rbf, block["filter_in"], precision)
    _, slope = silu_with_slope(pre)
    g_hidden = dense_transpose(gw * within[:, None], block["filter_out"], precision)
    return dense_transpose(g_hidden * slope, block["filter_in"], precision)


def mix_axes(matrix, v):
    """(M v)[n, i, h] = sum_j M[i, j] v[n, j, h], as three elementwise multiply-adds: a 3x3 "matmul"
    fuses with its neighbours this way instead of becoming a matmul kernel of its own."""
    return matrix[None, :, 0, None] * v[:, 0:1, :] + matrix[None, :, 1, None] * v[:, 1:2, :] + matrix[None, :, 2, None] * v[:, 2:3, :]


def mix_vectors(block, v, vector_mixing: str, precision, transpose: bool = False):
    """The update's vector mixing [N, 3, H] (``painn.mix_vectors``), or its transpose (the reverse
    sweep's: M^T on the axes, C^T on the channels); None for vector_mixing="none"."""
    if vector_mixing == "cartesian":
        return mix_axes(block["mixing_matrix"].T if transpose else block["mixing_matrix"], v)
    if vector_mixing == "channels":
        matrix = block["channel_mixing"]
        return jnp.dot(v, matrix.T if transpose else matrix, precision=precision)
    return painn.mix_vectors(block, v, vector_mixing, precision)  # "none" -> None; anything else raises


def update_forward(block, s_mid, v_mid, precision, vector_mixing: str = "cartesian"):
    """The update step (``painn.update``), keeping what its reverse needs."""
    hidden = s_mid.shape[-1]
    norm = painn.safe_norm(v_mid, axis=1)
    pre = painn.dense(jnp.concatenate([s_mid, norm], axis=-1), block["update_in"], precision)
    out = painn.dense(jax.nn.silu(pre), block["update_out"], precision)
    a, g1, g2 = out[:, :hidden], out[:, hidden : 2 * hidden], out[:, 2 * hidden :]
    mixed = mix_vectors(block, v_mid, vector_mixing, precision)
    v_out = v_mid * g1[:, None, :]
    if mixed is not None:
        v_out = v_out + mixed * g2[:, None, :]
    return s_mid + a, v_out, norm, pre, out


def update_backward(block, tape: BlockTape, gs_out, gv_out, precision, vector_mixing: str = "cartesian"):
    """Reverse of s' = s + a, v' = v g1 + mix(v) g2, (a, g1, g2) = U(s, ||v||); mix(v) is M v
    (cartesian), v C (channels) or absent (none), and its reverse applies M^T or C^T.

    gv_out is None for the last block (its v never reaches the energy). The norm's gradient
    v / ||v|| is taken as 0 where ||v|| = 0 (PyTorch's convention; double ``where``, no NaN).
    """
    hidden = gs_out.shape[-1]
    v = tape.v_mid
    if gv_out is None:
        g_out = jnp.concatenate([gs_out, jnp.zeros_like(gs_out), jnp.zeros_like(gs_out)], axis=-1)
    else:
        mixed = mix_vectors(block, v, vector_mixing, precision)
        g_g2 = jnp.zeros_like(gs_out) if mixed is None else jnp.sum(gv_out * mixed, axis=1)
        g_out = jnp.concatenate([gs_out, jnp.sum(gv_out * v, axis=1), g_g2], axis=-1)
    _, slope = silu_with_slope(tape.update_pre)
    g_pre = dense_transpose(g_out, block["update_out"], precision) * slope
    g_in = dense_transpose(g_pre, block["update_in"], precision)
    gs_mid, g_norm = gs_out + g_in[:, :hidden], g_in[:, hidden:]
    positive = tape.norm > 0
    inv_norm = jnp.where(positive, 1.0 / jnp.where(positive, tape.norm, 1.0), 0.0)
    gv_mid = (g_norm * inv_norm)[:, None, :] * v
    if gv_out is not None:
        g1, g2 = tape.update_out[:, hidden : 2 * hidden], tape.update_out[:, 2 * hidden :]
        gv_mid = gv_mid + gv_out * g1[:, None, :]
        mixed_back = mix_vectors(block, gv_out * g2[:, None, :], vector_mixing, precision, transpose=True)
        if mixed_back is not None:
            gv_mid = gv_mid + mixed_back
    return gs_mid, gv_mid


def readout_backward(head, s, seed, precision):
    """dE/ds [N, H] of sum_a seed_a E_a, E_a = Linear3(SiLU(Linear2(SiLU(Linear1(s_a)))))."""
    pre0 = painn.dense(s, head["dense_0"], precision)
    h0, slope0 = silu_with_slope(pre0)
    _, slope1 = silu_with_slope(painn.dense(h0, head["dense_1"], precision))
    g_h1 = seed[:, None] * head["dense_2"]["kernel"][:, 0]
    g_h0 = dense_transpose(g_h1 * slope1, head["dense_1"], precision)
    return dense_transpose(g_h0 * slope0, head["dense_0"], precision)


# ------------------------------------------------------------------------------------ sweeps
def _reference_energies(params, atomic_numbers):
    """Optional per-element reference energy E0[Z] (``params["atom_reference"]["energies"]``, [max_z+1])."""
    if "atom_reference" in params:
        return params["atom_reference"]["energies"][atomic_numbers]
    return 0.0


def _chunked(tree, num_chunks: int):
    """Per-edge leaves [U, ...] -> [num_chunks, U / num_chunks, ...] (None leaves stay None)."""
    return jax.tree_util.tree_map(lambda x: x.reshape((num_chunks, -1) + x.shape[1:]), tree)


def _unchunked(tree):
    return jax.tree_util.tree_map(lambda x: x.reshape((-1,) + x.shape[2:]), tree)


def num_unique_edges(graph) -> int:
    """U: directed edges of an ``Edges``, pairs of a ``PairGraph``."""
    return graph.num_edges if isinstance(graph, Edges) else graph.num_pairs


def pad_edges(graph, multiple: int):
    """The graph with masked unique edges appended so that U is a multiple of ``multiple``
    (appended edges: atoms 0 -> 0, zero shift, mask False: they contribute exactly zero)."""
    fields = {f: getattr(graph, f) for f in graph.__dataclass_fields__}
    if fields.get("neighbors") is not None:
        raise ValueError("chunk_size needs a graph without a neighbour table (accumulate='scatter', or Edges)")
    extra = -num_unique_edges(graph) % multiple
    if extra == 0:
        return graph
    pad = lambda x: jnp.concatenate([x, jnp.zeros((extra,) + x.shape[1:], x.dtype)])
    return type(graph)(**{k: None if x is None else pad(x) for k, x in fields.items()})


AUTO_CHUNK_PAIRS = 1 << 16  # unique edges per chunk when auto_chunk_size chunks
AUTO_CHUNK_ABOVE = 1 << 20  # ... which it does above this many unique edges (~20k atoms of water)


def auto_chunk_size(num_edges: int) -> int | None:
    """A chunk size for U unique edges: None (one pass, fastest) unless U > 2^20, then 2^16,
    which bounds the per-edge temporaries of very large systems (100k atoms) at a few GB."""
    return AUTO_CHUNK_PAIRS if num_edges > AUTO_CHUNK_ABOVE else None


def _chunk_plan(graph, chunk_size: int | None):
    """(graph padded to whole chunks, number of chunks)."""
    if chunk_size is None or num_unique_edges(graph) <= chunk_size:
        return graph, 1
    graph = pad_edges(graph, chunk_size)
    return graph, num_unique_edges(graph) // chunk_size


def _forward_edges(ops, graph, geom, rbf, block, s, v, first_block, cutoff, precision, num_chunks, keep_filters):
    """The filter network's W_net [U, 3H] (None for a table block) and message increments (ds, dv)
    of one block, in num_chunks sequential chunks of unique edges when num_chunks > 1 (per-edge
    temporaries bounded by the chunk)."""
    if num_chunks == 1:
        w, w_net = block_filter(block, rbf, geom, cutoff, precision)
        return (w_net,) + tuple(ops.message(graph, s, v, w, geom.direction, first_block))

    def step(carry, chunk):
        graph_c, geom_c, rbf_c = chunk
        w, w_net = block_filter(block, rbf_c, geom_c, cutoff, precision)
        ds, dv = ops.message(graph_c, s, v, w, geom_c.direction, first_block)
        return (carry[0] + ds, carry[1] + dv), (w_net if keep_filters else None)

    (ds, dv), w = jax.lax.scan(step, (jnp.zeros_like(s), jnp.zeros_like(v)), _chunked((graph, geom, rbf), num_chunks))
    return (None if w is None else _unchunked(w)), ds, dv


def _backward_edges(ops, graph, geom, rbf, block, bt: BlockTape, gs, gv, first_block, cutoff, precision, num_chunks):
    """Reverse of :func:`_forward_edges`: increments of the block inputs' adjoints (None in block 0),
    dE/ddir [U, 3], dE/de [U, K] (network blocks; else None) and dE/dd [U] (table blocks, and the
    envelope's term env' W_net . dE/dW of network blocks; else None)."""
    table = "filter_table" in block

    def edge_pass(graph_c, geom_c, rbf_c, w_net):
        if table:  # recompute; the barrier stops XLA from merging this with the forward's W (and keeping it)
            d_c = jax.lax.optimization_barrier(geom_c.d)
            w = tabulated_filter(block["filter_table"], d_c, cutoff) * geom_c.within[:, None]
        else:
            if w_net is None:  # recompute; the barrier stops XLA from merging this with the forward's W (and keeping it)
                rbf_c = jax.lax.optimization_barrier(rbf_c)
                w_net = filter_forward(block, rbf_c, geom_c.within, precision)[0]
            w = with_envelope(w_net, geom_c.envelope)
        dgs, dgv, gw, gdir = ops.message_backward(graph_c, gs, gv, bt.s_in, bt.v_in, w, geom_c.direction, first_block)
        if table:
            slope = tabulated_filter_slope(block["filter_table"], geom_c.d, cutoff)
            return dgs, dgv, gdir, None, jnp.where(geom_c.within, jnp.sum(gw * slope, axis=-1), 0.0)
        g_d = None
        if geom_c.envelope is not None:  # W = env(d) W_net: dE/dd += env' (dE/dW . W_net), dE/dW_net = env dE/dW
            env, denv = geom_c.envelope
            g_d = denv * jnp.sum(gw * w_net, axis=-1)
            gw = gw * env[:, None]
        return dgs, dgv, gdir, filter_backward(block, rbf_c, gw, geom_c.within, precision), g_d

    if num_chunks == 1:
        return edge_pass(graph, geom, rbf, bt.filters)

    def step(carry, chunk):
        dgs, dgv, *per_edge = edge_pass(*chunk)
        if first_block:
            return carry, tuple(per_edge)
        return (carry[0] + dgs, carry[1] + dgv), tuple(per_edge)

    chunks = _chunked((graph, geom, rbf, bt.filters), num_chunks)
    carry, per_edge = jax.lax.scan(step, () if first_block else (jnp.zeros_like(gs), jnp.zeros_like(gv)), chunks)
    dgs, dgv = (None, None) if first_block else carry
    return (dgs, dgv) + tuple(_unchunked(per_edge))


def forward_sweep(params, config: PaiNNConfig, positions, atomic_numbers, graph, atom_mask, precision=HIGHEST, store_filters: bool = True,
                  num_chunks: int = 1):
    """Per-atom energies [N] eV (0 on padding atoms) and the tape for :func:`backward_sweep`."""
    ops = ops_for(graph)
    geom = edge_geometry(*ops.edge_vectors(positions, graph), config.cutoff)
    geom = geom._replace(envelope=painn.filter_envelope(geom.d, config))
    rbf = painn.radial_features(geom.d, params["rbf"]["centers"], params["rbf"]["widths"], config.cutoff)
    s = params["embedding"]["embedding"][atomic_numbers]
    v = jnp.zeros((s.shape[0], 3, s.shape[1]), s.dtype)
    tapes = []
    for t in range(config.num_interactions):
        block = params[f"interactions_{t}"]
        keep = store_filters and "filter_table" not in block  # a table lookup is cheaper to redo than to store
        w, ds, dv = _forward_edges(ops, graph, geom, rbf, block, s, v, t == 0, config.cutoff, precision, num_chunks, keep)
        s_mid, v_mid = s + ds, v + dv
        s_out, v_out, norm, pre, out = update_forward(block, s_mid, v_mid, precision, config.vector_mixing)
        tapes.append(BlockTape(s, v, w if keep else None, v_mid, norm, pre, out))
        s, v = s_out, v_out
    per_atom = painn.readout(params, s, precision) + _reference_energies(params, atomic_numbers)
    if atom_mask is not None:
        per_atom = jnp.where(atom_mask, per_atom, 0.0)
    return per_atom, (geom, rbf, tuple(tapes), s)


def backward_sweep(params, config: PaiNNConfig, graph, tape, seed, precision=HIGHEST, num_chunks: int = 1):
    """dE/dvec [U, 3] of sum_a seed_a E_a, for every unique edge (0 on masked edges)."""
    ops = ops_for(graph)
    geom, rbf, blocks, s_final = tape
    gs = readout_backward(params["readout"], s_final, seed, precision)
    gv = None
    g_rbf = jnp.zeros_like(rbf)  # dE/de, from blocks with a filter network
    gd = jnp.zeros_like(geom.d)  # dE/dd, from blocks with a filter table and from the envelope
    gdir = jnp.zeros_like(geom.direction)
    for t in reversed(range(config.num_interactions)):
        block, bt = params[f"interactions_{t}"], blocks[t]
        gs, gv = update_backward(block, bt, gs, gv, precision, config.vector_mixing)
        dgs, dgv, gdir_t, g_rbf_t, gd_t = _backward_edges(ops, graph, geom, rbf, block, bt, gs, gv, t == 0, config.cutoff, precision, num_chunks)
        if t > 0:
            gs, gv = gs + dgs, gv + dgv
        gdir = gdir + gdir_t
        if g_rbf_t is not None:
            g_rbf = g_rbf + g_rbf_t
        if gd_t is not None:
            gd = gd + gd_t
    gd = gd + radial_backward(geom.d, g_rbf, params["rbf"]["centers"], params["rbf"]["widths"], config.cutoff)
    return geometry_backward(geom, gd, gdir)


def energy_forces_virial(
    params, config: PaiNNConfig, positions, atomic_numbers, graph, atom_mask, batch, num_structures: int,
    precision=HIGHEST, store_filters: bool | None = None, chunk_size: int | None = None,
) -> AnalyticResult:
    """Energies, forces, virial and per-edge forces from one forward and one backward sweep.

    Args (as :func:`mlff_jax.painn.structure_energies`):
      positions: [N, 3] Å; atomic_numbers: [N] int; graph: ``Edges`` or ``PairGraph``;
      atom_mask: [N] bool or None; batch: [N] int structure index; num_structures: B (static).
      store_filters: keep each block's filter W [U, 3H] from the forward sweep (default without
        chunks) or recompute it in the backward sweep (default with chunks; less memory, one more
        [U, H] x [H, 3H] matmul per block).
        Table (compressed) blocks are always recomputed: a lookup is cheaper than the stored array.
      chunk_size: if set, the per-edge work of each block runs over chunks of this many unique
        edges in a ``lax.scan``, so per-edge temporaries are bounded by the chunk (for systems whose
        edges do not fit at once; sequential, hence slower when they do). Not with a neighbour table.
    """
    num_edges = num_unique_edges(graph)
    graph, num_chunks = _chunk_plan(graph, chunk_size)
    if store_filters is None:
        store_filters = num_chunks == 1
    per_atom, tape = forward_sweep(params, config, positions, atomic_numbers, graph, atom_mask, precision, store_filters, num_chunks)
    seed = jnp.ones_like(per_atom) if atom_mask is None else atom_mask.astype(per_atom.dtype)
    gvec = backward_sweep(params, config, graph, tape, seed, precision, num_chunks)
    ops = ops_for(graph)
    forces = -ops.positions_gradient(graph, gvec, positions.shape[0])
    geom = tape[0]
    edge_structure = ops.edge_structures(graph, batch)
    virial = -per_structure_sum(geom.vec[:, :, None] * gvec[:, None, :], edge_structure, num_structures)
    energies = per_structure_sum(per_atom, batch, num_structures)
    return AnalyticResult(energies, forces, virial, -gvec[:num_edges])


def per_structure_sum(values, structure, num_structures: int):
    """Sum of values [M, ...] per structure -> [B, ...]; a plain reduction (no scatter) when B = 1,
    since a scatter-add of many rows into one slot serialises its atomics on a GPU."""
    if num_structures == 1:
        return jnp.sum(values, axis=0)[None]
    return jax.ops.segment_sum(values, structure, num_structures)


def structure_energies_and_forces(params, config, positions, atomic_numbers, graph, atom_mask, batch, num_structures, precision=HIGHEST,
                                  chunk_size=None):
    """(energies [B] eV, forces [N, 3] eV/Å): the analytic counterpart of ``jax.grad`` of
    :func:`mlff_jax.painn.structure_energies`, on the same inputs (``chunk_size``: see
    :func:`energy_forces_virial`)."""
    result = energy_forces_virial(params, config, positions, atomic_numbers, graph, atom_mask, batch, num_structures, precision,
                                  chunk_size=chunk_size)
    return result.energies, result.forces


# --------------------------------------------------------------------- custom_vjp drop-in energy
@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 7, 8, 9))
def structure_energies(params, config, positions, atomic_numbers, graph, atom_mask, batch, num_structures, precision=HIGHEST, chunk_size=None):
    """Per-structure energies [B] eV, like :func:`mlff_jax.painn.structure_energies`, whose
    gradient with respect to positions (and edge shifts) is the analytic sweep.

    Its parameter cotangent is reverse-mode autodiff of the forward sweep. Second derivatives
    (e.g. the parameter gradient of a loss on ``jax.grad``-computed forces) differentiate through
    the analytic sweep itself, which is plain JAX.
    """
    return _energies_only(params, config, positions, atomic_numbers, graph, atom_mask, batch, num_structures, precision, chunk_size)


def _energies_only(params, config, positions, atomic_numbers, graph, atom_mask, batch, num_structures, precision, chunk_size):
    graph, num_chunks = _chunk_plan(graph, chunk_size)
    per_atom, _ = forward_sweep(params, config, positions, atomic_numbers, graph, atom_mask, precision, False, num_chunks)
    return per_structure_sum(per_atom, batch, num_structures)


def unwrap_primals(tree):
    """(values, perturbed?) of a custom_vjp argument under ``symbolic_zeros=True`` (leaves are
    CustomVJPPrimal(value, perturbed)). Also used by the kernels' custom VJP."""
    is_primal = lambda x: hasattr(x, "perturbed") and hasattr(x, "value")
    leaves = jax.tree_util.tree_leaves(tree, is_leaf=is_primal)
    values = jax.tree_util.tree_map(lambda x: x.value if is_primal(x) else x, tree, is_leaf=is_primal)
    return values, any(bool(getattr(x, "perturbed", False)) for x in leaves)


def _structure_energies_fwd(params, config, positions, atomic_numbers, graph, atom_mask, batch, num_structures, precision, chunk_size):
    (params, params_perturbed), (positions, positions_perturbed) = unwrap_primals(params), unwrap_primals(positions)
    (graph, graph_perturbed), (atomic_numbers, _), (atom_mask, _), (batch, _) = map(unwrap_primals, (graph, atomic_numbers, atom_mask, batch))
    if positions_perturbed or graph_perturbed:  # forces wanted: the analytic sweep
        result = energy_forces_virial(params, config, positions, atomic_numbers, graph, atom_mask, batch, num_structures, precision,
                                      chunk_size=chunk_size)
        energies, forces, edge_forces = result.energies, result.forces, result.edge_forces
    else:  # only parameter gradients wanted: the forward sweep is enough
        energies = _energies_only(params, config, positions, atomic_numbers, graph, atom_mask, batch, num_structures, precision, chunk_size)
        forces = edge_forces = None
    residuals = (params if params_perturbed else None, positions, atomic_numbers, graph, atom_mask, batch, forces, edge_forces)
    return energies, residuals


def _structure_energies_bwd(config, num_structures, precision, chunk_size, residuals, g):
    params, positions, atomic_numbers, graph, atom_mask, batch, forces, edge_forces = residuals
    if isinstance(g, jax.custom_derivatives.SymbolicZero):
        return None, None, None, None, None, None
    g_positions = g_graph = g_params = None
    if forces is not None:
        # Structures do not interact: dE_b/dR_a is zero unless a belongs to b, so the cotangent of
        # sum_b g_b E_b is the per-structure force scaled by its own g_b.
        g_positions = -forces * g[batch][:, None]
        g_shifts = -edge_forces * g[ops_for(graph).edge_structures(graph, batch)][:, None]
        g_graph = type(graph)(**{**{f: None for f in graph.__dataclass_fields__}, "shifts": g_shifts})
    if params is not None:  # documented switch: parameter cotangents by autodiff of the forward sweep
        def energies_of(p):
            return _energies_only(p, config, positions, atomic_numbers, graph, atom_mask, batch, num_structures, precision, chunk_size)

        _, vjp = jax.vjp(energies_of, params)
        (g_params,) = vjp(g)
    return g_params, g_positions, None, g_graph, None, None


structure_energies.defvjp(_structure_energies_fwd, _structure_energies_bwd, symbolic_zeros=True)
