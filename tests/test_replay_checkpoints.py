"""A replay stores checkpoints of the iterations it re-executes for want of one, so that the
next replay of the run skips them; never when its state may not be the record's (a recomputed
value diverged, ``--force``), nor with ``--no-checkpoints``. Real subprocesses, real SQLite, a
real object store."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ckpt_helpers import ITERATION_END, CkProject, last_json

#: A NumPy loop whose nested loop takes a while (so that a checkpoint is cheap beside it). SCALE,
#: an environment variable no run records, changes what it computes: a replay run with another
#: SCALE recomputes other values than the record's.
TRAIN = """
import json, os, time
import numpy as np
import hindlog as hl

np.random.seed(0)
scale = float(os.environ.get("SCALE", "1"))
X = np.random.randn(64, 4)
y = X @ np.arange(4.0) + 0.1 * np.random.randn(64)
w = np.zeros(4)
hl.checkpoints(w=w)
for epoch in hl.loop("epoch", range(6)):
    perm = np.random.permutation(len(X))
    for b in hl.loop("batch", range(0, 64, 16)):
        idx = perm[b:b + 16]
        w -= 0.1 * scale * X[idx].T @ (X[idx] @ w - y[idx]) / len(idx)
        time.sleep(0.03)
    hl.log("mse", float(np.mean((X @ w - y) ** 2)))
    hl.log("w", w.copy())
print(json.dumps({"run": hl.run_id()}))
"""

ANCHOR = '    hl.log("w", w.copy())\n'


def _record(tmp_path: Path) -> tuple[CkProject, str]:
    proj = CkProject(tmp_path)
    proj.write("train.py", TRAIN)
    # ε = 0: the record takes no checkpoint, and a replay re-executes every iteration.
    run_id = last_json(proj.run("train.py", env={"HINDLOG_EPSILON": "0"}).stdout)["run"]
    assert proj.checkpoints(run_id) == []
    return proj, run_id


def _add(proj: CkProject, *statements: str) -> None:
    text = (proj.root / "train.py").read_text()
    proj.write("train.py", text.replace(ANCHOR, ANCHOR + "".join(f"    {s}\n" for s in statements)))


def _summary(stdout: str) -> dict[str, int]:
    m = re.search(r"(\d+) new values stored, (\d+) recorded values checked, (\d+) loops skipped, (\d+) run", stdout)
    assert m, stdout
    stored = re.search(r"stored checkpoints of (\d+) re-executed iteration", stdout)
    return {**dict(zip(("stored", "checked", "skipped", "run"), map(int, m.groups()))),
            "checkpoints": int(stored.group(1)) if stored else 0}


def _recorded_w(proj: CkProject, run_id: str) -> list[np.ndarray]:
    values = proj.by_iteration(run_id)
    return [np.asarray(values[(i, "w")][0]) for i in range(6)]


def _values(proj: CkProject, run_id: str, name: str) -> list[float]:
    """The values of ``name`` by iteration (each iteration's, once)."""
    values = proj.by_iteration(run_id)
    assert all(len(values.get((i, name), [])) == 1 for i in range(6)), {k: v for k, v in values.items() if k[1] == name}
    return [float(values[(i, name)][0]) for i in range(6)]


def test_the_next_replay_skips_what_a_replay_re_executed_and_gets_the_same_values(tmp_path: Path) -> None:
    proj, run_id = _record(tmp_path)
    info_before = proj.run_info(run_id)
    w = _recorded_w(proj, run_id)

    _add(proj, 'hl.log("wsum", float(w.sum()))')
    first = proj.cli("replay", "train.py", "--workers", "1", env={"HINDLOG_EPSILON": "0.9"})
    s1 = _summary(first.stdout)
    assert "stores checkpoints of the iterations it re-executes" in first.stdout, first.stdout
    assert s1["skipped"] == 0 and s1["run"] == 6 and s1["checked"] == 12, first.stdout
    assert s1["checkpoints"] >= 3, first.stdout
    stored = sorted({i for i, _b, *_ in proj.checkpoints(run_id)})
    assert len(stored) == s1["checkpoints"]
    # Each has the nested loop's exit and the iteration's end, as a record's checkpoint has.
    assert all({b for i, b, *_ in proj.checkpoints(run_id) if i == it} == {0, ITERATION_END} for it in stored)
    assert _values(proj, run_id, "wsum") == [float(x.sum()) for x in w]
    # The record's own account of itself is as it was (its info, flags, status, overhead), and
    # `hindlog show` tells which checkpoints replays stored.
    info_after = proj.run_info(run_id)
    own = ("info", "flags", "status", "overhead", "started", "ended", "code_version")
    assert {k: info_after.get(k) for k in own} == {k: info_before.get(k) for k in own}
    show = proj.cli("show", run_id).stdout
    assert f"{len(stored)} of them stored by replays" in show, show

    _add(proj, 'hl.log("wmax", float(w.max()))')
    second = proj.cli("replay", "train.py", "--workers", "1", env={"HINDLOG_EPSILON": "0"})
    s2 = _summary(second.stdout)
    assert s2["skipped"] == len(stored) and s2["run"] == 6 - len(stored), second.stdout
    assert s2["checked"] == 12 and s2["checkpoints"] == 0, second.stdout
    assert _values(proj, run_id, "wmax") == [float(x.max()) for x in w]
    assert _values(proj, run_id, "wsum") == [float(x.sum()) for x in w]


def test_a_replay_that_diverges_stores_no_checkpoint(tmp_path: Path) -> None:
    proj, run_id = _record(tmp_path)
    _add(proj, 'hl.log("wsum", float(w.sum()))')
    # Another SCALE: every re-executed iteration computes other values than the record's.
    result = proj.cli("replay", "train.py", "--workers", "1", check=False, env={"HINDLOG_EPSILON": "0.9", "SCALE": "2"})
    assert result.returncode != 0 and "diverge" in (result.stdout + result.stderr).lower(), result.stdout + result.stderr
    assert proj.checkpoints(run_id) == []


def test_no_checkpoints_leaves_the_store_as_the_record_left_it(tmp_path: Path) -> None:
    proj, run_id = _record(tmp_path)
    _add(proj, 'hl.log("wsum", float(w.sum()))')
    result = proj.cli("replay", "train.py", "--workers", "1", "--no-checkpoints", env={"HINDLOG_EPSILON": "0.9"})
    assert _summary(result.stdout)["checkpoints"] == 0 and "stores checkpoints" not in result.stdout, result.stdout
    assert proj.checkpoints(run_id) == []


def test_a_new_statement_that_draws_random_numbers_stores_no_checkpoint(tmp_path: Path) -> None:
    proj, run_id = _record(tmp_path)
    # It draws after the iteration's values are logged: they still match, but the generator's
    # state at the next loop's exit is no longer the record's.
    _add(proj, 'hl.log("draw", float(np.random.rand()))')
    result = proj.cli("replay", "train.py", "--workers", "1", "--iterations", "0:1", check=False,
                      env={"HINDLOG_EPSILON": "0.9"})
    assert "draws random numbers" in result.stdout, result.stdout
    assert proj.checkpoints(run_id) == []
