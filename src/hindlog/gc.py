"""``hindlog gc``: remove stored objects no checkpoint or code snapshot refers to."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

from . import catalog
from .errors import HindlogError
from .store import Store

#: Objects younger than this are kept: a running process may be writing a checkpoint.
GRACE_SECONDS = 3600.0


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


def referenced_objects(store: Store, manifests: list[str]) -> set[str]:
    """Every object reachable from the given manifests."""
    keep: set[str] = set()
    for name in manifests:
        keep.add(name)
        try:
            data = json.loads(store.objects.get(name, verify=False))
        except Exception:
            continue
        if isinstance(data, dict) and "tensors" in data:
            keep.add(data["skeleton"])
            keep.update(entry[0] for entry in data["tensors"] if not entry[0].startswith("@"))
        elif isinstance(data, dict):
            keep.update(v for v in data.values() if isinstance(v, str))
    return keep


def gc(store: str | os.PathLike[str] | Store | None = None, keep_last: int | None = None, grace: float = GRACE_SECONDS) -> GcReport:
    """Delete unreferenced objects; with ``keep_last``, first drop the checkpoints of all but the N latest runs.

    Logs, args and code versions of every run are always kept.
    """
    st = store if isinstance(store, Store) else Store.for_project(store=store)
    if not st.exists():  # never create a store to clean it
        raise HindlogError(f"there is no hindlog store at {st.path}")
    conn = st.connect()
    dropped = 0
    try:
        if keep_last is not None:
            if keep_last < 0:
                raise BadKeepLast(f"--keep-last must be 0 or more, got {keep_last}")
            runs = catalog.list_runs(conn)
            old = [r["id"] for r in runs[: max(len(runs) - keep_last, 0)] if r["status"] != "running"]
            if old:
                with catalog.transaction(conn):
                    dropped = catalog.delete_checkpoints(conn, old)
        manifests = catalog.all_manifests(conn)
    finally:
        conn.close()
    keep = referenced_objects(st, manifests)
    now = time.time()
    removed = freed = young = young_bytes = 0
    for name in list(st.objects.names()):
        if name in keep:
            continue
        path = st.objects.path(name)
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        if now - stat.st_mtime < grace:
            young += 1
            young_bytes += stat.st_size
            continue
        st.objects.delete(name)
        removed += 1
        freed += stat.st_size
    # A process killed while writing an object leaves its temporary file (never visible as an
    # object: it was not renamed into place). One untouched for the grace period has no writer.
    temporaries = 0
    for path in list(st.objects.temporaries()):
        try:
            stat = path.stat()
            if now - stat.st_mtime < grace:
                continue
            path.unlink()
        except FileNotFoundError:
            continue
        temporaries += 1
        freed += stat.st_size
    return GcReport(removed, freed, dropped, keep_last, temporaries, young, young_bytes)
