"""The layer and MLP suites: every registered linear layer against dense, as layers and as MLPs.

Each case builds the layers by name from the registry (``registered_linears()``, their default settings; a layer
with an ``nblocks`` setting gets the case's), times them in alternation with dense on the same input, and counts
their FLOPs from their own ``macs_per_token()``. A layer without ``nblocks`` is timed once per (in, out, tokens).
Frameworks: ``mindspore`` (the accelerator's cells, ``mindcv_ext.accel``), ``mindspore-plain`` (the operators GPU
and Ascend run) and ``torch`` (the PyTorch twins of ``torch_layers``).
"""
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from mindspore import nn

from ..layers import create_mlp, layer_settings, linear_class, linear_layer, registered_linears
from ..engine.results import pyplot, save_figure
from .harness import Progress, no_progress, sync, time_alternating
from .macs import linear_macs_per_token

__all__ = ["LAYER_FIELDS", "has_nblocks", "layer_grid", "layer_cells", "compare", "run_layers", "run_mlp",
           "monarch_versus_torch", "plot_layers"]

LAYER_FIELDS = ["kind", "framework", "impl", "in_features", "out_features", "nblocks", "tokens", "pass", "ms",
                "gflop", "gflops_per_s", "speedup_vs_dense"]


def has_nblocks(layer: str) -> bool:
    """Whether the registered layer takes ``nblocks``."""
    return "nblocks" in layer_settings(linear_class(layer))


def layer_grid(grid: str) -> List[Tuple[int, int, int, int]]:
    """(in, out, nblocks, tokens) cases: one-dimensional sweeps around 768->3072 (``sweep``), or the product of
    sizes, block counts and token counts (``full``)."""
    if grid == "full":
        sizes = [256, 512, 1024, 2048, 4096]
        return [(i, o, nb, t) for i in sizes for o in sizes for nb in (2, 4, 8, 16) for t in (196, 784, 1568, 3136)]
    cases = [(i, o, 4, 1568) for i, o in ((256, 1024), (512, 2048), (768, 3072), (1024, 4096), (3072, 768),
                                           (2048, 2048), (4096, 1024))]
    cases += [(768, 3072, nb, 1568) for nb in (2, 8, 16)]
    cases += [(768, 3072, 4, t) for t in (196, 784, 3136)]
    return cases


def layer_cells(layers: Sequence[str], in_features: int, out_features: int, nblocks: int,
                hidden: Optional[int] = None) -> Tuple[Dict[str, nn.Cell], Dict[str, Dict[str, Any]]]:
    """(cells, settings) of ``layers``: each a single layer ``in -> out``, or with ``hidden`` the MLP
    ``in -> hidden -> in`` its layer asks for (``create_mlp``). A layer that cannot be built at these sizes is
    left out, with a note on stderr."""
    cells, settings = {}, {}
    for name in layers:
        chosen = {"nblocks": nblocks} if has_nblocks(name) else {}
        try:
            factory = linear_layer(name, **chosen)
            cells[name] = factory(in_features, out_features) if hidden is None else \
                create_mlp(in_features, hidden, linear_layer=factory)
        except ValueError as exc:
            shape = f"{in_features}->{out_features}" if hidden is None else f"{in_features}->{hidden}->{in_features}"
            print(f"note: no {name} rows for {shape}: {exc}", file=sys.stderr)
            continue
        settings[name] = chosen
    return cells, settings


def _accelerated(cells: Dict[str, nn.Cell], kernels: str) -> Dict[str, nn.Cell]:
    """``cells`` as train.py runs them on this machine: accelerated (in place, or their twins) unless ``kernels``
    is off."""
    if kernels == "off":
        return cells
    from ..accel import accelerate

    return {name: accelerate(cell, kernels) for name, cell in cells.items()}


def _mindspore_calls(cells: Dict[str, nn.Cell], tokens: int, in_features: int) -> Dict[str, Dict[str, Callable]]:
    import mindspore as ms
    from mindspore import ops

    class Backward(nn.Cell):
        def __init__(self, net: nn.Cell) -> None:
            super().__init__()
            self.net = net
            self.weights = ms.ParameterTuple(net.trainable_params())
            self.grad = ops.GradOperation(get_all=True, get_by_list=True)

        def construct(self, x):
            return self.grad(self.net, self.weights)(x)

    x = ms.Tensor(np.random.default_rng(0).standard_normal((tokens, in_features)).astype(np.float32))
    calls: Dict[str, Dict[str, Callable]] = {"fwd": {}, "fwd+bwd": {}}
    for name, cell in cells.items():
        backward = Backward(cell)
        calls["fwd"][name] = lambda cell=cell: sync(cell(x))
        calls["fwd+bwd"][name] = lambda backward=backward: sync(backward(x))
    return calls


def _torch_calls(modules: Dict[str, Any], tokens: int, in_features: int) -> Dict[str, Dict[str, Callable]]:
    import torch

    x = torch.from_numpy(np.random.default_rng(0).standard_normal((tokens, in_features)).astype(np.float32))
    calls: Dict[str, Dict[str, Callable]] = {"fwd": {}, "fwd+bwd": {}}
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


