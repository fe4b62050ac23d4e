"""The interface every structured linear layer shares, and the registry that names them.

A structured linear is ``y = x W^T + b`` for ``x`` of shape ``(*, in_features)``, with ``W`` held in a structured
form. ``StructuredLinear`` does the shared work once: the sizes and their checks, the bias, flattening the leading
dimensions and restoring them, the repr and the parameter saving. A layer declares

- its settings, as its constructor's keyword arguments with defaults (``layer_settings`` reads them from there);
- ``forward_2d(x)``: the product for ``x`` of shape ``(M, in_features)``, without the bias;
- ``to_dense()``: the equivalent ``(out_features, in_features)`` weight;
- ``macs_per_token()``: multiply-accumulates per input row (the bias aside);
- ``from_dense(weight, bias, **settings)`` where a projection onto the structure exists.

``@register_linear("name")`` names a layer, in its own file. ``linear_layer(name, **settings)`` resolves a name and
its settings, once, to a callable ``(in_features, out_features) -> layer``: what models receive, as timm's blocks
receive ``mlp_layer``.
"""
import functools
import inspect
import numbers
from typing import Any, Callable, ClassVar, Dict, Optional, Tuple, Type, Union

import numpy as np

import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import Uniform, initializer

__all__ = ["StructuredLinear", "DenseLinear", "register_linear", "linear_layer", "linear_class", "layer_class",
           "layer_settings", "registered_linears", "check_positive_int", "LinearFactory", "ArrayLike", "to_numpy",
           "dense_operands"]

# A callable (in_features, out_features) -> linear layer: a registered class or a partial of one.
LinearFactory = Callable[..., nn.Cell]
# A dense operand (a weight, a bias, a factor): a NumPy array (or numbers) or a MindSpore Tensor.
ArrayLike = Union[np.ndarray, ms.Tensor]

# The constructor arguments every linear has; the rest are the layer's settings.
_SHAPE_ARGUMENTS = ("self", "in_features", "out_features", "has_bias")


