"""Fixtures shared by the model tests."""
import json

import pytest

from tests.utils import model_fixture_dir


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Each model fixture's checkpoint converted once (per test file) by the user's command: name -> .ckpt path."""
    from scripts.convert_checkpoint import main as convert_main

    paths = {}

    def convert(name):
        if name not in paths:
            directory = model_fixture_dir(name)
            meta = json.loads((directory / "meta.json").read_text())
            dst = tmp_path_factory.mktemp(name) / f"{name}.ckpt"
            code = convert_main(["--model", meta["model"], "--model-kwargs", json.dumps(meta["kwargs"]),
                                 "--src", str(directory / meta["checkpoint"]), "--dst", str(dst)])
            assert code == 0 and dst.is_file()
            paths[name] = dst
        return paths[name]
    return convert
