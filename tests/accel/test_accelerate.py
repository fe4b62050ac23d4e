"""accelerate(net): twins that hold the same parameters and give the plain network's values and gradients, in every
family; a no-op, saying why, wherever the kernels cannot serve."""
import logging

import numpy as np
import pytest

import mindspore as ms
from mindspore import nn

import mindcv_ext
import mindcv_ext.accel as accel
from mindcv_ext.accel import accelerate, accelerated_cells
from mindcv_ext.accel.cells import FastGatedMlp, FastMlp, FastMonarchLinear, FastPixelflyMlp, FastSparseLRLinear
from mindcv_ext.layers import GatedMlp, MonarchLinear, Mlp, PixelflyMlp, SparseLRLinear, create_mlp, linear_layer
from mindcv_ext.models.gmlp import SpatialGatingUnit
from tests.utils import SensGrads, randomise, rel_err, skip_unless_twin_serves

pytestmark = pytest.mark.usefixtures("kernel_library")


def _mlp(dim: int, hidden: int, layer: str = "monarch", **settings) -> Mlp:
    """The MLP a model builds for ``layer`` (``create_mlp``: ``PixelflyMlp`` for Pixelfly layers)."""
    return create_mlp(dim, hidden, linear_layer=linear_layer(layer, **settings))


def _gated_mlp(dim: int, hidden: int, seq_len: int, **settings) -> GatedMlp:
    return GatedMlp(dim, hidden, lambda width: SpatialGatingUnit(width, seq_len),
                    linear_layer=linear_layer("monarch", **settings))


def _values_and_grads(net: nn.Cell, x: ms.Tensor, sens: ms.Tensor):
    out = net(x).asnumpy()
    (dx,), grads = SensGrads(net)(x, sens)
    return out, dx.asnumpy(), [g.asnumpy() for g in grads]


def _assert_same_results(plain_net: nn.Cell, x: np.ndarray, out_shape, tol: float = 1e-5):
    """Values, input gradient and every parameter gradient of ``plain_net`` before and after ``accelerate``."""
    rng = np.random.default_rng(5)
    x, sens = ms.Tensor(x), ms.Tensor(rng.standard_normal(out_shape).astype(np.float32))
    plain = _values_and_grads(plain_net, x, sens)
    params = [(id(p), p.name, p.shape) for p in plain_net.get_parameters()]
    fast_net = accelerate(plain_net, "on")
    assert [(id(p), p.name, p.shape) for p in fast_net.get_parameters()] == params  # the same Parameter objects
    fast = _values_and_grads(fast_net, x, sens)
    assert rel_err(fast[0], plain[0]) < tol and rel_err(fast[1], plain[1]) < tol
    assert len(fast[2]) == len(plain[2])
    # A gradient that is zero in exact arithmetic (a bias that a LayerNorm removes) is float32 noise on both paths:
    # each is measured against the network's largest gradient times 1e-3, where it is below that.
    floor = 1e-3 * max(np.abs(g).max() for g in plain[2])
    for mine, theirs in zip(fast[2], plain[2]):
        assert np.abs(mine - theirs).max() / max(np.abs(theirs).max(), floor) < tol
    return fast_net


@pytest.mark.parametrize("in_features,out_features,nblocks,has_bias", [
    (64, 256, 4, True), (256, 64, 4, False), (48, 96, 2, True)])
def test_monarch_linear_twin(in_features, out_features, nblocks, has_bias, graph_mode):
    """Permutations one kernel pass each, matmuls on oneDNN's sgemm, forward and backward."""
    layer = MonarchLinear(in_features, out_features, nblocks, has_bias=has_bias)
    x = np.random.default_rng(1).standard_normal((2, 9, in_features)).astype(np.float32)
    fast = _assert_same_results(layer, x, (2, 9, out_features), tol=1e-6)
    assert isinstance(fast, FastMonarchLinear) and accelerated_cells(fast) == {"FastMonarchLinear": 1}


@pytest.mark.parametrize("dim,hidden,nblocks,fused", [
    (64, 256, 4, True), (96, 192, 2, True), (100, 300, 4, False), (64, 128, 16, False)])