def check_positive_int(owner: str, name: str, value: Any) -> int:
    """``value`` as an int, or a ValueError naming ``owner`` and ``name``. bool is refused: nblocks=True is a bug."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")
    return int(value)


def to_numpy(array: ArrayLike, owner: str, name: str) -> np.ndarray:
    """``array`` as a NumPy array, or a ValueError naming ``owner`` and ``name``."""
    if isinstance(array, ms.Tensor):
        return array.asnumpy()
    if isinstance(array, (np.ndarray, numbers.Number, list, tuple)):
        return np.asarray(array)
    raise ValueError(f"{owner}: {name} must be an array or a MindSpore Tensor, got {type(array).__name__}")


def dense_operands(owner: str, weight: ArrayLike,
                   bias: Optional[ArrayLike] = None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """``(weight, bias)`` of a dense layer for ``from_dense``: a 2-D ``(out_features, in_features)`` weight and
    None or an ``(out_features,)`` bias, as arrays; a ValueError naming ``owner`` otherwise."""
    w = to_numpy(weight, owner, "weight")
    if w.ndim != 2:
        raise ValueError(f"{owner}: weight must be a 2-D (out_features, in_features) matrix, got shape "
                         f"{tuple(w.shape)}")
    b = None if bias is None else to_numpy(bias, owner, "bias")
    if b is not None and b.shape != (w.shape[0],):
        raise ValueError(f"{owner}: bias must have shape ({w.shape[0]},), got {tuple(b.shape)}")
    return w, b


class StructuredLinear(nn.Cell):
    """Base of the structured linear layers: ``(*, in_features) -> (*, out_features)``.

    Subclasses call ``super().__init__(in_features, out_features, has_bias)`` first, build their parameters, and
    make the bias with ``init_bias(bound)`` at the point where their reference draws it (the order of random draws
    is part of matching a reference's initialisation).

    ``mlp_layer``: the MLP class to build around a pair of these layers, when the generic ``Mlp`` is not the best
    (Pixelfly hands fc1's output to fc2 as tiles); None for ``Mlp``.
    """

    layer_name: ClassVar[str] = ""
    mlp_layer: ClassVar[Optional[type]] = None

    def __init__(self, in_features: int, out_features: int, has_bias: bool = True) -> None:
        super().__init__()
        owner = type(self).__name__
        self.in_features = check_positive_int(owner, "in_features", in_features)
        self.out_features = check_positive_int(owner, "out_features", out_features)
        self.has_bias = bool(has_bias)
        self.bias: Optional[ms.Parameter] = None

    def init_bias(self, bound: Optional[float], name: str = "bias") -> None:
        """The bias, U(-bound, bound), or zeros when ``bound`` is None; nothing without ``has_bias``.

        ``name`` is the reference's parameter name, so its checkpoints map one to one. A Cell keys a parameter by
        the attribute it is assigned to, and names it after that key once the cell is nested (``fc1.bias``); so
        the bias is registered under ``name``, and ``self.bias`` is the same Parameter as a plain attribute."""
        if not self.has_bias:
            return
        law = "zeros" if bound is None else Uniform(bound)
        bias = ms.Parameter(initializer(law, (self.out_features,), ms.float32), name=name)
        if name == "bias":
            self.bias = bias
            return
        del self.bias  # the None placeholder
        setattr(self, name, bias)
        object.__setattr__(self, "bias", bias)

    @classmethod
    def check_settings(cls, **settings: Any) -> None:
        """Validate settings before any layer is built (each layer checks its shapes when built). Override to add
        checks that do not need (in, out)."""

    def setting_values(self) -> Dict[str, Any]:
        """This layer's settings, as built."""
        return {name: getattr(self, name) for name in layer_settings(type(self)) if hasattr(self, name)}

    def extend_repr(self) -> str:
        settings = "".join(f", {name}={value}" for name, value in self.setting_values().items())
        return f"in_features={self.in_features}, out_features={self.out_features}{settings}, has_bias={self.has_bias}"

    @property
    def saving(self) -> float:
        """The weight's trainable parameters (the bias aside) as a fraction of a dense weight's."""
        size = sum(p.size for p in self.trainable_params() if p is not self.bias)
        return size / (self.in_features * self.out_features)

    def forward_2d(self, x: ms.Tensor) -> ms.Tensor:
        """``(M, in_features) -> (M, out_features)``, without the bias."""
        raise NotImplementedError

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        lead_shape = x.shape[:-1]
        out = self.forward_2d(x.reshape(-1, self.in_features))
        if self.has_bias:
            out = out + ops.cast(self.bias, out.dtype)
        return out.reshape(lead_shape + (self.out_features,))

    def to_dense(self) -> ms.Tensor:
        """The equivalent dense ``(out_features, in_features)`` weight (float32 Tensor)."""
        raise NotImplementedError

    def macs_per_token(self) -> int:
        """Multiply-accumulates of one input row's product (the bias aside)."""
        raise NotImplementedError


_LINEARS: Dict[str, Type[nn.Cell]] = {}


def register_linear(name: str) -> Callable[[Type[nn.Cell]], Type[nn.Cell]]:
    """Class decorator: make the layer buildable as ``mlp_layer: <name>``."""

    def register(cls: Type[nn.Cell]) -> Type[nn.Cell]:
        if name in _LINEARS and _LINEARS[name] is not cls:
            raise ValueError(f"linear layer {name!r} is registered twice: {_LINEARS[name].__name__} and "
                             f"{cls.__name__}")
        cls.layer_name = name
        _LINEARS[name] = cls
        return cls

    return register


def registered_linears() -> Tuple[str, ...]:
    """The names ``mlp_layer`` takes, in registration order."""
    return tuple(_LINEARS)


def linear_class(name: str) -> Type[nn.Cell]:
    """The class registered as ``name``, or a ValueError listing the names."""
    if not isinstance(name, str) or name not in _LINEARS:
        raise ValueError(f"mlp_layer must be one of {', '.join(registered_linears())}, got {name!r}")
    return _LINEARS[name]


def layer_class(factory: LinearFactory) -> type:
    """The class a linear factory builds (a class, or a ``functools.partial`` of one)."""
    while isinstance(factory, functools.partial):
        factory = factory.func
    return factory


def layer_settings(cls: type) -> Dict[str, Any]:
    """A layer class's settings and their defaults: its constructor's keywords besides (in, out) and the bias."""
    parameters = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in parameters
            if p.name not in _SHAPE_ARGUMENTS and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def linear_layer(name: str, **settings: Any) -> LinearFactory:
    """The layer ``name`` with ``settings`` (None values left at their defaults), as a callable
    ``(in_features, out_features) -> layer``. A setting the layer does not have is an error that names the layers
    that have it."""
    cls = linear_class(name)
    settings = {key: value for key, value in settings.items() if value is not None}
    known = layer_settings(cls)
    unknown = sorted(set(settings) - set(known))
    if unknown:
        owners = {key: [other for other, layer in _LINEARS.items() if key in layer_settings(layer)] for key in unknown}
        described = "; ".join(f"{key!r} (a setting of {', '.join(owners[key])})" if owners[key] else repr(key)
                              for key in unknown)
        raise ValueError(f"mlp_layer={name!r} has no setting {described}. Its settings: "
                         f"{', '.join(sorted(known)) or 'none'}. Drop the setting, or choose the mlp_layer it "
                         f"belongs to")
    check = getattr(cls, "check_settings", None)
    if check is not None:
        check(**dict(known, **settings))
    return functools.partial(cls, **settings) if settings else cls


@register_linear("dense")
class DenseLinear(nn.Dense):
    """``nn.Dense`` with PyTorch's ``nn.Linear`` argument names, as a registered linear: the dense baseline of every
    structured layer (parameters ``weight`` (out, in) and ``bias``, PyTorch's names)."""

    def __init__(self, in_features: int, out_features: int, has_bias: bool = True) -> None:
        owner = "DenseLinear"
        super().__init__(check_positive_int(owner, "in_features", in_features),
                         check_positive_int(owner, "out_features", out_features), has_bias=has_bias)

    @property
    def in_features(self) -> int:
        return self.in_channels

    @property
    def out_features(self) -> int:
        return self.out_channels

    @property
    def saving(self) -> float:
        return 1.0

    def to_dense(self) -> ms.Tensor:
        return ms.Tensor(self.weight.asnumpy().astype(np.float32))

    def macs_per_token(self) -> int:
        return self.in_channels * self.out_channels
