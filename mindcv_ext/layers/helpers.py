"""Small constructors that pin down the PyTorch-reference defaults MindSpore does not share."""
import collections.abc
import math
from typing import Callable, Optional, Tuple, Union

import mindspore as ms
from mindspore import nn, ops

from .cpu_kernels import CpuBiasGeluRegroup, CpuBiasGeluSplit, CpuGelu, CpuLayerNorm, cpu_kernels_wanted

__all__ = ["to_2tuple", "LayerNorm", "layer_norm", "gelu", "GELU", "ErfFreeGELU", "replace_cell", "replace_cells"]


def to_2tuple(value: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    if isinstance(value, collections.abc.Iterable) and not isinstance(value, str):
        value = tuple(value)
        if len(value) != 2:
            raise ValueError(f"expected an int or a pair, got {value!r}")
        return value
    return (value, value)


class _LayerNormLastAxis(nn.Cell):
    """``ops.LayerNorm`` over the last axis, differentiated by hand.

    MindSpore 2.10's CPU ``LayerNormGrad`` kernel spends ~16 ms on a 1568x768 input; the same gradient from
    elementwise ops and sums takes ~7 ms. It is a third of a gMLP training step's non-matmul time.
    """

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)

    def construct(self, x: ms.Tensor, gamma: ms.Tensor, beta: ms.Tensor) -> ms.Tensor:
        return self.norm(x, gamma, beta)[0]

    def bprop(self, x, gamma, beta, out, dout):
        dim = x.shape[-1]
        rows, drows = x.reshape(-1, dim), dout.reshape(-1, dim)
        centred = rows - rows.mean(-1, keep_dims=True)
        rstd = ops.rsqrt((centred * centred).mean(-1, keep_dims=True) + self.eps)
        normed = centred * rstd
        dnormed = drows * gamma
        dx = (dnormed - dnormed.mean(-1, keep_dims=True) - normed * (dnormed * normed).mean(-1, keep_dims=True)) * rstd
        return dx.reshape(x.shape), (drows * normed).sum(0), drows.sum(0)


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last dimension, faster on CPU.

    Parameters (``gamma``, ``beta``), results and AMP handling (it is still an ``nn.LayerNorm``, kept in fp32
    under O2) are MindSpore's. On CPU, float32 inputs run one fused kernel forward and one backward
    (``cpu_kernels.CpuLayerNorm``: ~0.4 ms forward on 1568x768 instead of ~3 ms); other dtypes, or without
    the kernels, take MindSpore's forward with a hand-written backward. GPU and Ascend keep their fused
    ``LayerNorm``/``LayerNormGrad`` kernels.

    Args:
        dim: width of the last dimension.
        eps: added to the variance. Default: 1e-6.
        custom_backward: use the hand-written backward. Default None: on the CPU backend.
        cpu_kernel: use the fused CPU kernels. Default None: on the CPU backend when they compile.
    """

    def __init__(self, dim: int, eps: float = 1e-6, custom_backward: Optional[bool] = None,
                 cpu_kernel: Optional[bool] = None) -> None:
        super().__init__((dim,), epsilon=eps)
        if custom_backward is None:
            custom_backward = ms.get_context("device_target") == "CPU"
        self.custom_backward = bool(custom_backward)
        self.norm_last_axis = _LayerNormLastAxis(eps)
        self.cpu_kernel = CpuLayerNorm(eps) if cpu_kernels_wanted(cpu_kernel) else None
        # Read at graph compilation; set_cpu_kernels(net, False) turns it off, e.g. before an export.
        self.use_cpu_kernel = self.cpu_kernel is not None

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        return self.normalize(x, self.gamma, self.beta)

    def normalize(self, x: ms.Tensor, gamma: ms.Tensor, beta: ms.Tensor) -> ms.Tensor:
        """The same normalisation with given parameters (e.g. this layer's, reordered to match ``x``'s features)."""
        gamma, beta = gamma.astype(x.dtype), beta.astype(x.dtype)
        if self.use_cpu_kernel and x.dtype == ms.float32:
            return self.cpu_kernel(x, gamma, beta)
        if self.custom_backward:
            return self.norm_last_axis(x, gamma, beta)
        return self.layer_norm(x, gamma, beta)[0]


def layer_norm(dim: int, eps: float = 1e-6) -> nn.LayerNorm:
    """LayerNorm over the last dimension; MindSpore's own default epsilon (1e-7) matches no reference."""
    return LayerNorm(dim, eps)


