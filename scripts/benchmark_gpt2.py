"""``scripts/benchmark.py --suite gpt2``: fly's structured-MLP inference benchmark (kimiasa/Experiments,
``ssl_bench_mlp``) on MindSpore.

GPT-2 with its MLPs' fc1 and fc2 swapped for each of fly's variants, in eval mode: ``--gpt2_warmup`` untimed
forwards, then ``--iterations`` timed ones (fly: 5 and 25), per batch size, each variant in a worker process of its
own (``--model_rounds`` alternates them). fp16 (AMP O2) on Ascend and GPU, as fly's ``precision: 16``; fp32 on
the CPU, with the accelerator's kernels unless ``--cpu_kernels off`` (``--with_plain`` adds the plain network).

Also times each variant's two MLP layers alone (n_embd -> 4 n_embd and back) on ``batch x seq_len`` tokens of the
smallest batch, the variants alternating call by call in one process.
"""
__all__ = ["GPT2_VARIANTS", "MODEL_FIELDS", "LAYER_FIELDS", "FORK_FIELDS", "run_gpt2", "gpt2_worker", "plot_gpt2",
           "gpt2_macs", "variant_kwargs", "alternating_samples"]

import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

# fly's variants (configs/model/gpt2_mlp_cfg): the MLP layer and its settings.
GPT2_VARIANTS: Dict[str, Tuple[str, dict]] = {
    "nnlinear": ("dense", {}),
    "ssl2x": ("ssl", dict(redn_factor=2)),
    "ssl4x": ("ssl", dict(redn_factor=4)),
    "ssl8x": ("ssl", dict(redn_factor=8)),
    "monarch8b": ("monarch", dict(nblocks=8)),
    "lowrank8r": ("lowrank", dict(redn_factor=8)),  # rank by the baselines' rule: 64 for 768 <-> 3072
    "bdiagbfly4x4": ("bdiagbfly", dict(nblocks1=4, nblocks2=4)),
    "fbbfly": ("fbbfly", dict(butterfly_size=16, n_factors=2, block=32)),
}
# The columns of the fork's generate_benchmark_csv.py, then ours.
FORK_FIELDS = ["experiment", "name", "Count", "Time (ns)", "Count (inc)", "Time (ns) (inc)", "time/ms (inc)",
               "avgTime (inc)"]
MODEL_FIELDS = FORK_FIELDS + ["variant", "gpt2_size", "batch_size", "seq_len", "path", "precision", "params",
                              "macs_g", "median_ms", "speedup_vs_nnlinear"]
LAYER_FIELDS = ["variant", "layer", "in_features", "out_features", "tokens", "path", "params", "fwd_ms",
                "speedup_vs_nnlinear"]


def variant_kwargs(variant: str) -> dict:
    mlp_layer, settings = GPT2_VARIANTS[variant]
    return dict(mlp_layer=mlp_layer, **settings)


def linear_macs_per_token(cell) -> int:
    """Multiply-accumulates per token of one linear layer of any kind: the entries of its weight factors."""
    from mindspore import nn

    from mindcv_ext.layers import (BlockdiagButterflyLinear, FlatBlockButterflyLinear, LowRankLinear, MonarchLinear,
                                   SketchStructuredLinear)
    from mindcv_ext.models.gpt2 import Conv1D

    if isinstance(cell, (nn.Dense, Conv1D, SketchStructuredLinear, FlatBlockButterflyLinear)):
        return cell.weight.size  # SSL: one matmul with the compressed weight
    if isinstance(cell, MonarchLinear):
        return cell.blkdiag1.size + cell.blkdiag2.size
    if isinstance(cell, LowRankLinear):
        return cell.w1.size + cell.w2.size
    if isinstance(cell, BlockdiagButterflyLinear):
        return cell.w1_bfly.size + cell.w2_bfly.size
    return 0


def gpt2_macs(net, batch: int, seq_len: int) -> int:
    """A forward's MACs: every linear layer, the attention products (q k^T and weights v) and the tied head."""
    tokens = batch * seq_len
    linear = sum(linear_macs_per_token(cell) for _, cell in net.cells_and_names())
    blocks = len(net.transformer.h)
    attention = 2 * blocks * batch * seq_len * seq_len * net.n_embd
    return tokens * (linear + net.vocab_size * net.n_embd) + attention


