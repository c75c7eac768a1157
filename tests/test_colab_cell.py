"""The Colab cell installs the course only in Colab and does nothing elsewhere."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import colab_cell  # noqa: E402


ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(ROOT.glob("lessons/*.ipynb")) + sorted(ROOT.glob("solutions/*.ipynb")) + \
    sorted(ROOT.glob("exercises/*.ipynb"))


def test_does_nothing_outside_colab(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(colab_cell.SOURCE, {})
    assert calls == [] and capsys.readouterr() == ("", "")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_notebook_starts_with_the_current_colab_cell(path):
    code = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    assert code and code[0].source == colab_cell.SOURCE, "run: python scripts/colab_cell.py " + str(path)
    assert sum(c.source.startswith(colab_cell.MARKER) for c in code) == 1


def test_in_colab_it_clones_installs_and_enables_widgets(monkeypatch, tmp_path):
    calls, enabled = [], []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **k: calls.append(cmd))
    colab = types.ModuleType("google.colab")
    colab.output = types.SimpleNamespace(enable_custom_widget_manager=lambda: enabled.append(True))
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setattr(sys, "path", list(sys.path))
    exec(colab_cell.SOURCE, {})
    assert calls[0][:2] == ["git", "clone"] and colab_cell.REPOSITORY in calls[0]
    assert calls[1][1:4] == ["-m", "pip", "install"] and enabled == [True]


def test_script_adds_the_cell_once(tmp_path):
    path = tmp_path / "lesson.ipynb"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Title"),
                                         nbformat.v4.new_code_cell("x = 1")])
    nbformat.write(nb, path)
    assert colab_cell.main(["--check", str(path)]) == 1
    assert colab_cell.main([str(path)]) == 0
    cells = nbformat.read(path, as_version=4).cells
    assert [c.cell_type for c in cells] == ["markdown", "code", "code"]
    assert cells[1].source == colab_cell.SOURCE and cells[2].source == "x = 1"
    assert colab_cell.main([str(path)]) == 0 and len(nbformat.read(path, as_version=4).cells) == 3
    assert colab_cell.main(["--check", str(path)]) == 0
