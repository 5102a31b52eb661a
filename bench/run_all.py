"""Run the whole benchmark suite, one script after the other, then write the report.

    .venv/bin/python bench/run_all.py [--quick] [--only bench_log,bench_scaling,...] [--skip-setup] [--no-report]

`make bench` runs it; `make bench-quick` adds --quick, which passes --quick
to every script, with one pair / one repeat each and, for the scripts that
run several workloads, only those in QUICK_WORKLOADS (a smoke run of every
script, table and plot in under 5 minutes; its numbers are not evidence).

1. The peers' setup scripts (bench/peers/setup_*.sh) run first, each making
   its own virtual environment under bench/.venvs/ (a no-op when it exists).
   A failing setup is reported and the suite goes on: the peer's benchmark
   then records the failure in its cells.
2. Every benchmark script of SUITE that exists runs in turn, never two at
   once (they measure wall time on a shared machine). A script that fails or
   times out is reported and the rest go on.
3. bench/report.py writes docs/benchmarks.md and docs/img/*.png from
   bench/results/*.json.

What ran, how long it took and how it ended is written to
bench/results/suite.json (suite-quick.json with --quick); the report shows it
and marks a benchmark whose last run failed. Exit status: 0 if everything
ran, 1 if a setup or a benchmark failed (the report is written either way).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"

# With --quick every script runs, shortened by its own --quick, with one pair / one repeat, and the
# scripts that run several workloads run only their cheapest ones below: with all workloads the
# quick runs take 10-15 minutes on the 2-core reference machine (bench_replay.py alone about 5),
# and a quick suite must finish in under 5 minutes. A smoke run of every script, table and plot:
# its numbers are not evidence (the report prefers the full runs' files).
QUICK_WORKLOADS = {
    "bench_record.py": "cnn,sklearn",
    "bench_replay.py": "sklearn",
    "bench_handsfree.py": "while-early,sklearn-partial-fit",
    "bench_peers.py": "cnn",
    "bench_replay_pyflor.py": "sklearn",
    "bench_flordb.py": "cnn",
}

# script, result name (bench/results/<name>[-quick].json), arguments for a full run, for --quick
SUITE: list[tuple[str, str, list[str], list[str]]] = [
    ("bench_log.py", "log", [], ["--quick", "--out-json", str(RESULTS / "log-quick.json")]),
    ("bench_peer_logcall.py", "peer-logcall", ["--no-setup"], ["--quick", "--no-setup"]),
    ("bench_record.py", "record", ["--pairs", "5", "--noise"], ["--quick", "--pairs", "1"]),
    ("bench_replay.py", "replay", [], ["--quick", "--repeats", "1"]),
    # One intra-op thread per process: on a 2-core machine two replay workers then have a core each,
    # which is what the parallel-replay target measures (workers keep the record's thread count).
    ("bench_replay.py", "replay-1thread", ["--threads", "1", "--workloads", "cnn,lstm", "--out", "replay-1thread"],
     ["--quick", "--repeats", "1", "--threads", "1", "--out", "replay-1thread-quick"]),
    ("bench_handsfree.py", "handsfree", [], ["--quick", "--pairs", "1"]),
    ("bench_peers.py", "peers-pyflor", ["--no-setup"], ["--quick", "--no-setup"]),
    # hindlog's replay and pyflor's alternating in one run: the replay target's comparison.
    ("bench_replay_pyflor.py", "replay-pyflor", ["--no-setup", "--matched-epsilon", "0.1"],
     ["--quick", "--no-setup", "--pairs", "1"]),
    ("bench_flordb.py", "peers-flordb", ["--no-setup"], ["--quick", "--no-setup"]),
    ("bench_scaling.py", "scaling", [], ["--quick"]),
    ("bench_persist.py", "persist", [], ["--quick"]),
    ("bench_checkpoint_cost.py", "checkpoint-cost", [], ["--quick", "--pairs", "1"]),
    ("bench_policy_weight.py", "policy-weight", [], ["--quick"]),
    ("bench_background_priority.py", "background-priority", [], ["--quick"]),
    ("bench_costs.py", "costs", [], ["--quick"]),
]

TIMEOUT = {False: 3 * 3600, True: 15 * 60}  # per script, seconds


def run_streamed(cmd: list[str], timeout: float) -> tuple[int | None, float, str]:
    """Run ``cmd`` from the repository root, echoing its output; exit code (None on timeout), seconds, output tail."""
    tail: collections.deque[str] = collections.deque(maxlen=40)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            start_new_session=True)
    timed_out = threading.Event()

    def kill() -> None:  # the script and the processes it started (its own session), nothing else
        timed_out.set()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(30)
                return
            except subprocess.TimeoutExpired:
                continue

    watchdog = threading.Timer(timeout, kill)
    watchdog.daemon = True
    watchdog.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            tail.append(line.rstrip("\n"))
        rc: int | None = proc.wait()
    finally:
        watchdog.cancel()
    if timed_out.is_set():
        tail.append(f"killed after {timeout:.0f}s (timeout)")
        rc = None
    return rc, time.perf_counter() - t0, "\n".join(tail)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="pass --quick (and the QUICK settings) to every benchmark")
    p.add_argument("--only", help="comma-separated script names (with or without .py) to run, e.g. bench_log,bench_scaling")
    p.add_argument("--skip-setup", action="store_true", help="do not run bench/peers/setup_*.sh")
    p.add_argument("--no-report", action="store_true", help="do not run bench/report.py at the end")
    p.add_argument("--dry-run", action="store_true", help="print the commands and run nothing")
    a = p.parse_args()
    only = {s if s.endswith(".py") else s + ".py" for s in a.only.split(",") if s} if a.only else None
    unknown = sorted(only - {script for script, *_ in SUITE}) if only else []
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; the suite: {', '.join(s for s, *_ in SUITE)}")
    timeout = TIMEOUT[a.quick]
    started = time.time()
    steps: list[dict] = []

    def step(kind: str, name: str, cmd: list[str], result: str | None = None) -> None:
        if a.dry_run:
            print(" ".join(cmd))
            return
        print(f"\n=== {' '.join(cmd[1:] if cmd[0] == sys.executable else cmd)}", flush=True)
        rc, secs, tail = run_streamed(cmd, timeout)
        status = "ok" if rc == 0 else ("timeout" if rc is None else f"failed (exit {rc})")
        print(f"=== {name}: {status} in {secs:.0f}s", flush=True)
        steps.append({"kind": kind, "name": name, "command": " ".join(cmd), "status": status, "rc": rc, "seconds": secs,
                      "started": time.time() - secs, "result": result, "tail": tail if rc != 0 else ""})

    setups = sorted((BENCH / "peers").glob("setup_*.sh"))
    if not a.skip_setup:
        for s in setups:
            step("setup", s.name, ["bash", str(s)])
    for script, result, full_args, quick_args in SUITE:
        if only and script not in only:
            continue
        path = BENCH / script
        if not path.exists():
            steps.append({"kind": "benchmark", "name": script, "status": "missing", "seconds": 0.0, "result": result})
            continue
        args = [*quick_args, *(["--workloads", QUICK_WORKLOADS[script]] if script in QUICK_WORKLOADS else [])] if a.quick else full_args
        step("benchmark", script, [sys.executable, str(path.relative_to(ROOT)), *args], result + ("-quick" if a.quick else ""))

    if a.dry_run:
        if not a.no_report:
            print(f"{sys.executable} bench/report.py")
        return 0
    summary = {
        "benchmark": "suite", "quick": a.quick, "command": " ".join([".venv/bin/python", "bench/run_all.py", *sys.argv[1:]]),
        "started": started, "duration_s": time.time() - started, "benchmarks_s": sum(s["seconds"] for s in steps if s["kind"] == "benchmark"),
        "steps": steps,
    }
    try:
        sys.path.insert(0, str(BENCH))
        from common import machine

        summary["machine"] = machine()
    except Exception as e:  # noqa: BLE001
        summary["machine"] = {"error": str(e)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"suite{'-quick' if a.quick else ''}.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")

    if not a.no_report:
        step("report", "report.py", [sys.executable, str((BENCH / "report.py").relative_to(ROOT))])

    print(f"\n{'name':<28} {'status':<18} seconds")
    for s in steps:
        print(f"{s['name']:<28} {s['status']:<18} {s['seconds']:7.0f}")
    total = time.time() - started
    print(f"{'total':<28} {'':<18} {total:7.0f}  (benchmarks alone: {summary['benchmarks_s']:.0f}s)")
    bad = [s["name"] for s in steps if s["status"] not in ("ok", "missing")]
    if bad:
        print(f"\nfailed: {', '.join(bad)} (the report marks them; the rest ran)", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
