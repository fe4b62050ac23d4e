"""DVT end to end: a tiny DVT trains under AMP O2 in graph mode, then eval.py reports its exits and early exit."""
import csv
import glob
import json
import os

import numpy as np
import pytest

import mindspore as ms

import eval as evaluation
import train
from tests.utils import REPO_ROOT, write_jpeg_folder

QUICKSTART = REPO_ROOT / "configs" / "quickstart" / "gmlp_monarch_digits.yaml"
TINY_DVT = ["--model", "dvt_t2t_vit_12", "--img_size", "64", "--image_resize", "64", "--mlp_layer", "None",
            "--nblocks", "None", "--model_kwargs", "{depth: 1, embed_dim: 32, num_heads: 2}"]


# The files of the training run written through mindcv_ext.engine.files.atomic_write, by name.
ATOMIC_WRITES = []


@pytest.fixture(scope="module")
def trained_dvt(tmp_path_factory):
    from mindcv_ext.engine import files

    directory = tmp_path_factory.mktemp("dvt_run")
    atomic_write = files.atomic_write
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(files, "atomic_write",
                      lambda path, *a, **k: ATOMIC_WRITES.append(os.path.basename(path)) or atomic_write(path, *a, **k))
        code = train.main(["-c", str(QUICKSTART), *TINY_DVT, "--amp_level", "O2", "--loss_scale_type", "dynamic",
                           "--epoch_size", "1", "--num_samples", "48", "--batch_size", "16", "--val_while_train",
                           "False", "--ckpt_save_dir", str(directory)])
    assert code == 0
    return directory


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Real JPEG files: a train split (to calibrate the exits) and a val split."""
    return write_jpeg_folder(tmp_path_factory.mktemp("folder"), {"train": 12, "val": 6}, ("n01440764", "n01443537"),
                             (72, 80), seed=3)


def test_tiny_dvt_trains_under_o2_in_graph_mode(trained_dvt, caplog):
    with open(trained_dvt / "results.csv", newline="") as stream:
        (row,) = list(csv.DictReader(stream))
    # Three exits' cross-entropies summed: about 3 * ln(10) at the start.
    assert 3.0 < float(row["train_loss"]) < 12.0
    saved = ms.load_checkpoint(glob.glob(str(trained_dvt / "dvt_t2t_vit_12-1_3.ckpt"))[0])
    for name in ("less_less_token.head.weight", "less_token.relation_reuse_conv.0.weight",
                 "normal_token.blocks.0.feature_resuse_mlp.1.fc1.weight"):
        assert saved[name].dtype == ms.float32 and np.isfinite(saved[name].asnumpy()).all()


def test_the_run_files_are_written_atomically(trained_dvt):
    assert {"classes.json", "dvt_t2t_vit_12.yaml"} <= set(ATOMIC_WRITES)
    assert json.loads((trained_dvt / "classes.json").read_text()) == [str(digit) for digit in range(10)]
    assert not [name for name in os.listdir(trained_dvt) if ".tmp" in name]


def _eval(trained_dvt, folder, *extra):
    return evaluation.main(["--dataset", "folder", "--data_dir", str(folder), *TINY_DVT, "--num_classes", "10",
                            "--calibration_samples", "16",
                            "--ckpt_path", str(trained_dvt / "dvt_t2t_vit_12-1_3.ckpt"), "--batch_size", "4",
                            *map(str, extra)])


def test_eval_prints_exits_and_dynamic_results_for_thresholds(trained_dvt, image_folder, capsys):
    assert _eval(trained_dvt, image_folder, "--exit_thresholds", "0.0 0.0 0.0") == 0
    out = capsys.readouterr().out
    results = json.loads(out.strip().splitlines()[-1])
    assert [line.strip().split(":")[0] for line in out.splitlines() if line.strip().startswith("exit ")] == \
        ["exit 0", "exit 1", "exit 2"]
    assert len(results["exits"]) == 3 and all(e["num_samples"] == 12 for e in results["exits"])
    # Threshold 0 at exit 0: every image leaves there, with exit 0's accuracy and cost.
    assert results["dynamic"]["exit_shares"] == [1.0, 0.0, 0.0]
    assert results["dynamic"]["accuracy"] == pytest.approx(100 * results["exits"][0]["top1"])
    assert results["dynamic"]["expected_macs"] == pytest.approx(results["exit_macs"][0])
    assert "dynamic: top-1" in out


def test_eval_finds_thresholds_for_a_budget_on_the_train_split(trained_dvt, image_folder, capsys):
    import mindcv_ext

    macs = mindcv_ext.create_model("dvt_t2t_vit_12", img_size=64, num_classes=10, depth=1, embed_dim=32,
                                   num_heads=2).exit_macs()
    budget = (macs[0] + macs[2]) / 2
    assert _eval(trained_dvt, image_folder, "--exit_budget", budget) == 0
    out = capsys.readouterr().out
    dynamic = json.loads(out.strip().splitlines()[-1])["dynamic"]
    assert dynamic["budget"] == pytest.approx(budget)
    assert dynamic["calibration"]["expected_macs"] <= budget + 1e-12
    assert f"dynamic (budget {budget:g} GMACs)" in out


def test_eval_budget_errors_name_the_problem(trained_dvt, image_folder, capsys):
    assert _eval(trained_dvt, image_folder, "--exit_thresholds", "0.5,0.5") == 2
    assert "--exit_thresholds needs 3 values" in capsys.readouterr().err
    assert _eval(trained_dvt, image_folder, "--exit_budget", "1", "--calibration_split", "val") == 2
    assert "must be held out" in capsys.readouterr().err
    assert os.path.isfile(trained_dvt / "dvt_t2t_vit_12-1_3.ckpt")  # nothing saved was touched
