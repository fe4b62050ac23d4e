"""The torch-free checkpoint reader, against files written by real PyTorch and against hostile files."""
import argparse
import collections
import inspect
import os
import pickle
import tracemalloc
import zipfile

import numpy as np
import pytest
from safetensors.numpy import save_file

from mindcv_ext.convert import CheckpointError, UnsafeCheckpointError, read_checkpoint
from tests.utils import TEST_DATA, RunsACommand, hostile_torch_zip

DATA = TEST_DATA / "convert"


@pytest.mark.parametrize("filename", ["zip_format.pth", "legacy_format.pth"])
def test_reads_what_pytorch_wrote(filename):
    """Both torch.save formats: dtypes incl. bfloat16, views sharing storage, offsets, scalars, empties."""
    obj = read_checkpoint(str(DATA / filename))
    expected = np.load(DATA / "expected.npz")
    assert obj["epoch"] == 7
    assert isinstance(obj["args"], argparse.Namespace) and obj["args"].lr == 0.1 and obj["args"].model == "toy"
    state = obj["state_dict"]
    assert list(state) == ["weight", "weight_t", "row", "half", "bf16", "long", "flags", "scalar", "empty"]
    for key in expected.files:
        assert state[key].shape == expected[key].shape, key
        assert state[key].dtype == expected[key].dtype, key
        np.testing.assert_array_equal(state[key], expected[key], err_msg=key)
    np.testing.assert_array_equal(state["weight_t"], state["weight"].T)


def test_reads_safetensors(tmp_path):
    arrays = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "a.bias": np.ones(2, np.float16)}
    save_file(arrays, str(tmp_path / "w.safetensors"))
    loaded = read_checkpoint(str(tmp_path / "w.safetensors"))
    assert set(loaded) == set(arrays)
    for key, value in arrays.items():
        np.testing.assert_array_equal(loaded[key], value)


def _hostile_legacy(path, marker):
    with open(path, "wb") as stream:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(header, stream, protocol=2)
        pickle.dump({"w": RunsACommand(marker)}, stream, protocol=2)


@pytest.mark.parametrize("writer", [hostile_torch_zip, _hostile_legacy])
def test_pickled_os_system_is_refused_and_never_runs(writer, tmp_path):
    marker = tmp_path / "the_command_ran"
    path = tmp_path / "model.pth"
    writer(path, marker)
    with pytest.raises(UnsafeCheckpointError) as info:
        read_checkpoint(str(path))
    message = str(info.value)
    assert f"{os.system.__module__}.system" in message  # 'posix.system' on Linux
    assert "Nothing from the file was executed" in message
    assert not marker.exists()


def test_refuses_other_callables(tmp_path):
    path = tmp_path / "eval.pth"
    payload = b"\x80\x02cbuiltins\neval\nq\x00X\x06\x00\x00\x001 + 1q\x01\x85q\x02Rq\x03."
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
    with pytest.raises(UnsafeCheckpointError, match="builtins.eval"):
        read_checkpoint(str(path))


