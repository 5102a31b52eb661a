"""Benchmark: replay of hindsight statements against the record, a full re-run and the lower bound.

    .venv/bin/python bench/bench_replay.py [--quick] [--workloads cnn,finetune,lstm,sklearn] [--threads N] [--out NAME]

For each workload: record it once; then

- main-loop statement (a per-epoch value): replay with 1 and 2 workers;
- nested-loop statement (a per-step value): replay with 1 and 2 workers;
- a full re-run of the modified script (what replay saves you from);
- the lower bound for the main-loop replay: the code that must run (the script
  as a whole process with no main-loop iterations, ``epochs=0``: interpreter
  start, imports, setup, the code after the loop and the interpreter's exit;
  plus the main-loop code outside the skipped nested loops, from the recorded
  timings) plus the time the replay worker spent reading and applying
  checkpoints.

Workers compute with the record's thread count (exact values need it), so on a
machine whose cores the record already filled, more workers cannot be faster;
``--threads 1`` records and replays with one thread per process, which measures
how replay scales when there are cores for the workers.

Every process runs with glibc's allocator held steady (``common.STEADY_MALLOC``;
``--malloc default`` leaves it adaptive): left adaptive, the fine-tuning
workload's run time moves by a third from run to run.

Replay times are whole ``hindlog replay`` commands (planning, scratch copy of
the code, worker processes). Results: bench/results/replay.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import GIT_ENV, PYTHON, WORKLOADS, allocator_env, cleanup, machine, new_project, save, script_args_env, timed  # noqa: E402

CASES = {
    "cnn": ("cnn.py", '    hl.log("val_acc", correct / len(val))\n',
            '    hl.log("wnorm", torch.stack([p.norm() for p in model.parameters()]).norm().item())\n',
            "        opt.step()\n", '        hl.log("step_loss", loss.item())\n'),
    "finetune": ("finetune.py", '    hl.log("loss", loss.item())\n',
                 '    hl.log("wnorm", torch.stack([p.norm() for p in model.parameters()]).norm().item())\n',
                 "        opt.step()\n", '        hl.log("step_loss", loss.item())\n'),
    "lstm": ("lstm.py", '    hl.log("loss", total / len(loader))\n',
             '    hl.log("wnorm", torch.stack([p.norm() for p in model.parameters()]).norm().item())\n',
             "        total += loss.item()\n", '        hl.log("step_loss", loss.item())\n'),
    "sklearn": ("sklearn_sgd.py", '    hl.log("val_acc", float(clf.score(Xv, yv)))\n',
                '    hl.log("coef_norm", float(np.linalg.norm(clf.coef_)))\n',
                "        clf.partial_fit(X[idx], y[idx], classes=classes)\n",
                '        hl.log("batch_acc", float(clf.score(X[idx], y[idx])))\n'),
}
CASES["cnn-long"] = CASES["cnn"]  # with common.VARIANT_ARGS
QUICK_ARGS = {"cnn": {"epochs": 4, "samples": 4096}, "finetune": {"epochs": 16}, "lstm": {"epochs": 4}, "sklearn": {"epochs": 15},
              "cnn-long": {"epochs": 4, "samples": 4096}}

RUNNER = """
import json, sys
from hindlog.replay import replay
r = replay(sys.argv[1], workers=int(sys.argv[2]), progress=False)
res = r.results[0]
print(json.dumps({"ok": res.ok and not res.divergences, "restore_seconds": res.restore_seconds,
                  "skipped_blocks": res.skipped_blocks, "run_blocks": res.run_blocks, "stored": res.stored,
                  "checked": res.checked, "divergences": len(res.divergences), "failed": [f[:2] for f in res.failed_segments]}))
