"""What every model file shares: the layer aliases (one table, not one function per name), the resolution of a
layer name and its settings into the factory a model takes, and the entrypoints' refusals."""
import pytest

import mindcv.models
from mindcv.models.registry import get_pretrained_cfg, is_model

from mindcv_ext.layers import DenseLinear, MonarchLinear, linear_layer
from mindcv_ext.models import mlp_mixer
from mindcv_ext.models.helpers import LAYER_ALIASES, TEXT_MODELS, resolve_linear_layer, split_layer_alias

TINY = dict(img_size=32, patch_size=8, num_blocks=1, embed_dim=32)
BASES = ("gmlp_ti16_224", "gmlp_s16_224", "gmlp_b16_224", "mixer_s32_224", "mixer_s16_224", "mixer_b32_224",
         "mixer_b16_224", "mixer_l32_224", "mixer_l16_224", "vitae_basic_tiny", "vitae_basic_6m", "vitae_basic_13m",
         "vitae_basic_small", "t2t_vit_12", "t2t_vit_14", "t2t_vit_t_14")


def test_every_alias_of_every_base_is_registered_from_the_table():
    assert LAYER_ALIASES == {"_monarch": ("monarch", {"nblocks": 4})}
    for base in BASES:
        name = base + "_monarch"
        assert is_model(name) and get_pretrained_cfg(name) == get_pretrained_cfg(base), name
    assert mlp_mixer.mixer_s16_224_monarch.__name__ == "mixer_s16_224_monarch"  # importable as before
    assert "with monarch channel MLPs (nblocks 4)" in mlp_mixer.mixer_s16_224_monarch.__doc__


def test_an_alias_builds_its_layer_and_keeps_the_base_architecture():
    net = mindcv.models.create_model("mixer_s16_224_monarch", num_classes=3, **TINY)
    fc1 = net.blocks[0].mlp_channels.fc1
    assert isinstance(fc1, MonarchLinear) and fc1.nblocks == 4 and (fc1.in_features, fc1.out_features) == (32, 128)
    assert type(net.blocks[0].mlp_tokens.fc1) is DenseLinear  # token MLPs stay dense, as in fly
    net = mindcv.models.create_model("mixer_s16_224_monarch", num_classes=3, nblocks=2, **TINY)
    assert net.blocks[0].mlp_channels.fc1.nblocks == 2


def test_split_layer_alias():
    assert split_layer_alias("gmlp_s16_224_monarch") == ("gmlp_s16_224", "monarch", {"nblocks": 4})
    assert split_layer_alias("gmlp_s16_224") == ("gmlp_s16_224", None, {})


def test_resolution_turns_a_name_and_its_settings_into_one_factory():
    kwargs = dict(mlp_layer="ssl", redn_factor=4, img_size=32)
    resolve_linear_layer("mixer_s16_224", kwargs)
    factory = kwargs.pop("linear_layer")
    assert kwargs == {"img_size": 32} and factory.keywords == {"redn_factor": 4}
    kwargs = {}
    resolve_linear_layer("mixer_s16_224", kwargs)
    assert kwargs == {}  # the model's own default


@pytest.mark.parametrize("variant,kwargs,message", [
    ("mixer_s16_224_monarch", dict(mlp_layer="dense"), "mlp_layer='dense' conflicts with the model name"),
    ("mixer_s16_224_monarch", dict(linear_layer=DenseLinear), "conflicts with the model name, which means "
                                                              "mlp_layer='monarch'"),
    ("mixer_s16_224", dict(mlp_layer="monarch", linear_layer=DenseLinear), "not both"),
    ("mixer_s16_224", dict(redn_factor=4), "mlp_layer='dense' has no setting 'redn_factor' \\(a setting of ssl"),
    ("mixer_s16_224", dict(mlp_layer="butterfly"), "mlp_layer must be one of dense, monarch"),
])
def test_conflicting_or_unknown_choices_name_the_culprit(variant, kwargs, message):
    with pytest.raises(ValueError, match=message):
        resolve_linear_layer(variant, dict(kwargs))


def test_a_factory_of_the_aliased_kind_is_accepted():
    kwargs = dict(linear_layer=linear_layer("monarch", nblocks=2))
    resolve_linear_layer("mixer_s16_224_monarch", kwargs)
    assert kwargs["linear_layer"].keywords == {"nblocks": 2}


def test_pretrained_is_refused_with_what_to_do():
    with pytest.raises(ValueError, match="no MindSpore weights are published. Convert a PyTorch checkpoint with "
                                         "`python scripts/convert_checkpoint.py --model gmlp_s16_224"):
        mindcv.models.create_model("gmlp_s16_224", pretrained=True)


def test_text_models_stay_out_of_mindcvs_registry():
    assert set(TEXT_MODELS) == {"gpt2", "gpt2_medium", "gpt2_large", "gpt2_xl"}
    assert not any(is_model(name) for name in TEXT_MODELS)
