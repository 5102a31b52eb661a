"""Unit tests of the hands-free instrumentation on small sources: finding the main loop,
naming loops, the training-state candidates, and that the rewritten code behaves (and
reports line numbers) like the original. The rewritten code runs in this process against
a fake ``__hindlog__`` runtime that only records what it is asked."""

from __future__ import annotations

import ast
import itertools
import sys
import textwrap
import traceback
from typing import Any

import pytest

from hindlog import instrument
from hindlog.handsfree import WhileCondition
from hindlog.instrument import RUNTIME, find_main_loop, loop_names


def src(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def plan_of(text: str, is_script: bool = True, skip: set[int] | None = None) -> instrument.Plan:
    return instrument.instrument(ast.parse(src(text)), is_script, skip)


def main_line(text: str) -> int | None:
    loop, _holder = find_main_loop(ast.parse(src(text)))
    return None if loop is None else loop.lineno  # type: ignore[attr-defined]


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    hits = [k + 1 for k, line in enumerate(src(text).splitlines()) if needle in line]
    return hits[occurrence - 1]


class FakeRuntime:
    """What instrumented code calls, recording the calls; iterables pass through unchanged."""

    count = staticmethod(itertools.count)
    while_condition = WhileCondition

    def __init__(self) -> None:
        self.entered: list[tuple[str, str]] = []
        self.state: list[str] | None = None

    def main_loop(self, name: str, iterable: Any) -> Any:
        self.entered.append(("main", name))
        return iterable

    def nested_loop(self, name: str, iterable: Any) -> Any:
        self.entered.append(("nested", name))
        return iterable

    def auto_state(self, names: list[str], rebound: list[str] | None = None) -> None:
        assert self.state is None, "auto_state called twice"
        self.state = list(names)
        self.rebound = list(rebound or [])


def run_both(text: str, filename: str = "/proj/train.py") -> tuple[dict[str, Any], dict[str, Any], FakeRuntime]:
    """Execute ``text`` as written and instrumented; both namespaces and the fake runtime."""
    code = src(text)
    plain: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(code, filename, "exec"), plain)
    tree = ast.parse(code, filename)
    instrument.instrument(tree, is_script=True)
    rt = FakeRuntime()
    inst: dict[str, Any] = {"__name__": "__main__", RUNTIME: rt}
    exec(compile(tree, filename, "exec", dont_inherit=True), inst)
    return plain, inst, rt


def public(ns: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in ns.items() if not k.startswith("__") and not callable(v) and not isinstance(v, type(sys))}


# ----------------------------------------------------------------- the main loop

DATA_THEN_TRAIN = """
data = []
for f in range(4):
    data.append(f * 2)
model = Model()
for epoch in range(3):
    for x in data:
        opt.zero_grad()
        model(x).backward()
        opt.step()
for k in range(2):
    print(k)
"""


def test_main_loop_is_the_one_holding_training_work_not_data_loading() -> None:
    assert main_line(DATA_THEN_TRAIN) == line_of(DATA_THEN_TRAIN, "for epoch")
    plan = plan_of(DATA_THEN_TRAIN)
    assert plan.main_loop == "epoch"
    assert plan.names == {line_of(DATA_THEN_TRAIN, "for epoch"): "epoch", line_of(DATA_THEN_TRAIN, "for x in"): "x"}
    # The loops before and after it are ordinary loops: not wrapped.
    assert line_of(DATA_THEN_TRAIN, "for f in") not in plan.names
    assert line_of(DATA_THEN_TRAIN, "for k in") not in plan.names


STEPS_OVER_A_STREAM = """
import itertools


def infinite(loader):
    while True:
        for batch in loader:
            yield batch


class Trainer:
    def fit(self):
        for step, (x, y) in enumerate(itertools.islice(infinite(self.loader), 3000)):
            self.optimizer.zero_grad()
            loss_fn(self.model(x), y).backward()
            self.optimizer.step()


if __name__ == "__main__":
    Trainer().fit()
"""


