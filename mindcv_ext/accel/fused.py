"""Monarch products and MLPs on the CPU kernels, for the cells of ``cells.py``.

``layers/monarch.py`` states the index conventions: with ``x`` of width ``k*p``, ``blkdiag1`` ``(k, q, p)`` and
``blkdiag2`` ``(l, s, r)``,

    stage 1:  h[b, kk*q + qq] = sum_pp blkdiag1[kk, qq, pp] * x[b, kk*p + pp]
    stage 2:  y[b, ss*l + ll] = sum_rr blkdiag2[ll, ss, rr] * h[b, rr*l + ll]

The plain layer reaches stage 2's input blocks with transposes. Here each permutation is one pass of a kernel,
the matmuls run on oneDNN's sgemm when MindSpore ships it, and in an MLP fc1's output never takes the standard
order: fc2 reads it block-major. Every function takes float32, unpadded layers (``FastMonarchLinear``).
"""
from typing import Tuple

import mindspore as ms
from mindspore import nn, ops

__all__ = ["monarch_forward", "monarch_mlp", "monarch_gated_mlp", "pair_fusable", "gated_pair_fusable",
           "reorder_features"]

_bmm_nt = ops.BatchMatMul(transpose_b=True)


def _matmul(x: ms.Tensor, w: ms.Tensor, kernel) -> ms.Tensor:
    """``x[kk] . w[kk]^T`` over the blocks: the layer's sgemm kernel when it has one, else ``BatchMatMul``."""
    if kernel is not None:
        return kernel(x, w)
    return _bmm_nt(x, w)


def _stage1(x_blocks: ms.Tensor, w1: ms.Tensor, layer) -> ms.Tensor:
    """First factor on input blocks ``(k, B, p)`` (token-major ``(B, k*p)`` for sgemm); returns the second factor's
    input blocks ``(l, B, r)``."""
    return layer.cpu_stage1(_matmul(x_blocks, w1, layer.cpu_matmul1))


def _fc1_blocks(x: ms.Tensor, layer) -> ms.Tensor:
    """A layer's first factor and permutation of a 2-D input: ``(l, B, r)``. sgemm reads ``x``'s blocks in place."""
    x_blocks = x if layer.cpu_matmul1 is not None else layer.cpu_split(x)
    return _stage1(x_blocks, layer.blkdiag1, layer)


def _output(y: ms.Tensor, layer) -> ms.Tensor:
    """A layer's stage-2 output ``(l, B, s)`` to ``(B, out_features)``, with its bias, in one pass."""
    if layer.has_bias:
        return layer.cpu_output(y, layer.bias)
    return layer.cpu_output(y)


def monarch_forward(x: ms.Tensor, layer) -> ms.Tensor:
    """``layer(x)`` for a 2-D input."""
    return _output(_matmul(_fc1_blocks(x, layer), layer.blkdiag2, layer.cpu_matmul2), layer)


def pair_fusable(fc1, fc2) -> bool:
    """Whether ``fc2(act(fc1(x)))`` can skip fc1's output permutation (see ``monarch_mlp``)."""
    l1, s1, _ = fc1.blkdiag2.shape
    k2, _, p2 = fc2.blkdiag1.shape
    return (fc1.out_features == l1 * s1 == fc2.in_features == k2 * p2) and p2 % l1 == 0


def gated_pair_fusable(fc1, fc2) -> bool:
    """Whether ``monarch_gated_mlp`` can run ``fc1 -> gate (halves the width) -> fc2`` block-major."""
    l1, s1, _ = fc1.blkdiag2.shape
    k2, _, p2 = fc2.blkdiag1.shape
    return fc1.out_features == l1 * s1 == 2 * fc2.in_features == 2 * k2 * p2 and p2 % l1 == 0


def _fc1_bias_blocks(fc1, l: int, groups: int, c: int) -> ms.Tensor:
    """fc1's bias (feature ss*l + ll) as ``(l, groups, c)`` with ss = group*c + cc; zeros without a bias."""
    if not fc1.has_bias:
        return ops.zeros((l, groups, c), ms.float32)
    return fc1.bias.reshape(groups * c, l).transpose(1, 0).reshape(l, groups, c)


