"""Checks for the editing exercises (``exercises/02_editing_exercises.ipynb``).

Each ``check_xxx(fn)`` runs the learner's ``fn`` against the rome_lib reference on small inputs and
prints ``✓ passed`` or a *specific* hint naming the most likely mistake: the first subject token
instead of the last, a key read at the wrong module, a target without its leading space, δ added at
every position, the KL the wrong way round, GPT-2's ``Conv1D`` weight not transposed, the wrong sign
in Λ, C⁻¹ forgotten, probabilities compared the wrong way round, a weight "saved" without a copy, ...

Like the tracing checks, a check prints its verdict and returns None; errors raised by the learner's
function (``NotImplementedError`` included) propagate unchanged. The model: the ``mt`` argument, else
``load_model(os.environ.get("ROME_CHECK_MODEL", "toy"))`` on the CPU, loaded once.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import weakref
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..evaluation import object_probs, record_metrics, score_record
from ..hooks import hook_modules
from ..hparams import ROMEHyperParams
from ..models import LoadedModel
from ..rome import (
    Edit, apply_rome, compute_k, fill, rank_one_update, target_ids, v_loss, v_problem,
    weight_as_out_in,
)
from ..tokens import token_span, top_next_token
from ..tracing import encode, find_subject_range, known_facts
from .common import as_float as _as_float, counterfact_records, check_model as _model, n_tokens as _n_tokens, show as _show
from .verdict import failed as _failed, passed as _passed, verdict as _verdict

# Few, short context templates keep the checks fast; the bare prompt comes first, as in ROME.
TEMPLATES = ["{}", "It was late in the evening. {}", "Here is a fact. {}"]
KL_PROMPT = "{} is a"
KL_FACTOR = 0.0625

# A record in the official CounterFact format, for models without a set beside their weights.
GENERIC_RECORD = {
    "case_id": 0,
    "requested_rewrite": {
        "prompt": "The mother tongue of {} is", "relation_id": "P103", "subject": "Danielle Darrieux",
        "target_new": {"str": "English", "id": "Q1860"}, "target_true": {"str": "French", "id": "Q150"},
    },
    "paraphrase_prompts": ["Danielle Darrieux's native language is"],
    "neighborhood_prompts": ["The mother tongue of Léon Blum is", "The native language of Montesquieu is",
                             "François Bayrou, a native", "The mother tongue of Raymond Barre is"],
    "generation_prompts": ["Danielle Darrieux's mother tongue is"],
}


# ----------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------
def _layer(mt: LoadedModel) -> int:
    try:
        return ROMEHyperParams.for_model(mt.name, mt.n_layer).layer
    except KeyError:
        return mt.n_layer // 3


def _key_cases(mt: LoadedModel) -> list[tuple[str, str]]:
    """(prompt template with {}, subject): multi-token subjects, one opening the prompt and one
    after other words, so first ≠ last subject token and the last token ≠ the last subject token."""
    out = []
    for at_start in (True, False):
        for f in known_facts(mt):
            template, subject = f.get("template"), f["subject"]
            if not template or "{}" not in template:
                continue
            b, e = find_subject_range(mt.tokenizer, template.format(subject), subject)
            if e - b >= 2 and template.startswith("{}") == at_start and not template.endswith("{}"):
                out.append((template, subject))
                break
    if len(out) < 2:
        out = [("{} is located in the city of", "The Space Needle"),
               ("The mother tongue of {} is", "Danielle Darrieux")]
    return out


def _objects(mt: LoadedModel, record: dict) -> list[str]:
    """Every object of ``record``'s relation in the model's set, in a fixed order."""
    relation = record["requested_rewrite"].get("relation_id")
    found = {r["requested_rewrite"][k]["str"] for r in counterfact_records(mt) for k in ("target_new", "target_true")
             if r["requested_rewrite"].get("relation_id") == relation}
    return sorted(found)


def case_records(mt: LoadedModel) -> list[dict]:
    """Three CounterFact records of the model's own set, else a generic one. The first has a
    multi-token new object: one of the set's where it has them, else (the toy's objects are all one
    token) the first record's new object joined with another object of its relation by " and ", so
    that scoring only the first token, or summing token log-probs, changes the answers."""
    records = counterfact_records(mt)
    if not records:
        return [GENERIC_RECORD]
    multi = [r for r in records if len(target_ids(mt, " " + _target(r))) > 1]
    if multi:
        return (multi[:1] + [r for r in records if r is not multi[0]])[:3]
    rw = records[0]["requested_rewrite"]
    other = next(o for o in _objects(mt, records[0]) if o not in (_target(records[0]), rw["target_true"]["str"]))
    return [_with_objects(records[0], new=f"{_target(records[0])} and {other}")] + records[1:3]


def _swapped(record: dict) -> dict:
    """The record with its new and true objects exchanged (its 'new' object is what the model says)."""
    out = copy.deepcopy(record)
    rw = out["requested_rewrite"]
    rw["target_new"], rw["target_true"] = rw["target_true"], rw["target_new"]
    return out


def _target(record: dict) -> str:
    return record["requested_rewrite"]["target_new"]["str"]


def _close(a: float, b: float, tol: float = 2e-5) -> bool:
    return abs(a - b) <= tol * (1 + abs(b))


# ----------------------------------------------------------------------------------------------
# Exercise 1: k*, the mean key at the last subject token
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def _keys_at(mt: LoadedModel, prompt: str, subject: str, layer: int, templates: Sequence[str],
             where: str, module: str = "out") -> torch.Tensor:
    """Keys [N, d] per template at ``where`` (first/last subject token, last token); ``module``
    "out" = input of the output projection (the key), "in" = output of the input projection (before
    the nonlinearity), "value" = output of the output projection."""
    name = mt.layout.mlp_in_at(layer) if module == "in" else mt.layout.mlp_out_at(layer)
    rows = []
    for template in templates:
        text, a, b = fill(template, prompt, subject)
        ids = mt.tokenizer(text, return_tensors="pt")["input_ids"].to(mt.device)
        _, first, last = token_span(mt.tokenizer, text, a, b)
        pos = {"first": first, "last": last, "end": ids.shape[1] - 1}[where]
        with hook_modules(mt.model, name, retain_input=(module == "out")) as rec:
            mt.model(ids)
        x = rec[name].input if module == "out" else rec[name].output
        rows.append(x[0, pos].float())
    return torch.stack(rows)


@_verdict
def check_compute_k(fn: Callable, mt: LoadedModel | None = None) -> bool:
    """``fn(mt, prompt, subject, layer, templates) -> tensor [d_in]``: k* = the mean over the
    templates of the key (the *input* of ``layout.mlp_out_at(layer)``) at the subject's last token of
    ``template.format(prompt.format(subject))``... i.e. ``fill(template, prompt, subject)``."""
    mt = _model(mt)
    layer = _layer(mt)
    for prompt, subject in _key_cases(mt):
        want = compute_k(mt, {"prompt": prompt, "subject": subject}, layer, TEMPLATES).cpu()
        raw = fn(mt, prompt, subject, layer, list(TEMPLATES))
        try:
            got = torch.as_tensor(raw).detach().float().cpu()
        except (TypeError, ValueError, RuntimeError):
            return _failed(f"Return one tensor of shape [{want.shape[0]}] (the mean key), not "
                           f"{type(raw).__name__}.")
        where = f"for prompt {prompt!r} and subject {subject!r}"
        if got.shape != want.shape:
            if got.shape == (len(TEMPLATES), want.shape[0]):
                return _failed(f"You returned one key per template, shape {tuple(got.shape)}: k* is "
                               "their *mean* over the templates (.mean(0)).")
            if got.dim() == 1 and got.shape[0] == mt.model.config.n_embd != want.shape[0]:
                return _failed(f"Shape {tuple(got.shape)} is the model width: you read the MLP's "
                               f"*output* (the value). The key is the *input* of "
                               f"{mt.layout.mlp_out_at(layer)!r}: hook it with hook_modules(..., "
                               "retain_input=True) and read rec[name].input.")
            return _failed(f"Shape {tuple(got.shape)}, expected {tuple(want.shape)} (the key width, "
                           f"the input of {mt.layout.mlp_out_at(layer)!r}).")
        tol = 1e-4 * (1 + want.abs().max().item())
        if torch.allclose(got, want, atol=tol):
            continue
        variants = [
            (_keys_at(mt, prompt, subject, layer, TEMPLATES, "first").mean(0),
             f"You read the key at the *first* subject token {where}. ROME reads it at the subject's "
             "*last* token: that is where causal tracing found the MLP effect, and the only subject "
             "token that has seen the whole subject."),
            (_keys_at(mt, prompt, subject, layer, TEMPLATES, "end").mean(0),
             f"You read the key at the last token of the prompt {where}. The key is at the subject's "
             "last token (the early site), not where the next token is predicted."),
            (_keys_at(mt, prompt, subject, layer, TEMPLATES, "last", "in").mean(0),
             f"You read the output of {mt.layout.mlp_in_at(layer)!r}, *before* the nonlinearity. The "
             f"key is the input of the output projection {mt.layout.mlp_out_at(layer)!r} (after "
             "GELU): hook that module with hook_modules(..., retain_input=True)."),
            (_keys_at(mt, prompt, subject, layer, TEMPLATES[:1], "last").mean(0),
             f"You used only the bare prompt {where}. Average the key over *all* the templates "
             "(each fill(template, prompt, subject)): k* is a mean over contexts."),
            (_keys_at(mt, prompt, subject, layer, TEMPLATES, "last").sum(0),
             f"You summed the keys over the templates {where}; take their mean."),
        ]
        for variant, hint in variants:
            if torch.allclose(got, variant.cpu(), atol=tol):
                return _failed(hint)
        for other in (layer - 1, layer + 1):
            if 0 <= other < mt.n_layer and torch.allclose(
                    got, compute_k(mt, {"prompt": prompt, "subject": subject}, other, TEMPLATES).cpu(),
                    atol=tol):
                return _failed(f"You read the key at layer {other}, not layer {layer} "
                               f"(mt.layout.mlp_out_at(layer)).")
        return _failed(f"k* differs from the reference {where} (max difference "
                       f"{(got - want).abs().max():.4g}). Fill each template with "
                       "fill(template, prompt, subject), find the subject's last token from character "
                       "offsets, read the input of mt.layout.mlp_out_at(layer) there, and average.")
    return _passed()


# ----------------------------------------------------------------------------------------------
# Exercise 2: the loss that v* minimises
# ----------------------------------------------------------------------------------------------
def _v_loss_variant(mt: LoadedModel, prompt: str, subject: str, target: str, layer: int,
                    delta: torch.Tensor, templates: Sequence[str], *, kl_factor: float = KL_FACTOR,
                    space: bool = True, where: str = "last", reduce: str = "mean", kl: str = "paper",
                    kl_at: str = "subject", shift: int = 0) -> torch.Tensor:
    """:func:`rome_lib.rome.v_loss` with one usual mistake (one changed argument each; all defaults
    = the reference). Differentiable in ``delta``."""
    obj = (" " + target.lstrip()) if space else target.lstrip()
    tgt = target_ids(mt, obj)
    problem = v_problem(mt, prompt, subject, tgt, templates, KL_PROMPT)
    spans = [fill(t, prompt, subject) for t in templates] + [fill("{}", KL_PROMPT, subject)]
    ends = [_n_tokens(mt, text) - 1 for text, _, _ in spans]
    if where != "last":  # δ added elsewhere than at the subject's last token
        at = torch.ones_like(problem.delta_at) if where == "all" else torch.zeros_like(problem.delta_at)
        if where != "all":
            pos = ends if where == "end" else [token_span(mt.tokenizer, *span)[1] for span in spans]
            at[torch.arange(len(spans)), torch.tensor(pos)] = 1.0
        problem = replace(problem, delta_at=at)
    if shift:
        problem = replace(problem, target_pos=problem.target_pos + shift)
    if kl_at == "end":  # the KL read at the last token of the KL prompt: its P_orig there too
        problem = replace(problem, kl_at=ends[-1])
        with torch.no_grad():
            orig = v_loss(mt, problem, layer, torch.zeros_like(delta), 0.0).kl_log_probs
        problem = replace(problem, kl_init=orig)
    if reduce == "first":  # only the target's first token scored
        problem = replace(problem, target_pos=problem.target_pos[:, :1], target_ids=problem.target_ids[:1])
    terms = v_loss(mt, problem, layer, delta, kl_factor)
    nll = terms.nll_each.mean() * (len(tgt) if reduce == "sum" else 1)
    if kl == "none":
        return nll
    if kl == "reverse":  # KL(P_orig ‖ P_edit)
        return nll + kl_factor * F.kl_div(terms.kl_log_probs, problem.kl_init, log_target=True,
                                          reduction="sum")
    return nll + kl_factor * terms.kl


def v_loss_reference(mt: LoadedModel, prompt: str, subject: str, target: str, layer: int,
                     delta: torch.Tensor, templates: Sequence[str],
                     kl_factor: float = KL_FACTOR) -> torch.Tensor:
    """Mean teacher-forced NLL of " target" over the templates + kl_factor · KL(P_edit ‖ P_orig) at
    the subject's last token of "{s} is a", with ``delta`` added to the MLP output at the subject's
    last token of every row: :func:`rome_lib.rome.v_loss`, the loss :func:`rome_lib.rome.compute_v`
    minimises (without its weight decay)."""
    tgt = target_ids(mt, " " + target.lstrip())
    problem = v_problem(mt, prompt, subject, tgt, templates, KL_PROMPT)
    return v_loss(mt, problem, layer, delta, kl_factor).total


def _delta(mt: LoadedModel, layer: int, prompt: str, subject: str, scale: float = 0.5) -> torch.Tensor:
    """A fixed random δ, ``scale`` × the norm of the value at the subject, so the KL term matters."""
    g = torch.Generator().manual_seed(0)
    d = torch.randn(mt.model.config.n_embd, generator=g)
    v = _keys_at(mt, prompt, subject, layer, ["{}"], "last", "value")[0]
    return (d / d.norm() * scale * v.norm().cpu()).to(mt.device)


def _grad_of(fn: Callable, delta: torch.Tensor):
    """``fn(delta)`` on a fresh leaf copy of ``delta``, and the gradient (None if there is none)."""
    d = delta.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = fn(d)
        if not isinstance(loss, torch.Tensor) or not loss.requires_grad or loss.numel() != 1:
            return loss, None
        loss.backward()
    return loss, d.grad


@_verdict
def check_v_loss(fn: Callable, mt: LoadedModel | None = None) -> bool:
    """``fn(mt, prompt, subject, target, layer, delta, templates, kl_factor=0.0625) -> scalar tensor``
    (differentiable in ``delta``): the mean NLL of " target" teacher-forced after each filled template,
    with ``delta`` added to the MLP output at the subject's last token, + kl_factor · KL(P_edit ‖
    P_orig) at the subject's last token of "{subject} is a" (paper eq. 4; the official code's
    ``F.kl_div(kl_distr_init, kl_log_probs, log_target=True)``)."""
    mt = _model(mt)
    layer = _layer(mt)
    record = case_records(mt)[0]
    rw = record["requested_rewrite"]
    prompt, subject, target = rw["prompt"], rw["subject"], _target(record)
    args = (mt, prompt, subject, target, layer)
    # δ = 0 with the paper's kl_factor, then a large random δ with kl_factor 1 so the KL term counts
    for scale, kl_factor in ((0.0, KL_FACTOR), (2.0, 1.0)):
        delta = _delta(mt, layer, prompt, subject, scale) if scale else torch.zeros(
            mt.model.config.n_embd, device=mt.device)
        want, want_grad = _grad_of(
            lambda d: v_loss_reference(*args, d, list(TEMPLATES), kl_factor=kl_factor), delta)
        raw, grad = _grad_of(lambda d: fn(*args, d, list(TEMPLATES), kl_factor=kl_factor), delta)
        got = _as_float(raw)
        if got is None:
            per_template = isinstance(raw, torch.Tensor) and raw.numel() == len(TEMPLATES)
            return _failed(f"Return the loss as one scalar tensor, not {_show(raw)}" + (
                ": one value per template? Take their mean." if per_template else "."))
        if scale and _close(got, want.item()):
            if grad is None:
                return _failed("The value is right but no gradient reaches delta: keep the forward pass "
                               "with δ out of torch.no_grad(), hook with detach=False, and don't call "
                               ".item() or .detach() on the loss.")
            if not torch.allclose(grad, want_grad, atol=1e-4 * (1 + want_grad.abs().max().item())):
                return _failed("The value is right but its gradient differs: compute the original "
                               "distribution for the KL term without δ (under torch.no_grad()), and "
                               "everything else with δ.")
            continue
        if _close(got, want.item()):
            continue
        what = f"(target {target!r}, δ {'= 0' if not scale else 'random'}, kl_factor {kl_factor})"
        variants = [
            (dict(space=False), f"Your target has no leading space {what}. In running text an object "
             f"follows a space, and the tokenizer has different tokens for ' {target.strip()}' and "
             f"'{target.strip()}': tokenize ' ' + target (rome_lib.rome.normalize_request does this)."),
            (dict(reduce="sum"), f"You summed the token log-probabilities of the target {what}; take "
             "their *mean* over the target's tokens, then the mean over templates, so objects of "
             "different lengths are comparable."),
            (dict(reduce="first"), f"You scored only the target's first token {what}; teacher-force "
             "all of its tokens and take the mean of their log-probabilities."),
            (dict(shift=1), f"Off by one {what}: the logits at position i predict token i + 1, so the "
             "target's first token is read at the prompt's *last* position, len(prompt_ids) − 1."),
            (dict(kl="none"), f"The KL term is missing {what}: add kl_factor · KL(P_edit ‖ P_orig) at "
             f"the subject's last token of {KL_PROMPT!r}."),
            (dict(kl="reverse"), f"Your KL is the wrong way round {what}: the paper's eq. 4 is "
             "KL(P_edit ‖ P_orig) = Σ P_edit (log P_edit − log P_orig), the edited distribution "
             "first. F.kl_div(input, target, log_target=True) computes KL(target ‖ input), so write "
             "F.kl_div(orig_log_probs, edit_log_probs, log_target=True, reduction='sum')."),
            (dict(kl_at="end"), f"You read the KL at the last token of {KL_PROMPT!r} {what}; the paper "
             "reads it at the subject's last token (where δ is added), to keep the subject's essence."),
            (dict(where="all"), f"You added δ at every position {what}. Add it only at the subject's "
             "last token of each row: that is the one value ROME rewrites."),
            (dict(where="end"), f"You added δ at the last token of the prompt {what}; add it at the "
             "subject's *last* token (where the key k* is read)."),
            (dict(where="first"), f"You added δ at the *first* subject token {what}; add it at the "
             "subject's last token."),
        ]
        for kwargs, hint in variants:
            variant = _v_loss_variant(*args, delta, list(TEMPLATES), kl_factor=kl_factor, **kwargs).item()
            if _close(got, variant):
                return _failed(hint)
        only_bare = _v_loss_variant(*args, delta, TEMPLATES[:1], kl_factor=kl_factor).item()
        if _close(got, only_bare):
            return _failed(f"You used only the bare prompt {what}: average the NLL over all the "
                           "templates, each filled with fill(template, prompt, subject).")
        return _failed(f"Loss {got:.5f}, expected {want.item():.5f} {what}. NLL: mean over templates "
                       "of the mean over target tokens of −log P, teacher-forced; KL at the subject's "
                       f"last token of {KL_PROMPT!r}, δ added at the subject's last token of every row.")
    return _passed()


# ----------------------------------------------------------------------------------------------
# Exercise 3: the rank-one update
# ----------------------------------------------------------------------------------------------
def _update_case(d_in: int, d_out: int, transposed: bool, seed: int):
    """Random weight (stored as Conv1D [in, out] when ``transposed``), bias, an anisotropic C."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d_out, d_in, generator=g) / d_in ** 0.5
    weight = W.T.contiguous() if transposed else W
    bias = torch.randn(d_out, generator=g) * 0.1
    A = torch.randn(d_in, d_in, generator=g) * torch.logspace(0, -1.5, d_in)
    cov = A @ A.T / d_in + 1e-3 * torch.eye(d_in)
    k = torch.randn(d_in, generator=g)
    v = torch.randn(d_out, generator=g)
    return weight, bias, k, v, cov


