"""GPT-2 of fly's structured-MLP benchmark: the tiny fixtures through the converter, both attentions, both paths."""
import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import save_file

import mindspore as ms

from mindcv_ext.convert import read_checkpoint
from mindcv_ext.models import count_params, create_model
from scripts.convert_checkpoint import main as convert_main
from tests.utils import on_path, shared_fixture_dir

CASES = {"gpt2_tiny_nnlinear": {}, "gpt2_tiny_ssl4x": dict(mlp_layer="ssl", redn_factor=4)}
NO_DROPOUT = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def _case(name):
    directory = shared_fixture_dir("ssl", "models", name)
    meta = json.loads((directory / "meta.json").read_text())
    kwargs = {key: meta["kwargs"][key] for key in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head",
                                                   "layer_norm_epsilon")}
    return directory, meta, dict(kwargs, **NO_DROPOUT, **CASES[name])


def _convert(src, dst, model_kwargs, capsys=None):
    code = convert_main(["--model", "gpt2", "--model-kwargs", json.dumps(model_kwargs), "--src", str(src),
                         "--dst", str(dst)])
    return code


# The accelerated path swaps LayerNorm, GELU and SSL, none of which the attention mask touches: causal suffices there.
# The fork's model in PyNative mode, the causal one compiled in graph mode.
@pytest.mark.parametrize("path,causal,mode", [("plain", True, ms.GRAPH_MODE), ("plain", False, ms.PYNATIVE_MODE),
                                              ("accel", True, ms.GRAPH_MODE)],
                         ids=["plain-causal-graph", "plain-fork-pynative", "accel-causal-graph"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_logits_match_the_reference_through_the_converter(name, path, causal, mode, tmp_path, request):
    if path == "accel":
        request.getfixturevalue("kernel_library")
    previous = ms.get_context("mode")
    ms.set_context(mode=mode)
    request.addfinalizer(lambda: ms.set_context(mode=previous))
    directory, meta, kwargs = _case(name)
    kwargs["causal"] = causal
    dst = tmp_path / "gpt2.ckpt"
    assert _convert(directory / "model.pth", dst, kwargs) == 0
    net = create_model("gpt2", checkpoint_path=str(dst), **kwargs)
    assert count_params(net) == meta["num_params"]
    net = on_path(net, path, has_twins=True)
    net.set_train(False)
    logits = net(ms.Tensor(np.load(directory / "input_ids.npy"))).asnumpy()
    expected = np.load(directory / ("logits_causal.npy" if causal else "logits.npy"))
    np.testing.assert_allclose(logits, expected, atol=meta["atol"], rtol=meta["rtol"])


def test_bin_and_safetensors_convert_to_the_same_weights(tmp_path):
    directory, _, kwargs = _case("gpt2_tiny_ssl4x")
    shutil.copy(directory / "model.pth", tmp_path / "pytorch_model.bin")  # HF's name; the same zip format
    save_file(read_checkpoint(str(directory / "model.pth")), str(tmp_path / "model.safetensors"))
    results = []
    for src in ("pytorch_model.bin", "model.safetensors"):
        assert _convert(tmp_path / src, tmp_path / f"{src}.ckpt", kwargs) == 0
        results.append(ms.load_checkpoint(str(tmp_path / f"{src}.ckpt")))
    assert sorted(results[0]) == sorted(results[1])
    for key in results[0]:
        np.testing.assert_array_equal(results[0][key].asnumpy(), results[1][key].asnumpy(), err_msg=key)


def test_an_untied_head_and_a_wrong_mlp_layer_are_refused(tmp_path, capsys):
    directory, _, kwargs = _case("gpt2_tiny_ssl4x")
    state = read_checkpoint(str(directory / "model.pth"))
    state["lm_head.weight"] = state["lm_head.weight"] + 1.0
    save_file(state, str(tmp_path / "untied.safetensors"))
    assert _convert(tmp_path / "untied.safetensors", tmp_path / "a.ckpt", kwargs) == 2
    assert "lm_head.weight: this model ties it to 'transformer.wte.weight', but the checkpoint's values differ" \
        in capsys.readouterr().err
    dense = dict(kwargs, mlp_layer="dense")
    dense.pop("redn_factor")
    assert _convert(directory / "model.pth", tmp_path / "b.ckpt", dense) == 2
    err = capsys.readouterr().err
    assert "transformer.h.0.mlp.fc1.weight" in err and "model (512, 128) vs checkpoint (512, 32)" in err
    assert not (tmp_path / "a.ckpt").exists() and not (tmp_path / "b.ckpt").exists()


def test_bad_settings_name_the_culprit():
    with pytest.raises(ValueError, match="n_embd \\(100\\) must be a multiple of n_head \\(12\\)"):
        create_model("gpt2", n_embd=100)
    with pytest.raises(ValueError, match="a language model takes vocab_size, not num_classes"):
        create_model("gpt2", num_classes=10, n_layer=1)
    message = "mlp_layer='dense' has no setting 'redn_factor' \\(a setting of ssl, lowrank\\)"
    with pytest.raises(ValueError, match=message):
        create_model("gpt2", n_layer=1, redn_factor=4)
    net = create_model("gpt2", vocab_size=16, n_positions=4, n_embd=8, n_layer=1, n_head=2)
    with pytest.raises(ValueError, match="the sequence has 5 tokens; the model takes at most n_positions=4"):
        net(ms.Tensor(np.zeros((1, 5), np.int32)))


def test_published_size_builds_counts_and_runs():
    """GPT-2 small: HF's 124,439,808 parameters (the tied head counted once); one short forward."""
    net = create_model("gpt2")
    assert count_params(net) == 124_439_808
    net.set_train(False)
    logits = net(ms.Tensor(np.arange(8, dtype=np.int32).reshape(1, 8)))
    assert logits.shape == (1, 8, 50257) and np.isfinite(logits.asnumpy()).all()
