"""Crafted and corrupt checkpoints: every one is refused with a ValueError naming the file and the
problem; none crashes the process, hangs, reads outside a storage or runs code."""

import itertools
import json
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import mlff_jax
from conftest import upstream_path
from mlff_jax.io import read_checkpoint
from mlff_jax.io.torch_pickle import read_torch_checkpoint

# ------------------------------------------------------------------ a torch.save writer without torch
# The pickle is assembled opcode by opcode, as torch.save writes it, so that tests can put any
# shape, stride, offset or storage size into it (including ones torch itself would never write).
_STORAGE_TYPES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage", np.dtype(np.int64): "LongStorage"}


def _int(value: int) -> bytes:
    encoded = pickle.encode_long(value)
    return b"\x8a" + bytes([len(encoded)]) + encoded  # LONG1: any size, any sign


def _str(text: str) -> bytes:
    raw = text.encode()
    return b"X" + len(raw).to_bytes(4, "little") + raw  # BINUNICODE


def _tuple(values) -> bytes:
    return b"(" + b"".join(_int(v) for v in values) + b"t"  # MARK ... TUPLE


def _tensor(key: str, storage_type: str, numel: int, offset: int, size, stride) -> bytes:
    """``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``."""
    persistent_id = b"(" + _str("storage") + b"ctorch\n" + storage_type.encode() + b"\n" + _str(key) + _str("cpu") + _int(numel) + b"tQ"
    return (b"ctorch._utils\n_rebuild_tensor_v2\n(" + persistent_id + _int(offset) + _tuple(size) + _tuple(stride)
            + b"\x89ccollections\nOrderedDict\n)Rt" + b"R")  # fmt: skip


def _dict_pickle(items: dict[str, bytes]) -> bytes:
    """PROTO 2, an empty dict, SETITEMS of name -> pickled value, STOP."""
    return b"\x80\x02}(" + b"".join(_str(k) + v for k, v in items.items()) + b"u."


