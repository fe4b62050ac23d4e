import numpy as np
import pytest

import mindspore as ms
from mindspore import nn

from mindcv.models import create_model

from mindcv_ext.layers import MonarchLinear, monarch_to_dense, monarchize
from tests.utils import rel_err


def _count(net):
    return sum(p.size for p in net.get_parameters())


@pytest.mark.slow
def test_monarchize_stock_mindcv_vit(graph_mode):
    net = create_model("vit_b_32_224", num_classes=10)
    before = _count(net)
    report = monarchize(net, nblocks=4)

    mlp_names = {f"blocks.{i}.mlp.fc{j}" for i in range(12) for j in (1, 2)}
    assert set(report.names) == mlp_names
    swapped = {name for name, cell in net.cells_and_names() if isinstance(cell, MonarchLinear)}
    assert swapped == mlp_names
    assert {name for name, cell in net.cells_and_names() if isinstance(cell, nn.Dense)} == \
        {f"blocks.{i}.attn.{p}" for i in range(12) for p in ("qkv", "proj")} | {"head"}

    # Per block: 2 x 768*3072 dense weights become 2 x (4*192*192 + 4*768*192) factor entries; biases stay.
    predicted_drop = 12 * (2 * 768 * 3072 - 2 * (4 * 192 * 192 + 4 * 768 * 192))
    assert predicted_drop == 38_928_384
    assert report.params_before == before
    assert report.params_after == _count(net) == before - predicted_drop
    assert "blocks.0.mlp.fc1.blkdiag1" in {p.name for p in net.get_parameters()}
    assert "network parameters" in str(report) and "blocks.11.mlp.fc2" in str(report)

    net.set_train(False)
    logits = net(ms.Tensor(np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)))
    assert logits.shape == (1, 10)
    assert np.isfinite(logits.asnumpy()).all()


class _Toy(nn.Cell):
    def __init__(self):
        super().__init__()
        self.mlp = nn.SequentialCell([nn.Dense(32, 64), nn.GELU(approximate=False), nn.Dense(64, 32)])
        self.gate = nn.Dense(32, 32, activation="relu")
        self.head = nn.Dense(32, 5)
        self.tiny = nn.Dense(2, 2)

    def construct(self, x):
        return self.head(self.gate(self.mlp(x))) + self.tiny(x[..., :2]).sum()


def test_project_init_keeps_a_monarch_network_exact(rng, ms_mode):
    net = _Toy()
    # Make the dense MLP weights Monarch matrices, so projecting them loses nothing.
    for dense in (net.mlp[0], net.mlp[2]):
        source = MonarchLinear(dense.in_channels, dense.out_channels, nblocks=4)
        dense.weight.set_data(source.to_dense())
    x = ms.Tensor(rng.standard_normal((3, 32)).astype(np.float32))
    expected = net(x).asnumpy()

    report = monarchize(net, nblocks=4, include=("mlp.*",), init="project")
    assert report.names == ["mlp.0", "mlp.2"]
    assert all(s.rel_error < 1e-5 for s in report.swapped)
    assert isinstance(net.mlp[0], MonarchLinear) and isinstance(net.mlp[2], MonarchLinear)
    assert rel_err(net(x).asnumpy(), expected) <= 1e-4


def test_random_dense_projection_error_is_reported(rng):
    net = _Toy()
    dense = rng.standard_normal((64, 32)).astype(np.float32)
    net.mlp[0].weight.set_data(ms.Tensor(dense))
    report = monarchize(net, include=("mlp.0",), init="project")
    (swap,) = report.swapped
    monarch = net.mlp[0]
    assert isinstance(monarch, MonarchLinear)
    approx = monarch_to_dense(monarch.blkdiag1.asnumpy(), monarch.blkdiag2.asnumpy(), 32, 64)
    assert 0.0 < swap.rel_error < 1.0
    assert swap.rel_error == pytest.approx(np.linalg.norm(dense - approx) / np.linalg.norm(dense), rel=1e-5)
    assert swap.params_before == 32 * 64 + 64 and swap.params_after == 4 * 8 * 8 + 4 * 16 * 8 + 64
    assert "rel. error" in str(report)


def test_include_exclude_and_skips():
    net = _Toy()
    report = monarchize(net, include=("*",), exclude=("head",))
    assert report.names == ["mlp.0", "mlp.2"]
    skipped = dict(report.skipped)
    assert "fused activation" in skipped["gate"]
    assert "would not be smaller" in skipped["tiny"]  # 2->2, 4 blocks: 8 factor entries vs 4 dense
    assert isinstance(net.head, nn.Dense) and isinstance(net.gate, nn.Dense)
    assert report.params_after == _count(net) < report.params_before


def test_monarchize_bad_arguments():
    with pytest.raises(ValueError, match="monarchize: nblocks must be a positive integer, got 0"):
        monarchize(_Toy(), nblocks=0)
    with pytest.raises(ValueError, match=r"init must be one of \('random', 'project'\), got 'svd'"):
        monarchize(_Toy(), init="svd")
    with pytest.raises(ValueError, match="sequence of patterns"):
        monarchize(_Toy(), include="mlp.*")
