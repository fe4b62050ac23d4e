"""Checkpoints that survive crashes: atomic writes, rotation that respects a resumed run, training state."""
import glob
import json
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

import mindspore as ms
from mindspore import nn

from ..models.factory import read_mindspore_checkpoint
from .files import atomic_write, temporary_path

__all__ = ["save_atomic", "CheckpointKeeper", "TrainingState", "load_training_state", "epoch_checkpoint_name",
           "epoch_checkpoints", "parameter_checksum"]


def save_atomic(save_obj, path: str, append_dict: Optional[Dict] = None) -> None:
    """Write to a temporary file beside ``path`` and rename: a crash never leaves a truncated file named ``path``.

    On failure (a full disk, say) no temporary file is left, and an existing ``path`` keeps its old content.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # save_checkpoint appends ".ckpt" to names without it, so the temporary name keeps that suffix; it
    # writes its own ".tmp" beside that first.
    tmp = temporary_path(path, ".ckpt")
    try:
        ms.save_checkpoint(save_obj, tmp, append_dict=append_dict, crc_check=True)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is None:  # MindSpore's write errors name no file
            exc.filename = path
        raise
    finally:
        for leftover in (tmp, tmp[: -len(".ckpt")] + ".tmp"):
            if os.path.exists(leftover):
                os.remove(leftover)


def epoch_checkpoint_name(model: str, epoch: int, step: int) -> str:
    return f"{model}-{epoch}_{step}.ckpt"


def epoch_checkpoints(directory: str, model: str) -> List[Tuple[int, str]]:
    """(epoch, path) of the epoch checkpoints (``epoch_checkpoint_name``) in ``directory``, oldest first."""
    pattern = re.compile(re.escape(model) + r"-(\d+)_(\d+)\.ckpt$")
    found = []
    for path in glob.glob(os.path.join(glob.escape(directory), f"{glob.escape(model)}-*_*.ckpt")):
        match = pattern.fullmatch(os.path.basename(path))
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


class CheckpointKeeper:
    """Keeps epoch checkpoints: the ``keep_max`` newest (``latest_k``), or the ``keep_max`` best by validation
    top-1 plus always the newest (``top_k``), so a crashed run can always resume from its last epoch.

    Checkpoints already in the directory (from the run being resumed) count too: a resumed run removes an
    old file only after it has written a newer one. Their metrics are kept in ``checkpoints.json``.
    """

    def __init__(self, directory: str, model: str, keep_max: int, policy: str = "latest_k") -> None:
        if policy not in ("latest_k", "top_k"):
            raise ValueError(f"ckpt_save_policy must be latest_k or top_k, got {policy!r}")
        self.directory, self.model, self.keep_max, self.policy = directory, model, max(1, keep_max), policy
        self.index = os.path.join(directory, "checkpoints.json")
        metrics = {}
        if os.path.isfile(self.index):
            with open(self.index) as stream:
                metrics = {entry["file"]: entry["top1"] for entry in json.load(stream)}
        self.entries: List[Tuple[int, float, str]] = []  # (epoch, metric, path)
        for epoch, path in epoch_checkpoints(directory, model):
            metric = metrics.get(os.path.basename(path))
            self.entries.append((epoch, float("-inf") if metric is None else metric, path))

    def save(self, save_obj, epoch: int, step: int, metric: Optional[float] = None,
             append_dict: Optional[Dict] = None) -> str:
        path = os.path.join(self.directory, epoch_checkpoint_name(self.model, epoch, step))
        save_atomic(save_obj, path, append_dict)
        self.entries = [e for e in self.entries if e[2] != path]
        self.entries.append((epoch, float("-inf") if metric is None else float(metric), path))
        self._prune()
        return path

    def _prune(self) -> None:
        newest = max(self.entries, key=lambda e: e[0])
        if self.policy == "top_k":
            best = sorted(self.entries, key=lambda e: (e[1], e[0]), reverse=True)[: self.keep_max]
            keep = best + ([newest] if newest not in best else [])
        else:
            keep = sorted(self.entries, key=lambda e: e[0], reverse=True)[: self.keep_max]
        for entry in self.entries:
            if entry not in keep and os.path.exists(entry[2]):
                os.remove(entry[2])
        self.entries = sorted(keep)
        records = [{"file": os.path.basename(p), "epoch": e, "top1": m if m != float("-inf") else None}
                   for e, m, p in self.entries]
        with atomic_write(self.index) as stream:
            json.dump(records, stream, indent=1)

    @property
    def paths(self) -> List[str]:
        return [e[2] for e in sorted(self.entries)]


@dataclass
class TrainingState:
    epoch: int
    step: int
    best_top1: float


def load_training_state(train_step: nn.Cell, path: str) -> TrainingState:
    """Restore network, optimizer, EMA and loss scale from a training checkpoint written by train.py."""
    params = read_mindspore_checkpoint(path)
    if "epoch_num" not in params or "global_step" not in params:
        raise ValueError(f"{path!r} holds weights only, not a training state; to start from its weights, "
                         f"pass it as --ckpt_path without --resume_opt")
    current = {p.name: p for p in train_step.get_parameters()}
    mismatched = [f"{name}: run {tuple(current[name].shape)} vs checkpoint {tuple(value.shape)}"
                  for name, value in params.items()
                  if name in current and tuple(value.shape) != tuple(current[name].shape)]
    if mismatched:
        raise ValueError(f"cannot resume from {path!r}: it was saved by a run with other settings (e.g. epoch_size, "
                         f"batch size or model arguments): " + "; ".join(mismatched[:5]))
    missing = [name for name in current if name not in params]
    if missing:
        raise ValueError(f"cannot resume from {path!r}: it lacks {', '.join(missing[:5])} (was EMA or gradient "
                         f"accumulation switched on since?)")
    ms.load_param_into_net(train_step, params, strict_load=True)
    best = params.get("best_top1")
    return TrainingState(epoch=int(params["epoch_num"].asnumpy()), step=int(params["step_num"].asnumpy()),
                         best_top1=float(best.asnumpy()) if best is not None else float("-inf"))


def parameter_checksum(net: nn.Cell) -> str:
    """The sha256 of every parameter's name and value: compares replicas across ranks, and runs."""
    import hashlib

    digest = hashlib.sha256()
    for param in sorted(net.get_parameters(), key=lambda p: p.name):
        digest.update(param.name.encode())
        digest.update(np.ascontiguousarray(param.asnumpy()).tobytes())
    return digest.hexdigest()
