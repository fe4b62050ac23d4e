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
import numbers
from typing import Optional, Tuple, Union

import numpy as np

import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import Uniform, initializer

from .cpu_kernels import (CpuBlocksMatmul, CpuColumnsOfFlat, CpuColumnsOfRows, CpuColumnsOfRowsBias,
                          cpu_kernels_wanted, cpu_sgemm_available)

__all__ = [
    "MonarchLinear",
    "BlockdiagLinear",
    "blockdiag_butterfly_multiply",
    "monarch_mlp",
    "monarch_pair_fusable",
    "monarch_gated_mlp",
    "monarch_gated_fusable",
    "reorder_features",
    "monarch_factor_shapes",
    "monarch_to_dense",
    "project_to_monarch",
]

ArrayLike = Union[np.ndarray, ms.Tensor]
Shape3 = Tuple[int, int, int]


def _check_positive_int(owner: str, name: str, value) -> int:
    # bool is an int subclass; nblocks=True is a bug, not 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _to_numpy(array: ArrayLike, name: str) -> np.ndarray:
    if isinstance(array, ms.Tensor):
        return array.asnumpy()
    try:
        return np.asarray(array)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name} must be an array or a MindSpore Tensor, got {type(array).__name__}") from exc


def monarch_factor_shapes(in_features: int, out_features: int, nblocks: int) -> Tuple[Shape3, Shape3]:
    """Shapes of ``(blkdiag1, blkdiag2)`` for a Monarch layer, as fly chooses them.

    The first factor keeps the narrower of the two block widths, so the intermediate
    width is ``nblocks * min(in_blk, out_blk)``.
    """
    owner = "MonarchLinear"
    in_features = _check_positive_int(owner, "in_features", in_features)
    out_features = _check_positive_int(owner, "out_features", out_features)
    nblocks = _check_positive_int(owner, "nblocks", nblocks)
    in_blk = math.ceil(in_features / nblocks)
    out_blk = math.ceil(out_features / nblocks)
    if in_blk * nblocks < out_blk * nblocks:
        return (nblocks, in_blk, in_blk), (nblocks, out_blk, in_blk)
    return (nblocks, out_blk, in_blk), (nblocks, out_blk, out_blk)


# Weights enter the batched matmuls transposed by the kernel (transpose_b) rather than by a Transpose op.
_bmm_nt = ops.BatchMatMul(transpose_b=True)


def _kernels_apply(layer: "MonarchLinear", x: ms.Tensor) -> bool:
    return layer.use_cpu_kernel and x.dtype == ms.float32


def _to_blocks(x: ms.Tensor, k: int, p: int, layer: Optional["MonarchLinear"] = None) -> ms.Tensor:
    """``(B, k*p)`` to the first factor's input blocks ``(k, B, p)``; with the sgemm kernel, ``x`` itself (it
    reads the blocks in place)."""
    if layer is not None and _kernels_apply(layer, x):
        return x if layer.cpu_matmul1 is not None else layer.cpu_split(x)
    return x.reshape(x.shape[0], k, p).transpose(1, 0, 2)


def _matmul(x: ms.Tensor, w: ms.Tensor, layer: Optional["MonarchLinear"], kernel: Optional[nn.Cell]) -> ms.Tensor:
    """``x[kk] . w[kk]^T`` over the blocks: a layer's sgemm kernel when it applies, else ``BatchMatMul``."""
    if kernel is not None and _kernels_apply(layer, x):
        return kernel(x, w)
    return _bmm_nt(x, w)


def _stage1(x_blocks: ms.Tensor, blkdiag1: ms.Tensor, l: int, layer: Optional["MonarchLinear"] = None) -> ms.Tensor:
    """First factor on input blocks ``(k, B, p)`` (or what ``_to_blocks`` gave); returns the second factor's input
    blocks ``(l, B, r)``."""
    if layer is not None and _kernels_apply(layer, x_blocks):
        return layer.cpu_stage1(_matmul(x_blocks, blkdiag1, layer, layer.cpu_matmul1))
    h = _bmm_nt(x_blocks, blkdiag1)  # (k, B, q)
    batch = h.shape[1]
    # Re-read the flat index kk*q + qq as rr*l + ll and gather block ll's inputs.
    return h.transpose(1, 0, 2).reshape(batch, -1, l).transpose(2, 0, 1)


