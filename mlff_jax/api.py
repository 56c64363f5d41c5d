"""``load`` and ``save``: from any checkpoint to a ready model, and back to our format."""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Sequence

from mlff_jax import painn
from mlff_jax.elements import chemical_number, parse_elements
from mlff_jax.io import read_checkpoint, write_checkpoint
from mlff_jax.model import PaiNNStudent


def load(path: str | os.PathLike, dtype: str = "float32", precision: str = "highest", implementation: str = "auto",
         interpret: bool = False, elements: Sequence[int | str] | str | None = None,
         allow_untrained_elements: bool = False) -> PaiNNStudent:  # fmt: skip
    """Loads a PaiNN student from any checkpoint layout.

    Args:
      path: a PyTorch ``.pt`` file (model save, trainer checkpoint, bare state_dict; with or
        without a ``model.`` prefix), an upstream ONNX export (weights only), or our safetensors.
        PyTorch is not needed; ``.pt`` pickles are read by a restricted unpickler that runs no code.
      dtype: ``"float32"`` or ``"float64"``.
      precision: matmul precision (``"highest"`` by default; see :class:`PaiNNStudent`).
      implementation: message passing by ``"xla"``, the fused kernels ``"pallas"`` / ``"triton"``, or
        ``"auto"`` (default: the fastest measured on this device, else XLA; :mod:`mlff_jax.implementation`).
      interpret: run the Pallas kernels in interpret mode (CPU; slow, for tests).
      elements: the elements the model was trained on (atomic numbers or symbols, a list or
        ``"H,C,N,O"``), replacing what the file records. A file that records none (upstream
        checkpoints, ONNX, our files before this field) gets H, C, N, O, F, S, Cl, the elements of
        MLFF-Distiller's training data.
      allow_untrained_elements: accept atoms of other elements instead of raising ValueError (their
        embeddings were never trained: results are meaningless unless you know better).
      Or the name of a model bundled with the package: ``"default"`` (a 77K-parameter student
        distilled from GFN2-xTB for H, C, N, O, F, S, Cl; see ``weights/README.md``).
    Raises:
      FileNotFoundError, or ValueError naming the file and what in it is wrong (not a checkpoint,
      corrupt archive or pickle, a tensor that does not fit its storage, NaN or inf in a weight, a
      malformed config, missing or mis-shaped tensors). Reading runs no code from the file.
    """
    name = str(path)
    if isinstance(path, str) and path in BUNDLED_MODELS:
        path = bundled_model_path(path)
    config, flat = read_checkpoint(path)
    if elements is not None:
        if isinstance(elements, str):
            elements = parse_elements(elements)
        numbers = [chemical_number(e) for e in elements]
        config = dataclasses.replace(config, elements=tuple(numbers))
    return PaiNNStudent(config, painn.unflatten(flat), dtype=dtype, precision=precision, implementation=implementation, interpret=interpret,
                        name=name, allow_untrained_elements=allow_untrained_elements)  # fmt: skip


def save(model: PaiNNStudent, path: str | os.PathLike, overwrite: bool = False) -> None:
    """Writes ``model`` in our format (safetensors; the config, trained elements included, in the
    metadata); ``load`` reads it back exactly.

    Raises FileExistsError if ``path`` exists, unless ``overwrite=True`` (``mlff-jax convert`` does
    the same, unless ``--overwrite``).
    """
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists: pass overwrite=True to replace it")
    flat = painn.flatten(model.params)
    tables = [v for k, v in flat.items() if k.endswith("filter_table/coefficients")]
    extra = {"filter_table_intervals": str(tables[0].shape[0])} if tables else None
    write_checkpoint(path, model.config, flat, extra_metadata=extra)


# ------------------------------------------------------------------ bundled models (package data)
BUNDLED_MODELS = {"default": "default.safetensors"}


def bundled_model_path(name: str) -> pathlib.Path:
    """File of a model shipped with the package: ``weights/`` is installed as ``mlff_jax.weights``.

    In a source checkout (``weights/`` next to ``mlff_jax/`` and a ``pyproject.toml``) that folder is
    used directly, so the checkout's own weights win over any installed copy.
    """
    if name not in BUNDLED_MODELS:
        raise ValueError(f"no bundled model named {name!r}; bundled: {sorted(BUNDLED_MODELS)}")
    root = pathlib.Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file() and (root / "weights" / BUNDLED_MODELS[name]).is_file():
        return root / "weights" / BUNDLED_MODELS[name]
    from importlib.resources import files

    return pathlib.Path(str(files("mlff_jax.weights").joinpath(BUNDLED_MODELS[name])))
