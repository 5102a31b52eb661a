"""Checkpoints and restores leave the user's objects with ordinary attribute dictionaries.

On CPython 3.11 and 3.12 pickling an object moves its attributes into a "split" dictionary
that the interpreter's attribute caches do not handle (every attribute access of it gets
slower); ``hindlog.instance_dicts`` rebuilds such dictionaries in place. CPython gives a
split dictionary a different size than an ordinary one with the same items, which is how
these tests tell them apart (and the control cases show that the check sees a split one).
"""

from __future__ import annotations

import gc
import json
import pickle
import sys
from pathlib import Path

import pytest

from conftest import Project, dedent
from hindlog import instance_dicts

pytestmark = pytest.mark.skipif(not instance_dicts.ACTIVE, reason="only CPython 3.11 and 3.12 split attribute dictionaries")


def is_split(d: dict) -> bool:
    return sys.getsizeof(d) != sys.getsizeof(dict(d))


class Model:
    def __init__(self) -> None:
        self.w = [1.0, 2.0]
        self.lr = 0.1
        self.steps = 0


class OwnDictProperty:
    """A class whose ``__dict__`` is not the instance dictionary: left alone."""

    def __init__(self) -> None:
        self.a = 1

    @property
    def __dict__(self) -> dict:  # type: ignore[override]
        return {"not": "mine"}


def test_repack_rebuilds_a_split_dictionary_in_place() -> None:
    m = Model()
    pickle.dumps(m)
    d = m.__dict__
    items = list(d.items())
    assert is_split(d)
    instance_dicts.repack([m, 3, "x", [m]])
    assert m.__dict__ is d  # the same dictionary: references to it stay live
    assert list(d.items()) == items  # same items, same order
    assert not is_split(d)
    m.steps += 1
    assert m.__dict__["steps"] == 1


def test_repack_leaves_inline_attributes_and_foreign_dicts_alone() -> None:
    m = Model()
    instance_dicts.repack([m])
    # Still inline: the object references its values, not a dictionary holding them.
    assert not any(type(r) is dict for r in gc.get_referents(m))
    odd = OwnDictProperty()
    pickle.dumps(Model())  # unrelated
    instance_dicts.repack([odd])
    assert odd.a == 1 and odd.__dict__ == {"not": "mine"}


class SetsItsOwnState:
    """Unpickled through ``__setstate__`` with ``setattr``: its attributes stay inline."""

    def __init__(self) -> None:
        self.a, self.b = 1, [2]

    def __getstate__(self) -> tuple:
        return (self.a, self.b)

    def __setstate__(self, state: tuple) -> None:
        self.a, self.b = state


def test_unpickled_objects_are_rebuilt_only_where_their_attributes_moved() -> None:
    import io

    unpickler = pickle.Unpickler(io.BytesIO(pickle.dumps([Model(), SetsItsOwnState()])))
    plain, own = unpickler.load()
    assert is_split(plain.__dict__)  # unpickling a plain object moves its attributes (control)
    instance_dicts.repack_unpickled(unpickler)
    assert not is_split(plain.__dict__) and plain.steps == 0
    # Its __setstate__ kept them inline: left so (asking for its dict would move them).
    assert not any(type(r) is dict for r in gc.get_referents(own))
    assert (own.a, own.b) == (1, [2])


RECORD = """
import json, pickle, sys, time
import hindlog as hl

def is_split(d):
    return sys.getsizeof(d) != sys.getsizeof(dict(d))

class Optimizer:
    def __init__(self):
        self.lr = 0.1
        self.moments = [0.0, 0.0]

class Model:
    def __init__(self):
        self.w = [1.0, 2.0]
        self.opt = Optimizer()
        self.steps = 0

model = Model()
held = model.__dict__  # the script holds its model's dictionary (this splits it)
control = Model()
hl.checkpoints(model=model)
for epoch in hl.loop("epoch", range(4)):
    for step in hl.loop("step", range(3)):
        model.w = [v - model.opt.lr * 0.5 for v in model.w]
        model.opt.moments[0] += 1.0
        model.steps += 1
        time.sleep(0.02)
    hl.log("w0", model.w[0])
run = hl.run_id()
hl.finish()
pickle.dumps(control)
print(json.dumps({
    "run": run,
    "same_dict": model.__dict__ is held,
    "model_split": is_split(model.__dict__),
    "opt_split": is_split(model.opt.__dict__),
    "control_split": is_split(control.__dict__),
    "control_opt_split": is_split(control.opt.__dict__),
    "w": model.w, "steps": model.steps,
}))
"""

RESTORE = """
import json, sys
import hindlog as hl
from train import Model, Optimizer, is_split  # the recorded pickles name them in __main__

fresh = Model()
hl.restore(sys.argv[1], model=fresh)
print(json.dumps({"model_split": is_split(fresh.__dict__), "opt_split": is_split(fresh.opt.__dict__),
                  "w": fresh.w, "steps": fresh.steps, "moments": fresh.opt.moments}))
"""


def test_a_recorded_and_a_restored_model_keep_ordinary_dictionaries(tmp_path: Path) -> None:
    proj = Project(tmp_path, is_git=False)
    recorded = json.loads(proj.run(RECORD, env={"HINDLOG_EPSILON": "0.9"}).stdout.strip().splitlines()[-1])
    # The control object, pickled by the script itself, is split: the check sees it.
    assert recorded["control_split"] and recorded["control_opt_split"]
    assert recorded["same_dict"]
    assert not recorded["model_split"] and not recorded["opt_split"]
    assert recorded["steps"] == 12

    proj.write("train.py", dedent(RECORD).split("model = Model()")[0])  # the classes, importable
    restored = json.loads(proj.run(RESTORE, script="restore.py", args=[recorded["run"]]).stdout.strip().splitlines()[-1])
    assert restored["w"] == recorded["w"] and restored["steps"] == 12 and restored["moments"][0] == 12.0
    assert not restored["model_split"] and not restored["opt_split"]
