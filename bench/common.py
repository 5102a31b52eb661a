"""Shared pieces of the benchmarks: timing whole processes, temp projects, machine facts, results."""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORKLOADS = BENCH / "workloads"
RESULTS = BENCH / "results"
PYTHON = sys.executable
GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.com",
}


#: glibc's allocator held steady for both sides of an overhead comparison. By default glibc
#: adapts its mmap threshold and returns freed heap memory to the kernel, so a training step
#: that frees and reallocates large tensors page-faults them back in, more or less depending
#: on what else the process allocated: the fine-tuning workload, plain, ran in 7.4 s with
#: these settings and in 10-13 s without (2.8M against 0.13M page faults), and a recorded run,
#: whose allocations shift the threshold, came out 18% *faster* than plain. That is the
#: allocator's noise, not hindlog's cost: with these settings the A/A spread shrinks to a few
#: percent and the ratio measures what hindlog adds. ``--malloc default`` measures without them.
STEADY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(16 << 30)}

#: Workloads that run a script of bench/workloads with other arguments (hl.arg) than its defaults.
VARIANT_ARGS = {
    # Beyond the targets' shapes: twice the fine-tuning state and a third of its epoch, where ε
    # cannot pay for one checkpoint per 4 iterations (a checkpoint costs about half an epoch).
    "finetune-large": {"width": 2048, "steps": 3},
    # The CNN with epochs three times as long, so that the set-up every replay worker repeats
    # (about 3 s here, mostly importing torch) weighs less against the work workers split.
    "cnn-long": {"samples": 24576},
    # Fine-tuning on a CUDA GPU: 630 MB of state, epochs of about 0.1 s on an H100.
    "finetune-gpu": {"device": "cuda", "width": 4096, "steps": 50, "batch": 256, "epochs": 30},
}


def script_args_env(workload: str, quick_args: dict | None = None) -> dict[str, str]:
    """``HINDLOG_SET_*`` variables for a workload: its variant's arguments, then a quick run's."""
    return {f"HINDLOG_SET_{k}": str(v) for k, v in {**VARIANT_ARGS.get(workload, {}), **(quick_args or {})}.items()}


def compile_hindlog() -> None:
    """Byte-compile hindlog's modules, as installing a package does. This machine sets
    PYTHONDONTWRITEBYTECODE=1, so without this every recorded process would compile
    hindlog from source (about 45 ms) and a plain one would not: a cost no installed user
    pays. Python reads existing bytecode whatever that variable says."""
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("hindlog")  # where the benchmark's processes import it from
    if spec is not None and spec.origin:
        compileall.compile_dir(str(Path(spec.origin).parent), quiet=1)


def allocator_env(mode: str) -> dict[str, str]:
    """The environment for ``--malloc steady|default``."""
    if mode not in ("steady", "default"):
        raise ValueError(f"--malloc must be steady or default, got {mode!r}")
    return dict(STEADY_MALLOC) if mode == "steady" else {}


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for mod in ("torch", "numpy", "sklearn"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            pass
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    try:
        gpus = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=20).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        gpus = []
    return {
        "nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(), "git_head": head, "load_avg": os.getloadavg(), **versions,
        **({"gpus": gpus} if gpus else {}),
    }


def new_project(files: dict[str, Path | str]) -> Path:
    """A temporary git project holding copies of ``files`` (name -> source path or text)."""
    d = Path(tempfile.mkdtemp(prefix="hindlog-bench-"))
    subprocess.run(["git", "init", "-q"], cwd=d, check=True)
    for name, src in files.items():
        target = d / name
        target.write_text(Path(src).read_text() if isinstance(src, Path) else src)
    return d


def timed(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True) -> float:
    """Wall seconds of a whole process."""
    return timed_cpu(cmd, cwd, env, check)[0]


def timed_cpu(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, all its threads and children) of a whole process.

    On a shared machine the CPU time moves much less with other jobs' load than the wall time."""
    import resource

    full_env = {**os.environ, **GIT_ENV, **(env or {})}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return elapsed, cpu


#: A workload's plain runs are timed for at least this long in all: a 2-second script gets more
#: pairs than a 15-second one, since its ratios scatter as much while each says less.
MIN_TIMED_SECONDS = 30.0


def triples_for(pairs: int, plain_seconds: float, min_seconds: float) -> int:
    """The number of pairs (or triples) to time: ``pairs``, or more when a plain run is short."""
    if plain_seconds <= 0:
        return pairs
    return max(pairs, math.ceil(min_seconds / plain_seconds))


def bracketed_ratio(before: float, treated: float, after: float) -> float:
    """A treated run against the mean of the plain runs just before and just after it.

    Alternating pairs compare the treated run with one plain run that is sometimes before
    it, sometimes after: a drift of the machine's speed within the pair lands on the ratio
    with a sign set by the order, and a median over an odd number of pairs keeps the sign of
    the majority. Bracketing cancels a linear drift in every triple."""
    return treated / ((before + after) / 2)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def save(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data.setdefault("saved_at", time.time())  # when it was measured, for the report
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


def run_child(code: str, *args: str) -> Any:
    """Run ``code`` with ``python -c`` and these arguments; what it printed last, as JSON."""
    out = subprocess.run([PYTHON, "-c", code, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def sources_to_compare(baseline_src: Path | None) -> dict[str, Path]:
    """The ``src`` trees a ``--baseline-src`` benchmark measures: this checkout's ("current"),
    after another checkout's ("baseline", a git worktree of an earlier commit) if given."""
    current = {"current": ROOT / "src"}
    return {"baseline": baseline_src.resolve(), **current} if baseline_src else current


def compare_rounds(baseline_src: Path | None, rounds: int, measure: Any, describe: Any) -> dict[str, list[Any]]:
    """``measure(src)`` of each source tree (``sources_to_compare``) in each round, the order
    alternating round by round; each result printed as ``describe(result)``. Results by label."""
    sources = list(sources_to_compare(baseline_src).items())
    out: dict[str, list[Any]] = {label: [] for label, _ in sources}
    for r in range(rounds):
        for label, src in (sources if r % 2 == 0 else sources[::-1]):
            result = measure(src)
            out[label].append(result)
            print(f"round {r + 1} {label}: {describe(result)}", flush=True)
    return out


def baseline_fields(baseline_src: Path | None) -> dict[str, str | None]:
    """The result file's record of which earlier code a ``--baseline-src`` run measured."""
    if not baseline_src:
        return {"baseline_src": None, "baseline_commit": None}
    out = subprocess.run(["git", "-C", str(baseline_src), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return {"baseline_src": str(baseline_src), "baseline_commit": out.stdout.strip() or None}


def save_comparison(name: str, script: str, rounds: int, baseline_src: Path | None, results: list[dict[str, Any]]) -> Path:
    """Save the results of a ``compare_rounds`` benchmark as ``name``, with the command that ran
    it (``script`` and this process's arguments), the machine and the code compared."""
    data = {"benchmark": name, "command": " ".join([script, *sys.argv[1:]]), "machine": machine(), "rounds": rounds,
            **baseline_fields(baseline_src), "results": results}
    return save(name, data)


def cleanup(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


compile_hindlog()
