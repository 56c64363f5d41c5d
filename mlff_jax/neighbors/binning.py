"""Wrapping and binning on the device (jittable, static shapes from a :class:`SearchSpec`).

Bins of structure b are numbered b * prod(grid) + (c_x * n_y + c_y) * n_z + c_z. Atoms that are
masked out go to the extra bin B * prod(grid), which no search ever reads.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mlff_jax.neighbors import cell as cell_lib
from mlff_jax.neighbors.plan import SearchSpec, search_radius


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Bins:
    """Atoms wrapped into their cells and sorted into bins.

    Attributes:
      wrapped: [N, 3] Å, r + wrap @ cell (inside the cell along periodic directions).
      wrap: [N, 3] int32 cell translation applied to each atom.
      coords: [N, 3] int32 bin coordinates within the atom's structure.
      bin_id: [N] int32 flat bin, structure-major; B * prod(grid) for masked atoms.
      table: [B * prod(grid), bin_capacity] int32 atom indices, N in empty slots.
      table_positions: [B * prod(grid), bin_capacity, 3] wrapped positions of the table's atoms.
      order: [N] int32 atoms sorted by bin (neighbouring atoms close together: GPU locality).
      max_occupancy: [] int32 atoms in the fullest bin (> bin_capacity means overflow).
      stencil_ok: [] bool, False if the cell became too thin for the planned stencil.
    """

    wrapped: jax.Array
    wrap: jax.Array
    coords: jax.Array
    bin_id: jax.Array
    table: jax.Array
    table_positions: jax.Array
    order: jax.Array
    max_occupancy: jax.Array
    stencil_ok: jax.Array


def assign_bins(positions, cells, batch, atom_mask, spec: SearchSpec) -> Bins:
    """Wraps atoms into their cells, bins them and builds the bin table.

    Args:
      positions: [N, 3] Å (any float dtype; atoms may lie outside their cell).
      cells: [B, 3, 3] Å, rows are cell vectors.
      batch: [N] int32 structure index of each atom.
      atom_mask: [N] bool, False for padding atoms.
      spec: the static plan (grid, stencil, bin capacity).
    """
    num_atoms = positions.shape[0]
    num_structures = spec.num_structures
    dtype = positions.dtype
    cells = cells.astype(dtype)
    radius = search_radius(spec.list_cutoff)
    inverse = cell_lib.inverse3(cell_lib.binning_frame(cells, spec.pbc, jnp), jnp)  # [B, 3, 3]
    frac = jnp.einsum("ni,nij->nj", positions, inverse[batch])
    h = cell_lib.heights(inverse, jnp)  # [B, 3]
    # Only structures with atoms count (padding structures carry placeholder cells).
    occupied = jax.ops.segment_max(atom_mask.astype(jnp.int32), batch, num_structures) > 0
    wrap, coords = [], []
    stencil_ok = jnp.array(True)
    for k in range(3):
        n = spec.grid[k]
        if spec.pbc[k]:
            shift = -jnp.floor(frac[:, k])
            c = jnp.floor((frac[:, k] + shift) * n)
            # The cell may have changed since planning: the stencil must still reach the cutoff.
            stencil_ok &= jnp.all((radius <= spec.stencil[k] * h[:, k] / n) | ~occupied)
        else:
            shift = jnp.zeros_like(frac[:, k])
            masked = jnp.where(atom_mask, frac[:, k], jnp.inf)
            lo = jax.ops.segment_min(masked, batch, num_structures)
            hi = jax.ops.segment_max(jnp.where(atom_mask, frac[:, k], -jnp.inf), batch, num_structures)
            lo = jnp.where(jnp.isfinite(lo), lo, 0.0)
            width = jnp.maximum(jnp.where(jnp.isfinite(hi), hi - lo, 0.0) / n, radius)
            c = jnp.floor((frac[:, k] - lo[batch]) / width[batch])
        wrap.append(shift)
        # NaN positions give NaN here; the clip keeps every index in range regardless.
        coords.append(jnp.clip(jnp.nan_to_num(c), 0, n - 1).astype(jnp.int32))
    wrap = jnp.stack(wrap, axis=1)
    coords = jnp.stack(coords, axis=1)
    wrapped = positions + jnp.einsum("nk,nkj->nj", wrap, cells[batch])
    wrap = wrap.astype(jnp.int32)

    num_bins = num_structures * spec.num_bins
    flat = (coords[:, 0] * spec.grid[1] + coords[:, 1]) * spec.grid[2] + coords[:, 2]
    bin_id = jnp.where(atom_mask, batch.astype(jnp.int32) * spec.num_bins + flat, num_bins)
    table, order, max_occupancy = bin_table(bin_id, num_bins, spec.bin_capacity)
    safe = jnp.minimum(table, num_atoms - 1)
    table_positions = jnp.where((table < num_atoms)[..., None], wrapped[safe], 0.0)
    return Bins(wrapped, wrap, coords, bin_id, table, table_positions, order, max_occupancy, stencil_ok)


def bin_table(bin_id, num_bins: int, bin_capacity: int):
    """Table [num_bins, bin_capacity] of the atoms in each bin (index order), N in empty slots.

    bin_id: [N] int32 in [0, num_bins]; bin num_bins is discarded. Atoms beyond a bin's capacity
    are dropped, and ``max_occupancy`` (the count of the fullest bin) reports it.
    Returns (table, order, max_occupancy), order: [N] atoms sorted by bin.
    """
    num_atoms = bin_id.shape[0]
    order = jnp.argsort(bin_id, stable=True).astype(jnp.int32)
    sorted_bins = bin_id[order]
    counts = jnp.zeros(num_bins + 1, jnp.int32).at[bin_id].add(1)
    starts = jnp.cumsum(counts) - counts
    rank = jnp.arange(num_atoms, dtype=jnp.int32) - starts[sorted_bins]
    table = jnp.full((num_bins, bin_capacity), num_atoms, jnp.int32)
    table = table.at[sorted_bins, rank].set(order, mode="drop")
    max_occupancy = jnp.max(counts[:num_bins], initial=0)
    return table, order, max_occupancy
