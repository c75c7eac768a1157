"""ROME: the rank-one update's algebra (against an independent KKT solve), both weight layouts,
exact undo over many edits, stability, and clear errors for bad requests."""

from __future__ import annotations

import copy
import random
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from rome_lib.covariance import compute_mom2
from rome_lib.hooks import get_module
from rome_lib.hparams import ROMEHyperParams
from rome_lib.models import LoadedModel, load_model
from rome_lib.rome import (
    EditOrderError, active_edits, apply_rome, compute_v, context_templates, get_cov, keys_and_values,
    normalize_request, project, rank_one_update, undo_all, v_loss, v_problem, weight_as_out_in,
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
        # Keys orthogonal to u = C⁻¹k̄ keep their outputs (official update: Λ from k_bare = k_star).
        u = torch.linalg.solve(cov.double(), edit.info["k_mean"].double())
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
        k = edit.info["k_mean"].double()  # u = k̄ when C = I, in both forms of the update
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
    a = context_templates(tiny_gpt2, ((4, 10), (9, 10)), 5, seed=0)
    assert len(a) == 21 and a[0] == "{}"
    assert all(t.endswith(". {}") and t.count("{}") == 1 for t in a[1:])
    assert a == context_templates(tiny_gpt2, ((4, 10), (9, 10)), 5, seed=0)
    from rome_lib import rome

    rome._TEMPLATE_CACHE.clear()
    assert a == context_templates(tiny_gpt2, ((4, 10), (9, 10)), 5, seed=0)  # seeded, not cached luck
    assert a != context_templates(tiny_gpt2, ((4, 10), (9, 10)), 5, seed=1)


def test_context_templates_have_the_official_lengths(tiny_gpt2, monkeypatch):
    """The official generate_fast stops at max_out_len 5 / 10 tokens *counting* its <|endoftext|>
    prompt: 4 and 9 sampled tokens, which is what the default lengths ask the sampler for."""
    from rome_lib import rome

    assert ROMEHyperParams(layer=0).context_lengths == ((4, 10), (9, 10))
    asked = []
    real = rome.sample_prefixes
    monkeypatch.setattr(rome, "sample_prefixes", lambda mt, n, length, *a: asked.append(length) or
                        real(mt, n, length, *a))
    rome._TEMPLATE_CACHE.clear()
    context_templates(tiny_gpt2)
    assert asked == [4, 9]
    rome._TEMPLATE_CACHE.clear()


def test_context_templates_can_start_from_words(tiny_gpt2, monkeypatch):
    """Official MEMIT: one prefix after each of "The", "Therefore", "Because", "I", "You", 10 tokens
    long *counting* the word's own (generate_fast's max_out_len 10)."""
    from rome_lib import covariance, rome

    words = ("The", "Therefore", "Because", "I", "You")
    sampled = []
    real = covariance.sample_top_k
    monkeypatch.setattr(covariance, "sample_top_k", lambda logits, *a: sampled.append(len(logits)) or
                        real(logits, *a))
    rome._TEMPLATE_CACHE.clear()
    t = context_templates(tiny_gpt2, ((10, 5),), 5, seed=0, starts=words)
    assert len(t) == 6 and t[0] == "{}"
    assert all(tpl.startswith(w) and tpl.endswith(". {}") for w, tpl in zip(words, t[1:]))
    pieces = [len(tiny_gpt2.tokenizer(w)["input_ids"]) for w in words]
    assert sampled == [1] * sum(10 - p for p in pieces)  # one row per word, up to 10 tokens in all
    assert t != context_templates(tiny_gpt2, ((10, 5),), 5, seed=0)  # after <|endoftext|>
    with pytest.raises(ValueError, match="evenly"):
        context_templates(tiny_gpt2, ((10, 4),), 5, seed=0, starts=words)
    rome._TEMPLATE_CACHE.clear()


def test_caches_go_with_their_model(tiny_gpt2, monkeypatch):
    """Templates and C are cached per model *object*, held weakly: once a model is gone its entries
    are too, so a model loaded later at the same address never reads them (an id()-keyed cache could
    hand it another model's C)."""
    import gc
    import weakref

    from rome_lib import rome

    monkeypatch.setattr(rome, "layer_stats", lambda mt, layer, **kw: torch.eye(4) * (layer + 1))
    mt = load_model(tiny_gpt2.name, device="cpu")  # a second model object, same weights
    context_templates(mt, ((3, 2),), 5, seed=0)
    hp = ROMEHyperParams(layer=1, mom2_corpus="unused")
    assert get_cov(mt, hp, progress=False) is get_cov(mt, hp, progress=False)  # computed once
    assert get_cov(tiny_gpt2, hp, progress=False) is not get_cov(mt, hp, progress=False)
    model = weakref.ref(mt.model)
    assert model() in rome._TEMPLATE_CACHE and model() in rome._COV_CACHE
    sizes = len(rome._TEMPLATE_CACHE), len(rome._COV_CACHE)
    del mt
    gc.collect()
    assert model() is None  # the caches did not keep it alive
    assert (len(rome._TEMPLATE_CACHE), len(rome._COV_CACHE)) == (sizes[0] - 1, sizes[1] - 1)


def test_keys_at_last_subject_token(tiny_gpt2):
    """The key read for a template is the key at the subject's last token of that text."""
    mt = tiny_gpt2
    templates = ["{}", "Seattle music. {}"]
    keys, _ = keys_and_values(mt, "{} plays the sport of", "Michael Jordan", 2, templates)
    from rome_lib.hooks import hook_modules
    from rome_lib.tracing import find_subject_range

    for row, template in enumerate(templates):
        text = template.format("Michael Jordan plays the sport of")
        _, end = find_subject_range(mt.tokenizer, text, "Michael Jordan")
        name = mt.layout.mlp_out_at(2)
        with hook_modules(mt.model, name, retain_input=True) as rec:
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


# ----------------------------------------------------------------------------------------------
# The two forms of the update on the embedded toy model, against the official code's formulas
# ----------------------------------------------------------------------------------------------
TOY_HP = replace(ROMEHyperParams.for_model("toy"), v_num_grad_steps=6)


@pytest.fixture(scope="module")
def toy():
    return load_model("toy", device="cpu")


@pytest.fixture(scope="module")
def toy_case(toy):
    """A toy CounterFact request, 7 sampled templates, and a C from 300 toy-corpus sentences."""
    import json

    from rome_lib.covariance import load_corpus

    request = json.loads(toy.data_file("counterfact.json").read_text())[0]["requested_rewrite"]
    templates = context_templates(toy, ((4, 3), (9, 3)), 5, seed=0)
    cov = compute_mom2(toy, TOY_HP.layer, load_corpus("toy", None)[1][:300], progress=False)[0]
    return request, templates, cov


def official_delta_w(mt, request, hp, templates, cov):
    """ΔW as the official code computes it (kmeng01/rome: compute_u, compute_v, rome_main), written
    out here with plain forward hooks: u = C⁻¹k̄ / ‖C⁻¹k̄‖; δ by Adam on NLL + kl_factor ·
    kl_div(kl_distr_init, kl_log_probs, log_target) + decay·‖δ‖/‖target_init‖² (target_init: the MLP
    output at the bare prompt, the first template), clamped to clamp·‖target_init‖; right vector
    (target_init + δ − cur_output) / (cur_input · u) at the bare prompt; ΔW = u ⊗ right ([in, out])."""
    tok, model = mt.tokenizer, mt.model
    proj = get_module(model, mt.layout.mlp_out_at(hp.layer))
    target = tok(" " + request["target_new"]["str"].strip(), add_special_tokens=False)["input_ids"]

    def lookup(text_template):  # "subject_last": the tokens up to and including the subject, − 1
        return len(tok(text_template[: text_template.index("{}")] + request["subject"])["input_ids"]) - 1

    prompts = [t.replace("{}", request["prompt"]) for t in templates]
    rows = [tok(p.format(request["subject"]))["input_ids"] for p in prompts]
    kl_row = tok(hp.kl_prompt.format(request["subject"]))["input_ids"]
    idxs = [lookup(p) for p in prompts] + [lookup(hp.kl_prompt)]
    full = [r + target[:-1] for r in rows] + [kl_row]  # the official prompt + decode(target[:-1])
    width = max(map(len, full))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in full])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in full])

    def grab(text):  # input and output of the projection at the bare prompt's subject
        got = {}
        h = proj.register_forward_hook(lambda m, i, o: got.update(i=i[0].detach(), o=o.detach()))
        with torch.no_grad():
            model(torch.tensor([tok(text.format(request["subject"]))["input_ids"]]))
        h.remove()
        return got["i"][0, lookup(text)], got["o"][0, lookup(text)]

    keys = torch.stack([grab(p)[0] for p in prompts])
    u = torch.linalg.solve(cov.double(), keys.mean(0).double()).float()
    u = u / u.norm()

    delta = torch.zeros(model.config.n_embd, requires_grad=True)
    state = {"target_init": None}

    def add(module, inputs, out):
        if state["target_init"] is None:
            state["target_init"] = out[0, idxs[0]].detach().clone()
        out = out.clone()
        for i, j in enumerate(idxs):
            out[i, j] = out[i, j] + delta
        return out

    opt = torch.optim.Adam([delta], lr=hp.v_lr)
    kl_init = None
    for it in range(hp.v_num_grad_steps):
        opt.zero_grad()
        h = proj.register_forward_hook(add)
        logits = model(input_ids=ids, attention_mask=mask).logits
        h.remove()
        kl_log_probs = torch.log_softmax(logits[-1:, idxs[-1]], 1)
        if kl_init is None:
            kl_init = kl_log_probs.detach().clone()
        log_probs = torch.log_softmax(logits[:-1], 2)
        nll_each = torch.stack([-log_probs[i, len(r) - 1 + torch.arange(len(target)), target].sum()
                                / len(target) for i, r in enumerate(rows)])
        kl = hp.kl_factor * F.kl_div(kl_init, kl_log_probs, log_target=True, reduction="batchmean")
        loss = nll_each.mean() + kl + hp.v_weight_decay * delta.norm() / state["target_init"].norm() ** 2
        if loss < 5e-2 or it == hp.v_num_grad_steps - 1:
            break
        loss.backward()
        opt.step()
        max_norm = hp.clamp_norm_factor * state["target_init"].norm()
        if delta.norm() > max_norm:
            with torch.no_grad():
                delta[...] = delta * max_norm / delta.norm()
    cur_input, cur_output = grab(request["prompt"])
    right = (state["target_init"] + delta.detach() - cur_output) / torch.dot(cur_input, u)
    return torch.outer(u, right)  # [in, out], GPT-2's Conv1D layout



