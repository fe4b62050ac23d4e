"""
MindSpore implementation of `GPT-2`, with swappable MLP layers, for fly's structured-MLP benchmark.
Refer to "Language Models are Unsupervised Multitask Learners" (Radford et al., 2019) and, for the structured MLPs,
"SS1: Accelerating Inference with Fast and Expressive Sketch Structured Transform" (Desai et al., NeurIPS 2024)
and "Monarch" (Dao et al., ICML 2022).

The model of kimiasa/Experiments' ``ssl_bench_mlp`` benchmark (``src/models/gpt2.py``, branch ``inference``): HF
GPT-2 with the MLP replaced by ``fc1 -> GELU (exact) -> fc2``, fc1/fc2 any registered linear layer. The state-dict
layout is the fork's, so its checkpoints convert one to one: ``transformer.h.N.attn.c_attn`` and ``c_proj`` are HF
``Conv1D`` weights stored (in, out), ``mlp.fc1``/``mlp.fc2`` the swapped layers, and ``lm_head.weight`` tied to
``transformer.wte.weight``.

``causal=True`` (the default) is GPT-2 as published. The fork's benchmark calls ``scaled_dot_product_attention``
with ``is_causal=False``, so every position attends to every other; ``causal=False`` reproduces that model.
Neither applies the ``1/(layer_idx+1)`` attention factor its configuration names (the fork does not).
"""
import math
from typing import Any, Dict, Optional

import numpy as np

import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import initializer

from ..layers import LinearFactory, check_positive_int, create_mlp, gelu, layer_norm
from ..layers.weight_init import normal_
from .helpers import build_variant, register_text_model

__all__ = ["GPT2LMHeadModel", "GPT2Block", "GPT2Attention", "Conv1D", "GPT2_SIZES"]

# The published sizes (HF's gpt2, gpt2-medium, gpt2-large, gpt2-xl): n_embd, n_layer, n_head.
GPT2_SIZES: Dict[str, Dict[str, int]] = {
    "gpt2": dict(n_embd=768, n_layer=12, n_head=12),
    "gpt2_medium": dict(n_embd=1024, n_layer=24, n_head=16),
    "gpt2_large": dict(n_embd=1280, n_layer=36, n_head=20),
    "gpt2_xl": dict(n_embd=1600, n_layer=48, n_head=25),
}
_bmm = ops.BatchMatMul()
_bmm_nt = ops.BatchMatMul(transpose_b=True)


def _cfg(**kwargs) -> Dict[str, Any]:
    # A language model: the "input" is a token sequence, so there is no crop, interpolation, mean or std.
    return {"url": "", "input_size": (1024,), "vocab_size": 50257, "classifier": "lm_head",
            "first_conv": "transformer.wte", **kwargs}


default_cfgs = {name: _cfg() for name in GPT2_SIZES}


class Conv1D(nn.Cell):
    """HF's ``Conv1D``: a linear layer whose ``weight`` is stored (in, out); ``y = x @ weight + bias``."""

    def __init__(self, in_features: int, out_features: int, std: float = 0.02) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = ms.Parameter(initializer("zeros", (in_features, out_features), ms.float32), name="weight")
        normal_(self.weight, std)
        self.bias = ms.Parameter(initializer("zeros", (out_features,), ms.float32), name="bias")

    def macs_per_token(self) -> int:
        """Multiply-accumulates per input row, the bias aside (what every linear layer declares)."""
        return self.in_features * self.out_features

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        lead_shape = x.shape[:-1]
        y = ops.matmul(x.reshape(-1, self.in_features), ops.cast(self.weight, x.dtype))
        return (y + ops.cast(self.bias, y.dtype)).reshape(lead_shape + (self.out_features,))


class Embedding(nn.Cell):
    """A lookup table named ``weight``, as PyTorch's ``nn.Embedding`` (MindSpore's names it ``embedding_table``)."""

    def __init__(self, num_embeddings: int, dim: int, std: float = 0.02) -> None:
        super().__init__()
        self.weight = ms.Parameter(initializer("zeros", (num_embeddings, dim), ms.float32), name="weight")
        normal_(self.weight, std)

    def construct(self, ids: ms.Tensor) -> ms.Tensor:
        return ops.gather(self.weight, ids, 0)


