"""Benchmark: hands-free mode on unmodified scripts, record overhead and replay speed.

    .venv/bin/python bench/bench_handsfree.py [--pairs 3] [--quick] [--workloads cnn,finetune,lstm,sklearn]

The workloads of bench/workloads are turned into plain scripts that do not use
hindlog at all (``hl.loop(name, it)`` -> ``it``, ``hl.arg(name, v)`` -> ``v``,
``hl.log(...)`` -> ``print(...)``, ``hl.checkpoints`` removed). For each:

- record overhead: ``python plain.py`` against ``hindlog run plain.py``,
  alternating, ``--pairs`` pairs, median of the per-pair ratios;
- replay: a ``print(...)`` of a per-epoch value added at main-loop level, then
  ``hindlog replay plain.py --workers 2``, against running the modified script.

Results: bench/results/handsfree.json.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_replay import CASES  # noqa: E402
from common import PYTHON, WORKLOADS, cleanup, machine, median, new_project, save, timed  # noqa: E402

QUICK_ARGS = {"cnn": {"epochs": 3, "samples": 4096}, "finetune": {"epochs": 16}, "lstm": {"epochs": 3}, "sklearn": {"epochs": 15}}


def plain(source: str, overrides: dict[str, object]) -> str:
    """The workload without hindlog."""
    out = source.replace("import hindlog as hl\n", "")
    out = re.sub(r"^\s*hl\.checkpoints\(.*\)\n", "", out, flags=re.M)

    def arg(m: re.Match[str]) -> str:
        return repr(overrides[m.group(1)]) if m.group(1) in overrides else m.group(2)

    out = re.sub(r'hl\.arg\("(\w+)", ([^)]+)\)', arg, out)
    out = re.sub(r'hl\.loop\("\w+", (.+)\):$', r"\1:", out, flags=re.M)
    return out.replace("hl.log(", "print(")


def bench(name: str, pairs: int, quick: bool) -> dict:
    script, main_anchor, main_stmt, _na, _ns = CASES[name]
    overrides = QUICK_ARGS[name] if quick else {}
    source = plain((WORKLOADS / script).read_text(), overrides)
    assert "hl." not in source, source
    project = new_project({script: source})
    hindlog_cli = [PYTHON, "-m", "hindlog.cli"]
    out: dict = {"workload": name}
    try:
        ratios, plain_t, rec_t = [], [], []
        for k in range(pairs):
            order = ["plain", "record"] if k % 2 == 0 else ["record", "plain"]
            t = {}
            for mode in order:
                if mode == "plain":
                    t[mode] = timed([PYTHON, script], project)
                else:
                    t[mode] = timed([*hindlog_cli, "--store", str(project / f".store-{k}"), "run", script], project)
            plain_t.append(t["plain"])
            rec_t.append(t["record"])
            ratios.append(t["record"] / t["plain"])
            print(f"  {name} pair {k}: plain {t['plain']:.2f}s hindlog run {t['record']:.2f}s ratio {ratios[-1]:.3f}", flush=True)
        out.update(plain_s=plain_t, record_s=rec_t, ratios=ratios, median_ratio=median(ratios))
        store = project / ".store-0"
        stmt = main_stmt.replace("hl.log(", "print(")
        (project / script).write_text(source.replace(main_anchor.replace("hl.log(", "print("), main_anchor.replace("hl.log(", "print(") + stmt, 1))
        out["replay_2w_s"] = timed([*hindlog_cli, "--store", str(store), "replay", script, "--workers", "2"], project)
        out["full_rerun_s"] = timed([PYTHON, script], project)
        out["replay_speedup"] = out["full_rerun_s"] / out["replay_2w_s"]
    finally:
        cleanup(project)
    print(f"  {name}: replay {out['replay_2w_s']:.1f}s vs re-run {out['full_rerun_s']:.1f}s", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--workloads", default=",".join(CASES))
    args = p.parse_args()
    results = [bench(n, args.pairs, args.quick) for n in args.workloads.split(",")]
    data = {"benchmark": "handsfree", "command": " ".join(["bench/bench_handsfree.py", *sys.argv[1:]]),
            "machine": machine(), "results": results}
    path = save("handsfree" + ("-quick" if args.quick else ""), data)
    print("\n| workload | python (s) | hindlog run (s) | ratio (median) | replay of a new print, 2 workers (s) | re-run (s) | speedup |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['workload']} | {median(r['plain_s']):.2f} | {median(r['record_s']):.2f} | {r['median_ratio']:.3f} | "
              f"{r['replay_2w_s']:.1f} | {r['full_rerun_s']:.1f} | {r['replay_speedup']:.1f}x |")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
