"""Convert a PyTorch state_dict (timm, ViTAE, fly, Lightning, DDP layouts) into a MindSpore checkpoint."""
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

import mindspore as ms
from mindspore import nn

from ..layers.monarch import MonarchLinear, monarch_to_dense, project_to_monarch
from .reader import CheckpointError, read_checkpoint

__all__ = ["ConversionError", "ConversionReport", "extract_state_dict", "torch_names", "convert_state_dict",
           "convert_checkpoint"]

# Containers that training scripts wrap the weights in, in order of preference (EMA weights first:
# timm, ViTAE and DVT evaluate the EMA model).
_CONTAINER_KEYS = ("state_dict_ema", "model_ema", "model_state_dict", "state_dict", "model", "module")
# Prefixes of wrapped models: DistributedDataParallel ("module.") and Lightning's LightningModule ("model.").
_WRAPPER_PREFIXES = ("module.", "model.")
_NUMPY_DTYPES = {ms.float32: np.float32, ms.float16: np.float16, ms.float64: np.float64, ms.int32: np.int32,
                 ms.int64: np.int64, ms.bool_: np.bool_}
_NORM_RENAMES = {"gamma": "weight", "beta": "bias"}
_BN_RENAMES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


class ConversionError(ValueError):
    """The checkpoint does not fit the model; the message lists every problem by name."""


@dataclass
class ConversionReport:
    source: str = ""
    tensors_read: int = 0
    mapped: int = 0
    projected: List[Tuple[str, float]] = field(default_factory=list)  # (layer, relative Frobenius error)
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (torch key, reason)
    reinitialised: List[str] = field(default_factory=list)
    kept: List[str] = field(default_factory=list)  # optional parameters the checkpoint lacks
    renamed: int = 0
    written: int = 0
    notes: List[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"source: {self.source}"] + [f"note: {n}" for n in self.notes]
        for layer, err in self.projected:
            lines.append(f"projected {layer} onto Monarch: relative error {err:.4g}")
        if self.renamed:
            lines.append(f"renamed {self.renamed} key(s) from the model's alternative layout")
        for name in self.reinitialised:
            lines.append(f"kept the model's initialisation for {name} (--drop_head)")
        for name in self.kept:
            lines.append(f"kept the model's own {name} (the checkpoint has none; it is fixed and seeded)")
        skipped_reasons: Dict[str, int] = {}
        for _, reason in self.skipped:
            skipped_reasons[reason] = skipped_reasons.get(reason, 0) + 1
        skipped = ", ".join(f"{n} {r}" for r, n in skipped_reasons.items()) or "none"
        lines.append(f"tensors read: {self.tensors_read}, mapped: {self.mapped}, projected: {len(self.projected)}, "
                     f"skipped: {len(self.skipped)} ({skipped}), parameters written: {self.written}")
        return "\n".join(lines)


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, np.ndarray) for v in obj.values())


def extract_state_dict(obj: Any, prefer_ema: bool = True) -> Tuple[Dict[str, np.ndarray], List[str]]:
    """The weights inside a loaded checkpoint, unwrapped, and notes on the choices made."""
    notes = []
    if not isinstance(obj, dict):
        raise CheckpointError(f"the checkpoint holds a {type(obj).__name__}, not a state_dict or a dict of them")
    state = obj
    present = [k for k in _CONTAINER_KEYS if k in obj and isinstance(obj[k], dict)]
    # A container key wins over loose tensors beside it (DVT's release stores a 'dynamic_threshold' tensor there).
    if present or not any(isinstance(v, np.ndarray) for v in obj.values()):
        if not present:
            raise CheckpointError(f"no weights found: top-level keys are {sorted(map(str, obj))[:12]}; expected a "
                                  f"state_dict or one of {list(_CONTAINER_KEYS)}")
        order = present if prefer_ema else [k for k in present if "ema" not in k] + [k for k in present if "ema" in k]
        chosen = order[0]
        state = obj[chosen]
        others = [k for k in present if k != chosen]
        notes.append(f"using '{chosen}'" + (f" (also present, not used: {', '.join(others)})" if others else ""))
        extra = sorted(str(k) for k in obj if k not in _CONTAINER_KEYS)
        if extra:
            notes.append(f"not weights, left aside: {', '.join(extra[:8])}")
    tensors = {str(k): v for k, v in state.items() if isinstance(v, np.ndarray)}
    if not tensors:
        raise CheckpointError("the checkpoint's state_dict holds no tensors")
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in tensors):
                tensors = {k[len(prefix):]: v for k, v in tensors.items()}
                notes.append(f"stripped the '{prefix}' prefix")
                changed = True
    return tensors, notes


