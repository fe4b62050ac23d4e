"""BlockTTLinear against compute-better-spent's btt / btt_norm layers (../shared/fixtures/btt) and in the models."""
import hashlib
import json

import numpy as np
import pytest

import mindspore as ms
from mindspore import nn, ops

from mindcv_ext.accel import accelerate, accelerated_cells
from mindcv_ext.engine.early_exit import use_all_exits
from mindcv_ext.layers import DenseLinear, create_mlp, layer_settings, linear_layer, registered_linears
from mindcv_ext.layers.btt import BlockTTLinear, btt_core_shapes, btt_factorize
from mindcv_ext.models import create_model
from tests.utils import (SensGrads, assert_layer_matches_fixture, assert_within_tolerance, on_path,
                         shared_fixture_dir)

# The README's file list; test_fixture_files_are_the_listed_ones checks the folder against it.
CASES = ["btt_768x3072_r1", "btt_768x3072_r4", "btt_3072x768_r1", "btt_768x3072_r1_nobias", "btt_64x96_r2",
         "btt_64x96_r2_nobias", "btt_40x90_r3", "bttnorm_768x3072_r4", "bttnorm_3072x768_r4", "bttnorm_40x90_r3"]
ATOL = RTOL = 1e-5


def _load(case: str):
    return np.load(shared_fixture_dir("btt") / f"{case}.npz")


def _layer_for(data) -> BlockTTLinear:
    layer = BlockTTLinear(int(data["d_in"]), int(data["d_out"]), tt_rank=int(data["rank"]),
                          normalize=bool(data["normalize"]), learn_gamma=bool(data["learn_gamma"]),
                          has_bias=bool(data["has_bias"]))
    for param in layer.get_parameters():
        param.set_data(ms.Tensor(data[param.name]))
    return layer


def test_fixture_files_are_the_listed_ones():
    directory = shared_fixture_dir("btt")
    manifest = json.loads((directory / "manifest.json").read_text())
    assert sorted(p.stem for p in directory.glob("*.npz")) == sorted(CASES) == sorted(manifest["cases"])
    for case in CASES:
        digest = hashlib.sha256((directory / f"{case}.npz").read_bytes()).hexdigest()
        assert digest == manifest["cases"][case]["sha256"], case


@pytest.mark.parametrize("width,factors", [(768, (16, 48)), (3072, (32, 96)), (64, (8, 8)), (96, (8, 12)),
                                           (40, (4, 10)), (90, (6, 15)), (256, (16, 16)), (2304, (48, 48)),
                                           (12, (2, 6)), (4, (2, 2)), (97, (1, 97)), (1, (1, 1))])
def test_factorization_is_upstreams(width, factors):
    assert btt_factorize(width) == factors  # greedy, as upstream: 12 -> (2, 6), not (3, 4)


def test_factorization_agrees_with_upstreams_code_on_every_width():
    sympy = pytest.importorskip("sympy")

    def upstream_factorize(x, n):  # nn/cola_nn.py l.64-79, verbatim but for the comments
        prime_factors = sympy.factorint(x)
        numbers = [1] * n
        for prime, count in prime_factors.items():
            for _ in range(count):
                min_index = min(range(n), key=lambda i: numbers[i])
                numbers[min_index] *= prime
        return sorted(numbers)

    for width in range(1, 5000):
        assert list(btt_factorize(width)) == upstream_factorize(width, 2), width


