"""Exercises are generated from solutions; they must be in sync and stop at their first stub."""

import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import make_exercises  # noqa: E402

SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))


def test_strip_solution_keeps_indentation_and_code_around():
    source = "def f(x):\n    ### BEGIN SOLUTION\n    return x + 1\n    ### END SOLUTION\nprint(f)"
    assert make_exercises.strip_solution(source) == (
        f"def f(x):\n    {make_exercises.STUB}\nprint(f)"
    )
    with pytest.raises(ValueError, match="without END"):
        make_exercises.strip_solution("### BEGIN SOLUTION\nx = 1")


def test_exercises_are_in_sync_with_solutions():
    assert make_exercises.main(["--check"]) == 0, "run: python scripts/make_exercises.py"
    exercises = sorted(p.name for p in (ROOT / "exercises").glob("*.ipynb"))
    assert exercises == [p.name for p in SOLUTIONS]


@pytest.mark.parametrize("path", [ROOT / "exercises" / p.name for p in SOLUTIONS], ids=lambda p: p.name)
def test_exercise_runs_up_to_its_first_stub(path):
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    notebook = nbformat.read(path, as_version=4)
    assert any(make_exercises.STUB in c.source for c in notebook.cells if c.cell_type == "code")
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    with pytest.raises(CellExecutionError, match="NotImplementedError"):
        client.execute()


def test_answer_keys_stay_in_solutions():
    solution = nbformat.read(ROOT / "solutions" / "04_analysis_exercises.ipynb", as_version=4)
    keys = [c.source for c in solution.cells if make_exercises.ANSWER_KEY in c.metadata.get("tags", [])]
    exercise = nbformat.read(ROOT / "exercises" / "04_analysis_exercises.ipynb", as_version=4)
    assert keys and not any(c.source in keys for c in exercise.cells)
