"""Atomic writes, the sweep of temporary files, and the run lock."""
import errno
import os
import subprocess
import sys

import pytest

from mindcv_ext.engine.files import (RunDirectoryBusy, RunLock, atomic_write, is_storage_error,
                                     sweep_temporary_files, temporary_path)
from tests.utils import REPO_ROOT


def test_atomic_write_replaces_only_on_success(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_write(str(path)) as stream:
            stream.write("half of the new")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["results.csv"]
    with atomic_write(str(path)) as stream:
        stream.write("new\n")
    assert path.read_text() == "new\n" and os.listdir(tmp_path) == ["results.csv"]


def test_sweep_removes_the_temporary_names_of_every_writer_and_nothing_else(tmp_path):
    leftovers = [os.path.basename(temporary_path(str(tmp_path / "results.csv"))),
                 ".gmlp-3_12.ckpt.tmp-4242.ckpt",  # ours, killed before the rename
                 ".gmlp_best.ckpt.tmp-4242.tmp",  # MindSpore's own, on a full disk
                 "results.csv.tmp-77"]  # an earlier version's name
    kept = ["gmlp-3_12.ckpt", "results.csv", "train.log", ".lock", "notes.tmp-draft"]
    for name in leftovers + kept:
        (tmp_path / name).write_bytes(b"x")
    assert sorted(sweep_temporary_files(str(tmp_path))) == sorted(leftovers)
    assert sorted(os.listdir(tmp_path)) == sorted(kept)


def test_run_lock_is_exclusive_names_its_holder_and_dies_with_it(tmp_path):
    run = tmp_path / "run"
    assert not RunLock(str(run)).acquire(create=False) and not run.exists()  # a probe writes nothing
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from mindcv_ext.engine.files import RunLock; "
        "RunLock(sys.argv[2]).acquire(); print('locked', flush=True); time.sleep(60)"),
        str(REPO_ROOT), str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for create in (False, True):
            with pytest.raises(RunDirectoryBusy, match=rf"in use by a running training \(pid {holder.pid} on "):
                RunLock(str(run)).acquire(create=create)
    finally:
        holder.kill()
        holder.wait()
    lock = RunLock(str(run))
    assert lock.acquire(create=False)  # the kernel released the dead holder's lock
    assert f"pid {os.getpid()} " in (run / ".lock").read_text()
    lock.release()


def test_storage_errors_are_told_apart_from_bugs():
    assert is_storage_error(OSError(errno.ENOSPC, "No space left on device"))
    assert is_storage_error(OSError(errno.EROFS, "Read-only file system"))
    assert not is_storage_error(OSError(errno.EBADF, "Bad file descriptor"))
    assert not is_storage_error(ValueError("no"))