@pytest.mark.parametrize("case", CASES)
def test_structure_follows_the_fixture(case):
    data = _load(case)
    layer = _layer_for(data)
    for name in ("m1", "m2", "n1", "n2"):
        assert getattr(layer, name) == int(data[name]), name
    assert (layer.m1, layer.m2) == tuple(data["ms"]) and (layer.n1, layer.n2) == tuple(data["ns"])
    assert layer.tt_rank == int(data["rank"]) and tuple(data["rs"]) == (1, layer.tt_rank, 1)
    assert int(data["tt_cores"]) == 2
    names = [p.name for p in layer.get_parameters()]
    assert sorted(names) == sorted(data["param_names"].tolist())
    for param in layer.get_parameters():
        assert param.shape == data[param.name].shape and param.dtype == ms.float32, param.name
    cores = (data["op_params.0"], data["op_params.1"])
    assert btt_core_shapes(layer.in_features, layer.out_features, layer.tt_rank) == tuple(c.shape for c in cores)
    # One MAC per core entry per row: r * (d_in * n1 + m2 * d_out).
    r, d_in, d_out = layer.tt_rank, layer.in_features, layer.out_features
    assert layer.macs_per_token() == cores[0].size + cores[1].size == r * (d_in * layer.n1 + layer.m2 * d_out)
    for index, core in enumerate(("op_params.0", "op_params.1")):
        assert (layer.op_params[index].shape[-2], layer.op_params[index].shape[-1]) == (
            int(data[f"core_d_in_{core}"]), int(data[f"core_d_out_{core}"]))


# Every fixture in PyNative mode; in graph mode one of each kind (btt, btt_norm, no bias, odd widths), which compile
# the same two BatchMatMuls.
GRAPH_CASES = ("btt_768x3072_r4", "btt_64x96_r2_nobias", "bttnorm_40x90_r3", "bttnorm_3072x768_r4")


# conftest's ms_mode, given the mode per case instead of both modes for every case.
@pytest.mark.parametrize("case,ms_mode", [(case, "pynative") for case in CASES] +
                         [(case, "graph") for case in GRAPH_CASES], indirect=["ms_mode"])
def test_matches_upstream_forward_and_backward(case, ms_mode, net_path):
    data = _load(case)
    layer = _layer_for(data)
    names = [p.name for p in layer.trainable_params()]  # before wrapping, which prefixes them
    assert sorted(names) == sorted(data["param_names"].tolist())  # every trainable parameter has its gradient
    layer = on_path(layer, net_path, has_twins=False)  # no twin: both paths run these two BatchMatMuls
    assert_layer_matches_fixture(layer, data, names, tol=ATOL)


@pytest.mark.parametrize("case", [case for case in CASES if "3072" not in case])  # dense_A only when small
def test_dense_view_is_upstreams(case):
    data = _load(case)
    assert "dense_A" in data.files
    layer = _layer_for(data)
    dense = layer.to_dense()
    assert dense.shape == (layer.out_features, layer.in_features) and dense.dtype == ms.float32
    assert_within_tolerance(dense.asnumpy().T, data["dense_A"], ATOL, RTOL)  # dense_A is (d_in, d_out) = W^T
    # The dense view agrees with the forward on the identity.
    eye = ms.Tensor(np.eye(layer.in_features, dtype=np.float32))
    no_bias = layer(eye).asnumpy() - (layer.bias.asnumpy() if layer.has_bias else 0)
    np.testing.assert_allclose(no_bias, dense.asnumpy().T, atol=1e-5, rtol=1e-5)


def test_btt_norm_cores_sit_on_both_sides_of_the_bound():
    """The fixtures exercise both branches of max(1, rms / max_rms); the layer's bound is upstream's."""
    for case in (c for c in CASES if c.startswith("bttnorm")):
        data = _load(case)
        layer = _layer_for(data)
        ratios = []
        for index, core in enumerate(("op_params.0", "op_params.1")):
            values = data[core].astype(np.float64)
            ratio = np.sqrt(np.mean(values ** 2) + 1e-8) / layer.max_rms[index]
            np.testing.assert_allclose(ratio, float(data[f"rms_ratio_{core}"]), rtol=1e-6)
            ratios.append(ratio)
        assert min(ratios) < 1 < max(ratios), case


