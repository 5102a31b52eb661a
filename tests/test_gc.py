"""``hindlog gc``: remove objects no checkpoint or code snapshot refers to; ``--keep-last N``
drops the checkpoints of all but the N latest runs and keeps their logs. Real stores made by
real recordings; the object files are checked on disk."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import hindlog as hl
from hindlog import codeversion
from hindlog.errors import CheckpointError
from hindlog.gc import gc
from hindlog.store import mark_scratch_kept

from ckpt_helpers import (
    NUMPY_TRAIN,
    CkProject,
    NumpyRecording,
    copy_store,
    count_checkpoints,
    last_json,
    make_numpy_recording,
    read_all_checkpoints,
    shared,
    stop,
    wait_for,
)


@pytest.fixture(scope="session")
def numpy_rec(tmp_path_factory: pytest.TempPathFactory) -> NumpyRecording:
    return shared("numpy_rec", make_numpy_recording, tmp_path_factory)


def object_files(proj: CkProject) -> set[str]:
    """Every object on disk (by name), temporary files left out."""
    out = set()
    for sub in proj.objects_dir.iterdir():
        if sub.is_dir():
            out.update(sub.name + f.name for f in sub.iterdir() if not f.name.startswith(".tmp-"))
    return out


def referenced(proj: CkProject, run_id: str) -> set[str]:
    names = set()
    for _it, _b, _l, manifest, _n in proj.checkpoints(run_id):
        m = proj.manifest(manifest)
        names.update([manifest, m["skeleton"], *(e[0] for e in m["tensors"] if not e[0].startswith("@"))])
    return names


def fresh_objects() -> dict[str, object]:
    return {"w": np.zeros(4), "big": np.zeros(20000), "history": [], "stats": {}}


@pytest.fixture
def two_runs(numpy_rec: NumpyRecording, tmp_path: Path) -> tuple[CkProject, str, str]:
    """A copy of the shared NumPy recording plus a second, newer run of a changed script."""
    proj = copy_store(numpy_rec.proj, tmp_path)
    proj.write("train.py", NUMPY_TRAIN.replace("np.random.seed(0)", "np.random.seed(1)"))
    second = last_json(proj.run("train.py", env={"HINDLOG_EPSILON": "0.9"}).stdout)["run"]
    assert proj.run_ids() == [numpy_rec.run_id, second]
    return proj, numpy_rec.run_id, second


def test_gc_removes_unreferenced_objects_and_keeps_referenced_ones(two_runs: tuple[CkProject, str, str]) -> None:
    proj, first, second = two_runs
    store = proj.store()
    junk = [store.objects.put(f"junk {i}".encode() * 100) for i in range(3)]
    keep = referenced(proj, first) | referenced(proj, second)
    # (And the random generators' states each run started from, kept with its logs.)
    keep |= {proj.run_info(r)["info"]["initial_generators"] for r in (first, second)}
    assert keep and keep <= object_files(proj)
    before = object_files(proj)

    # Young objects are kept by default: a running process may be writing a checkpoint.
    report = gc(store=store)
    assert report.removed_objects == 0 and object_files(proj) == before

    report = gc(store=store, grace=0)
    assert report.removed_objects == len(before - keep) >= len(junk)
    assert report.freed_bytes >= sum(len(f"junk {i}".encode() * 100) for i in range(3))
    assert report.dropped_checkpoints == 0
    after = object_files(proj)
    assert after == keep
    assert not set(junk) & after
    for run_id in (first, second):
        assert read_all_checkpoints(proj, run_id) == len(proj.checkpoints(run_id)) > 0
    # Idempotent.
    assert gc(store=store, grace=0).removed_objects == 0


KILLED_MID_WRITE = """
import os, signal, sys
from pathlib import Path
from hindlog.objects import ObjectStore

