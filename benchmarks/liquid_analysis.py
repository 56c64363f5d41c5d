"""Analysis of the liquid-MD validation (benchmarks/liquid_md_validation.py): host NumPy, float64.

Radial distribution function with the minimum image, its first peak, the NVE energy drift and a
few structural numbers of a water box (are the molecules whole, has the liquid collapsed?).
Pure functions of arrays, so each can be checked on synthetic inputs.
"""

from __future__ import annotations

import numpy as np

from mlff_jax.md_guards import energy_drift

OH_BOND_MAX = 1.25  # Å: an H belongs to the nearest O if closer than this (O–H 0.96-1.0 Å in the liquid)
NEIGHBOUR_SHELL = 5.5  # Å: atoms counted around each atom (76 in liquid water at 1 g/cm³ under this cutoff)


def _orthorhombic(cell) -> np.ndarray:
    cell = np.asarray(cell, np.float64)
    if cell.shape != (3, 3) or np.any(cell[~np.eye(3, dtype=bool)] != 0) or np.any(np.diag(cell) <= 0):
        raise ValueError(f"the minimum image here needs an orthorhombic cell (a positive diagonal [3, 3] matrix), got {cell.tolist()}")
    return cell


def minimum_image_distances(a, b, cell) -> np.ndarray:
    """[A, B] Å distances between points a [A, 3] and b [B, 3] in an orthorhombic periodic cell [3, 3] Å."""
    lengths = np.diag(_orthorhombic(cell))
    d = np.asarray(a, np.float64)[:, None, :] - np.asarray(b, np.float64)[None, :, :]
    d -= lengths * np.round(d / lengths)
    return np.sqrt(np.einsum("abk,abk->ab", d, d))


def radial_distribution(frames, cell, r_max: float, bin_width: float = 0.02):
    """g(r) of one kind of atom, averaged over frames, minimum image.

    Args:
      frames: [F, M, 3] Å positions of the M atoms (e.g. the oxygens) in F frames.
      cell: [3, 3] Å, orthorhombic; r_max: Å, at most half the shortest cell length.
      bin_width: Å.
    Returns:
      (r [K] bin centres Å, g [K], counts [K]: pairs per bin summed over frames). g is normalised
      by the ideal gas of M atoms in the cell, so it tends to 1 where there is no structure.
    """
    frames = np.asarray(frames, np.float64)
    if frames.ndim == 2:
        frames = frames[None]
    if frames.ndim != 3 or frames.shape[2] != 3 or frames.shape[0] < 1 or frames.shape[1] < 2:
        raise ValueError(f"frames must be [F >= 1, M >= 2, 3] positions, got shape {list(frames.shape)}")
    lengths = np.diag(_orthorhombic(cell))
    if not 0 < bin_width < r_max <= 0.5 * lengths.min() + 1e-12:
        raise ValueError(f"need 0 < bin_width < r_max <= half the shortest cell length ({0.5 * lengths.min():.3f} Å), "
                         f"got bin_width={bin_width}, r_max={r_max}")
    edges = np.arange(int(np.floor(r_max / bin_width)) + 1) * bin_width
    upper = np.triu_indices(frames.shape[1], 1)
    counts = np.zeros(len(edges) - 1)
    for positions in frames:  # one frame at a time: M² distances, never F·M²
        counts += np.histogram(minimum_image_distances(positions, positions, cell)[upper], edges)[0]
    volume = float(np.prod(lengths))
    pair_density = frames.shape[1] * (frames.shape[1] - 1) / 2 / volume  # pairs per Å³ of one frame
    shells = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    return 0.5 * (edges[1:] + edges[:-1]), counts / (frames.shape[0] * pair_density * shells), counts


