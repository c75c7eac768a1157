"""MEMIT: the batched update solves its normal equations, reduces to ROME's closed form (shrunk) for
one fact in one layer, spreads the residual so that the last layer lands on z, undoes bit for bit on
both weight layouts, and inserts 100 toy facts."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from rome_lib.hparams import MEMITHyperParams
from rome_lib.memit import apply_memit, keys_and_states, least_squares_update, template_weights
from rome_lib.rome import EditOrderError, active_edits, apply_rome, rank_one_update
from tests.test_rome import FAST, REQUEST, assert_params_equal, cov_of, facts, params_copy

torch.set_num_threads(1)

HP = MEMITHyperParams(layers=(1, 2), v_num_grad_steps=6, v_lr=0.05, v_weight_decay=1e-3,
                      clamp_norm_factor=4.0, mom2_update_weight=1.0)
TEMPLATES = ["{}", "Seattle music. {}", "The sport of the city. {}"]


def spd(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, 3 * d, generator=g, dtype=torch.float64)
    return a @ a.T / (3 * d)


# ----------------------------------------------------------------------------------------------
# The update's algebra (float64)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, d_in, lam", [(7, 16, 3.0), (1, 16, 0.5), (10_000, 32, 15_000.0)])
def test_update_solves_its_normal_equations(n, d_in, lam):
    """ΔW (λC + KKᵀ) = R Kᵀ: the stationarity condition of λ·tr(ΔW C ΔWᵀ) + ‖ΔW K − R‖²."""
    g = torch.Generator().manual_seed(n)
    keys, res = torch.randn(n, d_in, generator=g), torch.randn(n, 8, generator=g)
    c = spd(d_in, 1)
    dw = least_squares_update(keys, res, c, lam)
    k, r = keys.double().T, res.double().T
    lhs, rhs = dw @ (lam * c + k @ k.T), r @ k.T
    assert dw.dtype == torch.float64 and dw.shape == (8, d_in)
    assert (lhs - rhs).norm() < 1e-9 * rhs.norm()


def test_one_fact_one_layer_is_rome_shrunk():
    """Sherman–Morrison: ΔW = r (C⁻¹k)ᵀ / (λ + kᵀC⁻¹k) -- ROME's update (which maps k to exactly
    W k + r) times kᵀC⁻¹k / (λ + kᵀC⁻¹k); λ → 0 gives ROME's update itself (at λ = 0 exactly,
    k kᵀ alone is singular and the pseudo-inverse answer forgets C)."""
    g = torch.Generator().manual_seed(0)
    k, r, c = torch.randn(24, generator=g), torch.randn(10, generator=g), spd(24, 2)
    u = torch.linalg.solve(c, k.double())
    q = float(k.double() @ u)
    rome = rank_one_update(torch.zeros(10, 24), False, k, r, c).double()  # Λ uᵀ, Λ = r / (uᵀk)
    for lam in (1e-6, 1.0, 100.0):
        dw = least_squares_update(k[None], r[None], c, lam)
        torch.testing.assert_close(dw, torch.outer(r.double(), u) / (lam + q))
        torch.testing.assert_close(dw, rome * q / (lam + q), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(least_squares_update(k[None], r[None], c, 1e-9) @ k.double(), r.double())
    torch.testing.assert_close(least_squares_update(k[None], r[None], c, 1e-9), rome, rtol=1e-5, atol=1e-6)


def test_identity_covariance_and_validation():
    g = torch.Generator().manual_seed(3)
    keys, res = torch.randn(4, 6, generator=g), torch.randn(4, 5, generator=g)
    torch.testing.assert_close(least_squares_update(keys, res, None, 2.0),
                               least_squares_update(keys, res, torch.eye(6), 2.0))
    with pytest.raises(ValueError, match="keys but"):
        least_squares_update(keys, res[:3], None, 1.0)


def test_template_weights_follow_the_official_grouping():
    """Official compute_ks: the mean of the bare prompt's key and of the prefixed templates' mean."""
    w = template_weights(["{}", "a. {}", "b. {}", "c. {}"])
    torch.testing.assert_close(w, torch.tensor([0.5, 1 / 6, 1 / 6, 1 / 6], dtype=torch.float64))
    assert template_weights(["{}"]).tolist() == [1.0]


def test_hyperparameters():
    assert MEMITHyperParams.for_model("gpt2-xl").layers == (13, 14, 15, 16, 17)
    assert MEMITHyperParams.for_model("gpt2-xl").mom2_update_weight == 20_000
    assert MEMITHyperParams.for_model("EleutherAI/gpt-j-6b").layers == (3, 4, 5, 6, 7, 8)
    assert MEMITHyperParams.for_model("EleutherAI/gpt-j-6b").mom2_update_weight == 15_000
    assert MEMITHyperParams.for_model("unknown", n_layer=12).layers == (2, 3, 4)
    official = ("The", "Therefore", "Because", "I", "You")  # official get_context_templates
    assert MEMITHyperParams.for_model("gpt2-xl").context_starts == official
    assert MEMITHyperParams.for_model("unknown", n_layer=12).context_starts == official
    assert MEMITHyperParams.for_model("toy").context_starts == ()  # ours: hparams.py, M1
    with pytest.raises(ValueError, match="increasing"):
        MEMITHyperParams(layers=(3, 2))
    with pytest.raises(ValueError, match="λ"):
        MEMITHyperParams(layers=(1,), mom2_update_weight=-1)


# ----------------------------------------------------------------------------------------------
# On models
# ----------------------------------------------------------------------------------------------
def covs(mt, layers=(1, 2)):
    return {layer: cov_of(mt, layer) for layer in layers}


def test_the_last_layer_lands_on_z(tiny_gpt2):
    """Spreading: each layer takes 1/(layers left) of what is left, measured after the layers below
    were rewritten, so the last layer takes all the rest; with one fact, the bare prompt as the only
    template (key = the bare key) and λ → 0 the state at the last layer is exactly z afterwards."""
    mt = tiny_gpt2
    hp = replace(HP, mom2_update_weight=1e-8)
    before = keys_and_states(mt, [REQUEST], 1, 2, ["{}"])[1]
    with apply_memit(mt, [REQUEST], hp, covs=covs(mt), templates=["{}"]) as edit:
        after = keys_and_states(mt, [REQUEST], 1, 2, ["{}"])[1]
        z = edit.info["z"]
        assert (z - before).norm() > 1e-3 * before.norm()  # there was something to move
        torch.testing.assert_close(after, z, rtol=1e-4, atol=1e-5)
        first, last = edit.info["per_layer"]
        assert last["z_error"] < first["z_error"]


def test_keys_and_states_run_each_distinct_row_once(tiny_gpt2):
    """Facts that share a subject and the words before it share their rows: reading a batch with
    repeats (rows run once, shortest first) gives each fact what it gets when read alone."""
    mt, fs = tiny_gpt2, facts(6)  # facts 0 and 5 share a subject, not the prompt
    batch = [fs[0], fs[1], fs[5], fs[0]]
    keys, states = keys_and_states(mt, batch, 1, 2, TEMPLATES)
    for i, q in enumerate(batch):
        k, h = keys_and_states(mt, [q], 1, 2, TEMPLATES)
        torch.testing.assert_close(keys[i : i + 1], k, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(states[i : i + 1], h, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="rows for"):
        keys_and_states(mt, batch, 1, 2, TEMPLATES, rows=[(1, 2)])


@pytest.mark.parametrize("fixture, transposed", [("tiny_gpt2", True), ("tiny_gptj", False)])
def test_undo_is_bit_exact_on_both_layouts(request, fixture, transposed):
    mt = request.getfixturevalue(fixture)
    assert mt.layout.out_weight_transposed is transposed
    saved = params_copy(mt)
    edit = apply_memit(mt, facts(5), HP, covs=covs(mt), templates=TEMPLATES)
    names = {mt.layout.mlp_out_at(layer) + ".weight" for layer in HP.layers}
    changed = {n for n, p in mt.model.named_parameters() if not torch.equal(p, saved[n])}
    assert changed == names  # only the range's output projections, all of them
    assert edit.describe() == "memit: 5 fact(s) into layers 1-2"
    edit.undo()
    assert_params_equal(mt, saved)
    assert active_edits(mt) == []


def test_memit_stacks_with_rome(tiny_gpt2):
    mt = tiny_gpt2
    saved = params_copy(mt)
    rome = apply_rome(mt, REQUEST, FAST, cov=cov_of(mt))
    memit = apply_memit(mt, facts(3), HP, covs=covs(mt), templates=TEMPLATES)
    with pytest.raises(EditOrderError):
        rome.undo()
    memit.undo()
    rome.undo()
    assert_params_equal(mt, saved)


def test_bad_input(tiny_gpt2):
    with pytest.raises(ValueError, match="No requests"):
        apply_memit(tiny_gpt2, [], HP)
    with pytest.raises(IndexError, match="does not exist"):
        apply_memit(tiny_gpt2, facts(1), replace(HP, layers=(2, 9)))
    with pytest.raises(ValueError, match="bare prompt"):
        apply_memit(tiny_gpt2, facts(1), HP, covs=covs(tiny_gpt2), templates=["a. {}"])
    with pytest.raises(ValueError, match="targets has shape"):
        apply_memit(tiny_gpt2, facts(2), HP, covs=covs(tiny_gpt2), templates=TEMPLATES,
                    targets=torch.zeros(3, 64))


def distinct_subjects(records, n):
    """The first ``n`` records whose subjects differ (same-subject facts share one key)."""
    seen, out = set(), []
    for r in records:
        if r["requested_rewrite"]["subject"] not in seen:
            seen.add(r["requested_rewrite"]["subject"])
            out.append(r)
    return out[:n]


@pytest.mark.slow
def test_toy_batch_of_100_facts():
    """100 toy facts with distinct subjects in one batch (the toy preset, C from the toy corpus):
    ES 96 with 25 z steps (20 steps left two targets short: ES 94; hparams.py lists the sweep)."""
    from rome_lib.evaluation import record_metrics, score_record, summarize
    from rome_lib.models import load_model

    mt = load_model("toy", device="cpu")
    records = distinct_subjects(json.loads(mt.data_file("counterfact.json").read_text()), 100)
    with apply_memit(mt, [r["requested_rewrite"] for r in records]):
        scores = summarize([record_metrics(score_record(mt, r)) for r in records])
    assert scores["ES"] >= 95
