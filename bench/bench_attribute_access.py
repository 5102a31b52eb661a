"""Benchmark: a plain Python model's training speed before and after hindlog checkpoints it.

    .venv/bin/python bench/bench_attribute_access.py [--rounds 5] [--baseline-src PATH]

On CPython 3.11 and 3.12, pickling an ordinary object (as a checkpoint of it
does) moves its attributes out of the fast inline storage the interpreter's
attribute caches use, for the rest of the process: every ``self.W1`` of it
gets slower (``hindlog.instance_dicts``). A model written as a plain class
over NumPy arrays, trained with small batches, reads and writes its attributes
at every step.

Each round runs, in a fresh process and store, such a model (a two-layer MLP
on 16 features, batches of 8): epochs timed before any hindlog call, then
``hl.checkpoints(model=...)`` and a recorded ``hl.loop`` checkpointing as often
as ε = 0.9 allows (about every other 30 ms epoch), then epochs timed again once the
run is finished (no
hindlog thread at work: what is left is what the checkpoints did to the model
object). The epochs inside the recorded iterations after the first checkpoint
are timed too; they also pay for the persist of the checkpoint before them,
running in the background. The fastest epoch of each phase; the ratios to before.

``--baseline-src`` measures another checkout's ``src`` (a git worktree of an
earlier commit) in the same run, rounds alternating, each in its own process.

Results: bench/results/attribute-access.json and a markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, compare_rounds, median, run_child, save_comparison  # noqa: E402

EPOCHS = 10

#: Run in a child process with the ``src`` under test first on sys.path.
CHILD = r"""
import json, os, sys, tempfile, time
sys.path.insert(0, sys.argv[1])
tmp = tempfile.mkdtemp(dir=sys.argv[2])
os.environ["HINDLOG_DIR"] = os.path.join(tmp, ".hindlog")
os.chdir(tmp)
import numpy as np
import hindlog as hl

EPOCHS = int(sys.argv[3])

class MLP:
    def __init__(self, d, h, rng):
        self.W1 = rng.normal(size=(d, h)) * 0.1
        self.b1 = np.zeros(h)
        self.W2 = rng.normal(size=(h, 1)) * 0.1
        self.b2 = np.zeros(1)
        self.lr = 0.01
        self.steps = 0

    def forward(self, x):
        self.x = x
        self.h = np.maximum(x @ self.W1 + self.b1, 0)
        return self.h @ self.W2 + self.b2

    def backward(self, g):
        self.gW2 = self.h.T @ g
        self.gb2 = g.sum(0)
        gh = (g @ self.W2.T) * (self.h > 0)
        self.gW1 = self.x.T @ gh
        self.gb1 = gh.sum(0)

    def step(self):
        self.W1 -= self.lr * self.gW1
        self.b1 -= self.lr * self.gb1
        self.W2 -= self.lr * self.gW2
        self.b2 -= self.lr * self.gb2
        self.steps += 1

rng = np.random.default_rng(0)
X = rng.normal(size=(16384, 16))
y = X[:, :1] * 2 - X[:, 1:2]
model = MLP(16, 16, rng)

def epoch():
    t = time.perf_counter()
    for s in range(0, len(X), 8):
        out = model.forward(X[s:s + 8])
        model.backward((out - y[s:s + 8]) / 8)
        model.step()
    return time.perf_counter() - t

for _ in range(2):
    epoch()
before = [epoch() for _ in range(EPOCHS)]
hl.init(epsilon=0.9)
hl.checkpoints(model=model)
during = []
for i in hl.loop("epoch", range(EPOCHS + 1)):
    seconds = epoch()
    if i:
        during.append(seconds)
    hl.log("seconds", seconds)
hl.finish()
after = [epoch() for _ in range(EPOCHS)]
import sqlite3
conn = sqlite3.connect(os.path.join(tmp, ".hindlog", "catalog.db"))
checkpointed = conn.execute("SELECT COUNT(DISTINCT iteration) FROM checkpoints").fetchone()[0]
conn.close()
import shutil
shutil.rmtree(tmp, ignore_errors=True)
print(json.dumps({"before_ms": min(before) * 1e3, "during_ms": min(during) * 1e3, "after_ms": min(after) * 1e3, "checkpointed": checkpointed,
                  "python": sys.version.split()[0]}))
"""


def measure(src: Path) -> dict[str, float]:
    m = run_child(CHILD, str(src), str(ROOT / "bench"), str(EPOCHS))
    m["ratio"] = m["after_ms"] / m["before_ms"]
    m["during_ratio"] = m["during_ms"] / m["before_ms"]
    return m


def describe(m: dict[str, float]) -> str:
    return (f"epoch {m['before_ms']:.1f} ms before, {m['during_ms']:.1f} ms while recorded ({m['during_ratio'] - 1:+.1%}), "
            f"{m['after_ms']:.1f} ms after ({m['ratio'] - 1:+.1%}), {m['checkpointed']} checkpointed iterations")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--baseline-src", type=Path, help="another checkout's src directory, measured alternately")
    args = p.parse_args()
    rounds = compare_rounds(args.baseline_src, args.rounds, measure, describe)
    results = [{"source": label, "before_ms": median([m["before_ms"] for m in runs]), "after_ms": median([m["after_ms"] for m in runs]),
                "during_ms": median([m["during_ms"] for m in runs]), "during_ratio": median([m["during_ratio"] for m in runs]),
                "ratio": median([m["ratio"] for m in runs]), "ratios": [m["ratio"] for m in runs],
                "checkpointed": median([m["checkpointed"] for m in runs]), "epochs": EPOCHS, "python": runs[0]["python"]}
               for label, runs in rounds.items()]
    path = save_comparison("attribute-access", "bench/bench_attribute_access.py", args.rounds, args.baseline_src, results)
    print(f"\nFastest epoch before, while and after recording with checkpoints, median of {args.rounds} rounds:\n")
    print("| code | before (ms) | while recorded (ms) | after (ms) | after / before |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {r['source']} | {r['before_ms']:.1f} | {r['during_ms']:.1f} | {r['after_ms']:.1f} | {r['ratio']:.3f} |")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
