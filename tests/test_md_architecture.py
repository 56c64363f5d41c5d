"""The MD-ready architecture options (PaiNNConfig.filter_envelope, .vector_mixing): rotation
invariance, continuity at the cutoff, analytic = autodiff for every option combination, compressed
tables, and energy conservation of a dense periodic box, each contrasted with the upstream
architecture. Random weights (no trained model has the options), float64 on CPU."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tolerances as tol
from mlff_jax import analytic, painn
from mlff_jax.analytic_graph import all_pairs_graph
from mlff_jax.compress import compress_params
from mlff_jax.config import FILTER_ENVELOPES, VECTOR_MIXINGS, PaiNNConfig
from mlff_jax.graph import all_pairs_edges

SMALL = dict(hidden_dim=16, num_interactions=2, num_rbf=8, max_z=10)
SMOOTH = dict(filter_envelope="polynomial", vector_mixing="channels")
UPSTREAM = dict(filter_envelope=None, vector_mixing="cartesian")
COMBINATIONS = list(itertools.product(FILTER_ENVELOPES, VECTOR_MIXINGS))


def make_params(config: PaiNNConfig, seed: int = 0, scale: float = 1.0):
    """Random float64 weights; mixing matrices random too (the identity would hide the difference
    between Cartesian and channel mixing). ``scale`` multiplies the filter's output layer."""
    edges = all_pairs_edges(jnp.ones(2, bool), jnp.zeros(2, jnp.int32), jnp.float64)
    variables = painn.PaiNN(config).init(jax.random.PRNGKey(seed), jnp.zeros((2, 3)), jnp.ones(2, jnp.int32), edges,
                                         jnp.ones(2, bool), jnp.zeros(2, jnp.int32), 1)  # fmt: skip
    flat = dict(variables["params"])
    rng = np.random.default_rng(seed)
    for path in flat:
        if path.endswith("mixing_matrix"):
            flat[path] = jnp.asarray(np.eye(3) + 0.3 * rng.normal(size=(3, 3)))
        elif path.endswith("channel_mixing"):
            h = config.hidden_dim
            flat[path] = jnp.asarray(np.eye(h) + rng.normal(size=(h, h)) / np.sqrt(h))
        elif "filter_out" in path:
            flat[path] = flat[path] * scale
    return painn.unflatten(flat)


def random_rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def molecule(seed: int = 0, n: int = 9):
    """A random, non-symmetric 'molecule' of H, C, O, some pairs beyond the 5 Å cutoff."""
    rng = np.random.default_rng(seed)
    points = []
    while len(points) < n:
        p = rng.uniform(0.0, 5.5, 3)
        if all(np.linalg.norm(p - q) >= 0.9 for q in points):
            points.append(p)
    numbers = rng.choice([1, 6, 8], size=n)
    return np.array(points), numbers


def inputs(positions, numbers):
    n = len(numbers)
    return jnp.asarray(positions, jnp.float64), jnp.asarray(numbers, jnp.int32), jnp.ones(n, bool), jnp.zeros(n, jnp.int32)


@functools.partial(jax.jit, static_argnames=("config",))
def autodiff_energy_forces(params, config, positions, numbers, mask, batch):
    edges = all_pairs_edges(mask, batch, positions.dtype)

    def total(pos):
        return jnp.sum(painn.structure_energies(params, config, pos, numbers, edges, mask, batch, 1))

    energy, grad = jax.value_and_grad(total)(positions)
    return energy, -grad


@functools.partial(jax.jit, static_argnames=("config", "layout"))
def analytic_energy_forces(params, config, positions, numbers, mask, batch, layout="scatter"):
    if layout == "edges":
        graph = all_pairs_edges(mask, batch, positions.dtype)
    else:
        graph = all_pairs_graph(mask, batch, positions.dtype, accumulate=layout)
    result = analytic.energy_forces_virial(params, config, positions, numbers, graph, mask, batch, 1)
    return result.energies[0], result.forces


# ------------------------------------------------------------------------------ configuration
def test_defaults_are_the_upstream_architecture():
    config = PaiNNConfig()
    assert config.filter_envelope is None and config.vector_mixing == "cartesian" and config.is_upstream_architecture
    assert PaiNNConfig.from_dict({"hidden_dim": 16, "cutoff_fn": "cosine"}).is_upstream_architecture  # old metadata


