"""The static plan of a neighbour search: grid of bins, stencil, capacities (decided on the host).

Every array shape of a search follows from a :class:`SearchSpec`, so one compiled program serves
every call with the same spec. "All pairs" is the grid with one bin per structure: the same
algorithm, so both methods share every line of code and every test.

Correctness rests on one fact. In the binning frame (see :mod:`.cell`), a bin of a periodic
direction k is 1/n_k of the cell, of perpendicular width w_k = h_k / n_k; a non-periodic bin is
w_k >= r wide. Two points closer than r differ in bin coordinate k by at most ceil(r / w_k), the
stencil half-width m_k; each stencil offset o maps to a distinct (bin, periodic image) pair,
(c + o) mod n_k and floor((c + o) / n_k), so images of one atom (even of the atom itself, in
cells thinner than 2 r) each appear exactly once.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from mlff_jax.kernels.neighbors.reference import stencil_offsets  # noqa: F401 (re-exported)
from mlff_jax.neighbors import cell as cell_lib

# Bins are planned for a radius slightly above the cutoff, so that the round-off of fractional
# coordinates (float32: ~1e-7 relative) can never move a pair out of the searched stencil.
BIN_MARGIN = 1e-4
# Image offsets are stored as int8: a cell must be at least cutoff / 127 thick.
MAX_STENCIL = 127
# The stencil of a tiny cell grows as (2 r / h)^3; beyond this, refuse instead of running out of memory.
MAX_OFFSETS = 250_000


@dataclasses.dataclass(frozen=True)
class SearchSpec:
    """Static description of a neighbour search (hashable: it is a jit static argument).

    Attributes:
      cutoff: model cutoff, Å.
      skin: Verlet skin, Å; the list holds pairs within cutoff + skin.
      pbc: periodic directions, shared by all structures.
      grid: bins per direction (n_x, n_y, n_z), the same for every structure.
      stencil: bins searched on each side (m_x, m_y, m_z).
      bin_capacity: atom slots per bin (a power of two for the Pallas kernel).
      capacity: neighbour slots per atom (0: count neighbours only).
      num_structures: B.
      implementation: "xla" or "pallas" (the gather of :mod:`mlff_jax.kernels.neighbors`).
      interpret: run the Pallas kernel in interpret mode (CPU testing).
    """

    cutoff: float
    skin: float
    pbc: tuple[bool, bool, bool]
    grid: tuple[int, int, int]
    stencil: tuple[int, int, int]
    bin_capacity: int
    capacity: int
    num_structures: int = 1
    implementation: str = "xla"
    interpret: bool = False

    @property
    def list_cutoff(self) -> float:
        return self.cutoff + self.skin

    @property
    def method(self) -> str:
        return "all_pairs" if self.grid == (1, 1, 1) else "cell_list"

    @property
    def num_bins(self) -> int:
        """Bins of one structure."""
        return math.prod(self.grid)

    @property
    def num_offsets(self) -> int:
        return math.prod(2 * m + 1 for m in self.stencil)


def search_radius(cutoff: float) -> float:
    """The radius bins are planned for: the cutoff plus a relative margin of BIN_MARGIN."""
    return cutoff * (1.0 + BIN_MARGIN)


def next_power_of_two(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def bucket_capacity(n: int) -> int:
    """Capacity bucket for n slots: 8, 12, 16, 24, 32, 48, ... (at most 1/3 wasted, few programs)."""
    size = 8
    while size < n:
        size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    return size


@dataclasses.dataclass(frozen=True)
class HostBins:
    """Bins computed on the host (NumPy), float64, for planning and for :func:`neighbor_pairs`."""

    wrapped: np.ndarray  # [N, 3] Å, positions moved into the cell along periodic directions
    wrap: np.ndarray  # [N, 3] int, the cell translation applied: wrapped = r + wrap @ cell
    coords: np.ndarray  # [N, 3] int bin coordinates
    bin_id: np.ndarray  # [N] int flat bin (structure-major)
    widths: np.ndarray  # [B, 3] Å, bin widths


def host_bins(positions, cells, batch, num_structures, pbc, grid, radius) -> HostBins:
    """Wraps positions and bins them on the host, mirroring :mod:`.binning` (float64).

    Non-periodic bins are max(extent / n, radius) wide, so the stencil there is 1 (or 0 for one bin).
    """
    inverse = _inverse_frames(cells, pbc)
    frac = _fractional(positions, inverse, batch)
    lo, hi = _extents(frac, batch, num_structures, pbc)
    wrap, coords, bin_id, widths = _bin_coords(frac, batch, num_structures, pbc, grid, radius, cell_lib.heights(inverse, np), lo, hi)
    wrapped = positions + np.einsum("nk,nkj->nj", wrap.astype(np.float64), cells[batch])
    return HostBins(wrapped, wrap, coords, bin_id, widths)


def _inverse_frames(cells, pbc) -> np.ndarray:
    """[B, 3, 3] inverses of the binning frames; one inversion when every structure has the same frame
    (the usual batch: one cell, or none), broadcast (the same LAPACK call per matrix, so equal bits)."""
    frames = cell_lib.binning_frame(cells, pbc, np)
    if len(frames) > 1 and np.all(frames == frames[:1]):
        return np.broadcast_to(np.linalg.inv(frames[:1]), frames.shape)
    return np.linalg.inv(frames)


def _fractional(positions, inverse, batch) -> np.ndarray:
    """[N, 3] coordinates in each atom's binning frame: positions @ inverse[batch].

    A shared frame skips the per-atom gather of [N, 3, 3] matrices (the same three products and
    two sums per element, so the same bits); the identity frame (no periodic direction) is the
    positions themselves (up to the sign of zeros, which no floor or comparison sees).
    """
    if len(positions) == 0:
        return np.zeros((0, 3))
    if inverse.strides[0] == 0 or np.all(inverse == inverse[:1]):
        if np.array_equal(inverse[0], np.eye(3)):
            return positions
        return np.einsum("ni,ij->nj", positions, inverse[0])
    return np.einsum("ni,nij->nj", positions, inverse[batch])


def _extents(frac, batch, num_structures, pbc):
    """Per-structure lowest and highest fractional coordinate [B, 3] along the non-periodic
    directions (0 for empty structures and periodic directions)."""
    lo = np.zeros((num_structures, 3))
    hi = np.zeros((num_structures, 3))
    for k in range(3):
        if pbc[k] or not len(frac):
            continue
        low = np.full(num_structures, np.inf)
        high = np.full(num_structures, -np.inf)
        np.minimum.at(low, batch, frac[:, k])
        np.maximum.at(high, batch, frac[:, k])
        lo[:, k] = np.where(np.isfinite(low), low, 0.0)
        hi[:, k] = np.where(np.isfinite(high), high, 0.0)
    return lo, hi


def _bin_coords(frac, batch, num_structures, pbc, grid, radius, h, lo, hi):
    """(wrap [N, 3], coords [N, 3], flat bin id [N], bin widths [B, 3]) of the atoms for ``grid``."""
    wrap = np.zeros(frac.shape, np.int64)
    coords = np.zeros(frac.shape, np.int64)
    widths = np.zeros((num_structures, 3))
    for k in range(3):
        n = grid[k]
        if pbc[k]:
            wrap[:, k] = -np.floor(frac[:, k])
            coords[:, k] = np.clip(np.floor((frac[:, k] + wrap[:, k]) * n), 0, n - 1)
            widths[:, k] = h[:, k] / n
        else:
            widths[:, k] = np.maximum(np.maximum(hi[:, k] - lo[:, k], 0.0) / n, radius)
            if n > 1:  # one bin: every coordinate is 0
                coords[:, k] = np.clip(np.floor((frac[:, k] - lo[batch, k]) / widths[batch, k]), 0, n - 1)
    flat = (coords[:, 0] * grid[1] + coords[:, 1]) * grid[2] + coords[:, 2]
    return wrap, coords, batch * math.prod(grid) + flat, widths


def _stencil_for(grid, widths, pbc, radius) -> tuple[int, int, int]:
    stencil = []
    for k in range(3):
        if grid[k] == 1 and not pbc[k]:
            stencil.append(0)
        elif pbc[k]:
            stencil.append(int(np.max(np.ceil(radius / widths[:, k]))))
        else:
            stencil.append(1)
    return tuple(stencil)


def plan_grid(positions, cells, batch, num_structures, pbc, radius, method="auto"):
    """Chooses the grid and stencil for a search of radius ``radius`` Å (host, float64).

    Args:
      positions: [N, 3] Å (valid atoms only); cells: [B, 3, 3]; batch: [N] structure indices.
      method: "all_pairs" (one bin per structure), "cell_list" (bins about ``radius`` wide), or
        "auto": whichever compares fewer candidate pairs.
    Returns:
      (grid, stencil, max_bin_occupancy)
    Raises:
      ValueError: the cell is so thin that the stencil exceeds the supported size.
    """
    if method not in ("auto", "all_pairs", "cell_list"):
        raise ValueError(f"method must be 'auto', 'all_pairs' or 'cell_list', got {method!r}")
    r = search_radius(radius)
    # The fractional coordinates and extents are computed once and shared by both candidate grids.
    inverse = _inverse_frames(cells, pbc)
    h = cell_lib.heights(inverse, np)  # [B, 3]
    frac = _fractional(positions, inverse, batch)
    lo, hi = _extents(frac, batch, num_structures, pbc)
    plans = {}
    if method in ("auto", "all_pairs"):
        plans["all_pairs"] = (1, 1, 1)
    if method in ("auto", "cell_list"):
        grid = []
        for k in range(3):
            if pbc[k]:
                extent = float(np.min(h[:, k]))
            elif len(frac):
                extent = float(np.max(hi[:, k] - lo[:, k]))
            else:
                extent = 0.0
            grid.append(max(1, int(extent // r)))
        # Sparse systems (fragments far apart in vacuum) must not get more bins than atoms.
        max_bins = max(8, 2 * len(positions) // max(num_structures, 1))
        while math.prod(grid) > max_bins:
            k = int(np.argmax(grid))
            grid[k] = max(1, grid[k] // 2)
        plans["cell_list"] = tuple(grid)
    best = None
    for name, grid in plans.items():
        _, _, bin_id, widths = _bin_coords(frac, batch, num_structures, pbc, grid, r, h, lo, hi)
        stencil = _stencil_for(grid, widths, pbc, r)
        occupancy = int(np.max(np.bincount(bin_id))) if len(positions) else 0
        cost = math.prod(2 * m + 1 for m in stencil) * bucket_capacity(max(occupancy, 1))
        if best is None or cost < best[0]:
            best = (cost, grid, stencil, occupancy)
    _, grid, stencil, occupancy = best
    if max(stencil) > MAX_STENCIL or math.prod(2 * m + 1 for m in stencil) > MAX_OFFSETS:
        raise ValueError(
            f"the cell is too thin for a {radius:g} Å cutoff: the search would need {stencil} periodic "
            f"images on each side (at most {MAX_STENCIL} per direction and {MAX_OFFSETS} in all); "
            f"smallest cell heights {np.min(h, axis=0).round(4).tolist()} Å. Use a supercell."
        )
    return grid, stencil, occupancy
