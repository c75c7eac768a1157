"""Generate exercises/*.ipynb from solutions/*.ipynb (the solutions are the source of truth).

In every code cell, the lines between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` become
``raise NotImplementedError(...)`` at the same indentation (nbgrader-compatible markers); outputs
and execution counts are cleared, so the learner starts from a clean notebook. Cells tagged
``answer-key`` (an instructor's answer to a question without a computable answer) are left out.

    python scripts/make_exercises.py          # write exercises/
    python scripts/make_exercises.py --check  # exit 1 if exercises/ is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
ANSWER_KEY = "answer-key"  # cells with this tag (the instructor's answers) stay in solutions/ only
STUB = 'raise NotImplementedError("Your code here: see the instructions above.")'


def strip_solution(source: str) -> str:
    """Replace each solution region with a stub at the marker's indentation."""
    out, inside = [], False
    for line in source.splitlines():
        marker = line.strip()
        if marker == BEGIN:
            if inside:
                raise ValueError("nested ### BEGIN SOLUTION")
            inside = True
            out.append(line[: len(line) - len(line.lstrip())] + STUB)
        elif marker == END:
            if not inside:
                raise ValueError("### END SOLUTION without BEGIN")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError("### BEGIN SOLUTION without END")
    return "\n".join(out)


def make_exercise(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    notebook = nbformat.from_dict(solution)
    notebook.cells = [c for c in notebook.cells if ANSWER_KEY not in c.get("metadata", {}).get("tags", [])]
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.source = strip_solution(cell.source)
            cell.outputs, cell.execution_count = [], None
        cell.get("metadata", {}).pop("execution", None)
    return notebook


def render(solution_path: Path) -> str:
    notebook = make_exercise(nbformat.read(solution_path, as_version=4))
    return nbformat.writes(notebook) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that exercises/ is current")
    args = parser.parse_args(argv)
    stale = []
    for solution in sorted((ROOT / "solutions").glob("*.ipynb")):
        target = ROOT / "exercises" / solution.name
        text = render(solution)
        if target.exists() and target.read_text() == text:
            continue
        stale.append(target.name)
        if not args.check:
            target.parent.mkdir(exist_ok=True)
            target.write_text(text)
    if args.check and stale:
        print(f"out of date: {', '.join(stale)} -- run python scripts/make_exercises.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
