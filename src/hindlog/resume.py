"""``hindlog resume``: continue a killed or failed run from its latest checkpoint.

The run's recorded code is materialized into a scratch directory and its
script started with the recorded argv, args and environment variables, from
the run's original working directory (so relative data paths and outputs
are where they were). The recorder attaches to the same run, restores the
latest checkpoint when the main loop starts and continues with the next
iteration; values of iterations already logged are not logged twice.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

from . import catalog, codeversion
from .checkpoint import ITERATION_END, checkpoint_rows, latest_readable
from .errors import ReplayError
from .replay import _worker_cwd, _worker_env, initial_generators_spec, prepare_scratch, worker_command
from .store import Store, project_root


def resume(run: str = "latest", store: str | os.PathLike[str] | Store | None = None) -> int:
    """Resume run ``run``; returns the resumed script's exit code."""
    st = store if isinstance(store, Store) else Store.for_project(store=store)
    if not st.exists():  # nothing to resume, and no store to create
        raise ReplayError(f"there is no hindlog store at {st.path}; no run can be resumed")
    conn = st.connect()
    try:
        row = catalog.get_run(conn, run)
        if row["status"] in ("running", "finished"):
            raise ReplayError(f"run {row['run_id']} is {row['status']}; only killed or failed runs can be resumed")
        rows = checkpoint_rows(conn, row["id"])
        args = catalog.run_args(conn, [row["id"]]).get(row["id"], {})
    finally:
        conn.close()
    recorded_in = Path(row["cwd"]) if row.get("cwd") else None
    if not isinstance(store, Store) and recorded_in is not None and recorded_in.is_dir():
        # The run's code versions live in the project it ran in, wherever this command runs.
        root = project_root(recorded_in)
        if root != st.root:
            st = Store(st.path, root)
    if (row.get("info") or {}).get("process_index"):
        raise ReplayError(f"run {row['run_id']} is not the first run of the process that recorded it (hl.init called "
                          "several times): resume can continue only a process's first run")
    launch = (row.get("env") or {}).get("distributed")
    if launch:
        # Each rank would restart from its own latest checkpoint, and those differ: the ranks
        # would train from different states and the run would end "finished" with wrong values.
        raise ReplayError(f"run {row['run_id']} is rank {launch['rank']} of {launch['world_size']} processes of a distributed "
                          "launch (torchrun); resuming a distributed run is not supported: its ranks' checkpoints are of "
                          "different iterations. Run the launch again; its checkpoints stay for replay.")
    if not any(ITERATION_END in blocks for blocks in rows.values()):
        why = (": `hindlog gc --keep-last` dropped them" if (row.get("info") or {}).get("checkpoints_dropped_by_gc") else "")
        raise ReplayError(f"run {row['run_id']} has no checkpoint to resume from{why}; run the script again instead")
    if not row.get("code_version") or not row.get("script"):
        raise ReplayError(f"run {row['run_id']} has no recorded code version or script")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the resumed process reports the fallbacks itself
        readable = latest_readable(st.objects, rows)
    if readable is None:
        # Checked here: a resumed process that cannot attach would run the script unrecorded.
        raise ReplayError(f"none of the checkpoints of run {row['run_id']} can be read (all are damaged); it cannot be resumed")
    # Two resumes of one run at once would both continue it, each appending the same iterations.
    lock = st.lock(f"resume-{row['run_id']}")
    if not lock.acquire():
        pid = lock.holder()
        raise ReplayError(f"run {row['run_id']} is being resumed already" + (f" (process {pid})" if pid else ""))
    try:
        changed = codeversion.changed_files(st, row["code_version"])
    except Exception:  # (telling is a courtesy: a store without the version's files still resumes)
        changed = []
    edits = (f": edits made since to {', '.join(changed[:3])}{' and more' if len(changed) > 3 else ''} are not used"
             if changed else "")
    print(f"hindlog: resuming run {row['run_id']} after iteration {readable.iteration}, with the code it was recorded with "
          f"({row['code_version'][:12]}){edits}", file=sys.stderr, flush=True)
    unrestorable = (row.get("info") or {}).get("unrestorable_locals")
    if unrestorable:
        print(f"hindlog: the main loop's {', '.join(unrestorable)} could not be checkpointed: the resumed run makes "
              f"{'it' if len(unrestorable) == 1 else 'them'} afresh, so what follows may differ from a run that was "
              "never stopped", file=sys.stderr, flush=True)
    st.remove_dead_scratch(f"resume-{row['run_id']}")  # a killed resume's copy
    scratch = st.scratch_dir(f"resume-{row['run_id']}")
    try:
        prepare_scratch(st, row["code_version"], {}, scratch)
        spec_path = scratch / ".hindlog-spec.json"
        spec = {"mode": "resume", "run_id": row["run_id"]}
        info = row.get("info") or {}
        if "state_candidates" in info:
            spec["state_candidates"] = info["state_candidates"] + info.get("adopted_state", [])
        else:
            spec["adopted_state"] = info.get("adopted_state", [])
        spec.update(initial_generators_spec(st, row))
        spec_path.write_text(json.dumps(spec))
        argv = row.get("argv") or [row["script"]]
        cwd = row.get("cwd") if row.get("cwd") and Path(row["cwd"]).is_dir() else str(st.root)
        env = _worker_env(st, row, args, spec_path, scratch)
        # A resumed run is the user's run going on: what it writes through the copy's links
        # (next to its script) belongs in the project, unlike a replay's.
        env.pop("HINDLOG_SCRATCH", None)
        if info.get("module"):
            # The run goes on in its own directory, where python -m would find the working tree's
            # module: it is found in the recorded code's copy of that directory instead.
            env["HINDLOG_MODULE_DIR"] = str(_worker_cwd(st, row, scratch))
        returncode = _run_as_this_process([*worker_command(row, scratch / row["script"], module_dir=True), *argv[1:]], cwd, env)
        # Killed by a signal: the exit status a shell gives (137 for kill -9), not -9 taken modulo 256.
        return returncode if returncode >= 0 else 128 - returncode
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # the recorded code, materialized for this resume only
        lock.release()


def _run_as_this_process(command: list[str], cwd: str, env: dict[str, str]) -> int:
    """Run the resumed script as if it were this process: a SIGTERM or SIGHUP sent to ``hindlog
    resume`` (``timeout``, a scheduler, ``docker stop``) goes on to it, and it gets SIGTERM if
    this process dies (``kill -9``): it went on training as an orphan, shown "running". A
    terminal's Ctrl-C reaches both already."""
    import signal

    def set_parent_death_signal() -> None:
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)
        except Exception:  # noqa: BLE001 - elsewhere: forwarding only
            pass

    proc = subprocess.Popen(command, cwd=cwd, env=env, preexec_fn=set_parent_death_signal)

    def forward(signum: int, frame: object) -> None:
        try:
            proc.send_signal(signal.SIGTERM)  # (a SIGHUP too: the script saves its run on SIGTERM)
        except OSError:
            pass

    forwarded = (signal.SIGTERM, signal.SIGHUP)
    previous = {}
    for signum in forwarded:
        try:
            previous[signum] = signal.signal(signum, forward)
        except (ValueError, OSError):  # (not the main thread)
            pass
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:
                continue  # (the script got the Ctrl-C too, and saves its run before it stops)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
