"""Accelerated twins of the plain cells, on the CPU kernels.

Each twin is made from a plain cell and holds that cell's Parameter objects (same names, shapes and values), so
checkpoints, optimizer state and EMA do not notice the swap. Each subclasses its plain cell and falls back to the
plain ``construct`` for inputs other than float32, so a twin is never wrong, only sometimes not faster.

A twin does not re-run its plain cell's constructor, nor copy attributes one by one: ``_Twin.__init__`` takes over
the plain cell's whole state (parameters, sub-cells, buffers, flags, attributes: whatever the plain class has, now
or later), and each twin then adds its kernels and swaps in the twins of its sub-cells.
"""
from typing import Tuple

import mindspore as ms
from mindspore import nn, ops

import numpy as np

from ..layers import GatedMlp, MonarchLinear, Mlp, PixelflyMlp, SketchStructuredLinear, SparseLRLinear, is_exact_gelu
from ..layers.ssl import SSL_BLOCK_K, SSL_VEC
from ..models.gmlp import SpatialGatingUnit
from .cpu_kernels import (CpuBiasGeluRegroup, CpuBiasGeluSplit, CpuBlocksMatmul, CpuColumnsOfFlat, CpuColumnsOfRows,
                          CpuColumnsOfRowsBias, CpuGateToBlocks, CpuGelu, CpuLayerNorm, CpuSparseLowRank,
                          CpuSslChunkSum, cpu_sgemm_available)
from .fused import gated_pair_fusable, monarch_forward, monarch_gated_mlp, monarch_mlp, pair_fusable, reorder_features

__all__ = ["FastGELU", "FastLayerNorm", "FastMonarchLinear", "FastSketchStructuredLinear", "FastSparseLRLinear",
           "FastMlp", "FastPixelflyMlp", "FastGatedMlp", "FastSpatialGatingUnit", "FAST_CELLS", "sgemm_unavailable",
           "bound_state"]

_bmm_nt = ops.BatchMatMul(transpose_b=True)

# What a twin carries over of the state ``nn.Cell.__init__`` makes: the cell's configuration (training mode, phase,
# requires_grad, parameter-name prefix, mixed precision, forward hooks). Every other name that constructor makes is
# MindSpore's record of the object itself (compile caches registered under ``id(cell)`` and dropped by
# ``Cell.__del__``, creation time, compile state, parallel layouts, recompute and hook bookkeeping): a twin keeps
# its own, as made for it. Everything the plain class itself set (its layers, settings and kernels' inputs) the twin
# takes over.
_CELL_INIT_STATE = frozenset(vars(nn.Cell()))
CELL_CARRIED = frozenset({
    "training", "requires_grad", "_phase", "_param_prefix", "_auto_prefix", "mixed_precision_type", "_amp_level",
    "_lazy_forward_pre_hook", "_lazy_forward_hook", "_lazy_forward_pre_hook_with_kwargs",
    "_lazy_forward_hook_with_kwargs", "_lazy_forward_hook_always_called"}) & (_CELL_INIT_STATE | {"_amp_level"})
# The registries ``Cell.__setattr__`` files parameters, sub-cells, buffers and primitives in: a twin takes over
# copies with the same entries, so adding its kernels and swapping in twins of sub-cells leaves the plain cell whole.
CELL_REGISTRIES = ("_params", "_cells", "_buffers", "_params_list", "_primitives")
CELL_OWN_STATE = _CELL_INIT_STATE - CELL_CARRIED - frozenset(CELL_REGISTRIES)
# State MindSpore builds around the cell object itself (it would run the plain cell, not its twin): PyNative
# backward hooks, the recompute wrapper and the shard wrapper. A cell that has any is left plain (``bound_state``).
_BOUND_TO_CELL = ("_cell_backward_pre_hook", "_cell_backward_hook", "_recompute_cell", "_shard_fn")


def bound_state(cell: nn.Cell) -> Tuple[str, ...]:
    """What ``cell`` has that MindSpore built around the cell object itself, so that no twin can take it over:
    ``backward hooks``, ``recompute``, ``shard``. Empty for a cell a twin can be made from."""
    kinds = {"_cell_backward_pre_hook": "backward hooks", "_cell_backward_hook": "backward hooks",
             "_recompute_cell": "recompute", "_shard_fn": "shard"}
    return tuple(sorted({kinds[name] for name in _BOUND_TO_CELL if vars(cell).get(name) is not None}))


def sgemm_unavailable() -> str:
    """Why the twins that multiply on oneDNN's sgemm cannot serve on this machine, or '' when they can."""
    if cpu_sgemm_available():
        return ""
    return f"MindSpore {ms.__version__} here has no oneDNN sgemm (dnnl_sgemm in libdnnl.so.3), which it multiplies on"


