"""Sketch Structured Linear (SS1).

Refer to "SS1: Accelerating Inference with Fast and Expressive Sketch Structured Transform" (Desai et al.,
NeurIPS 2024). ``SketchStructuredLinear`` reproduces kimiasa/SSLinear's ``SSL`` layer (the submodule pin of
fly's ``inference`` fork): the weight is ``(out_features, in_features / redn_factor)``, and each 64-wide block of
outputs reads the input through fixed, hashed rotations that sum ``redn_factor`` input chunks into one.

Notation (the fixture README's): K inputs, N outputs, c = redn_factor, BN = 64 outputs per block, BK = 32 inputs
per chunk, VEC = 8. For output block pn, K-step t < K/(BK*c) and sub-chunk ck < c the rotation is

    s(pn, t, ck) = ((R3 + R2*pn + R1*(t+1) + R0*(ck+1)) * VEC) mod BK

and ``y[m, n] = sum_t sum_i xt[m, t, i] * W[n, t*BK + i]`` with
``xt[m, t, i] = sum_ck x[m, (t*c + ck)*BK + (i + s) mod BK]``. The four hash numbers come from PyTorch's CPU
generator seeded with ``seed``; it is the standard MT19937, which NumPy's legacy ``RandomState`` reproduces.
"""
import math
from typing import Tuple

import numpy as np

import mindspore as ms
from mindspore import ops
from mindspore.common.initializer import Uniform, initializer

from .structured import StructuredLinear, check_positive_int, register_linear

__all__ = ["SketchStructuredLinear", "ssl_random_numbers", "ssl_shift_table", "ssl_index_map", "ssl_to_dense",
           "SSL_BLOCK_N", "SSL_BLOCK_K", "SSL_VEC"]

SSL_BLOCK_N = 64  # BLOCK_SIZE_N: outputs sharing one set of rotations
SSL_BLOCK_K = 32  # BLOCK_SIZE_K: the width of a rotated input chunk
SSL_VEC = 8  # rotations move whole VEC-wide vectors
_HASH_PRIME = 92387

_bmm_nt = ops.BatchMatMul(transpose_b=True)


def ssl_random_numbers(seed: int = 1024) -> Tuple[int, int, int, int]:
    """``[R0, R1, R2, R3]``: the reference's ``2 * torch.randint(1, P//2 - 1, (4,), generator=seed) + 1``.

    ``torch.randint`` on the CPU draws ``low + mt19937() % range``, one 32-bit word per number.
    """
    words = np.random.RandomState(int(seed)).randint(0, 2 ** 32, size=4, dtype=np.uint64)
    high = _HASH_PRIME // 2 - 1
    return tuple(2 * (int(word) % (high - 1) + 1) + 1 for word in words)


def _check(in_features, out_features, redn_factor) -> Tuple[int, int, int]:
    owner = "SketchStructuredLinear"
    for name, value in (("in_features", in_features), ("out_features", out_features), ("redn_factor", redn_factor)):
        check_positive_int(owner, name, value)
    if redn_factor & (redn_factor - 1):
        raise ValueError(f"{owner}: redn_factor must be a power of two, got {redn_factor}")
    if in_features % (SSL_BLOCK_K * redn_factor):
        raise ValueError(f"{owner}: in_features ({in_features}) must be a multiple of 32 * redn_factor "
                         f"({SSL_BLOCK_K * redn_factor}), as the reference's kernel reads whole 32-wide chunks, "
                         f"redn_factor at a time. Choose another width or redn_factor")
    if out_features % SSL_BLOCK_N:
        raise ValueError(f"{owner}: out_features ({out_features}) must be a multiple of {SSL_BLOCK_N}, the "
                         f"reference's output block")
    return int(in_features), int(out_features), int(redn_factor)


