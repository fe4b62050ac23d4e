"""Do Monarch and Pixelfly pay off on this machine? Dense against Monarch and Pixelfly layers, MLPs and models.

    python scripts/benchmark.py --suite mlp                  # the 768->3072->768 MLP on 1,568 tokens
    python scripts/benchmark.py --suite layers --compare-torch
    python scripts/benchmark.py --suite models --models "mixer_b16_224*" --batch_size 8
    python scripts/benchmark.py --suite attention            # T2T attention cores: time and memory vs length
    python scripts/benchmark.py --suite all --out bench/      # everything, CSV and PNG into bench/
    python scripts/benchmark.py --suite mlp models --with_plain --models "mixer_b16_224*" "gmlp_s16_224*"
    python scripts/benchmark.py --suite gpt2 --batch_sizes 1 --seq_len 1024   # fly's SSL benchmark, CPU-sized

On the CPU, the MindSpore cells run on the accelerator's kernels (``mindcv_ext.accel``, ``--cpu_kernels auto``),
as train.py runs them; ``--with_plain`` also times the plain network (framework ``mindspore-plain``, path
``plain``: the operators GPU and Ascend run) in the same run, so both paths' ratios come from one measurement.

Timings are medians over ``--repeats`` calls after ``--warmup`` calls, in graph mode. Within a comparison the
implementations are called in alternating order, so a machine that speeds up or slows down over time (shared
CPUs do) affects them alike. ``--compare-torch`` adds ``torch.nn.Linear``, a PyTorch Monarch layer written from
the same formula and a PyTorch Pixelfly layer as fly runs it (dense backend), timed in the same process (PyTorch is
optional and never needed by mindcv_ext itself).

Pixelfly rows use fly's Mixer-B settings (``PIXELFLY_DEFAULTS``: butterfly_size 8, n_factors 2, block 32, rank 32,
gating) whatever ``nblocks`` says; in the layers suite they are timed once per (in, out, tokens). Their FLOPs count
the layout's blocks, the two low-rank factors and the gate (the MACs of the computed terms).
"""
import argparse
import csv
import fnmatch
import json
import math
import os
import platform
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from config import _mapping  # noqa: E402
from scripts.benchmark_gpt2 import GPT2_VARIANTS  # noqa: E402

LAYER_FIELDS = ["kind", "framework", "impl", "in_features", "out_features", "nblocks", "tokens", "pass", "ms",
                "gflop", "gflops_per_s", "speedup_vs_dense"]
# Models also measured with Pixelfly channel MLPs (mlp_layer="pixelfly", PIXELFLY_DEFAULTS): fly's Pixelfly Mixer.
PIXELFLY_MODELS = ["mixer_b16_224"]
ATTENTION_FIELDS = ["attention", "settings", "batch_heads", "tokens", "head_dim", "fwd_ms", "peak_extra_mb",
                    "working_mb", "working_mb_growth"]
# fly's settings for T2T-ViT_t-14's first T2T attention (3,136 tokens at 224 px).
ATTENTION_SETTINGS = {"full": {}, "local": {"local_context": 98}, "performer": {"nb_features": 49},
                      "sblocal": {"local_context": 49, "nb_features": 24}}
MODEL_FIELDS = ["model", "variant", "path", "params", "macs_g", "batch_size", "img_size", "train_step_ms", "train_img_s",
                "infer_ms", "infer_img_s", "peak_rss_mb", "train_speedup_vs_dense", "infer_speedup_vs_dense",
                "rss_mb_per_image", "rss_per_image_vs_dense"]


# ----------------------------------------------------------------------------------------------- machine
def describe_machine(device_target: str) -> Dict[str, object]:
    import mindspore as ms

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu": platform.processor() or "",
            "logical_cpus": os.cpu_count(), "mindspore": ms.__version__, "numpy": np.__version__,
            "device_target": device_target}
    try:
        with open("/proc/cpuinfo") as stream:
            names = [line.split(":", 1)[1].strip() for line in stream if line.startswith("model name")]
        if names:
            info["cpu"] = names[0]
        flags = open("/proc/cpuinfo").read()
        info["simd"] = [f for f in ("avx512f", "avx2", "fma") if f" {f}" in flags]
        with open("/proc/meminfo") as stream:
            info["memory_gb"] = round(int(stream.readline().split()[1]) / 2 ** 20, 1)
    except OSError:
        pass
    try:
        import mindcv

        info["mindcv"] = mindcv.__version__
    except (ImportError, AttributeError):
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["torch"] = None
    return info


# ----------------------------------------------------------------------------------------------- timing
def _sync(output) -> None:
    if isinstance(output, (tuple, list)):
        for item in output:
            _sync(item)
    elif hasattr(output, "asnumpy"):
        output.asnumpy()


