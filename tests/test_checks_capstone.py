"""The capstone's check passes rome_lib's own ROME, names the usual mistakes, and never fails in its
own code nor leaves the model changed, whatever the learner's function does."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from rome_lib import checks
from rome_lib.checks import capstone as cc
from rome_lib.checks.verdict import PASSED
from rome_lib.hooks import get_module
from rome_lib.hooks import hook_modules
from rome_lib.rome import apply_rome, fill

from .check_helpers import mt, verdict  # noqa: F401 - mt is a fixture

torch.set_num_threads(1)


def library_edit(mt, request, hparams, templates, cov, **changes):
    """rome_lib's ROME (with ``changes`` to its settings), returned as the new weight."""
    with apply_rome(mt, request, replace(hparams, **changes), cov=cov, templates=templates) as edit:
        (param,) = edit.parameters().values()
        return param.detach().clone()


def looped_edit_reversed_kl(mt, request, hp, templates, cov):
    """A learner's ROME written row by row (as solutions/05_capstone_rome.ipynb), with one mistake:
    KL(P_orig ‖ P_edit) in the v* loss."""
    name = mt.layout.mlp_out_at(hp.layer)
    tgt = mt.tokenizer(" " + request["target_new"]["str"].strip(), add_special_tokens=False)["input_ids"]

    def run(template, prompt, extra, delta):
        text, a, b = fill(template, prompt, request["subject"])
        offsets = mt.tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
        last = [i for i, (x, y) in enumerate(offsets) if y > x and x < b and y > a][-1]
        ids = torch.tensor([mt.tokenizer(text)["input_ids"] + extra])

        def add(out, _):
            out = out.clone()
            out[0, last] += delta
            return out

        with hook_modules(mt.model, name, retain_input=True, edit_output=add, detach=False) as rec:
            logits = mt.model(ids).logits[0].float()
        return logits, rec[name].input[0, last].detach().float(), ids.shape[1] - len(extra), last

    zero = torch.zeros(mt.model.config.n_embd)
    k_bar = torch.stack([run(t, request["prompt"], [], zero)[1] for t in templates]).mean(0)
    module = get_module(mt.model, name)
    W = module.weight.detach().float().T if mt.layout.out_weight_transposed else module.weight.detach().float()
    m0 = W @ k_bar + module.bias.detach().float()
    with torch.no_grad():
        orig, _, _, kl_at = run("{}", hp.kl_prompt, [], zero)
    delta = torch.zeros_like(m0, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=hp.v_lr)
    for step in range(hp.v_num_grad_steps):
        nll = []
        for t in templates:
            logits, _, n, _ = run(t, request["prompt"], tgt, delta)
            logp = torch.log_softmax(logits[n - 1 : n - 1 + len(tgt)], -1)
            nll.append(-logp[torch.arange(len(tgt)), torch.tensor(tgt)].mean())
        edit, _, _, _ = run("{}", hp.kl_prompt, [], delta)
        kl = F.kl_div(torch.log_softmax(edit[kl_at], -1), torch.log_softmax(orig[kl_at], -1),
                      log_target=True, reduction="sum")  # the mistake: KL(P_orig ‖ P_edit)
        loss = torch.stack(nll).mean() + hp.kl_factor * kl + hp.v_weight_decay * delta.norm() / m0.norm() ** 2
        if loss.item() < hp.early_stop_loss or step == hp.v_num_grad_steps - 1:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            delta.mul_(min(1.0, (hp.clamp_norm_factor * m0.norm() / delta.norm()).item()))
    u = torch.linalg.solve(cov.double(), k_bar.double())
    lam = ((m0 + delta).detach().double() - W.double() @ k_bar.double() - module.bias.double()) / (u @ k_bar.double())
    new = W + torch.outer(lam, u).float()
    return new.T if mt.layout.out_weight_transposed else new


