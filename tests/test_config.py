"""config.py: YAML gives defaults, the command line wins, and every mistake names the culprit."""
import re
from pathlib import Path

import pytest
import yaml

import config


def _yaml(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return str(path)


def test_yaml_defaults_and_command_line_precedence(tmp_path):
    path = _yaml(tmp_path, "model: gmlp_s16_224\nlr: 1.0e-3\nscale: [0.5, 1.0]\nema: True\n"
                           "model_kwargs: {patch_size: 4, num_blocks: 2}\nmlp_layer: monarch\n")
    args = config.parse_args(["-c", path, "--lr", "0.5", "--scale", "0.2,0.9", "--ema", "False", "--distribute"])
    assert args.model == "gmlp_s16_224" and args.mlp_layer == "monarch"
    assert args.lr == 0.5 and args.scale == [0.2, 0.9] and args.ema is False and args.distribute is True
    assert args.model_kwargs == {"patch_size": 4, "num_blocks": 2}
    args = config.parse_args(["-c", path, "--scale", "[0.3, 1.0]", "--model_kwargs", "{embed_dim: 64}"])
    assert args.scale == [0.3, 1.0] and args.model_kwargs == {"embed_dim": 64} and args.lr == 1e-3 and args.ema


def test_t2t_attention_keys_reach_the_entrypoint_only_when_set(tmp_path):
    path = _yaml(tmp_path, "model: t2t_vit_t_14\nt2t_attn: sblocal\nlocal_context: [49, 12]\nnb_features: 24\n")
    args = config.parse_args(["-c", path, "--feature_seed", "3"])
    assert config.model_arguments(args) == {"t2t_attn": "sblocal", "local_context": [49, 12], "nb_features": [24],
                                            "feature_seed": 3}
    assert config.model_arguments(config.parse_args([])) == {}


def test_defaults_work_on_a_cpu_machine():
    args = config.parse_args([])
    assert args.device_target == "auto" and args.mode == 0
    assert args.image_resize is None and args.crop_pct is None and args.mean is None  # the model's own
    assert args.batch_size == 128 and args.opt == "adam" and args.keep_checkpoint_max == 10  # mindcv's


@pytest.mark.parametrize("text,message", [
    ("lr_rate: 0.1\n", "unknown key 'lr_rate' in .*run.yaml; did you mean 'lr'\\?"),
    ("warmup_epoch: 3\n", "unknown key 'warmup_epoch' .*did you mean 'warmup_epochs'\\?"),
    ("amp_level: O4\n", "key 'amp_level' is 'O4'; choose one of 'O0', 'O1', 'O2', 'O3', 'auto'"),
    ("mlp_layer: butterfly\n", "key 'mlp_layer' is 'butterfly'; choose one of None, 'dense', 'monarch', 'pixelfly'"),
    ("ema: maybe\n", "key 'ema': expected a boolean"),
    ("batch_size: many\n", "key 'batch_size': invalid literal"),
    ("t2t_attn: linformer\n", "key 't2t_attn' is 'linformer'; choose one of None, 'full', 'local'"),
    ("local_context: [98, wide]\n", "key 'local_context': expected a list of ints, got \\[98, 'wide'\\]"),
    ("nb_features: [24.5, 6]\n", "key 'nb_features': expected a list of ints"),
    ("scale: 0.5\n", None),  # a single number is a one-element list: allowed
    ("- just\n- a list\n", "must hold a mapping"),
])
def test_bad_yaml_names_the_key(tmp_path, capsys, text, message):
    path = _yaml(tmp_path, text)
    if message is None:
        assert config.parse_args(["-c", path]).scale == [0.5]
        return
    with pytest.raises(SystemExit) as info:
        config.parse_args(["-c", path])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 2  # one line, and a pointer to --help; no usage dump
    assert re.search(message, err), err


def test_bad_command_line_values(capsys):
    for argv, message in ((["--ema", "maybe"], "expected a boolean"), (["--opt", "adamx"], "invalid choice"),
                          (["--scale", "a,b"], "expected a list of floats"), (["--nope", "1"], "unrecognized")):
        with pytest.raises(SystemExit):
            config.parse_args(argv)
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        config.parse_args(["-c", "/no/such/config.yaml"])
    assert "config file '/no/such/config.yaml' does not exist" in capsys.readouterr().err


def test_model_kwargs_without_a_space_after_the_colon_is_an_error(capsys):
    # YAML reads {patch_size:4} as a key without a value, which create_model would drop without a word.
    with pytest.raises(SystemExit) as info:
        config.parse_args(["--model_kwargs", "{patch_size:4, embed_dim: 32}"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "'patch_size:4' has no value; put a space after each colon" in err
    assert config.parse_args(["--model_kwargs", '{"patch_size":4}']).model_kwargs == {"patch_size": 4}


def test_newcomer_spellings_get_the_right_suggestion(tmp_path, capsys):
    with pytest.raises(SystemExit):
        config.parse_args(["--modle", "gmlp_s16_224"])
    assert "unrecognized arguments: --modle gmlp_s16_224; did you mean '--model'?" in capsys.readouterr().err
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 0.1\n")
    with pytest.raises(SystemExit):
        config.parse_args(["-c", str(path)])
    assert "unknown key 'learning_rate'" in (err := capsys.readouterr().err) and "did you mean 'lr'?" in err


def test_the_ports_older_keys_and_options_are_read(tmp_path):
    path = tmp_path / "port.yaml"
    path.write_text("model: gmlp_Ti\nfilter_bias_and_bn: True\ndataset_path: /data/imagenet\n")
    args = config.parse_args(["--config", str(path)])
    assert (args.weight_decay_filter, args.data_dir) == ("norm_and_bias", "/data/imagenet")
    assert args.notes == [f"{path}: key 'filter_bias_and_bn' is an older name; read as weight_decay_filter: "
                          f"'norm_and_bias' (write that instead)",
                          f"{path}: key 'dataset_path' is an older name; read as data_dir: '/data/imagenet' "
                          f"(write that instead)"]
    assert config.parse_args(["--dataset_path", "/x"]).data_dir == "/x"


def test_save_args_round_trips(tmp_path):
    args = config.parse_args(["--model", "mixer_s16_224", "--scale", "0.3,1", "--model_kwargs", "{patch_size: 8}"])
    path = tmp_path / "saved.yaml"
    config.save_args(args, str(path))
    saved = yaml.safe_load(path.read_text())
    assert saved["model"] == "mixer_s16_224" and saved["scale"] == [0.3, 1.0] and "config" not in saved
    again = config.parse_args(["-c", str(path)])
    assert vars(again) == {**vars(args), "config": str(path)}


def test_pixelfly_settings_reach_the_model(tmp_path):
    """mlp_layer: pixelfly is a valid choice and its settings travel in model_kwargs to the Mixer entrypoint."""
    from mindcv_ext.engine.runtime import build_model
    from mindcv_ext.layers import SparseLRLinear

    def build(args):  # the call train.py makes
        return build_model(args.model, 10, args.in_channels, args.pretrained, args.drop_rate, args.drop_path_rate,
                           args.img_size, args.mlp_layer, args.nblocks, args.model_kwargs,
                           **config.model_arguments(args))

    path = _yaml(tmp_path, "model: mixer_s16_224\nimg_size: 32\nmlp_layer: pixelfly\n"
                           "model_kwargs: {patch_size: 8, num_blocks: 1, embed_dim: 256, butterfly_size: 8, "
                           "n_factors: 2, block: 32, rank: 32}\n")
    args = config.parse_args(["-c", path])
    assert args.mlp_layer == "pixelfly"
    assert args.model_kwargs == {"patch_size": 8, "num_blocks": 1, "embed_dim": 256, "butterfly_size": 8,
                                 "n_factors": 2, "block": 32, "rank": 32}
    fc1 = build(args).blocks[0].mlp_channels.fc1
    assert isinstance(fc1, SparseLRLinear) and (fc1.in_features, fc1.out_features) == (256, 1024)
    # fly's 256x1024 layer: a (32, 8) block layout with 3 of 8 blocks per row, 96 blocks of 32x32, rank 32
    assert fc1.sparse.layout.shape == (32, 8) and fc1.sparse.weight.shape == (96, 32, 32)
    assert fc1.low_rank.lr_weight1.shape == (32, 256) and fc1.gate is not None

    # The values above are also the layer's defaults; other values prove the keys are not dropped on the way.
    args = config.parse_args(["-c", path, "--model_kwargs", "{patch_size: 8, num_blocks: 1, embed_dim: 256, "
                              "butterfly_size: 4, n_factors: 1, block: 16, rank: 8, gating: False}"])
    fc1 = build(args).blocks[0].mlp_channels.fc1
    assert fc1.sparse.block == 16 and fc1.sparse.layout.shape == (64, 16) and fc1.sparse.weight.shape == (512, 16, 16)
    assert fc1.low_rank.lr_weight1.shape == (8, 256) and fc1.gate is None


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_passes_the_training_validation_with_no_stray_text(path):
    args = config.parse_args(["-c", str(path)])
    raw = yaml.safe_load(path.read_text())
    assert {k: v for k, v in raw.items() if isinstance(v, str) and "#" in v} == {}
    assert args.auto_augment == raw.get("auto_augment")


def test_an_auto_augment_string_with_stray_text_is_refused(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text('auto_augment: "randaug-m9-mstd0.5-inc1   # [ours] the paper says RandAugment"\n')
    with pytest.raises(SystemExit):
        config.parse_args(["-c", str(path)])
    assert "section 'inc1   # [ours] the paper says RandAugment' is not one of randaug's" in capsys.readouterr().err
    assert config.parse_args(["--auto_augment", "augmix-m5-w3"]).auto_augment == "augmix-m5-w3"


def test_the_platforms_own_arguments_are_accepted():
    # OpenI's older task convention appends these (and writes booleans as 1/0); c2net supplies the same paths.
    args = config.parse_args(["--multi_data_url", '[{"dataset_url": "s3://x"}]', "--train_url=/cache/output",
                              "--distribute=1", "--batch_size=64"])
    assert args.train_url == "/cache/output" and args.distribute is True and args.batch_size == 64