@pytest.mark.parametrize("case", CASES)
def test_initialisation_is_mup(case):
    data = _load(case)
    ms.set_seed(int(data["seed"]))
    layer = BlockTTLinear(int(data["d_in"]), int(data["d_out"]), tt_rank=int(data["rank"]),
                          normalize=bool(data["normalize"]), learn_gamma=bool(data["learn_gamma"]),
                          has_bias=bool(data["has_bias"]))
    for index, core in enumerate(("op_params.0", "op_params.1")):
        values = layer.op_params[index].asnumpy().astype(np.float64)
        std = float(data[f"init_std_{core}"])
        assert layer.max_rms[index] == pytest.approx(std, rel=1e-12)  # btt_norm's bound is the init std
        # The sample std of n normal draws is within 4 standard errors (std / sqrt(2n)) of the law's.
        assert abs(values.std() - std) <= 4 * std / np.sqrt(2 * values.size), core
        assert abs(values.mean()) <= 4 * std / np.sqrt(values.size), core
    if layer.has_bias:
        np.testing.assert_array_equal(layer.bias.asnumpy(), 0)
    if bool(data["normalize"]) and bool(data["learn_gamma"]):
        assert [float(layer.op_params[i].asnumpy()) for i in (2, 3)] == [1.0, 1.0]
        assert layer.op_params[2].shape == ()


class _Block(nn.Cell):
    def __init__(self, factory):
        super().__init__()
        self.mlp_channels = create_mlp(64, 96, linear_layer=factory)

    def construct(self, x):
        return self.mlp_channels(x)


class _Net(nn.Cell):
    def __init__(self, factory):
        super().__init__()
        self.blocks = nn.SequentialCell([_Block(factory), _Block(factory)])

    def construct(self, x):
        return self.blocks(x)


def test_parameter_names_are_upstreams_at_every_depth(tmp_path):
    """Cores op_params.0/1 (gains 2/3) and the bias b, alone and nested, in memory and in a checkpoint."""
    alone = BlockTTLinear(64, 96, tt_rank=2, normalize=True)
    assert [p.name for p in alone.get_parameters()] == ["op_params.0", "op_params.1", "op_params.2", "op_params.3",
                                                        "b"]
    assert [name for name, _ in alone.parameters_and_names()] == [p.name for p in alone.get_parameters()]
    assert alone.b is alone.bias  # the base's construct adds self.bias
    net = _Net(linear_layer("btt", tt_rank=2))
    names = [p.name for p in net.get_parameters()]
    assert [name for name, _ in net.parameters_and_names()] == names
    for prefix in ("blocks.0.mlp_channels.fc1.", "blocks.1.mlp_channels.fc2."):
        assert [n[len(prefix):] for n in names if n.startswith(prefix)] == ["op_params.0", "op_params.1", "b"]
    path = str(tmp_path / "btt.ckpt")
    ms.save_checkpoint(net, path)
    assert sorted(ms.load_checkpoint(path)) == sorted(names)

    # An upstream state_dict maps one to one: its keys under the layer's prefix load with nothing left over.
    data = _load("btt_64x96_r2")
    prefix = "blocks.1.mlp_channels.fc1."
    state = {prefix + key: ms.Parameter(ms.Tensor(data[key]), name=prefix + key) for key in data["param_names"]}
    not_loaded, unused = ms.load_param_into_net(net, state)
    assert not unused and not any(name.startswith(prefix) for name in not_loaded)
    fc1 = net.blocks[1].mlp_channels.fc1
    assert_within_tolerance(fc1(ms.Tensor(data["x"])).asnumpy(), data["y"], ATOL, RTOL)


def test_registered_with_its_settings():
    assert "btt" in registered_linears()
    assert layer_settings(BlockTTLinear) == {"tt_rank": 1, "normalize": False, "learn_gamma": True}
    layer = linear_layer("btt", tt_rank=3, normalize=True)(40, 90)
    assert isinstance(layer, BlockTTLinear) and layer.setting_values() == {"tt_rank": 3, "normalize": True,
                                                                           "learn_gamma": True}
    assert "tt_rank=3, normalize=True, learn_gamma=True" in repr(layer)
    assert layer.saving == pytest.approx((layer.macs_per_token() + 2) / (40 * 90))  # the gains count, b not