store = ObjectStore(Path(sys.argv[1]))
# Killed after the object's bytes are written, before they are renamed into place.
os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
store.put(b"half a checkpoint " * 5000)
"""


def test_gc_removes_what_a_writer_killed_mid_write_left_once_it_is_old(two_runs: tuple[CkProject, str, str]) -> None:
    proj, first, second = two_runs
    proc = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(proj.objects_dir)], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    store = proj.store()
    (left,) = list(store.objects.temporaries())
    assert left.stat().st_size == len(b"half a checkpoint " * 5000)
    before = object_files(proj)
    assert left.parent.name + left.name not in before  # never visible as an object

    # A young one may still be written by a live process: kept.
    report = gc(store=store)
    assert report.removed_temporaries == 0 and left.exists()
    old = time.time() - 2 * 3600
    os.utime(left, (old, old))
    out = proj.cli("gc").stdout
    assert "1 partly written files of killed processes" in out
    assert not left.exists()
    assert object_files(proj) == before  # no object was touched
    for run_id in (first, second):
        assert read_all_checkpoints(proj, run_id) == len(proj.checkpoints(run_id)) > 0


def test_gc_removes_scratch_copies_no_process_uses_and_keeps_the_others(two_runs: tuple[CkProject, str, str], tmp_path: Path) -> None:
    proj, first, second = two_runs
    store = proj.store()
    other = CkProject(tmp_path / "other", git=False).store()
    dead = store.scratch_dir(f"replay-{first}")  # its process was killed: nothing holds the lock
    (dead / "train.py").write_text("x = 1\n")
    live = store.scratch_dir(f"resume-{second}")
    kept = store.scratch_dir(f"replay-{second}")  # a failed replay's logs, handed to the user
    mark_scratch_kept(kept)
    elsewhere = other.scratch_dir(f"replay-{first}")  # another store's
    lock = store.lock(f"resume-{second}")
    assert lock.acquire()
    try:
        report = gc(store=store)
        assert report.removed_scratch == 1 and not dead.exists()
        assert live.exists() and kept.exists() and elsewhere.exists()
        after_grace = gc(store=store, grace=0)
        # Counted apart from the copies of killed processes: the replay handed it to the user.
        assert after_grace.removed_kept_scratch == 1 and after_grace.removed_scratch == 0
        assert not kept.exists() and live.exists()
    finally:
        lock.release()
    assert "1 scratch copies of the code that killed replays or resumes left" in proj.cli("gc").stdout
    assert not live.exists() and elsewhere.exists()
    shutil.rmtree(elsewhere)


def test_gc_says_what_it_keeps_for_the_grace_period_and_grace_0_frees_it(two_runs: tuple[CkProject, str, str]) -> None:
    proj, first, second = two_runs
    gc(store=proj.store(), grace=0)  # a clean start
    store = proj.store()
    junk = store.objects.put(b"unreferenced " * 100)
    kept = proj.cli("gc").stdout
    assert "removed 0 objects" in kept and "kept 1 unreferenced objects" in kept and "--grace 0" in kept, kept
    assert store.objects.exists(junk)
    freed = proj.cli("gc", "--grace", "0").stdout
    assert "removed 1 objects" in freed and "kept" not in freed, freed
    assert not store.objects.exists(junk)
    for run_id in (first, second):
        assert read_all_checkpoints(proj, run_id) == len(proj.checkpoints(run_id)) > 0
    bad = proj.cli("gc", "--grace", "-5", check=False)
    assert bad.returncode == 2 and "must be 0 or more" in bad.stderr


def test_gc_keep_last_drops_older_runs_checkpoints_but_keeps_their_logs(two_runs: tuple[CkProject, str, str]) -> None:
    proj, first, second = two_runs
    logs_before = {r: proj.by_iteration(r) for r in (first, second)}
    first_refs, second_refs = referenced(proj, first), referenced(proj, second)
    n_first = len(proj.checkpoints(first))
    code_first = proj.run_info(first)["code_version"]

    out = proj.cli("gc", "--keep-last", "1").stdout
    assert f"dropped {n_first} checkpoints of the runs before the latest" in out, out
    assert proj.checkpoints(first) == []
    assert len(proj.checkpoints(second)) > 0
    assert "checkpoints  0 (dropped by hindlog gc --keep-last; the logs are kept)" in proj.cli("show", first).stdout
    # The CLI keeps young objects (grace period); an immediate gc with no grace removes them.
    gc(store=proj.store(), grace=0)
    on_disk = object_files(proj)
    assert second_refs <= on_disk
    assert not (first_refs - second_refs) & on_disk
    # Logs, args and code versions of every run are kept.
    assert {r: proj.by_iteration(r) for r in (first, second)} == logs_before
    info = proj.run_info(first)
    assert info["code_version"] == code_first and info["args"] == {"epochs": 6, "pause": 0.05}
    assert b"np.random.seed(0)" in codeversion.read_file(proj.store(), code_first, "train.py")
    # The older run can no longer be restored; the newer one can.
    with pytest.raises(CheckpointError, match="no checkpoints: `hindlog gc --keep-last` dropped them"):
        hl.restore(first, store=proj.store(), **fresh_objects())
    assert hl.restore(second, store=proj.store(), **fresh_objects()).iteration == proj.checkpointed_iterations(second)[-1]
    assert read_all_checkpoints(proj, second) == len(proj.checkpoints(second))


def test_gc_keep_last_of_one_script_leaves_the_other_scripts_runs_alone(two_runs: tuple[CkProject, str, str]) -> None:
    proj, first, second = two_runs
    proj.write("eval.py", NUMPY_TRAIN)
    other = last_json(proj.run("eval.py", env={"HINDLOG_EPSILON": "0.9"}).stdout)["run"]
    counts = {r: len(proj.checkpoints(r)) for r in (first, second, other)}
    assert all(counts.values()), counts

    out = proj.cli("gc", "--keep-last", "1", "--script", "train.py").stdout
    assert f"dropped {counts[first]} checkpoints of the runs of train.py before the latest" in out, out
    assert proj.checkpoints(first) == []
    # Without --script, the latest run (of eval.py) would have been the only one kept.
    assert len(proj.checkpoints(second)) == counts[second] and len(proj.checkpoints(other)) == counts[other]
    alone = proj.cli("gc", "--script", "train.py", check=False)
    assert alone.returncode == 2 and "give --keep-last N too" in alone.stderr, alone.stderr


def test_gc_keep_last_rejects_a_negative_count(numpy_rec: NumpyRecording) -> None:
    with pytest.raises(ValueError, match="0 or more"):
        gc(store=numpy_rec.proj.store(), keep_last=-1)
    proc = numpy_rec.proj.cli("gc", "--keep-last", "-1", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert len(numpy_rec.proj.checkpoints(numpy_rec.run_id)) > 0


def test_gc_keeps_code_snapshots_outside_git(tmp_path: Path) -> None:
    proj = CkProject(tmp_path, git=False)
    proj.write("train.py", NUMPY_TRAIN)
    run_id = last_json(proj.run("train.py", env={"HINDLOG_EPSILON": "0.5"}).stdout)["run"]
    version = proj.run_info(run_id)["code_version"]
    assert version.startswith("snap-")
    assert proj.checkpoints(run_id)
    report = gc(store=proj.store(), keep_last=0, grace=0)
    assert report.dropped_checkpoints > 0 and report.removed_objects > 0
    assert proj.checkpoints(run_id) == []
    # Only the code snapshot's objects are left (and the generators' states the run started
    # from), and the code reads back whole.
    files = codeversion.read_files(proj.store(), version)
    assert files["train.py"].decode() == (proj.root / "train.py").read_text()
    assert len(object_files(proj)) == len(files) + 2  # the files, their manifest, the generators
    assert proj.by_iteration(run_id)[(5, "mse")]


BUSY = """
import json, time
import numpy as np
import hindlog as hl