@pytest.mark.parametrize("change, message", [(dict(filter_envelope="cosine"), "filter_envelope"), (dict(vector_mixing="xyz"), "vector_mixing")])
def test_unknown_options_raise_value_error(change, message):
    with pytest.raises(ValueError, match=message):
        PaiNNConfig(**change)


def test_parameter_layout_follows_vector_mixing():
    shapes = {m: painn.param_shapes(PaiNNConfig(**SMALL, vector_mixing=m)) for m in VECTOR_MIXINGS}
    assert shapes["cartesian"]["interactions_0/mixing_matrix"] == (3, 3) and "interactions_0/channel_mixing" not in shapes["cartesian"]
    assert shapes["channels"]["interactions_1/channel_mixing"] == (16, 16) and "interactions_1/mixing_matrix" not in shapes["channels"]
    assert not any("mixing" in k for k in shapes["none"])
    for m in VECTOR_MIXINGS:  # the parameter count agrees with the layout
        config = PaiNNConfig(**SMALL, vector_mixing=m)
        counted = sum(int(np.prod(s)) for k, s in painn.param_shapes(config).items() if not k.startswith("rbf/"))
        assert counted == config.num_parameters


# ------------------------------------------------------------------------------ rotations
@pytest.mark.parametrize("envelope, mixing", [("polynomial", "channels"), (None, "none")])
def test_energy_is_rotation_invariant_and_forces_rotate_with_the_structure(envelope, mixing):
    config = PaiNNConfig(**SMALL, filter_envelope=envelope, vector_mixing=mixing)
    params = make_params(config, seed=1)
    positions, numbers = molecule(seed=2)
    energy, forces = analytic_energy_forces(params, config, *inputs(positions, numbers))
    for seed in range(3):
        rotation = random_rotation(seed)
        center = positions.mean(axis=0)
        rotated = (positions - center) @ rotation.T + center + np.array([0.3, -1.0, 2.0])
        energy_r, forces_r = analytic_energy_forces(params, config, *inputs(rotated, numbers))
        np.testing.assert_allclose(float(energy_r), float(energy), rtol=0, atol=tol.ROUNDOFF_F64)
        np.testing.assert_allclose(np.asarray(forces_r), np.asarray(forces) @ rotation.T, rtol=0, atol=tol.ROUNDOFF_F64)
    assert np.abs(np.asarray(forces)).max() > 1e-2  # the forces are not trivially zero


def test_cartesian_mixing_is_not_rotation_invariant():
    """The contrast: with a (random) 3 x 3 mixing matrix, the upstream architecture's energy changes
    under rotation by far more than round-off."""
    config = PaiNNConfig(**SMALL, **UPSTREAM)
    params = make_params(config, seed=1)
    positions, numbers = molecule(seed=2)
    energy, _ = analytic_energy_forces(params, config, *inputs(positions, numbers))
    rotated = positions @ random_rotation(0).T
    energy_r, _ = analytic_energy_forces(params, config, *inputs(rotated, numbers))
    assert abs(float(energy_r) - float(energy)) > 1e3 * tol.ROUNDOFF_F64


def test_planar_water_gets_in_plane_mirror_symmetric_forces():
    """A water molecule in the xy plane, symmetric under y -> -y... rotated off the axes: with channel
    mixing the forces stay in the molecular plane and mirror-symmetric (the two H feel mirror forces)."""
    config = PaiNNConfig(**SMALL, **SMOOTH)
    params = make_params(config, seed=3)
    angle = np.deg2rad(104.5 / 2)
    water = np.array([[0.0, 0.0, 0.0], [0.96 * np.cos(angle), 0.96 * np.sin(angle), 0.0], [0.96 * np.cos(angle), -0.96 * np.sin(angle), 0.0]])
    rotation = random_rotation(5)
    _, forces = analytic_energy_forces(params, config, *inputs(water @ rotation.T, np.array([8, 1, 1])))
    local = np.asarray(forces) @ rotation  # back in the molecule's frame
    np.testing.assert_allclose(local[:, 2], 0.0, rtol=0, atol=tol.ROUNDOFF_F64)
    np.testing.assert_allclose(local[1] * [1, -1, 1], local[2], rtol=0, atol=tol.ROUNDOFF_F64)
    assert np.abs(local).max() > 1e-2