class GPT2Attention(nn.Cell):
    """Multi-head self-attention with a fused qkv ``Conv1D``; causal, or over every position (the fork's)."""

    def __init__(self, n_embd: int, n_head: int, n_positions: int, causal: bool = True, attn_pdrop: float = 0.0,
                 resid_pdrop: float = 0.0, proj_std: float = 0.02) -> None:
        super().__init__()
        self.n_head, self.head_dim, self.causal = n_head, n_embd // n_head, causal
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.c_attn = Conv1D(n_embd, 3 * n_embd)
        self.c_proj = Conv1D(n_embd, n_embd, std=proj_std)
        self.attn_dropout = nn.Dropout(p=attn_pdrop)
        self.resid_dropout = nn.Dropout(p=resid_pdrop)
        # Added to the scores of positions a query may not see; finite, so no row is ever all -inf.
        future = np.triu(np.ones((n_positions, n_positions), np.float32), k=1)
        self.future_mask = ms.Tensor(future * np.float32(-1e9))

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        batch, tokens, channels = x.shape
        qkv = self.c_attn(x).reshape(batch, tokens, 3, self.n_head, self.head_dim).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, T, D) each
        scores = _bmm_nt(q.reshape(-1, tokens, self.head_dim), k.reshape(-1, tokens, self.head_dim)) * self.scale
        if self.causal:
            scores = scores + ops.cast(self.future_mask[:tokens, :tokens], scores.dtype)
        weights = self.attn_dropout(ops.softmax(scores, axis=-1))
        out = _bmm(weights, v.reshape(-1, tokens, self.head_dim))
        out = out.reshape(batch, self.n_head, tokens, self.head_dim).transpose(0, 2, 1, 3).reshape(batch, tokens,
                                                                                                     channels)
        return self.resid_dropout(self.c_proj(out))


class GPT2Block(nn.Cell):
    """Pre-LayerNorm attention and MLP, each residual."""

    def __init__(self, n_embd: int, n_head: int, n_positions: int, n_inner: int, causal: bool, attn_pdrop: float,
                 resid_pdrop: float, layer_norm_epsilon: float, proj_std: float,
                 linear_layer: Optional[LinearFactory] = None) -> None:
        super().__init__()
        self.ln_1 = layer_norm(n_embd, eps=layer_norm_epsilon)
        self.attn = GPT2Attention(n_embd, n_head, n_positions, causal, attn_pdrop, resid_pdrop, proj_std)
        self.ln_2 = layer_norm(n_embd, eps=layer_norm_epsilon)
        self.mlp = create_mlp(n_embd, n_inner, drop=resid_pdrop, linear_layer=linear_layer, act_layer=gelu,
                              drop_between_fcs=False)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Cell):
    """``GPT2LMHeadModel.transformer``: embeddings, blocks, final LayerNorm (HF's ``GPT2Model``)."""

    def __init__(self, vocab_size: int, n_positions: int, n_embd: int, blocks, embd_pdrop: float,
                 layer_norm_epsilon: float, std: float) -> None:
        super().__init__()
        self.wte = Embedding(vocab_size, n_embd, std)
        self.wpe = Embedding(n_positions, n_embd, std)
        self.drop = nn.Dropout(p=embd_pdrop)
        self.h = nn.CellList(blocks)
        self.ln_f = layer_norm(n_embd, eps=layer_norm_epsilon)
        self.positions = ms.Tensor(np.arange(n_positions, dtype=np.int32))


