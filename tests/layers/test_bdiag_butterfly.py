"""BlockdiagButterflyLinear against the butterfly fixture (apd10/ssl-baselines' layer, the bdiagbfly4x4 variant)."""
import json

import numpy as np
import pytest

import mindspore as ms

from mindcv_ext.layers import BlockdiagButterflyLinear
from tests.utils import assert_layer_matches_fixture, on_path, shared_fixture_dir


def _fixture():
    directory = shared_fixture_dir("ssl")
    case = json.loads((directory / "index.json").read_text())["layers"]["bdiagbfly_256x1024_4x4"]
    return case, np.load(directory / case["file"])


def test_output_and_gradients_match_the_reference(ms_mode, net_path):
    case, data = _fixture()
    layer = BlockdiagButterflyLinear(256, 1024, int(data["nblocks1"]), int(data["nblocks2"]), int(data["b1"]),
                                     int(data["b2"]))
    names = [p.name for p in layer.trainable_params()]
    assert names == ["w1_bfly", "w2_bfly", "bias"]
    assert tuple(layer.w1_bfly.shape) == (4, 192, 64) and tuple(layer.w2_bfly.shape) == (4, 256, 192)
    for name in names:
        getattr(layer, name).set_data(ms.Tensor(data["param_" + name]))
    layer = on_path(layer, net_path, has_twins=False)  # plain batched matmuls on both paths
    assert_layer_matches_fixture(layer, data, names)


def test_dense_form_is_the_readmes():
    """D[l*J + j, k*i + i_] = sum_y w2[j, l, k*b1 + y] * w1[k, j*b1 + y, i_], written out with loops."""
    _, data = _fixture()
    layer = BlockdiagButterflyLinear(256, 1024)
    w1, w2 = data["param_w1_bfly"], data["param_w2_bfly"]
    layer.w1_bfly.set_data(ms.Tensor(w1))
    layer.w2_bfly.set_data(ms.Tensor(w2))
    k_, j_, b1, i_ = 4, 4, 48, 64
    dense = np.zeros((1024, 256))
    for k in range(k_):
        for j in range(j_):
            dense[j::j_, k * i_:(k + 1) * i_] = w2[j, :, k * b1:(k + 1) * b1] @ w1[k, j * b1:(j + 1) * b1, :]
    np.testing.assert_allclose(layer.to_dense().asnumpy(), dense, atol=1e-6)
    x = data["x"].reshape(-1, 256)
    np.testing.assert_allclose(x @ dense.T + data["param_bias"], data["y"].reshape(-1, 1024), atol=1e-5, rtol=1e-5)


def test_b2_splits_the_second_factors_rows():
    layer = BlockdiagButterflyLinear(64, 64, nblocks1=2, nblocks2=2, b1=8, b2=4)
    assert tuple(layer.w2_bfly.shape) == (2, 32, 16)
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    np.testing.assert_allclose(layer(ms.Tensor(x)).asnumpy(), x @ layer.to_dense().asnumpy().T + layer.bias.asnumpy(),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kwargs,culprit", [
    (dict(in_features=102, out_features=64), "in_features (102) must be a multiple of nblocks1 (4)"),
    (dict(in_features=64, out_features=66), "out_features (66) must be a multiple of nblocks2 * b2 (4 * 1)"),
    (dict(in_features=64, out_features=64, b1=0), "b1 must be a positive integer, got 0"),
])
def test_bad_shapes_name_the_culprit(kwargs, culprit):
    with pytest.raises(ValueError) as info:
        BlockdiagButterflyLinear(**kwargs)
    assert culprit in str(info.value)
