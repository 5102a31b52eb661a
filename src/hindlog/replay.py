"""``hindlog replay``: plan and run a replay of recorded runs with new log statements.

For each target run: find the statements added to the script (and the project
modules) since the recorded version, place them into the run's own code,
decide which nested loops must run (the probed ones) and which are skipped by
restoring checkpoints, split the main loop into segments that start right
after a checkpoint, and run the segments in parallel worker processes, each
the recorded script in a scratch copy of the recorded code. Workers check the
values they recompute against the recorded ones and store the new values.
"""

from __future__ import annotations

import ast
import itertools
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import catalog, codeversion, environment, hindsight
from .checkpoint import ITERATION_END, checkpoint_rows, keep_checkpoints, prefetch_budget, prefetch_checkpoints, prefetch_in_background, skippable_blocks
from .controller import ENV
from .errors import ReplayError, ReplayInterrupted, RunNotFound, StoreError
from .scratchguard import OUTSIDE_BACKUPS
from .store import Store, mark_scratch_kept
from .values import decode, equal


@dataclass
class Segment:
    start: int
    end: int
    estimate: float = 0.0


@dataclass
class RunPlan:
    """What replaying one run will do."""

    run_id: str
    run: int
    script: str
    code_version: str
    files: dict[str, str]  # patched sources of the files with new statements
    new_statements: dict[str, list[tuple[int, int]]]
    probed: set[str]
    iterations: tuple[int, int]
    total_iterations: int
    checkpointed: list[int]
    segments: list[Segment] = field(default_factory=list)
    #: Run every nested loop (nothing skipped), e.g. when new statements read gradients.
    run_all_blocks: bool = False
    #: Lines where a new log statement follows recorded code (--force): ``Additions.shared_lines``.
    shared_lines: dict[str, list[int]] = field(default_factory=dict)
    estimate: float = 0.0
    full_rerun: float | None = None
    #: A new statement draws from the run's random generators.
    draws_random: bool = False
    notes: list[str] = field(default_factory=list)
    #: The main loop's name (it always runs; the plan lists the nested loops that must run too).
    main_loop: str | None = None
    #: Loops in the functions that new statements call: they run for those statements.
    run_by_new_code: set[str] = field(default_factory=set)
    #: The GPU each segment's worker is given (``CUDA_VISIBLE_DEVICES``); None: as the record ran.
    gpus: list[str | None] = field(default_factory=list)
    #: Locals of the main loop that its checkpoints could not hold (an iterator over a loader):
    #: no iteration-end checkpoint stands for the iterations before it, so the replay runs the
    #: main loop from its first iteration, in one segment.
    unrestorable: list[str] = field(default_factory=list)
    #: Run the main loop from its first iteration in one segment (``unrestorable``, or gradients
    #: that one iteration leaves to the next).
    from_start: bool = False
    #: For a run of one rank of a distributed launch: the checkpoints (iteration, block) that every
    #: rank's run has, the only ones its replay uses (None: a process alone, all of its own).
    common_checkpoints: list[list[int]] | None = None


@dataclass
class RunResult:
    run_id: str
    ok: bool
    seconds: float
    checked: int = 0
    stored: int = 0
    divergences: list[dict[str, Any]] = field(default_factory=list)
    failed_segments: list[tuple[int, int, str]] = field(default_factory=list)
    skipped_blocks: int = 0
    run_blocks: int = 0
    #: Seconds the workers spent reading and applying checkpoints (summed over workers).
    restore_seconds: float = 0.0
    #: Values of an earlier replay of the same statements that this one's values replaced.
    replaced: int = 0
    #: By name: values an earlier version of its statement logged, outside the iterations
    #: replayed (the values replaced differed: the statement changed since); they stay.
    stale: dict[str, int] = field(default_factory=dict)
    #: New values not kept because their segment diverged (its state was not the record's).
    dropped_diverged: int = 0
    #: Where the recorded code ran and the workers' logs are, kept when a segment failed.
    scratch: str | None = None
    #: The error the last segment ended with, as the recorded (failed) run did.
    recorded_failure: str | None = None
    #: Lines the replayed code printed that the record printed too, and how many differ.
    printed_checked: int = 0
    printed_differ: int = 0
    printed_examples: list[dict[str, Any]] = field(default_factory=list)
    #: hindlog's warnings in the workers (e.g. a damaged checkpoint passed over), each once.
    worker_warnings: list[str] = field(default_factory=list)
    #: Why the run was not replayed at all (another replay of it was running).
    refused: str | None = None
    #: Files the replayed code wrote in its scratch copy (paths relative to the copy's root):
    #: in ``outputs_dir``, where ``keep_outputs`` moved them, or the kept copy (a failed or
    #: diverged replay); and how many it wrote that the record wrote too (``written_files``).
    outputs: list[str] = field(default_factory=list)
    outputs_dir: str | None = None
    #: Files it wrote that the record wrote too (the project has them): not kept.
    outputs_again: list[str] = field(default_factory=list)
    #: Values the recorded code logged past where the (killed or failed) run stopped: not kept.
    past_record: int = 0
    #: Segments (start, end, files) that read files another segment's worker wrote: their
    #: values are dropped as a diverged segment's are (``_files_shared_by_workers``).
    shared_reads: list[tuple[int, int, list[str]]] = field(default_factory=list)
    #: Files several workers wrote, each holding only the last writer's iterations.
    outputs_shared: list[str] = field(default_factory=list)
    #: Files outside the project the replayed code wrote (absolute paths), and where the content
    #: the existing ones had before is kept (``scratchguard.WRITTEN_OUTSIDE``).
    outside: list[str] = field(default_factory=list)
    outside_backups: str | None = None


@dataclass
class ReplayReport:
    plans: list[RunPlan]
    skipped_runs: list[tuple[str, str]]
    results: list[RunResult] = field(default_factory=list)
    #: The store the runs are in (the script's project's, which need not be the current one's).
    store: Store | None = None
    #: Target runs left out: recorded with the statements in already (the latest of a sweep).
    already: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results) and not any(r.divergences for r in self.results)


# ----------------------------------------------------------------- planning


def _renamed_hint(conn: Any, root: Path) -> str:
    """What to do when the script was renamed since it was recorded: the scripts recorded that
    are gone from the project."""
    gone = sorted({r["script"] for r in catalog.list_runs(conn) if r.get("script") and not (root / r["script"]).is_file()})
    if not gone:
        return ""
    names = ", ".join(gone[:5]) + (", ..." if len(gone) > 5 else "")
    return (f" Runs of {names}, no longer in the project, are recorded: if the script was renamed, its runs replay "
            "under the name they were recorded with (rename it back, or copy it to that name, add the statements "
            "there and replay that).")


def _recorded_iterations(conn: Any, run: dict[str, Any]) -> int:
    """Iterations the record entered: as it counted them, its timings (kept for the first
    MAX_TIMED_ITERATIONS), or (a killed run) the contexts it logged in."""
    info = run.get("info") or {}
    row = conn.execute("SELECT MAX(iteration) FROM contexts WHERE run=?", (run["id"],)).fetchone()
    return max(len(info.get("iteration_seconds") or []), int(info.get("main_loop_iterations") or 0),
               (row[0] + 1) if row and row[0] is not None else 0)


