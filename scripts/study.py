"""Does Monarch keep accuracy? Train a family's dense, Monarch (and Pixelfly) twins on Fashion-MNIST, several seeds.

    python scripts/study.py --family gmlp --seeds 0 1 --out study/gmlp
    python scripts/study.py --family mixer --seeds 0 1 --variant_seeds pixelfly=0 dense_to_monarch=0 --out study/mixer
    python scripts/study.py --family gmlp --out study/smoke -- --num_samples 2048   # anything after -- goes to train.py

Each run is ``train.py -c configs/fashion_mnist/<family>_<variant>.yaml --seed S`` in a directory of its own under
``--out``; the twins share the recipe, only ``mlp_layer`` differs. ``dense_to_monarch`` is the dense twin of the
same seed, trained, projected onto Monarch (``train.py --to_monarch True`` with the Monarch twin's recipe) and
fine-tuned for ``--finetune_epochs``; its record adds the projection's error, the test top-1 straight after the
projection, and the total cost (dense training plus fine-tuning).

Per variant the study records the final test top-1 (mean and spread over the seeds), parameters, MACs per image,
training wall time (the epochs' own times, validation excluded) and images/s. It also times each network's
training step alone (a bare ``TrainOneStepCell``, the same batch, random input) against its epochs' images/s: the
loop's efficiency. It writes ``study.csv``, ``runs.csv``, ``efficiency.csv``, ``epochs.csv``, ``study.png``
(accuracy against training time, the paper's trade-off figure) and ``curves.png`` (test top-1 epoch by epoch).

A killed study continues where it stopped: a finished run (all epochs in its ``results.csv``) is kept, and an
unfinished one resumes from its newest checkpoint with train.py's exact resume. A step timed alone is kept too.
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import numpy as np  # noqa: E402

CONFIGS = os.path.join(REPO_ROOT, "configs", "fashion_mnist")
FINE_TUNED = "dense_to_monarch"
VARIANTS = {"gmlp": ("dense", "monarch", FINE_TUNED), "mixer": ("dense", "monarch", "pixelfly", FINE_TUNED)}
ALL_VARIANTS = ("dense", "monarch", "pixelfly", FINE_TUNED)
STUDY_FIELDS = ["family", "variant", "seeds", "epochs", "top1_mean", "top1_spread", "top1_per_seed", "params",
                "macs_m", "train_time_s", "images_per_s", "time_speedup_vs_dense", "top1_vs_dense", "total_time_s",
                "projection_error", "top1_after_projection"]
RUN_FIELDS = ["family", "variant", "seed", "epochs", "top1", "train_time_s", "images_per_s", "steady_images_per_s",
              "total_time_s", "projection_error", "top1_after_projection", "run_dir"]
EPOCH_FIELDS = ["family", "variant", "seed", "epoch", "top1", "epoch_time_s", "images_per_s", "train_loss"]
EFFICIENCY_FIELDS = ["family", "variant", "batch_size", "step_alone_images_per_s", "epoch_images_per_s",
                     "efficiency"]


def config_path(family: str, variant: str) -> str:
    """The recipe a variant trains with: the fine-tuned variant uses the Monarch twin's."""
    return os.path.join(CONFIGS, f"{family}_{'monarch' if variant == FINE_TUNED else variant}.yaml")


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


def run_dir_of(args, family: str, variant: str, seed: int) -> str:
    return os.path.join(args.out, f"{family}_{variant}_seed{seed}")


def schedule(epochs: int, warmup: float, cooldown: int = 0) -> List[str]:
    """train.py's arguments for ``epochs`` epochs: ``warmup`` epochs, the cosine decay, then ``cooldown`` epochs at
    the final learning rate (as many as the recipe has, while at least one epoch of decay remains)."""
    decay = max(1, epochs - int(warmup) - cooldown)
    return ["--epoch_size", str(epochs), "--warmup_epochs", f"{warmup:g}", "--decay_epochs", str(decay)]


def dense_epochs(args, family: str, extra: List[str]) -> int:
    """The dense run's epochs: ``--epochs``, else the recipe's with the arguments after ``--`` applied (as its run
    had them)."""
    from config import parse_args

    return args.epochs or parse_args(["-c", config_path(family, "dense"), *extra]).epoch_size


