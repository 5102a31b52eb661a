"""Keeps what a replay writes inside its scratch copy of the project.

A replay runs the recorded code in a scratch copy whose data files and folders are symbolic
links to the project's own (``replay.prepare_scratch`` links them so that the script finds
its inputs without a copy). A write through such a link would change the user's files: a
hindsight ``savefig("plot.png")`` over an older file of that name, a log opened for appending,
a file made, renamed or removed in a linked folder, a NumPy memmap opened ``r+``.

``install`` adds an audit hook (PEP 578) to a replay worker. It sees each such call before it
happens and takes the links out of its way: a linked folder on the path becomes a real folder
of links to its entries, and a linked file about to be written becomes the scratch copy's own
(removed when the write truncates it, a copy when it keeps its content). The call then acts
on the scratch copy as it would have on the project. ``torch.save`` to a path writes from C++
and raises no audit event: its file is taken out of the links as the hook would, from a wrapper
put on once PyTorch is imported. Writes from other C code that bypasses Python's ``open`` (some
HDF5 or database libraries) are not seen.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Any

#: Open flags of a call that may change the file.
_WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

#: Audit events that change the file system, and which of their arguments are paths: for each,
#: (positions of paths whose folders must be the copy's own, positions of paths that are
#: themselves changed in place, positions of ``dir_fd`` arguments). ``os.replace`` is audited as
#: ``os.rename``. A path relative to a ``dir_fd`` is not followed.
_EVENTS: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {
    "os.remove": ((0,), (), (1,)),
    "os.rmdir": ((0,), (), (1,)),
    "os.mkdir": ((0,), (), (2,)),
    "os.rename": ((0, 1), (), (2, 3)),
    "os.symlink": ((1,), (), (2,)),
    "os.link": ((1,), (), (2, 3)),
    "os.truncate": ((0,), (0,), ()),
    "os.chmod": ((0,), (0,), (2,)),
    "os.chown": ((0,), (0,), (3,)),
    "os.utime": ((0,), (0,), (3,)),
    "sqlite3.connect": ((0,), (0,), ()),
}

#: In the copy's root: held while a worker changes the copy's links.
LOCK = ".hindlog-guard.lock"

_busy = threading.local()
#: The suffix of a folder or file made beside a link before it takes the link's place.
_STAGED = ".hindlog-staged-"
_renameat2: Any = None


#: Files of the copy (paths relative to its root) this process opened to write, and those it
#: opened to read that a worker of the replay had made or changed (not the recorded code, not a
#: linked input), each with the times (``time.time_ns``) of those opens: the workers share the
#: copy, and a segment that reads what another segment's worker wrote since its own last write
#: (a best model saved mid-run) did not read what the record did there.
WRITTEN: dict[str, list[int]] = {}
READ_MADE: dict[str, list[int]] = {}
#: Files outside the copy (absolute paths) this process opened to write: what the script writes
#: by absolute path (a results folder beside the project), which a replay cannot keep apart.
#: An existing one is first copied to the copy's ``OUTSIDE_BACKUPS`` folder, under its path.
WRITTEN_OUTSIDE: dict[str, bool] = {}
OUTSIDE_BACKUPS = ".hindlog-outside"
#: Not reported: caches and the interpreter's own files.
_OUTSIDE_IGNORED = tuple(os.path.join(p, "") for p in {
    sys.prefix, sys.base_prefix, os.path.expanduser("~/.cache"), os.path.expanduser("~/.config"),
    os.path.expanduser("~/.local"), os.path.expanduser("~/.triton"), os.path.expanduser("~/.nv"),
    "/dev", "/proc", "/sys", "/run"}) + (os.path.join(tempfile.gettempdir(), "torchinductor_"),)


def install(scratch: str, made_after_ns: int | None = None) -> None:
    """Keep this process's writes under ``scratch`` out of the links in it; ``made_after_ns``:
    when the replay's workers started (files changed since are theirs, for ``READ_MADE``)."""
    # The scratch path as given (the script's __file__ is under it) and as resolved (the
    # working directory is): a path under either is in the copy.
    roots = tuple(dict.fromkeys((os.path.abspath(scratch), os.path.realpath(scratch))))

    torch_pending = [True]

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if torch_pending[0] and "torch.serialization" in sys.modules:
            torch_pending[0] = not _watch_torch_saves(roots, made_after_ns)
        if event == "open":
            if len(args) < 3 or not isinstance(args[2], int):
                return
            if made_after_ns is not None:
                _note(roots, args[0], args[2] & _WRITING, made_after_ns)
            if not args[2] & _WRITING:
                return
            # A write that truncates the file needs none of the linked file's content.
            keep = not args[2] & os.O_TRUNC
            _guard(roots, args[0], keep_content=keep, changed=True)
            _note_outside(roots, args[0])
        elif event == "shutil.rmtree":
            _guard(roots, args[0], keep_content=False, changed=False, whole_tree=True)
        elif event in _EVENTS:
            folders, changed, dir_fds = _EVENTS[event]
            if any(k < len(args) and args[k] not in (None, -100) for k in dir_fds):
                return
            if event == "os.mkdir" and args and isinstance(args[0], (str, bytes, os.PathLike)) and os.path.lexists(args[0]):
                return  # (os.makedirs(..., exist_ok=True) of a folder there already changes nothing)
            for k in folders:
                if k < len(args):
                    _guard(roots, args[k], keep_content=True, changed=k in changed)

    sys.addaudithook(hook)
    if "torch.serialization" in sys.modules:
        torch_pending[0] = not _watch_torch_saves(roots, made_after_ns)


