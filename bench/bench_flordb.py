"""Benchmark the peer system flordb 4.0.1 on our workloads, as bench_peers.py does for pyflor.

    python bench/bench_flordb.py [--quick] [--pairs 3] [--repeats 1] [--workloads cnn,finetune,lstm,sklearn]
                                 [--no-setup] [--keep] [--out NAME]

flordb runs in its own virtual environment (bench/.venvs/flordb, made by
bench/peers/setup_flordb.sh, which this script runs first) on the flordb
variants of the workloads in bench/peers/flordb/ (the CNN first). Every run happens in a
temporary git project (flordb switches it to a ``flor.branch`` branch and
auto-commits there), never in this repository.

(a) record overhead: the script run plain (``PEER_FLOR_OFF=1``: flordb not
    imported, its calls pass-throughs) and recorded (``python cnn.py``: flordb
    records whenever it is imported), alternating the order, ``--pairs`` times,
    each record in a fresh project; the median of the per-pair ratios;
(b) replay of one new main-loop statement: the statement bench/bench_replay.py's
    CASES adds for the workload (``hl.log`` -> ``flor.log``), after the same
    anchor, in the project of the last record; timed as the whole
    ``python -m flordb replay --apply NAME`` process with "y" on stdin and the
    venv's bin first on PATH (flordb runs ``python`` from PATH);
(c) validity: the modified script recorded from scratch in another fresh project
    (a full re-run) gives the reference values; the replayed values (rows with
    source 'replay' in the project's .flor/<project>.db) are compared with them,
    epoch by epoch.

Whole-process wall times. If flordb fails at any step, the step and the error
are recorded in the results and the script exits 0. Results:
bench/results/peers-flordb.json (peers-flordb-quick.json with --quick) and a
markdown table on stdout.
"""

from __future__ import annotations

import argparse
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
VARIANTS = PEERS / "flordb"
SETUP = PEERS / "setup_flordb.sh"
VENV = Path(os.environ.get("FLORDB_VENV", BENCH / ".venvs" / "flordb"))
PY = str(VENV / "bin" / "python")
TIMEOUT = 3600

# workload -> script in bench/peers/flordb (bench_replay.CASES gives the new statement)
WORKLOADS = {"cnn": "cnn.py", "finetune": "finetune.py", "lstm": "lstm.py", "sklearn": "sklearn_sgd.py"}
# as bench_peers.py's quick pyflor runs
QUICK_ARGS = {"cnn": {"epochs": 2, "samples": 1024}, "finetune": {"epochs": 4}, "lstm": {"epochs": 2}, "sklearn": {"epochs": 6}}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class StepError(Exception):
    def __init__(self, step: str, error: str) -> None:
        super().__init__(f"{step}: {error}")
        self.step, self.error = step, error


def env_for(home: Path, args: dict, plain: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HINDLOG_", "PEER_"))}
    env.update(GIT_ENV)
    env["HOME"] = str(home)
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"  # flordb replay runs `python` from PATH
    env.pop("VIRTUAL_ENV", None)
    env.update({f"PEER_ARG_{k}": str(v) for k, v in args.items()})
    if plain:
        env["PEER_FLOR_OFF"] = "1"
    return env


CPU: list[float] = [0.0]


def run(step: str, cmd: list[str], cwd: Path, env: dict[str, str], stdin: str | None = None, logs: Path | None = None) -> float:
    """Wall seconds of a whole process; stdout/stderr to files outside the project (flordb commits the tree)."""
    logs = logs or cwd.parent
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with (logs / f"{step}.out").open("w") as so, (logs / f"{step}.err").open("w") as se:
        try:
            p = subprocess.run(cmd, cwd=cwd, env=env, input=stdin, stdout=so, stderr=se, text=True, timeout=TIMEOUT)
        except subprocess.TimeoutExpired as e:
            raise StepError(step, f"timed out after {TIMEOUT}s: {' '.join(cmd)}") from e
    elapsed = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU[0] = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    if p.returncode != 0:
        out = (logs / f"{step}.out").read_text()[-1500:]
        err = (logs / f"{step}.err").read_text()[-3000:]
        raise StepError(step, f"{' '.join(cmd)} exited {p.returncode}:\n{out}\n{err}")
    return elapsed


def git(project: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=project, env={**os.environ, **GIT_ENV}, check=True,
                          capture_output=True, text=True).stdout


def new_project(base: Path, dirname: str, script: str, source: str) -> Path:
    project = base / dirname
    project.mkdir()
    git(project, "init", "-q", "-b", "main")
    (project / script).write_text(source)
    git(project, "add", script)
    git(project, "commit", "-q", "-m", f"flordb bench: {script}")
    return project


def db_rows(project: Path, source: str) -> list[tuple[int, str, str]]:
    """(epoch, name, value) of flor.log values (value_type 1) in the project's flordb cache."""
    db = project / ".flor" / f"{project.name}.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT ctx, value_name, value FROM logs WHERE value_type = 1 AND source = ? "
                            "AND ctx IS NOT NULL", (source,)).fetchall()
    finally:
        conn.close()
    out = []
    for ctx, name, value in rows:
        segs = json.loads(ctx)
        if len(segs) == 1 and segs[0]["name"] == "epoch":
            out.append((int(segs[0]["iteration"]), name, value))
    return out


