"""Pixelfly: flat block butterfly sparsity plus low rank (Chen, Dao et al., "Pixelated Butterfly: Simple and
Efficient Sparse Training for Neural Network Models", ICLR 2022, https://arxiv.org/abs/2112.00029).

``SparseLRLinear`` reproduces HazyResearch/fly's ``src/models/layers/fastlinear.py`` layer of that name with a
``BlockSparseLinear`` on a ``FlatBlockButterflySparsityConfig`` (dense backend): the same parameters under the
same names (``sparse.weight`` (nnz, block, block) in the layout's row-major order, the int32 ``sparse.layout``,
``low_rank.lr_weight1/2``, ``gate.weight/bias``, ``bias``), the same padding and the same initialisation.

The block-sparse product never builds the dense weight when the layout is a Kronecker product of a mask and a
block of ones whose mask is block diagonal (every flat block butterfly layout without ``shuffle`` or
``global_size`` is): it runs as one batched matmul over the diagonal groups (see ``BlockSparseLinear``).
``SparseLRLinear`` mixes its gate on the narrow side of the layer and folds the low-rank term and the bias into
the tiled matmuls, so the backward keeps input-sized tensors and no per-block copies of the activations; the
Pixelfly ``Mlp`` hands fc1's output to fc2 as tiles. Other layouts densify the weight with a gather.

On MindSpore's CPU backend a training step holds several activation-sized buffers per Transpose and per
implicitly broadcast product until the step ends (measured: ~8.7 activation copies per transpose pair or
broadcast product, against ~1 for slices, stacks and explicit broadcasts), so the tiles are slices and the gate's
products broadcast explicitly.
"""
import math
from typing import Optional, Tuple

import numpy as np

import mindspore as ms
from mindspore import nn, ops
from mindspore.common import initializer as init

from .mlp import Mlp
from .structured import StructuredLinear, check_positive_int, register_linear

__all__ = ["butterfly_base_mask", "flat_block_butterfly_layout", "BlockSparseLinear", "LowRank", "SparseLRLinear",
           "FlatBlockButterflyLinear", "PixelflyMlp", "PRODUCTS"]

_bmm_nt = ops.BatchMatMul(transpose_b=True)


def butterfly_base_mask(butterfly_size: int, n_factors: int) -> np.ndarray:
    """(bs, bs) mask of the first ``n_factors`` butterfly factors: ``i == j`` or ``i ^ j`` a power of two below
    ``2**n_factors``; each row holds ``1 + n_factors`` ones."""
    butterfly_size = check_positive_int("Pixelfly", "butterfly_size", butterfly_size)
    n_factors = check_positive_int("Pixelfly", "n_factors", n_factors)
    log_size = int(math.log2(butterfly_size))
    if butterfly_size < 2 or 2 ** log_size != butterfly_size:
        raise ValueError(f"Pixelfly: butterfly_size must be a power of 2 and >= 2, got {butterfly_size}")
    if n_factors > log_size:
        raise ValueError(f"Pixelfly: n_factors must be at most log2(butterfly_size) = {log_size}, got {n_factors}")
    index = np.arange(butterfly_size)
    xor = index[:, None] ^ index[None, :]
    return (xor == 0) | np.isin(xor, [2 ** k for k in range(n_factors)])


