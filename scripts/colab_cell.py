"""Give every lesson a first code cell that, in Colab only, installs the course and turns on
Colab's widget manager; elsewhere the cell does nothing.

    python scripts/colab_cell.py lessons/*.ipynb          # add or update the cell
    python scripts/colab_cell.py --check lessons/*.ipynb  # exit 1 if a notebook lacks it

The cell is recognised by its first line, so running the script again updates it in place (the
repository URL lives in ``REPOSITORY`` below and in the cell, nowhere else).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

# Where Colab clones the course from. A placeholder: whoever publishes the course sets the public
# clone URL here and re-runs this script on lessons/ and solutions/, then scripts/make_exercises.py.
REPOSITORY = "https://github.com/rome-course/rome-course.git"
MARKER = "# Colab only: install the course"
SOURCE = f'''{MARKER} and turn on Colab's widget manager. Elsewhere this cell does nothing.
import sys

REPOSITORY = "{REPOSITORY}"
if "google.colab" in sys.modules:
    import os
    import subprocess

    if not os.path.isdir("/content/course"):
        subprocess.run(["git", "clone", "--depth", "1", REPOSITORY, "/content/course"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "/content/course"], check=True)
    sys.path.insert(0, "/content/course")
    from google.colab import output

    output.enable_custom_widget_manager()'''


def colab_cell() -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(SOURCE, metadata={"tags": ["colab"]})


def first_code_index(nb: nbformat.NotebookNode) -> int:
    return next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), len(nb.cells))


def add(nb: nbformat.NotebookNode) -> bool:
    """Put the Colab cell before the first code cell (or update it there); True if nb changed."""
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.startswith(MARKER):
            if cell.source == SOURCE:
                return False
            cell.source = SOURCE
            return True
    nb.cells.insert(first_code_index(nb), colab_cell())
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true", help="only check that every notebook has it")
    args = parser.parse_args(argv)
    missing = []
    for path in args.notebooks:
        nb = nbformat.read(path, as_version=4)
        if add(nb):
            missing.append(str(path))
            if not args.check:
                nbformat.write(nb, path)
    if args.check and missing:
        print(f"no current Colab cell in: {', '.join(missing)} -- run python scripts/colab_cell.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
