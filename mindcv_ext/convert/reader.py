"""Read PyTorch and safetensors checkpoints into NumPy arrays, without torch and without running code.

PyTorch files are pickles. Unpickling an arbitrary pickle can call any importable function, so the
unpickler here resolves only what a checkpoint legitimately holds: tensor rebuild functions and
storage types (answered with our own NumPy implementations), ``OrderedDict``, ``argparse.Namespace``
(inert data in training checkpoints), ``torch.Size`` and NumPy scalars. Any other global is refused
by name before it is ever called.

Formats: the zip format of ``torch.save`` (PyTorch >= 1.6: ``.pth``, ``.pth.tar``, Lightning
``.ckpt``), the legacy non-zip format, and ``.safetensors``.
"""
import argparse
import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, Callable, Dict, Tuple

import numpy as np

__all__ = ["CheckpointError", "UnsafeCheckpointError", "read_checkpoint"]


class CheckpointError(ValueError):
    """The file is not a checkpoint we can read (missing, truncated, corrupt, unknown format)."""


class UnsafeCheckpointError(CheckpointError):
    """The pickle asks for a global outside the allow-list; nothing from it was executed."""


_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name = name
        dtype = _STORAGE_DTYPES[name]
        self.is_bfloat16 = dtype == "bfloat16"
        self.dtype = np.dtype(np.uint16 if self.is_bfloat16 else dtype)

    def from_bytes(self, raw: bytes) -> np.ndarray:
        array = np.frombuffer(raw, dtype=self.dtype.newbyteorder("<"))
        if self.is_bfloat16:  # bfloat16 is the top half of a float32
            array = (array.astype(np.uint32) << 16).view(np.float32)
        return array


class _TensorRef:
    """A tensor whose storage may not be read yet (legacy files store data after the pickle)."""

    def __init__(self, storage: "_StorageRef", offset: int, size: Tuple[int, ...], stride: Tuple[int, ...]) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def materialize(self, budget: "_Budget") -> np.ndarray:
        data = self.storage.data
        layout = f"offset {self.offset}, shape {self.size}, strides {self.stride}"
        numbers = (self.offset,) + self.size + self.stride
        # PyTorch never writes a negative offset, size or stride; here one would read memory outside the storage.
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers) or \
                len(self.size) != len(self.stride):
            raise CheckpointError(f"{budget.path!r}: a tensor has an invalid layout ({layout}); the file is corrupt "
                                  f"or crafted")
        if not self.size:
            if self.offset >= data.size:
                raise CheckpointError(f"{budget.path!r}: a scalar at {self.offset} lies past its storage "
                                      f"({data.size} elements)")
            return np.array(data[self.offset])
        if 0 in self.size:
            return np.zeros(self.size, dtype=data.dtype)
        end = self.offset + 1 + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if end > data.size:
            raise CheckpointError(f"{budget.path!r}: a tensor ({layout}) reaches past its storage "
                                  f"({data.size} elements); the file is corrupt")
        budget.take(int(np.prod(self.size, dtype=object)) * data.itemsize, f"a tensor of shape {self.size}")
        view = np.lib.stride_tricks.as_strided(data[self.offset:], shape=self.size,
                                               strides=[s * data.itemsize for s in self.stride])
        return np.array(view)


class _StorageRef:
    def __init__(self, storage_type: _StorageType, key: str, numel: int) -> None:
        self.storage_type, self.key, self.numel = storage_type, key, numel
        self.data = None


