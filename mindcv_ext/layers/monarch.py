"""Monarch and block-diagonal linear layers.

Monarch matrices (Dao et al., "Monarch: Expressive Structured Matrices for Efficient and
Accurate Training", ICML 2022) factor a dense weight into two block-diagonal matrices with
fixed permutations between them. ``MonarchLinear`` reproduces HazyResearch/fly's
``src/models/layers/monarch_linear.py`` exactly: the same parameter names and shapes
(so fly checkpoints map one to one), the same zero padding, the same permutation and the
same initialisation.

Index conventions (fly's ``blockdiag_butterfly_multiply``): with ``x`` of width ``k*p``,
``blkdiag1`` of shape ``(k, q, p)`` and ``blkdiag2`` of shape ``(l, s, r)`` (``l*r == k*q``),

    stage 1:  h[b, kk*q + qq] = sum_pp blkdiag1[kk, qq, pp] * x[b, kk*p + pp]
    stage 2:  y[b, ss*l + ll] = sum_rr blkdiag2[ll, ss, rr] * h[b, rr*l + ll]

The NumPy helpers here (``monarch_to_dense``, ``project_to_monarch``) are written from the
matrix form ``W = P2 . BD(blkdiag2) . P1 . BD(blkdiag1)`` instead, so they check the
MindSpore multiply rather than repeat it.
"""
import math
from typing import Optional, Tuple

import numpy as np

import mindspore as ms
from mindspore import ops
from mindspore.common.initializer import Uniform, initializer

from .structured import ArrayLike, StructuredLinear, check_positive_int, dense_operands, register_linear, to_numpy

__all__ = [
    "MonarchLinear",
    "BlockdiagLinear",
    "monarch_factor_shapes",
    "monarch_to_dense",
    "project_to_monarch",
]

Shape3 = Tuple[int, int, int]


def monarch_factor_shapes(in_features: int, out_features: int, nblocks: int) -> Tuple[Shape3, Shape3]:
    """Shapes of ``(blkdiag1, blkdiag2)`` for a Monarch layer, as fly chooses them.

    The first factor keeps the narrower of the two block widths, so the intermediate
    width is ``nblocks * min(in_blk, out_blk)``.
    """
    owner = "MonarchLinear"
    in_features = check_positive_int(owner, "in_features", in_features)
    out_features = check_positive_int(owner, "out_features", out_features)
    nblocks = check_positive_int(owner, "nblocks", nblocks)
    in_blk = math.ceil(in_features / nblocks)
    out_blk = math.ceil(out_features / nblocks)
    if in_blk * nblocks < out_blk * nblocks:
        return (nblocks, in_blk, in_blk), (nblocks, out_blk, in_blk)
    return (nblocks, out_blk, in_blk), (nblocks, out_blk, out_blk)


# Weights enter the batched matmuls transposed by the kernel (transpose_b) rather than by a Transpose op.
_bmm_nt = ops.BatchMatMul(transpose_b=True)


def _block_diag(blocks: np.ndarray) -> np.ndarray:
    nb, rows, cols = blocks.shape
    dense = np.zeros((nb * rows, nb * cols), dtype=blocks.dtype)
    for b in range(nb):
        dense[b * rows:(b + 1) * rows, b * cols:(b + 1) * cols] = blocks[b]
    return dense


def _monarch_permutations(w1_shape: Shape3, w2_shape: Shape3) -> Tuple[np.ndarray, np.ndarray]:
    """Row orders of the two permutation matrices P1 (between factors) and P2 (output)."""
    l, s, r = w2_shape
    # P1 sends index rr*l + ll to ll*r + rr; P2 sends ll*s + ss to ss*l + ll.
    p1 = np.arange(l * r).reshape(r, l).T.reshape(-1)
    p2 = np.arange(l * s).reshape(l, s).T.reshape(-1)
    return p1, p2


