"""models/gmlp.py: gMLP is MlpMixer's skeleton with spatial gating blocks, its gating unit is timm's formula, and
timm's checkpoints give timm's logits."""
import numpy as np
import pytest

import mindspore as ms

from mindcv_ext.layers import GatedMlp
from mindcv_ext.models import GMLP, MlpMixer, create_model
from mindcv_ext.models.gmlp import SpatialGatingBlock, SpatialGatingUnit
from tests.utils import assert_model_fixture_matches_reference, model_fixtures, rel_err

TINY = dict(img_size=32, patch_size=8, num_blocks=2, embed_dim=32)


def test_gmlp_is_built_on_the_mixer_skeleton():
    net = create_model("gmlp_s16_224_monarch", **TINY)
    assert isinstance(net, GMLP) and isinstance(net, MlpMixer)
    assert all(isinstance(block, SpatialGatingBlock) for block in net.blocks)
    mlp = net.blocks[0].mlp_channels
    assert isinstance(mlp, GatedMlp) and isinstance(mlp.gate, SpatialGatingUnit)
    # timm's names and shapes: the gate's projection maps the 16 tokens; fc2 reads half of fc1's 192 features.
    shapes = {p.name: p.shape for p in net.get_parameters()}
    assert shapes["blocks.0.mlp_channels.gate.proj.weight"] == (16, 16)
    assert shapes["blocks.0.mlp_channels.gate.norm.gamma"] == (96,)
    assert shapes["blocks.1.mlp_channels.fc2.blkdiag1"][0] == 4


def test_gating_unit_is_timms_formula(ms_mode):
    """u * (proj(norm(v)^T))^T with the halves of the input, norm epsilon 1e-5."""
    rng = np.random.default_rng(0)
    unit = SpatialGatingUnit(20, 9)
    for param in unit.trainable_params():
        param.set_data(ms.Tensor(rng.standard_normal(param.shape).astype(np.float32)))
    x = rng.standard_normal((3, 9, 20)).astype(np.float32)
    u, v = x[..., :10].astype(np.float64), x[..., 10:].astype(np.float64)
    normed = (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-5)
    normed = normed * unit.norm.gamma.asnumpy() + unit.norm.beta.asnumpy()
    weight, bias = unit.proj.weight.asnumpy().astype(np.float64), unit.proj.bias.asnumpy().astype(np.float64)
    expected = u * (np.einsum("st,ntc->nsc", weight, normed) + bias[None, :, None])
    assert rel_err(unit(ms.Tensor(x)).asnumpy(), expected) < 1e-5


def test_the_ports_names_are_aliases():
    from mindcv_ext.models import resolve_model_name

    assert [resolve_model_name(n) for n in ("gmlp_Ti", "gmlp_S", "gmlp_B", "gmlp_Ti_monarch")] == [
        "gmlp_ti16_224", "gmlp_s16_224", "gmlp_b16_224", "gmlp_ti16_224_monarch"]


@pytest.mark.parametrize("name", model_fixtures("gmlp"))
def test_fixture_logits_match_reference(name, converted, graph_mode, net_path):
    """The fixture's PyTorch checkpoint converted with the user's command, loaded through mindcv's create_model:
    graph-mode logits within the fixture's tolerances of the reference's."""
    assert_model_fixture_matches_reference(name, converted(name), net_path)
