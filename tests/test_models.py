import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from rome_lib.hooks import get_module
from rome_lib.models import ModelNotAvailableError, describe, load_model


@pytest.mark.parametrize("fixture, out_type, transposed", [
    ("tiny_gpt2", Conv1D, True), ("tiny_gptj", nn.Linear, False),
])
def test_layout_names_real_modules(request, fixture, out_type, transposed):
    mt = request.getfixturevalue(fixture)
    layout = mt.layout
    assert layout.n_layer == 4 and layout.out_weight_transposed is transposed
    for l in range(layout.n_layer):
        for name in (layout.layer(l), layout.attn_at(l), layout.mlp_at(l), layout.mlp_in_at(l)):
            get_module(mt.model, name)
        assert isinstance(get_module(mt.model, layout.mlp_out_at(l)), out_type)
    for name in (layout.embed, layout.final_norm, layout.unembed):
        get_module(mt.model, name)
    with pytest.raises(IndexError, match="layers 0..3"):
        layout.layer(4)


def test_loader_round_trip_keeps_weights_and_runs(tiny_gptj, tmp_path, tokenizer):
    mt = tiny_gptj
    ids = tokenizer("Michael Jordan plays", return_tensors="pt")["input_ids"]
    assert mt.model(ids).logits.shape == (1, ids.shape[1], len(tokenizer))
    assert not mt.model.training and not any(p.requires_grad for p in mt.model.parameters())
    assert mt.tokenizer.pad_token is not None and mt.device == torch.device("cpu")


def test_output_head_gets_a_dense_input_and_the_same_logits(tiny_gptj, tokenizer):
    """logits_to_keep slices a strided view; load_model hands the head a dense copy (a CPU product
    over the strided view is ~8x slower), and the logits stay those of the full pass."""
    mt = tiny_gptj
    ids = tokenizer("Michael Jordan plays the sport of", return_tensors="pt")["input_ids"]
    seen = []
    handle = mt.model.get_output_embeddings().register_forward_hook(
        lambda _m, args, _out: seen.append(args[0].is_contiguous()))
    try:
        last = mt.model(ids.repeat(3, 1), logits_to_keep=1).logits[:, -1]
    finally:
        handle.remove()
    assert seen == [True]
    torch.testing.assert_close(last, mt.model(ids.repeat(3, 1)).logits[:, -1], rtol=1e-5, atol=1e-5)


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ModelNotAvailableError, match="Unknown model 'gpt5'.*load_model\\('toy'\\)"):
        load_model("gpt5")


def test_folder_without_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="does not hold a complete"):
        load_model(str(tmp_path))


def test_hub_model_offline_fails_fast_and_points_to_toy(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-cache")
    with pytest.raises(ModelNotAvailableError, match="cannot be reached.*load_model\\('toy'\\)"):
        load_model("gpt2-xl")


def test_unsupported_architecture_is_a_clear_error():
    class Fake(nn.Module):
        class config:  # noqa: N801 - mimics a transformers config
            model_type = "bert"

    with pytest.raises(ModelNotAvailableError, match="bert"):
        describe(Fake())
