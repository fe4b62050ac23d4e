"""Checkpoint rotation and atomic saving."""
import os

import pytest

import mindspore as ms
from mindspore import nn

from mindcv_ext.engine import CheckpointKeeper, NetWithLoss, TrainStep, load_training_state, save_atomic


def _net():
    return nn.Dense(3, 2)


def test_save_atomic_leaves_only_the_final_file(tmp_path):
    path = tmp_path / "model.ckpt"
    save_atomic(_net(), str(path), append_dict={"epoch_num": 3})
    assert sorted(os.listdir(tmp_path)) == ["model.ckpt"]
    assert int(ms.load_checkpoint(str(path))["epoch_num"].asnumpy()) == 3


def test_latest_k_keeps_the_newest_and_counts_earlier_files(tmp_path):
    net = _net()
    for epoch in (1, 2):  # an earlier run's checkpoints
        save_atomic(net, str(tmp_path / f"toy-{epoch}_{epoch * 10}.ckpt"))
    keeper = CheckpointKeeper(str(tmp_path), "toy", keep_max=2)
    assert [os.path.basename(p) for p in keeper.paths] == ["toy-1_10.ckpt", "toy-2_20.ckpt"]
    keeper.save(net, 3, 30)
    assert _checkpoints(tmp_path) == ["toy-2_20.ckpt", "toy-3_30.ckpt"]
    keeper.save(net, 4, 40)
    assert _checkpoints(tmp_path) == ["toy-3_30.ckpt", "toy-4_40.ckpt"]


def _checkpoints(directory):
    return sorted(name for name in os.listdir(directory) if name.endswith(".ckpt"))


def test_top_k_keeps_the_best_and_the_latest(tmp_path):
    keeper = CheckpointKeeper(str(tmp_path), "toy", keep_max=2, policy="top_k")
    for epoch, top1 in ((1, 0.5), (2, 0.9), (3, 0.7), (4, 0.6)):
        keeper.save(_net(), epoch, epoch, metric=top1)
    assert _checkpoints(tmp_path) == ["toy-2_2.ckpt", "toy-3_3.ckpt", "toy-4_4.ckpt"]  # best two + latest
    # A resumed run knows the metrics of the files it finds.
    resumed = CheckpointKeeper(str(tmp_path), "toy", keep_max=2, policy="top_k")
    resumed.save(_net(), 5, 5, metric=0.65)
    assert _checkpoints(tmp_path) == ["toy-2_2.ckpt", "toy-3_3.ckpt", "toy-5_5.ckpt"]
    with pytest.raises(ValueError, match="latest_k or top_k"):
        CheckpointKeeper(str(tmp_path), "toy", 2, policy="best")


def test_resume_state_errors_name_the_problem(tmp_path):
    weights_only = tmp_path / "weights.ckpt"
    save_atomic(_net(), str(weights_only))
    net = _net()
    step = TrainStep(NetWithLoss(net, nn.MSELoss()), nn.SGD(net.trainable_params(), learning_rate=[0.1, 0.1, 0.1]))
    with pytest.raises(ValueError, match="weights only, not a training state"):
        load_training_state(step, str(weights_only))
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_training_state(step, str(tmp_path / "missing.ckpt"))
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="corrupt.ckpt"):
        load_training_state(step, str(corrupt))
    # A schedule of another length (e.g. another epoch_size) cannot be resumed.
    other = TrainStep(NetWithLoss(_net(), nn.MSELoss()), nn.SGD(net.trainable_params(), learning_rate=[0.1] * 5))
    state = tmp_path / "state.ckpt"
    save_atomic(other, str(state), append_dict={"epoch_num": 1, "step_num": 1})
    with pytest.raises(ValueError, match="learning_rate: run \\(3,\\) vs checkpoint \\(5,\\)"):
        load_training_state(step, str(state))


def test_checkpoints_carry_a_checksum_that_every_load_verifies(tmp_path):
    """Before: 64 overwritten bytes in the middle of a .ckpt loaded silently (top-1 9.86% instead of 89.86%, loss
    nan), and a zero-byte .ckpt got MindSpore's message about filter_prefix."""
    from mindcv_ext.models import load_checkpoint, read_mindspore_checkpoint

    net = nn.Dense(64, 64)
    path = tmp_path / "model.ckpt"
    save_atomic(net, str(path), append_dict={"epoch_num": 3})
    assert set(read_mindspore_checkpoint(str(path))) >= {"weight", "bias", "epoch_num"}
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 64] = bytes(64)
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(bytes(raw))
    before = net.weight.asnumpy().copy()
    with pytest.raises(ValueError, match=r"damaged\.ckpt' is corrupt: checksum mismatch"):
        load_checkpoint(net, str(damaged))
    assert (net.weight.asnumpy() == before).all()  # no weight was used
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.ckpt' is empty \(0 bytes\)"):
        read_mindspore_checkpoint(str(empty))
