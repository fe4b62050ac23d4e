"""
MindSpore implementation of the `Dynamic Vision Transformer` (DVT) on T2T-ViT-12/14.
Refer to "Not All Images are Worth 16x16 Words: Dynamic Transformers for Efficient Image Recognition"
(Wang et al., NeurIPS 2021, https://arxiv.org/abs/2105.15075).

A DVT cascades three independent T2T-ViTs that read the same image as 7x7, 10x10 and 14x14 tokens (at 224 px).
Every exit's logits are returned, in training and in evaluation; at inference a sample may stop at the first
exit that is confident enough (``mindcv_ext.engine.early_exit``). The later transformers reuse the earlier one:

- feature reuse: each block of exit k reads the upstream model's final tokens (before its norm) through a
  LayerNorm + MLP(D -> 128 -> 48) (``feature_resuse_mlp``, the reference's spelling), resampled to its own grid
  and concatenated to the input of its MLP;
- relation reuse: the upstream pre-softmax attention logits of all blocks pass through two 1x1 convolutions
  (``relation_reuse_conv``), are resampled to the new token grid, and block l adds its share to its logits.

Numerically identical to blackfeather-wang/Dynamic-Vision-Transformer (commit 22cc895) and loads its released
(``model_state_dict``) and training (``state_dict``/``state_dict_ema``) checkpoints. The reference resamples
with nearest x2 upsampling followed by adaptive average pooling; that is a fixed linear map ``M`` per axis, so
features become ``kron(M, M) E`` and relations ``P R P^T`` with ``P = diag(1, kron(M, M))`` (cls untouched).
"""
import math
from typing import Optional, Tuple

import numpy as np

import mindspore as ms
from mindspore import nn, ops

from mindcv.models.registry import register_model

from ..layers import DropPath, LinearFactory, Mlp, create_mlp, gelu, layer_norm
from ..layers.attention import MultiHeadAttention
from .helpers import build_variant, make_cfg
from .t2t_vit import T2TModule, class_token_and_positions, init_vit_weights

__all__ = ["DVT", "resample_matrix", "exit_grids"]

_ARCHS = {
    "dvt_t2t_vit_12": dict(embed_dim=256, depth=12, num_heads=4, mlp_ratio=2.0),
    "dvt_t2t_vit_14": dict(embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.0),
}

# First soft split (kernel, stride, padding) of each exit's T2T module: 7x7, 10x10 and 14x14 tokens at 224 px.
EXIT_SPLITS = ((14, 8, 3), (11, 6, 5), (7, 4, 2))
EXIT_NAMES = ("less_less_token", "less_token", "normal_token")
REUSE_DIM, REUSE_HIDDEN = 48, 128

# The reference's model names.
ALIASES = {"DVT_T2t_vit_12": "dvt_t2t_vit_12", "DVT_T2t_vit_14": "dvt_t2t_vit_14"}

# inference.py's evaluation transform: resize 256, centre crop 224, bicubic, ImageNet mean and std.
default_cfgs = {name: make_cfg(crop_pct=0.875, first_conv="less_less_token.tokens_to_token.attention1.kqv",
                               classifier="normal_token.head")
                for name in _ARCHS}


def exit_grids(img_size: int) -> Tuple[int, int, int]:
    """Token grid side of each exit for ``img_size`` inputs (7, 10, 14 at 224)."""
    grids = []
    for kernel, stride, padding in EXIT_SPLITS:
        side = (img_size + 2 * padding - kernel) // stride + 1
        for _ in range(2):  # the two 3x3 stride-2 soft splits
            side = (side - 1) // 2 + 1
        grids.append(side)
    return tuple(grids)


