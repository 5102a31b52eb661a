"""The record API: ``hl.log``, ``hl.arg``, ``hl.loop``, ``hl.init``, ``hl.finish``.

These are thin module-level functions over the process's ``Recorder``. A run
starts implicitly at the first call and finishes at exit. ``hl.log``'s fast
path (a number under a valid name) is a type check and a deque append.
``HINDLOG_DISABLED=1`` swaps every function for a pass-through at import.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from . import config, options
from .errors import StoreError, warn_user
from .recorder import Recorder
from .store import Store
from .values import capture, check_name

T = TypeVar("T")

_recorder: Recorder | None = None
#: Set when the store could not be opened at all: calls still validate, nothing is stored.
_broken = False


#: Runs this process has started (a script may call ``hl.init`` several times, a sweep).
_runs_started = 0
#: The run ``hl.finish()`` ended and how it was started (project, ε, store), until a call
#: starts the next run.
_finished_by_call: tuple[str, dict[str, Any]] | None = None


def _inside(path: str, root: Any) -> bool:
    """Whether ``path`` is ``root`` or inside it (no git process asked: under ``GIT_CEILING_DIRECTORIES``
    each costs the run's start a few milliseconds)."""
    from pathlib import Path

    try:
        return Path(path).resolve().is_relative_to(Path(root).resolve())
    except (OSError, ValueError):
        return True


def _running_script() -> str | None:
    """The file this process runs as ``__main__`` (``python train.py``, ``python -m pkg.train``),
    if any: not a notebook's or IPython's launcher, nor pytest's (installed tools, whose folder
    is not the project: those record where they run)."""
    first = sys.argv[0] if sys.argv else ""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if first in ("", "-c", "-m") or not main_file:
        return None
    try:
        path = os.path.realpath(first)
        if path != os.path.realpath(main_file):
            return None
    except (OSError, ValueError):
        return None
    # An installed tool: a console script in an environment's bin/ (ipython, pytest), or a
    # package's module (ipykernel_launcher, pytest's __main__).
    tools = {os.path.join(os.path.realpath(p), d) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix) for d in ("bin", "Scripts")}
    parts = path.split(os.sep)
    if os.path.dirname(path) in tools or "site-packages" in parts or "dist-packages" in parts:
        return None
    return first


def _start(**kwargs: Any) -> Recorder | None:
    global _recorder, _broken, _runs_started
    index = _runs_started
    _runs_started += 1
    if index and os.environ.get("HINDLOG_CONTROL"):
        # A replay or resume process stands for one run, its process's first (replay refuses
        # the others): the script going on to a next run is past it.
        raise SystemExit(0)
    try:
        script = _running_script()
        store = Store.for_project(store=kwargs.pop("store", None), script=script)
        if script is not None and not os.environ.get("HINDLOG_CONTROL") and not _inside(os.getcwd(), store.root):
            # Not the current directory's project: said, or `hindlog runs` here would not show the run.
            print(f"hindlog: recording into {store.path}, the store of {os.path.basename(script)}'s project",
                  file=sys.stderr)
        _recorder = Recorder(store, **kwargs)
        if _recorder.controller is None:
            if index:
                _recorder.writer.change("info", {"process_index": index})
            writer = _recorder.writer
            options.attach(lambda parsed: writer.change("info", {"options": parsed}))
    except Exception as e:
        if os.environ.get("HINDLOG_CONTROL"):
            raise  # a replay worker or resumed run that cannot attach must fail, not run unrecorded
        _broken = True
        if isinstance(e, ValueError):
            advice = "Fix the setting named above."
        elif isinstance(e, StoreError):
            advice = "See above, or set HINDLOG_DIR to record into another store."
        elif os.environ.get("HINDLOG_DIR"):
            # The store was asked for: the advice is about that path, not the project's.
            advice = f"Check that HINDLOG_DIR={os.environ['HINDLOG_DIR']} names a directory this process can write."
        else:
            advice = "Check that the project directory is writable, or set HINDLOG_DIR."
        warn_user(
            f"hindlog: could not start recording ({type(e).__name__}: {e}); training goes on "
            f"but nothing is being logged. {advice}"
        )
        return None
    return _recorder


def current() -> Recorder | None:
    """The active recorder, starting one if there is none."""
    global _finished_by_call
    rec = _recorder
    if rec is None and not _broken:
        if _finished_by_call is not None:
            # Values logged after hl.finish() (a final test metric) would otherwise land in a
            # run of their own without a word: say so, and keep them in the same project.
            finished, settings = _finished_by_call
            _finished_by_call = None
            rec = _start(**settings)
            if rec is not None:
                warn_user(
                    f"hindlog: a hindlog call after hl.finish() started a new run, {rec.run_id} (the finished one is "
                    f"{finished}); call hl.init() to start the next run explicitly, or log before hl.finish()"
                )
            return rec
        rec = _start()
    return rec


