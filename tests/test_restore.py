"""``hl.restore``: load a recorded checkpoint into fresh objects and continue exactly.

Real recordings (subprocesses with the venv's Python, real SQLite, real object files);
the continuations run in a second process, and the values they compute for the later
epochs must be *identical* to the ones the original run logged (CPU, one thread).
Damaged checkpoints are made by flipping bytes in / deleting real object files.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import hindlog as hl
from hindlog.errors import CheckpointError

from ckpt_helpers import (
    RUNNING_MEAN_CLASS,
    ITERATION_END,
    TORCH_CONTINUE,
    TORCH_NAMES,
    CkProject,
    NumpyRecording,
    TorchReference,
    copy_store,
    dedent,
    flip_byte,
    last_json,
    make_numpy_recording,
    make_torch_reference,
    shared,
)


@pytest.fixture(scope="session")
def torch_ref(tmp_path_factory: pytest.TempPathFactory) -> TorchReference:
    return shared("torch_ref", make_torch_reference, tmp_path_factory)


@pytest.fixture(scope="session")
def numpy_rec(tmp_path_factory: pytest.TempPathFactory) -> NumpyRecording:
    return shared("numpy_rec", make_numpy_recording, tmp_path_factory)


def _pick_middle(iterations: list[int], epochs: int) -> int:
    """A checkpointed iteration with at least two epochs after it (the earliest from 2 on)."""
    usable = [i for i in iterations if i <= epochs - 3]
    assert usable, f"no checkpoint early enough to continue from: {iterations}"
    later = [i for i in usable if i >= 2]
    return later[0] if later else usable[-1]


# ----------------------------------------------------------------- torch


def test_torch_restore_epoch_k_into_fresh_objects_and_continue_identically(torch_ref: TorchReference) -> None:
    proj, run_id, epochs = torch_ref.proj, torch_ref.run_id, torch_ref.epochs
    iterations = proj.checkpointed_iterations(run_id)
    assert len(iterations) >= 2, f"a cheap tiny model got too few checkpoints: {iterations}"
    k = _pick_middle(iterations, epochs)
    proj.write("continue.py", TORCH_CONTINUE)
    out = last_json(proj.run("continue.py", run_id, str(k), str(epochs)).stdout)
    # The loop-carried `best` and the last batch's `loss` (read after the nested loop) are held.
    assert {"best", "loss"} <= set(out["locals"]), out["locals"]
    assert out["restored_loss"] == torch_ref.values[(k, "loss")][0]
    continued = out["values"]
    assert sorted(int(e) for e in continued) == list(range(k + 1, epochs))
    for epoch in range(k + 1, epochs):
        for name in TORCH_NAMES:
            recorded = torch_ref.values[(epoch, name)]
            assert recorded == [continued[str(epoch)][name]], f"epoch {epoch} {name}: recorded {recorded}, continued {continued[str(epoch)][name]}"
    # The control: the objects restored but not the global generators reproduce neither the
    # shuffling and dropout nor the draws (so the comparison above exercises the RNG state);
    # the declared generator and the scheduler come back either way.
    control = out["control"][str(k + 1)]
    assert control["lr"] == torch_ref.values[(k + 1, "lr")][0]
    assert control["gnoise"] == torch_ref.values[(k + 1, "gnoise")][0]
    assert control["noise"] != torch_ref.values[(k + 1, "noise")][0]
    assert control["wsum"] != torch_ref.values[(k + 1, "wsum")][0]


# ----------------------------------------------------------------- scikit-learn / NumPy

SKLEARN_SETUP = """
import json, sys, time
import numpy as np
from sklearn.linear_model import SGDClassifier
import hindlog as hl

np.random.seed(0)
rs = np.random.RandomState(1)
X = rs.randn(240, 6)
y = (X @ rs.randn(6) + 0.3 * rs.randn(240) > 0).astype(int)
# random_state=None: SGD's own shuffling inside partial_fit draws from NumPy's global generator.
clf = SGDClassifier(loss="log_loss", learning_rate="constant", eta0=0.05)
seen = np.zeros(2)

def epoch_values(epoch):
    return {"acc": float(clf.score(X, y)), "coef": clf.coef_.ravel().tolist(),
            "intercept": float(clf.intercept_[0]), "seen": float(seen[1]), "noise": float(np.random.rand())}
"""

SKLEARN_TRAIN = SKLEARN_SETUP + """
hl.checkpoints(clf=clf, seen=seen)
for epoch in hl.loop("epoch", range(6)):
    perm = np.random.permutation(len(X))
    for b in hl.loop("batch", range(0, len(X), 60)):
        idx = perm[b:b + 60]
        clf.partial_fit(X[idx], y[idx], classes=np.array([0, 1]))
        seen += np.bincount(y[idx], minlength=2)
    for name, value in epoch_values(epoch).items():
        hl.log(name, value)
    time.sleep(0.1)
