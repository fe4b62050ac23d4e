"""Import PyTorch checkpoints (timm, ViTAE-Transformer, fly, Lightning, DDP) into MindSpore, torch-free."""
from .converter import (
    ConversionError,
    ConversionReport,
    convert_checkpoint,
    convert_state_dict,
    extract_state_dict,
    torch_names,
)
from .reader import CheckpointError, UnsafeCheckpointError, read_checkpoint

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "ConversionError",
    "ConversionReport",
    "read_checkpoint",
    "extract_state_dict",
    "torch_names",
    "convert_state_dict",
    "convert_checkpoint",
]
