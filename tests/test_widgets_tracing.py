"""The tracing explorer: its plain function, and the widget reacting to a control."""

from __future__ import annotations

import os

import pytest
import torch

from rome_lib.models import load_model
from rome_lib.widgets import TracingExplorer, explore

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def mt():
    return load_model(os.environ.get("ROME_CHECK_MODEL", "toy"), device="cpu")


@pytest.fixture(scope="module")
def fact(mt):
    from rome_lib.tracing import known_facts

    facts = known_facts(mt)
    if facts:
        return facts[0]
    return {"prompt": "The Space Needle is located in the city of", "subject": "Space Needle",
            "attribute": "?"}


def test_explore_returns_a_heatmap_and_a_summary(mt, fact):
    fig, text = explore(mt, fact["prompt"], fact["subject"], "mlp", samples=2)
    ax = fig.axes[0]
    assert "restored MLP" in ax.get_title()
    assert len(ax.get_yticklabels()) == len(mt.tokenizer(fact["prompt"])["input_ids"])
    assert "clean P" in text and "top predictions" in text and "window" in text


def test_explore_rejects_a_subject_not_in_the_prompt(mt, fact):
    with pytest.raises(ValueError, match="does not occur"):
        explore(mt, fact["prompt"], "Nowhere Atall", "state", samples=2)
    with pytest.raises(ValueError, match="Unknown kind"):
        explore(mt, fact["prompt"], fact["subject"], "mlps", samples=2)


def test_widget_updates_when_a_control_changes(mt, fact):
    explorer = TracingExplorer(mt, facts=[fact], samples=2)
    first_image, first_text = explorer.image.value, explorer.last_text
    assert first_image and "(state)" in first_text
    explorer.kind.value = "attn"
    assert explorer.image.value != first_image
    assert "(attn, window" in explorer.last_text
    explorer.subject.value = "not in the prompt"
    explorer.button.click()
    assert explorer.last_text.startswith("⚠") and "does not occur" in explorer.last_text


def test_pinning_a_layer_shows_every_tokens_effect_there(mt, fact):
    fig, text = explore(mt, fact["prompt"], fact["subject"], "state", samples=2, layer=1)
    assert "layer 1" in fig.axes[1].get_title()  # beside the heatmap (and its colour bar)
    n_tokens = len(mt.tokenizer(fact["prompt"])["input_ids"])
    assert len(fig.axes[1].patches) == n_tokens  # one bar per token
    assert "layer 1, effect per token" in text
    with pytest.raises(ValueError, match="does not exist"):
        explore(mt, fact["prompt"], fact["subject"], "state", samples=2, layer=mt.n_layer)


def test_widget_pins_a_layer(mt, fact):
    from rome_lib.tracing import trace
    from rome_lib.widgets.tracing_explorer import pinned_effects

    explorer = TracingExplorer(mt, facts=[fact], samples=2)
    explorer.layer.value = 2
    assert "layer 2, effect per token" in explorer.last_text
    expected = pinned_effects(trace(mt, fact["prompt"], fact["subject"], "state", samples=2,
                                    noise=explorer.noise), 2)
    assert f"{expected[-1]:+.3f}" in explorer.last_text.splitlines()[-1]
    explorer.layer.value = None
    assert "effect per token" not in explorer.last_text
