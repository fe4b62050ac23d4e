"""Attention layers: multi-head self-attention, the Token_performer of T2T-ViT and ViTAE, and swappable
single-head attention cores (full softmax, banded local, Performer, Scatterbrain local + Performer).

Each core maps ``q, k, v`` of shape ``(N, T, d)`` (N = batch x heads) to ``(N, T, d)`` and implements
HazyResearch/fly's ``FullAttention``, ``LocalAttention``, ``PerformerAttention`` and ``SBLocalAttention``
(``src/models/attention/``) exactly, with reshape, batched matmuls and masks only, so they run in graph
mode on CPU, GPU and Ascend. The local window of query i holds keys j with ``-(lc//2) <= j-i < (lc+1)//2`` over
the raster sequence, truncated at both ends; it is computed block by block, so memory grows with
sequence x window, never sequence x sequence. Performer memory grows with sequence x features.

Random features (Performer, Scatterbrain) are non-trainable parameters named ``projection_matrix``, drawn
once at construction from a seeded generator and saved in checkpoints; a checkpoint's values replace them.
"""
import math
from typing import Optional

import numpy as np

import mindspore as ms
from mindspore import nn, ops

from .helpers import gelu, layer_norm
from .weight_init import orthogonal_

__all__ = ["MultiHeadAttention", "TokenPerformer", "FullAttention", "LocalAttention", "PerformerAttention",
           "SBLocalAttention", "gaussian_orthogonal_random_matrix", "ATTENTION_TYPES", "create_attention"]

ATTENTION_TYPES = ("full", "local", "performer", "sblocal")
_bmm_nt = ops.BatchMatMul(transpose_b=True)
_bmm_tn = ops.BatchMatMul(transpose_a=True)
_NEG = -1e24  # what fast_transformers' local product writes into invalid slots: exp() of it is 0


def gaussian_orthogonal_random_matrix(nrows: int, ncols: int, seed: int, scaling: int = 0) -> np.ndarray:
    """Performer's orthogonal random features (fly's ``gaussian_orthogonal_random_matrix``), from a seed.

    Rows come from the Q factor of square Gaussian blocks (sign-corrected, so Haar distributed), then are
    scaled by the norms of independent Gaussian vectors (``scaling=0``) or by sqrt(ncols) (``scaling=1``).
    """
    rng = np.random.default_rng(seed)
    blocks = []
    for _ in range(math.ceil(nrows / ncols)):
        q, r = np.linalg.qr(rng.standard_normal((ncols, ncols)))
        q = q * np.sign(np.diag(r))[None, :]
        blocks.append(q.T)
    rows = np.concatenate(blocks)[:nrows]
    if scaling == 0:
        multiplier = np.linalg.norm(rng.standard_normal((nrows, ncols)), axis=1)
    elif scaling == 1:
        multiplier = np.full(nrows, math.sqrt(ncols))
    else:
        raise ValueError(f"scaling must be 0 or 1, got {scaling}")
    return (multiplier[:, None] * rows).astype(np.float32)