class _Erf(nn.Cell):
    """erf whose gradient 2/sqrt(pi) * exp(-z*z) squares with a multiply: autodiff's Pow costs 7 ms per
    1568x3072 activation on CPU, a quarter of GELU's backward."""

    def construct(self, z: ms.Tensor) -> ms.Tensor:
        return ops.erf(z)

    def bprop(self, z, out, dout):
        return (dout * (2.0 / math.sqrt(math.pi)) * ops.exp(-(z * z)),)


class GELU(nn.Cell):
    """Exact GELU, ``0.5 * x * (1 + erf(x / sqrt(2)))``, as PyTorch's default.

    On CPU, float32 inputs run one fused kernel forward and one backward (``cpu_kernels.CpuGelu``): a
    1568x3072 activation takes ~6 ms forward and backward instead of ~30 ms. Elsewhere (other dtypes, GPU,
    Ascend, ``cpu_kernel=False``) it is written from MindSpore operators: equal to
    ``nn.GELU(approximate=False)`` within 2.4e-7 and with the same gradient accuracy (8e-7 against float64),
    but faster on CPU, with a multiply by 1/sqrt(2) where MindSpore's lowering divides, and the erf gradient
    above.

    Args:
        cpu_kernel: use the fused CPU kernel. Default None: on the CPU backend when it compiles.
    """

    def __init__(self, cpu_kernel: Optional[bool] = None) -> None:
        super().__init__()
        self.erf = _Erf()
        wanted = cpu_kernels_wanted(cpu_kernel)
        self.cpu_kernel = CpuGelu() if wanted else None
        # The same GELU fused with a Monarch MLP's bias and regrouping (monarch_mlp uses it).
        self.cpu_regroup = CpuBiasGeluRegroup() if wanted else None
        # ...and with a gated MLP's bias and split into the gate's halves (monarch_gated_mlp).
        self.cpu_split = CpuBiasGeluSplit() if wanted else None
        # Read at graph compilation; set_cpu_kernels(net, False) turns it off, e.g. before an export.
        self.use_cpu_kernel = self.cpu_kernel is not None

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        if self.use_cpu_kernel and x.dtype == ms.float32:
            return self.cpu_kernel(x)
        return 0.5 * x * (1.0 + self.erf(x * (1.0 / math.sqrt(2.0))))


def gelu() -> nn.Cell:
    """Exact (erf) GELU as in PyTorch; MindSpore's ``nn.GELU()`` default is the tanh approximation."""
    return GELU()


class ErfFreeGELU(nn.Cell):
    """Exact GELU with erf written as Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7, below fp32 noise).

    For exporters that lack an Erf operator (MindSpore's ONNX exporter); numerically it stands in for
    ``nn.GELU(approximate=False)``, unlike the tanh approximation (off by up to 4.7e-4).
    """

    _P = 0.3275911
    _A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        z = x / math.sqrt(2.0)
        magnitude = ops.abs(z)
        one = ops.ones_like(magnitude)
        t = ops.div(one, one + self._P * magnitude)  # not 1.0 / (...): that lowers to Reciprocal, which ONNX export lacks
        poly = t * (self._A[0] + t * (self._A[1] + t * (self._A[2] + t * (self._A[3] + t * self._A[4]))))
        # sign(z) without a Sign operator: |erf| vanishes like |z| near 0, so the 1e-12 never shows.
        erf = ops.div(z, magnitude + 1e-12) * (one - poly * ops.exp(-z * z))
        return 0.5 * x * (1.0 + erf)


def replace_cell(net: nn.Cell, name: str, new: nn.Cell) -> None:
    """Put ``new`` where the sub-cell called ``name`` (e.g. ``blocks.0.mlp.fc1``) is, keeping full parameter names."""
    parent_name, _, attr = name.rpartition(".")
    parent = net if not parent_name else dict(net.cells_and_names())[parent_name]
    if isinstance(parent, (nn.SequentialCell, nn.CellList)):
        parent[int(attr)] = new
    else:
        setattr(parent, attr, new)
    # A Cell assigned after construction names its parameters relative to its parent only
    # ("fc1.blkdiag1" in every block); checkpoints and optimizers need the full, unique name.
    new.update_parameters_name(name + ".")


def replace_cells(net: nn.Cell, predicate: Callable[[str, nn.Cell], bool],
                  factory: Callable[[nn.Cell], nn.Cell]) -> int:
    """Replace every sub-cell for which ``predicate(name, cell)`` holds by ``factory(cell)``; returns the count."""
    targets = [(name, cell) for name, cell in net.cells_and_names() if name and predicate(name, cell)]
    for name, cell in targets:
        replace_cell(net, name, factory(cell))
    return len(targets)
