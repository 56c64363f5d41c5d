"""Reads PyTorch ``torch.save`` zip files without PyTorch, and without running their code.

A ``.pt`` file is a zip archive holding ``data.pkl`` (a pickle) and one raw little-endian buffer per
tensor storage under ``data/``. A pickle can name any importable callable and call it, which is how
a malicious checkpoint runs code. :class:`RestrictedUnpickler` resolves only a short allow-list of
globals (tensor rebuild functions, storage types, ``OrderedDict``, ``pathlib`` paths) to inert
stand-ins of our own; any other global refuses the whole file with ``ValueError``.

Every number a crafted file controls (a tensor's shape, strides, storage offset and element type, a
storage's size) is checked with Python integers (no overflow) before any array is made, and tensors
are gathered by bounds-checked integer indexing, never by raw strided views: no file can make the
reader touch memory outside a storage.
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


# Far above any PaiNN student (the 427K model's largest tensor has 49K elements); a crafted file
# cannot make the reader allocate more than this per tensor or storage.
MAX_TENSOR_ELEMENTS = 1 << 28
MAX_TENSOR_DIMS = 16
MAX_PICKLE_BYTES = 1 << 28  # the pickle holds names and shapes only; a trainer checkpoint's is ~100 kB


class _StorageType(str):
    """Stand-in for ``torch.FloatStorage`` etc.: its name. Immutable (a ``str`` without
    ``__dict__``), so a pickle's BUILD opcode cannot change a type shared by later files."""

    __slots__ = ()

    @property
    def name(self) -> str:
        return str(self)

    @property
    def dtype(self):
        return _STORAGE_DTYPES[str(self)]


class _AllowedCallable:
    """An allow-listed function as a pickle sees it: callable, but with no ``__dict__``, slots or
    defaults that a pickle's BUILD opcode could change for later files."""

    __slots__ = ()


def _allowed(function) -> _AllowedCallable:
    return type(f"_Allowed_{function.__name__}", (_AllowedCallable,), {"__slots__": (), "__call__": staticmethod(function)})()


class _Storage:
    """One storage's elements (1-D NumPy array), or why it cannot be read; only the reader makes
    these, so a pickle cannot hand ``_rebuild_tensor`` anything else as a storage."""

    __slots__ = ("key", "array", "error")

    def __init__(self, key: str, array: np.ndarray | None, error: str | None = None):
        self.key, self.array, self.error = key, array, error


