"""The public API: jit/vmap/grad composition, bucketing, and clear errors for bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tolerances as tol
from mlff_jax.model import bucket_size


@pytest.fixture(scope="module")
def model(load_model):
    return load_model("ultra-tiny-21k", "float64")


@pytest.fixture(scope="module")
def molecule(reference):
    ref = reference("ultra-tiny-21k")
    return ref["000_CH3CHO", "R"], ref["000_CH3CHO", "Z"]


def test_energy_fn_composes_with_jit_grad_and_vmap(model, molecule):
    positions, z = molecule
    energy, forces = model.energy_and_forces(positions, z)
    e_jit = jax.jit(model.energy_fn)(positions, z)
    g = jax.jit(jax.grad(model.energy_fn))(positions, z)
    assert abs(float(e_jit) - float(energy)) <= tol.ROUNDOFF_F64
    np.testing.assert_allclose(-np.asarray(g), np.asarray(forces), atol=tol.ROUNDOFF_F64)
    shifted = np.stack([positions, positions + 1.0, positions - 2.0])
    energies = jax.vmap(model.energy_fn, in_axes=(0, None))(shifted, z)
    np.testing.assert_allclose(np.asarray(energies), float(energy), atol=tol.ROUNDOFF_F64)


def test_energy_and_forces_works_inside_jit(model, molecule):
    positions, z = molecule
    e0, f0 = model.energy_and_forces(positions, z)
    e1, f1 = jax.jit(model.energy_and_forces)(jnp.asarray(positions), jnp.asarray(z))
    assert abs(float(e1) - float(e0)) <= tol.ROUNDOFF_F64
    np.testing.assert_allclose(np.asarray(f1), np.asarray(f0), atol=tol.ROUNDOFF_F64)


def test_bucket_sizes_grow_geometrically():
    sizes = [bucket_size(n) for n in range(1, 200)]
    assert sizes[:8] == [8] * 8
    assert sorted(set(sizes)) == [8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256]
    assert all(bucket_size(n) >= n for n in range(1, 5000))


def test_molecules_of_many_sizes_share_few_compiled_programs(load_model, reference):
    model = load_model("ultra-tiny-21k", "float64", precision="high")  # a fresh model: its own cache
    ref = reference("ultra-tiny-21k")
    sizes = set()
    for s in ref.structures[:40]:
        model.energy_and_forces(ref[s, "R"], ref[s, "Z"])
        sizes.add(len(ref[s, "Z"]))
    assert len(sizes) >= 10
    assert len(model._executables) == len({bucket_size(n) for n in sizes}) <= 3


@pytest.mark.parametrize(
    "positions, z, message",
    [
        (np.zeros((2, 3)), np.array([6, 0]), r"unknown element: atomic number\(s\) \[0\]"),
        (np.zeros((2, 3)), np.array([6, 101]), r"unknown element: atomic number\(s\) \[101\] outside 1..100"),
        (np.array([[0.0, 0, 0], [np.nan, 0, 0]]), np.array([6, 1]), r"NaN or inf \(atoms \[1\]\)"),
        (np.array([[0.0, 0, 0], [np.inf, 0, 0]]), np.array([6, 1]), "NaN or inf"),
        (np.zeros((3, 3)), np.array([6, 1]), r"atomic_numbers must have shape \[N\] = \[3\]"),
        (np.zeros((3, 2)), np.array([6, 1, 1]), r"positions must have shape \[N, 3\]"),
        (np.zeros((0, 3)), np.zeros(0, int), r"positions must have shape \[N, 3\] with N >= 1"),
        (np.zeros((2, 3)), np.array([6.0, 1.5]), "atomic_numbers must be integers"),
        (np.zeros((2, 3)), np.array(["C", "H"]), "atomic_numbers must be integers"),
    ],
)
def test_bad_input_raises_a_value_error_naming_the_problem(model, positions, z, message):
    with pytest.raises(ValueError, match=message):
        model.energy_and_forces(positions, z)


def test_bad_batch_index_is_refused(model, molecule):
    positions, z = molecule
    with pytest.raises(ValueError, match="batch must be an integer array of shape"):
        model.energy_and_forces(positions, z, batch=np.zeros(len(z) - 1, int))
    with pytest.raises(ValueError, match="batch indices must be >= 0"):
        model.energy_and_forces(positions, z, batch=-np.ones(len(z), int))


def test_unknown_dtype_or_precision_is_refused(model):
    from mlff_jax.model import PaiNNStudent

    with pytest.raises(ValueError, match="dtype must be"):
        PaiNNStudent(model.config, model.params, dtype="float16")
    with pytest.raises(ValueError, match="precision must be one of"):
        PaiNNStudent(model.config, model.params, precision="tf32")


def test_flax_module_initialises_the_documented_layout_and_applies_converted_weights(model, molecule):
    from mlff_jax import painn
    from mlff_jax.graph import all_pairs_edges

    positions, z = molecule
    n = len(z)
    mask, batch = jnp.ones(n, bool), jnp.zeros(n, jnp.int32)
    edges = all_pairs_edges(mask, batch, jnp.float64)
    module = painn.PaiNN(model.config)
    variables = module.init(jax.random.PRNGKey(0), jnp.asarray(positions), jnp.asarray(z), edges, mask, batch, 1)
    fresh = painn.flatten(jax.tree_util.tree_map(np.asarray, dict(variables["params"])))
    assert {k: v.shape for k, v in fresh.items()} == painn.param_shapes(model.config)
    energy = module.apply({"params": painn.flatten(model.params)}, jnp.asarray(positions), jnp.asarray(z), edges, mask, batch, 1)
    assert abs(float(energy[0]) - float(model.energy_fn(positions, z))) <= tol.ROUNDOFF_F64


@pytest.fixture(scope="module")
def ethanol():
    from mlff_jax.data import example

    atoms = example("ethanol")
    return atoms.positions, atoms.numbers


@pytest.mark.parametrize("offset", [1e3, 1e5, 1e8])
def test_float32_molecule_gives_the_same_energy_and_forces_at_any_translation(load_model, ethanol, offset):
    """Host calls centre each structure in float64 before the cast: float32 edge vectors do not
    lose the digits that absolute coordinates of 1e8 Å would take (alone or in a batch)."""
    model = load_model("tiny-77k", "float32")
    positions, z = ethanol
    n = len(z)
    e0, f0 = model.energy_and_forces(positions, z)
    translation = offset * np.array([1.0, -0.6, 0.3])
    e, f = model.energy_and_forces(positions + translation, z)
    assert abs(float(e) - float(e0)) <= tol.FLOAT32_TRANSLATION_ENERGY_PER_ATOM * n
    np.testing.assert_allclose(f, f0, rtol=0, atol=tol.FLOAT32_TRANSLATION_FORCES)
    energies, forces = model.energy_and_forces(np.concatenate([positions, positions + translation]), np.concatenate([z, z]),
                                               batch=np.repeat([0, 1], n))
    np.testing.assert_allclose(energies, float(e0), rtol=0, atol=tol.FLOAT32_TRANSLATION_ENERGY_PER_ATOM * n)
    np.testing.assert_allclose(forces, np.concatenate([f0, f0]), rtol=0, atol=tol.FLOAT32_TRANSLATION_FORCES)
