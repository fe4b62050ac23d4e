"""Mixup (Zhang et al., ICLR 2018) and CutMix (Yun et al., ICCV 2019) on whole batches, reproducibly.

The same per-batch mixing as mindcv's (and timm's) ``Mixup`` in ``batch`` mode: with probability ``prob`` a
batch is mixed with its reverse, by CutMix (chosen with ``switch_prob`` when both are on, a box of area
``1 - lam`` with ``lam`` corrected for clipping) or by Mixup; targets become the matching soft one-hot labels.

mindcv's draws from NumPy's global generator, which every Python pipeline thread shares, so the draws a
batch gets depend on thread timing. This one owns its generator and runs as a single-worker batch map: a
run is reproducible, and a resumed pipeline (which replays the earlier batches) continues the same draws.
"""
from typing import Tuple

import numpy as np

__all__ = ["BatchMixup"]


class BatchMixup:
    def __init__(self, mixup_alpha: float, cutmix_alpha: float, prob: float, num_classes: int, seed: int,
                 switch_prob: float = 0.5) -> None:
        if mixup_alpha < 0 or cutmix_alpha < 0 or mixup_alpha + cutmix_alpha == 0:
            raise ValueError(f"mixup {mixup_alpha} / cutmix {cutmix_alpha}: one must be positive, neither negative")
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"cutmix_prob must be in [0, 1], got {prob}")
        self.mixup_alpha, self.cutmix_alpha, self.prob = mixup_alpha, cutmix_alpha, prob
        self.switch_prob, self.num_classes = switch_prob, num_classes
        self.rng = np.random.default_rng(seed)

    def _draw(self) -> Tuple[float, bool]:
        if self.rng.random() >= self.prob:
            return 1.0, False
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or self.rng.random() < self.switch_prob)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        return float(self.rng.beta(alpha, alpha)), use_cutmix

    def _box(self, height: int, width: int, lam: float) -> Tuple[int, int, int, int]:
        ratio = np.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * ratio), int(width * ratio)
        cy, cx = int(self.rng.integers(0, height)), int(self.rng.integers(0, width))
        return (int(np.clip(cy - cut_h // 2, 0, height)), int(np.clip(cy + cut_h // 2, 0, height)),
                int(np.clip(cx - cut_w // 2, 0, width)), int(np.clip(cx + cut_w // 2, 0, width)))

    def __call__(self, images: np.ndarray, labels: np.ndarray):
        """(N, C, H, W) images and (N,) integer labels -> mixed float32 images and (N, classes) soft targets."""
        images = images.astype(np.float32)
        lam, use_cutmix = self._draw()
        if lam != 1.0:
            flipped = images[::-1]
            if use_cutmix:
                height, width = images.shape[-2:]
                top, bottom, left, right = self._box(height, width, lam)
                images[:, :, top:bottom, left:right] = flipped[:, :, top:bottom, left:right].copy()
                lam = 1.0 - (bottom - top) * (right - left) / float(height * width)
            else:
                images = images * lam + flipped * (1.0 - lam)
        one_hot = np.eye(self.num_classes, dtype=np.float32)[labels.reshape(-1).astype(np.int64)]
        targets = one_hot * lam + one_hot[::-1] * (1.0 - lam)
        return images, targets.astype(np.float32)
