"""The registered zoo: mindcv's registry sees it, parameter counts equal the references, full-size forwards run."""
import math

import numpy as np
import pytest

import mindspore as ms
from mindcv.models import create_model, is_model, list_models, list_modules
from mindcv.models.registry import get_pretrained_cfg

import mindcv_ext
from mindcv_ext.models import count_params, resolve_model_name

BASES = ["gmlp_ti16_224", "gmlp_s16_224", "gmlp_b16_224",
         "mixer_s32_224", "mixer_s16_224", "mixer_b32_224", "mixer_b16_224", "mixer_l32_224", "mixer_l16_224",
         "vitae_basic_tiny", "vitae_basic_6m", "vitae_basic_13m", "vitae_basic_small",
         "t2t_vit_12", "t2t_vit_14", "t2t_vit_t_14"]
ALL = sorted(BASES + [b + "_monarch" for b in BASES] + ["dvt_t2t_vit_12", "dvt_t2t_vit_14"])  # DVT: dense only
LANGUAGE = ["gpt2", "gpt2_large", "gpt2_medium", "gpt2_xl"]  # fly's structured-MLP benchmark model

# Reference counts (timm 0.4.12 / ViTAE-Transformer / T2T-ViT, all parameters incl. fixed ones, 224 px, 1000 classes).
DENSE = {
    "gmlp_ti16_224": 5_867_328, "gmlp_s16_224": 19_422_656, "gmlp_b16_224": 73_075_392,
    "mixer_s32_224": 19_104_624, "mixer_s16_224": 18_528_264, "mixer_b32_224": 60_293_428,
    "mixer_b16_224": 59_880_472, "mixer_l32_224": 206_939_264, "mixer_l16_224": 208_196_168,
    "vitae_basic_tiny": 4_886_888, "vitae_basic_6m": 6_614_120, "vitae_basic_13m": 10_834_728,
    "vitae_basic_small": 24_032_136,
    "t2t_vit_12": 6_941_902, "t2t_vit_14": 21_545_550, "t2t_vit_t_14": 21_541_070,
}
# The table (fly's MonarchLinear, nblocks 4).
MONARCH_PUBLISHED = {
    "gmlp_ti16_224": 2_795_328, "gmlp_s16_224": 7_134_656, "gmlp_b16_224": 23_923_392,
    "mixer_s16_224": 6_993_928, "mixer_b16_224": 20_952_088,
    "vitae_basic_tiny": 3_740_008, "vitae_basic_small": 15_774_600,
}
# The MLPs that become Monarch: (layers, in, out) per model.
MONARCH_MLPS = {
    "gmlp_ti16_224": [(30, 128, 768), (30, 384, 128)],
    "gmlp_s16_224": [(30, 256, 1536), (30, 768, 256)],
    "gmlp_b16_224": [(30, 512, 3072), (30, 1536, 512)],
    "mixer_s32_224": [(8, 512, 2048), (8, 2048, 512)],
    "mixer_s16_224": [(8, 512, 2048), (8, 2048, 512)],
    "mixer_b32_224": [(12, 768, 3072), (12, 3072, 768)],
    "mixer_b16_224": [(12, 768, 3072), (12, 3072, 768)],
    "mixer_l32_224": [(24, 1024, 4096), (24, 4096, 1024)],
    "mixer_l16_224": [(24, 1024, 4096), (24, 4096, 1024)],
    "vitae_basic_tiny": [(7, 256, 512), (7, 512, 256)],
    "vitae_basic_6m": [(10, 256, 512), (10, 512, 256)],
    "vitae_basic_13m": [(11, 320, 640), (11, 640, 320)],
    "vitae_basic_small": [(14, 384, 1152), (14, 1152, 384)],
    "t2t_vit_12": [(12, 256, 512), (12, 512, 256)],
    "t2t_vit_14": [(14, 384, 1152), (14, 1152, 384)],
    "t2t_vit_t_14": [(14, 384, 1152), (14, 1152, 384)],
}


def _fly_factor_entries(in_features, out_features, nblocks=4):
    """blkdiag1.numel() + blkdiag2.numel() as fly's MonarchLinear.__init__ allocates them."""
    in_blk, out_blk = math.ceil(in_features / nblocks), math.ceil(out_features / nblocks)
    if in_blk * nblocks < out_blk * nblocks:
        return nblocks * in_blk * in_blk + nblocks * out_blk * in_blk
    return nblocks * out_blk * in_blk + nblocks * out_blk * out_blk


def _expected_monarch(base):
    saving = sum(n * (i * o - _fly_factor_entries(i, o)) for n, i, o in MONARCH_MLPS[base])
    return DENSE[base] - saving


EXPECTED = {**DENSE, **{b + "_monarch": _expected_monarch(b) for b in BASES}}


def test_published_monarch_counts_agree_with_fly_formula():
    for base, published in MONARCH_PUBLISHED.items():
        assert _expected_monarch(base) == published, base


