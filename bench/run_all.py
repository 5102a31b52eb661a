"""Run every benchmark in bench/, one after the other: `make bench` (add --quick for a short run).

Each benchmark writes its raw results to bench/results/ and prints its tables;
docs/benchmarks.md holds the results with the commands that produced them.
The peers' benchmark (pyflor) first sets up its own virtual environment with
bench/peers/setup_pyflor.sh; if that fails, its results say so and the rest goes on.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SUITE = ["bench_log.py", "bench_record.py", "bench_replay.py", "bench_handsfree.py", "bench_peers.py"]


def main() -> int:
    extra = [a for a in sys.argv[1:] if a == "--quick"]
    failed = []
    for script in SUITE:
        path = BENCH / script
        if not path.exists():
            continue
        print(f"\n=== {script} {' '.join(extra)}", flush=True)
        if subprocess.run([sys.executable, str(path), *extra], cwd=BENCH.parent).returncode != 0:
            failed.append(script)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
