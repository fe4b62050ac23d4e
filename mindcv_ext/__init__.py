"""mindcv_ext: Monarch structured matrices for MindSpore vision models, in the style of mindcv.

Importing the package registers its models in mindcv's registry, so ``mindcv.models.create_model``
and ``list_models`` see them.
"""
from . import layers, models
from .models import create_model, list_ext_models
from .version import __version__

__all__ = ["layers", "models", "create_model", "list_ext_models", "__version__"]
