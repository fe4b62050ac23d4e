"""TrainStep: loss scaling with overflow skipping, clipping, accumulation and EMA, in graph mode on CPU."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import nn

from mindcv_ext.engine import NetWithLoss, TrainStep


def _make(**kwargs):
    net = nn.Dense(4, 3)
    net.weight.set_data(ms.Tensor(np.arange(12, dtype=np.float32).reshape(3, 4) / 10))
    net.bias.set_data(ms.Tensor(np.zeros(3, np.float32)))
    loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    return net, TrainStep(NetWithLoss(net, loss), nn.SGD(net.trainable_params(), learning_rate=0.1), **kwargs)


@pytest.fixture
def batch():
    x = ms.Tensor(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32))
    y = ms.Tensor(np.arange(8) % 3, ms.int32)
    return x, y


def _weights(net):
    return np.concatenate([net.weight.asnumpy().ravel(), net.bias.asnumpy().ravel()])


def test_fixed_scale_gives_the_same_update_as_no_scale(batch, graph_mode):
    plain, step_plain = _make()
    scaled, step_scaled = _make(loss_scale=1024.0)
    step_plain(*batch)
    loss, overflow, scale = step_scaled(*batch)
    assert not bool(overflow.asnumpy()) and float(scale.asnumpy()) == 1024.0
    np.testing.assert_allclose(_weights(scaled), _weights(plain), rtol=1e-6, atol=1e-7)
    assert not np.allclose(_weights(plain), _weights(_make()[0]))  # it did update


def test_dynamic_scale_skips_overflow_halves_and_regrows(batch, graph_mode):
    net, step = _make(loss_scale=1024.0, dynamic_loss_scale=True, scale_window=2)
    before = _weights(net)
    bad = ms.Tensor(np.full((8, 4), np.inf, np.float32))
    _, overflow, _ = step(bad, batch[1])
    assert bool(overflow.asnumpy())
    np.testing.assert_array_equal(_weights(net), before)  # the update was skipped
    assert float(step.scale_sense.asnumpy()) == 512.0
    scales = []
    for _ in range(4):
        _, overflow, _ = step(*batch)
        assert not bool(overflow.asnumpy())
        scales.append(float(step.scale_sense.asnumpy()))
    assert scales == [512.0, 1024.0, 1024.0, 2048.0]
    assert not np.array_equal(_weights(net), before)


def test_fixed_scale_with_drop_overflow_update_skips(batch, graph_mode):
    net, step = _make(loss_scale=8.0, drop_overflow_update=True)
    before = _weights(net)
    _, overflow, _ = step(ms.Tensor(np.full((8, 4), np.nan, np.float32)), batch[1])
    assert bool(overflow.asnumpy())
    np.testing.assert_array_equal(_weights(net), before)
    assert float(step.scale_sense.asnumpy()) == 8.0


@pytest.mark.parametrize("loss_scale", [1.0, 8.0])
def test_without_drop_overflow_update_a_nan_step_is_applied_and_not_counted(batch, graph_mode, loss_scale):
    """Neither dynamic scaling nor drop_overflow_update: no overflow check runs (the recipe asked for none), so a
    NaN batch reaches the weights, as in a plain TrainOneStepCell, and the step reports no overflow."""
    net, step = _make(loss_scale=loss_scale)
    _, overflow, scale = step(ms.Tensor(np.full((8, 4), np.nan, np.float32)), batch[1])
    assert not bool(overflow.asnumpy()) and float(scale.asnumpy()) == loss_scale
    assert np.isnan(_weights(net)).all()


def test_gradient_clipping_bounds_the_update(batch, graph_mode):
    net, step = _make(clip_grad=True, clip_value=1e-3)
    before = _weights(net)
    step(*batch)
    assert np.linalg.norm(_weights(net) - before) <= 0.1 * 1e-3 * (1 + 1e-4)  # lr x clip_value


def test_accumulation_equals_one_large_batch(batch, graph_mode):
    accumulated, step_acc = _make(accumulation_steps=2)
    large, step_large = _make()
    before = _weights(accumulated)
    x, y = batch
    step_acc(x[:4], y[:4])
    np.testing.assert_array_equal(_weights(accumulated), before)  # no update after the first micro-batch
    step_acc(x[4:], y[4:])
    step_large(x, y)
    np.testing.assert_allclose(_weights(accumulated), _weights(large), rtol=1e-6, atol=1e-7)


def test_ema_tracks_the_weights(batch, graph_mode):
    net, step = _make(ema=True, ema_decay=0.9)
    initial = net.weight.asnumpy().copy()
    for _ in range(3):
        step(*batch)
    assert float(step.ema_updates.asnumpy()) == 3.0
    ema = step.ema_weights[0].asnumpy()
    weight = net.weight.asnumpy()
    assert step.ema_weights[0].name == "ema.weight"
    # With the ramp decay * (1 - exp(-n / 2000)) ~ 0 early on, the EMA follows the weights closely but not exactly.
    assert 0 < np.abs(ema - weight).max() < 1e-2 * np.abs(weight - initial).max() + 1e-6


def test_invalid_accumulation():
    with pytest.raises(ValueError, match="gradient_accumulation_steps must be >= 1, got 0"):
        _make(accumulation_steps=0)
