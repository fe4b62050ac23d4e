"""The MLP blocks every model uses, with their linear layers passed in (timm's ``Mlp(..., linear_layer=...)``).

``linear_layer`` builds fc1 and fc2: a registered linear class, a ``functools.partial`` of one with its settings
(what ``structured.linear_layer(name, **settings)`` returns); None is dense. A name is refused: a block is given
a layer, never a name.
``create_mlp`` builds the MLP a layer asks for (``StructuredLinear.mlp_layer``, e.g. Pixelfly's tiled hand-off),
``Mlp`` otherwise.
"""
from typing import Callable, Optional

import mindspore as ms
from mindspore import nn

from .helpers import gelu
from .structured import DenseLinear, LinearFactory, layer_class

__all__ = ["Mlp", "GatedMlp", "create_mlp", "as_linear_factory"]


def as_linear_factory(layer: Optional[LinearFactory]) -> LinearFactory:
    """A linear factory: the layer class or partial given (``linear_layer(name, **settings)`` makes one), or dense
    for None."""
    if layer is None:
        return DenseLinear
    if isinstance(layer, str):
        raise ValueError(f"linear_layer takes a layer class or a partial of one, not a name: pass "
                         f"linear_layer({layer!r}) (mindcv_ext.layers), or mlp_layer={layer!r} to a model entrypoint")
    if not callable(layer):
        raise ValueError(f"linear_layer must be a layer class or a partial of one, got {layer!r}")
    return layer


class Mlp(nn.Cell):
    """``fc1 -> act -> dropout -> fc2 -> dropout`` (timm's ``Mlp``); fc1 and fc2 built by ``linear_layer``."""

    def __init__(self, in_features: int, hidden_features: Optional[int] = None, out_features: Optional[int] = None,
                 act_layer: Callable[[], nn.Cell] = gelu, drop: float = 0.0,
                 linear_layer: Optional[LinearFactory] = None, drop_between_fcs: bool = True) -> None:
        super().__init__()
        linear_layer = as_linear_factory(linear_layer)
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = linear_layer(in_features, hidden_features)
        self.act = act_layer()
        self.drop1 = nn.Dropout(p=drop if drop_between_fcs else 0.0)  # GPT-2 has no dropout between fc1 and fc2
        self.fc2 = linear_layer(hidden_features, out_features)
        self.drop2 = nn.Dropout(p=drop)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        x = self.drop1(self.act(self.fc1(x)))
        return self.drop2(self.fc2(x))


def create_mlp(in_features: int, hidden_features: Optional[int] = None, out_features: Optional[int] = None, *,
               linear_layer: Optional[LinearFactory] = None, **kwargs) -> Mlp:
    """The ``Mlp`` of ``linear_layer``: the MLP class its layer declares (``mlp_layer``), or ``Mlp``."""
    linear_layer = as_linear_factory(linear_layer)
    mlp_class = getattr(layer_class(linear_layer), "mlp_layer", None) or Mlp
    return mlp_class(in_features, hidden_features, out_features, linear_layer=linear_layer, **kwargs)


class GatedMlp(nn.Cell):
    """``fc1 -> GELU -> dropout -> gate -> fc2 -> dropout`` (timm's ``GatedMlp``, used by gMLP).

    ``gate_layer(hidden)`` builds the gating unit; it halves the width, so fc2 reads ``hidden // 2``.
    """

    def __init__(self, in_features: int, hidden_features: int, gate_layer: Callable[[int], nn.Cell],
                 out_features: Optional[int] = None, drop: float = 0.0,
                 linear_layer: Optional[LinearFactory] = None) -> None:
        super().__init__()
        linear_layer = as_linear_factory(linear_layer)
        out_features = out_features or in_features
        if hidden_features % 2:
            raise ValueError(f"GatedMlp: hidden_features must be even, got {hidden_features}")
        self.fc1 = linear_layer(in_features, hidden_features)
        self.act = gelu()
        self.drop1 = nn.Dropout(p=drop)
        self.gate = gate_layer(hidden_features)
        self.fc2 = linear_layer(hidden_features // 2, out_features)
        self.drop2 = nn.Dropout(p=drop)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        x = self.drop1(self.act(self.fc1(x)))
        x = self.gate(x)
        return self.drop2(self.fc2(x))
