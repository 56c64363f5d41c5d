"""Compressed radial filters: accuracy of the default grid, exact derivatives, C¹ continuity, saving."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mlff_jax
import tolerances as tol
from mlff_jax import painn
from mlff_jax.compress import exact_filter
from mlff_jax.radial_table import tabulated_filter, tabulated_filter_slope
from conftest import upstream_path


@pytest.fixture(scope="module")
def models(load_model):
    exact = load_model("student-427k", "float64")
    return exact, exact.compress()


FEW = ["000_CH3CHO", "022_C6H6", "043_CF3CN", "062_water10"]


STUDENTS = ["tiny-77k", "student-427k"]


@pytest.mark.parametrize("name", STUDENTS)
@pytest.mark.parametrize("subset", [pytest.param("few"), pytest.param("all", marks=pytest.mark.slow)])
def test_table_error_at_the_default_spacing_is_far_below_the_float32_parity_bar(load_model, reference, name, subset):
    """Float64, compressed vs exact model: the interpolation error alone, a tenth of the float32
    parity bar or less (measured on every structure: 2.8e-6 eV/Å for 427K, 5.9e-7 for 77K)."""
    assert tol.COMPRESSED_FORCES <= tol.PARITY_F32_FORCES / 10
    exact = load_model(name, "float64")
    compressed = exact.compress()
    ref = reference(name)
    for s in FEW if subset == "few" else ref.structures:
        e0, f0 = exact.energy_and_forces(ref[s, "R"], ref[s, "Z"])
        e1, f1 = compressed.energy_and_forces(ref[s, "R"], ref[s, "Z"])
        assert abs(float(e1) - float(e0)) / len(ref[s, "Z"]) <= tol.COMPRESSED_ENERGY_PER_ATOM, s
        np.testing.assert_allclose(np.asarray(f1), np.asarray(f0), rtol=0, atol=tol.COMPRESSED_FORCES, err_msg=s)


@pytest.mark.parametrize("name", STUDENTS)
def test_compressed_float32_forces_match_upstream_float64_within_float32_parity(reference, name):
    """The default compressed model in float32, built and run as a GPU user runs it (JAX's 64-bit
    mode off), against upstream's float64 on every reference structure: within the float32 parity
    bar, like the exact float32 model (CPU: 2.4e-5 eV/Å for 77K, 5.3e-5 for 427K; exact float32
    2.7e-5, 4.2e-5). Tables built and stored as float32 node values and slopes gave 1.6e-4 and 4.8e-4."""
    ref = reference(name)
    structures = ref.structures
    positions, numbers, batch = reference_batch(ref)
    with jax.enable_x64(False):
        model = mlff_jax.load(upstream_path("checkpoints", f"{name}.model.pt"), dtype="float32").compress()
        assert model.params["interactions_0"]["filter_table"]["coefficients"].dtype == jnp.float32
        energies, forces = model.energy_and_forces(positions, numbers, batch=batch)  # one call: structures never interact
    force_error = np.abs(np.asarray(forces, np.float64) - np.concatenate([ref[s, "F_f64"] for s in structures])).max()
    energy_error = np.abs(np.asarray(energies, np.float64) - [float(ref[s, "E_f64"]) for s in structures]) / np.bincount(batch)
    assert force_error <= tol.PARITY_F32_FORCES, force_error
    assert energy_error.max() <= tol.PARITY_F32_ENERGY_PER_ATOM, energy_error.max()


def reference_batch(ref):
    """Every reference structure in one batch: positions [N, 3], numbers [N], batch [N]."""
    structures = ref.structures
    batch = np.concatenate([np.full(len(ref[s, "Z"]), i) for i, s in enumerate(structures)])
    return np.concatenate([ref[s, "R"] for s in structures]), np.concatenate([ref[s, "Z"] for s in structures]), batch


@pytest.mark.parametrize("name", [pytest.param("tiny-77k", marks=pytest.mark.slow), "student-427k"])
def test_compressed_float32_with_the_md_ready_options_stays_within_float32_parity(load_model, reference, name):
    """The student's weights under filter_envelope="polynomial" and vector_mixing="channels" (random
    channel mixing): compressed float32 (64-bit mode off) vs the exact float64 model with the same
    options, every reference structure (CPU: 1.6e-5 eV/Å for 77K, 5.0e-5 for 427K; float32 tables
    gave 2.5e-4 and 5.5e-4)."""
    import dataclasses

    base = load_model(name, "float64")
    config = dataclasses.replace(base.config, filter_envelope="polynomial", vector_mixing="channels")
    rng = np.random.default_rng(0)
    params = dict(base.params)
    for t in range(config.num_interactions):
        block = {k: v for k, v in params[f"interactions_{t}"].items() if k != "mixing_matrix"}
        block["channel_mixing"] = jnp.asarray(np.eye(config.hidden_dim) + 0.3 * rng.normal(size=(config.hidden_dim,) * 2) / np.sqrt(config.hidden_dim))
        params[f"interactions_{t}"] = block
    positions, numbers, batch = reference_batch(reference(name))
    _, forces64 = mlff_jax.PaiNNStudent(config, params, dtype="float64").energy_and_forces(positions, numbers, batch=batch)
    with jax.enable_x64(False):
        _, forces32 = mlff_jax.PaiNNStudent(config, params, dtype="float32").compress().energy_and_forces(positions, numbers, batch=batch)
    error = np.abs(np.asarray(forces32, np.float64) - np.asarray(forces64)).max()
    assert error <= tol.PARITY_F32_FORCES, error


def test_float32_table_derivative_is_as_accurate_as_the_float32_network(models):
    """dW/dd of a float32 table against the float64 network, relative to max |dW/dd|: at the level of
    the float32 network itself (427K: network 6e-7, table 1.2e-6 to 1.9e-6). Node values stored in
    float32 made it ~ulp(W)/h: 2.6e-5 to 4.1e-5."""
    exact, compressed = models
    cutoff = exact.config.cutoff
    d = jnp.asarray(np.random.default_rng(0).uniform(0.3, cutoff, 5000))
    for t in range(exact.config.num_interactions):
        block = exact.params[f"interactions_{t}"]
        _, slope = jax.jvp(lambda x: exact_filter(block, exact.params["rbf"], x, cutoff), (d,), (jnp.ones_like(d),))
        table32 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), compressed.params[f"interactions_{t}"]["filter_table"])
        slope32 = tabulated_filter_slope(table32, d.astype(jnp.float32), cutoff)
        error = float(jnp.abs(slope32.astype(jnp.float64) - slope).max() / jnp.abs(slope).max())
        assert error <= tol.COMPRESSED_F32_FILTER_SLOPE_REL, (t, error)


def test_tables_are_built_in_float64_whatever_the_64bit_setting(load_model):
    """A float32 model compressed with JAX's 64-bit mode off gets the float64 table, cast."""
    model = load_model("tiny-77k", "float32")
    with jax.enable_x64(False):
        off = model.compress().params
    on = model.compress().params
    for t in range(model.config.num_interactions):
        a, b = (np.asarray(p[f"interactions_{t}"]["filter_table"]["coefficients"]) for p in (off, on))
        assert a.dtype == b.dtype == np.float32
        np.testing.assert_array_equal(a, b)


