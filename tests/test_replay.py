"""``hindlog replay`` against ground truth.

Each training script is recorded in a real git project (real subprocess, real PyTorch
on the CPU). Statements are then added to it and ``hindlog replay`` runs (real CLI,
real worker processes). The ground truth is a fresh full run of the modified script
in another project with its own store: the values replay stores for the recorded run
must equal the fresh run's values exactly.

The three PyTorch scripts are recorded, and run fresh with every added statement, once
per module (the ``recorded`` fixture); each test replays in its own copy of the recorded
project and store. Faults, bad input and the plan's details use small scripts without
torch (``COUNTER``), whose values are known. Tests marked ``slow`` train PyTorch models.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from replay_helpers import (
    PY,
    ReplayProject,
    apply_edits,
    assert_same_values,
    dedent,
    ground_truth,
    ground_truths,
    insert_after,
    insert_before,
)

# ----------------------------------------------------------------- scripts

#: A nested loop with dropout and a shuffling DataLoader, a validation loop whose
#: accumulated loss is read after it, a scheduler stepped after the nested loop, and a
#: loop-carried ``best_acc``.
CLASSIC = """
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import hindlog as hl

torch.manual_seed(0)
epochs = hl.arg("epochs", 5)
lr = hl.arg("lr", 0.1)
X = torch.randn(320, 8)
Y = (X[:, 0] + 0.5 * X[:, 1] > 0).long()
VX = torch.randn(32, 8)
VY = (VX[:, 0] + 0.5 * VX[:, 1] > 0).long()
loader = DataLoader(TensorDataset(X, Y), batch_size=16, shuffle=True)
val_loader = DataLoader(TensorDataset(VX, VY), batch_size=16)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))
opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
hl.checkpoints(model=model, opt=opt, sched=sched)

best_acc = 0.0
for epoch in hl.loop("epoch", range(epochs)):
    model.train()
    for x, y in hl.loop("step", loader):
        opt.zero_grad()
        out = model(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        opt.step()
    sched.step()
    model.eval()
    val_loss, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in hl.loop("val", val_loader):
            out = model(x)
            val_loss += F.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            n += len(y)
    acc = correct / n
    best_acc = max(best_acc, acc)
    hl.log("loss", loss.item())
    hl.log("val_loss", val_loss / n)
    hl.log("acc", acc)
print("done", best_acc)
"""

#: The nested loop calls ``train_step``, a function of a project module (steps.py); Adam,
#: a cosine schedule, dropout, a shuffling DataLoader, a list carried across iterations.
STEPS = """
import torch.nn.functional as F


def train_step(model, opt, x, y):
    opt.zero_grad()
    out = model(x)
    loss = F.cross_entropy(out, y)
    loss.backward()
    opt.step()
    return loss.item()
"""

TRAIN_STEP = """
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import hindlog as hl
from steps import train_step

torch.manual_seed(1)
epochs = hl.arg("epochs", 5)
X = torch.randn(240, 6)
Y = (X.sum(1) > 0).long()
loader = DataLoader(TensorDataset(X, Y), batch_size=12, shuffle=True)
model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Dropout(0.2), nn.Linear(12, 2))
opt = torch.optim.Adam(model.parameters(), lr=0.02)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
hl.checkpoints(model=model, opt=opt, sched=sched)

history = []
for epoch in hl.loop("epoch", range(epochs)):
    model.train()
    total = 0.0
    for x, y in hl.loop("batch", loader):
        total += train_step(model, opt, x, y)
    sched.step()
    history.append(total)
    hl.log("train_loss", total / len(loader))
"""

#: The main loop's body calls ``train_one_epoch`` and ``evaluate``, which hold the nested
#: hl.loops; ``train_one_epoch``'s loop calls a helper; ``best_acc``/``best_epoch`` are carried.
FUNCTIONS = """
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import hindlog as hl

torch.manual_seed(2)
epochs = hl.arg("epochs", 5)
X = torch.randn(320, 5)
Y = (X[:, 0] * X[:, 1] > 0).long()
VX = torch.randn(24, 5)
VY = (VX[:, 0] * VX[:, 1] > 0).long()
loader = DataLoader(TensorDataset(X, Y), batch_size=16, shuffle=True)
val_loader = DataLoader(TensorDataset(VX, VY), batch_size=8)
model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Dropout(0.25), nn.Linear(16, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.5)
sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.8)
hl.checkpoints(model=model, opt=opt, sched=sched)


def clip_and_step(model, opt):
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def train_one_epoch(model, loader, opt):
    model.train()
    total, count = 0.0, 0
    for x, y in hl.loop("step", loader):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        clip_and_step(model, opt)
        total += loss.item() * len(y)
        count += len(y)
    return total / count


def evaluate(model, val_loader):
    model.eval()
    val_loss, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in hl.loop("val", val_loader):
            out = model(x)
            val_loss += F.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            n += len(y)
    return val_loss / n, correct / n


best_acc, best_epoch = 0.0, -1
for epoch in hl.loop("epoch", range(epochs)):
    train_loss = train_one_epoch(model, loader, opt)
    val_loss, acc = evaluate(model, val_loader)
    sched.step()
    if acc > best_acc:
        best_acc, best_epoch = acc, epoch
    hl.log("train_loss", train_loss)
    hl.log("val_loss", val_loss)
    hl.log("best_acc", best_acc)
"""



# A trainer written as a class: the main loop is in a method, the state lives on ``self``
# (which every checkpoint holds as a local, with the declared model and optimizer inside it),
# with a dataset of its own (arrays large enough to be stored as tensors of the checkpoint).
TRAINER = """
import torch
import torch.nn as nn
import hindlog as hl


class Trainer:
    def __init__(self, epochs):
        torch.manual_seed(0)
        self.epochs = epochs
        self.X = torch.randn(1200, 20)
        self.y = (self.X[:, :5].sum(1) > 0).long()
        data = torch.utils.data.TensorDataset(self.X[:1000], self.y[:1000])
        self.loader = torch.utils.data.DataLoader(data, batch_size=100, shuffle=True)
        self.model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 2))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        self.sched = torch.optim.lr_scheduler.StepLR(self.opt, step_size=2, gamma=0.5)
        self.history = []
        hl.checkpoints(model=self.model, opt=self.opt, sched=self.sched)

    def train_epoch(self):
        self.model.train()
        for x, y in hl.loop("step", self.loader):
            self.opt.zero_grad()
            out = self.model(x)
            loss = nn.functional.cross_entropy(out, y)
            loss.backward()
            self.opt.step()
        return loss.item()

    def validate(self):
        self.model.eval()
        with torch.no_grad():
            return (self.model(self.X[1000:]).argmax(1) == self.y[1000:]).float().mean().item()

    def fit(self):
        for epoch in hl.loop("epoch", range(self.epochs)):
            last = self.train_epoch()
            self.sched.step()
            acc = self.validate()
            self.history.append(acc)
            hl.log("loss", last)
            hl.log("acc", acc)


if __name__ == "__main__":
    Trainer(epochs=5).fit()
"""


@dataclass
class Case:
    #: path -> source of the recorded project
    files: dict[str, str]
    #: kind -> (path, anchor line, new statements): inserted after the anchor's line, or
    #: before it when the anchor starts with "^"
    edits: dict[str, list[tuple[str, str, str]]]
    #: kind -> names the new statements log
    names: dict[str, list[str]]
    #: names the recorded script logs
    recorded: list[str]
    #: kind -> the nested hl.loop loops replay must run (the plan's "nested loops that must run");
    #: for "main" exactly these (none: the nested loops are skipped), otherwise at least these ("all" will do)
    probed: dict[str, set[str]] = field(default_factory=dict)

    def modified(self, *kinds: str) -> dict[str, str]:
        files = {path: dedent(text) for path, text in self.files.items()}
        for kind in kinds:
            for path, anchor, new in self.edits[kind]:
                files[path] = apply_edits(files[path], [(anchor, new)])
        return files

    def all_names(self) -> list[str]:
        return [n for names in self.names.values() for n in names]


CASES: dict[str, Case] = {
    "classic": Case(
        {"train.py": CLASSIC},
        edits={
            # (a) main-loop level: reads the model, the scheduler, the loop-carried best_acc,
            # the validation loop's accumulated loss and the training loop's last loss (both
            # restored from checkpoints when their loops are skipped).
            "main": [("train.py", 'hl.log("acc", acc)', """
                wsq = sum(float((p.detach() ** 2).sum()) for p in model.parameters())
                hl.log("wnorm", wsq ** 0.5)
                hl.log("lr_now", sched.get_last_lr()[0])
                hl.log("best", best_acc)
                hl.log("val_sum", val_loss)
                hl.log("last_loss", loss.item())
            """)],
            # (b) inside the nested loop: one value per step (dropout and shuffling matter).
            "nested": [("train.py", "opt.step()", """
                hl.log("step_loss", loss.item())
                hl.log("out_std", out.std().item())
            """)],
        },
        names={"main": ["wnorm", "lr_now", "best", "val_sum", "last_loss"], "nested": ["step_loss", "out_std"]},
        recorded=["loss", "val_loss", "acc"],
        probed={"main": set(), "nested": {"step"}},
    ),
    "train_step": Case(
        {"train.py": TRAIN_STEP, "steps.py": STEPS},
        edits={
            "main": [("train.py", 'hl.log("train_loss", total / len(loader))', """
                hl.log("total", total)
                hl.log("lr_now", opt.param_groups[0]["lr"])
                hl.log("hist_len", len(history))
            """)],
            # (c) inside a function, in another module, called from the nested loop.
            "function": [
                ("steps.py", "^import torch.nn.functional as F", "import torch\nimport hindlog as hl"),
                ("steps.py", "opt.step()", """
                    grad = torch.cat([p.grad.flatten() for p in model.parameters()])
                    hl.log("grad_norm", grad.norm().item())
                    hl.log("out_mean", out.mean().item())
                """),
            ],
        },
        names={"main": ["total", "lr_now", "hist_len"], "function": ["grad_norm", "out_mean"]},
        recorded=["train_loss"],
        probed={"main": set(), "function": {"batch"}},
    ),
    "functions": Case(
        {"train.py": FUNCTIONS},
        edits={
            "main": [("train.py", 'hl.log("best_acc", best_acc)', """
                hl.log("gap", val_loss - train_loss)
                hl.log("best_epoch", best_epoch)
                hl.log("lr_now", sched.get_last_lr()[0])
            """)],
            # (b) in train_one_epoch's nested loop and (c) in a function that loop calls.
            "nested": [
                ("train.py", "total += loss.item() * len(y)", 'hl.log("step_loss", loss.item())'),
                ("train.py", "^torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)", """
                    pre = torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()
                    hl.log("pre_clip", pre)
                """),
            ],
        },
        names={"main": ["gap", "best_epoch", "lr_now"], "nested": ["step_loss", "pre_clip"]},
        recorded=["train_loss", "val_loss", "best_acc"],
        probed={"main": set(), "nested": {"step"}},
    ),
    "trainer": Case(
        {"train.py": TRAINER},
        edits={
            "main": [("train.py", 'hl.log("acc", acc)', """
                wsq = sum(float((p.detach() ** 2).sum()) for p in self.model.parameters())
                hl.log("wnorm", wsq ** 0.5)
                hl.log("lr_now", self.sched.get_last_lr()[0])
                hl.log("seen", len(self.history))
            """)],
            "nested": [("train.py", "self.opt.step()", """
                hl.log("step_loss", loss.item())
                hl.log("out_std", out.std().item())
            """)],
        },
        names={"main": ["wnorm", "lr_now", "seen"], "nested": ["step_loss", "out_std"]},
        recorded=["loss", "acc"],
        probed={"main": set(), "nested": {"step"}},
    ),
}


@dataclass
class Recorded:
    case: Case
    project: ReplayProject
    run: str
    #: name -> {context: value} of a fresh run of the project with every edit applied
    truth: dict[str, dict[Any, Any]]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory):
    """Record each case once, and run its fully modified version fresh once (the ground truth).
    The added statements only read state, so one fresh run serves every subset of them."""
    cache: dict[str, Recorded] = {}

    def get(name: str) -> Recorded:
        if name not in cache:
            case = CASES[name]
            base = tmp_path_factory.mktemp(f"rec-{name}")
            proj = ReplayProject(base)
            for path, text in case.files.items():
                proj.write(path, text)
            # The recording and the fresh run of the modified project run side by side.
            # A generous ε: the tests need checkpoints to replay from even on a loaded machine
            # (the values do not depend on it).
            truth = ground_truths(base, [case.modified(*case.edits)], case.all_names() + case.recorded,
                                  env={"HINDLOG_EPSILON": "0.5"}, also=[(proj, "train.py")])[0]
            runs = proj.run_ids()
            assert len(runs) == 1
            run = runs[0]
            # The scripts are deterministic: the fresh run logs what the recording logged.
            for n in case.recorded:
                assert_same_values(proj.values(n, run), truth[n], f"{name}: recorded {n} vs the fresh run")
            cache[name] = Recorded(case, proj, run, truth)
        return cache[name]

    return get


def replayed_copy(rec: Recorded, tmp_path: Path, *kinds: str) -> ReplayProject:
    """A copy of the recorded project and store, with the statements of ``kinds`` added."""
    proj = rec.project.copy(tmp_path)
    for path, text in rec.case.modified(*kinds).items():
        proj.write(path, text)
    return proj


def plan_field(stdout: str, label: str) -> str:
    """The rest of the plan's line that starts with ``label`` (e.g. ``"segments"``, ``"iterations"``)."""
    m = re.search(rf"^\s*{label}:? (.*)$", stdout, re.M)
    assert m, f"no '{label}:' in the replay output:\n{stdout}"
    return m.group(1).strip()


def must_run(stdout: str) -> set[str]:
    """The plan's nested loops that must run."""
    value = plan_field(stdout, "nested loops that must run")
    return set() if value.startswith("none") else set(value.split(", "))


def assert_probed(stdout: str, must: set[str], exact: bool) -> None:
    probed = must_run(stdout)
    if exact:
        assert probed == must, stdout
    else:
        assert probed == {"all"} or must <= probed, stdout


def segments(stdout: str) -> list[tuple[int, ...]]:
    return [tuple(int(x) for x in s.split(":")) for s in plan_field(stdout, "segments").split(", ")]


def summary(stdout: str) -> dict[str, int]:
    m = re.search(r"(\d+) new values? stored, (\d+) recorded values? checked, (\d+) loops? skipped, (\d+) run", stdout)
    assert m, f"no result line in the replay output:\n{stdout}"
    return dict(zip(("stored", "checked", "skipped", "run"), map(int, m.groups())))


def replay_rowids(proj: ReplayProject, run: str) -> set[int]:
    return {r[0] for r in proj.sql(
        "SELECT r.rowid FROM records r JOIN runs u ON u.id=r.run WHERE u.run_id=? AND r.source=1", (run,))}


def record_count(proj: ReplayProject) -> int:
    return proj.sql("SELECT COUNT(*) FROM records")[0][0]


# ----------------------------------------------------------------- ground truth


@pytest.mark.slow
@pytest.mark.parametrize(
    "case,kind",
    [
        ("classic", "main"),
        ("classic", "nested"),
        ("train_step", "function"),
        ("functions", "main"),
        ("functions", "nested"),
        ("trainer", "main"),
        ("trainer", "nested"),
    ],
)
def test_replayed_values_equal_a_fresh_run(recorded, tmp_path: Path, case: str, kind: str) -> None:
    """Replay with 1 and then 2 workers; each time the stored values equal the fresh run's,
    and the second replay replaces the first one's values (nothing duplicated). The classic
    script, and the statement in a function, are replayed both ways; the other scripts once per
    kind, with 1 worker for main-loop statements and 2 for nested ones, so each meets both."""
    rec = recorded(case)
    proj = replayed_copy(rec, tmp_path, kind)
    names = rec.case.names[kind]
    before = {n: proj.values(n, rec.run) for n in rec.case.recorded}
    previous: set[int] = set()
    for workers in ("1", "2") if case in ("classic", "train_step") else ("1",) if kind == "main" else ("2",):
        out = proj.replay("train.py", "--workers", workers).stdout
        assert_probed(out, rec.case.probed[kind], exact=kind == "main")
        if workers == "2":
            assert len(segments(out)) == 2, f"two workers should replay two segments:\n{out}"
        result = summary(out)
        assert result["checked"] > 0, f"recorded values are recomputed and checked:\n{out}"
        if kind == "main":
            assert result["skipped"] > 0, f"un-probed nested loops are skipped:\n{out}"
        for n in names:
            assert_same_values(proj.values(n, rec.run), rec.truth[n], f"{case}/{kind}, {workers} worker(s): {n}")
        for n in rec.case.recorded:
            assert proj.values(n, rec.run) == before[n], f"replay changed the recorded {n}"
        rows = replay_rowids(proj, rec.run)
        assert len(rows) == sum(len(rec.truth[n]) for n in names), "each value is stored once"
        assert not rows & previous, "the second replay's values replace the first one's"
        if previous:
            assert f"they replace {len(previous)} values of an earlier replay" in out, out
        else:
            assert "earlier replay" not in out, out
        assert result["stored"] == len(rows)
        previous = rows


NUMPY_TRAINER = """
import numpy as np
import hindlog as hl


class Watch:
    def __init__(self, trainer):
        self.trainer = trainer          # a back-reference to the object that holds this one
        self.seen = 0

    def after_epoch(self):
        self.seen += 1


class Trainer:
    def __init__(self):
        self.rng = np.random.default_rng(0)
        self.W = np.zeros((120, 120))   # 115 KB: stored as a tensor of its own
        self.params = [self.W]          # an alias: the update below goes through it
        self.watch = Watch(self)
        hl.checkpoints(rng=self.rng)

    def step(self):
        grad = self.rng.standard_normal(self.W.shape)
        for p in self.params:
            p -= 0.01 * grad

    def fit(self):
        for epoch in hl.loop("epoch", range(6)):
            for step in hl.loop("step", range(3)):
                self.step()             # changes self: a checkpoint holds it
            self.watch.after_epoch()
            hl.log("w", float(self.W.sum()))


Trainer().fit()
"""


def test_a_trainer_object_keeps_its_aliases_and_back_references_when_restored(tmp_path: Path) -> None:
    proj = ReplayProject(tmp_path)
    run = proj.record(NUMPY_TRAINER, env=DENSE)
    modified = NUMPY_TRAINER.replace('            hl.log("w", float(self.W.sum()))', """            hl.log("w", float(self.W.sum()))
            hl.log("via_alias", float(self.params[0].sum()))
            hl.log("seen", self.watch.trainer.watch.seen)""")
    truth = ground_truth(tmp_path, {"train.py": modified}, ["w", "via_alias", "seen"])
    proj.write("train.py", modified)
    for workers in ("1", "2"):
        out = proj.replay("train.py", "--workers", workers)
        assert "DIVERGED" not in out.stderr, out.stderr
        for name in ("via_alias", "seen"):
            assert_same_values(proj.values(name, run), truth[name], f"{name}, {workers} worker(s)")


@pytest.mark.slow
def test_dry_run_prints_the_plan_and_an_estimate_and_stores_nothing(recorded, tmp_path: Path) -> None:
    rec = recorded("classic")
    proj = replayed_copy(rec, tmp_path, "main", "nested")
    total = record_count(proj)
    out = proj.replay("train.py", "--dry-run", "--workers", "2").stdout
    assert f"run {rec.run}" in out
    src = proj.read().splitlines()
    for line in ('hl.log("wnorm", wsq ** 0.5)', 'hl.log("step_loss", loss.item())'):
        number = next(k for k, text in enumerate(src, 1) if line in text)
        assert f"+ train.py:{number}: {line}" in out, out
    assert_probed(out, {"step"}, exact=False)
    assert re.search(r"estimated time: \d+\.\ds \(a full re-run: \d+\.\ds\)", out), out
    assert plan_field(out, "iterations").startswith("0:5 of 5")
    assert segments(out)[0][0] == 0 and segments(out)[-1][1] == 5
    assert "stored" not in out
    assert record_count(proj) == total
    assert proj.count("wnorm") == 0 and proj.count("step_loss") == 0


@pytest.mark.slow
def test_iterations_limits_the_replayed_iterations(recorded, tmp_path: Path) -> None:
    rec = recorded("classic")
    proj = replayed_copy(rec, tmp_path, "main")
    out = proj.replay("train.py", "--iterations", "2:4", "--workers", "1").stdout
    assert plan_field(out, "iterations").startswith("2:4 of 5")
    assert segments(out)[0][0] == 2 and segments(out)[-1][1] == 4
    for n in rec.case.names["main"]:
        want = {k: v for k, v in rec.truth[n].items() if 2 <= dict(k)["epoch"] < 4}
        assert_same_values(proj.values(n, rec.run), want, n)
    # The replayed values sit next to the recorded ones in one table.
    df = proj.df("acc", "wnorm", runs=[rec.run])
    assert len(df) == 5 and df["acc"].notna().all()
    assert list(df["wnorm"].notna()) == [False, False, True, True, False]
    # Open ranges; a range past the run's end ends with it, as a slice does; one outside the run.
    out = proj.replay("train.py", "--iterations", "4:", "--dry-run").stdout
    assert plan_field(out, "iterations").startswith("4:5 of 5")
    out = proj.replay("train.py", "--iterations", "3:9", "--dry-run").stdout
    assert plan_field(out, "iterations").startswith("3:5 of 5")
    bad = proj.replay("train.py", "--iterations", "6:9", check=False)
    assert bad.returncode != 0 and "6:9" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
@pytest.mark.parametrize("how", ["rows", "objects"])
def test_a_run_whose_checkpoints_are_gone_replays_by_re_executing(recorded, tmp_path: Path, how: str) -> None:
    rec = recorded("classic")
    proj = replayed_copy(rec, tmp_path, "main")
    if how == "rows":
        proj.sql("DELETE FROM checkpoints")
    else:
        objects = proj.store / "objects"
        assert any(p.is_file() for p in objects.rglob("*"))
        shutil.rmtree(objects)
    result = proj.replay("train.py", "--workers", "2", check=False)
    out = result.stdout
    assert result.returncode == 0, result.stdout + result.stderr
    if how == "rows":
        assert "no checkpoints" in out and "re-executed" in out, out
        assert segments(out) == [(0, 5)]
        assert summary(out)["skipped"] == 0
    else:
        # The workers' fallbacks are said by the replay itself, not only in their logs.
        assert re.search(r"hindlog: checkpoint \w+ cannot be read: object \w+ is missing", result.stderr), result.stderr
        # A loop whose checkpoint could not be read ran: it is counted as run, not as skipped.
        assert summary(out)["skipped"] == 0 and summary(out)["run"] > 0, out
    for n in rec.case.names["main"]:
        assert_same_values(proj.values(n, rec.run), rec.truth[n], f"{how} gone: {n}")


# ----------------------------------------------------------------- several versions

MULTI_V1 = """
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import hindlog as hl

torch.manual_seed(3)
epochs = hl.arg("epochs", 4)
lr = hl.arg("lr", 0.5)
X = torch.randn(192, 4)
Y = (X[:, 0] > X[:, 1]).float()
loader = DataLoader(TensorDataset(X, Y), batch_size=16, shuffle=True)
model = nn.Linear(4, 1)
hl.checkpoints(model=model)

for epoch in hl.loop("epoch", range(epochs)):
    for x, y in hl.loop("step", loader):
        x = F.dropout(x, p=0.2, training=True)
        loss = F.binary_cross_entropy_with_logits(model(x).squeeze(1), y)
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= lr * p.grad
        model.zero_grad()
    hl.log("loss", loss.item())
"""


def multi_versions() -> list[str]:
    v1 = dedent(MULTI_V1)
    # v2: the dropout line is removed; the learning rate decays (two lines added).
    v2 = v1.replace("        x = F.dropout(x, p=0.2, training=True)\n", "")
    v2 = insert_after(v2, 'hl.log("loss", loss.item())', 'lr = lr * 0.8\nhl.log("lr", lr)')
    # v3: gradient clipping is added, dropout comes back with another rate, the lr log is removed.
    v3 = insert_before(v2, "with torch.no_grad():", "torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)")
    v3 = insert_before(v3, "loss = F.binary", "x = F.dropout(x, p=0.1, training=True)")
    v3 = v3.replace('    hl.log("lr", lr)\n', "")
    return [v1, v2, v3]


HINDSIGHT = 'hl.log("wabs", float(sum(p.detach().abs().sum() for p in model.parameters())))'


