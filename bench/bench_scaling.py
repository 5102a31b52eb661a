"""Benchmark: how hindlog's costs grow with the model's size and the number of epochs.

    .venv/bin/python bench/bench_scaling.py [--quick] [--sizes 1,8,32,64] [--epochs 5,20] [--pairs 3] [--steps 4]

Workload: bench/workloads/scaling.py, an MLP of ``size_mb`` MB of float32
parameters fine-tuned with Adam, its first half frozen, ``steps`` optimizer
steps per epoch. For every (size, epochs) of the grid, in a fresh temporary
git project:

- record overhead: the script plain (``HINDLOG_DISABLED=1``) and recorded
  (default ε), alternating the order, ``--pairs`` pairs; the median of the
  per-pair wall ratios recorded / plain (and of the CPU-time ratios);
- checkpoints: main-loop iterations checkpointed by the last recorded run,
  hindlog's measured overhead (blocked / elapsed);
- storage: bytes under the run's ``objects/`` directory (content-addressed:
  an unchanged tensor, such as a frozen layer, is stored once), the logical
  size of its checkpoints (sum of the catalog's ``nbytes``), against a plain
  run that ``torch.save``s model + optimizer state into a new file after
  every epoch (its bytes, and its wall time against the plain run's; run
  once per model size, at the first epoch count: every epoch's file has the
  same size, so other epoch counts take that size times their epochs);
- replay: a new main-loop statement (a weight norm after the per-epoch
  ``hl.log("loss", ...)``), ``hindlog replay --workers 1`` on the last
  recorded run (whole command; the replayed values are checked in the
  catalog), against a full re-run of the modified script (plain), and the
  code that must run anyway (interpreter start, imports and setup, the main
  loop outside the skipped step loop, from the recorded timings; restoring
  checkpoints not included).

``--quick``: sizes 1 and 8 MB, 3 and 6 epochs, 1 pair (about 1.5 minutes).
Results: bench/results/scaling.json (scaling-quick.json with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import GIT_ENV, PYTHON, WORKLOADS, cleanup, machine, median, new_project, save  # noqa: E402

SCRIPT = "scaling.py"
ANCHOR = '    hl.log("loss", loss.item())\n'
STATEMENT = '    hl.log("wnorm", torch.stack([p.norm() for p in model.parameters()]).norm().item())\n'
TIMEOUT = 1800
FULL = {"sizes": [1, 8, 32, 64], "epochs": [5, 20], "pairs": 3, "steps": 4}
QUICK = {"sizes": [1, 8], "epochs": [3, 6], "pairs": 1, "steps": 4}
SAVE_FILE_BYTES: dict[float, float] = {}  # model size -> bytes of one epoch's torch.save file, once measured


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system of the process and its children) and stdout of a whole process."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HINDLOG_")}
    full_env.update(GIT_ENV)
    full_env.update(env)
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=TIMEOUT)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-1500:]}\n{out.stderr[-2500:]}")
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), out.stdout


def tree_bytes(path: Path) -> tuple[int, int]:
    total = files = 0
    if path.exists():
        for p in path.rglob("*"):
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
                files += 1
    return total, files


def param_bytes(size_mb: float) -> tuple[int, int, int]:
    """Width, parameter bytes and trainable parameter bytes of the workload's model (as scaling.py builds it)."""
    w = max(16, int((float(size_mb) * 2**20 / 4 / 4) ** 0.5))
    first, hidden, last = 256 * w + w, w * w + w, w * 10 + 10
    total = first + 4 * hidden + last
    trainable = 2 * hidden + last
    return w, 4 * total, 4 * trainable


