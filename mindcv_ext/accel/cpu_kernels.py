"""The CPU kernels (``kernels/cpu_ops.cc``), compiled once per machine and run through ``ops.Custom``.

MindSpore's CPU backend has no fused exact GELU: it runs five operators, each a pass over memory, and a
scalar ``Erf``. On the 1,568x3,072 hidden activation of a Mixer-B MLP that is most of the time not spent in
matmuls. The kernels here do the same arithmetic in one vectorised, multi-threaded pass. Monarch's batched
matmuls run on ``dnnl_sgemm`` from the oneDNN library MindSpore has loaded (``CpuBlocksMatmul``), ~1.4x faster
than ``BatchMatMul`` at its block shapes here.

Only ``accelerate`` (this package's ``__init__``) builds them, the first time it is applied on a machine, and
only the cells of ``cells.py`` call them: the plain network, which every device and every export runs, never
does. ``MINDCV_EXT_CPU_KERNELS=0`` turns them off everywhere.

The library is built with ``-march=native`` into ``<cache>/kernels/<hash>/`` (the cache of
``mindcv_ext.data.default_cache_dir``), keyed by the source, the flags, the compiler and the CPU, so a home
directory shared by different machines never hands one of them the other's instructions.
"""
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence, Tuple

import mindspore as ms
from mindspore import nn, ops

__all__ = ["cpu_kernel_library", "build_cpu_kernels", "kernels_disabled", "CpuGelu",
           "CpuBiasGeluRegroup", "CpuBiasGeluSplit", "CpuGateToBlocks", "CpuLayerNorm", "CpuColumnsOfRows",
           "CpuColumnsOfRowsBias", "CpuColumnsOfFlat", "cpu_sgemm_available", "CpuBlocksMatmul", "CpuSslChunkSum",
           "CpuSparseLowRank"]

_logger = logging.getLogger("mindcv_ext")
SOURCE = Path(__file__).with_name("kernels") / "cpu_ops.cc"
# -fno-math-errno lets GCC call libmvec's vector erff/expf; no -ffast-math (see the source). OpenMP only
# vectorises (-fopenmp-simd): the threads are the source's own pool, which sleeps when idle.
FLAGS = ("-std=c++17", "-O3", "-march=native", "-fno-math-errno", "-fopenmp-simd", "-pthread", "-fPIC", "-shared")
LIBS = ("-lmvec", "-lm", "-ldl")  # -ldl: dlopen before glibc 2.34
ENV_SWITCH = "MINDCV_EXT_CPU_KERNELS"


def _cpu_identity() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine()
    wanted = ("model name", "flags")
    return platform.machine() + "".join(sorted({line for line in lines if line.split(":")[0].strip() in wanted}))


def _compiler_version(compiler: str) -> str:
    try:
        return subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def build_cpu_kernels(cache_dir: Optional[os.PathLike] = None, compiler: Optional[str] = None,
                      flags: Sequence[str] = FLAGS) -> Path:
    """Compile ``kernels/cpu_ops.cc`` into ``<cache_dir>/kernels/<hash>/`` unless already there; return the .so.

    Raises ``RuntimeError`` naming the compiler and its output when the build fails.
    """
    compiler = compiler or os.environ.get("CXX") or "g++"
    executable = shutil.which(compiler)
    if executable is None:
        raise RuntimeError(f"C++ compiler {compiler!r} not found (set $CXX, or install g++)")
    if cache_dir is None:
        from ..data.digits import default_cache_dir

        cache_dir = default_cache_dir()
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(flags + LIBS).encode(), _compiler_version(executable).encode(),
                                     _cpu_identity().encode()])).hexdigest()[:16]
    target = Path(cache_dir) / "kernels" / key / "libmindcv_ext_cpu.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _logger.info(f"compiling CPU kernels, once per machine (up to a minute) into {target.parent} ...")
    started = time.monotonic()
    # Build under a private name and rename: concurrent workers (msrun) never load half a library.
    handle, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(handle)
    command = [executable, *flags, str(SOURCE), "-o", partial, *LIBS]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"building the CPU kernels failed ({' '.join(command)}):\n{result.stderr.strip()}")
        os.replace(partial, target)
        _logger.info(f"CPU kernels compiled in {time.monotonic() - started:.0f} s")
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return target


