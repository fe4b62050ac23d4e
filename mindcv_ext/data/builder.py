"""Datasets and loaders for training and evaluation, through mindcv's dataset, transform and loader factories.

Supported ``dataset`` values: ``imagenet`` or ``folder`` (an ImageNet-style tree ``data_dir/<split>/<class>/``),
``digits`` (built in, see ``digits.py``), ``cifar10`` and ``cifar100`` (see ``cifar.py``), ``fashion_mnist`` and
``mnist`` (their IDX files, see ``idx.py``). The evaluation
transform defaults to the model's own (crop, interpolation, mean, std from its ``default_cfg``).
"""
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

import mindspore.dataset as ds
from mindcv.data import create_dataset, create_loader, create_transforms

from .batch_augment import BatchNormalize, BatchRandomResizedCrop
from .cifar import cifar_class_names, create_cifar_dataset
from .digits import prepare_digits
from .idx import DEFAULT_DIRS, IDX_DATASETS, create_idx_dataset, find_idx_files, idx_class_names
from .mixup import BatchMixup

__all__ = ["DATASETS", "DatasetInfo", "resolve_dataset", "transform_settings", "create_split_loader",
           "find_unreadable_images", "IMAGE_EXTENSIONS", "FOLDER_EXTENSIONS", "ImageListing", "ImageFolderError",
           "list_image_folder", "create_file_loader", "imagenet_class_names", "check_image_headers",
           "array_transforms", "unreadable_images_error"]

DATASETS = ("imagenet", "folder", "digits", "cifar10", "cifar100", "fashion_mnist", "mnist")
# The formats MindSpore's Decode reads (it fails on WebP, which PIL would pass).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".ppm", ".pgm")
# What an image folder's pipeline reads: MindSpore's ImageFolderDataset compares extensions as written, so each in
# lower and upper case (".JPEG", ImageNet's). Any other entry of a class folder is read by no one.
FOLDER_EXTENSIONS = tuple(sorted({spelling for ext in IMAGE_EXTENSIONS for spelling in (ext, ext.upper())}))


@dataclass
class DatasetInfo:
    name: str  # one of DATASETS
    root: str
    num_classes: int
    class_names: Optional[List[str]]
    in_channels: int = 3  # what the images arrive with (IDX: 1 grey channel, or replicated to 3)
    allow_outside_links: bool = False  # image folders: follow links that leave ``root``
    _listings: Dict[str, "ImageListing"] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_folder(self) -> bool:
        return self.name in ("imagenet", "folder", "digits")

    def listing(self, split: str) -> "ImageListing":
        """An image folder's split as every reader sees it (``list_image_folder``), read once per process."""
        if split not in self._listings:
            self._listings[split] = list_image_folder(os.path.join(self.root, split), self.root,
                                                      self.allow_outside_links)
        return self._listings[split]


def _idx_root(dataset: str, data_dir: Optional[str]) -> Optional[str]:
    """``data_dir``, or the default directory when it is unset (``./`` without the files)."""
    if data_dir and os.path.normpath(data_dir) != ".":
        return data_dir
    try:
        find_idx_files(dataset, data_dir or ".")
        return data_dir or "."
    except FileNotFoundError:
        return None  # the package's location (DEFAULT_DIRS)


