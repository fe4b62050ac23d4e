"""The one model builder, create_model: keyword-only, the registry's contract, conflicts and older spellings."""
import logging

import numpy as np
import pytest

import mindspore as ms
from mindcv.models import list_models
from mindcv.models.registry import get_pretrained_cfg

from mindcv_ext.layers import DenseLinear, MonarchLinear
from mindcv_ext.models import create_model, list_ext_models, resolve_model_name
from mindcv_ext.models.helpers import TEXT_MODELS

TINY_GMLP = dict(img_size=32, patch_size=8, num_blocks=1, embed_dim=32)
EXT_MODULES = ("dvt", "gmlp", "mlp_mixer", "t2t_vit", "vitae")


def _fc1(net):
    return net.blocks[0].mlp_channels.fc1


def test_only_vision_models_are_in_mindcvs_registry():
    """mindcv's registry promises create_model(name, num_classes=...) maps an image batch to class logits: every
    name this package puts there is a vision model with an image input size; the language models are ours only."""
    ours = [name for module in EXT_MODULES for name in list_models(module=module)]
    assert len(ours) == 34 and not set(ours) & set(TEXT_MODELS)
    assert not [name for name in list_models() if name.startswith("gpt2")]
    for name in ours:
        assert get_pretrained_cfg(name)["input_size"][0] == 3, name
    assert sorted(ours + list(TEXT_MODELS)) == list_ext_models()
    assert resolve_model_name("gpt2_medium") == "gpt2_medium"


def test_the_builder_takes_keywords_only():
    with pytest.raises(TypeError):
        create_model("gmlp_s16_224", 10)  # num_classes given by position
    net = create_model("gmlp_s16_224", num_classes=10, **TINY_GMLP)
    net.set_train(False)
    assert net(ms.Tensor(np.ones((2, 3, 32, 32), np.float32))).shape == (2, 10)


def test_the_language_models_build_through_it():
    net = create_model("gpt2", vocab_size=16, n_positions=4, n_embd=8, n_layer=1, n_head=2, mlp_layer="monarch",
                       nblocks=2)
    assert isinstance(net.transformer.h[0].mlp.fc1, MonarchLinear) and net.transformer.h[0].mlp.fc1.nblocks == 2


def test_nblocks_and_model_kwargs_cannot_disagree_silently():
    with pytest.raises(ValueError, match="nblocks is set twice with different values: 2 as a model argument and 4 "
                                         "in model_kwargs. Keep one of them"):
        create_model("gmlp_s16_224", mlp_layer="monarch", nblocks=2, model_kwargs={"nblocks": 4}, **TINY_GMLP)
    net = create_model("gmlp_s16_224", mlp_layer="monarch", nblocks=2, model_kwargs={"nblocks": 2}, **TINY_GMLP)
    assert _fc1(net).nblocks == 2
    with pytest.raises(ValueError, match="img_size is set twice"):
        create_model("gmlp_s16_224", model_kwargs={"img_size": 64}, **TINY_GMLP)


def test_the_older_spelling_is_read_with_a_note(caplog):
    caplog.set_level(logging.INFO, logger="mindcv_ext")
    net = create_model("gmlp_s16_224", model_kwargs={"mlp_layer": "monarch", "nblocks": 2}, **TINY_GMLP)
    assert isinstance(_fc1(net), MonarchLinear) and _fc1(net).nblocks == 2
    assert "model_kwargs.mlp_layer is read as mlp_layer" in caplog.text
    with pytest.raises(ValueError, match="mlp_layer is set twice with different values: 'dense' and 'monarch'"):
        create_model("gmlp_s16_224", mlp_layer="dense", model_kwargs={"mlp_layer": "monarch"}, **TINY_GMLP)
    # An unset value (YAML's null) in model_kwargs sets nothing, as everywhere else.
    net = create_model("gmlp_s16_224", mlp_layer="monarch", model_kwargs={"mlp_layer": None}, **TINY_GMLP)
    assert isinstance(_fc1(net), MonarchLinear)


def test_a_dense_twin_of_a_monarch_recipe_leaves_nblocks_unused(caplog):
    """The twins share the recipe, only mlp_layer differs: the dense twin's nblocks sets nothing, and says so."""
    caplog.set_level(logging.INFO, logger="mindcv_ext")
    net = create_model("gmlp_s16_224", mlp_layer="dense", nblocks=4, **TINY_GMLP)
    assert type(_fc1(net)) is DenseLinear
    assert "nblocks=4 is left unused: mlp_layer 'dense' has no Monarch blocks" in caplog.text


def test_mindcvs_own_arguments_may_come_in_model_kwargs_but_never_override():
    net = create_model("gmlp_s16_224", model_kwargs={"num_classes": 7, "in_channels": 1}, **TINY_GMLP)
    net.set_train(False)
    assert net(ms.Tensor(np.ones((1, 1, 32, 32), np.float32))).shape == (1, 7)
    # train.py passes the data's classes: a configuration's model_kwargs saying otherwise is an error, not a head
    # of another width.
    with pytest.raises(ValueError, match="num_classes is set twice with different values: 10 as a model argument "
                                         "and 5 in model_kwargs"):
        create_model("gmlp_s16_224", num_classes=10, model_kwargs={"num_classes": 5}, **TINY_GMLP)
    with pytest.raises(ValueError, match="in_channels is set twice"):
        create_model("gmlp_s16_224", in_channels=3, model_kwargs={"in_channels": 1}, **TINY_GMLP)
    assert create_model("gmlp_s16_224", num_classes=7, model_kwargs={"num_classes": 7}, **TINY_GMLP).num_classes == 7
    assert create_model("gmlp_s16_224", **TINY_GMLP).num_classes == 1000  # mindcv's default


def test_an_unknown_argument_names_the_model():
    with pytest.raises(ValueError, match="model 'gmlp_s16_224' does not accept these arguments .*depth"):
        create_model("gmlp_s16_224", depth=3, **TINY_GMLP)
    def broken_layer(in_features, out_features):
        raise TypeError("a bug inside the layer")

    with pytest.raises(TypeError, match="a bug inside the layer"):  # reported as what it is, not as bad arguments
        create_model("gmlp_s16_224", linear_layer=broken_layer, **TINY_GMLP)


def _tiny_gmlp(mlp_layer: str):
    ms.set_seed(0)
    return create_model("gmlp_s16_224", num_classes=10, in_channels=1, img_size=28, patch_size=7,
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
    other = create_model("gmlp_s16_224", num_classes=10, in_channels=1, img_size=28, patch_size=7,
                                    num_blocks=1, embed_dim=32, mlp_ratio=4, mlp_layer="dense")
    ms.save_checkpoint(other, str(tmp_path / "other.ckpt"))
    with pytest.raises(ValueError, match=r"lacks the dense weight\(s\) blocks.1.mlp_channels.fc1.weight"):
        load_dense_into_monarch(_tiny_gmlp("monarch"), str(tmp_path / "other.ckpt"))
    # A dense checkpoint without a layer's bias would leave the Monarch layer's own initial bias in place.
    no_bias = {k: v for k, v in ms.load_checkpoint(path).items() if k != "blocks.0.mlp_channels.fc2.bias"}
    ms.save_checkpoint([{"name": k, "data": v} for k, v in no_bias.items()], str(tmp_path / "no_bias.ckpt"))
    with pytest.raises(ValueError, match=r"lacks the dense weight\(s\) blocks.0.mlp_channels.fc2.bias"):
        load_dense_into_monarch(_tiny_gmlp("monarch"), str(tmp_path / "no_bias.ckpt"))
