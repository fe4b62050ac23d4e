"""Block Tensor-Train (BTT) linear layer.

Qiu, Potapczynski, Finzi, Goldblum, Wilson, "Compute Better Spent: Replacing Dense Layers with Structured
Matrices", ICML 2024. ``BlockTTLinear`` reproduces the ``btt`` and ``btt_norm`` layers of
shikaiqiu/compute-better-spent at commit 452376450cf99667f65a07d5c5373dd559f7dd3d: ``CoLALayer(FasterBTT)`` built
by ``build_btt`` (``nn/cola_nn.py``), with ``FasterBTT._rmatmat`` (``ops/operators.py``) and the ``btt_mvm`` kernel
(``mm/btt_mvm.py``), two cores only (the only case upstream's fast path supports).

With ``in_features = m1*m2`` and ``out_features = n1*n2`` (``btt_factorize``) and rank ``r``, the two cores are

    op_params.0  W1: (m2, m1, n1*r)   last axis (n1, r), r fastest
    op_params.1  W2: (n1, m2*r, n2)   middle axis (m2, r), r fastest

and, for ``x`` viewed as ``(B, m2, m1)`` (input index ``j*m1 + i``) and output index ``k*n2 + l``,

    y[b, k*n2 + l] = sum_{j, i, s} x[b, j, i] * W1[j, i, k*r + s] * W2[k, j*r + s, l]  (+ b)

so the dense ``(in, out)`` matrix has ``m2 x n1`` blocks of size ``(m1, n2)``, block ``(j, k)`` being
``W1[j, :, k*r:(k+1)*r] @ W2[k, j*r:(j+1)*r, :]``, of rank at most ``r``. Rank 1 is a Monarch matrix.

Parameter names are upstream's ``named_parameters()``: ``op_params.0``, ``op_params.1``, the bias ``b``, and with
``normalize`` and ``learn_gamma`` the scalar gains ``op_params.2`` and ``op_params.3``; checkpoints map one to one.
"""
import math
from typing import Any, List, Optional, Tuple

import numpy as np

import mindspore as ms
from mindspore import ops
from mindspore.common.initializer import Normal, initializer

from .structured import ArrayLike, StructuredLinear, check_positive_int, dense_operands, register_linear

__all__ = ["BlockTTLinear", "btt_factorize", "btt_core_shapes"]

_OWNER = "BlockTTLinear"

_bmm = ops.BatchMatMul()


def btt_factorize(width: int) -> Tuple[int, int]:
    """Upstream's ``factorize(width, 2)``: the prime factors, smallest first, each multiplied into the smaller of two
    numbers (the first on a tie), returned ascending. 768 -> (16, 48), 3072 -> (32, 96), 90 -> (6, 15)."""
    width = check_positive_int(_OWNER, "width", width)
    primes: List[int] = []
    rest, p = width, 2
    while p * p <= rest:
        while rest % p == 0:
            primes.append(p)
            rest //= p
        p += 1
    if rest > 1:
        primes.append(rest)
    factors = [1, 1]
    for prime in primes:  # sympy's factorint, which upstream uses, lists them in this order for any usual width
        factors[0 if factors[0] <= factors[1] else 1] *= prime
    small, large = sorted(factors)
    return small, large


def _check_width(name: str, width: int) -> Tuple[int, int]:
    factors = btt_factorize(width)
    if factors[0] == 1:
        # Upstream would split a prime p as 1 * p: one core then has no blocks, and for the input side the layer
        # holds more parameters than the dense matrix it replaces. Refuse it rather than build that silently.
        raise ValueError(f"{_OWNER}: {name}={width} is {'1' if width == 1 else 'prime'}, so it has no split into "
                         f"two factors greater than 1 and a two-core Block Tensor-Train has no blocks on that side; "
                         f"use a composite {name} (e.g. {width + 1}) or another mlp_layer")
    return factors


def btt_core_shapes(in_features: int, out_features: int, tt_rank: int = 1) -> Tuple[Tuple[int, ...], ...]:
    """The shapes of ``(op_params.0, op_params.1)``: ``(m2, m1, n1*r)`` and ``(n1, m2*r, n2)``."""
    m1, m2 = _check_width("in_features", in_features)
    n1, n2 = _check_width("out_features", out_features)
    r = check_positive_int(_OWNER, "tt_rank", tt_rank)
    return (m2, m1, n1 * r), (n1, m2 * r, n2)


def _core_fans(shape: Tuple[int, ...]) -> Tuple[int, int]:
    """A core's (d_in, d_out) as upstream tags it: its last two axes, (m1, n1*r) for W1 and (r*m2, n2) for W2."""
    return shape[-2], shape[-1]


def _max_rms(d_in: int, d_out: int) -> float:
    """btt_norm's bound on a core's rms, written as upstream writes it (it equals the µP init std)."""
    return (min(d_in, d_out) * d_out / (d_out * d_in * d_in)) ** 0.5