# ------------------------------------------------------------------------------ the cutoff
def _swept_pair(separation: float):
    """A C-C pair at ``separation`` (along a skew direction) with an O and an H bonded to the first C
    on the far side: only the C-C pair sits near the cutoff."""
    axis = np.array([1.0, 2.0, 2.0]) / 3.0
    perpendicular = np.array([2.0, 1.0, -2.0]) / 3.0
    positions = np.array([[0.0, 0.0, 0.0], separation * axis, -1.2 * axis + 0.3 * perpendicular, -0.8 * axis - 0.8 * perpendicular])
    return positions, np.array([6, 6, 8, 1])


def _energy_jump(config, params, delta):
    inside = analytic_energy_forces(params, config, *inputs(*_swept_pair(config.cutoff - delta)))
    outside = analytic_energy_forces(params, config, *inputs(*_swept_pair(config.cutoff + delta)))
    return abs(float(inside[0]) - float(outside[0])), float(np.abs(np.asarray(inside[1]) - np.asarray(outside[1])).max())


@pytest.mark.parametrize("mixing", VECTOR_MIXINGS)
def test_energy_and_forces_are_continuous_across_the_cutoff(mixing):
    config = PaiNNConfig(**SMALL, filter_envelope="polynomial", vector_mixing=mixing)
    params = make_params(config, seed=4)
    positions, numbers = _swept_pair(config.cutoff)
    distances = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    assert np.sum(np.abs(distances - config.cutoff) < 0.5) == 2  # only the swept pair is near rc
    energy_jump, force_jump = _energy_jump(config, params, delta=1e-7)
    assert energy_jump <= tol.CUTOFF_CONTINUITY_ENERGY
    assert force_jump <= tol.CUTOFF_CONTINUITY_FORCES


def test_upstream_architecture_energy_steps_at_the_cutoff():
    """The contrast: without the envelope the same sweep jumps by orders of magnitude more."""
    config = PaiNNConfig(**SMALL, **UPSTREAM)
    energy_jump, _ = _energy_jump(config, make_params(config, seed=4), delta=1e-7)
    assert energy_jump > 1e4 * tol.CUTOFF_CONTINUITY_ENERGY


def test_envelope_value_and_two_derivatives_vanish_at_the_cutoff():
    rc = 5.0
    env = lambda d: painn.polynomial_envelope(jnp.atleast_1d(d), rc)[0][0]
    d1, d2 = jax.grad(env), jax.grad(jax.grad(env))
    assert float(env(rc)) == 0.0 and float(d1(rc)) == 0.0 and float(d2(rc)) == 0.0
    assert float(env(rc + 0.1)) == 0.0 and float(d1(rc + 0.1)) == 0.0
    delta = 1e-4  # near rc: env ~ 56 (δ/rc)^3, env' ~ -168 (δ/rc)^2 / rc, env'' ~ 336 (δ/rc) / rc^2, no round-off floor
    x = delta / rc
    np.testing.assert_allclose(float(env(rc - delta)), 56 * x**3, rtol=1e-3)
    np.testing.assert_allclose(float(d1(rc - delta)), -168 * x**2 / rc, rtol=1e-3)
    np.testing.assert_allclose(float(d2(rc - delta)), 336 * x / rc**2, rtol=1e-3)
    np.testing.assert_allclose(float(env(0.5)), 1.0 - 28e-6 + 48e-7 - 21e-8, rtol=1e-12)  # short pairs: 1 - O(x^6)
    np.testing.assert_allclose(float(painn.polynomial_envelope(jnp.array([2.0]), rc)[1][0]), float(d1(2.0)), rtol=1e-12)


