"""Build reveal.js slides from the lessons: ``make slides`` (or this script) writes slides/NAME.slides.html.

Each lesson's headings (``#`` and ``##`` markdown cells) start a new slide; the cells between follow
on the same slide. Code cells tagged ``hide-input`` show their output only; cells tagged
``remove-cell`` or ``colab`` (setup for Colab) are left out. The lessons themselves are not changed.

    python scripts/make_slides.py lessons/*.ipynb [--out slides]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import nbformat
from nbconvert import SlidesExporter
from nbconvert.preprocessors import TagRemovePreprocessor

ROOT = Path(__file__).resolve().parent.parent


def as_deck(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``nb`` with a slide type on every cell: a heading starts a slide."""
    deck = copy.deepcopy(nb)
    for i, cell in enumerate(deck.cells):
        heading = cell.cell_type == "markdown" and cell.source.lstrip().startswith(("# ", "## "))
        cell.metadata.setdefault("slideshow", {})["slide_type"] = "slide" if heading or i == 0 else "-"
    return deck


def build(notebook: Path, out: Path) -> Path:
    """Write ``out/<notebook stem>.slides.html``; return its path."""
    exporter = SlidesExporter()
    exporter.register_preprocessor(TagRemovePreprocessor(
        remove_cell_tags={"remove-cell", "colab"}, remove_input_tags={"hide-input"}, enabled=True), True)
    body, _ = exporter.from_notebook_node(as_deck(nbformat.read(notebook, as_version=4)))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{notebook.stem}.slides.html"
    path.write_text(body, encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "slides")
    args = parser.parse_args(argv)
    for notebook in args.notebooks:
        print(build(notebook, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
