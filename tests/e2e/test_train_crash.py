"""train.py under crashes, concurrent runs, data faults and failing storage: nothing lost, nothing silent.

Every run here is a real ``python train.py`` process; kills are real SIGKILLs (``tests/kill_at.py``).
"""
import csv
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

import mindspore as ms

from tests.utils import REPO_ROOT, run_script, write_jpeg_folder

QUICKSTART = REPO_ROOT / "configs" / "quickstart" / "gmlp_monarch_digits.yaml"
SHORT = ["-c", QUICKSTART, "--model_kwargs", "{patch_size: 4, num_blocks: 2, embed_dim: 32}", "--log_interval", 2,
         "--epoch_size", 5, "--num_samples", 128, "--batch_size", 32, "--keep_checkpoint_max", 10]
MODEL = "gmlp_s16_224"
TIMING = ("epoch_time_s", "images_per_s")  # wall-clock columns: no two runs agree on them


def _run(args, timeout=600):
    return run_script(args, timeout=timeout)


def _rows(directory):
    with open(os.path.join(directory, "results.csv"), newline="") as stream:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(stream)]


def _sha256(output):
    return re.search(r"final parameters sha256 ([0-9a-f]{64})", output).group(1)


def _epoch_checkpoints(directory):
    found = [(int(m.group(1)), name) for name in os.listdir(directory)
             for m in [re.match(rf"{MODEL}-(\d+)_\d+\.ckpt$", name)] if m]
    return [name for _, name in sorted(found)]


def _assert_same_checkpoint(resumed_path, uninterrupted_path):
    """Weights, optimizer moments and step counter, bit for bit."""
    resumed, uninterrupted = ms.load_checkpoint(str(resumed_path)), ms.load_checkpoint(str(uninterrupted_path))
    assert sorted(resumed) == sorted(uninterrupted)
    for name, value in uninterrupted.items():
        np.testing.assert_array_equal(resumed[name].asnumpy(), value.asnumpy(), err_msg=name)


def _temporary(directory):
    return [name for name in os.listdir(directory) if ".tmp" in name]


@pytest.mark.slow
def test_kill_at_four_moments_then_resume_matches_an_uninterrupted_run(tmp_path):
    """One run killed four times (mid-epoch, during a checkpoint write, just after a checkpoint's rename, during
    validation), each time resumed with the README's command from its newest checkpoint."""
    baseline = _run(["train.py"] + SHORT + ["--ckpt_save_dir", tmp_path / "baseline"])
    assert baseline.returncode == 0, baseline.stderr[-3000:]

    run = tmp_path / "run"
    common = SHORT + ["--ckpt_save_dir", run]
    kills = [("step", 2, ["gmlp_s16_224-1_4.ckpt"]),  # mid-epoch 2: epoch 1 is saved
             ("ckpt_write", 3, ["gmlp_s16_224-1_4.ckpt", "gmlp_s16_224-2_8.ckpt"]),
             ("ckpt_renamed", 3, ["gmlp_s16_224-1_4.ckpt", "gmlp_s16_224-2_8.ckpt", "gmlp_s16_224-3_12.ckpt"]),
             ("validation", 4, ["gmlp_s16_224-1_4.ckpt", "gmlp_s16_224-2_8.ckpt", "gmlp_s16_224-3_12.ckpt"])]
    resume = []
    for moment, epoch, saved in kills:
        killed = _run(["tests/kill_at.py", moment, epoch, "--"] + common + resume)
        assert killed.returncode == -signal.SIGKILL, (moment, killed.stderr[-3000:])
        assert _epoch_checkpoints(run) == saved, moment
        for name in saved:  # every file under a checkpoint's name is complete and passes its checksum
            assert ms.load_checkpoint(str(run / name), crc_check=True)
        if moment == "ckpt_write":
            leftover = _temporary(run)
            assert len(leftover) == 1 and re.fullmatch(r"\.gmlp_s16_224-3_12\.ckpt\.tmp-\d+\.ckpt", leftover[0])
        resume = ["--ckpt_path", run / saved[-1], "--resume_opt", "True"]
    final = _run(["train.py"] + common + resume)
    assert final.returncode == 0, final.stderr[-3000:]

    assert _rows(run) == _rows(tmp_path / "baseline")  # every epoch's row, once, with the same figures
    assert [row["epoch"] for row in _rows(run)] == ["1", "2", "3", "4", "5"]
    assert _sha256(final.stdout) == _sha256(baseline.stdout)
    _assert_same_checkpoint(run / f"{MODEL}-5_20.ckpt", tmp_path / "baseline" / f"{MODEL}-5_20.ckpt")
    assert not _temporary(run)
    log = (run / "train.log").read_text()
    assert "removed 1 temporary file(s) left by an interrupted run: .gmlp_s16_224-3_12.ckpt.tmp-" in log
    assert "replaying the data pipeline's first 3 epoch(s)" in final.stdout


