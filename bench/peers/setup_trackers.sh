#!/usr/bin/env bash
# Create (or reuse) the separate virtual environment for the experiment trackers
# MLflow and TensorBoard (bench/bench_peer_logcall.py times one logging call of each).
#
#     bash bench/peers/setup_trackers.sh        # -> bench/.venvs/trackers (git-ignored)
#
# Never installed into the project's .venv. Idempotent: a stamp file (written only
# after every pinned package imports at its pinned version) makes a second call
# do nothing; FORCE=1 reinstalls. Exits non-zero with a message on failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${TRACKERS_VENV:-$ROOT/bench/.venvs/trackers}"
PY="${PY:-python3}"
BIN="$VENV/bin"
STAMP="$VENV/.hindlog-bench-ready"

# TensorBoard's SummaryWriter is torch.utils.tensorboard's, so torch is needed:
# pinned (an unpinned torch pulls a multi-GB CUDA build; 2.13.0 is a local CPU wheel).
TORCH_SPEC="torch==2.13.0"
# 3.18.0 is the newest mlflow, but its mlflow-skinny==3.18.0 is not on the index (pip: "No matching
# distribution found for mlflow-skinny==3.18.0"), so the newest installable release is pinned.
MLFLOW_VERSION="3.17.2"
TENSORBOARD_VERSION="2.21.0"
PKGS=("mlflow==$MLFLOW_VERSION" "tensorboard==$TENSORBOARD_VERSION" "numpy")

check() {
    MLFLOW_VERSION="$MLFLOW_VERSION" TENSORBOARD_VERSION="$TENSORBOARD_VERSION" "$BIN/python" - <<'PYEOF' 2>/dev/null
import importlib.metadata as md, os
assert md.version("mlflow") == os.environ["MLFLOW_VERSION"]
assert md.version("tensorboard") == os.environ["TENSORBOARD_VERSION"]
assert md.version("torch").split("+")[0] == "2.13.0"
import mlflow, numpy  # noqa: F401
from torch.utils.tensorboard import SummaryWriter  # noqa: F401
PYEOF
}

fail() {
    echo "setup_trackers.sh: FAILED: $*" >&2
    echo "setup_trackers.sh: bench/bench_peer_logcall.py cannot time MLflow and TensorBoard without $VENV" >&2
    exit 1
}

if [ -z "${FORCE:-}" ] && [ -f "$STAMP" ] && [ -x "$BIN/python" ]; then
    echo "trackers venv ready: $VENV ($(cat "$STAMP"))"
    exit 0
fi

command -v "$PY" >/dev/null 2>&1 || fail "no '$PY' interpreter on PATH (set PY=...)"
if [ ! -x "$BIN/python" ]; then
    mkdir -p "$(dirname "$VENV")"
    "$PY" -m venv "$VENV" || fail "'$PY -m venv $VENV' failed"
fi
rm -f "$STAMP"
"$BIN/pip" install -q --upgrade pip || echo "setup_trackers.sh: warning: could not upgrade pip; going on" >&2
"$BIN/pip" install -q "$TORCH_SPEC" || fail "pip install $TORCH_SPEC"
"$BIN/pip" install -q "$TORCH_SPEC" "${PKGS[@]}" || fail "pip install ${PKGS[*]}"
check || fail "the environment was installed but mlflow / torch.utils.tensorboard (or a pinned version) does not check out; try: $BIN/python -c 'import mlflow; from torch.utils.tensorboard import SummaryWriter'"
"$BIN/python" -c 'import importlib.metadata as m; print(" ".join(f"{p}=={m.version(p)}" for p in ["mlflow", "mlflow-skinny", "tensorboard", "torch", "numpy", "protobuf"]))' > "$STAMP" \
    || fail "could not write $STAMP"
echo "trackers venv ready: $VENV ($(cat "$STAMP"))"