def _update_variant(weight, bias, k, v, cov, transposed, *, sign=1, use_cov="inv", with_bias=True,
                    denom="uk", transpose_back=True) -> torch.Tensor:
    W = weight_as_out_in(weight, transposed).double()
    k64, v64, b64, c64 = k.double(), v.double(), bias.double(), cov.double()
    u = {"inv": torch.linalg.solve(c64, k64), "none": k64, "cov": c64 @ k64}[use_cov]
    out = W @ k64 + (b64 if with_bias else 0)
    lam = sign * (v64 - out) / {"uk": u @ k64, "kk": k64 @ k64, "uu": u @ u}[denom]
    new = W + torch.outer(lam, u)
    return (new.T if transposed and transpose_back else new).float()


@_verdict
def check_rank_one_update(fn: Callable, mt: LoadedModel | None = None) -> bool:
    """``fn(weight, bias, k_star, v_star, cov, transposed) -> new weight`` in the layout of
    ``weight`` (``transposed``: GPT-2's Conv1D stores [in, out]) with Ŵ k* + b = v*:
    Ŵ = W + Λ (C⁻¹k*)ᵀ, Λ = (v* − (W k* + b)) / ((C⁻¹k*)ᵀ k*)."""
    for d_in, d_out, transposed, seed in ((12, 6, True, 0), (12, 6, False, 1), (8, 8, True, 2)):
        weight, bias, k, v, cov = _update_case(d_in, d_out, transposed, seed)
        ref = rank_one_update(weight, transposed, k, v - (weight_as_out_in(weight, transposed) @ k + bias),
                              cov)
        want = weight + ref
        given = weight.clone()
        raw = fn(given, bias.clone(), k.clone(), v.clone(), cov.clone(), transposed)
        layout = "Conv1D, stored [in, out]" if transposed else "Linear, stored [out, in]"
        where = f"(weight {tuple(weight.shape)}, {layout})"
        try:
            got = torch.as_tensor(raw).detach().float()
        except (TypeError, ValueError, RuntimeError):
            return _failed(f"Return the new weight as a tensor, not {type(raw).__name__}.")
        if got.shape != want.shape:
            if got.shape == want.T.shape:
                return _failed(f"Your weight has shape {tuple(got.shape)}, expected {tuple(want.shape)} "
                               f"{where}: with transposed=True the stored weight is Wᵀ. Work with "
                               "W = weight.T ([out, in]) and return Ŵ.T in the stored layout.")
            return _failed(f"Shape {tuple(got.shape)}, expected {tuple(want.shape)} {where}: return the "
                           "whole new weight (W + ΔW), in the layout it is stored in.")
        tol = 1e-4 * (1 + want.abs().max().item())
        if torch.allclose(got, want, atol=tol):
            if not torch.equal(given, weight):
                return _failed("The result is right, but you changed the weight you were given in place. "
                               "Return a new tensor: the caller (and undo) needs the original.")
            continue
        if torch.allclose(got, weight, atol=1e-7):
            return _failed(f"You returned the weight unchanged {where}: add the update Λ uᵀ.")
        variants = [
            (dict(sign=-1), "Wrong sign in Λ: it is Λ = (v* − W k* − b) / (uᵀk*), the change that "
             "takes the current output W k* + b to v*, not the other way round."),
            (dict(use_cov="none"), "You forgot C⁻¹: u = C⁻¹k* (torch.linalg.solve(cov, k_star)), not k*. "
             "With u = k* the update also moves every key that shares k*'s common directions."),
            (dict(use_cov="cov"), "You multiplied by C instead of solving with it: u = C⁻¹k*, "
             "torch.linalg.solve(cov, k_star) (not cov @ k_star)."),
            (dict(with_bias=False), "You left out the bias: the current output at k* is W k* + b, so "
             "Λ = (v* − W k* − b) / (uᵀk*). (v* is the whole MLP output, bias included.)"),
            (dict(denom="kk"), "Wrong denominator: divide by uᵀk* = (C⁻¹k*)ᵀk*, not k*ᵀk*; then "
             "Ŵ k* = W k* + Λ (uᵀk*) = v* exactly."),
            (dict(denom="uu"), "Wrong denominator: divide by uᵀk* = (C⁻¹k*)ᵀk*, not uᵀu."),
        ]
        for kwargs, hint in variants:
            if torch.allclose(got, _update_variant(weight, bias, k, v, cov, transposed, **kwargs), atol=tol):
                return _failed(hint + f" {where}")
        if transposed and d_in == d_out:
            if torch.allclose(got, _update_variant(weight.T, bias, k, v, cov, transposed), atol=tol) or \
                    torch.allclose(got, _update_variant(weight, bias, k, v, cov, False), atol=tol) or \
                    torch.allclose(got, _update_variant(weight, bias, k, v, cov, transposed,
                                                         transpose_back=False), atol=tol):
                return _failed(f"Conv1D transpose {where}: the stored weight is [in, out] = Wᵀ, so "
                               "W k* is weight.T @ k_star, and the update must be added as (Λ uᵀ)ᵀ = "
                               "u Λᵀ. This square case hides the mistake from the shapes.")
        W_new = weight_as_out_in(got, transposed)
        residual = (W_new @ k + bias - v).norm() / v.norm()
        return _failed(f"Ŵ differs from the reference {where}; Ŵ k* + b − v* has relative size "
                       f"{residual:.3g} (it should be ~0). Ŵ = W + Λ uᵀ with u = C⁻¹k*, "
                       "Λ = (v* − W k* − b) / (uᵀk*).")
    return _passed()


