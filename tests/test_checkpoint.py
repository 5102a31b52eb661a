"""Taking checkpoints while recording: where (nested-loop exits and iteration ends), what they
hold, the overhead policy, deduplication, and faults: unpicklable state, a write error or
full disk while persisting, and ``kill -9`` in the middle of a persist.

Real subprocesses with the venv's Python, real SQLite, real files under ``.hindlog/objects``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import hindlog as hl
from hindlog.checkpoint import EXIT_SECONDS, LOCAL_BASELINE, MAX_EPISODE_ENTRIES, NESTED_ITERATION_SECONDS, Policy, read_checkpoint
from hindlog.cli import _ranges

from ckpt_helpers import (
    ITERATION_END,
    CkProject,
    count_checkpoints,
    last_json,
    read_all_checkpoints,
    stop,
    wait_for,
)


# ----------------------------------------------------------------- where checkpoints are taken, what they hold

BLOCKS = """
import json, threading, time
import numpy as np
import hindlog as hl

np.random.seed(0)
w = np.zeros(3)
hl.checkpoints(w=w)
X = np.random.randn(32, 3)
y = X @ np.array([1.0, 2.0, 3.0])
best = None
for epoch in hl.loop("epoch", range(8)):
    for b in hl.loop("train", range(0, 32, 8)):
        err = X[b:b + 8] @ w - y[b:b + 8]
        w -= 0.05 * X[b:b + 8].T @ err / 8
        loss = float(np.mean(err ** 2))
        guard = threading.Lock()
    total = 0.0
    for b in hl.loop("val", range(0, 32, 8)):
        total += float(np.mean((X[b:b + 8] @ w - y[b:b + 8]) ** 2))
    with guard:
        val = total / 4
    best = val if best is None or val < best else best
    hl.log("loss", loss)
    hl.log("total", total)
    hl.log("best", best)
    hl.log("w", w.copy())
    with open("losses.txt", "a") as f:  # closed at the iteration's end: nothing to checkpoint, nor to warn of
        f.write(f"{loss}\\n")
    if epoch == 6:
        break
    time.sleep(0.2)
print(json.dumps({"run": hl.run_id()}))
"""


def test_checkpoints_at_nested_loop_exits_and_iteration_ends_hold_live_locals(tmp_path: Path) -> None:
    proj = CkProject(tmp_path)
    proj.write("train.py", BLOCKS)
    proc = proj.run("train.py", env={"HINDLOG_EPSILON": "0.9"})
    run_id = last_json(proc.stdout)["run"]
    # An unpicklable local read after a loop: one warning naming it; the checkpoint is still taken.
    assert proc.stderr.count("cannot be checkpointed") == 1, proc.stderr
    assert "'guard'" in proc.stderr and "'f'" not in proc.stderr

    values = proj.by_iteration(run_id)
    rows = proj.checkpoints(run_id)
    by_iteration: dict[int, dict[int, tuple[str | None, str]]] = {}
    for it, block, loop, manifest, nbytes in rows:
        by_iteration.setdefault(it, {})[block] = (loop, manifest)
        assert nbytes > 0
    assert len(by_iteration) >= 3, f"ε=0.9 and a tiny state should checkpoint most iterations: {sorted(by_iteration)}"
    # Iteration 6 left the loop by `break` and 7 never ran: neither has a checkpoint.
    assert max(by_iteration) <= 5, sorted(by_iteration)

    objects = proj.store().objects
    for it, blocks in by_iteration.items():
        assert {b: loop for b, (loop, _m) in blocks.items()} == {0: "train", 1: "val", ITERATION_END: None}, blocks
        train = read_checkpoint(objects, blocks[0][1])
        val = read_checkpoint(objects, blocks[1][1])
        end = read_checkpoint(objects, blocks[ITERATION_END][1])
        for loaded, block in ((train, 0), (val, 1), (end, ITERATION_END)):
            assert (loaded.iteration, loaded.block) == (it, block)
            assert loaded.position == it + 1  # where the main loop's iterator continues
            assert set(loaded.rng) >= {"python", "numpy"}
            assert loaded.kinds == {"w": "array"}
            assert loaded.objects["w"].tolist() == values[(it, "w")][0]
        # The last batch's loss is read after the training loop; the accumulated total after
        # the validation loop; `best` is carried from one epoch to the next.
        assert train.locals["loss"] == values[(it, "loss")][0]
        assert "total" not in train.locals
        assert val.locals["total"] == values[(it, "total")][0]
        assert end.locals["best"] == values[(it, "best")][0]
        assert "guard" in train.unrestorable and "guard" not in train.locals
    # `hindlog show` counts checkpointed iterations, and the snapshots apart.
    n = len(by_iteration)
    assert f"checkpoints  {n} iterations: {_ranges(sorted(by_iteration))} ({3 * n} snapshots, " in proj.cli("show", run_id).stdout


FUNCTION_BLOCK = """
import json, time
import numpy as np
import hindlog as hl


def train_epoch(w, X, y):
    running = 0.0
    for b in hl.loop("batch", range(0, 32, 8)):
        err = X[b:b + 8] @ w - y[b:b + 8]
        w -= 0.05 * X[b:b + 8].T @ err / 8
        running += float(np.mean(err ** 2))
    return running / 4


np.random.seed(0)
X = np.random.randn(32, 3)
y = X @ np.array([1.0, 2.0, 3.0])
w = np.zeros(3)
hl.checkpoints(w=w)
for epoch in hl.loop("epoch", range(5)):
    avg = train_epoch(w, X, y)
    hl.log("avg", avg)
    time.sleep(0.05)
