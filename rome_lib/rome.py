"""ROME: Rank-One Model Editing (paper §3).

To insert a new fact (s, r, o*) -- e.g. "Michael Jordan plays the sport of" → " soccer" -- rewrite
the output projection W of the MLP at layer l* so that the key of the subject maps to a new value:

1. **Context templates** (:func:`context_templates`): short prefixes sampled from the model itself
   (official: 10 of 4 generated tokens + 10 of 9, top-k 5 -- the official ``max_out_len`` 5 and 10
   count the ``<|endoftext|>`` the sampling starts from), each as "<prefix>. {}", plus the bare "{}".
2. **Keys** (:func:`keys_and_values`): the key (input of W) at the subject's last token of every
   template; k̄ is their mean (the paper's k*), k_bare the bare prompt's.
3. **v*** (:func:`compute_v`): the MLP output at that token that makes the model say o*: Adam on a
   δ added to W's output at the subject's last token of every template, minimising :func:`v_loss`
   (the mean teacher-forced NLL of o* + kl_factor · KL(P_edit ‖ P_orig) on "{s} is a", eq. 4) + a
   weight decay, with ‖δ‖ clamped.
4. **The update** (:func:`rank_one_update`): Ŵ = W + Λ uᵀ with u = C⁻¹k̄, C = E[k kᵀ] from
   :mod:`rome_lib.covariance` (or I when ``mom2_adjustment`` is off), and Λ = (v* − W k − b) / (uᵀk),
   so that Ŵ k = v* exactly for the key k below; any key k' with uᵀk' = 0 keeps its output.

**Which key in Λ** (``hparams.update``):

- ``"official"`` (the default; what the paper's released code computes): u from the averaged key
  k̄, but Λ from the *bare* rewrite prompt's key k_bare and output m_bare = W k_bare + b (the
  official ``cur_input``/``cur_output``), with v* = m_bare + δ and the weight decay and clamp scaled
  by ‖m_bare‖ (its ``target_init``, read at the bare prompt). The edited layer maps k_bare exactly
  to v*, while δ was optimised for every template: a template's key k_j gets the update scaled by
  uᵀk_j / uᵀk_bare.
- ``"consistent"`` (R-ROME, Gupta et al. 2024, who traced unstable edits to that asymmetry): k̄ in
  both places, v* = m̄ + δ with m̄ = W k̄ + b (= the mean of the templates' outputs, by linearity),
  and ‖m̄‖ in the decay and clamp, so Ŵ k̄ = v* exactly; the bare prompt is then served only as far
  as its key resembles k̄.

:func:`apply_rome` returns an :class:`Edit` that keeps the original weight and restores it bit for
bit with :meth:`Edit.undo`; edits on one model form a stack and must be undone in LIFO order.
"""

from __future__ import annotations

import unicodedata
import warnings
import weakref
from dataclasses import dataclass, replace
from typing import Sequence

import torch

from .covariance import layer_stats, sample_corpus
from .deltas import DeltaProblem, kl_edit_orig, optimize_deltas
from .edits import (  # noqa: F401  (re-exported: rome_lib.rome.Edit etc. keep working)
    Edit, EditOrderError, active_edits, normalize_request, target_ids, undo_all,
    warn_if_already_predicted,
)
from .hooks import get_module, hook_modules
from .hparams import EditHyperParams, ROMEHyperParams
from .models import LoadedModel
from .tokens import token_span


def _last_token_in(tokenizer, text: str, start: int, end: int) -> tuple[list[int], int]:
    """Token ids of ``text`` and the index of the last token overlapping characters [start, end)."""
    ids, _, last = token_span(tokenizer, text, start, end)
    return ids, last


def fill(template: str, prompt: str, subject: str) -> tuple[str, int, int]:
    """``template`` ("<prefix>. {}") around ``prompt`` ("{} plays ...") with the subject filled in;
    returns the text and the subject's character span."""
    i, j = template.index("{}"), prompt.index("{}")
    before = template[:i] + prompt[:j]
    text = before + subject + prompt[j + 2 :] + template[i + 2 :]
    return text, len(before), len(before) + len(subject)


