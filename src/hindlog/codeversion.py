"""Code versions: snapshot the project's code at run start, and get it back.

In a git work tree the working tree (tracked files plus untracked files that
are not ignored) becomes a commit under ``refs/hindlog/runs/<run-id>``, built
with a temporary index so the user's HEAD, branch, index and working tree are
never touched. A clean working tree is HEAD's commit itself; otherwise the
commit is made from the tree and HEAD alone, so the same code is the same
version in every run. Outside git the project's source files are stored in the object
store under a manifest, and the version is ``snap-<hash>``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from . import catalog, config, objects
from .errors import CodeVersionError, CorruptObject
from .store import Store

# shutil, subprocess and tempfile are imported where git is used: outside a git work tree a
# run never needs them, and importing them cost its start a few milliseconds.

_GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "hindlog",
    "GIT_AUTHOR_EMAIL": "hindlog@localhost",
    "GIT_COMMITTER_NAME": "hindlog",
    "GIT_COMMITTER_EMAIL": "hindlog@localhost",
}
SOURCE_SUFFIXES = {".py", ".pyi", ".yaml", ".yml", ".json", ".toml", ".cfg", ".ini", ".txt", ".sh", ".md"}
_SKIP_DIRS = {".git", ".hindlog", ".venv", "venv", "env", "__pycache__", "node_modules", "site-packages", ".tox", ".mypy_cache", ".pytest_cache", "build", "dist"}
MAX_SNAPSHOT_FILES = 5000


@dataclass
class CodeVersion:
    """The code a run was made with."""

    version: str  # commit sha or 'snap-<hash>'
    kind: str  # 'git' or 'snapshot'
    skipped: list[str]  # files left out (too large), for the user to know
    #: The commit HEAD named when the working tree had uncommitted changes (``version`` is then a
    #: snapshot commit on top of it); None for a clean tree or outside git.
    base: str | None = None
    #: Outside git: the snapshot stopped at ``MAX_SNAPSHOT_FILES`` source files (the run started
    #: in a large folder that is not one project, such as a home directory).
    truncated: bool = False


def _git(root: Path, *args: str, env: dict[str, str] | None = None, input: bytes | None = None) -> bytes:
    import subprocess

    from .processes import run_captured

    full_env = {**os.environ, **_GIT_IDENTITY, **(env or {})}
    try:
        out = run_captured(["git", "-C", str(root), *args], env=full_env, input=input, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        raise CodeVersionError(f"git {' '.join(args)} could not run: {e}") from None
    if out.returncode != 0:
        raise CodeVersionError(f"git {' '.join(args)} failed: {out.stderr.decode(errors='replace').strip()}")
    return out.stdout


def is_git_repo(root: Path) -> bool:
    return (root / ".git").exists()


def snapshot(store: Store, run_id: str) -> CodeVersion:
    """Snapshot the code of ``store.root`` for run ``run_id``."""
    root = store.root
    if is_git_repo(root):
        import shutil

        if shutil.which("git"):
            return _snapshot_git(root, run_id)
    return _snapshot_files(store)


def _snapshot_git(root: Path, run_id: str) -> CodeVersion:
    # Each git process costs a few milliseconds of CPU that a short run's overhead budget
    # pays for: the snapshot asks for what it needs in as few of them as it can.
    tree, skipped = working_tree(root)
    head = _git_head(root)
    if head and head[1] == tree:
        commit = head[0]  # a clean working tree: the run's code is the user's own commit
    else:
        # The commit depends on the tree and HEAD only (not on the run or the time), so runs of
        # the same code show the same version.
        parents = ["-p", head[0]] if head else []
        date = head[2] if head else "1970-01-01T00:00:00+00:00"
        commit = _git(
            root, "commit-tree", tree, *parents, "-m", "hindlog: snapshot of the working tree",
            env={"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date},
        ).decode().strip()
    _git(root, "update-ref", f"refs/hindlog/runs/{run_id}", commit)
    return CodeVersion(commit, "git", skipped, head[0] if head and commit != head[0] else None)


def working_tree(root: Path) -> tuple[str, list[str]]:
    """Write the working tree (tracked + untracked-not-ignored files) as a git tree, with a
    temporary index so that the user's index is untouched. Returns the tree and the files
    left out for their size."""
    import shutil
    import tempfile

    dot_git = root / ".git"
    git_dir = dot_git if dot_git.is_dir() else Path(_git(root, "rev-parse", "--absolute-git-dir").decode().strip())
    untracked = _git(root, "ls-files", "-z", "--others", "--exclude-standard").split(b"\0")
    skipped = []
    for raw in untracked:
        if not raw:
            continue
        rel = os.fsdecode(raw)
        try:
            if (root / rel).stat().st_size > config.MAX_SNAPSHOT_FILE_BYTES:
                skipped.append(rel)
        except OSError:
            continue
    _sweep_stale_indexes(git_dir)
    # Beside the real index rather than in the temp directory: a run killed meanwhile leaves
    # its index where the next snapshot of this repository removes it.
    fd, index = tempfile.mkstemp(prefix=_TEMP_INDEX_PREFIX, dir=git_dir)
    os.close(fd)
    try:
        env = {"GIT_INDEX_FILE": index}
        real_index = git_dir / "index"
        # Starting from a copy of the user's index lets git reuse its stat cache.
        if real_index.exists():
            shutil.copyfile(real_index, index)
        else:
            os.unlink(index)
        # Literal pathspecs: a file named ':x' or '[ab].py' is a file, not pathspec magic or a glob.
        pathspecs = [b"."] + [b":(exclude,literal)" + os.fsencode(rel) for rel in skipped]
        _git(root, "add", "-A", "--pathspec-from-file=-", "--pathspec-file-nul", env=env, input=b"\0".join(pathspecs))
        return _git(root, "write-tree", env=env).decode().strip(), skipped
    finally:
        for path in (index, index + ".lock"):
            try:
                os.unlink(path)
            except OSError:
                pass


_TEMP_INDEX_PREFIX = "hindlog-index-"
#: A temporary index older than this belongs to a snapshot whose process died (one takes seconds).
_STALE_INDEX_SECONDS = 3600.0


def _sweep_stale_indexes(git_dir: Path) -> None:
    cutoff = time.time() - _STALE_INDEX_SECONDS
    for path in git_dir.glob(_TEMP_INDEX_PREFIX + "*"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
        except OSError:
            pass  # another snapshot removed it first


def _git_head(root: Path) -> tuple[str, str, str] | None:
    """HEAD's commit, tree and commit date, or None in a repository with no commit yet."""
    try:
        out = _git(root, "log", "-1", "--no-show-signature", "--format=%H%x00%T%x00%cI", "HEAD", "--").decode().strip()
    except CodeVersionError:
        return None
    commit, tree, date = out.split("\0")
    return commit, tree, date


