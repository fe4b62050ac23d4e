"""Reusable layers of mindcv_ext."""
from .monarch import (
    BlockdiagLinear,
    MonarchLinear,
    blockdiag_butterfly_multiply,
    monarch_factor_shapes,
    monarch_to_dense,
    project_to_monarch,
)
from .monarchize import LayerSwap, MonarchizeReport, monarchize

__all__ = [
    "MonarchLinear",
    "BlockdiagLinear",
    "blockdiag_butterfly_multiply",
    "monarch_factor_shapes",
    "monarch_to_dense",
    "project_to_monarch",
    "monarchize",
    "MonarchizeReport",
    "LayerSwap",
]