def _from_blocks(y: ms.Tensor) -> ms.Tensor:
    """``(l, B, s)`` stage-2 output to ``(B, s*l)``: output index ss*l + ll."""
    l, batch, s = y.shape
    return y.transpose(1, 2, 0).reshape(batch, s * l)


def _output(y: ms.Tensor, layer: "MonarchLinear") -> ms.Tensor:
    """A layer's stage-2 output ``(l, B, s)`` to ``(B, out_features)``, with its bias."""
    if _kernels_apply(layer, y):
        if layer.has_bias:
            return layer.cpu_output(y, ops.cast(layer.bias, y.dtype))
        return layer.cpu_output(y)
    out = _from_blocks(y)
    if layer.out_features_extended > layer.out_features:
        out = out[:, :layer.out_features]
    if layer.has_bias:
        out = out + ops.cast(layer.bias, out.dtype)
    return out


def blockdiag_butterfly_multiply(x: ms.Tensor, blkdiag1: ms.Tensor, blkdiag2: ms.Tensor) -> ms.Tensor:
    """Monarch product of a 2-D input ``x`` of shape ``(B, k*p)``; returns ``(B, s*l)``.

    Two batched matmuls over the blocks, with fly's permutation between them, built from
    reshape, transpose and ``BatchMatMul`` only (``einsum`` has no CPU kernel).
    """
    k, _, p = blkdiag1.shape
    h = _stage1(_to_blocks(x, k, p), blkdiag1, blkdiag2.shape[0])
    return _from_blocks(_bmm_nt(h, blkdiag2))


def monarch_pair_fusable(fc1: "MonarchLinear", fc2: "MonarchLinear") -> bool:
    """Whether ``fc2(act(fc1(x)))`` can skip fc1's output permutation (see ``monarch_mlp``)."""
    l1, s1, _ = fc1.blkdiag2.shape
    k2, _, p2 = fc2.blkdiag1.shape
    return (fc1.out_features == l1 * s1 == fc2.in_features == k2 * p2) and p2 % l1 == 0


def _monarch_fc1_blocks(x: ms.Tensor, fc1: "MonarchLinear") -> Tuple[ms.Tensor, ms.Tensor]:
    """A Monarch layer (fc1 of an MLP) up to its second matmul: ``(h, w2)`` with ``h`` the ``(l, B, r)`` blocks
    (``x`` is 2-D)."""
    if fc1.in_features_extended > fc1.in_features:
        x = ops.pad(x, (0, fc1.in_features_extended - fc1.in_features))
    w1, w2 = ops.cast(fc1.blkdiag1, x.dtype), ops.cast(fc1.blkdiag2, x.dtype)
    return _stage1(_to_blocks(x, w1.shape[0], w1.shape[2], fc1), w1, w2.shape[0], fc1), w2


def _fc1_bias_blocks(fc1: "MonarchLinear", l: int, groups: int, c: int) -> ms.Tensor:
    """fc1's bias (feature ss*l + ll) as ``(l, groups, c)`` with ss = group*c + cc; zeros without a bias."""
    if not fc1.has_bias:
        return ops.zeros((l, groups, c), ms.float32)
    return fc1.bias.reshape(groups * c, l).transpose(1, 0).reshape(l, groups, c)


