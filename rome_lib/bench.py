"""Benchmarks that compare our implementation with a plain reference measured in the same run."""

from __future__ import annotations

import time
from typing import Sequence

import torch

from .hparams import ROMEHyperParams
from .models import LoadedModel
from .rome import apply_rome, get_cov, templates_for
from .tracing import KINDS, default_noise, default_window, trace, trace_reference, window_layers


def _timed(fn):
    """``(result, wall seconds)``; see :func:`_timed_cpu` for CPU seconds too."""
    out, wall, _ = _timed_cpu(fn)
    return out, wall


def _timed_cpu(fn):
    """``(result, wall seconds, CPU seconds of this process)``: on a shared machine the CPU seconds
    of a one-thread run are the steadier measure; the wall seconds are what a reader waits."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start, time.process_time() - cpu


def exact_skip_bound(n_tokens: int, n_layer: int, subject_start: int, samples: int = 10,
                     window: int | None = None, kinds: Sequence[str] = KINDS) -> float:
    """The most any exact method can save over the per-cell reference, counted in block·token steps.

    The reference runs every cell as one pass of ``samples`` noisy rows plus the clean row through
    all ``n_layer`` blocks for all ``n_tokens`` tokens. A restored cell (token t, layer l) changes
    nothing before t (the model is causal) and nothing below the first block it touches (l + 1 for a
    hidden state, the window's first layer for MLP/attention), and cells before the subject change
    nothing at all. Counting only that unavoidable part, over the three kinds, bounds the speedup of
    any exact shortcut; on a compute-bound CPU it bounds what batching can gain, too. ``kinds``:
    the kinds traced (default all three).
    """
    window = window or default_window(n_layer)
    reference = len(kinds) * n_tokens * n_layer * (samples + 1) * n_tokens * n_layer
    needed = 0
    for t in range(subject_start, n_tokens):
        for l in range(n_layer):
            first = {"state": l + 1, "mlp": window_layers(l, window, n_layer).start}
            first["attn"] = first["mlp"]
            needed += sum(samples * (n_tokens - t) * (n_layer - first[k]) for k in kinds)
    return reference / needed


def bench_trace(mt: LoadedModel, prompt: str, subject: str, *, samples: int = 10,
                noise: float | None = None, reference: bool = True,
                kinds: Sequence[str] = KINDS) -> dict:
    """The full trace of one prompt (three kinds unless ``kinds`` says fewer):
    :func:`~rome_lib.tracing.trace` vs the per-cell reference, in the same run (``reference=False``
    times the fast trace alone).

    Both runs share the noise level and answer; a warm-up pass keeps one-off costs out of both.
    """
    noise = noise if noise is not None else default_noise(mt)
    first = trace(mt, prompt, subject, "state", samples=samples, noise=noise)  # warm-up
    kwargs = dict(samples=samples, noise=noise, answer_id=first.answer_id)
    fast, fast_s, fast_cpu = _timed_cpu(lambda: [trace(mt, prompt, subject, k, **kwargs) for k in kinds])
    n_tokens, n_layer = len(first.tokens), mt.layout.n_layer
    out = {"prompt": prompt, "tokens": n_tokens, "layers": n_layer, "kinds": list(kinds),
           "samples": samples,
           "threads": torch.get_num_threads(), "batched_s": round(fast_s, 4),
           "batched_cpu_s": round(fast_cpu, 4)}
    if not reference:
        return out
    slow, reference_s, reference_cpu = _timed_cpu(
        lambda: [trace_reference(mt, prompt, subject, k, **kwargs) for k in kinds]
    )
    diff = max((a.scores - b.scores).abs().max().item() for a, b in zip(fast, slow))
    return {
        **out, "reference_s": round(reference_s, 4), "reference_cpu_s": round(reference_cpu, 4),
        "speedup": round(reference_s / fast_s, 2),
        "cpu_speedup": round(reference_cpu / fast_cpu, 2), "max_abs_diff": diff,
        "exact_skip_bound": round(exact_skip_bound(n_tokens, n_layer, first.subject_range[0],
                                                   samples, kinds=kinds), 2),
    }


def bench_edit(mt: LoadedModel, request: dict) -> dict:
    """Seconds for one ROME edit with the key statistics C already computed (cached), then undone."""
    hparams = ROMEHyperParams.for_model(mt.name, mt.n_layer)
    get_cov(mt, hparams, progress=False)  # computed once, cached on disk: not part of the edit
    templates_for(mt, hparams)  # sampled once, cached: not part of the edit
    edit, seconds = _timed(lambda: apply_rome(mt, request, hparams))
    edit.undo()
    return {"edit_s": round(seconds, 3), "layer": hparams.layer}
