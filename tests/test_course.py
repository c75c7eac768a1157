"""course.setup: one call gives a lesson its model, known facts, records and noise."""

from __future__ import annotations

import json

import pytest

from rome_lib import course
from rome_lib.data import DataNotAvailableError, load_known_facts
from rome_lib.real_models import top1_predictions
from rome_lib.tracing import default_noise

OFFLINE = "http://127.0.0.1:9"  # a closed port: every download fails at once


def test_toy_setup_gives_its_own_facts_records_and_noise(capsys):
    mt, facts, records, noise = course.setup("toy", "cpu")
    assert facts == load_known_facts("toy") and len(records) > 100
    assert noise == pytest.approx(default_noise(mt, [f["subject"] for f in facts]))
    assert "known facts" in capsys.readouterr().out


def test_setup_skips_what_a_lesson_does_not_use():
    _, facts, records, noise = course.setup("toy", "cpu", facts=False, records=False)
    assert facts == [] and records == [] and noise is None


def _facts_for(mt):
    """Two candidate facts: one whose object begins with the model's greedy token, one that does not."""
    prompts = ["The Space Needle is located in the city of", "Michael Jordan plays the sport of"]
    (first, _), (second, _) = top1_predictions(mt, prompts)
    wrong = "zzz" if not "zzz".startswith(second.strip().lower()) else "qqq"
    return [{"prompt": prompts[0], "subject": "Space Needle", "attribute": first.strip() + "xyz"},
            {"prompt": prompts[1], "subject": "Michael Jordan", "attribute": wrong}], first


def test_known_facts_are_the_ones_the_model_gets_right_and_are_cached(tiny_gpt2, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setenv("ROME_CACHE", str(tmp_path))
    candidates, first = _facts_for(tiny_gpt2)
    kept = course.model_facts(tiny_gpt2, candidates)
    assert [f["subject"] for f in kept] == ["Space Needle"] and kept[0]["prediction"] == first
    cached = course.known_facts_cache(tiny_gpt2)
    assert cached.parent == tmp_path / "known_facts" and json.loads(cached.read_text()) == kept

    def must_not_run(*_args, **_kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(course, "select_known", must_not_run)
    assert course.model_facts(tiny_gpt2, candidates) == kept


def test_a_model_that_knows_nothing_gets_an_empty_list_and_is_told(tiny_gpt2, tmp_path,
                                                                   monkeypatch, capsys):
    monkeypatch.setenv("ROME_CACHE", str(tmp_path))
    monkeypatch.setenv("ROME_DATA_URL", OFFLINE)
    folder = tiny_gpt2.model.config._name_or_path
    mt, facts, records, noise = course.setup(folder, "cpu", records=False)
    out = capsys.readouterr().out
    assert facts == [] and "no known facts" in out and "whole embedding" in out
    assert noise == pytest.approx(default_noise(mt))
    examples = course.example_facts()  # offline: the embedded world's facts, and it says so
    assert examples == load_known_facts("toy") and "does NOT know" in capsys.readouterr().out


def test_records_offline_are_one_clear_error(tiny_gpt2, tmp_path, monkeypatch):
    monkeypatch.setenv("ROME_CACHE", str(tmp_path))
    monkeypatch.setenv("ROME_DATA_URL", OFFLINE)
    with pytest.raises(DataNotAvailableError, match="counterfact.json .*could not be downloaded"):
        course.model_records(tiny_gpt2)
