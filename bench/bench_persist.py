"""Benchmark: the pieces of one checkpoint of the fine-tuning shape, to choose how to persist.

    .venv/bin/python bench/bench_persist.py [--mb 156] [--repeats 5] [--quick]

The state is a model plus Adam's two moments, ``--mb`` MB in all (the
fine-tuning workload's 52 MB MLP gives 156 MB). Each piece is timed ``--repeats``
times (median), as wall seconds and as CPU seconds of the thread doing it (what
it takes away from training on a machine whose cores training fills):

- snapshot: copying the state into fresh memory, and into pooled page-aligned
  buffers (hindlog's ``BufferPool``): the only part that blocks training;
- hash: SHA-256 and XXH3-128 of the snapshot;
- write: a buffered write (page cache) and an ``O_DIRECT`` write of the snapshot,
  each followed by fsync, as ``ObjectStore`` writes them; ``torch.save`` of the
  same state for reference;
- pages: buffers in small (4 KB) pages, hindlog's (``state.page_aligned``), against
  buffers whose whole huge pages ask for transparent huge pages (``madvise``): the
  cost of mapping them (the first time in this process, before anything else, and
  again), then the pooled copy, XXH3 and the ``O_DIRECT`` write from each (a pass
  over 156 MB touches 38,000 small pages or 74 huge ones);
- fork: what a forked writer would cost the training process: the fork itself,
  and the slowdown of the optimizer step that follows it (copy-on-write faults on
  every page the step writes).

Results: bench/results/persist.json and a markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import mmap
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import xxhash

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, median, save  # noqa: E402

sys.path.insert(0, str(ROOT / "src"))
from hindlog.objects import ObjectStore  # noqa: E402
from hindlog.state import page_aligned  # noqa: E402


HUGE_PAGE = 2 << 20


def huge_pages(nbytes: int) -> np.ndarray:
    """A buffer that starts on a huge-page boundary, whose whole huge pages ask for transparent
    huge pages, mapped now (by a write to each page)."""
    region = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    whole = np.frombuffer(region, dtype=np.uint8)
    start = -whole.ctypes.data % HUGE_PAGE
    if hasattr(mmap, "MADV_HUGEPAGE"):
        region.madvise(mmap.MADV_HUGEPAGE, start, nbytes - nbytes % HUGE_PAGE)
    out = whole[start : start + nbytes]
    out[:: mmap.PAGESIZE] = 0
    return out


def huge_pages_kb() -> int | None:
    """This process's anonymous memory in transparent huge pages (Linux), in kB."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("AnonHugePages:"))
    except (OSError, StopIteration):
        return None


