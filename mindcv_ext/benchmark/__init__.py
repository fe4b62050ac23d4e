"""Benchmarks as a library: the timing harness, MAC counting, result writers and the suites.

- ``harness``: calls timed in alternation, worker processes, peak memory, the machine's description;
- ``macs``: multiply-accumulates from each layer's own count (``count_macs``, ``linear_macs_per_token``);
- ``report``: CSV, markdown and JSON writers;
- the suites: ``layers`` (layers and MLPs of every registered linear), ``models``, ``attention``, ``gpt2``;
- ``cli``: the command line, ``python -m mindcv_ext.benchmark`` (``scripts/benchmark.py``); ``worker``: what it
  runs in worker processes.
"""
from .harness import (alternating_samples, describe_machine, memory_slope, peak_rss_mb, run_worker, sync,
                      time_alternating, time_samples)
from .macs import count_macs, counting_cells, forward_count, linear_macs_per_token, per_token_macs
from .report import markdown_table, write_csv, write_json

__all__ = ["alternating_samples", "describe_machine", "memory_slope", "peak_rss_mb", "run_worker", "sync",
           "time_alternating", "time_samples", "count_macs", "counting_cells", "forward_count", "linear_macs_per_token",
           "per_token_macs", "markdown_table", "write_csv", "write_json"]
