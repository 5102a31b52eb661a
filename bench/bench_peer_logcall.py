"""Benchmark: the cost of one log call in a training-like loop, hindlog and its peers side by side.

    python bench/bench_peer_logcall.py [--quick] [--reps N] [--systems a,b,...] [--no-setup] [--out NAME]

Every system runs in its own subprocess, with its own virtual environment's
interpreter, in a fresh temporary directory:

=================  =========================================  ==========================================
system             interpreter                                call timed
=================  =========================================  ==========================================
empty              this interpreter (sys.executable)          ``empty("loss", value)`` (a Python function)
hindlog            this interpreter (the project's)           ``hl.log("loss", value)`` in an ``hl.loop``
pyflor             bench/.venvs/pyflor (setup_pyflor.sh)      ``flor.log("loss", value)`` in a ``Flor.loop``
flordb             bench/.venvs/flordb (setup_flordb.sh)      ``flor.log("loss", value)`` in a ``flor.loop``
tensorboard        bench/.venvs/trackers (setup_trackers.sh)  ``SummaryWriter.add_scalar("loss", value, step)``
mlflow             bench/.venvs/trackers                      ``mlflow.log_metric("loss", value, step=step)``
mlflow-sqlite      bench/.venvs/trackers                      the same, SQLite tracking store (3.x default)
mlflow-async       bench/.venvs/trackers                      ``... log_metric(..., synchronous=False)``
=================  =========================================  ==========================================

The value is a Python float. Inside the child, an outer loop of ``reps + 1``
iterations (the system's main-loop construct where it has one) runs ``calls``
calls per iteration; the first iteration (a few hundred calls) warms up and is
dropped. The loop alone is timed with ``time.perf_counter_ns``: ``us_per_call``
is the median over the repetitions of loop time / calls. After each timed loop
the system's own flush runs and is timed separately (``drain_s``, median per
repetition): hindlog ``writer.flush()``, TensorBoard ``writer.flush()``, MLflow
async ``mlflow.flush_async_logging()``; flordb writes its buffer only when the
run is committed, so ``flor.commit()`` is timed once at the end (``close_s``,
with TensorBoard's ``close()`` and MLflow's ``end_run()``); pyflor writes at
interpreter exit, so ``exit_s`` (the parent's clock from the child's end of
measurement until the process is gone) is the only place its drain shows.

pyflor runs as it must (see bench/bench_peers.py): in a git project on a
``flor.shadow`` branch whose directory name has no underscore, recording with
``--flor NAME``, ``HOME`` pointing at a fresh folder. flordb runs in a git
project (it switches it to a ``flor.branch`` and auto-commits at the end);
its stdout (flordb echoes every logged value) goes to a file. MLflow uses a
local file store (``file://`` URI, with ``MLFLOW_ALLOW_FILE_STORE=true``: MLflow
3.x refuses it otherwise) in a temporary folder, and, as ``mlflow-sqlite``, its
default SQLite store; TensorBoard writes
event files to a temporary folder.

A system whose environment is missing, cannot be set up, or whose child fails
gets a row with its status and the tail of the error; the others go on.
Results: bench/results/peer-logcall.json (peer-logcall-quick.json with
--quick) and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH, GIT_ENV, machine, save  # noqa: E402

VENVS = BENCH / ".venvs"
PEERS = BENCH / "peers"
TIMEOUT = 900

# The measuring skeleton every child shares; {setup}, {outer}, {call}, {drain}, {close}
# are filled per system. Parameters come from the environment (pyflor and flordb parse argv).
SKELETON = r'''
import json, os, sys, time
_t_start = time.perf_counter()
OUT = os.environ["LOGCALL_OUT"]
CALLS = int(os.environ["LOGCALL_CALLS"])
REPS = int(os.environ["LOGCALL_REPS"])
WARM = int(os.environ["LOGCALL_WARM"])
TMP = os.environ["LOGCALL_TMP"]
perf = time.perf_counter_ns
value = 0.123456789
{setup}
_t_setup = time.perf_counter() - _t_start
loop_us, drain_s = [], []
base = 0
for r in {outer}:
    n = WARM if r == 0 else CALLS
    t0 = perf()
    for i in range(n):
        {call}
    t1 = perf()
    {drain}
    t2 = perf()
    base += n
    if r:
        loop_us.append((t1 - t0) / n / 1e3)
        drain_s.append((t2 - t1) / 1e9)
t3 = perf()
{close}
close_s = (perf() - t3) / 1e9
with open(OUT, "w") as f:
    json.dump({{"loop_us": loop_us, "drain_s": drain_s, "close_s": close_s, "setup_s": _t_setup,
               "version": VERSION, "python": sys.version.split()[0], "end_time": time.time()}}, f)
'''

SYSTEMS = {
    "empty": {
        "label": "empty Python call", "venv": None, "setup_script": None,
        "setup": "def empty(name, value):\n    return value\nVERSION = None",
        "outer": "range(REPS + 1)", "call": 'empty("loss", value)', "drain": "pass", "close": "pass",
    },
    "hindlog": {
        "label": "hindlog `hl.log`", "venv": None, "setup_script": None,
        "setup": ("import hindlog as hl\nfrom hindlog import record\nimport importlib.metadata as _md\n"
                  "try:\n    VERSION = _md.version('hindlog')\nexcept Exception:\n    VERSION = getattr(hl, '__version__', None)\n"
                  "hl.init(project='bench-logcall')\nrec = record.current()\nassert rec is not None, 'hindlog did not start'\n"
                  "writer = rec.writer\nrec._snapshot_thread.join(60)\nwriter.flush(600)"),
        "outer": 'hl.loop("rep", range(REPS + 1))', "call": 'hl.log("loss", value)',
        "drain": "writer.flush(600)", "close": "hl.finish()",
    },
    "pyflor": {
        "label": "pyflor 2.5.6 `flor.log`", "venv": "pyflor", "setup_script": "setup_pyflor.sh",
        "setup": ("import importlib.metadata as _md\nVERSION = _md.version('pyflor')\n"
                  "import flor\nfrom flor import MTK as Flor"),
        "outer": "Flor.loop(range(REPS + 1))", "call": 'flor.log("loss", value)', "drain": "pass", "close": "pass",
        "argv": ["--flor", "logcall"], "git_branch": "flor.shadow", "dirname": "pyflorlogcall",
    },
    "flordb": {
        "label": "flordb 4.0.1 `flor.log`", "venv": "flordb", "setup_script": "setup_flordb.sh",
        "setup": ("import importlib.metadata as _md\nVERSION = _md.version('flordb')\n"
                  "import flordb as flor\nflor.arg('calls', CALLS)"),
        "outer": 'flor.loop("rep", range(REPS + 1))', "call": 'flor.log("loss", value)', "drain": "pass",
        "close": "flor.commit()", "git_branch": "main", "dirname": "flordblogcall",
    },
    "tensorboard": {
        "label": "TensorBoard `SummaryWriter.add_scalar`", "venv": "trackers", "setup_script": "setup_trackers.sh",
        "setup": ("import importlib.metadata as _md\nVERSION = _md.version('tensorboard')\n"
                  "from torch.utils.tensorboard import SummaryWriter\n"
                  "writer = SummaryWriter(log_dir=os.path.join(TMP, 'tb'))"),
        "outer": "range(REPS + 1)", "call": 'writer.add_scalar("loss", value, base + i)',
        "drain": "writer.flush()", "close": "writer.close()",
    },
    "mlflow": {
        "label": "MLflow `log_metric`", "venv": "trackers", "setup_script": "setup_trackers.sh",
        "setup": ("import importlib.metadata as _md\nVERSION = _md.version('mlflow')\nimport mlflow\n"
                  "mlflow.set_tracking_uri('file://' + os.path.join(TMP, 'mlruns'))\n"
                  "mlflow.set_experiment('logcall')\nmlflow.start_run()"),
        "outer": "range(REPS + 1)", "call": 'mlflow.log_metric("loss", value, step=base + i)',
        "drain": "pass", "close": "mlflow.end_run()",
        # MLflow 3.x refuses the file store unless told ("maintenance mode"); the peer notes measured it.
        "env": {"MLFLOW_ALLOW_FILE_STORE": "true"},
    },
    "mlflow-sqlite": {
        "label": "MLflow `log_metric`, SQLite store", "venv": "trackers", "setup_script": "setup_trackers.sh",
        "setup": ("import importlib.metadata as _md\nVERSION = _md.version('mlflow')\nimport mlflow\n"
                  "mlflow.set_tracking_uri('sqlite:///' + os.path.join(TMP, 'mlflow.db'))\n"
                  "mlflow.set_experiment('logcall')\nmlflow.start_run()"),
        "outer": "range(REPS + 1)", "call": 'mlflow.log_metric("loss", value, step=base + i)',
        "drain": "pass", "close": "mlflow.end_run()",
    },
    "mlflow-async": {
        "label": "MLflow `log_metric(..., synchronous=False)`", "venv": "trackers", "setup_script": "setup_trackers.sh",
        "setup": ("import importlib.metadata as _md\nVERSION = _md.version('mlflow')\nimport mlflow\n"
                  "mlflow.set_tracking_uri('file://' + os.path.join(TMP, 'mlruns'))\n"
                  "mlflow.set_experiment('logcall')\nmlflow.start_run()"),
        "outer": "range(REPS + 1)", "call": 'mlflow.log_metric("loss", value, step=base + i, synchronous=False)',
        "drain": "mlflow.flush_async_logging()", "close": "mlflow.end_run()",
        "env": {"MLFLOW_ALLOW_FILE_STORE": "true"},
    },
}

# calls per timed loop (full, quick); reps (full, quick) come from the command line
CALLS = {
    "empty": (20_000, 20_000), "hindlog": (20_000, 20_000), "pyflor": (20_000, 20_000),
    "flordb": (20_000, 2_000), "tensorboard": (20_000, 2_000),
    "mlflow": (2_000, 200), "mlflow-sqlite": (2_000, 200), "mlflow-async": (2_000, 200),
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def tail(text: str, n: int = 1500) -> str:
    return text[-n:] if text else ""


def interpreter(spec: dict) -> Path:
    return Path(sys.executable) if spec["venv"] is None else VENVS / spec["venv"] / "bin" / "python"


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, env={**os.environ, **GIT_ENV}, check=True, capture_output=True)


def setup_env(script: str, done: dict[str, tuple[bool, str]]) -> tuple[bool, str]:
    """Run a peer's setup script once per invocation (they are idempotent); (ok, error tail)."""
    if script not in done:
        log(f"setting up: bash bench/peers/{script}")
        r = subprocess.run(["bash", str(PEERS / script)], capture_output=True, text=True)
        done[script] = (r.returncode == 0, tail(r.stdout + "\n" + r.stderr))
    return done[script]


