"""scripts/study.py: the twins trained end to end on tiny IDX files, summarised, plotted, and continued."""
import csv
import json

import numpy as np
import pytest

from mindcv_ext.data.idx import write_idx
from scripts import study

# embed_dim 64: about 0.5 M MACs per image dense and 0.2 M Monarch, apart in study.csv's macs_m (0.1 M steps).
TINY = ["--model_kwargs", "{patch_size: 7, num_blocks: 1, embed_dim: 64, mlp_ratio: 4}", "--batch_size", "16",
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


def _rows(path):
    with open(path) as stream:
        return list(csv.DictReader(stream))


def _checksum(run):
    return [line.split("sha256 ")[1] for line in (run / "train.log").read_text().splitlines() if "sha256" in line]


def test_a_study_with_fine_tuning_runs_summarises_and_resumes_after_a_kill(tmp_path, capsys, monkeypatch):
    """The twins, dense-to-Monarch fine-tuning from the dense run, the loop's efficiency; a real kill -9 in the
    fine-tuning's second epoch, and the study run again finishes it exactly as an uninterrupted run."""
    data = _fashion_files(tmp_path / "data")
    out = tmp_path / "study"
    # The Monarch twin trains as the dense one does (its summary rows are like the fine-tuned one's): left out here.
    command = ["--family", "gmlp", "--variants", "dense", "dense_to_monarch", "--seeds", "0", "--epochs", "2",
               "--finetune_epochs", "2", "--step_alone_steps", "2", "--out", str(out), "--", "--data_dir", str(data),
               *TINY]
    launch = study._python

    def kill_the_fine_tuning(script, argv, console):
        if script == "train.py" and study.FINE_TUNED in argv[argv.index("--ckpt_save_dir") + 1]:
            return launch("tests/kill_at.py", ["step", "2", "--", *argv], console)  # killed after 1.5 epochs
        return launch(script, argv, console)

    monkeypatch.setattr(study, "_python", kill_the_fine_tuning)
    assert study.main(command) == 2
    assert "training gmlp_dense_to_monarch seed 0 failed (exit -9)" in capsys.readouterr().err
    run = out / "gmlp_dense_to_monarch_seed0"
    assert [r["epoch"] for r in _rows(run / "results.csv")] == ["1"]
    killed_log = (run / "train.log").read_text()
    assert "2 dense layer(s) projected onto Monarch" in killed_log
    dense_log = (out / "gmlp_dense_seed0" / "train.log").read_text()

    monkeypatch.setattr(study, "_python", launch)
    assert study.main(command) == 0
    assert (out / "gmlp_dense_seed0" / "train.log").read_text() == dense_log  # finished: not trained again
    added = (run / "train.log").read_text()[len(killed_log):]
    assert "resuming from" in added and "Epoch 2/2" in added and "Epoch 1/2" not in added
    assert "projected" not in added  # the resumed run continues from its own checkpoint

    # The same fine-tuning, uninterrupted: the resumed run ends identically.
    reference = tmp_path / "reference"
    argv = study.train_arguments("gmlp", study.FINE_TUNED, 0, study.parse(command)[0], str(reference),
                                  command[command.index("--") + 1:])
    assert study._python("train.py", argv, str(tmp_path / "reference.log")) == 0
    resumed, uninterrupted = _rows(run / "results.csv"), _rows(reference / "results.csv")
    for key in ("epoch", "train_loss", "lr", "val_loss", "val_top1"):
        assert [r[key] for r in resumed] == [r[key] for r in uninterrupted]
    assert _checksum(run)[-1] == _checksum(reference)[-1]

    rows = {r["variant"]: r for r in _rows(out / "study.csv")}
    assert sorted(rows) == ["dense", "dense_to_monarch"]
    for row in rows.values():
        assert row["family"] == "gmlp" and row["seeds"] == "1" and row["epochs"] == "2"
        assert 0.0 <= float(row["top1_mean"]) <= 100.0 and float(row["train_time_s"]) > 0
        assert float(row["images_per_s"]) > 0 and int(row["params"]) > 0 and float(row["macs_m"]) > 0
    assert float(rows["dense"]["time_speedup_vs_dense"]) == 1.0 and float(rows["dense"]["top1_vs_dense"]) == 0.0
    fine_tuned, dense = rows["dense_to_monarch"], rows["dense"]
    assert int(fine_tuned["params"]) < int(dense["params"]) and float(fine_tuned["macs_m"]) < float(dense["macs_m"])
    assert abs(float(fine_tuned["total_time_s"]) - float(dense["train_time_s"]) -
               float(fine_tuned["train_time_s"])) < 0.2
    assert float(fine_tuned["time_speedup_vs_dense"]) < 1.0  # the dense run is part of its cost
    projection = json.loads((run / "projection.json").read_text())
    assert 0.05 < projection["projection_error"] < 1.0 and float(fine_tuned["projection_error"]) == \
        projection["projection_error"]
    assert 0.0 <= projection["top1_after_projection"] <= 100.0
    assert projection["dense_checkpoint"].endswith("gmlp_s16_224-2_8.ckpt")
    assert float(fine_tuned["top1_mean"]) == round(100 * float(resumed[-1]["val_top1"]), 2)

    epochs = _rows(out / "epochs.csv")
    assert [(e["variant"], e["epoch"]) for e in epochs] == [("dense", "1"), ("dense", "2"), ("dense_to_monarch", "1"),
                                                            ("dense_to_monarch", "2")]
    loop = {r["variant"]: r for r in _rows(out / "efficiency.csv")}
    assert sorted(loop) == ["dense"]  # the fine-tuned network's step is the Monarch twin's
    for row in loop.values():
        assert float(row["step_alone_images_per_s"]) > 0 and row["batch_size"] == "16"
        assert float(row["efficiency"]) == pytest.approx(float(row["epoch_images_per_s"]) /
                                                         float(row["step_alone_images_per_s"]), abs=1e-3)
    assert (out / "study.png").is_file() and (out / "curves.png").is_file()
    log = (out / "gmlp_dense_seed0" / "train.log").read_text().splitlines()
    assert len([line for line in log if "Epoch 1/2 done in" in line]) == 1  # train.py's own log, once
    printed = capsys.readouterr().out
    assert "| gmlp | dense | 1 | 2 |" in printed and "| gmlp | dense_to_monarch | 1 | 2 |" in printed

    # Summarised on its own, by a later study: the fine-tuned variant's cost still includes its dense run's.
    alone = command[:command.index("--variants") + 1] + ["dense_to_monarch"] + command[command.index("--seeds"):]
    assert study.main(alone) == 0
    (row,) = _rows(out / "study.csv")
    assert row["variant"] == "dense_to_monarch" and row["total_time_s"] == fine_tuned["total_time_s"]

    # The fine-tuned run's saved configuration evaluates its own checkpoints: to_monarch was a start-up step.
    evaluation = tmp_path / "evaluation.log"
    last = study.latest_checkpoint(str(run), "gmlp_s16_224")
    assert study._python("eval.py", ["--ckpt_path", last, "--data_dir", str(data)], str(evaluation)) == 0, \
        evaluation.read_text()[-3000:]
    assert study.last_json_line(str(evaluation))["top1"] == pytest.approx(float(resumed[-1]["val_top1"]), abs=1e-6)


def test_fine_tuning_waits_for_its_dense_run_and_seeds_are_per_variant(tmp_path, capsys):
    args, extra = study.parse(["--family", "mixer", "--seeds", "0", "1", "--variant_seeds", "pixelfly=0",
                               "dense_to_monarch=1", "--out", str(tmp_path)])
    assert study.study_plan(args) == [("mixer", "dense", 0), ("mixer", "monarch", 0), ("mixer", "pixelfly", 0),
                                      ("mixer", "dense", 1), ("mixer", "monarch", 1),
                                      ("mixer", "dense_to_monarch", 1)]
    assert study.finetune_epochs(args, "mixer", []) == 2  # 30% of the recipe's 9 epochs, rounded down
    # Arguments after -- shape the dense run, and so what its fine-tuning waits for and how long it lasts.
    assert study.dense_epochs(args, "mixer", ["--epoch_size", "20"]) == 20
    assert study.finetune_epochs(args, "mixer", ["--epoch_size", "20"]) == 6
    code = study.main(["--family", "gmlp", "--variants", "dense_to_monarch", "--seeds", "0", "--out",
                       str(tmp_path / "study")])
    err = capsys.readouterr().err
    assert code == 2 and "train the dense twin of seed 0 first (--variants dense)" in err
    with pytest.raises(SystemExit):
        study.parse(["--variant_seeds", "sparse=0"])
    assert "unknown variant 'sparse'; choose from dense, monarch, pixelfly" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study.parse(["--variant_seeds", "monarch"])
    assert "expected VARIANT=SEED[,SEED...], got 'monarch'" in capsys.readouterr().err
    # A registered layer without a recipe of its own trains the dense twin's, with its mlp_layer.
    assert study.recipe_argv("gmlp", "ssl") == ["-c", study.config_path("gmlp", "dense"), "--mlp_layer", "ssl"]
    assert study.recipe_argv("gmlp", "monarch") == ["-c", study.config_path("gmlp", "monarch")]
    args, _ = study.parse(["--family", "mixer", "--variants", "ssl", "dense_to_monarch", "dense", "--seeds", "0"])
    assert [variant for _, variant, _ in study.study_plan(args)] == ["dense", "dense_to_monarch", "ssl"]


def test_a_failed_run_says_how_to_continue(tmp_path, capsys):
    code = study.main(["--family", "gmlp", "--variants", "dense", "--seeds", "0", "--epochs", "1", "--out",
                       str(tmp_path / "study"), "--", "--data_dir", str(tmp_path / "missing"), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "training gmlp_dense seed 0 failed (exit 2)" in err
    assert "Run the same command again to continue the study" in err
    console = tmp_path / "study" / "gmlp_dense_seed0" / "console.log"
    assert str(console) in err and "apt-get install dataset-fashion-mnist" in console.read_text()
