"""data/builder.py: resolving datasets, the split loaders and their transforms, image folders and their errors."""
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mindcv_ext.data import (FOLDER_EXTENSIONS, ImageFolderError, check_image_headers, create_split_loader,
                             find_unreadable_images, list_image_folder, resolve_dataset, transform_settings)
from tests.utils import cifar_arrays, write_cifar


def test_missing_data_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data_dir '.*nowhere' does not exist"):
        resolve_dataset("imagenet", str(tmp_path / "nowhere"))
    (tmp_path / "data").mkdir()
    with pytest.raises(FileNotFoundError, match=r"data.train' does not exist; data_dir must contain the split"):
        resolve_dataset("folder", str(tmp_path / "data"))
    with pytest.raises(FileNotFoundError, match="no cifar10 files under"):
        resolve_dataset("cifar10", str(tmp_path / "data"))
    with pytest.raises(ValueError, match="dataset must be one of"):
        resolve_dataset("nonsense", str(tmp_path))


def test_unreadable_images_are_found_and_class_folders_listed(tmp_path):
    for cls in ("b", "a"):
        (tmp_path / "val" / cls).mkdir(parents=True)
        for i in (2, 10, 1):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / "val" / cls / f"img_{i}.png")
    (tmp_path / "val" / "b" / "img_3.png").write_bytes(b"not an image")
    listing = list_image_folder(str(tmp_path / "val"))
    assert find_unreadable_images(listing, progress=False) == [str(tmp_path / "val" / "b" / "img_3.png")]
    paths, labels, classes = listing.paths, listing.labels, listing.classes
    assert classes == ["a", "b"]
    assert [os.path.basename(p) for p in paths[:3]] == ["img_1.png", "img_10.png", "img_2.png"]
    assert labels == [0, 0, 0, 1, 1, 1, 1]


def test_header_check_finds_broken_files_and_shards_the_work(tmp_path):
    folder = tmp_path / "val"
    (folder / "a").mkdir(parents=True)
    (folder / "empty").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(folder / "a" / f"{i}.jpg", quality=90)
        Image.new("RGB", (16, 16), (i, 0, 9)).save(folder / "a" / f"{i}.png")
    whole = (folder / "a" / "0.jpg").read_bytes()
    (folder / "a" / "0.jpg").write_bytes(whole[:-1000])  # scan data cut short: the header still reads
    png = (folder / "a" / "1.png").read_bytes()
    (folder / "a" / "1.png").write_bytes(png[:40] + bytes(b ^ 0xFF for b in png[40:48]) + png[48:])  # bad CRC
    (folder / "a" / "2.jpg").write_bytes(b"\xff\xd8 random bytes")
    listing = list_image_folder(str(folder))
    bad = check_image_headers(listing, progress=False)
    assert [line.split(": ", 1)[0] for line in bad] == [str(folder / "a" / n) for n in ("0.jpg", "1.png", "2.jpg")]
    assert bad[0].endswith("truncated JPEG (no end-of-image marker)")
    shards = [check_image_headers(listing, (rank, 2), progress=False) for rank in (0, 1)]
    assert sorted(shards[0] + shards[1]) == sorted(bad) and shards[0] and shards[1]
    assert listing.empty_classes == [str(folder / "empty")]


