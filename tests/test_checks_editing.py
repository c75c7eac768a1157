"""The editing checks pass the reference solutions and catch the usual mistakes with a specific hint.

Each wrong function below makes one classic mistake; its check must print "✗" and the hint that names
it (a check that cannot fail would teach nothing). The reference functions are those of
solutions/02_editing_exercises.ipynb."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from rome_lib import checks
from rome_lib.checks import editing as ce
from rome_lib.evaluation import object_probs
from rome_lib.hooks import trace
from rome_lib.rome import fill, weight_as_out_in

from .check_helpers import mt, verdict  # noqa: F401 - mt is a fixture

torch.set_num_threads(1)


def span(mt, text, a, b):
    offsets = mt.tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    hits = [i for i, (x, y) in enumerate(offsets) if y > x and x < b and y > a]
    return hits[0], hits[-1]


# ---- exercise 1: k* ---------------------------------------------------------------------------
def compute_k(mt, prompt, subject, layer, templates, *, at="last", module="out", reduce="mean"):
    name = mt.layout.mlp_out_at(layer) if module == "out" else mt.layout.mlp_in_at(layer)
    keys = []
    for template in templates:
        text, a, b = fill(template, prompt, subject)
        first, last = span(mt, text, a, b)
        ids = mt.tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad(), trace(mt.model, name, retain_input=True) as rec:
            mt.model(ids)
        x = rec[name].input if module == "out" else rec[name].output
        keys.append(x[0, {"last": last, "first": first, "end": -1}[at]])
    keys = torch.stack(keys)
    return {"mean": keys.mean(0), "sum": keys.sum(0), "none": keys}[reduce]


@pytest.mark.parametrize("kwargs, hint", [
    (dict(at="first"), "*first* subject token"),
    (dict(at="end"), "last token of the prompt"),
    (dict(module="in"), "*before* the nonlinearity"),
    (dict(reduce="none"), "one key per template"),
    (dict(reduce="sum"), "summed the keys"),
])
def test_check_compute_k(mt, capsys, kwargs, hint):
    assert verdict(capsys, checks.check_compute_k, compute_k, mt) == (True, ce.PASSED + "\n")
    ok, out = verdict(capsys, checks.check_compute_k, lambda *a: compute_k(*a, **kwargs), mt)
    assert not ok and hint in out, out


def test_check_compute_k_bare_prompt_only(mt, capsys):
    ok, out = verdict(capsys, checks.check_compute_k, lambda m, p, s, l, t: compute_k(m, p, s, l, t[:1]), mt)
    assert not ok and "only the bare prompt" in out, out


# ---- exercise 2: the v* loss ------------------------------------------------------------------
def v_loss(mt, prompt, subject, target, layer, delta, templates, kl_factor=0.0625, *, space=True,
           kl="paper", everywhere=False):
    target = " " + target.strip() if space else target.strip()
    tgt = mt.tokenizer(target, add_special_tokens=False)["input_ids"]
    name = mt.layout.mlp_out_at(layer)

    def add_at(last):
        """The hook adding δ at token ``last`` (or, the mistake, at every token)."""
        def add(out, _):
            out = out.clone()
            if everywhere:
                return out + delta
            out[0, last] = out[0, last] + delta
            return out
        return add

    nlls = []
    for template in templates:
        text, a, b = fill(template, prompt, subject)
        ids = mt.tokenizer(text)["input_ids"]
        _, last = span(mt, text, a, b)
        with trace(mt.model, name, edit_output=add_at(last), detach=False):
            logits = mt.model(torch.tensor([ids + tgt])).logits[0]
        logp = torch.log_softmax(logits[len(ids) - 1:len(ids) - 1 + len(tgt)], -1)
        nlls.append(-logp[torch.arange(len(tgt)), torch.tensor(tgt)].mean())
    text, a, b = fill("{}", "{} is a", subject)
    _, last = span(mt, text, a, b)
    ids = torch.tensor([mt.tokenizer(text)["input_ids"]])
    with torch.no_grad():
        orig = torch.log_softmax(mt.model(ids).logits[0, last], -1)
    with trace(mt.model, name, edit_output=add_at(last), detach=False):
        edit = torch.log_softmax(mt.model(ids).logits[0, last], -1)
    if kl == "paper":  # eq. 4: KL(P_edit ‖ P_orig); F.kl_div(input, target) is KL(target ‖ input)
        div = F.kl_div(orig, edit, log_target=True, reduction="sum")
    elif kl == "reverse":  # KL(P_orig ‖ P_edit)
        div = F.kl_div(edit, orig, log_target=True, reduction="sum")
    else:
        div = torch.zeros(())
    return torch.stack(nlls).mean() + kl_factor * div


@pytest.mark.parametrize("kwargs, hint", [
    (dict(space=False), "no leading space"),
    (dict(kl="reverse"), "KL is the wrong way round"),
    (dict(kl="none"), "KL term is missing"),
    (dict(everywhere=True), "added δ at every position"),
])
def test_check_v_loss(mt, capsys, kwargs, hint):
    assert verdict(capsys, checks.check_v_loss, v_loss, mt) == (True, ce.PASSED + "\n")
    ok, out = verdict(capsys, checks.check_v_loss, lambda *a, **k: v_loss(*a, **k, **kwargs), mt)
    assert not ok and hint in out, out


def test_check_v_loss_detached(mt, capsys):
    ok, out = verdict(capsys, checks.check_v_loss, lambda *a, **k: v_loss(*a, **k).detach(), mt)
    assert not ok and "no gradient reaches delta" in out, out


def test_reference_v_loss_matches_compute_v_at_the_start(mt):
    """The check's reference is compute_v's loss: at δ = 0 it is compute_v's first NLL."""
    from rome_lib.hparams import ROMEHyperParams
    from rome_lib.rome import compute_v

    record = ce._records(mt)[0]
    rw = record["requested_rewrite"]
    layer = ce._layer(mt)
    hp = ROMEHyperParams(layer=layer, v_num_grad_steps=1, mom2_adjustment=False)
    _, _, info = compute_v(mt, rw, hp, ce.TEMPLATES)
    zero = torch.zeros(mt.model.config.n_embd)
    ref = ce.v_loss_reference(mt, rw["prompt"], rw["subject"], rw["target_new"]["str"], layer, zero,
                              ce.TEMPLATES)
    assert ref.item() == pytest.approx(info["history"][0]["nll"], rel=1e-4)