@pytest.mark.slow
def test_all_replays_every_recorded_version_with_its_own_code(tmp_path: Path) -> None:
    versions = multi_versions()
    assert len(set(versions)) == 3
    proj = ReplayProject(tmp_path)
    runs, truths = [], []
    for k, text in enumerate(versions):
        proj.write("train.py", text)
        if k < 2:
            proj.commit(f"version {k + 1}")  # the third version is recorded uncommitted
        # Each version is recorded while its ground truth (the version plus the statement) runs.
        truths += ground_truths(tmp_path, [{"train.py": insert_after(text, 'hl.log("loss", loss.item())', HINDSIGHT)}],
                                ["wabs", "loss"], tag=f"truth-v{k + 1}-", also=[(proj, "train.py")])
        runs.append(proj.run_ids()[-1])
    assert len(set(runs)) == 3
    proj.write("train.py", insert_after(versions[2], 'hl.log("loss", loss.item())', HINDSIGHT))
    result = proj.replay("train.py", "--all", "--workers", "1", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    for run in runs:
        assert f"run {run}" in result.stdout
    # The versions compute different things, so a value replayed in the wrong code would show.
    assert truths[0]["wabs"] != truths[1]["wabs"] != truths[2]["wabs"]
    for k, run in enumerate(runs):
        assert_same_values(proj.values("loss", run), truths[k]["loss"], f"version {k + 1}: recorded loss")
        assert_same_values(proj.values("wabs", run), truths[k]["wabs"], f"version {k + 1}: wabs")


# ----------------------------------------------------------------- small scripts without torch

COUNTER = """
import os
import time

import hindlog as hl

lr = hl.arg("lr", 0.1)
state = {"x": 0, "hist": []}
hl.checkpoints(state=state)
print("REPLAYING", hl.replaying())
for epoch in hl.loop("epoch", range(6)):
    for i in hl.loop("step", range(4)):
        state["x"] += i + epoch
    state["hist"].append(state["x"])
    time.sleep(0.03)
    print("epoch", epoch)
    hl.log("x", state["x"])
"""

#: Checkpoints at most iterations of the small scripts (their iterations are short, and hindlog's
#: start-up, charged to the same budget, is a good part of their run).
DENSE = {"HINDLOG_EPSILON": "0.9"}


def expected_x(epochs: int = 6) -> dict[Any, int]:
    x, out = 0, {}
    for epoch in range(epochs):
        x += sum(i + epoch for i in range(4))
        out[(("epoch", epoch),)] = x
    return out


@pytest.fixture
def counter(tmp_path: Path) -> tuple[ReplayProject, str]:
    proj = ReplayProject(tmp_path)
    proj.write("train.py", COUNTER)
    out = proj.python(env=DENSE).stdout
    assert "REPLAYING False" in out, "hl.replaying() is False while recording"
    run = proj.run_ids()[-1]
    assert proj.values("x", run) == expected_x()
    return proj, run


def test_replaying_is_true_only_inside_replay(counter) -> None:
    proj, run = counter
    proj.write("train.py", insert_after(dedent(COUNTER), 'hl.log("x", state["x"])', 'hl.log("flag", hl.replaying())'))
    proj.replay("train.py", "--workers", "2")
    flags = proj.values("flag", run)
    assert flags == {k: True for k in expected_x()}
    assert all(type(v) is bool for v in flags.values())


def test_a_changed_line_is_refused_with_the_diff_and_force_goes_on(counter) -> None:
    proj, run = counter
    text = insert_after(dedent(COUNTER), 'hl.log("x", state["x"])', 'hl.log("double", 2 * state["x"])')
    text = text.replace('print("epoch", epoch)', 'print("Epoch:", epoch)')
    proj.write("train.py", text)
    total = record_count(proj)
    refused = proj.replay("train.py", check=False)
    assert refused.returncode != 0
    assert '-    print("epoch", epoch)' in refused.stderr and '+    print("Epoch:", epoch)' in refused.stderr, refused.stderr
    assert "--force" in refused.stderr and "Traceback" not in refused.stderr
    assert record_count(proj) == total and proj.count("double") == 0
    # A removed line is refused too.
    proj.write("train.py", dedent(COUNTER).replace('    print("epoch", epoch)\n', "") + 'hl.log("end", 1)\n')
    removed = proj.replay("train.py", check=False)
    assert removed.returncode != 0 and '-    print("epoch", epoch)' in removed.stderr
    # --force replays the current code.
    proj.write("train.py", text)
    forced = proj.replay("train.py", "--force", "--workers", "1", check=False)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert proj.values("double", run) == {k: 2 * v for k, v in expected_x().items()}


def test_divergence_is_reported_with_name_and_iteration(tmp_path: Path) -> None:
    proj = ReplayProject(tmp_path)
    text = insert_after(dedent(COUNTER), 'hl.log("x", state["x"])', 'hl.log("pid", os.getpid())')
    run = proj.record(text, env=DENSE)
    proj.write("train.py", insert_after(text, 'hl.log("pid", os.getpid())', 'hl.log("double", 2 * state["x"])'))
    result = proj.replay("train.py", "--workers", "2", check=False)
    assert result.returncode != 0, result.stdout
    assert "DIVERGED" in result.stderr, result.stderr
    assert ": diverged, " in result.stdout, result.stdout  # said first, before the counts
    recorded_pid = proj.values("pid", run)[(("epoch", 0),)]
    assert re.search(rf"pid at iteration 0: recorded {recorded_pid}, replayed \d+", result.stderr), result.stderr
    assert "x at iteration" not in result.stderr, "values that do not depend on the process agree"
    # Every segment diverged: the values it computed came from a state that is not the
    # record's, and are not kept.
    assert "new values of the diverged segments were not kept" in result.stderr, result.stderr
    assert proj.count("double", run) == 0
    # A tolerance does not excuse a real difference.
    again = proj.replay("train.py", "--workers", "1", "--tolerance", "1e-6", check=False)
    assert again.returncode != 0 and "pid at iteration 0" in again.stderr
    assert proj.count("double", run) == 0
    # --keep-diverged keeps them (still reported, still a failure); --force alone does not.
    forced = proj.replay("train.py", "--workers", "2", "--force", check=False)
    assert forced.returncode != 0 and "new values of the diverged segments were not kept" in forced.stderr
    assert proj.count("double", run) == 0
    forced = proj.replay("train.py", "--workers", "2", "--keep-diverged", check=False)
    assert forced.returncode != 0 and "DIVERGED" in forced.stderr and "not kept" not in forced.stderr
    # Kept values that no check vouches for are said so wherever they are read.
    with pytest.warns(RuntimeWarning, match=rf"{len(expected_x())} value\(s\) of 'double' in run {run} come from a replay "
                      "whose recomputed values differed"):
        assert proj.values("double", run) == {k: 2 * v for k, v in expected_x().items()}
    logs = proj.hindlog("logs", "double")
    assert "note:" in logs.stderr and "differed from the record's, kept with --keep-diverged" in logs.stderr, logs.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        proj.df("x")  # recorded values alone: no warning


def test_a_new_statement_logging_a_recorded_name_where_the_record_did_not_is_stored(tmp_path: Path) -> None:
    proj = ReplayProject(tmp_path)
    text = insert_after(dedent(COUNTER), 'hl.log("x", state["x"])', 'if epoch % 2 == 0:\n        hl.log("even", state["x"])')
    run = proj.record(text, env=DENSE)
    assert set(dict(k)["epoch"] for k in proj.values("even", run)) == {0, 2, 4}
    modified = insert_after(text, 'hl.log("x", state["x"])', 'if epoch % 2 == 1:\n        hl.log("even", -state["x"])')
    proj.write("train.py", modified)
    result = proj.replay("train.py", "--workers", "2")
    assert summary(result.stdout)["stored"] == 3 and summary(result.stdout)["checked"] >= 3, result.stdout
    want = {(("epoch", e),): (v if e % 2 == 0 else -v) for e, v in ((dict(k)["epoch"], v) for k, v in expected_x().items())}
    assert proj.values("even", run) == want
    # Again: the replayed values replace the earlier replay's; the recorded ones stay.
    proj.replay("train.py", "--workers", "1")
    assert proj.values("even", run) == want and proj.count("even", run) == 6



def test_modules_imported_through_the_records_pythonpath_are_the_recorded_ones(tmp_path: Path) -> None:
    """A script in a subdirectory imports a root module through ``PYTHONPATH=.``: replay's workers
    get that PYTHONPATH pointed at the recorded code, whatever the replaying shell sets (another
    copy of the module elsewhere, or nothing)."""
    proj = ReplayProject(tmp_path)
    proj.write("mylib.py", "SCALE = 2\n\n\ndef f(x):\n    return x * SCALE\n")
    text = dedent(
        """
        import hindlog as hl
        import mylib

        total = 0
        for epoch in hl.loop("epoch", range(4)):
            for step in hl.loop("step", range(3)):
                total += mylib.f(step)
            hl.log("total", total)
        """
    )
    proj.write("scripts/train.py", text)
    proj.commit()
    run = proj.record(script="scripts/train.py", env={"PYTHONPATH": ".", **DENSE})
    assert proj.values("total", run) == {(("epoch", e),): 6 * (e + 1) for e in range(4)}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "mylib.py").write_text("SCALE = 5\n\n\ndef f(x):\n    return x * SCALE\n")
    proj.write("scripts/train.py", insert_after(text, 'hl.log("total", total)', 'hl.log("twice", 2 * total)'))
    for pythonpath in (str(elsewhere), ""):
        result = proj.replay("scripts/train.py", "--workers", "2", env={"PYTHONPATH": pythonpath})
        assert summary(result.stdout)["checked"] == 4, result.stdout
        assert proj.values("twice", run) == {(("epoch", e),): 12 * (e + 1) for e in range(4)}


def test_a_run_started_with_python_m_replays_as_a_module(tmp_path: Path) -> None:
    """``python -m pkg.train``, whose relative import needs its package: the workers start it
    the same way (a file run by path has no package), also named by module to ``hindlog replay``."""
    proj = ReplayProject(tmp_path)
    # The package's __init__ calls hindlog (hl.arg) while python -m still imports it.
    proj.write("pkg/__init__.py", "from . import config\n")
    proj.write("pkg/config.py", "import hindlog as hl\n\nSCALE = hl.arg('scale', 2)\n")
    proj.write("pkg/model.py", "from .config import SCALE\n\n\ndef f(x):\n    return SCALE * x\n")
    text = dedent(
        """
        import hindlog as hl
        from .model import f

        total = 0
        for epoch in hl.loop("epoch", range(4)):
            for step in hl.loop("step", range(3)):
                total += f(step)
            hl.log("total", total)
        """
    )
    proj.write("pkg/train.py", text)
    proj.commit()
    recorded = subprocess.run([PY, "-m", "pkg.train"], cwd=proj.root, env=proj.env(DENSE), capture_output=True, text=True, timeout=120)
    assert recorded.returncode == 0, recorded.stderr
    (run,) = proj.run_ids()
    shown = proj.hindlog("show", run, check=True).stdout
    assert shown.count("pkg/train.py  (run as -m pkg.train)") == 1 and "scale=2" in shown, shown
    proj.write("pkg/train.py", insert_after(text, 'hl.log("total", total)', 'hl.log("twice", 2 * total)'))
    for how in (["pkg/train.py", "--workers", "2"], ["-m", "pkg.train", "--workers", "1"]):
        result = proj.replay(*how)
        assert summary(result.stdout)["checked"] == 4, result.stdout
        assert proj.values("twice", run) == {(("epoch", e),): 12 * (e + 1) for e in range(4)}
    missing = proj.replay("-m", "pkg.nope", check=False)
    assert missing.returncode == 2 and "no module pkg.nope under" in missing.stderr, missing.stderr

def test_a_worker_killed_by_a_signal_is_named_with_the_signal(counter) -> None:
    """A worker the out-of-memory killer ends leaves no traceback: the failed segment was named
    with an empty reason."""
    proj, run = counter
    statement = """
        if epoch == 5:
            __import__("os").kill(__import__("os").getpid(), 9)
        hl.log("double", 2 * state["x"])
    """
    proj.write("train.py", insert_after(dedent(COUNTER), 'hl.log("x", state["x"])', statement))
    result = proj.replay("train.py", "--workers", "1", check=False)
    assert result.returncode != 0
    assert "segment 0:6 failed" in result.stderr, result.stderr
    assert "the worker was killed by SIGKILL: by the kernel's out-of-memory killer" in result.stderr, result.stderr


def test_a_file_made_after_the_run_is_named_when_a_new_statement_cannot_find_it(counter) -> None:
    """A held-out set saved after the run, read by a new statement by its relative path: the
    replay's copy of the project leaves it out (made since the run started), and the failure
    told the user to "make the statement work" in the run's code."""
    proj, run = counter
    proj.write("data/heldout.txt", "3\n")
    statement = 'hl.log("held", float(open("data/heldout.txt").read()))'
    proj.write("train.py", insert_after(dedent(COUNTER), 'hl.log("x", state["x"])', statement))
    result = proj.replay("train.py", "--workers", "1", check=False)
    assert result.returncode != 0
    assert "data/heldout.txt is in the project, but made or changed since the run started" in result.stderr, result.stderr
    assert str(proj.root / "data" / "heldout.txt") in result.stderr
    absolute = f'hl.log("held", float(open({str(proj.root / "data" / "heldout.txt")!r}).read()))'
    proj.write("train.py", insert_after(dedent(COUNTER), 'hl.log("x", state["x"])', absolute))
    proj.replay("train.py", "--workers", "1")
    assert set(proj.values("held", run).values()) == {3.0}


BEST_SAVED = """
import time
import numpy as np
import hindlog as hl

w = np.zeros(3)
hl.checkpoints(w=w)
best = -1e9
for epoch in hl.loop("epoch", range(6)):
    for i in hl.loop("step", range(4)):
        w += np.random.normal(size=3)
        time.sleep(0.01)
    score = float(w[0])
    if score > best:
        best = score
        np.save("best.npy", w)
    hl.log("score", score)
final = np.load("best.npy")
"""


def test_a_segment_that_reads_a_file_another_workers_segment_wrote_is_not_kept(tmp_path: Path) -> None:
    """The workers share one copy of the project: the last segment loaded the best model that
    another segment's worker had saved there (or would have, a moment later), not the one the
    record loaded, and its new values were stored as if they were right; a log file each
    worker appended to held some segments' lines."""
    proj = ReplayProject(tmp_path)
    text = "import numpy as np\nnp.random.seed(0)\n" + BEST_SAVED
    run = proj.record(text, env=DENSE)
    new = insert_after(text, 'hl.log("score", score)', 'open("scores.txt", "a").write(f"{epoch} {score}\\n")') \
        + 'hl.log("best_sum", float(final.sum()))\n'
    proj.write("train.py", new)
    out = proj.replay("train.py", "--workers", "3", check=False)
    assert out.returncode != 0
    # The last segment reads best.npy after another worker saved one there, or before any did.
    assert "best.npy, which the replayed script wrote in another segment's worker" in out.stderr \
        or "the run wrote best.npy while it ran: a segment that starts mid-run has not written it yet" in out.stderr, out.stderr
    assert "Replay with --workers 1" in out.stderr
    assert "scores.txt was written by several segments' workers" in out.stdout, out.stdout
    assert proj.values("best_sum", run) == {}
    proj.replay("train.py", "--workers", "1")
    truth = ground_truth(tmp_path, {"train.py": new}, ["best_sum"])
    assert proj.values("best_sum", run) == truth["best_sum"]


def test_torch_save_is_seen_by_the_check_of_shared_files_and_keeps_out_of_the_projects_files(tmp_path: Path) -> None:
    """``torch.save`` writes from C++, which raises no audit event: the best model one worker
    saved and the last segment loaded was not seen as shared (its new value was stored as if
    right), and a save over a linked input file wrote into the project's file."""
    proj = ReplayProject(tmp_path)
    proj.write(".gitignore", "init.pt\n")
    proj.write("init.pt", "user's file\n")
    past = time.time() - 600  # older than the run: an input, linked into the replay's copy
    os.utime(proj.root / "init.pt", (past, past))
    text = BEST_SAVED.replace("import numpy as np\n", "import numpy as np\nimport torch\nnp.random.seed(0)\n") \
        .replace('np.save("best.npy", w)', 'torch.save(torch.from_numpy(w), "best.pt")') \
        .replace('final = np.load("best.npy")', 'final = torch.load("best.pt").numpy()')
    run = proj.record(text, env=DENSE)
    new = insert_after(text, 'hl.log("score", score)', 'torch.save(torch.from_numpy(w), "init.pt")') \
        + 'hl.log("best_sum", float(final.sum()))\n'
    proj.write("train.py", new)
    out = proj.replay("train.py", "--workers", "3", check=False)
    assert out.returncode != 0
    assert "best.pt, which the replayed script wrote in another segment's worker" in out.stderr \
        or "the run wrote best.pt while it ran: a segment that starts mid-run has not written it yet" in out.stderr, out.stderr
    assert "init.pt was written by several segments' workers" in out.stdout, out.stdout
    assert proj.values("best_sum", run) == {}
    assert (proj.root / "init.pt").read_text() == "user's file\n"
    proj.replay("train.py", "--workers", "1")
    truth = ground_truth(tmp_path, {"train.py": new}, ["best_sum"])
    assert proj.values("best_sum", run) == truth["best_sum"]
    assert (proj.root / "init.pt").read_text() == "user's file\n"


def test_new_code_that_carries_a_value_across_iterations_replays_from_the_first_one(counter) -> None:
    """``total = 0`` before the main loop and ``total += x`` in it, both new: a segment starting
    mid-run began at 0 (no checkpoint holds what the record never had) and stored running sums
    of its own iterations as a success."""
    proj, run = counter
    text = dedent(COUNTER).replace("hl.checkpoints(state=state)\n", "hl.checkpoints(state=state)\ntotal = 0\n")
    window = "window = []\n"
    text = text.replace("total = 0\n", "total = 0\n" + window)
    proj.write("train.py", insert_after(text, 'hl.log("x", state["x"])',
                                        'total += state["x"]\nhl.log("running", total)\n'
                                        'window.append(state["x"])\nhl.log("last2", sum(window[-2:]))'))
    out = proj.replay("train.py", "--workers", "2").stdout
    assert "the new code carries total, window from one iteration to the next" in out, out
    assert len(segments(out)) == 1, out
    xs = list(expected_x().values())
    assert list(proj.values("running", run).values()) == [sum(xs[:k + 1]) for k in range(6)]
    assert list(proj.values("last2", run).values()) == [sum(xs[max(k - 1, 0):k + 1]) for k in range(6)]
    # A new value set before the loop and only read in it carries nothing: segments as before.
    proj.write("train.py", insert_after(dedent(COUNTER).replace("hl.checkpoints(state=state)\n", "hl.checkpoints(state=state)\nscale = 3\n"),
                                        'hl.log("x", state["x"])', 'hl.log("scaled", scale * state["x"])'))
    out = proj.replay("train.py", "--workers", "2").stdout
    assert len(segments(out)) == 2 and "carries" not in out, out


@pytest.mark.parametrize("variable", ["SLURM_ARRAY_TASK_ID", "SGE_TASK_ID"])
def test_a_job_arrays_index_is_set_as_the_record_had_it(tmp_path: Path, variable: str) -> None:
    """A sweep point chosen by a job array's index (``SLURM_ARRAY_TASK_ID``): the replay ran
    with the replaying shell's (none), and a new statement logging the learning rate stored the
    default's as a success."""
    proj = ReplayProject(tmp_path)
    text = dedent(COUNTER).replace(
        'lr = hl.arg("lr", 0.1)\n', f'lr = [0.1, 0.3, 0.5][int(os.environ.get("{variable}", "0"))]\n')
    assert variable in text
    run = proj.record(text, env={**DENSE, variable: "2"})
    proj.write("train.py", insert_after(text, 'hl.log("x", state["x"])', 'hl.log("lr_used", lr)'))
    proj.replay("train.py", "--workers", "2")
    assert set(proj.values("lr_used", run).values()) == {0.5}


def test_a_file_several_workers_wrote_is_not_kept_as_the_replays_output(counter) -> None:
    """Each segment's worker saves ``last.txt`` (a best or last model): the file kept with the
    replay's outputs was whichever worker wrote last, often not the last iteration's."""
    proj, run = counter
    proj.write("train.py", insert_after(dedent(COUNTER), 'hl.log("x", state["x"])',
                                        'open("last.txt", "w").write(str(state["x"]))\nhl.log("double", 2 * state["x"])'))
    out = proj.replay("train.py", "--workers", "2").stdout
    assert len(segments(out)) == 2, out
    assert "last.txt was written by several segments' workers: each holds the iterations of the worker that wrote it " \
        "last, and is not kept" in out, out
    assert not (proj.store / "outputs" / run / "last.txt").exists()
    assert proj.values("double", run) == {k: 2 * v for k, v in expected_x().items()}


def test_files_written_outside_the_project_are_backed_up_and_named(tmp_path: Path) -> None:
    """The script saves to a results folder by absolute path, outside the project: replaying an
    older run wrote over the newer run's files there, and said nothing. What they held is now
    kept in the store, and the replay names them."""
    proj = ReplayProject(tmp_path)
    results = tmp_path / "results"
    text = dedent(COUNTER).replace('    print("epoch", epoch)\n',
                                   f'    open({str(results / "x.txt")!r}, "w").write(str(state["x"] * lr))\n')
    results.mkdir()
    first = proj.record(text, env=DENSE)
    proj.record(text, env={**DENSE, "HINDLOG_SET_lr": "0.5"})
    newer = (results / "x.txt").read_text()
    proj.write("train.py", insert_after(text, 'hl.log("x", state["x"])', 'hl.log("double", 2 * state["x"])'))
    out = proj.replay("train.py", "--run", first, "--workers", "1").stdout
    assert f"the replayed code wrote 1 file outside the project ({results / 'x.txt'})" in out, out
    [backup] = (proj.store / "outside-backups").glob(f"{first}-*")
    assert (backup / str(results / "x.txt").lstrip("/")).read_text() == newer
    assert proj.values("double", first) == {k: 2 * v for k, v in expected_x().items()}


def test_a_segment_that_reads_back_its_own_file_is_kept(counter) -> None:
    """Each iteration writes a file and reads it back: what a worker reads is what it wrote, not
    another segment's, and the replay keeps its values (the check of shared files compares
    when each worker wrote)."""
    proj, run = counter
    # (A file of each iteration's own: two workers writing one file in turn would race.)
    statement = """
        with open(f"last{epoch}.txt", "w") as f:
            f.write(str(state["x"]))
        with open(f"last{epoch}.txt") as f:
            hl.log("back", float(f.read()))
    """
    proj.write("train.py", insert_after(dedent(COUNTER), 'hl.log("x", state["x"])', statement))
    out = proj.replay("train.py", "--workers", "2").stdout
    assert len(segments(out)) == 2, out
    assert proj.values("back", run) == {k: float(v) for k, v in expected_x().items()}