@pytest.mark.parametrize("normalize", [False, True])
def test_leading_dimensions_and_amp_cast(normalize, ms_mode, rng):
    layer = BlockTTLinear(40, 90, tt_rank=3, normalize=normalize)
    for param in layer.trainable_params():
        param.set_data(ms.Tensor(rng.standard_normal(param.shape).astype(np.float32)))
    x = rng.standard_normal((2, 5, 40)).astype(np.float32)
    y = layer(ms.Tensor(x)).asnumpy()
    expected = x @ layer.to_dense().asnumpy().T + layer.bias.asnumpy()
    assert y.shape == (2, 5, 90)
    np.testing.assert_allclose(y, expected, atol=1e-4, rtol=1e-4)
    y16 = layer(ms.Tensor(x, ms.float16))
    assert y16.dtype == ms.float16 and layer.op_params[0].dtype == ms.float32
    assert np.abs(y16.asnumpy() - y).max() <= 1e-2 * np.abs(y).max()


@pytest.mark.parametrize("kwargs,culprit", [
    (dict(tt_rank=0), "tt_rank must be a positive integer, got 0"),
    (dict(tt_rank=-2), "tt_rank must be a positive integer, got -2"),
    (dict(tt_rank=1.5), "tt_rank must be a positive integer, got 1.5"),
    (dict(tt_rank=True), "tt_rank must be a positive integer, got True"),
    (dict(normalize="yes"), "normalize must be True or False, got 'yes'"),
    (dict(learn_gamma=1), "learn_gamma must be True or False, got 1"),
])
def test_bad_settings_name_the_layer_and_setting(kwargs, culprit):
    with pytest.raises(ValueError, match=f"BlockTTLinear: {culprit}"):
        BlockTTLinear(64, 96, **kwargs)
    with pytest.raises(ValueError, match=f"BlockTTLinear: {culprit}"):
        linear_layer("btt", **kwargs)  # refused before any layer is built
    with pytest.raises(ValueError, match=f"BlockTTLinear: {culprit}"):
        create_model("mixer_s32_224", num_classes=10, img_size=32, patch_size=4, num_blocks=1, embed_dim=64,
                     mlp_layer="btt", **kwargs)


@pytest.mark.parametrize("in_features,out_features,culprit", [
    (97, 64, "in_features=97 is prime"), (64, 97, "out_features=97 is prime"),
    (1, 64, "in_features=1 is 1"), (64, 1, "out_features=1 is 1"),
    (0, 64, "in_features must be a positive integer, got 0"),
])
def test_widths_without_two_factors_are_refused(in_features, out_features, culprit):
    with pytest.raises(ValueError, match=f"BlockTTLinear: {culprit}"):
        BlockTTLinear(in_features, out_features)


@pytest.mark.parametrize("in_features,out_features,tt_rank,normalize", [
    (64, 96, 2, False), (40, 90, 3, False), (40, 90, 3, True), (96, 64, 1, True)])
def test_from_dense_is_the_blockwise_svd(in_features, out_features, tt_rank, normalize, rng):
    # A BTT matrix is its own projection, normalised or not (large cores exceed btt_norm's bound).
    source = BlockTTLinear(in_features, out_features, tt_rank=tt_rank, normalize=normalize)
    for param in source.op_params[:2]:
        param.set_data(ms.Tensor(3 * rng.standard_normal(param.shape).astype(np.float32)))
    dense = source.to_dense().asnumpy()
    bias = rng.standard_normal(out_features).astype(np.float32)
    layer = BlockTTLinear.from_dense(dense, bias, tt_rank=tt_rank, normalize=normalize)
    assert layer.setting_values() == source.setting_values()
    np.testing.assert_allclose(layer.to_dense().asnumpy(), dense, atol=1e-5 * np.abs(dense).max(), rtol=0)
    x = rng.standard_normal((3, in_features)).astype(np.float32)
    np.testing.assert_allclose(layer(ms.Tensor(x)).asnumpy(), x @ dense.T + bias, atol=1e-4, rtol=1e-4)

    # A random dense matrix loses exactly each block's discarded singular values.
    target = rng.standard_normal((out_features, in_features))
    approx = BlockTTLinear.from_dense(target, tt_rank=tt_rank, normalize=normalize).to_dense().asnumpy()
    m1, m2, n1, n2 = layer.m1, layer.m2, layer.n1, layer.n2
    blocks = target.T.reshape(m2, m1, n1, n2)
    lost = sum(float(np.sum(np.linalg.svd(blocks[j, :, k, :], compute_uv=False)[tt_rank:] ** 2))
               for j in range(m2) for k in range(n1))
    assert np.sum((approx - target) ** 2) == pytest.approx(lost, rel=1e-4, abs=1e-6)