def test_a_generator_that_makes_the_batches_is_not_the_main_loop() -> None:
    """Its ``while True`` holds a loop, and the step loop does not: the generator's loop was taken
    for the main loop, and a run of 3000 steps had 30 iterations (its passes) and no checkpoint."""
    assert main_line(STEPS_OVER_A_STREAM) == line_of(STEPS_OVER_A_STREAM, "for step")
    # A generator that trains, yielding each epoch's loss, holds the training loop.
    training_generator = """
def train(model, opt, loader, epochs):
    for epoch in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        yield epoch


for epoch in train(model, opt, loader, 5):
    print(epoch)
"""
    assert main_line(training_generator) == line_of(training_generator, "for epoch in range")
    # An environment's step is not training: a rollout generator does not outrank the loop that trains.
    rollouts = """
def rollouts(env, policy):
    while True:
        obs = env.reset()
        for t in range(100):
            obs, reward, done = env.step(policy(obs))
        yield obs


for update, batch in enumerate(rollouts(env, policy)):
    opt.zero_grad()
    loss_fn(batch).backward()
    opt.step()
"""
    assert main_line(rollouts) == line_of(rollouts, "for update, batch")


FUNCTION_MAIN = """
import argparse

from engine import evaluate


def train_one_epoch(model, loader, opt):
    model.train()
    for x, y in loader:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()


def unused():
    for epoch in range(100):
        for step in range(10):
            opt.step()


def main():
    args = argparse.ArgumentParser().parse_args()
    for name in ["a", "b"]:
        print(name)
    for epoch in range(args.epochs):
        train_one_epoch(model, loader, opt)
        sched.step()
        evaluate(model, val_loader)


if __name__ == "__main__":
    main()
"""


def test_main_loop_in_the_function_the_main_guard_calls() -> None:
    loop, holder = find_main_loop(ast.parse(src(FUNCTION_MAIN)))
    assert loop is not None and loop.lineno == line_of(FUNCTION_MAIN, "for epoch in range(args.epochs)")  # type: ignore[attr-defined]
    # The holder is main's body (where the state is declared), not the module.
    assert any(isinstance(s, ast.Assign) and "args" in ast.unparse(s) for s in holder)  # type: ignore[union-attr]
    plan = plan_of(FUNCTION_MAIN)
    assert plan.main_loop == "epoch"
    # The loop of the project function it calls is a nested loop, named from its iterable.
    assert plan.names[line_of(FUNCTION_MAIN, "for x, y in loader")] == "loader"
    assert {"model", "loader", "opt", "sched"} <= set(plan.state_candidates)
    assert "epoch" not in plan.state_candidates


def test_while_main_loop() -> None:
    text = """
    stopper = Stopper()
    history = []
    while not stopper.done:
        for batch in batches:
            model.update(batch)
        history.append(model.loss())
        stopper.check(history[-1])
    """
    plan = plan_of(text)
    assert plan.main_loop == "iteration"
    assert plan.main_line == 3
    assert plan.names[4] == "batch"
    assert {"stopper", "history", "model"} <= set(plan.state_candidates)


def test_no_loop_or_no_training_work_runs_plainly() -> None:
    for text in ["x = 1\nprint(x)\n", "for i in range(3):\n    print(i)\n", "def f():\n    for i in range(3):\n        opt.step()\n"]:
        plan = plan_of(text)
        assert plan.main_loop is None, text
        assert any("no loop" in n for n in plan.notes), plan.notes
        assert main_line(text) is None


def test_a_module_is_never_given_a_main_loop() -> None:
    text = """
    for epoch in range(3):
        for x in data:
            opt.step()

    def train(loader):
        for x in loader:
            opt.step()
        while True:
            break
    """
    plan = plan_of(text, is_script=False)
    assert plan.main_loop is None and not plan.notes
    # Module-level loops of an imported module run at import: left alone. Function loops are nested loops.
    assert plan.names == {line_of(text, "for x in loader"): "x", line_of(text, "while True"): "iteration"}


# ----------------------------------------------------------------- names

NAMES = """
import hindlog as hl


def evaluate(model, loader):
    for x, y in loader:
        model(x)


def main():
    for epoch in range(3):
        for i, (x, y) in enumerate(train_loader):
            opt.step()
        for x, y in val_loader:
            model(x)
        for x, y in self.loader:
            model(x)
        for step in hl.loop("step", range(2)):
            opt.step()
        evaluate(model, loader)


main()
"""