# ---- exercise 3: the rank-one update ----------------------------------------------------------
def rank_one(weight, bias, k, v, cov, transposed, *, sign=1, inverse=True, transpose=True):
    W = weight.T if transposed and transpose else weight
    u = torch.linalg.solve(cov, k) if inverse else k
    lam = sign * (v - (W @ k + bias)) / (u @ k)
    new = W + torch.outer(lam, u)
    return new.T if transposed and transpose else new


@pytest.mark.parametrize("kwargs, hint", [
    (dict(sign=-1), "Wrong sign in Λ"),
    (dict(inverse=False), "forgot C⁻¹"),
])
def test_check_rank_one_update(capsys, kwargs, hint):
    assert verdict(capsys, checks.check_rank_one_update, rank_one) == (True, ce.PASSED + "\n")
    ok, out = verdict(capsys, checks.check_rank_one_update, lambda *a: rank_one(*a, **kwargs))
    assert not ok and hint in out, out


def test_check_rank_one_update_catches_the_conv1d_transpose(capsys):
    def no_transpose(weight, bias, k, v, cov, transposed):  # treats the stored weight as [out, in]
        if transposed and weight.shape[0] != weight.shape[1]:
            W = weight.T  # shapes force a transpose here ...
            u = torch.linalg.solve(cov, k)
            return W + torch.outer((v - W @ k - bias) / (u @ k), u)  # ... but it is never undone
        return rank_one(weight, bias, k, v, cov, False)

    ok, out = verdict(capsys, checks.check_rank_one_update, no_transpose)
    assert not ok and "transposed=True the stored weight is Wᵀ" in out, out

    def square_mistake(weight, bias, k, v, cov, transposed):
        if weight.shape[0] == weight.shape[1]:
            return rank_one(weight, bias, k, v, cov, False)
        return rank_one(weight, bias, k, v, cov, transposed)

    ok, out = verdict(capsys, checks.check_rank_one_update, square_mistake)
    assert not ok and "Conv1D transpose" in out, out


