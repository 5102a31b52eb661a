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
from pathlib import Path
from typing import Any

from . import catalog, config
from .values import encode

Command = Callable[[sqlite3.Connection], None]


class _Command:
    __slots__ = ("fn", "done")

    def __init__(self, fn: Command, done: threading.Event | None) -> None:
        self.fn, self.done = fn, done


class Writer:
    """One per recording process; see the module docstring."""

    def __init__(self, catalog_path: Path, spill_dir: Path, run: int, run_id: str, source: int = catalog.SOURCE_RECORD) -> None:
        self.catalog_path = catalog_path
        self.spill_dir = spill_dir
        self.run = run
        self.run_id = run_id
        self.source = source
        self.queue: deque[Any] = deque()
        #: The training thread's entry point: ``append((ctx, name, value))``.
        self.append = self.queue.append
        self._wake = threading.Event()
        self._stop = False
        self._ctx_ids: dict[tuple[Any, ...], int] = {}
        self._next_ctx = 0
        self._pending_contexts: list[tuple[int, int | None, str]] = []
        self._pending_rows: list[tuple[int, str, int, Any]] = []
        self._pending_commands: list[_Command] = []
        self._spill_files: list[Path] = []
        self._warned = False
        self._failed_since: float | None = None
        self.written = 0
        self._conn: sqlite3.Connection | None = None
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

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until everything queued so far is committed (or spilled). False on timeout."""
        if not self._thread.is_alive():
            self._drain_once()
            return not self.queue
        return self.command(lambda conn: None, wait=True, timeout=timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Flush, stop the thread, and leave anything unwritable in a spill file."""
        self.flush(timeout)
        self._stop = True
        self._wake.set()
        self._thread.join(timeout)
        if self._pending_rows or self._pending_contexts or self._pending_commands:
            self._spill()
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass

    # ------------------------------------------------------------ writer thread

    def _loop(self) -> None:
        interval = config.flush_interval()
        while not self._stop:
            self._wake.wait(interval)
            self._wake.clear()
            self._drain_once()

    def _drain_once(self) -> None:
        queue = self.queue
        n = len(queue)
        if n == 0 and not self._pending_rows and not self._pending_commands:
            return
        rows = self._pending_rows
        contexts = self._pending_contexts
        commands = self._pending_commands
        ctx_ids = self._ctx_ids
        popleft = queue.popleft
        for _ in range(n):
            item = popleft()
            if type(item) is tuple:
                ctx, name, value = item
                cid = ctx_ids.get(ctx)
                if cid is None:
                    cid = self._new_context(ctx)
                if type(value) is float and value == value and value not in (float("inf"), float("-inf")):
                    rows.append((cid, name, 0, value))
                else:
                    try:
                        kind, enc = encode(value)
                    except Exception as e:  # never let one bad value stop the writer
                        self._warn(f"could not store a value of {name!r}: {e}")
                        continue
                    rows.append((cid, name, kind, enc))
            else:
                commands.append(item)
        if len(ctx_ids) > 50_000:
            ctx_ids.clear()  # a repeated context gets a new id with the same loops: harmless
        self._commit()

    def _new_context(self, ctx: tuple[Any, ...]) -> int:
        self._next_ctx += 1
        cid = self._next_ctx
        self._ctx_ids[ctx] = cid
        iteration = ctx[0][1] if ctx and ctx[0][0] is not None and len(ctx[0]) > 2 and ctx[0][2] else None
        loops = json.dumps([[c[0], c[1]] for c in ctx])
        self._pending_contexts.append((cid, iteration, loops))
        return cid

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = catalog.connect(self.catalog_path)
        return self._conn

    def _commit(self) -> None:
        rows, contexts, commands = self._pending_rows, self._pending_contexts, self._pending_commands
        try:
            conn = self._connection()
            with catalog.transaction(conn):
                self._load_spills(conn)
                if contexts:
                    catalog.insert_contexts(conn, self.run, contexts)
                if rows:
                    ids = catalog.name_ids(conn, {r[1] for r in rows})
                    run, source = self.run, self.source
                    catalog.insert_records(conn, [(run, c, ids[n], k, v, source) for c, n, k, v in rows])
                for cmd in commands:
                    cmd.fn(conn)
                conn.execute("UPDATE runs SET heartbeat=? WHERE id=?", (time.time(), self.run))
        except sqlite3.Error as e:
            self._on_failure(e)
            for cmd in commands:  # waiters must not hang on an unwritable catalog
                if cmd.done is not None:
                    cmd.done.set()
            return
        self.written += len(rows)
        if self._failed_since is not None:
            self._failed_since = None
        self._pending_rows, self._pending_contexts, self._pending_commands = [], [], []
        for cmd in commands:
            if cmd.done is not None:
                cmd.done.set()

    def _on_failure(self, error: Exception) -> None:
        if self._failed_since is None:
            self._failed_since = time.time()
        self._warn(
            f"cannot write to the catalog {self.catalog_path} ({error}); keeping records in memory "
            f"and retrying. Training goes on."
        )
        self._conn = None  # reconnect on the next attempt
        if len(self._pending_rows) >= config.SPILL_THRESHOLD:
            self._spill()

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(f"hindlog: {message}", RuntimeWarning, stacklevel=2)

    def _spill(self) -> None:
        """Move pending rows to a spill file, to be loaded by a later successful write."""
        rows, contexts = self._pending_rows, self._pending_contexts
        # Only the data survives a spill; commands are replayed by their owners.
        data = {"run_id": self.run_id, "source": self.source, "contexts": contexts, "rows": rows,
                "flags": ["spilled"]}
        try:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            path = self.spill_dir / f"{self.run_id}.{os.getpid()}.{len(self._spill_files)}.{time.time_ns()}.pkl"
            tmp = path.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            self._warn(f"cannot spill records to {self.spill_dir} either ({e}); keeping them in memory")
            return
        self._spill_files.append(path)
        self._pending_rows, self._pending_contexts = [], []

    def _load_spills(self, conn: sqlite3.Connection) -> None:
        if self._spill_files:
            for path in list(self._spill_files):
                load_spill_file(conn, path)
                self._spill_files.remove(path)
            catalog.add_run_flag(conn, self.run, "spilled")
        if self._failed_since is not None:
            catalog.add_run_flag(conn, self.run, "catalog_write_failed")


