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

The records, summaries and plots (``mindcv_ext.benchmark.study``), MACs (``count_macs``), the step timed alone (a
``mindcv_ext.benchmark`` worker) and the CSV and markdown writers come from ``mindcv_ext.benchmark``. The recipes
are read with train.py's ``config``, which ``pip install -r requirements.txt`` installs with the package.
"""
import argparse
import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from mindcv_ext.benchmark.study import (EFFICIENCY_FIELDS, EPOCH_FIELDS, FINE_TUNED, MARKDOWN_FIELDS, RUN_FIELDS,
                                        STUDY_FIELDS, add_total_times, efficiency, last_json_line, plot, plot_curves,
                                        read_results, run_record, schedule, summarize, training_time)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO_ROOT, "configs", "fashion_mnist")
# The twins studied by default; --variants takes any registered linear layer too (mindcv_ext.layers).
VARIANTS = {"gmlp": ("dense", "monarch", FINE_TUNED), "mixer": ("dense", "monarch", "pixelfly", FINE_TUNED)}


def config_path(family: str, variant: str) -> str:
    """The recipe a variant trains with: its own, or, for a layer without one, the dense twin's; the fine-tuned
    variant uses the Monarch twin's."""
    own = os.path.join(CONFIGS, f"{family}_{'monarch' if variant == FINE_TUNED else variant}.yaml")
    return own if os.path.isfile(own) else os.path.join(CONFIGS, f"{family}_dense.yaml")


def recipe_argv(family: str, variant: str) -> List[str]:
    """train.py's arguments for a variant's recipe: a layer without a recipe of its own trains the dense twin's with
    its ``mlp_layer`` (the twins share the recipe, only ``mlp_layer`` differs)."""
    path = config_path(family, variant)
    own = variant == FINE_TUNED or os.path.basename(path) == f"{family}_{variant}.yaml"
    return ["-c", path] + ([] if own else ["--mlp_layer", variant])


def known_variants() -> Tuple[str, ...]:
    """Every variant --variants takes: each registered linear layer, and the fine-tuned one."""
    from mindcv_ext.layers import registered_linears

    return (*registered_linears(), FINE_TUNED)


def latest_checkpoint(run_dir: str, model: str) -> Optional[str]:
    from mindcv_ext.engine.checkpoint import epoch_checkpoints

    found = epoch_checkpoints(run_dir, model) if os.path.isdir(run_dir) else []
    return found[-1][1] if found else None


def run_dir_of(args, family: str, variant: str, seed: int) -> str:
    return os.path.join(args.out, f"{family}_{variant}_seed{seed}")


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


def train_arguments(family: str, variant: str, seed: int, args, run_dir: str, extra: List[str]) -> List[str]:
    """train.py's arguments for one run. Other epochs than the recipe's shorten its cosine decay to match, so that
    every study ends at the recipe's final learning rate (and keeps its epochs there). The fine-tuned variant
    starts from the dense run's projection, with ``--finetune_lr`` (default: a quarter of the recipe's) and no
    warm-up."""
    from config import parse_args

    argv = [*recipe_argv(family, variant), "--seed", str(seed), "--ckpt_save_dir", run_dir]
    recipe = parse_args(recipe_argv(family, variant))
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
    scores = last_json_line(console)
    record = {"projection_error": round(float(np.mean(errors)), 4), "top1_after_projection":
              round(100.0 * scores["top1"], 2), "layers": len(errors), "dense_checkpoint": checkpoint}
    from mindcv_ext.engine.files import atomic_write

    with atomic_write(path, "w") as stream:
        json.dump(record, stream, indent=1)
    return record


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
    record = run_record(family, variant, seed, run_dir, rows, settings.epoch_size)
    if variant == FINE_TUNED:
        record.update({key: projection[key] for key in ("projection_error", "top1_after_projection")})
        record["dense_time_s"] = finished_dense_run(args, family, seed, extra)[1]
    return record


def recipe_options(settings: argparse.Namespace) -> Dict[str, Any]:
    """``create_model``'s keywords for a recipe's network: 10 classes, no pretrained weights, the dropout rates
    left at the model's defaults (as the study has always counted and timed it)."""
    from config import model_options

    return model_options(settings, num_classes=10, pretrained=False, drop_rate=None, drop_path_rate=None)


def recipe_model(family: str, variant: str, extra: List[str]):
    """(network, settings): the variant's network as train.py builds it from its recipe (10 classes)."""
    from config import parse_args
    from mindcv_ext.models import create_model

    settings = parse_args([*recipe_argv(family, variant), *extra])
    return create_model(settings.model, **recipe_options(settings)), settings


def model_size(family: str, variant: str, extra: List[str]) -> Dict[str, float]:
    """Parameters and MACs per image of the variant as its recipe builds it."""
    from config import input_resolution
    from mindcv_ext.benchmark import count_macs
    from mindcv_ext.models import count_params

    net, settings = recipe_model(family, variant, extra)
    size = input_resolution(settings) or 28
    return {"params": count_params(net), "macs_m": round(count_macs(net, size, settings.in_channels) / 1e6, 1)}


