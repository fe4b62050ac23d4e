"""Data-parallel training launched by msrun with two workers on CPU."""
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest

from tests.utils import REPO_ROOT

QUICKSTART = REPO_ROOT / "configs" / "quickstart" / "gmlp_monarch_digits.yaml"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_msrun_two_workers_on_cpu(tmp_path, dataset_cache):
    # msrun is installed next to the interpreter, which is on PATH only in an activated venv.
    msrun = shutil.which("msrun") or shutil.which("msrun", path=os.path.dirname(sys.executable))
    assert msrun, f"msrun comes with MindSpore; it should be on PATH or beside {sys.executable}"
    logs, ckpt = tmp_path / "msrun_log", tmp_path / "ckpt"
    command = [msrun, "--worker_num=2", "--local_worker_num=2", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", f"--log_dir={logs}", "--join=True", "--cluster_time_out=180",
               "python", str(REPO_ROOT / "train.py"), "-c", str(QUICKSTART), "--distribute", "True",
               "--model_kwargs", "{patch_size: 4, num_blocks: 2, embed_dim: 32}", "--epoch_size", "1",
               "--batch_size", "16", "--log_interval", "10", "--ckpt_save_dir", str(ckpt),
               # no random crop or flip, so an image's digest identifies the sample
               "--scale", "1.0,1.0", "--ratio", "1.0,1.0", "--data_digest", "True"]
    # As an OpenI task (MOUNT mode, the real c2net): the output folder is tmp_path, and rank 0 alone uploads.
    env = dict(os.environ, DATA_DOWNLOAD_METHOD="MOUNT", LOCAL_CODE_PATH=str(tmp_path / "code"),
               LOCAL_DATASET_PATH=str(tmp_path / "dataset"), LOCAL_PRETRAIN_MODEL_PATH=str(tmp_path / "pretrain"),
               LOCAL_OUTPUT_PATH=str(tmp_path),
               # msrun starts "python" from PATH: this interpreter's, also in a venv that is not activated
               PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    worker = {rank: (logs / f"worker_{rank}.log").read_text() for rank in (0, 1)}
    assert len(re.findall(r"OpenI: uploaded \S+ after", worker[0])) == 2 and "OpenI: uploaded" not in worker[1]

    checksums = {rank: re.search(rf"rank {rank}: final parameters sha256 (\w+)", text).group(1)
                 for rank, text in worker.items()}
    assert checksums[0] == checksums[1]  # the replicas stayed identical

    samples = {rank: set(re.search(rf"rank {rank}: data digest \d+ distinct samples: (\S+)", text).group(1).split(","))
               for rank, text in worker.items()}
    assert not samples[0] & samples[1]  # each rank read its own shard
    assert len(samples[0]) == len(samples[1]) == 720  # 1,442 training digits / 2 ranks, 45 full batches of 16
    assert "45 steps/epoch" in worker[0] and "global batch 32" in worker[0]

    assert "saved" in worker[0] and "saved" not in worker[1]
    assert sorted(os.listdir(ckpt)) == sorted([
        "gmlp_s16_224-1_45.ckpt", "gmlp_s16_224_best.ckpt", "checkpoints.json", "classes.json", "curves.png",
        "gmlp_s16_224.yaml", "results.csv", "train.log", ".lock"])
    assert "[rank 1]" not in (ckpt / "train.log").read_text()
    # Validation metrics are summed over both ranks' shards, so both report the same accuracy.
    top1 = {rank: re.search(r"val top-1 ([0-9.]+)%", text).group(1) for rank, text in worker.items()}
    assert top1[0] == top1[1]