def torch_names(net: nn.Cell) -> Dict[str, str]:
    """For every MindSpore parameter, the name PyTorch gives the same tensor."""
    mapping = {}
    for _, cell in net.cells_and_names():
        if isinstance(cell, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            renames = _BN_RENAMES
        elif isinstance(cell, (nn.LayerNorm, nn.GroupNorm)):
            renames = _NORM_RENAMES
        else:
            renames = {}
        for param in cell.get_parameters(expand=False):
            prefix, _, leaf = param.name.rpartition(".")
            leaf = renames.get(leaf, leaf)
            mapping[param.name] = f"{prefix}.{leaf}" if prefix else leaf
    return mapping


def _apply_renames(net: nn.Cell, state_dict: Dict[str, np.ndarray],
                   report: ConversionReport) -> Dict[str, np.ndarray]:
    """Map a model's alternative key layout (``net.checkpoint_renames``: regex, replacement) onto its own."""
    renames = [(re.compile(pattern), replacement) for pattern, replacement in getattr(net, "checkpoint_renames", ())]
    if not renames:
        return state_dict
    renamed = {}
    for key, array in state_dict.items():
        new_key = key
        for pattern, replacement in renames:
            new_key = pattern.sub(replacement, new_key)
        if new_key != key:
            report.renamed += 1
        if new_key in renamed:
            raise ConversionError(f"the checkpoint holds '{new_key}' twice (once as '{key}')")
        renamed[new_key] = array
    return renamed


def _classifier_prefix(net: nn.Cell) -> str:
    cfg = getattr(net, "default_cfg", None) or {}
    return cfg.get("classifier", "head")


def convert_state_dict(net: nn.Cell, state_dict: Dict[str, np.ndarray], drop_head: bool = False,
                       to_monarch: bool = False, report: Optional[ConversionReport] = None,
                       progress: bool = False) -> Dict[str, np.ndarray]:
    """MindSpore parameter name -> array for ``net``, from a PyTorch ``state_dict``.

    Strict: every parameter of ``net`` must be found with its exact shape and every tensor of the
    state_dict must be used (``num_batches_tracked`` aside); otherwise ``ConversionError`` lists all
    problems. ``drop_head`` leaves the classifier to the model's initialisation when its shape differs
    (fine-tuning to other classes). ``to_monarch`` projects dense ``weight``s onto a model's Monarch
    layers with the Frobenius-optimal projection.
    """
    from tqdm import tqdm

    report = report if report is not None else ConversionReport()
    report.tensors_read = len(state_dict)
    state_dict = _apply_renames(net, state_dict, report)
    # Fixed, seeded parameters a checkpoint may lack (e.g. the random features of an attention swapped in
    # after training); present, they must fit, and tensors for ones the model does not have are skipped.
    optional = [re.compile(pattern) for pattern in getattr(net, "checkpoint_optional", ())]

    def is_optional(name: str) -> bool:
        return any(pattern.search(name) for pattern in optional)
    # Buffers the model recomputes (regex, reason): read, not loaded. Tied tensors: the copy must equal its target.
    ignored = [(re.compile(pattern), reason) for pattern, reason in getattr(net, "checkpoint_ignored", ())]
    tied = dict(getattr(net, "checkpoint_tied", {}))
    names = torch_names(net)
    monarch_layers = {name: cell for name, cell in net.cells_and_names() if isinstance(cell, MonarchLinear)}
    head = _classifier_prefix(net) + "."
    used, converted = set(), {}
    missing, mismatched = [], []

    params = list(net.get_parameters())
    for param in tqdm(params, desc="mapping", unit="param", disable=not progress, leave=False):
        ms_name, torch_name = param.name, names[param.name]
        shape = tuple(param.shape)
        layer, _, leaf = ms_name.rpartition(".")
        if torch_name in state_dict:
            array = state_dict[torch_name]
            used.add(torch_name)
            if tuple(array.shape) != shape:
                if drop_head and ms_name.startswith(head):
                    report.reinitialised.append(ms_name)
                    report.skipped.append((torch_name, "classifier dropped"))
                    continue
                mismatched.append(f"{ms_name} (checkpoint '{torch_name}'): model {shape} vs checkpoint "
                                  f"{tuple(array.shape)}")
                continue
            converted[ms_name] = array
            report.mapped += 1
        elif to_monarch and layer in monarch_layers and leaf in ("blkdiag1", "blkdiag2") \
                and f"{layer}.weight" in state_dict:
            if leaf == "blkdiag2":
                continue  # both factors come from one projection, done for blkdiag1
            monarch = monarch_layers[layer]
            dense = state_dict[f"{layer}.weight"]
            used.add(f"{layer}.weight")
            expected = (monarch.out_features, monarch.in_features)
            if tuple(dense.shape) != expected:
                mismatched.append(f"{layer}.weight: model Monarch layer {expected} vs checkpoint {tuple(dense.shape)}")
                continue
            w1, w2 = project_to_monarch(dense, monarch.nblocks)
            converted[f"{layer}.blkdiag1"], converted[f"{layer}.blkdiag2"] = w1, w2
            approx = monarch_to_dense(w1, w2, monarch.in_features, monarch.out_features)
            norm = np.linalg.norm(dense)
            report.projected.append((layer, float(np.linalg.norm(dense - approx) / norm) if norm else 0.0))
        elif drop_head and ms_name.startswith(head):
            report.reinitialised.append(ms_name)
        elif is_optional(torch_name):
            report.kept.append(ms_name)
        else:
            missing.append(f"{ms_name} (expected checkpoint key '{torch_name}', shape {shape})")

    unexpected = []
    for key, array in state_dict.items():
        if key in used:
            continue
        reason = next((reason for pattern, reason in ignored if pattern.search(key)), None)
        if reason:
            report.skipped.append((key, reason))
        elif key in tied:
            target = state_dict.get(tied[key])
            if target is None or tuple(target.shape) != tuple(array.shape) or not np.array_equal(target, array):
                mismatched.append(f"{key}: this model ties it to '{tied[key]}', but the checkpoint's values differ "
                                  f"(an untied model, or another model's checkpoint)")
            else:
                report.skipped.append((key, f"tied to {tied[key]}"))
        elif key.endswith("num_batches_tracked"):
            report.skipped.append((key, "num_batches_tracked"))
        elif drop_head and key.startswith(head):
            report.skipped.append((key, "classifier dropped"))
        elif is_optional(key):
            report.skipped.append((key, "random features of an attention the model does not use"))
        else:
            unexpected.append(f"{key} {tuple(array.shape)}")

    # Fixed structure a model derives from its settings (e.g. Pixelfly's block layout) must equal the checkpoint's.
    for prefix, cell in net.cells_and_names():
        for attribute in getattr(cell, "checkpoint_must_match", ()):
            param = getattr(cell, attribute)
            if param.name in converted and not np.array_equal(converted[param.name], param.asnumpy()):
                mismatched.append(f"{param.name}: the checkpoint's values differ from the ones this model computes "
                                  f"from its settings (e.g. Pixelfly's butterfly_size, n_factors, block)")

    problems = []
    if missing:
        problems.append(f"{len(missing)} parameter(s) of the model not in the checkpoint: " + "; ".join(missing))
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): " + "; ".join(mismatched))
        if any(m.startswith(head) for m in mismatched) and not drop_head:
            problems.append("the classifier differs: pass --drop_head to fine-tune with a new head")
    if unexpected:
        hint = " (dense weights for Monarch layers: pass --to_monarch)" if any(
            k.rsplit(".", 1)[0] in monarch_layers for k in state_dict if k not in used) else ""
        problems.append(f"{len(unexpected)} checkpoint tensor(s) the model has no place for{hint}: "
                        + "; ".join(unexpected))
    if problems:
        raise ConversionError("the checkpoint does not fit the model. " + " | ".join(problems))

    for param in params:
        if param.name in converted:
            dtype = _NUMPY_DTYPES.get(param.dtype, np.float32)
            converted[param.name] = np.ascontiguousarray(converted[param.name], dtype=dtype)
    return converted


