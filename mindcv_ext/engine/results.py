"""The per-epoch results file (CSV) and the loss/accuracy plot drawn from it."""
import csv
import os
from typing import Any, Dict, List, Optional

from .files import atomic_write

__all__ = ["ResultsLog", "plot_curves", "pyplot", "save_figure"]

FIELDS = ["epoch", "train_loss", "lr", "val_loss", "val_top1", "val_top5", "epoch_time_s", "images_per_s"]


class ResultsLog:
    """``results.csv``: one row per epoch. A resumed run keeps the rows up to the epoch it resumed from."""

    def __init__(self, path: str, resume_epoch: int = 0) -> None:
        self.path = path
        self.rows: List[Dict[str, str]] = []
        if resume_epoch > 0 and os.path.isfile(path):
            with open(path, newline="") as stream:
                self.rows = [row for row in csv.DictReader(stream) if int(row["epoch"]) <= resume_epoch]

    def append(self, **values) -> None:
        row = {field: "" if values.get(field) is None else values[field] for field in FIELDS}
        for key in ("train_loss", "val_loss", "val_top1", "val_top5"):
            if isinstance(row[key], float):
                row[key] = f"{row[key]:.6f}"
        self.rows.append(row)
        with atomic_write(self.path, newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(self.rows)


def _column(rows, key) -> List[Optional[float]]:
    return [float(r[key]) if r.get(key) not in (None, "") else None for r in rows]


def plot_curves(csv_path: str, png_path: str, title: str = "") -> Optional[str]:
    """Loss (train and validation) and validation accuracy per epoch; returns the PNG path, or None."""
    plt = pyplot()
    if plt is None:
        return None
    from matplotlib.ticker import MaxNLocator

    with open(csv_path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    if not rows:
        return None
    epochs = [int(r["epoch"]) for r in rows]
    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(11, 4))
    loss_axis.plot(epochs, _column(rows, "train_loss"), marker="o", label="train")
    val_loss = _column(rows, "val_loss")
    if any(v is not None for v in val_loss):
        points = [(e, v) for e, v in zip(epochs, val_loss) if v is not None]
        loss_axis.plot(*zip(*points), marker="s", label="validation")
    loss_axis.set(xlabel="epoch", ylabel="loss", title="loss")
    loss_axis.legend()
    loss_axis.grid(alpha=0.3)
    for key, label in (("val_top1", "top-1"), ("val_top5", "top-5")):
        points = [(e, 100 * v) for e, v in zip(epochs, _column(rows, key)) if v is not None]
        if points:
            acc_axis.plot(*zip(*points), marker="o", label=label)
    acc_axis.set(xlabel="epoch", ylabel="validation accuracy (%)", title="accuracy")
    if acc_axis.lines:
        acc_axis.legend()
    else:
        acc_axis.text(0.5, 0.5, "no validation\n(val_while_train False)", ha="center", va="center",
                      transform=acc_axis.transAxes)
    acc_axis.grid(alpha=0.3)
    for axis in (loss_axis, acc_axis):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        figure.suptitle(title)
    return save_figure(figure, png_path)


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend, or None when matplotlib is absent (plots are optional)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(figure: Any, path: str) -> str:
    """Lay out a matplotlib ``figure``, write it as PNG through a temporary file renamed onto ``path`` (its folder
    made), and close it; returns ``path``."""
    import matplotlib.pyplot as plt

    try:
        figure.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with atomic_write(path, "wb") as stream:
            figure.savefig(stream, format="png", dpi=100)
    finally:
        plt.close(figure)
    return path
