"""Upstream (PyTorch) tensor names -> our parameter pytree, with every problem listed at once.

Upstream names (``shared/design/painn-student.md``), with an optional ``model.`` prefix::

    embedding.weight, rbf.centers, rbf.widths,
    interactions.T.message.rbf_to_scalar.{0,2}.{weight,bias},
    interactions.T.update.update_mlp.{0,2}.{weight,bias}, interactions.T.update.mixing_matrix,
    energy_head.{0,2,4}.{weight,bias}

PyTorch ``Linear.weight`` is [out, in]; our Dense ``kernel`` is [in, out], so weights are transposed.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from mlff_jax.config import DEFAULT_CUTOFF, PaiNNConfig
from mlff_jax.painn import param_shapes

_LAYER_NAMES = {
    "message.rbf_to_scalar.0": "filter_in",
    "message.rbf_to_scalar.2": "filter_out",
    "update.update_mlp.0": "update_in",
    "update.update_mlp.2": "update_out",
}
_HEAD_NAMES = {"0": "dense_0", "2": "dense_1", "4": "dense_2"}
_HYPER_PARAMETERS = ("hidden_dim", "num_interactions", "num_rbf", "cutoff", "max_z")


def strip_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Removes a ``model.`` prefix (distillation wrappers) when every name carries it."""
    if state_dict and all(k.startswith("model.") for k in state_dict):
        return {k[len("model."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def our_path(torch_name: str) -> tuple[str, bool] | None:
    """Maps an upstream tensor name to (our '/'-path, needs transpose), or None if unknown."""
    simple = {"embedding.weight": "embedding/embedding", "rbf.centers": "rbf/centers", "rbf.widths": "rbf/widths"}
    if torch_name in simple:
        return simple[torch_name], False
    m = re.fullmatch(r"interactions\.(\d+)\.(.+)\.(weight|bias)", torch_name)
    if m and m.group(2) in _LAYER_NAMES:
        leaf = "kernel" if m.group(3) == "weight" else "bias"
        return f"interactions_{m.group(1)}/{_LAYER_NAMES[m.group(2)]}/{leaf}", leaf == "kernel"
    m = re.fullmatch(r"interactions\.(\d+)\.update\.mixing_matrix", torch_name)
    if m:
        return f"interactions_{m.group(1)}/mixing_matrix", False
    m = re.fullmatch(r"energy_head\.(\d+)\.(weight|bias)", torch_name)
    if m and m.group(1) in _HEAD_NAMES:
        leaf = "kernel" if m.group(2) == "weight" else "bias"
        return f"readout/{_HEAD_NAMES[m.group(1)]}/{leaf}", leaf == "kernel"
    return None


def upstream_names(config: PaiNNConfig) -> list[str]:
    """Every upstream tensor name of a model with this config (no prefix)."""
    names = ["embedding.weight", "rbf.centers", "rbf.widths"]
    for t in range(config.num_interactions):
        names += [f"interactions.{t}.{layer}.{leaf}" for layer in _LAYER_NAMES for leaf in ("weight", "bias")]
        names.append(f"interactions.{t}.update.mixing_matrix")
    names += [f"energy_head.{i}.{leaf}" for i in _HEAD_NAMES for leaf in ("weight", "bias")]
    return names


def infer_config(state_dict: Mapping[str, np.ndarray], config: Mapping[str, Any] | None = None) -> PaiNNConfig:
    """Hyper-parameters from a model config when it has them, else from tensor shapes.

    The cutoff cannot be read off any tensor: without a config it is 5.0 Å (every upstream model).
    """
    if config and all(k in config for k in ("hidden_dim", "num_interactions", "num_rbf")):
        return PaiNNConfig.from_dict(config)
    if "embedding.weight" not in state_dict or np.ndim(state_dict["embedding.weight"]) != 2:
        raise ValueError("not a PaiNN student checkpoint: no 2-D 'embedding.weight' tensor")
    rows, hidden = np.shape(state_dict["embedding.weight"])
    blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"interactions\.(\d+)\.", k))}
    if not blocks:
        raise ValueError("not a PaiNN student checkpoint: no 'interactions.N.*' tensors")
    if "rbf.centers" in state_dict:
        num_rbf = int(np.shape(state_dict["rbf.centers"])[0])
    elif "interactions.0.message.rbf_to_scalar.0.weight" in state_dict:
        num_rbf = int(np.shape(state_dict["interactions.0.message.rbf_to_scalar.0.weight"])[-1])
    else:
        raise ValueError("not a PaiNN student checkpoint: cannot infer the number of radial functions")
    cutoff = (config or {}).get("cutoff", DEFAULT_CUTOFF)
    return PaiNNConfig(hidden_dim=int(hidden), num_interactions=max(blocks) + 1, num_rbf=num_rbf, cutoff=cutoff, max_z=int(rows) - 1)


def state_dict_to_params(state_dict: Mapping[str, Any], config: PaiNNConfig) -> dict[str, np.ndarray]:
    """Converts upstream tensors to our flat '/'-keyed parameters (float64 NumPy arrays).

    Accepts a missing last-block ``mixing_matrix`` (it never reaches the energy; upstream exports
    drop it) and fills the identity. Any other missing, unexpected or mis-shaped tensor is collected,
    and one ValueError lists them all.
    """
    if not config.is_upstream_architecture:  # upstream has neither option: its tensors would be misread
        raise ValueError(f"upstream checkpoints have the upstream architecture (filter_envelope=None, vector_mixing='cartesian'), "
                         f"got filter_envelope={config.filter_envelope!r}, vector_mixing={config.vector_mixing!r}")
    expected = param_shapes(config)
    params: dict[str, np.ndarray] = {}
    unexpected, misshaped = [], []
    for name, value in state_dict.items():
        mapped = our_path(name)
        if mapped is None or mapped[0] not in expected:
            unexpected.append(name)
            continue
        path, transpose = mapped
        array = np.asarray(value, dtype=np.float64)
        if transpose and array.ndim == 2:
            array = array.T
        if array.shape != expected[path]:
            shown = array.T.shape if transpose and array.ndim == 2 else array.shape
            misshaped.append(f"{name}: has shape {list(shown)}, the config needs {list(expected[path][::-1] if transpose else expected[path])}")
            continue
        params[path] = array
    last_mixing = f"interactions_{config.num_interactions - 1}/mixing_matrix"
    if last_mixing not in params:
        params[last_mixing] = np.eye(3)
    missing = [n for n in upstream_names(config) if our_path(n)[0] not in params]
    if missing or unexpected or misshaped:
        lines = ["the checkpoint does not match a PaiNN student of " + _describe(config) + ":"]
        lines += [f"  missing tensor: {n}" for n in missing]
        lines += [f"  unexpected tensor: {n}" for n in unexpected]
        lines += [f"  wrong shape: {m}" for m in misshaped]
        raise ValueError("\n".join(lines))
    return params


def _describe(config: PaiNNConfig) -> str:
    return ", ".join(f"{k}={getattr(config, k)}" for k in _HYPER_PARAMETERS)