def step_alone(family: str, variant: str, extra: List[str], steps: int, warmup: int,
               console: Optional[str] = None) -> dict:
    """The network's training step alone, in a worker process of its own (its graph compiled there): a bare
    ``TrainOneStepCell(WithLossCell(net, CrossEntropyLoss()), AdamWeightDecay)`` at the recipe's batch on random
    input, the accelerator on as in train.py, ``steps`` steps queued after ``warmup`` (which compile), one wait at
    the end (``mindcv_ext.benchmark.models.measure_train_step``). The worker's console goes to ``console``."""
    from config import input_resolution, parse_args
    from mindcv_ext.benchmark import run_worker

    settings = parse_args([*recipe_argv(family, variant), *extra])
    kwargs = dict(model=settings.model, create_kwargs=recipe_options(settings), batch_size=settings.batch_size,
                  image_size=input_resolution(settings) or 28, in_channels=settings.in_channels, num_classes=10,
                  lr=settings.lr, steps=steps, warmup=warmup, cpu_kernels=settings.cpu_kernels, mode=settings.mode,
                  device_target=settings.device_target)
    try:
        record = run_worker("train_step", kwargs, label=f"the step of {family}_{variant} alone", log=console)
    except RuntimeError as exc:
        raise RuntimeError(f"timing the step of {family}_{variant} alone failed: {exc}") from None
    return {"family": family, "variant": variant, **record}


def step_alone_record(family: str, variant: str, args, extra: List[str]) -> dict:
    """``step_alone``, measured once per study folder (kept in ``step_alone/<family>_<variant>.json``)."""
    path = os.path.join(args.out, "step_alone", f"{family}_{variant}.json")
    if not os.path.isfile(path):
        from mindcv_ext.engine.files import atomic_write

        os.makedirs(os.path.dirname(path), exist_ok=True)
        record = step_alone(family, variant, extra, args.step_alone_steps, warmup=5,
                            console=path[:-len(".json")] + ".log")
        with atomic_write(path, "w") as stream:
            json.dump(record, stream)
    with open(path) as stream:
        return json.load(stream)


def _variant_seeds(text: str):
    variant, _, seeds = text.partition("=")
    if not variant or not seeds:
        raise argparse.ArgumentTypeError(f"expected VARIANT=SEED[,SEED...], got {text!r}")
    try:
        return variant, [int(seed) for seed in seeds.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be integers, got {seeds!r}") from None


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: ...)" to an option's help unless the help already says what the default is."""

    def _get_help_string(self, action):
        return action.help if "(default:" in (action.help or "") else super()._get_help_string(action)


def parse(argv: Optional[List[str]] = None) -> Tuple[argparse.Namespace, List[str]]:
    """The study's options, and the arguments after ``--`` (for every train.py run)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=_HelpFormatter,
                                     epilog="Arguments after -- are passed to every train.py run.")
    parser.add_argument("--family", nargs="+", default=["gmlp", "mixer"], choices=sorted(VARIANTS),
                        help="model families to study")
    parser.add_argument("--variants", nargs="+", default=None, metavar="VARIANT",
                        help="variants to train: any registered mlp_layer (one without a recipe of its own trains "
                             "the dense twin's) or dense_to_monarch (default: the family's twins, and "
                             "dense_to_monarch)")
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
    args = parser.parse_args(argv)
    for name in ("epochs", "finetune_epochs", "step_alone_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.finetune_lr is not None and args.finetune_lr <= 0:
        parser.error("--finetune_lr must be positive")
    named = [*(args.variants or []), *(variant for variant, _ in args.variant_seeds)]
    if named:
        known = known_variants()
        unknown = [variant for variant in named if variant not in known]
        if unknown:
            parser.error(f"unknown variant {unknown[0]!r}; choose from {', '.join(known)}")
    return args, extra


def _variants(args, family: str) -> List[str]:
    """The family's variants to train: its twins in their order (dense before the fine-tuned one), then any other
    layer named."""
    if not args.variants:
        return list(VARIANTS[family])
    return [v for v in VARIANTS[family] if v in args.variants] + [v for v in args.variants if v not in VARIANTS[family]]


def study_plan(args) -> List[tuple]:
    """(family, variant, seed) in training order: seeds outermost within a family, so that an interrupted study
    has every variant of its first seeds; the fine-tuned variant after the dense run it starts from."""
    seeds = dict(args.variant_seeds)
    plan = [(family, variant, seed) for family in args.family for variant in _variants(args, family)
            for seed in seeds.get(variant, args.seeds)]
    order = sorted({seed for _, _, seed in plan}, key=lambda seed: (seed not in args.seeds, seed))
    plan.sort(key=lambda item: (args.family.index(item[0]), order.index(item[2])))
    return plan


def main(argv: Optional[List[str]] = None) -> int:
    args, extra = parse(argv)
    from tqdm import tqdm

    from mindcv_ext.benchmark import markdown_table, write_csv

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