def load_spill_file(conn: sqlite3.Connection, path: Path) -> None:
    """Insert a spill file's rows into the catalog (inside the caller's transaction) and delete it."""
    with open(path, "rb") as f:
        data = pickle.load(f)
    row = conn.execute("SELECT id FROM runs WHERE run_id=?", (data["run_id"],)).fetchone()
    if row is None:
        return
    run = row[0]
    catalog.insert_contexts(conn, run, data["contexts"])
    rows = data["rows"]
    if rows:
        ids = catalog.name_ids(conn, {r[1] for r in rows})
        catalog.insert_records(conn, [(run, c, ids[n], k, v, data["source"]) for c, n, k, v in rows])
    catalog.add_run_flag(conn, run, "spilled")
    path.unlink()


def recover_spills(conn: sqlite3.Connection, spill_dir: Path) -> int:
    """Load spill files left by processes that are gone. Returns how many were loaded."""
    if not spill_dir.exists():
        return 0
    loaded = 0
    for path in sorted(spill_dir.glob("*.pkl")):
        pid = int(path.name.split(".")[1])
        if pid != os.getpid() and _pid_alive(pid):
            continue
        try:
            with catalog.transaction(conn):
                load_spill_file(conn, path)
            loaded += 1
        except (OSError, sqlite3.Error, pickle.UnpicklingError, EOFError):
            continue
    return loaded


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