def test_compressed_forces_are_the_exact_derivative_of_the_compressed_energy(models, reference):
    _, compressed = models
    ref = reference("student-427k")
    positions, z = ref["000_CH3CHO", "R"], ref["000_CH3CHO", "Z"]
    _, forces = compressed.energy_and_forces(positions, z)
    h = 1e-5
    for atom, axis in [(0, 0), (3, 1), (6, 2)]:
        plus, minus = positions.copy(), positions.copy()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        fd = -(float(compressed.energy_fn(plus, z)) - float(compressed.energy_fn(minus, z))) / (2 * h)
        assert abs(fd - float(forces[atom, axis])) <= tol.FINITE_DIFFERENCE_FORCES


def test_tabulated_filter_is_continuously_differentiable_at_grid_nodes(models):
    exact, compressed = models
    table = jax.tree_util.tree_map(jnp.asarray, compressed.params["interactions_1"]["filter_table"])
    cutoff = exact.config.cutoff
    h = cutoff / table["coefficients"].shape[0]
    node = 417 * h
    eps = 1e-9
    f = lambda d: tabulated_filter(table, jnp.atleast_1d(d), cutoff)[0]
    left, right = f(node - eps), f(node + eps)
    np.testing.assert_allclose(np.asarray(left), np.asarray(right), atol=1e-7)
    dleft, dright = jax.jacfwd(f)(node - eps), jax.jacfwd(f)(node + eps)
    np.testing.assert_allclose(np.asarray(dleft), np.asarray(dright), atol=1e-5 * float(jnp.abs(dleft).max()))
    np.testing.assert_allclose(np.asarray(f(node)), np.asarray(table["coefficients"][417, 0]), atol=tol.ROUNDOFF_F64)


