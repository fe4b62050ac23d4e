"""fly's structured-MLP inference benchmark (kimiasa/Experiments, ``ssl_bench_mlp``) on MindSpore: GPT-2 with each
of fly's MLP variants (``mindcv_ext.benchmark.gpt2``); the same as ``scripts/benchmark.py --suite gpt2``.

    python scripts/benchmark_gpt2.py --batch_sizes 1 --seq_len 1024 --out bench/gpt2     # CPU-sized
    python scripts/benchmark_gpt2.py --gpt2_variants nnlinear ssl4x monarch8b --model_kwargs '{n_layer: 2}'

Each variant runs in a worker process of its own (``--model_rounds`` alternates them), ``--gpt2_warmup`` untimed
forwards and then ``--iterations`` timed ones per batch size; ``gpt2.csv`` starts with the fork's columns.
"""
import sys
from typing import List, Optional

from mindcv_ext.benchmark.cli import main as benchmark_main


def main(argv: Optional[List[str]] = None) -> int:
    """The benchmark with the gpt2 suite unless ``--suite`` says otherwise."""
    return benchmark_main(argv, default_suites=("gpt2",))


if __name__ == "__main__":
    sys.exit(main())
