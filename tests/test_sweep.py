"""Where to edit? The layer sweep edits at every requested layer after one pass for C; the rank
correlation is Spearman's."""

from __future__ import annotations

import dataclasses
import json

import pytest

from rome_lib import sweep
from rome_lib.__main__ import main
from rome_lib.hparams import ROMEHyperParams
from rome_lib.models import load_model


def test_spearman_on_hand_counted_ranks():
    assert sweep.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert sweep.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Ranks (1, 2, 3, 4) vs (2, 1, 4, 3): 1 - 6·Σd²/(n(n²-1)) = 1 - 6·4/60 = 0.6.
    assert sweep.spearman([0.1, 0.2, 0.3, 0.4], [5, 1, 9, 7]) == pytest.approx(0.6)
    # Ties share their mean rank: (1.5, 1.5, 3) vs (1, 2, 3) → r = 0.866.
    assert sweep.spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(3 ** 0.5 / 2)
    with pytest.raises(ValueError, match="constant"):
        sweep.spearman([1, 1, 1], [1, 2, 3])


def test_layers_parse_and_are_checked():
    assert sweep.parse_layers("0-7", 8) == list(range(8))
    assert sweep.parse_layers("0-29:3", 30) == list(range(0, 30, 3))
    assert sweep.parse_layers("2,5", 8) == [2, 5]
    with pytest.raises(ValueError, match="do not exist"):
        sweep.parse_layers("6-9", 8)
    with pytest.raises(ValueError, match="Cannot read"):
        sweep.parse_layers("x", 8)


def test_sweep_edits_at_each_layer_after_one_pass_for_c(monkeypatch, tmp_path):
    monkeypatch.setenv("ROME_CACHE", str(tmp_path))
    mt = load_model("toy", device="cpu")
    records = json.loads(mt.data_file("counterfact.json").read_text())[:2]
    hp = dataclasses.replace(ROMEHyperParams.for_model("toy"), mom2_n_samples=40, v_num_grad_steps=5)
    passes, layers_edited = [], []
    real_layers_stats = sweep.layers_stats
    monkeypatch.setattr(sweep, "layers_stats", lambda mt, layers, **kw: passes.append(list(layers))
                        or real_layers_stats(mt, layers, **kw))
    real_evaluate = sweep.evaluate
    monkeypatch.setattr(sweep, "evaluate", lambda mt, records, method, hparams, **kw:
                        layers_edited.append(hparams.layer) or real_evaluate(mt, records, method,
                                                                             hparams=hparams, **kw))
    partial = []  # what a long sweep keeps after each layer
    out = sweep.sweep_layers(mt, records, [4, 2], hparams=hp, progress=False,
                             on_layer=lambda o: partial.append([r["layer"] for r in o["results"]]))
    assert passes == [[4, 2]] and layers_edited == [4, 2] and partial == [[4], [4, 2]]
    assert len(list((tmp_path / "stats").iterdir())) == 2  # one cached C per layer
    assert [r["layer"] for r in out["results"]] == [4, 2] and out["n"] == 2
    assert all(0 <= r[k] <= 100 for r in out["results"] for k in sweep.SCORES)


def test_cli_sweep_rejects_layers_the_model_lacks(capsys):
    assert main(["sweep", "--model", "toy", "--layers", "0-9", "--n", "1", "--json",
                 "--device", "cpu"]) == 2
    assert "do not exist" in capsys.readouterr().err
