"""Shared fixtures: throw-away projects (a real git repository, or a plain directory)
and helpers that run small scripts in real subprocesses with the venv's Python.

The recorder is process-global and finishes at exit, so most tests write a script
into the project and run it with ``sys.executable``; the test process only reads
the resulting store (real SQLite) through the public API or plain ``sqlite3``.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from isolation import GIT_IDENTITY, dedent  # noqa: F401 (re-exported to the tests)

PY = sys.executable
#: The console script installed next to the interpreter (``hindlog = hindlog.cli:main``).
HINDLOG_SCRIPT = Path(sys.executable).with_name("hindlog")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Byte-compile hindlog's modules once, as installing a package does. The tests' processes
    run with PYTHONDONTWRITEBYTECODE=1 (no __pycache__ in the projects they snapshot), so
    without this each of the suite's hundreds of subprocesses would compile hindlog from
    source (about 0.1 s each). Python reads existing bytecode whatever that variable says."""
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("hindlog")
    if spec is not None and spec.origin:
        compileall.compile_dir(str(Path(spec.origin).parent), quiet=1)



class Project:
    """A project directory with helpers to run scripts in it and read its store."""

    def __init__(self, root: Path, is_git: bool) -> None:
        self.root = root
        self.is_git = is_git

    # ------------------------------------------------------------ files

    def write(self, rel: str, text: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dedent(text))
        return path

    # ------------------------------------------------------------ processes

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(extra or {})
        return env

    def run(
        self,
        text: str | None = None,
        script: str = "train.py",
        args: tuple[str, ...] | list[str] = (),
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = 60,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Write ``text`` to ``script`` (if given) and run it to completion."""
        if text is not None:
            self.write(script, text)
        proc = subprocess.run(
            [PY, str(self.root / script), *args],
            cwd=cwd or self.root,
            env=self.env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            pytest.fail(
                f"{script} exited with {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
            )
        return proc

    def start(
        self,
        text: str | None = None,
        script: str = "train.py",
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        args: tuple[str, ...] | list[str] = (),
    ) -> subprocess.Popen[str]:
        """Start ``script`` in the background; stdout and stderr are pipes."""
        if text is not None:
            self.write(script, text)
        return subprocess.Popen(
            [PY, str(self.root / script), *args],
            cwd=cwd or self.root,
            env=self.env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def cli(self, *args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run the ``hindlog`` console script in the project."""
        proc = subprocess.run(
            [str(HINDLOG_SCRIPT), *args],
            cwd=self.root,
            env=self.env(env),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and proc.returncode != 0:
            pytest.fail(f"hindlog {' '.join(args)} exited with {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def git(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(["git", *args], cwd=self.root, capture_output=True, timeout=60)
        if check and proc.returncode != 0:
            pytest.fail(f"git {' '.join(args)} failed: {proc.stderr.decode(errors='replace')}")
        return proc.stdout.decode(errors="surrogateescape")

    def git_bytes(self, *args: str) -> bytes:
        return subprocess.run(["git", *args], cwd=self.root, capture_output=True, timeout=60, check=True).stdout

    # ------------------------------------------------------------ the store

    @property
    def store_path(self) -> Path:
        return self.root / ".hindlog"

    @property
    def catalog_path(self) -> Path:
        return self.store_path / "catalog.db"

    def store(self) -> Any:
        from hindlog.store import Store

        return Store(self.store_path, self.root)

    def db(self) -> sqlite3.Connection:
        """A plain sqlite3 connection to the catalog (the caller closes it)."""
        assert self.catalog_path.exists(), "no catalog was created"
        return sqlite3.connect(str(self.catalog_path), timeout=30)

    def runs(self) -> Any:
        import hindlog as hl

        return hl.runs(store=self.store_path)

    def df(self, *names: str, runs: Any = None) -> Any:
        import hindlog as hl

        return hl.dataframe(*names, runs=runs, store=self.store_path)

    def run_info(self, ref: str = "latest") -> dict[str, Any]:
        from hindlog import query

        return query.run_info(ref, store=self.store_path)

    def values(self, name: str, run: str | None = None) -> list[Any]:
        """Every recorded value of ``name``, in log order (straight from SQLite)."""
        from hindlog.values import decode

        conn = self.db()
        try:
            sql = (
                "SELECT r.kind, r.value FROM records r JOIN names n ON n.id = r.name "
                "JOIN runs u ON u.id = r.run WHERE n.name = ?"
            )
            params: list[Any] = [name]
            if run is not None:
                sql += " AND u.run_id = ?"
                params.append(run)
            rows = conn.execute(sql + " ORDER BY r.rowid", params).fetchall()
        finally:
            conn.close()
        return [decode(k, v) for k, v in rows]


def _git_init(root: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, timeout=60)

    git("init", "-q")
    git("symbolic-ref", "HEAD", "refs/heads/main")
    git("add", "-A")
    git("commit", "-q", "-m", "initial commit")


def apply_clean_env(mp: pytest.MonkeyPatch, ceiling: Path) -> None:
    """No HINDLOG_* setting or git configuration of the machine leaks into a test."""
    for key in list(os.environ):
        if key.startswith("HINDLOG_"):
            mp.delenv(key)
    for key, value in GIT_IDENTITY.items():
        mp.setenv(key, value)
    mp.setenv("GIT_CONFIG_NOSYSTEM", "1")
    mp.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    # Never find a repository above the test's own directory.
    mp.setenv("GIT_CEILING_DIRECTORIES", str(ceiling))
    mp.setenv("PYTHONDONTWRITEBYTECODE", "1")
    mp.setenv("PYTHONUNBUFFERED", "1")


def new_git_project(root: Path) -> Project:
    """A git repository with an initial commit (a tracked README and .gitignore)."""
    root.mkdir(parents=True)
    (root / "README.md").write_text("# a project\n")
    (root / ".gitignore").write_text("*.ignored\nignored_dir/\n")
    _git_init(root)
    return Project(root, is_git=True)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    apply_clean_env(monkeypatch, tmp_path)


@pytest.fixture
def project(tmp_path: Path, clean_env: None) -> Project:
    """A git repository with an initial commit, in a fresh temporary directory."""
    return new_git_project(tmp_path / "proj")


@pytest.fixture
def plain_project(tmp_path: Path, clean_env: None) -> Project:
    """A project directory that is not in any git repository."""
    root = tmp_path / "plain"
    root.mkdir()
    return Project(root, is_git=False)


def recorded_project(tmp_path_factory: pytest.TempPathFactory, name: str, record: Any) -> Any:
    """For module-scoped fixtures: a fresh git project set up by ``record(project)`` under a clean
    environment. Tests must only read it (and request ``clean_env`` if they run anything)."""
    base = tmp_path_factory.mktemp(name)
    with pytest.MonkeyPatch.context() as mp:
        apply_clean_env(mp, base)
        project = new_git_project(base / "proj")
        return record(project)


@pytest.fixture
def inproc(project: Project, monkeypatch: pytest.MonkeyPatch):
    """Record in this process, in ``project``; finishes the run and resets hindlog afterwards."""
    import hindlog as hl
    from hindlog import record

    monkeypatch.chdir(project.root)
    hook = sys.excepthook
    sigterm = signal.getsignal(signal.SIGTERM)
    record._recorder = None
    record._broken = False
    try:
        yield project
    finally:
        hl.finish()
        record._recorder = None
        record._broken = False
        sys.excepthook = hook
        signal.signal(signal.SIGTERM, sigterm)


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; return it (or fail)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(interval)


class Lines:
    """Reads a background process's stdout line by line (a thread fills a queue)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        import queue
        import threading

        self.proc = proc
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                self.queue.put(line.rstrip("\n"))
        except (OSError, ValueError):  # the pipe was closed under us by stop()
            pass
        self.queue.put(None)

    def next(self, timeout: float = 30.0) -> str:
        import queue

        try:
            line = self.queue.get(timeout=timeout)
        except queue.Empty:
            self.proc.kill()
            pytest.fail(f"no output within {timeout} s; stderr:\n{self.proc.stderr.read() if self.proc.stderr else ''}")
        if line is None:
            self.proc.wait(timeout=30)
            err = self.proc.stderr.read() if self.proc.stderr else ""
            pytest.fail(f"process exited with {self.proc.returncode} before printing a line\n{err}")
        return line

    def rest(self, timeout: float = 60.0) -> tuple[str, str]:
        """Wait for the process to end; its remaining stdout and its stderr (small: a pipe's buffer)."""
        self.proc.wait(timeout=timeout)
        err = self.proc.stderr.read() if self.proc.stderr else ""
        self.thread.join(timeout)
        lines = []
        while not self.queue.empty():
            line = self.queue.get()
            if line is not None:
                lines.append(line)
        return "\n".join(lines), err


def stop(proc: subprocess.Popen[str]) -> None:
    """Kill a background script we started (by its own pid), and reap it."""
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(timeout=30)
    finally:
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass


@pytest.fixture
def flushed_paths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths this process calls ``os.fsync`` on, in order (read from /proc; skips elsewhere)."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("reads the names of open files from /proc")
    flushed: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return flushed