def _check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{_OWNER}: {name} must be True or False, got {value!r}")
    return bool(value)


@register_linear("btt")
class BlockTTLinear(StructuredLinear):
    r"""Linear layer whose weight is a two-core Block Tensor-Train (upstream's ``btt``; ``btt_norm`` with
    ``normalize=True``).

    Args:
        in_features: input width, split as ``m1 * m2`` (``btt_factorize``); 1 or a prime is refused.
        out_features: output width, split as ``n1 * n2``; 1 or a prime is refused.
        tt_rank: the rank ``r`` between the two cores (upstream's ``tt_rank``). Default: 1.
        normalize: upstream's ``btt_norm``: each core enters the product divided by ``max(1, rms / max_rms)``.
            Default: False.
        learn_gamma: with ``normalize``, a learnable scalar gain per core (``op_params.2``, ``op_params.3``, both 1
            at init). Upstream turns it off only for attention's q/k under qk-LayerNorm. Default: True.
        has_bias: add a learnable bias ``b`` (zeros at init, as upstream). Default: True.

    Inputs ``(*, in_features)``, outputs ``(*, out_features)`` in the input's dtype. The forward is upstream's
    ``btt_mvm``: two ``BatchMatMul``s with a reshape and transpose between them, the same operators on every
    device (``ops.einsum`` has no CPU kernel). Its gradient is autodiff's, which equals upstream's hand-written
    backward. Under AMP the cores stay float32 (the normalisation too) and are cast to the input's dtype.

    Initialisation is upstream's µP default: each core ~ N(0, s^2), ``s = sqrt(1/d_in_c) * min(1,
    sqrt(d_out_c/d_in_c))`` with ``(d_in_c, d_out_c)`` = ``(m1, n1*r)`` for W1 and ``(r*m2, n2)`` for W2. Upstream's
    ``zero_init`` (W2 = 0 in a residual branch's last layer) and its per-core learning-rate multipliers belong to
    the training recipe and are not part of the layer.
    """

    def __init__(self, in_features: int, out_features: int, tt_rank: int = 1, normalize: bool = False,
                 learn_gamma: bool = True, has_bias: bool = True) -> None:
        super().__init__(in_features, out_features, has_bias)
        self.check_settings(tt_rank=tt_rank, normalize=normalize, learn_gamma=learn_gamma)
        self.tt_rank = int(tt_rank)
        self.normalize = bool(normalize)
        self.learn_gamma = bool(learn_gamma)
        self.m1, self.m2 = _check_width("in_features", self.in_features)
        self.n1, self.n2 = _check_width("out_features", self.out_features)
        shapes = btt_core_shapes(self.in_features, self.out_features, self.tt_rank)
        cores = []
        for index, shape in enumerate(shapes):
            d_in, d_out = _core_fans(shape)
            std = math.sqrt(1.0 / d_in) * min(1.0, math.sqrt(d_out / d_in))
            cores.append(ms.Parameter(initializer(Normal(sigma=std), shape, ms.float32), name=f"op_params.{index}"))
        # Only btt_norm's normalisation uses the gains; upstream creates them only then.
        self.has_gamma = self.normalize and self.learn_gamma
        if self.has_gamma:
            cores += [ms.Parameter(ms.Tensor(1.0, ms.float32), name=f"op_params.{index}") for index in (2, 3)]
        # A ParameterTuple registers each item under its own name, dots allowed, so the cell holds them as
        # "op_params.0"... and a parent names them "<prefix>.op_params.0", as upstream's ParameterList is named.
        self.op_params = ms.ParameterTuple(cores)
        self.max_rms = tuple(_max_rms(*_core_fans(shape)) for shape in shapes)
        self.init_bias(None, name="b")

    @classmethod
    def check_settings(cls, tt_rank: int = 1, normalize: bool = False, learn_gamma: bool = True) -> None:
        check_positive_int(_OWNER, "tt_rank", tt_rank)
        _check_flag("normalize", normalize)
        _check_flag("learn_gamma", learn_gamma)

    def macs_per_token(self) -> int:
        """One multiply-accumulate per core entry: ``r * (in*n1 + m2*out)``."""
        return self.op_params[0].size + self.op_params[1].size

    def _effective_core(self, index: int) -> ms.Tensor:
        """Core ``index`` as the product uses it: btt_norm's ``gamma * W / max(1, rms / max_rms)``, or W."""
        core = self.op_params[index]
        if not self.normalize:
            return core
        rms = ops.sqrt(ops.mean(core * core) + 1e-8)
        ratio = rms / self.max_rms[index]
        # Upstream's Python max(1, ratio): the constant 1 unless ratio > 1, so the gradient reaches rms only then.
        divisor = ops.select(ratio > 1.0, ratio, ops.ones_like(ratio))
        if self.has_gamma:
            core = self.op_params[index + 2] * core
        return core / divisor

    def forward_2d(self, x: ms.Tensor) -> ms.Tensor:
        m1, m2, n1, n2, r = self.m1, self.m2, self.n1, self.n2, self.tt_rank
        w1 = ops.cast(self._effective_core(0), x.dtype)
        w2 = ops.cast(self._effective_core(1), x.dtype)
        batch = x.shape[0]
        h = x.reshape(batch, m2, m1).transpose(1, 0, 2)  # (m2, B, m1): block j holds inputs j*m1 .. j*m1 + m1-1
        h = _bmm(h, w1)  # (m2, B, n1*r)
        # Regroup by output block k: (m2, B, n1, r) -> (n1, B, m2, r), the contraction axis (j, s) with s fastest.
        h = h.reshape(m2, batch, n1, r).transpose(2, 1, 0, 3).reshape(n1, batch, m2 * r)
        out = _bmm(h, w2)  # (n1, B, n2)
        return out.transpose(1, 0, 2).reshape(batch, n1 * n2)  # output index k*n2 + l

    def _effective_cores_numpy(self) -> Tuple[np.ndarray, np.ndarray]:
        cores = []
        for index in (0, 1):
            core = self.op_params[index].asnumpy().astype(np.float64)
            if self.normalize:
                ratio = np.sqrt(np.mean(core ** 2) + 1e-8) / self.max_rms[index]
                gamma = float(self.op_params[index + 2].asnumpy()) if self.has_gamma else 1.0
                core = gamma * core / max(1.0, ratio)
            cores.append(core)
        return cores[0], cores[1]

    def to_dense(self) -> ms.Tensor:
        """The equivalent dense ``(out_features, in_features)`` weight (float32 Tensor), normalisation included."""
        w1, w2 = self._effective_cores_numpy()
        m1, m2, n1, n2, r = self.m1, self.m2, self.n1, self.n2, self.tt_rank
        dense = np.einsum("jiks,kjsl->jikl", w1.reshape(m2, m1, n1, r), w2.reshape(n1, m2, r, n2))
        return ms.Tensor(dense.reshape(self.in_features, self.out_features).T.astype(np.float32))

    @classmethod
    def from_dense(cls, weight: ArrayLike, bias: Optional[ArrayLike] = None, tt_rank: int = 1,
                   normalize: bool = False, learn_gamma: bool = True) -> "BlockTTLinear":
        """A layer holding the Frobenius-optimal BTT of a dense ``(out, in)`` weight: the blocks are independent,
        so each is its rank-``tt_rank`` truncated SVD, split as ``U sqrt(S)`` into W1 and ``sqrt(S) V^T`` into W2.

        With ``normalize`` each core is stored scaled below btt_norm's bound and its gain undoes the scale, so the
        layer's product is the projection; that needs ``learn_gamma``."""
        w, b = dense_operands(f"{_OWNER}.from_dense", weight, bias)
        if _check_flag("normalize", normalize) and not _check_flag("learn_gamma", learn_gamma):
            raise ValueError(f"{_OWNER}.from_dense: normalize=True needs learn_gamma=True, whose gains carry the "
                             f"scale btt_norm takes out of each core")
        out_features, in_features = w.shape
        layer = cls(in_features, out_features, tt_rank=tt_rank, normalize=normalize, learn_gamma=learn_gamma,
                    has_bias=bias is not None)
        m1, m2, n1, n2, r = layer.m1, layer.m2, layer.n1, layer.n2, layer.tt_rank
        blocks = w.astype(np.float64).T.reshape(m2, m1, n1, n2)  # (j, i, k, l) of A = W^T
        w1 = np.zeros((m2, m1, n1, r))
        w2 = np.zeros((n1, m2, r, n2))
        for j in range(m2):
            for k in range(n1):
                u, sigma, vt = np.linalg.svd(blocks[j, :, k, :], full_matrices=False)
                rank = min(r, sigma.size)  # a rank above the block's size leaves the rest zero
                root = np.sqrt(sigma[:rank])
                w1[j, :, k, :rank] = u[:, :rank] * root
                w2[k, j, :rank, :] = root[:, None] * vt[:rank]
        cores = [w1.reshape(m2, m1, n1 * r), w2.reshape(n1, m2 * r, n2)]
        for index, core in enumerate(cores):
            rms = math.sqrt(float(np.mean(core ** 2)))
            scale = 1.0
            if layer.normalize and rms > 0:
                # Half the bound keeps rms (with its 1e-8) below it, so the divisor is the constant 1.
                scale = min(1.0, 0.5 * layer.max_rms[index] / rms)
                layer.op_params[index + 2].set_data(ms.Tensor(1.0 / scale, ms.float32))
            layer.op_params[index].set_data(ms.Tensor((core * scale).astype(np.float32)))
        if b is not None:
            layer.bias.set_data(ms.Tensor(b.astype(np.float32)))
        return layer
