"""The background writer: drains logged records and catalog commands into SQLite.

The training thread only appends to a deque (``Writer.append``); a daemon
thread wakes every ``flush_interval`` seconds (or when woken at the end of a
main-loop iteration), encodes what was queued and commits it in one
transaction. Items are written in the order they were queued, so a command
queued after some records (a checkpoint's manifest, the run's final status)
is committed with or after them.

If the catalog cannot be written (locked for too long, disk full), the writer
warns once, flags the run, keeps the rows in memory, spills them to
``.hindlog/spill`` when they grow large, and retries; spilled rows are loaded
back as soon as a write succeeds again (or by the next process that opens the
store).
"""

from __future__ import annotations

import json
import os
import pickle
import sqlite3
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable
from itertools import repeat, starmap
from operator import is_
from pathlib import Path
from typing import Any

from . import catalog, config
from .objects import fsync_path
from .values import encode

Command = Callable[[sqlite3.Connection], None]

_INF = float("inf")
_NINF = -_INF
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class _Command:
    __slots__ = ("fn", "done", "data")

    def __init__(self, fn: Command, done: threading.Event | None, data: tuple[str, Any] | None = None) -> None:
        self.fn, self.done, self.data = fn, done, data


def apply_command(conn: sqlite3.Connection, run: int, data: tuple[str, Any]) -> None:
    """Carry out a catalog change described as data (so that it can also wait in a spill file)."""
    kind, payload = data
    if kind == "update_run":
        catalog.update_run(conn, run, payload)
    elif kind == "flag":
        catalog.add_run_flag(conn, run, payload)
    elif kind == "arg":
        catalog.set_arg(conn, run, payload[0], payload[1])
    elif kind == "info":
        catalog.merge_run_info(conn, run, payload)
    elif kind == "checkpoints":
        for iteration, block, loop, manifest, nbytes in payload:
            catalog.insert_checkpoint(conn, run, iteration, block, loop, manifest, nbytes)
    else:
        raise ValueError(f"unknown catalog command {kind!r}")


#: A writer with nothing to write still marks the run alive this often (seconds).
HEARTBEAT_SECONDS = 10.0
#: How long a commit waits for a catalog another process holds locked before it fails: the
#: records stay pending and the next attempt retries (spilled to a file past SPILL_THRESHOLD).
#: Short, so that the writer never sits in SQLite's wait when the run ends: what it has not
#: written by then is spilled at once, not after SQLite's usual minute.
BUSY_SECONDS = 1.0
#: A catalog locked by another process for this long is said to be (shorter locks are the
#: ordinary contention of runs and replays recording side by side).
LOCKED_WARN_SECONDS = 10.0

#: Queued where the main loop starts (``Writer.main_loop_starts``).
_MAIN_LOOP_STARTS = object()


