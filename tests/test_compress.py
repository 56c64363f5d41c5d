"""Compressed radial filters: accuracy of the default grid, exact derivatives, C¹ continuity, saving."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mlff_jax
import tolerances as tol
from mlff_jax import painn
from mlff_jax.compress import exact_filter
from mlff_jax.radial_table import tabulated_filter


@pytest.fixture(scope="module")
def models(load_model):
    exact = load_model("student-427k", "float64")
    return exact, exact.compress()


FEW = ["000_CH3CHO", "022_C6H6", "043_CF3CN", "062_water10"]


@pytest.mark.parametrize("subset", [pytest.param("few"), pytest.param("all", marks=pytest.mark.slow)])
def test_default_spacing_meets_the_accuracy_bar_on_the_reference_set(models, reference, subset):
    exact, compressed = models
    ref = reference("student-427k")
    for s in FEW if subset == "few" else ref.structures:
        e0, f0 = exact.energy_and_forces(ref[s, "R"], ref[s, "Z"])
        e1, f1 = compressed.energy_and_forces(ref[s, "R"], ref[s, "Z"])
        assert abs(float(e1) - float(e0)) / len(ref[s, "Z"]) <= tol.COMPRESSED_ENERGY_PER_ATOM, s
        np.testing.assert_allclose(np.asarray(f1), np.asarray(f0), rtol=0, atol=tol.COMPRESSED_FORCES, err_msg=s)


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
    h = cutoff / (table["values"].shape[0] - 1)
    node = 417 * h
    eps = 1e-9
    f = lambda d: tabulated_filter(table, jnp.atleast_1d(d), cutoff)[0]
    left, right = f(node - eps), f(node + eps)
    np.testing.assert_allclose(np.asarray(left), np.asarray(right), atol=1e-7)
    dleft, dright = jax.jacfwd(f)(node - eps), jax.jacfwd(f)(node + eps)
    np.testing.assert_allclose(np.asarray(dleft), np.asarray(dright), atol=1e-5 * float(jnp.abs(dleft).max()))
    np.testing.assert_allclose(np.asarray(f(node)), np.asarray(table["values"][417]), atol=tol.ROUNDOFF_F64)


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
