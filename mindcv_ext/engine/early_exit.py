"""Early exit for multi-exit networks (DVT): confidence thresholds, dynamic accuracy and expected compute.

A sample stops at the first exit whose top softmax probability reaches that exit's threshold (the last exit's
threshold is -1e8, so it always accepts) and takes that exit's top class. Thresholds for a compute budget are
found as DVT's ``inference.py`` does (MSDNet's rule): for each of 59 settings ``q = i / 20`` the exits receive the
proportions ``[q, q^2, q^3] / sum`` of a held-out set, most confident first; the setting whose expected compute on
the held-out set fits the budget best is kept. Arithmetic follows the reference in float32 so its thresholds are
reproduced exactly.

A model has several exits when it declares ``multi_exit()`` (DVT does): called before the network first runs,
it makes ``construct`` return every exit's logits, first exit first, and returns each exit's cumulative cost in
GMACs per image. train.py and eval.py ask a network through ``use_all_exits``, which finds the model inside the
cells that wrap it (``ms.amp.auto_mixed_precision``'s output cast, say).
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["LAST_EXIT_THRESHOLD", "MULTI_EXIT_METHOD", "multi_exit_model", "use_all_exits", "softmax",
           "exit_proportions", "find_thresholds", "early_exit", "dynamic_evaluate", "threshold_table",
           "thresholds_for_budget"]

LAST_EXIT_THRESHOLD = -1e8
NUM_SETTINGS = 59
MULTI_EXIT_METHOD = "multi_exit"


def multi_exit_model(network):
    """The multi-exit model of ``network`` (a Cell): ``network`` itself or, outermost first, the first cell inside it
    that declares ``multi_exit()``; None when it has a single exit."""
    for _, cell in network.cells_and_names():
        if callable(getattr(cell, MULTI_EXIT_METHOD, None)):
            return cell
    return None


def use_all_exits(network) -> Optional[Tuple[float, ...]]:
    """Ask the multi-exit model of ``network`` for every exit's logits (call it before the network first runs).

    Returns the exits' cumulative cost in GMACs per image, one per exit; None, with ``network`` left as it is,
    when it has a single exit.
    """
    model = multi_exit_model(network)
    if model is None:
        return None
    return tuple(float(macs) for macs in getattr(model, MULTI_EXIT_METHOD)())


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float64 then float32 (probabilities as the reference stores them)."""
    shifted = np.asarray(logits, np.float64) - np.max(logits, axis=-1, keepdims=True)
    weights = np.exp(shifted)
    return (weights / weights.sum(axis=-1, keepdims=True)).astype(np.float32)


def _check_probs(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs)
    if probs.ndim != 3:
        raise ValueError(f"probabilities must have shape (exits, samples, classes), got {probs.shape}")
    return probs


def exit_proportions(setting: int, num_exits: int = 3) -> np.ndarray:
    """The share of samples each exit takes in setting ``setting`` (1..59), as the reference computes it."""
    if not 1 <= setting <= NUM_SETTINGS:
        raise ValueError(f"setting must be in 1..{NUM_SETTINGS}, got {setting}")
    q = np.float32(setting * 1.0 / 20)
    proportions = np.exp(np.log(q) * np.arange(1, num_exits + 1, dtype=np.float32)).astype(np.float32)
    return (proportions / proportions.sum(dtype=np.float32)).astype(np.float32)


def find_thresholds(probs: np.ndarray, proportions: Sequence[float]) -> np.ndarray:
    """Per-exit thresholds so that exit k takes about ``proportions[k]`` of the samples (DVT's
    ``dynamic_find_threshold``): walk the samples by falling confidence at exit k, skipping those that left
    earlier, and take the confidence of the ``floor(n * p_k)``-th one (1e8 if there are not that many)."""
    probs = _check_probs(probs)
    num_exits, num_samples, _ = probs.shape
    confidence = probs.max(axis=2)
    order = np.argsort(-confidence, axis=1, kind="stable")
    exited = np.zeros(num_samples, dtype=bool)
    thresholds = np.full(num_exits, 1e8, dtype=np.float32)
    for k in range(num_exits - 1):
        wanted = math.floor(np.float32(num_samples) * np.float32(proportions[k]))
        remaining = order[k][~exited[order[k]]]
        if 1 <= wanted <= len(remaining):
            thresholds[k] = confidence[k, remaining[wanted - 1]]
        exited |= confidence[k] >= thresholds[k]
    thresholds[-1] = LAST_EXIT_THRESHOLD
    return thresholds


def early_exit(probs: np.ndarray, thresholds: Sequence[float]):
    """``(exit_index, prediction)`` per sample: the first exit whose top probability reaches its threshold."""
    probs = _check_probs(probs)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.shape != (probs.shape[0],):
        raise ValueError(f"need one threshold per exit ({probs.shape[0]}), got {thresholds.tolist()}")
    confidence = probs.max(axis=2)
    accepts = confidence >= thresholds[:, None]
    accepts[-1] = True  # the last exit answers whatever its threshold
    exit_index = accepts.argmax(axis=0)
    prediction = probs.argmax(axis=2)[exit_index, np.arange(probs.shape[1])]
    return exit_index, prediction


def dynamic_evaluate(probs: np.ndarray, targets: np.ndarray, exit_macs: Sequence[float],
                     thresholds: Sequence[float]) -> Dict[str, object]:
    """Accuracy (%), expected compute (same unit as ``exit_macs``, cumulative per exit) and exit shares."""
    exit_index, prediction = early_exit(probs, thresholds)
    targets = np.asarray(targets).reshape(-1)
    counts = np.bincount(exit_index, minlength=probs.shape[0])
    shares = counts / max(len(targets), 1)
    return {"accuracy": 100.0 * float((prediction == targets).mean()) if len(targets) else 0.0,
            "expected_macs": float(np.dot(shares, np.asarray(exit_macs, np.float64))),
            "exit_shares": shares.tolist(), "thresholds": [float(t) for t in thresholds]}


def threshold_table(probs: np.ndarray) -> np.ndarray:
    """(59, exits) thresholds of the reference's 59 settings, found on ``probs``."""
    probs = _check_probs(probs)
    return np.stack([find_thresholds(probs, exit_proportions(i, probs.shape[0]))
                     for i in range(1, NUM_SETTINGS + 1)])


def thresholds_for_budget(holdout_probs: np.ndarray, holdout_targets: np.ndarray, exit_macs: Sequence[float],
                          budget: float) -> Dict[str, object]:
    """The setting with the highest held-out accuracy whose expected compute stays within ``budget``.

    Raises ``ValueError`` when no setting fits (the budget is below the first exit's cost, say).
    """
    table = threshold_table(holdout_probs)
    best: Optional[Dict[str, object]] = None
    curve: List[Dict[str, object]] = []
    for setting, thresholds in enumerate(table, start=1):
        result = dynamic_evaluate(holdout_probs, holdout_targets, exit_macs, thresholds)
        result["setting"] = setting
        curve.append(result)
        if result["expected_macs"] <= budget and (best is None or result["accuracy"] > best["accuracy"] or (
                result["accuracy"] == best["accuracy"] and result["expected_macs"] < best["expected_macs"])):
            best = result
    if best is None:
        cheapest = min(r["expected_macs"] for r in curve)
        raise ValueError(f"no threshold setting fits a budget of {budget:g} GMACs; the cheapest expected compute "
                         f"on the held-out set is {cheapest:.4g} GMACs (exit costs {list(exit_macs)})")
    return {"best": best, "curve": curve}
