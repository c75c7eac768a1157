"""CounterFact metrics: probabilities of multi-token objects, batching, the official averaging, the
entropy and tf-idf scores on hand-made cases, and an evaluation that leaves the model untouched."""

from __future__ import annotations

import copy
import math
import random
from dataclasses import replace

import pytest
import torch

from rome_lib.evaluation import (
    References, TfIdf, evaluate, generate, generation_entropy, hmean, n_gram_entropy, object_nlls,
    object_probs, record_metrics, score_record, summarize, word_tokenize,
)
from rome_lib.hooks import get_module
from rome_lib.hparams import FTHyperParams, ROMEHyperParams
from rome_lib.models import LoadedModel
from tests.conftest import SENTENCES

torch.set_num_threads(1)


def record(case_id, subject, prompt, new, true, relation="P1", paraphrases=(), neighbours=(),
           generation=()):
    return {
        "case_id": case_id,
        "requested_rewrite": {"prompt": prompt, "relation_id": relation, "subject": subject,
                              "target_new": {"str": new, "id": new}, "target_true": {"str": true, "id": true}},
        "paraphrase_prompts": list(paraphrases), "neighborhood_prompts": list(neighbours),
        "attribute_prompts": [], "generation_prompts": list(generation),
    }


RECORDS = [
    record(0, "Michael Jordan", "The sport played by {}", "guitar", "basketball",
           paraphrases=["Seattle music. The sport played by Michael Jordan"],
           neighbours=["The sport played by Toko Yasuda", "The sport played by Danielle Darrieux"],
           generation=["Michael Jordan is"]),
    record(1, "Toko Yasuda", "The sport played by {}", "basketball", "guitar",
           paraphrases=["The music of Toko Yasuda", "Paris. The sport played by Toko Yasuda"],
           neighbours=["The sport played by Michael Jordan"], generation=["Toko Yasuda plays"]),
    record(2, "The Eiffel Tower", "{} is in the city of", "Seattle", "Paris",
           paraphrases=["The Eiffel Tower is located in"], neighbours=["The Space Needle is in"],
           generation=["The Eiffel Tower"]),
]


