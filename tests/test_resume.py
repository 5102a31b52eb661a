"""``hindlog resume RUN``: continue a killed (``kill -9``) or failed run from its latest
readable checkpoint, appending to the same run, with the values an uninterrupted run logs
and no iteration logged twice. Real processes, real signals, real files."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hindlog.store import Store

from ckpt_helpers import (
    RUNNING_MEAN_CLASS,
    LOADER_MAIN_LOOP,
    HINDLOG_SCRIPT,
    ITERATION_END,
    TORCH_TRAIN,
    CkProject,
    TorchReference,
    copy_store,
    count_checkpoints,
    flip_byte,
    last_json,
    make_torch_reference,
    read_all_checkpoints,
    shared,
    stop,
    wait_for,
)


@pytest.fixture(scope="session")
def torch_ref(tmp_path_factory: pytest.TempPathFactory) -> TorchReference:
    return shared("torch_ref", make_torch_reference, tmp_path_factory)


@dataclass
class Killed:
    proj: CkProject
    run_id: str
    checkpointed: list[int]
    logged: list[int]


def _kill_9_when(proc: subprocess.Popen[str], hold: Path, ready: Any) -> None:
    """``kill -9`` the recording ``proc`` once ``ready()``; then let go of the held script."""
    try:
        wait_for(ready, timeout=90, interval=0.01, proc=proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        stop(proc)
        hold.unlink()


def _python_then_kill_9(proj: CkProject, hold: Path, epsilon: str, ready: Any) -> subprocess.Popen[str]:
    """``python train.py`` (the script waits while ``hold`` exists), ``kill -9`` once ``ready()``."""
    hold.touch()
    proc = proj.start("train.py", env={"HOLD_FILE": str(hold), "HINDLOG_EPSILON": epsilon})
    _kill_9_when(proc, hold, ready)
    return proc


def _make_killed(base: Path) -> Killed:
    """Start TORCH_TRAIN, wait until iteration-end checkpoints of iteration 3 or later are
    committed, and ``kill -9`` it in the middle of training. The script holds at the start of
    each epoch from the fifth on while the hold file exists, so a slow machine cannot let it
    finish before the checkpoint is seen."""
    proj = CkProject(base)
    proj.write("train.py", TORCH_TRAIN)
    proc = _python_then_kill_9(proj, base / "hold", "0.5",
                               lambda: count_checkpoints(proj, iteration_end_only=True, at_least_iteration=3) > 0)
    assert proc.returncode == -signal.SIGKILL
    (run_id,) = proj.run_ids()
    iterations = proj.checkpointed_iterations(run_id)
    logged = sorted({it for it, name, _ in proj.records(run_id) if it is not None and name == "loss"})
    assert iterations and max(logged) < 7, f"the run was not killed mid-training: logged {logged}"
    return Killed(proj, run_id, iterations, logged)


@pytest.fixture(scope="session")
def killed(tmp_path_factory: pytest.TempPathFactory, torch_ref: TorchReference) -> Killed:
    return shared("killed_torch", _make_killed, tmp_path_factory)


def _epochs_printed(stdout: str) -> list[int]:
    out = []
    for line in stdout.splitlines():
        if line.startswith('{"epoch"'):
            out.append(json.loads(line)["epoch"])
    return out


def _check_equal_to_reference(proj: CkProject, run_id: str, ref: TorchReference) -> None:
    values = proj.by_iteration(run_id)
    duplicates = {k: v for k, v in values.items() if len(v) != 1}
    assert not duplicates, f"records logged more than once: {duplicates}"
    assert set(values) == set(ref.values), (sorted(set(values) ^ set(ref.values), key=str))
    for key, recorded in ref.values.items():
        assert values[key] == recorded, f"{key}: resumed {values[key]}, uninterrupted {recorded}"


def test_resume_after_kill_9_matches_an_uninterrupted_run(killed: Killed, torch_ref: TorchReference, tmp_path: Path) -> None:
    proj = copy_store(killed.proj, tmp_path)
    run_id = killed.run_id
    info = proj.run_info(run_id)
    assert info["status"] == "killed"
    latest = killed.checkpointed[-1]

    proc = proj.cli("resume", run_id, env={"HINDLOG_EPSILON": "0.5"})
    assert _epochs_printed(proc.stdout) == list(range(latest + 1, 8)), proc.stdout
    assert proj.run_ids() == [run_id], "resume must append to the same run"
    info = proj.run_info(run_id)
    assert info["status"] == "finished"
    assert "resumed" in info["flags"]
    assert info["ended"] is not None
    _check_equal_to_reference(proj, run_id, torch_ref)
    # The resumed process checkpoints too; everything the run now lists reads back intact.
    assert read_all_checkpoints(proj, run_id) > 0
    assert max(proj.checkpointed_iterations(run_id)) > latest
    shown = proj.cli("show", run_id).stdout
    assert "finished" in shown and "resumed" in shown


def test_resume_falls_back_when_the_latest_checkpoint_is_corrupt(killed: Killed, torch_ref: TorchReference, tmp_path: Path) -> None:
    assert len(killed.checkpointed) >= 2, f"need two checkpoints, got {killed.checkpointed}"
    proj = copy_store(killed.proj, tmp_path)
    run_id = killed.run_id
    latest, previous = killed.checkpointed[-1], killed.checkpointed[-2]
    objects = proj.store().objects
    manifest = next(m for it, b, _l, m, _n in proj.checkpoints(run_id) if it == latest and b == ITERATION_END)
    flip_byte(objects.path(json.loads(objects.get(manifest))["skeleton"]))

    proc = proj.cli("resume", run_id)
    assert _epochs_printed(proc.stdout) == list(range(previous + 1, 8)), proc.stdout
    # Said once, as hindlog's own message, without a file, line and source line of hindlog's.
    damaged = [line for line in proc.stderr.splitlines() if "is damaged" in line]
    assert len(damaged) == 1 and damaged[0].startswith(f"hindlog: the checkpoint of iteration {latest} is damaged"), proc.stderr
    assert "falling back" in damaged[0] and "warnings.warn" not in proc.stderr, proc.stderr
    info = proj.run_info(run_id)
    assert info["status"] == "finished" and "resumed" in info["flags"]
    _check_equal_to_reference(proj, run_id, torch_ref)


def test_resume_refuses_a_finished_run(torch_ref: TorchReference) -> None:
    proc = torch_ref.proj.cli("resume", torch_ref.run_id, check=False)
    assert proc.returncode != 0
    assert "finished" in (proc.stdout + proc.stderr) and "Traceback" not in proc.stderr
    # Nothing was changed.
    assert torch_ref.proj.run_info(torch_ref.run_id)["status"] == "finished"
    assert "resumed" not in torch_ref.proj.run_info(torch_ref.run_id)["flags"]


# ----------------------------------------------------------------- a failed run (NumPy)

FLAKY = """
import json, os, time
import numpy as np
import hindlog as hl