def kernels_disabled() -> bool:
    """Whether ``MINDCV_EXT_CPU_KERNELS`` switches the kernels off (0, false, no, off)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off")


def cpu_kernel_library() -> str:
    """Path of the compiled kernel library (built on the first call on a machine); raises ``RuntimeError`` saying
    why when it cannot be had. A failed build is not retried in the same process: g++ may take minutes to fail."""
    if kernels_disabled():
        raise RuntimeError(f"{ENV_SWITCH}={os.environ[ENV_SWITCH]} switches them off")
    library, error = _build_once()
    if library is None:
        raise RuntimeError(error)
    return library


@lru_cache(maxsize=None)
def _build_once() -> Tuple[Optional[str], str]:
    """``(library path, '')``, or ``(None, why not)``; cached either way."""
    if platform.system() != "Linux":
        return None, f"MindSpore's AOT kernel interface is Linux-only (this is {platform.system()})"
    try:
        library = build_cpu_kernels()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return None, str(exc)
    allowed = os.environ.get("MS_CUSTOM_AOT_WHITE_LIST")
    if allowed and os.path.commonpath([os.path.realpath(library), os.path.realpath(allowed)]) != \
            os.path.realpath(allowed):
        return None, f"{library} is outside MS_CUSTOM_AOT_WHITE_LIST={allowed}"
    return str(library), ""


@lru_cache(maxsize=None)
def cpu_sgemm_available() -> bool:
    """Whether ``CpuBlocksMatmul`` can run: MindSpore has loaded oneDNN (``libdnnl.so.3``)
    with its ``dnnl_sgemm``, as the CPU wheels do. The kernel library finds it the same way, without loading a
    copy of its own."""
    try:
        onednn = ctypes.CDLL("libdnnl.so.3", mode=os.RTLD_NOW | os.RTLD_NOLOAD)
    except OSError:
        return False
    return hasattr(onednn, "dnnl_sgemm")


def _aot(function: str, inputs: int) -> ops.Custom:
    shape = (lambda x: x) if inputs == 1 else (lambda x, *_: x)
    return ops.Custom(f"{cpu_kernel_library()}:{function}", out_shape=shape, out_dtype=shape, func_type="aot")


class CpuGelu(nn.Cell):
    """Exact GELU of a float32 tensor, forward and backward each one fused kernel."""

    def __init__(self) -> None:
        super().__init__()
        self.forward_kernel = _aot("GeluForward", 1)
        self.backward_kernel = _aot("GeluBackward", 2)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        return self.forward_kernel(x)

    def bprop(self, x, out, dout):
        return (self.backward_kernel(x, dout),)


class CpuBiasGeluRegroup(nn.Cell):
    """``gelu(y + bias)`` of a float32 ``(l, B, k, c)`` tensor (bias ``(l, k, c)``), returned as ``(k, B, l, c)``.

    Between two Monarch layers, fc1's bias, the activation and the regrouping into fc2's blocks are each a
    pass over the largest tensor of the MLP; here they are one pass forward and one backward (which also
    sums the bias gradient).
    """

    def __init__(self) -> None:
        super().__init__()
        library = cpu_kernel_library()
        self.forward_kernel = ops.Custom(f"{library}:BiasGeluRegroupForward",
                                         out_shape=lambda y, bias: (y[2], y[1], y[0], y[3]),
                                         out_dtype=lambda y, bias: y, func_type="aot")
        self.backward_kernel = ops.Custom(f"{library}:BiasGeluRegroupBackward",
                                          out_shape=lambda y, bias, dz: (y, bias),
                                          out_dtype=lambda y, bias, dz: (y, bias), func_type="aot")

    def construct(self, y: ms.Tensor, bias: ms.Tensor) -> ms.Tensor:
        return self.forward_kernel(y, bias)

    def bprop(self, y, bias, out, dout):
        dy, dbias = self.backward_kernel(y, bias, dout)
        return dy, dbias


class CpuBiasGeluSplit(nn.Cell):
    """``gelu(y + bias)`` of a float32 ``(l, B, k, c)`` tensor, returned token-major as two halves ``(B, k/2, l, c)``.

    The gated MLP's version of ``CpuBiasGeluRegroup``: the halves are the gating unit's two inputs, already in
    the order its token projection and fc2 read, so neither needs a transpose.
    """

    def __init__(self) -> None:
        super().__init__()
        library = cpu_kernel_library()
        half = lambda y: (y[1], y[2] // 2, y[0], y[3])  # noqa: E731
        self.forward_kernel = ops.Custom(f"{library}:BiasGeluSplitForward",
                                         out_shape=lambda y, bias: (half(y), half(y)),
                                         out_dtype=lambda y, bias: (y, y), func_type="aot")
        self.backward_kernel = ops.Custom(f"{library}:BiasGeluSplitBackward",
                                          out_shape=lambda y, bias, du, dv: (y, bias),
                                          out_dtype=lambda y, bias, du, dv: (y, bias), func_type="aot")

    def construct(self, y: ms.Tensor, bias: ms.Tensor):
        return self.forward_kernel(y, bias)

    def bprop(self, y, bias, out, dout):
        dy, dbias = self.backward_kernel(y, bias, dout[0], dout[1])
        return dy, dbias


def _regroup(function: str, blocks: int, out_shape=None, out_dtype=None) -> ops.Custom:
    """A regrouping kernel into ``blocks`` blocks. The count is also a primitive attribute: PyNative caches shape
    inference by primitive and input shapes, and the same kernel regroups equal shapes into different blocks."""
    kernel = ops.Custom(f"{cpu_kernel_library()}:{function}", out_shape=out_shape or _blocks_of(blocks),
                        out_dtype=out_dtype or (lambda x, *rest: x), func_type="aot")
    kernel.add_prim_attr("blocks", blocks)
    return kernel


def _blocks_of(blocks: int):
    """out_shape of a regrouping into ``blocks`` blocks, ``(blocks, B, size / blocks)``, from the first input's
    shape; one block is the 2-D token-major ``(B, size)``, as an input too."""
    def shape(x, *rest):
        batch, size = (x[0], x[1]) if len(x) == 2 else (x[1], x[0] * x[2])
        return (batch, size) if blocks == 1 else (blocks, batch, size // blocks)
    return shape


class _CpuPermutation(nn.Cell):
    """A regrouping kernel into ``blocks`` blocks whose backward is its inverse, back into ``in_blocks``."""

    def __init__(self, function: str, inverse: str, blocks: int, in_blocks: int) -> None:
        super().__init__()
        self.forward_kernel = _regroup(function, blocks)
        self.backward_kernel = _regroup(inverse, in_blocks)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        return self.forward_kernel(x)

    def bprop(self, x, out, dout):
        return (self.backward_kernel(dout),)


class CpuColumnsOfRows(_CpuPermutation):
    """Block-major ``x (R, B, C)`` whose blocks are, per token, the rows of an R x C matrix, to the matrix's columns
    one after another (feature ``c*R + r``), cut into ``blocks`` blocks ``(blocks, B, R*C/blocks)``. One pass each
    way: the backward is ``CpuColumnsOfFlat``'s forward. ``in_blocks`` is R. One block is token-major ``(B, n)``,
    2-D, in and out (a reshape would copy).

    MonarchLinear's output permutation is ``blocks=1``; splitting a token-major input into blocks is ``R=1``.
    """

    def __init__(self, blocks: int, in_blocks: int) -> None:
        super().__init__("ColumnsOfRows", "ColumnsOfFlat", blocks, in_blocks)


class CpuColumnsOfFlat(_CpuPermutation):
    """Block-major ``x (m, B, n)`` whose features, per token and in order, are an R x C matrix row by row, to the
    matrix's columns as blocks ``(C, B, R)``, ``C = blocks``: Monarch's permutation between its two factors. One
    pass each way: the backward is ``CpuColumnsOfRows``'s forward. ``in_blocks`` is m."""

    def __init__(self, blocks: int, in_blocks: int) -> None:
        super().__init__("ColumnsOfFlat", "ColumnsOfRows", blocks, in_blocks)


