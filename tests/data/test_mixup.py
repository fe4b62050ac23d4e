"""Batch Mixup/CutMix: mindcv's mixing, from the loader's own generator."""
import numpy as np
import pytest

from mindcv_ext.data.mixup import BatchMixup


def _batch(n=6, classes=4):
    rng = np.random.default_rng(0)
    return rng.random((n, 3, 8, 8), dtype=np.float32), np.arange(n, dtype=np.int32) % classes


def test_mixup_blends_the_batch_with_its_reverse_and_the_targets_alike():
    images, labels = _batch()
    mixed, targets = BatchMixup(0.8, 0.0, 1.0, 4, seed=3)(images.copy(), labels)
    lam = targets[0, labels[0]] if labels[0] != labels[-1] else None
    assert lam is not None and 0 < lam < 1
    np.testing.assert_allclose(mixed, images * lam + images[::-1] * (1 - lam), rtol=1e-6)
    np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-6)
    assert mixed.dtype == targets.dtype == np.float32


def test_cutmix_pastes_a_box_and_weighs_the_targets_by_its_area():
    images, labels = _batch()
    mixed, targets = BatchMixup(0.0, 1.0, 1.0, 4, seed=5)(images.copy(), labels)
    pasted = ~np.isclose(mixed, images).all(axis=(0, 1))  # pixels taken from the reversed batch
    assert 0 < pasted.sum() < 64
    np.testing.assert_array_equal(mixed[:, :, pasted], images[::-1][:, :, pasted])
    np.testing.assert_allclose(targets[0, labels[0]], 1 - pasted.sum() / 64, rtol=1e-6)


def test_draws_come_from_the_seed_alone_and_prob_zero_leaves_the_batch():
    images, labels = _batch()
    runs = [[mix(images.copy(), labels)[1] for _ in range(5)]
            for mix in (BatchMixup(0.8, 1.0, 0.5, 4, seed=7) for _ in range(2))]
    for first, second in zip(*runs):
        np.testing.assert_array_equal(first, second)
    mixed, targets = BatchMixup(0.8, 1.0, 0.0, 4, seed=7)(images.copy(), labels)
    np.testing.assert_array_equal(mixed, images)
    np.testing.assert_array_equal(targets, np.eye(4, dtype=np.float32)[labels])
    with pytest.raises(ValueError, match="cutmix_prob must be in"):
        BatchMixup(0.8, 0.0, 1.5, 4, seed=0)
