"""
MindSpore implementation of `MLP-Mixer`, with dense, Monarch, Pixelfly, SSL, low-rank or butterfly channel MLPs.
Refer to "MLP-Mixer: An all-MLP Architecture for Vision" (Tolstikhin et al., NeurIPS 2021,
https://arxiv.org/abs/2105.01601) and, for the Monarch variant, "Monarch: Expressive Structured
Matrices for Efficient and Accurate Training" (Dao et al., ICML 2022) and, for the Pixelfly variant,
"Pixelated Butterfly: Simple and Efficient Sparse Training for Neural Network Models" (Chen et al., ICLR 2022).

Numerically identical to timm's ``mixer_*`` and loads timm and fly checkpoints: parameter names are
timm's, LayerNorm epsilon 1e-6, exact GELU, a convolution stem with bias (unlike mindcv's
``mlp_mixer_*``, whose stem has no bias and whose GELU and LayerNorm defaults differ). With
``linear_layer`` a Monarch (or Pixelfly) layer the channel MLPs become Monarch (or flat block butterfly plus low
rank) and the token MLPs stay dense, as fly's Monarch and Pixelfly Mixers; every other registered structured
linear swaps in the same way.
"""
from typing import Callable, Optional, Tuple, Union

import mindspore as ms
from mindspore import nn

from mindcv.models.registry import register_model

from ..layers import DropPath, LinearFactory, Mlp, PatchEmbed, create_mlp, layer_norm
from ..layers.helpers import to_2tuple
from .helpers import (INCEPTION_MEAN, INCEPTION_STD, build_variant, init_mixer_weights, make_cfg,
                      register_layer_aliases)

__all__ = ["MlpMixer", "MixerBlock"]

_ARCHS = {
    "mixer_s32_224": dict(patch_size=32, num_blocks=8, embed_dim=512),
    "mixer_s16_224": dict(patch_size=16, num_blocks=8, embed_dim=512),
    "mixer_b32_224": dict(patch_size=32, num_blocks=12, embed_dim=768),
    "mixer_b16_224": dict(patch_size=16, num_blocks=12, embed_dim=768),
    "mixer_l32_224": dict(patch_size=32, num_blocks=24, embed_dim=1024),
    "mixer_l16_224": dict(patch_size=16, num_blocks=24, embed_dim=1024),
}

default_cfgs = {name: make_cfg(mean=INCEPTION_MEAN, std=INCEPTION_STD) for name in _ARCHS}


class MixerBlock(nn.Cell):
    """Token mixing across patches, then channel mixing, each residual with pre-LayerNorm."""

    def __init__(self, dim: int, seq_len: int, mlp_ratio: Union[float, Tuple[float, float]] = (0.5, 4.0),
                 proj_drop: float = 0.0, drop_path: float = 0.0, linear_layer: Optional[LinearFactory] = None) -> None:
        super().__init__()
        mlp_ratio = (0.5, float(mlp_ratio)) if isinstance(mlp_ratio, (int, float)) else to_2tuple(mlp_ratio)
        tokens_dim, channels_dim = (int(ratio * dim) for ratio in mlp_ratio)
        self.norm1 = layer_norm(dim, eps=1e-6)
        self.mlp_tokens = Mlp(seq_len, tokens_dim, drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = layer_norm(dim, eps=1e-6)
        self.mlp_channels = create_mlp(dim, channels_dim, drop=proj_drop, linear_layer=linear_layer)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        x = x + self.drop_path(self.mlp_tokens(self.norm1(x).transpose(0, 2, 1)).transpose(0, 2, 1))
        return x + self.drop_path(self.mlp_channels(self.norm2(x)))


class MlpMixer(nn.Cell):
    r"""MLP-Mixer: patch embedding, Mixer blocks, LayerNorm, mean pooling, linear head.

    The same skeleton builds gMLP (``block_layer=SpatialGatingBlock``), as timm builds both from its ``MlpMixer``.

    Args:
        img_size: input resolution (a multiple of ``patch_size``). Default: 224.
        patch_size: patch side. Default: 16.
        in_channels: input channels. Default: 3.
        num_classes: classes of the head (0 for no head). Default: 1000.
        embed_dim: token width. Default: 512.
        num_blocks: number of blocks. Default: 8.
        mlp_ratio: MLP expansion as ``block_layer`` reads it; for ``MixerBlock`` (token, channel), or one number for
            the channel MLP with the token ratio 0.5. Default: (0.5, 4.0).
        block_layer: the block, called as ``block_layer(dim, seq_len, mlp_ratio=, proj_drop=, drop_path=,
            linear_layer=)``. Default: ``MixerBlock``.
        drop_rate: dropout before the head. Default: 0.
        proj_drop_rate: dropout inside the MLPs. Default: 0.
        drop_path_rate: stochastic depth, the same rate in every block (as timm). Default: 0.
        linear_layer: builds the channel MLPs' fc1/fc2: a registered linear class or a partial of one with its
            settings (``layers.linear_layer("monarch", nblocks=4)``). Default: dense.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_channels: int = 3, num_classes: int = 1000,
                 embed_dim: int = 512, num_blocks: int = 8,
                 mlp_ratio: Union[float, Tuple[float, float]] = (0.5, 4.0),
                 block_layer: Callable[..., nn.Cell] = MixerBlock, drop_rate: float = 0.0,
                 proj_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 linear_layer: Optional[LinearFactory] = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.stem = PatchEmbed(img_size, patch_size, in_channels, embed_dim)
        seq_len = self.stem.num_patches
        self.blocks = nn.SequentialCell([
            block_layer(embed_dim, seq_len, mlp_ratio=mlp_ratio, proj_drop=proj_drop_rate, drop_path=drop_path_rate,
                        linear_layer=linear_layer)
            for _ in range(num_blocks)
        ])
        self.norm = layer_norm(embed_dim, eps=1e-6)
        self.head_drop = nn.Dropout(p=drop_rate)
        self.head = nn.Dense(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        init_mixer_weights(self)

    def forward_features(self, x: ms.Tensor) -> ms.Tensor:
        x = self.stem(x)
        x = self.blocks(x)
        return self.norm(x)

    def forward_head(self, x: ms.Tensor) -> ms.Tensor:
        x = x.mean(axis=1)
        return self.head(self.head_drop(x))

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        return self.forward_head(self.forward_features(x))


def _mixer(variant: str, pretrained: bool, **kwargs) -> MlpMixer:
    return build_variant(MlpMixer, variant, _ARCHS, pretrained, default_cfgs, **kwargs)


@register_model
def mixer_s32_224(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> MlpMixer:
    """Mixer-S/32 (19.1M parameters)."""
    return _mixer("mixer_s32_224", pretrained, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def mixer_s16_224(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> MlpMixer:
    """Mixer-S/16 (18.5M parameters)."""
    return _mixer("mixer_s16_224", pretrained, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def mixer_b32_224(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> MlpMixer:
    """Mixer-B/32 (60.3M parameters)."""
    return _mixer("mixer_b32_224", pretrained, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def mixer_b16_224(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> MlpMixer:
    """Mixer-B/16 (59.9M parameters)."""
    return _mixer("mixer_b16_224", pretrained, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def mixer_l32_224(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> MlpMixer:
    """Mixer-L/32 (206.9M parameters)."""
    return _mixer("mixer_l32_224", pretrained, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def mixer_l16_224(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> MlpMixer:
    """Mixer-L/16 (208.2M parameters)."""
    return _mixer("mixer_l16_224", pretrained, num_classes=num_classes, in_channels=in_channels, **kwargs)


register_layer_aliases(__name__, _ARCHS, _mixer, "channel MLPs")
