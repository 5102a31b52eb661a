"""Benchmark: where recording's cost goes on a tight loop, in the phases of a process.

    .venv/bin/python bench/bench_costs.py [--rounds 7] [--steps-total 400000] [--quick]

A synthetic NumPy loop (a nested loop of ``--steps-total`` short steps in all, about 2.5 µs
each, nothing logged inside it, one value per epoch) whose steps are cheap enough that what
hindlog adds per nested iteration or per epoch is visible. Three ways to run it, interleaved
in each round:

- ``python``: the plain script;
- ``hindlog run``: the same script, hands-free;
- ``api``: the script written with ``hl.loop``/``hl.log``/``hl.checkpoints``, run with python.

Each process stamps the wall clock at its first line, before and after its main loop; with
the parent's clock at start and exit that gives four phases: process start (interpreter,
and for ``hindlog run`` its own start-up), the script before the main loop, the main loop,
and exit. Two shapes with the same total of nested iterations, few long epochs and many short
ones, separate a cost per epoch (checkpoint, commit, the iteration's bookkeeping) from a cost
per nested iteration (the loop wrapper): loop time difference = a * epochs + b * iterations.
Between processes this machine drifts by tens of percent, so the same loop is also measured
inside one recorded process (``IN_PROCESS``): the nested loop through ``hl.loop`` in odd epochs
and over the bare range in even ones, and the time between iterations; once with the steps
above, once with steps that gather 32 random rows of a 200 MB array (the while-early script's
step), which evict the caches the loop's generator lives in.

Results: bench/results/costs.json (costs-quick.json with --quick: 2 rounds, 100,000 steps).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import GIT_ENV, PYTHON, cleanup, machine, new_project, save  # noqa: E402

PLAIN = """\
import json, os, time
T0 = time.time()
import numpy as np
rng = np.random.default_rng(0)
w = np.zeros(50)
history = []
L0 = time.time()
for epoch in range(int(os.environ["EPOCHS"])):
    for step in range(int(os.environ["STEPS"])):
        w += 0.001 * rng.normal(size=50)
    history.append(float(w.sum()))
    print(epoch, history[-1])
L1 = time.time()
print("STAMP", json.dumps({"first_line": T0, "loop_start": L0, "loop_end": L1}))
"""

API = """\
import json, os, time
T0 = time.time()
import numpy as np
import hindlog as hl
rng = np.random.default_rng(0)
w = np.zeros(50)
history = []
hl.checkpoints(w=w, history=history, rng=rng)
L0 = time.time()
for epoch in hl.loop("epoch", range(int(os.environ["EPOCHS"]))):
    for step in hl.loop("step", range(int(os.environ["STEPS"]))):
        w += 0.001 * rng.normal(size=50)
    history.append(float(w.sum()))
    hl.log("sum", history[-1])
L1 = time.time()
print("STAMP", json.dumps({"first_line": T0, "loop_start": L0, "loop_end": L1}))
"""

#: The same loop measured inside one recorded process, where the machine's drift between
#: processes (tens of percent here) does not enter: odd epochs run the nested loop through
#: hl.loop, even ones over the bare range; the time between one iteration's body and the next
#: is what hindlog's main-loop hooks (iteration end, checkpoint decision and snapshot, commit
#: wake) took.
IN_PROCESS = """\
import json, os, statistics, time
import numpy as np
import hindlog as hl
rng = np.random.default_rng(0)
w = np.zeros(50)
hl.checkpoints(w=w)
steps = int(os.environ["STEPS"])
if os.environ.get("BODY") == "gather":
    # while-early's step: 32 random rows of a 200 MB array, which evicts the caches every step.
    X = rng.normal(size=(250_000, 100))
    order = rng.permutation(len(X))
    v = np.zeros(100)

    def step_body(step):
        global v
        start = (step * 32) % (len(X) - 32)
        v = v + X[order[start:start + 32]].sum(axis=0) * 1e-6
else:
    def step_body(step):
        global w
        w += 0.001 * rng.normal(size=50)
gaps, wrapped, bare, body_end = [], [], [], None
for epoch in hl.loop("epoch", range(int(os.environ["EPOCHS"]))):
    t = time.perf_counter()
    if body_end is not None:
        gaps.append(t - body_end)
    if epoch % 2:
        for step in hl.loop("step", range(steps)):
            step_body(step)
        wrapped.append(time.perf_counter() - t)
    else:
        for step in range(steps):
            step_body(step)
        bare.append(time.perf_counter() - t)
    hl.log("sum", float(w.sum()))
    body_end = time.perf_counter()
m = statistics.median
print("RESULT", json.dumps({"wrapper_ns": (m(wrapped) - m(bare)) / steps * 1e9, "gap_median_us": m(gaps) * 1e6,
                            "gap_mean_us": sum(gaps) / len(gaps) * 1e6, "gap_max_ms": max(gaps) * 1e3}))