def launch_runs(conn: Any, run: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The runs that the ranks of ``run``'s distributed launch recorded, by rank (``{}`` for a
    run of a process alone). A rank with several candidates is left out."""
    launch = (run.get("env") or {}).get("distributed")
    if not launch:
        return {}
    by_rank: dict[int, list[dict[str, Any]]] = {}
    for r in catalog.list_runs(conn, run.get("script")):
        d = (r.get("env") or {}).get("distributed")
        if d and (d["world_size"], d["launch"]) == (launch["world_size"], launch["launch"]) \
                and r.get("code_version") == run.get("code_version") and abs((r.get("started") or 0) - (run.get("started") or 0)) < 600:
            by_rank.setdefault(d["rank"], []).append(r)
    return {rank: runs[0] for rank, runs in by_rank.items() if len(runs) == 1}


def _this_ranks_run(conn: Any, run: dict[str, Any], here: dict[str, Any]) -> dict[str, Any]:
    """Under a distributed launcher, the run that this process's rank recorded in the launch that
    recorded ``run`` (``run`` itself when it is this rank's, or no such run is found): each rank
    of ``torchrun ... hindlog replay`` replays its own rank's run."""
    launch = (run.get("env") or {}).get("distributed")
    if not launch or launch["rank"] == here["rank"]:
        return run
    return launch_runs(conn, run).get(here["rank"], run)


def common_checkpoints(conn: Any, run: dict[str, Any], runs: dict[int, dict[str, Any]]) -> set[tuple[int, int]] | None:
    """For a run of one rank of a distributed launch (``runs``: its launch's, by ``launch_runs``),
    the checkpoints (iteration, block) of it that every rank's run has: the ranks' replays skip
    the same loops, or one rank would wait in a collective (an all-reduce) for another that
    skipped it. None for a process alone; raises when the runs of some ranks are not in the store."""
    launch = (run.get("env") or {}).get("distributed")
    if not launch:
        return None
    missing = sorted(set(range(launch["world_size"])) - set(runs))
    if missing:
        raise ReplayError(f"the runs of rank{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} of the distributed "
                          f"launch of run {run['run_id']} are not in this store (or not told apart): the ranks' replays "
                          "must skip the same loops")
    # A checkpoint is known by its loop's name and how many loops of that name came before it in
    # its iteration, not by its block number: a loop only rank 0 runs (validation) numbers the
    # loops after it differently in rank 0's run.
    keyed: dict[int, dict[tuple[int, str | None, int], int]] = {}
    for rank, r in runs.items():
        keys = keyed[rank] = {}
        for i, blocks in checkpoint_rows(conn, r["id"]).items():
            seen: dict[str | None, int] = {}
            for b in sorted(blocks):
                loop = blocks[b][0] if b >= 0 else None
                keys[(i, loop, seen.get(loop, 0))] = b
                seen[loop] = seen.get(loop, 0) + 1
    common = set.intersection(*(set(keys) for keys in keyed.values()))
    own = keyed[launch["rank"]]
    return {(key[0], own[key]) for key in common}


def run_flag() -> str:
    """How to name a run to ``hindlog replay`` here: ``--run-id`` under torchrun, whose parser
    takes ``--run`` for its own ``--run-path``."""
    return "--run-id" if environment.distributed() is not None else "--run"


def _other_ranks_needed(launch: dict[str, Any], script: str | None, here: dict[str, Any] | None, run_id: str) -> str:
    """Why a run of one rank of a distributed launch is not replayed here."""
    rank, size = launch["rank"], launch["world_size"]
    why = f"it is rank {rank} of {size} processes of a distributed launch (torchrun), whose code waits for the other ranks"
    if here is not None:
        why += f"; this replay is rank {here['rank']} of {here['world_size']}, and no run of that rank was found in the launch"
    return (f"{why}. Replay all {size} ranks at once under the same launcher: `torchrun --nproc_per_node {size} -m hindlog "
            f"replay {script or 'SCRIPT'} --run-id {run_id}` (each rank replays its own rank's run of the launch, with one worker)")


def select_runs(conn: Any, script: str | None, runs: list[str] | None, all_runs: bool, where: str | None,
                root: Path | None = None) -> list[dict[str, Any]]:
    """The target runs: given ones, all of the script's, those matching ``where``, or the script's latest.
    ``root``: the project's, to say which recorded scripts are gone from it when ``script`` never ran."""
    if runs:
        chosen_runs = {}  # one replay per run, however often it is named
        for r in runs:
            row = catalog.get_run(conn, r)
            if script is not None and row.get("script") and row["script"] != script:
                raise ReplayError(f"run {row['run_id']} is a run of {row['script']}, not of {script}: replay "
                                  f"{row['script']} (or leave SCRIPT out to replay the run's own script)")
            chosen_runs.setdefault(row["run_id"], row)
        scripts = {r.get("script") for r in chosen_runs.values()}
        if len(scripts) > 1:
            raise ReplayError(f"the runs given are runs of different scripts ({', '.join(sorted(map(str, scripts)))}): "
                              "replay each script's runs on their own")
        return list(chosen_runs.values())
    candidates = catalog.list_runs(conn, script)
    if not candidates:
        if script is None:
            raise RunNotFound("No runs are recorded in this store yet.")
        raise RunNotFound(f"{script} has never been recorded in this store. Record it first: `python {script} ...` "
                          f"if it uses hindlog, `hindlog run {script} ...` if it does not."
                          + (_renamed_hint(conn, root) if root is not None else ""))
    if where:
        import pandas as pd

        from .query import argv_options

        args = catalog.run_args(conn, [r["id"] for r in candidates])
        # A run's args, and the options of its command line (a script's argparse arguments).
        frame = pd.DataFrame([{**argv_options(r.get("argv")), **((r.get("info") or {}).get("options") or {}),
                               **args.get(r["id"], {}), "_id": r["run_id"]} for r in candidates])
        try:
            mask = frame.eval(where)
            if not (isinstance(mask, pd.Series) and mask.dtype == bool):
                raise ValueError("it is not a condition on the args (e.g. \"lr > 0.01 and batch == 32\")")
            chosen = set(frame[mask]["_id"])
        except Exception as e:
            names = ", ".join(c for c in frame.columns if c != "_id") or "none"
            raise ReplayError(f"--where {where!r} cannot be evaluated over the runs' args and options ({e}; "
                              f"their args and options: {names})") from None
        # A run with no value for a name the condition reads is not picked, whatever pandas
        # makes of the missing value (``lr != 0.3`` holds for it).
        unknown = _runs_without(frame, where)
        failed = {r["run_id"] for r in candidates if r["run_id"] in unknown and r.get("status") == "failed"}
        candidates = [r for r in candidates if r["run_id"] in chosen and r["run_id"] not in unknown]
        if unknown:
            # (A version of the script without the option, or a default hindlog did not see.)
            names = ", ".join(sorted({n for missing in unknown.values() for n in missing}))
            left_out = (f"{len(unknown)} run{'s' if len(unknown) > 1 else ''} ({', '.join(list(unknown)[:3])}"
                        f"{', ...' if len(unknown) > 3 else ''}) with no recorded value of {names}")
            advice = (f"their version of the script had no such option, or parsed it where hindlog could not see "
                      f"(hl.arg(\"{names.split(', ')[0]}\", default) records a value for sure); name runs with --run")
            if failed:
                # (A bad HINDLOG_SET_ value: the run failed in hl.arg, before recording it.)
                advice = (f"{'they' if len(failed) == len(unknown) else f'{len(failed)} of them'} failed before recording "
                          f"it (`hindlog show RUN` says why)" + ("" if len(failed) == len(unknown) else f"; the others: {advice}"))
            if not candidates:
                raise RunNotFound(f"no run matches --where {where!r}: it cannot tell for {left_out}; {advice}")
            print(f"note: --where {where!r} leaves out {left_out}: {advice}", file=sys.stderr)
        if not candidates:
            of = f"of {script} " if script else ""
            raise RunNotFound(f"no run {of}matches --where {where!r}")
        return _of_one_script(candidates, f"--where {where!r}")
    if all_runs:
        return _of_one_script(candidates, "--all")
    return [candidates[-1]]


def _runs_without(frame: Any, where: str) -> dict[str, list[str]]:
    """The runs (by id) that have no value for some name ``where`` reads, and those names."""
    import ast

    try:
        used = {n.id for n in ast.walk(ast.parse(where, mode="eval")) if isinstance(n, ast.Name)}
    except SyntaxError:
        return {}
    columns = [c for c in frame.columns if c in used]
    out: dict[str, list[str]] = {}
    for _, row in frame.iterrows():
        missing = [c for c in columns if row[c] is None or (isinstance(row[c], float) and row[c] != row[c])]
        if missing:
            out[row["_id"]] = missing
    return out


def _of_one_script(rows: list[dict[str, Any]], selection: str) -> list[dict[str, Any]]:
    """``rows``, if they are runs of one script: the new statements come from one script."""
    scripts = sorted({str(r.get("script")) for r in rows})
    if len(scripts) > 1:
        raise ReplayError(f"{selection} selects runs of {len(scripts)} scripts ({', '.join(scripts)}): name the one "
                          f"to replay, e.g. `hindlog replay {scripts[0]} {selection}`")
    return rows


def _working_sources(store: Store, paths: set[str]) -> dict[str, str]:
    out = {}
    for rel in paths:
        p = store.root / rel
        if p.is_file():
            out[rel] = p.read_text()
    return out


def hindsight_changes(store: Store, base_version: str, force: bool, script: str | None = None,
                      other_scripts: set[str] | frozenset[str] = frozenset()) -> tuple[dict[str, str], dict[str, hindsight.Additions], list[str]]:
    """Current sources of changed .py files, their additions against ``base_version``, and notes.

    A file changed otherwise than by added statements that neither is ``script`` nor is
    imported by any file of the project is left out, with a note: the replay runs its recorded
    version, which the run never ran anyway. So is another script (one of ``other_scripts``,
    those recorded, or a file with a ``__main__`` guard) with statements added for its own
    runs; a module with statements added in it is meant to run, whether or not its import is
    seen, and is not left out."""
    recorded = codeversion.read_files(store, base_version)
    current_py = {p for p in codeversion._working_files(store.root) if p.endswith(".py")}
    recorded_py = {p for p in recorded if p.endswith(".py")}
    notes: list[str] = []
    current = _working_sources(store, current_py | recorded_py)
    additions: dict[str, hindsight.Additions] = {}
    problems = []
    imported: list[set[str]] = []

    def imported_names() -> set[str]:
        """What the project's files, recorded and current, import: read once, if needed."""
        if not imported:
            imported.append(_imported_names([*(b.decode(errors="replace") for p, b in recorded.items() if p.endswith(".py")),
                                             *current.values()]))
        return imported[0]

    for path in sorted(current_py | recorded_py):
        old = recorded.get(path, b"").decode(errors="replace")
        new = current.get(path)
        if new is None:
            if script is not None and path != script:
                if not _may_be_imported(path, imported_names()):
                    # A script renamed or a scratch file deleted: these runs never ran it.
                    notes.append(f"{path} was removed, but no file of the project imports it: its recorded version is kept")
                    continue
            problems.append(f"{path} was removed")
            continue
        if old == new:
            continue
        if path not in recorded:
            if script is not None and path != script:
                if not _may_be_imported(path, imported_names()):
                    continue  # a new script of its own, or a scratch file: nothing these runs run
            notes.append(f"{path} is new; it is added to the replayed code")
            additions[path] = hindsight.Additions(path)
            continue
        found = hindsight.find_additions(path, old, new)
        added = any(not set(range(lo, hi + 1)) <= set(found.shared_lines) for lo, hi in found.statements)
        if script is not None and path != script and (found.syntax_error or found.other_changes or added):
            another_script = path in other_scripts or _has_main_guard(new)
            if not _may_be_imported(path, imported_names()) and (not added or another_script):
                # These runs never ran it: its recorded version is what a faithful replay has.
                why = " (the statements added to it are for its own runs: replay it for those)" if added else ""
                notes.append(f"{path} changed, but no file of the project imports it: its recorded version is kept{why}")
                continue
        if found.syntax_error:
            raise ReplayError(f"{found.syntax_error}. Fix it and replay again.")
        if found.other_changes:
            problems.append(f"--- {path}\n{found.other_changes}")
        additions[path] = found
    if problems and not force:
        raise ReplayError(
            "the code differs from the recorded version by more than added statements; replay only adds "
            "statements (use --force to replay anyway, with the current code):\n" + "\n".join(problems)
        )
    if problems:
        notes.append("--force: the runs of the version compared with replay the current code despite changes other "
                     "than added statements; runs of older versions get only the new statements, placed into their own code")
    return current, additions, notes


def _has_main_guard(source: str) -> bool:
    """Whether ``source`` has an ``if __name__ == "__main__":`` block: a script, not a module."""
    from .instrument import is_main_guard

    try:
        return any(is_main_guard(node) for node in ast.parse(source).body)
    except SyntaxError:
        return False


def _imported_names(sources: list[str]) -> set[str]:
    """Every module name the import statements of ``sources`` may import (``import a.b``: a and
    a.b; ``from a import b``: a and a.b), and every string they hold
    (``importlib.import_module("models.net")``, ``__import__``, a config's target)."""
    imported: set[str] = set()

    def with_parents(name: str) -> list[str]:
        pieces = name.split(".")
        return [".".join(pieces[: k + 1]) for k in range(len(pieces))]

    for src in sources:
        try:
            tree = ast.parse(src)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    imported.update(with_parents(a.name))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if base:
                    imported.update(with_parents(base))
                imported.update(f"{base}.{a.name}" if base else a.name for a in node.names)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) < 200:
                imported.add(node.value)
    return imported