class CpuColumnsOfRowsBias(nn.Cell):
    """``CpuColumnsOfRows`` plus a bias indexed by the output feature, in the same pass; the backward also sums the
    bias gradient (MonarchLinear's output permutation and bias)."""

    def __init__(self, blocks: int, in_blocks: int) -> None:
        super().__init__()
        self.forward_kernel = _regroup("ColumnsOfRows", blocks)
        self.backward_kernel = _regroup("ColumnsOfFlat", in_blocks, lambda dy, bias: (_blocks_of(in_blocks)(dy), bias),
                                        lambda dy, bias: (dy, bias))

    def construct(self, x: ms.Tensor, bias: ms.Tensor) -> ms.Tensor:
        return self.forward_kernel(x, bias)

    def bprop(self, x, bias, out, dout):
        return self.backward_kernel(dout, bias)


class CpuGateToBlocks(nn.Cell):
    """gMLP's gate ``u * (p + bias)`` on float32 ``(R, k, q)`` rows (``bias`` per token, row ``r`` is token
    ``r % T``), returned as fc2's input blocks ``(k, R, q)``: the bias add, the product and the gather are one pass
    forward and one backward (which also sums the bias gradient)."""

    def __init__(self) -> None:
        super().__init__()
        library = cpu_kernel_library()
        self.forward_kernel = ops.Custom(f"{library}:GateToBlocksForward",
                                         out_shape=lambda u, p, bias: (u[1], u[0], u[2]),
                                         out_dtype=lambda u, p, bias: u, func_type="aot")
        self.backward_kernel = ops.Custom(f"{library}:GateToBlocksBackward",
                                          out_shape=lambda u, p, bias, dz: (u, p, bias),
                                          out_dtype=lambda u, p, bias, dz: (u, p, bias), func_type="aot")

    def construct(self, u: ms.Tensor, p: ms.Tensor, bias: ms.Tensor) -> ms.Tensor:
        return self.forward_kernel(u, p, bias)

    def bprop(self, u, p, bias, out, dout):
        return self.backward_kernel(u, p, bias, dout)


