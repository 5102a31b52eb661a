"""Benchmark the peer system pyflor 2.5.6 on our four workloads, side by side with hindlog.

    python bench/bench_peers.py [--quick] [--pairs 3] [--repeats 2] [--workloads cnn,finetune,lstm,sklearn]
                                [--wait-load 1.2] [--wait-max 1500] [--no-setup] [--out NAME]

pyflor runs in its own virtual environment (bench/.venvs/pyflor, made by
bench/peers/setup_pyflor.sh, which this script runs first), on the pyflor
variants of the workloads in bench/peers/pyflor/. For each workload, in a
temporary project directory whose name has no underscore (pyflor breaks on
one), with ``git init`` on a ``flor.shadow`` branch and the script committed:

(a) record overhead: the script run plain (no ``--flor``: pyflor is imported
    but records nothing) and ``python script --flor NAME``, alternating the
    order, ``--pairs`` times; the median of the per-pair ratios record/plain;
(b) replay of a new main-loop statement: the statement of bench/bench_replay.py's
    CASES for that workload (``hl.log`` -> ``flor.log``), added after the same
    anchor line; ``python script --replay_flor`` (one process), and the
    parallel form, ``--replay_flor 1/2`` and ``--replay_flor 2/2`` (pyflor's
    worker indices start at 1; ``0/2`` fails its assertion) started together,
    the wall time of both. Parallel replay is measured twice: as written
    (pyflor re-executes the nested loops of each worker's epochs when n > 1:
    its ``probed`` default) and with ``probed=False`` on the nested loops (each
    worker restores checkpoints and skips them, as the one-process replay does);
    a full re-run of the modified script (plain) gives the reference values;
(c) checkpoint storage: bytes pyflor wrote under $HOME/.flor for one record
    run (HOME points at a fresh folder for every record run).

Replayed values are read from pyflor's SQLite store ($HOME/.flor/<project>.db)
and compared, epoch by epoch, with the values of the full re-run.
Whole-process wall times. Results: bench/results/peers-pyflor.json
(peers-pyflor-quick.json with --quick) and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import resource
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_replay import CASES  # noqa: E402
from common import BENCH, GIT_ENV, machine, median, save  # noqa: E402

PEERS = BENCH / "peers"
VARIANTS = PEERS / "pyflor"
SETUP = PEERS / "setup_pyflor.sh"
VENV = Path(os.environ.get("PYFLOR_VENV", BENCH / ".venvs" / "pyflor"))
PY = str(VENV / "bin" / "python")
TIMEOUT = 3600

# workload -> (script, project directory name: no underscore)
WORKLOADS = {
    "cnn": ("cnn.py", "cnn"),
    "finetune": ("finetune.py", "finetune"),
    "lstm": ("lstm.py", "lstm"),
    "sklearn": ("sklearn_sgd.py", "sklearnsgd"),
}
QUICK_ARGS = {"cnn": {"epochs": 2, "samples": 1024}, "finetune": {"epochs": 4}, "lstm": {"epochs": 2}, "sklearn": {"epochs": 6}}

# Runs the modified script without recording (a full re-run) and dumps the values flor.log saw.
TRUTH = r"""
import json, runpy, sys
out, script = sys.argv[1], sys.argv[2]
sys.argv = [script]
runpy.run_path(script, run_name="__main__")
from flor.logger import log_records
with open(out, "w") as f:
    json.dump([{"epoch": d["epoch"], "name": d["name"], "value": d["value"]} for d in log_records.record_logs], f)
"""


def log(msg: str) -> None:
    print(msg, flush=True)


def env_for(home: Path, args: dict) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HINDLOG_", "PEER_"))}
    env.update(GIT_ENV)
    env["HOME"] = str(home)
    env.update({f"PEER_ARG_{k}": str(v) for k, v in args.items()})
    return env


CPU: list[float] = []  # user+sys CPU seconds of the last run()'s process


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    elapsed = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU[:] = [(r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)]
    return elapsed, out


def checked(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    t, out = run(cmd, cwd, env)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return t


def run_parallel(cmds: list[list[str]], cwd: Path, env: dict[str, str]) -> tuple[float, list[float]]:
    """Start every command at once; wall time until the last one ends, and each one's time."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    each = []
    outs = []
    for p in procs:
        so, se = p.communicate(timeout=TIMEOUT)
        each.append(time.perf_counter() - t0)
        outs.append((p.returncode, so, se))
    wall = time.perf_counter() - t0
    for c, (rc, so, se) in zip(cmds, outs):
        if rc != 0:
            raise RuntimeError(f"{' '.join(c)} failed ({rc}):\n{so[-2000:]}\n{se[-3000:]}")
    return wall, each


