"""MonarchLinear and BlockdiagLinear against fly's reference and against their own algebra."""
import filecmp

import numpy as np
import pytest

import mindspore as ms
from mindspore import amp, nn, ops

from mindcv_ext.layers import (
    BlockdiagLinear,
    MonarchLinear,
    monarch_factor_shapes,
    monarch_to_dense,
    project_to_monarch,
)
from tests.utils import TEST_DATA, on_path, rel_err, shared_fixture_dir

FIXTURES = sorted((TEST_DATA / "monarch").glob("*.npz"))
TOL = 1e-5


def test_fixture_copies_are_current():
    """tests/data holds byte-identical copies of every shared Monarch fixture."""
    shared = sorted(shared_fixture_dir("monarch").glob("*.npz"))
    assert [p.name for p in shared] == [p.name for p in FIXTURES]
    for src in shared:
        assert filecmp.cmp(src, TEST_DATA / "monarch" / src.name, shallow=False), src.name


class _WeightedSum(nn.Cell):
    """The fixtures' loss: sum(layer(x) * grad_out)."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def construct(self, x, grad_out):
        return (self.layer(x) * grad_out).sum()


class _Grads(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.weights = ms.ParameterTuple(net.trainable_params())
        self.grad = ops.GradOperation(get_all=True, get_by_list=True)

    def construct(self, x, grad_out):
        return self.grad(self.net, self.weights)(x, grad_out)


def _layer_from_fixture(data) -> MonarchLinear:
    layer = MonarchLinear(int(data["in_features"]), int(data["out_features"]), nblocks=int(data["nblocks"]),
                          has_bias=bool(data["bias_flag"]))
    layer.blkdiag1.set_data(ms.Tensor(data["param_blkdiag1"]))
    layer.blkdiag2.set_data(ms.Tensor(data["param_blkdiag2"]))
    if data["bias_flag"]:
        layer.bias.set_data(ms.Tensor(data["param_bias"]))
    return layer


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_matches_fly_forward_and_backward(path, ms_mode, net_path):
    data = np.load(path)
    layer = on_path(_layer_from_fixture(data), net_path)
    assert layer.blkdiag1.shape == data["param_blkdiag1"].shape
    assert layer.blkdiag2.shape == data["param_blkdiag2"].shape
    x, grad_out = ms.Tensor(data["x"]), ms.Tensor(data["grad_out"])

    y = layer(x).asnumpy()
    assert y.shape == data["y"].shape
    assert rel_err(y, data["y"]) <= TOL

    input_grads, param_grads = _Grads(_WeightedSum(layer))(x, grad_out)
    assert rel_err(input_grads[0].asnumpy(), data["grad_x"]) <= TOL
    names = [p.name for p in layer.trainable_params()]
    expected = ["blkdiag1", "blkdiag2"] + (["bias"] if data["bias_flag"] else [])
    assert [n.rsplit(".", 1)[-1] for n in names] == expected
    for name, grad in zip(expected, param_grads):
        assert rel_err(grad.asnumpy(), data[f"grad_{name}"]) <= TOL, name


@pytest.mark.parametrize("in_features,out_features,nblocks,shape1,shape2", [
    (768, 3072, 4, (4, 192, 192), (4, 768, 192)),
    (3072, 768, 4, (4, 192, 768), (4, 192, 192)),
    (768, 2304, 4, (4, 192, 192), (4, 576, 192)),
    (196, 384, 16, (16, 13, 13), (16, 24, 13)),
    (384, 196, 16, (16, 13, 24), (16, 13, 13)),
])
def test_factor_shapes_follow_fly(in_features, out_features, nblocks, shape1, shape2):
    assert monarch_factor_shapes(in_features, out_features, nblocks) == (shape1, shape2)
    layer = MonarchLinear(in_features, out_features, nblocks)
    assert layer.blkdiag1.shape == shape1 and layer.blkdiag2.shape == shape2
    assert layer.bias.shape == (out_features,)


def test_initialisation_bounds():
    layer = MonarchLinear(300, 100, nblocks=4)  # blkdiag1 (4, 25, 75), blkdiag2 (4, 25, 25)
    for param, fan_in in ((layer.blkdiag1, 75), (layer.blkdiag2, 25), (layer.bias, 100)):
        values = param.asnumpy()
        bound = 1.0 / np.sqrt(fan_in)
        assert np.abs(values).max() <= bound
        # A uniform draw fills its range: the extremes come close to the bound.
        assert np.abs(values).max() > 0.9 * bound
        assert abs(values.std() - bound / np.sqrt(3)) < 0.15 * bound


@pytest.mark.parametrize("in_features,out_features,nblocks", [(100, 300, 4), (30, 50, 4), (50, 30, 8)])
def test_leading_dimensions_and_padding(in_features, out_features, nblocks, rng, ms_mode):
    layer = MonarchLinear(in_features, out_features, nblocks)
    x3 = rng.standard_normal((2, 7, in_features)).astype(np.float32)
    y3 = layer(ms.Tensor(x3)).asnumpy()
    y2 = layer(ms.Tensor(x3.reshape(14, in_features))).asnumpy()
    assert y3.shape == (2, 7, out_features) and y2.shape == (14, out_features)
    np.testing.assert_allclose(y3.reshape(14, out_features), y2, rtol=1e-6, atol=1e-6)
    expected = x3 @ layer.to_dense().asnumpy().T + layer.bias.asnumpy()
    assert rel_err(y3, expected) <= TOL


@pytest.mark.parametrize("in_features,out_features,nblocks", [(64, 256, 4), (128, 128, 16), (30, 50, 4)])
def test_to_dense_agrees_with_forward_on_identity(in_features, out_features, nblocks):
    layer = MonarchLinear(in_features, out_features, nblocks, has_bias=False)
    through_forward = layer(ms.Tensor(np.eye(in_features, dtype=np.float32))).asnumpy().T
    dense = layer.to_dense().asnumpy()
    assert dense.shape == (out_features, in_features)
    assert rel_err(dense, through_forward) <= TOL


def test_square_case_is_papers_P_L_Pt_R(rng):
    """With k = l = q = p = m and n = m^2, W = P . BD(blkdiag2) . P^T . BD(blkdiag1) (the paper's M = PLP^T R)."""
    m = 4
    w1 = rng.standard_normal((m, m, m))
    w2 = rng.standard_normal((m, m, m))
    perm = np.eye(m * m)[np.arange(m * m).reshape(m, m).T.reshape(-1)]  # reshape m x m, transpose

    def block_diag(blocks):
        out = np.zeros((m * m, m * m))
        for i, blk in enumerate(blocks):
            out[i * m:(i + 1) * m, i * m:(i + 1) * m] = blk
        return out

    expected = perm @ block_diag(w2) @ perm.T @ block_diag(w1)
    np.testing.assert_allclose(monarch_to_dense(w1, w2, m * m, m * m), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("in_features,out_features,nblocks", [
    (64, 256, 4), (256, 64, 4), (96, 96, 8), (128, 128, 16), (100, 300, 4), (196, 384, 16), (30, 50, 4),
])
def test_projection_recovers_monarch_and_is_idempotent(in_features, out_features, nblocks):
    layer = MonarchLinear(in_features, out_features, nblocks)
    dense = layer.to_dense().asnumpy()
    w1, w2 = project_to_monarch(dense, nblocks)
    assert w1.shape == layer.blkdiag1.shape and w2.shape == layer.blkdiag2.shape
    projected = monarch_to_dense(w1, w2, in_features, out_features)
    assert np.linalg.norm(projected - dense) <= 1e-4 * np.linalg.norm(dense)

    rng = np.random.default_rng(0)
    random_dense = rng.standard_normal((out_features, in_features))
    once = monarch_to_dense(*project_to_monarch(random_dense, nblocks), in_features, out_features)
    twice = monarch_to_dense(*project_to_monarch(once, nblocks), in_features, out_features)
    assert np.linalg.norm(twice - once) <= 1e-4 * np.linalg.norm(once)


@pytest.mark.parametrize("in_features,out_features,nblocks", [(64, 256, 4), (96, 96, 8), (100, 300, 4), (30, 50, 4)])
def test_projection_beats_random_monarch_matrices(in_features, out_features, nblocks):
    rng = np.random.default_rng(7)
    dense = rng.standard_normal((out_features, in_features))
    approx = monarch_to_dense(*project_to_monarch(dense, nblocks), in_features, out_features)
    error = np.linalg.norm(dense - approx)
    assert error < np.linalg.norm(dense)  # it captures something
    shape1, shape2 = monarch_factor_shapes(in_features, out_features, nblocks)
    for _ in range(20):
        other = monarch_to_dense(rng.standard_normal(shape1), rng.standard_normal(shape2), in_features, out_features)
        scale = np.vdot(dense, other) / np.vdot(other, other)  # best scalar multiple of this Monarch matrix
        assert error < np.linalg.norm(dense - scale * other)


def test_from_dense_builds_a_layer_with_the_projection(rng):
    source = MonarchLinear(64, 256, nblocks=4)
    dense = source.to_dense().asnumpy()
    bias = rng.standard_normal(256).astype(np.float32)
    layer = MonarchLinear.from_dense(dense, bias, nblocks=4)
    assert isinstance(layer, MonarchLinear) and layer.blkdiag2.shape == (4, 64, 16)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    assert rel_err(layer(ms.Tensor(x)).asnumpy(), x @ dense.T + bias) <= 1e-4
    error = layer.load_dense(dense)
    assert error < 1e-5
    np.testing.assert_array_equal(layer.bias.asnumpy(), bias)  # no bias given: the old one stays


def test_amp_o2_factors_are_cast_to_the_input_dtype(graph_mode, rng):
    layer = MonarchLinear(64, 256, nblocks=4)
    x = rng.standard_normal((4, 64)).astype(np.float32)
    y32 = layer(ms.Tensor(x)).asnumpy()
    y16 = layer(ms.Tensor(x, ms.float16))
    assert y16.dtype == ms.float16
    assert layer.blkdiag1.dtype == ms.float32
    assert rel_err(y16.asnumpy(), y32) < 1e-2


class _MonarchMLP(nn.Cell):
    def __init__(self):
        super().__init__()
        self.fc1 = MonarchLinear(64, 256, nblocks=4)
        self.act = nn.GELU(approximate=False)
        self.fc2 = MonarchLinear(256, 10, nblocks=4)

    def construct(self, x):
        return self.fc2(self.act(self.fc1(x)))


def test_monarch_mlp_trains_under_amp_o2_in_graph_mode(graph_mode, rng):
    ms.set_seed(0)
    net = _MonarchMLP()
    inputs = ms.Tensor(rng.standard_normal((32, 64)).astype(np.float32))
    labels = ms.Tensor(rng.integers(0, 10, 32).astype(np.int32))
    optimizer = nn.Adam(net.trainable_params(), learning_rate=1e-2)
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    # CPU supports only a fixed loss scale without overflow skipping in build_train_network.
    train_step = amp.build_train_network(net, optimizer, loss_fn, level="O2",
                                         loss_scale_manager=amp.FixedLossScaleManager(
                                             128.0, drop_overflow_update=False))
    losses = [float(train_step(inputs, labels).asnumpy()) for _ in range(6)]
    assert all(np.isfinite(losses))
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.8 * losses[0]
    assert net.fc1.blkdiag1.dtype == ms.float32  # master weights stay fp32


@pytest.mark.parametrize("kwargs,culprit", [
    (dict(in_features=64, out_features=64, nblocks=0), "nblocks must be a positive integer, got 0"),
    (dict(in_features=64, out_features=64, nblocks=-2), "nblocks must be a positive integer, got -2"),
    (dict(in_features=64, out_features=64, nblocks=2.5), "nblocks must be a positive integer, got 2.5"),
    (dict(in_features=64, out_features=64, nblocks="4"), "nblocks must be a positive integer, got '4'"),
    (dict(in_features=64, out_features=64, nblocks=True), "nblocks must be a positive integer, got True"),
    (dict(in_features=0, out_features=64), "in_features must be a positive integer, got 0"),
    (dict(in_features=64, out_features=-1), "out_features must be a positive integer, got -1"),
    (dict(in_features=64.0, out_features=64), "in_features must be a positive integer, got 64.0"),
])
@pytest.mark.parametrize("cls", [MonarchLinear, BlockdiagLinear])
def test_invalid_arguments_name_the_culprit(cls, kwargs, culprit):
    with pytest.raises(ValueError) as info:
        cls(**kwargs)
    assert culprit in str(info.value)
    assert cls.__name__ in str(info.value)


def test_wrong_projected_weight_shape_names_both_shapes():
    layer = MonarchLinear(64, 256, nblocks=4)
    with pytest.raises(ValueError, match=r"weight must have shape \(256, 64\).*got \(64, 256\)"):
        layer.load_dense(np.zeros((64, 256)))
    with pytest.raises(ValueError, match=r"bias must have shape \(256,\), got \(64,\)"):
        layer.load_dense(np.zeros((256, 64)), np.zeros(64))
    with pytest.raises(ValueError, match=r"2-D .* got shape \(4, 4, 4\)"):
        MonarchLinear.from_dense(np.zeros((4, 4, 4)))
    with pytest.raises(ValueError, match=r"2-D .* got shape \(16,\)"):
        project_to_monarch(np.zeros(16), 4)
    with pytest.raises(ValueError, match="nblocks must be a positive integer, got 0"):
        project_to_monarch(np.zeros((8, 8)), 0)
    no_bias = MonarchLinear(64, 256, has_bias=False)
    with pytest.raises(ValueError, match="has_bias=False"):
        no_bias.load_dense(np.zeros((256, 64)), np.zeros(256))


@pytest.mark.parametrize("in_features,out_features,nblocks", [(64, 256, 4), (30, 50, 4)])
def test_blockdiag_linear_is_block_diagonal(in_features, out_features, nblocks, rng, ms_mode):
    layer = BlockdiagLinear(in_features, out_features, nblocks)
    in_blk, out_blk = -(-in_features // nblocks), -(-out_features // nblocks)
    assert layer.weight.shape == (nblocks, out_blk, in_blk)
    weight = layer.weight.asnumpy()
    dense = np.zeros((nblocks * out_blk, nblocks * in_blk), dtype=np.float32)
    for b in range(nblocks):
        dense[b * out_blk:(b + 1) * out_blk, b * in_blk:(b + 1) * in_blk] = weight[b]
    dense = dense[:out_features, :in_features]
    np.testing.assert_array_equal(layer.to_dense().asnumpy(), dense)
    x = rng.standard_normal((2, 3, in_features)).astype(np.float32)
    y = layer(ms.Tensor(x)).asnumpy()
    assert y.shape == (2, 3, out_features)
    assert rel_err(y, x @ dense.T + layer.bias.asnumpy()) <= TOL
    assert np.abs(weight).max() <= 1.0 / np.sqrt(in_blk)
