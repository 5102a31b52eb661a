"""The exceptions hindlog raises (one base class, one subclass per kind of failure), and its warnings."""

from __future__ import annotations

import os
import sys
import warnings

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn_user(message: str) -> None:
    """A RuntimeWarning shown at the user's line that led to it: the first frame outside hindlog."""
    level, frame = 2, sys._getframe(1)  # stacklevel 2: warn_user's caller
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    warnings.warn(message, RuntimeWarning, stacklevel=level)


_standard_format = warnings.formatwarning


def _format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None) -> str:
    # A warning raised at a line of hindlog's own (a checkpoint that could not be written, a
    # damaged one passed over) is shown as its message alone: the file, line and source line
    # would point into hindlog, not at anything the user can act on. Warnings shown at the
    # user's line (``warn_user``) and everyone else's keep the standard form.
    if filename.startswith(_PACKAGE_DIR) and str(message).startswith("hindlog:"):
        return f"{message}\n"
    return _standard_format(message, category, filename, lineno, line)


warnings.formatwarning = _format_warning


class HindlogError(Exception):
    """Base class of every error hindlog raises on purpose."""


class StoreError(HindlogError):
    """The store (catalog or objects) cannot be read or written."""


class DamagedCatalog(StoreError):
    """SQLite says the catalog file itself is damaged (malformed, or not a database)."""

    def __init__(self, message: str, cause: str = "") -> None:
        super().__init__(message)
        #: SQLite's own words.
        self.cause = cause


class SchemaError(StoreError):
    """The catalog was written by an incompatible version of hindlog."""


class RunNotFound(HindlogError):
    """A run reference (id, prefix, ``latest``) matches no run, or several."""


class CheckpointError(HindlogError):
    """A checkpoint is missing, corrupt, or cannot be restored."""


class CorruptObject(CheckpointError):
    """A stored object's content does not match its hash."""


class ReplayError(HindlogError):
    """A replay cannot be planned or carried out."""


class ReplayInterrupted(ReplayError):
    """Ctrl-C (or SIGTERM) stopped a replay; what its workers stored is kept."""

    #: The signal that stopped it (SIGINT for Ctrl-C).
    signal: int = 2


class CodeVersionError(HindlogError):
    """The code of a run cannot be snapshotted or materialized."""
