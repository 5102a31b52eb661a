"""Inside a replay worker or a resumed run: how the recorder's hooks behave.

``hindlog replay`` and ``hindlog resume`` start the recorded script with
``HINDLOG_CONTROL`` naming a JSON spec. The recorder then attaches to the
existing run instead of creating one, and asks the controller at each hook:

- where the main loop starts (restoring the latest checkpoint before it),
- whether a nested loop is skipped (restoring its checkpoint) or run,
- whether a logged value is stored, checked against the recorded one, or dropped,
- when the segment is over.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import json
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from . import catalog
from .checkpoint import ITERATION_END, checkpoint_rows, checkpoint_skeleton, keep_checkpoints, latest_readable, prefetch_checkpoint, prefetch_in_background, skippable_blocks
from .errors import ReplayError
from .restore import apply
from .state import is_optimizer, optimizer_groups_fit
from .values import decode, encode, equal
from .writer import pid_alive

ENV = "HINDLOG_CONTROL"
#: How often a replay worker tells the progress bar how far it is.
PROGRESS_SECONDS = 0.2


def current_spec() -> dict[str, Any] | None:
    """The spec this process was started with by replay or resume, if any."""
    path = os.environ.get(ENV)
    if not path:
        return None
    return json.loads(Path(path).read_text())


def load_controller(recorder: Any) -> Controller | None:
    spec = current_spec()
    if spec is None:
        return None
    cls = {"replay": ReplayController, "resume": ResumeController}[spec["mode"]]
    return cls(recorder, spec)


def replaying() -> bool:
    """True inside a ``hindlog replay`` worker."""
    from . import record

    rec = record._recorder
    if rec is not None:
        return isinstance(rec.controller, ReplayController)
    path = os.environ.get(ENV)
    if not path:
        return False
    try:
        return json.loads(Path(path).read_text()).get("mode") == "replay"
    except (OSError, ValueError):
        return False


def follow_driver(driver_pid: int | None) -> None:
    """End this worker when the ``hindlog replay`` that started it dies, even by ``kill -9``
    (workers run in their own session, so nothing else would stop them). By SIGKILL: a worker
    blocked in C code (a distributed rendezvous whose peer is gone) never runs a SIGTERM handler,
    and lived on, holding its memory (and a GPU's); what it stored stays hidden, as after any
    replay that never ended."""
    if not driver_pid or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != driver_pid:  # it died before the line above
        os.kill(os.getpid(), signal.SIGKILL)


def skip(it: Iterator[Any], n: int, drawn: dict[str, int] | None = None) -> Iterator[Any]:
    """``it`` after its first ``n`` items, which a restored checkpoint stands for, read now. An
    iterator that can skip without computing them (a ``while`` loop's condition) is not run.

    Call it before restoring the checkpoint's random generators: the record drew what reading
    those items draws (a shuffling sampler's order, on the first item) before the state the
    checkpoint holds, and reading them after the restore would draw from that state instead.
    ``drawn`` gets, for each global generator that reading the items after the first drew from,
    but not at every item looked at (a shuffling loader beginning a new pass: items after it
    depend on what it drew), its state's fingerprint after the last item. The record drew those numbers
    in another state, unless training drew none from it: the caller compares it with the
    checkpoint's. A generator that every item drew from (random indices, a random crop) draws
    the next item's numbers from the restored state, as the record did."""
    skip_items = getattr(it, "skip", None)
    if callable(skip_items):
        skip_items(n)
        return it
    it = iter(it)
    if drawn is None or n < 2:
        for _ in itertools.islice(it, n):
            pass
        return it
    for _ in itertools.islice(it, 1):
        pass
    first = rng_fingerprints()
    draws: dict[str, int] = {}  # by generator: of the items looked at, how many drew from it
    looked = 0
    for k in range(1, n):
        if k <= SKIP_ITEMS_LOOKED_AT_FIRST or k % SKIP_ITEMS_LOOKED_AT_EVERY == 0:
            # (A fingerprint costs tens of microseconds with torch: items looked at, not all of them.)
            before = rng_fingerprints()
            if next(it, _END) is _END:
                break
            looked += 1
            for name, state in rng_fingerprints().items():
                if before.get(name) != state:
                    draws[name] = draws.get(name, 0) + 1
        elif next(it, _END) is _END:
            break
    last = rng_fingerprints()
    drawn.update((name, state) for name, state in last.items() if first.get(name) != state and draws.get(name, 0) < looked)
    return it


#: ``skip`` looks at every item for random draws up to this one, then at every this-many-th.
SKIP_ITEMS_LOOKED_AT_FIRST = 256
SKIP_ITEMS_LOOKED_AT_EVERY = 61
_END = object()


def rng_fingerprints() -> dict[str, int]:
    """Fingerprints of the global random generators' states (Python's, NumPy's, torch's CPU one),
    cheap enough to take at every item a segment skips (a few microseconds)."""
    import random

    import numpy as np

    _name, keys, pos, has_gauss, cached = np.random.get_state()
    out = {"python": hash(random.getstate()), "numpy": hash((keys.tobytes(), int(pos), int(has_gauss), float(cached)))}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = hash(torch.get_rng_state().numpy().tobytes())
    return out


def loops_key(ctx: tuple[Any, ...]) -> str:
    """The catalog's text form of a loop context (as the writer stores it)."""
    return json.dumps([[c[0], c[1]] for c in ctx])


#: New code's own random stream: (the run's generator states when new code last ended, new
#: code's states then). New code continues it while the run has drawn nothing since.
_new_code_stream: tuple[list[Any], list[Any]] | None = None
_new_code_depth = 0


def _generator_states() -> list[Any]:
    from . import record
    from .state import RandomGeneratorState, rng_state, state_of

    rec = record._recorder
    declared = [d for d in rec.declared.values() if d.kind == "generator" or isinstance(d.obj, RandomGeneratorState)] \
        if rec is not None else []
    if rec is not None:
        declared += _held_generators(rec.declared.values())
    return [rng_state(), [(d, state_of(d)) for d in declared]]


def _held_generators(declared: Iterable[Any]) -> list[Any]:
    """The random generators the declared objects hold as attributes (``model.rng``, a trainer's
    ``self.gen``): new code that draws from one (``m.rng.random()``) must leave it as it was."""
    from .state import declare, is_random_generator

    torch = sys.modules.get("torch")
    out = []
    for d in declared:
        attributes = getattr(d.held, "__dict__", None)
        if not isinstance(attributes, dict) or d.kind == "generator":
            continue
        for name, value in list(attributes.items()):
            if is_random_generator(value) or (torch is not None and isinstance(value, torch.Generator)):
                out.append(declare(f"{d.name}.{name}", value))
    return out


def _set_generator_states(states: list[Any]) -> None:
    from .state import load_into, set_rng_state

    set_rng_state(states[0])
    for d, st in states[1]:
        load_into(d, st)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        try:
            return bool(a == b)  # plain values (Python's 625 ints) compare at C speed
        except (ValueError, RuntimeError):  # an array inside: no single truth value
            return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if hasattr(a, "shape") and hasattr(b, "shape"):  # NumPy arrays, torch tensors
        return a.shape == b.shape and bool((a == b).all())
    return a is b or a == b


def hindsight_enter() -> list[Any] | None:
    """New code (a statement added since the record) starts: the run's generator states are
    put aside, and new code's own stream goes on where it stopped if the run has drawn nothing
    since (consecutive new statements draw as one block of new code would), else it forks from
    the run's states. The declared models' buffers are put aside too. Returns what
    ``hindsight_exit`` sets back."""
    global _new_code_depth
    _new_code_depth += 1
    if _new_code_depth > 1:
        return None  # new code called from new code: one stream
    run = _generator_states()
    if _new_code_stream is not None and _same(run, _new_code_stream[0]):
        _set_generator_states(_new_code_stream[1])
    return [*run, _module_buffers()]


def hindsight_exit(run: list[Any] | None) -> None:
    """New code ended: its stream is kept for the next new code, and the run's generators are
    set back to where it found them, and so are the buffers it changed."""
    global _new_code_depth
    _new_code_depth -= 1
    if run is not None:
        _set_back(run[:2])
        _set_module_buffers(run[2])


def _module_buffers() -> list[tuple[Any, Any]]:
    """Each buffer of the declared models, with a copy: a new statement's
    forward pass in train mode (``hl.log("std", G(z).std())``) updates batch norm's running
    statistics and a spectral norm's vectors, which the iterations after it would then use."""
    from . import record

    rec = record._recorder
    torch = sys.modules.get("torch")
    if rec is None or torch is None:
        return []
    out = []
    for d in rec.declared.values():
        if d.kind == "module":
            for b in d.obj.buffers():
                # (Small ones: statistics and vectors a forward pass updates, not a model's tables.)
                if b.numel() * b.element_size() <= 1 << 20:
                    out.append((b, b.detach().clone()))
    return out


def _set_module_buffers(saved: list[tuple[Any, Any]]) -> None:
    if not saved:
        return
    import torch

    with torch.no_grad():
        for b, copy in saved:
            # (By value: batch norm updates its running statistics without a version bump.)
            if b.shape == copy.shape and not torch.equal(b, copy):
                b.copy_(copy)


def _set_back(run: list[Any]) -> None:
    """The generators' states become new code's stream, and the run's (``run``) are set back."""
    global _new_code_stream
    mine = _generator_states()
    _set_generator_states(run)
    _new_code_stream = (run, mine)


@contextlib.contextmanager
def hindsight_code() -> Iterator[None]:
    """Around a statement added since the record, in a replay's copy of the code: it leaves the
    run's random generators (Python's, NumPy's, torch's CPU and CUDA ones, and the declared ones)
    where it found them. A new ``evaluate(val_loader)`` draws a seed from torch's generator as it
    starts reading the loader; without this, the next iteration that re-executes would shuffle,
    or drop out, otherwise than the record did, and diverge. New code draws from a stream of its
    own, forked from the run's (``hindsight_enter``)."""
    run = hindsight_enter()
    try:
        yield
    finally:
        hindsight_exit(run)


def hindsight_call(compute: Callable[[], Any]) -> Any:
    """``compute()`` under ``hindsight_code``: the value of a new statement where a ``with``
    cannot go (``if c: hl.log("val", evaluate(val_loader))``), or the test of a new ``if``."""
    with hindsight_code():
        return compute()


def hindsight_mark() -> list[Any] | None:
    """The run's generator states before the iterable of a new ``for`` loop is evaluated (it is
    an expression: it cannot be put under ``hindsight_code``); ``hindsight_iter`` sets them back,
    what the expression drew becoming new code's stream. (So the expression draws the run's next
    numbers, not new code's, and if it raises, what it drew stays drawn; nothing is left half
    done.) None inside new code, which already is."""
    return _generator_states() if _new_code_depth == 0 else None


def hindsight_iter(run: list[Any] | None, iterable: Iterable[Any]) -> Iterator[Any]:
    """The iterable of a ``for`` loop added since the record, evaluated after ``run =
    hindsight_mark()``: what evaluating it drew, if anything, becomes new code's stream and the
    run's states are set back; starting to read it (a loader draws its seed) and each step of it (a
    shuffling sampler) draw from new code's stream too."""
    if run is not None and not _same(_generator_states(), run):
        _set_back(run)  # (an iterable that drew nothing, a loader, leaves new code's stream going on)
    with hindsight_code():
        it = iter(iterable)
    while True:
        with hindsight_code():
            try:
                item = next(it)
            except StopIteration:
                return
        yield item


class Controller:
    source = catalog.SOURCE_RECORD
    checkpointing = True
    owns_run = True

    def __init__(self, recorder: Any, spec: dict[str, Any]) -> None:
        self.recorder = recorder
        self.spec = spec
        self.rows: dict[int, dict[int, tuple[str | None, str]]] = {}
        self.main_started = False
        self.main_finished = False
        #: Absolute path -> line numbers of the statements added since the record (a replay's;
        #: built on first use).
        self._hindsight_lines: dict[str, frozenset[int]] | None = None
        self._real_paths: dict[str, str] = {}

    def attach(self, conn: Any) -> tuple[int, str, int]:
        raise NotImplementedError

    def on_log(self, name: str, value: Any) -> bool:
        return True

    def main_loop_start(self, name: str, it: Iterator[Any], frame: FrameType) -> tuple[int, Iterator[Any]]:
        return 0, it

    def iteration_begin(self, i: int) -> None:
        pass

    def iteration_end(self, i: int) -> None:
        pass

    def main_loop_done(self) -> None:
        self.main_finished = True

    def entered_from_hindsight(self, frame: FrameType | None) -> bool:
        """Whether code running in ``frame`` runs for a statement added since the record (a new
        ``evaluate(test_loader)`` call): some frame on the stack is executing a new line. A loop
        it starts always runs and is not one of the recorded nested loops (counting it would
        shift every later loop of the iteration onto another loop's checkpoint), and what it
        logs is new, not compared with the record."""
        lines = self._hindsight_lines
        if lines is None:
            root = self.recorder.store.root
            lines = self._hindsight_lines = {}
            for rel, ranges in (self.spec.get("new_lines") or {}).items():
                numbers = frozenset(n for lo, hi in ranges for n in range(lo, hi + 1))
                lines[os.path.realpath(os.path.join(root, rel))] = numbers
        if not lines:
            return False
        real = self._real_paths
        while frame is not None:
            filename = frame.f_code.co_filename
            path = real.get(filename)
            if path is None:
                path = real[filename] = os.path.realpath(filename)
            numbers = lines.get(path)
            if numbers is not None and frame.f_lineno in numbers:
                return True
            frame = frame.f_back
        return False

    def block_checkpoint(self, name: str) -> str | None:
        """The manifest to restore instead of running this nested loop, or None to run it."""
        return None

    def block_ran_instead(self) -> None:
        """The checkpoint ``block_checkpoint`` named could not be read: the loop runs after all."""

    def restored_block(self) -> None:
        """A nested loop was just skipped by restoring its checkpoint."""

    def close(self) -> None:
        pass

    def timing(self, timing: dict[str, Any]) -> dict[str, Any]:
        """The run's timings (``info``) to store, given this process's own."""
        return timing

    def _fitting(self, at_most: int) -> int:
        """The latest iteration, at most ``at_most``, whose checkpoint's optimizers have the
        parameter groups this process's have: a run that adds one as it trains (unfreezing a
        backbone) has later checkpoints this process, which has not added it yet, cannot load;
        from an earlier one, running the main loop makes the change here too. Read from the
        checkpoints' skeletons, not the checkpoints."""
        declared = self.recorder.declared
        if not any(is_optimizer(d) for d in declared.values()):
            return at_most
        for i in sorted((i for i in self.rows if i <= at_most and ITERATION_END in self.rows[i]), reverse=True):
            skeleton = checkpoint_skeleton(self.recorder.store.objects, self.rows[i][ITERATION_END][1])
            if skeleton is None or all(optimizer_groups_fit(d, skeleton.get(name)) for name, d in declared.items()):
                return i
        return -1

    def _restore_start(self, start: int, it: Iterator[Any], frame: FrameType) -> tuple[int, Iterator[Any]]:
        """Restore the latest iteration-end checkpoint before ``start`` and skip the iterations it covers."""
        if start <= 0 or not self.spec.get("restore_start", True):
            return 0, it
        t0 = time.perf_counter()
        loaded = latest_readable(self.recorder.store.objects, self.rows, at_most=self._fitting(start - 1))
        wanted = max((i for i in self.rows if i < start and ITERATION_END in self.rows[i]), default=None)
        if self.spec.get("common_checkpoints") is not None and (loaded.iteration if loaded else None) != wanted:
            # The other ranks start from the checkpoint this one could not read.
            raise ReplayError(f"the checkpoint of iteration {wanted} of this rank's run cannot be restored (see above), and "
                              "the other ranks of its distributed launch start from it: replay other --iterations")
        if loaded is None:
            return 0, it
        if not loaded.locals_fit(frame, self.recorder.main_loop_wrapped):
            # Its locals are a progress wrapper's (an older hindlog took them from the frame that
            # advanced the main loop): without the loop's own, the segment runs from the start.
            return 0, it
        read = time.perf_counter() - t0
        first = loaded.iteration + 1
        drawn: dict[str, int] = {}
        it = skip(it, first, drawn)  # not restore time: the record read these items too
        t1 = time.perf_counter()
        apply(loaded, self.recorder.declared, frame, strict=False)
        restored = rng_fingerprints()
        if any(restored.get(name) != state for name, state in drawn.items()):
            # Reading the items drew random numbers after the first one (a shuffling loader that
            # began a new pass, read through a generator), and training drew some between them
            # in the record: the numbers drawn here were others, and so would the items be.
            raise ReplayError(
                f"the main loop's items are drawn with random numbers as it goes (a shuffling DataLoader that begins a "
                f"new pass mid-run?), and training draws some between them: reading its first {first} items without "
                f"training in between drew other numbers than the record did, so iteration {first} on would get other "
                "items than it did. Replay from the main loop's start: --workers 1, without --iterations that start later"
            )
        self.recorder.restore_seconds += read + time.perf_counter() - t1
        return first, it


def _forget_after(conn: Any, run: int, iteration: int) -> None:
    """What the record logged and checkpointed after ``iteration``, which the resumed run makes
    again. Values a replay stored for those iterations stay: the resumed run computes them as before."""
    conn.execute(
        "DELETE FROM records WHERE run=? AND source=? AND ctx IN (SELECT id FROM contexts WHERE run=? AND iteration>?)",
        (run, catalog.SOURCE_RECORD, run, iteration),
    )
    conn.execute("DELETE FROM checkpoints WHERE run=? AND iteration>?", (run, iteration))


class ResumeController(Controller):
    """Continue a killed or failed run from its latest checkpoint, appending to the same run."""

    def attach(self, conn: Any) -> tuple[int, str, int]:
        run = catalog.get_run(conn, self.spec["run_id"])
        self.rows = checkpoint_rows(conn, run["id"])
        self.loaded = latest_readable(self.recorder.store.objects, self.rows)
        if self.loaded is None:
            raise ReplayError(f"run {run['run_id']} has no readable checkpoint to resume from")
        last = self.loaded.iteration
        with catalog.transaction(conn):
            _forget_after(conn, run["id"], last)
            # So are the values the killed process logged after its main loop (if it got there).
            after = catalog.split_outside_loops(run.get("info") or {})
            if after is not None:
                late = [
                    rowid for rowid, loops, name in conn.execute(
                        "SELECT r.rowid, c.loops, n.name FROM contexts c CROSS JOIN records r ON r.run=c.run AND r.ctx=c.id "
                        "JOIN names n ON n.id=r.name WHERE c.run=? AND c.iteration IS NULL AND r.source=? ORDER BY r.rowid",
                        (run["id"], catalog.SOURCE_RECORD),
                    )
                    if after(loops, name, None)
                ]
                conn.executemany("DELETE FROM records WHERE rowid=?", [(r,) for r in late])
            flags = run.get("flags") or []
            # The time it stood killed is not part of the run's duration.
            info = run.get("info") or {}
            # A failed run stopped when it ended; a killed one at its last sign of life.
            stopped = max(0.0, time.time() - (run.get("ended") or run.get("heartbeat") or time.time()))
            catalog.merge_run_info(conn, run["id"], {"stopped_seconds": info.get("stopped_seconds", 0.0) + stopped})
            catalog.update_run(
                conn,
                run["id"],
                {"status": "running", "pid": os.getpid(), "heartbeat": time.time(), "ended": None,
                 "flags": flags + ["resumed"] if "resumed" not in flags else flags},
            )
            ctx_base = conn.execute("SELECT COALESCE(MAX(id), 0) FROM contexts WHERE run=?", (run["id"],)).fetchone()[0]
        self.recorder.script = run.get("script")
        self.prior_info = run.get("info") or {}
        self.first = last + 1
        return run["id"], run["run_id"], int(ctx_base)

    def _before_group_changes(self, loaded: Any) -> Any:
        """The latest checkpoint whose optimizers have this process's parameter groups: a run that
        added one as it trained (unfreezing a backbone) is resumed from before the change, which
        the resumed run then makes again; what the run recorded after that checkpoint is removed
        as it was after the latest one (``attach``)."""
        fitting = self._fitting(loaded.iteration)
        if fitting == loaded.iteration:
            return loaded
        earlier = latest_readable(self.recorder.store.objects, self.rows, at_most=fitting) if fitting >= 0 else None
        if earlier is None:
            return loaded  # (loading it fails with the reason)
        conn = self.recorder.store.connect()
        try:
            with catalog.transaction(conn):
                _forget_after(conn, self.recorder.run, earlier.iteration)
        finally:
            conn.close()
        print(f"hindlog: resuming after iteration {earlier.iteration} instead: the run added optimizer parameter groups "
              f"after it, which the resumed script adds again as it goes on", file=sys.stderr, flush=True)
        self.first = earlier.iteration + 1
        return earlier

    def on_log(self, name: str, value: Any) -> bool:
        # Values logged before the main loop were recorded by the original process.
        return self.main_started or self.recorder.iteration is not None

    def main_loop_start(self, name: str, it: Iterator[Any], frame: FrameType) -> tuple[int, Iterator[Any]]:
        self.main_started = True
        loaded = self.loaded = self._before_group_changes(self.loaded)
        if not loaded.locals_fit(frame, self.recorder.main_loop_wrapped):
            raise ReplayError(
                f"the checkpoint of iteration {loaded.iteration} holds the locals of {loaded.scope or 'the wrapper around the main loop'} "
                "(an older hindlog took them from a progress wrapper's frame), not those of the main loop's function: "
                "resuming from it would continue with the loop's variables unset. Run the script again to record it anew."
            )
        first = loaded.iteration + 1
        it = skip(it, first)
        apply(loaded, self.recorder.declared, frame, strict=False)
        for name in persistent_loaders(frame.f_locals):
            warnings.warn(
                f"hindlog: the DataLoader {name!r} keeps persistent workers: they drew their random seed when the record "
                f"first iterated it, and these draw theirs now, so what they draw from iteration {first} on (random "
                "augmentations) is not what the killed run would have drawn; the resumed run's values differ from an "
                "uninterrupted run's from there.",
                RuntimeWarning,
            )
        return first, it

    def timing(self, timing: dict[str, Any]) -> dict[str, Any]:
        """This process timed only the iterations after the checkpoint; replay plans index
        ``iteration_seconds`` by iteration and divide ``block_seconds`` by the run's length.
        The earlier iterations keep the killed process's timings where it wrote them (a failed
        run did, a ``kill -9`` did not) and get the resumed iterations' mean otherwise."""
        new = list(timing.get("iteration_seconds") or [])
        prior = list(self.prior_info.get("iteration_seconds") or [])
        first = self.first
        mean_new = sum(new) / len(new) if new else 0.0
        if len(prior) >= first:
            before = prior[:first]
            blocks_before = {k: v * first / len(prior) for k, v in (self.prior_info.get("block_seconds") or {}).items()} if prior else {}
        else:
            before = prior + [mean_new] * (first - len(prior))
            blocks_before = {k: v * first / len(new) for k, v in (timing.get("block_seconds") or {}).items()} if new else {}
        blocks = dict(timing.get("block_seconds") or {})
        for k, v in blocks_before.items():
            blocks[k] = blocks.get(k, 0.0) + v
        out = dict(timing)
        out["iteration_seconds"] = before + new
        out["block_seconds"] = blocks
        if self.prior_info.get("preloop_seconds") is not None:
            out["preloop_seconds"] = self.prior_info["preloop_seconds"]
        return out


def persistent_loaders(scope: dict[str, Any]) -> list[str]:
    """The names of the DataLoaders in ``scope`` whose worker processes live across epochs."""
    torch = sys.modules.get("torch")
    loader = getattr(getattr(getattr(torch, "utils", None), "data", None), "DataLoader", None) if torch else None
    if loader is None:
        return []
    return [name for name, value in scope.items() if isinstance(value, loader)
            and getattr(value, "persistent_workers", False) and getattr(value, "num_workers", 0) > 0]


class ReplayController(Controller):
    """Run one segment of a replay: restore, skip un-probed loops, check and store values."""

    # Hidden until the replay ends: the driver then makes them replayed values, over the
    # iterations its workers finished, or a replay that never ends leaves nothing visible.
    source = catalog.SOURCE_PENDING
    checkpointing = False
    owns_run = False

    def __init__(self, recorder: Any, spec: dict[str, Any]) -> None:
        super().__init__(recorder, spec)
        from . import checkpoint

        driver = spec.get("driver_pid")
        if driver and os.getppid() != driver and pid_alive(driver):
            # A process the replayed script started (torch.multiprocessing.spawn, a Pool) inherits
            # the worker's variables: it would take the worker's run for its own.
            raise ReplayError(
                f"hindlog: process {os.getpid()} was started by the script that `hindlog replay` runs, and calls hindlog "
                f"itself: replaying a script whose processes record runs of their own (torch.multiprocessing.spawn, "
                f"multiprocessing) is not supported. Under torchrun, replay with `torchrun ... -m hindlog replay`."
            )
        follow_driver(driver)
        checkpoint.remember_verified = True
        #: hindlog's warnings in this worker (a damaged checkpoint passed over, a local that
        #: cannot be restored), for the driver to show: the worker's own stderr is a log file.
        self.warnings: list[str] = []
        shown = warnings.showwarning

        def keep(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
            text = str(message)
            if text.startswith("hindlog:") and text not in self.warnings and len(self.warnings) < 10:
                self.warnings.append(text)
            shown(message, category, filename, lineno, file, line)

        warnings.showwarning = keep
        # A skipped nested loop steps no optimizer, so the scheduler stepped after it makes
        # torch warn of a wrong order that the recorded code does not have.
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before `optimizer\.step\(\)`")
        self.start, self.end = spec["segment"]
        self.first = spec.get("first", True)
        self.last = spec.get("last", True)
        self.probed = set(spec.get("probed", []))
        self.run_all_blocks = bool(spec.get("run_all_blocks", False))
        self.tolerance = float(spec.get("tolerance", 0.0))
        self.result_path = Path(spec["result"]) if spec.get("result") else None
        self.progress_path = Path(spec["progress"]) if spec.get("progress") else None
        self._progress_written = -PROGRESS_SECONDS
        self.recorded: dict[tuple[str, str], list[Any]] = {}
        self.recorded_names: set[str] = set()
        self.seen: dict[tuple[str, str], int] = {}
        self.divergences: list[dict[str, Any]] = []
        self.checked = 0
        self.seen_printed: dict[tuple[str, str], int] = {}
        self.printed_checked = 0
        self.printed_differ = 0
        self.printed_examples: list[dict[str, Any]] = []
        self.stored = 0
        #: Values of recorded names the recorded code logged past where the run stopped.
        self.past_record = 0
        #: The record is incomplete from this main-loop iteration on (a killed or failed run's
        #: last one, and what follows the main loop), or None (a finished run).
        self.incomplete_from: int | None = spec.get("record_incomplete_from")
        self.skipped_blocks = 0
        self.run_blocks = 0
        self._keys: dict[tuple[Any, ...], str] = {}
        self._block_keys: list[tuple[int, int]] = []
        self._split_after = False
        self._recorded_without_main_loop = False

    def attach(self, conn: Any) -> tuple[int, str, int]:
        run = catalog.get_run(conn, self.spec["run_id"])
        # A rank of a distributed launch uses only the checkpoints every rank has (all skip alike).
        self.rows = keep_checkpoints(checkpoint_rows(conn, run["id"]), self.spec.get("common_checkpoints"))
        # Both queries go name by name through the (name, run) index, not over every run's records.
        self.recorded_names = {
            r[0] for r in conn.execute(
                "SELECT n.name FROM names n WHERE EXISTS "
                "(SELECT 1 FROM records r WHERE r.name=n.id AND r.run=? AND r.source=?)",
                (run["id"], catalog.SOURCE_RECORD),
            )
        }
        # Recorded values of this segment, to check the replayed ones against.
        rows = conn.execute(
            "SELECT c.iteration, c.loops, n.name, r.kind, r.value FROM names n CROSS JOIN records r ON r.name=n.id "
            "CROSS JOIN contexts c ON c.run=r.run AND c.id=r.ctx WHERE r.run=? AND r.source=? "
            "AND (c.iteration IS NULL OR (c.iteration>=? AND c.iteration<?)) ORDER BY r.rowid",
            (run["id"], catalog.SOURCE_RECORD, self.start, self.end),
        ).fetchall()
        info = run.get("info") or {}
        #: Whether the recorded run had no main loop (then nothing is before or after one).
        self._recorded_without_main_loop = "main_loop" in info and info["main_loop"] is None
        after = catalog.split_outside_loops(info)
        #: Values outside every loop are keyed apart before and after the main loop (the last
        #: segment runs only the latter), where the record says which is which.
        self._split_after = after is not None
        for iteration, loops, name, kind, value in rows:
            key = catalog.context_key(loops, after is not None and after(loops, name, iteration))
            self.recorded.setdefault((key, name), []).append(decode(kind, value))
        #: The nested-loop checkpoints this segment may restore, in the order it meets them.
        self._block_keys = [] if self.run_all_blocks else skippable_blocks(self.rows, self.start, self.end, self.probed)
        return run["id"], run["run_id"], int(self.spec.get("ctx_base", 0))

    def _prefetch_from(self, iteration: int, block: int) -> None:
        """Start reading the first checkpoint at or after (iteration, block) that this segment will
        restore, so that the disk reads it while the code before that loop runs."""
        k = bisect.bisect_left(self._block_keys, (iteration, block))
        if k < len(self._block_keys):
            i, b = self._block_keys[k]
            prefetch_in_background(prefetch_checkpoint, self.recorder.store.objects, self.rows[i][b][1])

    # ------------------------------------------------------------ values

    def _in_segment(self) -> bool:
        i = self.recorder.iteration
        if i is not None:
            return self.start <= i < self.end
        if not self.main_started:
            return self.first
        return self.last and self.main_finished

    def _context_key(self) -> str:
        ctx = self.recorder.ctx
        key = self._keys.get(ctx)
        if key is None:
            key = loops_key(ctx)
            if len(self._keys) > 10_000:
                self._keys.clear()
            self._keys[ctx] = key
        return catalog.context_key(key, self.main_started and self._split_after)

    def printed_position(self) -> list[int]:
        """Where a hindsight ``print`` goes among the lines the record printed (``query.output``):
        ``[how many of its context's the replayed code has printed so far, 1 if after the main
        loop else 0]``, and in a nested loop, how many its iteration's main-loop code has printed
        (which always runs: a place for a line whose loop printed nothing in the record)."""
        after_main_loop = self.main_started and self.recorder.iteration is None
        position = [self.seen_printed.get((self._context_key(), "@stdout"), 0), int(after_main_loop)]
        ctx = self.recorder.ctx
        if self.recorder.iteration is not None and len(ctx) > 1:
            position.append(self.seen_printed.get((loops_key(ctx[:1]), "@stdout"), 0))
        return position

    def check_printed(self, line: str) -> None:
        """A line the replayed code printed (not a hindsight print): compared with the line the
        record printed there. A difference is reported, not a divergence: printed lines often
        hold times; but a loss line that differs means some state was not restored."""
        if not self._in_segment():
            return
        k = (self._context_key(), "@stdout")
        n = self.seen_printed.get(k, 0)
        self.seen_printed[k] = n + 1
        recorded = self.recorded.get(k)
        if recorded is None or n >= len(recorded):
            return
        self.printed_checked += 1
        if recorded[n] != line:
            self.printed_differ += 1
            if len(self.printed_examples) < 3:
                self.printed_examples.append({"iteration": self.recorder.iteration, "recorded": recorded[n], "replayed": line})

    def on_log(self, name: str, value: Any) -> bool:
        if not self._in_segment():
            return False
        if name not in self.recorded_names or name == "@stdout" or self.entered_from_hindsight(sys._getframe(1)):
            # A new name, or a recorded one logged by code a new statement runs (an existing
            # ``evaluate`` that logs, called on other data): stored, not compared with the
            # record, whose occurrences stay matched to the code that logged them.
            self.stored += 1
            return True
        key = self._context_key()
        k = (key, name)
        n = self.seen.get(k, 0)
        self.seen[k] = n + 1
        recorded = self.recorded.get(k)
        if recorded is None or n >= len(recorded):
            # Code the record ran logs a recorded name where the record did not.
            it = self.recorder.iteration
            if self.incomplete_from is not None and (it >= self.incomplete_from if it is not None else self.main_finished):
                # Past where a killed or failed run stopped: not the run's value (its resume
                # logs it), and not new. Neither stored nor checked.
                self.past_record += 1
                return False
            # Else new code made it log more often (a statement added since changed the
            # condition of a recorded hl.log): stored, as a value the record did not have.
            self.stored += 1
            return True
        self.checked += 1
        replayed = decode(*encode(value))
        if not equal(recorded[n], replayed, self.tolerance):
            divergence = {"name": name, "iteration": self.recorder.iteration, "context": key,
                          "recorded": _summary(recorded[n]), "replayed": _summary(replayed)}
            if self.recorder.iteration is None:
                divergence["outside"] = "after the main loop" if self.main_started else \
                    "outside every loop" if self._recorded_without_main_loop else "before the main loop"
            self.divergences.append(divergence)
        return False

    # ------------------------------------------------------------ loops

    def main_loop_start(self, name: str, it: Iterator[Any], frame: FrameType) -> tuple[int, Iterator[Any]]:
        self.main_started = True
        first, it = self._restore_start(self.start, it, frame)
        self.first_executed = first
        self._prefetch_from(first, 0)
        return first, itertools.islice(it, max(self.end - first, 0))

    def iteration_begin(self, i: int) -> None:
        # For the progress bar only: a file written at every iteration cost a fast main loop
        # 0.25-2 ms an iteration on a busy disk (5,000 short iterations: 10 s), so at most
        # every PROGRESS_SECONDS.
        if self.progress_path is not None and i >= self.start:
            now = time.monotonic()
            if now - self._progress_written >= PROGRESS_SECONDS:
                self._progress_written = now
                try:
                    self.progress_path.write_text(str(i))
                except OSError:
                    pass

    def main_loop_done(self) -> None:
        self.main_finished = True
        # (None: no iteration ended, the loop's iterator was empty where it started.)
        ran = self.recorder.main_loop_iterations
        ran = ran if ran is not None else (self.first_executed or 0)
        if ran < min(self.end, self.spec.get("recorded_iterations", self.end)):
            # The record ran these iterations: a loop that ends sooner reads something that is not
            # what the record read (an environment variable, a file). What it computes is not the
            # run's, and is checked nowhere else when the run logged little.
            self.divergences.append({
                "name": self.recorder.main_loop_name, "iteration": ran, "context": "[]", "main_loop_ended": True,
                "recorded": f"{self.spec.get('recorded_iterations', self.end)} iterations", "replayed": f"{ran} iterations",
            })
        if not self.last:
            # Code after the main loop runs once, in the last segment.
            self.recorder.finish()
            raise SystemExit(0)

    def block_checkpoint(self, name: str) -> str | None:
        i = self.recorder.iteration
        if i is None or i < self.start or name in self.probed or self.run_all_blocks:
            self.run_blocks += 1
            return None
        entry = self.rows.get(i, {}).get(self.recorder.block)
        if entry is None or entry[0] != name:
            self.run_blocks += 1
            return None
        self.skipped_blocks += 1
        return entry[1]

    def block_ran_instead(self) -> None:
        if self.spec.get("common_checkpoints") is not None:
            # The other ranks skip this loop: run here, it would wait for them in a collective.
            raise ReplayError(f"a checkpoint of iteration {self.recorder.iteration} of this rank's run cannot be restored "
                              "(see above), and the other ranks of its distributed launch skip that loop: replay with "
                              f"--iterations that start after {self.recorder.iteration}, or run the launch again")
        self.skipped_blocks -= 1
        self.run_blocks += 1

    def restored_block(self) -> None:
        # Announced only once this restore has read its own data: the disk reads in order.
        self._prefetch_from(self.recorder.iteration, self.recorder.block)

    def close(self) -> None:
        if self.result_path is None:
            return
        result = {
            "segment": [self.start, self.end],
            "checked": self.checked,
            "stored": self.stored,
            "past_record": self.past_record,
            "divergences": self.divergences[:100],
            "divergence_count": len(self.divergences),
            "skipped_blocks": self.skipped_blocks,
            "run_blocks": self.run_blocks,
            "restore_seconds": self.recorder.restore_seconds,
            "printed_checked": self.printed_checked,
            "printed_differ": self.printed_differ,
            "printed_examples": self.printed_examples,
            "warnings": self.warnings,
            "completed": True,
        }
        guard = sys.modules.get("hindlog.scratchguard")
        if guard is not None:
            result["files_written"] = {k: v[-1000:] for k, v in guard.WRITTEN.items()}
            result["files_read_made"] = {k: v[-1000:] for k, v in guard.READ_MADE.items()}
            result["files_outside"] = dict(list(guard.WRITTEN_OUTSIDE.items())[:1000])
        tmp = self.result_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, default=str))
        os.replace(tmp, self.result_path)


def _summary(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)
    if tolist is not None:
        arr = value
        if getattr(arr, "size", 0) > 16:
            return f"array{tuple(arr.shape)} sum={float(arr.sum()):.6g}"
        return tolist()
    return value
