"""Checks for the causal-tracing exercises (``exercises/01_tracing_exercises.ipynb``).

Each ``check_xxx(fn)`` runs the learner's ``fn`` against the rome_lib reference on small inputs
(the embedded toy model by default) and prints ``✓ passed`` or a *specific* hint naming the most
likely mistake: noise on every token instead of the subject's, the first subject token instead of
the last, an off-by-one end index, fresh noise for every cell, the wrong layer or module restored,
probabilities averaged instead of indirect effects, ...

A check prints its verdict and returns None, so that a notebook cell ending with a check shows
the verdict only (no ``True`` under it; nbval runs cells without IPython's ``;`` suppression); it
also records it for graders (:mod:`rome_lib.checks.verdict`). Errors raised by the learner's
function (``NotImplementedError`` included) propagate unchanged; whatever the function *returns*
gets a hint, never an error from the check's own code.

The model: the ``mt`` argument, else ``load_model(os.environ.get("ROME_CHECK_MODEL", "toy"))`` on
the CPU, loaded once. The checks only compare the learner's function with the library's, so any
model works; the toy model is small enough to make every check take a second or two.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..hooks import get_module
from ..models import LoadedModel
from ..tokens import top_next_token
from .common import (
    as_float as _as_float, as_layers as _as_layers, as_tensor as _as_tensor, check_model as _model,
    n_tokens as _n_tokens, show as _show,
)
from .verdict import PASSED, failed as _failed, passed as _passed, verdict as _verdict
from ..tracing import (
    BUCKETS, TraceResult, bucket_scores, default_noise, encode, find_subject_range, known_facts,
    make_noise, restored_probability, trace_reference, window_layers,
)

SAMPLES, SEED = 4, 1  # few noise draws keep the checks fast; exact agreement does not need more

# Prompts whose tokenisation is interesting for any byte-level BPE: subject at the start, in the
# middle, several tokens long, with a leading space.
GENERIC_CASES = [
    ("The Space Needle is located in the city of", "Space Needle"),
    ("Space Needle is located in the city of", "Space Needle"),
    ("The mother tongue of Danielle Darrieux is", "Danielle Darrieux"),
    ("In Paris, the Eiffel Tower stands tall", "Eiffel Tower"),
]


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
_CASES: dict[int, list[tuple[str, str]]] = {}


def _cases(mt: LoadedModel) -> list[tuple[str, str]]:
    if id(mt) not in _CASES:
        _CASES[id(mt)] = _choose_cases(mt)
    return _CASES[id(mt)]


def _choose_cases(mt: LoadedModel) -> list[tuple[str, str]]:
    """Three short prompts with multi-token subjects, from the model's known facts where it has them,
    else the generic ones: the subject opening the prompt, the subject after other words, and the
    subject right before the last token (so every position relative to the subject is exercised)."""
    facts = [f for f in known_facts(mt) if _n_tokens(mt, f["prompt"]) <= 10]
    chosen = []
    for at_start, before_last in ((True, False), (False, False), (False, True)):
        for f in sorted(facts, key=lambda f: -len(f["subject"])):
            n = _n_tokens(mt, f["prompt"])
            b, e = find_subject_range(mt.tokenizer, f["prompt"], f["subject"])
            if e - b >= 2 and (b == 0) == at_start and (e == n - 1) == before_last:
                chosen.append((f["prompt"], f["subject"]))
                break
    return chosen if len(chosen) == 3 else [GENERIC_CASES[1], GENERIC_CASES[0], GENERIC_CASES[2]]


def _noise(mt: LoadedModel) -> float:
    return default_noise(mt) if known_facts(mt) else 3 * 0.1


def _close(a: float, b: float) -> bool:
    """Equal up to float32 batching noise (relative ~1e-6), far below any effect a mistake has, even
    on the small probabilities of a corrupted run."""
    return abs(a - b) <= 1e-6 + 1e-4 * abs(b)


class _InputSpy:
    """Records the input of the first transformer block in every forward pass: that is the token
    embedding (+ position embedding), so it shows exactly where the learner's noise went."""

    def __init__(self, mt: LoadedModel):
        self.mt, self.passes = mt, []

    def __enter__(self):
        block = get_module(self.mt.model, self.mt.layout.layer(0))

        def hook(module, args, kwargs):
            x = args[0] if args else kwargs.get("hidden_states")
            if isinstance(x, torch.Tensor):
                self.passes.append(x.detach().clone())

        self.handle = block.register_forward_pre_hook(hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _clean_block_input(mt: LoadedModel, ids: torch.Tensor) -> torch.Tensor:
    with _InputSpy(mt) as spy, torch.no_grad():
        mt.model(ids, logits_to_keep=1)
    return spy.passes[0][0]


def _spied_call(mt: LoadedModel, call: Callable[[], object]) -> tuple[object, list[torch.Tensor]]:
    """Run the learner's ``call()`` watching what it feeds the first block: (its result, the inputs of
    every forward pass), for :func:`_noise_hint` to read when the result is wrong."""
    with _InputSpy(mt) as spy:
        raw = call()
    return raw, spy.passes


def _noisy_rows(clean: torch.Tensor, passes: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per forward pass of the prompt (any batch size), the noise of its noisy rows [rows, T, d]."""
    out = []
    for x in passes:
        if x.dim() != 3 or x.shape[1:] != clean.shape:
            continue
        delta = x - clean
        rows = (delta.abs().amax(-1) > 1e-5 * (1 + clean.abs().amax())).any(-1)
        if rows.any():
            out.append(delta[rows])
    return out


def _draw_index(row: torch.Tensor, draws: torch.Tensor) -> int | None:
    """Which reference draw ``row`` ([e − b, d]) is, or None."""
    for i, draw in enumerate(draws):
        if torch.allclose(row, draw, atol=1e-4, rtol=1e-3):
            return i
    return None


def _noise_hint(mt: LoadedModel, prompt: str, subject: str, passes: list[torch.Tensor],
                noise: float, samples: int = SAMPLES, seed: int = SEED) -> str | None:
    """Where did the noise go? A hint for the first thing that differs from the reference (subject
    tokens only, make_noise's draws, one draw per row, every draw used, the same draws in every pass),
    or None when all is as expected. How rows are grouped into passes does not matter."""
    ids = encode(mt, prompt)
    b, e = find_subject_range(mt.tokenizer, prompt, subject)
    clean = _clean_block_input(mt, ids)
    noisy = _noisy_rows(clean, passes)
    if not noisy:
        return ("No noise reached the model: the embeddings of every forward pass were clean. Add the "
                "noise inside an edit_output hook on mt.layout.embed that is active during the forward "
                "pass, and make the hook return the noised tensor.")
    changed = noisy[0].abs().amax(-1) > 1e-5 * (1 + clean.abs().amax())
    tokens = sorted(set(changed.any(0).nonzero().flatten().tolist()))
    subject_tokens = list(range(b, e))
    if tokens != subject_tokens:
        if tokens == list(range(clean.shape[0])):
            return (f"You noised every token of the prompt. Corrupt only the subject's tokens "
                    f"{subject_tokens} (ids[b:e] with (b, e) from find_subject_range): the question "
                    "is what the model knows *about the subject*, so the rest of the prompt stays clean.")
        outside = [t for t in tokens if t not in subject_tokens]
        if outside:
            return (f"Tokens outside the subject were noised: {outside} (the subject is tokens "
                    f"{subject_tokens}). Check your slice: x[:, b:e] with e exclusive.")
        if tokens == [e - 1]:
            return (f"Only the last subject token ({e - 1}) was noised; noise every subject token "
                    f"{subject_tokens}.")
        if tokens == [b]:
            return (f"Only the first subject token ({b}) was noised; noise every subject token "
                    f"{subject_tokens} (is your end index one too small?).")
        return f"Only tokens {tokens} were noised; noise every subject token {subject_tokens}."
    draws = make_noise(samples, e - b, clean.shape[-1], noise, seed).to(clean)
    found = [[_draw_index(row[b:e], draws) for row in rows] for rows in noisy]
    if all(i is None for pass_ in found for i in pass_):
        first = noisy[0][:, b:e]
        if samples > 1 and first.shape[0] > 1 and torch.allclose(first[:1], first[1:], atol=1e-6):
            return ("Every row got the same noise. Row i of the batch needs its own draw draws[i] "
                    "(draws has shape [samples, e - b, d]).")
        if noise and _draw_index(first[0], draws / noise) is not None:
            return ("Your draws are standard normal: multiply them by the noise level ν "
                    f"(noise={noise:.3f}), or use make_noise(samples, e - b, d, noise, seed).")
        return ("The noise lands on the right tokens but is not the reference's draws. Use "
                "rome_lib.tracing.make_noise(samples, e - b, d, noise, seed) so your numbers can be "
                "compared with the library's.")
    if any(i is None for pass_ in found for i in pass_):
        return ("The noise differs between forward passes: some rows carry make_noise's draws and "
                "others carry new ones. Use the same noise draws for every cell (make_noise with the "
                "same seed each time, or draw once and reuse): the scores of different cells are only "
                "comparable when they start from the same corruption.")
    used = {i for pass_ in found for i in pass_}
    if len(used) == 1 and samples > 1:
        return ("Every row got the same noise. Row i of the batch needs its own draw draws[i] "
                "(draws has shape [samples, e - b, d]).")
    if len(used) < samples:
        return (f"Only {len(used)} of the {samples} noise draws were used (samples={samples}): run one "
                "noisy row per draw, draws[i] in row i.")
    return None


# ----------------------------------------------------------------------------------------------
# Exercise 1: the subject's token range from character offsets
# ----------------------------------------------------------------------------------------------
@_verdict
def check_subject_range(fn: Callable, mt: LoadedModel | None = None) -> bool:
    """``fn(tokenizer, prompt, subject) -> (b, e)``: the subject's tokens are ids[b:e]."""
    mt = _model(mt)
    tok = mt.tokenizer
    for prompt, subject in GENERIC_CASES + _cases(mt):
        want = find_subject_range(tok, prompt, subject)
        raw = fn(tok, prompt, subject)
        got = _as_layers(raw)
        if got is None or len(got) != 2:
            return _failed(f"Return a pair of ints (b, e), not {_show(raw)}.")
        got = tuple(got)
        if got == want:
            continue
        b, e = want
        enc = tok(prompt, return_offsets_mapping=True)
        pieces = [tok.decode([i]) for i in enc["input_ids"]]
        start = prompt.find(subject)
        where = f"for prompt {prompt!r} and subject {subject!r}"
        if got == (start, start + len(subject)):
            return _failed(f"You returned character positions {got} {where}; return *token* indices: "
                           "the tokens whose offsets overlap the subject's characters.")
        if got == (b, e - 1):
            return _failed(f"Off by one at the end {where}: got {got}, expected {want}. e is exclusive "
                           "(one past the last subject token), so that ids[b:e] is the subject, as in "
                           "a Python slice.")
        if got == (b, e + 1):
            return _failed(f"Your end index is one too far {where}: got {got}, expected {want} "
                           f"(ids[b:e] would include {pieces[e]!r}).")
        if got == (b + 1, e) and enc["offset_mapping"][b][0] < start:
            return _failed(f"You missed the first subject token {pieces[b]!r} {where}: its offsets "
                           f"{tuple(enc['offset_mapping'][b])} start at the space before the subject "
                           f"(the subject starts at character {start}). Count every token that "
                           "*overlaps* [start, end), not only tokens that lie inside it.")
        if got == (b, b + 1) and e - b > 1:
            return _failed(f"Only the first subject token {where}: got {got}, expected {want}. The "
                           "range must cover every subject token.")
        if got == (e - 1, e) and e - b > 1:
            return _failed(f"Only the last subject token {where}: got {got}, expected {want}.")
        return _failed(f"Wrong range {where}: got {got} = {pieces[got[0]:got[1]]}, expected {want} = "
                       f"{pieces[b:e]}.")
    return _passed()


# ----------------------------------------------------------------------------------------------
# Exercise 2: corrupt the subject
# ----------------------------------------------------------------------------------------------
@_verdict
def check_corrupt(fn: Callable, mt: LoadedModel | None = None) -> bool:
    """``fn(mt, prompt, subject, answer_id, *, noise, samples, seed) -> float``: the mean P[answer]
    over ``samples`` runs with noise ``make_noise(samples, e - b, d, noise, seed)`` added to the
    subject's token embeddings."""
    mt = _model(mt)
    noise = _noise(mt)
    for prompt, subject in _cases(mt):
        answer_id = top_next_token(mt, prompt)
        ref = restored_probability(mt, prompt, subject, (), samples=SAMPLES, noise=noise, seed=SEED,
                                   answer_id=answer_id)
        raw, passes = _spied_call(mt, lambda: fn(
            mt, prompt, subject, answer_id, noise=noise, samples=SAMPLES, seed=SEED))
        got = _as_float(raw)
        low, high = ref["corrupted"], ref["clean"]
        if got is not None and _close(got, low):
            continue
        hint = _noise_hint(mt, prompt, subject, passes, noise)
        if hint:
            return _failed(hint)
        if got is None:
            return _failed(f"Return one float (the mean probability), not {_show(raw)}.")
        if _close(got, (high + SAMPLES * low) / (SAMPLES + 1)):
            return _failed("You averaged the clean row in too: average P[answer] over the noisy rows "
                           "only.")
        if _close(got, high):
            return _failed("You returned the clean probability: the noise must be active during the "
                           "forward pass whose probabilities you read.")
        if got < 0 or got > 1:
            return _failed(f"{got:.4f} is not a probability: take the softmax of the logits at the last "
                           "position, then the answer's entry.")
        return _failed(f"The noise is right, but the probability is {got:.4f}, expected {low:.4f}. "
                       "Read the logits at the *last* position, softmax over the vocabulary, take "
                       "answer_id, and average over the noisy rows.")
    return _passed()


# ----------------------------------------------------------------------------------------------
# Exercise 3: corrupt, then restore one state
# ----------------------------------------------------------------------------------------------
def _restore_cases(mt: LoadedModel) -> list[tuple[str, str, int, int, str]]:
    """(prompt, subject, token, layer, kind): the last subject token and the last token, states, MLP
    and attention outputs, chosen so that restoring each cell changes P[answer] visibly."""
    n = mt.layout.n_layer
    out = []
    for i, (prompt, subject) in enumerate(_cases(mt)):
        _, e = find_subject_range(mt.tokenizer, prompt, subject)
        last = _n_tokens(mt, prompt) - 1
        out.append((prompt, subject, e - 1, n // 3 if i == 0 else 1, "state"))
        out.append((prompt, subject, e - 1, n // 2, "mlp"))
        out.append((prompt, subject, last, n - 2, "attn"))
    return out


def _ref_restored(mt, prompt, subject, answer_id, noise, token, layer, kind) -> float:
    return restored_probability(mt, prompt, subject, [(token, layer)], kind, samples=SAMPLES,
                                noise=noise, seed=SEED, answer_id=answer_id)["restored"]


@_verdict
def check_restore(fn: Callable, mt: LoadedModel | None = None) -> bool:
    """``fn(mt, prompt, subject, answer_id, token, layer, kind="state", *, noise, samples, seed)
    -> float``: corrupt the subject, copy the clean output of ``layout.module(kind, layer)`` at
    ``token`` into every noisy row, return the mean P[answer]."""
    mt = _model(mt)
    noise = _noise(mt)
    n_layer = mt.layout.n_layer
    for prompt, subject, token, layer, kind in _restore_cases(mt):
        answer_id = top_next_token(mt, prompt)
        want = _ref_restored(mt, prompt, subject, answer_id, noise, token, layer, kind)
        raw, passes = _spied_call(mt, lambda: fn(
            mt, prompt, subject, answer_id, token, layer, kind, noise=noise, samples=SAMPLES,
            seed=SEED))
        got = _as_float(raw)
        if got is not None and _close(got, want):
            continue
        hint = _noise_hint(mt, prompt, subject, passes, noise)
        if hint:
            return _failed(hint)
        if got is None:
            return _failed(f"Return one float (the mean restored probability), not {_show(raw)}.")
        cell = f"(token {token}, layer {layer}, kind {kind!r})"
        ref = restored_probability(mt, prompt, subject, (), samples=SAMPLES, noise=noise, seed=SEED,
                                   answer_id=answer_id)
        for other in (layer - 1, layer + 1):
            if 0 <= other < n_layer and _close(got, _ref_restored(mt, prompt, subject, answer_id, noise,
                                                                  token, other, kind)):
                return _failed(f"You restored layer {other} instead of layer {layer} {cell}. Off by one? "
                               "hidden_states[0] of output_hidden_states is the embedding output, so "
                               "hidden_states[l + 1] is the output of block l; layout.module(kind, "
                               "layer) names the module to patch directly.")
        for other in ("state", "mlp", "attn"):
            if other != kind and _close(got, _ref_restored(mt, prompt, subject, answer_id, noise, token,
                                                           layer, other)):
                return _failed(f"You restored the {other!r} output instead of the {kind!r} output "
                               f"{cell}: patch layout.module(kind, layer) = "
                               f"{mt.layout.module(kind, layer)!r}.")
        b, e = find_subject_range(mt.tokenizer, prompt, subject)
        for other in sorted({b, token - 1, token + 1} - {token}):
            if 0 <= other < _n_tokens(mt, prompt) and _close(
                    got, _ref_restored(mt, prompt, subject, answer_id, noise, other, layer, kind)):
                return _failed(f"You restored token {other} instead of token {token} {cell}.")
        if _close(got, ref["corrupted"]):
            return _failed(f"Restoring {cell} had no effect: you returned the corrupted probability "
                           f"{got:.4f} (expected {want:.4f}). Does your edit hook return the patched "
                           "tensor, is it on layout.module(kind, layer), and do you copy the clean "
                           "values into the noisy rows?")
        every = restored_probability(mt, prompt, subject,
                                     [(t, layer) for t in range(_n_tokens(mt, prompt))], kind,
                                     samples=SAMPLES, noise=noise, seed=SEED, answer_id=answer_id)
        if _close(got, every["restored"]):
            return _failed(f"You restored every token at layer {layer}, not only token {token} {cell}: "
                           "patch x[noisy rows, token] only.")
        if _close(got, ref["clean"]):
            return _failed(f"You returned the clean probability {got:.4f} {cell}: is the noise active "
                           "in the same forward pass as the restoration?")
        return _failed(f"Restored probability {got:.4f} {cell}, expected {want:.4f}. The clean value "
                       "to copy is the module's output at that token in a clean run of the same "
                       "prompt.")
    return _passed()


# ----------------------------------------------------------------------------------------------
# Exercise 4: the window of layers
# ----------------------------------------------------------------------------------------------
@_verdict
def check_window(fn: Callable, mt: LoadedModel | None = None) -> bool:
    """``fn(layer, window, n_layer) -> list of layers``: l − w//2 … l + ⌈w/2⌉ − 1, clipped."""
    for n_layer, window in ((48, 10), (8, 2), (8, 3), (12, 4)):
        for layer in range(n_layer):
            want = list(window_layers(layer, window, n_layer))
            raw = fn(layer, window, n_layer)
            where = f"for layer={layer}, window={window}, n_layer={n_layer}"
            got = _as_layers(raw)
            if got is None:
                forgot = " (did you forget `return`?)" if raw is None else ""
                return _failed(f"Return the list of layers {where}, e.g. {want}, not "
                               f"{_show(raw)}{forgot}.")
            if got == want:
                continue
            if any(l < 0 or l >= n_layer for l in got):
                return _failed(f"Got {got} {where}: clip the window to the layers that exist, "
                               f"0 … {n_layer - 1}.")
            if got == list(range(layer, min(n_layer, layer + window))):
                return _failed(f"Got {got} {where}: the window is *centred* on the layer, "
                               f"l − w//2 … l + ⌈w/2⌉ − 1 (the official code's l−5 … l+4 for w = 10), "
                               f"expected {want}.")
            if len(got) == len(want) + 1:
                return _failed(f"Got {got} {where}: one layer too many, the window holds {window} "
                               f"layers before clipping (expected {want}).")
            return _failed(f"Got {got} {where}, expected {want}.")
    return _passed()


# ----------------------------------------------------------------------------------------------
# Exercise 5: the trace loop, one forward pass per cell
# ----------------------------------------------------------------------------------------------
@_verdict
def check_trace(fn: Callable, mt: LoadedModel | None = None) -> bool:
    """``fn(mt, prompt, subject, answer_id, *, noise, samples, seed) -> tensor [T, L]``: for every
    token t and layer l, the mean P[answer] with the state h_t^(l) restored."""
    mt = _model(mt)
    noise = _noise(mt)
    prompt, subject = _cases(mt)[2]  # words before the subject, and it ends right before the last token
    answer_id = top_next_token(mt, prompt)
    ref = trace_reference(mt, prompt, subject, "state", samples=SAMPLES, noise=noise, seed=SEED,
                          answer_id=answer_id)
    raw, passes = _spied_call(mt, lambda: fn(
        mt, prompt, subject, answer_id, noise=noise, samples=SAMPLES, seed=SEED))
    want = ref.scores
    got = _as_tensor(raw)
    if got is not None and got.shape == want.shape and torch.allclose(got, want, atol=1e-4):
        return _passed()
    hint = _noise_hint(mt, prompt, subject, passes, noise)
    if hint:
        return _failed(hint)
    if got is None:
        return _failed(f"Return a tensor of shape [tokens, layers], not {_show(raw)}.")
    if got.shape == want.T.shape and torch.allclose(got, want.T, atol=1e-4) and (
            got.shape != want.shape or not torch.allclose(got, want, atol=1e-4)):  # square ones too
        return _failed(f"Your scores are transposed: expected [tokens, layers] = {tuple(want.shape)}, "
                       "scores[t, l] for token t and layer l.")
    if got.shape != want.shape:
        if got.shape == want.T.shape:
            return _failed(f"Your scores are transposed: shape {tuple(got.shape)}, expected "
                           f"{tuple(want.shape)} = [tokens, layers] (scores[t, l]).")
        return _failed(f"Shape {tuple(got.shape)}, expected {tuple(want.shape)} = [tokens, layers].")
    b, _ = ref.subject_range
    if b and torch.allclose(got[b:], want[b:], atol=1e-4):
        return _failed(f"Your rows for the tokens before the subject (0 … {b - 1}) differ from the "
                       "reference, the rest is right. Restoring a token before the subject changes "
                       "nothing (the noise cannot reach it through causal attention), so its score is "
                       f"the corrupted probability, {ref.low:.4f} here, not 0: trace every cell.")
    if torch.allclose(got, want - ref.low, atol=1e-4):
        return _failed("You returned indirect effects (score − corrupted probability). Return the "
                       "scores themselves, P[answer] with the cell restored; subtract ref.low later.")
    if torch.allclose(got[:, 1:], want[:, :-1], atol=1e-4):
        return _failed("Your column l holds layer l − 1: off by one layer. Restore the output of "
                       "block l in column l (hidden_states[l + 1] if you used output_hidden_states).")
    if torch.allclose(got[:, :-1], want[:, 1:], atol=1e-4):
        return _failed("Your column l holds layer l + 1: off by one layer. Restore the output of "
                       "block l in column l.")
    t, l = divmod(int((got - want).abs().argmax()), want.shape[1])
    return _failed(f"scores[{t}, {l}] = {got[t, l]:.4f}, expected {want[t, l]:.4f} (max difference "
                   f"{(got - want).abs().max():.4f}). Is each cell restoring exactly h_t^(l) = the output "
                   "of layout.layer(l) at token t, on the same noise?")


# ----------------------------------------------------------------------------------------------
# Exercise 6: average indirect effects per token bucket
# ----------------------------------------------------------------------------------------------
def _fake_results(n_layer: int = 5) -> list[TraceResult]:
    """Traces with random scores and subject ranges that leave different buckets empty: one- to
    four-token subjects (two middle tokens), at the start, in the middle and right before the last
    token (whose first subsequent token is then the last token)."""
    generator = torch.Generator().manual_seed(0)
    layouts = [(9, (2, 5)), (6, (0, 1)), (7, (1, 4)), (5, (1, 3)), (8, (3, 6)), (6, (1, 5)),
               (9, (0, 4))]
    out = []
    for n_tokens, (b, e) in layouts:
        scores = torch.rand(n_tokens, n_layer, generator=generator)
        low = float(torch.rand((), generator=generator)) * 0.3
        out.append(TraceResult(prompt="", subject="", kind="state", tokens=[""] * n_tokens,
                               subject_range=(b, e), answer="", answer_id=0, scores=scores, low=low,
                               high=1.0, window=1))
    return out


def _buckets_variant(results, *, effects=True, last_subject=True, shift=0, per_fact=False,
                     further_with_last=False, skip_after_at_end=False,
                     pooled=False) -> torch.Tensor:
    """The reference average (all defaults) and the usual mistakes (one changed argument each)."""
    n_layer = results[0].scores.shape[1]
    sums, counts = torch.zeros(len(BUCKETS), n_layer), torch.zeros(len(BUCKETS))
    for r in results:
        values = r.scores - r.low if effects else r.scores
        b, e = r.subject_range
        last = values.shape[0] - 1
        rows = bucket_scores(values, (b, e + shift))
        if not last_subject:
            rows[2] = values[b]
        if further_with_last and e + 1 < values.shape[0]:
            rows[4] = values[e + 1:].mean(0)
        if skip_after_at_end and e == last:
            rows[3] = None
        if pooled:  # every middle / further token counts once, as the official read_knowlege
            for i, group in ((1, values[b + 1:e - 1]), (4, values[e + 1:last])):
                sums[i] += group.sum(0)
                counts[i] += group.shape[0]
                rows[i] = None
        for i, row in enumerate(rows):
            if row is not None:
                sums[i] += row
                counts[i] += 1
    if per_fact:
        return sums / len(results)
    return sums / counts.clamp(min=1)[:, None]


@_verdict
def check_buckets(fn: Callable, mt: LoadedModel | None = None) -> bool:
    """``fn(results) -> tensor [6, L]``: the average indirect effect per token bucket (BUCKETS order)
    and layer over a list of TraceResult, skipping facts whose bucket is empty."""
    results = _fake_results()
    raw = fn(results)
    got = _as_tensor(raw)
    if got is None:
        return _failed(f"Return a tensor of shape [6, layers], not {_show(raw)}.")
    want = _buckets_variant(results)
    if got.shape != want.shape:
        return _failed(f"Shape {tuple(got.shape)}, expected {tuple(want.shape)} = [6 buckets, layers] "
                       f"in the order {', '.join(BUCKETS)}.")
    if torch.isnan(got).any():
        rows = sorted({BUCKETS[i] for i in torch.isnan(got).any(1).nonzero().flatten().tolist()})
        return _failed(f"NaN in {rows}: a fact with no token in a bucket (e.g. a one-token subject has "
                       "no middle tokens) must be skipped for that bucket, not averaged as an empty "
                       "mean.")
    if torch.allclose(got, want, atol=1e-5):
        return _passed()
    mistakes = [
        (dict(effects=False), "You averaged probabilities, not indirect effects. The indirect effect of "
         "a cell is its score minus that fact's corrupted probability (r.scores − r.low); average "
         "those, so facts with a high corrupted baseline do not look important."),
        (dict(last_subject=False), "Your 'last_subject' row holds the *first* subject token. The last "
         "subject token is e − 1 for the range (b, e)."),
        (dict(shift=1), "Off by one: your last subject token is e, the first token *after* the "
         "subject. With the range (b, e), e is exclusive, so the last subject token is e − 1."),
        (dict(shift=-1), "Off by one: your last subject token is e − 2. With the range (b, e), e is "
         "exclusive, so the last subject token is e − 1 and the first subsequent token is e."),
        (dict(per_fact=True), "You divided every bucket by the number of facts. Facts with an empty "
         "bucket (no middle subject tokens, no further tokens) must not count in that bucket's "
         "average: divide by the number of facts that have the bucket."),
        (dict(further_with_last=True), "Your 'further' row includes the last token. 'Further tokens' "
         "are those after the first subsequent token and *before* the last token, which has its own "
         "row."),
        (dict(skip_after_at_end=True), "When the subject ends right before the last token, its first "
         "subsequent token *is* the last token: count it in both rows (as the paper's code, "
         "read_knowlege, does). Only the 'further' row is empty then."),
        (dict(pooled=True), "You averaged the middle and further rows over all their tokens pooled "
         "across facts (which is what the official read_knowlege does). This exercise, like "
         "rome_lib.tracing.bucket_scores, takes each fact's mean first and then the mean over facts, "
         "so that a long subject does not weigh more than a short one."),
    ]
    for kwargs, hint in mistakes:
        if torch.allclose(got, _buckets_variant(results, **kwargs), atol=1e-5):
            return _failed(hint)
    bad = [BUCKETS[i] for i in range(len(BUCKETS)) if not torch.allclose(got[i], want[i], atol=1e-5)]
    return _failed(f"Rows {bad} differ from the reference. Order: {', '.join(BUCKETS)}; middle and "
                   "further are means over their tokens per fact, then averaged over facts.")


__all__ = ["PASSED", "check_subject_range", "check_corrupt", "check_restore", "check_window",
           "check_trace", "check_buckets"]
