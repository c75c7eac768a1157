"""Notebook widgets (ipywidgets core widgets only); each one's logic is a plain function.

One re-export per line, so that each widget module can add its own.
"""

from .tracing_explorer import TracingExplorer  # noqa: F401
from .tracing_explorer import explore  # noqa: F401
from .edit_playground import EditPlayground  # noqa: F401
from .edit_playground import run_edit  # noqa: F401
