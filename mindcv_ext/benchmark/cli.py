"""The benchmark's command line: ``python -m mindcv_ext.benchmark`` (``scripts/benchmark.py``).

Do Monarch and Pixelfly (and every registered linear layer) pay off on this machine? Each suite times them
against dense:

- ``mlp``: the MLP dim -> hidden -> dim of every layer (``layers.run_mlp``);
- ``layers``: single layers over a grid of sizes, block counts and token counts (``layers.run_layers``);
- ``models``: training step, inference, MACs and peak memory of registered models (``models.run_models``);
- ``attention``: T2T attention cores' time and working memory against the length (``attention.run_attention``);
- ``gpt2``: fly's structured-MLP GPT-2 benchmark (``gpt2.run_gpt2``); ``all`` runs the others.

Timings are medians over ``--repeats`` calls after ``--warmup`` calls, in graph mode, the implementations called in
alternating order. On the CPU the cells run on the accelerator's kernels (``--cpu_kernels auto``), as train.py runs
them; ``--with_plain`` also times the plain network (the operators GPU and Ascend run) in the same run.
``--compare_torch`` adds PyTorch's Linear and PyTorch Monarch and Pixelfly layers (PyTorch is optional).
"""
import argparse
import os
import sys
from typing import List, Optional, Sequence

__all__ = ["parse_args", "main"]

DESCRIPTION = ("Do Monarch, Pixelfly and the other registered linear layers pay off on this machine? Each suite times "
               "them against dense: mlp, layers, models, attention and gpt2 (all: every suite but gpt2).")
SUITES = ["mlp", "layers", "models", "attention", "gpt2", "all"]
LAYER_SHOWN = ["framework", "impl", "in_features", "out_features", "nblocks", "tokens", "pass", "ms", "gflops_per_s",
               "speedup_vs_dense"]


def _parser(default_suites: Sequence[str]) -> argparse.ArgumentParser:
    from config import mapping_value

    from ..layers import registered_linears
    from .attention import ATTENTION_SETTINGS
    from .gpt2 import GPT2_VARIANTS
    from .models import PIXELFLY_MODELS

    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if program in ("", "__main__.py"):
        program = "python -m mindcv_ext.benchmark"
    parser = argparse.ArgumentParser(prog=program, description=DESCRIPTION,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     epilog="Example: python scripts/benchmark.py --suite all --compare_torch "
                                            "--out bench")
    parser.add_argument("--suite", nargs="+", choices=SUITES, default=list(default_suites),
                        help="what to measure (several in one run: e.g. --suite mlp models); all leaves out gpt2, "
                             "which is long at fly's sizes")
    parser.add_argument("--device_target", choices=["CPU", "GPU", "Ascend", "auto"], default="auto",
                        help="backend; auto uses the installed MindSpore's")
    parser.add_argument("--cpu_kernels", choices=["auto", "on", "off"], default="auto",
                        help="the accelerator (mindcv_ext.accel) on the CPU: auto where it can serve, on to insist, "
                             "off to time the plain network only")
    parser.add_argument("--with_plain", action="store_true",
                        help="also time the plain network (the operators GPU and Ascend run) in the same run")
    parser.add_argument("--model_kwargs", type=mapping_value, default={},
                        help="extra entrypoint arguments for every model, e.g. '{num_blocks: 4}' for shallower Mixers "
                             "and gMLPs, or '{n_layer: 2}' for GPT-2")
    parser.add_argument("--out", type=str, default="", help="directory for CSV, JSON and PNG results")
    group = parser.add_argument_group("mlp and layers suites")
    group.add_argument("--layers", nargs="+", default=None, choices=list(registered_linears()), metavar="LAYER",
                       help=f"registered linear layers to time against dense (default: all: "
                            f"{', '.join(registered_linears())})")
    group.add_argument("--repeats", type=int, default=30, help="timed calls per case (median reported)")
    group.add_argument("--warmup", type=int, default=3, help="untimed calls first (compilation, caches)")
    group.add_argument("--compare_torch", "--compare-torch", dest="compare_torch", action="store_true",
                       help="also time torch.nn.Linear and PyTorch Monarch and Pixelfly layers (needs torch)")
    group.add_argument("--grid", choices=["sweep", "full"], default="sweep",
                       help="layer cases: one-dimensional sweeps around 768->3072, or the full product")
    group.add_argument("--mlp_dim", type=int, default=768, help="MLP width")
    group.add_argument("--mlp_hidden", type=int, default=3072, help="MLP hidden width")
    group.add_argument("--mlp_tokens", type=int, default=1568, help="tokens (rows) per MLP call")
    group.add_argument("--mlp_nblocks", type=int, default=4, help="blocks of the layers that take nblocks")
    group = parser.add_argument_group("models suite")
    group.add_argument("--models", nargs="*", default=[],
                       help="fnmatch patterns of models, e.g. 'mixer_b16_224*' (default: all)")
    group.add_argument("--pixelfly_models", nargs="*", default=PIXELFLY_MODELS,
                       help="models also measured with Pixelfly channel MLPs, as <model>_pixelfly")
    group.add_argument("--batch_size", type=int, default=8, help="model batch size")
    group.add_argument("--img_size", type=int, default=224, help="model input size")
    group.add_argument("--memory_batch_sizes", type=int, nargs="*", default=[],
                       help="also run these batch sizes (a few steps each) and report peak RSS per image, the slope "
                            "over them and --batch_size, e.g. 2 4 (with --batch_size 8)")
    group.add_argument("--model_repeats", type=int, default=10, help="timed steps per model and round")
    group.add_argument("--model_warmup", type=int, default=5,
                       help="untimed steps first: compilation, and the first few steps run up to 40%% slower")
    group.add_argument("--model_rounds", type=int, default=1,
                       help="worker processes per model, alternating the variants (median over all steps); also "
                            "the gpt2 suite's workers per variant")
    group = parser.add_argument_group("attention suite")
    group.add_argument("--attentions", nargs="*", default=list(ATTENTION_SETTINGS), choices=list(ATTENTION_SETTINGS),
                       help="attention cores")
    group.add_argument("--attn_lengths", type=int, nargs="*", default=[1568, 3136, 6272], help="sequence lengths")
    group.add_argument("--attn_batch_heads", type=int, default=16, help="batch x heads")
    group.add_argument("--attn_baseline_tokens", type=int, default=64,
                       help="length whose peak memory is subtracted as the fixed cost (compilation, runtime)")
    group.add_argument("--full_max_tokens", type=int, default=3136,
                       help="skip full attention above this length (its N x N scores grow quadratically; 0: no cap)")
    group = parser.add_argument_group("gpt2 suite (fly's ssl_bench_mlp; defaults are fly's)")
    group.add_argument("--gpt2_size", default="gpt2", choices=["gpt2", "gpt2_medium", "gpt2_large", "gpt2_xl"],
                       help="published GPT-2 size (--model_kwargs overrides its dimensions, e.g. '{n_layer: 2}')")
    group.add_argument("--gpt2_variants", nargs="+", default=list(GPT2_VARIANTS), choices=list(GPT2_VARIANTS),
                       metavar="VARIANT", help=f"MLP variants: {', '.join(GPT2_VARIANTS)}")
    group.add_argument("--batch_sizes", type=int, nargs="+", default=[8, 16, 32], help="batch sizes")
    group.add_argument("--seq_len", type=int, default=1024, help="tokens per sequence")
    group.add_argument("--iterations", type=int, default=25, help="timed forwards per variant and batch size")
    group.add_argument("--gpt2_warmup", type=int, default=5, help="untimed forwards first")
    return parser


