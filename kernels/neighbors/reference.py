"""Neighbour gather over a cell list, in plain XLA: the reference the Pallas kernel must match.

The op. Atoms have been wrapped into their cells and sorted into bins (a table of atom indices
per bin). For every centre atom i and every stencil offset o (z fastest), the bin c_i + o is
mapped to the bin (c_i + o) mod grid and the periodic image floor((c_i + o) / grid) along
periodic directions (out-of-grid bins are skipped along non-periodic ones); every atom j of that
bin whose image lies within the cutoff, |x_j + image @ cell - x_i| <= cutoff, and that is not i
itself with a zero image, is appended to row i. Rows list neighbours in stencil order, then in
table order; slots past ``capacity`` are not written, but ``counts`` keeps counting (overflow).

Shapes: N atoms, B structures, G = prod(grid) bins per structure, C = bin capacity, K = capacity.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np


def stencil_offsets(stencil) -> np.ndarray:
    """[S, 3] int32 offsets, z fastest."""
    return np.array(list(itertools.product(*(range(-m, m + 1) for m in stencil))), np.int32).reshape(-1, 3)


def neighbor_bins(coords, offset, batch, grid, pbc):
    """Bin reached from ``coords`` [N, 3] by ``offset`` [3]: (flat bin [N], image [N, 3] int32, inside [N])."""
    target = coords + offset
    inside = jnp.ones(coords.shape[0], bool)
    nb, image = [], []
    for k in range(3):
        t = target[:, k]
        if pbc[k]:
            image.append(jnp.floor_divide(t, grid[k]))
            nb.append(jnp.mod(t, grid[k]))
        else:
            inside &= (t >= 0) & (t < grid[k])
            image.append(jnp.zeros_like(t))
            nb.append(jnp.clip(t, 0, grid[k] - 1))
    flat = batch * (grid[0] * grid[1] * grid[2]) + (nb[0] * grid[1] + nb[1]) * grid[2] + nb[2]
    return flat, jnp.stack(image, axis=1), inside


def gather_neighbors(positions, coords, batch, center_mask, table, table_positions, cells, *, grid, stencil, pbc, cutoff, capacity):
    """Neighbour rows of every atom (see the module docstring).

    Args:
      positions: [N, 3] Å wrapped positions.
      coords: [N, 3] int32 bin coordinates; batch: [N] int32 structure; center_mask: [N] bool.
      table: [B * G, C] int32 atoms per bin, N in empty slots.
      table_positions: [B * G, C, 3] Å positions of the table's atoms.
      cells: [B, 3, 3] Å, rows are cell vectors.
      grid, stencil, pbc: static tuples of 3; cutoff: Å (static); capacity: K (static; 0 counts only).
    Returns:
      idx [N, K] int32 (N in empty slots), image [N, K, 3] int8 (periodic image of each neighbour,
      in cell units, relative to the wrapped positions), counts [N] int32 (may exceed K).
    """
    num_atoms = positions.shape[0]
    cutoff2 = jnp.asarray(cutoff, positions.dtype) ** 2
    cell_of_atom = cells.astype(positions.dtype)[batch]
    atoms = jnp.arange(num_atoms, dtype=jnp.int32)
    rows = jnp.broadcast_to(atoms[:, None], (num_atoms, table.shape[1]))

    def step(carry, offset):
        idx, image_out, counts = carry
        flat, image, inside = neighbor_bins(coords, offset, batch, grid, pbc)
        candidates = table[flat]  # [N, C]
        shift = jnp.einsum("nk,nkj->nj", image.astype(positions.dtype), cell_of_atom)
        d = table_positions[flat] + (shift - positions)[:, None, :]
        is_self = (candidates == atoms[:, None]) & jnp.all(image == 0, axis=1)[:, None]
        hit = (center_mask & inside)[:, None] & (candidates < num_atoms) & (jnp.sum(d * d, axis=-1) <= cutoff2) & ~is_self
        hits = hit.astype(jnp.int32)
        if capacity:
            slot = counts[:, None] + jnp.cumsum(hits, axis=1) - 1
            slot = jnp.where(hit, slot, capacity)  # slot == capacity is out of range: dropped
            idx = idx.at[rows, slot].set(candidates, mode="drop")
            image_out = image_out.at[rows, slot].set(jnp.broadcast_to(image.astype(jnp.int8)[:, None, :], (*slot.shape, 3)), mode="drop")
        return (idx, image_out, counts + jnp.sum(hits, axis=1, dtype=jnp.int32)), None

    init = (
        jnp.full((num_atoms, capacity), num_atoms, jnp.int32),
        jnp.zeros((num_atoms, capacity, 3), jnp.int8),
        jnp.zeros(num_atoms, jnp.int32),
    )
    (idx, image, counts), _ = jax.lax.scan(step, init, jnp.asarray(stencil_offsets(stencil)))
    return idx, image, counts
