"""data/cifar.py: CIFAR-10 and CIFAR-100 in their official layouts: found, read, sharded, named, unpickled safely."""
import pickle

import numpy as np
import pytest

from mindcv_ext.data import create_split_loader, resolve_dataset, transform_settings
from mindcv_ext.data.cifar import cifar_class_names, create_cifar_dataset, find_cifar
from tests.utils import RunsACommand, cifar_arrays, write_cifar


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("kind", ["binary", "python"])
def test_cifar_official_layouts(name, kind, tmp_path):
    classes = 10 if name == "cifar10" else 100
    train, test = cifar_arrays(20, classes, 0), cifar_arrays(6, classes, 1)
    folder = write_cifar(tmp_path, name, kind, train, test)
    assert find_cifar(name, str(tmp_path)) == (folder, kind)
    for training, (images, labels) in ((True, train), (False, test)):
        rows = list(create_cifar_dataset(name, str(tmp_path), training, shuffle=False).create_dict_iterator(
            output_numpy=True))
        got_images = np.stack([r["image"] for r in rows])
        got_labels = np.array([r["label"] for r in rows])
        # Order may differ between readers; compare as sets of (label, image) pairs.
        expected = sorted((int(l), img.tobytes()) for img, l in zip(images, labels))
        assert sorted((int(l), img.tobytes()) for img, l in zip(got_images, got_labels)) == expected
    shards = [sorted(r["image"].tobytes() for r in create_cifar_dataset(
        name, str(tmp_path), True, shuffle=False, num_shards=2, shard_id=i).create_dict_iterator(output_numpy=True))
        for i in range(2)]
    assert len(shards[0]) == len(shards[1]) == 10 and not set(shards[0]) & set(shards[1])
    info = resolve_dataset(name, str(tmp_path))
    loader, size = create_split_loader(info, "train", True, 4, transform_settings({}, image_resize=32),
                                       shuffle=False, drop_remainder=True)
    images, labels = next(loader.create_tuple_iterator(num_epochs=1))
    assert size == 20 and images.shape == (4, 3, 32, 32) and labels.shape == (4,)


def test_cifar_pickles_are_unpickled_safely(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        batch = {b"data": RunsACommand(tmp_path / "ran"), b"labels": []}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(ValueError, match="refusing to unpickle 'posix.system'"):
        create_cifar_dataset("cifar10", str(tmp_path), True, shuffle=False)
    assert not (tmp_path / "ran").exists()


def test_the_folder_itself_or_its_parent_is_found(tmp_path):
    folder = write_cifar(tmp_path, "cifar100", "python", cifar_arrays(4, 100, 0), cifar_arrays(2, 100, 1))
    assert find_cifar("cifar100", str(tmp_path)) == (folder, "python")
    assert find_cifar("cifar100", str(folder)) == (folder, "python")
    with pytest.raises(FileNotFoundError, match=r"no cifar10 files under .*: expected cifar-10-batches-bin/"
                                                r"data_batch_1.bin or cifar-10-batches-py/data_batch_1 \(the official"):
        find_cifar("cifar10", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"data_dir '.*nowhere' does not exist \(expected cifar10 in its "
                                                r"binary or python distribution\)"):
        find_cifar("cifar10", str(tmp_path / "nowhere"))


def test_class_names_come_from_the_meta_files(tmp_path):
    (tmp_path / "b").mkdir()
    binary = write_cifar(tmp_path / "b", "cifar10", "binary", cifar_arrays(5, 10, 0), cifar_arrays(1, 10, 1))
    assert cifar_class_names("cifar10", str(tmp_path / "b")) is None  # no meta file: no names
    (binary / "batches.meta.txt").write_text("airplane\nautomobile\n\n bird \n")
    assert cifar_class_names("cifar10", str(tmp_path / "b")) == ["airplane", "automobile", "bird"]
    (tmp_path / "p").mkdir()
    python = write_cifar(tmp_path / "p", "cifar100", "python", cifar_arrays(5, 100, 0), cifar_arrays(1, 100, 1))
    (python / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"apple", b"aquarium_fish"],
                                                b"coarse_label_names": [b"fish"]}, protocol=2))
    assert cifar_class_names("cifar100", str(tmp_path / "p")) == ["apple", "aquarium_fish"]
    info = resolve_dataset("cifar100", str(tmp_path / "p"))
    assert info.num_classes == 100 and info.class_names == ["apple", "aquarium_fish"]


def test_a_truncated_binary_batch_is_named(tmp_path):
    folder = write_cifar(tmp_path, "cifar10", "binary", cifar_arrays(10, 10, 0), cifar_arrays(2, 10, 1))
    whole = (folder / "test_batch.bin").read_bytes()
    assert len(whole) == 2 * 3073
    (folder / "test_batch.bin").write_bytes(whole[:-100])
    with pytest.raises(ValueError, match=r"CIFAR batch '.*test_batch.bin' is truncated or not a CIFAR binary file "
                                         r"\(6046 bytes, not a multiple of the 3073-byte record\)"):
        create_cifar_dataset("cifar10", str(tmp_path), False, shuffle=False)
    create_cifar_dataset("cifar10", str(tmp_path), True, shuffle=False)  # the training batches are whole


def test_records_are_decoded_to_hwc_images_and_fine_labels(tmp_path):
    """One CIFAR-100 binary record by hand: coarse label, fine label, then the red, green and blue planes."""
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    image = np.zeros((32, 32, 3), np.uint8)
    image[0, 1] = (10, 20, 30)
    image[31, 0] = (200, 100, 50)
    record = bytes([7, 42]) + image[..., 0].tobytes() + image[..., 1].tobytes() + image[..., 2].tobytes()
    for split in ("train", "test"):
        (folder / f"{split}.bin").write_bytes(record)
    (row,) = create_cifar_dataset("cifar100", str(tmp_path), False, shuffle=False).create_dict_iterator(
        output_numpy=True)
    assert row["label"] == 42 and row["label"].dtype == np.int32 and row["image"].dtype == np.uint8
    np.testing.assert_array_equal(row["image"], image)
