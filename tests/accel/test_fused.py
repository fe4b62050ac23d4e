"""accel/fused.py: which Monarch pairs run block-major, the gate's feature order, and the products and the fused MLP
on the CPU kernels against the dense matrices the layers stand for."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import nn

from mindcv_ext.accel import accelerate
from mindcv_ext.accel.cells import FastMlp, FastMonarchLinear
from mindcv_ext.accel.fused import gated_pair_fusable, monarch_forward, monarch_mlp, pair_fusable, reorder_features
from mindcv_ext.layers import MonarchLinear, create_mlp, linear_layer
from tests.utils import gelu_exact, randomise, rel_err


@pytest.mark.parametrize("dim,hidden,nblocks,fusable", [
    (64, 256, 4, True),  # fc1's blocks (4, 64, 16) feed fc2's (4, 16, 64): 64 % 4 == 0
    (96, 192, 2, True),
    (64, 128, 16, False),  # fc2's input blocks of 8 features do not hold whole groups of fc1's 16 output blocks
    (100, 300, 4, False),  # fc2's input blocks of 75 features: not a multiple of 4
])
def test_a_pair_fuses_when_fc2s_input_blocks_hold_whole_groups_of_fc1s_outputs(dim, hidden, nblocks, fusable):
    assert pair_fusable(MonarchLinear(dim, hidden, nblocks), MonarchLinear(hidden, dim, nblocks)) is fusable


def test_a_gated_pair_fuses_when_the_gate_halves_fc1s_width():
    fc1, fc2 = MonarchLinear(64, 384, 4), MonarchLinear(192, 64, 4)  # gMLP: 384 features, gated down to 192
    assert gated_pair_fusable(fc1, fc2) and not pair_fusable(fc1, fc2)
    assert not gated_pair_fusable(MonarchLinear(64, 256, 4), MonarchLinear(256, 64, 4))


def test_per_feature_parameters_take_the_gates_feature_order():
    """Feature (kk*c + cc)*l + ll sits at (kk*l + ll)*c + cc; here k = 2, l = 3, c = 2."""
    reordered = reorder_features(ms.Tensor(np.arange(12, dtype=np.float32)), (2, 3, 2)).asnumpy()
    assert reordered.tolist() == [0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11]
    k, l, c = 2, 3, 2
    for kk in range(k):
        for ll in range(l):
            for cc in range(c):
                assert reordered[(kk * l + ll) * c + cc] == (kk * c + cc) * l + ll


@pytest.mark.parametrize("has_bias", [True, False])
def test_the_monarch_product_is_the_layers_dense_matrix(has_bias, kernel_library):
    layer = randomise(MonarchLinear(64, 256, 4, has_bias=has_bias), 0)
    weight = layer.to_dense().asnumpy().astype(np.float64)
    bias = layer.bias.asnumpy() if has_bias else 0.0
    fast = accelerate(layer, "on")
    assert isinstance(fast, FastMonarchLinear)
    x = np.random.default_rng(1).standard_normal((5, 64)).astype(np.float32)
    assert rel_err(monarch_forward(ms.Tensor(x), fast).asnumpy(), x @ weight.T + bias) < 1e-5


def test_the_fused_mlp_is_gelu_between_the_two_dense_matrices(kernel_library):
    mlp = randomise(create_mlp(64, 256, linear_layer=linear_layer("monarch", nblocks=4)), 2)
    w1, w2 = (fc.to_dense().asnumpy().astype(np.float64) for fc in (mlp.fc1, mlp.fc2))
    b1, b2 = mlp.fc1.bias.asnumpy(), mlp.fc2.bias.asnumpy()
    fast = accelerate(mlp, "on")
    assert isinstance(fast, FastMlp)
    x = np.random.default_rng(3).standard_normal((2, 7, 64)).astype(np.float32)
    out = monarch_mlp(ms.Tensor(x), fast.fc1, fast.bias_gelu_regroup, nn.Identity(), fast.fc2).asnumpy()
    assert out.shape == (2, 7, 64)
    assert rel_err(out, gelu_exact(x @ w1.T + b1) @ w2.T + b2) < 1e-5
