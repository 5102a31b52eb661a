"""Every tunable in one place: a default, an environment variable, a getter.

An explicit argument (``hl.init(epsilon=...)``, ``--epsilon``) beats the
environment, which beats the default.
"""

from __future__ import annotations

import os

#: Overhead bound: the fraction of a run's wall time hindlog may block training.
DEFAULT_EPSILON = 0.05
#: The background writer commits buffered records at least this often (seconds): what a
#: ``kill -9`` can lose.
FLUSH_INTERVAL = 0.25
#: Largest array or tensor ``hl.log`` accepts, in bytes.
MAX_ARRAY_BYTES = 64 * 1024 * 1024
#: Records held in memory while the catalog cannot be written, before spilling to disk.
SPILL_THRESHOLD = 200_000
#: Untracked files larger than this are left out of code snapshots (bytes).
MAX_SNAPSHOT_FILE_BYTES = 5 * 1024 * 1024


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None


def disabled() -> bool:
    """``HINDLOG_DISABLED=1`` turns every hindlog call into a pass-through."""
    return os.environ.get("HINDLOG_DISABLED", "").strip().lower() in ("1", "true", "yes", "on")


def epsilon(explicit: float | None = None) -> float:
    """The overhead bound ε, from the argument, ``HINDLOG_EPSILON`` or the default."""
    value = explicit if explicit is not None else _env_float("HINDLOG_EPSILON", DEFAULT_EPSILON)
    if not 0.0 <= value < 1.0:
        where = "" if explicit is not None else f"HINDLOG_EPSILON={os.environ.get('HINDLOG_EPSILON')}: "
        raise ValueError(f"{where}epsilon must be in [0, 1) (a fraction of the run's time, e.g. 0.05), got {value!r}")
    return value


def flush_interval() -> float:
    """Seconds between background commits (``HINDLOG_FLUSH_INTERVAL``). A value that is not a
    positive number gets the default, with a warning: it must not stop a run from recording."""
    try:
        value = _env_float("HINDLOG_FLUSH_INTERVAL", FLUSH_INTERVAL)
    except ValueError as e:
        reason = str(e)
    else:
        if 0 < value < float("inf"):
            return value
        reason = f"HINDLOG_FLUSH_INTERVAL={value!r} is not a positive number of seconds"
    import warnings

    warnings.warn(f"hindlog: {reason}; committing every {FLUSH_INTERVAL} s instead", RuntimeWarning, stacklevel=2)
    return FLUSH_INTERVAL


def store_dir_override() -> str | None:
    """``HINDLOG_DIR``: where the store lives, instead of ``<project root>/.hindlog``."""
    return os.environ.get("HINDLOG_DIR") or None


def project_root_override() -> str | None:
    """``HINDLOG_ROOT``: the project's root directory, instead of the enclosing git work tree (or
    the current directory outside git). Replay sets it for its workers, which run the recorded
    code in a scratch copy of the project that is not a git work tree."""
    return os.environ.get("HINDLOG_ROOT") or None


def arg_override(name: str) -> str | None:
    """``HINDLOG_SET_<name>``: a hyperparameter value that beats the script's default."""
    return os.environ.get(f"HINDLOG_SET_{name}")