class Writer:
    """One per recording process; see the module docstring."""

    def __init__(
        self, catalog_path: Path, spill_dir: Path, run: int, run_id: str, source: int = catalog.SOURCE_RECORD, ctx_base: int = 0,
        count_before_main_loop: bool = False, run_fields: dict[str, Any] | None = None,
        on_damage: Callable[[], Path | None] | None = None,
    ) -> None:
        #: Seconds between commits when nothing wakes the writer sooner (read once: a bad value warns once).
        self.interval = config.flush_interval()
        self.catalog_path = catalog_path
        self.spill_dir = spill_dir
        self.run = run
        self.run_id = run_id
        self.source = source
        #: The run's row as first inserted, to register the run again in a catalog that replaced
        #: the one it started in (a damaged catalog another process set aside); None where the
        #: run must be in the catalog already (replay, resume), whose records then wait.
        self.run_fields = run_fields
        self._row_deleted = False  # the run's row vanished from the catalog it records into
        #: What this writer's commands have changed in the run's row since: fields, info keys,
        #: flags and arguments (merged, so it stays small), for the same purpose.
        self._row_fields: dict[str, Any] = {}
        self._row_info: dict[str, Any] = {}
        self._row_flags: dict[str, None] = {}
        self._row_args: dict[str, Any] = {}
        #: Sets a catalog SQLite reports damaged aside (``Store.set_aside_damaged_catalog``): the
        #: run then goes on recording into a new one, as one started there would.
        self.on_damage = on_damage
        self.queue: deque[Any] = deque()
        #: The training thread's entry point: ``append((ctx, name, value))``.
        self.append = self.queue.append
        self._wake = threading.Event()
        self._stop = False
        self._ctx_ids: dict[tuple[Any, ...], int] = {}
        self._quoted_names: dict[Any, str] = {}
        self._prev_ctx: tuple[Any, ...] = ()  # the last new context, its JSON prefix and iteration
        self._prev_prefix = "["
        self._prev_iteration: int | None = None
        self._next_ctx = ctx_base
        #: ``time.monotonic()`` of the last commit (0: none yet, so the first asked for is made).
        self.last_commit = 0.0
        #: Per name, the values logged outside every loop so far, until the main loop starts
        #: (``main_loop_starts``): stored as the run's ``info.preloop_counts``, they tell the values
        #: logged before the main loop from those logged after it, which share the context ``[]``.
        self._preloop_counts: dict[str, int] | None = {} if count_before_main_loop else None
        #: Pending loop contexts, flattened the same way: ``ctx_id, iteration, loops_json, ...``.
        self._pending_contexts: list[Any] = []
        #: Pending records, flattened: ``ctx_id, name, kind, value, ctx_id, name, ...`` (no tuple per
        #: record: a million long-lived tuples would make the garbage collector rescan them all).
        self._pending_cells: list[Any] = []
        self._pending_commands: list[_Command] = []
        self._spill_files: list[Path] = []
        self._warned = False
        self._failed_since: float | None = None
        self.written = 0
        #: Transactions committed so far.
        self.commits = 0
        #: CPU seconds the writer's thread spent draining (encoding and committing): it competes
        #: with training for the cores, so the checkpoint policy charges it to the overhead budget.
        self.cpu_seconds = 0.0
        self._conn: sqlite3.Connection | None = None
        #: (device, inode) of the catalog file the connection opened: another file at its path
        #: is a new catalog, which the connection would not see.
        self._conn_file: tuple[int, int] | None = None
        self._thread = threading.Thread(target=self._loop, name="hindlog-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ training-thread side

    def wake(self) -> None:
        """Ask for a commit now (non-blocking)."""
        self._wake.set()

    def command(self, fn: Command, wait: bool = False, timeout: float | None = None) -> bool:
        """Queue ``fn(conn)`` to run in the writer's transaction, after everything queued before it."""
        done = threading.Event() if wait else None
        self.queue.append(_Command(fn, done))
        if done is None:
            return True
        self._wake.set()
        return done.wait(timeout)

    def main_loop_starts(self) -> None:
        """Mark, in the order of the records, where the main loop starts."""
        self.queue.append(_MAIN_LOOP_STARTS)

    def change(self, kind: str, payload: Any) -> None:
        """Queue a catalog change for this run: ``update_run`` (fields), ``flag`` (a name),
        ``arg`` ((name, value)), ``info`` (keys to merge) or ``checkpoints`` (rows)."""
        data = (kind, payload)
        self.queue.append(_Command(lambda conn: apply_command(conn, self.run, data), None, data))

    def alive(self) -> bool:
        """Whether the writer thread runs (in a forked child it does not)."""
        return self._thread.is_alive()

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until everything queued so far is committed (or spilled). False on timeout."""
        if not self._thread.is_alive():
            self._drain_once()
            return not self.queue
        return self.command(lambda conn: None, wait=True, timeout=timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Flush, stop the thread, and leave anything unwritable in a spill file, saying so."""
        try:
            self.flush(timeout)  # (an attempt that fails ends it too: see _commit)
        except Exception as e:  # noqa: BLE001 - what could not be written is spilled below
            self._warn(f"cannot write to the catalog {self.catalog_path} ({type(e).__name__}: {e})")
        self._stop = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            # Still inside a commit: what it holds is its to write, and spilling it too could
            # store it twice. (A commit waits at most BUSY_SECONDS for a lock, so this is rare.)
            warnings.warn(f"hindlog: the catalog writer of run {self.run_id} did not finish within {timeout:.0f} s; "
                          "what it had not written yet may be lost", RuntimeWarning, stacklevel=2)
            return
        # What the thread did not take (its last attempt failed, or it was still waiting for a
        # locked catalog when the flush gave up) is spilled with the rest, not dropped.
        n = len(self.queue)
        if n:
            self._take(list(starmap(self.queue.popleft, repeat((), n))))
        if self._pending_cells or self._pending_contexts or self._pending_commands:
            records = len(self._pending_cells) // 4
            what = f"the last {records} records of run {self.run_id}" if records else f"the end of run {self.run_id}"
            spilled = self._spill()
            if spilled is not None:
                warnings.warn(
                    f"hindlog: could not write {what} to the catalog {self.catalog_path}; kept in {spilled}, "
                    "the next run that records in this project writes it into the catalog", RuntimeWarning, stacklevel=2)
            elif self._pending_cells or self._pending_contexts:
                warnings.warn(
                    f"hindlog: could not write {what} to the catalog {self.catalog_path} nor spill it to "
                    f"{self.spill_dir}: it is lost (is the disk full?)", RuntimeWarning, stacklevel=2)
        self._close_connection()

    # ------------------------------------------------------------ writer thread

    def _loop(self) -> None:
        interval = self.interval
        while not self._stop:
            self._wake.wait(interval)
            self._wake.clear()
            cpu0 = time.thread_time()
            try:
                self._drain_once()
            except Exception as e:  # noqa: BLE001 - a dead writer would lose everything logged after
                self._warn(f"the catalog writer failed ({type(e).__name__}: {e}); retrying")
            self.cpu_seconds += time.thread_time() - cpu0

    def _drain_once(self) -> None:
        queue = self.queue
        n = len(queue)
        if n == 0 and not self._pending_cells and not self._pending_commands:
            if time.monotonic() - self.last_commit >= HEARTBEAT_SECONDS:
                # Nothing to write, but the run is alive: a resume after kill -9 tells from the
                # heartbeat how long the run stood killed.
                self._commit()
            return
        if n:
            # Take exactly the n items queued so far, in order, in one C-level call
            # (the training thread may keep appending meanwhile).
            self._take(list(starmap(queue.popleft, repeat((), n))))
        if len(self._ctx_ids) > 50_000:
            self._ctx_ids.clear()  # a repeated context gets a new id with the same loops: harmless
        self._commit()

    def _count_before_main_loop(self, items: list[Any]) -> None:
        counts = self._preloop_counts
        assert counts is not None
        for k, item in enumerate(items):
            if type(item) is tuple:
                if not item[0]:  # the context outside every loop
                    counts[item[1]] = counts.get(item[1], 0) + 1
            elif item is _MAIN_LOOP_STARTS:
                self._preloop_counts = None
                data = ("info", {"preloop_counts": counts})
                items[k] = _Command(lambda conn: apply_command(conn, self.run, data), None, data)
                return

    def _take(self, items: list[Any]) -> None:
        """Turn queued items into pending records (``ctx_id, name, kind, value``) and commands, in order.

        This runs once per logged value, so it is written for speed: consecutive
        records usually share their context tuple (one loop iteration), so the
        last one is remembered by identity instead of hashing every context;
        finite floats and int64 ints (almost everything) skip ``encode``.
        """
        if self._preloop_counts is not None:
            self._count_before_main_loop(items)
        cells_extend = self._pending_cells.extend
        commands_append = self._pending_commands.append
        ctx_ids = self._ctx_ids
        new_context = self._new_context
        last_ctx: Any = None
        cid = 0
        for item in items:
            if type(item) is tuple:
                ctx, name, value = item
                if ctx is not last_ctx:
                    cid = ctx_ids.get(ctx)
                    if cid is None:
                        cid = new_context(ctx)
                    last_ctx = ctx
                t = type(value)
                if t is float:
                    if _NINF < value < _INF:  # False for NaN too
                        cells_extend((cid, name, 0, value))
                        continue
                elif t is int and _INT64_MIN <= value <= _INT64_MAX:
                    cells_extend((cid, name, 0, value))
                    continue
                try:
                    kind, enc = encode(value)
                except Exception as e:  # never let one bad value stop the writer
                    self._warn(f"could not store a value of {name!r}: {e}")
                    continue
                cells_extend((cid, name, kind, enc))
            elif item is not _MAIN_LOOP_STARTS:  # a mark not counted (replay, resume) is dropped
                commands_append(item)

    def _new_context(self, ctx: tuple[Any, ...]) -> int:
        self._next_ctx = cid = self._next_ctx + 1
        self._ctx_ids[ctx] = cid
        # Successive new contexts are usually siblings (the steps of one inner loop): the same
        # enclosing loop tuples, another index in the last. Their shared prefix is reused.
        prev = self._prev_ctx
        n = len(ctx)
        if n > 1 and len(prev) == n and (ctx[0] is prev[0] if n == 2 else all(map(is_, ctx[:-1], prev))):
            prefix, iteration = self._prev_prefix, self._prev_iteration
        else:
            first = ctx[0] if ctx else None
            iteration = first[1] if first is not None and first[0] is not None and len(first) > 2 and first[2] else None
            prefix = "[" + "".join([self._loop_json(c) + ", " for c in ctx[:-1]])
            self._prev_prefix, self._prev_iteration = prefix, iteration
        self._prev_ctx = ctx
        # == json.dumps([[c[0], c[1]] for c in ctx]), character for character
        loops = prefix + self._loop_json(ctx[-1]) + "]" if ctx else "[]"
        self._pending_contexts.extend((cid, iteration, loops))
        return cid

    def _loop_json(self, c: tuple[Any, ...]) -> str:
        """``json.dumps([c[0], c[1]])`` without the encoder's per-call overhead."""
        name, index = c[0], c[1]
        q = self._quoted_names.get(name)
        if q is None:
            q = self._quoted_names[name] = json.dumps(name)
        return f"[{q}, {int.__repr__(index)}]" if type(index) is int else f"[{q}, {json.dumps(index)}]"

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None and _file_identity(self.catalog_path) != self._conn_file:
            # Replaced under this connection (a damaged catalog set aside): what it wrote from
            # now on would go to the old file, out of every query's sight.
            self._close_connection()
        if self._conn is None:
            identity = _file_identity(self.catalog_path)  # before: a file replaced meanwhile is seen next time
            # Not SQLite's usual minute: a commit that waits for a locked catalog keeps the run's
            # end (and its spill of what it could not write) waiting as long.
            conn = catalog.connect(self.catalog_path, timeout=BUSY_SECONDS)
            try:
                self._find_run(conn)
            except BaseException:
                conn.close()
                raise
            self._conn, self._conn_file = conn, identity or _file_identity(self.catalog_path)
        return self._conn

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    def _find_run(self, conn: sqlite3.Connection) -> None:
        """Point this writer at its run's row in the catalog just opened. A catalog that lacks the
        run replaced the one it started in: the run is registered in it again, so that what it
        records from now on is kept and queryable (and never written under another run's key)."""
        row = conn.execute("SELECT id FROM runs WHERE run_id=?", (self.run_id,)).fetchone()
        if row is not None:
            self.run = row[0]
            return
        if self.run_fields is None:
            raise RuntimeError(f"run {self.run_id} is not in the catalog {self.catalog_path}, which was replaced "
                               f"since the run started; its records are kept for when it is back")
        fields = {**self.run_fields, **self._row_fields}
        if self.run is None:
            # Never registered: the run's start found the catalog locked by another process.
            fields["flags"] = list(self._row_flags)
            fields["info"] = {**(fields.get("info") or {}), **self._row_info}
            self.run = catalog.insert_run(conn, fields)
            with catalog.transaction(conn):
                for name, value in self._row_args.items():
                    catalog.set_arg(conn, self.run, name, value)
            return
        deleted = self._row_deleted
        self._row_deleted = False
        flag = "deleted_while_recording" if deleted else "catalog_replaced"
        fields["flags"] = [*self._row_flags, flag]
        fields["info"] = {**(fields.get("info") or {}), **self._row_info}
        self.run = catalog.insert_run(conn, fields)
        with catalog.transaction(conn):
            for name, value in self._row_args.items():
                catalog.set_arg(conn, self.run, name, value)
        # The loop contexts written so far went with the old row; the records still to come may
        # refer to any of them.
        pending = set(self._pending_contexts[0::3])
        for ctx, cid in self._ctx_ids.items():
            if cid not in pending:
                self._pending_contexts.extend((cid, *self._context_row(ctx)))
        if deleted:
            warnings.warn(
                f"hindlog: run {self.run_id} was deleted from {self.catalog_path} while it still recorded (`hindlog rm` "
                f"from a process that took it for ended?). It goes on recording under a new row, flagged {flag}; what it "
                "recorded before is gone.", RuntimeWarning, stacklevel=2,
            )
            return
        aside = sorted(self.catalog_path.parent.glob(f"{catalog.DAMAGED_PREFIX}*.db"))
        before = (f"what it recorded before is in the catalog set aside, {aside[-1]}" if aside else
                  "what it recorded before went with the old catalog (deleted, or moved by hand)")
        warnings.warn(
            f"hindlog: the catalog {self.catalog_path} was replaced while run {self.run_id} recorded (a damaged one "
            f"set aside by another process, or the store deleted). The run goes on recording into the new one, "
            f"flagged catalog_replaced; {before}.", RuntimeWarning, stacklevel=2,
        )

    def _context_row(self, ctx: tuple[Any, ...]) -> tuple[int | None, str]:
        """A context's ``iteration`` and ``loops`` columns, as ``_new_context`` computes them."""
        first = ctx[0] if ctx else None
        iteration = first[1] if first is not None and first[0] is not None and len(first) > 2 and first[2] else None
        return iteration, "[" + ", ".join(self._loop_json(c) for c in ctx) + "]"

    def _remember(self, commands: list[_Command]) -> None:
        """Note what committed commands changed in the run's row (see ``run_fields``)."""
        for cmd in commands:
            if cmd.data is None:
                continue
            kind, payload = cmd.data
            if kind == "update_run":
                self._row_fields.update(payload)
            elif kind == "info":
                self._row_info.update(payload)
            elif kind == "flag":
                self._row_flags[payload] = None
            elif kind == "arg":
                self._row_args[payload[0]] = payload[1]

    def _commit(self) -> None:
        cells, contexts, commands = self._pending_cells, self._pending_contexts, self._pending_commands
        try:
            conn = self._connection()
            with catalog.transaction(conn):
                # First, and by id and run id together: a run deleted while it recorded (``hindlog
                # rm`` that took it for dead) must not write under its old id, which SQLite gives the
                # next new run.
                if self.run is not None and conn.execute("UPDATE runs SET heartbeat=? WHERE id=? AND run_id=?",
                                                         (time.time(), self.run, self.run_id)).rowcount == 0:
                    raise _RunRowGone
                spilled = self._load_spills(conn)
                if contexts:
                    catalog.bulk_insert_contexts(conn, self.run, contexts)
                if cells:
                    names = cells[1::4]
                    ids = catalog.name_ids(conn, set(names))
                    params = cells[:]  # cells keep the names, for a retry or a spill if this fails
                    params[1::4] = map(ids.__getitem__, names)
                    catalog.bulk_insert_records(conn, self.run, self.source, params)
                for cmd in commands:
                    cmd.fn(conn)
            self.last_commit = time.monotonic()
            self.commits += 1
            if self.run_fields is not None:
                self._remember(commands)
            for path in spilled:  # only once their rows are committed
                self._spill_files.remove(path)
                _unlink(path)
        except _RunRowGone:
            # Registered again, as in a replaced catalog, with what is still to come.
            self._close_connection()
            self._row_deleted = True
            self.run = -1  # (not None: the run had a row; ``_find_run`` registers it again)
            return self._commit()
        except Exception as e:  # noqa: BLE001 - an unreadable catalog or spill file must not stop the writer
            self._on_failure(e)
            for cmd in commands:  # waiters must not hang on an unwritable catalog
                if cmd.done is not None:
                    cmd.done.set()
            return
        self.written += len(cells) // 4
        if self._failed_since is not None:
            self._failed_since = None
        self._pending_cells, self._pending_contexts, self._pending_commands = [], [], []
        for cmd in commands:
            if cmd.done is not None:
                cmd.done.set()

    def _on_failure(self, error: Exception) -> None:
        if isinstance(error, sqlite3.DatabaseError) and catalog.is_damage(error) and self.on_damage is not None \
                and self.run_fields is not None:
            try:
                aside = self.on_damage()
            except Exception:  # noqa: BLE001 - then the records wait in memory and spill files, as below
                aside = None
            if aside is not None:
                warnings.warn(
                    f"hindlog: the catalog {self.catalog_path} was found damaged while run {self.run_id} recorded "
                    f"(SQLite: {error}); moved it to {aside}, every byte kept ({catalog.recover_advice(aside)}). "
                    "The run goes on recording into a new catalog.", RuntimeWarning, stacklevel=2)
                self._close_connection()
                return
        if self._failed_since is None:
            self._failed_since = time.time()
        locked = isinstance(error, sqlite3.OperationalError) and "locked" in str(error)
        if not locked or time.time() - self._failed_since >= LOCKED_WARN_SECONDS:
            self._warn(
                f"cannot write to the catalog {self.catalog_path} ({error}); keeping records in memory "
                f"and retrying. Training goes on."
            )
        self._close_connection()  # reconnect on the next attempt
        if len(self._pending_cells) // 4 >= config.SPILL_THRESHOLD:
            self._spill()

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(f"hindlog: {message}", RuntimeWarning, stacklevel=2)

    def _spill(self) -> Path | None:
        """Move pending rows to a spill file, to be loaded by a later successful write; the file,
        or None when it could not be written."""
        cells, flat_contexts = self._pending_cells, self._pending_contexts
        # The spill format: rows (ctx_id, name, kind, value) and contexts (ctx_id, iteration, loops_json).
        rows = list(zip(cells[0::4], cells[1::4], cells[2::4], cells[3::4]))
        contexts = list(zip(flat_contexts[0::3], flat_contexts[1::3], flat_contexts[2::3]))
        commands = [c.data for c in self._pending_commands if c.data is not None]
        data = {"run_id": self.run_id, "source": self.source, "contexts": contexts, "rows": rows,
                "commands": commands, "flags": ["spilled"]}
        if self.run is None and self.run_fields is not None:
            # Never registered (the catalog was locked since the run started): the run's row
            # travels with its records.
            data["run_fields"] = {**self.run_fields, **self._row_fields,
                                  "info": {**(self.run_fields.get("info") or {}), **self._row_info}}
        path = self.spill_dir / f"{self.run_id}.{os.getpid()}.{len(self._spill_files)}.{time.time_ns()}.pkl"
        tmp = path.with_suffix(".tmp")
        try:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_path(str(self.spill_dir))  # the new name too: the rows leave memory next
        except OSError as e:
            try:
                tmp.unlink()  # a part written to a full disk is no spill
            except OSError:
                pass
            self._warn(f"cannot spill records to {self.spill_dir} either ({e}); keeping them in memory")
            return None
        self._spill_files.append(path)
        self._pending_cells, self._pending_contexts = [], []
        self._pending_commands = [c for c in self._pending_commands if c.data is None]
        return path

    def _load_spills(self, conn: sqlite3.Connection) -> list[Path]:
        """Insert this writer's spill files into the transaction; the files, to delete once it commits."""
        loaded = []
        for path in list(self._spill_files):
            try:
                found = load_spill_file(conn, path)
            except FileNotFoundError:
                # Loaded and removed by another process's recovery, which took this process for
                # gone (one that cannot see its pid): its rows are in the catalog already.
                self._spill_files.remove(path)
                continue
            if found:  # a file not loaded must outlive the commit
                loaded.append(path)
        if loaded:
            catalog.add_run_flag(conn, self.run, "spilled")
        if self._failed_since is not None:
            catalog.add_run_flag(conn, self.run, "catalog_write_failed")
        return loaded


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class _RunRowGone(Exception):
    """The run's row is no longer in the catalog (deleted while the run recorded)."""


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def read_spill_file(path: Path) -> dict[str, Any]:
    """A spill file's contents: ``run_id``, ``source``, ``contexts``, ``rows`` and ``commands``."""
    with open(path, "rb") as f:
        return pickle.load(f)


def load_spill_file(conn: sqlite3.Connection, path: Path) -> bool:
    """Insert a spill file's rows into the catalog, inside the caller's transaction; the caller
    deletes the file once that has committed (deleted before, a failed commit would lose them).
    False, inserting nothing, if the catalog has no such run."""
    data = read_spill_file(path)
    row = conn.execute("SELECT id FROM runs WHERE run_id=?", (data["run_id"],)).fetchone()
    if row is None:
        # A run whose start found the catalog locked, and which ended before it could register:
        # its row comes with its records.
        if not data.get("run_fields"):
            return False
        run = catalog.insert_run(conn, data["run_fields"])
    else:
        run = row[0]
    catalog.insert_contexts(conn, run, data["contexts"])
    rows = data["rows"]
    if rows:
        ids = catalog.name_ids(conn, {r[1] for r in rows})
        catalog.insert_records(conn, [(run, c, ids[n], k, v, data["source"]) for c, n, k, v in rows])
    for command in data.get("commands", []):
        apply_command(conn, run, tuple(command))
    catalog.add_run_flag(conn, run, "spilled")
    return True


def recover_spills(conn: sqlite3.Connection, spill_dir: Path) -> int:
    """Load spill files left by processes that are gone. Returns how many were loaded."""
    if not spill_dir.exists():
        return 0
    loaded = 0
    for path in sorted(spill_dir.glob("*.pkl")):
        pid = int(path.name.split(".")[1])
        if pid != os.getpid() and pid_alive(pid):
            continue
        try:
            with catalog.transaction(conn):
                if not load_spill_file(conn, path):
                    continue
            _unlink(path)
            loaded += 1
        except sqlite3.OperationalError as e:
            if "locked" in str(e):
                break  # another process holds the catalog: the next start loads the rest
            continue
        except (OSError, sqlite3.Error, pickle.UnpicklingError, EOFError):
            continue
    return loaded


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
