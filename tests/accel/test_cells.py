"""accel/cells.py: every twin is made from its plain cell and takes over all of its state (whatever the plain class
holds, now or later), with MindSpore's per-cell bookkeeping its own; it computes what the plain cell computes."""
import gc
import logging

import numpy as np
import pytest

import mindspore as ms
from mindspore import nn

from mindcv_ext.accel import accelerate, accelerated_cells, cells
from mindcv_ext.accel.cells import (CELL_OWN_STATE, CELL_REGISTRIES, FAST_CELLS, FastGatedMlp, FastGELU, FastLayerNorm,
                                    FastMlp, FastMonarchLinear, FastPixelflyMlp, FastSketchStructuredLinear,
                                    FastSparseLRLinear, FastSpatialGatingUnit)
from mindcv_ext.layers import (GatedMlp, MonarchLinear, PixelflyMlp, SketchStructuredLinear, SparseLRLinear,
                               create_mlp, gelu, layer_norm, linear_layer)
from mindcv_ext.models.gmlp import SpatialGatingUnit
from tests.utils import randomise, rel_err, skip_unless_twin_serves

SEQ_LEN = 16


def _pixelfly_mlp():
    mlp = create_mlp(128, 512, linear_layer=linear_layer("pixelfly"))
    assert type(mlp) is PixelflyMlp and mlp.hidden_as_tiles
    return mlp


# For each twin: a plain cell it applies to, and that cell's input width.
PLAIN_CELLS = {
    FastMlp: (lambda: create_mlp(64, 256, linear_layer=linear_layer("monarch", nblocks=4)), 64),
    FastPixelflyMlp: (_pixelfly_mlp, 128),
    FastGatedMlp: (lambda: GatedMlp(64, 384, lambda hidden: SpatialGatingUnit(hidden, SEQ_LEN),
                                    linear_layer=linear_layer("monarch")), 64),
    FastMonarchLinear: (lambda: MonarchLinear(64, 256, 4), 64),
    FastSketchStructuredLinear: (lambda: SketchStructuredLinear(128, 128, has_bias=True), 128),
    FastSparseLRLinear: (lambda: SparseLRLinear(96, 320), 96),
    FastSpatialGatingUnit: (lambda: SpatialGatingUnit(64, SEQ_LEN), 64),
    FastLayerNorm: (lambda: layer_norm(64), 64),
    FastGELU: (gelu, 64),
}
# What a twin sets differently on purpose: Pixelfly's twin keeps the hidden activation token-major.
OVERRIDDEN = {FastPixelflyMlp: {"hidden_as_tiles": False}}


def _plain(twin_cls) -> nn.Cell:
    build, _ = PLAIN_CELLS[twin_cls]
    plain = build()
    assert twin_cls.matches(plain)
    return plain


def test_every_twin_has_a_plain_cell_here():
    assert set(PLAIN_CELLS) == set(FAST_CELLS)


def test_the_cell_internals_named_are_mindspores():
    """The names the take-over carries or copies are attributes ``nn.Cell.__init__`` makes: a MindSpore that renamed
    one would leave a twin without the plain cell's configuration, or sharing its registries. The rest of what that
    constructor makes is the twin's own, among it the compile caches ``Cell.__del__`` frees."""
    fresh = set(vars(nn.Cell()))
    # (MindSpore 2.7's Cell has no _lazy_forward_hook_always_called: the carried names are those this one has.)
    assert {"training", "_phase", "_param_prefix", "_lazy_forward_hook", "_lazy_forward_pre_hook"} <= \
        cells.CELL_CARRIED <= fresh | {"_amp_level"}
    assert set(CELL_REGISTRIES) <= fresh
    assert set(cells._BOUND_TO_CELL) <= fresh
    assert {"_compile_cache", "_phase_cache", "_create_time", "_id", "_exist_objs", "_parameter_layout_dict"} <= \
        CELL_OWN_STATE


@pytest.fixture
def unbuilt_kernels(monkeypatch):
    """Twins that are built and inspected, never run, need no kernel library: their kernels name one that is never
    opened. So these tests hold with the kernels switched off too."""
    from mindcv_ext.accel import cpu_kernels

    monkeypatch.setattr(cpu_kernels, "cpu_kernel_library", lambda: "/never-opened/libmindcv_ext_cpu.so")


def _is_twin_of(mine: nn.Cell, theirs: nn.Cell) -> bool:
    return isinstance(mine, FAST_CELLS) and isinstance(mine, type(theirs)) and \
        [id(p) for p in mine.get_parameters()] == [id(p) for p in theirs.get_parameters()]