def test_mlp_twin(dim, hidden, nblocks, fused, graph_mode):
    """Fusable pairs run block-major with fc1's bias, GELU and the regrouping in one kernel; a padded pair (100->300)
    and one whose blocks do not line up (nblocks 16) keep their layers and take the GELU kernel only."""
    mlp = randomise(_mlp(dim, hidden, nblocks=nblocks), 2)
    x = np.random.default_rng(3).standard_normal((2, 7, dim)).astype(np.float32)
    fast = _assert_same_results(mlp, x, (2, 7, dim))
    assert isinstance(fast, FastMlp) is fused
    assert accelerated_cells(fast).get("FastGELU", 0) == (0 if fused else 1)


def test_padded_monarch_layer_and_dense_mlp_keep_their_layers(graph_mode):
    """A padded Monarch layer has no twin (the kernels assume whole blocks); a dense MLP keeps nn.Dense and gets the
    GELU kernel only."""
    padded = MonarchLinear(30, 50, 4)
    assert accelerate(padded, "on") is padded and not accelerated_cells(padded)
    dense = randomise(_mlp(64, 256, "dense"), 8)
    x = np.random.default_rng(9).standard_normal((3, 64)).astype(np.float32)
    fast = _assert_same_results(dense, x, (3, 64))
    assert type(fast) is Mlp and accelerated_cells(fast) == {"FastGELU": 1}


def test_mlp_twin_without_fc1_bias(graph_mode):
    """The fused kernel gives a bias-free fc1 a zero bias."""
    mlp = randomise(_mlp(64, 256), 4)
    mlp.fc1 = MonarchLinear(64, 256, 4, has_bias=False)
    x = np.random.default_rng(4).standard_normal((5, 64)).astype(np.float32)
    assert isinstance(_assert_same_results(mlp, x, (5, 64)), FastMlp)


@pytest.mark.parametrize("dim, nblocks, fusable", [(64, 4, True), (48, 2, True), (64, 16, False)])
def test_gated_mlp_twin(dim, nblocks, fusable, graph_mode):
    """gMLP's Monarch gated MLP block-major: fc1's bias, GELU and the split in one kernel, the gate on permuted
    features, the gate's bias, product and gather into fc2's blocks in another; otherwise each cell's own twin."""
    seq_len = 16
    mlp = randomise(_gated_mlp(dim, 6 * dim, seq_len, nblocks=nblocks), 1)
    x = np.random.default_rng(2).standard_normal((2, seq_len, dim)).astype(np.float32)
    fast = _assert_same_results(mlp, x, (2, seq_len, dim))
    assert isinstance(fast, FastGatedMlp) is fusable
    assert len(fast.trainable_params()) == 10  # fc1 (3), the gate's norm (2) and projection (2), fc2 (3)


@pytest.mark.parametrize("dim,hidden,gating", [(256, 1024, True), (128, 512, False)])
def test_pixelfly_mlp_twin(dim, hidden, gating, graph_mode):
    """Both Pixelfly layers one kernel each way around the GELU kernel, gated or not, with the plain tiled MLP's
    values and gradients."""
    skip_unless_twin_serves(FastPixelflyMlp)
    mlp = _mlp(dim, hidden, "pixelfly", gating=gating)
    assert type(mlp) is PixelflyMlp and mlp.hidden_as_tiles
    randomise(mlp, 5, scale=0.1)
    x = np.random.default_rng(6).standard_normal((2, 70, dim)).astype(np.float32)
    fast = _assert_same_results(mlp, x, (2, 70, dim))
    assert isinstance(fast, FastPixelflyMlp) and isinstance(fast, PixelflyMlp) and not fast.hidden_as_tiles
    assert accelerated_cells(fast) == {"FastPixelflyMlp": 1, "FastSparseLRLinear": 2, "FastGELU": 1}


def test_padded_pixelfly_layer_keeps_the_plain_layer(graph_mode):
    """The kernel multiplies whole blocks: a layer padded inside (100 -> 300) runs its plain tiles."""
    padded = SparseLRLinear(100, 300)
    assert accelerate(padded, "on") is padded and not accelerated_cells(padded)
    skip_unless_twin_serves(FastSparseLRLinear)
    unpadded = randomise(SparseLRLinear(96, 320), 7, scale=0.1)
    x = np.random.default_rng(8).standard_normal((40, 96)).astype(np.float32)
    assert isinstance(_assert_same_results(unpadded, x, (40, 320)), FastSparseLRLinear)


