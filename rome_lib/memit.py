"""MEMIT: many facts at once, spread over a range of layers (Meng et al., ICLR 2023, "Mass-Editing
Memory in a Transformer"; official code kmeng01/memit).

ROME writes one key → value pair into one layer. MEMIT writes n pairs into the MLP output
projections of a range of layers ℛ = [l₁ … l_L] (official: GPT-2 XL 13–17, GPT-J 3–8):

1. **Targets** (:func:`compute_targets`): for each fact i a hidden state z_i at the residual stream
   output of the *last* layer l_L, at the subject's last token, that makes the model say the new
   object -- z_i = h_i + δ_i with δ_i optimised exactly as ROME's v* (same loss and clamp;
   :mod:`rome_lib.deltas`), starting from the bare prompt's state h_i.
2. **One layer at a time, from the lowest** (:func:`apply_memit`): at layer l (the i-th of L)
   read the keys K (one column per fact: the key at the subject's last token, averaged over the
   context templates), the current states at l_L, and the residual R = (Z − current) / (L − i + 1)
   -- the share of what is left that this layer takes (the official ``resid / (L − i)`` with a
   0-based i). Then
3. **The batched least-squares update** (:func:`least_squares_update`):
   ΔW = R Kᵀ (λ C + K Kᵀ)⁻¹, the minimiser of λ·tr(ΔW C ΔWᵀ) + ‖ΔW K − R‖²: keep the outputs of
   the keys already stored (their second moment stands in as λ C, C = E[k kᵀ] from
   :mod:`rome_lib.covariance`; λ = ``mom2_update_weight``) while moving the new keys by R.
   The layer is rewritten before the next layer's keys and states are read, so later layers
   correct what earlier ones did not reach.

With one fact and one layer, ΔW = r (C⁻¹k)ᵀ / (λ + kᵀC⁻¹k) by Sherman–Morrison: ROME's direction,
shrunk by kᵀC⁻¹k / (λ + kᵀC⁻¹k); λ → 0 gives ROME's Ŵ k = v exactly (tested).

Facts that share a subject share its key (it is read before the relation's words), so in one
batch their residuals are averaged and each is only partly written (Dong et al. 2025, "MEMIT-Merge",
measure the drop). The toy's 1,352 records have 299 subjects: batches of distinct subjects score
higher.

:func:`apply_memit` returns one :class:`~rome_lib.rome.Edit` for all layers; ``undo()`` restores
every weight bit for bit.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch
from tqdm import tqdm

from .deltas import optimize_deltas
from .hooks import get_module, hook_modules
from .hparams import MEMITHyperParams
from .models import LoadedModel
from .rome import (
    Edit, delta_problem, get_cov, normalize_request, padded, subject_rows, templates_for,
)


class MemitEdit(Edit):
    """The :class:`~rome_lib.rome.Edit` of a MEMIT batch: every layer of the range in one record."""

    def describe(self) -> str:
        n, layers = len(self.info.get("requests", [])), self.info.get("layers", [self.layer])
        return f"{self.method}: {n} fact(s) into layers {layers[0]}-{layers[-1]}"


# ----------------------------------------------------------------------------------------------
# The update
# ----------------------------------------------------------------------------------------------
def least_squares_update(keys: torch.Tensor, residuals: torch.Tensor, cov: torch.Tensor | None,
                         lam: float) -> torch.Tensor:
    """ΔW = R Kᵀ (λ C + K Kᵀ)⁻¹ in float64, [d_out, d_in]; ``keys`` [n, d_in] and ``residuals``
    [n, d_out] hold one fact per row (K = keysᵀ, R = residualsᵀ); ``cov`` None means C = I.

    It solves the normal equations ΔW (λ C + K Kᵀ) = R Kᵀ of min λ·tr(ΔW C ΔWᵀ) + ‖ΔW K − R‖²."""
    k = keys.detach().double().cpu().T  # [d_in, n]
    r = residuals.detach().double().cpu().T  # [d_out, n]
    if k.shape[1] != r.shape[1]:
        raise ValueError(f"{k.shape[1]} keys but {r.shape[1]} residuals.")
    c = torch.eye(k.shape[0], dtype=torch.float64) if cov is None else cov.detach().double().cpu()
    system = lam * c + k @ k.T
    try:
        solved = torch.linalg.solve(system, k)  # (λC + KKᵀ)⁻¹ K, [d_in, n]
    except RuntimeError:  # λ = 0 with fewer facts than key dimensions, or a singular C
        warnings.warn("λC + KKᵀ is singular; using its pseudo-inverse.", stacklevel=2)
        solved = torch.linalg.pinv(system, hermitian=True) @ k
    return r @ solved.T  # R Kᵀ (λC + KKᵀ)⁻¹, the system being symmetric


def template_weights(templates: Sequence[str]) -> torch.Tensor:
    """Weights of the templates in a key: the official ``compute_ks`` averages the bare prompt
    ("{}") and the mean of the prefixed templates with equal weight (½ each)."""
    bare = torch.tensor([t == "{}" for t in templates])
    n_bare, n_other = int(bare.sum()), int((~bare).sum())
    if n_bare == 0 or n_other == 0:
        return torch.full((len(templates),), 1.0 / len(templates), dtype=torch.float64)
    return torch.where(bare, 0.5 / n_bare, 0.5 / n_other).double()


# ----------------------------------------------------------------------------------------------
# Keys, states and targets
# ----------------------------------------------------------------------------------------------
def template_rows(mt: LoadedModel, requests: Sequence[dict],
                  templates: Sequence[str]) -> list[tuple[int, ...]]:
    """Each fact's prompt in each template, tokenised and cut after the subject's last token (nothing
    later can change a key or state read there), fact by fact: ``len(requests) · len(templates)`` rows."""
    return [tuple(ids[: last + 1]) for q in requests
            for ids, last in subject_rows(mt, q["prompt"], q["subject"], templates)]


@torch.no_grad()
def keys_and_states(mt: LoadedModel, requests: Sequence[dict], layer: int, z_layer: int,
                    templates: Sequence[str], batch_rows: int = 512,
                    rows: Sequence[tuple[int, ...]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(K [n, d_in], H [n, d])``: each fact's key at ``layer`` (the input of its MLP output
    projection at the subject's last token, averaged over ``templates`` with
    :func:`template_weights`) and the residual stream at the output of ``z_layer`` at the subject's
    last token of the bare prompt (the first template must be "{}"), float32.

    ``rows`` are :func:`template_rows` (pass them to tokenise once for many layers). Identical rows
    (facts that share a subject and the words before it) run once, shortest first to pad little,
    and every forward pass stops at ``z_layer``."""
    if templates[0] != "{}":
        raise ValueError("The first context template must be the bare prompt '{}'.")
    if layer > z_layer:
        raise ValueError(f"The key layer {layer} is above the target layer {z_layer}.")
    weights = template_weights(templates).float().to(mt.device)
    if rows is None:
        rows = template_rows(mt, requests, templates)
    if len(rows) != len(requests) * len(templates):
        raise ValueError(f"{len(rows)} rows for {len(requests)} facts × {len(templates)} templates.")
    unique = sorted(set(rows), key=len)
    where = {r: i for i, r in enumerate(unique)}
    key_name, state_name = mt.layout.mlp_out_at(layer), mt.layout.layer(z_layer)
    keys, states = [], []
    for start in range(0, len(unique), batch_rows):
        part = unique[start : start + batch_rows]
        ids, mask = padded(mt, part)
        look = torch.tensor([len(r) - 1 for r in part], device=mt.device)
        index = torch.arange(len(part), device=mt.device)
        with hook_modules(mt.model, key_name, retain_input=True, retain_output=False) as k_rec:
            with hook_modules(mt.model, state_name, stop=True) as s_rec:
                mt.model(input_ids=ids, attention_mask=mask)
        keys.append(k_rec[key_name].input[index, look].float())
        states.append(s_rec[state_name].output[index, look].float())
    back = torch.tensor([where[r] for r in rows], device=mt.device)
    t = len(templates)
    keys_t = torch.cat(keys)[back].reshape(len(requests), t, -1)
    states_t = torch.cat(states)[back].reshape(len(requests), t, -1)
    return (keys_t * weights[None, :, None]).sum(1), states_t[:, 0]


