"""The real SmolLM2-135M (Llama family) from the cache: tracing invariants, a small AIE, a ROME edit.

Runs only when the converted model is there (``python -m rome_lib models fetch smollm2``; see
:mod:`rome_lib.real_models`), else skips with that command. Kept to about two minutes on two CPU
cores without the small AIE (marked ``slow``, several minutes): short prompts, few noise draws, one
kind for the per-cell reference. Select with ``-m real`` (all of them, the AIE included).
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from rome_lib import real_models
from rome_lib.hooks import get_module
from rome_lib.models import ModelNotAvailableError, load_model
from rome_lib.tracing import (
    BUCKETS, average_indirect_effects, default_noise, known_facts, restored_probability, trace,
    trace_reference,
)

pytestmark = pytest.mark.real

torch.set_num_threads(1)

FACT = {"prompt": "Italy's capital,", "subject": "Italy", "attribute": "Rome"}  # 4 tokens


@pytest.fixture(scope="module")
def smollm2():
    if not real_models.is_available("smollm2"):
        pytest.skip(f"SmolLM2 is not in the cache {real_models.model_dir('smollm2')}: "
                    f"run `{real_models.fetch_command('smollm2')}` (ROME_CACHE moves the cache).")
    return load_model("smollm2", device="cpu")


@pytest.fixture(scope="module")
def facts(smollm2):
    facts = known_facts(smollm2)
    if not facts:
        pytest.skip("SmolLM2 has no known_facts.json: run `python -m rome_lib models fetch smollm2 "
                    "--known PATH/known_1000.json`.")
    return facts


def test_missing_model_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ROME_CACHE", str(tmp_path))
    with pytest.raises(ModelNotAvailableError, match="python -m rome_lib models fetch smollm2"):
        load_model("smollm2", device="cpu")


def test_converted_model_is_what_we_expect(smollm2):
    mt = smollm2
    assert mt.layout.arch == "llama" and mt.n_layer == 30 and mt.model.config.hidden_size == 576
    assert real_models.REAL_MODELS["smollm2"].n_layer == mt.n_layer  # what presets assume
    assert mt.layout.mlp_out_at(17) == "model.layers.17.mlp.down_proj"
    assert mt.dtype == torch.float32
    info = json.loads((real_models.model_dir("smollm2") / real_models.INFO_FILE).read_text())
    assert info["sha256"] == real_models.REAL_MODELS["smollm2"].sha256
    ids = mt.tokenizer(FACT["prompt"])["input_ids"]
    assert len(ids) == 4 and ids[0] != mt.tokenizer.bos_token_id  # SmolLM2 adds no BOS


def test_known_facts_are_found_beside_the_weights_and_are_right(smollm2, facts):
    assert 200 <= len(facts) <= 400  # 288 of known_1000's 1,209 at conversion time
    sample = facts[:: max(1, len(facts) // 8)]
    predictions = real_models.top1_predictions(smollm2, [f["prompt"] for f in sample])
    for fact, (token, _) in zip(sample, predictions):
        assert real_models.is_correct(token, fact["attribute"]), (fact, token)


def test_restoring_every_state_reproduces_the_clean_run(smollm2):
    n_tokens = len(smollm2.tokenizer(FACT["prompt"])["input_ids"])
    for layer in (0, 14, 29):
        p = restored_probability(smollm2, FACT["prompt"], FACT["subject"],
                                 [(t, layer) for t in range(n_tokens)], samples=2)
        assert p["restored"] == pytest.approx(p["clean"], abs=1e-5)
    assert p["clean"] - p["corrupted"] > 1e-3  # the default noise did something


def test_batched_equals_per_cell_reference(smollm2):
    kw = dict(samples=2, noise=default_noise(smollm2))
    batched = trace(smollm2, FACT["prompt"], FACT["subject"], "mlp", **kw)
    reference = trace_reference(smollm2, FACT["prompt"], FACT["subject"], "mlp", **kw)
    assert smollm2.tokenizer.decode([batched.answer_id]) == " Rome"
    assert batched.low == pytest.approx(reference.low, abs=1e-6)
    assert (batched.scores - reference.scores).abs().max() <= 1e-5
    assert batched.scores.max() - batched.scores.min() > 1e-3  # the comparison can fail


@pytest.mark.slow  # ~4,500 traced rows through 135 M parameters: minutes on two CPU cores
def test_smoke_aie_mlp_at_the_last_subject_token_is_positive(smollm2, facts):
    """10 short known facts, MLP windows, 3 noise draws: the paper's early site shows up as a
    positive average effect of the MLPs at the last subject token. Select with ``-m real``."""
    short = sorted(facts, key=lambda f: len(smollm2.tokenizer(f["prompt"])["input_ids"]))[:10]
    result = average_indirect_effects(smollm2, short, ["mlp"], samples=3, progress=False)
    last_subject = result.kinds["mlp"][BUCKETS.index("last_subject")]
    assert result.ate > 0
    assert last_subject.max() > 0.005 and last_subject.mean() > 0


def test_rome_edit_maps_k_star_to_v_star_and_undoes_exactly(smollm2):
    rome = pytest.importorskip("rome_lib.rome")
    from rome_lib.hparams import ROMEHyperParams

    mt, layer = smollm2, 6
    hparams = replace(ROMEHyperParams.for_model("smollm2", mt.n_layer), layer=layer,
                      v_num_grad_steps=4, context_lengths=((3, 2),), mom2_adjustment=False)
    request = {"prompt": "{}'s capital,", "subject": "Italy", "target_new": {"str": "Paris"}}
    name = mt.layout.mlp_out_at(layer)
    saved = {n: p.detach().clone() for n, p in mt.model.named_parameters()}
    edit = rome.apply_rome(mt, request, hparams)
    try:
        module = get_module(mt.model, name)
        after = rome.project(module, mt.layout.out_weight_transposed, edit.info["k_star"])
        v_star = edit.info["v_star"].float().cpu()
        assert (after.cpu() - v_star).norm() <= 1e-4 * v_star.norm()
        changed = [n for n, p in mt.model.named_parameters() if not torch.equal(p, saved[n])]
        assert changed == [name + ".weight"]
    finally:
        edit.undo()
    for n, p in mt.model.named_parameters():
        assert torch.equal(p, saved[n]), n
