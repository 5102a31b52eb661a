"""hindlog: hindsight logging for model training.

Record cheaply (``hl.log``, ``hl.loop``, ``hl.arg``), add log statements
later, replay them from checkpoints, and query everything as DataFrames.
"""

from __future__ import annotations

from .errors import (
    CheckpointError,
    CodeVersionError,
    CorruptObject,
    HindlogError,
    ReplayError,
    RunNotFound,
    SchemaError,
    StoreError,
)
from .query import dataframe, runs
from .record import arg, finish, init, log, loop, run_id

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "CodeVersionError",
    "CorruptObject",
    "HindlogError",
    "ReplayError",
    "RunNotFound",
    "SchemaError",
    "StoreError",
    "arg",
    "dataframe",
    "finish",
    "init",
    "log",
    "loop",
    "run_id",
    "runs",
]