def first_peak(r, g, smooth_bins: int = 5) -> tuple[float, float]:
    """(position Å, height) of the first peak of g(r): the maximum of its first excursion above 1.

    g is first smoothed by a moving average over ``smooth_bins`` bins (noise of a finite sample
    must not make a peak); the first peak is the largest value between the first r where the
    smoothed g exceeds 1 (the ideal gas) and the next r where it falls back to 1 or below. A
    higher peak further out does not count. (nan, nan) if g never exceeds 1.
    """
    r, g = np.asarray(r, np.float64), np.asarray(g, np.float64)
    if r.shape != g.shape or r.ndim != 1 or smooth_bins < 1:
        raise ValueError(f"r and g must be 1-D arrays of one length and smooth_bins >= 1, got {r.shape}, {g.shape}, {smooth_bins}")
    smooth = np.convolve(g, np.ones(smooth_bins) / smooth_bins, mode="same") if smooth_bins > 1 else g
    above = np.flatnonzero(smooth > 1.0)
    if above.size == 0:
        return float("nan"), float("nan")
    start = above[0]
    below = np.flatnonzero(smooth[start:] <= 1.0)
    stop = start + (below[0] if below.size else len(smooth) - start)
    peak = start + int(np.argmax(smooth[start:stop]))
    return float(r[peak]), float(smooth[peak])


def coordination_number(r, counts, num_atoms: int, num_frames: int, r_cut: float) -> float:
    """Mean number of neighbours within r_cut Å of an atom, from pair counts per bin (centres r)."""
    return float(2.0 * np.sum(np.asarray(counts)[np.asarray(r) < r_cut]) / (num_atoms * num_frames))


def drift_meV(total_energies, times_fs, num_atoms: int) -> dict:
    """NVE drift of a total-energy series [F] eV at times [F] fs: the least-squares slope of E/N
    against time (``mlff_jax.md_guards.energy_drift``) in meV/atom/ps, the end-to-end change and the
    largest |E - E(first)| of the series in meV/atom."""
    e = np.asarray(total_energies, np.float64)
    change, slope = energy_drift(e, times_fs, num_atoms)
    largest = float(np.max(np.abs(e - e[0])) / num_atoms) if e.size else float("nan")
    return {"drift_meV_per_atom_per_ps": 1000.0 * slope, "end_change_meV_per_atom": 1000.0 * change,
            "max_abs_change_frames_meV_per_atom": 1000.0 * largest}


def water_structure(positions, numbers, cell) -> dict:
    """Is it still liquid water? positions [N, 3] Å, numbers [N], cell [3, 3] Å (orthorhombic).

    intact_water_fraction: oxygens with exactly two H assigned (each H to its nearest O, if within
    OH_BOND_MAX); closest_OO_A; neighbours_within_5p5_A: mean number of atoms within 5.5 Å of an
    atom (rises as the liquid collapses); max_OH_A: the longest O–H bond of the assignment.
    """
    positions, numbers = np.asarray(positions, np.float64), np.asarray(numbers)
    oxygens, hydrogens = positions[numbers == 8], positions[numbers == 1]
    out: dict = {}
    if len(oxygens) and len(hydrogens):
        oh = minimum_image_distances(hydrogens, oxygens, cell)
        nearest, distance = np.argmin(oh, axis=1), np.min(oh, axis=1)
        owned = np.bincount(nearest[distance < OH_BOND_MAX], minlength=len(oxygens))
        out["intact_water_fraction"] = float(np.mean(owned == 2))
        out["max_OH_A"] = float(np.max(distance))
    if len(oxygens) > 1:
        oo = minimum_image_distances(oxygens, oxygens, cell)
        out["closest_OO_A"] = float(np.min(oo[np.triu_indices(len(oxygens), 1)]))
    if np.diag(_orthorhombic(cell)).min() >= 2 * NEIGHBOUR_SHELL:  # the minimum image counts each neighbour once
        all_pairs = minimum_image_distances(positions, positions, cell)
        out["neighbours_within_5p5_A"] = float((np.sum(all_pairs < NEIGHBOUR_SHELL) - len(positions)) / len(positions))
    return out
