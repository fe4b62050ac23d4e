"""mlp_layer ssl, lowrank and bdiagbfly in every vision family whose MLP is fc1 -> act -> fc2: built, counted,
trained; and Pixelfly built in the other families (Mixer's Pixelfly: tests/models/test_mlp_mixer.py)."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import nn
from mindcv.models import create_model as mindcv_create_model

from mindcv_ext.layers import BlockdiagButterflyLinear, LowRankLinear, SketchStructuredLinear, SparseLRLinear
from mindcv_ext.models import count_params, create_model

# Tiny configurations (32 px, two blocks; ViTAE 16 px, one token after its x16 reduction) whose MLP widths every
# layer can take (SSL: in % (32 c), out % 64).
FAMILIES = {
    "mixer_s16_224": dict(img_size=32, patch_size=8, num_blocks=2, embed_dim=64),
    "gmlp_s16_224": dict(img_size=32, patch_size=8, num_blocks=2, embed_dim=64, mlp_ratio=4),
    "vitae_basic_tiny": dict(img_size=16, nc_depth=2, token_dims=(64, 64, 128), embed_dims=(32, 32, 64)),
    "t2t_vit_t_14": dict(img_size=32, depth=2, embed_dim=64, num_heads=2, mlp_ratio=4),
}
LAYERS = {"ssl": (SketchStructuredLinear, dict(redn_factor=2)), "lowrank": (LowRankLinear, dict(rank=8)),
          "bdiagbfly": (BlockdiagButterflyLinear, dict(b1=8))}


def _structured_count(cls, in_f, out_f):
    """The layer's parameters by the references' formulas."""
    if cls is SketchStructuredLinear:
        return out_f * in_f // 2  # weight (out, in/2), no bias
    if cls is LowRankLinear:
        return 8 * (in_f + out_f) + out_f
    return 4 * 8 * in_f + out_f * 4 * 8 + out_f  # w1 (4, 4*8, in/4), w2 (4, out/4, 4*8), bias


def _build_and_count(family, mlp_layer):
    """The family with ``mlp_layer`` in its MLPs, checked against its dense twin: the structured layers are its fc1
    and fc2, where the twin has ``nn.Dense`` of the same widths, and the count differs by exactly their weights."""
    cls, settings = LAYERS[mlp_layer]
    dense = create_model(family, num_classes=4, **FAMILIES[family])
    net = create_model(family, num_classes=4, mlp_layer=mlp_layer, **FAMILIES[family], **settings)
    swapped = [(name, cell) for name, cell in net.cells_and_names() if isinstance(cell, cls)]
    assert swapped and all(name.endswith(("fc1", "fc2")) for name, _ in swapped)
    dense_cells = dict(dense.cells_and_names())
    saved = 0
    for name, cell in swapped:
        twin = dense_cells[name]
        assert isinstance(twin, nn.Dense) and (twin.in_channels, twin.out_channels) == (cell.in_features,
                                                                                        cell.out_features)
        saved += twin.weight.size + twin.bias.size - _structured_count(cls, cell.in_features, cell.out_features)
    assert count_params(net) == count_params(dense) - saved
    return net, swapped


@pytest.mark.parametrize("mlp_layer", sorted(LAYERS))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_builds_and_counts(family, mlp_layer):
    _build_and_count(family, mlp_layer)


# Training compiles a graph per case: each family trains with one layer, and each layer trains in some family.
@pytest.mark.parametrize("family,mlp_layer", [("mixer_s16_224", "ssl"), ("gmlp_s16_224", "bdiagbfly"),
                                              ("vitae_basic_tiny", "lowrank"), ("t2t_vit_t_14", "ssl")])
def test_each_layer_trains_in_a_family(family, mlp_layer):
    net, swapped = _build_and_count(family, mlp_layer)
    ms.set_seed(0)
    rng = np.random.default_rng(0)
    size = FAMILIES[family]["img_size"]
    images = ms.Tensor(rng.standard_normal((4, 3, size, size)).astype(np.float32))
    labels = ms.Tensor(rng.integers(0, 4, 4).astype(np.int32))
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    step = nn.TrainOneStepCell(nn.WithLossCell(net, loss_fn), nn.Adam(net.trainable_params(), learning_rate=3e-3))
    before = {name: cell.trainable_params()[0].asnumpy().copy() for name, cell in swapped}
    losses = [float(step(images, labels).asnumpy()) for _ in range(2)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    assert all(not np.array_equal(cell.trainable_params()[0].asnumpy(), before[name]) for name, cell in swapped)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_setting_of_another_layer_is_an_error(family):
    with pytest.raises(ValueError, match=r"mlp_layer='ssl' has no setting 'rank' \(a setting of pixelfly, lowrank\)"):
        create_model(family, mlp_layer="ssl", rank=8, **FAMILIES[family])
    with pytest.raises(ValueError, match=r"in_features \(\d+\) must be a multiple of 32 \* redn_factor \(256\)"):
        create_model(family, mlp_layer="ssl", redn_factor=8, **FAMILIES[family])


@pytest.mark.parametrize("name", ["gmlp_s16_224", "vitae_basic_tiny", "t2t_vit_12"])
def test_pixelfly_builds_in_every_family(name):
    """A registered layer serves every family whose MLP is fc1 -> act -> fc2, Pixelfly included."""
    tiny = {"gmlp_s16_224": dict(img_size=32, patch_size=8, num_blocks=1, embed_dim=64),
            "vitae_basic_tiny": dict(img_size=32, nc_depth=1),
            "t2t_vit_12": dict(img_size=32, depth=1, embed_dim=64, num_heads=2)}[name]
    net = mindcv_create_model(name, num_classes=3, mlp_layer="pixelfly", block=16, rank=4, **tiny)
    layers = [cell for _, cell in net.cells_and_names() if isinstance(cell, SparseLRLinear)]
    assert len(layers) == 2 and layers[0].rank == 4 and layers[0].sparse.block == 16
    net.set_train(False)
    assert net(ms.Tensor(np.ones((1, 3, 32, 32), np.float32))).shape == (1, 3)