print(json.dumps({"run": hl.run_id()}))
"""

SKLEARN_CONTINUE = SKLEARN_SETUP + """
run, k = sys.argv[1], int(sys.argv[2])
r = hl.restore(run, iteration=k, rng=True, clf=clf, seen=seen)
assert r.objects["clf"] is clf, "the estimator was not restored in place"
assert r.objects["seen"] is seen, "the array was not restored in place"
assert hasattr(clf, "coef_")
values = {}
for epoch in range(k + 1, 6):
    perm = np.random.permutation(len(X))
    for b in range(0, len(X), 60):
        idx = perm[b:b + 60]
        clf.partial_fit(X[idx], y[idx], classes=np.array([0, 1]))
        seen += np.bincount(y[idx], minlength=2)
    values[epoch] = epoch_values(epoch)
print(json.dumps({"values": values}))
"""


def test_sklearn_partial_fit_restore_in_place_and_continue_identically(tmp_path: Path) -> None:
    proj = CkProject(tmp_path)
    proj.write("train.py", dedent(SKLEARN_TRAIN))
    # Six 0.1 s epochs: the default ε, less hindlog's start-up, may leave the first half of the
    # run without checkpoints on a loaded machine; the test needs one early enough to go on from.
    run_id = last_json(proj.run("train.py", env={"HINDLOG_EPSILON": "0.5"}).stdout)["run"]
    recorded = proj.by_iteration(run_id)
    iterations = proj.checkpointed_iterations(run_id)
    assert len(iterations) >= 2, iterations
    k = _pick_middle(iterations, 6)
    proj.write("continue.py", dedent(SKLEARN_CONTINUE))
    continued = last_json(proj.run("continue.py", run_id, str(k)).stdout)["values"]
    assert sorted(int(e) for e in continued) == list(range(k + 1, 6))
    for epoch in range(k + 1, 6):
        for name in ("acc", "coef", "intercept", "seen", "noise"):
            assert recorded[(epoch, name)] == [continued[str(epoch)][name]], f"epoch {epoch} {name}"


# ----------------------------------------------------------------- restoring in place (this process)


def _fresh_numpy_objects() -> dict[str, object]:
    return {"w": np.full(4, 7.0), "big": np.zeros(20000), "history": ["stale"], "stats": {"seen": -1, "extra": 1}}


def test_restore_numpy_list_and_dict_in_place(numpy_rec: NumpyRecording) -> None:
    proj, run_id = numpy_rec.proj, numpy_rec.run_id
    iterations = proj.checkpointed_iterations(run_id)
    assert iterations, "no checkpoints"
    k = iterations[len(iterations) // 2]
    objs = _fresh_numpy_objects()
    ids = {name: id(obj) for name, obj in objs.items()}
    r = hl.restore(run_id, iteration=k, store=proj.store(), **objs)
    assert r.run_id == run_id and r.iteration == k
    for name, obj in objs.items():
        assert r.objects[name] is obj and id(obj) == ids[name], f"{name} was not restored in place"
    assert objs["w"].tolist() == numpy_rec.values[(k, "w")][0]
    assert objs["big"].tolist() == [float(sum(range(1, k + 2)))] * 20000
    assert objs["history"] == [numpy_rec.values[(e, "mse")][0] for e in range(k + 1)]
    assert objs["stats"] == {"seen": 64 * (k + 1)}


def test_restore_latest_by_default_and_rng_only_on_request(numpy_rec: NumpyRecording) -> None:
    proj, run_id = numpy_rec.proj, numpy_rec.run_id
    latest = proj.checkpointed_iterations(run_id)[-1]
    state = np.random.get_state()
    try:
        np.random.seed(99)
        before = np.random.get_state()[1].copy()
        objs = _fresh_numpy_objects()
        r = hl.restore(run_id, store=proj.store(), **objs)
        assert r.iteration == latest
        assert objs["w"].tolist() == numpy_rec.values[(latest, "w")][0]
        assert np.array_equal(np.random.get_state()[1], before), "rng=False must leave the generators alone"
        # "latest" names the latest run; rng=True restores NumPy's global generator: the
        # next draw is the `noise` the run logged in the epoch after the checkpoint, if any.
        hl.restore("latest", iteration=latest, store=proj.store(), rng=True, **_fresh_numpy_objects())
        assert not np.array_equal(np.random.get_state()[1], before)
    finally:
        np.random.set_state(state)


def test_restore_rng_reproduces_the_next_epochs_draws(numpy_rec: NumpyRecording) -> None:
    proj, run_id = numpy_rec.proj, numpy_rec.run_id
    iterations = [i for i in proj.checkpointed_iterations(run_id) if i < numpy_rec.epochs - 1]
    assert iterations
    k = iterations[0]
    state = np.random.get_state()
    try:
        hl.restore(run_id, iteration=k, store=proj.store(), rng=True, **_fresh_numpy_objects())
        np.random.permutation(64)  # epoch k+1's shuffle
        assert float(np.random.rand()) == numpy_rec.values[(k + 1, "noise")][0]
    finally:
        np.random.set_state(state)


def test_restore_bad_requests(numpy_rec: NumpyRecording) -> None:
    proj, run_id = numpy_rec.proj, numpy_rec.run_id
    iterations = proj.checkpointed_iterations(run_id)
    missing = next(i for i in range(100) if i not in iterations)
    with pytest.raises(CheckpointError, match=rf"{run_id}.*no checkpoint at iteration {missing}"):
        hl.restore(run_id, iteration=missing, store=proj.store(), **_fresh_numpy_objects())
    with pytest.raises(TypeError, match="objects to load into"):
        hl.restore(run_id, store=proj.store())
    with pytest.raises(CheckpointError, match="holds no state for optimizer"):
        hl.restore(run_id, store=proj.store(), w=np.zeros(4), optimizer={})
    with pytest.raises(hl.RunNotFound):
        hl.restore("no-such-run", store=proj.store(), w=np.zeros(4))


def test_restore_refuses_objects_unlike_the_checkpointed_ones_and_changes_none(numpy_rec: NumpyRecording, tmp_path: Path) -> None:
    proj, run_id = numpy_rec.proj, numpy_rec.run_id
    k = proj.checkpointed_iterations(run_id)[-1]
    for bad, says in [
        ({"w": np.zeros((2, 4))}, r"cannot restore w .*shape \(4,\) of float64, the object passed is \(2, 4\) of float64"),
        ({"w": np.zeros(4, dtype=np.int64)}, r"cannot restore w .*\(4,\) of int64"),
        ({"stats": [1, 2]}, r"cannot restore stats .*holds a dict, not a list"),
    ]:
        objs = {**_fresh_numpy_objects(), **bad}
        with pytest.raises(CheckpointError, match=says + r".*nothing was restored"):
            hl.restore(run_id, iteration=k, store=proj.store(), **objs)
        # Checked before any object is loaded: the valid ones are as they were too.
        assert objs["big"].tolist() == [0.0] * 20000 and objs["history"] == ["stale"]
    # An iteration given as text is the number; a store that is not there is not created.
    assert hl.restore(run_id, iteration=str(k), store=proj.store(), w=np.zeros(4)).iteration == k
    with pytest.raises(CheckpointError, match="there is no hindlog store at"):
        hl.restore(run_id, store=tmp_path / "typo", w=np.zeros(4))
    assert not (tmp_path / "typo").exists()


def test_restore_refuses_a_model_or_optimizer_unlike_the_checkpointed_one(torch_ref: TorchReference) -> None:
    import torch

    proj, run_id = torch_ref.proj, torch_ref.run_id

    def model(width: int = 16) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(8, width), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(width, 2))

    with pytest.raises(CheckpointError, match=r"cannot restore model .*0.weight has shape \(16, 8\) in the checkpoint, \(32, 8\)"):
        hl.restore(run_id, store=proj.store(), model=model(32))
    m = model()
    before = [p.detach().clone() for p in m.parameters()]
    with pytest.raises(CheckpointError, match="cannot restore opt .*another kind of optimizer"):
        hl.restore(run_id, store=proj.store(), model=m, opt=torch.optim.Adam(m.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters())), "the model was changed by a refused restore"
    with pytest.raises(CheckpointError, match="cannot restore model .*something other than an optimizer"):
        hl.restore(run_id, store=proj.store(), model=torch.optim.SGD(m.parameters(), lr=0.1))
    with pytest.raises(CheckpointError, match="cannot restore model .*holds a .*dict, not a list"):
        hl.restore(run_id, store=proj.store(), model=[1, 2])
    # The optimizer of the recorded class, made without the scheduler that added options: fine.
    hl.restore(run_id, store=proj.store(), model=m, opt=torch.optim.SGD(m.parameters(), lr=0.2, momentum=0.9))


def test_restore_of_a_run_without_checkpoints_says_so(tmp_path: Path) -> None:
    proj = CkProject(tmp_path)
    proj.write("plain.py", """
        import json
        import hindlog as hl
        for i in hl.loop("epoch", range(3)):
            hl.log("x", i)
        print(json.dumps({"run": hl.run_id()}))
    """)
    run_id = last_json(proj.run("plain.py").stdout)["run"]
    with pytest.raises(CheckpointError, match=rf"{run_id} has no checkpoints"):
        hl.restore(run_id, store=proj.store(), w=np.zeros(4))


# ----------------------------------------------------------------- damaged checkpoints


def _latest_two(proj: CkProject, run_id: str) -> tuple[int, int]:
    iterations = proj.checkpointed_iterations(run_id)
    assert len(iterations) >= 2, f"need two checkpoints, got {iterations}"
    return iterations[-1], iterations[-2]


def _end_manifest(proj: CkProject, run_id: str, iteration: int) -> str:
    for it, block, _loop, manifest, _n in proj.checkpoints(run_id):
        if it == iteration and block == ITERATION_END:
            return manifest
    raise AssertionError(f"no iteration-end checkpoint at {iteration}")


def _damage(proj: CkProject, run_id: str, iteration: int, how: str) -> None:
    objects = proj.store().objects
    name = _end_manifest(proj, run_id, iteration)
    manifest = json.loads(objects.get(name))
    if how == "flip-manifest":
        flip_byte(objects.path(name))
    elif how == "flip-skeleton":
        flip_byte(objects.path(manifest["skeleton"]))
    elif how == "delete-skeleton":
        objects.path(manifest["skeleton"]).unlink()
    elif how in ("flip-tensor", "delete-tensor"):
        stored = [e[0] for e in manifest["tensors"] if not e[0].startswith("@")]
        assert stored, f"the checkpoint has no tensor stored as an object of its own: {manifest['tensors']}"
        big = [e[0] for e in manifest["tensors"] if e[3] == [20000]]
        target = objects.path(big[0] if big else stored[0])
        if how == "flip-tensor":
            flip_byte(target, offset=12345)
        else:
            target.unlink()
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["flip-manifest", "flip-skeleton", "delete-skeleton", "flip-tensor", "delete-tensor"])
def test_damaged_latest_checkpoint(numpy_rec: NumpyRecording, tmp_path: Path, how: str) -> None:
    proj = copy_store(numpy_rec.proj, tmp_path)
    run_id = numpy_rec.run_id
    latest, previous = _latest_two(proj, run_id)
    _damage(proj, run_id, latest, how)

    # An explicit iteration: a clear error naming the run and the checkpoint.
    with pytest.raises(CheckpointError) as info:
        hl.restore(run_id, iteration=latest, store=proj.store(), **_fresh_numpy_objects())
    message = str(info.value)
    assert run_id in message and f"iteration {latest}" in message, message
    assert "missing" in message or "corrupt" in message, message

    # No iteration: a warning, and the latest intact checkpoint instead.
    objs = _fresh_numpy_objects()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = hl.restore(run_id, store=proj.store(), **objs)
    assert r.iteration == previous
    assert objs["w"].tolist() == numpy_rec.values[(previous, "w")][0]
    assert any(f"the checkpoint of iteration {latest} is damaged" in str(w.message) and "falling back" in str(w.message)
               for w in caught), [str(w.message) for w in caught]

    # The earlier checkpoints are untouched and still restore on request.
    r = hl.restore(run_id, iteration=previous, store=proj.store(), **_fresh_numpy_objects())
    assert r.iteration == previous


def test_every_checkpoint_damaged_is_an_error(numpy_rec: NumpyRecording, tmp_path: Path) -> None:
    proj = copy_store(numpy_rec.proj, tmp_path)
    run_id = numpy_rec.run_id
    for iteration in proj.checkpointed_iterations(run_id):
        _damage(proj, run_id, iteration, "delete-skeleton")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError, match=rf"none of the checkpoints of run {run_id}"):
            hl.restore(run_id, store=proj.store(), **_fresh_numpy_objects())


# ----------------------------------------------------------------- writes the version counter misses

BYPASSING_WRITES = """
import time
import torch, torch.nn as nn
import hindlog as hl

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 2))
opt = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
ema = torch.zeros(32, 8)
X = torch.randn(256, 8)
Y = (X[:, 0] > 0).long()
hl.checkpoints(model=model, opt=opt, ema=ema)
for epoch in hl.loop("epoch", range(6)):
    for b in hl.loop("step", range(0, 256, 64)):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(X[b:b + 64]), Y[b:b + 64])
        loss.backward()
        opt.step()
    ema.data.mul_(0.5).add_(model[0].weight.data, alpha=0.5)
    hl.log("w", model[0].weight)
    hl.log("bn_mean", model[1].running_mean)
    hl.log("exp_avg", opt.state[model[0].weight]["exp_avg"])
    hl.log("ema", ema)
    time.sleep(0.15)
