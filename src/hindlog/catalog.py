"""The SQLite catalog: runs, args, loop contexts, log records and checkpoints.

Only this module writes SQL. Everything above it hands it plain Python values.
The catalog runs in WAL mode so that a training process can write while the
CLI or a notebook reads, and several runs of one project can write at once.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .environment import hostname, pid_namespace
from .errors import DamagedCatalog, RunNotFound, SchemaError

SCHEMA_VERSION = 1

# History:
#   1: first version.
SCHEMA = """
-- Key/value facts about the catalog itself: schema version, creating tool version.
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT
);

-- One row per run. `id` is the local integer key, `run_id` the public,
-- time-sortable id users type.
CREATE TABLE IF NOT EXISTS runs (
    id           INTEGER PRIMARY KEY,
    run_id       TEXT UNIQUE NOT NULL,
    name         TEXT,
    project      TEXT,
    script       TEXT,            -- path of the script, relative to the project root
    code_version TEXT,            -- git commit sha, or 'snap-<hash>' outside git
    code_kind    TEXT,            -- 'git' or 'snapshot'
    status       TEXT NOT NULL,   -- running | finished | failed | killed
    flags        TEXT NOT NULL DEFAULT '[]',  -- JSON list of problems met while recording
    argv         TEXT,            -- JSON list
    env          TEXT,            -- JSON: python, packages, host, gpus, environment variables, PYTHONPATH
    cwd          TEXT,
    pid          INTEGER,
    host         TEXT,
    started      REAL,
    ended        REAL,
    heartbeat    REAL,            -- last time the writer committed
    epsilon      REAL,
    overhead     REAL,            -- measured: time training was blocked / elapsed
    info         TEXT NOT NULL DEFAULT '{}'   -- JSON: anything else (checkpoint policy stats, the module of a python -m run, ...)
);

-- Hyperparameters given through hl.arg (values as JSON).
CREATE TABLE IF NOT EXISTS args (
    run   INTEGER NOT NULL REFERENCES runs(id),
    name  TEXT NOT NULL,
    value TEXT,
    PRIMARY KEY (run, name)
) WITHOUT ROWID;

-- Logged names, stored once.
CREATE TABLE IF NOT EXISTS names (
    id   INTEGER PRIMARY KEY,
    name TEXT UNIQUE NOT NULL
);

-- A loop context: the indices of all enclosing hl.loop calls, e.g.
-- [["epoch", 3], ["step", 17]]. `iteration` is the main loop's index (NULL
-- outside the main loop). Ids are assigned by the recording process.
CREATE TABLE IF NOT EXISTS contexts (
    run       INTEGER NOT NULL,
    id        INTEGER NOT NULL,
    iteration INTEGER,
    loops     TEXT NOT NULL,
    PRIMARY KEY (run, id)
) WITHOUT ROWID;

