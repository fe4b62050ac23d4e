"""Does Monarch keep accuracy? Train a family's dense, Monarch (and Pixelfly) twins on Fashion-MNIST, several seeds.

    python scripts/study.py --family gmlp --seeds 0 1 --out study/gmlp
    python scripts/study.py --family mixer --seeds 0 1 --out study/mixer --epochs 5
    python scripts/study.py --family gmlp --out study/smoke -- --num_samples 2048   # anything after -- goes to train.py

Each run is ``train.py -c configs/fashion_mnist/<family>_<variant>.yaml --seed S`` in a directory of its own under
``--out``; the twins share the recipe, only ``mlp_layer`` differs. Per variant the study records the final test
top-1 (mean and spread over the seeds), parameters, MACs per image, training wall time (the epochs' own times,
validation excluded) and images/s. It writes ``study.csv``, ``runs.csv`` and ``study.png`` (accuracy against
training time, the paper's trade-off figure).

A killed study continues where it stopped: a finished run (all epochs in its ``results.csv``) is kept, and an
unfinished one resumes from its newest checkpoint with train.py's exact resume.
"""
import argparse
import csv
import os
import subprocess
import sys
from typing import Dict, List, Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import numpy as np  # noqa: E402

CONFIGS = os.path.join(REPO_ROOT, "configs", "fashion_mnist")
VARIANTS = {"gmlp": ("dense", "monarch"), "mixer": ("dense", "monarch", "pixelfly")}
STUDY_FIELDS = ["family", "variant", "seeds", "epochs", "top1_mean", "top1_spread", "top1_per_seed", "params",
                "macs_m", "train_time_s", "images_per_s", "time_speedup_vs_dense", "top1_vs_dense"]
RUN_FIELDS = ["family", "variant", "seed", "epochs", "top1", "train_time_s", "images_per_s", "run_dir"]


def config_path(family: str, variant: str) -> str:
    return os.path.join(CONFIGS, f"{family}_{variant}.yaml")


def read_results(run_dir: str) -> List[dict]:
    path = os.path.join(run_dir, "results.csv")
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def latest_checkpoint(run_dir: str, model: str) -> Optional[str]:
    from mindcv_ext.engine.checkpoint import epoch_checkpoints

    found = epoch_checkpoints(run_dir, model) if os.path.isdir(run_dir) else []
    return found[-1][1] if found else None


def train_arguments(family: str, variant: str, seed: int, epochs: Optional[int], run_dir: str,
                    extra: List[str]) -> List[str]:
    """train.py's arguments for one run. Other epochs than the recipe's shorten its cosine decay to match, so that
    every study ends at the recipe's final learning rate."""
    from config import parse_args

    argv = ["-c", config_path(family, variant), "--seed", str(seed), "--ckpt_save_dir", run_dir]
    if epochs:
        warmup = parse_args(["-c", config_path(family, variant)]).warmup_epochs
        argv += ["--epoch_size", str(epochs), "--decay_epochs", str(max(1, epochs - int(warmup)))]
    return argv + list(extra)


def run_once(family: str, variant: str, seed: int, args, extra: List[str]) -> dict:
    """Train (or finish) one run and return its row; a finished run is read, not repeated."""
    from config import parse_args

    run_dir = os.path.join(args.out, f"{family}_{variant}_seed{seed}")
    argv = train_arguments(family, variant, seed, args.epochs, run_dir, extra)
    settings = parse_args(argv)
    rows = read_results(run_dir)
    if len(rows) < settings.epoch_size:
        command = [sys.executable, os.path.join(REPO_ROOT, "train.py"), *argv]
        checkpoint = latest_checkpoint(run_dir, settings.model)
        if checkpoint:  # a killed study: continue this run exactly where its last checkpoint left it
            command += ["--ckpt_path", checkpoint, "--resume_opt", "True"]
        os.makedirs(run_dir, exist_ok=True)
        # train.py keeps its own train.log in run_dir; the console (progress bars, errors before logging starts)
        # goes to a file of its own so that the log does not hold every line twice.
        console = os.path.join(run_dir, "console.log")
        with open(console, "a") as log:
            # From the caller's folder, like its paths (--out, --data_dir); MindSpore's graph dumps land there too.
            result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            raise RuntimeError(f"training {family}_{variant} seed {seed} failed (exit {result.returncode}); see "
                               f"{console}")
        rows = read_results(run_dir)
    rows = [r for r in rows if r["val_top1"]]
    if len(rows) < settings.epoch_size:
        raise RuntimeError(f"{run_dir}: results.csv has {len(rows)} of {settings.epoch_size} epochs after training")
    last = rows[settings.epoch_size - 1]
    times = [float(r["epoch_time_s"]) for r in rows[:settings.epoch_size]]
    speeds = [float(r["images_per_s"]) for r in rows[:settings.epoch_size]]
    return {"family": family, "variant": variant, "seed": seed, "epochs": settings.epoch_size,
            "top1": round(100.0 * float(last["val_top1"]), 2), "train_time_s": round(sum(times), 1),
            "images_per_s": round(float(np.mean(speeds)), 1), "run_dir": run_dir}