def finetune_epochs(args, family: str, extra: List[str]) -> int:
    """``--finetune_epochs``, or 30% of the dense run's epochs (at least one)."""
    return args.finetune_epochs or max(1, int(0.3 * dense_epochs(args, family, extra)))


def finished_dense_run(args, family: str, seed: int, extra: List[str]) -> Tuple[str, float]:
    """The finished dense run of ``seed``, where the fine-tuned variant starts: its final checkpoint, and its
    training time (part of the fine-tuned variant's cost, also when the dense run was trained by an earlier
    study)."""
    from config import parse_args

    run_dir = run_dir_of(args, family, "dense", seed)
    settings = parse_args(["-c", config_path(family, "dense"), *extra])
    checkpoint = latest_checkpoint(run_dir, settings.model)
    epochs = dense_epochs(args, family, extra)
    done = [r for r in read_results(run_dir) if r["val_top1"]]
    if checkpoint is None or len(done) < epochs:
        raise RuntimeError(f"{FINE_TUNED} seed {seed} starts from the finished dense run {run_dir}, which is not "
                           f"there yet; train the dense twin of seed {seed} first (--variants dense)")
    return checkpoint, training_time(done[:epochs])


def training_time(rows: List[dict]) -> float:
    """A run's training wall time: the sum of its epochs' own times (validation excluded)."""
    return round(sum(float(r["epoch_time_s"]) for r in rows), 1)


def train_arguments(family: str, variant: str, seed: int, args, run_dir: str, extra: List[str]) -> List[str]:
    """train.py's arguments for one run. Other epochs than the recipe's shorten its cosine decay to match, so that
    every study ends at the recipe's final learning rate (and keeps its epochs there). The fine-tuned variant
    starts from the dense run's projection, with ``--finetune_lr`` (default: a quarter of the recipe's) and no
    warm-up."""
    from config import parse_args

    argv = ["-c", config_path(family, variant), "--seed", str(seed), "--ckpt_save_dir", run_dir]
    recipe = parse_args(["-c", config_path(family, variant)])
    if variant == FINE_TUNED:
        lr = args.finetune_lr if args.finetune_lr else recipe.lr / 4.0
        argv += ["--ckpt_path", finished_dense_run(args, family, seed, extra)[0], "--to_monarch", "True",
                 "--lr", f"{lr:g}", *schedule(finetune_epochs(args, family, extra), 0)]
    elif args.epochs:
        cooldown = recipe.epoch_size - int(recipe.warmup_epochs) - recipe.decay_epochs
        argv += schedule(args.epochs, recipe.warmup_epochs, max(0, cooldown))
    return argv + list(extra)


def _python(script: str, argv: List[str], console: str) -> int:
    """Run one of the repository's scripts from the caller's folder (like its paths, --out and --data_dir),
    appending its console output to ``console``."""
    with open(console, "a") as log:
        return subprocess.run([sys.executable, os.path.join(REPO_ROOT, script), *argv], stdout=log,
                              stderr=subprocess.STDOUT).returncode


def projection_record(family: str, seed: int, args, run_dir: str, extra: List[str]) -> dict:
    """The dense run's projection onto Monarch before fine-tuning: its mean relative error per layer, and its test
    top-1 (eval.py ``--to_monarch True``). Measured once per run; kept in ``projection.json``."""
    path = os.path.join(run_dir, "projection.json")
    if os.path.isfile(path):
        with open(path) as stream:
            return json.load(stream)
    from mindcv_ext.models import load_dense_into_monarch

    checkpoint, _ = finished_dense_run(args, family, seed, extra)
    net, _ = recipe_model(family, FINE_TUNED, extra)
    errors = [error for _, error in load_dense_into_monarch(net, checkpoint)]
    os.makedirs(run_dir, exist_ok=True)
    console = os.path.join(run_dir, "projection.log")
    evaluation = ["-c", config_path(family, FINE_TUNED), "--ckpt_path", checkpoint, "--to_monarch", "True",
                  *extra]
    if _python("eval.py", evaluation, console) != 0:
        raise RuntimeError(f"evaluating the projection of {checkpoint} failed; see {console}")
    scores = _last_json_line(console)
    record = {"projection_error": round(float(np.mean(errors)), 4), "top1_after_projection":
              round(100.0 * scores["top1"], 2), "layers": len(errors), "dense_checkpoint": checkpoint}
    from mindcv_ext.engine.files import atomic_write

    with atomic_write(path, "w") as stream:
        json.dump(record, stream, indent=1)
    return record