def test_the_cifar_pipeline_applies_every_augmentation_setting(tmp_path):
    """mindcv's CIFAR transform knew only the resize; the recipes' RandAugment, jitter and erasing were dropped."""
    from mindspore.dataset import vision

    from mindcv_ext.data.builder import DatasetInfo, array_transforms

    settings = transform_settings({}, 32, None, "bicubic", [125.3, 123.0, 113.9], [63.0, 62.1, 66.7])
    augment = dict(scale=(0.5, 1.0), ratio=(0.8, 1.25), hflip=0.5, vflip=0.0, color_jitter=0.4,
                   auto_augment="randaug-m9-mstd0.5-inc1", re_prob=0.25)
    ops = array_transforms(True, settings, augment)
    assert [type(op).__name__ for op in ops] == ["RandomResizedCrop", "RandomHorizontalFlip", "RandAugment",
                                                 "Normalize", "HWC2CHW", "RandomErasing"]
    crop = ops[0]
    assert (crop.size, crop.scale, crop.ratio, crop.interpolation) == ((32, 32), (0.5, 1.0), (0.8, 1.25),
                                                                       vision.Inter.BICUBIC)
    assert ops[3].mean == [125.3, 123.0, 113.9] and ops[3].std == [63.0, 62.1, 66.7]
    # As in mindcv's ImageNet factory, colour jitter applies when there is no auto_augment.
    assert "RandomColorAdjust" in [type(op).__name__ for op in array_transforms(True, settings,
                                                                                 {**augment, "auto_augment": None})]
    assert [type(op).__name__ for op in array_transforms(False, settings)] == ["Resize", "CenterCrop", "Normalize",
                                                                              "HWC2CHW"]
    write_cifar(tmp_path, "cifar10", "binary", cifar_arrays(16, 10, 0), cifar_arrays(4, 10, 1))
    info = DatasetInfo("cifar10", str(tmp_path), 10, None)
    loader, size = create_split_loader(info, "train", True, 8, settings, augment, num_parallel_workers=1)
    images, labels = next(loader.create_tuple_iterator(num_epochs=1, output_numpy=True))
    assert size == 16 and images.shape == (8, 3, 32, 32) and images.dtype == np.float32


def _png(path: Path, shade: int) -> None:
    Image.new("RGB", (8, 8), (shade, 0, 0)).save(path, format="PNG")


def _tricky_folder(root: Path) -> Path:
    """A split with what real folders hold besides images, none of which the pipeline may choke on."""
    for cls in ("a", "b"):
        (root / "train" / cls).mkdir(parents=True)
        _png(root / "train" / cls / "x.png", 1)
    b = root / "train" / "b"
    _png(b / "UPPER.PNG", 2)
    _png(b / ".hidden.png", 3)  # a hidden file named like an image: ImageFolderDataset reads it, so do we
    (b / "notes.txt").write_text("labels by hand")
    (b / ".DS_Store").write_bytes(b"\0\1")
    _png(b / "Mixed.Png", 4)  # neither spelling of .png: read by no one
    Image.new("RGB", (8, 8)).save(b / "pic.webp")  # PIL reads WebP, MindSpore's Decode does not: read by no one
    (b / "sub").mkdir()
    _png(b / "sub" / "deep.png", 5)  # not recursive
    outside = root.parent / f"{root.name}_elsewhere"
    outside.mkdir()
    _png(outside / "o.png", 6)
    (b / "outside").symlink_to(outside)  # a link to a folder, not named like an image
    (b / "inside.png").symlink_to(root / "train" / "a" / "x.png")  # a link that stays in the dataset
    return root


def test_the_pipeline_reads_exactly_the_listing(tmp_path):
    """One listing: the files, labels and order MindSpore's ImageFolderDataset reads (with the builder's
    extensions) are the listing's, and what it skips is the listing's ignored entries."""
    from mindcv.data import create_dataset

    root = _tricky_folder(tmp_path / "data")
    listing = list_image_folder(str(root / "train"), str(root))
    b = root / "train" / "b"
    assert [Path(p).relative_to(root).as_posix() for p in listing.paths] == [
        "train/a/x.png", "train/b/.hidden.png", "train/b/UPPER.PNG", "train/b/inside.png", "train/b/x.png"]
    assert listing.labels == [0, 1, 1, 1, 1] and listing.classes == ["a", "b"]
    assert sorted(listing.ignored) == sorted(str(b / n) for n in (".DS_Store", "Mixed.Png", "notes.txt", "outside",
                                                                   "pic.webp", "sub"))
    dataset = create_dataset("imagenet", root=str(root), split="train", shuffle=False, num_parallel_workers=1,
                             extensions=list(FOLDER_EXTENSIONS), decode=False)
    read = [(bytes(image), int(label)) for image, label in dataset.create_tuple_iterator(output_numpy=True)]
    assert read == [(Path(p).read_bytes(), label) for p, label in zip(listing.paths, listing.labels)]
    info = resolve_dataset("folder", str(root))
    _, size = create_split_loader(info, "train", False, 2, transform_settings({}, 8))
    assert size == len(listing.paths)


