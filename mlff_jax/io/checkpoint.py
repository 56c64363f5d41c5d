"""Reading every checkpoint layout a user has, and writing our own (safetensors + config).

Sources, told apart by content, not by file name:

- PyTorch zip (``.pt``/``.pth``): the model's own save ``{"model_state_dict", "config", ...}``, a
  trainer checkpoint (also ``optimizer_state_dict``, ``pathlib`` paths, a training config without
  model hyper-parameters), a Lightning-style ``{"state_dict": ...}``, or a bare ``state_dict``.
- ONNX: the initializers of an upstream export (weights only; the graph is ignored).
- safetensors: our own format (config in the metadata), or a bare upstream state_dict.
"""

from __future__ import annotations

import json
import pathlib
import zipfile
from typing import Any, Mapping

import numpy as np

from mlff_jax.config import PaiNNConfig
from mlff_jax.io.convert import infer_config, state_dict_to_params, strip_prefix
from mlff_jax.io.torch_pickle import read_torch_checkpoint
from mlff_jax.painn import optional_param_shapes, param_shapes

FORMAT_NAME = "mlff-jax/painn-student"
FORMAT_VERSION = "1"


def read_checkpoint(path) -> tuple[PaiNNConfig, dict[str, np.ndarray]]:
    """Reads any supported file into (config, flat '/'-keyed float64 parameters).

    Raises:
      FileNotFoundError: no such file.
      ValueError: the file is not a PaiNN student checkpoint, or its tensors do not fit one (the
        message lists every missing, unexpected or mis-shaped tensor).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
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
    state_dict = strip_prefix(state_dict)
    cfg = infer_config(state_dict, config)
    return cfg, state_dict_to_params(state_dict, cfg)


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
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


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
    if metadata.get("format") == FORMAT_NAME:
        config = PaiNNConfig.from_dict(json.loads(metadata["config"]))
        table_rows = int(metadata["filter_table_rows"]) if "filter_table_rows" in metadata else None
        required = param_shapes(config, table_rows)
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
        return config, {k: np.asarray(v, np.float64) for k, v in tensors.items()}
    state_dict = strip_prefix(tensors)
    config = infer_config(state_dict, json.loads(metadata["config"]) if "config" in metadata else None)
    return config, state_dict_to_params(state_dict, config)


def write_checkpoint(path, config: PaiNNConfig, flat_params: Mapping[str, Any], extra_metadata: Mapping[str, str] | None = None) -> None:
    """Writes our format: safetensors, one tensor per '/'-keyed parameter (stored in float64, so a
    float64 model round-trips exactly), with the config as JSON in the metadata."""
    from safetensors.numpy import save_file

    metadata = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "config": json.dumps(config.to_dict())}
    metadata.update(extra_metadata or {})
    tensors = {k: np.ascontiguousarray(np.asarray(v, np.float64)) for k, v in flat_params.items()}
    save_file(tensors, str(path), metadata=metadata)
