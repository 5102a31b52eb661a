"""hindlog: hindsight logging for model training.

Record cheaply (``hl.log``, ``hl.loop``, ``hl.arg``), add log statements
later, replay them from checkpoints, and query everything as DataFrames.
"""

from __future__ import annotations

import os as _os
import sys as _sys
import time as _time

#: When hindlog's import began: what hindlog costs a run's start is charged to its overhead budget.
IMPORT_STARTED = _time.perf_counter()
#: Seconds spent importing NumPy here (imported first, alone, to time it; 0 if the script had
#: imported it): a script that imports NumPy itself would have paid them anyway.
NUMPY_IMPORT_SECONDS = 0.0
if "numpy" not in _sys.modules:
    __import__("numpy")
    NUMPY_IMPORT_SECONDS = _time.perf_counter() - IMPORT_STARTED

from .errors import (
    CheckpointError,
    CodeVersionError,
    CorruptObject,
    DamagedCatalog,
    HindlogError,
    ReplayError,
    RunNotFound,
    SchemaError,
    StoreError,
)
from .query import dataframe, runs
from .record import arg, checkpoints, finish, init, log, loop, run_id
from .restore import restore
# The replay's copy of the code calls these around the statements added since the record.
from .controller import hindsight_call as _hindsight_call, hindsight_code as _hindsight_code
from .controller import hindsight_mark as _hindsight_mark
from .controller import hindsight_iter as _hindsight_iter, replaying

__version__ = "0.1.0"

from . import state as _state

# The random generators as the script left them on importing hindlog: an unseeded script's
# replay and resume workers start from the record's (its model's initial weights, its fixed noise).
_state.note_initial_generators()
if _os.environ.get("HINDLOG_CONTROL"):
    try:
        import base64 as _base64
        import json as _json

        _spec = _json.loads(open(_os.environ["HINDLOG_CONTROL"]).read())
        if _spec.get("initial_generators"):
            _state.set_initial_generators(_base64.b64decode(_spec["initial_generators"]))
        if _spec.get("torch_initial_seed") is not None:
            _state.seed_torch_when_imported(int(_spec["torch_initial_seed"]))
    except Exception:  # noqa: BLE001 - the worker goes on from fresh generators
        pass

if "HINDLOG_SCRATCH" in _os.environ:
    # A replay worker: what the replayed code writes stays in the replay's scratch copy.
    from .scratchguard import install as _install_scratch_guard

    _install_scratch_guard(_os.environ["HINDLOG_SCRATCH"], int(_os.environ.get("HINDLOG_WORKERS_STARTED_NS") or 0) or None)

#: Seconds this package's import took (the modules it needs that the script had not imported yet included).
IMPORT_SECONDS = _time.perf_counter() - IMPORT_STARTED

__all__ = [
    "CheckpointError",
    "CodeVersionError",
    "CorruptObject",
    "DamagedCatalog",
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
