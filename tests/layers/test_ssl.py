"""SketchStructuredLinear against the SSL fixtures (kimiasa/SSLinear's layer), on both paths, and its hash."""
import json

import numpy as np
import pytest

import mindspore as ms
from mindspore import amp

from mindcv_ext.layers import SketchStructuredLinear, ssl_index_map, ssl_shift_table
from mindcv_ext.layers.ssl import ssl_random_numbers, ssl_to_dense
from tests.utils import SensGrads, on_path, shared_fixture_dir

CASES = ["ssl_64x256_r2", "ssl_256x64_r4", "ssl_768x768_r8"]


def _fixture(name):
    directory = shared_fixture_dir("ssl")
    index = json.loads((directory / "index.json").read_text())
    return index["layers"][name], np.load(directory / index["layers"][name]["file"])


def _layer(case, data, has_bias=False):
    layer = SketchStructuredLinear(case["in_features"], case["out_features"], case["redn_factor"], case["seed"],
                                   has_bias=has_bias)
    assert tuple(layer.weight.shape) == tuple(case["weight_shape"])
    layer.weight.set_data(ms.Tensor(data["param_weight"]))
    if has_bias:
        layer.bias.set_data(ms.Tensor(data["param_bias"]))
    return layer


def test_every_ssl_case_file_is_tested():
    directory = shared_fixture_dir("ssl")
    index = json.loads((directory / "index.json").read_text())
    assert sorted(name for name, case in index["layers"].items() if case["kind"] == "ssl") == sorted(CASES)


@pytest.mark.parametrize("name", CASES)
def test_output_and_gradients_match_the_reference(name, ms_mode, net_path):
    case, data = _fixture(name)
    layer = on_path(_layer(case, data), net_path)
    x, grad_out = ms.Tensor(data["x"]), ms.Tensor(data["grad_out"])
    tol = dict(atol=case["atol"], rtol=case["rtol"])
    np.testing.assert_allclose(layer(x).asnumpy(), data["y"], **tol)
    (grad_x,), (grad_w,) = SensGrads(layer)(x, grad_out)
    np.testing.assert_allclose(grad_x.asnumpy(), data["grad_x"], **tol)
    np.testing.assert_allclose(grad_w.asnumpy(), data["grad_weight"], **tol)
    assert layer.saving == pytest.approx(case["compression"])


def test_optional_bias_matches_y_with_bias(net_path):
    case, data = _fixture("ssl_64x256_r2")
    layer = on_path(_layer(case, data, has_bias=True), net_path)
    x, grad_out = ms.Tensor(data["x"]), ms.Tensor(data["grad_out"])
    np.testing.assert_allclose(layer(x).asnumpy(), data["y_with_bias"], atol=1e-5, rtol=1e-5)
    (grad_x,), (grad_w, grad_b) = SensGrads(layer)(x, grad_out)
    np.testing.assert_allclose(grad_b.asnumpy(), data["grad_bias"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(grad_w.asnumpy(), data["grad_weight"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", CASES)
def test_hash_shifts_and_index_map_are_the_references(name):
    case, data = _fixture(name)
    k, n, c = case["in_features"], case["out_features"], case["redn_factor"]
    # torch.Generator().manual_seed(1024), torch.randint(1, 46192, (4,)), 2r + 1, without torch.
    assert list(ssl_random_numbers(1024)) == list(data["random_numbers"]) == case["random_numbers"]
    np.testing.assert_array_equal(ssl_shift_table(k, n, c), data["shift_table"])
    np.testing.assert_array_equal(ssl_index_map(k, n, c), data["idx_map"])
    if "idx_flat" in data:
        np.testing.assert_array_equal(ssl_index_map(k, n, c) * n + np.arange(n), data["idx_flat"])
    if "dense_weight" in data:
        np.testing.assert_array_equal(ssl_to_dense(data["param_weight"], c), data["dense_weight"])


def test_no_dense_weight_is_ever_formed():
    """No tensor the layer holds (parameters, the gather index) is larger than the compressed weight."""
    layer = SketchStructuredLinear(768, 3072, redn_factor=4)
    sizes = [p.size for p in layer.get_parameters()] + [layer.weight_index.size]
    assert max(sizes) == 3072 * 768 // 4


@pytest.mark.parametrize("kwargs,culprit", [
    (dict(in_features=100, out_features=256), "in_features (100) must be a multiple of 32 * redn_factor (64)"),
    (dict(in_features=64, out_features=256, redn_factor=4),
     "in_features (64) must be a multiple of 32 * redn_factor (128)"),
    (dict(in_features=64, out_features=300), "out_features (300) must be a multiple of 64"),
    (dict(in_features=64, out_features=256, redn_factor=3), "redn_factor must be a power of two, got 3"),
    (dict(in_features=64, out_features=0), "out_features must be a positive integer, got 0"),
])
def test_shapes_the_reference_cannot_express_are_refused(kwargs, culprit):
    with pytest.raises(ValueError) as info:
        SketchStructuredLinear(**kwargs)
    assert culprit in str(info.value)


def test_leading_dimensions_and_amp_o2():
    layer = SketchStructuredLinear(128, 128, redn_factor=2)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 128)).astype(np.float32)
    y = layer(ms.Tensor(x)).asnumpy()
    np.testing.assert_allclose(y, x @ layer.to_dense().asnumpy().T, atol=1e-5, rtol=1e-5)
    half = amp.auto_mixed_precision(layer, "O2")(ms.Tensor(x)).asnumpy()
    assert not np.array_equal(half, y)  # computed in fp16 (O2 returns fp32)
    np.testing.assert_allclose(half, y, atol=2e-2, rtol=2e-2)