def resample_matrix(source: int, target: int) -> np.ndarray:
    """(target, source) weights of nearest x2 upsampling then PyTorch's adaptive average pooling to ``target``."""
    upsampled = 2 * source
    nearest = np.zeros((upsampled, source))
    nearest[np.arange(upsampled), np.arange(upsampled) // 2] = 1.0
    pool = np.zeros((target, upsampled))
    for i in range(target):
        start, end = (i * upsampled) // target, -((-(i + 1) * upsampled) // target)
        pool[i, start:end] = 1.0 / (end - start)
    return pool @ nearest


def _grid_resample(source: int, target: int) -> np.ndarray:
    """(target**2, source**2): the separable resampling of a row-major token grid."""
    matrix = resample_matrix(source, target)
    return np.kron(matrix, matrix)


class RelationAttention(MultiHeadAttention):
    """Multi-head attention that adds reused relations to its logits and also returns those logits."""

    def construct(self, x: ms.Tensor, relation: Optional[ms.Tensor] = None):
        batch, tokens, channels = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        logits = ops.matmul(q, k.swapaxes(-2, -1)) * self.scale
        if relation is not None:
            logits = logits + relation.astype(logits.dtype)
        attn = self.attn_drop(ops.softmax(logits, axis=-1))
        x = ops.matmul(attn, v).transpose(0, 2, 1, 3).reshape(batch, tokens, channels)
        return self.proj_drop(self.proj(x)), logits


class DVTBlock(nn.Cell):
    """A T2T-ViT block that takes reused relations and, with ``upstream_grid``, the upstream model's features."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop: float, attn_drop: float,
                 drop_path: float, grid: int, upstream_grid: Optional[int] = None,
                 linear_layer: Optional[LinearFactory] = None) -> None:
        super().__init__()
        self.feature_reuse = upstream_grid is not None
        reuse = REUSE_DIM if self.feature_reuse else 0
        self.norm1 = layer_norm(dim, eps=1e-5)
        self.attn = RelationAttention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = layer_norm(dim + reuse, eps=1e-5)
        self.mlp = create_mlp(dim + reuse, int(dim * mlp_ratio), dim, drop=drop, linear_layer=linear_layer)
        if self.feature_reuse:
            self.feature_resuse_mlp = nn.SequentialCell([layer_norm(dim, eps=1e-5),
                                                         Mlp(dim, REUSE_HIDDEN, REUSE_DIM, drop=drop)])
            # Transposed, so the resampling is a plain (..., hw_up) @ (hw_up, hw) product.
            self.feature_resample = ms.Tensor(_grid_resample(upstream_grid, grid).T.astype(np.float32))

    def reuse_features(self, features: ms.Tensor) -> ms.Tensor:
        """(B, 1 + hw_up, D) upstream tokens -> (B, 1 + hw, 48); the cls position gets zeros."""
        reused = self.feature_resuse_mlp(features)[:, 1:]
        reused = ops.matmul(reused.swapaxes(1, 2), self.feature_resample.astype(reused.dtype)).swapaxes(1, 2)
        return ops.concat((ops.zeros_like(reused[:, :1]), reused), axis=1)

    def construct(self, x: ms.Tensor, features: Optional[ms.Tensor] = None, relation: Optional[ms.Tensor] = None):
        attended, logits = self.attn(self.norm1(x), relation)
        x = x + self.drop_path(attended)
        mlp_input = x
        if self.feature_reuse:
            mlp_input = ops.concat((x, self.reuse_features(features).astype(x.dtype)), axis=-1)
        return x + self.drop_path(self.mlp(self.norm2(mlp_input))), logits


class DVTExit(nn.Cell):
    """One exit of a DVT: a T2T-ViT whose blocks can reuse the upstream exit's features and attention logits.

    ``construct(x, features, relations)`` returns ``(logits, tokens, relations)``: the class logits, the final
    tokens before the norm (B, 1 + hw, D) and every block's pre-softmax attention logits (B, depth*heads, n, n),
    which the next exit reuses.
    """

    def __init__(self, first_split: Tuple[int, int, int], img_size: int, in_channels: int, num_classes: int,
                 embed_dim: int, depth: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop_rate: float,
                 attn_drop_rate: float, drop_path_rate: float, token_dim: int, upstream_grid: Optional[int] = None,
                 feature_reuse: bool = False, relation_reuse: bool = False,
                 linear_layer: Optional[LinearFactory] = None) -> None:
        super().__init__()
        self.depth, self.num_heads = depth, num_heads
        self.num_features = self.embed_dim = embed_dim
        self.feature_reuse, self.relation_reuse = feature_reuse, relation_reuse
        self.tokens_to_token = T2TModule(img_size, "performer", in_channels, embed_dim, token_dim,
                                         first_split=first_split)
        self.grid = self.tokens_to_token.grid
        num_patches = self.tokens_to_token.num_patches
        self.cls_token, self.pos_embed = class_token_and_positions(num_patches, embed_dim)
        self.pos_drop = nn.Dropout(p=drop_rate)
        rates = np.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.CellList([
            DVTBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, rates[i], self.grid,
                     upstream_grid if feature_reuse else None, linear_layer=linear_layer)
            for i in range(depth)
        ])
        self.norm = layer_norm(embed_dim, eps=1e-5)
        self.head = nn.Dense(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if relation_reuse:
            channels = depth * num_heads
            self.relation_reuse_conv = nn.SequentialCell([
                nn.Conv2d(channels, channels * 3, 1, pad_mode="valid", has_bias=True), gelu(),
                nn.Conv2d(channels * 3, channels, 1, pad_mode="valid", has_bias=True)])
            resample = np.zeros((num_patches + 1, upstream_grid ** 2 + 1))
            resample[0, 0] = 1.0
            resample[1:, 1:] = _grid_resample(upstream_grid, self.grid)
            self.relation_resample = ms.Tensor(resample.T.astype(np.float32))  # P^T: (n_up, n)
        self._init_weights()

    def _init_weights(self) -> None:
        init_vit_weights(self)
        for _, cell in self.cells_and_names():
            if isinstance(cell, nn.Conv2d):  # PyTorch's default Conv2d init, as the reference keeps it
                fan_in = cell.weight.shape[1]
                cell.weight.set_data(ms.common.initializer.initializer(
                    ms.common.initializer.HeUniform(negative_slope=math.sqrt(5)), cell.weight.shape, ms.float32))
                bound = 1.0 / math.sqrt(fan_in)
                cell.bias.set_data(ms.common.initializer.initializer(
                    ms.common.initializer.Uniform(bound), cell.bias.shape, ms.float32))

    def reuse_relations(self, relations: ms.Tensor) -> ms.Tensor:
        """(B, depth*heads, n_up, n_up) upstream logits -> (B, depth*heads, n, n) logits to add, ``P R P^T``."""
        relations = self.relation_reuse_conv(relations)
        resample = self.relation_resample.astype(relations.dtype)
        relations = ops.matmul(relations, resample)  # keys
        return ops.matmul(relations.swapaxes(-1, -2), resample).swapaxes(-1, -2)  # queries

    def forward_features(self, x: ms.Tensor, features: Optional[ms.Tensor] = None,
                         relations: Optional[ms.Tensor] = None):
        x = self.tokens_to_token(x)
        cls = ops.broadcast_to(ops.cast(self.cls_token, x.dtype), (x.shape[0], 1, x.shape[2]))
        x = ops.concat((cls, x), axis=1) + ops.cast(self.pos_embed, x.dtype)
        x = self.pos_drop(x)
        reused = self.reuse_relations(relations) if self.relation_reuse else None
        if not self.feature_reuse:
            features = None
        logits = ()
        for index in range(self.depth):
            relation = reused[:, index * self.num_heads:(index + 1) * self.num_heads] if self.relation_reuse else None
            x, block_logits = self.blocks[index](x, features, relation)
            logits = logits + (block_logits,)
        return self.norm(x)[:, 0], x, ops.concat(logits, axis=1)

    def forward_head(self, x: ms.Tensor) -> ms.Tensor:
        return self.head(x)

    def construct(self, x: ms.Tensor, features: Optional[ms.Tensor] = None, relations: Optional[ms.Tensor] = None):
        pooled, tokens, logits = self.forward_features(x, features, relations)
        return self.forward_head(pooled), tokens, logits


class DVT(nn.Cell):
    r"""Dynamic Vision Transformer: three T2T-ViT exits (7x7, 10x10, 14x14 tokens at 224 px) with reuse.

    ``construct`` returns the last exit's logits, as every mindcv model returns its logits. Multi-exit training
    (the sum of the exits' losses), early exit and the threshold search need all three: ``all_exits=True``, or
    ``return_all_exits()`` before the network first runs, makes ``construct`` return ``(exit0, exit1, exit2)``.
    ``multi_exit()`` is the interface train.py and eval.py ask of a model (``mindcv_ext.engine.early_exit``).

    Args:
        img_size: input resolution; 224 gives the reference's 7/10/14 token grids. Default: 224.
        in_channels, num_classes: the usual. embed_dim, depth, num_heads, mlp_ratio, qkv_bias: each exit's
            T2T-ViT (all three share them; T2T-ViT-12 or -14).
        drop_rate, attn_drop_rate, drop_path_rate: regularisation of every exit.
        token_dim: width inside the T2T modules. Default: 64.
        feature_reuse, relation_reuse: the two reuse mechanisms of exits 1 and 2. Default: True.
        all_exits: return every exit's logits. Default: False.
        linear_layer: builds the blocks' MLP fc1/fc2: a registered linear class or a partial of one with its
            settings. Default: dense.
    """

    exit_names = EXIT_NAMES

    def __init__(self, img_size: int = 224, in_channels: int = 3, num_classes: int = 1000, embed_dim: int = 256,
                 depth: int = 12, num_heads: int = 4, mlp_ratio: float = 2.0, qkv_bias: bool = False,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1,
                 token_dim: int = 64, feature_reuse: bool = True, relation_reuse: bool = True,
                 all_exits: bool = False, linear_layer: Optional[LinearFactory] = None) -> None:
        super().__init__()
        self.all_exits = all_exits
        grids = exit_grids(img_size)
        if min(grids) < 1:
            raise ValueError(f"DVT: img_size {img_size} is too small for the exits' soft splits (token grids "
                             f"{grids}); 224 px gives the reference's 7x7, 10x10 and 14x14")
        if embed_dim % num_heads:
            raise ValueError(f"DVT: embed_dim {embed_dim} must be a multiple of num_heads {num_heads}")
        self.num_classes = num_classes
        self.img_size = img_size
        self.grids = grids
        common = dict(img_size=img_size, in_channels=in_channels, num_classes=num_classes, embed_dim=embed_dim,
                      depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_rate=drop_rate,
                      attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate, token_dim=token_dim,
                      linear_layer=linear_layer)
        self.less_less_token = DVTExit(EXIT_SPLITS[0], **common)
        self.less_token = DVTExit(EXIT_SPLITS[1], upstream_grid=grids[0], feature_reuse=feature_reuse,
                                  relation_reuse=relation_reuse, **common)
        self.normal_token = DVTExit(EXIT_SPLITS[2], upstream_grid=grids[1], feature_reuse=feature_reuse,
                                    relation_reuse=relation_reuse, **common)
        self.num_features = embed_dim

    def no_weight_decay(self):
        return set()  # the reference's DVT wrapper has none, so its cls tokens are decayed

    def return_all_exits(self, enabled: bool = True) -> "DVT":
        """Make ``construct`` return every exit's logits (set it before the network is first compiled)."""
        self.all_exits = enabled
        return self

    def multi_exit(self) -> Tuple[float, ...]:
        """The multi-exit interface (``mindcv_ext.engine.early_exit.use_all_exits`` finds a model by it): from now
        on ``construct`` returns every exit's logits, first exit first (call it before the network is first
        compiled). Returns each exit's cumulative cost in GMACs per image (``exit_macs``), one per exit."""
        self.return_all_exits()
        return self.exit_macs()

    def forward_exits(self, x: ms.Tensor):
        exit0, tokens, relations = self.less_less_token(x)
        exit1, tokens, relations = self.less_token(x, tokens, relations)
        exit2, _, _ = self.normal_token(x, tokens, relations)
        return exit0, exit1, exit2

    def construct(self, x: ms.Tensor):
        exits = self.forward_exits(x)
        if self.all_exits:
            return exits
        return exits[-1]

    def exit_macs(self) -> Tuple[float, float, float]:
        """Cumulative multiply-accumulates (GMACs) of stopping at each exit, for one image.

        Counts the linear layers, the attention and Performer products, the reuse MLPs and convolutions; like
        the reference's figures it leaves out LayerNorm, softmax, GELU and the reuse resampling (a pooling there).
        """
        totals, total = [], 0.0
        for name in EXIT_NAMES:
            total += _exit_macs(getattr(self, name))
            totals.append(total / 1e9)
        return tuple(totals)


def _exit_macs(stage: DVTExit) -> float:
    t2t = stage.tokens_to_token
    macs = 0.0
    for performer, side in ((t2t.attention1, t2t.grids[0]), (t2t.attention2, t2t.grids[1])):
        tokens, dim, emb, m = side * side, performer.kqv.in_channels, performer.emb, performer.m
        macs += tokens * (dim * 3 * emb + 2 * m * emb + m + 2 * m * emb + emb * emb + 2 * emb * emb)
    macs += stage.grid ** 2 * t2t.project.in_channels * t2t.project.out_channels
    n, dim = stage.grid ** 2 + 1, stage.embed_dim
    for block in stage.blocks:
        macs += n * (4 * dim * dim + block.mlp.fc1.macs_per_token() + block.mlp.fc2.macs_per_token()) + 2 * n * n * dim
        if block.feature_reuse:
            up_tokens = block.feature_resample.shape[0] + 1
            macs += up_tokens * (dim * REUSE_HIDDEN + REUSE_HIDDEN * REUSE_DIM)
    if stage.relation_reuse:
        channels, n_up = stage.depth * stage.num_heads, stage.relation_resample.shape[0]
        macs += n_up * n_up * 2 * channels * channels * 3
    if isinstance(stage.head, nn.Dense):
        macs += stage.head.in_channels * stage.head.out_channels
    return float(macs)


def _dvt(variant: str, pretrained: bool, **kwargs) -> DVT:
    return build_variant(DVT, variant, _ARCHS, pretrained, default_cfgs, **kwargs)


@register_model
def dvt_t2t_vit_12(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> DVT:
    """DVT on T2T-ViT-12: exits at 7x7, 10x10 and 14x14 tokens (22.5M parameters)."""
    return _dvt("dvt_t2t_vit_12", pretrained, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def dvt_t2t_vit_14(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> DVT:
    """DVT on T2T-ViT-14: exits at 7x7, 10x10 and 14x14 tokens (67.9M parameters)."""
    return _dvt("dvt_t2t_vit_14", pretrained, num_classes=num_classes, in_channels=in_channels, **kwargs)
