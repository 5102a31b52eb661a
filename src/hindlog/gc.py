"""``hindlog gc``: remove stored objects no checkpoint or code snapshot refers to.

gc may run while runs record, replay or resume in the same store. What they write or reuse
is not referenced by a committed checkpoint until their persister commits it, so gc keeps
every object used since the earliest of them started (writing or finding an object in the
store marks it used), whatever the grace period, and never drops the checkpoints of a run
that records, replays or resumes.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from . import catalog
from .errors import CorruptObject, HindlogError
from .objects import TEMPORARY_PREFIX
from .store import Store

#: Objects younger than this are kept: a running process may be writing a checkpoint.
GRACE_SECONDS = 3600.0
#: Objects used up to this long before the earliest active process started are kept too
#: (clocks of file times and of the catalog may differ a little).
SINCE_MARGIN_SECONDS = 60.0


class BadKeepLast(HindlogError, ValueError):
    """``keep_last`` is negative (a ValueError for the API, a clean message from the CLI)."""


@dataclass
class GcReport:
    removed_objects: int
    freed_bytes: int
    dropped_checkpoints: int
    kept_runs: int | None
    #: Partly written objects a killed process left (counted in ``freed_bytes`` too).
    removed_temporaries: int = 0
    #: Unreferenced objects kept because they are younger than the grace period.
    kept_young: int = 0
    kept_young_bytes: int = 0
    #: Runs recording, replaying or resuming while gc ran: what they used is kept.
    active_runs: int = 0
    #: Scratch copies of the code left in the temporary directory by killed replays and resumes.
    removed_scratch: int = 0
    #: Scratch copies a failed replay kept for the user to read, handed over before the grace period.
    removed_kept_scratch: int = 0


def referenced_objects(store: Store, manifests: list[str]) -> set[str]:
    """Every object reachable from the given manifests."""
    keep: set[str] = set()
    for name in manifests:
        keep.add(name)
        try:
            data = json.loads(store.objects.get(name, verify=False))
        except (CorruptObject, ValueError):
            continue  # missing or damaged: the checkpoint cannot be restored, whatever gc keeps
        except OSError as e:
            # Unreadable now (permissions, an I/O error): the objects it names cannot be told
            # apart from garbage, and deleting them would damage an intact checkpoint.
            raise HindlogError(f"cannot read the manifest {name[:12]} in {store.objects.root} ({e}); gc removes nothing "
                               "while a checkpoint's manifest cannot be read. Fix the cause and run gc again") from None
        if isinstance(data, dict) and "tensors" in data:
            keep.add(data["skeleton"])
            keep.update(entry[0] for entry in data["tensors"] if not entry[0].startswith("@"))
        elif isinstance(data, dict):
            keep.update(v for v in data.values() if isinstance(v, str))
    return keep


def spilled_manifests(store: Store) -> list[str]:
    """Manifests of checkpoints whose catalog rows wait in spill files (a run that could not
    write its catalog), to be loaded by the next process that records in the store."""
    from .writer import read_spill_file

    names: list[str] = []
    spill_dir = store.spill_dir
    for path in sorted(spill_dir.glob("*.pkl")) if spill_dir.is_dir() else []:
        try:
            data = read_spill_file(path)
        except FileNotFoundError:
            continue  # loaded meanwhile: its rows are in the catalog, which gc read after this
        except Exception as e:  # noqa: BLE001 - whatever it is, its checkpoints cannot be told apart
            raise HindlogError(f"cannot read the spill file {path} ({type(e).__name__}: {e}); the objects its "
                               "checkpoints use cannot be told apart, so gc removes nothing while it is there. "
                               "Record a run in this project to load it, or move it away, then run gc again") from None
        for command in data.get("commands", []):
            if command and command[0] == "checkpoints":
                names.extend(row[3] for row in command[1])
    return names


def gc(store: str | os.PathLike[str] | Store | None = None, keep_last: int | None = None, grace: float = GRACE_SECONDS,
       script: str | None = None) -> GcReport:
    """Delete unreferenced objects; with ``keep_last``, first drop the checkpoints of all but the N latest runs
    (of ``script``, as runs record it, if given: the other scripts' runs keep theirs).

    Logs, args and code versions of every run are always kept.
    """
    st = store if isinstance(store, Store) else Store.for_project(store=store)
    if not st.exists():  # never create a store to clean it
        raise HindlogError(f"there is no hindlog store at {st.path}")
    if keep_last is not None and keep_last < 0:
        raise BadKeepLast(f"--keep-last must be 0 or more, got {keep_last}")
    damaged = st.damaged_catalogs()
    if damaged:
        # Its checkpoints' objects are referenced from a file gc cannot read: none is removed.
        raise HindlogError(
            f"{damaged[0]} is a damaged catalog set aside{f' (and {len(damaged) - 1} more)' if len(damaged) > 1 else ''}; "
            f"the objects its runs' checkpoints use cannot be told apart, so gc removes nothing while it is there. "
            f"Recover its records ({catalog.recover_advice(damaged[0])}), then delete it and run gc again")
    # Before anything is read: an object a run writes or reuses from now on is younger than this.
    now = time.time()
    # Read before the catalog: a spill file loaded meanwhile has its rows in the catalog then.
    spilled = spilled_manifests(st)
    conn = st.connect()
    dropped = 0
    try:
        runs = catalog.list_runs(conn)
        if not runs and next(iter(st.objects.names()), None) is not None:
            # An empty catalog beside stored objects lost its rows (emptied or replaced by hand, a
            # disk that lost it): those objects may be the only copy of its runs' checkpoints.
            raise HindlogError(
                f"the catalog {st.catalog_path} lists no runs, yet {st.objects.root} holds stored objects: if the "
                "catalog was lost, they are what is left of its runs' checkpoints and code. gc removes nothing here; "
                f"delete {st.objects.root} yourself if they are not wanted")
        locks = st.held_locks()
        busy = {name.split("-", 1)[1] for name in locks if name.startswith(("replay-", "resume-"))}
        active = [r for r in runs if r["status"] == "running" or r["run_id"] in busy]
        # Objects used since this moment may belong to a checkpoint not committed yet.
        since = min([r["started"] for r in runs if r["status"] == "running" and r.get("started")] + list(locks.values()),
                    default=None)
        if keep_last is not None:
            candidates = runs if script is None else [r for r in runs if r.get("script") == script]
            old = [r["id"] for r in candidates[: max(len(candidates) - keep_last, 0)] if r not in active]
            if old:
                with catalog.transaction(conn):
                    had = {run for (run,) in conn.execute(
                        f"SELECT DISTINCT run FROM checkpoints WHERE run IN ({', '.join('?' * len(old))})", old)}
                    dropped = catalog.delete_checkpoints(conn, old)
                    for run in had:  # (``hindlog show`` says where they went)
                        catalog.merge_run_info(conn, run, {"checkpoints_dropped_by_gc": time.time()})
        with catalog.transaction(conn):  # values of replays killed before they ended
            # The locks read again, holding the catalog's write lock: a replay that started since
            # the first read holds its run's lock by now, or writes no value before this commits.
            held = st.held_locks()
            catalog.discard_pending(conn, [r["id"] for r in runs if f"replay-{r['run_id']}" not in held])
        manifests = catalog.all_manifests(conn)
    finally:
        conn.close()
    keep = referenced_objects(st, manifests + spilled)
    # The generators' states each run started from (a few kilobytes; kept with its logs).
    keep |= {(r.get("info") or {}).get("initial_generators") for r in runs} - {None}
    cutoff = now - grace if since is None else min(now - grace, since - SINCE_MARGIN_SECONDS)
    removed = freed = young = young_bytes = 0
    for name in list(st.objects.names()):
        if name in keep:
            continue
        path = st.objects.path(name)
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        if stat.st_mtime >= cutoff:
            young += 1
            young_bytes += stat.st_size
            continue
        size = remove_if_unused(path, cutoff)
        if size is None:
            continue
        removed += 1
        freed += size
    # A process killed while writing an object leaves its temporary file (never visible as an
    # object: it was not renamed into place). One untouched for the grace period has no writer.
    temporaries = 0
    for path in list(st.objects.temporaries()):
        if restore_set_aside(path):
            continue
        try:
            stat = path.stat()
            if stat.st_mtime >= cutoff:
                continue
            path.unlink()
        except FileNotFoundError:
            continue
        temporaries += 1
        freed += stat.st_size
    # Scratch copies of the code that replays and resumes killed with -9 could not remove: their
    # lock is free. One handed to the user to read (a failed replay's logs) stays for the grace period.
    scratch = kept_scratch = 0
    for path, lock, kept, marked in st.scratch_dirs():
        if lock in locks or st.lock(lock).held() or (kept and marked >= now - grace):
            continue
        freed += _tree_bytes(path)
        shutil.rmtree(path, ignore_errors=True)
        if kept:
            kept_scratch += 1
        else:
            scratch += 1
    return GcReport(removed, freed, dropped, keep_last, temporaries, young, young_bytes, len(active), scratch, kept_scratch)


#: The prefix of the name gc gives an object it sets aside before removing it: a temporary
#: file's, so that readers and ``ObjectStore.names`` skip it.
SET_ASIDE_PREFIX = f"{TEMPORARY_PREFIX}gc-"


def remove_if_unused(path: Path, cutoff: float) -> int | None:
    """Remove the object at ``path``, which gc found unreferenced and unused since ``cutoff``;
    its size, or None if it stays.

    A running process may reuse the object at any moment: it touches the file, then names it
    in a checkpoint. The file is renamed aside first, so that a touch from then on fails and
    that process writes the object again; a touch that came before shows in the file's time,
    and the object is put back. A gc stopped in between leaves the file aside, and the next
    one puts it back (``restore_set_aside``)."""
    # A name no other gc (another process, host or container) can pick at the same time.
    aside = path.with_name(f"{SET_ASIDE_PREFIX}{secrets.token_hex(8)}-{path.name}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return None  # removed by another gc, or set aside by one
    try:
        stat = aside.stat()
        if stat.st_mtime >= cutoff:
            os.rename(aside, path)  # a copy written meanwhile has the same bytes: either may stay
            return None
        aside.unlink()
    except FileNotFoundError:
        return None
    except BaseException:
        _put_back(aside, path)
        raise
    return stat.st_size


def restore_set_aside(aside: Path) -> bool:
    """Put back an object a stopped gc left set aside (it may be named by a checkpoint committed
    meanwhile); whether ``aside`` was such a file. The next gc judges the object as any other."""
    if not aside.name.startswith(SET_ASIDE_PREFIX):
        return False
    name = aside.name[len(SET_ASIDE_PREFIX):].partition("-")[2]
    if name:
        _put_back(aside, aside.with_name(name))
    return True


def _put_back(aside: Path, path: Path) -> None:
    try:
        os.link(aside, path)  # never over a copy written meanwhile (the same bytes)
    except FileExistsError:
        pass
    except OSError:
        return  # left aside: the next gc tries again
    try:
        aside.unlink()
    except FileNotFoundError:
        pass


def _tree_bytes(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                continue
    return total
