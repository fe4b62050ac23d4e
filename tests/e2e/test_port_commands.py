"""The MindSpore gMLP port's commands (OpenI, skyous/gmlp_mindcv) run verbatim, plus options that keep them short."""
import os
import re
from pathlib import Path

import pytest

from tests.utils import REPO_ROOT, run_script, write_jpeg_folder


def _run(command: str, extra: list, cwd: Path):
    """The command as the port wrote it, from a working folder that shows the checkout's configs/ (the port ran
    from its repository), so its relative paths hold while its outputs stay out of the checkout."""
    words = command.split()
    assert words[0] == "python3"
    if not (cwd / "configs").exists():
        (cwd / "configs").symlink_to(REPO_ROOT / "configs")
    return run_script(words[1:] + extra, cwd=cwd, timeout=900)


@pytest.mark.slow
def test_train_and_eval_as_the_port_gave_them(tmp_path):
    imagenet = write_jpeg_folder(tmp_path / "imagenet", {"train": 32, "val": 8}, ("n01440764", "n01443537"),
                                 (40, 48), seed=0)
    save_dir = tmp_path / "ckpt_save_dir"
    train = (f"python3 train.py --config configs/gmlp/gmlp_Ti.yaml --dataset_path {imagenet} --ckpt_save_dir "
             f"{save_dir} --batch_size 64 --distribute False")
    # Two of its 30 blocks: the graphs (training under O2, then evaluation) compile in seconds, not a minute.
    trained = _run(train, ["--epoch_size", "1", "--num_samples", "64", "--img_size", "32", "--model_kwargs",
                           "{num_blocks: 2}"], tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert re.search(r"model gmlp_Ti: [\d,]+ parameters, 1000 classes", trained.stdout)  # gmlp_ti16_224 by its alias
    assert "image_resize 224 does not match img_size 32" in trained.stdout
    assert "amp O2, loss scale 1024" in trained.stdout
    best = save_dir / "gmlp_Ti_best.ckpt"
    assert best.is_file() and (save_dir / "gmlp_Ti-1_1.ckpt").is_file() and (save_dir / "gmlp_Ti.yaml").is_file()

    evaluated = _run(f"python3 eval.py --dataset_path {imagenet} --ckpt_path {best}", [], tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert f"using {save_dir / 'gmlp_Ti.yaml'}, the configuration train.py saved with the run" in evaluated.stderr
    assert re.search(r"gmlp_Ti: top-1 [\d.]+%, top-5 [\d.]+%, loss [\d.]+ on 16 images", evaluated.stdout)


def test_eval_without_a_configuration_says_to_pass_one(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"")
    result = run_script(["eval.py", "--dataset_path", tmp_path, "--ckpt_path", ckpt], timeout=300)
    assert result.returncode == 2
    assert f"no configuration of the run beside '{ckpt}'; pass the training configuration with -c" in result.stderr
    assert os.listdir(tmp_path) == ["model.ckpt"]  # nothing written