def test_from_dense_refuses_what_it_cannot_hold():
    with pytest.raises(ValueError, match=r"BlockTTLinear.from_dense: weight must be a 2-D .* got shape \(4, 4, 4\)"):
        BlockTTLinear.from_dense(np.zeros((4, 4, 4)))
    with pytest.raises(ValueError, match="normalize=True needs learn_gamma=True"):
        BlockTTLinear.from_dense(np.zeros((96, 64)), normalize=True, learn_gamma=False)
    with pytest.raises(ValueError, match=r"bias must have shape \(96,\), got \(64,\)"):
        BlockTTLinear.from_dense(np.zeros((96, 64)), np.zeros(64))


@pytest.mark.parametrize("build", ["mlp", "mixer"])
def test_accelerate_leaves_btt_cells_alone(build, graph_mode, kernel_library, rng):
    """The accelerator swaps the GELUs and LayerNorms around the BTT layers, never the layers themselves; the
    values and gradients stay the plain path's."""
    ms.set_seed(3)
    factory = linear_layer("btt", tt_rank=2)
    if build == "mlp":
        net, x = create_mlp(64, 96, linear_layer=factory), rng.standard_normal((2, 7, 64)).astype(np.float32)
    else:
        net = create_model("mixer_s32_224", num_classes=10, img_size=32, patch_size=4, num_blocks=2, embed_dim=64,
                           mlp_layer="btt", tt_rank=2)
        x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    for param in net.trainable_params():  # the mixer's zero head would hide every gradient
        param.set_data(ms.Tensor(0.3 * rng.standard_normal(param.shape).astype(np.float32)))
    btt_cells = {name: cell for name, cell in net.cells_and_names() if isinstance(cell, BlockTTLinear)}
    assert len(btt_cells) == (2 if build == "mlp" else 4)
    x = ms.Tensor(x)
    y = net(x)
    sens = ms.Tensor(rng.standard_normal(y.shape).astype(np.float32))
    (plain_dx,), plain_grads = SensGrads(net)(x, sens)
    params = [(id(p), p.name) for p in net.get_parameters()]

    fast = accelerate(net, "on")
    assert fast is net and accelerated_cells(fast)  # something around them was swapped
    assert {name: cell for name, cell in fast.cells_and_names() if isinstance(cell, BlockTTLinear)} == btt_cells
    assert [(id(p), p.name) for p in fast.get_parameters()] == params
    np.testing.assert_allclose(fast(x).asnumpy(), y.asnumpy(), atol=1e-5, rtol=1e-5)
    (dx,), grads = SensGrads(fast)(x, sens)
    np.testing.assert_allclose(dx.asnumpy(), plain_dx.asnumpy(), atol=1e-5, rtol=1e-5)
    for grad, plain in zip(grads, plain_grads):
        np.testing.assert_allclose(grad.asnumpy(), plain.asnumpy(), atol=1e-5, rtol=1e-5)


