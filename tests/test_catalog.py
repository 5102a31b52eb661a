"""The SQLite catalog and the background writer: schema, WAL, records reaching the
catalog while the run goes on, and what happens when the catalog cannot be written
(locked for a while, disk full, still unwritable at exit)."""

from __future__ import annotations

import json
import os
import sqlite3
import time
import warnings
from pathlib import Path

import pytest

from conftest import Lines, Project, stop, wait_for
from hindlog import catalog
from hindlog.errors import SchemaError
from hindlog.recorder import COMMIT_GAP


def test_catalog_schema_and_wal_mode(project: Project) -> None:
    project.run("import hindlog as hl\nhl.log('x', 1)\n")
    conn = project.db()
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == catalog.SCHEMA_VERSION
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"meta", "runs", "args", "names", "contexts", "records", "checkpoints", "code_snapshots"} <= tables
        assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(catalog.SCHEMA_VERSION)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    # The store keeps itself out of git.
    assert (project.store_path / ".gitignore").read_text().strip() == "*"


def test_a_catalog_from_another_schema_version_is_refused(tmp_path) -> None:
    path = tmp_path / "catalog.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={catalog.SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaError) as e:
        catalog.connect(path)
    assert str(catalog.SCHEMA_VERSION + 1) in str(e.value) and "schema version" in str(e.value)


def test_run_row_is_written_at_start(project: Project) -> None:
    proc = project.start(
        """
        import time
        import hindlog as hl
        print(hl.init(name="live"), flush=True)
        time.sleep(60)
        """
    )
    try:
        run_id = Lines(proc).next()
        runs = project.runs()
        assert runs["run_id"].tolist() == [run_id]
        assert runs["status"].tolist() == ["running"] and runs["name"].tolist() == ["live"]
    finally:
        stop(proc)
    # The process is gone (killed by us) without finishing: shown as killed.
    assert project.runs()["status"].tolist() == ["killed"]


def test_records_are_visible_while_the_run_goes_on(project: Project) -> None:
    proc = project.start(
        """
        import time
        import hindlog as hl
        hl.log("marker", 1)
        print("logged", flush=True)
        time.sleep(60)                     # no more hindlog calls: the writer's timer must commit
        """
    )
    try:
        Lines(proc).next()
        t0 = time.monotonic()
        wait_for(lambda: project.catalog_path.exists() and project.values("marker") == [1], timeout=10, interval=0.01)
        delay = time.monotonic() - t0
        # The script sleeps 60 s after logging: only the writer's timer (0.05 s in tests) can
        # commit it (seconds, not a minute, even on a loaded machine).
        assert delay < 3.0, f"the record took {delay:.2f} s to reach the catalog"
        assert project.runs()["status"].tolist() == ["running"]
    finally:
        stop(proc)


def test_end_of_main_loop_iteration_commits(project: Project) -> None:
    # With a 30 s timer only the end of a main-loop iteration can have committed the record.
    proc = project.start(
        """
        import time
        import hindlog as hl
        for i in hl.loop("epoch", range(2)):
            hl.log("x", i)
            if i == 1:
                print("in second iteration", flush=True)
                time.sleep(60)
        """,
        env={"HINDLOG_FLUSH_INTERVAL": "30"},
    )
    try:
        Lines(proc).next()
        t0 = time.monotonic()
        wait_for(lambda: 0 in project.values("x"), timeout=10, interval=0.01)
        assert time.monotonic() - t0 < 3.0
    finally:
        stop(proc)


def test_fast_iterations_share_their_commits(project: Project) -> None:
    # A commit costs the training thread more than the writer's CPU time: the ends of a fast
    # loop's iterations ask for one at most every COMMIT_GAP seconds. With a 30 s timer, only
    # iteration ends commit here.
    result = project.run(
        """
        import time
        import hindlog as hl
        t0 = time.perf_counter()
        for i in hl.loop("epoch", range(400)):
            hl.log("x", i)
            time.sleep(0.002)
        print(time.perf_counter() - t0)
        """,
        # (No checkpoints: their rows, which the persister commits, are not iteration ends'.)
        env={"HINDLOG_FLUSH_INTERVAL": "30", "HINDLOG_EPSILON": "0"},
    )
    elapsed = float(result.stdout.strip())
    conn = project.db()
    try:
        info = json.loads(conn.execute("SELECT info FROM runs").fetchone()[0])
    finally:
        conn.close()
    assert project.values("x") == list(range(400))
    # One commit per COMMIT_GAP, give or take the first and the start; every 50 ms would be 16+.
    assert 1 <= info["writer_commits"] <= elapsed / COMMIT_GAP + 3, (info["writer_commits"], elapsed)


