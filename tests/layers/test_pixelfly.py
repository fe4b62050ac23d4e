"""Pixelfly (SparseLRLinear) against fly's outputs and gradients, and its layout and init against fly's rules."""
import json

import numpy as np
import pytest

import mindspore as ms

from mindcv_ext.layers.pixelfly import (BlockSparseLinear, PixelflyMlp, SparseLRLinear, _diagonal_groups,
                                        butterfly_base_mask,
                                        flat_block_butterfly_layout, leading_svd)
from tests.utils import SensGrads, on_path, shared_fixture_dir

CASES = ["sparselr_256x1024_b32_bf8_nf2_r32.npz", "sparselr_1024x256_b32_bf8_nf2_r32.npz",
         "sparselr_128x512_b32_bf8_nf2_r32.npz", "sparselr_100x300_b32_bf8_nf2_r32.npz"]
PARAMS = ["bias", "sparse.weight", "low_rank.lr_weight1", "low_rank.lr_weight2", "gate.weight", "gate.bias"]


def _index():
    directory = shared_fixture_dir("pixelfly", "layers")
    return directory, json.loads((directory / "index.json").read_text())


def _layer_from_fixture(data, case):
    layer = SparseLRLinear(case["in_features"], case["out_features"], case["butterfly_size"], case["n_factors"],
                           case["block"], case["rank"], case["gating"])
    np.testing.assert_array_equal(layer.sparse.layout.asnumpy(), data["sparse.layout"])  # recomputed, not loaded
    for name in PARAMS:
        param = dict(layer.parameters_and_names())[name]
        assert tuple(param.shape) == data[name].shape, name
        param.set_data(ms.Tensor(data[name]))
    return layer


def test_every_case_file_is_tested():
    directory, index = _index()
    assert sorted(p.name for p in directory.glob("*.npz")) == sorted(CASES)


@pytest.mark.parametrize("name", CASES)
def test_output_and_gradients_match_fly(name, ms_mode, net_path):
    directory, index = _index()
    case = index["cases"][name]
    data = np.load(directory / name)
    unpadded = case["in_features"] % case["block"] == 0 and case["out_features"] % case["block"] == 0
    layer = on_path(_layer_from_fixture(data, case), net_path, has_twins=unpadded)  # a padded layer stays plain
    assert sum(p.size for p in layer.trainable_params()) == case["num_params"]
    assert layer.saving == pytest.approx(case["saving"])
    x, grad_out = ms.Tensor(data["x"]), ms.Tensor(data["grad_out"])
    tol = case["recommended_atol_rtol"]
    np.testing.assert_allclose(layer(x).asnumpy(), data["y"], atol=tol["y"], rtol=tol["y"])
    names = [p.name for p in layer.trainable_params()]  # before SensGrads prefixes them
    grads_x, grads_w = SensGrads(layer)(x, grad_out)
    np.testing.assert_allclose(grads_x[0].asnumpy(), data["grad_x"], atol=tol["grad_x"], rtol=tol["grad_x"])
    for param_name, grad in zip(names, grads_w):
        key = "grad." + param_name
        np.testing.assert_allclose(grad.asnumpy(), data[key], atol=tol[key], rtol=tol[key], err_msg=key)


@pytest.mark.parametrize("name", CASES)
def test_layout_and_densified_weight(name):
    directory, index = _index()
    case = index["cases"][name]
    data = np.load(directory / name)
    np.testing.assert_array_equal(butterfly_base_mask(8, 2), data["butterfly_base_mask"].astype(bool))
    layout = flat_block_butterfly_layout(case["out_features_extended"], case["in_features_extended"], 8, 2, 32)
    np.testing.assert_array_equal(layout, data["layout"])
    layer = _layer_from_fixture(data, case)
    np.testing.assert_array_equal(layer.sparse.dense_weight().asnumpy(), data["sparse_dense_weight"])


def test_butterfly_base_mask_rows():
    mask = butterfly_base_mask(8, 2)
    assert [list(np.flatnonzero(row)) for row in mask[:4]] == [[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]]
    np.testing.assert_array_equal(mask[4:, 4:], mask[:4, :4])
    assert (mask.sum(axis=1) == 3).all() and not mask[:4, 4:].any()
    assert (butterfly_base_mask(16, 4).sum(axis=1) == 5).all()


def test_mixer_b_layout_density_is_three_eighths():
    layout = flat_block_butterfly_layout(3072, 768, 8, 2, 32)
    assert layout.shape == (96, 24) and layout.sum() == 864
    np.testing.assert_array_equal(layout, np.kron(butterfly_base_mask(8, 2), np.ones((12, 3))).astype(np.int32))


