"""FT and FT+L: they learn the new fact, FT+L stays inside its L∞ ball, only the chosen weight moves,
and their edits undo exactly (sharing ROME's edit stack)."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from rome_lib.baselines import apply_ft, apply_ft_l
from rome_lib.hooks import get_module
from rome_lib.hparams import FTHyperParams, ROMEHyperParams
from rome_lib.models import LoadedModel
from rome_lib.rome import EditOrderError, active_edits, apply_rome

torch.set_num_threads(1)

REQUEST = {"prompt": "{} plays the sport of", "subject": "Michael Jordan",
           "target_new": {"str": "guitar"}}
HP = FTHyperParams(layer=2, num_steps=15, lr=1e-2)


def sharpened(mt, factor=10.0):
    model = copy.deepcopy(mt.model)
    with torch.no_grad():
        get_module(model, mt.layout.final_norm).weight.mul_(factor)
    return LoadedModel(model=model, tokenizer=mt.tokenizer, layout=mt.layout, name=mt.name + "-sharp")


def target_nll(mt, req):
    ids = mt.tokenizer(req["prompt"].format(req["subject"]))["input_ids"]
    tgt = mt.tokenizer(" " + req["target_new"]["str"], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(mt.model(torch.tensor([ids + tgt])).logits[0].float(), -1)
    return -torch.stack([logp[len(ids) - 1 + i, t] for i, t in enumerate(tgt)]).mean().item()


def params_copy(mt):
    return {n: p.detach().clone() for n, p in mt.model.named_parameters()}


@pytest.fixture(scope="module")
def sharp(tiny_gpt2):
    return sharpened(tiny_gpt2)


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_gptj"])
def test_ft_learns_and_undoes_exactly(request, fixture):
    mt = sharpened(request.getfixturevalue(fixture))
    saved = params_copy(mt)
    before = target_nll(mt, REQUEST)
    edit = apply_ft(mt, REQUEST, HP)
    after = target_nll(mt, REQUEST)
    assert after < before - 1.0
    assert edit.info["history"][-1] < edit.info["history"][0]
    changed = [n for n, p in mt.model.named_parameters() if not torch.equal(p, saved[n])]
    assert changed == [mt.layout.mlp_out_at(2) + ".weight"]
    edit.undo()
    for n, p in mt.model.named_parameters():
        assert torch.equal(p, saved[n])


def test_ft_l_respects_the_linf_ball(sharp):
    eps = 1e-3
    name = sharp.layout.mlp_out_at(2) + ".weight"
    w0 = dict(sharp.model.named_parameters())[name].detach().clone()
    with apply_ft(sharp, REQUEST, replace(HP, norm_constraint=eps)) as edit:
        dw = (dict(sharp.model.named_parameters())[name] - w0).abs()
        assert dw.max() <= eps * (1 + 1e-6)
        assert dw.max() > 0.9 * eps  # the constraint is active: lr 1e-2 ≫ ε
        assert edit.method == "ft-l"
    with apply_ft(sharp, REQUEST, HP) as edit:  # unconstrained FT goes further
        assert (dict(sharp.model.named_parameters())[name] - w0).abs().max() > 2 * eps
        assert edit.method == "ft"


def test_ft_l_default_preset(sharp):
    with apply_ft_l(sharp, REQUEST) as edit:
        hp = edit.info["hparams"]
        assert hp.norm_constraint is not None
        assert edit.info["delta_max"] <= hp.norm_constraint * (1 + 1e-6)


def test_shared_stack_with_rome(sharp):
    saved = params_copy(sharp)
    rome_hp = ROMEHyperParams(layer=2, v_num_grad_steps=3, context_lengths=((3, 2),),
                              mom2_adjustment=False)
    first = apply_rome(sharp, REQUEST, rome_hp)
    second = apply_ft(sharp, {**REQUEST, "target_new": {"str": "music"}}, HP)
    assert active_edits(sharp) == [first, second]
    with pytest.raises(EditOrderError):
        first.undo()
    second.undo()
    first.undo()
    for n, p in sharp.model.named_parameters():
        assert torch.equal(p, saved[n])


def test_half_precision(tiny_gpt2):
    mt = sharpened(tiny_gpt2)
    mt.model.to(torch.bfloat16)
    w = get_module(mt.model, mt.layout.mlp_out_at(2)).weight
    w0 = w.detach().clone()
    with apply_ft(mt, REQUEST, HP):
        assert w.dtype == torch.bfloat16 and torch.isfinite(w).all() and not torch.equal(w, w0)
    assert torch.equal(w, w0)


def test_presets_and_bad_requests(tiny_gpt2):
    xl = FTHyperParams.for_model("gpt2-xl", constrained=True)
    assert (xl.layer, xl.num_steps, xl.lr, xl.norm_constraint) == (0, 25, 5e-4, 5e-4)
    assert FTHyperParams.for_model("gpt2-xl", constrained=False).norm_constraint is None
    # the official hparams/FT files (paper App. E.1): unconstrained FT at layer 1 / 21, GPT-J's ε 5e-5
    assert FTHyperParams.for_model("gpt2-xl", constrained=False).layer == 1
    gptj_ft, gptj_ftl = (FTHyperParams.for_model("EleutherAI/gpt-j-6B", c) for c in (False, True))
    assert (gptj_ft.layer, gptj_ftl.layer, gptj_ftl.norm_constraint) == (21, 0, 5e-5)
    for name, eps in (("gpt2-medium", 2e-3), ("gpt2-large", 1e-3)):  # hparams/FT/<name>_constr.json
        ftl = FTHyperParams.for_model(name, constrained=True)
        assert (ftl.layer, ftl.num_steps, ftl.lr, ftl.norm_constraint) == (0, 25, 5e-4, eps)
    assert FTHyperParams.for_model("toy", constrained=False).layer == ROMEHyperParams.for_model("toy").layer
    with pytest.raises(ValueError, match="placeholder"):
        apply_ft(tiny_gpt2, {**REQUEST, "prompt": "Michael Jordan plays"}, HP)
    with pytest.raises(ValueError, match="empty"):
        apply_ft(tiny_gpt2, {**REQUEST, "target_new": {"str": ""}}, HP)
    assert active_edits(tiny_gpt2) == []
