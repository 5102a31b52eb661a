"""Helpers for the hands-free tests: throw-away git projects with their own store, real
subprocesses for ``python SCRIPT`` and ``hindlog run SCRIPT``, ``hindlog replay``, and the
store read back with plain SQLite.

Every process gets an explicit environment: the store in ``HINDLOG_DIR`` (outside the
project), a short flush interval, a git identity, and one BLAS/OpenMP thread so that
CPU results do not depend on how busy the machine is.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from isolation import GIT_IDENTITY, dedent, isolated_env  # noqa: F401 (re-exported to the tests)
from script_edits import apply_edits, insert_after, insert_before  # noqa: F401 (re-exported to the tests)
from value_checks import assert_same_values, same  # noqa: F401 (re-exported to the tests)

PY = sys.executable


STDOUT = "@stdout"
#: Every print added in the tests starts with this, so the fresh run's new lines can be told apart.
MARK = "HS"


def base_env(ceiling: Path) -> dict[str, str]:
    env = isolated_env(ceiling)
    env.pop("PYTHONPATH", None)
    return env


def show(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


class HFProject:
    """A git repository at ``<base>/<name>`` whose store is ``<base>/<name>-store``."""

    def __init__(self, base: Path, name: str = "proj", files: dict[str, str] | None = None, git: bool = True) -> None:
        self.base = base
        self.root = base / name
        self.store = base / f"{name}-store"
        self.root.mkdir(parents=True)
        (self.root / "README.md").write_text("# hands-free test project\n")
        (self.root / ".gitignore").write_text("*.out\n")
        for rel, text in (files or {}).items():
            self.write(rel, text)
        if git:
            self.git("init", "-q")
            self.git("symbolic-ref", "HEAD", "refs/heads/main")
            self.commit("initial commit")

    # ------------------------------------------------------------ files and processes

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = base_env(self.base)
        env["HINDLOG_DIR"] = str(self.store)
        env.update(extra or {})
        return env

    def write(self, rel: str, text: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def read(self, rel: str = "train.py") -> str:
        return (self.root / rel).read_text()

    def git(self, *args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=self.root, env=base_env(self.base), capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            pytest.fail(f"git {' '.join(args)} failed: {proc.stderr}")
        return proc.stdout

    def commit(self, message: str = "change") -> None:
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)

    def python(self, script: str = "train.py", args: list[str] | tuple[str, ...] = (), env: dict[str, str] | None = None,
               timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """``python SCRIPT ARGS`` in the project (whatever its exit code)."""
        return subprocess.run([PY, script, *args], cwd=self.root, env=self.env(env), capture_output=True, text=True,
                              timeout=timeout)

    def hindlog(self, *args: str, env: dict[str, str] | None = None, timeout: float = 300,
                check: bool = False) -> subprocess.CompletedProcess[str]:
        """``python -m hindlog.cli ARGS`` in the project."""
        proc = subprocess.run([PY, "-m", "hindlog.cli", *args], cwd=self.root, env=self.env(env), capture_output=True,
                              text=True, timeout=timeout)
        if check and proc.returncode != 0:
            pytest.fail(f"hindlog {' '.join(args)}: {show(proc)}")
        return proc

    def hrun(self, script: str = "train.py", args: list[str] | tuple[str, ...] = (), sets: dict[str, Any] | None = None,
             epsilon: float | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """``hindlog run [--epsilon E] [--set NAME=VALUE ...] SCRIPT ARGS`` (whatever its exit code)."""
        opts: list[str] = []
        if epsilon is not None:
            opts += ["--epsilon", str(epsilon)]
        for k, v in (sets or {}).items():
            opts += ["--set", f"{k}={v}"]
        return self.hindlog("run", *opts, script, *args, env=env)

    def record(self, script: str = "train.py", args: list[str] | tuple[str, ...] = (), **kwargs: Any
               ) -> tuple[subprocess.CompletedProcess[str], str]:
        """``hindlog run`` the script; the process and the one new run's id."""
        before = set(self.run_ids())
        proc = self.hrun(script, args, **kwargs)
        new = [r for r in self.run_ids() if r not in before]
        assert len(new) == 1, f"expected one new run, got {new}\n{show(proc)}"
        return proc, new[0]

    def replay(self, *args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return self.hindlog("replay", *args, check=check, env=env)

    def copy(self, base: Path, name: str = "proj") -> HFProject:
        """An independent copy of this project and its store (git repository included)."""
        new = object.__new__(HFProject)
        new.base = base
        new.root = base / name
        new.store = base / f"{name}-store"
        shutil.copytree(self.root, new.root, symlinks=True)
        if self.store.exists():
            shutil.copytree(self.store, new.store, symlinks=True)
        return new

    # ------------------------------------------------------------ the store

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        path = self.store / "catalog.db"
        if not path.exists():
            return []
        conn = sqlite3.connect(str(path), timeout=30)
        try:
            with conn:
                return conn.execute(query, params).fetchall()
        finally:
            conn.close()

    def run_ids(self) -> list[str]:
        return [r[0] for r in self.sql("SELECT run_id FROM runs ORDER BY id")]

    def run_row(self, run: str) -> dict[str, Any]:
        rows = self.sql("SELECT status, script, argv, info FROM runs WHERE run_id=?", (run,))
        assert rows, f"no run {run}"
        status, script, argv, info = rows[0]
        return {"status": status, "script": script, "argv": json.loads(argv or "null"), "info": json.loads(info or "{}")}

    def args(self, run: str) -> dict[str, Any]:
        rows = self.sql("SELECT a.name, a.value FROM args a JOIN runs u ON u.id=a.run WHERE u.run_id=?", (run,))
        return {k: json.loads(v) for k, v in rows}

    def records(self, name: str, run: str, source: int | None = None) -> list[tuple[tuple[tuple[str, int], ...], Any, int]]:
        """``(context, value, source)`` of every record of ``name`` in ``run``, in log order."""
        from hindlog.values import decode

        sql = (
            "SELECT c.loops, r.kind, r.value, r.source FROM records r JOIN names n ON n.id=r.name "
            "JOIN runs u ON u.id=r.run LEFT JOIN contexts c ON c.run=r.run AND c.id=r.ctx "
            "WHERE n.name=? AND u.run_id=?"
        )
        params: list[Any] = [name, run]
        if source is not None:
            sql += " AND r.source=?"
            params.append(source)
        rows = self.sql(sql + " ORDER BY r.rowid", tuple(params))
        return [(context_key(loops), decode(kind, value), src) for loops, kind, value, src in rows]

    def values(self, name: str, run: str) -> dict[tuple[tuple[str, int], ...], Any]:
        """``{((loop, index), ...): value}`` of ``name`` in ``run`` (recorded and replayed together)."""
        out: dict[tuple[tuple[str, int], ...], Any] = {}
        for key, value, _src in self.records(name, run):
            assert key not in out, f"{name} has two values at {key} in run {run}"
            out[key] = value
        return out

    def output(self, run: str) -> list[tuple[int | None, int, str]]:
        """``hindlog show RUN --output`` as ``(iteration, source, line)`` (through the query API)."""
        from hindlog import query

        return query.output(run, store=self.store)

    def new_lines(self, run: str) -> dict[int | None, list[str]]:
        """The lines replay stored for ``run`` (source 1), per main-loop iteration, in order."""
        out: dict[int | None, list[str]] = defaultdict(list)
        for iteration, source, line in self.output(run):
            if source:
                out[iteration].append(line)
        return dict(out)

    def checkpoint_iterations(self, run: str) -> list[int]:
        rows = self.sql(
            "SELECT DISTINCT k.iteration FROM checkpoints k JOIN runs u ON u.id=k.run WHERE u.run_id=? ORDER BY 1", (run,)
        )
        return [r[0] for r in rows]


def context_key(loops: str | None) -> tuple[tuple[str, int], ...]:
    if not loops:
        return ()
    return tuple((str(k), int(v)) for k, v in json.loads(loops))


def marked_lines(output: list[tuple[int | None, int, str]], mark: str = MARK) -> dict[int | None, list[str]]:
    """The recorded lines starting with ``mark``, per main-loop iteration, in order."""
    out: dict[int | None, list[str]] = defaultdict(list)
    for iteration, source, line in output:
        if source == 0 and line.startswith(mark):
            out[iteration].append(line)
    return dict(out)


# ----------------------------------------------------------------- comparing


def normalize_traceback(text: str) -> str:
    """Tracebacks of two runs compared modulo memory addresses."""
    return re.sub(r"0x[0-9a-f]+", "0x?", text)