def main():
    # The main loop in a function: resume restores the loop-carried locals into its frame.
    np.random.seed(0)
    X = np.random.randn(64, 3)
    y = X @ np.array([1.0, -2.0, 0.5])
    w = np.zeros(3)
    hl.checkpoints(w=w)
    hl.log("setup", 1)
    best = float("inf")
    seen = []
    for epoch in hl.loop("epoch", range(6)):
        perm = np.random.permutation(64)
        for b in hl.loop("batch", range(0, 64, 16)):
            idx = perm[b:b + 16]
            w -= 0.05 * X[idx].T @ (X[idx] @ w - y[idx]) / 16
        mse = float(np.mean((X @ w - y) ** 2))
        best = min(best, mse + float(np.random.rand()))
        seen.append(epoch)
        hl.log("mse", mse)
        hl.log("best", best)
        hl.log("seen", list(seen))
        if epoch == 4 and os.path.exists("fail.flag"):
            raise RuntimeError("the disk went away")
        time.sleep(0.1)
    print(json.dumps({"run": hl.run_id()}))


main()
"""


def test_resume_a_failed_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proj = CkProject(tmp_path)
    proj.write("train.py", FLAKY)
    (proj.root / "fail.flag").write_text("x")
    failed = proj.run("train.py", check=False, env={"HINDLOG_EPSILON": "0.5"})
    assert failed.returncode == 1 and "the disk went away" in failed.stderr
    (run_id,) = proj.run_ids()
    assert proj.run_info(run_id)["status"] == "failed"
    assert "\nerror        " in proj.cli("show", run_id).stdout and "the disk went away" in proj.cli("show", run_id).stdout
    checkpointed = proj.checkpointed_iterations(run_id)
    assert checkpointed and max(checkpointed) <= 3, checkpointed  # epoch 4 never completed
    # Its logs of epoch 4 are there (it failed after logging them) and get replaced, not doubled.
    assert (4, "mse") in proj.by_iteration(run_id)

    # Resumed while the fault is still there: it fails again, and can be resumed again.
    scratch_parent = tmp_path / "tmp"
    scratch_parent.mkdir()
    again = proj.cli("resume", run_id, check=False, env={"TMPDIR": str(scratch_parent)})
    assert again.returncode == 1 and "the disk went away" in again.stderr
    info = proj.run_info(run_id)
    assert info["status"] == "failed" and "resumed" in info["flags"]
    assert all(len(v) == 1 for v in proj.by_iteration(run_id).values())

    (proj.root / "fail.flag").unlink()
    # While another resume of the run is starting (it holds the run's resume lock), a second one is refused.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from hindlog.store import Store; "
         f"lock = Store({str(proj.store_path)!r}).lock('resume-{run_id}'); assert lock.acquire(); print('held', flush=True); "
         "sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        busy = proj.cli("resume", run_id, check=False)
    finally:
        holder.communicate("", timeout=30)
    assert busy.returncode != 0 and f"is being resumed already (process {holder.pid})" in busy.stderr, busy.stderr
    assert proj.run_info(run_id)["status"] == "failed"
    # A resume killed with -9 leaves its marked scratch copy with nobody holding the lock; the next resume removes it.
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_parent))
    dead = Store(proj.store_path, proj.root).scratch_dir(f"resume-{run_id}")
    proj.write(".gitignore", "out/\n")
    proj.write("out/generated.py", "x = 1\n")  # ignored by git: not the code, not an edit of it
    resumed = proj.cli("resume", run_id, env={"TMPDIR": str(scratch_parent)})
    assert f"resuming run {run_id} after iteration" in resumed.stderr and "edits made since" not in resumed.stderr  # none were
    assert not dead.exists()
    assert list(scratch_parent.iterdir()) == [], "resume left its scratch copy of the code behind"
    reference_id = last_json(proj.run("train.py").stdout)["run"]
    resumed, reference = proj.by_iteration(run_id), proj.by_iteration(reference_id)
    assert resumed == reference
    assert all(len(v) == 1 for v in resumed.values()), resumed
    info = proj.run_info(run_id)
    assert info["status"] == "finished" and "resumed" in info["flags"]



def _flaky_importing_lr(import_line: str) -> str:
    """FLAKY with its learning rate imported by ``import_line``."""
    return FLAKY.replace("import hindlog as hl\n", f"import hindlog as hl\n{import_line}\n", 1).replace("w -= 0.05 *", "w -= LR *")


def _fail_edit_and_resume(proj: CkProject, start: Callable[[], subprocess.CompletedProcess[str]], lr_module: str) -> tuple[str, str]:
    """Run the script ``start`` starts to its end (the reference), then to its failure at epoch 4;
    edit ``lr_module`` in the working tree and resume the failed run. (resumed run, reference)."""
    reference_id = last_json(start().stdout)["run"]
    (proj.root / "fail.flag").write_text("x")
    failed = start()
    assert failed.returncode == 1 and "the disk went away" in failed.stderr, failed.stderr
    run_id = proj.run_ids()[-1]
    (proj.root / "fail.flag").unlink()
    proj.write(lr_module, "LR = 0.5\n")
    resumed = proj.cli("resume", run_id, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert f"edits made since to {lr_module} are not used" in resumed.stderr, resumed.stderr
    return run_id, reference_id


@pytest.mark.parametrize("launcher", [["-m"], ["-m", "hindlog.cli", "run", "-m"]], ids=["python", "hindlog-run"])
def test_resume_a_run_started_with_python_m(tmp_path: Path, launcher: list[str]) -> None:
    """A run started as ``python -m pkg.train`` or ``hindlog run -m pkg.train`` (with a relative
    import) resumes as a module, in its directory, from the recorded code: the working tree's
    edit of the imported module is not used."""
    proj = CkProject(tmp_path)
    proj.write("pkg/__init__.py", "")
    proj.write("pkg/rate.py", "LR = 0.05\n")
    proj.write("pkg/train.py", _flaky_importing_lr("from .rate import LR"))

    def python_m() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, *launcher, "pkg.train"], cwd=proj.root, env=proj.env({"HINDLOG_EPSILON": "0.5"}),
                              capture_output=True, text=True, timeout=120)

    run_id, reference_id = _fail_edit_and_resume(proj, python_m, "pkg/rate.py")

    def logged(run: str) -> dict[tuple[int | None, str], list[Any]]:
        return {k: v for k, v in proj.by_iteration(run).items() if k[1] != "@stdout"}  # it prints its own run id

    assert logged(run_id) == logged(reference_id) and (4, "mse") in logged(run_id)
    assert proj.run_info(run_id)["status"] == "finished"


def test_resume_imports_the_recorded_modules_through_an_empty_pythonpath_entry(tmp_path: Path) -> None:
    """``PYTHONPATH=":."`` (what ``export PYTHONPATH=$PYTHONPATH:.`` leaves): both entries name
    the run's directory, whose modules a resume takes from the recorded code, not the edited
    working tree, though it runs in that directory."""
    proj = CkProject(tmp_path)
    proj.write("mylib.py", "LR = 0.05\n")
    proj.write("scripts/train.py", _flaky_importing_lr("from mylib import LR"))
    env = {"HINDLOG_EPSILON": "0.5", "PYTHONPATH": ":."}
    run_id, reference_id = _fail_edit_and_resume(proj, lambda: proj.run("scripts/train.py", env=env, check=False), "mylib.py")
    assert proj.by_iteration(run_id) == proj.by_iteration(reference_id)


def test_resume_without_a_store_says_so_and_creates_none(tmp_path: Path) -> None:
    proj = CkProject(tmp_path)
    proc = proj.cli("resume", "latest", check=False)
    assert proc.returncode != 0 and "there is no hindlog store" in proc.stderr, proc.stderr
    assert not proj.store_path.exists()


def test_resume_refuses_a_run_without_checkpoints(tmp_path: Path) -> None:
    proj = CkProject(tmp_path)
    proj.write("train.py", FLAKY)
    (proj.root / "fail.flag").write_text("x")
    proj.run("train.py", check=False, env={"HINDLOG_EPSILON": "0"})
    (run_id,) = proj.run_ids()
    assert proj.checkpoints(run_id) == []
    proc = proj.cli("resume", run_id, check=False)
    assert proc.returncode != 0
    assert "no checkpoint" in (proc.stdout + proc.stderr) and "Traceback" not in proc.stderr
    assert proj.run_info(run_id)["status"] == "failed"


def test_resume_with_every_checkpoint_corrupt_fails_clearly(tmp_path: Path) -> None:
    proj = CkProject(tmp_path)
    proj.write("train.py", FLAKY)
    (proj.root / "fail.flag").write_text("x")
    proj.run("train.py", check=False, env={"HINDLOG_EPSILON": "0.5"})
    (run_id,) = proj.run_ids()
    objects = proj.store().objects
    rows = proj.checkpoints(run_id)
    assert rows
    for _it, _block, _loop, manifest, _n in rows:
        flip_byte(objects.path(manifest))
    before = proj.by_iteration(run_id)
    proc = proj.cli("resume", run_id, check=False)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "can be read" in proc.stderr or "no readable checkpoint" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    # Nothing ran unrecorded or was appended; the run is as the failure left it.
    assert '"run"' not in proc.stdout
    assert proj.run_ids() == [run_id]
    assert proj.by_iteration(run_id) == before
    assert proj.run_info(run_id)["status"] == "failed"


#: Holds in the middle of iteration 4, after logging `lr` and before `acc`, while the hold file exists.
HELD_MID_ITERATION = """
import os, time
import numpy as np
import hindlog as hl