def monarch_to_dense(blkdiag1: ArrayLike, blkdiag2: ArrayLike, in_features: int, out_features: int) -> np.ndarray:
    """The dense ``(out_features, in_features)`` weight of a Monarch layer, in NumPy."""
    w1 = to_numpy(blkdiag1, "monarch_to_dense", "blkdiag1").astype(np.float64)
    w2 = to_numpy(blkdiag2, "monarch_to_dense", "blkdiag2").astype(np.float64)
    p1, p2 = _monarch_permutations(w1.shape, w2.shape)
    dense = _block_diag(w1)  # BD(w1): (k*q, k*p)
    dense = dense[p1]  # P1 . BD(w1)
    dense = _block_diag(w2) @ dense  # BD(w2) . P1 . BD(w1)
    dense = dense[p2]  # P2 . BD(w2) . P1 . BD(w1)
    return dense[:out_features, :in_features]


def project_to_monarch(weight: ArrayLike, nblocks: int) -> Tuple[np.ndarray, np.ndarray]:
    """Frobenius-optimal Monarch factors ``(blkdiag1, blkdiag2)`` for a dense ``(out, in)`` weight.

    Every entry of ``blkdiag2[ll, ss, :]`` and every row ``blkdiag1[kk, qq, :]`` touches exactly
    one of the ``nblocks**2`` sub-matrices ``W[ss*l + ll, kk*p + pp]``, and each sub-matrix is a sum
    of ``|R(ll, kk)|`` rank-one terms. The sub-matrices are therefore independent, and the best
    approximation is one truncated SVD per sub-matrix (the rectangular generalisation of the
    paper's Algorithm 1; fly's ``blockdiag_butterfly_project_einsum_rank`` gives the same shapes).
    Padded rows and columns are left out of each SVD, so padding does not cost accuracy.
    """
    w, _ = dense_operands("project_to_monarch", weight)
    out_features, in_features = w.shape
    shape1, shape2 = monarch_factor_shapes(in_features, out_features, nblocks)
    k, q, p = shape1
    l, s, r = shape2
    w = w.astype(np.float64)
    w1 = np.zeros(shape1, dtype=np.float64)
    w2 = np.zeros(shape2, dtype=np.float64)
    rr_all = np.arange(r)
    ss_all = np.arange(s)
    pp_all = np.arange(p)
    for ll in range(l):
        # Intermediate channel rr*l + ll of block ll comes from first-stage block (rr*l + ll) // q.
        source_block = (rr_all * l + ll) // q
        rows_valid = ss_all[ss_all * l + ll < out_features]
        for kk in range(k):
            ranks = rr_all[source_block == kk]
            cols_valid = pp_all[kk * p + pp_all < in_features]
            if ranks.size == 0 or rows_valid.size == 0 or cols_valid.size == 0:
                continue
            block = w[np.ix_(rows_valid * l + ll, kk * p + cols_valid)]
            u, sigma, vt = np.linalg.svd(block, full_matrices=False)
            rank = min(ranks.size, sigma.size)
            root = np.sqrt(sigma[:rank])
            used = ranks[:rank]
            w2[ll][np.ix_(rows_valid, used)] = u[:, :rank] * root
            w1[kk][np.ix_((used * l + ll) % q, cols_valid)] = root[:, None] * vt[:rank]
    return w1.astype(np.float32), w2.astype(np.float32)


def _uniform(bound: float, shape, name: str) -> ms.Parameter:
    return ms.Parameter(initializer(Uniform(bound), shape, ms.float32), name=name)


