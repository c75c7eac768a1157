"""The tracing checks pass the reference solutions and catch the usual mistakes with a specific hint.

Each wrong function below makes one classic mistake; its check must return False and print the hint
that names it (a check that cannot fail would teach nothing)."""

from __future__ import annotations


import pytest
import torch

from rome_lib import checks
from rome_lib.checks import tracing as ct
from rome_lib.hooks import hook_modules
from rome_lib.tracing import BUCKETS, make_noise

from .check_helpers import mt, verdict  # noqa: F401 - mt is a fixture

torch.set_num_threads(1)


# ---- reference solutions (as in solutions/01_tracing_exercises.ipynb) ------------------------
def subject_range(tokenizer, prompt, subject, *, strict=False, shift_end=0, last_only=False):
    start = prompt.index(subject)
    end = start + len(subject)
    offsets = tokenizer(prompt, return_offsets_mapping=True)["offset_mapping"]
    if strict:  # mistake: only tokens that lie inside the subject's characters
        inside = [i for i, (a, b) in enumerate(offsets) if a >= start and b <= end and b > a]
    else:
        inside = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
    b, e = inside[0], inside[-1] + 1 + shift_end
    return (e - 1, e) if last_only else (b, e)


def _noised_logits(mt, prompt, subject, *, noise, samples, seed, tokens="subject", same_row=False,
                   scale=True, clean_row=False, patch=None, draws=None):
    ids = mt.tokenizer(prompt, return_tensors="pt")["input_ids"]
    b, e = subject_range(mt.tokenizer, prompt, subject)
    d = mt.model.get_input_embeddings().weight.shape[1]
    if draws is None:
        draws = make_noise(samples, e - b, d, noise if scale else 1.0, seed)
    if same_row:
        draws = draws[:1].expand_as(draws)
    where = {"subject": slice(b, e), "all": slice(None), "last": slice(e - 1, e)}[tokens]

    def add_noise(x, _):
        x = x.clone()
        offset = 1 if clean_row else 0
        if tokens == "subject":
            x[offset:, where] += draws
        elif tokens == "last":
            x[offset:, where] += draws[:, -1:]
        else:
            x[offset:, where] += draws[:, :1]
        return x

    batch = ids.repeat(samples + (1 if clean_row else 0), 1)
    with torch.no_grad(), hook_modules(mt.model, mt.layout.embed, edit_output=add_noise):
        if patch is None:
            return mt.model(batch).logits[:, -1]
        name, edit = patch
        with hook_modules(mt.model, name, edit_output=edit):
            return mt.model(batch).logits[:, -1]


def corrupted(mt, prompt, subject, answer_id, *, noise, samples=10, seed=1, **mistake):
    logits = _noised_logits(mt, prompt, subject, noise=noise, samples=samples, seed=seed, **mistake)
    return torch.softmax(logits.float(), -1)[:, answer_id].mean().item()


def restore(mt, prompt, subject, answer_id, token, layer, kind="state", *, noise, samples=10, seed=1,
            layer_shift=0, kind_instead=None, token_instead=None, no_return=False, draws=None):
    ids = mt.tokenizer(prompt, return_tensors="pt")["input_ids"]
    layer = min(max(layer + layer_shift, 0), mt.n_layer - 1)
    token = token if token_instead is None else token_instead
    name = mt.layout.module(kind_instead or kind, layer)
    with torch.no_grad(), hook_modules(mt.model, name) as rec:
        mt.model(ids)
    clean = rec[name].output[0, token]

    def put(x, _):
        y = x.clone() if no_return else x
        y[:, token] = clean
        return x if no_return else y

    logits = _noised_logits(mt, prompt, subject, noise=noise, samples=samples, seed=seed,
                            patch=(name, put), draws=draws)
    return torch.softmax(logits.float(), -1)[:, answer_id].mean().item()


def window(layer, w, n_layer, *, centred=True, clip=True):
    lo = layer - w // 2 if centred else layer
    layers = range(lo, lo + w)
    return [l for l in layers if 0 <= l < n_layer] if clip else list(layers)


def trace_states(mt, prompt, subject, answer_id, *, noise, samples=10, seed=1, fresh_noise=False,
                 transpose=False, effects=False, layer_shift=0):
    n_tokens = len(mt.tokenizer(prompt)["input_ids"])
    scores = torch.zeros(n_tokens, mt.n_layer)
    for t in range(n_tokens):
        for l in range(mt.n_layer):
            cell_seed = seed + t * mt.n_layer + l if fresh_noise else seed
            scores[t, l] = restore(mt, prompt, subject, answer_id, t, l, noise=noise, samples=samples,
                                   seed=cell_seed, layer_shift=layer_shift)
    if effects:
        scores -= corrupted(mt, prompt, subject, answer_id, noise=noise, samples=samples, seed=seed)
    return scores.T if transpose else scores


