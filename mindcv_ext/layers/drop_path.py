"""Stochastic depth ("Deep Networks with Stochastic Depth", https://arxiv.org/abs/1603.09382)."""
import mindspore as ms
from mindspore import nn, ops

__all__ = ["DropPath"]


class DropPath(nn.Cell):
    """Drop whole residual branches per sample, scaling the kept ones by ``1 / (1 - drop_prob)``."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"DropPath: drop_prob must be in [0, 1), got {drop_prob!r}")
        self.drop_prob = float(drop_prob)
        # Dropout on a ones mask gives exactly the scaled Bernoulli mask, with a kernel on every backend.
        self.dropout = nn.Dropout(p=drop_prob)

    def extend_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * self.dropout(ops.ones(shape, x.dtype))