def test_a_bad_flush_interval_warns_once_and_records_with_the_default(project: Project) -> None:
    result = project.run(
        """
        import hindlog as hl
        for i in hl.loop("epoch", range(3)):
            hl.log("x", i)
        """,
        env={"HINDLOG_FLUSH_INTERVAL": "soon"},
    )
    assert result.stderr.count("HINDLOG_FLUSH_INTERVAL='soon' is not a number") == 1, result.stderr
    assert "committing every 0.25 s instead" in result.stderr
    assert project.values("x") == [0, 1, 2]


class CatalogLock:
    """Another process's write lock on the catalog, held by a connection of this test's own (SQLite
    locks per connection), until ``release``."""

    def __init__(self, path: Path) -> None:
        self.conn: sqlite3.Connection | None = sqlite3.connect(str(path), timeout=30, isolation_level=None)
        self.conn.execute("BEGIN EXCLUSIVE")
        self.conn.execute("INSERT INTO meta VALUES ('lock-test', 'x')")

    def release(self) -> None:
        if self.conn is not None:
            self.conn.execute("ROLLBACK")
            self.conn.close()
            self.conn = None


def test_catalog_locked_for_a_while_loses_nothing_and_never_blocks_training(project: Project) -> None:
    proc = project.start(
        """
        import json, sys, time
        import hindlog as hl
        hl.log("ready", 1)
        hl.runs()                          # returns once the run's first records are committed
        print("ready", flush=True)
        worst = 0.0
        for i in hl.loop("step", range(300)):
            t0 = time.perf_counter()
            hl.log("i", i)
            hl.log("arr", [i, i])
            worst = max(worst, time.perf_counter() - t0)
            time.sleep(0.01)
        print(json.dumps({"worst": worst}), flush=True)
        """
    )
    lines = Lines(proc)
    try:
        assert lines.next() == "ready"
        locker = CatalogLock(project.catalog_path)
        time.sleep(1.5)
        locker.release()
        result = json.loads(lines.next(timeout=60))
        _, err = lines.rest()
    finally:
        stop(proc)
    assert proc.returncode == 0, err
    # Blocked by the lock, a call would wait for most of its 1.5 s.
    assert result["worst"] < 0.3, f"a hl.log call was blocked for {result['worst']:.3f} s"
    assert project.values("i") == list(range(300))
    assert project.values("arr") == [[i, i] for i in range(300)]
    assert project.runs()["status"].tolist() == ["finished"]
    assert "hindlog" not in err


def test_a_catalog_locked_when_the_run_ends_keeps_its_exit_short_and_its_records_in_a_spill_file(project: Project) -> None:
    """Another process holds the catalog's write lock from mid-run past the run's end: the
    process exits within seconds (not after SQLite's minute-long wait), its last records and
    its end go to a spill file, and the next run that records writes them all."""
    proc = project.start(
        """
        import time
        import hindlog as hl
        hl.log("ready", 1)
        hl.runs()                          # returns once the run's first records are committed
        print("ready", flush=True)
        for i in hl.loop("step", range(40)):
            hl.log("i", i)
            time.sleep(0.02)
        print("done", flush=True)
        """
    )
    lines = Lines(proc)
    locker = None
    try:
        assert lines.next() == "ready"
        locker = CatalogLock(project.catalog_path)
        assert lines.next(timeout=60) == "done"
        t0 = time.monotonic()
        proc.wait(timeout=60)
        exit_seconds = time.monotonic() - t0
        _, err = lines.rest()
    finally:
        if locker is not None:
            locker.release()
        stop(proc)
    assert proc.returncode == 0, err
    assert exit_seconds < 10, f"the run's end waited {exit_seconds:.1f} s for the locked catalog"
    assert "could not write the last" in err and "kept in" in err, err
    assert len(list((project.store_path / "spill").glob("*.pkl"))) == 1
    project.run("import hindlog as hl\nhl.log('next', 1)\n", script="other.py")
    assert project.values("i") == list(range(40))
    runs = project.runs()
    assert runs["status"].tolist() == ["finished", "finished"], runs