# ------------------------------------------------------------------------------ analytic sweep
@pytest.mark.parametrize("envelope, mixing", COMBINATIONS)
def test_analytic_forces_match_autodiff_for_every_option_combination(envelope, mixing):
    config = PaiNNConfig(**SMALL, filter_envelope=envelope, vector_mixing=mixing)
    params = make_params(config, seed=6)
    args = inputs(*molecule(seed=7, n=10))
    energy_ad, forces_ad = autodiff_energy_forces(params, config, *args)
    for layout in ("scatter", "gather", "edges"):
        energy, forces = analytic_energy_forces(params, config, *args, layout=layout)
        np.testing.assert_allclose(float(energy), float(energy_ad), rtol=0, atol=tol.ANALYTIC_VS_AUTODIFF_F64, err_msg=layout)
        np.testing.assert_allclose(np.asarray(forces), np.asarray(forces_ad), rtol=0, atol=tol.ANALYTIC_VS_AUTODIFF_F64, err_msg=layout)
    assert np.abs(np.asarray(forces_ad)).max() > 1e-2


@pytest.mark.parametrize("envelope, mixing", [(None, "cartesian"), ("polynomial", "channels"), ("polynomial", "none")])
def test_recomputed_and_chunked_filters_match_autodiff(envelope, mixing):
    config = PaiNNConfig(**SMALL, filter_envelope=envelope, vector_mixing=mixing)
    params = make_params(config, seed=8)
    args = inputs(*molecule(seed=9, n=10))
    _, forces_ad = autodiff_energy_forces(params, config, *args)
    graph = all_pairs_graph(args[2], args[3], jnp.float64, accumulate="scatter")
    for options in (dict(store_filters=False), dict(chunk_size=16)):
        result = analytic.energy_forces_virial(params, config, *args[:2], graph, args[2], args[3], 1, **options)
        np.testing.assert_allclose(np.asarray(result.forces), np.asarray(forces_ad), rtol=0, atol=tol.ANALYTIC_VS_AUTODIFF_F64, err_msg=str(options))


# ------------------------------------------------------------------------------ every path
def student(config, params, **options):
    from mlff_jax.model import PaiNNStudent

    return PaiNNStudent(config, params, dtype="float64", implementation=options.pop("implementation", "xla"), **options)


def test_periodic_energy_forces_and_stress_analytic_match_autodiff_and_are_rotation_invariant():
    """A triclinic water box thinner than 2 rc (atoms see their own images): the analytic sweep's
    forces and stress equal autodiff's, and rotating positions and cell together rotates them."""
    from periodic_systems import water_box

    config = PaiNNConfig(**SMALL, **SMOOTH)
    model = student(config, make_params(config, seed=10))
    cell = np.array([[6.25, 0.0, 0.0], [0.6, 6.2, 0.0], [-0.4, 0.5, 6.3]])
    positions, numbers = water_box(2, cell, seed=3)
    energy, forces, stress = model.energy_forces_stress(positions, numbers, cell=cell)
    energy_ad, forces_ad, stress_ad = model.energy_forces_stress(positions, numbers, cell=cell, method="autodiff")
    np.testing.assert_allclose(float(energy), float(energy_ad), rtol=0, atol=tol.ANALYTIC_VS_AUTODIFF_F64)
    np.testing.assert_allclose(np.asarray(forces), np.asarray(forces_ad), rtol=0, atol=tol.ANALYTIC_VS_AUTODIFF_F64)
    np.testing.assert_allclose(np.asarray(stress), np.asarray(stress_ad), rtol=0, atol=tol.ANALYTIC_VS_AUTODIFF_F64)
    rotation = random_rotation(11)
    energy_r, forces_r, stress_r = model.energy_forces_stress(positions @ rotation.T, numbers, cell=cell @ rotation.T)
    np.testing.assert_allclose(float(energy_r), float(energy), rtol=0, atol=tol.ROUNDOFF_F64)
    np.testing.assert_allclose(np.asarray(forces_r), np.asarray(forces) @ rotation.T, rtol=0, atol=tol.ROUNDOFF_F64)
    np.testing.assert_allclose(np.asarray(stress_r), rotation @ np.asarray(stress) @ rotation.T, rtol=0, atol=tol.ROUNDOFF_F64)
    assert np.abs(np.asarray(stress)).max() > 1e-4


