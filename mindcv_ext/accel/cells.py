"""Accelerated twins of the plain cells, on the CPU kernels.

Each twin is built from a plain cell and holds that cell's Parameter objects (same names, shapes and values), so
checkpoints, optimizer state and EMA do not notice the swap. Each subclasses its plain cell and falls back to the
plain ``construct`` for inputs other than float32, so a twin is never wrong, only sometimes not faster.
"""
import mindspore as ms
from mindspore import nn, ops

import numpy as np

from ..layers import GatedMlp, MonarchLinear, Mlp, SketchStructuredLinear, SparseLRLinear, is_exact_gelu
from ..layers.ssl import SSL_BLOCK_K, SSL_VEC
from ..models.gmlp import SpatialGatingUnit
from .cpu_kernels import (CpuBiasGeluRegroup, CpuBiasGeluSplit, CpuBlocksMatmul, CpuColumnsOfFlat, CpuColumnsOfRows,
                          CpuColumnsOfRowsBias, CpuGateToBlocks, CpuGelu, CpuLayerNorm, CpuSparseLowRank,
                          CpuSslChunkSum, cpu_sgemm_available)
from .fused import gated_pair_fusable, monarch_forward, monarch_gated_mlp, monarch_mlp, pair_fusable, reorder_features

__all__ = ["FastGELU", "FastLayerNorm", "FastMonarchLinear", "FastSketchStructuredLinear", "FastSparseLRLinear",
           "FastMlp", "FastPixelflyMlp", "FastGatedMlp", "FastSpatialGatingUnit", "FAST_CELLS", "sgemm_unavailable"]

_bmm_nt = ops.BatchMatMul(transpose_b=True)


def sgemm_unavailable() -> str:
    """Why the twins that multiply on oneDNN's sgemm cannot serve on this machine, or '' when they can."""
    if cpu_sgemm_available():
        return ""
    return f"MindSpore {ms.__version__} here has no oneDNN sgemm (dnnl_sgemm in libdnnl.so.3), which it multiplies on"


class _SgemmTwin:
    """A twin on oneDNN's sgemm: it applies to the cells of its kind (``matches``, each twin's own) where the machine
    has sgemm; elsewhere ``unavailable()`` says why (``accel.declined_twins``)."""

    unavailable = staticmethod(sgemm_unavailable)

    @classmethod
    def applies(cls, cell: nn.Cell) -> bool:
        return cls.matches(cell) and not cls.unavailable()


class FastGELU(nn.GELU):
    """Exact GELU, one fused kernel forward and one backward (~6 ms instead of ~30 ms on 1568x3072)."""

    @staticmethod
    def applies(cell: nn.Cell) -> bool:
        return is_exact_gelu(cell)

    def __init__(self, plain: nn.GELU) -> None:
        super().__init__(approximate=False)
        self.kernel = CpuGelu()

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        if x.dtype == ms.float32:
            return self.kernel(x)
        return super().construct(x)


class FastLayerNorm(nn.LayerNorm):
    """LayerNorm over the last axis, forward and backward each one kernel (MindSpore's CPU ``LayerNormGrad`` is ~2x
    slower than elementwise code, its forward ~7x slower than the kernel on 1568x768)."""

    @staticmethod
    def applies(cell: nn.Cell) -> bool:
        return isinstance(cell, nn.LayerNorm) and len(cell.normalized_shape) == 1 and \
            cell.begin_norm_axis == -1 and cell.begin_params_axis == -1

    def __init__(self, plain: nn.LayerNorm) -> None:
        super().__init__(plain.normalized_shape, epsilon=plain.epsilon)
        self.gamma, self.beta = plain.gamma, plain.beta
        self.kernel = CpuLayerNorm(plain.epsilon)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        if x.dtype == ms.float32:
            return self.kernel(x, self.gamma, self.beta)
        return super().construct(x)

    def normalize(self, x: ms.Tensor, gamma: ms.Tensor, beta: ms.Tensor) -> ms.Tensor:
        """The same normalisation of float32 ``x`` with given parameters (this layer's, reordered to ``x``'s
        features)."""
        return self.kernel(x, gamma, beta)


