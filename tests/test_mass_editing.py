"""Many edits: batched and sequential evaluation keep the model bit-identical afterwards, score what
they say they score, and flag an edit that breaks the model."""

from __future__ import annotations

import json

import pytest
import torch

from rome_lib.__main__ import main
from rome_lib.hparams import FTHyperParams
from rome_lib.mass_editing import apply_edits, evaluate_batched, evaluate_sequential, health_texts, model_health
from rome_lib.memit import apply_memit
from tests.test_memit import HP, TEMPLATES, covs
from tests.test_rome import assert_params_equal, facts, params_copy

torch.set_num_threads(1)


def records(n):
    out = []
    for i, q in enumerate(facts(n)):
        out.append({"case_id": i, "requested_rewrite": {**q, "target_true": {"str": "Paris"}},
                    "paraphrase_prompts": ["Here: " + q["prompt"].format(q["subject"])],
                    "neighborhood_prompts": [q["prompt"].format("The Louvre")]})  # never edited
    return out


class Memit:
    """apply_memit with the test's hyper-parameters, C and templates (what mass_editing calls)."""

    def __init__(self, mt):
        self.mt = mt

    def __call__(self, mt, requests, hparams):
        return apply_memit(mt, requests, HP, covs=covs(self.mt), templates=TEMPLATES)


@pytest.fixture
def memit_patched(tiny_gpt2, monkeypatch):
    import rome_lib.mass_editing as me

    monkeypatch.setattr(me, "apply_memit", Memit(tiny_gpt2))
    return tiny_gpt2


def test_batched_memit_scores_and_restores(memit_patched):
    mt = memit_patched
    saved = params_copy(mt)
    out = evaluate_batched(mt, records(5), "memit", batch=2, progress=False)
    assert out["n"] == 5 and [c["n"] for c in out["chunks"]] == [2, 2, 1]
    assert {"ES", "PS", "NS", "S"} <= set(out) and out["broken_chunks"] == 0
    assert "GE" not in out["chunks"][0]
    assert_params_equal(mt, saved)
    with_ge = evaluate_batched(mt, records(2), "memit", batch=2, generation=True, progress=False)
    assert with_ge["chunks"][0]["GE"] >= 0  # the edited model's generation entropy
    assert_params_equal(mt, saved)


def test_sequential_keeps_edits_until_the_end_then_restores(tiny_gpt2):
    mt = tiny_gpt2
    saved = params_copy(mt)
    hp = FTHyperParams(layer=1, num_steps=3, lr=1e-3, norm_constraint=1e-3)
    seen = []
    out = evaluate_sequential(mt, records(4), "ft-l", checkpoints=[1, 3, 4], hparams=hp,
                              generation=False, progress=False,
                              on_step=lambda step, breaking: seen.append(step["edits"]))
    assert [s["edits"] for s in out["steps"]] == [1, 3, 4] == seen  # on_step after each checkpoint
    assert [s["n"] for s in out["steps"]] == [1, 3, 4]  # every record edited so far is scored
    assert out["final"]["edits"] == 4 and "heldout_nll" in out["final"]
    assert_params_equal(mt, saved)


def test_a_breaking_edit_is_flagged(tiny_gpt2, monkeypatch):
    """An "edit" that makes every prediction overconfident (final norm ×100): the held-out NLL jumps
    after it, not before."""
    from rome_lib.methods import EDIT_METHODS
    from rome_lib.rome import Edit

    def wreck(mt, request, hparams=None):
        name = mt.layout.final_norm + ".weight"
        edit = Edit.begin(mt, "ft", request, 1, [name])
        with torch.no_grad():
            edit.parameters()[name].mul_(100)
        return edit

    mt = tiny_gpt2
    saved = params_copy(mt)
    monkeypatch.setitem(EDIT_METHODS, "ft", wreck)
    out = evaluate_sequential(mt, records(2), "ft", checkpoints=[2], generation=False, progress=False)
    assert out["breaking_edits"] and out["breaking_edits"][0]["after_edit"] == 1
    assert_params_equal(mt, saved)


def test_apply_edits_rejects_unknown_methods_and_health_is_finite(tiny_gpt2):
    with pytest.raises(ValueError, match="Unknown method"):
        apply_edits(tiny_gpt2, facts(1), "mend")
    h = model_health(tiny_gpt2, ["The Space Needle is in Seattle."], ["The Space Needle is"], 12)
    assert h["heldout_nll"] > 0 and h["GE"] >= 0


@pytest.mark.slow
def test_cli_memit_batch_and_sequential_on_the_toy(capsys):
    code = main(["evaluate", "--model", "toy", "--method", "memit", "--n", "4", "--batch", "2",
                 "--no-generation", "--json", "--device", "cpu"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["n"] == 4 and data["batch"] == 2 and data["ES"] >= 50
    code = main(["evaluate", "--model", "toy", "--method", "rome", "--n", "2", "--sequential",
                 "--no-generation", "--json", "--device", "cpu"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and [s["edits"] for s in data["steps"]] == [1, 2]


def test_health_texts_name_no_edited_subject():
    """Held-out statements must be about subjects no edit rewrites: a statement about an edited
    subject's relation loses probability by design, and its loss would count the edit as damage."""
    def record(subject, neighbour):
        return {"requested_rewrite": {"subject": subject, "target_true": {"str": " Paris"}},
                "neighborhood_prompts": [neighbour]}

    records = [record("Ada", "Bob lives in"), record("Bob", "Cy lives in"),
               record("Cy", "Ada lives in"), record("Dee", "Eve lives in")]
    texts, prompts = health_texts(records, records[:2])  # Ada and Bob are edited
    assert prompts == ["Eve lives in", "Cy lives in"] and texts == ["Eve lives in Paris", "Cy lives in Paris"]
    assert health_texts(records, records[:2], n=1)[1] == ["Eve lives in"]
    with pytest.raises(ValueError, match="avoids every edited subject"):
        health_texts([records[0], record("Bob", "Ada lives in")], records[:2])