def _monarch_fc2_regrouped(z: ms.Tensor, fc2: "MonarchLinear", l: int) -> ms.Tensor:
    """fc2 of block-major input ``z`` ``(k2, B, p2)`` whose block columns are in ``(ll, cc)`` order, feature
    ``kk*p2 + cc*l + ll``; returns ``(B, out_features)``."""
    u1 = ops.cast(fc2.blkdiag1, z.dtype)
    k2, q2, p2 = u1.shape
    u1 = u1.reshape(k2, q2, p2 // l, l).transpose(0, 1, 3, 2).reshape(k2, q2, p2)  # columns in z's order
    u2 = ops.cast(fc2.blkdiag2, z.dtype)
    return _output(_matmul(_stage1(z, u1, u2.shape[0], fc2), u2, fc2, fc2.cpu_matmul2), fc2)


def monarch_mlp(x: ms.Tensor, fc1: "MonarchLinear", act: nn.Cell, drop: nn.Cell, fc2: "MonarchLinear",
                fused_gelu: bool = False) -> ms.Tensor:
    """``fc2(drop(act(fc1(x))))`` for two Monarch layers, with fc1's output left block-major.

    fc1's second matmul yields ``(l, B, s)``, feature ss*l + ll. Its standard order would cost a transpose
    whose innermost dimension is l (slow), and fc2 would then gather its input blocks with another one.
    Instead, fc2's block kk reads features ss*l + ll for ss in [kk*c, (kk+1)*c), c = p/l: a slab of the
    block-major tensor, taken with one transpose of c-long rows, with blkdiag1's columns reordered to
    match. fc1's bias rides in its matmul as an extra input column of ones: a broadcast add over the middle
    axis would cost a strided reduction in the backward pass. The elementwise activation and dropout do
    not care about the order. Results equal the unfused layers (a permutation of the same sums).

    With ``fused_gelu`` (``act`` is a ``GELU`` holding the CPU kernels), float32 inputs take fc1's bias, the
    activation and the regrouping in one kernel, ``act.cpu_regroup``, forward and backward; fc1's second
    matmul then has no column of ones.
    """
    lead_shape = x.shape[:-1]
    x = x.reshape(-1, fc1.in_features)
    batch = x.shape[0]
    h, w2 = _monarch_fc1_blocks(x, fc1)  # (l, B, r)
    l, s, _ = w2.shape
    k2, _, p2 = fc2.blkdiag1.shape
    c = p2 // l  # s == k2 * c
    # z: block kk2 of fc2's input, in (ll, ss) order.
    if fused_gelu and x.dtype == ms.float32:
        z = act.cpu_regroup(_matmul(h, w2, fc1, fc1.cpu_matmul2).reshape(l, batch, k2, c),
                            _fc1_bias_blocks(fc1, l, k2, c))
        z = drop(z).reshape(k2, batch, p2)
    else:
        if fc1.has_bias:
            bias = ops.cast(fc1.bias, x.dtype).reshape(s, l).transpose(1, 0).reshape(l, s, 1)
            h = ops.concat((h, ops.ones((l, batch, 1), h.dtype)), axis=2)
            w2 = ops.concat((w2, bias), axis=2)
        y = drop(act(_matmul(h, w2, fc1, fc1.cpu_matmul2)))  # (l, B, s)
        z = y.reshape(l, batch, k2, c).transpose(2, 1, 0, 3).reshape(k2, batch, p2)
    return _monarch_fc2_regrouped(z, fc2, l).reshape(lead_shape + (fc2.out_features,))


def monarch_gated_fusable(fc1: "MonarchLinear", fc2: "MonarchLinear") -> bool:
    """Whether ``monarch_gated_mlp`` can run ``fc1 -> gate (halves the width) -> fc2`` block-major."""
    l1, s1, _ = fc1.blkdiag2.shape
    k2, _, p2 = fc2.blkdiag1.shape
    return fc1.out_features == l1 * s1 == 2 * fc2.in_features == 2 * k2 * p2 and p2 % l1 == 0


def reorder_features(param: ms.Tensor, feature_order: Tuple[int, int, int]) -> ms.Tensor:
    """A per-feature vector in the order of ``monarch_gated_mlp``'s gate inputs (see there)."""
    k, l, c = feature_order
    return param.reshape(k, c, l).transpose(0, 2, 1).reshape(-1)


def monarch_gated_mlp(x: ms.Tensor, fc1: "MonarchLinear", act: nn.Cell, drop: nn.Cell, gate: nn.Cell,
                      fc2: "MonarchLinear") -> ms.Tensor:
    """``fc2(gate(drop(act(fc1(x)))))`` for two Monarch layers around a gate that halves the width (gMLP).

    Float32 and ``act.cpu_split`` (a ``GELU`` with the CPU kernels) only. As in ``monarch_mlp``, fc1's
    block-major output never takes the standard order: one kernel adds fc1's bias, applies GELU and writes
    the two halves ``u, v`` token-major, with features in a fixed permutation that fc2's first blocks read
    directly. ``gate.construct_reordered(u, v, feature_order)`` gates them in that order (feature
    ``(kk*c + cc)*l + ll`` sits at ``(kk*l + ll)*c + cc``, ``feature_order = (k, l, c)``, and
    ``reorder_features`` puts per-feature parameters in the same order) and returns fc2's input blocks
    ``(k, B, p)``.
    """
    lead_shape = x.shape[:-1]
    x = x.reshape(-1, fc1.in_features)
    batch = x.shape[0]
    h, w2 = _monarch_fc1_blocks(x, fc1)
    l = w2.shape[0]
    k2, _, p2 = fc2.blkdiag1.shape
    c = p2 // l
    u, v = act.cpu_split(_matmul(h, w2, fc1, fc1.cpu_matmul2).reshape(l, batch, 2 * k2, c),
                         _fc1_bias_blocks(fc1, l, 2 * k2, c))
    half_shape = lead_shape + (k2 * p2,)
    z = gate.construct_reordered(drop(u).reshape(half_shape), drop(v).reshape(half_shape), (k2, l, c))
    return _monarch_fc2_regrouped(z, fc2, l).reshape(lead_shape + (fc2.out_features,))


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
    w1 = _to_numpy(blkdiag1, "blkdiag1").astype(np.float64)
    w2 = _to_numpy(blkdiag2, "blkdiag2").astype(np.float64)
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
    w = _to_numpy(weight, "weight")
    if w.ndim != 2:
        raise ValueError(f"project_to_monarch: weight must be a 2-D (out_features, in_features) matrix, "
                         f"got shape {tuple(w.shape)}")
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


class MonarchLinear(nn.Cell):
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
    load without renaming. On CPU, float32 layers without padding run their two batched matmuls through
    oneDNN's sgemm (``cpu_kernels.CpuBlocksMatmul``; the first reads the input's blocks in place) and each
    remaining permutation (between the factors, output with the bias) as one pass of a fused kernel
    (``CpuColumnsOfFlat``/``CpuColumnsOfRows``) instead of one or two transposes; other dtypes, backends and
    exports use ``BatchMatMul`` and transposes (``set_cpu_kernels``). Under AMP
    (``auto_mixed_precision(net, "O2")``) the factors stay fp32 and are cast to the input's dtype for the
    multiply.
    """

    def __init__(self, in_features: int, out_features: int, nblocks: int = 4, has_bias: bool = True) -> None:
        super().__init__()
        shape1, shape2 = monarch_factor_shapes(in_features, out_features, nblocks)
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.nblocks = int(nblocks)
        self.has_bias = bool(has_bias)
        self.in_features_extended = shape1[0] * shape1[2]
        self.out_features_extended = shape2[0] * shape2[1]
        # fly: each factor U(+-1/sqrt(fan_in)) with fan_in its last dimension (kaiming_uniform, a=sqrt(5)),
        # drawn in the order blkdiag1, blkdiag2, bias; the bias bound uses out_features, unlike nn.Linear.
        self.blkdiag1 = _uniform(1.0 / math.sqrt(shape1[-1]), shape1, "blkdiag1")
        self.blkdiag2 = _uniform(1.0 / math.sqrt(shape2[-1]), shape2, "blkdiag2")
        self.bias = _uniform(1.0 / math.sqrt(self.out_features), (self.out_features,), "bias") if has_bias else None
        # On CPU (float32, no padding) the three permutations are one pass each, forward and backward.
        fast = cpu_kernels_wanted() and self.in_features_extended == self.in_features and \
            self.out_features_extended == self.out_features
        k, l = shape1[0], shape2[0]
        # Both batched matmuls through oneDNN's sgemm when MindSpore ships it; the first reads x in place.
        sgemm = fast and cpu_sgemm_available()
        self.cpu_matmul1 = CpuBlocksMatmul() if sgemm else None
        self.cpu_matmul2 = CpuBlocksMatmul() if sgemm else None
        self.cpu_split = CpuColumnsOfRows(k, 1) if fast and not sgemm else None
        self.cpu_stage1 = CpuColumnsOfFlat(l, k) if fast else None
        output = CpuColumnsOfRowsBias if has_bias else CpuColumnsOfRows
        self.cpu_output = output(1, l) if fast else None
        # Read at graph compilation; set_cpu_kernels(net, False) turns it off, e.g. before an export.
        self.use_cpu_kernel = fast

    @property
    def cpu_kernel(self) -> Optional[nn.Cell]:
        """The permutation kernels (``set_cpu_kernels`` switches layers that have them)."""
        return self.cpu_stage1

    def extend_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"nblocks={self.nblocks}, has_bias={self.has_bias}")

    @property
    def saving(self) -> float:
        """Parameters of the two factors as a fraction of a dense weight's."""
        size = self.blkdiag1.size + self.blkdiag2.size
        return size / (self.in_features * self.out_features)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        lead_shape = x.shape[:-1]
        x = x.reshape(-1, self.in_features)
        h, w2 = _monarch_fc1_blocks(x, self)
        return _output(_matmul(h, w2, self, self.cpu_matmul2), self).reshape(lead_shape + (self.out_features,))

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
        w = _to_numpy(weight, "weight")
        expected = (self.out_features, self.in_features)
        if w.shape != expected:
            raise ValueError(f"MonarchLinear.load_dense: weight must have shape {expected} "
                             f"(out_features, in_features), got {tuple(w.shape)}")
        w1, w2 = project_to_monarch(w, self.nblocks)
        self.blkdiag1.set_data(ms.Tensor(w1))
        self.blkdiag2.set_data(ms.Tensor(w2))
        if bias is not None:
            b = _to_numpy(bias, "bias")
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
        w = _to_numpy(weight, "weight")
        if w.ndim != 2:
            raise ValueError(f"MonarchLinear.from_dense: weight must be a 2-D (out_features, in_features) "
                             f"matrix, got shape {tuple(w.shape)}")
        layer = cls(w.shape[1], w.shape[0], nblocks=nblocks, has_bias=bias is not None)
        layer.load_dense(w, bias)
        return layer


