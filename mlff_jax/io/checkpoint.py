"""Reading every checkpoint layout a user has, and writing our own (safetensors + config).

Sources, told apart by content, not by file name:

- PyTorch zip (``.pt``/``.pth``): the model's own save ``{"model_state_dict", "config", ...}``, a
  trainer checkpoint (also ``optimizer_state_dict``, ``pathlib`` paths, a training config without
  model hyper-parameters), a Lightning-style ``{"state_dict": ...}``, or a bare ``state_dict``.
- ONNX: the initializers of an upstream export (weights only; the graph is ignored).
- safetensors: our own format (config in the metadata), or a bare upstream state_dict.

Every file is untrusted input: whatever is wrong with it (not a checkpoint, a corrupt archive, a
crafted pickle or tensor header, a malformed config, NaN or inf in a weight) is refused with one
``ValueError`` that names the file and the problem; reading never runs code from the file.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import zipfile
from typing import Any, Mapping

import numpy as np

from mlff_jax.config import PaiNNConfig
from mlff_jax.elements import UPSTREAM_ELEMENTS
from mlff_jax.io.convert import infer_config, state_dict_to_params, strip_prefix
from mlff_jax.io.torch_pickle import read_torch_checkpoint
from mlff_jax.painn import optional_param_shapes, param_shapes

FORMAT_NAME = "mlff-jax/painn-student"
FORMAT_VERSION = "1"
_MAX_ELEMENTS = 1 << 28  # per tensor; far above any PaiNN student, keeps crafted headers from exhausting memory
_ONNX_NUMERIC = (1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13)  # float, u/int 8..64, bool, float16, double


def read_checkpoint(path) -> tuple[PaiNNConfig, dict[str, np.ndarray]]:
    """Reads any supported file into (config, flat '/'-keyed float64 parameters).

    A file that records no trained elements (upstream checkpoints, ONNX, our files written before
    the field existed) gets upstream's, H, C, N, O, F, S, Cl (those up to its ``max_z``).

    Raises:
      FileNotFoundError: no such file.
      ValueError: naming the file and what in it is wrong: not a PaiNN student checkpoint, a
        corrupt archive, pickle or tensor, a malformed config, NaN or inf in a tensor, or tensors that
        do not fit the model (the message lists every missing, unexpected or mis-shaped tensor).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        config, params = _read_any(path)
    except ValueError as exc:
        if str(path) in str(exc):
            raise
        raise ValueError(f"{path}: {exc}") from exc
    except (ImportError, MemoryError):
        raise
    except Exception as exc:  # a malformed file can trip any parser; it is still the file's fault
        raise ValueError(f"{path} is not a readable PaiNN student checkpoint ({type(exc).__name__}: {exc})") from exc
    if config.elements is None:
        known = tuple(z for z in UPSTREAM_ELEMENTS if z <= config.max_z)
        config = dataclasses.replace(config, elements=known or None)
    return config, params


def _read_any(path: pathlib.Path) -> tuple[PaiNNConfig, dict[str, np.ndarray]]:
    with open(path, "rb") as f:
        head = f.read(16)
    if zipfile.is_zipfile(path):
        state_dict, config = _unwrap_torch_object(read_torch_checkpoint(path), path)
    elif _looks_like_safetensors(path, head):
        return _read_safetensors(path)
    elif path.suffix.lower() == ".onnx":
        state_dict, config = _read_onnx(path), None
    else:
        raise ValueError(f"{path} is not a PaiNN student checkpoint: not a PyTorch zip, ONNX or safetensors file")
    return _from_state_dict(path, state_dict, config)


def _from_state_dict(path, state_dict: Mapping[str, Any], config: Mapping[str, Any] | None) -> tuple[PaiNNConfig, dict[str, np.ndarray]]:
    for name, value in state_dict.items():
        if not isinstance(name, str):
            raise ValueError(f"{path}: the state_dict has a key {name!r:.40} that is not a tensor name")
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
            raise ValueError(f"{path}: tensor {name} is a {type(value).__name__} {getattr(value, 'dtype', '')}, not a numeric tensor")
    state_dict = strip_prefix(state_dict)
    _refuse_non_finite(path, state_dict)
    cfg = _refuse_implausible(path, infer_config(state_dict, config))
    return cfg, state_dict_to_params(state_dict, cfg)


