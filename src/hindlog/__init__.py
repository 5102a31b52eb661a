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
from .record import arg, checkpoints, finish, init, log, loop, run_id
from .restore import restore
from .controller import replaying

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
    "checkpoints",
    "dataframe",
    "finish",
    "init",
    "log",
    "replaying",
    "restore",
    "loop",
    "run_id",
    "runs",
]
