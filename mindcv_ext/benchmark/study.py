"""The accuracy study's records: runs read from train.py's ``results.csv``, summarised per variant, plotted.

``scripts/study.py`` trains the runs (train.py, eval.py, the recipes under ``configs/fashion_mnist``); what it
records, summarises and plots is here, with no MindSpore in it: a run's record (``run_record``), the variants'
summary (``summarize``), the loop's efficiency against the step timed alone (``efficiency``), the accuracy
against training time (``plot``) and the epochs' curves (``plot_curves``).
"""
import csv
import json
import os
from typing import Dict, List, Optional

import numpy as np

from ..engine.results import pyplot, save_figure

__all__ = ["FINE_TUNED", "STUDY_FIELDS", "RUN_FIELDS", "EPOCH_FIELDS", "EFFICIENCY_FIELDS", "MARKDOWN_FIELDS",
           "read_results", "schedule", "training_time", "last_json_line", "run_record", "summarize",
           "add_total_times", "efficiency", "plot", "plot_curves"]

# The Monarch twin fine-tuned from the dense run's projection; its cost includes the dense run's.
FINE_TUNED = "dense_to_monarch"
STUDY_FIELDS = ["family", "variant", "seeds", "epochs", "top1_mean", "top1_spread", "top1_per_seed", "params",
                "macs_m", "train_time_s", "images_per_s", "time_speedup_vs_dense", "top1_vs_dense", "total_time_s",
                "projection_error", "top1_after_projection"]
RUN_FIELDS = ["family", "variant", "seed", "epochs", "top1", "train_time_s", "images_per_s", "steady_images_per_s",
              "total_time_s", "projection_error", "top1_after_projection", "run_dir"]
EPOCH_FIELDS = ["family", "variant", "seed", "epoch", "top1", "epoch_time_s", "images_per_s", "train_loss"]
EFFICIENCY_FIELDS = ["family", "variant", "batch_size", "step_alone_images_per_s", "epoch_images_per_s",
                     "efficiency"]
MARKDOWN_FIELDS = ["family", "variant", "seeds", "epochs", "top1_mean", "top1_spread", "params", "macs_m",
                   "train_time_s", "total_time_s", "images_per_s", "time_speedup_vs_dense", "top1_vs_dense"]
MARKERS = {"dense": "o", "monarch": "s", "pixelfly": "^", FINE_TUNED: "D"}


def read_results(run_dir: str) -> List[dict]:
    """A run's ``results.csv`` rows (none when it has not written one yet)."""
    path = os.path.join(run_dir, "results.csv")
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def schedule(epochs: int, warmup: float, cooldown: int = 0) -> List[str]:
    """train.py's arguments for ``epochs`` epochs: ``warmup`` epochs, the cosine decay, then ``cooldown`` epochs at
    the final learning rate (as many as the recipe has, while at least one epoch of decay remains)."""
    decay = max(1, epochs - int(warmup) - cooldown)
    return ["--epoch_size", str(epochs), "--warmup_epochs", f"{warmup:g}", "--decay_epochs", str(decay)]


def training_time(rows: List[dict]) -> float:
    """A run's training wall time: the sum of its epochs' own times (validation excluded)."""
    return round(sum(float(r["epoch_time_s"]) for r in rows), 1)


def last_json_line(console: str) -> dict:
    """eval.py's scores: the last line of its console output that is a JSON object (warnings may follow it)."""
    with open(console) as stream:
        lines = stream.read().splitlines()
    for line in reversed(lines):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    raise RuntimeError(f"{console} ends without eval.py's JSON scores; read it for what went wrong, then run the "
                       f"study again")


def run_record(family: str, variant: str, seed: int, run_dir: str, rows: List[dict], epochs: int) -> dict:
    """One run's record from its ``results.csv`` rows: the final test top-1, the training time, images/s (the mean,
    and the steady speed from epoch 2 on) and its epochs' rows. A RuntimeError when fewer than ``epochs`` epochs were
    validated."""
    rows = [r for r in rows if r["val_top1"]]
    if len(rows) < epochs:
        raise RuntimeError(f"{run_dir}: results.csv has {len(rows)} of {epochs} epochs after training")
    rows = rows[:epochs]
    speeds = [float(r["images_per_s"]) for r in rows]
    record = {"family": family, "variant": variant, "seed": seed, "epochs": epochs,
              "top1": round(100.0 * float(rows[-1]["val_top1"]), 2), "train_time_s": training_time(rows),
              "images_per_s": round(float(np.mean(speeds)), 1),
              # Epoch 1 includes compiling the graph; the later epochs are the loop's steady speed.
              "steady_images_per_s": round(float(np.median(speeds[1:] or speeds)), 1), "run_dir": run_dir,
              "epoch_rows": [{"family": family, "variant": variant, "seed": seed, "epoch": int(r["epoch"]),
                              "top1": round(100.0 * float(r["val_top1"]), 2), "epoch_time_s": r["epoch_time_s"],
                              "images_per_s": r["images_per_s"], "train_loss": r["train_loss"]} for r in rows]}
    return record


