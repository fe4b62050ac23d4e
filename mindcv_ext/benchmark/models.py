"""The models suite: each model's training step, inference, parameters, MACs and peak memory, against its dense
variant, every measurement in a worker process of its own (peak memory is per process).

``measure_model`` and ``measure_train_step`` are the workers' measurements; ``run_models`` starts them, rounds
alternating the variants, so that a machine that drifts over the minutes a model takes affects them alike.
"""
import fnmatch
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..engine.results import pyplot, save_figure
from .harness import Progress, memory_slope, no_progress, peak_rss_mb, run_worker, sync, time_samples
from .macs import count_macs

__all__ = ["MODEL_FIELDS", "PIXELFLY_MODELS", "measure_model", "measure_train_step", "summarize_model",
           "model_variants", "run_models", "plot_models"]

MODEL_FIELDS = ["model", "variant", "path", "params", "macs_g", "batch_size", "img_size", "train_step_ms",
                "train_img_s", "infer_ms", "infer_img_s", "peak_rss_mb", "train_speedup_vs_dense",
                "infer_speedup_vs_dense", "rss_mb_per_image", "rss_per_image_vs_dense"]
# Models also measured with Pixelfly channel MLPs (mlp_layer "pixelfly", its default settings): fly's Pixelfly Mixer.
PIXELFLY_MODELS = ["mixer_b16_224"]


def measure_model(*, model: str, mlp_layer: Optional[str] = None, path: str = "accel", batch_size: int = 8,
                  img_size: int = 224, repeats: int = 10, warmup: int = 5,
                  model_kwargs: Optional[Dict[str, Any]] = None, cpu_kernels: str = "auto") -> Dict[str, Any]:
    """One model in this process: its MACs (counted on the plain network), then ``repeats`` training steps
    (AdamWeightDecay, cross-entropy) and inferences after ``warmup`` untimed ones, in graph mode, on the
    accelerated network (``path`` ``accel``) or the plain one; this process's peak memory."""
    import mindspore as ms
    from mindspore import nn

    from ..accel import accelerate
    from ..engine import NetWithLoss, TrainStep
    from ..models import count_params, create_model

    ms.set_context(mode=ms.PYNATIVE_MODE)
    net = create_model(model, img_size=img_size, mlp_layer=mlp_layer, model_kwargs=model_kwargs)
    macs = count_macs(net, img_size)
    if path == "accel":
        net = accelerate(net, cpu_kernels)
    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(0)
    images = ms.Tensor(rng.standard_normal((batch_size, 3, img_size, img_size)).astype(np.float32))
    labels = ms.Tensor(np.arange(batch_size) % net.num_classes, ms.int32)  # every vision family sets num_classes
    step = TrainStep(NetWithLoss(net, nn.CrossEntropyLoss()), nn.AdamWeightDecay(net.trainable_params(), 1e-4))
    step.set_train()
    train = time_samples(lambda: sync(step(images, labels)[0]), repeats, warmup)
    net.set_train(False)
    infer = time_samples(lambda: sync(net(images)), repeats, warmup)
    return {"model": model, "path": path, "params": count_params(net), "macs_g": round(macs / 1e9, 3),
            "batch_size": batch_size, "img_size": img_size, "train_samples_ms": train, "infer_samples_ms": infer,
            "peak_rss_mb": round(peak_rss_mb())}


def measure_train_step(*, model: str, create_kwargs: Dict[str, Any], batch_size: int, image_size: int,
                       in_channels: int = 3, num_classes: int = 10, lr: float = 1e-3, steps: int = 30,
                       warmup: int = 5, cpu_kernels: str = "auto", mode: int = 0,
                       device_target: str = "auto") -> Dict[str, Any]:
    """A network's training step alone: a bare ``TrainOneStepCell(WithLossCell(net, CrossEntropyLoss()),
    AdamWeightDecay)`` on random input, the accelerator as ``cpu_kernels`` says, ``steps`` steps queued after
    ``warmup`` (which compile), one wait at the end. ``create_kwargs``: ``create_model``'s keywords."""
    import time

    import mindspore as ms
    from mindspore import nn

    from ..accel import accelerate
    from ..engine.runtime import setup_context
    from ..models import create_model

    setup_context(mode, device_target)
    net = accelerate(create_model(model, **create_kwargs), cpu_kernels)
    rng = np.random.default_rng(0)
    images = ms.Tensor(rng.standard_normal((batch_size, in_channels, image_size, image_size)), ms.float32)
    labels = ms.Tensor(rng.integers(0, num_classes, batch_size), ms.int32)
    cell = nn.TrainOneStepCell(nn.WithLossCell(net, nn.CrossEntropyLoss()), nn.AdamWeightDecay(net.trainable_params(),
                                                                                                lr))
    cell.set_train()
    for _ in range(warmup):
        cell(images, labels).asnumpy()
    start = time.perf_counter()
    for _ in range(steps):
        loss = cell(images, labels)
    loss.asnumpy()
    elapsed = time.perf_counter() - start
    return {"batch_size": batch_size, "step_alone_images_per_s": round(batch_size * steps / elapsed, 1)}


def summarize_model(worker_results: List[dict]) -> dict:
    """One model's row from its workers (one per round): medians over every timed step, the largest peak."""
    row = {key: value for key, value in worker_results[0].items() if not key.endswith("_samples_ms")}
    train = float(np.median([t for result in worker_results for t in result["train_samples_ms"]]))
    infer = float(np.median([t for result in worker_results for t in result["infer_samples_ms"]]))
    batch = row["batch_size"]
    row.update(train_step_ms=round(train, 1), train_img_s=round(1000 * batch / train, 2), infer_ms=round(infer, 1),
               infer_img_s=round(1000 * batch / infer, 2),
               peak_rss_mb=max(result["peak_rss_mb"] for result in worker_results))
    return row