def buckets(results, *, effects=True, first_as_last=False, per_fact=False, nan=False):
    n_layer = results[0].scores.shape[1]
    sums, counts = torch.zeros(len(BUCKETS), n_layer), torch.zeros(len(BUCKETS))
    for r in results:
        v = r.scores - r.low if effects else r.scores
        b, e = r.subject_range
        last = v.shape[0] - 1
        rows = [v[b], v[b + 1:e - 1].mean(0) if (b + 1 < e - 1 or nan) else None,
                v[b] if first_as_last else v[e - 1], v[e] if e <= last else None,
                v[e + 1:last].mean(0) if e + 1 < last else None, v[last]]
        for i, row in enumerate(rows):
            if row is not None:
                sums[i] += row
                counts[i] += 1
    return sums / len(results) if per_fact else sums / counts.clamp(min=1)[:, None]


# ---- the references pass -----------------------------------------------------------------------
def test_checks_are_reexported():
    for name in ("check_subject_range", "check_corrupt", "check_restore", "check_window",
                 "check_trace", "check_buckets"):
        assert getattr(checks, name) is getattr(ct, name)


@pytest.mark.parametrize("check, fn", [
    (checks.check_subject_range, subject_range), (checks.check_corrupt, corrupted),
    (checks.check_restore, restore), (checks.check_trace, trace_states),
])
def test_reference_passes(capsys, mt, check, fn):
    ok, out = verdict(capsys, check, fn, mt)
    assert ok and out.strip() == ct.PASSED


@pytest.mark.parametrize("check, fn", [(checks.check_window, window), (checks.check_buckets, buckets)])
def test_reference_passes_without_a_model(capsys, check, fn):
    ok, out = verdict(capsys, check, fn)
    assert ok and out.strip() == ct.PASSED


def test_learner_errors_propagate(mt):
    def stub(*args, **kwargs):
        raise NotImplementedError("Your code here")

    with pytest.raises(NotImplementedError):
        checks.check_corrupt(stub, mt)


# ---- the usual mistakes get specific hints -----------------------------------------------------
def wrong(fn, **mistake):
    return lambda *args, **kwargs: fn(*args, **kwargs, **mistake)


@pytest.mark.parametrize("mistake, hint", [
    (dict(shift_end=-1), "Off by one at the end"),
    (dict(shift_end=1), "one too far"),
    (dict(strict=True), "overlaps"),
    (dict(last_only=True), "Only the last subject token"),
])
def test_subject_range_hints(capsys, mt, mistake, hint):
    ok, out = verdict(capsys, checks.check_subject_range, wrong(subject_range, **mistake), mt)
    assert not ok and hint in out


def test_subject_range_character_positions(capsys, mt):
    def chars(tokenizer, prompt, subject):
        return prompt.index(subject), prompt.index(subject) + len(subject)

    ok, out = verdict(capsys, checks.check_subject_range, chars, mt)
    assert not ok and "character positions" in out


@pytest.mark.parametrize("mistake, hint", [
    (dict(tokens="all"), "You noised every token"),
    (dict(tokens="last"), "Only the last subject token"),
    (dict(same_row=True), "Every row got the same noise"),
    (dict(scale=False), "standard normal"),
    (dict(clean_row=True), "clean row"),
])
def test_corrupt_hints(capsys, mt, mistake, hint):
    ok, out = verdict(capsys, checks.check_corrupt, wrong(corrupted, **mistake), mt)
    assert not ok and hint in out


@pytest.mark.parametrize("mistake, hint", [
    (dict(layer_shift=1), "instead of layer"),
    (dict(layer_shift=-1), "instead of layer"),
    (dict(kind_instead="mlp"), "output instead of the"),
    (dict(no_return=True), "had no effect"),
])
def test_restore_hints(capsys, mt, mistake, hint):
    ok, out = verdict(capsys, checks.check_restore, wrong(restore, **mistake), mt)
    assert not ok and hint in out


def test_restore_wrong_token(capsys, mt):
    def first_subject_token(mt_, prompt, subject, answer_id, token, layer, kind="state", **kw):
        b, _ = subject_range(mt_.tokenizer, prompt, subject)
        return restore(mt_, prompt, subject, answer_id, token, layer, kind, token_instead=b, **kw)

    ok, out = verdict(capsys, checks.check_restore, first_subject_token, mt)
    assert not ok and "You restored token" in out


