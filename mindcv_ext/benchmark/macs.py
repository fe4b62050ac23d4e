"""Multiply-accumulates, counted from each layer's own count.

A cell counts itself when it declares its count: ``macs_per_token()`` (MACs per input row, the bias aside: every
registered linear layer, Pixelfly's with its gate, and GPT-2's ``Conv1D``), or ``forward_macs(inputs, output)``
from the shapes of a call (``PatchEmbed``, gMLP's token projection ``SpatialGatingUnit``). MindSpore's own
``nn.Dense`` and ``nn.Conv2d`` are counted by the rules here. A cell that counts itself is one term: the counters
never descend into its children (a Pixelfly layer's gate, a gating unit's ``proj``), so no product is counted
twice.

``forward_count`` counts one forward with hooks (``count_macs``: one image through a vision model);
``linear_macs_per_token`` adds up the per-token layers of a network without running it.
"""
import math
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

import mindspore as ms
from mindspore import nn

from ..layers import PixelflyMlp

__all__ = ["FORWARD_RULES", "per_token_macs", "forward_macs", "counting_cells", "linear_macs_per_token",
           "forward_count", "count_macs"]

# MindSpore's cells whose count needs the shapes of a forward: (cell, inputs, output) -> MACs.
FORWARD_RULES: Dict[type, Callable[[nn.Cell, Sequence, ms.Tensor], int]] = {
    nn.Conv2d: lambda cell, inputs, output: output.size * cell.weight.size // cell.weight.shape[0],
}


def per_token_macs(cell: nn.Cell) -> Optional[int]:
    """MACs per input row of a layer that counts itself per token (``macs_per_token()``, or ``nn.Dense``); None
    for any other cell."""
    own = getattr(cell, "macs_per_token", None)
    if callable(own):
        return int(own())
    if isinstance(cell, nn.Dense):
        return cell.in_channels * cell.out_channels
    return None


def _forward_rule(cell: nn.Cell) -> Optional[Callable[[nn.Cell, Sequence, ms.Tensor], int]]:
    own = getattr(cell, "forward_macs", None)
    if callable(own):
        return lambda cell, inputs, output: own(inputs, output)
    return next((rule for kind, rule in FORWARD_RULES.items() if isinstance(cell, kind)), None)


def forward_macs(cell: nn.Cell, inputs: Sequence, output: ms.Tensor) -> int:
    """MACs of one call of a cell that counts itself, from its input and output."""
    per_token = per_token_macs(cell)
    if per_token is not None:
        return math.prod(inputs[0].shape[:-1]) * per_token
    rule = _forward_rule(cell)
    return rule(cell, inputs, output) if rule is not None else 0


def counting_cells(net: nn.Cell) -> List[nn.Cell]:
    """The cells of ``net`` that count themselves, outermost first, each once; none inside another."""
    found, seen = [], set()

    def visit(cell: nn.Cell) -> None:
        if cell is None or id(cell) in seen:
            return
        seen.add(id(cell))
        if per_token_macs(cell) is not None or _forward_rule(cell) is not None:
            found.append(cell)
            return
        for child in cell.name_cells().values():
            visit(child)

    visit(net)
    return found


def linear_macs_per_token(net: nn.Cell) -> int:
    """MACs per input row of the per-token layers of ``net`` (``per_token_macs``), summed: a linear layer's or an
    MLP's count, or the linear part of a language model's. Convolutions and token projections, which need a
    forward's shapes, are left out (``count_macs`` has them)."""
    return sum(per_token_macs(cell) or 0 for cell in counting_cells(net))


def forward_count(net: nn.Cell, *inputs: ms.Tensor) -> int:
    """MACs of one forward of ``net`` on ``inputs``, counted by forward hooks on its counting cells, in PyNative
    mode (the context's mode is restored). Pixelfly MLPs that hand fc1's output to fc2 as tiles call neither as a
    cell: they run untiled for the count (``PixelflyMlp.hidden_as_tiles``). Leaves the network in eval mode."""
    total = [0]

    def count(cell: nn.Cell, cell_inputs: Sequence, output: ms.Tensor) -> None:
        total[0] += forward_macs(cell, cell_inputs, output)

    handles = [cell.register_forward_hook(count) for cell in counting_cells(net)]
    tiled = [cell for _, cell in net.cells_and_names() if isinstance(cell, PixelflyMlp) and cell.hidden_as_tiles]
    mode = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)  # hooks run in PyNative only
    try:
        for cell in tiled:
            cell.hidden_as_tiles = False
        net.set_train(False)
        net(*inputs)
    finally:
        for cell in tiled:
            cell.hidden_as_tiles = True
        for handle in handles:
            handle.remove()
        ms.set_context(mode=mode)
    return total[0]


def count_macs(net: nn.Cell, image_size: int, in_channels: int = 3) -> int:
    """MACs of one image through a vision model (``forward_count`` on a zero image), on the plain network: the
    accelerated MLPs use fc1/fc2's weights without calling them. Leaves the network in eval mode."""
    return forward_count(net, ms.Tensor(np.zeros((1, in_channels, image_size, image_size), np.float32)))
