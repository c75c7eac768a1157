"""What the tests of the learners' checks share: the model they run on and how a verdict is read."""

import os

import pytest

from rome_lib.checks.tracing import PASSED
from rome_lib.models import load_model


@pytest.fixture(scope="module")
def mt():
    return load_model(os.environ.get("ROME_CHECK_MODEL", "toy"), device="cpu")


def verdict(capsys, check, fn, *args) -> tuple[bool, str]:
    """Run a check; it must return None (a notebook cell ending with it shows only the verdict)
    and print one verdict. Returns (passed, printed text)."""
    assert check(fn, *args) is None
    out = capsys.readouterr().out
    assert out.strip(), "a check must always print its verdict"
    assert out.startswith(("✓", "✗")), out
    return out.startswith(PASSED), out