def _fc2_regrouped(z: ms.Tensor, fc2, l: int) -> ms.Tensor:
    """fc2 of block-major input ``z`` ``(k2, B, p2)`` whose block columns are in ``(ll, cc)`` order, feature
    ``kk*p2 + cc*l + ll``; returns ``(B, out_features)``."""
    k2, q2, p2 = fc2.blkdiag1.shape
    u1 = fc2.blkdiag1.reshape(k2, q2, p2 // l, l).transpose(0, 1, 3, 2).reshape(k2, q2, p2)  # columns in z's order
    return _output(_matmul(_stage1(z, u1, fc2), fc2.blkdiag2, fc2.cpu_matmul2), fc2)


def monarch_mlp(x: ms.Tensor, fc1, regroup: nn.Cell, drop: nn.Cell, fc2) -> ms.Tensor:
    """``fc2(drop(gelu(fc1(x))))`` for two Monarch layers, with fc1's output left block-major.

    fc1's second matmul yields ``(l, B, s)``, feature ss*l + ll. Its standard order would cost a transpose whose
    innermost dimension is l (slow), and fc2 would then gather its input blocks with another one. Instead, fc2's
    block kk reads features ss*l + ll for ss in [kk*c, (kk+1)*c), c = p/l: ``regroup`` (``CpuBiasGeluRegroup``)
    adds fc1's bias, applies GELU and writes those slabs in one pass, and blkdiag1's columns are reordered to match.
    Dropout does not care about the order. Results equal the unfused layers (a permutation of the same sums).
    """
    lead_shape = x.shape[:-1]
    x = x.reshape(-1, fc1.in_features)
    batch = x.shape[0]
    h = _fc1_blocks(x, fc1)  # (l, B, r)
    l = fc1.blkdiag2.shape[0]
    k2, _, p2 = fc2.blkdiag1.shape
    c = p2 // l
    y = _matmul(h, fc1.blkdiag2, fc1.cpu_matmul2).reshape(l, batch, k2, c)
    z = drop(regroup(y, _fc1_bias_blocks(fc1, l, k2, c))).reshape(k2, batch, p2)
    return _fc2_regrouped(z, fc2, l).reshape(lead_shape + (fc2.out_features,))


def reorder_features(param: ms.Tensor, feature_order: Tuple[int, int, int]) -> ms.Tensor:
    """A per-feature vector in the order of ``monarch_gated_mlp``'s gate inputs (see there)."""
    k, l, c = feature_order
    return param.reshape(k, c, l).transpose(0, 2, 1).reshape(-1)


def monarch_gated_mlp(x: ms.Tensor, fc1, split: nn.Cell, drop: nn.Cell, gate: nn.Cell, fc2) -> ms.Tensor:
    """``fc2(gate(drop(gelu(fc1(x)))))`` for two Monarch layers around a gate that halves the width (gMLP).

    As in ``monarch_mlp``, fc1's block-major output never takes the standard order: ``split``
    (``CpuBiasGeluSplit``) adds fc1's bias, applies GELU and writes the two halves ``u, v`` token-major, with
    features in a fixed permutation that fc2's first blocks read directly. ``gate.construct_reordered(u, v,
    feature_order)`` gates them in that order (feature ``(kk*c + cc)*l + ll`` sits at ``(kk*l + ll)*c + cc``,
    ``feature_order = (k, l, c)``, and ``reorder_features`` puts per-feature parameters in the same order) and
    returns fc2's input blocks ``(k, B, p)``.
    """
    lead_shape = x.shape[:-1]
    x = x.reshape(-1, fc1.in_features)
    batch = x.shape[0]
    h = _fc1_blocks(x, fc1)
    l = fc1.blkdiag2.shape[0]
    k2, _, p2 = fc2.blkdiag1.shape
    c = p2 // l
    u, v = split(_matmul(h, fc1.blkdiag2, fc1.cpu_matmul2).reshape(l, batch, 2 * k2, c),
                 _fc1_bias_blocks(fc1, l, 2 * k2, c))
    half_shape = lead_shape + (k2 * p2,)
    z = gate.construct_reordered(drop(u).reshape(half_shape), drop(v).reshape(half_shape), (k2, l, c))
    return _fc2_regrouped(z, fc2, l).reshape(lead_shape + (fc2.out_features,))
