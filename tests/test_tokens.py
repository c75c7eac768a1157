"""The shared token helpers: subject span, top next token, top-k sampling."""

import pytest
import torch

from rome_lib.tokens import sample_top_k, token_span, top_next_token
from rome_lib.tracing import find_subject_range


@pytest.mark.parametrize("prompt, subject", [("Michael Jordan plays", "Michael Jordan"),
                                             ("Where is the Eiffel Tower", "Eiffel Tower"),
                                             ("The capital of France", "France")])
def test_token_span_agrees_with_find_subject_range(tokenizer, prompt, subject):
    start = prompt.index(subject)
    ids, first, last = token_span(tokenizer, prompt, start, start + len(subject))
    assert ids == tokenizer(prompt)["input_ids"]
    assert (first, last + 1) == find_subject_range(tokenizer, prompt, subject)


def test_token_span_outside_the_text_is_a_clear_error(tokenizer):
    with pytest.raises(ValueError, match="covers characters"):
        token_span(tokenizer, "abc", 10, 12)


def test_sample_top_k_stays_in_the_top_k():
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0], [3.0, 0.0, 0.0, 2.0]])
    picks = torch.cat([sample_top_k(logits, 2, torch.Generator().manual_seed(s)) for s in range(50)], 1)
    assert set(picks[0].tolist()) == {1, 2} and set(picks[1].tolist()) == {0, 3}
    assert sample_top_k(logits[0], 1, torch.Generator()).tolist() == [1]


def test_top_next_token_is_the_argmax(tiny_gpt2):
    ids = tiny_gpt2.tokenizer("The capital of France", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = int(tiny_gpt2.model(ids).logits[0, -1].argmax())
    assert top_next_token(tiny_gpt2, "The capital of France") == want
