import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from rome_lib import tracing
from rome_lib.tracing import (
    BUCKETS, TraceResult, average_indirect_effects, bucket_scores, default_window,
    find_subject_range, pool_aie, restored_probability, trace, trace_reference, window_layers,
)

from .conftest import save_and_load

PROMPT, SUBJECT = "The Space Needle is located in the city of", "Space Needle"


@pytest.fixture(scope="module")
def peaky_gpt2(tmp_path_factory, tokenizer):
    """Random GPT-2 with large embeddings, so predictions are confident and restoring a cell
    moves P[answer] a lot: then a 1e-5 agreement between two implementations means something."""
    torch.manual_seed(1)
    config = GPT2Config(n_layer=4, n_embd=64, n_head=4, vocab_size=len(tokenizer), n_positions=128,
                        initializer_range=0.3)
    return save_and_load(GPT2LMHeadModel(config), tmp_path_factory.mktemp("peaky"), tokenizer)


# ---- subject range ---------------------------------------------------------------------------
def _pieces(tokenizer, prompt, subject, **kw):
    b, e = find_subject_range(tokenizer, prompt, subject, **kw)
    ids = tokenizer(prompt)["input_ids"]
    return tokenizer.decode(ids[b:e])


@pytest.mark.parametrize("prompt, subject, expected", [
    ("The Space Needle is located in", "Space Needle", " Space Needle"),   # leading space
    ("Space Needle is located in", "Space Needle", "Space Needle"),        # at the very start
    ("Toko Yasuda produces music", "Toko Yasuda", "Toko Yasuda"),
    ("In Paris, the Eiffel Tower", "Eiffel", " Eiffel"),
])
def test_subject_range(tokenizer, prompt, subject, expected):
    assert _pieces(tokenizer, prompt, subject) == expected


def test_repeated_subject_picks_the_requested_occurrence(tokenizer):
    prompt = "Seattle is near Seattle"
    first = find_subject_range(tokenizer, prompt, "Seattle")
    second = find_subject_range(tokenizer, prompt, "Seattle", occurrence=1)
    assert first[0] == 0 and second[0] > first[1] - 1
    with pytest.raises(ValueError, match="occurs 2 time"):
        find_subject_range(tokenizer, prompt, "Seattle", occurrence=2)


def test_subject_not_in_prompt_is_a_clear_error(tokenizer):
    with pytest.raises(ValueError, match="does not occur in the prompt"):
        find_subject_range(tokenizer, PROMPT, "Eiffel Tower")
    with pytest.raises(ValueError, match="empty"):
        find_subject_range(tokenizer, PROMPT, " ")


# ---- windows ---------------------------------------------------------------------------------
def test_window_matches_the_official_code_on_gpt2_xl():
    assert default_window(48) == 10
    assert list(window_layers(20, 10, 48)) == list(range(15, 25))   # l-5 ... l+4
    assert list(window_layers(2, 10, 48)) == list(range(0, 7))      # clipped at the bottom
    assert list(window_layers(46, 10, 48)) == list(range(41, 48))   # and at the top
    assert default_window(12) == 2 and default_window(6) == 2


# ---- corrupt and restore ---------------------------------------------------------------------
def test_restoring_every_state_reproduces_the_clean_run(peaky_gpt2):
    n_tokens = len(peaky_gpt2.tokenizer(PROMPT)["input_ids"])
    for layer in range(peaky_gpt2.n_layer):
        p = restored_probability(peaky_gpt2, PROMPT, SUBJECT, [(t, layer) for t in range(n_tokens)],
                                 noise=1.0)
        assert p["restored"] == pytest.approx(p["clean"], abs=1e-6)
    assert abs(p["corrupted"] - p["clean"]) > 1e-3  # the noise did something


def test_zero_noise_gives_no_total_effect(peaky_gpt2):
    result = trace(peaky_gpt2, PROMPT, SUBJECT, "state", noise=0.0)
    assert result.high == pytest.approx(result.low, abs=1e-6)
    assert torch.allclose(result.scores, torch.full_like(result.scores, result.high), atol=1e-6)


