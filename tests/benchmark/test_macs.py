"""mindcv_ext.benchmark.macs: MACs from each layer's own count, against hand-computed totals (32 px, two blocks)."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import nn

from mindcv_ext.benchmark.macs import count_macs, counting_cells, forward_count, linear_macs_per_token
from mindcv_ext.layers import PixelflyMlp, create_mlp, linear_layer, registered_linears
from mindcv_ext.models import create_model

TWO_BLOCKS = {"num_blocks": 2}
# Pixelfly (fly's Mixer-B settings) 512 -> 2048 and back on 32-px blocks: 3/8 of the 16 x 64 blocks, rank 32 on
# both sides, and the gate's input width.
PIXELFLY_512_2048 = 384 * 32 * 32 + 32 * (512 + 2048) + 512
PIXELFLY_2048_512 = 384 * 32 * 32 + 32 * (2048 + 512) + 2048


def test_gmlp_counts_the_token_projection_once():
    """gMLP-S at 32 px: 4 tokens of width 256, hidden 1536. The gating unit counts its (4, 4) projection on half
    the hidden channels; its proj (an nn.Dense) is inside it and not counted again."""
    net = create_model("gmlp_s16_224", img_size=32, model_kwargs=TWO_BLOCKS)
    patch = 4 * 3 * 16 * 16 * 256
    block = 4 * 256 * 1536 + 768 * 4 * 4 + 4 * 768 * 256
    assert count_macs(net, 32) == patch + 2 * block + 256 * 1000
    assert not any(isinstance(cell, nn.Dense) and cell.in_channels == 4 for cell in counting_cells(net))


def test_monarch_layers_count_their_factors():
    net = create_model("gmlp_s16_224_monarch", img_size=32, model_kwargs=TWO_BLOCKS)
    fc1 = 4 * 64 * 64 + 4 * 384 * 64  # 256 -> 1536, nblocks 4: (4, 64, 64) and (4, 384, 64)
    fc2 = 4 * 64 * 192 + 4 * 64 * 64  # 768 -> 256: (4, 64, 192) and (4, 64, 64)
    assert count_macs(net, 32) == 4 * 3 * 16 * 16 * 256 + 2 * (4 * (fc1 + fc2) + 768 * 4 * 4) + 256 * 1000


def test_pixelfly_mixer_counts_its_tiled_mlps_with_their_gates():
    """The tiled Pixelfly MLPs run untiled for the count (and are tiled again after); each layer counts its blocks,
    low-rank factors and gate. The token MLPs (4 -> 256 -> 4 on 512 channels) stay dense."""
    net = create_model("mixer_s16_224", img_size=32, mlp_layer="pixelfly", model_kwargs=TWO_BLOCKS)
    tiled = [cell for _, cell in net.cells_and_names() if isinstance(cell, PixelflyMlp)]
    assert len(tiled) == 2 and all(cell.hidden_as_tiles for cell in tiled)
    block = 512 * (4 * 256 + 256 * 4) + 4 * (PIXELFLY_512_2048 + PIXELFLY_2048_512)
    assert count_macs(net, 32) == 4 * 3 * 16 * 16 * 512 + 2 * block + 512 * 1000
    assert all(cell.hidden_as_tiles for cell in tiled)


def test_a_layer_that_counts_itself_hides_its_children():
    """A shuffled Pixelfly layout has no tiles: the layer calls its gate (an nn.Dense) as a cell, which must not be
    counted beside the layer's own count. 64 -> 256 on 32-px blocks keeps all 16 blocks."""
    layer = linear_layer("pixelfly", shuffle=True)(64, 256)
    assert counting_cells(layer) == [layer]
    per_token = 16 * 32 * 32 + 32 * (64 + 256) + 64
    assert linear_macs_per_token(layer) == per_token
    assert forward_count(layer, ms.Tensor(np.zeros((2, 3, 64), np.float32))) == 6 * per_token


def test_every_registered_layer_counts_itself_in_an_mlp():
    for name in registered_linears():
        factory = linear_layer(name)
        mlp = create_mlp(64, 256, linear_layer=factory)
        assert linear_macs_per_token(mlp) == mlp.fc1.macs_per_token() + mlp.fc2.macs_per_token(), name
    assert linear_macs_per_token(create_mlp(64, 256, linear_layer=linear_layer("dense"))) == 2 * 64 * 256
    assert linear_macs_per_token(create_mlp(64, 256, linear_layer=linear_layer("monarch", nblocks=4))) == \
        (4 * 16 * 16 + 4 * 64 * 16) + (4 * 16 * 64 + 4 * 16 * 16)


def test_forward_count_restores_the_mode():
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        assert forward_count(nn.Dense(8, 3), ms.Tensor(np.zeros((5, 8), np.float32))) == 5 * 8 * 3
        assert ms.get_context("mode") == ms.GRAPH_MODE
    finally:
        ms.set_context(mode=previous)


@pytest.mark.parametrize("layer", ["dense", "monarch"])
def test_static_and_forward_counts_agree(layer):
    mlp = create_mlp(64, 256, linear_layer=linear_layer(layer))
    assert forward_count(mlp, ms.Tensor(np.zeros((7, 64), np.float32))) == 7 * linear_macs_per_token(mlp)