class _Twin:
    """Base of the twins (first in each twin's bases): ``Twin(plain)`` is the plain cell, taken over.

    ``__init__`` makes the Cell internals of the new object with ``nn.Cell.__init__`` (not the plain class's
    constructor), then takes over everything else in the plain cell's ``__dict__`` by reference: its parameters,
    sub-cells, buffers and primitives (in copies of its registries, ``CELL_REGISTRIES``), its flags, training mode,
    AMP level and forward hooks, and all of its own attributes. A subclass then adds its kernels and swaps in twins
    of sub-cells with ``adopt``. Parameter objects and their names stay as they are.

    ``matches(cell)`` says whether a cell is of the twin's kind, ``unavailable()`` why the twin cannot serve on this
    machine ('' when it can); ``applies`` is both.
    """

    @staticmethod
    def unavailable() -> str:
        return ""

    @staticmethod
    def matches(cell: nn.Cell) -> bool:
        raise NotImplementedError

    @classmethod
    def applies(cls, cell: nn.Cell) -> bool:
        return cls.matches(cell) and not cls.unavailable()

    def __init__(self, plain: nn.Cell) -> None:
        bound = bound_state(plain)
        if bound:
            raise ValueError(f"{type(self).__name__} cannot be made from a {type(plain).__name__} with "
                             f"{' and '.join(bound)}: set those on the accelerated network")
        nn.Cell.__init__(self)
        state = vars(self)
        for name, value in vars(plain).items():
            if name in CELL_OWN_STATE:
                continue
            state[name] = type(value)(value) if name in CELL_REGISTRIES else value

    def adopt(self, name: str, twin: nn.Cell) -> None:
        """Put ``twin`` (of the sub-cell ``name``) in that sub-cell's place. Unlike ``setattr``, which names a
        sub-cell's parameters ``name.*`` only, this keeps their names."""
        self.insert_child_to_cell(name, twin)


class _SgemmTwin(_Twin):
    """A twin on oneDNN's sgemm: it applies to the cells of its kind (``matches``, each twin's own) where the machine
    has sgemm; elsewhere ``unavailable()`` says why (``accel.declined_twins``)."""

    unavailable = staticmethod(sgemm_unavailable)


class FastGELU(_Twin, nn.GELU):
    """Exact GELU, one fused kernel forward and one backward (~6 ms instead of ~30 ms on 1568x3072)."""

    @staticmethod
    def matches(cell: nn.Cell) -> bool:
        return is_exact_gelu(cell)

    def __init__(self, plain: nn.GELU) -> None:
        super().__init__(plain)
        self.kernel = CpuGelu()

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        if x.dtype == ms.float32:
            return self.kernel(x)
        return super().construct(x)


class FastLayerNorm(_Twin, nn.LayerNorm):
    """LayerNorm over the last axis, forward and backward each one kernel (MindSpore's CPU ``LayerNormGrad`` is ~2x
    slower than elementwise code, its forward ~7x slower than the kernel on 1568x768)."""

    @staticmethod
    def matches(cell: nn.Cell) -> bool:
        return isinstance(cell, nn.LayerNorm) and len(cell.normalized_shape) == 1 and \
            cell.begin_norm_axis == -1 and cell.begin_params_axis == -1

    def __init__(self, plain: nn.LayerNorm) -> None:
        super().__init__(plain)
        self.kernel = CpuLayerNorm(self.epsilon)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        if x.dtype == ms.float32:
            return self.kernel(x, self.gamma, self.beta)
        return super().construct(x)

    def normalize(self, x: ms.Tensor, gamma: ms.Tensor, beta: ms.Tensor) -> ms.Tensor:
        """The same normalisation of float32 ``x`` with given parameters (this layer's, reordered to ``x``'s
        features)."""
        return self.kernel(x, gamma, beta)


class FastMonarchLinear(_Twin, MonarchLinear):
    """``MonarchLinear`` with its batched matmuls on oneDNN's sgemm (``CpuBlocksMatmul``; the first reads the
    input's blocks in place) and each permutation (between the factors, output with the bias) one kernel pass.
    Unpadded layers only."""

    @staticmethod
    def matches(cell: nn.Cell) -> bool:
        return isinstance(cell, MonarchLinear) and cell.in_features_extended == cell.in_features and \
            cell.out_features_extended == cell.out_features

    def __init__(self, plain: MonarchLinear) -> None:
        super().__init__(plain)
        blocks1, blocks2 = self.blkdiag1.shape[0], self.blkdiag2.shape[0]  # k and l of fused.py
        sgemm = cpu_sgemm_available()
        self.cpu_matmul1 = CpuBlocksMatmul() if sgemm else None
        self.cpu_matmul2 = CpuBlocksMatmul() if sgemm else None
        self.cpu_split = None if sgemm else CpuColumnsOfRows(blocks1, 1)
        self.cpu_stage1 = CpuColumnsOfFlat(blocks2, blocks1)
        self.cpu_output = CpuColumnsOfRowsBias(1, blocks2) if self.has_bias else CpuColumnsOfRows(1, blocks2)

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
        super().__init__(plain)
        self.chunk_shifts = ms.Tensor(np.array([v * SSL_VEC for v in self.vector_shifts], np.int32))
        # The sketch keeps K-step order (t, i); the plain layer's index is in (q, t, v) order with i = q*VEC + v.
        compressed = self.in_features // self.redn_factor
        steps, vectors = compressed // SSL_BLOCK_K, SSL_BLOCK_K // SSL_VEC
        plain_index = self.weight_index.asnumpy().reshape(vectors, steps, SSL_VEC, self.out_features)
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
        super().__init__(plain)
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


