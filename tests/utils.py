"""Helpers shared by the tests."""
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Sequence, Tuple

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
