"""Benchmark: hands-free mode on unmodified scripts, record overhead and replay speed.

    .venv/bin/python bench/bench_handsfree.py [--pairs 3] [--min-seconds 30] [--quick] [--wait-load X] [--malloc steady|default] [--out NAME]
        [--workloads cnn-engine,while-early,sklearn-partial-fit,lstm-last-loss,cnn,finetune,lstm,sklearn]

Two kinds of workloads, none of which imports hindlog:

- the issue's scripts, plain files under bench/workloads/handsfree/:
  ``cnn-engine`` (cnn/train.py + cnn/engine.py: argparse, ``train_one_epoch`` and
  ``evaluate`` from another module, StepLR), ``while-early`` (a ``while`` main loop
  with early stopping, state in plain Python objects and a NumPy generator),
  ``sklearn-partial-fit`` (``partial_fit`` over minibatches shuffled with NumPy),
  ``lstm-last-loss`` (LSTM with dropout, a shuffling DataLoader, a validation loop,
  the last batch's ``loss`` read after the nested loops). ``--quick`` sizes them
  down with their argparse flags (CNN) or environment variables (BENCH_EPOCHS,
  BENCH_SAMPLES), given alike to every process of the workload;
- the workloads of bench/workloads (cnn, finetune, lstm, sklearn) turned into plain
  scripts (``hl.loop(name, it)`` -> ``it``, ``hl.arg(name, v)`` -> ``v``,
  ``hl.log(...)`` -> ``print(...)``, ``hl.checkpoints`` removed).

For each workload, in a temporary git project (stores outside it):

- record overhead: ``hindlog run SCRIPT`` between two runs of ``python SCRIPT``,
  ``--pairs`` such triples (more for a short script: enough for ``--min-seconds``
  of plain runs), median of the bracketed wall ratios (the recorded run
  against the mean of the plain runs around it: a drift of the machine's speed
  cancels; ``common.bracketed_ratio``; target <= 1.05; the ratio against the first
  plain run alone and the plain/plain ratio, the noise floor, are kept too),
  after one untimed warm-up run, with glibc's allocator held steady for both
  (``common.STEADY_MALLOC``; ``--malloc default`` leaves it adaptive);
  the checkpoints each recording took (distinct main-loop iterations in the store's
  ``checkpoints`` table) and its main-loop iterations;
- replay: a ``print(...)`` of a per-epoch value added at main-loop level, then
  ``hindlog replay SCRIPT`` with the default workers and with ``--workers 1`` (each
  on its own copy of the recorded store), against ``python SCRIPT`` of the modified
  script (the full re-run). The lines the replay stored (``@stdout``, source 1) must
  equal the new lines of that fresh run, in order. How many different outputs the
  plain runs printed is kept too: more than one, and the script itself does not
  repeat its float results (PyTorch's LSTM on two CPU threads here), so a fresh
  run cannot be expected to equal the record to the bit.

Results: bench/results/handsfree.json (handsfree-quick.json with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
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
from bench_replay import CASES  # noqa: E402
from common import GIT_ENV, MIN_TIMED_SECONDS, PYTHON, VARIANT_ARGS, WORKLOADS, allocator_env, bracketed_ratio, cleanup, machine, median, new_project, save, triples_for  # noqa: E402

HF = WORKLOADS / "handsfree"
HINDLOG = [PYTHON, "-m", "hindlog.cli"]
#: Every print the benchmark adds to an issue script starts with this.
MARK = "HS"

#: The issue's scripts: files (name in the project -> source), the script, its arguments and
#: environment (full size, --quick), and the main-loop print added for the replay: after the
#: first line containing ``after``, indented like it.
ISSUE: dict[str, dict[str, Any]] = {
    "cnn-engine": {
        "files": {"train.py": HF / "cnn" / "train.py", "engine.py": HF / "cnn" / "engine.py"},
        "script": "train.py",
        "args": [], "quick_args": ["--epochs", "3", "--samples", "1024"],
        "env": {}, "quick_env": {},
        "after": "sched.step()",
        "print": 'print("HS", epoch, "lr", sched.get_last_lr()[0], "wnorm", '
                 "torch.stack([p.detach().norm() for p in model.parameters()]).norm().item())",
    },
    "while-early": {
        "files": {"while_early.py": HF / "while_early.py"},
        "script": "while_early.py",
        "args": [], "quick_args": [],
        "env": {}, "quick_env": {"BENCH_SAMPLES": "60000"},
        "after": "history.append(val)",
        "print": 'print("HS", epoch, "wnorm", float(np.linalg.norm(model.w)), "b", model.b, "best", stopper.best, '
                 '"bad", stopper.bad_epochs, "lr", lrs[-1])',
    },
    "sklearn-partial-fit": {
        "files": {"sklearn_partial_fit.py": HF / "sklearn_partial_fit.py"},
        "script": "sklearn_partial_fit.py",
        "args": [], "quick_args": [],
        "env": {}, "quick_env": {"BENCH_EPOCHS": "4", "BENCH_SAMPLES": "10000"},
        "after": "scores.append(",
        "print": 'print("HS", epoch, "coef_norm", float(np.linalg.norm(clf.coef_)), "perm_head", perm[:3].tolist())',
    },
    "lstm-last-loss": {
        "files": {"lstm.py": HF / "lstm.py"},
        "script": "lstm.py",
        "args": [], "quick_args": [],
        "env": {}, "quick_env": {"BENCH_EPOCHS": "2", "BENCH_SAMPLES": "1024"},
        "after": 'print(f"epoch {epoch} last batch',
        "print": 'print("HS", epoch, "last_loss", loss.item(), "head_norm", model.head.weight.detach().norm().item())',
    },
}

#: --quick sizes of the converted bench/workloads scripts (their hl.arg defaults replaced).
QUICK_ARGS = {"cnn": {"epochs": 3, "samples": 4096}, "finetune": {"epochs": 16}, "lstm": {"epochs": 3}, "sklearn": {"epochs": 15}}

DEFAULT_WORKLOADS = [*ISSUE, *(c for c in CASES if c not in VARIANT_ARGS)]  # variants need hl.arg, which plain scripts lack


def plain(source: str, overrides: dict[str, object]) -> str:
    """The workload without hindlog."""
    out = source.replace("import hindlog as hl\n", "")
    out = re.sub(r"^\s*hl\.checkpoints\(.*\)\n", "", out, flags=re.M)

    def arg(m: re.Match[str]) -> str:
        return repr(overrides[m.group(1)]) if m.group(1) in overrides else m.group(2)

    out = re.sub(r'hl\.arg\("(\w+)", ([^)]+)\)', arg, out)
    out = re.sub(r'hl\.loop\("\w+", (.+)\):$', r"\1:", out, flags=re.M)
    return out.replace("hl.log(", "print(")


def insert_after(text: str, anchor: str, new: str) -> str:
    """``text`` with the line ``new`` after the first line containing ``anchor``, indented like it."""
    lines = text.splitlines(keepends=True)
    hits = [k for k, line in enumerate(lines) if anchor in line]
    assert hits, f"anchor {anchor!r} not found"
    k = hits[0]
    indent = lines[k][: len(lines[k]) - len(lines[k].lstrip())]
    return "".join(lines[: k + 1] + [indent + new.strip() + "\n"] + lines[k + 1 :])


def spec(name: str, quick: bool) -> dict[str, Any]:
    """What the benchmark needs of a workload: project files, script, args, env, modified files, marker."""
    if name in ISSUE:
        w = ISSUE[name]
        files = {rel: src.read_text() for rel, src in w["files"].items()}
        assert not any(re.search(r"^\s*(import|from)\s+hindlog|\bhl\.", text, re.M) for text in files.values()), f"{name}: the script must not use hindlog"
        script = w["script"]
        modified = dict(files)
        modified[script] = insert_after(files[script], w["after"], w["print"])
        return {"files": files, "script": script, "args": list(w["quick_args"] if quick else w["args"]),
                "env": dict(w["quick_env"] if quick else w["env"]), "modified": modified, "mark": MARK,
                "new_statement": w["print"], "after": w["after"]}
    if name in CASES:
        script, main_anchor, main_stmt, _na, _ns = CASES[name]
        source = plain((WORKLOADS / script).read_text(), QUICK_ARGS[name] if quick else {})
        assert "hl." not in source, source
        anchor, stmt = main_anchor.replace("hl.log(", "print("), main_stmt.replace("hl.log(", "print(")
        assert anchor in source, (name, anchor)
        mark = re.match(r'\s*print\("(\w+)"', stmt).group(1)  # type: ignore[union-attr]
        return {"files": {script: source}, "script": script, "args": [], "env": {},
                "modified": {script: source.replace(anchor, anchor + stmt, 1)}, "mark": mark,
                "new_statement": stmt.strip(), "after": anchor.strip()}
    raise SystemExit(f"bench_handsfree.py: unknown workload {name!r}; known: {', '.join(DEFAULT_WORKLOADS)}")


def run(cmd: list[str], cwd: Path, env: dict[str, str], check: bool = True) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Wall seconds of a whole process, and the process."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env={**os.environ, **GIT_ENV, **env}, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return elapsed, proc


def store_facts(store: Path) -> dict[str, Any]:
    """The latest run of a store: its status, main-loop iterations and checkpoints."""
    conn = sqlite3.connect(str(store / "catalog.db"), timeout=30)
    try:
        rid, run_id, status, overhead, info = conn.execute(
            "SELECT id, run_id, status, overhead, info FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        iterations = conn.execute("SELECT COUNT(DISTINCT iteration) FROM contexts WHERE run=? AND iteration IS NOT NULL",
                                  (rid,)).fetchone()[0]
        ck_iters = [r[0] for r in conn.execute("SELECT DISTINCT iteration FROM checkpoints WHERE run=? ORDER BY 1", (rid,))]
        ck_rows, ck_bytes = conn.execute("SELECT COUNT(*), COALESCE(SUM(nbytes), 0) FROM checkpoints WHERE run=?", (rid,)).fetchone()
    finally:
        conn.close()
    timed_iterations = len(json.loads(info or "{}").get("iteration_seconds") or [])
    return {"run_id": run_id, "status": status, "overhead": overhead, "iterations": iterations, "timed_iterations": timed_iterations,
            "checkpoint_iterations": ck_iters, "checkpoints": len(ck_iters), "checkpoint_rows": ck_rows, "checkpoint_bytes": ck_bytes}


def replayed_lines(store: Path) -> list[str]:
    """The lines the replay stored for the latest run (``@stdout`` records of source 1), in
    main-loop order, as ``hindlog show RUN --output`` lists them."""
    from hindlog import query

    return [line for _it, source, line in query.output("latest", store=store) if source]


def replay_summary(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"exit_code": proc.returncode, "diverged": "DIVERGED" in proc.stderr}
    m = re.search(r"(\d+) new values? stored, (\d+) recorded values? checked, (\d+) loops? skipped, (\d+) run", proc.stdout)
    if m:
        out.update(stored=int(m.group(1)), checked=int(m.group(2)), loops_skipped=int(m.group(3)), loops_run=int(m.group(4)))
    m = re.search(r"segments: (.*)", proc.stdout)
    if m:
        out["segments"] = m.group(1).strip()
    if proc.returncode != 0:
        out["stderr_tail"] = proc.stderr[-3000:]
        out["stdout_tail"] = proc.stdout[-1500:]
    return out


def bench(name: str, pairs: int, quick: bool, malloc: str = "steady", min_seconds: float = 0.0) -> dict:
    sp = spec(name, quick)
    script, args, env = sp["script"], sp["args"], {**sp["env"], **allocator_env(malloc)}
    project = new_project({".gitignore": "__pycache__/\n", **sp["files"]})
    stores = Path(tempfile.mkdtemp(prefix="hindlog-bench-stores-"))
    out: dict[str, Any] = {"workload": name, "script": script, "args": args, "env": env, "malloc": malloc,
                           "new_statement": sp["new_statement"], "after": sp["after"]}
    try:
        if not quick:  # a quick run's numbers are not evidence: it keeps the suite under 5 minutes
            warm, _ = run([PYTHON, script, *args], project, env)  # warm-up, not counted
            pairs = triples_for(pairs, warm, min_seconds)
        ratios, plain_t, rec_t, facts, plain2_t, bracketed, aa = [], [], [], [], [], [], []
        plain_stdout = None
        plain_outputs: set[str] = set()  # more than one: the plain script itself does not repeat its output
        for k in range(pairs):
            t: dict[str, float] = {}
            for mode in ("plain", "record", "plain2"):
                if mode in ("plain", "plain2"):
                    t[mode], proc = run([PYTHON, script, *args], project, env)
                    plain_stdout = proc.stdout
                    plain_outputs.add(proc.stdout)
                else:
                    t[mode], rec = run([*HINDLOG, "--store", str(stores / f"store-{k}"), "run", script, *args], project, env)
                    if k == 0:
                        first_record = rec
            plain_t.append(t["plain"])
            rec_t.append(t["record"])
            ratios.append(t["record"] / t["plain"])
            plain2_t.append(t["plain2"])
            bracketed.append(bracketed_ratio(t["plain"], t["record"], t["plain2"]))
            aa.append(t["plain2"] / t["plain"])
            facts.append(store_facts(stores / f"store-{k}"))
            if k:
                cleanup(stores / f"store-{k}")  # only store-0 is replayed; checkpoints take space
            print(f"  {name} triple {k}: plain {t['plain']:.2f}s hindlog run {t['record']:.2f}s plain {t['plain2']:.2f}s "
                  f"bracketed ratio {bracketed[-1]:.3f} "
                  f"(checkpoints at {facts[-1]['checkpoints']} of {facts[-1]['iterations']} iterations)", flush=True)
        out.update(plain_s=plain_t, record_s=rec_t, ratios=ratios, median_ratio=median(ratios),
                   plain2_s=plain2_t, aa_ratios=aa, median_aa_ratio=median(aa),
                   bracketed_ratios=bracketed, median_bracketed_ratio=median(bracketed),
                   checkpoints=[f["checkpoints"] for f in facts], iterations=[f["iterations"] for f in facts],
                   timed_iterations=[f["timed_iterations"] for f in facts],
                   checkpoint_rows=[f["checkpoint_rows"] for f in facts], checkpoint_bytes=[f["checkpoint_bytes"] for f in facts],
                   measured_overhead=[f["overhead"] for f in facts], run_status=[f["status"] for f in facts])
        out["record_stdout_equal"] = first_record.stdout == plain_stdout
        out["plain_stdouts_distinct"] = len(plain_outputs)
        out["record_stdout_among_plain"] = first_record.stdout in plain_outputs
        if not out["record_stdout_equal"]:
            got, want = first_record.stdout.splitlines(), (plain_stdout or "").splitlines()
            out["record_stdout_first_difference"] = next(
                ({"recorded": g, "plain": w} for g, w in zip(got, want) if g != w), {"recorded_lines": len(got), "plain_lines": len(want)})
        out["hindlog_stderr"] = [line for line in first_record.stderr.splitlines() if line.startswith("hindlog:")][:20]

        # Replay a new main-loop print, with the default workers and with one, each on its own store copy.
        shutil.copytree(stores / "store-0", stores / "replay-default")
        shutil.copytree(stores / "store-0", stores / "replay-1w")
        for rel, text in sp["modified"].items():
            (project / rel).write_text(text)
        out["full_rerun_s"], fresh = run([PYTHON, script, *args], project, env)
        want = [line for line in fresh.stdout.splitlines() if line.startswith(sp["mark"])]
        others = [line for line in fresh.stdout.splitlines() if not line.startswith(sp["mark"])]
        out["fresh_new_lines"] = len(want)
        out["fresh_other_lines_equal"] = others == (plain_stdout or "").splitlines()
        for label, opts in (("default", []), ("1w", ["--workers", "1"])):
            store = stores / f"replay-{label}"
            secs, proc = run([*HINDLOG, "--store", str(store), "replay", script, *opts], project, env, check=False)
            summary = replay_summary(proc)
            got = replayed_lines(store) if proc.returncode == 0 else []
            summary["replayed_lines"] = len(got)
            summary["output_equal"] = proc.returncode == 0 and got == want
            if not summary["output_equal"] and proc.returncode == 0:
                summary["max_relative_difference"] = max_relative_difference(got, want)
                summary["first_difference"] = next(
                    ({"replayed": g, "fresh": w} for g, w in zip(got, want) if g != w),
                    {"replayed_count": len(got), "fresh_count": len(want), "replayed_tail": got[-3:], "fresh_tail": want[-3:]})
            out[f"replay_{label}_s"] = secs
            out[f"replay_{label}"] = summary
            print(f"  {name}: replay ({'default workers' if label == 'default' else '1 worker'}) {secs:.1f}s, exit {proc.returncode}, "
                  f"segments {summary.get('segments')}, output equal to the fresh run: {summary['output_equal']}", flush=True)
        out["replay_speedup"] = out["full_rerun_s"] / out["replay_default_s"]
        out["replay_1w_speedup"] = out["full_rerun_s"] / out["replay_1w_s"]
        out["replay_ok"] = all(out[f"replay_{lb}"]["exit_code"] == 0 and not out[f"replay_{lb}"]["diverged"] for lb in ("default", "1w"))
        out["replay_output_equal"] = all(out[f"replay_{lb}"]["output_equal"] for lb in ("default", "1w"))
        # Where the fresh run's own other lines differ from the record's, the statement added to
        # the script changed what it computes (its tensors move later allocations, and float
        # rounding with them): the replay, which restores the recorded state, can only match the
        # fresh run to within that noise.
        drifts = [out[f"replay_{lb}"].get("max_relative_difference", 0.0) for lb in ("default", "1w") if out[f"replay_{lb}"]["output_equal"] is False]
        out["replay_max_relative_difference"] = None if None in drifts else max(drifts, default=0.0)
        # The name docs/benchmarks.md's report reads (it was the 2-worker replay; now the default workers).
        out["replay_2w_s"] = out["replay_default_s"]
    finally:
        cleanup(project)
        cleanup(stores)
    print(f"  {name}: replay {out['replay_default_s']:.1f}s (1 worker {out['replay_1w_s']:.1f}s) vs re-run "
          f"{out['full_rerun_s']:.1f}s", flush=True)
    return out


def wait_for_load(threshold: float, max_wait: float, poll: float) -> dict:
    """Wait until the 1-minute load average is below ``threshold`` (at most ``max_wait`` seconds)."""
    start = time.time()
    first = os.getloadavg()
    while os.getloadavg()[0] >= threshold and time.time() - start < max_wait:
        print(f"load average {os.getloadavg()[0]:.2f} >= {threshold}: waiting ({time.time() - start:.0f}s of {max_wait:.0f}s)",
              flush=True)
        time.sleep(poll)
    now = os.getloadavg()
    return {"threshold": threshold, "first_seen": first, "at_start": now, "waited_s": time.time() - start,
            "dropped_below": now[0] < threshold}


def fmt(x: Any, digits: int = 2) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) else "-"


def max_relative_difference(got: list[str], want: list[str]) -> float | None:
    """The largest relative difference between the numbers of two lists of printed lines that
    are otherwise the same word for word; None if they differ otherwise."""
    if len(got) != len(want):
        return None
    worst = 0.0
    for g, w in zip(got, want):
        gw, ww = g.split(), w.split()
        if len(gw) != len(ww):
            return None
        for a, b in zip(gw, ww):
            if a == b:
                continue
            try:
                x, y = float(a), float(b)
            except ValueError:
                return None
            worst = max(worst, abs(x - y) / max(abs(x), abs(y), 1e-300))
    return worst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=3, help="triples plain, hindlog run, plain")
    p.add_argument("--min-seconds", type=float, default=MIN_TIMED_SECONDS,
                   help="more triples for a short script: at least this many seconds of plain runs")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--workloads", default=",".join(DEFAULT_WORKLOADS))
    p.add_argument("--wait-load", type=float, default=None,
                   help="before measuring, wait until the 1-minute load average is below this (default: no wait)")
    p.add_argument("--wait-max", type=float, default=1500.0, help="longest wait for the load, seconds")
    p.add_argument("--poll", type=float, default=30.0)
    p.add_argument("--malloc", default="steady", choices=["steady", "default"],
                   help="glibc's allocator held steady for both sides (default), or left adaptive (bench/common.py)")
    p.add_argument("--out", default=None, help="results file name under bench/results (default: handsfree[-quick])")
    args = p.parse_args()
    names = [n for n in args.workloads.split(",") if n]
    for n in names:
        spec(n, args.quick)  # unknown names fail before anything runs
    load = wait_for_load(args.wait_load, args.wait_max, args.poll) if args.wait_load else None
    results, failed = [], []
    for n in names:
        try:
            results.append(bench(n, args.pairs, args.quick, args.malloc, args.min_seconds))
        except Exception as e:  # noqa: BLE001 -- one failing workload must not lose the others' numbers
            print(f"  {n} FAILED: {str(e)[-2000:]}", flush=True)
            results.append({"workload": n, "error": str(e)[-4000:]})
            failed.append(n)
    mach = machine()
    if load is not None:
        load["at_end"] = os.getloadavg()
        mach["wait_load"] = load
    data = {"benchmark": "handsfree", "command": " ".join(["bench/bench_handsfree.py", *sys.argv[1:]]),
            "machine": mach, "results": results}
    path = save(args.out or ("handsfree" + ("-quick" if args.quick else "")), data)
    print("\n| workload | python (s) | hindlog run (s) | bracketed ratio (median) | checkpoints / iterations | replay, default workers (s) "
          "| replay, 1 worker (s) | re-run (s) | speedup | output = fresh run |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['workload']} | failed: {r['error'].strip().splitlines()[0][:80]} |||||||||")
            continue
        print(f"| {r['workload']} | {fmt(median(r['plain_s']))} | {fmt(median(r['record_s']))} | {fmt(r['median_bracketed_ratio'], 3)} | "
              f"{r['checkpoints'][0]} / {r['iterations'][0]} | {fmt(r['replay_default_s'], 1)} | {fmt(r['replay_1w_s'], 1)} | "
              f"{fmt(r['full_rerun_s'], 1)} | {fmt(r['replay_speedup'], 1)}x | "
              f"{'yes' if r['replay_output_equal'] else 'NO'} |")
    problems = [r["workload"] for r in results if "error" not in r and not (r["replay_ok"] and r["replay_output_equal"])]
    if problems:
        print(f"\nreplay failed or printed otherwise than a fresh run of the modified script: {', '.join(problems)} "
              "(see replay_default / replay_1w in the results)")
    print(f"\nwrote {path}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
