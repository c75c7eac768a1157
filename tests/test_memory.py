"""Memory estimates from the real configs, the check before loading, dtype rules, tracing defaults."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from rome_lib import models
from rome_lib.models import (
    GIB, PRESET_CONFIGS, InsufficientMemoryError, ModelNotAvailableError, check_memory,
    estimate_memory, load_model, preset_config,
)
from rome_lib.tracing import tracing_defaults

# Parameter counts of the hub models (model cards / the papers).
KNOWN_PARAMS = {"gpt2": 124e6, "gpt2-medium": 355e6, "gpt2-large": 774e6, "gpt2-xl": 1.558e9,
                "EleutherAI/gpt-j-6B": 6.05e9}


@pytest.mark.parametrize("name", list(PRESET_CONFIGS))
def test_estimates_match_the_known_sizes(name):
    est = estimate_memory(name)
    assert est.n_params == pytest.approx(KNOWN_PARAMS[name], rel=0.01)
    assert est.weights == 4 * est.n_params and est.total > est.weights
    half = estimate_memory(name, torch.float16)
    assert half.weights == est.weights // 2


def test_gpt2_preset_is_gpt2config_defaults():
    default, preset = GPT2Config(), preset_config("gpt2")
    for key in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
        assert getattr(default, key) == getattr(preset, key)
    gptj = preset_config("EleutherAI/gpt-j-6B", n_layer=2)
    assert (gptj.model_type, gptj.n_layer, gptj.n_embd, gptj.rotary_dim, gptj.vocab_size) == \
        ("gptj", 2, 4096, 64, 50400)
    assert preset_config("openai-community/gpt2-xl").n_layer == 48


def test_estimate_from_a_folder_and_a_dict(tmp_path, tokenizer):
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tokenizer), n_positions=64)
    model = GPT2LMHeadModel(config)
    model.save_pretrained(tmp_path)
    n = sum(p.numel() for p in model.parameters())
    assert estimate_memory(str(tmp_path)).n_params == n
    assert estimate_memory(dict(model_type="gpt2", n_layer=2, n_embd=32, n_head=2,
                                vocab_size=len(tokenizer), n_positions=64)).n_params == n
    with pytest.raises(ModelNotAvailableError, match="no config.json"):
        estimate_memory(str(tmp_path / "nothing"))


def test_gptj_float32_on_a_16gb_machine_is_refused_clearly(monkeypatch):
    monkeypatch.setattr(models, "free_memory", lambda device: 16 * GIB)
    monkeypatch.delenv("ROME_SKIP_MEMORY_CHECK", raising=False)
    with pytest.raises(InsufficientMemoryError) as info:
        load_model("EleutherAI/gpt-j-6B", device="cpu")  # refused before any download
    error, message = info.value, str(info.value)
    assert isinstance(error, ModelNotAvailableError)
    assert error.needed > error.free == 16 * GIB
    assert "RAM" in message and "needs ~29" in message and "16.0 GiB free" in message
    assert "load_model('gpt2-xl')" in message and "dtype=torch.float16" in message
    assert "load_model('toy')" in message


def test_gpu_suggests_float16_of_the_same_model(monkeypatch):
    monkeypatch.setattr(models, "free_memory", lambda device: 20 * GIB)
    monkeypatch.delenv("ROME_SKIP_MEMORY_CHECK", raising=False)
    with pytest.raises(InsufficientMemoryError, match="GPU memory.*'EleutherAI/gpt-j-6B', dtype=torch.float16"):
        check_memory("EleutherAI/gpt-j-6B", "cuda", torch.float32)
    assert check_memory("EleutherAI/gpt-j-6B", "cuda", torch.float16).total < 20 * GIB


def test_folder_checked_and_the_check_can_be_skipped(monkeypatch, tiny_gpt2):
    folder = tiny_gpt2.model.config._name_or_path
    monkeypatch.setattr(models, "free_memory", lambda device: 1000)
    monkeypatch.delenv("ROME_SKIP_MEMORY_CHECK", raising=False)
    with pytest.raises(InsufficientMemoryError, match="Not enough RAM"):
        load_model(folder, device="cpu")
    monkeypatch.setenv("ROME_SKIP_MEMORY_CHECK", "1")
    assert load_model(folder, device="cpu").n_layer == 4
    monkeypatch.setattr(models, "free_memory", lambda device: None)  # unknown: no check
    monkeypatch.delenv("ROME_SKIP_MEMORY_CHECK")
    assert load_model(folder, device="cpu").n_layer == 4


def test_free_memory_reads_the_system():
    free = models.free_memory("cpu")
    assert free is None or free > 0


def test_float16_on_cpu_warns_clearly(tiny_gpt2):
    folder = tiny_gpt2.model.config._name_or_path
    with pytest.warns(UserWarning, match="float16 on a CPU"):
        mt = load_model(folder, device="cpu", dtype=torch.float16)
    assert mt.dtype == torch.float16
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_model(folder, device="cpu", dtype=torch.bfloat16).dtype == torch.bfloat16


def test_tracing_defaults_scale_the_window_to_depth():
    assert tracing_defaults("gpt2-xl")["window"] == 10
    assert tracing_defaults("EleutherAI/gpt-j-6B") == {"window": 6, "samples": 10, "noise": None,
                                                       "n_layer": 28}
    assert tracing_defaults("gpt2")["window"] == 2
    assert tracing_defaults("smollm2")["window"] == 6  # known without fetching the model
