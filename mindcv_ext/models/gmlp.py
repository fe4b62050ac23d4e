"""
MindSpore implementation of `gMLP`, with dense, Monarch, SSL, low-rank or butterfly channel MLPs.
Refer to "Pay Attention to MLPs" (Liu et al., NeurIPS 2021, https://arxiv.org/abs/2105.08050).

Numerically identical to timm's ``gmlp_*`` (``timm/models/mlp_mixer.py``) and loads its checkpoints:
the parameter names are timm's, LayerNorm epsilon is 1e-6 except in the spatial gating unit (1e-5),
GELU is exact. With a Monarch ``linear_layer`` the channel MLP's fc1/fc2 become ``MonarchLinear``; the
token-mixing projection of the gating unit stays dense. Every other registered structured linear swaps fc1/fc2 the
same way, where its shapes allow (fc2 reads half of fc1's width).
"""
from typing import Optional

import mindspore as ms
from mindspore import nn, ops

from mindcv.models.registry import register_model

from ..layers import DropPath, GatedMlp, LinearFactory, layer_norm
from ..layers.weight_init import constant_, normal_
from .helpers import INCEPTION_MEAN, INCEPTION_STD, build_variant, make_cfg, register_layer_aliases
from .mlp_mixer import MlpMixer

__all__ = ["GMLP", "SpatialGatingBlock", "SpatialGatingUnit"]


def _cfg(**kwargs):
    return make_cfg(mean=INCEPTION_MEAN, std=INCEPTION_STD, **kwargs)


default_cfgs = {name: _cfg() for name in ("gmlp_ti16_224", "gmlp_s16_224", "gmlp_b16_224")}


class SpatialGatingUnit(nn.Cell):
    """Split channels in halves ``u, v``; gate ``u`` with ``v`` normalised and projected across tokens."""

    def __init__(self, dim: int, seq_len: int) -> None:
        super().__init__()
        self.norm = layer_norm(dim // 2, eps=1e-5)  # timm leaves this one at PyTorch's default
        self.proj = nn.Dense(seq_len, seq_len)

    def init_weights(self) -> None:
        # Near-zero weights and unit bias: the unit starts as the identity gate (paper, Sec. 2.1).
        normal_(self.proj.weight, std=1e-6)
        constant_(self.proj.bias, 1.0)

    def forward_macs(self, inputs, output) -> int:
        """Multiply-accumulates of a call: the (T, T) projection across tokens of half the channels of x (N, T, C)."""
        return inputs[0].size // 2 * self.proj.in_channels

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        u, v = ops.split(x, x.shape[-1] // 2, axis=-1)
        v = self.norm(v)
        v = self.proj(v.swapaxes(-1, -2))
        return u * v.swapaxes(-1, -2)


class SpatialGatingBlock(nn.Cell):
    """Pre-LayerNorm gated MLP with a residual; ``MlpMixer``'s block for gMLP."""

    def __init__(self, dim: int, seq_len: int, mlp_ratio: float = 6.0, proj_drop: float = 0.0,
                 drop_path: float = 0.0, linear_layer: Optional[LinearFactory] = None) -> None:
        super().__init__()
        self.norm = layer_norm(dim, eps=1e-6)
        self.mlp_channels = GatedMlp(dim, int(dim * mlp_ratio), lambda hidden: SpatialGatingUnit(hidden, seq_len),
                                     drop=proj_drop, linear_layer=linear_layer)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        return x + self.drop_path(self.mlp_channels(self.norm(x)))


class GMLP(MlpMixer):
    r"""gMLP: ``MlpMixer``'s skeleton (patch embedding, blocks, LayerNorm, mean pooling, linear head) with spatial
    gating blocks.

    Args:
        img_size: input resolution (a multiple of ``patch_size``). Default: 224.
        patch_size: patch side. Default: 16.
        in_channels: input channels. Default: 3.
        num_classes: classes of the head (0 for no head). Default: 1000.
        embed_dim: token width. Default: 256.
        num_blocks: number of gating blocks. Default: 30.
        mlp_ratio: channel-MLP expansion. Default: 6.
        drop_rate: dropout before the head. Default: 0.
        proj_drop_rate: dropout inside the channel MLPs. Default: 0.
        drop_path_rate: stochastic depth, the same rate in every block (as timm). Default: 0.
        linear_layer: builds the channel MLPs' fc1/fc2 (see ``MlpMixer``). Default: dense.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_channels: int = 3, num_classes: int = 1000,
                 embed_dim: int = 256, num_blocks: int = 30, mlp_ratio: float = 6.0, drop_rate: float = 0.0,
                 proj_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 linear_layer: Optional[LinearFactory] = None) -> None:
        super().__init__(img_size=img_size, patch_size=patch_size, in_channels=in_channels, num_classes=num_classes,
                         embed_dim=embed_dim, num_blocks=num_blocks, mlp_ratio=mlp_ratio,
                         block_layer=SpatialGatingBlock, drop_rate=drop_rate, proj_drop_rate=proj_drop_rate,
                         drop_path_rate=drop_path_rate, linear_layer=linear_layer)


_ARCHS = {
    "gmlp_ti16_224": dict(patch_size=16, num_blocks=30, embed_dim=128, mlp_ratio=6.0),
    "gmlp_s16_224": dict(patch_size=16, num_blocks=30, embed_dim=256, mlp_ratio=6.0),
    "gmlp_b16_224": dict(patch_size=16, num_blocks=30, embed_dim=512, mlp_ratio=6.0),
}


def _gmlp(variant: str, pretrained: bool, **kwargs) -> GMLP:
    return build_variant(GMLP, variant, _ARCHS, pretrained, default_cfgs, **kwargs)


# The names of the MindSpore gMLP port on OpenI (skyous/gmlp_mindcv), accepted wherever a model name is read.
ALIASES = {alias + suffix: f"gmlp_{size}16_224{suffix}" for alias, size in (("gmlp_Ti", "ti"), ("gmlp_S", "s"),
                                                                           ("gmlp_B", "b"))
           for suffix in ("", "_monarch")}


@register_model
def gmlp_ti16_224(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> GMLP:
    """gMLP-Tiny/16 (5.9M parameters)."""
    return _gmlp("gmlp_ti16_224", pretrained, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def gmlp_s16_224(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> GMLP:
    """gMLP-Small/16 (19.4M parameters)."""
    return _gmlp("gmlp_s16_224", pretrained, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def gmlp_b16_224(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> GMLP:
    """gMLP-Base/16 (73.1M parameters)."""
    return _gmlp("gmlp_b16_224", pretrained, num_classes=num_classes, in_channels=in_channels, **kwargs)


register_layer_aliases(__name__, _ARCHS, _gmlp, "channel MLPs")