def run_system(name: str, spec: dict, calls: int, reps: int, warm: int, base: Path) -> dict:
    py = interpreter(spec)
    row: dict = {"system": name, "label": spec["label"], "version": None, "us_per_call": None, "drain_s": None,
                 "calls": calls, "reps": reps, "status": "ok", "error": None, "python": str(py)}
    if not py.exists():
        row.update(status="missing venv", error=f"{py} does not exist; run bash bench/peers/{spec['setup_script']}")
        return row
    work = base / name.replace("-", "")
    work.mkdir()
    project = work / spec.get("dirname", "project")
    project.mkdir()
    tmp = work / "tmp"
    tmp.mkdir()
    out = work / "result.json"
    child = project / "logcall.py"
    child.write_text(SKELETON.format(**{k: spec[k] for k in ("setup", "outer", "call", "drain", "close")}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HINDLOG_", "PEER_", "MLFLOW_"))}
    env.update(GIT_ENV)
    env.update({"LOGCALL_OUT": str(out), "LOGCALL_CALLS": str(calls), "LOGCALL_REPS": str(reps),
                "LOGCALL_WARM": str(warm), "LOGCALL_TMP": str(tmp), "HOME": str(work / "home"),
                "HINDLOG_DIR": str(work / "store"), "PYTHONDONTWRITEBYTECODE": "1", **spec.get("env", {})})
    (work / "home").mkdir()
    if "git_branch" in spec:
        git(project, "init", "-q", "-b", spec["git_branch"])
        git(project, "add", child.name)
        git(project, "commit", "-q", "-m", "logcall bench")
    cmd = [str(py), child.name, *spec.get("argv", [])]
    row["cmd"] = " ".join(cmd)
    stdout_path = work / "stdout.txt"
    t0 = time.perf_counter()
    try:
        with stdout_path.open("w") as so:
            r = subprocess.run(cmd, cwd=project, env=env, stdout=so, stderr=subprocess.PIPE, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        row.update(status="timeout", error=f"no result within {TIMEOUT}s")
        return row
    end = time.time()
    row["wall_s"] = time.perf_counter() - t0
    if r.returncode != 0 or not out.exists():
        row.update(status=f"failed (exit {r.returncode})", error=tail(r.stderr) or tail(stdout_path.read_text()))
        return row
    d = json.loads(out.read_text())
    loops, drains = d["loop_us"], d["drain_s"]
    with_drain = [lu + ds * 1e6 / calls for lu, ds in zip(loops, drains)]
    row.update({
        "version": d["version"], "python_version": d["python"],
        "us_per_call": statistics.median(loops), "us_per_call_reps": loops,
        "drain_s": statistics.median(drains), "drain_s_reps": drains,
        "us_per_call_with_drain": statistics.median(with_drain),
        "close_s": d["close_s"], "exit_s": max(0.0, end - d["end_time"]), "setup_s": d["setup_s"],
    })
    if r.stderr.strip():
        row["stderr_tail"] = tail(r.stderr, 600)
    return row


def fmt(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:,.0f}{unit}"
    if x >= 10:
        return f"{x:.1f}{unit}"
    return f"{x:.3f}{unit}" if x < 1 else f"{x:.2f}{unit}"


def table(results: list[dict]) -> str:
    lines = ["| system | version | µs per call (median) | µs per call + per-loop drain | drain per loop (s) "
             "| close (s) | exit (s) | calls x reps | status |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        last = ((r.get("error") or "").strip().splitlines() or [""])[-1]
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {last[:160]}"
        lines.append(f"| {r['label']} | {r['version'] or '-'} | {fmt(r['us_per_call'])} | {fmt(r.get('us_per_call_with_drain'))} "
                     f"| {fmt(r['drain_s'])} | {fmt(r.get('close_s'))} | {fmt(r.get('exit_s'))} "
                     f"| {r['calls']:,} x {r['reps']} | {status} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer calls for the slow systems, 2 repetitions (well under a minute)")
    p.add_argument("--reps", type=int, default=None, help="timed loops per system (5; 2 with --quick)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of " + ",".join(SYSTEMS))
    p.add_argument("--no-setup", action="store_true", help="do not run the peers' setup scripts first")
    p.add_argument("--out", default=None, help="results name under bench/results (default peer-logcall[-quick])")
    a = p.parse_args()
    reps = a.reps or (2 if a.quick else 5)
    names = [s for s in a.systems.split(",") if s]
    unknown = [s for s in names if s not in SYSTEMS]
    if unknown:
        p.error(f"unknown systems {unknown}; known: {', '.join(SYSTEMS)}")

    started = time.time()
    setups: dict[str, tuple[bool, str]] = {}
    results = []
    base = Path(tempfile.mkdtemp(prefix="logcallbench"))  # no underscore: pyflor breaks on one
    try:
        for name in names:
            spec = SYSTEMS[name]
            calls = CALLS[name][1 if a.quick else 0]
            warm = min(calls, 500)
            if spec["setup_script"] and not a.no_setup:
                ok, err = setup_env(spec["setup_script"], setups)
                if not ok:
                    results.append({"system": name, "label": spec["label"], "version": None, "us_per_call": None,
                                    "drain_s": None, "calls": calls, "reps": reps, "status": "setup failed",
                                    "error": err, "python": str(interpreter(spec))})
                    log(f"{name}: setup failed: {err.strip().splitlines()[-1:] if err else ''}")
                    continue
            log(f"{name}: {calls:,} calls x {reps} ...")
            try:
                row = run_system(name, spec, calls, reps, warm, base)
            except Exception as e:  # noqa: BLE001
                row = {"system": name, "label": spec["label"], "version": None, "us_per_call": None, "drain_s": None,
                       "calls": calls, "reps": reps, "status": "failed", "error": tail(str(e)), "python": str(interpreter(spec))}
            results.append(row)
            log(f"  {row['status']}: {fmt(row['us_per_call'])} µs/call, drain {fmt(row['drain_s'])} s"
                + (f"\n  {row['error'].strip().splitlines()[-1]}" if row.get("error") else ""))
    finally:
        shutil.rmtree(base, ignore_errors=True)

    data = {
        "benchmark": "peer-logcall", "quick": a.quick,
        "command": " ".join(["python", "bench/bench_peer_logcall.py", *sys.argv[1:]]),
        "machine": machine(), "started": started, "duration_s": time.time() - started,
        "value": "a Python float (0.123456789)",
        "results": results,
        "notes": [
            "us_per_call: median over reps of (timed loop / calls), timed inside the child with perf_counter_ns; "
            "the first (warm-up) loop is dropped.",
            "drain_s: median time of the flush after each timed loop (hindlog writer.flush, TensorBoard "
            "writer.flush, MLflow flush_async_logging); 0 where the system has no per-loop flush.",
            "close_s: time of the final close: hindlog hl.finish(), flordb flor.commit() (flordb writes its whole "
            "buffer to JSONL and SQLite and git-commits here), TensorBoard close(), MLflow end_run().",
            "exit_s: from the child's end of measurement to process exit, seen by the parent: pyflor writes its "
            "records at interpreter exit, so its drain is only visible here.",
            "flordb echoes every flor.log value to stdout (tqdm.write); stdout goes to a file here.",
            "MLflow: local file store (file:// tracking URI) in a temporary directory, with "
            "MLFLOW_ALLOW_FILE_STORE=true (MLflow 3.x raises 'The filesystem tracking backend ... is in maintenance "
            "mode' without it); mlflow-sqlite: a sqlite:/// tracking URI in a temporary directory.",
            "Fewer calls for the slow systems (calls column); per-call numbers are per call either way.",
        ],
    }
    path = save(a.out or ("peer-logcall" + ("-quick" if a.quick else "")), data)
    print(table(results))
    print(f"\n(command: {data['command']}; JSON in {path})")


if __name__ == "__main__":
    main()
