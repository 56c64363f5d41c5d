"""The PaiNN student on periodic systems: vacuum limit, extensivity, stress, Verlet MD, bad input."""

import ase.data
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tolerances as tol
from mlff_jax import neighbors
from periodic_systems import supercell, water_box

# A triclinic box of 8 water molecules at ~1 g/cm^3: thinner than twice the 5 Å cutoff, so
# atoms see several images of their neighbours and of themselves.
WATER_CELL = np.array([[6.25, 0.0, 0.0], [0.6, 6.2, 0.0], [-0.4, 0.5, 6.3]])


@pytest.fixture(scope="module")
def water():
    positions, numbers = water_box(2, WATER_CELL, seed=3)
    return positions, numbers, WATER_CELL


def test_molecule_alone_in_a_large_box_gives_its_vacuum_energy_and_forces(reference, load_model):
    ref, model = reference("tiny-77k"), load_model("tiny-77k", "float64")
    positions, numbers = ref["063_water30", "R"], ref["063_water30", "Z"]
    energy, forces = model.energy_and_forces(positions, numbers)
    box = np.array([[40.0, 0.0, 0.0], [5.0, 38.0, 0.0], [-3.0, 4.0, 41.0]])
    # Shifted so that the molecule straddles the cell boundary: wrapping must not matter.
    shifted = positions + np.array([0.5, 0.5, 0.5]) @ box - positions.mean(axis=0) + [19.0, 0.0, 0.0]
    energy_box, forces_box = model.energy_and_forces(shifted, numbers, cell=box)
    assert abs(float(energy_box) - float(energy)) <= tol.ROUNDOFF_F64
    np.testing.assert_allclose(np.asarray(forces_box), np.asarray(forces), rtol=0, atol=tol.ROUNDOFF_F64)


def test_large_molecule_uses_the_neighbour_list_and_matches_all_pairs(load_model):
    model = load_model("tiny-77k", "float64")
    positions, numbers = water_box(6, np.eye(3) * 18.6, seed=4)  # the first 150 atoms, in vacuum
    positions, numbers = positions[:150], numbers[:150]
    energy, forces = model.energy_and_forces(positions, numbers)
    dense_energy, dense_grad = jax.jit(jax.value_and_grad(model.energy_fn))(jnp.asarray(positions), jnp.asarray(numbers))
    assert abs(float(energy) - float(dense_energy)) <= tol.ROUNDOFF_F64
    np.testing.assert_allclose(np.asarray(forces), -np.asarray(dense_grad), rtol=0, atol=tol.ROUNDOFF_F64)


def test_supercells_are_extensive_and_their_forces_repeat(water, load_model):
    model = load_model("tiny-77k", "float64")
    positions, numbers, cell = water
    energy, forces = model.energy_and_forces(positions, numbers, cell=cell)
    repeats = [(2, 1, 1), (1, 2, 2)]
    cells = [supercell(positions, numbers, cell, r) for r in repeats]
    batch = np.concatenate([np.full(len(p), k) for k, (p, _, _) in enumerate(cells)])
    energies, batch_forces = model.energy_and_forces(np.concatenate([p for p, _, _ in cells]), np.concatenate([z for _, z, _ in cells]),
                                                     batch=batch, cell=np.stack([c for _, _, c in cells]))
    offset = 0
    for k, r in enumerate(repeats):
        copies = int(np.prod(r))
        assert abs(float(energies[k]) - copies * float(energy)) <= tol.ROUNDOFF_F64 * copies
        f = np.asarray(batch_forces[offset:offset + copies * len(numbers)]).reshape(copies, len(numbers), 3)
        np.testing.assert_allclose(f, np.broadcast_to(np.asarray(forces), f.shape), rtol=0, atol=tol.ROUNDOFF_F64)
        offset += copies * len(numbers)


@pytest.mark.parametrize("layout", ["folded", "edges"])
def test_periodic_analytic_layouts_give_the_autodiff_forces_and_stress(water, layout, monkeypatch):
    import mlff_jax
    from conftest import upstream_path
    from mlff_jax import periodic

    monkeypatch.setattr(periodic, "LAYOUT_OVERRIDE", layout)
    # A fresh model (not the cached fixture): the layout is read when its functions are traced.
    model = mlff_jax.load(upstream_path("checkpoints", "ultra-tiny-21k.model.pt"), dtype="float64")
    positions, numbers, cell = water
    e, f, stress = model.energy_forces_stress(positions, numbers, cell=cell, method="analytic")
    e_ad, f_ad, stress_ad = model.energy_forces_stress(positions, numbers, cell=cell, method="autodiff")
    assert abs(float(e) - float(e_ad)) <= tol.ROUNDOFF_F64
    np.testing.assert_allclose(np.asarray(f), np.asarray(f_ad), rtol=0, atol=tol.ANALYTIC_VS_AUTODIFF_F64)
    np.testing.assert_allclose(np.asarray(stress), np.asarray(stress_ad), rtol=0, atol=tol.ANALYTIC_VS_AUTODIFF_F64)