def time_samples(call: Callable[[], object], repeats: int, warmup: int) -> List[float]:
    """Wall times (ms) of ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        samples.append(1000.0 * (time.perf_counter() - start))
    return samples


def time_alternating(calls: Dict[str, Callable[[], object]], repeats: int, warmup: int) -> Dict[str, float]:
    """Median wall time (ms) of each call, with the calls interleaved round by round."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    names = list(calls)
    samples = {name: [] for name in names}
    for round_index in range(repeats):
        for name in (names if round_index % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            calls[name]()
            samples[name].append(time.perf_counter() - start)
    return {name: 1000.0 * float(np.median(values)) for name, values in samples.items()}


# ----------------------------------------------------------------------------------------------- MindSpore cells
def _mindspore_layers(in_features: int, out_features: int, nblocks: int, pixelfly: bool = True):
    from mindspore import nn

    from mindcv_ext.layers import PIXELFLY_DEFAULTS, MonarchLinear, SparseLRLinear

    cells = {"dense": nn.Dense(in_features, out_features), "monarch": MonarchLinear(in_features, out_features, nblocks)}
    if pixelfly:
        cells["pixelfly"] = SparseLRLinear(in_features, out_features, **PIXELFLY_DEFAULTS)
    return cells


def _mindspore_mlps(in_features: int, hidden: int, nblocks: int, pixelfly: bool = True):
    from mindcv_ext.layers import Mlp

    cells = {"dense": Mlp(in_features, hidden, mlp_layer="dense"),
             "monarch": Mlp(in_features, hidden, mlp_layer="monarch", nblocks=nblocks)}
    if pixelfly:
        cells["pixelfly"] = Mlp(in_features, hidden, mlp_layer="pixelfly")
    return cells


def _pixelfly_fits(*features: int) -> bool:
    """Whether SparseLRLinear with PIXELFLY_DEFAULTS can be built between these widths (each pair of them)."""
    from mindcv_ext.layers import PIXELFLY_DEFAULTS, SparseLRLinear

    try:
        for in_f, out_f in zip(features, features[1:]):
            SparseLRLinear(in_f, out_f, **PIXELFLY_DEFAULTS)
    except ValueError as exc:
        print(f"note: no Pixelfly rows for {'->'.join(map(str, features))}: {exc}", file=sys.stderr)
        return False
    return True


def _accelerated(cells, kernels: str):
    """The accelerated twins of plain cells (new cells holding the same parameters; the plain ones stay plain)."""
    if kernels == "off":
        return cells
    from mindspore import nn

    from mindcv_ext.accel import accelerate

    # accelerate swaps in place: a fresh container per cell keeps the plain cell itself untouched.
    return {name: accelerate(nn.SequentialCell([cell]), kernels)[0] for name, cell in cells.items()}


def _mindspore_calls(cells, tokens: int, in_features: int) -> Dict[str, Dict[str, Callable]]:
    import mindspore as ms
    from mindspore import nn, ops

    class Backward(nn.Cell):
        def __init__(self, net):
            super().__init__()
            self.net = net
            self.weights = ms.ParameterTuple(net.trainable_params())
            self.grad = ops.GradOperation(get_all=True, get_by_list=True)

        def construct(self, x):
            return self.grad(self.net, self.weights)(x)

    x = ms.Tensor(np.random.default_rng(0).standard_normal((tokens, in_features)).astype(np.float32))
    calls = {"fwd": {}, "fwd+bwd": {}}
    for name, cell in cells.items():
        backward = Backward(cell)
        calls["fwd"][name] = lambda cell=cell: _sync(cell(x))
        calls["fwd+bwd"][name] = lambda backward=backward: _sync(backward(x))
    return calls


# ----------------------------------------------------------------------------------------------- PyTorch cells
def _torch_modules(in_features: int, out_features: int, nblocks: int, mlp_hidden: Optional[int] = None,
                   pixelfly: bool = True):
    """torch.nn.Linear, a PyTorch Monarch layer with the same formula and layout as mindcv_ext's, and a PyTorch
    Pixelfly layer as fly's SparseLRLinear runs with its dense backend (the weight densified, then F.linear)."""
    import torch

    from mindcv_ext.layers import PIXELFLY_DEFAULTS, flat_block_butterfly_layout

    class TorchMonarch(torch.nn.Module):
        def __init__(self, in_f, out_f, nb):
            super().__init__()
            in_blk, out_blk = math.ceil(in_f / nb), math.ceil(out_f / nb)
            self.in_features, self.out_features = in_f, out_f
            if in_blk < out_blk:
                shape1, shape2 = (nb, in_blk, in_blk), (nb, out_blk, in_blk)
            else:
                shape1, shape2 = (nb, out_blk, in_blk), (nb, out_blk, out_blk)
            self.blkdiag1 = torch.nn.Parameter(torch.randn(*shape1) / math.sqrt(shape1[-1]))
            self.blkdiag2 = torch.nn.Parameter(torch.randn(*shape2) / math.sqrt(shape2[-1]))
            self.bias = torch.nn.Parameter(torch.zeros(out_f))

        def forward(self, x):
            k, q, p = self.blkdiag1.shape
            l, s, r = self.blkdiag2.shape
            batch = x.shape[0]
            x = torch.nn.functional.pad(x, (0, k * p - x.shape[-1]))
            h = torch.bmm(x.reshape(batch, k, p).transpose(0, 1), self.blkdiag1.transpose(-1, -2))
            h = h.transpose(0, 1).reshape(batch, r, l).permute(2, 0, 1)
            y = torch.bmm(h, self.blkdiag2.transpose(-1, -2))
            return y.permute(1, 2, 0).reshape(batch, s * l)[:, :self.out_features] + self.bias

    class TorchPixelfly(torch.nn.Module):
        """y = lerp(sparse(x), low_rank(x), sigmoid(gate(x))) + bias, the sparse part on the block-padded input."""

        def __init__(self, in_f, out_f):
            super().__init__()
            settings = PIXELFLY_DEFAULTS
            b, rank = settings["block"], settings["rank"]
            self.in_features, self.out_features = in_f, out_f
            self.in_ext, self.out_ext = math.ceil(in_f / b) * b, math.ceil(out_f / b) * b
            layout = flat_block_butterfly_layout(self.out_ext, self.in_ext, settings["butterfly_size"],
                                                 settings["n_factors"], b, settings["global_size"],
                                                 settings["shuffle"])
            self.register_buffer("layout", torch.from_numpy(layout))
            self.weight = torch.nn.Parameter(torch.randn(int(layout.sum()), b, b) / math.sqrt(in_f))
            self.lr_weight1 = torch.nn.Parameter(torch.randn(rank, in_f) / math.sqrt(in_f))
            self.lr_weight2 = torch.nn.Parameter(torch.randn(out_f, rank) / math.sqrt(rank))
            self.gate = torch.nn.Linear(in_f, 1) if settings["gating"] else None
            self.bias = torch.nn.Parameter(torch.zeros(out_f))

        def dense_weight(self):  # fly's densify: scatter the blocks into a zero (out_ext, in_ext) matrix
            rows, cols = self.layout.shape
            b = self.weight.shape[-1]
            blocks = self.weight.new_zeros(rows * cols, b, b)
            blocks = blocks.index_copy(0, torch.nonzero(self.layout.reshape(-1)).squeeze(1), self.weight)
            return blocks.reshape(rows, cols, b, b).transpose(1, 2).reshape(rows * b, cols * b)

        def forward(self, x):
            padded = torch.nn.functional.pad(x, (0, self.in_ext - self.in_features))
            sparse = torch.nn.functional.linear(padded, self.dense_weight())[..., :self.out_features]
            low_rank = torch.nn.functional.linear(torch.nn.functional.linear(x, self.lr_weight1), self.lr_weight2)
            gate = torch.sigmoid(self.gate(x)) if self.gate is not None else 0.5
            return torch.lerp(sparse, low_rank, gate) + self.bias

    if mlp_hidden is None:
        modules = {"dense": torch.nn.Linear(in_features, out_features),
                   "monarch": TorchMonarch(in_features, out_features, nblocks)}
        if pixelfly:
            modules["pixelfly"] = TorchPixelfly(in_features, out_features)
        return modules
    modules = {"dense": torch.nn.Sequential(torch.nn.Linear(in_features, mlp_hidden), torch.nn.GELU(),
                                            torch.nn.Linear(mlp_hidden, in_features)),
               "monarch": torch.nn.Sequential(TorchMonarch(in_features, mlp_hidden, nblocks), torch.nn.GELU(),
                                              TorchMonarch(mlp_hidden, in_features, nblocks))}
    if pixelfly:
        modules["pixelfly"] = torch.nn.Sequential(TorchPixelfly(in_features, mlp_hidden), torch.nn.GELU(),
                                                  TorchPixelfly(mlp_hidden, in_features))
    return modules


def _torch_calls(modules, tokens: int, in_features: int) -> Dict[str, Dict[str, Callable]]:
    import torch

    x = torch.from_numpy(np.random.default_rng(0).standard_normal((tokens, in_features)).astype(np.float32))
    calls = {"fwd": {}, "fwd+bwd": {}}
    for name, module in modules.items():
        def forward(module=module):
            with torch.no_grad():
                module(x)

        def forward_backward(module=module):
            inputs = x.clone().requires_grad_(True)
            module.zero_grad(set_to_none=True)
            module(inputs).sum().backward()

        calls["fwd"][name], calls["fwd+bwd"][name] = forward, forward_backward
    return calls


# ----------------------------------------------------------------------------------------------- suites
def pixelfly_macs(in_f: int, out_f: int, butterfly_size: int = 8, n_factors: int = 2, block: int = 32, rank=32,
                  gating: bool = True, global_size: int = 0, shuffle: bool = False) -> int:
    """Multiply-accumulates per token of SparseLRLinear: the layout's nonzero blocks (on the block-padded sizes),
    the two low-rank factors and the gate (a Linear(in, 1)); the gate's mixing and the bias are not MACs."""
    from mindcv_ext.layers import flat_block_butterfly_layout

    if isinstance(rank, float):
        rank = int(rank * min(in_f, out_f))
    in_ext, out_ext = math.ceil(in_f / block) * block, math.ceil(out_f / block) * block
    layout = flat_block_butterfly_layout(out_ext, in_ext, butterfly_size, n_factors, block, global_size, shuffle)
    return int(layout.sum()) * block * block + rank * (in_f + out_f) + (in_f if gating else 0)


def _flops(kind: str, impl: str, in_f: int, out_f: int, nblocks: int, tokens: int, hidden: Optional[int]) -> float:
    from mindcv_ext.layers import PIXELFLY_DEFAULTS, monarch_factor_shapes

    def linear_macs(i, o):
        if impl == "dense":
            return i * o
        if impl == "pixelfly":
            return pixelfly_macs(i, o, **PIXELFLY_DEFAULTS)
        shape1, shape2 = monarch_factor_shapes(i, o, nblocks)
        return math.prod(shape1) + math.prod(shape2)

    macs = linear_macs(in_f, out_f) if kind == "layer" else linear_macs(in_f, hidden) + linear_macs(hidden, in_f)
    return 2.0 * tokens * macs


def _compare(kind, in_f, out_f, nblocks, tokens, args, hidden=None, pixelfly=True) -> List[dict]:
    pixelfly = pixelfly and _pixelfly_fits(*((in_f, hidden, in_f) if kind == "mlp" else (in_f, out_f)))
    cells = _mindspore_mlps(in_f, hidden, nblocks, pixelfly) if kind == "mlp" else \
        _mindspore_layers(in_f, out_f, nblocks, pixelfly)
    frameworks = {"mindspore": _mindspore_calls(_accelerated(cells, args.cpu_kernels), tokens, in_f)}
    if args.with_plain:
        frameworks["mindspore-plain"] = _mindspore_calls(cells, tokens, in_f)
    if args.compare_torch:
        frameworks["torch"] = _torch_calls(_torch_modules(in_f, out_f, nblocks, hidden, pixelfly), tokens, in_f)
    rows = []
    for pass_name in ("fwd", "fwd+bwd"):
        calls = {(fw, impl): call for fw, by_pass in frameworks.items() for impl, call in by_pass[pass_name].items()}
        times = time_alternating({f"{fw}/{impl}": c for (fw, impl), c in calls.items()}, args.repeats, args.warmup)
        for (fw, impl) in calls:
            ms_time = times[f"{fw}/{impl}"]
            flops = _flops(kind, impl, in_f, out_f, nblocks, tokens, hidden) * (3.0 if pass_name == "fwd+bwd" else 1.0)
            rows.append({"kind": kind, "framework": fw, "impl": impl, "in_features": in_f,
                         "out_features": out_f if kind == "layer" else in_f,
                         "nblocks": "" if impl == "pixelfly" else nblocks, "tokens": tokens,
                         "pass": pass_name, "ms": round(ms_time, 2), "gflop": round(flops / 1e9, 6),
                         "gflops_per_s": float(f"{flops / 1e6 / ms_time:.3g}"),  # 3 digits: tiny layers run at < 0.1
                         "speedup_vs_dense": round(times[f"{fw}/dense"] / ms_time, 2)})
    return rows


def layer_grid(grid: str):
    if grid == "full":
        sizes = [256, 512, 1024, 2048, 4096]
        return [(i, o, nb, t) for i in sizes for o in sizes for nb in (2, 4, 8, 16) for t in (196, 784, 1568, 3136)]
    cases = [(i, o, 4, 1568) for i, o in ((256, 1024), (512, 2048), (768, 3072), (1024, 4096), (3072, 768),
                                           (2048, 2048), (4096, 1024))]
    cases += [(768, 3072, nb, 1568) for nb in (2, 8, 16)]
    cases += [(768, 3072, 4, t) for t in (196, 784, 3136)]
    return cases


def run_layers(args, progress) -> List[dict]:
    rows, pixelfly_done = [], set()
    for in_f, out_f, nblocks, tokens in progress(layer_grid(args.grid), desc="layers"):
        # Pixelfly has no nblocks: time it once per (in, out, tokens).
        pixelfly = (in_f, out_f, tokens) not in pixelfly_done
        pixelfly_done.add((in_f, out_f, tokens))
        rows += _compare("layer", in_f, out_f, nblocks, tokens, args, pixelfly=pixelfly)
    return rows


def run_mlp(args) -> List[dict]:
    return _compare("mlp", args.mlp_dim, None, args.mlp_nblocks, args.mlp_tokens, args, hidden=args.mlp_hidden)


def count_macs(net, image_size: int, in_channels: int = 3) -> int:
    """Multiply-accumulates of one image through a vision model: its linear, Monarch, Pixelfly, patch, convolution
    and gMLP token-projection layers, counted by forward hooks on the plain network (the accelerated MLPs use
    fc1/fc2's weights without calling them). Leaves the network in eval mode."""
    import mindspore as ms
    from mindspore import nn

    from mindcv_ext.layers import MonarchLinear, Mlp, PatchEmbed, SparseLRLinear
    from mindcv_ext.models.gmlp import SpatialGatingUnit

    macs = [0]

    def count(cell, inputs, output):
        tokens = math.prod(inputs[0].shape[:-1])
        if isinstance(cell, nn.Dense):  # also Pixelfly's gate, Linear(in, 1)
            macs[0] += tokens * cell.in_channels * cell.out_channels
        elif isinstance(cell, MonarchLinear):
            macs[0] += tokens * (cell.blkdiag1.size + cell.blkdiag2.size)
        elif isinstance(cell, SparseLRLinear):  # the layout's blocks and the two low-rank factors
            macs[0] += tokens * (cell.sparse.weight.size + cell.low_rank.lr_weight1.size +
                                 cell.low_rank.lr_weight2.size)
        elif isinstance(cell, PatchEmbed):
            macs[0] += math.prod(output.shape[:-1]) * cell.proj.weight.size
        elif isinstance(cell, nn.Conv2d):
            macs[0] += output.size * cell.weight.size // cell.weight.shape[0]
        elif isinstance(cell, SpatialGatingUnit):  # gMLP's token projection (T, T) on half of x (N, T, 2C)
            macs[0] += inputs[0].size // 2 * cell.proj.in_channels

    kinds = (nn.Dense, MonarchLinear, SparseLRLinear, PatchEmbed, nn.Conv2d, SpatialGatingUnit)
    handles = [cell.register_forward_hook(count) for _, cell in net.cells_and_names() if isinstance(cell, kinds)]
    # Pixelfly MLPs that pass tiles between fc1 and fc2 call neither as a cell: count them in token order.
    tiled = [cell for _, cell in net.cells_and_names() if isinstance(cell, Mlp) and cell.hidden_as_tiles]
    mode = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)  # hooks run in PyNative only
    try:
        for cell in tiled:
            cell.hidden_as_tiles = False
        net.set_train(False)
        net(ms.Tensor(np.zeros((1, in_channels, image_size, image_size), np.float32)))
    finally:
        for cell in tiled:
            cell.hidden_as_tiles = True
        for handle in handles:
            handle.remove()
        ms.set_context(mode=mode)
    return macs[0]


