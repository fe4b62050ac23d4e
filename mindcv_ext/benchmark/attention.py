"""The attention suite: T2T attention cores' forward time and working memory against the sequence length, each
case in a worker process of its own (peak memory is per process)."""
import json
from typing import Any, Dict, List, Sequence

import numpy as np

from .harness import (Progress, current_rss_mb, no_progress, peak_rss_mb, reset_peak_rss, run_worker, sync,
                      time_alternating)

__all__ = ["ATTENTION_FIELDS", "ATTENTION_SETTINGS", "measure_attention", "run_attention"]

ATTENTION_FIELDS = ["attention", "settings", "batch_heads", "tokens", "head_dim", "fwd_ms", "peak_extra_mb",
                    "working_mb", "working_mb_growth"]
# fly's settings for T2T-ViT_t-14's first T2T attention (3,136 tokens at 224 px).
ATTENTION_SETTINGS: Dict[str, Dict[str, Any]] = {"full": {}, "local": {"local_context": 98},
                                                 "performer": {"nb_features": 49},
                                                 "sblocal": {"local_context": 49, "nb_features": 24}}
HEAD_DIM = 64


def measure_attention(*, kind: str, tokens: int, batch_heads: int = 16, repeats: int = 30) -> Dict[str, Any]:
    """Forward time of one attention core at one length, and the peak memory above what the process held before
    its inputs existed (inputs, compilation and the forward's working memory)."""
    import mindspore as ms

    from ..layers import create_attention

    core = create_attention(kind, HEAD_DIM, HEAD_DIM ** -0.5, **ATTENTION_SETTINGS[kind])
    core.set_train(False)
    # The import's transient peak varies from run to run; without the reset it would hide in every figure.
    reset_peak_rss()
    base = current_rss_mb()
    rng = np.random.default_rng(0)
    q, k, v = (ms.Tensor(rng.standard_normal((batch_heads, tokens, HEAD_DIM), dtype=np.float32)) for _ in range(3))
    fwd = time_alternating({"fwd": lambda: sync(core(q, k, v))}, repeats, 1)["fwd"]
    return {"attention": kind, "settings": json.dumps(ATTENTION_SETTINGS[kind]), "batch_heads": batch_heads,
            "tokens": tokens, "head_dim": HEAD_DIM, "fwd_ms": round(fwd, 2),
            "peak_extra_mb": round(max(peak_rss_mb() - base, 0.0), 1)}


def run_attention(*, attentions: Sequence[str] = tuple(ATTENTION_SETTINGS), lengths: Sequence[int] = (1568, 3136, 6272),
                  batch_heads: int = 16, baseline_tokens: int = 64, full_max_tokens: int = 3136, repeats: int = 30,
                  device_target: str = "auto", progress: Progress = no_progress) -> List[dict]:
    """Each attention core at each length, every case in a fresh process so that its peak memory is its own.

    ``working_mb`` is the peak above the same core's at ``baseline_tokens`` (compilation and runtime buffers, the
    same at every length); its growth from one length to the next is ~ the length ratio when memory is linear in
    the length and ~ its square when an N x N matrix is materialised. Full attention is skipped above
    ``full_max_tokens`` (0: no cap).
    """
    def measure(kind: str, tokens: int) -> Dict[str, Any]:
        return run_worker("attention", dict(kind=kind, tokens=tokens, batch_heads=batch_heads, repeats=repeats),
                          device_target=device_target, label=f"{kind} attention at {tokens} tokens")

    rows: List[dict] = []
    cases = [(kind, tokens) for kind in attentions for tokens in [None] + sorted(lengths)
             if tokens is None or not (kind == "full" and full_max_tokens and tokens > full_max_tokens)]
    baseline = {}
    for kind, tokens in progress(cases, "attention"):
        if tokens is None:
            baseline[kind] = measure(kind, baseline_tokens)["peak_extra_mb"]
            continue
        row = measure(kind, tokens)
        row["working_mb"] = round(max(row["peak_extra_mb"] - baseline[kind], 0.0), 1)
        previous = next((r for r in reversed(rows) if r["attention"] == kind), None)
        row["working_mb_growth"] = round(row["working_mb"] / previous["working_mb"], 2) \
            if previous and previous["working_mb"] > 0 else ""
        rows.append(row)
    return rows
