"""mindcv_ext.benchmark.layers: every registered layer timed against dense (tiny sizes; no timing asserted)."""
from mindcv_ext.benchmark import layers
from mindcv_ext.layers import linear_layer, registered_linears

TIMING = dict(repeats=1, warmup=0, cpu_kernels="off")


def gflop(tokens: int, macs_per_token: int, passes: int = 1) -> float:
    """The rows' GFLOP: two per MAC, the backward twice the forward, rounded as the rows are."""
    return round(2 * tokens * macs_per_token * passes / 1e9, 6)


def test_layer_grid():
    sweep = layers.layer_grid("sweep")
    assert len(sweep) == 13 and (768, 3072, 4, 1568) in sweep
    assert {nb for _, _, nb, _ in sweep} == {2, 4, 8, 16} and {t for *_, t in sweep} == {196, 784, 1568, 3136}
    assert len(layers.layer_grid("full")) == 5 * 5 * 4 * 4


def test_the_registry_decides_which_layers_take_nblocks():
    assert layers.has_nblocks("monarch") and not layers.has_nblocks("pixelfly") and not layers.has_nblocks("dense")


def test_every_registered_layer_is_compared_with_dense(capsys):
    """The default layer set is the registry's: a layer registered later appears without a change here. A layer
    that cannot be built at the case's sizes (SSL reads whole 64-wide chunks at redn_factor 2) is left out."""
    rows = layers.compare("layer", 32, 64, 4, 8, layers=registered_linears(), **TIMING)
    assert "note: no ssl rows for 32->64" in capsys.readouterr().err
    built = [name for name in registered_linears() if name != "ssl"]
    assert [(r["impl"], r["pass"]) for r in rows] == [(name, p) for p in ("fwd", "fwd+bwd") for name in built]
    by = {(r["impl"], r["pass"]): r for r in rows}
    assert by["dense", "fwd"]["gflop"] == gflop(8, 32 * 64)
    # Monarch 32 -> 64, nblocks 4: (4, 8, 8) and (4, 16, 8)
    assert by["monarch", "fwd"]["gflop"] == gflop(8, 4 * 8 * 8 + 4 * 16 * 8)
    assert by["monarch", "fwd+bwd"]["gflop"] == gflop(8, 4 * 8 * 8 + 4 * 16 * 8, passes=3)
    # Pixelfly on 32-px blocks: 1 x 2 blocks, both kept, rank 32 and the gate
    assert by["pixelfly", "fwd"]["gflop"] == gflop(8, 2 * 32 * 32 + 32 * 96 + 32)
    for name in built:
        macs = linear_layer(name, **({"nblocks": 4} if layers.has_nblocks(name) else {}))(32, 64).macs_per_token()
        assert by[name, "fwd"]["gflop"] == gflop(8, macs), name
        assert by[name, "fwd"]["nblocks"] == (4 if name == "dense" or layers.has_nblocks(name) else "")
    assert by["dense", "fwd"]["speedup_vs_dense"] == 1.0 and all(r["ms"] > 0 for r in rows)
    assert {r["framework"] for r in rows} == {"mindspore"}


def test_layers_without_nblocks_are_timed_once_per_shape(monkeypatch):
    monkeypatch.setattr(layers, "layer_grid", lambda grid: [(32, 64, 2, 4), (32, 64, 4, 4), (32, 64, 4, 8)])
    rows = layers.run_layers(layers=["monarch", "pixelfly"], with_plain=True, **TIMING)
    counted = {}
    for r in rows:
        key = (r["impl"], r["framework"], r["pass"])
        counted[key] = counted.get(key, 0) + 1
    assert counted["dense", "mindspore", "fwd"] == 3 and counted["monarch", "mindspore-plain", "fwd+bwd"] == 3
    assert counted["pixelfly", "mindspore", "fwd"] == 2  # tokens 4 once (not per nblocks), tokens 8 once


def test_mlp_of_each_layer():
    rows = layers.run_mlp(dim=64, hidden=256, tokens=4, nblocks=4, layers=["pixelfly"], **TIMING)
    assert sorted({r["impl"] for r in rows}) == ["dense", "pixelfly"]
    pixelfly = next(r for r in rows if r["impl"] == "pixelfly" and r["pass"] == "fwd")
    macs = (8 * 32 * 32 + 32 * (64 + 256) + 64) + (8 * 32 * 32 + 32 * (256 + 64) + 256)
    assert pixelfly["gflop"] == gflop(4, macs) and pixelfly["out_features"] == 64


def test_monarch_versus_torch_and_the_plot(tmp_path):
    def row(framework, impl, nblocks, ms, pass_name="fwd"):
        return dict(kind="layer", framework=framework, impl=impl, in_features=768, out_features=3072,
                    nblocks=nblocks, tokens=1568, ms=ms, speedup_vs_dense=1.5, **{"pass": pass_name})

    rows = [row("mindspore", "dense", 4, 3.0), row("mindspore", "monarch", 4, 2.0), row("torch", "monarch", 4, 4.0),
            row("mindspore", "pixelfly", "", 2.5)]
    assert layers.monarch_versus_torch(rows) == {"fwd": [("768->3072 nb4 t1568", 2.0)]}
    assert layers.plot_layers(rows, str(tmp_path / "layers.png")) == str(tmp_path / "layers.png")
    assert (tmp_path / "layers.png").stat().st_size > 0


def test_monarch_versus_torch_pairs_the_same_case():
    """The plot's last panel: PyTorch Monarch ms over MindSpore Monarch ms, per pass, only for cases timed in both."""
    def row(framework, impl, tokens, pass_name, ms):
        return dict(kind="layer", framework=framework, impl=impl, in_features=64, out_features=256, nblocks=4,
                    tokens=tokens, ms=ms, **{"pass": pass_name})

    rows = [row("mindspore", "monarch", 32, "fwd", 2.0), row("torch", "monarch", 32, "fwd", 3.0),
            row("mindspore", "monarch", 32, "fwd+bwd", 4.0), row("torch", "monarch", 32, "fwd+bwd", 2.0),
            row("mindspore", "dense", 32, "fwd", 1.0), row("torch", "dense", 32, "fwd", 9.0),
            row("mindspore", "monarch", 64, "fwd", 5.0)]  # no PyTorch twin
    assert layers.monarch_versus_torch(rows) == {"fwd": [("64->256 nb4 t32", 1.5)],
                                                 "fwd+bwd": [("64->256 nb4 t32", 0.5)]}
    assert layers.monarch_versus_torch(rows[:1] + rows[4:]) == {}


def test_the_plain_rows_time_cells_the_accelerator_left_alone(monkeypatch, kernel_library):
    """accelerate swaps an MLP's GELU in place: the plain rows must not time the cells it swapped into."""
    from mindcv_ext.accel.cells import _Twin

    timed = {}
    calls = layers._mindspore_calls
    monkeypatch.setattr(layers, "_mindspore_calls",
                        lambda cells, *a: timed.setdefault(len(timed), cells) and calls(cells, *a))
    layers.compare("mlp", 32, None, 2, 4, layers=["dense", "monarch"], hidden=64, repeats=1, warmup=0,
                   cpu_kernels="on", with_plain=True)
    accelerated, plain = timed[0], timed[1]

    def twins(cell):
        return [type(c).__name__ for _, c in cell.cells_and_names() if isinstance(c, _Twin)]

    assert twins(accelerated["dense"]) == ["FastGELU"] and twins(accelerated["monarch"])
    assert twins(plain["dense"]) == [] and twins(plain["monarch"]) == []
