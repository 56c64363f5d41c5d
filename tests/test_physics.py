"""Physical invariances of the port, stated as specs (float64, CPU)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tolerances as tol
from mlff_jax import painn
from mlff_jax.graph import all_pairs_edges
from mlff_jax.model import PaiNNStudent

MOLECULE = "022_C6H6"  # perturbed benzene: 12 atoms, two elements, all pairs within 5 Å


@pytest.fixture(scope="module")
def model(load_model):
    return load_model("tiny-77k", "float64")


@pytest.fixture(scope="module")
def molecule(reference):
    ref = reference("tiny-77k")
    return ref[MOLECULE, "R"], ref[MOLECULE, "Z"]


def _rotation(seed):
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def test_forces_sum_to_zero(model, reference):
    ref = reference("tiny-77k")
    for s in ref.structures:
        _, forces = model.energy_and_forces(ref[s, "R"], ref[s, "Z"])
        np.testing.assert_allclose(np.asarray(forces).sum(axis=0), 0.0, atol=tol.ROUNDOFF_F64, err_msg=s)


def test_energy_is_translation_invariant(model, molecule):
    positions, z = molecule
    e0, f0 = model.energy_and_forces(positions, z)
    e1, f1 = model.energy_and_forces(positions + np.array([3.7, -12.1, 0.4]), z)
    assert abs(float(e1) - float(e0)) <= tol.ROUNDOFF_F64
    np.testing.assert_allclose(np.asarray(f1), np.asarray(f0), atol=tol.ROUNDOFF_F64)


def test_energy_is_invariant_to_swapping_atoms_of_the_same_element(model, molecule):
    positions, z = molecule
    perm = np.random.default_rng(0).permutation(len(z))  # any permutation also swaps same-element atoms
    e0, f0 = model.energy_and_forces(positions, z)
    e1, f1 = model.energy_and_forces(positions[perm], z[perm])
    assert abs(float(e1) - float(e0)) <= tol.ROUNDOFF_F64
    np.testing.assert_allclose(np.asarray(f1), np.asarray(f0)[perm], atol=tol.ROUNDOFF_F64)


def _with_identity_mixing(model):
    params = jax.tree_util.tree_map(lambda x: x, model.params)
    for t in range(model.config.num_interactions):
        params[f"interactions_{t}"]["mixing_matrix"] = 0.7 * jnp.eye(3)
    return PaiNNStudent(model.config, params, dtype="float64")


def test_with_isotropic_mixing_energy_is_rotation_invariant_and_forces_rotate(model, molecule):
    positions, z = molecule
    isotropic = _with_identity_mixing(model)
    rot = _rotation(1)
    e0, f0 = isotropic.energy_and_forces(positions, z)
    e1, f1 = isotropic.energy_and_forces(positions @ rot.T, z)
    assert abs(float(e1) - float(e0)) <= tol.ROUNDOFF_F64
    np.testing.assert_allclose(np.asarray(f1), np.asarray(f0) @ rot.T, atol=tol.ROUNDOFF_F64)


def test_trained_mixing_matrix_breaks_rotation_invariance_as_upstream_does(model, molecule):
    positions, z = molecule
    e0, _ = model.energy_and_forces(positions, z)
    e1, _ = model.energy_and_forces(positions @ _rotation(1).T, z)
    assert abs(float(e1) - float(e0)) > 1e-3  # the spec: ~0.1-0.3 eV for benzene


def test_padding_changes_nothing_values_and_gradients(model, molecule):
    """Padding atoms placed ON TOP of real atoms (well within the cutoff): only the masks keep them out."""
    positions, z = molecule
    n, pad = len(z), 5
    cfg, params = model.config, model.params

    def energy(params, pos, z, mask):
        edges = all_pairs_edges(mask, jnp.zeros(len(z), jnp.int32), pos.dtype)
        return painn.structure_energies(params, cfg, pos, z, edges, mask, jnp.zeros(len(z), jnp.int32), 1)[0]

    grad = jax.grad(energy, argnums=(0, 1))
    padded_pos = np.concatenate([positions, positions[:pad] + 0.3])
    padded_z = np.concatenate([z, np.full(pad, 8)])
    mask = np.arange(n + pad) < n
    e0, (gp0, gx0) = energy(params, positions, z, np.ones(n, bool)), grad(params, positions, z, np.ones(n, bool))
    e1, (gp1, gx1) = energy(params, padded_pos, padded_z, mask), grad(params, padded_pos, padded_z, mask)
    assert abs(float(e1) - float(e0)) <= tol.ROUNDOFF_F64
    np.testing.assert_allclose(np.asarray(gx1[:n]), np.asarray(gx0), atol=tol.ROUNDOFF_F64)
    np.testing.assert_array_equal(np.asarray(gx1[n:]), 0.0)
    for a, b in zip(jax.tree_util.tree_leaves(gp1), jax.tree_util.tree_leaves(gp0)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=tol.ROUNDOFF_F64)


def test_single_atom_has_finite_energy_zero_force_and_no_nan_gradient(model):
    with jax.debug_nans(True):
        energy, forces = model.energy_and_forces(np.zeros((1, 3)), np.array([1]))
        param_grad = jax.grad(lambda p: PaiNNStudent(model.config, p, "float64").energy_fn(jnp.zeros((1, 3)), jnp.array([6])))(model.params)
    assert np.isfinite(float(energy))
    np.testing.assert_array_equal(np.asarray(forces), 0.0)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree_util.tree_leaves(param_grad))


def test_distant_fragments_do_not_interact(model, reference):
    ref = reference("tiny-77k")
    positions, z = ref["065_two_far_fragments", "R"], ref["065_two_far_fragments", "Z"]
    # split into the two fragments: atoms farther than the cutoff from atom 0 belong to the second one
    far = np.linalg.norm(positions - positions[0], axis=1) > model.config.cutoff
    e_all, f_all = model.energy_and_forces(positions, z)
    e_a, f_a = model.energy_and_forces(positions[~far], z[~far])
    e_b, f_b = model.energy_and_forces(positions[far], z[far])
    assert far.any() and (~far).any()
    assert abs(float(e_all) - float(e_a) - float(e_b)) <= tol.ROUNDOFF_F64
    np.testing.assert_allclose(np.asarray(f_all)[~far], np.asarray(f_a), atol=tol.ROUNDOFF_F64)
    np.testing.assert_allclose(np.asarray(f_all)[far], np.asarray(f_b), atol=tol.ROUNDOFF_F64)


def test_pair_exactly_at_the_cutoff_is_an_edge_but_contributes_no_radial_feature(model):
    """Upstream: edges are d <= rc (inclusive) and fc(rc) = 0, but the filter net's bias still acts."""
    rc = model.config.cutoff
    e_in, _ = model.energy_and_forces(np.array([[0.0, 0, 0], [rc, 0, 0]]), np.array([6, 6]))
    e_out, _ = model.energy_and_forces(np.array([[0.0, 0, 0], [rc + 1e-9, 0, 0]]), np.array([6, 6]))
    e_single, _ = model.energy_and_forces(np.zeros((1, 3)), np.array([6]))
    assert abs(float(e_out) - 2 * float(e_single)) <= tol.ROUNDOFF_F64
    assert abs(float(e_in) - float(e_out)) > 1e-3  # the documented jump at the cutoff


@pytest.mark.parametrize("periodic", [False, True], ids=["molecule", "periodic"])
def test_coincident_atoms_give_the_same_finite_forces_with_both_methods(model, periodic):
    """Two atoms at the same place: the analytic sweep takes d|vec|/dvec = 0 there (PyTorch's norm
    convention); autodiff must give the same finite forces, never NaN."""
    positions = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.1, 0.2, -0.3], [-0.4, 0.9, 0.5]])
    z = np.array([6, 1, 8, 1])
    kwargs = {"cell": 12.0 * np.eye(3)} if periodic else {}
    with jax.debug_nans(True):
        e_analytic, f_analytic = model.energy_and_forces(positions, z, method="analytic", **kwargs)
        e_autodiff, f_autodiff = model.energy_and_forces(positions, z, method="autodiff", **kwargs)
    assert np.all(np.isfinite(f_analytic)) and np.all(np.isfinite(f_autodiff))
    assert abs(float(e_analytic) - float(e_autodiff)) <= tol.ROUNDOFF_F64
    np.testing.assert_allclose(f_autodiff, f_analytic, rtol=tol.ANALYTIC_VS_AUTODIFF_F64, atol=tol.ANALYTIC_VS_AUTODIFF_F64)
