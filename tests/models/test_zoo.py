"""The registered zoo: mindcv's registry sees it, parameter counts equal the references, full-size forwards run."""
import math

import numpy as np
import pytest

import mindspore as ms
from mindcv.models import create_model, is_model, list_models, list_modules
from mindcv.models.registry import get_pretrained_cfg

import mindcv_ext
from mindcv_ext.models import count_params

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
    """mindcv's registry contract, as its own model test checks it: ``create_model(name, num_classes=10)`` maps an
    image batch of the model's ``input_size`` to (batch, 10). In PyNative mode: one forward of a full-size model
    costs less there than a graph compilation. The count is the reference's (1000 classes) less 990 head rows."""
    net = create_model(name, num_classes=10)
    assert count_params(net) == EXPECTED[name] - 990 * (net.head.in_channels + 1)
    # timm zero-initialises the head; give it weights so the logits depend on the whole network.
    net.head.weight.set_data(ms.Tensor(np.random.default_rng(0).normal(0, 0.02, net.head.weight.shape), ms.float32))
    net.set_train(False)
    size = get_pretrained_cfg(name)["input_size"]
    x = ms.Tensor(np.random.default_rng(1).standard_normal((1, *size)).astype(np.float32))
    logits = net(x).asnumpy()
    assert logits.shape == (1, 10)
    assert np.isfinite(logits).all() and logits.std() > 0
