"""Autograding from the exercises' own checks: ``python -m rome_lib.checks grade SUBMISSIONS/``.

``SUBMISSIONS/`` holds one folder per learner (their exercise notebooks inside) or one notebook per
learner (named after them). Each notebook runs top to bottom in a fresh kernel (cells that raise do
not stop it), within a time limit per notebook; every check it calls records its verdict (see
:mod:`rome_lib.checks.verdict`). The grade is one CSV row per learner: the notebook's status, the
number of checks passed, and for every check called in the notebooks a column ``pass`` / ``fail`` /
``error`` (the learner's function raised) / ``not run`` (the notebook stopped first), with the hint
each failure got in the column beside it.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from .verdict import RECORD_ENV

CHECK_CALL = re.compile(r"\b(check_[a-z0-9_]+)\s*\(")


@dataclass
class Graded:
    """One learner's grade: per check, (verdict, hint); ``status`` is ok, errors (some cells
    raised), timeout or crashed (the kernel died or the notebook could not be run)."""

    learner: str
    status: str
    verdicts: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def passed(self) -> int:
        return sum(v == "pass" for v, _ in self.verdicts.values())


def submissions(root: Path) -> dict[str, list[Path]]:
    """Learner name → notebooks: each folder of ``root`` is a learner, so is each notebook in it."""
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder of submissions.")
    out = {}
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and not entry.name.startswith("."):
            notebooks = sorted(p for p in entry.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
            if notebooks:
                out[entry.name] = notebooks
        elif entry.suffix == ".ipynb":
            out[entry.stem] = [entry]
    if not out:
        raise ValueError(f"No notebooks in {root}: give one folder or one .ipynb per learner.")
    return out


def called_checks(notebook: Path) -> list[str]:
    """The checks a notebook calls, in order of first call (the grade's columns)."""
    from . import __dict__ as exported

    names = []
    for cell in nbformat.read(notebook, as_version=4).cells:
        if cell.cell_type == "code":
            for name in CHECK_CALL.findall(cell.source):
                if name in exported and name not in names:
                    names.append(name)
    return names


def run_notebook(notebook: Path, record: Path, time_limit: float) -> str:
    """Execute ``notebook`` in a child process (its kernel in the same process group) with the
    verdicts going to ``record``; kill the group after ``time_limit`` seconds. Returns the status."""
    env = dict(os.environ, **{RECORD_ENV: str(record)})
    cmd = [sys.executable, "-m", "rome_lib.checks.grade", "--run-one", str(notebook)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=time_limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return "timeout"
    status = out.strip().splitlines()[-1] if out.strip() else ""
    return status if status in ("ok", "errors") else "crashed"


def _run_one(notebook: Path) -> None:
    """Child process: run every cell (errors allowed), print ok / errors / crashed."""
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(nb, timeout=None, allow_errors=True, kernel_name="python3",
                            resources={"metadata": {"path": str(notebook.parent)}})
    try:
        client.execute()
    except DeadKernelError:
        print("crashed")
        return
    errors = any(o.get("output_type") == "error" for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", []))
    print("errors" if errors else "ok")


def grade_learner(learner: str, notebooks: list[Path], time_limit: float) -> Graded:
    """Run each of the learner's notebooks and read the verdicts their checks recorded."""
    graded = Graded(learner, "ok")
    order = {"ok": 0, "errors": 1, "timeout": 2, "crashed": 3}
    for notebook in notebooks:
        with tempfile.TemporaryDirectory() as tmp:
            record = Path(tmp) / "verdicts.jsonl"
            status = run_notebook(notebook, record, time_limit)
            lines = record.read_text(encoding="utf-8").splitlines() if record.exists() else []
        graded.status = max(graded.status, status, key=order.__getitem__)
        names = called_checks(notebook)
        results = {}
        for line in lines:
            r = json.loads(line)
            results[r["check"]] = r  # the last verdict of a check counts
            if r["check"] not in names:
                names.append(r["check"])
        for name in names:
            r = results.get(name)
            if r is None:
                graded.verdicts[name] = ("not run", "")
            elif r["passed"]:
                graded.verdicts[name] = ("pass", "")
            else:
                graded.verdicts[name] = ("error" if r.get("error") else "fail", r["hint"])
    return graded


def write_csv(grades: list[Graded], path: Path) -> None:
    """One row per learner: learner, status, passed, total, then each check and its hint."""
    checks: list[str] = []
    for g in grades:
        checks += [c for c in g.verdicts if c not in checks]
    header = ["learner", "status", "passed", "total"] + [x for c in checks for x in (c, f"{c} hint")]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for g in grades:
            row = [g.learner, g.status, g.passed, len(checks)]
            for c in checks:
                verdict, hint = g.verdicts.get(c, ("not run", ""))
                row += [verdict, hint]
            writer.writerow(row)


def grade(root: Path, out: Path | None = None, time_limit: float = 600) -> Path:
    """Grade every learner in ``root``; write the CSV (default ``root/grades.csv``); return its path."""
    out = out or root / "grades.csv"
    grades = []
    for learner, notebooks in submissions(root).items():
        g = grade_learner(learner, notebooks, time_limit)
        print(f"{learner}: {g.status}, {g.passed}/{len(g.verdicts)} checks passed", flush=True)
        grades.append(g)
    write_csv(grades, out)
    return out


if __name__ == "__main__" and sys.argv[1:2] == ["--run-one"]:
    _run_one(Path(sys.argv[2]))