print(json.dumps({"run": hl.run_id()}))
"""


def test_a_nested_loop_inside_a_function_the_main_loop_calls_is_a_block(tmp_path: Path) -> None:
    proj = CkProject(tmp_path)
    proj.write("train.py", FUNCTION_BLOCK)
    run_id = last_json(proj.run("train.py", env={"HINDLOG_EPSILON": "0.9"}).stdout)["run"]
    values = proj.by_iteration(run_id)
    objects = proj.store().objects
    rows = proj.checkpoints(run_id)
    assert len({it for it, *_ in rows}) >= 2, rows
    for it, block, loop, manifest, _n in rows:
        assert (block, loop) in ((0, "batch"), (ITERATION_END, None)), rows
        if block == 0:
            loaded = read_checkpoint(objects, manifest)
            # The function's accumulator, read after its loop, is held; the loop variable is not.
            assert loaded.locals["running"] / 4 == values[(it, "avg")][0]
            assert "b" not in loaded.locals and "err" not in loaded.locals
    assert {it for it, b, *_ in rows if b == 0} == {it for it, b, *_ in rows if b == ITERATION_END}


CHEAP = """
import json, time
import numpy as np
import hindlog as hl

state = np.zeros(16)
hl.checkpoints(state=state)
for epoch in hl.loop("epoch", range(6)):
    state += np.random.rand(16)
    hl.log("x", float(state.sum()))
    time.sleep(0.4)
print(json.dumps({"run": hl.run_id()}))
"""


def _without_startup_charge(script: str) -> str:
    """The script with hindlog's start-up charged at zero to the checkpoint budget: its size
    follows the machine's load, and on a loaded CI machine it once filled ε of a 2.4 s run."""
    return script.replace("import hindlog as hl\n", "import hindlog as hl\nfrom hindlog import record\nrecord.current().startup_seconds = 0.0\n")


def test_cheap_state_is_checkpointed_every_iteration_under_the_default_epsilon(tmp_path: Path) -> None:
    proj = CkProject(tmp_path)
    # The start-up's charge is tested below; here what decides is the checkpoints' own cost.
    proj.write("train.py", _without_startup_charge(CHEAP))
    run_id = last_json(proj.run("train.py").stdout)["run"]
    rows = proj.checkpoints(run_id)
    # No nested loop: the iterations are the blocks, checkpointed at their end only.
    assert {block for _it, block, *_ in rows} == {ITERATION_END}
    iterations = proj.checkpointed_iterations(run_id)
    # The code snapshot's background work is charged first, so the earliest iterations may go
    # without one; from the first one on, every iteration has one, unless
    # the disk stalled a write past the next iteration's start (never waited for: skipped,
    # and counted).
    info = proj.run_info(run_id)
    busy = (info.get("info") or {}).get("checkpoints_skipped_busy")
    assert iterations and 5 in iterations, iterations
    assert len(set(range(iterations[0], 6)) - set(iterations)) == busy, (iterations, busy)
    assert info["epsilon"] == 0.05
    assert info["overhead"] is not None and 0 <= info["overhead"] <= 0.05
    shown = proj.cli("show", run_id).stdout
    span = _ranges(iterations)  # "3-5", "5" alone, or "2-3, 5" after a skip
    assert len(rows) == len(iterations)  # one snapshot per iteration: no count of snapshots apart
    assert re.search(rf"checkpoints\s+{len(iterations)} iterations?: {re.escape(span)} \(\d+\.\d MiB before dedup\)", shown), shown
    assert re.search(r"overhead\s+\d+\.\d+% of wall time blocked; \d+\.\d+% charged in all \(bound 5\.0%\)", shown), shown


def test_epsilon_zero_takes_no_checkpoints_but_records_the_overhead(tmp_path: Path) -> None:
    proj = CkProject(tmp_path)
    proj.write("train.py", CHEAP.replace("import hindlog as hl\n", "import hindlog as hl\nhl.init(epsilon=0)\n").replace("0.4", "0.02"))
    run_id = last_json(proj.run("train.py").stdout)["run"]
    assert proj.checkpoints(run_id) == []
    info = proj.run_info(run_id)
    assert info["epsilon"] == 0.0
    assert info["overhead"] == 0.0
    assert info["status"] == "finished"
    shown = proj.cli("show", run_id).stdout
    assert re.search(r"checkpoints\s+0\b", shown), shown
    assert re.search(r"overhead\s+0\.00% of wall time blocked", shown), shown
    # HINDLOG_EPSILON=0 does the same without touching the script.
    proj.write("env.py", CHEAP.replace("0.4", "0.02"))
    run2 = last_json(proj.run("env.py", env={"HINDLOG_EPSILON": "0"}).stdout)["run"]
    assert proj.checkpoints(run2) == [] and proj.run_info(run2)["epsilon"] == 0.0


@pytest.mark.parametrize("epsilon", ["0"])
def test_hindlog_run_epsilon_option(tmp_path: Path, epsilon: str) -> None:
    proj = CkProject(tmp_path)
    proj.write("train.py", CHEAP.replace("0.4", "0.05"))
    proc = proj.cli("run", "--epsilon", epsilon, "train.py", check=False)
    assert proc.returncode == 0, proc.stderr
    (run_id,) = proj.run_ids()
    assert proj.run_info(run_id)["epsilon"] == float(epsilon)
    assert (proj.checkpoints(run_id) == []) == (epsilon == "0")


EXPENSIVE = """
import json, time
import numpy as np
import hindlog as hl

state = np.zeros(1_000_000)  # 8 MB, changed every iteration: hashing and writing it costs more than an iteration
hl.checkpoints(state=state)
a = np.random.rand(300, 300)
for epoch in hl.loop("epoch", range(60)):
    state += 1
    t = time.perf_counter()
    # Long enough for ε to pay for a checkpoint now and then also on a loaded machine.
    while time.perf_counter() - t < 0.06:
        a = a @ a / 300.0
    hl.log("x", float(state[0]))
print(json.dumps({"run": hl.run_id()}))
"""