def test_a_run_that_starts_while_another_process_holds_the_catalog_locked_neither_waits_nor_loses_its_records(project: Project) -> None:
    """The catalog is locked when the script's first hindlog call starts the run: training goes
    on at once, and the run is registered, with everything it logged, once the lock is gone."""
    project.run("import hindlog as hl\nhl.log('first', 1)\n", script="first.py")  # the catalog exists
    locker = CatalogLock(project.catalog_path)
    proc = project.start(
        """
        import json, time
        import hindlog as hl
        t0 = time.perf_counter()
        lr = hl.arg("lr", 0.1)
        started = time.perf_counter() - t0
        for i in hl.loop("step", range(100)):
            hl.log("i", i)
            time.sleep(0.02)
        print(json.dumps({"started": started}), flush=True)
        """
    )
    lines = Lines(proc)
    try:
        result = json.loads(lines.next(timeout=60))
        time.sleep(0.5)
        locker.release()
        _, err = lines.rest()
    finally:
        stop(proc)
    assert proc.returncode == 0, err
    assert result["started"] < 5, f"the run's start waited {result['started']:.1f} s for the locked catalog"
    assert project.values("i") == list(range(100))
    runs = project.runs()
    assert runs["status"].tolist() == ["finished", "finished"] and "catalog_replaced" not in str(runs["flags"].tolist())
    assert project.run_info("latest")["args"] == {"lr": 0.1}


def test_a_run_the_catalog_was_locked_for_all_its_life_is_registered_from_its_spill_file(project: Project) -> None:
    """Locked from before the run's start until after its end: the run never reaches the
    catalog, its spill file carries its row with its records, and the next run that records
    writes them all."""
    project.run("import hindlog as hl\nhl.log('first', 1)\n", script="first.py")
    locker = CatalogLock(project.catalog_path)
    try:
        proc = project.run("""
            import hindlog as hl
            lr = hl.arg("lr", 0.1)
            for i in hl.loop("step", range(20)):
                hl.log("i", i)
            """, timeout=120)
    finally:
        locker.release()
    assert "kept in" in proc.stderr, proc.stderr
    assert len(project.runs()) == 1  # not registered yet
    listed = project.cli("runs")
    assert "wait in" in listed.stderr and "the next run that records in this project writes them" in listed.stderr, listed.stderr
    project.run("import hindlog as hl\nhl.log('next', 1)\n", script="other.py")
    runs = project.runs()
    assert len(runs) == 3 and runs["status"].tolist() == ["finished"] * 3, runs
    train = runs[runs["script"] == "train.py"]["run_id"].iloc[0]
    assert project.values("i", train) == list(range(20))
    assert project.run_info(train)["args"] == {"lr": 0.1}


# The catalog is made unwritable from inside the script with RLIMIT_FSIZE: every write
# past LIMIT bytes of a file fails with EFBIG (a "disk full" for SQLite), even for root,
# while files smaller than LIMIT (a spill file) can still be written. A second connection
# is kept open so that SQLite never checkpoints the WAL away (writes then go past LIMIT).
_UNWRITABLE_PRELUDE = """
import os, resource, sqlite3, sys, time, warnings
import hindlog as hl
from hindlog import record
warnings.simplefilter("always")            # count hindlog's own warn-once, not Python's dedup
LIMIT = 128 * 1024
hl.arg("lr", 0.1)
hl.log("before", 1.0)
rec = record._recorder
while hl.runs()["code_version"].iloc[-1] is None:   # the code snapshot is done
    time.sleep(0.02)
wal = str(rec.store.catalog_path) + "-wal"
keep = sqlite3.connect(str(rec.store.catalog_path))
keep.execute("SELECT count(*) FROM runs").fetchall()
i = 0
while os.path.getsize(wal) < 2 * LIMIT:    # grow the WAL past the limit
    hl.log("pad", i); i += 1
    if i % 50 == 0:
        rec.writer.flush()
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, hard))
"""


