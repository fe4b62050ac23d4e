"""models/gmlp.py: the spatial gating unit's token projection and the block-major Monarch gated MLP equal the
plain formulation, values and every gradient."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import nn, ops

from mindcv_ext.layers import GatedMlp, cpu_kernel_library, monarch_gated_fusable, set_cpu_kernels
from mindcv_ext.models.gmlp import SpatialGatingUnit, TokenProjection
from tests.utils import SensGrads, rel_err


class _TimmProjection(nn.Cell):
    """timm's form: nn.Linear across tokens on the transposed input, transposed back; automatic gradient."""

    def __init__(self, seq_len):
        super().__init__()
        self.proj = nn.Dense(seq_len, seq_len)

    def construct(self, v):
        return self.proj(v.transpose(0, 2, 1)).transpose(0, 2, 1)


class _Ours(nn.Cell):
    def __init__(self, proj):
        super().__init__()
        self.proj = proj
        self.token_projection = TokenProjection()

    def construct(self, v):
        return self.token_projection(v, self.proj.weight, self.proj.bias)


def test_token_projection_equals_timm_form(ms_mode):
    rng = np.random.default_rng(0)
    timm_form = _TimmProjection(9)
    timm_form.proj.bias.set_data(ms.Tensor(rng.standard_normal(9).astype(np.float32)))
    ours = _Ours(timm_form.proj)
    v = ms.Tensor(rng.standard_normal((3, 9, 10)).astype(np.float32))
    sens = ms.Tensor(rng.standard_normal((3, 9, 10)).astype(np.float32))
    assert rel_err(ours(v).asnumpy(), timm_form(v).asnumpy()) < 1e-6
    (dv_ours,), (dw_ours, db_ours) = SensGrads(ours)(v, sens)
    (dv_ref,), (dw_ref, db_ref) = SensGrads(timm_form)(v, sens)
    for mine, theirs in ((dv_ours, dv_ref), (dw_ours, dw_ref), (db_ours, db_ref)):
        assert mine.shape == theirs.shape and rel_err(mine.asnumpy(), theirs.asnumpy()) < 1e-6


def _gated(dim, nblocks, seq_len, seed):
    mlp = GatedMlp(dim, 6 * dim, lambda hidden: SpatialGatingUnit(hidden, seq_len), mlp_layer="monarch",
                   nblocks=nblocks)
    rng = np.random.default_rng(seed)
    for param in mlp.get_parameters():  # the gate's near-identity init would hide its half of the gradient
        param.set_data(ms.Tensor(rng.standard_normal(param.shape).astype(np.float32) * 0.3))
    return mlp


@pytest.mark.parametrize("dim, nblocks, fusable", [(64, 4, True), (48, 2, True), (64, 16, False)])
def test_block_major_gated_mlp_equals_the_operators_path(graph_mode, dim, nblocks, fusable):
    """On CPU, GatedMlp with Monarch layers runs monarch_gated_mlp (fc1's bias, GELU and the split into the gate's
    halves in one kernel, the gate on permuted features); with the kernels off, the layers one after another."""
    seq_len = 16
    fast, plain = _gated(dim, nblocks, seq_len, 1), _gated(dim, nblocks, seq_len, 1)
    assert monarch_gated_fusable(fast.fc1, fast.fc2) is fusable
    assert fast.fused_gelu is (fusable and cpu_kernel_library() is not None)
    set_cpu_kernels(plain, False)
    rng = np.random.default_rng(2)
    x = ms.Tensor(rng.standard_normal((2, seq_len, dim)).astype(np.float32))
    sens = ms.Tensor(rng.standard_normal((2, seq_len, dim)).astype(np.float32))
    assert rel_err(fast(x).asnumpy(), plain(x).asnumpy()) < 1e-5
    (dx_fast,), grads_fast = SensGrads(fast)(x, sens)
    (dx_plain,), grads_plain = SensGrads(plain)(x, sens)
    assert rel_err(dx_fast.asnumpy(), dx_plain.asnumpy()) < 1e-5
    assert len(grads_fast) == len(grads_plain) == 10  # fc1 (3), the gate's norm (2) and projection (2), fc2 (3)
    for mine, theirs in zip(grads_fast, grads_plain):
        assert rel_err(mine.asnumpy(), theirs.asnumpy()) < 1e-5


def test_gated_mlp_float16_takes_the_operators_path(graph_mode):
    mlp = _gated(64, 4, 16, 3)
    x = np.random.default_rng(4).standard_normal((2, 16, 64)).astype(np.float32)
    out16 = ops.cast(mlp(ms.Tensor(x, ms.float16)), ms.float32).asnumpy()
    assert rel_err(out16, mlp(ms.Tensor(x)).asnumpy()) < 2e-2
