"""scripts/study.py: the twins trained end to end on tiny IDX files, summarised, plotted, and continued."""
import csv

import numpy as np

from mindcv_ext.data.idx import write_idx
from scripts import study

TINY = ["--model_kwargs", "{patch_size: 7, num_blocks: 1, embed_dim: 32, mlp_ratio: 4}", "--batch_size", "16",
        "--num_parallel_workers", "1", "--log_interval", "1"]


def _fashion_files(folder):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 64), ("t10k", 32)):
        labels = rng.integers(0, 10, count).astype(np.uint8)
        images = rng.integers(0, 64, (count, 28, 28)).astype(np.uint8)
        images[np.arange(count), labels * 2, :] = 255  # a learnable stripe per class
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


def test_a_study_runs_summarises_and_continues_after_a_kill(tmp_path, capsys):
    data = _fashion_files(tmp_path / "data")
    out = tmp_path / "study"
    command = ["--family", "gmlp", "--seeds", "0", "--epochs", "2", "--out", str(out), "--", "--data_dir", str(data),
               *TINY]
    assert study.main(command) == 0
    with open(out / "study.csv") as stream:
        rows = {r["variant"]: r for r in csv.DictReader(stream)}
    assert sorted(rows) == ["dense", "monarch"]
    for row in rows.values():
        assert row["family"] == "gmlp" and row["seeds"] == "1" and row["epochs"] == "2"
        assert 0.0 <= float(row["top1_mean"]) <= 100.0 and float(row["train_time_s"]) > 0
        assert float(row["images_per_s"]) > 0 and int(row["params"]) > 0 and float(row["macs_m"]) > 0
    assert float(rows["dense"]["time_speedup_vs_dense"]) == 1.0 and float(rows["dense"]["top1_vs_dense"]) == 0.0
    assert int(rows["monarch"]["params"]) < int(rows["dense"]["params"])
    assert (out / "study.png").is_file() and (out / "runs.csv").is_file()
    log = (out / "gmlp_dense_seed0" / "train.log").read_text().splitlines()
    assert len([line for line in log if "Epoch 1/2 done in" in line]) == 1  # train.py's own log, once
    assert "| gmlp | monarch | 1 | 2 |" in capsys.readouterr().out
    first = {r["variant"]: r["top1_mean"] for r in rows.values()}

    # As if the study had been killed after the Monarch run's epoch-1 checkpoint: its epoch 2 is gone.
    run = out / "gmlp_monarch_seed0"
    next(run.glob("gmlp_s16_224-2_*.ckpt")).unlink()
    lines = (run / "results.csv").read_text().splitlines(keepends=True)
    (run / "results.csv").write_text("".join(lines[:2]))  # the header and epoch 1
    logs = {variant: (out / f"gmlp_{variant}_seed0" / "train.log").read_text() for variant in ("dense", "monarch")}
    assert study.main(command) == 0
    assert (out / "gmlp_dense_seed0" / "train.log").read_text() == logs["dense"]  # finished: not trained again
    added = (run / "train.log").read_text()[len(logs["monarch"]):]
    assert "resum" in added.lower() and "Epoch 2/2" in added and "Epoch 1/2" not in added
    with open(run / "results.csv") as stream:
        assert [r["epoch"] for r in csv.DictReader(stream)] == ["1", "2"]
    with open(out / "study.csv") as stream:
        assert {r["variant"]: r["top1_mean"] for r in csv.DictReader(stream)} == first  # the resume is exact


def test_a_failed_run_says_how_to_continue(tmp_path, capsys):
    code = study.main(["--family", "gmlp", "--variants", "dense", "--seeds", "0", "--epochs", "1", "--out",
                       str(tmp_path / "study"), "--", "--data_dir", str(tmp_path / "missing"), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "training gmlp_dense seed 0 failed (exit 2)" in err
    assert "Run the same command again to continue the study" in err
    console = tmp_path / "study" / "gmlp_dense_seed0" / "console.log"
    assert str(console) in err and "apt-get install dataset-fashion-mnist" in console.read_text()