def _model_worker(args) -> dict:
    """Measures one model in this process (started by run_models)."""
    import mindspore as ms
    from mindspore import nn

    import mindcv_ext
    from mindcv_ext.engine import NetWithLoss, TrainStep
    from mindcv_ext.accel import accelerate
    from mindcv_ext.models import count_params

    ms.set_context(mode=ms.PYNATIVE_MODE)
    name, batch, size = args._worker_model, args.batch_size, args.img_size
    extra = dict(args.model_kwargs)
    if args._worker_mlp_layer:
        extra["mlp_layer"] = args._worker_mlp_layer
    net = mindcv_ext.create_model(name, img_size=size, **extra)
    macs = [count_macs(net, size)]
    if args._worker_path == "accel":
        net = accelerate(net, args.cpu_kernels)

    ms.set_context(mode=ms.GRAPH_MODE)
    images = ms.Tensor(np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32))
    labels = ms.Tensor(np.arange(batch) % 1000, ms.int32)
    step = TrainStep(NetWithLoss(net, nn.CrossEntropyLoss()), nn.AdamWeightDecay(net.trainable_params(), 1e-4))
    step.set_train()
    train = time_samples(lambda: _sync(step(images, labels)[0]), args.model_repeats, args.model_warmup)
    net.set_train(False)
    infer = time_samples(lambda: _sync(net(images)), args.model_repeats, args.model_warmup)
    peak = _peak_rss_mb()  # this process's own high-water mark (ru_maxrss would start from the parent's at exec)
    return {"model": name, "path": args._worker_path, "params": count_params(net), "macs_g": round(macs[0] / 1e9, 3), "batch_size": batch,
            "img_size": size, "train_samples_ms": train, "infer_samples_ms": infer, "peak_rss_mb": round(peak)}


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


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak_rss() -> bool:
    """Restart the kernel's resident-memory high-water mark from the current size (Linux clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as stream:
            stream.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as stream:
        for line in stream:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _attention_worker(args) -> dict:
    """Forward time and peak memory of one attention core at one length (started by run_attention)."""
    import mindspore as ms

    from mindcv_ext.layers import create_attention

    kind, tokens = args._worker_attention.split(":")
    tokens, heads, dim = int(tokens), args.attn_batch_heads, 64
    core = create_attention(kind, dim, dim ** -0.5, **ATTENTION_SETTINGS[kind])
    core.set_train(False)
    # Peak resident memory above what the process held before the inputs existed: inputs, compilation and the
    # forward's working memory.
    # The import's transient peak varies from run to run; without the reset it would hide in every figure.
    _reset_peak_rss()
    base = _current_rss_mb()
    rng = np.random.default_rng(0)
    q, k, v = (ms.Tensor(rng.standard_normal((heads, tokens, dim), dtype=np.float32)) for _ in range(3))
    fwd = time_alternating({"fwd": lambda: _sync(core(q, k, v))}, args.repeats, 1)["fwd"]
    peak = _peak_rss_mb()
    return {"attention": kind, "settings": json.dumps(ATTENTION_SETTINGS[kind]), "batch_heads": heads,
            "tokens": tokens, "head_dim": dim, "fwd_ms": round(fwd, 2), "peak_extra_mb": round(max(peak - base, 0.0), 1)}


def run_attention(args, progress) -> List[dict]:
    """Each attention core at each length, every case in a fresh process so peak memory is its own.

    ``working_mb`` is the peak above the same core's at ``--attn_baseline_tokens`` (compilation and runtime
    buffers, the same at every length); its growth from one length to the next is ~ the length ratio when memory
    is linear in the length and ~ its square when an N x N matrix is materialised.
    """
    def measure(kind, tokens):
        command = [sys.executable, os.path.abspath(__file__), "--_worker_attention", f"{kind}:{tokens}",
                   "--attn_batch_heads", str(args.attn_batch_heads), "--repeats", str(args.repeats),
                   "--device_target", args.device_target]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"benchmark worker for {kind} attention at {tokens} tokens failed:\n"
                               f"{result.stderr[-3000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])

    rows = []
    cases = [(kind, tokens) for kind in args.attentions for tokens in [None] + sorted(args.attn_lengths)
             if tokens is None or not (kind == "full" and args.full_max_tokens and tokens > args.full_max_tokens)]
    baseline = {}
    for kind, tokens in progress(cases, desc="attention"):
        if tokens is None:
            baseline[kind] = measure(kind, args.attn_baseline_tokens)["peak_extra_mb"]
            continue
        row = measure(kind, tokens)
        row["working_mb"] = round(max(row["peak_extra_mb"] - baseline[kind], 0.0), 1)
        previous = next((r for r in reversed(rows) if r["attention"] == kind), None)
        row["working_mb_growth"] = round(row["working_mb"] / previous["working_mb"], 2) \
            if previous and previous["working_mb"] > 0 else ""
        rows.append(row)
    return rows


def model_variants(base: str, registered, pixelfly_models: List[str]) -> List[tuple]:
    """(variant, label, registered name, mlp_layer) of a model: dense, its ``_monarch`` twin when registered, and
    Pixelfly channel MLPs (label ``<base>_pixelfly``) when it matches ``pixelfly_models``."""
    variants = [("dense", base, base, None)]
    if base + "_monarch" in registered:
        variants.append(("monarch", base + "_monarch", base + "_monarch", None))
    if any(fnmatch.fnmatch(base, pattern) for pattern in pixelfly_models):
        variants.append(("pixelfly", base + "_pixelfly", base, "pixelfly"))
    return variants


def run_models(args, progress) -> List[dict]:
    import mindcv_ext

    registered = set(mindcv_ext.list_ext_models())
    bases = sorted(n for n in registered if not n.endswith("_monarch"))
    if args.models:
        bases = [b for b in bases if any(fnmatch.fnmatch(label, pattern) for pattern in args.models
                                         for _, label, _, _ in model_variants(b, registered, args.pixelfly_models))]
    if not bases:
        raise ValueError(f"no registered model matches --models {args.models}")
    paths = ["accel"] + (["plain"] if args.with_plain else [])
    # Peak memory per image: the slope of peak RSS over --memory_batch_sizes (each in a fresh worker, a few steps).
    memory_batches = sorted(set(args.memory_batch_sizes) - {args.batch_size})
    rows = []

    def measure(name, mlp_layer, path, batch, repeats, warmup, label):
        command = [sys.executable, os.path.abspath(__file__), "--_worker_model", name, "--batch_size", str(batch),
                   "--img_size", str(args.img_size), "--model_repeats", str(repeats), "--model_warmup", str(warmup),
                   "--device_target", args.device_target, "--model_kwargs", json.dumps(args.model_kwargs),
                   "--cpu_kernels", args.cpu_kernels, "--_worker_path", path]
        if mlp_layer:
            command += ["--_worker_mlp_layer", mlp_layer]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"benchmark worker for {label} ({path}, batch {batch}) failed:\n{result.stderr[-3000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])

    for base in progress(bases, desc="models"):
        variants = model_variants(base, registered, args.pixelfly_models)
        results = {(variant, path): [] for variant, _, _, _ in variants for path in paths}
        # Each variant in a fresh process (peak memory is per process); rounds alternate the variants, so a machine
        # that drifts over the minutes a model takes affects dense and Monarch alike.
        for _ in range(args.model_rounds):
            for path in paths:
                for variant, label, name, mlp_layer in variants:
                    results[variant, path].append(measure(name, mlp_layer, path, args.batch_size, args.model_repeats,
                                                          args.model_warmup, label))
        peaks = {(variant, path): {} for variant, _, _, _ in variants for path in paths}
        for batch in memory_batches:
            for path in paths:
                for variant, label, name, mlp_layer in variants:
                    peaks[variant, path][batch] = measure(name, mlp_layer, path, batch, 2, 1, label)["peak_rss_mb"]
        for path in paths:
            measured = {variant: dict(summarize_model(results[variant, path]), model=label, variant=variant)
                        for variant, label, _, _ in variants}
            for variant, row in measured.items():
                row["train_speedup_vs_dense"] = round(measured["dense"]["train_step_ms"] / row["train_step_ms"], 2)
                row["infer_speedup_vs_dense"] = round(measured["dense"]["infer_ms"] / row["infer_ms"], 2)
                if memory_batches:
                    by_batch = {**peaks[variant, path], args.batch_size: row["peak_rss_mb"]}
                    row["rss_mb_per_image"] = round(memory_slope(by_batch), 1)
            for row in measured.values():
                if memory_batches:
                    row["rss_per_image_vs_dense"] = round(row["rss_mb_per_image"] /
                                                          measured["dense"]["rss_mb_per_image"], 2)
                rows.append(row)
    return rows


def memory_slope(peak_by_batch: Dict[int, float]) -> float:
    """MB per extra image: the least-squares slope of peak RSS against the batch size."""
    batches = np.array(sorted(peak_by_batch), np.float64)
    peaks = np.array([peak_by_batch[b] for b in sorted(peak_by_batch)], np.float64)
    return float(np.polyfit(batches, peaks, 1)[0])


# ----------------------------------------------------------------------------------------------- output
def write_csv(path: str, fields: List[str], rows: List[dict]) -> None:
    """Rows under ``fields``, written to a temporary file and renamed onto ``path``."""
    from mindcv_ext.engine.files import atomic_write

    with atomic_write(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def markdown_table(rows: List[dict], fields: List[str]) -> str:
    lines = ["| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
    lines += ["| " + " | ".join(str(r.get(f, "")) for f in fields) + " |" for r in rows]
    return "\n".join(lines)


def _monarch_versus_torch(rows: List[dict]) -> Dict[str, List[Tuple[str, float]]]:
    """Per pass, (case label, PyTorch Monarch ms / MindSpore Monarch ms) for every layer case timed in both."""
    def key(r):
        return r["in_features"], r["out_features"], r["nblocks"], r["tokens"], r["pass"]

    torch_ms = {key(r): r["ms"] for r in rows if r["kind"] == "layer" and r["impl"] == "monarch"
                and r["framework"] == "torch"}
    ratios: Dict[str, List[Tuple[str, float]]] = {}
    for r in rows:
        if r["kind"] == "layer" and r["impl"] == "monarch" and r["framework"] == "mindspore" and key(r) in torch_ms:
            label = f"{r['in_features']}->{r['out_features']} nb{r['nblocks']} t{r['tokens']}"
            ratios.setdefault(r["pass"], []).append((label, torch_ms[key(r)] / r["ms"]))
    return ratios


def _plot_versus_torch(axis, ratios: Dict[str, List[Tuple[str, float]]]) -> None:
    width = 0.4
    for offset, (pass_name, points) in enumerate(sorted(ratios.items())):
        positions = [i + (offset - 0.5) * width for i in range(len(points))]
        axis.bar(positions, [v for _, v in points], width=width, label=pass_name)
    labels = [label for label, _ in next(iter(ratios.values()))]
    axis.set_xticks(range(len(labels)), labels, rotation=70, fontsize=7)
    axis.axhline(1.0, color="grey", lw=0.8)
    axis.set(title="MindSpore Monarch against PyTorch Monarch", ylabel="PyTorch ms / MindSpore ms (>1: MS faster)")
    axis.grid(alpha=0.3, axis="y")
    axis.legend(fontsize=8)


def plot_layers(rows: List[dict], path: str) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    structured = [r for r in rows if r["impl"] != "dense" and r["kind"] == "layer"]
    sweeps = [("size (in->out), nblocks 4, 1568 tokens", lambda r: r["nblocks"] == 4 and r["tokens"] == 1568,
               lambda r: f"{r['in_features']}->{r['out_features']}"),
              ("nblocks, 768->3072, 1568 tokens", lambda r: (r["in_features"], r["out_features"], r["tokens"]) ==
               (768, 3072, 1568), lambda r: str(r["nblocks"])),
              ("tokens, 768->3072, nblocks 4", lambda r: (r["in_features"], r["out_features"], r["nblocks"]) ==
               (768, 3072, 4), lambda r: str(r["tokens"]))]
    versus_torch = _monarch_versus_torch(rows)
    figure, axes = plt.subplots(1, 4 if versus_torch else 3, figsize=(21 if versus_torch else 16, 4.5))
    if versus_torch:
        _plot_versus_torch(axes[3], versus_torch)
    for axis, (title, keep, label) in zip(axes, sweeps):
        series = {}
        for r in structured:
            if r["impl"] == "pixelfly":  # no nblocks: in the size and token sweeps only, wherever it was timed
                if title.startswith("nblocks") or not keep(dict(r, nblocks=4)):
                    continue
            elif not keep(r):
                continue
            series.setdefault((r["impl"], r["framework"], r["pass"]), []).append((label(r), r["speedup_vs_dense"]))
        for (impl, framework, pass_name), points in sorted(series.items()):
            labels = list(dict.fromkeys(p[0] for p in points))
            if all(x.isdigit() for x in labels):  # nblocks, tokens: in numeric order, not the sweep's
                labels.sort(key=int)
            values = [dict(points)[x] for x in labels]
            axis.plot(labels, values, marker="o" if impl == "monarch" else "s",
                      linestyle="-" if impl == "monarch" else "--", label=f"{impl} {framework} {pass_name}")
        axis.axhline(1.0, color="grey", lw=0.8)
        axis.set(title=title, ylabel="speed-up over dense (x)")
        axis.tick_params(axis="x", rotation=30)
        axis.grid(alpha=0.3)
        if series:
            axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_models(rows: List[dict], path: str) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in rows if r.get("path", "accel") == "accel"]  # the plain path's steps are in the table

    def base(row):
        return row["model"][:-len(row["variant"]) - 1] if row["variant"] != "dense" else row["model"]

    models = list(dict.fromkeys(base(r) for r in rows))
    variants = [v for v in ("dense", "monarch", "pixelfly") if any(r["variant"] == v for r in rows)]
    figure, axis = plt.subplots(figsize=(max(6, 1.1 * len(models)), 4.5))
    width = 0.8 / len(variants)
    for index, variant in enumerate(variants):
        step = {base(r): r["train_step_ms"] for r in rows if r["variant"] == variant}
        positions = [i for i, m in enumerate(models) if m in step]
        axis.bar([i + (index - (len(variants) - 1) / 2) * width for i in positions],
                 [step[models[i]] for i in positions], width, label=variant)
    axis.set_xticks(range(len(models)))
    axis.set_xticklabels(models, rotation=30, ha="right")
    axis.set(ylabel="training step (ms)", title=f"training step, batch {rows[0]['batch_size']}, {rows[0]['img_size']} px")
    axis.legend()
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     epilog="Example: python scripts/benchmark.py --suite all --compare-torch --out bench")
    parser.add_argument("--suite", nargs="+", choices=["mlp", "layers", "models", "attention", "gpt2", "all"],
                        default=["mlp"], help="what to measure (several in one run: e.g. --suite mlp models); all "
                                              "leaves out gpt2, which is long at fly's sizes")
    parser.add_argument("--device_target", choices=["CPU", "GPU", "Ascend", "auto"], default="auto",
                        help="backend; auto uses the installed MindSpore's")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per layer/MLP case (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first (compilation, caches)")
    parser.add_argument("--compare-torch", dest="compare_torch", action="store_true",
                        help="also time torch.nn.Linear and PyTorch Monarch and Pixelfly layers (needs torch)")
    parser.add_argument("--grid", choices=["sweep", "full"], default="sweep",
                        help="layer cases: one-dimensional sweeps around 768->3072, or the full product")
    parser.add_argument("--mlp_dim", type=int, default=768, help="MLP width")
    parser.add_argument("--mlp_hidden", type=int, default=3072, help="MLP hidden width")
    parser.add_argument("--mlp_tokens", type=int, default=1568, help="tokens (rows) per MLP call")
    parser.add_argument("--mlp_nblocks", type=int, default=4, help="Monarch blocks")
    parser.add_argument("--models", nargs="*", default=[],
                        help="fnmatch patterns of models, e.g. 'mixer_b16_224*' (default: all)")
    parser.add_argument("--pixelfly_models", nargs="*", default=PIXELFLY_MODELS,
                        help="models also measured with Pixelfly channel MLPs, as <model>_pixelfly (MLP-Mixer only)")
    parser.add_argument("--batch_size", type=int, default=8, help="model batch size")
    parser.add_argument("--img_size", type=int, default=224, help="model input size")
    parser.add_argument("--memory_batch_sizes", type=int, nargs="*", default=[],
                        help="models: also run these batch sizes (a few steps each) and report peak RSS per image, the "
                             "slope over them and --batch_size, e.g. 2 4 (with --batch_size 8)")
    parser.add_argument("--model_repeats", type=int, default=10, help="timed steps per model and round")
    parser.add_argument("--model_warmup", type=int, default=5,
                        help="untimed steps first: compilation, and the first few steps run up to 40%% slower")
    parser.add_argument("--model_rounds", type=int, default=1,
                        help="worker processes per model, alternating dense and Monarch (median over all steps); "
                             "also the gpt2 suite's workers per variant")
    parser.add_argument("--model_kwargs", type=_mapping, default={},
                        help="extra entrypoint arguments for every model, e.g. '{num_blocks: 4}' for shallower "
                             "Mixers and gMLPs")
    parser.add_argument("--attentions", nargs="*", default=list(ATTENTION_SETTINGS),
                        choices=list(ATTENTION_SETTINGS), help="attention cores for the attention suite")
    parser.add_argument("--attn_lengths", type=int, nargs="*", default=[1568, 3136, 6272],
                        help="sequence lengths for the attention suite")
    parser.add_argument("--attn_batch_heads", type=int, default=16, help="batch x heads for the attention suite")
    parser.add_argument("--attn_baseline_tokens", type=int, default=64,
                        help="length whose peak memory is subtracted as the fixed cost (compilation, runtime)")
    parser.add_argument("--full_max_tokens", type=int, default=3136,
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
    parser.add_argument("--cpu_kernels", choices=["auto", "on", "off"], default="auto",
                        help="the accelerator (mindcv_ext.accel) on the CPU: auto where it can serve, on to insist, "
                             "off to time the plain network only")
    parser.add_argument("--with_plain", action="store_true",
                        help="also time the plain network (the operators GPU and Ascend run) in the same run")
    parser.add_argument("--out", type=str, default="", help="directory for CSV, JSON and PNG results")
    parser.add_argument("--_worker_model", default="", help=argparse.SUPPRESS)
    parser.add_argument("--_worker_mlp_layer", default="", help=argparse.SUPPRESS)
    parser.add_argument("--_worker_path", default="accel", choices=["accel", "plain", "device"], help=argparse.SUPPRESS)
    parser.add_argument("--_worker_attention", default="", help=argparse.SUPPRESS)
    parser.add_argument("--_worker_gpt2", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.repeats, args.model_repeats, args.model_rounds, args.iterations, *args.batch_sizes, args.seq_len) < 1 \
            or min(args.warmup, args.model_warmup, args.gpt2_warmup) < 0:
        parser.error("--repeats, --model_repeats, --model_rounds, --iterations, --batch_sizes and --seq_len must be "
                     ">= 1; --warmup, --model_warmup and --gpt2_warmup >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    # Spinning OpenMP workers would steal the cores from the other thread pools between calls (PyTorch's with
    # --compare-torch, the CPU kernels' own). libgomp reads the policy when it loads, and MindSpore loads its own on
    # import: set it first (measured: with MindSpore's libgomp left spinning, its Monarch layer ran 10-50% slower
    # beside PyTorch). The model workers inherit it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE)
    if args.device_target != "auto":
        ms.set_device(args.device_target)
    if args._worker_model:
        print(json.dumps(_model_worker(args)))
        return 0
    if args._worker_attention:
        print(json.dumps(_attention_worker(args)))
        return 0
    if args._worker_gpt2:
        from scripts.benchmark_gpt2 import gpt2_worker

        print(json.dumps(gpt2_worker(args, _sync)))
        return 0
    if args.compare_torch:
        try:
            import torch

            torch.set_num_threads(os.cpu_count() or 1)
        except ImportError:
            print("error: --compare-torch needs PyTorch (pip install torch); mindcv_ext itself does not",
                  file=sys.stderr)
            return 2
    from tqdm import tqdm

    def progress(items, desc):
        return tqdm(items, desc=desc, unit="case", file=sys.stderr)

    machine = describe_machine(ms.get_context("device_target"))
    print("machine: " + json.dumps(machine))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "machine.json"), "w") as stream:
            json.dump(machine, stream, indent=1)
    shown = ["framework", "impl", "in_features", "out_features", "nblocks", "tokens", "pass", "ms", "gflops_per_s",
             "speedup_vs_dense"]
    if {"mlp", "all"} & set(args.suite):
        rows = run_mlp(args)
        print(f"\n### MLP {args.mlp_dim}->{args.mlp_hidden}->{args.mlp_dim}, {args.mlp_tokens} tokens, fp32, graph "
              f"mode (medians of {args.repeats})\n" + markdown_table(rows, shown))
        if args.out:
            write_csv(os.path.join(args.out, "mlp.csv"), LAYER_FIELDS, rows)
    if {"layers", "all"} & set(args.suite):
        rows = run_layers(args, progress)
        print(f"\n### Linear layers, fp32, graph mode (medians of {args.repeats})\n" + markdown_table(rows, shown))
        if args.out:
            write_csv(os.path.join(args.out, "layers.csv"), LAYER_FIELDS, rows)
            plot_layers(rows, os.path.join(args.out, "layers.png"))
    if {"models", "all"} & set(args.suite):
        rows = run_models(args, progress)
        print(f"\n### Models, batch {args.batch_size}, {args.img_size} px, fp32, graph mode (medians of "
              f"{args.model_rounds} x {args.model_repeats} steps, each after {args.model_warmup} untimed)\n"
              + markdown_table(rows, MODEL_FIELDS))
        if args.out:
            write_csv(os.path.join(args.out, "models.csv"), MODEL_FIELDS, rows)
            plot_models(rows, os.path.join(args.out, "models.png"))
    if {"attention", "all"} & set(args.suite):
        rows = run_attention(args, progress)
        print(f"\n### Attention cores, forward, fp32, graph mode (medians of {args.repeats}; peak memory above the "
              f"process's before the inputs)\n" + markdown_table(rows, ATTENTION_FIELDS))
        if args.out:
            write_csv(os.path.join(args.out, "attention.csv"), ATTENTION_FIELDS, rows)
    if "gpt2" in args.suite:
        from scripts.benchmark_gpt2 import LAYER_FIELDS as GPT2_LAYER_FIELDS, MODEL_FIELDS as GPT2_FIELDS, \
            plot_gpt2, run_gpt2

        layer_rows, model_rows = run_gpt2(args, progress, _sync, os.path.abspath(__file__))
        print(f"\n### {args.gpt2_size} MLP layers, forward, {layer_rows[0]['tokens']} tokens (medians of "
              f"{args.iterations})\n" + markdown_table(layer_rows, GPT2_LAYER_FIELDS))
        print(f"\n### {args.gpt2_size} forward, sequence {args.seq_len}, eval mode ({args.gpt2_warmup} untimed, then "
              f"the mean of {args.iterations})\n" + markdown_table(model_rows, GPT2_FIELDS[4:]))
        if args.out:
            write_csv(os.path.join(args.out, "gpt2.csv"), GPT2_FIELDS, model_rows)
            write_csv(os.path.join(args.out, "gpt2_layers.csv"), GPT2_LAYER_FIELDS, layer_rows)
            plot_gpt2(model_rows, os.path.join(args.out, "gpt2.png"))
    if args.out:
        print(f"\nwrote {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
