"""mindcv_ext.benchmark.attention: working memory against the baseline, its growth, the full-attention cap."""
import pytest

from mindcv_ext.benchmark import attention


def test_measure_attention_in_this_process():
    row = attention.measure_attention(kind="local", tokens=16, batch_heads=2, repeats=1)
    assert row["attention"] == "local" and row["settings"] == '{"local_context": 98}'
    assert row["batch_heads"] == 2 and row["fwd_ms"] > 0 and row["peak_extra_mb"] >= 0


def test_run_attention_subtracts_the_baseline_and_skips_long_full_attention(monkeypatch):
    peaks = {("full", 8): 100.0, ("full", 16): 110.0, ("local", 8): 50.0, ("local", 16): 60.0, ("local", 32): 80.0}
    calls = []

    def fake_worker(name, kwargs, device_target="auto", label=""):
        calls.append((kwargs["kind"], kwargs["tokens"]))
        return {"attention": kwargs["kind"], "tokens": kwargs["tokens"],
                "peak_extra_mb": peaks[kwargs["kind"], kwargs["tokens"]]}

    monkeypatch.setattr(attention, "run_worker", fake_worker)
    rows = attention.run_attention(attentions=["full", "local"], lengths=[32, 16], baseline_tokens=8,
                                   full_max_tokens=16, repeats=1)
    assert calls == [("full", 8), ("full", 16), ("local", 8), ("local", 16), ("local", 32)]
    assert [(r["attention"], r["tokens"], r["working_mb"], r["working_mb_growth"]) for r in rows] == [
        ("full", 16, 10.0, ""), ("local", 16, 10.0, ""), ("local", 32, 30.0, pytest.approx(3.0))]
