"""Helpers for the checkpoint / restore / resume / gc tests (a plain module, imported by them).

Every test gets a throw-away git repository (``proj``) with an initial commit and a store
outside it (``HINDLOG_DIR=<tmp>/store``). Scripts run as real subprocesses with the venv's
Python; the tests read the store back through real SQLite and the object store.
Nothing of hindlog's storage is mocked.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any

import pytest

from isolation import GIT_IDENTITY, dedent, isolated_env  # noqa: F401 (re-exported to the tests)

PY = sys.executable
HINDLOG_SCRIPT = Path(sys.executable).with_name("hindlog")


ITERATION_END = -1


class CkProject:
    """A git repository with a store beside it, and helpers to run scripts and read the store."""

    def __init__(self, base: Path, git: bool = True) -> None:
        self.base = base
        self.root = base / "proj"
        self.store_path = base / "store"
        self.root.mkdir(parents=True)
        (self.root / "README.md").write_text("# checkpoint tests\n")
        if not git:
            return
        (self.root / ".gitignore").write_text("*.ignored\n")
        for args in (("init", "-q"), ("symbolic-ref", "HEAD", "refs/heads/main"), ("add", "-A"), ("commit", "-q", "-m", "initial")):
            subprocess.run(["git", *args], cwd=self.root, env=self.env(), check=True, capture_output=True, timeout=60)

    # ------------------------------------------------------------ processes

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = isolated_env(self.base)
        env["HINDLOG_DIR"] = str(self.store_path)
        env.update(extra or {})
        return env

    def write(self, rel: str, text: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dedent(text))
        return path

    def run(
        self,
        script: str,
        *args: str,
        env: dict[str, str] | None = None,
        check: bool = True,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [PY, str(self.root / script), *args],
            cwd=self.root,
            env=self.env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            pytest.fail(f"{script} exited with {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
        return proc

    def start(self, script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [PY, str(self.root / script), *args],
            cwd=self.root,
            env=self.env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def cli(self, *args: str, check: bool = True, env: dict[str, str] | None = None, timeout: float = 120,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(HINDLOG_SCRIPT), *args],
            cwd=cwd or self.root,
            env=self.env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            pytest.fail(f"hindlog {' '.join(args)} exited with {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
        return proc

    # ------------------------------------------------------------ the store

    def store(self) -> Any:
        from hindlog.store import Store

        return Store(self.store_path, self.root)

    @property
    def objects_dir(self) -> Path:
        return self.store_path / "objects"

    def db(self) -> sqlite3.Connection:
        path = self.store_path / "catalog.db"
        assert path.exists(), "no catalog was created"
        return sqlite3.connect(str(path), timeout=30)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = self.db()
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def run_key(self, run_id: str) -> int:
        rows = self.query("SELECT id FROM runs WHERE run_id=?", (run_id,))
        assert rows, f"no run {run_id}"
        return rows[0][0]

    def run_ids(self) -> list[str]:
        return [r[0] for r in self.query("SELECT run_id FROM runs ORDER BY id")]

    def run_info(self, run_id: str) -> dict[str, Any]:
        from hindlog import query

        return query.run_info(run_id, store=self.store())

    def checkpoints(self, run_id: str) -> list[tuple[int, int, str | None, str, int]]:
        """``(iteration, block, loop, manifest, nbytes)`` rows of a run."""
        return self.query(
            "SELECT c.iteration, c.block, c.loop, c.manifest, c.nbytes FROM checkpoints c JOIN runs u ON u.id=c.run "
            "WHERE u.run_id=? ORDER BY c.iteration, c.block",
            (run_id,),
        )

    def checkpointed_iterations(self, run_id: str) -> list[int]:
        """Iterations with an iteration-end checkpoint."""
        return sorted({it for it, block, *_ in self.checkpoints(run_id) if block == ITERATION_END})

    def manifest(self, name: str) -> dict[str, Any]:
        return json.loads(self.store().objects.get(name))

    def records(self, run_id: str) -> list[tuple[int | None, str, Any]]:
        """``(iteration, name, value)`` of every record of a run, in log order."""
        from hindlog.values import decode

        rows = self.query(
            "SELECT c.iteration, n.name, r.kind, r.value FROM records r JOIN names n ON n.id=r.name "
            "JOIN contexts c ON c.run=r.run AND c.id=r.ctx JOIN runs u ON u.id=r.run "
            "WHERE u.run_id=? ORDER BY r.rowid",
            (run_id,),
        )
        return [(it, name, decode(kind, value)) for it, name, kind, value in rows]

    def by_iteration(self, run_id: str) -> dict[tuple[int | None, str], list[Any]]:
        """``{(iteration, name): [values...]}`` of a run (lists, so duplicates show)."""
        out: dict[tuple[int | None, str], list[Any]] = {}
        for it, name, value in self.records(run_id):
            out.setdefault((it, name), []).append(_plain(value))
        return out


def _plain(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)
    return tolist() if tolist is not None else value


def last_json(stdout: str) -> Any:
    """The last line of a script's stdout that parses as JSON."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{") or line.startswith("["):
            return json.loads(line)
    raise AssertionError(f"no JSON line in the output:\n{stdout}")


