"""``scripts/benchmark.py --suite gpt2``: fly's structured-MLP inference benchmark (kimiasa/Experiments,
``ssl_bench_mlp``) on MindSpore.

GPT-2 with its MLPs' fc1 and fc2 swapped for each of fly's variants, in eval mode: ``--warmup`` untimed forwards,
then ``--iterations`` timed ones (fly: 5 and 25), per batch size. The variants are timed in alternating order, so
a machine that drifts affects them alike. fp16 (AMP O2) on Ascend and GPU, as fly's ``precision: 16``; fp32 on
the CPU, with the accelerator's kernels unless ``--cpu_kernels off`` (``--with_plain`` adds the plain network).

Also times each variant's two MLP layers alone (n_embd -> 4 n_embd and back) on ``batch x seq_len`` tokens.
"""
__all__ = ["GPT2_VARIANTS", "MODEL_FIELDS", "LAYER_FIELDS", "run_gpt2", "plot_gpt2", "gpt2_macs", "variant_kwargs",
           "alternating_samples"]

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


def run_gpt2(args, progress, sync: Callable) -> Tuple[List[dict], List[dict]]:
    """(layer rows, model rows) for every variant, batch size and path."""
    import mindspore as ms

    from mindcv_ext.models import count_params

    paths = ["accel"] + (["plain"] if args.with_plain else []) if ms.get_context("device_target") == "CPU" \
        else ["device"]
    precision = "fp32" if ms.get_context("device_target") == "CPU" else "fp16"
    variants = list(args.gpt2_variants)
    layer_rows, model_rows = [], []
    rng = np.random.default_rng(0)
    for path in paths:
        nets = {variant: _build(args, variant, path) for variant in progress(variants, desc=f"gpt2 build ({path})")}
        # The MLP layers alone, on the tokens of the smallest batch.
        tokens = min(args.batch_sizes) * args.seq_len
        width = nets[variants[0]].n_embd
        for layer in ("fc1", "fc2"):
            cells = {v: getattr(nets[v].transformer.h[0].mlp, layer) for v in variants}
            in_f = width if layer == "fc1" else 4 * width
            x = ms.Tensor(rng.standard_normal((tokens, in_f)).astype(np.float32))
            calls = {v: (lambda cell=cell: sync(cell(x))) for v, cell in cells.items()}
            times = alternating_samples(calls, args.iterations, args.gpt2_warmup)
            for v in variants:
                layer_rows.append({"variant": v, "layer": layer, "in_features": in_f,
                                   "out_features": 4 * width if layer == "fc1" else width, "tokens": tokens,
                                   "path": path, "params": sum(p.size for p in cells[v].trainable_params()),
                                   "fwd_ms": round(float(np.median(times[v])), 2)})
        base = {r["layer"]: r["fwd_ms"] for r in layer_rows if r["variant"] == "nnlinear" and r["path"] == path}
        for r in layer_rows:
            if r["path"] == path and "nnlinear" in variants:
                r["speedup_vs_nnlinear"] = round(base[r["layer"]] / r["fwd_ms"], 2)
        for batch in progress(sorted(args.batch_sizes), desc=f"gpt2 batches ({path})"):
            ids = ms.Tensor(rng.integers(0, nets[variants[0]].vocab_size, (batch, args.seq_len)).astype(np.int32))
            calls = {v: (lambda net=net: sync(net(ids))) for v, net in nets.items()}
            times = alternating_samples(calls, args.iterations, args.gpt2_warmup)
            rows = {}
            for v in variants:
                total = float(np.sum(times[v]))
                rows[v] = {"experiment": f"ssl_bench_mlp_{args.gpt2_size}_{v}_{batch}", "name": "forward",
                           "Count": "", "Time (ns)": "", "Count (inc)": args.iterations,
                           "Time (ns) (inc)": round(total * 1e6), "time/ms (inc)": round(total, 3),
                           "avgTime (inc)": round(total / args.iterations, 3), "variant": v,
                           "gpt2_size": args.gpt2_size, "batch_size": batch, "seq_len": args.seq_len, "path": path,
                           "precision": precision, "params": count_params(nets[v]),
                           "macs_g": round(gpt2_macs(nets[v], batch, args.seq_len) / 1e9, 2),
                           "median_ms": round(float(np.median(times[v])), 2)}
            for v, row in rows.items():
                if "nnlinear" in rows:
                    row["speedup_vs_nnlinear"] = round(rows["nnlinear"]["avgTime (inc)"] / row["avgTime (inc)"], 2)
                model_rows.append(row)
        del nets
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
