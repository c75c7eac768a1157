"""`make slides` builds reveal.js decks: headings start slides, tagged cells are hidden."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import make_slides  # noqa: E402


def test_builds_one_deck(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Title"),
        nbformat.v4.new_code_cell("print('visible code')"),
        nbformat.v4.new_code_cell("secret_setup = 1", metadata={"tags": ["hide-input"]}),
        nbformat.v4.new_code_cell("colab_only = 1", metadata={"tags": ["colab"]}),
        nbformat.v4.new_markdown_cell("## Second slide"),
    ])
    path = tmp_path / "lesson.ipynb"
    nbformat.write(nb, path)
    html = make_slides.build(path, tmp_path / "slides").read_text()
    assert "reveal" in html.lower() and "Second slide" in html and "visible code" in html
    assert "secret_setup" not in html and "colab_only" not in html
    assert html.count("<section") >= 2  # two slides
