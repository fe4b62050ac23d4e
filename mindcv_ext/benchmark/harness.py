"""The timing harness: calls timed in alternation, worker processes, peak memory and the machine's description.

Every comparison alternates its implementations call by call (``alternating_samples``), so that a machine that
speeds up or slows down over time (shared CPUs do) affects them alike. Measurements that need a process of their
own (peak memory is per process; eight compiled GPT-2s do not fit in one) run in a worker: ``run_worker`` starts
``python -m mindcv_ext.benchmark.worker`` and reads back the JSON it prints.
"""
import json
import os
import platform
import site
import subprocess
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Optional

import numpy as np

__all__ = ["Progress", "no_progress", "sync", "time_samples", "alternating_samples", "time_alternating",
           "current_rss_mb", "reset_peak_rss", "peak_rss_mb", "memory_slope", "worker_environment", "run_worker",
           "describe_machine"]


# A suite's progress display: ``progress(items, description)`` yields the items (the command line's is tqdm).
Progress = Callable[[Iterable, str], Iterable]


def no_progress(items: Iterable, desc: str) -> Iterable:
    return items


def sync(output: Any) -> None:
    """Wait for ``output`` (a Tensor, or a tuple or list of them): its values are read back to the host."""
    if isinstance(output, (tuple, list)):
        for item in output:
            sync(item)
    elif hasattr(output, "asnumpy"):
        output.asnumpy()


def time_samples(call: Callable[[], object], repeats: int, warmup: int) -> List[float]:
    """Wall times (ms) of ``repeats`` calls after ``warmup`` untimed ones."""
    return alternating_samples({"call": call}, repeats, warmup)["call"]


def alternating_samples(calls: Dict[str, Callable[[], object]], repeats: int,
                        warmup: int) -> Dict[str, List[float]]:
    """Wall times (ms) of ``repeats`` calls of each, after ``warmup`` untimed ones of each, interleaved round by
    round (forward order in even rounds, backward in odd ones)."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    names = list(calls)
    samples: Dict[str, List[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        for name in (names if round_index % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            calls[name]()
            samples[name].append(1000.0 * (time.perf_counter() - start))
    return samples


def time_alternating(calls: Dict[str, Callable[[], object]], repeats: int, warmup: int) -> Dict[str, float]:
    """Median wall time (ms) of each call, the calls interleaved round by round (``alternating_samples``)."""
    return {name: float(np.median(values)) for name, values in alternating_samples(calls, repeats, warmup).items()}


def current_rss_mb() -> float:
    """This process's resident memory now (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def reset_peak_rss() -> bool:
    """Restart the kernel's resident-memory high-water mark from the current size (Linux ``clear_refs``); False
    where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as stream:
            stream.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """This process's own resident-memory high-water mark (``VmHWM``; ``ru_maxrss`` where there is none, which
    starts from the parent's at exec)."""
    try:
        with open("/proc/self/status") as stream:
            for line in stream:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def memory_slope(peak_by_batch: Dict[int, float]) -> float:
    """MB per extra image: the least-squares slope of peak memory against the batch size."""
    batches = np.array(sorted(peak_by_batch), np.float64)
    peaks = np.array([peak_by_batch[b] for b in sorted(peak_by_batch)], np.float64)
    return float(np.polyfit(batches, peaks, 1)[0])


def worker_environment() -> Dict[str, str]:
    """This process's environment for a worker, with the folder holding ``mindcv_ext`` on ``PYTHONPATH`` when it
    is a source checkout rather than an installation (so a worker imports the same code as its parent)."""
    import mindcv_ext

    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(mindcv_ext.__file__)))
    installed = {os.path.abspath(path) for path in site.getsitepackages() + [site.getusersitepackages()]}
    if root not in installed:
        env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def run_worker(name: str, kwargs: Dict[str, Any], *, device_target: str = "auto", label: str = "",
               log: Optional[str] = None) -> Dict[str, Any]:
    """Run the measurement ``name`` (``worker.WORKERS``) with ``kwargs`` in a fresh process; its JSON result.

    Args:
        name: the worker's measurement, e.g. ``"model"``.
        kwargs: its keyword arguments (JSON-serialisable).
        device_target: the backend the worker sets first (``auto``: the installed MindSpore's).
        label: what the error names when the worker fails (default: ``name``).
        log: append the worker's console (stderr) to this file instead of capturing it; a failure points to it.
    """
    command = [sys.executable, "-m", "mindcv_ext.benchmark.worker", name, json.dumps(kwargs), "--device_target",
               device_target]
    if log:
        with open(log, "a") as stream:
            result = subprocess.run(command, stdout=subprocess.PIPE, stderr=stream, text=True,
                                    env=worker_environment())
    else:
        result = subprocess.run(command, capture_output=True, text=True, env=worker_environment())
    if result.returncode != 0:
        detail = f"see {log}" if log else result.stderr[-3000:]
        raise RuntimeError(f"benchmark worker for {label or name} failed (exit {result.returncode}):\n{detail}")
    lines = result.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"benchmark worker for {label or name} printed no result")
    return json.loads(lines[-1])


def describe_machine(device_target: str) -> Dict[str, Any]:
    """Platform, CPU (model, logical CPUs, SIMD flags), memory and library versions, for a benchmark's record."""
    import mindspore as ms

    info: Dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu": platform.processor() or "", "logical_cpus": os.cpu_count(),
                            "mindspore": ms.__version__, "numpy": np.__version__, "device_target": device_target}
    try:
        with open("/proc/cpuinfo") as stream:
            cpuinfo = stream.read()
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
        if names:
            info["cpu"] = names[0]
        info["simd"] = [flag for flag in ("avx512f", "avx2", "fma") if f" {flag}" in cpuinfo]
        with open("/proc/meminfo") as stream:
            info["memory_gb"] = round(int(stream.readline().split()[1]) / 2 ** 20, 1)
    except OSError:
        pass
    try:
        import mindcv

        info["mindcv"] = mindcv.__version__
    except (ImportError, AttributeError):
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["torch"] = None
    return info
