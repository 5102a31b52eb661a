"""hindlog: hindsight logging for model training.

Record cheaply (``hl.log``, ``hl.loop``, ``hl.arg``), add log statements
later, replay them from checkpoints, and query everything as DataFrames.
"""

from __future__ import annotations

import time as _time

#: When hindlog's import began: what hindlog costs a run's start is charged to its overhead budget.
IMPORT_STARTED = _time.perf_counter()
_numpy_loaded = "numpy" in __import__("sys").modules
import numpy as _numpy  # noqa: E402  (imported first, alone, to time it)

#: Seconds spent importing NumPy here (0 if the script had): a script that imports NumPy
#: itself would have paid them anyway.
NUMPY_IMPORT_SECONDS = 0.0 if _numpy_loaded else _time.perf_counter() - IMPORT_STARTED

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

#: Seconds this package's import took (the modules it needs that the script had not imported yet included).
IMPORT_SECONDS = _time.perf_counter() - IMPORT_STARTED

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
