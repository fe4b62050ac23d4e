"""Pixelfly: flat block butterfly sparsity plus low rank (Chen, Dao et al., "Pixelated Butterfly: Simple and
Efficient Sparse Training for Neural Network Models", ICLR 2022, https://arxiv.org/abs/2112.00029).

``SparseLRLinear`` reproduces HazyResearch/fly's ``src/models/layers/fastlinear.py`` layer of that name with a
``BlockSparseLinear`` on a ``FlatBlockButterflySparsityConfig`` (dense backend): the same parameters under the
same names (``sparse.weight`` (nnz, block, block) in the layout's row-major order, the int32 ``sparse.layout``,
``low_rank.lr_weight1/2``, ``gate.weight/bias``, ``bias``), the same padding and the same initialisation.

The block-sparse product never builds the dense weight when the layout is a Kronecker product of a mask and a
block of ones (every flat block butterfly layout is): it runs as one batched matmul over the mask's tiles, so
the work is the layout's density times dense (see ``BlockSparseLinear``). Other layouts densify the weight
with a gather, still without a Python loop.
"""
import math
from typing import Optional, Tuple

import numpy as np

import mindspore as ms
from mindspore import nn, ops
from mindspore.common import initializer as init

from .monarch import _check_positive_int

__all__ = ["butterfly_base_mask", "flat_block_butterfly_layout", "BlockSparseLinear", "LowRank", "SparseLRLinear",
           "FlatBlockButterflyLinear", "PRODUCTS"]

_bmm_nt = ops.BatchMatMul(transpose_b=True)


def butterfly_base_mask(butterfly_size: int, n_factors: int) -> np.ndarray:
    """(bs, bs) mask of the first ``n_factors`` butterfly factors: ``i == j`` or ``i ^ j`` a power of two below
    ``2**n_factors``; each row holds ``1 + n_factors`` ones."""
    butterfly_size = _check_positive_int("Pixelfly", "butterfly_size", butterfly_size)
    n_factors = _check_positive_int("Pixelfly", "n_factors", n_factors)
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
    block = _check_positive_int("Pixelfly", "block", block)
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


def _uniform(counts: np.ndarray) -> bool:
    return counts.min() > 0 and (counts == counts[0]).all()


PRODUCTS = ("auto", "gather_inputs", "scatter_outputs", "densify")


