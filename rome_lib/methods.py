"""The registry of editing methods: one name → one function, for evaluation, zsRE and the CLI.

Every method has the signature ``fn(mt, request, hparams=None) -> Edit`` (:class:`rome_lib.edits.Edit`;
``hparams=None``: the method's preset for ``mt``). A new method (e.g. MEMIT) is added here once and
is then reachable from :func:`rome_lib.evaluation.evaluate`, ``python -m rome_lib evaluate --method``
and :func:`rome_lib.zsre.evaluate_zsre`.
"""

from __future__ import annotations

from typing import Any, Callable

from .baselines import apply_ft, apply_ft_l
from .edits import Edit
from .models import LoadedModel
from .memit import apply_memit
from .rome import apply_rome

EditMethod = Callable[..., Edit]

EDIT_METHODS: dict[str, EditMethod] = {
    "rome": apply_rome,
    "ft": apply_ft,  # FT+L when the given hparams carry a norm_constraint
    "ft-l": apply_ft_l,
    "memit": lambda mt, request, hparams=None: apply_memit(mt, [request], hparams),  # a batch of one
}


def edit_function(method: str, hparams: Any = None) -> Callable[[LoadedModel, dict], Edit]:
    """``fn(mt, request) -> Edit`` applying ``method`` with ``hparams`` (None: its preset)."""
    if method not in EDIT_METHODS:
        raise ValueError(f"Unknown editing method {method!r}: use one of {', '.join(EDIT_METHODS)}.")
    apply = EDIT_METHODS[method]
    return lambda mt, request: apply(mt, request, hparams)


__all__ = ["EditMethod", "EDIT_METHODS", "edit_function"]