class BlockdiagLinear(nn.Cell):
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
        super().__init__()
        owner = "BlockdiagLinear"
        self.in_features = _check_positive_int(owner, "in_features", in_features)
        self.out_features = _check_positive_int(owner, "out_features", out_features)
        self.nblocks = _check_positive_int(owner, "nblocks", nblocks)
        self.has_bias = bool(has_bias)
        in_blk = math.ceil(self.in_features / self.nblocks)
        out_blk = math.ceil(self.out_features / self.nblocks)
        self.in_features_extended = in_blk * self.nblocks
        self.out_features_extended = out_blk * self.nblocks
        # fly draws a dense kaiming-uniform weight, scales it by sqrt(nblocks) and keeps the diagonal
        # blocks: the same law as U(+-1/sqrt(in_blk)).
        self.weight = _uniform(1.0 / math.sqrt(in_blk), (self.nblocks, out_blk, in_blk), "weight")
        self.bias = _uniform(1.0 / math.sqrt(self.out_features), (self.out_features,), "bias") if has_bias else None

    def extend_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"nblocks={self.nblocks}, has_bias={self.has_bias}")

    @property
    def saving(self) -> float:
        return self.weight.size / (self.in_features * self.out_features)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        lead_shape = x.shape[:-1]
        x = x.reshape(-1, self.in_features)
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
        if self.has_bias:
            out = out + ops.cast(self.bias, out.dtype)
        return out.reshape(lead_shape + (self.out_features,))

    def to_dense(self) -> ms.Tensor:
        """The equivalent dense ``(out_features, in_features)`` weight (float32 Tensor)."""
        dense = _block_diag(self.weight.asnumpy())[:self.out_features, :self.in_features]
        return ms.Tensor(dense.astype(np.float32))
