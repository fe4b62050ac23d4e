"""The shared MLPs are the plain formulas; the exact GELU is exact on both paths."""
import math

import numpy as np
import pytest
from scipy.special import erf

import mindspore as ms
from mindspore import nn

from mindcv_ext.layers import GatedMlp, Mlp, create_mlp, gelu, linear_layer
from tests.utils import SensGrads, gelu_exact, on_path, randomise, rel_err


@pytest.mark.parametrize("mlp_layer", ["dense", "monarch"])
def test_mlp_is_fc1_act_fc2(mlp_layer, ms_mode):
    """x @ W1^T + b1, the exact GELU, then @ W2^T + b2, with each layer's dense matrix, in NumPy (float64)."""
    mlp = randomise(Mlp(64, 256, linear_layer=linear_layer(mlp_layer)), 1)  # nonzero biases
    assert isinstance(mlp.act, nn.GELU) and mlp.act.approximate == "none"
    w1, w2 = (fc.to_dense().asnumpy().astype(np.float64) for fc in (mlp.fc1, mlp.fc2))
    b1, b2 = (fc.bias.asnumpy().astype(np.float64) for fc in (mlp.fc1, mlp.fc2))
    x = np.random.default_rng(0).standard_normal((2, 7, 64)).astype(np.float32)
    expected = gelu_exact(x @ w1.T + b1) @ w2.T + b2
    assert rel_err(mlp(ms.Tensor(x)).asnumpy(), expected) < 1e-6


def test_gated_mlp_halves_the_width_for_its_gate():
    mlp = GatedMlp(32, 96, lambda hidden: nn.Dense(hidden, hidden // 2),
                   linear_layer=linear_layer("monarch", nblocks=4))
    assert (mlp.fc1.in_features, mlp.fc1.out_features, mlp.fc2.in_features) == (32, 96, 48)
    with pytest.raises(ValueError, match="hidden_features must be even, got 95"):
        GatedMlp(32, 95, lambda hidden: nn.Identity())


def test_gelu_is_exact(graph_mode, net_path):
    """The plain path is MindSpore's nn.GELU(approximate=False); the accelerated one its one-kernel twin."""
    assert isinstance(gelu(), nn.GELU) and gelu().approximate == "none"
    x = np.linspace(-8, 8, 100001).astype(np.float32)
    xd = x.astype(np.float64)
    exact = 0.5 * xd * (1 + erf(xd / math.sqrt(2)))
    exact_grad = 0.5 * (1 + erf(xd / math.sqrt(2))) + xd * np.exp(-xd * xd / 2) / math.sqrt(2 * math.pi)
    act = on_path(gelu(), net_path)
    assert np.abs(act(ms.Tensor(x)).asnumpy() - exact).max() < 1e-6
    # dGELU/dx via the network's own backward (ms.grad would cache the Cell beyond the test).
    (grad,), _ = SensGrads(act)(ms.Tensor(x), ms.Tensor(np.ones_like(x)))
    assert np.abs(grad.asnumpy() - exact_grad).max() < 2e-6
    half = act(ms.Tensor(x, ms.float16)).asnumpy()  # AMP: fp16 in, fp16 out
    assert half.dtype == np.float16 and np.abs(half - exact).max() < 1e-2


@pytest.mark.parametrize("mlp_layer,settings,cls", [
    ("ssl", dict(redn_factor=4), "SketchStructuredLinear"), ("lowrank", dict(redn_factor=8), "LowRankLinear"),
    ("bdiagbfly", dict(b1=8), "BlockdiagButterflyLinear"),
    ("fbbfly", dict(butterfly_size=4), "FlatBlockButterflyLinear"),
])
def test_mlp_builds_each_structured_layer(mlp_layer, settings, cls):
    mlp = create_mlp(128, 512, linear_layer=linear_layer(mlp_layer, **settings))
    assert type(mlp.fc1).__name__ == type(mlp.fc2).__name__ == cls
    x = np.random.default_rng(0).standard_normal((2, 3, 128)).astype(np.float32)

    def dense(layer, inputs):  # the layer's own dense form
        weight = layer.to_dense()
        bias = layer.bias.asnumpy() if layer.bias is not None else 0.0
        return inputs @ weight.asnumpy().T + bias

    hidden = mlp.act(ms.Tensor(dense(mlp.fc1, x).astype(np.float32))).asnumpy()
    assert rel_err(mlp(ms.Tensor(x)).asnumpy(), dense(mlp.fc2, hidden)) < 1e-5
    if mlp_layer == "lowrank":
        assert mlp.fc1.rank == mlp.fc2.rank == 16  # the baselines' rule: 2**round(log2(int(128*512/8/640)))
    if mlp_layer == "ssl":
        assert mlp.fc1.bias is None and mlp.fc2.bias is None  # the reference's SSL has no bias
