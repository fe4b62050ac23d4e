"""engine/runtime.py: what train.py, eval.py, infer.py and the scripts set up first: the context, the logger and
its file, the seeds, and the weights to start from (MindSpore, its EMA weights, or PyTorch)."""
import logging
import pickle
import random
import zipfile

import numpy as np
import pytest

import mindspore as ms
from mindspore import nn

from mindcv_ext.engine.runtime import (attach_log_file, is_torch_checkpoint, load_weights, set_seed, setup_context,
                                       setup_distributed, setup_logger)
from mindcv_ext.models import create_model
from tests.utils import assert_within_tolerance, fixture_meta, model_fixture_dir, random_dense


def test_setup_context_sets_the_mode_and_auto_keeps_the_device(graph_mode):
    device = ms.get_context("device_target")
    setup_context(mode=1)
    assert ms.get_context("mode") == ms.PYNATIVE_MODE and ms.get_context("device_target") == device
    setup_context(mode=0, device_target="auto")
    assert ms.get_context("mode") == ms.GRAPH_MODE


def test_a_standalone_run_has_no_rank():
    assert setup_distributed(False) == (None, 1)


def test_the_logger_writes_to_the_console_and_rank_0s_file(tmp_path, capsys):
    logger = setup_logger(str(tmp_path / "run"), rank=0)
    assert logger is logging.getLogger("mindcv_ext") and not logger.propagate and logger.level == logging.INFO
    logger.info("epoch 1 done")
    assert capsys.readouterr().out.endswith("[rank 0] INFO epoch 1 done\n")
    assert (tmp_path / "run" / "train.log").read_text().endswith("[rank 0] INFO epoch 1 done\n")
    other = setup_logger(str(tmp_path / "rank1"), rank=1, filename="eval.log")  # every rank logs to its console
    other.warning("from rank 1")
    assert capsys.readouterr().out.endswith("[rank 1] WARNING from rank 1\n")
    assert not (tmp_path / "rank1").exists()  # only rank 0 writes a file
    assert len(other.handlers) == 1  # set up again: the earlier handlers are gone


def test_a_log_file_is_attached_later_by_rank_0_alone(tmp_path, capsys):
    logger = setup_logger(None, rank=None)
    logger.info("checks")
    attach_log_file(str(tmp_path / "run"), rank=1)
    assert not (tmp_path / "run").exists()
    attach_log_file(str(tmp_path / "run"), rank=None, filename="infer.log")
    logger.info("passed")
    lines = (tmp_path / "run" / "infer.log").read_text().splitlines()
    assert len(lines) == 1 and lines[0].endswith(" INFO passed") and "[rank" not in lines[0]
    assert capsys.readouterr().out.count("INFO") == 2


def test_set_seed_seeds_python_numpy_and_mindspore():
    def draws():
        return random.random(), np.random.rand(), ms.get_seed()

    set_seed(7)
    first = draws()
    set_seed(7)
    assert draws() == first and first[2] == 7
    set_seed(8)
    assert draws()[:2] != first[:2]


def test_pytorch_checkpoints_are_told_from_mindspores(tmp_path):
    net = nn.Dense(4, 3)
    ms.save_checkpoint(net, str(tmp_path / "net.ckpt"))
    assert not is_torch_checkpoint(str(tmp_path / "net.ckpt"))
    for name in ("a.pth", "a.pt", "a.bin", "a.tar", "a.safetensors"):
        (tmp_path / name).write_bytes(b"")
        assert is_torch_checkpoint(str(tmp_path / name))  # by its name
    with zipfile.ZipFile(tmp_path / "lightning.ckpt", "w") as archive:  # a zip named .ckpt
        archive.writestr("archive/data.pkl", b"")
    assert is_torch_checkpoint(str(tmp_path / "lightning.ckpt"))
    (tmp_path / "legacy.ckpt").write_bytes(pickle.dumps({"state_dict": {}}, protocol=2))
    assert is_torch_checkpoint(str(tmp_path / "legacy.ckpt"))


def test_mindspore_weights_and_their_ema(tmp_path):
    trained, averaged = random_dense(4, 3, 1), random_dense(4, 3, 2)
    path = str(tmp_path / "run.ckpt")
    ms.save_checkpoint([{"name": p.name, "data": p.data} for p in trained.trainable_params()] +
                       [{"name": f"ema.{p.name}", "data": p.data} for p in averaged.trainable_params()], path,
                       crc_check=True)
    net = random_dense(4, 3, 3)
    assert load_weights(net, path) == f"MindSpore checkpoint {path}"
    np.testing.assert_array_equal(net.weight.asnumpy(), trained.weight.asnumpy())
    assert load_weights(net, path, ema=True) == f"EMA weights of {path}"
    np.testing.assert_array_equal(net.weight.asnumpy(), averaged.weight.asnumpy())
    np.testing.assert_array_equal(net.bias.asnumpy(), averaged.bias.asnumpy())

    plain = str(tmp_path / "plain.ckpt")
    ms.save_checkpoint(trained, plain)
    with pytest.raises(ValueError, match=r"holds no EMA weights \('ema\.\*'\); evaluate it without --ema"):
        load_weights(net, plain, ema=True)
    partial = str(tmp_path / "partial.ckpt")
    ms.save_checkpoint([{"name": "weight", "data": trained.weight.data},
                        {"name": "bias", "data": trained.bias.data},
                        {"name": "ema.weight", "data": averaged.weight.data}], partial)
    with pytest.raises(ValueError, match="lacks EMA weights for bias"):
        load_weights(net, partial, ema=True)
    with pytest.raises(ValueError, match="to_monarch projects a dense checkpoint's weights; it cannot be combined"):
        load_weights(net, path, ema=True, to_monarch=True)
    with pytest.raises(FileNotFoundError, match="nowhere.ckpt' does not exist"):
        load_weights(net, str(tmp_path / "nowhere.ckpt"))


def test_a_pytorch_checkpoint_is_converted_on_load():
    """timm's training checkpoint of the tiny gMLP fixture: its EMA weights, giving the reference's logits."""
    directory = model_fixture_dir("gmlp_tiny")
    meta = fixture_meta(directory)
    net = create_model(meta["model"], **meta["kwargs"])
    path = str(directory / meta["checkpoint"])
    described = load_weights(net, path)
    assert described.startswith(f"PyTorch checkpoint {path} (") and "state_dict_ema" in described
    net.set_train(False)
    logits = net(ms.Tensor(np.load(directory / meta["input"]))).asnumpy()
    assert_within_tolerance(logits, np.load(directory / meta["expected_logits"]), meta["atol"], meta["rtol"])
