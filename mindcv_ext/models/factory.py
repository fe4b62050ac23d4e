"""Model lookup and creation on top of mindcv's registry: aliases, clear errors, strict loading, and the one
builder every entry point calls (``create_model``)."""
import difflib
import logging
import os
import re
from typing import Any, Dict, List, Optional, Tuple

import mindspore as ms
from mindspore import nn

from mindcv.models import create_model as mindcv_create_model
from mindcv.models.registry import is_model, list_models

from .dvt import ALIASES as DVT_ALIASES
from .gmlp import ALIASES as GMLP_ALIASES
from .helpers import TEXT_MODELS
from .vitae import ALIASES as VITAE_ALIASES

__all__ = ["MODEL_ALIASES", "resolve_model_name", "create_model", "count_params", "load_checkpoint",
           "load_dense_into_monarch", "read_mindspore_checkpoint", "list_ext_models"]

_logger = logging.getLogger("mindcv_ext")

MODEL_ALIASES: Dict[str, str] = {**VITAE_ALIASES, **DVT_ALIASES, **GMLP_ALIASES}
_EXT_MODULES = ("dvt", "gmlp", "mlp_mixer", "t2t_vit", "vitae")


def list_ext_models() -> List[str]:
    """The models mindcv_ext provides: its vision models (in mindcv's ``list_models()`` after import) and its
    language models (``TEXT_MODELS``, built by ``create_model`` here only)."""
    return sorted([name for module in _EXT_MODULES for name in list_models(module=module)] + list(TEXT_MODELS))


