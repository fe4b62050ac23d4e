"""config.py: YAML gives defaults, the command line wins, and every mistake names the culprit."""
import io
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import config
from tests.utils import REPO_ROOT


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


def test_family_options_are_declared_by_the_family_and_read_without_mindspore(tmp_path):
    """config.py names no family's keys: T2T-ViT declares its own (CONFIG_OPTIONS in models/t2t_vit.py), which
    config.py reads from the source, so parsing a configuration still imports neither MindSpore nor mindcv_ext."""
    names = ["t2t_attn", "local_context", "nb_features", "softmax_eps", "normalization_eps", "feature_seed"]
    assert [(o["name"], o["module"]) for o in config.family_options()] == [(n, "mindcv_ext.models.t2t_vit")
                                                                          for n in names]
    source = Path(config.__file__).read_text()
    assert not [name for name in names if name in source]
    script = ("import json, sys, config; args = config.parse_args(['--t2t_attn', 'local', '--local_context', '98,24',"
              " '--softmax_eps', '0.5']); print(json.dumps([config.model_arguments(args), "
              "sorted({'mindspore', 'mindcv_ext'} & set(sys.modules))]))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env=env, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == [{"t2t_attn": "local", "local_context": [98, 24], "softmax_eps": [0.5]}, []]
    with pytest.raises(ValueError, match="CONFIG_OPTIONS must be a literal table"):
        config._family_table("family.py", "CONFIG_OPTIONS = (dict(name='x', type='int', help='x'),)\n")


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
    # structures beyond the bounds: refused while reading the file, naming the key
    ("mean: &m [1, *m]\n", "key 'mean' contains itself through a YAML alias"),
    ("model_kwargs: &k {inner: *k}\n", "key 'model_kwargs' contains itself through a YAML alias"),
    ("lr: 0.1\nmodel_kwargs: {depth: " + "[" * 20 + "]" * 20 + "}\n", "key 'model_kwargs' nests deeper than 20 levels"),
    ("model_kwargs: {a: &a " + "[" * 10 + "]" * 10 + ", b: &b " + "[" * 10 + "*a" + "]" * 10 + "}\n",
     "key 'model_kwargs' nests deeper than 20 levels through YAML aliases"),
    pytest.param("scale: " + "[" * 5000 + "]" * 5000 + "\n", "key 'scale' nests deeper than 20 levels",
                 id="scale-5000-levels"),  # PyYAML's composer: RecursionError
    pytest.param("nb_features: [" + ", ".join(["wide"] * 5000) + "]\n",  # the message shows the list's start
                 "key 'nb_features': expected a list of ints, got \\['wide', 'wide', .*'wide', \\.\\.\\.\\]$",
                 id="nb_features-5000-words"),
    # one long scalar: PyYAML builds a base-60 int ("1:1:...") in quadratic time (minutes for 1 MiB), and Python
    # refuses an int of over 4,300 digits (a ValueError naming nothing)
    pytest.param("lr: " + ":".join(["1"] * 300_000) + "\n", "key 'lr' holds a value of 599,999 characters "
                 "\\(at most 4,096\\)", id="lr-base-60"),
    pytest.param("seed: " + "7" * 5000 + "\n", "key 'seed' holds a value of 5,000 characters", id="seed-5000-digits"),
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
    assert re.search(message, err, re.MULTILINE), err
    assert len(err) < 500  # a user's value is shown cut short


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
    from mindcv_ext.layers import SparseLRLinear
    from mindcv_ext.models import create_model

    def build(args):  # the call train.py makes
        return create_model(args.model, **config.model_options(args, num_classes=10))

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


# Bounded configuration input (issue 29, failure 3). PyYAML shares an aliased node, so this 1.4 KB text loads
# cheaply, but each level multiplies by ten what a type check, an error message or save_args walks: 10**25 numbers.
def _alias_bomb(item: str = "- ", levels: int = 25) -> str:
    """Indented lines of anchored lists, each holding ten aliases of the one before: a list's items (``item``
    "- ") or a mapping's values ("a0: ", "a1: ", ... with ``item`` "{name}: ")."""
    lines = [f"  {item.format(name='a0')}&a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"  {item.format(name=f'a{i}')}&a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _flow_alias_bomb(levels: int = 25) -> str:
    """The same as a flow mapping, for the command line: {a0: &a0 [1, ...], a1: &a1 [*a0, ...], ...}."""
    items = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    items += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "{" + ", ".join(items) + "}"



def _isolated(folder: Path, call: str):
    """Run ``call`` (an expression using config or eval) in a child Python held to 1 GiB of address space and 30 s,
    so that a configuration that expands without bound fails the test instead of the machine. Returns the call's
    result (an exit code, or None), its seconds, its peak traced memory and growth of the resident set (bytes), and
    the child's stderr."""
    script = textwrap.dedent(f"""
        import json, resource, sys, time, tracemalloc
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        sys.path.insert(0, {str(REPO_ROOT)!r})
        import config, eval as evaluation
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tracemalloc.start()
        start = time.perf_counter()
        try:
            result = {call}
        except SystemExit as exc:
            result = exc.code
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) * 1024
        print(json.dumps({{"result": result if isinstance(result, int) else None, "seconds": seconds,
                           "peak": peak, "grown": grown}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, cwd=folder,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1]), done.stderr


@pytest.mark.parametrize("where", ["mean", "model_kwargs in the file", "--model_kwargs", "eval's run configuration"])
def test_an_alias_bomb_is_refused_at_once_naming_its_key(tmp_path, where):
    """Before: `mean:` passed 1 GiB in 13 s (3 GiB in 54 s in train.py) building an error message's repr, as did
    eval.py with the run's configuration; the model_kwargs bombs were accepted, to be expanded later."""
    bomb = tmp_path / "bomb.yaml"
    if where == "mean":
        bomb.write_text("model: gmlp_s16_224\nmean:\n" + _alias_bomb())
        call, message = f"config.parse_args(['-c', {str(bomb)!r}])", f"{bomb}: key 'mean' expands"
    elif where == "model_kwargs in the file":
        bomb.write_text("model: gmlp_s16_224\nmodel_kwargs:\n" + _alias_bomb("{name}: "))
        call, message = f"config.parse_args(['-c', {str(bomb)!r}])", f"{bomb}: key 'model_kwargs' expands"
    elif where == "--model_kwargs":
        call = f"config.parse_args(['--model_kwargs', {_flow_alias_bomb()!r}])"
        message = "argument --model_kwargs: key 'a4' expands"  # a4 alone is 111,111 values
    else:  # the configuration train.py saved beside the checkpoint, which eval.py finds by itself
        saved = tmp_path / "run" / "gmlp_s16_224.yaml"
        saved.parent.mkdir()
        saved.write_text("model: gmlp_s16_224\nmean:\n" + _alias_bomb())
        call = f"evaluation.main(['--ckpt_path', {str(saved.parent / 'gmlp_s16_224-1_1.ckpt')!r}])"
        message = f"eval.py: error: {saved}: key 'mean' expands"
    outcome, err = _isolated(tmp_path, call)
    assert outcome["result"] == 2, err
    assert f"{message} to more than 100,000 values through YAML aliases; a configuration value is a few numbers" \
        in err, err
    assert len(err.splitlines()) <= 2 and len(err) < 500, err
    assert outcome["seconds"] < 1.0 and outcome["peak"] < 10 << 20 and outcome["grown"] < 50 << 20, outcome


def test_many_values_over_several_keys_are_refused_at_the_key_that_passes_the_bound(tmp_path, capsys):
    path = _yaml(tmp_path, "scale: &s [" + ", ".join(["0.5"] * 30000) + "]\nratio: *s\nre_scale: *s\n"
                           "re_ratio: *s\n")
    with pytest.raises(SystemExit):
        config.parse_args(["-c", path])
    assert f"{path}: key 're_ratio' brings the file past 100,000 values through YAML aliases" in \
        capsys.readouterr().err


def test_depth_bound_is_twenty_levels_below_a_key(tmp_path, capsys):
    def kwargs(levels):  # model_kwargs itself is one level: a mapping
        return _yaml(tmp_path, "model_kwargs: {deep: " + "[" * (levels - 1) + "1" + "]" * (levels - 1) + "}\n")

    assert config.parse_args(["-c", kwargs(20)]).model_kwargs == {"deep": yaml.safe_load("[" * 19 + "1" + "]" * 19)}
    with pytest.raises(SystemExit):
        config.parse_args(["-c", kwargs(21)])
    assert "key 'model_kwargs' nests deeper than 20 levels; a configuration value is a number" in \
        capsys.readouterr().err


def test_an_oversized_config_file_is_refused_after_its_first_mib(tmp_path, capsys):
    path = _yaml(tmp_path, "model: gmlp_s16_224\n" + "# padding\n" * 120_000)  # 1.2 MB, valid YAML
    with pytest.raises(SystemExit) as info:
        config.parse_args(["-c", path])
    assert info.value.code == 2
    assert f"{path}: more than 1 MiB of text; a configuration is a few KB" in capsys.readouterr().err
    with pytest.raises(config.ConfigError, match="^stream: more than 1 MiB of text; a configuration is a few KB$"):
        config.load_yaml(io.StringIO("a: 1\n" + " " * (1 << 20)), "stream")


@pytest.mark.parametrize("argv,message", [
    (["--scale", "[" * 25 + "0.5" + "]" * 25], "argument --scale: the value nests deeper than 20 levels"),
    (["--model_kwargs", "{a: &a [1, *a]}"], "argument --model_kwargs: key 'a' contains itself through a YAML alias"),
    (["--model_kwargs", "{a: " + "[" * 21 + "]" * 21 + "}"], "argument --model_kwargs: key 'a' nests deeper than 20"),
    (["--scale", "[" + "1, " * 5000 + "]"],
     "argument --scale: a list of 15,002 characters is too long (at most 10,000), starting '[1, 1, "),
    (["--model_kwargs", "{a: [" + "1, " * 5000 + "]}"], "argument --model_kwargs: a mapping of 15,007 characters"),
    (["--scale", "[" + "-" * 9000 + "1]"], "argument --scale: cannot read a list from '[-----"),  # parser MemoryError
    (["--mean", "(" * 3000 + ")" * 3000], "argument --mean: cannot read a list from '(((((("),  # SyntaxError
])
def test_structured_command_line_values_are_bounded(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        config.parse_args(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and len(err) < 600, err


def test_convert_checkpoint_model_kwargs_are_bounded(capsys):
    from scripts.convert_checkpoint import parse_args as convert_args

    base = ["--model", "gmlp_s16_224", "--src", "x.pth", "--dst", "y.ckpt", "--model-kwargs"]
    assert convert_args(base + ['{"img_size": 32, "layers": [[1, 2]]}']).model_kwargs == {"img_size": 32,
                                                                                            "layers": [[1, 2]]}
    for kwargs, message in (('{"a": ' + "[" * 25 + "]" * 25 + "}",
                             "--model-kwargs: key 'a' nests deeper than 20 levels"),
                            # json's RecursionError, or past it (MindSpore raises the recursion limit) the bound
                            ("[" * 4999 + "]" * 4999, "nests deeper than"),
                            ('{"a": [' + "1, " * 4000 + "1]}", "--model-kwargs is 12,010 characters (at most 10,000)")):
        with pytest.raises(SystemExit) as info:
            convert_args(base + [kwargs])
        err = capsys.readouterr().err
        assert info.value.code == 2 and message in err and len(err) < 1000, err


def test_check_value_measures_shared_and_self_containing_values():
    shared = [1.0] * 100
    for _ in range(5):
        shared = [shared] * 100  # 10**12 numbers in 600 list slots
    with pytest.raises(config.ConfigError, match="^key 'mean' expands to more than 100,000 values; a configuration"):
        config.check_value({"lr": 0.1, "mean": shared})
    loop = [1]
    loop.append(loop)
    with pytest.raises(config.ConfigError, match="^the value contains itself"):
        config.check_value(loop)
    value = {"patch_size": 4, "layers": [[1, 2], [3]], "name": "x"}
    assert config.check_value(value) is value and config.check_value(7) == 7


def test_eval_still_finds_the_run_configuration(tmp_path):
    import eval as evaluation

    args = config.parse_args(["--model", "gmlp_s16_224", "--scale", "0.3,1"])
    config.save_args(args, str(tmp_path / "gmlp_s16_224.yaml"))
    (tmp_path / "notes.yaml").write_text("not: [a, config\n")  # invalid YAML beside it is passed over, as before
    (tmp_path / "other.yaml").write_text("x: " + "[" * 30 + "]" * 30 + "\n")  # beyond the bounds: passed over too
    ckpt = str(tmp_path / "gmlp_s16_224-1_1.ckpt")
    assert evaluation._run_config(["--ckpt_path", ckpt]) == ["-c", str(tmp_path / "gmlp_s16_224.yaml"),
                                                             "--ckpt_path", ckpt]


SAFE_LOAD_CASES = [
    "a: &x [1, 2.5, -3]\nb: *x\nbase: &b {p: 1, q: [3]}\nc: {<<: *b, q: 2}\nd: {<<: [*b, {r: 5}]}\n",
    "e: !!str 12\nf: 2024-01-01\ng: null\nh: ~\ni: yes\nj: 0x1f\nk: .inf\nl: 'quoted # not a comment'\n",
    "m: |\n  two\n  lines\nn: {x: {y: {z: [[1], [2, [3]]]}}}\n",
    "", "# only a comment\n", "--- 1\n", "[1, 2]\n",
]


@pytest.mark.parametrize("text", [p.read_text() for p in CONFIGS] + SAFE_LOAD_CASES,
                         ids=[p.name for p in CONFIGS] + [f"text{i}" for i in range(len(SAFE_LOAD_CASES))])
def test_load_yaml_reads_what_safe_load_reads(text):
    assert config.load_yaml(text, "x.yaml") == yaml.safe_load(text)
    assert config.load_yaml(io.StringIO(text)) == yaml.safe_load(text)
    with pytest.raises(yaml.YAMLError):  # invalid YAML is still yaml's error, for the caller to word
        config.load_yaml(text + "\n: [unclosed\n")


def test_the_layer_names_read_from_the_sources_are_the_registry():
    """config.py reads @register_linear's names without importing MindSpore; they are the registry's, in order."""
    from mindcv_ext.layers import registered_linears

    assert config.registered_layer_names() == registered_linears()
    assert "btt" in config.registered_layer_names()
