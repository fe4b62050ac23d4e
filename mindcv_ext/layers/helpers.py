"""Small constructors that pin down the PyTorch-reference defaults MindSpore does not share."""
import collections.abc
from typing import Tuple, Union

from mindspore import nn

__all__ = ["to_2tuple", "layer_norm", "gelu"]


def to_2tuple(value: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    if isinstance(value, collections.abc.Iterable) and not isinstance(value, str):
        value = tuple(value)
        if len(value) != 2:
            raise ValueError(f"expected an int or a pair, got {value!r}")
        return value
    return (value, value)


def layer_norm(dim: int, eps: float = 1e-6) -> nn.LayerNorm:
    """LayerNorm over the last dimension; MindSpore's own default epsilon (1e-7) matches no reference."""
    return nn.LayerNorm((dim,), epsilon=eps)


def gelu() -> nn.GELU:
    """Exact (erf) GELU as in PyTorch; MindSpore's default is the tanh approximation."""
    return nn.GELU(approximate=False)