def compute_targets(mt: LoadedModel, requests: Sequence[dict], hparams: MEMITHyperParams,
                    templates: Sequence[str], states: torch.Tensor,
                    progress: bool = False) -> tuple[torch.Tensor, list[list[dict]]]:
    """``(Z [n, d], histories)``: z_i = h_i + δ_i at the output of the range's last layer, with δ_i
    optimised as ROME's v* (official ``compute_z``); ``states`` are the h_i (bare prompts)."""
    problems = [delta_problem(mt, q, templates, hparams.kl_prompt) for q in requests]
    deltas, histories = optimize_deltas(mt, problems, mt.layout.layer(hparams.layers[-1]), states,
                                        hparams, batch_size=hparams.batch_size, progress=progress)
    return states.to(deltas.device) + deltas, histories


# ----------------------------------------------------------------------------------------------
# The whole edit
# ----------------------------------------------------------------------------------------------
def apply_memit(
    mt: LoadedModel,
    requests: Sequence[dict],
    hparams: MEMITHyperParams | None = None,
    *,
    covs: dict[int, torch.Tensor | None] | None = None,
    templates: Sequence[str] | None = None,
    targets: torch.Tensor | None = None,
    progress: bool = False,
) -> MemitEdit:
    """Insert every request (official format) into ``mt`` in place; return one :class:`MemitEdit`.

    ``hparams`` defaults to the preset for ``mt.name``. ``covs`` maps a layer to its C (else
    :func:`~rome_lib.rome.get_cov`; None there means C = I). ``templates`` overrides the sampled
    context templates (the first must be "{}"). ``targets`` reuses the Z of an earlier call (same
    requests, range end and templates) instead of optimising them again, e.g. to compare λ.
    ``edit.info`` holds the targets Z, the histories, and per layer the mean distance to the targets
    before its update and the update's norm.
    """
    if isinstance(requests, dict):
        requests = [requests]
    requests = [normalize_request(q) for q in requests]
    if not requests:
        raise ValueError("No requests: MEMIT needs at least one fact to insert.")
    if hparams is None:
        hparams = MEMITHyperParams.for_model(mt.name, mt.n_layer)
    layers, z_layer = hparams.layers, hparams.layers[-1]
    names = [mt.layout.mlp_out_at(layer) for layer in layers]  # IndexError for a bad layer
    if templates is None:
        templates = templates_for(mt, hparams)
    covs = dict(covs or {})
    for layer in layers:
        if layer not in covs:
            covs[layer] = get_cov(mt, hparams, progress, layer=layer)

    rows = template_rows(mt, requests, templates)  # tokenised once for every layer
    keys, states = keys_and_states(mt, requests, layers[0], z_layer, templates, rows=rows)
    if targets is None:
        z, histories = compute_targets(mt, requests, hparams, templates, states, progress)
    elif targets.shape != states.shape:
        raise ValueError(f"targets has shape {tuple(targets.shape)}, expected {tuple(states.shape)}.")
    else:
        z, histories = targets.to(states.device).float(), []
    edit = MemitEdit.begin(mt, "memit", requests[0], z_layer, [n + ".weight" for n in names])
    per_layer = []
    transposed = mt.layout.out_weight_transposed
    try:
        for i, (layer, name) in enumerate(tqdm(list(zip(layers, names)), desc="MEMIT layers",
                                               disable=not progress)):
            if i > 0:  # the layers below changed: read the keys and states again
                keys, states = keys_and_states(mt, requests, layer, z_layer, templates, rows=rows)
            residuals = (z - states.to(z.device)) / (len(layers) - i)
            upd = least_squares_update(keys, residuals, covs[layer], hparams.mom2_update_weight).float()
            weight = get_module(mt.model, name).weight
            with torch.no_grad():
                upd = (upd.T if transposed else upd).to(weight.device)
                weight.copy_((weight.float() + upd).to(weight.dtype))
            per_layer.append({"layer": layer, "z_error": (z - states.to(z.device)).norm(dim=1).mean().item(),
                              "update_norm": upd.norm().item()})
    except BaseException:
        edit.undo()
        raise
    edit.info.update(requests=requests, layers=list(layers), z=z, histories=histories,
                     per_layer=per_layer, n_templates=len(templates))
    return edit


__all__ = ["MemitEdit", "least_squares_update", "template_weights", "template_rows", "keys_and_states",
           "compute_targets", "apply_memit"]