def test_a_run_started_from_the_folder_above_its_project_says_why_its_relative_paths_fail(tmp_path: Path) -> None:
    """``python proj/train.py`` from a folder outside git that holds the data: the run belongs to
    ``proj``, whose copy the replay's workers run in, where ``data.txt`` is not: the failure was
    hidden by a lookup of the current folder's store. It is said, with what to do."""
    proj = ReplayProject(tmp_path)
    (tmp_path / "data.txt").write_text("3\n")
    text = dedent("""
        import time
        import hindlog as hl

        state = {"x": 0.0}
        hl.checkpoints(state=state)
        scale = float(open("data.txt").read())
        for epoch in hl.loop("epoch", range(5)):
            for i in hl.loop("step", range(4)):
                state["x"] += scale * i
                time.sleep(0.01)
            hl.log("x", state["x"])
    """)
    proj.write("train.py", text)
    proj.commit("train")
    time.sleep(0.05)  # (data.txt is older than the run: an input)
    subprocess.run([PY, "proj/train.py"], cwd=tmp_path, env=proj.env(DENSE), check=True, capture_output=True, timeout=120)
    (run,) = proj.run_ids()
    proj.write("train.py", insert_after(text, 'hl.log("x", state["x"])', 'hl.log("x2", 2 * state["x"] + float(open("data.txt").read()))'))
    out = subprocess.run([PY, "-m", "hindlog.cli", "replay", "proj/train.py", "--workers", "2"], cwd=tmp_path,
                         env=proj.env(), capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert f"the run ran in {tmp_path}, outside its project {proj.root}" in out.stderr, out.stderr
    assert "Start such scripts from their project's folder, or read inputs by absolute paths" in out.stderr
    assert proj.values("x2", run) == {}


def test_a_new_hl_log_in_a_script_that_does_not_import_hindlog_is_refused_before_it_runs(tmp_path: Path) -> None:
    """A script recorded with ``hindlog run`` imports no hindlog: a new ``hl.log`` line without
    the import failed with a NameError in every segment, after each had started."""
    proj = ReplayProject(tmp_path)
    text = "import time\ntotal = 0\nfor epoch in range(3):\n    for i in range(3):\n        total += i\n        time.sleep(0.01)\n    print('total', total)\n"
    proj.write("train.py", text)
    proj.commit("train")
    proj.hindlog("run", "train.py", check=True)
    proj.write("train.py", text + "    hl.log('t2', 2 * total)\n")
    planned = proj.replay("train.py", "--dry-run", check=False)
    assert planned.returncode != 0
    assert "train.py:8 calls hl, which train.py does not import: add `import hindlog as hl`" in planned.stderr, planned.stderr
    proj.write("train.py", "import hindlog as hl\n" + text + "    hl.log('t2', 2 * total)\n")
    proj.replay("train.py", "--dry-run")


def test_tolerance_allows_float_noise(tmp_path: Path) -> None:
    proj = ReplayProject(tmp_path)
    # A recorded value with noise in its last digits (like a GPU reduction), different every time.
    text = insert_after(dedent(COUNTER), 'hl.log("x", state["x"])',
                        'hl.log("noisy", 1.0 + 1e-15 * (time.perf_counter_ns() % 100003 + 1))')
    run = proj.record(text, env=DENSE)
    proj.write("train.py", insert_after(text, "hl.log(\"noisy\"", 'hl.log("double", 2 * state["x"])'))
    strict = proj.replay("train.py", "--workers", "1", check=False)
    assert strict.returncode != 0 and "noisy at iteration" in strict.stderr
    loose = proj.replay("train.py", "--workers", "1", "--tolerance", "1e-9", check=False)
    assert loose.returncode == 0, loose.stdout + loose.stderr
    assert proj.values("double", run) == {k: 2 * v for k, v in expected_x().items()}


def test_a_crashing_segment_is_named_and_the_other_segments_are_kept(counter) -> None:
    proj, run = counter
    statement = """
        if epoch == 5:
            raise RuntimeError("hindsight statement failed")
        hl.log("double", 2 * state["x"])
    """
    proj.write("train.py", insert_after(dedent(COUNTER), 'hl.log("x", state["x"])', statement))
    result = proj.replay("train.py", "--workers", "2", check=False)
    assert result.returncode != 0
    segs = segments(result.stdout)
    assert len(segs) == 2, result.stdout
    (a, b), (c, d) = segs
    assert b == c and d == 6
    assert f"segment {c}:6 failed" in result.stderr, result.stderr
    assert f"--iterations {c}:6" in result.stderr
    assert "RuntimeError: hindsight statement failed" in result.stderr
    assert f"segment {a}:{b} failed" not in result.stderr
    got = proj.values("double", run)
    want = {k: 2 * v for k, v in expected_x().items()}
    assert {k: v for k, v in got.items() if dict(k)["epoch"] < c} == {k: v for k, v in want.items() if dict(k)["epoch"] < c}
    assert all(got[k] == want[k] for k in got), "whatever was stored is right"
    # The failed segment can then be replayed alone (here once the statement is fixed).
    proj.write("train.py", insert_after(dedent(COUNTER), 'hl.log("x", state["x"])', 'hl.log("double", 2 * state["x"])'))
    proj.replay("train.py", "--iterations", f"{c}:6", "--workers", "1")
    assert proj.values("double", run) == want


def _workers_of(run: str) -> list[int]:
    """Pids of the replay workers of ``run`` still alive (they run in its scratch copy)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next((l for l in (entry / "status").read_text().splitlines() if l.startswith("State:")), "")
        except OSError:
            continue
        if f"hindlog-replay-{run}-" in cmdline and "zombie" not in state:
            pids.append(int(entry.name))
    return pids


@contextlib.contextmanager
def _replay_driver(proj: ReplayProject, *args: str, runs: tuple[str, ...] = ()) -> Iterator[subprocess.Popen[str]]:
    """`hindlog replay ARGS` started as a terminal's foreground job (Ctrl-C reaches it even where
    the tests were started with SIGINT ignored, in the background or under nohup); on the way
    out it is killed if still running, and so are the workers of ``runs``."""
    import signal

    driver = subprocess.Popen([sys.executable, "-m", "hindlog.cli", "replay", *args], cwd=proj.root, env=proj.env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        yield driver
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
        for run in runs:
            for pid in _workers_of(run):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_stopping_a_replay_stops_its_workers(tmp_path: Path, how: str) -> None:
    import signal
    import time

    proj = ReplayProject(tmp_path)
    slow = dedent(COUNTER).replace("range(6)", "range(8)").replace("time.sleep(0.03)", f"time.sleep(3.0 if os.path.exists({str(tmp_path / 'slow')!r}) else 0.05)")
    run = proj.record(slow, env=DENSE)
    proj.write("train.py", insert_after(slow, 'hl.log("x", state["x"])', 'hl.log("double", 2 * state["x"])'))
    (tmp_path / "slow").write_text("")  # the workers' iterations take 3 s while it exists
    with _replay_driver(proj, "train.py", "--workers", "2", runs=(run,)) as driver:
        deadline = time.monotonic() + 60
        while len(_workers_of(run)) < 2 and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.05)
        assert len(_workers_of(run)) == 2, "the workers did not start"
        time.sleep(0.5)
        driver.send_signal(getattr(signal, how))
        _out, err = driver.communicate(timeout=60)
        # Each worker has 4 iterations of 3 s left: they must stop, not finish.
        deadline = time.monotonic() + 5
        while _workers_of(run) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _workers_of(run) == [], f"workers left running after {how} of the replay"
    assert driver.returncode != 0
    if how != "SIGKILL":
        # Said in one line, not a traceback, with what to replay again; the scratch copy is gone.
        # The shell's status for the signal: 130 for Ctrl-C, 143 for kill.
        assert driver.returncode == (130 if how == "SIGINT" else 143), err
        assert "Traceback" not in err and f"replay of run {run} interrupted" in err, err
        assert re.search(rf"Replay the rest with --run {run} --iterations \d+:8\.", err), err
        # The plan was shown when the replay started, not held back until it would have ended.
        assert "iterations 0:8 of 8" in _out, _out
        assert not list((tmp_path / "tmp").glob(f"hindlog-replay-{run}-*"))
    # The store stays usable: the replay can be run again (here with short iterations), to the end.
    (tmp_path / "slow").unlink()
    proj.replay("train.py", "--workers", "2")
    assert proj.values("double", run) == {k: 2 * v for k, v in expected_x(8).items()}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("variant", ["matching", "diverged", "diverged, --keep-diverged"])
def test_ctrl_c_keeps_the_values_of_the_segments_that_finished(tmp_path: Path, variant: str) -> None:
    import signal
    import time

    proj = ReplayProject(tmp_path)
    flag = tmp_path / "slow"
    # In the replay, the second segment's iterations (4 to 7) take 3 s each; the first's do not.
    slow = dedent(COUNTER).replace("range(6)", "range(8)").replace(
        "time.sleep(0.03)", f"time.sleep(3.0 if epoch >= 4 and os.path.exists({str(flag)!r}) else 0.03)")
    if variant != "matching":  # a recorded value that no replay recomputes alike
        slow = insert_after(slow, 'hl.log("x", state["x"])', 'hl.log("pid", os.getpid())')
    run = proj.record(slow, env=DENSE)
    proj.write("train.py", insert_after(slow, 'hl.log("x", state["x"])', 'hl.log("double", 2 * state["x"])'))
    flag.write_text("")
    force = ("--keep-diverged",) if "keep-diverged" in variant else ()
    with _replay_driver(proj, "train.py", "--workers", "2", *force, runs=(run,)) as driver:
        deadline = time.monotonic() + 60
        while len(_workers_of(run)) < 2 and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.05)
        while len(_workers_of(run)) > 1 and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.05)  # until the first segment's worker has ended
        assert len(_workers_of(run)) == 1, "the first segment did not end alone"
        driver.send_signal(signal.SIGINT)
        out, err = driver.communicate(timeout=60)
    assert driver.returncode == 130, err
    # (The second segment starts after a checkpointed iteration: 4, or a later one on a loaded machine.)
    cut = segments(out)[0][1]
    assert cut >= 4, out
    first_half = {k: 2 * v for k, v in expected_x(8).items() if k[0][1] < cut}
    if variant == "matching":
        assert f"Segments finished: 0:{cut}; the values of 0:{cut} are kept." in err, err
        assert proj.values("double", run) == first_half
    elif variant == "diverged":
        assert f"Segments finished: 0:{cut}; 0:{cut} diverged from the record: their values are not kept." in err, err
        assert proj.count("double", run) == 0
    else:
        assert f"the values of 0:{cut} are kept (0:{cut} diverged from the record: kept with --keep-diverged, marked)." in err, err
        with pytest.warns(RuntimeWarning, match=f"{cut} value\\(s\\) of 'double'"):
            assert proj.values("double", run) == first_half


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_that_ignore_sigterm_end_when_the_replay_is_killed(tmp_path: Path) -> None:
    """A worker blocked in C code (a distributed rendezvous whose peer is gone) runs no SIGTERM
    handler: ignoring SIGTERM stands for it. Killed with the replay, it must not live on."""
    import signal
    import time

    proj = ReplayProject(tmp_path)
    slow = dedent(COUNTER).replace("import os\n", "import os\nimport signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n", 1)
    slow = slow.replace("time.sleep(0.03)", f"time.sleep(3.0 if os.path.exists({str(tmp_path / 'slow')!r}) else 0.03)")
    run = proj.record(slow, env=DENSE)
    proj.write("train.py", insert_after(slow, 'hl.log("x", state["x"])', 'hl.log("double", 2 * state["x"])'))
    (tmp_path / "slow").write_text("")
    with _replay_driver(proj, "train.py", "--workers", "2", runs=(run,)) as driver:
        deadline = time.monotonic() + 60
        while len(_workers_of(run)) < 2 and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.05)
        assert len(_workers_of(run)) == 2, "the workers did not start"
        driver.send_signal(signal.SIGKILL)
        driver.communicate(timeout=60)
        deadline = time.monotonic() + 5
        while _workers_of(run) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _workers_of(run) == [], "workers that ignore SIGTERM outlived the replay"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_during_replay_all_names_the_runs_already_replayed(tmp_path: Path) -> None:
    import signal
    import time

    proj = ReplayProject(tmp_path)
    flag = tmp_path / "slow"
    # The second run's iterations take 3 s in its replay (lr 0.2), the first one's do not.
    slow = dedent(COUNTER).replace("time.sleep(0.03)", f"time.sleep(3.0 if lr > 0.15 and os.path.exists({str(flag)!r}) else 0.03)")
    first = proj.record(slow, env=DENSE)
    second = proj.record(env={**DENSE, "HINDLOG_SET_lr": "0.2"})
    proj.write("train.py", insert_after(slow, 'hl.log("x", state["x"])', 'hl.log("double", 2 * state["x"])'))
    flag.write_text("")
    with _replay_driver(proj, "train.py", "--all", "--workers", "1", runs=(second,)) as driver:
        deadline = time.monotonic() + 60
        while not _workers_of(second) and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.05)
        assert _workers_of(second), "the second run's replay did not start"
        time.sleep(0.5)
        driver.send_signal(signal.SIGINT)
        _out, err = driver.communicate(timeout=60)
    assert driver.returncode == 130, err
    assert f"replay of run {second} interrupted" in err and f"The replays of the runs before it ended: {first}." in err, err
    assert proj.values("double", first) == {k: 2 * v for k, v in proj.values("x", first).items()}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_a_replay_stopped_midway_keeps_the_earlier_replays_values_once(tmp_path: Path, how: str) -> None:
    import signal
    import time

    proj = ReplayProject(tmp_path)
    slow = dedent(COUNTER).replace("range(6)", "range(8)")
    run = proj.record(slow, env=DENSE)
    statement = f'hl.log("double", 2 * state["x"])\ntime.sleep(3.0 if os.path.exists({str(tmp_path / "slow")!r}) else 0)'
    proj.write("train.py", insert_after(slow, 'hl.log("x", state["x"])', statement))
    proj.replay("train.py", "--workers", "2")
    want = {k: 2 * v for k, v in expected_x(8).items()}
    assert proj.values("double", run) == want and proj.count("double", run) == 8

    # Again, slowly: each worker stores its first iteration's value, then is stopped in its second.
    (tmp_path / "slow").write_text("")
    with _replay_driver(proj, "train.py", "--workers", "2") as driver:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and driver.poll() is None and \
                len(proj.sql("SELECT DISTINCT ctx / 100000000 FROM records WHERE source=2")) < 2:
            time.sleep(0.05)
        assert driver.poll() is None, driver.communicate()
        driver.send_signal(getattr(signal, how))
        out, err = driver.communicate(timeout=60)
        deadline = time.monotonic() + 10
        while _workers_of(run) and time.monotonic() < deadline:  # after kill -9 they stop on their own
            time.sleep(0.05)
    assert driver.returncode != 0
    # The earlier replay's values of the iterations the stopped one did not finish are all there, none twice.
    assert proj.values("double", run) == want
    visible = "SELECT COUNT(*) FROM records r JOIN names n ON n.id=r.name WHERE n.name='double' AND r.source {}"
    assert proj.sql(visible.format("< 2")) == [(8,)]
    # After kill -9 the workers' values stay hidden until the next replay of the run discards them.
    assert proj.sql(visible.format("= 2")) == [(2 if how == "SIGKILL" else 0,)]
    # So does the scratch copy of the code that the killed replay could not remove.
    scratch = [p for p in Path(proj.env()["TMPDIR"]).glob(f"hindlog-replay-{run}-*") if (p / ".hindlog-scratch.json").exists()]
    assert len(scratch) == (1 if how == "SIGKILL" else 0), scratch
    collected = proj.hindlog("gc", check=True)  # or gc does, once no replay of the run is running
    assert proj.sql(visible.format("= 2")) == [(0,)] and proj.sql(visible.format("< 2")) == [(8,)]
    assert not any(p.exists() for p in scratch)
    assert ("1 scratch copies of the code that killed replays or resumes left" in collected.stdout) == (how == "SIGKILL"), collected.stdout
    logs = proj.hindlog("logs", "double", "--run", run, check=True)
    assert "more value" not in logs.stderr, logs.stderr
    if how == "SIGINT":
        assert f"replay of run {run} interrupted" in err, err
    (tmp_path / "slow").unlink()
    again = proj.replay("train.py", "--workers", "2")
    assert "they replace 8 values" in again.stdout, again.stdout
    assert proj.values("double", run) == want and proj.count("double", run) == 8  # pending ones included


LONG_MAIN_LOOP = """
import hindlog as hl
from hindlog import recorder

recorder.MAX_TIMED_ITERATIONS = 5  # stands for the 100,000 iterations whose timings a run keeps
state = {"x": 0}
hl.checkpoints(state=state)
for step in hl.loop("step", range(12)):
    state["x"] += step
    if step % 4 == 0:
        hl.log("x", state["x"])
"""


def test_a_main_loop_longer_than_its_timings_is_replayed_to_its_end(tmp_path: Path) -> None:
    """A run keeps the durations of its first iterations only; replay still runs them all (the
    last logged iteration, 8 here, is not the last one)."""
    proj = ReplayProject(tmp_path)
    run = proj.record(LONG_MAIN_LOOP, env=DENSE)
    proj.write("train.py", insert_after(dedent(LONG_MAIN_LOOP), 'state["x"] += step', 'hl.log("total", state["x"])'))
    out = proj.replay("train.py").stdout
    assert "iterations 0:12 of 12" in out, out
    assert proj.values("total", run) == {(("step", k),): sum(range(k + 1)) for k in range(12)}


BROKEN_OFF = """
import time
import hindlog as hl

state = {"w": 0.0}
hl.checkpoints(state=state)
for epoch in hl.loop("epoch", range(4)):
    for step in hl.loop("batch", range(10)):
        state["w"] += 0.5
        loss = state["w"] * 3
        time.sleep(0.01)
        if step == epoch + 1:
            break
    hl.log("loss", loss)
"""


def test_a_nested_loop_left_by_break_keeps_the_locals_read_after_it(tmp_path: Path) -> None:
    """The last batch's ``loss`` of a loop left by ``break`` is in its checkpoint: skipped in
    replay, the loop leaves it as running it did (the recorded ``loss`` values are checked)."""
    proj = ReplayProject(tmp_path)
    run = proj.record(BROKEN_OFF, env=DENSE)
    proj.write("train.py", insert_after(dedent(BROKEN_OFF), 'hl.log("loss", loss)', 'hl.log("double", 2 * loss)'))
    out = proj.replay("train.py", "--workers", "1").stdout
    result = summary(out)
    assert result["checked"] == 4 and result["skipped"] > 0, out
    assert proj.values("double", run) == {k: 2 * v for k, v in proj.values("loss", run).items()}


FOR_ELSE = """
import time
import hindlog as hl

state = {"w": 0.0, "elses": 0}
hl.checkpoints(state=state)
for epoch in hl.loop("epoch", range(4)):
    for x in hl.loop("step", range(3)):
        state["w"] += 0.5
        time.sleep(0.02)
        if epoch % 2 == 1 and x == 1:
            break
    else:
        state["elses"] += 1
    hl.log("elses", state["elses"])
"""


def test_a_nested_loop_left_by_break_before_its_else_clause_runs_again_in_replay(tmp_path: Path) -> None:
    """Skipped, a loop ends as an empty one and its ``else:`` runs: where the record left it by
    ``break`` (odd epochs), replay runs it instead, and the ``else:`` stays skipped."""
    proj = ReplayProject(tmp_path)
    run = proj.record(FOR_ELSE, env=DENSE)
    proj.write("train.py", insert_after(dedent(FOR_ELSE), 'hl.log("elses", state["elses"])', 'hl.log("w", state["w"])'))
    out = proj.replay("train.py", "--workers", "1").stdout
    result = summary(out)
    assert result["checked"] == 4 and result["run"] >= 2, out  # the odd epochs' loops ran
    w, want = 0.0, {}
    for e in range(4):
        w += 1.5 if e % 2 == 0 else 1.0  # three steps, or two and the break
        want[(("epoch", e),)] = w
    assert proj.values("w", run) == want


EVALUATED = """
import time
import hindlog as hl

state = {"w": 0.0}
hl.checkpoints(state=state)

def evaluate(data):
    total = 0.0
    for x in hl.loop("val", data):
        total += x * state["w"]
    return total

for epoch in hl.loop("epoch", range(4)):
    for x in hl.loop("step", range(3)):
        state["w"] += 0.5
        time.sleep(0.02)
    val = evaluate([1.0, 2.0])
    hl.log("val", val)
    for x in hl.loop("val", range(2)):  # a second loop of the same name, after the validation
        state["w"] -= 0.25
"""


LOGGING_EVALUATE = """
import hindlog as hl

state = {"w": 0.0}
hl.checkpoints(state=state)

def evaluate(data):
    total = 0.0
    for x in hl.loop("val", data):
        total += x * state["w"]
    hl.log("val_total", total)
    return total

for epoch in hl.loop("epoch", range(4)):
    for x in hl.loop("step", range(3)):
        state["w"] += 0.5
    evaluate([1.0, 2.0])
"""


def test_a_recorded_name_logged_by_code_a_new_statement_runs_is_new_not_checked(tmp_path: Path) -> None:
    """``evaluate`` logs ``val_total``; a new statement calls it first, on other data. Its value
    is stored, as a fresh run would log it, and the recorded call's value is still the one
    compared with the record (no false divergence)."""
    proj = ReplayProject(tmp_path)
    run = proj.record(LOGGING_EVALUATE, env=DENSE)
    recorded = proj.values("val_total", run)
    proj.write("train.py", insert_before(dedent(LOGGING_EVALUATE), "evaluate([1.0, 2.0])", 'hl.log("test", evaluate([10.0]))'))
    out = proj.replay("train.py", "--workers", "1").stdout
    result = summary(out)
    assert result["checked"] == 4 and result["stored"] == 8, out  # test, and the new call's val_total
    assert proj.values("test", run) == {(("epoch", e),): 10.0 * 1.5 * (e + 1) for e in range(4)}
    by_source = "SELECT r.source, r.value FROM records r JOIN names n ON n.id = r.name WHERE n.name = 'val_total' ORDER BY r.ctx, r.source"
    rows = proj.sql(by_source)
    assert [v for source, v in rows if source == 0] == list(recorded.values())  # the recorded values, untouched
    assert [v for source, v in rows if source != 0] == [10.0 * 1.5 * (e + 1) for e in range(4)]  # the new call's


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_new_call_of_a_function_that_holds_a_loop_runs_it_and_skips_the_recorded_loops(tmp_path: Path, workers: str) -> None:
    """A statement added since the record calls ``evaluate`` on other data: the loop inside runs
    for it, and is not taken for one of the iteration's recorded loops (the recorded ``val``
    after it keeps its own checkpoint, and so does the last loop, of the same name)."""
    proj = ReplayProject(tmp_path)
    run = proj.record(EVALUATED, env=DENSE)
    proj.write("train.py", insert_before(dedent(EVALUATED), "val = evaluate([1.0, 2.0])", 'hl.log("test", evaluate([100.0]))'))
    out = proj.replay("train.py", "--workers", workers).stdout
    assert plan_field(out, "loops the new statements run themselves") == "val"
    result = summary(out)
    assert result["skipped"] > 0 and result["checked"] == 4, out
    # w after epoch e's training loop: 1.5 per epoch, less 0.5 per epoch's last loop before it.
    assert proj.values("test", run) == {(("epoch", e),): 100.0 * (1.5 * (e + 1) - 0.5 * e) for e in range(4)}


def test_the_next_replay_of_a_run_removes_the_scratch_copy_a_killed_replay_of_it_left(counter, monkeypatch) -> None:
    import tempfile

    from hindlog.store import Store, mark_scratch_kept

    proj, run = counter
    tmp = Path(proj.env()["TMPDIR"])
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))  # where the replay processes make theirs
    store = Store(proj.store, proj.root)
    dead = store.scratch_dir(f"replay-{run}")  # what kill -9 leaves: a marked copy whose lock nobody holds
    (dead / "train.py").write_text("# the killed replay's copy of the code\n")
    kept = store.scratch_dir(f"replay-{run}")  # a failed replay's logs, handed to the user to read
    mark_scratch_kept(kept)
    other_run = store.scratch_dir("replay-20000101-000000000-aaaaaa")  # another run's: its own replay's business
    other_store = Store(proj.base / "other-store", proj.root).scratch_dir(f"replay-{run}")
    proj.write("train.py", insert_after(dedent(COUNTER), 'hl.log("x", state["x"])', 'hl.log("double", 2 * state["x"])'))
    proj.replay("train.py")
    assert proj.values("double", run) == {k: 2 * v for k, v in expected_x().items()}
    assert not dead.exists()
    assert kept.exists() and other_run.exists() and other_store.exists()
    assert sorted(tmp.glob(f"hindlog-replay-{run}-*")) == sorted([kept, other_store]), "the replay's own copy is gone too"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_second_replay_of_a_run_being_replayed_is_refused_and_nothing_is_stored_twice(tmp_path: Path) -> None:
    import time

    proj = ReplayProject(tmp_path)
    slow = dedent(COUNTER).replace("time.sleep(0.03)", f"time.sleep(0.5 if os.path.exists({str(tmp_path / 'slow')!r}) else 0.02)")
    run = proj.record(slow, env=DENSE)
    proj.write("train.py", insert_after(slow, 'hl.log("x", state["x"])', 'hl.log("double", 2 * state["x"])'))
    (tmp_path / "slow").write_text("")
    first = subprocess.Popen([sys.executable, "-m", "hindlog.cli", "replay", "train.py", "--workers", "1"], cwd=proj.root,
                             env=proj.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not _workers_of(run) and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert _workers_of(run), "the first replay's worker did not start"
        second = proj.replay("train.py", "--workers", "1", check=False)
        (tmp_path / "slow").unlink()
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert second.returncode != 0 and "Traceback" not in second.stderr, second.stderr
    assert f"another hindlog replay (process {first.pid}) is replaying run {run}" in second.stderr, second.stderr
    assert first.returncode == 0, out + err
    want = {k: 2 * v for k, v in expected_x().items()}
    assert proj.values("double", run) == want and proj.count("double", run) == len(want)
    # Once the first has finished, the same replay runs, and replaces rather than adds.
    again = proj.replay("train.py", "--workers", "2")
    assert f"they replace {len(want)} values of an earlier replay" in again.stdout, again.stdout
    assert proj.values("double", run) == want and proj.count("double", run) == len(want)


def test_bad_input_gives_a_clear_message_and_a_non_zero_exit(tmp_path: Path) -> None:
    proj = ReplayProject(tmp_path)
    proj.write("train.py", COUNTER)
    nothing = proj.replay("train.py", check=False)
    assert nothing.returncode != 0 and "hindlog:" in nothing.stderr and "record" in nothing.stderr, nothing.stderr
    first = proj.record(env=DENSE)
    second = proj.record(env={**DENSE, "HINDLOG_SET_lr": "0.3"})
    proj.write("other.py", "import hindlog as hl\nhl.log('y', 1)\n")
    proj.record("import hindlog as hl\nhl.log('z', hl.arg('lr', 0.5))\n", script="third.py")
    proj.write("train.py", insert_after(dedent(COUNTER), 'hl.log("x", state["x"])', 'hl.log("double", 2 * state["x"])'))
    cases = {
        # Without SCRIPT, a selection of the runs of two scripts: whose new statements?
        ("--where", "lr > 0"): "selects runs of 2 scripts (third.py, train.py): name the one to replay",
        ("--all",): "--all selects runs of 2 scripts",
        ("other.py",): "never been recorded",
        ("missing.py",): "does not exist",
        ("train.py", "--run", "20000101-nosuchrun"): "20000101-nosuchrun",
        ("train.py", "--where", "lr > 100"): "matches",
        ("train.py", "--where", "no_such_arg == 1"): "--where",
        ("train.py", "--iterations", "x:y"): "--iterations",
        ("train.py", "--iterations", "-1:2"): "--iterations -1:2",
        ("train.py", "--where", "True"): "not a condition on the args",
        ("--where", "lr > 100"): "no run matches --where",
        ("train.py", "--workers", "0"): "must be 1 or more",
        ("train.py", "--workers", "-2"): "must be 1 or more",
        ("train.py", "--tolerance", "-1"): "must be 0 or more",
    }
    for args, words in cases.items():
        result = proj.replay(*args, check=False)
        assert result.returncode != 0, f"replay {args} succeeded"
        assert words in result.stderr, f"replay {args}: {result.stderr}"
        assert "Traceback" not in result.stderr, f"replay {args} crashed: {result.stderr}"
    assert proj.count("double") == 0
    # --where picks the runs whose args match.
    proj.replay("train.py", "--where", "lr > 0.2", "--workers", "1")
    assert proj.count("double", first) == 0
    # A run named twice is replayed once.
    twice = proj.replay("train.py", "--run", first, "--run", first[:-2], "--workers", "1")
    assert twice.stdout.count(f"run {first}:") == 1, twice.stdout
    assert proj.values("double", first) == {k: 2 * v for k, v in expected_x().items()}
    assert proj.values("double", second) == {k: 2 * v for k, v in expected_x().items()}
    # Without added statements there is nothing to replay.
    proj.write("train.py", COUNTER)
    same = proj.replay("train.py", check=False)
    assert same.returncode != 0 and "no statements were added" in same.stderr
    # Two runs of train.py: the latest may have been made with the statements already in.
    assert "replay an earlier run with --run RUN" in same.stderr, same.stderr


def test_where_sees_argparse_defaults_and_says_which_runs_it_cannot_tell_for(tmp_path: Path) -> None:
    """A script that uses the API and argparse: its options are recorded, defaults included (the
    command line is parsed before the first hindlog call). A run of a version without the option
    has no value for it: --where says so instead of leaving the run out without a word."""
    proj = ReplayProject(tmp_path)
    text = dedent("""
        import argparse
        import hindlog as hl

        p = argparse.ArgumentParser()
        p.add_argument("--lr", type=float, default=0.1)
        lr = p.parse_args().lr
        x = 0.0
        for epoch in hl.loop("epoch", range(3)):
            x += lr
            hl.log("x", x)
    """)
    older = proj.record(text.replace('p.add_argument("--lr", type=float, default=0.1)\nlr = p.parse_args().lr',
                                     "p.parse_args()\nlr = 0.1"), env=DENSE)
    proj.write("train.py", text)
    proj.commit()
    default = proj.record(env=DENSE)
    given = proj.record(env=DENSE, args=["--lr", "0.01"])
    assert "options      lr=0.1" in proj.hindlog("show", default).stdout
    proj.write("train.py", insert_after(text, 'hl.log("x", x)', 'hl.log("double", 2 * x)'))
    some = proj.replay("train.py", "--where", "lr > 0.05")
    assert proj.count("double", default) == 3 and proj.count("double", given) == 0
    assert f"leaves out 1 run ({older}) with no recorded value of lr" in some.stderr, some.stderr
    assert 'hl.arg("lr", default)' in some.stderr
    none = proj.replay("train.py", "--where", "lr > 5", check=False)
    assert none.returncode != 0 and f"cannot tell for 1 run ({older})" in none.stderr, none.stderr
    # A missing value satisfies `!=` in pandas: the run is still not picked.
    other = proj.replay("train.py", "--where", "lr != 0.01")
    assert f"leaves out 1 run ({older})" in other.stderr and proj.count("double", older) == 0, other.stderr
    # A run that failed before it recorded its options (a bad value) is said to have failed.
    proj.write("train.py", text.replace("p = argparse.ArgumentParser()", 'hl.arg("wd", 0.1)\np = argparse.ArgumentParser()'))
    before = set(proj.run_ids())
    proj.python("train.py", env={"HINDLOG_SET_wd": "a lot"}, check=False)
    assert len(set(proj.run_ids()) - before) == 1
    proj.write("train.py", insert_after(text, 'hl.log("x", x)', 'hl.log("double", 2 * x)'))
    failed = proj.replay("train.py", "--where", "lr > 0.05")
    assert "leaves out 2 runs" in failed.stderr and "with no recorded value of lr: 1 of them failed before recording it" in failed.stderr, failed.stderr


def test_python_files_git_ignores_are_not_the_projects_code(tmp_path: Path) -> None:
    """Copies of the script kept beside it and ignored by git (``train_v0.py``) are not in the
    code snapshot; a replay does not take them for new files of the code. A new file git does
    not ignore is."""
    proj = ReplayProject(tmp_path)
    proj.write(".gitignore", "*_v[0-9].py\n")
    text = dedent(COUNTER)
    proj.write("train_v0.py", text)
    run = proj.record(text, env=DENSE)
    proj.write("train_v1.py", text + "# another copy\n")
    proj.write("train.py", insert_after(text, 'hl.log("x", state["x"])', 'hl.log("double", 2 * state["x"])'))
    out = proj.replay("train.py", "--dry-run").stdout
    assert "is new" not in out, out
    proj.write("notes.py", "print('a scratch script of its own')\n")  # new, and nothing imports it: not said
    assert "is new" not in proj.replay("train.py", "--dry-run").stdout
    proj.write("helpers.py", "SCALE = 2\n")
    proj.write("train.py", insert_after(text, 'hl.log("x", state["x"])', 'from helpers import SCALE\nhl.log("double", SCALE * state["x"])'))
    out = proj.replay("train.py", "--dry-run").stdout
    assert "helpers.py is new; it is added to the replayed code" in out and "notes.py" not in out, out
    proj.replay("train.py")
    assert proj.values("double", run) == {k: 2 * v for k, v in expected_x().items()}


def test_an_iterator_each_iteration_makes_afresh_does_not_hold_a_replay_to_its_first_iteration(tmp_path: Path) -> None:
    """``it = batches()`` at the top of every iteration: no checkpoint can hold it, but none needs
    to, since the next iteration makes its own. Segments still start mid-run."""
    proj = ReplayProject(tmp_path)
    text = dedent("""
        import time
        import numpy as np
        import hindlog as hl

        def batches(e):
            for k in range(3):
                yield np.full(3, float(e + k))

        w = np.zeros(3)
        hl.checkpoints(w=w)
        for epoch in hl.loop("epoch", range(6)):
            it = batches(epoch)
            for s in hl.loop("step", range(3)):
                w += next(it)
            time.sleep(0.03)
            hl.log("w", float(w.sum()))
    """)
    run = proj.record(text, env=DENSE)
    assert "unrestorable_locals" not in proj.sql("SELECT info FROM runs WHERE run_id=?", (run,))[0][0]
    proj.write("train.py", insert_after(text, 'hl.log("w", float(w.sum()))', 'hl.log("w2", 2 * float(w.sum()))'))
    plan = proj.replay("train.py", "--workers", "2", "--dry-run").stdout
    assert "from its first iteration" not in plan and len(segments(plan)) == 2, plan
    proj.replay("train.py", "--workers", "2")
    assert proj.values("w2", run) == {k: 2 * v for k, v in proj.values("w", run).items()}


#: A script whose batches come from an endless generator made before the main loop: no
#: checkpoint can hold it (a generator cannot be pickled).
ENDLESS_STREAM = dedent("""
    import time
    import numpy as np
    import hindlog as hl

    def batches():
        k = 0
        while True:
            k += 1
            yield np.full(3, float(k))

    stream = batches()
    w = np.zeros(3)
    hl.checkpoints(w=w)