def test_expensive_state_is_checkpointed_sparsely_within_epsilon(tmp_path: Path) -> None:
    proj = CkProject(tmp_path)
    proj.write("train.py", _without_startup_charge(EXPENSIVE))
    run_id = last_json(proj.run("train.py").stdout)["run"]
    iterations = proj.checkpointed_iterations(run_id)
    info = proj.run_info(run_id)
    assert 1 <= len(iterations) <= 30, iterations
    assert info["overhead"] <= info["epsilon"] == 0.05, info["overhead"]
    assert read_all_checkpoints(proj, run_id) == len(proj.checkpoints(run_id))
    assert [v for (_it, name), v in proj.by_iteration(run_id).items() if name == "x"] == [[float(i + 1)] for i in range(60)]


def _policy_with_baseline(iteration_seconds: float = 0.1) -> Policy:
    policy = Policy(0.05, start=0.0)
    for _ in range(5):
        policy.observe(iteration_seconds, persisting=0.0, background_cpu=0.0)
    return policy


BUSY = """
import json
import time
import torch
import hindlog as hl
state = torch.zeros(32_000_000)  # 128 MB: writing it takes longer than an iteration
hl.checkpoints(state=state)
for epoch in hl.loop("epoch", range(40)):
    state += 1.0
    time.sleep(0.05)  # the copy into a pooled buffer fits the budget of every iteration
    hl.log("x", float(state[0]))
print(json.dumps({"run": hl.run_id()}))
"""


def test_an_iteration_is_skipped_not_waited_for_while_the_previous_checkpoint_is_written(tmp_path: Path) -> None:
    proj = CkProject(tmp_path)
    proj.write("train.py", BUSY)
    run_id = last_json(proj.run("train.py", env={"HINDLOG_EPSILON": "0.9"}).stdout)["run"]
    iterations = proj.checkpointed_iterations(run_id)
    busy = proj.run_info(run_id)["info"]["checkpoints_skipped_busy"]
    # The budget had room, but the previous persist still ran: skipped and counted, never waited
    # for, except in the last iteration, which queues behind it. The last one budgets the whole
    # write it waits for (hundreds of ms on a slow disk): 40 iterations leave room for it.
    # Copying a tensor into a pooled buffer takes a fraction of writing it: the budget wants every
    # iteration and the persister refuses about every other one. (A NumPy array, hashed and copied
    # into fresh memory by the training thread, costs nearly as much as its write: the budget,
    # not the persister, would then space the checkpoints.)
    assert busy >= 1 and 39 in iterations, (iterations, busy)
    assert len(iterations) + busy <= 40
    shown = proj.cli("show", run_id).stdout
    assert f"{busy} iteration{'s' if busy > 1 else ''} skipped while the previous checkpoint was still being written" in shown


SMALL_EARLY_DECISION = """
import json
import time
import numpy as np
import hindlog as hl
w = np.zeros(1000)
hl.checkpoints(w=w)
for epoch in hl.loop("epoch", range(12)):
    # The iteration is decided at this loop's exit, a moment after the previous iteration's
    # checkpoint went to the persister, whose fsyncs take longer than that.
    for k in hl.loop("step", range(3)):
        w += k
    time.sleep(0.03)
    hl.log("x", float(w[0]))
print(json.dumps({"run": hl.run_id()}))
"""


def test_a_small_state_is_checkpointed_behind_the_previous_iterations_persist(tmp_path: Path) -> None:
    proj = CkProject(tmp_path)
    proj.write("train.py", _without_startup_charge(SMALL_EARLY_DECISION))
    run_id = last_json(proj.run("train.py", env={"HINDLOG_EPSILON": "0.9"}).stdout)["run"]
    iterations = proj.checkpointed_iterations(run_id)
    busy = proj.run_info(run_id)["info"]["checkpoints_skipped_busy"]
    # Skipped only where two iterations' persists were still running (a disk stall: up to three
    # of them on this shared machine's disk, in a fresh-clone CI run). Skipped whenever one
    # persist ran, every other iteration went without a checkpoint (6 of 12).
    assert len(iterations) >= 9 and len(iterations) + busy == 12, (iterations, busy)
    assert read_all_checkpoints(proj, run_id) == len(proj.checkpoints(run_id))


def _persist(policy: Policy, cpu: float, seconds: float, persisting: float, quiet: float = 0.1) -> None:
    """One persist of ``cpu`` seconds overlapping one iteration that took ``seconds``, then the
    quiet ones that end its measurement."""
    before = policy.background_cpu
    policy.charge(0.0, cpu, checkpoint=False)
    policy.observe(seconds, persisting=persisting, background_cpu=before)
    for _ in range(LOCAL_BASELINE):
        policy.observe(quiet, persisting=0.0, background_cpu=before + cpu)


