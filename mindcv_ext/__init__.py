"""mindcv_ext: Monarch structured matrices for MindSpore vision models, in the style of mindcv."""
from . import layers
from .version import __version__

__all__ = ["layers", "__version__"]
