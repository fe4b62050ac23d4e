"""The torch-free checkpoint reader, against files written by real PyTorch and against hostile files."""
import argparse
import os
import pickle
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
