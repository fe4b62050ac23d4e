"""Fixtures shared by the end-to-end runs."""
import numpy as np
import pytest

from mindcv_ext.data.idx import write_idx
from tests.utils import cifar_arrays, write_cifar, write_jpeg_folder


@pytest.fixture(scope="module")
def imagenet_folder(tmp_path_factory):
    """An ImageNet-style folder of real JPEG files, big enough for one batch of every config."""
    root = write_jpeg_folder(tmp_path_factory.mktemp("imagenet"), {"train": 64, "val": 4},
                             ("n01440764", "n01443537"), (40, 48), seed=0)
    # The CIFAR recipes read the official archives from the same data_dir.
    for name, classes in (("cifar10", 10), ("cifar100", 100)):
        write_cifar(root, name, "binary", cifar_arrays(128, classes, 0), cifar_arrays(8, classes, 1))
    # ... and the Fashion-MNIST recipes its IDX files.
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 128), ("t10k", 8)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 28, 28)).astype(np.uint8))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, count).astype(np.uint8))
    return root
