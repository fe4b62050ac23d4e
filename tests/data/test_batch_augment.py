"""Batch-level crops, flips and normalisation: the same work as the per-image transforms, on whole batches."""
import numpy as np
import pytest
from mindspore.dataset import vision

from mindcv_ext.data import create_split_loader, resolve_dataset, transform_settings
from mindcv_ext.data.batch_augment import BatchRandomResizedCrop, crop_boxes, resized_crops
from mindcv_ext.data.builder import array_transforms
from mindcv_ext.data.idx import load_idx_split, write_idx

RECIPE = dict(scale=(0.8, 1.0), ratio=(0.9, 1.1), hflip=0.5)


@pytest.fixture
def idx_dir(tmp_path):
    rng = np.random.default_rng(0)
    for images, labels, count in (("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 40),
                                  ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 12)):
        write_idx(tmp_path / images, rng.integers(0, 256, (count, 28, 28)).astype(np.uint8))
        write_idx(tmp_path / labels, rng.integers(0, 10, count).astype(np.uint8))
    return tmp_path


def _per_image(ops, image):
    for op in ops:
        image = op(image)
    return image


def test_a_box_resizes_as_mindspore_resizes_it():
    """Bilinear at pixel centres, as MindSpore's ResizedCrop (which rounds to uint8: within one grey level)."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (64, 28, 28, 1)).astype(np.uint8)
    boxes = crop_boxes(rng, 64, 28, 28, (0.08, 1.0), (0.75, 4 / 3))
    for size in (28, 32, 20):
        ours = resized_crops(images, boxes, (size, size))
        for image, box, out in zip(images, boxes, ours):
            top, left, height, width = (int(v) for v in box)
            reference = vision.ResizedCrop(top, left, height, width, size, vision.Inter.BILINEAR)(image)
            assert np.abs(reference.reshape(size, size, 1).astype(np.float32) - out).max() < 1.0


def test_boxes_follow_random_resized_crop_draws():
    boxes = crop_boxes(np.random.default_rng(2), 20000, 28, 28, (0.5, 1.0), (0.75, 4 / 3))
    top, left, height, width = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + height <= 28).all() and (left + width <= 28).all()
    area = height * width / 784.0
    # Rounding the sides moves the area a little beyond the drawn range, as in torchvision.
    assert area.min() > 0.45 and area.max() <= 1.0 and abs(np.median(area) - 0.75) < 0.05
    aspect = width / height
    assert aspect.min() > 0.6 and aspect.max() < 1.6 and abs(np.median(np.log(aspect))) < 0.05
    # Offsets are uniform over the free room: the mean offset is half of it.
    assert abs(np.mean(top / np.maximum(28 - height, 1) * (28 > height)) - 0.5) < 0.05
    # No box fits a ratio range outside the image's: the centre crop clamped to the range instead.
    fallback = crop_boxes(np.random.default_rng(3), 50, 28, 28, (1.0, 1.0), (2.0, 3.0))
    np.testing.assert_array_equal(fallback, np.tile([[7, 0, 14, 28]], (50, 1)))


def test_the_whole_image_unflipped_is_the_normalised_image_and_flips_mirror_it():
    images = np.random.default_rng(4).integers(0, 256, (16, 28, 28, 3)).astype(np.uint8)
    mean, std = [120.0, 110.0, 100.0], [60.0, 50.0, 40.0]
    expected = ((images - np.float32(mean)) / np.float32(std)).transpose(0, 3, 1, 2)
    keep = BatchRandomResizedCrop(28, (1.0, 1.0), (1.0, 1.0), 0.0, 0.0, mean, std, seed=0)(images)
    np.testing.assert_allclose(keep, expected, rtol=0, atol=1e-5)
    mirrored = BatchRandomResizedCrop(28, (1.0, 1.0), (1.0, 1.0), 1.0, 1.0, mean, std, seed=0)(images)
    np.testing.assert_allclose(mirrored, expected[:, :, ::-1, ::-1], rtol=0, atol=1e-5)
    half = BatchRandomResizedCrop(28, (1.0, 1.0), (1.0, 1.0), 0.5, 0.0, mean, std, seed=0)(images)
    flipped = [np.allclose(h, e[:, :, ::-1], atol=1e-5) for h, e in zip(half, expected)]
    kept = [np.allclose(h, e, atol=1e-5) for h, e in zip(half, expected)]
    assert all(f != k for f, k in zip(flipped, kept)) and 0 < sum(flipped) < 16


def test_the_idx_loaders_work_on_batches_as_the_per_image_transforms_would(idx_dir):
    info = resolve_dataset("fashion_mnist", str(idx_dir), in_channels=1)
    settings = transform_settings({"mean": (0.3, 0.3, 0.3), "std": (0.35, 0.35, 0.35)}, 28, 1.0)
    raw, raw_labels = load_idx_split("fashion_mnist", str(idx_dir), "test")
    grey = dict(settings, mean=[76.5], std=[89.25])
    val, _ = create_split_loader(info, "val", False, 5, settings, shuffle=False, num_parallel_workers=2)
    batches = list(val.create_tuple_iterator(num_epochs=1, output_numpy=True))
    assert [len(b[0]) for b in batches] == [5, 5, 2]
    ops = array_transforms(False, grey)
    expected = np.stack([_per_image(ops, image[..., None]) for image in raw])
    np.testing.assert_allclose(np.concatenate([b[0] for b in batches]), expected, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), raw_labels)

    def first_epoch():
        import mindspore.dataset as ds

        ds.config.set_seed(7)
        train, _ = create_split_loader(info, "train", True, 8, settings, RECIPE, num_parallel_workers=2,
                                       drop_remainder=True)
        return list(train.create_tuple_iterator(num_epochs=1, output_numpy=True))

    run, again = first_epoch(), first_epoch()
    assert len(run) == 5 and run[0][0].shape == (8, 1, 28, 28) and run[0][0].dtype == np.float32
    for (images, labels), (images_again, labels_again) in zip(run, again):  # reproducible from the seed
        np.testing.assert_array_equal(images, images_again)
        np.testing.assert_array_equal(labels, labels_again)
    # Every image is a crop of a training image: its range stays the normalised pixel range, and crops differ.
    images = np.concatenate([b[0] for b in run])
    assert images.min() >= -0.3 / 0.35 - 1e-5 and images.max() <= 0.7 / 0.35 + 1e-5
    assert len({image.tobytes() for image in images}) == 40


def test_augmentations_batches_cannot_do_keep_the_per_image_transforms(idx_dir):
    info = resolve_dataset("fashion_mnist", str(idx_dir), in_channels=3)
    settings = transform_settings({}, 28, 1.0)
    for extra in (dict(color_jitter=0.4), dict(re_prob=0.25), dict(auto_augment="randaug-m9-mstd0.5")):
        train, _ = create_split_loader(info, "train", True, 8, settings, dict(RECIPE, **extra), num_parallel_workers=1)
        assert "BatchRandomResizedCrop" not in _operations(train)
        assert "RandomResizedCrop" in _operations(train)
    train, _ = create_split_loader(info, "train", True, 8, dict(settings, interpolation="bicubic"), RECIPE,
                                   num_parallel_workers=1)
    assert "RandomResizedCrop" in _operations(train)
    train, _ = create_split_loader(info, "train", True, 8, settings, RECIPE, num_parallel_workers=1)
    assert "BatchRandomResizedCrop" in _operations(train) and "RandomResizedCrop" not in _operations(train)
    val, _ = create_split_loader(info, "val", False, 8, transform_settings({}, 32, 1.0), num_parallel_workers=1)
    assert "Resize" in _operations(val) and "BatchNormalize" not in _operations(val)


def _operations(loader) -> set:
    """The class names of every map operation in a loader's pipeline."""
    names, stack = set(), [loader]
    while stack:
        node = stack.pop()
        for op in getattr(node, "operations", None) or []:
            names.add(type(getattr(op, "transform", op)).__name__)
            names.add(type(op).__name__)
        stack.extend(node.children)
    return names
