"""The dense per-receiver neighbour layout, and converters to and from the model's edge list.

Layout (the one the neighbour-list module produces):

  neighbors: [N, C] int32. Row b lists the senders a of the messages that atom b receives
    (edge a -> b); slot (b, j) is empty when neighbors[b, j] == N (the sentinel).
  shifts: [N, C, 3] Å, Cartesian periodic shift of each slot: the edge vector is
    R_a - R_b + shifts[b, j] (zero for molecules).

The list must be FULL (symmetric): (b, j) -> a exists iff some (a, k) -> b exists with
shifts[a, k] == -shifts[b, j]. Every neighbour list of the model is (each pair is an edge in both
directions); the kernels' backward relies on it (see ``docs/kernels.md``), and
:func:`reverse_slots` checks it.

Host helpers build the layout from atoms (all pairs for molecules, ase's cell list for periodic
boxes); they are for tests and benchmarks, not for the MD loop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mlff_jax.graph import Edges
from mlff_jax.painn import DIR_EPS


def slot_geometry(positions: jax.Array, neighbors: jax.Array, shifts: jax.Array):
    """Distance and unit direction of every slot, exactly as the model's ``edge_geometry``.

    Args:
      positions: [N, 3] Å.
      neighbors: [N, C] int, sentinel N for empty slots.
      shifts: [N, C, 3] Å.
    Returns:
      distances: [N, C] Å (1.0 on empty slots, so no NaN reaches a gradient).
      directions: [N, C, 3], vec / (d + 1e-8) (the unit-vector of 1.0s / sqrt(3) on empty slots).
      valid: [N, C] bool, the non-empty slots.

    For a full list the result is exactly antisymmetric: the reverse slot of (b, j) gets the same
    distance bit for bit (fl(x - y) = -fl(y - x) and the shift enters negated), which the kernels'
    backward uses.
    """
    num_atoms = positions.shape[0]
    valid = (neighbors >= 0) & (neighbors < num_atoms)
    senders = jnp.where(valid, neighbors, 0)
    vec = positions[senders] - positions[:, None, :] + shifts
    safe_vec = jnp.where(valid[..., None], vec, 1.0)
    d = jnp.sqrt(jnp.sum(safe_vec * safe_vec, axis=-1))
    return d, safe_vec / (d + DIR_EPS)[..., None], valid


def dense_to_edges(neighbors: jax.Array, shifts: jax.Array) -> Edges:
    """The same graph as an edge list (E = N * C slots, empty ones masked) for ``mlff_jax.painn``."""
    num_atoms, capacity = neighbors.shape
    valid = ((neighbors >= 0) & (neighbors < num_atoms)).reshape(-1)
    senders = jnp.where(valid, neighbors.reshape(-1), 0).astype(jnp.int32)
    receivers = jnp.repeat(jnp.arange(num_atoms, dtype=jnp.int32), capacity)
    return Edges(senders, receivers, shifts.reshape(-1, 3), valid)


def reverse_slots(neighbors, shifts=None, atol: float = 1e-6):
    """For each slot (b, j) -> a, the slot k of row a with neighbors[a, k] == b (and opposite shift).

    Host (numpy) helper: the kernels do not need it (see ``docs/kernels.md``); use it to check that a
    neighbour list is full before handing it to the kernels, or to gather per-slot quantities of the
    reverse edge.

    Args:
      neighbors: [N, C] int, sentinel N.
      shifts: optional [N, C, 3] Å; with periodic images a pair may occupy several slots, matched
        by shift (shifts[a, k] == -shifts[b, j] within ``atol``).
    Returns:
      reverse: [N, C] int32, the reverse slot index, C on empty slots.
    Raises:
      ValueError if a non-empty slot has no reverse slot (the list is not full).
    """
    neighbors = np.asarray(neighbors)
    num_atoms, capacity = neighbors.shape
    reverse = np.full((num_atoms, capacity), capacity, np.int32)
    shifts = None if shifts is None else np.asarray(shifts, np.float64)
    b_idx, j_idx = np.nonzero((neighbors >= 0) & (neighbors < num_atoms))
    a_idx = neighbors[b_idx, j_idx]
    candidates = neighbors[a_idx] == b_idx[:, None]  # [S, C]: slots of row a pointing back at b
    if shifts is not None:
        opposite = np.all(np.abs(shifts[a_idx] + shifts[b_idx, j_idx][:, None, :]) <= atol, axis=-1)
        candidates &= opposite
    found = candidates.any(axis=1)
    if not np.all(found):
        bad = np.nonzero(~found)[0][:5]
        pairs = [(int(b_idx[i]), int(j_idx[i]), int(a_idx[i])) for i in bad]
        raise ValueError(f"neighbour list is not full: slots (receiver, slot, sender) {pairs} have no reverse slot")
    reverse[b_idx, j_idx] = np.argmax(candidates, axis=1)
    return reverse


def pairs_to_dense(receivers, senders, shifts, num_atoms: int, capacity: int | None = None, multiple: int = 1):
    """Packs an edge list (host arrays) into the dense layout, filling each row from slot 0.

    Args:
      receivers, senders: [E] int; shifts: [E, 3] Å (edge vector R_sender - R_receiver + shift).
      num_atoms: N; capacity: C (default: the largest row, rounded up to ``multiple``).
    Returns:
      neighbors [N, C] int32 (sentinel N), shifts [N, C, 3] float64.
    Raises:
      ValueError if a row has more than ``capacity`` neighbours.
    """
    receivers = np.asarray(receivers, np.int64)
    senders = np.asarray(senders, np.int64)
    shifts = np.asarray(shifts, np.float64).reshape(-1, 3)
    counts = np.bincount(receivers, minlength=num_atoms)
    largest = int(counts.max()) if counts.size else 0
    if capacity is None:
        capacity = max(multiple, -(-largest // multiple) * multiple)
    if largest > capacity:
        raise ValueError(f"capacity {capacity} is too small: atom {int(np.argmax(counts))} has {largest} neighbours")
    order = np.argsort(receivers, kind="stable")
    receivers, senders, shifts = receivers[order], senders[order], shifts[order]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(receivers.size) - starts[receivers]
    neighbors = np.full((num_atoms, capacity), num_atoms, np.int32)
    dense_shifts = np.zeros((num_atoms, capacity, 3), np.float64)
    neighbors[receivers, slot] = senders
    dense_shifts[receivers, slot] = shifts
    return neighbors, dense_shifts


def all_pairs_dense(positions, cutoff: float, batch=None, atom_mask=None, capacity: int | None = None, multiple: int = 1):
    """Dense layout of every ordered pair within ``cutoff`` (inclusive) of the same structure.

    Host helper for molecules (O(N^2)); padding atoms (atom_mask False) get no neighbours and are
    nobody's neighbour. Returns (neighbors [N, C] int32, shifts [N, C, 3] zeros).
    """
    positions = np.asarray(positions, np.float64)
    n = positions.shape[0]
    batch = np.zeros(n, np.int64) if batch is None else np.asarray(batch)
    atom_mask = np.ones(n, bool) if atom_mask is None else np.asarray(atom_mask, bool)
    d = np.linalg.norm(positions[None, :, :] - positions[:, None, :], axis=-1)
    keep = (d <= cutoff) & ~np.eye(n, dtype=bool) & (batch[:, None] == batch[None, :])
    keep &= atom_mask[:, None] & atom_mask[None, :]
    receivers, senders = np.nonzero(keep)
    return pairs_to_dense(receivers, senders, np.zeros((receivers.size, 3)), n, capacity, multiple)


def periodic_dense(positions, cell, cutoff: float, capacity: int | None = None, multiple: int = 1, skin: float = 1e-6):
    """Dense layout of a periodic box (all three directions periodic), from ase's neighbour list.

    Every image pair within ``cutoff + skin`` is a slot (small boxes give several slots per pair);
    the skin makes the list a superset of the model's inclusive cutoff, which the model applies.
    Returns (neighbors [N, C] int32, shifts [N, C, 3] Å).
    """
    from ase.neighborlist import primitive_neighbor_list

    positions = np.asarray(positions, np.float64)
    cell = np.asarray(cell, np.float64)
    i, j, image = primitive_neighbor_list("ijS", (True, True, True), cell, positions, float(cutoff + skin), self_interaction=False)
    # ase: R_j - R_i + S @ cell is the edge vector of pair (i, j); our slot (receiver i, sender j).
    shifts = image.astype(np.float64) @ cell
    return pairs_to_dense(i, j, shifts, positions.shape[0], capacity, multiple)