def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.02, proc: subprocess.Popen[str] | None = None) -> Any:
    """Poll ``predicate`` until it returns something truthy (failing if ``proc`` exits first)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate(timeout=30)
            pytest.fail(f"the script exited with {proc.returncode} before the condition was met\n{out}\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(interval)


def stop(proc: subprocess.Popen[str]) -> None:
    """Kill (by its own pid) and reap a script this test started."""
    if proc.poll() is None:
        proc.kill()
    try:
        proc.communicate(timeout=30)
    except Exception:
        pass


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Corrupt a stored object in place (objects are written read-write by their owner)."""
    data = bytearray(path.read_bytes())
    assert data, f"{path} is empty"
    at = len(data) // 2 if offset is None else offset
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def copy_store(src: CkProject, dst_base: Path) -> CkProject:
    """A copy of ``src``'s project (with its git repository, which holds the runs' code
    versions) and store, for tests that damage or extend a shared recording."""
    dst_base.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src.root, dst_base / "proj", symlinks=True)
    shutil.copytree(src.store_path, dst_base / "store", symlinks=True)
    proj = CkProject.__new__(CkProject)
    proj.base, proj.root, proj.store_path = dst_base, dst_base / "proj", dst_base / "store"
    return proj


def count_checkpoints(proj: CkProject, iteration_end_only: bool = False, at_least_iteration: int = 0) -> int:
    """How many checkpoint rows are committed so far (0 while the catalog is being created)."""
    if not (proj.store_path / "catalog.db").exists():
        return 0
    sql = "SELECT COUNT(*) FROM checkpoints WHERE iteration >= ?" + (" AND block = -1" if iteration_end_only else "")
    try:
        return proj.query(sql, (at_least_iteration,))[0][0]
    except sqlite3.OperationalError:  # the schema is not there yet
        return 0


def read_all_checkpoints(proj: CkProject, run_id: str) -> int:
    """Read back (and hash-verify) every checkpoint of a run; return how many."""
    from hindlog.checkpoint import read_checkpoint

    objects = proj.store().objects
    rows = proj.checkpoints(run_id)
    for it, block, _loop, manifest, _nbytes in rows:
        loaded = read_checkpoint(objects, manifest)
        assert (loaded.iteration, loaded.block) == (it, block)
    return len(rows)


# ----------------------------------------------------------------- shared recordings

_SHARED: dict[str, Any] = {}


def shared(key: str, factory: Any, tmp_path_factory: Any) -> Any:
    """Build an expensive recording once per test session (several modules use it)."""
    if key not in _SHARED:
        _SHARED[key] = factory(tmp_path_factory.mktemp(key))
    return _SHARED[key]


