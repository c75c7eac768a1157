"""Checks for the analysis exercises (``exercises/04_analysis_exercises.ipynb``).

These exercises ask the learner to *read* results (severing, a layer choice, an edit's scores,
subject lengths) more than to rebuild the method; where an answer is a number, a check compares it
with rome_lib's and names the likeliest mistake. The questions without a computable answer have an
answer key in ``solutions/04_analysis_exercises.ipynb``.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

from ..evaluation import hmean, record_metrics, score_record
from ..models import LoadedModel
from ..tracing import find_subject_range
from .common import (
    as_float as _as_float, as_layers as _as_layers, check_model as _model, show as _show,
)
from .editing import EditedModel, case_records
from .verdict import failed as _failed, passed as _passed, verdict as _verdict


# ----------------------------------------------------------------------------------------------
# Exercise 1: PS and NS of one record, by hand
# ----------------------------------------------------------------------------------------------
def _pair(raw) -> tuple[float, float] | None:
    try:
        a, b = raw
    except (TypeError, ValueError):
        return None
    a, b = _as_float(a), _as_float(b)
    return None if a is None or b is None else (a, b)


@_verdict
def check_ps_ns(fn: Callable, mt: LoadedModel | None = None) -> bool:
    """``fn(mt, record) -> (PS, NS)``: the record's paraphrase and neighbourhood scores (fractions),
    before and after a ROME edit of it."""
    mt = _model(mt)
    record = case_records(mt)[0]
    for edited in (False, True):
        with (EditedModel(mt, record) if edited else contextlib.nullcontext()):
            want = record_metrics(score_record(mt, record))
            raw = fn(mt, record)
            rows = score_record(mt, record)
        got = _pair(raw)
        if got is None:
            return _failed(f"Return a pair (PS, NS) of numbers, not {_show(raw)}.")
        ps, ns = want["PS"], want["NS"]
        when = "after the edit" if edited else "before the edit"
        if abs(got[0] - ps) < 1e-6 and abs(got[1] - ns) < 1e-6:
            continue
        if abs(got[0] - ns) < 1e-6 and abs(got[1] - ps) < 1e-6 and ps != ns:
            return _failed(f"Your pair is (NS, PS) {when}; return (PS, NS).")
        if abs(got[0] - 100 * ps) < 1e-4 and abs(got[1] - 100 * ns) < 1e-4:
            return _failed("Return fractions in [0, 1], not percentages.")
        flipped = sum(x["target_new"] < x["target_true"] for x in rows["neighborhood"]) / len(
            rows["neighborhood"])  # P[new] > P[true]: the wrong way round for NS
        if abs(got[1] - flipped) < 1e-6 and abs(flipped - ns) > 1e-6:
            return _failed(f"Your NS counts neighbourhood prompts where the *new* object wins {when}; "
                           "NS counts those where the true object still wins (the edit did not leak).")
        return _failed(f"Got (PS, NS) = ({got[0]:.3f}, {got[1]:.3f}) {when}, expected ({ps:.3f}, "
                       f"{ns:.3f}). PS: fraction of paraphrase prompts with P[new] > P[true]; NS: "
                       "fraction of neighbourhood prompts with P[true] > P[new].")
    return _passed()


# ----------------------------------------------------------------------------------------------
# Exercise 3: a layer from tracing, a layer from editing
# ----------------------------------------------------------------------------------------------
def _layer_cases() -> list[tuple[torch.Tensor, dict[int, dict[str, float]]]]:
    """MLP indirect effects at the last subject token per layer, and per-layer edit scores, where the
    arithmetic mean, ES alone, or the tracing peak would pick another layer than S."""
    aie = torch.tensor([0.02, 0.10, 0.31, 0.27, 0.12, 0.05, 0.01, 0.0])
    scores = {0: dict(ES=1.0, PS=0.9, NS=0.2), 1: dict(ES=1.0, PS=0.8, NS=0.6),
              2: dict(ES=1.0, PS=0.6, NS=0.8), 3: dict(ES=0.9, PS=0.7, NS=0.8),
              4: dict(ES=1.0, PS=0.5, NS=0.9), 5: dict(ES=0.6, PS=0.3, NS=1.0)}
    return [(aie, scores), (aie.flip(0), {7 - l: s for l, s in scores.items()})]


@_verdict
def check_choose_layers(fn: Callable, mt: LoadedModel | None = None) -> bool:
    """``fn(mlp_effects, edit_scores) -> (traced, edited)``: the layer where the MLP's indirect
    effect at the last subject token peaks, and the layer whose edits score the best S, the harmonic
    mean of ES, PS and NS."""
    for aie, scores in _layer_cases():
        raw = fn(aie.clone(), {l: dict(s) for l, s in scores.items()})
        got = _as_layers(raw)
        if got is None or len(got) != 2:
            return _failed(f"Return a pair of layers (traced, edited), not {_show(raw)}.")
        traced, edited = int(aie.argmax()), max(scores, key=lambda l: hmean(list(scores[l].values())))
        if got == [traced, edited]:
            continue
        if got[0] != traced:
            return _failed(f"The tracing layer is where the MLP effect peaks: argmax over layers = "
                           f"{traced}, not {got[0]}.")
        mean = max(scores, key=lambda l: sum(scores[l].values()))
        if got[1] == mean:
            return _failed(f"You picked layer {mean} by the arithmetic mean of ES, PS and NS. S is their "
                           "*harmonic* mean (rome_lib.evaluation.hmean): one weak score (a leaky NS) "
                           f"drags it down. Expected layer {edited}.")
        if got[1] == max(scores, key=lambda l: scores[l]["ES"]):
            return _failed("You picked the layer by ES alone; almost every layer reaches the edit itself. "
                           "Use S = hmean(ES, PS, NS), which also rewards generalising and staying "
                           f"specific. Expected layer {edited}.")
        return _failed(f"The best editing layer is {edited} (highest S = hmean(ES, PS, NS)), not {got[1]}.")
    return _passed()


# ----------------------------------------------------------------------------------------------
# Exercise 4: how much of the effect goes through the MLPs?
# ----------------------------------------------------------------------------------------------
@_verdict
def check_severed_share(fn: Callable, mt: LoadedModel | None = None) -> bool:
    """``fn(effects) -> list of floats``: per layer, the share of the indirect effect at the last
    subject token that disappears when the MLPs are severed: (none − mlp) / none (0 where none ≤ 0)."""
    effects = {"none": [0.4, 0.5, 0.45, 0.3, 0.1, 0.0], "mlp": [0.1, 0.2, 0.3, 0.28, 0.1, 0.0],
               "attn": [0.38, 0.47, 0.44, 0.3, 0.1, 0.0]}
    want = [(n - m) / n if n > 0 else 0.0 for n, m in zip(effects["none"], effects["mlp"])]
    raw = fn({k: list(v) for k, v in effects.items()})
    got = _as_tensor_list(raw)
    if got is None or len(got) != len(want):
        return _failed(f"Return one share per layer ({len(want)} numbers), not {_show(raw)}.")
    if all(abs(g - w) < 1e-6 for g, w in zip(got, want)):
        return _passed()
    if all(abs(g - (m / n if n > 0 else 0.0)) < 1e-6 for g, n, m in zip(got, effects["none"], effects["mlp"])):
        return _failed("You returned what *remains* with the MLPs severed (mlp / none); the share that "
                       "disappears is 1 − that, (none − mlp) / none.")
    if all(abs(g - (n - m)) < 1e-6 for g, n, m in zip(got, effects["none"], effects["mlp"])):
        return _failed("You returned the drop none − mlp; divide by the unsevered effect to get a share.")
    if any(g != g for g in got):
        return _failed("NaN in your shares: where the unsevered effect is 0, the share is 0 (nothing to "
                       "remove).")
    return _failed(f"Got {[round(g, 3) for g in got]}, expected {[round(w, 3) for w in want]}.")


def _as_tensor_list(value) -> list[float] | None:
    try:
        return [float(x) for x in (value.tolist() if isinstance(value, torch.Tensor) else value)]
    except (TypeError, ValueError, AttributeError):
        return None


# ----------------------------------------------------------------------------------------------
# Exercise 6: subjects grouped by their number of tokens
# ----------------------------------------------------------------------------------------------
@_verdict
def check_subject_lengths(fn: Callable, mt: LoadedModel | None = None) -> bool:
    """``fn(tokenizer, facts) -> dict {n_tokens: [facts]}``: the facts grouped by how many tokens
    their subject has *in its prompt* (find_subject_range), each group in the input order."""
    mt = _model(mt)
    facts = [
        {"prompt": "The Space Needle is in", "subject": "Space Needle"},
        {"prompt": "Danielle Darrieux spoke", "subject": "Danielle Darrieux"},
        {"prompt": "Paris is the capital of", "subject": "Paris"},
        {"prompt": "The company Zzyzx Corporation makes", "subject": "Zzyzx Corporation"},
    ]
    want: dict[int, list[dict]] = {}
    for f in facts:
        b, e = find_subject_range(mt.tokenizer, f["prompt"], f["subject"])
        want.setdefault(e - b, []).append(f)
    raw = fn(mt.tokenizer, [dict(f) for f in facts])
    if not isinstance(raw, dict):
        return _failed(f"Return a dict {{number of tokens: [facts]}}, not {_show(raw)}.")
    got = {int(k): list(v) for k, v in raw.items()} if all(
        isinstance(v, (list, tuple)) for v in raw.values()) else None
    if got == want:
        return _passed()
    words = {}
    for f in facts:
        words.setdefault(len(f["subject"].split()), []).append(f)
    if got == words:
        return _failed("You counted words, not tokens: a rare name splits into several tokens. Use "
                       "find_subject_range(tokenizer, prompt, subject) and e − b.")
    alone = {}
    for f in facts:
        alone.setdefault(len(mt.tokenizer(f["subject"])["input_ids"]), []).append(f)
    if got == alone and alone != want:
        return _failed("You tokenised the subject on its own; in the prompt it follows a space (or "
                       "starts the text), which can change its tokens. Count them in the prompt with "
                       "find_subject_range.")
    return _failed(f"Groups {sorted((k, len(v)) for k, v in (got or {}).items())} (length, count), "
                   f"expected {sorted((k, len(v)) for k, v in want.items())}.")


__all__ = ["check_ps_ns", "check_choose_layers", "check_severed_share", "check_subject_lengths"]
