"""train.py end to end: the quickstart, AMP O2 per family, every config's dry run, crash and resume, bad input."""
import csv
import glob
import os
import re

import numpy as np
import pytest
from PIL import Image

import mindspore as ms

import train
from mindcv_ext.engine.runtime import set_seed
from mindcv_ext.models import create_model
from tests.utils import REPO_ROOT, run_script

QUICKSTART = REPO_ROOT / "configs" / "quickstart" / "gmlp_monarch_digits.yaml"
TINY = ["-c", str(QUICKSTART), "--model_kwargs", "{patch_size: 4, num_blocks: 2, embed_dim: 32}", "--log_interval", "1"]


def _run(args, timeout=600):
    return run_script(args, timeout=timeout)


def _results(directory):
    with open(os.path.join(directory, "results.csv"), newline="") as stream:
        return list(csv.DictReader(stream))


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """The README's quickstart command (fewer epochs), run as users run it."""
    directory = tmp_path_factory.mktemp("quickstart")
    result = _run(["train.py", "-c", QUICKSTART, "--epoch_size", 5, "--ckpt_save_dir", directory])
    assert result.returncode == 0, result.stderr[-3000:]
    return directory, result


@pytest.mark.slow
def test_quickstart_trains_to_high_accuracy_and_writes_everything(quickstart):
    directory, result = quickstart
    files = set(os.listdir(directory))
    assert {"gmlp_s16_224_best.ckpt", "results.csv", "curves.png", "gmlp_s16_224.yaml", "classes.json",
            "train.log", "checkpoints.json"} <= files
    epochs = sorted(f for f in files if re.fullmatch(r"gmlp_s16_224-\d+_\d+\.ckpt", f))
    assert epochs == ["gmlp_s16_224-3_66.ckpt", "gmlp_s16_224-4_88.ckpt", "gmlp_s16_224-5_110.ckpt"]  # keep 3
    rows = _results(directory)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    assert max(float(r["val_top1"]) for r in rows) >= 0.90
    with Image.open(directory / "curves.png") as plot:
        assert plot.size[0] > 500
    step = re.search(r"Epoch 2/5, step 10/22, loss (\S+), lr (\S+), step time (\S+) ms, (\S+) img/s", result.stdout)
    assert step and float(step.group(1)) > 0 and float(step.group(3)) > 0 and float(step.group(4)) > 0
    assert "Exception ignored" not in result.stderr and "Traceback" not in result.stderr
    # On the CPU, train.py runs the accelerated network by default and says what it swapped, or why not.
    if os.environ.get("MINDCV_EXT_CPU_KERNELS", "1") == "0":
        assert "CPU kernels not used (MINDCV_EXT_CPU_KERNELS=0)" in result.stdout + result.stderr
    else:
        assert re.search(r"CPU kernels on: .*FastGatedMlp", result.stdout + result.stderr)


def _best_top1(directory):
    return max(float(r["val_top1"]) for r in _results(directory))


@pytest.mark.slow
def test_eval_reproduces_the_best_checkpoint_accuracy(quickstart):
    directory, _ = quickstart
    result = _run(["eval.py", "-c", QUICKSTART, "--ckpt_path", directory / "gmlp_s16_224_best.ckpt"])
    assert result.returncode == 0, result.stderr[-2000:]
    top1 = float(re.search(r'"top1": ([0-9.]+)', result.stdout).group(1))
    assert abs(top1 - _best_top1(directory)) < 1e-6
    assert "top-5" in result.stdout and "on 355 images" in result.stdout
    # On the scale --mean/--std take: gMLP's (0.5, 0.5, 0.5) statistics times 255.
    assert "mean [127.5, 127.5, 127.5], std [127.5, 127.5, 127.5] (0-255 scale" in result.stdout


def test_eval_refuses_early_exit_settings_for_a_single_exit_model(quickstart, capsys):
    import eval as evaluation

    directory, _ = quickstart
    code = evaluation.main(["-c", str(QUICKSTART), "--ckpt_path", str(directory / "gmlp_s16_224_best.ckpt"),
                            "--exit_budget", "1.5"])
    assert code == 2 and "gmlp_s16_224 has a single exit" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_real_labels_follow_file_name_order(quickstart, dataset_cache, tmp_path):
    """ReaL lists are indexed by file name across class folders; a wrong order would score the wrong images."""
    import json

    directory, _ = quickstart
    val = glob.glob(str(dataset_cache / "digits_*" / "val"))[0]
    files = sorted((name, int(digit)) for digit in os.listdir(val) for name in os.listdir(os.path.join(val, digit)))
    base = ["eval.py", "-c", QUICKSTART, "--ckpt_path", directory / "gmlp_s16_224_best.ckpt", "--real_labels"]
    (tmp_path / "true.json").write_text(json.dumps([[label] for _, label in files]))
    result = _run(base + [tmp_path / "true.json"])
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["real_top1"] == pytest.approx(metrics["top1"], abs=1e-9) and metrics["top1"] > 0.9
    # Lists naming another class score (almost) nothing; empty lists are left out of the mean.
    shifted = [[(label + 1) % 10] if i % 2 else [] for i, (_, label) in enumerate(files)]
    (tmp_path / "shifted.json").write_text(json.dumps(shifted))
    result = _run(base + [tmp_path / "shifted.json"])
    assert json.loads(result.stdout.strip().splitlines()[-1])["real_top1"] < 0.05
    (tmp_path / "short.json").write_text(json.dumps([[0]] * 10))
    result = _run(base + [tmp_path / "short.json"])
    assert result.returncode == 2 and "has 10 label lists, but the validation folder has 355 images" in result.stderr


