"""models/vitae.py: three reduction cells then the normal cells, the pyramid reduction's dilation-major channels,
the reference's initialisation and stochastic depth, Monarch in the normal cells only, the reference's names, and
its checkpoints giving its logits."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import nn

import mindcv_ext
from mindcv_ext.layers import DenseLinear, MonarchLinear
from mindcv_ext.models import resolve_model_name
from mindcv_ext.models.vitae import PRM, ViTAE
from tests.utils import assert_model_fixture_matches_reference, model_fixtures, rel_err

# 32 px: 8 x 8 tokens after the first reduction (x4), 4 x 4, then 2 x 2 for the normal cells.
TINY = dict(img_size=32, nc_depth=2)


def test_three_reductions_then_the_normal_cells():
    net = mindcv_ext.create_model("vitae_basic_tiny", num_classes=10, **TINY)
    assert isinstance(net, ViTAE) and [len(layer.NC) for layer in net.layers] == [0, 0, 2]
    assert net.layers[2].RC.attn is None and net.layers[2].RC.PCM is None  # 'performer_less': the PRM alone
    assert all(layer.RC.attn is not None for layer in net.layers[:2])
    assert [cell.grid_size for cell in net.layers[2].NC] == [2, 2]
    net.set_train(False)
    x = ms.Tensor(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    features = net.forward_features(x).asnumpy()
    assert features.shape == (2, 4, 256)  # 2 x 2 tokens of token_dims[-1]
    expected = features.mean(axis=1) @ net.head.weight.asnumpy().T + net.head.bias.asnumpy()
    assert rel_err(net(x).asnumpy(), expected) < 1e-5


def test_the_pyramid_reduction_concatenates_its_dilations_dilation_major(ms_mode):
    """Token t, channel d * C + c: dilation d's convolution (then GELU), channel c, at position t in raster order."""
    prm = PRM(kernel_size=3, downsample_ratio=2, dilations=(1, 2), in_chans=3, embed_dim=4)
    x = ms.Tensor(np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32))
    tokens = prm(x).asnumpy()
    assert tokens.shape == (2, 16, 8) and prm.out_chans == 8
    for d, branch in enumerate(prm.convs):
        grid = branch(x).asnumpy()  # (2, 4, 4, 4)
        np.testing.assert_allclose(tokens[..., 4 * d:4 * (d + 1)], grid.reshape(2, 4, 16).transpose(0, 2, 1),
                                   rtol=1e-6, atol=1e-6)


def test_every_linear_layer_starts_as_the_reference_initialises_it():
    """trunc_normal(0.02) and a zero bias for every nn.Dense (the MLPs' DenseLinear included)."""
    net = mindcv_ext.create_model("vitae_basic_tiny", num_classes=10, **TINY)
    dense = [cell for _, cell in net.cells_and_names() if isinstance(cell, nn.Dense)]
    assert len(dense) == 2 * 4 + 2 * 4 + 1 and sum(isinstance(cell, DenseLinear) for cell in dense) == 4
    weights = np.concatenate([cell.weight.asnumpy().ravel() for cell in dense])
    assert weights.std() == pytest.approx(0.02, rel=0.02) and abs(weights.mean()) < 1e-3
    assert all(not np.any(cell.bias.asnumpy()) for cell in dense if cell.has_bias)


def test_stochastic_depth_rises_linearly_over_the_normal_cells():
    net = mindcv_ext.create_model("vitae_basic_tiny", img_size=32, nc_depth=3, drop_path_rate=0.2)
    cells = net.layers[2].NC
    assert type(cells[0].drop_path).__name__ == "Identity"  # rate 0
    assert [cell.drop_path.drop_prob for cell in cells[1:]] == pytest.approx([0.1, 0.2])


def test_monarch_replaces_the_normal_cells_mlps_and_the_reduction_cells_stay_dense():
    net = mindcv_ext.create_model("vitae_basic_tiny_monarch", **TINY)
    for cell in net.layers[2].NC:
        assert isinstance(cell.mlp.fc1, MonarchLinear) and isinstance(cell.mlp.fc2, MonarchLinear)
        assert cell.mlp.fc1.in_features == 256 and cell.mlp.fc1.out_features == 512  # mlp_ratio 2
    reduction_mlps = [cell for name, cell in net.cells_and_names() if ".RC." in name and "mlp" in name]
    assert reduction_mlps and not any(isinstance(cell, MonarchLinear) for cell in reduction_mlps)


def test_vitae_reference_names_are_aliases():
    assert resolve_model_name("ViTAE_basic_Small") == "vitae_basic_small"
    assert resolve_model_name("ViTAE_basic_Tiny") == "vitae_basic_tiny"
    net = mindcv_ext.create_model("ViTAE_basic_Tiny", img_size=32, num_classes=3)
    assert net.head.weight.shape == (3, 256)


@pytest.mark.parametrize("name", model_fixtures("vitae"))
def test_fixture_logits_match_reference(name, converted, graph_mode, net_path):
    """The reference's checkpoint converted with the user's command, loaded through mindcv's create_model:
    graph-mode logits within the fixture's tolerances of the reference's."""
    assert_model_fixture_matches_reference(name, converted(name), net_path)