def write_pt(path, tensors: dict[str, bytes], storages: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", _dict_pickle(tensors))
        z.writestr("archive/byteorder", "little")
        for key, raw in storages.items():
            z.writestr(f"archive/data/{key}", raw)


def write_state_dict_pt(path, arrays: dict[str, np.ndarray]) -> None:
    """A bare state_dict as torch.save writes it: one contiguous storage per tensor."""
    tensors, storages = {}, {}
    for i, (name, array) in enumerate(arrays.items()):
        array = np.ascontiguousarray(array)
        strides = [s // array.itemsize for s in array.strides]
        tensors[name] = _tensor(str(i), _STORAGE_TYPES[array.dtype], array.size, 0, array.shape, strides)
        storages[str(i)] = array.tobytes()
    write_pt(path, tensors, storages)


def _upstream_state_dict() -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in read_torch_checkpoint(upstream_path("checkpoints", "tiny-77k.state_dict.pt")).items()}


def test_the_test_writer_makes_files_that_load_to_the_upstream_weights(tmp_path):
    path = tmp_path / "rewritten.pt"
    write_state_dict_pt(path, _upstream_state_dict())
    config, params = read_checkpoint(path)
    config0, params0 = read_checkpoint(upstream_path("checkpoints", "tiny-77k.state_dict.pt"))
    assert config == config0
    for k in params0:
        np.testing.assert_array_equal(params[k], params0[k], err_msg=k)


def test_strided_and_offset_tensors_are_rebuilt_exactly(tmp_path):
    storage = np.arange(30, dtype=np.float64)
    path = tmp_path / "views.pt"
    write_pt(path, {"t": _tensor("0", "DoubleStorage", 30, 2, (3, 4), (1, 5)), "s": _tensor("0", "DoubleStorage", 30, 29, (), ()),
                    "e": _tensor("0", "DoubleStorage", 30, 0, (0, 7), (7, 1))}, {"0": storage.tobytes()})  # fmt: skip
    out = read_torch_checkpoint(path)
    np.testing.assert_array_equal(out["t"], np.lib.stride_tricks.as_strided(storage[2:], (3, 4), (8, 40)))
    assert out["s"].shape == () and out["s"] == 29.0
    assert out["e"].shape == (0, 7)
    path = tmp_path / "unit_axis.pt"  # any stride on a length-1 axis is valid (torch writes such)
    write_pt(path, {"u": _tensor("0", "DoubleStorage", 30, 3, (1, 4), (2**70, 2))}, {"0": storage.tobytes()})
    np.testing.assert_array_equal(read_torch_checkpoint(path)["u"], [[3.0, 5.0, 7.0, 9.0]])


# ------------------------------------------------------------------ specific defects (each failed before its fix)
def _single_tensor_file(path, offset=0, size=(2, 3), stride=(3, 1), numel=6, raw=None, storage_type="FloatStorage"):
    raw = np.arange(6, dtype=np.float32).tobytes() if raw is None else raw
    write_pt(path, {"w": _tensor("0", storage_type, numel, offset, size, stride)}, {"0": raw})
    return path


@pytest.mark.parametrize(
    "settings_, message",
    [
        (dict(stride=(-1, 1)), "strides"),  # used to SIGSEGV in as_strided
        (dict(offset=-4), "storage offset"),  # used to read before the storage silently
        (dict(offset=1), "reaches element 6 of storage 'data/0', which holds 6"),
        (dict(size=(2, -3)), "shape"),
        (dict(size=(2, 3, 1), stride=(3, 1)), "shape .* but strides"),
        (dict(stride=(2**70, 1)), "reaches element"),  # no int64 overflow in the bounds check
        (dict(size=(6, 1), stride=(1, 2**70), offset=2**70), "reaches element"),
        (dict(size=(2**20, 2**20), stride=(0, 0)), "over .* elements"),  # would allocate 8 TB
        (dict(raw=b"\x00" * 23), "23 bytes, not a multiple of 4"),
        (dict(numel=7), "holds 6 of 7 elements"),
        (dict(numel=-1), "claims -1 elements"),
    ],
)
def test_a_crafted_tensor_header_is_refused_naming_the_file(tmp_path, settings_, message):
    path = _single_tensor_file(tmp_path / "crafted.pt", **settings_)
    with pytest.raises(ValueError, match=message) as info:
        read_torch_checkpoint(path)
    assert str(info.value).startswith(f"{path}: tensor 'w': corrupt checkpoint")


def test_a_corrupt_tensor_deep_in_a_trainer_checkpoint_is_named_by_its_place(tmp_path):
    bad = _tensor("0", "FloatStorage", 6, 0, (2, 3), (3, -1))
    inner = b"}(" + _str("embedding.weight") + bad + b"u"
    path = tmp_path / "trainer.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}(" + _str("epoch") + _int(3) + _str("model_state_dict") + inner + b"u.")
        z.writestr("archive/data/0", np.zeros(6, np.float32).tobytes())
    assert f"{path}: tensor 'model_state_dict/embedding.weight': corrupt checkpoint" in _refusal(path)


def _refusal(path) -> str:
    with pytest.raises(ValueError) as info:
        mlff_jax.load(path)
    text = str(info.value)
    assert str(path) in text, text
    return text


def test_nan_or_inf_in_a_weight_is_refused_naming_the_tensor(tmp_path):
    from safetensors.numpy import save_file

    state = _upstream_state_dict()
    state["interactions.1.update.update_mlp.0.bias"][3] = np.nan
    write_state_dict_pt(tmp_path / "nan.pt", state)
    assert "NaN or inf in tensor(s) interactions.1.update.update_mlp.0.bias" in _refusal(tmp_path / "nan.pt")
    state["interactions.1.update.update_mlp.0.bias"][3] = 0.0
    state["energy_head.0.weight"][0, 0] = -np.inf
    save_file(state, str(tmp_path / "inf.safetensors"))
    assert "NaN or inf in tensor(s) energy_head.0.weight" in _refusal(tmp_path / "inf.safetensors")
    model = mlff_jax.load(upstream_path("checkpoints", "tiny-77k.model.pt"), dtype="float64")
    model.params["readout"]["dense_0"]["bias"] = model.params["readout"]["dense_0"]["bias"].at[1].set(np.nan)
    mlff_jax.save(model, tmp_path / "ours.safetensors")
    assert "NaN or inf in tensor(s) readout/dense_0/bias" in _refusal(tmp_path / "ours.safetensors")


