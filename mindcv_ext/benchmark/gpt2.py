"""The gpt2 suite: fly's structured-MLP inference benchmark (kimiasa/Experiments, ``ssl_bench_mlp``) on MindSpore.

GPT-2 with its MLPs' fc1 and fc2 swapped for each of fly's variants, in eval mode: ``warmup`` untimed forwards,
then ``iterations`` timed ones (fly: 5 and 25), per batch size, each variant in a worker process of its own
(``rounds`` alternates them). fp16 (AMP O2) on Ascend and GPU, as fly's ``precision: 16``; fp32 on the CPU, with
the accelerator's kernels unless ``cpu_kernels`` is ``off`` (``with_plain`` adds the plain network).

Also times each variant's two MLP layers alone (n_embd -> 4 n_embd and back) on ``batch x seq_len`` tokens of the
smallest batch, the variants alternating call by call in one process.
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..engine.results import pyplot, save_figure
from .harness import Progress, alternating_samples, no_progress, run_worker, sync
from .macs import linear_macs_per_token

__all__ = ["GPT2_VARIANTS", "MODEL_FIELDS", "LAYER_FIELDS", "FORK_FIELDS", "variant_kwargs", "gpt2_macs",
           "build_gpt2", "measure_gpt2", "gpt2_layer_rows", "run_gpt2", "plot_gpt2"]

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


def variant_kwargs(variant: str) -> Dict[str, Any]:
    """``create_model``'s keywords for a variant: ``mlp_layer`` and the layer's settings."""
    mlp_layer, settings = GPT2_VARIANTS[variant]
    return dict(mlp_layer=mlp_layer, **settings)


def gpt2_macs(net, batch: int, seq_len: int) -> int:
    """A forward's MACs: every linear layer (each by its own count), the attention products (q k^T and weights v)
    and the tied head."""
    tokens = batch * seq_len
    attention = 2 * len(net.transformer.h) * batch * seq_len * seq_len * net.n_embd
    return tokens * (linear_macs_per_token(net) + net.vocab_size * net.n_embd) + attention


def build_gpt2(*, size: str, variant: str, path: str, seq_len: int, model_kwargs: Optional[Dict[str, Any]] = None,
               cpu_kernels: str = "auto"):
    """The variant's GPT-2 in eval mode: under AMP O2 on GPU and Ascend, accelerated on the CPU (path ``accel``)."""
    import mindspore as ms

    from ..accel import accelerate
    from ..models import create_model

    kwargs = dict(model_kwargs or {})
    kwargs.setdefault("n_positions", max(seq_len, 1024))
    net = create_model(size, causal=True, model_kwargs=kwargs, **variant_kwargs(variant))
    net.set_train(False)
    if ms.get_context("device_target") in ("GPU", "Ascend"):
        net = ms.amp.auto_mixed_precision(net, "O2")  # fly's precision 16
    elif path == "accel":
        net = accelerate(net, cpu_kernels)
    return net


def measure_gpt2(*, variant: str, path: str, size: str = "gpt2", batch_sizes: Sequence[int] = (8, 16, 32),
                 seq_len: int = 1024, iterations: int = 25, warmup: int = 5,
                 model_kwargs: Optional[Dict[str, Any]] = None, cpu_kernels: str = "auto") -> Dict[str, Any]:
    """One variant on one path in this process: its forward times at every batch size, parameters and MACs."""
    import mindspore as ms

    from ..models import count_params

    net = build_gpt2(size=size, variant=variant, path=path, seq_len=seq_len, model_kwargs=model_kwargs,
                     cpu_kernels=cpu_kernels)
    rng = np.random.default_rng(0)
    samples, macs = {}, {}
    for batch in sorted(batch_sizes):
        ids = ms.Tensor(rng.integers(0, net.vocab_size, (batch, seq_len)).astype(np.int32))
        samples[batch] = alternating_samples({variant: lambda: sync(net(ids))}, iterations, warmup)[variant]
        macs[batch] = gpt2_macs(net, batch, seq_len)
    return {"variant": variant, "path": path, "params": count_params(net), "samples": samples, "macs": macs}


