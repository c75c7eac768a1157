"""The shared v*/z optimisation: its two shortcuts (facts in one batch, the prefix run once into a
KV cache) give what a plain full forward pass per fact gives, on GPT-2, GPT-J and a Llama whose
tokenizer adds BOS; at the MLP output (ROME) and at the residual stream (MEMIT)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from rome_lib.deltas import DeltaProblem, optimize_deltas
from rome_lib.hooks import hook_modules
from rome_lib.hparams import ROMEHyperParams
from rome_lib.rome import delta_problem, padded
from tests.test_llama import bos_tokenizer, llama
from tests.test_rome import facts

torch.set_num_threads(1)

HP = ROMEHyperParams(layer=1, v_num_grad_steps=6, v_lr=0.05, v_weight_decay=1e-3, clamp_norm_factor=4.0)
TEMPLATES = ["{}", "Seattle music. {}", "The sport of the city. {}"]


@pytest.fixture(scope="module")
def llama_bos(tmp_path_factory):
    return llama(tmp_path_factory, bos_tokenizer(), tied=True)


def plain_loss(mt, problem: DeltaProblem, module: str, base: torch.Tensor, delta: torch.Tensor):
    """The loss written the obvious way: every row whole, right-padded, δ added at the subject."""
    rows = [ids + problem.target[:-1] for ids in problem.rows[:-1]] + [problem.rows[-1]]
    ids, mask = padded(mt, rows)
    look = torch.tensor(problem.lookup)
    index = torch.arange(len(rows))

    def add(out, _):
        out = out.clone()
        out[index, look] = out[index, look] + delta.to(out.dtype)
        return out

    with torch.no_grad():
        clean = mt.model(input_ids=ids, attention_mask=mask).logits
        with hook_modules(mt.model, module, retain_output=False, edit_output=add):
            logits = mt.model(input_ids=ids, attention_mask=mask).logits
    nlls = []
    for r, row in enumerate(problem.rows[:-1]):
        logp = torch.log_softmax(logits[r, len(row) - 1 : len(row) - 1 + len(problem.target)], -1)
        nlls.append(-logp[torch.arange(len(problem.target)), torch.tensor(problem.target)].mean())
    n = len(rows) - 1
    edit_log = torch.log_softmax(logits[n, problem.lookup[n]], -1)
    orig_log = torch.log_softmax(clean[n, problem.lookup[n]], -1)
    kl = HP.kl_factor * F.kl_div(orig_log, edit_log, log_target=True, reduction="sum")  # KL(P_edit ‖ P_orig)
    return torch.stack(nlls).mean() + kl + HP.v_weight_decay * delta.norm() / base.norm() ** 2


def site_and_bases(mt, problems, site):
    """The module δ goes into and the original vectors there (bare prompt) for each fact."""
    name = mt.layout.mlp_out_at(1) if site == "mlp" else mt.layout.layer(1)
    bases = []
    for p in problems:
        with hook_modules(mt.model, name) as rec:
            mt.model(torch.tensor([p.rows[0]]))
        bases.append(rec[name].output[0, p.lookup[0]].float())
    return name, torch.stack(bases)


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_gptj", "llama_bos"])
@pytest.mark.parametrize("site", ["mlp", "state"])
def test_batched_cached_optimisation_equals_the_plain_loss(request, fixture, site):
    mt = request.getfixturevalue(fixture)
    problems = [delta_problem(mt, r, TEMPLATES, "{} is a") for r in facts(4)]
    name, bases = site_and_bases(mt, problems, site)
    deltas, histories = optimize_deltas(mt, problems, name, bases, HP, batch_size=3)
    assert deltas.shape == bases.shape and len(histories) == 4
    for p, base, delta, hist in zip(problems, bases, deltas, histories):
        # the first step is at δ = 0, the last one at the δ returned (the loop stops before stepping)
        assert hist[0]["loss"] == pytest.approx(plain_loss(mt, p, name, base, 0 * delta).item(), rel=1e-4)
        assert hist[-1]["loss"] == pytest.approx(plain_loss(mt, p, name, base, delta).item(), rel=1e-4)
        assert hist[1]["nll"] < hist[0]["nll"]  # the first step goes downhill
    # one fact at a time gives the same δ as four in batches of three
    alone, _ = optimize_deltas(mt, problems[3:], name, bases[3:], HP)
    torch.testing.assert_close(alone[0], deltas[3], rtol=1e-3, atol=1e-5)


def test_early_stop_freezes_each_fact_on_its_own(tiny_gpt2):
    """A fact that reaches the stopping loss keeps its δ while the others go on."""
    mt = tiny_gpt2
    problems = [delta_problem(mt, r, TEMPLATES, "{} is a") for r in facts(2)]
    name, bases = site_and_bases(mt, problems, "mlp")
    hp = replace(HP, v_num_grad_steps=10)
    _, (first, second) = optimize_deltas(mt, problems, name, bases, hp)
    stop = (first[2]["loss"] + first[3]["loss"]) / 2  # between step 2 and 3 of the first fact
    if first[3]["loss"] >= first[2]["loss"]:
        pytest.skip("the loss did not fall between steps 2 and 3")
    deltas, (h1, h2) = optimize_deltas(mt, problems, name, bases, replace(hp, early_stop_loss=stop))
    assert len(h1) <= 4  # stopped once the loss went below `stop`
    if second[-1]["loss"] > stop and all(h["loss"] > stop for h in second):
        assert len(h2) == hp.v_num_grad_steps  # the other fact ran every step
    alone, _ = optimize_deltas(mt, problems[:1], name, bases[:1], replace(hp, early_stop_loss=stop))
    torch.testing.assert_close(alone[0], deltas[0], rtol=1e-4, atol=1e-6)


def test_bad_problems():
    with pytest.raises(ValueError, match="essence row"):
        DeltaProblem(rows=[[1, 2]], lookup=[0], target=[3])
    with pytest.raises(ValueError, match="no tokens"):
        DeltaProblem(rows=[[1, 2], [1]], lookup=[0, 0], target=[])
