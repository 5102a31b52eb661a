"""Benchmark: record overhead, as the wall-time ratio recorded / plain of whole processes.

    .venv/bin/python bench/bench_record.py [--pairs 3] [--min-seconds 30] [--quick] [--workloads cnn,finetune,...] [--noise] [--malloc steady|default]

For each workload in bench/workloads, run the script plain (``HINDLOG_DISABLED=1``:
every hindlog call is a pass-through) and recorded, alternating, ``--pairs``
times; report the median of the per-pair ratios, the checkpoints taken and the
overhead hindlog measured itself. With ``--noise`` each pair also runs the
plain script a second time, so that the recorded run sits between two plain
ones: the plain/plain ratios are the machine's noise floor, against which a
1% overhead must be read, and the recorded run against the mean of the two
plain runs around it (the bracketed ratio, ``common.bracketed_ratio``)
cancels a drift of the machine's speed within the triple. Each workload first runs once
plain, untimed (a warm-up: the first run of a fresh project reads cold files); a short
workload then gets more pairs than ``--pairs``, enough for ``--min-seconds`` of plain runs
(a 2-second script 15: its ratios scatter as widely as a long one's, and each says less).
Both sides run with glibc's allocator held steady (``common.STEADY_MALLOC``;
``--malloc default`` leaves it adaptive). Results: bench/results/record.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MIN_TIMED_SECONDS, PYTHON, WORKLOADS, allocator_env, bracketed_ratio, cleanup, machine, median, new_project, save, script_args_env, timed_cpu, triples_for  # noqa: E402

WORKLOADS_ALL = {
    "cnn": ("cnn.py", [], "small CNN, long epochs, validation loop"),
    "finetune": ("finetune.py", [], "26 MB MLP + Adam = 77 MB of state (fine-tuning shape), epochs < 0.5 s"),
    "lstm": ("lstm.py", [], "LSTM with dropout, shuffling DataLoader"),
    "sklearn": ("sklearn_sgd.py", [], "scikit-learn partial_fit, NumPy shuffling"),
    "finetune-large": ("finetune.py", [], "52 MB MLP + Adam = 156 MB of state, 0.13 s epochs"),  # common.VARIANT_ARGS
    "finetune-gpu": ("finetune.py", [], "on a CUDA GPU: 210 MB MLP + Adam = 630 MB of state, batches of 256"),  # common.VARIANT_ARGS
}
QUICK_ARGS = {"cnn": {"epochs": 3, "samples": 4096}, "finetune": {"epochs": 16}, "lstm": {"epochs": 3}, "sklearn": {"epochs": 15},
              "finetune-large": {"epochs": 16}, "finetune-gpu": {"epochs": 10}}


def run_stats(store: Path) -> dict:
    conn = sqlite3.connect(store / "catalog.db")
    try:
        run_id, rid, overhead, info = conn.execute("SELECT run_id, id, overhead, info FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        iterations = [r[0] for r in conn.execute("SELECT DISTINCT iteration FROM checkpoints WHERE run=? ORDER BY iteration", (rid,))]
    finally:
        conn.close()
    info = json.loads(info or "{}")
    return {
        "run_id": run_id, "overhead_measured": overhead, "checkpointed_iterations": iterations,
        "iterations": len(info.get("iteration_seconds") or []),
        "checkpoint_bytes_written": info.get("checkpoint_bytes_written"),
        "charged": info.get("checkpoint_charged"),
    }


def bench(name: str, pairs: int, quick: bool, noise: bool = False, malloc: str = "steady", min_seconds: float = 0.0) -> dict:
    script, argv, what = WORKLOADS_ALL[name]
    env_args = script_args_env(name, QUICK_ARGS[name] if quick else None)
    env_args.update(allocator_env(malloc))
    project = new_project({script: WORKLOADS / script})
    plain, recorded, ratios, stats, cpu_ratios, aa, plain2, bracketed = [], [], [], [], [], [], [], []
    try:
        if not quick:  # a quick run's numbers are not evidence: it keeps the suite under 5 minutes
            warm, _ = timed_cpu([PYTHON, script, *argv], project, {**env_args, "HINDLOG_DISABLED": "1"})  # warm-up, not counted
            pairs = triples_for(pairs, warm, min_seconds)
        for k in range(pairs):
            store = project / f".store-{k}"
            order = ["plain", "record"] if k % 2 == 0 else ["record", "plain"]
            if noise:  # a second plain run: the A/A ratio plain/plain shows the machine's noise floor
                order = [*order, "plain2"] if k % 2 == 0 else ["plain2", *order]
            times, cpus = {}, {}
            for mode in order:
                env = dict(env_args)
                if mode in ("plain", "plain2"):
                    env["HINDLOG_DISABLED"] = "1"
                else:
                    env["HINDLOG_DIR"] = str(store)
                times[mode], cpus[mode] = timed_cpu([PYTHON, script, *argv], project, env)
            plain.append(times["plain"])
            recorded.append(times["record"])
            ratios.append(times["record"] / times["plain"])
            cpu_ratios.append(cpus["record"] / cpus["plain"])
            if noise:
                aa.append(times["plain2"] / times["plain"])
                plain2.append(times["plain2"])
                bracketed.append(bracketed_ratio(times[order[0]], times["record"], times[order[2]]))
            stats.append(run_stats(store))
            cleanup(store)  # a fine-tuning run's checkpoints take gigabytes
            print(f"  {name} pair {k}: plain {times['plain']:.2f}s record {times['record']:.2f}s "
                  f"ratio {ratios[-1]:.3f} (CPU {cpu_ratios[-1]:.3f}) load {os.getloadavg()[0]:.1f} checkpoints {len(stats[-1]['checkpointed_iterations'])}/{stats[-1]['iterations']}",
                  flush=True)
    finally:
        cleanup(project)
    last = stats[-1]
    return {
        "workload": name, "what": what, "pairs": pairs, "plain_s": plain, "record_s": recorded, "ratios": ratios,
        "median_ratio": median(ratios), "cpu_ratios": cpu_ratios, "median_cpu_ratio": median(cpu_ratios), "median_plain_s": median(plain), "median_record_s": median(recorded),
        "checkpoints": [len(s["checkpointed_iterations"]) for s in stats], "iterations": last["iterations"],
        "checkpointed_iterations_last": last["checkpointed_iterations"],
        "overhead_measured": [s["overhead_measured"] for s in stats],
        "checkpoint_mb_written_last": (last["checkpoint_bytes_written"] or 0) / 2**20,
        "charged": [s["charged"] for s in stats], "malloc": malloc,
        **({"aa_ratios": aa, "median_aa_ratio": median(aa), "plain2_s": plain2,
            "bracketed_ratios": bracketed, "median_bracketed_ratio": median(bracketed),
            "aa_spread": (max(aa) - min(aa)) if aa else None} if noise else {}),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--min-seconds", type=float, default=MIN_TIMED_SECONDS,
                   help="more pairs for a short workload: at least this many seconds of plain runs")
    p.add_argument("--workloads", default=",".join(WORKLOADS_ALL))
    p.add_argument("--noise", action="store_true", help="run plain twice per pair: the plain/plain ratios show the noise floor")
    p.add_argument("--malloc", default="steady", choices=["steady", "default"],
                   help="glibc's allocator held steady for both sides (default), or left adaptive")
    p.add_argument("--out", default="record", help="results file name under bench/results (without .json)")
    args = p.parse_args()
    results = []
    for name in args.workloads.split(","):
        results.append(bench(name, args.pairs, args.quick, args.noise, args.malloc, args.min_seconds))
    data = {
        "benchmark": "record", "command": " ".join(["bench/bench_record.py", *sys.argv[1:]]),
        "machine": machine(), "results": results,
    }
    suffix = "" if args.malloc == "steady" else "-default-malloc"
    path = save(args.out + suffix + ("-quick" if args.quick else ""), data)
    print("\n| workload | plain (s) | recorded (s) | wall ratio (median) | CPU-time ratio (median) | checkpointed iterations | hindlog's measured overhead |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        oh = median([o for o in r["overhead_measured"] if o is not None]) * 100
        print(f"| {r['workload']}: {r['what']} | {r['median_plain_s']:.2f} | {r['median_record_s']:.2f} | "
              f"{r['median_ratio']:.3f} | {r['median_cpu_ratio']:.3f} | {median(r['checkpoints']):.0f} of {r['iterations']} | {oh:.2f}% |")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
