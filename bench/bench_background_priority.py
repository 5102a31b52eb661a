"""Benchmark: what a checkpoint's background persist costs training, at normal priority, the lowest, and in the idle class.

    .venv/bin/python bench/bench_background_priority.py [--rounds 12] [--epochs 4] [--quick]

The persister thread hashes and writes a checkpoint while training runs. On a
machine whose cores training fills, that work takes cycles from training; the
policy charges it at its CPU time times a measured slowdown weight. Would a
persister at the lowest scheduling priority (nice 19; on Linux a thread's
nice value is its own), or in the idle scheduling class (``SCHED_IDLE``: it
runs only on a core nothing else wants), cost training less for the same
work, by running in the gaps training leaves?

One process trains the fine-tuning shape of bench/workloads/finetune.py (a
6.4M-parameter MLP with Adam, 77 MB of state, 16 steps an epoch, PyTorch's
default threads) and runs three background threads that each persist a 77 MB
page-aligned buffer again and again as a checkpoint is persisted (XXH3 hash,
``O_DIRECT`` write into an object store, fsync): one at normal priority, one
at nice 19 and one in the idle class. Each round times ``--epochs`` epochs
four times: with no background work and with each thread persisting in turn
(the order rotates from round to round), and counts the persists done and the
persisting thread's CPU time. Medians over the rounds: the slowdown of
training per persist and per second of the persister's CPU (the weight the
policy measures). A class that gets few persists done in a phase would leave
the checkpoints after the first one skipped as busy.

Results: bench/results/background-priority.json (background-priority-quick.json
with --quick: 3 rounds of 2 epochs) and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PYTHON, ROOT, machine, median, save  # noqa: E402

#: Run in a child process with the project's ``src`` first on sys.path.
CHILD = r"""
import json, mmap, os, sys, tempfile, threading, time
sys.path.insert(0, sys.argv[1])
rounds, epochs = int(sys.argv[3]), int(sys.argv[4])
from pathlib import Path
import numpy as np
import torch
import torch.nn as nn
from hindlog.objects import ObjectStore, digest, fsync_together

torch.manual_seed(0)
width, steps, batch = 1376, 16, 16
model = nn.Sequential(nn.Linear(512, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width),
                      nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))
opt = torch.optim.Adam(model.parameters(), lr=1e-4)
X, Y = torch.randn(steps * batch, 512), torch.randint(0, 10, (steps * batch,))

def epoch():
    for s in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X[s * batch:(s + 1) * batch]), Y[s * batch:(s + 1) * batch]).backward()
        opt.step()

size = sum(p.numel() * 4 * 3 for p in model.parameters())  # parameters and Adam's two moments
buffer = mmap.mmap(-1, size)
np.frombuffer(buffer, dtype=np.uint8)[:] = 1
view = memoryview(buffer)
mode_on = {"normal": threading.Event(), "lowest": threading.Event(), "idle": threading.Event()}
idle = {m: threading.Event() for m in mode_on}
done = {m: [0, 0.0] for m in mode_on}  # persists finished, CPU seconds
stop = False

with tempfile.TemporaryDirectory(dir=sys.argv[2]) as tmp:
    store = ObjectStore(Path(tmp) / "objects")

    def persister(mode):
        if mode == "lowest":
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        elif mode == "idle":  # Linux: 0 is the calling thread, whose policy is its own
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        k = 0
        while True:
            idle[mode].set()
            mode_on[mode].wait()
            if stop:
                return
            idle[mode].clear()
            if not mode_on[mode].is_set():
                continue  # woken as its phase ended: nothing to do until the next one
            k += 1
            c0 = time.thread_time()
            name = digest(view)[:-8] + f"{mode[0]}{k:07d}"  # a new name each time: every write is real
            store.write([view], name, durable=False)
            fsync_together([store.filename(name)])
            os.unlink(store.filename(name))
            if mode_on[mode].is_set():  # a persist that ran past its phase is not counted
                done[mode][0] += 1
                done[mode][1] += time.thread_time() - c0

    threads = [threading.Thread(target=persister, args=(m,), daemon=True) for m in mode_on]
    for t in threads:
        t.start()
    for _ in range(3):
        epoch()  # warm-up: the optimizer's state exists, the allocator has its pools
    modes = ["none", "normal", "lowest", "idle"]
    out = {m: {"seconds": [], "persists": [], "cpu": []} for m in modes}
    for r in range(rounds):
        for mode in modes[r % len(modes):] + modes[:r % len(modes)]:
            if mode != "none":
                n0, c0 = done[mode]
                mode_on[mode].set()
            t0 = time.perf_counter()
            for _ in range(epochs):
                epoch()
            out[mode]["seconds"].append(time.perf_counter() - t0)
            if mode != "none":
                mode_on[mode].clear()
                out[mode]["persists"].append(done[mode][0] - n0)
                out[mode]["cpu"].append(done[mode][1] - c0)
                idle[mode].wait()  # the persist in flight ends before the next phase
    stop = True
    for e in mode_on.values():
        e.set()
print(json.dumps({"state_bytes": size, "threads": torch.get_num_threads(), "modes": out}))
"""


def summarize(raw: dict) -> list[dict]:
    modes = raw["modes"]
    base = median(modes["none"]["seconds"])
    rows = [{"mode": "no background work", "phase_s": base}]
    for mode, label in (("normal", "normal priority"), ("lowest", "lowest priority (nice 19)"),
                        ("idle", "idle class (SCHED_IDLE)")):
        if mode not in modes:  # results saved before the idle class was measured
            continue
        m = modes[mode]
        phase, persists, cpu = median(m["seconds"]), median(m["persists"]), median(m["cpu"])
        slowdown = phase - base
        rows.append({
            "mode": label, "phase_s": phase, "slowdown_s": slowdown, "persists": persists,
            "persister_cpu_s": cpu, "slowdown_per_persist_s": slowdown / persists if persists else None,
            "persister_cpu_per_persist_s": cpu / persists if persists else None,
            "weight": slowdown / cpu if cpu else None,
        })
    return rows


def ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1e3:.1f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--epochs", type=int, default=4, help="epochs per phase")
    p.add_argument("--quick", action="store_true", help="3 rounds of 2 epochs: checks the benchmark runs, measures little")
    a = p.parse_args()
    if a.quick:
        a.rounds, a.epochs = 3, 2
    out = subprocess.run([PYTHON, "-c", CHILD, str(ROOT / "src"), str(ROOT / "bench"), str(a.rounds), str(a.epochs)],
                         capture_output=True, text=True, check=True)
    raw = json.loads(out.stdout.strip().splitlines()[-1])
    rows = summarize(raw)
    save("background-priority-quick" if a.quick else "background-priority", {
        "benchmark": "background-priority", "command": " ".join(["bench/bench_background_priority.py", *sys.argv[1:]]),
        "machine": machine(), "quick": a.quick, "rounds": a.rounds, "epochs": a.epochs, "state_bytes": raw["state_bytes"],
        "threads": raw["threads"], "raw": raw["modes"], "results": rows,
    })
    print("| persister | epochs' time (s) | slowdown (s) | persists | slowdown per persist (ms) | persister CPU per persist (ms) | slowdown per CPU second |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        cells = [r["mode"], f"{r['phase_s']:.3f}", f"{r.get('slowdown_s', 0.0):.3f}", str(r.get("persists", "")),
                 ms(r.get("slowdown_per_persist_s")), ms(r.get("persister_cpu_per_persist_s")),
                 "" if r.get("weight") is None else f"{r['weight']:.2f}"]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
