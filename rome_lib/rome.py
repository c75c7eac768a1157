"""ROME: Rank-One Model Editing (paper §3).

To insert a new fact (s, r, o*) -- e.g. "Michael Jordan plays the sport of" → " soccer" -- rewrite
the output projection W of the MLP at layer l* so that the key of the subject maps to a new value:

1. **Context templates** (:func:`context_templates`): short prefixes sampled from the model itself
   (official: 10 of 5 tokens + 10 of 10 tokens, top-k 5), each as "<prefix>. {}", plus the bare "{}".
2. **k*** (:func:`keys_and_values`): the mean, over the templates, of the key (input of W) at the
   subject's last token.
3. **v*** (:func:`compute_v`): the MLP output at that token that makes the model say o*: Adam on a
   δ added to W's output at the subject's last token of every template, minimising the mean
   teacher-forced NLL of o* + kl_factor · KL(P_orig ‖ P_edit) on "{s} is a" + a weight decay, with
   ‖δ‖ clamped.
4. **The update** (:func:`rank_one_update`): Ŵ = W + Λ (C⁻¹k*)ᵀ, Λ = (v* − W k*) / ((C⁻¹k*)ᵀ k*),
   with C = E[k kᵀ] from :mod:`rome_lib.covariance` (or I when ``mom2_adjustment`` is off). Then
   Ŵ k* = v* exactly, and any key k with (C⁻¹k*)ᵀ k = 0 keeps its output.

**Which key in Λ.** The official code builds u = C⁻¹k̄ from the *averaged* key k̄ but divides by
uᵀk and subtracts W k for the *bare prompt's* key k (its ``cur_input``/``cur_output``), with
v* = m_k + δ built on the bare prompt's output: the edited layer maps the bare key k exactly to v*,
while δ was optimised for every template and the other templates' keys get the update scaled by
uᵀk_j / uᵀk (R-ROME, Gupta et al. 2024, traced instabilities to this asymmetry). We use **k̄ in both
places** (k* = k̄): Ŵ k̄ = v* holds exactly. For the same reason v* is built on the mean original
output m̄ = W k̄ + b (= the mean over the templates of the outputs, by linearity): v* = m̄ + δ, and
‖m̄‖ is the ‖m₀‖ of the weight decay and the clamp. The bare prompt itself is then only as well
served as its key resembles k̄ (lesson 05 measures the ratio).

:func:`apply_rome` returns an :class:`Edit` that keeps the original weight and restores it bit for
bit with :meth:`Edit.undo`; edits on one model form a stack and must be undone in LIFO order.
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .covariance import layer_stats, sample_corpus
from .deltas import DeltaProblem, optimize_deltas
from .hooks import get_module, trace
from .hparams import ROMEHyperParams
from .models import LoadedModel


class EditOrderError(RuntimeError):
    """An edit was undone out of order (edits on one model must be undone last-in, first-out)."""


# ----------------------------------------------------------------------------------------------
# Requests
# ----------------------------------------------------------------------------------------------
def normalize_request(request: dict) -> dict:
    """Check a request in the official format and return a copy whose target has a leading space.

    ``{"prompt": "{} plays the sport of", "subject": "Michael Jordan", "target_new": {"str": "soccer"}}``
    """
    if not isinstance(request, dict):
        raise TypeError("A request is a dict with 'prompt', 'subject' and 'target_new': {'str': ...}.")
    for key in ("prompt", "subject", "target_new"):
        if key not in request:
            raise ValueError(f"The request has no {key!r}: expected keys prompt, subject, target_new.")
    prompt, subject = request["prompt"], request["subject"]
    if not isinstance(subject, str) or not subject.strip():
        raise ValueError("The request's subject is empty.")
    if not isinstance(prompt, str) or "{}" not in prompt:
        hint = ""
        if isinstance(prompt, str) and subject in prompt:
            hint = f" Write it with {{}} where the subject goes: {prompt.replace(subject, '{}', 1)!r}."
        else:
            hint = f" The subject {subject!r} does not occur in it either."
        raise ValueError(f"The prompt {prompt!r} has no '{{}}' placeholder for the subject.{hint}")
    if prompt.count("{}") > 1:
        raise ValueError(f"The prompt {prompt!r} has more than one '{{}}' placeholder.")
    target = request["target_new"]
    target = target.get("str") if isinstance(target, dict) else target
    if not isinstance(target, str) or not target.strip():
        raise ValueError("The request's target_new['str'] is empty: there is nothing to insert.")
    out = dict(request)
    out["target_new"] = dict(request["target_new"]) if isinstance(request["target_new"], dict) else {}
    out["target_new"]["str"] = target if target.startswith(" ") else " " + target
    return out


def target_ids(mt: LoadedModel, target: str) -> list[int]:
    """Token ids of an object string (give it with its leading space), without special tokens."""
    ids = mt.tokenizer(target, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"The target {target!r} has no tokens.")
    return ids


def _last_token_in(tokenizer, text: str, start: int, end: int) -> tuple[list[int], int]:
    """Token ids of ``text`` and the index of the last token overlapping characters [start, end)."""
    enc = tokenizer(text, return_offsets_mapping=True)
    hits = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < end and b > start]
    if not hits:
        raise ValueError(f"No token of {text!r} covers characters {start}..{end}.")
    return enc["input_ids"], hits[-1]


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
_TEMPLATE_CACHE: dict[tuple, list[str]] = {}


@torch.no_grad()
def sample_prefixes(mt: LoadedModel, n: int, length: int, top_k: int, generator: torch.Generator) -> list[str]:
    """``n`` texts of ``length`` tokens sampled from the model (top-k) after its BOS/EOS token."""
    return sample_corpus(mt, n, length, top_k=top_k, generator=generator, batch_size=n, progress=False)


def context_templates(
    mt: LoadedModel,
    lengths: Sequence[tuple[int, int]] = ((5, 10), (10, 10)),
    top_k: int = 5,
    seed: int = 0,
) -> list[str]:
    """``["{}", "<prefix>. {}", ...]``: prefixes sampled from ``mt`` (seeded), cached per model.

    ``lengths`` lists (tokens, count) pairs; official: 10 of 5 tokens and 10 of 10 tokens, top-k 5.
    Braces in a sampled prefix become spaces so the template has exactly one placeholder.
    """
    key = (mt.name, id(mt.model), tuple(map(tuple, lengths)), top_k, seed)
    if key not in _TEMPLATE_CACHE:
        generator = torch.Generator().manual_seed(seed)
        templates = ["{}"]
        for length, count in lengths:
            for text in sample_prefixes(mt, count, length, top_k, generator):
                templates.append(text.replace("{", " ").replace("}", " ") + ". {}")
        _TEMPLATE_CACHE[key] = templates
    return list(_TEMPLATE_CACHE[key])


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


@torch.no_grad()
def keys_and_values(mt: LoadedModel, prompt: str, subject: str, layer: int,
                    templates: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys (W's input) [N, d_in] and original values (W's output) [N, d_out] at the subject's
    last token of every template, in float32. k* = keys.mean(0)."""
    rows = subject_rows(mt, prompt, subject, templates)
    input_ids, mask = padded(mt, [ids for ids, _ in rows])
    lookup = torch.tensor([last for _, last in rows], device=mt.device)
    name = mt.layout.mlp_out_at(layer)
    with trace(mt.model, name, retain_input=True) as rec:
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
    """k* = mean over the templates of the key at the subject's last token (float32, [d_in])."""
    keys, _ = keys_and_values(mt, request["prompt"], request["subject"], layer, templates)
    return keys.mean(0)