def model_size(family: str, variant: str, extra: List[str]) -> Dict[str, float]:
    """Parameters and MACs per image of the variant as its recipe builds it."""
    from config import input_resolution, model_arguments, parse_args
    from mindcv_ext.engine.runtime import build_model
    from mindcv_ext.models import count_params
    from scripts.benchmark import count_macs

    settings = parse_args(["-c", config_path(family, variant), *extra])
    size = input_resolution(settings) or 28
    net = build_model(settings.model, 10, settings.in_channels, False, None, None, settings.img_size,
                      settings.mlp_layer, settings.nblocks, settings.model_kwargs, **model_arguments(settings))
    return {"params": count_params(net), "macs_m": round(count_macs(net, size, settings.in_channels) / 1e6, 1)}


def summarize(runs: List[dict], sizes: Dict[str, dict]) -> List[dict]:
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
                "images_per_s": round(float(np.mean([r["images_per_s"] for r in mine])), 1),
                **sizes[f"{family}_{variant}"]}
        dense = per_variant.get("dense")
        for row in per_variant.values():
            if dense:
                row["time_speedup_vs_dense"] = round(dense["train_time_s"] / row["train_time_s"], 2)
                row["top1_vs_dense"] = round(row["top1_mean"] - dense["top1_mean"], 2)
            rows.append(row)
    return rows


def plot(runs: List[dict], rows: List[dict], path: str) -> Optional[str]:
    """Test top-1 against training wall time: every run as a dot, each variant's mean as a marker."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axis = plt.subplots(figsize=(7, 4.5))
    markers = {"dense": "o", "monarch": "s", "pixelfly": "^"}
    for row in rows:
        label = f"{row['family']} {row['variant']}"
        mine = [r for r in runs if r["family"] == row["family"] and r["variant"] == row["variant"]]
        points = axis.scatter([r["train_time_s"] for r in mine], [r["top1"] for r in mine], alpha=0.35, s=18)
        axis.scatter([row["train_time_s"]], [row["top1_mean"]], marker=markers.get(row["variant"], "D"), s=90,
                     color=points.get_facecolor()[0][:3], edgecolor="black", label=label)
    axis.set(xlabel="training wall time (s, same epochs)", ylabel="test top-1 (%)",
             title="Fashion-MNIST: accuracy against training time")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


MARKDOWN_FIELDS = ["family", "variant", "seeds", "epochs", "top1_mean", "top1_spread", "params", "macs_m",
                   "train_time_s", "images_per_s", "time_speedup_vs_dense", "top1_vs_dense"]


def parse(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     epilog="Arguments after -- are passed to every train.py run.")
    parser.add_argument("--family", nargs="+", default=["gmlp", "mixer"], choices=sorted(VARIANTS),
                        help="model families to study")
    parser.add_argument("--variants", nargs="+", default=None, choices=["dense", "monarch", "pixelfly"],
                        help="variants to train (default: every twin of the family)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds (>= 2 for a spread)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per run, the cosine decay fitted to them (default: the recipe's)")
    parser.add_argument("--out", default="study", help="directory for the runs, CSVs and plot")
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be >= 1")
    return args, extra


def main(argv=None) -> int:
    args, extra = parse(argv)
    from tqdm import tqdm

    from scripts.benchmark import markdown_table, write_csv

    plan = [(family, variant, seed) for family in args.family for variant in VARIANTS[family]
            if not args.variants or variant in args.variants for seed in args.seeds]
    # Seeds outermost within a family: an interrupted study has every variant of the first seeds.
    plan.sort(key=lambda item: (args.family.index(item[0]), args.seeds.index(item[2])))
    os.makedirs(args.out, exist_ok=True)
    runs = []
    try:
        bar = tqdm(plan, desc="study", unit="run", file=sys.stderr)
        for family, variant, seed in bar:
            bar.set_postfix_str(f"{family} {variant} seed {seed}")
            runs.append(run_once(family, variant, seed, args, extra))
            bar.write(f"{family} {variant} seed {seed}: top-1 {runs[-1]['top1']:.2f}% in "
                      f"{runs[-1]['train_time_s']:.0f} s of training")
            write_csv(os.path.join(args.out, "runs.csv"), RUN_FIELDS, runs)
    except (RuntimeError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}. Run the same command again to continue the study.", file=sys.stderr)
        return 2
    sizes = {f"{family}_{variant}": model_size(family, variant, extra)
             for family, variant in dict.fromkeys((f, v) for f, v, _ in plan)}
    rows = summarize(runs, sizes)
    write_csv(os.path.join(args.out, "study.csv"), STUDY_FIELDS, rows)
    plot(runs, rows, os.path.join(args.out, "study.png"))
    print(markdown_table(rows, MARKDOWN_FIELDS))
    print(f"\nwrote {args.out}/study.csv, runs.csv and study.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
