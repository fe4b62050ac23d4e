"""T2T-ViT: every ../shared/fixtures/t2t fixture through the user's commands, the attention switch, bad input."""
import json

import numpy as np
import pytest

import mindspore as ms
from mindcv.models import create_model

import mindcv_ext  # noqa: F401  (registers the models)
from mindcv_ext.convert import ConversionError, ConversionReport, convert_state_dict, read_checkpoint
from mindcv_ext.convert.converter import extract_state_dict, torch_names
from mindcv_ext.models import count_params
from tests.utils import (assert_within_tolerance, convert_fixture, fixture_meta, on_path, shared_fixture_dir,
                         write_jpeg_folder)

FIXTURES = ["t2t_vit_14", "t2t_vit_t_14_full", "t2t_vit_t_14_local", "t2t_vit_t_14_performer",
            "t2t_vit_t_14_sblocal"]
TINY = dict(img_size=64, num_classes=10, depth=1)


def _meta(name):
    directory = shared_fixture_dir("t2t", name)
    return directory, fixture_meta(directory)


def test_every_shared_fixture_is_tested():
    assert sorted(p.name for p in shared_fixture_dir("t2t").iterdir() if p.is_dir()) == sorted(FIXTURES)


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_logits_match_reference(name, tmp_path, graph_mode, capsys, net_path):
    directory, meta = _meta(name)
    dst = tmp_path / f"{name}.ckpt"
    assert convert_fixture(directory, meta, dst) == 0
    summary = capsys.readouterr().out
    if meta["key_names"] == "fly":
        assert "renamed" in summary  # patch_embed.* / pos_embed.pe back to the official names

    net = create_model(meta["model"], checkpoint_path=str(dst), **meta["kwargs"])
    net.set_train(False)
    assert count_params(net) == meta["num_params"]
    logits = on_path(net, net_path)(ms.Tensor(np.load(directory / meta["input"]))).asnumpy()
    assert_within_tolerance(logits, np.load(directory / meta["expected_logits"]), meta["atol"], meta["rtol"])

    # The random features come from the checkpoint, not from the model's own seeded draw.
    state, _ = extract_state_dict(read_checkpoint(str(directory / meta["checkpoint"])))
    features = {p.name: p.asnumpy() for p in net.get_parameters() if p.name.endswith(("projection_matrix", ".w"))}
    assert len(features) == len(meta.get("random_features", {}).get("keys", {}))
    for key in meta.get("random_features", {}).get("keys", {}):
        ms_key = key.replace("patch_embed.", "tokens_to_token.")
        np.testing.assert_array_equal(features[ms_key], state[key])


def test_official_checkpoint_evaluates_with_every_attention(tmp_path, graph_mode, capsys):
    """The released layout (state_dict_ema, official names) converts for each T2T attention; the swapped-in
    attentions keep their seeded random features and stay close to full attention on this small model."""
    directory, meta = _meta("t2t_vit_t_14_full")
    x = ms.Tensor(np.load(directory / meta["input"]))
    logits = {}
    for attention in ("full", "local", "performer", "sblocal"):
        kwargs = dict(TINY, t2t_attn=attention)
        if attention != "full":  # windows and feature counts for 256 and 64 tokens (fly's ratios at 224 px)
            kwargs.update(dict(local=dict(local_context=[98, 24]), performer=dict(nb_features=[49, 12]),
                               sblocal=dict(local_context=[49, 12], nb_features=[24, 6]))[attention])
        dst = tmp_path / f"{attention}.ckpt"
        assert convert_fixture(directory, meta, dst, kwargs) == 0
        summary = capsys.readouterr().out
        assert ("kept the model's own" in summary) == (attention in ("performer", "sblocal"))
        net = create_model("t2t_vit_t_14", checkpoint_path=str(dst), **kwargs)
        net.set_train(False)
        logits[attention] = net(x).asnumpy()
    np.testing.assert_allclose(logits["full"], np.load(directory / meta["expected_logits"]), atol=1e-5, rtol=1e-5)
    for attention in ("local", "performer", "sblocal"):
        gap = np.abs(logits[attention] - logits["full"]).max()
        assert 1e-4 < gap < 0.2, (attention, gap)  # a different attention, the same network


