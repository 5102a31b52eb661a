"""``hindlog rm``: delete recorded runs, with everything they stored.

A run goes with its values (recorded and replayed), loop contexts, args, checkpoint rows, the
outputs its replays kept, and the git ref that keeps its code snapshot alive. All the catalog's
rows go in one transaction (a code snapshot outside git stays: other runs may share it). The
checkpoints' objects, which other runs may share, are removed by ``hindlog gc`` once nothing
refers to them. A run that records, replays or resumes now is refused, and so is a distributed
run without the other ranks of its launch, whose replay needs them all.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from . import catalog
from .environment import hostname
from .errors import HindlogError
from .store import Lock, Store

#: A run on another machine that fell silent less than this long ago may still be writing.
REMOTE_SILENCE_SECONDS = 3600.0


@dataclass
class Removal:
    """What ``remove_runs`` deleted (or, with ``dry_run``, would delete)."""

    runs: list[str] = field(default_factory=list)
    values: int = 0
    checkpoints: int = 0


def remove_runs(runs: Sequence[str] | str, store: str | os.PathLike[str] | Store | None = None,
                dry_run: bool = False) -> Removal:
    """Delete the runs ``runs`` names (ids, unique starts or ends of ids, names, 'latest').

    Raises HindlogError, naming the run, if one records, replays or resumes now."""
    st = store if isinstance(store, Store) else Store.for_project(store=store)
    if not st.exists():  # never create a store to delete from it
        raise HindlogError(f"there is no hindlog store at {st.path}")
    refs = [runs] if isinstance(runs, str) else list(runs)
    if not refs:
        raise HindlogError("name the runs to delete (`hindlog runs` lists them)")
    conn = st.connect()
    held: list[Lock] = []
    try:
        targets: dict[str, dict[str, Any]] = {}
        for ref in refs:
            run = catalog.get_run(conn, ref)
            targets[run["run_id"]] = run
        here = hostname()
        for run in targets.values():
            if run["status"] == "running":
                raise HindlogError(f"run {run['run_id']} is still recording (process {run.get('pid')}): stop it first")
            if run["status"] == "killed" and run.get("host") is not None and not catalog.seen_from_here(run) \
                    and time.time() - (run.get("heartbeat") or 0) < REMOTE_SILENCE_SECONDS:
                # Taken for killed because it fell silent, on a machine whose processes cannot be
                # seen from here: it may still write, into whatever run gets its place.
                where = run["host"] if run["host"] != here else f"{here}, in another container (PID namespace)"
                raise HindlogError(f"run {run['run_id']} was recording on {where} until "
                                   f"{int(time.time() - run['heartbeat'])} s ago and may still be: make sure it has stopped, "
                                   f"and delete it in {int(REMOTE_SILENCE_SECONDS // 60)} minutes or from that machine")
        _check_whole_launches(conn, targets)
        for run_id in targets:
            for activity in ("replay", "resume"):
                # Held while deleting: no replay or resume of the run starts meanwhile.
                lock = st.lock(f"{activity}-{run_id}")
                if not lock.acquire():
                    raise HindlogError(f"run {run_id} is being {activity}ed now (process {lock.holder()}): let it end first")
                held.append(lock)
        removal = Removal(runs=list(targets))
        ids = [run["id"] for run in targets.values()]
        marks = ",".join("?" * len(ids))
        removal.values = conn.execute(f"SELECT COUNT(*) FROM records WHERE run IN ({marks})", ids).fetchone()[0]
        removal.checkpoints = conn.execute(f"SELECT COUNT(DISTINCT run || '-' || iteration) FROM checkpoints WHERE run IN ({marks})",
                                           ids).fetchone()[0]
        if dry_run:
            return removal
        with catalog.transaction(conn):
            for table in ("records", "contexts", "args", "checkpoints"):
                conn.execute(f"DELETE FROM {table} WHERE run IN ({marks})", ids)
            conn.execute(f"DELETE FROM runs WHERE id IN ({marks})", ids)
            # (A code snapshot outside git stays: a run starting now may be about to name it.)
    finally:
        for lock in held:
            lock.release()
        conn.close()
    for run in targets.values():
        shutil.rmtree(st.path / "outputs" / run["run_id"], ignore_errors=True)
        _delete_ref(st, run["run_id"])
        for activity in ("replay", "resume"):
            with contextlib.suppress(OSError):
                (st.path / "locks" / f"{activity}-{run['run_id']}.lock").unlink()
    return removal


def _check_whole_launches(conn: Any, targets: dict[str, dict[str, Any]]) -> None:
    """Refuse to delete some ranks of a distributed launch and keep others: their replay needs
    every rank's run."""
    from .replay import launch_runs

    for run in targets.values():
        others = [r for r in launch_runs(conn, run).values() if r["run_id"] not in targets]
        if others:
            raise HindlogError(
                f"run {run['run_id']} is one rank of a distributed launch; deleting it leaves the other ranks' runs "
                f"({', '.join(r['run_id'] for r in others)}), which cannot be replayed without it: delete them all, or none")


def _delete_ref(store: Store, run_id: str) -> None:
    """Drop the git ref that keeps the run's code snapshot (git's own gc may then remove it), if
    the project is a git work tree and the ref is there."""
    import subprocess

    if not (store.root / ".git").exists():
        return

    from .processes import run_captured

    try:
        run_captured(["git", "-C", str(store.root), "update-ref", "-d", f"refs/hindlog/runs/{run_id}"], timeout=30)
    except (OSError, subprocess.SubprocessError):
        pass  # no git, or the ref is gone: nothing keeps the snapshot