@pytest.mark.parametrize("mistake, hint", [
    (dict(centred=False), "centred"),
    (dict(clip=False), "clip the window"),
])
def test_window_hints(capsys, mistake, hint):
    ok, out = verdict(capsys, checks.check_window, wrong(window, **mistake))
    assert not ok and hint in out


@pytest.mark.parametrize("mistake, hint", [
    (dict(fresh_noise=True), "same noise draws for every cell"),
    (dict(transpose=True), "transposed"),
    (dict(effects=True), "indirect effects"),
])
def test_trace_hints(capsys, mt, mistake, hint):
    ok, out = verdict(capsys, checks.check_trace, wrong(trace_states, **mistake), mt)
    assert not ok and hint in out


@pytest.mark.parametrize("mistake, hint", [
    (dict(effects=False), "averaged probabilities, not indirect effects"),
    (dict(first_as_last=True), "*first* subject token"),
    (dict(per_fact=True), "number of facts"),
    (dict(nan=True), "NaN"),
])
def test_bucket_hints(capsys, mistake, hint):
    ok, out = verdict(capsys, checks.check_buckets, wrong(buckets, **mistake))
    assert not ok and hint in out


# ---- correct implementations that group their forward passes differently all pass -------------
def _draws(mt, prompt, subject, noise, samples, seed):
    b, e = subject_range(mt.tokenizer, prompt, subject)
    return b, e, make_noise(samples, e - b, mt.model.get_input_embeddings().weight.shape[1], noise, seed)


def corrupted_one_row_per_pass(mt, prompt, subject, answer_id, *, noise, samples=10, seed=1):
    """Correct: each noise draw in its own forward pass of batch size 1."""
    ids = mt.tokenizer(prompt, return_tensors="pt")["input_ids"]
    b, e, draws = _draws(mt, prompt, subject, noise, samples, seed)
    probs = []
    for i in range(samples):
        def add(x, _, i=i):
            x = x.clone()
            x[:, b:e] += draws[i]
            return x

        with torch.no_grad(), hook_modules(mt.model, mt.layout.embed, edit_output=add):
            probs.append(torch.softmax(mt.model(ids).logits[0, -1].float(), -1)[answer_id])
    return torch.stack(probs).mean()  # a 0-d tensor is a fine "float"


def restore_clean_row_first(mt, prompt, subject, answer_id, token, layer, kind="state", *, noise,
                            samples=10, seed=1):
    """Correct, the official code's way: row 0 runs clean in the same batch, its value is copied."""
    ids = mt.tokenizer(prompt, return_tensors="pt")["input_ids"].repeat(samples + 1, 1)
    b, e, draws = _draws(mt, prompt, subject, noise, samples, seed)
    name = mt.layout.module(kind, layer)

    def add(x, _):
        x = x.clone()
        x[1:, b:e] += draws
        return x

    def put(x, _):
        x = x.clone()
        x[1:, token] = x[0, token]
        return x

    with torch.no_grad(), hook_modules(mt.model, mt.layout.embed, edit_output=add), \
            hook_modules(mt.model, name, edit_output=put):
        probs = torch.softmax(mt.model(ids).logits[1:, -1].float(), -1)[:, answer_id]
    return probs.mean().item()


def trace_batched(mt, prompt, subject, answer_id, *, noise, samples=10, seed=1, group="token",
                  skip_before=False):
    """Correct: many cells per forward pass (all layers of one token, or every cell at once)."""
    ids = mt.tokenizer(prompt, return_tensors="pt")["input_ids"]
    n_tokens, n_layer = ids.shape[1], mt.n_layer
    b, e, draws = _draws(mt, prompt, subject, noise, samples, seed)
    names = [mt.layout.layer(l) for l in range(n_layer)]
    with torch.no_grad(), hook_modules(mt.model, names) as rec:
        mt.model(ids)
    clean = {n: rec[n].output[0] for n in names}
    cells = [(t, l) for t in range(n_tokens) for l in range(n_layer)]
    groups = [cells[i:i + n_layer] for i in range(0, len(cells), n_layer)] if group == "token" else [cells]
    scores = torch.zeros(n_tokens, n_layer)
    for cells_ in groups:
        batch = ids.repeat(len(cells_) * samples, 1)

        def add(x, _):
            x = x.clone()
            x[:, b:e] += draws.repeat(len(cells_), 1, 1)
            return x

        def put(x, name):
            x = x.clone()
            for j, (t, l) in enumerate(cells_):
                if names[l] == name:
                    x[j * samples:(j + 1) * samples, t] = clean[name][t]
            return x

        with torch.no_grad(), hook_modules(mt.model, mt.layout.embed, edit_output=add), \
                hook_modules(mt.model, names, edit_output=put):
            probs = torch.softmax(mt.model(batch).logits[:, -1].float(), -1)[:, answer_id]
        for j, (t, l) in enumerate(cells_):
            scores[t, l] = probs[j * samples:(j + 1) * samples].mean()
    if skip_before:  # mistake: cells before the subject left at 0
        scores[:b] = 0
    return scores