# ----------------------------------------------------------------------------------------------
# Exercises 4 and 5: efficacy and neighbourhood scores of one record
# ----------------------------------------------------------------------------------------------
GROUP_PROMPTS = {"rewrite": "the rewrite prompt", "paraphrase": "the paraphrase prompts",
                 "neighborhood": "the neighbourhood prompts"}


def _first_token(mt: LoadedModel, obj: str) -> str:
    return mt.tokenizer.decode(target_ids(mt, obj)[:1])


def _group(record: dict, group: str) -> list[str]:
    rw = record["requested_rewrite"]
    return {"rewrite": [rw["prompt"].format(rw["subject"])],
            "paraphrase": list(record.get("paraphrase_prompts", [])),
            "neighborhood": list(record.get("neighborhood_prompts", []))}[group]


def _probs(mt: LoadedModel, prompts: list[str], obj: str, how: str = "mean") -> torch.Tensor:
    """P[obj | prompt] for each prompt: exp(−mean NLL) ("mean"), the product of token probabilities
    ("product", the same order as summed log-probs), without the leading space ("nospace"), or the
    first token only ("first")."""
    obj = " " + obj.strip()
    if how == "nospace":
        return object_probs(mt, prompts, [obj.strip()] * len(prompts))
    if how == "first":
        return object_probs(mt, prompts, [_first_token(mt, obj)] * len(prompts))
    p = object_probs(mt, prompts, [obj] * len(prompts))
    if how == "product":
        return p ** len(target_ids(mt, obj))
    return p


