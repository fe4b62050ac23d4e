"""Random-resized crops, flips and normalisation of whole batches of small array images (Fashion-MNIST, CIFAR).

mindcv's transforms run once per image. On 28x28 images each op's fixed cost dominates: the per-image pipeline
took about 1.9 ms of CPU per image, as much as a Monarch gMLP's training step, and it shares the step's cores.
Done on the batch with NumPy, the same augmentation costs a few hundredths of that.

The draws follow torchvision's (and MindSpore's) ``RandomResizedCrop``: up to ten tries of an area in ``scale``
and a log-uniform aspect ratio in ``ratio``, an integer box placed uniformly, else the centre crop clamped to
``ratio``. The box is resized with bilinear interpolation at pixel centres (OpenCV's ``INTER_LINEAR``
convention); flips are drawn per image. Like ``BatchMixup``, the transform owns its generator and runs as one
single-worker batch map: a run is reproducible, and a resumed pipeline, which replays the earlier batches,
continues the same draws.
"""
import math
from typing import Sequence, Tuple

import numpy as np

__all__ = ["BatchRandomResizedCrop", "BatchNormalize", "crop_boxes", "resized_crops"]

_ATTEMPTS = 10


def crop_boxes(rng: np.random.Generator, count: int, height: int, width: int, scale: Sequence[float],
               ratio: Sequence[float]) -> np.ndarray:
    """``count`` boxes ``(top, left, box_height, box_width)`` drawn as ``RandomResizedCrop`` draws them."""
    area = height * width
    target = area * rng.uniform(scale[0], scale[1], size=(count, _ATTEMPTS))
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=(count, _ATTEMPTS)))
    box_w = np.rint(np.sqrt(target * aspect)).astype(np.int64)
    box_h = np.rint(np.sqrt(target / aspect)).astype(np.int64)
    fits = (box_w > 0) & (box_w <= width) & (box_h > 0) & (box_h <= height)
    first = np.argmax(fits, axis=1)
    rows = np.arange(count)
    box_h, box_w, found = box_h[rows, first], box_w[rows, first], fits[rows, first]
    if not found.all():  # the fallback: the whole image, clamped to the ratio range, centred
        in_ratio = width / height
        if in_ratio < min(ratio):
            fallback = (int(round(width / min(ratio))), width)
        elif in_ratio > max(ratio):
            fallback = (height, int(round(height * max(ratio))))
        else:
            fallback = (height, width)
        box_h = np.where(found, box_h, fallback[0])
        box_w = np.where(found, box_w, fallback[1])
    # Offsets for every image (drawn even for fallbacks, so the draws per batch are fixed in number).
    top = np.floor(rng.random(count) * (height - box_h + 1)).astype(np.int64)
    left = np.floor(rng.random(count) * (width - box_w + 1)).astype(np.int64)
    top = np.where(found, top, (height - box_h) // 2)
    left = np.where(found, left, (width - box_w) // 2)
    return np.stack([top, left, box_h, box_w], axis=1)


def _sample_points(start: np.ndarray, length: np.ndarray, size: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear source indices (low, high) and weights of ``size`` output pixels over ``[start, start + length)``,
    one row per image: pixel centres map to pixel centres, clamped to the box's edge pixels."""
    position = start[:, None] + (np.arange(size) + 0.5)[None, :] * (length[:, None] / size) - 0.5
    position = np.clip(position, start[:, None], (start + length - 1)[:, None])
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, (start + length - 1)[:, None])
    return low, high, (position - low).astype(np.float32)


def resized_crops(images: np.ndarray, boxes: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """(N, H, W, C) images, one ``(top, left, height, width)`` box each -> (N, size, size, C) float32 bilinear
    resizes of the boxes."""
    count = len(images)
    y_low, y_high, y_weight = _sample_points(boxes[:, 0], boxes[:, 2], size[0])
    x_low, x_high, x_weight = _sample_points(boxes[:, 1], boxes[:, 3], size[1])
    batch = np.arange(count)[:, None, None]
    pixels = images.astype(np.float32, copy=False)

    def rows(y):  # (N, out_h, W, C): the source rows, then interpolate across columns
        picked = pixels[batch[:, :, 0], y]
        columns = x_low[:, None, :], x_high[:, None, :]
        left = np.take_along_axis(picked, columns[0][..., None], axis=2)
        right = np.take_along_axis(picked, columns[1][..., None], axis=2)
        return left + (right - left) * x_weight[:, None, :, None]

    top, bottom = rows(y_low), rows(y_high)
    return top + (bottom - top) * y_weight[:, :, None, None]


class BatchNormalize:
    """(N, H, W, C) uint8, or float on the same 0-255 scale (the resized crops) -> (N, C, H, W) float32,
    ``(x - mean) / std`` with mindcv's 0-255 mean and std."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = np.asarray(mean, dtype=np.float32)
        self.inv_std = 1.0 / np.asarray(std, dtype=np.float32)

    def normalize(self, images: np.ndarray) -> np.ndarray:
        out = (images.astype(np.float32, copy=False) - self.mean) * self.inv_std
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.normalize(images)


class BatchRandomResizedCrop(BatchNormalize):
    """The training augmentation of ``RandomResizedCrop(size, scale, ratio)``, ``RandomHorizontalFlip(hflip)``,
    ``RandomVerticalFlip(vflip)``, ``Normalize(mean, std)`` and ``HWC2CHW`` on a whole batch."""

    def __init__(self, size: int, scale: Sequence[float], ratio: Sequence[float], hflip: float, vflip: float,
                 mean: Sequence[float], std: Sequence[float], seed: int) -> None:
        super().__init__(mean, std)
        if not (0 < scale[0] <= scale[1]) or not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"scale {tuple(scale)} and ratio {tuple(ratio)} must be positive (low, high) pairs")
        self.size, self.scale, self.ratio = (int(size), int(size)), tuple(scale), tuple(ratio)
        self.hflip, self.vflip = float(hflip or 0.0), float(vflip or 0.0)
        self.rng = np.random.default_rng(seed)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        count, height, width = images.shape[:3]
        boxes = crop_boxes(self.rng, count, height, width, self.scale, self.ratio)
        out = resized_crops(images, boxes, self.size)
        flip_h = self.rng.random(count) < self.hflip
        flip_v = self.rng.random(count) < self.vflip
        out[flip_h] = out[flip_h, :, ::-1]
        out[flip_v] = out[flip_v, ::-1]
        return self.normalize(out)
