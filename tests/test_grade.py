"""Autograding: a passing, a failing, a crashing and a too-slow notebook each get the right row."""

from __future__ import annotations

import csv
import subprocess
import sys

import nbformat
import pytest

from rome_lib import checks
from rome_lib.checks import grade as g
from rome_lib.checks.verdict import RESULTS

IMPORTS = "from rome_lib.checks import check_window, check_undo\nimport torch"
WINDOW = """def window(layer, w, n_layer):
    return [l for l in range(layer - w // 2, layer - w // 2 + w) if 0 <= l < n_layer]{mistake}
check_window(window)"""
UNDO = """def edit_weight(module, new_weight):
    original = module.weight.detach().clone()
    with torch.no_grad():
        module.weight.copy_(new_weight)
    return lambda: module.weight.data.copy_(original)
check_undo(edit_weight)"""
STUB = """def edit_weight(module, new_weight):
    raise NotImplementedError("Your code here")
check_undo(edit_weight)"""


def notebook(path, *cells):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("submissions")
    notebook(root / "alice" / "01.ipynb", IMPORTS, WINDOW.format(mistake=""), UNDO)
    notebook(root / "bob.ipynb", IMPORTS, WINDOW.format(mistake="[1:]"), STUB)
    notebook(root / "carol" / "01.ipynb", "import os\nos._exit(1)", IMPORTS, WINDOW.format(mistake=""))
    slow = tmp_path_factory.mktemp("slow")
    notebook(slow / "dave" / "01.ipynb", "import time\ntime.sleep(600)", IMPORTS, UNDO)
    rows = {}
    for folder, limit in ((root, 300), (slow, 3)):  # generous: a loaded machine starts kernels slowly
        with open(g.grade(folder, time_limit=limit), newline="", encoding="utf-8") as f:
            rows.update({row["learner"]: row for row in csv.DictReader(f)})
    return rows


def test_passing_notebook(graded):
    row = graded["alice"]
    assert (row["status"], row["passed"], row["total"]) == ("ok", "2", "2")
    assert row["check_window"] == row["check_undo"] == "pass" and row["check_window hint"] == ""


def test_failing_notebook_gets_the_hints(graded):
    row = graded["bob"]
    assert (row["status"], row["passed"]) == ("errors", "0")
    assert row["check_window"] == "fail" and "Got" in row["check_window hint"]
    assert row["check_undo"] == "error" and "NotImplementedError" in row["check_undo hint"]


def test_crashing_and_slow_notebooks(graded):
    assert graded["carol"]["status"] == "crashed" and graded["carol"]["check_window"] == "not run"
    assert graded["dave"]["status"] == "timeout" and graded["dave"]["check_undo"] == "not run"


def test_checks_record_results(capsys):
    checks.check_window(lambda layer, w, n: [layer])
    result = checks.last_result()
    assert result is RESULTS[-1] and result.check == "check_window" and not result.passed
    assert result.hint and result.hint in capsys.readouterr().out


def test_cli_bad_input(tmp_path):
    run = subprocess.run([sys.executable, "-m", "rome_lib.checks", "grade", str(tmp_path / "none")],
                         capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.startswith("error:") and "Traceback" not in run.stderr