def test_official_update_matches_the_official_formulas(toy, toy_case):
    request, templates, cov = toy_case
    module = get_module(toy.model, toy.layout.mlp_out_at(TOY_HP.layer))
    w0 = module.weight.detach().clone()
    with apply_rome(toy, request, TOY_HP, cov=cov, templates=templates) as edit:
        ours = module.weight.detach() - w0
        info = edit.info
        # Ŵ k_bare = v*: the key mapped exactly is the bare prompt's, not k̄.
        k_bare, _ = keys_and_values(toy, request["prompt"], request["subject"], TOY_HP.layer, ["{}"])
        torch.testing.assert_close(info["k_star"], k_bare[0])
        out = project(module, True, k_bare[0])
        assert (out - info["v_star"]).norm() / info["v_star"].norm() < 1e-5
        assert (project(module, True, info["k_mean"]) - info["v_star"]).norm() > 1e-3
    theirs = official_delta_w(toy, request, TOY_HP, templates, cov)
    assert (ours - theirs).norm() / theirs.norm() < 1e-5


def test_consistent_update_maps_the_mean_key(toy, toy_case):
    request, templates, cov = toy_case
    module = get_module(toy.model, toy.layout.mlp_out_at(TOY_HP.layer))
    hp = replace(TOY_HP, update="consistent")
    w0 = module.weight.detach().clone()
    with apply_rome(toy, request, hp, cov=cov, templates=templates) as edit:
        ours = module.weight.detach() - w0
        keys, _ = keys_and_values(toy, request["prompt"], request["subject"], hp.layer, templates)
        torch.testing.assert_close(edit.info["k_star"], keys.mean(0))
        out = project(module, True, keys.mean(0))
        assert (out - edit.info["v_star"]).norm() / edit.info["v_star"].norm() < 1e-5
        k_bare = edit.info["k_bare"]
        assert (project(module, True, k_bare) - edit.info["v_star"]).norm() > 1e-3
    official = official_delta_w(toy, request, TOY_HP, templates, cov)
    assert (ours - official).norm() / official.norm() > 1e-3  # the two forms really differ


