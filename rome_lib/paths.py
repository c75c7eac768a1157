"""Where rome_lib keeps things: the cache root and the embedded toy model's folder, each worked out once.

A ground-floor module (it imports nothing from rome_lib). The cache root is ``$ROME_CACHE`` when
set (``~`` expanded), else ``~/.cache/rome_lib``; under it live ``data/`` (official data files),
``stats/`` (key statistics C) and ``models/`` (converted real models). It is read from the
environment on every call, so setting ``ROME_CACHE`` after import takes effect.
"""

from __future__ import annotations

import os
from pathlib import Path

TOY_DIR = Path(__file__).parent / "toyworld" / "assets"  # the embedded model, its facts and records


def cache_root() -> Path:
    """``$ROME_CACHE`` when set, else ``~/.cache/rome_lib``."""
    root = os.environ.get("ROME_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "rome_lib"


__all__ = ["TOY_DIR", "cache_root"]