def _may_be_imported(path: str, imported: set[str]) -> bool:
    """Whether the module at ``path`` may be one of ``imported`` (``_imported_names``): where the
    project's top-level folders are is not known, so every suffix of its dotted path counts
    (``a/b/c.py``: ``c``, ``b.c``, ``a.b.c``, and any name ending in ``.c``)."""
    parts = path[: -len(".py")].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    names = {".".join(parts[k:]) for k in range(len(parts))} - {""}
    if not names:
        return True  # the project's own __init__.py
    return any(name in imported or any(i.endswith("." + name) for i in imported) for name in names)


def plan_run(
    store: Store, conn: Any, run: dict[str, Any], current: dict[str, str], additions: dict[str, hindsight.Additions],
    base_version: str, iterations: tuple[int | None, int | None] | None, workers: int, force: bool,
    workers_given: bool = True,
) -> RunPlan:
    """What replaying ``run`` with the added statements takes: the code, the probed loops, and the
    segments of the main loop for up to ``workers`` workers. Unless the user chose the count
    (``workers_given``), a worker is started only for a segment that does more work than its start."""
    version = run.get("code_version")
    if not version:
        raise ReplayError(f"run {run['run_id']} has no code version (its code snapshot failed)")
    files: dict[str, str] = {}
    new_statements: dict[str, list[tuple[int, int]]] = {}
    shared_lines: dict[str, list[int]] = {}
    for path, add in additions.items():
        target = codeversion.read_file(store, version, path) if version != base_version else None
        if target is None:
            # With --force, the current code, changed lines and all; an older version gets only the
            # new statements placed into its own code, whatever else changed since.
            files[path] = current[path]
            new_statements[path] = add.statements
            shared_lines[path] = add.shared_lines
            continue
        try:
            patched = hindsight.place(current[path], add.statements, target.decode())
        except hindsight.PlacementError as e:
            raise ReplayError(f"{path}: {e}") from None
        files[path] = patched
        new_statements[path] = _new_ranges(target.decode(), patched)
    for path, ranges in new_statements.items():
        _check_hl_is_imported(path, files[path], ranges)
    all_sources = {**{p: b.decode(errors="replace") for p, b in codeversion.read_files(store, version).items() if p.endswith(".py")}, **files}
    info = run.get("info") or {}
    names = _handsfree_names(all_sources, new_statements, run.get("script")) if info.get("handsfree") else None
    probed = hindsight.probed_loops(all_sources, new_statements, names)
    # The ranks of a distributed launch must make the same choices (or one waits for another in
    # a collective): what any rank's record could not hold, and the iterations all of them ran.
    launch = launch_runs(conn, run)
    ranks = list(launch.values()) or [run]
    # Loops whose checkpoints could not hold a local they change run instead of being skipped.
    cannot_skip = {loop for r in ranks for loop in (r.get("info") or {}).get("unrestorable_loops") or []} - probed
    probed |= cannot_skip
    run_all_blocks = hindsight.reads_gradients(all_sources, new_statements)
    run_by_new_code = hindsight.loops_new_code_runs(all_sources, new_statements, names)
    total = min(_recorded_iterations(conn, r) for r in ranks)
    if total == 0 and run.get("status") in ("killed", "failed") and not info.get("main_loop"):
        # (A script without a main loop runs whole; this one stopped before it reached its own.)
        how = "was killed" if run["status"] == "killed" else "failed"
        raise ReplayError(f"run {run['run_id']} {how} before its main loop began: there is nothing to replay "
                          "(run the script again)")
    lo, hi = 0, total
    if iterations is not None:
        lo = iterations[0] if iterations[0] is not None else 0
        hi = iterations[1] if iterations[1] is not None else total
        if lo >= hi:
            raise ReplayError(f"--iterations {lo}:{hi} is empty: A:B replays iterations A to B-1, so A must be less than B")
        if 0 <= lo < total < hi:
            hi = total  # (as a Python slice: up to the run's last iteration)
        if not (0 <= lo < hi <= max(total, 1)):
            raise ReplayError(f"--iterations {lo}:{hi} is outside run {run['run_id']}'s main loop (0:{total})")
    common = common_checkpoints(conn, run, launch)
    rows = keep_checkpoints(checkpoint_rows(conn, run["id"]), common)
    checkpointed = sorted(i for i, blocks in rows.items() if ITERATION_END in blocks)
    plan = RunPlan(run["run_id"], run["id"], run.get("script") or "", version, files, new_statements, probed, (lo, hi), total, checkpointed,
                   shared_lines=shared_lines)
    plan.run_by_new_code = run_by_new_code
    plan.common_checkpoints = sorted([i, b] for i, b in common) if common is not None else None
    plan.main_loop = info.get("main_loop")
    if plan.main_loop is None:  # recorded before runs kept its name: the loop of the values logged in it
        first = conn.execute("SELECT loops FROM contexts WHERE run=? AND iteration IS NOT NULL LIMIT 1", (run["id"],)).fetchone()
        if first:
            plan.main_loop = json.loads(first[0])[0][0]
    graph_loops = {loop for r in ranks for loop in (r.get("info") or {}).get("graph_loops") or []} - plan.probed
    if graph_loops and hindsight.main_loop_calls_backward(all_sources, plan.main_loop, names):
        plan.probed |= graph_loops
    else:
        graph_loops = set()
    if not info.get("handsfree") and any(
        "print(" in "\n".join(files[path].splitlines()[lo - 1:hi]) for path, ranges in new_statements.items() for lo, hi in ranges
    ):
        plan.notes.append("a new print(...) shows nothing here: a replay keeps what prints print only for runs "
                          "recorded with `hindlog run`; log the value with hl.log(...) instead")
    if hindsight.writes_unstored_output(files, new_statements):
        plan.notes.append("a new statement writes through a logger or a stream (log.info, sys.stdout.write, print(..., "
                          "file=...)): it runs, but a replay stores only what new print(...) calls print and hl.log(...) logs")
    if hindsight.draws_random_numbers(files, new_statements):
        plan.draws_random = True
        plan.notes.append("a new statement draws random numbers: it draws what the run would have drawn next, and the "
                          "replay sets the run's generators back after it, so the run goes on as recorded (a fresh run "
                          "of the new code would draw otherwise from there on)")
    if run_all_blocks:
        plan.run_all_blocks = True
        plan.notes.append("a new statement reads gradients, which checkpoints do not hold: the nested loops run")
    elif hindsight.main_loop_reads_gradients(all_sources, plan.main_loop, names):
        run_all_blocks = plan.run_all_blocks = True
        plan.notes.append("the recorded code reads gradients after its nested loops (a logged gradient norm), and "
                          "checkpoints do not hold them: the nested loops run")
    if graph_loops:
        plan.notes.append(f"loop {', '.join(sorted(graph_loops))} leaves tensors with their autograd graph (log-probabilities "
                          "for a backward() after it), which a checkpoint cannot hold, and the main loop's own code calls "
                          "backward(): it runs instead of being skipped")
    if cannot_skip:
        plan.notes.append(f"loop {', '.join(sorted(cannot_skip))} changes a local its checkpoints could not hold "
                          "(hindlog warned when it recorded): it runs instead of being skipped")
    plan.unrestorable = list(dict.fromkeys(name for r in ranks for name in (r.get("info") or {}).get("unrestorable_locals") or []))
    carried = hindsight.gradients_carry_over(all_sources, plan.main_loop, names)
    if carried is not None and all((r.get("info") or {}).get("gradients_at_loop_exit") is False for r in ranks):
        carried = None  # (conditions that clear them by each loop's end: none were left at one in the record)
    if carried is not None:
        run_all_blocks = plan.run_all_blocks = plan.from_start = True
        plan.notes.append(
            f"loop {carried} clears the gradients only under a condition (gradient accumulation), so those of its last "
            "steps go on into the next iteration, and checkpoints do not hold gradients: the replay runs the main loop "
            "from its first iteration, in one segment, with every nested loop")
    carried_new = hindsight.new_state_carried(files, new_statements, plan.main_loop, names)
    if carried_new and not plan.from_start:
        plan.from_start = True
        plan.notes.append(
            f"the new code carries {', '.join(carried_new)} from one iteration to the next (set before the main loop, "
            "changed in it), which no checkpoint holds: the replay runs the main loop from its first iteration, in "
            "one segment")
    if plan.unrestorable:
        plan.from_start = True
        them = "it" if len(plan.unrestorable) == 1 else "them"
        plan.notes.append(
            f"the main loop's {', '.join(plan.unrestorable)} could not be checkpointed (hindlog warned when it recorded): "
            f"the replay runs the main loop from its first iteration, in one segment, so that {them} "
            f"{'is' if them == 'it' else 'are'} as the record had {them}")
    _estimate(plan, run, rows, workers, worker_start=0.0 if workers_given else (info.get("preloop_seconds") or 0.0))
    if not rows and total:
        plan.notes.append("this run has no checkpoints: every iteration is re-executed from the start")
    elif not run_all_blocks and set(info.get("block_seconds") or {}) - probed:
        bare = sum(1 for i in range(lo, hi) if not any(b != ITERATION_END for b in rows.get(i, {})))
        if bare:
            plan.notes.append(
                f"{bare} of the {hi - lo} iterations {'has' if bare == 1 else 'have'} no checkpoint of their nested loops (the record's overhead "
                "budget spaced them, or a write still ran): those iterations run their nested loops"
            )
    return plan


def _handsfree_names(
    sources: dict[str, str], new_statements: dict[str, list[tuple[int, int]]], script: str | None
) -> dict[str, dict[int, str]]:
    """The loop names hands-free instrumentation gives, as the replay worker will give them."""
    from . import instrument

    out = {}
    for path, src in sources.items():
        skip = {ln for lo, hi in new_statements.get(path, []) for ln in range(lo, hi + 1)}
        try:
            out[path] = instrument.loop_names(src, is_script=(path == script), skip_lines=skip, read=sources.get)
        except SyntaxError:
            continue
    return out