def _blocks_matmul_shape(x, w):
    """``(k, B, q)`` for x ``(k, B, p)`` or token-major ``(B, k*p)`` and w ``(k, q, p)``."""
    batch = x[0] if len(x) == 2 else x[1]
    return (w[0], batch, w[1])


class CpuBlocksMatmul(nn.Cell):
    """``y[kk] = x[kk] . w[kk]^T`` for the float32 blocks of ``w (k, q, p)``: a batched matmul with the weight
    transposed, through oneDNN's sgemm (see ``cpu_sgemm_available``). ``x`` is block-major ``(k, B, p)``, or
    token-major ``(B, k*p)`` with block ``kk`` in columns ``[kk*p, (kk+1)*p)``, read in place; ``y`` is
    ``(k, B, q)``. The backward is one more kernel: ``dx`` in ``x``'s layout and ``dw``."""

    def __init__(self) -> None:
        super().__init__()
        library = cpu_kernel_library()
        self.forward_kernel = ops.Custom(f"{library}:BlocksMatmul", out_shape=_blocks_matmul_shape,
                                         out_dtype=lambda x, w: x, func_type="aot")
        self.backward_kernel = ops.Custom(f"{library}:BlocksMatmulBackward", out_shape=lambda x, w, dy: (x, w),
                                          out_dtype=lambda x, w, dy: (x, w), func_type="aot")

    def construct(self, x: ms.Tensor, w: ms.Tensor) -> ms.Tensor:
        return self.forward_kernel(x, w)

    def bprop(self, x, w, out, dout):
        return self.backward_kernel(x, w, dout)


