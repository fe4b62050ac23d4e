"""Swap the ``nn.Dense`` layers of any Cell tree for ``MonarchLinear`` in one call.

    >>> from mindcv.models import create_model
    >>> from mindcv_ext.layers import monarchize
    >>> net = create_model("vit_b_32_224")
    >>> report = monarchize(net, nblocks=4, include=("*mlp.fc1", "*mlp.fc2"), init="project")
    >>> print(report)
"""
import fnmatch
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from mindspore import nn

from .helpers import replace_cell
from .monarch import MonarchLinear, monarch_factor_shapes
from .structured import check_positive_int

__all__ = ["monarchize", "MonarchizeReport", "LayerSwap"]

# Transformer and MLP-Mixer style names for the two layers of an MLP block.
DEFAULT_INCLUDE = ("*mlp*.fc1", "*mlp*.fc2")
_INITS = ("random", "project")


@dataclass
class LayerSwap:
    """One ``nn.Dense`` replaced by a ``MonarchLinear``."""

    name: str
    in_features: int
    out_features: int
    params_before: int
    params_after: int
    rel_error: Optional[float] = None  # Frobenius error of the projection, when init="project"


@dataclass
class MonarchizeReport:
    """What ``monarchize`` changed, with parameter counts of the whole network before and after."""

    nblocks: int
    init: str
    params_before: int
    params_after: int
    swapped: List[LayerSwap] = field(default_factory=list)
    skipped: List[tuple] = field(default_factory=list)  # (name, reason)

    @property
    def names(self) -> List[str]:
        return [s.name for s in self.swapped]

    def __str__(self) -> str:
        lines = [f"monarchize: {len(self.swapped)} Dense layer(s) -> MonarchLinear(nblocks={self.nblocks}), "
                 f"init={self.init}"]
        for s in self.swapped:
            err = "" if s.rel_error is None else f"  rel. error {s.rel_error:.4f}"
            lines.append(f"  {s.name}: {s.in_features}->{s.out_features}  "
                         f"{s.params_before:,} -> {s.params_after:,} params{err}")
        for name, reason in self.skipped:
            lines.append(f"  skipped {name}: {reason}")
        ratio = self.params_after / self.params_before if self.params_before else 1.0
        lines.append(f"  network parameters: {self.params_before:,} -> {self.params_after:,} ({ratio:.1%})")
        return "\n".join(lines)


def _count_params(net: nn.Cell) -> int:
    return sum(p.size for p in net.get_parameters())


def monarchize(net: nn.Cell, nblocks: int = 4, include: Sequence[str] = DEFAULT_INCLUDE,
               exclude: Sequence[str] = (), init: str = "random", verbose: bool = False) -> MonarchizeReport:
    """Replace the ``nn.Dense`` layers of ``net`` whose names match ``include`` with ``MonarchLinear``.

    Args:
        net: any Cell tree, for instance a stock mindcv model; modified in place.
        nblocks: blocks per Monarch factor.
        include: fnmatch patterns on the layer's full name (``"blocks.0.mlp.fc1"``); a Dense layer is
            swapped when it matches one of them. The default targets MLP ``fc1``/``fc2`` layers.
        exclude: patterns that veto a match (e.g. ``("head",)``).
        init: ``"random"`` for fly's Monarch initialisation, ``"project"`` to start from the
            Frobenius-optimal projection of each dense weight (and its bias).
        verbose: print the report.

    Returns:
        A ``MonarchizeReport`` with the swapped layers, the skipped ones and why, and the
        parameter count of ``net`` before and after.
    """
    nblocks = check_positive_int("monarchize", "nblocks", nblocks)
    if init not in _INITS:
        raise ValueError(f"monarchize: init must be one of {_INITS}, got {init!r}")
    if isinstance(include, str) or isinstance(exclude, str):
        raise ValueError("monarchize: include and exclude take a sequence of patterns, e.g. ('*mlp*.fc1',)")

    report = MonarchizeReport(nblocks=nblocks, init=init, params_before=_count_params(net), params_after=0)
    # Collect first: the tree must not change while it is being walked.
    targets = []
    for name, cell in net.cells_and_names():
        if not isinstance(cell, nn.Dense) or not name:
            continue
        if not any(fnmatch.fnmatchcase(name, pat) for pat in include):
            continue
        if any(fnmatch.fnmatchcase(name, pat) for pat in exclude):
            continue
        targets.append((name, cell))

    for name, dense in targets:
        if dense.activation_flag:
            report.skipped.append((name, "Dense with a fused activation; MonarchLinear has none"))
            continue
        in_features, out_features = dense.in_channels, dense.out_channels
        shape1, shape2 = monarch_factor_shapes(in_features, out_features, nblocks)
        factor_params = shape1[0] * shape1[1] * shape1[2] + shape2[0] * shape2[1] * shape2[2]
        if factor_params >= in_features * out_features:
            report.skipped.append((name, f"Monarch factors ({factor_params:,}) would not be smaller than "
                                         f"the dense weight ({in_features * out_features:,})"))
            continue
        monarch = MonarchLinear(in_features, out_features, nblocks=nblocks, has_bias=dense.has_bias)
        rel_error = None
        if init == "project":
            rel_error = monarch.load_dense(dense.weight.asnumpy(),
                                           dense.bias.asnumpy() if dense.has_bias else None)
        replace_cell(net, name, monarch)
        bias_params = out_features if dense.has_bias else 0
        report.swapped.append(LayerSwap(name, in_features, out_features,
                                        in_features * out_features + bias_params,
                                        factor_params + bias_params, rel_error))

    report.params_after = _count_params(net)
    if verbose:
        print(report)
    return report
