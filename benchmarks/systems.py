"""Benchmark systems made on the fly (seeded): water clusters and periodic water boxes."""

from __future__ import annotations

import numpy as np

_WATER = np.array([[0.0, 0.0, 0.0], [0.9572, 0.0, 0.0], [-0.2400, 0.9266, 0.0]])  # O, H, H (Å)
_WATER_Z = np.array([8, 1, 1])
WATER_DENSITY = 0.0334  # molecules per Å^3 at 1 g/cm^3


def _random_rotations(rng, n):
    q, r = np.linalg.qr(rng.normal(size=(n, 3, 3)))
    return q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]


def water_box(num_molecules: int, seed: int = 0):
    """Liquid-density water on a jittered cubic lattice: (positions [3M, 3] Å, Z [3M], cell [3, 3] Å)."""
    rng = np.random.default_rng(seed)
    per_side = int(np.ceil(num_molecules ** (1 / 3)))
    length = (num_molecules / WATER_DENSITY) ** (1 / 3)
    spacing = length / per_side
    grid = np.stack(np.meshgrid(*[np.arange(per_side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:num_molecules]
    centres = (grid + 0.5) * spacing + rng.uniform(-0.1, 0.1, size=(num_molecules, 3))
    molecules = np.einsum("mij,aj->mai", _random_rotations(rng, num_molecules), _WATER) + centres[:, None, :]
    return molecules.reshape(-1, 3), np.tile(_WATER_Z, num_molecules), np.eye(3) * length


def water_cluster(num_molecules: int, seed: int = 0):
    """A compact cluster (the box above without its cell): (positions [3M, 3] Å, Z [3M])."""
    positions, z, _ = water_box(num_molecules, seed)
    return positions, z