MODELS = {
    "mixer_s32_224": dict(num_classes=10, img_size=32, patch_size=4, num_blocks=2, embed_dim=64),
    "gmlp_ti16_224": dict(num_classes=10, img_size=32, patch_size=4, num_blocks=2, embed_dim=64),
    # 16 px: one token after ViTAE's x16 reduction, the normal cells' MLPs as wide as at 32 px.
    "vitae_basic_tiny": dict(num_classes=10, img_size=16, nc_depth=2, token_dims=(64, 64, 128),
                             embed_dims=(32, 32, 64)),
    "t2t_vit_12": dict(num_classes=10, img_size=32, depth=2, embed_dim=64),
    # Three exits of one block each; the later two widen fc1's input by the reused features (32 + 48).
    "dvt_t2t_vit_12": dict(num_classes=10, img_size=64, depth=1, embed_dim=32, num_heads=2),
    "gpt2": dict(n_layer=2, n_embd=64, n_head=2, vocab_size=100, n_positions=16),
}
# fc1 and fc2 of every MLP the families build with the layer: two blocks', or DVT's three exits' one block each.
BTT_LAYERS = {"dvt_t2t_vit_12": 6}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_mlp_family_builds_counts_and_trains_with_btt(name, rng):
    ms.set_seed(0)
    net = create_model(name, mlp_layer="btt", tt_rank=2, **MODELS[name])
    dense = create_model(name, **MODELS[name])
    btt = {cell_name: cell for cell_name, cell in net.cells_and_names() if isinstance(cell, BlockTTLinear)}
    # The two blocks' MLPs hold them, fc1 and fc2 each, where the dense model holds DenseLinear.
    dense_cells = dict(dense.cells_and_names())
    assert len(btt) == BTT_LAYERS.get(name, 4)
    assert all(n.endswith((".fc1", ".fc2")) and isinstance(dense_cells[n], DenseLinear) for n in btt), sorted(btt)
    assert {n[:-4] for n in btt if n.endswith(".fc1")} == {n[:-4] for n in btt if n.endswith(".fc2")}
    assert all(cell.tt_rank == 2 for cell in btt.values())
    macs = sum(cell.macs_per_token() for cell in btt.values())
    dense_macs = sum(cell.in_features * cell.out_features for cell in btt.values())
    # The fixtures README's count: r * (d_in * n1 + m2 * d_out) multiply-accumulates per input row.
    assert macs == sum(cell.tt_rank * (cell.in_features * cell.n1 + cell.m2 * cell.out_features)
                       for cell in btt.values())
    assert 0 < macs < dense_macs

    if name == "gpt2":
        x = ms.Tensor(rng.integers(0, 100, (2, 16)).astype(np.int32))
        labels = ms.Tensor(rng.integers(0, 100, (2, 16)).astype(np.int32))

        def loss_fn(inputs, targets):
            return ops.cross_entropy(net(inputs).reshape(-1, 100), targets.reshape(-1))
    else:
        size = MODELS[name]["img_size"]
        x = ms.Tensor(rng.standard_normal((4, 3, size, size)).astype(np.float32))
        labels = ms.Tensor(rng.integers(0, 10, (4,)).astype(np.int32))

        use_all_exits(net)  # a multi-exit model (DVT) trains every exit, as train.py does

        def loss_fn(inputs, targets):
            logits = net(inputs)
            return sum(ops.cross_entropy(exit_logits, targets)
                       for exit_logits in (logits if isinstance(logits, tuple) else (logits,)))

    net.set_train(True)
    optimizer = nn.SGD(net.trainable_params(), learning_rate=0.05)
    step = ms.value_and_grad(loss_fn, None, optimizer.parameters)
    btt_params = [p for cell in btt.values() for p in cell.get_parameters()]
    before = [p.asnumpy().copy() for p in btt_params]
    losses = []
    for _ in range(3):
        loss, grads = step(x, labels)
        optimizer(grads)
        losses.append(float(loss.asnumpy()))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    unchanged = [p.name for p, old in zip(btt_params, before) if np.array_equal(p.asnumpy(), old)]
    assert not unchanged
