"""Fixtures shared by the model tests."""
import pytest

from tests.utils import convert_fixture, fixture_meta, model_fixture_dir


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Each model fixture's checkpoint converted once (per test file) by the user's command: name -> .ckpt path."""
    paths = {}

    def convert(name):
        if name not in paths:
            directory = model_fixture_dir(name)
            dst = tmp_path_factory.mktemp(name) / f"{name}.ckpt"
            assert convert_fixture(directory, fixture_meta(directory), dst) == 0 and dst.is_file()
            paths[name] = dst
        return paths[name]
    return convert
