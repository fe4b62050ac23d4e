"""layers/cpu_kernels.py: the fused CPU kernels build once, fail loudly but harmlessly, and never leak into exports."""
import os

import numpy as np
import pytest

import mindspore as ms

from mindcv_ext.layers import GELU, Mlp, cpu_kernel_library, set_cpu_kernels
from mindcv_ext.layers import cpu_kernels
from tests.utils import rel_err

needs_kernels = pytest.mark.skipif(cpu_kernel_library() is None, reason="the CPU kernels did not build here")


def test_build_is_cached(tmp_path):
    library = cpu_kernels.build_cpu_kernels(tmp_path)
    assert library.is_file() and library.parent.parent == tmp_path / "kernels"
    stamp = library.stat().st_mtime_ns
    assert cpu_kernels.build_cpu_kernels(tmp_path) == library and library.stat().st_mtime_ns == stamp
    # Other flags are another build, beside the first.
    other = cpu_kernels.build_cpu_kernels(tmp_path, flags=tuple(f for f in cpu_kernels.FLAGS if f != "-O3"))
    assert other != library and other.is_file()


def test_missing_compiler_is_named(tmp_path):
    with pytest.raises(RuntimeError, match="no-such-c\\+\\+"):
        cpu_kernels.build_cpu_kernels(tmp_path, compiler="no-such-c++")


def test_failed_build_leaves_nothing_behind(tmp_path):
    with pytest.raises(RuntimeError, match="building the CPU kernels failed"):
        cpu_kernels.build_cpu_kernels(tmp_path, flags=("-shared", "--no-such-flag"))
    assert not [p for p in (tmp_path / "kernels").rglob("*") if p.is_file()]


def test_environment_switch_falls_back_to_operators(monkeypatch):
    monkeypatch.setenv(cpu_kernels.ENV_SWITCH, "0")
    cpu_kernel_library.cache_clear()
    try:
        assert cpu_kernel_library() is None
        gelu = GELU()
        assert gelu.cpu_kernel is None and not gelu.use_cpu_kernel
        assert not Mlp(64, 256, mlp_layer="monarch").fused_gelu
    finally:
        monkeypatch.undo()
        cpu_kernel_library.cache_clear()


@needs_kernels
def test_export_never_names_the_library(graph_mode, tmp_path):
    """A MindIR written with the kernels on would call this machine's .so; set_cpu_kernels(net, False) prevents it."""
    x = ms.Tensor(np.random.default_rng(0).standard_normal((2, 5, 64)).astype(np.float32))
    library = cpu_kernel_library().encode()

    with_kernels = Mlp(64, 256, mlp_layer="monarch")
    ms.export(with_kernels, x, file_name=str(tmp_path / "on"), file_format="MINDIR")
    assert library in (tmp_path / "on.mindir").read_bytes()  # the check below can fail

    mlp = Mlp(64, 256, mlp_layer="monarch")
    assert set_cpu_kernels(mlp, False) == 3 and not mlp.act.use_cpu_kernel  # GELU, fc1, fc2
    ms.export(mlp, x, file_name=str(tmp_path / "off"), file_format="MINDIR")
    exported = (tmp_path / "off.mindir").read_bytes()
    assert library not in exported and b"Custom" not in exported
    reloaded = ms.nn.GraphCell(ms.load(str(tmp_path / "off.mindir")))(x).asnumpy()
    assert rel_err(reloaded, mlp(x).asnumpy()) < 1e-6
    assert set_cpu_kernels(mlp, False) == 0  # nothing left to switch


@needs_kernels
def test_kernels_only_for_float32(graph_mode):
    gelu = GELU()
    assert gelu.use_cpu_kernel and os.path.isfile(cpu_kernel_library())
    x = np.random.default_rng(1).standard_normal((3, 50)).astype(np.float32)
    # float64 has no kernel: the operators path runs, in float64.
    out64 = gelu(ms.Tensor(x.astype(np.float64))).asnumpy()
    assert out64.dtype == np.float64 and rel_err(out64, gelu(ms.Tensor(x)).asnumpy()) < 1e-6


def test_asking_for_kernels_off_cpu_is_an_error(monkeypatch):
    real = ms.get_context
    monkeypatch.setattr(cpu_kernels.ms, "get_context", lambda key: "GPU" if key == "device_target" else real(key))
    assert cpu_kernels.cpu_kernels_wanted(None) is False  # automatic choice: standard operators off CPU
    with pytest.raises(ValueError, match="device_target='CPU'.*'GPU'"):
        cpu_kernels.cpu_kernels_wanted(True)


