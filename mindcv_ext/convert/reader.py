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

    def materialize(self) -> np.ndarray:
        data = self.storage.data
        if not self.size:
            return np.array(data[self.offset])
        if 0 in self.size:
            return np.zeros(self.size, dtype=data.dtype)
        end = self.offset + 1 + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if end > data.size:
            raise CheckpointError(f"a tensor of shape {self.size} reaches past its storage ({data.size} elements); "
                                  f"the file is corrupt")
        view = np.lib.stride_tricks.as_strided(data[self.offset:], shape=self.size,
                                               strides=[s * data.itemsize for s in self.stride])
        return np.array(view)


class _StorageRef:
    def __init__(self, storage_type: _StorageType, key: str, numel: int) -> None:
        self.storage_type, self.key, self.numel = storage_type, key, numel
        self.data = None


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
        storage_type, key, _location, numel = pid[1], str(pid[2]), pid[3], int(pid[4])
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self._path!r}: unsupported storage type {storage_type!r}")
        if key not in self._storages:
            self._storages[key] = _StorageRef(storage_type, key, numel)
        return self._storages[key]


def _materialize(obj):
    if isinstance(obj, _TensorRef):
        return obj.materialize()
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _materialize(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_materialize(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialize(v) for v in obj)
    return obj


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
        storages: Dict[str, _StorageRef] = {}
        with archive.open(pickles[0]) as stream:
            obj = _RestrictedUnpickler(stream, path, storages).load()
        for storage in storages.values():
            record = f"{prefix}data/{storage.key}"
            raw = archive.read(record)
            expected = storage.numel * storage.storage_type.dtype.itemsize
            if len(raw) < expected:
                raise CheckpointError(f"{path!r}: storage {record} holds {len(raw)} bytes, expected {expected}")
            storage.data = storage.storage_type.from_bytes(raw[:expected])
    return _materialize(obj)


def _read_legacy(path: str) -> Any:
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
            raw = stream.read(numel * storage.storage_type.dtype.itemsize)
            if len(raw) < numel * storage.storage_type.dtype.itemsize:
                raise CheckpointError(f"{path!r} is truncated (storage {key} cut short)")
            storage.data = storage.storage_type.from_bytes(raw)
    return _materialize(obj)


def _read_safetensors(path: str) -> Dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return collections.OrderedDict(load_file(path))


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
            OSError, IndexError, TypeError, AttributeError, io.UnsupportedOperation) as exc:
        raise CheckpointError(f"cannot read checkpoint {path!r}: the file is truncated or corrupt "
                              f"({type(exc).__name__}: {exc})") from exc
