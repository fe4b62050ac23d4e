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
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

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


def create_cifar_dataset(name: str, data_dir: str, training: bool, shuffle: bool, num_shards: Optional[int] = None,
                         shard_id: Optional[int] = None, num_parallel_workers: Optional[int] = None) -> ds.Dataset:
    """A dataset with columns ``image`` (HWC uint8) and ``label`` (int32)."""
    folder, kind = find_cifar(name, data_dir)
    shard = dict(num_shards=num_shards, shard_id=shard_id) if num_shards else {}
    if kind == "binary":
        dataset_class = ds.Cifar10Dataset if name == "cifar10" else ds.Cifar100Dataset
        dataset = dataset_class(str(folder), usage="train" if training else "test", shuffle=shuffle,
                                num_parallel_workers=num_parallel_workers, **shard)
        if name == "cifar100":
            dataset = dataset.project(["image", "fine_label"]).rename(["fine_label"], ["label"])
        return dataset
    if name == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if training else ["test_batch"]
        images, labels = _read_python_batches(folder, files, b"labels")
    else:
        images, labels = _read_python_batches(folder, ["train" if training else "test"], b"fine_labels")
    return ds.NumpySlicesDataset({"image": images, "label": labels}, shuffle=shuffle,
                                 num_parallel_workers=num_parallel_workers, **shard)