state = np.zeros(20000)
hl.checkpoints(state=state)
for epoch in hl.loop("epoch", range(10_000)):
    state += 1
    hl.log("x", float(state[0]))
    time.sleep(0.03)
"""


def _stop_outside_a_transaction(proc, proj) -> None:
    """SIGSTOP the recording process at a moment its writer holds no catalog lock (a process
    stopped inside a transaction would keep gc waiting for the lock, which is not what is tested)."""
    import sqlite3

    for _ in range(100):
        os.kill(proc.pid, signal.SIGSTOP)
        conn = sqlite3.connect(str(proj.store_path / "catalog.db"), timeout=0.2)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.05)
        finally:
            conn.close()
    pytest.fail("the recording process never left the catalog unlocked")


def test_gc_keep_last_never_drops_a_running_runs_checkpoints(numpy_rec: NumpyRecording, tmp_path: Path) -> None:
    proj = copy_store(numpy_rec.proj, tmp_path)
    proj.write("busy.py", BUSY)
    proc = proj.start("busy.py", env={"HINDLOG_EPSILON": "0.9"})
    try:
        wait_for(lambda: count_checkpoints(proj, at_least_iteration=0) > len(numpy_rec.proj.checkpoints(numpy_rec.run_id)) + 1, timeout=60, proc=proc)
        _stop_outside_a_transaction(proc, proj)  # hold it still (alive) while gc runs
        try:
            running = proj.run_ids()[-1]
            assert proj.run_info(running)["status"] == "running"
            rows = proj.checkpoints(running)
            n_old = len(proj.checkpoints(numpy_rec.run_id))
            report = gc(store=proj.store(), keep_last=0, grace=0)
            assert report.dropped_checkpoints == n_old > 0
            assert proj.checkpoints(numpy_rec.run_id) == []
            assert proj.checkpoints(running) == rows
            assert read_all_checkpoints(proj, running) == len(rows)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
    finally:
        stop(proc)


SEEDED = """
import time
import numpy as np
import hindlog as hl