def manual_nll(mt, prompt, obj):
    ids = mt.tokenizer(prompt)["input_ids"]
    tgt = mt.tokenizer(obj, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(mt.model(torch.tensor([ids + tgt])).logits[0].float(), -1)
    return -sum(logp[len(ids) - 1 + i, t].item() for i, t in enumerate(tgt)) / len(tgt), len(tgt)


# ----------------------------------------------------------------------------------------------
# Probabilities
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_gptj"])
def test_batched_nlls_equal_one_by_one(request, fixture):
    mt = request.getfixturevalue(fixture)
    prompts = ["Michael Jordan plays the sport of", "The Eiffel Tower is in", "Paris",
               "Danielle Darrieux, a native speaker of"]
    objects = [" basketball", " Paris, the capital of France", " Seattle", " French"]
    got = object_nlls(mt, prompts, objects, batch_size=3)
    lengths = []
    for i, (p, o) in enumerate(zip(prompts, objects)):
        nll, n = manual_nll(mt, p, o)
        lengths.append(n)
        assert got[i].item() == pytest.approx(nll, rel=1e-5, abs=1e-6)
    assert max(lengths) > 3  # a multi-token object is among them
    # P = exp(−mean NLL): the geometric mean of the token probabilities, not their product.
    probs = object_probs(mt, prompts, objects)
    torch.testing.assert_close(probs, torch.exp(-got), rtol=1e-5, atol=0)


def test_score_record_groups(tiny_gpt2):
    r = RECORDS[1]
    scores = score_record(tiny_gpt2, r, batch_size=2)
    assert [len(scores[g]) for g in ("rewrite", "paraphrase", "neighborhood")] == [1, 2, 1]
    nll, _ = manual_nll(tiny_gpt2, "The music of Toko Yasuda", " guitar")
    assert scores["paraphrase"][0]["target_true"] == pytest.approx(nll, rel=1e-5)
    nll, _ = manual_nll(tiny_gpt2, "The sport played by Toko Yasuda", " basketball")
    assert scores["rewrite"][0]["target_new"] == pytest.approx(nll, rel=1e-5)


# ----------------------------------------------------------------------------------------------
# The official averaging, on hand-made numbers
# ----------------------------------------------------------------------------------------------
def nll_pair(p_new, p_true):
    return {"target_new": -math.log(p_new), "target_true": -math.log(p_true)}


def test_metrics_on_hand_made_cases():
    # Record A: new > true on the rewrite prompt; 1 of 2 paraphrases; neighbours keep the truth.
    a = record_metrics({"rewrite": [nll_pair(0.6, 0.2)],
                        "paraphrase": [nll_pair(0.5, 0.1), nll_pair(0.1, 0.3)],
                        "neighborhood": [nll_pair(0.1, 0.7)]})
    assert a["ES"] == 1.0 and a["EM"] == pytest.approx(0.4)
    assert a["PS"] == 0.5 and a["PM"] == pytest.approx((0.4 - 0.2) / 2)
    assert a["NS"] == 1.0 and a["NM"] == pytest.approx(0.6)
    # Record B: equal probabilities are neither an efficacy success nor a neighbourhood success.
    b = record_metrics({"rewrite": [nll_pair(0.3, 0.3)], "paraphrase": [nll_pair(0.2, 0.4)] * 4,
                        "neighborhood": [nll_pair(0.25, 0.25)]})
    assert b["ES"] == 0.0 and b["NS"] == 0.0 and b["EM"] == pytest.approx(0.0, abs=1e-12)
    assert b["PS"] == 0.0
    s = summarize([a, b])
    assert s["n"] == 2 and s["ES"] == pytest.approx(50.0)
    # Per record first, then over records: (0.5 + 0) / 2, not the pooled 1/6 of the 6 paraphrases.
    assert s["PS"] == pytest.approx(25.0)
    assert s["NS"] == pytest.approx(50.0)
    assert s["S"] == pytest.approx(3 / (1 / 50 + 1 / 25 + 1 / 50))
    assert s["EM"] == pytest.approx(20.0)


def test_hmean():
    assert hmean([100, 100, 100]) == pytest.approx(100)
    assert hmean([100, 50, 0]) == 0.0
    assert hmean([100.0, 96.4, 75.4]) == pytest.approx(89.2, abs=0.1)  # the paper's ROME row on GPT-2 XL


# ----------------------------------------------------------------------------------------------
# Generation entropy and tf-idf
# ----------------------------------------------------------------------------------------------
def test_n_gram_entropy_by_hand():
    assert word_tokenize("Hello, world's end.") == ["Hello", ",", "world's", "end", "."]
    # "a b a b": bigrams ab, ba, ab -> H2 = H(2/3, 1/3); trigrams aba, bab -> H3 = 1 bit.
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert n_gram_entropy("a b a b") == pytest.approx((2 / 3 * h2 + 4 / 3 * 1.0) / 2)
    # A repetitive text has lower entropy than a varied one.
    assert n_gram_entropy("the the the the the the") == 0.0
    assert generation_entropy(["the the the the", "one two three four five"]) == pytest.approx(
        (0 + (2 / 3 * 2 + 4 / 3 * math.log2(3)) / 2) / 2)


def test_tfidf_by_hand():
    docs = ["apple banana", "apple cherry", "banana cherry durian"]
    vec = TfIdf(docs)
    idf = lambda df: math.log(4 / (1 + df)) + 1  # noqa: E731
    assert vec.idf["apple"] == pytest.approx(idf(2)) and vec.idf["durian"] == pytest.approx(idf(1))
    assert vec.similarity("apple banana", "Apple, banana!") == pytest.approx(1.0)
    assert vec.similarity("apple", "durian") == 0.0
    assert vec.similarity("a", "apple") == 0.0  # unknown words only: no vector
    a, b = idf(2), idf(1)  # "apple durian" vs "apple"
    assert vec.similarity("apple durian", "apple apple") == pytest.approx(a / math.sqrt(a * a + b * b))


def test_references_from_records():
    refs = References.from_records(RECORDS)
    # Record 0's new object "guitar" is record 1's true object: its statements about Toko Yasuda and
    # its neighbourhood prompt (about Michael Jordan, record 0's own subject, so left out).
    texts = refs.texts_for(RECORDS[0])
    assert texts == ["The sport played by Toko Yasuda guitar"]
    assert refs.texts_for(RECORDS[2]) == []
    assert refs.score(RECORDS[2], ["anything"]) is None
    assert refs.score(RECORDS[0], ["Toko Yasuda guitar"]) > refs.score(RECORDS[0], ["Paris Seattle"])


def test_generation_is_seeded(tiny_gpt2):
    a = generate(tiny_gpt2, ["Michael Jordan", "The"], max_length=12, seed=3)
    assert a == generate(tiny_gpt2, ["Michael Jordan", "The"], max_length=12, seed=3)
    assert all(t.startswith(p) for t, p in zip(a, ["Michael Jordan", "The"]))
    assert a != generate(tiny_gpt2, ["Michael Jordan", "The"], max_length=12, seed=4)



@pytest.mark.filterwarnings("error::FutureWarning")  # no deprecated cache argument either
def test_greedy_generation_with_the_cache_equals_recomputing_every_step(tiny_gpt2):
    ids = tiny_gpt2.tokenizer("The", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        for _ in range(7):
            ids = torch.cat([ids, tiny_gpt2.model(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    expected = tiny_gpt2.tokenizer.decode(ids[0].tolist(), skip_special_tokens=True)
    assert generate(tiny_gpt2, ["The"], max_length=8, greedy=True) == [expected]


# ----------------------------------------------------------------------------------------------
# Whole evaluations
# ----------------------------------------------------------------------------------------------
def sharpened(mt, factor=10.0):
    model = copy.deepcopy(mt.model)
    with torch.no_grad():
        get_module(model, mt.layout.final_norm).weight.mul_(factor)
    return LoadedModel(model=model, tokenizer=mt.tokenizer, layout=mt.layout, name=mt.name + "-sharp")


@pytest.fixture(scope="module")
def sharp(tiny_gpt2):
    return sharpened(tiny_gpt2)


@pytest.fixture()
def corpus_file(tmp_path, monkeypatch):
    monkeypatch.setenv("ROME_CACHE", str(tmp_path / "cache"))
    rng = random.Random(0)
    words = " ".join(SENTENCES).split()
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(" ".join(rng.choices(words, k=rng.randint(3, 14))) for _ in range(80)))
    return str(path)


ROME_HP = ROMEHyperParams(layer=2, v_num_grad_steps=12, v_weight_decay=1e-3,
                          context_lengths=((3, 2), (5, 2)))


@pytest.mark.parametrize("method", ["none", "rome", "ft", "ft-l"])
def test_evaluation_leaves_model_bit_identical(sharp, corpus_file, method):
    saved = {n: p.detach().clone() for n, p in sharp.model.named_parameters()}
    hparams = {"rome": replace(ROME_HP, mom2_corpus=corpus_file),
               "ft": FTHyperParams(layer=2, num_steps=10, lr=1e-2),
               "ft-l": FTHyperParams(layer=2, num_steps=10, lr=1e-2, norm_constraint=1e-3)}.get(method)
    result = evaluate(sharp, RECORDS, method, progress=False, hparams=hparams, gen_length=10,
                      per_record=True)
    for n, p in sharp.model.named_parameters():
        assert torch.equal(p, saved[n]), n
    assert result["method"] == method and result["n"] == 3
    for key in ("ES", "EM", "PS", "PM", "NS", "NM", "S", "GE", "RS"):
        assert key in result and math.isfinite(result[key])
    assert [r["case_id"] for r in result["records"]] == [0, 1, 2]
    assert 0 <= result["S"] <= 100 and -100 <= result["EM"] <= 100


def test_edit_is_scored_while_applied(sharp):
    """Efficacy after ROME is measured on the edited model: it must beat the unedited one."""
    hp = replace(ROME_HP, mom2_adjustment=False, v_num_grad_steps=20)
    before = evaluate(sharp, RECORDS[:2], "none", progress=False, generation=False)
    after = evaluate(sharp, RECORDS[:2], "rome", progress=False, generation=False, hparams=hp)
    assert after["EM"] > before["EM"] + 10
    assert after["ES"] == 100.0
    assert "GE" not in after and "RS" not in after


def test_evaluate_undoes_on_error(sharp, monkeypatch):
    saved = {n: p.detach().clone() for n, p in sharp.model.named_parameters()}
    from rome_lib import evaluation

    def broken(*a, **k):
        raise RuntimeError("scoring failed")

    monkeypatch.setattr(evaluation, "score_record", broken)
    with pytest.raises(RuntimeError, match="scoring failed"):
        evaluate(sharp, RECORDS, "ft", progress=False, hparams=FTHyperParams(layer=2, num_steps=3))
    for n, p in sharp.model.named_parameters():
        assert torch.equal(p, saved[n])


def test_evaluate_arguments(tiny_gpt2):
    with pytest.raises(ValueError, match="Unknown method"):
        evaluate(tiny_gpt2, RECORDS, "mend", progress=False)
    with pytest.raises(ValueError, match="No records"):
        evaluate(tiny_gpt2, [], progress=False)
    assert evaluate(tiny_gpt2, RECORDS, n=1, progress=False, generation=False)["n"] == 1


def test_toy_world_references_and_corpus():
    pytest.importorskip("rome_lib.toyworld.world")
    from rome_lib.covariance import load_corpus
    from rome_lib.toyworld.world import build_world

    world = build_world()
    fact = world.facts[0]
    other = next(f for f in world.facts_for(fact.relation_id) if f.object != fact.object)
    rec = record(0, fact.subject, "{} is", other.object, fact.object, relation=fact.relation_id)
    refs = References.from_toy_world()
    texts = refs.texts_for(rec)
    assert texts and all(fact.subject not in t for t in texts)
    assert refs.score(rec, texts[:1]) > refs.score(rec, ["Nothing related."])
    cid, sample = load_corpus("toy", n_samples=10)
    assert cid == "toy-world" and sample == world.training_texts()[:10]
