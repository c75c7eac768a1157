import pytest
import torch

from rome_lib.hooks import get_module, hook_modules


def _ids(mt, text="The Space Needle is located in the city of"):
    return mt.tokenizer(text, return_tensors="pt")["input_ids"]


def test_reads_input_and_output(tiny_gpt2):
    mt, name = tiny_gpt2, tiny_gpt2.layout.mlp_out_at(1)
    with hook_modules(mt.model, name, retain_input=True) as rec:
        mt.model(_ids(mt))
    module = get_module(mt.model, name)
    # Conv1D computes x @ W + b: the recorded input must reproduce the recorded output.
    expected = rec[name].input @ module.weight + module.bias
    assert torch.allclose(rec[name].output, expected, atol=1e-6)


def test_edit_output_changes_the_result_and_tuple_outputs_pass_through(tiny_gpt2):
    mt = tiny_gpt2
    attn = mt.layout.attn_at(0)  # GPT-2 attention returns a tuple
    clean = mt.model(_ids(mt)).logits
    with hook_modules(mt.model, attn, edit_output=lambda x, _: torch.zeros_like(x)) as rec:
        edited = mt.model(_ids(mt)).logits
    assert torch.count_nonzero(rec[attn].output) == 0
    assert not torch.allclose(clean, edited)
    assert torch.equal(mt.model(_ids(mt)).logits, clean)  # hook gone: same as before


def test_hooks_removed_after_an_exception(tiny_gpt2):
    mt = tiny_gpt2
    names = [mt.layout.layer(l) for l in range(mt.n_layer)]
    with pytest.raises(RuntimeError, match="boom"):
        with hook_modules(mt.model, names, edit_output=lambda x, _: x * 0):
            raise RuntimeError("boom")
    for name in names:
        module = get_module(mt.model, name)
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_unknown_module_name_suggests_close_names(tiny_gpt2):
    with pytest.raises(KeyError, match="transformer.h.1.mlp"):
        get_module(tiny_gpt2.model, "transformer.h.1.mpl")


@pytest.mark.parametrize("retain", ["input", "output"])
def test_stop_records_the_same_and_runs_nothing_after_the_module(tiny_gpt2, retain):
    mt, name = tiny_gpt2, tiny_gpt2.layout.mlp_out_at(1)
    with hook_modules(mt.model, name, retain_input=True) as full:
        mt.model(_ids(mt))
    later = []
    handle = get_module(mt.model, mt.layout.layer(2)).register_forward_pre_hook(
        lambda *_: later.append(1))
    try:
        with hook_modules(mt.model, name, retain_input=retain == "input",
                   retain_output=retain == "output", stop=True) as rec:
            mt.model(_ids(mt))
            later.append("the block went on")  # skipped: the stop ends the block
    finally:
        handle.remove()
    assert later == []
    assert torch.equal(getattr(rec[name], retain), getattr(full[name], retain))
    module = get_module(mt.model, name)
    assert not module._forward_hooks and not module._forward_pre_hooks


def test_stop_traces_one_module_only(tiny_gpt2):
    with pytest.raises(ValueError, match="exactly one"):
        with hook_modules(tiny_gpt2.model, [tiny_gpt2.layout.layer(0), tiny_gpt2.layout.layer(1)], stop=True):
            pass
