"""What every model file shares: default configurations, the entrypoints and their layer aliases."""
import inspect
import logging
import sys
from typing import Any, Callable, Dict, Iterable, Optional, Tuple, Type

from mindspore import nn

from mindcv.models.registry import register_model

from ..layers.mlp import as_linear_factory
from ..layers.structured import layer_class, layer_settings, linear_class, linear_layer, registered_linears
from ..layers.weight_init import constant_, lecun_normal_, normal_, xavier_uniform_

__all__ = ["make_cfg", "instantiate", "build_variant", "init_mixer_weights", "LAYER_ALIASES", "split_layer_alias",
           "register_layer_aliases", "register_text_model", "TEXT_MODELS"]

# Language models: built by ``mindcv_ext.create_model`` and the converter, but kept out of mindcv's registry, whose
# contract is ``create_model(name, num_classes=...)`` mapping an image batch to class logits.
TEXT_MODELS: Dict[str, Callable[..., nn.Cell]] = {}


def register_text_model(fn: Callable[..., nn.Cell]) -> Callable[..., nn.Cell]:
    """Register a language model's entrypoint with mindcv_ext only."""
    TEXT_MODELS[fn.__name__] = fn
    return fn

_logger = logging.getLogger("mindcv_ext")

# Model-name suffixes that choose the MLPs' linear layer: suffix -> (registered layer, its settings). Every family
# registers ``<base><suffix>`` for each of its base names.
LAYER_ALIASES: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "_monarch": ("monarch", {"nblocks": 4}),
}

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


def make_cfg(url: str = "", **kwargs) -> Dict[str, Any]:
    """A mindcv/timm default configuration: evaluation transform and the head's parameter prefix."""
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.proj",
        "classifier": "head",
        **kwargs,
    }


def split_layer_alias(name: str) -> Tuple[str, Optional[str], Dict[str, Any]]:
    """``(base name, layer, settings)`` of a model name; ``(name, None, {})`` without a layer suffix."""
    for suffix, (layer, settings) in LAYER_ALIASES.items():
        if name.endswith(suffix):
            return name[:-len(suffix)], layer, dict(settings)
    return name, None, {}


def resolve_linear_layer(variant: str, kwargs: Dict[str, Any], model_cls: Optional[type] = None) -> None:
    """Turn ``mlp_layer`` (a registered name, or the one ``variant``'s alias suffix means) and the layer settings
    among ``kwargs`` into the ``linear_layer`` factory the model takes, in place. A keyword ``model_cls`` takes
    itself stays the model's, whatever layer has a setting of that name.

    A setting of another layer is an error that names its layers; so is a layer that contradicts the model name (a
    dense model under a Monarch name would mislabel every result).
    """
    mlp_layer = kwargs.pop("mlp_layer", None)
    base, alias_layer, alias_settings = split_layer_alias(variant)
    if alias_layer is not None and mlp_layer is not None and mlp_layer != alias_layer:
        raise ValueError(f"{variant}: mlp_layer={mlp_layer!r} conflicts with the model name, whose suffix means "
                         f"mlp_layer={alias_layer!r}. Drop mlp_layer, or use {base!r} with mlp_layer={mlp_layer!r}.")
    any_setting = {key for name in registered_linears() for key in layer_settings(linear_class(name))}
    if model_cls is not None:
        any_setting -= set(inspect.signature(model_cls.__init__).parameters)
    settings = {key: kwargs.pop(key) for key in list(kwargs) if key in any_setting and kwargs[key] is not None}
    given = kwargs.get("linear_layer")
    if given is not None:
        if mlp_layer is not None or settings:
            raise ValueError(f"{variant}: give mlp_layer (a name) and its settings, or linear_layer (a layer "
                             f"factory), not both")
        if alias_layer is not None and getattr(layer_class(as_linear_factory(given)), "layer_name", None) != \
                alias_layer:
            raise ValueError(f"{variant}: the linear layer {given!r} conflicts with the model name, which means "
                             f"mlp_layer={alias_layer!r}. Use {base!r} with the layer you want.")
        return
    layer = mlp_layer or alias_layer
    if "nblocks" in settings and "nblocks" not in layer_settings(linear_class(layer or "dense")):
        # nblocks is a run's top-level key: the dense twin of a Monarch recipe keeps it, with nothing to set.
        _logger.info(f"{variant}: nblocks={settings.pop('nblocks')} is left unused: mlp_layer "
                     f"{layer or 'dense'!r} has no Monarch blocks")
    if layer is not None or settings:
        kwargs["linear_layer"] = linear_layer(layer or "dense", **dict(alias_settings, **settings))