def test_rome_libs_own_edit_passes(mt, capsys):
    assert verdict(capsys, checks.check_capstone, library_edit, mt) == (True, PASSED + "\n")
    official = lambda *a: library_edit(*a, update="official")  # noqa: E731 - the official code's form
    assert verdict(capsys, checks.check_capstone, official, mt)[0]


@pytest.mark.parametrize("changes, hint", [
    (dict(mom2_adjustment=False), "C = I"),
    (dict(kl_factor=0.0), "no KL term"),
    (dict(v_num_grad_steps=21), "one Adam step more"),
])
def test_library_edit_with_a_mistake_fails_with_its_hint(mt, capsys, changes, hint):
    ok, out = verdict(capsys, checks.check_capstone, lambda *a: library_edit(*a, **changes), mt)
    assert not ok and hint in out, out


def test_missing_context_prefixes_are_named(mt, capsys):
    bare = lambda m, r, h, t, c: library_edit(m, r, h, ["{}"], c)  # noqa: E731
    ok, out = verdict(capsys, checks.check_capstone, bare, mt)
    assert not ok and "bare prompt only" in out, out


def test_reversed_kl_of_a_looped_implementation_is_named(mt, capsys):
    ok, out = verdict(capsys, checks.check_capstone, looped_edit_reversed_kl, mt)
    assert not ok and "KL is the wrong way round" in out, out


def _weight(mt):
    return get_module(mt.model, mt.layout.mlp_out_at(cc.ROMEHyperParams.for_model("toy").layer)).weight


@pytest.mark.parametrize("returned, hint", [
    (lambda w: None, "as one tensor"),
    (lambda w: "weight", "as one tensor"),
    (lambda w: w.flatten(), "as one tensor"),
    (lambda w: w[:-1], "Shape"),
    (lambda w: w.T, "layout"),
    (lambda w: torch.full_like(w, float("nan")), "NaN"),
    (lambda w: w.clone(), "unchanged"),
    (lambda w: w.tolist(), "unchanged"),
])
def test_garbage_gets_a_hint_and_leaves_the_model_alone(mt, capsys, returned, hint):
    before = _weight(mt).detach().clone()
    ok, out = verdict(capsys, checks.check_capstone, lambda m, *a: returned(_weight(m).detach()), mt)
    assert not ok and hint in out, out
    assert torch.equal(_weight(mt), before)


def test_update_alone_is_named(mt, capsys):
    ok, out = verdict(capsys, checks.check_capstone,
                      lambda m, *a: library_edit(m, *a) - _weight(m).detach(), mt)
    assert not ok and "update ΔW" in out, out


def test_an_error_in_the_learners_function_is_theirs_and_the_model_is_restored(mt, capsys):
    before = _weight(mt).detach().clone()

    def half_done(m, *a):
        with torch.no_grad():
            _weight(m).add_(1.0)  # writes into the model, then fails
        raise ValueError("my bug")

    with pytest.raises(ValueError, match="my bug"):
        checks.check_capstone(half_done, mt)
    assert checks.last_result().error == "ValueError" and not checks.last_result().passed
    assert torch.equal(_weight(mt), before)


def test_an_edit_in_place_or_a_hook_left_behind_is_undone_and_named(mt, capsys):
    before = _weight(mt).detach().clone()

    def in_place(m, *a):
        new = library_edit(m, *a)
        with torch.no_grad():
            _weight(m).copy_(new)
        return new

    ok, out = verdict(capsys, checks.check_capstone, in_place, mt)
    assert not ok and "leave the model" in out and torch.equal(_weight(mt), before), out
    leaked = lambda m, *a: (m.model.register_forward_hook(lambda *x: None), _weight(m).detach())[1]  # noqa: E731
    ok, out = verdict(capsys, checks.check_capstone, leaked, mt)
    assert not ok and "1 hook(s)" in out, out
    assert not any(mod._forward_hooks for mod in mt.model.modules())
