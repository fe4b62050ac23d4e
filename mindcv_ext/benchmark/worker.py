"""One measurement in a process of its own: ``python -m mindcv_ext.benchmark.worker NAME KWARGS_JSON``.

``harness.run_worker`` starts it; it sets graph mode and the backend, calls the measurement ``NAME`` with the
keyword arguments, and prints its result as one line of JSON (the last line of its output).
"""
import argparse
import importlib
import json
import os
import sys
from typing import Any, Callable, Dict, List, Optional

__all__ = ["WORKERS", "worker_function", "main"]

# name -> (module, function): the measurements a worker runs.
WORKERS: Dict[str, tuple] = {
    "model": ("mindcv_ext.benchmark.models", "measure_model"),
    "train_step": ("mindcv_ext.benchmark.models", "measure_train_step"),
    "attention": ("mindcv_ext.benchmark.attention", "measure_attention"),
    "gpt2": ("mindcv_ext.benchmark.gpt2", "measure_gpt2"),
}


def worker_function(name: str) -> Callable[..., Dict[str, Any]]:
    """The measurement registered as ``name``."""
    if name not in WORKERS:
        raise ValueError(f"unknown benchmark worker {name!r}; one of {', '.join(WORKERS)}")
    module, function = WORKERS[name]
    return getattr(importlib.import_module(module), function)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mindcv_ext.benchmark.worker", description=__doc__.split("\n")[0])
    parser.add_argument("name", choices=sorted(WORKERS), help="the measurement")
    parser.add_argument("kwargs", help="its keyword arguments, as a JSON object")
    parser.add_argument("--device_target", "--device-target", dest="device_target", default="auto",
                        choices=["CPU", "GPU", "Ascend", "auto"], help="backend; auto uses the installed MindSpore's")
    args = parser.parse_args(argv)
    kwargs = json.loads(args.kwargs)
    if not isinstance(kwargs, dict):
        parser.error("kwargs must be a JSON object")
    # Idle OpenMP workers sleep instead of spinning (see cli.main); libgomp reads this when it loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE)
    if args.device_target != "auto":
        ms.set_device(args.device_target)
    result = worker_function(args.name)(**kwargs)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
