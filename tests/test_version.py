"""mindcv_ext/version.py: the one place the version is written; the package and its build metadata read it there."""
import re

import mindcv_ext
from mindcv_ext import version
from tests.utils import REPO_ROOT


def test_the_version_is_a_release_number():
    assert re.fullmatch(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)", version.__version__)  # PEP 440 as written


def test_the_package_and_the_build_read_the_same_version():
    assert mindcv_ext.__version__ is version.__version__ and "__version__" in mindcv_ext.__all__
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    project = pyproject.split("[project]", 1)[1].split("\n[", 1)[0]
    assert re.search(r'^dynamic = \["version"\]$', project, re.M) and not re.search(r"^version\s*=", project, re.M)
    dynamic = pyproject.split("[tool.setuptools.dynamic]", 1)[1].split("\n[", 1)[0]
    assert re.search(r'^version = \{ attr = "mindcv_ext\.version\.__version__" \}$', dynamic, re.M)
