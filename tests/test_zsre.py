"""zsRE metrics on hand-made cases: a "model" that follows a bigram table, so the argmax after every
prefix is known, and the real tiny GPT-2 for the batching/padding path."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from rome_lib.models import LoadedModel
from rome_lib.zsre import (
    compute_rewrite_quality_zsre, evaluate_zsre, prediction_correct, summarize_zsre, zsre_case,
    zsre_cases,
)

RECORDS = json.loads((Path(__file__).parent / "fixtures" / "official" / "zsre_mend_eval.json").read_text())


class Bigram(nn.Module):
    """Predicts next[(previous, token)], else next[token], else token 0, at every position."""

    def __init__(self, vocab: int, next_token: dict[int, int]):
        super().__init__()
        self.vocab, self.next_token = vocab, next_token
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        def predict(row, t):
            pair = (row[t - 1], row[t]) if t else None
            return self.next_token.get(pair, self.next_token.get(row[t], 0))

        rows = input_ids.tolist()
        nxt = torch.tensor([[predict(row, t) for t in range(len(row))] for row in rows])
        return SimpleNamespace(logits=nn.functional.one_hot(nxt, self.vocab).float())


def bigram_model(tokenizer, texts: list[str]) -> LoadedModel:
    """A model that continues each of ``texts`` exactly (its trigrams), else predicts token 0."""
    table = {}
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        table.update(zip(zip(ids[:-2], ids[1:-1]), ids[2:]))
    return LoadedModel(model=Bigram(len(tokenizer), table), tokenizer=tokenizer, layout=None, name="bigram")


def test_case_mapping_is_the_official_one(tokenizer):
    case = zsre_case(RECORDS[0], tokenizer, 7)
    rewrite = case["requested_rewrite"]
    assert case["case_id"] == 7
    assert rewrite["prompt"] == "What university did {} attend?" and rewrite["subject"] == "Watts Humphrey"
    assert rewrite["target_new"]["str"] == "Illinois Institute of Technology"
    assert case["paraphrase_prompts"] == ["What university did Watts Humphrey take part in?"]
    ans = tokenizer(" Hugo Weaving")["input_ids"]
    assert len(case["neighborhood_prompts"]) == len(ans)
    first, last = case["neighborhood_prompts"][0], case["neighborhood_prompts"][-1]
    assert first["prompt"] == RECORDS[0]["loc"] + "?"
    assert last["prompt"] + last["target"] == RECORDS[0]["loc"] + "? Hugo Weaving"
    assert [c["case_id"] for c in zsre_cases(RECORDS, tokenizer)] == [0, 1]
    with pytest.raises(ValueError, match="nq question"):
        zsre_case({**RECORDS[0], "loc": "who is"}, tokenizer)


def test_token_accuracy_on_hand_made_cases(tokenizer):
    case = zsre_case(RECORDS[1], tokenizer)  # Space Needle -> Paris; loc answer " Seattle"
    n_target = len(tokenizer(" Paris")["input_ids"])
    n_loc = len(tokenizer(" Seattle")["input_ids"])
    assert n_target >= 1 and n_loc >= 1

    # Knows the new fact on the rewrite prompt only, and the true neighbourhood answer.
    mt = bigram_model(tokenizer, ["In which city is Space Needle? Paris",
                                  RECORDS[1]["loc"] + "? Seattle"])
    out = compute_rewrite_quality_zsre(mt, case)
    assert out["rewrite_prompts_correct"] == [True] * n_target
    assert len(out["paraphrase_prompts_correct"]) == n_target
    assert out["neighborhood_prompts_correct"] == [True] * n_loc
    # The paraphrase ends in "located?", which the model has never seen.
    assert not any(out["paraphrase_prompts_correct"])

    # Knows nothing: every token wrong (token 0 is never a target here).
    blank = bigram_model(tokenizer, [])
    out = compute_rewrite_quality_zsre(blank, case)
    assert not any(out["rewrite_prompts_correct"] + out["neighborhood_prompts_correct"])


def test_partial_credit_is_the_fraction_of_tokens(tokenizer):
    target = " Illinois Institute of Technology"
    ids = tokenizer(target)["input_ids"]
    assert len(ids) >= 3
    prompt = "What university did Watts Humphrey attend?"
    # Knows the first two target tokens only (prompt's last token -> t0 -> t1, then nothing).
    last = tokenizer(prompt)["input_ids"][-1]
    table = {last: ids[0], ids[0]: ids[1]}
    mt = LoadedModel(model=Bigram(len(tokenizer), table), tokenizer=tokenizer, layout=None, name="b")
    out = compute_rewrite_quality_zsre(mt, zsre_case(RECORDS[0], tokenizer))
    correct = out["rewrite_prompts_correct"]
    assert correct[:2] == [True, True] and sum(correct) == 2 + sum(
        1 for a, b in zip(ids[1:-1], ids[2:]) if table.get(a) == b)  # repeats could add credit
    summary = summarize_zsre([out])
    assert summary["efficacy"] == pytest.approx(100 * sum(correct) / len(ids))


def test_summary_is_the_mean_over_cases_in_percent():
    results = [
        {"rewrite_prompts_correct": [True, True], "paraphrase_prompts_correct": [True, False],
         "neighborhood_prompts_correct": [False]},
        {"rewrite_prompts_correct": [True, False, False, False], "paraphrase_prompts_correct": [False],
         "neighborhood_prompts_correct": [True, True]},
    ]
    assert summarize_zsre(results) == {"efficacy": pytest.approx(62.5), "paraphrase": 25.0,
                                       "specificity": 50.0, "n": 2}
    with pytest.raises(ValueError):
        summarize_zsre([])


def test_batched_predictions_match_one_prompt_at_a_time(tiny_gpt2):
    """Right padding in a batch must not change any prompt's prediction."""
    mt = tiny_gpt2
    prompts = ["The Space Needle is", "Michael Jordan plays the sport of", "Paris"]
    expected = []
    for p in prompts:
        ids = mt.tokenizer(p, return_tensors="pt")["input_ids"]
        expected.append(mt.tokenizer.decode([int(mt.model(ids).logits[0, -1].argmax())]))
    assert prediction_correct(mt, prompts, expected, batch_size=3) == [True] * 3
    assert prediction_correct(mt, prompts, expected, batch_size=1) == [True] * 3


def test_evaluate_undoes_each_edit(tiny_gpt2):
    undone = []

    def fake_edit(mt, request):
        return SimpleNamespace(undo=lambda: undone.append(request["subject"]))

    cases = zsre_cases(RECORDS, tiny_gpt2.tokenizer)
    out = evaluate_zsre(tiny_gpt2, cases, fake_edit)
    assert undone == ["Watts Humphrey", "Space Needle"] and out["summary"]["n"] == 2
