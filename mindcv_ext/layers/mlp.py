"""The MLP blocks every model uses, with the linear layers chosen by name.

``mlp_layer`` names the layer of fc1 and fc2: ``dense``, ``monarch`` (``nblocks``), ``pixelfly``, ``ssl`` (Sketch
Structured Linear), ``lowrank``, ``bdiagbfly`` (block-diagonal butterfly) or ``fbbfly`` (flat block butterfly,
block-sparse). A layer's settings are named as its
constructor names them; ``LINEAR_SETTINGS`` lists them with their defaults.
"""
from typing import Any, Callable, Dict, Optional

import mindspore as ms
from mindspore import nn

from .bdiag_butterfly import BlockdiagButterflyLinear
from .helpers import gelu
from .lowrank import LowRankLinear, lowrank_rank
from .monarch import MonarchLinear, _check_positive_int
from .pixelfly import FlatBlockButterflyLinear, SparseLRLinear, butterfly_base_mask
from .ssl import SketchStructuredLinear

__all__ = ["MLP_LAYERS", "PIXELFLY_DEFAULTS", "LINEAR_SETTINGS", "GENERIC_MLP_LAYERS", "linear_settings",
           "check_mlp_layer", "create_linear", "Mlp", "GatedMlp"]

MLP_LAYERS = ("dense", "monarch", "pixelfly", "ssl", "lowrank", "bdiagbfly", "fbbfly")
# The layers every family with fc1 -> act -> fc2 MLPs takes; the butterfly-sparse ones (Pixelfly, fbbfly) are built
# for the MLP-Mixer family and GPT-2, as fly uses them.
GENERIC_MLP_LAYERS = ("dense", "monarch", "ssl", "lowrank", "bdiagbfly")
# fly's Pixelfly Mixer-B experiment (mixerb-cutmix-fbbflylr with the README's butterfly_size 8).
PIXELFLY_DEFAULTS = dict(butterfly_size=8, n_factors=2, block=32, rank=32, gating=True, global_size=0, shuffle=False)
# Settings of each layer besides (in, out) and the bias, with their defaults (Monarch's nblocks is an argument of
# its own). ssl: the reference's; lowrank: rank None means the baselines' rule for compression 1/redn_factor;
# bdiagbfly: the reference's.
LINEAR_SETTINGS: Dict[str, Dict[str, Any]] = {
    "dense": {},
    "monarch": {},
    "pixelfly": PIXELFLY_DEFAULTS,
    "ssl": dict(redn_factor=2, seed=1024),
    "lowrank": dict(rank=None, redn_factor=2),
    "bdiagbfly": dict(nblocks1=4, nblocks2=4, b1=48, b2=1),
    "fbbfly": dict(butterfly_size=16, n_factors=2, block=32),
}


