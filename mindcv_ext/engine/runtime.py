"""Process set-up shared by train.py, eval.py, infer.py and the scripts."""
import logging
import os
import random
import sys
import zipfile
from typing import Optional, Tuple

import numpy as np

import mindspore as ms
from mindspore import nn

__all__ = ["setup_context", "setup_distributed", "setup_logger", "attach_log_file", "set_seed", "load_weights",
           "is_torch_checkpoint"]

_logger = logging.getLogger("mindcv_ext")


def setup_context(mode: int = 0, device_target: str = "auto") -> None:
    """Graph (0) or PyNative (1) mode; ``auto`` keeps the backend of the installed MindSpore."""
    ms.set_context(mode=mode)
    if device_target and device_target != "auto":
        try:
            ms.set_device(device_target)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"device_target {device_target!r} is not available with this MindSpore installation "
                             f"({exc}); use --device_target auto or install the {device_target} build") from exc


def setup_distributed(distribute: bool) -> Tuple[Optional[int], int]:
    """Initialise data parallelism (launched by msrun); returns (rank, device_num), (None, 1) when standalone."""
    if not distribute:
        return None, 1
    from mindspore.communication import get_group_size, get_rank, init

    try:
        init()
    except RuntimeError as exc:
        raise ValueError(f"--distribute True needs a distributed launcher: run through msrun, e.g. "
                         f"`msrun --worker_num=2 --local_worker_num=2 python train.py ... --distribute True` "
                         f"({exc})") from exc
    rank, device_num = get_rank(), get_group_size()
    ms.set_auto_parallel_context(device_num=device_num, parallel_mode=ms.ParallelMode.DATA_PARALLEL,
                                 gradients_mean=True)
    return rank, device_num


def setup_logger(save_dir: Optional[str], rank: Optional[int], filename: str = "train.log") -> logging.Logger:
    """Console on every rank (msrun keeps one log per worker); a log file from rank 0 only, if ``save_dir``."""
    logger = logging.getLogger("mindcv_ext")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    prefix = "" if rank is None else f"[rank {rank}] "
    formatter = logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(formatter)
    logger.addHandler(console)
    if save_dir:
        attach_log_file(save_dir, rank, filename)
    return logger


def attach_log_file(save_dir: str, rank: Optional[int], filename: str = "train.log") -> None:
    """Also log to ``save_dir/filename`` (rank 0 only), e.g. once a run has passed its checks."""
    logger = logging.getLogger("mindcv_ext")
    if rank not in (None, 0) or not logger.handlers:
        return
    os.makedirs(save_dir, exist_ok=True)
    file_handler = logging.FileHandler(os.path.join(save_dir, filename))
    file_handler.setFormatter(logger.handlers[0].formatter)
    logger.addHandler(file_handler)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    ms.set_seed(seed)


def is_torch_checkpoint(path: str) -> bool:
    """PyTorch files (zip, legacy pickle, safetensors) rather than MindSpore's protobuf .ckpt."""
    if path.endswith((".pth", ".pt", ".bin", ".tar", ".safetensors")):
        return True
    if zipfile.is_zipfile(path):  # e.g. a Lightning .ckpt
        return True
    with open(path, "rb") as stream:
        return stream.read(2) == b"\x80\x02"  # legacy torch.save: a protocol-2 pickle


def _projection_note(errors) -> str:
    """One line on ``(layer, relative error)`` pairs of dense weights projected onto Monarch layers."""
    values = [error for _, error in errors]
    return (f"{len(values)} dense layer(s) projected onto Monarch, relative error ||W - M||/||W|| mean "
            f"{np.mean(values):.4f}, max {np.max(values):.4f}")


def load_weights(net: nn.Cell, path: str, ema: bool = False, to_monarch: bool = False) -> str:
    """Load a MindSpore checkpoint (``ema``: its ``ema.*`` weights) or a PyTorch one through the importer.

    ``to_monarch``: the checkpoint is the dense twin's; its dense layers are projected onto the model's Monarch
    layers (``load_dense_into_monarch``), to fine-tune from. Returns a one-line description of what was loaded.
    """
    from ..convert import ConversionReport, convert_state_dict, extract_state_dict, read_checkpoint
    from ..models import load_checkpoint, load_dense_into_monarch, read_mindspore_checkpoint

    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if to_monarch and ema:
        raise ValueError("to_monarch projects a dense checkpoint's weights; it cannot be combined with ema")
    if is_torch_checkpoint(path):
        state, notes = extract_state_dict(read_checkpoint(path))
        report = ConversionReport()
        arrays = convert_state_dict(net, state, report=report, to_monarch=to_monarch)
        for param in net.get_parameters():
            if param.name in arrays:  # the rest are optional fixed parameters the checkpoint lacks
                param.set_data(ms.Tensor(arrays[param.name]))
        if report.kept:
            notes.append(f"kept the model's own seeded {', '.join(report.kept)} (not in the checkpoint)")
        if report.projected:
            notes.append(_projection_note(report.projected))
        return f"PyTorch checkpoint {path} ({'; '.join(notes) or 'plain state_dict'})"
    if to_monarch:
        return f"MindSpore checkpoint {path}: {_projection_note(load_dense_into_monarch(net, path))}"
    load_checkpoint(net, path)
    if not ema:
        return f"MindSpore checkpoint {path}"
    ema_weights = {k[len("ema."):]: v for k, v in read_mindspore_checkpoint(path).items() if k.startswith("ema.")}
    if not ema_weights:
        raise ValueError(f"{path!r} holds no EMA weights ('ema.*'); evaluate it without --ema")
    missing = [p.name for p in net.trainable_params() if p.name not in ema_weights]
    if missing:
        raise ValueError(f"{path!r} lacks EMA weights for {', '.join(missing[:5])}")
    # Only trainable weights are averaged; BatchNorm statistics and fixed features come from the network.
    for param in net.trainable_params():
        param.set_data(ema_weights[param.name])
    return f"EMA weights of {path}"
