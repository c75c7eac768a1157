"""The errors rome_lib raises for its users: one base class, :class:`RomeError`.

A ground-floor module (it imports nothing from rome_lib), so every other module can raise these
and the command line can catch them all with one ``except RomeError`` and print one line.

Each class also derives from ``RuntimeError``, as it did before the base class existed, so code
that catches ``RuntimeError`` keeps working. The classes stay importable from the modules that
raise them (``rome_lib.models.ModelNotAvailableError``, ``rome_lib.covariance.CorpusNotAvailableError``,
...).
"""

from __future__ import annotations


class RomeError(Exception):
    """Base of every error meant for a user: bad input or a missing resource, said in one line."""


class ModelNotAvailableError(RomeError, RuntimeError):
    """The requested model cannot be loaded here (unknown name, no network and no cache, ...)."""


class InsufficientMemoryError(ModelNotAvailableError):
    """The model would not fit in the free memory of the device it is loaded on.

    A subclass of :class:`ModelNotAvailableError`, so code (and the command line) that handles the
    one handles the other. ``needed`` and ``free`` are in bytes.
    """

    def __init__(self, message: str, needed: int = 0, free: int = 0):
        super().__init__(message)
        self.needed, self.free = needed, free


class DataNotAvailableError(RomeError, RuntimeError):
    """An official data file is not in the cache and cannot be downloaded (or is corrupt)."""


class CorpusNotAvailableError(RomeError, RuntimeError):
    """The text corpus for the key statistics C cannot be had here (offline, missing file, ...)."""


class EditOrderError(RomeError, RuntimeError):
    """An edit was undone out of order (edits on one model must be undone last-in, first-out)."""


__all__ = [
    "RomeError", "ModelNotAvailableError", "InsufficientMemoryError", "DataNotAvailableError",
    "CorpusNotAvailableError", "EditOrderError",
]
