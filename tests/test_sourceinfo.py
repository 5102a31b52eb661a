"""sourceinfo.py: which locals a loop assigns that later code reads (what a checkpoint at the
loop's exit must hold), from small sources, and from live frames as the recorder sees them."""

from __future__ import annotations

import ast
import sys
import textwrap
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from hindlog.sourceinfo import Functions, _facts_for, _scope_nodes, loop_facts

TRAIN = textwrap.dedent(
    """
    def train(model, loader, val_loader, opt):
        best = float("inf")
        history = []
        for epoch in range(10):
            for x, y in loader:
                out = model(x)
                loss = crit(out, y)
                loss.backward()
                opt.step()
            total = 0.0
            count = 0
            for x, y in val_loader:
                pred = model(x)
                total += crit(pred, y)
                count += 1
            val_loss = total / count
            print(loss.item())
            history.append(val_loss)
            if val_loss < best:
                best = val_loss
        return best
    """
)


def facts_at(source: str, line_text: str, others: tuple[str, ...] = ()) -> Any:
    """Facts of the loop whose header is the (first) line containing ``line_text``; ``others``:
    other project files, whose functions the loop may call."""
    tree = ast.parse(source)
    lineno = next(i for i, line in enumerate(source.splitlines(), 1) if line_text in line)
    scope, loop = _scope_nodes(tree, lineno)
    assert loop is not None and loop.lineno == lineno
    return _facts_for(scope, loop, Functions([tree, *map(ast.parse, others)]))


def test_last_batch_loss_is_live_after_the_training_loop() -> None:
    facts = facts_at(TRAIN, "for x, y in loader:")
    assert {"x", "y", "out", "loss"} <= facts.assigned
    assert "loss" in facts.live_after
    # Rebound before they are read again: not needed in the checkpoint.
    assert not {"x", "y", "out"} & facts.live_after
    assert "opt" in facts.mutated  # opt.step(): a method call may change it in place


def test_validation_accumulator_is_live_after_the_validation_loop() -> None:
    facts = facts_at(TRAIN, "for x, y in val_loader:")
    assert {"total", "count", "pred"} <= facts.assigned
    assert {"total", "count"} <= facts.live_after
    assert "pred" not in facts.live_after


def test_loop_carried_best_and_history_in_the_main_loop() -> None:
    facts = facts_at(TRAIN, "for epoch in range(10):")
    # `best` is read by the next epoch's comparison before it is reassigned, and after the loop.
    assert "best" in facts.live_after
    assert "history" in facts.mutated
    # `val_loss` is recomputed every epoch before any read: not carried.
    assert "val_loss" not in facts.live_after
    assert "epoch" not in facts.live_after


def test_names_read_only_inside_a_later_loop_or_branch_are_live() -> None:
    source = textwrap.dedent(
        """
        def f(data):
            for step in range(3):
                for b in data:
                    acc = b
                    tmp = b
                if step > 1:
                    print(acc)
                tmp = 0
                print(tmp)
        """
    )
    facts = facts_at(source, "for b in data:")
    assert "acc" in facts.live_after
    assert "tmp" not in facts.live_after


def test_module_level_loops() -> None:
    source = textwrap.dedent(
        """
        best = None
        for epoch in range(3):
            for batch in range(4):
                loss = batch * 2
            best = loss if best is None or loss < best else best
        print(best)
        """
    )
    inner = facts_at(source, "for batch in range(4):")
    assert inner.live_after == frozenset({"loss"})
    outer = facts_at(source, "for epoch in range(3):")
    assert "best" in outer.live_after


def test_what_a_function_called_after_the_loop_reads_is_live() -> None:
    source = textwrap.dedent(
        """
        def summary():
            return last

        def main():
            def report():
                return total
            for epoch in range(3):
                for batch in range(4):
                    total = batch * 3
                print(report())

        for epoch in range(3):
            for batch in range(4):
                last = batch * 2
                unused = batch
            print(summary())
        """
    )
    # A global the called function reads, and a closure variable of the function the loop is in.
    tree = ast.parse(source)
    live = {}
    for loop in (n for n in ast.walk(tree) if isinstance(n, ast.For) and ast.unparse(n.target) == "batch"):
        scope, found = _scope_nodes(tree, loop.lineno)
        live[ast.unparse(loop.body[0].targets[0])] = _facts_for(scope, found).live_after
    assert live == {"last": frozenset({"last"}), "total": frozenset({"total"})}


# ----------------------------------------------------------------- from live frames


def spy(iterable: Iterable[Any], sink: list[tuple[FrameType, int]]) -> Iterator[Any]:
    """Like hl.loop: note the caller's frame and line when the loop is exhausted."""
    frame = sys._getframe(1)
    yield from iterable
    sink.append((frame, frame.f_lineno))


def test_loop_facts_from_a_running_frame() -> None:
    inner: list[tuple[FrameType, int]] = []
    val: list[tuple[FrameType, int]] = []

    def train() -> float:
        best = 10.0
        for epoch in range(2):
            for step in spy(range(3), inner):
                loss = float(step)
            total = 0.0
            for b in spy(range(2), val):
                total += b
            best = min(best, loss + total)
        return best

    assert train() == 3.0
    frame, line = inner[0]
    facts = loop_facts(frame, line)
    assert facts is not None and "loss" in facts.live_after and "step" not in facts.live_after
    frame, line = val[0]
    facts = loop_facts(frame, line)
    assert facts is not None and "total" in facts.live_after
    # The result is cached per code object and line.
    assert loop_facts(frame, line) is facts


