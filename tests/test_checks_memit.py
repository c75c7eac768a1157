"""The MEMIT checks pass the reference and name each usual mistake; they never raise because of
what the learner's function returns."""

from __future__ import annotations

import pytest
import torch

from rome_lib.checks.memit import check_batched_update, check_spread
from rome_lib.memit import least_squares_update
from tests.check_helpers import verdict


def right_update(keys, res, cov, lam):
    k, r = keys.T, res.T
    return r @ torch.linalg.solve(lam * cov + k @ k.T, k).T


@pytest.mark.parametrize("fn, hint", [
    (right_update, None),
    (lambda k, r, c, lam: least_squares_update(k, r, c, lam), None),
    (lambda k, r, c, lam: right_update(k, r, c, lam).T, "transpose"),
    (lambda k, r, c, lam: right_update(k, r, c, 1.0), "λ is missing"),
    (lambda k, r, c, lam: right_update(k, r, torch.eye(c.shape[0], dtype=c.dtype), lam), "C is missing"),
    (lambda k, r, c, lam: r.T @ torch.linalg.solve(lam * c, k.T).T, "K Kᵀ is missing"),
    (lambda k, r, c, lam: sum(torch.outer(r[i], torch.linalg.solve(c, k[i])) / (k[i] @ torch.linalg.solve(c, k[i]))
                              for i in range(len(k))), "ROME's rank-one update"),
    (lambda k, r, c, lam: 2 * right_update(k, r, c, lam), "does not solve"),
    (lambda k, r, c, lam: None, "not a tensor"),
    (lambda k, r, c, lam: torch.zeros(3), "expected"),
])
def test_check_batched_update(capsys, fn, hint):
    passed, out = verdict(capsys, check_batched_update, fn)
    assert passed == (hint is None), out
    if hint:
        assert hint in out, out


def spread(z, read_states, write_layer, n_layers, *, reread=True, share="left", sign=1.0):
    states = read_states()
    for i in range(n_layers):
        if reread:
            states = read_states()
        left = {"left": n_layers - i, "all": n_layers, "whole": 1}[share]
        write_layer(i, sign * (z - states) / left)


@pytest.mark.parametrize("kwargs, hint", [
    ({}, None),
    ({"sign": -1.0}, "wrong way"),
    ({"reread": False}, "read the states again"),
    ({"share": "all"}, "divided by L"),
    ({"share": "whole"}, "whole residual"),
])
def test_check_spread(capsys, kwargs, hint):
    passed, out = verdict(capsys, check_spread, lambda *a: spread(*a, **kwargs))
    assert passed == (hint is None), out
    if hint:
        assert hint in out, out


def test_check_spread_wrong_order_and_bad_writes(capsys):
    def backwards(z, read, write, n):
        for i in reversed(range(n)):
            write(i, (z - read()) / (i + 1))

    passed, out = verdict(capsys, check_spread, backwards)
    assert not passed and "from the lowest" in out
    passed, out = verdict(capsys, check_spread, lambda z, read, write, n: write(0, None))
    assert not passed and "needs a tensor" in out
