"""
MindSpore implementation of `T2T-ViT`, with swappable Tokens-to-Token attention and dense or Monarch MLPs.
Refer to "Tokens-to-Token ViT: Training Vision Transformers from Scratch on ImageNet" (Yuan et al., ICCV 2021,
https://arxiv.org/abs/2101.11986) and, for the attention variants, "Scatterbrain: Unifying Sparse and Low-rank
Attention Approximation" (Chen et al., NeurIPS 2021) as implemented in HazyResearch/fly.

Numerically identical to yitu-opensource/T2T-ViT (commit 0f63dc9) and to fly's T2T-ViT with its ``t2tattn_cfg``
variants, and loads both checkpoint layouts: the official one (``tokens_to_token.*``, ``pos_embed``, e.g.
``81.7_T2T_ViTt_14.pth.tar``) and fly's converted one (``patch_embed.*``, ``pos_embed.pe``, plus the attention's
random features). The details that decide parity: soft splits are ``ops.unfold`` (PyTorch's channel order); the
T2T attention's temperature is ``dim**-0.5`` of its *input* width (147 and 576) while the backbone uses
``head_dim**-0.5``; the T2T blocks' skip comes from ``v``; LayerNorm epsilon is 1e-5; the sinusoid position table
is a fixed parameter loaded from the checkpoint. With a Monarch ``linear_layer`` (``mlp_layer="monarch"`` through
the entrypoints) the backbone blocks' fc1/fc2 are Monarch.
"""
from typing import Optional, Sequence, Tuple, Union

import numpy as np

import mindspore as ms
from mindspore import nn, ops

from mindcv.models.registry import register_model

from ..layers import DropPath, LinearFactory, Mlp, create_mlp, layer_norm
from ..layers.attention import ATTENTION_TYPES, MultiHeadAttention, TokenPerformer, create_attention
from ..layers.weight_init import constant_, trunc_normal_
from .helpers import build_variant, make_cfg, register_layer_aliases

__all__ = ["T2T_ViT", "init_vit_weights"]

_ARCHS = {
    "t2t_vit_12": dict(tokens_type="performer", embed_dim=256, depth=12, num_heads=4, mlp_ratio=2.0),
    "t2t_vit_14": dict(tokens_type="performer", embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.0),
    "t2t_vit_t_14": dict(tokens_type="transformer", embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.0),
}

# fly's t2tattn_cfg settings at 224 px (sequences of 3,136 and 784 tokens; about 1/32 of each as budget).
ATTENTION_DEFAULTS = {
    "full": {},
    "local": dict(local_context=(98, 24)),
    "performer": dict(nb_features=(49, 12), softmax_eps=(0.0, 0.0), normalization_eps=(0.0, 0.0)),
    "sblocal": dict(local_context=(49, 12), nb_features=(24, 6)),
}

# The configuration options of this family: train.py's, eval.py's and infer.py's YAML key and --option of each
# name, passed to the entrypoint as that keyword only when set. config.py reads the table from this file without
# importing it (a model imports MindSpore; parsing a configuration must not), so it stays a literal. "type" is
# one of str, int, float, int_list, float_list (a list also takes one value, or "a,b" on the command line);
# "choices" are checked when the configuration is read (None, for unset, is always allowed).
CONFIG_OPTIONS = (
    {"name": "t2t_attn", "type": "str", "choices": ("full", "local", "performer", "sblocal"),
     "help": "T2T-ViT_t: the Tokens-to-Token attention (default: full)"},
    {"name": "local_context", "type": "int_list",
     "help": "T2T attention window (local, sblocal), one value or attention1,attention2"},
    {"name": "nb_features", "type": "int_list",
     "help": "T2T attention random features (performer, sblocal), one value or two"},
    {"name": "softmax_eps", "type": "float_list",
     "help": "Performer feature epsilon, one value or two (default: fly's setting)"},
    {"name": "normalization_eps", "type": "float_list",
     "help": "Performer normaliser epsilon, one value or two (default: fly's setting)"},
    {"name": "feature_seed", "type": "int", "help": "seed of random features a checkpoint does not provide"},
)

