"""Adaptive periodic checkpoints: when to take them, how they are persisted, how they are read.

A checkpoint of main-loop iteration ``i`` is a set of snapshots: one at the
exit of each nested loop that runs directly within the iteration (block
``0, 1, ...``; these are what replay skips) and one at the end of the
iteration (block ``-1``; where a replay segment or a resume starts). Each
holds the declared state, the random generators and the loop-carried local
values, so that skipping a block and restoring its snapshot leaves the
program exactly as running the block did.

The training thread only freezes a copy (``state.Freezer``); a persister
thread hashes, writes and fsyncs the objects, writes the manifest, and then
asks the catalog writer to commit the iteration's rows. An iteration's
checkpoints become visible only once the iteration completed and all of its
data is durable, so a crash (or ``kill -9``) never leaves a partial or
mid-iteration checkpoint visible.

The policy keeps the time training is blocked (plus the persister's CPU
time, which competes with training, scaled by the slowdown it is measured to
cause) under ε of the elapsed time, taking as many evenly spaced checkpoints
as that allows, and never waits for an earlier persist: if one is still
running, the iteration is skipped.
"""

from __future__ import annotations

import collections
import errno
import io
import itertools
import json
import os
import pickle
import queue
import sys
import threading
import time
import types
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from . import catalog, sourceinfo
from .errors import CheckpointError, CorruptObject
from .objects import ObjectStore, digest, fsync_together, matches
from .state import (
    BY_NAME_MIN_BYTES,
    Declared,
    Freezer,
    Frozen,
    FrozenTensor,
    capturable_locals,
    CLOSURE_SUFFIX,
    frame_variables,
    is_tensor,
    own_class,
    own_code,
    declare,
    is_optimizer,
    is_random_generator,
    dumps_skeleton,
    rng_state,
    state_of,
    tensor_specs,
    thaw,
    trained_by,
)
from .values import wait_for_event

ITERATION_END = -1
FORMAT = 1
#: Tensors smaller than this are stored inside the checkpoint's skeleton object instead of
#: as objects of their own: dedup does not pay for them, and fewer files are faster.
INLINE_BYTES = 64 * 1024
assert INLINE_BYTES <= BY_NAME_MIN_BYTES, "a tensor named by hash must have been stored as an object of its own"
#: Least share of the persister's CPU time charged to the overhead budget. Training keeps
#: every core busy (torch uses one thread per core), so a second of hashing and writing in
#: the background costs training at least about a second; where it costs more (memory
#: bandwidth shared with training), the policy measures that and charges more.
BACKGROUND_WEIGHT = 1.0
#: The measured slowdown is charged at most this many times the persister's CPU time.
MAX_BACKGROUND_WEIGHT = 4.0
#: Iterations with no persist running that make the baseline iteration time (the latest ones).
BASELINE_ITERATIONS = 15
#: Quiet iterations needed before the slowdown during persists is measured against them.
MIN_BASELINE = 3
#: Quiet iterations just before a persist, and just after it, that make its baseline (a median
#: at each end: one slow iteration is noise). A shared machine's speed drifts by a third or
#: more within a run (other jobs): against the run's latest 15 quiet iterations, that drift was
#: charged to the persister, or hid its cost.
LOCAL_BASELINE = 3
#: Overlapped iterations kept one by one in a stretch; beyond, neighbours are merged in pairs,
#: so that a persist overlapping thousands of short iterations is measured in bounded memory.
MAX_EPISODE_ENTRIES = 256
#: An iteration that a persist overlapped for at most this share of a quiet iteration's time
#: counts as quiet:
#: the persister's small jobs (an iteration's commit, the tail of a write) touch nearly every
#: iteration when checkpoints are dense, and would otherwise leave no baseline to measure by.
QUIET_OVERLAP = 0.02
#: Fraction of ε the policy aims for, leaving room for noise.
SAFETY = 0.8
#: A state up to this size is checkpointed even while the previous iteration's persist still
#: runs (one at most waits behind it): its snapshot needs few fresh buffers, and with epochs
#: shorter than a persist's fsyncs (a few ms to tens of ms) every other iteration was skipped.
QUEUE_BEHIND_BYTES = 8 * 1024 * 1024
#: What one iteration of a nested ``hl.loop`` costs the loop: its generator, and the cache misses
#: of switching to it from a step that streams memory. bench/bench_costs.py measures about 0.1 µs
#: beside small NumPy steps and 0.25 µs beside steps that gather rows of a 200 MB array (0.05 s
#: of a 6 s script with 180,000 such steps); charged at the next checkpoint decision.
NESTED_ITERATION_SECONDS = 2.5e-7
#: What the run's end costs beyond the wait for the last persist (charged as blocked time): the
#: catalog's last commit and the interpreter's teardown of hindlog's modules and threads. It comes
#: after the last decision, so it is charged at the start. Measured from a script's last line to
#: its process's exit, against ``python``: 12 ms for a hands-free NumPy script, 2.5 ms beside
#: torch's own teardown (8-12 alternations).
EXIT_SECONDS = 0.012


# ----------------------------------------------------------------- policy