@torch.no_grad()
def _top1(mt: LoadedModel, prompts: list[str], obj: str) -> torch.Tensor:
    """Whether the most likely next token after each prompt is ``obj``'s first token."""
    first = target_ids(mt, " " + obj.strip())[0]
    return torch.tensor([float(top_next_token(mt, p) == first) for p in prompts])


def _score_variant(mt: LoadedModel, record: dict, group: str, *, how: str = "mean",
                   compare: str = "wins", flip: bool = False, on: str | None = None) -> float | None:
    """A score of ``record`` on ``group``'s prompts: the reference (defaults) -- the fraction where
    the new object beats the true one (rewrite, paraphrase) or the true beats the new (neighborhood)
    -- and the usual mistakes: another ``how`` of P[o | p] (see :func:`_probs`), the margin instead
    of the fraction (``compare="margin"``), top-1 accuracy instead of a comparison (``"top1"``), or
    the comparison the wrong way round (``flip``), or the prompts of another group (``on``; None
    when the record has none)."""
    rw = record["requested_rewrite"]
    prompts = _group(record, on or group)
    if not prompts:
        return None
    keep_true = (group == "neighborhood") != flip  # which object should win
    winner, loser = ((rw["target_true"], rw["target_new"]) if keep_true else
                     (rw["target_new"], rw["target_true"]))
    if compare == "top1":
        return _top1(mt, prompts, winner["str"]).mean().item()
    win, lose = _probs(mt, prompts, winner["str"], how), _probs(mt, prompts, loser["str"], how)
    return ((win - lose) if compare == "margin" else (win > lose).float()).mean().item()


