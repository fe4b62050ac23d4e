"""layers/weight_init.py: timm's initialisers in place, with their bounds, spreads and seeding."""
import math

import numpy as np
import pytest

import mindspore as ms

from mindcv_ext.engine.runtime import set_seed
from mindcv_ext.layers.weight_init import (constant_, lecun_normal_, normal_, orthogonal_, trunc_normal_,
                                           xavier_uniform_)


def _param(*shape, dtype=ms.float32):
    return ms.Parameter(ms.Tensor(np.zeros(shape), dtype), name="w")


def test_trunc_normal_is_cut_at_two_in_absolute_value_and_seeded():
    param = _param(200, 300)
    set_seed(0)
    trunc_normal_(param, std=1.5)  # std 1.5: a quarter of N(0, 1.5) lies beyond 2
    values = param.asnumpy()
    assert values.dtype == np.float32 and np.abs(values).max() <= 2.0
    assert 1.8 < np.abs(values).max() and 0.9 < values.std() < 1.2 and abs(values.mean()) < 0.02
    set_seed(0)
    trunc_normal_(param, std=1.5)
    np.testing.assert_array_equal(param.asnumpy(), values)  # set_seed makes a build repeatable
    trunc_normal_(param)  # the default std, 0.02: the cut never bites
    assert param.asnumpy().std() == pytest.approx(0.02, rel=0.02)


def test_normal_is_untruncated():
    param = _param(300, 300)
    normal_(param, std=2.0)
    values = param.asnumpy()
    assert values.std() == pytest.approx(2.0, rel=0.02) and np.abs(values).max() > 6.0


def test_lecun_normal_has_variance_one_over_fan_in():
    param = _param(64, 8, 5, 5)  # fan_in 8 * 5 * 5 = 200, the kernel included
    lecun_normal_(param)
    values = param.asnumpy()
    assert values.std() == pytest.approx(math.sqrt(1 / 200), rel=0.03)
    # cut at two standard deviations of the untruncated normal timm draws from
    assert np.abs(values).max() <= 2 * math.sqrt(1 / 200) / 0.87962566103423978 + 1e-7


def test_xavier_uniform_constant_and_orthogonal():
    param = _param(300, 100)
    xavier_uniform_(param)
    bound = math.sqrt(6 / (300 + 100))
    values = param.asnumpy()
    assert np.abs(values).max() <= bound and np.abs(values).max() > 0.95 * bound
    constant_(param, 0.5)
    assert (param.asnumpy() == 0.5).all() and param.asnumpy().dtype == np.float32
    square = _param(16, 16)
    orthogonal_(square, gain=2.0)
    w = square.asnumpy().astype(np.float64)
    np.testing.assert_allclose(w @ w.T, 4.0 * np.eye(16), atol=1e-5)


def test_the_parameters_dtype_is_kept():
    param = _param(10, 10, dtype=ms.float16)
    trunc_normal_(param, std=0.5)
    assert param.dtype == ms.float16 and np.abs(param.asnumpy()).max() <= 2.0