def test_loop_facts_for_a_script_file(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            frames = []
            def spy(it):
                f = sys._getframe(1)
                yield from it
                frames.append((f, f.f_lineno))
            history = []
            for epoch in spy(range(2)):
                for b in spy(range(2)):
                    last = b
                history.append(last)
            """
        )
    )
    namespace: dict[str, Any] = {"__name__": "script"}
    exec(compile(script.read_text(), str(script), "exec"), namespace)
    frames = namespace["frames"]
    inner = loop_facts(*frames[0])
    assert inner is not None and inner.live_after == frozenset({"last"})
    outer = loop_facts(*frames[-1])
    assert outer is not None and "history" in outer.mutated


def test_no_source_means_no_facts() -> None:
    namespace: dict[str, Any] = {"spy": spy}
    sink: list[tuple[FrameType, int]] = []
    exec(compile("for i in spy(range(2), sink):\n    x = i\n", "<no file>", "exec"), {**namespace, "sink": sink})
    frame, line = sink[0]
    assert loop_facts(frame, line) is None


def test_a_block_loop_inside_a_function_the_main_loop_calls() -> None:
    source = textwrap.dedent(
        """
        def run_epoch(loader):
            running = 0.0
            for x in loader:
                running += x
                last = x
            return running / len(loader)
        """
    )
    facts = facts_at(source, "for x in loader:")
    assert "running" in facts.live_after
    assert not {"x", "last"} & facts.live_after


def test_while_loops_and_loops_inside_with_and_try() -> None:
    source = textwrap.dedent(
        """
        def f(it):
            with ctx():
                try:
                    n = 0
                    while n < 3:
                        n += 1
                        seen = n
                finally:
                    print(seen)
        """
    )
    facts = facts_at(source, "while n < 3:")
    assert {"n", "seen"} <= facts.live_after


NESTED_CHANGES = """
for epoch in range(3):
    for x, y in batches:
        x = x.to(device)
        x.sub_(mean).div_(std)
        random.shuffle(order)
        np.add(total, y, out=total)
        torch._foreach_lerp_(ema_params, params, 0.1)
        xb = X_train[perm[:4]]
        xb -= mean
        for i, (e, p) in enumerate(zip(ema, model.parameters())):
            e.mul_(0.5).add_(p, alpha=0.5)
        W, b = weights["W"], weights["b"]
        W -= 0.1
        for s in [sched_g, sched_d]:
            s.step()
"""


def test_what_a_loop_changes_through_functions_and_aliases_and_what_it_only_reads() -> None:
    """In-place functions of modules change their first argument (or ``out=``); a part changed
    through an alias changes its whole; a name rebound to a new object (``x = x.to(device)``),
    an element of a list zipped with the one changed, and a copy made by fancy indexing do not."""
    mutated = facts_at(NESTED_CHANGES, "for x, y in batches:").mutated
    assert {"order", "total", "ema_params", "ema", "weights", "sched_g", "sched_d"} <= mutated
    assert not {"batches", "std", "mean", "X_train", "params"} & mutated


CALLED_CHANGES = textwrap.dedent(
    """
    stats = {"loss": 0.0, "n": 0}
    log = []

    def ema_update(ema, model, decay=0.9):
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.mul_(decay).add_(pm, alpha=1 - decay)

    def accumulate(totals, value):
        totals["loss"] += value
        totals["n"] += 1

    def remember(value):
        log.append(value)          # a global changed in place

    def decay(target, source, rate=0.5):
        target *= rate             # in place for the caller's array or tensor
        source = source * 2        # rebinding its own name changes nothing of the caller's

    def through(a, b):
        accumulate(a, b)           # changes its argument through another function

    def only_reads(model, x):
        fresh = []
        fresh.append(model(x))     # its own local
        return fresh

    class Meter:
        def add(self, v):
            self.total += v

    class Tracker:
        def add(self, v):          # a second class's method of the same name: still a method
            self.items.append(v)

    def step(x):                   # shares its name with opt.step(), a method: not this function
        x.append(1)

    for epoch in range(3):
        for x, y in loader:
            loss = model(x)
            ema_update(ema, model)
            accumulate(stats, loss)
            through(other, loss)
            remember(loss)
            decay(shadow2, y)
            only_reads(net, x)
            meter.add(loss)
            add(counts, loss)      # no plain function is named add: nothing known changes counts
            helper_update(shadow, model)
            opt.step()
    """
)


def test_what_a_loop_changes_through_the_project_functions_it_calls() -> None:
    """A project function called in a loop changes what its parameters are bound to (and the
    globals it changes): ``ema_update(ema, model)`` changes ``ema``, a method changes the object
    it is called on; what it only reads, or its own locals, are not changed, and a library
    method that shares a function's name (``opt.step()``) is not that function. Functions of
    another project file count too."""
    helpers = "def helper_update(target, source):\n    target.copy_(source)\n"
    mutated = facts_at(CALLED_CHANGES, "for x, y in loader:", others=(helpers,)).mutated
    assert {"ema", "stats", "other", "log", "meter", "shadow", "shadow2"} <= mutated, mutated
    assert not {"net", "x", "y", "fresh", "loader", "counts"} & mutated, mutated
    # Without the project's functions, only the method call's object is seen changed.
    tree = ast.parse(CALLED_CHANGES)
    scope, loop = _scope_nodes(tree, next(i for i, line in enumerate(CALLED_CHANGES.splitlines(), 1) if "for x, y in loader:" in line))
    assert not {"ema", "stats", "other", "log", "shadow"} & _facts_for(scope, loop).mutated
