"""Small constructors that pin down the PyTorch-reference defaults MindSpore does not share."""
import collections.abc
import math
from typing import Callable, Tuple, Union

import mindspore as ms
from mindspore import nn, ops

__all__ = ["to_2tuple", "layer_norm", "gelu", "ErfFreeGELU", "is_exact_gelu", "replace_cell", "replace_cells"]


def to_2tuple(value: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    if isinstance(value, collections.abc.Iterable) and not isinstance(value, str):
        value = tuple(value)
        if len(value) != 2:
            raise ValueError(f"expected an int or a pair, got {value!r}")
        return value
    return (value, value)


def layer_norm(dim: int, eps: float = 1e-6) -> nn.LayerNorm:
    """``nn.LayerNorm`` over the last dimension with an explicit epsilon: MindSpore's default (1e-7) matches no
    PyTorch reference (1e-5, or timm's 1e-6)."""
    return nn.LayerNorm((dim,), epsilon=eps)


def gelu() -> nn.Cell:
    """Exact (erf) GELU as in PyTorch; MindSpore's ``nn.GELU()`` default is the tanh approximation."""
    return nn.GELU(approximate=False)


class ErfFreeGELU(nn.Cell):
    """Exact GELU with erf written as Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7, below fp32 noise).

    For exporters that lack an Erf operator (MindSpore's ONNX exporter); numerically it stands in for
    ``nn.GELU(approximate=False)``, unlike the tanh approximation (off by up to 4.7e-4).
    """

    _P = 0.3275911
    _A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        z = x / math.sqrt(2.0)
        magnitude = ops.abs(z)
        one = ops.ones_like(magnitude)
        # not 1.0 / (...): that lowers to Reciprocal, which ONNX export lacks
        t = ops.div(one, one + self._P * magnitude)
        poly = t * (self._A[0] + t * (self._A[1] + t * (self._A[2] + t * (self._A[3] + t * self._A[4]))))
        # sign(z) without a Sign operator: |erf| vanishes like |z| near 0, so the 1e-12 never shows.
        erf = ops.div(z, magnitude + 1e-12) * (one - poly * ops.exp(-z * z))
        return 0.5 * x * (1.0 + erf)


def is_exact_gelu(cell: nn.Cell) -> bool:
    """Whether ``cell`` is ``nn.GELU(approximate=False)``, what ``gelu()`` builds."""
    return isinstance(cell, nn.GELU) and getattr(cell, "approximate", None) == "none"


def replace_cell(net: nn.Cell, name: str, new: nn.Cell) -> None:
    """Put ``new`` where the sub-cell called ``name`` (e.g. ``blocks.0.mlp.fc1``) is, keeping full parameter names."""
    parent_name, _, attr = name.rpartition(".")
    parent = net if not parent_name else dict(net.cells_and_names())[parent_name]
    if isinstance(parent, (nn.SequentialCell, nn.CellList)):
        parent[int(attr)] = new
    else:
        setattr(parent, attr, new)
    # A Cell assigned after construction names its parameters relative to its parent only
    # ("fc1.blkdiag1" in every block); checkpoints and optimizers need the full, unique name.
    new.update_parameters_name(name + ".")


def replace_cells(net: nn.Cell, predicate: Callable[[str, nn.Cell], bool],
                  factory: Callable[[nn.Cell], nn.Cell]) -> int:
    """Replace every sub-cell for which ``predicate(name, cell)`` holds by ``factory(cell)``; returns the count."""
    targets = [(name, cell) for name, cell in net.cells_and_names() if name and predicate(name, cell)]
    for name, cell in targets:
        replace_cell(net, name, factory(cell))
    return len(targets)