def clear_replay_rows(project: Path) -> None:
    db = project / ".flor" / f"{project.name}.db"
    if db.exists():
        conn = sqlite3.connect(db)
        try:
            conn.execute("DELETE FROM logs WHERE source = 'replay'")
            conn.commit()
        finally:
            conn.close()


def close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def validate(rows: list[tuple[int, str, str]], truth: list[tuple[int, str, str]], names: list[str]) -> dict:
    """Per name: epochs expected, found, equal to the re-run (within 1e-9 relative), duplicates."""
    want = {(e, n): float(v) for e, n, v in truth}
    got: dict[tuple[int, str], list[float]] = {}
    for e, n, v in rows:
        got.setdefault((e, n), []).append(float(v))
    out = {}
    for name in names:
        keys = sorted(k for k in want if k[1] == name)
        found = [k for k in keys if k in got]
        match = [k for k in found if all(close(v, want[k]) for v in got[k])]
        rel = [abs(v - want[k]) / max(abs(want[k]), 1e-12) for k in found for v in got[k]]
        out[name] = {"epochs": len(keys), "found": len(found), "equal": len(match), "max_rel_diff": max(rel, default=None),
                     "duplicates": sum(len(got[k]) - 1 for k in found),
                     "mismatched_epochs": [k[0] for k in found if k not in match],
                     "missing_epochs": [k[0] for k in keys if k not in got]}
    return out


def flor_statement(name: str) -> tuple[str, str]:
    script, anchor, stmt, *_ = CASES[name]
    return anchor.replace("hl.log(", "flor.log("), stmt.replace("hl.log(", "flor.log(")


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) if path.exists() else 0