def test_twins_fall_back_to_the_plain_formula_off_float32(graph_mode):
    """Under AMP applied after accelerate, fp16 reaches the twins: they take the plain operators."""
    mlp = randomise(_gated_mlp(64, 384, 16), 3)
    x = np.random.default_rng(4).standard_normal((2, 16, 64)).astype(np.float32)
    reference = mlp(ms.Tensor(x)).asnumpy()
    mixed = ms.amp.auto_mixed_precision(accelerate(mlp, "on"), "O2")
    assert rel_err(mixed(ms.Tensor(x)).asnumpy(), reference) < 2e-2
    out64 = accelerate(nn.GELU(approximate=False))(ms.Tensor(x.astype(np.float64))).asnumpy()
    assert out64.dtype == np.float64


# One tiny configuration per family (and per MLP kind where the family has several): 32-64 px, one or two blocks.
FAMILIES = [
    ("mixer_s16_224_monarch", dict(img_size=32, patch_size=8, num_blocks=2, embed_dim=64), 32),
    ("mixer_s16_224", dict(img_size=32, patch_size=8, num_blocks=2, embed_dim=64), 32),
    ("mixer_s16_224", dict(img_size=32, patch_size=8, num_blocks=2, embed_dim=128, mlp_layer="pixelfly"), 32),
    ("gmlp_s16_224_monarch", dict(img_size=32, patch_size=8, num_blocks=2, embed_dim=64), 32),
    ("gmlp_s16_224", dict(img_size=32, patch_size=8, num_blocks=2, embed_dim=64), 32),
    ("vitae_basic_tiny_monarch", dict(img_size=32, nc_depth=1), 32),
    ("t2t_vit_12_monarch", dict(img_size=64, depth=2), 64),
    ("dvt_t2t_vit_12", dict(img_size=64, depth=1, embed_dim=32, num_heads=2), 64),
]


@pytest.mark.parametrize("name,kwargs,size", FAMILIES,
                         ids=[f[0] + ("_pixelfly" if f[1].get("mlp_layer") == "pixelfly" else "") for f in FAMILIES])
def test_every_family_gives_the_plain_logits_and_gradients(name, kwargs, size, graph_mode):
    net = randomise(mindcv_ext.create_model(name, num_classes=10, **kwargs), 6, scale=0.1)
    net.set_train(False)
    x = np.random.default_rng(7).standard_normal((2, 3, size, size)).astype(np.float32)
    fast = _assert_same_results(net, x, (2, 10))
    assert accelerated_cells(fast)


def test_accelerate_keeps_names_of_a_wrapped_network():
    """A network wrapped before accelerate (a loss cell, a grad cell) keeps its parameters' names."""
    wrapper = SensGrads(_mlp(64, 256))
    names = [p.name for p in wrapper.get_parameters()]
    assert names[0].startswith("net.")
    accelerate(wrapper, "on")
    assert isinstance(wrapper.net, FastMlp) and [p.name for p in wrapper.get_parameters()] == names


def test_accelerate_is_idempotent_and_logs_what_it_swapped(caplog):
    net = mindcv_ext.create_model("mixer_s16_224_monarch", img_size=32, patch_size=8, num_blocks=2, embed_dim=64)
    with caplog.at_level(logging.INFO, logger="mindcv_ext"):
        accelerate(net)
    assert "CPU kernels on: 2 FastGELU, 5 FastLayerNorm, 2 FastMlp" in caplog.text
    swapped = accelerated_cells(net)
    assert swapped == {"FastGELU": 2, "FastLayerNorm": 5, "FastMlp": 2, "FastMonarchLinear": 4}
    accelerate(net)
    assert accelerated_cells(net) == swapped


def test_off_leaves_the_network_plain():
    mlp = _mlp(64, 256)
    assert accelerate(mlp, "off") is mlp and not accelerated_cells(mlp)
    with pytest.raises(ValueError, match="cpu_kernels must be one of"):
        accelerate(mlp, "yes")


