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
from rome_lib.checks.verdict import PASSED
from rome_lib.evaluation import object_probs
from rome_lib.hooks import hook_modules
from rome_lib.rome import fill

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
        with torch.no_grad(), hook_modules(mt.model, name, retain_input=True) as rec:
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
    assert verdict(capsys, checks.check_compute_k, compute_k, mt) == (True, PASSED + "\n")
    ok, out = verdict(capsys, checks.check_compute_k, lambda *a: compute_k(*a, **kwargs), mt)
    assert not ok and hint in out, out


def test_check_compute_k_bare_prompt_only(mt, capsys):
    ok, out = verdict(capsys, checks.check_compute_k, lambda m, p, s, l, t: compute_k(m, p, s, l, t[:1]), mt)
    assert not ok and "only the bare prompt" in out, out


# ---- exercise 2: the v* loss ------------------------------------------------------------------
def v_loss(mt, prompt, subject, target, layer, delta, templates, kl_factor=0.0625, *, space=True,
           kl="paper", everywhere=False, reduce="mean", per_template=False):
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
        with hook_modules(mt.model, name, edit_output=add_at(last), detach=False):
            logits = mt.model(torch.tensor([ids + tgt])).logits[0]
        logp = torch.log_softmax(logits[len(ids) - 1:len(ids) - 1 + len(tgt)], -1)
        picked = logp[torch.arange(len(tgt)), torch.tensor(tgt)]
        nlls.append(-{"mean": picked.mean(), "sum": picked.sum(), "first": picked[0]}[reduce])
    text, a, b = fill("{}", "{} is a", subject)
    _, last = span(mt, text, a, b)
    ids = torch.tensor([mt.tokenizer(text)["input_ids"]])
    with torch.no_grad():
        orig = torch.log_softmax(mt.model(ids).logits[0, last], -1)
    with hook_modules(mt.model, name, edit_output=add_at(last), detach=False):
        edit = torch.log_softmax(mt.model(ids).logits[0, last], -1)
    if kl == "paper":  # eq. 4: KL(P_edit ‖ P_orig); F.kl_div(input, target) is KL(target ‖ input)
        div = F.kl_div(orig, edit, log_target=True, reduction="sum")
    elif kl == "reverse":  # KL(P_orig ‖ P_edit)
        div = F.kl_div(edit, orig, log_target=True, reduction="sum")
    else:
        div = torch.zeros(())
    if per_template:  # mistake: one loss per template
        return torch.stack(nlls) + kl_factor * div
    return torch.stack(nlls).mean() + kl_factor * div


def test_v_loss_case_has_a_multi_token_target(mt):
    from rome_lib.rome import target_ids
    assert len(target_ids(mt, " " + ce._target(ce.case_records(mt)[0]))) >= 3


@pytest.mark.parametrize("kwargs, hint", [
    (dict(reduce="sum"), "summed the token log-probabilities"),
    (dict(reduce="first"), "only the target's first token"),
    (dict(per_template=True), "one value per template"),
    (dict(space=False), "no leading space"),
    (dict(kl="reverse"), "KL is the wrong way round"),
    (dict(kl="none"), "KL term is missing"),
    (dict(everywhere=True), "added δ at every position"),
])
def test_check_v_loss(mt, capsys, kwargs, hint):
    assert verdict(capsys, checks.check_v_loss, v_loss, mt) == (True, PASSED + "\n")
    ok, out = verdict(capsys, checks.check_v_loss, lambda *a, **k: v_loss(*a, **k, **kwargs), mt)
    assert not ok and hint in out, out


def test_check_v_loss_detached(mt, capsys):
    ok, out = verdict(capsys, checks.check_v_loss, lambda *a, **k: v_loss(*a, **k).detach(), mt)
    assert not ok and "no gradient reaches delta" in out, out


def test_reference_v_loss_matches_compute_v_at_the_start(mt):
    """The check's reference is compute_v's loss: at δ = 0 it is compute_v's first NLL."""
    from rome_lib.hparams import ROMEHyperParams
    from rome_lib.rome import compute_v

    record = ce.case_records(mt)[0]
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
    assert verdict(capsys, checks.check_rank_one_update, rank_one) == (True, PASSED + "\n")
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
def p_of(mt, prompts, obj, space=True, how="mean"):
    """P[obj | prompt]: the reference (mean token NLL) and the usual mistakes."""
    obj = " " + obj.strip() if space else obj.strip()
    tokens = mt.tokenizer(obj, add_special_tokens=False)["input_ids"]
    if how == "first":
        obj = mt.tokenizer.decode(tokens[:1])
    p = object_probs(mt, prompts, [obj] * len(prompts))
    return p ** len(tokens) if how == "product" else p


