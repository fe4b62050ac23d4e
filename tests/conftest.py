import contextlib
import gc
import logging
import os
import sys

import numpy as np
import pytest

import mindspore as ms

from tests.checkout_guard import checkout_entries, new_entries_message
from tests.utils import REPO_ROOT

# Tests and the scripts they start write no bytecode caches into the checkout (see checkout_guard).
sys.dont_write_bytecode = True
os.environ["PYTHONDONTWRITEBYTECODE"] = "1"

MODES = {"graph": ms.GRAPH_MODE, "pynative": ms.PYNATIVE_MODE}


@pytest.fixture(scope="session", autouse=True)
def dataset_cache(tmp_path_factory):
    """Built-in datasets go to a per-session cache (inherited by subprocesses), not the user's ~/.cache."""
    cache = tmp_path_factory.mktemp("mindcv_ext_cache")
    previous = os.environ.get("MINDCV_EXT_CACHE")
    os.environ["MINDCV_EXT_CACHE"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("MINDCV_EXT_CACHE", None)
    else:
        os.environ["MINDCV_EXT_CACHE"] = previous


@pytest.fixture(scope="session", autouse=True)
def session_working_folder(tmp_path_factory):
    """Session- and module-scoped fixtures run in a temporary folder too, never in the checkout."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("session_cwd"))
        yield


@pytest.fixture(autouse=True)
def working_folder(tmp_path, monkeypatch):
    """Each test runs in its own temporary folder: relative paths (a config's ./ckpt/..., MindSpore's rank_0/ graph
    dumps) land there, not in the checkout, and no test sees what a user's own runs left in it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


_LOGGER_AT_START = (logging.getLogger("mindcv_ext").propagate, logging.getLogger("mindcv_ext").level)


def _reset_mindcv_ext_logger(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.propagate, logger.level = _LOGGER_AT_START


@pytest.fixture(autouse=True)
def mindcv_ext_logger():
    """Each test starts and ends with the "mindcv_ext" logger as the session found it. An in-process train.main()
    sets it up for its run (its own handlers, no propagation), which would hide later records from caplog; a
    module-scoped fixture does so before this fixture runs, so the state is reset on both sides of the test."""
    logger = logging.getLogger("mindcv_ext")
    _reset_mindcv_ext_logger(logger)
    yield logger
    _reset_mindcv_ext_logger(logger)


_collections = []


@pytest.fixture(autouse=True)
def collect_garbage_between_tests():
    """Python's cyclic collector runs ``Cell.__del__``, which frees a compiled cell's graph; run in the middle of
    another graph's compilation, that crashed the executor (a segfault in ``del_net_res`` during test_accelerate,
    twice in fresh-clone runs). So the automatic collector is off for the session (fixtures compile graphs too), and
    it collects between tests: the young generation, where everything the test made still is, after each test, and
    everything every 50 tests."""
    if not _collections:
        gc.collect()
        gc.freeze()  # what exists once the tests are imported: out of every later scan
        gc.disable()
    yield
    _collections.append(True)
    gc.collect(2 if len(_collections) % 50 == 0 else 0)


@contextlib.contextmanager
def _in_mode(mode: int):
    """MindSpore's execution mode set for the test, and the earlier one restored after it."""
    previous = ms.get_context("mode")
    ms.set_context(mode=mode)
    try:
        yield
    finally:
        ms.set_context(mode=previous)


@pytest.fixture(params=sorted(MODES))
def ms_mode(request):
    """Run the test once in graph mode and once in PyNative mode."""
    with _in_mode(MODES[request.param]):
        yield request.param


@pytest.fixture
def graph_mode():
    with _in_mode(ms.GRAPH_MODE):
        yield


@pytest.fixture
def pynative_mode():
    """PyNative mode for the test (forward hooks run there only), whatever mode an earlier test left."""
    with _in_mode(ms.PYNATIVE_MODE):
        yield


@pytest.fixture(scope="session")
def kernel_library(dataset_cache):
    """The CPU kernels, built once per test session into its cache (not at collection); a skip only when
    MINDCV_EXT_CPU_KERNELS=0 switches them off, a failure when they do not build."""
    from mindcv_ext.accel import cpu_kernels

    if cpu_kernels.kernels_disabled():
        pytest.skip(f"{cpu_kernels.ENV_SWITCH}=0: the CPU kernels are off")
    return cpu_kernels.cpu_kernel_library()


@pytest.fixture(params=["plain", "accel"])
def net_path(request):
    """Run the test on the plain network (what GPU and Ascend run) and on the accelerated one; apply it with
    ``tests.utils.on_path``."""
    if request.param == "accel":
        request.getfixturevalue("kernel_library")
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def _is_controller(config) -> bool:
    return not hasattr(config, "workerinput")  # pytest-xdist workers have it


def pytest_sessionstart(session):
    if _is_controller(session.config):
        session.config._checkout_before = checkout_entries(REPO_ROOT)


def pytest_sessionfinish(session, exitstatus):
    # Cells still alive at interpreter exit make MindSpore print "Exception ignored in Cell.__del__".
    gc.collect()
    before = getattr(session.config, "_checkout_before", None)
    if before is not None:
        message = new_entries_message(REPO_ROOT, before)
        if message:
            session.config.get_terminal_writer().line(f"\nERROR: {message}", red=True)
            if session.exitstatus == pytest.ExitCode.OK:  # an interrupted or failed session keeps its own status
                session.exitstatus = pytest.ExitCode.TESTS_FAILED


# The slowest files first: pytest-xdist's loadfile hands files to idle workers in collection order, so starting
# the long ones early lets both workers finish together (the longest-first rule) instead of one waiting at the end.
SLOWEST_FIRST = ("tests/e2e/test_train.py", "tests/e2e/test_benchmark.py", "tests/e2e/test_train_crash.py",
                 "tests/e2e/test_configs.py", "tests/accel/test_accelerate.py", "tests/models/test_t2t_vit.py",
                 "tests/e2e/test_port_commands.py", "tests/models/test_amp_o2.py", "tests/e2e/test_train_dvt.py",
                 "tests/models/test_dvt.py", "tests/e2e/test_train_openi.py", "tests/e2e/test_distributed.py",
                 "tests/models/test_zoo.py", "tests/e2e/test_study.py", "tests/layers/test_btt.py",
                 "tests/models/test_vitae.py", "tests/models/test_mlp_mixer.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {path: index for index, path in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: order within a file kept