class FastPixelflyMlp(_SgemmTwin, PixelflyMlp):
    """``PixelflyMlp`` of two Pixelfly layers, each ``FastSparseLRLinear``, around the kernel GELU; the hidden
    activation stays token-major (the plain MLP's tiles, ``hidden_as_tiles``, serve MindSpore's own operators)."""

    @staticmethod
    def matches(cell: nn.Cell) -> bool:
        return isinstance(cell, PixelflyMlp) and FastSparseLRLinear.matches(cell.fc1) and \
            FastSparseLRLinear.matches(cell.fc2)

    def __init__(self, plain: PixelflyMlp) -> None:
        super().__init__(plain)
        self.adopt("fc1", FastSparseLRLinear(self.fc1))
        if is_exact_gelu(self.act):
            self.adopt("act", FastGELU(self.act))
        self.adopt("fc2", FastSparseLRLinear(self.fc2))
        self.hidden_as_tiles = False

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        # Mlp's formula. Not through PixelflyMlp.construct: in graph mode its super() resolves from this class,
        # back to PixelflyMlp.construct, without end.
        x = self.drop1(self.act(self.fc1(x)))
        return self.drop2(self.fc2(x))


def _monarch_pair(fc1: nn.Cell, fc2: nn.Cell, fusable) -> bool:
    return FastMonarchLinear.applies(fc1) and FastMonarchLinear.applies(fc2) and fusable(fc1, fc2)


class FastMlp(_Twin, Mlp):
    """Two Monarch layers around the exact GELU as one block-major computation (``fused.monarch_mlp``)."""

    @staticmethod
    def matches(cell: nn.Cell) -> bool:
        return isinstance(cell, Mlp) and is_exact_gelu(cell.act) and _monarch_pair(cell.fc1, cell.fc2, pair_fusable)

    def __init__(self, plain: Mlp) -> None:
        super().__init__(plain)
        self.adopt("fc1", FastMonarchLinear(self.fc1))
        self.adopt("fc2", FastMonarchLinear(self.fc2))
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


class FastSpatialGatingUnit(_Twin, SpatialGatingUnit):
    """gMLP's gating unit with the kernel LayerNorm and a transpose-free token projection; ``construct_reordered``
    gates halves in ``fused.monarch_gated_mlp``'s feature order."""

    @staticmethod
    def matches(cell: nn.Cell) -> bool:
        return isinstance(cell, SpatialGatingUnit)

    def __init__(self, plain: SpatialGatingUnit) -> None:
        super().__init__(plain)
        self.adopt("norm", FastLayerNorm(self.norm))
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


class FastGatedMlp(_Twin, GatedMlp):
    """gMLP's gated MLP with two Monarch layers, block-major from fc1 to fc2 (``fused.monarch_gated_mlp``)."""

    @staticmethod
    def matches(cell: nn.Cell) -> bool:
        return isinstance(cell, GatedMlp) and is_exact_gelu(cell.act) and \
            isinstance(cell.gate, SpatialGatingUnit) and _monarch_pair(cell.fc1, cell.fc2, gated_pair_fusable)

    def __init__(self, plain: GatedMlp) -> None:
        super().__init__(plain)
        self.adopt("fc1", FastMonarchLinear(self.fc1))
        self.adopt("gate", FastSpatialGatingUnit(self.gate))
        self.adopt("fc2", FastMonarchLinear(self.fc2))
        self.bias_gelu_split = CpuBiasGeluSplit()

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        if x.dtype != ms.float32:
            return super().construct(x)
        return self.drop2(monarch_gated_mlp(x, self.fc1, self.bias_gelu_split, self.drop1, self.gate, self.fc2))


# In the order accelerate tries them: a fused MLP takes its layers with it.
FAST_CELLS = (FastMlp, FastPixelflyMlp, FastGatedMlp, FastMonarchLinear, FastSketchStructuredLinear,
              FastSparseLRLinear, FastSpatialGatingUnit, FastLayerNorm, FastGELU)