def p_by_hand(mt, prompts, obj):
    """Correct, written out: teacher-force ' ' + obj, mean of its tokens' log-probs, exp."""
    tgt = mt.tokenizer(" " + obj.strip(), add_special_tokens=False)["input_ids"]
    out = []
    for prompt in prompts:
        ids = mt.tokenizer(prompt)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(mt.model(torch.tensor([ids + tgt])).logits[0].float(), -1)
        out.append(logp[torch.arange(len(ids) - 1, len(ids) - 1 + len(tgt)), torch.tensor(tgt)].mean().exp())
    return torch.stack(out)


def score(mt, record, group_, *, group=None, flip=False, space=True, how="mean", compare="wins"):
    rw = record["requested_rewrite"]
    on = group or group_  # the mistake: another group's prompts
    prompts = ([rw["prompt"].format(rw["subject"])] if on == "rewrite" else record[f"{on}_prompts"])
    keep_true = (group_ == "neighborhood") != flip
    win, lose = (rw["target_true"], rw["target_new"]) if keep_true else (rw["target_new"], rw["target_true"])
    if compare == "top1":
        first = mt.tokenizer(" " + win["str"].strip(), add_special_tokens=False)["input_ids"][0]
        hits = [int(mt.model(torch.tensor([mt.tokenizer(p)["input_ids"]])).logits[0, -1].argmax()) == first
                for p in prompts]
        return sum(hits) / len(hits)
    if how == "hand":
        pw, pl = p_by_hand(mt, prompts, win["str"]), p_by_hand(mt, prompts, lose["str"])
    else:
        pw, pl = p_of(mt, prompts, win["str"], space, how), p_of(mt, prompts, lose["str"], space, how)
    return ((pw - pl) if compare == "margin" else (pw > pl).float()).mean().item()


def efficacy(mt, record, **mistake):
    return score(mt, record, "rewrite", **mistake)


def neighborhood(mt, record, **mistake):
    return score(mt, record, "neighborhood", **mistake)


MISTAKES = [
    (dict(flip=True), "Wrong way round"),
    (dict(how="product"), "summed the token log-probabilities"),
    (dict(how="first"), "only the object's first token"),
    (dict(space=False), "no leading space"),
    (dict(compare="margin"), "margin"),
    (dict(compare="top1"), "top-1 accuracy"),
    (dict(group="paraphrase"), "You scored the paraphrase prompts"),
]


@pytest.mark.parametrize("mistake, hint", MISTAKES)
@pytest.mark.parametrize("check, fn", [(checks.check_efficacy, efficacy),
                                       (checks.check_neighborhood, neighborhood)])
def test_score_checks_name_each_mistake(mt, capsys, check, fn, mistake, hint):
    ok, out = verdict(capsys, check, lambda m, r: fn(m, r, **mistake), mt)
    assert not ok and hint in out, out


@pytest.mark.parametrize("check, fn", [(checks.check_efficacy, efficacy),
                                       (checks.check_neighborhood, neighborhood)])
def test_score_checks_accept_correct_variants(mt, capsys, check, fn):
    assert verdict(capsys, check, fn, mt) == (True, PASSED + "\n")
    assert verdict(capsys, check, lambda m, r: fn(m, r, how="hand"), mt)[0]  # written out by hand
    assert verdict(capsys, check, lambda m, r: torch.tensor(fn(m, r)), mt)[0]  # a 0-d tensor


def test_score_cases_are_graded_and_multi_token(mt):
    from rome_lib.rome import target_ids
    cases = ce._score_cases(mt, "neighborhood")
    values = []
    for case in cases:
        values.append(case.scores[None])
    assert any(0 < v < 1 for v in values), values  # NS is a fraction, not only 0 or 1
    objects = [c.record["requested_rewrite"][k]["str"] for c in cases for k in ("target_new", "target_true")]
    assert any(len(target_ids(mt, " " + o)) > 1 for o in objects)


def test_check_efficacy_percentage(mt, capsys):
    ok, out = verdict(capsys, checks.check_efficacy, lambda m, r: 100 * efficacy(m, r), mt)
    assert not ok and "not a percentage" in out, out


@pytest.mark.parametrize("returned", [None, "one", [1.0, 0.0], torch.ones(3)])
def test_score_checks_never_raise(mt, capsys, returned):
    ok, out = verdict(capsys, checks.check_neighborhood, lambda m, r: returned, mt)
    assert not ok and "Return one number" in out, out


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
    assert verdict(capsys, checks.check_undo, edit_weight) == (True, PASSED + "\n")

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
    assert not ok and ("bit for bit" in out or PASSED in out), out


def test_checks_are_reexported():
    for name in ("check_compute_k", "check_v_loss", "check_rank_one_update", "check_efficacy",
                 "check_neighborhood", "check_undo"):
        assert getattr(checks, name) is getattr(ce, name)