def test_entries_the_pipeline_would_fail_on_are_named_before_it_runs(tmp_path):
    root = _tricky_folder(tmp_path / "data")
    b = root / "train" / "b"
    (root / "val" / "a").mkdir(parents=True)
    _png(root / "val" / "a" / "x.png", 7)

    def refused(match):
        with pytest.raises(ImageFolderError, match=match):
            list_image_folder(str(root / "train"), str(root))
        with pytest.raises(ImageFolderError, match=match):  # every script resolves the dataset first
            resolve_dataset("folder", str(root))
        info = resolve_dataset("folder", str(root), train_split="val")  # a split read later: by its loader
        with pytest.raises(ImageFolderError, match=match):
            create_split_loader(info, "train", False, 2, transform_settings({}, 8))

    (b / "folder.jpg").mkdir()
    refused(f"{re.escape(repr(str(b / 'folder.jpg')))} is named like an image but is a folder")
    (b / "folder.jpg").rmdir()
    (b / "gone.png").symlink_to(tmp_path / "nothing.png")
    refused("gone.png' is named like an image but is a broken link")
    (b / "gone.png").unlink()
    os.mkfifo(b / "pipe.png")
    refused("pipe.png' is named like an image but is not a regular file")
    (b / "pipe.png").unlink()
    (root / "train" / ".ipynb_checkpoints").mkdir()
    refused("ipynb_checkpoints' is a hidden folder, which MindSpore's ImageFolderDataset would read as a class")
    (root / "train" / ".ipynb_checkpoints").rmdir()

    elsewhere = tmp_path / "data_elsewhere"
    (b / "far.png").symlink_to(elsewhere / "o.png")
    refused(f"image {re.escape(repr(str(b / 'far.png')))} is a link to .*, outside the dataset folder .*"
            f"--allow_outside_links True")
    allowed = list_image_folder(str(root / "train"), str(root), allow_outside_links=True)
    assert str(b / "far.png") in allowed.paths
    (b / "far.png").unlink()
    (root / "train" / "c").symlink_to(elsewhere)
    refused(f"class folder {re.escape(repr(str(root / 'train' / 'c')))} is a link to")
    assert list_image_folder(str(root / "train"), str(root), allow_outside_links=True).classes == ["a", "b", "c"]
    linked = tmp_path / "linked"  # a dataset whose split folder is a link to another dataset's
    linked.mkdir()
    (linked / "train").symlink_to(root / "train")
    with pytest.raises(ImageFolderError, match="split folder .*linked/train' is a link to .*, outside the dataset"):
        list_image_folder(str(linked / "train"), str(linked))


def test_repeated_augmentation_samples_the_listing(tmp_path):
    """aug_repeats: the sampler is sized by the listing (mindcv's counted every entry of the class folders, so the
    tricky folder's text files and sub-folders made it sample past the end)."""
    root = _tricky_folder(tmp_path / "data")
    listing = list_image_folder(str(root / "train"), str(root))
    info = resolve_dataset("folder", str(root))
    loader, size = create_split_loader(info, "train", True, 1, transform_settings({}, 8), aug_repeats=2,
                                       augment=dict(hflip=0.0, color_jitter=None))
    labels = [int(label.argmax()) for _, label in loader.create_tuple_iterator(output_numpy=True, num_epochs=1)]
    assert size == len(labels) == len(listing.paths)  # one round of repeats: as many samples as images
    assert set(labels) <= {0, 1}