def test_fly_checkpoint_with_features_of_another_attention(tmp_path, capsys):
    """fly's sblocal checkpoint evaluated with full attention: its random features are skipped, by name."""
    directory, meta = _meta("t2t_vit_t_14_sblocal")
    dst = tmp_path / "full.ckpt"
    assert convert_fixture(directory, meta, dst, dict(TINY, t2t_attn="full")) == 0
    assert "random features of an attention the model does not use" in capsys.readouterr().out


def test_feature_count_mismatch_names_the_parameter(tmp_path, capsys):
    directory, meta = _meta("t2t_vit_t_14_performer")
    dst = tmp_path / "bad.ckpt"
    kwargs = dict(meta["kwargs"], nb_features=[32, 12])
    assert convert_fixture(directory, meta, dst, kwargs) == 2
    err = capsys.readouterr().err
    assert "tokens_to_token.attention1.attn.attention_layer.projection_matrix" in err and "(32, 64)" in err
    assert not dst.exists()


def test_feature_seed_sets_the_draw():
    kwargs = dict(TINY, t2t_attn="performer", nb_features=[16, 8])
    first = create_model("t2t_vit_t_14", feature_seed=3, **kwargs)
    again = create_model("t2t_vit_t_14", feature_seed=3, **kwargs)
    other = create_model("t2t_vit_t_14", feature_seed=4, **kwargs)

    def features(net):
        return net.tokens_to_token.attention1.attn.attention_layer.projection_matrix.asnumpy()

    np.testing.assert_array_equal(features(first), features(again))
    assert np.abs(features(first) - features(other)).max() > 0.1
    assert not first.tokens_to_token.attention1.attn.attention_layer.projection_matrix.requires_grad


def test_strict_conversion_still_reports_missing_weights():
    net = create_model("t2t_vit_t_14", t2t_attn="performer", **TINY)
    state = {torch: p.asnumpy() for (name, torch), p in zip(torch_names(net).items(), net.get_parameters())}
    del state["cls_token"]
    report = ConversionReport()
    with pytest.raises(ConversionError, match="cls_token"):
        convert_state_dict(net, state, report=report)
    del state["tokens_to_token.attention1.attn.attention_layer.projection_matrix"]
    state["cls_token"] = np.zeros((1, 1, 384), np.float32)
    convert_state_dict(net, state, report=report)
    assert report.kept == ["tokens_to_token.attention1.attn.attention_layer.projection_matrix"]


@pytest.mark.parametrize("kwargs,culprit", [
    (dict(t2t_attn="linformer"), "t2t_attn must be one of ('full', 'local', 'performer', 'sblocal'), got 'linformer'"),
    (dict(img_size=72), "img_size must be a positive multiple of 16, got 72"),
    (dict(t2t_attn="local", local_context=[98, 24, 3]), "local_context must be a number or [attention1, attention2]"),
    (dict(t2t_attn="local", local_context=0), "local_context must be >= 1, got 0"),
])
def test_bad_arguments_name_the_culprit(kwargs, culprit):
    with pytest.raises(ValueError) as info:
        create_model("t2t_vit_t_14", **dict(TINY, **kwargs))
    assert culprit in str(info.value)


def test_the_family_declares_its_configuration_options():
    """models/t2t_vit.py's CONFIG_OPTIONS, which config.py turns into YAML keys and options: T2T_ViT's own
    keywords, with its attention types as the choices."""
    import inspect

    import config
    from mindcv_ext.layers.attention import ATTENTION_TYPES
    from mindcv_ext.models import t2t_vit

    declared = [{k: v for k, v in o.items() if k != "module"} for o in config.family_options()
                if o["module"] == "mindcv_ext.models.t2t_vit"]
    assert declared == list(t2t_vit.CONFIG_OPTIONS)
    assert {o["name"] for o in declared} <= set(inspect.signature(t2t_vit.T2T_ViT).parameters)
    assert [o.get("choices") for o in declared if o["name"] == "t2t_attn"] == [ATTENTION_TYPES]