state = np.zeros(1)
hl.checkpoints(state=state)
hold = os.environ.get("HOLD_FILE")
for epoch in hl.loop("epoch", range(8)):
    hl.log("lr", 0.1)
    state += 1.0
    held = time.time()
    while hold and epoch == 4 and os.path.exists(hold) and time.time() - held < 30:
        time.sleep(0.01)
    time.sleep(0.05)
    hl.log("acc", float(state[0]))
"""


def test_a_replay_of_a_run_killed_mid_iteration_stores_nothing_the_run_did_not_log(tmp_path: Path) -> None:
    """The replay runs the killed run's last iteration to its end: what the recorded code logs
    there past the kill (`acc`) is not the run's value. Stored, it looked recorded, and the
    resume logged it a second time."""
    proj = CkProject(tmp_path)
    proj.write("train.py", HELD_MID_ITERATION)
    _python_then_kill_9(proj, tmp_path / "hold", "0.9", lambda: any(it == 4 and name == "lr" for it, name, _v in _records_so_far(proj)))
    (run_id,) = proj.run_ids()
    assert (4, "acc") not in proj.by_iteration(run_id)
    proj.write("train.py", HELD_MID_ITERATION + '    hl.log("double", 2 * float(state[0]))\n')
    replayed = proj.cli("replay", "train.py", "--run", run_id)
    assert "1 values the recorded code logged past where the run stopped were not kept" in replayed.stdout, replayed.stdout
    logged = proj.by_iteration(run_id)
    assert (4, "acc") not in logged and logged[(3, "double")] == [8.0]
    proj.write("train.py", HELD_MID_ITERATION)
    resumed = proj.cli("resume", run_id)
    assert "logged twice" not in resumed.stderr, resumed.stderr
    logged = proj.by_iteration(run_id)
    assert all(logged[(i, "acc")] == [float(i + 1)] for i in range(8)), logged


def _records_so_far(proj: CkProject) -> list[tuple[Any, str, Any]]:
    try:
        return proj.records(proj.run_ids()[0])
    except Exception:  # the catalog is still being created
        return []


# ----------------------------------------------------------------- a hands-free run

#: An unmodified script (no hindlog in it), run with ``hindlog run``. It holds at the start of
#: each epoch from the fifth on while the hold file exists (at most 2 s), so the test can kill
#: it mid-training after a checkpoint is committed.
PLAIN_HELD = """
import os, time
import numpy as np