def bench(name: str, base: Path, pairs: int, repeats: int, quick: bool) -> dict:
    script = WORKLOADS[name]
    args = QUICK_ARGS[name] if quick else {}
    base = base / name  # one folder per workload: projects, HOMEs and the processes' output files
    base.mkdir()
    out: dict = {"workload": name, "script": f"bench/peers/flordb/{script}", "args": args, "status": "ok",
                 "failed_step": None, "error": None, "load_avg_start": os.getloadavg()}
    try:
        source = (VARIANTS / script).read_text()
        anchor, stmt = flor_statement(name)
        if anchor not in source:
            raise StepError("prepare", f"anchor {anchor!r} not in {script}")
        new_name = re.match(r'\s*flor\.log\("([^"]+)"', stmt).group(1)
        out.update({"new_statement": stmt.strip(), "after": anchor.strip(), "new_name": new_name})
        modified = source.replace(anchor, anchor + stmt, 1)
        log(f"== {name} (args {args or 'defaults'})")

        # (a) record overhead: every record in a fresh project
        plain, recorded, ratios, cpu = [], [], [], {"plain": [], "record": []}
        project = None
        for k in range(pairs):
            project = new_project(base, f"{name}rec{k}", script, source)
            home = base / f"home-rec{k}"
            home.mkdir()
            times = {}
            for mode in (["plain", "record"] if k % 2 == 0 else ["record", "plain"]):
                times[mode] = run(f"{mode}{k}", [PY, script], project, env_for(home, args, plain=(mode == "plain")))
                cpu[mode].append(CPU[0])
            plain.append(times["plain"])
            recorded.append(times["record"])
            ratios.append(times["record"] / times["plain"])
            log(f"  pair {k}: plain {times['plain']:.2f}s record {times['record']:.2f}s ratio {ratios[-1]:.3f}")
        out.update({
            "plain_cmd": f"PEER_FLOR_OFF=1 {PY} {script}", "record_cmd": f"{PY} {script}",
            "pairs": pairs, "plain_s": plain, "record_s": recorded, "ratios": ratios,
            "plain_cpu_s": cpu["plain"], "record_cpu_s": cpu["record"],
            "median_ratio": median(ratios), "median_plain_s": median(plain), "median_record_s": median(recorded),
            "median_cpu_ratio": median([r / p for p, r in zip(cpu["plain"], cpu["record"])]),
            "flor_dir_bytes": tree_bytes(project / ".flor"),
            "branch_after_record": git(project, "rev-parse", "--abbrev-ref", "HEAD").strip(),
            "commits_after_record": len(git(project, "log", "--oneline").splitlines()),
        })
        recorded_rows = db_rows(project, "forward")

        # (c) reference values: the modified script recorded from scratch in its own project
        truth_project = new_project(base, f"{name}truth", script, modified)
        home = base / "home-truth"
        home.mkdir()
        out["full_rerun_s"] = run("truth", [PY, script], truth_project, env_for(home, args))
        out["full_rerun_cmd"] = f"{PY} {script}  (modified, recorded in a fresh project; values from its .flor db)"
        truth = db_rows(truth_project, "forward")
        names = list(dict.fromkeys(n for _, n, _ in truth))
        if new_name not in names:
            raise StepError("truth", f"the full re-run logged no {new_name!r} (names: {names})")
        out["record_vs_rerun"] = validate(recorded_rows, truth, [n for n in names if n != new_name])

        # (b) replay in the last record's project
        (project / script).write_text(modified)
        home = base / f"home-rec{pairs - 1}"
        cmd = [PY, "-m", "flordb", "replay", "--apply", new_name]
        times, checks = [], []
        for r in range(repeats):
            clear_replay_rows(project)
            times.append(run(f"replay{r}", cmd, project, env_for(home, args), stdin="y\n"))
            rows = db_rows(project, "replay")
            if not rows:
                err = (base / f"replay{r}.out").read_text()[-2000:]
                raise StepError("replay", f"flordb replay exited 0 but stored no replayed values:\n{err}")
            checks.append(validate(rows, truth, [new_name]))
            c = checks[-1][new_name]
            log(f"  replay: {times[-1]:.2f}s; {new_name}: {c['equal']}/{c['epochs']} epochs equal the re-run")
        out.update({
            "replay_cmd": f'echo y | PATH={VENV / "bin"}:$PATH python -m flordb replay --apply {new_name}',
            "replay_s": times, "replay_min_s": min(times), "replay_check": checks[-1],
            "replay_vs_record": min(times) / out["median_record_s"],
            "replay_vs_rerun": min(times) / out["full_rerun_s"],
            "branch_after_replay": git(project, "rev-parse", "--abbrev-ref", "HEAD").strip(),
            "commits_after_replay": len(git(project, "log", "--oneline").splitlines()),
        })
        c = checks[-1][new_name]
        out["replay_valid"] = c["equal"] == c["epochs"] > 0 and not c["duplicates"]
    except StepError as e:
        out.update(status="failed", failed_step=e.step, error=e.error[-3000:])
        log(f"  FAILED at {e.step}: {e.error[-800:]}")
    except Exception as e:  # noqa: BLE001
        out.update(status="failed", failed_step="bench", error=f"{type(e).__name__}: {e}"[-3000:])
        log(f"  FAILED: {type(e).__name__}: {e}")
    out["load_avg_end"] = os.getloadavg()
    return out