@pytest.mark.usefixtures("unbuilt_kernels")
@pytest.mark.parametrize("twin_cls", FAST_CELLS, ids=[cls.__name__ for cls in FAST_CELLS])
def test_twin_takes_over_every_attribute_of_its_plain_cell(twin_cls):
    """Whatever the plain cell holds, the twin holds: here an attribute, a parameter and a sub-cell that no twin has
    heard of, set on the plain cell after it was built, and its training mode."""
    plain = _plain(twin_cls)
    plain.added_later = ("a", 1)
    plain.parameter_added_later = ms.Parameter(ms.Tensor(np.ones(3, np.float32)), name="parameter_added_later")
    plain.cell_added_later = nn.ReLU()
    plain.set_train(True)
    params = [(id(p), p.name) for p in plain.get_parameters()]
    state = dict(vars(plain))
    registries = {name: dict(state[name]) for name in CELL_REGISTRIES}

    twin = twin_cls(plain)
    mine = vars(twin)
    assert type(twin) is twin_cls and twin.added_later is plain.added_later and twin.training
    assert twin.parameter_added_later is plain.parameter_added_later and twin.cell_added_later is plain.cell_added_later
    for name, value in state.items():
        assert name in mine, f"{twin_cls.__name__} lacks {name!r} of its plain cell"
        if name in CELL_OWN_STATE:
            continue
        if name in CELL_REGISTRIES:  # its own registry, with the plain cell's entries or twins of them
            assert mine[name] is not value and list(mine[name])[:len(value)] == list(value)
            for key, entry in value.items():
                assert mine[name][key] is entry or _is_twin_of(mine[name][key], entry), (name, key)
            assert dict(vars(plain)[name]) == registries[name]  # the plain cell stays whole
        elif name in OVERRIDDEN.get(twin_cls, {}):
            assert mine[name] == OVERRIDDEN[twin_cls][name]
        else:
            assert mine[name] is value, f"{twin_cls.__name__}.{name} is not its plain cell's"
    assert [(id(p), p.name) for p in twin.get_parameters()] == params  # the same objects, under the same names


@pytest.mark.usefixtures("kernel_library")
@pytest.mark.parametrize("twin_cls", FAST_CELLS, ids=[cls.__name__ for cls in FAST_CELLS])
def test_twin_computes_what_its_plain_cell_computes(twin_cls, pynative_mode):
    """Forward, in PyNative mode (``test_accelerate`` checks gradients and graph mode network by network)."""
    skip_unless_twin_serves(twin_cls)
    plain = randomise(_plain(twin_cls), 3, scale=0.1)
    _, width = PLAIN_CELLS[twin_cls]
    x = ms.Tensor(np.random.default_rng(4).standard_normal((2, SEQ_LEN, width)).astype(np.float32))
    expected = plain(x).asnumpy()
    assert rel_err(twin_cls(plain)(x).asnumpy(), expected) < 1e-5


@pytest.mark.usefixtures("unbuilt_kernels")
def test_twin_has_its_own_cell_bookkeeping():
    """MindSpore's per-object state (compile caches registered under the cell's id, creation time) is the twin's
    own, and it counts as one more cell while it lives."""
    plain = gelu()
    gc.collect()  # the cells earlier tests left behind
    count = nn.Cell.total_instance_count
    twin = FastGELU(plain)
    assert twin.compile_cache is not plain.compile_cache and twin.phase_cache is not plain.phase_cache
    assert twin.create_time >= plain.create_time
    assert nn.Cell.total_instance_count == count + 2  # the twin and its kernel
    del twin
    gc.collect()
    assert nn.Cell.total_instance_count == count


@pytest.mark.usefixtures("kernel_library")
def test_forward_hooks_of_the_plain_cell_serve_the_twin(pynative_mode):
    calls = []
    plain = gelu()
    handle = plain.register_forward_hook(lambda cell, inputs, output: calls.append(type(cell).__name__))
    twin = FastGELU(plain)
    twin(ms.Tensor(np.ones((2, 3), np.float32)))
    assert calls == ["FastGELU"]
    handle.remove()  # the plain cell's handle removes it from the twin too
    twin(ms.Tensor(np.ones((2, 3), np.float32)))
    assert calls == ["FastGELU"]


@pytest.mark.usefixtures("kernel_library")
def test_cells_with_state_bound_to_them_stay_plain(caplog):
    """A backward hook (or recompute, or shard) is built around the cell object: no twin can take it over, so that
    cell stays plain and its neighbours are still accelerated."""
    mlp = create_mlp(64, 256, linear_layer=linear_layer("monarch"))
    mlp.fc1.register_backward_hook(lambda cell, grad_input, grad_output: None)
    with pytest.raises(ValueError, match="with backward hooks: set those on the accelerated network"):
        FastMonarchLinear(mlp.fc1)
    with caplog.at_level(logging.INFO, logger="mindcv_ext"):
        fast = accelerate(mlp, "on")
    assert fast is mlp and type(mlp.fc1) is MonarchLinear
    assert accelerated_cells(mlp) == {"FastGELU": 1, "FastMonarchLinear": 1}
    assert "Mlp kept plain (fc1 has backward hooks" in caplog.text and "fc1 kept plain (fc1 has" in caplog.text
