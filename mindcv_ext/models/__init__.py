"""Model families; importing this package registers them in mindcv's model registry."""
from . import gmlp, mlp_mixer, vitae
from .factory import (
    MODEL_ALIASES,
    count_params,
    create_model,
    list_ext_models,
    load_checkpoint,
    resolve_model_name,
)
from .gmlp import GMLP
from .mlp_mixer import MlpMixer
from .vitae import ViTAE

__all__ = [
    "GMLP",
    "MlpMixer",
    "ViTAE",
    "MODEL_ALIASES",
    "count_params",
    "create_model",
    "list_ext_models",
    "load_checkpoint",
    "resolve_model_name",
]
