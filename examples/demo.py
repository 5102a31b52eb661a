"""The hindlog demo: record a training run, add hindsight log statements, replay them.

Runs in a fresh temporary git project, kept afterwards for the user to look at:
1. records examples/train_cnn.py (a small CNN; it logs only loss and accuracy),
2. adds two statements it "forgot": the weight norm and the confusion matrix per epoch,
3. replays them with `hindlog replay` (checkpoint restore, nested loops skipped, as many
   workers as the cores hold at the record's thread count),
4. retrains the modified script from scratch to show the replayed values are exactly what
   a full re-run gives, and how much faster replay was.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
HINDSIGHT = """\
    # Added after the fact:
    hl.log("weight_norm", torch.stack([p.norm() for p in model.parameters()]).norm().item())
    hl.log("confusion", torch.bincount(val_y * 10 + pred, minlength=100).reshape(10, 10))
"""
ANCHOR = '    hl.log("acc", acc)\n'


def run(cmd: list[str], cwd: Path, env: dict[str, str], quiet: bool = True) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=quiet, text=True)
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{out.stdout}\n{out.stderr}")
    return elapsed


def main() -> None:
    import hindlog as hl

    project = Path(tempfile.mkdtemp(prefix="hindlog-demo-"))
    env = {**os.environ, "GIT_AUTHOR_NAME": "demo", "GIT_AUTHOR_EMAIL": "demo@example.com",
           "GIT_COMMITTER_NAME": "demo", "GIT_COMMITTER_EMAIL": "demo@example.com"}
    env.pop("HINDLOG_DIR", None)
    hindlog_cli = [sys.executable, "-m", "hindlog.cli"]
    try:
        subprocess.run(["git", "init", "-q"], cwd=project, check=True)
        script = project / "train.py"
        shutil.copy(HERE / "train_cnn.py", script)
        print(f"project: {project}\n")

        print("1. Recording: python train.py  (logs loss and acc; hindlog checkpoints in the background)")
        t_record = run([sys.executable, "train.py"], project, env, quiet=False)
        subprocess.run([*hindlog_cli, "show", "latest"], cwd=project, env=env)
        print(f"   recorded in {t_record:.1f}s\n")

        print("2. Adding hindsight log statements to train.py:")
        source = script.read_text()
        script.write_text(source.replace(ANCHOR, ANCHOR + HINDSIGHT))
        print("   " + HINDSIGHT.replace("\n", "\n   "))

        print("3. Replaying: hindlog replay train.py")
        t_replay = run([*hindlog_cli, "replay", "train.py"], project, env, quiet=False)
        print(f"   replayed in {t_replay:.1f}s\n")

        store = project / ".hindlog"
        df = hl.dataframe("acc", "weight_norm", "confusion", store=store)
        table = df[["epoch", "acc", "weight_norm"]].copy()
        table["confusion diagonal"] = [np.diag(m).tolist() for m in df["confusion"]]
        print("   recovered values (as if logged all along):")
        print("   " + table.to_string(index=False).replace("\n", "\n   ") + "\n")

        print("4. For comparison, retraining the modified script from scratch:")
        truth_store = project / ".truth"
        t_full = run([sys.executable, "train.py"], project, {**env, "HINDLOG_DIR": str(truth_store)})
        truth = hl.dataframe("weight_norm", "confusion", store=truth_store)
        same = truth["weight_norm"].tolist() == df["weight_norm"].tolist() and all(
            np.array_equal(a, b) for a, b in zip(truth["confusion"], df["confusion"])
        )
        print(f"   retrained in {t_full:.1f}s; replayed values identical to the retrained ones: {same}")
        print(f"\nReplay was {t_full / t_replay:.1f}x faster than retraining "
              f"({t_replay:.1f}s vs {t_full:.1f}s, whole processes).")
        if not same:
            sys.exit(1)
    finally:
        # Kept, to look around in: the runs, the replayed values, the code versions.
        print(f"\nThe demo project stays in {project}: `cd {project}` and try `hindlog runs`, `hindlog show`, "
              f"`hindlog logs weight_norm` (`{Path(sys.executable).parent / 'hindlog'}` without .venv activated); "
              "delete it when done.")


if __name__ == "__main__":
    main()
