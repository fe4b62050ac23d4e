"""mindcv_ext.benchmark.torch_layers: the PyTorch twins compute what the MindSpore layers compute."""
import numpy as np
import pytest

import mindspore as ms

from mindcv_ext.layers import linear_layer

torch = pytest.importorskip("torch")
from mindcv_ext.benchmark.torch_layers import TORCH_TWINS, torch_modules  # noqa: E402


@pytest.mark.parametrize("in_f, out_f, nblocks", [(64, 256, 4), (100, 30, 3)])
def test_torch_monarch_matches_monarch_linear(in_f, out_f, nblocks):
    ours = linear_layer("monarch", nblocks=nblocks)(in_f, out_f)
    theirs = torch_modules({"monarch": {"nblocks": nblocks}}, in_f, out_f)["monarch"]
    with torch.no_grad():
        theirs.blkdiag1.copy_(torch.from_numpy(ours.blkdiag1.asnumpy()))
        theirs.blkdiag2.copy_(torch.from_numpy(ours.blkdiag2.asnumpy()))
        theirs.bias.copy_(torch.from_numpy(ours.bias.asnumpy()))
        x = np.random.default_rng(0).standard_normal((5, in_f)).astype(np.float32)
        expected = theirs(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours(ms.Tensor(x)).asnumpy(), expected, rtol=1e-4, atol=1e-5)


def test_only_layers_with_a_twin_and_mlps():
    modules = torch_modules({"dense": {}, "ssl": {}, "monarch": {"nblocks": 4}}, 64, 64, hidden=256)
    assert sorted(modules) == ["dense", "monarch"] and set(TORCH_TWINS) >= set(modules)
    assert modules["monarch"](torch.zeros(3, 64)).shape == (3, 64)