@pytest.mark.slow
def test_infer_names_the_classes(quickstart, dataset_cache, tmp_path):
    directory, _ = quickstart
    val = glob.glob(str(dataset_cache / "digits_*" / "val"))[0]
    images = [os.path.join(val, digit, sorted(os.listdir(os.path.join(val, digit)))[0]) for digit in ("3", "8")]
    out = tmp_path / "predictions.json"
    result = _run(["infer.py", "-c", QUICKSTART, "--ckpt_path", directory / "gmlp_s16_224_best.ckpt",
                   "--images", *images, os.path.join(val, "5"), "--topk", 2, "--json", out])
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    predictions = json.loads(out.read_text())
    assert len(predictions) == 2 + len(os.listdir(os.path.join(val, "5")))
    assert all(len(p["top"]) == 2 and abs(sum(t["probability"] for t in p["top"])) <= 1.0 + 1e-6
               for p in predictions)
    correct = [p["top"][0]["name"] == os.path.basename(os.path.dirname(p["image"])) for p in predictions]
    assert np.mean(correct) >= 0.85
    assert f"{images[0]}: {predictions[0]['top'][0]['name']} " in result.stdout


@pytest.mark.slow
def test_export_mindir_onnx_and_air(quickstart, tmp_path):
    directory, _ = quickstart
    ckpt = directory / "gmlp_s16_224_best.ckpt"
    result = _run(["scripts/export.py", "-c", QUICKSTART, "--ckpt", ckpt, "--format", "MINDIR",
                   "--output", tmp_path / "net.mindir"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "reloaded with nn.GraphCell(ms.load(...)): output matches the Cell" in result.stdout
    graph = ms.nn.GraphCell(ms.load(str(tmp_path / "net.mindir")))
    assert graph(ms.Tensor(np.zeros((1, 3, 32, 32), np.float32))).shape == (1, 10)
    result = _run(["scripts/export.py", "-c", QUICKSTART, "--ckpt", ckpt, "--format", "ONNX",
                   "--output", tmp_path / "net.onnx"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "reloaded with onnxruntime" in result.stdout and (tmp_path / "net.onnx").is_file()
    result = _run(["scripts/export.py", "-c", QUICKSTART, "--ckpt", ckpt, "--format", "AIR",
                   "--output", tmp_path / "net.air"])
    assert result.returncode == 2 and "AIR export needs the Ascend backend; this MindSpore runs on CPU" in result.stderr
    result = _run(["scripts/export.py", "-c", QUICKSTART, "--ckpt", ckpt, "--output", tmp_path / "net.mindir"])
    assert result.returncode == 2 and "already exists" in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["net.mindir", "net.onnx"]


def test_eval_reads_a_pytorch_checkpoint_directly(capsys):
    import eval as evaluation

    fixture = REPO_ROOT / "tests" / "data" / "models" / "gmlp_tiny"
    code = evaluation.main(["--dataset", "digits", "--model", "gmlp_s16_224", "--model_kwargs",
                            "{patch_size: 4, num_blocks: 2, embed_dim: 64}", "--img_size", "32", "--num_classes", "10",
                            "--ckpt_path", str(fixture / "model_best.pth.tar"), "--batch_size", "64"])
    out = capsys.readouterr().out
    assert code == 0
    assert "loaded PyTorch checkpoint" in out or "on 355 images" in out


# train.py's AMP wiring (amp_level, the loss scale, fp32 master weights in the checkpoint), once per MLP kind; every
# family trains under O2 in tests/models/test_amp_o2.py.
@pytest.mark.parametrize("model,mlp_layer,kwargs", [
    ("gmlp_s16_224", "monarch", "{patch_size: 4, num_blocks: 2, embed_dim: 32}"),
    ("mixer_s16_224", "dense", "{patch_size: 4, num_blocks: 2, embed_dim: 32}"),
])
def test_amp_o2_training_in_graph_mode(model, mlp_layer, kwargs, tmp_path):
    code = train.main(["-c", str(QUICKSTART), "--model", model, "--mlp_layer", mlp_layer, "--model_kwargs", kwargs,
                       "--amp_level", "O2", "--loss_scale_type", "dynamic", "--epoch_size", "1", "--num_samples", "32",
                       "--batch_size", "16", "--val_while_train", "False", "--ckpt_save_dir", str(tmp_path)])
    assert code == 0
    (row,) = _results(tmp_path)
    assert np.isfinite(float(row["train_loss"]))
    saved = ms.load_checkpoint(glob.glob(str(tmp_path / f"{model}-1_2.ckpt"))[0])
    set_seed(42)  # train.py seeds the same way before building the model
    initial = create_model(model, num_classes=10, img_size=32, mlp_layer=mlp_layer,
                           model_kwargs=__import__("yaml").safe_load(kwargs))
    changed = 0
    for param in initial.trainable_params():
        assert saved[param.name].dtype == ms.float32  # master weights stay fp32 under O2
        changed += not np.array_equal(saved[param.name].asnumpy(), param.asnumpy())
    assert changed == len(initial.trainable_params())  # every weight was updated: no step was lost to overflow


def test_a_setting_without_effect_on_the_dataset_is_named(imagenet_folder, capsys):
    code = train.main(TINY + ["--dataset", "cifar10", "--data_dir", str(imagenet_folder), "--aug_repeats", "3",
                              "--val_split", "test", "--dry_run", "True"])
    assert code == 0
    out = capsys.readouterr().out
    assert "WARNING aug_repeats (repeated augmentation samples image folders only, not cifar10) has no effect" in out
    assert "WARNING val_split (cifar10 takes its splits from its own files) has no effect here" in out


def test_bad_inputs_name_the_culprit(tmp_path, imagenet_folder, capsys):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model: gmlp_s16_224\nwarmup_epoch: 3\n")
    with pytest.raises(SystemExit) as info:
        train.main(["-c", str(bad_yaml)])
    assert info.value.code == 2 and "unknown key 'warmup_epoch'" in capsys.readouterr().err

    cases = [
        (["--model", "gmlp_s16_244"], "unknown model 'gmlp_s16_244'. Did you mean 'gmlp_s16_224'"),
        (["--dataset", "folder", "--data_dir", str(tmp_path / "nowhere")], f"data_dir '{tmp_path / 'nowhere'}' does "
                                                                            f"not exist"),
        (["--ckpt_path", str(tmp_path / "missing.ckpt")], "missing.ckpt' does not exist"),
        (["--resume_opt", "True"], "--resume_opt True needs --ckpt_path"),
        (["--num_classes", "5"], "the data has 10 classes but num_classes is 5"),
    ]
    if os.environ.get("MINDCV_EXT_CPU_KERNELS", "1") != "0":  # the global off switch wins over 'on'
        cases.append((["--amp_level", "O2", "--cpu_kernels", "on"], "cpu_kernels=on, but the CPU kernels cannot be "
                                                                    "used: the network runs under AMP (O2)"))
    for extra, message in cases:
        code = train.main(TINY + ["--ckpt_save_dir", str(tmp_path / "run"), "--epoch_size", "1"] + extra)
        assert code == 2 and message in capsys.readouterr().err, extra
    assert not (tmp_path / "run").exists()  # nothing was written by the failed runs


def test_corrupt_image_is_named(tmp_path, capsys):
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (data / split / cls).mkdir(parents=True)
            for i in range(8):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(data / split / cls / f"{i}.png")
    broken = data / "train" / "dog" / "5.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    code = train.main(TINY + ["--dataset", "folder", "--data_dir", str(data), "--batch_size", "4", "--epoch_size", "1",
                              "--ckpt_save_dir", str(tmp_path / "run"), "--num_parallel_workers", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "1 unreadable image(s)" in err and str(broken) in err


def test_fresh_run_refuses_a_directory_holding_a_run(tmp_path, capsys):
    (tmp_path / "gmlp_s16_224-3_66.ckpt").write_bytes(b"earlier")
    code = train.main(TINY + ["--ckpt_save_dir", str(tmp_path), "--epoch_size", "1"])
    assert code == 2 and "already holds a run" in capsys.readouterr().err
    assert (tmp_path / "gmlp_s16_224-3_66.ckpt").read_bytes() == b"earlier"


def test_ema_with_validation_and_sink_mode(tmp_path):
    """mindcv 0.3.0 crashes on both: EMA weights swapped in for validation, and a custom train step in sink mode."""
    code = train.main(TINY + ["--ema", "True", "--ema_decay", "0.5", "--epoch_size", "2", "--num_samples", "64",
                              "--batch_size", "16", "--dataset_sink_mode", "True", "--ckpt_save_dir", str(tmp_path)])
    assert code == 0
    rows = _results(tmp_path)
    assert len(rows) == 2 and all(r["val_top1"] for r in rows)
    best_epoch = max(rows, key=lambda r: float(r["val_top1"]))["epoch"]
    state = ms.load_checkpoint(str(tmp_path / f"gmlp_s16_224-{best_epoch}_{4 * int(best_epoch)}.ckpt"))
    best = ms.load_checkpoint(str(tmp_path / "gmlp_s16_224_best.ckpt"))
    weights = [name for name in best if f"ema.{name}" in state]
    assert weights and len(weights) == len([k for k in state if k.startswith("ema.")])
    for name in weights:  # the best checkpoint holds the EMA weights that were validated
        np.testing.assert_array_equal(best[name].asnumpy(), state[f"ema.{name}"].asnumpy())
    assert any(not np.array_equal(state[name].asnumpy(), state[f"ema.{name}"].asnumpy()) for name in weights)
