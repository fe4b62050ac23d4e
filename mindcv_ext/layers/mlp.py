"""The MLP blocks every model uses, with the linear layers chosen by name: dense, Monarch or Pixelfly."""
from typing import Any, Callable, Dict, Optional

import mindspore as ms
from mindspore import nn

from .helpers import gelu
from .monarch import MonarchLinear, _check_positive_int
from .pixelfly import SparseLRLinear, butterfly_base_mask

__all__ = ["MLP_LAYERS", "PIXELFLY_DEFAULTS", "create_linear", "Mlp", "GatedMlp"]

MLP_LAYERS = ("dense", "monarch", "pixelfly")
# fly's Pixelfly Mixer-B experiment (mixerb-cutmix-fbbflylr with the README's butterfly_size 8).
PIXELFLY_DEFAULTS = dict(butterfly_size=8, n_factors=2, block=32, rank=32, gating=True, global_size=0, shuffle=False)


def check_mlp_layer(mlp_layer: str, pixelfly: Optional[Dict[str, Any]] = None, choices: tuple = MLP_LAYERS) -> None:
    """Validate a model's MLP choice once, before any layer is built; ``choices`` narrows the layers a model family
    supports. ``nblocks`` is ``MonarchLinear``'s to check."""
    if mlp_layer not in choices:
        hint = " (Pixelfly layers are built for the MLP-Mixer family)" if mlp_layer == "pixelfly" else ""
        raise ValueError(f"mlp_layer must be one of {choices}, got {mlp_layer!r}{hint}")
    if mlp_layer == "pixelfly":
        settings = dict(PIXELFLY_DEFAULTS, **(pixelfly or {}))
        unknown = sorted(set(settings) - set(PIXELFLY_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown Pixelfly setting(s) {unknown}; known: {sorted(PIXELFLY_DEFAULTS)}")
        butterfly_base_mask(settings["butterfly_size"], settings["n_factors"])  # validates both
        _check_positive_int("SparseLRLinear", "block", settings["block"])


def create_linear(in_features: int, out_features: int, mlp_layer: str = "dense", nblocks: int = 4,
                  has_bias: bool = True, pixelfly: Optional[Dict[str, Any]] = None) -> nn.Cell:
    """``nn.Dense``, ``MonarchLinear`` or ``SparseLRLinear`` (settings in ``pixelfly``) with the same (in, out)."""
    if mlp_layer not in MLP_LAYERS:
        raise ValueError(f"mlp_layer must be one of {MLP_LAYERS}, got {mlp_layer!r}")
    if mlp_layer == "monarch":
        return MonarchLinear(in_features, out_features, nblocks=nblocks, has_bias=has_bias)
    if mlp_layer == "pixelfly":
        settings = dict(PIXELFLY_DEFAULTS, **(pixelfly or {}))
        return SparseLRLinear(in_features, out_features, has_bias=has_bias, **settings)
    return nn.Dense(in_features, out_features, has_bias=has_bias)


class Mlp(nn.Cell):
    """``fc1 -> GELU -> dropout -> fc2 -> dropout`` (timm's ``Mlp``); fc1/fc2 dense, Monarch or Pixelfly."""

    def __init__(self, in_features: int, hidden_features: Optional[int] = None, out_features: Optional[int] = None,
                 drop: float = 0.0, mlp_layer: str = "dense", nblocks: int = 4,
                 act_layer: Callable[[], nn.Cell] = gelu, pixelfly: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = create_linear(in_features, hidden_features, mlp_layer, nblocks, pixelfly=pixelfly)
        self.act = act_layer()
        self.drop1 = nn.Dropout(p=drop)
        self.fc2 = create_linear(hidden_features, out_features, mlp_layer, nblocks, pixelfly=pixelfly)
        self.drop2 = nn.Dropout(p=drop)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        x = self.drop1(self.act(self.fc1(x)))
        return self.drop2(self.fc2(x))


class GatedMlp(nn.Cell):
    """``fc1 -> GELU -> dropout -> gate -> fc2 -> dropout`` (timm's ``GatedMlp``, used by gMLP).

    ``gate_layer(hidden)`` builds the gating unit; it halves the width, so fc2 reads ``hidden // 2``.
    """

    def __init__(self, in_features: int, hidden_features: int, gate_layer: Callable[[int], nn.Cell],
                 out_features: Optional[int] = None, drop: float = 0.0, mlp_layer: str = "dense",
                 nblocks: int = 4) -> None:
        super().__init__()
        out_features = out_features or in_features
        if hidden_features % 2:
            raise ValueError(f"GatedMlp: hidden_features must be even, got {hidden_features}")
        self.fc1 = create_linear(in_features, hidden_features, mlp_layer, nblocks)
        self.act = gelu()
        self.drop1 = nn.Dropout(p=drop)
        self.gate = gate_layer(hidden_features)
        self.fc2 = create_linear(hidden_features // 2, out_features, mlp_layer, nblocks)
        self.drop2 = nn.Dropout(p=drop)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        x = self.drop1(self.act(self.fc1(x)))
        x = self.gate(x)
        return self.drop2(self.fc2(x))
