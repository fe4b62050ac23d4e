"""CIFAR-10 and CIFAR-100 in their standard distributions, binary or Python, sharded for data parallelism.

``data_dir`` may be the extracted folder (``cifar-10-batches-bin``, ``cifar-10-batches-py``,
``cifar-100-binary``, ``cifar-100-python``) or the folder that contains it. The Python version is a
pickle; it is read with an unpickler that admits only NumPy array reconstruction.
"""
import pickle
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

import mindspore.dataset as ds

__all__ = ["find_cifar", "create_cifar_dataset", "cifar_class_names"]

_LAYOUTS = {
    "cifar10": (("cifar-10-batches-bin", "binary"), ("cifar-10-batches-py", "python")),
    "cifar100": (("cifar-100-binary", "binary"), ("cifar-100-python", "python")),
}
_MARKERS = {
    ("cifar10", "binary"): "data_batch_1.bin", ("cifar10", "python"): "data_batch_1",
    ("cifar100", "binary"): "train.bin", ("cifar100", "python"): "train",
}


def find_cifar(name: str, data_dir: str) -> Tuple[Path, str]:
    """The folder holding the CIFAR files and its format ('binary' or 'python')."""
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"data_dir {str(root)!r} does not exist (expected {name} in its binary or "
                                f"python distribution)")
    for folder, kind in _LAYOUTS[name]:
        for candidate in (root / folder, root):
            if (candidate / _MARKERS[(name, kind)]).is_file():
                return candidate, kind
    expected = " or ".join(f"{folder}/{_MARKERS[(name, kind)]}" for folder, kind in _LAYOUTS[name])
    raise FileNotFoundError(f"no {name} files under {str(root)!r}: expected {expected} (the official archives "
                            f"from https://www.cs.toronto.edu/~kriz/cifar.html, extracted)")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    # NumPy array reconstruction, and the byte-string decoding that protocol-2 pickles written by Python 3 use.
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle '{module}.{name}' from a CIFAR file")


def _read_python_batches(folder: Path, files: List[str], label_key: bytes) -> Tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for file in files:
        path = folder / file
        try:
            with open(path, "rb") as stream:
                batch: Dict = _NumpyOnlyUnpickler(stream, encoding="bytes").load()
            images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(batch[label_key], dtype=np.int32))
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError) as exc:
            raise ValueError(f"cannot read CIFAR batch {str(path)!r}: {exc}") from exc
    return np.concatenate(images), np.concatenate(labels)


def cifar_class_names(name: str, data_dir: str) -> Optional[List[str]]:
    folder, kind = find_cifar(name, data_dir)
    meta = {("cifar10", "binary"): "batches.meta.txt", ("cifar100", "binary"): "fine_label_names.txt"}.get(
        (name, kind))
    if meta and (folder / meta).is_file():
        return [line.strip() for line in (folder / meta).read_text().splitlines() if line.strip()]
    if kind == "python":
        meta_file, key = ("batches.meta", b"label_names") if name == "cifar10" else ("meta", b"fine_label_names")
        if (folder / meta_file).is_file():
            with open(folder / meta_file, "rb") as stream:
                return [n.decode() for n in _NumpyOnlyUnpickler(stream, encoding="bytes").load()[key]]
    return None


def _read_binary_batches(folder: Path, files: List[str], label_bytes: int) -> Tuple[np.ndarray, np.ndarray]:
    """Fixed-size records: ``label_bytes`` label byte(s) (CIFAR-100: coarse, fine), then 3072 pixel bytes."""
    record = label_bytes + 3072
    images, labels = [], []
    for file in files:
        path = folder / file
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size == 0 or raw.size % record:
            raise ValueError(f"CIFAR batch {str(path)!r} is truncated or not a CIFAR binary file "
                             f"({raw.size} bytes, not a multiple of the {record}-byte record)")
        rows = raw.reshape(-1, record)
        labels.append(rows[:, label_bytes - 1].astype(np.int32))
        images.append(rows[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return np.concatenate(images), np.concatenate(labels)


def create_cifar_dataset(name: str, data_dir: str, training: bool, shuffle: bool, num_shards: Optional[int] = None,
                         shard_id: Optional[int] = None, num_parallel_workers: Optional[int] = None) -> ds.Dataset:
    """A dataset with columns ``image`` (HWC uint8) and ``label`` (int32)."""
    folder, kind = find_cifar(name, data_dir)
    if name == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if training else ["test_batch"]
        if kind == "binary":
            images, labels = _read_binary_batches(folder, [f + ".bin" for f in files], 1)
        else:
            images, labels = _read_python_batches(folder, files, b"labels")
    else:
        split = "train" if training else "test"
        if kind == "binary":
            images, labels = _read_binary_batches(folder, [split + ".bin"], 2)
        else:
            images, labels = _read_python_batches(folder, [split], b"fine_labels")
    shard = dict(num_shards=num_shards, shard_id=shard_id) if num_shards else {}
    return ds.NumpySlicesDataset({"image": images, "label": labels}, shuffle=shuffle,
                                 num_parallel_workers=num_parallel_workers or 1, **shard)