"""

WAYS = {
    "python": [PYTHON, "plain.py"],
    "hindlog run": [PYTHON, "-m", "hindlog.cli", "run", "plain.py"],
    "api": [PYTHON, "api.py"],
}
PHASES = ("total", "start", "before_loop", "loop", "exit")


def run_once(project: Path, cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    t0 = time.time()
    out = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True)
    t1 = time.time()
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:])} failed: {out.stderr[-2000:]}")
    stamp = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("STAMP"))[6:])
    return {"total": t1 - t0, "start": stamp["first_line"] - t0, "before_loop": stamp["loop_start"] - stamp["first_line"],
            "loop": stamp["loop_end"] - stamp["loop_start"], "exit": t1 - stamp["loop_end"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps-total", type=int, default=400_000)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.steps_total = 2, 100_000
    shapes = {"few long epochs": 10, "many short epochs": 400}
    project = new_project({"plain.py": PLAIN, "api.py": API, "in_process.py": IN_PROCESS})
    store = project.with_name(project.name + "-store")  # outside the project: not part of its code
    results: dict[str, Any] = {}
    envs = {shape: {**os.environ, **GIT_ENV, "HINDLOG_DIR": str(store), "EPOCHS": str(epochs), "STEPS": str(args.steps_total // epochs)}
            for shape, epochs in shapes.items()}
    runs: dict[str, dict[str, list[dict[str, float]]]] = {shape: {w: [] for w in WAYS} for shape in shapes}
    try:
        for env in envs.values():
            for cmd in WAYS.values():
                run_once(project, cmd, env)  # warm-up: page cache, bytecode
        # Every shape and way in every round: a drift of the machine's speed between rounds
        # falls on all of them alike.
        for r in range(args.rounds):
            for shape, env in envs.items():
                for way, cmd in WAYS.items():
                    runs[shape][way].append(run_once(project, cmd, env))
                print(f"  round {r}, {shape}: " + ", ".join(f"{w} {runs[shape][w][-1]['total']:.2f}s" for w in WAYS), flush=True)
        in_process, in_process_gather = [], []
        env = {**envs["many short epochs"], "HINDLOG_EPSILON": "0.05"}
        for r in range(args.rounds):
            for body, into in (("small", in_process), ("gather", in_process_gather)):
                out = subprocess.run([PYTHON, "in_process.py"], cwd=project, env={**env, "BODY": body}, capture_output=True,
                                     text=True, check=True)
                into.append(json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT"))[7:]))
    finally:
        cleanup(project)
        cleanup(store)
    for shape, epochs in shapes.items():
        results[shape] = {"epochs": epochs, "steps": args.steps_total // epochs, "runs": runs[shape],
                          "median": {w: {ph: statistics.median(x[ph] for x in rs) for ph in PHASES} for w, rs in runs[shape].items()}}
    few, many = results["few long epochs"], results["many short epochs"]
    derived = {}
    for way in ("hindlog run", "api"):
        d_few = few["median"][way]["loop"] - few["median"]["python"]["loop"]
        d_many = many["median"][way]["loop"] - many["median"]["python"]["loop"]
        per_epoch = (d_many - d_few) / (many["epochs"] - few["epochs"])
        per_step = (d_few - per_epoch * few["epochs"]) / args.steps_total
        fixed = statistics.median(
            (s["median"][way]["total"] - s["median"][way]["loop"]) - (s["median"]["python"]["total"] - s["median"]["python"]["loop"])
            for s in (few, many))
        derived[way] = {"fixed_s": fixed, "per_epoch_ms": per_epoch * 1e3, "per_nested_iteration_ns": per_step * 1e9}
    data = {"benchmark": "costs", "command": " ".join(["bench/bench_costs.py", *sys.argv[1:]]), "machine": machine(),
            "steps_total": args.steps_total, "results": results, "derived": derived, "in_process": in_process,
            "in_process_median": {k: statistics.median(x[k] for x in in_process) for k in in_process[0]},
            "in_process_gather": in_process_gather,
            "in_process_gather_median": {k: statistics.median(x[k] for x in in_process_gather) for k in in_process_gather[0]}}
    path = save("costs" + ("-quick" if args.quick else ""), data)
    print("\n| shape | way | total (s) | start (s) | before loop (s) | loop (s) | exit (s) |")
    print("|---|---|---|---|---|---|---|")
    for shape, s in results.items():
        for way, m in s["median"].items():
            print(f"| {shape} ({s['epochs']} x {s['steps']}) | {way} | " + " | ".join(f"{m[ph]:.3f}" for ph in PHASES) + " |")
    print("\n| way | fixed cost (s) | per epoch (ms) | per nested iteration (ns) |")
    print("|---|---|---|---|")
    for way, d in derived.items():
        print(f"| {way} | {d['fixed_s']:.3f} | {d['per_epoch_ms']:.2f} | {d['per_nested_iteration_ns']:.0f} |")
    ip = data["in_process_median"]
    print(f"\nin one process (many short epochs, median of {args.rounds} runs): hl.loop costs {ip['wrapper_ns']:.0f} ns a nested "
          f"iteration; between main-loop iterations {ip['gap_median_us']:.1f} us (median), {ip['gap_mean_us']:.1f} us (mean)")
    print(f"with a step that gathers rows of a 200 MB array: hl.loop costs {data['in_process_gather_median']['wrapper_ns']:.0f} ns "
          "a nested iteration")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
