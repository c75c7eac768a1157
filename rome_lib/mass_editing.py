"""Many edits: in batches (MEMIT's setting) and one after another (sequential editing), with the
CounterFact scores of :mod:`rome_lib.evaluation` and a check that the model still works.

* :func:`evaluate_batched` -- the records in chunks of ``batch``: apply the chunk's edits (MEMIT: one
  batched edit; ROME / FT / FT+L: one edit after another), score every record of the chunk, undo
  (official MEMIT ``evaluate.py`` with ``num_edits``).
* :func:`evaluate_sequential` -- the edits stay: after ``checkpoints`` edits, score every record
  edited so far (does an early edit survive the later ones?) and the model's health; undo all at
  the end, so the model is bit-identical afterwards.

**Health** (:func:`model_health`), to catch edits that break the model -- the "disabling edits" of
Gupta et al. 2024 ("Rebuilding ROME"), after which generation collapses into repetition: the mean
token NLL of held-out texts (:func:`health_texts`: up to 16 true statements from the records'
neighbourhood prompts that name no edited subject) and the generation entropy GE of text generated
from their prompts. An edit *breaks* the model (ours) when the held-out NLL rises by more than
``break_nll`` (default 0.5 nats per token): over the unedited model's for a batch, over the NLL just
before it in a sequence.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
from tqdm import tqdm

from .edits import Edit
from .evaluation import generate, generation_entropy, object_nlls, record_metrics, score_record, summarize
from .memit import apply_memit
from .methods import EDIT_METHODS, edit_function
from .models import LoadedModel

MASS_METHODS = tuple(EDIT_METHODS)
BREAK_NLL = 0.5


def apply_edits(mt: LoadedModel, requests: Sequence[dict], method: str, hparams=None) -> list[Edit]:
    """Apply ``requests`` with ``method``: MEMIT in one batch, the others one after another."""
    if method not in MASS_METHODS:
        raise ValueError(f"Unknown method {method!r}: use one of {', '.join(MASS_METHODS)}.")
    if method == "memit":
        return [apply_memit(mt, list(requests), hparams)]
    apply = edit_function(method, hparams)
    edits = []
    try:
        for request in requests:
            edits.append(apply(mt, request))
    except BaseException:
        undo(edits)
        raise
    return edits


def undo(edits: Sequence[Edit]) -> None:
    """Undo ``edits`` newest first."""
    for edit in reversed(edits):
        edit.undo()


def health_texts(records: Sequence[dict], edited: Sequence[dict], n: int = 16) -> tuple[list[str], list[str]]:
    """``(texts, prompts)``: up to ``n`` true statements about subjects that no record of ``edited``
    rewrites -- the first neighbourhood prompt of each record, from the set's end backwards, completed
    with its true object -- and the prompts alone. A statement that names an edited subject is
    skipped: its loss would rise by design (the edit) and hide what the edits cost everything else."""
    subjects = {r["requested_rewrite"]["subject"] for r in edited}
    prompts, texts = [], []
    for record in reversed(list(records)):
        true = " " + record["requested_rewrite"]["target_true"]["str"].strip()
        for prompt in record.get("neighborhood_prompts", [])[:1]:
            if prompt not in prompts and not any(s in prompt for s in subjects):
                prompts.append(prompt)
                texts.append(prompt + true)
        if len(texts) == n:
            break
    if not texts:
        raise ValueError("No neighbourhood prompt of these records avoids every edited subject: "
                         "no held-out text to check the model's health on.")
    return texts, prompts


@torch.no_grad()
def model_health(mt: LoadedModel, texts: Sequence[str], prompts: Sequence[str] = (),
                 gen_length: int = 40) -> dict:
    """Mean token NLL of ``texts`` (each scored after its first token) and, with ``prompts``, the
    generation entropy GE (×100, as the paper) of seeded top-k text generated from them."""
    firsts, rests = [], []
    for text in texts:
        ids = mt.tokenizer(text)["input_ids"]
        firsts.append(mt.tokenizer.decode(ids[:1]))
        rests.append(mt.tokenizer.decode(ids[1:]))
    out = {"heldout_nll": float(object_nlls(mt, firsts, rests).mean())}
    if prompts:
        out["GE"] = 100 * generation_entropy(generate(mt, list(prompts), gen_length, seed=0))
    return out


def _score(mt: LoadedModel, records: Sequence[dict]) -> dict:
    return summarize([record_metrics(score_record(mt, r)) for r in records])


def _check(records: Sequence[dict], n: int | None) -> list[dict]:
    records = list(records)[:n] if n is not None else list(records)
    if not records:
        raise ValueError("No records to evaluate.")
    return records


def evaluate_batched(mt: LoadedModel, records: Sequence[dict], method: str = "memit", batch: int = 100,
                     n: int | None = None, *, hparams=None, break_nll: float = BREAK_NLL,
                     generation: bool = False, progress: bool = True,
                     health: tuple[list[str], list[str]] | None = None) -> dict:
    """Chunks of ``batch`` records: edit, score each record, check health (with ``generation``,
    also the generation entropy GE of each edited model), undo. Returns the averages (percent), the
    chunks' health and how many chunks broke the model. ``health`` is ``(texts, prompts)`` to check
    the model on (default: :func:`health_texts` avoiding the edited subjects); pass one set to
    compare several calls."""
    if batch < 1:
        raise ValueError("batch must be at least 1.")
    edited = _check(records, n)
    texts, prompts = health if health is not None else health_texts(records, edited)
    records = edited
    base = model_health(mt, texts)["heldout_nll"]
    rows, chunks = [], []
    for start in tqdm(range(0, len(records), batch), desc=f"{method}, batches of {batch}",
                      disable=not progress):
        chunk = records[start : start + batch]
        began = time.perf_counter()
        edits = apply_edits(mt, [r["requested_rewrite"] for r in chunk], method, hparams)
        try:
            seconds = time.perf_counter() - began
            rows += [record_metrics(score_record(mt, r)) for r in chunk]
            health = model_health(mt, texts, prompts if generation else ())
        finally:
            undo(edits)
        nll = health["heldout_nll"]
        chunks.append({"n": len(chunk), "seconds": round(seconds, 2), **health,
                       "broken": nll - base > break_nll})
    return {"method": method, "batch": batch, **summarize(rows), "heldout_nll_unedited": base,
            "chunks": chunks, "broken_chunks": sum(c["broken"] for c in chunks)}


def evaluate_sequential(mt: LoadedModel, records: Sequence[dict], method: str = "rome",
                        n: int | None = None, *, checkpoints: Sequence[int] | None = None,
                        batch: int = 1, hparams=None, break_nll: float = BREAK_NLL,
                        generation: bool = True, progress: bool = True,
                        on_step: Callable[[dict, list[dict]], None] | None = None,
                        health: tuple[list[str], list[str]] | None = None) -> dict:
    """Apply the edits one after another (MEMIT: ``batch`` facts per edit) and keep them; after
    each checkpoint (a number of edits; default 1, 10, 100, ... and the last) score every record
    edited so far and the model's health. After every edit the held-out NLL is checked: edits that
    raise it by more than ``break_nll`` over the previous edit are counted as breaking. All edits
    are undone at the end (also on errors). ``on_step(step, breaking)`` is called after each
    checkpoint, e.g. to save partial results of a long run. ``health``: as in
    :func:`evaluate_batched`."""
    edited = _check(records, n)
    texts, prompts = health if health is not None else health_texts(records, edited)
    records = edited
    total = len(records)
    if checkpoints is None:
        checkpoints = [c for c in (1, 10, 100, 1_000, 10_000) if c < total] + [total]
    checkpoints = sorted({min(int(c), total) for c in checkpoints if int(c) >= 1})
    if batch < 1:
        raise ValueError("batch must be at least 1.")
    start_health = model_health(mt, texts, prompts if generation else ())
    edits: list[Edit] = []
    steps, breaking, previous, done = [], [], start_health["heldout_nll"], 0
    bar = tqdm(total=total, desc=f"{method}, sequential", disable=not progress)
    try:
        while done < total:
            size = min(batch, total - done) if method == "memit" else 1
            size = min(size, min(c for c in checkpoints if c > done) - done)
            chunk = records[done : done + size]
            edits += apply_edits(mt, [r["requested_rewrite"] for r in chunk], method, hparams)
            done += size
            bar.update(size)
            nll = model_health(mt, texts[:8])["heldout_nll"]
            if nll - previous > break_nll:
                breaking.append({"after_edit": done, "nll_rise": nll - previous})
            previous = nll
            if done in checkpoints:
                step = {"edits": done, **_score(mt, records[:done])}
                step.update(model_health(mt, texts, prompts if generation else ()))
                steps.append(step)
                if on_step is not None:
                    on_step(step, list(breaking))
    finally:
        bar.close()
        undo(edits)
    return {"method": method, "batch": batch if method == "memit" else 1, "n": total,
            "unedited": start_health, "steps": steps, "breaking_edits": breaking,
            "final": steps[-1] if steps else {}}


__all__ = ["MASS_METHODS", "BREAK_NLL", "apply_edits", "undo", "health_texts", "model_health",
           "evaluate_batched", "evaluate_sequential"]