def linear_settings(mlp_layer: str, settings: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """``mlp_layer``'s settings: ``settings`` over its defaults. A setting it does not have is an error that names
    the layers that have it."""
    if mlp_layer not in MLP_LAYERS:
        raise ValueError(f"mlp_layer must be one of {MLP_LAYERS}, got {mlp_layer!r}")
    settings = {key: value for key, value in (settings or {}).items() if value is not None}
    defaults = LINEAR_SETTINGS[mlp_layer]
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        owners = {key: [name for name, known in LINEAR_SETTINGS.items() if key in known] for key in unknown}
        described = "; ".join(f"{key!r} (a setting of {', '.join(owners[key])})" if owners[key] else repr(key)
                              for key in unknown)
        known = ", ".join(sorted(defaults)) or "none"
        raise ValueError(f"mlp_layer={mlp_layer!r} has no setting {described}. Its settings: {known}. Drop the "
                         f"setting, or choose the mlp_layer it belongs to")
    return dict(defaults, **settings)


def check_mlp_layer(mlp_layer: str, settings: Optional[Dict[str, Any]] = None,
                    choices: tuple = MLP_LAYERS) -> Dict[str, Any]:
    """Validate a model's MLP choice once, before any layer is built, and return the layer's settings;
    ``choices`` narrows the layers a model family supports. ``nblocks`` is ``MonarchLinear``'s to check, and each
    layer checks its shapes when it is built."""
    if mlp_layer not in choices:
        hint = " (butterfly-sparse layers are built for the MLP-Mixer family and GPT-2)" \
            if mlp_layer in ("pixelfly", "fbbfly") else ""
        raise ValueError(f"mlp_layer must be one of {choices}, got {mlp_layer!r}{hint}")
    resolved = linear_settings(mlp_layer, settings)
    if mlp_layer in ("pixelfly", "fbbfly"):
        butterfly_base_mask(resolved["butterfly_size"], resolved["n_factors"])  # validates both
        _check_positive_int("SparseLRLinear", "block", resolved["block"])
    return resolved


def create_linear(in_features: int, out_features: int, mlp_layer: str = "dense", nblocks: int = 4,
                  has_bias: bool = True, settings: Optional[Dict[str, Any]] = None) -> nn.Cell:
    """The ``mlp_layer`` linear with the same (in, out): ``nn.Dense``, ``MonarchLinear``, ``SparseLRLinear``,
    ``SketchStructuredLinear``, ``LowRankLinear``, ``BlockdiagButterflyLinear`` or ``FlatBlockButterflyLinear``, with ``settings`` (see
    ``LINEAR_SETTINGS``). SSL layers are bias-free, as the reference's, whatever ``has_bias``."""
    settings = linear_settings(mlp_layer, settings)
    if mlp_layer == "monarch":
        return MonarchLinear(in_features, out_features, nblocks=nblocks, has_bias=has_bias)
    if mlp_layer == "pixelfly":
        return SparseLRLinear(in_features, out_features, has_bias=has_bias, **settings)
    if mlp_layer == "ssl":
        return SketchStructuredLinear(in_features, out_features, has_bias=False, **settings)
    if mlp_layer == "lowrank":
        rank = settings["rank"] or lowrank_rank(in_features, out_features, settings["redn_factor"])
        return LowRankLinear(in_features, out_features, rank, has_bias=has_bias)
    if mlp_layer == "bdiagbfly":
        return BlockdiagButterflyLinear(in_features, out_features, has_bias=has_bias, **settings)
    if mlp_layer == "fbbfly":
        return FlatBlockButterflyLinear(in_features, out_features, has_bias=has_bias, **settings)
    return nn.Dense(in_features, out_features, has_bias=has_bias)


class Mlp(nn.Cell):
    """``fc1 -> GELU -> dropout -> fc2 -> dropout`` (timm's ``Mlp``); fc1/fc2 any of ``MLP_LAYERS``, with their
    ``settings``."""

    def __init__(self, in_features: int, hidden_features: Optional[int] = None, out_features: Optional[int] = None,
                 drop: float = 0.0, mlp_layer: str = "dense", nblocks: int = 4,
                 act_layer: Callable[[], nn.Cell] = gelu, settings: Optional[Dict[str, Any]] = None,
                 drop_between_fcs: bool = True) -> None:
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = create_linear(in_features, hidden_features, mlp_layer, nblocks, settings=settings)
        self.act = act_layer()
        self.drop1 = nn.Dropout(p=drop if drop_between_fcs else 0.0)  # GPT-2 has no dropout between fc1 and fc2
        self.fc2 = create_linear(hidden_features, out_features, mlp_layer, nblocks, settings=settings)
        self.drop2 = nn.Dropout(p=drop)
        # Pixelfly's fc1 can hand its output to fc2 as the tiles fc2's sparse product reads, so the hidden
        # activation is never transposed, and the backward keeps no copy of it beyond the activation's own.
        self.hidden_as_tiles = isinstance(self.fc1, SparseLRLinear) and isinstance(self.fc2, SparseLRLinear) and \
            self.fc1.tiled and self.fc2.tiled and self.fc1.sparse.groups == self.fc2.sparse.groups and \
            self.fc1.out_features == self.fc1.out_ext == self.fc2.in_ext

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        if self.hidden_as_tiles:
            shape = x.shape
            hidden = self.drop1(self.act(self.fc1.forward_to_tiles(x.reshape(-1, shape[-1]))))
            return self.drop2(self.fc2.forward_from_tiles(hidden).reshape(shape[:-1] + (-1,)))
        x = self.drop1(self.act(self.fc1(x)))
        return self.drop2(self.fc2(x))


class GatedMlp(nn.Cell):
    """``fc1 -> GELU -> dropout -> gate -> fc2 -> dropout`` (timm's ``GatedMlp``, used by gMLP).

    ``gate_layer(hidden)`` builds the gating unit; it halves the width, so fc2 reads ``hidden // 2``.
    """

    def __init__(self, in_features: int, hidden_features: int, gate_layer: Callable[[int], nn.Cell],
                 out_features: Optional[int] = None, drop: float = 0.0, mlp_layer: str = "dense",
                 nblocks: int = 4, settings: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        out_features = out_features or in_features
        if hidden_features % 2:
            raise ValueError(f"GatedMlp: hidden_features must be even, got {hidden_features}")
        self.fc1 = create_linear(in_features, hidden_features, mlp_layer, nblocks, settings=settings)
        self.act = gelu()
        self.drop1 = nn.Dropout(p=drop)
        self.gate = gate_layer(hidden_features)
        self.fc2 = create_linear(hidden_features // 2, out_features, mlp_layer, nblocks, settings=settings)
        self.drop2 = nn.Dropout(p=drop)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        x = self.drop1(self.act(self.fc1(x)))
        x = self.gate(x)
        return self.drop2(self.fc2(x))
