"""Llama-family models (SmolLM2, Llama, Mistral, Qwen...) through the same code path as GPT-2.

Tiny random ``LlamaForCausalLM`` models (RMSNorm, rotary, gated SiLU MLP with ``down_proj``,
grouped-query attention), with tied and untied embeddings, saved and loaded through ``load_model``,
with the test tokenizer -- and with a variant of it that prepends a BOS token, as Llama tokenizers do.
"""

import pytest
import torch
from tokenizers import processors
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from rome_lib.hooks import get_module, hook_modules
from rome_lib.tracing import find_subject_range, restored_probability, trace, trace_reference

from .conftest import save_and_load, tiny_tokenizer

PROMPT, SUBJECT = "The Space Needle is located in the city of", "Space Needle"


def bos_tokenizer():
    """The test tokenizer, but every encoding starts with a BOS token (offsets (0, 0))."""
    tok = tiny_tokenizer()
    bos = tok.bos_token
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.bos_token_id)])
    return tok


def llama(tmp_path_factory, tokenizer, tied: bool, n_layer: int = 3):
    """Random Llama, peaky (large init) so that restoring one cell moves P[answer] a lot."""
    torch.manual_seed(2)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=176, num_hidden_layers=n_layer,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=tied, initializer_range=0.3,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    folder = tmp_path_factory.mktemp(f"llama_{'tied' if tied else 'untied'}")
    return save_and_load(LlamaForCausalLM(config), folder, tokenizer)


@pytest.fixture(scope="module")
def llama_tied(tmp_path_factory, tokenizer):
    return llama(tmp_path_factory, tokenizer, tied=True)


@pytest.fixture(scope="module")
def llama_untied(tmp_path_factory, tokenizer):
    return llama(tmp_path_factory, tokenizer, tied=False, n_layer=4)


@pytest.fixture(scope="module")
def llama_bos(tmp_path_factory):
    return llama(tmp_path_factory, bos_tokenizer(), tied=True)


FIXTURES = ["llama_tied", "llama_untied", "llama_bos"]


# ---- layout ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", FIXTURES)
def test_layout_names_real_modules(request, fixture):
    mt = request.getfixturevalue(fixture)
    layout = mt.layout
    assert layout.arch == "llama" and not layout.out_weight_transposed
    for l in range(layout.n_layer):
        for name in (layout.layer(l), layout.attn_at(l), layout.mlp_at(l), layout.mlp_in_at(l)):
            get_module(mt.model, name)
        down = get_module(mt.model, layout.mlp_out_at(l))
        assert isinstance(down, nn.Linear) and layout.mlp_out_at(l).endswith("mlp.down_proj")
    for name in (layout.embed, layout.final_norm, layout.unembed):
        get_module(mt.model, name)
    tied = mt.model.config.tie_word_embeddings
    same = get_module(mt.model, layout.unembed).weight is get_module(mt.model, layout.embed).weight
    assert same is tied


def test_the_key_is_the_input_of_down_proj(llama_untied):
    """ROME's key: the gated activation act(gate(x)) * up(x), i.e. down_proj's input, width d_ff."""
    mt, layer = llama_untied, 1
    ids = mt.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    mlp = get_module(mt.model, mt.layout.mlp_at(layer))
    with hook_modules(mt.model, [mt.layout.mlp_out_at(layer), mt.layout.mlp_at(layer)],
                    retain_input=True) as rec:
        mt.model(ids)
    key = rec[mt.layout.mlp_out_at(layer)].input
    x = rec[mt.layout.mlp_at(layer)].input
    assert key.shape[-1] == mt.model.config.intermediate_size == 176
    assert torch.allclose(key, mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x), atol=1e-6)
    assert torch.allclose(rec[mt.layout.mlp_out_at(layer)].output, mlp.down_proj(key), atol=1e-6)


# ---- a BOS token -----------------------------------------------------------------------------
def test_bos_token_is_not_part_of_the_subject(llama_bos):
    tok = llama_bos.tokenizer
    ids = tok(PROMPT)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == len(tiny_tokenizer()(PROMPT)["input_ids"]) + 1
    b, e = find_subject_range(tok, PROMPT, SUBJECT)
    assert b >= 1 and tok.decode(ids[b:e]).strip() == SUBJECT


