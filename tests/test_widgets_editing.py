"""The edit playground: its plain function, and the widget's apply / undo buttons."""

from __future__ import annotations

import json
import os

import pytest
import torch

from rome_lib.hparams import ROMEHyperParams
from rome_lib.models import load_model
from rome_lib.widgets import EditPlayground, run_edit
from rome_lib.widgets.edit_playground import as_request

torch.set_num_threads(1)
TEMPLATES = ["{}", "It was late in the evening. {}", "Here is a fact. {}"]


@pytest.fixture(scope="module")
def mt():
    return load_model(os.environ.get("ROME_CHECK_MODEL", "toy"), device="cpu")


@pytest.fixture(scope="module")
def hparams(mt):
    # C = I keeps the test fast (no key statistics); the rest is the model's preset
    layer = ROMEHyperParams.for_model("toy").layer if mt.n_layer > 3 else mt.n_layer // 3
    return ROMEHyperParams(layer=layer, mom2_adjustment=False)


@pytest.fixture(scope="module")
def record(mt):
    path = mt.data_file("counterfact.json")
    if path is None:
        pytest.skip("the model has no CounterFact-style set beside its weights")
    return json.loads(path.read_text())[0]


def weights(mt):
    return {n: p.detach().clone() for n, p in mt.model.named_parameters()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_as_request():
    assert as_request("Ann Bo plays the", "Ann Bo", " chess") == {
        "prompt": "{} plays the", "subject": "Ann Bo", "target_new": {"str": "chess"}}
    assert as_request("{} plays the", "Ann Bo", "chess")["prompt"] == "{} plays the"
    with pytest.raises(ValueError, match="does not occur"):
        as_request("Ann Bo plays the", "Cy Do", "chess")
    with pytest.raises(ValueError, match="new object"):
        as_request("Ann Bo plays the", "Ann Bo", " ")


def test_run_edit_raises_the_new_object_and_undo_is_exact(mt, hparams, record):
    rw = record["requested_rewrite"]
    before = weights(mt)
    result = run_edit(mt, rw["prompt"].format(rw["subject"]), rw["subject"], rw["target_new"]["str"],
                      old=rw["target_true"]["str"], probes=record["neighborhood_prompts"][:2],
                      hparams=hparams, templates=TEMPLATES)
    try:
        assert result["edit"].applied and not same(before, weights(mt))
        assert result["p_new_after"][0] > result["p_new_before"][0]
        assert len(result["p_new_before"]) == 3 and len(result["p_old_after"]) == 3
        assert result["new"] == " " + rw["target_new"]["str"]
        text = result["text"]
        assert "before → after" in text and "generation before" in text and "generation after" in text
        assert len(result["generations_before"]) == len(result["generations_after"]) == 2
    finally:
        result["edit"].undo()
    assert same(before, weights(mt))


def test_widget_apply_and_undo(mt, hparams, record):
    before = weights(mt)
    playground = EditPlayground(mt, records=[record], hparams=hparams, templates=TEMPLATES)
    rw = record["requested_rewrite"]
    assert playground.subject.value == rw["subject"]  # the example filled the controls
    playground.target.value = rw["target_new"]["str"]
    playground.apply_button.click()
    assert playground.edit is not None and playground.edit.applied
    assert "before → after" in playground.last_text and not playground.undo_button.disabled
    assert not same(before, weights(mt))
    playground.apply_button.click()  # a second apply replaces the first edit, it does not stack
    from rome_lib.rome import active_edits

    assert len(active_edits(mt)) == 1
    playground.undo_button.click()
    assert same(before, weights(mt))
    assert playground.last_text.startswith("Undone") and "bit for bit: True" in playground.last_text
    assert active_edits(mt) == []

    playground.subject.value = "Nobody Atall"
    playground.apply()
    assert playground.last_text.startswith("⚠") and "does not occur" in playground.last_text
    assert same(before, weights(mt))


def test_run_edit_at_another_layer_reports_the_records_scores(mt, hparams, record):
    from rome_lib.evaluation import record_metrics, score_record

    rw = record["requested_rewrite"]
    layer = (hparams.layer + 1) % mt.n_layer
    result = run_edit(mt, rw["prompt"].format(rw["subject"]), rw["subject"], rw["target_new"]["str"],
                      old=rw["target_true"]["str"], hparams=hparams, templates=TEMPLATES, layer=layer,
                      paraphrases=record["paraphrase_prompts"],
                      neighbours=record["neighborhood_prompts"], gen_length=2)
    try:
        assert result["edit"].layer == result["layer"] == layer
        expected = record_metrics(score_record(mt, record))  # CounterFact's own scoring, edited model
        assert result["scores"] == {k: expected[k] for k in ("ES", "PS", "NS")}
        assert "edit scores: ES" in result["text"] and f"ROME at layer {layer}" in result["text"]
    finally:
        result["edit"].undo()
    with pytest.raises(ValueError, match="does not exist"):
        run_edit(mt, rw["prompt"].format(rw["subject"]), rw["subject"], "x", hparams=hparams,
                 layer=mt.n_layer)


def test_widget_layer_control_defaults_to_the_preset_and_is_used(mt, hparams, record):
    before = weights(mt)
    playground = EditPlayground(mt, records=[record], hparams=hparams, templates=TEMPLATES)
    assert playground.layer.value == hparams.layer
    assert playground.paraphrases.value and playground.neighbours.value  # filled by the example
    playground.layer.value = (hparams.layer + 1) % mt.n_layer
    playground.apply_button.click()
    try:
        assert playground.edit.layer == playground.layer.value
        assert f"ROME at layer {playground.layer.value}" in playground.last_text
        assert "edit scores: ES" in playground.last_text and " PS " in playground.last_text
    finally:
        playground.undo()
    assert same(before, weights(mt))