KRON = np.kron(butterfly_base_mask(8, 2), np.ones((2, 3))).astype(np.int32)  # a mask block diagonal in 2 groups
CYCLIC = np.kron(np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1]]), np.ones((2, 2))).astype(np.int32)  # no groups
IRREGULAR = np.array([[1, 0, 1], [1, 1, 1], [0, 0, 1], [1, 1, 0]], np.int32)


@pytest.mark.parametrize("layout,product,chosen", [
    (KRON.T.copy(), "auto", "block_diagonal"),  # in <= out
    (KRON, "auto", "block_diagonal"),  # in > out
    (KRON, "densify", "densify"),
    (CYCLIC, "auto", "densify"),
    (IRREGULAR, "auto", "densify"),
])
def test_block_sparse_products_equal_the_dense_weight(layout, product, chosen, ms_mode):
    block = 4
    out_ext, in_ext = layout.shape[0] * block, layout.shape[1] * block
    cell = BlockSparseLinear(in_ext, out_ext, layout, block, product=product)
    assert cell.product == chosen
    rng = np.random.default_rng(0)
    cell.weight.set_data(ms.Tensor(rng.standard_normal(cell.weight.shape).astype(np.float32)))
    dense = cell.dense_weight().asnumpy()
    assert (dense.reshape(layout.shape[0], block, layout.shape[1], block).any(axis=(1, 3)) == layout.astype(bool)).all()
    x = rng.standard_normal((5, in_ext)).astype(np.float32)
    np.testing.assert_allclose(cell(ms.Tensor(x)).asnumpy(), x @ dense.T, atol=1e-5)
    # gradients of every product agree with the densified one
    grad_out = ms.Tensor(rng.standard_normal((5, out_ext)).astype(np.float32))
    reference = BlockSparseLinear(in_ext, out_ext, layout, block, product="densify")
    reference.weight.set_data(cell.weight.data.copy())
    for a, b in zip(SensGrads(cell)(ms.Tensor(x), grad_out)[1], SensGrads(reference)(ms.Tensor(x), grad_out)[1]):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), atol=1e-4)


def test_a_product_the_layout_cannot_take_is_refused():
    with pytest.raises(ValueError, match="'block_diagonal' needs a layout kron"):
        BlockSparseLinear(12, 12, CYCLIC, 2, product="block_diagonal")


def test_butterfly_masks_split_into_diagonal_groups():
    # fly's flat butterfly with f factors stays inside groups of 2**f base rows
    assert _diagonal_groups(butterfly_base_mask(8, 2)) == 2
    assert _diagonal_groups(butterfly_base_mask(16, 2)) == 4
    assert _diagonal_groups(butterfly_base_mask(8, 3)) == 0  # one group: the densified product
    assert _diagonal_groups(CYCLIC) == 0
    cell = SparseLRLinear(768, 3072).sparse
    assert cell.product == "block_diagonal" and cell.groups == 2


@pytest.mark.parametrize("kwargs,culprit", [
    (dict(butterfly_size=6), "butterfly_size must be a power of 2"),
    (dict(n_factors=4), "n_factors must be at most log2(butterfly_size) = 3"),
    (dict(block=0), "block must be a positive integer, got 0"),
    (dict(rank=0), "rank must be a positive integer, got 0"),
])
def test_bad_settings_name_the_culprit(kwargs, culprit):
    with pytest.raises(ValueError) as info:
        SparseLRLinear(256, 1024, **kwargs)
    assert culprit in str(info.value)


