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
from .structured import (DenseLinear, LinearFactory, StructuredLinear, check_positive_int, layer_class,
                         layer_settings, linear_class, linear_layer, register_linear, registered_linears)
from .mlp import GatedMlp, Mlp, as_linear_factory, create_mlp
# The structured linears register themselves as they are imported, in this order (``registered_linears()``).
from .monarch import (
    BlockdiagLinear,
    MonarchLinear,
    monarch_factor_shapes,
    monarch_to_dense,
    project_to_monarch,
)
from .pixelfly import (BlockSparseLinear, FlatBlockButterflyLinear, LowRank, PixelflyMlp, SparseLRLinear,
                       butterfly_base_mask, flat_block_butterfly_layout)
from .ssl import SketchStructuredLinear, ssl_index_map, ssl_shift_table
from .lowrank import LowRankLinear, lowrank_rank
from .bdiag_butterfly import BlockdiagButterflyLinear
from .btt import BlockTTLinear  # noqa: F401  (registers mlp_layer: btt)
from .monarchize import LayerSwap, MonarchizeReport, monarchize
from .patch_embed import PatchEmbed

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
    "PixelflyMlp",
    "create_mlp",
    "as_linear_factory",
    "StructuredLinear",
    "DenseLinear",
    "LinearFactory",
    "register_linear",
    "registered_linears",
    "linear_layer",
    "linear_class",
    "layer_class",
    "layer_settings",
    "check_positive_int",
    "SketchStructuredLinear",
    "ssl_shift_table",
    "ssl_index_map",
    "LowRankLinear",
    "lowrank_rank",
    "BlockdiagButterflyLinear",
    "FlatBlockButterflyLinear",
    "SparseLRLinear",
    "BlockSparseLinear",
    "LowRank",
    "butterfly_base_mask",
    "flat_block_butterfly_layout",
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
