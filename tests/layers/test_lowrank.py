"""LowRankLinear against the low-rank fixture (apd10/ssl-baselines' LowRankLinear, the lowrank8r variant)."""
import json

import numpy as np
import pytest

import mindspore as ms

from mindcv_ext.layers import LowRankLinear, lowrank_rank
from tests.utils import assert_layer_matches_fixture, on_path, shared_fixture_dir


def _fixture():
    directory = shared_fixture_dir("ssl")
    case = json.loads((directory / "index.json").read_text())["layers"]["lowrank_768x3072_r8"]
    return case, np.load(directory / case["file"])


def test_rank_rule_is_the_baselines():
    case, data = _fixture()
    assert lowrank_rank(768, 3072, case["redn_factor"]) == case["rank"] == int(data["rank"]) == 64
    assert lowrank_rank(3072, 768, 8) == 64 and lowrank_rank(768, 3072, 2) == 256
    with pytest.raises(ValueError, match="redn_factor 10000 leaves no rank for 768 -> 3072"):
        lowrank_rank(768, 3072, 10000)


def test_output_and_gradients_match_the_reference(ms_mode, net_path):
    case, data = _fixture()
    layer = LowRankLinear(768, 3072, rank=64)
    names = [p.name for p in layer.trainable_params()]
    assert names == ["w1", "w2", "bias"]
    for name in names:
        getattr(layer, name).set_data(ms.Tensor(data["param_" + name]))
    layer = on_path(layer, net_path, has_twins=False)  # plain matmuls on both paths
    assert_layer_matches_fixture(layer, data, names)
    dense = layer.to_dense().asnumpy()
    np.testing.assert_allclose(data["x"] @ dense.T + data["param_bias"], data["y"], atol=1e-5, rtol=1e-5)


def test_bad_rank_names_the_culprit():
    with pytest.raises(ValueError, match="LowRankLinear: rank must be a positive integer, got 0"):
        LowRankLinear(8, 8, 0)