def summarize(runs: List[dict], sizes: Dict[str, dict]) -> List[dict]:
    """One row per family and variant: top-1 mean, spread and per seed, times and speeds averaged over the seeds,
    ``sizes[f"{family}_{variant}"]`` (params, MACs), and each variant against the dense one."""
    rows = []
    for family in dict.fromkeys(r["family"] for r in runs):
        family_runs = [r for r in runs if r["family"] == family]
        per_variant = {}
        for variant in dict.fromkeys(r["variant"] for r in family_runs):
            mine = [r for r in family_runs if r["variant"] == variant]
            top1 = [r["top1"] for r in mine]
            per_variant[variant] = {
                "family": family, "variant": variant, "seeds": len(mine), "epochs": mine[0]["epochs"],
                "top1_mean": round(float(np.mean(top1)), 2),
                "top1_spread": round(float(np.max(top1) - np.min(top1)), 2) if len(top1) > 1 else 0.0,
                "top1_per_seed": " ".join(f"{t:.2f}" for t in top1),
                "train_time_s": round(float(np.mean([r["train_time_s"] for r in mine])), 1),
                "total_time_s": round(float(np.mean([r["total_time_s"] for r in mine])), 1),
                "images_per_s": round(float(np.mean([r["images_per_s"] for r in mine])), 1),
                **sizes[f"{family}_{variant}"]}
            if variant == FINE_TUNED:
                for key in ("projection_error", "top1_after_projection"):
                    per_variant[variant][key] = round(float(np.mean([r[key] for r in mine])), 4 if "error" in key
                                                      else 2)
        dense = per_variant.get("dense")
        for row in per_variant.values():
            if dense:
                # The fine-tuned variant's cost is the dense run's and its own: its speed-up is below 1.
                row["time_speedup_vs_dense"] = round(dense["train_time_s"] / row["total_time_s"], 2)
                row["top1_vs_dense"] = round(row["top1_mean"] - dense["top1_mean"], 2)
            rows.append(row)
    return rows


def add_total_times(runs: List[dict]) -> None:
    """Each run's total cost: its own training time, plus, for the fine-tuned variant, the dense run it began from."""
    for run in runs:
        run["total_time_s"] = round(run["train_time_s"] + run.get("dense_time_s", 0.0), 1)


def efficiency(runs: List[dict], alone: List[dict]) -> List[dict]:
    """Per twin: the epochs' steady images/s (epoch 2 on, the median over runs) against its step timed alone."""
    rows = []
    for record in alone:
        mine = [r["steady_images_per_s"] for r in runs
                if (r["family"], r["variant"]) == (record["family"], record["variant"])]
        if not mine:
            continue
        epoch = float(np.median(mine))
        rows.append({**record, "epoch_images_per_s": round(epoch, 1),
                     "efficiency": round(epoch / record["step_alone_images_per_s"], 3)})
    return rows


def plot(runs: List[dict], rows: List[dict], path: str) -> Optional[str]:
    """Test top-1 against training wall time: every run as a dot, each variant's mean as a marker. The fine-tuned
    variant stands at its total cost, the dense run's time included."""
    plt = pyplot()
    if plt is None:
        return None
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        label = f"{row['family']} {row['variant'].replace('_', ' ')}"
        mine = [r for r in runs if r["family"] == row["family"] and r["variant"] == row["variant"]]
        points = axis.scatter([r["total_time_s"] for r in mine], [r["top1"] for r in mine], alpha=0.35, s=18)
        axis.scatter([row["total_time_s"]], [row["top1_mean"]], marker=MARKERS.get(row["variant"], "P"), s=90,
                     color=points.get_facecolor()[0][:3], edgecolor="black", label=label)
    axis.set(xlabel="training wall time (s; dense to Monarch: dense run + fine-tuning)", ylabel="test top-1 (%)",
             title="Fashion-MNIST: accuracy against training time")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return save_figure(figure, path)


def plot_curves(runs: List[dict], path: str) -> Optional[str]:
    """Test top-1 after each epoch against the run's cumulative training time (the fine-tuned runs continue from
    their dense run's end)."""
    plt = pyplot()
    if plt is None:
        return None
    figure, axis = plt.subplots(figsize=(7, 4.5))
    colours = {}
    for run in runs:
        start = run["total_time_s"] - run["train_time_s"]
        times = start + np.cumsum([float(r["epoch_time_s"]) for r in run["epoch_rows"]])
        key = (run["family"], run["variant"])
        line = axis.plot(times, [r["top1"] for r in run["epoch_rows"]], marker=MARKERS.get(run["variant"], "P"),
                         markersize=4, color=colours.get(key), alpha=0.8,
                         label=None if key in colours else f"{run['family']} {run['variant'].replace('_', ' ')}")
        colours.setdefault(key, line[0].get_color())
    axis.set(xlabel="cumulative training wall time (s)", ylabel="test top-1 after the epoch (%)",
             title="Fashion-MNIST: epoch by epoch")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return save_figure(figure, path)
