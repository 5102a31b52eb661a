"""What every test subprocess shares: a git identity, no configuration of the machine, one
BLAS/OpenMP thread (identical float results between processes, kind to busy CPUs), and
scripts written from indented test strings."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.com",
    "GIT_COMMITTER_NAME": "Test Committer",
    "GIT_COMMITTER_EMAIL": "committer@example.com",
}


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def isolated_env(ceiling: Path) -> dict[str, str]:
    """The environment of a test's subprocess: no HINDLOG_* setting or git configuration of the
    machine leaks in, and git never finds a repository above ``ceiling`` (the test's directory)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HINDLOG_")}
    env.update(GIT_IDENTITY)
    env.update(
        {
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CEILING_DIRECTORIES": str(ceiling),
            "HINDLOG_FLUSH_INTERVAL": "0.05",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env