@pytest.mark.parametrize("compressed", [False, True])
def test_kernel_model_with_the_options_matches_the_xla_model(compressed):
    """The fused Pallas kernels (interpret mode) with envelope + channel mixing, network filters
    and compressed tables, against the edge-list XLA model on the same parameters."""
    from mlff_jax.kernels.message_passing import layout
    from mlff_jax.kernels.message_passing.model import energy_and_forces_kernel

    config = PaiNNConfig(**SMALL, **SMOOTH)
    params = make_params(config, seed=12)
    if compressed:
        params = compress_params(params, config, spacing=0.05)
    positions, numbers = molecule(seed=13, n=8)
    args = inputs(positions, numbers)
    energy_ad, forces_ad = autodiff_energy_forces(params, config, *args)
    nbr, shifts = layout.all_pairs_dense(positions, config.cutoff)
    run = jax.jit(functools.partial(energy_and_forces_kernel, config=config, num_structures=1, implementation="pallas", interpret=True))
    energies, forces = run(params, positions=args[0], atomic_numbers=args[1], neighbors_idx=jnp.asarray(nbr),
                           shifts=jnp.asarray(shifts, jnp.float64), atom_mask=args[2], batch=args[3])  # fmt: skip
    np.testing.assert_allclose(float(energies[0]), float(energy_ad), rtol=0, atol=tol.ROUNDOFF_F64)
    np.testing.assert_allclose(np.asarray(forces), np.asarray(forces_ad), rtol=0, atol=tol.ROUNDOFF_F64)


def test_compressed_tables_hold_the_enveloped_filter_within_tolerance():
    """compress() tabulates env(d) W(e(d)): the table is zero at rc, and energies and forces of the
    compressed model stay within the compressed-filter tolerances of the exact one."""
    config = PaiNNConfig(**SMALL, **SMOOTH)
    params = make_params(config, seed=14)
    compressed = compress_params(params, config)
    last = np.asarray(compressed["interactions_0"]["filter_table"]["coefficients"])[-1]  # [4, 3H]: c0..c3 of the last interval
    np.testing.assert_allclose(last.sum(axis=0), 0.0, rtol=0, atol=tol.ROUNDOFF_F64)  # W(rc) = c0 + c1 + c2 + c3
    np.testing.assert_allclose(last[1] + 2 * last[2] + 3 * last[3], 0.0, rtol=0, atol=tol.ROUNDOFF_F64)  # h W'(rc)
    positions, numbers = molecule(seed=15, n=10)
    args = inputs(positions, numbers)
    energy, forces = analytic_energy_forces(params, config, *args)
    energy_c, forces_c = analytic_energy_forces(compressed, config, *args)
    assert abs(float(energy_c) - float(energy)) / len(numbers) <= tol.COMPRESSED_ENERGY_PER_ATOM
    np.testing.assert_allclose(np.asarray(forces_c), np.asarray(forces), rtol=0, atol=tol.COMPRESSED_FORCES)
    _, forces_ad = autodiff_energy_forces(compressed, config, *args)
    np.testing.assert_allclose(np.asarray(forces_c), np.asarray(forces_ad), rtol=0, atol=tol.ANALYTIC_VS_AUTODIFF_F64)


def test_options_round_trip_through_our_checkpoint_and_show_in_repr(tmp_path):
    import mlff_jax
    from mlff_jax.io import write_checkpoint

    config = PaiNNConfig(**SMALL, filter_envelope="polynomial", vector_mixing="channels", elements=(1, 6, 7, 8))
    params = make_params(config, seed=16)
    path = tmp_path / "smooth.safetensors"
    write_checkpoint(path, config, painn.flatten(params))
    model = mlff_jax.load(path, dtype="float64", implementation="xla")
    assert model.config == config
    assert "filter_envelope='polynomial'" in repr(model) and "vector_mixing='channels'" in repr(model)
    np.testing.assert_array_equal(np.asarray(model.params["interactions_1"]["channel_mixing"]), np.asarray(params["interactions_1"]["channel_mixing"]))
    positions, numbers = molecule(seed=17, n=6)
    energy, _ = model.energy_and_forces(positions, numbers)
    np.testing.assert_allclose(float(energy), float(analytic_energy_forces(params, config, *inputs(positions, numbers))[0]), rtol=0, atol=tol.ROUNDOFF_F64)