_MISTAKES = {  # (variant arguments, hint); {name} is the score's name, {group} its prompts
    "flip": (dict(flip=True), "Wrong way round: {rule}"),
    "product": (dict(how="product"), "You summed the token log-probabilities of a multi-token object "
                "(or multiplied its token probabilities); ROME's metrics use exp(−mean token NLL), so "
                "long objects are not penalised for their length."),
    "first": (dict(how="first"), "You scored only the object's first token; teacher-force all of its "
              "tokens and use exp(−mean NLL) (objects can be several tokens)."),
    "nospace": (dict(how="nospace"), "Your objects have no leading space: score ' ' + object, the way "
                "the object follows the prompt in running text."),
    "margin": (dict(compare="margin"), "You returned the mean probability margin (P[winner] − P[loser], "
               "the paper's 'magnitude' metric); the {name} is the *fraction* of prompts on which the "
               "comparison holds."),
    "top1": (dict(compare="top1"), "You measured top-1 accuracy (is the object's first token the most "
             "likely next token?). The {name} only compares the two objects' probabilities: the new "
             "object can win without being the model's first choice."),
}
for _other in GROUP_PROMPTS:
    _MISTAKES[f"on {_other}"] = (dict(on=_other), f"You scored {GROUP_PROMPTS[_other]}; the {{name}} "
                                 "uses {prompts}.")
