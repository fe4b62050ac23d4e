"""Attention cores against float64 NumPy references written from fly's formulas (Scatterbrain paper, §4 of
../shared/reference/t2t.md), in graph and PyNative mode, forward and backward."""
import math

import numpy as np
import pytest

import mindspore as ms
from mindspore import nn, ops

from mindcv_ext.layers import (FullAttention, LocalAttention, MultiHeadAttention, PerformerAttention,
                               SBLocalAttention, TokenPerformer, create_attention, gaussian_orthogonal_random_matrix)
from tests.utils import rel_err

TEMP = 0.3


def _qkv(n=2, length=37, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, length, dim)).astype(np.float32) for _ in range(3)]


def _band(length, lc):
    offset = np.arange(length)[None, :] - np.arange(length)[:, None]  # j - i
    return (offset >= -(lc // 2)) & (offset < (lc + 1) // 2)


def _softmax_rows(scores):
    scores = scores - scores.max(-1, keepdims=True)
    weights = np.exp(scores)
    return weights / weights.sum(-1, keepdims=True)


def _reference_local(q, k, v, lc, temp):
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    scores = np.where(_band(q.shape[1], lc), temp * q @ k.transpose(0, 2, 1), -np.inf)
    return _softmax_rows(scores) @ v


def _features(x, projection, temp, cosh):
    """The true (unstabilised) positive features exp(sqrt(t) P x - t|x|^2/2) / sqrt(m)."""
    dash = math.sqrt(temp) * x @ projection.T
    if cosh:
        dash = np.concatenate([dash, -dash], -1)
    return np.exp(dash - temp * (x * x).sum(-1, keepdims=True) / 2) / math.sqrt(dash.shape[-1])


def _reference_sblocal(q, k, v, lc, projection, temp):
    q, k, v, projection = (a.astype(np.float64) for a in (q, k, v, projection))
    band = _band(q.shape[1], lc)
    exact = np.where(band, np.exp(temp * q @ k.transpose(0, 2, 1)), 0.0)
    low_rank = _features(q, projection, temp, True) @ _features(k, projection, temp, True).transpose(0, 2, 1)
    outside = np.maximum(low_rank.sum(-1) - np.where(band, low_rank, 0).sum(-1), 0.0)
    normaliser = exact.sum(-1) + outside  # one normaliser for the exact band and the low-rank rest
    weights = exact - np.where(band, low_rank, 0.0) + low_rank
    return weights @ v / normaliser[..., None]


def _run(cell, q, k, v):
    return cell(ms.Tensor(q), ms.Tensor(k), ms.Tensor(v)).asnumpy()


def test_full_attention_is_softmax(ms_mode):
    q, k, v = _qkv()
    expected = _softmax_rows(TEMP * q.astype(np.float64) @ k.transpose(0, 2, 1)) @ v
    np.testing.assert_allclose(_run(FullAttention(TEMP), q, k, v), expected, atol=1e-5)


@pytest.mark.parametrize("length,lc", [(37, 1), (37, 2), (37, 7), (37, 12), (100, 49), (100, 98), (20, 49)])
def test_local_attention_is_the_banded_softmax(length, lc, ms_mode):
    q, k, v = _qkv(length=length)
    np.testing.assert_allclose(_run(LocalAttention(lc, TEMP), q, k, v), _reference_local(q, k, v, lc, TEMP),
                               atol=1e-5)


def test_local_window_is_fly_asymmetric_for_even_contexts():
    """lc=4: query i sees i-2 ... i+1 (fast_transformers' slots), truncated at both ends."""
    band = _band(6, 4)
    assert band[3].nonzero()[0].tolist() == [1, 2, 3, 4]
    assert band[0].nonzero()[0].tolist() == [0, 1] and band[5].nonzero()[0].tolist() == [3, 4, 5]
    length, lc = 6, 4
    q = np.zeros((1, length, 4), np.float32)  # uniform weights inside the window
    v = np.arange(length, dtype=np.float32).reshape(1, length, 1).repeat(4, -1)
    out = _run(LocalAttention(lc, 1.0), q, q, v)[0, :, 0]
    np.testing.assert_allclose(out, [0.5, 1.0, 1.5, 2.5, 3.5, 4.0], atol=1e-6)


@pytest.mark.parametrize("softmax_eps,normalization_eps", [(0.0, 0.0), (1e-4, 1e-6)])
def test_performer_matches_the_feature_formula(softmax_eps, normalization_eps, ms_mode):
    q, k, v = _qkv(length=50)
    cell = PerformerAttention(16, nb_features=24, softmax_temp=TEMP, softmax_eps=softmax_eps,
                              normalization_eps=normalization_eps, seed=5)
    projection = cell.projection_matrix.asnumpy().astype(np.float64)
    qd, kd, vd = (a.astype(np.float64) for a in (q, k, v))
    # fly's stabilisers (per query row; over all keys) matter only when eps > 0
    dash_q, dash_k = math.sqrt(TEMP) * qd @ projection.T, math.sqrt(TEMP) * kd @ projection.T
    diag_q, diag_k = TEMP * (qd * qd).sum(-1, keepdims=True) / 2, TEMP * (kd * kd).sum(-1, keepdims=True) / 2
    phi_q = (np.exp(dash_q - diag_q - dash_q.max(-1, keepdims=True)) + softmax_eps) / math.sqrt(24)
    phi_k = (np.exp(dash_k - diag_k - dash_k.max(axis=(-1, -2), keepdims=True)) + softmax_eps) / math.sqrt(24)
    expected = phi_q @ (phi_k.transpose(0, 2, 1) @ vd) / (phi_q @ phi_k.sum(1)[..., None] + normalization_eps)
    np.testing.assert_allclose(_run(cell, q, k, v), expected, rtol=2e-5, atol=1e-5)


def test_performer_estimates_softmax_attention():
    q, k, v = (a * 0.5 for a in _qkv(n=1, length=64, dim=16))
    exact = _run(FullAttention(TEMP), q, k, v)
    errors = []
    for features in (8, 256):
        cell = PerformerAttention(16, nb_features=features, softmax_temp=TEMP, softmax_eps=0.0,
                                  normalization_eps=0.0, seed=1)
        errors.append(np.abs(_run(cell, q, k, v) - exact).mean())
    assert errors[1] < 0.5 * errors[0] and errors[1] < 0.05, errors


@pytest.mark.parametrize("length,lc,features", [(37, 7, 8), (64, 12, 6), (100, 49, 24), (20, 49, 24)])
def test_sblocal_is_exact_in_band_low_rank_outside(length, lc, features, ms_mode):
    q, k, v = _qkv(length=length)
    cell = SBLocalAttention(lc, 16, nb_features=features, softmax_temp=TEMP, seed=7)
    projection = cell.feature_map.projection_matrix.asnumpy()
    assert projection.shape == (features // 2, 16)
    np.testing.assert_allclose(_run(cell, q, k, v), _reference_sblocal(q, k, v, lc, projection, TEMP),
                               rtol=2e-5, atol=5e-6)


def test_sblocal_with_the_whole_sequence_in_band_is_full_attention():
    q, k, v = _qkv(length=30)
    out = _run(SBLocalAttention(61, 16, nb_features=8, softmax_temp=TEMP), q, k, v)
    np.testing.assert_allclose(out, _run(FullAttention(TEMP), q, k, v), atol=1e-5)


class _InputGrads(nn.Cell):
    """Gradients of sum(core(q, k, v) * weights) with respect to q, k and v."""

    def __init__(self, core):
        super().__init__()
        self.core = core
        self.grad = ops.GradOperation(get_all=True)

    def loss(self, q, k, v, weights):
        return (self.core(q, k, v) * weights).sum()

    def construct(self, q, k, v, weights):
        return self.grad(self.loss)(q, k, v, weights)


class _DenseBandAttention(nn.Cell):
    """The band as a full masked score matrix: what LocalAttention avoids materialising."""

    def __init__(self, length, lc):
        super().__init__()
        self.mask = ms.Tensor(_band(length, lc))

    def construct(self, q, k, v):
        scores = ops.matmul(q * TEMP, k.transpose(0, 2, 1))
        scores = ops.masked_fill(scores, ops.logical_not(self.mask), -1e24)
        return ops.matmul(ops.softmax(scores, axis=-1), v)


def test_local_attention_gradients_match_the_dense_band(ms_mode):
    q, k, v = _qkv(length=45)
    weights = ms.Tensor(np.random.default_rng(3).standard_normal(q.shape).astype(np.float32))
    args = [ms.Tensor(a) for a in (q, k, v)] + [weights]
    ours = _InputGrads(LocalAttention(12, TEMP))(*args)
    dense = _InputGrads(_DenseBandAttention(45, 12))(*args)
    for name, a, b in zip("qkv", ours[:3], dense[:3]):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), atol=2e-5, err_msg=name)


def test_random_features_are_fixed_seeded_and_saved(tmp_path):
    first = gaussian_orthogonal_random_matrix(80, 16, seed=3)
    np.testing.assert_array_equal(first, gaussian_orthogonal_random_matrix(80, 16, seed=3))
    assert np.abs(first - gaussian_orthogonal_random_matrix(80, 16, seed=4)).max() > 0.1
    block = first[:16] / np.linalg.norm(first[:16], axis=1, keepdims=True)
    np.testing.assert_allclose(block @ block.T, np.eye(16), atol=1e-5)  # orthogonal rows within a block
    np.testing.assert_allclose(np.linalg.norm(gaussian_orthogonal_random_matrix(8, 16, 0, scaling=1), axis=1), 4.0,
                               rtol=1e-6)
    cell = PerformerAttention(16, nb_features=8, seed=3)
    assert not cell.projection_matrix.requires_grad and cell.trainable_params() == []
    path = str(tmp_path / "performer.ckpt")
    ms.save_checkpoint(cell, path)
    restored = PerformerAttention(16, nb_features=8, seed=99)
    ms.load_param_into_net(restored, ms.load_checkpoint(path))
    np.testing.assert_array_equal(restored.projection_matrix.asnumpy(), cell.projection_matrix.asnumpy())


def test_create_attention_by_name():
    assert isinstance(create_attention("local", 64, 0.1, local_context=9), LocalAttention)
    assert create_attention("performer", 64, 0.1, nb_features=12).projection_matrix.shape == (12, 64)
    with pytest.raises(ValueError, match="sblocal attention needs local_context"):
        create_attention("sblocal", 64, 0.1)
    with pytest.raises(ValueError, match="got 'linear'"):
        create_attention("linear", 64, 0.1)


def test_multi_head_attention_matches_numpy(ms_mode):
    rng = np.random.default_rng(0)
    cell = MultiHeadAttention(16, num_heads=4, qkv_bias=True)
    x = rng.standard_normal((2, 9, 16)).astype(np.float32)
    wqkv, bqkv = cell.qkv.weight.asnumpy(), cell.qkv.bias.asnumpy()
    qkv = (x @ wqkv.T + bqkv).reshape(2, 9, 3, 4, 4).transpose(2, 0, 3, 1, 4)
    attn = _softmax_rows(qkv[0] @ qkv[1].transpose(0, 1, 3, 2) * 0.5)
    heads = (attn @ qkv[2]).transpose(0, 2, 1, 3).reshape(2, 9, 16)
    expected = heads @ cell.proj.weight.asnumpy().T + cell.proj.bias.asnumpy()
    np.testing.assert_allclose(cell(ms.Tensor(x)).asnumpy(), expected, atol=1e-5)


def test_token_performer_block_runs_and_keeps_w_fixed(ms_mode):
    cell = TokenPerformer(27, 8)
    cell.set_train(False)
    w = cell.w.asnumpy()
    np.testing.assert_allclose(w @ w.T, 4.0 * np.eye(4), atol=1e-5)  # orthogonal rows of norm sqrt(m)
    out = cell(ms.Tensor(np.random.default_rng(0).standard_normal((2, 10, 27)).astype(np.float32)))
    assert out.shape == (2, 10, 8) and np.isfinite(out.asnumpy()).all()
    assert "w" not in [p.name for p in cell.trainable_params()]


@pytest.mark.parametrize("scale", [1.0, 5.0])
def test_token_performer_stays_finite_under_amp_o2(scale, graph_mode):
    """O2 marks every cell fp16, and an fp16 cell computes each operator in fp16: the random features (up to
    exp(|w|^2 / 2)) under- and overflow there, and a T2T-ViT trained under O2 gave NaN after two steps. The FAVOR+ part
    is a Float32Cell, which keeps its fp32 mark."""
    ms.set_seed(0)
    performer = TokenPerformer(16, 64)
    performer.kqv.weight.set_data(performer.kqv.weight * scale)  # larger k and q, as after a few training steps
    x = ms.Tensor(np.random.default_rng(0).standard_normal((2, 49, 16)).astype(np.float32))
    reference = performer(x).asnumpy()
    mixed = ms.amp.auto_mixed_precision(performer, "O2")
    assert performer.favor.get_flags().get("fp32") and not performer.favor.get_flags().get("fp16")
    assert performer.mlp.get_flags().get("fp16")
    out = mixed(x).asnumpy().astype(np.float32)
    assert np.isfinite(out).all() and rel_err(out, reference) < 3e-3
