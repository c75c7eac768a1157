"""Small token-level helpers shared by editing, evaluation and the checks, written once.

- :func:`token_span`: which tokens of a text cover a character span (the subject's tokens).
- :func:`next_token_probs` / :func:`top_next_token`: the model's next-token distribution after a
  prompt, and its most likely token.
- :func:`sample_top_k`: one top-k sampling step (the official ``generate_fast``'s rule).

(:func:`rome_lib.tracing.find_subject_range` finds the subject by its string, then asks
:func:`token_span`.)
"""

from __future__ import annotations

import torch

from .models import LoadedModel


def token_span(tokenizer, text: str, start: int, end: int) -> tuple[list[int], int, int]:
    """``(ids, first, last)``: the token ids of ``text`` and the first and last (inclusive) token
    overlapping characters [start, end), by the tokenizer's character offsets -- a token that only
    partly overlaps counts, so leading spaces and tokens straddling the edge are handled."""
    enc = tokenizer(text, return_offsets_mapping=True)
    hits = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < end and b > start]
    if not hits:
        raise ValueError(f"No token of {text!r} covers characters {start}..{end}.")
    return enc["input_ids"], hits[0], hits[-1]


@torch.no_grad()
def next_token_probs(mt: LoadedModel, prompt: str) -> torch.Tensor:
    """P(next token | ``prompt``) [V], float32 (one forward pass, logits of the last token only)."""
    ids = mt.tokenizer(prompt, return_tensors="pt")["input_ids"].to(mt.device)
    return torch.softmax(mt.model(ids, logits_to_keep=1).logits[0, -1].float(), -1)


def top_next_token(mt: LoadedModel, prompt: str) -> int:
    """The id of the model's most likely next token after ``prompt`` (greedy, one forward pass)."""
    return int(next_token_probs(mt, prompt).argmax())


def sample_top_k(logits: torch.Tensor, top_k: int, generator: torch.Generator) -> torch.Tensor:
    """One token id per row of ``logits`` [..., V], drawn from the softmax over the ``top_k`` largest
    (seeded by ``generator``, which must live on the logits' device); shape [..., 1]."""
    top, idx = logits.topk(min(top_k, logits.shape[-1]), -1)
    choice = torch.multinomial(torch.softmax(top, -1), 1, generator=generator)
    return idx.gather(-1, choice)


__all__ = ["token_span", "next_token_probs", "top_next_token", "sample_top_k"]