def test_trace_scores_obey_the_causal_structure(peaky_gpt2):
    result = trace(peaky_gpt2, PROMPT, SUBJECT, "state", noise=1.0)
    b, _ = result.subject_range
    last = peaky_gpt2.n_layer - 1
    # Restoring the last token's final state gives back the clean output exactly ...
    assert result.scores[-1, last] == pytest.approx(result.high, abs=1e-6)
    # ... final states of other tokens are never read, and tokens before the subject are clean.
    assert torch.allclose(result.scores[:-1, last], torch.tensor(result.low), atol=1e-6)
    assert torch.allclose(result.scores[:b], torch.tensor(result.low), atol=1e-6)


@pytest.mark.parametrize("fixture", ["peaky_gpt2", "tiny_gptj"])
@pytest.mark.parametrize("kind, sever", [("state", None), ("mlp", None), ("attn", None),
                                         ("state", "mlp"), ("state", "attn")])
def test_batched_equals_per_cell_reference(request, fixture, kind, sever):
    mt = request.getfixturevalue(fixture)
    kw = dict(noise=1.0, samples=4, sever=sever)
    batched = trace(mt, PROMPT, SUBJECT, kind, memory_budget=200_000, **kw)  # forces several chunks
    reference = trace_reference(mt, PROMPT, SUBJECT, kind, **kw)
    assert batched.low == pytest.approx(reference.low, abs=1e-6)
    assert (batched.scores - reference.scores).abs().max() <= 1e-5
    # Every cell starting at its own first restored layer (the default on a CPU for big models).
    skipping = trace(mt, PROMPT, SUBJECT, kind, layer_groups=mt.n_layer, **kw)
    assert (skipping.scores - reference.scores).abs().max() <= 1e-5
    if fixture == "peaky_gpt2":
        assert batched.scores.max() - batched.scores.min() > 0.01  # the comparison can fail


@pytest.mark.parametrize("layer_groups", [1, 3, 4])
@pytest.mark.parametrize("kind", ["state", "mlp"])
def test_every_split_into_start_layers_gives_the_reference_scores(peaky_gpt2, kind, layer_groups):
    kw = dict(noise=1.0, samples=3)
    fast = trace(peaky_gpt2, PROMPT, SUBJECT, kind, layer_groups=layer_groups, **kw)
    reference = trace_reference(peaky_gpt2, PROMPT, SUBJECT, kind, **kw)
    assert (fast.scores - reference.scores).abs().max() <= 1e-5


def test_the_cut_block_list_is_put_back(peaky_gpt2):
    blocks = peaky_gpt2.model.transformer.h
    with pytest.raises(RuntimeError):
        with tracing._blocks_from(peaky_gpt2, 2):
            assert len(peaky_gpt2.model.transformer.h) == peaky_gpt2.n_layer - 2
            raise RuntimeError
    assert peaky_gpt2.model.transformer.h is blocks
    with pytest.raises(ValueError, match="layer_groups"):
        trace(peaky_gpt2, PROMPT, SUBJECT, "state", layer_groups=0)


def test_severing_changes_the_state_effect(peaky_gpt2):
    plain = trace(peaky_gpt2, PROMPT, SUBJECT, "state", noise=1.0)
    severed = trace(peaky_gpt2, PROMPT, SUBJECT, "state", noise=1.0, sever="mlp")
    _, e = plain.subject_range
    assert not torch.allclose(plain.scores[e - 1, :-1], severed.scores[e - 1, :-1])


def test_bad_kind_is_a_clear_error(tiny_gpt2):
    with pytest.raises(ValueError, match="Unknown kind"):
        trace(tiny_gpt2, PROMPT, SUBJECT, "resid")


# ---- averages --------------------------------------------------------------------------------
def test_buckets_follow_the_official_grouping():
    scores = torch.arange(8.0)[:, None].repeat(1, 2)  # token i scores i at every layer
    rows = bucket_scores(scores, (1, 4))   # subject tokens 1, 2, 3; last token 7
    assert [r[0].item() for r in rows] == [1, 2, 3, 4, 5.5, 7]
    rows = bucket_scores(scores[:6], (2, 3))  # one-token subject: no middle; further = token 4
    assert rows[1] is None and rows[0][0] == rows[2][0] == 2 and rows[4][0] == 4


