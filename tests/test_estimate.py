"""Forecasts of long computations: parameter count × tokens × passes, announced only when long."""

import sys

import pytest

from rome_lib import estimate
from rome_lib.covariance import layer_stats


def test_block_params_counts_what_every_token_goes_through(tiny_gpt2):
    model = tiny_gpt2.model
    blocks = sum(p.numel() for p in model.transformer.h.parameters())
    rest = sum(p.numel() for p in [*model.transformer.ln_f.parameters(), *model.transformer.wpe.parameters()])
    assert estimate.block_params(model) == blocks + rest  # the tied token embedding/head is left out
    assert estimate.block_params(model, layers=2) == (blocks + rest) // 2


def test_forecast_is_linear_in_params_tokens_and_passes_and_cpu_only():
    one = estimate.estimate_seconds(10**6, 1000, threads=1)
    assert one == pytest.approx(10**9 / estimate.CPU_RATE)
    assert estimate.estimate_seconds(2 * 10**6, 3000, passes=2, threads=1) == pytest.approx(12 * one)
    assert estimate.estimate_seconds(10**6, 1000, device="cuda") is None


def test_announce_prints_one_line_only_when_long(capsys):
    assert not estimate.announce("A quick loop", 10.0, "nothing")
    assert not estimate.announce("On a GPU", None, "nothing")
    assert estimate.announce("AIE over 100 facts", 1500.0, "fewer facts (--n)")
    out = capsys.readouterr().out  # stdout: a notebook keeps it as text, apart from the bars
    assert out.count("\n") == 1 and "about 25 min" in out and "Cheaper: fewer facts (--n)." in out
    with estimate.announcements_to(sys.stderr):  # the command line keeps stdout for --json
        estimate.announce("AIE over 100 facts", 1500.0, "fewer facts (--n)")
    assert capsys.readouterr().err.count("\n") == 1


def test_a_long_first_computation_of_c_is_announced(tiny_gpt2, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(estimate, "CPU_RATE", 1.0)  # as if this CPU were very slow
    texts = ["Michael Jordan plays the sport of basketball."] * 4
    layer_stats(tiny_gpt2, 1, texts, cache_dir=tmp_path)
    assert "Computing C at layer 1 from 4 texts" in capsys.readouterr().out
    layer_stats(tiny_gpt2, 1, texts, cache_dir=tmp_path)  # cached now: nothing to announce
    assert "Computing C" not in capsys.readouterr().out