# Far beyond any PaiNN student, and small enough that listing the expected tensors is instant: a
# crafted config cannot make the reader loop or allocate for ever.
_LIMITS = {"hidden_dim": 1 << 16, "num_interactions": 256, "num_rbf": 1 << 12, "max_z": 1 << 10}


def _refuse_implausible(path, config: PaiNNConfig) -> PaiNNConfig:
    for name, limit in _LIMITS.items():
        if getattr(config, name) > limit:
            raise ValueError(f"{path}: config {name}={getattr(config, name)} is implausible for a PaiNN student (at most {limit})")
    return config


def _refuse_non_finite(path, tensors: Mapping[str, np.ndarray]) -> None:
    """NaN or inf in a weight makes every energy NaN: refuse the file, naming the tensors."""
    bad = [name for name, value in tensors.items() if value.dtype.kind == "f" and not np.all(np.isfinite(value))]
    if bad:
        raise ValueError(f"{path}: NaN or inf in tensor(s) {', '.join(bad[:10])}; the weights are corrupt")


def _unwrap_torch_object(obj: Any, path) -> tuple[dict[str, Any], Mapping[str, Any] | None]:
    """Finds the state_dict (and a model config, if any) inside whatever ``torch.save`` stored."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} is not a PaiNN student checkpoint: it holds a {type(obj).__name__}, not a dict of tensors")
    for key in ("model_state_dict", "state_dict", "model"):
        if isinstance(obj.get(key), Mapping):
            config = obj.get("config") if isinstance(obj.get("config"), Mapping) else None
            return dict(obj[key]), config
    if obj and all(isinstance(v, np.ndarray) for v in obj.values()):
        return dict(obj), None
    raise ValueError(
        f"{path} is not a PaiNN student checkpoint: found keys {sorted(map(str, obj))[:8]}, "
        "expected a state_dict or 'model_state_dict'"
    )


def _read_onnx(path) -> dict[str, np.ndarray]:
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise ImportError("reading ONNX files needs the 'onnx' package: pip install 'mlff-jax[onnx]'") from None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable ONNX file ({exc})") from exc
    tensors = {}
    for init in model.graph.initializer:
        # External data would make the reader open a path the file chooses: weights must be inside.
        if init.data_location == onnx.TensorProto.EXTERNAL or len(init.external_data):
            raise ValueError(f"{path}: initializer {init.name!r} keeps its data in an external file; only self-contained ONNX files are read")
        if init.data_type not in _ONNX_NUMERIC or np.prod(init.dims, dtype=object) > _MAX_ELEMENTS:
            raise ValueError(f"{path}: initializer {init.name!r} is not a numeric tensor of at most {_MAX_ELEMENTS} elements")
        tensors[init.name] = numpy_helper.to_array(init)
    return tensors


def _looks_like_safetensors(path: pathlib.Path, head: bytes) -> bool:
    if len(head) < 9:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return 0 < header_len <= path.stat().st_size - 8 and head[8:9] == b"{"


def _read_safetensors(path) -> tuple[PaiNNConfig, dict[str, np.ndarray]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise ValueError(f"{path} is not a readable safetensors file ({exc})") from exc
    for name, value in tensors.items():
        if value.dtype.kind not in "biuf":
            raise ValueError(f"{path}: tensor {name} has dtype {value.dtype}, not a number")
    if metadata.get("format") == FORMAT_NAME:
        config = _refuse_implausible(path, _config_from_metadata(path, metadata))
        intervals, legacy = _table_intervals(path, metadata)
        required = param_shapes(config, None if legacy else intervals)
        if legacy:
            required |= {f"interactions_{t}/filter_table/{leaf}": (intervals + 1, 3 * config.hidden_dim)
                         for t in range(config.num_interactions) for leaf in ("values", "slopes")}  # fmt: skip
        expected = required | {k: v for k, v in optional_param_shapes(config).items() if k in tensors}
        problems = [f"  missing tensor: {p}" for p in required if p not in tensors]
        problems += [f"  unexpected tensor: {k}" for k in tensors if k not in expected]
        problems += [
            f"  wrong shape: {k}: has {list(tensors[k].shape)}, the config needs {list(expected[k])}"
            for k in expected
            if k in tensors and tuple(tensors[k].shape) != expected[k]
        ]
        if problems:
            raise ValueError(f"{path} does not match its own config:\n" + "\n".join(problems))
        _refuse_non_finite(path, tensors)
        params = {k: np.asarray(v, np.float64) for k, v in tensors.items()}
        return config, _rebuild_legacy_tables(config, params, intervals) if legacy else params
    return _from_state_dict(path, tensors, _config_json(path, metadata) if "config" in metadata else None)


def _table_intervals(path, metadata: Mapping[str, str]) -> tuple[int | None, bool]:
    """(grid intervals G of the compressed filter tables or None, whether the file has the older
    table layout). Tables are [G, 4, 3H] coefficients ('filter_table_intervals'); files written
    before held node values and slopes [G + 1, 3H] ('filter_table_rows' = G + 1)."""
    for key, least, legacy in (("filter_table_intervals", 1, False), ("filter_table_rows", 2, True)):
        count = metadata.get(key)
        if count is not None:
            if not count.isdigit() or not least <= int(count) <= _MAX_ELEMENTS:
                raise ValueError(f"{path}: metadata {key!r} is {count!r:.40}, not a {'row' if legacy else 'interval'} count")
            return int(count) - legacy, legacy
    return None, False


def _rebuild_legacy_tables(config: PaiNNConfig, params: dict[str, np.ndarray], intervals: int) -> dict[str, np.ndarray]:
    """A file of the older table layout: its tables are rebuilt from its own filter networks on the
    same grid, in float64 (what ``compress()`` builds now; node values saved from a float32 model were
    rounded, and that rounding, divided by the spacing, was the largest error of float32 forces)."""
    from mlff_jax.compress import filter_table_on_grid

    rbf = {"centers": params["rbf/centers"], "widths": params["rbf/widths"]}
    out = {k: v for k, v in params.items() if "/filter_table/" not in k}
    for t in range(config.num_interactions):
        block = {layer: {leaf: params[f"interactions_{t}/{layer}/{leaf}"] for leaf in ("kernel", "bias")} for layer in ("filter_in", "filter_out")}
        table = filter_table_on_grid(block, rbf, config.cutoff, intervals, config.filter_envelope)
        out[f"interactions_{t}/filter_table/coefficients"] = table["coefficients"]
    return out


def _config_from_metadata(path, metadata: Mapping[str, str]) -> PaiNNConfig:
    """Our format's model config, stored as JSON in the safetensors metadata."""
    if "config" not in metadata:
        raise ValueError(f"{path}: carries the {FORMAT_NAME} format tag but no 'config' in its metadata")
    values = _config_json(path, metadata)
    try:
        return PaiNNConfig.from_dict(values)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ValueError(f"{path}: the 'config' in its metadata is not a valid model config ({exc})") from None


def _config_json(path, metadata: Mapping[str, str]) -> dict:
    try:
        values = json.loads(metadata["config"])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: the 'config' in its metadata is not valid JSON ({exc})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: the 'config' in its metadata is a JSON {type(values).__name__}, not an object")
    return values


def write_checkpoint(path, config: PaiNNConfig, flat_params: Mapping[str, Any], extra_metadata: Mapping[str, str] | None = None) -> None:
    """Writes our format: safetensors, one tensor per '/'-keyed parameter (stored in float64, so a
    float64 model round-trips exactly), with the config as JSON in the metadata."""
    from safetensors.numpy import save_file

    metadata = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "config": json.dumps(config.to_dict())}
    metadata.update(extra_metadata or {})
    tensors = {k: np.ascontiguousarray(np.asarray(v, np.float64)) for k, v in flat_params.items()}
    save_file(tensors, str(path), metadata=metadata)