def _check_hl_is_imported(path: str, source: str, ranges: list[tuple[int, int]]) -> None:
    """A new statement that calls ``hl.log`` in a file that binds no ``hl`` (a script recorded
    with ``hindlog run``, which needs no import) would fail in every segment with a NameError:
    said before the replay starts."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return
    lines = {line for lo, hi in ranges for line in range(lo, hi + 1)}
    uses = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == "hl" and n.lineno in lines]
    if not uses:
        return
    bound = any(isinstance(n, ast.Name) and n.id == "hl" and isinstance(n.ctx, ast.Store) for n in ast.walk(tree)) or any(
        (alias.asname or alias.name.split(".")[0]) == "hl"
        for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for alias in n.names)
    if not bound:
        raise ReplayError(f"{path}:{uses[0]} calls hl, which {path} does not import: add `import hindlog as hl` to it "
                          "(a script recorded with `hindlog run` needs it only for the new statements)")


def _new_ranges(old: str, patched: str) -> list[tuple[int, int]]:
    return hindsight.find_additions("", old, patched).statements


def default_workers(run: dict[str, Any], cores: int | None = None, gpus: list[str] | None = None) -> int:
    """One worker per GPU for a run that trained on a GPU, else as many workers as the cores
    hold at the record's thread count per process.

    More would not be faster: each worker computes with the record's thread count (see
    ``_worker_env``), and workers that share cores slow each other down."""
    if _used_gpu(run):
        gpus = visible_gpus() if gpus is None else gpus
        if gpus:
            return len(gpus)
    cores = cores or usable_cores()
    return max(1, cores // recorded_threads(run))


def _estimate(plan: RunPlan, run: dict[str, Any], rows: dict[int, dict[int, Any]], workers: int, worker_start: float = 0.0) -> None:
    """Per-iteration costs from the recorded timings, and segments of about equal cost.

    Every worker first repeats the script up to its main loop, ``worker_start`` seconds, on
    cores the other workers use for their segments meanwhile. A segment that costs less than
    that is not worth a worker of its own: fewer, longer segments are planned instead (with 0,
    the main loop is split into ``workers`` segments wherever checkpoints allow).
    """
    info = run.get("info") or {}
    iteration_seconds: list[float] = info.get("iteration_seconds") or []
    block_seconds: dict[str, float] = info.get("block_seconds") or {}
    total = max(plan.total_iterations, 1)
    preloop = info.get("preloop_seconds") or 0.0
    lo, hi = plan.iterations
    mean_iter = (sum(iteration_seconds) / len(iteration_seconds)) if iteration_seconds else 1.0
    skippable = {} if plan.run_all_blocks else {
        name: secs / total for name, secs in block_seconds.items() if name not in plan.probed
    }

    def cost(i: int) -> float:
        t = iteration_seconds[i] if i < len(iteration_seconds) else mean_iter
        blocks = rows.get(i, {})
        saved = sum(skippable.get(loop, 0.0) for b, (loop, _m) in blocks.items() if b != ITERATION_END and loop)
        return max(t - saved, 0.0) + 0.002 * len(blocks)

    # Segment starts must follow a checkpointed iteration (or be the first iteration).
    starts_ok = {lo} | {i + 1 for i, blocks in rows.items() if ITERATION_END in blocks and lo < i + 1 < hi}
    costs = {i: cost(i) for i in range(lo, hi)}
    # Iterations before lo (back to the checkpoint before it) are re-run too.
    anchor = max([i + 1 for i in plan.checkpointed if i + 1 <= lo] + [0])
    if plan.from_start:
        starts_ok, anchor = {lo}, 0
    warmup = sum(iteration_seconds[i] if i < len(iteration_seconds) else mean_iter for i in range(anchor, lo))
    # Each cut goes at the allowed start that comes closest to an equal share of what is left
    # (not only at one past the share: with sparse checkpoints that may not exist).
    segments: list[Segment] = []
    start = lo
    asked = workers
    if worker_start > 0:
        workers = max(1, min(workers, int(sum(costs.values()) // worker_start)))
    fewer = workers < asked and len(starts_ok) > 1  # fewer than asked, for want of work worth their start
    while len(segments) < workers - 1:
        left = sum(costs[i] for i in range(start, hi))
        share = left / (workers - len(segments))
        best, best_acc, acc, unworthy = None, 0.0, 0.0, False
        for i in range(start + 1, hi):
            acc += costs[i - 1]
            if i not in starts_ok or not 0.0 < acc < left:
                continue
            if acc < worker_start or left - acc < worker_start:
                unworthy = True
            elif best is None or abs(acc - share) < abs(best_acc - share):
                best, best_acc = i, acc
        if best is None:
            fewer = fewer or unworthy
            break
        segments.append(Segment(start, best, best_acc))
        start = best
    segments.append(Segment(start, hi, sum(costs[i] for i in range(start, hi))))
    if fewer and len(segments) < asked:
        plan.notes.append(
            f"{len(segments)} worker{'s' if len(segments) > 1 else ''} of the {asked} this machine fits: each worker first runs "
            f"the script up to its main loop ({worker_start:.1f}s in the record), and a further one would have less of the "
            "main loop left to run than that; --workers N splits the main loop anyway"
        )
    segments[0].estimate += warmup
    plan.segments = segments
    plan.estimate = preloop + max(s.estimate for s in segments)
    if run.get("started") and run.get("ended"):
        from .query import run_duration

        # The run's duration counts from its first hindlog call; the estimate, like a re-run, from
        # the process's start (imports and data loading before the run began included).
        plan.full_rerun = max(run_duration(run) or 0.0, preloop + sum(iteration_seconds))
        if plan.total_iterations == 0:
            plan.estimate = plan.full_rerun  # no main loop: all of it runs again


def describe_plan(plan: RunPlan) -> str:
    lines = [f"run {plan.run_id} (code {plan.code_version[:12]})"]
    for path, ranges in plan.new_statements.items():
        src = plan.files[path].splitlines()
        ends: dict[int, int] = {}  # by first line: ``a; b`` are two statements on one line
        for lo, hi in ranges:
            ends[lo] = max(ends.get(lo, hi), hi)
        for lo, hi in sorted(ends.items()):
            lines.append(f"  + {path}:{lo}: {src[lo - 1].strip()}" + (" ..." if hi > lo else ""))
    if plan.total_iterations == 0:
        # Nothing to skip or split: the recorded run entered no main loop.
        lines.append("  the run has no main loop: the whole script runs once")
    else:
        if plan.run_all_blocks:
            lines.append("  nested loops that must run: all")
        elif not plan.checkpointed:
            lines.append("  nested loops that must run: all (without checkpoints, none can be skipped)")
        else:
            must_run = sorted(plan.probed - {plan.main_loop})
            lines.append(f"  nested loops that must run: {', '.join(must_run) or 'none (all are skipped)'}")
        if plan.run_by_new_code:
            lines.append(f"  loops the new statements run themselves: {', '.join(sorted(plan.run_by_new_code))}")
        lines.append(f"  iterations {plan.iterations[0]}:{plan.iterations[1]} of {plan.total_iterations}; "
                     f"checkpointed: {len(plan.checkpointed)}")
        lines.append("  segments: " + ", ".join(f"{s.start}:{s.end}" for s in plan.segments))
    if any(g is not None for g in plan.gpus):
        lines.append("  GPUs: " + ", ".join(f"{s.start}:{s.end} on {g}" for s, g in zip(plan.segments, plan.gpus)))
    full = f"{plan.full_rerun:.1f}s" if plan.full_rerun else "unknown"
    lines.append(f"  estimated time: {plan.estimate:.1f}s (a full re-run: {full})")
    lines.extend(f"  note: {n}" for n in plan.notes)
    return "\n".join(lines)


# ----------------------------------------------------------------- running


def _arg_env(args: dict[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in args.items():
        if isinstance(v, bool):
            out[f"HINDLOG_SET_{k}"] = "1" if v else "0"
        elif isinstance(v, (list, dict)) or v is None:
            out[f"HINDLOG_SET_{k}"] = json.dumps(v)
        else:
            out[f"HINDLOG_SET_{k}"] = str(v)
    return out


def initial_generators_spec(store: Store, run: dict[str, Any]) -> dict[str, Any]:
    """For a worker's spec: the random generators' states the record had when the script
    imported hindlog (``state.INITIAL_GENERATORS``), if kept and readable."""
    info = run.get("info") or {}
    out: dict[str, Any] = {}
    if info.get("torch_initial_seed") is not None:
        out["torch_initial_seed"] = info["torch_initial_seed"]
    if info.get("initial_generators"):
        try:
            import base64

            out["initial_generators"] = base64.b64encode(store.objects.get(info["initial_generators"])).decode()
        except Exception:  # noqa: BLE001 - (damaged): fresh generators then
            pass
    return out


def prepare_scratch(store: Store, version: str, files: dict[str, str], scratch: Path, inputs_before: float | None = None) -> Path:
    """The recorded code (with the patched files) in ``scratch``, and the project's other files
    (data, ignored folders) linked in so the script finds them.

    Only files older than ``inputs_before`` (the run's start) are linked: they were the run's
    inputs. Files the run (or anything later) wrote are left out, so a replayed script that
    writes its outputs again writes them into the scratch directory, never into the project;
    the workers' ``scratchguard`` keeps writes through the links in the scratch directory too."""
    codeversion.materialize(store, version, scratch)
    for rel, src in files.items():
        target = scratch / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(src)
    cutoff = inputs_before if inputs_before is not None else float("inf")
    for entry in store.root.iterdir():
        if entry.name in (".git", ".hindlog") or entry.resolve() == store.path:
            continue
        _link_inputs(entry, scratch / entry.name, cutoff)
    return scratch


def _regular_files(root: Path) -> dict[str, tuple[int, int]]:
    """The regular files under ``root`` (relative paths) with their sizes and modification times;
    not those in linked folders (the project's own) nor in ``__pycache__``."""
    out: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):  # (symlinked folders are not entered)
        dirnames[:] = [d for d in dirnames if d != "__pycache__" and d != OUTSIDE_BACKUPS]
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                out[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns)
    return out


def written_files(store: Store, run: dict[str, Any], scratch: Path, before: dict[str, tuple[int, int]]) -> tuple[list[str], list[str]]:
    """The files the replayed code wrote in ``scratch`` (new or changed since ``before``), and the
    others it wrote that the record wrote too: the project has them at the same path,
    written while the run ran (the run's own model files, say, which a replay that skipped
    loops may not even have written whole)."""
    started = run.get("started") or 0.0
    ended = run.get("ended") or float("inf")
    out: list[str] = []
    again: list[str] = []
    for rel, signature in sorted(_regular_files(scratch).items()):
        if before.get(rel) == signature or os.path.basename(rel).startswith(".hindlog-"):
            continue
        try:
            if started <= os.lstat(store.root / rel).st_mtime <= ended:
                again.append(rel)
                continue
        except OSError:
            pass  # not in the project
        out.append(rel)
    return out, again