def compare(kind: str, in_features: int, out_features: Optional[int], nblocks: int, tokens: int, *,
            layers: Sequence[str], hidden: Optional[int] = None, repeats: int = 30, warmup: int = 3,
            cpu_kernels: str = "auto", with_plain: bool = False, compare_torch: bool = False) -> List[dict]:
    """One case's rows: dense and ``layers`` (``kind`` ``layer``: in -> out; ``mlp``: in -> hidden -> in) on
    ``tokens`` rows, forward and forward+backward, every framework and layer timed in alternation."""
    names = ["dense"] + [name for name in layers if name != "dense"]
    hidden = hidden if kind == "mlp" else None
    cells, settings = layer_cells(names, in_features, out_features or in_features, nblocks, hidden)
    macs = {name: linear_macs_per_token(cell) for name, cell in cells.items()}
    frameworks = {"mindspore": _mindspore_calls(_accelerated(cells, cpu_kernels), tokens, in_features)}
    if with_plain:
        # accelerate swaps sub-cells in place (an MLP's GELU): the plain rows time cells of their own.
        plain, _ = layer_cells(list(cells), in_features, out_features or in_features, nblocks, hidden)
        frameworks["mindspore-plain"] = _mindspore_calls(plain, tokens, in_features)
    if compare_torch:
        from .torch_layers import torch_modules

        modules = torch_modules(settings, in_features, out_features or in_features, hidden)
        frameworks["torch"] = _torch_calls(modules, tokens, in_features)
    rows = []
    for pass_name in ("fwd", "fwd+bwd"):
        calls = {f"{fw}/{impl}": call for fw, by_pass in frameworks.items()
                 for impl, call in by_pass[pass_name].items()}
        times = time_alternating(calls, repeats, warmup)
        for key, ms_time in times.items():
            fw, impl = key.split("/")
            flops = 2.0 * tokens * macs[impl] * (3.0 if pass_name == "fwd+bwd" else 1.0)
            rows.append({"kind": kind, "framework": fw, "impl": impl, "in_features": in_features,
                         "out_features": out_features if kind == "layer" else in_features,
                         "nblocks": nblocks if impl == "dense" or "nblocks" in settings[impl] else "",
                         "tokens": tokens, "pass": pass_name, "ms": round(ms_time, 2), "gflop": round(flops / 1e9, 6),
                         "gflops_per_s": float(f"{flops / 1e6 / ms_time:.3g}"),  # 3 digits: tiny layers run < 0.1
                         "speedup_vs_dense": round(times[f"{fw}/dense"] / ms_time, 2)})
    return rows


def run_layers(*, grid: str = "sweep", layers: Optional[Sequence[str]] = None, progress: Progress = no_progress,
               **timing: Any) -> List[dict]:
    """Every case of ``layer_grid(grid)``, ``layers`` (default: every registered one) against dense. ``timing``:
    ``compare``'s repeats, warmup, cpu_kernels, with_plain and compare_torch."""
    layers = list(registered_linears() if layers is None else layers)
    rows, timed_once = [], set()
    for in_f, out_f, nblocks, tokens in progress(layer_grid(grid), "layers"):
        # A layer without nblocks is the same at every nblocks: timed once per (in, out, tokens).
        chosen = [name for name in layers if has_nblocks(name) or (name, in_f, out_f, tokens) not in timed_once]
        timed_once.update((name, in_f, out_f, tokens) for name in layers)
        rows += compare("layer", in_f, out_f, nblocks, tokens, layers=chosen, **timing)
    return rows


def run_mlp(*, dim: int = 768, hidden: int = 3072, tokens: int = 1568, nblocks: int = 4,
            layers: Optional[Sequence[str]] = None, **timing: Any) -> List[dict]:
    """The MLP ``dim -> hidden -> dim`` of dense and ``layers`` (default: every registered one) on ``tokens``
    rows. ``timing``: ``compare``'s repeats, warmup, cpu_kernels, with_plain and compare_torch."""
    layers = list(registered_linears() if layers is None else layers)
    return compare("mlp", dim, None, nblocks, tokens, layers=layers, hidden=hidden, **timing)


def monarch_versus_torch(rows: List[dict]) -> Dict[str, List[Tuple[str, float]]]:
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
    """Speed-up over dense along the three sweeps (size, nblocks, tokens), and MindSpore's Monarch against
    PyTorch's when both were timed; None without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    structured = [r for r in rows if r["impl"] != "dense" and r["kind"] == "layer"]
    sweeps = [("size (in->out), nblocks 4, 1568 tokens", lambda r: r["nblocks"] == 4 and r["tokens"] == 1568,
               lambda r: f"{r['in_features']}->{r['out_features']}"),
              ("nblocks, 768->3072, 1568 tokens", lambda r: (r["in_features"], r["out_features"], r["tokens"]) ==
               (768, 3072, 1568), lambda r: str(r["nblocks"])),
              ("tokens, 768->3072, nblocks 4", lambda r: (r["in_features"], r["out_features"], r["nblocks"]) ==
               (768, 3072, 4), lambda r: str(r["tokens"]))]
    versus_torch = monarch_versus_torch(rows)
    figure, axes = plt.subplots(1, 4 if versus_torch else 3, figsize=(21 if versus_torch else 16, 4.5))
    if versus_torch:
        _plot_versus_torch(axes[3], versus_torch)
    for axis, (title, keep, label) in zip(axes, sweeps):
        series = {}
        for r in structured:
            if r["nblocks"] == "":  # no nblocks: in the size and token sweeps only, wherever it was timed
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
    return save_figure(figure, path)