def _our_file(tmp_path, metadata_change):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    source = tmp_path / "good.safetensors"
    if not source.exists():
        mlff_jax.save(mlff_jax.load(upstream_path("checkpoints", "ultra-tiny-21k.model.pt")), source)
    with safe_open(str(source), "numpy") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    metadata_change(metadata)
    path = tmp_path / "changed.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.pop("config"), "format tag but no 'config'"),  # was a bare KeyError
        (lambda m: m.update(config="{hidden_dim: 32"), "'config' in its metadata is not valid JSON"),  # was JSONDecodeError
        (lambda m: m.update(config="[1, 2]"), "JSON list, not an object"),
        (lambda m: m.update(config=json.dumps({"hidden_dim": "wide", "num_interactions": 2, "num_rbf": 10})), "not a valid model config"),
        (lambda m: m.update(config=json.dumps({**json.loads(m["config"]), "elements": ["Au"]})), "PaiNNConfig.elements"),
        (lambda m: m.update(filter_table_rows="-5"), "filter_table_rows"),
        (lambda m: m.update(filter_table_intervals="0"), "filter_table_intervals"),
        (lambda m: m.update(config=json.dumps({**json.loads(m["config"]), "num_interactions": 10**9})), "num_interactions=1000000000 is implausible"),
    ],
)
def test_a_malformed_config_in_our_format_is_refused_naming_the_file(tmp_path, change, message):
    assert message in _refusal(_our_file(tmp_path, change))


def test_a_flipped_byte_in_the_pickle_is_refused_naming_the_file(tmp_path):
    data = bytearray(upstream_path("checkpoints", "tiny-77k.state_dict.pt").read_bytes())
    at = data.index(b"embedding.weight")  # inside data.pkl, stored uncompressed
    data[at] ^= 0x01
    path = tmp_path / "flipped.pt"
    path.write_bytes(bytes(data))
    assert "corrupt checkpoint" in _refusal(path)  # was zipfile.BadZipFile


def test_a_config_with_a_billion_blocks_is_refused_at_once_in_every_format(tmp_path):
    from safetensors.numpy import save_file

    huge = {"hidden_dim": 64, "num_interactions": 10**9, "num_rbf": 12}
    save_file(_upstream_state_dict(), str(tmp_path / "bare.safetensors"), metadata={"config": json.dumps(huge)})
    assert "implausible" in _refusal(tmp_path / "bare.safetensors")


def test_other_top_level_objects_and_non_tensors_are_refused(tmp_path):
    path = tmp_path / "strings.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"embedding.weight": "not a tensor"}, protocol=2))
    assert "not a PaiNN student checkpoint" in _refusal(path)
    path = tmp_path / "list.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps([1, 2, 3], protocol=2))
    assert "holds a list" in _refusal(path)


def test_a_pickle_cannot_change_an_allowed_global_for_later_files(tmp_path):
    # BUILD on the shared FloatStorage stand-in, setting its element type to OrderedDict for later files
    payload = b"\x80\x02ctorch\nFloatStorage\n}" + _str("dtype") + b"ccollections\nOrderedDict\nsb."
    evil = tmp_path / "build.pt"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("archive/data.pkl", payload)
    assert "corrupt checkpoint" in _refusal(evil)
    payload = b"\x80\x02ctorch\nFloatStorage\n}" + _str("extra") + _int(1) + b"sb."
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("archive/data.pkl", payload)
    assert "corrupt checkpoint" in _refusal(evil)
    payload = b"\x80\x02ctorch._utils\n_rebuild_parameter\nN}" + _str("__defaults__") + b")s\x86b."  # slot state
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("archive/data.pkl", payload)
    assert "corrupt checkpoint" in _refusal(evil)
    config, _ = read_checkpoint(upstream_path("checkpoints", "tiny-77k.state_dict.pt"))  # still loads
    assert config.hidden_dim == 64


