"""Model families; importing this package registers them in mindcv's model registry."""
from . import dvt, gmlp, gpt2, mlp_mixer, t2t_vit, vitae  # noqa: F401  (importing registers the models)
from .factory import (
    MODEL_ALIASES,
    count_params,
    create_model,
    list_ext_models,
    load_checkpoint,
    load_dense_into_monarch,
    read_mindspore_checkpoint,
    resolve_model_name,
)
from .dvt import DVT
from .gmlp import GMLP
from .gpt2 import GPT2LMHeadModel
from .mlp_mixer import MlpMixer
from .t2t_vit import T2T_ViT
from .vitae import ViTAE

__all__ = [
    "DVT",
    "GMLP",
    "GPT2LMHeadModel",
    "MlpMixer",
    "T2T_ViT",
    "ViTAE",
    "MODEL_ALIASES",
    "count_params",
    "create_model",
    "list_ext_models",
    "load_checkpoint",
    "load_dense_into_monarch",
    "read_mindspore_checkpoint",
    "resolve_model_name",
]
