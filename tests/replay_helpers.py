"""Helpers for the replay tests: throw-away git projects with their own store, real
subprocesses for recording, fresh ground-truth runs and ``hindlog replay``.

Every process gets an explicit environment: the store in ``HINDLOG_DIR`` (outside the
project), a short flush interval, a git identity, and one BLAS/OpenMP thread so that
CPU results do not depend on how busy the machine is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from isolation import GIT_IDENTITY, dedent, isolated_env  # noqa: F401 (re-exported to the tests)
from script_edits import apply_edits, insert_after, insert_before  # noqa: F401 (re-exported to the tests)
from value_checks import assert_same_values, same  # noqa: F401 (re-exported to the tests)

PY = sys.executable


#: Columns of ``hl.dataframe`` that are not loop indices or values.
META = {"run_id", "script", "code_version"}


def base_env(ceiling: Path) -> dict[str, str]:
    """The environment of every process a replay test starts (``ceiling``: the test's directory,
    which also holds the temporary files, e.g. the scratch copies replay leaves after a failure)."""
    env = isolated_env(ceiling)
    tmp = ceiling / "tmp"
    tmp.mkdir(exist_ok=True)
    env["TMPDIR"] = str(tmp)
    return env


class ReplayProject:
    """A git repository at ``<base>/<name>`` whose store is ``<base>/<name>-store``."""

    def __init__(self, base: Path, name: str = "proj", git: bool = True) -> None:
        self.base = base
        self.root = base / name
        self.store = base / f"{name}-store"
        self.root.mkdir(parents=True)
        (self.root / "README.md").write_text("# replay test project\n")
        (self.root / ".gitignore").write_text("*.out\n")
        if git:
            self.git("init", "-q")
            self.git("symbolic-ref", "HEAD", "refs/heads/main")
            self.git("add", "-A")
            self.git("commit", "-q", "-m", "initial commit")

    # ------------------------------------------------------------ files and processes

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = base_env(self.base)
        env["HINDLOG_DIR"] = str(self.store)
        env.update(extra or {})
        return env

    def write(self, rel: str, text: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dedent(text))
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
               check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([PY, script, *args], cwd=self.root, env=self.env(env), capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            pytest.fail(f"python {script} exited with {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
        return proc

    def start(self, script: str = "train.py", env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """Start ``script`` in the background (see ``finish``)."""
        return subprocess.Popen([PY, script], cwd=self.root, env=self.env(env), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def finish(self, proc: subprocess.Popen[str], timeout: float = 180) -> str:
        """Wait for a script started with ``start``; the id of the run it recorded."""
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"the script did not finish within {timeout} s\n{out}\n{err}")
        if proc.returncode != 0:
            pytest.fail(f"the script exited with {proc.returncode}\n--- stdout\n{out}\n--- stderr\n{err}")
        return self.run_ids()[-1]

    def record(self, text: str | None = None, script: str = "train.py", env: dict[str, str] | None = None,
               args: list[str] | tuple[str, ...] = ()) -> str:
        """Write ``text`` (if given) to ``script``, run it, and return the new run's id."""
        if text is not None:
            self.write(script, text)
        before = set(self.run_ids())
        self.python(script, args=args, env=env)
        new = [r for r in self.run_ids() if r not in before]
        assert len(new) == 1, f"expected one new run, got {new}"
        return new[0]

    def hindlog(self, *args: str, check: bool | None = None, env: dict[str, str] | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``python -m hindlog.cli ARGS`` in the project; ``check=True`` fails the test on a non-zero exit."""
        proc = subprocess.run([PY, "-m", "hindlog.cli", *args], cwd=self.root, env=self.env(env), capture_output=True,
                              text=True, timeout=timeout)
        if check and proc.returncode != 0:
            pytest.fail(f"hindlog {' '.join(args)} exited with {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
        return proc

    def replay(self, *args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return self.hindlog("replay", *args, check=check, env=env)

    # ------------------------------------------------------------ the store

    def run_ids(self) -> list[str]:
        import hindlog as hl

        if not (self.store / "catalog.db").exists():
            return []
        return list(hl.runs(store=self.store)["run_id"])

    def df(self, *names: str, runs: Any = None) -> Any:
        import hindlog as hl

        return hl.dataframe(*names, runs=runs, store=self.store)

    def values(self, name: str, run: str) -> dict[tuple[tuple[str, int], ...], Any]:
        """``{((loop, index), ...): value}`` of ``name`` in ``run`` (recorded and replayed together)."""
        return values_by_context(self.df(name, runs=[run]), name, self.arg_names())

    def arg_names(self) -> set[str]:
        return {r[0] for r in self.sql("SELECT DISTINCT name FROM args")}

    def count(self, name: str, run: str | None = None) -> int:
        """Rows of the catalog holding ``name`` (for ``run``), straight from SQLite."""
        import sqlite3

        conn = sqlite3.connect(str(self.store / "catalog.db"), timeout=30)
        try:
            sql = "SELECT COUNT(*) FROM records r JOIN names n ON n.id=r.name JOIN runs u ON u.id=r.run WHERE n.name=?"
            params: list[Any] = [name]
            if run is not None:
                sql += " AND u.run_id=?"
                params.append(run)
            return int(conn.execute(sql, params).fetchone()[0])
        finally:
            conn.close()

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        import sqlite3

        conn = sqlite3.connect(str(self.store / "catalog.db"), timeout=30)
        try:
            with conn:
                return conn.execute(query, params).fetchall()
        finally:
            conn.close()

    def copy(self, base: Path, name: str = "proj") -> "ReplayProject":
        """An independent copy of this project and its store (git repository included)."""
        new = object.__new__(ReplayProject)
        new.base = base
        new.root = base / name
        new.store = base / f"{name}-store"
        shutil.copytree(self.root, new.root, symlinks=True)
        shutil.copytree(self.store, new.store, symlinks=True)
        return new


# ----------------------------------------------------------------- comparing values


def values_by_context(df: Any, name: str, args: set[str], names: tuple[str, ...] = ()) -> dict[tuple[tuple[str, int], ...], Any]:
    """``{((loop, index), ...): value}`` for every row of ``df`` where ``name`` has a value.
    The loop columns are those that are not meta data, ``args`` or the queried ``names``."""
    if name not in df.columns:
        return {}
    loops = [c for c in df.columns if c not in META and c not in args and c != name and c not in names]
    out: dict[tuple[tuple[str, int], ...], Any] = {}
    for _, row in df.iterrows():
        value = row[name]
        if _missing(value):
            continue
        key = tuple((c, int(row[c])) for c in loops if not _missing(row[c]))
        assert key not in out, f"{name} has two values at {key}"
        out[key] = value
    return out


def _missing(value: Any) -> bool:
    """An empty cell (the tests never log NaN or None, so those mean 'no value here')."""
    if value is None:
        return True
    if isinstance(value, (np.ndarray, list, dict, str)):
        return False
    import pandas as pd

    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def ground_truths(base: Path, projects: list[dict[str, str]], names: list[str], tag: str = "truth",
                  env: dict[str, str] | None = None, also: list[tuple[ReplayProject, str]] = ()) -> list[dict[str, dict[Any, Any]]]:
    """Run each project (``{path: source}``, the script is train.py) fresh, in a new git project
    with its own store, two at a time; the values of ``names`` each logged.

    ``also``: recordings ``(project, script)`` of other projects to run alongside (their run ids
    are then in their stores)."""
    jobs: list[tuple[ReplayProject, str, bool]] = []
    for k, files in enumerate(projects):
        proj = ReplayProject(base, f"{tag}{k}")
        for rel, text in files.items():
            proj.write(rel, text)
        jobs.append((proj, "train.py", True))
    jobs.extend((proj, script, False) for proj, script in also)
    out: list[dict[str, dict[Any, Any]]] = []
    for k in range(0, len(jobs), 2):
        batch = [(proj, proj.start(script, env=env), is_truth) for proj, script, is_truth in jobs[k : k + 2]]
        for proj, proc, is_truth in batch:
            run = proj.finish(proc)
            if is_truth:
                # One name at a time: a column with gaps would turn ints into floats.
                out.append({n: proj.values(n, run) for n in names})
    return out


def ground_truth(base: Path, files: dict[str, str], names: list[str], tag: str = "truth",
                 env: dict[str, str] | None = None) -> dict[str, dict[Any, Any]]:
    """The values of ``names`` in a fresh run of ``files`` (see ``ground_truths``)."""
    return ground_truths(base, [files], names, tag=tag, env=env)[0]