def parse_args(argv: Optional[List[str]] = None, default_suites: Sequence[str] = ("mlp",)) -> argparse.Namespace:
    """The benchmark's options; ``default_suites`` when ``--suite`` is not given."""
    parser = _parser(default_suites)
    args = parser.parse_args(argv)
    if min(args.repeats, args.model_repeats, args.model_rounds, args.iterations, *args.batch_sizes, args.seq_len) < 1 \
            or min(args.warmup, args.model_warmup, args.gpt2_warmup) < 0:
        parser.error("--repeats, --model_repeats, --model_rounds, --iterations, --batch_sizes and --seq_len must be "
                     ">= 1; --warmup, --model_warmup and --gpt2_warmup >= 0")
    return args


def _report(title: str, table: str) -> None:
    print(f"\n### {title}\n{table}")


def main(argv: Optional[List[str]] = None, default_suites: Sequence[str] = ("mlp",)) -> int:
    """Run the suites ``argv`` asks for; print their tables and, with ``--out``, write their files."""
    args = parse_args(argv, default_suites)
    # Spinning OpenMP workers would steal the cores from the other thread pools between calls (PyTorch's with
    # --compare_torch, the CPU kernels' own). libgomp reads the policy when it loads, and MindSpore loads its own on
    # import: set it first (measured: with MindSpore's libgomp left spinning, its Monarch layer ran 10-50% slower
    # beside PyTorch). The workers inherit it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import json

    import mindspore as ms
    from tqdm import tqdm

    from . import attention, gpt2, layers, models
    from .harness import describe_machine
    from .report import markdown_table, write_csv, write_json

    ms.set_context(mode=ms.GRAPH_MODE)
    if args.device_target != "auto":
        ms.set_device(args.device_target)
    if args.compare_torch:
        try:
            import torch

            torch.set_num_threads(os.cpu_count() or 1)
        except ImportError:
            print("error: --compare_torch needs PyTorch (pip install torch); mindcv_ext itself does not",
                  file=sys.stderr)
            return 2

    def progress(items, desc):
        return tqdm(items, desc=desc, unit="case", file=sys.stderr)

    def output(name: str) -> str:
        return os.path.join(args.out, name)

    suites = set(args.suite)
    timing = dict(repeats=args.repeats, warmup=args.warmup, cpu_kernels=args.cpu_kernels, with_plain=args.with_plain,
                  compare_torch=args.compare_torch)
    machine = describe_machine(ms.get_context("device_target"))
    print("machine: " + json.dumps(machine))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        write_json(output("machine.json"), machine)
    if {"mlp", "all"} & suites:
        rows = layers.run_mlp(dim=args.mlp_dim, hidden=args.mlp_hidden, tokens=args.mlp_tokens,
                              nblocks=args.mlp_nblocks, layers=args.layers, **timing)
        _report(f"MLP {args.mlp_dim}->{args.mlp_hidden}->{args.mlp_dim}, {args.mlp_tokens} tokens, fp32, graph mode "
                f"(medians of {args.repeats})", markdown_table(rows, LAYER_SHOWN))
        if args.out:
            write_csv(output("mlp.csv"), layers.LAYER_FIELDS, rows)
    if {"layers", "all"} & suites:
        rows = layers.run_layers(grid=args.grid, layers=args.layers, progress=progress, **timing)
        _report(f"Linear layers, fp32, graph mode (medians of {args.repeats})", markdown_table(rows, LAYER_SHOWN))
        if args.out:
            write_csv(output("layers.csv"), layers.LAYER_FIELDS, rows)
            layers.plot_layers(rows, output("layers.png"))
    if {"models", "all"} & suites:
        rows = models.run_models(models=args.models, pixelfly_models=args.pixelfly_models, batch_size=args.batch_size,
                                 img_size=args.img_size, repeats=args.model_repeats, warmup=args.model_warmup,
                                 rounds=args.model_rounds, model_kwargs=args.model_kwargs,
                                 memory_batch_sizes=args.memory_batch_sizes, with_plain=args.with_plain,
                                 cpu_kernels=args.cpu_kernels, device_target=args.device_target, progress=progress)
        _report(f"Models, batch {args.batch_size}, {args.img_size} px, fp32, graph mode (medians of "
                f"{args.model_rounds} x {args.model_repeats} steps, each after {args.model_warmup} untimed)",
                markdown_table(rows, models.MODEL_FIELDS))
        if args.out:
            write_csv(output("models.csv"), models.MODEL_FIELDS, rows)
            models.plot_models(rows, output("models.png"))
    if {"attention", "all"} & suites:
        rows = attention.run_attention(attentions=args.attentions, lengths=args.attn_lengths,
                                       batch_heads=args.attn_batch_heads, baseline_tokens=args.attn_baseline_tokens,
                                       full_max_tokens=args.full_max_tokens, repeats=args.repeats,
                                       device_target=args.device_target, progress=progress)
        _report(f"Attention cores, forward, fp32, graph mode (medians of {args.repeats}; peak memory above the "
                f"process's before the inputs)", markdown_table(rows, attention.ATTENTION_FIELDS))
        if args.out:
            write_csv(output("attention.csv"), attention.ATTENTION_FIELDS, rows)
    if "gpt2" in suites:
        layer_rows, model_rows = gpt2.run_gpt2(
            size=args.gpt2_size, variants=args.gpt2_variants, batch_sizes=args.batch_sizes, seq_len=args.seq_len,
            iterations=args.iterations, warmup=args.gpt2_warmup, rounds=args.model_rounds,
            model_kwargs=args.model_kwargs, with_plain=args.with_plain, cpu_kernels=args.cpu_kernels,
            device_target=args.device_target, progress=progress)
        _report(f"{args.gpt2_size} MLP layers, forward, {layer_rows[0]['tokens']} tokens (medians of "
                f"{args.iterations})", markdown_table(layer_rows, gpt2.LAYER_FIELDS))
        _report(f"{args.gpt2_size} forward, sequence {args.seq_len}, eval mode ({args.gpt2_warmup} untimed, then the "
                f"mean of {args.iterations})", markdown_table(model_rows, gpt2.MODEL_FIELDS[4:]))
        if args.out:
            write_csv(output("gpt2.csv"), gpt2.MODEL_FIELDS, model_rows)
            write_csv(output("gpt2_layers.csv"), gpt2.LAYER_FIELDS, layer_rows)
            gpt2.plot_gpt2(model_rows, output("gpt2.png"))
    if args.out:
        print(f"\nwrote {args.out}/")
    return 0
