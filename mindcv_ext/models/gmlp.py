"""
MindSpore implementation of `gMLP`, with dense or Monarch channel MLPs.
Refer to "Pay Attention to MLPs" (Liu et al., NeurIPS 2021, https://arxiv.org/abs/2105.08050).

Numerically identical to timm's ``gmlp_*`` (``timm/models/mlp_mixer.py``) and loads its checkpoints:
the parameter names are timm's, LayerNorm epsilon is 1e-6 except in the spatial gating unit (1e-5),
GELU is exact. With ``mlp_layer="monarch"`` the channel MLP's fc1/fc2 become ``MonarchLinear``; the
token-mixing projection of the gating unit stays dense.
"""
import mindspore as ms
from mindspore import nn, ops

from mindcv.models.registry import register_model

from ..layers import DropPath, GatedMlp, PatchEmbed, layer_norm, reorder_features
from ..layers.cpu_kernels import CpuGateToBlocks, cpu_kernels_wanted
from ..layers.mlp import check_mlp_layer
from ..layers.weight_init import constant_, normal_
from .helpers import INCEPTION_MEAN, INCEPTION_STD, build_model, init_mixer_weights, make_cfg

__all__ = ["GMLP"]


def _cfg(**kwargs):
    return make_cfg(mean=INCEPTION_MEAN, std=INCEPTION_STD, **kwargs)


default_cfgs = {
    name: _cfg()
    for base in ("gmlp_ti16_224", "gmlp_s16_224", "gmlp_b16_224")
    for name in (base, base + "_monarch")
}


_bmm_nt = ops.BatchMatMul(transpose_b=True)


class TokenProjection(nn.Cell):
    """``weight @ v + bias[:, None]`` for every sample of ``v`` ``(N, T, C)``: a linear map across tokens.

    timm writes it as ``nn.Linear`` on ``v.transpose(-1, -2)`` and transposes back; multiplying from the left
    reads ``v`` as it is. The backward is written out so that the bias gradient sums along contiguous rows
    first (the automatic one reduces over a strided axis, slowly on CPU). With ``add_bias=False`` the bias is
    left to the caller (its gradient here is zero).
    """

    def __init__(self, add_bias: bool = True) -> None:
        super().__init__()
        self.add_bias = add_bias

    def construct(self, v: ms.Tensor, weight: ms.Tensor, bias: ms.Tensor) -> ms.Tensor:
        if self.add_bias:
            return ops.matmul(weight, v) + bias.reshape(-1, 1)
        return ops.matmul(weight, v)

    def bprop(self, v, weight, bias, out, dout):
        dv = ops.matmul(weight.transpose(1, 0), dout)
        dweight = _bmm_nt(dout, v).sum(0)
        dbias = dout.sum(-1).sum(0) if self.add_bias else ops.zeros_like(bias)
        return dv, dweight, dbias


