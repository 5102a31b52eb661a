"""``hindlog rm``: delete runs with what they stored; gc then frees their checkpoints' objects.
Real recordings in a real git repository; the catalog is read with plain SQLite."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hindlog.errors import HindlogError
from hindlog.gc import gc
from hindlog.remove import remove_runs

from ckpt_helpers import CkProject, read_all_checkpoints, stop, wait_for
from test_gc import numpy_rec, two_runs  # noqa: F401 (fixtures: a shared NumPy recording, and a copy with a second run)


def rows(proj: CkProject, table: str, run_id: str) -> int:
    return proj.query(f"SELECT COUNT(*) FROM {table} t JOIN runs r ON r.id=t.run WHERE r.run_id=?", (run_id,))[0][0]


def snapshot_ref(proj: CkProject, run_id: str) -> str:
    return subprocess.run(["git", "for-each-ref", f"refs/hindlog/runs/{run_id}"], cwd=proj.root, capture_output=True,
                          text=True, env=proj.env()).stdout.strip()


def test_rm_deletes_a_run_with_what_it_stored_and_gc_frees_its_objects(two_runs: tuple[CkProject, str, str]) -> None:
    proj, first, second = two_runs
    assert rows(proj, "records", first) and rows(proj, "checkpoints", first) and rows(proj, "contexts", first)
    (proj.store().path / "outputs" / first).mkdir(parents=True)  # what a replay of it kept
    assert snapshot_ref(proj, first)
    planned = proj.cli("rm", first, "--dry-run")
    assert f"would delete run {first}" in planned.stdout and proj.run_ids() == [first, second], planned.stdout
    done = proj.cli("rm", first, "--yes")
    assert f"deleted run {first}" in done.stdout and "hindlog gc" in done.stdout, done.stdout
    assert proj.run_ids() == [second]
    for table in ("records", "contexts", "args", "checkpoints"):
        assert proj.query(f"SELECT COUNT(*) FROM {table} WHERE run NOT IN (SELECT id FROM runs)")[0][0] == 0, table
    assert rows(proj, "records", second) and rows(proj, "checkpoints", second)
    assert not (proj.store().path / "outputs" / first).exists()
    assert not snapshot_ref(proj, first)
    # Its checkpoints' objects are no longer referenced; the other run's still are, and read back.
    assert gc(store=proj.store(), grace=0).removed_objects > 0
    assert read_all_checkpoints(proj, second) == len(proj.checkpoints(second)) > 0


def test_rm_refuses_a_run_that_records_or_replays_and_asks_before_deleting(two_runs: tuple[CkProject, str, str]) -> None:
    proj, first, second = two_runs
    lock = proj.store().lock(f"replay-{second}")
    assert lock.acquire()
    try:
        with pytest.raises(HindlogError, match=f"run {second} is being replayed now"):
            remove_runs([first, second], store=proj.store())
    finally:
        lock.release()
    assert proj.run_ids() == [first, second]  # nothing deleted, not even the run that was free
    # Without --yes, and nobody at a terminal to answer: nothing is deleted.
    asked = proj.cli("rm", first, check=False)
    assert asked.returncode != 0 and "--yes" in asked.stderr and proj.run_ids() == [first, second], asked.stderr
    unknown = proj.cli("rm", "no-such-run", "--yes", check=False)
    assert unknown.returncode != 0 and "no-such-run" in unknown.stderr and "Traceback" not in unknown.stderr
    running = proj.start("train.py", env={"HINDLOG_SET_epochs": "400"})
    try:
        wait_for(lambda: len(proj.run_ids()) == 3, proc=running)
        live = proj.run_ids()[-1]
        with pytest.raises(HindlogError, match=f"run {live} is still recording"):
            remove_runs(live, store=proj.store())
    finally:
        stop(running)


def test_rm_failed_deletes_the_runs_that_failed_only(two_runs: tuple[CkProject, str, str]) -> None:
    proj, first, second = two_runs
    proj.run("train.py", env={"HINDLOG_SET_epochs": "many"}, check=False)  # fails in hl.arg
    failed = proj.run_ids()[-1]
    assert proj.run_info(failed)["status"] == "failed"
    done = proj.cli("rm", "--failed", "--yes")
    assert f"deleted run {failed}," in done.stdout, done.stdout
    assert proj.run_ids() == [first, second]
    assert "No run failed here" in proj.cli("rm", "--failed", "--yes").stdout


def test_a_run_deleted_while_it_still_records_never_writes_under_the_next_runs_id(tmp_path: Path) -> None:
    """`hindlog rm` of a run it took for ended (its process unseen: another container) while it
    still recorded: its writer went on writing under its old id, which SQLite gave the next new
    run, so that run showed the deleted run's records and checkpoints as its own."""
    from conftest import Lines, new_git_project

    project = new_git_project(tmp_path / "proj")
    proc = project.start(
        """
        import time
        import hindlog as hl
        for epoch in hl.loop("epoch", range(60)):
            hl.log("a", epoch)
            if epoch == 2:
                print(hl.run_id(), flush=True)
            time.sleep(0.05)
        """
    )
    lines = Lines(proc)
    try:
        first = lines.next()
        dead = subprocess.Popen(["true"])
        dead.wait()
        with project.db() as conn:  # its process, as seen from here, has ended
            conn.execute("UPDATE runs SET pid=? WHERE run_id=?", (dead.pid, first))
        project.cli("rm", first, "--yes")
        project.write("b.py", "import hindlog as hl\nfor e in hl.loop('epoch', range(3)):\n    hl.log('b', e)\n")
        project.run(script="b.py")
        proc.wait(timeout=60)
        err = proc.stderr.read() if proc.stderr else ""
    finally:
        stop(proc)
    runs = project.runs().set_index("script")
    assert project.values("a", runs.loc["b.py", "run_id"]) == []
    assert project.values("b", runs.loc["b.py", "run_id"]) == [0, 1, 2]
    again = runs.loc["train.py"]
    assert again["run_id"] == first and "deleted_while_recording" in again["flags"], runs
    assert project.values("a", first)[-1] == 59
    assert f"run {first} was deleted from" in err, err