def resolve_model_name(name: str) -> str:
    """The registered name for ``name`` (reference aliases accepted), or a ValueError with suggestions."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    if name in MODEL_ALIASES:
        return MODEL_ALIASES[name]
    if is_model(name) or name in TEXT_MODELS:
        return name
    candidates = list_models() + list(TEXT_MODELS) + list(MODEL_ALIASES)
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"unknown model {name!r}.{hint} mindcv_ext models: {', '.join(list_ext_models())} "
                     f"(all names: mindcv.list_models()).")


def _buffer_names(net: nn.Cell) -> set:
    """Names of parameters that PyTorch keeps as buffers.

    BatchNorm running statistics, and whatever a cell lists in ``torch_buffers`` (e.g. fly's attention
    random features, which are buffers in PyTorch and fixed parameters here so that checkpoints carry them).
    """
    names = set()
    for _, cell in net.cells_and_names():
        if isinstance(cell, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            names.add(cell.moving_mean.name)
            names.add(cell.moving_variance.name)
        for attribute in getattr(cell, "torch_buffers", ()):
            names.add(getattr(cell, attribute).name)
    return names


def count_params(net: nn.Cell, trainable_only: bool = False) -> int:
    """Parameters as PyTorch counts them: fixed ones (e.g. random features) included, BN statistics not."""
    if trainable_only:
        return sum(p.size for p in net.trainable_params())
    buffers = _buffer_names(net)
    return sum(p.size for p in net.get_parameters() if p.name not in buffers)


def read_mindspore_checkpoint(path: str) -> Dict[str, ms.Parameter]:
    """Every entry of a MindSpore checkpoint; a missing, empty, corrupt or unreadable file is an error that names it.

    The file is parsed and checked first (``convert.mindspore_checkpoint``): MindSpore trusts a tensor's declared
    dims, and a crafted file would corrupt the heap. The checkpoints this project writes carry MindSpore's CRC32
    (``crc_check=True``), verified here before any weight is used; older files without one still load (MindSpore
    logs that they have none).
    """
    from ..convert.mindspore_checkpoint import check_mindspore_checkpoint

    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if os.path.getsize(path) == 0:
        raise ValueError(f"checkpoint {path!r} is empty (0 bytes): an interrupted copy or save? Use another "
                         f"checkpoint of the run")
    check_mindspore_checkpoint(path)
    try:
        return ms.load_checkpoint(path, crc_check=True)
    except Exception as exc:
        chain, cause = [], exc
        while cause is not None and len(chain) < 8:  # MindSpore re-raises the CRC failure as a generic read error
            chain.append(str(cause))
            cause = cause.__cause__ or cause.__context__
        if any("crc check is failed" in message for message in chain):
            raise ValueError(f"checkpoint {path!r} is corrupt: checksum mismatch (its bytes changed after it was "
                             f"written). Use another checkpoint of the run") from None
        raise ValueError(f"cannot read checkpoint {path!r} (truncated or not a MindSpore checkpoint): {exc}") from exc


def load_checkpoint(net: nn.Cell, path: str, strict: bool = True) -> List[str]:
    """Load a MindSpore checkpoint into ``net``; unlike mindcv, a missing file or parameter is an error.

    Entries that the network does not have (optimizer state, ``epoch_num``...) are ignored. Returns the
    names of network parameters the checkpoint did not provide (always empty when ``strict``).
    """
    return _load_params(net, read_mindspore_checkpoint(path), path, strict)


def load_dense_into_monarch(net: nn.Cell, path: str) -> List[Tuple[str, float]]:
    """Start a model with Monarch layers from its dense twin's MindSpore checkpoint (Dao et al., 2022, section 3.4:
    dense-to-sparse fine-tuning).

    Each ``MonarchLinear`` takes the Frobenius-optimal Monarch projection of the dense layer of the same name
    (``<layer>.weight``, and its bias); every other parameter loads as it is, strictly. Returns ``(layer, relative
    error ||W - M||_F / ||W||_F)`` per projected layer.
    """
    from ..layers import MonarchLinear

    params = read_mindspore_checkpoint(path)
    monarch = {name: cell for name, cell in net.cells_and_names() if isinstance(cell, MonarchLinear)}
    if not monarch:
        raise ValueError(f"to_monarch: the model has no Monarch layers to project {path!r} onto; build its Monarch "
                         f"twin (mlp_layer: monarch, the same recipe otherwise)")
    already = [name for name in monarch if f"{name}.blkdiag1" in params]
    if already:
        raise ValueError(f"to_monarch: {path!r} already holds Monarch factors ({already[0]}.blkdiag1); load it "
                         f"without to_monarch")
    needed = [f"{name}.{kind}" for name, layer in monarch.items()
              for kind in (("weight", "bias") if layer.has_bias else ("weight",))]
    missing = [key for key in needed if key not in params]
    if missing:
        raise ValueError(f"to_monarch: {path!r} lacks the dense weight(s) {', '.join(missing[:5])}; is it the "
                         f"dense twin of this model (the same recipe with mlp_layer: dense)?")
    errors = []
    for name, layer in monarch.items():
        bias = params[f"{name}.bias"].asnumpy() if layer.has_bias else None
        errors.append((name, layer.load_dense(params[f"{name}.weight"].asnumpy(), bias)))
    # The projected factors and biases go in as they now are, so that the rest loads strictly around them.
    projected = {param.name: ms.Parameter(param.value().copy(), name=param.name)
                 for cell in monarch.values() for param in cell.get_parameters()}
    _load_params(net, {**{k: v for k, v in params.items() if k not in projected}, **projected}, path, strict=True)
    return errors


def _load_params(net: nn.Cell, params: Dict[str, ms.Parameter], path: str, strict: bool) -> List[str]:
    """Load ``params`` into ``net``: shapes checked, entries the network does not have ignored."""
    mismatched = [f"{p.name}: model {tuple(p.shape)} vs checkpoint {tuple(params[p.name].shape)}"
                  for p in net.get_parameters() if p.name in params and tuple(params[p.name].shape) != tuple(p.shape)]
    if mismatched:
        raise ValueError(f"checkpoint {path!r} does not fit the model; shape mismatches: " + "; ".join(mismatched))
    not_loaded, _ = ms.load_param_into_net(net, params, strict_load=False)
    # Fixed, seeded parameters a checkpoint may lack (random features of an attention swapped in after
    # training) keep the model's own values.
    optional = [re.compile(pattern) for pattern in getattr(net, "checkpoint_optional", ())]
    not_loaded = [name for name in not_loaded if not any(pattern.search(name) for pattern in optional)]
    if not_loaded and strict:
        raise ValueError(f"checkpoint {path!r} is missing {len(not_loaded)} parameter(s) of the model, e.g. "
                         f"{', '.join(not_loaded[:5])}. Is it for another model or configuration?")
    return list(not_loaded)


def _merge_model_kwargs(model_kwargs: Dict[str, Any], arguments: Dict[str, Any]) -> Dict[str, Any]:
    """``model_kwargs`` and the top-level ``arguments`` as one set of keywords; a key set in both with different
    values is an error, not a silent override."""
    merged = dict(model_kwargs)
    for key, value in arguments.items():
        if key in merged and merged[key] != value:
            raise ValueError(f"{key} is set twice with different values: {value!r} as a model argument and "
                             f"{merged[key]!r} in model_kwargs. Keep one of them")
        merged[key] = value
    return merged


def create_model(model_name: str, *, num_classes: Optional[int] = None, pretrained: bool = False,
                 in_channels: Optional[int] = None, checkpoint_path: Optional[str] = None, strict: bool = True,
                 mlp_layer: Optional[str] = None, model_kwargs: Optional[Dict[str, Any]] = None,
                 **kwargs: Any) -> nn.Cell:
    """The one model builder: mindcv's ``create_model`` with aliases, clear errors, the linear layer chosen by
    name, and strict loading.

    Args:
        model_name: a registered name or a reference alias (``gmlp_S``, ``ViTAE_basic_Tiny``...).
        num_classes, in_channels, pretrained: as mindcv's (unset: 1000 classes, 3 channels). They may come in
            ``model_kwargs`` instead; given in both with different values, they are an error.
        checkpoint_path, strict: a MindSpore checkpoint to load, every parameter required when ``strict``.
        mlp_layer: the registered linear layer of the models' MLPs (``layers.registered_linears()``); its
            settings (``nblocks``, ``redn_factor``...) come from ``kwargs`` or ``model_kwargs``. A model name with a
            layer suffix (``_monarch``) sets it.
        model_kwargs: further entrypoint keywords, as a configuration file gives them. A key also in ``kwargs``
            with another value is an error.
        **kwargs: entrypoint keywords (``img_size``, ``drop_rate``...); ``None`` values are dropped, as mindcv
            does, so configuration files can leave arguments unset.
    """
    name = resolve_model_name(model_name)
    if checkpoint_path and not os.path.isfile(checkpoint_path):
        raise FileNotFoundError(f"checkpoint {checkpoint_path!r} does not exist")
    model_kwargs = dict(model_kwargs or {})
    if "mlp_layer" in model_kwargs:  # the older spelling (and the converter's only one: --model_kwargs)
        _logger.info("model_kwargs.mlp_layer is read as mlp_layer")
        older = model_kwargs.pop("mlp_layer")
        if mlp_layer is not None and older is not None and older != mlp_layer:
            raise ValueError(f"mlp_layer is set twice with different values: {mlp_layer!r} and {older!r} in "
                             f"model_kwargs. Keep one of them")
        mlp_layer = mlp_layer if older is None else older
    # mindcv's own arguments may come in model_kwargs too (the converter's --model_kwargs, say), but a value there
    # never silently replaces the caller's (train.py's num_classes from the data, say).
    arguments = dict(kwargs, num_classes=num_classes, in_channels=in_channels, pretrained=pretrained or None)
    kwargs = _merge_model_kwargs({k: v for k, v in model_kwargs.items() if v is not None},
                                 {k: v for k, v in arguments.items() if v is not None})
    if mlp_layer is not None:
        kwargs["mlp_layer"] = mlp_layer  # resolved, with its settings, by the entrypoint (helpers.instantiate)
    num_classes = kwargs.pop("num_classes", 1000)
    in_channels = kwargs.pop("in_channels", 3)
    pretrained = bool(kwargs.pop("pretrained", False))
    try:
        if name in TEXT_MODELS:
            net = TEXT_MODELS[name](pretrained=pretrained, num_classes=num_classes, in_channels=in_channels, **kwargs)
        else:
            net = mindcv_create_model(name, num_classes=num_classes, pretrained=pretrained, in_channels=in_channels,
                                      **kwargs)
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc) and "multiple values" not in str(exc):
            raise  # not the arguments: a bug, reported as what it is
        raise ValueError(f"model {name!r} does not accept these arguments ({exc}); check img_size, mlp_layer, "
                         f"its settings and model_kwargs") from exc
    if checkpoint_path:
        load_checkpoint(net, checkpoint_path, strict=strict)
    return net
