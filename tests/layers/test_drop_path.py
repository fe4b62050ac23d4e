"""layers/drop_path.py: stochastic depth drops whole samples' branches in training, scales the kept ones by
1 / (1 - p), and leaves evaluation alone."""
import numpy as np
import pytest

import mindspore as ms

from mindcv_ext.layers import DropPath


def test_training_drops_whole_samples_and_scales_the_rest(ms_mode):
    ms.set_seed(0)
    drop = DropPath(0.25)
    drop.set_train(True)
    x = np.random.default_rng(0).uniform(1.0, 2.0, (400, 3, 5)).astype(np.float32)
    y = drop(ms.Tensor(x)).asnumpy()
    scale = y / x  # per element: 0 or 1 / 0.75
    kept = np.isclose(scale, 1 / 0.75, rtol=1e-6)
    assert (kept | (scale == 0)).all()
    assert (kept.all(axis=(1, 2)) | ~kept.any(axis=(1, 2))).all()  # a sample is kept or dropped as a whole
    assert 0.18 < 1 - kept[:, 0, 0].mean() < 0.32  # about a quarter of the 400 samples dropped


def test_evaluation_and_zero_probability_pass_the_input_through():
    x = ms.Tensor(np.arange(12, dtype=np.float32).reshape(2, 3, 2))
    drop = DropPath(0.5)
    drop.set_train(False)
    np.testing.assert_array_equal(drop(x).asnumpy(), x.asnumpy())
    none = DropPath(0.0)
    none.set_train(True)
    np.testing.assert_array_equal(none(x).asnumpy(), x.asnumpy())
    assert "drop_prob=0.5" in repr(drop)


@pytest.mark.parametrize("prob", [-0.1, 1.0, 1.5])
def test_a_probability_outside_zero_to_one_is_refused(prob):
    with pytest.raises(ValueError, match=rf"DropPath: drop_prob must be in \[0, 1\), got {prob}"):
        DropPath(prob)
