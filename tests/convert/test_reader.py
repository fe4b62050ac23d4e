"""The torch-free checkpoint reader, against files written by real PyTorch and against hostile files."""
import argparse
import os
import pickle
import tracemalloc
import zipfile

import numpy as np
import pytest
from safetensors.numpy import save_file

from mindcv_ext.convert import CheckpointError, UnsafeCheckpointError, read_checkpoint
from tests.utils import TEST_DATA

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


class _RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _hostile_zip(path, marker):
    payload = pickle.dumps({"state_dict": {"w": _RunsACommand(marker)}}, protocol=2)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/version", "3\n")


def _hostile_legacy(path, marker):
    with open(path, "wb") as stream:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(header, stream, protocol=2)
        pickle.dump({"w": _RunsACommand(marker)}, stream, protocol=2)


@pytest.mark.parametrize("writer", [_hostile_zip, _hostile_legacy])
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


def _tensor_pickle(offset, size, stride, numel):
    storage = _tuple(_str("storage"), b"ctorch\nFloatStorage\n", _str("0"), _str("cpu"), _int(numel)) + b"Q"
    tensor = b"ctorch._utils\n_rebuild_tensor_v2\n" + _tuple(
        storage, _int(offset), _tuple(*map(_int, size)), _tuple(*map(_int, stride)), b"\x89", b"}") + b"R"
    return b"\x80\x02}" + _str("w") + tensor + b"s."


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
