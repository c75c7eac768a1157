"""CounterFact metrics (paper §3.3, Table 4), computed as the official ``summarize.py`` does.

Records are in the official counterfact.json format::

    {"case_id": 0, "requested_rewrite": {"prompt": "The mother tongue of {} is", "relation_id": "P103",
      "target_new": {"str": "English", "id": "Q1860"}, "target_true": {"str": "French", "id": "Q150"},
      "subject": "Danielle Darrieux"},
     "paraphrase_prompts": [...], "neighborhood_prompts": [...], "attribute_prompts": [...],
     "generation_prompts": [...]}

* P[o | p] = exp(−mean token NLL) of the object o (with its leading space) teacher-forced after p,
  so objects of several tokens are compared fairly.
* ES = % of records with P[new] > P[true] on the rewrite prompt; EM = mean (P[new] − P[true]).
* PS / PM: the same on the paraphrase prompts, averaged within each record, then over records.
* NS = % with P[true] > P[new] on the neighbourhood prompts (other subjects with the *true* object);
  NM = mean (P[true] − P[new]); both averaged per record first.
* S = harmonic mean of ES, PS and NS.
* GE (fluency) = mean over generated texts of (⅔·H₂ + 4⁄3·H₃) / 2, the weighted n-gram entropies
  in bits of the official ``n_gram_entropy`` (reported ×100, as the paper's 626.6).
* RS (consistency) = tf-idf cosine between all generated texts of a record joined and the reference
  texts about the *new* object joined (×100). The official reference texts are Wikipedia snippets
  about other subjects with that object; here they come from the fact world for the embedded model,
  else from the records themselves (statements of other records whose true object is the new one).

Strict inequalities: equal probabilities count as a failure for ES, PS and NS alike.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from typing import Callable, Iterable, Sequence

import torch
from tqdm import tqdm  # text bars: no widget output in committed notebooks

from .methods import EDIT_METHODS, edit_function
from .models import LoadedModel, forward_with_cache
from .tokens import sample_top_k

METHODS = ("none", *EDIT_METHODS)  # "none": score the unedited model


# ----------------------------------------------------------------------------------------------
# Probabilities of objects
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def object_nlls(mt: LoadedModel, prompts: Sequence[str], objects: Sequence[str],
                batch_size: int = 64) -> torch.Tensor:
    """Mean token NLL of each ``objects[i]`` (give it its leading space) teacher-forced after
    ``prompts[i]``, batched with right padding and an attention mask. float32 [N] on the CPU."""
    if len(prompts) != len(objects):
        raise ValueError("prompts and objects must have the same length.")
    tok = mt.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    out = torch.empty(len(prompts))
    for start in range(0, len(prompts), batch_size):
        rows, spans = [], []
        for prompt, obj in zip(prompts[start : start + batch_size], objects[start : start + batch_size]):
            p = tok(prompt)["input_ids"]
            o = tok(obj, add_special_tokens=False)["input_ids"]
            if not o:
                raise ValueError(f"The object {obj!r} has no tokens.")
            rows.append(p + o)
            spans.append((len(p), o))
        width = max(map(len, rows))
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=mt.device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=mt.device)
        logp = torch.log_softmax(mt.model(input_ids=ids, attention_mask=mask).logits.float(), -1)
        for i, (n_prompt, obj_ids) in enumerate(spans):
            pos = torch.arange(n_prompt - 1, n_prompt - 1 + len(obj_ids), device=mt.device)
            picked = logp[i, pos, torch.tensor(obj_ids, device=mt.device)]
            out[start + i] = -picked.mean().cpu()
    return out


def object_probs(mt: LoadedModel, prompts: Sequence[str], objects: Sequence[str],
                 batch_size: int = 64) -> torch.Tensor:
    """P[o | p] = exp(−mean token NLL) for each pair (see :func:`object_nlls`)."""
    return torch.exp(-object_nlls(mt, prompts, objects, batch_size))


def _space(s: str) -> str:
    return s if s.startswith(" ") else " " + s


def score_record(mt: LoadedModel, record: dict, batch_size: int = 64) -> dict:
    """NLLs of the new and the true object on every rewrite / paraphrase / neighbourhood prompt,
    in one batched pass: ``{"rewrite": [{"target_new": nll, "target_true": nll}, ...], ...}``."""
    rw = record["requested_rewrite"]
    groups = {
        "rewrite": [rw["prompt"].format(rw["subject"])],
        "paraphrase": list(record.get("paraphrase_prompts", [])),
        "neighborhood": list(record.get("neighborhood_prompts", [])),
    }
    new, true = _space(rw["target_new"]["str"]), _space(rw["target_true"]["str"])
    prompts, objects = [], []
    for texts in groups.values():
        for text in texts:
            prompts += [text, text]
            objects += [new, true]
    nll = object_nlls(mt, prompts, objects, batch_size).tolist()
    out, i = {}, 0
    for group, texts in groups.items():
        out[group] = []
        for _ in texts:
            out[group].append({"target_new": nll[i], "target_true": nll[i + 1]})
            i += 2
    return out


# ----------------------------------------------------------------------------------------------
# Generation, entropy, tf-idf
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def generate(mt: LoadedModel, prompts: Sequence[str], max_length: int = 100, *, top_k: int = 5,
             greedy: bool = False, seed: int = 0) -> list[str]:
    """Prompt + continuation for each prompt, ``max_length`` tokens in all (official
    ``generate_fast``: top-k 5 sampling, max_out_len 100); seeded; ``greedy=True`` takes the argmax."""
    generator = torch.Generator().manual_seed(seed)
    limit = getattr(mt.model.config, "n_positions", None) or getattr(
        mt.model.config, "max_position_embeddings", max_length)
    texts = []
    for prompt in prompts:
        ids = mt.tokenizer(prompt)["input_ids"]
        x = torch.tensor([ids], device=mt.device)
        past, new = None, []
        while len(ids) + len(new) < min(max_length, limit):
            logits, past = forward_with_cache(mt.model, x, past)
            logits = logits[0, -1].float().cpu()
            if greedy:
                nxt = int(logits.argmax())
            else:
                nxt = int(sample_top_k(logits, top_k, generator))
            new.append(nxt)
            x = torch.tensor([[nxt]], device=mt.device)
        texts.append(mt.tokenizer.decode(ids + new, skip_special_tokens=True))
    return texts


_WORDS = re.compile(r"\w+(?:'\w+)?|[^\w\s]")


def word_tokenize(text: str) -> list[str]:
    """Words and punctuation marks (close to ``nltk.word_tokenize`` for plain English text)."""
    return _WORDS.findall(text)


def n_gram_entropy(text: str, ns: Sequence[int] = (2, 3),
                   weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """Official ``compute_n_gram_entropy``: mean over n of weight_n · H(n-gram frequencies) in bits."""
    tokens = word_tokenize(text)
    values = []
    for n, w in zip(ns, weights):
        counts = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
        total = sum(counts.values())
        h = -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0
        values.append(w * h)
    return sum(values) / len(values)


def generation_entropy(texts: Iterable[str]) -> float:
    """GE of a set of texts: the arithmetic mean of :func:`n_gram_entropy` (official ``agg="arith"``)."""
    values = [n_gram_entropy(t) for t in texts]
    return sum(values) / len(values) if values else float("nan")


class TfIdf:
    """tf-idf vectors as scikit-learn's TfidfVectorizer defaults: lower-case words of ≥ 2
    characters, raw counts × smooth idf ln((1+n)/(1+df)) + 1, vocabulary = the fitted documents."""

    _TOKEN = re.compile(r"(?u)\b\w\w+\b")

    def __init__(self, documents: Iterable[str]):
        docs = [set(self.terms(d)) for d in documents]
        df = Counter(t for d in docs for t in d)
        n = len(docs)
        self.idf = {t: math.log((1 + n) / (1 + c)) + 1 for t, c in df.items()}

    @classmethod
    def terms(cls, text: str) -> list[str]:
        return cls._TOKEN.findall(text.lower())

    def vector(self, text: str) -> dict[str, float]:
        counts = Counter(t for t in self.terms(text) if t in self.idf)
        return {t: c * self.idf[t] for t, c in counts.items()}

    def similarity(self, a: str, b: str) -> float:
        """Cosine between the tf-idf vectors of ``a`` and ``b`` (0 when either is empty)."""
        va, vb = self.vector(a), self.vector(b)
        na = math.sqrt(sum(v * v for v in va.values()))
        nb = math.sqrt(sum(v * v for v in vb.values()))
        if na == 0 or nb == 0:
            return 0.0
        return sum(v * vb.get(t, 0.0) for t, v in va.items()) / (na * nb)


def _object_key(relation_id: str, target: dict) -> tuple[str, str]:
    return relation_id, str(target.get("id", target["str"]))


class References:
    """Reference texts about an object, and the tf-idf weights to compare texts with them.

    ``texts_for(record)`` gives the texts about the record's *new* object (not about its own subject).
    """

    def __init__(self, texts_for: Callable[[dict], list[str]], idf_documents: Iterable[str]):
        self.texts_for = texts_for
        self.tfidf = TfIdf(idf_documents)

    @classmethod
    def from_records(cls, records: Sequence[dict]) -> "References":
        """Statements from the records themselves: every record states "<prompt(subject)> <true object>"
        and its neighbourhood prompts completed with the same true object; the references of a record
        are such statements about *other* subjects whose true object is the record's new object."""
        by_object: dict[tuple, list[str]] = defaultdict(list)
        documents = []
        for r in records:
            rw = r["requested_rewrite"]
            true = rw["target_true"]["str"].strip()
            key = _object_key(rw["relation_id"], rw["target_true"])
            statements = [rw["prompt"].format(rw["subject"]) + " " + true]
            statements += [p + " " + true for p in r.get("neighborhood_prompts", [])]
            by_object[key].extend(statements)
            documents += statements

        def texts_for(record: dict) -> list[str]:
            rw = record["requested_rewrite"]
            pairs = by_object.get(_object_key(rw["relation_id"], rw["target_new"]), [])
            seen, out = set(), []
            for s in pairs:  # statements that mention the record's own subject are left out
                if rw["subject"] not in s and s not in seen:
                    seen.add(s)
                    out.append(s)
            return out

        return cls(texts_for, documents)

    @classmethod
    def from_toy_world(cls, n: int = 5) -> "References":
        """The embedded fact world's reference texts about an object; idf over its training text."""
        from .toyworld.world import build_world

        world = build_world()

        def texts_for(record: dict) -> list[str]:
            rw = record["requested_rewrite"]
            return list(world.reference_texts(rw["relation_id"], rw["target_new"]["str"], n))

        return cls(texts_for, world.training_texts())

    def score(self, record: dict, generated: Sequence[str]) -> float | None:
        """RS of one record (None when there is no reference text for its new object)."""
        refs = self.texts_for(record)
        if not refs:
            return None
        return self.tfidf.similarity(" ".join(generated), " ".join(refs))


