"""Where to edit? ROME at every layer, scored, beside the tracing effect (paper §3.3, Fig. 4-style;
Hase et al. 2023, "Does Localization Inform Editing?").

:func:`sweep_layers` edits each record at each layer with ROME (the model's preset otherwise) and
scores ES / PS / NS / S on CounterFact-style records. The key statistics C of all layers come from
one pass over the corpus (:func:`rome_lib.covariance.layers_stats`), so a sweep of many layers pays
for the corpus once. :func:`spearman` is the rank correlation used to compare the edit score per
layer with the causal-tracing effect per layer (:func:`tracing_effect`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

import torch

from .covariance import layers_stats
from .evaluation import evaluate
from .hparams import ROMEHyperParams
from .models import LoadedModel
from .tracing import BUCKETS

SCORES = ("S", "ES", "PS", "NS")


def parse_layers(text: str, n_layer: int) -> list[int]:
    """"A-B" (inclusive), "A-B:step" or "a,b,c" → layer indices, each checked against the model."""
    try:
        if "-" in text:
            span, _, step = text.partition(":")
            first, last = (int(x) for x in span.split("-"))
            layers = list(range(first, last + 1, int(step) if step else 1))
        else:
            layers = [int(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"Cannot read the layers {text!r}: use A-B, A-B:step or a,b,c.") from None
    bad = [l for l in layers if not 0 <= l < n_layer]
    if not layers or bad:
        raise ValueError(f"Layers {bad or text!r} do not exist: this model has layers 0..{n_layer - 1}.")
    return layers


def sweep_layers(mt: LoadedModel, records: Sequence[dict], layers: Sequence[int], *,
                 hparams: ROMEHyperParams | None = None, progress: bool = True,
                 on_layer: Callable[[dict], None] | None = None) -> dict:
    """ROME at each of ``layers`` (in the order given) on every record (each edit undone), scored
    without generation.

    Returns ``{"model", "n", "layers", "mom2_corpus", "mom2_n_samples", "results": [{"layer", "S",
    "ES", "PS", "NS"}, ...]}`` (percent). ``hparams`` (default: the model's preset) sets everything
    but the layer. ``on_layer`` gets that dict after every layer, its results so far (a long sweep
    can keep what finished).
    """
    if not records:
        raise ValueError("No records to edit.")
    base = hparams or ROMEHyperParams.for_model(mt.name, mt.n_layer)
    if base.mom2_adjustment:  # one pass over the corpus for every layer; cached for apply_rome
        layers_stats(mt, layers, corpus=base.mom2_corpus, n_samples=base.mom2_n_samples,
                     progress=progress)
    out = {"model": mt.name, "n": len(records), "layers": list(layers),
           "mom2_corpus": base.mom2_corpus, "mom2_n_samples": base.mom2_n_samples, "results": []}
    for layer in layers:
        scores = evaluate(mt, records, "rome", hparams=replace(base, layer=layer), generation=False,
                          progress=progress)
        out["results"].append({"layer": layer, **{k: scores[k] for k in SCORES}})
        if on_layer is not None:
            on_layer(out)
    return out


def tracing_effect(aie: dict, kind: str = "mlp", bucket: str = "last_subject") -> list[float]:
    """Per-layer AIE of ``kind`` at ``bucket`` from an AIE result's JSON (``AIEResult.to_json``)."""
    return list(aie["kinds"][kind][BUCKETS.index(bucket)])


def _ranks(values: Sequence[float]) -> torch.Tensor:
    """Ranks 1..n, ties sharing their mean rank."""
    x = torch.tensor(values, dtype=torch.float64)
    order = x.argsort()
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, len(x) + 1, dtype=torch.float64)
    for v in x.unique():
        tied = x == v
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation of two equally long sequences (Pearson's r of their ranks)."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError("Spearman's correlation needs two sequences of the same length ≥ 2.")
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = (ra.square().sum() * rb.square().sum()).sqrt()
    if denominator == 0:
        raise ValueError("Spearman's correlation is undefined when one sequence is constant.")
    return float((ra * rb).sum() / denominator)


__all__ = ["SCORES", "parse_layers", "sweep_layers", "tracing_effect", "spearman"]
