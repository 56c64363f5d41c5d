"""``neighbor_pairs``: the host-side (NumPy) neighbour search with ASE's ``"ijS"`` semantics."""

from __future__ import annotations

import numpy as np

from mlff_jax.neighbors import cell as cell_lib
from mlff_jax.neighbors import plan

# Candidate entries examined at once (bounds the memory of a chunk to a few tens of MB).
_CHUNK_ENTRIES = 2_000_000


def neighbor_pairs(positions, cutoff, cell=None, pbc=None):
    """All pairs (i, j, S) with |R_j - R_i + S @ cell| <= cutoff, like ASE's ``neighbor_list("ijS")``.

    Args:
      positions: [N, 3] Å; atoms may lie outside the cell (they are wrapped internally, and the
        shifts refer to the positions as given).
      cutoff: Å.
      cell: [3, 3] Å, rows are cell vectors (ASE's convention); ``None`` for a molecule in vacuum.
        Non-periodic rows are ignored (they may be zero).
      pbc: three bools; default: periodic in every direction iff ``cell`` is given.
    Returns:
      (i, j, shifts): int64 [P], int64 [P], int64 [P, 3] shifts in cell units (zero along
      non-periodic directions), sorted by (i, j, shift). Every pair appears in both directions;
      an atom's own periodic images are included; (i, i, 0) never is.

    ASE keeps pairs with a distance strictly below the cutoff; this function keeps d <= cutoff (the
    model's convention). The two differ only for a pair at exactly the cutoff distance.

    Raises:
      ValueError: non-finite positions, a non-positive cutoff, a missing or singular cell, a zero
        cell vector in a periodic direction, or a cell too thin for the cutoff (see ``plan``).
    """
    r = cell_lib.validate_positions(positions)
    cutoff = cell_lib.validate_cutoff(cutoff)
    pbc = cell_lib.normalize_pbc(pbc, cell)
    cells = cell_lib.validate_cells(cell, pbc)
    n = r.shape[0]
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3), np.int64)
    batch = np.zeros(n, np.int64)
    grid, stencil, _ = plan.plan_grid(r, cells, batch, 1, pbc, cutoff, method="cell_list")
    bins = plan.host_bins(r, cells, batch, 1, pbc, grid, plan.search_radius(cutoff))

    # Bin table [bins, occupancy] of atom indices (-1: empty slot), atoms in index order within a bin.
    num_bins = int(np.prod(grid))
    counts = np.bincount(bins.bin_id, minlength=num_bins)
    order = np.argsort(bins.bin_id, kind="stable")
    sorted_bins = bins.bin_id[order]
    rank = np.arange(n) - (np.cumsum(counts) - counts)[sorted_bins]
    table = np.full((num_bins, int(counts.max())), -1, np.int64)
    table[sorted_bins, rank] = order

    offsets = plan.stencil_offsets(stencil).astype(np.int64)
    chunk = max(1, _CHUNK_ENTRIES // (len(offsets) * table.shape[1]))
    pieces = []
    for start in range(0, n, chunk):
        atoms = np.arange(start, min(n, start + chunk))
        target = bins.coords[atoms][:, None, :] + offsets[None]  # [A, S, 3] bin coordinates
        valid = np.ones(target.shape[:2], bool)
        image = np.zeros_like(target)
        for k in range(3):
            if pbc[k]:
                image[..., k], target[..., k] = np.divmod(target[..., k], grid[k])
            else:
                valid &= (target[..., k] >= 0) & (target[..., k] < grid[k])
                target[..., k] = np.clip(target[..., k], 0, grid[k] - 1)
        flat = (target[..., 0] * grid[1] + target[..., 1]) * grid[2] + target[..., 2]
        candidates = table[flat]  # [A, S, capacity]
        a, s, c = np.nonzero(valid[..., None] & (candidates >= 0))
        i, j = atoms[a], candidates[a, s, c]
        shift = image[a, s] + bins.wrap[j] - bins.wrap[i]
        d = r[j] - r[i] + shift @ cells[0]
        keep = (np.sqrt(np.sum(d * d, axis=1)) <= cutoff) & ~((i == j) & np.all(shift == 0, axis=1))
        pieces.append((i[keep], j[keep], shift[keep]))
    i = np.concatenate([p[0] for p in pieces])
    j = np.concatenate([p[1] for p in pieces])
    shifts = np.concatenate([p[2] for p in pieces])
    sort = np.lexsort((shifts[:, 2], shifts[:, 1], shifts[:, 0], j, i))
    return i[sort], j[sort], shifts[sort]
