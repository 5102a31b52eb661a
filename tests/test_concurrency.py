"""Several runs at once in one project: 4 processes each logging 10,000 records."""

from __future__ import annotations

import calendar
import sqlite3
import subprocess
import sys
import time

from conftest import Lines, Project, stop

WORKERS = 4
PER_WORKER = 10_000

SCRIPT = """
import os, sys, time
import hindlog as hl
wid = int(sys.argv[1])
go = os.path.join(os.path.dirname(os.path.abspath(__file__)), "go")
print("waiting", flush=True)
while not os.path.exists(go):                  # start all runs (and their git snapshots) together
    time.sleep(0.002)
hl.arg("worker", wid)
for step in hl.loop("step", range(100)):
    for j in hl.loop("j", range(100)):
        hl.log("v", wid * 1_000_000 + step * 100 + j)
print(hl.run_id(), flush=True)
"""


def id_time(run_id: str) -> float:
    """The start time encoded in a run id (YYYYmmdd-HHMMSSmmm-xxxxxx)."""
    date, clock, _ = run_id.split("-")
    t = time.strptime(date + clock[:6], "%Y%m%d%H%M%S")
    return calendar.timegm(t) + int(clock[6:9]) / 1000


def test_four_processes_each_logging_10000_records(project: Project) -> None:
    project.write("train.py", SCRIPT)
    project.write(".gitignore", "*.ignored\nignored_dir/\ngo\n")
    status_before = project.git("status", "--porcelain")
    procs = [project.start(args=[str(w)]) for w in range(WORKERS)]
    readers = [Lines(p) for p in procs]
    try:
        for r in readers:
            assert r.next() == "waiting"
        (project.root / "go").write_text("")
        ids = [r.next(timeout=90) for r in readers]
        errs = [r.rest(timeout=60)[1] for r in readers]
    finally:
        for p in procs:
            stop(p)
    assert [p.returncode for p in procs] == [0] * WORKERS, errs
    for err in errs:
        assert "lock" not in err.lower() and "hindlog" not in err, err

    assert len(set(ids)) == WORKERS
    runs = project.runs().set_index("run_id")
    assert sorted(runs.index) == sorted(ids)
    assert (runs["status"] == "finished").all()
    assert all(list(f) == [] for f in runs["flags"])
    # Time-sortable: sorting by id sorts by start time (ids carry milliseconds).
    started = [runs.loc[i, "started"].timestamp() for i in sorted(ids)]
    assert all(b >= a - 0.005 for a, b in zip(started, started[1:]))
    for i in ids:
        assert abs(id_time(i) - runs.loc[i, "started"].timestamp()) < 1.0

    for w, run_id in enumerate(ids):
        values = project.values("v", run_id)
        assert values == [w * 1_000_000 + k for k in range(PER_WORKER)], f"worker {w} lost records"
        assert runs.loc[run_id, "worker"] == w
    df = project.df("v")
    assert len(df) == WORKERS * PER_WORKER
    assert df.groupby("run_id").size().tolist() == [PER_WORKER] * WORKERS

    # Every run has its own git snapshot, made without lock errors, and the user's repo is untouched.
    refs = project.git("for-each-ref", "--format=%(refname)", "refs/hindlog/runs/").split()
    assert sorted(refs) == sorted(f"refs/hindlog/runs/{i}" for i in ids)
    for i in ids:
        assert project.git("rev-parse", f"refs/hindlog/runs/{i}").strip() == runs.loc[i, "code_version"]
    assert project.git("status", "--porcelain") == status_before
    assert not list((project.root / ".git").glob("**/*.lock"))


OPEN_AT = """
import sys, time
from pathlib import Path
from hindlog import catalog
start = float(sys.argv[2])
while time.time() < start:  # every process opens the new catalog at the same instant
    pass
conn = catalog.connect(Path(sys.argv[1]))
catalog.insert_run(conn, {"run_id": sys.argv[3], "status": "running", "started": time.time()})
conn.close()
"""


def test_processes_opening_a_new_catalog_at_the_same_instant_all_succeed(tmp_path) -> None:
    # Switching a new database to WAL fails at once ("database is locked") when another
    # process opens it at that moment; every process must still get in.
    for attempt in range(5):
        db = tmp_path / f"store-{attempt}" / "catalog.db"
        start = time.time() + 1.0
        procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT, str(db), str(start), f"run-{k}"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(6)]
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 6
