"""Benchmark: what one checkpoint costs training, against what the policy charges for it.

    .venv/bin/python bench/bench_checkpoint_cost.py [--pairs 3] [--workload finetune] [--quick]

The workload runs recorded with ``HINDLOG_EPSILON=0`` (no checkpoints) and
with ``HINDLOG_EPSILON=0.9`` (a checkpoint nearly every iteration), alternating,
``--pairs`` times, with glibc's allocator held steady (``common.STEADY_MALLOC``).
Per pair, the cost of one checkpoint to training is

    (wall with checkpoints - wall without) / checkpointed iterations

and the policy's charge for one is what the run recorded it charged
(``info.checkpoint_charged``): the blocked time, plus the persister's CPU time
times the slowdown weight it measured, per checkpointed iteration. A charge
below the cost would let the real overhead exceed ε; a charge far above it
takes fewer checkpoints than ε allows. Results: bench/results/checkpoint-cost.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_record import run_stats  # noqa: E402
from common import PYTHON, STEADY_MALLOC, VARIANT_ARGS, WORKLOADS, cleanup, machine, median, new_project, save, script_args_env, timed_cpu  # noqa: E402

SCRIPTS = {"finetune": "finetune.py", "finetune-large": "finetune.py", "cnn": "cnn.py", "lstm": "lstm.py", "sklearn": "sklearn_sgd.py"}
QUICK_ARGS = {"finetune": {"epochs": 8}, "finetune-large": {"epochs": 8}, "cnn": {"epochs": 3, "samples": 4096}, "lstm": {"epochs": 2},
              "sklearn": {"epochs": 15}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--workload", default="finetune", choices=sorted(SCRIPTS))
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    script = SCRIPTS[args.workload]
    quick_args = QUICK_ARGS[args.workload] if args.quick else {}
    script_args = {**VARIANT_ARGS.get(args.workload, {}), **quick_args}
    env = {**STEADY_MALLOC, **script_args_env(args.workload, quick_args)}
    project = new_project({script: WORKLOADS / script})
    pairs = []
    try:
        if not args.quick:  # a quick run's numbers are not evidence: it keeps the suite under 5 minutes
            timed_cpu([PYTHON, script], project, {**env, "HINDLOG_DISABLED": "1"})  # warm-up, not counted
        for k in range(args.pairs):
            order = ["none", "every"] if k % 2 == 0 else ["every", "none"]
            t, facts = {}, {}
            for mode in order:
                store = project / f".store-{k}-{mode}"
                eps = "0" if mode == "none" else "0.9"
                t[mode], _cpu = timed_cpu([PYTHON, script], project, {**env, "HINDLOG_EPSILON": eps, "HINDLOG_DIR": str(store)})
                facts[mode] = run_stats(store)
                cleanup(store)
            n = len(facts["every"]["checkpointed_iterations"])
            c = facts["every"]["charged"] or {}
            charged = (c.get("blocked_seconds", 0.0) + c.get("background_weight", 1.0) * c.get("persister_cpu_seconds", 0.0)) / n if n else None
            cost = (t["every"] - t["none"]) / n if n else None
            pairs.append({"wall_none_s": t["none"], "wall_every_s": t["every"], "checkpointed": n,
                          "iterations": facts["every"]["iterations"], "cost_per_checkpoint_s": cost,
                          "charged_per_checkpoint_s": charged, "charged": c})
            print(f"  pair {k}: without {t['none']:.2f}s, with {n} checkpoints {t['every']:.2f}s: "
                  f"{cost * 1e3:.1f} ms each; charged {charged * 1e3:.1f} ms each "
                  f"(blocked {c.get('blocked_seconds', 0) / n * 1e3:.1f} ms, persister CPU {c.get('persister_cpu_seconds', 0) / n * 1e3:.1f} ms "
                  f"x {c.get('background_weight', 1.0):.2f})", flush=True)
    finally:
        cleanup(project)
    cost = median([x["cost_per_checkpoint_s"] for x in pairs if x["cost_per_checkpoint_s"] is not None])
    charged = median([x["charged_per_checkpoint_s"] for x in pairs if x["charged_per_checkpoint_s"] is not None])
    data = {"benchmark": "checkpoint-cost", "command": " ".join(["bench/bench_checkpoint_cost.py", *sys.argv[1:]]),
            "machine": machine(), "workload": args.workload, "args": script_args, "pairs": pairs,
            "median_cost_per_checkpoint_s": cost, "median_charged_per_checkpoint_s": charged}
    path = save("checkpoint-cost" + ("-quick" if args.quick else ""), data)
    print(f"\n{args.workload}: one checkpoint costs training {cost * 1e3:.1f} ms (median of {len(pairs)} pairs); "
          f"the policy charged {charged * 1e3:.1f} ms\nwrote {path}")


if __name__ == "__main__":
    main()