@needs_kernels
def test_library_brings_no_openmp_runtime():
    """libgomp's idle threads spin and take the cores from MindSpore's own pool (a gMLP block ran 1.6x slower);
    the kernels use a sleeping thread pool of their own instead."""
    assert "-fopenmp" not in cpu_kernels.FLAGS
    assert b"libgomp" not in open(cpu_kernel_library(), "rb").read()


@needs_kernels
def test_gate_to_blocks_kernel_against_float64(graph_mode):
    """gMLP's gate kernel: z[k, r] = u[r, k] * (p[r, k] + bias[r % T]) gathered block-major, and its three gradients
    (the bias one sums every sample's rows of its token), against NumPy in float64."""
    samples, tokens, k, q = 3, 5, 4, 6
    rng = np.random.default_rng(7)
    u, p, sens = (rng.standard_normal(shape).astype(np.float32)
                  for shape in ((samples * tokens, k, q), (samples * tokens, k, q), (k, samples * tokens, q)))
    bias = rng.standard_normal(tokens).astype(np.float32)
    gate = cpu_kernels.CpuGateToBlocks()
    grads = ms.ops.GradOperation(get_all=True, sens_param=True)(gate)
    z = gate(ms.Tensor(u), ms.Tensor(p), ms.Tensor(bias)).asnumpy()
    du, dp, dbias = (g.asnumpy() for g in grads(ms.Tensor(u), ms.Tensor(p), ms.Tensor(bias), ms.Tensor(sens)))
    u64, p64, sens64 = u.astype(np.float64), p.astype(np.float64), sens.astype(np.float64).transpose(1, 0, 2)
    shifted = p64 + np.tile(bias.astype(np.float64), samples)[:, None, None]
    assert z.shape == (k, samples * tokens, q) and rel_err(z, (u64 * shifted).transpose(1, 0, 2)) < 1e-6
    assert rel_err(du, sens64 * shifted) < 1e-6 and rel_err(dp, sens64 * u64) < 1e-6
    assert rel_err(dbias, (sens64 * u64).sum(axis=(1, 2)).reshape(samples, tokens).sum(0)) < 1e-6


needs_sgemm = pytest.mark.skipif(not cpu_kernels.cpu_sgemm_available(), reason="MindSpore here has no oneDNN sgemm")


@needs_sgemm
@pytest.mark.parametrize("token_major", [False, True], ids=["block-major", "token-major"])
@pytest.mark.parametrize("blocks, batch, p, q", [(4, 10, 6, 3), (3, 7, 5, 8), (1, 9, 4, 4)])
def test_blocks_matmul_against_float64(blocks, batch, p, q, token_major, graph_mode):
    """y[k] = x[k] . w[k]^T and both gradients, x block-major or read in place token-major (block k in columns
    [k*p, (k+1)*p)), against NumPy in float64; 3 and 1 blocks split their rows between the threads."""
    rng = np.random.default_rng(11)
    x_blocks = rng.standard_normal((blocks, batch, p)).astype(np.float32)
    w, sens = (rng.standard_normal(shape).astype(np.float32) for shape in ((blocks, q, p), (blocks, batch, q)))
    x = x_blocks.transpose(1, 0, 2).reshape(batch, blocks * p) if token_major else x_blocks
    matmul = cpu_kernels.CpuBlocksMatmul()
    y = matmul(ms.Tensor(x), ms.Tensor(w)).asnumpy()
    dx, dw = (g.asnumpy() for g in ms.ops.GradOperation(get_all=True, sens_param=True)(matmul)(
        ms.Tensor(x), ms.Tensor(w), ms.Tensor(sens)))
    x64, w64, sens64 = x_blocks.astype(np.float64), w.astype(np.float64), sens.astype(np.float64)
    assert y.shape == (blocks, batch, q) and rel_err(y, x64 @ w64.transpose(0, 2, 1)) < 1e-6
    dx_blocks = sens64 @ w64
    assert dx.shape == x.shape
    assert rel_err(dx, dx_blocks.transpose(1, 0, 2).reshape(batch, -1) if token_major else dx_blocks) < 1e-6
    assert rel_err(dw, sens64.transpose(0, 2, 1) @ x64) < 1e-6


@needs_sgemm
def test_blocks_matmul_rejects_mismatched_shapes():
    """A width that does not match the weight's is an error from the kernel, not a read past the input."""
    matmul = cpu_kernels.CpuBlocksMatmul()
    with pytest.raises(RuntimeError):
        matmul(ms.Tensor(np.ones((4, 5, 6), np.float32)), ms.Tensor(np.ones((4, 3, 7), np.float32))).asnumpy()
