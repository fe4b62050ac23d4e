"""The structured-linear interface and its registry: one name resolves, once, to a layer factory with checked
settings; every registered layer shares the base's shapes, bias, repr and dense view."""
import functools

import numpy as np
import pytest

import mindspore as ms

from mindcv_ext.layers import (DenseLinear, MonarchLinear, StructuredLinear, check_positive_int, layer_class,
                               layer_settings, linear_class, linear_layer, register_linear, registered_linears)
from mindcv_ext.layers.structured import dense_operands


def test_every_layer_of_the_benchmark_is_registered():
    assert {"dense", "monarch", "pixelfly", "ssl", "lowrank", "bdiagbfly", "fbbfly"} <= set(registered_linears())
    assert linear_class("monarch") is MonarchLinear and linear_class("dense") is DenseLinear


def test_settings_come_from_the_constructor():
    assert layer_settings(linear_class("ssl")) == {"redn_factor": 2, "seed": 1024}
    assert layer_settings(linear_class("monarch")) == {"nblocks": 4}
    assert layer_settings(linear_class("bdiagbfly")) == {"nblocks1": 4, "nblocks2": 4, "b1": 48, "b2": 1}
    assert layer_settings(DenseLinear) == {}


def test_a_name_resolves_to_a_factory_with_its_settings():
    factory = linear_layer("monarch", nblocks=2)
    assert isinstance(factory, functools.partial) and layer_class(factory) is MonarchLinear
    layer = factory(64, 96)
    assert (layer.in_features, layer.out_features, layer.nblocks) == (64, 96, 2)
    assert linear_layer("dense") is DenseLinear  # no settings: the class itself
    assert linear_layer("ssl", redn_factor=None) is linear_class("ssl")  # None keeps the default


def test_a_setting_of_another_layer_names_its_owners():
    with pytest.raises(ValueError) as info:
        linear_layer("ssl", rank=8, redn=2)
    message = str(info.value)
    assert "mlp_layer='ssl' has no setting 'rank' (a setting of pixelfly, lowrank); 'redn'" in message
    assert "Its settings: redn_factor, seed" in message


@pytest.mark.parametrize("name,settings,message", [
    ("monarch", dict(nblocks=0), "nblocks must be a positive integer, got 0"),
    ("monarch", dict(nblocks=True), "nblocks must be a positive integer, got True"),
    ("ssl", dict(redn_factor=3), "redn_factor must be a power of two, got 3"),
    ("lowrank", dict(redn_factor=-1), "redn_factor must be a positive number, got -1"),
    ("pixelfly", dict(butterfly_size=6), "butterfly_size"),
    ("pixelfly", dict(block=0), "SparseLRLinear: block must be a positive integer, got 0"),
    ("fbbfly", dict(block=0), "FlatBlockButterflyLinear: block must be a positive integer, got 0"),
    ("bdiagbfly", dict(b1=0), "b1 must be a positive integer, got 0"),
    ("butterfly", {}, "mlp_layer must be one of dense, monarch"),
])
def test_bad_settings_fail_before_any_layer_is_built(name, settings, message):
    with pytest.raises(ValueError, match=message):
        linear_layer(name, **settings)


@pytest.mark.parametrize("name", [name for name in registered_linears()])
def test_every_registered_layer_keeps_leading_dimensions_and_its_dense_view(name):
    settings = {"pixelfly": dict(gating=False)}.get(name, {})
    layer = linear_layer(name, **settings)(128, 192)
    x = np.random.default_rng(0).standard_normal((2, 3, 128)).astype(np.float32)
    y = layer(ms.Tensor(x)).asnumpy()
    assert y.shape == (2, 3, 192)
    bias = layer.bias.asnumpy() if layer.bias is not None else 0.0
    np.testing.assert_allclose(y, x @ layer.to_dense().asnumpy().T + bias, rtol=1e-4, atol=1e-5)
    assert 0 < layer.macs_per_token() <= 2 * 128 * 192 * 3  # some layers (bdiagbfly's b1 = 48) are wider than dense
    assert layer.in_features == 128 and layer.out_features == 192


def test_a_new_layer_registers_in_its_own_file():
    @register_linear("test_scaled_identity")
    class ScaledIdentity(StructuredLinear):
        def __init__(self, in_features: int, out_features: int, scale: float = 2.0, has_bias: bool = True) -> None:
            super().__init__(in_features, out_features, has_bias)
            self.scale = scale
            self.init_bias(None)

        def forward_2d(self, x):
            return x[:, :self.out_features] * self.scale

    try:
        layer = linear_layer("test_scaled_identity", scale=3.0)(8, 4)
        assert "in_features=8, out_features=4, scale=3.0, has_bias=True" in repr(layer)
        out = layer(ms.Tensor(np.ones((2, 5, 8), np.float32))).asnumpy()
        assert out.shape == (2, 5, 4) and np.all(out == 3.0)
        with pytest.raises(ValueError, match="registered twice"):
            register_linear("test_scaled_identity")(DenseLinear)
    finally:
        from mindcv_ext.layers import structured
        structured._LINEARS.pop("test_scaled_identity")


def test_check_positive_int_refuses_bools_and_floats():
    assert check_positive_int("X", "n", 3) == 3
    for bad in (True, 0, 2.0, "3"):
        with pytest.raises(ValueError, match=f"X: n must be a positive integer, got {bad!r}"):
            check_positive_int("X", "n", bad)


def test_dense_operands_for_from_dense():
    weight, bias = dense_operands("L.from_dense", ms.Tensor(np.ones((3, 2), np.float32)), [1.0, 2.0, 3.0])
    assert isinstance(weight, np.ndarray) and weight.shape == (3, 2) and bias.tolist() == [1.0, 2.0, 3.0]
    assert dense_operands("L", np.zeros((3, 2)))[1] is None
    for args, message in (((np.zeros(4),), r"L: weight must be a 2-D \(out_features, in_features\) matrix, got "
                                          r"shape \(4,\)"),
                          ((np.zeros((3, 2)), np.zeros(2)), r"L: bias must have shape \(3,\), got \(2,\)"),
                          (("w",), "L: weight must be an array or a MindSpore Tensor, got str")):
        with pytest.raises(ValueError, match=message):
            dense_operands("L", *args)
