"""Execute notebooks in place and keep their outputs small and static.

    python scripts/run_notebooks.py lessons/02_causal_tracing.ipynb solutions/*.ipynb

Each notebook runs top to bottom in its own folder (ROME_MODEL defaults to the embedded model);
outputs that need a browser (widget views, JavaScript, HTML) are dropped so the committed file
holds text and PNG figures only. Prints the seconds each notebook took.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

DROP = ("application/vnd.jupyter.widget-view+json", "application/javascript", "text/html")


def strip_dynamic_outputs(notebook: nbformat.NotebookNode) -> None:
    """Remove browser-only output types; an output left with no data is removed entirely."""
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.get("outputs", []):
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