def default_references(mt: LoadedModel, records: Sequence[dict]) -> References:
    """The fact world's references for the embedded model (if it is importable), else the records'."""
    if mt.name == "toy":
        try:
            return References.from_toy_world()
        except (ImportError, AttributeError):
            pass
    return References.from_records(records)


# ----------------------------------------------------------------------------------------------
# Summaries and the whole run
# ----------------------------------------------------------------------------------------------
def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def hmean(values: Sequence[float]) -> float:
    """Harmonic mean (0 if any value is 0, as scipy's ``hmean``)."""
    if any(v != v for v in values):
        return float("nan")
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1 / v for v in values)


def record_metrics(scores: dict) -> dict:
    """Per-record fractions and margins (0..1) from :func:`score_record`'s NLLs."""
    p = lambda nll: math.exp(-nll)  # noqa: E731
    out = {}
    for group, succ, margin in (("rewrite", "ES", "EM"), ("paraphrase", "PS", "PM"),
                                ("neighborhood", "NS", "NM")):
        items = scores.get(group, [])
        if not items:
            continue
        if group == "neighborhood":
            out[succ] = _mean([float(x["target_true"] < x["target_new"]) for x in items])
            out[margin] = _mean([p(x["target_true"]) - p(x["target_new"]) for x in items])
        else:
            out[succ] = _mean([float(x["target_new"] < x["target_true"]) for x in items])
            out[margin] = _mean([p(x["target_new"]) - p(x["target_true"]) for x in items])
    return out