def resolve_dataset(dataset: str, data_dir: str, train_split: str = "train", cache_dir: Optional[str] = None,
                    image_size: int = 32, in_channels: int = 3, allow_outside_links: bool = False) -> DatasetInfo:
    """Locate the data and its classes; a missing directory is an error that names it. ``allow_outside_links``:
    image folders may hold links to files or class folders outside ``data_dir`` (see ``list_image_folder``)."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if dataset in IDX_DATASETS:
        root = _idx_root(dataset, data_dir)
        find_idx_files(dataset, root)  # all four files, or an error that says where to get them
        if in_channels not in (1, 3):
            raise ValueError(f"{dataset} images are grey: --in_channels must be 1, or 3 to replicate the channel, "
                             f"got {in_channels}")
        return DatasetInfo(dataset, root or DEFAULT_DIRS[dataset], 10, idx_class_names(dataset), in_channels)
    if dataset in ("cifar10", "cifar100"):
        names = cifar_class_names(dataset, data_dir)
        return DatasetInfo(dataset, data_dir, 10 if dataset == "cifar10" else 100, names)
    root = str(prepare_digits(cache_dir, image_size)) if dataset == "digits" else data_dir
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data_dir {root!r} does not exist; point --data_dir at a folder holding "
                                f"{train_split}/<class>/<images> (or use --dataset digits for the built-in set)")
    split_dir = Path(root) / train_split
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{str(split_dir)!r} does not exist; data_dir must contain the split folder "
                                f"'{train_split}' with one sub-folder per class")
    info = DatasetInfo(dataset, root, 0, None, allow_outside_links=allow_outside_links)
    classes = info.listing(train_split).classes
    if not classes:
        raise FileNotFoundError(f"{str(split_dir)!r} has no class sub-folders")
    info.num_classes, info.class_names = len(classes), classes
    return info


def transform_settings(model_cfg: Dict[str, Any], image_resize: Optional[int] = None,
                       crop_pct: Optional[float] = None, interpolation: Optional[str] = None,
                       mean: Optional[List[float]] = None, std: Optional[List[float]] = None) -> Dict[str, Any]:
    """Evaluation-transform settings: explicit values win, otherwise the model's ``default_cfg``.

    ``mean``/``std`` are on mindcv's 0-255 scale.
    """
    cfg_mean = [255.0 * m for m in model_cfg.get("mean", (0.485, 0.456, 0.406))]
    cfg_std = [255.0 * s for s in model_cfg.get("std", (0.229, 0.224, 0.225))]
    return dict(
        image_resize=int(image_resize or model_cfg.get("input_size", (3, 224, 224))[-1]),
        crop_pct=float(crop_pct if crop_pct is not None else model_cfg.get("crop_pct", 0.875)),
        interpolation=interpolation or model_cfg.get("interpolation", "bilinear"),
        mean=list(mean) if mean is not None else cfg_mean,
        std=list(std) if std is not None else cfg_std,
    )


def create_split_loader(info: DatasetInfo, split: str, training: bool, batch_size: int, transforms: Dict[str, Any],
                        augment: Optional[Dict[str, Any]] = None, shuffle: bool = True,
                        drop_remainder: bool = False, num_samples: Optional[int] = None,
                        num_shards: Optional[int] = None, shard_id: Optional[int] = None,
                        num_parallel_workers: int = 4, aug_repeats: int = 0, mixup: float = 0.0,
                        cutmix: float = 0.0, cutmix_prob: float = 1.0, num_classes: Optional[int] = None):
    """A batched loader for one split (columns ``image``, ``label``) and the number of samples in this shard."""
    workers = max(1, min(num_parallel_workers, os.cpu_count() or 1))
    shards = dict(num_shards=num_shards, shard_id=shard_id) if num_shards and num_shards > 1 else {}
    if info.is_folder:
        split_dir = os.path.join(info.root, split)
        if not os.path.isdir(split_dir):
            raise FileNotFoundError(f"{split_dir!r} does not exist; data_dir must contain the split folder "
                                    f"'{split}' with one sub-folder per class")
        # The files MindSpore reads are the listing's: an entry it would choke on is an error now, not at a step.
        listing = info.listing(split)
        if training and aug_repeats:
            # mindcv sizes its repeated-augmentation sampler by an ImageFolderDataset without extensions, which
            # counts every entry of the class folders: built here on the listing's size instead.
            from mindcv.data.distributed_sampler import RepeatAugSampler

            if num_samples:
                raise ValueError("num_samples and aug_repeats cannot be set together (mindcv's rule); drop one")
            sampler = RepeatAugSampler(len(listing.paths), num_shards=num_shards, rank_id=shard_id,
                                       num_repeats=aug_repeats, selected_round=0, shuffle=shuffle)
            dataset = ds.ImageFolderDataset(split_dir, sampler=sampler, num_parallel_workers=workers,
                                            extensions=list(FOLDER_EXTENSIONS))
        else:
            dataset = create_dataset("imagenet", root=info.root, split=split, shuffle=shuffle,
                                     num_samples=num_samples, num_parallel_workers=workers,
                                     extensions=list(FOLDER_EXTENSIONS),
                                     **(shards or dict(num_shards=None, shard_id=None)))
        options = dict(transforms)
        if training:  # random-resized crops replace the evaluation's centre crop
            options.pop("crop_pct", None)
            options.update(augment or {})
        transform = create_transforms("imagenet", is_training=training, **options)
    else:
        # The CIFAR and IDX files hold two splits: the training set (training, or split "train" read with the
        # evaluation transform, e.g. to calibrate early exits) and the test set.
        # One reader thread: the arrays are sliced in Python, under the GIL, and a second thread only contends
        # (measured on Fashion-MNIST: 0.27 ms of CPU per image with two, 0.09 with one, augmentation included).
        if info.name in IDX_DATASETS:
            dataset = create_idx_dataset(info.name, info.root, training or split == "train", shuffle,
                                         info.in_channels, num_parallel_workers=1, **shards)
        else:
            dataset = create_cifar_dataset(info.name, info.root, training or split == "train", shuffle,
                                           num_parallel_workers=1, **shards)
        if num_samples:
            dataset = dataset.take(num_samples)
        if info.in_channels == 1:  # one grey channel: one mean and std (the model's, averaged over RGB)
            transforms = dict(transforms, mean=[float(np.mean(transforms["mean"]))],
                              std=[float(np.mean(transforms["std"]))])
            augment = _grey_augment(augment) if training else augment
        native = (28, 28) if info.name in IDX_DATASETS else (32, 32)  # the images' size in their files
        batch_transform = _batch_transform(training, transforms, augment, native, shard_id)
        if batch_transform is not None:
            loader = dataset.batch(batch_size, drop_remainder=drop_remainder)
            # One worker, in batch order: the generator's draws must not depend on thread timing.
            loader = loader.map(operations=batch_transform, input_columns="image", num_parallel_workers=1)
            return _mixed(loader, training, batch_size, mixup, cutmix, cutmix_prob, num_classes or info.num_classes), \
                dataset.get_dataset_size()
        transform = array_transforms(training, transforms, augment)
    size = dataset.get_dataset_size()
    loader = create_loader(dataset, batch_size=batch_size, drop_remainder=drop_remainder, is_training=training,
                           num_classes=num_classes or info.num_classes,
                           transform=transform, num_parallel_workers=workers)
    return _mixed(loader, training, batch_size, mixup, cutmix, cutmix_prob, num_classes or info.num_classes), size


def _mixed(loader, training: bool, batch_size: int, mixup: float, cutmix: float, cutmix_prob: float,
           num_classes: int):
    """The batched loader with Mixup/CutMix applied when training asks for them."""
    if training and mixup + cutmix > 0 and batch_size > 1:
        # One worker, in batch order: its draws must not depend on thread timing (see mixup.py).
        mix = BatchMixup(mixup, cutmix, cutmix_prob, num_classes, seed=ds.config.get_seed())
        loader = loader.map(operations=mix, input_columns=["image", "label"], num_parallel_workers=1)
    return loader


def _batch_transform(training: bool, transforms: Dict[str, Any], augment: Optional[Dict[str, Any]],
                     native_shape: Tuple[int, ...], shard_id: Optional[int]):
    """``array_transforms``' work done on whole batches (``batch_augment.py``) where it is the same work: training
    with random-resized crops, flips and normalisation only, bilinear; evaluation at the images' own size, where
    resize and centre crop leave them as they are. ``None`` where the per-image transforms are needed."""
    height, width = native_shape[:2]
    size = int(transforms["image_resize"])
    if training:
        augment = augment or {}
        extras = [augment.get("color_jitter"), augment.get("auto_augment"), augment.get("re_prob")]
        if any(extras) or str(augment.get("interpolation", transforms.get("interpolation"))).lower() != "bilinear":
            return None
        seed = ds.config.get_seed() * 1000003 + (shard_id or 0)  # each shard draws its own crops
        return BatchRandomResizedCrop(size, augment.get("scale", (0.08, 1.0)), augment.get("ratio", (0.75, 1.333)),
                                      augment.get("hflip", 0.5), augment.get("vflip", 0.0), transforms["mean"],
                                      transforms["std"], seed=seed)
    resized = int(size / float(transforms.get("crop_pct", 0.875)))
    if height == width == size == resized:
        return BatchNormalize(transforms["mean"], transforms["std"])
    return None


def _grey_augment(augment: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Augmentation settings for one grey channel: colour jitter 0 is dropped (mindcv would still add its colour
    op, which needs three channels); colour jitter or an auto-augment policy is an error that says what to do."""
    augment = dict(augment or {})
    colour = [name for name, value in (("color_jitter", augment.get("color_jitter")),
                                       ("auto_augment", augment.get("auto_augment"))) if value]
    if colour:
        raise ValueError(f"{' and '.join(colour)} need three colour channels, and these images have one: pass "
                         f"--in_channels 3 (the grey channel replicated), or drop {' and '.join(colour)}")
    augment["color_jitter"] = None
    return augment


