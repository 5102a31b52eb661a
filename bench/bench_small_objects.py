"""Benchmark: the CPU time of writing a small checkpoint's files, the persister's cost on small states.

    .venv/bin/python bench/bench_small_objects.py [--rounds 5] [--baseline-src PATH]

A checkpoint of a small state (a scikit-learn estimator, a NumPy model, loop
counters) is a few small objects: the pickled skeleton, the manifest, an array
or two. The persister thread writes them while training runs, and it needs the
GIL for its Python work, so its CPU time per object is taken from training
whatever the number of cores. Each round writes, in a fresh store, 400 objects
of 2.5 KB (a skeleton) and 40 of 130 KB (a 16,000-element index array), as
``ObjectStore.put`` writes them during a persist (no fsync; the commit's fsync
is timed apart, per file). CPU time of the writing thread, per object.

``--baseline-src`` measures another checkout's ``src`` (a git worktree of an
earlier commit) in the same run, the order alternating round by round, each
in its own process.

Results: bench/results/small-objects.json and a markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, compare_rounds, median, run_child, save_comparison  # noqa: E402

#: Run in a child process with the ``src`` under test first on sys.path.
CHILD = r"""
import json, os, sys, tempfile, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from hindlog.objects import ObjectStore

out = {}
with tempfile.TemporaryDirectory(dir=sys.argv[2]) as tmp:
    for label, size, count in (("2.5 KB", 2500, 400), ("130 KB", 130_000, 40)):
        store = ObjectStore(Path(tmp) / label.replace(" ", ""))
        blobs = [os.urandom(size) for _ in range(count)]
        c0, w0 = time.thread_time(), time.perf_counter()
        names = [store.put(b, durable=False) for b in blobs]
        out[label] = {"cpu_us": (time.thread_time() - c0) / count * 1e6, "wall_us": (time.perf_counter() - w0) / count * 1e6}
        c0, w0 = time.thread_time(), time.perf_counter()
        for n in names:
            fd = os.open(store.path(n), os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        out[label]["fsync_cpu_us"] = (time.thread_time() - c0) / count * 1e6
        out[label]["fsync_wall_us"] = (time.perf_counter() - w0) / count * 1e6
print(json.dumps(out))
"""


def measure(src: Path) -> dict[str, dict[str, float]]:
    return run_child(CHILD, str(src), str(ROOT / "bench"))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--baseline-src", type=Path, help="another checkout's src directory, measured alternately")
    args = p.parse_args()
    rounds = compare_rounds(args.baseline_src, args.rounds, measure,
                            lambda m: ", ".join(f"{k} {v['cpu_us']:.0f} us" for k, v in m.items()))
    results = []
    for label, runs in rounds.items():
        for size in runs[0]:
            results.append({"source": label, "object": size,
                            **{m: median([run[size][m] for run in runs]) for m in ("cpu_us", "wall_us", "fsync_cpu_us", "fsync_wall_us")},
                            "cpu_us_rounds": [run[size]["cpu_us"] for run in runs]})
    path = save_comparison("small-objects", "bench/bench_small_objects.py", args.rounds, args.baseline_src, results)
    print(f"\nWriting one small object, median of {args.rounds} rounds (microseconds):\n")
    print("| source | object | CPU | wall | fsync CPU | fsync wall |\n|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['source']} | {r['object']} | {r['cpu_us']:.0f} | {r['wall_us']:.0f} | {r['fsync_cpu_us']:.0f} | {r['fsync_wall_us']:.0f} |")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
