"""``hindlog rm``: delete runs with what they stored; gc then frees their checkpoints' objects.
Real recordings in a real git repository; the catalog is read with plain SQLite."""

from __future__ import annotations

import subprocess

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
