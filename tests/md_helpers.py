"""Shared measurements for the MD tests."""

import numpy as np


def energy_drift_per_atom(total_energy, num_atoms, block: float = 0.1) -> float:
    """|mean of the last block - mean of the first block| of a total-energy series, per atom (eV).

    Velocity Verlet's total energy oscillates (by O(dt²)) around a conserved shadow energy; the block
    means remove that oscillation and leave the drift.
    """
    e = np.asarray(total_energy, np.float64)
    k = max(1, int(len(e) * block))
    return abs(e[-k:].mean() - e[:k].mean()) / num_atoms


def max_deviation_per_atom(total_energy, num_atoms) -> float:
    """max |E(t) - E(0)| per atom (eV): the drift plus the integrator's oscillation."""
    e = np.asarray(total_energy, np.float64)
    return float(np.abs(e - e[0]).max()) / num_atoms


def pair_distances(positions, cell=None):
    """All pair distances [F, P] of frames [F, N, 3] (minimum image in an orthorhombic cell if given)."""
    positions = np.asarray(positions)
    i, j = np.triu_indices(positions.shape[1], 1)
    d = positions[:, i] - positions[:, j]
    if cell is not None:
        lengths = np.diag(np.asarray(cell))
        d -= lengths * np.round(d / lengths)
    return np.linalg.norm(d, axis=-1)


def two_ethanols_in_a_box(side: float = 14.0):
    """Two ethanols in a cubic periodic box of ``side`` Å, the first straddling a corner (its bonds
    cross three faces), the second at the centre, mirrored: every intermolecular pair (images too)
    starts more than 5 Å apart."""
    from mlff_jax.data import example

    ethanol = example("ethanol")
    centred = ethanol.positions - ethanol.positions.mean(axis=0)
    box = ethanol + ethanol
    box.positions = np.mod(np.concatenate([centred, centred @ np.diag([-1.0, 1.0, -1.0]) + side / 2]), side)
    box.cell = np.eye(3) * side
    box.pbc = True
    return box
