"""data/digits.py: scikit-learn's digits written once as an image folder, in the cache the environment names."""
import os

import numpy as np
from PIL import Image

from mindcv_ext.data import default_cache_dir, prepare_digits, resolve_dataset


def test_digits_is_written_once_as_an_image_folder(tmp_path):
    root = prepare_digits(str(tmp_path), image_size=24)
    counts = {split: sum(len(os.listdir(root / split / str(d))) for d in range(10)) for split in ("train", "val")}
    assert counts["train"] + counts["val"] == 1797  # scikit-learn's bundled digits
    assert 350 <= counts["val"] <= 360
    assert sorted(os.listdir(root / "train")) == [str(d) for d in range(10)]
    sample = next((root / "val" / "7").iterdir())
    with Image.open(sample) as image:
        assert image.size == (24, 24) and image.mode == "RGB"
        assert np.asarray(image).std() > 20  # a real digit, not a blank
    stamp = sample.stat().st_mtime_ns
    assert prepare_digits(str(tmp_path), image_size=24) == root
    assert sample.stat().st_mtime_ns == stamp  # not rewritten
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no staging leftovers
    info = resolve_dataset("digits", "unused", cache_dir=str(tmp_path), image_size=24)
    assert info.num_classes == 10 and info.class_names == [str(d) for d in range(10)]


def test_every_fifth_image_of_a_class_is_held_out_with_its_grey_values(tmp_path):
    """At 8 px (the originals' size) each file is its digit, 0-16 scaled to 0-255, in three equal channels; the
    fifth, tenth, ... image of each class goes to val: 355 images, 1,442 for training."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = prepare_digits(str(tmp_path), image_size=8)
    assert root == tmp_path / "digits_v1_8px" and (root / ".complete").read_text() == "1797 images\n"
    seen = np.zeros(10, dtype=int)
    expected = {"train": set(), "val": set()}
    for index, label in enumerate(digits.target):
        expected["val" if seen[label] % 5 == 4 else "train"].add(f"{label}/{index:04d}.png")
        seen[label] += 1
    for split in ("train", "val"):
        assert {p.relative_to(root / split).as_posix() for p in (root / split).glob("*/*.png")} == expected[split]
    assert (len(expected["train"]), len(expected["val"])) == (1442, 355)
    for index in (0, 4, 1796):  # digits 0, 4 and 8
        label = digits.target[index]
        split = "val" if f"{label}/{index:04d}.png" in expected["val"] else "train"
        with Image.open(root / split / str(label) / f"{index:04d}.png") as image:
            pixels = np.asarray(image)
        grey = (digits.images[index] / 16.0 * 255.0).round().astype(np.uint8)
        assert pixels.shape == (8, 8, 3)
        for channel in range(3):
            np.testing.assert_array_equal(pixels[..., channel], grey)


def test_the_cache_is_the_environments(monkeypatch, tmp_path):
    monkeypatch.setenv("MINDCV_EXT_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("MINDCV_EXT_CACHE")
    assert default_cache_dir() == tmp_path / "xdg" / "mindcv_ext"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "mindcv_ext"


def test_without_a_cache_dir_the_default_cache_is_used(monkeypatch, tmp_path):
    monkeypatch.setenv("MINDCV_EXT_CACHE", str(tmp_path / "cache"))
    root = prepare_digits(image_size=8)
    assert root == tmp_path / "cache" / "digits_v1_8px" and (root / "val" / "9").is_dir()