def alternating_samples(calls: Dict[str, Callable[[], object]], iterations: int, warmup: int) -> Dict[str, List[float]]:
    """Wall times (ms) of ``iterations`` calls of each, after ``warmup`` untimed ones, interleaved round by round."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    names = list(calls)
    samples: Dict[str, List[float]] = {name: [] for name in names}
    for round_index in range(iterations):
        for name in (names if round_index % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            calls[name]()
            samples[name].append(1000.0 * (time.perf_counter() - start))
    return samples


def _build(args, variant: str, path: str):
    import mindspore as ms

    from mindcv_ext.accel import accelerate
    from mindcv_ext.models import create_model

    kwargs = dict(args.model_kwargs)
    kwargs.setdefault("n_positions", max(args.seq_len, 1024))
    net = create_model(args.gpt2_size, causal=True, **kwargs, **variant_kwargs(variant))
    net.set_train(False)
    if ms.get_context("device_target") in ("GPU", "Ascend"):
        net = ms.amp.auto_mixed_precision(net, "O2")  # fly's precision 16
    elif path == "accel":
        net = accelerate(net, args.cpu_kernels)
    return net


def _layer_rows(args, path: str, sync: Callable) -> List[dict]:
    """Each variant's fc1 and fc2 alone, built as the model builds them, timed in alternation in this process."""
    import mindspore as ms

    from mindcv_ext.accel import accelerate
    from mindcv_ext.layers.mlp import create_linear
    from mindcv_ext.models.gpt2 import GPT2_SIZES

    width = dict(GPT2_SIZES[args.gpt2_size], **args.model_kwargs)["n_embd"]
    tokens = min(args.batch_sizes) * args.seq_len
    rng = np.random.default_rng(0)
    rows = []
    for layer, (in_f, out_f) in (("fc1", (width, 4 * width)), ("fc2", (4 * width, width))):
        cells = {}
        for variant in args.gpt2_variants:
            settings = variant_kwargs(variant)
            mlp_layer, nblocks = settings.pop("mlp_layer"), settings.pop("nblocks", 4)
            cell = create_linear(in_f, out_f, mlp_layer, nblocks, settings=settings)
            cell.set_train(False)
            cells[variant] = accelerate(cell, args.cpu_kernels) if path == "accel" else cell
        x = ms.Tensor(rng.standard_normal((tokens, in_f)).astype(np.float32))
        times = alternating_samples({v: (lambda cell=cell: sync(cell(x))) for v, cell in cells.items()},
                                    args.iterations, args.gpt2_warmup)
        for variant, cell in cells.items():
            rows.append({"variant": variant, "layer": layer, "in_features": in_f, "out_features": out_f,
                         "tokens": tokens, "path": path, "params": sum(p.size for p in cell.trainable_params()),
                         "fwd_ms": round(float(np.median(times[variant])), 2)})
    base = {r["layer"]: r["fwd_ms"] for r in rows if r["variant"] == "nnlinear"}
    for row in rows:
        if base:
            row["speedup_vs_nnlinear"] = round(base[row["layer"]] / row["fwd_ms"], 2)
    return rows


def gpt2_worker(args, sync: Callable) -> dict:
    """One variant on one path in this process (run_gpt2 starts one per variant, path and round): its forward
    times at every batch size, parameters and MACs."""
    import mindspore as ms

    from mindcv_ext.models import count_params

    variant, path = args._worker_gpt2, args._worker_path
    net = _build(args, variant, path)
    rng = np.random.default_rng(0)
    samples, macs = {}, {}
    for batch in sorted(args.batch_sizes):
        ids = ms.Tensor(rng.integers(0, net.vocab_size, (batch, args.seq_len)).astype(np.int32))
        samples[batch] = alternating_samples({variant: lambda: sync(net(ids))}, args.iterations,
                                             args.gpt2_warmup)[variant]
        macs[batch] = gpt2_macs(net, batch, args.seq_len)
    return {"variant": variant, "path": path, "params": count_params(net), "samples": samples, "macs": macs}


