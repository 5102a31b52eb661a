"""Benchmark: the slowdown weight the policy measures, against the machine's drift.

    .venv/bin/python bench/bench_policy_weight.py [--runs 8] [--workload finetune] [--quick]

The policy charges the persister's CPU time at a weight: how much longer the
iterations that persists overlapped took than quiet ones, per second of
persister CPU (docs/checkpointing.md). This shared machine's speed drifts by
as much as half within a run. Each run here records the workload once with
every ``Policy.observe`` call kept (an iteration's time, how long persists ran
during it, the persister's CPU time), then computes from the same series the
weight of two rules:

- *earlier quiet*: every overlapped iteration against the median of the
  latest 15 quiet ones (the rule until commit a574850);
- *around*: each stretch of overlapped iterations against a straight line
  from the quiet level just before it to that just after it, each the median
  of three quiet iterations (``hindlog.checkpoint.Policy``, the rule since).

Both clamp each iteration's excess to the time persists ran during it, and
take the total over the total CPU, at least 1 and at most 4. The weight the
run itself used (the current rule's, as it decided its checkpoints) and its
checkpointed iterations are given beside them, with the drift: the slowest
over the fastest of the run's quiet iterations after the first.
Results: bench/results/policy-weight.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PYTHON, STEADY_MALLOC, VARIANT_ARGS, WORKLOADS, cleanup, machine, median, new_project, save, script_args_env, timed  # noqa: E402

SCRIPTS = {"finetune": "finetune.py", "finetune-large": "finetune.py", "sklearn": "sklearn_sgd.py"}
QUICK_ARGS = {"finetune": {"epochs": 10}, "finetune-large": {"epochs": 10}, "sklearn": {"epochs": 15}}

#: Runs the script as ``__main__`` with every observation of the policy appended to $OBSERVED.
RUNNER = """
import json, os, runpy, sys
import hindlog.checkpoint as checkpoint
out = open(os.environ["OBSERVED"], "w")
observe = checkpoint.Policy.observe
def observed(policy, seconds, persisting, background_cpu):
    observe(policy, seconds, persisting, background_cpu)
    out.write(json.dumps([seconds, persisting, background_cpu, policy.background_cpu, policy.weight]) + "\\n")
    out.flush()
checkpoint.Policy.observe = observed
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

QUIET_OVERLAP = 0.02  # the policy's: an iteration a persist touched for at most this share is quiet
MIN_BASELINE = 3


def weight_against_earlier_quiet(rows: list[list[float]]) -> float:
    """The weight by the former rule: each overlapped iteration against the median of the
    latest 15 quiet ones."""
    quiet: list[float] = []
    slowdown = cpu_total = 0.0
    episode: list[float] | None = None  # [slowdown, persister CPU at its start]
    for seconds, persisting, cpu_at_start, cpu_now, _ in rows:
        typical = statistics.median(quiet[-15:]) if quiet else seconds
        if persisting <= QUIET_OVERLAP * typical:
            if episode is not None and cpu_now - episode[1] > 0:
                slowdown += episode[0]
                cpu_total += cpu_now - episode[1]
            episode = None
            quiet.append(seconds)
            continue
        if len(quiet) < MIN_BASELINE:
            continue
        if episode is None:
            episode = [0.0, cpu_at_start]
        episode[0] += max(-persisting, min(persisting, seconds - statistics.median(quiet[-15:])))
    return min(4.0, max(1.0, slowdown / cpu_total)) if cpu_total > 0 else 1.0


def weight_around(rows: list[list[float]]) -> float:
    """The weight by hindlog's policy as it is, fed the same series."""
    from hindlog.checkpoint import Policy

    policy = Policy(0.05, start=0.0)
    for seconds, persisting, cpu_at_start, cpu_now, _ in rows:
        policy.background_cpu = cpu_now
        policy.observe(seconds, persisting, cpu_at_start)
    return policy.weight


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=8)
    p.add_argument("--workload", default="finetune", choices=sorted(SCRIPTS))
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    runs = 2 if args.quick else args.runs
    script = SCRIPTS[args.workload]
    env = {**STEADY_MALLOC, **script_args_env(args.workload, QUICK_ARGS[args.workload] if args.quick else None)}
    results = []
    for n in range(runs):
        project = new_project({script: WORKLOADS / script})
        observed = project / "observed.jsonl"
        try:
            wall = timed([PYTHON, "-c", RUNNER, script], project, {**env, "OBSERVED": str(observed)})
            rows = [json.loads(line) for line in observed.read_text().splitlines()]
            # The first iteration is left out: it pays the run's warm-up, not the machine's drift.
            quiet = [r[0] for r in rows[1:] if r[1] <= QUIET_OVERLAP * r[0]]
            checkpointed = _checkpointed(project)
        finally:
            cleanup(project)
        result = {
            "run": n, "wall_s": wall, "iterations": len(rows), "checkpointed": checkpointed,
            "weight_used": rows[-1][4] if rows else None,
            "weight_earlier_quiet": weight_against_earlier_quiet(rows), "weight_around": weight_around(rows),
            "drift": max(quiet) / min(quiet) if quiet else None, "series": rows,
        }
        results.append(result)
        print(f"  {args.workload} run {n}: {checkpointed}/{len(rows)} checkpointed, weight used {result['weight_used'] or 0:.2f}; "
              f"earlier quiet {result['weight_earlier_quiet']:.2f}, around {result['weight_around']:.2f}; "
              f"drift {result['drift'] or 0:.2f}x", flush=True)
    summary = {k: median([r[k] for r in results]) for k in ("weight_earlier_quiet", "weight_around", "checkpointed")}
    print(f"median: earlier quiet {summary['weight_earlier_quiet']:.2f}, around {summary['weight_around']:.2f}, "
          f"{summary['checkpointed']} checkpointed")
    name = "policy-weight" + ("-quick" if args.quick else "")
    command = "bench/bench_policy_weight.py" + (" --quick" if args.quick else f" --runs {runs} --workload {args.workload}")
    print(save(name, {"benchmark": "policy-weight", "command": command, "machine": machine(), "workload": args.workload,
                      "variant_args": VARIANT_ARGS.get(args.workload), "quick": args.quick, "runs": results, "summary": summary}))


def _checkpointed(project: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(project / ".hindlog" / "catalog.db")
    try:
        return conn.execute("SELECT COUNT(DISTINCT iteration) FROM checkpoints").fetchone()[0]
    except sqlite3.Error:
        return 0  # no checkpoint was ever committed
    finally:
        conn.close()


if __name__ == "__main__":
    main()
