"""Every checkpoint layout loads to the same model; bad files are refused with a clear error."""

import pickle
import zipfile

import numpy as np
import pytest

import mlff_jax
import tolerances as tol
from conftest import upstream_path
from mlff_jax import painn
from mlff_jax.io import read_checkpoint

LAYOUTS = {
    "student-427k": ["student-427k.model.pt", "student-427k.best_model.pt"],
    "tiny-77k": ["tiny-77k.model.pt", "tiny-77k.state_dict.pt", "../onnx/tiny-77k.onnx"],
    "ultra-tiny-21k": ["ultra-tiny-21k.model.pt"],
}


def _assert_same_params(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("name", LAYOUTS)
def test_every_layout_gives_the_same_parameters(name):
    config0, params0 = read_checkpoint(upstream_path("checkpoints", LAYOUTS[name][0]))
    for layout in LAYOUTS[name][1:]:
        config, params = read_checkpoint(upstream_path("checkpoints", layout))
        assert config == config0, layout
        _assert_same_params(params, params0)


def test_trainer_checkpoint_infers_hyper_parameters_from_shapes():
    config, _ = read_checkpoint(upstream_path("checkpoints", "student-427k.best_model.pt"))
    assert (config.hidden_dim, config.num_interactions, config.num_rbf, config.cutoff, config.max_z) == (128, 3, 20, 5.0, 100)
    assert config.num_parameters == 427292


def test_onnx_without_last_mixing_matrix_gives_upstream_energies(reference):
    ref = reference("tiny-77k")
    model = mlff_jax.load(upstream_path("onnx", "tiny-77k.onnx"), dtype="float64")
    s = ref.structures[0]
    energy, forces = model.energy_and_forces(ref[s, "R"], ref[s, "Z"])
    assert abs(float(energy) - ref[s, "E_f64"]) <= tol.PARITY_F64_ENERGY
    np.testing.assert_allclose(np.asarray(forces), ref[s, "F_f64"], rtol=0, atol=tol.PARITY_F64_FORCES)


def test_save_and_load_round_trip_exactly(tmp_path, load_model, reference):
    model = load_model("tiny-77k", "float64")
    path = tmp_path / "tiny.safetensors"
    mlff_jax.save(model, path)
    again = mlff_jax.load(path, dtype="float64")
    assert again.config == model.config
    _assert_same_params(painn.flatten(again.params), painn.flatten(model.params))
    ref = reference("tiny-77k")
    s = ref.structures[3]
    e1, f1 = model.energy_and_forces(ref[s, "R"], ref[s, "Z"])
    e2, f2 = again.energy_and_forces(ref[s, "R"], ref[s, "Z"])
    assert float(e1) == float(e2)
    np.testing.assert_array_equal(np.asarray(f1), np.asarray(f2))


def _write_torch_zip(path, payload: bytes, storages=None):
    """A minimal torch.save-style zip: archive/data.pkl plus raw storages."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/byteorder", "little")
        for key, raw in (storages or {}).items():
            z.writestr(f"archive/data/{key}", raw)


class _RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_its_command_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    _write_torch_zip(evil, pickle.dumps({"model_state_dict": _RunsACommand(marker)}, protocol=2))
    with pytest.raises(ValueError, match="refusing to load checkpoint.*system"):
        mlff_jax.load(evil)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"hello, I am a text file", "not a PaiNN student checkpoint"),
        (None, "not a PyTorch checkpoint"),
    ],
)
def test_file_that_is_not_a_checkpoint_is_refused(tmp_path, content, message):
    path = tmp_path / "thing.pt"
    if content is None:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("readme.txt", "a zip, but not from torch.save")
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        mlff_jax.load(path)


def test_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        mlff_jax.load(tmp_path / "nope.pt")


def test_state_dict_of_another_model_is_not_a_painn_student(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "resnet.safetensors"
    save_file({"conv1.weight": np.zeros((4, 3, 3, 3), np.float32), "fc.bias": np.zeros(4, np.float32)}, str(path))
    with pytest.raises(ValueError, match="not a PaiNN student checkpoint"):
        mlff_jax.load(path)


def test_missing_unexpected_and_misshaped_tensors_are_listed_together(tmp_path):
    from safetensors.numpy import save_file

    from mlff_jax.io.torch_pickle import read_torch_checkpoint

    state = {k: np.asarray(v) for k, v in read_torch_checkpoint(upstream_path("checkpoints", "tiny-77k.state_dict.pt")).items()}
    del state["interactions.0.update.update_mlp.2.bias"]
    del state["energy_head.4.weight"]
    state["interactions.1.message.rbf_to_scalar.0.weight"] = np.zeros((64, 11), np.float32)
    state["interactions.0.message.extra.weight"] = np.zeros(3, np.float32)
    path = tmp_path / "broken.safetensors"
    save_file(state, str(path))
    with pytest.raises(ValueError) as excinfo:
        mlff_jax.load(path)
    text = str(excinfo.value)
    assert "missing tensor: interactions.0.update.update_mlp.2.bias" in text
    assert "missing tensor: energy_head.4.weight" in text
    assert "unexpected tensor: interactions.0.message.extra.weight" in text
    assert "wrong shape: interactions.1.message.rbf_to_scalar.0.weight: has shape [64, 11], the config needs [64, 12]" in text


def test_missing_last_mixing_matrix_is_accepted_but_an_earlier_one_is_not(tmp_path):
    from safetensors.numpy import save_file

    from mlff_jax.io.torch_pickle import read_torch_checkpoint

    state = {k: np.asarray(v) for k, v in read_torch_checkpoint(upstream_path("checkpoints", "tiny-77k.state_dict.pt")).items()}
    del state["interactions.1.update.mixing_matrix"]
    save_file(state, str(tmp_path / "a.safetensors"))
    _, params = read_checkpoint(tmp_path / "a.safetensors")
    np.testing.assert_array_equal(params["interactions_1/mixing_matrix"], np.eye(3))
    del state["interactions.0.update.mixing_matrix"]
    save_file(state, str(tmp_path / "b.safetensors"))
    with pytest.raises(ValueError, match="missing tensor: interactions.0.update.mixing_matrix"):
        read_checkpoint(tmp_path / "b.safetensors")