def log(name: str, value: T) -> T:
    """Record ``value`` under ``name`` in the current loop context and return it unchanged."""
    rec = _recorder
    if rec is None:
        rec = current()
        if rec is None:
            check_name(name)
            capture(value)
            return value
    t = type(value)
    if (t is float or t is int) and type(name) is str and name and rec.controller is None:
        ctx = rec._ctx
        if ctx is None:  # a nested loop moved on since the last record: Recorder.build_ctx, inlined
            parent, loop, cell, _outer = rec._level  # type: ignore[misc]
            ctx = rec._ctx = parent + ((loop, cell[0]),)
        rec.append((ctx, name, value))
        return value
    return rec.log_slow(name, value)


def arg(name: str, default: T) -> T:
    """A hyperparameter: ``default`` unless ``HINDLOG_SET_<name>`` overrides it; recorded with the run."""
    rec = current()
    if rec is None:
        from .recorder import cast_like

        override = config.arg_override(name)
        return default if override is None else cast_like(default, override, name)
    return rec.arg(name, default)


def loop(name: str, iterable: Iterable[T]) -> Iterator[T]:
    """Iterate over ``iterable`` as the loop ``name``; records inside carry its index."""
    rec = current()
    if rec is None:
        return iter(iterable)
    return rec.loop(name, iterable)


def checkpoints(**objects: Any) -> None:
    """Name the training state to checkpoint: models, optimizers, schedulers, arrays, picklable objects.

    The global random generators (Python's, NumPy's, torch's CPU and CUDA ones) are always
    included; a generator object of the script's own (``np.random.default_rng()``,
    ``random.Random``, a ``torch.Generator``) is state like a model: name it here.
    Raises TypeError naming any object that has no state_dict and cannot be pickled.
    """
    rec = current()
    if rec is None:
        from .state import declare

        for name, obj in objects.items():
            declare(name, obj)
        return
    rec.checkpoints(objects)


def init(
    project: str | None = None,
    name: str | None = None,
    epsilon: float | None = None,
    store: str | os.PathLike[str] | None = None,
) -> str | None:
    """Start a run explicitly (optional). Returns its id. A run already active is finished first."""
    global _broken, _finished_by_call
    if config.disabled():
        return None
    if epsilon is not None:
        config.epsilon(epsilon)  # a bad argument is the caller's error, raised here; a bad HINDLOG_EPSILON only warns
    rec = _recorder
    if rec is not None and not rec.finished and rec.nothing_logged_yet() and \
            (store is None or Store.for_project(store=store).path == rec.store.path):
        # hl.checkpoints(...) or hl.arg(...) came first and started the run: it is this one.
        rec.rename(project, name, epsilon)
        return rec.run_id
    if _recorder is not None and not _recorder.finished:
        _recorder.finish()
    _broken = False
    _finished_by_call = None
    rec = _start(project=project, name=name, epsilon=epsilon, store=store)
    return rec.run_id if rec else None


def finish() -> None:
    """Finish the current run now (optional: runs finish at exit)."""
    global _recorder, _finished_by_call
    if _recorder is not None:
        try:
            _recorder.finish()  # a Ctrl-C meanwhile is raised once the run is saved
        finally:
            _finished_by_call = (_recorder.run_id, {"project": _recorder.project, "epsilon": _recorder.epsilon,
                                                    "store": str(_recorder.store.path)})
            _recorder = None


def run_id() -> str | None:
    """The id of the run being recorded, or None."""
    return _recorder.run_id if _recorder is not None else None


# ----------------------------------------------------------------- pass-through mode


def _log_disabled(name: str, value: T) -> T:
    return value


def _arg_disabled(name: str, default: T) -> T:
    override = config.arg_override(name)
    if override is None:
        return default
    from .recorder import cast_like

    return cast_like(default, override, name)


def _loop_disabled(name: str, iterable: Iterable[T]) -> Iterable[T]:
    return iterable


def _init_disabled(*args: Any, **kwargs: Any) -> None:
    return None


def _checkpoints_disabled(**objects: Any) -> None:
    return None


if not config.disabled():
    options.watch()  # (the script's command line is usually parsed before its first hindlog call)
if config.disabled():
    log = _log_disabled  # type: ignore[assignment]  # noqa: F811
    arg = _arg_disabled  # type: ignore[assignment]  # noqa: F811
    loop = _loop_disabled  # type: ignore[assignment]  # noqa: F811
    init = _init_disabled  # type: ignore[assignment]  # noqa: F811
    checkpoints = _checkpoints_disabled  # type: ignore[assignment]  # noqa: F811