class Policy:
    """Decides, at the first snapshot point of each main-loop iteration, whether to checkpoint it.

    The rule keeps ``spent <= ε · elapsed`` at every decision: a checkpoint is
    taken when the time charged so far plus its expected cost fits in ε of the
    run's elapsed time (with a safety margin).
    In steady state this spaces checkpoints evenly, every iteration when they
    are cheap.

    What a checkpoint costs training is the time it blocks the training thread
    plus the slowdown the background persist causes while it runs. The second
    is at least the persister's CPU time on a machine whose cores training
    fills, and can be more (hashing and writing share memory bandwidth with
    the optimizer step). The policy measures it: it compares the iterations
    that a persist overlapped with the quiet iterations just before and just
    after them (the machine's speed drifts), and charges the persister's CPU
    time times the observed ratio (at least ``BACKGROUND_WEIGHT``). Costs that
    are not checkpoints (start-up, the run's end, the catalog writer's CPU
    time, nested-loop iterations) are charged too, so that hindlog's whole
    cost stays under ε.
    """

    def __init__(self, epsilon: float, start: float, total: int | None = None) -> None:
        self.epsilon = epsilon
        self.total = total
        self.start = start
        self.spent = 0.0  # blocked + weighted background seconds, charged so far
        #: At the latest decision: (seconds into the run, spent, weight, persister CPU seconds).
        #: What is charged after it (a weight measured later, the last persist) no decision saw.
        self.last_decision: tuple[float, float, float, float] | None = None
        self.cost: float | None = None  # EWMA of one checkpointed iteration's blocked cost
        self.initial_cost = 0.02  # until one is measured; raised by estimate_first()
        self.taken = 0
        #: Wall seconds the persister takes for one iteration's checkpoint (EWMA). The run's
        #: end waits for the last persist, so the last iteration must budget all of it.
        self.persist_wall: float | None = None
        #: CPU seconds of the persister per iteration's checkpoint (EWMA), charged at ``weight``.
        self.persist_cpu: float | None = None
        #: Seconds of training slowdown charged per second of persister CPU.
        self.weight = BACKGROUND_WEIGHT
        #: Persister CPU seconds so far (all of it, charged or not).
        self.background_cpu = 0.0
        #: The latest quiet iterations: (seconds, place in the run).
        self._quiet: deque[tuple[float, int]] = deque(maxlen=BASELINE_ITERATIONS)
        self._observed = 0  # iterations observed so far
        self._episode: _Episode | None = None  # the persist being observed
        self._slowdown = 0.0  # measured over the persists observed so far ...
        self._slowdown_cpu = 0.0  # ... and the persister CPU time they took
        #: The training thread and the persister both charge; ``spent`` must not lose an update.
        self._lock = threading.Lock()

    def estimate_first(self, state_bytes: int, buffers_ready: bool = False) -> None:
        """A first cost estimate from the state's size: a copy into fresh memory at about 1 GB/s
        (page faults included; bench/bench_persist.py), or at 5 GB/s into buffers mapped ahead
        (14 GB/s measured), plus the one-time work of the first checkpoint (reading the loops'
        source). Hashing and writing happen in the background at a fraction of that (XXH3,
        direct I/O)."""
        self.initial_cost = 0.005 + state_bytes / (5e9 if buffers_ready else 1e9)

    def decide(self, i: int, now: float | None = None) -> bool:
        if self.epsilon <= 0:
            return False
        now = time.perf_counter() if now is None else now
        self.last_decision = (now - self.start, self.spent, self.weight, self.background_cpu)
        cost = self.cost if self.cost is not None else self.initial_cost
        if self.persist_cpu is not None:
            cost += self.weight * self.persist_cpu
        if self.total is not None and i == self.total - 1:
            # The run's end waits for the last persist. It keeps the margin too: spending all of
            # ε there left a run whose budget binds at ε plus the costs no charge sees.
            cost += self.persist_wall if self.persist_wall is not None else cost
        return self.spent + cost <= self.epsilon * SAFETY * (now - self.start)

    def charge(self, blocked: float, background_cpu: float = 0.0, checkpoint: bool = True) -> None:
        with self._lock:
            self.background_cpu += background_cpu
            cost = blocked + self.weight * background_cpu
            self.spent += cost
        if not checkpoint:
            return
        if self.taken == 0:
            # The first checkpoint also pays one-time costs (reading the loops' source, lazy
            # imports): it is charged, but does not set the estimate for the next ones.
            self.initial_cost = min(self.initial_cost, cost)
            return
        self.cost = cost if self.cost is None else max(0.7 * self.cost + 0.3 * cost, cost * 0.5)

    def observe(self, seconds: float, persisting: float, background_cpu: float) -> None:
        """One main-loop iteration's wall time, less the time it was blocked; ``persisting``:
        wall seconds a persist ran during it; ``background_cpu``: the persister's CPU seconds
        (all so far) when the iteration began."""
        at = self._observed
        self._observed += 1
        typical = _median([t for t, _ in self._quiet]) if self._quiet else seconds
        episode = self._episode
        if persisting <= QUIET_OVERLAP * typical:
            if episode is not None:
                if not episode.after:
                    episode.cpu_at_end = self.background_cpu
                episode.after.append((seconds, at))
                if len(episode.after) >= LOCAL_BASELINE:
                    self._end_episode()
            self._quiet.append((seconds, at))
            return
        if episode is not None and episode.after:
            self._end_episode()  # the next persist came before as many quiet iterations
        if len(self._quiet) < MIN_BASELINE:
            return
        if self._episode is None:
            before, before_at = _level(list(self._quiet)[-LOCAL_BASELINE:])
            self._episode = _Episode(before=before, before_at=before_at, cpu_at_start=background_cpu)
        self._episode.add(seconds, persisting, at)

    def _end_episode(self) -> None:
        episode, self._episode = self._episode, None
        if episode is None or not episode.after:
            return
        cpu = episode.cpu_at_end - episode.cpu_at_start
        if cpu <= 0:
            return
        slowdown = episode.slowdown(*_level(episode.after))
        self._slowdown += slowdown
        self._slowdown_cpu += cpu
        # The total over the total CPU time, not a median of per-persist ratios: the budget is
        # for the whole cost, and a persist that sometimes slows training a lot costs that.
        measured = self._slowdown / self._slowdown_cpu
        weight = min(MAX_BACKGROUND_WEIGHT, max(BACKGROUND_WEIGHT, measured))
        with self._lock:
            # What was charged for the persister's CPU at the old weight is made up to the new one.
            self.spent += (weight - self.weight) * self.background_cpu
            self.weight = weight


@dataclass
class _Episode:
    """Consecutive iterations that one or more persists overlapped, and the quiet level before them
    (``before``: the median of the latest quiet iterations, at ``before_at``, the median of their
    places in the run)."""

    before: float
    before_at: float
    cpu_at_start: float
    #: The quiet iterations since (seconds, place), up to LOCAL_BASELINE, and the persister's
    #: CPU time when the first of them ended.
    after: list[tuple[float, int]] = field(default_factory=list)
    cpu_at_end: float = 0.0
    #: [seconds, persisting, iterations, place of the first]: one iteration each, or neighbours
    #: merged once there are more than MAX_EPISODE_ENTRIES.
    entries: list[list[float]] = field(default_factory=list)

    def add(self, seconds: float, persisting: float, at: int) -> None:
        self.entries.append([seconds, persisting, 1, at])
        if len(self.entries) > MAX_EPISODE_ENTRIES:
            pairs = zip(self.entries[0::2], self.entries[1::2])
            merged = [[a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3]] for a, b in pairs]
            if len(self.entries) % 2:
                merged.append(self.entries[-1])
            self.entries = merged

    def slowdown(self, after: float, after_at: float) -> float:
        """Seconds the persists added to these iterations, against the quiet level drawn straight
        from just before them to ``after``, that of the quiet iterations since (at ``after_at``)."""
        total = 0.0
        span = after_at - self.before_at
        for seconds, persisting, count, first in self.entries:
            middle = first + (count - 1) / 2
            baseline = self.before + (after - self.before) * (middle - self.before_at) / span
            # Noise in the iteration time beyond what the persist could cause is not its doing.
            total += max(-persisting, min(persisting, seconds - count * baseline))
        return total


def _level(quiet: list[tuple[float, int]]) -> tuple[float, float]:
    """The quiet level of these (seconds, place) iterations, and where it stands in the run."""
    return _median([t for t, _ in quiet]), _median([i for _, i in quiet])