def array_transforms(training: bool, transforms: Dict[str, Any], augment: Optional[Dict[str, Any]] = None) -> list:
    """mindcv's ImageNet transforms, every setting applied, for images that arrive as arrays (CIFAR), not files.

    mindcv's own CIFAR transform knows only the resize; this one is the ImageNet factory's list with the decoding
    step replaced: a random-resized crop from the array for training, nothing for evaluation.
    """
    from mindspore.dataset import vision
    from mindspore.dataset.vision import Inter

    options = dict(transforms)
    if training:
        options.pop("crop_pct", None)
        options.update(augment or {})
    ops = create_transforms("imagenet", is_training=training, **options)
    interpolation = getattr(Inter, str(options.get("interpolation", "bilinear")).upper(), Inter.BILINEAR)
    arrays = []
    for op in ops:
        if isinstance(op, vision.RandomCropDecodeResize):
            arrays.append(vision.RandomResizedCrop(options["image_resize"],
                                                   scale=tuple(options.get("scale", (0.08, 1.0))),
                                                   ratio=tuple(options.get("ratio", (0.75, 1.333))),
                                                   interpolation=interpolation))
        elif not isinstance(op, vision.Decode):
            arrays.append(op)
    return arrays


class ImageFolderError(ValueError):
    """An image folder holds an entry that no reader can use as it stands; the message names it."""