class FastMonarchLinear(MonarchLinear):
    """``MonarchLinear`` with its batched matmuls on oneDNN's sgemm (``CpuBlocksMatmul``; the first reads the
    input's blocks in place) and each permutation (between the factors, output with the bias) one kernel pass.
    Unpadded layers only."""

    @staticmethod
    def applies(cell: nn.Cell) -> bool:
        return isinstance(cell, MonarchLinear) and cell.in_features_extended == cell.in_features and \
            cell.out_features_extended == cell.out_features

    def __init__(self, plain: MonarchLinear) -> None:
        nn.Cell.__init__(self)
        for name in ("in_features", "out_features", "nblocks", "has_bias", "in_features_extended",
                     "out_features_extended"):
            setattr(self, name, getattr(plain, name))
        self.blkdiag1, self.blkdiag2, self.bias = plain.blkdiag1, plain.blkdiag2, plain.bias
        k, l = self.blkdiag1.shape[0], self.blkdiag2.shape[0]
        sgemm = cpu_sgemm_available()
        self.cpu_matmul1 = CpuBlocksMatmul() if sgemm else None
        self.cpu_matmul2 = CpuBlocksMatmul() if sgemm else None
        self.cpu_split = None if sgemm else CpuColumnsOfRows(k, 1)
        self.cpu_stage1 = CpuColumnsOfFlat(l, k)
        self.cpu_output = CpuColumnsOfRowsBias(1, l) if self.has_bias else CpuColumnsOfRows(1, l)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        if x.dtype != ms.float32:
            return super().construct(x)
        lead_shape = x.shape[:-1]
        return monarch_forward(x.reshape(-1, self.in_features), self).reshape(lead_shape + (self.out_features,))


class FastSketchStructuredLinear(_SgemmTwin, SketchStructuredLinear):
    """``SketchStructuredLinear`` with its input sketch (rotate and add the ``redn_factor`` chunks) one kernel pass in
    the input's own column order, and its matmul on oneDNN's sgemm against the compressed weight, gathered to
    that order. Needs MindSpore's oneDNN sgemm."""

    @staticmethod
    def matches(cell: nn.Cell) -> bool:
        return isinstance(cell, SketchStructuredLinear)

    def __init__(self, plain: SketchStructuredLinear) -> None:
        nn.Cell.__init__(self)
        for name in ("in_features", "out_features", "redn_factor", "seed", "has_bias", "weight_index"):
            setattr(self, name, getattr(plain, name))
        self.weight, self.bias = plain.weight, plain.bias
        self.chunk_shifts = ms.Tensor(np.array([v * SSL_VEC for v in plain.vector_shifts], np.int32))
        # The sketch keeps K-step order (t, i); the plain layer's index is in (q, t, v) order with i = q*VEC + v.
        compressed = self.in_features // self.redn_factor
        steps, vectors = compressed // SSL_BLOCK_K, SSL_BLOCK_K // SSL_VEC
        plain_index = plain.weight_index.asnumpy().reshape(vectors, steps, SSL_VEC, self.out_features)
        natural = plain_index.transpose(3, 1, 0, 2).reshape(self.out_features, compressed)  # (n, t*BK + i)
        self.fast_weight_index = ms.Tensor(natural.reshape(-1))
        self.cpu_sketch = CpuSslChunkSum()
        self.cpu_matmul = CpuBlocksMatmul()

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        if x.dtype != ms.float32:
            return super().construct(x)
        lead_shape = x.shape[:-1]
        compressed = self.in_features // self.redn_factor
        sketch = self.cpu_sketch(x.reshape(-1, self.in_features), self.chunk_shifts)  # (M, K/c)
        w = ops.gather(self.weight.reshape(-1), self.fast_weight_index, 0).reshape(1, self.out_features, compressed)
        out = self.cpu_matmul(sketch, w)  # (1, M, N)
        out = out.reshape(-1, self.out_features)
        if self.has_bias:
            out = out + self.bias
        return out.reshape(lead_shape + (self.out_features,))


