"""layers/patch_embed.py: the stem's strided convolution computed as a reshape and one matmul gives the convolution's
tokens, in raster order, under timm's parameter names."""
import numpy as np
import pytest

import mindspore as ms

from mindcv_ext.layers import PatchEmbed
from tests.utils import rel_err


def _convolution(x, weight, bias, patch):
    """The non-overlapping convolution by its definition, tokens in raster order: (B, H/ph * W/pw, out)."""
    batch, _, height, width = x.shape
    (ph, pw), tokens = patch, []
    for i in range(height // ph):
        for j in range(width // pw):
            window = x[:, :, i * ph:(i + 1) * ph, j * pw:(j + 1) * pw]
            tokens.append(np.einsum("bchw,ochw->bo", window, weight) + bias)
    return np.stack(tokens, axis=1)


@pytest.mark.parametrize("img_size,patch_size", [(32, 8), ((32, 48), (8, 16))])
def test_tokens_are_the_convolutions_in_raster_order(img_size, patch_size, ms_mode):
    embed = PatchEmbed(img_size, patch_size, in_channels=3, embed_dim=16)
    rng = np.random.default_rng(0)
    weight = rng.standard_normal(embed.proj.weight.shape).astype(np.float32)
    bias = rng.standard_normal(16).astype(np.float32)
    embed.proj.weight.set_data(ms.Tensor(weight))
    embed.proj.bias.set_data(ms.Tensor(bias))
    height, width = (img_size, img_size) if isinstance(img_size, int) else img_size
    x = rng.standard_normal((2, 3, height, width)).astype(np.float32)
    tokens = embed(ms.Tensor(x)).asnumpy()
    patch = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    assert embed.grid_size == (height // patch[0], width // patch[1])
    assert tokens.shape == (2, embed.num_patches, 16) and embed.num_patches == embed.grid_size[0] * embed.grid_size[1]
    assert rel_err(tokens, _convolution(x.astype(np.float64), weight, bias, patch)) < 1e-5
    # MindSpore's own convolution with the same kernel, flattened: the same tokens.
    conv = embed.proj(ms.Tensor(x)).asnumpy()
    assert rel_err(tokens, conv.reshape(2, 16, -1).transpose(0, 2, 1)) < 1e-5


def test_timm_names_and_shapes():
    embed = PatchEmbed(224, 16, in_channels=3, embed_dim=768)
    assert {p.name: p.shape for p in embed.get_parameters()} == {"proj.weight": (768, 3, 16, 16), "proj.bias": (768,)}
    assert embed.grid_size == (14, 14) and embed.num_patches == 196


@pytest.mark.parametrize("img_size,patch_size", [(30, 8), ((32, 30), 16), (32, 0)])
def test_an_image_that_is_not_a_whole_number_of_patches_is_refused(img_size, patch_size):
    with pytest.raises(ValueError, match="PatchEmbed: img_size .* must be a multiple of patch_size"):
        PatchEmbed(img_size, patch_size)