@pytest.mark.parametrize("check, fn", [
    (checks.check_corrupt, corrupted_one_row_per_pass),
    (checks.check_restore, restore_clean_row_first),
    (checks.check_trace, trace_batched),
    (checks.check_trace, wrong(trace_batched, group="all")),
])
def test_correct_variants_pass(capsys, mt, check, fn):
    ok, out = verdict(capsys, check, fn, mt)
    assert ok, out


def test_trace_tests_cells_before_the_subject(capsys, mt):
    ok, out = verdict(capsys, checks.check_trace, wrong(trace_batched, skip_before=True), mt)
    assert not ok and "before the subject" in out, out


def test_check_cases_cover_every_subject_position(mt):
    """Subject first, after other words, and right before the last token; multi-token subjects."""
    where = set()
    for prompt, subject in ct._cases(mt):
        b, e = subject_range(mt.tokenizer, prompt, subject)
        n = len(mt.tokenizer(prompt)["input_ids"])
        assert e - b >= 2
        where.add((b == 0, e == n - 1))
    assert where == {(True, False), (False, False), (False, True)}
    prompt, subject = ct._cases(mt)[2]
    assert subject_range(mt.tokenizer, prompt, subject)[0] > 0  # the trace check sees cells before it


# ---- buckets: a subject right before the last token, two middle tokens, pooled averages -------
def buckets_variant(results, *, skip_after_at_end=False, pooled=False):
    n_layer = results[0].scores.shape[1]
    sums, counts = torch.zeros(len(BUCKETS), n_layer), torch.zeros(len(BUCKETS))

    def add(i, rows):
        sums[i] += rows.sum(0)
        counts[i] += rows.shape[0]

    for r in results:
        v = r.scores - r.low
        b, e = r.subject_range
        last = v.shape[0] - 1
        add(0, v[b:b + 1])
        add(2, v[e - 1:e])
        add(5, v[last:])
        if not (skip_after_at_end and e == last):
            add(3, v[e:e + 1])
        for i, rows in ((1, v[b + 1:e - 1]), (4, v[e + 1:last])):
            if pooled:
                add(i, rows)
            elif rows.shape[0]:
                add(i, rows.mean(0, keepdim=True))
    return sums / counts.clamp(min=1)[:, None]


def test_bucket_fakes_are_discriminating():
    layouts = {(r.scores.shape[0], r.subject_range) for r in ct._fake_results()}
    assert any(e == n - 1 for n, (b, e) in layouts)  # first subsequent token = last token
    assert any(e - b - 2 >= 2 for n, (b, e) in layouts)  # two middle tokens
    assert any(b == 0 for n, (b, e) in layouts) and any(b > 0 for n, (b, e) in layouts)


@pytest.mark.parametrize("mistake, hint", [
    (dict(skip_after_at_end=True), "*is* the last token"),
    (dict(pooled=True), "pooled"),
])
def test_bucket_position_hints(capsys, mistake, hint):
    assert verdict(capsys, checks.check_buckets, buckets_variant)[0]
    ok, out = verdict(capsys, checks.check_buckets, wrong(buckets_variant, **mistake))
    assert not ok and hint in out, out


# ---- whatever the learner returns, a check prints a hint and never raises ---------------------
@pytest.mark.parametrize("check", [checks.check_subject_range, checks.check_corrupt,
                                   checks.check_restore, checks.check_window, checks.check_trace,
                                   checks.check_buckets])
@pytest.mark.parametrize("returned", [None, 3, "0.5", [1.0, 2.0], torch.zeros(2, 3), float("nan")])
def test_checks_never_raise(capsys, mt, check, returned):
    ok, out = verdict(capsys, check, lambda *a, **k: returned,
                      *(() if check in (checks.check_window, checks.check_buckets) else (mt,)))
    assert not ok, out


def test_window_hint_for_a_missing_return(capsys):
    ok, out = verdict(capsys, checks.check_window, lambda *a: None)
    assert not ok and "forget `return`" in out, out