# ----------------------------------------------------------------------------------------------
# Context templates
# ----------------------------------------------------------------------------------------------
# Caches keyed by the model object itself, held weakly: its entries go when the model does, so a model
# loaded later at the same address (same id()) never reads another model's templates or C.
_TEMPLATE_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def sample_prefixes(mt: LoadedModel, n: int, length: int, top_k: int, generator: torch.Generator,
                    start: str | None = None) -> list[str]:
    """``n`` texts sampled from the model (top-k): ``length`` tokens after its BOS/EOS token, or,
    given ``start``, texts that begin with ``start`` and have ``length`` tokens counting its own
    (official MEMIT's ``generate_fast(..., ["The", ...], max_out_len=10)``)."""
    if start is not None:
        length = max(0, length - len(mt.tokenizer(start)["input_ids"]))
    return sample_corpus(mt, n, length, top_k=top_k, generator=generator, batch_size=n, progress=False,
                         start=start)


def context_templates(
    mt: LoadedModel,
    lengths: Sequence[tuple[int, int]] = ((4, 10), (9, 10)),
    top_k: int = 5,
    seed: int = 0,
    starts: Sequence[str] = (),
) -> list[str]:
    """``["{}", "<prefix>. {}", ...]``: prefixes sampled from ``mt`` (seeded), cached per model.

    ``lengths`` lists (tokens, count) pairs. Without ``starts`` (ROME), the prefixes follow the
    model's BOS/EOS token. Official ROME: 10 of 4 tokens and 10 of 9 tokens, top-k 5 -- its
    ``generate_fast`` stops when the sequence, *including* the ``<|endoftext|>`` it starts from,
    reaches ``max_out_len`` 5 or 10. With ``starts`` (official MEMIT: "The", "Therefore",
    "Because", "I", "You"), each pair's count is split evenly over the start words and each prefix
    is the start word and what follows it, ``tokens`` long in all. As there, each prefix is
    NFKD-normalised with blank lines turned into spaces; braces become spaces so the template has
    one placeholder.
    """
    starts = tuple(starts)
    cache = _TEMPLATE_CACHE.setdefault(mt.model, {})
    key = (tuple(map(tuple, lengths)), top_k, seed, starts)
    if key not in cache:
        generator = torch.Generator().manual_seed(seed)
        templates = ["{}"]
        for length, count in lengths:
            if starts and count % len(starts):
                raise ValueError(f"{count} prefixes cannot be split evenly over {len(starts)} start words.")
            texts = ([t for s in starts for t in sample_prefixes(mt, count // len(starts), length, top_k,
                                                                  generator, start=s)]
                     if starts else sample_prefixes(mt, count, length, top_k, generator))
            for text in texts:
                text = unicodedata.normalize("NFKD", text).replace("\n\n", " ")
                templates.append(text.replace("{", " ").replace("}", " ") + ". {}")
        cache[key] = templates
    return list(cache[key])


def templates_for(mt: LoadedModel, hparams: EditHyperParams) -> list[str]:
    """:func:`context_templates` with the context settings of ``hparams`` (lengths, top-k, seed,
    start words): the templates an edit with these hyper-parameters uses."""
    return context_templates(mt, hparams.context_lengths, hparams.context_top_k, hparams.seed,
                             hparams.context_starts)


# ----------------------------------------------------------------------------------------------
# Keys, values and the optimisation of v*
# ----------------------------------------------------------------------------------------------
def subject_rows(mt: LoadedModel, prompt: str, subject: str,
                 templates: Sequence[str]) -> list[tuple[list[int], int]]:
    """For each template: the token ids of the filled text and the index of the subject's last token."""
    return [_last_token_in(mt.tokenizer, *fill(t, prompt, subject)) for t in templates]