def test_policy_charges_the_slowdown_a_persist_causes_beyond_its_cpu_time() -> None:
    policy = _policy_with_baseline(0.1)
    # Persists overlap one iteration each: 40 ms slower than the quiet ones, 20 ms of persister CPU.
    policy.charge(0.0, 0.02, checkpoint=False)
    policy.observe(0.14, persisting=0.06, background_cpu=0.0)
    # Measured once the persist is over and the quiet level after it is known.
    for _ in range(LOCAL_BASELINE):
        assert policy.weight == 1.0
        policy.observe(0.1, persisting=0.0, background_cpu=0.02)
    assert policy.weight == pytest.approx(2.0)
    _persist(policy, 0.02, 0.14, 0.06)
    _persist(policy, 0.02, 0.14, 0.06)
    assert policy.weight == pytest.approx(2.0)
    # The CPU charged at the old weight is made up to the new one: 3 x 40 ms in all.
    assert policy.spent == pytest.approx(0.12)
    # And the next checkpoint's expected cost uses it.
    policy.persist_cpu = 0.02
    policy.cost = 0.01
    assert not policy.decide(5, now=4.0)  # 0.12 + 0.01 + 2 x 0.02 > 0.8 x 0.05 x 4 s
    assert policy.decide(5, now=5.0)


def test_policy_counts_iterations_a_persist_barely_touched_as_quiet() -> None:
    # With a checkpoint every other iteration, the persister's small jobs (a commit, the tail of
    # a write) overlap nearly every iteration by a fraction of a millisecond. Those iterations
    # make the baseline, so the slowdown of the real persists is still measured.
    policy = Policy(0.05, start=0.0)
    for _ in range(3):
        policy.observe(0.1, persisting=0.0005, background_cpu=0.0)
    for _ in range(3):
        before = policy.background_cpu
        policy.charge(0.0, 0.02, checkpoint=False)
        policy.observe(0.14, persisting=0.06, background_cpu=before)
        policy.observe(0.1, persisting=0.0008, background_cpu=before + 0.02)
    assert policy.weight == pytest.approx(2.0)


def test_policy_weight_is_at_least_the_cpu_time_and_ignores_noise_beyond_the_persist() -> None:
    # Persists that do not slow training are still charged their CPU time.
    policy = _policy_with_baseline(0.1)
    for _ in range(3):
        _persist(policy, 0.02, 0.1, 0.03)
    assert policy.weight == 1.0 and policy.spent == pytest.approx(0.06)
    # Iterations 2 s slower while 10 ms persists ran: at most those 10 ms are their doing.
    policy = _policy_with_baseline(0.1)
    for _ in range(3):
        _persist(policy, 0.005, 2.1, 0.01)
    assert policy.weight == pytest.approx(2.0)
    # Without enough quiet iterations to compare with, nothing is measured.
    policy = Policy(0.05, start=0.0)
    for _ in range(3):
        policy.charge(0.0, 0.02, checkpoint=False)
        policy.observe(0.5, persisting=0.1, background_cpu=policy.background_cpu - 0.02)
        policy.observe(0.1, persisting=0.0, background_cpu=policy.background_cpu)
    assert policy.weight == 1.0


def _drifting_run(first: float, change: float, extra: float, overlapped: int = 5) -> Policy:
    """A policy that observed a machine whose speed drifts steadily (other jobs): iteration ``i``
    takes ``first + change * i`` seconds. Five quiet iterations, then ``overlapped`` that persists
    overlap (60 ms each, 20 ms of persister CPU each), each ``extra`` seconds slower still, then
    quiet ones."""
    policy = Policy(0.05, start=0.0)
    for i in range(5):
        policy.observe(first + change * i, persisting=0.0, background_cpu=0.0)
    policy.charge(0.0, 0.02 * overlapped, checkpoint=False)
    for i in range(5, 5 + overlapped):
        policy.observe(first + change * i + extra, persisting=0.06, background_cpu=0.0)
        assert len(policy._episode.entries) <= MAX_EPISODE_ENTRIES
    for i in range(5 + overlapped, 5 + overlapped + LOCAL_BASELINE):
        policy.observe(first + change * i, persisting=0.0, background_cpu=0.02 * overlapped)
    return policy


def test_policy_does_not_charge_the_machine_slowing_down_during_a_persist_to_it() -> None:
    # Against the median of the latest quiet iterations alone, the drift looked like up to 60 ms
    # of slowdown per iteration (the most a 60 ms overlap can add): weight 2.4.
    policy = _drifting_run(0.1, 0.02, extra=0.0)
    assert policy.weight == 1.0
    assert policy.spent == pytest.approx(0.1)
    # What the persists add beyond the drift is still measured: 40 ms an iteration, 20 ms of CPU.
    assert _drifting_run(0.1, 0.02, extra=0.04).weight == pytest.approx(2.0)


def test_policy_measures_a_persist_while_the_machine_speeds_up() -> None:
    # Against the quiet level before them, iterations that the persists slowed by 40 ms while
    # the machine sped up looked no slower than quiet ones: weight 1.
    assert _drifting_run(0.4, -0.02, extra=0.04).weight == pytest.approx(2.0)


def test_policy_measures_a_persist_that_overlaps_many_iterations() -> None:
    # Hundreds of short iterations under one long persist are measured, in bounded memory.
    policy = _drifting_run(0.1, 0.0005, extra=0.04, overlapped=3 * MAX_EPISODE_ENTRIES + 1)
    assert policy.weight == pytest.approx(2.0)


def test_policy_compares_a_persist_with_the_quiet_iterations_just_before_and_after_it() -> None:
    policy = Policy(0.05, start=0.0)
    for _ in range(10):
        policy.observe(0.2, persisting=0.0, background_cpu=0.0)
    for _ in range(3):  # the machine got faster
        policy.observe(0.1, persisting=0.0, background_cpu=0.0)
    _persist(policy, 0.02, 0.14, 0.06)
    assert policy.weight == pytest.approx(2.0)
    # One slow quiet iteration right after a persist is noise, not the level to compare with.
    policy = _policy_with_baseline(0.1)
    policy.charge(0.0, 0.02, checkpoint=False)
    policy.observe(0.14, persisting=0.06, background_cpu=0.0)
    for quiet in (0.5, 0.1, 0.1):
        policy.observe(quiet, persisting=0.0, background_cpu=0.02)
    assert policy.weight == pytest.approx(2.0)


