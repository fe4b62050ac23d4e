"""What every model file shares: default configurations and the entrypoint builder."""
from typing import Any, Dict, Type

from mindspore import nn

from ..layers.pixelfly import SparseLRLinear
from ..layers.weight_init import constant_, lecun_normal_, normal_, xavier_uniform_

__all__ = ["make_cfg", "build_model", "build_variant", "init_mixer_weights"]

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


def build_model(model_cls: Type[nn.Cell], variant: str, pretrained: bool, default_cfg: Dict[str, Any],
                **kwargs) -> nn.Cell:
    if pretrained:
        # mindcv would warn and go on with random weights; that silently trains from scratch.
        raise ValueError(
            f"{variant}: no MindSpore weights are published. Convert a PyTorch checkpoint with "
            f"`python scripts/convert_checkpoint.py --model {variant} --src FILE --dst OUT.ckpt` and pass "
            f"checkpoint_path=OUT.ckpt instead of pretrained=True.")
    model = model_cls(**kwargs)
    # mindcv reads pretrained_cfg (layer decay, fine-tuning), timm-style code reads default_cfg.
    model.default_cfg = dict(default_cfg)
    model.pretrained_cfg = model.default_cfg
    return model


def build_variant(model_cls: Type[nn.Cell], variant: str, archs: Dict[str, Dict[str, Any]], pretrained: bool,
                  default_cfgs: Dict[str, Dict[str, Any]], **kwargs) -> nn.Cell:
    """An entrypoint's model: the architecture of ``variant``'s base name, with ``mlp_layer`` set by the name.

    A ``_monarch`` suffix means ``mlp_layer="monarch"``; an explicit ``mlp_layer`` that says otherwise is an error
    (a dense model under a Monarch name would mislabel every result). Base names take any ``mlp_layer``.
    """
    base, suffix, _ = variant.partition("_monarch")
    requested = kwargs.get("mlp_layer")
    if suffix and requested is not None and requested != "monarch":
        raise ValueError(f"{variant}: mlp_layer={requested!r} conflicts with the model name, whose '_monarch' suffix "
                         f"means mlp_layer='monarch'. Drop mlp_layer, or use {base!r} with mlp_layer={requested!r}.")
    args = dict(archs[base], mlp_layer="monarch" if suffix else "dense")
    args.update(kwargs)
    return build_model(model_cls, variant, pretrained, default_cfgs[variant], **args)


def init_mixer_weights(net: nn.Cell) -> None:
    """timm's MLP-Mixer/gMLP initialisation; Monarch layers keep their own, as in fly.

    Dense: xavier-uniform weights, N(0, 1e-6) biases inside MLPs and zero elsewhere; the head is
    zero; convolutions are lecun-normal. Pixelfly layers start from projections of xavier-uniform dense
    matrices (fly's ``set_weights_from_dense_init``). Cells with an ``init_weights`` method then apply their own.
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
        elif isinstance(cell, SparseLRLinear):
            cell.set_weights_from_dense_init()
    for _, cell in net.cells_and_names():
        if cell is not net and hasattr(cell, "init_weights"):
            cell.init_weights()