def _last_json_line(console: str) -> dict:
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


def run_once(family: str, variant: str, seed: int, args, extra: List[str]) -> dict:
    """Train (or finish) one run and return its row; a finished run is read, not repeated."""
    from config import parse_args

    run_dir = run_dir_of(args, family, variant, seed)
    argv = train_arguments(family, variant, seed, args, run_dir, extra)
    settings = parse_args(argv)
    rows = read_results(run_dir)
    projection = projection_record(family, seed, args, run_dir, extra) if variant == FINE_TUNED else {}
    if len(rows) < settings.epoch_size:
        checkpoint = latest_checkpoint(run_dir, settings.model)
        if checkpoint:  # a killed study: continue this run exactly where its last checkpoint left it
            argv += ["--ckpt_path", checkpoint, "--resume_opt", "True"]
        os.makedirs(run_dir, exist_ok=True)
        # train.py keeps its own train.log in run_dir; the console (progress bars, errors before logging starts)
        # goes to a file of its own so that the log does not hold every line twice.
        console = os.path.join(run_dir, "console.log")
        code = _python("train.py", argv, console)  # MindSpore's graph dumps land in the caller's folder too
        if code != 0:
            raise RuntimeError(f"training {family}_{variant} seed {seed} failed (exit {code}); see {console}")
        rows = read_results(run_dir)
    rows = [r for r in rows if r["val_top1"]]
    if len(rows) < settings.epoch_size:
        raise RuntimeError(f"{run_dir}: results.csv has {len(rows)} of {settings.epoch_size} epochs after training")
    rows = rows[:settings.epoch_size]
    speeds = [float(r["images_per_s"]) for r in rows]
    record = {"family": family, "variant": variant, "seed": seed, "epochs": settings.epoch_size,
              "top1": round(100.0 * float(rows[-1]["val_top1"]), 2), "train_time_s": training_time(rows),
              "images_per_s": round(float(np.mean(speeds)), 1),
              # Epoch 1 includes compiling the graph; the later epochs are the loop's steady speed.
              "steady_images_per_s": round(float(np.median(speeds[1:] or speeds)), 1), "run_dir": run_dir,
              "epoch_rows": [{"family": family, "variant": variant, "seed": seed, "epoch": int(r["epoch"]),
                              "top1": round(100.0 * float(r["val_top1"]), 2), "epoch_time_s": r["epoch_time_s"],
                              "images_per_s": r["images_per_s"], "train_loss": r["train_loss"]} for r in rows]}
    if variant == FINE_TUNED:
        record.update({key: projection[key] for key in ("projection_error", "top1_after_projection")})
        record["dense_time_s"] = finished_dense_run(args, family, seed, extra)[1]
    return record


def recipe_model(family: str, variant: str, extra: List[str]):
    """(network, settings): the variant's network as train.py builds it from its recipe (10 classes)."""
    from config import model_arguments, parse_args
    from mindcv_ext.engine.runtime import build_model

    settings = parse_args(["-c", config_path(family, variant), *extra])
    net = build_model(settings.model, 10, settings.in_channels, False, None, None, settings.img_size,
                      settings.mlp_layer, settings.nblocks, settings.model_kwargs, **model_arguments(settings))
    return net, settings


def model_size(family: str, variant: str, extra: List[str]) -> Dict[str, float]:
    """Parameters and MACs per image of the variant as its recipe builds it."""
    from config import input_resolution
    from mindcv_ext.models import count_params
    from scripts.benchmark import count_macs

    net, settings = recipe_model(family, variant, extra)
    size = input_resolution(settings) or 28
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