class MultiHeadAttention(nn.Cell):
    """Multi-head self-attention (timm's), scale head_dim**-0.5."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Dense(dim, dim * 3, has_bias=qkv_bias)
        self.attn_drop = nn.Dropout(p=attn_drop)
        self.proj = nn.Dense(dim, dim)
        self.proj_drop = nn.Dropout(p=proj_drop)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        batch, tokens, channels = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ops.matmul(q, k.swapaxes(-2, -1)) * self.scale
        attn = self.attn_drop(ops.softmax(attn, axis=-1))
        x = ops.matmul(attn, v).transpose(0, 2, 1, 3).reshape(batch, tokens, channels)
        return self.proj_drop(self.proj(x))


class Float32Cell(nn.Cell):
    """A cell that mixed precision leaves in float32, as MindSpore's AMP black list leaves LayerNorm.

    Inside a cell that ``auto_mixed_precision`` or ``to_float`` marks fp16, every operator computes in fp16, whatever
    its inputs were cast to; for exponentials that is out of range. A subclass keeps the fp32 mark when its parents'
    marks are set recursively, so its operators compute in fp32 and it returns fp32.
    """

    def add_flags_recursive(self, **flags):
        if flags.get("fp16") or flags.get("bf16"):
            flags = dict(flags, fp16=False, bf16=False, fp32=True)
        return super().add_flags_recursive(**flags)


class _PositiveFeatureAttention(Float32Cell):
    """FAVOR+ with positive random features ``w``, one head: ``phi(q) (phi(k)^T v) / (phi(q) . sum phi(k))``, in fp32
    (the features reach exp(|w|^2 / 2) / sqrt(m), far past fp16's range)."""

    def __init__(self, epsilon: float = 1e-8) -> None:
        super().__init__()
        self.epsilon = epsilon

    @staticmethod
    def features(x: ms.Tensor, w: ms.Tensor) -> ms.Tensor:
        # exp(w^T x - |x|^2 / 2) / sqrt(m): positive random features of the softmax kernel.
        xd = (x * x).sum(axis=-1, keepdims=True) / 2
        return ops.exp(ops.matmul(x, w.transpose(1, 0)) - xd) / math.sqrt(w.shape[0])

    def construct(self, k: ms.Tensor, q: ms.Tensor, v: ms.Tensor, w: ms.Tensor) -> ms.Tensor:
        k, q, v, w = k.astype(ms.float32), q.astype(ms.float32), v.astype(ms.float32), w.astype(ms.float32)
        kp, qp = self.features(k, w), self.features(q, w)  # (B, T, m)
        normaliser = ops.bmm(qp, kp.sum(axis=1).expand_dims(2))  # (B, T, 1)
        kptv = ops.bmm(v.transpose(0, 2, 1), kp)  # (B, emb, m)
        return ops.bmm(qp, kptv.transpose(0, 2, 1)) / (normaliser + self.epsilon)  # (B, T, emb)


class TokenPerformer(nn.Cell):
    """Token_performer of T2T-ViT and ViTAE: one-head FAVOR+ attention to ``in_dim`` (v as the skip), then an MLP.

    ``w`` holds the fixed random features (orthogonal rows of norm sqrt(m)); it is a non-trainable parameter
    that checkpoints carry. The split order is k, q, v and the kernel has no temperature, as in the reference. The
    attention itself stays fp32 under AMP.
    """

    def __init__(self, dim: int, in_dim: int, kernel_ratio: float = 0.5, dp1: float = 0.1, dp2: float = 0.1) -> None:
        super().__init__()
        self.emb = in_dim
        self.kqv = nn.Dense(dim, 3 * self.emb)
        self.dp = nn.Dropout(p=dp1)
        self.proj = nn.Dense(self.emb, self.emb)
        self.norm1 = layer_norm(dim, eps=1e-5)
        self.norm2 = layer_norm(self.emb, eps=1e-5)
        self.favor = _PositiveFeatureAttention(epsilon=1e-8)
        self.mlp = nn.SequentialCell([nn.Dense(self.emb, self.emb), gelu(), nn.Dense(self.emb, self.emb),
                                      nn.Dropout(p=dp2)])
        self.m = int(self.emb * kernel_ratio)
        # Fixed random features: drawn once, saved with the model, never trained.
        self.w = ms.Parameter(ms.Tensor(np.zeros((self.m, self.emb), np.float32)), name="w", requires_grad=False)
        orthogonal_(self.w, gain=math.sqrt(self.m))

    def attn(self, x: ms.Tensor) -> ms.Tensor:
        k, q, v = ops.split(self.kqv(x), self.emb, axis=-1)
        y = self.favor(k, q, v, self.w)
        return v + self.dp(self.proj(y.astype(v.dtype)))

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        x = self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _fixed_parameter(array: np.ndarray, name: str) -> ms.Parameter:
    return ms.Parameter(ms.Tensor(array), name=name, requires_grad=False)


class FullAttention(nn.Cell):
    """``softmax(softmax_temp * q k^T) v``."""

    def __init__(self, softmax_temp: Optional[float] = None) -> None:
        super().__init__()
        self.softmax_temp = softmax_temp

    def construct(self, q, k, v):
        temp = self.softmax_temp if self.softmax_temp is not None else q.shape[-1] ** -0.5
        scores = _bmm_nt(q * temp, k)
        return ops.bmm(ops.softmax(scores, axis=-1), v)


class _Bands(nn.Cell):
    """Block-wise band layout shared by the local attentions.

    The sequence is cut into blocks of ``c`` queries; block b's candidate keys are the ``c + lc - 1``
    positions starting at ``b*c - lc//2``, which cover every key any of its queries may see. Relative to that
    start, query i (in its block) sees key slot j when ``0 <= j - i < lc``; the same mask serves every block.
    """

    def __init__(self, local_context: int, block: Optional[int] = None) -> None:
        super().__init__()
        if local_context < 1:
            raise ValueError(f"local_context must be >= 1, got {local_context}")
        self.lc = local_context
        self.c = block or max(local_context, 16)
        self.span = self.c + self.lc - 1

    def blocks(self, x, length):
        """(N, T, d) -> candidate-key blocks (N, nb, span, d), zero outside [0, T)."""
        n, _, d = x.shape
        nb = -(-length // self.c)
        before = self.lc // 2
        after = nb * self.c + self.span - self.c - before - length
        padded = ops.pad(x, (0, 0, before, after))  # (N, before + T + after, d)
        index = (ops.arange(nb).reshape(nb, 1) * self.c + ops.arange(self.span).reshape(1, self.span)).reshape(-1)
        return ops.gather(padded, index, 1).reshape(n, nb, self.span, d)

    def query_blocks(self, x, length):
        n, _, d = x.shape
        nb = -(-length // self.c)
        return ops.pad(x, (0, 0, 0, nb * self.c - length)).reshape(n, nb, self.c, d)

    def mask(self, length):
        """(nb, c, span) booleans: slot inside the query's band and at a real key position."""
        nb = -(-length // self.c)
        i = ops.arange(self.c).reshape(1, self.c, 1)
        j = ops.arange(self.span).reshape(1, 1, self.span)
        key = ops.arange(nb).reshape(nb, 1, 1) * self.c - self.lc // 2 + j
        rel = j - i
        return ops.logical_and(ops.logical_and(rel >= 0, rel < self.lc), ops.logical_and(key >= 0, key < length))


def _logsumexp_last(x):
    """log(sum(exp(x))) over the last axis, keeping it; every row holds at least one real (finite) score."""
    top = ops.stop_gradient(x.max(axis=-1, keepdims=True))
    return top + ops.log(ops.exp(x - top).sum(axis=-1, keepdims=True))


def _merge_blocks(x, length):
    """(N, nb, c, d) -> (N, T, d)."""
    n, nb, c, d = x.shape
    return x.reshape(n, nb * c, d)[:, :length]


class LocalAttention(nn.Cell):
    """Softmax over the band ``-(lc//2) <= j-i < (lc+1)//2`` of keys, renormalised where it is truncated."""

    def __init__(self, local_context: int, softmax_temp: Optional[float] = None) -> None:
        super().__init__()
        self.bands = _Bands(local_context)
        self.softmax_temp = softmax_temp

    def construct(self, q, k, v):
        n, length, d = q.shape
        temp = self.softmax_temp if self.softmax_temp is not None else d ** -0.5
        qb = self.bands.query_blocks(q, length)  # (N, nb, c, d)
        kb, vb = self.bands.blocks(k, length), self.bands.blocks(v, length)  # (N, nb, span, d)
        nb = qb.shape[1]
        scores = _bmm_nt(qb.reshape(n * nb, -1, d), kb.reshape(n * nb, -1, d)).reshape(n, nb, -1, kb.shape[2])
        scores = ops.masked_fill(scores * temp, ops.logical_not(self.bands.mask(length)), _NEG)
        weights = ops.softmax(scores, axis=-1)
        out = ops.bmm(weights.reshape(n * nb, -1, kb.shape[2]), vb.reshape(n * nb, -1, d))
        return _merge_blocks(out.reshape(n, nb, -1, d), length)


class PerformerAttention(nn.Cell):
    """FAVOR+ with positive softmax-kernel features (fly's ``PerformerAttention``, non-causal).

    ``projection_matrix`` (nb_features, dim_heads) is fixed after construction.
    """

    torch_buffers = ("projection_matrix",)

    def __init__(self, dim_heads: int, nb_features: Optional[int] = None, softmax_temp: Optional[float] = None,
                 softmax_eps: float = 1e-4, normalization_eps: float = 1e-6, ortho_scaling: int = 0,
                 seed: int = 0) -> None:
        super().__init__()
        nb_features = nb_features or int(dim_heads * math.log(dim_heads))
        self.softmax_temp = softmax_temp if softmax_temp is not None else dim_heads ** -0.5
        self.softmax_eps, self.normalization_eps = softmax_eps, normalization_eps
        self.projection_matrix = _fixed_parameter(
            gaussian_orthogonal_random_matrix(nb_features, dim_heads, seed, ortho_scaling), "projection_matrix")

    def features(self, x, is_query: bool):
        normaliser = math.sqrt(self.softmax_temp)
        projection = ops.cast(self.projection_matrix, x.dtype)
        dash = ops.matmul(x * normaliser, projection.transpose(1, 0))  # (N, T, m)
        diag = (x * x).sum(axis=-1, keepdims=True) * (self.softmax_temp / 2.0)
        if is_query:
            stabiliser = dash.max(axis=-1, keepdims=True)
        else:
            stabiliser = dash.max(axis=(-1, -2), keepdims=True)
        ratio = projection.shape[0] ** -0.5
        return ratio * (ops.exp(dash - diag - ops.stop_gradient(stabiliser)) + self.softmax_eps)

    def construct(self, q, k, v):
        q_prime, k_prime = self.features(q, True), self.features(k, False)
        context = _bmm_tn(k_prime, v)  # (N, m, d)
        numerator = ops.bmm(q_prime, context)
        denominator = (q_prime * k_prime.sum(axis=1, keepdims=True)).sum(axis=-1, keepdims=True)
        return numerator / (denominator + self.normalization_eps)


class SBLocalAttention(nn.Cell):
    """Scatterbrain: exact softmax inside the local band, Performer (cosh) features outside, one normaliser.

    Follows fly's ``SBLocalAttention`` with ``SBPerformerFeatures``: ``projection_matrix`` has
    ``nb_features // 2`` rows (the cosh map doubles them).
    """

    def __init__(self, local_context: int, dim_heads: int, nb_features: Optional[int] = None,
                 softmax_temp: Optional[float] = None, softmax_eps: float = 0.0, ortho_scaling: int = 0,
                 seed: int = 0) -> None:
        super().__init__()
        nb_features = nb_features or int(dim_heads * math.log(dim_heads))
        self.bands = _Bands(local_context)
        self.softmax_temp = softmax_temp if softmax_temp is not None else dim_heads ** -0.5
        self.eps = softmax_eps
        self.feature_map = _SBFeatures(
            gaussian_orthogonal_random_matrix(nb_features // 2, dim_heads, seed, ortho_scaling))

    def construct(self, q, k, v):
        n, length, d = q.shape
        temp = self.softmax_temp
        q_prime, q_log_scale = self.feature_map(q, temp, self.eps, True)  # (N, T, m), (N, T, 1)
        k_prime, k_log_scale = self.feature_map(k, temp, self.eps, False)  # (N, T, m), (N, 1, 1)
        prime_log_scale = q_log_scale + k_log_scale  # (N, T, 1)
        q_prime_k_prime_1 = (q_prime * k_prime.sum(axis=1, keepdims=True)).sum(axis=-1, keepdims=True)
        q_prime_k_prime_v = ops.bmm(q_prime, _bmm_tn(k_prime, v))  # (N, T, d)

        qb = self.bands.query_blocks(q, length)
        nb = qb.shape[1]
        kb, vb = self.bands.blocks(k, length), self.bands.blocks(v, length)
        qpb = self.bands.query_blocks(q_prime, length)
        kpb = self.bands.blocks(k_prime, length)
        span = kb.shape[2]
        valid = self.bands.mask(length)
        qk = _bmm_nt(qb.reshape(n * nb, -1, d), kb.reshape(n * nb, -1, d)).reshape(n, nb, -1, span) * temp
        qk = ops.masked_fill(qk, ops.logical_not(valid), _NEG)
        m = qpb.shape[-1]
        dots_prime = _bmm_nt(qpb.reshape(n * nb, -1, m), kpb.reshape(n * nb, -1, m)).reshape(n, nb, -1, span)
        dots_prime = ops.masked_fill(dots_prime, ops.logical_not(valid), 0.0)

        qk_lse = _logsumexp_last(qk)  # (N, nb, c, 1)
        dots_prime_sum = dots_prime.sum(axis=-1, keepdims=True)
        q1 = self.bands.query_blocks(q_prime_k_prime_1, length)
        log_scale_b = self.bands.query_blocks(prime_log_scale, length)
        lr_log_norm = ops.log(ops.clamp(q1 - dots_prime_sum, min=1e-24)) + log_scale_b
        log_norm = ops.logaddexp(qk_lse, lr_log_norm)
        prime_scale = ops.exp(log_scale_b - log_norm)
        dots = ops.exp(qk - log_norm) - dots_prime * prime_scale
        out_local = ops.bmm(dots.reshape(n * nb, -1, span), vb.reshape(n * nb, -1, d)).reshape(n, nb, -1, d)
        out = out_local + self.bands.query_blocks(q_prime_k_prime_v, length) * prime_scale
        return _merge_blocks(out, length)


class _SBFeatures(nn.Cell):
    """fly's ``SBPerformerFeatures`` (cosh): features as mantissa and log-scale, for numerical range."""

    torch_buffers = ("projection_matrix",)

    def __init__(self, projection: np.ndarray) -> None:
        super().__init__()
        self.projection_matrix = _fixed_parameter(projection, "projection_matrix")

    def construct(self, x, temp, eps, is_query):
        m = 2 * self.projection_matrix.shape[0]
        normaliser = math.sqrt(temp)
        projection = ops.cast(self.projection_matrix, x.dtype)
        dash = ops.matmul(x, (projection * normaliser).transpose(1, 0))
        diag = (x * x).sum(axis=-1, keepdims=True) / 2 * (normaliser ** 2)
        dash = ops.concat((dash, -dash), axis=-1)
        half_log_m = math.log(m) / 2
        if is_query:
            top = dash.max(axis=-1, keepdims=True)
            log_scale = -diag + top - half_log_m
            features = ops.exp(dash - top) + eps / math.sqrt(m)
        else:
            shifted = dash - diag - half_log_m
            log_scale = shifted.max(axis=(-1, -2), keepdims=True)
            features = ops.exp(shifted - log_scale) + eps / math.sqrt(m)
        return features, log_scale


def create_attention(kind: str, dim_heads: int, softmax_temp: float, local_context: Optional[int] = None,
                     nb_features: Optional[int] = None, softmax_eps: Optional[float] = None,
                     normalization_eps: Optional[float] = None, seed: int = 0) -> nn.Cell:
    """One attention core by name (``full``, ``local``, ``performer``, ``sblocal``) with fly's defaults."""
    if kind == "full":
        return FullAttention(softmax_temp)
    if kind == "local":
        if local_context is None:
            raise ValueError("local attention needs local_context")
        return LocalAttention(local_context, softmax_temp)
    if kind == "performer":
        return PerformerAttention(dim_heads, nb_features, softmax_temp,
                                  1e-4 if softmax_eps is None else softmax_eps,
                                  1e-6 if normalization_eps is None else normalization_eps, seed=seed)
    if kind == "sblocal":
        if local_context is None:
            raise ValueError("sblocal attention needs local_context")
        return SBLocalAttention(local_context, dim_heads, nb_features, softmax_temp,
                                0.0 if softmax_eps is None else softmax_eps, seed=seed)
    raise ValueError(f"attention must be one of {ATTENTION_TYPES}, got {kind!r}")
