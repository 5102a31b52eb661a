"""Benchmark: replay with the checkpoints on disk only (cold page cache) against a warm one.

    sudo-capable: .venv/bin/python bench/bench_cold_replay.py [--rounds 5] [--workload finetune]
        [--epsilon 0.1] [--baseline-src PATH] [--out NAME]

Checkpoint data are written around the page cache (``O_DIRECT``), so a replay
right after the record, like one days later, reads every checkpoint it
restores from disk. This records the workload once (with ``--epsilon``, 0.1
by default, so that most iterations have a checkpoint and reading them
matters), adds bench_replay's main-loop statement, then per round:

- a cold replay: the page cache dropped first (``/proc/sys/vm/drop_caches``,
  which needs root; the script says so and stops without it), which also
  drops the interpreter's and torch's files, as after a reboot;
- a warm replay, everything cached;
- ``cat`` of the store's object files after dropping the cache: how fast
  this disk reads them, the floor for reading them during a replay.

``--baseline-src PATH`` also replays with another hindlog source tree
(``PYTHONPATH=PATH``, e.g. a ``git worktree`` of an earlier commit), cold,
in the same rounds, alternating with the current one: a before/after
comparison on one machine state. Replays use one worker.
Results: bench/results/cold-replay.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_replay import CASES  # noqa: E402
from common import GIT_ENV, PYTHON, STEADY_MALLOC, WORKLOADS, cleanup, machine, new_project, save, script_args_env, timed  # noqa: E402

DROP = Path("/proc/sys/vm/drop_caches")
REPLAY = "import sys; from hindlog.cli import main; sys.exit(main())"


def drop_caches() -> None:
    os.sync()
    DROP.write_text("1\n")


def replay(project: Path, script: str, env: dict[str, str], src: str | None) -> float:
    run_env = {**env, **({"PYTHONPATH": src} if src else {})}
    t0 = time.perf_counter()
    out = subprocess.run([PYTHON, "-c", REPLAY, "replay", script, "--workers", "1"], cwd=project,
                         env={**os.environ, **GIT_ENV, **run_env}, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if out.returncode != 0 or "diverged" in out.stdout + out.stderr:
        raise RuntimeError(f"replay failed or diverged:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return elapsed


def read_objects(store: Path) -> tuple[float, int]:
    files = [p for p in (store / "objects").rglob("*") if p.is_file()]
    drop_caches()
    t0 = time.perf_counter()
    total = 0
    for p in files:
        with open(p, "rb") as f:
            while chunk := f.read(16 << 20):
                total += len(chunk)
    return time.perf_counter() - t0, total


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--workload", default="finetune", choices=sorted(CASES))
    p.add_argument("--epsilon", type=float, default=0.1)
    p.add_argument("--baseline-src", help="another hindlog source tree to replay with, alternating (before/after)")
    p.add_argument("--out", default="cold-replay")
    args = p.parse_args()
    try:
        drop_caches()
    except OSError as e:
        sys.exit(f"bench_cold_replay: cannot drop the page cache ({e}); run it as root on a machine of your own.")
    script, main_anchor, main_stmt, *_ = CASES[args.workload]
    env = {**script_args_env(args.workload), **STEADY_MALLOC, "HINDLOG_EPSILON": str(args.epsilon)}
    source = (WORKLOADS / script).read_text()
    project = new_project({script: source})
    out: dict[str, Any] = {"workload": args.workload, "epsilon": args.epsilon, "rounds": args.rounds,
                           "baseline_src": args.baseline_src}
    try:
        out["record_s"] = timed([PYTHON, script], project, env)
        (project / script).write_text(source.replace(main_anchor, main_anchor + main_stmt, 1))
        replay(project, script, env, None)  # the first replay creates its scratch copy and rows: not timed
        times: dict[str, list[float]] = {"cold": [], "warm": [], "read_objects": []}
        if args.baseline_src:
            times["baseline_cold"] = []
        for k in range(args.rounds):
            order = ["current", "baseline"] if k % 2 == 0 else ["baseline", "current"]
            for which in order:
                if which == "baseline" and not args.baseline_src:
                    continue
                drop_caches()
                t = replay(project, script, env, args.baseline_src if which == "baseline" else None)
                times["cold" if which == "current" else "baseline_cold"].append(t)
            times["warm"].append(replay(project, script, env, None))
            seconds, nbytes = read_objects(project / ".hindlog")
            times["read_objects"].append(seconds)
            out["object_bytes"] = nbytes
            print(f"round {k}: " + ", ".join(f"{n} {v[-1]:.2f}s" for n, v in times.items()), flush=True)
        out["seconds"] = times
        out["median_s"] = {n: statistics.median(v) for n, v in times.items()}
    finally:
        cleanup(project)
    data = {"benchmark": "cold-replay", "command": " ".join(["bench/bench_cold_replay.py", *sys.argv[1:]]),
            "machine": machine(), "results": [out]}
    path = save(args.out, data)
    m = out["median_s"]
    print(f"\ncold {m['cold']:.2f}s, warm {m['warm']:.2f}s"
          + (f", baseline cold {m['baseline_cold']:.2f}s" if "baseline_cold" in m else "")
          + f"; reading the {out['object_bytes'] / 2**30:.2f} GiB of objects: {m['read_objects']:.2f}s\nwrote {path}")


if __name__ == "__main__":
    main()
