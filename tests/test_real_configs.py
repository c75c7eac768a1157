"""Every hub preset's real config with random weights, through the user's path: build, save_pretrained,
load_model(folder), trace, edit.

To stay fast, each model keeps its real widths except where noted, but has 2 layers and the
conftest tokenizer's small vocabulary. GPT-J's width is cut from 4096 to 512 (2 heads of the real
head size 256, the real rotary_dim 64): at full width even 2 layers are 1.6 GB. One ``slow`` test
builds the full-size gpt2-xl (48 layers of 1600, the real 50,257-token vocabulary; ~6 GB of RAM).
"""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from rome_lib.hooks import get_module
from rome_lib.hparams import ROMEHyperParams
from rome_lib.models import PRESET_CONFIGS, load_model, preset_config
from rome_lib.rome import apply_rome, project
from rome_lib.tracing import restored_probability, trace, trace_reference

torch.set_num_threads(1)

PROMPT, SUBJECT = "Michael Jordan plays the sport of", "Michael Jordan"
REQUEST = {"prompt": "{} plays the sport of", "subject": SUBJECT, "target_new": {"str": "guitar"}}
# Fewer noise draws, optimisation steps and sampled prefixes than the paper: invariants, not quality.
SAMPLES = 3
# Layer 0 of 2: a δ in the last layer could not reach the positions that predict the target.
FAST_EDIT = ROMEHyperParams(layer=0, v_num_grad_steps=4, context_lengths=((3, 2),),
                            mom2_adjustment=False)
SHRINK = {"EleutherAI/gpt-j-6B": dict(n_embd=512, n_head=2)}  # see the module docstring
KIND = dict(zip(PRESET_CONFIGS, ["state", "mlp", "attn", "mlp", "state"]))  # every kind is covered


@pytest.fixture(scope="module", params=list(PRESET_CONFIGS))
def preset_model(request, tmp_path_factory, tokenizer):
    name = request.param
    torch.manual_seed(0)
    config = preset_config(name, n_layer=2, vocab_size=len(tokenizer), **SHRINK.get(name, {}))
    folder = tmp_path_factory.mktemp(name.replace("/", "_"))
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    mt = load_model(str(folder), device="cpu")
    return name, mt


def test_trace_invariants(preset_model):
    name, mt = preset_model
    real = PRESET_CONFIGS[name]
    assert mt.model.config.n_embd == SHRINK.get(name, {}).get("n_embd", real["n_embd"])
    assert mt.layout.arch == real["model_type"] and mt.n_layer == 2
    kind = KIND[name]
    batched = trace(mt, PROMPT, SUBJECT, kind, samples=SAMPLES)
    n_tokens = len(mt.tokenizer(PROMPT)["input_ids"])
    assert batched.scores.shape == (n_tokens, 2) and len(batched.tokens) == n_tokens
    assert torch.isfinite(batched.scores).all() and 0 <= batched.low <= 1 and 0 < batched.high <= 1

    reference = trace_reference(mt, PROMPT, SUBJECT, kind, samples=SAMPLES, answer_id=batched.answer_id)
    torch.testing.assert_close(batched.scores, reference.scores, atol=1e-5, rtol=0)
    assert batched.low == pytest.approx(reference.low, abs=1e-5)

    # Restoring every token's state at one layer undoes the corruption entirely.
    for layer in (0, 1):
        p = restored_probability(mt, PROMPT, SUBJECT, [(t, layer) for t in range(n_tokens)],
                                 samples=SAMPLES)
        assert p["restored"] == pytest.approx(p["clean"], abs=1e-5)


def test_rome_edit_maps_k_star_to_v_star_and_undoes_exactly(preset_model):
    name, mt = preset_model
    saved = {n: p.detach().clone() for n, p in mt.model.named_parameters()}
    edit = apply_rome(mt, REQUEST, FAST_EDIT)
    module = get_module(mt.model, mt.layout.mlp_out_at(0))
    after = project(module, mt.layout.out_weight_transposed, edit.info["k_star"])
    v_star = edit.info["v_star"].float().cpu()
    assert (after.cpu() - v_star).norm() <= 1e-4 * v_star.norm()
    changed = [n for n, p in mt.model.named_parameters() if not torch.equal(p, saved[n])]
    assert changed == [mt.layout.mlp_out_at(0) + ".weight"]
    history = edit.info["history"]
    assert history[-1]["p_target"] > history[0]["p_target"]  # v* moved towards the target
    edit.undo()
    for n, p in mt.model.named_parameters():
        assert torch.equal(p, saved[n]), n


@pytest.mark.slow
def test_full_size_gpt2_xl_trace_and_edit(tmp_path):
    """Real gpt2-xl shapes (GPT2Config, 1.56 B random parameters, ~6 GB float32) end to end on CPU."""
    from tests.conftest import tiny_tokenizer

    tokenizer = tiny_tokenizer()  # ids < 400 index the real 50,257-row embedding
    started = time.perf_counter()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**{k: v for k, v in PRESET_CONFIGS["gpt2-xl"].items()
                                          if k != "model_type"}))
    model.save_pretrained(tmp_path)
    del model
    tokenizer.save_pretrained(tmp_path)
    mt = load_model(str(tmp_path), device="cpu")
    assert sum(p.numel() for p in mt.model.parameters()) == pytest.approx(1.558e9, rel=0.01)
    built = time.perf_counter()

    prompt, subject = "The Space Needle is in", "The Space Needle"
    result = trace(mt, prompt, subject, "mlp", samples=2)
    assert result.window == 10 and result.scores.shape == (len(result.tokens), 48)
    assert torch.isfinite(result.scores).all()
    traced = time.perf_counter()

    hparams = replace(ROMEHyperParams.for_model("gpt2-xl"), v_num_grad_steps=5,
                      context_lengths=((5, 2),), mom2_adjustment=False)
    edit = apply_rome(mt, {"prompt": "{} is in", "subject": subject, "target_new": {"str": "Paris"}},
                      hparams)
    module = get_module(mt.model, mt.layout.mlp_out_at(17))
    after = project(module, True, edit.info["k_star"])
    assert (after.cpu() - edit.info["v_star"].float().cpu()).norm() <= 1e-4 * edit.info["v_star"].norm()
    edit.undo()
    print(f"\ngpt2-xl full size: build+save+load {built - started:.1f}s, mlp trace "
          f"{traced - built:.1f}s, ROME edit {time.perf_counter() - traced:.1f}s")