def test_train_config_passes_the_options_to_the_model():
    from mlff_jax.train.trainer import TrainConfig, fresh_params

    cfg = TrainConfig(hidden_dim=16, num_interactions=2, num_rbf=8, max_z=10, filter_envelope="polynomial", vector_mixing="channels")
    assert cfg.model_config.filter_envelope == "polynomial" and cfg.model_config.vector_mixing == "channels"
    assert TrainConfig().model_config.is_upstream_architecture
    params = fresh_params(cfg.model_config, seed=0)
    np.testing.assert_array_equal(np.asarray(params["interactions_0"]["channel_mixing"]), np.eye(16))
    assert "mixing_matrix" not in params["interactions_0"]


# ------------------------------------------------------------------------------ NVE
NVE_CELL = np.diag([6.2, 6.2, 6.2])  # 8 waters at ~1 g/cm^3, thinner than 2 rc: atoms see their images


def nve_run(options: dict, steps: int = 2000, timestep: float = 0.25, seed: int = 0):
    """Velocity Verlet (float64, 0.25 fs) of a dense periodic water box (24 atoms) with gentle random
    weights (filter output scaled by 0.1), neighbour list with a skin updated inside the compiled
    loop. Returns (frames, number of pair crossings of rc seen between frames)."""
    from ase.data import atomic_masses

    from md_helpers import pair_distances
    from mlff_jax import md, neighbors
    from periodic_systems import water_box

    config = PaiNNConfig(**SMALL, **options)
    model = student(config, make_params(config, seed=20, scale=0.1))
    positions, numbers = water_box(2, NVE_CELL, seed=seed)
    neighbor_fn = neighbors.neighbor_list_fn(config.cutoff, skin=0.5, cell=NVE_CELL, pbc=(True, True, True))
    nbrs = neighbor_fn.allocate(jnp.asarray(positions))
    init_fn, step_fn = md.nve(md.model_potential(model, numbers), timestep)
    state = init_fn(positions, atomic_masses[numbers], key=jax.random.key(seed), temperature=300.0, neighbor=nbrs)
    # no guards: this test measures the drift itself, and the upstream architecture's run is meant to
    # break energy conservation (the NVE energy guard would stop it)
    chunk = md.trajectory_chunk(step_fn, 10, steps // 10, neighbor_update=neighbor_fn.update, guards=None)
    _, frames = md.run(chunk, state, 1, neighbor=nbrs, neighbor_fn=neighbor_fn)
    inside = pair_distances(frames.positions, NVE_CELL) < config.cutoff  # minimum image: L > rc
    return frames, int(np.sum(inside[1:] != inside[:-1]))


@pytest.mark.slow
def test_nve_of_a_dense_periodic_box_conserves_energy_with_the_smooth_model_and_not_without():
    """The smooth architecture (envelope + channel mixing) conserves the total energy of a box in
    which pairs keep crossing rc; the upstream architecture, on the same box and weights' scale,
    does not (its energy steps at each crossing)."""
    from md_helpers import energy_drift_per_atom

    smooth, crossings = nve_run(SMOOTH)
    upstream, crossings_upstream = nve_run(UPSTREAM)
    num_atoms = smooth.positions.shape[1]
    assert crossings > 20 and crossings_upstream > 20  # pairs do cross the cutoff, many times
    # the gentle forces still do work: the potential energy moves by far more than the bound (measured 0.3 eV)
    assert np.ptp(np.asarray(smooth.potential_energy)) > 100 * tol.MD_SMOOTH_BOX_ENERGY_DRIFT_PER_ATOM * num_atoms
    # measured (CPU, float64): drift 1.3e-8 eV/atom smooth, 9e-2 eV/atom upstream architecture
    assert energy_drift_per_atom(smooth.total_energy, num_atoms) <= tol.MD_SMOOTH_BOX_ENERGY_DRIFT_PER_ATOM
    assert energy_drift_per_atom(upstream.total_energy, num_atoms) > tol.MD_SMOOTH_BOX_ENERGY_DRIFT_PER_ATOM


@pytest.mark.slow
def test_ase_calculator_and_jax_md_energy_use_the_options():
    """The ASE calculator and the JAX-MD energy of a smooth model equal the analytic sweep."""
    from ase import Atoms

    from mlff_jax.calculator import MLFFCalculator

    jax_md = pytest.importorskip("jax_md")
    from mlff_jax.jax_md import energy_neighbor_list

    config = PaiNNConfig(**SMALL, **SMOOTH)
    params = make_params(config, seed=18)
    model = student(config, params)
    positions, numbers = molecule(seed=19, n=7)
    energy, forces = analytic_energy_forces(params, config, *inputs(positions, numbers))
    atoms = Atoms(numbers=numbers, positions=positions)
    atoms.calc = MLFFCalculator(model, dtype="float64")
    np.testing.assert_allclose(atoms.get_potential_energy(), float(energy), rtol=0, atol=tol.ROUNDOFF_F64)
    np.testing.assert_allclose(atoms.get_forces(), np.asarray(forces), rtol=0, atol=tol.ROUNDOFF_F64)
    displacement_fn, _ = jax_md.space.free()
    neighbor_fn, energy_fn = energy_neighbor_list(model, displacement_fn, 100.0, numbers, disable_cell_list=True)
    nbrs = neighbor_fn.allocate(jnp.asarray(positions))
    jax_md_energy, grad = jax.value_and_grad(energy_fn)(jnp.asarray(positions), nbrs)
    np.testing.assert_allclose(float(jax_md_energy), float(energy), rtol=0, atol=tol.ROUNDOFF_F64)
    np.testing.assert_allclose(-np.asarray(grad), np.asarray(forces), rtol=0, atol=tol.ROUNDOFF_F64)


def test_parameter_gradient_of_a_force_matching_loss_is_the_same_through_the_analytic_sweep():
    """Training with the options: the parameter gradient of a loss on energies and forces, through
    the analytic sweep, equals the one through autodiff forces (channel_mixing and the envelope included)."""
    config = PaiNNConfig(**SMALL, **SMOOTH)
    params = make_params(config, seed=21)
    args = inputs(*molecule(seed=22, n=6))
    target = jnp.asarray(np.random.default_rng(0).normal(size=(6, 3)))

    def loss(p, method):
        run = analytic_energy_forces if method == "analytic" else autodiff_energy_forces
        energy, forces = run(p, config, *args)
        return (energy - 1.0) ** 2 + jnp.sum((forces - target) ** 2)

    grad_analytic = jax.grad(loss)(params, "analytic")
    grad_autodiff = jax.grad(loss)(params, "autodiff")
    for path, value in painn.flatten(grad_autodiff).items():
        np.testing.assert_allclose(np.asarray(painn.flatten(grad_analytic)[path]), np.asarray(value), rtol=0, atol=tol.PARAM_GRAD_F64, err_msg=path)
    assert np.abs(np.asarray(grad_autodiff["interactions_0"]["channel_mixing"])).max() > 1e-6  # the map is trained


def test_converting_an_upstream_state_dict_with_the_options_raises_value_error():
    from mlff_jax.io.convert import state_dict_to_params

    with pytest.raises(ValueError, match="upstream architecture"):
        state_dict_to_params({}, PaiNNConfig(**SMALL, vector_mixing="channels"))


@pytest.mark.slow
def test_several_devices_equal_one_device_with_the_options():
    """Sharded batches and the slab decomposition of a periodic box (4 faked CPU devices, in a
    subprocess: tests/parallel_checks.py) with envelope + channel mixing equal one device."""
    import json
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "tests")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.run([sys.executable, str(root / "tests" / "parallel_checks.py"), "smooth"], env=env, capture_output=True, text=True, timeout=1200)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"parallel checks failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["devices"] == 4
    for key in ("batch_dense", "batch_periodic", "domain_4", "domain_2_model", "domain_3_edges"):
        energy, forces = result[key]
        assert energy < tol.ROUNDOFF_F64 and forces < tol.ROUNDOFF_F64, key
