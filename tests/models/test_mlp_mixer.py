"""models/mlp_mixer.py: the block is timm's formula; a tiny Mixer's names, shapes, count and options; timm's and fly's
checkpoints (dense, Monarch, Pixelfly channel MLPs) through the user's commands give the references' logits; the
full-size Pixelfly count."""
import numpy as np
import pytest

import mindspore as ms
from mindcv.models import create_model

import mindcv_ext  # noqa: F401  (registers the models)
from mindcv_ext.layers import DenseLinear, DropPath, MonarchLinear, SparseLRLinear
from mindcv_ext.models import MlpMixer, count_params
from mindcv_ext.models.mlp_mixer import MixerBlock
from tests.utils import (assert_model_fixture_matches_reference, assert_within_tolerance, convert_fixture, fixture_meta,
                         gelu_exact, model_fixtures, on_path, randomise, rel_err, shared_fixture_dir)

FIXTURES = ["mixer_b16_224_pixelfly_e128", "mixer_b16_224_pixelfly_e256"]
# 32 px, patch 8 (16 tokens), two blocks, width 64.
TINY = dict(img_size=32, patch_size=8, num_blocks=2, embed_dim=64)


def _layer_norm(x, gamma, beta):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6) * gamma + beta


def _mlp(x, params, prefix):
    """fc1 -> exact GELU -> fc2 with the block's weights."""
    h = x @ params[f"{prefix}.fc1.weight"].T + params[f"{prefix}.fc1.bias"]
    return gelu_exact(h) @ params[f"{prefix}.fc2.weight"].T + params[f"{prefix}.fc2.bias"]


def test_the_block_is_timms_formula(ms_mode):
    """x + token_mlp(norm1(x)^T)^T, then + channel_mlp(norm2(x)); LayerNorm epsilon 1e-6, exact GELU, token MLP
    width 0.5 * dim, channel MLP width 4 * dim."""
    block = randomise(MixerBlock(8, 6), 0)
    block.set_train(False)
    params = {p.name: p.asnumpy().astype(np.float64) for p in block.get_parameters()}
    assert params["mlp_tokens.fc1.weight"].shape == (4, 6) and params["mlp_channels.fc1.weight"].shape == (32, 8)
    x = np.random.default_rng(1).standard_normal((2, 6, 8))
    tokens = _layer_norm(x, params["norm1.gamma"], params["norm1.beta"]).transpose(0, 2, 1)
    x1 = x + _mlp(tokens, params, "mlp_tokens").transpose(0, 2, 1)
    expected = x1 + _mlp(_layer_norm(x1, params["norm2.gamma"], params["norm2.beta"]), params, "mlp_channels")
    assert rel_err(block(ms.Tensor(x.astype(np.float32))).asnumpy(), expected) < 1e-5


def test_a_tiny_mixer_has_timms_names_shapes_and_count():
    net = create_model("mixer_s16_224", num_classes=10, **TINY)
    assert isinstance(net, MlpMixer) and len(net.blocks) == 2 and net.stem.num_patches == 16
    shapes = {p.name: p.shape for p in net.get_parameters()}
    assert shapes["stem.proj.weight"] == (64, 3, 8, 8) and shapes["stem.proj.bias"] == (64,)
    assert shapes["blocks.1.mlp_tokens.fc1.weight"] == (32, 16) and shapes["blocks.1.mlp_tokens.fc2.weight"] == (16, 32)
    assert shapes["blocks.1.mlp_channels.fc1.weight"] == (256, 64) and shapes["norm.gamma"] == (64,)
    assert shapes["head.weight"] == (10, 64)
    stem, head, norm = 64 * 3 * 8 * 8 + 64, 10 * 64 + 10, 2 * 64
    block = 2 * norm + (32 * 16 + 32) + (16 * 32 + 16) + (256 * 64 + 256) + (64 * 256 + 64)
    assert count_params(net) == stem + 2 * block + norm + head == 81_962


def test_the_logits_are_the_head_on_the_mean_token():
    net = randomise(create_model("mixer_s16_224", num_classes=5, **TINY), 2)
    net.set_train(False)
    x = ms.Tensor(np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32))
    features = net.forward_features(x).asnumpy()
    assert features.shape == (2, 16, 64)
    expected = features.mean(axis=1) @ net.head.weight.asnumpy().T + net.head.bias.asnumpy()
    assert rel_err(net(x).asnumpy(), expected) < 1e-5
    headless = create_model("mixer_s16_224", num_classes=0, **TINY)
    headless.set_train(False)
    assert headless(x).shape == (2, 64)  # no head: the pooled features


def test_one_ratio_sets_the_channel_mlp_and_drop_path_is_in_every_block():
    net = create_model("mixer_s16_224", mlp_ratio=2.0, drop_path_rate=0.1, **TINY)
    for block in net.blocks:
        assert block.mlp_tokens.fc1.weight.shape == (32, 16)  # tokens: 0.5 * 64
        assert block.mlp_channels.fc1.weight.shape == (128, 64)  # channels: 2 * 64
        assert isinstance(block.drop_path, DropPath) and block.drop_path.drop_prob == 0.1  # the same rate, as timm
    assert type(create_model("mixer_s16_224", **TINY).blocks[0].drop_path).__name__ == "Identity"


