"""accel/cpu_kernels.py: the CPU kernels build once, fail loudly, and compute what they say (against float64)."""
import numpy as np
import pytest

import mindspore as ms

from mindcv_ext.accel import cpu_kernels
from tests.utils import rel_err


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


def test_environment_switch_refuses_to_build(monkeypatch):
    """Read at every call, ahead of the cached build: the switch works after the kernels were built."""
    monkeypatch.setenv(cpu_kernels.ENV_SWITCH, "0")
    with pytest.raises(RuntimeError, match="MINDCV_EXT_CPU_KERNELS=0 switches them off"):
        cpu_kernels.cpu_kernel_library()


def test_failed_build_is_reported_once_not_retried(monkeypatch, tmp_path):
    """A build that fails (here: no compiler) is cached with its reason; later calls do not run g++ again."""
    calls = []

    def failing_build():
        calls.append(1)
        raise RuntimeError("C++ compiler 'no-such-c++' not found")

    monkeypatch.setattr(cpu_kernels, "build_cpu_kernels", failing_build)
    monkeypatch.setenv(cpu_kernels.ENV_SWITCH, "1")  # the suite also runs with the switch off
    cpu_kernels._build_once.cache_clear()
    try:
        for _ in range(3):
            with pytest.raises(RuntimeError, match="no-such-c"):
                cpu_kernels.cpu_kernel_library()
        assert len(calls) == 1
    finally:
        monkeypatch.undo()
        cpu_kernels._build_once.cache_clear()


def test_library_brings_no_openmp_runtime(kernel_library):
    """libgomp's idle threads spin and take the cores from MindSpore's own pool (a gMLP block ran 1.6x slower);
    the kernels use a sleeping thread pool of their own instead."""
    assert "-fopenmp" not in cpu_kernels.FLAGS
    assert b"libgomp" not in open(kernel_library, "rb").read()


def test_gate_to_blocks_kernel_against_float64(kernel_library, graph_mode):
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


@pytest.fixture
def sgemm(kernel_library):
    if not cpu_kernels.cpu_sgemm_available():
        pytest.skip("MindSpore here has no oneDNN sgemm")


@pytest.mark.parametrize("token_major", [False, True], ids=["block-major", "token-major"])
@pytest.mark.parametrize("blocks, batch, p, q", [(4, 10, 6, 3), (3, 7, 5, 8), (1, 9, 4, 4)])
def test_blocks_matmul_against_float64(blocks, batch, p, q, token_major, sgemm, graph_mode):
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


def test_blocks_matmul_rejects_mismatched_shapes(sgemm):
    """A width that does not match the weight's is an error from the kernel, not a read past the input."""
    matmul = cpu_kernels.CpuBlocksMatmul()
    with pytest.raises(RuntimeError):
        matmul(ms.Tensor(np.ones((4, 5, 6), np.float32)), ms.Tensor(np.ones((4, 3, 7), np.float32))).asnumpy()


def _sparse_low_rank_inputs(rng, layout, block, tokens, rank):
    rows, cols = layout.shape
    nnz = int(layout.sum())
    shapes = [(tokens, cols * block), (nnz, block, block), (rank, cols * block), (rows * block, rank),
              (1, cols * block), (1,), (rows * block,)]
    x, weight, lr1, lr2, gate_w, gate_b, bias = (rng.standard_normal(s).astype(np.float32) for s in shapes)
    return x, weight, lr1, lr2, gate_w, gate_b, bias