@pytest.mark.slow
def test_slab_with_zero_vacuum_vector_is_extensive_along_its_periodic_directions(load_model):
    model = load_model("tiny-77k", "float64")
    positions, numbers = water_box(2, WATER_CELL, seed=5)
    slab = WATER_CELL.copy()
    slab[2] = 0.0  # no cell vector along the non-periodic direction (ASE allows this)
    pbc = (True, True, False)
    energy, forces = model.energy_and_forces(positions, numbers, cell=slab, pbc=pbc)
    big_positions, big_numbers, _ = supercell(positions, numbers, WATER_CELL, (1, 2, 1))
    big = slab * np.array([1, 2, 1])[:, None]
    big_energy, big_forces = model.energy_and_forces(big_positions, big_numbers, cell=big, pbc=pbc)
    assert abs(float(big_energy) - 2 * float(energy)) <= 2 * tol.ROUNDOFF_F64
    np.testing.assert_allclose(np.asarray(big_forces).reshape(2, -1, 3), np.broadcast_to(np.asarray(forces), (2, len(numbers), 3)),
                               rtol=0, atol=tol.ROUNDOFF_F64)
    # Not the same as the fully periodic box: images along z are gone.
    assert abs(float(model.energy_and_forces(positions, numbers, cell=WATER_CELL)[0]) - float(energy)) > 1e-3


def test_stress_equals_the_finite_difference_strain_derivative(water, load_model):
    model = load_model("tiny-77k", "float64")
    positions, numbers, cell = water
    energy, forces, stress = model.energy_forces_stress(positions, numbers, cell=cell)
    energy_only, forces_only = model.energy_and_forces(positions, numbers, cell=cell)
    assert abs(float(energy) - float(energy_only)) <= tol.ROUNDOFF_F64
    np.testing.assert_allclose(np.asarray(forces), np.asarray(forces_only), rtol=0, atol=tol.ROUNDOFF_F64)
    volume = abs(np.linalg.det(cell))
    h = 1e-5
    numeric = np.zeros((3, 3))
    for a in range(3):
        for b in range(a, 3):
            strain = np.zeros((3, 3))
            strain[a, b] = strain[b, a] = h if a != b else h  # symmetric strain, as ASE's numerical stress
            e = [float(model.energy_and_forces(positions @ (np.eye(3) + s * strain), numbers, cell=cell @ (np.eye(3) + s * strain))[0]) for s in (1, -1)]
            numeric[a, b] = numeric[b, a] = (e[0] - e[1]) / (2 * h) / volume / (2 if a != b else 1)
    np.testing.assert_allclose(np.asarray(stress), numeric, rtol=0, atol=tol.FINITE_DIFFERENCE_STRESS)
    assert np.abs(numeric).max() > 100 * tol.FINITE_DIFFERENCE_STRESS  # the comparison is not vacuous