-- One row per logged value. kind: 0 native SQLite value (int, float, str,
-- NULL), 1 bool, 2 JSON text, 3 NumPy .npy bytes, 4 non-finite float as text.
-- source: 0 recorded, 1 replayed, 2 stored by a replay that has not finished
-- (hidden from queries: the replay makes them 1 when it ends, or they are
-- deleted if it never does), 3 replayed by a segment whose recomputed values
-- differed from the record's, kept with --keep-diverged (queries warn of them).
CREATE TABLE IF NOT EXISTS records (
    run    INTEGER NOT NULL,
    ctx    INTEGER NOT NULL,
    name   INTEGER NOT NULL,
    kind   INTEGER NOT NULL,
    value,
    source INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS records_by_name ON records (name, run);

-- One row per checkpoint: the state at the exit of block `block` (a nested
-- loop, or -1 for the end of the iteration) of main-loop iteration `iteration`.
-- `manifest` is the object holding the checkpoint manifest. The row is
-- written only after every object it names is durable.
CREATE TABLE IF NOT EXISTS checkpoints (
    run       INTEGER NOT NULL,
    iteration INTEGER NOT NULL,
    block     INTEGER NOT NULL,
    loop      TEXT,
    manifest  TEXT NOT NULL,
    nbytes    INTEGER NOT NULL,
    created   REAL NOT NULL,
    PRIMARY KEY (run, iteration, block)
) WITHOUT ROWID;

-- Code snapshots made outside git: version -> object holding the file manifest.
CREATE TABLE IF NOT EXISTS code_snapshots (
    version  TEXT PRIMARY KEY,
    manifest TEXT NOT NULL
) WITHOUT ROWID;
"""

KIND_NATIVE, KIND_BOOL, KIND_JSON, KIND_NPY, KIND_FLOAT_TEXT = 0, 1, 2, 3, 4
SOURCE_RECORD, SOURCE_REPLAY, SOURCE_PENDING, SOURCE_REPLAY_DIVERGED = 0, 1, 2, 3
STATUSES = ("running", "finished", "failed", "killed")

_RUN_COLUMNS = (
    "run_id", "name", "project", "script", "code_version", "code_kind", "status", "flags",
    "argv", "env", "cwd", "pid", "host", "started", "ended", "heartbeat", "epsilon",
    "overhead", "info",
)
_JSON_RUN_COLUMNS = {"flags", "argv", "env", "info"}


def is_damage(error: sqlite3.DatabaseError) -> bool:
    """Whether SQLite's error says the database file itself is damaged."""
    text = str(error).lower()
    return "malformed" in text or "not a database" in text


def intact(path: Path) -> bool:
    """Whether the catalog at ``path`` opens and SQLite's quick check finds no damage in it
    (damage past its first page shows only when a read reaches it)."""
    if not path.exists():
        return True  # (set aside by another process meanwhile: what is there now is a new one)
    # Read-only: a damaged header that reads as an empty database must not get a schema.
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
        return rows == [("ok",)]
    except sqlite3.DatabaseError as e:
        if is_damage(e):
            return False
        raise
    finally:
        conn.close()


def damaged_message(path: Path, error: sqlite3.DatabaseError) -> str:
    return (f"the catalog {path} is damaged (SQLite: {error}). Its records cannot be read as they are: "
            f"{recover_advice(path)}. The next run that records moves it aside (to "
            f"{DAMAGED_PREFIX}<time>.db) and starts a new catalog")


def recover_advice(path: Path) -> str:
    return f"`sqlite3 {path} .recover | sqlite3 recovered.db` saves what can be read"


#: A damaged catalog moved aside is renamed so (``Store.set_aside_damaged_catalog``).
DAMAGED_PREFIX = "catalog.damaged-"


def set_aside_notice(aside: Path) -> str:
    return (f"{aside} is a damaged catalog set aside: the runs recorded before it was damaged are in it, "
            f"not listed here ({recover_advice(aside)})")


def connect(path: Path, timeout: float = 60.0) -> sqlite3.Connection:
    """Open (creating if needed) the catalog at ``path`` and check its schema version."""
    try:
        return _connect(path, timeout)
    except sqlite3.DatabaseError as e:
        if is_damage(e):
            raise DamagedCatalog(damaged_message(path, e), str(e)) from None
        raise


def _connect(path: Path, timeout: float) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None, check_same_thread=False)
    # Switching a new database to WAL needs it alone, and SQLite reports "database is locked" at
    # once, without its busy handler, when other processes open it at the same moment.
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                conn.close()
                raise
            time.sleep(0.005)
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        with transaction(conn):
            if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    elif version != SCHEMA_VERSION:
        conn.close()
        raise SchemaError(
            f"{path} has catalog schema version {version}, this hindlog reads version "
            f"{SCHEMA_VERSION}. Use the hindlog version that wrote it, or move the store aside."
        )
    return conn