class GPT2LMHeadModel(nn.Cell):
    r"""GPT-2 language model with the MLP's linear layers built by ``linear_layer``.

    Args:
        vocab_size: tokens of the vocabulary. Default: 50257.
        n_positions: longest sequence (rows of the position table). Default: 1024.
        n_embd: width. Default: 768.
        n_layer: blocks. Default: 12.
        n_head: attention heads (``n_embd`` must be a multiple). Default: 12.
        n_inner: MLP width (None: ``4 * n_embd``). Default: None.
        causal: the causal mask of GPT-2; False attends everywhere, as the fork's benchmark. Default: True.
        resid_pdrop, embd_pdrop, attn_pdrop: dropouts, HF's names. Default: 0.1 each.
        layer_norm_epsilon: Default: 1e-5.
        initializer_range: std of the normal initialisation (c_proj: divided by sqrt(2 * n_layer)). Default: 0.02.
        linear_layer: builds fc1/fc2: a registered linear class or a partial of one with its settings, e.g.
            ``linear_layer("ssl", redn_factor=4)`` for fly's ssl4x. Default: dense.

    Inputs: token ids ``(B, T)``, int32 or int64, ``T <= n_positions``. Outputs: logits ``(B, T, vocab_size)``.
    """

    # Buffers of HF's attention that this forward recomputes (the mask) or never uses: read, checked, not loaded.
    checkpoint_ignored = ((r"\.attn\.(bias|masked_bias)$", "GPT-2's attention-mask buffers, which the model "
                                                           "recomputes"),)
    # lm_head.weight is transformer.wte.weight; a checkpoint may hold both (with the same values) or only wte.
    checkpoint_tied = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, vocab_size: int = 50257, n_positions: int = 1024, n_embd: int = 768, n_layer: int = 12,
                 n_head: int = 12, n_inner=None, causal: bool = True,
                 resid_pdrop: float = 0.1, embd_pdrop: float = 0.1, attn_pdrop: float = 0.1,
                 layer_norm_epsilon: float = 1e-5, initializer_range: float = 0.02,
                 linear_layer: Optional[LinearFactory] = None) -> None:
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("n_positions", n_positions), ("n_embd", n_embd),
                            ("n_layer", n_layer), ("n_head", n_head)):
            check_positive_int("GPT2LMHeadModel", name, value)
        if n_embd % n_head:
            raise ValueError(f"GPT2LMHeadModel: n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
        self.vocab_size, self.n_positions, self.n_embd = vocab_size, n_positions, n_embd
        self.causal = bool(causal)
        n_inner = n_inner or 4 * n_embd
        proj_std = initializer_range / math.sqrt(2 * n_layer)  # GPT-2's scaled init of the residual projections
        blocks = [GPT2Block(n_embd, n_head, n_positions, n_inner, self.causal, attn_pdrop, resid_pdrop,
                            layer_norm_epsilon, proj_std, linear_layer=linear_layer) for _ in range(n_layer)]
        self.transformer = _Transformer(vocab_size, n_positions, n_embd, blocks, embd_pdrop, layer_norm_epsilon,
                                        initializer_range)
        for name, cell in self.cells_and_names():
            if isinstance(cell, nn.Dense):
                std = proj_std if name.endswith("mlp.fc2") else initializer_range
                normal_(cell.weight, std)
                if cell.has_bias:
                    cell.bias.set_data(initializer("zeros", cell.bias.shape, ms.float32))

    def forward_features(self, input_ids: ms.Tensor) -> ms.Tensor:
        tokens = input_ids.shape[1]
        if tokens > self.n_positions:
            raise ValueError(f"GPT2LMHeadModel: the sequence has {tokens} tokens; the model takes at most "
                             f"n_positions={self.n_positions}")
        t = self.transformer
        x = t.wte(input_ids) + t.wpe(t.positions[:tokens])
        x = t.drop(x)
        for block in t.h:
            x = block(x)
        return t.ln_f(x)

    def forward_head(self, x: ms.Tensor) -> ms.Tensor:
        batch, tokens, channels = x.shape
        wte = ops.cast(self.transformer.wte.weight, x.dtype)
        logits = ops.matmul(x.reshape(-1, channels), wte.transpose(1, 0))  # the tied lm_head
        return logits.reshape(batch, tokens, self.vocab_size)

    def construct(self, input_ids: ms.Tensor) -> ms.Tensor:
        return self.forward_head(self.forward_features(input_ids))


def _gpt2(variant: str, pretrained: bool, num_classes: int, in_channels: int, **kwargs) -> GPT2LMHeadModel:
    # mindcv's create_model passes num_classes and in_channels to every entrypoint; a language model has neither
    # (vocab_size sets its output), so only their defaults are accepted.
    if num_classes not in (None, 1000) or in_channels not in (None, 3):
        raise ValueError(f"{variant}: a language model takes vocab_size, not num_classes or in_channels "
                         f"(got num_classes={num_classes}, in_channels={in_channels})")
    return build_variant(GPT2LMHeadModel, variant, GPT2_SIZES, pretrained, default_cfgs, **kwargs)


@register_text_model
def gpt2(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> GPT2LMHeadModel:
    """GPT-2 small (124M parameters): 768 wide, 12 layers, 12 heads. Sizes and the MLP layer are keywords."""
    return _gpt2("gpt2", pretrained, num_classes, in_channels, **kwargs)


@register_text_model
def gpt2_medium(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> GPT2LMHeadModel:
    """GPT-2 medium (355M parameters): 1024 wide, 24 layers, 16 heads."""
    return _gpt2("gpt2_medium", pretrained, num_classes, in_channels, **kwargs)


@register_text_model
def gpt2_large(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> GPT2LMHeadModel:
    """GPT-2 large (774M parameters): 1280 wide, 36 layers, 20 heads."""
    return _gpt2("gpt2_large", pretrained, num_classes, in_channels, **kwargs)


@register_text_model
def gpt2_xl(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> GPT2LMHeadModel:
    """GPT-2 XL (1.56B parameters): 1600 wide, 48 layers, 25 heads."""
    return _gpt2("gpt2_xl", pretrained, num_classes, in_channels, **kwargs)