def test_monarch_replaces_the_channel_mlps_and_the_token_mlps_stay_dense():
    net = create_model("mixer_s16_224_monarch", **TINY)
    block = net.blocks[0]
    assert isinstance(block.mlp_channels.fc1, MonarchLinear) and isinstance(block.mlp_channels.fc2, MonarchLinear)
    assert block.mlp_channels.fc1.blkdiag1.shape == (4, 16, 16)
    assert isinstance(block.mlp_tokens.fc1, DenseLinear) and isinstance(block.mlp_tokens.fc2, DenseLinear)


@pytest.mark.parametrize("name", model_fixtures("mixer"))
def test_fixture_logits_match_reference(name, converted, graph_mode, net_path):
    """timm's (and fly's Monarch) checkpoint converted with the user's command, loaded through mindcv's
    create_model: graph-mode logits within the fixture's tolerances of the reference's."""
    assert_model_fixture_matches_reference(name, converted(name), net_path)


def test_every_shared_pixelfly_fixture_is_tested():
    found = sorted(p.name for p in shared_fixture_dir("pixelfly").iterdir() if p.name.startswith("mixer"))
    assert found == FIXTURES


@pytest.mark.parametrize("name", FIXTURES)
def test_pixelfly_fixture_logits_match_reference(name, tmp_path, graph_mode, net_path):
    directory = shared_fixture_dir("pixelfly", name)
    meta = fixture_meta(directory)
    dst = tmp_path / f"{name}.ckpt"
    assert convert_fixture(directory, meta, dst) == 0
    net = create_model(meta["model"], checkpoint_path=str(dst), **meta["kwargs"])
    net.set_train(False)
    assert count_params(net) == meta["num_params"]  # the int32 layouts are buffers, as in PyTorch
    layouts = {n: p.asnumpy() for n, p in net.parameters_and_names() if n.endswith("sparse.layout")}
    assert sorted(layouts) == sorted(meta["state_dict_buffers"])
    if "channel_mlp_layouts" in meta:
        np.testing.assert_array_equal(layouts["blocks.0.mlp_channels.fc1.sparse.layout"],
                                      meta["channel_mlp_layouts"]["fc1"])
    logits = on_path(net, net_path)(ms.Tensor(np.load(directory / meta["input"]))).asnumpy()
    assert_within_tolerance(logits, np.load(directory / meta["expected_logits"]), meta["atol"], meta["rtol"])


def test_checkpoint_for_other_pixelfly_settings_is_refused(tmp_path, capsys):
    directory = shared_fixture_dir("pixelfly", "mixer_b16_224_pixelfly_e256")
    meta = fixture_meta(directory)
    dst = tmp_path / "other.ckpt"
    # n_factors 1 keeps every shape (the weight's block count aside) but not the layout
    assert convert_fixture(directory, meta, dst, dict(meta["kwargs"], n_factors=1)) == 2
    err = capsys.readouterr().err
    assert "blocks.0.mlp_channels.fc1.sparse" in err and not dst.exists()


def test_full_size_pixelfly_mixer_b16_matches_fly_count(graph_mode):
    net = create_model("mixer_b16_224", mlp_layer="pixelfly", butterfly_size=8, n_factors=2, block=32, rank=32)
    assert count_params(net) == 27_486_256
    fc1 = net.blocks[0].mlp_channels.fc1
    assert isinstance(fc1, SparseLRLinear) and fc1.sparse.weight.shape == (864, 32, 32)
    assert fc1.sparse.product == net.blocks[0].mlp_channels.fc2.sparse.product == "block_diagonal"
    assert fc1.sparse.groups == 2 and net.blocks[0].mlp_channels.hidden_as_tiles
    assert type(net.blocks[0].mlp_tokens.fc1).__name__ == "DenseLinear"  # token MLPs stay dense, as in fly
    net.set_train(False)
    logits = net(ms.Tensor(np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)))
    assert logits.shape == (1, 1000) and np.isfinite(logits.asnumpy()).all()


@pytest.mark.parametrize("kwargs,culprit", [
    (dict(mlp_layer="pixelfly", butterfly_size=12), "butterfly_size must be a power of 2"),
    (dict(mlp_layer="pixelfly", n_factors=5), "n_factors must be at most log2(butterfly_size) = 3"),
    (dict(mlp_layer="pixelfly", block=-1), "block must be a positive integer, got -1"),
])
def test_bad_pixelfly_settings_name_the_culprit(kwargs, culprit):
    with pytest.raises(ValueError) as info:
        create_model("mixer_s16_224", img_size=32, patch_size=8, num_blocks=1, **kwargs)
    assert culprit in str(info.value)
