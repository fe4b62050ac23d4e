"""Block-diagonal butterfly linear layer: the ``bdiagbfly`` baseline of fly's structured-MLP benchmark
(apd10/ssl-baselines' ``BlockdiagButterflyLinear``, itself from fly's Monarch code with a rank ``b1`` between the
factors).

With k = nblocks1, J = nblocks2, i = in/k and l = out/(J*b2), the input splits into k blocks of length i and

    h[b, k, j, y] = sum_i  x[b, k*i + i_]    * w1_bfly[k, j*b1 + y, i_]
    o[b, l, j, z] = sum_k sum_y h[b, k, j, y] * w2_bfly[j, l*b2 + z, k*b1 + y]
    y[b, (l*J + j)*b2 + z] = o[b, l, j, z] + bias

Parameter names and shapes are the reference's: ``w1_bfly`` (k, J*b1, i), ``w2_bfly`` (J, out/J, k*b1), ``bias``.
"""
import math

import numpy as np

import mindspore as ms
from mindspore import ops
from mindspore.common.initializer import Uniform, initializer

from .structured import StructuredLinear, check_positive_int, register_linear

__all__ = ["BlockdiagButterflyLinear"]

_bmm_nt = ops.BatchMatMul(transpose_b=True)


@register_linear("bdiagbfly")
class BlockdiagButterflyLinear(StructuredLinear):
    r"""Linear layer with a weight of two block-diagonal factors joined by a butterfly permutation.

    Args:
        in_features: input width, a multiple of ``nblocks1``.
        out_features: output width, a multiple of ``nblocks2 * b2``.
        nblocks1: blocks of the first factor. Default: 4.
        nblocks2: blocks of the second factor. Default: 4.
        b1: rank each (first block, second block) pair passes on. Default: 48.
        b2: output features per (l, j) pair. Default: 1.
        has_bias: add a learnable bias. Default: True.

    Inputs ``(*, in_features)``, outputs ``(*, out_features)``; two batched matmuls with reshapes between them.
    Initialisation is the reference's: PyTorch's kaiming-uniform (a = sqrt(5)) on each 3-D factor, whose fan-in
    is the product of its last two dimensions, and the bias bound from the first factor's fan-in.
    """

    def __init__(self, in_features: int, out_features: int, nblocks1: int = 4, nblocks2: int = 4, b1: int = 48,
                 b2: int = 1, has_bias: bool = True) -> None:
        super().__init__(in_features, out_features, has_bias)
        owner = "BlockdiagButterflyLinear"
        self.check_settings(nblocks1=nblocks1, nblocks2=nblocks2, b1=b1, b2=b2)
        if in_features % nblocks1:
            raise ValueError(f"{owner}: in_features ({in_features}) must be a multiple of nblocks1 ({nblocks1})")
        if out_features % (nblocks2 * b2):
            raise ValueError(f"{owner}: out_features ({out_features}) must be a multiple of nblocks2 * b2 "
                             f"({nblocks2} * {b2})")
        self.nblocks1, self.nblocks2, self.b1, self.b2 = int(nblocks1), int(nblocks2), int(b1), int(b2)
        shape1 = (self.nblocks1, self.nblocks2 * self.b1, self.in_features // self.nblocks1)
        shape2 = (self.nblocks2, self.out_features // self.nblocks2, self.nblocks1 * self.b1)
        fan_in1 = shape1[1] * shape1[2]
        self.w1_bfly = ms.Parameter(initializer(Uniform(1.0 / math.sqrt(fan_in1)), shape1, ms.float32), name="w1_bfly")
        self.w2_bfly = ms.Parameter(initializer(Uniform(1.0 / math.sqrt(shape2[1] * shape2[2])), shape2, ms.float32),
                                    name="w2_bfly")
        self.init_bias(1.0 / math.sqrt(fan_in1))

    @classmethod
    def check_settings(cls, nblocks1: int = 4, nblocks2: int = 4, b1: int = 48, b2: int = 1) -> None:
        for name, value in dict(nblocks1=nblocks1, nblocks2=nblocks2, b1=b1, b2=b2).items():
            check_positive_int("BlockdiagButterflyLinear", name, value)

    def macs_per_token(self) -> int:
        return self.w1_bfly.size + self.w2_bfly.size

    def forward_2d(self, x: ms.Tensor) -> ms.Tensor:
        k, j, b1, b2 = self.nblocks1, self.nblocks2, self.b1, self.b2
        x = x.reshape(-1, k, self.in_features // k).transpose(1, 0, 2)  # (k, B, i)
        rows = x.shape[1]
        h = _bmm_nt(x, ops.cast(self.w1_bfly, x.dtype))  # (k, B, J*b1)
        h = h.reshape(k, rows, j, b1).transpose(2, 1, 0, 3).reshape(j, rows, k * b1)
        out = _bmm_nt(h, ops.cast(self.w2_bfly, x.dtype))  # (J, B, l*b2)
        return out.reshape(j, rows, -1, b2).transpose(1, 2, 0, 3).reshape(rows, self.out_features)

    def to_dense(self) -> ms.Tensor:
        """The equivalent dense ``(out_features, in_features)`` weight, from the formulas in NumPy."""
        w1 = self.w1_bfly.asnumpy().astype(np.float64)
        w2 = self.w2_bfly.asnumpy().astype(np.float64)
        k, j, b1, b2 = self.nblocks1, self.nblocks2, self.b1, self.b2
        i = self.in_features // k
        w1 = w1.reshape(k, j, b1, i)
        w2 = w2.reshape(j, -1, b2, k, b1)
        dense = np.einsum("kjyi,jlzky->ljzki", w1, w2).reshape(self.out_features, self.in_features)
        return ms.Tensor(dense.astype(np.float32))