def _no_op_cases():
    def amp():
        return ms.amp.auto_mixed_precision(_mlp(64, 256), "O2")

    def fp16():
        return _mlp(64, 256).to_float(ms.float16)

    def half_params():
        mlp = _mlp(64, 256)
        mlp.fc1.bias.set_dtype(ms.float16)
        return mlp

    return [(amp, "runs under AMP (O2)"), (fp16, "runs under AMP (to_float)"),
            (half_params, "holds Float16 parameters")]


@pytest.mark.parametrize("build,reason", _no_op_cases(), ids=["amp-o2", "to_float", "fp16-params"])
def test_does_nothing_for_float16_or_amp(build, reason, caplog):
    net = build()
    with caplog.at_level(logging.INFO, logger="mindcv_ext"):
        assert accelerate(net) is net
    assert not accelerated_cells(net) and reason in caplog.text and "the plain network runs" in caplog.text
    with pytest.raises(ValueError, match="cpu_kernels=on, but the CPU kernels cannot be used"):
        accelerate(build(), "on")


def test_does_nothing_off_cpu(monkeypatch, caplog):
    real = ms.get_context
    monkeypatch.setattr(accel.ms, "get_context", lambda key: "GPU" if key == "device_target" else real(key))
    net = _mlp(64, 256)
    with caplog.at_level(logging.INFO, logger="mindcv_ext"):
        accelerate(net)
    assert not accelerated_cells(net) and "device_target is GPU" in caplog.text
    with pytest.raises(ValueError, match="device_target is GPU"):
        accelerate(net, "on")


def test_environment_switch_turns_it_off_everywhere(monkeypatch, caplog):
    monkeypatch.setenv(accel.cpu_kernels.ENV_SWITCH, "0")
    net = _mlp(64, 256)
    with caplog.at_level(logging.INFO, logger="mindcv_ext"):
        accelerate(net, "on")  # the global switch wins over an explicit on
    assert not accelerated_cells(net) and "MINDCV_EXT_CPU_KERNELS=0" in caplog.text


def test_export_of_the_plain_network_names_no_kernel(kernel_library, graph_mode, tmp_path):
    """What scripts/export.py exports: the plain network, whatever ran before. The accelerated one would call this
    machine's library, which the check below would see."""
    x = ms.Tensor(np.random.default_rng(0).standard_normal((2, 5, 64)).astype(np.float32))
    fast = accelerate(_mlp(64, 256), "on")
    ms.export(fast, x, file_name=str(tmp_path / "fast"), file_format="MINDIR")
    assert kernel_library.encode() in (tmp_path / "fast.mindir").read_bytes()  # the check below can fail
    plain = _mlp(64, 256)
    ms.export(plain, x, file_name=str(tmp_path / "plain"), file_format="MINDIR")
    exported = (tmp_path / "plain.mindir").read_bytes()
    assert kernel_library.encode() not in exported and b"Custom" not in exported
    reloaded = ms.nn.GraphCell(ms.load(str(tmp_path / "plain.mindir")))(x).asnumpy()
    assert rel_err(reloaded, plain(x).asnumpy()) < 1e-6


def test_twins_that_cannot_serve_here_are_declined_with_why(monkeypatch, caplog):
    """Without MindSpore's oneDNN sgemm (MindSpore 2.7), Pixelfly's and SSL's twins are declined: the layers stay
    plain, the log says why, and declined_twins tells the tests to skip rather than expect a swap."""
    import mindcv_ext.accel.cells as cells

    monkeypatch.setattr(cells, "cpu_sgemm_available", lambda: False)
    mlp = _mlp(128, 512, "pixelfly")
    declined = accel.declined_twins(mlp)
    assert sorted(declined) == ["FastPixelflyMlp", "FastSparseLRLinear"]
    assert f"MindSpore {ms.__version__} here has no oneDNN sgemm" in declined["FastPixelflyMlp"]
    with caplog.at_level(logging.INFO, logger="mindcv_ext"):
        assert accelerate(mlp, "on") is mlp
    assert "FastPixelflyMlp not used: MindSpore" in caplog.text
    assert type(mlp.fc1) is SparseLRLinear and accelerated_cells(mlp) == {"FastGELU": 1}
    monkeypatch.setattr(cells, "cpu_sgemm_available", lambda: True)
    assert accel.declined_twins(_mlp(128, 512, "pixelfly")) == {}