def test_check_rank_one_update_in_place(capsys):
    def in_place(weight, bias, k, v, cov, transposed):
        new = rank_one(weight, bias, k, v, cov, transposed)
        weight.copy_(new)
        return weight

    ok, out = verdict(capsys, checks.check_rank_one_update, in_place)
    assert not ok and "in place" in out, out


# ---- exercises 4 and 5: efficacy and neighbourhood --------------------------------------------
def p_of(mt, prompts, obj, space=True):
    obj = " " + obj.strip() if space else obj.strip()
    return object_probs(mt, prompts, [obj] * len(prompts))


def efficacy(mt, record, *, flip=False, space=True):
    rw = record["requested_rewrite"]
    prompt = [rw["prompt"].format(rw["subject"])]
    new, true = p_of(mt, prompt, rw["target_new"]["str"], space), p_of(mt, prompt, rw["target_true"]["str"], space)
    return float((true > new) if flip else (new > true))


def neighborhood(mt, record, *, flip=False, space=True):
    rw = record["requested_rewrite"]
    prompts = record["neighborhood_prompts"]
    new, true = p_of(mt, prompts, rw["target_new"]["str"], space), p_of(mt, prompts, rw["target_true"]["str"], space)
    return ((new > true) if flip else (true > new)).float().mean().item()


def test_check_efficacy(mt, capsys):
    assert verdict(capsys, checks.check_efficacy, efficacy, mt) == (True, ce.PASSED + "\n")
    ok, out = verdict(capsys, checks.check_efficacy, lambda m, r: efficacy(m, r, flip=True), mt)
    assert not ok and "Wrong way round" in out and "P[new] > P[true]" in out, out
    ok, out = verdict(capsys, checks.check_efficacy, lambda m, r: 100 * efficacy(m, r), mt)
    assert not ok and "not a percentage" in out, out


def test_check_neighborhood(mt, capsys):
    assert verdict(capsys, checks.check_neighborhood, neighborhood, mt) == (True, ce.PASSED + "\n")
    ok, out = verdict(capsys, checks.check_neighborhood, lambda m, r: neighborhood(m, r, flip=True), mt)
    assert not ok and "Wrong way round" in out and "P[true] > P[new]" in out, out


def test_score_checks_leave_the_model_unchanged(mt, capsys):
    before = {n: p.detach().clone() for n, p in mt.model.named_parameters()}
    checks.check_efficacy(efficacy, mt)
    capsys.readouterr()
    assert all(torch.equal(before[n], p) for n, p in mt.model.named_parameters())


# ---- exercise 6: undo -------------------------------------------------------------------------
def edit_weight(module, new_weight):
    original = module.weight.detach().clone()
    with torch.no_grad():
        module.weight.copy_(new_weight)

    def undo():
        with torch.no_grad():
            module.weight.copy_(original)

    return undo


def test_check_undo(capsys):
    assert verdict(capsys, checks.check_undo, edit_weight) == (True, ce.PASSED + "\n")

    def no_copy(module, new_weight):
        original = module.weight.data  # a view of the same storage, overwritten below
        with torch.no_grad():
            module.weight.copy_(new_weight)
        return lambda: module.weight.data.copy_(original)

    ok, out = verdict(capsys, checks.check_undo, no_copy)
    assert not ok and "Save a copy first" in out, out

    def replaces(module, new_weight):
        original = module.weight
        module.weight = torch.nn.Parameter(new_weight)
        return lambda: setattr(module, "weight", original)

    ok, out = verdict(capsys, checks.check_undo, replaces)
    assert not ok and "replaced the Parameter object" in out, out

    def subtracts(module, new_weight):
        delta = new_weight - module.weight.detach()
        with torch.no_grad():
            module.weight.add_(delta)
        return lambda: module.weight.data.sub_(delta)

    ok, out = verdict(capsys, checks.check_undo, subtracts)
    assert not ok and ("bit for bit" in out or ce.PASSED in out), out


def test_checks_are_reexported():
    for name in ("check_compute_k", "check_v_loss", "check_rank_one_update", "check_efficacy",
                 "check_neighborhood", "check_undo"):
        assert getattr(checks, name) is getattr(ce, name)
