"""MLP-Mixer with Pixelfly channel MLPs: fly's fixtures through the user's commands, and the full-size count."""
import json

import numpy as np
import pytest

import mindspore as ms
from mindcv.models import create_model

import mindcv_ext  # noqa: F401  (registers the models)
from mindcv_ext.layers import SparseLRLinear
from mindcv_ext.models import count_params
from scripts.convert_checkpoint import main as convert_main
from tests.utils import SHARED_FIXTURES, on_path, shared_fixture_dir

FIXTURES = ["mixer_b16_224_pixelfly_e128", "mixer_b16_224_pixelfly_e256"]


def _convert(directory, meta, dst, kwargs=None):
    return convert_main(["--model", meta["model"], "--model-kwargs", json.dumps(kwargs or meta["kwargs"]),
                         "--src", str(directory / meta["checkpoint"]), "--dst", str(dst)])


def test_every_shared_fixture_is_tested():
    if not SHARED_FIXTURES.joinpath("pixelfly").is_dir():
        pytest.skip("../shared/fixtures/pixelfly is not present")
    found = sorted(p.name for p in SHARED_FIXTURES.joinpath("pixelfly").iterdir() if p.name.startswith("mixer"))
    assert found == FIXTURES


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_logits_match_reference(name, tmp_path, graph_mode, net_path):
    directory = shared_fixture_dir("pixelfly", name)
    meta = json.loads((directory / "meta.json").read_text())
    dst = tmp_path / f"{name}.ckpt"
    assert _convert(directory, meta, dst) == 0
    net = create_model(meta["model"], checkpoint_path=str(dst), **meta["kwargs"])
    net.set_train(False)
    assert count_params(net) == meta["num_params"]  # the int32 layouts are buffers, as in PyTorch
    layouts = {n: p.asnumpy() for n, p in net.parameters_and_names() if n.endswith("sparse.layout")}
    assert sorted(layouts) == sorted(meta["state_dict_buffers"])
    if "channel_mlp_layouts" in meta:
        np.testing.assert_array_equal(layouts["blocks.0.mlp_channels.fc1.sparse.layout"],
                                      meta["channel_mlp_layouts"]["fc1"])
    logits = on_path(net, net_path)(ms.Tensor(np.load(directory / meta["input"]))).asnumpy()
    expected = np.load(directory / meta["expected_logits"])
    excess = np.abs(logits - expected) - (meta["atol"] + meta["rtol"] * np.abs(expected))
    assert excess.max() <= 0, f"max |diff| {np.abs(logits - expected).max():.3g}"


def test_checkpoint_for_other_pixelfly_settings_is_refused(tmp_path, capsys):
    directory = shared_fixture_dir("pixelfly", "mixer_b16_224_pixelfly_e256")
    meta = json.loads((directory / "meta.json").read_text())
    dst = tmp_path / "other.ckpt"
    # n_factors 1 keeps every shape (the weight's block count aside) but not the layout
    assert _convert(directory, meta, dst, dict(meta["kwargs"], n_factors=1)) == 2
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


@pytest.mark.parametrize("name", ["gmlp_s16_224", "vitae_basic_tiny", "t2t_vit_12"])
def test_pixelfly_builds_in_every_family(name):
    """A registered layer serves every family whose MLP is fc1 -> act -> fc2, Pixelfly included."""
    tiny = {"gmlp_s16_224": dict(img_size=32, patch_size=8, num_blocks=1, embed_dim=64),
            "vitae_basic_tiny": dict(img_size=32, nc_depth=1),
            "t2t_vit_12": dict(img_size=32, depth=1, embed_dim=64, num_heads=2)}[name]
    net = create_model(name, num_classes=3, mlp_layer="pixelfly", block=16, rank=4, **tiny)
    layers = [cell for _, cell in net.cells_and_names() if isinstance(cell, SparseLRLinear)]
    assert len(layers) == 2 and layers[0].rank == 4 and layers[0].sparse.block == 16
    net.set_train(False)
    assert net(ms.Tensor(np.ones((1, 3, 32, 32), np.float32))).shape == (1, 3)