_RULES = {"rewrite": "ES counts P[new] > P[true] (the edit worked), not P[true] > P[new].",
          "neighborhood": "the neighbourhood prompts are about *other* subjects, which should keep "
                          "their true object. NS counts prompts where P[true] > P[new] (an edit that "
                          "leaks to neighbours lowers it)."}


def _with_objects(record: dict, new: str | None = None, true: str | None = None) -> dict:
    out = copy.deepcopy(record)
    rw = out["requested_rewrite"]
    for key, value in (("target_new", new), ("target_true", true)):
        if value is not None:
            rw[key] = {"str": value, "id": f"check:{value}"}
    return out


def _word(mt: LoadedModel, token_id: int) -> str | None:
    """The word a token spells after a space (" fan" -> "fan"), else None."""
    text = mt.tokenizer.decode([token_id])
    return text[1:] if text.startswith(" ") and text[1:].isalpha() else None


@torch.no_grad()
def _designed_records(mt: LoadedModel, record: dict) -> list[dict]:
    """Records built from ``record`` (its subject, its prompts) so that each way of scoring wrongly
    changes the answer. On a prompt of the record whose next-token distribution allows it, with A
    the model's most likely next word:

    - new object "A t" (t a word after A), true object a less likely word X, with
      P[A]·P[t | A] < P[X] < √(P[A]·P[t | A]): "A t" wins by its mean token NLL and loses by the
      sum of log-probs (or the product of probabilities);
    - new object A, true object "A t": a tie on the first token alone;
    - new object X, true object a still less likely word: X wins although neither is the model's
      first choice (a comparison, not top-1 accuracy)."""
    subject = record["requested_rewrite"]["subject"]
    texts = [record["requested_rewrite"]["prompt"].format(subject)] + [
        t for t in record.get("generation_prompts", []) + record.get("paraphrase_prompts", [])
        if subject in t]
    for text in texts:
        ids = encode(mt, text)
        logp = torch.log_softmax(mt.model(ids, logits_to_keep=1).logits[0, -1].float(), -1)
        ranked = [i for i in logp.argsort(descending=True)[:200].tolist() if _word(mt, i)]
        if len(ranked) < 3:
            continue
        a_id, la = ranked[0], float(logp[ranked[0]])
        after = torch.log_softmax(mt.model(torch.cat([ids, ids.new_tensor([[a_id]])], 1),
                                           logits_to_keep=1).logits[0, -1].float(), -1)
        for x_id in ranked[1:20]:
            lx = float(logp[x_id])
            fits = ((after > 2 * lx - la) & (after < lx - la)).nonzero().flatten().tolist()
            answer, x = _word(mt, a_id), _word(mt, x_id)
            for t_id in sorted(fits, key=lambda i: abs(float(after[i]) - (1.5 * lx - la))):
                new = f"{answer} {_word(mt, t_id)}" if _word(mt, t_id) else None
                if new and target_ids(mt, " " + new) == [a_id, t_id]:
                    lower = _word(mt, ranked[ranked.index(x_id) + 1])
                    base = copy.deepcopy(record)
                    base["requested_rewrite"]["prompt"] = text.replace(subject, "{}", 1)
                    return [_with_objects(base, new=new, true=x), _with_objects(base, new=answer, true=new),
                            _with_objects(base, new=x, true=lower)]
    return []