def test_an_onnx_initializer_with_external_data_is_refused_and_never_opened(tmp_path):
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(upstream_path("onnx", "tiny-77k.onnx")))
    init = model.graph.initializer[0]
    init.ClearField("raw_data")
    init.data_location = onnx.TensorProto.EXTERNAL
    entry = init.external_data.add()
    entry.key, entry.value = "location", "/dev/zero"  # reading it would never end
    path = tmp_path / "external.onnx"
    path.write_bytes(model.SerializeToString())
    assert "external file" in _refusal(path)


def test_save_refuses_to_overwrite_unless_asked(tmp_path):
    model = mlff_jax.load(upstream_path("checkpoints", "ultra-tiny-21k.model.pt"))
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        mlff_jax.save(model, path)
    assert path.read_bytes() == b"precious"
    mlff_jax.save(model, path, overwrite=True)
    assert mlff_jax.load(path).config == model.config


def test_convert_refuses_to_overwrite_unless_asked(tmp_path, capsys):
    from mlff_jax import cli

    src, dst = str(upstream_path("checkpoints", "ultra-tiny-21k.model.pt")), tmp_path / "m.safetensors"
    dst.write_bytes(b"precious")
    assert cli.main(["convert", src, str(dst)]) == 2
    assert "--overwrite" in capsys.readouterr().err and dst.read_bytes() == b"precious"
    assert cli.main(["convert", src, str(dst), "--overwrite"]) == 0
    assert mlff_jax.load(dst).config.hidden_dim == 32


# ------------------------------------------------------------------ property-based: any header, no crash
_sizes = st.one_of(st.integers(-3, 6), st.integers(-(2**70), 2**70))
_header = st.fixed_dictionaries({
    "storage_elements": st.integers(0, 40),
    "claimed": st.one_of(st.none(), st.integers(-2, 45)),
    "offset": st.one_of(st.integers(-3, 45), st.integers(-(2**70), 2**70)),
    "size": st.lists(_sizes, max_size=4),
    "stride": st.lists(_sizes, max_size=4),
    "extra_bytes": st.sampled_from([0, 0, 0, 1, 3]),
    "storage_type": st.sampled_from(["FloatStorage", "DoubleStorage", "LongStorage"]),
})  # fmt: skip


def _expected(h):
    """The tensor torch would build, or None where the header is invalid."""
    n, size, stride, offset = h["storage_elements"], h["size"], h["stride"], h["offset"]
    claimed = n if h["claimed"] is None else h["claimed"]
    if h["extra_bytes"] or not 0 <= claimed <= n or len(size) != len(stride) or offset < 0 or min(size + stride, default=0) < 0:
        return None
    numel = int(np.prod(size, dtype=object))
    if numel > 2**28 or max(size, default=0) > 2**28:  # the reader's limits per tensor
        return None
    if numel == 0:
        return np.zeros(size)
    if offset + sum((a - 1) * s for a, s in zip(size, stride)) >= n:
        return None
    out = np.empty(size)
    for index in itertools.product(*(range(a) for a in size)):
        out[index] = offset + sum(i * s for i, s in zip(index, stride))
    return out


def _h(**changes):
    return {"storage_elements": 12, "claimed": None, "offset": 0, "size": [3], "stride": [1], "extra_bytes": 0, "storage_type": "FloatStorage", **changes}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=_header)