@register_linear("monarch")
class MonarchLinear(StructuredLinear):
    r"""Linear layer whose weight is a Monarch matrix (two block-diagonal factors).

    Args:
        in_features: width of the input's last dimension.
        out_features: width of the output's last dimension.
        nblocks: number of diagonal blocks in each factor. Default: 4.
        has_bias: add a learnable bias of length ``out_features``. Default: True.

    Inputs:
        x: Tensor of shape ``(*, in_features)``, any number of leading dimensions.

    Outputs:
        Tensor of shape ``(*, out_features)`` in the input's dtype.

    Parameters are named ``blkdiag1``, ``blkdiag2`` and ``bias`` as in fly, so fly checkpoints
    load without renaming. The forward is fly's ``blockdiag_butterfly_multiply``: two ``BatchMatMul``s over the
    blocks with reshapes and transposes between them, the same operators on every device. Under AMP
    (``auto_mixed_precision(net, "O2")``) the factors stay fp32 and are cast to the input's dtype for the
    multiply.
    """

    def __init__(self, in_features: int, out_features: int, nblocks: int = 4, has_bias: bool = True) -> None:
        super().__init__(in_features, out_features, has_bias)
        shape1, shape2 = monarch_factor_shapes(in_features, out_features, nblocks)
        self.nblocks = int(nblocks)
        self.in_features_extended = shape1[0] * shape1[2]
        self.out_features_extended = shape2[0] * shape2[1]
        # fly: each factor U(+-1/sqrt(fan_in)) with fan_in its last dimension (kaiming_uniform, a=sqrt(5)),
        # drawn in the order blkdiag1, blkdiag2, bias; the bias bound uses out_features, unlike nn.Linear.
        self.blkdiag1 = _uniform(1.0 / math.sqrt(shape1[-1]), shape1, "blkdiag1")
        self.blkdiag2 = _uniform(1.0 / math.sqrt(shape2[-1]), shape2, "blkdiag2")
        self.init_bias(1.0 / math.sqrt(self.out_features))

    @classmethod
    def check_settings(cls, nblocks: int = 4) -> None:
        check_positive_int("MonarchLinear", "nblocks", nblocks)

    def macs_per_token(self) -> int:
        return self.blkdiag1.size + self.blkdiag2.size

    def forward_2d(self, x: ms.Tensor) -> ms.Tensor:
        if self.in_features_extended > self.in_features:
            x = ops.pad(x, (0, self.in_features_extended - self.in_features))
        w1, w2 = ops.cast(self.blkdiag1, x.dtype), ops.cast(self.blkdiag2, x.dtype)
        k, _, p = w1.shape
        l, s, _ = w2.shape
        batch = x.shape[0]
        h = _bmm_nt(x.reshape(batch, k, p).transpose(1, 0, 2), w1)  # (k, B, q)
        # Re-read the flat index kk*q + qq as rr*l + ll and gather block ll's inputs.
        h = h.transpose(1, 0, 2).reshape(batch, -1, l).transpose(2, 0, 1)  # (l, B, r)
        out = _bmm_nt(h, w2).transpose(1, 2, 0).reshape(batch, s * l)  # output index ss*l + ll
        if self.out_features_extended > self.out_features:
            out = out[:, :self.out_features]
        return out

    def to_dense(self) -> ms.Tensor:
        """The equivalent dense ``(out_features, in_features)`` weight (float32 Tensor)."""
        dense = monarch_to_dense(self.blkdiag1.asnumpy(), self.blkdiag2.asnumpy(), self.in_features,
                                 self.out_features)
        return ms.Tensor(dense.astype(np.float32))

    def load_dense(self, weight: ArrayLike, bias: Optional[ArrayLike] = None) -> float:
        """Set the factors to the best Monarch approximation of a dense ``(out, in)`` weight.

        The bias, when given, is copied. Returns the relative Frobenius error
        ``||W - M||_F / ||W||_F`` of the approximation.
        """
        w = to_numpy(weight, "MonarchLinear.load_dense", "weight")
        expected = (self.out_features, self.in_features)
        if w.shape != expected:
            raise ValueError(f"MonarchLinear.load_dense: weight must have shape {expected} "
                             f"(out_features, in_features), got {tuple(w.shape)}")
        w1, w2 = project_to_monarch(w, self.nblocks)
        self.blkdiag1.set_data(ms.Tensor(w1))
        self.blkdiag2.set_data(ms.Tensor(w2))
        if bias is not None:
            b = to_numpy(bias, "MonarchLinear.load_dense", "bias")
            if not self.has_bias:
                raise ValueError("MonarchLinear.load_dense: a bias was given but the layer has has_bias=False")
            if b.shape != (self.out_features,):
                raise ValueError(f"MonarchLinear.load_dense: bias must have shape ({self.out_features},), "
                                 f"got {tuple(b.shape)}")
            self.bias.set_data(ms.Tensor(b.astype(np.float32)))
        approx = monarch_to_dense(w1, w2, self.in_features, self.out_features)
        norm = np.linalg.norm(w)
        return float(np.linalg.norm(w - approx) / norm) if norm > 0 else 0.0

    @classmethod
    def from_dense(cls, weight: ArrayLike, bias: Optional[ArrayLike] = None, nblocks: int = 4) -> "MonarchLinear":
        """A new layer holding the Frobenius-optimal Monarch factors of a dense ``(out, in)`` weight."""
        w, _ = dense_operands("MonarchLinear.from_dense", weight)
        layer = cls(w.shape[1], w.shape[0], nblocks=nblocks, has_bias=bias is not None)
        layer.load_dense(w, bias)
        return layer


