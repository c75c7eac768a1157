"""What scripts/run_notebooks.py keeps in a committed notebook: text and PNGs, no bars or widgets."""

import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import run_notebooks  # noqa: E402


def _stream(name, text):
    return nbformat.v4.new_output("stream", name=name, text=text)


def test_progress_bars_and_browser_outputs_go_text_and_warnings_stay():
    bar = _stream("stderr", "facts:   0%|          | 0/9 [00:00<?, ?it/s]\rfacts: 100%|##| 9/9 [00:01<00:00]\n")
    closing = _stream("stderr", "\n")  # tqdm's last newline arrives as its own stream
    warning = _stream("stderr", "UserWarning: C was recomputed\n")
    printed = _stream("stdout", "50%| is only text here\n")
    widget = nbformat.v4.new_output("display_data", data={
        "application/vnd.jupyter.widget-view+json": {"model_id": "x"}})
    figure = nbformat.v4.new_output("display_data", data={"image/png": "iVBOR", "text/html": "<b/>"})
    cell = nbformat.v4.new_code_cell("x", outputs=[bar, closing, warning, printed, widget, figure])
    notebook = nbformat.v4.new_notebook(cells=[cell])
    run_notebooks.strip_dynamic_outputs(notebook)
    kept = notebook.cells[0].outputs
    assert [o.get("text") for o in kept[:2]] == [warning.text, printed.text]
    assert len(kept) == 3 and kept[2]["data"] == {"image/png": "iVBOR"}
