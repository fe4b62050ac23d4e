"""Read PyTorch and safetensors checkpoints into NumPy arrays, without torch and without running code.

PyTorch files are pickles. Unpickling an arbitrary pickle can call any importable function, so the
unpickler here resolves only what a checkpoint legitimately holds: tensor rebuild functions and
storage types (answered with our own NumPy implementations), ``OrderedDict``, ``argparse.Namespace``
(inert data in training checkpoints), ``torch.Size``, NumPy scalars and protocol 2's byte strings
(``_codecs.encode``; both answered with our own functions). Any other global is refused by name before it is
ever called.

A pickle can also change objects: BUILD sets attributes, SETITEM(S), APPEND(S) and ADDITEMS fill containers.
Applied to what the unpickler answers globals with (storage types, functions, classes), they would change how
every later file in the process reads: a 1 KB file once set ``torch.FloatStorage``'s dtype to uint8, and every
valid file read after it came out as uint8 zeros. So the importer constructs and never mutates what it did not
create, as PyTorch's own ``weights_only`` unpickler does:

- each file is read against its own table of answers (fresh storage types; one table for all of a legacy
  file's pickles), so nothing one file does reaches the next;
- those opcodes act only on the dicts, lists, sets and Namespaces this load created (EMPTY_DICT, LIST, ...,
  or a call to ``OrderedDict``, ``Namespace``, ``set``); anything else is refused by name with
  ``UnsafeCheckpointError`` before it is touched;
- BUILD is what ``state_dict()._metadata`` and pickled ``Namespace`` args need: a dict of plain attribute names,
  set on an ``OrderedDict`` or ``Namespace`` of this load. Never ``__setstate__``, slot state (setattr),
  dunder names or names of the type's own;
- NumPy's ``dtype`` and ``scalar`` are never handed to the pickle (its dtypes are process-wide objects with a C
  ``__setstate__``): ``numpy.dtype`` gets a fresh record of a plain numeric or bool type, on which BUILD may set
  the byte order only, and ``scalar`` reads exactly ``itemsize`` bytes into a NumPy scalar;
- EXT1/EXT2/EXT4 (globals by copyreg code, cached process-wide) are refused; torch.save never writes them.

The unpickler is the pure-Python one (``pickle._Unpickler``) with those opcodes replaced. It is slower than the C
one, but a checkpoint's pickle is small beside its tensors (about 40 KB for an 18 MB ViTAE file: a few ms more).

Formats: the zip format of ``torch.save`` (PyTorch >= 1.6: ``.pth``, ``.pth.tar``, Lightning
``.ckpt``), the legacy non-zip format, and ``.safetensors``.
"""
import argparse
import collections
import functools
import io
import os
import pickle
import struct
import sys
import zipfile
from typing import Any, Callable, ClassVar, Dict, Tuple

import numpy as np

__all__ = ["CheckpointError", "UnsafeCheckpointError", "read_checkpoint"]


class CheckpointError(ValueError):
    """The file is not a checkpoint we can read (missing, truncated, corrupt, unknown format)."""


class UnsafeCheckpointError(CheckpointError):
    """The pickle asks for a global outside the allow-list, or to change an object the reader did not create for
    it; nothing from it was executed and nothing was changed."""


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


_TRUST_HINT = "If you trust the file, load it with torch and save its state_dict alone."
# What numpy's dtype.__reduce__ writes for the plain types: kind and item size ('f8', 'b1', ...).
_PLAIN_DTYPE_CODES = ("b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16")


class _DtypeRecord:
    """What the pickle gets for ``numpy.dtype(code, align, copy)``: a fresh, inert note of a plain dtype. NumPy's
    dtypes are process-wide objects whose C ``__setstate__`` takes whatever tuple a pickle gives it; the record is
    turned into one only after checking, outside the pickle's reach (``_numpy_scalar``, ``_materialize``)."""

    __slots__ = ("byteorder", "code")

    def __init__(self, code: str) -> None:
        self.code, self.byteorder = code, "="

    def set_state(self, state: Any, path: str) -> None:
        """BUILD with the state numpy writes for a plain dtype, ``(3, byteorder, None, None, None, -1, -1, 0)``
        (version 4 appends metadata, None for these types). Only the byte order is taken from it."""
        plain = type(state) is tuple and len(state) in (8, 9) and type(state[0]) is int and state[0] in (3, 4) \
            and all(item is None for item in state[2:5] + state[8:])
        order = state[1] if plain else None
        orders = ("<", ">", "=", "|") if np.dtype(self.code).itemsize == 1 else ("<", ">", "=")
        if not (isinstance(order, str) and order in orders):
            shown = f"a tuple with byte order {_shown(order)}" if plain else f"{_shown(state)}"
            raise UnsafeCheckpointError(
                f"refusing to load {path!r}: its pickle applies BUILD to numpy.dtype('{self.code}') with {shown} as "
                f"state; a NumPy scalar in a checkpoint has the state of a plain dtype (version 3, byte order one of "
                f"{' '.join(orders)}, no fields, subarray or metadata). Nothing was changed. {_TRUST_HINT}")
        self.byteorder = order

    def to_numpy(self) -> np.dtype:
        return np.dtype(self.code).newbyteorder(self.byteorder)