class CpuSslChunkSum(nn.Cell):
    """Sketch Structured Linear's input sketch in one pass: ``x (M, K)`` to ``(M, K/c)``, where K-step t's c chunks
    of 32 are rotated left by ``shifts[ck]`` and added. The backward writes each rotated chunk back (one pass)."""

    def __init__(self) -> None:
        super().__init__()
        library = cpu_kernel_library()
        self.forward_kernel = ops.Custom(f"{library}:SslChunkSum",
                                         out_shape=lambda x, shifts: (x[0], x[1] // shifts[0]),
                                         out_dtype=lambda x, shifts: x, func_type="aot")
        self.backward_kernel = ops.Custom(f"{library}:SslChunkSumBackward", out_shape=lambda x, shifts, dy: x,
                                          out_dtype=lambda x, shifts, dy: x, func_type="aot")

    def construct(self, x: ms.Tensor, shifts: ms.Tensor) -> ms.Tensor:
        return self.forward_kernel(x, shifts)

    def bprop(self, x, shifts, out, dout):
        return self.backward_kernel(x, shifts, dout), ops.zeros_like(shifts)


class CpuSparseLowRank(nn.Cell):
    """Pixelfly's ``SparseLRLinear`` on a float32 token-major ``x (T, in)``: ``(1 - g) S x + g W2 W1 x + bias``
    with ``g = sigmoid(x wg + bg)`` per token, forward and backward each one kernel. ``S`` is fly's block-sparse
    weight ``(nnz, b, b)`` on its int32 ``layout``, multiplied as a few large sgemms over runs of blocks (see the
    source), so only the layout's share of the dense work is done. The backward recomputes the gate and the
    low-rank hidden from ``x`` instead of keeping them."""

    def __init__(self) -> None:
        super().__init__()
        library = cpu_kernel_library()
        self.forward_kernel = ops.Custom(f"{library}:SparseLowRankForward",
                                         out_shape=lambda x, w, layout, lr1, lr2, gw, gb, bias: (x[0], lr2[0]),
                                         out_dtype=lambda x, *rest: x, func_type="aot")
        grads = lambda x, w, layout, lr1, lr2, gw, gb, bias, dy: (x, w, lr1, lr2, gw, gb, bias)  # noqa: E731
        self.backward_kernel = ops.Custom(f"{library}:SparseLowRankBackward", out_shape=grads, out_dtype=grads,
                                          func_type="aot")

    def construct(self, x, weight, layout, lr_weight1, lr_weight2, gate_weight, gate_bias, bias):
        return self.forward_kernel(x, weight, layout, lr_weight1, lr_weight2, gate_weight, gate_bias, bias)

    def bprop(self, x, weight, layout, lr_weight1, lr_weight2, gate_weight, gate_bias, bias, out, dout):
        dx, dweight, dlr1, dlr2, dgate_w, dgate_b, dbias = self.backward_kernel(
            x, weight, layout, lr_weight1, lr_weight2, gate_weight, gate_bias, bias, dout)
        return dx, dweight, ops.zeros_like(layout), dlr1, dlr2, dgate_w, dgate_b, dbias


class CpuLayerNorm(nn.Cell):
    """LayerNorm over the last axis of a float32 tensor (given ``gamma``, ``beta``), forward and backward each
    one kernel; the backward recomputes the row statistics instead of keeping them."""

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = ms.Tensor([eps], ms.float32)
        library = cpu_kernel_library()
        self.forward_kernel = ops.Custom(f"{library}:LayerNormForward", out_shape=lambda x, *_: x,
                                         out_dtype=lambda x, *_: x, func_type="aot")
        self.backward_kernel = ops.Custom(f"{library}:LayerNormBackward",
                                          out_shape=lambda x, gamma, eps, dy: (x, gamma, gamma),
                                          out_dtype=lambda x, gamma, eps, dy: (x, gamma, gamma), func_type="aot")

    def construct(self, x: ms.Tensor, gamma: ms.Tensor, beta: ms.Tensor) -> ms.Tensor:
        return self.forward_kernel(x, gamma, beta, self.eps)

    def bprop(self, x, gamma, beta, out, dout):
        return self.backward_kernel(x, gamma, self.eps, dout)