def test_kl_term_is_kl_of_the_edited_from_the_original(toy, toy_case):
    """Eq. 4's KL(P_edit ‖ P_orig) = F.kl_div(log P_orig, log P_edit, log_target=True); the reverse
    direction gives a different number for a large δ (so this test fails if it is swapped)."""
    request, templates, _ = toy_case
    rw = normalize_request(request)
    tgt = toy.tokenizer(rw["target_new"]["str"], add_special_tokens=False)["input_ids"]
    problem = v_problem(toy, rw["prompt"], rw["subject"], tgt, templates[:2])
    delta = torch.randn(toy.model.config.n_embd, generator=torch.Generator().manual_seed(0)) * 3
    terms = v_loss(toy, problem, TOY_HP.layer, delta, kl_factor=1.0)
    # log P_orig and log P_edit at the subject's last token of "{s} is a", computed here directly
    text = "{} is a".format(rw["subject"])
    ids = torch.tensor([toy.tokenizer(text)["input_ids"]])
    last = len(toy.tokenizer(rw["subject"])["input_ids"]) - 1
    proj = get_module(toy.model, toy.layout.mlp_out_at(TOY_HP.layer))
    with torch.no_grad():
        log_orig = torch.log_softmax(toy.model(ids).logits[0, last], -1)
        h = proj.register_forward_hook(lambda m, i, o: o + F.one_hot(torch.tensor(last), o.shape[1])
                                       [None, :, None] * delta)
        log_edit = torch.log_softmax(toy.model(ids).logits[0, last], -1)
        h.remove()
    want = F.kl_div(log_orig, log_edit, log_target=True, reduction="sum")
    reverse = F.kl_div(log_edit, log_orig, log_target=True, reduction="sum")
    assert abs(want - reverse) > 0.05 * want
    assert terms.kl.item() == pytest.approx(want.item(), rel=1e-4)
    assert terms.total.item() == pytest.approx(terms.nll_each.mean().item() + want.item(), rel=1e-4)


