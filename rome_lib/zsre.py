"""zsRE editing metrics (paper §3.2, Table 1): token-level top-1 accuracy, as the official
``compute_rewrite_quality_zsre``.

A zsRE record (``zsre_mend_eval.json``: a question ``src`` about ``subject``, its ``answers``, a
paraphrase ``rephrase``, and an unrelated Natural Questions prompt ``loc`` with answer ``loc_ans``)
becomes an edit case the way the official ``MENDQADataset`` does it (:func:`zsre_case`):

* the request: prompt = ``src`` with the subject replaced by "{}", target_new = ``answers[0]``;
* paraphrase_prompts = [``rephrase``];
* neighborhood_prompts: one {prompt, target} per token of " " + ``loc_ans``: prompt = ``loc`` + "?" +
  the decoded answer tokens before it, target = that token decoded.

Metrics, each the fraction of target tokens that are the model's argmax next token:

* efficacy: the target_new tokens after the rewrite prompt, teacher-forced (prompt + decoded target
  tokens so far);
* paraphrase: the same after each paraphrase prompt;
* specificity: the ``loc_ans`` tokens after the neighbourhood prompt -- of the *true* answer, so an
  edit that leaves unrelated knowledge intact scores what the unedited model scores (the paper's
  Table 1, GPT-2 XL: unedited 24.2, ROME 24.2, FT 23.2).

As the official code, the teacher-forced prefixes are *strings* (prompt + ``decode(target[:i])``,
tokenised again) and a target is the first token of its decoded string tokenised again; a case's
score is the mean over its tokens and the summary is the mean over cases, in percent (official
``summarize.py``). Paper's numbers (Table 1, GPT-2 XL, 10,000 records): ROME 99.8 / 88.1 / 24.2, FT 99.6 / 82.1 / 23.2.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .models import LoadedModel

PAPER_ZSRE = {  # the paper's Table 1 (GPT-2 XL): efficacy, paraphrase, specificity (%)
    "ROME": (99.8, 88.1, 24.2),
    "FT": (99.6, 82.1, 23.2),
}


def zsre_case(record: dict, tokenizer, case_id: int = 0) -> dict:
    """One official-format edit case from a raw zsre_mend_eval.json record (MENDQADataset's mapping)."""
    if "nq question: " not in record["loc"]:
        raise ValueError(f"zsRE record {case_id}: the neighbourhood prompt lacks 'nq question: '.")
    if record["subject"] not in record["src"]:
        raise ValueError(f"zsRE record {case_id}: the subject {record['subject']!r} is not in the "
                         f"question {record['src']!r}.")
    ans = tokenizer(" " + record["loc_ans"])["input_ids"]
    return {
        "case_id": case_id,
        "requested_rewrite": {
            "prompt": record["src"].replace(record["subject"], "{}"),
            "subject": record["subject"],
            "target_new": {"str": record["answers"][0]},
            "target_true": {"str": "<|endoftext|>"},
        },
        "paraphrase_prompts": [record["rephrase"]],
        "neighborhood_prompts": [
            {"prompt": record["loc"] + "?" + tokenizer.decode(ans[:i]), "target": tokenizer.decode([ans[i]])}
            for i in range(len(ans))
        ],
        "attribute_prompts": [],
        "generation_prompts": [],
    }


def zsre_cases(records: Sequence[dict], tokenizer) -> list[dict]:
    """:func:`zsre_case` for every record (case ids 0, 1, ...)."""
    return [zsre_case(r, tokenizer, i) for i, r in enumerate(records)]


@torch.no_grad()
def prediction_correct(mt: LoadedModel, prompts: Sequence[str], targets: Sequence[str],
                       batch_size: int = 32) -> list[bool]:
    """For each (prompt, target): is the first token of ``target`` the model's argmax after ``prompt``?

    (The official ``test_batch_prediction_acc``: right-padded batches, the logits at each prompt's
    last real token.)
    """
    if len(prompts) != len(targets):
        raise ValueError("prompts and targets differ in length.")
    tok, out = mt.tokenizer, []
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    for start in range(0, len(prompts), batch_size):
        chunk = [tok(p)["input_ids"] for p in prompts[start : start + batch_size]]
        width = max(map(len, chunk))
        ids = torch.tensor([c + [pad] * (width - len(c)) for c in chunk], device=mt.device)
        mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in chunk], device=mt.device)
        logits = mt.model(input_ids=ids, attention_mask=mask).logits
        last = torch.tensor([len(c) - 1 for c in chunk], device=mt.device)
        predicted = logits[torch.arange(len(chunk), device=mt.device), last].argmax(-1).tolist()
        for p, target in zip(predicted, targets[start : start + batch_size]):
            target_ids = tok(target)["input_ids"]
            out.append(bool(target_ids) and p == target_ids[0])
    return out