@pytest.mark.slow
def test_a_sink_mode_run_killed_after_a_checkpoint_resumes_exactly(tmp_path):
    """Dataset sink mode (one sunk loop per epoch on the CPU): killed just after epoch 2's checkpoint got its name,
    resumed from it, the run ends with the uninterrupted sink-mode run's rows and parameters, bit for bit."""
    sink = SHORT + ["--dataset_sink_mode", "True", "--epoch_size", 3]
    baseline = _run(["train.py"] + sink + ["--ckpt_save_dir", tmp_path / "baseline"])
    assert baseline.returncode == 0, baseline.stderr[-3000:]

    run = tmp_path / "run"
    killed = _run(["tests/kill_at.py", "ckpt_renamed", 2, "--"] + sink + ["--ckpt_save_dir", run])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert _epoch_checkpoints(run) == ["gmlp_s16_224-1_4.ckpt", "gmlp_s16_224-2_8.ckpt"]
    final = _run(["train.py"] + sink + ["--ckpt_save_dir", run, "--ckpt_path", run / "gmlp_s16_224-2_8.ckpt",
                                        "--resume_opt", "True"])
    assert final.returncode == 0, final.stderr[-3000:]

    assert [row["epoch"] for row in _rows(run)] == ["1", "2", "3"]
    assert _rows(run) == _rows(tmp_path / "baseline")
    assert _sha256(final.stdout) == _sha256(baseline.stdout)
    _assert_same_checkpoint(run / f"{MODEL}-3_12.ckpt", tmp_path / "baseline" / f"{MODEL}-3_12.ckpt")


def test_a_second_run_into_a_busy_directory_exits_2_before_writing_anything(tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, str(REPO_ROOT / "train.py")] +
                             [str(a) for a in SHORT + ["--epoch_size", 40, "--ckpt_save_dir", run]],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in first.stdout:  # the first run has started writing
            if "Epoch 1/40, step" in line:
                break
        # Paused, the first run still holds its lock but writes nothing: every change is the second run's.
        first.send_signal(signal.SIGSTOP)
        before = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in run.iterdir()}
        second = _run(["train.py"] + SHORT + ["--epoch_size", 3, "--ckpt_save_dir", run])
        assert second.returncode == 2
        assert f"is in use by a running training (pid {first.pid} on " in second.stderr
        assert "wait for it to finish, or choose another --ckpt_save_dir" in second.stderr
        assert "Epoch 1/3" not in second.stdout  # it did not train
        assert {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in run.iterdir()} == before
    finally:
        first.kill()
        first.wait()
    assert (run / f"{MODEL}.yaml").read_text().count("epoch_size: 40") == 1  # the first run's settings, kept
    assert "epoch_size 3" not in (run / "train.log").read_text()  # nothing of the second run in the log


def _folder_dataset(root):
    return write_jpeg_folder(root, {"train": 8, "val": 4}, ("cat", "dog"), (32, 32), seed=0)


FOLDER = SHORT + ["--dataset", "folder", "--num_samples", 16, "--batch_size", 4, "--epoch_size", 2,
                  "--num_parallel_workers", 1, "--val_while_train", "True"]


def test_an_empty_class_folder_is_an_error_unless_allowed(tmp_path):
    data = _folder_dataset(tmp_path / "data")
    (data / "train" / "zebra").mkdir()
    refused = _run(["train.py"] + FOLDER + ["--data_dir", data, "--ckpt_save_dir", tmp_path / "refused"])
    assert refused.returncode == 2
    assert f"1 class folder(s) hold no images: {data / 'train' / 'zebra'}" in refused.stderr
    assert "--allow_empty_classes True" in refused.stderr
    assert not (tmp_path / "refused").exists()
    allowed = _run(["train.py"] + FOLDER + ["--data_dir", data, "--ckpt_save_dir", tmp_path / "allowed",
                                            "--allow_empty_classes", "True", "--epoch_size", 1, "--num_classes", 3])
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert "class folder(s) without images (allowed by --allow_empty_classes)" in allowed.stdout


def test_a_corrupt_validation_image_is_found_before_training(tmp_path):
    data = _folder_dataset(tmp_path / "data")
    truncated = data / "val" / "dog" / "001.JPEG"
    truncated.write_bytes(truncated.read_bytes()[:-400])  # header intact, scan data cut short
    garbage = data / "val" / "cat" / "002.JPEG"
    garbage.write_bytes(os.urandom(900))
    result = _run(["train.py"] + FOLDER + ["--data_dir", data, "--ckpt_save_dir", tmp_path / "run"])
    assert result.returncode == 2
    assert f"2 unreadable image(s) in {data / 'val'}" in result.stderr
    assert f"{truncated}: truncated JPEG" in result.stderr and f"{garbage}: UnidentifiedImageError" in result.stderr
    assert "Epoch 1/" not in result.stdout and not (tmp_path / "run").exists()  # no epoch was spent