def test_update_must_be_official_or_consistent():
    with pytest.raises(ValueError, match="official, consistent"):
        ROMEHyperParams(layer=0, update="r-rome")
    assert ROMEHyperParams(layer=0).update == "official"


def test_compute_v_loop_optimises_the_reference_loss(toy, toy_case):
    """compute_v runs the batched δ loop of rome_lib.deltas; the loss it records at its final δ
    equals the plain reference v_loss (which the checks and lesson 05 use) at that δ: NLL and KL."""
    request, templates, _ = toy_case
    rw = normalize_request(request)
    hp = replace(TOY_HP, v_num_grad_steps=4, early_stop_loss=0.0)
    _, v_star, info = compute_v(toy, rw, hp, templates)
    _, values = keys_and_values(toy, rw["prompt"], rw["subject"], hp.layer, ["{}"])
    delta = v_star - values[0]  # official: v* = m_bare + δ
    assert delta.norm() > 0.1
    tgt = toy.tokenizer(" " + rw["target_new"]["str"].strip(), add_special_tokens=False)["input_ids"]
    assert list(tgt) == list(info["target_ids"])
    problem = v_problem(toy, rw["prompt"], rw["subject"], tgt, templates, hp.kl_prompt)
    terms = v_loss(toy, problem, hp.layer, delta, kl_factor=hp.kl_factor)
    last = info["history"][-1]
    assert terms.nll_each.mean().item() == pytest.approx(last["nll"], rel=1e-4)
    assert hp.kl_factor * terms.kl.item() == pytest.approx(last["kl"], rel=1e-3, abs=1e-7)