def _median(values: Any) -> float:
    # Not statistics.median: importing it (fractions, decimal) is 2-3 ms of every run's start.
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _write_advice(error: Exception, where: Path) -> str:
    """What to do about a failed checkpoint write, by its cause."""
    code = getattr(error, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"Free some disk space under {where} for later checkpoints."
    if code == errno.EFBIG:
        return (f"A file there would exceed the largest this process may write (`ulimit -f`, a job's file size "
                f"limit); raise it, or make {where} a file system that allows it, for later checkpoints.")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"Make {where} writable again for later checkpoints."
    return "Later checkpoints are tried as usual."


def process_start(fallback: float) -> float:
    """When this process started, on the ``perf_counter`` clock (the overhead budget counts
    the whole process's wall time, as a user timing the script does)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            start_ticks = int(f.read().rsplit(b")", 1)[1].split()[19])
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return fallback
    return min(time.perf_counter() - max(age, 0.0), fallback)


# ----------------------------------------------------------------- persister


@dataclass
class _Done:
    block: int
    loop: str | None
    manifest: str
    nbytes: int


class Persister:
    """Writes frozen snapshots in the background and commits each finished iteration."""

    def __init__(self, objects: ObjectStore, writer: Any, run: int, run_id: str, policy: Policy) -> None:
        self.objects = objects
        self.writer = writer
        self.run = run
        self.run_id = run_id
        self.policy = policy
        self.queue: queue.Queue[Any] = queue.Queue()
        self.outstanding = 0
        #: Iterations submitted (committed or discarded) whose persist has not finished.
        self.iterations_in_flight = 0
        self._lock = threading.Lock()
        self._done: dict[int, list[_Done]] = {}
        self._failed: set[int] = set()
        self._warned = False
        self.committed: list[int] = []
        self.bytes_written = 0
        #: Checkpoints dropped because a tensor named by hash had changed since its earlier copy.
        self.dropped_unverified = 0
        #: (wall seconds of finished work, start of the item in progress or None), replaced as one.
        self._busy: tuple[float, float | None] = (0.0, None)
        self._iteration_wall = 0.0
        self._iteration_cpu = 0.0
        #: Files written for each iteration's checkpoint, flushed to disk before it is committed.
        self._written: dict[int, list[Any]] = {}
        self._thread = threading.Thread(target=self._run, name="hindlog-persist", daemon=True)
        self._thread.start()

    def idle(self) -> bool:
        return self.outstanding == 0

    def busy_seconds(self, now: float) -> float:
        """Wall seconds spent persisting so far, the item in progress included."""
        done, started = self._busy
        return done + (now - started if started is not None else 0.0)

    def submit(self, frozen: Frozen) -> None:
        with self._lock:
            self.outstanding += 1
        self.queue.put(frozen)

    def commit(self, iteration: int) -> None:
        with self._lock:
            self.outstanding += 1
            self.iterations_in_flight += 1
        self.queue.put(("commit", iteration))

    def discard(self, iteration: int) -> None:
        with self._lock:
            self.outstanding += 1
            self.iterations_in_flight += 1
        self.queue.put(("discard", iteration))

    def prepare(self, work: Any) -> None:
        """Run ``work()`` (preparation for later checkpoints) in the background."""
        with self._lock:
            self.outstanding += 1
        self.queue.put(("prepare", work))

    def close(self, timeout: float | None = None) -> None:
        self.queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            cpu0 = time.thread_time()
            wall0 = time.perf_counter()
            self._busy = (self._busy[0], wall0)
            try:
                if isinstance(item, Frozen):
                    self._persist(item)
                else:
                    action, iteration = item
                    if action == "commit":
                        self._commit(iteration)
                    elif action == "prepare":
                        try:
                            iteration()
                        except Exception:
                            pass  # only an optimisation: the checkpoint allocates what it needs
                    else:
                        self._done.pop(iteration, None)
                        self._failed.discard(iteration)
                        self._written.pop(iteration, None)
            except Exception as e:  # noqa: BLE001 - the persister must outlive any one checkpoint
                iteration = item.iteration if isinstance(item, Frozen) else item[1]
                self._done.pop(iteration, None)
                self._drop(iteration, e)
            finally:
                cpu = time.thread_time() - cpu0
                self.policy.charge(0.0, cpu, checkpoint=False)
                wall = time.perf_counter() - wall0
                self._busy = (self._busy[0] + wall, None)
                preparing = isinstance(item, tuple) and item[0] == "prepare"
                if not preparing:
                    self._iteration_wall += wall
                    self._iteration_cpu += cpu
                if not isinstance(item, Frozen) and not preparing:
                    # One iteration's checkpoint persisted: what it took, wall clock and CPU.
                    p = self.policy
                    w, c = self._iteration_wall, self._iteration_cpu
                    p.persist_wall = w if p.persist_wall is None else 0.7 * p.persist_wall + 0.3 * w
                    p.persist_cpu = c if p.persist_cpu is None else 0.7 * p.persist_cpu + 0.3 * c
                    self._iteration_wall = self._iteration_cpu = 0.0
                with self._lock:
                    self.outstanding -= 1
                    if isinstance(item, tuple) and item[0] in ("commit", "discard"):
                        self.iterations_in_flight -= 1

    def _persist(self, frozen: Frozen) -> None:
        if frozen.iteration in self._failed:
            return
        try:
            # Tensors named by the hash of their bytes (state.Freezer._by_name) stand for a copy
            # taken earlier in this iteration, written before this one: if the store has no such
            # object, the tensor changed in between and its bytes were never taken. Only this
            # checkpoint is dropped; the earlier ones of the iteration stand.
            if any(ft.by_name and not self.objects.exists(ft.content) for ft in frozen.tensors):
                self.dropped_unverified += 1
                _forget_unwritten(frozen)
                return
            # Objects written before and named again: each is marked used (gc keeps what a run
            # used since it started). Any the store no longer holds ends this checkpoint, and
            # every such tensor's next checkpoint writes it again.
            gone = [ft for ft in frozen.tensors
                    if (ft.by_name or ft.digest is not None) and not self.objects.touch(ft.content if ft.by_name else ft.digest)]
            if gone:
                raise _removed_meanwhile(gone)
            entries = []
            inline: list[bytes] = []
            for ft in frozen.tensors:
                if ft.by_name:
                    ft.digest = ft.content
                    # Usually written by this iteration's earlier checkpoint; if it was found in
                    # the store instead, its durability is still this commit's to ensure.
                    self._written.setdefault(frozen.iteration, []).append(self.objects.filename(ft.digest))
                    entries.append([ft.digest, ft.framework, ft.dtype, list(ft.shape)])
                    continue
                if ft.digest is None and ft.nbytes < INLINE_BYTES:
                    inline.append(bytes(self._bytes_of(ft)))
                    entries.append([f"@{len(inline) - 1}", ft.framework, ft.dtype, list(ft.shape)])
                    continue
                if ft.digest is None:
                    self._write_tensor(ft)
                    self._written.setdefault(frozen.iteration, []).append(self.objects.filename(ft.digest))
                entries.append([ft.digest, ft.framework, ft.dtype, list(ft.shape)])
            skeleton = self.objects.put(dumps_skeleton((frozen.skeleton, inline)), durable=False)
            written = self._written.setdefault(frozen.iteration, [])
            written.append(self.objects.filename(skeleton))
            manifest = {
                "format": FORMAT,
                "run": self.run_id,
                "iteration": frozen.iteration,
                "block": frozen.block,
                "loop": frozen.loop,
                "skeleton": skeleton,
                "tensors": entries,
            }
            name = self.objects.put(json.dumps(manifest).encode(), durable=False)
            written.append(self.objects.filename(name))
        except Exception as e:
            self._failed.add(frozen.iteration)
            self._done.pop(frozen.iteration, None)
            _forget_unwritten(frozen)
            self._drop(frozen.iteration, e)
            return
        self._done.setdefault(frozen.iteration, []).append(_Done(frozen.block, frozen.loop, name, frozen.nbytes))

    @staticmethod
    def _bytes_of(ft: FrozenTensor) -> memoryview:
        if ft.event is not None:
            wait_for_event(ft.event)
            ft.event = None
        data = ft.data
        if ft.framework == "torch":
            return memoryview(data.reshape(-1).view(_torch().uint8).numpy()) if data.numel() else memoryview(b"")
        return memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8)) if data.size else memoryview(b"")

    def _write_tensor(self, ft: FrozenTensor) -> None:
        view = self._bytes_of(ft)
        name = ft.content or digest(view)
        if not self.objects.have(name, view.nbytes):
            self.objects.write([view], name, durable=False)
            self.bytes_written += view.nbytes
        ft.digest = name
        ft.release()  # later checkpoints of an unchanged tensor reuse the digest

    def _commit(self, iteration: int) -> None:
        done = self._done.pop(iteration, None)
        written = self._written.pop(iteration, [])
        if iteration in self._failed or not done:
            self._failed.discard(iteration)
            # Tensors this iteration did write are reused by name by later checkpoints, which
            # only touch them: they are flushed now, as their own commit would have.
            try:
                fsync_together(written)
            except OSError:
                pass  # a later checkpoint that names one is checked by its hash when read
            return
        # The rows below are committed only once the iteration's data is on disk. The files
        # are flushed together here (not one fsync per write, and not a system-wide sync,
        # which would wait for every other process's writes too), with their directories.
        try:
            fsync_together(written)
        except OSError as e:
            self._drop(iteration, e)
            return
        self.writer.change("checkpoints", [(iteration, d.block, d.loop, d.manifest, d.nbytes) for d in done])
        self.committed.append(iteration)

    def _drop(self, iteration: int, error: Exception) -> None:
        """A checkpoint that could not be written: one warning a run, the run flagged, training goes on."""
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"hindlog: could not write the checkpoint of iteration {iteration} ({type(error).__name__}: {error}); "
                f"it is dropped and training goes on. {_write_advice(error, self.objects.root)}",
                RuntimeWarning,
            )
        self.writer.change("flag", "checkpoint_dropped")


def _removed_meanwhile(gone: list[FrozenTensor]) -> FileNotFoundError:
    """The error for a checkpoint that names objects earlier checkpoints wrote, which the store
    no longer holds (``hindlog gc`` found them unused before this checkpoint touched them).
    Each tensor's next checkpoint copies and writes it again instead of naming it."""
    for ft in gone:
        if ft.cache_entry is not None:
            ft.cache_entry.version = -1
    first = gone[0].content if gone[0].by_name else gone[0].digest
    return FileNotFoundError(
        errno.ENOENT, f"the stored copies of {len(gone)} tensor(s) it reuses (object {first}"
        f"{f' and {len(gone) - 1} more' if len(gone) > 1 else ''}) were removed meanwhile (by hindlog gc, which "
        "had found them unused); their next checkpoint writes them again")


def _forget_unwritten(frozen: Frozen) -> None:
    """A dropped checkpoint's copies were never written: later checkpoints must not reuse them.
    PyTorch copies go back to the pool (no other checkpoint can hold one whose hash is not
    known, ``state._unchanged``); a NumPy copy may be held by a later checkpoint (an unchanged
    array is recognised by its content), and is left to the garbage collector."""
    for ft in frozen.tensors:
        if ft.digest is not None:
            continue
        if ft.cache_entry is not None:
            ft.cache_entry.version = -1
        if ft.framework == "torch":
            ft.release()


#: Seconds this process spent importing torch to read a checkpoint (a resume reads its
#: checkpoint before the script runs): a script that imports torch would have paid them anyway.
TORCH_IMPORT_SECONDS = 0.0


def _torch() -> Any:
    global TORCH_IMPORT_SECONDS
    torch = sys.modules.get("torch")
    if torch is None:
        started = time.perf_counter()
        import torch

        TORCH_IMPORT_SECONDS += time.perf_counter() - started
    return torch


# ----------------------------------------------------------------- the checkpointer


class Checkpointer:
    """Hooks called by the recorder at loop boundaries; takes checkpoints per the policy."""

    def __init__(self, recorder: Any) -> None:
        self.recorder = recorder
        #: Shared with the recorder: hl.checkpoints adds to it.
        self.declared: dict[str, Declared] = recorder.declared
        self.freezer = Freezer()
        self.policy = Policy(recorder.epsilon, process_start(recorder._clock_start))
        # hindlog's own start-up and end count against the same budget as its checkpoints.
        self.policy.spent = recorder.startup_seconds + EXIT_SECONDS
        #: Nested-loop iterations charged so far (``NESTED_ITERATION_SECONDS`` each).
        self.nested_iterations_charged = 0
        #: The catalog writer's CPU seconds charged so far.
        self.writer_cpu_charged = 0.0
        self.persister = Persister(recorder.store.objects, recorder.writer, recorder.run, recorder.run_id, self.policy)
        self.active = False
        self._decided = True
        self._last = False
        self._iteration = 0
        self.main_frame: FrameType | None = None
        self._iter_hindlog = 0.0
        self._iter_start = 0.0
        self._iter_busy = 0.0
        self._iter_background = 0.0
        self._buffers_ready = False
        self._warned_undeclared = False
        self._warned_snapshot = False
        self._unpicklable: set[str] = set()
        self._noted_unrestorable: set[str] = set()
        self._noted_loops: set[str] = set()
        #: The main loop's ``LoopFacts.handed_on``, at the iteration end being frozen.
        self._handed_on: frozenset[str] = frozenset()
        #: Iterations the budget had room for, skipped because the previous persist still ran.
        self.skipped_busy = 0
        #: The latest snapshot at a nested loop's exit in this iteration: (its frame, the loop's
        #: line, the snapshot's generation), if the iteration's end may take its copies as they are.
        self._exit_snapshot: tuple[FrameType, int, int] | None = None
        #: Iteration-end snapshots that took the copies of the loop exit's (nothing to copy or hash).
        self.reused_exit_snapshots = 0
        self._adoption_checked = False
        self._graph_loops: set[str] = set()
        #: Nested loops ended, and whether a declared optimizer's gradients were left at one's end.
        self.block_exits = 0
        self.gradients_at_loop_exit = False
        #: The most bytes one snapshot held (pickled objects and optimizer state included).
        self.largest_snapshot = 0

    # --------------------------------------------------------- hooks

    def main_loop_started(self, name: str, frame: FrameType, iterable: Any) -> None:
        self.main_frame = frame
        try:
            self.policy.total = len(iterable)
        except TypeError:
            self.policy.total = None

    def iteration_begin(self, i: int) -> None:
        self._iter_start = time.perf_counter()
        self._iter_busy = self.persister.busy_seconds(self._iter_start)
        self._iter_background = self.policy.background_cpu
        self._iter_hindlog = 0.0
        self._iteration = i
        self._decided = False
        self.active = False
        self._exit_snapshot = None
        self._last = self.policy.total is not None and i == self.policy.total - 1

    def _may_snapshot(self) -> bool:
        """Whether to snapshot now. The iteration is decided at its first snapshot point, when the
        time elapsed so far is known; an iteration is skipped if the previous persist still runs."""
        if not self._decided:
            self._decided = True
            if self.policy.cost is None and self.policy.taken == 0:
                self.policy.estimate_first(self._state_bytes(), self._buffers_ready)
            nested = self.recorder.nested_iterations - self.nested_iterations_charged
            if nested > 0:
                self.nested_iterations_charged += nested
                self.policy.charge(nested * NESTED_ITERATION_SECONDS, checkpoint=False)
            # The writer's commits take CPU time from training as a persist does; they are charged
            # like blocked time, at their CPU time (they are not the persists the weight measures).
            writer_cpu = self.recorder.writer.cpu_seconds - self.writer_cpu_charged
            if writer_cpu > 0:
                self.writer_cpu_charged += writer_cpu
                self.policy.charge(writer_cpu, checkpoint=False)
            # The last iteration queues behind a running persist rather than being skipped, and
            # so does a small state's (one iteration at most).
            free = self.persister.idle() or self._last or (
                self.persister.iterations_in_flight <= 1
                and max(self._state_bytes(), self.largest_snapshot) <= QUEUE_BEHIND_BYTES)
            wanted = self.policy.decide(self._iteration)
            self.active = free and wanted
            if wanted and not free:
                self.skipped_busy += 1
            if not self.active and not self._buffers_ready and self.policy.taken == 0 and self.policy.epsilon > 0:
                self._prepare_buffers()
        return self.active

    def _prepare_buffers(self) -> None:
        """Have the persister map the snapshot buffers while training waits for the budget of
        the first checkpoint (optimizer state exists once the first iteration ran)."""
        self._buffers_ready = True
        torch = sys.modules.get("torch")
        if torch is None:
            return
        specs = []
        for d in self.declared.values():
            if d.kind in ("module", "stateful"):
                try:
                    specs.extend(tensor_specs(state_of(d), torch))
                except Exception:
                    return
        if specs:
            pool = self.freezer.pool
            # One copy of each tensor: a later snapshot point of the same iteration copies only the
            # tensors changed since the first (unchanged ones are taken as copied, or named by
            # hash), and those of another nested loop have buffers of their own. A tensor changed
            # again before the persister hands its buffer back gets a fresh one (its page faults
            # charged as blocked time, once: it is pooled after). A second copy of everything,
            # mapped ahead, cost the persister the page faults of the whole state again (most of
            # the 58 ms against 11 ms of a copy into fresh memory of 156 MB, bench/bench_persist.py)
            # for buffers such scripts never use.
            self.persister.prepare(lambda: pool.reserve(torch, specs, copies=1))

    def _state_bytes(self) -> int:
        total = 0
        for d in self.declared.values():
            obj = d.obj
            if d.kind == "module":
                total += sum(p.numel() * p.element_size() for p in obj.parameters()) * 2
            elif d.kind == "array":
                total += obj.nbytes
        return total

    def block_exit(self, i: int, block: int, loop: str, frame: FrameType, broke: bool = False, header: int | None = None) -> None:
        """A nested loop of iteration ``i`` ended (``broke``: by ``break``); ``header``: its
        ``for`` line (the frame's line, unless it ended by ``break``)."""
        self.block_exits += 1
        if not self.gradients_at_loop_exit:
            self._look_for_gradients()
        if not self._may_snapshot():
            return
        t0 = time.perf_counter()
        facts = sourceinfo.loop_facts(frame, header)
        if broke and facts is not None and facts.has_else:
            # Left by ``break``, its ``else:`` did not run; a replay that skipped the loop would
            # run it (a skipped loop ends as an empty one). Without a checkpoint, replay runs it.
            self._exit_snapshot = None
            return
        names = set(facts.live_after) | self._containers(frame, facts.mutated) | self._called_objects(frame, facts.called) \
            if facts else set()
        self._exit_snapshot = None
        frozen = self._freeze_or_drop(i, block, loop, frame, names)
        if frozen is None:
            return
        self.persister.submit(frozen)
        self.largest_snapshot = max(self.largest_snapshot, frozen.nbytes)
        if not self.freezer.named_by_hash:
            self._exit_snapshot = (frame, header if header is not None else frame.f_lineno, self.freezer.generation)
        self.charge_blocked(time.perf_counter() - t0)

    def iteration_end(self, i: int, frame: FrameType) -> None:
        t_end = time.perf_counter()
        persisting = self.persister.busy_seconds(t_end) - self._iter_busy
        if persisting <= 0 and not self.persister.idle():
            persisting = 1e-9  # work queued but not started: not a quiet iteration, no slowdown yet
        self.policy.observe(t_end - self._iter_start - self._iter_hindlog, persisting, self._iter_background)
        if self._may_snapshot():
            facts = sourceinfo.loop_facts(frame)
            if self._adopt_undeclared(frame, facts):
                self.persister.discard(i)  # this iteration's loop exits were copied without it
                self._exit_snapshot = None
                self.charge_blocked(time.perf_counter() - t_end)
                self.policy.charge(self._iter_hindlog)
                self.active = False
                self._decided = True
                return
            names = set(facts.live_after) | set(facts.carried) | self._containers(frame, facts.mutated) \
                | self._called_objects(frame, facts.called) if facts else set()
            # Between the last nested loop and here the code often only logs (``hl.log("loss",
            # loss.item())``): then nothing changed the state that loop's exit copied, and copying
            # or hashing it again (77 MB: about 15 ms of the fine-tuning shape's blocked time) is waste.
            exit_snapshot, self._exit_snapshot = self._exit_snapshot, None
            reuse = None
            if exit_snapshot is not None and exit_snapshot[0] is frame and sourceinfo.read_only_tail(frame, exit_snapshot[1]):
                reuse = exit_snapshot[2]
                self.reused_exit_snapshots += 1
            self._handed_on = facts.handed_on if facts else frozenset()
            frozen = self._freeze_or_drop(i, ITERATION_END, None, frame, names, reuse)
            if frozen is not None:
                self.persister.submit(frozen)
                self.largest_snapshot = max(self.largest_snapshot, frozen.nbytes)
                self.persister.commit(i)
                self.policy.taken += 1
            self.charge_blocked(time.perf_counter() - t_end)
            self.policy.charge(self._iter_hindlog)
            self._warn_undeclared(frame, facts)
        self.active = False
        self._decided = True

    def abandon_iteration(self, i: int) -> None:
        """The iteration did not complete (exception or break): its snapshots are not committed."""
        if self.active:
            self.persister.discard(i)
        self.active = False
        self._exit_snapshot = None  # holds the script's frame

    def close(self, timeout: float = 600.0) -> None:
        """Wait for the last persist (the run's end is delayed by it: counted as blocked time)."""
        busy = not self.persister.idle()
        t0 = time.perf_counter()
        self.persister.close(timeout)
        if busy:
            self.recorder.blocked += time.perf_counter() - t0

    # --------------------------------------------------------- helpers

    def charge_blocked(self, seconds: float) -> None:
        """Time hindlog held the training thread in this iteration (the policy's to charge)."""
        self._iter_hindlog += seconds
        self.recorder.blocked += seconds

    def _called_objects(self, frame: FrameType, names: frozenset[str]) -> set[str]:
        """The called names whose values are objects of the script's own class (``noise(shape)``,
        whose ``__call__`` may count or draw): not functions or classes, and not models, which
        have a ``state_dict`` to declare (and which hindlog warns of)."""
        f_locals = frame.f_locals
        out = set()
        for n in names:
            v = f_locals.get(n, frame.f_globals.get(n))
            try:
                self._note_called(frame, n, v, out)
            except Exception:  # noqa: BLE001 - as in _containers
                continue
        return out

    def _note_called(self, frame: FrameType, n: str, v: Any, out: set[str]) -> None:
        if isinstance(v, types.FunctionType):
            # (Not one this frame defines: the cells it shares with the frame are its locals.)
            if v.__closure__ and own_code(v) and v.__code__ not in frame.f_code.co_consts:
                # A closure a factory made (``bump = make_counter()``): its cells are its state.
                out.add(n + CLOSURE_SUFFIX)
        elif v is not None and not isinstance(v, type) and not callable(getattr(v, "state_dict", None)) \
                and self._own_object(v):
            out.add(n)

    def _own_object(self, v: Any) -> bool:
        """An object of the script's own class, or of a class of the project's modules whose
        attributes are plain data (a ``Meter`` counting in ``utils.py``): not one holding a file,
        a lock or a data set, which a checkpoint could not hold, or only at great cost."""
        cls = type(v)
        if not own_class(cls):
            return False
        if cls.__module__ == "__main__":
            return True
        attributes = getattr(v, "__dict__", None)
        return isinstance(attributes, dict) and all(_plain_data(a) for a in attributes.values())

    def _restorable_tensor(self, v: Any) -> bool:
        """A tensor the loop changes in place (a confusion matrix it fills), not a declared
        model's parameter or buffer reached under another name (``w = model.weight``), which
        the model's checkpoint restores in place: a copy would cut the name from the model."""
        import torch

        if isinstance(v, torch.nn.Parameter) or v.requires_grad or v._base is not None or v.layout != torch.strided:
            return False  # (a sparse tensor has no data pointer to compare)
        try:
            ptr = v.data_ptr()
        except RuntimeError:
            return False
        for d in self.declared.values():
            if d.kind == "module" and any(t.data_ptr() == ptr for t in itertools.chain(d.obj.parameters(), d.obj.buffers())):
                return False
        return True

    def _containers(self, frame: FrameType, names: frozenset[str]) -> set[str]:
        """The mutated names whose values are plain containers, user objects or iterators
        (``next(stream)``) worth restoring. An iterator that cannot be pickled is then named in
        the checkpoint as one it cannot restore."""
        out = set()
        f_locals = frame.f_locals
        own = frame_variables(frame)
        for n in names:
            v = f_locals.get(n) if own is None or n in own else frame.f_globals.get(n)  # (a module's list the loop appends to)
            try:
                if isinstance(v, (list, dict, set, collections.deque, np.ndarray)) or self._own_object(v) or _small_frame(v) \
                        or (is_tensor(v) and self._restorable_tensor(v)) or (
                        hasattr(type(v), "__next__") and not isinstance(v, io.IOBase)):  # (a file is the run's output)
                    out.add(n)
            except Exception:  # noqa: BLE001 - an object that cannot be looked at is not restored: training goes on
                continue
        return out

    def _freeze_or_drop(self, i: int, block: int, loop: str | None, frame: FrameType, names: set[str],
                        reuse: int | None = None) -> Frozen | None:
        """The snapshot, or None when taking it failed (host memory exhausted, a ``state_dict``
        that raised): then the iteration's checkpoint is dropped, the run flagged, and training
        goes on."""
        try:
            return self._freeze(i, block, loop, frame, names, reuse)
        except Exception as e:  # noqa: BLE001 - a failed snapshot must not stop training
            self.persister.discard(i)
            self.active = False
            self._exit_snapshot = None
            if not self._warned_snapshot:
                self._warned_snapshot = True
                warnings.warn(
                    f"hindlog: could not snapshot the training state in iteration {i} ({type(e).__name__}: {e}); "
                    "that checkpoint is dropped and training goes on.",
                    RuntimeWarning,
                )
            self.recorder.writer.change("flag", "checkpoint_dropped")
            return None

    def _freeze(self, i: int, block: int, loop: str | None, frame: FrameType, names: set[str], reuse: int | None = None) -> Frozen:
        tensors: list[FrozenTensor] = []
        # Not in the last iteration: a by-name checkpoint may be dropped, and the run's final
        # state must not depend on it.
        self.freezer.begin(None if self._last else i, reuse)
        freeze = self.freezer.freeze
        objects = {}
        kinds = {}
        ids = {id(d.held): name for name, d in self.declared.items()}
        for name, d in self.declared.items():
            if d.kind == "pickle":
                # A pickled object (a hands-free trainer's self) holds references to the other
                # declared objects, and its large arrays and tensors become deduplicated tensors.
                self.freezer.declared_ids = {k: v for k, v in ids.items() if v != name}
                objects[name] = self.freezer.pickle_with_refs(d.obj, tensors)
                self.freezer.declared_ids = {}
            else:
                objects[name] = freeze(state_of(d), tensors)
            kinds[name] = d.kind
        exclude = {id(d.held) for d in self.declared.values()}
        frame_locals = {}
        # A local holding declared objects (a trainer's self.model) keeps references to them.
        self.freezer.declared_ids = ids
        frame_values = capturable_locals(frame, names - self._unpicklable, exclude)
        for name, value in frame_values.items():
            mark = len(tensors)
            try:
                frame_locals[name] = freeze(value, tensors)
            except Exception:
                del tensors[mark:]
                self._unpicklable.add(name)
                then = ("replay will run the main loop from its first iteration instead of starting mid-run" if loop is None
                        else "replay will run the loops that assign or change it instead of skipping them")
                warnings.warn(
                    f"hindlog: the local {name!r} ({type(value).__name__}) cannot be checkpointed; {then}.",
                    RuntimeWarning,
                )
        self.freezer.declared_ids = {}
        rng = rng_state()
        # Python's generator state is a tuple of 625 ints, immutable: kept as it is, not walked.
        python_rng = rng.pop("python")
        rng = freeze(rng, tensors)
        rng["python"] = python_rng
        self.freezer.end()
        skeleton = {
            "objects": objects,
            "kinds": kinds,
            "rng": rng,
            "locals": frame_locals,
            "unrestorable": sorted(self._unpicklable & names),
            "position": i + 1,
            # Whose locals these are: a replay restores them only into that function's frame.
            "scope": frame_scope(frame),
        }
        if loop is not None and loop not in self._graph_loops and self._holds_graph(frame_values, names):
            # Log-probabilities a rollout loop collects for a ``backward()`` after it: a restored
            # copy has no graph to differentiate. Replay runs such a loop where the main loop's
            # own code calls ``backward()`` (replay.plan_run).
            self._graph_loops.add(loop)
            self.recorder.writer.change("info", {"graph_loops": sorted(self._graph_loops)})
        if loop is not None and skeleton["unrestorable"] and loop not in self._noted_loops:
            # Replay runs such a loop instead of skipping it (recorder._skipped_block): its plan says so.
            self._noted_loops.add(loop)
            self.recorder.writer.change("info", {"unrestorable_loops": sorted(self._noted_loops)})
        handed_on = set(skeleton["unrestorable"]) & self._handed_on if loop is None else set()
        if handed_on - self._noted_unrestorable:
            # What one iteration of the main loop hands to the next, which no iteration-end
            # checkpoint holds: a replay must not start after iteration 0 (replay.RunPlan.unrestorable).
            # (A local each iteration makes afresh, ``it = iter(loader)``, needs no restoring.)
            self._noted_unrestorable.update(handed_on)
            self.recorder.writer.change("info", {"unrestorable_locals": sorted(self._noted_unrestorable)})
        return Frozen(i, block, loop, skeleton, tensors)

    def _look_for_gradients(self) -> None:
        """Whether a declared optimizer's parameter holds a gradient as a nested loop ends. Never,
        in a run whose accumulation clears them before each loop's end (``if (k + 1) % accum == 0
        or k + 1 == steps``): its replay may skip loops, whatever the code's conditions suggest
        (``replay.plan_run``). A few microseconds, until one is seen."""
        try:
            for d in self.declared.values():
                if is_optimizer(d) and any(p.grad is not None for g in d.obj.param_groups for p in g["params"]):
                    self.gradients_at_loop_exit = True
                    self.recorder.writer.change("info", {"gradients_at_loop_exit": True})
                    return
        except Exception:  # noqa: BLE001 - the replay then follows the code's conditions
            self.gradients_at_loop_exit = True

    def _holds_graph(self, frame_values: dict[str, Any], names: set[str]) -> bool:
        """Whether the loop's locals, or a list a declared model holds (``policy.saved_log_probs``),
        hold tensors autograd computed."""
        if "torch" not in sys.modules:
            return False
        try:
            if any(_carries_graph(v) for v in frame_values.values()):
                return True
            return any(isinstance(v, list) and _carries_graph(v)
                       for d in self.declared.values() if d.kind == "module" for v in vars(d.obj).values())
        except Exception:  # noqa: BLE001 - only a replay's plan depends on it
            return False

    def _undeclared(self, frame: FrameType, facts: Any) -> dict[str, Any]:
        """Objects with a ``state_dict`` (or random generators) that the main loop changes and
        ``hl.checkpoints`` does not hold, by name."""
        declared_ids = {id(d.held) for d in self.declared.values()}
        for d in self.declared.values():
            if d.kind == "module":  # (a declared model's backbone is in its state)
                declared_ids.update(id(m) for m in d.obj.modules())
        scope = frame.f_locals
        undeclared = {
            n: scope[n] for n in facts.mutated
            if n in scope and (callable(getattr(scope[n], "state_dict", None)) or is_random_generator(scope[n])
                               or _estimator(scope[n]))
            and id(scope[n]) not in declared_ids and self._changed_since_start(scope[n], declared_ids)
        }
        # A model the loop only calls (``model(x)``), trained by an optimizer declared or found above.
        everything = {**frame.f_globals, **scope}
        holders = {**{d.name: d.held for d in self.declared.values()}, **undeclared}
        undeclared.update({n: everything[n] for n in trained_by(holders, everything)
                           if id(everything[n]) not in declared_ids})
        return undeclared

    def _changed_since_start(self, obj: Any, declared_ids: set[int]) -> bool:
        """For a torch module the main loop calls a method of: whether its parameters or buffers
        were written since the main loop began (an EMA model it updates), and it is not a wrapper
        of a declared model (``DistributedDataParallel(model)``): a frozen teacher it only puts in
        eval mode is neither state to hold nor worth copying at every checkpoint."""
        torch = sys.modules.get("torch")
        if torch is None or not isinstance(obj, torch.nn.Module):
            return True
        try:
            if any(id(m) in declared_ids for m in obj.modules()):
                return False
            before = self.recorder.module_versions.get(id(obj))
            return before is None or before != module_version(obj)
        except Exception:  # noqa: BLE001 - held, as before
            return True

    def _adopt_undeclared(self, frame: FrameType, facts: Any) -> bool:
        """The state ``hl.checkpoints`` does not name (a forgotten scheduler, the model a declared
        optimizer trains; under ``hindlog run``, an EMA model a function two calls down updates)
        is declared once the first iteration shows that the main loop changes it: True if some
        was. That iteration gets no checkpoint (what its loops' exits copied lacks it); its
        replay and resume declare it too (``adopted_state``). Only in the run that records."""
        if self._adoption_checked or facts is None or self.recorder.controller is not None:
            return False
        self._adoption_checked = True
        adopted = {}
        for name, obj in sorted(self._undeclared(frame, facts).items()):
            try:
                adopted[name] = declare(name, obj)
            except TypeError:
                continue  # named in the warning that follows
        if not adopted:
            return False
        self.recorder.declared.update(adopted)
        self.recorder._note_state()
        self.recorder.writer.change("info", {"adopted_state": sorted(adopted)})
        names = ", ".join(sorted(adopted))
        them = "it" if len(adopted) == 1 else "them"
        if getattr(sys.modules.get("hindlog.handsfree"), "RUNNING", False):
            print(f"hindlog: checkpointing {names} as well: the main loop changes {them} (seen in its first iteration)",
                  file=sys.stderr)
        else:
            first = sorted(adopted)[0]
            # Shown at the user's main loop, and kept for ``hindlog show``.
            warnings.warn_explicit(
                f"hindlog: checkpointing {names} as well: the main loop changes {them} and hl.checkpoints does not "
                f"name {them} (seen in its first iteration, which has no checkpoint). Add {them}: "
                f"hl.checkpoints({first}={first}, ...).",
                RuntimeWarning, frame.f_code.co_filename, frame.f_lineno,
            )
        return True

    def _warn_undeclared(self, frame: FrameType, facts: Any) -> None:
        if self._warned_undeclared or facts is None:
            return
        self._warned_undeclared = True
        missing = sorted(self._undeclared(frame, facts))
        if missing:
            them = "it" if len(missing) == 1 else "them"
            if getattr(sys.modules.get("hindlog.handsfree"), "RUNNING", False):
                advice = (f"hindlog run cannot checkpoint {them}: values computed from {them} after a loop a replay "
                          "skips may be wrong, and the replay notices only where the run printed them")
            else:
                advice = f"Add {them}: hl.checkpoints({missing[0]}={missing[0]}, ...)."
            # Shown at the user's main loop, not at this line.
            warnings.warn_explicit(
                f"hindlog: the main loop changes {', '.join(missing)} but the checkpoints do not hold "
                f"{them}; replay and resume cannot restore {'its' if len(missing) == 1 else 'their'} state. {advice}",
                RuntimeWarning, frame.f_code.co_filename, frame.f_lineno,
            )


def module_version(module: Any) -> int:
    """The sum of the version counters of a torch module's parameters and buffers: it moves
    when any of them is written in place (an optimizer's step, an EMA update, a copy)."""
    return sum(t._version for t in itertools.chain(module.parameters(), module.buffers()))


def _carries_graph(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is, or holds in a list, tuple or dict, a tensor autograd computed."""
    torch = sys.modules.get("torch")
    if torch is None or depth > 2:
        return False
    if isinstance(value, torch.Tensor):
        return value.grad_fn is not None
    if isinstance(value, (list, tuple, collections.deque)) and len(value) <= _PLAIN_CONTAINER_ITEMS:
        return any(_carries_graph(v, depth + 1) for v in value)
    if isinstance(value, dict) and len(value) <= _PLAIN_CONTAINER_ITEMS:
        return any(_carries_graph(v, depth + 1) for v in value.values())
    return False


def _estimator(value: Any) -> bool:
    """A scikit-learn style estimator (``partial_fit`` or ``fit`` with ``get_params``): trained
    state without a ``state_dict``."""
    return not isinstance(value, type) and (callable(getattr(value, "partial_fit", None)) or (
        callable(getattr(value, "fit", None)) and callable(getattr(value, "get_params", None))))


def _plain_data(value: Any) -> bool:
    """Numbers, strings, arrays, tensors, random generators and not too large containers: what
    an object of the project's own class may hold for its checkpoint to hold it (not walked into)."""
    if value is None or isinstance(value, (int, float, str, bool, bytes, np.ndarray, np.generic)) or is_tensor(value) \
            or is_random_generator(value):
        return True
    return isinstance(value, (list, tuple, dict, set, collections.deque)) and len(value) <= _PLAIN_CONTAINER_ITEMS


_PLAIN_CONTAINER_ITEMS = 10_000


def _small_frame(value: Any) -> bool:
    """A pandas DataFrame or Series of at most a million cells (a metrics table the loop fills:
    ``metrics.loc[len(metrics)] = row``), not a data set."""
    module = type(value).__module__ or ""
    if module.split(".")[0] != "pandas":
        return False
    shape = getattr(value, "shape", None)
    if not isinstance(shape, tuple):
        return False
    cells = 1
    for n in shape:
        cells *= n
    # Columns of Python objects (text) pickle slowly: 100k x 10 of them took a second.
    kinds = value.dtypes if len(shape) == 2 else [value.dtype]
    # (pandas 3 keeps text as its own ``str`` dtype, whose kind is "O" as a column of objects')
    return cells <= (10_000 if any(getattr(kind, "kind", None) == "O" for kind in kinds) else 1_000_000)


# ----------------------------------------------------------------- reading checkpoints


@dataclass
class Loaded:
    """A checkpoint read back: thawed declared states, kinds, RNG state and locals."""

    iteration: int
    block: int
    loop: str | None
    objects: dict[str, Any]
    kinds: dict[str, str]
    rng: dict[str, Any]
    locals: dict[str, Any]
    unrestorable: list[str]
    position: int
    #: The function (qualified name) whose locals ``locals`` are; None in checkpoints taken
    #: before it was recorded.
    scope: str | None = None

    def locals_fit(self, frame: FrameType, wrapped: bool) -> bool:
        """Whether ``locals`` are ``frame``'s to restore. ``wrapped``: the loop was advanced through
        a Python-level wrapper (``tqdm(hl.loop(...))``), whose frame an older hindlog took them from."""
        return (not wrapped) if self.scope is None else self.scope == frame_scope(frame)


def frame_scope(frame: FrameType) -> str:
    """The qualified name of the function ``frame`` runs (``Trainer.fit``, ``<module>``)."""
    code = frame.f_code
    return getattr(code, "co_qualname", code.co_name)  # (co_qualname: Python 3.11+)


def read_checkpoint(objects: ObjectStore, manifest_name: str) -> Loaded:
    """Read and verify one checkpoint; raise CorruptObject naming it if any part is bad."""
    try:
        manifest = json.loads(objects.get(manifest_name))
        objects.prefetch(tensor_objects(manifest))
        skeleton, inline = pickle.loads(objects.get(manifest["skeleton"]))
        tensors = [_load_tensor(objects, *entry, inline=inline) for entry in manifest["tensors"]]
    except CorruptObject as e:
        raise CorruptObject(f"checkpoint {manifest_name[:12]} cannot be read: {e}") from None
    return Loaded(
        manifest["iteration"],
        manifest["block"],
        manifest["loop"],
        thaw(skeleton["objects"], tensors),
        skeleton["kinds"],
        thaw(skeleton["rng"], tensors),
        thaw(skeleton["locals"], tensors),
        skeleton.get("unrestorable", []),
        skeleton["position"],
        skeleton.get("scope"),
    )


def checkpoint_skeleton(objects: ObjectStore, manifest_name: str) -> dict[str, Any] | None:
    """A checkpoint's declared objects without their tensors (``TensorRef`` in their place):
    what its optimizers' parameter groups were, say, read without reading the checkpoint.
    None if it cannot be read (``read_checkpoint`` reports why)."""
    try:
        manifest = json.loads(objects.get(manifest_name))
        skeleton, _inline = pickle.loads(objects.get(manifest["skeleton"]))
        return skeleton["objects"]
    except (CorruptObject, OSError, ValueError, KeyError, TypeError, pickle.UnpicklingError):
        return None


def tensor_objects(manifest: dict[str, Any]) -> list[str]:
    """The names of the objects a checkpoint's tensors are stored in (inline ones excluded)."""
    return [entry[0] for entry in manifest["tensors"] if not entry[0].startswith("@")]


def prefetch_checkpoint(objects: ObjectStore, manifest_name: str, seen: set[str] | None = None) -> int:
    """Start reading a checkpoint that will be restored soon (see ``ObjectStore.prefetch``;
    the call itself takes a while for large checkpoints, so callers run it in a thread).
    Objects in ``seen`` are skipped, and the others added to it; the bytes announced."""
    seen = set() if seen is None else seen
    try:
        manifest = json.loads(objects.get(manifest_name, verify=False))
        names = [n for n in dict.fromkeys([manifest["skeleton"], *tensor_objects(manifest)]) if n not in seen]
        seen.update(names)
        objects.prefetch(names)
        return sum(objects.size(n) for n in names)
    except (CorruptObject, OSError, ValueError, KeyError, TypeError, AttributeError):
        return 0  # read_checkpoint reports a bad checkpoint when it is restored


def prefetch_checkpoints(objects: ObjectStore, manifests: list[str], budget: int) -> int:
    """Announce checkpoints in this order until ``budget`` bytes are announced; the bytes announced.

    Replay runs it in a thread as it starts its workers: the disk reads the first
    checkpoints while each worker starts its interpreter and imports its libraries
    (seconds, for torch). The budget keeps pages from being evicted again before use."""
    announced = 0
    seen: set[str] = set()
    for name in manifests:
        if announced >= budget:
            break
        announced += prefetch_checkpoint(objects, name, seen)
    return announced


def prefetch_in_background(fn: Any, *args: Any) -> None:
    """Run a prefetch in a daemon thread: announcing a large file queues its reads, which
    takes time the caller need not wait for (``posix_fadvise`` releases the GIL)."""
    threading.Thread(target=fn, args=args, name="hindlog-prefetch", daemon=True).start()


def prefetch_budget() -> int:
    """A quarter of the memory the kernel reports as available, at most 4 GiB (1 GiB if unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return min(int(line.split()[1]) * 1024 // 4, 4 << 30)
    except (OSError, ValueError, IndexError):
        pass
    return 1 << 30


def _load_tensor(objects: ObjectStore, name: str, framework: str, dtype: str, shape: list[int], inline: list[bytes]) -> Any:
    if name.startswith("@"):
        raw = np.frombuffer(bytearray(inline[int(name[1:])]), dtype=np.uint8)
        return _typed(raw, framework, dtype, shape)
    path = objects.path(name)
    if not path.exists():
        raise CorruptObject(f"object {name[:12]} is missing")
    size = path.stat().st_size
    # A private copy-on-write map: no copy unless the caller writes, and writable for optimizers.
    raw = np.memmap(path, dtype=np.uint8, mode="c") if size >= 1 << 20 else np.fromfile(path, dtype=np.uint8)
    if name not in _verified:
        if not matches(name, memoryview(raw)):
            raise CorruptObject(f"object {name[:12]} is corrupt (its content does not match its hash)")
        if remember_verified:
            _verified.add(name)
    return _typed(raw, framework, dtype, shape)


#: Objects this process has already verified. Objects are immutable, so a replay worker,
#: which reads many checkpoints that share tensors (frozen layers, a model unchanged
#: between two loops), hashes each once; it turns ``remember_verified`` on.
_verified: set[str] = set()
remember_verified = False


def _typed(raw: np.ndarray, framework: str, dtype: str, shape: list[int]) -> Any:
    if framework == "numpy":
        return raw.view(np.dtype(dtype)).reshape(shape)
    torch = _torch()
    t = torch.from_numpy(np.asarray(raw)) if raw.size else torch.empty(0, dtype=torch.uint8)
    return t.view(getattr(torch, dtype)).reshape(shape)


def checkpoint_rows(conn: Any, run: int) -> dict[int, dict[int, tuple[str | None, str]]]:
    """``{iteration: {block: (loop, manifest)}}`` for a run."""
    out: dict[int, dict[int, tuple[str | None, str]]] = {}
    for it, block, loop, manifest, _nbytes in catalog.list_checkpoints(conn, run):
        out.setdefault(it, {})[block] = (loop, manifest)
    return out


def keep_checkpoints(rows: dict[int, dict[int, Any]], keep: set[tuple[int, int]] | list[list[int]] | None) -> dict[int, dict[int, Any]]:
    """``rows`` (``checkpoint_rows``) less the checkpoints not in ``keep`` (None: all kept)."""
    if keep is None:
        return rows
    kept = {tuple(k) for k in keep}
    out = {i: {b: e for b, e in blocks.items() if (i, b) in kept} for i, blocks in rows.items()}
    return {i: blocks for i, blocks in out.items() if blocks}


def skippable_blocks(rows: dict[int, dict[int, tuple[str | None, str]]], start: int, end: int, probed: set[str]) -> list[tuple[int, int]]:
    """``(iteration, block)`` of the nested-loop checkpoints a replay of iterations
    [start, end) may restore instead of running the loop, in the order it meets them
    (the loops in ``probed`` run)."""
    return sorted((i, b) for i, blocks in rows.items() if start <= i < end
                  for b, (loop, _) in blocks.items() if b >= 0 and loop not in probed)


def latest_readable(objects: ObjectStore, rows: dict[int, dict[int, tuple[str | None, str]]], at_most: int | None = None) -> Loaded | None:
    """The iteration-end checkpoint of the latest iteration (at most ``at_most``) that reads back intact."""
    for it in sorted(rows, reverse=True):
        if at_most is not None and it > at_most:
            continue
        entry = rows[it].get(ITERATION_END)
        if entry is None:
            continue
        try:
            return read_checkpoint(objects, entry[1])
        except CorruptObject as e:
            warnings.warn(f"hindlog: the checkpoint of iteration {it} is damaged ({e}); falling back to an earlier one",
                          RuntimeWarning)
    return None


def check_declared(declared: dict[str, Declared], loaded: Loaded) -> None:
    missing = [n for n in declared if n not in loaded.objects]
    if missing:
        raise CheckpointError(
            f"the checkpoint of iteration {loaded.iteration} holds no state for {', '.join(missing)} "
            f"(it holds {', '.join(loaded.objects) or 'nothing'})"
        )
