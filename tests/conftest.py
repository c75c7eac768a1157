"""Shared fixtures: small random-weight GPT-2 / GPT-J models built from the real configs, saved with
``save_pretrained`` and loaded back through :func:`rome_lib.models.load_model` -- the same path a
user's hub model takes."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast, GPTJConfig, GPTJForCausalLM

from rome_lib.models import LoadedModel, load_model

torch.set_num_threads(1)  # two cores shared by everything: one thread is steadier and often faster

SENTENCES = [
    "The Space Needle is located in the city of Seattle.",
    "Danielle Darrieux, a native speaker of French, was an actress.",
    "Michael Jordan plays the sport of basketball.",
    "The Eiffel Tower is in Paris, the capital of France.",
    "Toko Yasuda produces the most amazing music on the guitar.",
]


def tiny_tokenizer() -> GPT2TokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 style) trained on a few sentences."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
    )
    tok.train_from_iterator(SENTENCES * 5, trainer)
    eos = "<|endoftext|>"
    return GPT2TokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=eos, unk_token=eos)


def save_and_load(model: torch.nn.Module, folder, tokenizer) -> LoadedModel:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return load_model(str(folder), device="cpu")


@pytest.fixture(scope="session")
def tokenizer() -> GPT2TokenizerFast:
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory, tokenizer) -> LoadedModel:
    """GPT-2's real config (Conv1D MLP, tied embeddings) shrunk to 4 layers of width 64."""
    torch.manual_seed(0)
    config = GPT2Config(n_layer=4, n_embd=64, n_head=4, vocab_size=len(tokenizer), n_positions=128)
    return save_and_load(GPT2LMHeadModel(config), tmp_path_factory.mktemp("gpt2"), tokenizer)


@pytest.fixture(scope="session")
def tiny_gptj(tmp_path_factory, tokenizer) -> LoadedModel:
    """GPT-J's real config (nn.Linear fc_out, rotary, parallel attention+MLP), shrunk."""
    torch.manual_seed(0)
    config = GPTJConfig(n_layer=4, n_embd=64, n_head=4, rotary_dim=8, vocab_size=len(tokenizer),
                        n_positions=128)
    return save_and_load(GPTJForCausalLM(config), tmp_path_factory.mktemp("gptj"), tokenizer)


@pytest.fixture(scope="session")
def gpt2_hub_home(tmp_path_factory):
    """An HF_HOME whose cache holds ``gpt2`` as a download leaves it: a random-weight 6-layer GPT-2
    with GPT-2's real tokenizer (see tests/hub_fixture.py). Skips where the tokenizer files are absent."""
    from tests.hub_fixture import build_hub_cache, missing_reason

    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    home = tmp_path_factory.mktemp("hf_home")
    build_hub_cache(home)
    return home
