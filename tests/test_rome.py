"""ROME: the rank-one update's algebra (against an independent KKT solve), both weight layouts,
exact undo over many edits, stability, and clear errors for bad requests."""

from __future__ import annotations

import copy
import random
from dataclasses import replace

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from rome_lib.covariance import compute_mom2
from rome_lib.hooks import get_module
from rome_lib.hparams import ROMEHyperParams
from rome_lib.models import LoadedModel
from rome_lib.rome import (
    EditOrderError, active_edits, apply_rome, compute_v, context_templates, keys_and_values,
    normalize_request, project, rank_one_update, undo_all, weight_as_out_in,
)
from tests.conftest import SENTENCES

torch.set_num_threads(1)

REQUEST = {"prompt": "{} plays the sport of", "subject": "Michael Jordan",
           "target_new": {"str": "guitar"}}
FAST = ROMEHyperParams(layer=2, v_num_grad_steps=8, context_lengths=((3, 2), (5, 2)))


def make_corpus(n: int = 80, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = " ".join(SENTENCES).split()
    return [" ".join(rng.choices(words, k=rng.randint(3, 14))) for _ in range(n)]


_COVS: dict = {}


def cov_of(mt, layer=2):
    key = (mt.name, layer)
    if key not in _COVS:
        _COVS[key] = compute_mom2(mt, layer, make_corpus(), progress=False)[0]
    return _COVS[key]


def params_copy(mt):
    return {n: p.detach().clone() for n, p in mt.model.named_parameters()}


def assert_params_equal(mt, saved):
    for n, p in mt.model.named_parameters():
        assert torch.equal(p, saved[n]), f"{n} differs"


def facts(n):
    """n distinct requests over the fixture vocabulary."""
    subjects = ["Michael Jordan", "The Space Needle", "Danielle Darrieux", "The Eiffel Tower",
                "Toko Yasuda"]
    prompts = ["{} plays the sport of", "{} is located in the city of", "{}, a native speaker of"]
    targets = ["guitar", "Seattle", "French", "Paris", "basketball", "music"]
    return [{"prompt": prompts[i % 3], "subject": subjects[i % 5],
             "target_new": {"str": targets[i % 6]}} for i in range(n)]


# ----------------------------------------------------------------------------------------------
# The closed form
# ----------------------------------------------------------------------------------------------
def kkt_solution(w, keys, k_star, v_star):
    """min ‖Ŵ K − W K‖_F  s.t.  Ŵ k* = v*, solved row by row from the KKT system (float64):
    [2KKᵀ  k*; k*ᵀ 0] [ŵᵢ; μᵢ] = [2KKᵀwᵢ; v*ᵢ]."""
    d_in = w.shape[1]
    kkt = torch.zeros(d_in + 1, d_in + 1, dtype=torch.float64)
    kkt[:d_in, :d_in] = 2 * keys @ keys.T
    kkt[:d_in, d_in] = k_star
    kkt[d_in, :d_in] = k_star
    rhs = torch.cat([2 * keys @ keys.T @ w.T, v_star[None]], 0)  # [d_in+1, out]
    return torch.linalg.solve(kkt, rhs)[:d_in].T


def test_closed_form_matches_kkt_solution():
    torch.manual_seed(1)
    d_out, d_in, n = 6, 10, 40
    w = torch.randn(d_out, d_in, dtype=torch.float64)
    keys = torch.randn(d_in, n, dtype=torch.float64) + 0.5
    k_star, v_star = torch.randn(d_in, dtype=torch.float64), torch.randn(d_out, dtype=torch.float64)
    cov = keys @ keys.T / n
    upd = rank_one_update(w.float(), False, k_star, v_star - w @ k_star, cov)
    expected = kkt_solution(w, keys, k_star, v_star)
    torch.testing.assert_close(w + upd.double(), expected, rtol=1e-4, atol=1e-5)
    # The identity covariance is a different problem (min ‖ΔW‖_F): the answers must differ.
    plain = rank_one_update(w.float(), False, k_star, v_star - w @ k_star, None)
    assert not torch.allclose(w + plain.double(), expected, atol=1e-3)
    s = torch.linalg.svdvals(plain.double())
    assert s[1] / s[0] < 1e-6  # rank one
    # With C = I every row of the update is parallel to k*.
    cos = torch.nn.functional.cosine_similarity(plain.double(), k_star[None].expand(d_out, -1), dim=1)
    torch.testing.assert_close(cos.abs(), torch.ones(d_out, dtype=torch.float64))


def test_conv1d_and_linear_give_the_same_update():
    torch.manual_seed(2)
    d_in, d_out = 12, 5
    conv = Conv1D(d_out, d_in)  # weight [in, out]
    nn.init.normal_(conv.weight)
    nn.init.normal_(conv.bias)
    lin = nn.Linear(d_in, d_out)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.T)
        lin.bias.copy_(conv.bias)
    k = torch.randn(d_in)
    v = torch.randn(d_out)
    keys = torch.randn(d_in, 50)
    cov = keys @ keys.T / 50
    torch.testing.assert_close(project(conv, True, k), project(lin, False, k))
    upd_conv = rank_one_update(conv.weight, True, k, v - project(conv, True, k), cov)
    upd_lin = rank_one_update(lin.weight, False, k, v - project(lin, False, k), cov)
    assert upd_conv.shape == conv.weight.shape and upd_lin.shape == lin.weight.shape
    torch.testing.assert_close(upd_conv.T, upd_lin, rtol=1e-6, atol=1e-7)
    with torch.no_grad():
        conv.weight += upd_conv
        lin.weight += upd_lin
    torch.testing.assert_close(conv(k[None])[0], v, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(lin(k[None])[0], v, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Whole edits on the tiny models
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_gptj"])
def test_edit_is_rank_one_and_maps_k_to_v(request, fixture):
    mt = request.getfixturevalue(fixture)
    saved = params_copy(mt)
    module = get_module(mt.model, mt.layout.mlp_out_at(2))
    w0 = module.weight.detach().clone()
    cov = cov_of(mt)
    with apply_rome(mt, REQUEST, FAST, cov=cov) as edit:
        k_star, v_star = edit.info["k_star"], edit.info["v_star"]
        dw = weight_as_out_in(module.weight.detach() - w0, mt.layout.out_weight_transposed).double()
        s = torch.linalg.svdvals(dw)
        assert s[1] / s[0] < 1e-5, "the update is not rank one"
        out = project(module, mt.layout.out_weight_transposed, k_star)
        assert (out - v_star).norm() / v_star.norm() < 1e-4
        assert (v_star - project_with(w0, module, mt, k_star)).norm() > 1e-3  # something changed
        # Keys orthogonal to C⁻¹k* (in the C⁻¹ sense) keep their outputs.
        u = torch.linalg.solve(cov.double(), k_star.double())
        for seed in range(3):
            k = torch.randn(k_star.shape, generator=torch.Generator().manual_seed(seed)).double()
            k = k - (u @ k) / (u @ u) * u  # now uᵀk = 0
            before = project_with(w0, module, mt, k.float())
            after = project(module, mt.layout.out_weight_transposed, k.float())
            torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
        # ... and a generic key does not (the test above could not pass by accident).
        k = torch.randn(k_star.shape)
        assert not torch.allclose(project(module, mt.layout.out_weight_transposed, k),
                                  project_with(w0, module, mt, k), atol=1e-5)
    assert_params_equal(mt, saved)


def project_with(w0, module, mt, k):
    w = weight_as_out_in(w0.float(), mt.layout.out_weight_transposed)
    return w @ k.float() + module.bias.detach().float()


def sharpened(mt, factor=10.0):
    """A copy whose final norm is scaled up: random tiny models have near-uniform outputs that no
    MLP value can move; with sharper logits an edit can (and must) change the prediction."""
    model = copy.deepcopy(mt.model)
    with torch.no_grad():
        get_module(model, mt.layout.final_norm).weight.mul_(factor)
    return LoadedModel(model=model, tokenizer=mt.tokenizer, layout=mt.layout, name=mt.name + "-sharp")


# Subject at the end of the prompt: in a random 4-layer model attention barely carries the subject's
# state to later tokens, so efficacy is tested where the edited state itself predicts the object.
END_REQUEST = {"prompt": "The sport played by {}", "subject": "Michael Jordan",
               "target_new": {"str": "guitar"}}


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_gptj"])
def test_edit_makes_the_model_predict_the_target(request, fixture):
    mt = sharpened(request.getfixturevalue(fixture))
    # The official weight decay 0.5·‖δ‖/‖m₀‖² is scaled for real models (‖m₀‖ ≫ 1); a random
    # model's ‖m₀‖ ≈ 0.06 would make it dominate.
    hp = replace(FAST, v_num_grad_steps=20, v_weight_decay=1e-3)
    p_before = target_prob(mt, END_REQUEST)
    with apply_rome(mt, END_REQUEST, hp, cov=cov_of(mt)) as edit:
        hist = edit.info["history"]
        assert hist[-1]["nll"] < 0.5 * hist[0]["nll"]
        p_after = target_prob(mt, END_REQUEST)  # through the edited *weights*, not the hook
    assert p_before < 0.01 and p_after > 0.1
    assert target_prob(mt, END_REQUEST) == p_before


def target_prob(mt, req):
    ids = mt.tokenizer(req["prompt"].format(req["subject"]))["input_ids"]
    tgt = mt.tokenizer(" " + req["target_new"]["str"])["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(mt.model(torch.tensor([ids + tgt])).logits[0].float(), -1)
    nll = -torch.stack([logp[len(ids) - 1 + i, t] for i, t in enumerate(tgt)]).mean()
    return torch.exp(-nll).item()


def test_identity_covariance_update_lies_along_k(tiny_gpt2):
    mt = tiny_gpt2
    module = get_module(mt.model, mt.layout.mlp_out_at(2))
    w0 = module.weight.detach().clone()
    with apply_rome(mt, REQUEST, replace(FAST, mom2_adjustment=False)) as edit:
        dw = weight_as_out_in(module.weight.detach() - w0, True).double()
        k = edit.info["k_star"].double()
        residual = dw - torch.outer(dw @ k / (k @ k), k)
        assert residual.norm() < 1e-5 * dw.norm()


def test_undo_bit_exact_after_ten_edits(tiny_gpt2):
    mt = tiny_gpt2
    saved = params_copy(mt)
    cov = cov_of(mt)
    edits = [apply_rome(mt, r, FAST, cov=cov) for r in facts(10)]
    assert active_edits(mt) == edits
    changed = get_module(mt.model, mt.layout.mlp_out_at(2)).weight
    assert not torch.equal(changed, saved[mt.layout.mlp_out_at(2) + ".weight"])
    # Out of order: a clear error, and nothing changes.
    middle = params_copy(mt)
    with pytest.raises(EditOrderError, match="last-in, first-out"):
        edits[3].undo()
    assert_params_equal(mt, middle)
    for edit in reversed(edits):
        edit.undo()
    assert_params_equal(mt, saved)
    assert active_edits(mt) == []
    with pytest.raises(EditOrderError, match="already been undone"):
        edits[0].undo()


def test_twenty_edits_stay_finite_then_undo_all(tiny_gptj):
    mt = tiny_gptj
    saved = params_copy(mt)
    cov = cov_of(mt)
    hp = replace(FAST, v_num_grad_steps=4)
    for r in facts(20):
        apply_rome(mt, r, hp, cov=cov)
    for p in mt.model.parameters():
        assert torch.isfinite(p).all()
    ids = mt.tokenizer(SENTENCES[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.isfinite(mt.model(ids).logits).all()
    undo_all(mt)
    assert_params_equal(mt, saved)


def test_edits_at_different_layers_and_context_manager(tiny_gpt2):
    mt = tiny_gpt2
    saved = params_copy(mt)
    with apply_rome(mt, REQUEST, FAST, cov=cov_of(mt)):
        with apply_rome(mt, facts(2)[1], replace(FAST, layer=1), cov=cov_of(mt, 1)):
            assert len(active_edits(mt)) == 2
        assert len(active_edits(mt)) == 1
    assert_params_equal(mt, saved)


def test_half_precision_model(tiny_gpt2):
    model = copy.deepcopy(tiny_gpt2.model).to(torch.bfloat16)
    mt = LoadedModel(model=model, tokenizer=tiny_gpt2.tokenizer, layout=tiny_gpt2.layout,
                     name=tiny_gpt2.name + "-bf16")
    module = get_module(model, mt.layout.mlp_out_at(2))
    w0 = module.weight.detach().clone()
    upd = rank_one_update(module.weight, True, torch.randn(256), torch.randn(64), None)
    assert upd.dtype == torch.float32
    with apply_rome(mt, REQUEST, FAST, cov=cov_of(tiny_gpt2)) as edit:
        assert module.weight.dtype == torch.bfloat16 and torch.isfinite(module.weight).all()
        out = project(module, True, edit.info["k_star"])
        v = edit.info["v_star"]
        assert (out - v).norm() / v.norm() < 2e-2  # bf16 weights: ~3 significant digits
    assert torch.equal(module.weight, w0)


def test_context_templates_seeded_and_cached(tiny_gpt2):
    a = context_templates(tiny_gpt2, ((5, 10), (10, 10)), 5, seed=0)
    assert len(a) == 21 and a[0] == "{}"
    assert all(t.endswith(". {}") and t.count("{}") == 1 for t in a[1:])
    assert a == context_templates(tiny_gpt2, ((5, 10), (10, 10)), 5, seed=0)
    from rome_lib import rome

    rome._TEMPLATE_CACHE.clear()
    assert a == context_templates(tiny_gpt2, ((5, 10), (10, 10)), 5, seed=0)  # seeded, not cached luck
    assert a != context_templates(tiny_gpt2, ((5, 10), (10, 10)), 5, seed=1)


def test_keys_at_last_subject_token(tiny_gpt2):
    """The key read for a template is the key at the subject's last token of that text."""
    mt = tiny_gpt2
    templates = ["{}", "Seattle music. {}"]
    keys, _ = keys_and_values(mt, "{} plays the sport of", "Michael Jordan", 2, templates)
    from rome_lib.hooks import trace
    from rome_lib.tracing import find_subject_range

    for row, template in enumerate(templates):
        text = template.format("Michael Jordan plays the sport of")
        _, end = find_subject_range(mt.tokenizer, text, "Michael Jordan")
        name = mt.layout.mlp_out_at(2)
        with trace(mt.model, name, retain_input=True) as rec:
            mt.model(mt.tokenizer(text, return_tensors="pt")["input_ids"])
        torch.testing.assert_close(keys[row], rec[name].input[0, end - 1])


def test_v_optimisation_respects_clamp(tiny_gpt2):
    hp = replace(FAST, clamp_norm_factor=0.01, v_num_grad_steps=5, v_lr=5.0)
    templates = context_templates(tiny_gpt2, hp.context_lengths, hp.context_top_k, hp.seed)
    _, _, info = compute_v(tiny_gpt2, REQUEST, hp, templates)
    assert info["delta_norm"] <= 0.01 * info["m0_norm"] * (1 + 1e-5)
    assert info["delta_norm"] > 0.005 * info["m0_norm"]  # it did hit the clamp


# ----------------------------------------------------------------------------------------------
# Requests
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, message", [
    ({"prompt": "Michael Jordan plays the sport of", "subject": "Michael Jordan",
      "target_new": {"str": "golf"}}, "no '{}' placeholder.*Write it with"),
    ({"prompt": "The player plays the sport of", "subject": "Michael Jordan",
      "target_new": {"str": "golf"}}, "does not occur"),
    ({"prompt": "{} plays {}", "subject": "Michael Jordan", "target_new": {"str": "golf"}},
     "more than one"),
    ({"prompt": "{} plays the sport of", "subject": "Michael Jordan", "target_new": {"str": "  "}},
     "empty"),
    ({"prompt": "{} plays the sport of", "subject": "", "target_new": {"str": "golf"}}, "subject is empty"),
    ({"prompt": "{} plays the sport of", "target_new": {"str": "golf"}}, "no 'subject'"),
])
def test_bad_requests(tiny_gpt2, bad, message):
    with pytest.raises(ValueError, match=message):
        apply_rome(tiny_gpt2, bad, FAST, cov=cov_of(tiny_gpt2))
    assert active_edits(tiny_gpt2) == []


def test_normalize_request_adds_space():
    r = normalize_request(REQUEST)
    assert r["target_new"]["str"] == " guitar" and REQUEST["target_new"]["str"] == "guitar"
    assert normalize_request({**REQUEST, "target_new": {"str": " guitar"}})["target_new"]["str"] == " guitar"


def test_warns_when_target_already_predicted(tiny_gpt2):
    mt = tiny_gpt2
    ids = mt.tokenizer("Michael Jordan plays the sport of", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        top = mt.model(ids).logits[0, -1].argmax().item()
    word = mt.tokenizer.decode([top])
    if not word.startswith(" ") or not word.strip():
        pytest.skip("the random model's top token is not a space-prefixed word")
    req = {**REQUEST, "target_new": {"str": word.strip()}}
    if mt.tokenizer(" " + word.strip())["input_ids"] != [top]:
        pytest.skip("re-tokenisation differs")
    with pytest.warns(UserWarning, match="already predicts"):
        apply_rome(mt, req, FAST, cov=cov_of(mt)).undo()


def test_presets():
    assert ROMEHyperParams.for_model("gpt2-xl").layer == 17
    assert ROMEHyperParams.for_model("gpt2-medium").clamp_norm_factor == 3
    assert ROMEHyperParams.for_model("EleutherAI/gpt-j-6B").layer == 5
    hp = ROMEHyperParams.for_model("gpt2-xl")
    assert (hp.v_num_grad_steps, hp.v_lr, hp.kl_factor, hp.clamp_norm_factor, hp.mom2_adjustment) == (
        20, 0.5, 0.0625, 4.0, True)
    assert ROMEHyperParams.for_model("/tmp/some/folder", n_layer=12).layer == 4