def timed(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - w, time.thread_time() - c


def measure(fn, repeats: int, setup=None) -> dict[str, float]:
    walls, cpus = [], []
    for _ in range(repeats):
        if setup:
            setup()
        w, c = timed(fn)
        walls.append(w)
        cpus.append(c)
    return {"wall_s": median(walls), "cpu_s": median(cpus)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mb", type=float, default=156.0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="3 repeats")
    args = p.parse_args()
    repeats = 3 if args.quick else args.repeats
    n = int(args.mb * 1e6 / 4 / 3)
    # Before anything else: the kernel may have to compact memory to find the first huge pages.
    first_huge = timed(lambda: [huge_pages(n * 4) for _ in range(3)])
    params = torch.nn.Parameter(torch.randn(n))
    opt = torch.optim.Adam([params], lr=1e-3)
    params.grad = torch.randn(n)
    opt.step()
    tensors = [params.data, *opt.state[params].values()]
    tensors = [t for t in tensors if t.numel() > 1]
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    rows: dict[str, dict[str, float]] = {}

    rows["snapshot: copy into fresh memory"] = measure(lambda: [t.clone() for t in tensors], repeats)
    pool = [torch.from_numpy(page_aligned(t.numel() * 4, populate=True)).view(torch.float32) for t in tensors]
    rows["snapshot: copy into pooled buffers"] = measure(lambda: [b.copy_(t) for b, t in zip(pool, tensors)], repeats)
    views = [memoryview(b.numpy().view(np.uint8)) for b in pool]
    # Each pair below is measured back to back (the small-page rows repeat the ones above), so
    # that a drift of this shared machine's speed falls on both alike.
    rows["pages: map and populate, huge pages, the first time in this process"] = {"wall_s": first_huge[0], "cpu_s": first_huge[1]}
    rows["pages: map and populate, small pages"] = measure(lambda: [page_aligned(t.numel() * 4, populate=True) for t in tensors], repeats)
    rows["pages: map and populate, huge pages"] = measure(lambda: [huge_pages(t.numel() * 4) for t in tensors], repeats)
    huge_before = huge_pages_kb()
    huge = [torch.from_numpy(huge_pages(t.numel() * 4)).view(torch.float32) for t in tensors]
    huge_after = huge_pages_kb()
    rows["pages: copy into pooled buffers, small pages"] = measure(lambda: [b.copy_(t) for b, t in zip(pool, tensors)], repeats)
    rows["pages: copy into pooled buffers, huge pages"] = measure(lambda: [b.copy_(t) for b, t in zip(huge, tensors)], repeats)
    huge_views = [memoryview(b.numpy().view(np.uint8)) for b in huge]
    rows["pages: XXH3-128, small pages"] = measure(lambda: [xxhash.xxh3_128_hexdigest(v) for v in views], repeats)
    rows["pages: XXH3-128, huge pages"] = measure(lambda: [xxhash.xxh3_128_hexdigest(v) for v in huge_views], repeats)
    rows["hash: SHA-256"] = measure(lambda: [hashlib.sha256(v).hexdigest() for v in views], repeats)
    rows["hash: XXH3-128"] = measure(lambda: [xxhash.xxh3_128_hexdigest(v) for v in views], repeats)

    with tempfile.TemporaryDirectory(dir=ROOT / "bench") as tmp:
        def write(direct: bool, buffers: list[memoryview] = views) -> None:
            store = ObjectStore(Path(tmp) / ("direct" if direct else "buffered"))
            ObjectStore.direct_io = direct
            for k, v in enumerate(buffers):
                store.write([v], f"{time.perf_counter_ns():x}{k:02d}".ljust(32, "0"), durable=True)

        rows["write + fsync: buffered"] = measure(lambda: write(False), repeats)
        rows["write + fsync: O_DIRECT"] = measure(lambda: write(True), repeats)
        rows["pages: O_DIRECT write + fsync, small pages"] = measure(lambda: write(True), repeats)
        rows["pages: O_DIRECT write + fsync, huge pages"] = measure(lambda: write(True, huge_views), repeats)
        ObjectStore.direct_io = hasattr(os, "O_DIRECT")
        target = Path(tmp) / "state.pt"

        def save_torch() -> None:
            with open(target, "wb") as f:
                torch.save(opt.state_dict() | {"model": params.data}, f)
                f.flush()
                os.fsync(f.fileno())

        rows["torch.save + fsync (reference)"] = measure(save_torch, repeats)

    def step() -> None:
        params.grad = torch.randn(n)
        opt.step()

    rows["optimizer step (no fork)"] = measure(step, repeats)
    fork_s, step_after = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            time.sleep(2.0)
            os._exit(0)
        fork_s.append(time.perf_counter() - t0)
        step_after.append(timed(step)[0])
        os.waitpid(pid, 0)
    rows["fork (the forked writer's cost to training)"] = {"wall_s": median(fork_s), "cpu_s": median(fork_s)}
    rows["optimizer step right after a fork"] = {"wall_s": median(step_after), "cpu_s": float("nan")}

    data = {"benchmark": "persist", "command": " ".join(["bench/bench_persist.py", *sys.argv[1:]]),
            "machine": machine(), "state_mb": nbytes / 1e6, "repeats": repeats,
            "huge_pages_mb": None if huge_before is None or huge_after is None else (huge_after - huge_before) / 1024,
            "results": [
                {"piece": k, **v} for k, v in rows.items()]}
    path = save("persist" + ("-quick" if args.quick else ""), data)
    print(f"\nOne checkpoint of {nbytes / 1e6:.0f} MB (model + Adam moments), median of {repeats}:\n")
    print("| piece | wall (ms) | CPU of its thread (ms) |\n|---|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v['wall_s'] * 1e3:.1f} | {v['cpu_s'] * 1e3:.1f} |")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
