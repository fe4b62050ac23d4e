"""The shared MLP: the fused Monarch path equals the two layers applied one after the other; exact GELU."""
import math

import numpy as np
import pytest
from scipy.special import erf

import mindspore as ms
from mindspore import nn

from mindcv_ext.layers import GELU, MonarchLinear, Mlp, cpu_kernel_library, monarch_mlp, monarch_pair_fusable
from tests.utils import SensGrads, rel_err


class _Unfused(nn.Cell):
    def __init__(self, mlp):
        super().__init__()
        self.mlp = mlp

    def construct(self, x):
        return self.mlp.fc2(self.mlp.act(self.mlp.fc1(x)))


@pytest.mark.parametrize("dim,hidden,nblocks,fused", [
    (64, 256, 4, True), (768, 3072, 4, True), (96, 192, 2, True), (100, 300, 4, False), (64, 128, 16, False),
])
@pytest.mark.parametrize("cpu_kernel", [None, False], ids=["default", "operators"])
def test_fused_monarch_mlp_equals_the_layers(dim, hidden, nblocks, fused, ms_mode, cpu_kernel):
    """The default on CPU fuses fc1's bias, GELU and the regrouping in one kernel; the operators path does not."""
    mlp = Mlp(dim, hidden, mlp_layer="monarch", nblocks=nblocks, act_layer=lambda: GELU(cpu_kernel))
    assert mlp.fused is fused and monarch_pair_fusable(mlp.fc1, mlp.fc2) is fused
    assert mlp.fused_gelu is (fused and cpu_kernel is None and cpu_kernel_library() is not None)
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.standard_normal((2, 7, dim)).astype(np.float32))
    sens = ms.Tensor(rng.standard_normal((2, 7, dim)).astype(np.float32))
    reference = _Unfused(mlp)
    assert rel_err(mlp(x).asnumpy(), reference(x).asnumpy()) < 1e-5
    (dx_fused,), grads_fused = SensGrads(mlp)(x, sens)
    (dx_ref,), grads_ref = SensGrads(reference)(x, sens)
    assert rel_err(dx_fused.asnumpy(), dx_ref.asnumpy()) < 1e-5
    for fused_grad, ref_grad in zip(grads_fused, grads_ref):
        assert rel_err(fused_grad.asnumpy(), ref_grad.asnumpy()) < 1e-5


def test_kernel_path_without_fc1_bias(graph_mode):
    """monarch_mlp's kernel path gives a bias-free fc1 a zero bias: same values as the operators path."""
    fc1, fc2 = MonarchLinear(64, 256, 4, has_bias=False), MonarchLinear(256, 64, 4)
    fast, slow = GELU(), GELU(cpu_kernel=False)
    drop = nn.Identity()

    class Pair(nn.Cell):
        def __init__(self, act, fused_gelu):
            super().__init__()
            self.fc1, self.act, self.drop, self.fc2, self.fused_gelu = fc1, act, drop, fc2, fused_gelu

        def construct(self, x):
            return monarch_mlp(x, self.fc1, self.act, self.drop, self.fc2, self.fused_gelu)

    x = ms.Tensor(np.random.default_rng(3).standard_normal((5, 64)).astype(np.float32))
    fused = Pair(fast, fast.cpu_regroup is not None)(x).asnumpy()
    assert rel_err(fused, Pair(slow, False)(x).asnumpy()) < 1e-6


def test_dense_mlp_is_never_fused():
    assert not Mlp(64, 256, mlp_layer="dense").fused


@pytest.mark.parametrize("cpu_kernel", [False, None], ids=["operators", "default"])
def test_gelu_is_exact(graph_mode, cpu_kernel):
    """Both paths: MindSpore operators, and the default (the fused kernel on CPU when it builds)."""
    x = np.linspace(-8, 8, 100001).astype(np.float32)
    xd = x.astype(np.float64)
    exact = 0.5 * xd * (1 + erf(xd / math.sqrt(2)))
    exact_grad = 0.5 * (1 + erf(xd / math.sqrt(2))) + xd * np.exp(-xd * xd / 2) / math.sqrt(2 * math.pi)
    ours = GELU(cpu_kernel)(ms.Tensor(x)).asnumpy()
    assert np.abs(ours - exact).max() < 1e-6
    # And MindSpore's own exact GELU: within about one float32 ulp at |x| = 8 (9.5e-7) of each other.
    assert np.abs(ours - nn.GELU(approximate=False)(ms.Tensor(x)).asnumpy()).max() < 1e-6
    # dGELU/dx via the network's own backward (ms.grad would cache the Cell beyond the test).
    (grad,), _ = SensGrads(GELU(cpu_kernel))(ms.Tensor(x), ms.Tensor(np.ones_like(x)))
    assert np.abs(grad.asnumpy() - exact_grad).max() < 2e-6
    half = GELU(cpu_kernel)(ms.Tensor(x, ms.float16)).asnumpy()  # AMP: fp16 in, fp16 out
    assert half.dtype == np.float16 and np.abs(half - exact).max() < 1e-2
