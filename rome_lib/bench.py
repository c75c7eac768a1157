"""Benchmarks that compare our implementation with a plain reference measured in the same run."""

from __future__ import annotations

import time

import torch

from .models import LoadedModel
from .tracing import KINDS, default_noise, trace, trace_reference


def _timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def bench_trace(mt: LoadedModel, prompt: str, subject: str, *, samples: int = 10,
                noise: float | None = None) -> dict:
    """The full three-kind trace of one prompt: batched vs the per-cell reference.

    Both runs share the noise level and answer; a warm-up pass keeps one-off costs out of both.
    """
    noise = noise if noise is not None else default_noise(mt)
    first = trace(mt, prompt, subject, "state", samples=samples, noise=noise)  # warm-up
    kwargs = dict(samples=samples, noise=noise, answer_id=first.answer_id)
    batched, batched_s = _timed(lambda: [trace(mt, prompt, subject, k, **kwargs) for k in KINDS])
    reference, reference_s = _timed(
        lambda: [trace_reference(mt, prompt, subject, k, **kwargs) for k in KINDS]
    )
    diff = max((a.scores - b.scores).abs().max().item() for a, b in zip(batched, reference))
    return {
        "prompt": prompt, "tokens": len(first.tokens), "layers": mt.layout.n_layer,
        "reference_s": round(reference_s, 4), "batched_s": round(batched_s, 4),
        "speedup": round(reference_s / batched_s, 2), "max_abs_diff": diff,
    }