def _teacher_forced(tokenizer, prompt: str, target: str) -> tuple[list[str], list[str]]:
    """The official prefixes and single-token targets for ``target`` (given with a leading space)."""
    ids = tokenizer(target)["input_ids"]
    prompts = [prompt + tokenizer.decode(ids[:i]) for i in range(len(ids))]
    return prompts, [tokenizer.decode([ids[i]]) for i in range(len(ids))]


def compute_rewrite_quality_zsre(mt: LoadedModel, case: dict) -> dict[str, list[bool]]:
    """Per-token correctness of one case, keyed as the official results:
    rewrite_prompts_correct, paraphrase_prompts_correct, neighborhood_prompts_correct."""
    rewrite = case["requested_rewrite"]
    target = " " + rewrite["target_new"]["str"]
    groups = {"rewrite_prompts": [rewrite["prompt"].format(rewrite["subject"])],
              "paraphrase_prompts": list(case["paraphrase_prompts"])}
    prompts, targets, owner = [], [], []
    for key, group in groups.items():
        for prompt in group:
            p, t = _teacher_forced(mt.tokenizer, prompt, target)
            prompts += p
            targets += t
            owner += [key] * len(p)
    neighborhood = case["neighborhood_prompts"]
    prompts += [n["prompt"] for n in neighborhood]
    targets += [n["target"] for n in neighborhood]
    owner += ["neighborhood_prompts"] * len(neighborhood)
    correct = prediction_correct(mt, prompts, targets)
    out = {f"{key}_correct": [] for key in (*groups, "neighborhood_prompts")}
    for key, c in zip(owner, correct):
        out[f"{key}_correct"].append(c)
    return out


def summarize_zsre(results: Sequence[dict]) -> dict[str, float]:
    """Mean over cases of each case's token accuracy, in percent: efficacy, paraphrase, specificity."""
    if not results:
        raise ValueError("No zsRE results to summarize.")

    def mean_of(key: str) -> float:
        scores = [sum(r[key]) / len(r[key]) for r in results if r[key]]
        return 100.0 * sum(scores) / len(scores) if scores else float("nan")

    return {"efficacy": mean_of("rewrite_prompts_correct"),
            "paraphrase": mean_of("paraphrase_prompts_correct"),
            "specificity": mean_of("neighborhood_prompts_correct"),
            "n": len(results)}


def evaluate_zsre(mt: LoadedModel, cases: Sequence[dict], edit_fn=None) -> dict:
    """Edit each case with ``edit_fn(mt, request)`` (returning an object with ``.undo()``; None
    evaluates the unedited model), measure it, undo it. Returns {"cases": [...], "summary": {...}}."""
    results = []
    for case in cases:
        edit = edit_fn(mt, case["requested_rewrite"]) if edit_fn is not None else None
        try:
            results.append(compute_rewrite_quality_zsre(mt, case))
        finally:
            if edit is not None:
                edit.undo()
    return {"cases": results, "summary": summarize_zsre(results)}


__all__ = [
    "PAPER_ZSRE", "zsre_case", "zsre_cases", "prediction_correct", "compute_rewrite_quality_zsre",
    "summarize_zsre", "evaluate_zsre",
]