"""


LARGE_STATE_WRITES = """
import time
import torch
import hindlog as hl

w = torch.zeros(4096, 4096)      # 64 MiB: named by hash at the iteration's end when unchanged
hl.checkpoints(w=w)
for epoch in hl.loop("epoch", range(6)):
    time.sleep(0.1)
    for step in hl.loop("step", range(2)):
        w.add_(epoch + 1)
    if epoch % 2:
        w.data.mul_(0.5)         # after the loop, unseen by the version counter
    hl.log("w", w[::512, ::512].clone())
"""


def _record_dense(tmp_path: Path, script: str) -> tuple[CkProject, str, list[Any], dict[int, str]]:
    """Record ``script`` with a generous ε; its project, run, checkpoint rows, and the manifest
    of each iteration's end."""
    proj = CkProject(tmp_path)
    proj.write("train.py", script)
    proj.run("train.py", env={"HINDLOG_EPSILON": "0.9"})
    run_id = proj.run_ids()[-1]
    rows = proj.checkpoints(run_id)
    ends = {it: manifest for it, block, _loop, manifest, _n in rows if block == ITERATION_END}
    return proj, run_id, rows, ends


def test_state_unchanged_after_a_nested_loop_is_checkpointed_by_name_and_checked(tmp_path: Path) -> None:
    # A checkpointed iteration freezes its state at the nested loop's exit and again at its end.
    # A large tensor unchanged in between is named by the hash of its bytes the second time;
    # where a write the version counter does not see changed it, the iteration's end checkpoint
    # is dropped (its bytes were never taken), and every checkpoint kept restores what was logged.
    torch = pytest.importorskip("torch")
    proj, run_id, rows, ends = _record_dense(tmp_path, LARGE_STATE_WRITES)
    logged = {(it, name): value for it, name, value in proj.records(run_id)}
    exits = {it: manifest for it, block, _loop, manifest, _n in rows if block != ITERATION_END}
    even = [it for it in ends if it % 2 == 0 and it in exits]
    assert even, f"no iteration-end checkpoint of an unchanged iteration: {rows}"
    for it in even:  # the end names the objects the loop's exit wrote (by name, or by hash once written)
        assert proj.manifest(ends[it])["tensors"] == proj.manifest(exits[it])["tensors"]
    # An end whose state changed after the loop is dropped when it was named before the loop's
    # copy was written, or copied when that copy was already written (the persister is faster).
    dropped = proj.run_info(run_id)["info"]["checkpoints_dropped_unverified"]
    assert dropped == len([it for it in exits if it % 2 and it not in ends]), rows
    for it in ends:
        w = torch.zeros(4096, 4096)
        hl.restore(run_id, iteration=it, store=proj.store(), w=w)
        assert torch.equal(w[::512, ::512], torch.as_tensor(logged[(it, "w")])), f"iteration {it}"
    # The last iteration is never named by hash: the run's final state does not hang on a check.
    assert 5 in ends, rows


