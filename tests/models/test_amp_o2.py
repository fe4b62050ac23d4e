"""Every family trains under AMP O2 on the plain network, the code Ascend and GPU run: a few steps on one batch give a
finite loss that decreases, with fp32 master weights."""
import re

import numpy as np
import pytest

import mindspore as ms
from mindspore import nn

import mindcv_ext
from mindcv_ext.engine import NetWithLoss, TrainStep

# Tiny configurations (32-64 px, one or two blocks), one per family and MLP kind.
FAMILIES = [
    ("gmlp_s16_224_monarch", dict(img_size=32, patch_size=8, num_blocks=2, embed_dim=32), 32),
    ("mixer_s16_224_monarch", dict(img_size=32, patch_size=8, num_blocks=2, embed_dim=64), 32),
    ("mixer_s16_224", dict(img_size=32, patch_size=8, num_blocks=1, embed_dim=128, mlp_layer="pixelfly"), 32),
    ("vitae_basic_tiny_monarch", dict(img_size=32, nc_depth=1), 32),
    ("t2t_vit_12_monarch", dict(img_size=64, depth=2), 64),
    ("dvt_t2t_vit_12", dict(img_size=64, depth=1, embed_dim=32, num_heads=2, all_exits=True), 64),
]
# A stage's last block feeds its reused features only to patch tokens, which no later block mixes into the cls token
# the exit reads: those reuse MLPs get no gradient at all, in the reference as here.
NO_GRADIENT = {"dvt_t2t_vit_12": r"blocks\.0\.feature_resuse_mlp\."}


@pytest.mark.parametrize("name,kwargs,size", FAMILIES, ids=[f[0] + ("_pixelfly" if "mlp_layer" in f[1] else "")
                                                            for f in FAMILIES])
def test_plain_network_trains_under_amp_o2(name, kwargs, size, graph_mode):
    ms.set_seed(0)
    net = ms.amp.auto_mixed_precision(mindcv_ext.create_model(name, num_classes=4, **kwargs), "O2")
    rng = np.random.default_rng(0)
    images = ms.Tensor(rng.standard_normal((8, 3, size, size)).astype(np.float32))
    labels = ms.Tensor(rng.integers(0, 4, 8).astype(np.int32))
    # train.py's step: fp32 loss (DVT: the exits' losses summed), dynamic loss scale that skips overflowing steps.
    optimizer = nn.Adam(net.trainable_params(), learning_rate=1e-3)
    step = TrainStep(NetWithLoss(net, nn.CrossEntropyLoss()), optimizer, loss_scale=1024.0, dynamic_loss_scale=True)
    step.set_train()
    initial = {p.name: p.asnumpy().copy() for p in net.trainable_params()}
    results = [step(images, labels) for _ in range(6)]
    losses = [float(loss.asnumpy()) for loss, _, _ in results]
    overflows = sum(bool(overflow.asnumpy()) for _, overflow, _ in results)
    assert all(np.isfinite(losses)) and overflows <= 2, (losses, overflows)
    assert losses[-1] < 0.99 * losses[0], losses
    assert all(p.dtype == ms.float32 for p in net.trainable_params())  # master weights stay fp32
    unchanged = [p.name for p in net.trainable_params() if np.array_equal(p.asnumpy(), initial[p.name])
                 and not (name in NO_GRADIENT and re.search(NO_GRADIENT[name], p.name))]
    assert not unchanged, unchanged  # every weight was trained
