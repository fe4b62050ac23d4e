"""mindcv_ext.benchmark.gpt2: fly's variants, their MACs by hand, the layer rows (a one-block GPT-2)."""
import numpy as np
import pytest

import mindspore as ms

from mindcv_ext.benchmark import gpt2
from mindcv_ext.models import create_model

TINY = {"n_layer": 1, "n_embd": 128, "n_head": 2, "vocab_size": 32}
# The one-block GPT-2 of the gpt2 suite's end-to-end test (tests/e2e/test_benchmark_gpt2.py).
SUITE_TINY = {"n_layer": 1, "n_embd": 512, "n_head": 8, "vocab_size": 64}


def test_variants_name_registered_layers():
    assert gpt2.variant_kwargs("monarch8b") == {"mlp_layer": "monarch", "nblocks": 8}
    assert gpt2.variant_kwargs("nnlinear") == {"mlp_layer": "dense"}
    assert gpt2.MODEL_FIELDS[:len(gpt2.FORK_FIELDS)] == gpt2.FORK_FIELDS


@pytest.mark.parametrize("variant, mlp", [("nnlinear", 2 * 128 * 512),
                                          # nblocks 8: 128 -> 512 (8, 16, 16) + (8, 64, 16); 512 -> 128 transposed
                                          ("monarch8b", 2 * (8 * 16 * 16 + 8 * 64 * 16)),
                                          ("ssl4x", 2 * 128 * 512 // 4)])
def test_gpt2_macs(variant, mlp):
    """8 tokens x (qkv 128 x 384 + projection 128 x 128 + the MLP + the tied head 32 x 128) and the attention
    products 2 x 8^2 x 128."""
    net = create_model("gpt2", n_positions=8, model_kwargs=TINY, **gpt2.variant_kwargs(variant))
    assert gpt2.gpt2_macs(net, 1, 8) == 8 * (128 * 384 + 128 * 128 + mlp + 32 * 128) + 2 * 8 * 8 * 128


def test_layer_rows():
    rows = gpt2.gpt2_layer_rows(size="gpt2", variants=["nnlinear", "lowrank8r"], path="plain", tokens=4,
                                iterations=1, warmup=0, model_kwargs=TINY, cpu_kernels="off")
    assert [(r["variant"], r["layer"], r["in_features"], r["out_features"]) for r in rows] == [
        ("nnlinear", "fc1", 128, 512), ("lowrank8r", "fc1", 128, 512), ("nnlinear", "fc2", 512, 128),
        ("lowrank8r", "fc2", 512, 128)]
    assert rows[0]["params"] == 128 * 512 + 512 and rows[0]["speedup_vs_nnlinear"] == 1.0
    assert all(r["fwd_ms"] > 0 and r["tokens"] == 4 for r in rows)


def test_every_gpt2_variant_builds_and_runs(pynative_mode):
    """fly's eight variants as the suite builds them, one forward each (PyNative, no timing)."""
    ids = ms.Tensor(np.arange(8, dtype=np.int32).reshape(1, 8))
    macs = {}
    for variant in gpt2.GPT2_VARIANTS:
        net = create_model("gpt2", n_positions=8, **SUITE_TINY, **gpt2.variant_kwargs(variant))
        assert net(ids).shape == (1, 8, 64)
        macs[variant] = gpt2.gpt2_macs(net, 1, 8)
    assert min(macs, key=macs.get) in ("ssl8x", "lowrank8r", "monarch8b") and max(macs, key=macs.get) == "nnlinear"