LOGGING_TAIL = """
import time
import torch
import hindlog as hl


class Sneaky:
    \"\"\"Looks like a loss; its item() writes the weights where the version counter does not see it.\"\"\"

    def __init__(self, w):
        self.w = w

    def item(self):
        self.w.data.mul_(0.5)
        return 0.0


w = torch.zeros(1024, 1024)      # 4 MiB: large enough to be named by hash
hl.checkpoints(w=w)
for epoch in hl.loop("epoch", range(6)):
    time.sleep(0.1)
    for step in hl.loop("step", range(2)):
        w.add_(epoch + 1)
        loss = w.sum() if epoch % 2 == 0 else Sneaky(w)
    hl.log("loss", loss.item())  # only logs: the iteration's end takes the loop exit's copies
    hl.log("w", w[::128, ::128].clone())
"""


def test_an_iteration_end_after_code_that_only_logs_takes_the_loop_exits_copies(tmp_path: Path) -> None:
    # Between the nested loop and the iteration's end the script only logs, so the end's
    # snapshot takes the copies made at the loop's exit: nothing copied or hashed twice. The
    # check is made on the values: where `loss` is not a tensor its item() may do anything, and
    # here it halves the weights through .data; those ends are checked by hash as before.
    torch = pytest.importorskip("torch")
    proj, run_id, rows, ends = _record_dense(tmp_path, LOGGING_TAIL)
    info = proj.run_info(run_id)["info"]
    exits = {it for it, block, _loop, _m, _n in rows if block != ITERATION_END}
    even = [it for it in exits if it % 2 == 0]
    assert even and all(it in ends for it in even), rows
    assert info["checkpoints_reusing_loop_exit"] == len(even), (info, rows)
    logged = {(it, name): value for it, name, value in proj.records(run_id)}
    for it in ends:
        w = torch.zeros(1024, 1024)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            restored = hl.restore(run_id, iteration=it, store=proj.store(), w=w)
        assert torch.equal(w[::128, ::128], torch.as_tensor(logged[(it, "w")])), f"iteration {it}"
        # A Sneaky `loss` (its class is the script's) cannot be loaded here: it is named, and the
        # weights asked for are restored all the same.
        sneaky = it % 2 == 1
        assert ("loss" in restored.locals_not_loaded) == sneaky and ("loss" in restored.locals) != sneaky, restored
        assert any("'loss'" in str(c.message) or " loss " in str(c.message) for c in caught) == sneaky, [str(c.message) for c in caught]
    for it in [it for it in exits if it % 2]:  # halved after the loop: never the loop exit's bytes
        if it in ends:
            assert proj.manifest(ends[it])["tensors"] != proj.manifest(
                next(m for i, b, _l, m, _n in rows if i == it and b != ITERATION_END))["tensors"]