def test_mindcv_registry_sees_every_model():
    registered = set(list_models())
    assert set(ALL) <= registered
    assert sorted(mindcv_ext.list_ext_models()) == sorted(ALL + LANGUAGE)
    assert all(is_model(name) for name in ALL)
    assert {"gmlp", "mlp_mixer", "t2t_vit", "vitae"} <= set(list_modules())
    assert sorted(list_models(module="vitae")) == sorted(n for n in ALL if n.startswith("vitae"))
    assert set(list_models("mixer_*_monarch")) == {n for n in ALL if n.startswith("mixer") and "monarch" in n}


@pytest.mark.parametrize("name", ALL)
def test_default_cfg_carries_the_eval_transform(name):
    cfg = get_pretrained_cfg(name)
    head = "normal_token.head" if name.startswith("dvt") else "head"  # DVT: the last exit's head
    assert cfg["input_size"] == (3, 224, 224) and cfg["classifier"] == head and cfg["interpolation"] == "bicubic"
    if name.startswith("dvt"):
        assert cfg["crop_pct"] == 0.875 and cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
    elif name.startswith(("vitae", "t2t_vit")):
        assert cfg["crop_pct"] == 0.9 and cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
    else:
        assert cfg["crop_pct"] == 0.875 and cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("name,kwargs", [
    ("gmlp_s16_224", dict(img_size=32, patch_size=4, num_blocks=2, embed_dim=32)),
    ("mixer_b16_224_monarch", dict(img_size=32, patch_size=8, num_blocks=2, embed_dim=64, mlp_ratio=(0.5, 2.0))),
    ("vitae_basic_tiny_monarch", dict(img_size=32, nblocks=2)),
])
def test_mindcv_create_model_with_mindcv_arguments(name, kwargs, graph_mode):
    net = create_model(name, num_classes=7, in_channels=1, drop_rate=0.1, drop_path_rate=0.1, **kwargs)
    assert net.default_cfg == get_pretrained_cfg(name)
    net.set_train(False)
    out = net(ms.Tensor(np.ones((2, 1, 32, 32), np.float32)))
    assert out.shape == (2, 7)


def test_monarch_switch_is_a_keyword():
    dense = create_model("gmlp_s16_224", img_size=32, patch_size=4, num_blocks=2, embed_dim=32)
    monarch = create_model("gmlp_s16_224", img_size=32, patch_size=4, num_blocks=2, embed_dim=32,
                           mlp_layer="monarch", nblocks=2)
    assert monarch.blocks[0].mlp_channels.fc1.blkdiag1.shape == (2, 16, 16)
    assert type(dense.blocks[0].mlp_channels.fc1).__name__ == "DenseLinear"
    same = create_model("gmlp_s16_224_monarch", img_size=32, patch_size=4, num_blocks=2, embed_dim=32,
                        mlp_layer="monarch", nblocks=2)
    assert count_params(same) == count_params(monarch)


@pytest.mark.parametrize("name", ["gmlp_s16_224_monarch", "mixer_s16_224_monarch", "vitae_basic_tiny_monarch",
                                  "t2t_vit_12_monarch"])
def test_monarch_name_refuses_another_mlp_layer(name):
    """A '_monarch' model built dense would carry a Monarch name into every result."""
    with pytest.raises(ValueError) as info:
        create_model(name, mlp_layer="dense")
    message = str(info.value)
    assert f"{name}: mlp_layer='dense' conflicts with the model name" in message
    assert f"use {name[:-len('_monarch')]!r} with mlp_layer='dense'" in message


def test_vitae_reference_names_are_aliases():
    assert resolve_model_name("ViTAE_basic_Small") == "vitae_basic_small"
    assert resolve_model_name("ViTAE_basic_Tiny") == "vitae_basic_tiny"
    net = mindcv_ext.create_model("ViTAE_basic_Tiny", img_size=32, num_classes=3)
    assert net.head.weight.shape == (3, 256)


@pytest.mark.parametrize("call,culprit", [
    (lambda: mindcv_ext.create_model("gmlp_s16"), "unknown model 'gmlp_s16'. Did you mean 'gmlp_s16_224'"),
    (lambda: create_model("gmlp_s16_224", mlp_layer="butterfly"),
     "mlp_layer must be one of dense, monarch, pixelfly, fbbfly, ssl, lowrank, bdiagbfly"),
    (lambda: create_model("mixer_s16_224_monarch", nblocks=0), "nblocks must be a positive integer, got 0"),
    (lambda: create_model("vitae_basic_tiny", img_size=40), "img_size must be a positive multiple of 16, got 40"),
    (lambda: create_model("mixer_s16_224", img_size=30), "img_size (30, 30) must be a multiple of patch_size"),
    (lambda: create_model("gmlp_s16_224", pretrained=True), "no MindSpore weights are published"),
])
def test_bad_arguments_name_the_culprit(call, culprit):
    with pytest.raises(ValueError) as info:
        call()
    assert culprit in str(info.value)