def model_variants(base: str, registered, pixelfly_models: Sequence[str]) -> List[tuple]:
    """(variant, label, registered name, mlp_layer) of a model: dense, its alias twins when registered (e.g.
    ``_monarch``: ``LAYER_ALIASES``), and Pixelfly channel MLPs (label ``<base>_pixelfly``) when it matches
    ``pixelfly_models``."""
    from ..models.helpers import LAYER_ALIASES

    variants = [("dense", base, base, None)]
    variants += [(layer, base + suffix, base + suffix, None) for suffix, (layer, _) in LAYER_ALIASES.items()
                 if base + suffix in registered]
    if any(fnmatch.fnmatch(base, pattern) for pattern in pixelfly_models):
        variants.append(("pixelfly", base + "_pixelfly", base, "pixelfly"))
    return variants


def run_models(*, models: Sequence[str] = (), pixelfly_models: Sequence[str] = PIXELFLY_MODELS,
               batch_size: int = 8, img_size: int = 224, repeats: int = 10, warmup: int = 5, rounds: int = 1,
               model_kwargs: Optional[Dict[str, Any]] = None, memory_batch_sizes: Sequence[int] = (),
               with_plain: bool = False, cpu_kernels: str = "auto", device_target: str = "auto",
               progress: Progress = no_progress) -> List[dict]:
    """Rows for every registered model matching the fnmatch patterns ``models`` (all when empty) and its
    variants, on the accelerated path (and the plain one, ``with_plain``). ``memory_batch_sizes`` adds a few
    steps at other batch sizes, each in a worker of its own: peak memory per image is the slope over them."""
    from ..models import list_ext_models
    from ..models.helpers import TEXT_MODELS, split_layer_alias

    registered = set(list_ext_models()) - set(TEXT_MODELS)  # language models have their own suite (gpt2)
    bases = sorted(n for n in registered if split_layer_alias(n)[1] is None)
    if models:
        bases = [b for b in bases if any(fnmatch.fnmatch(label, pattern) for pattern in models
                                         for _, label, _, _ in model_variants(b, registered, pixelfly_models))]
    if not bases:
        raise ValueError(f"no registered model matches --models {list(models)}")
    paths = ["accel"] + (["plain"] if with_plain else [])
    memory_batches = sorted(set(memory_batch_sizes) - {batch_size})
    rows = []

    def measure(name, mlp_layer, path, batch, steps, untimed, label):
        kwargs = dict(model=name, mlp_layer=mlp_layer, path=path, batch_size=batch, img_size=img_size,
                      repeats=steps, warmup=untimed, model_kwargs=dict(model_kwargs or {}), cpu_kernels=cpu_kernels)
        return run_worker("model", kwargs, device_target=device_target, label=f"{label} ({path}, batch {batch})")

    for base in progress(bases, "models"):
        variants = model_variants(base, registered, pixelfly_models)
        results = {(variant, path): [] for variant, _, _, _ in variants for path in paths}
        for _ in range(rounds):
            for path in paths:
                for variant, label, name, mlp_layer in variants:
                    results[variant, path].append(measure(name, mlp_layer, path, batch_size, repeats, warmup, label))
        peaks = {(variant, path): {} for variant, _, _, _ in variants for path in paths}
        for batch in memory_batches:
            for path in paths:
                for variant, label, name, mlp_layer in variants:
                    peaks[variant, path][batch] = measure(name, mlp_layer, path, batch, 2, 1, label)["peak_rss_mb"]
        for path in paths:
            measured = {variant: dict(summarize_model(results[variant, path]), model=label, variant=variant)
                        for variant, label, _, _ in variants}
            dense = measured["dense"]
            for variant, row in measured.items():
                row["train_speedup_vs_dense"] = round(dense["train_step_ms"] / row["train_step_ms"], 2)
                row["infer_speedup_vs_dense"] = round(dense["infer_ms"] / row["infer_ms"], 2)
                if memory_batches:
                    row["rss_mb_per_image"] = round(memory_slope({**peaks[variant, path],
                                                                  batch_size: row["peak_rss_mb"]}), 1)
            for row in measured.values():
                if memory_batches:
                    row["rss_per_image_vs_dense"] = round(row["rss_mb_per_image"] / dense["rss_mb_per_image"], 2)
                rows.append(row)
    return rows


def plot_models(rows: List[dict], path: str) -> Optional[str]:
    """Training step per model and variant (the accelerated path); None without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    rows = [r for r in rows if r.get("path", "accel") == "accel"]  # the plain path's steps are in the table

    def base(row):
        return row["model"][:-len(row["variant"]) - 1] if row["variant"] != "dense" else row["model"]

    models = list(dict.fromkeys(base(r) for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    figure, axis = plt.subplots(figsize=(max(6, 1.1 * len(models)), 4.5))
    width = 0.8 / len(variants)
    for index, variant in enumerate(variants):
        step = {base(r): r["train_step_ms"] for r in rows if r["variant"] == variant}
        positions = [i for i, m in enumerate(models) if m in step]
        axis.bar([i + (index - (len(variants) - 1) / 2) * width for i in positions],
                 [step[models[i]] for i in positions], width, label=variant)
    axis.set_xticks(range(len(models)))
    axis.set_xticklabels(models, rotation=30, ha="right")
    axis.set(ylabel="training step (ms)",
             title=f"training step, batch {rows[0]['batch_size']}, {rows[0]['img_size']} px")
    axis.legend()
    axis.grid(axis="y", alpha=0.3)
    return save_figure(figure, path)