#: A tiny torch training script: a shuffling DataLoader and dropout in the nested loop, an
#: LR scheduler stepped after it, a loop-carried ``best``, the last batch's ``loss`` read
#: after the nested loop, and a draw from the torch RNG at the end of every epoch.
TORCH_TRAIN = """
import json, os, time
import torch, torch.nn as nn
import hindlog as hl

torch.set_num_threads(1)
torch.manual_seed(0)
epochs = hl.arg("epochs", 8)
pause = hl.arg("pause", 0.1)
X = torch.randn(96, 8)
Y = (X.sum(1) > 0).long()
val_x = torch.randn(32, 8)
val_y = (val_x.sum(1) > 0).long()
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=16, shuffle=True)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
gen = torch.Generator().manual_seed(7)  # a declared generator of its own
hl.checkpoints(model=model, opt=opt, sched=sched, gen=gen)
hl.log("n_params", sum(p.numel() for p in model.parameters()))
best = float("inf")
for epoch in hl.loop("epoch", range(epochs)):
    # A test that kills the run holds it here (at most 2 s an epoch, after the previous
    # epoch's checkpoint) until it has seen a checkpoint: a slow machine must not let
    # training finish first.
    hold = os.environ.get("HOLD_FILE")
    held = time.time()
    while hold and epoch >= 4 and os.path.exists(hold) and time.time() - held < 2:
        time.sleep(0.01)
    model.train()
    for x, y in hl.loop("step", loader):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    sched.step()
    model.eval()
    with torch.no_grad():
        val_loss = nn.functional.cross_entropy(model(val_x), val_y).item()
    best = min(best, val_loss)
    hl.log("loss", loss.item())
    hl.log("val_loss", val_loss)
    hl.log("best", best)
    hl.log("lr", sched.get_last_lr()[0])
    hl.log("wsum", sum(p.sum().item() for p in model.parameters()))
    hl.log("noise", torch.rand(()).item())
    hl.log("gnoise", torch.rand((), generator=gen).item())
    print(json.dumps({"epoch": epoch}), flush=True)
    time.sleep(pause)
hl.log("final_best", best)
print(json.dumps({"run": hl.run_id()}))
"""

#: Fresh objects built the same way, ``hl.restore(run, iteration=k, rng=True, ...)`` and the
#: remaining epochs run without hindlog recording; prints the values it computes as JSON.
#: First, as a control, it restores without the generators and runs one epoch (then restores
#: again, generators included, which must undo everything the control did).
TORCH_CONTINUE = """
import json, sys
import torch, torch.nn as nn
import hindlog as hl

torch.set_num_threads(1)
run, k, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
X = torch.randn(96, 8)
Y = (X.sum(1) > 0).long()
val_x = torch.randn(32, 8)
val_y = (val_x.sum(1) > 0).long()
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=16, shuffle=True)
torch.manual_seed(12345)  # fresh objects: different initial weights than the recorded run
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
gen = torch.Generator().manual_seed(99)


def run_epochs(first, stop, best):
    values = {}
    for epoch in range(first, stop):
        model.train()
        for x, y in loader:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        sched.step()
        model.eval()
        with torch.no_grad():
            val_loss = nn.functional.cross_entropy(model(val_x), val_y).item()
        best = min(best, val_loss)
        values[epoch] = {
            "loss": loss.item(), "val_loss": val_loss, "best": best, "lr": sched.get_last_lr()[0],
            "wsum": sum(p.sum().item() for p in model.parameters()), "noise": torch.rand(()).item(),
            "gnoise": torch.rand((), generator=gen).item(),
        }
    return values


torch.manual_seed(4321)
r = hl.restore(run, iteration=k, model=model, opt=opt, sched=sched, gen=gen)  # rng=False
control = run_epochs(k + 1, k + 2, r.locals["best"])

r = hl.restore(run, iteration=k, rng=True, model=model, opt=opt, sched=sched, gen=gen)
assert r.iteration == k and r.run_id == run, (r.iteration, r.run_id)
assert r.objects["model"] is model and r.objects["opt"] is opt and r.objects["sched"] is sched
assert r.objects["gen"] is gen
assert hl.run_id() is None, "hl.restore must not start a run"
out = {"locals": sorted(r.locals), "restored_loss": r.locals["loss"].item() if "loss" in r.locals else None}
out["values"] = run_epochs(k + 1, epochs, r.locals["best"])
out["control"] = control
print(json.dumps(out))
"""

