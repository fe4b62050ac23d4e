"""config.py: YAML gives defaults, the command line wins, and every mistake names the culprit."""
import re

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
    ("mlp_layer: butterfly\n", "key 'mlp_layer' is 'butterfly'; choose one of"),
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


def test_save_args_round_trips(tmp_path):
    args = config.parse_args(["--model", "mixer_s16_224", "--scale", "0.3,1", "--model_kwargs", "{patch_size: 8}"])
    path = tmp_path / "saved.yaml"
    config.save_args(args, str(path))
    saved = yaml.safe_load(path.read_text())
    assert saved["model"] == "mixer_s16_224" and saved["scale"] == [0.3, 1.0] and "config" not in saved
    again = config.parse_args(["-c", str(path)])
    assert vars(again) == {**vars(args), "config": str(path)}