def peer_versions() -> dict:
    code = ("import importlib.metadata as m, json, sys; print(json.dumps({'python': sys.version.split()[0], "
            "**{p: m.version(p) for p in ['flordb', 'torch', 'numpy', 'pandas', 'GitPython']}}))")
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True)
    return json.loads(r.stdout) if r.returncode == 0 else {"error": r.stderr[-1000:]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few epochs (CNN: 2 of 1024 samples), 1 pair, 1 replay (about a minute and a half)")
    p.add_argument("--pairs", type=int, default=None, help="plain/record pairs (3; 1 with --quick)")
    p.add_argument("--repeats", type=int, default=1, help="replays (each a whole `flordb replay` process), fastest kept")
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--no-setup", action="store_true", help="do not run bench/peers/setup_flordb.sh first")
    p.add_argument("--keep", action="store_true", help="keep the temporary projects")
    p.add_argument("--out", default=None, help="results name under bench/results (default peers-flordb[-quick])")
    a = p.parse_args()
    pairs = a.pairs or (1 if a.quick else 3)
    name = a.out or ("peers-flordb" + ("-quick" if a.quick else ""))
    started = time.time()
    data = {"benchmark": "peers-flordb", "quick": a.quick,
            "command": " ".join(["python", "bench/bench_flordb.py", *sys.argv[1:]]),
            "machine": machine(), "started": started, "results": [], "errors": {}}

    setup_error = None
    if not a.no_setup:
        r = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True)
        if r.returncode != 0:
            setup_error = (r.stdout + r.stderr)[-3000:]
    if setup_error is None and not Path(PY).exists():
        setup_error = f"no flordb environment at {VENV}; run bash {SETUP}"
    if setup_error is not None:
        log(f"bench_flordb.py: flordb environment not available:\n{setup_error}")
        data["results"] = [{"workload": w, "status": "failed", "failed_step": "setup", "error": setup_error}
                           for w in a.workloads.split(",")]
        data["duration_s"] = time.time() - started
        path = save(name, data)
        print(f"| workload | status |\n|---|---|\n" + "\n".join(f"| {w} | failed at setup |" for w in a.workloads.split(",")))
        print(f"\nwrote {path}")
        return

    data["flordb_env"] = {"venv": str(VENV), **peer_versions()}
    base = Path("/tmp") / f"flordbbench-{os.getpid()}-{int(time.time())}"
    base.mkdir()
    try:
        for w in a.workloads.split(","):
            if w not in WORKLOADS:
                data["results"].append({"workload": w, "status": "failed", "failed_step": "prepare",
                                        "error": f"no flordb variant for {w!r} (have {', '.join(WORKLOADS)})"})
                continue
            data["results"].append(bench(w, base, pairs, a.repeats, a.quick))
    finally:
        if not a.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            log(f"kept {base}")
    data["duration_s"] = time.time() - started
    data["notes"] = [
        "Whole-process wall times. plain = the flordb script with PEER_FLOR_OFF=1 (flordb not imported; "
        "flor.arg/loop/log are pass-throughs); record = `python cnn.py` (flordb records whenever imported: it "
        "switches the project to a flor.branch branch, writes .flor/runs/<tstamp>.jsonl and its SQLite cache, "
        "and git-commits the project at exit).",
        "Each record runs in a fresh temporary git project; the replay runs in the last one, which holds exactly "
        "one recorded run (flordb replays every recorded run of the project).",
        "flordb replay re-executes the whole run from the start (no checkpoint-based skipping); for a main-loop "
        "statement it runs every epoch and suppresses the nested loops' logs, which still execute.",
        "The replay command is the whole `python -m flordb replay --apply NAME` process, answered 'y' on stdin, "
        "with the venv's bin first on PATH (flordb starts `python` from PATH for the replayed run).",
        "Reference values: the modified script recorded from scratch in another fresh project (a full re-run); "
        "equal means within 1e-9 relative (values are stored as text).",
        "flordb checkpoints nothing here: hindlog's workload saves no files either (flordb 4 keeps a copy of "
        "each file a script torch.saves, and restores nothing at replay).",
    ]
    path = save(name, data)

    print("| workload | plain (s) | flordb record (s) | record/plain (median) | replay of 1 new main-loop statement (s) "
          "| replay/record | full re-run (s) | replayed values equal the re-run | status |")
    print("|---|---|---|---|---|---|---|---|---|")
    f = lambda v, d=1: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    for r in data["results"]:
        c = (r.get("replay_check") or {}).get(r.get("new_name"))
        eq = f"{c['equal']}/{c['epochs']}" + (" (yes)" if r.get("replay_valid") else " (no)") if c else "-"
        st = "ok" if r["status"] == "ok" else f"failed at {r['failed_step']}: {((r.get('error') or '').strip().splitlines() or [''])[-1][:160]}"
        print(f"| {r['workload']} | {f(r.get('median_plain_s'))} | {f(r.get('median_record_s'))} | {f(r.get('median_ratio'), 3)} "
              f"| {f(r.get('replay_min_s'))} | {f(r.get('replay_vs_record'), 2)} | {f(r.get('full_rerun_s'))} | {eq} | {st} |")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