"""


def replay_once(project: Path, script: str, workers: int, env: dict[str, str]) -> tuple[float, dict]:
    t0 = time.perf_counter()
    out = subprocess.run([PYTHON, "-c", RUNNER, script, str(workers)], cwd=project,
                         env={**os.environ, **GIT_ENV, **env}, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"replay failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    data = json.loads(out.stdout.strip().splitlines()[-1])
    if not data["ok"]:
        raise RuntimeError(f"replay diverged or failed: {data}")
    return elapsed, data


def recorded_timing(store: Path) -> dict:
    conn = sqlite3.connect(store / "catalog.db")
    try:
        started, ended, info = conn.execute("SELECT started, ended, info FROM runs ORDER BY id LIMIT 1").fetchone()
        n_ckpt = conn.execute("SELECT COUNT(DISTINCT iteration) FROM checkpoints").fetchone()[0]
    finally:
        conn.close()
    info = json.loads(info)
    return {"started": started, "ended": ended, "checkpointed": n_ckpt, **info}


def bench(name: str, quick: bool, repeats: int, threads: int | None = None, malloc: str = "steady") -> dict:
    script, main_anchor, main_stmt, nested_anchor, nested_stmt = CASES[name]
    env = script_args_env(name, QUICK_ARGS[name] if quick else None)
    env.update(allocator_env(malloc))  # record, replays and re-run alike (bench/common.py)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    source = (WORKLOADS / script).read_text()
    project = new_project({script: source})
    store = project / ".hindlog"
    out: dict = {"workload": name, "threads": threads or "default"}
    try:
        out["record_s"] = timed([PYTHON, script], project, env)
        rec = recorded_timing(store)
        out["checkpointed_iterations"] = rec["checkpointed"]
        out["iterations"] = len(rec["iteration_seconds"])

        # A per-epoch statement: every nested loop is skipped.
        (project / script).write_text(source.replace(main_anchor, main_anchor + main_stmt, 1))
        for w in (1, 2):
            times, datas = [], []
            for _ in range(repeats):
                t, d = replay_once(project, script, w, env)
                times.append(t)
                datas.append(d)
            out[f"main_replay_{w}w_s"] = min(times)
            out[f"main_replay_{w}w_detail"] = datas[times.index(min(times))]
        skipped = sum(rec["block_seconds"].values())
        iterations_total = sum(rec["iteration_seconds"])
        # The script's setup, and the code after its loop, as a whole process (interpreter start,
        # imports, setup, exit): the script plain with no main-loop iterations. The record's own
        # timeline stops before the interpreter's exit, which a replay worker also pays.
        setup_process = timed([PYTHON, script], project, {**env, "HINDLOG_DISABLED": "1", "HINDLOG_SET_epochs": "0"})
        must_run = setup_process + iterations_total - skipped
        out["lower_bound_s"] = must_run + out["main_replay_1w_detail"]["restore_seconds"]
        out["lower_bound_parts"] = {"code_that_must_run_s": must_run, "setup_process_s": setup_process,
                                    "restore_s": out["main_replay_1w_detail"]["restore_seconds"]}
        # The bound above skips every nested loop; only those with a checkpoint can be skipped. With the
        # checkpoints this record took (nested-loop time spread evenly over the iterations):
        share = rec["checkpointed"] / max(len(rec["iteration_seconds"]), 1)
        out["lower_bound_with_checkpoints_s"] = must_run + skipped * (1 - share) + out["main_replay_1w_detail"]["restore_seconds"]
        out["full_rerun_s"] = timed([PYTHON, script], project, {**env, "HINDLOG_DIR": str(project / ".truth-main")})

        # A per-step statement: the loop that holds it runs, in parallel segments.
        (project / script).write_text(source.replace(nested_anchor, nested_anchor + nested_stmt, 1))
        for w in (1, 2):
            times = [replay_once(project, script, w, env)[0] for _ in range(repeats)]
            out[f"nested_replay_{w}w_s"] = min(times)
    finally:
        cleanup(project)
    # What a user gets: the default worker count is one on a machine the record's threads fill.
    out["main_speedup_vs_rerun"] = out["full_rerun_s"] / min(out["main_replay_1w_s"], out["main_replay_2w_s"])
    out["main_vs_lower_bound"] = out["main_replay_1w_s"] / out["lower_bound_s"]
    out["nested_2w_speedup"] = out["nested_replay_1w_s"] / out["nested_replay_2w_s"]
    print(json.dumps(out, indent=1, default=str), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=2, help="replays per configuration (the fastest is kept)")
    p.add_argument("--workloads", default="cnn,finetune,lstm,sklearn", help="any of " + ",".join(CASES))
    p.add_argument("--threads", type=int, help="intra-op threads of every process (OMP_NUM_THREADS); "
                   "with 1, two workers have a core each on a 2-core machine")
    p.add_argument("--out", help="results name (default: replay, replay-quick)")
    p.add_argument("--malloc", default="steady", choices=["steady", "default"],
                   help="glibc's allocator held steady for every process (default), or left adaptive (bench/common.py)")
    args = p.parse_args()
    results = [bench(n, args.quick, args.repeats, args.threads, args.malloc) for n in args.workloads.split(",")]
    data = {"benchmark": "replay", "command": " ".join(["bench/bench_replay.py", *sys.argv[1:]]),
            "machine": machine(), "results": results}
    path = save(args.out or ("replay" + ("-quick" if args.quick else "")), data)
    print("\n| workload | record (s) | full re-run (s) | main-loop stmt, 1 worker (s) | 2 workers (s) | lower bound (s) | 1w / bound | speedup vs re-run (best of 1w, 2w) | nested stmt 1w (s) | 2w (s) | 2w speedup |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['workload']} | {r['record_s']:.1f} | {r['full_rerun_s']:.1f} | {r['main_replay_1w_s']:.1f} | "
              f"{r['main_replay_2w_s']:.1f} | {r['lower_bound_s']:.1f} | {r['main_vs_lower_bound']:.2f} | "
              f"{r['main_speedup_vs_rerun']:.1f}x | {r['nested_replay_1w_s']:.1f} | {r['nested_replay_2w_s']:.1f} | {r['nested_2w_speedup']:.2f}x |")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
