"""CPU acceleration of a built network: ``accelerate(net)``.

The models of mindcv_ext are plain MindSpore, the code that Ascend and GPU run. On a CPU, ``accelerate`` swaps some
of their cells for twins on fused C++ kernels (``cells.py``, ``kernels/cpu_ops.cc``): exact GELU and LayerNorm in
one pass each, Monarch layers on oneDNN's sgemm with one-pass permutations, Monarch MLPs that never put fc1's
output back in order, and Pixelfly layers as one kernel each way (the block-sparse product as a few large sgemms
over runs of blocks, with the gate, the low-rank term and the bias in the same pass). Each twin is made from its
plain cell and takes over all of its state: it holds the same Parameter objects, so checkpoints, optimizers and EMA
are unchanged, and gives the same results to float32 rounding.

    from mindcv_ext.accel import accelerate
    net = accelerate(create_model("mixer_b16_224_monarch"))

Apply it to a float32 network before the first call (a compiled graph keeps the cells it was compiled with). It
does nothing, with one log line, off the CPU backend, under AMP or float16, with ``MINDCV_EXT_CPU_KERNELS=0``, or
when the kernels cannot be built. A cell with PyNative backward hooks, ``recompute()`` or ``shard()`` set on it (or
on a sub-cell its twin would take) stays plain: MindSpore builds those around the cell object. The kernels are
compiled on the first call on a machine (g++, or ``$CXX``) into the cache of ``mindcv_ext.data.default_cache_dir``.
Exports use the plain network.
"""
import collections
import logging
from typing import Dict, List, Tuple

import mindspore as ms
from mindspore import nn

from ..layers import replace_cell
from . import cpu_kernels
from .cells import FAST_CELLS, bound_state

__all__ = ["accelerate", "accelerated_cells", "declined_twins", "KERNEL_MODES"]

_logger = logging.getLogger("mindcv_ext")
KERNEL_MODES = ("auto", "on", "off")


def accelerated_cells(net: nn.Cell) -> Dict[str, int]:
    """How many cells of each accelerated kind ``net`` holds, by class name."""
    return dict(collections.Counter(type(cell).__name__ for _, cell in net.cells_and_names()
                                    if isinstance(cell, FAST_CELLS)))


def declined_twins(net: nn.Cell) -> Dict[str, str]:
    """The twins that are for cells of ``net`` but cannot serve on this machine, by class name, with why (e.g.
    Pixelfly's and SSL's twins without MindSpore's oneDNN sgemm): ``accelerate`` leaves those cells plain."""
    declined = {}
    for _, cell in net.cells_and_names():
        for twin in FAST_CELLS:
            if twin.matches(cell) and twin.unavailable():
                declined[twin.__name__] = twin.unavailable()
    return declined


def _why_not(net: nn.Cell) -> str:
    """Why the kernels cannot serve ``net`` here, or '' when they can."""
    if cpu_kernels.kernels_disabled():
        return f"{cpu_kernels.ENV_SWITCH}=0"
    target = ms.get_context("device_target")
    if target != "CPU":
        return f"device_target is {target}, and the kernels are for the CPU"
    amp = getattr(net, "_amp_level", "") or "O0"  # auto_mixed_precision sets it; a plain Cell has ''
    if amp != "O0" or any(cell.get_flags().get(flag) for _, cell in net.cells_and_names() for flag in ("fp16", "bf16")):
        return f"the network runs under AMP ({amp if amp != 'O0' else 'to_float'}); the kernels are float32"
    low = sorted({str(p.dtype) for p in net.get_parameters() if p.dtype in (ms.float16, ms.bfloat16)})
    if low:
        return f"the network holds {', '.join(low)} parameters; the kernels are float32"
    try:
        cpu_kernels.cpu_kernel_library()
    except RuntimeError as exc:
        return f"they cannot be built: {exc}"
    return ""


def _twins_for(net: nn.Cell) -> Tuple[List[Tuple[str, nn.Cell, type]], Dict[str, str]]:
    """``(name, cell, twin class)`` for each cell ``accelerate`` swaps, outermost first (a twin takes its sub-cells
    with it, and a twin from an earlier call is left as it is); and the cells left plain because MindSpore built
    state around them or a sub-cell the twin would take (``cells.bound_state``), by name, with what."""
    plan, kept, taken = [], {}, []  # taken: prefixes of cells swapped or twins already
    for name, cell in net.cells_and_names():
        if any(name.startswith(prefix) for prefix in taken):
            continue
        if isinstance(cell, FAST_CELLS):  # accelerated before, with its children
            taken.append(name + "." if name else "")
            continue
        twin_cls = next((fast for fast in FAST_CELLS if fast.applies(cell)), None)
        if twin_cls is None:
            continue
        bound = [f"{sub_name or 'the network'} has {' and '.join(bound_state(sub))}"
                 for sub_name, sub in cell.cells_and_names(name_prefix=name) if bound_state(sub)]
        if bound:  # its sub-cells may still have twins of their own
            kept[name or type(cell).__name__] = ", ".join(bound)
            continue
        plan.append((name, cell, twin_cls))
        taken.append(name + "." if name else "")
    return plan, kept


def accelerate(net: nn.Cell, kernels: str = "auto") -> nn.Cell:
    """Swap the cells of ``net`` that have CPU-kernel twins for them, in place; returns ``net`` (or the twin of
    ``net`` itself, when it has one: a single ``MonarchLinear``, say).

    Args:
        net: a built float32 network, before its first call.
        kernels: ``"auto"`` accelerates where the kernels can serve and otherwise logs why not; ``"on"`` makes
            that an error (ValueError); ``"off"`` leaves ``net`` as it is.
    """
    if kernels not in KERNEL_MODES:
        raise ValueError(f"cpu_kernels must be one of {KERNEL_MODES}, got {kernels!r}")
    if kernels == "off":
        _logger.info("CPU kernels off (cpu_kernels=off): the plain network runs")
        return net
    reason = _why_not(net)
    if reason:
        if kernels == "on" and not cpu_kernels.kernels_disabled():
            raise ValueError(f"cpu_kernels=on, but the CPU kernels cannot be used: {reason}. "
                             f"Use cpu_kernels=auto (or off) to run the plain network.")
        _logger.info(f"CPU kernels not used ({reason}): the plain network runs")
        return net
    declined = declined_twins(net)
    plan, kept = _twins_for(net)
    names_before = {id(p): p.name for p in net.get_parameters()}
    swapped = collections.Counter()
    result = net
    for name, cell, twin_cls in plan:
        twin = twin_cls(cell)
        if name:
            replace_cell(net, name, twin)
        else:  # net itself, e.g. a single MonarchLinear
            result = twin
        swapped[twin_cls.__name__] += 1
    params_after = list(result.get_parameters())
    if {id(p) for p in params_after} != set(names_before):  # the contract checkpoints and optimizers rely on
        raise RuntimeError("accelerate changed the network's parameters; please report this as a bug")
    for param in params_after:
        # Attaching a twin names its parameters relative to ``net``; a wrapped network had other names.
        param.name = names_before[id(param)]
    summary = ", ".join(f"{count} {kind}" for kind, count in sorted(swapped.items())) or "nothing to swap"
    left = "".join(f"; {twin} not used: {reason}" for twin, reason in sorted(declined.items()))
    left += "".join(f"; {name} kept plain ({why}, which MindSpore binds to the cell: set after accelerate, "
                    f"they serve the twin)" for name, why in sorted(kept.items()))
    _logger.info(f"CPU kernels on: {summary}{left}")
    return result
