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
- pages: the pooled copy, XXH3 and the ``O_DIRECT`` write again, from buffers in
  small (4 KB) pages against hindlog's, whose whole huge pages ask for transparent
  huge pages (``state.page_aligned``): each pass over 156 MB touches 38,000 small
  pages and 74 huge ones;
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


def small_pages(nbytes: int) -> np.ndarray:
    """A page-aligned buffer in small pages, mapped now (what ``page_aligned`` gave before it
    asked for huge pages)."""
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
    return np.frombuffer(mmap.mmap(-1, nbytes, flags=flags), dtype=np.uint8)


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
    params = torch.nn.Parameter(torch.randn(n))
    opt = torch.optim.Adam([params], lr=1e-3)
    params.grad = torch.randn(n)
    opt.step()
    tensors = [params.data, *opt.state[params].values()]
    tensors = [t for t in tensors if t.numel() > 1]
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    rows: dict[str, dict[str, float]] = {}

    rows["snapshot: copy into fresh memory"] = measure(lambda: [t.clone() for t in tensors], repeats)
    huge_before = huge_pages_kb()
    pool = [torch.from_numpy(page_aligned(t.numel() * 4, populate=True)).view(torch.float32) for t in tensors]
    huge_after = huge_pages_kb()
    rows["snapshot: copy into pooled buffers"] = measure(lambda: [b.copy_(t) for b, t in zip(pool, tensors)], repeats)
    views = [memoryview(b.numpy().view(np.uint8)) for b in pool]
    small = [torch.from_numpy(small_pages(t.numel() * 4)).view(torch.float32) for t in tensors]
    rows["pages: copy into pooled buffers, small pages"] = measure(lambda: [b.copy_(t) for b, t in zip(small, tensors)], repeats)
    rows["pages: copy into pooled buffers, huge pages"] = measure(lambda: [b.copy_(t) for b, t in zip(pool, tensors)], repeats)
    small_views = [memoryview(b.numpy().view(np.uint8)) for b in small]
    rows["pages: XXH3-128, small pages"] = measure(lambda: [xxhash.xxh3_128_hexdigest(v) for v in small_views], repeats)
    rows["pages: XXH3-128, huge pages"] = measure(lambda: [xxhash.xxh3_128_hexdigest(v) for v in views], repeats)
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
        rows["pages: O_DIRECT write + fsync, small pages"] = measure(lambda: write(True, small_views), repeats)
        rows["pages: O_DIRECT write + fsync, huge pages"] = measure(lambda: write(True), repeats)
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