class transaction:
    """``with transaction(conn):`` runs the block in one IMMEDIATE transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
            except sqlite3.Error:
                # A COMMIT that fails (the disk full) may leave the transaction open, holding the
                # write lock: the connection's next BEGIN would fail too.
                self._rollback()
                raise
        else:
            self._rollback()

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # rolled back already, or the connection is unusable: the caller reconnects


# ----------------------------------------------------------------- runs


def insert_run(conn: sqlite3.Connection, fields: dict[str, Any]) -> int:
    """Insert a run row and return its local integer key (in the caller's transaction, if one
    is open: a spill file's run comes with its records)."""
    cols = [c for c in _RUN_COLUMNS if c in fields]
    vals = [_encode_run_field(c, fields[c]) for c in cols]
    sql = f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    if conn.in_transaction:
        return int(conn.execute(sql, vals).lastrowid)
    with transaction(conn):
        return int(conn.execute(sql, vals).lastrowid)


def update_run(conn: sqlite3.Connection, run: int, fields: dict[str, Any]) -> None:
    """Set some columns of a run (JSON columns are given as Python values)."""
    if not fields:
        return
    cols = list(fields)
    vals = [_encode_run_field(c, fields[c]) for c in cols]
    conn.execute(f"UPDATE runs SET {', '.join(c + '=?' for c in cols)} WHERE id=?", [*vals, run])


def add_run_flag(conn: sqlite3.Connection, run: int, flag: str) -> None:
    """Append ``flag`` to a run's list of flags, once."""
    row = conn.execute("SELECT flags FROM runs WHERE id=?", (run,)).fetchone()
    flags = json.loads(row[0]) if row else []
    if flag not in flags:
        flags.append(flag)
        conn.execute("UPDATE runs SET flags=? WHERE id=?", (json.dumps(flags), run))


def merge_run_info(conn: sqlite3.Connection, run: int, info: dict[str, Any]) -> None:
    """Merge keys into a run's ``info`` JSON object."""
    row = conn.execute("SELECT info FROM runs WHERE id=?", (run,)).fetchone()
    current = json.loads(row[0]) if row and row[0] else {}
    current.update(info)
    conn.execute("UPDATE runs SET info=? WHERE id=?", (json.dumps(current), run))


def _encode_run_field(col: str, value: Any) -> Any:
    if col in _JSON_RUN_COLUMNS and value is not None:
        return json.dumps(value, default=str)
    return value


def _decode_run(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    for col in _JSON_RUN_COLUMNS:
        if out.get(col) is not None:
            out[col] = json.loads(out[col])
    if out["status"] == "running" and not _process_alive(out):
        out["status"] = "killed"
    return out


def seen_from_here(run: dict[str, Any]) -> bool:
    """Whether the process that recorded ``run`` can be looked up here by its pid: the same host,
    and the same PID namespace (a container that shares the host's name has its own pids)."""
    if run.get("host") != hostname():
        return False
    recorded = (run.get("env") or {}).get("pid_namespace") if isinstance(run.get("env"), dict) else None
    return recorded is None or recorded == pid_namespace()


def _process_alive(run: dict[str, Any]) -> bool:
    """Whether the process that is writing a 'running' run still exists."""
    pid, heartbeat = run.get("pid"), run.get("heartbeat")
    if pid is None:
        return False
    if not seen_from_here(run):
        # Another machine or container: trust the heartbeat for a few minutes.
        return heartbeat is not None and time.time() - heartbeat < 300
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _is_not_zombie(pid)


def _is_not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state != b"Z"
    except (OSError, IndexError):
        return True


def list_runs(conn: sqlite3.Connection, script: str | None = None) -> list[dict[str, Any]]:
    """All runs, oldest first, with their status corrected for dead processes."""
    conn.row_factory = sqlite3.Row
    try:
        sql = "SELECT * FROM runs"
        params: tuple[Any, ...] = ()
        if script is not None:
            sql += " WHERE script=?"
            params = (script,)
        rows = conn.execute(sql + " ORDER BY run_id", params).fetchall()
    finally:
        conn.row_factory = None
    return [_decode_run(r) for r in rows]


def get_run(conn: sqlite3.Connection, ref: str | None) -> dict[str, Any]:
    """Resolve a run reference: a full id, a unique prefix, a name, a unique end of an id (its
    random part, ``c07b50``), or ``latest`` (also None)."""
    runs = list_runs(conn)
    if not runs:
        raise RunNotFound("There are no runs in this store yet. Record one first (run a script that uses hindlog).")
    if ref is None or ref == "latest":
        return runs[-1]
    if not isinstance(ref, str):
        raise RunNotFound(f"a run is named by its id (a str), a unique start or end of it, its name or 'latest'; got {ref!r}")
    exact = [r for r in runs if r["run_id"] == ref]
    if exact:
        return exact[0]
    matches = [r for r in runs if r["run_id"].startswith(ref)]
    if not matches:
        matches = [r for r in runs if r["name"] == ref]
    if not matches and len(ref) >= 4:  # not "7": a row number, or a typo, is no run's end
        matches = [r for r in runs if r["run_id"].endswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise RunNotFound(f"No run matches {ref!r}. `hindlog runs` lists the runs of this store.")
    ids = ", ".join(r["run_id"] for r in matches[:5])
    raise RunNotFound(f"{ref!r} matches {len(matches)} runs ({ids}{', ...' if len(matches) > 5 else ''}); give more of the id.")


def run_args(conn: sqlite3.Connection, runs: Sequence[int] | None = None) -> dict[int, dict[str, Any]]:
    """The hl.arg values of each run, by local run key."""
    sql = "SELECT run, name, value FROM args"
    params: list[Any] = []
    if runs is not None:
        sql += f" WHERE run IN ({', '.join('?' * len(runs))})"
        params = list(runs)
    out: dict[int, dict[str, Any]] = {}
    for run, name, value in conn.execute(sql, params):
        out.setdefault(run, {})[name] = json.loads(value)
    return out


def set_arg(conn: sqlite3.Connection, run: int, name: str, value: Any) -> None:
    conn.execute("INSERT OR REPLACE INTO args VALUES (?, ?, ?)", (run, name, json.dumps(value)))


# ----------------------------------------------------------------- records


def name_ids(conn: sqlite3.Connection, names: Iterable[str]) -> dict[str, int]:
    """Ids of ``names``, inserting the new ones. Call inside a transaction."""
    names = list(dict.fromkeys(names))
    conn.executemany("INSERT OR IGNORE INTO names (name) VALUES (?)", [(n,) for n in names])
    out: dict[str, int] = {}
    for i in range(0, len(names), 500):
        chunk = names[i : i + 500]
        q = f"SELECT name, id FROM names WHERE name IN ({', '.join('?' * len(chunk))})"
        out.update(conn.execute(q, chunk).fetchall())
    return out


def insert_contexts(conn: sqlite3.Connection, run: int, contexts: Iterable[tuple[int, int | None, str]]) -> None:
    """Insert ``(ctx_id, iteration, loops_json)`` rows for a run."""
    conn.executemany(
        "INSERT OR IGNORE INTO contexts (run, id, iteration, loops) VALUES (?, ?, ?, ?)",
        [(run, c, it, loops) for c, it, loops in contexts],
    )


def insert_records(conn: sqlite3.Connection, rows: Iterable[tuple[int, int, int, int, Any, int]]) -> None:
    """Insert ``(run, ctx, name_id, kind, value, source)`` rows."""
    conn.executemany("INSERT INTO records (run, ctx, name, kind, value, source) VALUES (?, ?, ?, ?, ?, ?)", rows)


def bulk_insert_contexts(conn: sqlite3.Connection, run: int, flat: list[Any]) -> None:
    """Contexts laid out flat: ``ctx_id, iteration, loops_json, ctx_id, ...`` (the writer's batches)."""
    _insert_flat(conn, "INSERT OR IGNORE INTO contexts (run, id, iteration, loops)", f"({int(run)}, ?, ?, ?)", flat, 3)


def bulk_insert_records(conn: sqlite3.Connection, run: int, source: int, flat: list[Any]) -> None:
    """Records laid out flat: ``ctx_id, name_id, kind, value, ctx_id, ...`` (the writer's batches)."""
    _insert_flat(
        conn, "INSERT INTO records (run, ctx, name, kind, value, source)", f"({int(run)}, ?, ?, ?, ?, {int(source)})", flat, 4
    )


def _insert_flat(conn: sqlite3.Connection, insert: str, row: str, flat: list[Any], width: int) -> None:
    """``insert VALUES row, row, ...`` for the rows laid out flat in ``flat``, ``width`` values each.

    The drain's bulk inserts (the same rows as ``catalog.insert_records`` and
    ``catalog.insert_contexts`` would write): multi-row statements of a few hundred
    rows each cost one statement step per few hundred rows instead of one per
    row, which roughly halves the cost of a record. The writer's run and source
    are the same for every row, so ``row`` holds them as SQL literals.
    """
    per = _rows_per_statement(conn, width)
    step = per * width
    full = len(flat) // step * step
    if full:
        sql = f"{insert} VALUES {','.join([row] * per)}"
        conn.executemany(sql, (flat[i : i + step] for i in range(0, full, step)))
    if full < len(flat):
        conn.execute(f"{insert} VALUES {','.join([row] * ((len(flat) - full) // width))}", flat[full:])


def _rows_per_statement(conn: sqlite3.Connection, width: int) -> int:
    """Rows per multi-row INSERT: up to 500, within SQLite's limit on bound parameters."""
    try:
        limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)  # Python >= 3.11
    except AttributeError:
        limit = 999  # the smallest default any SQLite has had
    return max(1, min(500, limit // width))


def query_records(
    conn: sqlite3.Connection, names: Sequence[str], runs: Sequence[int] | None = None
) -> list[tuple[int, int, int | None, str, str, int, Any, int]]:
    """``(run, ctx, iteration, loops_json, name, kind, value, source)`` rows for the given names, in log order."""
    params: list[Any] = list(names)
    sql = (
        "SELECT r.run, r.ctx, c.iteration, c.loops, n.name, r.kind, r.value, r.source "
        "FROM records r JOIN names n ON n.id = r.name "
        "LEFT JOIN contexts c ON c.run = r.run AND c.id = r.ctx "
        f"WHERE n.name IN ({', '.join('?' * len(names))}) AND r.source != {SOURCE_PENDING}"
    )
    if runs is not None:
        sql += f" AND r.run IN ({', '.join('?' * len(runs))})"
        params += list(runs)
    return conn.execute(sql + " ORDER BY r.run, r.rowid", params).fetchall()


#: The name under which a replay stores, for each line a hindsight ``print`` printed, where it
#: was printed among the recorded lines (``query.output``).
STDOUT_AT = "@stdout@at"

#: Appended to the key of the context outside every loop (``"[]"``) for what a run logged after
#: its main loop: the lines it printed before and after the loop must not be taken for each other.
AFTER_MAIN_LOOP = "#after"


def context_key(loops: str, after_main_loop: bool) -> str:
    """A context's key for pairing recorded and replayed values: ``loops``, with the context
    outside every loop (``[]``) keyed apart after the main loop."""
    return loops + AFTER_MAIN_LOOP if after_main_loop and loops == "[]" else loops


def split_outside_loops(info: dict[str, Any]) -> Callable[[str | None, str, int | None], bool] | None:
    """A function that says, for the record's values in log order, whether a value logged
    outside every loop (``iteration`` None) was logged after the main loop: those of a name
    beyond the count the writer stored for before it (``info.preloop_counts``), and those of
    loops after the main loop. None for a run recorded without the counts."""
    counts = info.get("preloop_counts")
    if counts is None:
        return None
    seen: dict[str, int] = {}

    def after(loops: str | None, name: str, iteration: int | None) -> bool:
        if iteration is not None:
            return False
        if loops not in (None, "[]"):
            return True  # an hl.loop outside the main loop comes after it (the first one is the main loop)
        n = seen.get(name, 0)
        seen[name] = n + 1
        return n >= counts.get(name, 0)

    return after


def logged_names(conn: sqlite3.Connection, run: int | None = None) -> list[str]:
    """Names with at least one record (of one run, or of any)."""
    if run is None:
        rows = conn.execute(
            f"SELECT name FROM names WHERE id IN (SELECT DISTINCT name FROM records WHERE source != {SOURCE_PENDING}) ORDER BY name"
        )
    else:
        rows = conn.execute(
            f"SELECT name FROM names WHERE id IN (SELECT DISTINCT name FROM records WHERE run=? AND source != {SOURCE_PENDING}) "
            "ORDER BY name", (run,)
        )
    return [r[0] for r in rows]


def discard_pending(conn: sqlite3.Connection, runs: Sequence[int]) -> int:
    """Delete the values replays of these runs stored but never made visible (they were killed)."""
    if not runs:
        return 0
    return conn.execute(
        f"DELETE FROM records WHERE source={SOURCE_PENDING} AND run IN ({', '.join('?' * len(runs))})", list(runs)
    ).rowcount


def count_records(conn: sqlite3.Connection, run: int) -> int:
    """The values logged in a run (recorded and replayed; not where replayed lines were printed)."""
    total = int(conn.execute(f"SELECT COUNT(*) FROM records WHERE run=? AND source != {SOURCE_PENDING}", (run,)).fetchone()[0])
    places = conn.execute(
        f"SELECT COUNT(*) FROM records r JOIN names n ON n.id=r.name WHERE n.name=? AND r.run=? AND r.source != {SOURCE_PENDING}",
        (STDOUT_AT, run),
    ).fetchone()[0]
    return total - int(places)


# ----------------------------------------------------------------- checkpoints


def insert_checkpoint(
    conn: sqlite3.Connection, run: int, iteration: int, block: int, loop: str | None, manifest: str, nbytes: int
) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?, ?, ?)",
        (run, iteration, block, loop, manifest, nbytes, time.time()),
    )


def list_checkpoints(conn: sqlite3.Connection, run: int) -> list[tuple[int, int, str | None, str, int]]:
    """``(iteration, block, loop, manifest, nbytes)`` of a run, in order."""
    return conn.execute(
        "SELECT iteration, block, loop, manifest, nbytes FROM checkpoints WHERE run=? ORDER BY iteration, block", (run,)
    ).fetchall()


def delete_checkpoints(conn: sqlite3.Connection, runs: Sequence[int]) -> int:
    cur = conn.execute(f"DELETE FROM checkpoints WHERE run IN ({', '.join('?' * len(runs))})", list(runs))
    return cur.rowcount


def all_manifests(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute("SELECT manifest FROM checkpoints UNION SELECT manifest FROM code_snapshots").fetchall()
    return [r[0] for r in rows]


# ----------------------------------------------------------------- code snapshots


def insert_code_snapshot(conn: sqlite3.Connection, version: str, manifest: str) -> None:
    conn.execute("INSERT OR IGNORE INTO code_snapshots VALUES (?, ?)", (version, manifest))


def code_snapshot_manifest(conn: sqlite3.Connection, version: str) -> str | None:
    row = conn.execute("SELECT manifest FROM code_snapshots WHERE version=?", (version,)).fetchone()
    return row[0] if row else None