rng = np.random.default_rng(0)
w = np.zeros(4)
hold = os.environ.get("HOLD_FILE")
for epoch in range(10):
    held = time.time()
    while hold and epoch >= 4 and os.path.exists(hold) and time.time() - held < 2:
        time.sleep(0.01)
    for step in range(5):
        w += rng.normal(size=4) * 0.1
    print(f"epoch {epoch} norm {np.linalg.norm(w):.6f}", flush=True)
    time.sleep(0.05)
print("done", float(w.sum()))
"""


def _hindlog_run_then_kill_9(proj: CkProject, hold: Path, epsilon: str, ready: Any) -> None:
    """``hindlog run train.py`` (the script waits while ``hold`` exists), ``kill -9`` once ``ready()``."""
    hold.touch()
    proc = subprocess.Popen(
        [str(HINDLOG_SCRIPT), "run", "train.py"], cwd=proj.root, text=True,
        env=proj.env({"HOLD_FILE": str(hold), "HINDLOG_EPSILON": epsilon}),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    _kill_9_when(proc, hold, ready)


def test_resume_of_a_hands_free_run_after_kill_9_records_the_rest_of_the_run(tmp_path: Path) -> None:
    proj = CkProject(tmp_path)
    proj.write("train.py", PLAIN_HELD)
    _hindlog_run_then_kill_9(
        proj, tmp_path / "hold", "0.5", lambda: count_checkpoints(proj, iteration_end_only=True, at_least_iteration=2) > 0
    )
    (run_id,) = proj.run_ids()
    latest = max(proj.checkpointed_iterations(run_id))
    assert latest < 9

    resumed = proj.cli("resume", run_id, env={"HINDLOG_EPSILON": "0.5"})
    assert resumed.stdout.startswith(f"epoch {latest + 1} norm "), resumed.stdout
    reference = proj.cli("run", "train.py")
    ref_id = [r for r in proj.run_ids() if r != run_id][0]
    # What the script printed, per iteration, as an uninterrupted run records it: the
    # resumed part's lines included, none twice.
    assert proj.by_iteration(run_id) == proj.by_iteration(ref_id)
    assert resumed.stdout.splitlines()[-1] == reference.stdout.splitlines()[-1]
    info = proj.run_info(run_id)
    assert info["status"] == "finished" and "resumed" in info["flags"]
    # Replay plans index the timings by iteration: there is one per iteration of the run.
    assert len(info["info"]["iteration_seconds"]) == 10
    assert all(s > 0 for s in info["info"]["iteration_seconds"])
    plan = proj.cli("replay", "--run", run_id, "--dry-run", "--force").stdout
    assert "of 10" in plan, plan
    # Its duration leaves out the time it stood killed.
    stopped = info["info"]["stopped_seconds"]
    assert stopped > 0
    assert "stood stopped for" in proj.cli("show", run_id).stdout
    from hindlog import query

    assert query.run_duration(info) == pytest.approx(info["ended"] - info["started"] - stopped)


def test_a_resumed_hands_free_torch_run_goes_on_taking_checkpoints(tmp_path: Path) -> None:
    """A resume reads its checkpoint, importing torch, before the script runs: that import is
    the script's own cost, not hindlog's. Charged to the budget (a second), it left the resumed
    run no room for a checkpoint, and a second kill lost everything since the first."""
    pytest.importorskip("torch")
    proj = CkProject(tmp_path)
    proj.write("train.py", PLAIN_HELD.replace("import numpy as np\n", "import numpy as np\nimport torch\n")
               .replace("    print(f\"epoch", "    torch.manual_seed(epoch)\n    print(f\"epoch"))
    _hindlog_run_then_kill_9(
        proj, tmp_path / "hold", "0.5", lambda: count_checkpoints(proj, iteration_end_only=True, at_least_iteration=2) > 0
    )
    (run_id,) = proj.run_ids()
    latest = max(proj.checkpointed_iterations(run_id))
    proj.cli("resume", run_id, env={"HINDLOG_EPSILON": "0.5"})
    assert max(proj.checkpointed_iterations(run_id)) > latest + 1, proj.cli("show", run_id).stdout


PRINTS_AFTER_LOOP = """
import os, time
import numpy as np