def _watch_torch_saves(roots: tuple[str, ...], made_after_ns: int | None) -> bool:
    """Wrap the function ``torch.save`` opens a file with (looked up at each call, so a
    ``from torch import save`` made earlier is covered too); False while PyTorch's import has
    not defined it yet."""
    serialization = sys.modules.get("torch.serialization")
    opener = getattr(serialization, "_open_zipfile_writer", None)
    if opener is None:
        return False
    if getattr(opener, "_hindlog_watched", False):
        return True

    def open_zipfile_writer(name_or_buffer: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(name_or_buffer, (str, bytes, os.PathLike)):
            if made_after_ns is not None:
                _note(roots, name_or_buffer, 1, made_after_ns)
            _guard(roots, name_or_buffer, keep_content=False, changed=True)
            _note_outside(roots, name_or_buffer)
        return opener(name_or_buffer, *args, **kwargs)

    open_zipfile_writer._hindlog_watched = True  # type: ignore[attr-defined]
    serialization._open_zipfile_writer = open_zipfile_writer  # type: ignore[union-attr]
    return True


def _note_outside(roots: tuple[str, ...], path: Any) -> None:
    """A write to a file outside the copy (``WRITTEN_OUTSIDE``): an existing one's content is
    copied first, so that the replay loses none of it (another run's results, by path)."""
    if getattr(_busy, "active", False) or isinstance(path, int) or path is None:
        return
    _busy.active = True
    try:
        full = os.path.abspath(os.fsdecode(os.fspath(path)))
        if full in WRITTEN_OUTSIDE or any(full.startswith(r + os.sep) for r in roots) \
                or full.startswith(_OUTSIDE_IGNORED) or full.endswith(".pyc") or os.sep + "__pycache__" + os.sep in full:
            return
        store = os.environ.get("HINDLOG_DIR")
        if store and full.startswith(os.path.join(os.path.abspath(store), "")):
            return
        backed_up = False
        if os.path.isfile(full):
            backup = os.path.join(roots[0], OUTSIDE_BACKUPS, full.lstrip(os.sep))
            if not os.path.exists(backup):
                os.makedirs(os.path.dirname(backup), exist_ok=True)
                shutil.copy2(full, backup)
            backed_up = True
        WRITTEN_OUTSIDE[full] = backed_up
    except Exception:  # noqa: BLE001 - the script's own call goes on as it would
        pass
    finally:
        _busy.active = False


def _note(roots: tuple[str, ...], path: Any, writing: int, made_after_ns: int) -> None:
    if getattr(_busy, "active", False) or isinstance(path, int) or path is None:
        return
    try:
        full = os.path.abspath(os.fsdecode(os.fspath(path)))
        root = next((r for r in roots if full.startswith(r + os.sep)), None)
        if root is None:
            return
        rel = full[len(root) + 1:]
        if rel.startswith(".hindlog-"):
            return  # (the workers' own specs, logs and results)
        if writing:
            WRITTEN.setdefault(rel, []).append(time.time_ns())
        elif not os.path.islink(full):
            st = os.stat(full)
            if st.st_mtime_ns >= made_after_ns:
                READ_MADE.setdefault(rel, []).append(time.time_ns())
    except (OSError, ValueError, TypeError):
        pass


def _guard(roots: tuple[str, ...], path: Any, keep_content: bool, changed: bool, whole_tree: bool = False) -> None:
    if getattr(_busy, "active", False) or isinstance(path, int) or path is None:
        return
    _busy.active = True  # the copies below open files themselves
    try:
        path = os.fsdecode(os.fspath(path))
        full = os.path.abspath(path)
        root = next((r for r in roots if full.startswith(r + os.sep)), None)
        if root is None or not _linked_on_the_way(root, full, changed or whole_tree):
            return
        # The replay's workers share the copy: one at a time changes its links.
        with open(os.path.join(root, LOCK), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not _own_folders(root, full):
                return
            if whole_tree:
                _unfold_tree(full)
            elif changed and os.path.islink(full):
                _own_file(full, keep_content)
    except Exception:  # noqa: BLE001 - the script's own call goes on and fails or not as it would
        pass
    finally:
        _busy.active = False


def _linked_on_the_way(root: str, full: str, itself: bool) -> bool:
    """Whether a folder on the way from ``root`` to ``full`` (or ``full`` itself) is a link."""
    current = root
    parts = os.path.relpath(full, root).split(os.sep)
    for part in parts if itself else parts[:-1]:
        current = os.path.join(current, part)
        if os.path.islink(current):
            return True
    return False


def _own_folders(root: str, full: str) -> bool:
    """Make each folder on the way from ``root`` to ``full`` a real folder of the copy.
    False when the way does not lead through folders (the call then fails as it would)."""
    current = root
    for part in os.path.relpath(full, root).split(os.sep)[:-1]:
        current = os.path.join(current, part)
        if os.path.islink(current):
            if not os.path.isdir(current):
                return False
            _unfold(current)
        elif not os.path.isdir(current):
            return False
    return True


def _unfold(link: str) -> None:
    """A link to a folder becomes a folder of links to that folder's entries. The folder is
    made beside it and exchanged with the link in one step: another worker reading a file in
    it meanwhile finds it, through the link or through the folder."""
    target = os.path.realpath(link)
    staged = f"{link}{_STAGED}{os.getpid()}"
    os.mkdir(staged)
    for name in os.listdir(target):
        os.symlink(os.path.join(target, name), os.path.join(staged, name))
    if _exchange(staged, link):
        os.unlink(staged)  # (the link, now)
    else:
        os.unlink(link)
        os.rename(staged, link)


def _exchange(a: str, b: str) -> bool:
    """Swap two paths at once (Linux's ``renameat2(RENAME_EXCHANGE)``); False where that is
    not available."""
    global _renameat2
    if _renameat2 is None:
        try:
            import ctypes

            _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
        except (OSError, AttributeError):
            _renameat2 = False
    if _renameat2 is False:
        return False
    at_cwd, exchange = -100, 2
    return _renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), exchange) == 0


def _unfold_tree(full: str) -> None:
    """Every linked folder at or under ``full`` unfolded: removing it removes links only."""
    if os.path.islink(full):
        if not os.path.isdir(full):
            return
        _unfold(full)
    if not os.path.isdir(full):
        return
    for name in os.listdir(full):
        child = os.path.join(full, name)
        if os.path.islink(child) and os.path.isdir(child):
            _unfold_tree(child)


def _own_file(link: str, keep_content: bool) -> None:
    """A link to a file becomes the copy's own file: a copy of it, or an empty file when the
    write about to happen truncates it; put in the link's place in one step."""
    target = os.path.realpath(link)
    if os.path.isdir(target):
        return
    staged = f"{link}{_STAGED}{os.getpid()}"
    if keep_content and os.path.exists(target):
        shutil.copy2(target, staged)
    else:
        open(staged, "wb").close()
    os.replace(staged, link)
