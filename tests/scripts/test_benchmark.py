"""scripts/benchmark.py runs its suites and writes its files (tiny sizes; no timing is asserted)."""
import csv
import importlib.util
import json

import pytest

from scripts import benchmark


def test_mlp_and_layer_suites_write_results(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(benchmark, "layer_grid", lambda grid: [(64, 256, 4, 32), (256, 64, 2, 32)])
    code = benchmark.main(["--suite", "all", "--models", "mixer_s32_224", "--img_size", "64", "--batch_size", "2",
                           "--model_repeats", "1", "--repeats", "2", "--warmup", "1", "--mlp_dim", "64",
                           "--mlp_hidden", "256", "--mlp_tokens", "32", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    machine = json.loads((tmp_path / "machine.json").read_text())
    assert machine["logical_cpus"] >= 1 and machine["mindspore"] == "2.10.0"
    mlp = list(csv.DictReader(open(tmp_path / "mlp.csv")))
    assert {(r["impl"], r["pass"]) for r in mlp} == {("dense", "fwd"), ("monarch", "fwd"), ("dense", "fwd+bwd"),
                                                   ("monarch", "fwd+bwd")}
    dense_fwd = next(r for r in mlp if r["impl"] == "dense" and r["pass"] == "fwd")
    assert float(dense_fwd["speedup_vs_dense"]) == 1.0 and float(dense_fwd["gflop"]) == pytest.approx(
        2 * 32 * 2 * 64 * 256 / 1e9, rel=1e-3)
    monarch_fwd = next(r for r in mlp if r["impl"] == "monarch" and r["pass"] == "fwd")
    # Monarch MACs per token: 64->256 (4,16,16)+(4,64,16); 256->64 (4,16,64)+(4,16,16)
    assert float(monarch_fwd["gflop"]) == pytest.approx(2 * 32 * (1024 + 4096 + 4096 + 1024) / 1e9, rel=1e-3)
    layers = list(csv.DictReader(open(tmp_path / "layers.csv")))
    assert len(layers) == 2 * 2 * 2 and (tmp_path / "layers.png").is_file()
    models = list(csv.DictReader(open(tmp_path / "models.csv")))
    assert [r["model"] for r in models] == ["mixer_s32_224", "mixer_s32_224_monarch"]
    assert int(models[1]["params"]) < int(models[0]["params"]) and float(models[0]["macs_g"]) > 0
    assert float(models[1]["macs_g"]) < float(models[0]["macs_g"]) and int(models[0]["peak_rss_mb"]) > 100
    assert (tmp_path / "models.png").is_file() and "| mixer_s32_224_monarch | monarch |" in out


def test_compare_torch(tmp_path, capsys):
    argv = ["--suite", "mlp", "--compare-torch", "--repeats", "1", "--warmup", "0", "--mlp_dim", "32",
            "--mlp_hidden", "64", "--mlp_tokens", "8"]
    if importlib.util.find_spec("torch") is None:
        assert benchmark.main(argv) == 2
        assert "--compare-torch needs PyTorch" in capsys.readouterr().err
        return
    assert benchmark.main(argv + ["--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader(open(tmp_path / "mlp.csv")))
    assert {r["framework"] for r in rows} == {"mindspore", "torch"}


def test_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        benchmark.main(["--repeats", "0"])
    assert "--repeats and --model_repeats must be >= 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no registered model matches"):
        benchmark.main(["--suite", "models", "--models", "resnet50"])


@pytest.mark.slow
def test_local_and_performer_memory_grows_linearly_with_length(tmp_path, capsys):
    """Doubling the sequence doubles their working memory (an N x N score matrix would quadruple it)."""
    code = benchmark.main(["--suite", "attention", "--attentions", "local", "performer", "--attn_lengths", "6272",
                           "12544", "--attn_batch_heads", "16", "--repeats", "1", "--out", str(tmp_path)])
    assert code == 0
    rows = list(csv.DictReader(open(tmp_path / "attention.csv")))
    assert [(r["attention"], int(r["tokens"])) for r in rows] == [("local", 6272), ("local", 12544),
                                                                  ("performer", 6272), ("performer", 12544)]
    for row in rows[1::2]:
        # Above ~300 MB the allocator's granularity is small against the growth.
        assert float(row["working_mb"]) > 300, row
        assert 1.5 < float(row["working_mb_growth"]) < 3.0, row
    assert "| local |" in capsys.readouterr().out
