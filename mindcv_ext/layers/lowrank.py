"""Low-rank linear layer: the ``lowrank`` baseline of fly's structured-MLP benchmark (apd10/ssl-baselines).

``y = (x @ w1) @ w2 + bias`` with ``w1`` of shape (in, rank) and ``w2`` of shape (rank, out), the reference's
names and layout, so its checkpoints map one to one.
"""
import math
import numbers
from typing import Optional

import mindspore as ms
from mindspore import ops
from mindspore.common.initializer import Uniform, initializer

from .structured import StructuredLinear, check_positive_int, register_linear

__all__ = ["LowRankLinear", "lowrank_rank"]


def lowrank_rank(in_features: int, out_features: int, redn_factor: float) -> int:
    """The baselines' rank for compression ``1/redn_factor``: ``2**round(log2(int(in*out/(redn*(in+out)))))``
    (64 for 768 <-> 3072 at redn_factor 8)."""
    if isinstance(redn_factor, bool) or not isinstance(redn_factor, numbers.Real) or redn_factor <= 0:
        raise ValueError(f"LowRankLinear: redn_factor must be a positive number, got {redn_factor!r}")
    rank = int(in_features * out_features / redn_factor / (in_features + out_features))
    if rank < 1:
        raise ValueError(f"LowRankLinear: redn_factor {redn_factor} leaves no rank for {in_features} -> "
                         f"{out_features}; use a smaller redn_factor or give rank")
    return int(2 ** round(math.log2(rank)))


@register_linear("lowrank")
class LowRankLinear(StructuredLinear):
    r"""Linear layer whose weight is a product of two thin factors.

    Args:
        in_features: width of the input's last dimension.
        out_features: width of the output's last dimension.
        rank: the inner width; None takes the baselines' rule for ``redn_factor`` (``lowrank_rank``). Default: None.
        redn_factor: the compression the rank is chosen for, when ``rank`` is None. Default: 2.
        has_bias: add a learnable bias. Default: True.

    Inputs ``(*, in_features)``, outputs ``(*, out_features)``. Each factor starts as ``nn.Linear`` would start it,
    U(+-1/sqrt(fan_in)), so the product keeps a dense layer's scale; the reference instead projects a
    Xavier-uniform dense draw, which only changes where training starts.
    """

    def __init__(self, in_features: int, out_features: int, rank: Optional[int] = None, *, redn_factor: float = 2,
                 has_bias: bool = True) -> None:
        super().__init__(in_features, out_features, has_bias)
        owner = "LowRankLinear"
        if rank is None:
            rank = lowrank_rank(self.in_features, self.out_features, redn_factor)
        self.rank = check_positive_int(owner, "rank", rank)
        self.redn_factor = redn_factor
        self.w1 = ms.Parameter(initializer(Uniform(1.0 / math.sqrt(self.in_features)),
                                           (self.in_features, self.rank), ms.float32), name="w1")
        self.w2 = ms.Parameter(initializer(Uniform(1.0 / math.sqrt(self.rank)), (self.rank, self.out_features),
                                           ms.float32), name="w2")
        self.init_bias(1.0 / math.sqrt(self.in_features))

    @classmethod
    def check_settings(cls, rank: Optional[int] = None, redn_factor: float = 2) -> None:
        if rank is not None:
            check_positive_int("LowRankLinear", "rank", rank)
        elif isinstance(redn_factor, bool) or not isinstance(redn_factor, numbers.Real) or redn_factor <= 0:
            raise ValueError(f"LowRankLinear: redn_factor must be a positive number, got {redn_factor!r}")

    def macs_per_token(self) -> int:
        return self.w1.size + self.w2.size

    def forward_2d(self, x: ms.Tensor) -> ms.Tensor:
        return ops.matmul(ops.matmul(x, ops.cast(self.w1, x.dtype)), ops.cast(self.w2, x.dtype))

    def to_dense(self) -> ms.Tensor:
        """The equivalent dense ``(out_features, in_features)`` weight."""
        return ms.Tensor((self.w1.asnumpy() @ self.w2.asnumpy()).T.copy())