rng = np.random.default_rng(0)
w = np.zeros(2)
print("start")
for epoch in range(4):
    for k in range(3):
        w += rng.normal(size=2)
    print("epoch", epoch, round(float(w.sum()), 6), flush=True)
    time.sleep(0.05)
print("training done", flush=True)
held = time.time()
while os.path.exists(os.environ.get("HOLD_FILE", "")) and time.time() - held < 30:
    time.sleep(0.01)
print("final eval", round(float(w.sum()), 6))
"""


def test_resume_of_a_run_killed_after_its_main_loop_logs_what_follows_once(tmp_path: Path) -> None:
    proj = CkProject(tmp_path)
    proj.write("train.py", PRINTS_AFTER_LOOP)

    def done_is_recorded() -> bool:
        try:
            return any(v == "training done" for _i, _n, v in proj.records(proj.run_ids()[0]))
        except Exception:  # the catalog is still being created
            return False

    _hindlog_run_then_kill_9(proj, tmp_path / "hold", "0.9", done_is_recorded)
    (run_id,) = proj.run_ids()
    proj.cli("resume", run_id)
    lines = [v for _i, name, v in proj.records(run_id) if name == "@stdout"]
    reference = proj.cli("run", "train.py").stdout.splitlines()
    assert lines == reference, lines




def test_resume_a_main_loop_over_a_shuffling_loader_keeps_the_recorded_order(tmp_path: Path) -> None:
    proj = CkProject(tmp_path)
    proj.write("train.py", LOADER_MAIN_LOOP)
    (proj.root / "fail.flag").write_text("x")
    failed = proj.run("train.py", check=False, env={"HINDLOG_EPSILON": "0.9"})
    assert failed.returncode == 1 and "the disk went away" in failed.stderr
    (run_id,) = proj.run_ids()
    checkpointed = proj.checkpointed_iterations(run_id)
    assert checkpointed and max(checkpointed) < 6, checkpointed
    logged = proj.by_iteration(run_id)  # steps 0-6, as the uninterrupted script logs them
    (proj.root / "fail.flag").unlink()
    # From another directory (the store named by HINDLOG_DIR): the code is the project's.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proj.cli("resume", run_id, cwd=elsewhere)
    resumed = proj.by_iteration(run_id)
    # The steps after the checkpoint, logged again, read the same batches as before the failure.
    assert {k: v for k, v in resumed.items() if k[0] <= 6} == logged
    assert sorted({k[0] for k in resumed}) == list(range(10))


PERSISTENT_LOADER = """
import os, time
import torch
import hindlog as hl
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
w = torch.zeros(2)
hl.checkpoints(w=w)
loader = DataLoader(TensorDataset(torch.arange(8.0)), batch_size=4, num_workers=1, persistent_workers=True)
for epoch in hl.loop("epoch", range(4)):
    for (x,) in hl.loop("step", loader):
        w += x.sum()
        time.sleep(0.05)
    hl.log("w", float(w.sum()))
    if epoch == 2 and os.path.exists("fail.flag"):
        raise RuntimeError("crashed")
