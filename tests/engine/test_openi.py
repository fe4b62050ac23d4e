"""OpenITask.apply: where data, checkpoints and initial weights come from in a task (no c2net call needed)."""
import argparse
import logging
import sys

import pytest

from mindcv_ext.engine.openi import OpenITask, _c2net_context, openi_requested


def _args(**values):
    base = dict(openi_dataset=None, train_split="train", val_split="val", dataset="imagenet", data_dir="./",
                ckpt_save_dir="./ckpt/run", ckpt_path="")
    return argparse.Namespace(**{**base, **values})


def test_paths_resolve_inside_the_task_folders(tmp_path, caplog):
    (tmp_path / "data" / "imagenet" / "train").mkdir(parents=True)
    task = OpenITask(str(tmp_path / "data"), str(tmp_path / "models"), str(tmp_path / "out"))
    args = _args(ckpt_path="gmlp_Ti_best.ckpt")
    task.apply(args)
    assert args.data_dir == str(tmp_path / "data" / "imagenet")  # the only dataset
    assert args.ckpt_save_dir == str(tmp_path / "out" / "./ckpt/run")
    assert args.ckpt_path == str(tmp_path / "models" / "gmlp_Ti_best.ckpt")
    logger = logging.getLogger("mindcv_ext")
    logger.addHandler(caplog.handler)
    try:
        outside = _args(ckpt_save_dir=str(tmp_path / "elsewhere"))
        task.apply(outside)
    finally:
        logger.removeHandler(caplog.handler)
    assert outside.ckpt_save_dir == str(tmp_path / "elsewhere")
    assert "lies outside the task's output folder" in caplog.text and "nothing saved there is uploaded" in caplog.text


def test_openi_without_c2net_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "c2net", None)  # as if it were not installed
    with pytest.raises(ValueError, match=r'OpenI mode needs the c2net package: pip install -e "\.\[openi\]"'):
        _c2net_context()


def test_auto_follows_the_platform_variable(monkeypatch):
    monkeypatch.delenv("DATA_DOWNLOAD_METHOD", raising=False)
    assert not openi_requested("auto") and openi_requested("on") and not openi_requested("off")
    monkeypatch.setenv("DATA_DOWNLOAD_METHOD", "MOUNT")
    assert openi_requested("auto") and not openi_requested("off")
