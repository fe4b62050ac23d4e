"""Fashion-MNIST and MNIST from their official IDX files, gzipped or not.

Refer to "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning Algorithms" (Xiao et al., 2017)
and LeCun et al.'s MNIST page for the format: a big-endian header (magic ``0x00000803`` for images, ``0x00000801``
for labels, then the dimensions) and the bytes. ``data_dir`` holds the four files; without one, Debian's
``dataset-fashion-mnist`` package location is used for Fashion-MNIST.
"""
import gzip
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

import mindspore.dataset as ds

__all__ = ["IDX_DATASETS", "DEFAULT_DIRS", "find_idx_files", "read_idx", "load_idx_split", "create_idx_dataset",
           "idx_class_names", "write_idx"]

IDX_DATASETS = ("fashion_mnist", "mnist")
# Where the Debian packages put the files (apt-get install dataset-fashion-mnist).
DEFAULT_DIRS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist", "mnist": "/usr/share/datasets/mnist"}
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_CLASSES = {
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
    "mnist": [str(digit) for digit in range(10)],
}
_MAGIC = {3: 0x00000803, 1: 0x00000801}  # unsigned bytes, 3 or 1 dimensions
_SOURCES = {"fashion_mnist": "https://github.com/zalandoresearch/fashion-mnist#get-the-data",
            "mnist": "https://yann.lecun.com/exdb/mnist/"}


def idx_class_names(name: str) -> List[str]:
    return list(_CLASSES[name])


def _where_to_get(name: str) -> str:
    package = " (or: apt-get install dataset-fashion-mnist)" if name == "fashion_mnist" else ""
    return f"download the four IDX files from {_SOURCES[name]}{package}"


def find_idx_files(name: str, data_dir: Optional[str]) -> Dict[str, Tuple[Path, Path]]:
    """``{split: (images, labels)}`` in ``data_dir`` (or the default directory), each file gzipped or not."""
    root = Path(data_dir or DEFAULT_DIRS[name])
    if not root.is_dir():
        where = f"--data_dir {str(root)!r}" if data_dir else f"the default directory {str(root)!r}"
        raise FileNotFoundError(f"{where} does not exist; {_where_to_get(name)} and pass their folder as --data_dir")
    found, missing = {}, []
    for split, stems in _FILES.items():
        paths = []
        for stem in stems:
            path = next((root / (stem + suffix) for suffix in (".gz", "") if (root / (stem + suffix)).is_file()), None)
            if path is None:
                missing.append(stem + "[.gz]")
            paths.append(path)
        found[split] = tuple(paths)
    if missing:
        raise FileNotFoundError(f"{str(root)!r} lacks the {name} file(s) {', '.join(missing)}; {_where_to_get(name)}")
    return found


def read_idx(path: Path, dims: int) -> np.ndarray:
    """The uint8 array of one IDX file with ``dims`` dimensions; a wrong or truncated file is an error naming it."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as stream:
            data = stream.read()
    except (OSError, EOFError) as exc:  # gzip's BadGzipFile is an OSError
        raise ValueError(f"cannot read IDX file {str(path)!r}: {exc}") from exc
    header = 4 + 4 * dims
    if len(data) < header:
        raise ValueError(f"IDX file {str(path)!r} is truncated ({len(data)} bytes, shorter than its header)")
    magic = int.from_bytes(data[:4], "big")
    if magic != _MAGIC[dims]:
        raise ValueError(f"{str(path)!r} is not an IDX file of {dims}-D unsigned bytes (magic {magic:#010x}, "
                         f"expected {_MAGIC[dims]:#010x})")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    size = int(np.prod(shape))
    if len(data) != header + size:
        raise ValueError(f"IDX file {str(path)!r} holds {len(data) - header} data bytes, but its header says "
                         f"{shape} = {size}: truncated or corrupt; download it again")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def load_idx_split(name: str, data_dir: Optional[str], split: str) -> Tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,) int32) of ``split`` (``train`` or ``test``)."""
    images_path, labels_path = find_idx_files(name, data_dir)[split]
    images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
    if len(images) != len(labels):
        raise ValueError(f"{str(images_path)!r} holds {len(images)} images but {str(labels_path)!r} "
                         f"{len(labels)} labels")
    if labels.size and labels.max() >= len(_CLASSES[name]):
        raise ValueError(f"{str(labels_path)!r} holds label {int(labels.max())}; {name} has "
                         f"{len(_CLASSES[name])} classes")
    return images, labels.astype(np.int32)


def create_idx_dataset(name: str, data_dir: Optional[str], training: bool, shuffle: bool, in_channels: int = 1,
                       num_shards: Optional[int] = None, shard_id: Optional[int] = None,
                       num_parallel_workers: Optional[int] = None) -> ds.Dataset:
    """Columns ``image`` (28x28xC uint8: the grey channel, or replicated to 3) and ``label`` (int32)."""
    if in_channels not in (1, 3):
        raise ValueError(f"{name} images are grey: in_channels must be 1, or 3 to replicate the channel, "
                         f"got {in_channels}")
    images, labels = load_idx_split(name, data_dir, "train" if training else "test")
    images = np.repeat(images[..., None], in_channels, axis=-1)
    shard = dict(num_shards=num_shards, shard_id=shard_id) if num_shards else {}
    return ds.NumpySlicesDataset({"image": images, "label": labels}, shuffle=shuffle,
                                 num_parallel_workers=num_parallel_workers or 1, **shard)


def write_idx(path: os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped when the name ends in .gz): small test sets, converted data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = _MAGIC[array.ndim].to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as stream:
        stream.write(header + array.tobytes())