@pytest.mark.parametrize("tail, reused", [
    ('history[epoch] = round(loss.item(), 3)\n    hl.log("loss", history[epoch])', True),
    ('with torch.no_grad():\n        norm = w.norm().item()\n    hl.log("norm", f"{norm:.2f}")', True),
    ("sched.step()", False),               # any other call may write state
    ("bump(w)", False),
    ("w.data.mul_(1.0)", False),
    ("for p in [w]:\n        hl.log('p', p.sum().item())", False),
])
def test_what_code_after_the_nested_loop_lets_the_iteration_end_reuse_the_loop_exits_copies(
        tmp_path: Path, tail: str, reused: bool) -> None:
    pytest.importorskip("torch")
    script = f"""
import time
import torch
import hindlog as hl

def bump(t):
    t.data.add_(1.0)

w = torch.zeros(1024, 1024)
opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
sched = torch.optim.lr_scheduler.StepLR(opt, 1)
history = {{}}
hl.checkpoints(w=w, sched=sched)
for epoch in hl.loop("epoch", range(3)):
    time.sleep(0.1)
    for step in hl.loop("step", range(2)):
        w.add_(1.0)
        loss = w.mean()
    {tail}
"""
    _proj, _run_id, rows, ends = _record_dense(tmp_path, script)
    assert ends, rows
    count = _proj.run_info(_run_id)["info"]["checkpoints_reusing_loop_exit"]
    assert (count == len(ends)) if reused else (count == 0), (count, rows)