def test_loops_named_from_their_target_and_unique() -> None:
    names = loop_names(src(NAMES), is_script=True)
    at = lambda needle: names[line_of(NAMES, needle)]  # noqa: E731
    assert at("for epoch") == "epoch"
    assert at("enumerate(train_loader)") == "i"
    assert at("in val_loader") == "val_loader"
    assert at("in self.loader") == "loader"
    # hl.loop keeps its name.
    assert at('hl.loop("step"') == "step"
    # The function's loop also iterates over `loader`: it gets a name of its own.
    other = at("for x, y in loader:")
    assert other != "loader" and other.startswith("loader")
    assert len(set(names.values())) == len(names), names
    # Stable: the same source gives the same names.
    assert loop_names(src(NAMES), is_script=True) == names


def test_loop_names_never_reuse_an_hl_loop_name() -> None:
    text = """
    import hindlog as hl

    for epoch in range(3):
        for step in range(4):
            opt.step()
        for x in hl.loop("step", val):
            pass
    """
    names = loop_names(src(text), is_script=True)
    assert names[line_of(text, 'hl.loop("step"')] == "step"
    assert names[line_of(text, "for step in range(4)")] != "step"


def test_nested_loops_of_an_hl_loop_main_loop_are_named() -> None:
    text = """
    import hindlog as hl

    for epoch in hl.loop("ep", range(3)):
        for x, y in train_loader:
            opt.step()
        for step in hl.loop("val", range(2)):
            pass
    """
    plan = plan_of(text)
    assert plan.main_loop == "ep"
    assert plan.names == {line_of(text, "for x, y in train_loader"): "train_loader"}
    assert loop_names(src(text), is_script=True) == {3: "ep", 4: "train_loader", 6: "val"}


def test_new_loops_are_not_instrumented_and_do_not_rename_others() -> None:
    before = """
    for epoch in range(3):
        for x in loader:
            opt.step()
        for x in val_loader:
            model(x)
    """
    after = """
    import hindlog as hl
    for epoch in range(3):
        for p in model.parameters():
            hl.log("p", p.norm().item())
        for x in loader:
            opt.step()
        for x in val_loader:
            model(x)
    """
    old = loop_names(src(before), is_script=True)
    assert old == {1: "epoch", 2: "x", 4: "x_val_loader"}
    # Lines 1, 3 and 4 are new: the import and the new loop with its statement.
    new = loop_names(src(after), is_script=True, skip_lines={1, 3, 4})
    assert new == {2: "epoch", 5: "x", 7: "x_val_loader"}
    plan = plan_of(after, skip={1, 3, 4})
    assert 3 not in plan.names


# ----------------------------------------------------------------- state candidates


def test_state_candidates_are_what_the_main_loop_changes_and_exist_before_it() -> None:
    text = """
    import numpy as np

    model = Model()
    opt = SGD(model)
    sched = StepLR(opt)
    history = []
    stats = {}
    counts = np.zeros(3)
    config = {"lr": 0.1}
    total = 0


    def train_step(x):
        opt.zero_grad()
        ema.update(model)


    for epoch in range(3):
        for x in data:
            train_step(x)
        sched.step()
        history.append(epoch)
        stats["last"] = epoch
        counts[epoch] += 1
        total += 1
        loss = config["lr"]
        tracker.best = loss
    """
    plan = plan_of(text)
    cands = set(plan.state_candidates)
    # Method calls, appends, subscript stores, attribute stores; globals used by a project function.
    assert {"sched", "history", "stats", "counts", "tracker", "opt", "ema", "model"} <= cands
    # Loop-local names are not state.
    assert not {"epoch", "x", "loss"} & cands


