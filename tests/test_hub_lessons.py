"""Lessons 00-07 run top to bottom on a hub model: ROME_MODEL=gpt2 from a Hugging Face cache.

The cache holds a random-weight 6-layer GPT-2 with GPT-2's real tokenizer (tests/hub_fixture.py), so
the numbers mean nothing; what is checked is that no cell crashes on a model that is not the toy
(real vocabulary, Conv1D layout, a model that knows none of the facts). Offline as in CI: the paper's
known_1000.json cannot be fetched (so the model has no known facts, which the lessons say), and the
toy world's CounterFact-style records stand in for the official counterfact.json in the data cache.
Loops are shortened (fewer facts, samples, texts, records) by a cell inserted after each lesson's
parameters cell.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).parents[1]
LESSONS = sorted((ROOT / "lessons").glob("0[0-7]_*.ipynb"))
SHORTER = {"N_FACTS": "3", "SAMPLES": "2", "N_TEXTS": "64", "N_SEQUENTIAL": "2", "N_RECORDS": "2",
           "GEN_LENGTH": "8"}
OFFLINE = "http://127.0.0.1:9"  # a closed port: the data site is unreachable, at once


def shortened(path: Path) -> nbformat.NotebookNode:
    """The notebook with a cell after its parameters cell that makes the loops short."""
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        names = [n for n in SHORTER if cell.cell_type == "code" and re.search(rf"^{n} = ", cell.source, re.M)]
        if names:
            nb.cells.insert(i + 1, nbformat.v4.new_code_cell("\n".join(f"{n} = {SHORTER[n]}" for n in names)))
            break
    return nb


@pytest.fixture(scope="module")
def gpt2_lesson_env(gpt2_hub_home, tmp_path_factory):
    cache = tmp_path_factory.mktemp("rome_cache")
    (cache / "data").mkdir()
    shutil.copy(ROOT / "rome_lib/toyworld/assets/counterfact.json", cache / "data/counterfact.json")
    corpus = cache / "corpus.txt"  # a few lines of text for C (real models read Wikipedia leads)
    corpus.write_text("\n".join(["The Space Needle is located in the city of Seattle.",
                                 "Michael Jordan plays the sport of basketball.",
                                 "The Eiffel Tower is in Paris, the capital of France.",
                                 "Danielle Darrieux, a native speaker of French, was an actress."] * 8))
    return {"HF_HOME": str(gpt2_hub_home), "HF_HUB_OFFLINE": "1", "ROME_MODEL": "gpt2",
            "ROME_CACHE": str(cache), "ROME_CORPUS": str(corpus), "ROME_DATA_URL": OFFLINE,
            "ROME_EVAL_N": "2", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.slow
@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_runs_on_gpt2_from_the_hub_cache(path, gpt2_lesson_env, monkeypatch):
    for key, value in gpt2_lesson_env.items():
        monkeypatch.setenv(key, value)
    nb = shortened(path)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    if path.stem.startswith(("00", "01", "02", "03", "04")):  # the facts cells said what they ran on
        printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
        assert "does NOT know" in printed
