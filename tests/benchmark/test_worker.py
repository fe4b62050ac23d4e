"""mindcv_ext.benchmark.worker: the measurements a worker process runs, and its command line."""
import pytest

from mindcv_ext.benchmark import worker


def test_every_worker_resolves_to_a_measurement():
    for name in worker.WORKERS:
        assert callable(worker.worker_function(name))
    with pytest.raises(ValueError, match="unknown benchmark worker 'nope'; one of model, train_step"):
        worker.worker_function("nope")


def test_command_line_refuses_what_is_not_a_measurement(capsys):
    with pytest.raises(SystemExit):
        worker.main(["attention", "[1, 2]"])
    assert "kwargs must be a JSON object" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        worker.main(["nope", "{}"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err