def summarize(per_record: Sequence[dict]) -> dict:
    """Averages over records, in percent, and S = hmean(ES, PS, NS). Records lacking a metric (e.g.
    no paraphrase prompts) are left out of that metric's mean; ``n`` counts all records."""
    out: dict = {"n": len(per_record)}
    for key in ("ES", "EM", "PS", "PM", "NS", "NM", "GE", "RS"):
        values = [r[key] for r in per_record if r.get(key) is not None]
        if values:
            out[key] = 100 * _mean(values)
    if all(k in out for k in ("ES", "PS", "NS")):
        out["S"] = hmean([out["ES"], out["PS"], out["NS"]])
    return out


def evaluate(
    mt: LoadedModel,
    records: Sequence[dict],
    method: str = "none",
    n: int | None = None,
    progress: bool = True,
    *,
    hparams=None,
    generation: bool = True,
    gen_length: int = 100,
    references: References | None = None,
    per_record: bool = False,
    batch_size: int = 64,
) -> dict:
    """Edit each of the first ``n`` records with ``method``, score it, undo the edit.

    Returns ``{"method", "n", "ES", "EM", "PS", "PM", "NS", "NM", "S", "GE", "RS"}`` (percent, as the
    paper; GE and RS only with ``generation``), plus ``"records"`` (each record's case_id and 0..1
    metrics) when ``per_record``. Every edit is undone (also on errors), so the model is
    bit-identical before and after. ``hparams`` goes to the editing method (None: its preset).
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}: use one of {', '.join(METHODS)}.")
    records = list(records)[:n] if n is not None else list(records)
    if not records:
        raise ValueError("No records to evaluate.")
    if generation and references is None:
        references = default_references(mt, records)
    rows = []
    for record in tqdm(records, desc=f"evaluate ({method})", disable=not progress):
        edit = None
        try:
            if method != "none":
                edit = edit_function(method, hparams)(mt, record["requested_rewrite"])
            row = record_metrics(score_record(mt, record, batch_size))
            prompts = record.get("generation_prompts", [])
            if generation and prompts:
                texts = generate(mt, prompts, gen_length, seed=int(record.get("case_id", 0)))
                row["GE"] = generation_entropy(texts)
                row["RS"] = references.score(record, texts)
        finally:
            if edit is not None:
                edit.undo()
        row["case_id"] = record.get("case_id")
        rows.append(row)
    result = {"method": method, **summarize(rows)}
    if per_record:
        result["records"] = rows
    return result


__all__ = [
    "METHODS", "object_nlls", "object_probs", "score_record", "generate", "word_tokenize",
    "n_gram_entropy", "generation_entropy", "TfIdf", "References", "default_references", "hmean",
    "record_metrics", "summarize", "evaluate",
]
