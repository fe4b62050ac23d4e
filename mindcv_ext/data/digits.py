"""The built-in ``digits`` dataset: scikit-learn's bundled handwritten digits as an image folder.

Real data with no download (1,797 8x8 grey images of 10 digits, from the UCI optical-recognition set
that scikit-learn ships). They are upscaled, made RGB and written once as PNG files under
``<cache>/digits_<size>px/{train,val}/<digit>/``, so the standard image-folder pipeline reads them.
Every fifth image of each class goes to ``val`` (355 images), the rest to ``train`` (1,442).
"""
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

__all__ = ["default_cache_dir", "prepare_digits"]

_VERSION = 1


def default_cache_dir() -> Path:
    """``$MINDCV_EXT_CACHE``, else ``$XDG_CACHE_HOME/mindcv_ext``, else ``~/.cache/mindcv_ext``."""
    if os.environ.get("MINDCV_EXT_CACHE"):
        return Path(os.environ["MINDCV_EXT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mindcv_ext"


def prepare_digits(cache_dir: Optional[str] = None, image_size: int = 32) -> Path:
    """Write the digits image folder if it is not there yet; return its root (with train/ and val/)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    root = cache / f"digits_v{_VERSION}_{image_size}px"
    if (root / ".complete").is_file():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    # Build beside the target and rename: concurrent ranks or an interrupted run never see half a dataset.
    staging = Path(tempfile.mkdtemp(prefix=".digits-", dir=cache))
    try:
        seen = np.zeros(10, dtype=int)
        for index, (image, label) in enumerate(zip(digits.images, digits.target)):
            split = "val" if seen[label] % 5 == 4 else "train"
            seen[label] += 1
            grey = (image / 16.0 * 255.0).round().astype(np.uint8)
            picture = Image.fromarray(grey, mode="L").resize((image_size, image_size), Image.BICUBIC).convert("RGB")
            folder = staging / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            picture.save(folder / f"{index:04d}.png")
        (staging / ".complete").write_text(f"{len(digits.images)} images\n")
        try:
            os.rename(staging, root)
        except OSError:  # another process finished first
            if not (root / ".complete").is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return root