class BlockSparseLinear(nn.Cell):
    """fly's ``BlockSparseLinear`` (no bias here): ``weight`` (nnz, block, block) on a fixed block ``layout``.

    Works on the extended (block-padded) sizes; ``SparseLRLinear`` pads and slices around it. When the layout
    is ``kron(mask, ones(a, c))`` (every flat block butterfly layout is), the product is one batched matmul over
    tiles of the mask, so the work is the mask's density times dense:

    - ``gather_inputs``: each row tile gathers the input tiles it reads (the mask's rows must hold equal
      counts); chosen by ``auto`` when the layer does not narrow (in <= out);
    - ``scatter_outputs``: each input tile is multiplied by the tiles of its column and the partial outputs are
      summed per row tile (equal column counts); chosen when the layer narrows, so the copies are of the
      narrower side;
    - ``densify``: build the (out, in) weight with a gather and multiply densely, for any other layout.
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
        rows_ok = factor is not None and _uniform(factor[0].sum(axis=1))
        cols_ok = factor is not None and _uniform(factor[0].sum(axis=0))
        if product == "auto":
            if rows_ok and (in_ext <= out_ext or not cols_ok):
                product = "gather_inputs"
            elif cols_ok:
                product = "scatter_outputs"
            else:
                product = "densify"
        elif (product == "gather_inputs" and not rows_ok) or (product == "scatter_outputs" and not cols_ok):
            raise ValueError(f"BlockSparseLinear: product {product!r} needs a layout kron(mask, ones) whose mask has "
                             f"equal {'row' if product == 'gather_inputs' else 'column'} counts; use 'densify'")
        self.product = product
        if product == "densify":
            return
        mask, a, c = factor
        self.tile_shape = (mask.shape[0], mask.shape[1], a, c)
        if product == "gather_inputs":
            # Row tile i reads the column tiles j with mask[i, j] = 1; in fly's row-major order the weight of
            # each of its block-rows lists exactly those blocks, by column, so the weight needs no gather.
            self.k = int(mask[0].sum())
            columns = [[j * c + v for j in np.flatnonzero(mask[i]) for v in range(c)] for i in range(mask.shape[0])]
            self.column_index = ms.Tensor(np.array(columns, np.int32).reshape(-1))
        else:
            # Column tile j feeds the row tiles i with mask[i, j] = 1; its weight blocks are gathered per (i, u, v).
            self.k = int(mask[:, 0].sum())
            row_tiles = np.stack([np.flatnonzero(mask[:, j]) for j in range(mask.shape[1])])  # (n_c, k)
            p = row_tiles[:, :, None, None] * a + np.arange(a)[None, None, :, None]
            r = np.arange(mask.shape[1])[:, None, None, None] * c + np.arange(c)[None, None, None, :]
            self.block_index = ms.Tensor(position[p, r].reshape(-1).astype(np.int32))
            self.segment_ids = ms.Tensor(row_tiles.reshape(-1).astype(np.int32))

    def dense_weight(self) -> ms.Tensor:
        """The (out_ext, in_ext) weight with zeros outside the layout."""
        return self._densify(self.weight)

    def _densify(self, weight: ms.Tensor) -> ms.Tensor:
        rows, cols = self.layout_array.shape
        b = self.block
        padded = ops.concat((weight, ops.zeros((1, b, b), weight.dtype)), axis=0)  # one zero block at the end
        blocks = ops.gather(padded, self.dense_index, 0)
        return blocks.reshape(rows, cols, b, b).transpose(0, 2, 1, 3).reshape(rows * b, cols * b)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        """(T, in_ext) -> (T, out_ext)."""
        weight = ops.cast(self.weight, x.dtype)
        if self.product == "densify":
            return ops.matmul(x, self._densify(weight).transpose(1, 0))
        tokens, b, k = x.shape[0], self.block, self.k
        n_r, n_c, a, c = self.tile_shape
        if self.product == "gather_inputs":
            tiles = weight.reshape(n_r, a, k * c, b, b).transpose(0, 1, 3, 2, 4).reshape(n_r, a * b, k * c * b)
            gathered = ops.gather(x.reshape(tokens, -1, b), self.column_index, 1)  # (T, n_r*k*c, b)
            gathered = gathered.reshape(tokens, n_r, k * c * b).transpose(1, 0, 2)  # (n_r, T, k*c*b)
            out = _bmm_nt(gathered, tiles)  # (n_r, T, a*b)
        else:
            tiles = ops.gather(weight, self.block_index, 0).reshape(n_c, k, a, c, b, b)
            tiles = tiles.transpose(0, 1, 2, 4, 3, 5).reshape(n_c, k * a * b, c * b)
            inputs = x.reshape(tokens, n_c, c * b).transpose(1, 0, 2)  # (n_c, T, c*b)
            partial = _bmm_nt(inputs, tiles).reshape(n_c, tokens, k, a * b)  # (n_c, T, k*a*b)
            partial = partial.transpose(0, 2, 1, 3).reshape(n_c * k, tokens, a * b)
            out = ops.unsorted_segment_sum(partial, self.segment_ids, n_r)  # (n_r, T, a*b)
        return out.transpose(1, 0, 2).reshape(tokens, n_r * a * b)


class LowRank(nn.Cell):
    """``x -> x W1^T W2^T`` with ``lr_weight1`` (rank, in) and ``lr_weight2`` (out, rank), no bias."""

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        self.lr_weight1 = ms.Parameter(ms.Tensor(np.zeros((rank, in_features), np.float32)), name="lr_weight1")
        self.lr_weight2 = ms.Parameter(ms.Tensor(np.zeros((out_features, rank), np.float32)), name="lr_weight2")

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        hidden = ops.matmul(x, ops.cast(self.lr_weight1, x.dtype).transpose(1, 0))
        return ops.matmul(hidden, ops.cast(self.lr_weight2, x.dtype).transpose(1, 0))


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


class SparseLRLinear(nn.Cell):
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
        super().__init__()
        owner = "SparseLRLinear"
        self.in_features = _check_positive_int(owner, "in_features", in_features)
        self.out_features = _check_positive_int(owner, "out_features", out_features)
        block = _check_positive_int(owner, "block", block)
        if isinstance(rank, float):
            rank = int(rank * min(in_features, out_features))
        self.rank = _check_positive_int(owner, "rank", rank)
        self.in_ext = math.ceil(in_features / block) * block
        self.out_ext = math.ceil(out_features / block) * block
        layout = flat_block_butterfly_layout(self.out_ext, self.in_ext, butterfly_size, n_factors, block,
                                             global_size, shuffle)
        self.sparse = BlockSparseLinear(self.in_ext, self.out_ext, layout, block)
        self.low_rank = LowRank(in_features, out_features, self.rank)
        self.gating = gating
        self.gate = nn.Dense(in_features, 1) if gating else None
        self.has_bias = has_bias
        self.bias = ms.Parameter(ms.Tensor(np.zeros(out_features, np.float32)), name="bias") if has_bias else None
        self.reset_parameters()

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

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        padded = flat if self.in_ext == self.in_features else ops.pad(flat, (0, self.in_ext - self.in_features))
        sparse = self.sparse(padded)
        if self.out_ext != self.out_features:
            sparse = sparse[:, :self.out_features]
        low_rank = self.low_rank(flat)
        if self.gating:
            gate = ops.sigmoid(self.gate(flat))
            y = sparse + gate * (low_rank - sparse)
        else:
            y = (sparse + low_rank) * 0.5
        if self.has_bias:
            y = y + ops.cast(self.bias, y.dtype)
        return y.reshape(shape[:-1] + (self.out_features,))


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
        in_features = _check_positive_int(owner, "in_features", in_features)
        out_features = _check_positive_int(owner, "out_features", out_features)
        block = _check_positive_int(owner, "block", block)
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

    @property
    def saving(self) -> float:
        return self.weight.size / (self.in_features * self.out_features)

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
