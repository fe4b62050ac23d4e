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
from .drop_path import DropPath
from .helpers import ErfFreeGELU, gelu, is_exact_gelu, layer_norm, replace_cell, replace_cells, to_2tuple
from .monarch import (
    BlockdiagLinear,
    MonarchLinear,
    monarch_factor_shapes,
    monarch_to_dense,
    project_to_monarch,
)
from .bdiag_butterfly import BlockdiagButterflyLinear
from .lowrank import LowRankLinear, lowrank_rank
from .mlp import (GENERIC_MLP_LAYERS, LINEAR_SETTINGS, MLP_LAYERS, PIXELFLY_DEFAULTS, GatedMlp, Mlp, create_linear,
                  linear_settings)
from .monarchize import LayerSwap, MonarchizeReport, monarchize
from .patch_embed import PatchEmbed
from .pixelfly import (BlockSparseLinear, FlatBlockButterflyLinear, LowRank, SparseLRLinear, butterfly_base_mask,
                       flat_block_butterfly_layout)
from .ssl import SketchStructuredLinear, ssl_index_map, ssl_shift_table

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
    "PatchEmbed",
    "Mlp",
    "GatedMlp",
    "MLP_LAYERS",
    "GENERIC_MLP_LAYERS",
    "LINEAR_SETTINGS",
    "linear_settings",
    "SketchStructuredLinear",
    "ssl_shift_table",
    "ssl_index_map",
    "LowRankLinear",
    "lowrank_rank",
    "BlockdiagButterflyLinear",
    "FlatBlockButterflyLinear",
    "PIXELFLY_DEFAULTS",
    "SparseLRLinear",
    "BlockSparseLinear",
    "LowRank",
    "butterfly_base_mask",
    "flat_block_butterfly_layout",
    "create_linear",
    "gelu",
    "layer_norm",
    "to_2tuple",
    "ErfFreeGELU",
    "is_exact_gelu",
    "replace_cell",
    "replace_cells",
    "MonarchLinear",
    "BlockdiagLinear",
    "monarch_factor_shapes",
    "monarch_to_dense",
    "project_to_monarch",
    "monarchize",
    "MonarchizeReport",
    "LayerSwap",
]