def run_stats(store: Path) -> dict:
    conn = sqlite3.connect(store / "catalog.db")
    try:
        rid, overhead, started, ended, info = conn.execute(
            "SELECT id, overhead, started, ended, info FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        rows = conn.execute("SELECT iteration, nbytes FROM checkpoints WHERE run=?", (rid,)).fetchall()
    finally:
        conn.close()
    info = json.loads(info or "{}")
    iteration_seconds = info.get("iteration_seconds") or []
    preloop = info.get("preloop_seconds") or 0.0
    skipped = sum((info.get("block_seconds") or {}).values())
    postloop = max((ended or 0) - (started or 0) - preloop - sum(iteration_seconds), 0.0)
    objects_bytes, objects_files = tree_bytes(store / "objects")
    return {
        "overhead_measured": overhead,
        "iterations": len(iteration_seconds),
        "checkpointed_iterations": sorted({r[0] for r in rows}),
        "checkpoint_rows": len(rows),
        "logical_bytes": sum(r[1] for r in rows),
        "bytes_written": info.get("checkpoint_bytes_written"),
        "store_bytes": objects_bytes,
        "store_files": objects_files,
        # interpreter start, imports and setup, the main loop outside its step loop, what follows the loop
        "must_run_s": preloop + sum(iteration_seconds) - skipped + postloop,
    }


def replayed_values(store: Path, name: str) -> int:
    conn = sqlite3.connect(store / "catalog.db")
    try:
        row = conn.execute("SELECT COUNT(*) FROM records r JOIN names n ON r.name = n.id WHERE n.name=? AND r.source=1",
                           (name,)).fetchone()
    finally:
        conn.close()
    return row[0]


def bench(size_mb: float, epochs: int, steps: int, pairs: int) -> dict:
    width, pbytes, tbytes = param_bytes(size_mb)
    args = {"HINDLOG_SET_size_mb": str(size_mb), "HINDLOG_SET_epochs": str(epochs), "HINDLOG_SET_steps": str(steps)}
    source = (WORKLOADS / SCRIPT).read_text()
    assert ANCHOR in source
    out: dict = {"size_mb": size_mb, "epochs": epochs, "steps": steps, "width": width, "param_mb": pbytes / 2**20,
                 "trainable_mb": tbytes / 2**20, "pairs": pairs, "load_avg_start": os.getloadavg()}
    project = new_project({SCRIPT: source})
    try:
        plain, recorded, ratios, cpu_ratios = [], [], [], []
        for k in range(pairs):
            store = project / f".store-{k}"
            t, c = {}, {}
            for mode in (["plain", "record"] if k % 2 == 0 else ["record", "plain"]):
                env = {**args, **({"HINDLOG_DISABLED": "1"} if mode == "plain" else {"HINDLOG_DIR": str(store)})}
                t[mode], c[mode], _ = run([PYTHON, SCRIPT], project, env)
            plain.append(t["plain"])
            recorded.append(t["record"])
            ratios.append(t["record"] / t["plain"])
            cpu_ratios.append(c["record"] / c["plain"])
        out.update(plain_s=plain, record_s=recorded, ratios=ratios, median_ratio=median(ratios),
                   cpu_ratios=cpu_ratios, median_cpu_ratio=median(cpu_ratios),
                   median_plain_s=median(plain), median_record_s=median(recorded))
        store = project / f".store-{pairs - 1}"
        stats = run_stats(store)
        out.update(stats)
        out["checkpointed"] = len(stats["checkpointed_iterations"])

        # one torch.save of model + optimizer per epoch, in a plain run. Every epoch's file has the
        # same size, so for a size already measured the bytes are that file size times the epochs.
        if size_mb in SAVE_FILE_BYTES:
            out["torchsave_bytes"] = SAVE_FILE_BYTES[size_mb] * epochs
            out["torchsave_files"] = epochs
            out["torchsave_measured"] = False
        else:
            with tempfile.TemporaryDirectory(prefix="hindlog-bench-save-") as d:
                t, _, _ = run([PYTHON, SCRIPT], project, {**args, "HINDLOG_DISABLED": "1", "BENCH_TORCH_SAVE_DIR": d})
                out["torchsave_bytes"], out["torchsave_files"] = tree_bytes(Path(d))
            out["torchsave_measured"] = True
            out["torchsave_s"] = t
            out["torchsave_ratio"] = t / out["median_plain_s"]
            if out["torchsave_files"]:
                SAVE_FILE_BYTES[size_mb] = out["torchsave_bytes"] / out["torchsave_files"]
        out["store_vs_torchsave"] = out["store_bytes"] / out["torchsave_bytes"] if out["torchsave_bytes"] else None

        # a new main-loop statement: replay (1 worker) against a full re-run
        (project / SCRIPT).write_text(source.replace(ANCHOR, ANCHOR + STATEMENT, 1))
        cmd = [PYTHON, "-m", "hindlog.cli", "--store", str(store), "replay", SCRIPT, "--workers", "1"]
        out["replay_cmd"] = " ".join(["hindlog", "--store", "STORE", "replay", SCRIPT, "--workers", "1"])
        out["replay_1w_s"], _, text = run(cmd, project, args)
        out["replay_output"] = text.strip().splitlines()[-1:] if text.strip() else []
        out["replay_stored"] = replayed_values(store, "wnorm")
        if out["replay_stored"] != epochs:
            raise RuntimeError(f"replay stored {out['replay_stored']} values of wnorm, expected {epochs}: {text[-1500:]}")
        out["full_rerun_s"], _, _ = run([PYTHON, SCRIPT], project, {**args, "HINDLOG_DISABLED": "1"})
        out["replay_speedup"] = out["full_rerun_s"] / out["replay_1w_s"]
        out["replay_vs_must_run"] = out["replay_1w_s"] / out["must_run_s"] if out["must_run_s"] else None
    finally:
        cleanup(project)
    out["load_avg_end"] = os.getloadavg()
    return out


def mb(b: float | None) -> str:
    return "-" if b is None else f"{b / 2**20:.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 sizes x 2 epoch counts, tiny, 1 pair (about 1.5 minutes)")
    p.add_argument("--sizes", help="model sizes in MB of parameters, comma separated")
    p.add_argument("--epochs", help="epoch counts, comma separated")
    p.add_argument("--pairs", type=int, help="plain/record pairs per configuration")
    p.add_argument("--steps", type=int, help="optimizer steps per epoch")
    p.add_argument("--out", help="results name under bench/results (default scaling, scaling-quick)")
    a = p.parse_args()
    base = QUICK if a.quick else FULL
    sizes = [float(x) for x in a.sizes.split(",")] if a.sizes else base["sizes"]
    epoch_counts = [int(x) for x in a.epochs.split(",")] if a.epochs else base["epochs"]
    pairs = a.pairs or base["pairs"]
    steps = a.steps or base["steps"]
    started = time.time()
    results = []
    for size in sizes:
        for epochs in epoch_counts:
            label = f"{size:g} MB x {epochs} epochs"
            try:
                r = bench(size, epochs, steps, pairs)
                print(f"  {label}: plain {r['median_plain_s']:.2f}s record {r['median_record_s']:.2f}s ratio {r['median_ratio']:.3f} "
                      f"checkpoints {r['checkpointed']}/{r['iterations']} store {mb(r['store_bytes'])} MB vs torch.save "
                      f"{mb(r['torchsave_bytes'])} MB; replay {r['replay_1w_s']:.1f}s vs re-run {r['full_rerun_s']:.1f}s "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)
            except Exception as e:  # noqa: BLE001
                r = {"size_mb": size, "epochs": epochs, "steps": steps, "pairs": pairs, "error": str(e)[-3000:]}
                print(f"  {label}: FAILED: {str(e)[-800:]}", flush=True)
            results.append(r)
    data = {
        "benchmark": "scaling", "quick": a.quick,
        "command": " ".join([".venv/bin/python", "bench/bench_scaling.py", *sys.argv[1:]]),
        "machine": machine(), "started": started, "duration_s": time.time() - started,
        "workload": "bench/workloads/scaling.py: MLP of size_mb MB of float32 parameters, first half frozen, Adam, "
                    f"{steps} steps of batch 32 per epoch",
        "statement": STATEMENT.strip(), "results": results,
    }
    path = save(a.out or ("scaling" + ("-quick" if a.quick else "")), data)
    print("\n| size (MB) | epochs | plain (s) | record/plain | checkpointed | hindlog store (MB) | torch.save per epoch (MB) "
          "| replay 1 worker (s) | full re-run (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['size_mb']:g} | {r['epochs']} | failed: {r['error'].strip().splitlines()[-1][:120]} |")
            continue
        print(f"| {r['size_mb']:g} | {r['epochs']} | {r['median_plain_s']:.2f} | {r['median_ratio']:.3f} | "
              f"{r['checkpointed']}/{r['iterations']} | {mb(r['store_bytes'])} | {mb(r['torchsave_bytes'])} | "
              f"{r['replay_1w_s']:.1f} | {r['full_rerun_s']:.1f} |")
    print(f"\nwrote {path} in {time.time() - started:.0f}s")


if __name__ == "__main__":
    main()