default_cfgs = {name: make_cfg(crop_pct=0.9, first_conv="tokens_to_token.attention1.attn.qkv") for name in _ARCHS}

Pair = Union[None, int, float, Sequence[Union[int, float]]]


def _pair(name: str, value: Pair):
    """Settings for (attention1, attention2): one value for both, or a two-element list."""
    if value is None or isinstance(value, (int, float)):
        return value, value
    value = list(value)
    if len(value) != 2:
        raise ValueError(f"{name} must be a number or [attention1, attention2], got {value!r}")
    return value[0], value[1]


def sinusoid_table(positions: int, dim: int) -> np.ndarray:
    """The official position table: sin at even, cos at odd channels, computed in float64."""
    position = np.arange(positions, dtype=np.float64)[:, None]
    exponent = np.array([2 * (j // 2) / dim for j in range(dim)], dtype=np.float64)
    table = position / np.power(10000.0, exponent)[None, :]
    table[:, 0::2] = np.sin(table[:, 0::2])
    table[:, 1::2] = np.cos(table[:, 1::2])
    return table[None].astype(np.float32)


def class_token_and_positions(num_patches: int, embed_dim: int) -> Tuple[ms.Parameter, ms.Parameter]:
    """T2T-ViT's class token (zeros, then ``init_vit_weights``) and its fixed sinusoid table over the class token and
    the patches, a parameter so that checkpoints carry it (named as the reference names them)."""
    cls_token = ms.Parameter(ms.Tensor(np.zeros((1, 1, embed_dim), np.float32)), name="cls_token")
    pos_embed = ms.Parameter(ms.Tensor(sinusoid_table(num_patches + 1, embed_dim)), name="pos_embed",
                             requires_grad=False)
    return cls_token, pos_embed


def init_vit_weights(net: nn.Cell) -> None:
    """The reference's init: class token and every Dense weight truncated normal (0.02), Dense biases zero."""
    trunc_normal_(net.cls_token, std=0.02)
    for _, cell in net.cells_and_names():
        if isinstance(cell, nn.Dense):
            trunc_normal_(cell.weight, std=0.02)
            if cell.has_bias:
                constant_(cell.bias, 0.0)


class T2TAttention(nn.Cell):
    """One-head attention from ``dim`` to ``in_dim`` with a swappable core; the skip comes from ``v``."""

    def __init__(self, dim: int, in_dim: int, kind: str = "full", **core) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.qkv = nn.Dense(dim, in_dim * 3, has_bias=False)
        self.proj = nn.Dense(in_dim, in_dim)
        # The reference's temperature uses the *input* width (head_dim = dim // heads with one head).
        self.attention_layer = create_attention(kind, in_dim, dim ** -0.5, **core)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        q, k, v = ops.split(self.qkv(x), self.in_dim, axis=-1)
        return v + self.proj(self.attention_layer(q, k, v))


class TokenTransformer(nn.Cell):
    """The official ``Token_transformer``: attention to ``in_dim`` then an ``in_dim`` MLP, pre-norm."""

    def __init__(self, dim: int, in_dim: int, mlp_ratio: float = 1.0, kind: str = "full", **core) -> None:
        super().__init__()
        self.norm1 = layer_norm(dim, eps=1e-5)
        self.attn = T2TAttention(dim, in_dim, kind, **core)
        self.norm2 = layer_norm(in_dim, eps=1e-5)
        self.mlp = Mlp(in_dim, int(in_dim * mlp_ratio))

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        x = self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class T2TModule(nn.Cell):
    """Soft split (7x7 stride 4), re-structurise, soft split (3x3 stride 2) twice, with two token blocks between."""

    def __init__(self, img_size: int, tokens_type: str, in_channels: int, embed_dim: int, token_dim: int = 64,
                 t2t_attn: str = "full", local_context: Pair = None, nb_features: Pair = None,
                 softmax_eps: Pair = None, normalization_eps: Pair = None, feature_seed: int = 0,
                 first_split: Tuple[int, int, int] = (7, 4, 2)) -> None:
        super().__init__()
        # (kernel, stride, padding) of the first soft split: (7, 4, 2) in T2T-ViT; DVT's coarser exits use
        # (14, 8, 3) and (11, 6, 5) for 7x7 and 10x10 tokens at 224 px.
        self.first_split = tuple(first_split)
        kernel, stride, padding = self.first_split
        first = (img_size + 2 * padding - kernel) // stride + 1
        second = (first - 1) // 2 + 1
        self.grids = (first, second)
        self.grid = (second - 1) // 2 + 1
        dims = (in_channels * kernel * kernel, token_dim * 3 * 3)
        if tokens_type == "performer":
            self.attention1 = TokenPerformer(dims[0], token_dim, kernel_ratio=0.5)
            self.attention2 = TokenPerformer(dims[1], token_dim, kernel_ratio=0.5)
        else:
            settings = [dict(zip(("local_context", "nb_features", "softmax_eps", "normalization_eps"), values))
                        for values in zip(_pair("local_context", local_context), _pair("nb_features", nb_features),
                                          _pair("softmax_eps", softmax_eps),
                                          _pair("normalization_eps", normalization_eps))]
            self.attention1 = TokenTransformer(dims[0], token_dim, 1.0, t2t_attn, seed=feature_seed, **settings[0])
            self.attention2 = TokenTransformer(dims[1], token_dim, 1.0, t2t_attn, seed=feature_seed + 1,
                                               **settings[1])
        self.project = nn.Dense(token_dim * 3 * 3, embed_dim)
        self.num_patches = self.grid ** 2

    @staticmethod
    def _soft_split(x: ms.Tensor, kernel: int, stride: int, padding: int) -> ms.Tensor:
        # (B, C*k*k, L) in PyTorch's channel order, then tokens first.
        return ops.unfold(x, kernel, dilation=1, padding=padding, stride=stride).transpose(0, 2, 1)

    def _restructure(self, x: ms.Tensor, grid: int) -> ms.Tensor:
        batch, _, channels = x.shape
        return x.transpose(0, 2, 1).reshape(batch, channels, grid, grid)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        x = self.attention1(self._soft_split(x, *self.first_split))
        x = self.attention2(self._soft_split(self._restructure(x, self.grids[0]), 3, 2, 1))
        x = self._soft_split(self._restructure(x, self.grids[1]), 3, 2, 1)
        return self.project(x)


class Block(nn.Cell):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop: float, attn_drop: float,
                 drop_path: float, linear_layer: Optional[LinearFactory] = None) -> None:
        super().__init__()
        self.norm1 = layer_norm(dim, eps=1e-5)
        self.attn = MultiHeadAttention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = layer_norm(dim, eps=1e-5)
        self.mlp = create_mlp(dim, int(dim * mlp_ratio), drop=drop, linear_layer=linear_layer)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class T2T_ViT(nn.Cell):
    r"""T2T-ViT: a Tokens-to-Token stem, a class token with a fixed sinusoid position table, ViT blocks, head.

    Args:
        img_size: input resolution, a multiple of 16. Default: 224.
        tokens_type: ``"transformer"`` (T2T-ViT_t, swappable attention) or ``"performer"`` (Token_performer).
        in_channels, num_classes, embed_dim, depth, num_heads, mlp_ratio, qkv_bias: the usual ViT settings.
        drop_rate, attn_drop_rate, drop_path_rate: regularisation (drop path rises linearly over the blocks).
        token_dim: width inside the T2T module. Default: 64.
        t2t_attn: the T2T attention (transformer T2T only): ``full``, ``local``, ``performer`` or ``sblocal``.
        local_context, nb_features, softmax_eps, normalization_eps: the attention's settings under fly's names,
            one value or ``[attention1, attention2]``; unset, fly's 224 px configuration for ``t2t_attn``.
        feature_seed: seed of the random features drawn at construction (a checkpoint's values replace them).
        linear_layer: builds the backbone blocks' fc1/fc2: a registered linear class or a partial of one with its
            settings. Default: dense.
    """

    # fly's converted checkpoints rename the T2T module and the position table.
    checkpoint_renames = ((r"^patch_embed\.", "tokens_to_token."), (r"^pos_embed\.pe$", "pos_embed"))
    # The official checkpoints hold no random features for the swapped-in attentions: keep the seeded draw.
    checkpoint_optional = (r"\.attention_layer\.(feature_map\.)?projection_matrix$",)

    def __init__(self, img_size: int = 224, tokens_type: str = "transformer", in_channels: int = 3,
                 num_classes: int = 1000, embed_dim: int = 384, depth: int = 14, num_heads: int = 6,
                 mlp_ratio: float = 3.0, qkv_bias: bool = False, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, token_dim: int = 64, t2t_attn: str = "full", local_context: Pair = None,
                 nb_features: Pair = None, softmax_eps: Pair = None, normalization_eps: Pair = None,
                 feature_seed: int = 0, linear_layer: Optional[LinearFactory] = None) -> None:
        super().__init__()
        if img_size % 16 != 0 or img_size < 16:
            raise ValueError(f"T2T_ViT: img_size must be a positive multiple of 16, got {img_size}")
        if tokens_type not in ("transformer", "performer"):
            raise ValueError(f"T2T_ViT: tokens_type must be 'transformer' or 'performer', got {tokens_type!r}")
        if t2t_attn not in ATTENTION_TYPES:
            raise ValueError(f"T2T_ViT: t2t_attn must be one of {ATTENTION_TYPES}, got {t2t_attn!r}")
        attention = dict(local_context=local_context, nb_features=nb_features, softmax_eps=softmax_eps,
                         normalization_eps=normalization_eps)
        if tokens_type == "performer" and (t2t_attn != "full" or any(v is not None for v in attention.values())):
            raise ValueError("T2T_ViT: t2t_attn and its settings apply to the transformer T2T module "
                             "(t2t_vit_t_14); this model's T2T module is the Token_performer")
        for key, value in ATTENTION_DEFAULTS[t2t_attn].items():
            if attention[key] is None:
                attention[key] = value
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.tokens_to_token = T2TModule(img_size, tokens_type, in_channels, embed_dim, token_dim, t2t_attn,
                                         feature_seed=feature_seed, **attention)
        num_patches = self.tokens_to_token.num_patches
        self.cls_token, self.pos_embed = class_token_and_positions(num_patches, embed_dim)
        self.pos_drop = nn.Dropout(p=drop_rate)
        rates = np.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.CellList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, rates[i],
                  linear_layer=linear_layer)
            for i in range(depth)
        ])
        self.norm = layer_norm(embed_dim, eps=1e-5)
        self.head = nn.Dense(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        init_vit_weights(self)

    def no_weight_decay(self):
        return {"cls_token"}

    def forward_features(self, x: ms.Tensor) -> ms.Tensor:
        x = self.tokens_to_token(x)
        cls = ops.broadcast_to(ops.cast(self.cls_token, x.dtype), (x.shape[0], 1, x.shape[2]))
        x = ops.concat((cls, x), axis=1) + ops.cast(self.pos_embed, x.dtype)
        x = self.pos_drop(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 0]

    def forward_head(self, x: ms.Tensor) -> ms.Tensor:
        return self.head(x)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        return self.forward_head(self.forward_features(x))


def _t2t(variant: str, pretrained: bool, **kwargs) -> T2T_ViT:
    return build_variant(T2T_ViT, variant, _ARCHS, pretrained, default_cfgs, **kwargs)


@register_model
def t2t_vit_12(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> T2T_ViT:
    """T2T-ViT-12 (Performer T2T module, 6.9M parameters)."""
    return _t2t("t2t_vit_12", pretrained, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def t2t_vit_14(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> T2T_ViT:
    """T2T-ViT-14 (Performer T2T module, 21.5M parameters)."""
    return _t2t("t2t_vit_14", pretrained, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def t2t_vit_t_14(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> T2T_ViT:
    """T2T-ViT_t-14 (transformer T2T module with swappable attention, 21.5M parameters)."""
    return _t2t("t2t_vit_t_14", pretrained, num_classes=num_classes, in_channels=in_channels, **kwargs)


register_layer_aliases(__name__, _ARCHS, _t2t, "backbone MLPs")