@dataclass
class ImageListing:
    """The images of one ``<split>/<class>/<image>`` folder, as every reader sees them: the pre-epoch checks,
    MindSpore's ImageFolderDataset (given ``FOLDER_EXTENSIONS``) and the evaluation's file loader."""
    split_dir: str
    classes: List[str]
    paths: List[str]
    labels: List[int]
    ignored: List[str]  # entries that are not images by their name: read by no one

    @property
    def empty_classes(self) -> List[str]:
        """Class folders without images (a class the model could never learn)."""
        counts = np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=len(self.classes))
        return [os.path.join(self.split_dir, name) for name, count in zip(self.classes, counts) if count == 0]


def _is_image_name(path: str) -> bool:
    # ImageFolderDataset's test: the text after the path's last dot, as written.
    return path[path.rfind("."):] in FOLDER_EXTENSIONS if "." in path else False


def _inside(path: str, real_root: str) -> bool:
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def list_image_folder(split_dir: str, root: Optional[str] = None, allow_outside_links: bool = False) -> ImageListing:
    """The one listing of an image folder's split, with MindSpore's ImageFolderDataset's rules: every sub-folder is
    a class (sorted), and a class's images are its entries whose name ends in one of ``FOLDER_EXTENSIONS`` (sorted,
    not recursive). Each of those must be a regular file (a link to one is followed). An error, naming the entry,
    for what the pipeline would take and then fail on at some step:

    - a hidden sub-folder (``.ipynb_checkpoints``): ImageFolderDataset would make it a class;
    - an image-named entry that is a folder, a broken link, a pipe or a device;
    - a link, to the split, a class folder or an image, that leaves ``root`` (default: the split's parent, the
      dataset folder), unless ``allow_outside_links``.
    """
    base = Path(split_dir)
    if not base.is_dir():
        raise FileNotFoundError(f"{split_dir!r} does not exist")
    real_root = os.path.realpath(root if root is not None else base.parent)
    outside_hint = ("; copy the files into the dataset, or pass --allow_outside_links True to follow links that "
                    "leave it")
    if not allow_outside_links and not _inside(str(base), real_root):
        raise ImageFolderError(f"split folder {split_dir!r} is a link to {os.path.realpath(base)!r}, outside the "
                               f"dataset folder {real_root!r}{outside_hint}")
    classes, paths, labels, ignored = [], [], [], []
    with os.scandir(base) as entries:
        sub_folders = sorted((e for e in entries if e.is_dir()), key=lambda e: e.name)
    for folder in sub_folders:
        if folder.name.startswith("."):
            raise ImageFolderError(f"{folder.path!r} is a hidden folder, which MindSpore's ImageFolderDataset would "
                                   f"read as a class; remove it or move it out of {split_dir!r}")
        if folder.is_symlink() and not allow_outside_links and not _inside(folder.path, real_root):
            raise ImageFolderError(f"class folder {folder.path!r} is a link to {os.path.realpath(folder.path)!r}, "
                                   f"outside the dataset folder {real_root!r}{outside_hint}")
        label = len(classes)
        classes.append(folder.name)
        with os.scandir(folder.path) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if not _is_image_name(entry.path):
                    ignored.append(entry.path)
                    continue
                if not entry.is_file():  # follows links: a folder, a broken link, a pipe are not
                    kind = "a folder" if entry.is_dir() else "a broken link" if entry.is_symlink() and \
                        not os.path.exists(entry.path) else "not a regular file"
                    raise ImageFolderError(f"{entry.path!r} is named like an image but is {kind}; the data pipeline "
                                           f"would fail on it. Remove it or move it out of the class folder")
                if entry.is_symlink() and not allow_outside_links and not _inside(entry.path, real_root):
                    raise ImageFolderError(f"image {entry.path!r} is a link to {os.path.realpath(entry.path)!r}, "
                                           f"outside the dataset folder {real_root!r}{outside_hint}")
                paths.append(entry.path)
                labels.append(label)
    return ImageListing(str(base), classes, paths, labels, ignored)


