"""The jittable neighbour list: ASE's pair set, batches, Verlet skin, overflow, edges, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlff_jax import neighbors
from test_neighbor_pairs import PBC_PATTERNS, ase_pairs, as_set, big_water_box, random_system
from periodic_systems import random_cell


def list_pairs(nbrs):
    i, j, shifts = nbrs.pairs()
    assert len(as_set(i, j, shifts)) == len(i), "duplicate entries"
    return as_set(i, j, shifts)


@pytest.mark.parametrize("method", ["all_pairs", "cell_list"])
@pytest.mark.parametrize("pbc", PBC_PATTERNS[:4], ids=lambda p: "".join("TF"[not x] for x in p))
def test_list_matches_ase_on_random_triclinic_cells(pbc, method):
    rng = np.random.default_rng(11 + sum(pbc))
    n = 40
    positions, cell = random_system(rng, n, pbc, lengths=(3.0, 14.0))
    cutoff = float(rng.uniform(2.0, 6.0))
    nbrs = neighbors.neighbor_list_fn(cutoff, cell=cell, pbc=pbc, method=method).allocate(positions)
    assert nbrs.spec.method == method or nbrs.spec.grid == (1, 1, 1)
    assert not bool(nbrs.did_buffer_overflow)
    assert list_pairs(nbrs) == ase_pairs(positions, cell, pbc, cutoff)


def test_tiny_cell_lists_the_atoms_own_images():
    cell = np.array([[1.3, 0.0, 0.0], [0.4, 1.1, 0.0], [0.2, -0.3, 1.7]])
    positions = np.array([[0.1, 0.2, 0.3], [0.9, 0.5, 1.2]])
    nbrs = neighbors.neighbor_list_fn(4.0, cell=cell).allocate(positions)
    pairs = list_pairs(nbrs)
    assert pairs == ase_pairs(positions, cell, (True,) * 3, 4.0)
    assert any(i == j for i, j, _ in pairs)


@pytest.mark.slow
def test_two_thousand_atoms_cell_list_matches_ase():
    positions, cell = big_water_box()
    nbrs = neighbors.neighbor_list_fn(5.0, cell=cell).allocate(positions)
    assert nbrs.spec.method == "cell_list"
    assert list_pairs(nbrs) == ase_pairs(positions, cell, (True,) * 3, 5.0)


def test_batch_of_structures_with_their_own_cells():
    rng = np.random.default_rng(12)
    pbc = (True, True, False)
    sizes = [5, 17, 30]
    systems = [random_system(rng, n, pbc, lengths=(4.0, 11.0)) for n in sizes]
    positions = np.concatenate([p for p, _ in systems])
    cells = np.stack([c for _, c in systems])
    batch = np.repeat(np.arange(3), sizes)
    nbrs = neighbors.neighbor_list_fn(4.5, pbc=pbc).allocate(positions, cell=cells, batch=batch)
    expected, offset = set(), 0
    for (p, c), n in zip(systems, sizes):
        expected |= {(i + offset, j + offset, s) for i, j, s in ase_pairs(p, c, pbc, 4.5)}
        offset += n
    assert list_pairs(nbrs) == expected


def test_padding_atoms_are_nobodys_neighbours():
    rng = np.random.default_rng(13)
    positions, cell = random_system(rng, 30, (True,) * 3, lengths=(6.0, 9.0))
    mask = np.arange(30) < 22
    nbrs = neighbors.neighbor_list_fn(4.0, cell=cell).allocate(positions, atom_mask=mask)
    assert list_pairs(nbrs) == ase_pairs(positions[:22], cell, (True,) * 3, 4.0)
    assert np.all(np.asarray(nbrs.idx)[22:] == 30)


def test_verlet_skin_reuses_the_list_until_an_atom_moved_half_the_skin():
    rng = np.random.default_rng(14)
    positions, cell = random_system(rng, 40, (True,) * 3, lengths=(9.0, 10.0))
    fn = neighbors.neighbor_list_fn(4.0, skin=1.0, cell=cell)
    nbrs = fn.allocate(positions)
    update = jax.jit(fn.update)
    small = positions + rng.uniform(-0.28, 0.28, positions.shape)  # every atom moved < 0.5 Å
    kept = update(small, nbrs)
    np.testing.assert_array_equal(kept.reference_positions, nbrs.reference_positions)
    assert ase_pairs(small, cell, (True,) * 3, 4.0) <= list_pairs(kept)  # all current pairs present
    moved = small.copy()
    moved[7] += [0.0, 0.0, 0.6]
    rebuilt = update(moved, kept)
    np.testing.assert_array_equal(rebuilt.reference_positions, moved)
    within = {p for p in list_pairs(rebuilt) if np.linalg.norm(moved[p[1]] - moved[p[0]] + np.array(p[2]) @ cell) <= 4.0}
    assert within == ase_pairs(moved, cell, (True,) * 3, 4.0)


def test_wrapping_atoms_back_into_the_cell_triggers_a_rebuild_with_valid_shifts():
    rng = np.random.default_rng(15)
    cell = random_cell(rng, lengths=(8.0, 10.0))
    positions = rng.uniform(0.0, 1.0, (30, 3)) @ cell
    fn = neighbors.neighbor_list_fn(3.5, skin=0.5, cell=cell)
    nbrs = fn.allocate(positions)
    jumped = positions + np.array([1, -1, 2]) @ cell
    nbrs = fn.update(jumped, nbrs)
    np.testing.assert_array_equal(nbrs.reference_positions, jumped)
    within = {p for p in list_pairs(nbrs) if np.linalg.norm(jumped[p[1]] - jumped[p[0]] + np.array(p[2]) @ cell) <= 3.5}
    assert within == ase_pairs(jumped, cell, (True,) * 3, 3.5)


def test_overflow_is_detected_and_recovered():
    rng = np.random.default_rng(16)
    cell = np.diag([14.0, 14.0, 14.0])
    dilute = rng.uniform(0.0, 1.0, (60, 3)) @ cell
    fn = neighbors.neighbor_list_fn(3.0, cell=cell, method="cell_list")
    nbrs = fn.allocate(dilute)
    crowded = dilute * 0.35  # every atom squeezed into one corner: rows and bins overflow
    updated = fn.update(crowded, nbrs)
    assert bool(updated.did_buffer_overflow)
    assert int(updated.max_neighbors) > nbrs.capacity or int(updated.max_bin_occupancy) > nbrs.spec.bin_capacity
    assert bool(fn.update(dilute, updated).did_buffer_overflow), "the flag must be sticky"
    recovered = neighbors.update_with_retry(fn, crowded, updated)
    assert not bool(recovered.did_buffer_overflow)
    assert list_pairs(recovered) == ase_pairs(crowded, cell, (True,) * 3, 3.0)


def test_a_cell_shrinking_below_the_planned_stencil_is_flagged():
    rng = np.random.default_rng(17)
    cell = np.diag([12.0, 12.0, 12.0])
    positions = rng.uniform(0.0, 1.0, (40, 3)) @ cell
    fn = neighbors.neighbor_list_fn(3.0, cell=cell, method="cell_list")
    nbrs = fn.allocate(positions)
    assert nbrs.spec.grid == (3, 3, 3)
    small = np.diag([8.0, 8.0, 8.0])
    scaled = positions * 8.0 / 12.0
    assert bool(fn.update(scaled, nbrs, cell=small).did_buffer_overflow)
    recovered = neighbors.update_with_retry(fn, scaled, nbrs, cell=small)
    assert list_pairs(recovered) == ase_pairs(scaled, small, (True,) * 3, 3.0)


def test_edges_carry_the_pair_vectors_and_mask_empty_slots():
    rng = np.random.default_rng(18)
    pbc = (True, False, True)
    positions, cell = random_system(rng, 25, pbc, lengths=(3.0, 6.0))
    nbrs = neighbors.neighbor_list_fn(4.0, cell=cell, pbc=pbc).allocate(positions, extra_capacity=3)
    edges = neighbors.neighbor_list_edges(nbrs)
    mask = np.asarray(edges.mask)
    s, r = np.asarray(edges.senders), np.asarray(edges.receivers)
    vec = positions[s] - positions[r] + np.asarray(edges.shifts)
    got = {(b, a, tuple(np.round(v, 9))) for a, b, v in zip(s[mask], r[mask], vec[mask])}
    # ASE's D = R_j - R_i + S @ cell for centre i and neighbour j: receiver i, sender j.
    expected = {(i, j, tuple(np.round(positions[j] - positions[i] + np.array(sh) @ cell, 9))) for i, j, sh in ase_pairs(positions, cell, pbc, 4.0)}
    assert mask.sum() == len(expected) and got == expected
    assert not mask.all() and np.all(s[~mask] == r[~mask]) and np.all(np.asarray(edges.shifts)[~mask] == 0)


def test_list_is_a_pytree_that_passes_through_jit():
    positions = np.random.default_rng(19).uniform(0, 6, (12, 3))
    nbrs = neighbors.neighbor_list_fn(3.0).allocate(positions)
    leaves, treedef = jax.tree_util.tree_flatten(nbrs)
    assert all(isinstance(x, jax.Array) for x in leaves)
    same = jax.jit(lambda x: x)(nbrs)
    assert same.spec == nbrs.spec and np.array_equal(same.idx, nbrs.idx)
    assert list_pairs(nbrs) == ase_pairs(positions, None, (False,) * 3, 3.0)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: neighbors.neighbor_list_fn(5.0, cell=np.eye(3) * 10).allocate([[0.0, np.nan, 0.0]]), "NaN"),
        (lambda: neighbors.neighbor_list_fn(5.0, cell=np.diag([4.0, 4.0, 0.0])), "cell vector 2 is zero"),
        (lambda: neighbors.neighbor_list_fn(5.0, cell=[[1.0, 0, 0], [2.0, 0, 0], [0, 0, 1.0]]), "singular"),
        (lambda: neighbors.neighbor_list_fn(5.0, pbc=True).allocate(np.zeros((2, 3))), "no cell"),
        (lambda: neighbors.neighbor_list_fn(5.0, skin=-1.0), "skin"),
        (lambda: neighbors.neighbor_list_fn(0.0), "cutoff"),
        (lambda: neighbors.neighbor_list_fn(5.0, method="octree"), "method"),
        (lambda: neighbors.neighbor_list_fn(5.0, implementation="cuda"), "implementation"),
        (lambda: neighbors.neighbor_list_fn(5.0, cell=np.diag([9.0, 9.0, 0.02])).allocate(np.zeros((1, 3))), "too thin"),
        (lambda: neighbors.neighbor_list_fn(5.0).allocate(np.zeros((3, 3)), batch=[0, -1, 0]), "batch"),
        (lambda: neighbors.neighbor_list_fn(5.0).allocate(np.zeros((3, 3)), atom_mask=[True]), "atom_mask"),
    ],
)
def test_bad_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_update_traces_inside_a_user_jit():
    positions = np.random.default_rng(20).uniform(0, 8, (16, 3))
    fn = neighbors.neighbor_list_fn(3.0, skin=0.4, cell=np.eye(3) * 8.0)
    nbrs = fn.allocate(positions)

    @jax.jit
    def step(pos, nbrs):
        nbrs = fn.update(pos, nbrs)
        return jnp.sum(nbrs.mask), nbrs

    count, nbrs2 = step(positions + 0.3, nbrs)
    assert int(count) == len(list_pairs(nbrs2))
