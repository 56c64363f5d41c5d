"""The port reproduces the upstream PyTorch model: every model, every reference structure."""

import numpy as np
import pytest

import tolerances as tol
from conftest import MODEL_NAMES


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_float64_matches_upstream_float64(name, reference, load_model):
    ref, model = reference(name), load_model(name, "float64")
    for s in ref.structures:
        energy, forces = model.energy_and_forces(ref[s, "R"], ref[s, "Z"])
        np.testing.assert_allclose(float(energy), ref[s, "E_f64"], rtol=0, atol=tol.PARITY_F64_ENERGY, err_msg=s)
        np.testing.assert_allclose(np.asarray(forces), ref[s, "F_f64"], rtol=0, atol=tol.PARITY_F64_FORCES, err_msg=s)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_float32_matches_upstream_within_noise_floor(name, reference, load_model):
    ref, model = reference(name), load_model(name, "float32")
    for s in ref.structures:
        energy, forces = model.energy_and_forces(ref[s, "R"], ref[s, "Z"])
        n = len(ref[s, "Z"])
        assert abs(float(energy) - ref[s, "E_f64"]) / n <= tol.PARITY_F32_ENERGY_PER_ATOM, s
        np.testing.assert_allclose(np.asarray(forces), ref[s, "F_f64"], rtol=0, atol=tol.PARITY_F32_FORCES, err_msg=s)
        assert np.asarray(forces).dtype == np.float32


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_batched_evaluation_matches_upstream_batch(name, reference, load_model):
    ref, model = reference(name), load_model(name, "float64")
    energies, forces = model.energy_and_forces(ref["batch", "R"], ref["batch", "Z"], batch=ref["batch", "batch"])
    assert energies.shape == (4,)
    np.testing.assert_allclose(np.asarray(energies), ref["batch", "E_f64"], rtol=0, atol=tol.PARITY_F64_ENERGY)
    np.testing.assert_allclose(np.asarray(forces), ref["batch", "F_f64"], rtol=0, atol=tol.PARITY_F64_FORCES)