def gpt2_layer_rows(*, size: str, variants: Sequence[str], path: str, tokens: int, iterations: int, warmup: int,
                    model_kwargs: Optional[Dict[str, Any]] = None, cpu_kernels: str = "auto") -> List[dict]:
    """Each variant's fc1 and fc2 alone, built as the model builds them, timed in alternation in this process."""
    import mindspore as ms

    from ..accel import accelerate
    from ..layers import linear_layer
    from ..models.gpt2 import GPT2_SIZES

    width = dict(GPT2_SIZES[size], **(model_kwargs or {}))["n_embd"]
    rng = np.random.default_rng(0)
    rows = []
    for layer, (in_f, out_f) in (("fc1", (width, 4 * width)), ("fc2", (4 * width, width))):
        cells = {}
        for variant in variants:
            mlp_layer, settings = GPT2_VARIANTS[variant]
            cell = linear_layer(mlp_layer, **settings)(in_f, out_f)
            cell.set_train(False)
            cells[variant] = accelerate(cell, cpu_kernels) if path == "accel" else cell
        x = ms.Tensor(rng.standard_normal((tokens, in_f)).astype(np.float32))
        times = alternating_samples({v: (lambda cell=cell: sync(cell(x))) for v, cell in cells.items()},
                                    iterations, warmup)
        for variant, cell in cells.items():
            rows.append({"variant": variant, "layer": layer, "in_features": in_f, "out_features": out_f,
                         "tokens": tokens, "path": path, "params": sum(p.size for p in cell.trainable_params()),
                         "fwd_ms": round(float(np.median(times[variant])), 2)})
    base = {r["layer"]: r["fwd_ms"] for r in rows if r["variant"] == "nnlinear"}
    for row in rows:
        if base:
            row["speedup_vs_nnlinear"] = round(base[row["layer"]] / row["fwd_ms"], 2)
    return rows


def run_gpt2(*, size: str = "gpt2", variants: Sequence[str] = tuple(GPT2_VARIANTS),
             batch_sizes: Sequence[int] = (8, 16, 32), seq_len: int = 1024, iterations: int = 25, warmup: int = 5,
             rounds: int = 1, model_kwargs: Optional[Dict[str, Any]] = None, with_plain: bool = False,
             cpu_kernels: str = "auto", device_target: str = "auto",
             progress: Progress = no_progress) -> Tuple[List[dict], List[dict]]:
    """(layer rows, model rows) for every variant, batch size and path.

    Each model runs in a worker process of its own: eight GPT-2s compiled in one process do not fit in memory at
    fly's sizes. ``rounds`` runs that many workers per variant, the variants alternating round by round, and pools
    their forwards.
    """
    import mindspore as ms

    device = ms.get_context("device_target")
    paths = (["accel"] + (["plain"] if with_plain else [])) if device == "CPU" else ["device"]
    precision = "fp32" if device == "CPU" else "fp16"
    variants, model_kwargs = list(variants), dict(model_kwargs or {})
    layer_rows, model_rows = [], []
    for path in paths:
        layer_rows += gpt2_layer_rows(size=size, variants=variants, path=path, tokens=min(batch_sizes) * seq_len,
                                      iterations=iterations, warmup=warmup, model_kwargs=model_kwargs,
                                      cpu_kernels=cpu_kernels)
    results = {(v, path): [] for v in variants for path in paths}
    cases = [(round_index, path, variant) for round_index in range(rounds) for path in paths
             for variant in (variants if round_index % 2 == 0 else variants[::-1])]
    for _, path, variant in progress(cases, "gpt2 models"):
        kwargs = dict(variant=variant, path=path, size=size, batch_sizes=list(batch_sizes), seq_len=seq_len,
                      iterations=iterations, warmup=warmup, model_kwargs=model_kwargs, cpu_kernels=cpu_kernels)
        results[variant, path].append(run_worker("gpt2", kwargs, device_target=device_target,
                                                 label=f"gpt2 {variant} ({path})"))
    for path in paths:
        for batch in sorted(batch_sizes):
            rows = {}
            for variant in variants:
                measured = results[variant, path]
                times = [t for worker in measured for t in worker["samples"][str(batch)]]
                total = float(np.sum(times))
                rows[variant] = {
                    "experiment": f"ssl_bench_mlp_{size}_{variant}_{batch}", "name": "forward", "Count": "",
                    "Time (ns)": "", "Count (inc)": len(times), "Time (ns) (inc)": round(total * 1e6),
                    "time/ms (inc)": round(total, 3), "avgTime (inc)": round(total / len(times), 3),
                    "variant": variant, "gpt2_size": size, "batch_size": batch, "seq_len": seq_len,
                    "path": path, "precision": precision, "params": measured[0]["params"],
                    "macs_g": round(measured[0]["macs"][str(batch)] / 1e9, 2),
                    "median_ms": round(float(np.median(times)), 2)}
            for row in rows.values():
                if "nnlinear" in rows:
                    row["speedup_vs_nnlinear"] = round(rows["nnlinear"]["avgTime (inc)"] / row["avgTime (inc)"], 2)
                model_rows.append(row)
    return layer_rows, model_rows


def plot_gpt2(rows: List[dict], path: str) -> Optional[str]:
    """Average forward time per variant, one group of bars per batch size (fly's figure), for the first path;
    None without matplotlib."""
    plt = pyplot()
    if plt is None:
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
    return save_figure(figure, path)