def test_bos_token_stays_clean_under_corruption(llama_bos):
    """Noise lands on subject tokens only: restoring the BOS state changes nothing."""
    p = restored_probability(llama_bos, PROMPT, SUBJECT, [(0, 0)], noise=1.0, samples=4)
    assert p["restored"] == pytest.approx(p["corrupted"], abs=1e-6)
    assert abs(p["corrupted"] - p["clean"]) > 1e-3


# ---- tracing invariants ----------------------------------------------------------------------
@pytest.mark.parametrize("fixture", FIXTURES)
def test_restoring_every_state_reproduces_the_clean_run(request, fixture):
    mt = request.getfixturevalue(fixture)
    n_tokens = len(mt.tokenizer(PROMPT)["input_ids"])
    for layer in range(mt.n_layer):
        p = restored_probability(mt, PROMPT, SUBJECT, [(t, layer) for t in range(n_tokens)],
                                 noise=1.0, samples=4)
        assert p["restored"] == pytest.approx(p["clean"], abs=1e-6)
    assert abs(p["corrupted"] - p["clean"]) > 1e-3  # the noise did something


@pytest.mark.parametrize("fixture", FIXTURES)
@pytest.mark.parametrize("kind, sever", [("state", None), ("mlp", None), ("attn", None),
                                         ("state", "mlp")])
def test_batched_equals_per_cell_reference(request, fixture, kind, sever):
    mt = request.getfixturevalue(fixture)
    kw = dict(noise=1.0, samples=3, sever=sever)
    batched = trace(mt, PROMPT, SUBJECT, kind, memory_budget=200_000, **kw)  # several chunks
    reference = trace_reference(mt, PROMPT, SUBJECT, kind, **kw)
    assert batched.low == pytest.approx(reference.low, abs=1e-6)
    assert (batched.scores - reference.scores).abs().max() <= 1e-5
    # Every cell starting at its own first restored layer (the default on a CPU for big models).
    skipping = trace(mt, PROMPT, SUBJECT, kind, layer_groups=mt.n_layer, **kw)
    assert (skipping.scores - reference.scores).abs().max() <= 1e-5
    assert batched.scores.max() - batched.scores.min() > 0.01  # the comparison can fail


def test_final_state_of_the_last_token_restores_the_clean_output(llama_untied):
    result = trace(llama_untied, PROMPT, SUBJECT, "state", noise=1.0, samples=3)
    b, _ = result.subject_range
    last = llama_untied.n_layer - 1
    assert result.scores[-1, last] == pytest.approx(result.high, abs=1e-6)
    assert torch.allclose(result.scores[:b], torch.tensor(result.low), atol=1e-6)


def test_noise_level_ignores_the_bos_token(llama_bos):
    """The std of *subject* embeddings must not include the BOS embedding the tokenizer adds."""
    from rome_lib.tracing import embedding_std

    subjects = ["Space Needle", "Michael Jordan"]
    ids = [i for s in subjects for i in tiny_tokenizer()(s)["input_ids"]]  # no BOS
    weight = llama_bos.model.get_input_embeddings().weight
    assert embedding_std(llama_bos, subjects) == pytest.approx(weight[ids].std().item(), rel=1e-6)


@pytest.mark.filterwarnings("error::FutureWarning")
@pytest.mark.parametrize("fixture", ["llama_untied", "llama_bos"])
def test_sampling_with_the_kv_cache_equals_recomputing_every_step(request, fixture):
    """Rotary positions must continue across cached steps (a dropped cache restarts them at 0)."""
    from rome_lib.covariance import sample_corpus

    from .test_covariance import _sample_without_cache

    mt = request.getfixturevalue(fixture)
    with torch.no_grad():
        expected = _sample_without_cache(mt, 3, 6, top_k=20, seed=5)
    assert sample_corpus(mt, 3, 6, top_k=20, seed=5, batch_size=3, progress=False) == expected
