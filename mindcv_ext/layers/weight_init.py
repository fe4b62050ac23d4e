"""In-place parameter initialisers with PyTorch/timm semantics, for the models' ``_init_weights``."""
import math

import numpy as np

import mindspore as ms
from mindspore.common import initializer as init

__all__ = ["trunc_normal_", "normal_", "xavier_uniform_", "lecun_normal_", "constant_", "orthogonal_"]


def _fill(param: ms.Parameter, initializer: init.Initializer) -> None:
    param.set_data(init.initializer(initializer, param.shape, param.dtype))


def _truncated_normal(shape, std: float, bound: float) -> np.ndarray:
    """N(0, std) redrawn outside [-bound, bound], in float32.

    MindSpore's ``TruncatedNormal`` takes ~65 ns a value on this CPU (4 s of a DVT-14 build); NumPy's generator
    takes ~4. It is seeded from NumPy's global generator, which ``set_seed`` seeds, so a seeded build is repeatable.
    """
    rng = np.random.default_rng(np.random.randint(0, 2 ** 31 - 1))
    values = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
    outside = np.abs(values) > bound
    while outside.any():
        values[outside] = rng.standard_normal(int(outside.sum()), dtype=np.float32) * np.float32(std)
        outside = np.abs(values) > bound
    return values


def _set(param: ms.Parameter, values: np.ndarray) -> None:
    param.set_data(ms.Tensor(values, dtype=param.dtype))


def trunc_normal_(param: ms.Parameter, std: float = 0.02) -> None:
    """Normal(0, std) truncated to [-2, 2] in absolute value, as timm's ``trunc_normal_``."""
    _set(param, _truncated_normal(tuple(param.shape), std, 2.0))


def normal_(param: ms.Parameter, std: float) -> None:
    _set(param, _truncated_normal(tuple(param.shape), std, np.inf))


def xavier_uniform_(param: ms.Parameter) -> None:
    _fill(param, init.XavierUniform())


def lecun_normal_(param: ms.Parameter) -> None:
    """timm's ``lecun_normal_``: truncated normal with variance 1/fan_in (fan_in includes the kernel)."""
    fan_in = math.prod(param.shape[1:])
    # std of a standard normal truncated to [-2, 2] is 0.8796..., undone as timm does.
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    _set(param, _truncated_normal(tuple(param.shape), std, 2.0 * std))


def constant_(param: ms.Parameter, value: float) -> None:
    _fill(param, init.Constant(value))


def orthogonal_(param: ms.Parameter, gain: float = 1.0) -> None:
    _fill(param, init.Orthogonal(gain=gain))