np.random.seed(0)
pause = hl.arg("pause", 0.0)
rng = np.random.default_rng(0)
w = np.zeros(32 * 1024)
hl.checkpoints(w=w, rng=rng)
for epoch in hl.loop("epoch", range(12)):
    for step in hl.loop("step", range(3)):
        w += rng.standard_normal(w.shape) * 0.01
    hl.log("mean", float(np.abs(w).mean()))
    time.sleep(pause)
"""


def test_gc_during_a_recording_keeps_what_its_checkpoints_reuse_from_older_runs(tmp_path: Path) -> None:
    # A run of the same seeded script writes checkpoints identical to an old run's: found in
    # the store, they are named again, not written. gc must not remove them between the moment
    # the new run finds them and the moment it commits its checkpoint, even with --grace 0.
    proj = CkProject(tmp_path)
    proj.write("train.py", SEEDED)
    proj.run("train.py", env={"HINDLOG_EPSILON": "0.9"})
    day_ago = time.time() - 86400
    for path in proj.objects_dir.rglob("*"):
        if path.is_file():
            os.utime(path, (day_ago, day_ago))
    proc = proj.start("train.py", env={"HINDLOG_EPSILON": "0.9", "HINDLOG_SET_pause": "0.15"})
    removed = 0
    try:
        while proc.poll() is None:
            removed += gc(store=proj.store(), keep_last=1, grace=0).removed_objects
            time.sleep(0.05)
    finally:
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    old, new = proj.run_ids()
    assert removed > 0, "the old run's checkpoints were dropped: some of their objects had to go"
    assert proj.checkpoints(old) == [] and len(proj.checkpoints(new)) >= 12
    assert read_all_checkpoints(proj, new) == len(proj.checkpoints(new))
    # And once nothing runs, gc frees what the new run does not use.
    gc(store=proj.store(), grace=0)
    assert read_all_checkpoints(proj, new) == len(proj.checkpoints(new))


REUSED = """
import os, time
import numpy as np
import hindlog as hl
from hindlog.objects import digest

# Three arrays of 320 KB that never change: written once, then named again by each checkpoint.
fixed = [np.arange(40_000, dtype=np.float64) + k for k in range(3)]
w = np.zeros(4)
hl.checkpoints(fixed=fixed, w=w)
for epoch in hl.loop("epoch", range(8)):
    if epoch == 3:
        # What gc does to objects it found unused (another run's, say), as this run reuses them.
        time.sleep(0.3)  # the checkpoint of epoch 2 is written
        for a in fixed:
            name = digest(memoryview(a.view(np.uint8)))
            os.remove(os.path.join(os.environ["HINDLOG_DIR"], "objects", name[:2], name[2:]))
    for step in hl.loop("step", range(3)):
        w += 1
        time.sleep(0.02)
    hl.log("w", float(w.sum()))
