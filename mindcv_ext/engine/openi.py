"""OpenI (启智) training tasks: data in and outputs out through the platform's ``c2net`` package.

``c2net.context.prepare()`` gives the task's dataset, pretrained-model and output folders (mounted, or copied
from object storage with moxing, as ``DATA_DOWNLOAD_METHOD`` says); ``upload_output()`` sends the output
folder back. A pre-empted task keeps only what was uploaded, so train.py uploads after every checkpoint.
"""
import logging
import os
import time
from typing import List, Optional

__all__ = ["openi_requested", "OpenITask"]

_logger = logging.getLogger("mindcv_ext")
METHOD_VARIABLE = "DATA_DOWNLOAD_METHOD"


def openi_requested(mode: str) -> bool:
    """``auto``: on when the platform's ``DATA_DOWNLOAD_METHOD`` is set."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"openi must be auto, on or off, got {mode!r}")
    return mode == "on" or mode == "auto" and METHOD_VARIABLE in os.environ


def _c2net_context():
    try:
        from c2net import context
    except ImportError:
        raise ValueError("OpenI mode needs the c2net package: pip install -e \".[openi]\" (or pip install "
                         "c2net); or pass --openi off") from None
    return context


def _is_within(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


class OpenITask:
    """The folders of one OpenI task, and the upload of its outputs (rank 0 only)."""

    def __init__(self, dataset_path: str, pretrain_model_path: Optional[str], output_path: str,
                 writer: bool = True) -> None:
        self.dataset_path, self.pretrain_model_path, self.output_path = dataset_path, pretrain_model_path, output_path
        self.writer = writer
        self.uploads = 0

    @classmethod
    def prepare(cls, rank: Optional[int] = None, wait_s: float = 3600.0) -> "OpenITask":
        """Run c2net's ``prepare()``: rank 0 first (it copies the data in MOXING mode), the other ranks after it."""
        context = _c2net_context()
        method = os.environ.get(METHOD_VARIABLE)
        if method not in ("MOUNT", "MOXING"):
            raise ValueError(f"OpenI mode: {METHOD_VARIABLE} is {method!r}; the platform sets MOUNT or MOXING (run "
                             f"with --openi off outside OpenI)")
        if rank not in (None, 0) and method == "MOXING":
            # c2net marks a finished copy with this file; copying on every rank at once would race.
            marker = os.path.join(os.environ.get("LOCAL_DATASET_PATH", ""), ".dataset_cache_file")
            deadline = time.time() + wait_s
            while os.environ.get("DATASET_URL", "[]") not in ("", "[]") and not os.path.exists(marker):
                if time.time() > deadline:
                    raise ValueError(f"OpenI mode: rank 0 did not finish copying the dataset ({marker}) in "
                                     f"{wait_s:.0f} s")
                time.sleep(2.0)
        try:
            prepared = context.prepare()
        except ValueError as exc:  # c2net names the missing variable
            raise ValueError(f"OpenI mode: c2net cannot prepare the task: {exc}") from exc
        return cls(prepared.dataset_path, prepared.pretrain_model_path, prepared.output_path,
                   writer=rank in (None, 0))

    def datasets(self) -> List[str]:
        if not self.dataset_path or not os.path.isdir(self.dataset_path):
            return []
        return sorted(name for name in os.listdir(self.dataset_path)
                      if not name.startswith(".") and os.path.isdir(os.path.join(self.dataset_path, name)))

    def apply(self, args) -> List[str]:
        """Point ``data_dir``, ``ckpt_save_dir`` and ``ckpt_path`` at the task's folders; returns notes to log."""
        notes = []
        names = self.datasets()
        if args.openi_dataset:
            if args.openi_dataset not in names:
                raise ValueError(f"--openi_dataset {args.openi_dataset!r} is not among the task's datasets in "
                                 f"{self.dataset_path}: {', '.join(names) or 'none'}")
            args.data_dir = os.path.join(self.dataset_path, args.openi_dataset)
        elif any(os.path.isdir(os.path.join(self.dataset_path or "", split))
                 for split in (args.train_split, args.val_split)) or args.dataset == "digits":
            args.data_dir = self.dataset_path
        elif len(names) == 1:
            args.data_dir = os.path.join(self.dataset_path, names[0])
        else:
            raise ValueError(f"the task has {len(names)} datasets in {self.dataset_path} ({', '.join(names) or 'none'}"
                             f"); choose one with --openi_dataset NAME")
        notes.append(f"OpenI: data_dir {args.data_dir}")
        if os.path.isabs(args.ckpt_save_dir):
            if not _is_within(args.ckpt_save_dir, self.output_path):
                _logger.warning(f"OpenI: ckpt_save_dir {args.ckpt_save_dir} lies outside the task's output folder "
                                f"{self.output_path}: nothing saved there is uploaded")
        else:
            args.ckpt_save_dir = os.path.normpath(os.path.join(self.output_path, args.ckpt_save_dir))
        notes.append(f"OpenI: ckpt_save_dir {args.ckpt_save_dir} (uploaded from {self.output_path})")
        if args.ckpt_path and not os.path.isabs(args.ckpt_path):
            if not self.pretrain_model_path:
                raise ValueError(f"OpenI: ckpt_path {args.ckpt_path!r} is relative, but the task has no pretrained "
                                 f"model folder; select the model in the task, or give an absolute path")
            args.ckpt_path = os.path.join(self.pretrain_model_path, args.ckpt_path)
            notes.append(f"OpenI: ckpt_path {args.ckpt_path}")
        return notes

    def upload(self, reason: str) -> None:
        """Send the output folder to the platform (rank 0); a failure is logged, the run goes on."""
        if not self.writer:
            return
        start = time.time()
        try:
            _c2net_context().upload_output()
        except Exception as exc:  # an upload failure must not end a training; the next upload retries
            _logger.warning(f"OpenI: upload after {reason} failed ({exc}); retrying after the next checkpoint")
            return
        self.uploads += 1
        _logger.info(f"OpenI: uploaded {self.output_path} after {reason} in {time.time() - start:.1f} s")
