#!/usr/bin/env bash
# Create (or reuse) the separate virtual environment for the peer system flordb 4.0.1.
#
#     bash bench/peers/setup_flordb.sh          # -> bench/.venvs/flordb (git-ignored)
#
# flordb runs side by side with hindlog, never inside the project's .venv.
# Idempotent: a stamp file (written only after every pinned package imports at
# its pinned version) makes a second call do nothing; FORCE=1 reinstalls.
# Exits non-zero with a message on failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${FLORDB_VENV:-$ROOT/bench/.venvs/flordb}"
PY="${PY:-python3}"
BIN="$VENV/bin"
STAMP="$VENV/.hindlog-bench-ready"

# torch is pinned (an unpinned torch pulls a multi-GB CUDA build; 2.13.0 is a local
# CPU wheel); flordb 4.0.1 needs pandas < 3 (it breaks on pandas 3).
TORCH_SPEC="torch==2.13.0"
PKGS=("flordb==4.0.1" "pandas<3" "numpy" "scikit-learn")

check() {
    "$BIN/python" - <<'PYEOF' 2>/dev/null
import importlib.metadata as md
assert md.version("flordb") == "4.0.1"
assert md.version("torch").split("+")[0] == "2.13.0"
assert int(md.version("pandas").split(".")[0]) < 3
import torch, numpy, sklearn, pandas  # noqa: F401
import flordb  # noqa: F401  (flordb must import)
PYEOF
}

fail() {
    echo "setup_flordb.sh: FAILED: $*" >&2
    echo "setup_flordb.sh: the flordb peer benchmarks (bench/bench_flordb.py, bench/bench_peer_logcall.py) cannot run flordb without $VENV" >&2
    exit 1
}

if [ -z "${FORCE:-}" ] && [ -f "$STAMP" ] && [ -x "$BIN/python" ]; then
    echo "flordb venv ready: $VENV ($(cat "$STAMP"))"
    exit 0
fi

command -v "$PY" >/dev/null 2>&1 || fail "no '$PY' interpreter on PATH (set PY=...)"
if [ ! -x "$BIN/python" ]; then
    mkdir -p "$(dirname "$VENV")"
    "$PY" -m venv "$VENV" || fail "'$PY -m venv $VENV' failed"
fi
rm -f "$STAMP"
"$BIN/pip" install -q --upgrade pip || echo "setup_flordb.sh: warning: could not upgrade pip; going on" >&2
# torch first, so that no dependency's (unpinned) torch requirement pulls another build.
"$BIN/pip" install -q "$TORCH_SPEC" || fail "pip install $TORCH_SPEC"
"$BIN/pip" install -q "$TORCH_SPEC" "${PKGS[@]}" || fail "pip install ${PKGS[*]}"
check || fail "the environment was installed but 'import flordb' (or a pinned version) does not check out; try: $BIN/python -c 'import flordb'"
"$BIN/python" -c 'import importlib.metadata as m; print(" ".join(f"{p}=={m.version(p)}" for p in ["flordb", "torch", "pandas", "numpy", "scikit-learn", "GitPython"]))' > "$STAMP" \
    || fail "could not write $STAMP"
echo "flordb venv ready: $VENV ($(cat "$STAMP"))"
