"""The analysis checks pass correct answers and name the usual mistakes."""

from __future__ import annotations

import pytest
import torch

from rome_lib import checks
from rome_lib.evaluation import hmean, object_probs
from rome_lib.tracing import find_subject_range

from .check_helpers import mt, verdict  # noqa: F401 - mt is a fixture


def ps_ns(mt, record, *, swap=False, leak=False):
    rw = record["requested_rewrite"]
    out = []
    for prompts, keep_true in ((record["paraphrase_prompts"], False), (record["neighborhood_prompts"], True)):
        new = object_probs(mt, prompts, [" " + rw["target_new"]["str"]] * len(prompts))
        true = object_probs(mt, prompts, [" " + rw["target_true"]["str"]] * len(prompts))
        wins = (true > new) if keep_true and not leak else (new > true)
        out.append(wins.float().mean().item())
    return tuple(reversed(out)) if swap else tuple(out)


def choose(aie, scores, *, mean="harmonic"):
    f = hmean if mean == "harmonic" else (lambda v: sum(v) / len(v))
    return int(torch.as_tensor(aie).argmax()), max(scores, key=lambda l: f(list(scores[l].values())))


def share(effects, *, remains=False):
    return [(m / n if remains else (n - m) / n) if n > 0 else 0.0
            for n, m in zip(effects["none"], effects["mlp"])]


def lengths(tokenizer, facts, *, words=False):
    out = {}
    for f in facts:
        b, e = find_subject_range(tokenizer, f["prompt"], f["subject"])
        out.setdefault(len(f["subject"].split()) if words else e - b, []).append(f)
    return out


@pytest.mark.parametrize("check, fn, needs_model", [
    (checks.check_ps_ns, ps_ns, True), (checks.check_choose_layers, choose, False),
    (checks.check_severed_share, share, False), (checks.check_subject_lengths, lengths, True)])
def test_correct_answers_pass(capsys, mt, check, fn, needs_model):
    assert verdict(capsys, check, fn, *((mt,) if needs_model else ()))[0]


@pytest.mark.parametrize("check, fn, needs_model, hint", [
    (checks.check_ps_ns, lambda m, r: ps_ns(m, r, swap=True), True, "(NS, PS)"),
    (checks.check_ps_ns, lambda m, r: ps_ns(m, r, leak=True), True, "*new* object wins"),
    (checks.check_choose_layers, lambda a, s: choose(a, s, mean="arithmetic"), False, "*harmonic*"),
    (checks.check_severed_share, lambda e: share(e, remains=True), False, "remains"),
    (checks.check_subject_lengths, lambda t, f: lengths(t, f, words=True), True, "counted words"),
    (checks.check_choose_layers, lambda a, s: None, False, "pair of layers"),
    (checks.check_severed_share, lambda e: 0.5, False, "one share per layer"),
])
def test_mistakes_get_hints(capsys, mt, check, fn, needs_model, hint):
    ok, out = verdict(capsys, check, fn, *((mt,) if needs_model else ()))
    assert not ok and hint in out, out


@pytest.mark.parametrize("check, needs_model", [
    (checks.check_ps_ns, True), (checks.check_choose_layers, False),
    (checks.check_severed_share, False), (checks.check_subject_lengths, True)])
@pytest.mark.parametrize("returned", [None, 3, "x", [1.0], {1: 2}])
def test_analysis_checks_never_raise(capsys, mt, check, needs_model, returned):
    ok, out = verdict(capsys, check, lambda *a: returned, *((mt,) if needs_model else ()))
    assert not ok, out
