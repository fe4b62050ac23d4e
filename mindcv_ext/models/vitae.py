"""
MindSpore implementation of `ViTAE` (the basic T/6M/13M/S models), with dense or Monarch MLPs.
Refer to "ViTAE: Vision Transformer Advanced by Exploring Intrinsic Inductive Bias"
(Xu et al., NeurIPS 2021, https://arxiv.org/abs/2106.03348).

Numerically identical to ViTAE-Transformer's ``Image-Classification/vitae`` (commit a16d9aa) and loads
its checkpoints. Sub-cell names mirror the reference's (``layers.N.RC``, ``NC``, ``PCM``, ``PRM``), so
every checkpoint key maps to one parameter. The details that decide parity: reduction cells
concatenate their dilated convolutions dilation-major; their Performer uses a fixed random-feature
matrix ``w`` (a non-trainable parameter the checkpoint carries) computed in fp32, with LayerNorm
epsilon 1e-5; the third reduction cell ('performer_less') has neither attention nor PCM; normal
cells use LayerNorm epsilon 1e-6; features are mean-pooled with no final norm. With a Monarch ``linear_layer``
(``mlp_layer="monarch"`` through the entrypoints) the normal cells' MLP fc1/fc2 become Monarch; reduction cells stay
dense.
"""
import math
from typing import List, Optional, Sequence

import numpy as np

import mindspore as ms
from mindspore import nn, ops

from mindcv.models.registry import register_model

from ..layers import DropPath, LinearFactory, create_mlp, gelu, layer_norm
from ..layers.attention import MultiHeadAttention, TokenPerformer
from ..layers.weight_init import constant_, trunc_normal_
from .helpers import build_variant, make_cfg, register_layer_aliases

__all__ = ["ViTAE"]

_ARCHS = {
    "vitae_basic_tiny": dict(embed_dims=(64, 64, 128), token_dims=(64, 64, 256), nc_depth=7, nc_heads=4,
                             mlp_ratio=2.0, nc_group=64),
    "vitae_basic_6m": dict(embed_dims=(64, 64, 128), token_dims=(64, 64, 256), nc_depth=10, nc_heads=4,
                           mlp_ratio=2.0, nc_group=64),
    "vitae_basic_13m": dict(embed_dims=(64, 64, 160), token_dims=(64, 64, 320), nc_depth=11, nc_heads=5,
                            mlp_ratio=2.0, nc_group=64),
    "vitae_basic_small": dict(embed_dims=(64, 64, 192), token_dims=(96, 192, 384), nc_depth=14, nc_heads=6,
                              mlp_ratio=3.0, nc_group=96),
}

# The reference repository's entrypoint names, accepted wherever mindcv_ext reads a model name.
ALIASES = {
    "ViTAE_basic_Tiny": "vitae_basic_tiny",
    "ViTAE_basic_6M": "vitae_basic_6m",
    "ViTAE_basic_13M": "vitae_basic_13m",
    "ViTAE_basic_Small": "vitae_basic_small",
}

default_cfgs = {name: make_cfg(crop_pct=0.9, first_conv="layers.0.RC.PRM.convs.0.0") for name in _ARCHS}


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
          dilation: int = 1, group: int = 1) -> nn.Conv2d:
    # PyTorch's Conv2d: explicit padding and a bias (MindSpore defaults to 'same' and no bias).
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, pad_mode="pad", padding=padding,
                     dilation=dilation, group=group, has_bias=True)


class PRM(nn.Cell):
    """Pyramid reduction: parallel dilated convolutions + GELU, concatenated dilation-major."""

    def __init__(self, kernel_size: int, downsample_ratio: int, dilations: Sequence[int], in_chans: int,
                 embed_dim: int) -> None:
        super().__init__()
        self.convs = nn.CellList()
        for dilation in dilations:
            padding = math.ceil(((kernel_size - 1) * dilation + 1 - downsample_ratio) / 2)
            self.convs.append(nn.SequentialCell([
                _conv(in_chans, embed_dim, kernel_size, downsample_ratio, padding, dilation), gelu()]))
        self.out_chans = embed_dim * len(dilations)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        branches = []
        for conv in self.convs:
            branches.append(conv(x))
        y = ops.stack(branches, axis=1)  # (B, dilations, C, H, W)
        batch = y.shape[0]
        # Channel index = dilation * C + c: the reference's permute(0,4,1,2,3).reshape order.
        return y.reshape(batch, self.out_chans, -1).transpose(0, 2, 1)