def test_a_decode_failure_in_validation_saves_the_epoch_first_and_names_the_file(tmp_path):
    data = _folder_dataset(tmp_path / "data")
    garbage = data / "val" / "cat" / "002.JPEG"
    garbage.write_bytes(os.urandom(900))
    run = tmp_path / "run"
    result = _run(["train.py"] + FOLDER + ["--data_dir", data, "--ckpt_save_dir", run, "--check_images", "False"])
    assert result.returncode == 2
    assert f"1 unreadable image(s) in {data / 'val'}" in result.stderr and str(garbage) in result.stderr
    assert _epoch_checkpoints(run) == [f"{MODEL}-1_4.ckpt"]  # the trained epoch is kept, resumable
    state = ms.load_checkpoint(str(run / f"{MODEL}-1_4.ckpt"), crc_check=True)
    assert int(state["epoch_num"].asnumpy()) == 1 and "global_step" in state
    assert [(row["epoch"], row["val_top1"]) for row in _rows(run)] == [("1", "")]
    assert not _temporary(run)


@pytest.fixture
def small_disk(tmp_path):
    """A 600 KB file system: room for two epochs' checkpoints of the tiny model, not three."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("needs permission to mount a tmpfs (root in a container that allows it)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_or_read_only_disk_ends_with_exit_2_and_keeps_what_was_saved(small_disk):
    run = small_disk / "run"
    full = _run(["train.py"] + SHORT + ["--epoch_size", 4, "--ckpt_save_dir", run])
    assert full.returncode == 2, full.stderr[-3000:]
    assert "Traceback" not in full.stderr
    assert f"cannot write '{run / f'{MODEL}-3_12.ckpt'}': No space left on device" in full.stderr
    assert f"resume with --ckpt_path {run / f'{MODEL}-2_8.ckpt'} --resume_opt True" in full.stderr
    assert _epoch_checkpoints(run) == [f"{MODEL}-1_4.ckpt", f"{MODEL}-2_8.ckpt"] and not _temporary(run)
    for name in _epoch_checkpoints(run) + [f"{MODEL}_best.ckpt"]:
        assert ms.load_checkpoint(str(run / name), crc_check=True)
    assert [row["epoch"] for row in _rows(run)] == ["1", "2", "3"]  # epoch 3's row goes when it is resumed

    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    resumed = _run(["train.py"] + SHORT + ["--epoch_size", 4, "--ckpt_save_dir", run, "--ckpt_path",
                                           run / f"{MODEL}-2_8.ckpt", "--resume_opt", "True"])
    assert resumed.returncode == 2 and "Traceback" not in resumed.stderr
    assert f"cannot write '{run / '.lock'}': Read-only file system" in resumed.stderr
    fresh = _run(["train.py"] + SHORT + ["--ckpt_save_dir", small_disk / "other"])
    assert fresh.returncode == 2 and f"cannot write '{small_disk / 'other'}': Read-only file system" in fresh.stderr


def _links_and_folders(data, tmp_path):
    """The reported case, a sub-folder and a link to a folder outside the dataset in a class folder, beside a file
    named like an image that links outside."""
    dog = data / "train" / "dog"
    (dog / "sub").mkdir()
    outside = write_jpeg_folder(tmp_path / "elsewhere", {"more": 1}, ("x",), (32, 32), seed=1) / "more" / "x"
    (dog / "outside").symlink_to(outside)
    (dog / "far.JPEG").symlink_to(outside / "000.JPEG")
    return dog


def test_entries_the_pipeline_would_fail_on_are_refused_or_read_by_no_one(tmp_path):
    """One listing for the pre-epoch check and the pipeline: the sub-folder and the folder link (not named like
    images) are read by no one and training runs; the image link leaving the dataset is refused before epoch 1,
    with --check_images False too, unless --allow_outside_links True."""
    data = _folder_dataset(tmp_path / "data")
    dog = _links_and_folders(data, tmp_path)
    for check in ("True", "False"):
        refused = _run(["train.py"] + FOLDER + ["--data_dir", data, "--ckpt_save_dir", tmp_path / f"refused{check}",
                                                "--check_images", check])
        assert refused.returncode == 2, refused.stderr[-3000:]
        assert f"image {str(dog / 'far.JPEG')!r} is a link to" in refused.stderr
        assert "--allow_outside_links True" in refused.stderr and not (tmp_path / f"refused{check}").exists()
    run = tmp_path / "run"
    allowed = _run(["train.py"] + FOLDER + ["--data_dir", data, "--ckpt_save_dir", run, "--allow_outside_links",
                                            "True", "--epoch_size", 1, "--num_samples", 17])
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert f"2 entries in {data / 'train'} not named like images (no reader uses them)" in allowed.stdout
    assert _epoch_checkpoints(run) == [f"{MODEL}-1_4.ckpt"]