TORCH_NAMES = ("loss", "val_loss", "best", "lr", "wsum", "noise", "gnoise")


@dataclass
class TorchReference:
    """A finished recording of TORCH_TRAIN (uninterrupted)."""

    proj: CkProject
    run_id: str
    values: dict[tuple[int | None, str], list[Any]]
    epochs: int


def make_torch_reference(base: Path) -> TorchReference:
    proj = CkProject(base)
    proj.write("train.py", TORCH_TRAIN)
    # A generous bound: tests that restore need several checkpoints even on a loaded machine.
    proc = proj.run("train.py", env={"HINDLOG_EPSILON": "0.5"})
    run_id = last_json(proc.stdout)["run"]
    return TorchReference(proj, run_id, proj.by_iteration(run_id), 8)


#: A NumPy training loop (linear regression by minibatch SGD with NumPy shuffling) that declares
#: arrays (``w`` small and inlined, ``big`` stored as an object of its own), a list and a dict.
NUMPY_TRAIN = """
import json, os, time
import numpy as np
import hindlog as hl

np.random.seed(0)
epochs = hl.arg("epochs", 6)
pause = hl.arg("pause", 0.05)
X = np.random.randn(64, 4)
y = X @ np.arange(4.0) + 0.1 * np.random.randn(64)
w = np.zeros(4)
big = np.zeros(20000)  # 160 KB: an object of its own, not inlined in the skeleton
history = []
stats = {"seen": 0}
hl.checkpoints(w=w, big=big, history=history, stats=stats)
for epoch in hl.loop("epoch", range(epochs)):
    perm = np.random.permutation(len(X))
    for b in hl.loop("batch", range(0, 64, 16)):
        idx = perm[b:b + 16]
        grad = X[idx].T @ (X[idx] @ w - y[idx]) / len(idx)
        w -= 0.1 * grad
        stats["seen"] += len(idx)
    big += epoch + 1
    mse = float(np.mean((X @ w - y) ** 2))
    history.append(mse)
    hl.log("mse", mse)
    hl.log("w", w.copy())
    hl.log("noise", float(np.random.rand()))
    time.sleep(pause)
print(json.dumps({"run": hl.run_id()}))
"""


@dataclass
class NumpyRecording:
    proj: CkProject
    run_id: str
    values: dict[tuple[int | None, str], list[Any]]
    epochs: int


def make_numpy_recording(base: Path) -> NumpyRecording:
    proj = CkProject(base)
    proj.write("train.py", NUMPY_TRAIN)
    # A short process earns a small budget, and hindlog's start-up is charged to it first; a
    # generous ε gives these tests several checkpoints.
    proc = proj.run("train.py", env={"HINDLOG_EPSILON": "0.9"})
    run_id = last_json(proc.stdout)["run"]
    return NumpyRecording(proj, run_id, proj.by_iteration(run_id), 6)


#: A main loop that reads a shuffling DataLoader (its order is drawn when the first batch is
#: read); ``fail.flag`` in the working directory makes step 6 raise.
LOADER_MAIN_LOOP = """
import json, os, time
import torch
import hindlog as hl
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
X = torch.randn(160, 6)
Y = X.sum(1, keepdim=True)
loader = DataLoader(TensorDataset(X, Y), batch_size=16, shuffle=True)
model = torch.nn.Linear(6, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.05)
hl.checkpoints(model=model, opt=opt)
# The main loop reads a shuffling loader: its order is drawn when the first batch is read.
for step, (xb, yb) in hl.loop("step", enumerate(loader)):
    loss = ((model(xb) - yb) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    hl.log("loss", loss.item())
    hl.log("first_x", float(xb[0, 0]))
    if step == 6 and os.path.exists("fail.flag"):
        raise RuntimeError("the disk went away")
    time.sleep(0.05)
print(json.dumps({"run": hl.run_id()}))
"""


#: A class a training script defines (a meter): its objects unpickle only where the script runs.
RUNNING_MEAN_CLASS = """
class RunningMean:
    def __init__(self):
        self.n, self.mean = 0, 0.0

    def update(self, x):
        self.n += 1
        self.mean += (x - self.mean) / self.n
"""
