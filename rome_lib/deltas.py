"""The optimisation behind ROME's v* and MEMIT's z: one δ per fact, many facts at once.

For each fact a vector δ is added to one module's output at the subject's last token of every row
(the fact's prompt in several context templates, with the new object teacher-forced, plus the
essence prompt "{s} is a"), and Adam minimises, per fact (paper eq. 4; official ``compute_v`` /
``compute_z``)::

    loss = mean over templates of the mean token NLL of the new object
         + kl_factor · KL(P_edit ‖ P_orig) at the subject's last token of the essence prompt
         + v_weight_decay · ‖δ‖ / ‖base‖²

with ‖δ‖ clamped to ``clamp_norm_factor · ‖base‖`` after each step and an early stop once the loss
is below ``early_stop_loss``. ``base`` is the original vector at the site (ROME: the MLP output,
MEMIT: the residual stream), so the returned target is ``base + δ``.

Four exact shortcuts make it fast, none changes the result (up to float rounding):

* **Facts in one batch.** Each δ only touches its own fact's rows, so the gradient of the summed
  loss with respect to δ_i is that of fact i's loss alone, and Adam acts element by element: one
  Adam on the [facts, d] matrix takes the same steps as one Adam per fact. A fact that stops early
  keeps its δ (it is put back after every later step).
* **The prefix once.** Tokens before the subject's last token never see δ (causal attention), so
  they run once, without gradients, into a KV cache; every step runs only the tokens from the
  subject's last token on (about a third of the tokens with the context templates).
* **The blocks below the site once.** Those tokens' states in the blocks below the site do not
  depend on δ either: the first step records each such block's output and later steps return the
  recording instead of running the block (MEMIT's site is the output of block 3 of the toy's 8:
  half the blocks are skipped).
* **Stopped facts leave.** Once half of the running facts have stopped early, the chunk is rebuilt
  for the others (their Adam moments, step count and initial KL distribution carried over), so a
  batch costs about its facts' mean number of steps, not the slowest fact's.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .hooks import get_module, hook_modules
from .hparams import EditHyperParams
from .models import LoadedModel, forward_with_cache


def kl_edit_orig(edit_log_probs: torch.Tensor, orig_log_probs: torch.Tensor) -> torch.Tensor:
    """KL(P_edit ‖ P_orig) = Σ P_edit (log P_edit − log P_orig) over the last axis: the edited
    distribution first, as the paper's eq. 4 and the official ``F.kl_div(kl_distr_init,
    kl_log_probs, log_target=True)`` (``F.kl_div(input, target)`` is KL(target ‖ input))."""
    return F.kl_div(orig_log_probs, edit_log_probs, log_target=True, reduction="none").sum(-1)


@dataclass
class DeltaProblem:
    """One fact: token rows (the prompt in each context template, then the essence prompt last),
    the subject's last token in each row, and the target's token ids (teacher-forced after every
    row but the last)."""

    rows: list[list[int]]
    lookup: list[int]
    target: list[int]

    def __post_init__(self) -> None:
        if len(self.rows) != len(self.lookup) or len(self.rows) < 2:
            raise ValueError("A DeltaProblem needs ≥ 1 rewriting row and the essence row, each with "
                             "its subject's last token.")
        if not self.target:
            raise ValueError("The target has no tokens.")

    @property
    def n_rewrite(self) -> int:
        return len(self.rows) - 1


def _pad_id(mt: LoadedModel) -> int:
    tok = mt.tokenizer
    return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)


@dataclass
class _Chunk:
    """Prefixes (left-padded, run once) and suffixes (run every step; left-padded too, so every
    row's last token sits in the last column and only the last ``keep`` columns need logits)."""

    prefix: torch.Tensor | None
    prefix_mask: torch.Tensor
    suffix: torch.Tensor
    mask: torch.Tensor  # [rows, P + S]: padding before each prefix and before each suffix
    positions: torch.Tensor  # suffix position ids
    start: torch.Tensor  # per row: the suffix column of the subject's last token (δ goes there)
    keep: int  # columns of logits needed: the longest target
    fact_of_row: torch.Tensor
    nll_row: torch.Tensor  # row, kept column and id of every teacher-forced target token
    nll_col: torch.Tensor
    nll_tok: torch.Tensor
    nll_weight: torch.Tensor  # 1 / len(target): each row's NLL is the mean over its tokens
    n_rewrite: torch.Tensor  # per fact
    kl_rows: torch.Tensor  # one essence row per fact; its KL is read in the last kept column


def _chunk(mt: LoadedModel, problems: Sequence[DeltaProblem]) -> _Chunk:
    pad, dev = _pad_id(mt), mt.device
    keep = max(len(p.target) for p in problems)
    prefixes, suffixes, facts, nll = [], [], [], ([], [], [], [])
    kl_rows = []
    for f, p in enumerate(problems):
        for r, (ids, last) in enumerate(zip(p.rows, p.lookup)):
            row = len(suffixes)
            if r < p.n_rewrite:
                suffix = ids[last:] + p.target[:-1]  # its last len(target) tokens predict the target
                for j, t in enumerate(p.target):
                    nll[0].append(row)
                    nll[1].append(keep - len(p.target) + j)
                    nll[2].append(t)
                    nll[3].append(1.0 / len(p.target))
            else:
                suffix = ids[last : last + 1]  # the KL is read at the subject's last token only
                kl_rows.append(row)
            prefixes.append(ids[:last])
            suffixes.append(suffix)
            facts.append(f)
    width_p, width_s = max(map(len, prefixes)), max(map(len, suffixes))
    left = lambda xs, w: ([0] * (w - len(xs)) + [1] * len(xs), [pad] * (w - len(xs)) + xs)  # noqa: E731
    pm, prefix = zip(*(left(x, width_p) for x in prefixes))
    sm, suffix = zip(*(left(x, width_s) for x in suffixes))
    pm, sm = torch.tensor(pm, dtype=torch.long), torch.tensor(sm, dtype=torch.long)
    start = torch.tensor([width_s - len(x) for x in suffixes])
    column = torch.arange(width_s)[None]
    positions = torch.where(sm.bool(), pm.sum(1, keepdim=True) + column - start[:, None], 0)
    return _Chunk(
        prefix=torch.tensor(prefix, device=dev) if width_p else None, prefix_mask=pm.to(dev),
        suffix=torch.tensor(suffix, device=dev), mask=torch.cat([pm, sm], 1).to(dev),
        positions=positions.to(dev), start=start.to(dev), keep=keep,
        fact_of_row=torch.tensor(facts, device=dev), nll_row=torch.tensor(nll[0], device=dev),
        nll_col=torch.tensor(nll[1], device=dev), nll_tok=torch.tensor(nll[2], device=dev),
        nll_weight=torch.tensor(nll[3], device=dev),
        n_rewrite=torch.tensor([p.n_rewrite for p in problems], device=dev, dtype=torch.float32),
        kl_rows=torch.tensor(kl_rows, device=dev),
    )


def _blocks_below(mt: LoadedModel, module_name: str) -> list[str]:
    """The blocks whose outputs cannot depend on a δ added to ``module_name``'s output: those below
    the block that holds it, and that block itself when ``module_name`` is the block."""
    for i in range(mt.n_layer):
        block = mt.layout.layer(i)
        if module_name == block:
            return [mt.layout.layer(j) for j in range(i + 1)]
        if module_name.startswith(block + "."):
            return [mt.layout.layer(j) for j in range(i)]
    return []


def _detached(value):
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple):
        return tuple(_detached(v) for v in value)
    return value


