"""The command line: JSON shapes, and one-line errors (exit 2, no traceback) for bad input."""

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from rome_lib.__main__ import main

FACTS = [
    {"known_id": 0, "subject": "Space Needle", "attribute": "Seattle", "relation_id": "P131",
     "template": "The {} is located in the city of",
     "prompt": "The Space Needle is located in the city of", "prediction": " Seattle"},
    {"known_id": 1, "subject": "Michael Jordan", "attribute": "basketball", "relation_id": "P641",
     "template": "{} plays the sport of", "prompt": "Michael Jordan plays the sport of",
     "prediction": " basketball"},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("cli_model")
    config = GPT2Config(n_layer=3, n_embd=32, n_head=4, vocab_size=len(tokenizer), n_positions=64)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "known_facts.json").write_text(json.dumps(FACTS))
    return str(folder)


def run(capsys, *argv):
    code = main([*argv, "--device", "cpu"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_trace_json_shape(capsys, model_dir, tmp_path):
    png = tmp_path / "trace.png"
    code, out, _ = run(capsys, "trace", "--model", model_dir, "--json", "--samples", "2",
                       "--plot", str(png))
    assert code == 0 and png.stat().st_size > 1000
    data = json.loads(out)
    assert data["prompt"] == FACTS[0]["prompt"] and data["subject"] == "Space Needle"
    n_tokens = len(data["tokens"])
    assert set(data["kinds"]) == {"state", "mlp", "attn"}
    for kind in data["kinds"].values():
        assert len(kind["scores"]) == n_tokens and len(kind["scores"][0]) == 3
        assert {"low", "high"} <= set(kind)
    b, e = data["subject_range"]
    assert "".join(data["tokens"][b:e]).strip() == "Space Needle"


def test_aie_json_shape(capsys, model_dir):
    code, out, _ = run(capsys, "aie", "--model", model_dir, "--n", "2", "--samples", "2", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["n"] == 2 and data["layers"] == 3 and len(data["buckets"]) == 6
    assert all(len(v) == 6 and len(v[0]) == 3 for v in data["kinds"].values())
    assert isinstance(data["ate"], float)


def test_bench_reports_agreement(capsys, model_dir):
    code, out, _ = run(capsys, "bench", "--model", model_dir, "--samples", "2", "--json")
    trace = json.loads(out)["trace"]
    assert code == 0 and trace["max_abs_diff"] <= 1e-5 and trace["speedup"] > 0
    assert trace["exact_skip_bound"] > 1


@pytest.mark.parametrize("argv, message", [
    (["trace", "--prompt", "The Space Needle is tall", "--subject", "Eiffel"], "does not occur"),
    (["trace", "--prompt", "The Space Needle is tall"], "both --prompt and --subject"),
    (["trace", "--kind", "state", "--model", "gpt5"], "Unknown model 'gpt5'"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, model_dir, argv, message):
    if "--model" not in argv:
        argv = [*argv, "--model", model_dir]
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_edit_on_the_toy_model_changes_the_answer_and_reports_json(capsys):
    code, out, _ = run(capsys, "edit", "--model", "toy", "--json")
    data = json.loads(out)
    assert code == 0 and data["layer"] == 3
    assert set(data["pre"]) == {"p_new", "p_true", "argmax"} == set(data["post"])
    assert data["post"]["p_new"] > data["pre"]["p_new"] and data["post"]["p_new"] > data["post"]["p_true"]
    assert data["request"]["target_new"]["str"] and data["seconds"] > 0


def test_evaluate_on_the_toy_model_reports_the_paper_metrics(capsys):
    code, out, _ = run(capsys, "evaluate", "--model", "toy", "--method", "none", "--n", "3",
                       "--no-generation", "--json")
    data = json.loads(out)
    assert code == 0 and data["n"] == 3 and data["method"] == "none"
    assert {"ES", "PS", "NS", "S", "EM", "PM", "NM"} <= set(data) and data["ES"] == 0.0


@pytest.mark.parametrize("argv, message", [
    (["edit", "--prompt", "{} plays", "--subject", "Sakpi Vamja", "--target", " "], "is empty"),
    (["edit", "--prompt", "Sakpi Vamja plays", "--subject", "Sakpi Vamja", "--target", "golf"],
     "'{} plays'"),
    (["edit", "--prompt", "plays the sport of", "--subject", "X", "--target", "golf"], "does not occur"),
    (["edit", "--prompt", "{} plays"], "together"),
])
def test_bad_edit_requests_are_one_line_and_exit_2(capsys, argv, message):
    code, out, err = run(capsys, *argv, "--model", "toy")
    assert code == 2 and out == "" and message in err and err.count("\n") == 1


@pytest.mark.parametrize("command", ["edit", "evaluate"])
@pytest.mark.parametrize("update", [None, "consistent"])
def test_update_option_reaches_rome(capsys, monkeypatch, command, update):
    """--update official|consistent (default official) picks the form of ROME's update."""
    from rome_lib import rome

    seen = []

    class NoEdit:
        layer = 3

        def undo(self):
            pass

    monkeypatch.setattr(rome, "apply_rome", lambda mt, request, hp=None, **kw: seen.append(hp) or NoEdit())
    argv = [command, "--model", "toy", "--json"] + (["--update", update] if update else [])
    if command == "evaluate":
        argv += ["--method", "rome", "--n", "1", "--no-generation"]
    code, out, _ = run(capsys, *argv)
    assert code == 0 and [hp.update for hp in seen] == [update or "official"]
    if command == "evaluate":
        assert json.loads(out)["update"] == (update or "official")
    with pytest.raises(SystemExit) as exit_:
        run(capsys, command, "--model", "toy", "--update", "r-rome")
    assert exit_.value.code == 2 and "official" in capsys.readouterr().err