def test_missing_checkpoint_is_an_error_not_a_silent_random_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.ckpt"):
        mindcv_ext.create_model("gmlp_s16_224", checkpoint_path=str(tmp_path / "nowhere.ckpt"))


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ALL if not n.startswith("dvt")])  # DVT: tests/models/test_dvt.py
def test_full_size_model_counts_and_forward(name):
    """In PyNative mode: one forward of a full-size model costs less there than a graph compilation."""
    net = create_model(name)
    assert count_params(net) == EXPECTED[name]
    # timm zero-initialises the head; give it weights so the logits depend on the whole network.
    net.head.weight.set_data(ms.Tensor(np.random.default_rng(0).normal(0, 0.02, net.head.weight.shape), ms.float32))
    net.set_train(False)
    x = ms.Tensor(np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32))
    logits = net(x).asnumpy()
    assert logits.shape == (1, 1000)
    assert np.isfinite(logits).all() and logits.std() > 0


def _tiny_gmlp(mlp_layer: str):
    ms.set_seed(0)
    return mindcv_ext.create_model("gmlp_s16_224", num_classes=10, in_channels=1, img_size=28, patch_size=7,
                                   num_blocks=2, embed_dim=32, mlp_ratio=4, mlp_layer=mlp_layer, nblocks=4)


def test_a_dense_checkpoint_projects_onto_the_monarch_twin(tmp_path):
    """--to_monarch: a dense twin whose MLP weights are Monarch matrices projects back exactly (same logits to
    1e-5); every other parameter loads as it is; a wrong checkpoint is refused with what to do."""
    from mindcv_ext.layers import MonarchLinear
    from mindcv_ext.models import load_dense_into_monarch

    monarch, dense = _tiny_gmlp("monarch"), _tiny_gmlp("dense")
    layers = {name: cell for name, cell in monarch.cells_and_names() if isinstance(cell, MonarchLinear)}
    assert len(layers) == 4
    rng = np.random.default_rng(0)
    arrays = {}
    for param in monarch.get_parameters():
        value = rng.standard_normal(param.shape).astype(np.float32) * 0.2
        param.set_data(ms.Tensor(value))
        layer, _, leaf = param.name.rpartition(".")
        if leaf not in ("blkdiag1", "blkdiag2"):
            arrays[param.name] = value
    for name, cell in layers.items():
        arrays[f"{name}.weight"] = cell.to_dense().asnumpy()
    for param in dense.get_parameters():
        param.set_data(ms.Tensor(arrays.pop(param.name)))
    assert not arrays  # the dense twin has exactly those parameters
    path = str(tmp_path / "dense.ckpt")
    ms.save_checkpoint(dense, path)

    fresh = _tiny_gmlp("monarch")
    errors = load_dense_into_monarch(fresh, path)
    assert sorted(name for name, _ in errors) == sorted(layers) and max(error for _, error in errors) < 1e-5
    images = ms.Tensor(rng.standard_normal((3, 1, 28, 28)).astype(np.float32))
    monarch.set_train(False)
    fresh.set_train(False)
    np.testing.assert_allclose(fresh(images).asnumpy(), monarch(images).asnumpy(), rtol=0, atol=1e-5)

    # A random dense layer is not a Monarch matrix: the error is what project_to_monarch leaves.
    trained = _tiny_gmlp("dense")
    ms.save_checkpoint(trained, str(tmp_path / "trained.ckpt"))
    errors = dict(load_dense_into_monarch(_tiny_gmlp("monarch"), str(tmp_path / "trained.ckpt")))
    assert all(0.05 < error < 1.0 for error in errors.values())

    ms.save_checkpoint(monarch, str(tmp_path / "monarch.ckpt"))
    with pytest.raises(ValueError, match="already holds Monarch factors .* load it without to_monarch"):
        load_dense_into_monarch(_tiny_gmlp("monarch"), str(tmp_path / "monarch.ckpt"))
    with pytest.raises(ValueError, match=r"the model has no Monarch layers .* \(mlp_layer: monarch"):
        load_dense_into_monarch(_tiny_gmlp("dense"), path)
    other = mindcv_ext.create_model("gmlp_s16_224", num_classes=10, in_channels=1, img_size=28, patch_size=7,
                                    num_blocks=1, embed_dim=32, mlp_ratio=4, mlp_layer="dense")
    ms.save_checkpoint(other, str(tmp_path / "other.ckpt"))
    with pytest.raises(ValueError, match=r"lacks the dense weight\(s\) blocks.1.mlp_channels.fc1.weight"):
        load_dense_into_monarch(_tiny_gmlp("monarch"), str(tmp_path / "other.ckpt"))
    # A dense checkpoint without a layer's bias would leave the Monarch layer's own initial bias in place.
    no_bias = {k: v for k, v in ms.load_checkpoint(path).items() if k != "blocks.0.mlp_channels.fc2.bias"}
    ms.save_checkpoint([{"name": k, "data": v} for k, v in no_bias.items()], str(tmp_path / "no_bias.ckpt"))
    with pytest.raises(ValueError, match=r"lacks the dense weight\(s\) blocks.0.mlp_channels.fc2.bias"):
        load_dense_into_monarch(_tiny_gmlp("monarch"), str(tmp_path / "no_bias.ckpt"))