def keep_outputs(store: Store, run_id: str, scratch: Path, written: list[str]) -> tuple[Path, list[str]]:
    """Move ``written`` (``written_files``) from ``scratch`` to ``.hindlog/outputs/RUN/``, under
    the same relative paths: a hindsight ``savefig`` or ``np.save`` is the user's to keep, and
    the scratch copy is removed. Not into the project, where they would overwrite what the run
    wrote.
    A file of an earlier replay of the run at the same path is replaced. Returns the folder and
    the paths moved."""
    dest = store.path / "outputs" / run_id
    kept = []
    for rel in written:
        try:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(scratch / rel), str(target))
            kept.append(rel)
        except OSError as e:
            warnings.warn(f"hindlog: could not keep {rel}, which the replay of run {run_id} wrote: {e}", RuntimeWarning, stacklevel=2)
    return dest, kept


def _link_inputs(src: Path, dst: Path, cutoff: float) -> None:
    try:
        if src.is_dir() and not src.is_symlink():
            if dst.exists() and not dst.is_dir():
                return
            if not dst.exists() and _newest_mtime(src) < cutoff:
                dst.symlink_to(src)  # nothing in it is newer than the run: link it whole
                return
            dst.mkdir(exist_ok=True)
            for child in src.iterdir():
                _link_inputs(child, dst / child.name, cutoff)
        elif not dst.exists() and not dst.is_symlink() and src.lstat().st_mtime < cutoff:
            dst.symlink_to(src)
    except OSError:
        pass


def _newest_mtime(directory: Path) -> float:
    newest = directory.lstat().st_mtime
    for dirpath, dirnames, filenames in os.walk(directory):
        for name in filenames + dirnames:
            try:
                newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
            except OSError:
                continue
    return newest


#: ``python -m MODULE``, but finding MODULE under ``$HINDLOG_MODULE_DIR`` instead of the current
#: directory (resume runs in the recorded directory, with the recorded code elsewhere).
_RUN_MODULE_FROM = ("import os, runpy, sys; sys.path[0] = os.environ.pop('HINDLOG_MODULE_DIR'); "
                    "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)")


def worker_command(run: dict[str, Any], script_path: Path, module_dir: bool = False) -> list[str]:
    """How a worker starts the recorded script (its arguments follow): as it was started, by
    ``hindlog run`` or not, and as a file or a module (``python -m``, found from the worker's
    directory, the scratch copy of the recorded one; ``module_dir``: from
    ``$HINDLOG_MODULE_DIR``)."""
    info = run.get("info") or {}
    module = info.get("module")
    if info.get("handsfree"):
        command = [sys.executable, "-m", "hindlog.cli", "run"]
        return [*command, "-m", module] if module else [*command, str(script_path)]
    if module:
        return [sys.executable, "-c", _RUN_MODULE_FROM, module] if module_dir else [sys.executable, "-m", module]
    return [sys.executable, str(script_path)]


def _worker_cwd(store: Store, run: dict[str, Any], scratch: Path) -> Path:
    """Where a worker runs: the scratch copy of the directory the run was recorded in, so that
    the script's relative paths resolve as they did (the scratch root if that was elsewhere)."""
    cwd = run.get("cwd")
    if not cwd:
        return scratch
    try:
        rel = Path(cwd).resolve().relative_to(store.root)
    except (ValueError, OSError):
        return scratch
    target = scratch / rel
    try:
        target.mkdir(parents=True, exist_ok=True)
        if target.resolve().is_relative_to(scratch.resolve()):
            return target
    except OSError:
        pass
    return scratch


#: The variables PyTorch reads its intra-op thread count from.
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def recorded_threads(run: dict[str, Any]) -> int:
    """The intra-op thread count the record computed with (1 without torch); workers keep it."""
    return max(1, int((run.get("info") or {}).get("threads") or 1))


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (a container or ``taskset`` narrows
    it), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _used_gpu(run: dict[str, Any]) -> bool:
    """Whether the record saw a GPU (hindlog lists them only when the script imported torch)."""
    return bool((run.get("env") or {}).get("gpus"))