TIED_WEIGHTS = """
import time
import torch, torch.nn as nn
import hindlog as hl

torch.manual_seed(0)
emb = nn.Embedding(4096, 128)            # 2 MiB, tied to the output layer
head = nn.Linear(128, 4096, bias=False)
head.weight = emb.weight
model = nn.ModuleDict({"emb": emb, "head": head})
opt = torch.optim.SGD(model.parameters(), lr=0.5)
hl.checkpoints(model=model, opt=opt)
for epoch in hl.loop("epoch", range(5)):
    for step in hl.loop("step", range(3)):
        x = torch.randint(0, 4096, (16,))
        loss = head(emb(x)).logsumexp(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    hl.log("w", emb.weight[::256, ::16].detach().clone())
    time.sleep(0.3)
"""


def test_tied_weights_are_copied_once_and_every_checkpoint_is_kept(tmp_path: Path) -> None:
    # The same large parameter twice in one state dict (tied weights): the checkpoint holds one
    # copy of it, named twice. It once looked like a tensor to name by the hash of a copy not yet
    # written, and every checkpoint but the last was dropped.
    torch = pytest.importorskip("torch")
    import torch.nn as nn

    proj, run_id, rows, ends = _record_dense(tmp_path, TIED_WEIGHTS)
    assert proj.run_info(run_id)["info"]["checkpoints_dropped_unverified"] == 0
    # A persist still running skips an iteration (a loaded machine); none may be dropped, and
    # before the fix only the last iteration was kept.
    assert len(ends) >= 3 and 4 in ends, rows
    for it, manifest in ends.items():
        names = [entry[0] for entry in proj.manifest(manifest)["tensors"] if list(entry[3]) == [4096, 128]]
        assert len(names) == 2 and names[0] == names[1], names
    logged = {(it, name): value for it, name, value in proj.records(run_id)}
    for it in ends:
        emb = nn.Embedding(4096, 128)
        head = nn.Linear(128, 4096, bias=False)
        head.weight = emb.weight
        model = nn.ModuleDict({"emb": emb, "head": head})
        hl.restore(run_id, iteration=it, store=proj.store(), model=model)
        assert head.weight is emb.weight
        assert torch.equal(emb.weight[::256, ::16].detach(), torch.as_tensor(logged[(it, "w")])), f"iteration {it}"


def test_checkpoints_hold_writes_that_bypass_the_version_counter(tmp_path: Path) -> None:
    # A fused optimizer, BatchNorm's running statistics and a write through `.data` change
    # tensors without moving their version counters: each checkpoint must still hold the
    # values of its own iteration, as the script logged them at the iteration's end.
    import torch
    import torch.nn as nn

    proj = CkProject(tmp_path)
    proj.write("train.py", BYPASSING_WRITES)
    proj.run("train.py", env={"HINDLOG_EPSILON": "0.9"})
    run_id = proj.run_ids()[-1]
    logged: dict[tuple[int, str], np.ndarray] = {(it, name): value for it, name, value in proj.records(run_id)}
    iterations = proj.checkpointed_iterations(run_id)
    assert len(iterations) >= 3, iterations
    for it in iterations:
        model = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 2))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
        ema = torch.zeros(32, 8)
        hl.restore(run_id, iteration=it, store=proj.store(), model=model, opt=opt, ema=ema)
        restored = {"w": model[0].weight, "bn_mean": model[1].running_mean,
                    "exp_avg": opt.state[model[0].weight]["exp_avg"], "ema": ema}
        for name, tensor in restored.items():
            np.testing.assert_array_equal(tensor.detach().numpy(), logged[(it, name)], err_msg=f"iteration {it}: {name}")