def test_performer_t2t_rejects_attention_settings():
    with pytest.raises(ValueError, match="t2t_attn and its settings apply to the transformer T2T module"):
        create_model("t2t_vit_14", t2t_attn="local", **TINY)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """A folder dataset of real JPEG files: val/<class>/<image>."""
    return write_jpeg_folder(tmp_path_factory.mktemp("t2t_images"), {"val": 2}, ("n01", "n02", "n03"), (80, 72), seed=0)


def _direct_loss(model_kwargs, ckpt, folder):
    """Mean cross-entropy of the model on the folder, with eval.py's transform, computed without eval.py."""
    from mindcv_ext.data import create_file_loader, list_image_folder, transform_settings

    net = create_model("t2t_vit_t_14", checkpoint_path=str(ckpt), **model_kwargs)
    net.set_train(False)
    listing = list_image_folder(str(folder / "val"))
    paths, labels = listing.paths, listing.labels
    transforms = transform_settings(net.default_cfg, 64, 0.9, "bicubic")
    losses = []
    for images, target in create_file_loader(paths, labels, 4, transforms, 1).create_tuple_iterator(num_epochs=1):
        logits = net(images).asnumpy().astype(np.float64)
        log_probs = logits - logits.max(1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
        losses.extend(-log_probs[np.arange(len(logits)), target.asnumpy()])
    return float(np.mean(losses))


def test_eval_runs_a_converted_t2t_vit_t_14_with_each_attention(tmp_path, image_folder, capsys):
    """The user's path: convert the released layout once, then eval.py with the full, local and sblocal YAMLs
    (performer's builds in tests/e2e/test_configs.py, and every attention converts and runs in
    test_official_checkpoint_evaluates_with_every_attention)."""
    import eval as evaluation
    import yaml

    from tests.utils import REPO_ROOT

    directory, meta = _meta("t2t_vit_t_14_full")
    ckpt = tmp_path / "t2t_vit_t_14.ckpt"
    assert convert_fixture(directory, meta, ckpt) == 0
    common = ["--dataset", "folder", "--data_dir", str(image_folder), "--img_size", "64", "--num_classes", "10",
              "--model_kwargs", "{depth: 1}", "--ckpt_path", str(ckpt), "--batch_size", "4",
              "--num_parallel_workers", "1"]
    losses = {}
    for attention in ("full", "local", "sblocal"):
        config = REPO_ROOT / "configs" / "t2t_vit" / f"t2t_vit_t_14_{attention}_eval.yaml"
        capsys.readouterr()
        assert evaluation.main(["-c", str(config)] + common) == 0
        metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert metrics["num_samples"] == 6
        if attention == "sblocal":  # the YAML with the most settings is recomputed outside eval.py
            settings = {k: v for k, v in yaml.safe_load(config.read_text()).items()
                        if k in ("t2t_attn", "local_context", "nb_features", "softmax_eps", "normalization_eps",
                                 "feature_seed")}
            assert set(settings) > {"t2t_attn", "local_context", "nb_features"}
            expected = _direct_loss(dict(TINY, **settings), ckpt, image_folder)
            assert metrics["loss"] == pytest.approx(expected, abs=2e-6), attention
        losses[attention] = metrics["loss"]
    values = sorted(losses.values())
    assert min(b - a for a, b in zip(values, values[1:])) > 1e-6, losses  # three different attentions were evaluated

    # The same selection from the command line alone.
    assert evaluation.main(common + ["--model", "t2t_vit_t_14", "--t2t_attn", "local", "--local_context", "98,24",
                                     "--crop_pct", "0.9", "--interpolation", "bicubic"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["loss"] == pytest.approx(losses["local"], abs=1e-6)