""")


def test_a_nested_loop_that_draws_from_an_iterator_no_checkpoint_can_hold_runs_instead_of_being_skipped(tmp_path: Path) -> None:
    """``next(stream)`` in the step loop, of a generator made before the main loop: skipping the
    loop would leave the generator where it was, and every later draw would be another one.
    The loop runs (as the record's warning says), and the main loop from its first iteration."""
    proj = ReplayProject(tmp_path)
    text = ENDLESS_STREAM + dedent("""
        for epoch in hl.loop("epoch", range(5)):
            for s in hl.loop("step", range(3)):
                b = next(stream)
                w += b
            for k in hl.loop("val", range(1)):
                v = float(next(stream).sum())
            time.sleep(0.02)
            hl.log("w", float(w.sum()))
    """)
    proj.write("train.py", text)
    recorded = proj.python("train.py", env=DENSE)
    assert "the local 'stream' (generator) cannot be checkpointed" in recorded.stderr, recorded.stderr
    run = proj.run_ids()[-1]
    # The new statement needs the val loop to run; the step loop, which it does not read, would
    # be skipped, and the val loop would then draw the step loop's batches.
    proj.write("train.py", insert_after(text, 'hl.log("w", float(w.sum()))', 'hl.log("v", v)'))
    result = proj.replay("train.py", "--workers", "2")
    assert "loop step changes a local its checkpoints could not hold" in result.stdout, result.stdout
    assert "nested loops that must run: step, val" in result.stdout, result.stdout
    assert proj.values("v", run) == {(("epoch", e),): 12.0 * (e + 1) for e in range(5)}, result.stdout


def test_runs_waiting_their_turn_in_a_replay_of_all_keep_their_checkpoints_from_gc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`hindlog gc --keep-last 0` run while `replay --all` replays its first run must not drop
    the checkpoints of the runs still waiting: each is held as replaying from the plan on."""
    from hindlog.gc import gc
    from hindlog.replay import replay

    proj = ReplayProject(tmp_path)
    text = dedent(COUNTER)
    first = proj.record(text, env=DENSE)
    second = proj.record(env=DENSE)
    proj.write("train.py", insert_after(text, 'hl.log("x", state["x"])', 'hl.log("double", 2 * state["x"])'))
    monkeypatch.chdir(proj.root)
    dropped = []

    def gc_meanwhile(report: Any) -> None:  # between the plan and the replays, as from another shell
        dropped.append(gc(store=proj.store, keep_last=0, grace=0).dropped_checkpoints)

    report = replay("train.py", all_runs=True, workers=1, store=proj.store, on_plans=gc_meanwhile)
    assert dropped == [0]
    assert [r.run_id for r in report.results] == [first, second] and all(r.ok and r.skipped_blocks for r in report.results)
    # Once the replay has ended, its runs are no longer held.
    assert gc(store=proj.store, keep_last=0, grace=0).dropped_checkpoints > 0


def test_a_change_to_a_file_no_code_imports_does_not_block_a_replay(tmp_path: Path) -> None:
    """Another script of the project, edited since the record: the replay runs the recorded
    code, which never ran it, so it is left out with a note. A changed module the script
    imports still blocks it."""
    proj = ReplayProject(tmp_path)
    proj.write("other.py", 'print("a helper script")\n')
    proj.write("helpers.py", "def scale(x):\n    return 1.5 * x\n")
    text = "import hindlog as hl\nfrom helpers import scale\nw = 0.0\nfor epoch in hl.loop('epoch', range(4)):\n    w += scale(1)\n    hl.log('w', w)\n"
    run = proj.record(text, env=DENSE)
    proj.write("other.py", 'print("a helper script, edited")\n')
    proj.write("train.py", text + "    hl.log('w2', 2 * w)\n")
    result = proj.replay("train.py")
    assert "other.py changed, but no file of the project imports it" in result.stdout + result.stderr, result.stdout + result.stderr
    assert proj.values("w2", run) == {k: 2 * v for k, v in proj.values("w", run).items()}
    proj.write("helpers.py", "def scale(x):\n    return 2.5 * x\n")
    refused = proj.replay("train.py", check=False)
    assert refused.returncode != 0 and "--- helpers.py" in refused.stderr, refused.stderr
    # A module imported by name at run time is not "unrelated".
    proj.write("helpers.py", "def scale(x):\n    return 1.5 * x\n")
    proj.write("dyn.py", "import hindlog as hl\ndef report(w):\n    return w * 1.0\n")
    proj.write("train.py", text.replace("w = 0.0", "import importlib\ndyn = importlib.import_module('dyn')\nw = 0.0")
               + "    dyn.report(w)\n")
    proj.commit()
    dyn_run = proj.record(env=DENSE)
    proj.write("dyn.py", "import hindlog as hl\ndef report(w):\n    return w * 2.0\n")
    proj.write("train.py", proj.read("train.py") + "    hl.log('w3', 3 * w)\n")
    refused = proj.replay("train.py", "--run", dyn_run, check=False)
    assert refused.returncode != 0 and "--- dyn.py" in refused.stderr, refused.stderr
    proj.write("dyn.py", "import hindlog as hl\ndef report(w):\n    return w * 1.0\n")
    proj.write("other.py", 'import hindlog as hl\nprint("a helper script, edited again")\nx = 1\nhl.log("x", x)\n')
    proj.commit()
    dyn_run = proj.record(env=DENSE)
    proj.python("other.py")  # other.py is a script of its own, with runs
    # Another script with statements added for its own runs, and changed otherwise: these runs
    # never ran it (refused, it blocked every replay of the script beside it).
    proj.write("other.py", 'import hindlog as hl\nprint("a helper script, edited once more")\nx = 1\nhl.log("x", x)\nhl.log("x2", 2 * x)\n')
    proj.write("train.py", proj.read("train.py") + "    hl.log('w4', 4 * w)\n")
    result = proj.replay("train.py", "--run", dyn_run)
    assert ("other.py changed, but no file of the project imports it: its recorded version is kept (the statements "
            "added to it are for its own runs" in result.stdout + result.stderr), result.stdout + result.stderr
    assert "other.py:5" not in result.stdout  # not planned as a new statement of these runs
    assert proj.values("w4", dyn_run) == {k: 4 * v for k, v in proj.values("w", dyn_run).items()}
    # A module with statements added in it is meant to run, seen imported or not (a config's
    # target built from parts): changed otherwise too, it is refused with its diff.
    proj.write("other.py", 'import hindlog as hl\nprint("a helper script, edited again")\nx = 1\nhl.log("x", x)\n')
    proj.write("plugin.py", "def hook(w):\n    return w\n")
    proj.commit()
    plugin_run = proj.record(env=DENSE)
    proj.write("plugin.py", "import hindlog as hl\ndef hook(w):\n    hl.log('hooked', w)\n    return 2 * w\n")
    proj.write("train.py", proj.read("train.py") + "    hl.log('w5', 5 * w)\n")
    refused = proj.replay("train.py", "--run", plugin_run, check=False)
    assert refused.returncode != 0 and "--- plugin.py" in refused.stderr, refused.stderr


def test_a_removed_file_no_code_imports_does_not_block_a_replay(tmp_path: Path) -> None:
    """A scratch file deleted, or another script renamed, since the record: the runs never ran
    it, and replaying them is not refused (it was, and --force, the only way round, also keeps
    the values of diverged segments). A removed module the script imports still is."""
    proj = ReplayProject(tmp_path)
    proj.write("notes.py", 'print("scratch")\n')
    proj.write("helpers.py", "def scale(x):\n    return 1.5 * x\n")
    text = "import hindlog as hl\nfrom helpers import scale\nw = 0.0\nfor epoch in hl.loop('epoch', range(3)):\n    w += scale(1)\n    hl.log('w', w)\n"
    proj.write("train.py", text)
    proj.commit()
    run = proj.record(env=DENSE)
    proj.git("rm", "-q", "notes.py")
    proj.commit("remove a scratch file")
    proj.write("train.py", text + "    hl.log('w2', 2 * w)\n")
    result = proj.replay("train.py")
    assert "notes.py was removed, but no file of the project imports it" in result.stdout + result.stderr, result.stdout + result.stderr
    assert proj.values("w2", run) == {k: 2 * v for k, v in proj.values("w", run).items()}
    (proj.root / "helpers.py").unlink()
    refused = proj.replay("train.py", check=False)
    assert refused.returncode != 0 and "helpers.py was removed" in refused.stderr, refused.stderr
    # The script itself renamed: its runs are named, with how to get it back.
    (proj.root / "train.py").rename(proj.root / "fit.py")
    gone = proj.replay("train.py", check=False)
    assert gone.returncode != 0 and "train.py does not exist; 1 run of it was recorded" in gone.stderr, gone.stderr
    assert "git show " in gone.stderr, gone.stderr


def test_a_statement_removed_and_added_back_is_not_placed_again_into_a_version_that_has_it(tmp_path: Path) -> None:
    """Version 1 logs ``double``, version 2 no longer does, and the script now logs it again with
    a new ``triple``: version 1's runs get only ``triple`` (``double`` placed again logged each of
    its values twice), version 2's both."""
    base = dedent(COUNTER)
    with_double = insert_after(base, 'hl.log("x", state["x"])', 'hl.log("double", 2 * state["x"])')
    proj = ReplayProject(tmp_path)
    proj.write("train.py", with_double)
    proj.commit("version 1")
    first = proj.record(env=DENSE)
    proj.write("train.py", base)
    proj.commit("version 2")
    second = proj.record(env=DENSE)
    proj.write("train.py", insert_after(with_double, 'hl.log("double", 2 * state["x"])', 'hl.log("triple", 3 * state["x"])'))
    out = proj.replay("train.py", "--all").stdout
    assert out.count('+ train.py:') == 3, out  # triple for version 1; double and triple for version 2
    for run in (first, second):
        x = proj.values("x", run)
        assert proj.values("double", run) == {k: 2 * v for k, v in x.items()}
        assert proj.values("triple", run) == {k: 3 * v for k, v in x.items()}
    assert proj.count("double", first) == len(proj.values("x", first))  # as recorded, once each


def test_a_changed_statement_replayed_over_some_iterations_says_which_values_are_its_former_versions(counter) -> None:
    """``d`` replayed as ``2 * x``, then changed to ``3 * x`` and replayed over iterations 2:4: the
    column mixed both statements' values, silently. The replay now says how many values outside
    2:4 are the earlier statement's; the same statements replayed over part of the run again,
    two prints per iteration among them, say nothing."""
    proj, run = counter
    text = dedent(COUNTER).replace('    print("epoch", epoch)\n', '    print("epoch", epoch)\n    print("again", epoch)\n')
    proj.write("train.py", insert_after(text, 'hl.log("x", state["x"])', 'hl.log("d", 2 * state["x"])\nprint("d", 2 * state["x"])'))
    proj.replay("train.py")
    x = proj.values("x", run)
    assert proj.values("d", run) == {k: 2 * v for k, v in x.items()}
    proj.write("train.py", insert_after(text, 'hl.log("x", state["x"])', 'hl.log("d", 3 * state["x"])\nprint("d", 3 * state["x"])'))
    out = proj.replay("train.py", "--iterations", "2:4").stdout
    assert "the statement that logs 'd' gave other values than when it was last replayed (it changed" in out, out
    assert "4 values of 'd' outside the iterations replayed now are still the earlier replay's" in out, out
    assert proj.values("d", run) == {k: (3 if k[0][1] in (2, 3) else 2) * v for k, v in x.items()}
    proj.replay("train.py")
    again = proj.replay("train.py", "--iterations", "1:3").stdout
    assert "gave other values" not in again, again
    assert proj.values("d", run) == {k: 3 * v for k, v in x.items()}


def test_a_new_statement_that_fails_is_named_as_the_cause(counter) -> None:
    """A new statement that reads a name the run's code lacks fails in every segment: the
    failure names the statement, not "replay the segment alone" (which fails the same way)."""
    proj, run = counter
    proj.write("train.py", insert_after(dedent(COUNTER), 'hl.log("x", state["x"])', 'hl.log("s", scale * state["x"])'))
    failed = proj.replay("train.py", check=False)
    assert failed.returncode != 0, failed.stdout
    assert "failed in a statement added since the record, train.py:17: NameError: name 'scale' is not defined" in failed.stderr, failed.stderr
    assert "replay it alone" not in failed.stderr, failed.stderr


def test_a_run_of_another_script_is_refused(counter) -> None:
    proj, run = counter
    proj.write("other.py", "import hindlog as hl\nfor i in hl.loop('i', range(2)):\n    hl.log('y', i)\n")
    proj.python("other.py")
    other = proj.run_ids()[-1]
    proj.write("train.py", insert_after(dedent(COUNTER), 'hl.log("x", state["x"])', 'hl.log("double", 2 * state["x"])'))
    wrong = proj.replay("train.py", "--run", other, check=False)
    assert wrong.returncode != 0 and f"run {other} is a run of other.py, not of train.py" in wrong.stderr, wrong.stderr
    mixed = proj.replay("--run", other, "--run", run, check=False)
    assert mixed.returncode != 0 and "runs of different scripts" in mixed.stderr, mixed.stderr
    assert proj.count("double") == 0


def test_a_renamed_script_is_said_to_replay_under_its_recorded_name(tmp_path: Path) -> None:
    proj = ReplayProject(tmp_path)
    text = dedent(COUNTER)
    run = proj.record(text, env=DENSE)
    (proj.root / "train.py").rename(proj.root / "train_mlp.py")
    proj.write("train_mlp.py", insert_after(text, 'hl.log("x", state["x"])', 'hl.log("double", 2 * state["x"])'))
    refused = proj.replay("train_mlp.py", check=False)
    assert refused.returncode != 0, refused.stderr
    assert "train_mlp.py has never been recorded" in refused.stderr
    assert "Runs of train.py, no longer in the project, are recorded: if the script was renamed" in refused.stderr
    typo = proj.replay("train_mlp.py", "--run", "zzzzzz", check=False)  # a run not found: no word of renames
    assert typo.returncode != 0 and "No run matches 'zzzzzz'" in typo.stderr and "renamed" not in typo.stderr, typo.stderr
    # As the advice says: the script under its recorded name, with the new statement.
    proj.write("train.py", proj.read("train_mlp.py"))
    proj.replay("train.py")
    assert proj.values("double", run) == {k: 2 * v for k, v in proj.values("x", run).items()}


def test_a_new_print_in_a_script_that_calls_hindlog_is_said_to_show_nothing(counter) -> None:
    proj, run = counter
    proj.write("train.py", insert_after(dedent(COUNTER), 'hl.log("x", state["x"])', 'print("x now", state["x"])'))
    plan = proj.replay("train.py", "--dry-run").stdout
    assert "a new print(...) shows nothing here" in plan and "hl.log(...) instead" in plan, plan


def test_the_plan_says_how_many_iterations_run_their_nested_loops_for_want_of_a_checkpoint(counter) -> None:
    proj, run = counter
    key = proj.sql("SELECT id FROM runs WHERE run_id=?", (run,))[0][0]
    conn = sqlite3.connect(proj.store / "catalog.db")
    with conn:
        conn.execute("DELETE FROM checkpoints WHERE run=? AND iteration IN (1, 2) AND block>=0", (key,))
    conn.close()
    with_blocks = {r[0] for r in proj.sql("SELECT DISTINCT iteration FROM checkpoints WHERE run=? AND block>=0", (key,))}
    bare = len(set(range(6)) - with_blocks)
    assert bare >= 2
    proj.write("train.py", insert_after(dedent(COUNTER), 'hl.log("x", state["x"])', 'hl.log("double", 2 * state["x"])'))
    out = proj.replay("train.py", "--dry-run").stdout
    assert f"note: {bare} of the 6 iterations have no checkpoint of their nested loops" in out, out
    assert "nested loops that must run: none (all are skipped)" in out


def test_the_plan_of_a_run_that_logged_nothing_in_its_main_loop_names_no_nested_loop(tmp_path: Path) -> None:
    """The main loop is known by its name, not only from the values logged in it: a run that
    logged only after it gets a plan that skips every nested loop, the main loop not among them."""
    proj = ReplayProject(tmp_path)
    quiet = dedent(COUNTER).replace('    hl.log("x", state["x"])\n', "") + 'hl.log("final", state["x"])\n'
    run = proj.record(quiet, env=DENSE)
    proj.write("train.py", insert_after(quiet, 'print("epoch", epoch)', 'hl.log("x", state["x"])'))
    out = proj.replay("train.py", "--dry-run").stdout
    assert "nested loops that must run: none (all are skipped)" in out, out
    out = proj.replay("train.py").stdout
    assert summary(out)["skipped"] > 0, out
    assert proj.values("x", run) == expected_x()


def test_a_changed_statement_leaves_none_of_its_former_values(counter) -> None:
    """Replayed values of a name replace the earlier replay's over the iterations replayed, in
    every loop context: a statement made conditional keeps no value of its former version."""
    proj, run = counter
    every = insert_after(dedent(COUNTER), 'state["x"] += i + epoch', 'hl.log("double", 2 * state["x"])')
    proj.write("train.py", every)
    proj.replay("train.py", "--workers", "2")
    assert proj.count("double", run) == 24
    proj.write("train.py", every.replace('hl.log("double", 2 * state["x"])', 'if i == 3:\n            hl.log("double", 2 * state["x"])'))
    proj.replay("train.py", "--workers", "1", "--iterations", "0:3")
    # Iterations 0-2 hold the new statement's values only; 3-5 keep the former ones.
    got = proj.values("double", run)
    assert sorted((dict(k)["epoch"], dict(k)["step"]) for k in got if dict(k)["epoch"] < 3) == [(0, 3), (1, 3), (2, 3)]
    assert sum(1 for k in got if dict(k)["epoch"] >= 3) == 12


def test_a_failed_run_replays_up_to_its_error(tmp_path: Path) -> None:
    """The recorded run raised in iteration 3: its replay raises there again, having replayed
    everything before; that is the replay of that run, not a failed replay."""
    proj = ReplayProject(tmp_path)
    failing = insert_after(dedent(COUNTER), 'hl.log("x", state["x"])', 'if epoch == 3:\n        raise RuntimeError("boom")')
    proj.write("train.py", failing)
    assert proj.python(env=DENSE, check=False).returncode == 1
    (run,) = proj.run_ids()
    proj.write("train.py", insert_after(failing, 'hl.log("x", state["x"])', 'hl.log("double", 2 * state["x"])'))
    for workers in ("1", "2"):
        result = proj.replay("train.py", "--workers", workers)
        assert "the script ended with an error, as the recorded run did: exit status 1 (RuntimeError: boom)" in result.stdout, result.stdout
        assert summary(result.stdout)["stored"] == 4, result.stdout
        assert proj.values("double", run) == {k: 2 * v for k, v in expected_x(4).items()}


def test_a_statement_that_cannot_be_placed_skips_that_run_only(tmp_path: Path) -> None:
    proj = ReplayProject(tmp_path)
    old = proj.record(COUNTER, env=DENSE)
    newer_text = insert_after(dedent(COUNTER), 'hl.log("x", state["x"])', 'hl.log("x3", 3 * state["x"])')
    new = proj.record(newer_text, env=DENSE)
    # The new statement follows a line the older version does not have.
    proj.write("train.py", insert_after(newer_text, 'hl.log("x3", 3 * state["x"])', 'hl.log("double", 2 * state["x"])'))
    planned = proj.replay("train.py", "--all", "--dry-run", check=False)
    assert planned.returncode == 1 and f"skipped run {old}" in planned.stderr, planned.stderr  # as the replay will be
    result = proj.replay("train.py", "--all", "--workers", "1", check=False)
    assert result.returncode != 0
    assert f"skipped run {old}" in result.stderr and "cannot place" in result.stderr, result.stderr
    assert proj.count("double", old) == 0
    assert proj.values("double", new) == {k: 2 * v for k, v in expected_x().items()}


def test_every_divergent_iteration_is_reported(tmp_path: Path) -> None:
    proj = ReplayProject(tmp_path)
    text = dedent("""
        import time
        import hindlog as hl
        state = {"x": 0}
        hl.checkpoints(state=state)
        for epoch in hl.loop("epoch", range(6)):
            for i in hl.loop("step", range(3)):
                state["x"] += i
            hl.log("t", time.time())
    """)
    proj.record(text, env=DENSE)
    proj.write("train.py", insert_after(text, 'state["x"] += i', 'hl.log("y", state["x"] * 2)'))
    result = proj.replay("train.py", "--workers", "1", check=False)
    assert result.returncode != 0
    assert summary(result.stdout)["checked"] == 6, result.stdout
    for i in range(6):
        assert f"t at iteration {i}:" in result.stderr, result.stderr