@example(h=_h(size=[1, 3], stride=[2**70, 2]))  # a length-1 axis may have any stride
@example(h=_h(size=[2**70, 0], stride=[1, 1]))  # empty, but with an absurd dimension
@example(h=_h(size=[2**40, 2**40], stride=[0, 0]))  # in bounds, but 2^80 elements
@example(h=_h(size=[3], stride=[2**64 - 1], offset=2**64 - 3))  # wraps around in uint64
def test_any_tensor_header_gives_the_right_tensor_or_a_value_error_naming_the_file(h, tmp_path):
    dtype = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "LongStorage": np.int64}[h["storage_type"]]
    raw = np.arange(h["storage_elements"], dtype=dtype).tobytes() + b"\x07" * h["extra_bytes"]
    claimed = h["storage_elements"] if h["claimed"] is None else h["claimed"]
    path = tmp_path / "crafted.pt"
    write_pt(path, {"w": _tensor("0", h["storage_type"], claimed, h["offset"], h["size"], h["stride"])}, {"0": raw})
    expected = _expected(h)
    if expected is None:
        with pytest.raises(ValueError) as info:
            read_torch_checkpoint(path)
        assert str(info.value).startswith(f"{path}: tensor 'w': ")
    else:
        tensor = read_torch_checkpoint(path)["w"]
        assert tensor.dtype == dtype and tensor.shape == expected.shape
        np.testing.assert_array_equal(tensor, expected)


# ------------------------------------------------------------------ belt and braces: in a subprocess
def test_crafted_files_in_a_fresh_process_end_in_value_errors_not_crashes(tmp_path):
    files = [
        _single_tensor_file(tmp_path / "negative_stride.pt", stride=(-(2**40), 1)),
        _single_tensor_file(tmp_path / "negative_offset.pt", offset=-(2**62)),
        _single_tensor_file(tmp_path / "huge_stride.pt", stride=(2**62, 2**62)),
        _single_tensor_file(tmp_path / "huge_shape.pt", size=(2**31, 2**31), stride=(0, 0)),
    ]
    code = (
        "import sys\nfrom mlff_jax.io import read_checkpoint\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n        read_checkpoint(p)\n        print('LOADED', p)\n"
        "    except ValueError as e:\n        print('ValueError', p)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, *map(str, files)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:-1] == [f"ValueError {p}" for p in files]


# ------------------------------------------------------------------ every format: random corruption
@pytest.fixture(scope="module")
def format_samples(tmp_path_factory):
    """One small file of every layout the loader reads, as bytes."""
    from safetensors.numpy import save_file

    tmp = tmp_path_factory.mktemp("formats")
    mlff_jax.save(mlff_jax.load(upstream_path("checkpoints", "ultra-tiny-21k.model.pt")), tmp / "ours.safetensors")
    save_file({k: np.asarray(v) for k, v in read_torch_checkpoint(upstream_path("checkpoints", "ultra-tiny-21k.model.pt"))["model_state_dict"].items()},
              str(tmp / "bare.safetensors"))  # fmt: skip
    files = {
        "model save": upstream_path("checkpoints", "ultra-tiny-21k.model.pt"),
        "bare state_dict": upstream_path("checkpoints", "tiny-77k.state_dict.pt"),
        "trainer checkpoint": upstream_path("checkpoints", "student-427k.best_model.pt"),
        "ours": tmp / "ours.safetensors",
        "bare safetensors": tmp / "bare.safetensors",
    }
    if __import__("importlib").util.find_spec("onnx"):
        files["onnx"] = upstream_path("onnx", "tiny-77k.onnx")
    return {name: (path.suffix, path.read_bytes()) for name, path in files.items()}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=st.sampled_from(["model save", "bare state_dict", "trainer checkpoint", "ours", "bare safetensors", "onnx"]),
       where=st.one_of(st.integers(0, 4095), st.integers(-4096, -1), st.floats(0, 1)), flip=st.integers(1, 255))  # fmt: skip
def test_a_flipped_byte_in_any_format_gives_a_finite_model_or_a_value_error_naming_the_file(format_samples, tmp_path, layout, where, flip):
    if layout not in format_samples:
        return
    suffix, data = format_samples[layout]
    data = bytearray(data)
    at = int(where * (len(data) - 1)) if isinstance(where, float) else where % len(data)  # header, tail or anywhere
    data[at] ^= flip
    path = tmp_path / f"flipped{suffix}"
    path.write_bytes(bytes(data))
    try:
        config, params = read_checkpoint(path)
    except ValueError as error:
        assert str(path) in str(error)
    else:
        assert config.hidden_dim > 0 and all(np.all(np.isfinite(v)) for v in params.values())