def test_truncated_and_corrupt_files_name_the_file(tmp_path):
    source = (DATA / "zip_format.pth").read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(source[: len(source) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pth.*truncated or corrupt"):
        read_checkpoint(str(truncated))
    legacy = (DATA / "legacy_format.pth").read_bytes()
    cut = tmp_path / "cut_legacy.pth"
    cut.write_bytes(legacy[:-40])
    with pytest.raises(CheckpointError, match=r"cut_legacy\.pth.*truncated"):
        read_checkpoint(str(cut))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        read_checkpoint(str(garbage))
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        read_checkpoint(str(tmp_path / "nowhere.pth"))


# Hostile files built opcode by opcode (protocol 2, as torch.save writes): a tensor is
# torch._utils._rebuild_tensor_v2(<persistent storage id>, offset, size, stride, requires_grad, hooks).
def _int(n):
    encoded = pickle.encode_long(n)
    return b"\x8a" + bytes([len(encoded)]) + encoded


def _str(text):
    return b"X" + len(text.encode()).to_bytes(4, "little") + text.encode()


def _tuple(*items):
    return b"(" + b"".join(items) + b"t"


def _tensor(offset, size, stride, numel):
    storage = _tuple(_str("storage"), b"ctorch\nFloatStorage\n", _str("0"), _str("cpu"), _int(numel)) + b"Q"
    return b"ctorch._utils\n_rebuild_tensor_v2\n" + _tuple(
        storage, _int(offset), _tuple(*map(_int, size)), _tuple(*map(_int, stride)), b"\x89", b"}") + b"R"


def _tensor_pickle(offset, size, stride, numel):
    return b"\x80\x02}" + _str("w") + _tensor(offset, size, stride, numel) + b"s."


def _zip_checkpoint(path, payload, storage=None):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        if storage is not None:
            archive.writestr("archive/data/0", storage)
        archive.writestr("archive/version", "3\n")
    return str(path)


def test_crafted_tensor_layout_is_read_as_pytorch_would(tmp_path):
    """The builder above is right: a plain layout reads back, transposed strides included."""
    values = np.arange(12, dtype=np.float32)
    path = _zip_checkpoint(tmp_path / "ok.pth", _tensor_pickle(2, (2, 3), (1, 2), 12), values.tobytes())
    np.testing.assert_array_equal(read_checkpoint(path)["w"], values[2:8].reshape(3, 2).T)


@pytest.mark.parametrize("offset,size,stride,culprit", [
    (-8, (8,), (1,), "invalid layout (offset -8"),
    (15, (16,), (-1,), "invalid layout (offset 15, shape (16,), strides (-1,))"),
    (0, (4, -2), (1, 1), "invalid layout"),
    (10, (8,), (1,), "reaches past its storage (16 elements)"),
])
def test_tensor_layout_outside_its_storage_is_refused(offset, size, stride, culprit, tmp_path):
    """Before: a negative offset or stride passed the bounds check and read memory past the storage (a SIGSEGV
    in eval.py, random values in a converted .ckpt)."""
    path = _zip_checkpoint(tmp_path / "outside.pth", _tensor_pickle(offset, size, stride, 16), bytes(64))
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    assert culprit in str(info.value) and "outside.pth" in str(info.value)


def test_converter_refuses_a_crafted_layout_and_writes_nothing(tmp_path, capsys):
    from scripts.convert_checkpoint import main as convert_main

    path = _zip_checkpoint(tmp_path / "crafted.pth", _tensor_pickle(-8, (8,), (1,), 16), bytes(64))
    dst = tmp_path / "out.ckpt"
    assert convert_main(["--model", "gmlp_s16_224", "--src", path, "--dst", str(dst)]) == 2
    err = capsys.readouterr().err
    assert "crafted.pth" in err and "invalid layout (offset -8" in err and not dst.exists()


class _PeakMemory:
    """Peak bytes allocated inside the block (tracemalloc: Python objects and NumPy arrays), in MB. A process-wide
    high-water mark would hide an allocation below an earlier test's peak."""

    def __enter__(self):
        tracemalloc.start()
        return self

    def __exit__(self, *exc):
        self.mb = tracemalloc.get_traced_memory()[1] / 2 ** 20
        tracemalloc.stop()


def test_tiny_files_cannot_claim_huge_tensors(tmp_path):
    """Before: 662 bytes with a zero stride claiming 3e9 elements asked for 11 GiB, and a legacy header claiming
    1e12 elements ended in a MemoryError. Now both are refused by their size, without allocating."""
    zero_stride = _zip_checkpoint(tmp_path / "zero_stride.pth", _tensor_pickle(0, (3_000_000_000,), (0,), 1),
                                  bytes(4))
    with _PeakMemory() as memory, pytest.raises(CheckpointError, match=r"zero_stride\.pth.*would take "
                                                                       r"12,000,000,000 bytes, more than"):
        read_checkpoint(zero_stride)
    assert memory.mb < 50
    legacy = tmp_path / "huge_header.pth"
    with open(legacy, "wb") as stream:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(header, stream, protocol=2)
        stream.write(_tensor_pickle(0, (4,), (1,), 4))
        pickle.dump(["0"], stream, protocol=2)
        stream.write((10 ** 12).to_bytes(8, "little"))
    with _PeakMemory() as memory, pytest.raises(CheckpointError, match=r"huge_header\.pth': storage 0 declares "
                                                                       r"1,000,000,000,000 elements"):
        read_checkpoint(str(legacy))
    assert memory.mb < 50


def test_storage_is_never_inflated_past_what_the_pickle_declares(tmp_path):
    """A 2 MB deflated entry that would inflate to 1 GiB: only the 16 declared floats are read."""
    path = tmp_path / "bomb.pth"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", _tensor_pickle(0, (16,), (1,), 16))
        with archive.open("archive/data/0", "w", force_zip64=True) as entry:
            chunk = bytes(1 << 20)
            for _ in range(1024):
                entry.write(chunk)
    with _PeakMemory() as memory:
        np.testing.assert_array_equal(read_checkpoint(str(path))["w"], np.zeros(16, np.float32))
    assert memory.mb < 50


def test_shared_references_and_deep_nesting(tmp_path):
    """Before: a 1 KB pickle sharing one list 2^40 ways passed 8 GB, and 10^6 nested lists ended in an uncaught
    RecursionError. Now shared objects stay shared, and nesting is capped with a clear error."""
    shared = [0.5]
    for _ in range(40):
        shared = [shared, shared]
    path = _zip_checkpoint(tmp_path / "shared.pth", pickle.dumps({"w": shared}, protocol=2))
    assert os.path.getsize(path) < 2048
    with _PeakMemory() as memory:
        loaded = read_checkpoint(path)["w"]
    assert loaded[0] is loaded[1] and memory.mb < 50
    depth = 1_000_000
    nested = _zip_checkpoint(tmp_path / "nested.pth", b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b".")
    with pytest.raises(CheckpointError, match=r"nested\.pth' nests containers more than 200 deep"):
        read_checkpoint(nested)


def test_protocol_2_sets_are_allowed(tmp_path):
    """Before: a set in a checkpoint's args, pickled with protocol 2, was refused as '__builtin__.set'."""
    payload = pickle.dumps({"args": {"tags": {"a", "b"}}, "epoch": 3}, protocol=2)
    assert b"__builtin__" in payload
    loaded = read_checkpoint(_zip_checkpoint(tmp_path / "sets.pth", payload))
    assert loaded["args"]["tags"] == {"a", "b"} and loaded["epoch"] == 3


@pytest.mark.parametrize("content", [b"", b"\x13\x07random bytes" * 10, b"truncated"], ids=["empty", "random", "cut"])
def test_bad_safetensors_name_the_file(content, tmp_path):
    """Before: SafetensorError: Error while deserializing header: header too small, without the file's name."""
    path = tmp_path / "weights.safetensors"
    if content == b"truncated":
        save_file({"w": np.ones((64, 64), np.float32)}, str(path))
        content = path.read_bytes()[:200]
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"cannot read '.*weights\.safetensors' as safetensors: the file is "
                                              r"truncated or corrupt"):
        read_checkpoint(str(path))


# Issue 29: the unpickler answers allowed globals with objects that outlive the file (storage types, functions,
# classes), and a pickle can change objects: BUILD sets attributes, SETITEM(S)/APPEND(S)/ADDITEMS fill containers.
# Before: a 1 KB file BUILT a uint8 dtype onto torch.FloatStorage; its own tensor and every valid file read after it
# in the process came out as uint8 zeros, with no error. Now those opcodes act only on what the load created.
_TRUE_FLOATS = np.array([1.5, -2.0, 3.25, 1e-3], np.float32)
_U1 = b"cnumpy\ndtype\n" + _tuple(_str("u1"), b"\x89", b"\x88") + b"R"  # numpy.dtype('u1', False, True)
_NAMESPACE = b"cargparse\nNamespace\n)\x81"  # argparse.Namespace.__new__(Namespace), as protocol 2 writes it
_ORDERED_DICT = b"ccollections\nOrderedDict\n)R"  # OrderedDict()


def _dict_of(**items):
    return b"}(" + b"".join(_str(key) + value for key, value in items.items()) + pickle.SETITEMS


def _body(obj):
    """``obj`` as protocol-2 opcodes to splice into a hand-built pickle: pickle.dumps without PROTO and STOP (its
    BINGETs only read its own BINPUTs, so bodies can be spliced side by side)."""
    return pickle.dumps(obj, protocol=2)[2:-1]


def _with_tensor(value):
    """A checkpoint ``{"x": value, "w": <4 float32 from storage 0>}``."""
    return b"\x80\x02}" + _str("x") + value + b"s" + _str("w") + _tensor(0, (4,), (1,), 4) + b"s."


def _legacy_checkpoint(path, payload, storage):
    with open(path, "wb") as stream:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(header, stream, protocol=2)
        stream.write(payload)
        pickle.dump(["0"], stream, protocol=2)
        stream.write((len(storage) // 4).to_bytes(8, "little") + storage)
    return str(path)


def _assert_a_valid_file_reads_right(tmp_path):
    path = _zip_checkpoint(tmp_path / "valid.pth", _tensor_pickle(0, (4,), (1,), 4), _TRUE_FLOATS.tobytes())
    loaded = read_checkpoint(path)["w"]
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, _TRUE_FLOATS)


@pytest.mark.parametrize("writer", [_zip_checkpoint, _legacy_checkpoint], ids=["zip", "legacy"])
def test_build_on_a_storage_type_is_refused_and_later_files_read_right(writer, tmp_path):
    """The file of the issue: before, it read as uint8 zeros and so did the valid file read after it."""
    poison = b"ctorch\nFloatStorage\n" + _dict_of(dtype=_U1) + pickle.BUILD
    path = writer(tmp_path / "poison.pth", _with_tensor(poison), bytes(16))
    assert os.path.getsize(path) < 1024
    try:
        read_checkpoint(path)
        message = "loaded"
    except UnsafeCheckpointError as exc:
        message = str(exc)
    _assert_a_valid_file_reads_right(tmp_path)  # before: 16 uint8 zeros, no error
    assert "poison.pth" in message and "applies BUILD to the global 'torch.FloatStorage'" in message, message
    assert "Nothing was changed" in message


# Each: the value of "x" in _with_tensor, and what the refusal must name.
_HOSTILE = {
    # slot state is applied with setattr: torch.Size() would answer (9, 9) in every later file
    "size_defaults": (b"ctorch\nSize\n" + _tuple(b"N", _dict_of(__defaults__=_tuple(_tuple(_int(9), _int(9)))))
                      + pickle.BUILD, "applies BUILD to the global 'torch.Size'"),
    # every Namespace of the process would gain the attribute
    "namespace_class": (b"cargparse\nNamespace\n" + _tuple(b"N", _dict_of(epochs=_int(999))) + pickle.BUILD,
                        "applies BUILD to the global 'argparse.Namespace'"),
    # an allowed call that hands back its argument: the result is still not the load's own
    "storage_via_rebuild_parameter": (b"ctorch._utils\n_rebuild_parameter\n" + _tuple(b"ctorch\nFloatStorage\n")
                                      + b"R" + _dict_of(dtype=_U1) + pickle.BUILD,
                                      "applies BUILD to the global 'torch.FloatStorage'"),
    "setitems_on_storage_type": (b"ctorch\nFloatStorage\n(" + _str("dtype") + _U1 + pickle.SETITEMS,
                                 "applies SETITEMS to the global 'torch.FloatStorage'"),
    "appends_on_ordereddict_class": (b"ccollections\nOrderedDict\n(" + _int(1) + pickle.APPENDS,
                                     "applies APPENDS to the global 'collections.OrderedDict'"),
    "additems_on_set_class": (b"c__builtin__\nset\n(" + _int(1) + pickle.ADDITEMS,
                              "applies ADDITEMS to the global 'builtins.set'"),
    # a tensor re-laid out after it was made: before, x silently read 2 of w's floats
    "build_on_tensor": (_tensor(0, (4,), (1,), 4) + _dict_of(size=_tuple(_int(2)), offset=_int(2)) + pickle.BUILD,
                        "applies BUILD to a tensor"),
    "setitem_on_tensor": (_tensor(0, (4,), (1,), 4) + _str("offset") + _int(2) + pickle.SETITEM,
                          "applies SETITEM to a tensor"),
    # numpy's C __setstate__ fed by the file: a dict where it wants its tuple, a subarray dtype
    "numpy_dtype_dict_state": (_U1 + _dict_of(byteorder=_str(">")) + pickle.BUILD,
                               "applies BUILD to numpy.dtype('u1') with a dict as state"),
    "numpy_dtype_subarray": (b"cnumpy\ndtype\n" + _tuple(_str("f8"), b"\x89", b"\x88") + b"R"
                             + _tuple(_int(3), _str("<"), _tuple(_U1, _tuple(_int(8))), b"N", b"N", _int(-1),
                                      _int(-1), _int(0)) + pickle.BUILD,
                             "applies BUILD to numpy.dtype('f8') with a tuple as state"),
    # an object dtype: numpy's scalar() hands back whatever object follows
    "numpy_object_scalar": (b"cnumpy.core.multiarray\nscalar\n" + _tuple(
        b"cnumpy\ndtype\n" + _tuple(_str("O8"), b"\x89", b"\x88") + b"R", _str("anything")) + b"R",
        "asks for numpy.dtype('O8', align=False, copy=True)"),
}


@pytest.mark.parametrize("name", list(_HOSTILE))
def test_changing_what_the_reader_did_not_create_is_refused(name, tmp_path):
    value, culprit = _HOSTILE[name]
    path = _zip_checkpoint(tmp_path / f"{name}.pth", _with_tensor(value), _TRUE_FLOATS.tobytes())
    with pytest.raises(UnsafeCheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert f"{name}.pth" in message and culprit in message, message
    assert "Nothing was changed" in message or "Nothing from the file was executed" in message
    _assert_a_valid_file_reads_right(tmp_path)


def _shared_state():
    """What a file could reach that outlives it: the reader's functions, classes and module-level tables (before:
    the one table of answers, storage types included), argparse.Namespace, NumPy's builtin dtypes."""
    from mindcv_ext.convert import reader

    state = {"Namespace": dict(vars(argparse.Namespace)), "_STORAGE_DTYPES": dict(reader._STORAGE_DTYPES)}
    for code in ("float32", "float64", "uint8", "int64", "bool"):
        dtype = np.dtype(code)
        state[code] = (dtype.str, dtype.byteorder, dtype.isnative, dtype.metadata, dtype.flags, dtype.shape)
    for name, obj in vars(reader).items():
        if inspect.isfunction(obj):
            state[name] = (obj.__defaults__, obj.__kwdefaults__, dict(vars(obj)))
        elif inspect.isclass(obj) and obj.__module__ == reader.__name__:
            state[name] = dict(vars(obj))
        elif isinstance(obj, dict):
            state[name] = {key: (value, dict(getattr(value, "__dict__", {}))) for key, value in obj.items()}
    return state


def test_hostile_files_change_nothing_a_later_file_sees(tmp_path):
    from mindcv_ext.convert.reader import _torch_size

    before = _shared_state()
    outcomes = {}
    for name, (value, _) in _HOSTILE.items():
        path = _zip_checkpoint(tmp_path / f"{name}.pth", _with_tensor(value), _TRUE_FLOATS.tobytes())
        try:
            read_checkpoint(path)
            outcomes[name] = "loaded"
        except UnsafeCheckpointError:
            outcomes[name] = "refused"
        except Exception as exc:  # noqa: BLE001 (before, numpy's dtype.__setstate__ raised SystemError)
            outcomes[name] = type(exc).__name__
    assert _shared_state() == before
    assert _torch_size() == () and not hasattr(argparse.Namespace, "epochs")
    assert set(outcomes.values()) == {"refused"}, outcomes
    _assert_a_valid_file_reads_right(tmp_path)


@pytest.mark.parametrize("value,error,culprit", [
    (_NAMESPACE + _dict_of(__class__=b"ccollections\nOrderedDict\n") + pickle.BUILD, UnsafeCheckpointError,
     "applies BUILD to a Namespace setting '__class__'"),
    (_NAMESPACE + _tuple(b"N", _dict_of(lr=_int(1))) + pickle.BUILD, UnsafeCheckpointError,
     "applies BUILD with slot state (attributes set through setattr) to a Namespace"),
    (_ORDERED_DICT + _dict_of(items=_int(1)) + pickle.BUILD, UnsafeCheckpointError,
     "applies BUILD to a OrderedDict setting 'items'"),
    (_NAMESPACE + b"}" + _int(1) + _int(2) + b"s" + pickle.BUILD, UnsafeCheckpointError,
     "applies BUILD to a Namespace setting 1"),
    (_NAMESPACE + _str("lr") + pickle.BUILD, UnsafeCheckpointError,
     "applies BUILD to a Namespace with a str as state"),
    (b"}" + _dict_of(a=_int(1)) + pickle.BUILD, CheckpointError, "applies BUILD to a dict; BUILD works on"),
    (b"]" + _dict_of(a=_int(1)) + pickle.BUILD, CheckpointError, "applies BUILD to a list; BUILD works on"),
    (_NAMESPACE + _str("k") + _int(1) + pickle.SETITEM, CheckpointError, "applies SETITEM to a Namespace; SETITEM"),
], ids=["dunder_name", "slot_state", "shadows_a_method", "non_str_name", "str_state", "build_on_dict",
        "build_on_list", "setitem_on_namespace"])
def test_build_states_checkpoints_never_write_are_refused(value, error, culprit, tmp_path):
    """On the load's own objects too, BUILD takes a dict of plain attribute names for an OrderedDict or Namespace;
    before, a Namespace could have its __class__ or any attribute set, and BUILD on a dict said 'AttributeError'."""
    path = _zip_checkpoint(tmp_path / "state.pth", _with_tensor(value), _TRUE_FLOATS.tobytes())
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    assert type(info.value) is error and culprit in str(info.value) and "state.pth" in str(info.value), info.value


def test_extension_registry_codes_are_refused(tmp_path):
    """EXT1 names a global through copyreg's registry, whose answers are cached process-wide."""
    path = _zip_checkpoint(tmp_path / "ext.pth", b"\x80\x02" + pickle.EXT1 + b"\x01.")
    with pytest.raises(UnsafeCheckpointError, match=r"ext\.pth.*extension registry"):
        read_checkpoint(path)


def test_what_real_checkpoints_build_still_loads(tmp_path):
    """What torch.save writes and the reader must still build: a state_dict's _metadata (BUILD on its OrderedDict),
    training args (NEWOBJ Namespace + BUILD), timm's metrics (NumPy scalars: numpy.dtype + BUILD of its byte order +
    scalar, raw bytes through protocol 2's _codecs.encode), bytes, nested dicts, lists and sets."""
    metadata = collections.OrderedDict([("", {"version": 1}), ("fc", {"version": 2})])
    extra = {"args": argparse.Namespace(lr=0.1, model="toy", tags={"a"}), "best_metric": np.float64(81.25),
             "top5": np.float32(97.5), "ema": np.bool_(True), "step": np.int64(-3), "blob": b"\x00\xffraw",
             "history": [{"epoch": 1, "loss": [0.5, 0.25]}, {"epoch": 2, "loss": []}], "classes": {"cat", "dog"}}
    state_dict = (_ORDERED_DICT + b"(" + _str("fc.weight") + _tensor(0, (2, 2), (2, 1), 4) + pickle.SETITEMS
                  + _dict_of(_metadata=_body(metadata)) + pickle.BUILD)
    payload = b"\x80\x02}(" + _str("state_dict") + state_dict + _str("extra") + _body(extra) + b"u."
    assert b"_codecs\nencode" in payload and b"numpy.core.multiarray\nscalar" in payload
    loaded = read_checkpoint(_zip_checkpoint(tmp_path / "real.pth", payload, _TRUE_FLOATS.tobytes()))
    state = loaded["state_dict"]
    assert isinstance(state, collections.OrderedDict) and list(state) == ["fc.weight"]
    np.testing.assert_array_equal(state["fc.weight"], _TRUE_FLOATS.reshape(2, 2))
    assert isinstance(state._metadata, collections.OrderedDict) and state._metadata == metadata
    got = loaded["extra"]
    assert isinstance(got["args"], argparse.Namespace)
    assert vars(got["args"]) == {"lr": 0.1, "model": "toy", "tags": {"a"}}
    for key in ("best_metric", "top5", "ema", "step"):
        assert type(got[key]) is type(extra[key]) and got[key] == extra[key], key
    assert got["blob"] == b"\x00\xffraw" and got["history"] == extra["history"] and got["classes"] == {"cat", "dog"}


def _f8_scalar(order, raw, module=b"numpy._core.multiarray"):
    """numpy.<module>.scalar(numpy.dtype('f8') with byte order ``order``, raw), hand-built (SHORT_BINBYTES data)."""
    dtype = (b"cnumpy\ndtype\n" + _tuple(_str("f8"), b"\x89", b"\x88") + b"R"
             + _tuple(_int(3), _str(order), b"N", b"N", b"N", _int(-1), _int(-1), _int(0)) + pickle.BUILD)
    return b"c" + module + b"\nscalar\n" + _tuple(dtype, pickle.SHORT_BINBYTES + bytes([len(raw)]) + raw) + b"R"


def test_numpy_scalars_are_read_without_numpy_dtypes_in_reach(tmp_path):
    """NumPy 2's module name, a big-endian scalar, protocol 4 (raw data as bytes, no _codecs); the byte count must be
    the item size."""
    payload = (b"\x80\x02}(" + _str("big") + _f8_scalar(">", np.array([-0.75], ">f8").tobytes())
               + _str("little") + _f8_scalar("<", np.float64(2.5).tobytes(), b"numpy.core.multiarray") + b"u.")
    loaded = read_checkpoint(_zip_checkpoint(tmp_path / "scalars.pth", payload))
    assert type(loaded["big"]) is np.float64 and loaded["big"] == -0.75
    assert type(loaded["little"]) is np.float64 and loaded["little"] == 2.5
    protocol_4 = pickle.dumps({"m": np.float32(0.125), "n": np.uint16(65535), "c": np.complex64(1 - 2j)}, protocol=4)
    loaded = read_checkpoint(_zip_checkpoint(tmp_path / "protocol_4.pth", protocol_4))
    assert type(loaded["m"]) is np.float32 and loaded["m"] == 0.125
    assert type(loaded["n"]) is np.uint16 and loaded["n"] == 65535
    assert type(loaded["c"]) is np.complex64 and loaded["c"] == 1 - 2j
    short = b"\x80\x02}" + _str("m") + _f8_scalar("<", bytes(3)) + b"s."
    with pytest.raises(CheckpointError, match=r"short\.pth': a NumPy float64 scalar holds 3 bytes, not 8"):
        read_checkpoint(_zip_checkpoint(tmp_path / "short.pth", short))
    bad_order = b"\x80\x02}" + _str("m") + _f8_scalar("|", bytes(8)) + b"s."
    with pytest.raises(UnsafeCheckpointError, match=r"numpy.dtype\('f8'\) with a tuple with byte order '\|'"):
        read_checkpoint(_zip_checkpoint(tmp_path / "bad_order.pth", bad_order))