def step_alone(family: str, variant: str, extra: List[str], steps: int, warmup: int) -> dict:
    """The network's training step alone, in this process: a bare ``TrainOneStepCell(WithLossCell(net,
    CrossEntropyLoss()), AdamWeightDecay)`` at the recipe's batch on random input, the accelerator on as in
    train.py, ``steps`` steps queued after ``warmup`` (which compile), one wait at the end."""
    import mindspore as ms
    from mindspore import nn

    from config import input_resolution, parse_args
    from mindcv_ext.accel import accelerate
    from mindcv_ext.engine.runtime import setup_context

    settings = parse_args(["-c", config_path(family, variant), *extra])
    setup_context(settings.mode, settings.device_target)
    net, _ = recipe_model(family, variant, extra)
    net = accelerate(net, settings.cpu_kernels)
    size = input_resolution(settings) or 28
    rng = np.random.default_rng(0)
    images = ms.Tensor(rng.standard_normal((settings.batch_size, settings.in_channels, size, size)), ms.float32)
    labels = ms.Tensor(rng.integers(0, 10, settings.batch_size), ms.int32)
    cell = nn.TrainOneStepCell(nn.WithLossCell(net, nn.CrossEntropyLoss()),
                               nn.AdamWeightDecay(net.trainable_params(), settings.lr))
    cell.set_train()
    for _ in range(warmup):
        cell(images, labels).asnumpy()
    start = time.perf_counter()
    for _ in range(steps):
        loss = cell(images, labels)
    loss.asnumpy()
    elapsed = time.perf_counter() - start
    return {"family": family, "variant": variant, "batch_size": settings.batch_size,
            "step_alone_images_per_s": round(settings.batch_size * steps / elapsed, 1)}


def step_alone_record(family: str, variant: str, args, extra: List[str]) -> dict:
    """``step_alone`` in a process of its own (its graph compiled there), measured once per study folder."""
    path = os.path.join(args.out, "step_alone", f"{family}_{variant}.json")
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        console = path[:-len(".json")] + ".log"
        code = _python(os.path.join("scripts", "study.py"), ["--_step_alone", family, variant, "--out", path,
                                                             "--step_alone_steps", str(args.step_alone_steps),
                                                             "--", *extra], console)
        if code != 0:
            raise RuntimeError(f"timing the step of {family}_{variant} alone failed (exit {code}); see {console}")
    with open(path) as stream:
        return json.load(stream)


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


MARKERS = {"dense": "o", "monarch": "s", "pixelfly": "^", FINE_TUNED: "D"}


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(figure, plt, path: str) -> str:
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot(runs: List[dict], rows: List[dict], path: str) -> Optional[str]:
    """Test top-1 against training wall time: every run as a dot, each variant's mean as a marker. The fine-tuned
    variant stands at its total cost, the dense run's time included."""
    plt = _pyplot()
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
    return _save(figure, plt, path)


def plot_curves(runs: List[dict], path: str) -> Optional[str]:
    """Test top-1 after each epoch against the run's cumulative training time (the fine-tuned runs continue from
    their dense run's end)."""
    plt = _pyplot()
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
    return _save(figure, plt, path)


MARKDOWN_FIELDS = ["family", "variant", "seeds", "epochs", "top1_mean", "top1_spread", "params", "macs_m",
                   "train_time_s", "total_time_s", "images_per_s", "time_speedup_vs_dense", "top1_vs_dense"]


def _variant_seeds(text: str):
    variant, _, seeds = text.partition("=")
    if variant not in ALL_VARIANTS or not seeds:
        raise argparse.ArgumentTypeError(f"expected VARIANT=SEED[,SEED...] with VARIANT one of "
                                         f"{', '.join(ALL_VARIANTS)}, got {text!r}")
    try:
        return variant, [int(seed) for seed in seeds.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be integers, got {seeds!r}") from None


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: ...)" to an option's help unless the help already says what the default is."""

    def _get_help_string(self, action):
        return action.help if "(default:" in (action.help or "") else super()._get_help_string(action)