def _fake_trace(scores: list[float], subject_range: tuple[int, int], low: float) -> TraceResult:
    """A one-layer trace whose token i scores ``scores[i]``."""
    tokens = [str(i) for i in range(len(scores))]
    return TraceResult(prompt="", subject="", kind="mlp", tokens=tokens, subject_range=subject_range,
                       answer="", answer_id=0, scores=torch.tensor(scores)[:, None], low=low,
                       high=1.0, window=1)


def test_pooling_per_fact_and_the_official_way_by_hand():
    # Fact A: 6 tokens, subject 1..3 (middle: token 2), one token after it, no further tokens.
    # Fact B: 8 tokens, subject 0..3 (middle: tokens 1, 2), further tokens 5, 6.
    a = _fake_trace([0.0, 0.1, 0.2, 0.3, 0.4, 0.5], (1, 4), low=0.1)
    b = _fake_trace([0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4], (0, 4), low=0.5)
    fact = pool_aie([a, b], "fact")[:, 0].tolist()
    official = pool_aie([a, b], "official")[:, 0].tolist()
    # One-row buckets agree: first subject (0.1 - 0.1 + 0.0 - 0.5) / 2, last subject, first after, last.
    for i, expected in [(0, -0.25), (2, (0.2 + 0.1) / 2), (3, (0.3 + 0.3) / 2), (5, (0.4 + 0.9) / 2)]:
        assert fact[i] == pytest.approx(expected) and official[i] == pytest.approx(expected)
    # Middle: per fact ((0.2 - 0.1) + (0.3 - 0.5)) / 2; pooled rows mean(0.2, 0.2, 0.4) - mean low 0.3.
    assert fact[1] == pytest.approx(-0.05) and official[1] == pytest.approx(0.8 / 3 - 0.3)
    # Further: only B has rows; per fact 1.1 - 0.5, official 1.1 - the mean low of *all* facts.
    assert fact[4] == pytest.approx(0.6) and official[4] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="pooling"):
        pool_aie([a], "mean")


def test_aie_averages_indirect_effects(peaky_gpt2):
    facts = [{"prompt": PROMPT, "subject": SUBJECT},
             {"prompt": "Michael Jordan plays the sport of", "subject": "Michael Jordan"}]
    result = average_indirect_effects(peaky_gpt2, facts, noise=1.0, samples=3, progress=False)
    singles = [trace(peaky_gpt2, f["prompt"], f["subject"], "mlp", noise=1.0, samples=3)
               for f in facts]
    last = BUCKETS.index("last")
    expected = sum(r.indirect_effects[-1] for r in singles) / 2
    assert torch.allclose(result.kinds["mlp"][last], expected, atol=1e-6)
    assert torch.allclose(result.kinds["mlp"], pool_aie(singles, "fact"), atol=1e-6)
    assert result.ate == pytest.approx(sum(r.high - r.low for r in singles) / 2, abs=1e-6)
    assert result.to_json()["buckets"] == list(BUCKETS)


def test_toy_default_noise_uses_its_known_facts(monkeypatch, peaky_gpt2):
    monkeypatch.setattr(tracing, "known_facts", lambda mt: [{"subject": "Space Needle"}])
    expected = 3 * tracing.embedding_std(peaky_gpt2, ["Space Needle"])
    assert tracing.default_noise(peaky_gpt2) == pytest.approx(expected)


@pytest.mark.parametrize("kind", ["state", "attn"])
def test_fast_trace_equals_the_reference_on_the_toy_model(kind):
    from rome_lib.models import load_model

    mt = load_model("toy", device="cpu")
    fact = tracing.known_facts(mt)[0]
    fast = trace(mt, fact["prompt"], fact["subject"], kind, samples=2, layer_groups=mt.n_layer)
    reference = trace_reference(mt, fact["prompt"], fact["subject"], kind, samples=2)
    assert (fast.scores - reference.scores).abs().max() <= 1e-5