def test_disk_full_warns_once_keeps_records_and_writes_them_later(project: Project) -> None:
    proc = project.run(
        _UNWRITABLE_PRELUDE
        + """
worst = 0.0
for k in hl.loop("step", range(100)):
    t0 = time.perf_counter()
    hl.log("during", k)
    worst = max(worst, time.perf_counter() - t0)
    time.sleep(0.01)                       # ~1 s of failed commits
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
hl.log("after", 2.0)
print(worst)
""",
        env={"HINDLOG_FLUSH_INTERVAL": "0.05"},
    )
    warnings = [line for line in proc.stderr.splitlines() if "hindlog: cannot write to the catalog" in line]
    assert len(warnings) == 1, proc.stderr
    assert float(proc.stdout) < 0.3
    assert project.values("during") == list(range(100))
    assert project.values("after") == [2.0] and project.values("before") == [1.0]
    runs = project.runs()
    assert runs["status"].tolist() == ["finished"]
    assert "catalog_write_failed" in runs["flags"][0]
    assert not list(project.store_path.glob("spill/*"))
    conn = project.db()
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


_STILL_UNWRITABLE_AT_EXIT = (
    _UNWRITABLE_PRELUDE
    + """
for k in hl.loop("step", range(500)):
    hl.log("during", k)
time.sleep(0.3)                            # some failed commits; the script then exits normally
print(rec.run_id)
"""
)


def test_records_still_unwritable_at_exit_go_to_a_spill_file_and_are_loaded_later(project: Project) -> None:
    first = project.run(_STILL_UNWRITABLE_AT_EXIT, env={"HINDLOG_FLUSH_INTERVAL": "0.05"})
    run_id = first.stdout.strip()
    assert first.stderr.count("hindlog: cannot write to the catalog") == 1, first.stderr
    spills = list((project.store_path / "spill").glob("*.pkl"))
    assert len(spills) == 1 and spills[0].name.startswith(run_id)
    assert project.values("during") == []  # not in the catalog yet
    # The next process that records in this store loads the spilled records.
    project.run("import hindlog as hl\nhl.log('next', 1)\n", script="other.py")
    assert project.values("during", run_id) == list(range(500))
    assert not list((project.store_path / "spill").glob("*.pkl"))
    info = project.run_info(run_id)
    assert "spilled" in info["flags"]
    assert info["status"] != "running"
    df = project.df("during", runs=run_id)
    assert df["step"].tolist() == list(range(500))  # loop contexts were spilled too


def test_records_that_can_be_neither_written_nor_spilled_at_exit_are_said_to_be_lost(project: Project) -> None:
    """The disk is full for the catalog and for a spill file alike when the run ends: nothing
    can keep its last records, and the warning says so (not only that it keeps retrying); no
    empty spill file is left."""
    proc = project.run(_UNWRITABLE_PRELUDE + """
resource.setrlimit(resource.RLIMIT_FSIZE, (1, hard))   # no spill file fits either
for k in hl.loop("step", range(50)):
    hl.log("during", k)
time.sleep(0.3)
""", env={"HINDLOG_FLUSH_INTERVAL": "0.05"})
    assert "hindlog: cannot write to the catalog" in proc.stderr, proc.stderr
    assert "nor spill it" in proc.stderr and "it is lost" in proc.stderr, proc.stderr
    assert not [p for p in (project.store_path / "spill").glob("*") if p.stat().st_size == 0]