def _type_name(obj: Any) -> str:
    return type(obj).__name__


def _shown(value: Any) -> str:
    """``value`` for an error message: short scalars as they are, anything else by type (a crafted state's repr
    could be as large, or as deep, as the pickle)."""
    if value is None or type(value) in (bool, int, float, str, bytes):
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."
    return f"a {_type_name(value)}"


def _numpy_dtype(path: str, code: Any = None, align: Any = False, copy: Any = True) -> _DtypeRecord:
    """``numpy.dtype`` as numpy's pickles call it, ``(code, False, True)``: a record, never NumPy's own dtype."""
    flags_ok = all(type(flag) in (bool, int) for flag in (align, copy)) and not align and copy
    if not (isinstance(code, str) and code in _PLAIN_DTYPE_CODES and flags_ok):
        raise UnsafeCheckpointError(
            f"refusing to load {path!r}: its pickle asks for numpy.dtype({_shown(code)}, align={_shown(align)}, "
            f"copy={_shown(copy)}); a checkpoint holds NumPy scalars of plain numeric or bool types only "
            f"({', '.join(_PLAIN_DTYPE_CODES)}), as numpy pickles them (align False, copy True). Nothing from the "
            f"file was executed. {_TRUST_HINT}")
    return _DtypeRecord(code)


def _numpy_scalar(path: str, dtype: Any = None, raw: Any = None) -> np.generic:
    """``numpy.core.multiarray.scalar(dtype, raw)`` for the plain dtypes: the value of exactly ``itemsize`` bytes,
    as a NumPy scalar (timm stores metrics such as ``np.float64(0.5)`` this way)."""
    if not isinstance(dtype, _DtypeRecord) or not isinstance(raw, bytes):
        raise CheckpointError(f"{path!r}: a NumPy scalar of dtype {_type_name(dtype)} from {_type_name(raw)} data; "
                              f"only plain numeric or bool scalars from bytes are read. The file is corrupt or "
                              f"crafted")
    numpy_dtype = dtype.to_numpy()
    if len(raw) != numpy_dtype.itemsize:
        raise CheckpointError(f"{path!r}: a NumPy {numpy_dtype.name} scalar holds {len(raw)} bytes, not "
                              f"{numpy_dtype.itemsize}; the file is corrupt")
    return np.frombuffer(raw, dtype=numpy_dtype)[0]


def _codecs_encode(path: str, text: Any = None, encoding: Any = "utf-8") -> bytes:
    """Protocol 2 (torch.save's default) writes a bytes object as ``_codecs.encode(text, 'latin1')``; NumPy
    scalars' raw data arrives this way. Only that call is answered."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise CheckpointError(f"{path!r}: its pickle calls _codecs.encode on {_shown(text)} with encoding "
                              f"{_shown(encoding)}; pickles only ever call it with a str and 'latin1'. The file is "
                              f"corrupt or crafted")
    return text.encode("latin-1")


def _allowed_globals(path: str) -> Dict[Tuple[str, str], Any]:
    """What the pickle gets for each global it may name, built afresh for each file (storage types are new
    instances; NumPy and ``_codecs`` are answered by functions bound to this load): nothing a file does to these
    objects could reach the next file even if a mutation slipped through the opcode checks."""
    allowed: Dict[Tuple[str, str], Any] = {
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
        ("numpy", "dtype"): functools.partial(_numpy_dtype, path),
        ("_codecs", "encode"): functools.partial(_codecs_encode, path),
    }
    # NumPy scalars (timm stores metrics like this); the module moved in NumPy 2.
    scalar = functools.partial(_numpy_scalar, path)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "scalar")] = scalar
    for name in _STORAGE_DTYPES:
        allowed[("torch", name)] = _StorageType(name)
    return allowed


def _records_top(load: Callable) -> Callable:
    """``load`` (EMPTY_DICT, LIST, ...), then note the container it pushed as this load's own."""
    def load_and_record(self: "_RestrictedUnpickler") -> None:
        load(self)
        self._created[id(self.stack[-1])] = self.stack[-1]
    return load_and_record