def flat_block_butterfly_layout(out_ext: int, in_ext: int, butterfly_size: int, n_factors: int, block: int,
                                global_size: int = 0, shuffle: bool = False) -> np.ndarray:
    """fly's ``FlatBlockButterflySparsityConfig.make_layout``: the (out_ext/block, in_ext/block) int32 block mask.

    The butterfly base mask is stretched over the element grid in contiguous groups, then any element in a
    ``block`` x ``block`` tile keeps the tile.
    """
    block = check_positive_int("Pixelfly", "block", block)
    if out_ext % block or in_ext % block:
        raise ValueError(f"Pixelfly: extended sizes ({out_ext}, {in_ext}) must be multiples of block {block}")
    base = butterfly_base_mask(butterfly_size, n_factors)
    if shuffle:  # fly's 'm (group c) -> m (c group)' on the base's columns
        groups = 2 ** (int(math.log2(butterfly_size)) - n_factors)
        base = base.reshape(butterfly_size, groups, -1).transpose(0, 2, 1).reshape(butterfly_size, butterfly_size)
    if out_ext < butterfly_size or in_ext < butterfly_size:
        raise ValueError(f"Pixelfly: layer sizes ({out_ext}, {in_ext}) must be at least butterfly_size "
                         f"{butterfly_size}")
    rows = np.arange(out_ext) // (out_ext // butterfly_size)
    cols = np.arange(in_ext) // (in_ext // butterfly_size)
    elements = base[np.minimum(rows, butterfly_size - 1)][:, np.minimum(cols, butterfly_size - 1)]
    if global_size > 0:
        elements[:global_size, :] = True
        elements[:, :global_size] = True
    tiles = elements.reshape(out_ext // block, block, in_ext // block, block)
    return tiles.any(axis=(1, 3)).astype(np.int32)


def _kron_factor(layout: np.ndarray) -> Optional[Tuple[np.ndarray, int, int]]:
    """(mask, a, c) with ``layout == kron(mask, ones(a, c))`` and a, c as large as possible; None if the layout
    has no such form beyond a = c = 1 with an empty row or column."""

    def largest_run(matrix):
        # the largest divisor d of the row count such that rows come in identical groups of d
        count = matrix.shape[0]
        for d in range(count, 0, -1):
            if count % d == 0 and (matrix.reshape(count // d, d, -1) == matrix[::d][:, None, :]).all():
                return d
        return 1

    a, c = largest_run(layout), largest_run(layout.T)
    mask = layout[::a, ::c]
    if not np.array_equal(np.kron(mask, np.ones((a, c), layout.dtype)), layout):
        return None
    return mask, a, c


def _diagonal_groups(mask: np.ndarray) -> int:
    """The largest number of groups g > 1 such that ``mask`` is block diagonal: its rows and columns split into g
    equal runs and every nonzero of row run r lies in column run r. 0 when there is none."""
    rows, cols = mask.shape
    for groups in range(math.gcd(rows, cols), 1, -1):
        if rows % groups or cols % groups:
            continue
        row_group = np.arange(rows)[:, None] // (rows // groups)
        col_group = np.arange(cols)[None, :] // (cols // groups)
        if not mask[row_group != col_group].any():
            return groups
    return 0


PRODUCTS = ("auto", "block_diagonal", "densify")


class BlockSparseLinear(nn.Cell):
    """fly's ``BlockSparseLinear`` (no bias here): ``weight`` (nnz, block, block) on a fixed block ``layout``.

    Works on the extended (block-padded) sizes; ``SparseLRLinear`` pads and slices around it.

    - ``block_diagonal`` (chosen by ``auto`` when the layout allows): when the layout is ``kron(mask, ones)`` and
      the mask is block diagonal over g groups, the product is one batched matmul of the input's g column runs
      against g dense tiles gathered from the weight (zero blocks inside a tile stay zero). A flat block
      butterfly with ``n_factors`` f has groups of 2**f base rows, so the work is 2**f / butterfly_size of dense
      (1/2 for Pixelfly's 8 and 2, whose layout holds 3/8). The layer keeps one copy of its input for the
      backward, as a dense layer does: no per-block copies of the activations, no scatter of the outputs.
    - ``densify``: build the (out, in) weight with a gather and multiply densely, for any other layout (fly's
      ``shuffle`` or ``global_size`` ones).
    """

    torch_buffers = ("layout",)  # a buffer in PyTorch: in checkpoints, not counted as a parameter
    checkpoint_must_match = ("layout",)  # the product is built from the computed layout

    def __init__(self, in_ext: int, out_ext: int, layout: np.ndarray, block: int, product: str = "auto") -> None:
        super().__init__()
        if product not in PRODUCTS:
            raise ValueError(f"BlockSparseLinear: product must be one of {PRODUCTS}, got {product!r}")
        self.in_ext, self.out_ext, self.block = in_ext, out_ext, block
        layout = np.asarray(layout, np.int32)
        if layout.shape != (out_ext // block, in_ext // block):
            raise ValueError(f"BlockSparseLinear: layout shape {layout.shape} does not fit ({out_ext}, {in_ext}) "
                             f"with block {block}")
        self.layout_array = layout
        nnz = int(layout.sum())
        self.weight = ms.Parameter(ms.Tensor(np.zeros((nnz, block, block), np.float32)), name="weight")
        self.layout = ms.Parameter(ms.Tensor(layout), name="layout", requires_grad=False)
        # Position of every block of the (rows, cols) grid in fly's row-major weight; nnz marks a zero block.
        position = np.full(layout.shape, nnz, np.int32)
        position[layout.astype(bool)] = np.arange(nnz, dtype=np.int32)
        self.dense_index = ms.Tensor(position.reshape(-1))

        factor = _kron_factor(layout)
        groups = _diagonal_groups(factor[0]) if factor is not None else 0
        if product == "auto":
            product = "block_diagonal" if groups else "densify"
        elif product == "block_diagonal" and not groups:
            raise ValueError("BlockSparseLinear: product 'block_diagonal' needs a layout kron(mask, ones) with a "
                             "block-diagonal mask; use 'densify'")
        self.product = product
        self.groups = groups if product == "block_diagonal" else 1
        if product == "block_diagonal":
            # Group k's tile: block rows k*R .. (k+1)*R - 1 by block columns k*C .. (k+1)*C - 1 of the layout.
            rows, cols = layout.shape[0] // groups, layout.shape[1] // groups
            block_rows = np.arange(groups)[:, None] * rows + np.arange(rows)[None, :]
            block_cols = np.arange(groups)[:, None] * cols + np.arange(cols)[None, :]
            self.tile_index = ms.Tensor(position[block_rows[:, :, None], block_cols[:, None, :]].reshape(-1))
            self.tile_blocks = (groups, rows, cols)

    def dense_weight(self) -> ms.Tensor:
        """The (out_ext, in_ext) weight with zeros outside the layout."""
        return self._densify(self.weight)

    def _with_zero_block(self, weight: ms.Tensor) -> ms.Tensor:
        b = self.block
        return ops.concat((weight, ops.zeros((1, b, b), weight.dtype)), axis=0)  # index nnz reads zeros

    def _densify(self, weight: ms.Tensor) -> ms.Tensor:
        rows, cols = self.layout_array.shape
        b = self.block
        blocks = ops.gather(self._with_zero_block(weight), self.dense_index, 0)
        return blocks.reshape(rows, cols, b, b).transpose(0, 2, 1, 3).reshape(rows * b, cols * b)

    def tiles(self, x: ms.Tensor) -> ms.Tensor:
        """(T, in_ext) -> (groups, T, in_ext / groups): the input's column runs, one per group."""
        # Slices and a stack, not a transpose (see the module docstring: memory on the CPU backend)
        width = x.shape[1] // self.groups
        return ops.stack([x[:, k * width:(k + 1) * width] for k in range(self.groups)], axis=0)

    @staticmethod
    def untile(tiles: ms.Tensor) -> ms.Tensor:
        """(groups, T, w) -> (T, groups * w), the inverse of ``tiles``."""
        return ops.concat([tiles[k] for k in range(tiles.shape[0])], axis=1)

    def tile_weights(self, dtype) -> ms.Tensor:
        """(groups, out_ext / groups, in_ext / groups): each group's dense tile, for ``tiles @ w^T``."""
        groups, rows, cols = self.tile_blocks
        b = self.block
        blocks = ops.gather(self._with_zero_block(ops.cast(self.weight, dtype)), self.tile_index, 0)
        # Only whole rows of blocks move: the transpose keeps each block row's b entries together
        return blocks.reshape(groups, rows, cols, b, b).transpose(0, 1, 3, 2, 4).reshape(groups, rows * b, cols * b)

    def multiply_tiles(self, tiles: ms.Tensor) -> ms.Tensor:
        """(groups, T, in_ext / groups) -> (T, out_ext); ``block_diagonal`` only."""
        return self.untile(_bmm_nt(tiles, self.tile_weights(tiles.dtype)))  # from (groups, T, out_ext / groups)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        """(T, in_ext) -> (T, out_ext)."""
        if self.product == "densify":
            return ops.matmul(x, self._densify(ops.cast(self.weight, x.dtype)).transpose(1, 0))
        return self.multiply_tiles(self.tiles(x))


class LowRank(nn.Cell):
    """``x -> x W1^T W2^T`` with ``lr_weight1`` (rank, in) and ``lr_weight2`` (out, rank), no bias."""

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        self.lr_weight1 = ms.Parameter(ms.Tensor(np.zeros((rank, in_features), np.float32)), name="lr_weight1")
        self.lr_weight2 = ms.Parameter(ms.Tensor(np.zeros((out_features, rank), np.float32)), name="lr_weight2")

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        hidden = ops.matmul(x, ops.cast(self.lr_weight1, x.dtype).transpose(1, 0))
        return ops.matmul(hidden, ops.cast(self.lr_weight2, x.dtype).transpose(1, 0))


def check_layout_settings(owner: str, butterfly_size: int = 16, n_factors: int = 2, block: int = 32, **_) -> None:
    """A flat block butterfly layout's settings, checked before any layer is built (``linear_layer``)."""
    butterfly_base_mask(butterfly_size, n_factors)  # validates both
    check_positive_int(owner, "block", block)


def _kaiming_uniform(shape) -> np.ndarray:
    # PyTorch's nn.Linear default (kaiming_uniform_ with a = sqrt(5)), drawn from MindSpore's seeded generator.
    return init.initializer(init.HeUniform(negative_slope=math.sqrt(5)), shape, ms.float32).init_data().asnumpy()


def _xavier_uniform(shape) -> np.ndarray:
    return init.initializer(init.XavierUniform(), shape, ms.float32).init_data().asnumpy()


def leading_svd(matrix: np.ndarray, rank: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``rank`` leading singular triplets ``(u, s, vt)`` of a float64 matrix, largest first.

    From the eigenvectors of the smaller Gram matrix: at 3072x768 that takes 0.1 s against a full SVD's 0.7 s,
    which Pixelfly Mixer-B would pay 24 times. Squaring the matrix only costs accuracy in the small singular
    values; the leading ones of a random init are far from zero.
    """
    transpose = matrix.shape[0] < matrix.shape[1]
    tall = matrix.T if transpose else matrix
    eigenvalues, eigenvectors = np.linalg.eigh(tall.T @ tall)
    order = np.argsort(eigenvalues)[::-1][:rank]
    s = np.sqrt(np.maximum(eigenvalues[order], 0.0))
    v = eigenvectors[:, order]
    u = tall @ v / np.where(s > 0, s, 1.0)
    return (v, s, u.T) if transpose else (u, s, v.T)


@register_linear("pixelfly")
class SparseLRLinear(StructuredLinear):
    r"""Pixelfly linear layer: flat block butterfly block-sparse plus low rank, mixed by a per-token gate.

    ``y = (1 - g) * sparse(x) + g * low_rank(x) + bias`` with ``g = sigmoid(gate(x))`` (one scalar per token;
    0.5 without gating). The sparse part works on the input zero-padded to a multiple of ``block`` and its
    output is sliced back; the gate and the low-rank part use the true sizes.

    Args:
        in_features, out_features: layer sizes.
        butterfly_size: size of the butterfly base mask (a power of 2). Default: 8.
        n_factors: butterfly factors in the base mask (at most log2(butterfly_size)). Default: 2.
        block: side of the sparse blocks. Default: 32.
        rank: rank of the low-rank term; a float is a fraction of min(in, out). Default: 32.
        gating: learn the mixing gate (else a constant 0.5). Default: True.
        has_bias: add a bias. Default: True.
        global_size, shuffle: fly's optional global rows/columns and shuffled base columns. Default: off.
    """

    def __init__(self, in_features: int, out_features: int, butterfly_size: int = 8, n_factors: int = 2,
                 block: int = 32, rank=32, gating: bool = True, has_bias: bool = True, global_size: int = 0,
                 shuffle: bool = False) -> None:
        super().__init__(in_features, out_features, has_bias)
        owner = "SparseLRLinear"
        block = check_positive_int(owner, "block", block)
        if isinstance(rank, float):
            rank = int(rank * min(in_features, out_features))
        self.rank = check_positive_int(owner, "rank", rank)
        self.in_ext = math.ceil(in_features / block) * block
        self.out_ext = math.ceil(out_features / block) * block
        layout = flat_block_butterfly_layout(self.out_ext, self.in_ext, butterfly_size, n_factors, block,
                                             global_size, shuffle)
        self.sparse = BlockSparseLinear(self.in_ext, self.out_ext, layout, block)
        self.low_rank = LowRank(in_features, out_features, self.rank)
        self.gating = gating
        self.gate = nn.Dense(in_features, 1) if gating else None
        self.butterfly_size, self.n_factors, self.block = butterfly_size, n_factors, block
        self.global_size, self.shuffle = global_size, shuffle
        self.init_bias(None)
        self.reset_parameters()

    @classmethod
    def check_settings(cls, **settings) -> None:
        check_layout_settings(cls.__name__, **settings)

    def macs_per_token(self) -> int:
        """The layout's blocks, the two low-rank factors and the gate's row."""
        gate = self.in_features if self.gating else 0
        return self.sparse.weight.size + self.low_rank.lr_weight1.size + self.low_rank.lr_weight2.size + gate

    def to_dense(self) -> ms.Tensor:
        """The dense ``(out_features, in_features)`` weight of the ungated layer, ``(S + L) / 2``. A gated layer has
        none: its gate mixes the two terms per token."""
        if self.gating:
            raise ValueError("SparseLRLinear.to_dense: a gated layer mixes its sparse and low-rank terms per token, "
                             "so no single dense weight stands for it; build it with gating=False")
        sparse = self.sparse.dense_weight().asnumpy()[:self.out_features, :self.in_features]
        low_rank = self.low_rank.lr_weight2.asnumpy() @ self.low_rank.lr_weight1.asnumpy()
        return ms.Tensor(((sparse + low_rank) / 2).astype(np.float32))

    def _widening_weights(self, dtype) -> ms.Tensor:
        """[sparse tiles | lr_weight2 | bias] as (groups, out/groups, in/groups + rank [+ 1])."""
        groups = self.sparse.groups
        parts = [ops.cast(self.low_rank.lr_weight2, dtype)]  # (out, rank)
        if self.has_bias:
            parts.append(ops.cast(self.bias, dtype).reshape(-1, 1))
        columns = ops.concat(parts, axis=1) if len(parts) > 1 else parts[0]
        if self.out_ext != self.out_features:
            columns = ops.pad(columns, (0, 0, 0, self.out_ext - self.out_features))
        return ops.concat((self.sparse.tile_weights(dtype), columns.reshape(groups, -1, columns.shape[1])), axis=2)

    def _narrowing_reads(self, dtype) -> ms.Tensor:
        """[lr_weight1 ; gate] as (groups, rank [+ 1], in/groups): what the low rank and the gate read of the tiles."""
        parts = [ops.cast(self.low_rank.lr_weight1, dtype)]
        if self.gating:
            parts.append(ops.cast(self.gate.weight, dtype))
        reads = ops.concat(parts, axis=0) if len(parts) > 1 else parts[0]  # (rank [+ 1], in)
        if self.in_ext != self.in_features:
            reads = ops.pad(reads, (0, self.in_ext - self.in_features))
        return reads.reshape(reads.shape[0], self.sparse.groups, -1).transpose(1, 0, 2)

    @property
    def saving(self) -> float:
        """Sparse and low-rank weights relative to a dense (out, in) weight (fly's ``saving``; gate and bias aside)."""
        count = self.sparse.weight.size + self.low_rank.lr_weight1.size + self.low_rank.lr_weight2.size
        return count / (self.in_features * self.out_features)

    def _set_sparse_from_dense(self, dense: np.ndarray) -> None:
        # fly scales each row by sqrt(block-columns / nonzero blocks in its block-row), repeating the per-block-row
        # scales with period n_rows over the rows (a quirk; equal scales make it harmless for butterflies).
        layout = self.sparse.layout_array
        rows, cols = layout.shape
        scale = np.sqrt(cols / layout.sum(axis=1))
        dense = dense * np.tile(scale, self.out_ext // rows + 1)[:self.out_ext, None]
        b = self.sparse.block
        blocks = dense.reshape(rows, b, cols, b).transpose(0, 2, 1, 3).reshape(rows * cols, b, b)
        self.sparse.weight.set_data(ms.Tensor(blocks[np.flatnonzero(layout.reshape(-1))].astype(np.float32)))

    def reset_parameters(self) -> None:
        """fly's standalone initialisation (PyTorch's Linear defaults on each part)."""
        self._set_sparse_from_dense(_kaiming_uniform((self.out_ext, self.in_ext)))
        self.low_rank.lr_weight1.set_data(ms.Tensor(_kaiming_uniform(self.low_rank.lr_weight1.shape)))
        self.low_rank.lr_weight2.set_data(ms.Tensor(_kaiming_uniform(self.low_rank.lr_weight2.shape)))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.out_features)  # fly takes the bias length as fan-in
            self.bias.set_data(init.initializer(init.Uniform(bound), self.bias.shape, ms.float32))

    def set_weights_from_dense_init(self) -> None:
        """fly's MLP-Mixer initialisation: each part from a xavier-uniform dense matrix (the low-rank part by its
        truncated SVD); the bias N(0, 1e-6)."""
        self._set_sparse_from_dense(_xavier_uniform((self.out_ext, self.in_ext)))
        dense = _xavier_uniform((self.out_features, self.in_features)).astype(np.float64)
        u, s, vt = leading_svd(dense, self.rank)
        root = np.sqrt(s)
        self.low_rank.lr_weight2.set_data(ms.Tensor((u * root).astype(np.float32)))
        self.low_rank.lr_weight1.set_data(ms.Tensor((root[:, None] * vt).astype(np.float32)))
        if self.bias is not None:
            self.bias.set_data(init.initializer(init.Normal(1e-6), self.bias.shape, ms.float32))

    @property
    def tiled(self) -> bool:
        """Whether the sparse product runs on tiles (``block_diagonal``), so ``forward_to_tiles`` and
        ``forward_from_tiles`` apply."""
        return self.sparse.product == "block_diagonal"

    def _pad(self, flat: ms.Tensor) -> ms.Tensor:
        return flat if self.in_ext == self.in_features else ops.pad(flat, (0, self.in_ext - self.in_features))

    def _gate(self, logit: ms.Tensor) -> ms.Tensor:
        return ops.sigmoid(logit + ops.cast(self.gate.bias, logit.dtype))

    def _untile(self, tiles: ms.Tensor) -> ms.Tensor:
        out = self.sparse.untile(tiles)
        return out if self.out_ext == self.out_features else out[:, :self.out_features]

    @staticmethod
    def _scale(x: ms.Tensor, per_token: ms.Tensor) -> ms.Tensor:
        # An explicit broadcast and a plain product (see the module docstring: memory on the CPU backend)
        return x * ops.broadcast_to(per_token, x.shape)

    def forward_to_tiles(self, flat: ms.Tensor) -> ms.Tensor:
        """(T, in) -> the output as ``block_diagonal`` tiles (groups, T, out_ext / groups), bias included.

        The gate is one scalar per token, so (1 - g) * S(x) = S((1 - g) * x) and g * W2 W1 x = W2 (g * W1 x): the
        gate scales the narrow input and the rank-wide hidden, and one batched matmul of
        [input tiles | hidden | 1] against [sparse tiles | lr_weight2 | bias] (transposed) gives both terms and
        the bias. The backward keeps input-sized tensors, nothing output-sized.
        """
        groups, dtype, tokens = self.sparse.groups, flat.dtype, flat.shape[0]
        hidden = ops.matmul(flat, ops.cast(self.low_rank.lr_weight1, dtype).transpose(1, 0))
        if self.gating:
            gate = self._gate(ops.matmul(flat, ops.cast(self.gate.weight, dtype).transpose(1, 0)))
            flat, hidden = self._scale(flat, 1 - gate), self._scale(hidden, gate)
        else:
            flat, hidden = flat * 0.5, hidden * 0.5
        # [input tiles | hidden | 1] @ [sparse tiles ; lr_weight2 tiles ; bias]: the bias rides on a column of ones
        operands = [self.sparse.tiles(self._pad(flat)), ops.broadcast_to(hidden.reshape(1, tokens, self.rank),
                                                                         (groups, tokens, self.rank))]
        if self.has_bias:
            operands.append(ops.ones((groups, tokens, 1), dtype))
        return _bmm_nt(ops.concat(operands, axis=2), self._widening_weights(dtype))

    def forward_from_tiles(self, tiles: ms.Tensor) -> ms.Tensor:
        """The input as ``block_diagonal`` tiles (groups, T, in_ext / groups) -> (T, out), bias included.

        Two batched matmuls read the tiles: the sparse term, and, summed over the groups, the low-rank hidden and
        the gate's logit. So the backward keeps only the tiles (the wide input) and the narrow output's terms.
        """
        dtype, rank = tiles.dtype, self.rank
        sparse = self._untile(_bmm_nt(tiles, self.sparse.tile_weights(dtype)))
        projected = _bmm_nt(tiles, self._narrowing_reads(dtype)).sum(0)  # (T, rank [+ 1])
        low_rank = ops.matmul(projected[:, :rank], ops.cast(self.low_rank.lr_weight2, dtype).transpose(1, 0))
        if self.gating:
            y = sparse + self._scale(low_rank - sparse, self._gate(projected[:, rank:]))
        else:
            y = (sparse + low_rank) * 0.5
        return ops.bias_add(y, ops.cast(self.bias, dtype)) if self.has_bias else y

    def _forward_densified(self, flat: ms.Tensor) -> ms.Tensor:
        sparse = self.sparse(self._pad(flat))
        if self.out_ext != self.out_features:
            sparse = sparse[:, :self.out_features]
        low_rank = self.low_rank(flat)
        if self.gating:
            y = sparse + ops.sigmoid(self.gate(flat)) * (low_rank - sparse)
        else:
            y = (sparse + low_rank) * 0.5
        return y + ops.cast(self.bias, y.dtype) if self.has_bias else y

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        if not self.tiled:
            y = self._forward_densified(flat)
        elif self.in_ext <= self.out_ext:  # mix on the narrow side: the input
            y = self._untile(self.forward_to_tiles(flat))
        else:  # ... or the output
            y = self.forward_from_tiles(self.sparse.tiles(self._pad(flat)))
        return y.reshape(shape[:-1] + (self.out_features,))


@register_linear("fbbfly")
class FlatBlockButterflyLinear(BlockSparseLinear):
    r"""A flat block butterfly linear layer without the low-rank term: fly's ``BlockSparseLinear`` with a
    ``FlatBlockButterflySparsityConfig`` and a bias (the ``fbbfly`` variant of fly's structured-MLP benchmark).

    Args:
        in_features, out_features: the layer's widths (padded to whole blocks inside, as fly does).
        butterfly_size, n_factors, block: the layout's settings (fly's names). Defaults: 16, 2, 32, the benchmark's.
        has_bias: add a learnable bias. Default: True.

    Parameters ``weight`` (nonzero blocks, block, block), ``layout`` (a buffer in PyTorch) and ``bias``, as fly names
    them. Initialisation is fly's: a kaiming-uniform dense draw, each row scaled by sqrt(block columns / nonzero
    blocks in its block row), restricted to the layout; the bias U(+-1/sqrt(padded in_features)).
    """

    def __init__(self, in_features: int, out_features: int, butterfly_size: int = 16, n_factors: int = 2,
                 block: int = 32, has_bias: bool = True) -> None:
        owner = "FlatBlockButterflyLinear"
        in_features = check_positive_int(owner, "in_features", in_features)
        out_features = check_positive_int(owner, "out_features", out_features)
        block = check_positive_int(owner, "block", block)
        in_ext = math.ceil(in_features / block) * block
        out_ext = math.ceil(out_features / block) * block
        super().__init__(in_ext, out_ext, flat_block_butterfly_layout(out_ext, in_ext, butterfly_size, n_factors,
                                                                      block), block)
        self.in_features, self.out_features, self.has_bias = in_features, out_features, bool(has_bias)
        layout = self.layout_array
        dense = _kaiming_uniform((out_ext, in_ext)) * np.repeat(np.sqrt(layout.shape[1] / layout.sum(axis=1)),
                                                                block)[:, None]
        blocks = dense.reshape(layout.shape[0], block, layout.shape[1], block).transpose(0, 2, 1, 3)
        self.weight.set_data(ms.Tensor(blocks.reshape(-1, block, block)[np.flatnonzero(layout.reshape(-1))]
                                       .astype(np.float32)))
        self.bias = ms.Parameter(init.initializer(init.Uniform(1 / math.sqrt(in_ext)), (out_features,), ms.float32),
                                 name="bias") if has_bias else None

    @classmethod
    def check_settings(cls, **settings) -> None:
        check_layout_settings(cls.__name__, **settings)

    @property
    def saving(self) -> float:
        return self.weight.size / (self.in_features * self.out_features)

    def macs_per_token(self) -> int:
        return self.weight.size

    def to_dense(self) -> ms.Tensor:
        """The equivalent dense ``(out_features, in_features)`` weight (zeros outside the layout)."""
        return ms.Tensor(self.dense_weight().asnumpy()[:self.out_features, :self.in_features].copy())

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        if self.in_ext != self.in_features:
            flat = ops.pad(flat, (0, self.in_ext - self.in_features))
        y = super().construct(flat)
        if self.out_ext != self.out_features:
            y = y[:, :self.out_features]
        if self.has_bias:
            y = y + ops.cast(self.bias, y.dtype)
        return y.reshape(shape[:-1] + (self.out_features,))


class PixelflyMlp(Mlp):
    """``Mlp`` for Pixelfly layers: fc1 can hand its output to fc2 as the tiles fc2's sparse product reads, so the
    hidden activation is never transposed, and the backward keeps no copy of it beyond the activation's own."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.hidden_as_tiles = isinstance(self.fc1, SparseLRLinear) and isinstance(self.fc2, SparseLRLinear) and \
            self.fc1.tiled and self.fc2.tiled and self.fc1.sparse.groups == self.fc2.sparse.groups and \
            self.fc1.out_features == self.fc1.out_ext == self.fc2.in_ext

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        if self.hidden_as_tiles:
            shape = x.shape
            hidden = self.drop1(self.act(self.fc1.forward_to_tiles(x.reshape(-1, shape[-1]))))
            return self.drop2(self.fc2.forward_from_tiles(hidden).reshape(shape[:-1] + (-1,)))
        # Not super().construct: graph mode resolves a zero-argument super() from the calling class, so a subclass
        # that kept this construct would recurse.
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


SparseLRLinear.mlp_layer = PixelflyMlp
