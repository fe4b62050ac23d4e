"""Reusable layers of mindcv_ext."""
from .attention import (
    ATTENTION_TYPES,
    FullAttention,
    LocalAttention,
    MultiHeadAttention,
    PerformerAttention,
    SBLocalAttention,
    TokenPerformer,
    create_attention,
    gaussian_orthogonal_random_matrix,
)
from .cpu_kernels import cpu_kernel_library, set_cpu_kernels
from .drop_path import DropPath
from .helpers import GELU, ErfFreeGELU, LayerNorm, gelu, layer_norm, replace_cell, replace_cells, to_2tuple
from .monarch import (
    BlockdiagLinear,
    MonarchLinear,
    blockdiag_butterfly_multiply,
    monarch_factor_shapes,
    monarch_mlp,
    monarch_pair_fusable,
    monarch_to_dense,
    project_to_monarch,
)
from .mlp import MLP_LAYERS, PIXELFLY_DEFAULTS, GatedMlp, Mlp, create_linear
from .monarchize import LayerSwap, MonarchizeReport, monarchize
from .patch_embed import PatchEmbed
from .pixelfly import BlockSparseLinear, LowRank, SparseLRLinear, butterfly_base_mask, flat_block_butterfly_layout

__all__ = [
    "ATTENTION_TYPES",
    "FullAttention",
    "LocalAttention",
    "MultiHeadAttention",
    "PerformerAttention",
    "SBLocalAttention",
    "TokenPerformer",
    "create_attention",
    "gaussian_orthogonal_random_matrix",
    "DropPath",
    "cpu_kernel_library",
    "set_cpu_kernels",
    "PatchEmbed",
    "Mlp",
    "GatedMlp",
    "MLP_LAYERS",
    "PIXELFLY_DEFAULTS",
    "SparseLRLinear",
    "BlockSparseLinear",
    "LowRank",
    "butterfly_base_mask",
    "flat_block_butterfly_layout",
    "create_linear",
    "gelu",
    "layer_norm",
    "LayerNorm",
    "to_2tuple",
    "GELU",
    "ErfFreeGELU",
    "replace_cell",
    "replace_cells",
    "MonarchLinear",
    "BlockdiagLinear",
    "blockdiag_butterfly_multiply",
    "monarch_factor_shapes",
    "monarch_mlp",
    "monarch_pair_fusable",
    "monarch_to_dense",
    "project_to_monarch",
    "monarchize",
    "MonarchizeReport",
    "LayerSwap",
]