def test_a_recorded_run_reports_what_the_policy_charged(tmp_path: Path) -> None:
    proj = CkProject(tmp_path)
    # A nested loop of 1,000 iterations per epoch; ε = 0.2 leaves room for checkpoints whatever
    # the machine's load makes of the start-up.
    proj.write("train.py", CHEAP.replace("    hl.log(", "    for step in hl.loop('step', range(1000)):\n        pass\n    hl.log(", 1))
    run_id = last_json(proj.run("train.py", env={"HINDLOG_EPSILON": "0.2"}).stdout)["run"]
    charged = proj.run_info(run_id)["info"]["checkpoint_charged"]
    assert charged["blocked_seconds"] > 0 and charged["persister_cpu_seconds"] > 0
    assert 1.0 <= charged["background_weight"] <= 4.0
    # hindlog's import and set-up are charged too: real, and far from the run's 2.4 s.
    assert 0 < charged["startup_seconds"] < 1.0  # hindlog's own start, not the run's
    # Estimated: the nested loop's iterations up to the last decision (at the last iteration's
    # loop exit: all of them).
    assert charged["nested_iterations"] == 6000 and charged["nested_loop_seconds"] == pytest.approx(6000 * NESTED_ITERATION_SECONDS)
    # The catalog writer committed the epochs' values before the last decision: its CPU time is
    # charged, and is a small part of the run's.
    assert 0 < charged["writer_cpu_seconds"] < 1.0
    # The run's end comes after the last decision: an estimate, charged from the start.
    assert charged["exit_seconds"] == EXIT_SECONDS
    shown = proj.cli("show", run_id).stdout
    total = (charged["startup_seconds"] + charged["exit_seconds"] + charged["blocked_seconds"]
             + charged["background_weight"] * charged["persister_cpu_seconds"] + charged["writer_cpu_seconds"] + charged["nested_loop_seconds"])
    assert re.search(rf"charged\s+{total:.2f}s: {charged['startup_seconds']:.2f}s start-up \+ {EXIT_SECONDS:.3f}s for the run's end \(estimated\)"
                     rf" \+ {charged['blocked_seconds']:.2f}s blocked \+ "
                     rf"{charged['persister_cpu_seconds']:.2f}s of background work \(checkpoint writes, the code snapshot\) x {charged['background_weight']:.2f}"
                     rf" .* \+ {charged['writer_cpu_seconds']:.2f}s of the catalog writer's CPU time"
                     rf" \+ {charged['nested_loop_seconds']:.2f}s for 6,000 iterations of nested loops \(estimated\)", shown), shown


def test_a_start_up_that_spent_the_budget_leaves_no_room_for_checkpoints(tmp_path: Path) -> None:
    # The same cheap loop that gets a checkpoint every iteration, after a start-up charged at
    # 100 s: ε of the run's 2.5 s cannot pay for any checkpoint, the last one included.
    proj = CkProject(tmp_path)
    proj.write("train.py", CHEAP.replace("import hindlog as hl\n", "import hindlog as hl\nfrom hindlog import record\nrecord.current().startup_seconds = 100.0\n"))
    run_id = last_json(proj.run("train.py").stdout)["run"]
    assert proj.checkpointed_iterations(run_id) == []
    assert proj.run_info(run_id)["info"]["checkpoint_charged"]["startup_seconds"] == 100.0
    assert "(hindlog's start-up, 100.00s, took most of what ε = 0.05 allows" in proj.cli("show", run_id).stdout


def test_show_says_when_the_code_snapshot_took_the_budget(tmp_path: Path) -> None:
    # git that burns 0.3 s of CPU before each of its commands: the snapshot's processes are charged to ε,
    # as background CPU, and the 2.5 s run has nothing left for checkpoints after it.
    proj = CkProject(tmp_path)
    real_git = shutil.which("git")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "git").write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "-C" ]; then {sys.executable} -c "import time; t = time.process_time()\nwhile time.process_time() - t < 0.3: pass"; fi\n'
        f'exec {real_git} "$@"\n'
    )
    (bin_dir / "git").chmod(0o755)
    # The run starts at hl.checkpoints; the snapshot is charged once it is done, before the loop.
    proj.write("train.py", CHEAP.replace("hl.checkpoints(state=state)\n", "hl.checkpoints(state=state)\ntime.sleep(4)\n"))
    env = {"PATH": f"{bin_dir}{os.pathsep}{proj.env()['PATH']}"}
    run_id = last_json(proj.run("train.py", env=env).stdout)["run"]
    charged = proj.run_info(run_id)["info"]["checkpoint_charged"]
    assert charged["snapshot_cpu_seconds"] >= 1.0, charged
    assert proj.checkpointed_iterations(run_id) == []
    assert "(the snapshot of the code, " in proj.cli("show", run_id).stdout


# ----------------------------------------------------------------- declaring state

UNPICKLABLE = """
import threading
import numpy as np
import hindlog as hl

class Holder:
    def __init__(self):
        self.lock = threading.Lock()
        self.fn = lambda x: x + 1

w = np.zeros(3)
try:
    hl.checkpoints(w=w, holder=Holder())
except TypeError as e:
    print("TypeError:", e)
else:
    print("no error")
# A declared object with state_dict()/load_state_dict() needs no pickling.
class Stateful:
    def __init__(self):
        self.lock = threading.Lock()
        self.n = 0
    def state_dict(self):
        return {"n": self.n}
    def load_state_dict(self, d):
        self.n = d["n"]

hl.checkpoints(w=w, counter=Stateful())
print("ok")
"""


