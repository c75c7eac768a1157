"""The command line: JSON shapes, --layer / --corpus, and one-line errors (exit 2, no traceback) for
bad input and missing resources. In-process (``main(argv)``), so each case costs a model load at most."""

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


def one_line_error(code: int, out: str, err: str, message: str) -> None:
    """The CLI's promise for every error: status 2, nothing on stdout, one line on stderr."""
    assert code == 2 and out == "", (code, out)
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize("argv, message", [
    (["aie", "--n", "0"], "n must be ≥ 1"),
    (["evaluate", "--n", "0"], "n must be ≥ 1"),
    (["trace", "--kind", "fire"], "invalid choice: 'fire'"),
    (["edit", "--layer", "8"], "--layer 8 is out of range: 'toy' has layers 0-7"),
    (["evaluate", "--layer", "-1", "--method", "ft"], "out of range"),
    (["evaluate", "--method", "ft", "--corpus", "toy"], "does not use C"),
    (["edit", "--model", "/no/such/folder"], "no such folder"),
])
def test_usage_errors_are_one_line_and_exit_2(capsys, argv, message):
    one_line_error(*run(capsys, *argv), message)


def test_edit_on_a_folder_model_without_a_corpus_says_how_to_give_one(capsys, model_dir):
    code, out, err = run(capsys, "edit", "--model", model_dir, "--prompt", "{} plays the sport of",
                         "--subject", "Michael Jordan", "--target", "golf")
    one_line_error(code, out, err, "--corpus wiki-leads")


@pytest.fixture
def corpus_file(tmp_path, monkeypatch):
    """A two-line text corpus, and a fresh statistics cache (ROME_CACHE) and in-memory C cache."""
    from rome_lib import rome

    monkeypatch.setenv("ROME_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(rome, "_COV_CACHE", {})
    path = tmp_path / "corpus.txt"
    path.write_text("Michael Jordan plays the sport of basketball.\nThe Space Needle is in Seattle.\n")
    return path


def test_edit_layer_and_corpus_options_and_a_corrupted_cache_is_recomputed(capsys, model_dir,
                                                                           corpus_file, tmp_path):
    from rome_lib import rome

    argv = ["edit", "--model", model_dir, "--prompt", "{} plays the sport of", "--subject",
            "Michael Jordan", "--target", "golf", "--layer", "1", "--corpus", str(corpus_file), "--json"]
    code, out, _ = run(capsys, *argv)
    assert code == 0 and json.loads(out)["layer"] == 1
    [cached] = (tmp_path / "cache" / "stats").rglob("*.pt")
    cached.write_bytes(b"not a torch file")
    rome._COV_CACHE.clear()  # the second run must read the (corrupted) file
    code, out, err = run(capsys, *argv)
    assert code == 0 and json.loads(out)["layer"] == 1
    assert "warning: Ignoring the statistics cache" in err and "Recomputing" in err
    assert "Traceback" not in err


def test_a_gguf_whose_sha256_differs_is_refused_in_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ROME_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF but not the pinned file")
    code = main(["models", "fetch", "smollm2", "--gguf", str(fake)])  # no --device on this command
    captured = capsys.readouterr()
    one_line_error(code, captured.out, captured.err, "Checksum mismatch")
    assert not (tmp_path / "cache" / "models" / "smollm2").exists()


def test_a_long_step_is_announced_on_stderr_and_json_stays_clean(capsys, model_dir, monkeypatch):
    from rome_lib import estimate

    monkeypatch.setattr(estimate, "CPU_RATE", 1.0)  # as if this CPU were very slow
    code, out, err = run(capsys, "aie", "--model", model_dir, "--n", "1", "--samples", "2", "--json")
    assert code == 0 and json.loads(out)["n"] == 1
    assert "AIE over 1 facts will take about" in err and "Cheaper: fewer facts (--n)" in err


@pytest.mark.parametrize("command", ["edit", "evaluate"])
@pytest.mark.parametrize("update", [None, "consistent"])
def test_update_option_reaches_rome(capsys, monkeypatch, command, update):
    """--update official|consistent (default official) picks the form of ROME's update."""
    from rome_lib import methods

    seen = []

    class NoEdit:
        layer = 3

        def undo(self):
            pass

    monkeypatch.setitem(methods.EDIT_METHODS, "rome", lambda mt, request, hp=None, **kw: seen.append(hp) or NoEdit())
    argv = [command, "--model", "toy", "--json"] + (["--update", update] if update else [])
    if command == "evaluate":
        argv += ["--method", "rome", "--n", "1", "--no-generation"]
    code, out, _ = run(capsys, *argv)
    assert code == 0 and [hp.update for hp in seen] == [update or "official"]
    if command == "evaluate":
        assert json.loads(out)["update"] == (update or "official")
    code, out, err = run(capsys, command, "--model", "toy", "--update", "r-rome")
    one_line_error(code, out, err, "invalid choice: 'r-rome'")
