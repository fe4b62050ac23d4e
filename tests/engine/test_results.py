"""engine/results.py: results.csv, one formatted row per epoch, cut back to the epoch a run resumes from, and the
curves drawn from it."""
import csv

from PIL import Image

from mindcv_ext.engine import ResultsLog, plot_curves
from mindcv_ext.engine.results import FIELDS


def _read(path):
    with open(path, newline="") as stream:
        return list(csv.reader(stream))


def _epoch(epoch, **values):
    return dict(dict(epoch=epoch, train_loss=2.0 / epoch, lr=0.001 * epoch, val_loss=None, val_top1=None,
                     val_top5=None, epoch_time_s=12.5, images_per_s=800), **values)


def test_each_append_rewrites_the_file_with_formatted_rows(tmp_path):
    path = tmp_path / "results.csv"
    log = ResultsLog(str(path))
    log.append(**_epoch(1, val_loss=1.23456789, val_top1=0.5, val_top5=0.875))
    assert _read(path) == [FIELDS, ["1", "2.000000", "0.001", "1.234568", "0.500000", "0.875000", "12.5", "800"]]
    log.append(**_epoch(2, unknown="ignored"))  # no validation this epoch: empty cells
    assert _read(path)[1:] == [["1", "2.000000", "0.001", "1.234568", "0.500000", "0.875000", "12.5", "800"],
                               ["2", "1.000000", "0.002", "", "", "", "12.5", "800"]]
    assert FIELDS == ["epoch", "train_loss", "lr", "val_loss", "val_top1", "val_top5", "epoch_time_s",
                      "images_per_s"]
    assert list(tmp_path.iterdir()) == [path]  # written atomically: no temporary left


def test_a_resumed_run_keeps_the_rows_up_to_its_epoch(tmp_path):
    path = tmp_path / "results.csv"
    first = ResultsLog(str(path))
    for epoch in (1, 2, 3):
        first.append(**_epoch(epoch))
    resumed = ResultsLog(str(path), resume_epoch=2)  # the newest checkpoint was epoch 2's
    assert [row["epoch"] for row in resumed.rows] == ["1", "2"]
    resumed.append(**_epoch(3, train_loss=0.25))
    assert [row[:2] for row in _read(path)[1:]] == [["1", "2.000000"], ["2", "1.000000"], ["3", "0.250000"]]
    fresh = ResultsLog(str(path))  # a fresh run starts its own file
    fresh.append(**_epoch(1))
    assert len(_read(path)) == 2


def test_curves_are_drawn_from_the_file(tmp_path):
    path = tmp_path / "results.csv"
    log = ResultsLog(str(path))
    for epoch in (1, 2, 3):
        log.append(**_epoch(epoch, val_loss=1.0 / epoch, val_top1=0.3 * epoch, val_top5=0.3))
    png = tmp_path / "curves.png"
    assert plot_curves(str(path), str(png), title="gmlp") == str(png)
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (1100, 400)  # 11 x 4 inches at 100 dpi
    without_validation = tmp_path / "train_only.csv"
    ResultsLog(str(without_validation)).append(**_epoch(1))
    assert plot_curves(str(without_validation), str(tmp_path / "train_only.png")) == str(tmp_path / "train_only.png")
    empty = tmp_path / "empty.csv"
    empty.write_text(",".join(FIELDS) + "\n")
    assert plot_curves(str(empty), str(tmp_path / "empty.png")) is None and not (tmp_path / "empty.png").exists()