def test_unpicklable_object_without_state_dict_is_a_clear_type_error(tmp_path: Path) -> None:
    proj = CkProject(tmp_path)
    proj.write("train.py", UNPICKLABLE)
    out = proj.run("train.py").stdout
    line = next(line for line in out.splitlines() if line.startswith(("TypeError", "no error")))
    assert line.startswith("TypeError"), out
    assert "holder" in line and "Holder" in line, line
    assert "state_dict" in line and "pickle" in line, line
    assert out.strip().endswith("ok")


# ----------------------------------------------------------------- dedup

FROZEN = """
import json, time
import torch, torch.nn as nn
import hindlog as hl

torch.set_num_threads(1)

def train(runs):
    hl.init()
    torch.manual_seed(0)
    frozen = nn.Linear(200, 100)  # 80 000 bytes of weight: stored as an object of its own
    for p in frozen.parameters():
        p.requires_grad_(False)
    model = nn.Sequential(frozen, nn.ReLU(), nn.Linear(100, 2))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    hl.checkpoints(model=model, opt=opt)
    x = torch.randn(64, 200)
    y = torch.randint(0, 2, (64,))
    for epoch in hl.loop("epoch", range(4)):
        for b in hl.loop("step", range(0, 64, 16)):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[b:b + 16]), y[b:b + 16])
            loss.backward()
            opt.step()
        hl.log("loss", loss.item())
        time.sleep(0.05)
    runs.append(hl.run_id())
    hl.finish()

runs = []
train(runs)
train(runs)
print(json.dumps({"runs": runs}))
"""


def test_frozen_layer_is_stored_once_across_checkpoints_and_runs(tmp_path: Path) -> None:
    proj = CkProject(tmp_path)
    proj.write("train.py", FROZEN)
    runs = last_json(proj.run("train.py", env={"HINDLOG_EPSILON": "0.9"}).stdout)["runs"]
    assert len(runs) == 2
    frozen_digests: set[str] = set()
    trainable: set[str] = set()
    references = 0
    for run_id in runs:
        rows = proj.checkpoints(run_id)
        assert len({it for it, *_ in rows}) >= 2, f"want several checkpoints to dedup across: {rows}"
        for _it, _block, _loop, manifest, _n in rows:
            entries = proj.manifest(manifest)["tensors"]
            weights = [e for e in entries if e[3] == [100, 200]]
            assert len(weights) == 1, entries
            frozen_digests.add(weights[0][0])
            references += 1
            trainable.update(e[0] for e in entries if e[3] == [2, 100])
        assert read_all_checkpoints(proj, run_id) == len(rows)
    # One object for the frozen weight, however many checkpoints (of both runs) name it.
    assert len(frozen_digests) == 1 and references >= 4
    (digest,) = frozen_digests
    assert not digest.startswith("@")
    path = proj.store().objects.path(digest)
    assert path.stat().st_size == 100 * 200 * 4
    same_size = [p for p in proj.objects_dir.rglob("*") if p.is_file() and p.stat().st_size == 100 * 200 * 4]
    assert same_size == [path]
    # The first run wrote the weight once; the second found it stored already.
    written = [proj.run_info(r)["info"].get("checkpoint_bytes_written") for r in runs]
    assert written == [100 * 200 * 4, 0], written


# ----------------------------------------------------------------- a write error / full disk while persisting

DISK_TROUBLE = """
import json, os, resource, signal, time
import numpy as np
import hindlog as hl

MODE = os.environ["TROUBLE"]
objects = os.path.join(os.environ["HINDLOG_DIR"], "objects")
big = np.zeros(500_000)  # 4 MB, changed every epoch
small = np.zeros(4)
hl.checkpoints(big=big, small=small)

def trouble_on():
    if MODE == "objects-is-a-file":
        # The objects directory is replaced by a regular file: every mkdir/open under it fails.
        os.rename(objects, objects + ".away")
        with open(objects, "w") as f:
            f.write("not a directory")
    else:
        # A file-size limit below the checkpoint's size: writes fail with EFBIG (root too).
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 * 1024 * 1024, hard))

def trouble_off():
    if MODE == "objects-is-a-file":
        os.unlink(objects)
        os.rename(objects + ".away", objects)
    else:
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))

for epoch in hl.loop("epoch", range(10)):
    if epoch == 3:
        time.sleep(0.3)  # let the persists of earlier epochs finish
        trouble_on()
    if epoch == 7:
        time.sleep(0.3)  # let the persists that must fail finish failing
        trouble_off()
    for b in hl.loop("batch", range(3)):
        big += 1
        small += b
    hl.log("x", float(big[0]))
    hl.log("y", float(small.sum()))
    print(json.dumps({"epoch": epoch}), flush=True)
    time.sleep(0.08)
print(json.dumps({"run": hl.run_id()}))
"""