def test_gc_keeps_the_objects_of_checkpoints_whose_rows_wait_in_a_spill_file(project: Project) -> None:
    from hindlog.gc import gc

    # The catalog is unwritable from the second epoch to the end: the checkpoints' rows are spilled at exit.
    first = project.run(
        _UNWRITABLE_PRELUDE.replace("hl.log(\"before\", 1.0)", "hl.log(\"before\", 1.0)\nimport numpy as np\nw = np.zeros(10_000)\nhl.checkpoints(w=w)")
        + """
for epoch in hl.loop("epoch", range(4)):
    for b in hl.loop("batch", range(3)):
        w += b
    hl.log("w", float(w.sum()))
    time.sleep(0.1)
print(rec.run_id)
""",
        env={"HINDLOG_FLUSH_INTERVAL": "0.05", "HINDLOG_EPSILON": "0.9"},
    )
    run_id = first.stdout.strip()
    (spill,) = (project.store_path / "spill").glob("*.pkl")
    before = set(project.store().objects.names())
    assert before
    report = gc(store=project.store(), grace=0)
    assert report.removed_objects == 0 and set(project.store().objects.names()) == before
    # The next process loads the spill: its checkpoints are listed and read back intact.
    project.run("import hindlog as hl\nhl.log('next', 1)\n", script="other.py")
    assert not spill.exists()
    conn = project.db()
    try:
        iterations = sorted({r[0] for r in conn.execute(
            "SELECT c.iteration FROM checkpoints c JOIN runs r ON r.id = c.run WHERE r.run_id=?", (run_id,))})
    finally:
        conn.close()
    assert iterations
    restored = project.run(
        f"import json, numpy as np, hindlog as hl\nout = {{}}\nfor i in {iterations!r}:\n"
        f"    w = np.zeros(10_000)\n    hl.restore({run_id!r}, iteration=i, w=w)\n    out[i] = float(w.sum())\n"
        "print(json.dumps(out))\n", script="check.py")
    logged = project.values("w", run_id)
    assert {int(k): v for k, v in json.loads(restored.stdout.strip().splitlines()[-1]).items()} == {i: logged[i] for i in iterations}


def test_spilled_records_survive_a_commit_that_fails_after_loading_them(project: Project) -> None:
    # Every commit fails (a trigger aborts its last statement), so the writer spills its
    # records to a file; the commits that then load the file fail too: the file must stay
    # until one commits, and every record reach the catalog.
    proc = project.run(
        """
import sqlite3, time
import hindlog as hl
from hindlog import config, record
hl.log("before", 1.0)
rec = record._recorder
rec.writer.flush()
keep = sqlite3.connect(str(rec.store.catalog_path))
keep.execute("CREATE TRIGGER fail_commit BEFORE UPDATE OF heartbeat ON runs BEGIN SELECT RAISE(ABORT, 'commit failed'); END")
keep.commit()
for k in range(config.SPILL_THRESHOLD + 300):   # more than the writer holds in memory: it spills
    hl.log("during", k)
deadline = time.time() + 60
while not rec.writer._spill_files and time.time() < deadline:
    time.sleep(0.02)
spilled = list(rec.writer._spill_files)
time.sleep(0.5)                                  # commits that load the spill file, and fail
on_disk = bool(spilled) and all(p.exists() for p in spilled)
keep.execute("DROP TRIGGER fail_commit")
keep.commit()
hl.log("after", 2.0)
print(len(spilled), on_disk)
""",
        env={"HINDLOG_FLUSH_INTERVAL": "0.05"},
    )
    assert proc.stdout.split() == ["1", "True"], proc.stdout + proc.stderr
    from hindlog import config

    assert project.values("during") == list(range(config.SPILL_THRESHOLD + 300))
    assert project.values("after") == [2.0] and project.values("before") == [1.0]
    assert not list(project.store_path.glob("spill/*.pkl"))