def parse(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=_HelpFormatter,
                                     epilog="Arguments after -- are passed to every train.py run.")
    parser.add_argument("--family", nargs="+", default=["gmlp", "mixer"], choices=sorted(VARIANTS),
                        help="model families to study")
    parser.add_argument("--variants", nargs="+", default=None, choices=ALL_VARIANTS,
                        help="variants to train (default: every twin of the family, and dense_to_monarch)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds (>= 2 for a spread)")
    parser.add_argument("--variant_seeds", type=_variant_seeds, nargs="+", default=[], metavar="VARIANT=SEEDS",
                        help="other seeds for some variants, e.g. pixelfly=0 dense_to_monarch=0")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per run, the cosine decay fitted to them (default: the recipe's)")
    parser.add_argument("--finetune_epochs", type=int, default=None,
                        help="epochs of dense_to_monarch's fine-tuning (default: 30%% of the dense run's, rounded "
                             "down)")
    parser.add_argument("--finetune_lr", type=float, default=None,
                        help="dense_to_monarch's peak learning rate, cosine to the recipe's min_lr without "
                             "warm-up (default: a quarter of the recipe's lr)")
    parser.add_argument("--step_alone_steps", type=int, default=30,
                        help="steps timed for each twin's step alone (after 5 that compile and warm up)")
    parser.add_argument("--out", default="study", help="directory for the runs, CSVs and plots")
    parser.add_argument("--_step_alone", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("epochs", "finetune_epochs", "step_alone_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.finetune_lr is not None and args.finetune_lr <= 0:
        parser.error("--finetune_lr must be positive")
    return args, extra


def study_plan(args) -> List[tuple]:
    """(family, variant, seed) in training order: seeds outermost within a family, so that an interrupted study
    has every variant of its first seeds; the fine-tuned variant after the dense run it starts from."""
    seeds = dict(args.variant_seeds)
    plan = [(family, variant, seed) for family in args.family for variant in VARIANTS[family]
            if not args.variants or variant in args.variants for seed in seeds.get(variant, args.seeds)]
    order = sorted({seed for _, _, seed in plan}, key=lambda seed: (seed not in args.seeds, seed))
    plan.sort(key=lambda item: (args.family.index(item[0]), order.index(item[2])))
    return plan


def main(argv=None) -> int:
    args, extra = parse(argv)
    if args._step_alone:
        record = step_alone(*args._step_alone, extra, args.step_alone_steps, warmup=5)
        from mindcv_ext.engine.files import atomic_write

        with atomic_write(args.out, "w") as stream:
            json.dump(record, stream)
        return 0
    from tqdm import tqdm

    from scripts.benchmark import markdown_table, write_csv

    plan = study_plan(args)
    os.makedirs(args.out, exist_ok=True)
    runs, alone = [], []
    try:
        bar = tqdm(plan, desc="study", unit="run", file=sys.stderr)
        for family, variant, seed in bar:
            bar.set_postfix_str(f"{family} {variant} seed {seed}")
            runs.append(run_once(family, variant, seed, args, extra))
            bar.write(f"{family} {variant} seed {seed}: top-1 {runs[-1]['top1']:.2f}% in "
                      f"{runs[-1]['train_time_s']:.0f} s of training")
            add_total_times(runs)
            write_csv(os.path.join(args.out, "runs.csv"), RUN_FIELDS, runs)
        twins = [(f, v) for f, v in dict.fromkeys((f, v) for f, v, _ in plan) if v != FINE_TUNED]
        for family, variant in tqdm(twins, desc="steps alone", unit="twin", file=sys.stderr):
            alone.append(step_alone_record(family, variant, args, extra))
    except (RuntimeError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}. Run the same command again to continue the study.", file=sys.stderr)
        return 2
    sizes = {f"{family}_{variant}": model_size(family, variant, extra)
             for family, variant in dict.fromkeys((f, v) for f, v, _ in plan)}
    rows = summarize(runs, sizes)
    write_csv(os.path.join(args.out, "study.csv"), STUDY_FIELDS, rows)
    write_csv(os.path.join(args.out, "epochs.csv"), EPOCH_FIELDS, [e for r in runs for e in r["epoch_rows"]])
    loop = efficiency(runs, alone)
    write_csv(os.path.join(args.out, "efficiency.csv"), EFFICIENCY_FIELDS, loop)
    plot(runs, rows, os.path.join(args.out, "study.png"))
    plot_curves(runs, os.path.join(args.out, "curves.png"))
    print(markdown_table(rows, MARKDOWN_FIELDS))
    print()
    print(markdown_table(loop, EFFICIENCY_FIELDS))
    print(f"\nwrote {args.out}/study.csv, runs.csv, epochs.csv, efficiency.csv, study.png and curves.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
