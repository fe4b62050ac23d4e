"""Image to patch tokens with one strided convolution (ViT, Mixer, gMLP stems)."""
import math
from typing import Tuple, Union

import mindspore as ms
from mindspore import nn, ops

from .helpers import to_2tuple

__all__ = ["PatchEmbed"]


class PatchEmbed(nn.Cell):
    """``Conv2d(kernel=stride=patch_size, bias)``, then ``(B, C, H, W) -> (B, H*W, C)`` in raster order.

    Parameter names and shapes (``proj.weight`` as a conv kernel, ``proj.bias``) follow timm's
    ``PatchEmbed``. The non-overlapping convolution is computed as what it is, a reshape into patches and
    one matmul: MindSpore's CPU Conv2D kernel takes seconds for this shape (3.4 s against 22 ms for a
    224 px batch of 8), and the matmul form is as fast as the convolution elsewhere.
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

    def forward_macs(self, inputs, output) -> int:
        """Multiply-accumulates of a call: the (embed_dim, C * patch area) projection of every patch."""
        return math.prod(output.shape[:-1]) * self.proj.weight.size

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        batch, channels = x.shape[0], x.shape[1]
        (grid_h, grid_w), (patch_h, patch_w) = self.grid_size, self.patch_size
        patches = x.reshape(batch, channels, grid_h, patch_h, grid_w, patch_w).transpose(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(batch, grid_h * grid_w, channels * patch_h * patch_w)
        # (C, p, p)-major flattening matches the kernel's (out, C, p, p) layout.
        weight = self.proj.weight.reshape(self.proj.weight.shape[0], -1).astype(x.dtype)
        return ops.matmul(patches, weight.transpose(1, 0)) + self.proj.bias.astype(x.dtype)