class FastSparseLRLinear(_SgemmTwin, SparseLRLinear):
    """Pixelfly's ``SparseLRLinear`` as one kernel each way (``CpuSparseLowRank``): the block-sparse product on
    oneDNN's sgemm over runs of blocks, with the gate, the low-rank term and the bias in the same pass over each
    chunk of tokens. Unpadded layers only (widths that are whole blocks); needs MindSpore's oneDNN sgemm."""

    @staticmethod
    def matches(cell: nn.Cell) -> bool:
        return isinstance(cell, SparseLRLinear) and cell.in_ext == cell.in_features and \
            cell.out_ext == cell.out_features

    def __init__(self, plain: SparseLRLinear) -> None:
        nn.Cell.__init__(self)
        for name in ("in_features", "out_features", "rank", "in_ext", "out_ext", "gating", "has_bias"):
            setattr(self, name, getattr(plain, name))
        self.sparse, self.low_rank, self.gate, self.bias = plain.sparse, plain.low_rank, plain.gate, plain.bias
        # Without a gate the layer averages its terms: a zero logit gives g = sigmoid(0) = 0.5 exactly.
        self.no_gate = (ms.Tensor(np.zeros((1, self.in_features), np.float32)), ms.Tensor(np.zeros(1, np.float32)))
        self.no_bias = ms.Tensor(np.zeros(self.out_features, np.float32))
        self.kernel = CpuSparseLowRank()

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        if x.dtype != ms.float32:
            return super().construct(x)
        gate_weight, gate_bias = (self.gate.weight, self.gate.bias) if self.gating else self.no_gate
        bias = self.bias if self.has_bias else self.no_bias
        shape = x.shape
        y = self.kernel(x.reshape(-1, self.in_features), self.sparse.weight, self.sparse.layout,
                        self.low_rank.lr_weight1, self.low_rank.lr_weight2, gate_weight, gate_bias, bias)
        return y.reshape(shape[:-1] + (self.out_features,))


class FastPixelflyMlp(_SgemmTwin, Mlp):
    """An MLP of two Pixelfly layers, each ``FastSparseLRLinear``, around the kernel GELU; the hidden activation
    stays token-major (the tiles of the plain ``Mlp.hidden_as_tiles`` serve MindSpore's own operators)."""

    @staticmethod
    def matches(cell: nn.Cell) -> bool:
        return isinstance(cell, Mlp) and FastSparseLRLinear.matches(cell.fc1) and FastSparseLRLinear.matches(cell.fc2)

    def __init__(self, plain: Mlp) -> None:
        nn.Cell.__init__(self)
        self.fc1 = FastSparseLRLinear(plain.fc1)
        self.act = FastGELU(plain.act) if is_exact_gelu(plain.act) else plain.act
        self.drop1 = plain.drop1
        self.fc2 = FastSparseLRLinear(plain.fc2)
        self.drop2 = plain.drop2
        self.hidden_as_tiles = False


def _monarch_pair(fc1: nn.Cell, fc2: nn.Cell, fusable) -> bool:
    return FastMonarchLinear.applies(fc1) and FastMonarchLinear.applies(fc2) and fusable(fc1, fc2)


class FastMlp(Mlp):
    """Two Monarch layers around the exact GELU as one block-major computation (``fused.monarch_mlp``)."""

    @staticmethod
    def applies(cell: nn.Cell) -> bool:
        return isinstance(cell, Mlp) and is_exact_gelu(cell.act) and _monarch_pair(cell.fc1, cell.fc2, pair_fusable)

    def __init__(self, plain: Mlp) -> None:
        nn.Cell.__init__(self)
        self.fc1 = FastMonarchLinear(plain.fc1)
        self.act = plain.act
        self.drop1 = plain.drop1
        self.fc2 = FastMonarchLinear(plain.fc2)
        self.drop2 = plain.drop2
        self.bias_gelu_regroup = CpuBiasGeluRegroup()

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        if x.dtype != ms.float32:
            return super().construct(x)
        return self.drop2(monarch_mlp(x, self.fc1, self.bias_gelu_regroup, self.drop1, self.fc2))


