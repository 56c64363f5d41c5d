"""Small periodic test systems, generated (no data files): water boxes and random cells."""

from __future__ import annotations

import numpy as np

# O-H 0.9572 Å, H-O-H 104.52 degrees (TIP3P geometry), as offsets from the oxygen.
_HALF_ANGLE = np.deg2rad(104.52) / 2
WATER = np.array([[0.0, 0.0, 0.0], [0.9572 * np.sin(_HALF_ANGLE), 0.0, 0.9572 * np.cos(_HALF_ANGLE)], [-0.9572 * np.sin(_HALF_ANGLE), 0.0, 0.9572 * np.cos(_HALF_ANGLE)]])


def random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def water_box(molecules_per_side: int, cell: np.ndarray, seed: int = 0, jitter: float = 0.1):
    """Water molecules on a grid of fractional positions of ``cell`` [3, 3] Å, randomly oriented.

    Returns (positions [3 M, 3] Å, atomic_numbers [3 M]) with M = molecules_per_side^3.
    At ~1 g/cm^3 a molecule takes 29.9 Å^3: a cubic cell of side 3.1 * molecules_per_side Å.
    """
    rng = np.random.default_rng(seed)
    k = molecules_per_side
    grid = (np.stack(np.meshgrid(*[np.arange(k)] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.5) / k
    centres = grid @ cell
    positions = []
    for c in centres:
        positions.append(c + WATER @ random_rotation(rng).T + rng.normal(scale=jitter, size=3))
    positions = np.concatenate(positions)
    numbers = np.tile([8, 1, 1], len(centres))
    return positions, numbers


def random_cell(rng, lengths=(2.0, 12.0), tilt=2.0) -> np.ndarray:
    """A random triclinic cell [3, 3] Å (rows are vectors), kept well away from singular."""
    while True:
        cell = np.diag(rng.uniform(*lengths, 3)) + rng.uniform(-tilt, tilt, (3, 3))
        volume = abs(np.linalg.det(cell))
        if volume > 0.3 * np.prod(np.linalg.norm(cell, axis=1)):
            return cell


def supercell(positions, numbers, cell, repeats):
    """ASE's ``Atoms.repeat`` ordering: image (i0, i1, i2) in C order, each a copy of all atoms."""
    images = np.stack(np.meshgrid(*[np.arange(r) for r in repeats], indexing="ij"), -1).reshape(-1, 3)
    pos = np.concatenate([positions + m @ cell for m in images])
    return pos, np.tile(numbers, len(images)), cell * np.asarray(repeats)[:, None]
