"""``load`` and ``save``: from any checkpoint to a ready model, and back to our format."""

from __future__ import annotations

import os

from mlff_jax import painn
from mlff_jax.io import read_checkpoint, write_checkpoint
from mlff_jax.model import PaiNNStudent


def load(path: str | os.PathLike, dtype: str = "float32", precision: str = "highest") -> PaiNNStudent:
    """Loads a PaiNN student from any checkpoint layout.

    Args:
      path: a PyTorch ``.pt`` file (model save, trainer checkpoint, bare state_dict; with or
        without a ``model.`` prefix), an upstream ONNX export (weights only), or our safetensors.
        PyTorch is not needed; ``.pt`` pickles are read by a restricted unpickler that runs no code.
      dtype: ``"float32"`` or ``"float64"``.
      precision: matmul precision (``"highest"`` by default; see :class:`PaiNNStudent`).
    Raises:
      FileNotFoundError, or ValueError naming what is wrong with the file.
    """
    config, flat = read_checkpoint(path)
    return PaiNNStudent(config, painn.unflatten(flat), dtype=dtype, precision=precision)


def save(model: PaiNNStudent, path: str | os.PathLike) -> None:
    """Writes ``model`` in our format (safetensors, config in the metadata); ``load`` reads it back."""
    flat = painn.flatten(model.params)
    tables = [v for k, v in flat.items() if k.endswith("filter_table/values")]
    extra = {"filter_table_rows": str(tables[0].shape[0])} if tables else None
    write_checkpoint(path, model.config, flat, extra_metadata=extra)