def _decode_fault(path: str) -> Optional[str]:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
    except Exception as exc:  # any decoding failure makes the file unusable
        return f"{type(exc).__name__}: {exc}"
    return None


def _faults(paths: List[str], fault, description: str, progress: bool) -> List[Tuple[str, str]]:
    from tqdm import tqdm

    found = []
    for path in tqdm(paths, desc=description, unit="img", disable=not progress, mininterval=2.0):
        reason = fault(path)
        if reason:
            found.append((path, reason))
    return found


def find_unreadable_images(listing: "ImageListing", progress: bool = True) -> List[str]:
    """The listing's images that PIL cannot decode (names the culprit when a pipeline fails)."""
    return [path for path, _ in _faults(listing.paths, _decode_fault, f"decoding images in {listing.split_dir}",
                                        progress)]


def unreadable_images_error(folder: str, bad: List[str], hint: str = "") -> ValueError:
    """The error that lists unreadable files (``bad``, up to 20 shown) and says what to do."""
    listed = "\n  ".join(bad[:20]) + ("\n  ..." if len(bad) > 20 else "")
    return ValueError(f"{len(bad)} unreadable image(s) in {folder}; remove or replace them{hint}:\n  {listed}")


def _header_fault(path: str) -> Optional[str]:
    """Why ``path`` is not a readable image, judged from its header (and, for JPEG, its end marker)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image_format = image.format
            image.verify()  # PNG: chunk checksums; other formats: the header
    except Exception as exc:  # any failure here makes the file unusable
        return f"{type(exc).__name__}: {exc}"
    if image_format == "JPEG":  # verify() does not read JPEG data; a truncated file lacks the end marker
        with open(path, "rb") as stream:
            stream.seek(max(0, os.path.getsize(path) - 4096))
            if b"\xff\xd9" not in stream.read():
                return "truncated JPEG (no end-of-image marker)"
    return None


def check_image_headers(listing: ImageListing, shard: Tuple[int, int] = (0, 1), progress: bool = True) -> List[str]:
    """A fast readability check of the listing's images (this shard's share): ``path: reason`` per bad file.

    It reads headers, not pixels, so it takes a small fraction of an epoch; a file it passes can still fail
    to decode later, and training then names it too.
    """
    index, count = shard
    return [f"{path}: {reason}" for path, reason in _faults(listing.paths[index::count], _header_fault,
                                                            f"checking images in {listing.split_dir}", progress)]


class _EncodedImages:
    """Random-access source of (encoded bytes, label) for GeneratorDataset."""

    def __init__(self, paths: List[str], labels: List[int]) -> None:
        self.paths, self.labels = paths, labels

    def __getitem__(self, index: int):
        with open(self.paths[index], "rb") as stream:
            return np.frombuffer(stream.read(), dtype=np.uint8), np.int32(self.labels[index])

    def __len__(self) -> int:
        return len(self.paths)


def create_file_loader(paths: List[str], labels: Optional[List[int]], batch_size: int, transforms: Dict[str, Any],
                       num_parallel_workers: int = 2):
    """Evaluation-transformed batches of the given files, in the given order."""
    labels = list(labels) if labels is not None else [0] * len(paths)
    dataset = ds.GeneratorDataset(_EncodedImages(paths, labels), column_names=["image", "label"], shuffle=False,
                                  num_parallel_workers=1)
    transform = create_transforms("imagenet", is_training=False, **transforms)
    dataset = dataset.map(operations=transform, input_columns="image",
                          num_parallel_workers=max(1, min(num_parallel_workers, os.cpu_count() or 1)))
    return dataset.batch(batch_size, drop_remainder=False)


def imagenet_class_names() -> List[str]:
    """The 1,000 ImageNet-1k class names in index order."""
    text = (Path(__file__).parent / "imagenet_classes.txt").read_text()
    return [line for line in text.splitlines() if line]
