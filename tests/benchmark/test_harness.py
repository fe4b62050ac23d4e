"""mindcv_ext.benchmark.harness: alternation, medians, peak memory and worker processes (no timing asserted)."""
import mmap
import os

import pytest

import mindcv_ext
from mindcv_ext.benchmark import harness


def test_alternating_samples_warm_up_then_alternate_round_by_round():
    order = []
    calls = {name: (lambda name=name: order.append(name)) for name in ("a", "b", "c")}
    samples = harness.alternating_samples(calls, repeats=3, warmup=2)
    assert order == ["a", "a", "b", "b", "c", "c"] + ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    assert {name: len(values) for name, values in samples.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(value >= 0.0 for values in samples.values() for value in values)


def test_time_alternating_is_the_median_of_the_samples(monkeypatch):
    ticks = iter([0.0, 0.001, 0.001, 0.004, 0.004, 0.006])  # perf_counter: calls of 1, 3 and 2 ms
    monkeypatch.setattr(harness.time, "perf_counter", lambda: next(ticks))
    assert harness.time_alternating({"x": lambda: None}, repeats=3, warmup=0) == {"x": pytest.approx(2.0)}


def test_time_samples_times_each_call_after_the_warm_up():
    calls = []
    samples = harness.time_samples(lambda: calls.append(1), repeats=4, warmup=2)
    assert len(calls) == 6 and len(samples) == 4


def test_peak_memory_and_its_reset():
    assert harness.peak_rss_mb() >= harness.current_rss_mb() > 10.0
    block = mmap.mmap(-1, 64 * 2 ** 20)  # 64 MB of pages of its own (not the allocator's, which may keep them)
    for offset in range(0, len(block), mmap.PAGESIZE):
        block[offset] = 1  # touched: the high-water mark rises
    block.close()  # unmapped: the resident size falls back
    high = harness.peak_rss_mb()
    assert high >= harness.current_rss_mb() + 60
    if not harness.reset_peak_rss():
        pytest.skip("this kernel does not let the process reset its peak RSS (/proc/self/clear_refs)")
    assert harness.peak_rss_mb() < high - 50  # restarted from the current size


def test_reset_peak_rss_says_false_where_the_kernel_refuses(monkeypatch):
    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(harness, "open", refuse, raising=False)
    assert harness.reset_peak_rss() is False


def test_worker_environment_puts_a_checkout_first_on_pythonpath(monkeypatch):
    """Workers import the parent's mindcv_ext: a source checkout goes first on PYTHONPATH, before what the
    environment had; an installed copy (in site-packages) leaves PYTHONPATH as it was."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(mindcv_ext.__file__)))
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    monkeypatch.setattr(harness.site, "getsitepackages", lambda: ["/nowhere/site-packages"])
    monkeypatch.setattr(harness.site, "getusersitepackages", lambda: "/nowhere/user-site-packages")
    env = harness.worker_environment()
    assert env["PYTHONPATH"] == os.pathsep.join([root, "/elsewhere"])
    assert {k: v for k, v in env.items() if k != "PYTHONPATH"} == {k: v for k, v in os.environ.items()
                                                                   if k != "PYTHONPATH"}
    monkeypatch.setattr(harness.site, "getsitepackages", lambda: [root])
    assert harness.worker_environment()["PYTHONPATH"] == "/elsewhere"
    monkeypatch.delenv("PYTHONPATH")
    assert "PYTHONPATH" not in harness.worker_environment()


def test_run_worker_returns_the_workers_json_and_reports_its_failure(tmp_path):
    row = harness.run_worker("attention", {"kind": "full", "tokens": 8, "batch_heads": 1, "repeats": 1})
    assert row["attention"] == "full" and row["tokens"] == 8 and row["head_dim"] == 64 and row["fwd_ms"] > 0
    with pytest.raises(RuntimeError, match=r"benchmark worker for bad case failed \(exit 1\):\n(.|\n)*TypeError"):
        harness.run_worker("attention", {"kind": "full", "nonsense": 1}, label="bad case")
    log = tmp_path / "worker.log"
    with pytest.raises(RuntimeError, match=f"see {log}"):
        harness.run_worker("attention", {"nonsense": 1}, log=str(log))
    assert "TypeError" in log.read_text()


def test_describe_machine():
    info = harness.describe_machine("CPU")
    assert info["logical_cpus"] >= 1 and info["device_target"] == "CPU" and "mindspore" in info


def test_memory_slope_is_the_least_squares_line():
    assert harness.memory_slope({2: 1000.0, 4: 1400.0, 8: 2200.0}) == pytest.approx(200.0)
    assert harness.memory_slope({2: 1000.0, 4: 1500.0, 8: 2200.0}) == pytest.approx(3666.67 / 18.667, rel=1e-4)