def _snapshot_files(store: Store) -> CodeVersion:
    root = store.root
    files: dict[str, str] = {}
    skipped: list[str] = []
    new_files: list[str] = []  # paths in the object store
    truncated = False
    for dirpath, dirnames, filenames in os.walk(root):
        if truncated:
            break
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for fname in sorted(filenames):
            path = Path(dirpath) / fname
            if path.suffix not in SOURCE_SUFFIXES:
                continue
            rel = path.relative_to(root).as_posix()
            try:
                if path.stat().st_size > config.MAX_SNAPSHOT_FILE_BYTES:
                    skipped.append(rel)
                    continue
                data = path.read_bytes()
            except OSError:
                continue
            files[rel] = name = objects.digest(data)
            if not store.objects.have(name, len(data)):
                store.objects.write([data], name, durable=False)
                new_files.append(store.objects.filename(name))
            if len(files) >= MAX_SNAPSHOT_FILES:
                truncated = True
                break
    # Flushed together before the manifest that names them (a file stored by an earlier
    # snapshot was flushed then).
    objects.fsync_together(new_files)
    manifest = json.dumps(files, sort_keys=True).encode()
    manifest_name = store.objects.put(manifest)
    version = "snap-" + manifest_name[:16]
    conn = store.connect()
    try:
        catalog.insert_code_snapshot(conn, version, manifest_name)
    finally:
        conn.close()
    return CodeVersion(version, "snapshot", skipped, truncated=truncated)


