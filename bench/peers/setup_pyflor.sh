#!/usr/bin/env bash
# Create (or reuse) the separate virtual environment for the peer system pyflor 2.5.6.
#
#     bash bench/peers/setup_pyflor.sh          # -> bench/.venvs/pyflor (git-ignored)
#
# pyflor runs side by side with hindlog, never inside the project's .venv.
# Idempotent: when the environment already imports every pinned package at the
# pinned version, it does nothing. Exits non-zero with a message on failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${PYFLOR_VENV:-$ROOT/bench/.venvs/pyflor}"
PY="${PY:-python3}"
BIN="$VENV/bin"

# torch is pinned (never an unpinned torch); pyflor 2.5.6 needs apted and
# bidict==0.21.3 beside it to import today (its own requirements leave them out).
TORCH_SPEC="torch==2.13.0"
PKGS=("pyflor==2.5.6" "apted" "bidict==0.21.3" "numpy" "scikit-learn")

check() {
    "$BIN/python" - <<'EOF' 2>/dev/null
import importlib.metadata as md
assert md.version("pyflor") == "2.5.6"
assert md.version("bidict") == "0.21.3"
assert md.version("torch").split("+")[0] == "2.13.0"
import torch, numpy, sklearn, apted, flor  # noqa: F401  (flor must import)
from flor import MTK  # noqa: F401
EOF
}

fail() {
    echo "setup_pyflor.sh: FAILED: $*" >&2
    echo "setup_pyflor.sh: the pyflor peer benchmark (bench/bench_peers.py) cannot run without $VENV" >&2
    exit 1
}

if [ -x "$BIN/python" ] && check; then
    echo "pyflor venv ready: $VENV"
    exit 0
fi

command -v "$PY" >/dev/null 2>&1 || fail "no '$PY' interpreter on PATH (set PY=...)"
if [ ! -x "$BIN/python" ]; then
    mkdir -p "$(dirname "$VENV")"
    "$PY" -m venv "$VENV" || fail "'$PY -m venv $VENV' failed"
fi
"$BIN/pip" install -q --upgrade pip || echo "setup_pyflor.sh: warning: could not upgrade pip; going on" >&2
# torch first, so that pyflor's own (unpinned) dependency on torch is already satisfied.
"$BIN/pip" install -q "$TORCH_SPEC" || fail "pip install $TORCH_SPEC"
"$BIN/pip" install -q "$TORCH_SPEC" "${PKGS[@]}" || fail "pip install ${PKGS[*]}"
check || fail "the environment was installed but 'import flor' (or a pinned version) does not check out; try: $BIN/python -c 'import flor'"
echo "pyflor venv ready: $VENV"
