"""MD guards (mlff_jax.md_guards via md.trajectory_chunk / md.run): each trips on a constructed
failure, none trips on a normal run, and bad parameters are refused up front."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from md_helpers import two_ethanols_in_a_box
from mlff_jax import md
from mlff_jax.data import example


SITES = np.array([[0.75, 0.0, 0.0], [-0.75, 0.0, 0.0]])  # Å


def _harmonic(positions, **unused):
    """Springs of 100 eV/Å² that hold two atoms at SITES: for hydrogen ω = 0.978 /fs, a 6.4 fs period; velocity
    Verlet is unstable for ω dt > 2, i.e. dt > 2.04 fs."""
    return 50.0 * jnp.sum((positions - SITES) ** 2)


def _spring_run(timestep, guards=md.Guards(), steps=200, num_chunks=1):
    """Two hydrogens on springs (:func:`_harmonic`), 1.5 Å apart, at 300 K."""
    init_fn, step_fn = md.nve(_harmonic, timestep)
    state = init_fn(SITES, np.array([1.008, 1.008]), key=jax.random.key(0), temperature=300.0)
    return md.run(md.trajectory_chunk(step_fn, 10, steps // 10, guards=guards), state, num_chunks)


def test_spring_run_with_a_normal_timestep_trips_nothing():
    _, frames = _spring_run(0.1, steps=400)
    assert np.isfinite(frames.total_energy).all()
    assert frames.guards.max_temperature.max() < 5000.0


def test_huge_timestep_trips_the_temperature_guard():
    # velocity Verlet is unstable for dt > period / π ≈ 2 fs: the amplitude grows every step
    with pytest.raises(md.SimulationError, match="temperature") as info:
        _spring_run(5.0, steps=20)  # the energy grows ~500-fold per step (finite for these 20)
    error = info.value
    assert isinstance(error, RuntimeError)
    assert error.chunk == 0 and error.steps == (1, 20)
    assert error.quantity.startswith("temperature") and error.value > 5000.0
    assert "chunk 0" in str(error) and "steps 1-20" in str(error)


def test_energy_change_guard_trips_in_nve_only():
    hot_is_fine = md.Guards(max_temperature=1e30, min_pair_distance=None)
    with pytest.raises(md.SimulationError, match="energy change per atom") as info:
        _spring_run(2.05, guards=hot_is_fine, steps=20)  # ~1.4-fold per step
    assert info.value.value > hot_is_fine.max_energy_change_per_atom
    # the same unstable dynamics under a thermostat: energy is not conserved, so no energy guard
    init_fn, step_fn = md.langevin(_harmonic, 2.05, temperature=300.0, friction=1e-6)
    state = init_fn(SITES, np.array([1.008, 1.008]), key=jax.random.key(0), temperature=300.0)
    md.run(md.trajectory_chunk(step_fn, 10, 2, guards=hot_is_fine), state, 1)


def test_guard_names_the_chunk_where_it_tripped():
    from ase import units

    # no forces; atom 1 flies at atom 0 at 0.2 Å/fs: 3.05 - 0.1 n Å after n steps of 0.5 fs, first
    # below 0.5 Å at step 26, seen at the frame of step 30, in chunk 2 (steps 21-30)
    free = lambda r: 0.0 * jnp.sum(r)  # noqa: E731
    init_fn, step_fn = md.nve(free, 0.5)
    velocities = np.array([[0.0, 0.0, 0.0], [-0.2 / units.fs, 0.0, 0.0]])
    state = init_fn(np.array([[0.0, 0.0, 0.0], [3.05, 0.0, 0.0]]), np.ones(2), velocities)
    chunk = md.trajectory_chunk(step_fn, 5, 2, guards=md.Guards(max_temperature=1e9))
    with pytest.raises(md.SimulationError, match="closest pair") as info:
        md.run(chunk, state, 10)
    assert (info.value.chunk, info.value.steps) == (2, (21, 30))
    assert info.value.value == pytest.approx(0.05)


def test_overlapping_atoms_trip_the_closest_pair_guard():
    free = lambda r: 0.0 * jnp.sum(r)  # noqa: E731
    init_fn, step_fn = md.nve(free, 0.5)
    state = init_fn(np.array([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0], [3.0, 0.0, 0.0]]), np.ones(3), velocities=np.zeros((3, 3)))
    with pytest.raises(md.SimulationError, match="closest pair") as info:
        md.run(md.trajectory_chunk(step_fn, 2, 2), state, 1)
    assert info.value.value == pytest.approx(0.3)
    md.run(md.trajectory_chunk(step_fn, 2, 2, guards=md.Guards(min_pair_distance=0.2)), state, 1)  # a changeable bound


def test_closest_pair_guard_sees_pairs_across_the_periodic_boundary():
    neighbors = pytest.importorskip("mlff_jax.neighbors")
    cell = np.eye(3) * 8.0
    positions = np.array([[0.1, 4.0, 4.0], [7.8, 4.0, 4.0], [4.0, 1.0, 1.0]])  # 0.3 Å apart through the x face
    fns = neighbors.neighbor_list_fn(5.0, skin=0.5, cell=cell)
    nbrs = fns.allocate(positions)
    free = lambda r, neighbor=None: 0.0 * jnp.sum(r)  # noqa: E731
    init_fn, step_fn = md.nve(free, 0.5)
    state = init_fn(positions, np.ones(3), velocities=np.zeros((3, 3)), neighbor=nbrs)
    chunk = md.trajectory_chunk(step_fn, 2, 2, neighbor_update=fns.update)
    with pytest.raises(md.SimulationError, match="closest pair") as info:
        md.run(chunk, state, 1, neighbor=nbrs, neighbor_fn=fns)
    assert info.value.value == pytest.approx(0.3)


def test_non_finite_forces_trip_the_finite_guard():
    # defined for x < 1 only: the atom drifts through x = 1 and the forces become NaN
    wall = lambda r: jnp.sum(jnp.sqrt(1.0 - r[:, 0]))  # noqa: E731
    init_fn, step_fn = md.nve(wall, 0.5)
    state = init_fn(np.array([[0.0, 0.0, 0.0]]), np.ones(1), velocities=np.array([[2.0, 0.0, 0.0]]))  # 0.2 Å/fs: x = 1 within 10 fs
    with pytest.raises(md.SimulationError, match="non-finite"):
        md.run(md.trajectory_chunk(step_fn, 5, 4, guards=md.Guards(max_temperature=1e30)), state, 1)
    md.run(md.trajectory_chunk(step_fn, 5, 4, guards=None), state, 1)  # guards=None: off


class _StubbornNeighborFn:
    """Reallocates a list that is still too small (a forced, persistent overflow)."""

    def __init__(self, fns, small):
        self.fns, self.small, self.calls = fns, small, 0

    def update(self, positions, nbrs):
        return self.fns.update(positions, nbrs)

    def allocate(self, positions):
        self.calls += 1
        return self.small


def test_persistent_neighbor_overflow_trips_after_the_allowed_reallocations():
    neighbors = pytest.importorskip("mlff_jax.neighbors")
    atoms = example("water10")
    fns = neighbors.neighbor_list_fn(5.0, skin=0.2, capacity_multiplier=1.0)
    small = fns.allocate(atoms.positions * 3.0)  # capacity for a spread-out cluster: overflows on the real one
    free = lambda r, neighbor=None: 0.0 * jnp.sum(r)  # noqa: E731
    init_fn, step_fn = md.nve(free, 0.5)
    state = init_fn(atoms.positions, atoms.get_masses(), velocities=np.zeros((30, 3)), neighbor=small)
    chunk = md.trajectory_chunk(step_fn, 1, 2, neighbor_update=fns.update, guards=md.Guards(max_reallocations=2))
    with pytest.raises(md.SimulationError, match="overflow") as info:
        md.run(chunk, state, 1, neighbor=small)  # no neighbor_fn: cannot reallocate
    assert info.value.steps == (1, 2)
    stubborn = _StubbornNeighborFn(fns, small)
    with pytest.raises(md.SimulationError, match="after 2 reallocations"):
        md.run(chunk, state, 1, neighbor=small, neighbor_fn=stubborn)
    assert stubborn.calls == 2


@pytest.mark.parametrize("kwargs, match", [
    (dict(timestep=float("nan")), "timestep"),
    (dict(timestep=0.0), "timestep"),
    (dict(timestep=-0.5), "timestep"),
    (dict(temperature=-1.0), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(friction=float("nan")), "friction"),
    (dict(friction=-0.1), "friction"),
])
def test_bad_integrator_parameters_raise_value_errors(kwargs, match):
    args = dict(timestep=0.5, temperature=300.0, friction=0.01) | kwargs
    with pytest.raises(ValueError, match=match):
        md.langevin(_harmonic, **args)
    if set(kwargs) == {"timestep"}:
        with pytest.raises(ValueError, match=match):
            md.nve(_harmonic, kwargs["timestep"])


@pytest.mark.parametrize("masses, velocities, temperature, match", [
    (np.array([1.0, 0.0]), None, 300.0, "masses"),
    (np.array([1.0, -2.0]), None, 300.0, "masses"),
    (np.array([1.0, np.nan]), None, 300.0, "masses"),
    (np.ones(2), None, -5.0, "temperature"),
    (np.ones(2), None, float("nan"), "temperature"),
    (np.ones(2), np.full((2, 3), np.nan), None, "velocities"),
])
def test_bad_initial_state_raises_value_errors(masses, velocities, temperature, match):
    init_fn, _ = md.nve(_harmonic, 0.5)
    with pytest.raises(ValueError, match=match):
        init_fn(SITES, masses, velocities, temperature=temperature)


def test_nan_positions_raise_a_value_error():
    init_fn, _ = md.nve(_harmonic, 0.5)
    with pytest.raises(ValueError, match="positions"):
        init_fn(np.array([[0.0, 0.0, np.nan], [1.0, 0.0, 0.0]]), np.ones(2))


def test_bad_guard_bounds_raise_value_errors():
    for field in ("max_temperature", "max_energy_change_per_atom", "min_pair_distance"):
        with pytest.raises(ValueError, match=field):
            md.Guards(**{field: -1.0})
        with pytest.raises(ValueError, match=field):
            md.Guards(**{field: float("nan")})
    with pytest.raises(ValueError, match="max_reallocations"):
        md.Guards(max_reallocations=-1)


def test_default_temperature_bound_follows_the_reference():
    assert md.Guards().temperature_bound(300.0) == 5000.0
    assert md.Guards().temperature_bound(2000.0) == 10000.0
    assert md.Guards(max_temperature=400.0).temperature_bound(2000.0) == 400.0


# ------------------------------------------------------------------ no false alarms on real runs
# (the bundled default model: the smallest upstream student heats ethanol to 10⁴ K within 1,000
# steps at 0.5 fs, and the temperature guard says so)
@pytest.fixture(scope="module")
def default_model():
    import mlff_jax

    return mlff_jax.load("default", dtype="float64")


@pytest.mark.slow
def test_no_guard_trips_in_2000_steps_of_ethanol(default_model):
    model = default_model
    atoms = example("ethanol")
    init_fn, step_fn = md.nve(md.model_potential(model, atoms.numbers), 0.5)
    state = init_fn(atoms.positions, atoms.get_masses(), key=jax.random.key(0), temperature=300.0)
    summaries = []
    _, frames = md.run(md.trajectory_chunk(step_fn, 20, 50), state, 2, on_guards=summaries.append)
    assert len(summaries) == 2 and int(frames.step[-1]) == 2000
    assert max(s["max_temperature"] for s in summaries) < 5000.0
    assert min(s["min_pair_distance"] for s in summaries) > 0.5
    np.testing.assert_allclose(frames.guards.max_temperature.max(), max(s["max_temperature"] for s in summaries))


@pytest.mark.slow
def test_no_guard_trips_in_2000_steps_of_a_periodic_box(default_model):
    neighbors = pytest.importorskip("mlff_jax.neighbors")
    model = default_model
    atoms = two_ethanols_in_a_box()
    fns = neighbors.neighbor_list_fn(model.config.cutoff, skin=0.5, cell=atoms.cell.array)
    nbrs = fns.allocate(atoms.positions)
    init_fn, step_fn = md.nve(md.model_potential(model, atoms.numbers), 0.5)
    state = init_fn(atoms.positions, atoms.get_masses(), key=jax.random.key(1), temperature=300.0, neighbor=nbrs)
    summaries = []
    _, frames = md.run(md.trajectory_chunk(step_fn, 20, 50, neighbor_update=fns.update), state, 2, neighbor=nbrs, neighbor_fn=fns,
                       on_guards=summaries.append)
    assert int(frames.step[-1]) == 2000
    assert 0.5 < min(s["min_pair_distance"] for s in summaries) < 1.2  # measured on the list: a bonded pair (C-H, O-H)


def test_overflow_from_crowding_mid_chunk_is_cured_by_one_reallocation():
    """A cluster pulled together during a chunk: the list measured at the chunk's START is as small
    as the one that overflowed, so the reallocation must measure where the chunk ended."""
    neighbors = pytest.importorskip("mlff_jax.neighbors")
    atoms = example("water10")
    start = (atoms.positions - atoms.positions.mean(0)) * 2.5  # spread out; pulled to ~1.3x within the chunk
    fns = neighbors.neighbor_list_fn(5.0, skin=0.2, capacity_multiplier=1.0)
    spring = lambda r, neighbor=None: 0.05 * jnp.sum(r**2)  # noqa: E731  (eV/Å^2, 1 amu: period 202 fs; 65 steps scale by 0.53)
    init_fn, step_fn = md.nve(spring, 0.5)
    first = fns.allocate(start)
    state = init_fn(start, np.ones(30), velocities=np.zeros((30, 3)), neighbor=first)
    chunk = md.trajectory_chunk(step_fn, 65, 1, neighbor_update=fns.update, guards=md.Guards(max_temperature=1e30, max_reallocations=1))
    _, overflowed, _, overflow = chunk(state, first, md.total_energy(state))
    assert bool(overflow), "the test needs a chunk that overflows"
    assert fns.allocate(start).capacity == first.capacity  # the start does not show the crowding
    final, _ = md.run(chunk, state, 1, neighbor=first, neighbor_fn=fns)  # one reallocation must be enough
    assert np.all(np.isfinite(np.asarray(final.positions)))