UNDECLARED = """
import json
import numpy as np
import torch
import hindlog as hl

torch.manual_seed(0)
rng = np.random.default_rng(0)
model = torch.nn.Linear(3, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
w = np.zeros(3)
hl.checkpoints(opt=opt, w=w)
for epoch in hl.loop("epoch", range(3)):
    x = torch.tensor(rng.normal(size=(4, 3)), dtype=torch.float32)
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    opt.step()
    w += 1
print(json.dumps({"run": hl.run_id()}))
"""


def test_state_the_main_loop_uses_but_hl_checkpoints_leaves_out_is_checkpointed_and_named_in_a_warning(tmp_path: Path) -> None:
    """The model trained by the declared optimizer (the loop only calls it) and a random
    generator of the script's own (the loop draws from it): replay and resume could not
    restore them. They are checkpointed from the second iteration on, and the user is told
    which to add."""
    torch = pytest.importorskip("torch")
    proj = CkProject(tmp_path)
    proj.write("train.py", UNDECLARED)
    stderr = proj.run("train.py", env={"HINDLOG_EPSILON": "0.9"}).stderr
    assert "checkpointing model, rng as well: the main loop changes them and hl.checkpoints does not name them" in stderr, stderr
    assert "hl.checkpoints(model=model, ...)" in stderr
    assert "train.py:" in stderr and "checkpoint.py" not in stderr, stderr  # shown at the user's loop
    # `hindlog show` says it too, with what the checkpoints hold: the terminal may be gone.
    shown = proj.cli("show").stdout
    assert "state        model, opt, rng, w and the random generators" in shown, shown
    assert "warned       checkpointing model, rng as well" in shown, shown
    run_id = proj.run_ids()[-1]
    assert 0 not in proj.checkpointed_iterations(run_id)  # taken before the first iteration showed them
    model = torch.nn.Linear(3, 1)
    rng = np.random.default_rng(123)
    hl.restore(run_id, iteration=2, store=proj.store(), model=model, rng=rng)  # held since the second iteration
    # All declared; a loop variable that is one of the model's parameters (an EMA update) is
    # checkpointed with the model.
    declared = UNDECLARED.replace("hl.checkpoints(opt=opt, w=w)", "hl.checkpoints(opt=opt, w=w, model=model, rng=rng)")
    declared = declared.replace("    w += 1\n", "    w += 1\n    with torch.no_grad():\n        for p in model.parameters():\n            p.mul_(0.99)\n")
    assert "p.mul_(0.99)" in declared
    proj.write("train.py", declared)
    assert "as well" not in proj.run("train.py", env={"HINDLOG_EPSILON": "0.9"}).stderr


RNG_OBJECT = """
import json
import numpy as np
import hindlog as hl

rng = np.random.default_rng(7)
w = np.zeros(2)
hl.checkpoints(w=w, rng=rng)
for epoch in hl.loop("epoch", range(5)):
    w += rng.normal(size=2)
    hl.log("w0", float(w[0]))
print(json.dumps({"run": hl.run_id()}))
"""


def test_a_random_generator_object_is_restored_in_place(tmp_path: Path) -> None:
    proj = CkProject(tmp_path)
    proj.write("train.py", RNG_OBJECT)
    run_id = last_json(proj.run("train.py", env={"HINDLOG_EPSILON": "0.9"}).stdout)["run"]
    values = proj.by_iteration(run_id)
    k = proj.checkpointed_iterations(run_id)[0]
    assert k < 4
    rng, w = np.random.default_rng(123), np.zeros(2)  # `rng=` names the object, as it would any other
    hl.restore(run_id, iteration=k, store=proj.store(), w=w, rng=rng)
    for epoch in range(k + 1, 5):  # the script's own reference draws what the record drew
        w += rng.normal(size=2)
        assert float(w[0]) == values[(epoch, "w0")][0]


def test_restore_leaves_the_models_training_flags_as_the_caller_set_them(torch_ref: TorchReference) -> None:
    """The run's checkpoints are taken after validation, in eval mode: ``model.train()`` then
    ``hl.restore`` must not switch the caller's model back (nor ``model.eval()`` to training)."""
    proj, run_id = torch_ref.proj, torch_ref.run_id
    proj.write("modes.py", """
import json, sys
import torch, torch.nn as nn
import hindlog as hl

model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))
modes = {}
for mode in ("train", "eval"):
    getattr(model, mode)()
    hl.restore(sys.argv[1], model=model)
    modes[mode] = [m.training for m in model.modules()]
print(json.dumps(modes))
""")
    modes = last_json(proj.run("modes.py", run_id).stdout)
    assert modes == {"train": [True] * 5, "eval": [False] * 5}, modes


