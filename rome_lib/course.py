"""The lessons' one-line setup: a model, the facts it knows, its CounterFact-style records, the noise.

    from rome_lib import course
    mt, FACTS, RECORDS, NOISE = course.setup(MODEL)

* **facts** (:func:`model_facts`): the ``known_facts.json`` shipped beside the weights (the embedded
  toy model, a fetched SmolLM2) when there is one; otherwise the paper's known set (known_1000.json,
  fetched once) filtered, as the official code decides "known", to the facts whose greedy next token
  begins the true object on *this* model (:func:`rome_lib.real_models.select_known`). That pass runs
  once with a progress bar and is cached under ``<cache>/known_facts/`` keyed on a fingerprint of the
  weight files, so a retrained model is measured again. A model that knows none of them (random
  weights) gets an empty list, and setup says so.
* **records** (:func:`model_records`): the ``counterfact.json`` beside the weights (the toy model's
  own records), else the paper's CounterFact file via :mod:`rome_lib.data` (one clear
  :class:`~rome_lib.data.DataNotAvailableError` when it cannot be had).
* **noise**: ν = 3 × std of the subject-token embeddings of the fact set it traces (the official
  code's choice; the paper's App. B.1 takes the std of token embeddings over a body of text): the
  whole known set, as the official code measures it, not only the facts this model knows;
  when no fact set can be had, 3 × std of the whole embedding matrix (:func:`tracing.default_noise`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
from tqdm.auto import tqdm

from .data import DataNotAvailableError, load_counterfact, load_known_1000, load_known_facts
from .models import LoadedModel, load_model
from .paths import cache_root
from .real_models import select_known
from .tracing import default_noise, known_facts


class Setup(NamedTuple):
    """What a lesson starts from; unpack it: ``mt, FACTS, RECORDS, NOISE = course.setup(MODEL)``."""

    mt: LoadedModel
    facts: list[dict]
    records: list[dict]
    noise: float | None


def known_facts_cache(mt: LoadedModel) -> Path | None:
    """Where the known facts of ``mt`` are cached (None when its weights have no fingerprint)."""
    if mt.weights_id == "unknown":
        return None
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(mt.name).name or mt.name)
    return cache_root() / "known_facts" / f"{name}-{mt.weights_id}.json"


def select_known_with_progress(mt: LoadedModel, facts: Sequence[dict], chunk: int = 64) -> list[dict]:
    """:func:`select_known` in chunks under a progress bar (GPT-2 XL on a CPU takes minutes)."""
    kept: list[dict] = []
    for start in tqdm(range(0, len(facts), chunk), desc="which facts does the model know",
                      unit="batch"):
        kept += select_known(mt, facts[start : start + chunk])
    return kept


def model_facts(mt: LoadedModel, candidates: Sequence[dict] | None = None) -> list[dict]:
    """The facts ``mt`` knows: the set beside its weights, else ``candidates`` (default: the paper's
    known_1000.json) that it predicts correctly, computed once per weights and cached."""
    beside = known_facts(mt)
    if beside:
        return beside
    path = known_facts_cache(mt)
    if path is not None and path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    candidates = load_known_1000() if candidates is None else candidates
    kept = select_known_with_progress(mt, candidates)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(kept, indent=1), encoding="utf-8")
    return kept


def model_records(mt: LoadedModel) -> list[dict]:
    """CounterFact-style records for ``mt``: its own beside its weights, else the paper's file."""
    path = mt.data_file("counterfact.json")
    if path is not None:
        return json.loads(path.read_text(encoding="utf-8"))
    return load_counterfact()


def example_facts() -> list[dict]:
    """Facts for the cells to run on when the model knows none: the paper's known set where it can
    be had, else the embedded world's; prints which (the model does not know them, and says so)."""
    try:
        facts, which = load_known_1000(), "the paper's known set (known_1000.json)"
    except DataNotAvailableError:
        facts, which = load_known_facts("toy"), "the embedded world's facts"
    print(f"The model knows none of its facts: the cells below run on {len(facts)} facts of {which} "
          "that it does NOT know, to show the mechanics; their numbers mean nothing about knowledge.")
    return facts


def setup(model_name: str, device: str | torch.device | None = None, *, facts: bool = True,
          records: bool = True, dtype: torch.dtype | None = None) -> Setup:
    """Load ``model_name`` (as :func:`rome_lib.models.load_model`) with its facts, records and noise.

    ``facts=False`` / ``records=False`` skip what a lesson does not use (an empty list; no noise
    without facts), so nothing is downloaded or computed for nothing. Prints one line that says what
    was found, and plainly when the model knows no facts.
    """
    mt = load_model(model_name, device=device, dtype=dtype)
    known: list[dict] = []
    noise = None
    notes = []
    if facts:
        pool = known_facts(mt)  # the set beside the weights, if any
        if not pool:
            try:
                pool = load_known_1000()
            except DataNotAvailableError as error:
                notes.append(f"no known facts: the paper's known set cannot be had here ({error})")
        known = model_facts(mt, pool) if pool else []
        noise = default_noise(mt, [f["subject"] for f in pool] if pool else None)
        if pool and not known:
            notes.append(f"the model knows none of the {len(pool)} facts of its known set "
                         "(untrained or unrelated weights?): cells that need known facts say what "
                         "they do instead")
        if not pool:
            notes.append("noise ν from the std of the whole embedding matrix")
    recs = model_records(mt) if records else []
    parts = [f"{model_name}: {mt.n_layer} layers"]
    if facts:
        parts.append(f"{len(known)} known facts, noise ν = {noise:.3f}")
    if records:
        parts.append(f"{len(recs)} CounterFact-style records")
    print(", ".join(parts) + "".join(f"\n  note: {n}" for n in notes))
    return Setup(mt, known, recs, noise)


__all__ = ["Setup", "setup", "example_facts", "model_facts", "model_records", "known_facts_cache",
           "select_known_with_progress"]
