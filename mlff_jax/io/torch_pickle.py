"""Reads PyTorch ``torch.save`` zip files without PyTorch, and without running their code.

A ``.pt`` file is a zip archive holding ``data.pkl`` (a pickle) and one raw little-endian buffer per
tensor storage under ``data/``. A pickle can name any importable callable and call it, which is how
a malicious checkpoint runs code. :class:`RestrictedUnpickler` resolves only a short allow-list of
globals (tensor rebuild functions, storage types, ``OrderedDict``, ``pathlib`` paths) to inert
stand-ins of our own; any other global refuses the whole file with ``ValueError``.
"""

from __future__ import annotations

import collections
import io
import pathlib
import pickle
import zipfile
from typing import Any

import numpy as np

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` etc.: only remembers the element type."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


def _rebuild_tensor(storage, storage_offset, size, stride, *unused) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2`` for a NumPy storage: a strided view, copied."""
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if not size:
        return np.array(storage[storage_offset])
    needed = storage_offset + 1 + sum((n - 1) * s for n, s in zip(size, stride) if n > 0)
    if min(size) > 0 and needed > storage.size:
        raise ValueError("corrupt checkpoint: a tensor reaches past the end of its storage")
    base = storage[storage_offset:]
    view = np.lib.stride_tricks.as_strided(base, shape=size, strides=tuple(s * base.itemsize for s in stride))
    return np.array(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused) -> np.ndarray:
    """``torch._utils._rebuild_parameter``: an ``nn.Parameter`` is just its tensor here."""
    return data


def _path(*parts) -> str:
    """``pathlib.PosixPath`` etc. become plain strings (never touch the file system)."""
    return str(pathlib.PurePosixPath(*parts))


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("pathlib", "PosixPath"): _path,
    ("pathlib", "PurePosixPath"): _path,
    ("pathlib", "WindowsPath"): _path,
    ("pathlib", "PureWindowsPath"): _path,
    ("pathlib", "Path"): _path,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for ``data.pkl`` that rebuilds tensors as NumPy arrays and refuses all else."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, byteorder: str):
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._prefix = prefix
        self._byteorder = byteorder
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ValueError(
                f"refusing to load checkpoint: its pickle names '{module}.{name}', which is not a "
                "tensor, container or path. A PaiNN checkpoint never needs it; loading it could run code."
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise ValueError(f"refusing to load checkpoint: unsupported persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        if key not in self._storages:
            try:
                raw = self._archive.read(f"{self._prefix}data/{key}")
            except KeyError:
                raise ValueError(f"corrupt checkpoint: tensor storage 'data/{key}' is missing from the archive") from None
            dtype = np.dtype(storage_type.dtype).newbyteorder("<" if self._byteorder == "little" else ">")
            array = np.frombuffer(raw, dtype=dtype)
            if array.size < int(numel):
                raise ValueError(f"corrupt checkpoint: storage 'data/{key}' holds {array.size} of {numel} elements")
            self._storages[key] = array.astype(storage_type.dtype)
        return self._storages[key]


def read_torch_checkpoint(path) -> Any:
    """Reads a ``torch.save`` zip file into plain Python containers holding NumPy arrays.

    Raises ValueError for a file that is not a PyTorch zip checkpoint or whose pickle names
    anything beyond tensors, containers and paths.
    """
    path = pathlib.Path(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not a PyTorch zip checkpoint (legacy non-zip torch.save files are not supported; "
            "re-save with a recent PyTorch)"
        )
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(f"{path} is a zip file but not a PyTorch checkpoint (no single '<name>/data.pkl')")
        prefix = pickles[0][: -len("data.pkl")]
        names = set(archive.namelist())
        byteorder = archive.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in names else "little"
        unpickler = RestrictedUnpickler(archive.read(pickles[0]), archive, prefix, byteorder)
        try:
            return unpickler.load()
        except ValueError:
            raise
        except Exception as exc:  # malformed pickles raise many kinds of error
            raise ValueError(f"{path}: could not read its pickle ({type(exc).__name__}: {exc})") from exc