class _InvalidTensor:
    """What a tensor that cannot be rebuilt becomes while the pickle is read: the error is raised
    once the pickle is done, naming the tensor by its place in the loaded object."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_tuple(value, what: str, key: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or len(value) > MAX_TENSOR_DIMS or not all(_is_int(v) and v >= 0 for v in value):
        raise ValueError(f"corrupt checkpoint: a tensor of storage 'data/{key}' has {what} {value!r:.80}, "
                         f"expected at most {MAX_TENSOR_DIMS} non-negative integers")  # fmt: skip
    return tuple(value)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused) -> np.ndarray | _InvalidTensor:
    """``torch._utils._rebuild_tensor_v2``: the elements ``storage_offset + sum_i index_i * stride_i``
    of the storage, gathered into a new array of shape ``size``; every number checked first."""
    try:
        return _gather(storage, storage_offset, size, stride)
    except ValueError as exc:
        return _InvalidTensor(str(exc))


def _gather(storage, storage_offset, size, stride) -> np.ndarray:
    if isinstance(storage, _Storage) and storage.error:
        raise ValueError(storage.error)
    if not isinstance(storage, _Storage) or not isinstance(storage.array, np.ndarray) or storage.array.ndim != 1:
        raise ValueError(f"corrupt checkpoint: a tensor is rebuilt from a {type(storage).__name__}, not a tensor storage")
    key, elements = storage.key, storage.array
    size, stride = _int_tuple(size, "shape", key), _int_tuple(stride, "strides", key)
    if len(size) != len(stride):
        raise ValueError(f"corrupt checkpoint: a tensor of storage 'data/{key}' has shape {list(size)} but strides {list(stride)}")
    if not _is_int(storage_offset) or storage_offset < 0:
        raise ValueError(f"corrupt checkpoint: a tensor of storage 'data/{key}' has storage offset {storage_offset!r:.40}")
    numel = 1
    for n in size:
        numel *= n  # Python integers: no overflow
    if numel > MAX_TENSOR_ELEMENTS or max(size, default=0) > MAX_TENSOR_ELEMENTS:
        raise ValueError(f"corrupt checkpoint: a tensor of storage 'data/{key}' has shape {list(size)}, over {MAX_TENSOR_ELEMENTS} elements")
    if numel == 0:
        return np.zeros(size, elements.dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= elements.size:
        raise ValueError(f"corrupt checkpoint: a tensor (offset {storage_offset}, shape {list(size)}, strides {list(stride)}) "
                         f"reaches element {last} of storage 'data/{key}', which holds {elements.size}")  # fmt: skip
    index = np.full(size, storage_offset, np.int64)  # every value < elements.size <= 2^28: no overflow
    for axis, (n, s) in enumerate(zip(size, stride)):
        if n > 1:  # then s < elements.size; a length-1 axis may carry any stride (torch writes such)
            index += (np.arange(n, dtype=np.int64) * s).reshape((n,) + (1,) * (len(size) - axis - 1))
    return elements[index]


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused) -> np.ndarray:
    """``torch._utils._rebuild_parameter``: an ``nn.Parameter`` is just its tensor here."""
    return data


def _path(*parts) -> str:
    """``pathlib.PosixPath`` etc. become plain strings (never touch the file system)."""
    return str(pathlib.PurePosixPath(*parts))


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _allowed(_rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): _allowed(_rebuild_parameter),
    **{("pathlib", name): _allowed(_path) for name in ("PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath", "Path")},
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
        if not isinstance(key, str) or not key.isalnum():
            raise ValueError(f"corrupt checkpoint: storage name {key!r:.40} is not a plain name")
        if key not in self._storages:
            try:
                self._storages[key] = _Storage(key, self._read_storage(key, storage_type, numel))
            except ValueError as exc:  # reported with the name of a tensor that uses it
                self._storages[key] = _Storage(key, None, str(exc))
        elif self._storages[key].array is not None and self._storages[key].array.dtype != np.dtype(storage_type.dtype):
            raise ValueError(f"corrupt checkpoint: storage 'data/{key}' is used with two element types")
        return self._storages[key]

    def _read_storage(self, key: str, storage_type: _StorageType, numel) -> np.ndarray:
        if not _is_int(numel) or not 0 <= numel <= MAX_TENSOR_ELEMENTS:
            raise ValueError(f"corrupt checkpoint: storage 'data/{key}' claims {numel!r:.40} elements")
        name = f"{self._prefix}data/{key}"
        try:
            info = self._archive.getinfo(name)
        except KeyError:
            raise ValueError(f"corrupt checkpoint: tensor storage 'data/{key}' is missing from the archive") from None
        itemsize = np.dtype(storage_type.dtype).itemsize
        if info.file_size > MAX_TENSOR_ELEMENTS * itemsize:
            raise ValueError(f"corrupt checkpoint: storage 'data/{key}' is {info.file_size} bytes, over the limit of {MAX_TENSOR_ELEMENTS} elements")
        raw = self._archive.read(name)
        if len(raw) % itemsize:
            raise ValueError(f"corrupt checkpoint: storage 'data/{key}' is {len(raw)} bytes, not a multiple of "
                             f"{itemsize} (the size of its element type, {storage_type.name})")  # fmt: skip
        dtype = np.dtype(storage_type.dtype).newbyteorder("<" if self._byteorder == "little" else ">")
        array = np.frombuffer(raw, dtype=dtype)
        if array.size < numel:
            raise ValueError(f"corrupt checkpoint: storage 'data/{key}' holds {array.size} of {numel} elements")
        return array.astype(storage_type.dtype)


def _raise_for_invalid_tensors(loaded: Any) -> None:
    """Raises ValueError naming the first tensors (by their place: ``model_state_dict/w``) that
    could not be rebuilt. Walks dicts, lists and tuples once each (a pickle can make cycles)."""
    found, seen, todo = [], set(), [("", loaded)]
    while todo and len(found) < 5:
        where, value = todo.pop()
        if isinstance(value, _InvalidTensor):
            found.append((where or "(top level)", value.reason))
        elif isinstance(value, (dict, list, tuple)) and id(value) not in seen:
            seen.add(id(value))
            items = value.items() if isinstance(value, dict) else enumerate(value)
            todo += [(f"{where}/{k}" if where else str(k), v) for k, v in items]
    if found:
        raise ValueError("; ".join(f"tensor '{where}': {reason}" for where, reason in sorted(found)))


def read_torch_checkpoint(path) -> Any:
    """Reads a ``torch.save`` zip file into plain Python containers holding NumPy arrays.

    Raises ValueError, naming the file, for a file that is not a PyTorch zip checkpoint, a corrupt
    archive, pickle or storage, or a pickle that names anything beyond tensors, containers and paths.
    """
    path = pathlib.Path(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not a PyTorch zip checkpoint (legacy non-zip torch.save files are not supported; "
            "re-save with a recent PyTorch)"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
            if len(pickles) != 1:
                raise ValueError("a zip file but not a PyTorch checkpoint (no single '<name>/data.pkl')")
            prefix = pickles[0][: -len("data.pkl")]
            names = set(archive.namelist())
            byteorder = archive.read(prefix + "byteorder").decode("ascii", "replace").strip() if prefix + "byteorder" in names else "little"
            if byteorder not in ("little", "big"):
                raise ValueError(f"corrupt checkpoint: byte order {byteorder[:20]!r}, expected 'little' or 'big'")
            if archive.getinfo(pickles[0]).file_size > MAX_PICKLE_BYTES:
                raise ValueError(f"corrupt checkpoint: data.pkl is {archive.getinfo(pickles[0]).file_size} bytes, over the limit of {MAX_PICKLE_BYTES}")
            unpickler = RestrictedUnpickler(archive.read(pickles[0]), archive, prefix, byteorder)
            loaded = unpickler.load()
        _raise_for_invalid_tensors(loaded)
        return loaded
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    except Exception as exc:  # corrupt archives and malformed pickles raise many kinds of error
        raise ValueError(f"{path}: corrupt checkpoint, could not read its archive or pickle ({type(exc).__name__}: {exc})") from exc