@pytest.mark.parametrize("mode", ["objects-is-a-file", "file-size-limit"])
def test_write_error_while_persisting_drops_the_checkpoint_and_training_goes_on(tmp_path: Path, mode: str) -> None:
    proj = CkProject(tmp_path)
    proj.write("train.py", DISK_TROUBLE)
    proc = proj.run("train.py", env={"TROUBLE": mode, "HINDLOG_EPSILON": "0.9"})
    assert proc.returncode == 0
    run_id = last_json(proc.stdout)["run"]
    # Exactly one warning, however many checkpoints were dropped.
    assert proc.stderr.count("could not write the checkpoint") == 1, proc.stderr
    assert "training goes on" in proc.stderr
    assert ("Not a directory" if mode == "objects-is-a-file" else "File too large") in proc.stderr, proc.stderr
    assert [json.loads(l)["epoch"] for l in proc.stdout.splitlines() if l.startswith('{"epoch"')] == list(range(10))
    info = proj.run_info(run_id)
    assert info["status"] == "finished"
    assert "checkpoint_dropped" in info["flags"]
    # Every log is there, once.
    values = proj.by_iteration(run_id)
    assert [values[(e, "x")] for e in range(10)] == [[float(3 * (e + 1))] for e in range(10)]
    assert [values[(e, "y")] for e in range(10)] == [[float(4 * 3 * (e + 1))] for e in range(10)]
    # No checkpoint of the troubled epochs is listed; the ones listed (before, and after the
    # trouble went away) read back intact.
    iterations = proj.checkpointed_iterations(run_id)
    assert not set(iterations) & {4, 5, 6}, iterations
    assert any(i < 3 for i in iterations), iterations
    assert any(i >= 7 for i in iterations), f"checkpoints did not come back once the disk was fine: {iterations}"
    assert read_all_checkpoints(proj, run_id) == len(proj.checkpoints(run_id))
    shown = proj.cli("show", run_id).stdout
    assert "checkpoint_dropped" in shown


SNAPSHOT_TROUBLE = """
import json, time
import numpy as np
import hindlog as hl

class Flaky:
    \"\"\"A user object whose state_dict fails in some epochs (host memory exhausted, say).\"\"\"
    def __init__(self):
        self.w = np.zeros(4)
        self.epoch = 0
    def state_dict(self):
        if self.epoch in (3, 4):
            raise MemoryError("cannot allocate the copy")
        return {"w": self.w.copy(), "epoch": self.epoch}
    def load_state_dict(self, state):
        self.w[:] = state["w"]
        self.epoch = state["epoch"]

model = Flaky()
hl.checkpoints(model=model)
for epoch in hl.loop("epoch", range(8)):
    model.epoch = epoch
    for b in hl.loop("batch", range(3)):
        model.w += b
    hl.log("w", float(model.w.sum()))
    time.sleep(0.08)  # each checkpoint's write ends before the next iteration's
print(json.dumps({"run": hl.run_id()}))
"""


def assert_epochs_3_and_4_dropped_and_training_went_on(tmp_path: Path, script: str, warning: str, cause: str,
                                                      per_epoch: float) -> None:
    """Record ``script``, whose checkpoints fail in epochs 3 and 4 (``warning``, naming ``cause``):
    training goes on, every value is logged once, the run is flagged, the other checkpoints read back."""
    proj = CkProject(tmp_path)
    proj.write("train.py", script)
    proc = proj.run("train.py", env={"HINDLOG_EPSILON": "0.9"})
    assert proc.returncode == 0, proc.stderr
    run_id = last_json(proc.stdout)["run"]
    assert proc.stderr.count(warning) == 1 and cause in proc.stderr and "training goes on" in proc.stderr, proc.stderr
    values = proj.by_iteration(run_id)
    assert [values[(e, "w")] for e in range(8)] == [[per_epoch * (e + 1)] for e in range(8)]
    info = proj.run_info(run_id)
    assert info["status"] == "finished" and "checkpoint_dropped" in info["flags"]
    iterations = proj.checkpointed_iterations(run_id)
    assert not set(iterations) & {3, 4}, iterations
    assert any(i < 3 for i in iterations) and any(i >= 5 for i in iterations), iterations
    assert read_all_checkpoints(proj, run_id) == len(proj.checkpoints(run_id))


def test_a_snapshot_that_fails_drops_that_checkpoint_and_training_goes_on(tmp_path: Path) -> None:
    assert_epochs_3_and_4_dropped_and_training_went_on(
        tmp_path, SNAPSHOT_TROUBLE, "could not snapshot the training state", "MemoryError: cannot allocate the copy", 12.0)


FSYNC_TROUBLE = """
import errno, json, os, time
import numpy as np
import hindlog as hl

# The disk reports an I/O error when written-back data is flushed (EIO from fsync), as a failing
# or thin-provisioned volume does, in epochs 3 and 4.
real_fsync, failing = os.fsync, [False]
def fsync(fd):
    if failing[0]:
        raise OSError(errno.EIO, "Input/output error")
    return real_fsync(fd)
os.fsync = fsync

w = np.zeros(1000)
hl.checkpoints(w=w)
for epoch in hl.loop("epoch", range(8)):
    if epoch in (3, 5):
        time.sleep(0.3)  # the commits of the epochs before are done
        failing[0] = epoch == 3
    for b in hl.loop("batch", range(3)):
        w += b
    hl.log("w", float(w.sum()))
    time.sleep(0.08)
print(json.dumps({"run": hl.run_id()}))
"""


def test_an_fsync_that_fails_drops_the_checkpoint_it_would_have_committed(tmp_path: Path) -> None:
    assert_epochs_3_and_4_dropped_and_training_went_on(
        tmp_path, FSYNC_TROUBLE, "could not write the checkpoint", "Input/output error", 3000.0)


# ----------------------------------------------------------------- kill -9 during a persist

BIG_STATE = """
import json, time
import numpy as np
import hindlog as hl

big = np.zeros(6_000_000)  # 48 MB, changed every epoch: a persist takes a while
hl.checkpoints(big=big)
for epoch in hl.loop("epoch", range(10_000)):
    big += 1
    hl.log("x", float(big[0]))
    time.sleep(0.02)
"""


def _tmp_files(objects: Path) -> list[Path]:
    if not objects.exists():
        return []
    return [p for sub in objects.iterdir() if sub.is_dir() for p in sub.glob(".tmp-*")]