"""


def test_a_checkpoint_never_names_an_object_the_store_lost_before_it_was_reused(tmp_path: Path) -> None:
    """Unchanged arrays are named again by each checkpoint, not written again. If the store no
    longer holds them when a checkpoint reuses them, that checkpoint is dropped with a warning,
    and the next one writes them all again: every committed checkpoint reads back."""
    proj = CkProject(tmp_path)
    proj.write("train.py", REUSED)
    proc = proj.run("train.py", env={"HINDLOG_EPSILON": "0.9"})
    (run,) = proj.run_ids()
    rows = proj.checkpoints(run)
    later = sorted({it for it, *_ in rows if it >= 3})
    # One checkpoint lost, not one per array (a policy's skip may cost one more).
    assert len(later) >= 3 and later[-1] == 7, rows
    assert "3 tensor(s) it reuses" in proc.stderr and "removed meanwhile" in proc.stderr, proc.stderr
    assert "training goes on" in proc.stderr, proc.stderr
    objects = proj.store().objects
    from hindlog.checkpoint import read_checkpoint

    for it, _block, _loop, manifest, _n in rows:
        if it >= 3:  # the earlier ones named the arrays this test removed by hand
            read_checkpoint(objects, manifest)
    assert "checkpoint_dropped" in proj.run_info(run)["flags"]
    assert [v for _it, n, v in proj.records(run) if n == "w"] == [12.0 * (e + 1) for e in range(8)]  # training went on


def test_gc_puts_back_an_object_a_run_reused_after_gc_found_it_unused(tmp_path: Path) -> None:
    """gc sets an object aside before removing it: a run that reused it just before (it touched
    the file) keeps it; one that reuses it just after is told it is gone (and writes it again)."""
    from hindlog.gc import remove_if_unused

    st = CkProject(tmp_path).store()
    name = st.objects.put(b"x" * 1000)
    path = st.objects.path(name)
    day_ago = time.time() - 86400
    cutoff = time.time() - 3600  # what gc keeps: used since then
    os.utime(path, (day_ago, day_ago))
    assert st.objects.touch(name)  # reused between gc's look at it and its removal
    assert remove_if_unused(path, cutoff) is None
    assert path.read_bytes() == b"x" * 1000 and not list(st.objects.temporaries())
    os.utime(path, (day_ago, day_ago))
    assert remove_if_unused(path, cutoff) == 1000
    assert not path.exists() and not list(st.objects.temporaries())
    assert not st.objects.touch(name)  # a run that would name it now learns it is gone
    assert not st.objects.have(name, 1000)


def test_an_object_a_stopped_gc_left_set_aside_is_put_back(numpy_rec: NumpyRecording, tmp_path: Path) -> None:
    """A gc stopped between setting an object aside and removing it (or putting it back) leaves
    it under a temporary name; a checkpoint may name it (a run reused it just before). The next
    gc puts it back, whatever its age, instead of removing it as a writer's leftover."""
    proj = copy_store(numpy_rec.proj, tmp_path)
    run = numpy_rec.run_id
    _it, _b, _l, manifest, _n = proj.checkpoints(run)[-1]
    name = [e[0] for e in proj.manifest(manifest)["tensors"] if not e[0].startswith("@")][0]
    path = proj.store().objects.path(name)
    aside = path.with_name(f".tmp-gc-0123456789abcdef-{path.name}")
    os.rename(path, aside)
    gc(store=proj.store(), grace=0)
    assert path.exists() and not aside.exists()
    assert read_all_checkpoints(proj, run) == len(proj.checkpoints(run))


def test_gc_of_a_store_that_does_not_exist_says_so_and_creates_nothing(tmp_path: Path) -> None:
    proj = CkProject(tmp_path)
    missing = tmp_path / "no-store-here"
    out = proj.cli("--store", str(missing), "gc", check=False)
    assert out.returncode == 2 and f"there is no hindlog store at {missing}" in out.stderr, out.stderr
    assert not missing.exists()


def test_gc_removes_nothing_beside_a_catalog_that_lists_no_runs(two_runs: tuple[CkProject, str, str]) -> None:
    """An emptied catalog (a 0-byte file opens as a new database) beside stored objects: they
    may be the only copy of its runs' checkpoints, and gc says so instead of removing them all."""
    proj, _first, _second = two_runs
    store = proj.store()
    before = set(store.objects.names())
    assert before
    store.catalog_path.write_bytes(b"")
    for suffix in ("-wal", "-shm"):
        Path(f"{store.catalog_path}{suffix}").unlink(missing_ok=True)
    out = proj.cli("gc", "--grace", "0", check=False)
    assert out.returncode != 0 and "lists no runs" in out.stderr and "removes nothing" in out.stderr, out.stdout + out.stderr
    assert set(store.objects.names()) == before
