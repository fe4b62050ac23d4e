"""OpenI tasks through the real c2net package: MOUNT mode, and MOXING mode with the moxing stand-in (tests/standins)."""
import json
import os
import re
import signal

import pytest

import mindspore as ms

from tests.utils import REPO_ROOT, run_script, write_jpeg_folder

pytest.importorskip("c2net", reason="c2net is in requirements-dev.txt")
QUICKSTART = REPO_ROOT / "configs" / "quickstart" / "gmlp_monarch_digits.yaml"
SHORT = ["-c", str(QUICKSTART), "--model_kwargs", "{patch_size: 4, num_blocks: 2, embed_dim: 32}",
         "--dataset", "folder", "--num_samples", "32", "--batch_size", "8", "--num_parallel_workers", "1",
         "--log_interval", "4"]
STANDINS = str(REPO_ROOT / "tests" / "standins")


def _task(tmp_path, method: str):
    """Environment variables as the platform sets them, with the task's folders under tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATA_DOWNLOAD", "LOCAL_", "DATASET_", "OUTPUT_"))}
    env.update(DATA_DOWNLOAD_METHOD=method, LOCAL_CODE_PATH=str(tmp_path / "code"),
               LOCAL_DATASET_PATH=str(tmp_path / "dataset"), LOCAL_PRETRAIN_MODEL_PATH=str(tmp_path / "pretrain"),
               LOCAL_OUTPUT_PATH=str(tmp_path / "output"), CODE_URL="", PRETRAIN_MODEL_URL="[]")
    return env


def _run(args, env, timeout=600):
    return run_script(args, env=env, timeout=timeout)


def _checkpoints(folder):
    return sorted(n for n in os.listdir(folder) if re.fullmatch(r"gmlp_s16_224-\d+_\d+\.ckpt", n))


def test_mount_mode_reads_the_task_folders_and_writes_to_its_output(tmp_path):
    env = _task(tmp_path, "MOUNT")
    write_jpeg_folder(tmp_path / "dataset" / "pets", {"train": 16, "val": 4}, ("cat", "dog"), (32, 32), seed=0)
    result = _run(["train.py"] + SHORT + ["--epoch_size", 2, "--val_while_train", "True"], env)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "output" / "ckpt" / "quickstart"  # the config's relative ckpt_save_dir, inside output_path
    assert _checkpoints(run) == ["gmlp_s16_224-1_4.ckpt", "gmlp_s16_224-2_8.ckpt"]
    assert f"OpenI: data_dir {tmp_path / 'dataset' / 'pets'}" in result.stdout
    assert len(re.findall(r"OpenI: uploaded .* after gmlp_s16_224-\d_\d\.ckpt", result.stdout)) == 2
    assert re.search(r"OpenI: uploaded .* after the end of the run", result.stdout)

    # Evaluation in a task: the weights come from the pretrained-model folder, named relative to it.
    os.makedirs(tmp_path / "pretrain", exist_ok=True)  # c2net made it, empty
    (tmp_path / "pretrain" / "best.ckpt").write_bytes((run / "gmlp_s16_224_best.ckpt").read_bytes())
    evaluated = _run(["eval.py"] + SHORT + ["--ckpt_path", "best.ckpt"], env)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert re.search(r"top-1 [\d.]+%.* on 8 images", evaluated.stdout)


def test_several_datasets_need_a_choice_and_off_means_off(tmp_path):
    env = _task(tmp_path, "MOUNT")
    for name in ("pets", "birds"):
        write_jpeg_folder(tmp_path / "dataset" / name, {"train": 4, "val": 2}, ("a", "b"), (32, 32), seed=0)
    result = _run(["train.py"] + SHORT + ["--epoch_size", 1], env)
    assert result.returncode == 2 and "c2net_context" in result.stdout  # c2net's prepare() says this
    assert "the task has 2 datasets in" in result.stderr
    assert "(birds, pets); choose one with --openi_dataset" in result.stderr
    result = _run(["train.py"] + SHORT + ["--epoch_size", 1, "--openi_dataset", "fish"], env)
    assert result.returncode == 2 and "--openi_dataset 'fish' is not among the task's datasets" in result.stderr
    result = _run(["train.py"] + SHORT + ["--openi", "off", "--data_dir", tmp_path / "nowhere"], env)
    assert result.returncode == 2 and "nowhere' does not exist" in result.stderr
    assert "c2net_context" not in result.stdout  # c2net's prepare() was not called (it prints this)


def test_moxing_mode_copies_in_and_a_killed_task_keeps_its_last_checkpoint(tmp_path):
    """The object storage is a local folder (the moxing stand-in); the task's copies live elsewhere."""
    storage = tmp_path / "obs"
    write_jpeg_folder(storage / "datasets" / "pets", {"train": 16, "val": 4}, ("cat", "dog"), (32, 32), seed=0)
    env = _task(tmp_path / "task", "MOXING")
    env.update(DATASET_URL=json.dumps([{"dataset_name": "pets", "dataset_url": str(storage / "datasets" / "pets")}]),
               OUTPUT_URL=str(storage / "output"), PYTHONPATH=os.pathsep.join([STANDINS, str(REPO_ROOT)]))
    killed = _run(["tests/kill_at.py", "step", 3, "--"] + SHORT + ["--epoch_size", 4], env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (tmp_path / "task" / "dataset" / "pets" / "train" / "cat").is_dir()  # copied in by c2net
    uploaded = storage / "output" / "ckpt" / "quickstart"
    assert _checkpoints(uploaded) == ["gmlp_s16_224-1_4.ckpt", "gmlp_s16_224-2_8.ckpt"]
    state = ms.load_checkpoint(str(uploaded / "gmlp_s16_224-2_8.ckpt"), crc_check=True)
    assert int(state["epoch_num"].asnumpy()) == 2
