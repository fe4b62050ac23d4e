"""scripts/benchmark.py runs its suites and writes its files (tiny sizes; no timing is asserted). The script is the
command line of mindcv_ext.benchmark; its suites' own tests are in tests/benchmark."""
import csv
import importlib.util
import json

import numpy as np
import pytest

import mindspore as ms

from mindcv_ext.benchmark import cli
from mindcv_ext.benchmark import layers as layer_suite
from mindcv_ext.layers import linear_layer
from scripts import benchmark

# The layers these tests were written for; every registered one is timed by default (tests/benchmark).
THREE = ["--layers", "dense", "monarch", "pixelfly"]


def pixelfly_macs(in_f: int, out_f: int) -> int:
    """Pixelfly's MACs per token by fly's formula (its Mixer-B settings): the layout's blocks on the block-padded
    sizes, the two low-rank factors and the gate."""
    from mindcv_ext.layers import flat_block_butterfly_layout

    in_ext, out_ext = -(-in_f // 32) * 32, -(-out_f // 32) * 32
    return int(flat_block_butterfly_layout(out_ext, in_ext, 8, 2, 32).sum()) * 32 * 32 + 32 * (in_f + out_f) + in_f


def test_mlp_and_layer_suites_write_results(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(layer_suite, "layer_grid", lambda grid: [(64, 256, 4, 32), (64, 256, 2, 32), (768, 3072, 4, 8)])
    # Both paths for the MLP; the layers and the models (a worker process each) on the accelerated one.
    # (the attention suite has its own test below)
    code = benchmark.main(["--suite", "mlp", *THREE, "--with_plain", "--repeats", "2",
                           "--warmup", "1", "--mlp_dim", "64", "--mlp_hidden", "256", "--mlp_tokens", "32",
                           "--out", str(tmp_path)])
    assert code == 0
    assert benchmark.main(["--suite", "layers", *THREE, "--repeats", "2", "--warmup", "1", "--out", str(tmp_path)]) == 0
    code = benchmark.main(["--suite", "models", "--models", "mixer_s32_224", "--pixelfly_models", "mixer_s32_224",
                           "--img_size", "64", "--batch_size", "2", "--model_repeats", "1", "--model_rounds", "1",
                           "--model_warmup", "1", "--model_kwargs", "{num_blocks: 2}", "--memory_batch_sizes", "1",
                           "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    machine = json.loads((tmp_path / "machine.json").read_text())
    assert machine["logical_cpus"] >= 1 and machine["mindspore"] == ms.__version__
    mlp = list(csv.DictReader(open(tmp_path / "mlp.csv")))
    # Both paths in the same run: the accelerated cells ("mindspore") and the plain ones, each against its own dense.
    assert sorted((r["framework"], r["impl"], r["pass"]) for r in mlp) == sorted(
        (fw, impl, p) for fw in ("mindspore", "mindspore-plain") for impl in ("dense", "monarch", "pixelfly")
        for p in ("fwd", "fwd+bwd"))
    assert all(float(r["speedup_vs_dense"]) == 1.0 for r in mlp if r["impl"] == "dense")
    assert all(float(r["ms"]) > 0 and float(r["gflops_per_s"]) > 0 for r in mlp)
    dense_fwd = next(r for r in mlp if r["impl"] == "dense" and r["pass"] == "fwd")
    assert float(dense_fwd["speedup_vs_dense"]) == 1.0 and float(dense_fwd["gflop"]) == pytest.approx(
        2 * 32 * 2 * 64 * 256 / 1e9, rel=1e-3)
    monarch_fwd = next(r for r in mlp if r["impl"] == "monarch" and r["pass"] == "fwd")
    # Monarch MACs per token: 64->256 (4,16,16)+(4,64,16); 256->64 (4,16,64)+(4,16,16)
    assert float(monarch_fwd["gflop"]) == pytest.approx(2 * 32 * (1024 + 4096 + 4096 + 1024) / 1e9, rel=1e-3)
    pixelfly_fwd = next(r for r in mlp if r["impl"] == "pixelfly" and r["pass"] == "fwd")
    # 64->256 and 256->64 on 32-px blocks: coarse (8, 2) and (2, 8) layouts of 8 blocks each (density 1/2), plus
    # rank 32 on both sides and the gate's input width
    macs = (8 * 32 * 32 + 32 * (64 + 256) + 64) + (8 * 32 * 32 + 32 * (256 + 64) + 256)
    assert float(pixelfly_fwd["gflop"]) == pytest.approx(2 * 32 * macs / 1e9, rel=1e-3)
    assert pixelfly_fwd["nblocks"] == "" and float(pixelfly_fwd["ms"]) > 0
    pixelfly_bwd = next(r for r in mlp if r["impl"] == "pixelfly" and r["pass"] == "fwd+bwd")
    assert float(pixelfly_bwd["gflop"]) == pytest.approx(3 * float(pixelfly_fwd["gflop"]), rel=1e-3)

    layers = list(csv.DictReader(open(tmp_path / "layers.csv")))
    # dense and Monarch per case; Pixelfly (no nblocks) once per (in, out, tokens): 2 of the 3 cases
    assert len(layers) == 3 * 2 * 2 + 2 * 2 and (tmp_path / "layers.png").is_file()
    assert {r["framework"] for r in layers} == {"mindspore"}
    pixelfly = [r for r in layers if r["impl"] == "pixelfly"]
    assert sorted((int(r["in_features"]), int(r["out_features"]), r["pass"]) for r in pixelfly) == sorted(
        (i, o, p) for i, o in ((64, 256), (768, 3072)) for p in ("fwd", "fwd+bwd"))
    assert all(float(r["ms"]) > 0 and float(r["speedup_vs_dense"]) > 0 for r in pixelfly)
    big = {r["impl"]: r for r in layers if r["in_features"] == "768" and r["pass"] == "fwd"}
    # Mixer-B's fc1: 864 of 2,304 blocks, rank 32, gate: 1,008,384 MACs per token against 2,359,296 dense
    assert float(big["pixelfly"]["gflop"]) == pytest.approx(2 * 8 * (864 * 1024 + 32 * 3840 + 768) / 1e9, rel=1e-3)
    assert float(big["pixelfly"]["gflop"]) < 0.5 * float(big["dense"]["gflop"])
    rows = list(csv.DictReader(open(tmp_path / "models.csv")))
    assert [(r["model"], r["path"]) for r in rows] == [(m, "accel") for m in (
        "mixer_s32_224", "mixer_s32_224_monarch", "mixer_s32_224_pixelfly")]
    assert all(float(r["train_speedup_vs_dense"]) == 1.0 for r in rows if r["variant"] == "dense")
    models = rows
    assert [r["variant"] for r in models] == ["dense", "monarch", "pixelfly"]
    assert int(models[1]["params"]) < int(models[0]["params"]) and float(models[0]["macs_g"]) > 0
    assert float(models[1]["macs_g"]) < float(models[0]["macs_g"]) and int(models[0]["peak_rss_mb"]) > 100
    dense, pixelfly = models[0], models[2]
    assert int(pixelfly["params"]) < int(dense["params"]) and float(pixelfly["train_step_ms"]) > 0
    # 2 blocks (model_kwargs) x 4 tokens (64 px, patch 32), each channel MLP 512->2048->512 counted by the formula
    saved = 2 * 4 * (2 * 512 * 2048 - pixelfly_macs(512, 2048) - pixelfly_macs(2048, 512))
    assert pixelfly_macs(512, 2048) == 384 * 1024 + 32 * 2560 + 512  # 3/8 of the 16 x 64 blocks
    assert float(dense["macs_g"]) - float(pixelfly["macs_g"]) == pytest.approx(saved / 1e9, abs=2e-3)
    assert (tmp_path / "models.png").is_file() and "| mixer_s32_224_monarch | monarch | accel |" in out
    assert "| mixer_s32_224_pixelfly | pixelfly | accel |" in out
    # memory per image from batches 1 and 2; each variant against dense's
    assert float(dense["rss_per_image_vs_dense"]) == 1.0 and all(r["rss_mb_per_image"] != "" for r in models)
    assert float(pixelfly["rss_per_image_vs_dense"]) == pytest.approx(
        float(pixelfly["rss_mb_per_image"]) / float(dense["rss_mb_per_image"]), abs=0.01)


def test_compare_torch(tmp_path, capsys):
    argv = ["--suite", "mlp", *THREE, "--compare_torch", "--repeats", "1", "--warmup", "0", "--mlp_dim", "32",
            "--mlp_hidden", "64", "--mlp_tokens", "8"]
    assert cli.parse_args(["--compare-torch"]).compare_torch  # the old spelling is still accepted
    if importlib.util.find_spec("torch") is None:
        assert benchmark.main(argv) == 2
        assert "--compare_torch needs PyTorch" in capsys.readouterr().err
        return
    assert benchmark.main(argv + ["--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader(open(tmp_path / "mlp.csv")))
    assert {r["framework"] for r in rows} == {"mindspore", "torch"}
    assert {(r["framework"], r["impl"]) for r in rows if r["pass"] == "fwd"} == {
        (fw, impl) for fw in ("mindspore", "torch") for impl in ("dense", "monarch", "pixelfly")}


def test_torch_pixelfly_computes_what_sparse_lr_linear_computes():
    """The PyTorch Pixelfly timed beside ours is the same layer: same weights in, same outputs out."""
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed")
    import torch

    from mindcv_ext.benchmark.torch_layers import torch_modules

    for in_f, out_f in ((100, 300), (256, 64)):  # padded (100 -> 128, 320 -> 300) and a narrowing layer
        ours = linear_layer("pixelfly")(in_f, out_f)  # its defaults are fly's Mixer-B settings
        theirs = torch_modules({"pixelfly": {}}, in_f, out_f)["pixelfly"]
        with torch.no_grad():
            theirs.weight.copy_(torch.from_numpy(ours.sparse.weight.asnumpy()))
            theirs.lr_weight1.copy_(torch.from_numpy(ours.low_rank.lr_weight1.asnumpy()))
            theirs.lr_weight2.copy_(torch.from_numpy(ours.low_rank.lr_weight2.asnumpy()))
            theirs.gate.weight.copy_(torch.from_numpy(ours.gate.weight.asnumpy()))
            theirs.gate.bias.copy_(torch.from_numpy(ours.gate.bias.asnumpy()))
            theirs.bias.copy_(torch.from_numpy(ours.bias.asnumpy()))
        np.testing.assert_array_equal(theirs.layout.numpy(), ours.sparse.layout.asnumpy())
        x = np.random.default_rng(0).standard_normal((6, in_f)).astype(np.float32)
        with torch.no_grad():
            expected = theirs(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(ours(ms.Tensor(x)).asnumpy(), expected, rtol=1e-4, atol=1e-5)
        assert pixelfly_macs(in_f, out_f) == ours.macs_per_token() == ours.sparse.weight.size + \
            ours.low_rank.lr_weight1.size + ours.low_rank.lr_weight2.size + ours.gate.weight.size


def test_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        benchmark.main(["--repeats", "0"])
    assert "--repeats, --model_repeats, --model_rounds, --iterations, --batch_sizes and --seq_len must be >= 1" \
        in capsys.readouterr().err
    for bad in (["--model_rounds", "0"], ["--suite", "gpt2", "--batch_sizes", "0"], ["--gpt2_warmup", "-1"]):
        with pytest.raises(SystemExit):
            benchmark.main(bad)
        assert "must be >= 1; --warmup, --model_warmup and --gpt2_warmup >= 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no registered model matches"):
        benchmark.main(["--suite", "models", "--models", "resnet50"])


@pytest.mark.slow
def test_local_and_performer_memory_grows_linearly_with_length(tmp_path, capsys):
    """Doubling the sequence doubles their working memory (an N x N score matrix would quadruple it)."""
    code = benchmark.main(["--suite", "attention", "--attentions", "local", "performer", "--attn_lengths", "6272",
                           "12544", "--attn_batch_heads", "16", "--repeats", "1", "--out", str(tmp_path)])
    assert code == 0
    rows = list(csv.DictReader(open(tmp_path / "attention.csv")))
    assert [(r["attention"], int(r["tokens"])) for r in rows] == [("local", 6272), ("local", 12544),
                                                                  ("performer", 6272), ("performer", 12544)]
    for row in rows[1::2]:
        # Above ~300 MB the allocator's granularity is small against the growth.
        assert float(row["working_mb"]) > 300, row
        assert 1.5 < float(row["working_mb_growth"]) < 3.0, row
    assert "| local |" in capsys.readouterr().out