def git(project: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=project, env={**os.environ, **GIT_ENV}, check=True, capture_output=True)


def new_project(base: Path, dirname: str, script: str, source: str) -> Path:
    project = base / dirname
    assert "_" not in project.name, "pyflor breaks on a project directory whose name has an underscore"
    project.mkdir()
    git(project, "init", "-q", "-b", "flor.shadow")
    (project / script).write_text(source)
    git(project, "add", script)
    git(project, "commit", "-q", "-m", f"pyflor bench: {script}")
    return project


def tree_bytes(path: Path) -> tuple[int, int]:
    total, files = 0, 0
    if path.exists():
        for p in path.rglob("*"):
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
                files += 1
    return total, files


def storage(home: Path, project: Path) -> dict:
    flor_home = home / ".flor"
    ckpt_bytes, ckpt_files = tree_bytes(flor_home / f"{project.name}_flor.shadow" / "data")
    home_bytes, home_files = tree_bytes(flor_home)
    proj_bytes, _ = tree_bytes(project / ".flor")
    # The journal: one JSON line per entry; data records name a checkpoint file.
    journals = [p for p in (flor_home / f"{project.name}_flor.shadow").glob("*.json") if not p.is_symlink()]
    blocks, with_data, records = 0, set(), 0
    for j in journals:
        for line in j.read_text().splitlines():
            d = json.loads(line)
            if d.get("metadata") == "LBRACKET":
                blocks += 1
            if "torch_ref" in d or "ref" in d or "csv_ref" in d:
                records += 1
                with_data.add((d.get("static_key"), d.get("global_key")))
    return {
        "checkpoint_bytes": ckpt_bytes, "checkpoint_files": ckpt_files,
        "flor_home_bytes": home_bytes, "flor_home_files": home_files, "project_flor_bytes": proj_bytes,
        "nested_loop_executions": blocks, "nested_loop_executions_checkpointed": len(with_data),
        "checkpointed_objects": records,
    }


def db_values(home: Path, project: Path) -> list[tuple[int, str, str]]:
    db = home / ".flor" / f"{project.name}.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(db)
    try:
        return [tuple(r) for r in conn.execute("SELECT epoch, name, value FROM log_records")]
    finally:
        conn.close()


def clear_db(db: Path) -> None:
    """Empty pyflor's log-record store between replays, keeping the file.

    Deleting it would be wrong before a parallel replay: each copy creates the
    store when it finds none, and two copies starting together both try, one
    failing with ``sqlite3.OperationalError: table watermark already exists``.
    """
    if db.exists():
        conn = sqlite3.connect(db)
        try:
            conn.execute("DELETE FROM log_records")
            conn.commit()
        finally:
            conn.close()


def close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def validate(rows: list[tuple[int, str, str]], truth: list[dict], names: list[str]) -> dict:
    """Per name: epochs expected, epochs found, epochs whose every replayed value equals the re-run's."""
    want = {(d["epoch"], d["name"]): float(d["value"]) for d in truth}
    got: dict[tuple[int, str], list[float]] = {}
    for epoch, name, value in rows:
        got.setdefault((int(epoch), name), []).append(float(value))
    out = {}
    for name in names:
        keys = sorted(k for k in want if k[1] == name)
        found = [k for k in keys if k in got]
        match = [k for k in found if all(close(v, want[k]) for v in got[k])]
        rel = [abs(v - want[k]) / max(abs(want[k]), 1e-12) for k in found for v in got[k]]
        out[name] = {
            "epochs": len(keys), "found": len(found), "equal": len(match), "max_rel_diff": max(rel, default=None),
            "duplicates": sum(len(got[k]) - 1 for k in found),
            "mismatched_epochs": [k[0] for k in found if k not in match],
            "missing_epochs": [k[0] for k in keys if k not in got],
        }
    return out