def test_a_scikit_learn_estimator_the_main_loop_trains_undeclared_is_named_in_a_warning(tmp_path: Path) -> None:
    """``clf.partial_fit`` in the loop, ``clf`` not declared: it has no ``state_dict``, so the
    check for undeclared state passed it over, and a replay diverged with no name given."""
    pytest.importorskip("sklearn")
    proj = CkProject(tmp_path)
    proj.write("train.py", """
import numpy as np
from sklearn.linear_model import SGDClassifier
import hindlog as hl

rng = np.random.default_rng(0)
X = rng.normal(size=(200, 4))
y = (X[:, 0] > 0).astype(int)
clf = SGDClassifier(random_state=0)
hl.checkpoints(rng=rng)
for epoch in hl.loop("epoch", range(3)):
    for i in hl.loop("step", range(4)):
        clf.partial_fit(X[i * 50:(i + 1) * 50], y[i * 50:(i + 1) * 50], classes=[0, 1])
    hl.log("acc", float(clf.score(X, y)))
""")
    stderr = proj.run("train.py", env={"HINDLOG_EPSILON": "0.9"}).stderr
    assert "checkpointing clf as well: the main loop changes it and hl.checkpoints does not name it" in stderr, stderr
    assert "hl.checkpoints(clf=clf, ...)" in stderr


SCRIPT_CLASS_LOCAL = """
import json
import numpy as np
import hindlog as hl

""" + RUNNING_MEAN_CLASS + """

w = np.zeros(2)
stats = RunningMean()
hl.checkpoints(w=w)
for epoch in hl.loop("epoch", range(4)):
    w += 1.0
    stats.update(float(w.sum()))
    hl.log("mean", stats.mean)
print(json.dumps({"run": hl.run_id()}))
"""


def test_restore_in_a_process_without_the_scripts_classes_restores_the_objects_asked_for(tmp_path: Path) -> None:
    """A checkpointed local of a class the script defines (a running-mean meter): reading the
    checkpoint in another process (a notebook's ``hl.restore``, ``hindlog resume``'s check)
    failed with "Can't get attribute 'RunningMean'". The objects asked for are restored, and the
    local is named among those not loaded."""
    proj = CkProject(tmp_path)
    proj.write("train.py", SCRIPT_CLASS_LOCAL)
    run_id = last_json(proj.run("train.py", env={"HINDLOG_EPSILON": "0.9"}).stdout)["run"]
    k = proj.checkpointed_iterations(run_id)[-1]
    w = np.zeros(2)
    restored = hl.restore(run_id, iteration=k, store=proj.store(), w=w)
    assert list(w) == [k + 1.0, k + 1.0]
    assert "stats" in restored.locals_not_loaded and "RunningMean" in restored.locals_not_loaded["stats"]
    assert "w" not in restored.locals_not_loaded


def test_restored_is_shown_by_its_names_not_its_values() -> None:
    from hindlog.restore import Restored

    shown = repr(Restored("r1", 3, {"model": np.zeros(100_000)}, {"buffer": list(range(100_000))}, {"meter": "AttributeError"}))
    assert shown == "Restored(run_id='r1', iteration=3, objects=['model'], locals=['buffer'], locals_not_loaded=['meter'])"


def test_a_frozen_teacher_and_a_wrapper_of_the_declared_model_are_not_taken_for_state(tmp_path: Path) -> None:
    """The main loop calls ``teacher.eval()`` (a frozen model it only reads) and trains through
    ``wrapped``, a wrapper holding the declared model (as DistributedDataParallel does): both
    were checkpointed as state the script forgot, a copy of the teacher at every checkpoint, and
    the warning said to add the wrapper of a model already declared."""
    pytest.importorskip("torch")
    proj = CkProject(tmp_path)
    proj.write("train.py", """
import torch
import hindlog as hl


class Wrapper(torch.nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


torch.manual_seed(0)
model, teacher = torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)
wrapped = Wrapper(model)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
hl.checkpoints(model=model, opt=opt)
X = torch.randn(16, 4)
for epoch in hl.loop("epoch", range(4)):
    teacher.eval()
    wrapped.train()
    loss = ((wrapped(X) - teacher(X).detach()) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    hl.log("loss", loss.item())
""")
    stderr = proj.run("train.py", env={"HINDLOG_EPSILON": "0.9"}).stderr
    assert "as well" not in stderr and "do not hold" not in stderr, stderr
    assert "state        model, opt and the random generators" in proj.cli("show").stdout
