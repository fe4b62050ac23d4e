"""mindcv_ext.benchmark.study: a run's record, the variants' summary, the loop's efficiency and the plots."""
import pytest

from mindcv_ext.benchmark import study


def _epochs(*rows):
    return [dict(epoch=str(i + 1), val_top1=str(top1), epoch_time_s=str(time), images_per_s=str(speed),
                 train_loss="1.0") for i, (top1, time, speed) in enumerate(rows)]


def _run(variant, seed, top1, time, speed=100.0, **extra):
    rows = _epochs((0.5, time / 2, speed / 2), (top1, time / 2, speed))
    return dict(study.run_record("gmlp", variant, seed, f"runs/{variant}{seed}", rows, 2), **extra)


def test_schedule_and_training_time():
    assert study.schedule(9, 1.0, 2) == ["--epoch_size", "9", "--warmup_epochs", "1", "--decay_epochs", "6"]
    assert study.schedule(2, 3.0) == ["--epoch_size", "2", "--warmup_epochs", "3", "--decay_epochs", "1"]
    assert study.training_time(_epochs((0.1, 1.25, 1), (0.2, 2.5, 1))) == 3.8


def test_run_record():
    record = study.run_record("gmlp", "dense", 0, "runs/d0", _epochs((0.5, 10.0, 50.0), (0.9, 20.0, 150.0),
                                                                     (0.95, 5.0, 10.0)), 2)
    assert (record["top1"], record["train_time_s"], record["images_per_s"], record["steady_images_per_s"]) == (
        90.0, 30.0, 100.0, 150.0)
    assert [r["epoch"] for r in record["epoch_rows"]] == [1, 2]
    with pytest.raises(RuntimeError, match="runs/d0: results.csv has 1 of 2 epochs"):
        study.run_record("gmlp", "dense", 0, "runs/d0", _epochs((0.5, 1.0, 1.0)) + [dict(val_top1="")], 2)


def test_summary_and_efficiency(tmp_path):
    runs = [_run("dense", 0, 0.9, 100.0), _run("dense", 1, 0.8, 120.0), _run("monarch", 0, 0.85, 55.0),
            _run(study.FINE_TUNED, 0, 0.88, 30.0, dense_time_s=100.0, projection_error=0.2,
                 top1_after_projection=70.0)]
    study.add_total_times(runs)
    assert [r["total_time_s"] for r in runs] == [100.0, 120.0, 55.0, 130.0]
    sizes = {f"gmlp_{v}": {"params": 10, "macs_m": 1.0} for v in ("dense", "monarch", study.FINE_TUNED)}
    rows = {r["variant"]: r for r in study.summarize(runs, sizes)}
    assert (rows["dense"]["top1_mean"], rows["dense"]["top1_spread"], rows["dense"]["top1_per_seed"]) == (
        85.0, 10.0, "90.00 80.00")
    assert rows["monarch"]["time_speedup_vs_dense"] == 2.0 and rows["monarch"]["top1_vs_dense"] == 0.0
    assert rows[study.FINE_TUNED]["time_speedup_vs_dense"] == round(110.0 / 130.0, 2)
    assert rows[study.FINE_TUNED]["projection_error"] == 0.2
    loop = study.efficiency(runs, [{"family": "gmlp", "variant": "dense", "batch_size": 16,
                                    "step_alone_images_per_s": 200.0}])
    assert loop == [{"family": "gmlp", "variant": "dense", "batch_size": 16, "step_alone_images_per_s": 200.0,
                     "epoch_images_per_s": 100.0, "efficiency": 0.5}]
    assert study.plot(runs, list(rows.values()), str(tmp_path / "study.png"))
    assert study.plot_curves(runs, str(tmp_path / "curves.png"))
    assert (tmp_path / "study.png").is_file() and (tmp_path / "curves.png").is_file()


def test_last_json_line(tmp_path):
    console = tmp_path / "console.log"
    console.write_text('noise\n{"top1": 0.5}\nWARNING after the scores\n')
    assert study.last_json_line(str(console)) == {"top1": 0.5}
    console.write_text("no scores\n")
    with pytest.raises(RuntimeError, match="ends without eval.py's JSON scores"):
        study.last_json_line(str(console))
