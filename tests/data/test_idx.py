"""Fashion-MNIST and MNIST from IDX files: the official format, gzipped or not, through mindcv's loader."""
import gzip

import numpy as np
import pytest

from mindcv_ext.data import create_split_loader, resolve_dataset, transform_settings
from mindcv_ext.data.idx import create_idx_dataset, find_idx_files, load_idx_split, read_idx, write_idx

STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _write_split(folder, split, count, seed, gz=True):
    """``count`` 28x28 images whose label is written into pixel (0, 0), as the official files lay them out."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, count).astype(np.uint8)
    images = rng.integers(0, 256, (count, 28, 28)).astype(np.uint8)
    images[:, 0, 0] = labels * 20
    suffix = ".gz" if gz else ""
    write_idx(folder / (STEMS[split][0] + suffix), images)
    write_idx(folder / (STEMS[split][1] + suffix), labels)
    return images, labels


@pytest.fixture
def idx_dir(tmp_path):
    _write_split(tmp_path, "train", 24, 0, gz=True)
    _write_split(tmp_path, "test", 8, 1, gz=False)  # the two forms side by side
    return tmp_path


def test_the_header_is_the_official_format(tmp_path):
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    write_idx(tmp_path / "x-idx3-ubyte", images)
    raw = (tmp_path / "x-idx3-ubyte").read_bytes()
    assert raw[:16] == bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28]) and len(raw) == 16 + 2 * 784
    np.testing.assert_array_equal(read_idx(tmp_path / "x-idx3-ubyte", 3), images)
    write_idx(tmp_path / "y-idx1-ubyte.gz", np.array([3, 1], np.uint8))
    with gzip.open(tmp_path / "y-idx1-ubyte.gz", "rb") as stream:
        assert stream.read() == bytes([0, 0, 8, 1, 0, 0, 0, 2, 3, 1])


def test_splits_read_gzipped_and_plain(idx_dir):
    train_images, train_labels = load_idx_split("fashion_mnist", str(idx_dir), "train")
    assert train_images.shape == (24, 28, 28) and train_labels.dtype == np.int32
    np.testing.assert_array_equal(train_images[:, 0, 0], train_labels * 20)
    test_images, _ = load_idx_split("mnist", str(idx_dir), "test")
    assert test_images.shape == (8, 28, 28)


def test_resolve_names_classes_and_channels(idx_dir, monkeypatch):
    info = resolve_dataset("fashion_mnist", str(idx_dir))
    assert info.num_classes == 10 and info.class_names[0] == "T-shirt/top" and info.class_names[9] == "Ankle boot"
    assert resolve_dataset("mnist", str(idx_dir), in_channels=1).class_names == [str(d) for d in range(10)]
    with pytest.raises(ValueError, match="images are grey: --in_channels must be 1, or 3 to replicate"):
        resolve_dataset("fashion_mnist", str(idx_dir), in_channels=2)
    # Unset (./ without the files): the Debian package's directory.
    monkeypatch.chdir(idx_dir)
    assert resolve_dataset("fashion_mnist", "./").root == "./"
    empty = idx_dir / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    monkeypatch.setattr("mindcv_ext.data.idx.DEFAULT_DIRS", {"fashion_mnist": str(idx_dir), "mnist": "/nowhere"})
    monkeypatch.setattr("mindcv_ext.data.builder.DEFAULT_DIRS", {"fashion_mnist": str(idx_dir), "mnist": "/nowhere"})
    assert resolve_dataset("fashion_mnist", "./").root == str(idx_dir)
    with pytest.raises(FileNotFoundError, match="the default directory '/nowhere' does not exist; download the four"):
        resolve_dataset("mnist", "./")


def test_missing_and_corrupt_files_are_named(idx_dir, tmp_path_factory):
    empty = tmp_path_factory.mktemp("none")
    with pytest.raises(FileNotFoundError) as info:
        find_idx_files("fashion_mnist", str(empty))
    assert "lacks the fashion_mnist file(s) train-images-idx3-ubyte[.gz]" in str(info.value)
    assert "apt-get install dataset-fashion-mnist" in str(info.value)
    truncated = idx_dir / "t10k-images-idx3-ubyte"
    truncated.write_bytes(truncated.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte' holds 6172 data bytes, but its header says "
                                         r"\(8, 28, 28\) = 6272: truncated or corrupt"):
        load_idx_split("fashion_mnist", str(idx_dir), "test")
    (idx_dir / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x01" + bytes(12))
    with pytest.raises(ValueError, match="is not an IDX file of 3-D unsigned bytes"):
        load_idx_split("fashion_mnist", str(idx_dir), "test")
    (idx_dir / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="cannot read IDX file .*train-labels-idx1-ubyte.gz"):
        load_idx_split("fashion_mnist", str(idx_dir), "train")


@pytest.mark.parametrize("in_channels", [1, 3])
def test_loader_resizes_and_normalises_for_the_model(idx_dir, in_channels):
    info = resolve_dataset("fashion_mnist", str(idx_dir), in_channels=in_channels)
    settings = transform_settings({"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}, 32, 1.0)
    loader, size = create_split_loader(info, "val", False, 4, settings, shuffle=False, num_parallel_workers=1)
    images, labels = next(loader.create_tuple_iterator(num_epochs=1, output_numpy=True))
    assert size == 8 and images.shape == (4, in_channels, 32, 32) and images.dtype == np.float32
    raw, raw_labels = load_idx_split("fashion_mnist", str(idx_dir), "test")
    np.testing.assert_array_equal(labels, raw_labels[:4])
    # (x - 127.5) / 127.5 of the resized image: the full range maps onto [-1, 1].
    assert images.min() >= -1.0 - 1e-6 and images.max() <= 1.0 + 1e-6 and images.std() > 0.3
    if in_channels == 3:
        np.testing.assert_array_equal(images[:, 0], images[:, 2])
    train, train_size = create_split_loader(info, "train", True, 8, settings,
                                            dict(scale=(0.8, 1.0), ratio=(0.9, 1.1), hflip=0.5), num_parallel_workers=1)
    batch, _ = next(train.create_tuple_iterator(num_epochs=1, output_numpy=True))
    assert train_size == 24 and batch.shape == (8, in_channels, 32, 32)
    with pytest.raises(ValueError, match="in_channels must be 1, or 3"):
        create_idx_dataset("mnist", str(idx_dir), True, False, in_channels=4)
    if in_channels == 1:  # colour augmentation on one grey channel: an error that says what to do
        with pytest.raises(ValueError, match=r"color_jitter need three colour channels, .* pass --in_channels 3"):
            create_split_loader(info, "train", True, 8, settings, dict(color_jitter=0.4), num_parallel_workers=1)