def read_files(store: Store, version: str) -> dict[str, bytes]:
    """Every file of a code version, by path relative to the project root."""
    if version.startswith("snap-"):
        conn = store.connect()
        try:
            manifest = catalog.code_snapshot_manifest(conn, version)
        finally:
            conn.close()
        if manifest is None:
            raise CodeVersionError(f"code snapshot {version} is not in this store")
        try:
            files = json.loads(store.objects.get(manifest))
            return {path: store.objects.get(name) for path, name in files.items()}
        except CorruptObject as e:
            raise CodeVersionError(
                f"the code of {version} cannot be read ({e}): the store's objects were damaged or removed by hand. "
                "Runs of that code cannot be replayed or resumed; their logs and the runs of other code are "
                "unaffected") from None
    out: dict[str, bytes] = {}
    listing = _git(store.root, "ls-tree", "-r", "-z", "--full-tree", version).split(b"\0")
    for entry in listing:
        if not entry:
            continue
        meta, path = entry.split(b"\t", 1)
        mode, kind, sha = meta.split()
        if kind == b"blob":
            out[os.fsdecode(path)] = _git(store.root, "cat-file", "blob", sha.decode())
    return out


def read_file(store: Store, version: str, path: str) -> bytes | None:
    """One file of a code version, or None if it is not in it."""
    if version.startswith("snap-"):
        return read_files(store, version).get(path)
    try:
        return _git(store.root, "show", f"{version}:{path}")
    except CodeVersionError:
        return None


def materialize(store: Store, version: str, dest: Path) -> Path:
    """Write a code version's files under ``dest`` and return it."""
    dest.mkdir(parents=True, exist_ok=True)
    if not version.startswith("snap-"):
        archive = _git(store.root, "archive", "--format=tar", version)
        import io
        import tarfile

        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(dest, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(dest)
        return dest
    for path, data in read_files(store, version).items():
        target = dest / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return dest


def diff(store: Store, old: str, new: str | None) -> str:
    """Unified diff from code version ``old`` to ``new`` (None: the working tree)."""
    if not old.startswith("snap-") and (new is None or not new.startswith("snap-")):
        target = working_tree(store.root)[0] if new is None else new
        return _git(store.root, "diff", old, target).decode(errors="replace")
    import difflib

    before = read_files(store, old)
    if new is None:
        after = {}
        for rel in before.keys() | _working_files(store.root):
            p = store.root / rel
            if p.is_file():
                after[rel] = p.read_bytes()
    else:
        after = read_files(store, new)
    chunks = []
    for rel in sorted(before.keys() | after.keys()):
        a = before.get(rel, b"").decode(errors="replace").splitlines(keepends=True)
        b = after.get(rel, b"").decode(errors="replace").splitlines(keepends=True)
        if a != b:
            chunks.extend(difflib.unified_diff(a, b, f"a/{rel}", f"b/{rel}"))
    return "".join(chunks)


def changed_files(store: Store, version: str, suffixes: frozenset[str] = frozenset({".py"})) -> list[str]:
    """The files of the working tree with these suffixes that differ from code version
    ``version`` (changed, added or removed; files git ignores are not the code), sorted."""
    if not version.startswith("snap-"):
        current = working_tree(store.root)[0]
        names = _git(store.root, "diff", "--name-only", "-z", version, current).split(b"\0")
        return sorted(n for n in map(os.fsdecode, names) if n and Path(n).suffix in suffixes)
    before = {rel: data for rel, data in read_files(store, version).items() if Path(rel).suffix in suffixes}
    out = []
    for rel in sorted(before.keys() | {rel for rel in _working_files(store.root) if Path(rel).suffix in suffixes}):
        p = store.root / rel
        now = p.read_bytes() if p.is_file() else None
        if now != before.get(rel):
            out.append(rel)
    return out


def _working_files(root: Path) -> set[str]:
    """The project's source files as its code snapshot takes them: in a git repository the
    tracked and untracked ones, less those git ignores; elsewhere every one under ``root``
    outside hidden and virtual-environment folders."""
    if (root / ".git").exists():
        try:
            listed = _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split(b"\0")
        except Exception:  # noqa: BLE001 - git unusable here: every file, as outside git
            pass
        else:
            return {rel for rel in map(os.fsdecode, listed)
                    if rel and Path(rel).suffix in SOURCE_SUFFIXES and (root / rel).is_file()}
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.startswith(".")]
        for fname in filenames:
            if Path(fname).suffix in SOURCE_SUFFIXES:
                out.add((Path(dirpath) / fname).relative_to(root).as_posix())
    return out