def test_a_spill_file_another_process_loaded_first_does_not_stop_the_writer(project: Project) -> None:
    # The writer spills while its commits fail; another process's recovery (one that cannot see
    # this process's pid, in another container sharing the store) loads the spill file into
    # the catalog and deletes it. The writer's next commits must go on without that file.
    proc = project.run(
        """
import sqlite3, time
import hindlog as hl
from hindlog import catalog, config, record
from hindlog.writer import load_spill_file
hl.log("before", 1.0)
rec = record._recorder
rec.writer.flush()
keep = sqlite3.connect(str(rec.store.catalog_path), isolation_level=None)
keep.execute("CREATE TRIGGER fail_commit BEFORE UPDATE OF heartbeat ON runs BEGIN SELECT RAISE(ABORT, 'commit failed'); END")
for k in range(config.SPILL_THRESHOLD + 300):
    hl.log("during", k)
deadline = time.time() + 60
while not rec.writer._spill_files and time.time() < deadline:
    time.sleep(0.02)
(path,) = rec.writer._spill_files
with catalog.transaction(keep):                  # the other process's recovery
    load_spill_file(keep, path)
path.unlink()
time.sleep(0.3)                                  # the writer's commits find the file gone, and still fail
keep.execute("DROP TRIGGER fail_commit")
hl.log("after", 2.0)
rec.writer.flush()
print(rec.writer._thread.is_alive())
""",
        env={"HINDLOG_FLUSH_INTERVAL": "0.05"},
    )
    assert proc.stdout.split() == ["True"], proc.stdout + proc.stderr
    from hindlog import config

    assert project.values("during") == list(range(config.SPILL_THRESHOLD + 300))
    assert project.values("after") == [2.0] and project.values("before") == [1.0]
    assert project.runs()["status"].tolist() == ["finished"]


