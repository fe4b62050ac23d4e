"""The repository's own promises: CI runs the README's test command, dependencies are pinned, the small fixtures in
tests/data are current copies of ../shared's."""
import filecmp
import re
from pathlib import Path

from tests.checkout_guard import checkout_entries, new_entries_message
from tests.utils import (LOCAL_MODEL_FIXTURES, REPO_ROOT, SHARED_ONLY_MODEL_FIXTURES, TEST_DATA, model_fixtures,
                         shared_fixture_dir)


def _readme_test_command() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Test", 1)[1]
    return re.search(r"```bash\n(.+?)\n```", section, re.S).group(1).strip()


def test_ci_runs_the_readme_test_command():
    command = _readme_test_command()
    assert "pytest" in command and "ruff check" in command
    ci_lines = [line.strip() for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in ci_lines


def test_requirements_pin_what_mindspore_needs():
    requirements = (REPO_ROOT / "requirements.txt").read_text()
    assert re.search(r"^mindspore==2\.10\.0$", requirements, re.M)
    assert re.search(r"^mindcv==0\.3\.0$", requirements, re.M)
    assert re.search(r"^numpy>=1\.25,<2$", requirements, re.M)
    assert "torch" not in requirements
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert '"numpy>=1.25,<2"' in pyproject and '"mindspore>=2.7.1,<2.11"' in pyproject  # the tested range
    platform = (REPO_ROOT / "requirements-platform.txt").read_text()
    assert not re.search(r"^mindspore", platform, re.M) and re.search(r"^mindcv==0\.3\.0$", platform, re.M)
    # The platform file lacks MindSpore and the editable checkout, whose dependencies would bring PyPI's MindSpore:
    # its users install the checkout with --no-deps (README), as .ci/run does.
    assert {line for line in requirements.splitlines() if line and not line.startswith("#")} - {
        line for line in platform.splitlines() if line and not line.startswith("#")} == {"mindspore==2.10.0", "-e ."}
    assert "pip install -r requirements-platform.txt && pip install --no-deps -e ." in \
        (REPO_ROOT / "README.md").read_text()
    assert '"$venv/bin/pip" install -q --no-deps -e .' in (REPO_ROOT / ".ci" / "run").read_text()


def test_run_outputs_are_git_ignored():
    ignored = (REPO_ROOT / ".gitignore").read_text().splitlines()
    assert {"ckpt/", "predictions.json", "msrun_log/"} <= set(ignored)


def test_tests_run_in_their_own_folder_not_the_checkout(tmp_path):
    """conftest's working_folder: relative paths (a config's ./ckpt/quickstart, MindSpore's rank_0/ dumps) land in
    the test's folder, and a user's runs in the checkout are neither read nor overwritten."""
    assert Path.cwd() == tmp_path and REPO_ROOT not in Path.cwd().resolve().parents


def test_the_checkout_guard_names_what_a_test_left(tmp_path):
    checkout = tmp_path / "checkout"
    (checkout / "mindcv_ext").mkdir(parents=True)
    (checkout / "README.md").write_text("x")
    (checkout / "ckpt" / "old").mkdir(parents=True)
    (checkout / "ckpt" / "old" / "results.csv").write_text("epoch\n1\n")
    before = checkout_entries(checkout)
    assert new_entries_message(checkout, before) == ""
    (checkout / "README.md").write_text("xy")  # a user's file overwritten
    (checkout / "ckpt" / "old" / "results.csv").unlink()  # and one removed
    (checkout / "ckpt" / "quickstart").mkdir(parents=True)
    (checkout / "ckpt" / "quickstart" / "train.log").write_text("x")
    (checkout / "rank_0" / "om").mkdir(parents=True)
    (checkout / "rank_0" / "om" / "analyze_fail.ir").write_text("x")
    (checkout / "mindcv_ext" / "__pycache__").mkdir()
    (checkout / "mindcv_ext" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"")
    message = new_entries_message(checkout, before)
    assert "changed 7 entries of the checkout" in message
    for entry in ("new: ckpt/quickstart", "new: ckpt/quickstart/train.log", "new: rank_0/om/analyze_fail.ir",
                  "removed: ckpt/old/results.csv", "changed: README.md"):
        assert f"\n  {entry}" in message
    assert "__pycache__" not in message


def test_ci_also_runs_the_suite_on_the_lowest_mindspore_the_readme_names():
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    lowest = re.search(r"^LOWEST_MINDSPORE=(\S+)$", ci, re.M).group(1)
    assert f'"mindspore>={lowest},<2.11"' in (REPO_ROOT / "pyproject.toml").read_text()
    assert f"tested with MindSpore {lowest} and 2.10.0" in (REPO_ROOT / "README.md").read_text()
    assert '"$venv/bin/python" -m pytest' in ci.split("LOWEST_MINDSPORE=")[1]
    # set -e lets a failed pip install in the README's && list pass: the line after it stops the script
    lines = [line.strip() for line in ci.splitlines()]
    assert lines[lines.index(_readme_test_command()) + 1] == '[ "$?" -eq 0 ] || exit 1'
    assert ci.index(_readme_test_command()) < ci.index("LOWEST_MINDSPORE=")  # the pinned MindSpore first
    # That environment gets the test tools without requirements.txt's pinned MindSpore.
    dev = (REPO_ROOT / "requirements-dev.txt").read_text().split()
    assert dev == ["-r", "requirements.txt", "-r", "requirements-test.txt"]
    assert "mindspore" not in (REPO_ROOT / "requirements-test.txt").read_text()


def test_local_model_fixtures_are_current_copies():
    """Each family's fixture logits: tests/models/test_<family module>.py."""
    shared = shared_fixture_dir("models")
    assert sorted(p.name for p in shared.iterdir() if p.is_dir()) == sorted(
        LOCAL_MODEL_FIXTURES + SHARED_ONLY_MODEL_FIXTURES), \
        "a new fixture appeared in ../shared/fixtures/models: copy it or list it as shared-only"
    for name in LOCAL_MODEL_FIXTURES:
        comparison = filecmp.dircmp(shared / name, TEST_DATA / "models" / name)
        assert not comparison.left_only and not comparison.diff_files, name
        _, mismatch, errors = filecmp.cmpfiles(shared / name, TEST_DATA / "models" / name,
                                               comparison.common_files, shallow=False)
        assert not mismatch and not errors, name


def test_the_model_tests_cover_every_model_fixture_once():
    """model_fixtures(family) picks fixtures by name prefix: a fixture of a prefix no model test asks for would be
    tested nowhere. The families the tests ask for (their ``model_fixtures("...")`` calls) share the fixtures out
    exactly."""
    families = sorted({family for path in (REPO_ROOT / "tests").rglob("test_*.py")
                       for family in re.findall(r"\bmodel_fixtures\(\s*[\"'](\w+)[\"']\s*\)", path.read_text())})
    assert families, "no test calls model_fixtures"
    picked = [name for family in families for name in model_fixtures(family)]
    assert sorted(picked) == sorted(LOCAL_MODEL_FIXTURES + SHARED_ONLY_MODEL_FIXTURES), families
    assert all(model_fixtures(family) for family in families), families  # no family asked for names none


def test_the_slowest_first_order_names_test_files_that_exist():
    """conftest's scheduling order: a file moved or renamed without it would silently start late."""
    from tests.conftest import SLOWEST_FIRST

    assert len(set(SLOWEST_FIRST)) == len(SLOWEST_FIRST)
    assert [path for path in SLOWEST_FIRST if not (REPO_ROOT / path).is_file()] == []