class SpatialGatingUnit(nn.Cell):
    """Split channels in halves ``u, v``; gate ``u`` with ``v`` normalised and projected across tokens."""

    def __init__(self, dim: int, seq_len: int) -> None:
        super().__init__()
        self.norm = layer_norm(dim // 2, eps=1e-5)  # timm leaves this one at PyTorch's default
        self.proj = nn.Dense(seq_len, seq_len)  # holds the parameters, named as timm's
        self.token_projection = TokenProjection()
        # construct_reordered on CPU: the bias is added in the kernel that gates and gathers fc2's blocks.
        self.cpu_gate = CpuGateToBlocks() if cpu_kernels_wanted() else None
        self.token_product = TokenProjection(add_bias=False)

    def init_weights(self) -> None:
        # Near-zero weights and unit bias: the unit starts as the identity gate (paper, Sec. 2.1).
        normal_(self.proj.weight, std=1e-6)
        constant_(self.proj.bias, 1.0)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        u, v = ops.split(x, x.shape[-1] // 2, axis=-1)
        v = self.norm(v)
        return u * self.token_projection(v, ops.cast(self.proj.weight, v.dtype), ops.cast(self.proj.bias, v.dtype))

    def construct_reordered(self, u: ms.Tensor, v: ms.Tensor, feature_order: tuple) -> ms.Tensor:
        """The same gate on halves ``(N, T, C)`` whose features come in ``monarch_gated_mlp``'s order; returns
        fc2's input blocks ``(k, N*T, C/k)``, ``k = feature_order[0]``."""
        gamma = reorder_features(self.norm.gamma, feature_order)
        beta = reorder_features(self.norm.beta, feature_order)
        v = self.norm.normalize(v, gamma, beta)
        weight, bias = ops.cast(self.proj.weight, v.dtype), ops.cast(self.proj.bias, v.dtype)
        k = feature_order[0]
        rows = u.shape[0] * u.shape[1]
        if self.cpu_gate is not None and u.dtype == ms.float32:
            p = self.token_product(v, weight, bias)
            return self.cpu_gate(u.reshape(rows, k, -1), p.reshape(rows, k, -1), bias)
        z = u * self.token_projection(v, weight, bias)
        return z.reshape(rows, k, -1).transpose(1, 0, 2)


class SpatialGatingBlock(nn.Cell):
    def __init__(self, dim: int, seq_len: int, mlp_ratio: float = 6.0, proj_drop: float = 0.0,
                 drop_path: float = 0.0, mlp_layer: str = "dense", nblocks: int = 4) -> None:
        super().__init__()
        self.norm = layer_norm(dim, eps=1e-6)
        self.mlp_channels = GatedMlp(dim, int(dim * mlp_ratio), lambda hidden: SpatialGatingUnit(hidden, seq_len),
                                     drop=proj_drop, mlp_layer=mlp_layer, nblocks=nblocks)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        return x + self.drop_path(self.mlp_channels(self.norm(x)))


class GMLP(nn.Cell):
    r"""gMLP: patch embedding, spatial gating blocks, LayerNorm, mean pooling, linear head.

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
        mlp_layer: ``"dense"`` or ``"monarch"`` for the channel MLPs' fc1/fc2. Default: ``"dense"``.
        nblocks: Monarch blocks per factor. Default: 4.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_channels: int = 3, num_classes: int = 1000,
                 embed_dim: int = 256, num_blocks: int = 30, mlp_ratio: float = 6.0, drop_rate: float = 0.0,
                 proj_drop_rate: float = 0.0, drop_path_rate: float = 0.0, mlp_layer: str = "dense",
                 nblocks: int = 4) -> None:
        super().__init__()
        check_mlp_layer(mlp_layer, nblocks, choices=("dense", "monarch"))
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.stem = PatchEmbed(img_size, patch_size, in_channels, embed_dim)
        seq_len = self.stem.num_patches
        self.blocks = nn.SequentialCell([
            SpatialGatingBlock(embed_dim, seq_len, mlp_ratio, proj_drop_rate, drop_path_rate, mlp_layer, nblocks)
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


_ARCHS = {
    "gmlp_ti16_224": dict(patch_size=16, num_blocks=30, embed_dim=128, mlp_ratio=6.0),
    "gmlp_s16_224": dict(patch_size=16, num_blocks=30, embed_dim=256, mlp_ratio=6.0),
    "gmlp_b16_224": dict(patch_size=16, num_blocks=30, embed_dim=512, mlp_ratio=6.0),
}


def _gmlp(variant: str, pretrained: bool, **kwargs) -> GMLP:
    base, monarch, _ = variant.partition("_monarch")
    args = dict(_ARCHS[base], mlp_layer="monarch" if monarch else "dense")
    args.update(kwargs)
    return build_model(GMLP, variant, pretrained, default_cfgs[variant], **args)


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


@register_model
def gmlp_ti16_224_monarch(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3,
                          **kwargs) -> GMLP:
    """gMLP-Tiny/16 with Monarch channel MLPs (nblocks 4: 2.8M parameters)."""
    return _gmlp("gmlp_ti16_224_monarch", pretrained, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def gmlp_s16_224_monarch(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3,
                         **kwargs) -> GMLP:
    """gMLP-Small/16 with Monarch channel MLPs (nblocks 4: 7.1M parameters)."""
    return _gmlp("gmlp_s16_224_monarch", pretrained, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def gmlp_b16_224_monarch(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3,
                         **kwargs) -> GMLP:
    """gMLP-Base/16 with Monarch channel MLPs (nblocks 4: 23.9M parameters)."""
    return _gmlp("gmlp_b16_224_monarch", pretrained, num_classes=num_classes, in_channels=in_channels, **kwargs)
