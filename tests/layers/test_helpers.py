"""layers/helpers.py: layer_norm is MindSpore's nn.LayerNorm with PyTorch's epsilon; it and its accelerated twin give
float64's values and gradients."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import nn

from mindcv_ext.layers import layer_norm
from tests.utils import SensGrads, on_path, rel_err


def _pair(dim: int, eps: float, rng, path: str):
    """``layer_norm`` on ``path`` and MindSpore's nn.LayerNorm, holding the same random gamma and beta."""
    ours = layer_norm(dim, eps)
    reference = nn.LayerNorm((dim,), epsilon=eps)
    for name, value in (("gamma", rng.uniform(0.5, 1.5, dim)), ("beta", rng.standard_normal(dim))):
        for cell in (ours, reference):
            getattr(cell, name).set_data(ms.Tensor(value.astype(np.float32)))
    return on_path(ours, path), reference


@pytest.mark.parametrize("shape, eps", [((2, 5, 96), 1e-6), ((7, 33), 1e-5), ((300, 768), 1e-6)])
def test_layer_norm_matches_float64(ms_mode, shape, eps, net_path):
    """plain: MindSpore's LayerNorm; accel: one kernel forward and one backward."""
    rng = np.random.default_rng(0)
    ours, reference = _pair(shape[-1], eps, rng, net_path)
    # Rows with a large offset and a tiny spread exercise the centring; the sens is not all ones, so the
    # mean-of-(dout * normed) term of the gradient is not zero.
    x = rng.standard_normal(shape).astype(np.float32) * rng.uniform(0.01, 3.0, shape[:-1] + (1,)).astype(np.float32)
    x += rng.uniform(-4, 4, shape[:-1] + (1,)).astype(np.float32)
    sens = rng.standard_normal(shape).astype(np.float32)
    ours_y, reference_y = ours(ms.Tensor(x)).asnumpy(), reference(ms.Tensor(x)).asnumpy()
    # Two float32 results, each within ~1.2e-6 of float64 on 768-wide rows (checked below), not always on the same side.
    assert rel_err(ours_y, reference_y) < 3e-6
    (ours_dx,), ours_dparams = SensGrads(ours)(ms.Tensor(x), ms.Tensor(sens))
    (reference_dx,), reference_dparams = SensGrads(reference)(ms.Tensor(x), ms.Tensor(sens))
    assert rel_err(ours_dx.asnumpy(), reference_dx.asnumpy()) < 2e-6
    for mine, theirs in zip(ours_dparams, reference_dparams):  # gamma, beta
        assert rel_err(mine.asnumpy(), theirs.asnumpy()) < 2e-6

    # And against float64 NumPy: the analytic gradient, not just agreement with another implementation.
    x64, g64 = x.astype(np.float64), sens.astype(np.float64)
    gamma = ours.gamma.asnumpy().astype(np.float64)
    normed = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + eps)
    assert rel_err(ours_y, normed * gamma + ours.beta.asnumpy().astype(np.float64)) < 2e-6
    dnormed = g64 * gamma
    dx = (dnormed - dnormed.mean(-1, keepdims=True) - normed * (dnormed * normed).mean(-1, keepdims=True)) / \
        np.sqrt(x64.var(-1, keepdims=True) + eps)
    assert rel_err(ours_dx.asnumpy(), dx) < 1e-5
    assert rel_err(ours_dparams[0].asnumpy(), (g64 * normed).reshape(-1, shape[-1]).sum(0)) < 1e-5
    assert rel_err(ours_dparams[1].asnumpy(), g64.reshape(-1, shape[-1]).sum(0)) < 1e-5


def test_layer_norm_is_still_an_nn_layernorm(graph_mode):
    """AMP keeps nn.LayerNorm in fp32 and the converter maps its weight/bias by that type; both must still apply."""
    norm = layer_norm(16, eps=1e-5)
    assert type(norm) is nn.LayerNorm and norm.epsilon == 1e-5
    assert [p.name for p in norm.get_parameters()] == ["gamma", "beta"]
    net = ms.amp.auto_mixed_precision(nn.SequentialCell([nn.Dense(16, 16), layer_norm(16)]), "O2")
    out = net(ms.Tensor(np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)))
    assert out.dtype == ms.float32 and np.isfinite(out.asnumpy()).all()