def test_table_reproduces_the_network_at_the_cutoff_where_the_model_still_counts_the_edge(models):
    exact, compressed = models
    cutoff = exact.config.cutoff
    block = exact.params["interactions_0"]
    table = compressed.params["interactions_0"]["filter_table"]
    d = jnp.array([0.0, cutoff])
    np.testing.assert_allclose(
        np.asarray(tabulated_filter(table, d, cutoff)), np.asarray(exact_filter(block, exact.params["rbf"], d, cutoff)), atol=tol.ROUNDOFF_F64
    )


def test_compressed_model_saves_and_loads_without_rebuilding(models, tmp_path, monkeypatch):
    _, compressed = models
    path = tmp_path / "compressed.safetensors"
    mlff_jax.save(compressed, path)
    import mlff_jax.compress as compress_module

    monkeypatch.setattr(compress_module, "build_filter_table", lambda *a, **k: pytest.fail("table rebuilt on load"))
    again = mlff_jax.load(path, dtype="float64")
    flat0, flat1 = painn.flatten(compressed.params), painn.flatten(again.params)
    assert flat0.keys() == flat1.keys() and any("filter_table" in k for k in flat1)
    for k in flat0:
        np.testing.assert_array_equal(np.asarray(flat0[k]), np.asarray(flat1[k]))


def test_a_file_with_the_older_table_layout_loads_with_its_tables_rebuilt(models, tmp_path):
    """Files written before tables were stored as coefficients hold node values and slopes
    [G + 1, 3H] ('filter_table_rows' = G + 1): loading rebuilds the tables from the file's own filter
    networks on the same grid, i.e. exactly what compress() builds."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    _, compressed = models
    path = tmp_path / "new.safetensors"
    mlff_jax.save(compressed, path)
    with safe_open(str(path), "numpy") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    intervals = int(metadata.pop("filter_table_intervals"))
    metadata["filter_table_rows"] = str(intervals + 1)
    spacing = compressed.config.cutoff / intervals
    for t in range(compressed.config.num_interactions):
        c = tensors.pop(f"interactions_{t}/filter_table/coefficients")
        tensors[f"interactions_{t}/filter_table/values"] = np.concatenate([c[:, 0], c[-1:].sum(axis=1)])
        tensors[f"interactions_{t}/filter_table/slopes"] = np.concatenate([c[:, 1], (c[-1:, 1] + 2 * c[-1:, 2] + 3 * c[-1:, 3])]) / spacing
    legacy = tmp_path / "legacy.safetensors"
    save_file(tensors, str(legacy), metadata=metadata)
    again = mlff_jax.load(legacy, dtype="float64")
    for t in range(compressed.config.num_interactions):
        np.testing.assert_array_equal(np.asarray(again.params[f"interactions_{t}"]["filter_table"]["coefficients"]),
                                      np.asarray(compressed.params[f"interactions_{t}"]["filter_table"]["coefficients"]))  # fmt: skip


def test_bad_spacing_is_refused(models):
    exact, _ = models
    with pytest.raises(ValueError, match="spacing must be a positive"):
        exact.compress(0.0)
    with pytest.raises(ValueError, match="more than a million"):
        exact.compress(1e-8)



def test_nve_energy_conservation_of_the_compressed_model_is_no_worse(models):
    """Same ethanol NVE run (float64, 0.5 fs, 400 steps) with exact and compressed filters: the
    interpolant is C¹, so the total-energy fluctuation must stay at the exact model's level."""
    import jax

    from md_helpers import max_deviation_per_atom, pair_distances
    from mlff_jax import md
    from mlff_jax.data import example

    atoms = example("ethanol")
    deviations = []
    for model in models:
        init_fn, step_fn = md.nve(md.model_potential(model, atoms.numbers), 0.5)
        state = init_fn(atoms.positions, atoms.get_masses(), key=jax.random.key(3), temperature=300.0)
        _, frames = md.run(md.trajectory_chunk(step_fn, 4, 100), state, 1)
        assert pair_distances(frames.positions).max() < model.config.cutoff - 0.5
        deviations.append(max_deviation_per_atom(frames.total_energy, len(atoms)))
    exact, compressed = deviations
    assert exact > 0
    assert compressed <= 1.1 * exact + 1e-7, (exact, compressed)