class _TokenProjection(nn.Cell):
    """``weight @ v + bias[:, None]`` for every sample of ``v`` ``(N, T, C)``: gMLP's linear map across tokens,
    read as it lies (no transposes). The backward sums the bias gradient along contiguous rows first (autodiff
    reduces over a strided axis, slowly on CPU). With ``add_bias=False`` the bias is left to the caller."""

    def __init__(self, add_bias: bool = True) -> None:
        super().__init__()
        self.add_bias = add_bias

    def construct(self, v: ms.Tensor, weight: ms.Tensor, bias: ms.Tensor) -> ms.Tensor:
        if self.add_bias:
            return ops.matmul(weight, v) + bias.reshape(-1, 1)
        return ops.matmul(weight, v)

    def bprop(self, v, weight, bias, out, dout):
        dv = ops.matmul(weight.transpose(1, 0), dout)
        dweight = _bmm_nt(dout, v).sum(0)
        dbias = dout.sum(-1).sum(0) if self.add_bias else ops.zeros_like(bias)
        return dv, dweight, dbias


class FastSpatialGatingUnit(SpatialGatingUnit):
    """gMLP's gating unit with the kernel LayerNorm and a transpose-free token projection; ``construct_reordered``
    gates halves in ``fused.monarch_gated_mlp``'s feature order."""

    @staticmethod
    def applies(cell: nn.Cell) -> bool:
        return isinstance(cell, SpatialGatingUnit)

    def __init__(self, plain: SpatialGatingUnit) -> None:
        nn.Cell.__init__(self)
        self.norm = FastLayerNorm(plain.norm)
        self.proj = plain.proj
        self.token_projection = _TokenProjection()
        self.token_product = _TokenProjection(add_bias=False)
        self.gate_to_blocks = CpuGateToBlocks()  # the bias add, the gating product and fc2's block gather

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        if x.dtype != ms.float32:
            return super().construct(x)
        u, v = ops.split(x, x.shape[-1] // 2, axis=-1)
        v = self.norm(v)
        return u * self.token_projection(v, self.proj.weight, self.proj.bias)

    def construct_reordered(self, u: ms.Tensor, v: ms.Tensor, feature_order: tuple) -> ms.Tensor:
        """The gate on float32 halves ``(N, T, C)`` whose features come in ``monarch_gated_mlp``'s order; returns
        fc2's input blocks ``(k, N*T, C/k)``, ``k = feature_order[0]``."""
        gamma = reorder_features(self.norm.gamma, feature_order)
        beta = reorder_features(self.norm.beta, feature_order)
        v = self.norm.normalize(v, gamma, beta)
        k = feature_order[0]
        rows = u.shape[0] * u.shape[1]
        p = self.token_product(v, self.proj.weight, self.proj.bias)
        return self.gate_to_blocks(u.reshape(rows, k, -1), p.reshape(rows, k, -1), self.proj.bias)


class FastGatedMlp(GatedMlp):
    """gMLP's gated MLP with two Monarch layers, block-major from fc1 to fc2 (``fused.monarch_gated_mlp``)."""

    @staticmethod
    def applies(cell: nn.Cell) -> bool:
        return isinstance(cell, GatedMlp) and is_exact_gelu(cell.act) and \
            isinstance(cell.gate, SpatialGatingUnit) and _monarch_pair(cell.fc1, cell.fc2, gated_pair_fusable)

    def __init__(self, plain: GatedMlp) -> None:
        nn.Cell.__init__(self)
        self.fc1 = FastMonarchLinear(plain.fc1)
        self.act = plain.act
        self.drop1 = plain.drop1
        self.gate = FastSpatialGatingUnit(plain.gate)
        self.fc2 = FastMonarchLinear(plain.fc2)
        self.drop2 = plain.drop2
        self.bias_gelu_split = CpuBiasGeluSplit()

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        if x.dtype != ms.float32:
            return super().construct(x)
        return self.drop2(monarch_gated_mlp(x, self.fc1, self.bias_gelu_split, self.drop1, self.gate, self.fc2))


# In the order accelerate tries them: a fused MLP takes its layers with it.
FAST_CELLS = (FastMlp, FastPixelflyMlp, FastGatedMlp, FastMonarchLinear, FastSketchStructuredLinear,
              FastSparseLRLinear, FastSpatialGatingUnit, FastLayerNorm, FastGELU)
