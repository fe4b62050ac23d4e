"""TrainMonitor's accounting: the step outputs are read at log lines and at the epoch's end, not after every step,
and the figures are the same as reading each step at once."""
import logging
import math

import numpy as np

import mindspore as ms
from mindspore import nn
from mindspore.train.callback import Callback

from mindcv_ext.engine import NetWithLoss, TrainMonitor, TrainStep


class _EveryStep(Callback):
    """The reference: each step's loss and overflow, read as soon as the step ends."""

    def __init__(self):
        super().__init__()
        self.losses, self.overflows = [], []

    def on_train_step_end(self, run_context):
        loss, overflow, _ = run_context.original_args().net_outputs
        self.losses.append(float(loss.asnumpy()))
        self.overflows.append(bool(overflow.asnumpy()))


def test_logged_loss_and_overflows_equal_each_step_read_at_once(tmp_path, caplog, graph_mode):
    """A scale of 2**127 overflows the first steps (dynamic scaling halves it until the gradients are finite): the
    epoch's train loss is the mean of the finite step losses, the overflows are counted, and each log line shows
    its own step's loss, although the monitor reads the steps' outputs only every third step."""
    ms.set_seed(0)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((48, 8)).astype(np.float32) * 4.0
    labels = rng.integers(0, 3, 48).astype(np.int32)
    data = ms.dataset.NumpySlicesDataset({"image": images, "label": labels}, shuffle=False).batch(4)
    net = nn.Dense(8, 3)
    optimizer = nn.Momentum(net.trainable_params(), learning_rate=0.1, momentum=0.9)
    step = TrainStep(NetWithLoss(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")), optimizer,
                     loss_scale=2.0 ** 127, dynamic_loss_scale=True)
    monitor = TrainMonitor(step, net, "dense", [0.1] * 24, steps_per_epoch=12, epoch_size=2, global_batch=4,
                           save_dir=str(tmp_path), rank=None, log_interval=3)
    reference = _EveryStep()
    with caplog.at_level(logging.INFO, logger="mindcv_ext"):
        ms.train.Model(step).train(2, data, callbacks=[reference, monitor], dataset_sink_mode=False)

    epoch2 = slice(12, 24)
    losses, overflows = np.array(reference.losses[epoch2]), reference.overflows[epoch2]
    finite = losses[np.isfinite(losses)]
    assert monitor.loss_count == len(finite) and math.isclose(monitor.loss_sum, float(np.sum(finite)), rel_tol=0)
    assert monitor.overflows == sum(overflows) == 0  # epoch 2: the scale has come down
    first = reference.overflows[:12]
    assert 0 < sum(first) < 12  # epoch 1 had overflowing steps, and finite ones
    assert f"{sum(first)} step(s) skipped on overflow" in caplog.text
    for index in (2, 5, 8, 11):  # the logged steps of epoch 2: each shows its own loss, not another step's
        assert f"Epoch 2/2, step {index + 1}/12, loss {reference.losses[12 + index]:.4f}," in caplog.text
    assert f"train loss {np.mean(finite):.4f}" in caplog.text
    assert not monitor.pending