def convert_checkpoint(model: str, src: str, dst: str, model_kwargs: Optional[Dict[str, Any]] = None,
                       drop_head: bool = False, to_monarch: bool = False, prefer_ema: bool = True,
                       overwrite: bool = False, progress: bool = True) -> ConversionReport:
    """Read ``src``, build ``model(**model_kwargs)``, map the weights strictly and write ``dst`` atomically.

    Nothing is written unless every check passes; an existing ``dst`` is kept unless ``overwrite``.
    """
    if os.path.exists(dst) and not overwrite:
        raise FileExistsError(f"{dst!r} already exists; choose another --dst or pass --overwrite")
    if not dst.endswith(".ckpt"):
        raise ValueError(f"--dst must end with .ckpt (MindSpore checkpoint), got {dst!r}")
    from ..models import create_model

    net = create_model(model, model_kwargs=model_kwargs)
    report = ConversionReport(source=src)
    state_dict, report.notes = extract_state_dict(read_checkpoint(src), prefer_ema=prefer_ema)
    arrays = convert_state_dict(net, state_dict, drop_head=drop_head, to_monarch=to_monarch, report=report,
                                progress=progress)
    for param in net.get_parameters():
        if param.name in arrays:
            param.set_data(ms.Tensor(arrays[param.name]))
    report.written = len(list(net.get_parameters()))
    # As every checkpoint: written beside dst and renamed (a crash or a full disk leaves no truncated dst and no
    # temporary file, and an existing dst its old content), with the CRC that every load verifies.
    from ..engine.checkpoint import save_atomic

    save_atomic(net, dst)
    return report
