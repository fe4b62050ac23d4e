"""PyTorch twins of the dense, Monarch and Pixelfly layers, timed beside MindSpore's (``--compare_torch``).

``TorchMonarch`` runs fly's formula on the factor shapes ``monarch_factor_shapes`` gives (the same layout as
``MonarchLinear``); ``TorchPixelfly`` runs fly's ``SparseLRLinear`` with its dense backend (the block weight
densified, then ``F.linear``). PyTorch is optional: nothing here is imported until a comparison asks for it.
"""
import math
from typing import Any, Dict, Optional

import numpy as np

from ..layers import flat_block_butterfly_layout, layer_settings, linear_class, monarch_factor_shapes

__all__ = ["TORCH_TWINS", "torch_linear", "torch_modules"]

# The registered layers that have a PyTorch twin.
TORCH_TWINS = ("dense", "monarch", "pixelfly")


def _monarch(torch, in_features: int, out_features: int, nblocks: int):
    class TorchMonarch(torch.nn.Module):
        """fly's Monarch layer: two batched block-diagonal products with a permutation between them."""

        def __init__(self):
            super().__init__()
            shape1, shape2 = monarch_factor_shapes(in_features, out_features, nblocks)
            self.in_features, self.out_features = in_features, out_features
            self.blkdiag1 = torch.nn.Parameter(torch.randn(*shape1) / math.sqrt(shape1[-1]))
            self.blkdiag2 = torch.nn.Parameter(torch.randn(*shape2) / math.sqrt(shape2[-1]))
            self.bias = torch.nn.Parameter(torch.zeros(out_features))

        def forward(self, x):
            k, _, p = self.blkdiag1.shape
            blocks, s, r = self.blkdiag2.shape
            batch = x.shape[0]
            x = torch.nn.functional.pad(x, (0, k * p - x.shape[-1]))
            h = torch.bmm(x.reshape(batch, k, p).transpose(0, 1), self.blkdiag1.transpose(-1, -2))
            h = h.transpose(0, 1).reshape(batch, r, blocks).permute(2, 0, 1)
            y = torch.bmm(h, self.blkdiag2.transpose(-1, -2))
            return y.permute(1, 2, 0).reshape(batch, s * blocks)[:, :self.out_features] + self.bias

    return TorchMonarch()


def _pixelfly(torch, in_features: int, out_features: int, settings: Dict[str, Any]):
    class TorchPixelfly(torch.nn.Module):
        """y = lerp(sparse(x), low_rank(x), sigmoid(gate(x))) + bias, the sparse part on the block-padded input."""

        def __init__(self):
            super().__init__()
            block, rank = settings["block"], settings["rank"]
            if isinstance(rank, float):
                rank = int(rank * min(in_features, out_features))
            self.in_features, self.out_features = in_features, out_features
            self.in_ext, self.out_ext = math.ceil(in_features / block) * block, math.ceil(out_features / block) * block
            layout = flat_block_butterfly_layout(self.out_ext, self.in_ext, settings["butterfly_size"],
                                                 settings["n_factors"], block, settings["global_size"],
                                                 settings["shuffle"])
            self.register_buffer("layout", torch.from_numpy(np.ascontiguousarray(layout)))
            self.weight = torch.nn.Parameter(torch.randn(int(layout.sum()), block, block) / math.sqrt(in_features))
            self.lr_weight1 = torch.nn.Parameter(torch.randn(rank, in_features) / math.sqrt(in_features))
            self.lr_weight2 = torch.nn.Parameter(torch.randn(out_features, rank) / math.sqrt(rank))
            self.gate = torch.nn.Linear(in_features, 1) if settings["gating"] else None
            self.bias = torch.nn.Parameter(torch.zeros(out_features))

        def dense_weight(self):  # fly's densify: scatter the blocks into a zero (out_ext, in_ext) matrix
            rows, cols = self.layout.shape
            b = self.weight.shape[-1]
            blocks = self.weight.new_zeros(rows * cols, b, b)
            blocks = blocks.index_copy(0, torch.nonzero(self.layout.reshape(-1)).squeeze(1), self.weight)
            return blocks.reshape(rows, cols, b, b).transpose(1, 2).reshape(rows * b, cols * b)

        def forward(self, x):
            padded = torch.nn.functional.pad(x, (0, self.in_ext - self.in_features))
            sparse = torch.nn.functional.linear(padded, self.dense_weight())[..., :self.out_features]
            low_rank = torch.nn.functional.linear(torch.nn.functional.linear(x, self.lr_weight1), self.lr_weight2)
            gate = torch.sigmoid(self.gate(x)) if self.gate is not None else 0.5
            return torch.lerp(sparse, low_rank, gate) + self.bias

    return TorchPixelfly()


def torch_linear(layer: str, in_features: int, out_features: int, **settings: Any):
    """The PyTorch twin of the registered layer ``layer`` with ``settings`` (its defaults for the rest); None for
    a layer without one (``TORCH_TWINS``)."""
    import torch

    if layer not in TORCH_TWINS:
        return None
    settings = dict(layer_settings(linear_class(layer)), **settings)
    if layer == "dense":
        return torch.nn.Linear(in_features, out_features)
    if layer == "monarch":
        return _monarch(torch, in_features, out_features, settings["nblocks"])
    return _pixelfly(torch, in_features, out_features, settings)


def torch_modules(layers: Dict[str, Dict[str, Any]], in_features: int, out_features: int,
                  hidden: Optional[int] = None) -> Dict[str, Any]:
    """The PyTorch twins of ``layers`` (name -> settings) that have one: single layers ``in -> out``, or, with
    ``hidden``, MLPs ``in -> hidden -> in`` with a GELU between."""
    import torch

    modules = {}
    for name, settings in layers.items():
        if name not in TORCH_TWINS:
            continue
        if hidden is None:
            modules[name] = torch_linear(name, in_features, out_features, **settings)
        else:
            modules[name] = torch.nn.Sequential(torch_linear(name, in_features, hidden, **settings),
                                                torch.nn.GELU(), torch_linear(name, hidden, in_features, **settings))
    return modules