def _records_call(load: Callable, depth: int) -> Callable:
    """``load`` (REDUCE, NEWOBJ, NEWOBJ_EX), which calls ``stack[-depth]``; its result is this load's own when that
    callable is one of the constructors that always make a new object."""
    def load_and_record(self: "_RestrictedUnpickler") -> None:
        maker = self.stack[-depth]
        load(self)
        self._note(maker, self.stack[-1])
    return load_and_record


class _RestrictedUnpickler(pickle._Unpickler):  # the pure-Python one: its opcodes can be replaced one by one
    dispatch: ClassVar[Dict[int, Callable]] = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, path: str, storages: Dict[str, _StorageRef], allowed: Dict[Tuple[str, str], Any]) -> None:
        super().__init__(file)
        self._path = path
        self._storages = storages
        self._allowed = allowed
        self._names = {id(value): f"{module}.{name}" for (module, name), value in allowed.items()}
        makers = (collections.OrderedDict, argparse.Namespace, set, allowed[("numpy", "dtype")])
        self._constructors = {id(maker) for maker in makers}
        # Every container this load made, by id; holding the object keeps its id from being reused by another.
        self._created: Dict[int, Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":  # protocol 2 (torch's default) writes Python 2's name of builtins
            module = "builtins"
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"refusing to load {self._path!r}: its pickle references the global '{module}.{name}', which a "
                f"checkpoint has no reason to contain (unpickling it could run code). Nothing from the file was "
                f"executed. {_TRUST_HINT}") from None

    def persistent_load(self, pid):
        # Only the scalars a storage reference holds are formatted: a crafted one's repr could be exponentially
        # large (lists shared through the memo).
        if type(pid) is not tuple or len(pid) < 5 or pid[0] not in ("storage", b"storage") or \
                type(pid[2]) is not str or type(pid[4]) is not int:
            raise CheckpointError(f"{self._path!r}: unsupported persistent object ({_shown(pid)}); the file is "
                                  f"corrupt or crafted")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self._path!r}: unsupported storage type {_shown(storage_type)}")
        if numel < 0:
            raise CheckpointError(f"{self._path!r}: storage {key} declares {numel} elements; the file is corrupt")
        if key not in self._storages:
            self._storages[key] = _StorageRef(storage_type, key, numel)
        return self._storages[key]

    def _note(self, maker: Any, obj: Any) -> None:
        if id(maker) in self._constructors:
            self._created[id(obj)] = obj

    def _instantiate(self, klass, args) -> None:  # INST and OBJ
        super()._instantiate(klass, args)
        self._note(klass, self.stack[-1])

    def _describe(self, obj: Any) -> str:
        if id(obj) in self._names:
            return f"the global '{self._names[id(obj)]}'"
        return {_TensorRef: "a tensor", _StorageRef: "a tensor storage"}.get(type(obj), f"a {_type_name(obj)}")

    def _target(self, opcode: str, kinds: Tuple[type, ...], kinds_text: str) -> Any:
        """The object the opcode would change, when this load created it as one of ``kinds``; else a refusal by
        name, before anything is touched."""
        obj = self.stack[-1]
        if id(obj) not in self._created:
            raise UnsafeCheckpointError(
                f"refusing to load {self._path!r}: its pickle applies {opcode} to {self._describe(obj)}, an object "
                f"the reader did not create for this file (a checkpoint only fills in the dicts, lists and "
                f"Namespaces it builds). Nothing was changed. {_TRUST_HINT}")
        if not isinstance(obj, kinds):
            raise CheckpointError(f"{self._path!r}: its pickle applies {opcode} to a {_type_name(obj)}; {opcode} "
                                  f"works on {kinds_text} only. The file is corrupt or crafted")
        return obj

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self._target("BUILD", (collections.OrderedDict, argparse.Namespace, _DtypeRecord),
                            "an OrderedDict, a Namespace or a NumPy dtype (a dict, list or set has no attributes)")
        if isinstance(inst, _DtypeRecord):
            inst.set_state(state, self._path)
            return
        if type(state) is tuple and len(state) == 2:
            state, slotstate = state
            if slotstate is not None and not (isinstance(slotstate, dict) and not slotstate):
                raise UnsafeCheckpointError(
                    f"refusing to load {self._path!r}: its pickle applies BUILD with slot state (attributes set "
                    f"through setattr) to a {_type_name(inst)}; no checkpoint needs it. Nothing was changed. "
                    f"{_TRUST_HINT}")
        if state is None:
            return
        if not isinstance(state, dict):
            raise UnsafeCheckpointError(
                f"refusing to load {self._path!r}: its pickle applies BUILD to a {_type_name(inst)} with a "
                f"{_type_name(state)} as state; only a dict of attribute names is accepted. Nothing was changed. "
                f"{_TRUST_HINT}")
        for name in state:
            if not isinstance(name, str) or name.startswith("__") or hasattr(type(inst), name):
                raise UnsafeCheckpointError(
                    f"refusing to load {self._path!r}: its pickle applies BUILD to a {_type_name(inst)} setting "
                    f"{_shown(name)}, which is not a plain attribute name (dunder names and the type's own names "
                    f"are refused). Nothing was changed. {_TRUST_HINT}")
        vars(inst).update((sys.intern(name), value) for name, value in state.items())

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._target("SETITEM", (dict,), "a dict")[key] = value

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self._target("SETITEMS", (dict,), "a dict")
        if len(items) % 2:
            raise CheckpointError(f"{self._path!r}: SETITEMS with an odd number of items; the file is corrupt")
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def load_append(self) -> None:
        value = self.stack.pop()
        self._target("APPEND", (list,), "a list").append(value)

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._target("APPENDS", (list,), "a list").extend(items)

    def load_additems(self) -> None:
        items = self.pop_mark()
        self._target("ADDITEMS", (set,), "a set").update(items)

    def load_ext(self) -> None:
        # EXT1/2/4 name a global by a code in copyreg's registry, and its answer is cached process-wide
        # (copyreg._extension_cache): a later file would get an earlier load's object, or one an unrestricted
        # unpickler put there, without find_class. torch.save never writes them.
        raise UnsafeCheckpointError(
            f"refusing to load {self._path!r}: its pickle names a global through copyreg's extension registry "
            f"(EXT1/EXT2/EXT4), which a checkpoint has no reason to do. Nothing from the file was executed. "
            f"{_TRUST_HINT}")

    for _opcode, _load in ((pickle.BUILD, load_build), (pickle.SETITEM, load_setitem),
                           (pickle.SETITEMS, load_setitems), (pickle.APPEND, load_append),
                           (pickle.APPENDS, load_appends), (pickle.ADDITEMS, load_additems),
                           (pickle.EXT1, load_ext), (pickle.EXT2, load_ext), (pickle.EXT4, load_ext)):
        dispatch[_opcode[0]] = _load
    for _opcode in (pickle.EMPTY_DICT, pickle.DICT, pickle.EMPTY_LIST, pickle.LIST, pickle.EMPTY_SET):
        dispatch[_opcode[0]] = _records_top(dispatch[_opcode[0]])
    for _opcode, _depth in ((pickle.REDUCE, 2), (pickle.NEWOBJ, 2), (pickle.NEWOBJ_EX, 3)):
        dispatch[_opcode[0]] = _records_call(dispatch[_opcode[0]], _depth)
    del _opcode, _load, _depth


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
    elif isinstance(obj, _DtypeRecord):  # a dtype stored as such; NumPy's own, now that the pickle is done
        result = obj.to_numpy()
    elif isinstance(obj, dict):
        result = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
        memo[id(obj)] = result
        for key, value in obj.items():
            result[key] = _materialize(value, budget, memo, depth + 1)
        # An OrderedDict's attributes come from BUILD (checked plain names): state_dict()'s ``_metadata``, the
        # per-module versions that load_state_dict passes to _load_from_state_dict.
        for name, value in (vars(obj) if isinstance(obj, collections.OrderedDict) else {}).items():
            setattr(result, name, _materialize(value, budget, memo, depth + 1))
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
        pickle_size = archive.getinfo(pickles[0]).file_size
        budget.take(pickle_size, "its pickle")
        storages: Dict[str, _StorageRef] = {}
        # Read whole, no more than the size just charged: the pure-Python unpickler reads a byte or two per opcode,
        # twice as slow from a zip stream as from memory.
        with archive.open(pickles[0]) as stream:
            pickled = io.BytesIO(stream.read(pickle_size))
        obj = _RestrictedUnpickler(pickled, path, storages, _allowed_globals(path)).load()
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
    allowed = _allowed_globals(path)  # one table for the file's five pickles
    with open(path, "rb") as stream:
        unpickler = _RestrictedUnpickler(stream, path, {}, allowed)
        if unpickler.load() != _LEGACY_MAGIC:
            raise CheckpointError(f"{path!r} is neither a zip nor a legacy PyTorch checkpoint, nor safetensors")
        _RestrictedUnpickler(stream, path, {}, allowed).load()  # protocol version
        _RestrictedUnpickler(stream, path, {}, allowed).load()  # sys_info
        storages: Dict[str, _StorageRef] = {}
        obj = _RestrictedUnpickler(stream, path, storages, allowed).load()
        keys = _RestrictedUnpickler(stream, path, {}, allowed).load()
        for key in keys:
            if type(key) is not str:
                raise CheckpointError(f"{path!r}: a storage key is {_shown(key)}, not a string; the file is corrupt")
            storage = storages[key]
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
            MemoryError, OverflowError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path!r}: the file is truncated or corrupt "
                              f"({type(exc).__name__}: {exc})") from exc