def visible_gpus(env: dict[str, str] | None = None) -> list[str]:
    """The GPUs a worker can be given: ``CUDA_VISIBLE_DEVICES``'s entries when it is set, else
    the indices ``nvidia-smi`` lists; none when neither answers."""
    env = os.environ if env is None else env
    if "CUDA_VISIBLE_DEVICES" in env:
        ids = [g.strip() for g in env["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
        # CUDA stops reading the list at the first invalid entry ("-1" hides every GPU).
        return list(itertools.takewhile(lambda g: not g.startswith("-"), ids))
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip().isdigit()]


def gpu_for_worker(k: int, workers: int, gpus: list[str]) -> str | None:
    """The GPU worker ``k`` of ``workers`` is pinned to, round-robin; None leaves the worker
    the GPUs the replay sees. A single worker is not pinned: it runs as the record did."""
    if workers < 2 or not gpus:
        return None
    return gpus[k % len(gpus)]


def _worker_env(store: Store, run: dict[str, Any], args: dict[str, Any], spec_path: Path, scratch: Path,
                gpu: str | None = None, shared_cores: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    # Thread counts are those of the record (the recorded variables include OMP_NUM_THREADS
    # and the like when set, and the info PyTorch's count): another count changes the order
    # of float reductions, and the replayed values would no longer equal the recorded ones.
    recorded = (run.get("env") or {}).get("variables") or {}
    env.update(recorded)
    threads = (run.get("info") or {}).get("threads")
    if threads and not any(v in recorded for v in _THREAD_VARIABLES):
        env.update(dict.fromkeys(_THREAD_VARIABLES, str(threads)))
    if shared_cores and "OMP_WAIT_POLICY" not in env:
        # Workers whose threads outnumber the cores: an OpenMP thread that spins while it waits
        # for work holds a core another worker needs. Waiting passively changes no value; on
        # 2 cores it made 2 workers of 2 threads replay a CNN in 8 s instead of 20-33 s.
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    env.update(_arg_env(args))
    if "pythonpath" in (run.get("env") or {}):  # recorded since it is (older runs keep this shell's)
        pythonpath = _scratch_pythonpath(run["env"]["pythonpath"], run.get("cwd"), store.root, scratch)
        if pythonpath is None:
            env.pop("PYTHONPATH", None)
        else:
            env["PYTHONPATH"] = pythonpath
    elif (run.get("info") or {}).get("handsfree"):
        # Recorded before PYTHONPATH was, by a hindlog run that let a script in a subdirectory
        # import the project root's modules: the workers' scripts still may.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(scratch)) if p)
    env["HINDLOG_DIR"] = str(store.path)
    # The scratch copy is the project: the run's script and modules have the paths they had in
    # it, also when the run was recorded from a subdirectory.
    env["HINDLOG_ROOT"] = str(scratch)
    env["HINDLOG_SCRATCH"] = str(scratch)  # (scratchguard: its writes stay in it)
    env[ENV] = str(spec_path)
    env.pop("HINDLOG_DISABLED", None)
    if gpu is not None:
        # Workers sharing one GPU compete for it; on several GPUs each worker gets its own, and
        # the script's "cuda" (device 0) is that one.
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


def _scratch_pythonpath(recorded: str | None, cwd: str | None, root: Path, scratch: Path) -> str | None:
    """The record's ``PYTHONPATH`` for a worker: an entry inside the project names the same
    directory in the scratch copy, so that the modules imported through it are the recorded
    code (not the working tree's, nor those of a PYTHONPATH set in the shell that replays);
    a relative entry outside it becomes absolute (the worker runs elsewhere)."""
    if not recorded:
        return None
    base = Path(cwd) if cwd else root
    entries = []
    for entry in recorded.split(os.pathsep):
        path = base / (entry or ".")  # an empty entry is the current directory
        try:
            rel = path.resolve().relative_to(root.resolve())
        except (ValueError, OSError):
            entries.append(str(path))
            continue
        entries.append(str(scratch / rel))
    return os.pathsep.join(entries)


#: Each replay worker numbers the contexts it creates from its own base, this far apart.
SEGMENT_CTX_SPAN = 100_000_000


def _ctx_base(conn: Any, run: int) -> int:
    row = conn.execute("SELECT COALESCE(MAX(id), 0) FROM contexts WHERE run=?", (run,)).fetchone()
    return int(row[0]) + 1_000_000


def execute(
    store: Store, plan: RunPlan, tolerance: float = 0.0, progress: bool = True, keep_scratch: bool = False,
    keep_diverged: bool = False, locked: bool = False,
) -> RunResult:
    """Run a planned replay of one run in worker processes and collect what they found.
    ``locked``: the caller holds the run's replay lock already."""
    if locked:
        return _execute(store, plan, tolerance, progress, keep_scratch, keep_diverged)
    # Two replays of one run at once would each count the other's values as new and keep both.
    lock = store.lock(f"replay-{plan.run_id}")
    if not lock.acquire():
        return RunResult(plan.run_id, False, 0.0, refused=_busy(plan.run_id, lock))
    try:
        return _execute(store, plan, tolerance, progress, keep_scratch, keep_diverged)
    finally:
        lock.release()


def _busy(run_id: str, lock: Any) -> str:
    pid = lock.holder()
    by = f" (process {pid})" if pid else ""
    return f"another hindlog replay{by} is replaying run {run_id}; run this again when it has finished"


def _execute(
    store: Store, plan: RunPlan, tolerance: float, progress: bool, keep_scratch: bool, keep_diverged: bool,
) -> RunResult:
    t0 = time.perf_counter()
    conn = store.connect()
    try:
        run = catalog.get_run(conn, plan.run_id)
        args = catalog.run_args(conn, [plan.run]).get(plan.run, {})
        with catalog.transaction(conn):
            catalog.discard_pending(conn, [plan.run])  # left by a replay of this run that was killed before it ended
        base = _ctx_base(conn, plan.run)
        rows = keep_checkpoints(checkpoint_rows(conn, plan.run), plan.common_checkpoints)
    finally:
        conn.close()
    prefetch_in_background(prefetch_checkpoints, store.objects, restore_order(plan, rows), prefetch_budget())
    store.remove_dead_scratch(f"replay-{plan.run_id}")  # a killed replay's copy, as its pending rows above
    scratch = store.scratch_dir(f"replay-{plan.run_id}")
    # New statements set the run's random generators back after them (hindsight.isolate_new_code).
    files = {path: hindsight.isolate_new_code(src, plan.new_statements.get(path, []), plan.shared_lines.get(path, ()))
             for path, src in plan.files.items()}
    prepare_scratch(store, plan.code_version, files, scratch, inputs_before=run.get("started"))
    before = _regular_files(scratch)
    argv = run.get("argv") or [plan.script]
    script_path = scratch / plan.script
    if not script_path.exists():
        raise ReplayError(f"{plan.script} is not in the recorded code of run {plan.run_id}")
    procs: list[tuple[Segment, subprocess.Popen[bytes], Path, Path, Path]] = []
    shared_cores = len(plan.segments) * recorded_threads(run) > usable_cores()
    workers_started_ns = time.time_ns()  # files of the copy changed since are the workers'
    time.sleep(0.002)  # (a file system's coarse timestamps: the copy's files are older than that)
    for k, seg in enumerate(plan.segments):
        spec = {
            "mode": "replay",
            "run_id": plan.run_id,
            "segment": [seg.start, seg.end],
            "recorded_iterations": plan.total_iterations,
            "common_checkpoints": plan.common_checkpoints,
            "first": k == 0,
            "last": k == len(plan.segments) - 1 and seg.end >= plan.total_iterations,
            "probed": sorted(plan.probed),
            "run_all_blocks": plan.run_all_blocks,
            "restore_start": not plan.from_start,
            "tolerance": tolerance,
            "result": str(scratch / f".hindlog-result-{k}.json"),
            "progress": str(scratch / f".hindlog-progress-{k}"),
            "ctx_base": base + k * SEGMENT_CTX_SPAN,
            "record_incomplete_from": max(plan.total_iterations - 1, 0) if run.get("status") != "finished" else None,
            "new_lines": {path: [list(r) for r in ranges] for path, ranges in plan.new_statements.items()},
            "driver_pid": os.getpid(),
        }
        if "state_candidates" in (run.get("info") or {}):
            # (with what the record declared once its first iteration showed it: ``adopted_state``)
            spec["state_candidates"] = run["info"]["state_candidates"] + run["info"].get("adopted_state", [])
        else:
            spec["adopted_state"] = (run.get("info") or {}).get("adopted_state", [])
        spec.update(initial_generators_spec(store, run))
        spec_path = scratch / f".hindlog-spec-{k}.json"
        spec_path.write_text(json.dumps(spec))
        log_path = scratch / f".hindlog-worker-{k}.log"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                [*worker_command(run, script_path), *argv[1:]],
                cwd=_worker_cwd(store, run, scratch),
                env={**_worker_env(store, run, args, spec_path, scratch, plan.gpus[k] if k < len(plan.gpus) else None, shared_cores),
                     "HINDLOG_WORKERS_STARTED_NS": str(workers_started_ns)},
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        procs.append((seg, proc, Path(spec["result"]), Path(spec["progress"]), log_path))
    # `kill` (SIGTERM) of the replay stops its workers as Ctrl-C does; the workers also end
    # on their own if this process dies without stopping them (controller.follow_driver).
    restore_sigterm = None
    if threading.current_thread() is threading.main_thread():
        _stopped_by.clear()
        restore_sigterm = signal.signal(signal.SIGTERM, _interrupt)
    try:
        _wait(procs, plan, progress)
    except KeyboardInterrupt:
        for _seg, proc, *_ in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for _seg, proc, *_ in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        finished = [seg for seg, proc, result_path, *_ in procs if proc.returncode == 0 and result_path.exists()]
        rest = [seg for seg, *_ in procs if seg not in finished]
        kept, kept_diverged = [], []
        for k, (seg, _proc, result_path, *_rest) in enumerate(procs):
            if seg in finished:
                diverged_here = bool(json.loads(result_path.read_text()).get("divergences"))
                if keep_diverged or not diverged_here:
                    kept.append(k)
                if keep_diverged and diverged_here:
                    kept_diverged.append(k)

        def spans(ks: list[int]) -> str:
            return ", ".join(f"{procs[k][0].start}:{procs[k][0].end}" for k in ks)

        dropped = [k for k, (seg, *_r) in enumerate(procs) if seg in finished and k not in kept]
        try:
            # Segments that ran to their end, their values checked, are kept, once; the others'
            # values are not (not all of them were checked), and the earlier replay's stay.
            _publish(store, plan, base, len(procs), kept, kept_diverged)
            kept_said = [f"the values of {spans(kept)} are kept" + (
                f" ({spans(kept_diverged)} diverged from the record: kept with --keep-diverged, marked)" if kept_diverged else "")] if kept else []
        except (sqlite3.Error, StoreError) as e:  # the catalog locked or damaged: said, the interrupt goes on
            kept_said = [f"their values could not be stored ({e}); replay them again"] if kept else []
        if dropped:
            kept_said.append(f"{spans(dropped)} diverged from the record: their values are not kept")
        written, _again = written_files(store, run, scratch, before)
        if written:
            mark_scratch_kept(scratch)  # an unfinished replay's files replace no earlier replay's
        else:
            shutil.rmtree(scratch, ignore_errors=True)
        done = ", ".join(f"{s.start}:{s.end}" for s in finished) or "none"
        again = f"--iterations {min(s.start for s in rest)}:{max(s.end for s in rest)}" if rest else ""
        interrupted = ReplayInterrupted(
            f"replay of run {plan.run_id} interrupted. Segments finished: {done}" + "".join(f"; {k}" for k in kept_said) + "."
            + (" The values of the segments stopped midway are not kept; an earlier replay's values stay." if rest else "")
            + (f" Replay the rest with {run_flag()} {plan.run_id} {again}." if rest else "")
            + (f" The {len(written)} files it wrote are in {scratch} (delete it when done)." if written else "")
        )
        interrupted.signal = _stopped_by.pop() if _stopped_by else signal.SIGINT
        raise interrupted from None
    finally:
        if restore_sigterm is not None:
            signal.signal(signal.SIGTERM, restore_sigterm)
    result = RunResult(plan.run_id, True, 0.0)
    diverged: list[int] = []
    kept: list[int] = []  # the segments whose values are published
    for k, (seg, proc, result_path, _progress, log_path) in enumerate(procs):
        data = json.loads(result_path.read_text()) if result_path.exists() else None
        last = k == len(procs) - 1 and seg.end >= plan.total_iterations
        if data is not None and (proc.returncode == 0 or (run.get("status") == "failed" and last)):
            kept.append(k)
        if proc.returncode != 0 and data is not None and run.get("status") == "failed" and k == len(procs) - 1 \
                and seg.end >= plan.total_iterations:
            # The recorded run failed: its last segment fails again where it did, having
            # replayed everything before. That is the replay of that run, not a failure of it.
            tail = log_path.read_text(errors="replace").strip().splitlines() if log_path.exists() else []
            result.recorded_failure = f"exit status {proc.returncode}" + (f" ({tail[-1].strip()})" if tail else "")
        elif proc.returncode != 0 or data is None:
            tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
            if proc.returncode is not None and proc.returncode < 0:
                # Ended by a signal, with nothing written: the memory limit's killer, most often.
                tail = (tail.rstrip() + "\n" if tail.strip() else "") + _killed_by(-proc.returncode)
            result.ok = False
            result.failed_segments.append((seg.start, seg.end, tail))
            continue
        result.outside.extend(p for p in (data.get("files_outside") or {}) if p not in result.outside)
        result.checked += data["checked"]
        result.stored += data["stored"]
        result.past_record += data.get("past_record", 0)
        result.printed_checked += data.get("printed_checked", 0)
        result.printed_differ += data.get("printed_differ", 0)
        result.printed_examples.extend(data.get("printed_examples", [])[: max(0, 3 - len(result.printed_examples))])
        result.worker_warnings.extend(w for w in data.get("warnings", []) if w not in result.worker_warnings)
        result.divergences.extend(data["divergences"])
        if data["divergences"]:
            diverged.append(k)
        result.skipped_blocks += data["skipped_blocks"]
        result.run_blocks += data["run_blocks"]
        result.restore_seconds += data.get("restore_seconds", 0.0)
    if len(procs) > 1:
        _files_shared_by_workers(procs, result, diverged)
    if diverged and not keep_diverged:
        # A segment whose recomputed values differ from the recorded ones did not run from the
        # record's state: the new values it computed cannot be trusted, and are not kept (an
        # earlier replay's values of the same statements stay).
        # (``_publish`` drops them.)
        result.dropped_diverged = _pending_values(store, plan.run, [(base + k * SEGMENT_CTX_SPAN, base + (k + 1) * SEGMENT_CTX_SPAN) for k in diverged])
        result.stored -= result.dropped_diverged
        kept = [k for k in kept if k not in diverged]
    result.replaced = _publish(store, plan, base, len(procs), kept, [k for k in diverged if k in kept], tolerance, result.stale)
    written, result.outputs_again = written_files(store, run, scratch, before)
    if (scratch / OUTSIDE_BACKUPS).is_dir():
        # What the files outside the project held before the replay wrote them (another run's results).
        backups = store.path / "outside-backups" / f"{plan.run_id}-{time.strftime('%Y%m%d-%H%M%S')}"
        backups.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(scratch / OUTSIDE_BACKUPS), str(backups))
        result.outside_backups = str(backups)
    if result.ok and not result.divergences and not result.shared_reads:
        # A file several workers wrote holds the last one's iterations only (a best model saved
        # by the first segment after the second's better one): not kept as the replay's output.
        whole = [rel for rel in written if rel not in result.outputs_shared]
        outputs_dir, result.outputs = keep_outputs(store, plan.run_id, scratch, whole)
        result.outputs_dir = str(outputs_dir) if result.outputs else None
    elif written:
        # A failed or diverged replay's files are left in its copy: they replace no earlier
        # replay's good ones.
        result.outputs, result.outputs_dir = written, str(scratch)
        keep_scratch = True
    result.seconds = time.perf_counter() - t0
    if not keep_scratch and result.ok:
        shutil.rmtree(scratch, ignore_errors=True)
    else:
        mark_scratch_kept(scratch)
        result.scratch = str(scratch)
    return result


def restore_order(plan: RunPlan, rows: dict[int, dict[int, tuple[str | None, str]]]) -> list[str]:
    """The checkpoints the workers will restore, first ones first: each segment's starting
    checkpoint, then its nested loops' checkpoints in order, the segments taken in turn."""
    per_segment = []
    for seg in plan.segments:
        order = []
        start = [it for it in rows if it < seg.start and ITERATION_END in rows[it]]
        if seg.start > 0 and start:
            order.append(rows[max(start)][ITERATION_END][1])
        if not plan.run_all_blocks:
            order += [rows[i][b][1] for i, b in skippable_blocks(rows, seg.start, seg.end, plan.probed)]
        per_segment.append(order)
    return [m for group in itertools.zip_longest(*per_segment) for m in group if m is not None]


#: The signal that stopped the replay, when it was not Ctrl-C: the exit status names it.
_stopped_by: list[int] = []


def _interrupt(signum: int, frame: Any) -> None:
    _stopped_by.append(signum)
    raise KeyboardInterrupt


def _pending_values(store: Store, run: int, spans: list[tuple[int, int]]) -> int:
    """How many values replay workers stored, not yet published, in these context-id spans
    (one per segment); where a replayed line was printed is not counted as a value."""
    conn = store.connect()
    try:
        return sum(
            conn.execute("SELECT COUNT(*) FROM records WHERE name=? AND run=? AND source=? AND ctx>=? AND ctx<?",
                         (name, run, catalog.SOURCE_PENDING, lo, hi)).fetchone()[0]
            # Name by name, through the (name, run) index.
            for name, text in conn.execute("SELECT id, name FROM names").fetchall() if text != catalog.STDOUT_AT
            for lo, hi in spans
        )
    finally:
        conn.close()


def _publish(store: Store, plan: RunPlan, base: int, segments: int, kept: list[int], diverged: list[int],
             tolerance: float = 0.0, stale: dict[str, int] | None = None) -> int:
    """Make the values of the segments in ``kept`` visible, in one transaction: those that ran
    to their end, their recomputed values checked. The others' values are dropped. Those of a
    kept segment in ``diverged`` (kept by ``--force``) are marked as such, for queries to warn.

    A name's new values replace the earlier replays' values of that name over the kept
    segments' iterations (and outside the loops, where it has new values there), so that
    replaying the same statements again does not duplicate them, and a changed statement (a
    print made conditional) leaves none of its former version's values there; where no segment
    was kept, the earlier values stay. Where a value it replaces differs from the new one (beyond
    ``tolerance``), the statement that logs the name changed since: ``stale`` gets the count of
    its earlier values outside the iterations replayed, which stay (the CLI says so). Returns
    how many earlier values were replaced."""
    # Name by name, through the (name, run) index: a single correlated DELETE compared every old
    # value with every new one and took 3 s for 2,300 values replayed twice. CROSS JOIN keeps
    # records as the outer loop; left to itself SQLite scanned contexts first, for each one all
    # records of the name (12 s).
    spans = [(plan.segments[k].start, plan.segments[k].end) for k in kept]
    in_kept = " OR ".join(["(c.iteration>=? AND c.iteration<?)"] * len(spans)) or "0"
    span_params = [v for span in spans for v in span]
    dropped_spans = [(base + k * SEGMENT_CTX_SPAN, base + (k + 1) * SEGMENT_CTX_SPAN) for k in range(segments) if k not in kept]
    replaced = 0
    conn = store.connect()
    try:
        with catalog.transaction(conn):
            for lo, hi in dropped_spans:
                conn.execute("DELETE FROM records WHERE run=? AND source=? AND ctx>=? AND ctx<?",
                             (plan.run, catalog.SOURCE_PENDING, lo, hi))
            top = base + segments * SEGMENT_CTX_SPAN
            for name, text in conn.execute("SELECT id, name FROM names").fetchall():
                mine = [name, plan.run, catalog.SOURCE_PENDING, base, top]
                pending = "r.name=? AND r.run=? AND r.source=? AND r.ctx>=? AND r.ctx<?"
                if not conn.execute(f"SELECT EXISTS (SELECT 1 FROM records r WHERE {pending})", mine).fetchone()[0]:
                    continue
                new_outside = conn.execute(
                    f"SELECT EXISTS (SELECT 1 FROM records r CROSS JOIN contexts c ON c.run=r.run AND c.id=r.ctx "
                    f"WHERE {pending} AND c.iteration IS NULL)", mine,
                ).fetchone()[0]
                if stale is not None and kept and not text.startswith("@stdout") and \
                        _statement_changed(conn, name, plan.run, base, top, tolerance):
                    # Its earlier values outside the iterations replayed now stay: they may be wanted,
                    # and a value that varies from run to run (a time) would read as a change.
                    left = conn.execute(
                        "SELECT COUNT(*) FROM records r CROSS JOIN contexts c ON c.run=r.run AND c.id=r.ctx"
                        " WHERE r.name=? AND r.run=? AND r.source IN (?, ?)"
                        f" AND NOT ((c.iteration IS NOT NULL AND ({in_kept})) OR (? AND c.iteration IS NULL))",
                        [name, plan.run, catalog.SOURCE_REPLAY, catalog.SOURCE_REPLAY_DIVERGED, *span_params, 1 if new_outside else 0],
                    ).fetchone()[0]
                    if left:
                        stale[text] = left
                dropped = conn.execute(
                    "DELETE FROM records WHERE rowid IN ("
                    " SELECT r.rowid FROM records r CROSS JOIN contexts c ON c.run=r.run AND c.id=r.ctx"
                    " WHERE r.name=? AND r.run=? AND r.source IN (?, ?)"
                    f" AND ((c.iteration IS NOT NULL AND ({in_kept})) OR (? AND c.iteration IS NULL)))",
                    [name, plan.run, catalog.SOURCE_REPLAY, catalog.SOURCE_REPLAY_DIVERGED, *span_params, 1 if new_outside else 0],
                ).rowcount
                for k in diverged:
                    lo = base + k * SEGMENT_CTX_SPAN
                    conn.execute(f"UPDATE records SET source=? WHERE rowid IN (SELECT r.rowid FROM records r WHERE {pending})",
                                 [catalog.SOURCE_REPLAY_DIVERGED, name, plan.run, catalog.SOURCE_PENDING, lo, lo + SEGMENT_CTX_SPAN])
                conn.execute(f"UPDATE records SET source=? WHERE rowid IN (SELECT r.rowid FROM records r WHERE {pending})",
                             [catalog.SOURCE_REPLAY, *mine])
                if text != catalog.STDOUT_AT:  # where a replayed line was printed: not a value of its own
                    replaced += dropped
    finally:
        conn.close()
    return replaced


def _gone_script_advice(store: Store, rel: str) -> str:
    """For a script that is gone: its runs, and how to get it back to replay them."""
    if not store.exists():
        return ""
    conn = store.connect()
    try:
        recorded = catalog.list_runs(conn, rel)
    finally:
        conn.close()
    if not recorded:
        return ""
    latest = recorded[-1]
    version = latest.get("code_version") or ""
    back = (f" (`git show {version[:12]}:{rel} > {rel}` restores the latest run's version)"
            if latest.get("code_kind") == "git" and version else "")
    return (f"; {len(recorded)} run{'s' if len(recorded) != 1 else ''} of it {'were' if len(recorded) != 1 else 'was'} "
            f"recorded (renamed or removed since?): put it back{back}, add the statements to it and replay it to replay them")


def _statement_changed(conn: Any, name: int, run: int, base: int, top: int, tolerance: float) -> bool:
    """Whether a value that an earlier replay stored for ``name`` differs (beyond ``tolerance``)
    from the value this replay's workers (contexts ``base`` to ``top``) stored in its place: the
    same loop context, the same place among the name's values there."""
    by_context = "SELECT c.loops, r.kind, r.value FROM records r CROSS JOIN contexts c ON c.run=r.run AND c.id=r.ctx WHERE r.name=? AND r.run=?"
    new: dict[str, list[tuple[int, Any]]] = {}
    for loops, kind, value in conn.execute(f"{by_context} AND r.source=? AND r.ctx>=? AND r.ctx<? ORDER BY r.rowid",
                                           (name, run, catalog.SOURCE_PENDING, base, top)):
        new.setdefault(loops, []).append((kind, value))
    old: dict[str, list[tuple[int, Any]]] = {}
    for loops, kind, value in conn.execute(f"{by_context} AND r.source IN (?, ?) ORDER BY r.rowid",
                                           (name, run, catalog.SOURCE_REPLAY, catalog.SOURCE_REPLAY_DIVERGED)):
        if loops in new:
            old.setdefault(loops, []).append((kind, value))
    for loops, before in old.items():
        for (old_kind, old_value), (new_kind, new_value) in zip(before, new[loops]):
            try:
                if not equal(decode(old_kind, old_value), decode(new_kind, new_value), tolerance):
                    return True
            except Exception:  # a value that does not decode: not evidence either way
                continue
    return False


def _wait(procs: list[Any], plan: RunPlan, progress: bool) -> None:
    total = plan.iterations[1] - plan.iterations[0]
    started = time.perf_counter()
    show = progress and sys.stderr.isatty()
    while any(p.poll() is None for _s, p, *_ in procs):
        if show:
            done = 0
            for seg, proc, _r, progress_path, _l in procs:
                if proc.poll() is not None:
                    done += seg.end - seg.start
                    continue
                try:
                    done += max(int(progress_path.read_text()) - seg.start, 0)
                except (OSError, ValueError):
                    pass
            elapsed = time.perf_counter() - started
            left = (elapsed / done * (total - done)) if done else float("nan")
            bar = "#" * int(30 * done / max(total, 1))
            sys.stderr.write(f"\r  replay {plan.run_id}: [{bar:<30}] {done}/{total} iterations, ~{left:.0f}s left ")
            sys.stderr.flush()
        running = next((p for _s, p, *_ in procs if p.poll() is None), None)
        if running is not None:
            try:  # returns as soon as it exits: no polling delay at the end of a replay
                running.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
    if show:
        sys.stderr.write("\r" + " " * 100 + "\r")


def replay(
    script: str | None = None,
    runs: list[str] | None = None,
    all_runs: bool = False,
    where: str | None = None,
    iterations: tuple[int | None, int | None] | None = None,
    workers: int | None = None,
    dry_run: bool = False,
    force: bool = False,
    tolerance: float = 0.0,
    store: str | os.PathLike[str] | Store | None = None,
    progress: bool = True,
    on_plans: Callable[[ReplayReport], None] | None = None,
    keep_diverged: bool = False,
) -> ReplayReport:
    """Replay recorded runs of ``script`` with the log statements added since they were recorded.

    ``force``: replay the current code even where it changed by more than added statements;
    ``keep_diverged``: keep the new values of segments whose recomputed values differ from the
    record's (marked, and warned of wherever they are read). ``on_plans`` is called with the report once the plans are made, before anything runs (the
    CLI prints them then, not after a long replay)."""
    st = store if isinstance(store, Store) else Store.for_project(store=store, script=script)
    if not st.exists():
        raise ReplayError(f"there is no hindlog store at {st.path}; record a run first")
    rel = st.script_key(script) if script else None
    if rel is not None and not (st.root / rel).is_file():
        raise ReplayError(f"{script} does not exist" + _gone_script_advice(st, rel))
    #: The replay locks of the runs planned, held until each one's replay ends.
    held: list[Any] = []
    conn = st.connect()
    try:
        targets = select_runs(conn, rel, runs, all_runs, where, root=st.root)
        if rel is None:
            rel = targets[-1].get("script")
            if not rel:
                raise ReplayError("the run has no script recorded; give SCRIPT")
        # The hindsight statements are what was added since the script's most recent recorded code
        # (from the newest target's on) that the code only adds to: a statement a later recorded
        # version added (``lr = lr * 0.5``) is that version's code, placed into none of the older
        # runs, not a new statement. Code that adds nothing to the newest version (it was recorded
        # with the statements in) is compared with the versions before it, down to the target's.
        #: Target runs recorded with the current code already: nothing to add to them.
        already: list[dict[str, Any]] = []
        while True:
            base = next((r["code_version"] for r in reversed(targets) if r.get("code_version")), None)
            if base is None:
                if any(r.get("status") == "running" for r in targets):
                    recording = next(r for r in targets if r.get("status") == "running")
                    raise ReplayError(f"run {recording['run_id']} is still recording (its code is being snapshotted); "
                                      "replay it once it has finished")
                raise ReplayError("none of the target runs has a code version")
            # Only code recorded since the newest target: against an older version, a changed line
            # would read as an added statement.
            newest = max((r.get("started") or 0) for r in targets)
            later = [r["code_version"] for r in reversed(catalog.list_runs(conn, rel))
                     if r.get("code_version") and (r.get("started") or 0) >= newest]
            first_error: ReplayError | None = None
            found: tuple[str, Any] | None = None
            tried_without_statements: list[str] = []
            scripts = {r["script"] for r in catalog.list_runs(conn) if r.get("script")}
            for version in dict.fromkeys([*later, base]):
                try:
                    changes = hindsight_changes(st, version, force, rel, other_scripts=scripts)
                except ReplayError as e:
                    first_error = first_error or e
                    continue
                if found is None or not any(a.statements for a in found[1][1].values()):
                    found = (version, changes)
                if any(a.statements for a in changes[1].values()):
                    break
                tried_without_statements.append(version)
            if found is None:
                assert first_error is not None
                raise first_error
            # Runs of --all or --where recorded with the statements in (the latest of a sweep, say)
            # are left out; the others get them.
            unchanged = set(tried_without_statements)
            if not any(a.statements for a in found[1][1].values()) and not force \
                    and 0 < len([r for r in targets if r.get("code_version") not in unchanged]) < len(targets):
                already += [r for r in targets if r.get("code_version") in unchanged]
                targets = [r for r in targets if r.get("code_version") not in unchanged]
                continue
            break
        base, (current, additions, notes) = found
        if not any(a.statements for a in additions.values()) and not force:
            hint = "add hl.log(...) or print(...) calls first"
            if not (runs or all_runs or where) and len(catalog.list_runs(conn, rel)) > 1:
                # Running the edited script with python records a run of the current code, which
                # then is the latest: the run to replay is an earlier one.
                hint += (f", or, if the latest run of {rel} was made with the statements already in, replay an earlier "
                         f"run with --run RUN (`hindlog runs --script {rel}` lists them)")
            raise ReplayError(f"no statements were added to the code of run {targets[-1]['run_id']}; {hint}")
        plans: list[RunPlan] = []
        skipped: list[tuple[str, str]] = []
        here = environment.distributed()
        if here is not None:
            # Each target named by any rank's run is this rank's run of its launch, once.
            targets = list({r["run_id"]: r for r in (_this_ranks_run(conn, run, here) for run in targets)}.values())
            launches = [r for r in targets if (r.get("env") or {}).get("distributed")]
            if len(launches) > 1:
                # A second launch's processes could not connect through the rendezvous the first
                # one's used (gloo: "connection refused"), and the ranks' workers hung.
                raise ReplayError(
                    f"these runs are of {len(launches)} distributed launches ({', '.join(r['run_id'] for r in launches)}); "
                    "under torchrun a replay replays one launch: name one of its runs with --run-id RUN (torchrun "
                    "takes --run for its own --run-path), and replay the others one by one")
        gpus = visible_gpus() if any(_used_gpu(r) for r in targets) else []
        for run in targets:
            if run.get("status") == "running":
                skipped.append((run["run_id"], "it is still recording; replay it once it has finished"))
                continue
            launch = (run.get("env") or {}).get("distributed")
            if launch and (here is None or (here["rank"], here["world_size"]) != (launch["rank"], launch["world_size"])):
                skipped.append((run["run_id"], _other_ranks_needed(launch, rel, here, run["run_id"])))
                continue
            if here is not None and not launch:
                if here["rank"] == 0:  # said once, not by every rank
                    skipped.append((run["run_id"], "it was recorded by a process alone, and this replay runs in each rank "
                                    "of a distributed launch: replay it without the launcher"))
                continue
            index = (run.get("info") or {}).get("process_index", 0)
            if index:
                skipped.append((run["run_id"], f"it is run {index + 1} of the process that recorded it (hl.init called "
                                "several times): replay can replay only the first run of a process"))
                continue
            lock = st.lock(f"replay-{run['run_id']}")
            if not dry_run:
                # Held from now until the run's replay ends: a run waiting its turn in --all is
                # replaying already for `hindlog gc`, which keeps its checkpoints.
                if not lock.acquire():
                    skipped.append((run["run_id"], _busy(run["run_id"], lock)))
                    continue
                held.append(lock)
                if conn.execute("SELECT 1 FROM runs WHERE id=?", (run["id"],)).fetchone() is None:
                    skipped.append((run["run_id"], "it was deleted (hindlog rm) while this replay started"))
                    continue
            fitting = default_workers(run, gpus=gpus)
            asked = workers
            if launch:
                # Every rank must run the same iterations together: one worker each, the whole run.
                fitting, asked = 1, None
            try:
                p = plan_run(st, conn, run, current, additions, base, iterations, asked or fitting, force,
                             workers_given=asked is not None)
            except ReplayError as e:
                skipped.append((run["run_id"], str(e)))
                if not dry_run:
                    held.pop().release()
                continue
            p.notes = notes + p.notes
            if launch and workers and workers > 1:
                p.notes.append(f"one worker, not {workers}: rank {launch['rank']} replays its whole run with the other ranks")
            if _used_gpu(run) and len(p.segments) > 1:
                # The recorded variables apply in the workers: a recorded CUDA_VISIBLE_DEVICES narrows the choice.
                recorded = (run.get("env") or {}).get("variables") or {}
                choice = visible_gpus({**os.environ, **recorded}) if "CUDA_VISIBLE_DEVICES" in recorded else gpus
                p.gpus = [gpu_for_worker(k, len(p.segments), choice) for k in range(len(p.segments))]
            if asked and asked > fitting and len(p.segments) > fitting:
                if _used_gpu(run) and gpus:
                    p.notes.append(f"{workers} workers share this machine's {len(gpus)} GPU(s); --workers {fitting} may be faster")
                else:
                    p.notes.append(
                        f"{workers} workers x {recorded_threads(run)} threads each (the record's count, kept so values match) exceed "
                        f"the {usable_cores()} cores this process may use: workers will share cores (their idle OpenMP threads "
                        f"wait passively); --workers {fitting} may be faster"
                    )
            elif _used_gpu(run) and not gpus:
                p.notes.append("the record saw a GPU and this machine shows none: a script that puts its work on 'cuda' fails here")
            plans.append(p)
        report = ReplayReport(plans, skipped, store=st, already=[r["run_id"] for r in already])
        if not plans:
            reasons = "; ".join(f"{r}: {why}" for r, why in skipped)
            raise ReplayError(f"no run can be replayed ({reasons})")
        if on_plans is not None:
            on_plans(report)
    except BaseException:
        for lock in held:
            lock.release()
        raise
    finally:
        conn.close()
    if dry_run:
        return report
    try:
        for p, lock in zip(plans, held):
            try:
                report.results.append(execute(st, p, tolerance=tolerance, progress=progress, keep_diverged=keep_diverged, locked=True))
            except ReplayInterrupted as e:
                if report.results:
                    # The message would otherwise leave `--all` unclear about which runs are done.
                    done = ", ".join(r.run_id for r in report.results)
                    e.args = (f"{e} The replays of the runs before it ended: {done}.",)
                raise
            except KeyboardInterrupt:
                # Not while workers ran (that is ReplayInterrupted): while the replay set up or
                # stored its results, whose transaction then did not commit.
                done = f" The replays of the runs before it ended: {', '.join(r.run_id for r in report.results)}." \
                    if report.results else ""
                interrupted = ReplayInterrupted(
                    f"replay of run {p.run_id} interrupted while it started, stopped its workers or stored their values, "
                    f"which may not all be stored: replay it again with {run_flag()} {p.run_id}.{done}"
                )
                interrupted.signal = _stopped_by.pop() if _stopped_by else signal.SIGINT  # a second stop, by SIGTERM
                raise interrupted from None
            finally:
                lock.release()
    finally:
        for lock in held:
            lock.release()
    return report


def _killed_by(signum: int) -> str:
    """Why a worker that a signal ended stopped, for the user."""
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    if signum == signal.SIGKILL:
        return (f"the worker was killed by {name}: by the kernel's out-of-memory killer (see `dmesg`), a job "
                "scheduler's limit, or by hand. Fewer --workers use less memory")
    return f"the worker was ended by {name}"


def _files_shared_by_workers(procs: list[tuple[Any, ...]], result: RunResult, diverged: list[int]) -> None:
    """The workers share one copy of the project: a segment that read a file another segment's
    worker wrote after the segment's own last write of it (a best model saved mid-run, loaded
    after the main loop) did not read what the record did, and its values are dropped as a
    diverged segment's are; a file several workers wrote holds only the last one's iterations."""
    written: dict[int, dict[str, list[int]]] = {}
    read: dict[int, dict[str, list[int]]] = {}
    for k, (_seg, _proc, result_path, *_rest) in enumerate(procs):
        try:
            data = json.loads(result_path.read_text())
        except (OSError, ValueError):
            continue
        written[k] = data.get("files_written") or {}
        read[k] = data.get("files_read_made") or {}
    for k, reads in read.items():
        shared = []
        for name, times in reads.items():
            own = written[k].get(name, [])
            for t in times:
                since = max((w for w in own if w <= t), default=None)  # this worker's last write before the read
                if any(since is None or w > since for j, other in written.items() if j != k
                       for w in other.get(name, []) if w <= t):
                    shared.append(name)
                    break
        if shared:
            seg = procs[k][0]
            result.shared_reads.append((seg.start, seg.end, sorted(shared)))
            if k not in diverged:
                diverged.append(k)
    counts: dict[str, int] = {}
    for names in written.values():
        for name in names:
            counts[name] = counts.get(name, 0) + 1
    result.outputs_shared = sorted(name for name, n in counts.items() if n > 1)