def test_state_changed_through_an_element_or_an_entry_is_state() -> None:
    """What the loop changes through a container's entry (``history["loss"].append``) or through
    a name bound to its elements (an EMA of the weights kept in a list) is the container's change."""
    text = """
    import torch

    history = {"loss": []}
    metrics = {}
    ema = [p.detach().clone() for p in model.parameters()]
    state = {"w": torch.zeros(3)}
    groups = [[torch.zeros(2)]]
    batches = make_batches()
    config = Config()
    journal = []
    shadows, targets = [torch.zeros(2)], [torch.ones(2)]

    for epoch in range(3):
        for x, y in batches:
            x = x.to("cpu")
            y.float()
        history["loss"].append(1.0)
        metrics.setdefault("acc", []).append(0.5)
        with torch.no_grad():
            for e, p in zip(ema, model.parameters()):
                e.mul_(0.5).add_(p, alpha=0.5)
        w = state["w"]
        w += 1
        setattr(config, "lr", 0.1 / (epoch + 1))
        log = journal
        log.extend([epoch])
        for a, b in zip(shadows, targets):
            a.copy_(b)
        for group in groups:
            for t in group:
                t.zero_()
    """
    cands = set(plan_of(text).state_candidates)
    assert {"history", "metrics", "ema", "state", "groups", "config", "journal"} <= cands
    assert "shadows" in cands
    # Reading a batch's tensors (x.to(...), y.float()) changes nothing the loop iterates over;
    # nor does copying from the elements of one of two zipped lists.
    assert not {"batches", "targets"} & cands


def test_arguments_a_project_function_only_reads_are_not_state() -> None:
    text = """
    import numpy as np

    class Model:
        def loss(self, x, y):
            return float(np.mean((x @ self.w - y) ** 2)) + len(y) * x.T.shape[0]

        def fit(self, x, y):
            self.cache = x

    def evaluate(model, data, labels):
        return model.loss(data, labels)

    def shuffle_rows(a, order):
        a[:] = a[order]

    def scale(a):
        a *= 0.5

    def summarise(a):
        return np.sum(a)

    model = Model()
    Xv, yv, Xt, yt, Xs, Xn, order = load()
    for epoch in range(3):
        val = model.loss(Xv, yv)
        test = evaluate(model, Xt, yt)
        model.fit(Xs, yt)
        shuffle_rows(Xn, order)
        scale(Xt)
        summarise(order)
        other.loss(yt)
    """
    cands = set(plan_of(text).state_candidates)
    # Model.loss only reads x and y.
    assert not {"Xv", "yv"} & cands, cands
    # Stored into self, written through a slice, changed in place, handed to NumPy, or given to
    # code hindlog cannot see (other.loss): each may change, so each is state.
    assert {"Xs", "Xn", "Xt", "order", "yt", "model"} <= cands, cands


def test_next_on_a_generator_is_a_change() -> None:
    text = """
    stream = batches()
    log = open("train.log", "w")
    for epoch in range(3):
        for s in range(2):
            w.append(next(stream))
        log.write(str(epoch))
        print(len(w), float(epoch))
    """
    cands = set(plan_of(text).state_candidates)
    assert {"stream", "log", "w"} <= cands


# ----------------------------------------------------------------- the rewritten code


def test_instrumented_code_computes_what_the_original_does() -> None:
    text = """
    def train_one_epoch(w, data):
        total = 0
        for x in data:
            if x == 2:
                continue
            total += x
            w.append(total)
        return total

    def main():
        w = []
        data = [1, 2, 3]
        out = []
        n = 0
        while n < 10:
            n += 1
            if n % 2:
                continue
            if n > 7:
                break
            out.append(train_one_epoch(w, data))
            for k in range(3):
                if k == 1:
                    break
                out.append(-k)
            else:
                out.append("no break")
        else:
            out.append("while else")
        for j in range(2):
            opt_step = j
        else:
            out.append("for else")
        return w, out, n

    result = main()
    """
    plain, inst, rt = run_both(text)
    assert inst["result"] == plain["result"]
    assert ("main", "iteration") in rt.entered
    assert ("nested", "x") in rt.entered and ("nested", "k") in rt.entered
    assert rt.state is not None and "w" in rt.state


def test_while_else_runs_when_the_condition_fails() -> None:
    text = """
    log = []
    i = 0
    while i < 3:
        for step in range(2):
            log.append((i, step))
            opt_step = True
        i += 1
    else:
        log.append("else")
    """
    plain, inst, rt = run_both(text.replace("opt_step = True", "log.sort()"))
    assert inst["log"] == plain["log"] and plain["log"][-1] == "else"
    assert rt.entered[0] == ("main", "iteration")