@pytest.mark.parametrize("gated", [True, False])
def test_sparse_low_rank_kernel_against_float64(gated, sgemm, graph_mode):
    """Pixelfly's layer in one kernel on a layout with every case of its plan: block rows sharing their columns (one
    packed matrix for both), a row of two column runs, an empty block row (zeros), an empty block column; values
    and all seven gradients against NumPy in float64. A zero gate is the ungated layer's mean, g = 0.5."""
    block, tokens, rank = 4, 150, 3  # 150 tokens: more than a thread's chunk of 128
    layout = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 1, 0]], np.int32)
    rng = np.random.default_rng(3)
    x, weight, lr1, lr2, gate_w, gate_b, bias = _sparse_low_rank_inputs(rng, layout, block, tokens, rank)
    if not gated:
        gate_w, gate_b = np.zeros_like(gate_w), np.zeros_like(gate_b)
    sens = rng.standard_normal((tokens, layout.shape[0] * block)).astype(np.float32)
    kernel = cpu_kernels.CpuSparseLowRank()
    inputs = [ms.Tensor(a) for a in (x, weight, layout, lr1, lr2, gate_w, gate_b, bias)]
    y = kernel(*inputs).asnumpy()
    grads = [g.asnumpy() for g in ms.ops.GradOperation(get_all=True, sens_param=True)(kernel)(*inputs,
                                                                                            ms.Tensor(sens))]

    f64 = lambda a: a.astype(np.float64)  # noqa: E731
    dense = np.zeros((layout.shape[0] * block, layout.shape[1] * block))
    for index, (r, c) in enumerate(zip(*np.nonzero(layout))):  # fly's row-major order of the nonzero blocks
        dense[r * block:(r + 1) * block, c * block:(c + 1) * block] = weight[index]
    x64, sens64 = f64(x), f64(sens)
    g = 1 / (1 + np.exp(-(x64 @ f64(gate_w).T + f64(gate_b))))  # (T, 1)
    hidden = x64 @ f64(lr1).T
    sparse, low = x64 @ dense.T, hidden @ f64(lr2).T
    assert rel_err(y, (1 - g) * sparse + g * low + f64(bias)) < 1e-6
    dlogit = ((sens64 * (low - sparse)).sum(1, keepdims=True)) * g * (1 - g)
    dhidden = (g * sens64) @ f64(lr2)
    expected_dx = ((1 - g) * sens64) @ dense + dhidden @ f64(lr1) + dlogit @ f64(gate_w)
    dense_grad = ((1 - g) * sens64).T @ x64
    expected_dweight = np.stack([dense_grad[r * block:(r + 1) * block, c * block:(c + 1) * block]
                                 for r, c in zip(*np.nonzero(layout))])
    dx, dweight, dlayout, dlr1, dlr2, dgate_w, dgate_b, dbias = grads
    assert rel_err(dx, expected_dx) < 1e-5 and rel_err(dweight, expected_dweight) < 1e-5
    assert rel_err(dlr1, dhidden.T @ x64) < 1e-5 and rel_err(dlr2, sens64.T @ (g * hidden)) < 1e-5
    assert rel_err(dgate_w, dlogit.T @ x64) < 1e-5 and rel_err(dgate_b, dlogit.sum(0)) < 1e-5
    assert rel_err(dbias, sens64.sum(0)) < 1e-5 and not dlayout.any()


@pytest.mark.parametrize("bad", ["value", "count"])
def test_sparse_low_rank_kernel_refuses_a_corrupt_layout(bad, sgemm):
    """The layout decides where the kernel reads the weight: an entry other than 0 or 1, or more ones than the
    weight has blocks, is an error from the kernel, not a read past the weight."""
    layout = np.array([[1, 0], [0, 1]], np.int32)
    rng = np.random.default_rng(0)
    x, weight, lr1, lr2, gate_w, gate_b, bias = _sparse_low_rank_inputs(rng, layout, 4, 5, 2)
    corrupt = np.array([[1, 0], [0, 7]], np.int32) if bad == "value" else np.ones((2, 2), np.int32)
    with pytest.raises(RuntimeError):
        cpu_kernels.CpuSparseLowRank()(*(ms.Tensor(a) for a in (x, weight, corrupt, lr1, lr2, gate_w, gate_b,
                                                                  bias))).asnumpy()
