"""Benchmark: the cost of one ``hl.log`` call, and the background writer's drain rate.

Run from the repository root::

    .venv/bin/python bench/bench_log.py            # full: about 3 minutes on 2 cores
    .venv/bin/python bench/bench_log.py --quick    # smoke run: well under a minute

Every measurement runs in a fresh subprocess whose working directory is a new
temporary project (outside any git repository, so the run's code snapshot never
touches this repository) with ``HINDLOG_DIR`` pointing at a new temporary store.
The parent collects each child's JSON, prints a markdown table and writes
``bench/results/log.json``.

What is measured
----------------
call
    Per-call cost of ``hl.log(name, value)`` in a tight loop of ``--calls``
    calls (default 20,000) inside an iteration of an ``hl.loop`` main loop,
    against an empty function ``empty(name, value)`` timed the same way in the
    same iteration. The writer is flushed before each timed pair, so one pair's
    drain does not spill into the next; it runs as it normally does during the
    timed loop (default flush interval). The flush after the ``hl.log`` loop is
    timed too: ``(loop + flush) / calls`` is the cost with the drain included.
    Values: a float, an int, a small NumPy array (8 float32) and a 0-d torch tensor.
drain
    ``--records`` records (default 1,000,000) logged as fast as possible: a main
    loop with one iteration holding an inner ``hl.loop("step")`` of
    records/4 steps, four names logged per step (so a new loop context every
    four records, as in training). Two modes:

    - ``drain`` (pure writer rate): the writer is told to sleep
      (``HINDLOG_FLUSH_INTERVAL=3600``) while the records are queued; the rate is
      records / time of the ``writer.flush()`` that then commits them all.
    - ``end-to-end``: default writer settings, so the writer drains while the
      training thread logs; the rate is records / (time from the first call
      until ``writer.flush()`` returns).
    - ``drain, no index``: as ``drain``, after dropping the ``records_by_name``
      index from the temporary catalog, to show what the index costs.

    Each drain child also times the writer's own drains from inside (wall clock
    and the writer thread's CPU time); "records per writer CPU-second" is the
    number that moves least when other processes share the cores.

Each child reports raw timings; the parent reports medians over all
repetitions of all child runs (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results" / "log.json"

VALUE_KINDS = ("float", "int", "ndarray", "tensor")
VALUE_LABELS = {
    "float": "float",
    "int": "int",
    "ndarray": "NumPy array (8 x float32)",
    "tensor": "0-d torch tensor",
}
DRAIN_MODES = ("drain", "end-to-end", "drain-noindex")
DRAIN_LABELS = {
    "drain": "drain (writer alone)",
    "end-to-end": "end-to-end (log + drain)",
    "drain-noindex": "drain, without index records_by_name",
}


# ----------------------------------------------------------------------------- children


def _make_value(kind: str) -> Any:
    if kind == "float":
        return 0.123456789
    if kind == "int":
        return 12345
    if kind == "ndarray":
        import numpy as np

        return np.arange(8, dtype=np.float32)
    if kind == "tensor":
        import torch

        return torch.tensor(0.5)
    raise ValueError(kind)


def child_call(opts: argparse.Namespace) -> dict[str, Any]:
    """Time ``--reps`` pairs of (empty call loop, hl.log loop) in one process."""
    import hindlog as hl
    from hindlog import record

    value = _make_value(opts.value)
    hl.init(project="bench-log")
    rec = record.current()
    assert rec is not None, "hindlog did not start"
    writer = rec.writer
    rec._snapshot_thread.join(60)
    writer.flush(600)

    log = hl.log
    n = opts.calls
    calls = range(n)
    perf = time.perf_counter_ns

    def empty(name: str, value: Any) -> Any:
        return value

    empty_us: list[float] = []
    log_us: list[float] = []
    with_drain_us: list[float] = []
    # Iteration 0 warms up (first connection, first context, caches) and is dropped.
    for it in hl.loop("rep", range(opts.reps + 1)):
        writer.flush(600)
        t0 = perf()
        for _ in calls:
            empty("loss", value)
        t1 = perf()
        for _ in calls:
            log("loss", value)
        t2 = perf()
        writer.flush(600)
        t3 = perf()
        if it:
            empty_us.append((t1 - t0) / n / 1e3)
            log_us.append((t2 - t1) / n / 1e3)
            with_drain_us.append((t3 - t1) / n / 1e3)
    written = writer.written
    hl.finish()
    load = os.getloadavg()[0]
    expected = n * (opts.reps + 1)
    if written != expected:
        raise SystemExit(f"writer committed {written} records, expected {expected}")
    return {"empty_us": empty_us, "log_us": log_us, "log_with_drain_us": with_drain_us, "written": written,
            "load_avg_1min_at_end": load}


def child_drain(opts: argparse.Namespace) -> dict[str, Any]:
    """Log ``--records`` records as fast as possible and time until they are committed."""
    import hindlog as hl
    from hindlog import catalog, record

    hl.init(project="bench-log")
    rec = record.current()
    assert rec is not None, "hindlog did not start"
    writer = rec.writer
    rec._snapshot_thread.join(60)
    writer.flush(600)
    if opts.drop_index:
        conn = catalog.connect(rec.store.catalog_path)
        conn.execute("DROP INDEX IF EXISTS records_by_name")
        conn.close()
    before = writer.written

    # Time spent inside the writer's drains (wall clock and the writer thread's CPU time):
    # the thread's CPU time is the least sensitive to a busy machine.
    inner = {"wall": 0.0, "cpu": 0.0, "drains": 0}
    drain_once = writer._drain_once

    def timed_drain() -> None:
        w0, c0 = time.perf_counter(), time.thread_time()
        drain_once()
        inner["wall"] += time.perf_counter() - w0
        inner["cpu"] += time.thread_time() - c0
        inner["drains"] += 1

    writer._drain_once = timed_drain  # the writer thread looks the method up on every wake
    load_before = os.getloadavg()[0]
    log = hl.log
    steps = opts.records // 4
    n = steps * 4
    perf = time.perf_counter
    t0 = perf()
    for _ in hl.loop("epoch", range(1)):
        for step in hl.loop("step", range(steps)):
            x = step * 1e-3
            log("loss", x)
            log("accuracy", x)
            log("lr", x)
            log("grad_norm", x)
    t1 = perf()
    ok = writer.flush(600)
    t2 = perf()
    load_after = os.getloadavg()[0]
    written = writer.written - before
    conn = catalog.connect(rec.store.catalog_path)
    stored = catalog.count_records(conn, rec.run)
    conn.close()
    hl.finish()
    if not ok or written != n or stored != n:
        raise SystemExit(f"flush ok={ok}, writer committed {written}, catalog holds {stored}, expected {n}")
    return {
        "records": n,
        "enqueue_s": t1 - t0,
        "flush_s": t2 - t1,
        "total_s": t2 - t0,
        "enqueue_us_per_record": (t1 - t0) / n * 1e6,
        "drain_rate": n / (t2 - t1),
        "end_to_end_rate": n / (t2 - t0),
        "writer_wall_s": inner["wall"],
        "writer_cpu_s": inner["cpu"],
        "writer_drains": inner["drains"],
        "writer_wall_rate": n / inner["wall"],
        "writer_cpu_rate": n / inner["cpu"],
        "load_avg_1min": [load_before, load_after],
    }


# ----------------------------------------------------------------------------- parent


def run_child(args: list[str], env_extra: dict[str, str] | None = None, timeout: float = 900) -> dict[str, Any]:
    """Run this script as a child in a new temporary project and store; return its JSON."""
    with tempfile.TemporaryDirectory(prefix="hindlog-bench-log-") as tmp:
        project = Path(tmp) / "project"
        project.mkdir()
        out = Path(tmp) / "result.json"
        env = dict(os.environ)
        for key in list(env):
            if key.startswith("HINDLOG_"):
                del env[key]
        env["HINDLOG_DIR"] = str(Path(tmp) / "store")
        env.update(env_extra or {})
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *args, "--out", str(out)]
        proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"child {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return json.loads(out.read_text())


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    import hindlog

    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "hindlog": getattr(hindlog, "__version__", None),
        "git_head": commit,
        "load_avg_at_start": os.getloadavg(),
    }


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def _fmt_us(x: float) -> str:
    return f"{x:.3f}" if x < 10 else f"{x:,.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer and smaller runs (a smoke test)")
    parser.add_argument("--values", default=",".join(VALUE_KINDS), help="value kinds to time (comma separated)")
    parser.add_argument("--skip-call", action="store_true")
    parser.add_argument("--skip-drain", action="store_true")
    parser.add_argument("--out-json", default=str(RESULTS))
    parser.add_argument("--table-from", metavar="JSON", help="only print the tables of a saved result")
    # child-only options
    parser.add_argument("--child", choices=("call", "drain"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--value", default="float", help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--reps", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--records", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--drop-index", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args()

    if opts.child:
        result = child_call(opts) if opts.child == "call" else child_drain(opts)
        Path(opts.out).write_text(json.dumps(result))
        return
    if opts.table_from:
        print(table(json.loads(Path(opts.table_from).read_text())))
        return

    quick = opts.quick
    calls = 20_000
    call_runs, call_reps = (1, 5) if quick else (3, 15)
    records = 200_000 if quick else 1_000_000
    drain_runs = {"drain": 1, "end-to-end": 1, "drain-noindex": 1} if quick else {
        "drain": 5, "end-to-end": 5, "drain-noindex": 3}
    values = [v for v in opts.values.split(",") if v]

    info = machine()
    started = time.time()
    print(f"# hl.log benchmark ({'quick' if quick else 'full'}): {info['nproc']} cores, {info['cpu']}, "
          f"Python {info['python']}, SQLite {info['sqlite']}", file=sys.stderr)

    # Runs are interleaved (round-robin over value kinds and drain modes) so that a burst of
    # load from other processes falls on every row alike rather than on one.
    call_results: dict[str, Any] = {}
    if not opts.skip_call:
        raws = {kind: {"empty_us": [], "log_us": [], "log_with_drain_us": []} for kind in values}
        per_runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in values}
        loads: dict[str, list[float]] = {kind: [] for kind in values}
        for r in range(call_runs):
            for kind in values:
                res = run_child(["call", "--value", kind, "--calls", str(calls), "--reps", str(call_reps)])
                raw = raws[kind]
                for key in raw:
                    raw[key] += res[key]
                per_runs[kind].append({k: _median(res[k]) for k in raw})
                loads[kind].append(res["load_avg_1min_at_end"])
                print(f"  call {kind} run {r + 1}/{call_runs}: log {per_runs[kind][-1]['log_us']:.3f} us, "
                      f"empty {per_runs[kind][-1]['empty_us']:.3f} us", file=sys.stderr)
        for kind in values:
            raw = raws[kind]
            diffs = [lg - e for lg, e in zip(raw["log_us"], raw["empty_us"])]
            call_results[kind] = {
                "calls_per_rep": calls,
                "reps": len(raw["log_us"]),
                "child_runs": call_runs,
                "median_empty_us": _median(raw["empty_us"]),
                "median_log_us": _median(raw["log_us"]),
                "median_diff_us": _median(diffs),
                "median_log_with_drain_us": _median(raw["log_with_drain_us"]),
                "min_log_us": min(raw["log_us"]),
                "max_log_us": max(raw["log_us"]),
                "per_run_medians": per_runs[kind],
                "load_avg_1min": loads[kind],
                "raw": raw,
            }

    drain_results: dict[str, Any] = {}
    if not opts.skip_drain:
        all_runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in DRAIN_MODES}
        for r in range(max(drain_runs.values())):
            for mode in DRAIN_MODES:
                if r >= drain_runs[mode]:
                    continue
                args = ["drain", "--records", str(records)]
                env = {}
                if mode in ("drain", "drain-noindex"):
                    env["HINDLOG_FLUSH_INTERVAL"] = "3600"
                if mode == "drain-noindex":
                    args.append("--drop-index")
                res = run_child(args, env)
                all_runs[mode].append(res)
                rate = res["end_to_end_rate"] if mode == "end-to-end" else res["drain_rate"]
                print(f"  {mode} run {r + 1}/{drain_runs[mode]}: {rate:,.0f} records/s "
                      f"({res['writer_cpu_rate']:,.0f} per writer CPU-second)", file=sys.stderr)
        for mode, runs in all_runs.items():
            rates = [x["end_to_end_rate"] if mode == "end-to-end" else x["drain_rate"] for x in runs]
            drain_results[mode] = {
                "records": runs[0]["records"],
                "child_runs": len(runs),
                "median_rate": _median(rates),
                "min_rate": min(rates),
                "max_rate": max(rates),
                "median_enqueue_us_per_record": _median([x["enqueue_us_per_record"] for x in runs]),
                "median_total_s": _median([x["total_s"] for x in runs]),
                "median_flush_s": _median([x["flush_s"] for x in runs]),
                "median_writer_wall_rate": _median([x["writer_wall_rate"] for x in runs]),
                "median_writer_cpu_rate": _median([x["writer_cpu_rate"] for x in runs]),
                "runs": runs,
            }

    command = "cd " + str(REPO) + " && .venv/bin/python bench/bench_log.py" + (" --quick" if quick else "")
    result = {
        "benchmark": "log",
        "quick": quick,
        "command": ".venv/bin/python bench/bench_log.py" + (" --quick" if quick else ""),
        "machine": info,
        "started": started,
        "duration_s": time.time() - started,
        "targets": {"float_call_us_max": 1.0, "drain_rate_min": 300_000},
        "call": call_results,
        "drain": drain_results,
    }
    info["load_avg_at_end"] = os.getloadavg()
    out_json = Path(opts.out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2) + "\n")

    print(table(result))
    print(f"\n(command: {command}; JSON in {out_json})")


def table(result: dict[str, Any]) -> str:
    """The markdown tables of a result (also used to write docs/benchmarks.md)."""
    lines = []
    call = result["call"]
    if call:
        lines += [
            "| value logged | empty call (µs) | `hl.log` (µs) | difference (µs) | `hl.log` + its drain (µs) |",
            "|---|---:|---:|---:|---:|",
        ]
        for kind, c in call.items():
            lines.append(
                f"| {VALUE_LABELS.get(kind, kind)} | {_fmt_us(c['median_empty_us'])} | {_fmt_us(c['median_log_us'])} "
                f"| {_fmt_us(c['median_diff_us'])} | {_fmt_us(c['median_log_with_drain_us'])} |"
            )
        any_c = next(iter(call.values()))
        lines.append("")
        lines.append(f"Medians of {any_c['reps']} timed loops of {any_c['calls_per_rep']:,} calls "
                     f"({any_c['child_runs']} fresh processes).")
    drain = result["drain"]
    if drain:
        if lines:
            lines.append("")
        lines += [
            "| drain | records | records/s (median) | min - max | records per writer CPU-second "
            "| `hl.log` while queueing (µs/record) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for mode, d in drain.items():
            lines.append(
                f"| {DRAIN_LABELS.get(mode, mode)} | {d['records']:,} | {d['median_rate']:,.0f} "
                f"| {d['min_rate']:,.0f} - {d['max_rate']:,.0f} | {d['median_writer_cpu_rate']:,.0f} "
                f"| {d['median_enqueue_us_per_record']:.3f} |"
            )
        runs = sorted({d["child_runs"] for d in drain.values()})
        lines.append("")
        lines.append(f"Medians of {' / '.join(map(str, runs))} fresh processes per row.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