def test_leading_dimensions_and_amp_o2():
    layer = SparseLRLinear(100, 300)
    x = ms.Tensor(np.random.default_rng(0).standard_normal((2, 3, 100)).astype(np.float32))
    expected = layer(x).asnumpy()
    assert expected.shape == (2, 3, 300)
    half = ms.amp.auto_mixed_precision(layer, "O2")
    y = half(x).asnumpy()
    assert not np.array_equal(y, expected)  # computed in fp16 (O2 returns fp32)
    np.testing.assert_allclose(y, expected, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("shape", [(300, 70), (70, 300)])
def test_leading_svd_equals_numpy_svd(shape):
    matrix = np.random.default_rng(3).uniform(-1, 1, shape)
    u, s, vt = leading_svd(matrix, 32)
    u_ref, s_ref, vt_ref = np.linalg.svd(matrix, full_matrices=False)
    assert u.shape == (shape[0], 32) and vt.shape == (32, shape[1])
    np.testing.assert_allclose(s, s_ref[:32], rtol=1e-10)
    np.testing.assert_allclose(u.T @ u, np.eye(32), atol=1e-10)
    np.testing.assert_allclose(vt @ vt.T, np.eye(32), atol=1e-10)
    # The best rank-32 approximation is unique here (distinct singular values), whatever the signs.
    np.testing.assert_allclose((u * s) @ vt, (u_ref[:, :32] * s_ref[:32]) @ vt_ref[:32], atol=1e-10)


def test_mixer_init_uses_dense_xavier_projections():
    layer = SparseLRLinear(256, 1024)
    layer.set_weights_from_dense_init()
    bound = np.sqrt(6 / (256 + 1024))
    assert np.abs(layer.sparse.weight.asnumpy()).max() <= bound * np.sqrt(8 / 3) + 1e-6  # rows scaled by sqrt(8/3)
    low_rank = layer.low_rank.lr_weight2.asnumpy() @ layer.low_rank.lr_weight1.asnumpy()
    assert np.linalg.matrix_rank(low_rank) == 32 and np.abs(layer.bias.asnumpy()).max() < 1e-4


def _densified_twin(layer: SparseLRLinear) -> SparseLRLinear:
    """The same layer (same Parameter objects) with the sparse product densified: the reference for the tiles."""
    twin = SparseLRLinear(layer.in_features, layer.out_features, rank=layer.rank, gating=layer.gating)
    sparse = BlockSparseLinear(layer.in_ext, layer.out_ext, layer.sparse.layout_array, layer.sparse.block,
                               product="densify")
    sparse.weight = layer.sparse.weight
    twin.sparse, twin.low_rank, twin.gate, twin.bias = sparse, layer.low_rank, layer.gate, layer.bias
    return twin


@pytest.mark.parametrize("in_f,out_f,gating", [(250, 1000, True), (1000, 250, True), (256, 1024, False),
                                               (1024, 256, False)])
def test_tiled_forms_equal_the_densified_layer(in_f, out_f, gating, ms_mode):
    # padded sizes and the ungated layer, both mixing sides (the fixtures cover the unpadded gated ones)
    layer = SparseLRLinear(in_f, out_f, gating=gating)
    assert layer.tiled
    twin = _densified_twin(layer)
    assert not twin.tiled
    rng = np.random.default_rng(1)
    layer.bias.set_data(ms.Tensor(rng.standard_normal(out_f).astype(np.float32)))
    x = ms.Tensor(rng.standard_normal((7, in_f)).astype(np.float32))
    sens = ms.Tensor(rng.standard_normal((7, out_f)).astype(np.float32))
    np.testing.assert_allclose(layer(x).asnumpy(), twin(x).asnumpy(), rtol=1e-5, atol=1e-5)
    got, want = SensGrads(layer)(x, sens), SensGrads(twin)(x, sens)
    np.testing.assert_allclose(got[0][0].asnumpy(), want[0][0].asnumpy(), rtol=1e-5, atol=1e-5)
    names = [p.name for p in layer.trainable_params()]
    assert names == [p.name for p in twin.trainable_params()]
    for name, a, b in zip(names, got[1], want[1]):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), rtol=1e-5, atol=1e-4, err_msg=name)


def test_pixelfly_mlp_hands_the_hidden_activation_over_as_tiles(ms_mode):
    mlp = PixelflyMlp(256, 1024, linear_layer=SparseLRLinear)
    in_order = PixelflyMlp(256, 1024, linear_layer=SparseLRLinear)
    ms.load_param_into_net(in_order, {p.name: p for p in mlp.get_parameters()})
    assert mlp.hidden_as_tiles
    in_order.hidden_as_tiles = False  # fc1, GELU and fc2 one after the other, each in token order
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.standard_normal((2, 5, 256)).astype(np.float32))
    sens = ms.Tensor(rng.standard_normal((2, 5, 256)).astype(np.float32))
    np.testing.assert_allclose(mlp(x).asnumpy(), in_order(x).asnumpy(), rtol=1e-5, atol=1e-5)
    got, want = SensGrads(mlp)(x, sens), SensGrads(in_order)(x, sens)
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), rtol=1e-5, atol=1e-4)
    # padded: the densified product, token order
    assert not PixelflyMlp(100, 300, linear_layer=SparseLRLinear).hidden_as_tiles
