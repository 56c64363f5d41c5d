"""mlff_jax.jax_md: the model as a JAX-MD energy with JAX-MD neighbour lists, free and periodic."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import units

import tolerances as tol
from md_helpers import energy_drift_per_atom, max_deviation_per_atom, pair_distances
from mlff_jax.data import example

jax_md = pytest.importorskip("jax_md")
from mlff_jax.calculator import atomic_energies  # noqa: E402
from mlff_jax.jax_md import energy_neighbor_list  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:scatter inputs have incompatible types:FutureWarning")  # inside jax_md.partition


def _free(model, atoms, **kwargs):
    displacement_fn, shift_fn = jax_md.space.free()
    neighbor_fn, energy_fn = energy_neighbor_list(model, displacement_fn, 100.0, atoms.numbers, disable_cell_list=True, **kwargs)
    return neighbor_fn, energy_fn, shift_fn


def test_energy_and_forces_equal_the_model_in_free_space(load_model):
    model = load_model("tiny-77k", "float64")
    atoms = example("water10")
    neighbor_fn, energy_fn, _ = _free(model, atoms)
    positions = jnp.asarray(atoms.positions)
    nbrs = neighbor_fn.allocate(positions)
    energy, forces = model.energy_and_forces(atoms.positions, atoms.numbers)
    ours, grad = jax.jit(jax.value_and_grad(energy_fn))(positions, neighbor=nbrs)
    assert abs(float(ours) - float(energy)) <= tol.ROUNDOFF_F64
    np.testing.assert_allclose(-grad, forces, rtol=0, atol=tol.ROUNDOFF_F64)


@pytest.mark.slow  # one of the heaviest default tests (5-20 s on 2 cores); CI runs it with the slow ones
def test_energy_runs_the_models_message_implementation(load_model, monkeypatch):
    """With a model set to the Pallas kernels (interpret mode), the JAX-MD energy and its forces go
    through them, on JAX-MD's Dense rows, and equal the model's XLA values in float64."""
    from mlff_jax import implementation as implementation_lib

    model = load_model("ultra-tiny-21k", "float64")
    kernel_model = model.with_implementation("pallas", interpret=True)
    calls = []
    original = implementation_lib.kernel_atomic_energies
    monkeypatch.setattr(implementation_lib, "kernel_atomic_energies", lambda *a, **k: calls.append(1) or original(*a, **k))
    atoms = example("water10")
    neighbor_fn, energy_fn, _ = _free(kernel_model, atoms)
    positions = jnp.asarray(atoms.positions)
    ours, grad = jax.value_and_grad(energy_fn)(positions, neighbor=neighbor_fn.allocate(positions))
    assert calls, "the JAX-MD energy did not run the kernels"
    energy, forces = model.energy_and_forces(atoms.positions, atoms.numbers)
    assert abs(float(ours) - float(energy)) <= tol.ROUNDOFF_F64
    np.testing.assert_allclose(-grad, forces, rtol=0, atol=tol.ROUNDOFF_F64)


def _water_box(count=4, side=11.0, seed=0):
    """``count`` waters from the bundled cluster, shifted so that they straddle the box faces."""
    atoms = example("water10")[: 3 * count]
    positions = atoms.positions - atoms.positions.mean(axis=0) + np.random.default_rng(seed).uniform(0, side, 3)
    return atoms.numbers, np.mod(positions, side), side


def test_periodic_energy_equals_the_central_cell_of_explicit_images(load_model):
    """Per-atom energies in a periodic box equal those of the central cell's atoms in an explicit
    3x3x3 replica: ultra-tiny-21k has 2 blocks, so an atom feels atoms up to 2 x 5 Å away, and one
    11 Å layer of images covers that."""
    model = load_model("ultra-tiny-21k", "float64")
    numbers, positions, side = _water_box()
    displacement_fn, _ = jax_md.space.periodic(side)
    neighbor_fn, per_atom_fn = energy_neighbor_list(model, displacement_fn, side, numbers, per_particle=True)
    nbrs = neighbor_fn.allocate(jnp.asarray(positions))
    periodic = per_atom_fn(jnp.asarray(positions), neighbor=nbrs)

    offsets = np.array([(i, j, k) for i in (0, -1, 1) for j in (0, -1, 1) for k in (0, -1, 1)], float) * side  # central cell first
    replica = (positions[None] + offsets[:, None]).reshape(-1, 3)
    explicit = atomic_energies(model, replica, np.tile(numbers, len(offsets)))[: len(numbers)]
    np.testing.assert_allclose(periodic, explicit, rtol=0, atol=tol.ROUNDOFF_F64)
    # and the box differs from the same waters without images (the test is not vacuous)
    free = atomic_energies(model, positions, numbers)
    assert np.abs(free - explicit).max() > 1e-3


def test_neighbor_list_overflow_is_flagged(load_model):
    model = load_model("ultra-tiny-21k", "float64")
    atoms = example("water10")
    neighbor_fn, energy_fn, _ = _free(model, atoms, capacity_multiplier=1.0)
    nbrs = neighbor_fn.allocate(jnp.asarray(atoms.positions * 2.0))  # a sparse geometry: few neighbours
    assert not nbrs.did_buffer_overflow
    nbrs = nbrs.update(jnp.asarray(atoms.positions))
    assert nbrs.did_buffer_overflow


def _run_nve(energy_fn, shift_fn, neighbor_fn, positions, masses, temperature, steps, timestep=0.25, block=10):
    init_fn, apply_fn = jax_md.simulate.nve(energy_fn, shift_fn, timestep * units.fs)
    nbrs = neighbor_fn.allocate(positions)
    state = init_fn(jax.random.key(1), positions, kT=units.kB * temperature, mass=jnp.asarray(masses)[:, None], neighbor=nbrs)

    @jax.jit
    def advance(state, nbrs):
        def step(_, carry):
            state, nbrs, overflow = carry
            nbrs = nbrs.update(state.position)
            return apply_fn(state, neighbor=nbrs), nbrs, overflow | nbrs.did_buffer_overflow.astype(bool)

        state, nbrs, overflow = jax.lax.fori_loop(0, block, step, (state, nbrs, jnp.zeros((), bool)))
        total = energy_fn(state.position, neighbor=nbrs) + jax_md.quantity.kinetic_energy(momentum=state.momentum, mass=state.mass)
        return state, nbrs, overflow, total, state.position

    totals, frames = [], []
    for _ in range(steps // block):
        state, nbrs, overflow, total, position = advance(state, nbrs)
        assert not bool(overflow)
        totals.append(float(total))
        frames.append(np.asarray(position))
    return np.array(totals), np.array(frames)


@pytest.mark.slow
def test_jax_md_nve_conserves_total_energy_of_ethanol_float64(load_model):
    model = load_model("student-427k", "float64")
    atoms = example("ethanol")
    neighbor_fn, energy_fn, shift_fn = _free(model, atoms)
    totals, frames = _run_nve(energy_fn, shift_fn, neighbor_fn, jnp.asarray(atoms.positions), atoms.get_masses(), 300.0, 2000)
    assert pair_distances(frames).max() < model.config.cutoff - 0.5
    assert energy_drift_per_atom(totals, len(atoms)) < tol.MD_ENERGY_DRIFT_PER_ATOM
    assert max_deviation_per_atom(totals, len(atoms)) < tol.MD_ENERGY_MAX_DEVIATION_PER_ATOM


@pytest.mark.slow
def test_jax_md_nve_conserves_total_energy_in_a_periodic_box_float64(load_model):
    """Two ethanols in a 14 Å periodic box, one straddling a corner (its bonds cross three faces).

    The model's energy jumps when a pair crosses the 5 Å cutoff, so no dense box conserves energy
    to 1e-4 eV/atom; here the molecules (and their images) stay more than 5 Å apart, and the test
    checks that they did, so it measures the integration and the periodic geometry honestly.
    """
    model = load_model("student-427k", "float64")
    ethanol = example("ethanol")
    side = 14.0
    centred = ethanol.positions - ethanol.positions.mean(axis=0)
    positions = np.mod(np.concatenate([centred, centred @ np.diag([-1.0, 1.0, -1.0]) + side / 2]), side)
    numbers = np.tile(ethanol.numbers, 2)
    masses = np.tile(ethanol.get_masses(), 2)
    displacement_fn, shift_fn = jax_md.space.periodic(side)
    neighbor_fn, energy_fn = energy_neighbor_list(model, displacement_fn, side, numbers)
    totals, frames = _run_nve(energy_fn, shift_fn, neighbor_fn, jnp.asarray(positions), masses, 300.0, 2000)
    d = pair_distances(frames, np.eye(3) * side)
    assert np.abs(d - model.config.cutoff).min() > 0.3, "a pair came near the cutoff, where the energy jumps"
    assert energy_drift_per_atom(totals, len(numbers)) < tol.MD_ENERGY_DRIFT_PER_ATOM
    assert max_deviation_per_atom(totals, len(numbers)) < tol.MD_ENERGY_MAX_DEVIATION_PER_ATOM


def test_nose_hoover_conserves_its_invariant_and_langevin_runs(load_model):
    model = load_model("tiny-77k", "float64")
    atoms = example("ethanol")
    neighbor_fn, energy_fn, shift_fn = _free(model, atoms)
    positions = jnp.asarray(atoms.positions)
    nbrs = neighbor_fn.allocate(positions)
    masses = jnp.asarray(atoms.get_masses())[:, None]
    kT = units.kB * 100.0

    init_fn, apply_fn = jax_md.simulate.nvt_nose_hoover(energy_fn, shift_fn, 0.25 * units.fs, kT=kT)
    state = init_fn(jax.random.key(0), positions, mass=masses, neighbor=nbrs)
    invariant = jax.jit(lambda s: jax_md.simulate.nvt_nose_hoover_invariant(energy_fn, s, kT, neighbor=nbrs))
    start = float(invariant(state))
    run = jax.jit(lambda s: jax.lax.fori_loop(0, 100, lambda _, s: apply_fn(s, neighbor=nbrs), s))
    state = run(state)
    assert abs(float(invariant(state)) - start) / len(atoms) < tol.MD_ENERGY_MAX_DEVIATION_PER_ATOM

    init_fn, apply_fn = jax_md.simulate.nvt_langevin(energy_fn, shift_fn, 0.25 * units.fs, kT=kT, gamma=0.01 / units.fs)
    state = init_fn(jax.random.key(0), positions, mass=masses, neighbor=nbrs)
    state = jax.jit(lambda s: jax.lax.fori_loop(0, 20, lambda _, s: apply_fn(s, neighbor=nbrs), s))(state)
    assert np.all(np.isfinite(np.asarray(state.position)))
    assert not np.allclose(np.asarray(state.position), atoms.positions)


@pytest.mark.slow  # one of the heaviest default tests (5-20 s on 2 cores); CI runs it with the slow ones
def test_fire_descent_lowers_the_energy(load_model):
    model = load_model("tiny-77k", "float64")
    atoms = example("ethanol")
    neighbor_fn, energy_fn, shift_fn = _free(model, atoms)
    positions = jnp.asarray(atoms.positions)
    nbrs = neighbor_fn.allocate(positions)
    init_fn, apply_fn = jax_md.minimize.fire_descent(energy_fn, shift_fn, dt_start=0.05, dt_max=0.1)
    state = init_fn(positions, neighbor=nbrs)
    state = jax.jit(lambda s: jax.lax.fori_loop(0, 100, lambda _, s: apply_fn(s, neighbor=nbrs), s))(state)
    energy_and_grad = jax.jit(jax.value_and_grad(energy_fn))
    (start, start_grad), (end, end_grad) = energy_and_grad(positions, neighbor=nbrs), energy_and_grad(state.position, neighbor=nbrs)
    assert float(end) < float(start) - 0.01
    assert np.abs(end_grad).max() < np.abs(start_grad).max()


def test_unknown_element_is_refused(load_model):
    model = load_model("ultra-tiny-21k", "float64")
    displacement_fn, _ = jax_md.space.free()
    with pytest.raises(ValueError, match="unknown element"):
        energy_neighbor_list(model, displacement_fn, 100.0, np.array([1, 0, 8]))


def test_periodic_general_with_fractional_coordinates_gives_the_same_energy(load_model):
    model = load_model("ultra-tiny-21k", "float64")
    numbers, positions, side = _water_box()
    displacement_fn, _ = jax_md.space.periodic(side)
    neighbor_fn, energy_fn = energy_neighbor_list(model, displacement_fn, side, numbers)
    expected = energy_fn(jnp.asarray(positions), neighbor=neighbor_fn.allocate(jnp.asarray(positions)))

    box = jnp.eye(3) * side
    general_fn, _ = jax_md.space.periodic_general(box, fractional_coordinates=True)
    neighbor_fn, energy_fn = energy_neighbor_list(model, general_fn, box, numbers, fractional_coordinates=True)
    fractional = jnp.asarray(positions / side)
    nbrs = neighbor_fn.allocate(fractional)
    assert abs(float(energy_fn(fractional, neighbor=nbrs)) - float(expected)) <= tol.ROUNDOFF_F64
    # a box passed at call time (JAX-MD's convention for NPT / stress) reaches the displacement
    stretched = float(energy_fn(fractional, neighbor=nbrs, box=box * 1.01))
    assert abs(stretched - float(expected)) > 1e-4
