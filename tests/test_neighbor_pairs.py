"""``neighbor_pairs`` (host, NumPy) gives exactly ASE's ``neighbor_list("ijS")`` pair set."""

import ase
import numpy as np
import pytest
from ase.neighborlist import neighbor_list as ase_neighbor_list

from mlff_jax.neighbors import neighbor_pairs
from periodic_systems import random_cell, water_box


def as_set(i, j, shifts):
    return set(zip(np.asarray(i).tolist(), np.asarray(j).tolist(), map(tuple, np.asarray(shifts).tolist())))


def ase_pairs(positions, cell, pbc, cutoff):
    n = len(positions)
    atoms = ase.Atoms(numbers=np.ones(n, int), positions=positions, cell=np.zeros((3, 3)) if cell is None else cell, pbc=pbc)
    return as_set(*ase_neighbor_list("ijS", atoms, cutoff))


def random_system(rng, n, pbc, lengths=(2.0, 12.0)):
    cell = random_cell(rng, lengths)
    # Fractional coordinates in [-0.5, 1.5): half the atoms lie outside the cell.
    return rng.uniform(-0.5, 1.5, (n, 3)) @ cell, cell


PBC_PATTERNS = [(True, True, True), (False, False, False), (True, True, False), (True, False, False), (False, True, True)]


@pytest.mark.parametrize("pbc", PBC_PATTERNS, ids=lambda p: "".join("TF"[not x] for x in p))
def test_pairs_match_ase_on_random_triclinic_cells(pbc):
    rng = np.random.default_rng(sum(pbc) * 7 + pbc[0])
    for _ in range(12):
        n = int(rng.integers(1, 60))
        positions, cell = random_system(rng, n, pbc)
        cutoff = float(rng.uniform(2.0, 6.0))
        i, j, shifts = neighbor_pairs(positions, cutoff, cell, pbc)
        assert len(set(zip(i, j, map(tuple, shifts)))) == len(i), "duplicate pairs"
        assert as_set(i, j, shifts) == ase_pairs(positions, cell, pbc, cutoff)


def test_cells_thinner_than_the_cutoff_list_every_image_including_the_atom_itself():
    rng = np.random.default_rng(3)
    cell = np.array([[1.3, 0.0, 0.0], [0.4, 1.1, 0.0], [0.2, -0.3, 1.7]])
    positions = rng.uniform(0, 1, (3, 3)) @ cell
    i, j, shifts = neighbor_pairs(positions, 5.5, cell)
    assert as_set(i, j, shifts) == ase_pairs(positions, cell, (True,) * 3, 5.5)
    self_images = (i == j)
    assert self_images.sum() > 100 and np.all(np.any(shifts[self_images] != 0, axis=1))


def test_single_atom_sees_only_its_own_images():
    cell = np.diag([3.0, 4.0, 20.0])
    i, j, shifts = neighbor_pairs([[0.5, 0.5, 0.5]], 4.5, cell, (True, True, False))
    assert np.all(i == 0) and np.all(j == 0)
    assert as_set(i, j, shifts) == ase_pairs(np.array([[0.5, 0.5, 0.5]]), cell, (True, True, False), 4.5)
    assert np.all(shifts[:, 2] == 0)


def test_molecule_in_vacuum_ignores_the_cell():
    rng = np.random.default_rng(4)
    positions = rng.uniform(-4, 4, (30, 3))
    vacuum = as_set(*neighbor_pairs(positions, 3.0))
    assert vacuum == ase_pairs(positions, None, (False,) * 3, 3.0)
    assert vacuum == as_set(*neighbor_pairs(positions, 3.0, np.diag([1.0, 2.0, 3.0]), (False,) * 3))
    assert all(s == (0, 0, 0) for _, _, s in vacuum)


def test_slab_with_a_zero_non_periodic_cell_vector():
    rng = np.random.default_rng(5)
    cell = np.array([[5.0, 0.0, 0.0], [1.5, 4.0, 0.0], [0.0, 0.0, 0.0]])
    positions = np.column_stack([rng.uniform(-2, 8, 40), rng.uniform(-2, 6, 40), rng.uniform(-3, 3, 40)])
    ours = as_set(*neighbor_pairs(positions, 3.5, cell, (True, True, False)))
    full = cell.copy()
    full[2] = [0.0, 0.0, 1.0]  # ASE completes a zero non-periodic vector the same way
    assert ours == ase_pairs(positions, full, (True, True, False), 3.5)


def test_pairs_are_symmetric_and_within_the_cutoff():
    rng = np.random.default_rng(6)
    positions, cell = random_system(rng, 50, (True, True, True))
    i, j, shifts = neighbor_pairs(positions, 4.0, cell)
    pairs = as_set(i, j, shifts)
    assert all((b, a, tuple(-np.array(s))) in pairs for a, b, s in pairs)
    d = np.linalg.norm(positions[j] - positions[i] + shifts @ cell, axis=1)
    assert np.all(d <= 4.0) and not np.any((i == j) & np.all(shifts == 0, axis=1))


def big_water_box(seed=1):
    """2,000 atoms of a triclinic water box at ~1 g/cm^3, a tenth of them moved out of the cell."""
    cell = np.array([[27.9, 0.0, 0.0], [2.0, 27.9, 0.0], [1.0, -1.5, 27.9]])
    positions, _ = water_box(9, cell, seed=seed)
    positions = positions[:2000]
    rng = np.random.default_rng(seed)
    outside = rng.choice(2000, 200, replace=False)
    positions[outside] += rng.integers(-2, 3, (200, 3)) @ cell
    return positions, cell


@pytest.mark.parametrize("cutoff", [2.0, 6.0])
def test_two_thousand_atoms_match_ase(cutoff):
    positions, cell = big_water_box()
    assert as_set(*neighbor_pairs(positions, cutoff, cell)) == ase_pairs(positions, cell, (True,) * 3, cutoff)


def test_no_atoms_gives_no_pairs():
    i, j, shifts = neighbor_pairs(np.zeros((0, 3)), 5.0, np.eye(3) * 10)
    assert i.shape == (0,) and shifts.shape == (0, 3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(cell=np.array([[3.0, 0, 0], [6.0, 0, 0], [0, 0, 3.0]])), "singular"),
        (dict(cell=np.diag([3.0, 0.0, 3.0])), "cell vector 1 is zero"),
        (dict(cell=None, pbc=True), "no cell"),
        (dict(cell=np.full((3, 3), np.nan)), "NaN"),
        (dict(cell=np.eye(2)), "shape"),
        (dict(cell=np.diag([3.0, 3.0, 0.01])), "too thin"),
        (dict(cell=np.eye(3) * 5, pbc=[True, False]), "pbc"),
    ],
)
def test_bad_cells_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        neighbor_pairs(np.zeros((2, 3)) + [[0.1, 0.2, 0.3], [1.0, 1.0, 1.0]], 5.0, **kwargs)


@pytest.mark.parametrize("positions, cutoff, message", [([[0.0, 0.0, np.nan]], 5.0, "NaN"), ([[0.0, 0.0]], 5.0, "shape"), ([[0.0] * 3], -1.0, "cutoff")])
def test_bad_positions_or_cutoff_raise_value_error(positions, cutoff, message):
    with pytest.raises(ValueError, match=message):
        neighbor_pairs(positions, cutoff)