"""


def test_resume_says_that_persistent_dataloader_workers_draw_anew(tmp_path: Path) -> None:
    """A resumed run's persistent DataLoader workers seed themselves from the resumed process's
    generator, not as the record's did at its first epoch: their random augmentations differ
    from an uninterrupted run's, and resume said nothing."""
    pytest.importorskip("torch")
    proj = CkProject(tmp_path)
    proj.write("train.py", PERSISTENT_LOADER)
    (proj.root / "fail.flag").write_text("x")
    failed = proj.run("train.py", check=False, env={"HINDLOG_EPSILON": "0.9"})
    assert failed.returncode == 1, failed.stderr
    (proj.root / "fail.flag").unlink()
    (run_id,) = proj.run_ids()
    resumed = proj.cli("resume", run_id)
    assert "the DataLoader 'loader' keeps persistent workers" in resumed.stderr, resumed.stderr


FORGOT_SCHEDULER = """
import json, os, time
import torch
import hindlog as hl

torch.manual_seed(0)
X, y = torch.randn(64, 4), torch.randn(64, 1)
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
hl.checkpoints(model=model, opt=opt)
for epoch in hl.loop("epoch", range(8)):
    for i in hl.loop("step", range(0, 64, 16)):
        loss = ((model(X[i:i + 16]) - y[i:i + 16]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    sched.step()
    hl.log("loss", loss.item())
    hl.log("lr", sched.get_last_lr()[0])
    if epoch == 5 and os.path.exists("fail.flag"):
        raise RuntimeError("the node went away")
    time.sleep(0.05)
print(json.dumps({"run": hl.run_id()}))
"""