@pytest.mark.slow
def test_verlet_skin_md_gives_the_energies_of_rebuilding_every_step(water, load_model):
    model = load_model("tiny-77k", "float64")
    positions, numbers, cell = water
    masses = jnp.asarray(ase.data.atomic_masses[numbers])[:, None]  # amu; time unit Å sqrt(amu / eV) = 10.18 fs
    dt = 1.0 / 10.18
    rng = np.random.default_rng(6)
    velocities = jnp.asarray(rng.normal(size=positions.shape) * np.sqrt(0.08 / np.asarray(masses)))  # kT ~ 900 K: atoms move
    fn = neighbors.neighbor_list_fn(model.config.cutoff, skin=0.4, cell=cell)
    nbrs = fn.allocate(positions)
    energy = lambda r, nbrs: model.energy_fn(r, numbers, neighbors=nbrs)  # noqa: E731
    force = jax.grad(lambda r, nbrs: -energy(r, nbrs))

    @jax.jit
    def step(r, v, f, nbrs):
        v = v + 0.5 * dt * f / masses
        r = r + dt * v
        nbrs = fn.update(r, nbrs)
        f = force(r, nbrs)
        v = v + 0.5 * dt * f / masses
        rebuilt = jnp.all(nbrs.reference_positions == r)
        return r, v, f, nbrs, energy(r, nbrs), energy(r, fn.rebuild(r, nbrs)), rebuilt

    r = jnp.asarray(positions)
    f = force(r, nbrs)
    rebuilds = 0
    for _ in range(30):
        r, velocities, f, nbrs, e_skin, e_fresh, rebuilt = step(r, velocities, f, nbrs)
        assert not bool(nbrs.did_buffer_overflow)
        assert abs(float(e_skin) - float(e_fresh)) <= tol.ROUNDOFF_F64
        rebuilds += int(rebuilt)
    assert 1 <= rebuilds < 25, rebuilds  # both paths were exercised


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(cell=[[3.0, 0, 0], [6.0, 0, 0], [0, 0, 3.0]]), "singular"),
        (dict(cell=np.diag([6.0, 0.0, 6.0])), "cell vector 1 is zero"),
        (dict(cell=np.diag([6.0, 6.0, 6.0]) * np.nan), "NaN"),
        (dict(cell=np.eye(4)), "shape"),
        (dict(pbc=(True, True, True)), "no cell"),
        (dict(cell=np.diag([6.0, 6.0, 0.01])), "too thin"),
    ],
)
def test_bad_cells_raise_value_error(water, load_model, kwargs, message):
    model = load_model("tiny-77k", "float64")
    positions, numbers, _ = water
    with pytest.raises(ValueError, match=message):
        model.energy_and_forces(positions, numbers, **kwargs)


def test_bad_periodic_calls_raise_value_error(water, load_model):
    model = load_model("tiny-77k", "float64")
    positions, numbers, cell = water
    bad = positions.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.energy_and_forces(bad, numbers, cell=cell)
    with pytest.raises(ValueError, match="stress needs a cell"):
        model.energy_forces_stress(positions, numbers)
    with pytest.raises(ValueError, match="non-zero volume"):
        model.energy_forces_stress(positions, numbers, cell=np.diag([6.2, 6.2, 0.0]), pbc=(True, True, False))
    with pytest.raises(ValueError, match="neighbour list"):
        jax.jit(lambda r: model.energy_and_forces(r, numbers, cell=cell)[0])(positions)
    with pytest.raises(ValueError, match="cell must"):
        model.energy_and_forces(positions, numbers, batch=np.repeat([0, 1], 12), cell=np.stack([cell] * 3))


@pytest.mark.parametrize("pbc", [pytest.param((True, True, True), id="bulk"), pytest.param((True, True, False), id="slab", marks=pytest.mark.slow)])
def test_float32_periodic_box_translated_by_many_cells_gives_the_same_energy_forces_and_stress(water, load_model, pbc):
    """Host calls wrap periodic structures into their cell in float64 before the cast (and centre
    the non-periodic directions): 10^5 cells away, float32 results equal those in the cell."""
    model = load_model("tiny-77k", "float32")
    positions, numbers, cell = water
    n = len(numbers)
    e0, f0, s0 = model.energy_forces_stress(positions, numbers, cell=cell, pbc=pbc)
    # 10^5 whole cells along the periodic directions, 10^5 Å along the slab's normal.
    normal = np.cross(cell[0], cell[1]) / np.linalg.norm(np.cross(cell[0], cell[1]))
    shift = np.array([100_000, -70_000, 30_000]) * np.asarray(pbc) @ cell + (0.0 if all(pbc) else 1e5) * normal
    shifted = positions + shift
    shifted[::2] += cell[0]  # every other atom one more cell away: atoms need not share an image
    e, f, s = model.energy_forces_stress(shifted, numbers, cell=cell, pbc=pbc)
    assert abs(float(e) - float(e0)) <= tol.FLOAT32_TRANSLATION_ENERGY_PER_ATOM * n
    np.testing.assert_allclose(f, f0, rtol=0, atol=tol.FLOAT32_TRANSLATION_FORCES)
    volume = abs(np.linalg.det(cell))
    np.testing.assert_allclose(s, s0, rtol=0, atol=tol.FLOAT32_TRANSLATION_ENERGY_PER_ATOM * n / volume)
    e_batch, f_batch = model.energy_and_forces(np.concatenate([positions, shifted]), np.concatenate([numbers, numbers]), batch=np.repeat([0, 1], n),
                                               cell=cell, pbc=pbc)
    # In one batch (its own summation order), the translated copy equals the original.
    assert abs(float(e_batch[1]) - float(e_batch[0])) <= tol.FLOAT32_TRANSLATION_ENERGY_PER_ATOM * n
    np.testing.assert_allclose(f_batch[n:], f_batch[:n], rtol=0, atol=tol.FLOAT32_TRANSLATION_FORCES)