class _Budget:
    """The bytes a file may make the reader allocate: a few times its own size (views may repeat a storage's
    elements, as a transposed copy does), never what a crafted header claims."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.file_size = os.path.getsize(path)
        self.left = 4 * self.file_size + (64 << 20)

    def take(self, nbytes: int, what: str) -> None:
        if nbytes > self.left:
            raise CheckpointError(f"{self.path!r}: {what} would take {nbytes:,} bytes, more than this "
                                  f"{self.file_size:,}-byte file can hold; the file is corrupt or crafted")
        self.left -= nbytes


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, state=None):
    return data


def _torch_size(values=()):
    return tuple(values)


def _allowed_globals() -> Dict[Tuple[str, str], Callable]:
    allowed = {
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch", "Size"): _torch_size,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("argparse", "Namespace"): argparse.Namespace,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "slice"): slice,
        ("builtins", "complex"): complex,
        ("numpy", "dtype"): np.dtype,
    }
    # NumPy scalars (timm stores metrics like this); the module moved in NumPy 2.
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "scalar")] = np.core.multiarray.scalar
    for name in _STORAGE_DTYPES:
        allowed[("torch", name)] = _StorageType(name)
    return allowed


_ALLOWED = _allowed_globals()


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path: str, storages: Dict[str, _StorageRef]) -> None:
        super().__init__(file)
        self._path = path
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":  # protocol 2 (torch's default) writes Python 2's name of builtins
            module = "builtins"
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"refusing to load {self._path!r}: its pickle references the global '{module}.{name}', which a "
                f"checkpoint has no reason to contain (unpickling it could run code). Nothing from the file was "
                f"executed. If you trust the file, load it with torch and save its state_dict alone.") from None

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] not in ("storage", b"storage"):
            raise CheckpointError(f"{self._path!r}: unsupported persistent object {pid!r:.80}")
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self._path!r}: unsupported storage type {storage_type!r}")
        if numel < 0:
            raise CheckpointError(f"{self._path!r}: storage {key} declares {numel} elements; the file is corrupt")
        if key not in self._storages:
            self._storages[key] = _StorageRef(storage_type, key, numel)
        return self._storages[key]


_MAX_DEPTH = 200  # a state dict nests a handful of levels; a crafted pickle can nest millions


def _materialize(obj, budget: _Budget, memo: Dict[int, Any] = None, depth: int = 0):
    """``obj`` with every tensor reference read. Each object is converted once (``memo``): a pickle that shares one
    list a million times stays one list, instead of a million copies."""
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)]
    if depth > _MAX_DEPTH:
        raise CheckpointError(f"{budget.path!r} nests containers more than {_MAX_DEPTH} deep; no checkpoint does")
    if isinstance(obj, _TensorRef):
        result = obj.materialize(budget)
    elif isinstance(obj, dict):
        result = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
        memo[id(obj)] = result
        for key, value in obj.items():
            result[key] = _materialize(value, budget, memo, depth + 1)
        return result
    elif isinstance(obj, list):
        result = []
        memo[id(obj)] = result
        result.extend(_materialize(v, budget, memo, depth + 1) for v in obj)
        return result
    elif isinstance(obj, tuple):
        result = tuple(_materialize(v, budget, memo, depth + 1) for v in obj)
    else:
        return obj
    memo[id(obj)] = result
    return result


def _read_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"{path!r} is a zip file but not a PyTorch checkpoint (no single data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = prefix + "byteorder"
        if byteorder in names and archive.read(byteorder).strip() != b"little":
            raise CheckpointError(f"{path!r} was saved on a big-endian machine; re-save it on a little-endian one")
        budget = _Budget(path)
        budget.take(archive.getinfo(pickles[0]).file_size, "its pickle")
        storages: Dict[str, _StorageRef] = {}
        with archive.open(pickles[0]) as stream:
            obj = _RestrictedUnpickler(stream, path, storages).load()
        for storage in storages.values():
            record = f"{prefix}data/{storage.key}"
            expected = storage.numel * storage.storage_type.dtype.itemsize
            budget.take(expected, f"storage {record}")
            # Never inflate more than the pickle says the storage holds: an entry's own size field can lie.
            with archive.open(record) as stream:
                raw = stream.read(expected)
            if len(raw) < expected:
                raise CheckpointError(f"{path!r}: storage {record} holds {len(raw)} bytes, expected {expected}")
            storage.data = storage.storage_type.from_bytes(raw)
    return _materialize(obj, budget)


def _read_legacy(path: str) -> Any:
    budget = _Budget(path)
    with open(path, "rb") as stream:
        unpickler = _RestrictedUnpickler(stream, path, {})
        if unpickler.load() != _LEGACY_MAGIC:
            raise CheckpointError(f"{path!r} is neither a zip nor a legacy PyTorch checkpoint, nor safetensors")
        _RestrictedUnpickler(stream, path, {}).load()  # protocol version
        _RestrictedUnpickler(stream, path, {}).load()  # sys_info
        storages: Dict[str, _StorageRef] = {}
        obj = _RestrictedUnpickler(stream, path, storages).load()
        keys = _RestrictedUnpickler(stream, path, {}).load()
        for key in keys:
            storage = storages[str(key)]
            header = stream.read(8)
            if len(header) < 8:
                raise CheckpointError(f"{path!r} is truncated (storage {key} missing)")
            (numel,) = struct.unpack("<q", header)
            nbytes = numel * storage.storage_type.dtype.itemsize
            if numel < 0 or nbytes > budget.file_size - stream.tell():
                raise CheckpointError(f"{path!r}: storage {key} declares {numel:,} elements, more than the rest of "
                                      f"the file holds; it is truncated or corrupt")
            raw = stream.read(nbytes)
            if len(raw) < nbytes:
                raise CheckpointError(f"{path!r} is truncated (storage {key} cut short)")
            storage.data = storage.storage_type.from_bytes(raw)
    return _materialize(obj, budget)


def _read_safetensors(path: str) -> Dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return collections.OrderedDict(load_file(path))
    except Exception as exc:  # SafetensorError and the rest name neither the file nor what to do
        raise CheckpointError(f"cannot read {path!r} as safetensors: the file is truncated or corrupt "
                              f"({type(exc).__name__}: {exc})") from exc


def read_checkpoint(path: str) -> Any:
    """The object saved in ``path``, with every tensor as a NumPy array.

    Raises ``FileNotFoundError`` for a missing file, ``UnsafeCheckpointError`` when the pickle asks
    for a global outside the allow-list, and ``CheckpointError`` for anything unreadable.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        if path.endswith(".safetensors"):
            return _read_safetensors(path)
        if zipfile.is_zipfile(path):
            return _read_zip(path)
        return _read_legacy(path)
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, KeyError, ValueError, struct.error,
            OSError, IndexError, TypeError, AttributeError, io.UnsupportedOperation, RecursionError,
            MemoryError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path!r}: the file is truncated or corrupt "
                              f"({type(exc).__name__}: {exc})") from exc