def test_a_scheduler_hl_checkpoints_leaves_out_is_checkpointed_and_resumed(tmp_path: Path) -> None:
    """``hl.checkpoints(model=model, opt=opt)`` without the scheduler the main loop steps: a
    resumed run started it anew, and trained its last epochs with the first epochs' rate. The
    record now checkpoints it from its second iteration on, and says to name it."""
    pytest.importorskip("torch")
    proj = CkProject(tmp_path)
    proj.write("train.py", FORGOT_SCHEDULER)
    (proj.root / "fail.flag").write_text("x")
    failed = proj.run("train.py", check=False, env={"HINDLOG_EPSILON": "0.9"})
    assert failed.returncode == 1 and "the node went away" in failed.stderr
    assert "checkpointing sched as well: the main loop changes it" in failed.stderr, failed.stderr
    assert "hl.checkpoints(sched=sched, ...)" in failed.stderr
    (run_id,) = proj.run_ids()
    assert "sched" in proj.cli("show", run_id).stdout
    (proj.root / "fail.flag").unlink()
    proj.cli("resume", run_id)
    reference_id = last_json(proj.run("train.py").stdout)["run"]
    assert proj.by_iteration(run_id) == proj.by_iteration(reference_id)


CLASS_IN_SCRIPT = """
import json, os, time
import numpy as np
import hindlog as hl

""" + RUNNING_MEAN_CLASS + """

rng = np.random.default_rng(0)
w = np.zeros(3)
stats = RunningMean()
hl.checkpoints(w=w, rng=rng)
for epoch in hl.loop("epoch", range(6)):
    w += rng.normal(size=3)
    stats.update(float(w.sum()))
    hl.log("mean", stats.mean)
    if epoch == 3 and os.path.exists("fail.flag"):
        raise RuntimeError("preempted")
    time.sleep(0.05)
print(json.dumps({"run": hl.run_id()}))
"""


def test_resume_a_run_whose_checkpoints_hold_an_object_of_the_scripts_own_class(tmp_path: Path) -> None:
    """``hindlog resume`` read the latest checkpoint in its own process to choose where to start,
    and unpickling the script's ``RunningMean`` there failed with a traceback."""
    proj = CkProject(tmp_path)
    proj.write("train.py", CLASS_IN_SCRIPT)
    (proj.root / "fail.flag").write_text("x")
    failed = proj.run("train.py", check=False, env={"HINDLOG_EPSILON": "0.9"})
    assert failed.returncode == 1 and "preempted" in failed.stderr
    (run_id,) = proj.run_ids()
    (proj.root / "fail.flag").unlink()
    resumed = proj.cli("resume", run_id)
    assert f"resuming run {run_id} after iteration" in resumed.stderr, resumed.stderr
    reference_id = last_json(proj.run("train.py").stdout)["run"]
    assert proj.by_iteration(run_id) == proj.by_iteration(reference_id)


