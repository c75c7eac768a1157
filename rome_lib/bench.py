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


def bench_edit(mt: LoadedModel, request: dict) -> dict:
    """Seconds for one ROME edit with the key statistics C already computed (cached), then undone."""
    from .hparams import ROMEHyperParams
    from .rome import apply_rome, context_templates, get_cov

    hparams = ROMEHyperParams.for_model(mt.name, mt.n_layer)
    get_cov(mt, hparams, progress=False)  # computed once, cached on disk: not part of the edit
    context_templates(mt, hparams.context_lengths, hparams.context_top_k, hparams.seed)  # cached
    edit, seconds = _timed(lambda: apply_rome(mt, request, hparams))
    edit.undo()
    return {"edit_s": round(seconds, 3), "layer": hparams.layer}
