"""The recording side of a run: its lifecycle, loop contexts and the log hot path.

A ``Recorder`` is created by ``hl.init`` or implicitly by the first hindlog
call. It inserts the run into the catalog, snapshots the code in the
background, starts the writer thread, and finishes the run at exit (normal,
exception, SIGINT or SIGTERM). ``hl.loop`` contexts live here; the hooks at
loop and iteration boundaries call the checkpointer and the replay
controller when there is one.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sqlite3
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from . import catalog, codeversion, config, environment
from .errors import DamagedCatalog, warn_user
from .store import Store
from .values import capture, check_name
from .writer import Writer, recover_spills

#: Least seconds between the commits that main-loop iteration ends ask of the writer (or the
#: flush interval, if shorter): a commit costs training about 1.5 ms, under 1% at this pace.
COMMIT_GAP = 0.2
#: Main-loop iterations whose durations a run keeps (for replay's estimates); a longer main loop
#: is estimated from their mean.
MAX_TIMED_ITERATIONS = 100_000
#: hindlog's warnings kept in a run's info for ``hindlog show`` (the first ones, once each).
MAX_KEPT_WARNINGS = 10


_last_id_lock = threading.Lock()
_last_id = ""


def _children_cpu() -> float:
    """CPU seconds of the helper processes (git) run so far: none before ``processes`` is
    imported, which only a snapshot in a git work tree needs."""
    processes = sys.modules.get(f"{__package__}.processes")
    return processes.children_cpu if processes is not None else 0.0


def new_run_id() -> str:
    """A unique, time-sortable run id, e.g. ``20261127-071854-3f9a1c``."""
    global _last_id
    with _last_id_lock:
        while True:
            now = time.time()
            stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
            rid = f"{stamp}{int(now * 1000) % 1000:03d}-{os.urandom(3).hex()}"
            if rid > _last_id:
                _last_id = rid
                return rid


#: How long a new run's start waits for a catalog another process holds locked, before it goes
#: on and lets the writer register the run once the lock is released.
START_BUSY_SECONDS = 2.0


def _locked(error: Exception) -> bool:
    return "locked" in str(error) or "busy" in str(error)


class Recorder:
    """The state of the current run in this process."""

    def __init__(
        self,
        store: Store,
        project: str | None = None,
        name: str | None = None,
        epsilon: float | None = None,
        script: str | None = None,
        argv: list[str] | None = None,
    ) -> None:
        init_started = time.perf_counter()
        self.store = store
        self.epsilon = config.epsilon(epsilon)
        self.argv = list(sys.argv if argv is None else argv)
        #: The module run as ``python -m MODULE``, if the script was started so.
        self.module = _main_module(self.argv)
        if argv is None and self.argv[:1] == ["-m"]:
            # hindlog called while python -m still imports the module's packages.
            from .mainmodule import started_as

            self.module, self.argv = started_as() or (None, self.argv)
        self.script = script if script is not None else _script_path(store.root, self.argv)
        self.project = project or store.root.name
        self.name = name
        self.started = time.time()
        self._clock_start = time.perf_counter()
        self.run_id = new_run_id()
        #: The loop context of the records logged now (see ``ctx``); None while a nested loop's
        #: index moved since it was last built.
        self._ctx: tuple[Any, ...] | None = ()
        #: The innermost nested loop running: its parent's context, its name and a cell holding
        #: its index. A nested iteration only writes the cell: the context is built when
        #: something is logged (a loop that logs nothing pays no tuple per step).
        self._level: tuple[tuple[Any, ...], str, list[int], Any] | None = None
        self._warned_lockstep = False
        self.depth = 0
        #: Iterations of nested loops run so far (the policy charges what their wrapper costs).
        self.nested_iterations = 0
        self.main_loop_done = False
        self.main_loop_wrapped = False
        self._overrides_warned: set[str] = set()
        self.iteration: int | None = None
        self.block = 0
        self.args: dict[str, Any] = {}
        #: Names hl.arg was called with whose HINDLOG_SET_ override it found (read or not).
        self.asked_for: set[str] = set()
        #: Seconds the training thread spent blocked inside hindlog (snapshots).
        self.blocked = 0.0
        self.checkpointer: Any = None
        #: Background CPU seconds (the code snapshot) done before there was a checkpointer to charge.
        self.pending_background_cpu = 0.0
        #: CPU seconds the code snapshot took (its git processes included), charged like a persist's.
        self.snapshot_cpu_seconds = 0.0
        self._charge_lock = threading.Lock()
        #: Set in replay and resume processes (see controller.py).
        self.controller: Any = None
        self.finished = False
        #: ``finish`` has saved everything; a SIGTERM came while it was saving (it dies after).
        self.finish_done = False
        self.sigterm_pending = False
        self.status: str | None = None
        self._exc_status: str | None = None
        #: The exception the script ended with (``note_error``), if any.
        self.error: str | None = None

        #: Objects named in hl.checkpoints, by name.
        self.declared: dict[str, Any] = {}
        self._warned_late_checkpoints = False
        self._warned_same_name = False
        #: Version counters of the main loop's torch modules as it began (``_note_module_versions``).
        self.module_versions: dict[int, int] = {}
        self._torch_seed_noted = False
        #: Seconds spent in each block loop (by name) and per main-loop iteration, for replay plans.
        self.block_seconds: dict[str, float] = {}
        self.iteration_seconds: list[float] = []
        #: Main-loop iterations entered (the timings stop at MAX_TIMED_ITERATIONS; replay needs all).
        self.main_loop_iterations: int | None = None
        #: The main loop's name (its hl.loop's, or the one hands-free mode gave it).
        self.main_loop_name: str | None = None
        self.preloop_seconds: float | None = None
        #: Replay: seconds spent reading and applying checkpoints.
        self.restore_seconds = 0.0

        store.ensure()
        from .controller import load_controller

        #: Package versions are added in the background (see _snapshot_code).
        self._env = environment.describe(packages=False)

        self.controller = load_controller(self)
        ctx_base = 0
        #: The process recording; a child it forks (a multiprocessing pool's worker) holds a copy
        #: of this object, which must not end the run or write its records a second time.
        self.pid = os.getpid()
        run_fields: dict[str, Any] | None = None  # a new run's row, as inserted
        if self.controller is None:
            run_fields = {
                "run_id": self.run_id,
                "name": name,
                "project": self.project,
                "script": self.script,
                "status": "running",
                "argv": self.argv,
                "env": self._env,
                "cwd": os.getcwd(),
                "pid": os.getpid(),
                "host": environment.hostname(),
                "started": self.started,
                "heartbeat": self.started,
                "epsilon": self.epsilon,
            }
            if self.module is not None:
                run_fields["info"] = {"module": self.module}
        self.run = None
        try:
            conn = self._connect(store)
        except sqlite3.OperationalError as e:
            if self.controller is not None or not _locked(e):
                raise
            conn = None
        try:
            for attempt in range(2):
                if conn is None:
                    # Another process holds the catalog locked: training does not wait for it. The
                    # writer registers the run at its first commit, records held till then.
                    self.run = None
                    break
                try:
                    recover_spills(conn, store.spill_dir)
                    if self.controller is not None:
                        self.run, self.run_id, ctx_base = self.controller.attach(conn)
                    else:
                        self.run = catalog.insert_run(conn, dict(run_fields or {}))
                    break
                except sqlite3.DatabaseError as e:
                    if self.controller is None and isinstance(e, sqlite3.OperationalError) and _locked(e):
                        conn.close()
                        conn = None
                        continue
                    # Damage past the catalog's first page shows only at the first read or write
                    # that reaches it: set aside as damage found on opening is.
                    if attempt or self.controller is not None or not catalog.is_damage(e):
                        raise
                    conn.close()
                    try:
                        conn = self._set_aside(store, str(e))
                    except sqlite3.OperationalError as locked:
                        if not _locked(locked):
                            raise
                        conn = None  # (the new catalog is busy: the writer registers the run)
        finally:
            if conn is not None:
                conn.close()
        source = self.controller.source if self.controller is not None else catalog.SOURCE_RECORD
        self.writer = Writer(store.catalog_path, store.spill_dir, self.run, self.run_id, source=source, ctx_base=ctx_base,
                             count_before_main_loop=self.controller is None,
                             run_fields=run_fields, on_damage=store.set_aside_damaged_catalog)
        self._commit_gap = min(COMMIT_GAP, self.writer.interval)
        self.append = self.writer.append
        #: Set by a forked child (a DataLoader worker) whose ``hl.log`` was called: the child has
        #: no writer, and its values are lost, which the parent then says once.
        self._child_logged = _shared_flag()
        self._child_log_noted = False
        _watch_forks()
        self._snapshot_thread = threading.Thread(target=self._snapshot_code, name="hindlog-code", daemon=True)
        if self.controller is None:
            self._snapshot_thread.start()
            self._keep_warnings()
        self._install_exit_hooks()
        #: What hindlog cost this run before training started (its import and this set-up);
        #: ``hindlog run`` sets it to everything it did before the script began. The checkpoint
        #: policy charges it to the overhead budget.
        self.startup_seconds = _import_seconds() + (time.perf_counter() - init_started)

    # ------------------------------------------------------------ code version

    def _snapshot_code(self) -> None:
        cpu0, children0 = time.thread_time(), _children_cpu()
        try:
            self._snapshot_code_now()
        finally:
            # Reading package versions and git's processes take CPU that training wants too.
            self.snapshot_cpu_seconds = time.thread_time() - cpu0 + _children_cpu() - children0
            self.charge_background(self.snapshot_cpu_seconds)

    def charge_background(self, cpu_seconds: float) -> None:
        """Charge hindlog's background CPU time to the checkpoint budget (now, or when the
        checkpointer is made)."""
        with self._charge_lock:
            if self.checkpointer is not None:
                self.checkpointer.policy.charge(0.0, cpu_seconds, checkpoint=False)
            else:
                self.pending_background_cpu += cpu_seconds

    def _snapshot_code_now(self) -> None:
        # The code first, as soon as possible: a file the user edits after starting the run must
        # not make it into the run's version.
        try:
            version = codeversion.snapshot(self.store, self.run_id)
        except Exception as e:
            warnings.warn(f"hindlog: could not snapshot the code of run {self.run_id}: {e}", RuntimeWarning)
            self.writer.change("flag", "no_code_version")
            version = None
        try:
            self.writer.change("update_run", {"env": {**self._env, **environment.packages_description()}})
        except Exception:
            pass  # the versions are information only
        if version is None:
            return
        if version.skipped:
            warnings.warn(
                f"hindlog: left {len(version.skipped)} large untracked file(s) out of the code snapshot "
                f"(e.g. {version.skipped[0]}); add them to .gitignore or commit them.",
                RuntimeWarning,
            )
        if version.truncated:
            warnings.warn(
                f"hindlog: the code snapshot of run {self.run_id} stopped at {codeversion.MAX_SNAPSHOT_FILES} source files: "
                f"{self.store.root} is not a git repository, so that whole folder is taken as the run's project (the "
                "folder it ran from, or the script's own when the script is outside it). Make the project's folder a "
                "git repository, or keep the script in a folder of its own.",
                RuntimeWarning,
            )
            self.writer.change("flag", "code_snapshot_truncated")
        fields = {"code_version": version.version, "code_kind": version.kind}
        self.writer.change("update_run", fields)
        if version.base:
            self.writer.change("info", {"code_base": version.base})
        self._check_edited_since_start()
        self._keep_initial_generators()

    def _check_edited_since_start(self) -> None:
        """A source file of the run changed after the process started (the next experiment's edit
        made while this one still imported torch): the run executes the code as Python read it,
        but the snapshot, taken at its first hindlog call, holds the edit."""
        try:
            from .checkpoint import process_start

            started = time.time() - (time.perf_counter() - process_start(self._clock_start))
            root = self.store.root.resolve()
            # (By the path's text first: resolving every imported module's path took 70 ms.)
            prefixes = (str(self.store.root), str(root))
            paths = {Path(m.__file__) for m in list(sys.modules.values())
                     if isinstance(getattr(m, "__file__", None), str) and m.__file__.endswith(".py")
                     and m.__file__.startswith(prefixes) and "site-packages" not in m.__file__}
            if self.script and not os.path.isabs(self.script):
                paths.add(root / self.script)
            edited = sorted(str(p.resolve().relative_to(root)) for p in paths
                            if p.resolve().is_relative_to(root) and p.stat().st_mtime > started + 0.05)
        except Exception:  # noqa: BLE001 - a courtesy check
            return
        if edited:
            warnings.warn(
                f"hindlog: {', '.join(edited[:3])} changed after this run started: the run executes the code as it "
                "was, but its recorded version was taken later and holds the change, so its replays may fail or "
                "diverge. Edit a run's code once its first values are logged.",
                RuntimeWarning,
            )
            self.writer.change("flag", "code_changed_after_start")

    def _keep_initial_generators(self) -> None:
        """The global random generators as they were when the script imported hindlog, kept for
        replay and resume (``state.INITIAL_GENERATORS``): an unseeded script's workers start from them."""
        from . import state

        if self.controller is not None:
            return
        try:
            if state.INITIAL_GENERATORS is not None:
                # (Not synced to disk: a run lost with it replays from fresh generators, as before.)
                name = self.store.objects.put(state.INITIAL_GENERATORS, durable=False)
                self.writer.change("info", {"initial_generators": name})
        except Exception:  # noqa: BLE001 - only an unseeded script's replay depends on it
            pass

    def _note_torch_seed(self) -> None:
        """PyTorch imported after hindlog (``hindlog run`` imports hindlog first): the seed its
        generator drew at its import, unless the script set one since; when the main loop begins
        (in the training thread: the code's snapshot may run while PyTorch is half imported)."""
        from . import state

        torch = sys.modules.get("torch")
        if torch is None or state.INITIAL_GENERATORS_HAVE_TORCH or self._torch_seed_noted or self.controller is not None:
            return
        try:
            self.writer.change("info", {"torch_initial_seed": int(torch.initial_seed())})
            self._torch_seed_noted = True
        except Exception:  # noqa: BLE001 - only an unseeded script's replay depends on it
            pass

    def nothing_logged_yet(self) -> bool:
        """No value logged and no loop entered: ``hl.init`` may take this run over (it was started
        implicitly by ``hl.checkpoints`` or ``hl.arg`` before ``hl.init``)."""
        if self.depth or self.main_loop_done or self.writer.written or self.writer._pending_cells:
            return False
        return not any(type(item) is tuple for item in list(self.writer.queue))

    def rename(self, project: str | None, name: str | None, epsilon: float | None) -> None:
        """``hl.init``'s settings for this run, which it takes over."""
        if epsilon is not None:
            self.epsilon = config.epsilon(epsilon)
            if self.checkpointer is not None:
                self.checkpointer.policy.epsilon = self.epsilon
        fields: dict[str, Any] = {"epsilon": self.epsilon}
        if project:
            self.project = fields["project"] = project
        if name:
            self.name = fields["name"] = name
        if self.controller is None:
            self.writer.change("update_run", fields)

    # ------------------------------------------------------------ logging

    def log_slow(self, name: Any, value: Any) -> Any:
        """``hl.log`` for everything but the fast path: validates, freezes, queues."""
        check_name(name)
        frozen = capture(value)
        if self.controller is not None and not self.controller.on_log(name, frozen):
            return value
        self.append((self.ctx, name, frozen))
        return value

    def arg(self, name: str, default: Any) -> Any:
        if type(name) is not str or not name:
            raise TypeError(f"hl.arg name must be a non-empty string, got {name!r}")
        override = config.arg_override(name)
        if override is not None:
            self.asked_for.add(name)  # (asked for even if the override cannot be read)
        value = default if override is None else cast_like(default, override, name)
        try:
            import json

            json.dumps(value)
        except (TypeError, ValueError):
            raise TypeError(
                f"hl.arg({name!r}) got a default of type {type(default).__name__}; "
                "use a number, bool, string, None, or a JSON-able list or dict"
            ) from None
        if name in self.args:
            previous = self.args[name]
            if type(previous) is not type(value) or json.dumps(previous, sort_keys=True) != json.dumps(value, sort_keys=True):
                # One name, one value per run: replay sets each recorded arg by its name.
                raise ValueError(
                    f"hl.arg({name!r}, {default!r}): {name!r} is already an argument of this run, with the value "
                    f"{self.args[name]!r}; give each argument its own name, or read the first one's value"
                )
            return self.args[name]
        self.args[name] = value
        self.writer.change("arg", (name, value))
        return value

    # ------------------------------------------------------------ loops

    @property
    def ctx(self) -> tuple[Any, ...]:
        """Where a record logged now belongs: ``((main loop, i, True), (nested loop, j), ...)``."""
        c = self._ctx
        return c if c is not None else self.build_ctx()

    def build_ctx(self) -> tuple[Any, ...]:
        parent, name, cell, _outer = self._level  # type: ignore[misc]
        c = self._ctx = parent + ((name, cell[0]),)
        return c

    def loop(self, name: str, iterable: Iterable[Any]) -> Iterator[Any]:
        if type(name) is not str or not name:
            raise TypeError(f"hl.loop name must be a non-empty string, got {name!r}")
        caller = sys._getframe(1)
        if self.depth == 0 and not self.main_loop_done:
            return self._main_loop(name, iterable, _callers_frame(caller))
        if _fetching_for_a_loop(caller):
            # A loop inside the iterator a loop is fetching its next item from (a progress
            # wrapper, a batch generator): part of that loop's iteration, not a loop of its own.
            return iterable
        creator = _callers_frame(caller)
        if self.depth == 1 and self.iteration is not None and self.controller is not None:
            if self.controller.entered_from_hindsight(caller):
                return self._inner_loop(name, iterable, block=False, creator=creator)
            manifest = self.controller.block_checkpoint(name)
            if manifest is not None:
                return self._skipped_block(name, iterable, manifest, creator)
        return self._inner_loop(name, iterable, creator=creator)

    def _skipped_block(self, name: str, iterable: Iterable[Any], manifest: str, creator: Any = None) -> Iterator[Any]:
        """Replay: instead of running this loop, restore the state its exit left (or run it if that fails)."""
        from .checkpoint import read_checkpoint
        from .errors import CorruptObject
        from .restore import apply

        advancing = sys._getframe(1)
        frame, creator = _for_statements_frame(advancing, creator), None  # (holds no frame that has returned)
        t0 = time.perf_counter()
        try:
            loaded = read_checkpoint(self.store.objects, manifest)
        except CorruptObject as e:
            warnings.warn(f"hindlog: {e}; running loop {name!r} of iteration {self.iteration} instead", RuntimeWarning)
            self.controller.block_ran_instead()
            yield from self._inner_loop(name, iterable, frame)
            return
        if loaded.unrestorable or not loaded.locals_fit(frame, wrapped=frame is not advancing):
            # A local the loop changes that the checkpoint could not hold (an iterator over a
            # DataLoader it draws from): as the record warned, the loop runs instead. So does a
            # loop whose checkpoint holds another function's locals (a progress wrapper's, taken
            # by an older hindlog): restoring them would leave the loop's own unset.
            self.controller.block_ran_instead()
            yield from self._inner_loop(name, iterable, frame)
            return
        apply(loaded, self.declared, frame, strict=False)
        self.restore_seconds += time.perf_counter() - t0
        self.block += 1
        self.controller.restored_block()

    def _main_loop(self, name: str, iterable: Iterable[Any], creator: Any = None) -> Iterator[Any]:
        advancing = sys._getframe(1)
        frame, creator = _for_statements_frame(advancing, creator), None
        #: Advanced through a Python-level wrapper (``tqdm(hl.loop(...))``): checkpoints taken by an
        #: older hindlog hold the wrapper's locals (``Loaded.locals_fit``).
        self.main_loop_wrapped = frame is not advancing
        self.depth = 1
        self.main_loop_name = name
        start = 0
        if self.controller is None and "torch" in sys.modules:
            self._note_module_versions(frame)
            self._note_torch_seed()
        if self.checkpointer is None:
            # A script that never calls hl.checkpoints: the random generators, the loop's locals
            # and the state its first iteration shows it changes are still checkpointed.
            try:
                self.checkpoints({})
            except Exception:  # noqa: BLE001 - the run goes on without checkpoints
                pass
        try:
            if "torch" in sys.modules:
                from .state import undeclared_generators

                held = {id(d.held) for d in self.declared.values()}
                found = undeclared_generators(frame.f_locals, held, taken=self.declared)
                if found:
                    self.declared.update(found)
                    self._note_state()
        except Exception:  # noqa: BLE001 - only more state to hold: the run goes on without it
            pass
        if self.controller is not None and "state_candidates" not in self.controller.spec:
            self._declare_adopted(frame, self.controller.spec.get("adopted_state") or [])
        it = iter(iterable)
        if self.controller is not None:
            start, it = self.controller.main_loop_start(name, it, frame)
        checkpointer = self.checkpointer
        if checkpointer is not None:
            checkpointer.main_loop_started(name, frame, iterable)
        self.writer.main_loop_starts()
        if self.controller is None:
            self._warn_unused_overrides(so_far=True)
        i = start
        open_iteration = None
        clock = time.perf_counter
        from .checkpoint import process_start

        # From the process's start: replay's estimates include interpreter start and imports.
        self.preloop_seconds = clock() - process_start(self._clock_start)
        if self.controller is None or self.controller.owns_run:
            threads = compute_threads()
            if threads:
                # Replay computes with the same count (float reductions depend on it) and
                # sizes its worker pool by it.
                self.writer.change("info", {"threads": threads})
        iteration_seconds = self.iteration_seconds
        try:
            t0 = clock()
            for item in it:
                self._ctx = ((name, i, True),)
                self._level = None  # nested loops left open in the last iteration are over
                self.iteration = i
                self.block = 0
                open_iteration = i
                if self.controller is not None:
                    self.controller.iteration_begin(i)
                checkpointer = self.checkpointer
                if checkpointer is not None:
                    checkpointer.iteration_begin(i)
                yield item
                self._iteration_end(i, frame)
                open_iteration = None
                t1 = clock()
                if len(iteration_seconds) < MAX_TIMED_ITERATIONS:
                    iteration_seconds.append(t1 - t0)
                t0 = t1
                i += 1
                self.main_loop_iterations = i
        finally:
            if open_iteration is not None:
                # Left by break or an exception: it counts as an iteration (replay runs it),
                # but a mid-iteration state is never committed as a checkpoint.
                self.main_loop_iterations = open_iteration + 1
                if len(iteration_seconds) < MAX_TIMED_ITERATIONS:
                    iteration_seconds.append(clock() - t0)
                if self.checkpointer is not None:
                    self.checkpointer.abandon_iteration(open_iteration)
                if self.controller is not None:
                    self.controller.main_finished = True  # left by break: code after the loop runs
            self._ctx = ()
            self.depth = 0
            self.iteration = None
            self.main_loop_done = True
        if self.controller is not None:
            self.controller.main_loop_done()

    def _iteration_end(self, i: int, frame: Any) -> None:
        self._catch_up()
        if self._child_logged is not None and self._child_logged[0] and not self._child_log_noted:
            self._note_child_logs()
        if self.checkpointer is not None:
            self.checkpointer.iteration_end(i, frame)
        if self.controller is not None:
            self.controller.iteration_end(i)
        # An iteration's records are committed as it ends (what ``kill -9`` leaves is whole
        # iterations), but at most every COMMIT_GAP seconds: each commit costs training more than
        # the writer's CPU time (on scikit-learn's 30 ms epochs, 1.5 ms for 0.4 ms: the sqlite3
        # module hands the GIL back and forth at every statement); a commit every 50 ms, on top of
        # the timer's, cost such a script 1-2% of its time.
        if time.monotonic() - self.writer.last_commit >= self._commit_gap:
            self.writer.wake()

    def _encloses(self, name: str) -> bool:
        """Whether a loop of this name encloses the current point (the main loop included)."""
        level = self._level
        while level is not None:
            if level[1] == name:
                return True
            level = level[3]
        return self.depth > 0 and self.main_loop_name == name

    def _inner_loop(self, name: str, iterable: Iterable[Any], frame: Any = None, block: bool = True,
                    creator: Any = None) -> Iterator[Any]:
        """A nested loop; ``block``: whether, directly in a main-loop iteration, it is one of the
        iteration's blocks (numbered, timed, checkpointed at its exit)."""
        frame, creator = frame or _for_statements_frame(sys._getframe(1), creator), None
        # The loop's header: the line the frame is at when the loop ends is a ``break``'s.
        header = frame.f_lineno
        parent = self.ctx
        if not self._warned_same_name and self.controller is None and self._encloses(name):
            self._warned_same_name = True
            warnings.warn_explicit(
                f"hindlog: hl.loop({name!r}) runs inside a loop of the same name: a query shows one {name!r} column "
                f"for both, holding the inner loop's index. Give the inner loop a name of its own.",
                RuntimeWarning, frame.f_code.co_filename, frame.f_lineno,
            )
        cell = [0]
        # (context of the enclosing loop, name, [index], the enclosing loop's level)
        level = (parent, name, cell, self._level)
        self._level = level
        self.depth += 1
        block_level = block and self.depth == 2 and self.iteration is not None
        t0 = time.perf_counter() if block_level else 0.0
        i = 0
        exhausted = False
        try:
            for item in iterable:
                if self._level is not level:
                    level = self._reenter(level)
                cell[0] = i
                self._ctx = None
                yield item
                i += 1
            exhausted = True
        finally:
            self.depth -= 1
            self.nested_iterations += i
            if self._is_open(level):
                # Loops this one holds that were left open (a generator kept alive) close with it.
                self._level = level[3]
                self._ctx = level[0]
            if block_level:
                self.block_seconds[name] = self.block_seconds.get(name, 0.0) + time.perf_counter() - t0
                self._block_exit(name, frame, broke=not exhausted, header=header)

    def _is_open(self, level: tuple[Any, ...]) -> bool:
        current = self._level
        while current is not None:
            if current is level:
                return True
            current = current[3]
        return False

    def _reenter(self, level: tuple[Any, ...]) -> tuple[Any, ...]:
        """A loop moves on while another one's level is current. If that one runs inside it (left
        open, e.g. a generator kept alive after ``break``), it is over: this loop is current again.
        Otherwise the two advance in lockstep (``zip(hl.loop(...), hl.loop(...))``): this one is
        put under the other's current index, and the user is told how to name such a loop."""
        if self._is_open(level):
            self._level = level
            return level
        if not self._warned_lockstep:
            self._warned_lockstep = True
            outer = self._level[1] if self._level is not None else None
            warnings.warn(
                f"hindlog: hl.loop({level[1]!r}) advances in lockstep with hl.loop({outer!r}) (zip of two hl.loops?): "
                f"its values are logged under both loops' indices; wrap the zip in one loop instead, "
                f"hl.loop({outer!r}, zip(...))",
                RuntimeWarning,
                stacklevel=3,
            )
        moved = (self.ctx, level[1], level[2], self._level)
        self._level = moved
        return moved

    def _catch_up(self) -> None:
        """Wait, as blocked time, while the writer has more than ``QUEUE_HIGH`` records queued
        (a loop that logs faster than SQLite takes them): memory stays bounded, and a ``kill -9``
        loses what is queued, not minutes of it. Checked as loops end: a check per ``hl.log``
        would cost every call."""
        queue = self.writer.queue
        if len(queue) <= QUEUE_HIGH:
            return
        t0 = time.perf_counter()
        self.writer.wake()
        while len(queue) > QUEUE_HIGH // 2 and time.perf_counter() - t0 < 10.0 and self.writer.alive():
            time.sleep(0.002)
        if self.checkpointer is not None:
            self.checkpointer.charge_blocked(time.perf_counter() - t0)  # (the policy counts it as hindlog's, not training's)
        else:
            self.blocked += time.perf_counter() - t0

    def _block_exit(self, name: str, frame: Any, broke: bool = False, header: int | None = None) -> None:
        self._catch_up()
        if self.checkpointer is not None:
            self.checkpointer.block_exit(self.iteration, self.block, name, frame, broke, header)
        self.block += 1

    def checkpoints(self, objects: dict[str, Any]) -> None:
        from .state import declare

        declared = {name: declare(name, obj) for name, obj in objects.items()}
        if self.iteration is not None and self.controller is None and not self._warned_late_checkpoints:
            self._warned_late_checkpoints = True
            warnings.warn(
                f"hindlog: hl.checkpoints({', '.join(declared)}) was called inside the main loop (iteration "
                f"{self.iteration}): the checkpoints of earlier iterations do not hold these objects, and a replay "
                "that starts later does not restore them. Call hl.checkpoints() once, before the main loop.",
                RuntimeWarning,
                stacklevel=3,
            )
        self.declared.update(declared)
        self._note_state()
        if self.checkpointer is None and (self.controller is None or self.controller.checkpointing):
            from .checkpoint import Checkpointer

            with self._charge_lock:
                self.checkpointer = Checkpointer(self)
                self.checkpointer.policy.charge(0.0, self.pending_background_cpu, checkpoint=False)
                self.pending_background_cpu = 0.0

    def _note_module_versions(self, frame: FrameType) -> None:
        """The version counters of the torch modules the main loop's scope holds as it begins: a
        module the first iteration wrote to is state (``Checkpointer._changed_since_start``)."""
        try:
            import torch

            from .checkpoint import module_version

            seen = 0
            for value in list({**frame.f_globals, **frame.f_locals}.values()):
                if isinstance(value, torch.nn.Module) and seen < 200:
                    self.module_versions[id(value)] = module_version(value)
                    seen += 1
        except Exception:  # noqa: BLE001 - modules then count as changed
            pass

    def _declare_adopted(self, frame: FrameType, names: list[str]) -> None:
        """A replay or resume declares what the record declared once its first iteration showed
        that the main loop changes it (``Checkpointer._adopt_undeclared``), as the script names it."""
        from .state import declare

        scope = {**frame.f_globals, **frame.f_locals}
        for name in names:
            if name in scope and name not in self.declared:
                try:
                    self.declared[name] = declare(name, scope[name])
                except TypeError:
                    pass  # (its checkpoints hold it, and it cannot be restored: as if not declared)

    def _note_state(self) -> None:
        """What the checkpoints hold, for ``hindlog show`` (the terminal that said it is gone)."""
        if self.controller is None:
            self.writer.change("info", {"state": sorted(self.declared)})

    def _keep_warnings(self) -> None:
        """Keep hindlog's warnings in the run's info as they are shown (the first few), for
        ``hindlog show``: one that says a replay may not reproduce the run outlives the terminal."""
        self.kept_warnings: list[str] = []
        shown = warnings.showwarning
        if getattr(shown, "hindlog_keeps_warnings", False):
            return  # installed by an earlier run of this process: it keeps them for whichever run records

        def showwarning(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
            text = str(message)
            rec = getattr(sys.modules.get("hindlog.record"), "_recorder", None)
            kept = getattr(rec, "kept_warnings", None)
            if text.startswith("hindlog: ") and kept is not None and text not in kept and len(kept) < MAX_KEPT_WARNINGS \
                    and not rec.finished:
                kept.append(text)
                with contextlib.suppress(Exception):
                    rec.writer.change("info", {"warnings": list(kept)})
            shown(message, category, filename, lineno, file, line)

        showwarning.hindlog_keeps_warnings = True  # type: ignore[attr-defined]
        warnings.showwarning = showwarning

    # ------------------------------------------------------------ lifecycle

    def _install_exit_hooks(self) -> None:
        atexit.register(self._atexit)
        previous_hook = sys.excepthook

        def excepthook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
            self._exc_status = "killed" if issubclass(exc_type, KeyboardInterrupt) else "failed"
            self.note_error(exc)
            previous_hook(exc_type, exc, tb)

        sys.excepthook = excepthook
        previous_exit = sys.exit

        def exit(status: object = None) -> Any:
            # sys.exit(1) ends the script without an exception reaching excepthook, and atexit
            # cannot see the exit status: a non-zero one marks the run failed here.
            if status is not None and status != 0 and self._exc_status is None:
                self._exc_status = "failed"
                if isinstance(status, str):
                    self.error = status  # sys.exit("diverged"): what Python prints
            return previous_exit(status)

        sys.exit = exit
        import builtins

        for name in ("exit", "quit"):  # site's, which raise SystemExit without sys.exit
            quitter = getattr(builtins, name, None)
            if quitter is not None:
                setattr(builtins, name, _ExitWatcher(quitter, self))
        # (Not in a container's first process: the kernel ignores a SIGTERM it has no handler for,
        # so re-raising it after the flush would leave training running with the run ended.)
        if threading.current_thread() is threading.main_thread() and os.getpid() != 1:
            try:
                previous = signal.getsignal(signal.SIGTERM)
                if previous in (signal.SIG_DFL, None):
                    signal.signal(signal.SIGTERM, _on_sigterm)
            except (ValueError, OSError):
                pass

    def _warn_unused_overrides(self, so_far: bool = False) -> None:
        """An override no ``hl.arg`` asked for (a typo in its name) changed nothing: say so, when
        the main loop starts (``so_far``: most scripts read their args before it, and a typo
        found at the end of a long run cost the run) and, for the others, at the end."""
        unused = sorted(k[len("HINDLOG_SET_"):] for k in os.environ
                        if k.startswith("HINDLOG_SET_") and k[len("HINDLOG_SET_"):] not in {*self.args, *self.asked_for}
                        and k not in self._overrides_warned)
        if unused:
            self._overrides_warned.update("HINDLOG_SET_" + n for n in unused)
            have = ", ".join(sorted(self.args)) or "none"
            settings, them = ", ".join("HINDLOG_SET_" + n for n in unused), "that name" if len(unused) == 1 else "those names"
            warnings.warn(
                f"hindlog: {settings} {'has' if len(unused) == 1 else 'have'} had no effect so far: the script has not called hl.arg with {them} before its "
                f"main loop (its args: {have}); a typo?" if so_far else
                f"hindlog: {settings} had no effect: the script never called hl.arg with {them} (its args: {have})"
                + (" before it ended with an error" if self._exc_status == "failed" or self.error else ""),
                RuntimeWarning,
                stacklevel=2,
            )

    def note_error(self, exc: BaseException | None) -> None:
        """The exception the script ended with, for ``hindlog show`` (its last line, as Python
        prints it)."""
        if exc is not None and not isinstance(exc, KeyboardInterrupt):
            try:
                text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                self.error = text if len(text) <= 500 else text[:497] + "..."
            except Exception:
                pass

    def _atexit(self) -> None:
        self.finish(self._exc_status or "finished", at_exit=True)

    def _connect(self, store: Store) -> Any:
        """The catalog, for a new run. A damaged one is moved aside, every byte kept, and the run
        records into a new catalog: training that cannot be recorded is a loss, a catalog that
        cannot be read is not yet one. A replay or resume must find its run, so it fails instead."""
        try:
            # A new run waits little for a catalog another process holds (see __init__); a
            # replay or resume must find its run, and waits as long as SQLite's usual minute.
            return store.connect(timeout=START_BUSY_SECONDS if self.controller is None else 60.0)
        except DamagedCatalog as e:
            if self.controller is not None:
                raise
            return self._set_aside(store, e.cause)

    def _set_aside(self, store: Store, cause: str) -> Any:
        aside = store.set_aside_damaged_catalog()
        if aside is not None:
            warn_user(f"hindlog: the catalog {store.catalog_path} is damaged (SQLite: {cause}); moved it to {aside}, "
                      f"every byte kept ({catalog.recover_advice(aside)}); this run records into a new catalog")
        return store.connect(timeout=START_BUSY_SECONDS)

    def finish(self, status: str = "finished", at_exit: bool = False) -> None:
        """Flush everything, record the end of the run and stop the writer.

        A Ctrl-C meanwhile waits until that is done (a second one stops it): interrupted, it lost
        the records still queued, the code version and the run's end. At the process's exit the
        interrupt is then dropped, as Python drops one that reaches an exit handler; otherwise
        it is raised once the run is safe."""
        if self.finished or os.getpid() != self.pid:
            return
        with _interrupts_deferred() as interrupted:
            try:
                self._finish(status)
            finally:
                self.finish_done = True
        if self.sigterm_pending:
            # A SIGTERM came while the run was being saved (``_on_sigterm``): die by it now.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
        if interrupted and not at_exit:
            raise KeyboardInterrupt

    def _note_child_logs(self) -> None:
        self._child_log_noted = True
        warnings.warn(
            "hindlog: hl.log was called in a child process of this run (a DataLoader worker running a Dataset's "
            "__getitem__, a multiprocessing pool's worker): values logged there are not recorded. Log them in the "
            "main process (return them with the batch), or use num_workers=0.",
            RuntimeWarning,
        )
        self.writer.change("flag", "logged_in_child_process")

    def in_forked_child(self) -> None:
        """This process is a child forked from the recording one: its ``hl.log`` calls are not
        recorded (the writer thread did not survive the fork); the parent is told."""
        flag = self._child_logged
        def drop(item: Any) -> None:
            # (Not for what a worker prints, which ``hindlog run`` captures as ``@stdout``.)
            if flag is not None and type(item) is tuple and len(item) == 3 and not str(item[1]).startswith("@stdout"):
                flag[0] = 1

        self.append = drop
        self.writer.append = drop

    def _finish(self, status: str) -> None:
        if self._child_logged is not None and self._child_logged[0] and not self._child_log_noted:
            self._note_child_logs()
        self.finished = True
        self.status = status
        try:
            atexit.unregister(self._atexit)
        except Exception:
            pass
        if self.checkpointer is not None:
            self.checkpointer.close()
        if self.controller is not None:
            self.controller.close()
        else:
            self._warn_unused_overrides()
        if self._snapshot_thread.is_alive():
            self._snapshot_thread.join(timeout=120)
        if self.controller is None or self.controller.owns_run:
            from .checkpoint import process_start

            elapsed = time.perf_counter() - process_start(self._clock_start)
            fields = {"status": status, "ended": time.time(), "overhead": (self.blocked / elapsed) if elapsed > 0 else 0.0}
            timing = {
                "preloop_seconds": self.preloop_seconds,
                "iteration_seconds": self.iteration_seconds,
                "main_loop_iterations": self.main_loop_iterations,
                "main_loop": self.main_loop_name,
                "block_seconds": self.block_seconds,
                # Transactions the writer committed before the last one: what ``COMMIT_GAP`` bounds.
                "writer_commits": self.writer.commits,
            }
            # (None clears an earlier process's: a resumed run that finished or failed otherwise.)
            timing["error"] = self.error if status == "failed" else None
            if self.checkpointer is not None:
                before = (getattr(self.controller, "prior_info", None) or {}).get("gradients_at_loop_exit")
                if self.checkpointer.block_exits and not self.checkpointer.gradients_at_loop_exit and not before:
                    timing["gradients_at_loop_exit"] = False  # (True is noted when seen: a killed run has it too)
                policy = self.checkpointer.policy
                timing["checkpoint_bytes_written"] = self.checkpointer.persister.bytes_written
                timing["checkpoints_dropped_unverified"] = self.checkpointer.persister.dropped_unverified
                timing["checkpoints_skipped_busy"] = self.checkpointer.skipped_busy
                # Iteration ends whose snapshot took the copies made at the nested loop's exit.
                timing["checkpoints_reusing_loop_exit"] = self.checkpointer.reused_exit_snapshots
                # What the policy charged, to read the overhead by: the time training was blocked,
                # and the persister's CPU time times the slowdown it was measured to cause.
                from .checkpoint import EXIT_SECONDS, NESTED_ITERATION_SECONDS

                timing["checkpoint_charged"] = {
                    "startup_seconds": self.startup_seconds,
                    # An estimate, charged at the start: the run's end after the last decision.
                    "exit_seconds": EXIT_SECONDS,
                    "blocked_seconds": self.blocked,
                    "persister_cpu_seconds": policy.background_cpu,
                    "background_weight": policy.weight,
                    # Of the persister's CPU seconds, those of the code snapshot.
                    "snapshot_cpu_seconds": self.snapshot_cpu_seconds,
                    # An estimate, not measured in this run: what the nested loops' wrapper cost.
                    "nested_iterations": self.checkpointer.nested_iterations_charged,
                    "nested_loop_seconds": self.checkpointer.nested_iterations_charged * NESTED_ITERATION_SECONDS,
                    # The catalog writer's CPU time up to the last checkpoint decision.
                    "writer_cpu_seconds": self.checkpointer.writer_cpu_charged,
                    # The policy's window, from the process's start: what ε bounds the charge by.
                    "elapsed_seconds": time.perf_counter() - policy.start,
                }
                if policy.last_decision is not None:
                    at, spent, weight, cpu = policy.last_decision
                    timing["checkpoint_charged"]["last_decision"] = {
                        "elapsed_seconds": at, "spent_seconds": spent, "background_weight": weight, "persister_cpu_seconds": cpu,
                    }
            if self.controller is not None:
                timing = self.controller.timing(timing)
            self.writer.change("update_run", fields)
            self.writer.change("info", timing)
        self.writer.close()


def _callers_frame(frame: Any) -> Any:
    """The first frame from ``frame`` up that is not hindlog's own: the code that called ``hl.loop``."""
    while frame is not None and (frame.f_globals.get("__name__") or "").startswith("hindlog."):
        frame = frame.f_back
    return frame


def _for_statements_frame(advancing: Any, creator: Any) -> Any:
    """The frame of the ``for`` statement that iterates a loop. A loop's generator runs in the
    frame that advances it: the ``for`` statement's, unless a Python-level wrapper stands between
    them (``tqdm(hl.loop(...))``, a prefetching generator), whose frame it is then. The frame that
    called ``hl.loop``, met above generator frames only, is the ``for`` statement's: the locals a
    checkpoint holds and a replay restores are its. A loop handed to a function
    (``train_epoch(hl.loop("step", loader))``), or out of the one that made it, is advanced where
    it is iterated."""
    if creator is None or advancing is creator:
        return advancing
    frame, depth = advancing, 0
    while frame is not None and _wraps_an_iterator(frame.f_code) and depth < 64:
        frame, depth = frame.f_back, depth + 1
        if frame is creator:
            return creator
    return advancing


def _wraps_an_iterator(code: Any) -> bool:
    """Whether a frame of ``code`` may stand between a loop's generator and its ``for``
    statement: a generator's (tqdm's ``__iter__``, a prefetching generator) or an iterator
    class's ``__next__`` (a prefetcher, ``peekable``)."""
    return bool(code.co_flags & _GENERATOR_FLAGS) or code.co_name in ("__next__", "__iter__", "__anext__")


#: ``co_flags`` of a generator's code, an async generator's or a coroutine's (``inspect.CO_*``,
#: whose import would cost every run's start).
_GENERATOR_FLAGS = 0x20 | 0x80 | 0x100 | 0x200


def _fetching_for_a_loop(frame: Any) -> bool:
    """Whether a loop of hindlog's is on the stack below ``frame``: it runs only while it fetches
    its next item (while the loop's body runs, its generator is suspended, off the stack)."""
    loops = (Recorder._main_loop.__code__, Recorder._inner_loop.__code__)
    depth = 0
    while frame is not None and depth < 200:
        if frame.f_code in loops:
            return True
        frame = frame.f_back
        depth += 1
    return False


def _import_seconds() -> float:
    import hindlog

    return hindlog.IMPORT_SECONDS


def compute_threads() -> int | None:
    """The intra-op thread count of the PyTorch the script imported (None without torch)."""
    torch = sys.modules.get("torch")
    try:
        return int(torch.get_num_threads()) if torch is not None else None
    except Exception:
        return None


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[list[int]]:
    """In the main thread, hold a first SIGINT until the block ends (the list it yields is then
    not empty); a second one raises KeyboardInterrupt at once."""
    interrupted: list[int] = []
    # Only Python's own handler is replaced: one of the script's (a graceful stop), an ignored
    # SIGINT (a job started in the background) and the asyncio loop's stay as they are.
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield interrupted
        return

    def hold(signum: int, frame: Any) -> None:
        if interrupted:
            raise KeyboardInterrupt
        interrupted.append(signum)
        try:
            sys.stderr.write("hindlog: saving the run's records before stopping (Ctrl-C again stops without them)\n")
        except Exception:
            pass  # a closed stderr (its pipe's reader stopped by the same Ctrl-C) must not stop the save

    try:
        signal.signal(signal.SIGINT, hold)
    except (ValueError, OSError, TypeError):
        yield interrupted  # no handler can be set here (an embedded interpreter's own)
        return
    try:
        yield interrupted
    finally:
        try:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        except (ValueError, OSError, TypeError):
            pass


#: Records queued for the writer past which a loop's end waits for it (about 0.5 s of its work).
QUEUE_HIGH = 250_000


def _shared_flag() -> Any:
    """One byte of memory that processes forked from this one share with it (None where there is
    no such memory)."""
    try:
        import mmap

        return mmap.mmap(-1, 1)
    except (OSError, ValueError, ImportError):
        return None


_forks_watched = False


def _watch_forks() -> None:
    global _forks_watched
    if not _forks_watched and hasattr(os, "register_at_fork"):
        _forks_watched = True
        os.register_at_fork(after_in_child=_after_fork_in_child)


def _after_fork_in_child() -> None:
    from . import record

    rec = record._recorder
    if rec is not None and not rec.finished:
        rec.in_forked_child()


def _on_sigterm(signum: int, frame: Any) -> None:
    """Finish whichever run is current (one handler for the process, across hl.init calls), then die by SIGTERM."""
    from . import record

    rec = record._recorder
    if rec is not None and rec.finished and not rec.finish_done and rec.pid == os.getpid():
        # The run is being saved (the script ended and its exit handler flushes the queued
        # records): dying now lost them all and left the run "running". It dies once saved.
        rec.sigterm_pending = True
        return
    if rec is not None and not rec.finished:
        rec.finish("killed", at_exit=True)  # the process dies next: a Ctrl-C meanwhile changes nothing
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


class _ExitWatcher:
    """The builtin ``exit`` or ``quit``, noting a non-zero status as ``sys.exit``'s wrapper does."""

    def __init__(self, quitter: Any, recorder: Recorder) -> None:
        self.quitter, self.recorder = quitter, recorder

    def __call__(self, code: object = None) -> Any:
        rec = self.recorder
        if code is not None and code != 0 and rec._exc_status is None and not rec.finished:
            rec._exc_status = "failed"
        return self.quitter(code)

    def __repr__(self) -> str:
        return repr(self.quitter)


def _script_path(root: Path, argv: list[str]) -> str | None:
    if not argv or not argv[0] or argv[0] in ("-c", "-m", ""):
        return None
    path = Path(argv[0])
    if not path.is_file():
        return None
    path = path.resolve()
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _main_module(argv: list[str]) -> str | None:
    """The module this process runs as ``python -m MODULE`` runs it (its script is that module's
    file), or None: replay and resume start their workers the same way, so that its relative
    imports work."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name, origin = getattr(spec, "name", None), getattr(spec, "origin", None)
    if not name or not origin or not argv or not argv[0]:
        return None
    try:
        if Path(argv[0]).resolve() != Path(origin).resolve():
            return None  # e.g. python -m hindlog.cli run train.py: hindlog's module, not the script
    except OSError:
        return None
    return name.removesuffix(".__main__")


def cast_like(default: Any, raw: str, name: str) -> Any:
    """Cast the text ``raw`` to the type of ``default`` (for HINDLOG_SET_ overrides)."""
    import json

    try:
        if isinstance(default, bool):
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            return tuple(json.loads(raw))
        if isinstance(default, (list, dict)) or default is None:
            return json.loads(raw)
        return raw
    except ValueError:
        kind = type(default).__name__ if default is not None else "JSON value"
        article = "an" if kind[0] in "aeiou" else "a"
        try:
            example = f" (HINDLOG_SET_{name}={json.dumps(default)})"
        except (TypeError, ValueError):  # a default JSON cannot write
            example = ""
        fractional = ""
        if isinstance(default, int) and not isinstance(default, bool):
            try:
                float(raw)
                fractional = f", or make the default a float (hl.arg({name!r}, {float(default)!r})) for it to take fractions"
            except ValueError:
                pass
        raise ValueError(
            f"HINDLOG_SET_{name}={raw!r} cannot be read as {article} {kind}, the type of hl.arg({name!r})'s default "
            f"{default!r}: set it to {article} {kind}{example}{fractional}"
        ) from None