LONG_FLAKY = """
import os, time
import numpy as np
import hindlog as hl

w = np.zeros(3)
hl.checkpoints(w=w)
for epoch in hl.loop("epoch", range(200)):
    w += 1.0
    hl.log("w", float(w[0]))
    if epoch == 3 and os.path.exists("fail.flag"):
        raise RuntimeError("preempted")
    if epoch >= 6:
        open("resumed.txt", "w").write(str(epoch))
    time.sleep(0.05)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_a_signal_that_stops_hindlog_resume_stops_the_resumed_run(tmp_path: Path, signum: int) -> None:
    """``timeout``, a scheduler or ``docker stop`` sends SIGTERM to ``hindlog resume``: the
    resumed script, its child, went on training as an orphan, its run shown "running" (also
    after a ``kill -9`` of ``hindlog resume``). It now stops too, and its run is saved as killed."""
    proj = CkProject(tmp_path)
    proj.write("train.py", LONG_FLAKY)
    (proj.root / "fail.flag").write_text("x")
    proj.run("train.py", check=False, env={"HINDLOG_EPSILON": "0.9"})
    (run_id,) = proj.run_ids()
    (proj.root / "fail.flag").unlink()
    cli = subprocess.Popen([str(HINDLOG_SCRIPT), "resume", run_id], cwd=proj.root, env=proj.env(None),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (proj.root / "resumed.txt").exists(), timeout=60)
        cli.send_signal(signum)
        cli.communicate(timeout=30)
        wait_for(lambda: proj.run_info(run_id)["status"] == "killed", timeout=30)
        seen = (proj.root / "resumed.txt").read_text()
        time.sleep(0.5)
        assert (proj.root / "resumed.txt").read_text() == seen  # no longer training
    finally:
        if cli.poll() is None:
            cli.kill()


UNFREEZES = """
import json, os, time
import torch
import hindlog as hl

torch.manual_seed(0)
back, head = torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)
model = torch.nn.Sequential(back, head)
back.requires_grad_(False)
opt = torch.optim.Adam(head.parameters(), lr=0.01)
hl.checkpoints(model=model, opt=opt)
X, y = torch.randn(32, 4), torch.randn(32, 1)
for epoch in hl.loop("epoch", range(7)):
    if epoch == 2:
        back.requires_grad_(True)
        opt.add_param_group({"params": back.parameters(), "lr": 0.001})
    for i in hl.loop("step", range(0, 32, 8)):
        loss = ((model(X[i:i + 8]) - y[i:i + 8]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    hl.log("loss", loss.item())
    if epoch == 4 and os.path.exists("fail.flag"):
        raise RuntimeError("preempted")
    time.sleep(0.05)
print(json.dumps({"run": hl.run_id()}))
"""


def test_resume_of_a_run_that_added_an_optimizer_group_starts_before_the_change(tmp_path: Path) -> None:
    """Unfreezing a backbone with ``opt.add_param_group`` at epoch 2, the run failed at epoch 4:
    its latest checkpoints have two groups, the resumed script's optimizer one, and resume failed
    with a traceback (and flagged the run failed again). It resumes from before the change."""
    pytest.importorskip("torch")
    proj = CkProject(tmp_path)
    proj.write("train.py", UNFREEZES)
    (proj.root / "fail.flag").write_text("x")
    proj.run("train.py", check=False, env={"HINDLOG_EPSILON": "0.9"})
    (run_id,) = proj.run_ids()
    assert max(proj.checkpointed_iterations(run_id)) >= 2
    (proj.root / "fail.flag").unlink()
    resumed = proj.cli("resume", run_id)
    assert re.search(r"resuming after iteration [01] instead: the run added optimizer parameter groups", resumed.stderr), resumed.stderr
    reference_id = last_json(proj.run("train.py").stdout)["run"]
    assert proj.by_iteration(run_id) == proj.by_iteration(reference_id)
    assert proj.run_info(run_id)["status"] == "finished"
