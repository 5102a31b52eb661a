"""Where a project's store lives and what it holds.

``.hindlog/`` sits at the project root (the git top level, else the current
directory; ``HINDLOG_DIR`` overrides) and holds the SQLite catalog
(``catalog.db``), the object store (``objects/``), spill files of records
that could not be written to the catalog (``spill/``) and the lock files of
work that must not run twice at once (``locks/``).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from functools import cached_property
from pathlib import Path

from . import catalog, config
from .errors import DamagedCatalog, StoreError
from .objects import ObjectStore


#: The file that marks a scratch directory (``Store.scratch_dir``) with its store and lock.
SCRATCH_MARK = ".hindlog-scratch.json"


def mark_scratch_kept(path: Path) -> None:
    """Mark a scratch directory as kept for the user to read: ``hindlog gc`` leaves it for its
    grace period after it was handed over, not only while its process runs."""
    mark = path / SCRATCH_MARK
    try:
        facts = json.loads(mark.read_text())
        facts["kept"] = True
        mark.write_text(json.dumps(facts))
    except (OSError, ValueError):
        pass


def git_toplevel(start: Path) -> Path | None:
    """The git work tree containing ``start``, or None."""
    if not any(k in os.environ for k in ("GIT_DIR", "GIT_WORK_TREE", "GIT_CEILING_DIRECTORIES", "GIT_DISCOVERY_ACROSS_FILESYSTEM")):
        # What git itself would find, without starting it: the nearest directory holding a
        # ``.git`` (a directory, or a file for a worktree or submodule). Starting git here cost
        # every run 10-20 ms of its start, charged to the overhead budget.
        for folder in (start, *start.parents):
            git = folder / ".git"
            if git.is_dir() and (git / "HEAD").is_file() or git.is_file():
                return folder
        return None
    import subprocess

    from .processes import run_captured

    try:
        out = run_captured(["git", "-C", str(start), "rev-parse", "--show-toplevel"], timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return Path(os.fsdecode(out.stdout.strip()))


def project_root(start: Path | None = None, script: str | os.PathLike[str] | None = None) -> Path:
    """The project root for ``start`` (default: the current directory): the git work tree that
    holds it, or ``start`` itself outside git. A ``script`` outside that project belongs to its
    own: the git work tree that holds it, or its folder outside git (``python ../other/train.py``
    recorded the other project's run, with this one's code, into this one's store). Outside git,
    a script in a git work tree below ``start`` belongs to that work tree (``python proj/train.py``
    from a home directory: the home directory is no project)."""
    override = config.project_root_override()
    if override:
        return Path(override).resolve()
    start = Path(start or os.getcwd()).resolve()
    root = git_toplevel(start)
    if script is not None:
        # Where the script is, not where a symbolic link to it points.
        path = Path(os.path.abspath(script))
        base = root or start
        if path.is_file() and not (path.is_relative_to(base) or path.resolve().is_relative_to(base)):
            # (A script inside the project, a git submodule's included, is the project's.)
            own = git_toplevel(path.parent)
            return own.resolve() if own is not None else path.parent.resolve()
        if root is None and path.is_file():
            own = git_toplevel(path.parent)
            if own is not None:
                return own.resolve()
    return root or start


class Lock:
    """An exclusive lock on a file under ``.hindlog/locks``, taken without waiting. The kernel
    releases it when its process ends, ``kill -9`` included: a crash never leaves it stuck."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; False (and nothing held) if another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        for attempt in range(5):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == 4:
                    os.close(fd)
                    return False
                time.sleep(0.02)  # ``held`` probes take the lock shared for an instant: not a holder
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return True

    def held(self) -> bool:
        """Whether a process holds the lock now (probed without taking it from anyone)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def holder(self) -> int | None:
        """The process id the holder wrote, if it can be read."""
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


class Store:
    """A project's ``.hindlog`` directory."""

    def __init__(self, path: Path, root: Path | None = None) -> None:
        self.path = Path(path).resolve()
        #: The project root this store belongs to (where code is snapshotted from).
        self.root = Path(root).resolve() if root else self.path.parent

    @classmethod
    def for_project(cls, start: Path | None = None, store: str | os.PathLike[str] | None = None,
                    script: str | os.PathLike[str] | None = None) -> "Store":
        """The store of the project containing ``start`` (or ``script``: ``project_root``),
        honouring ``HINDLOG_DIR``."""
        root = project_root(start, script)
        explicit = store or config.store_dir_override()
        if explicit:
            return cls(Path(explicit), root)
        return cls(root / ".hindlog", root)

    def ensure(self) -> None:
        """Create the directory, with a .gitignore so that git never tracks it."""
        self.path.mkdir(parents=True, exist_ok=True)
        ignore = self.path / ".gitignore"
        if not ignore.exists():
            ignore.write_text("*\n")

    @property
    def catalog_path(self) -> Path:
        return self.path / "catalog.db"

    @property
    def spill_dir(self) -> Path:
        return self.path / "spill"

    @cached_property
    def objects(self) -> ObjectStore:
        return ObjectStore(self.path / "objects")

    def connect(self, timeout: float = 60.0) -> sqlite3.Connection:
        """A new connection to the catalog (created if needed); ``timeout``: how long a write
        waits for another process's lock."""
        self.ensure()
        return catalog.connect(self.catalog_path, timeout)

    def set_aside_damaged_catalog(self, timeout: float = 60.0) -> Path | None:
        """Rename a damaged catalog, with its write-ahead log and shared-memory files, to
        ``catalog.damaged-<time>.db`` beside it, so that recording can start a new one; the
        damaged file keeps every byte for recovery. None if the catalog at hand is not damaged
        (another process that found it damaged set it aside first)."""
        path = self.catalog_path
        lock = self.lock("catalog-repair")
        deadline = time.monotonic() + timeout
        while not lock.acquire():  # processes that found it damaged at once take turns: one renames it
            if time.monotonic() > deadline:
                raise StoreError(f"another process has held {lock.path} for {timeout:.0f} s; the damaged catalog {path} stays")
            time.sleep(0.01)
        try:
            if catalog.intact(path):
                return None
            stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
            target = path.with_name(f"{catalog.DAMAGED_PREFIX}{stamp}.db")
            n = 1
            while target.exists():
                n += 1
                target = path.with_name(f"{catalog.DAMAGED_PREFIX}{stamp}-{n}.db")
            # The log and shared memory first: the catalog's name must not meet another's log.
            for suffix in ("-wal", "-shm"):
                if Path(f"{path}{suffix}").exists():
                    os.replace(f"{path}{suffix}", f"{target}{suffix}")
            os.replace(path, target)
            return target
        finally:
            lock.release()

    def script_key(self, script: str) -> str:
        """A script's path as runs record it: relative to the project root (absolute outside it),
        whether given from the current directory or absolute."""
        path = Path(script)
        if not path.is_absolute():
            path = (Path.cwd() / path).resolve()
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def damaged_catalogs(self) -> list[Path]:
        """Damaged catalogs set aside in this store, oldest first."""
        return sorted(self.path.glob(f"{catalog.DAMAGED_PREFIX}*.db")) if self.path.is_dir() else []

    def lock(self, name: str) -> Lock:
        """The lock ``name`` of this store (not taken yet)."""
        return Lock(self.path / "locks" / f"{name}.lock")

    def held_locks(self) -> dict[str, float]:
        """The locks some process holds now, by name, with when they were taken."""
        held = {}
        for path in sorted((self.path / "locks").glob("*.lock")):
            lock = Lock(path)
            try:
                if lock.held():
                    held[path.stem] = path.stat().st_mtime
            except OSError:
                continue
        return held

    def scratch_dir(self, lock: str) -> Path:
        """A new scratch directory in the system's temporary directory, for the process that
        holds lock ``lock`` (``replay-RUN``) to copy the recorded code into. It is marked with
        this store and the lock: a replay killed with ``kill -9`` cannot remove its own, so the
        next process to hold the lock (``remove_dead_scratch``), or ``hindlog gc`` once no
        process holds it, does."""
        import tempfile

        path = Path(tempfile.mkdtemp(prefix=f"hindlog-{lock}-"))
        (path / SCRATCH_MARK).write_text(json.dumps({"store": str(self.path.resolve()), "lock": lock, "kept": False}))
        return path

    def remove_dead_scratch(self, lock: str) -> int:
        """Remove the scratch directories an earlier process holding ``lock`` left (it was killed
        with ``kill -9``), except one kept for the user to read. Only for the process that holds
        ``lock`` now: no other process can be using them. Returns how many were removed."""
        import shutil

        removed = 0
        for path, held_by, kept, _marked in self.scratch_dirs():
            if held_by == lock and not kept:
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
        return removed

    def scratch_dirs(self) -> list[tuple[Path, str, bool, float]]:
        """This store's scratch directories: path, lock, whether they were kept for the user to
        read (a failed replay's logs), and when they were marked so."""
        import tempfile

        out = []
        me = str(self.path.resolve())
        try:
            entries = list(Path(tempfile.gettempdir()).glob("hindlog-*-*"))
        except OSError:
            return out
        for path in entries:
            mark = path / SCRATCH_MARK
            try:
                facts = json.loads(mark.read_text())
                if facts.get("store") == me:
                    out.append((path, str(facts["lock"]), bool(facts.get("kept")), mark.stat().st_mtime))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue
        return out

    def exists(self) -> bool:
        return self.catalog_path.exists()
