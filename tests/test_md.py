"""Compiled MD (mlff_jax.md): energy conservation, agreement with ASE, the Langevin thermostat,
and neighbour-list overflow handling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import units

import tolerances as tol
from md_helpers import energy_drift_per_atom, max_deviation_per_atom, pair_distances, two_ethanols_in_a_box
from mlff_jax import md
from mlff_jax.data import example


def _ethanol_nve(model, steps, frame_interval, temperature=300.0, timestep=0.25, seed=1):
    atoms = example("ethanol")
    init_fn, step_fn = md.nve(md.model_potential(model, atoms.numbers), timestep)
    state = init_fn(atoms.positions, atoms.get_masses(), key=jax.random.key(seed), temperature=temperature)
    chunk = md.trajectory_chunk(step_fn, frame_interval, steps // frame_interval)
    return md.run(chunk, state, 1)


@pytest.mark.slow
def test_nve_conserves_total_energy_of_ethanol_float64(load_model):
    model = load_model("student-427k", "float64")
    _, frames = _ethanol_nve(model, steps=2000, frame_interval=5)
    d = pair_distances(frames.positions)
    assert d.max() < model.config.cutoff - 0.5, "a pair came near the cutoff, where the energy jumps"
    assert frames.temperature().mean() > 150.0  # the molecule really moved
    assert energy_drift_per_atom(frames.total_energy, 9) < tol.MD_ENERGY_DRIFT_PER_ATOM
    assert max_deviation_per_atom(frames.total_energy, 9) < tol.MD_ENERGY_MAX_DEVIATION_PER_ATOM


def test_nve_matches_ase_velocity_verlet(load_model):
    from ase.md.verlet import VelocityVerlet

    from mlff_jax import MLFFCalculator

    model = load_model("tiny-77k", "float64")
    atoms = example("ethanol")
    init_fn, step_fn = md.nve(md.model_potential(model, atoms.numbers), 0.5)
    state = init_fn(atoms.positions, atoms.get_masses(), key=jax.random.key(3), temperature=300.0)
    _, frames = md.run(md.trajectory_chunk(step_fn, 1, 20), state, 1)

    atoms.set_velocities(np.asarray(state.velocities))
    atoms.calc = MLFFCalculator(model)
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    for k in range(20):
        dyn.run(1)
        np.testing.assert_allclose(frames.positions[k], atoms.positions, rtol=0, atol=tol.ROUNDOFF_F64)
        np.testing.assert_allclose(frames.velocities[k], atoms.get_velocities(), rtol=0, atol=tol.ROUNDOFF_F64)
    assert abs(frames.kinetic_energy[-1] - atoms.get_kinetic_energy()) < tol.ROUNDOFF_F64
    assert abs(frames.potential_energy[-1] - atoms.get_potential_energy()) < tol.ROUNDOFF_F64


def test_frames_are_recorded_every_k_steps_across_chunks(load_model):
    model = load_model("ultra-tiny-21k", "float64")
    atoms = example("ethanol")
    init_fn, step_fn = md.nve(md.model_potential(model, atoms.numbers), 0.25)
    state = init_fn(atoms.positions, atoms.get_masses(), key=jax.random.key(0), temperature=100.0)
    state, frames = md.run(md.trajectory_chunk(step_fn, 3, 4), state, 2)
    np.testing.assert_array_equal(frames.step, [3, 6, 9, 12, 15, 18, 21, 24])
    assert int(state.step) == 24
    np.testing.assert_array_equal(frames.positions[-1], np.asarray(state.positions))


def test_unrolled_loop_gives_the_same_trajectory(load_model):
    model = load_model("ultra-tiny-21k", "float64")
    atoms = example("ethanol")
    init_fn, step_fn = md.nve(md.model_potential(model, atoms.numbers), 0.25)
    state = init_fn(atoms.positions, atoms.get_masses(), key=jax.random.key(0), temperature=100.0)
    _, plain = md.run(md.trajectory_chunk(step_fn, 5, 2), state, 1)
    _, unrolled = md.run(md.trajectory_chunk(step_fn, 5, 2, unroll=2), state, 1)  # 2 does not divide 5
    np.testing.assert_array_equal(unrolled.step, plain.step)
    np.testing.assert_allclose(unrolled.positions, plain.positions, rtol=0, atol=tol.ROUNDOFF_F64)


def test_langevin_without_friction_is_velocity_verlet(load_model):
    model = load_model("tiny-77k", "float64")
    atoms = example("ethanol")
    potential = md.model_potential(model, atoms.numbers)
    results = []
    for init_fn, step_fn in (md.nve(potential, 0.5), md.langevin(potential, 0.5, temperature=300.0, friction=0.0)):
        state = init_fn(atoms.positions, atoms.get_masses(), key=jax.random.key(7), temperature=300.0)
        results.append(md.run(md.trajectory_chunk(step_fn, 5, 4), state, 1)[1])
    np.testing.assert_allclose(results[0].positions, results[1].positions, rtol=0, atol=tol.ROUNDOFF_F64)


def _free_particles(n=2000, temperature=300.0, friction=0.2, steps=400, seed=0, start_temperature=0.0):
    zero = lambda r: 0.0 * jnp.sum(r)  # no forces: only the thermostat acts
    init_fn, step_fn = md.langevin(zero, 1.0, temperature=temperature, friction=friction)
    masses = np.where(np.arange(n) % 2, 1.008, 15.999)
    state = init_fn(np.zeros((n, 3)), masses, key=jax.random.key(seed), temperature=start_temperature or None)
    # free particles start on top of each other: no closest-pair guard for an ideal gas
    return md.run(md.trajectory_chunk(step_fn, 10, steps // 10, guards=md.Guards(min_pair_distance=None)), state, 1)[1]


def test_langevin_thermostat_reaches_its_temperature():
    frames = _free_particles()
    # friction 0.2 /fs relaxes in ~5 fs; average the last 300 fs over 2000 atoms: ~1% noise
    assert abs(frames.temperature()[10:].mean() - 300.0) < 10.0


def test_langevin_is_reproducible_from_its_seed():
    a, b, c = _free_particles(n=10, steps=20, seed=1), _free_particles(n=10, steps=20, seed=1), _free_particles(n=10, steps=20, seed=2)
    np.testing.assert_array_equal(a.velocities, b.velocities)
    assert not np.allclose(a.velocities, c.velocities)


def test_maxwell_boltzmann_has_no_centre_of_mass_momentum():
    masses = jnp.asarray(np.linspace(1.0, 30.0, 50))[:, None]
    v = md.maxwell_boltzmann(jax.random.key(0), masses, 500.0)
    np.testing.assert_allclose(np.sum(masses * v, axis=0), 0.0, atol=1e-12)


def test_bad_md_arguments_raise_value_errors():
    zero = lambda r: 0.0 * jnp.sum(r)
    with pytest.raises(ValueError, match="friction"):
        md.langevin(zero, 1.0, temperature=300.0, friction=-1.0)
    init_fn, step_fn = md.nve(zero, 1.0)
    with pytest.raises(ValueError, match="masses"):
        init_fn(np.zeros((3, 3)), np.ones(2))
    with pytest.raises(ValueError, match="frame_interval"):
        md.trajectory_chunk(step_fn, 0, 1)
    with pytest.raises(ValueError, match="unroll"):
        md.trajectory_chunk(step_fn, 1, 1, unroll=0)


# ------------------------------------------------------------------ neighbour lists in the loop
def test_neighbor_overflow_in_a_chunk_is_caught_and_the_chunk_recomputed(load_model):
    jax_md = pytest.importorskip("jax_md")
    from mlff_jax.jax_md import energy_neighbor_list

    model = load_model("ultra-tiny-21k", "float64")
    atoms = example("ethanol")
    displacement_fn, _ = jax_md.space.free()
    neighbor_fn, energy_fn = energy_neighbor_list(model, displacement_fn, 100.0, atoms.numbers, dr_threshold=0.2, capacity_multiplier=1.0, disable_cell_list=True)
    spread = jnp.asarray(atoms.positions * 3.0)  # few neighbours: a list too small for the real molecule
    small = neighbor_fn.allocate(spread)
    init_fn, step_fn = md.nve(energy_fn, 0.25)
    chunk = md.trajectory_chunk(step_fn, 2, 3)
    full = neighbor_fn.allocate(jnp.asarray(atoms.positions))
    state = init_fn(atoms.positions, atoms.get_masses(), key=jax.random.key(0), temperature=100.0, neighbor=full)

    with pytest.raises(RuntimeError, match="overflow"):
        md.run(chunk, state, 1, neighbor=small)
    _, recovered = md.run(chunk, state, 1, neighbor=small, neighbor_fn=neighbor_fn)
    _, reference = md.run(chunk, state, 1, neighbor=full)
    np.testing.assert_allclose(recovered.positions, reference.positions, rtol=0, atol=tol.ROUNDOFF_F64)


@pytest.mark.slow
def test_nve_conserves_total_energy_in_a_periodic_box_float64(load_model):
    """Our loop with mlff_jax.neighbors (updated inside the compiled loop) on two ethanols in a 14 Å box.

    The model's energy jumps when a pair crosses the 5 Å cutoff, so the molecules (and images) are
    kept more than 5 Å apart, and the test checks that they stayed so.
    """
    neighbors = pytest.importorskip("mlff_jax.neighbors")
    model = load_model("student-427k", "float64")
    atoms = two_ethanols_in_a_box()
    neighbor_fn = neighbors.neighbor_list_fn(model.config.cutoff, skin=0.5, cell=atoms.cell.array, pbc=(True, True, True))
    nbrs = neighbor_fn.allocate(jnp.asarray(atoms.positions))
    init_fn, step_fn = md.nve(md.model_potential(model, atoms.numbers), 0.25)
    state = init_fn(atoms.positions, atoms.get_masses(), key=jax.random.key(1), temperature=300.0, neighbor=nbrs)
    chunk = md.trajectory_chunk(step_fn, 10, 100, neighbor_update=neighbor_fn.update)
    _, frames = md.run(chunk, state, 2, neighbor=nbrs, neighbor_fn=neighbor_fn)
    d = pair_distances(frames.positions, atoms.cell.array)
    assert np.abs(d - model.config.cutoff).min() > 0.3, "a pair came near the cutoff, where the energy jumps"
    assert energy_drift_per_atom(frames.total_energy, len(atoms)) < tol.MD_ENERGY_DRIFT_PER_ATOM
    assert max_deviation_per_atom(frames.total_energy, len(atoms)) < tol.MD_ENERGY_MAX_DEVIATION_PER_ATOM


@pytest.mark.slow
def test_our_neighbor_list_overflow_in_a_chunk_is_caught(load_model):
    neighbors = pytest.importorskip("mlff_jax.neighbors")
    model = load_model("ultra-tiny-21k", "float64")
    atoms = example("water10")  # 30 atoms: more neighbours than the smallest capacity (8)
    neighbor_fn = neighbors.neighbor_list_fn(model.config.cutoff, skin=0.2, capacity_multiplier=1.0)
    small = neighbor_fn.allocate(jnp.asarray(atoms.positions * 3.0))  # few neighbours: too small for the molecule
    full = neighbor_fn.allocate(jnp.asarray(atoms.positions))
    init_fn, step_fn = md.nve(md.model_potential(model, atoms.numbers), 0.25)
    state = init_fn(atoms.positions, atoms.get_masses(), key=jax.random.key(0), temperature=100.0, neighbor=full)
    chunk = md.trajectory_chunk(step_fn, 2, 3, neighbor_update=neighbor_fn.update)
    with pytest.raises(RuntimeError, match="overflow"):
        md.run(chunk, state, 1, neighbor=small)
    _, recovered = md.run(chunk, state, 1, neighbor=small, neighbor_fn=neighbor_fn)
    _, reference = md.run(chunk, state, 1, neighbor=full)  # the reallocated list has full's shapes: no new compilation
    np.testing.assert_allclose(recovered.positions, reference.positions, rtol=0, atol=tol.ROUNDOFF_F64)
