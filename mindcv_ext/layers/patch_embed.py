"""Image to patch tokens with one strided convolution (ViT, Mixer, gMLP stems)."""
from typing import Tuple, Union

import mindspore as ms
from mindspore import nn

from .helpers import to_2tuple

__all__ = ["PatchEmbed"]


class PatchEmbed(nn.Cell):
    """``Conv2d(kernel=stride=patch_size, bias)``, then ``(B, C, H, W) -> (B, H*W, C)`` in raster order.

    Parameter names (``proj.weight``, ``proj.bias``) follow timm's ``PatchEmbed``.
    """

    def __init__(self, img_size: Union[int, Tuple[int, int]] = 224, patch_size: Union[int, Tuple[int, int]] = 16,
                 in_channels: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        for size, patch in zip(self.img_size, self.patch_size):
            if patch < 1 or size % patch != 0:
                raise ValueError(f"PatchEmbed: img_size {self.img_size} must be a multiple of "
                                 f"patch_size {self.patch_size}")
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=self.patch_size, stride=self.patch_size,
                              pad_mode="valid", has_bias=True)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        x = self.proj(x)
        batch, channels = x.shape[0], x.shape[1]
        return x.reshape(batch, channels, -1).transpose(0, 2, 1)