class ReductionCell(nn.Cell):
    """PRM tokens, refined by a Performer and a parallel convolution branch (PCM) when present."""

    def __init__(self, img_size: int, in_chans: int, embed_dims: int, token_dims: int, downsample_ratio: int,
                 kernel_size: int, dilations: Sequence[int], tokens_type: str) -> None:
        super().__init__()
        if tokens_type not in ("performer", "performer_less"):
            raise ValueError(f"ReductionCell: tokens_type must be 'performer' or 'performer_less', "
                             f"got {tokens_type!r}")
        self.in_size = img_size
        strides, residual = [], downsample_ratio // 2
        for _ in range(3):
            strides.append(2 if residual > 0 else 1)
            residual //= 2
        self.PRM = PRM(kernel_size, downsample_ratio, dilations, in_chans, embed_dims)
        if tokens_type == "performer":
            self.PCM = nn.SequentialCell([
                _conv(in_chans, embed_dims, 3, strides[0], 1), nn.SiLU(),
                _conv(embed_dims, embed_dims, 3, strides[1], 1), nn.BatchNorm2d(embed_dims), nn.SiLU(),
                _conv(embed_dims, token_dims, 3, strides[2], 1), nn.SiLU(),
            ])
            self.attn = TokenPerformer(self.PRM.out_chans, token_dims)
        else:  # 'performer_less': the PRM alone
            self.PCM = None
            self.attn = None

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        if x.ndim == 3:  # tokens from the previous stage back to an image
            batch, channels = x.shape[0], x.shape[2]
            x = x.reshape(batch, self.in_size, self.in_size, channels).transpose(0, 3, 1, 2)
        prm_x = self.PRM(x)
        if self.attn is None:
            return prm_x
        conv_x = self.PCM(x)
        x = self.attn.attn(self.attn.norm1(prm_x))
        conv_x = conv_x.transpose(0, 2, 3, 1).reshape(x.shape)
        x = x + conv_x
        return x + self.attn.mlp(self.attn.norm2(x))


class NormalCell(nn.Cell):
    """Transformer block with a parallel grouped-convolution branch (PCM) over the token grid."""

    def __init__(self, dim: int, num_heads: int, grid_size: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0, group: int = 64,
                 linear_layer: Optional[LinearFactory] = None) -> None:
        super().__init__()
        self.grid_size = grid_size
        hidden = int(dim * mlp_ratio)
        self.norm1 = layer_norm(dim, eps=1e-6)
        self.attn = MultiHeadAttention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = layer_norm(dim, eps=1e-6)
        self.mlp = create_mlp(dim, hidden, drop=drop, linear_layer=linear_layer)
        self.PCM = nn.SequentialCell([
            _conv(dim, hidden, 3, 1, 1, group=group), nn.BatchNorm2d(hidden), nn.SiLU(),
            _conv(hidden, dim, 3, 1, 1, group=group), nn.BatchNorm2d(dim), nn.SiLU(),
            _conv(dim, dim, 3, 1, 1, group=group), nn.SiLU(),
        ])

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        batch, tokens, channels = x.shape
        grid = x.reshape(batch, self.grid_size, self.grid_size, channels).transpose(0, 3, 1, 2)
        conv_x = self.drop_path(self.PCM(grid).transpose(0, 2, 3, 1).reshape(batch, tokens, channels))
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + conv_x
        return x + self.drop_path(self.mlp(self.norm2(x)))


class BasicLayer(nn.Cell):
    def __init__(self, reduction: nn.Cell, normal_cells: List[nn.Cell]) -> None:
        super().__init__()
        self.RC = reduction
        self.NC = nn.CellList(normal_cells)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        x = self.RC(x)
        for cell in self.NC:
            x = cell(x)
        return x


