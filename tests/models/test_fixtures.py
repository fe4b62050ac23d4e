"""Every model fixture: convert the PyTorch checkpoint with the user's command, load it through mindcv's
create_model, and compare graph-mode logits with the reference's."""
import filecmp
import json

import numpy as np
import pytest

import mindspore as ms
from mindcv.models import create_model

import mindcv_ext  # noqa: F401  (registers the models)
from mindcv_ext.models import count_params
from scripts.convert_checkpoint import main as convert_main
from tests.utils import TEST_DATA, on_path, shared_fixture_dir

LOCAL = sorted(p.name for p in (TEST_DATA / "models").iterdir() if p.is_dir())
SHARED_ONLY = ["vitae_tiny", "vitae_tiny_monarch"]  # 14-19 MB each: read from ../shared


def _fixture_dir(name):
    if name in LOCAL:
        return TEST_DATA / "models" / name
    return shared_fixture_dir("models", name)


def test_local_copies_are_current():
    shared = shared_fixture_dir("models")
    assert sorted(p.name for p in shared.iterdir() if p.is_dir()) == sorted(LOCAL + SHARED_ONLY), \
        "a new fixture appeared in ../shared/fixtures/models: copy it or list it as shared-only"
    for name in LOCAL:
        comparison = filecmp.dircmp(shared / name, TEST_DATA / "models" / name)
        assert not comparison.left_only and not comparison.diff_files, name
        _, mismatch, errors = filecmp.cmpfiles(shared / name, TEST_DATA / "models" / name,
                                               comparison.common_files, shallow=False)
        assert not mismatch and not errors, name


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Each fixture's checkpoint converted once by the user's command: {name: .ckpt path}."""
    paths = {}

    def convert(name):
        if name not in paths:
            directory = _fixture_dir(name)
            meta = json.loads((directory / "meta.json").read_text())
            dst = tmp_path_factory.mktemp(name) / f"{name}.ckpt"
            code = convert_main(["--model", meta["model"], "--model-kwargs", json.dumps(meta["kwargs"]),
                                 "--src", str(directory / meta["checkpoint"]), "--dst", str(dst)])
            assert code == 0 and dst.is_file()
            paths[name] = dst
        return paths[name]
    return convert


@pytest.mark.parametrize("name", LOCAL + SHARED_ONLY)
def test_fixture_logits_match_reference(name, converted, graph_mode, net_path):
    directory = _fixture_dir(name)
    meta = json.loads((directory / "meta.json").read_text())
    net = create_model(meta["model"], checkpoint_path=str(converted(name)), **meta["kwargs"])
    net.set_train(False)
    assert count_params(net) == meta["num_params"]
    net = on_path(net, net_path)
    logits = net(ms.Tensor(np.load(directory / meta["input"]))).asnumpy()
    expected = np.load(directory / meta["expected_logits"])
    assert logits.shape == expected.shape
    excess = np.abs(logits - expected) - (meta["atol"] + meta["rtol"] * np.abs(expected))
    assert excess.max() <= 0, f"max |diff| {np.abs(logits - expected).max():.3g}"
