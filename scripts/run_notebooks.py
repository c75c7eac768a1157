"""Execute notebooks in place and keep their outputs small and static.

    python scripts/run_notebooks.py lessons/02_causal_tracing.ipynb solutions/*.ipynb

Each notebook runs top to bottom in its own folder (ROME_MODEL defaults to the embedded model);
outputs that need a browser (widget views, JavaScript, HTML) are dropped so the committed file
holds text and PNG figures only, and so are text progress bars (live feedback with timings that
would change the file on every run). Prints the seconds each notebook took.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

DROP = ("application/vnd.jupyter.widget-view+json", "application/javascript", "text/html")
PROGRESS = re.compile(r"\d+%\|")  # tqdm's "NN%|" bar


def is_progress_bar(output: dict) -> bool:
    """A stderr stream made only of tqdm bar updates (lines split on \\r and \\n), or blank."""
    if output.get("output_type") != "stream" or output.get("name") != "stderr":
        return False
    parts = [p for p in re.split(r"[\r\n]", "".join(output.get("text", ""))) if p.strip()]
    return all(PROGRESS.search(p) for p in parts)  # a blank stream is a bar's closing newline


def strip_dynamic_outputs(notebook: nbformat.NotebookNode) -> None:
    """Remove browser-only output types and progress bars; an output left with no data is removed."""
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.get("outputs", []):
            if is_progress_bar(output):
                continue
            data = output.get("data")
            if data is not None:
                for mime in DROP:
                    data.pop(mime, None)
                if not data:
                    continue
            kept.append(output)
        cell.outputs = kept
        cell.get("metadata", {}).pop("execution", None)
    notebook.metadata.pop("widgets", None)


def run(path: Path, timeout: int = 900) -> float:
    notebook = nbformat.read(path, as_version=4)
    os.environ.setdefault("ROME_MODEL", "toy")
    started = time.perf_counter()
    NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - started
    strip_dynamic_outputs(notebook)
    nbformat.write(notebook, path)
    return seconds


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(f"{name}: {run(Path(name)):.1f} s", flush=True)