def test_while_main_loop_iterates_once_per_body_run_and_a_walrus_condition_still_works() -> None:
    text = """
    seen = []
    i = 0
    while i < 3:
        for step in range(2):
            opt_step = step
        seen.append(i)
        i += 1
    """
    tree = ast.parse(src(text))
    instrument.instrument(tree, is_script=True)
    rewritten = ast.unparse(tree).replace("lambda :", "lambda:")  # Python 3.10 unparses a space there
    assert "while_condition(lambda: i < 3)" in rewritten and "if not" not in rewritten
    # The condition is checked by the loop's iterator: three iterations, not a fourth that breaks.
    ran: list[int] = []
    for k in WhileCondition(lambda: len(ran) < 3):
        ran.append(k)
    assert ran == [0, 1, 2]
    # Skipping (replay, resume) advances without checking the condition.
    checks = []
    cond = WhileCondition(lambda: checks.append(1) or len(checks) < 3)
    cond.skip(5)
    assert next(cond) == 5 and len(checks) == 1
    # A condition that assigns cannot move into a lambda: it stays in the body, same behaviour.
    walrus = """
    out = []
    data = iter([1, 2, 3])
    while (x := next(data, None)) is not None:
        for step in range(1):
            opt_step = step
        out.append(x)
    """
    plain, inst, rt = run_both(walrus)
    assert inst["out"] == plain["out"] == [1, 2, 3] and inst["x"] is None
    assert rt.entered[0] == ("main", "iteration")


def test_line_numbers_are_kept() -> None:
    text = """
    import traceback

    def step(x):
        if x == 2:
            raise ValueError("boom")
        return x

    lines = []
    items = []
    for epoch in range(3):
        for b in range(2):
            items.append(step(b + epoch))
    """
    for instrumented in (False, True):
        code = src(text)
        tree = ast.parse(code, "/proj/train.py")
        rt = FakeRuntime()
        if instrumented:
            instrument.instrument(tree, is_script=True)
        ns: dict[str, Any] = {"__name__": "__main__", RUNTIME: rt}
        with pytest.raises(ValueError) as info:
            exec(compile(tree, "/proj/train.py", "exec", dont_inherit=True), ns)
        frames = [(f.filename, f.lineno, f.name) for f in traceback.extract_tb(info.value.__traceback__)][1:]
        assert frames == [
            ("/proj/train.py", line_of(text, "items.append(step"), "<module>"),
            ("/proj/train.py", line_of(text, 'raise ValueError("boom")'), "step"),
        ], (instrumented, frames)
        if instrumented:
            assert rt.entered[:2] == [("main", "epoch"), ("nested", "b")]


def test_instrumented_tree_still_compiles_with_a_main_guard_and_classes() -> None:
    text = """
    class Trainer:
        def __init__(self):
            self.seen = []

        def fit(self, data):
            for x in data:
                self.seen.append(x)

    def main():
        t = Trainer()
        for epoch in range(2):
            t.fit([epoch, epoch + 1])
            t.step = epoch
        return t.seen

    if __name__ == "__main__":
        result = main()
    """
    plain, inst, rt = run_both(text)
    assert inst["result"] == plain["result"] == [0, 1, 1, 2]
    assert rt.entered[0] == ("main", "epoch")
    assert ("nested", "x") in rt.entered


def test_a_comprehensions_variable_is_not_the_name_defined_before_the_loop() -> None:
    """``p = argparse.ArgumentParser()`` before the loop and ``sum(p.norm() for p in
    model.parameters())`` in it: ``p`` was taken for state, and the parser pickled into every
    checkpoint. A ``p`` the loop also uses outside the comprehension stays a candidate."""
    text = """
    p = make_parser()
    model = Model()
    for epoch in range(3):
        model.step()
        wn = sum(p.norm() for p in model.parameters())
        best = max([q.size for q in model.parts()])
    """
    assert "p" not in plan_of(text).state_candidates
    assert "model" in plan_of(text).state_candidates
    both = text.replace("        model.step()\n", "        model.step()\n        p.update(epoch)\n")
    assert "p" in plan_of(both).state_candidates