def ssl_shift_table(in_features: int, out_features: int, redn_factor: int, seed: int = 1024) -> np.ndarray:
    """``s[pn, t, ck]``, the rotation of sub-chunk ``ck`` of K-step ``t`` for output block ``pn`` (int64)."""
    in_features, out_features, c = _check(in_features, out_features, redn_factor)
    r0, r1, r2, r3 = ssl_random_numbers(seed)
    pn = np.arange(out_features // SSL_BLOCK_N, dtype=np.int64)[:, None, None]
    t = np.arange(in_features // (SSL_BLOCK_K * c), dtype=np.int64)[None, :, None]
    ck = np.arange(c, dtype=np.int64)[None, None, :]
    return ((r3 + r2 * pn + r1 * (t + 1) + r0 * (ck + 1)) * SSL_VEC) % SSL_BLOCK_K


def ssl_index_map(in_features: int, out_features: int, redn_factor: int, seed: int = 1024) -> np.ndarray:
    """``idx[j, n]``: the column of the compressed weight that dense entry ``(j, n)`` of ``x @ W_full`` reads."""
    shifts = ssl_shift_table(in_features, out_features, redn_factor, seed)  # (P, T, c)
    jj = np.arange(SSL_BLOCK_K)
    t = np.arange(shifts.shape[1])
    # rows j = (t*c + ck)*BK + jj read t*BK + (jj - s) mod BK; every output of block pn shares its column.
    per_block = t[None, :, None, None] * SSL_BLOCK_K + (jj[None, None, None, :] - shifts[..., None]) % SSL_BLOCK_K
    per_block = per_block.reshape(shifts.shape[0], in_features)  # (P, K)
    return np.repeat(per_block, SSL_BLOCK_N, axis=0).T.copy()  # (K, N)


def ssl_to_dense(weight: np.ndarray, redn_factor: int, seed: int = 1024) -> np.ndarray:
    """The dense ``(out, in)`` weight a compressed ``(out, in/redn_factor)`` one stands for (for checks only)."""
    out_features, compressed = weight.shape
    index = ssl_index_map(compressed * redn_factor, out_features, redn_factor, seed)
    return np.take_along_axis(weight.T, index, axis=0).T


def _split_shifts(in_features: int, out_features: int, redn_factor: int, seed: int):
    """The rotation as ``s(pn, t, ck) = (a[pn] + b[t] + d[ck]) mod BK``: the hash is a sum, and ``h*VEC mod BK``
    is additive in h, so each index contributes its own rotation."""
    r0, r1, r2, r3 = ssl_random_numbers(seed)
    a = ((r3 + r2 * np.arange(out_features // SSL_BLOCK_N)) * SSL_VEC) % SSL_BLOCK_K
    b = ((r1 * (np.arange(in_features // (SSL_BLOCK_K * redn_factor)) + 1)) * SSL_VEC) % SSL_BLOCK_K
    d = ((r0 * (np.arange(redn_factor) + 1)) * SSL_VEC) % SSL_BLOCK_K
    shifts = ssl_shift_table(in_features, out_features, redn_factor, seed)
    assert np.array_equal((a[:, None, None] + b[None, :, None] + d[None, None, :]) % SSL_BLOCK_K, shifts)
    return a, b, d


@register_linear("ssl")
class SketchStructuredLinear(StructuredLinear):
    r"""Linear layer with a sketch-structured weight (kimiasa/SSLinear's ``SSL``).

    Args:
        in_features: width of the input's last dimension, a multiple of ``32 * redn_factor``.
        out_features: width of the output's last dimension, a multiple of 64.
        redn_factor: compression; the weight has ``in_features / redn_factor`` columns. A power of two. Default: 2.
        seed: seed of the hashed rotations (the reference uses 1024 for every layer). Default: 1024.
        has_bias: add a learnable bias after the product, as later SSLinear versions do; the pinned reference
            has none. Default: False.

    Inputs:
        x: Tensor of shape ``(*, in_features)``.

    Outputs:
        Tensor of shape ``(*, out_features)``.

    The forward never forms the dense weight. The rotation splits as ``s = a[pn] + b[t] + d[ck]`` (mod 32), and
    every part is a multiple of VEC = 8: a rotation of the four 8-wide vectors of a chunk. So:

    1. one transpose brings the input to ``(ck, vector, t, lane)`` order, where the rotation by ``d[ck]`` and the sum
       over the ``redn_factor`` sub-chunks are additions of contiguous column slices: one
       ``(*, in_features / redn_factor)`` tensor serves every output;
    2. the rest of the rotation, ``a[pn] + b[t]``, and that column order are moved onto the compressed weight: a
       gather of its own entries into a ``(in_features / redn_factor, out_features)`` matrix, the weight's size;
    3. one matmul.

    The gradients are the autodiff of those operators: exact, with the weight's gradient scatter-added back
    through the hash.
    """

    def __init__(self, in_features: int, out_features: int, redn_factor: int = 2, seed: int = 1024,
                 has_bias: bool = False) -> None:
        super().__init__(in_features, out_features, has_bias)
        self.in_features, self.out_features, self.redn_factor = _check(in_features, out_features, redn_factor)
        self.seed = int(seed)
        c = self.redn_factor
        compressed = self.in_features // c
        steps = compressed // SSL_BLOCK_K
        vectors = SSL_BLOCK_K // SSL_VEC
        block_shift, step_shift, chunk_shift = _split_shifts(self.in_features, self.out_features, c, self.seed)
        self.vector_shifts = tuple(int(v) // SSL_VEC for v in chunk_shift)
        # The summed input's column (q, t, v) holds chunk entry i = q*VEC + v of K-step t, i.e. (in the kernel's
        # terms) entry (i - a[pn] - b[t]) mod BK of xt for output block pn; transposed weight row (q, t, v) of
        # output n is therefore W[n, t*BK + (i - a[pn] - b[t]) mod BK].
        q = np.arange(vectors)[:, None, None, None]
        t = np.arange(steps)[None, :, None, None]
        v = np.arange(SSL_VEC)[None, None, :, None]
        n = np.arange(self.out_features)[None, None, None, :]
        shift = block_shift[n // SSL_BLOCK_N] + step_shift[t]
        column = t * SSL_BLOCK_K + (q * SSL_VEC + v - shift) % SSL_BLOCK_K
        self.weight_index = ms.Tensor((n * compressed + column).reshape(-1).astype(np.int32))
        bound = 1.0 / math.sqrt(self.in_features)  # the reference: U(+-1/sqrt(in_features))
        self.weight = ms.Parameter(initializer(Uniform(bound), (self.out_features, compressed), ms.float32),
                                   name="weight")
        self.init_bias(None)

    @classmethod
    def check_settings(cls, redn_factor: int = 2, seed: int = 1024) -> None:
        _check(SSL_BLOCK_K * redn_factor if isinstance(redn_factor, int) else 1, SSL_BLOCK_N, redn_factor)

    def macs_per_token(self) -> int:
        return self.weight.size

    def forward_2d(self, x: ms.Tensor) -> ms.Tensor:
        c = self.redn_factor
        compressed = self.in_features // c
        span = compressed // (SSL_BLOCK_K // SSL_VEC)  # columns of one vector position q, over every K-step
        # (M, t, ck, q, v) -> (M, ck, q, t, v): each (ck, q) is a contiguous run of `span` columns.
        x = x.reshape(-1, compressed // SSL_BLOCK_K, c, SSL_BLOCK_K // SSL_VEC, SSL_VEC).transpose(0, 2, 3, 1, 4)
        x = x.reshape(-1, self.in_features)
        parts = []
        for q in range(SSL_BLOCK_K // SSL_VEC):
            part = None
            for ck, shift in enumerate(self.vector_shifts):
                start = (ck * (SSL_BLOCK_K // SSL_VEC) + (q + shift) % (SSL_BLOCK_K // SSL_VEC)) * span
                piece = x[:, start:start + span]  # vector q of the chunk rotated by d[ck] is its vector q + d/VEC
                part = piece if part is None else part + piece
            parts.append(part)
        summed = ops.concat(parts, axis=1)
        w = ops.gather(ops.cast(self.weight, x.dtype).reshape(-1), self.weight_index, 0)
        return ops.matmul(summed, w.reshape(compressed, self.out_features))

    def to_dense(self) -> ms.Tensor:
        """The equivalent dense ``(out_features, in_features)`` weight (float32 Tensor)."""
        return ms.Tensor(ssl_to_dense(self.weight.asnumpy(), self.redn_factor, self.seed).astype(np.float32))