def test_a_damaged_catalog_is_named_with_what_to_do_and_the_next_run_is_recorded(project: Project) -> None:
    first = project.run(
        "import numpy as np\nimport hindlog as hl\nw = np.zeros(3)\nhl.checkpoints(w=w)\n"
        "for e in hl.loop('epoch', range(3)):\n    w += 1\n    hl.log('x', e)\nprint(hl.run_id())\n",
        env={"HINDLOG_EPSILON": "0.9"},
    ).stdout.strip()
    objects_before = sorted(project.store().objects.names())
    assert objects_before
    catalog_path = project.store_path / "catalog.db"
    with open(catalog_path, "r+b") as f:  # a disk that lost the second half of the file
        f.truncate(catalog_path.stat().st_size // 2)
    damaged = catalog_path.read_bytes()
    for command in (["runs"], ["logs", "x"], ["show"]):
        proc = project.cli(*command, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert f"the catalog {catalog_path} is damaged" in proc.stderr and ".recover" in proc.stderr, proc.stderr
        assert "The next run that records moves it aside" in proc.stderr, proc.stderr

    # Recording moves it aside, every byte kept, and records this run into a new catalog.
    proc = project.run("import hindlog as hl\ntotal = sum(hl.log('y', i) for i in range(5))\nprint(total)\n")
    assert proc.stdout.strip() == "10"
    [aside] = project.store_path.glob("catalog.damaged-*.db")
    assert aside.read_bytes() == damaged
    assert f"the catalog {catalog_path} is damaged" in proc.stderr and f"moved it to {aside}" in proc.stderr, proc.stderr
    assert "this run records into a new catalog" in proc.stderr and "nothing is being logged" not in proc.stderr
    assert project.values("y") == [0, 1, 2, 3, 4]

    listed = project.cli("runs")
    assert f"{aside} is a damaged catalog set aside" in listed.stderr and ".recover" in listed.stderr, listed.stderr
    assert "Warning" not in listed.stderr, listed.stderr  # said once, plainly
    logs = project.cli("logs", "y")
    assert f"note: {aside} is a damaged catalog set aside" in logs.stderr and "Warning" not in logs.stderr, logs.stderr
    shown = project.cli("show")
    assert f"note: {aside} is a damaged catalog set aside" in shown.stderr and "status       finished" in shown.stdout
    # A run recorded before is not found, and the note says where it is.
    missing = project.cli("show", first, check=False)
    assert missing.returncode == 2 and f"note: {aside} is a damaged catalog set aside" in missing.stderr, missing.stderr
    # In Python, once per process: the runs before are not in these results.
    with pytest.warns(RuntimeWarning, match="is a damaged catalog set aside"):
        assert len(project.runs()) == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        project.df("y")
    assert not [w for w in caught if "damaged catalog" in str(w.message)], [str(w.message) for w in caught]
    # gc cannot tell which objects the damaged catalog's checkpoints use: it removes none.
    objects_before_gc = sorted(project.store().objects.names())
    assert set(objects_before) <= set(objects_before_gc)
    proc = project.cli("gc", check=False)
    assert proc.returncode == 2 and f"{aside} is a damaged catalog set aside" in proc.stderr, proc.stderr
    assert sorted(project.store().objects.names()) == objects_before_gc
    # Once the user has recovered what they need and deleted it, gc works again.
    aside.unlink()
    project.cli("gc")
    assert "damaged" not in project.cli("runs").stderr


def test_a_run_recording_when_its_catalog_is_set_aside_goes_on_in_the_new_one_under_its_own_name(project: Project) -> None:
    """Another process sets the catalog aside (as it does a damaged one) and starts a new one
    while a run records: the run's later records go to the new catalog under a row of its own,
    never under the key another run got there, and its loop contexts are written again."""
    go = project.root / "go"
    proc = project.start(
        f"""
        import os, time
        import hindlog as hl
        hl.log("before", 1)
        for i in hl.loop("step", range(10)):
            if i == 5:
                hl.runs()                          # returns once the records so far are committed
                print(hl.run_id(), flush=True)
                while not os.path.exists({str(go)!r}):
                    time.sleep(0.02)
            hl.log("a", i)
        hl.log("after", 2)
        """
    )
    lines = Lines(proc)
    try:
        recording = lines.next()
        catalog_path = project.catalog_path
        aside = catalog_path.with_name(f"{catalog.DAMAGED_PREFIX}test.db")
        for suffix in ("-wal", "-shm", ""):  # as Store.set_aside_damaged_catalog renames them
            if Path(f"{catalog_path}{suffix}").exists():
                os.replace(f"{catalog_path}{suffix}", f"{aside}{suffix}")
        other = project.run("import hindlog as hl\nfor k in range(3):\n    hl.log('b', k)\nprint(hl.run_id())\n",
                            script="other.py").stdout.strip()
        go.touch()
        _, err = lines.rest()
    finally:
        stop(proc)
    assert proc.returncode == 0, err
    assert f"the catalog {catalog_path} was replaced while run {recording} recorded" in err, err
    assert f"what it recorded before is in the catalog set aside, {aside}" in err, err
    with pytest.warns(RuntimeWarning, match="is a damaged catalog set aside"):
        runs = project.runs().set_index("run_id")
    assert set(runs.index) == {recording, other}
    assert runs.loc[other, "status"] == "finished" and "catalog_replaced" not in runs.loc[other, "flags"]
    assert runs.loc[recording, "status"] == "finished" and "catalog_replaced" in runs.loc[recording, "flags"]
    assert runs.loc[recording, "script"] == "train.py"
    assert project.values("b") == [0, 1, 2] and project.values("a", run=other) == []
    df = project.df("a", "after", runs=[recording])
    assert df.dropna(subset=["a"])[["step", "a"]].astype(int).values.tolist() == [[i, i] for i in range(5, 10)]
    assert df["after"].dropna().tolist() == [2]  # its context (outside every loop) was written before
    # What it recorded before stays in the catalog set aside.
    old = sqlite3.connect(str(aside))
    try:
        assert old.execute("SELECT count(*) FROM records r JOIN names n ON n.id=r.name WHERE n.name='a'").fetchone()[0] >= 5
    finally:
        old.close()


def test_runs_that_find_the_catalog_damaged_at_once_set_it_aside_once_and_are_all_recorded(project: Project) -> None:
    project.run("import hindlog as hl\nhl.log('x', 1)\n")
    catalog_path = project.store_path / "catalog.db"
    catalog_path.write_bytes(b"this is not a database " * 200)
    script = "import sys\nimport hindlog as hl\nhl.log('who', int(sys.argv[1]))\n"
    project.write("train.py", script)
    procs = [project.start(args=[str(k)]) for k in range(3)]
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    assert len(list(project.store_path.glob("catalog.damaged-*.db"))) == 1
    assert sorted(project.values("who")) == [0, 1, 2]


def test_a_run_that_finished_while_the_catalog_was_unwritable_is_shown_finished(project: Project) -> None:
    run_id = project.run(_STILL_UNWRITABLE_AT_EXIT, env={"HINDLOG_FLUSH_INTERVAL": "0.05"}).stdout.strip()
    project.run("import hindlog as hl\nhl.log('next', 1)\n", script="other.py")
    info = project.run_info(run_id)
    assert info["status"] == "finished" and info["ended"] is not None
