"""Benchmark: hindlog's replay against pyflor's, side by side in one run.

    .venv/bin/python bench/bench_replay_pyflor.py [--pairs 5] [--workloads cnn,finetune,lstm,sklearn]
        [--matched-epsilon 0.10] [--quick] [--no-setup] [--out NAME]

The replay target compares hindlog's replay of a new main-loop statement (one
worker) with pyflor's (one process). Measured in separate runs, hours apart,
the two times differ by as much as this shared machine's speed drifts (20-30%
between runs). Here both systems record the same workload once, then their
replays alternate (hindlog, pyflor, pyflor, hindlog, ...) ``--pairs`` times,
and the table gives the median of the per-pair ratios hindlog/pyflor.

Each system replays its own recording: hindlog's took as many checkpoints as
ε = 5% allowed; pyflor's checkpoints every epoch and records at the overhead
that costs (+10% on the fine-tuning shape in bench_peers). ``--matched-epsilon``
also records hindlog with that ε, near pyflor's measured record overhead, and
times its replay in the same pairs: the two systems' replays at a comparable
record overhead.

Every process runs with glibc's allocator held steady (``common.STEADY_MALLOC``),
pyflor's too. The statement and its place are bench_replay's CASES (``hl.log``
-> ``flor.log`` for pyflor); hindlog's replay must not diverge, and pyflor's
replayed values are compared with a full re-run of its modified script.
pyflor runs in its own virtual environment (bench/.venvs/pyflor, made by
bench/peers/setup_pyflor.sh unless ``--no-setup``).
Results: bench/results/replay-pyflor.json.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_peers as peers  # noqa: E402
from bench_replay import CASES, replay_once  # noqa: E402
from common import PYTHON, STEADY_MALLOC, WORKLOADS, cleanup, machine, median, new_project, save, timed  # noqa: E402


def hindlog_recording(name: str, source: str, modified: str, env: dict[str, str]) -> tuple[Path, dict[str, Any]]:
    """A project holding one hindlog recording of the workload, its script then modified."""
    script = CASES[name][0]
    project = new_project({script: source})
    record_s = timed([PYTHON, script], project, env)
    conn = sqlite3.connect(project / ".hindlog" / "catalog.db")
    try:
        checkpointed = conn.execute("SELECT COUNT(DISTINCT iteration) FROM checkpoints").fetchone()[0]
        info = json.loads(conn.execute("SELECT info FROM runs ORDER BY id LIMIT 1").fetchone()[0])
    finally:
        conn.close()
    (project / script).write_text(modified)
    return project, {"record_s": record_s, "checkpointed_iterations": checkpointed,
                     "iterations": len(info.get("iteration_seconds", []))}


def pyflor_recording(name: str, base: Path, args: dict[str, Any]) -> tuple[Path, dict[str, str], dict[str, Any]]:
    """A pyflor project with one recording, its script modified; its environment; facts."""
    script, dirname = peers.WORKLOADS[name]
    source = (peers.VARIANTS / script).read_text()
    anchor, stmt = peers.flor_statement(name)
    assert anchor in source, f"anchor {anchor!r} not in {script}"
    project = peers.new_project(base, dirname, script, source)
    home = base / f"home-{name}"
    home.mkdir()
    env = {**peers.env_for(home, args), **STEADY_MALLOC}
    record_s = peers.checked([peers.PY, script, "--flor", "bench"], project, env)
    modified = source.replace(anchor, anchor + stmt, 1)
    (project / script).write_text(modified)
    truth_file = base / f"truth-{name}.json"
    peers.checked([peers.PY, "-c", peers.TRUTH, str(truth_file), script], project, env)
    facts = {"record_s": record_s, "truth": json.loads(truth_file.read_text()),
             "new_name": re.match(r'\s*flor\.log\("([^"]+)"', stmt).group(1), "db": home / ".flor" / f"{project.name}.db",
             "home": home}
    return project, env, facts


def bench(name: str, pairs: int, quick: bool, matched_epsilon: float | None, base: Path) -> dict[str, Any]:
    script, main_anchor, main_stmt, *_ = CASES[name]
    args = peers.QUICK_ARGS[name] if quick else {}  # the same sizes for both systems
    env = {**{f"HINDLOG_SET_{k}": str(v) for k, v in args.items()}, **STEADY_MALLOC}
    source = (WORKLOADS / script).read_text()
    modified = source.replace(main_anchor, main_anchor + main_stmt, 1)
    out: dict[str, Any] = {"workload": name, "pairs": pairs, "args": args, "new_statement": main_stmt.strip()}
    peers.log(f"== {name}")
    projects: list[Path] = []
    try:
        hl_project, facts = hindlog_recording(name, source, modified, env)
        projects.append(hl_project)
        out["hindlog_record"] = facts
        variants = {"hindlog": (hl_project, env)}
        if matched_epsilon is not None:
            env_m = {**env, "HINDLOG_EPSILON": str(matched_epsilon)}
            m_project, m_facts = hindlog_recording(name, source, modified, env_m)
            projects.append(m_project)
            out["hindlog_matched_record"] = {**m_facts, "epsilon": matched_epsilon}
            variants["hindlog_matched"] = (m_project, env_m)
        fl_project, fl_env, fl = pyflor_recording(name, base, args)
        out["pyflor_record_s"] = fl["record_s"]
        names = list(dict.fromkeys(d["name"] for d in fl["truth"]))
        peers.log(f"  recorded: hindlog {facts['record_s']:.1f}s ({facts['checkpointed_iterations']} of {facts['iterations']} "
                  f"iterations checkpointed), pyflor {fl['record_s']:.1f}s")

        times: dict[str, list[float]] = {k: [] for k in (*variants, "pyflor")}
        checks = []
        for k in range(pairs):
            order = [*variants, "pyflor"] if k % 2 == 0 else ["pyflor", *reversed(variants)]
            for system in order:
                if system == "pyflor":
                    peers.clear_db(fl["db"])
                    times["pyflor"].append(peers.checked([peers.PY, peers.WORKLOADS[name][0], "--replay_flor"], fl_project, fl_env))
                    checks.append(peers.validate(peers.db_values(fl["home"], fl_project), fl["truth"], names))
                else:
                    project, penv = variants[system]
                    # replay_once raises if the replay diverged or failed; the replayed statement's
                    # rows are replaced by each replay, so every one does the same work.
                    times[system].append(replay_once(project, script, 1, penv)[0])
            peers.log("  pair %d: %s" % (k, ", ".join(f"{s} {times[s][-1]:.2f}s" for s in order)))
        out["replay_s"] = times
        out["ratios"] = [h / p for h, p in zip(times["hindlog"], times["pyflor"])]
        out["median_ratio"] = median(out["ratios"])
        if "hindlog_matched" in times:
            out["matched_ratios"] = [h / p for h, p in zip(times["hindlog_matched"], times["pyflor"])]
            out["median_matched_ratio"] = median(out["matched_ratios"])
        out["median_s"] = {s: median(v) for s, v in times.items()}
        last = checks[-1][fl["new_name"]]
        out["pyflor_valid"] = all(c[fl["new_name"]]["equal"] == c[fl["new_name"]]["epochs"] for c in checks)
        out["pyflor_check"] = last
    finally:
        for p in projects:
            cleanup(p)
    peers.log(f"  hindlog/pyflor median {out['median_ratio']:.3f}"
              + (f", at ε={matched_epsilon}: {out['median_matched_ratio']:.3f}" if matched_epsilon is not None else ""))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--workloads", default="cnn,finetune,lstm,sklearn")
    p.add_argument("--matched-epsilon", type=float, default=None,
                   help="also record hindlog with this ε (pyflor's record overhead) and time its replay in the same pairs")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-setup", action="store_true", help="do not run bench/peers/setup_pyflor.sh first")
    p.add_argument("--out", help="results name (default: replay-pyflor, replay-pyflor-quick)")
    args = p.parse_args()
    if not args.no_setup:
        subprocess.run(["bash", str(peers.SETUP)], check=True)
    base = Path(tempfile.mkdtemp(prefix="hindlog-vs-pyflor-"))
    t0 = time.perf_counter()
    try:
        results = [bench(n, args.pairs, args.quick, args.matched_epsilon, base) for n in args.workloads.split(",")]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    data = {"benchmark": "replay-pyflor", "command": " ".join(["bench/bench_replay_pyflor.py", *sys.argv[1:]]),
            "machine": machine(), "quick": args.quick, "seconds": time.perf_counter() - t0, "results": results}
    path = save(args.out or ("replay-pyflor" + ("-quick" if args.quick else "")), data)
    print("\n| workload | hindlog replay (s) | pyflor replay (s) | hindlog/pyflor, median (per pair) |")
    print("|---|---:|---:|---:|")
    for r in results:
        print(f"| {r['workload']} | {r['median_s']['hindlog']:.2f} | {r['median_s']['pyflor']:.2f} | {r['median_ratio']:.3f} "
              f"({', '.join(f'{x:.3f}' for x in r['ratios'])}) |")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
