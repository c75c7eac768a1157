"""One home for edits, shared by every editing method (ROME, FT, FT+L, ...).

- **Requests** (:func:`normalize_request`, :func:`target_ids`): the official request format
  ``{"prompt": "{} plays the sport of", "subject": "Michael Jordan", "target_new": {"str": "soccer"}}``,
  checked with one-line errors, and the new object's token ids.
- **The edit record** (:class:`Edit`): the parameters an edit changed and their original bytes, so
  that :meth:`Edit.undo` restores them bit for bit. Edits on one model form a stack, undone
  last-in, first-out (:class:`~rome_lib.errors.EditOrderError` otherwise); :func:`active_edits`
  lists them and :func:`undo_all` undoes them all.

The methods themselves live in :mod:`rome_lib.rome` and :mod:`rome_lib.baselines`; the registry that
names them for evaluation and the command line is :mod:`rome_lib.methods`.
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import EditOrderError
from .models import LoadedModel


# ----------------------------------------------------------------------------------------------
# Requests
# ----------------------------------------------------------------------------------------------
def normalize_request(request: dict) -> dict:
    """Check a request in the official format and return a copy whose target has a leading space.

    ``{"prompt": "{} plays the sport of", "subject": "Michael Jordan", "target_new": {"str": "soccer"}}``
    """
    if not isinstance(request, dict):
        raise TypeError("A request is a dict with 'prompt', 'subject' and 'target_new': {'str': ...}.")
    for key in ("prompt", "subject", "target_new"):
        if key not in request:
            raise ValueError(f"The request has no {key!r}: expected keys prompt, subject, target_new.")
    prompt, subject = request["prompt"], request["subject"]
    if not isinstance(subject, str) or not subject.strip():
        raise ValueError("The request's subject is empty.")
    if not isinstance(prompt, str) or "{}" not in prompt:
        hint = ""
        if isinstance(prompt, str) and subject in prompt:
            hint = f" Write it with {{}} where the subject goes: {prompt.replace(subject, '{}', 1)!r}."
        else:
            hint = f" The subject {subject!r} does not occur in it either."
        raise ValueError(f"The prompt {prompt!r} has no '{{}}' placeholder for the subject.{hint}")
    if prompt.count("{}") > 1:
        raise ValueError(f"The prompt {prompt!r} has more than one '{{}}' placeholder.")
    target = request["target_new"]
    target = target.get("str") if isinstance(target, dict) else target
    if not isinstance(target, str) or not target.strip():
        raise ValueError("The request's target_new['str'] is empty: there is nothing to insert.")
    out = dict(request)
    out["target_new"] = dict(request["target_new"]) if isinstance(request["target_new"], dict) else {}
    out["target_new"]["str"] = target if target.startswith(" ") else " " + target
    return out


def target_ids(mt: LoadedModel, target: str) -> list[int]:
    """Token ids of an object string (give it with its leading space), without special tokens."""
    ids = mt.tokenizer(target, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"The target {target!r} has no tokens.")
    return ids


@torch.no_grad()
def warn_if_already_predicted(mt: LoadedModel, request: dict, tgt: list[int]) -> None:
    """Warn when ``mt`` already predicts the request's new object (greedy, every token): the edit
    would change little. ``tgt`` are the object's token ids (:func:`target_ids`)."""
    ids = mt.tokenizer(request["prompt"].format(request["subject"]))["input_ids"]
    full = torch.tensor([ids + tgt], device=mt.device)
    logits = mt.model(full).logits[0, len(ids) - 1 : len(ids) - 1 + len(tgt)]
    if logits.argmax(-1).tolist() == tgt:
        warnings.warn(f"The model already predicts {request['target_new']['str']!r} for "
                      f"{request['prompt'].format(request['subject'])!r}; the edit changes little.",
                      stacklevel=3)


# ----------------------------------------------------------------------------------------------
# Edits that can be undone exactly
# ----------------------------------------------------------------------------------------------
_STACKS: "weakref.WeakKeyDictionary[torch.nn.Module, list[Edit]]" = weakref.WeakKeyDictionary()


@dataclass(eq=False)
class Edit:
    """A change to some parameters of a model, with the original bytes kept for :meth:`undo`.

    Edits on one model form a stack: undo them last-in, first-out. Undoing an edit that is not the
    most recent one still applied raises :class:`EditOrderError` (nothing is changed), because the
    later edits were computed on top of it. Use as a context manager to undo on exit::

        with apply_rome(mt, request) as edit:
            ...  # the model knows the new fact here
    """

    mt: LoadedModel
    method: str
    request: dict
    layer: int
    names: list[str]
    originals: dict[str, torch.Tensor] = field(repr=False)
    info: dict[str, Any] = field(default_factory=dict, repr=False)
    applied: bool = True

    @classmethod
    def begin(cls, mt: LoadedModel, method: str, request: dict, layer: int, names: list[str]) -> "Edit":
        """Snapshot the named parameters (exact copies) before they are changed; push on the stack."""
        params = dict(mt.model.named_parameters())
        originals = {n: params[n].detach().clone() for n in names}
        edit = cls(mt=mt, method=method, request=request, layer=layer, names=names, originals=originals)
        _STACKS.setdefault(mt.model, []).append(edit)
        return edit

    def parameters(self) -> dict[str, torch.nn.Parameter]:
        params = dict(self.mt.model.named_parameters())
        return {n: params[n] for n in self.names}

    def undo(self) -> None:
        """Restore the original parameters bit for bit (LIFO order; see the class docstring)."""
        if not self.applied:
            raise EditOrderError(f"This {self.method} edit has already been undone.")
        stack = _STACKS.get(self.mt.model, [])
        if not stack or stack[-1] is not self:
            later = stack[stack.index(self) + 1 :] if self in stack else []
            raise EditOrderError(
                f"Edits must be undone last-in, first-out: undo the {len(later)} later edit(s) "
                f"first ({', '.join(e.describe() for e in reversed(later))})."
            )
        with torch.no_grad():
            for name, param in self.parameters().items():
                param.copy_(self.originals[name])
        stack.pop()
        self.applied = False

    def describe(self) -> str:
        r = self.request
        return f"{self.method}: {r['prompt'].format(r['subject'])!r} -> {r['target_new']['str']!r}"

    def __enter__(self) -> "Edit":
        return self

    def __exit__(self, *exc) -> None:
        if self.applied:
            self.undo()


def active_edits(mt: LoadedModel) -> list[Edit]:
    """The edits currently applied to ``mt``'s model, oldest first."""
    return list(_STACKS.get(mt.model, []))


def undo_all(mt: LoadedModel) -> None:
    """Undo every edit still applied to ``mt``'s model, newest first."""
    for edit in reversed(active_edits(mt)):
        edit.undo()


__all__ = [
    "EditOrderError", "Edit", "active_edits", "undo_all", "normalize_request", "target_ids",
    "warn_if_already_predicted",
]