class BlockdiagLinear(StructuredLinear):
    r"""Linear layer with a single block-diagonal weight (fly's ``BlockdiagLinear``).

    Args:
        in_features: width of the input's last dimension.
        out_features: width of the output's last dimension.
        nblocks: number of diagonal blocks. Default: 4.
        has_bias: add a learnable bias of length ``out_features``. Default: True.

    The parameter ``weight`` has shape ``(nblocks, ceil(out/nblocks), ceil(in/nblocks))``; the input is
    zero-padded and the output sliced as in ``MonarchLinear``.
    """

    def __init__(self, in_features: int, out_features: int, nblocks: int = 4, has_bias: bool = True) -> None:
        super().__init__(in_features, out_features, has_bias)
        self.nblocks = check_positive_int(type(self).__name__, "nblocks", nblocks)
        in_blk = math.ceil(self.in_features / self.nblocks)
        out_blk = math.ceil(self.out_features / self.nblocks)
        self.in_features_extended = in_blk * self.nblocks
        self.out_features_extended = out_blk * self.nblocks
        # fly draws a dense kaiming-uniform weight, scales it by sqrt(nblocks) and keeps the diagonal
        # blocks: the same law as U(+-1/sqrt(in_blk)).
        self.weight = _uniform(1.0 / math.sqrt(in_blk), (self.nblocks, out_blk, in_blk), "weight")
        self.init_bias(1.0 / math.sqrt(self.out_features))

    def macs_per_token(self) -> int:
        return self.weight.size

    def forward_2d(self, x: ms.Tensor) -> ms.Tensor:
        if self.in_features_extended > self.in_features:
            x = ops.pad(x, (0, self.in_features_extended - self.in_features))
        nb, out_blk, in_blk = self.weight.shape
        batch = x.shape[0]
        w = ops.cast(self.weight, x.dtype)
        x_blocks = x.reshape(batch, nb, in_blk).transpose(1, 0, 2)  # (nb, B, in_blk)
        out = _bmm_nt(x_blocks, w)  # (nb, B, out_blk)
        out = out.transpose(1, 0, 2).reshape(batch, nb * out_blk)
        if self.out_features_extended > self.out_features:
            out = out[:, :self.out_features]
        return out

    def to_dense(self) -> ms.Tensor:
        """The equivalent dense ``(out_features, in_features)`` weight (float32 Tensor)."""
        dense = _block_diag(self.weight.asnumpy())[:self.out_features, :self.in_features]
        return ms.Tensor(dense.astype(np.float32))
