"""mindcv_ext.benchmark.cli: one option style (mindcv's underscores, the old hyphens accepted), and a tiny run."""
import csv

import pytest

from mindcv_ext.benchmark import cli
from mindcv_ext.layers import registered_linears


def test_model_kwargs_is_read_as_train_py_reads_it(capsys):
    """--model_kwargs goes through config's parser, so it has the same bounds as a config file's values."""
    args = cli.parse_args(["--model_kwargs", '{"n_layer": 1, img_size: 32}'])
    assert args.model_kwargs == {"n_layer": 1, "img_size": 32}
    assert cli.parse_args(["--model_kwargs", ""]).model_kwargs == {}
    for bad, message in (("[1, 2]", "expected a mapping"), ("{num_blocks:2}", "put a space after each colon"),
                         ("{" + "a" * 10_001 + "}", "10,000"), ("&k {inner: *k}", "contains itself")):
        with pytest.raises(SystemExit):
            cli.parse_args(["--model_kwargs", bad])
        assert message in capsys.readouterr().err


def test_options():
    args = cli.parse_args([])
    assert args.suite == ["mlp"] and args.layers is None and args.model_kwargs == {} and not args.compare_torch
    assert cli.parse_args([], default_suites=("gpt2",)).suite == ["gpt2"]
    assert cli.parse_args(["--compare-torch"]).compare_torch and cli.parse_args(["--compare_torch"]).compare_torch
    assert cli.parse_args(["--layers", *registered_linears()]).layers == list(registered_linears())
    assert cli.parse_args(["--model_kwargs", "{num_blocks: 4}"]).model_kwargs == {"num_blocks": 4}


def test_bad_options(capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["--layers", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.parse_args(["--gpt2_warmup", "-1"])
    assert "--warmup, --model_warmup and --gpt2_warmup >= 0" in capsys.readouterr().err


def test_a_tiny_mlp_run_writes_its_files(tmp_path, capsys):
    code = cli.main(["--suite", "mlp", "--layers", "monarch", "--repeats", "1", "--warmup", "0", "--mlp_dim", "32",
                     "--mlp_hidden", "64", "--mlp_tokens", "4", "--cpu_kernels", "off", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "### MLP 32->64->32, 4 tokens" in out and f"wrote {tmp_path}/" in out
    with open(tmp_path / "mlp.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [(r["impl"], r["pass"]) for r in rows] == [("dense", "fwd"), ("monarch", "fwd"), ("dense", "fwd+bwd"),
                                                      ("monarch", "fwd+bwd")]
    assert (tmp_path / "machine.json").is_file()