def with_probed_false(source: str) -> str:
    """Add probed=False to every nested Flor.loop (those with a name=...)."""
    new, n = re.subn(r'(Flor\.loop\([^\n]*?, name="[^"]+")\)', r"\1, probed=False)", source)
    assert n >= 1, "no nested Flor.loop found"
    return new


def flor_statement(name: str) -> tuple[str, str]:
    script, anchor, stmt, *_ = CASES[name]
    return anchor.replace("hl.log(", "flor.log("), stmt.replace("hl.log(", "flor.log(")


def bench(name: str, base: Path, pairs: int, repeats: int, quick: bool) -> dict:
    script, dirname = WORKLOADS[name]
    args = QUICK_ARGS[name] if quick else {}
    source = (VARIANTS / script).read_text()
    anchor, stmt = flor_statement(name)
    assert anchor in source, f"anchor {anchor!r} not in {script}"
    new_name = re.match(r'\s*flor\.log\("([^"]+)"', stmt).group(1)
    project = new_project(base, dirname, script, source)
    out: dict = {"workload": name, "script": f"bench/peers/pyflor/{script}", "project_dir": project.name,
                 "args": args, "new_statement": stmt.strip(), "after": anchor.strip(), "load_avg_start": os.getloadavg()}
    log(f"== {name} (project {project}, args {args or 'defaults'})")

    # (a) record overhead and (c) storage
    plain, recorded, ratios, stores, cpu = [], [], [], [], {"plain": [], "record": []}
    for k in range(pairs):
        home = base / f"home-{name}-{k}"
        home.mkdir()
        env = env_for(home, args)
        times = {}
        for mode in (["plain", "record"] if k % 2 == 0 else ["record", "plain"]):
            cmd = [PY, script] if mode == "plain" else [PY, script, "--flor", f"bench{k}"]
            times[mode] = checked(cmd, project, env)
            cpu[mode].append(CPU[0])
        plain.append(times["plain"])
        recorded.append(times["record"])
        ratios.append(times["record"] / times["plain"])
        stores.append(storage(home, project))
        log(f"  pair {k}: plain {times['plain']:.2f}s record {times['record']:.2f}s ratio {ratios[-1]:.3f} "
            f"(CPU {cpu['plain'][-1]:.1f}s / {cpu['record'][-1]:.1f}s) checkpoints {stores[-1]['checkpoint_bytes'] / 2**20:.1f} MiB in {stores[-1]['checkpoint_files']} files")
        if k < pairs - 1:
            shutil.rmtree(home, ignore_errors=True)
    out.update({
        "record_cmd": f"{PY} {script} --flor bench<k>", "plain_cmd": f"{PY} {script}",
        "pairs": pairs, "plain_s": plain, "record_s": recorded, "ratios": ratios,
        "plain_cpu_s": cpu["plain"], "record_cpu_s": cpu["record"],
        "median_cpu_ratio": median([r / p for p, r in zip(cpu["plain"], cpu["record"])]),
        "median_ratio": median(ratios), "median_plain_s": median(plain), "median_record_s": median(recorded),
        "storage_per_run": stores, "checkpoint_mb_per_run": median([s["checkpoint_bytes"] for s in stores]) / 2**20,
    })
    home = base / f"home-{name}-{pairs - 1}"  # holds the latest record, which --replay_flor replays
    env = env_for(home, args)
    db = home / ".flor" / f"{project.name}.db"
    recorded_csv = project / ".flor" / "log_records.csv"

    # reference values: a full re-run of the modified script, no recording
    modified = source.replace(anchor, anchor + stmt, 1)
    (project / script).write_text(modified)
    truth_file = base / f"truth-{name}.json"
    out["full_rerun_s"] = checked([PY, "-c", TRUTH, str(truth_file), script], project, env)
    truth = json.loads(truth_file.read_text())
    names = list(dict.fromkeys(d["name"] for d in truth))
    out["full_rerun_cmd"] = f"{PY} {script}  (modified; values read from flor's in-memory log records)"
    if recorded_csv.exists():  # pyflor writes it only from the second record in a project on
        rec_rows = [(int(r["epoch"]), r["name"], r["value"]) for r in csv.DictReader(recorded_csv.open())]
        out["record_vs_rerun"] = validate(rec_rows, truth, [n for n in names if n != new_name])

    # (b) replay: one process
    times, checks = [], []
    for _ in range(repeats):
        clear_db(db)
        try:
            times.append(checked([PY, script, "--replay_flor"], project, env))
            checks.append(validate(db_values(home, project), truth, names))
        except Exception as e:  # noqa: BLE001
            out["replay_error"] = str(e)[-3000:]
            log(f"  replay FAILED: {str(e)[-800:]}")
            break
    out["replay_cmd"] = f"{PY} {script} --replay_flor"
    out["replay_1p_s"] = times
    out["replay_1p_min_s"] = min(times) if times else None
    out["replay_1p_check"] = checks[-1] if checks else None
    if times:
        c = checks[-1][new_name]
        log(f"  replay 1 process: {min(times):.2f}s; {new_name}: {c['equal']}/{c['epochs']} epochs equal the re-run")

    # (b) replay: two processes at once, as written (probed default) and with probed=False.
    # The two copies share the cores, as hindlog's replay workers do (OMP/MKL threads = cores / 2).
    threads = str(max(1, (os.cpu_count() or 1) // 2))
    penv = {**env, "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", threads), "MKL_NUM_THREADS": env.get("MKL_NUM_THREADS", threads)}
    out["parallel_threads_per_process"] = {k: penv[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    for label, text in (("parallel_default", modified), ("parallel_probed_false", with_probed_false(modified))):
        (project / script).write_text(text)
        walls, eachs, pchecks = [], [], []
        for _ in range(repeats if times else 0):
            clear_db(db)  # the DB must exist: two copies creating it at once race (see clear_db)
            try:
                wall, each = run_parallel([[PY, script, "--replay_flor", "1/2"], [PY, script, "--replay_flor", "2/2"]],
                                          project, penv)
            except Exception as e:  # noqa: BLE001
                out[f"{label}_error"] = str(e)[-3000:]
                log(f"  {label} FAILED: {str(e)[-800:]}")
                break
            walls.append(wall)
            eachs.append(each)
            pchecks.append(validate(db_values(home, project), truth, names))
        out[f"{label}_s"] = walls
        out[f"{label}_each_s"] = eachs
        out[f"{label}_min_s"] = min(walls) if walls else None
        out[f"{label}_check"] = pchecks[-1] if pchecks else None
        if walls:
            c = pchecks[-1][new_name]
            log(f"  replay 2 processes ({label}): {min(walls):.2f}s; {new_name}: {c['equal']}/{c['epochs']} epochs equal, "
                f"{c['duplicates']} duplicate rows, mismatched epochs {c['mismatched_epochs']}")
    out["parallel_cmd"] = (f"OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} {PY} {script} --replay_flor 1/2 & "
                           f"OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} {PY} {script} --replay_flor 2/2 & wait")
    (project / script).write_text(source)

    c1 = out["replay_1p_check"]
    out["replay_valid"] = bool(c1) and all(v["equal"] == v["epochs"] and not v["duplicates"] for v in c1.values())
    if out["replay_1p_min_s"]:
        out["replay_vs_rerun"] = out["replay_1p_min_s"] / out["full_rerun_s"]
        out["replay_vs_record"] = out["replay_1p_min_s"] / out["median_record_s"]
    out["load_avg_end"] = os.getloadavg()
    return out


def sklearn_raw_check(base: Path) -> dict:
    """pyflor with the bare SGDClassifier in Flor.checkpoints: does it record, does it replay?"""
    script, _ = WORKLOADS["sklearn"]
    source = (VARIANTS / script).read_text()
    project = new_project(base, "sklearnraw", script, source)
    home = base / "home-sklearnraw"
    home.mkdir()
    env = {**env_for(home, {"epochs": 2}), "PEER_SKLEARN_RAW": "1"}
    out: dict = {"what": "Flor.checkpoints(clf) with the bare scikit-learn estimator (PEER_SKLEARN_RAW=1), 2 epochs"}
    t, r = run([PY, script, "--flor", "raw"], project, env)
    out["record_rc"] = r.returncode
    out["record_storage"] = storage(home, project)
    t, r = run([PY, script, "--replay_flor"], project, env)
    out["replay_rc"] = r.returncode
    tail = (r.stderr.strip().splitlines() or [""])[-1]
    out["replay_error_last_line"] = tail
    log(f"== sklearn, bare estimator checkpointed: record rc {out['record_rc']}, replay rc {out['replay_rc']} ({tail})")
    return out


def peer_versions() -> dict:
    code = ("import importlib.metadata as m, json, sys; print(json.dumps({'python': sys.version.split()[0], "
            "**{p: m.version(p) for p in ['pyflor', 'torch', 'numpy', 'scikit-learn', 'pandas', 'GitPython', 'bidict', 'apted']}}))")
    return json.loads(subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True).stdout)


def import_cost(base: Path) -> dict:
    """Seconds to start the interpreter and import: nothing, torch, flor (flor imports torch, pandas, GitPython)."""
    out = {}
    for label, code in (("python", "pass"), ("torch", "import torch"), ("flor", "import flor")):
        ts = [run([PY, "-c", code], base, env_for(base / "home-import", {}))[0] for _ in range(2)]
        out[label] = min(ts)
    return out


def wait_for_load(threshold: float, max_wait: float, poll: float) -> dict:
    start = time.time()
    first = os.getloadavg()
    while os.getloadavg()[0] >= threshold and time.time() - start < max_wait:
        log(f"load average {os.getloadavg()[0]:.2f} >= {threshold}: waiting ({time.time() - start:.0f}s of {max_wait:.0f}s)")
        time.sleep(poll)
    now = os.getloadavg()
    return {"threshold": threshold, "first_seen": first, "at_start": now, "waited_s": time.time() - start,
            "dropped_below": now[0] < threshold}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer epochs, 1 pair, 1 repeat (a few minutes)")
    p.add_argument("--pairs", type=int, default=None, help="plain/record pairs (3; 1 with --quick)")
    p.add_argument("--repeats", type=int, default=None, help="runs per replay configuration, the fastest kept (2; 1 with --quick)")
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--wait-load", type=float, default=None,
                   help="before measuring, wait until the 1-minute load average is below this (default 1.2; none with --quick)")
    p.add_argument("--wait-max", type=float, default=1500.0, help="longest wait for the load, seconds")
    p.add_argument("--poll", type=float, default=30.0)
    p.add_argument("--no-setup", action="store_true", help="do not run bench/peers/setup_pyflor.sh first")
    p.add_argument("--keep", action="store_true", help="keep the temporary projects")
    p.add_argument("--out", default=None, help="results name under bench/results (default peers-pyflor, peers-pyflor-quick)")
    a = p.parse_args()
    pairs = a.pairs or (1 if a.quick else 3)
    repeats = a.repeats or (1 if a.quick else 2)
    wait_load = a.wait_load if a.wait_load is not None else (None if a.quick else 1.2)

    if not a.no_setup:
        r = subprocess.run(["bash", str(SETUP)])
        if r.returncode != 0:
            sys.exit("bench_peers.py: the pyflor environment could not be set up (see above)")
    if not Path(PY).exists():
        sys.exit(f"bench_peers.py: no pyflor environment at {VENV}; run bash {SETUP}")

    load = wait_for_load(wait_load, a.wait_max, a.poll) if wait_load else {"threshold": None, "at_start": os.getloadavg()}
    base = Path("/tmp") / f"pyflorbench-{os.getpid()}-{int(time.time())}"
    base.mkdir()
    started = time.time()
    results, errors = [], {}
    try:
        imports = import_cost(base)
        for name in a.workloads.split(","):
            try:
                results.append(bench(name, base, pairs, repeats, a.quick))
            except Exception as e:  # noqa: BLE001
                errors[name] = str(e)[-3000:]
                log(f"== {name} FAILED: {str(e)[-1500:]}")
        raw = sklearn_raw_check(base) if "sklearn" in a.workloads.split(",") else None
    finally:
        if not a.keep:
            shutil.rmtree(base, ignore_errors=True)
    load["at_end"] = os.getloadavg()
    if wait_load and not load["dropped_below"]:
        load["note"] = f"the 1-minute load average never fell below {wait_load} within {a.wait_max:.0f}s; measured anyway"
    data = {
        "benchmark": "peers-pyflor", "quick": a.quick,
        "command": " ".join(["python", "bench/bench_peers.py", *sys.argv[1:]]),
        "machine": machine(), "pyflor_env": {"venv": str(VENV), **peer_versions()}, "load_avg": load,
        "started": started, "duration_s": time.time() - started, "import_seconds": imports,
        "results": results, "errors": errors, "sklearn_bare_estimator": raw,
        "notes": [
            "Whole-process wall times; plain = the pyflor script without --flor (flor imported, nothing recorded). "
            "*_cpu_s: user+sys CPU seconds of the process (less sensitive to other load, but not to thread spinning).",
            "pyflor's parallel replay indices are 1-based: --replay_flor 1/2 and 2/2 (0/2 fails an assertion).",
            "parallel_default: pyflor re-executes the nested loops of each worker's own epochs when n > 1 "
            "(probed default), without restoring RNG state, so worker 2's re-executed epochs can differ from the record; "
            "with one thread per copy, worker 1's re-executed epochs can also differ in the last bits from the "
            "record made with torch's default threads (max_rel_diff in the checks).",
            "parallel_probed_false: nested loops given probed=False, so both workers restore checkpoints and skip them.",
            "The two parallel copies run with OMP_NUM_THREADS=MKL_NUM_THREADS=cores/2 (as hindlog sets for its replay "
            "workers); every other run uses torch's default thread count.",
            "pyflor's parallel replay races when its log store ($HOME/.flor/<project>.db) does not exist yet: both "
            "copies create it and one fails ('table watermark already exists'); the store is created by the "
            "one-process replay first and only emptied between replays.",
            "Parallel replay rows include the second worker's initialization epoch, logged by both workers "
            "(counted as duplicates in the checks).",
            "Values left by a skipped nested loop (last loss, running totals, validation sums) are carried in a "
            "checkpointed dict with state_dict/load_state_dict: pyflor restores only Flor.checkpoints objects.",
            "sklearn: the estimator is checkpointed through a state_dict adapter (pickled into a uint8 tensor); "
            "pyflor 2.5.6 records a bare estimator but cannot replay it (see sklearn_bare_estimator).",
        ],
    }
    path = save(a.out or ("peers-pyflor" + ("-quick" if a.quick else "")), data)

    log("\n| workload | plain (s) | pyflor record (s) | record/plain (median) | checkpoints per run | replay, 1 process (s) "
        "| 2 processes, default (s) | 2 processes, probed=False (s) | full re-run (s) | new values equal the re-run (1 process) |")
    log("|---|---|---|---|---|---|---|---|---|---|")
    f = lambda v: "failed" if v is None else f"{v:.1f}"  # noqa: E731
    for r in results:
        st = r["storage_per_run"][-1]
        c = (r["replay_1p_check"] or {}).get(re.match(r'flor\.log\("([^"]+)"', r["new_statement"]).group(1))
        eq = f"{c['equal']}/{c['epochs']}" if c else "failed"
        log(f"| {r['workload']} | {r['median_plain_s']:.1f} | {r['median_record_s']:.1f} | {r['median_ratio']:.3f} | "
            f"{r['checkpoint_mb_per_run']:.1f} MiB, {st['checkpoint_files']} files | {f(r['replay_1p_min_s'])} | "
            f"{f(r['parallel_default_min_s'])} | {f(r['parallel_probed_false_min_s'])} | {r['full_rerun_s']:.1f} | {eq} |")
    for n, e in errors.items():
        log(f"| {n} | failed: {e.splitlines()[-1] if e else ''} |")
    log(f"\nload average: at start {load['at_start'][0]:.2f}, at end {load['at_end'][0]:.2f}"
        + (f" ({load['note']})" if load.get("note") else ""))
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