@contextlib.contextmanager
def _recorded(model: torch.nn.Module, names: list[str], store: dict):
    """Keep each named block's whole output (as returned, tuples included) in ``store``."""
    handles = [get_module(model, n).register_forward_hook(
        lambda _m, _a, out, _n=n: store.__setitem__(_n, _detached(out))) for n in names]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def _replayed(model: torch.nn.Module, store: dict):
    """Each block in ``store`` returns its recorded output instead of computing (hooks still run)."""
    modules = {n: get_module(model, n) for n in store}
    for n, m in modules.items():
        m.forward = lambda *_a, _n=n, **_k: store[_n]
    try:
        yield
    finally:
        for m in modules.values():
            del m.forward


def _optimize_chunk(mt: LoadedModel, problems: Sequence[DeltaProblem], module_name: str,
                    bases: torch.Tensor, hp: EditHyperParams) -> tuple[torch.Tensor, list[list[dict]]]:
    """Optimise the chunk's δs; once half of the facts still running have stopped early, the rest
    continue on a rebuilt, smaller chunk (same Adam moments and step count, same initial KL
    distribution), so stopped facts cost nothing (Adam acts element by element: exact)."""
    n_facts, dev = len(problems), mt.device
    bases = bases.to(dev).float()
    base_norm = bases.norm(dim=1)
    final = torch.zeros_like(bases)
    history: list[list[dict]] = [[] for _ in range(n_facts)]
    kl_init: torch.Tensor | None = None  # the unedited distributions of the active facts
    active = torch.arange(n_facts, device=dev)
    delta = torch.zeros_like(bases, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=hp.v_lr)
    below = _blocks_below(mt, module_name)
    step = 0
    while True:
        c = _chunk(mt, [problems[i] for i in active.tolist()])
        cache = None
        if c.prefix is not None:
            with torch.no_grad():
                positions = (c.prefix_mask.cumsum(1) - 1).clamp(min=0)
                _, cache = forward_with_cache(mt.model, c.prefix, None, attention_mask=c.prefix_mask,
                                              position_ids=positions)
        norm, max_norm = base_norm[active], hp.clamp_norm_factor * base_norm[active]
        done = torch.zeros(len(active), dtype=torch.bool, device=dev)
        kept = torch.zeros_like(delta.detach())
        rows = torch.arange(len(c.fact_of_row), device=dev)
        recorded: dict = {}
        first = True

        def add_delta(out, _name):
            out = out.clone()
            out[rows, c.start] = out[rows, c.start] + delta[c.fact_of_row].to(out.dtype)
            return out

        with torch.enable_grad():
            while True:
                opt.zero_grad()
                blocks = _recorded(mt.model, below, recorded) if first else _replayed(mt.model, recorded)
                first = False
                with blocks, hook_modules(mt.model, module_name, retain_output=False, edit_output=add_delta,
                                   detach=False):
                    logits, _ = forward_with_cache(
                        mt.model, c.suffix, copy.deepcopy(cache) if cache is not None else None,
                        attention_mask=c.mask, position_ids=c.positions, logits_to_keep=c.keep)
                picked = torch.log_softmax(logits[c.nll_row, c.nll_col].float(), -1)
                picked = picked.gather(1, c.nll_tok[:, None])[:, 0]
                row_nll = torch.zeros(len(c.fact_of_row), device=dev).index_add(
                    0, c.nll_row, -picked * c.nll_weight)  # the essence rows stay 0
                nll = torch.zeros(len(active), device=dev).index_add(0, c.fact_of_row, row_nll) / c.n_rewrite
                kl_log = torch.log_softmax(logits[c.kl_rows, -1].float(), -1)
                if kl_init is None:
                    kl_init = kl_log.detach()
                kl = hp.kl_factor * kl_edit_orig(kl_log, kl_init)  # per fact
                decay = hp.v_weight_decay * delta.norm(dim=1) / norm**2
                loss = nll + kl + decay
                p_row = torch.exp(-row_nll.detach())
                p_row[c.kl_rows] = 0
                p_target = torch.zeros(len(active), device=dev).index_add(0, c.fact_of_row, p_row) / c.n_rewrite
                values = torch.stack([loss, nll, kl, decay, p_target], 1).tolist()
                for j, f in enumerate(active.tolist()):
                    if not done[j]:
                        history[f].append(dict(zip(("loss", "nll", "kl", "decay", "p_target"), values[j])))
                newly = ~done & (loss.detach() < hp.early_stop_loss)
                kept[newly] = delta.detach()[newly]
                done |= newly
                if bool(done.all()) or step == hp.v_num_grad_steps - 1:
                    final[active] = torch.where(done[:, None], kept, delta.detach())
                    return final, history
                loss[~done].sum().backward()
                opt.step()
                step += 1
                with torch.no_grad():
                    delta[done] = kept[done]
                    norms = delta.norm(dim=1)
                    over = norms > max_norm
                    delta[over] *= (max_norm[over] / norms[over])[:, None]
                if 2 * int(done.sum()) >= len(active):
                    break  # rebuild on the facts still running
        final[active[done]] = kept[done]
        state = opt.state[delta]
        delta = delta.detach()[~done].clone().requires_grad_(True)
        opt = torch.optim.Adam([delta], lr=hp.v_lr)
        opt.state[delta] = {"step": state["step"], "exp_avg": state["exp_avg"][~done].clone(),
                            "exp_avg_sq": state["exp_avg_sq"][~done].clone()}
        kl_init = kl_init[~done]
        active = active[~done]


def optimize_deltas(mt: LoadedModel, problems: Sequence[DeltaProblem], module_name: str,
                    bases: torch.Tensor, hparams: EditHyperParams, *, batch_size: int = 64,
                    progress: bool = False) -> tuple[torch.Tensor, list[list[dict]]]:
    """``(δ [facts, d] float32, histories)``: the δ that makes each fact's target likely when added
    to ``module_name``'s output at the subject (see the module docstring); ``bases`` [facts, d] are
    the original vectors there (norms for the decay and the clamp). ``batch_size`` facts per batch.
    Each history lists the loss terms and the mean target probability per step."""
    if len(problems) != len(bases):
        raise ValueError(f"{len(problems)} facts but {len(bases)} base vectors.")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1.")
    deltas, histories = [], []
    for start in tqdm(range(0, len(problems), batch_size), desc="optimising targets",
                      disable=not progress or len(problems) <= batch_size):
        d, h = _optimize_chunk(mt, problems[start : start + batch_size], module_name,
                               bases[start : start + batch_size], hparams)
        deltas.append(d)
        histories += h
    return torch.cat(deltas), histories


__all__ = ["DeltaProblem", "optimize_deltas"]