def compute_v(mt: LoadedModel, request: dict, hparams: ROMEHyperParams,
              templates: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``(k*, v*, info)`` -- v* = m̄ + δ with δ optimised as in the paper (eq. 4).

    Loss = mean over templates of the mean token NLL of the teacher-forced target
    + kl_factor · KL(P_orig ‖ P_edit) at the subject's last token of ``kl_prompt``
    + v_weight_decay · ‖δ‖ / ‖m̄‖². After each Adam step ‖δ‖ is clamped to clamp_norm_factor·‖m̄‖.
    The loop is :func:`rome_lib.deltas.optimize_deltas` (shared with MEMIT's z).
    ``info`` holds the losses per step and the final probability of the target.
    """
    request = normalize_request(request)
    prompt, subject = request["prompt"], request["subject"]
    tgt = target_ids(mt, request["target_new"]["str"])
    layer = hparams.layer
    name = mt.layout.mlp_out_at(layer)
    keys, values = keys_and_values(mt, prompt, subject, layer, templates)
    k_star, m0 = keys.mean(0), values.mean(0)  # m0 = W k* + b by linearity

    delta, (history,) = optimize_deltas(mt, [delta_problem(mt, request, templates, hparams.kl_prompt)],
                                        name, m0[None], hparams)
    v_star = m0 + delta[0]
    return k_star, v_star, {"history": history, "delta_norm": delta[0].norm().item(),
                            "m0_norm": m0.norm().item(), "target_ids": tgt}


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
                    residual: torch.Tensor, cov: torch.Tensor | None) -> torch.Tensor:
    """ΔW (same shape/layout as ``weight``, float32) with ΔW k* = ``residual`` = v* − (W k* + b).

    ΔW = Λ uᵀ with u = C⁻¹k* and Λ = residual / (uᵀk*): the solution of min ‖ΔW K‖ (all other keys,
    weighted by C = K Kᵀ/n) subject to (W + ΔW) k* = v* (paper eq. 2). Computed in float64 and
    returned in float32, whatever the model's dtype.
    """
    u = inverse_cov_times(cov, k_star)
    denom = u @ k_star.detach().double().cpu()
    lam = residual.detach().double().cpu() / denom
    upd = torch.outer(lam, u).float()  # [out, in]
    return (upd.T if transposed else upd).contiguous().to(weight.device)


# ----------------------------------------------------------------------------------------------
# Edits that can be undone exactly
# ----------------------------------------------------------------------------------------------
_STACKS: "weakref.WeakKeyDictionary[torch.nn.Module, list[Edit]]" = weakref.WeakKeyDictionary()


@dataclass(eq=False)
class Edit:
    """A change to some parameters of a model, with the original bytes kept for :meth:`undo`.

    Edits on one model form a stack: undo them last-in, first-out. Undoing an edit that is not the
    most recent one still applied raises :class:`EditOrderError` (nothing is changed), because the
    later edits were computed on top of it. Use as a context manager to undo on exit::

        with apply_rome(mt, request) as edit:
            ...  # the model knows the new fact here
    """

    mt: LoadedModel
    method: str
    request: dict
    layer: int
    names: list[str]
    originals: dict[str, torch.Tensor] = field(repr=False)
    info: dict[str, Any] = field(default_factory=dict, repr=False)
    applied: bool = True

    @classmethod
    def begin(cls, mt: LoadedModel, method: str, request: dict, layer: int, names: list[str]) -> "Edit":
        """Snapshot the named parameters (exact copies) before they are changed; push on the stack."""
        params = dict(mt.model.named_parameters())
        originals = {n: params[n].detach().clone() for n in names}
        edit = cls(mt=mt, method=method, request=request, layer=layer, names=names, originals=originals)
        _STACKS.setdefault(mt.model, []).append(edit)
        return edit

    def parameters(self) -> dict[str, torch.nn.Parameter]:
        params = dict(self.mt.model.named_parameters())
        return {n: params[n] for n in self.names}

    def undo(self) -> None:
        """Restore the original parameters bit for bit (LIFO order; see the class docstring)."""
        if not self.applied:
            raise EditOrderError(f"This {self.method} edit has already been undone.")
        stack = _STACKS.get(self.mt.model, [])
        if not stack or stack[-1] is not self:
            later = stack[stack.index(self) + 1 :] if self in stack else []
            raise EditOrderError(
                f"Edits must be undone last-in, first-out: undo the {len(later)} later edit(s) "
                f"first ({', '.join(e.describe() for e in reversed(later))})."
            )
        with torch.no_grad():
            for name, param in self.parameters().items():
                param.copy_(self.originals[name])
        stack.pop()
        self.applied = False

    def describe(self) -> str:
        r = self.request
        return f"{self.method}: {r['prompt'].format(r['subject'])!r} -> {r['target_new']['str']!r}"

    def __enter__(self) -> "Edit":
        return self

    def __exit__(self, *exc) -> None:
        if self.applied:
            self.undo()


def active_edits(mt: LoadedModel) -> list[Edit]:
    """The edits currently applied to ``mt``'s model, oldest first."""
    return list(_STACKS.get(mt.model, []))


def undo_all(mt: LoadedModel) -> None:
    """Undo every edit still applied to ``mt``'s model, newest first."""
    for edit in reversed(active_edits(mt)):
        edit.undo()


# ----------------------------------------------------------------------------------------------
# The whole edit
# ----------------------------------------------------------------------------------------------
_COV_CACHE: dict[tuple, torch.Tensor] = {}


def get_cov(mt: LoadedModel, hparams: ROMEHyperParams, progress: bool = True,
            layer: int | None = None) -> torch.Tensor | None:
    """C for ``layer`` (default ``hparams.layer``; None when mom2_adjustment is off); kept in memory
    after the first call. MEMIT passes each layer of its range."""
    if not hparams.mom2_adjustment:
        return None
    layer = hparams.layer if layer is None else layer
    key = (mt.name, id(mt.model), layer, hparams.mom2_corpus, hparams.mom2_n_samples)
    if key not in _COV_CACHE:
        _COV_CACHE[key] = layer_stats(mt, layer, corpus=hparams.mom2_corpus,
                                      n_samples=hparams.mom2_n_samples, progress=progress)
    return _COV_CACHE[key]


@torch.no_grad()
def _warn_if_already_predicted(mt: LoadedModel, request: dict, tgt: list[int]) -> None:
    ids = mt.tokenizer(request["prompt"].format(request["subject"]))["input_ids"]
    full = torch.tensor([ids + tgt], device=mt.device)
    logits = mt.model(full).logits[0, len(ids) - 1 : len(ids) - 1 + len(tgt)]
    if logits.argmax(-1).tolist() == tgt:
        warnings.warn(f"The model already predicts {request['target_new']['str']!r} for "
                      f"{request['prompt'].format(request['subject'])!r}; the edit changes little.",
                      stacklevel=3)


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

    ``hparams`` defaults to the preset for ``mt.name``. ``cov`` overrides the key statistics C (else
    :func:`get_cov`; ignored when mom2_adjustment is off). ``templates`` overrides the sampled
    context templates. ``edit.info`` holds k*, v*, the update's norm and the optimisation history.
    """
    request = normalize_request(request)
    if hparams is None:
        hparams = ROMEHyperParams.for_model(mt.name, mt.n_layer)
    mt.layout.mlp_out_at(hparams.layer)  # clear IndexError for a bad layer
    tgt = target_ids(mt, request["target_new"]["str"])
    _warn_if_already_predicted(mt, request, tgt)
    if templates is None:
        templates = context_templates(mt, hparams.context_lengths, hparams.context_top_k, hparams.seed)
    if hparams.mom2_adjustment and cov is None:
        cov = get_cov(mt, hparams, progress)
    elif not hparams.mom2_adjustment:
        cov = None
    k_star, v_star, info = compute_v(mt, request, hparams, templates)

    module = get_module(mt.model, mt.layout.mlp_out_at(hparams.layer))
    residual = v_star - project(module, mt.layout.out_weight_transposed, k_star)
    weight_name = mt.layout.mlp_out_at(hparams.layer) + ".weight"
    upd = rank_one_update(module.weight, mt.layout.out_weight_transposed, k_star, residual, cov)

    edit = Edit.begin(mt, "rome", request, hparams.layer, [weight_name])
    with torch.no_grad():
        module.weight.copy_((module.weight.float() + upd).to(module.weight.dtype))
    edit.info.update(info, k_star=k_star, v_star=v_star, update_norm=upd.norm().item(),
                     n_templates=len(templates))
    return edit


__all__ = [
    "EditOrderError", "Edit", "normalize_request", "target_ids", "fill", "context_templates",
    "subject_rows", "padded", "delta_problem", "keys_and_values", "compute_k", "compute_v", "weight_as_out_in", "project", "inverse_cov_times",
    "rank_one_update", "get_cov", "apply_rome", "active_edits", "undo_all",
]