def test_kill_9_during_a_persist_leaves_no_partial_checkpoint_visible(tmp_path: Path) -> None:
    proj = CkProject(tmp_path)
    proj.write("train.py", BIG_STATE)
    proc = proj.start("train.py", env={"HINDLOG_EPSILON": "0.9"})
    try:
        def committed() -> bool:
            return count_checkpoints(proj) >= 1

        wait_for(committed, timeout=60, interval=0.02, proc=proc)
        # Now wait for the next persist to be caught writing an object, and kill -9 then.
        wait_for(lambda: _tmp_files(proj.objects_dir), timeout=60, interval=0.002, proc=proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        stop(proc)
    assert proc.returncode == -signal.SIGKILL
    leftovers = _tmp_files(proj.objects_dir)
    (run_id,) = proj.run_ids()
    rows = proj.checkpoints(run_id)
    assert rows
    # Every listed checkpoint reads back whole, and names no temporary file.
    assert read_all_checkpoints(proj, run_id) == len(rows)
    named = set()
    for _it, _b, _l, manifest, _n in rows:
        m = proj.manifest(manifest)
        named.update([manifest, m["skeleton"], *(e[0] for e in m["tensors"])])
    assert not {p.name for p in leftovers} & {n[2:] for n in named}
    # The run shows as killed and the latest checkpoint restores.
    assert proj.run_info(run_id)["status"] == "killed"
    import numpy as np

    big = np.zeros(6_000_000)
    r = hl.restore(run_id, store=proj.store(), big=big)
    assert big[0] == r.iteration + 1 and big[-1] == r.iteration + 1


FSYNC_SPY = """
import atexit, json, os
flushed = []
_fsync = os.fsync


def spy(fd):
    flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
    return _fsync(fd)


os.fsync = spy
atexit.register(lambda: print(json.dumps({"flushed": flushed})))
"""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads the names of open files from /proc")
def test_a_committed_checkpoint_has_its_files_and_their_directories_flushed(tmp_path: Path) -> None:
    # A rename is durable only once its directory is: without that, a power cut after the
    # catalog's commit could leave a checkpoint whose objects have no name on disk.
    proj = CkProject(tmp_path)
    proj.write("train.py", FSYNC_SPY + CHEAP.replace("np.zeros(16)", "np.zeros(20_000)").replace("rand(16)", "rand(20_000)"))
    # ε = 0.9: the budget, which a loaded machine's slow start-up can spend, is not under test here.
    out = proj.run("train.py", env={"HINDLOG_EPSILON": "0.9"}).stdout
    run_id = last_json(out.split("\n{\"flushed")[0])["run"]
    flushed = set(json.loads(out.strip().splitlines()[-1])["flushed"])
    rows = proj.checkpoints(run_id)
    assert rows
    objects = proj.objects_dir.resolve()
    for _it, _b, _l, manifest, _n in rows:
        m = proj.manifest(manifest)
        for name in [manifest, m["skeleton"], *(e[0] for e in m["tensors"] if not e[0].startswith("@"))]:
            assert str(objects / name[:2] / name[2:]) in flushed, name
            assert str(objects / name[:2]) in flushed, name


def test_a_failed_checkpoint_write_gets_advice_that_fits_its_cause(tmp_path: Path) -> None:
    import errno

    from hindlog.checkpoint import _write_advice

    assert "Free some disk space" in _write_advice(OSError(errno.ENOSPC, "No space left on device"), tmp_path)
    assert f"Make {tmp_path} writable" in _write_advice(PermissionError(errno.EACCES, "Permission denied"), tmp_path)
    assert "disk space" not in _write_advice(OSError(errno.EIO, "Input/output error"), tmp_path)
    too_large = _write_advice(OSError(errno.EFBIG, "File too large"), tmp_path)
    assert "ulimit -f" in too_large and "disk space" not in too_large


def test_policy_keeps_its_margin_in_the_last_iteration_and_budgets_the_wait_for_its_persist() -> None:
    # 10 s into a 30-iteration run at ε = 5%: 0.5 s of budget, 0.4 s of it inside the margin.
    policy = Policy(0.05, start=0.0, total=30)
    policy.cost, policy.persist_cpu, policy.persist_wall = 0.02, 0.01, 0.05
    policy.spent = 0.34
    assert policy.decide(28, now=10.0)  # 0.34 + 0.03 fits in 0.4
    assert not policy.decide(29, now=10.0)  # the last also waits for its persist: 0.42 does not
    policy.spent = 0.30
    assert policy.decide(29, now=10.0)
    # Spending all of ε at the end (0.49 s of 0.5) would leave the run over ε by what no charge sees.
    policy.spent = 0.41
    assert not policy.decide(29, now=10.0)


def test_a_pandas_table_is_checkpointed_only_while_it_stays_small() -> None:
    """A metrics table the loop fills is state; a data set in a DataFrame is not worth a copy
    per checkpoint, and text pickles slowly (1M cells of it: 0.2 s of blocked time), also as
    pandas 3's own ``str`` dtype, not only as columns of objects."""
    pd = pytest.importorskip("pandas")
    from hindlog.checkpoint import _small_frame

    assert _small_frame(pd.DataFrame({"epoch": range(100), "loss": [0.5] * 100}))
    assert _small_frame(pd.Series([1.0] * 500_000))
    assert not _small_frame(pd.Series([1.0] * 1_000_001))
    assert _small_frame(pd.DataFrame({"note": ["ok"] * 5_000}))
    assert not _small_frame(pd.DataFrame({"note": ["text"] * 20_000}))
    assert not _small_frame(pd.DataFrame({"note": pd.Series(["text"] * 20_000, dtype=object)}))
    assert not _small_frame([1, 2, 3])
