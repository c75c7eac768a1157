"""How a check reports: it prints "✓ passed" or "✗ <hint>", and records the same verdict as a
:class:`CheckResult` so that a grader can read it.

Every verdict of the process is appended to :data:`RESULTS`; when the environment variable
``ROME_CHECK_RECORD`` names a file, it is also appended there as one JSON line (the grader runs a
learner's notebook in a separate kernel and reads that file afterwards).

:func:`verdict` turns a check written as ``check(fn, mt) -> bool`` into the public form, which
prints and returns None (a notebook cell ending with it shows the verdict only), and which never
fails in its own code: an error raised while *using* what the learner's function returned (None, an
int, a tensor of the wrong shape, ...) becomes a hint. Errors raised *inside* the learner's function
(``NotImplementedError`` included) are recorded and propagate unchanged, so the learner sees their
own traceback.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict, dataclass
from typing import Callable

PASSED = "✓ passed"
RECORD_ENV = "ROME_CHECK_RECORD"


@dataclass
class CheckResult:
    """One verdict: the check's name, whether it passed, the hint it printed ("" when it passed),
    and ``error`` ("" or the exception the learner's function raised)."""

    check: str
    passed: bool
    hint: str = ""
    error: str = ""


RESULTS: list[CheckResult] = []


def record(result: CheckResult) -> CheckResult:
    """Keep ``result`` in :data:`RESULTS` and, when ``ROME_CHECK_RECORD`` is set, in that file."""
    RESULTS.append(result)
    path = os.environ.get(RECORD_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(result), ensure_ascii=False) + "\n")
    return result


def last_result() -> CheckResult | None:
    """The most recent verdict of this process (None before any check ran)."""
    return RESULTS[-1] if RESULTS else None


class _Printed:
    """The text a check printed last (``passed``/``failed`` set it; :func:`verdict` records it)."""

    hint = ""


def passed() -> bool:
    print(PASSED)
    _Printed.hint = ""
    return True


def failed(hint: str) -> bool:
    print("✗ " + hint)
    _Printed.hint = hint
    return False


def _watched(fn: Callable) -> Callable:
    """``fn`` whose exceptions are marked as the learner's (the check lets those propagate)."""
    if not callable(fn):
        return fn

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            exc._raised_by_learner = True  # type: ignore[attr-defined]
            raise
        return _watched(result) if callable(result) and not isinstance(result, type) else result

    return call


def verdict(check: Callable[..., bool]) -> Callable[..., None]:
    """The public, print-only and never-failing form of ``check(fn, mt) -> bool``."""

    @functools.wraps(check)
    def run(fn: Callable, mt=None) -> None:
        name = check.__name__
        if not callable(fn):
            record(CheckResult(name, failed(f"Pass your function itself to {name}, not "
                                            f"{type(fn).__name__} (e.g. {name}(my_function)).")))
            return
        try:
            ok = check(_watched(fn), mt)
        except Exception as exc:
            if getattr(exc, "_raised_by_learner", False):
                record(CheckResult(name, False, f"your function raised {type(exc).__name__}: {exc}",
                                   error=type(exc).__name__))
                raise
            hint = (f"The check could not use what your function returned ({type(exc).__name__}: "
                    f"{exc}). Compare its type and shape with the exercise's docstring.")
            record(CheckResult(name, failed(hint), hint))
            return
        record(CheckResult(name, bool(ok), "" if ok else _Printed.hint))

    return run


__all__ = ["PASSED", "RECORD_ENV", "CheckResult", "RESULTS", "record", "last_result", "passed",
           "failed", "verdict"]
