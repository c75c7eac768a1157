"""What every check module shares: the default model, the number of tokens of a text, and the
tolerant readers of whatever a learner's function returned (a tensor, a float, a list of layers),
with a short description of it for hints.

The verdicts themselves (``passed``, ``failed``, ``verdict``, ``PASSED``) live in
:mod:`rome_lib.checks.verdict`.
"""

from __future__ import annotations

import functools
import json
import math
import os

import torch

from ..models import LoadedModel, load_model


@functools.lru_cache(maxsize=4)
def _load(name: str) -> LoadedModel:
    return load_model(name, device="cpu")


def check_model(mt: LoadedModel | None) -> LoadedModel:
    """``mt``, else the model the checks use by default: ``$ROME_CHECK_MODEL`` (the toy), on the CPU,
    loaded once."""
    return mt if mt is not None else _load(os.environ.get("ROME_CHECK_MODEL", "toy"))


def counterfact_records(mt: LoadedModel) -> list[dict]:
    """The model's own CounterFact records that have neighbourhood prompts ([] if it has no set)."""
    path = mt.data_file("counterfact.json")
    records = json.loads(path.read_text()) if path else []
    return [r for r in records if r.get("neighborhood_prompts")]


def n_tokens(mt: LoadedModel, text: str) -> int:
    """How many tokens ``text`` has (special tokens included, as the model sees it)."""
    return len(mt.tokenizer(text)["input_ids"])


def show(value) -> str:
    """A short description of what the learner returned, for a hint."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return text if len(text) <= 60 else f"a {type(value).__name__}"


def as_tensor(value) -> torch.Tensor | None:
    """The answer as a float32 CPU tensor (None if it cannot be one)."""
    try:
        if isinstance(value, torch.Tensor):
            return value.detach().float().cpu()
        return torch.as_tensor(value, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        return None


def as_float(value) -> float | None:
    """A scalar answer as a float (None if it is not one, or NaN)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return None
        value = value.item()
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def as_layers(value) -> list[int] | None:
    """A list of token or layer indices as ints (None unless it is a sequence of whole numbers)."""
    if isinstance(value, torch.Tensor):
        value = value.flatten().tolist() if value.dim() == 1 else None
    if value is None or isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        return None
    try:
        items = list(value)
        layers = [int(x) for x in items]
    except (TypeError, ValueError, RuntimeError):
        return None
    return layers if all(float(x) == l for x, l in zip(items, layers)) else None


__all__ = ["check_model", "n_tokens", "show", "as_tensor", "as_float", "as_layers"]