class EditedModel:
    """A quick ROME edit (C = I, three templates) of ``record`` for the length of a ``with`` block,
    so that scores are checked on an edited model too. The edited weights are computed once per
    model and record, then copied in (as an :class:`~rome_lib.rome.Edit`, so undo is exact)."""

    # model -> {request: (layer, weights)}, held weakly: the entries go with the model.
    _weights: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __init__(self, mt: LoadedModel, record: dict):
        self.mt, self.record = mt, record

    def __enter__(self):
        import warnings

        request = self.record["requested_rewrite"]
        cache, key = self._weights.setdefault(self.mt.model, {}), json.dumps(request, sort_keys=True)
        if key in cache:
            layer, weights = cache[key]
            self.edit = Edit.begin(self.mt, "rome", request, layer, list(weights))
            with torch.no_grad():
                for name, param in self.edit.parameters().items():
                    param.copy_(weights[name])
            return self
        hp = ROMEHyperParams(layer=_layer(self.mt), mom2_adjustment=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.edit = apply_rome(self.mt, request, hp, templates=TEMPLATES)
        cache[key] = (self.edit.layer, {n: p.detach().clone()
                                                for n, p in self.edit.parameters().items()})
        return self

    def __exit__(self, *exc):
        self.edit.undo()


@dataclass
class _ScoreCase:
    """A record, whether it is scored after a ROME edit, and every answer's score on it (None: the
    reference, else a key of :data:`_MISTAKES`)."""

    record: dict
    edited: bool
    scores: dict


_SCORE_CASES: dict[tuple[int, str], list[_ScoreCase]] = {}
_METRIC = {"rewrite": "ES", "paraphrase": "PS", "neighborhood": "NS"}


def _score_cases(mt: LoadedModel, group: str) -> list[_ScoreCase]:
    """Cases on which every mistake of :data:`_MISTAKES` changes the ``group`` score of at least one
    record, and any two mistakes differ on at least one record: the first record unedited, swapped
    and edited with ROME (its new object has several tokens), the designed records of
    :func:`_designed_records`, then further records of the set while answers remain that no case
    tells apart. Cached per
    model, with every answer's score, so that a check only runs the learner's function."""
    key = (id(mt), group)
    if key not in _SCORE_CASES:
        records = case_records(mt)
        pool = [(records[0], False), (_swapped(records[0]), False), (records[0], True)]
        pool += [(r, False) for r in _designed_records(mt, records[0])]
        pool += [(r, False) for r in records[1:] + counterfact_records(mt)[3:20]]
        answers = [None, *(m for m in _MISTAKES if m != f"on {group}")]
        chosen, missing = [], set(itertools.combinations(answers, 2))
        for record, edited in pool:
            if not missing and len(chosen) >= 3:
                break
            with (EditedModel(mt, record) if edited else contextlib.nullcontext()):
                scores = {m: _score_variant(mt, record, group, **_MISTAKES[m][0]) for m in answers[1:]}
                scores[None] = record_metrics(score_record(mt, record))[_METRIC[group]]  # the library's
            apart = {(a, b) for a, b in missing if scores[a] is None or scores[b] is None
                     or not _close(scores[a], scores[b], 1e-6)}
            if apart or len(chosen) < 3:
                chosen.append(_ScoreCase(record, edited, scores))
                missing -= apart
        _SCORE_CASES[key] = chosen
    return _SCORE_CASES[key]


def _check_score(fn: Callable, mt: LoadedModel, group: str, name: str) -> bool:
    """Score every case with ``fn``; on a mismatch, name the mistake that reproduces *all* of the
    learner's answers (two mistakes can agree on one record, never on all of the cases)."""
    cases, got = _score_cases(mt, group), []
    for case in cases:
        with (EditedModel(mt, case.record) if case.edited else contextlib.nullcontext()):
            raw = fn(mt, case.record)
        value = _as_float(raw)
        if value is None:
            return _failed(f"Return one number, the {name} of the record (a fraction in [0, 1]), "
                           f"not {_show(raw)}.")
        got.append(value)
    want = [case.scores[None] for case in cases]
    if all(_close(g, w, 1e-6) for g, w in zip(got, want)):
        return _passed()
    i = next(i for i, (g, w) in enumerate(zip(got, want)) if not _close(g, w, 1e-6))
    rw = cases[i].record["requested_rewrite"]
    what = (f"(e.g. subject {rw['subject']!r}, new {rw['target_new']['str']!r}, true "
            f"{rw['target_true']['str']!r}{', after a ROME edit' if cases[i].edited else ''}: "
            f"expected {want[i]:.4g}, got {got[i]:.4g})")
    if all(_close(g, 100 * w, 1e-6) for g, w in zip(got, want)):
        return _failed(f"Return a fraction in [0, 1], not a percentage {what}.")
    hints = [_MISTAKES[m][1].format(name=name, rule=_RULES.get(group, ""), prompts=GROUP_PROMPTS[group])
             for m in _MISTAKES if m in cases[0].scores and all(
                 c.scores[m] is not None and _close(g, c.scores[m], 1e-6) for g, c in zip(got, cases))]
    if len(hints) == 1:
        return _failed(f"{hints[0]} {what}")
    if hints:  # the model's cases cannot tell these apart: name each
        return _failed(f"Your answers fit {len(hints)} mistakes {what}: " +
                       " Or: ".join(f"({i}) {h}" for i, h in enumerate(hints, 1)))
    return _failed(f"{name} differs from the reference {what}. P[o | p] = exp(−mean NLL) of "
                   "' ' + o teacher-forced after p; compare with a strict '>', and average over "
                   f"{GROUP_PROMPTS[group]}.")


@_verdict
def check_efficacy(fn: Callable, mt: LoadedModel | None = None) -> bool:
    """``fn(mt, record) -> float``: the efficacy score of one CounterFact record, 1.0 when
    P[new object] > P[true object] on the rewrite prompt, else 0.0."""
    return _check_score(fn, _model(mt), "rewrite", "efficacy score")


@_verdict
def check_neighborhood(fn: Callable, mt: LoadedModel | None = None) -> bool:
    """``fn(mt, record) -> float``: the neighbourhood score of one record, the fraction of its
    neighbourhood prompts on which P[true object] > P[new object]."""
    return _check_score(fn, _model(mt), "neighborhood", "neighbourhood score")


# ----------------------------------------------------------------------------------------------
# Exercise 6: an edit that can be undone bit for bit
# ----------------------------------------------------------------------------------------------
@_verdict
def check_undo(fn: Callable, mt: LoadedModel | None = None) -> bool:
    """``fn(module, new_weight) -> undo``: write ``new_weight`` into ``module.weight`` in place and
    return a function that restores the original weight bit for bit."""
    g = torch.Generator().manual_seed(0)
    module = torch.nn.Linear(6, 4)
    param = module.weight
    original = param.detach().clone()
    new = torch.randn(4, 6, generator=g)
    undo = fn(module, new.clone())
    if module.weight is not param:
        return _failed("You replaced the Parameter object (module.weight = ...). Write into the existing "
                       "one with torch.no_grad(): module.weight.copy_(new_weight) — other code (the "
                       "optimizer, tied embeddings, hooks) holds a reference to it.")
    if not torch.allclose(module.weight.detach(), new, atol=1e-6):
        if torch.equal(module.weight.detach(), original):
            return _failed("The weight did not change: copy new_weight into module.weight "
                           "(module.weight.copy_(new_weight) under torch.no_grad()).")
        return _failed("After your edit the weight is not new_weight.")
    if not callable(undo):
        return _failed(f"Return a function that undoes the edit, not {type(undo).__name__}.")
    undo()
    if torch.equal(module.weight.detach(), new):
        return _failed("undo() left the new weight in place: the 'original' you saved was the parameter "
                       "itself (or its .data), which the edit overwrote. Save a copy first: "
                       "original = module.weight.detach().clone().")
    if not torch.equal(module.weight.detach(), original):
        diff = (module.weight.detach() - original).abs().max().item()
        return _failed(f"undo() does not restore the weight bit for bit (max difference {diff:.3g}). "
                       "Subtracting the update again is not exact in floating point: save a copy of the "
                       "original and copy it back.")
    if module.weight is not param:
        return _failed("undo() replaced the Parameter object; copy the saved values back into it instead.")
    return _passed()


__all__ = ["check_compute_k", "check_v_loss", "check_rank_one_update", "check_efficacy",
           "check_neighborhood", "check_undo", "v_loss_reference", "TEMPLATES", "KL_PROMPT"]