def run_gpt2(args, progress, sync: Callable, script: str) -> Tuple[List[dict], List[dict]]:
    """(layer rows, model rows) for every variant, batch size and path.

    Each model runs in a worker process of its own: eight GPT-2s compiled in one process do not fit in memory at
    fly's sizes. ``--model_rounds N`` runs N workers per variant, the variants alternating round by round, and pools
    their forwards.
    """
    import json
    import subprocess
    import sys

    import mindspore as ms

    device = ms.get_context("device_target")
    paths = (["accel"] + (["plain"] if args.with_plain else [])) if device == "CPU" else ["device"]
    precision = "fp32" if device == "CPU" else "fp16"
    layer_rows, model_rows = [], []
    for path in paths:
        layer_rows += _layer_rows(args, path, sync)
    results = {(v, path): [] for v in args.gpt2_variants for path in paths}
    cases = [(round_index, path, variant) for round_index in range(args.model_rounds) for path in paths
             for variant in (args.gpt2_variants if round_index % 2 == 0 else args.gpt2_variants[::-1])]
    for _, path, variant in progress(cases, desc="gpt2 models"):
        command = [sys.executable, script, "--suite", "gpt2", "--_worker_gpt2", variant, "--_worker_path", path,
                   "--gpt2_size", args.gpt2_size, "--model_kwargs", json.dumps(args.model_kwargs), "--batch_sizes",
                   *map(str, args.batch_sizes), "--seq_len", str(args.seq_len), "--iterations", str(args.iterations),
                   "--gpt2_warmup", str(args.gpt2_warmup), "--cpu_kernels", args.cpu_kernels, "--device_target",
                   args.device_target]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"gpt2 benchmark worker for {variant} ({path}) failed:\n{result.stderr[-3000:]}")
        results[variant, path].append(json.loads(result.stdout.strip().splitlines()[-1]))
    for path in paths:
        for batch in sorted(args.batch_sizes):
            rows = {}
            for variant in args.gpt2_variants:
                measured = results[variant, path]
                times = [t for worker in measured for t in worker["samples"][str(batch)]]
                total = float(np.sum(times))
                rows[variant] = {
                    "experiment": f"ssl_bench_mlp_{args.gpt2_size}_{variant}_{batch}", "name": "forward", "Count": "",
                    "Time (ns)": "", "Count (inc)": len(times), "Time (ns) (inc)": round(total * 1e6),
                    "time/ms (inc)": round(total, 3), "avgTime (inc)": round(total / len(times), 3),
                    "variant": variant, "gpt2_size": args.gpt2_size, "batch_size": batch, "seq_len": args.seq_len,
                    "path": path, "precision": precision, "params": measured[0]["params"],
                    "macs_g": round(measured[0]["macs"][str(batch)] / 1e9, 2),
                    "median_ms": round(float(np.median(times)), 2)}
            for row in rows.values():
                if "nnlinear" in rows:
                    row["speedup_vs_nnlinear"] = round(rows["nnlinear"]["avgTime (inc)"] / row["avgTime (inc)"], 2)
                model_rows.append(row)
    return layer_rows, model_rows


def plot_gpt2(rows: List[dict], path: str) -> Optional[str]:
    """Average forward time per variant, one group of bars per batch size (fly's figure), for the first path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    first_path = rows[0]["path"]
    rows = [r for r in rows if r["path"] == first_path]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    batches = sorted({r["batch_size"] for r in rows})
    figure, axis = plt.subplots(figsize=(max(7, 1.0 * len(variants) * len(batches) / 2), 4.5))
    width = 0.8 / len(batches)
    for index, batch in enumerate(batches):
        times = {r["variant"]: r["avgTime (inc)"] for r in rows if r["batch_size"] == batch}
        axis.bar([i + (index - (len(batches) - 1) / 2) * width for i in range(len(variants))],
                 [times[v] for v in variants], width, label=f"batch {batch}")
    axis.set_xticks(range(len(variants)))
    axis.set_xticklabels(variants, rotation=30, ha="right")
    axis.set(ylabel="forward (ms)", title=f"{rows[0]['gpt2_size']}, sequence {rows[0]['seq_len']}, "
                                          f"{rows[0]['precision']}, {first_path}")
    axis.legend()
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