def instantiate(model_cls: Type[nn.Cell], variant: str, pretrained: bool, default_cfg: Dict[str, Any],
                **kwargs) -> nn.Cell:
    """``model_cls(**kwargs)`` with its linear layer resolved (``resolve_linear_layer``) and its default
    configuration attached; ``pretrained`` is refused with what to do."""
    if pretrained:
        # mindcv would warn and go on with random weights; that silently trains from scratch.
        raise ValueError(
            f"{variant}: no MindSpore weights are published. Convert a PyTorch checkpoint with "
            f"`python scripts/convert_checkpoint.py --model {variant} --src FILE --dst OUT.ckpt` and pass "
            f"checkpoint_path=OUT.ckpt instead of pretrained=True.")
    resolve_linear_layer(variant, kwargs, model_cls)
    model = model_cls(**kwargs)
    # mindcv reads pretrained_cfg (layer decay, fine-tuning), timm-style code reads default_cfg.
    model.default_cfg = dict(default_cfg)
    model.pretrained_cfg = model.default_cfg
    return model


def build_variant(model_cls: Type[nn.Cell], variant: str, archs: Dict[str, Dict[str, Any]], pretrained: bool,
                  default_cfgs: Dict[str, Dict[str, Any]], **kwargs) -> nn.Cell:
    """An entrypoint's model: the architecture of ``variant``'s base name (its alias suffix, if any, names the linear
    layer: ``LAYER_ALIASES``), with ``kwargs`` over it."""
    base, _, _ = split_layer_alias(variant)
    return instantiate(model_cls, variant, pretrained, default_cfgs[base], **dict(archs[base], **kwargs))


def register_layer_aliases(module_name: str, bases: Iterable[str],
                           entrypoint: Callable[..., nn.Cell], describe: str) -> None:
    """Register ``<base><suffix>`` for every base name and ``LAYER_ALIASES`` suffix, calling
    ``entrypoint(name, pretrained, **kwargs)``, and put each in ``module_name``'s namespace."""
    namespace = vars(sys.modules[module_name])

    def make(name: str, doc: str) -> Callable[..., nn.Cell]:
        def create(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> nn.Cell:
            return entrypoint(name, pretrained, num_classes=num_classes, in_channels=in_channels, **kwargs)

        create.__name__ = create.__qualname__ = name
        create.__module__ = module_name
        create.__doc__ = doc
        return create

    for base in bases:
        for suffix, (layer, settings) in LAYER_ALIASES.items():
            name = base + suffix
            if "default_cfgs" in namespace:  # mindcv's registry reads an entrypoint's configuration from there
                namespace["default_cfgs"][name] = namespace["default_cfgs"][base]
            described = ", ".join(f"{key} {value}" for key, value in settings.items())
            namespace[name] = register_model(make(name, f"{base} with {layer} {describe} ({described})."))


def init_mixer_weights(net: nn.Cell) -> None:
    """timm's MLP-Mixer/gMLP initialisation; structured layers keep their own, as in fly.

    Dense: xavier-uniform weights, N(0, 1e-6) biases inside MLPs and zero elsewhere; the head is
    zero; convolutions are lecun-normal. A layer with a ``set_weights_from_dense_init`` method (Pixelfly's) starts
    from its projection of xavier-uniform dense matrices, as fly's Mixer does. Cells with an ``init_weights`` method
    then apply their own.
    """
    for name, cell in net.cells_and_names():
        if isinstance(cell, nn.Dense):
            if name.startswith("head"):
                constant_(cell.weight, 0.0)
                constant_(cell.bias, 0.0)
                continue
            xavier_uniform_(cell.weight)
            if cell.has_bias and "mlp" in name:
                normal_(cell.bias, std=1e-6)
            elif cell.has_bias:
                constant_(cell.bias, 0.0)
        elif isinstance(cell, nn.Conv2d):
            lecun_normal_(cell.weight)
            constant_(cell.bias, 0.0)
        elif hasattr(cell, "set_weights_from_dense_init"):
            cell.set_weights_from_dense_init()
    for _, cell in net.cells_and_names():
        if cell is not net and hasattr(cell, "init_weights"):
            cell.init_weights()
