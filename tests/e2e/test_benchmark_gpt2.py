"""scripts/benchmark_gpt2.py (scripts/benchmark.py --suite gpt2): fly's SSL benchmark end to end at a tiny size."""
import csv
import json

import pytest

from mindcv_ext.benchmark import attention, gpt2, layers, models
from mindcv_ext.benchmark.gpt2 import FORK_FIELDS
from scripts import benchmark, benchmark_gpt2


GPT2_TINY = {"n_layer": 1, "n_embd": 512, "n_head": 8, "vocab_size": 64}


def test_gpt2_suite_writes_the_forks_columns(tmp_path, capsys):
    """The gpt2 suite end to end on a one-block GPT-2 (two variants: a worker process each): CSV with the fork's
    columns first, the layer table, the plot."""
    variants = ["nnlinear", "ssl4x"]
    # benchmark_gpt2.py runs the gpt2 suite without --suite
    code = benchmark_gpt2.main(["--model_kwargs", json.dumps(GPT2_TINY), "--gpt2_variants", *variants,
                           "--batch_sizes", "1", "2", "--seq_len", "16", "--iterations", "2", "--gpt2_warmup", "1",
                           "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "### gpt2 forward, sequence 16" in out
    with open(tmp_path / "gpt2.csv") as stream:
        reader = csv.DictReader(stream)
        assert reader.fieldnames[:len(FORK_FIELDS)] == FORK_FIELDS
        rows = list(reader)
    assert [(r["variant"], r["batch_size"]) for r in rows] == [(v, b) for b in ("1", "2") for v in variants]
    by = {(r["variant"], r["batch_size"]): r for r in rows}
    assert by["ssl4x", "1"]["experiment"] == "ssl_bench_mlp_gpt2_ssl4x_1" and by["ssl4x", "1"]["name"] == "forward"
    for r in rows:
        assert float(r["avgTime (inc)"]) == pytest.approx(float(r["time/ms (inc)"]) / 2, rel=1e-3)
        assert int(r["Count (inc)"]) == 2 and r["precision"] == "fp32" and float(r["speedup_vs_nnlinear"]) > 0
    assert float(by["nnlinear", "2"]["speedup_vs_nnlinear"]) == 1.0
    # ssl4x holds a quarter of the MLP weights, without biases: 2 * 512 * 2048 * 3/4 + 2048 + 512 fewer.
    assert int(by["nnlinear", "1"]["params"]) - int(by["ssl4x", "1"]["params"]) == 2 * 512 * 2048 * 3 // 4 + 2560
    # MACs: 16 tokens x (attention 4*512^2 + MLP + tied head 64*512) + 2 * 16^2 * 512 for the attention products.
    mlp = {"nnlinear": 2 * 512 * 2048, "ssl4x": 2 * 512 * 2048 // 4}
    for variant, macs in mlp.items():
        expected = 16 * (4 * 512 * 512 + macs + 64 * 512) + 2 * 16 * 16 * 512
        assert float(by[variant, "1"]["macs_g"]) == pytest.approx(expected / 1e9, abs=0.006)
    with open(tmp_path / "gpt2_layers.csv") as stream:
        layers = list(csv.DictReader(stream))
    assert sorted({(r["layer"], r["in_features"], r["out_features"]) for r in layers}) == [
        ("fc1", "512", "2048", ), ("fc2", "2048", "512")]
    assert len(layers) == 2 * len(variants) and all(int(r["tokens"]) == 16 for r in layers)
    assert {r["variant"]: int(r["params"]) for r in layers if r["layer"] == "fc1"} == {
        "nnlinear": 512 * 2048 + 2048, "ssl4x": 512 * 2048 // 4}
    assert (tmp_path / "gpt2.png").is_file()


def test_the_gpt2_suite_from_benchmark_py(monkeypatch, graph_mode, capsys):
    """benchmark.py --suite gpt2 runs the same suite as benchmark_gpt2.py, with the same settings, and that suite
    alone; its options are checked before anything runs."""
    class Stop(Exception):
        pass

    calls = []

    def run_gpt2(**kwargs):  # the suite's settings, then stop before any measurement
        calls.append({key: value for key, value in kwargs.items() if key != "progress"})
        raise Stop

    monkeypatch.setattr(gpt2, "run_gpt2", run_gpt2)
    for module, suite in ((layers, "run_mlp"), (layers, "run_layers"), (models, "run_models"),
                          (attention, "run_attention")):
        monkeypatch.setattr(module, suite, lambda suite=suite, **kwargs: pytest.fail(f"{suite} ran too"))
    options = ["--gpt2_variants", "ssl4x", "monarch8b", "--batch_sizes", "2", "--seq_len", "8", "--iterations", "3"]
    with pytest.raises(Stop):
        benchmark.main(["--suite", "gpt2", *options])
    with pytest.raises(Stop):
        benchmark_gpt2.main(options)
    assert len(calls) == 2 and calls[0] == calls[1]
    assert (calls[0]["variants"], calls[0]["batch_sizes"], calls[0]["seq_len"], calls[0]["iterations"]) == (
        ["ssl4x", "monarch8b"], [2], 8, 3)
    with pytest.raises(SystemExit):
        benchmark.main(["--suite", "gpt2", "--gpt2_variants", "ssl3x"])
    assert "invalid choice: 'ssl3x'" in capsys.readouterr().err