def padded(mt: LoadedModel, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of token rows, right-padded, on the model's device."""
    width = max(map(len, rows))
    pad = mt.tokenizer.pad_token_id if mt.tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([list(r) + [pad] * (width - len(r)) for r in rows], device=mt.device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=mt.device)
    return input_ids, mask


@dataclass(frozen=True)
class VProblem:
    """The inputs of v*'s loss, tokenised once (:func:`v_problem`).

    Rows 0..n−1: the filled templates followed by the target's tokens (teacher forcing); the last
    row: the KL prompt. Right-padded.
    """

    input_ids: torch.Tensor  # [n+1, T]
    attention_mask: torch.Tensor  # [n+1, T]
    delta_at: torch.Tensor  # [n+1, T]: 1 where δ is added (the subject's last token of each row)
    target_pos: torch.Tensor  # [n, L]: positions whose next-token prediction is a target token
    target_ids: torch.Tensor  # [L]
    kl_at: int  # position in the last row where the KL is read (the subject's last token)
    kl_init: torch.Tensor  # [V]: log P_orig there, without δ


def v_problem(mt: LoadedModel, prompt: str, subject: str, tgt: Sequence[int], templates: Sequence[str],
              kl_prompt: str = "{} is a") -> VProblem:
    """Tokenise the rows of v*'s loss and read the original distribution at the KL position."""
    spans = [fill(t, prompt, subject) for t in templates] + [fill("{}", kl_prompt, subject)]
    rows, lookup, pos = [], [], []
    for r, (text, a, b) in enumerate(spans):
        ids, last = _last_token_in(mt.tokenizer, text, a, b)
        lookup.append(last)
        if r < len(templates):
            pos.append([len(ids) - 1 + i for i in range(len(tgt))])
            ids = ids + list(tgt)
        rows.append(ids)
    input_ids, mask = padded(mt, rows)
    dev = mt.device
    delta_at = torch.zeros(input_ids.shape, device=dev)
    delta_at[torch.arange(len(rows)), torch.tensor(lookup)] = 1.0
    problem = VProblem(input_ids, mask, delta_at,
                       torch.tensor(pos, device=dev, dtype=torch.long).reshape(len(templates), len(tgt)),
                       torch.tensor(list(tgt), device=dev), lookup[-1], torch.empty(0))
    with torch.no_grad():
        logits = mt.model(input_ids=problem.input_ids[-1:], attention_mask=mask[-1:]).logits
    return replace(problem, kl_init=torch.log_softmax(logits[0, problem.kl_at].float(), -1))


@dataclass
class VLoss:
    """v*'s loss without the weight decay, and its parts."""

    total: torch.Tensor  # nll_each.mean() + kl_factor · kl
    nll_each: torch.Tensor  # [n]: mean token NLL of the target after each template
    kl: torch.Tensor  # KL(P_edit ‖ P_orig) at the KL position
    kl_log_probs: torch.Tensor  # [V]: log P_edit there



def v_loss(mt: LoadedModel, problem: VProblem, layer: int, delta: torch.Tensor,
           kl_factor: float) -> VLoss:
    """The loss v* minimises (paper eq. 4, without the weight decay), differentiable in ``delta``:
    δ added to the output of ``layer``'s MLP at the subject's last token of every row; the mean over
    templates of the mean teacher-forced NLL of the target + kl_factor · KL(P_edit ‖ P_orig) at the
    subject's last token of the KL prompt ("essence drift")."""
    at = problem.delta_at[..., None]

    def add_delta(out, _name):
        return out + at.to(out.dtype) * delta.to(out.dtype)

    with hook_modules(mt.model, mt.layout.mlp_out_at(layer), retain_output=False, edit_output=add_delta,
               detach=False):
        logits = mt.model(input_ids=problem.input_ids, attention_mask=problem.attention_mask).logits
    n = problem.target_pos.shape[0]
    log_probs = torch.log_softmax(logits[:n].float(), -1)
    picked = log_probs[torch.arange(n, device=logits.device)[:, None], problem.target_pos,
                       problem.target_ids[None, :]]  # [n, L]
    nll_each = -picked.mean(1)
    kl_log = torch.log_softmax(logits[n, problem.kl_at].float(), -1)
    kl = kl_edit_orig(kl_log, problem.kl_init)
    return VLoss(nll_each.mean() + kl_factor * kl, nll_each, kl, kl_log)


@torch.no_grad()
def keys_and_values(mt: LoadedModel, prompt: str, subject: str, layer: int,
                    templates: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys (W's input) [N, d_in] and original values (W's output) [N, d_out] at the subject's
    last token of every template, in float32. k* = keys.mean(0)."""
    rows = subject_rows(mt, prompt, subject, templates)
    input_ids, mask = padded(mt, [ids for ids, _ in rows])
    lookup = torch.tensor([last for _, last in rows], device=mt.device)
    name = mt.layout.mlp_out_at(layer)
    with hook_modules(mt.model, name, retain_input=True) as rec:
        mt.model(input_ids=input_ids, attention_mask=mask, logits_to_keep=1)
    index = torch.arange(len(rows), device=mt.device)
    return rec[name].input[index, lookup].float(), rec[name].output[index, lookup].float()


def delta_problem(mt: LoadedModel, request: dict, templates: Sequence[str],
                  kl_prompt: str) -> DeltaProblem:
    """The rows of the v* (and MEMIT z) optimisation for one request: the prompt in every template,
    then ``kl_prompt`` ("{} is a"), with the subject's last token in each."""
    request = normalize_request(request)
    rows = subject_rows(mt, request["prompt"], request["subject"], templates)
    rows += subject_rows(mt, kl_prompt, request["subject"], ["{}"])
    return DeltaProblem([ids for ids, _ in rows], [last for _, last in rows],
                        target_ids(mt, request["target_new"]["str"]))


def compute_k(mt: LoadedModel, request: dict, layer: int, templates: Sequence[str]) -> torch.Tensor:
    """k̄ (the paper's k*) = mean over the templates of the key at the subject's last token
    (float32, [d_in])."""
    keys, _ = keys_and_values(mt, request["prompt"], request["subject"], layer, templates)
    return keys.mean(0)


def compute_v(mt: LoadedModel, request: dict, hparams: ROMEHyperParams,
              templates: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``(k, v*, info)``: v* = m + δ, δ optimised as in the paper (eq. 4), and the key k that the
    update must map exactly to v*.

    ``hparams.update`` "official": k = k_bare and m = m_bare, the bare prompt's key and MLP output;
    "consistent": k = k̄ and m = m̄ = W k̄ + b. Loss = :func:`v_loss` (mean template NLL +
    kl_factor · KL(P_edit ‖ P_orig)) + v_weight_decay · ‖δ‖ / ‖m‖²; after each Adam step ‖δ‖ is
    clamped to clamp_norm_factor · ‖m‖ -- the loop of :func:`rome_lib.deltas.optimize_deltas` (MEMIT's
    too) with a batch of one fact. ``info`` holds k̄ ("k_mean", from which u = C⁻¹k̄ is built
    in both forms), k_bare, the losses per step and the final probability of the target.
    """
    request = normalize_request(request)
    prompt, subject = request["prompt"], request["subject"]
    tgt = target_ids(mt, request["target_new"]["str"])
    keys, values = keys_and_values(mt, prompt, subject, hparams.layer, [*templates, "{}"])
    k_mean, m_mean = keys[:-1].mean(0), values[:-1].mean(0)  # m̄ = W k̄ + b by linearity
    k_bare, m_bare = keys[-1], values[-1]
    k_star, m0 = (k_bare, m_bare) if hparams.update == "official" else (k_mean, m_mean)

    problem = delta_problem(mt, request, templates, hparams.kl_prompt)
    deltas, (history,) = optimize_deltas(mt, [problem], mt.layout.mlp_out_at(hparams.layer), m0[None],
                                         hparams)
    delta = deltas[0]
    v_star = m0 + delta
    return k_star, v_star, {"history": history, "delta_norm": delta.norm().item(),
                            "m0_norm": m0.norm().item(), "target_ids": tgt, "k_mean": k_mean,
                            "k_bare": k_bare, "update": hparams.update}


# ----------------------------------------------------------------------------------------------
# The rank-one update (Conv1D and Linear in one place)
# ----------------------------------------------------------------------------------------------
def weight_as_out_in(weight: torch.Tensor, transposed: bool) -> torch.Tensor:
    """The weight as an [out, in] matrix (a view): Conv1D stores [in, out], Linear [out, in]."""
    return weight.T if transposed else weight


@torch.no_grad()
def project(module: torch.nn.Module, transposed: bool, k: torch.Tensor) -> torch.Tensor:
    """W k + b in float32 for the output projection ``module`` (Conv1D or Linear)."""
    w = weight_as_out_in(module.weight.detach().float(), transposed)
    out = w @ k.to(w.device).float()
    bias = getattr(module, "bias", None)
    return out + bias.float() if bias is not None else out


def inverse_cov_times(cov: torch.Tensor | None, k: torch.Tensor) -> torch.Tensor:
    """u = C⁻¹k in float64 (k itself when ``cov`` is None, i.e. C = I)."""
    k64 = k.detach().double().cpu()
    if cov is None:
        return k64
    c64 = cov.detach().double().cpu()
    try:
        return torch.linalg.solve(c64, k64)
    except RuntimeError:  # singular C (too few tokens in the corpus for the key width)
        warnings.warn("The key statistics C are singular (too little text?); using its "
                      "pseudo-inverse.", stacklevel=3)
        return torch.linalg.pinv(c64, hermitian=True) @ k64


def rank_one_update(weight: torch.Tensor, transposed: bool, k_star: torch.Tensor,
                    residual: torch.Tensor, cov: torch.Tensor | None,
                    u_key: torch.Tensor | None = None) -> torch.Tensor:
    """ΔW (same shape/layout as ``weight``, float32) with ΔW k* = ``residual`` = v* − (W k* + b).

    ΔW = Λ uᵀ with u = C⁻¹k* and Λ = residual / (uᵀk*): the solution of min ‖ΔW K‖ (all other keys,
    weighted by C = K Kᵀ/n) subject to (W + ΔW) k* = v* (paper eq. 2). ``u_key`` builds u from
    another key (u = C⁻¹ u_key) while Λ still uses k*: the official update, u from k̄ and Λ from the
    bare prompt's key. Computed in float64 and returned in float32, whatever the model's dtype.
    """
    u = inverse_cov_times(cov, k_star if u_key is None else u_key)
    denom = u @ k_star.detach().double().cpu()
    lam = residual.detach().double().cpu() / denom
    upd = torch.outer(lam, u).float()  # [out, in]
    return (upd.T if transposed else upd).contiguous().to(weight.device)


# ----------------------------------------------------------------------------------------------
# The whole edit
# ----------------------------------------------------------------------------------------------
_COV_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {key: C}, as above


def get_cov(mt: LoadedModel, hparams: ROMEHyperParams, progress: bool = True,
            layer: int | None = None) -> torch.Tensor | None:
    """C for ``layer`` (default ``hparams.layer``; None when mom2_adjustment is off); kept in memory
    after the first call. MEMIT passes each layer of its range."""
    if not hparams.mom2_adjustment:
        return None
    layer = hparams.layer if layer is None else layer
    cache = _COV_CACHE.setdefault(mt.model, {})
    key = (layer, hparams.mom2_corpus, hparams.mom2_n_samples)
    if key not in cache:
        cache[key] = layer_stats(mt, layer, corpus=hparams.mom2_corpus,
                                 n_samples=hparams.mom2_n_samples, progress=progress)
    return cache[key]


def apply_rome(
    mt: LoadedModel,
    request: dict,
    hparams: ROMEHyperParams | None = None,
    *,
    cov: torch.Tensor | None = None,
    templates: Sequence[str] | None = None,
    progress: bool = False,
) -> Edit:
    """Insert ``request``'s fact into ``mt`` in place; return the :class:`Edit` (``.undo()``).

    ``hparams`` defaults to the preset for ``mt.name`` (``hparams.update`` picks the official or the
    consistent update, see the module docstring). ``cov`` overrides the key statistics C (else
    :func:`get_cov`; ignored when mom2_adjustment is off). ``templates`` overrides the sampled
    context templates. ``edit.info`` holds ``k_star`` (the key mapped exactly to ``v_star``: k_bare
    or k̄), ``k_mean`` (k̄, from which u is built), the update's norm and the optimisation history.
    """
    request = normalize_request(request)
    if hparams is None:
        hparams = ROMEHyperParams.for_model(mt.name, mt.n_layer)
    name = mt.layout.mlp_out_at(hparams.layer)  # also a clear IndexError for a bad layer
    tgt = target_ids(mt, request["target_new"]["str"])
    warn_if_already_predicted(mt, request, tgt)
    if templates is None:
        templates = templates_for(mt, hparams)
    if hparams.mom2_adjustment and cov is None:
        cov = get_cov(mt, hparams, progress)
    elif not hparams.mom2_adjustment:
        cov = None
    k_star, v_star, info = compute_v(mt, request, hparams, templates)

    module = get_module(mt.model, name)
    residual = v_star - project(module, mt.layout.out_weight_transposed, k_star)
    upd = rank_one_update(module.weight, mt.layout.out_weight_transposed, k_star, residual, cov,
                          u_key=info["k_mean"])

    edit = Edit.begin(mt, "rome", request, hparams.layer, [name + ".weight"])
    with torch.no_grad():
        module.weight.copy_((module.weight.float() + upd).to(module.weight.dtype))
    edit.info.update(info, k_star=k_star, v_star=v_star, update_norm=upd.norm().item(),
                     n_templates=len(templates))
    return edit


__all__ = [
    "EditOrderError", "Edit", "normalize_request", "target_ids", "fill", "context_templates", "templates_for",
    "VProblem", "VLoss", "v_problem", "v_loss", "kl_edit_orig", "subject_rows", "padded",
    "delta_problem", "keys_and_values", "compute_k", "compute_v", "weight_as_out_in", "project",
    "inverse_cov_times",
    "rank_one_update", "get_cov", "apply_rome", "active_edits", "undo_all",
]