class ViTAE(nn.Cell):
    r"""ViTAE basic: three reduction cells (x4, x2, x2), normal cells in the last stage, mean pooling, head.

    Args:
        img_size: input resolution, a multiple of 16. Default: 224.
        in_channels: input channels. Default: 3.
        num_classes: classes of the head (0 for no head). Default: 1000.
        embed_dims: PRM width per stage. Default: (64, 64, 128).
        token_dims: token width per stage. Default: (64, 64, 256).
        nc_depth: normal cells in the last stage. Default: 7.
        nc_heads: attention heads of the normal cells. Default: 4.
        mlp_ratio: normal-cell MLP expansion. Default: 2.
        nc_group: groups of the normal cells' convolutions. Default: 64.
        qkv_bias: bias in the qkv projection. Default: True.
        drop_rate: dropout in the normal cells' MLP and attention projection. Default: 0.
        attn_drop_rate: attention dropout. Default: 0.
        drop_path_rate: stochastic depth, rising linearly over the normal cells. Default: 0.
        linear_layer: builds the normal cells' fc1/fc2: a registered linear class or a partial of one with its
            settings. Default: dense.
    """

    def __init__(self, img_size: int = 224, in_channels: int = 3, num_classes: int = 1000,
                 embed_dims: Sequence[int] = (64, 64, 128), token_dims: Sequence[int] = (64, 64, 256),
                 nc_depth: int = 7, nc_heads: int = 4, mlp_ratio: float = 2.0, nc_group: int = 64,
                 qkv_bias: bool = True, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, linear_layer: Optional[LinearFactory] = None) -> None:
        super().__init__()
        if img_size % 16 != 0 or img_size < 16:
            raise ValueError(f"ViTAE: img_size must be a positive multiple of 16, got {img_size}")
        self.num_classes = num_classes
        self.num_features = token_dims[-1]
        downsample_ratios, kernel_sizes = (4, 2, 2), (7, 3, 3)
        dilations = ((1, 2, 3, 4), (1, 2, 3), (1, 2))
        tokens_types = ("performer", "performer", "performer_less")
        drop_path_rates = np.linspace(0, drop_path_rate, nc_depth).tolist()

        stages, size, channels = [], img_size, in_channels
        for i in range(3):
            reduction = ReductionCell(size, channels, embed_dims[i], token_dims[i], downsample_ratios[i],
                                      kernel_sizes[i], dilations[i], tokens_types[i])
            size //= downsample_ratios[i]
            channels = token_dims[i]
            normal_cells = [] if i < 2 else [
                NormalCell(token_dims[i], nc_heads, size, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=drop_rate,
                           attn_drop=attn_drop_rate, drop_path=drop_path_rates[j], group=nc_group,
                           linear_layer=linear_layer)
                for j in range(nc_depth)
            ]
            stages.append(BasicLayer(reduction, normal_cells))
        self.layers = nn.CellList(stages)
        self.head = nn.Dense(token_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        # The reference's _init_weights: every nn.Linear trunc_normal(.02) with zero bias; convolutions and
        # batch norms keep PyTorch's defaults (MindSpore's match); Monarch layers keep their own.
        for _, cell in self.cells_and_names():
            if isinstance(cell, nn.Dense):
                trunc_normal_(cell.weight, std=0.02)
                if cell.has_bias:
                    constant_(cell.bias, 0.0)

    def forward_features(self, x: ms.Tensor) -> ms.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def forward_head(self, x: ms.Tensor) -> ms.Tensor:
        return self.head(x.mean(axis=1))

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        return self.forward_head(self.forward_features(x))


def _vitae(variant: str, pretrained: bool, **kwargs) -> ViTAE:
    return build_variant(ViTAE, variant, _ARCHS, pretrained, default_cfgs, **kwargs)


@register_model
def vitae_basic_tiny(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> ViTAE:
    """ViTAE-T (4.9M parameters; the reference's ``ViTAE_basic_Tiny``)."""
    return _vitae("vitae_basic_tiny", pretrained, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def vitae_basic_6m(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> ViTAE:
    """ViTAE-6M (6.6M parameters; ``ViTAE_basic_6M``)."""
    return _vitae("vitae_basic_6m", pretrained, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def vitae_basic_13m(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> ViTAE:
    """ViTAE-13M (10.8M parameters as the reference code builds it; ``ViTAE_basic_13M``)."""
    return _vitae("vitae_basic_13m", pretrained, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def vitae_basic_small(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> ViTAE:
    """ViTAE-S (24.0M parameters; ``ViTAE_basic_Small``)."""
    return _vitae("vitae_basic_small", pretrained, num_classes=num_classes, in_channels=in_channels, **kwargs)


register_layer_aliases(__name__, _ARCHS, _vitae, "normal-cell MLPs")
