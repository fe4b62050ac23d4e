"""Helpers shared by the tests."""
import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pytest

import mindspore as ms
from mindspore import nn, ops

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = REPO_ROOT / "tests" / "data"
# CI checks out the project with shared/ beside it; the big fixtures are read from there.
SHARED_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"


def write_jpeg_folder(root: Path, counts: Dict[str, int], classes: Sequence[str], size: Tuple[int, int],
                      seed: int) -> Path:
    """A folder dataset of real JPEG files with random pixels: ``root/<split>/<class>/<NNN>.JPEG``, ``counts[split]``
    images per class, each ``size`` = (height, width)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in counts.items():
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(
                    root / split / cls / f"{i:03d}.JPEG", quality=90)
    return root


def cifar_arrays(count: int, num_classes: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """``count`` random 32x32 RGB images (uint8, HWC) and their labels."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, count).astype(np.int64)
    return images, labels


def _cifar_planes(images):
    """CIFAR stores each image as 1024 red, 1024 green, then 1024 blue bytes."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def write_cifar(root: Path, name: str, kind: str, train, test) -> Path:
    """``train`` and ``test`` (``cifar_arrays``) in the official layout of ``name`` (cifar10 or cifar100), ``kind``
    binary or python, under ``root``; returns the dataset's folder."""
    if name == "cifar10" and kind == "binary":
        folder = root / "cifar-10-batches-bin"
        folder.mkdir()
        chunks = np.array_split(np.arange(len(train[0])), 5)
        for i, chunk in enumerate(chunks, 1):
            records = np.concatenate([train[1][chunk, None].astype(np.uint8), _cifar_planes(train[0][chunk])], axis=1)
            (folder / f"data_batch_{i}.bin").write_bytes(records.tobytes())
        records = np.concatenate([test[1][:, None].astype(np.uint8), _cifar_planes(test[0])], axis=1)
        (folder / "test_batch.bin").write_bytes(records.tobytes())
    elif name == "cifar100" and kind == "binary":
        folder = root / "cifar-100-binary"
        folder.mkdir()
        for split, (images, labels) in (("train", train), ("test", test)):
            coarse = (labels // 5).astype(np.uint8)[:, None]
            records = np.concatenate([coarse, labels.astype(np.uint8)[:, None], _cifar_planes(images)], axis=1)
            (folder / f"{split}.bin").write_bytes(records.tobytes())
    elif name == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir()
        chunks = np.array_split(np.arange(len(train[0])), 5)
        for i, chunk in enumerate(chunks, 1):
            batch = {b"data": _cifar_planes(train[0][chunk]), b"labels": train[1][chunk].tolist()}
            (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
        (folder / "test_batch").write_bytes(pickle.dumps({b"data": _cifar_planes(test[0]), b"labels": test[1].tolist()},
                                                         protocol=2))
    else:
        folder = root / "cifar-100-python"
        folder.mkdir()
        for split, (images, labels) in (("train", train), ("test", test)):
            batch = {b"data": _cifar_planes(images), b"fine_labels": labels.tolist(),
                     b"coarse_labels": (labels // 5).tolist()}
            (folder / split).write_bytes(pickle.dumps(batch, protocol=2))
    return folder


class RunsACommand:
    """Pickled, it asks the unpickler to run ``touch marker``: what a hostile checkpoint holds."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def hostile_torch_zip(path, marker) -> None:
    """A checkpoint in torch.save's zip format whose state_dict runs ``touch marker`` when unpickled."""
    import zipfile

    payload = pickle.dumps({"state_dict": {"w": RunsACommand(marker)}}, protocol=2)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/version", "3\n")


def on_path(net: nn.Cell, path: str, has_twins: bool = True) -> nn.Cell:
    """``net`` as it runs on ``path`` (the ``net_path`` fixture): plain as built, or accelerated. ``has_twins``: the
    accelerator must swap something (else the test would check the plain path twice); False for cells it leaves
    as they are (Pixelfly's), where that is what the accelerated path runs."""
    if path == "plain":
        return net
    from mindcv_ext.accel import accelerate, accelerated_cells, declined_twins

    declined = declined_twins(net)
    net = accelerate(net, "on")
    if has_twins and not accelerated_cells(net) and declined:  # e.g. Pixelfly's and SSL's, without oneDNN's sgemm
        pytest.skip("the accelerator leaves this network plain here: " +
                    "; ".join(f"{twin}: {reason}" for twin, reason in declined.items()))
    assert bool(accelerated_cells(net)) is has_twins, accelerated_cells(net)
    return net


def skip_unless_twin_serves(twin) -> None:
    """Skip a test of accelerator twin ``twin`` (a class) where it cannot serve, with its reason."""
    reason = twin.unavailable() if hasattr(twin, "unavailable") else ""
    if reason:
        pytest.skip(f"{twin.__name__} cannot serve here: {reason}")


def randomise(net: nn.Cell, seed: int, scale: float = 0.3) -> nn.Cell:
    """``net`` with every trainable parameter drawn from N(0, ``scale``^2) (seeded): zero heads, zero biases and
    near-identity gates would hide part of what a test compares."""
    rng = np.random.default_rng(seed)
    for param in net.trainable_params():
        param.set_data(ms.Tensor(rng.standard_normal(param.shape).astype(np.float32) * scale))
    return net


def random_dense(in_features: int, out_features: int, seed: int) -> nn.Dense:
    """An ``nn.Dense`` with standard-normal weight and bias (seeded)."""
    return randomise(nn.Dense(in_features, out_features), seed, scale=1.0)


def gelu_exact(x):
    """The exact (erf) GELU, ``x * Phi(x)``, in NumPy."""
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def rel_err(actual, expected) -> float:
    """Largest absolute difference relative to the largest magnitude of ``expected``."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    scale = np.abs(expected).max()
    return float(np.abs(actual - expected).max() / (scale if scale > 0 else 1.0))


def shared_fixture_dir(*parts) -> Path:
    """A directory under ../shared/fixtures, or a skip (a failure under CI) when it is absent."""
    path = SHARED_FIXTURES.joinpath(*parts)
    if not path.is_dir():
        message = f"fixture directory {path} is not present (it lives in ../shared beside the checkout)"
        if os.environ.get("MINDCV_EXT_REQUIRE_FIXTURES"):
            pytest.fail(message)
        pytest.skip(message)
    return path


# The model fixtures (a PyTorch checkpoint, an input and the reference's logits): the small ones are copied into
# tests/data/models, the others read from ../shared/fixtures/models.
LOCAL_MODEL_FIXTURES = sorted(p.name for p in (TEST_DATA / "models").iterdir() if p.is_dir())
SHARED_ONLY_MODEL_FIXTURES = ["vitae_tiny", "vitae_tiny_monarch"]  # 14-19 MB each: read from ../shared


def model_fixtures(family: str) -> List[str]:
    """The model fixtures of one family (``gmlp``, ``mixer``, ``vitae``), by name."""
    return [name for name in LOCAL_MODEL_FIXTURES + SHARED_ONLY_MODEL_FIXTURES if name.startswith(family + "_")]


def model_fixture_dir(name: str) -> Path:
    if name in LOCAL_MODEL_FIXTURES:
        return TEST_DATA / "models" / name
    return shared_fixture_dir("models", name)


def fixture_meta(directory: Path) -> dict:
    """A fixture folder's ``meta.json``: the model, its settings, the files and the tolerances."""
    return json.loads((directory / "meta.json").read_text())


def convert_fixture(directory: Path, meta: dict, dst: Path, model_kwargs=None) -> int:
    """The user's command (scripts/convert_checkpoint.py) on a fixture's PyTorch checkpoint: its exit code."""
    from scripts.convert_checkpoint import main as convert_main

    return convert_main(["--model", meta["model"], "--model-kwargs", json.dumps(model_kwargs or meta["kwargs"]),
                         "--src", str(directory / meta["checkpoint"]), "--dst", str(dst)])


def assert_within_tolerance(actual, expected, atol: float, rtol: float) -> None:
    """``|actual - expected| <= atol + rtol * |expected|`` everywhere, as the fixtures' READMEs state it."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    excess = np.abs(actual - expected) - (atol + rtol * np.abs(expected))
    assert excess.max() <= 0, f"max |diff| {np.abs(actual - expected).max():.3g}"


def assert_model_fixture_matches_reference(name: str, checkpoint: Path, path: str) -> None:
    """Model fixture ``name``, its ``checkpoint`` converted (tests/models/conftest.py's ``converted``), loaded through
    mindcv's create_model: its parameter count and, on ``path`` (the ``net_path`` fixture), the reference's
    logits within the fixture's tolerances."""
    from mindcv.models import create_model

    import mindcv_ext  # noqa: F401  (registers the models)
    from mindcv_ext.models import count_params

    directory = model_fixture_dir(name)
    meta = fixture_meta(directory)
    net = create_model(meta["model"], checkpoint_path=str(checkpoint), **meta["kwargs"])
    net.set_train(False)
    assert count_params(net) == meta["num_params"]
    net = on_path(net, path)
    logits = net(ms.Tensor(np.load(directory / meta["input"]))).asnumpy()
    assert_within_tolerance(logits, np.load(directory / meta["expected_logits"]), meta["atol"], meta["rtol"])


class SensGrads(nn.Cell):
    """``(input grads, parameter grads)`` of ``net`` for the output cotangent ``sens`` (PyTorch's ``grad_out``).

    Take parameter names from ``net`` before wrapping it: wrapping prefixes them.
    """

    def __init__(self, net: nn.Cell) -> None:
        super().__init__()
        self.net = net
        self.weights = ms.ParameterTuple(net.trainable_params())
        self.grad = ops.GradOperation(get_all=True, get_by_list=True, sens_param=True)

    def construct(self, x, sens):
        return self.grad(self.net, self.weights)(x, sens)

    def __call__(self, *args):
        grads = super().__call__(*args)
        # Callers drop this cell at once, and MindSpore frees a cell's compiled graph with it (Cell.__del__,
        # del_net_res). Fresh-clone suites crashed there, in test_mlp_twin; the results are read back first, so the
        # graph is idle when it goes.
        _read_back(grads)
        return grads


def _read_back(value) -> None:
    if isinstance(value, (tuple, list)):
        for item in value:
            _read_back(item)
    elif isinstance(value, ms.Tensor):
        value.asnumpy()


def assert_layer_matches_fixture(layer: nn.Cell, data, names: Sequence[str], tol: float = 1e-5) -> None:
    """A layer's output, input gradient and the gradient of each parameter in ``names`` against a fixture's ``y``,
    ``grad_x`` and ``grad_<name>`` (the loss ``sum(y * grad_out)``), at atol = rtol = ``tol``."""
    x, grad_out = ms.Tensor(data["x"]), ms.Tensor(data["grad_out"])
    np.testing.assert_allclose(layer(x).asnumpy(), data["y"], atol=tol, rtol=tol)
    (grad_x,), grads = SensGrads(layer)(x, grad_out)
    np.testing.assert_allclose(grad_x.asnumpy(), data["grad_x"], atol=tol, rtol=tol)
    assert len(grads) == len(names), f"{len(grads)} parameter gradients for {len(names)} names: {list(names)}"
    for name, grad in zip(names, grads):
        np.testing.assert_allclose(grad.asnumpy(), data["grad_" + name], atol=tol, rtol=tol, err_msg=name)


def run_script(args: Sequence, cwd=None, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run one of the project's scripts as a user would: ``args[0]`` is its path in the checkout (``train.py``,
    ``scripts/export.py``, ``tests/kill_at.py``), run by this interpreter from ``cwd``, by default the test's own
    working folder (conftest's ``working_folder``), never the checkout."""
    script, *rest = [str(a) for a in args]
    # This checkout's code, whichever copy of the package the environment has installed.
    env = kwargs.pop("env", None) or dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, str(REPO_ROOT / script), *rest], cwd=cwd or os.getcwd(),
                          capture_output=True, text=True, timeout=timeout, env=env, **kwargs)