def test_values_kept_from_a_diverged_replay_are_replaced_by_a_replay_that_matches(tmp_path: Path) -> None:
    """The recorded value reads a file outside the project: changed, it makes the replay
    diverge; put back, the next replay matches and its values lose the mark."""
    proj = ReplayProject(tmp_path)
    bump = tmp_path / "bump.txt"
    bump.write_text("0")
    text = dedent(f"""
        import hindlog as hl
        state = {{"x": 0}}
        hl.checkpoints(state=state)
        for epoch in hl.loop("epoch", range(4)):
            for i in hl.loop("step", range(3)):
                state["x"] += i
            hl.log("v", state["x"] + int(open({str(bump)!r}).read()))
    """)
    run = proj.record(text, env=DENSE)
    proj.write("train.py", text + 'hl.log("end", state["x"])\n')
    bump.write_text("1")
    forced = proj.replay("train.py", "--workers", "1", "--keep-diverged", check=False)
    assert forced.returncode != 0 and "DIVERGED" in forced.stderr
    with pytest.warns(RuntimeWarning, match="1 value\\(s\\) of 'end'"):
        assert proj.df("end")["end"].tolist() == [12]
    bump.write_text("0")
    proj.replay("train.py", "--workers", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert proj.df("end", runs=[run])["end"].tolist() == [12]
    assert proj.count("end", run) == 1


def test_a_main_loop_that_ends_sooner_than_the_records_is_a_divergence(tmp_path: Path) -> None:
    """The script reads its epoch count from an environment variable that the replay's
    environment lacks: the replay must not pass for the run with fewer iterations."""
    proj = ReplayProject(tmp_path)
    text = dedent("""
        import os
        import time
        import hindlog as hl
        state = {"x": 0}
        hl.checkpoints(state=state)
        for epoch in hl.loop("epoch", range(int(os.environ.get("EPOCHS", "4")))):
            for i in hl.loop("step", range(3)):
                state["x"] += i
            time.sleep(0.05)
    """)
    run = proj.record(text, env={**DENSE, "EPOCHS": "6"})
    proj.write("train.py", text + '    hl.log("x", state["x"])\n')
    for workers in ("1", "2"):
        result = proj.replay("train.py", "--workers", workers, check=False)
        assert result.returncode != 0 and "DIVERGED" in result.stderr, result.stdout + result.stderr
        assert "the main loop 'epoch' ended after 4 iterations; the record ran 6 iterations" in result.stderr, result.stderr
        assert proj.count("x", run) == (0 if workers == "1" else 3), result.stdout + result.stderr
        assert "only segments that start mid-run diverged" not in result.stderr, result.stderr
    # A segment whose iterations are all past the shorter loop's end (3:6 of a 2-iteration loop).
    result = proj.replay("train.py", "--workers", "2", check=False, env={"EPOCHS": "2"})
    assert "the main loop 'epoch' ended after 2 iterations; the record ran 6 iterations" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    proj.replay("train.py", "--workers", "1", env={"EPOCHS": "6"})
    assert proj.count("x", run) == 6
    # A run whose main loop ran no iteration ends where the record did.
    empty = proj.record(text + '    hl.log("x", state["x"])\n', env={**DENSE, "EPOCHS": "0"})
    proj.write("train.py", text + '    hl.log("x", state["x"])\nhl.log("end", state["x"])\n')
    proj.replay("train.py", "--run", empty, env={"EPOCHS": "0"})
    assert proj.values("end", empty) == {(): 0}


def test_a_divergence_is_placed_by_the_nested_loops_index_and_after_the_main_loop(tmp_path: Path) -> None:
    proj = ReplayProject(tmp_path)
    text = dedent("""
        import time
        import hindlog as hl
        state = {"x": 0}
        hl.checkpoints(state=state)
        for epoch in hl.loop("epoch", range(2)):
            for i in hl.loop("step", range(3)):
                state["x"] += i
                hl.log("t", time.time())
        hl.log("end", time.time())
        for k in hl.loop("eval", range(2)):
            hl.log("e", time.time())
    """)
    proj.record(text, env=DENSE)
    proj.write("train.py", insert_after(text, 'state["x"] += i', 'hl.log("y", state["x"] * 2)'))
    result = proj.replay("train.py", "--workers", "1", check=False)
    assert result.returncode != 0
    for epoch in range(2):
        for step in range(3):
            assert f"t at iteration {epoch}, step {step}:" in result.stderr, result.stderr
    assert "end after the main loop:" in result.stderr, result.stderr
    assert "e after the main loop, at eval 1:" in result.stderr, result.stderr
    # A script with no main loop has nothing before or after one.
    proj.record("import time\nimport hindlog as hl\nhl.log('t', time.time())\n")
    proj.write("train.py", "import time\nimport hindlog as hl\nhl.log('t', time.time())\nhl.log('y', 1)\n")
    result = proj.replay("train.py", check=False)
    assert "t outside every loop:" in result.stderr, result.stderr


def test_a_statement_reading_a_local_that_no_checkpoint_holds_runs_the_loop_that_assigns_it(tmp_path: Path) -> None:
    """`inner` is assigned in the step loop and the recorded code never reads it afterwards, so
    the step loop's checkpoints do not hold it: replay must run that loop (and may skip `val`)."""
    text = dedent("""
        import time
        import hindlog as hl
        state = {"x": 0}
        hl.checkpoints(state=state)
        for epoch in hl.loop("epoch", range(6)):
            for i in hl.loop("step", range(4)):
                inner = i * 10 + epoch
                state["x"] += i
            for j in hl.loop("val", range(2)):
                score = state["x"] + j
            time.sleep(0.03)
            hl.log("x", state["x"])
    """)
    new = insert_after(text, 'hl.log("x", state["x"])', 'hl.log("inner", inner)')
    proj = ReplayProject(tmp_path)
    run = proj.record(text, env=DENSE)
    proj.write("train.py", new)
    out = proj.replay("train.py", "--workers", "2").stdout
    assert must_run(out) == {"step"}
    truth = ground_truth(tmp_path, {"train.py": new}, ["inner"])
    assert_same_values(proj.values("inner", run), truth["inner"], "inner")


def test_workers_run_in_the_directory_the_run_was_recorded_in(tmp_path: Path) -> None:
    proj = ReplayProject(tmp_path)
    text = dedent("""
        import time
        import hindlog as hl
        scale = float(open("params.txt").read())
        state = {"x": 0.0}
        hl.checkpoints(state=state)
        for epoch in hl.loop("epoch", range(4)):
            for i in hl.loop("step", range(3)):
                state["x"] += i * scale
            time.sleep(0.03)
            hl.log("x", state["x"])
    """)
    proj.write("exp/params.txt", "0.5\n")
    proj.write("exp/train.py", text)
    subprocess.run([sys.executable, "train.py"], cwd=proj.root / "exp", env=proj.env(DENSE), check=True,
                   capture_output=True, timeout=120)
    run = proj.run_ids()[-1]
    proj.write("exp/train.py", insert_after(text, 'hl.log("x", state["x"])', 'hl.log("y", 2 * state["x"])'))
    result = subprocess.run([sys.executable, "-m", "hindlog.cli", "replay", "train.py", "--workers", "1"],
                            cwd=proj.root / "exp", env=proj.env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert proj.values("y", run) == {k: 2 * v for k, v in proj.values("x", run).items()}
    assert len(proj.values("y", run)) == 4


def test_a_run_recorded_under_older_code_can_be_chosen_alone(tmp_path: Path) -> None:
    """--run (or --where) picking an older run: the new statements are those added to the newest
    recorded code, placed into the older run's own code."""
    proj = ReplayProject(tmp_path)
    v1 = dedent(COUNTER)
    old = proj.record(v1, env=DENSE)
    v2 = v1.replace('    print("epoch", epoch)\n', "").replace("time.sleep(0.03)\n", 'time.sleep(0.03)\n    state["x"] += 1\n')
    new = proj.record(v2, env=DENSE)
    proj.write("train.py", insert_after(v2, 'hl.log("x", state["x"])', 'hl.log("double", 2 * state["x"])'))
    proj.replay("train.py", "--run", old, "--workers", "1")
    assert proj.values("double", old) == {k: 2 * v for k, v in expected_x().items()}
    assert proj.count("double", new) == 0


def test_replay_does_not_write_into_the_project(tmp_path: Path) -> None:
    proj = ReplayProject(tmp_path)
    text = dedent(COUNTER).replace('    print("epoch", epoch)\n',
                                   '    with open("log.out", "a") as f:\n        f.write(f"epoch {epoch}\\n")\n')
    run = proj.record(text, env=DENSE)
    log = (proj.root / "log.out").read_text()
    assert log.count("epoch") == 6
    proj.write("train.py", insert_after(text, 'hl.log("x", state["x"])', 'hl.log("double", 2 * state["x"])'))
    proj.replay("train.py", "--workers", "1")
    assert proj.values("double", run) == {k: 2 * v for k, v in expected_x().items()}
    assert (proj.root / "log.out").read_text() == log


def test_files_the_replayed_code_writes_are_kept_apart_from_the_project(tmp_path: Path) -> None:
    """A hindsight ``savefig`` writes into the scratch copy, which the replay removes: what the
    replayed code wrote is moved to the store's outputs folder, under the same paths, from both
    workers; the project's own files are left as they are, and what the record wrote there too
    is not kept twice."""
    proj = ReplayProject(tmp_path)
    text = dedent(COUNTER).replace('    print("epoch", epoch)\n',
                                   '    with open("log.out", "a") as f:\n        f.write(f"epoch {epoch}\\n")\n')
    proj.write("plots/README", "plots go here\n")
    run = proj.record(text, env=DENSE)  # (commits the project, plots/ included)
    log = (proj.root / "log.out").read_text()
    proj.write("train.py", insert_after(text, 'hl.log("x", state["x"])',
                                        'with open(f"plots/x{epoch}.txt", "w") as f: f.write(str(state["x"]))'))
    out = proj.replay("train.py", "--workers", "2").stdout
    kept = tmp_path / "proj-store" / "outputs" / run
    assert "files the replayed code wrote" in out and "plots/x0.txt" in out, out
    assert {f"plots/x{e}.txt": str(v) for e, v in enumerate(expected_x().values())} == \
        {p.relative_to(kept).as_posix(): p.read_text() for p in (kept / "plots").glob("x*.txt")}
    assert not (kept / "log.out").exists()  # written again by the recorded code: the project has it
    assert "not kept: log.out, which the replayed code wrote again and the record wrote too" in out, out
    assert not (kept / "plots" / "README").exists()  # not written: the recorded code's own file
    assert (proj.root / "log.out").read_text() == log and not list((proj.root / "plots").glob("x*"))


def test_a_replays_files_are_kept_unless_the_record_wrote_them_and_a_failed_replay_replaces_none(tmp_path: Path) -> None:
    proj = ReplayProject(tmp_path)
    text = dedent(COUNTER)
    run = proj.record(text, env=DENSE)
    new = insert_after(text, 'hl.log("x", state["x"])', 'with open("curve.txt", "a") as f: f.write(f"{state[\'x\']} ")')
    proj.write("train.py", new)
    proj.python("train.py", env=DENSE)  # a later run of the new code writes curve.txt into the project
    proj.replay("train.py", "--run", run, "--workers", "1")
    kept = tmp_path / "proj-store" / "outputs" / run / "curve.txt"
    # The project's curve.txt was not written while the replayed run ran: the replay's is kept.
    good = " ".join(str(v) for v in expected_x().values()) + " "
    assert kept.read_text() == good
    # A replay that fails leaves its files with its copy of the code: they replace no good ones.
    proj.write("train.py", new.replace('f.write(f"{state[\'x\']} ")', 'f.write("bad"); assert epoch < 3'))
    failed = proj.replay("train.py", "--run", run, "--workers", "1", check=False)
    assert failed.returncode != 0 and "not kept with the outputs: the replay did not succeed" in failed.stdout, failed.stdout
    assert kept.read_text() == good


def test_replayed_code_that_writes_through_linked_inputs_leaves_the_projects_files_alone(tmp_path: Path) -> None:
    """The project's data (ignored by git, older than the run) is linked into the replay's copy.
    Replayed code that appends to a linked file, overwrites one, makes, renames or removes files
    in a linked folder, or removes a linked folder's subfolder changes the copy only: the
    project's files are as they were, and what the code wrote is kept with the outputs."""
    proj = ReplayProject(tmp_path)
    proj.write(".gitignore", "data/\nnotes.txt\nplot.png\n")
    originals = {"data/input.txt": "3\n", "data/old.tmp": "keep me\n", "data/sub/deep.txt": "deep\n",
                 "notes.txt": "user notes\n", "plot.png": "user plot"}
    for rel, content in originals.items():
        proj.write(rel, content)
    past = time.time() - 600  # older than the run: inputs, linked into the replay's copy
    for path in [proj.root / "data", proj.root / "data" / "sub", *(proj.root / rel for rel in originals)]:
        os.utime(path, (past, past))
    text = dedent(COUNTER).replace('state = {"x": 0, "hist": []}',
                                   'state = {"x": int(open("data/input.txt").read()), "hist": []}')
    run = proj.record(text, env=DENSE)
    writes = dedent("""
        with open("notes.txt", "a") as f: f.write(f"epoch {epoch}\\n")
        with open("plot.png", "w") as f: f.write(f"plot {state['x']}")
        with open(f"data/x{epoch}.txt", "w") as f: f.write(str(state["x"]))
        if epoch == 5: os.remove("data/old.tmp"); os.rename("data/input.txt", "data/moved.txt"); shutil.rmtree("data/sub")
    """).strip()
    new = insert_after(text, 'hl.log("x", state["x"])', writes).replace("import os\n", "import os\nimport shutil\n")
    proj.write("train.py", new)
    out = proj.replay("train.py", "--workers", "2").stdout
    for rel, content in originals.items():
        assert (proj.root / rel).read_text() == content, rel
    assert sorted(p.name for p in (proj.root / "data").iterdir()) == ["input.txt", "old.tmp", "sub"]
    kept = tmp_path / "proj-store" / "outputs" / run
    assert "files the replayed code wrote" in out, out
    assert (kept / "data" / "x5.txt").exists()
    # Written by both workers (each the iterations of its own segment): not kept, and said.
    assert not (kept / "plot.png").exists() and not (kept / "notes.txt").exists()
    assert "notes.txt, plot.png were written by several segments' workers" in out, out


def test_objects_a_loop_changes_through_project_functions_are_restored_or_recomputed(tmp_path: Path) -> None:
    """A nested loop changes an undeclared array and a dict only through project functions (one
    in another file, imported by name): a new statement that
    reads them after the loop gets the values a fresh run logs, not those of a skipped loop
    (the checkpoints hold them, or the loop runs)."""
    proj = ReplayProject(tmp_path)
    proj.write("helpers.py", "def accumulate(totals, value):\n    totals['sum'] += value\n    totals['n'] += 1\n")
    text = dedent("""
        import numpy as np
        import hindlog as hl
        from helpers import accumulate

        w = np.zeros(4)
        shadow = np.zeros(4)
        stats = {"sum": 0.0, "n": 0}
        hl.checkpoints(w=w)

        def shadow_update(target, source, decay=0.5):
            target *= decay
            target += (1 - decay) * source

        for epoch in hl.loop("epoch", range(5)):
            for i in hl.loop("step", range(3)):
                w += i + epoch
                shadow_update(shadow, w)
                accumulate(stats, float(w.sum()))
            hl.log("w", float(w.sum()))
    """)
    run = proj.record(text, env=DENSE)
    new = insert_after(text, 'hl.log("w", float(w.sum()))',
                       'hl.log("shadow", float(shadow.sum()))\nhl.log("mean", stats["sum"] / stats["n"])')
    proj.write("train.py", new)
    proj.replay("train.py", "--workers", "2")
    import numpy as np

    w, shadow, total, n = np.zeros(4), np.zeros(4), 0.0, 0
    want_shadow, want_mean = {}, {}
    for epoch in range(5):
        for i in range(3):
            w += i + epoch
            shadow = 0.5 * shadow + 0.5 * w
            total, n = total + float(w.sum()), n + 1
        want_shadow[(("epoch", epoch),)] = float(shadow.sum())
        want_mean[(("epoch", epoch),)] = total / n
    assert proj.values("shadow", run) == want_shadow
    assert proj.values("mean", run) == want_mean


LOADER_GENERATOR = """
import torch
import torch.nn as nn
import hindlog as hl

torch.manual_seed(0)
X = torch.randn(96, 6)
Y = (X[:, 0] - X[:, 2] > 0).long()
g = torch.Generator().manual_seed(123)
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=16, shuffle=True, generator=g)
noise = torch.Generator().manual_seed(7)
model = nn.Linear(6, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
hl.checkpoints(model=model, opt=opt)

for epoch in hl.loop("epoch", range(6)):
    for x, y in hl.loop("step", loader):
        x = x + 0.01 * torch.randn(x.shape, generator=noise)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    hl.log("acc", (model(X).argmax(1) == Y).float().mean().item())
"""


def test_generators_the_script_hands_to_its_data_loader_are_checkpointed_without_being_declared(tmp_path: Path) -> None:
    """``DataLoader(..., generator=g)`` and a generator drawn from with ``generator=noise``, not
    in ``hl.checkpoints``: what they draw next is training state. Segments that start mid-run
    restore them, so a new statement in the nested loop gets the batches a fresh run sees."""
    text = dedent(LOADER_GENERATOR)
    new = insert_after(text, "opt.step()", 'hl.log("first_y", y[:4].tolist())')
    fresh = ReplayProject(tmp_path, name="fresh")
    truth = fresh.record(new, env=DENSE)
    proj = ReplayProject(tmp_path)
    run = proj.record(text, env=DENSE)
    checkpointed = {r[0] for r in proj.sql("SELECT iteration FROM checkpoints c JOIN runs r ON r.id = c.run WHERE r.run_id = ?", (run,))}
    assert len(checkpointed - {0}) >= 2, checkpointed  # segments can start mid-run
    proj.write("train.py", new)
    proj.replay("train.py", "--workers", "2")
    assert proj.values("first_y", run) == fresh.values("first_y", truth)
    assert proj.values("acc", run) == fresh.values("acc", truth)


def test_a_main_loop_that_carries_a_local_no_checkpoint_can_hold_is_replayed_from_its_start(tmp_path: Path) -> None:
    """``next(stream)`` of a generator made before the main loop: no checkpoint can hold it, so
    a segment that started mid-run would draw from a fresh one. The record warns, the replay
    runs the main loop from iteration 0 in one segment (also for --iterations), and says why."""
    proj = ReplayProject(tmp_path)
    text = ENDLESS_STREAM + dedent("""
        for step in hl.loop("step", range(8)):
            b = next(stream)
            w += b
            time.sleep(0.02)
            hl.log("w", float(w.sum()))
    """)
    proj.write("train.py", text)
    recorded = proj.python("train.py", env=DENSE)
    assert "the local 'stream' (generator) cannot be checkpointed; replay will run the main loop from its first iteration" \
        in recorded.stderr, recorded.stderr
    run = proj.run_ids()[-1]
    proj.write("train.py", insert_after(text, 'hl.log("w", float(w.sum()))', 'hl.log("b", float(b.sum()))'))
    result = proj.replay("train.py", "--workers", "2")
    assert "the main loop's stream could not be checkpointed" in result.stdout, result.stdout
    assert "segments: 0:8\n" in result.stdout, result.stdout
    assert proj.values("b", run) == {(("step", k),): 3.0 * (k + 1) for k in range(8)}
    later = proj.replay("train.py", "--iterations", "5:8", "--workers", "2")
    assert "segments: 5:8\n" in later.stdout, later.stdout
    assert proj.values("b", run) == {(("step", k),): 3.0 * (k + 1) for k in range(8)}


# ----------------------------------------------------------------- the plan's segments


def plan_segments(total: int, checkpointed: list[int], workers: int, iterations: tuple[int, int] | None = None,
                  seconds: list[float] | None = None, worker_start: float = 0.0, notes: list[str] | None = None) -> list[tuple[int, int]]:
    from hindlog.checkpoint import ITERATION_END
    from hindlog.replay import RunPlan, _estimate

    lo, hi = iterations or (0, total)
    plan = RunPlan("r", 1, "train.py", "v", {}, {}, set(), (lo, hi), total, sorted(checkpointed))
    rows = {i: {ITERATION_END: (None, "manifest")} for i in checkpointed}
    _estimate(plan, {"info": {"iteration_seconds": seconds or [1.0] * total}}, rows, workers, worker_start=worker_start)
    if notes is not None:
        notes.extend(plan.notes)
    return [(s.start, s.end) for s in plan.segments]


def test_the_plan_shows_a_line_of_new_statements_once() -> None:
    from hindlog.replay import RunPlan, describe_plan

    src = "for e in hl.loop('e', x):\n    a = f(e); hl.log('b',\n        a)\n    hl.log('c', 1)\n"
    plan = RunPlan("r", 1, "train.py", "0" * 40, {"train.py": src}, {"train.py": [(2, 2), (2, 3), (4, 4)]}, set(), (0, 0), 0, [])
    shown = [line for line in describe_plan(plan).splitlines() if line.startswith("  + ")]
    assert shown == ["  + train.py:2: a = f(e); hl.log('b', ...", "  + train.py:4: hl.log('c', 1)"]


def test_segments_start_after_checkpoints_and_balance_the_work() -> None:
    assert plan_segments(10, list(range(10)), 1) == [(0, 10)]
    assert plan_segments(10, list(range(10)), 2) == [(0, 5), (5, 10)]
    assert len(plan_segments(9, list(range(9)), 3)) == 3
    assert plan_segments(4, list(range(4)), 8) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    # Without checkpoints there is one segment, whatever the workers.
    assert plan_segments(6, [], 4) == [(0, 6)]
    # Only after a checkpointed iteration can a segment start.
    assert plan_segments(10, [6], 2) == [(0, 7), (7, 10)]
    # Sparse checkpoints: the best split there is, even if it is short of half the work.
    assert plan_segments(5, [0, 1, 4], 2) == [(0, 2), (2, 5)]
    assert plan_segments(5, [0, 4], 2) == [(0, 1), (1, 5)]
    # Within --iterations; slow iterations weigh more.
    assert plan_segments(10, list(range(10)), 2, iterations=(3, 7)) == [(3, 5), (5, 7)]
    assert plan_segments(4, list(range(4)), 2, seconds=[5.0, 1.0, 1.0, 1.0]) == [(0, 1), (1, 4)]


def test_a_worker_is_planned_only_for_more_work_than_its_start() -> None:
    """Unless the user chose the count, a worker's segment must cost more than the script's run
    up to its main loop, which every worker repeats first."""
    notes: list[str] = []
    # The only checkpoint is near the end: one iteration of 30 is not worth a worker starting 2 s.
    assert plan_segments(30, [28], 2) == [(0, 29), (29, 30)]
    assert plan_segments(30, [28], 2, worker_start=2.0, notes=notes) == [(0, 30)]
    assert any("1 worker of the 2" in n and "2.0s" in n and "--workers N" in n for n in notes), notes
    # Enough work for two, not for eight: as many workers as there are starts' worth of work.
    assert plan_segments(30, list(range(30)), 8, worker_start=12.0) == [(0, 15), (15, 30)]
    assert plan_segments(30, list(range(30)), 8, worker_start=10.0) == [(0, 10), (10, 20), (20, 30)]
    seven = plan_segments(30, list(range(30)), 8, worker_start=4.0)
    assert len(seven) == 7 and all(end - start >= 4 for start, end in seven), seven
    # Work to spare: the split is the same as without the rule.
    assert plan_segments(10, list(range(10)), 2, worker_start=1.0) == [(0, 5), (5, 10)]
    # Sparse checkpoints: the cut nearest half the work that leaves each side its start's worth.
    assert plan_segments(10, [0, 7], 2, worker_start=2.0) == [(0, 8), (8, 10)]
    assert plan_segments(10, [0, 8], 2, worker_start=2.0) == [(0, 10)]
    notes.clear()
    # No checkpoint to start a segment at: one segment, and no note blaming the workers' start.
    assert plan_segments(10, [], 2, worker_start=20.0, notes=notes) == [(0, 10)] and notes == []


ARRAYS = """
import time

import numpy as np

import hindlog as hl

w = np.zeros(300_000)  # 2.4 MB: stored as an object of its own, not inside the skeleton
hl.checkpoints(w=w)
for epoch in hl.loop("epoch", range(6)):
    for i in hl.loop("step", range(3)):
        w += 1.0
    for i in hl.loop("probe", range(2)):
        pass
    time.sleep(0.05)
    hl.log("s", float(w.sum()))
"""


def test_replay_announces_the_checkpoints_its_workers_will_restore_first_ones_first(tmp_path: Path) -> None:
    """Checkpoint data bypass the page cache when written, so replay asks the kernel to read
    them ahead (``posix_fadvise``), in the order the workers restore them, within a budget."""
    import json

    from hindlog import catalog
    from hindlog.checkpoint import ITERATION_END, checkpoint_rows, prefetch_checkpoints, tensor_objects
    from hindlog.replay import RunPlan, Segment, restore_order
    from hindlog.store import Store

    proj = ReplayProject(tmp_path)
    proj.write("train.py", ARRAYS)
    proj.python(env=DENSE)
    store = Store(proj.store, proj.root)
    conn = store.connect()
    try:
        rows = checkpoint_rows(conn, catalog.get_run(conn, proj.run_ids()[-1])["id"])
    finally:
        conn.close()
    ends = sorted(i for i in rows if ITERATION_END in rows[i])
    assert len(ends) >= 3, f"a dense record checkpoints most iterations, got {sorted(rows)}"
    split = ends[len(ends) // 2] + 1  # the second segment starts after a checkpointed iteration
    plan = RunPlan("r", 1, "train.py", "v", {}, {}, {"probe"}, (0, 6), 6, ends,
                   segments=[Segment(0, split), Segment(split, 6)])

    def blocks(lo: int, hi: int, loop: str) -> list[str]:
        return [rows[i][b][1] for i in sorted(rows) if lo <= i < hi for b in sorted(rows[i]) if b >= 0 and rows[i][b][0] == loop]

    first, second = blocks(0, split, "step"), blocks(split, 6, "step")
    start = rows[max(i for i in ends if i < split)][ITERATION_END][1]
    order = restore_order(plan, rows)
    # The two workers' first restores come first: the second segment's starting checkpoint, then
    # each segment's nested-loop checkpoints in the order its worker meets them, taken in turn.
    assert order[:2] == [first[0], start]
    assert [m for m in order if m in first] == first and [m for m in order if m in second] == [*second]
    assert sorted(order) == sorted([start, *first, *second]), "a probed loop runs: its checkpoints are not read"
    plan.run_all_blocks = True
    assert restore_order(plan, rows) == [start]

    def distinct_bytes(manifests: list[str]) -> int:
        names: set[str] = set()
        for m in manifests:
            manifest = json.loads(store.objects.get(m))
            names |= {manifest["skeleton"], *tensor_objects(manifest)}
        return sum(store.objects.size(n) for n in names)

    # The budget stops it after the checkpoint that reaches it; objects shared between
    # checkpoints (the array, unchanged by the probe loop) count once.
    assert prefetch_checkpoints(store.objects, order, 1) == distinct_bytes(order[:1]) > 2_400_000
    everything = [m for i in rows for _, m in rows[i].values()]
    assert prefetch_checkpoints(store.objects, everything, 1 << 40) == distinct_bytes(everything) < sum(
        distinct_bytes([m]) for m in everything)
    # A checkpoint that is gone is not announced, and is not an error here (restoring it is).
    assert prefetch_checkpoints(store.objects, ["0" * 32, *order[:1]], 1 << 40) == distinct_bytes(order[:1])


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores for PyTorch to default to two threads")
def test_workers_compute_with_the_thread_count_of_the_record(tmp_path: Path) -> None:
    # Recorded with PyTorch's default thread count; replayed from a shell that asks for one
    # thread: the workers must still use the record's count, or float reductions (and so the
    # values) could differ.
    proj = ReplayProject(tmp_path)
    text = dedent("""
        import torch
        import hindlog as hl
        w = torch.zeros(4)
        hl.checkpoints(w=w)
        for epoch in hl.loop("epoch", range(3)):
            for i in hl.loop("step", range(2)):
                w += torch.ones(4)
            hl.log("record_threads", torch.get_num_threads())
    """)
    proj.write("train.py", text)
    env = proj.env(DENSE)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(var)
    subprocess.run([sys.executable, "train.py"], cwd=proj.root, env=env, check=True, capture_output=True, timeout=120)
    run = proj.run_ids()[-1]
    recorded = set(proj.values("record_threads", run).values())
    if recorded == {1}:
        pytest.skip("PyTorch defaults to one thread here")
    proj.write("train.py", insert_after(text, 'hl.log("record_threads", torch.get_num_threads())',
                                        'hl.log("replay_threads", torch.get_num_threads())'))
    proj.replay("train.py", "--workers", "1")  # the environment says OMP_NUM_THREADS=1
    assert set(proj.values("replay_threads", run).values()) == recorded


def test_workers_that_share_cores_wait_passively(counter: tuple[ReplayProject, str]) -> None:
    # A record whose thread count fills far more than this machine's cores: two workers share
    # cores, and their OpenMP threads must not spin while they wait (that starved the other
    # worker: 2-4x slower than one worker). Workers that fit, or a policy the user set, are left alone.
    proj, run = counter
    if "OMP_WAIT_POLICY" in proj.env():
        pytest.skip("OMP_WAIT_POLICY is set for the tests")
    proj.sql("UPDATE runs SET info=json_set(info, '$.threads', 4096) WHERE run_id=?", (run,))
    proj.write("train.py", insert_after(proj.read(), 'hl.log("x", state["x"])',
                                        'hl.log("wait", os.environ.get("OMP_WAIT_POLICY", "unset"))'))
    plan = proj.replay("train.py", "--workers", "2", "--dry-run").stdout
    assert "idle OpenMP threads wait passively" in plan, plan
    proj.replay("train.py", "--workers", "2")
    assert set(proj.values("wait", run).values()) == {"PASSIVE"}
    proj.replay("train.py", "--workers", "2", env={"OMP_WAIT_POLICY": "ACTIVE"})
    assert set(proj.values("wait", run).values()) == {"ACTIVE"}
    proj.sql("UPDATE runs SET info=json_set(info, '$.threads', 1) WHERE run_id=?", (run,))
    proj.replay("train.py", "--workers", "1")
    assert set(proj.values("wait", run).values()) == {"unset"}


def test_the_default_workers_are_only_those_whose_share_outweighs_their_start(counter: tuple[ReplayProject, str]) -> None:
    """Every worker first runs the script up to its main loop: with the default count, a replay
    whose main-loop work is short next to that starts fewer workers, and says why."""
    from hindlog.replay import usable_cores

    if usable_cores() < 2:
        pytest.skip("one core: the default is one worker anyway")
    proj, run = counter
    proj.sql("UPDATE runs SET info=json_set(info, '$.threads', 1) WHERE run_id=?", (run,))
    proj.write("train.py", insert_after(proj.read(), 'hl.log("x", state["x"])', 'hl.log("double", 2 * state["x"])'))
    # As recorded (a start far shorter than the main loop), the default splits the main loop.
    proj.sql("UPDATE runs SET info=json_set(info, '$.preloop_seconds', 0.001) WHERE run_id=?", (run,))
    assert len(segments(proj.replay("train.py", "--dry-run").stdout)) >= 2
    # A 100 s start before the main loop (a dataset loaded): no further worker pays for it.
    proj.sql("UPDATE runs SET info=json_set(info, '$.preloop_seconds', 100.0) WHERE run_id=?", (run,))
    plan = proj.replay("train.py", "--dry-run").stdout
    assert segments(plan) == [(0, 6)], plan
    assert "the script up to its main loop (100.0s in the record)" in plan and "--workers N" in plan, plan
    # The user's count is kept.
    plan = proj.replay("train.py", "--workers", "2", "--dry-run").stdout
    assert len(segments(plan)) == 2 and "up to its main loop" not in plan, plan
    proj.replay("train.py")
    assert proj.values("double", run) == {k: 2 * v for k, v in expected_x().items()}


def test_default_workers_fit_the_cores_at_the_record_thread_count() -> None:
    from hindlog.replay import default_workers

    assert default_workers({"info": {"threads": 2}}, cores=2) == 1
    assert default_workers({"info": {"threads": 1}}, cores=2) == 2
    assert default_workers({"info": {"threads": 4}}, cores=16) == 4
    assert default_workers({"info": {}}, cores=8) == 8  # no torch in the record: one thread each
    assert default_workers({"info": {"threads": 8}}, cores=2) == 1


def test_gpus_a_worker_can_be_given_follow_cuda_visible_devices() -> None:
    from hindlog.replay import default_workers, gpu_for_worker, visible_gpus

    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2, 5"}) == ["2", "5"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "1,-1,3"}) == ["1"]      # CUDA stops at the first invalid id
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-8f6c,GPU-11ab"}) == ["GPU-8f6c", "GPU-11ab"]
    # Round-robin over the GPUs when there are several workers; one worker is left as the record ran.
    assert [gpu_for_worker(k, 3, ["0", "1"]) for k in range(3)] == ["0", "1", "0"]
    assert gpu_for_worker(0, 1, ["0", "1"]) is None
    assert gpu_for_worker(1, 2, []) is None
    # A run that saw a GPU gets a worker per GPU; a CPU run a worker per core's worth of threads.
    gpu_run = {"env": {"gpus": ["NVIDIA H100"]}, "info": {"threads": 1}}
    assert default_workers(gpu_run, cores=16, gpus=["0", "1"]) == 2
    assert default_workers(gpu_run, cores=16, gpus=[]) == 16
    assert default_workers({"env": {"gpus": []}, "info": {"threads": 1}}, cores=16, gpus=["0", "1"]) == 16


def test_workers_of_a_gpu_run_are_spread_over_the_visible_gpus(counter: tuple[ReplayProject, str]) -> None:
    # The record saw a GPU (as a CUDA machine's run would say); the replay machine shows two.
    proj, run = counter
    proj.sql("UPDATE runs SET env=json_set(env, '$.gpus', json('[\"NVIDIA H100\"]')) WHERE run_id=?", (run,))
    # A start before the main loop far shorter than the loop, as in a real training run: the
    # default starts a worker for every GPU (a segment shorter than a worker's start gets none).
    proj.sql("UPDATE runs SET info=json_set(info, '$.preloop_seconds', 0.001) WHERE run_id=?", (run,))
    proj.write("train.py", insert_after(proj.read(), 'hl.log("x", state["x"])',
                                        'hl.log("gpu", os.environ.get("CUDA_VISIBLE_DEVICES"))'))
    plan = proj.replay("train.py", "--dry-run", env={"CUDA_VISIBLE_DEVICES": "4,7"}).stdout
    assert re.search(r"GPUs: 0:\d+ on 4, \d+:6 on 7", plan), plan
    proj.replay("train.py", env={"CUDA_VISIBLE_DEVICES": "4,7"})      # default: one worker per GPU
    by_epoch = {ctx[0][1]: v for ctx, v in proj.values("gpu", run).items()}
    assert sorted(by_epoch) == list(range(6))
    seen = [by_epoch[e] for e in range(6)]
    first = seen.index("7")                                            # segment 2 starts there
    assert 0 < first and seen == ["4"] * first + ["7"] * (6 - first), seen


def test_values_logged_before_and_after_the_main_loop_are_checked_on_their_own_side(tmp_path: Path) -> None:
    """The same name logged before and after the main loop (whose iterations log nothing): the
    last of two segments runs only the part after the loop, and its value is checked against
    the record's value from after the loop, not stored again nor compared with the one before."""
    proj = ReplayProject(tmp_path)
    text = dedent(
        """
        import time
        import numpy as np
        import hindlog as hl

        rng = np.random.default_rng(0)
        w = np.zeros(3)
        hl.checkpoints(w=w)
        hl.log("stage", float(w.sum()))
        for epoch in hl.loop("epoch", range(4)):
            for k in hl.loop("step", range(2)):
                w += rng.normal(size=3)
            time.sleep(0.03)
        hl.log("stage", float(w.sum()))
        """
    )
    run = proj.record(text, env=DENSE)
    before = proj.count("stage", run)
    assert before == 2
    proj.write("train.py", text.replace("    time.sleep(0.03)\n", '    time.sleep(0.03)\n    hl.log("wsum", float(w.sum()))\n'))
    result = proj.replay("train.py", "--workers", "2")
    assert re.search(r"segments: 0:\d, \d:4", result.stdout), result.stdout
    assert "4 new values stored, " in result.stdout and "DIVERGED" not in result.stderr, result.stdout + result.stderr
    assert proj.count("stage", run) == before  # checked, not stored a second time
    stage = proj.sql("SELECT r.value FROM records r JOIN names n ON n.id=r.name WHERE n.name='stage' ORDER BY r.rowid")
    wsum = proj.values("wsum", run)
    assert float(stage[-1][0]) == wsum[(("epoch", 3),)]


def test_a_changed_line_is_refused_also_when_an_older_version_lacks_it(tmp_path: Path) -> None:
    """v1, then v2 adds a statement; changing that statement must be refused, not read as a
    statement added to v1 (which would then be replayed into v2's code next to the original)."""
    proj = ReplayProject(tmp_path)
    v1 = dedent(COUNTER)
    proj.record(v1, env=DENSE)
    proj.commit("v1")
    v2 = insert_after(v1, 'hl.log("x", state["x"])', 'hl.log("half", state["x"] / 2)')
    run = proj.record(v2, env=DENSE)
    proj.commit("v2")
    proj.write("train.py", v2.replace('hl.log("half", state["x"] / 2)', 'hl.log("half", state["x"] / 4)'))
    refused = proj.replay("train.py", check=False)
    assert refused.returncode != 0 and "--force" in refused.stderr, refused.stdout + refused.stderr
    assert '+    hl.log("half", state["x"] / 4)' in refused.stderr, refused.stderr
    assert proj.count("half", run) == 6  # nothing replayed


def test_a_divergence_only_in_segments_that_start_mid_run_says_to_replay_in_one(tmp_path: Path) -> None:
    """An iterator made once before the main loop and drawn from in every iteration through a
    library function the analysis cannot see into is not in the checkpoints: a segment that
    starts mid-run starts it afresh and diverges; one segment does not. (Drawn with
    ``next(draws)`` itself, it is checkpointed.)"""
    proj = ReplayProject(tmp_path)
    text = dedent(
        """
        import functools
        import time
        import hindlog as hl

        draws = functools.partial(next, iter(range(100)))
        state = {"x": 0}
        hl.checkpoints(state=state)
        for epoch in hl.loop("epoch", range(6)):
            for k in hl.loop("step", range(2)):
                state["x"] += k
            time.sleep(0.03)
            hl.log("draw", draws())
        """
    )
    run = proj.record(text, env=DENSE)
    proj.write("train.py", text + 'hl.log("end", state["x"])\n')
    two = proj.replay("train.py", "--workers", "2", check=False)
    assert "DIVERGED" in two.stderr and "--workers 1 replays the run in one segment" in two.stderr, two.stdout + two.stderr
    one = proj.replay("train.py", "--workers", "1")
    assert "DIVERGED" not in one.stderr
    assert proj.values("end", run) == {(): 6}
    # Drawn with next(draws) the iterator is checkpointed (a range iterator pickles): two segments agree.
    plain = text.replace("functools.partial(next, iter(range(100)))", "iter(range(100))").replace("draws()", "next(draws)")
    run = proj.record(plain, env=DENSE)
    proj.write("train.py", plain + 'hl.log("end", state["x"])\n')
    two = proj.replay("train.py", "--run", run, "--workers", "2")
    assert "DIVERGED" not in two.stderr and proj.values("end", run) == {(): 6}, two.stdout + two.stderr


def test_a_process_that_records_several_runs_replays_its_first_and_says_why_not_the_others(tmp_path: Path) -> None:
    proj = ReplayProject(tmp_path)
    text = dedent(
        """
        import time
        import numpy as np
        import hindlog as hl

        for scale in [1.0, 10.0]:
            hl.init(name=f"scale{scale}")
            state = {"w": np.zeros(2)}
            hl.checkpoints(state=state)
            for epoch in hl.loop("epoch", range(4)):
                for k in hl.loop("step", range(3)):
                    state["w"] += scale * k
                time.sleep(0.03)
                hl.log("w", float(state["w"].sum()))
            hl.finish()
        """
    )
    proj.write("train.py", text)
    proj.python(env=DENSE)
    first, second = proj.run_ids()[-2:]
    proj.write("train.py", text.replace('        hl.log("w", float(state["w"].sum()))\n',
                                        '        hl.log("w", float(state["w"].sum()))\n        hl.log("w0", float(state["w"][0]))\n'))
    result = proj.replay("train.py", "--all", "--workers", "2", check=False)
    assert f"skipped run {second}: it is run 2 of the process that recorded it" in result.stderr, result.stderr
    assert proj.values("w0", first) == {(("epoch", e),): 3.0 * (e + 1) for e in range(4)}
    assert proj.count("w0", second) == 0 and proj.count("w", first) == 4
    # Resume refuses it too (had it failed, its process's first run is what the script would redo).
    import sqlite3

    conn = sqlite3.connect(str(proj.store / "catalog.db"))
    with conn:
        conn.execute("UPDATE runs SET status='failed' WHERE run_id=?", (second,))
    conn.close()
    resumed = proj.hindlog("resume", second, check=False)
    assert resumed.returncode != 0 and "not the first run of the process" in resumed.stderr, resumed.stderr


def test_a_run_still_recording_is_not_replayed(tmp_path: Path) -> None:
    import time

    proj = ReplayProject(tmp_path)
    hold = tmp_path / "hold"
    hold.touch()
    text = dedent(COUNTER).replace("time.sleep(0.03)", f"time.sleep(0.03)\n    while epoch == 2 and os.path.exists({str(hold)!r}):\n        time.sleep(0.01)")
    proj.write("train.py", text)
    proc = proj.start("train.py", env=DENSE)
    try:
        deadline = time.monotonic() + 60
        # The run's code is snapshotted in the background: edit the script only once it is.
        def snapshotted() -> bool:
            try:
                return bool(proj.sql("SELECT 1 FROM runs WHERE code_version IS NOT NULL"))
            except sqlite3.Error:  # the catalog is still being made
                return False

        while not snapshotted() and time.monotonic() < deadline:
            time.sleep(0.05)
        proj.write("train.py", insert_after(text, 'hl.log("x", state["x"])', 'hl.log("double", 2 * state["x"])'))
        result = proj.replay("train.py", check=False)
        assert result.returncode != 0 and "it is still recording; replay it once it has finished" in result.stderr, result.stderr
    finally:
        hold.unlink()
        proj.finish(proc)
    proj.replay("train.py")  # finished now
    assert proj.values("double", proj.run_ids()[-1]) == {k: 2 * v for k, v in expected_x().items()}


LOADER_SEED = """
import torch
import hindlog as hl
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
X = torch.randn(64, 4)
Y = X.sum(1, keepdim=True)
loader = DataLoader(TensorDataset(X, Y), batch_size=16, shuffle=True)
val_loader = DataLoader(TensorDataset(X[:16], Y[:16]), batch_size=8)
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.05)
hl.checkpoints(model=model, opt=opt)


def evaluate(dl):
    with torch.no_grad():
        return sum(float(((model(x) - y) ** 2).mean()) for x, y in dl)


for epoch in hl.loop("epoch", range(4)):
    for x, y in hl.loop("step", loader):
        loss = torch.nn.functional.dropout(((model(x) - y) ** 2), 0.2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    hl.log("loss", loss.item())
"""

LOADER_SEED_NEW = """
hl.log("val", evaluate(val_loader))
seen = 0
for xb, yb in val_loader:
    seen += len(xb) + int(torch.randint(0, 3, ()).item())
hl.log("seen", seen)
"""


def test_new_code_that_reads_a_loader_leaves_the_runs_random_draws_as_recorded(tmp_path: Path) -> None:
    """Reading a DataLoader draws a seed from torch's generator: a new ``evaluate(val_loader)``
    (or a new loop over it) moved every later shuffle and dropout, and the first iteration that
    re-executed diverged. The replay sets the generators back after new code."""
    proj = ReplayProject(tmp_path / "p")
    run = proj.record(dedent(LOADER_SEED), env={"HINDLOG_EPSILON": "0"})  # no checkpoint: every iteration re-executes
    new = insert_after(dedent(LOADER_SEED), 'hl.log("loss", loss.item())', LOADER_SEED_NEW)
    proj.write("train.py", new)
    for workers in ("1", "2"):
        result = proj.replay("train.py", "--workers", workers, check=False)
        assert result.returncode == 0 and "DIVERGED" not in result.stdout, result.stdout + result.stderr
    # Ground truth: the modified script run afresh with the new code under torch's own fork_rng.
    truth = ReplayProject(tmp_path / "t")
    forked = insert_after(dedent(LOADER_SEED), 'hl.log("loss", loss.item())',
                          "with torch.random.fork_rng():\n" + "".join("    " + line + "\n" for line in dedent(LOADER_SEED_NEW).strip().splitlines()))
    truth_run = truth.record(forked, env={"HINDLOG_EPSILON": "0"})
    for name in ("val", "seen", "loss"):
        want = truth.values(name, truth_run)
        assert len(want) == 4
        assert_same_values(proj.values(name, run), want, name)


@pytest.mark.parametrize("line, count", [
    ('hl.log("noisy", float(w[0] + rng.normal()))', 4),
    ('if epoch % 2 == 0: hl.log("noisy", float(w[0] + rng.normal()))', 2),  # after `if c:`: no `with` there
    ('if rng.normal() > -100:\n    hl.log("noisy", float(w[0]))', 4),  # the test of a new `if` draws
])
def test_new_code_that_draws_from_a_declared_generator_leaves_it_as_recorded(tmp_path: Path, line: str, count: int) -> None:
    """A NumPy Generator named in hl.checkpoints is the run's too: new code that draws from it
    (a new noisy estimate) must leave it where the record had it for the next iteration."""
    text = dedent("""
        import numpy as np
        import hindlog as hl

        rng = np.random.default_rng(0)
        X = rng.normal(size=(64, 3))
        y = X @ np.array([1.0, -2.0, 0.5])
        w = np.zeros(3)
        hl.checkpoints(w=w, rng=rng)
        for epoch in hl.loop("epoch", range(4)):
            order = rng.permutation(len(X))
            for b in hl.loop("batch", range(0, 64, 16)):
                idx = order[b:b + 16]
                w -= 0.1 * X[idx].T @ (X[idx] @ w - y[idx]) / len(idx)
            hl.log("mse", float(np.mean((X @ w - y) ** 2)))
    """)
    proj = ReplayProject(tmp_path)
    run = proj.record(text, env={"HINDLOG_EPSILON": "0"})  # no checkpoint: every iteration re-executes
    proj.write("train.py", insert_after(text, 'hl.log("mse"', line))
    result = proj.replay("train.py", "--workers", "1", check=False)
    assert result.returncode == 0 and "DIVERGED" not in result.stdout, result.stdout + result.stderr
    assert len(proj.values("noisy", run)) == count


ENUMERATED = """
import numpy as np
import hindlog as hl

rng = np.random.default_rng(0)
w = np.zeros(3)
hl.checkpoints(w=w, rng=rng)
for epoch in hl.loop("epoch", range(4)):
    for k, i in enumerate(hl.loop("step", range(3))):
        x = rng.normal(size=3)
        w += 0.1 * (x - w) * (k + 1)
    hl.log("w0", float(w[0]))
"""


@pytest.mark.parametrize("anchor, line, name, count", [
    ("w += 0.1", "hl.log('x0', float(x[0]))", "x0", 12),  # in the nested loop
    ('hl.log("w0"', "hl.log('k', k)", "k", 4),  # reads what the skipped loop assigned
])
def test_a_nested_loop_handed_to_enumerate_is_one_the_analysis_sees(tmp_path: Path, anchor: str, line: str, name: str, count: int) -> None:
    """``enumerate(hl.loop("step", ...))``: the loop is still hl.loop's. Taken for an ordinary
    loop, it was skipped: the new statement in it logged nothing, and one after it read a loop
    variable the skip had not restored (NameError)."""
    text = dedent(ENUMERATED)
    proj = ReplayProject(tmp_path)
    run = proj.record(text, env=DENSE)
    new = insert_after(text, anchor, line)
    proj.write("train.py", new)
    result = proj.replay("train.py", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    # Both run the loop: one logs in it, the other reads `k`, which its checkpoints do not hold.
    assert must_run(result.stdout) == {"step"}, result.stdout
    truth = ground_truth(tmp_path, {"train.py": new}, [name])
    assert len(truth[name]) == count
    assert_same_values(proj.values(name, run), truth[name], name)


GRADIENTS = """
import torch
import hindlog as hl

torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
hl.checkpoints(model=model, opt=opt)
for epoch in hl.loop("epoch", range(3)):
    for i in hl.loop("step", range(4)):
        x = torch.randn(8, 4)
        opt.zero_grad()
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        loss.backward()
        opt.step()
    hl.log("loss", loss.item())
"""


@pytest.mark.parametrize("line", [
    'hl.log("gn", torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9).item())',
    'hl.log("gn", float(model.weight.grad.norm()))',
])
def test_a_new_main_loop_statement_that_reads_gradients_gets_them(tmp_path: Path, line: str) -> None:
    """Checkpoints hold no gradients: skipping the nested loop left none, and a gradient norm
    from ``clip_grad_norm_`` was replayed as 0.0."""
    pytest.importorskip("torch")
    text = dedent(GRADIENTS)
    proj = ReplayProject(tmp_path)
    run = proj.record(text, env=DENSE)
    new = insert_after(text, 'hl.log("loss"', line)
    proj.write("train.py", new)
    result = proj.replay("train.py")
    assert "reads gradients" in result.stdout, result.stdout
    truth = ground_truth(tmp_path, {"train.py": new}, ["gn"])
    assert len(truth["gn"]) == 3 and all(v > 0 for v in truth["gn"].values())
    assert_same_values(proj.values("gn", run), truth["gn"], "gn")


def test_a_recorded_statement_that_reads_gradients_after_the_nested_loop_gets_them(tmp_path: Path) -> None:
    """The record logged a gradient norm after the step loop; a replay of an unrelated new
    statement must not skip that loop (checkpoints hold no gradients: the recorded statement
    read none, and the replay failed), and the recorded norms check equal."""
    pytest.importorskip("torch")
    text = insert_after(dedent(GRADIENTS), 'hl.log("loss"', 'hl.log("gn", float(model.weight.grad.norm()))')
    proj = ReplayProject(tmp_path)
    run = proj.record(text, env=DENSE)
    new = insert_after(text, 'hl.log("gn"', 'hl.log("wn", float(model.weight.norm()))')
    proj.write("train.py", new)
    result = proj.replay("train.py", "--workers", "2")
    assert "the recorded code reads gradients after its nested loops" in result.stdout, result.stdout
    assert "divergen" not in result.stdout.lower(), result.stdout
    truth = ground_truth(tmp_path, {"train.py": new}, ["wn"])
    assert_same_values(proj.values("wn", run), truth["wn"], "wn")


def test_gradients_accumulated_across_main_loop_iterations_are_replayed_from_the_start(tmp_path: Path) -> None:
    """Gradient accumulation over 3 steps, 4 steps an epoch: every epoch leaves gradients to the
    next, which no checkpoint holds. The replay runs from the first iteration in one segment with
    every nested loop, so it neither diverges nor logs other batches' values, also for
    --iterations."""
    pytest.importorskip("torch")
    text = dedent(GRADIENTS).replace(
        "        opt.zero_grad()\n", "").replace(
        "        opt.step()\n", "        if (epoch * 4 + i + 1) % 3 == 0:\n            opt.step()\n            opt.zero_grad()\n")
    assert "if (epoch * 4 + i + 1) % 3 == 0:" in text
    proj = ReplayProject(tmp_path)
    run = proj.record(text, env=DENSE)
    new = insert_after(text, 'hl.log("loss"', 'hl.log("wn", float(model.weight.norm()))')
    proj.write("train.py", new)
    result = proj.replay("train.py", "--iterations", "1:3", "--workers", "2")
    assert "clears the gradients only under a condition" in result.stdout and "segments: 1:3\n" in result.stdout, result.stdout
    truth = ground_truth(tmp_path, {"train.py": new}, ["wn"])
    assert_same_values(proj.values("wn", run), {k: v for k, v in truth["wn"].items() if dict(k)["epoch"] >= 1}, "wn")


def test_a_worker_does_not_pass_on_torchs_warning_about_a_skipped_optimizer_step(tmp_path: Path) -> None:
    """A skipped nested loop steps no optimizer: torch then warns that the scheduler stepped
    after it was called first, which the user's code does not do. A failed segment shows its
    worker's output: the warning must not be in it."""
    pytest.importorskip("torch")
    text = dedent(GRADIENTS).replace("hl.checkpoints(model=model, opt=opt)",
                                     "sched = torch.optim.lr_scheduler.StepLR(opt, 1)\nhl.checkpoints(model=model, opt=opt, sched=sched)")
    text = insert_after(text, 'hl.log("loss"', "sched.step()")
    proj = ReplayProject(tmp_path)
    proj.record(text, env=DENSE)
    proj.write("train.py", insert_after(text, "sched.step()", 'hl.log("lr", sched.get_last_lr()[0]); assert epoch < 2, "boom"'))
    result = proj.replay("train.py", "--workers", "1", check=False)
    assert result.returncode != 0 and "boom" in result.stderr, result.stdout + result.stderr
    assert ": failed, " in result.stdout and "skipped" in result.stdout, result.stdout
    assert "Detected call of `lr_scheduler.step()`" not in result.stderr, result.stderr


def test_a_recorded_log_that_new_code_makes_fire_more_often_is_stored(tmp_path: Path) -> None:
    """`EVERY = 1` added after `EVERY = 2`: the recorded `hl.log` in the step loop now logs at
    every step. The values the record did not have are new values, stored."""
    text = dedent("""
        import hindlog as hl

        EVERY = 2
        w = 0.0
        for epoch in hl.loop("epoch", range(3)):
            for i in hl.loop("step", range(4)):
                w += 0.5 * i
                if i % EVERY == 0:
                    hl.log("loss", w)
    """)
    proj = ReplayProject(tmp_path)
    run = proj.record(text, env=DENSE)
    assert proj.count("loss", run) == 6
    proj.write("train.py", insert_after(text, "EVERY = 2", "EVERY = 1"))
    proj.replay("train.py")
    truth = ground_truth(tmp_path, {"train.py": insert_after(text, "EVERY = 2", "EVERY = 1")}, ["loss"])
    assert len(truth["loss"]) == 12
    assert_same_values(proj.values("loss", run), truth["loss"], "loss")


def test_the_plan_notes_a_new_statement_that_draws_random_numbers(counter) -> None:
    proj, run = counter
    proj.write("train.py", insert_after(dedent(COUNTER).replace("import time\n", "import random\nimport time\n"),
                                        'hl.log("x", state["x"])', 'hl.log("r", random.random())'))
    plan = proj.replay("train.py", "--dry-run").stdout
    assert "a new statement draws random numbers" in plan, plan


def test_a_statement_in_a_models_call_method_runs_the_loops_that_call_the_model(tmp_path: Path) -> None:
    """``model(x)`` runs ``__call__`` (``forward`` for torch modules) without naming it: the
    loops that call the model must run, or the new statement logs nothing there."""
    text = dedent("""
        import time
        import hindlog as hl

        class Model:
            def __init__(self):
                self.w = 1.0

            def __call__(self, x):
                y = self.w * x
                return y

        model = Model()
        hl.checkpoints(model=model)
        for epoch in hl.loop("epoch", range(5)):
            for i in hl.loop("step", range(3)):
                model.w += 0.1 * model(i)
            for i in hl.loop("shuffle", range(2)):
                order = [i, epoch]
            time.sleep(0.03)
            hl.log("w", model.w)
    """)
    new = insert_after(text, "y = self.w * x", "hl.log('y', y)")
    proj = ReplayProject(tmp_path)
    run = proj.record(text, env=DENSE)
    proj.write("train.py", new)
    out = proj.replay("train.py").stdout
    assert must_run(out) == {"step"}
    truth = ground_truth(tmp_path, {"train.py": new}, ["y"])
    assert len(truth["y"]) == 15
    assert_same_values(proj.values("y", run), truth["y"], "y")


def test_a_loop_local_that_a_function_called_after_the_loop_reads_is_restored(tmp_path: Path) -> None:
    """``summary()`` reads the global ``last`` that the skipped step loop assigned: its
    checkpoint must hold it, or the recorded ``o`` replays stale."""
    text = dedent("""
        import time
        import hindlog as hl

        def summary():
            return last * 10

        state = {"x": 0}
        hl.checkpoints(state=state)
        for epoch in hl.loop("epoch", range(5)):
            for i in hl.loop("step", range(3)):
                last = epoch * 3 + i
                state["x"] += i
            time.sleep(0.03)
            hl.log("o", summary())
    """)
    new = insert_after(text, 'hl.log("o", summary())', 'hl.log("x2", state["x"] * 2)')
    proj = ReplayProject(tmp_path)
    run = proj.record(text, env=DENSE)
    proj.write("train.py", new)
    out = proj.replay("train.py").stdout
    assert must_run(out) == set()
    truth = ground_truth(tmp_path, {"train.py": new}, ["x2"])
    assert_same_values(proj.values("x2", run), truth["x2"], "x2")


def test_a_segment_of_a_main_loop_over_a_shuffling_loader_reads_the_recorded_batches(tmp_path: Path) -> None:
    """The loader's order is drawn when its first batch is read: a segment reads the batches
    before its start, then restores the generators, as the record drew them."""
    from ckpt_helpers import LOADER_MAIN_LOOP

    text = dedent(LOADER_MAIN_LOOP)
    new = insert_after(text, 'hl.log("loss", loss.item())', 'hl.log("first_y", float(yb[0, 0]))')
    proj = ReplayProject(tmp_path)
    run = proj.record(text, env=DENSE)
    proj.write("train.py", new)
    # Each replayed loss is checked against the record's: another batch gives another loss, and
    # the replay fails.
    out = proj.replay("train.py", "--iterations", "5:10").stdout
    assert summary(out)["checked"] == 10, out  # loss and first_x
    assert sorted(k[0][1] for k in proj.values("first_y", run)) == [5, 6, 7, 8, 9]


def test_a_new_forward_hook_logs_in_every_loop_that_calls_the_model(tmp_path: Path) -> None:
    """Registering a hook is the usual way to log activations after the fact: the hook runs
    inside ``model(x)`` in the training and validation loops, which must both run."""
    text = dedent("""
        import time
        import torch
        import hindlog as hl

        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        X, VX = torch.randn(24, 4), torch.randn(8, 4)
        hl.checkpoints(model=model, opt=opt)
        for epoch in hl.loop("epoch", range(4)):
            for k in hl.loop("step", range(3)):
                loss = model(X[k * 8:(k + 1) * 8]).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                for k in hl.loop("val", range(2)):
                    val = model(VX[k * 4:(k + 1) * 4]).sum().item()
            time.sleep(0.03)
            hl.log("val", val)
    """)
    new = insert_before(text, "hl.checkpoints(model=model, opt=opt)", dedent("""
        def activations(module, inputs, output):
            hl.log("act", float(output.abs().mean()))

        model[1].register_forward_hook(activations)
    """))
    proj = ReplayProject(tmp_path)
    run = proj.record(text, env=DENSE)
    proj.write("train.py", new)
    out = proj.replay("train.py").stdout
    assert must_run(out) == {"step", "val"}
    # Every call of the model logged once, each in its loop; the recorded val checked equal.
    assert summary(out)["checked"] == 4, out
    contexts = sorted(tuple(name for name, _ in key) for key in proj.values("act", run))
    assert contexts == [("epoch", "step")] * 12 + [("epoch", "val")] * 8, contexts


def test_an_older_run_gets_only_the_new_statements_with_run_or_force(tmp_path: Path) -> None:
    """A line a later recorded version added (``lr = lr * 0.5``) is that version's code: replayed
    alone (``--run``) or with --force, the oldest run gets only the statement added now."""
    v1 = dedent("""
        import time
        import hindlog as hl

        lr = hl.arg("lr", 0.1)
        w = {"x": 1.0}
        hl.checkpoints(w=w)
        for epoch in hl.loop("epoch", range(4)):
            for i in hl.loop("step", range(3)):
                w["x"] -= lr * w["x"]
            time.sleep(0.03)
            hl.log("w", w["x"])
    """)
    v2 = insert_after(v1, 'hl.log("w", w["x"])', "lr = lr * 0.5")
    proj = ReplayProject(tmp_path)
    old = proj.record(v1, env=DENSE)
    proj.commit("v1")
    proj.record(v2, env=DENSE)
    new = insert_before(v2, "for i in hl.loop", 'hl.log("h_lr", lr)')
    proj.write("train.py", new)
    out = proj.replay("train.py", "--run", old).stdout
    assert "lr = lr * 0.5" not in out, out
    assert proj.values("h_lr", old) == {(("epoch", e),): 0.1 for e in range(4)}
    # --force with a changed line: the older run still gets its own code and the statement only.
    proj.write("train.py", new.replace("time.sleep(0.03)", "time.sleep(0.031)"))
    out = proj.replay("train.py", "--all", "--force").stdout
    assert proj.values("h_lr", old) == {(("epoch", e),): 0.1 for e in range(4)}, out


def test_a_script_whose_child_processes_record_is_refused_by_the_children_with_the_reason(tmp_path: Path) -> None:
    """The children inherit the replay worker's variables: each would take the worker's run for
    its own (and, following the replay's driver, ended itself without a word)."""
    proj = ReplayProject(tmp_path)
    text = dedent("""
        import multiprocessing
        import hindlog as hl

        def child(k):
            for epoch in hl.loop("epoch", range(2)):
                hl.log("k", k + epoch)

        if __name__ == "__main__":
            processes = [multiprocessing.get_context("spawn").Process(target=child, args=(k,)) for k in range(2)]
            for p in processes:
                p.start()
            for p in processes:
                p.join()
    """)
    proj.write("train.py", text)
    proj.python("train.py")
    assert len(proj.run_ids()) == 2
    proj.write("train.py", insert_after(text, 'hl.log("k", k + epoch)', 'hl.log("k2", 2 * k)'))
    result = proj.replay("train.py", check=False)
    assert result.returncode != 0
    assert "was started by the script that `hindlog replay` runs, and calls hindlog itself" in result.stderr, result.stderr


WRAPPED_LOOPS = """
    import time
    import numpy as np
    import hindlog as hl

    def progress(it):
        # What tqdm is to an hl.loop: a Python generator between the loop and the for statement.
        for item in it:
            yield item

    def train_epoch(w, rng):
        running, n = 0.0, 0
        for k, b in enumerate(progress(hl.loop("step", range(4)))):
            w += rng.normal(size=3) * 0.1
            time.sleep(0.005)
            running += float(w.sum()) + b
            n += 1
        return running / (k + 1)

    rng = np.random.default_rng(0)
    w = np.zeros(3)
    best = None
    hl.checkpoints(w=w, rng=rng)
    for epoch in progress(hl.loop("epoch", range(6))):
        train_loss = train_epoch(w, rng)
        best = train_loss if best is None else min(best, train_loss)
        hl.log("w", float(w.sum()))
"""


HANDED_TO_FUNCTIONS = """
    import time
    import numpy as np
    import hindlog as hl

    def train_epoch(w, rng, steps):
        running = 0.0
        for k in steps:  # the loop hl.loop made in the caller
            w += rng.normal(size=3) * 0.1
            time.sleep(0.005)
            running += float(w.sum())
        return running / (k + 1)

    def run_epochs(epochs, w, rng):
        best = None
        for epoch in epochs:
            train_loss = train_epoch(w, rng, hl.loop("step", range(4)))
            best = train_loss if best is None else min(best, train_loss)
            hl.log("w", float(w.sum()))

    rng = np.random.default_rng(0)
    w = np.zeros(3)
    hl.checkpoints(w=w, rng=rng)
    run_epochs(hl.loop("epoch", range(6)), w, rng)
"""


#: The wrapper a class whose ``__next__`` is Python code (a prefetcher, ``peekable``).
CLASS_WRAPPED_LOOPS = WRAPPED_LOOPS.replace("""    def progress(it):
        # What tqdm is to an hl.loop: a Python generator between the loop and the for statement.
        for item in it:
            yield item
""", """    class progress:
        # A prefetcher: an iterator class between the loop and the for statement.
        def __init__(self, it):
            self.it = iter(it)

        def __iter__(self):
            return self

        def __next__(self):
            return next(self.it)
""")
assert "__next__" in CLASS_WRAPPED_LOOPS


@pytest.mark.parametrize("script", [WRAPPED_LOOPS, CLASS_WRAPPED_LOOPS, HANDED_TO_FUNCTIONS],
                         ids=["wrapped", "class-wrapped", "handed-to-a-function"])
@pytest.mark.parametrize("args", [(), ("--workers", "2"), ("--iterations", "3:6")], ids=["one", "two-workers", "mid-run"])
def test_loops_handed_through_a_python_generator_replay_exactly(tmp_path: Path, args: tuple[str, ...], script: str) -> None:
    """``tqdm(hl.loop(...))`` or a prefetching generator: the loop's generator is advanced from the
    wrapper's frame, not from the frame of the ``for`` statement. What the skipped step loop
    leaves (``running``, ``k``) and what the main loop carries (``best``) must be taken from,
    and restored into, the script's frame: they were the wrapper's, and the replay stored a
    train loss of 0.0 (or failed on an unbound ``k``) and a wrong ``best``, reporting success. A
    loop handed to a function is iterated there: those are the locals (a wrapper's frame is a
    generator's; a function's is not)."""
    text = dedent(script)
    new = insert_after(text, 'hl.log("w", float(w.sum()))', 'hl.log("train_loss", train_loss)\nhl.log("best", best)')
    proj = ReplayProject(tmp_path)
    run = proj.record(text, env=DENSE)
    proj.write("train.py", new)
    out = proj.replay("train.py", *args).stdout
    assert summary(out)["skipped"] > 0, out
    truth = ground_truth(tmp_path, {"train.py": new}, ["train_loss", "best"])
    first = int(args[1].split(":")[0]) if args[:1] == ("--iterations",) else 0
    for name in ("train_loss", "best"):
        want = {k: v for k, v in truth[name].items() if k[0][1] >= first}
        assert_same_values(proj.values(name, run), want, name)


RESHUFFLED_STREAM = """
    import itertools
    import time
    import numpy as np
    import hindlog as hl

    def batches(data):
        while True:  # a new random order each pass, drawn when the pass begins
            for k in np.random.permutation(len(data)):
                yield data[k]

    np.random.seed(0)
    data = np.arange(5.0)
    w = np.zeros(1)
    hl.checkpoints(w=w)
    for step, x in hl.loop("step", enumerate(itertools.islice(batches(data), 12))):
        w += x * (1.0 + np.random.normal() * 0.01)  # training draws too (dropout)
        time.sleep(0.02)
        hl.log("w", float(w[0]))
"""


def test_a_main_loop_whose_every_item_is_drawn_at_random_starts_mid_run(tmp_path: Path) -> None:
    """Each item drawn as it is read (random indices into the data): the restored generators draw
    the first item of a segment as the record did, whatever the skipped items drew."""
    text = dedent(RESHUFFLED_STREAM).replace("        for k in np.random.permutation(len(data)):\n            yield data[k]",
                                             "        yield data[np.random.randint(len(data))]")
    assert "randint" in text
    new = insert_after(text, 'hl.log("w", float(w[0]))', 'hl.log("x", float(x))')
    proj = ReplayProject(tmp_path)
    run = proj.record(text, env=DENSE)
    proj.write("train.py", new)
    out = proj.replay("train.py", "--iterations", "8:12").stdout
    assert summary(out)["stored"] == 4, out
    truth = ground_truth(tmp_path, {"train.py": new}, ["x"])
    assert_same_values(proj.values("x", run), {k: v for k, v in truth["x"].items() if k[0][1] >= 8}, "x")


def test_a_main_loop_whose_items_are_drawn_between_iterations_refuses_to_start_mid_run(tmp_path: Path) -> None:
    """The main loop reads an endless reshuffled stream by steps: a pass begins mid-run, its order
    drawn from the generator that training draws from too. A segment reads the items before its
    start without training in between, draws the order from another state, and its items would
    not be the record's: it stops with the reason (a hands-free run, which logs no values to
    check, stored wrong values). Within the first pass the items are the record's."""
    text = dedent(RESHUFFLED_STREAM)
    new = insert_after(text, 'hl.log("w", float(w[0]))', 'hl.log("x", float(x))')
    proj = ReplayProject(tmp_path)
    run = proj.record(text, env=DENSE)
    checkpointed = {i for (i,) in proj.sql(
        "SELECT c.iteration FROM checkpoints c JOIN runs r ON r.id=c.run WHERE r.run_id=? AND c.block=-1", (run,))}
    assert checkpointed & {5, 6, 7}, checkpointed  # a segment from 8 restores one of them
    proj.write("train.py", new)
    late = proj.replay("train.py", "--iterations", "8:12", check=False)
    assert late.returncode != 0 and "drawn with random numbers" in late.stderr and "--workers 1" in late.stderr, late.stderr
    assert "Traceback" not in late.stderr, late.stderr
    assert proj.count("x", run) == 0
    early = proj.replay("train.py", "--iterations", "2:4")
    assert summary(early.stdout)["stored"] == 2
    whole = proj.replay("train.py", "--workers", "1")
    truth = ground_truth(tmp_path, {"train.py": new}, ["x"])
    assert_same_values(proj.values("x", run), truth["x"], "x")


DEQUE_BUFFER = """
    import time
    from collections import deque
    import numpy as np
    import hindlog as hl

    rng = np.random.default_rng(0)
    buffer = deque(maxlen=40)  # a replay buffer, declared
    hl.checkpoints(buffer=buffer, rng=rng)
    recent = deque(maxlen=3)  # not declared: a local the loops change
    total = 0.0
    for episode in hl.loop("episode", range(6)):
        for t in hl.loop("t", range(int(rng.integers(3, 9)))):
            buffer.append((episode, t, float(rng.normal())))
            recent.append(t)
            time.sleep(0.005)
        total += sum(r for _e, _t, r in buffer) + sum(recent)  # (recorded: checked against the replay)
        hl.log("total", total)
"""


def test_a_deque_the_loops_fill_is_restored_in_place(tmp_path: Path) -> None:
    """A replay buffer in a ``collections.deque``, declared or a local the loops change: restored,
    it was not put back into the deque the script holds (lists, dicts and sets were), and the
    replay stored lengths of 0, or failed on an empty deque."""
    text = dedent(DEQUE_BUFFER)
    new = insert_after(text, 'hl.log("total", total)', 'hl.log("buflen", len(buffer))')
    proj = ReplayProject(tmp_path)
    run = proj.record(text, env=DENSE)
    proj.write("train.py", new)
    out = proj.replay("train.py", "--workers", "2").stdout
    assert summary(out)["skipped"] > 0, out
    assert summary(out)["checked"] == 6, out
    truth = ground_truth(tmp_path, {"train.py": new}, ["buflen"])
    assert_same_values(proj.values("buflen", run), truth["buflen"], "buflen")


def test_a_global_a_function_the_loop_calls_rebinds_is_restored(tmp_path: Path) -> None:
    """``global step; step += 1`` in the step function: skipping the loop that calls it left
    ``step`` at 0 in every replayed value (the loop's body never assigns it)."""
    text = dedent("""
        import time
        import numpy as np
        import hindlog as hl

        w = np.zeros(2)
        hl.checkpoints(w=w)
        step = 0

        def train_step(k):
            global step
            step += 1
            w[k % 2] += 0.5

        for epoch in hl.loop("epoch", range(5)):
            for i in hl.loop("i", range(4)):
                train_step(i)
                time.sleep(0.005)
            hl.log("w", float(w.sum()))
    """)
    proj = ReplayProject(tmp_path)
    run = proj.record(text, env=DENSE)
    proj.write("train.py", insert_after(text, 'hl.log("w", float(w.sum()))', 'hl.log("step", step)'))
    out = proj.replay("train.py", "--workers", "2").stdout
    assert summary(out)["skipped"] > 0, out
    assert proj.values("step", run) == {(("epoch", e),): 4 * (e + 1) for e in range(5)}


def test_variables_of_a_training_function_that_closures_and_globals_change_are_restored(tmp_path: Path) -> None:
    """A loop in ``main()`` whose step closure rebinds ``nonlocal calls``, whose step function
    rebinds ``global step``, which rebinds ``global ema`` itself and appends to a module's list:
    a replay that skipped the loop left them as they were before it (checkpoints held only the
    function's own locals that the loop body assigns)."""
    text = dedent("""
        import time
        import numpy as np
        import hindlog as hl

        step = 0
        ema = 0.0
        history = []

        def count():
            global step
            step += 1

        def main():
            global ema
            w = np.zeros(2)
            hl.checkpoints(w=w)
            calls = 0

            def train_step(k):
                nonlocal calls
                calls += 1
                w[k % 2] += 0.5
                count()

            for epoch in hl.loop("epoch", range(5)):
                for i in hl.loop("i", range(4)):
                    train_step(i)
                    ema = 0.5 * ema + float(w.sum())
                    time.sleep(0.005)
                history.append(float(w[0]))
                hl.log("w", float(w.sum()))

        main()
    """)
    proj = ReplayProject(tmp_path)
    run = proj.record(text, env=DENSE)
    new = insert_after(text, 'hl.log("w", float(w.sum()))',
                       'hl.log("calls", calls)\nhl.log("step", step)\nhl.log("ema", ema)\nhl.log("hist", sum(history))')
    proj.write("train.py", new)
    out = proj.replay("train.py", "--workers", "2").stdout
    assert summary(out)["skipped"] > 0, out
    truth = ground_truth(tmp_path, {"train.py": new}, ["calls", "step", "ema", "hist"])
    for name in ("calls", "step", "ema", "hist"):
        assert_same_values(proj.values(name, run), truth[name], name)
    assert proj.values("calls", run) == {(("epoch", e),): 4 * (e + 1) for e in range(5)}


ENGINE = dedent("""
    import numpy as np
    import hindlog as hl

    global_step = 0
    history = []

    def train_step(model, k):
        global global_step
        model.w[k % 2] += 0.5
        global_step += 1
        history.append(float(model.w.sum()))
        model.steps_seen = getattr(model, "steps_seen", 0) + 1

    def train_one_epoch(model, meter):
        for i in hl.loop("step", range(4)):
            train_step(model, i)
            meter.n += 1
""")

UTILS = dedent("""
    class Meter:
        def __init__(self):
            self.n = 0
""")


def test_what_a_loop_in_an_imported_module_changes_is_restored(tmp_path: Path) -> None:
    """The step loop lives in ``mylib/engine.py``: it counts in a ``Meter`` of the project's
    own module, rebinds a ``global`` of its module, fills a list of it and sets a plain attribute
    on the declared model. A replay that skipped it left all four as they were before it: the
    meter and the model's attribute were not the script's own (``__main__``) objects, the
    module's variables not the frame's, and a state_dict holds no plain attribute."""
    torch = pytest.importorskip("torch")
    del torch
    text = dedent("""
        import time
        import torch
        import hindlog as hl
        from mylib import engine
        from mylib.utils import Meter

        model = torch.nn.Module()
        model.w = torch.nn.Parameter(torch.zeros(2), requires_grad=False)
        meter = Meter()
        hl.checkpoints(model=model)
        for epoch in hl.loop("epoch", range(5)):
            engine.train_one_epoch(model, meter)
            time.sleep(0.02)
            hl.log("w", float(model.w.sum()))
    """)
    proj = ReplayProject(tmp_path)
    proj.write("mylib/__init__.py", "")
    proj.write("mylib/engine.py", ENGINE)
    proj.write("mylib/utils.py", UTILS)
    run = proj.record(text, env=DENSE)
    names = ["meter", "gstep", "hist", "seen"]
    new = insert_after(text, 'hl.log("w", float(model.w.sum()))',
                       'hl.log("meter", meter.n)\nhl.log("gstep", engine.global_step)\n'
                       'hl.log("hist", sum(engine.history))\nhl.log("seen", model.steps_seen)')
    proj.write("train.py", new)
    out = proj.replay("train.py", "--workers", "2").stdout
    assert summary(out)["skipped"] > 0, out
    truth = ground_truth(tmp_path, {"train.py": new, "mylib/__init__.py": "", "mylib/engine.py": ENGINE,
                                    "mylib/utils.py": UTILS}, names)
    for name in names:
        assert_same_values(proj.values(name, run), truth[name], name)
    assert proj.values("seen", run) == {(("epoch", e),): 4 * (e + 1) for e in range(5)}


def test_what_a_models_state_dict_leaves_out_and_a_tensor_a_loop_fills_are_restored(tmp_path: Path) -> None:
    """A skipped validation loop leaves the model in eval mode and fills a confusion matrix
    in place; the step loop counts in a non-persistent buffer; the main loop freezes a
    parameter. Replays left the model training (a new statement's forward pass drew dropout),
    the matrix zeros, the buffer at 0, and, in a segment that starts after the freeze, the
    parameter trainable: none of them is in a state_dict, and a tensor changed in place was not
    checkpointed."""
    pytest.importorskip("torch")
    text = dedent("""
        import time
        import torch
        import torch.nn.functional as F
        import hindlog as hl

        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Dropout(0.5))
        model.register_buffer("seen", torch.zeros(1), persistent=False)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        hl.checkpoints(model=model, opt=opt)
        X, Y = torch.randn(32, 4), torch.randint(0, 3, (32,))
        for epoch in hl.loop("epoch", range(6)):
            model.train()
            if epoch == 2:
                model[0].bias.requires_grad_(False)
            for i in hl.loop("step", range(4)):
                loss = F.cross_entropy(model(X[i * 8:(i + 1) * 8]), Y[i * 8:(i + 1) * 8])
                opt.zero_grad()
                loss.backward()
                opt.step()
                model.seen += 8
            cm = torch.zeros(3, 3)
            for i in hl.loop("val", range(4)):
                model.eval()
                with torch.no_grad():
                    pred = model(X[i * 8:(i + 1) * 8]).argmax(1)
                cm.index_put_((Y[i * 8:(i + 1) * 8], pred), torch.ones(8), accumulate=True)
            time.sleep(0.02)
            hl.log("loss", loss.item())
    """)
    proj = ReplayProject(tmp_path)
    run = proj.record(text, env=DENSE)
    names = ["cm", "training", "trainable", "seen", "out"]
    new = insert_after(text, 'hl.log("loss", loss.item())',
                       'hl.log("cm", cm.tolist())\nhl.log("training", model.training)\n'
                       'hl.log("trainable", sum(p.requires_grad for p in model.parameters()))\n'
                       'hl.log("seen", model.seen.item())\nhl.log("out", model(X).sum().item())')
    proj.write("train.py", new)
    out = proj.replay("train.py", "--workers", "2").stdout
    assert summary(out)["skipped"] > 0 and len(segments(out)) == 2, out
    truth = ground_truth(tmp_path, {"train.py": new}, names)
    for name in names:
        assert_same_values(proj.values(name, run), truth[name], name)


def test_a_setting_of_torchs_own_layers_the_main_loop_changes_is_restored(tmp_path: Path) -> None:
    """Dropout turned off after warm-up (``model[1].p = 0.0``) and a batch norm's momentum
    lowered, at the main loop's level: a segment that starts after the change kept the values
    of the constructor: only the project's own classes' attributes were kept."""
    pytest.importorskip("torch")
    text = dedent("""
        import time
        import torch
        import torch.nn.functional as F
        import hindlog as hl

        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Dropout(0.5), torch.nn.BatchNorm1d(6), torch.nn.Linear(6, 3))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        hl.checkpoints(model=model, opt=opt)
        X, Y = torch.randn(32, 4), torch.randint(0, 3, (32,))
        for epoch in hl.loop("epoch", range(8)):
            if epoch == 1:
                model[1].p = 0.0
                model[2].momentum = 0.01
            for i in hl.loop("step", range(4)):
                loss = F.cross_entropy(model(X[i * 8:(i + 1) * 8]), Y[i * 8:(i + 1) * 8])
                opt.zero_grad()
                loss.backward()
                opt.step()
            time.sleep(0.02)
            hl.log("loss", loss.item())
    """)
    proj = ReplayProject(tmp_path)
    run = proj.record(text, env=DENSE)
    names = ["p", "momentum"]
    new = insert_after(text, 'hl.log("loss", loss.item())',
                       'hl.log("p", model[1].p)\nhl.log("momentum", model[2].momentum)')
    proj.write("train.py", new)
    out = proj.replay("train.py", "--workers", "2").stdout
    assert summary(out)["skipped"] > 0 and len(segments(out)) == 2, out
    truth = ground_truth(tmp_path, {"train.py": new}, names)
    for name in names:
        assert_same_values(proj.values(name, run), truth[name], name)


def test_a_script_that_never_calls_hl_checkpoints_is_checkpointed_and_replayed_in_segments(tmp_path: Path) -> None:
    """No ``hl.checkpoints`` at all: the run took no checkpoint and said nothing, and every
    replay was a full re-run. The model, optimizer and scheduler the main loop trains are
    checkpointed from its second iteration on, with a warning that names them. (A scheduler
    left out of ``hl.checkpoints`` was made anew by a segment that started mid-run, and a new
    statement reading the rate stored the first epochs' as a success.)"""
    pytest.importorskip("torch")
    text = dedent("""
        import time
        import torch
        import hindlog as hl

        torch.manual_seed(0)
        X, y = torch.randn(64, 4), torch.randn(64, 1)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 1))
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        for epoch in hl.loop("epoch", range(6)):
            for i in hl.loop("step", range(0, 64, 16)):
                loss = ((model(X[i:i + 16]) - y[i:i + 16]) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            sched.step()
            time.sleep(0.02)
            hl.log("loss", loss.item())
    """)
    proj = ReplayProject(tmp_path)
    proj.write("train.py", text)
    recorded = proj.python("train.py", env=DENSE)
    assert "checkpointing model, opt, sched as well: the main loop changes them" in recorded.stderr, recorded.stderr
    run = proj.run_ids()[-1]
    new = insert_after(text, 'hl.log("loss", loss.item())', 'hl.log("w", model[0].weight.sum().item())\n'
                       'hl.log("lr", sched.get_last_lr()[0])')
    proj.write("train.py", new)
    out = proj.replay("train.py", "--workers", "2").stdout
    assert summary(out)["skipped"] > 0 and len(segments(out)) == 2, out
    truth = ground_truth(tmp_path, {"train.py": new}, ["w", "lr"])
    for name in ("w", "lr"):
        assert_same_values(proj.values(name, run), truth[name], name)


def test_reinforce_with_the_update_after_its_rollout_loop_is_replayed(tmp_path: Path) -> None:
    """REINFORCE: the rollout loop collects log-probabilities, a loop computes the returns, and
    the main loop's own code calls ``backward()``. A replay skipped the rollout loop (its
    restored log-probabilities had no graph: "does not require grad"), or ran it and then
    skipped the returns loop, whose restore copied the unchanged policy into itself (a version
    bump: "modified by an inplace operation")."""
    pytest.importorskip("torch")
    text = dedent("""
        import time
        import torch
        from torch.distributions import Categorical
        import hindlog as hl

        torch.manual_seed(0)
        policy = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
        hl.checkpoints(policy=policy, opt=opt)
        obs = torch.ones(4)
        for episode in hl.loop("episode", range(6)):
            logps, rewards = [], []
            for t in hl.loop("step", range(8)):
                dist = Categorical(logits=policy(obs))
                a = dist.sample()
                logps.append(dist.log_prob(a))
                rewards.append(float(a))
            G, rets = 0.0, []
            for r in hl.loop("ret", reversed(rewards)):
                G = r + 0.99 * G
                rets.append(G)
            loss = -(torch.stack(logps) * torch.tensor(rets[::-1])).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            time.sleep(0.02)
            hl.log("loss", loss.item())
    """)
    proj = ReplayProject(tmp_path)
    run = proj.record(text, env=DENSE)
    new = insert_after(text, 'hl.log("loss", loss.item())', 'hl.log("ret0", rets[-1])')
    proj.write("train.py", new)
    out = proj.replay("train.py", "--workers", "1").stdout
    assert must_run(out) == {"step"}, out
    assert "loop step leaves tensors with their autograd graph" in out, out
    truth = ground_truth(tmp_path, {"train.py": new}, ["ret0"])
    assert_same_values(proj.values("ret0", run), truth["ret0"], "ret0")


def test_tensors_a_model_holds_as_plain_attributes_are_restored(tmp_path: Path) -> None:
    """Tensors that are neither parameters nor buffers: the attention weights a layer keeps in
    ``forward`` for inspection, a router bias it updates there, and the weight an old-style
    ``spectral_norm`` computes from ``weight_orig``. Replays stored the values of a forward pass
    before training (or of the model's construction) as a success wherever the loop was skipped.
    A trained ``log_alpha`` is restored in place (the optimizer holds it), and one set only after
    the first checkpoint (None before) is held too."""
    pytest.importorskip("torch")
    text = dedent("""
        import time
        import torch
        import hindlog as hl


        class Block(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.q = torch.nn.Linear(4, 4)
                self.out = torch.nn.utils.spectral_norm(torch.nn.Linear(4, 1))
                self.route_bias = torch.zeros(4)
                self.log_alpha = torch.zeros(1, requires_grad=True)
                self.calls = 0
                self.late = None

            def forward(self, x):
                att = torch.softmax(self.q(x) + self.route_bias, dim=-1)
                self.last_att = att.detach()
                self.calls += 1
                if self.calls > 10:
                    self.late = att.detach().sum(0)
                with torch.no_grad():
                    self.route_bias += 0.01 * (att.mean(0) - 0.25)
                return self.out(att * x) * self.log_alpha.exp()


        torch.manual_seed(0)
        model = Block()
        opt = torch.optim.SGD([*model.parameters(), model.log_alpha], lr=0.1)
        hl.checkpoints(model=model, opt=opt)
        X, y = torch.randn(32, 4), torch.randn(32, 1)
        model(X[:2])  # a shape check before training
        for epoch in hl.loop("epoch", range(6)):
            for i in hl.loop("step", range(0, 32, 8)):
                loss = ((model(X[i:i + 8]) - y[i:i + 8]) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            time.sleep(0.02)
            hl.log("loss", loss.item())
    """)
    proj = ReplayProject(tmp_path)
    run = proj.record(text, env=DENSE)
    names = ["att", "bias", "w", "alpha", "late"]
    new = insert_after(text, 'hl.log("loss", loss.item())',
                       'hl.log("att", model.last_att.sum(0).tolist())\nhl.log("bias", model.route_bias.tolist())\n'
                       'hl.log("w", model.out.weight.norm().item())\nhl.log("alpha", model.log_alpha.item())\n'
                       'hl.log("late", None if model.late is None else model.late.tolist())')
    proj.write("train.py", new)
    out = proj.replay("train.py", "--workers", "2").stdout
    assert summary(out)["skipped"] > 0 and len(segments(out)) == 2, out
    truth = ground_truth(tmp_path, {"train.py": new}, names)
    for name in names:
        assert_same_values(proj.values(name, run), truth[name], name)


def test_an_unseeded_script_replays_from_the_generators_its_record_started_with(tmp_path: Path) -> None:
    """No seed anywhere: PyTorch, NumPy and Python draw their seeds at each process's start, so
    a worker's model started from other weights (the replay diverged, blaming float noise) and
    its fixed noise drawn before the main loop was another (a new statement reading it stored
    wrong values as a success). Workers start from the generators the record started from."""
    pytest.importorskip("torch")
    text = dedent("""
        import random
        import time
        import numpy as np
        import torch
        import hindlog as hl

        model = torch.nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        hl.checkpoints(model=model, opt=opt)
        fixed_z = torch.randn(8, 4)
        offset = np.random.rand() + random.random()
        for epoch in hl.loop("epoch", range(6)):
            for i in hl.loop("step", range(4)):
                loss = (model(torch.randn(8, 4)) - offset).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            time.sleep(0.02)
            hl.log("loss", loss.item())
            hl.log("sample", model(fixed_z).sum().item())
    """)
    proj = ReplayProject(tmp_path)
    run = proj.record(text, env=DENSE)
    new = insert_after(text, 'hl.log("sample", model(fixed_z).sum().item())',
                       'hl.log("z", fixed_z.sum().item())\nhl.log("offset", offset)')
    proj.write("train.py", new)
    out = proj.replay("train.py", "--workers", "2")  # (recorded loss and sample checked)
    assert len(segments(out.stdout)) == 2, out.stdout
    proj.python("train.py", env=DENSE)  # a fresh run draws another fixed_z
    zs = proj.values("z", run)
    assert len(zs) == 6 and len(set(zs.values())) == 1
    fresh = proj.values("z", proj.run_ids()[-1])
    assert set(fresh.values()) != set(zs.values())
    assert len(set(proj.values("offset", run).values())) == 1


def test_a_new_forward_pass_in_train_mode_leaves_the_models_buffers_as_it_found_them(tmp_path: Path) -> None:
    """A new statement in the step loop runs the model in train mode: its batch norm updated
    its running statistics, the recorded validation loss (in eval mode) then differed, and the
    replay failed as diverged, suggesting --tolerance for float noise."""
    pytest.importorskip("torch")
    text = dedent("""
        import time
        import torch
        import hindlog as hl

        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        hl.checkpoints(model=model, opt=opt)
        X, y, Xv = torch.randn(32, 4), torch.randn(32, 1), torch.randn(16, 4) * 3
        for epoch in hl.loop("epoch", range(5)):
            model.train()
            for i in hl.loop("step", range(0, 32, 8)):
                loss = ((model(X[i:i + 8]) - y[i:i + 8]) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                hl.log("val", model(Xv).mean().item())
            time.sleep(0.02)
    """)
    proj = ReplayProject(tmp_path)
    run = proj.record(text, env=DENSE)
    new = insert_after(text, "opt.step()", 'hl.log("probe", model(Xv).std().item())')
    proj.write("train.py", new)
    out = proj.replay("train.py", "--workers", "1").stdout  # (the recorded val is checked)
    assert must_run(out) == {"step"}, out
    truth = ground_truth(tmp_path, {"train.py": new}, ["probe"])
    assert_same_values(proj.values("probe", run), truth["probe"], "probe")


def test_gradient_accumulation_flushed_at_each_loops_end_still_skips_loops(tmp_path: Path) -> None:
    """``if (k + 1) % accum == 0 or k + 1 == steps: opt.step(); opt.zero_grad()``: no gradient
    goes on into the next iteration, but the condition read as accumulation across iterations,
    and every replay ran the whole run. The record saw no gradient left at a loop's end."""
    pytest.importorskip("torch")
    text = dedent("""
        import time
        import torch
        import hindlog as hl

        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        hl.checkpoints(model=model, opt=opt)
        X, y = torch.randn(40, 4), torch.randn(40, 1)
        steps, accum = 5, 2
        for epoch in hl.loop("epoch", range(5)):
            for k in hl.loop("step", range(steps)):
                loss = ((model(X[8 * k:8 * k + 8]) - y[8 * k:8 * k + 8]) ** 2).mean() / accum
                loss.backward()
                if (k + 1) % accum == 0 or k + 1 == steps:
                    opt.step()
                    opt.zero_grad()
            time.sleep(0.02)
            hl.log("loss", loss.item())
    """)
    proj = ReplayProject(tmp_path)
    run = proj.record(text, env=DENSE)
    new = insert_after(text, 'hl.log("loss", loss.item())', 'hl.log("w", model.weight.sum().item())')
    proj.write("train.py", new)
    out = proj.replay("train.py", "--workers", "2").stdout
    assert "gradient accumulation" not in out and summary(out)["skipped"] > 0, out
    truth = ground_truth(tmp_path, {"train.py": new}, ["w"])
    assert_same_values(proj.values("w", run), truth["w"], "w")


def test_a_run_that_adds_an_optimizer_group_as_it_trains_is_replayed_from_before_the_change(tmp_path: Path) -> None:
    """Unfreezing a backbone with ``opt.add_param_group`` at epoch 3: a segment starting after
    it failed with torch's "different number of parameter groups" (its process had not added
    the group yet), and the record warned that the main loop changes ``back``, a submodule of
    the declared model."""
    pytest.importorskip("torch")
    text = dedent("""
        import time
        import torch
        import hindlog as hl

        torch.manual_seed(0)
        back, head = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)
        model = torch.nn.Sequential(back, head)
        back.requires_grad_(False)
        opt = torch.optim.Adam(head.parameters(), lr=0.01)
        hl.checkpoints(model=model, opt=opt)
        X, Y = torch.randn(64, 4), torch.randint(0, 2, (64,))
        for epoch in hl.loop("epoch", range(8)):
            if epoch == 3:
                back.requires_grad_(True)
                opt.add_param_group({"params": list(back.parameters()), "lr": 0.001})
            for i in hl.loop("step", range(8)):
                loss = torch.nn.functional.cross_entropy(model(X[i * 8:(i + 1) * 8]), Y[i * 8:(i + 1) * 8])
                opt.zero_grad()
                loss.backward()
                opt.step()
            time.sleep(0.02)
            hl.log("loss", loss.item())
    """)
    proj = ReplayProject(tmp_path)
    proj.write("train.py", text)
    recorded = proj.python("train.py", env=DENSE)
    assert "do not hold" not in recorded.stderr, recorded.stderr
    run = proj.run_ids()[-1]
    new = insert_after(text, 'hl.log("loss", loss.item())', 'hl.log("wn", float(back.weight.norm()))')
    proj.write("train.py", new)
    out = proj.replay("train.py", "--iterations", "6:8").stdout
    assert summary(out)["checked"] == 2, out
    truth = ground_truth(tmp_path, {"train.py": new}, ["wn"])
    got = proj.values("wn", run)
    assert got and all(got[k] == truth["wn"][k] for k in got), (got, truth["wn"])
    assert sorted(dict(k)["epoch"] for k in got) == [6, 7]


def test_a_models_parameter_updated_under_another_name_stays_the_models(tmp_path: Path) -> None:
    """``w = model.weight`` updated in place by hand: taken for a tensor the loop fills, it was
    checkpointed and restored as a copy, cut from the model (no ``.grad`` any more), and a
    replay that ran the loops failed, or trained the copy."""
    pytest.importorskip("torch")
    text = dedent("""
        import torch
        import hindlog as hl

        torch.manual_seed(0)
        model = torch.nn.Linear(10, 1)
        w, b = model.weight, model.bias
        hl.checkpoints(model=model)
        for epoch in hl.loop("epoch", range(5)):
            for step in hl.loop("step", range(20)):
                x = torch.randn(32, 10)
                loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
                model.zero_grad()
                loss.backward()
                with torch.no_grad():
                    w.sub_(0.01 * w.grad)
                    b.sub_(0.01 * b.grad)
            hl.log("loss", loss.item())
    """)
    proj = ReplayProject(tmp_path)
    run = proj.record(text, env=DENSE)
    new = insert_after(text, "loss.backward()", 'hl.log("gnorm", w.grad.norm().item())')
    proj.write("train.py", new)
    proj.replay("train.py", "--workers", "2")
    truth = ground_truth(tmp_path, {"train.py": new}, ["gnorm"])
    assert_same_values(proj.values("gnorm", run), truth["gnorm"], "gnorm")


def test_a_pandas_table_and_a_closures_cells_that_the_main_loop_changes_are_restored(tmp_path: Path) -> None:
    """A metrics DataFrame filled in place (``metrics.loc[len(metrics)] = row``) and a counter
    in a closure a factory made (``bump = make_counter()``): neither was checkpointed, and a
    segment that started mid-run counted from the start again."""
    text = dedent("""
        import time
        import numpy as np
        import pandas as pd
        import hindlog as hl

        def make_counter():
            count = 0
            totals = {"sum": 0.0}
            def bump(x):
                nonlocal count
                count += 1
                totals["sum"] += x
                return count
            return bump

        bump = make_counter()
        w = np.zeros(3)
        hl.checkpoints(w=w)
        metrics = pd.DataFrame(columns=["epoch", "wsum"])
        for epoch in hl.loop("epoch", range(6)):
            for i in hl.loop("step", range(3)):
                w += np.arange(3) * 0.5
                time.sleep(0.01)
            metrics.loc[len(metrics)] = [epoch, float(w.sum())]
            c = bump(float(w.sum()))
            hl.log("w", float(w.sum()))
    """)
    proj = ReplayProject(tmp_path)
    run = proj.record(text, env=DENSE)
    names = ["rows", "mean", "c", "total"]
    new = insert_after(text, 'hl.log("w", float(w.sum()))',
                       'hl.log("rows", len(metrics))\nhl.log("mean", float(metrics["wsum"].mean()))\nhl.log("c", c)\n'
                       'hl.log("total", bump.__closure__[1].cell_contents["sum"])')
    proj.write("train.py", new)
    out = proj.replay("train.py", "--workers", "2").stdout
    assert len(segments(out)) == 2, out
    truth = ground_truth(tmp_path, {"train.py": new}, names)
    for name in names:
        assert_same_values(proj.values(name, run), truth[name], name)


def test_a_new_statement_drawing_from_a_generator_a_declared_object_holds_leaves_the_run_as_it_was(tmp_path: Path) -> None:
    """``hl.log("peek", m.rng.random())``, where the declared model holds the generator its
    nested loop draws from: new code sets back the global and the declared generators, not
    this one, and the iterations that ran after it diverged."""
    text = dedent("""
        import numpy as np
        import hindlog as hl

        class Model:
            def __init__(self):
                self.rng = np.random.default_rng(1)
                self.w = np.zeros(3)

        m = Model()
        hl.checkpoints(m=m)
        for epoch in hl.loop("epoch", range(5)):
            for i in hl.loop("step", range(4)):
                m.w += m.rng.normal(size=3)
            hl.log("w", float(m.w.sum()))
    """)
    proj = ReplayProject(tmp_path)
    run = proj.record(text, env=DENSE)
    new = insert_after(text, "m.w += m.rng.normal(size=3)", 'hl.log("wi", float(m.w[0]))')
    new = insert_after(new, 'hl.log("w", float(m.w.sum()))', 'hl.log("peek", float(m.rng.random()))')
    proj.write("train.py", new)
    out = proj.replay("train.py", "--workers", "1")
    assert summary(out.stdout)["checked"] == 5, out.stdout
    assert len(proj.values("peek", run)) == 5 and len(proj.values("wi", run)) == 20


def test_counters_on_submodules_and_parameters_in_closures_are_restored_or_left_the_models(tmp_path: Path) -> None:
    """A ``Warmup`` layer of the script's own counting its calls (a plain attribute of a
    submodule); an EMA closure over pairs of the model's and the EMA model's parameters (which
    must stay theirs: restored as copies, the EMA stopped following the model); a sparse tensor
    the loop changes in place (looking at it crashed training)."""
    pytest.importorskip("torch")
    text = dedent("""
        import torch
        import hindlog as hl

        class Warmup(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.calls = 0
            def forward(self, x):
                self.calls += 1
                return x * min(1.0, self.calls / 10)

        def make_ema(pairs):
            def update():
                with torch.no_grad():
                    for e, p in pairs:
                        e.mul_(0.9).add_(0.1 * p)
            return update

        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 1), Warmup())
        ema = torch.nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        update = make_ema(list(zip(ema.parameters(), model[0].parameters())))
        hl.checkpoints(model=model, ema=ema, opt=opt)
        hits = torch.sparse_coo_tensor(torch.tensor([[0]]), torch.tensor([0.0]), (4,))
        for epoch in hl.loop("epoch", range(5)):
            for i in hl.loop("step", range(4)):
                x = torch.randn(8, 4)
                loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                update()
                hits.add_(torch.sparse_coo_tensor(torch.tensor([[i]]), torch.tensor([1.0]), (4,)))
            hl.log("loss", loss.item())
    """)
    proj = ReplayProject(tmp_path)
    run = proj.record(text, env=DENSE)
    names = ["calls", "ema"]
    new = insert_after(text, 'hl.log("loss", loss.item())',
                       'hl.log("calls", model[1].calls)\nhl.log("ema", float(ema.weight.sum()))')
    new = insert_after(new, "update()", 'hl.log("step_ema", float(ema.weight.sum()))', occurrence=2)  # the step loops run
    proj.write("train.py", new)
    proj.replay("train.py", "--workers", "2")
    truth = ground_truth(tmp_path, {"train.py": new}, names + ["step_ema"])
    for name in names + ["step_ema"]:
        assert_same_values(proj.values(name, run), truth[name], name)


def test_an_object_of_the_scripts_own_class_that_the_loop_calls_is_restored(tmp_path: Path) -> None:
    """``noise(3)`` calls an object whose ``__call__`` counts and draws from a generator it holds:
    the loop changes it without assigning or calling a method of it, and a replay that skipped
    the loop left it as it was before (``calls`` 0, the draws of the first epoch again)."""
    text = dedent("""
        import time
        import numpy as np
        import hindlog as hl

        class Noise:
            def __init__(self, seed):
                self.rng = np.random.default_rng(seed)
                self.calls = 0

            def __call__(self, n):
                self.calls += 1
                return self.rng.normal(size=n)

        noise = Noise(3)
        w = np.zeros(3)
        hl.checkpoints(w=w)
        for epoch in hl.loop("epoch", range(5)):
            for i in hl.loop("i", range(4)):
                w += noise(3) * 0.1
                time.sleep(0.005)
            hl.log("w", float(w.sum()))
    """)
    new = insert_after(text, 'hl.log("w", float(w.sum()))', 'hl.log("calls", noise.calls)')
    proj = ReplayProject(tmp_path)
    run = proj.record(text, env=DENSE)
    proj.write("train.py", new)
    out = proj.replay("train.py", "--workers", "2").stdout
    assert summary(out)["skipped"] > 0 and summary(out)["checked"] == 5, out
    assert proj.values("calls", run) == {(("epoch", e),): 4 * (e + 1) for e in range(5)}


def test_a_list_of_arrays_another_object_shares_is_restored_into_those_arrays(tmp_path: Path) -> None:
    """``params = [ema_a, ema_b]`` changed in place through the list: restoring the list put new
    arrays in it, and ``ema_a`` (what the script logs) kept its values from before the loop."""
    text = dedent("""
        import time
        import numpy as np
        import hindlog as hl

        w = np.zeros(3)
        hl.checkpoints(w=w)
        ema_a, ema_b = np.zeros(3), np.zeros(2)
        params = [ema_a, ema_b]
        for epoch in hl.loop("epoch", range(5)):
            for i in hl.loop("i", range(4)):
                w += 1.0
                for p in params:
                    p *= 0.5
                    p += 1.0
                time.sleep(0.005)
            hl.log("w", float(w.sum()))
    """)
    new = insert_after(text, 'hl.log("w", float(w.sum()))', 'hl.log("ema", float(ema_a.sum()))')
    proj = ReplayProject(tmp_path)
    run = proj.record(text, env=DENSE)
    proj.write("train.py", new)
    out = proj.replay("train.py", "--workers", "2").stdout
    assert summary(out)["skipped"] > 0, out
    truth = ground_truth(tmp_path, {"train.py": new}, ["ema"])
    assert_same_values(proj.values("ema", run), truth["ema"], "ema")


def test_a_run_that_failed_before_its_main_loop_is_not_replayed(tmp_path: Path) -> None:
    """A run that failed while loading its data: the replay said "the run has no main loop: the
    whole script runs once", ran it to the same failure's point, and stored nothing, as a success."""
    proj = ReplayProject(tmp_path)
    text = dedent(COUNTER).replace("hl.checkpoints(state=state)\n", "hl.checkpoints(state=state)\nassert os.path.exists('data.txt')\n")
    proj.write("train.py", text)
    failed = proj.python("train.py", env=DENSE, check=False)
    assert failed.returncode != 0
    proj.write("train.py", insert_after(text, 'hl.log("x", state["x"])', 'hl.log("double", 2 * state["x"])'))
    out = proj.replay("train.py", check=False)
    assert out.returncode != 0 and "failed before its main loop began: there is nothing to replay" in out.stderr, out.stderr


def test_all_leaves_out_the_runs_recorded_with_the_new_statements_already(counter) -> None:
    """A sweep's older runs, then one run of the code with the new statement: ``--all`` (or a
    ``--where`` that selects it) was refused, "no statements were added to the code of run"
    the newest. The older runs get the statement; the newest is left out, said in a note."""
    proj, first = counter
    new = insert_after(dedent(COUNTER), 'hl.log("x", state["x"])', 'hl.log("double", 2 * state["x"])')
    proj.write("train.py", new)
    newest = proj.record(env=DENSE)
    out = proj.replay("train.py", "--all", "--workers", "1")
    assert f"note: run {newest} was recorded with these statements already: left out" in out.stdout, out.stdout
    assert proj.values("double", first) == {k: 2 * v for k, v in expected_x().items()}
    assert proj.count("double", newest) == len(expected_x())  # as recorded, once each
