"""The ``hindlog`` command line: each command parses its arguments and calls the Python API."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sqlite3
import sys
import warnings
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

from . import query
from .errors import HindlogError, ReplayInterrupted

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    def register(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = fn
        return fn

    return register


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epsilon", type=float, help="overhead bound for checkpointing (default 0.05)")
    p.add_argument("--set", action="append", dest="sets", default=[], metavar="NAME=VALUE", help="override hl.arg NAME (repeatable)")
    p.add_argument("-m", dest="module", action="store_true",
                   help="SCRIPT names a module, run as with `python -m MODULE` (its relative imports work)")
    p.add_argument("script", help="the Python script to run, as with `python SCRIPT` (or with -m, a module)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the script's own arguments")


def _runs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--script", help="only runs of this script")
    p.add_argument("--project", help="only runs of this project (hl.init(project=...))")


def _show_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", nargs="?", default="latest", help="run id, a unique start or end of it, name, or 'latest' (the default)")
    p.add_argument("--output", action="store_true", help="print the lines the script printed, per main-loop iteration")


def _logs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", metavar="NAME", help="logged names, e.g. loss acc (none: list the names logged)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--run", action="append", dest="runs", metavar="RUN", help="only this run (repeatable; default: all)")
    which.add_argument("--script", help="only the runs of this script")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table",
                   help="output format (default: table). A context without a value is blank (JSON: null); a logged NaN is "
                        "nan (JSON, which has no NaN or infinity: the strings \"NaN\", \"Infinity\", \"-Infinity\"); "
                        "in CSV an array, list or dict is one cell of JSON, whole")


def _diff_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run id, a unique start or end of it, name, or 'latest'")
    p.add_argument("run2", nargs="?", help="the run to compare with (default: the working tree)")


def _replay_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("script", nargs="?", help="the script (default: the script of the target run)")
    p.add_argument("-m", dest="module", metavar="MODULE", help="the script named as a module, as in `python -m MODULE`")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--run", "--run-id", action="append", dest="runs", metavar="RUN",
                        help="replay this run (repeatable; default: the script's latest); --run-id under torchrun, "
                             "which takes --run for its own --run-path")
    target.add_argument("--all", action="store_true", dest="all_runs", help="replay every run of the script")
    target.add_argument("--where", help='replay the runs whose args match, e.g. "lr > 0.01"')
    p.add_argument("--iterations", metavar="A:B", help="only main-loop iterations A to B-1")
    p.add_argument("--workers", type=_positive_int, help="parallel worker processes (default: the cores divided by the record's threads per process)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its estimated time, run nothing")
    p.add_argument("--force", action="store_true", help="replay even if the code changed by more than added statements")
    p.add_argument("--keep-diverged", action="store_true",
                   help="keep the new values of segments whose recomputed values differ from the record's (marked as such)")
    p.add_argument("--tolerance", type=_non_negative_float, default=0.0, help="allowed relative/absolute float difference when checking recorded values (default 0: exactly equal)")


def _resume_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", nargs="?", default="latest", help="run id, a unique start or end of it, name, or 'latest' (default)")


def _gc_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keep-last", type=_non_negative_int, metavar="N", help="first drop the checkpoints of all but the N latest runs (logs are kept)")
    p.add_argument("--script", help="with --keep-last: count and drop only this script's runs (the others keep their checkpoints)")
    p.add_argument("--grace", type=_non_negative_float, default=None, metavar="SECONDS",
                   help="keep unreferenced objects younger than this, which a running process may still need (default: 3600)")


def _rm_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="*", metavar="RUN", help="run ids, unique starts or ends of them, names, or 'latest'")
    p.add_argument("--failed", action="store_true", help="every run that failed (as `hindlog runs` lists them)")
    p.add_argument("--dry-run", action="store_true", help="say what would be deleted, delete nothing")
    p.add_argument("-y", "--yes", action="store_true", help="delete without asking")


#: Each command: its one-line help and what adds its arguments, in the order ``--help`` lists them.
SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "run": ("record an unmodified script hands-free: python SCRIPT ARGS, instrumented", _run_args),
    "runs": ("list the runs of this project", _runs_args),
    "show": ("show one run: status, code version, args, environment, checkpoints", _show_args),
    "logs": ("print logged values as a table, CSV or JSON", _logs_args),
    "diff": ("code and args of RUN compared with RUN2 (default: the working tree)", _diff_args),
    "replay": ("replay recorded runs with the log statements added since they were recorded", _replay_args),
    "resume": ("continue a killed or failed run from its latest checkpoint", _resume_args),
    "gc": ("remove stored objects that no checkpoint or code snapshot needs", _gc_args),
    "rm": ("delete runs with their values, checkpoints and replay outputs", _rm_args),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; with ``only``, one that knows that command alone (what
    parsing it needs: ``hindlog run`` should start as fast as ``python``)."""
    parser = argparse.ArgumentParser(
        prog="hindlog",
        description="Hindsight logging for model training: record, add log statements later, replay.",
    )
    parser.add_argument("--store", help="the .hindlog directory to use (default: <project root>/.hindlog, or $HINDLOG_DIR)")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"hindlog {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (help_text, add_arguments) in SUBCOMMANDS.items():
        if only is None or name == only:
            p = sub.add_parser(name, help=help_text)
            add_arguments(p)
            # Also after the command (`hindlog runs --store DIR`); absent there, the one before it stands.
            p.add_argument("--store", default=argparse.SUPPRESS, help="the .hindlog directory to use (default: <project root>/.hindlog, or $HINDLOG_DIR)")
    return parser


def _command_index(argv: Sequence[str]) -> int:
    """Where the command is in ``argv``, if it is plain to see (after an optional ``--store DIR``)."""
    if argv and argv[0] == "--store":
        return 2
    return 1 if argv and argv[0].startswith("--store=") else 0


def _command_named(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names, if it is plain to see."""
    k = _command_index(argv)
    return argv[k] if k < len(argv) and argv[k] in SUBCOMMANDS else None


def _script_args_as_given(argv: Sequence[str], script: str) -> list[str] | None:
    """What follows the script in ``hindlog [--store DIR] run [OPTIONS] SCRIPT ARGS...``, exactly
    as given: argparse drops a ``--`` right after the script, which ``python SCRIPT`` passes on.
    None if the command line is not of that plain shape."""
    k = _command_index(argv)
    if k >= len(argv) or argv[k] != "run":
        return None
    k += 1
    while k < len(argv) and argv[k] != script:
        if argv[k] in ("--epsilon", "--set"):
            k += 2
        elif argv[k].startswith(("--epsilon=", "--set=")) or argv[k] == "-m":
            k += 1
        else:
            return None
    return list(argv[k + 1:]) if k < len(argv) else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    for k, arg in enumerate(argv[:-1] if _command_named(argv) == "replay" else []):
        # ``--iterations -3:5``: argparse takes a value starting with "-" for an option, and would
        # say only that the value is missing; given attached, it reaches the range check.
        if arg == "--iterations" and argv[k + 1].startswith("-"):
            argv[k:k + 2] = [f"--iterations={argv[k + 1]}"]
            break
    args = build_parser(only=_command_named(argv)).parse_args(argv)
    if args.command == "run":
        given = _script_args_as_given(argv, args.script)
        if given is not None:
            args.args = given
    try:
        return COMMANDS[args.command](args)
    except ReplayInterrupted as e:
        print(f"hindlog: {e}", file=sys.stderr)
        # The shell's status for the signal that stopped it: 130 for Ctrl-C, 143 for kill (SIGTERM).
        return 128 + int(e.signal)
    except KeyboardInterrupt:
        print("hindlog: interrupted", file=sys.stderr)
        return 130
    except HindlogError as e:
        print(f"hindlog: {e}", file=sys.stderr)
        return 2
    except sqlite3.DatabaseError as e:
        from . import catalog
        from .store import Store

        if not catalog.is_damage(e):
            raise
        print(f"hindlog: {catalog.damaged_message(Store.for_project(store=args.store).catalog_path, e)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


def _time(ts: Any) -> str:
    import pandas as pd  # imported when needed: `hindlog run` must start as fast as python

    if ts is None or pd.isna(ts):
        return "-"
    if isinstance(ts, pd.Timestamp):  # hl.runs() gives UTC: shown in local time, as floats are
        ts = ts.timestamp()
    return _dt.datetime.fromtimestamp(float(ts)).strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: Any) -> str:
    import pandas as pd

    if seconds is None or pd.isna(seconds):
        return "-"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{sec:02d}s"


@command("run")
def _run(args: argparse.Namespace) -> int:
    from .handsfree import run_script

    if args.store:
        import os

        os.environ["HINDLOG_DIR"] = args.store
    return run_script(args.script, args.args, epsilon=args.epsilon, sets=args.sets, module=args.module)


def _noting_warnings(read: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``read(...)``, its warnings (a damaged catalog set aside, values logged twice in one
    context) said as ``note:`` lines of the command's output, not as Python warnings; also when
    the read fails (a run not found may be in a catalog set aside)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return read(*args, **kwargs)
        finally:
            for w in caught:
                print(f"note: {str(w.message).removeprefix('hl.dataframe: ').removeprefix('hindlog: ')}", file=sys.stderr)


@command("runs")
def _runs(args: argparse.Namespace) -> int:
    from .store import Store

    df = _noting_warnings(query.runs, store=args.store)
    recorded = len(df)
    chosen = []
    if args.script:
        script = Store.for_project(store=args.store).script_key(args.script)
        df = df[df["script"] == script]
        chosen.append(f"of {script}")
    if args.project:
        df = df[df["project"] == args.project]
        chosen.append(f"of project {args.project}")
    if df.empty and recorded:
        print(f"No run {' and '.join(chosen)} among the {recorded} runs recorded here (`hindlog runs` lists them all).")
        return 0
    if df.empty:
        path = Store.for_project(store=args.store).path
        where = f"in {path}" if path.exists() else f"(there is no hindlog store at {path})"
        if (path / ".hindlog" / "catalog.db").exists():
            where += f"; the store of the project there is {path / '.hindlog'}"
        print(f"No runs yet {where}. Run a script that uses hindlog, or `hindlog run SCRIPT`, to record one.")
        return 0
    import pandas as pd

    columns = {"run": df["run_id"], "name": df["name"].fillna("")}
    if df["project"].nunique() > 1:
        columns["project"] = df["project"].fillna("")
    view = pd.DataFrame(
        {
            **columns,
            "script": df["script"].fillna(""),
            **({"rank": df["rank"].map(lambda r: "" if pd.isna(r) else str(r))} if "rank" in df.columns else {}),
            "status": df["status"],
            "started": df["started"].map(_time),
            "duration": df["duration"].map(_duration),
            "code": df["code_version"].fillna("").str[:12],
        }
    )
    print(view.to_string(index=False))
    return 0


@command("show")
def _show(args: argparse.Namespace) -> int:
    if args.output:
        lines_out = _noting_warnings(query.output, args.run, store=args.store)
        for iteration, source, line in lines_out:
            where = "     " if iteration is None else f"{iteration:>4} "
            print(f"{where}{'+' if source else ' '} {line}")
        if not lines_out:
            print("(no printed output was captured for this run: `hindlog run SCRIPT` captures what a script prints; "
                  "a script that calls hindlog itself logs with hl.log)", file=sys.stderr)
        return 0
    info = _noting_warnings(query.run_info, args.run, store=args.store)
    started, ended = info.get("started"), info.get("ended")
    stopped = (info.get("info") or {}).get("stopped_seconds")
    stood = f"; it stood stopped for {_duration(stopped)} before it was resumed" if stopped else ""
    lines = [
        f"run          {info['run_id']}" + (f"  ({info['name']})" if info.get("name") else ""),
        f"status       {info['status']}" + (f"  flags: {', '.join(info['flags'])}" if info.get("flags") else "")
        + (f"\nerror        {error}" if info["status"] == "failed" and (error := (info.get("info") or {}).get("error")) else ""),
        f"project      {info.get('project') or '-'}",
        f"script       {info.get('script') or '-'}" + (f"  (run as -m {module})" if (module := (info.get("info") or {}).get("module")) else ""),
        f"code         {info.get('code_version') or '-'} ({info.get('code_kind') or 'pending'}"
        + (f": the working tree with uncommitted changes, on commit {base[:12]})" if (base := (info.get("info") or {}).get("code_base"))
           else ")"),
        f"cwd          {info.get('cwd') or '-'}",
        f"argv         {' '.join(info.get('argv') or [])}",
        f"started      {_time(started)}",
        f"ended        {_time(ended)}" + (f"  ({_duration(query.run_duration(info))}{stood})" if ended and started else ""),
        f"records      {info['records']}  names: {', '.join(info['names']) or '-'}",
    ]
    if info["args"]:
        lines.append("args         " + ", ".join(f"{k}={v!r}" for k, v in info["args"].items()))
    options = (info.get("info") or {}).get("options")
    if options:
        lines.append("options      " + ", ".join(f"{k}={v!r}" for k, v in options.items()))
    env = info.get("env") or {}
    if env:
        pkgs = ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items())
        lines.append(f"python       {env.get('python')} on {env.get('host')}  ({pkgs})")
    launch = env.get("distributed")
    if launch:
        lines.append(f"distributed  rank {launch['rank']} of {launch['world_size']} processes of one launch (replay all ranks "
                     f"together: torchrun --nproc_per_node {launch['world_size']} -m hindlog replay {info.get('script') or 'SCRIPT'} "
                     f"--run-id {info['run_id']})")
    ckpts = info["checkpoints"]
    overhead = info.get("overhead")
    ckpt_line = "checkpoints  0"
    if ckpts:
        iterations = sorted({c["iteration"] for c in ckpts})
        total = sum(c["nbytes"] for c in ckpts)
        # A checkpointed iteration has one snapshot per nested loop's exit and one at its end:
        # the count that matters for replay is the iterations'.
        snapshots = f"{len(ckpts)} snapshots, " if len(ckpts) != len(iterations) else ""
        ckpt_line = (f"checkpoints  {len(iterations)} iteration{'s' if len(iterations) > 1 else ''}: {_ranges(iterations)}"
                     f" ({snapshots}{total / 2**20:.1f} MiB before dedup)")
    if not ckpts and (info.get("info") or {}).get("checkpoints_dropped_by_gc"):
        ckpt_line += " (dropped by hindlog gc --keep-last; the logs are kept)"
    busy = (info.get("info") or {}).get("checkpoints_skipped_busy")
    if busy:
        ckpt_line += (f"; {busy} iteration{'s' if busy > 1 else ''} skipped while the previous checkpoint was still"
                      " being written (its write took longer than an iteration)")
    charged = (info.get("info") or {}).get("checkpoint_charged")
    if not ckpts and charged and info.get("epsilon") and started and ended:
        startup = charged.get("startup_seconds", 0.0)
        snapshot = charged.get("snapshot_cpu_seconds", 0.0) * charged.get("background_weight", 1.0)
        if startup + snapshot >= info["epsilon"] * (ended - started) * 0.5:
            what = f"hindlog's start-up, {startup:.2f}s,"
            if snapshot >= startup:
                what = f"the snapshot of the code, {snapshot:.2f}s (git's processes),"
            elif snapshot >= 0.25 * startup:
                what = f"hindlog's start-up and the snapshot of the code, {startup + snapshot:.2f}s,"
            ckpt_line += (f" ({what} took most of what ε = {info['epsilon']:g} allows this "
                          f"{ended - started:.1f}s run; a longer run, or a larger ε, gets checkpoints)")
    state = (info.get("info") or {}).get("state")
    if state is not None:
        lines.append("state        " + (", ".join(state) + " and" if state else "only") + " the random generators"
                     + ("" if ckpts else " (what a checkpoint would hold)"))
    lines.append(ckpt_line)
    in_all = None
    if charged and ckpts:
        blocked, cpu, weight = charged["blocked_seconds"], charged["persister_cpu_seconds"], charged["background_weight"]
        startup = charged.get("startup_seconds", 0.0)
        # Estimated, not measured (runs recorded before they were charged have none).
        exiting = charged.get("exit_seconds", 0.0)
        nested = charged.get("nested_loop_seconds", 0.0)
        writer = charged.get("writer_cpu_seconds", 0.0)
        in_all = startup + exiting + blocked + weight * cpu + writer + nested
    if overhead is not None:
        eps = info.get("epsilon")
        # The bound is on everything charged; the time training was blocked is only its part.
        line = f"overhead     {overhead * 100:.2f}% of wall time blocked"
        # Over the policy's window, the process's time (a run recorded before it was kept: the run's).
        window = charged.get("elapsed_seconds") if charged else None
        window = window or ((ended - started) if started and ended else None)
        if in_all is not None and window:
            line += f"; {in_all / window * 100:.2f}% charged in all"
        lines.append(line + (f" (bound {eps * 100:.1f}%)" if eps is not None else ""))
        if in_all is not None and eps and window:
            reason = _over_bound_reason(charged, in_all, window, eps)
            if reason:
                lines.append(f"             {reason}")
    if charged and ckpts:
        writing = f" + {writer:.2f}s of the catalog writer's CPU time" if "writer_cpu_seconds" in charged else ""
        estimated = (f" + {nested:.2f}s for {charged.get('nested_iterations', 0):,} iterations of nested loops (estimated)"
                     if "nested_loop_seconds" in charged else "")
        ending = f" + {exiting:.3f}s for the run's end (estimated)" if "exit_seconds" in charged else ""
        lines.append(f"charged      {in_all:.2f}s: {startup:.2f}s start-up{ending}"
                     f" + {blocked:.2f}s blocked"
                     f" + {cpu:.2f}s of background work (checkpoint writes, the code snapshot) x {weight:.2f} (the slowdown"
                     f" of training per second of its CPU time, measured; at least 1){writing}{estimated}")
    for k, warning in enumerate((info.get("info") or {}).get("warnings") or []):
        # What hindlog warned of while it recorded (a state it could not hold, say): the terminal
        # that showed it may be gone, and a replay's trust depends on it.
        lines.append(f"{'warned' if k == 0 else '':<12} {warning.removeprefix('hindlog: ')}")
    print("\n".join(lines))
    return 0


def _over_bound_reason(charged: dict[str, Any], in_all: float, window: float, epsilon: float) -> str | None:
    """Why a run's charge in all ended above ε, which every checkpoint decision kept it under:
    what was charged after the last decision, which none could see. None when under ε."""
    last = charged.get("last_decision")
    if in_all <= epsilon * window or not last or last["elapsed_seconds"] <= 0:
        return None
    at, spent = last["elapsed_seconds"], last["spent_seconds"]
    head = f"above the bound: at the last checkpoint decision, {at:.1f}s after the process started, {spent / at * 100:.2f}% was charged"
    if spent > epsilon * at:
        # The decisions took no checkpoint then: what was charged before them (start-up, the code
        # snapshot) already exceeded ε of so short a run.
        return head + " already, by hindlog's start-up and the code snapshot: a longer run, or a larger ε, stays under it."
    weight, was = charged["background_weight"], last["background_weight"]
    recharged = max(weight - was, 0.0) * last["persister_cpu_seconds"]
    writes = weight * max(charged["persister_cpu_seconds"] - last["persister_cpu_seconds"], 0.0)
    rest = in_all - spent - recharged - writes
    parts = []
    if recharged >= 0.005:
        parts.append(f"the slowdown weight, measured later at {weight:.2f} (it was {was:.2f}), charged the background work "
                     f"before it {recharged:.2f}s more")
    if writes >= 0.005:
        parts.append(f"the background work after it (the last checkpoints' writes) was charged {writes:.2f}s")
    if rest >= 0.005:
        parts.append(f"{rest:.2f}s more was blocked time (the last checkpoint's copy, the run's end) and the catalog writer's work")
    said = f"; after it, {'; '.join(parts)}." if parts else "."
    if recharged >= 0.005:
        said += " A slowdown measured late is usually the machine's load rising; a smaller ε leaves more margin."
    return head + said


def _ranges(values: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    parts: list[str] = []
    start = prev = None
    for v in values:
        if start is None:
            start = prev = v
        elif v == prev + 1:
            prev = v
        else:
            parts.append(f"{start}-{prev}" if start != prev else f"{start}")
            start = prev = v
    if start is not None:
        parts.append(f"{start}-{prev}" if start != prev else f"{start}")
    return ", ".join(parts)


@command("logs")
def _logs(args: argparse.Namespace) -> int:
    if args.script:
        from .store import Store

        st = Store.for_project(store=args.store, script=args.script)
        script = st.script_key(args.script)
        args.store = st  # the script's project's store, for the values too
        runs = _noting_warnings(query.runs, store=st)
        chosen = runs[runs["script"] == script]["run_id"].tolist()
        if not chosen:
            print(f"No run of {script} is recorded here (`hindlog runs` lists the runs and their scripts).", file=sys.stderr)
            return 1
        args.runs = chosen
    if not args.names:
        names = query.logged_names(runs=args.runs, store=args.store)
        if not names:
            print("No values are logged in these runs yet.", file=sys.stderr)
            return 1
        print("Logged names (give some to see their values, e.g. `hindlog logs " + " ".join(names[:2]) + "`):")
        print("  " + "  ".join(names))
        return 0
    df, logged = _noting_warnings(query.logged_frame, *args.names, runs=args.runs, store=args.store)
    if df.empty:
        print(f"No values logged under {', '.join(args.names)}{' in these runs' if args.runs else ''}. "
              "`hindlog logs` with no name lists the names logged.", file=sys.stderr)
        return 1
    never = [c for c in logged.columns if not logged[c].any()]
    if never:
        print(f"note: nothing was logged under {', '.join(never)} in these runs (a typo? or new statements whose replay failed or diverged, which keeps none of their values)", file=sys.stderr)
    if args.format == "json":
        columns = [str(c) for c in df.columns]
        cells = [_json_column(df[c], logged[c].to_numpy() if c in logged.columns else None) for c in df.columns]
        print(json.dumps([dict(zip(columns, row)) for row in zip(*cells)], allow_nan=False, default=_json_default))
        return 0
    # A context with no value is blank; a logged NaN reads "nan" (pandas would show both as NaN).
    for column in logged.columns:
        nan_logged = logged[column] & df[column].isna()
        if nan_logged.any():
            df[column] = df[column].astype(object)
            df.loc[nan_logged, column] = df.loc[nan_logged, column].map(lambda v: "None" if v is None else "nan")
    if args.format == "csv":
        for column in df.columns:
            if df[column].dtype == object:
                # An array, list or dict as JSON, whole: pandas would write NumPy's display text,
                # which shortens a large array to "[0. 1. ... 1999.]".
                df[column] = df[column].map(_csv_cell)
        df.to_csv(sys.stdout, index=False)
    else:
        for column in df.columns:
            if str(df[column].dtype) == "Int64" and df[column].isna().any():
                df[column] = df[column].astype(object).where(df[column].notna(), "")  # not "<NA>"
            elif df[column].dtype == object:
                # pandas formats the floats inside a logged list or dict as quoted strings.
                df[column] = df[column].map(lambda v: repr(v) if isinstance(v, (list, dict, tuple)) else v)
        print(df.to_string(index=False, na_rep=""))
    return 0


def _json_column(column: Any, logged: Any) -> list[Any]:
    """A column's cells as strict JSON holds them. ``logged``: where a value was logged (value
    columns); elsewhere a missing cell (NaN, None, NA) is null."""
    import numpy as np

    # Nullable integer columns become Python ints and NA, not floats.
    values = column.astype(object).to_numpy() if str(column.dtype) == "Int64" else column.to_numpy()
    if values.dtype.kind == "f":
        out = values.tolist()
        for k in np.flatnonzero(~np.isfinite(values)).tolist():
            out[k] = _json_value(out[k]) if logged is not None and logged[k] else None
    elif values.dtype.kind in "iub":
        out = values.tolist()
    else:
        out = [_json_value(v) if (logged[k] if logged is not None else not _missing(v)) else None for k, v in enumerate(values)]
    if logged is not None and values.dtype.kind != "O":
        for k in np.flatnonzero(~logged).tolist():
            out[k] = None
    return out


def _missing(value: Any) -> bool:
    if value is None or (isinstance(value, float) and value != value):
        return True
    try:
        import pandas as pd

        return value is pd.NA or value is pd.NaT
    except ImportError:
        return False


def _json_value(value: Any) -> Any:
    """A logged value as strict JSON holds it: NaN and the infinities, at any depth, as the
    strings "NaN", "Infinity" and "-Infinity" (null is None, or a context without a value)."""
    tolist = getattr(value, "tolist", None)
    if callable(tolist) and not isinstance(value, (str, bytes)):
        value = tolist()  # NumPy arrays and scalars
    if isinstance(value, float):
        if value != value:
            return "NaN"
        if value in (float("inf"), float("-inf")):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if value is not None and not isinstance(value, (str, int, bool)) and _missing(value):
        return None
    return value


def _csv_cell(value: Any) -> Any:
    """A CSV cell: a value with parts (array, tensor, list, tuple, dict) as JSON text."""
    if isinstance(value, (list, tuple, dict)) or (hasattr(value, "tolist") and getattr(value, "ndim", 0) > 0):
        return json.dumps(_json_value(value), default=_json_default)
    return value


def _json_default(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)
    return tolist() if tolist else str(value)


@command("diff")
def _diff(args: argparse.Namespace) -> int:
    text, changed = query.code_diff(args.run, args.run2, store=args.store)
    if args.run2:
        argv = [query.run_info(r, store=args.store).get("argv") or [] for r in (args.run, args.run2)]
        if argv[0] != argv[1]:
            print(f"argv: {' '.join(argv[0])} -> {' '.join(argv[1])}")
    if changed:
        print("args:")
        for k, (a, b) in changed.items():
            print(f"  {k}: {json.dumps(a)} -> {json.dumps(b)}")
    print(text if text else "(no code changes)", end="" if text.endswith("\n") else "\n")
    return 0


def _parse_iterations(text: str | None) -> tuple[int | None, int | None] | None:
    if not text:
        return None
    try:
        lo, hi = text.split(":")
        return (int(lo) if lo else None, int(hi) if hi else None)
    except ValueError:
        raise HindlogError(f"--iterations takes A:B (e.g. 3:7), got {text!r}") from None


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _shown_path(path: str | None) -> str:
    """``path`` relative to the current directory where it is inside it."""
    if not path:
        return ""
    try:
        return os.path.relpath(path) if not os.path.relpath(path).startswith("..") else path
    except ValueError:
        return path


def _module_file(name: str) -> str:
    """The file ``python -m NAME`` runs from here, found without importing anything (a package's
    ``__init__`` may import torch): under the current directory or an entry of PYTHONPATH."""
    import os

    from .mainmodule import find

    spec = find(name, [os.getcwd(), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])
    if spec is None or not spec.origin:
        raise HindlogError(f"no module {name} under {os.getcwd()} or PYTHONPATH: run this from where you ran "
                           f"python -m {name}, or give the script's path")
    return spec.origin


@command("replay")
def _replay(args: argparse.Namespace) -> int:
    from .replay import ReplayReport, describe_plan, replay, run_flag

    def show_plans(report: ReplayReport) -> None:
        for run_id, why in report.skipped_runs:
            print(f"skipped run {run_id}: {why}", file=sys.stderr)
        for run_id in report.already:
            print(f"note: run {run_id} was recorded with these statements already: left out")
        for plan in report.plans:
            print(describe_plan(plan), flush=True)

    if args.module:
        if args.script:
            raise HindlogError(f"give the script or -m {args.module}, not both")
        args.script = _module_file(args.module)
    report = replay(
        args.script, runs=args.runs, all_runs=args.all_runs, where=args.where,
        iterations=_parse_iterations(args.iterations), workers=args.workers, dry_run=args.dry_run,
        force=args.force, keep_diverged=args.keep_diverged, tolerance=args.tolerance, store=args.store, on_plans=show_plans,
    )
    if args.dry_run:
        return 1 if report.skipped_runs else 0  # as the replay itself would
    status = 0
    for r in report.results:
        if r.refused:
            status = 1
            print(f"run {r.run_id} not replayed: {r.refused}", file=sys.stderr)
            continue
        # A failure is said first: the counts of a failed replay alone read like a success.
        outcome = "failed, " if r.failed_segments else "diverged, " if r.divergences else ""
        line = f"run {r.run_id}: {outcome}{_count(r.stored, 'new value')} stored, {_count(r.checked, 'recorded value')} " \
               f"checked, {_count(r.skipped_blocks, 'loop')} skipped, {r.run_blocks} run, in {r.seconds:.1f}s"
        if r.replaced:
            line += f" (they replace {r.replaced} values of an earlier replay)"
        if r.printed_checked:
            # Hands-free runs log little but print: their check is mostly the printed lines.
            line += f"; {r.printed_checked - r.printed_differ} of {r.printed_checked} printed lines the same as the record's"
        print(line)
        for w in r.worker_warnings:
            print(f"  {w}", file=sys.stderr)
        if r.outputs:
            shown = ", ".join(r.outputs[:5]) + (f" and {len(r.outputs) - 5} more" if len(r.outputs) > 5 else "")
            where = _shown_path(r.outputs_dir) if r.outputs_dir != r.scratch else \
                f"{r.outputs_dir}, with the recorded code (not kept with the outputs: the replay did not succeed)"
            print(f"  files the replayed code wrote ({shown}): in {where}")
        for name, count in sorted(r.stale.items()):
            print(f"  note: the statement that logs {name!r} gave other values than when it was last replayed (it changed, or "
                  "an older hindlog's replay restored less of the run's state): "
                  f"{_count(count, 'value')} of {name!r} outside the iterations replayed now {'is' if count == 1 else 'are'} "
                  "still the earlier replay's; replay without --iterations to have them all from this one (and the "
                  "other runs replayed before, which keep theirs)")
        if r.outputs_again:
            again = ", ".join(r.outputs_again[:5]) + (f" and {len(r.outputs_again) - 5} more" if len(r.outputs_again) > 5 else "")
            one = len(r.outputs_again) == 1
            print(f"  not kept: {again}, which the replayed code wrote again and the record wrote too (the project has "
                  f"{'it' if one else 'them'} as the run wrote {'it' if one else 'them'})")
        if r.past_record:
            print(f"  {r.past_record} values the recorded code logged past where the run stopped were not kept: they are "
                  "not the run's (resuming it logs them)")
        if r.recorded_failure:
            print(f"  the script ended with an error, as the recorded run did: {r.recorded_failure}")
        if r.printed_differ:
            e = r.printed_examples[0] if r.printed_examples else None
            example = f" (iteration {e['iteration']}: recorded {e['recorded']!r}, replayed {e['replayed']!r})" if e else ""
            print(f"  note: {r.printed_differ} of the {r.printed_checked} lines the replayed code printed differ from the "
                  f"record's{example}. Fine if they hold times; otherwise the replay did not restore some state the "
                  "script changes, and the new values may be wrong.", file=sys.stderr)
        for start, end, tail in r.failed_segments:
            status = 1
            last = (tail.strip().splitlines() or [""])[-1]
            if last.startswith(_WORKER_REFUSAL):
                # hindlog's worker refused to go on: what it says is the whole story, not a traceback of hindlog's code.
                print(f"  segment {start}:{end} failed: {last[len(_WORKER_REFUSAL):]}", file=sys.stderr)
                continue
            plan = next((p for p in report.plans if p.run_id == r.run_id), None)
            new_line = _failing_new_statement(tail, r.scratch, plan)
            outside = _outside_the_project(last, report.store, r.run_id)
            if outside is not None:
                print(f"  segment {start}:{end} failed: {last}", file=sys.stderr)
                print(f"  the run ran in {outside}, outside its project {report.store.root}: a replay runs in a copy of "
                      "the project, where paths relative to that folder do not resolve. Start such scripts from their "
                      "project's folder, or read inputs by absolute paths", file=sys.stderr)
                continue
            newer = _newer_than_the_run(last, report.store)
            if newer is not None and newer[1].stat().st_mtime <= (query.run_info(r.run_id, store=report.store).get("ended") or 0):
                print(f"  segment {start}:{end} failed: {last}", file=sys.stderr)
                print(f"  the run wrote {newer[0]} while it ran: a segment that starts mid-run has not written it yet "
                      "(and one a worker of another segment wrote is not what the record read). Replay with --workers 1",
                      file=sys.stderr)
                continue
            if newer is not None:
                print(f"  segment {start}:{end} failed: {last}", file=sys.stderr)
                print(f"  {newer[0]} is in the project, but made or changed since the run started: a replay sees the "
                      "project's files as they were then (a file made since could not have been read by the run, and "
                      "one the run wrote would be its final state, not what the code read at that point). A new "
                      f"statement may read it by its absolute path, {newer[1]}", file=sys.stderr)
                continue
            if new_line is not None:
                # The new code failed (it reads a name this run's version of the code lacks, say):
                # replaying the segment alone fails the same way.
                print(f"  segment {start}:{end} failed in a statement added since the record, {new_line}: {last}; this "
                      f"run's code is version {plan.code_version[:12] if plan else '?'}: make the statement work in it "
                      f"(then {run_flag()} {r.run_id} --iterations {start}:{end} replays this segment alone), or replay "
                      "only the runs whose code has what it needs (--run, --where)", file=sys.stderr)
                continue
            print(f"  segment {start}:{end} failed; replay it alone with {run_flag()} {r.run_id} --iterations {start}:{end}", file=sys.stderr)
            print("  " + tail.strip().replace("\n", "\n  "), file=sys.stderr)
        if r.failed_segments and r.scratch:
            print(f"  the recorded code and the workers' logs (.hindlog-worker-K.log) are in {r.scratch}; "
                  "delete it when done", file=sys.stderr)
        for start, end, files in r.shared_reads:
            status = 1
            print(f"  segment {start}:{end} read {', '.join(files[:3])}{' and more' if len(files) > 3 else ''}, which the "
                  "replayed script wrote in another segment's worker (the workers share one copy of the project): not "
                  "what the record read there, so its new values are not kept. Replay with --workers 1", file=sys.stderr)
        shared_outputs = [name for name in r.outputs_shared if name not in r.outputs_again]
        if shared_outputs:
            print(f"  note: {', '.join(shared_outputs[:3])}{' and more' if len(shared_outputs) > 3 else ''} "
                  f"{'was' if len(shared_outputs) == 1 else 'were'} written by several segments' workers: each holds "
                  "the iterations of the worker that wrote it last, and is not kept; --workers 1 writes them whole")
        if r.outside:
            print(f"  note: the replayed code wrote {_count(len(r.outside), 'file')} outside the project "
                  f"({', '.join(r.outside[:2])}{' and more' if len(r.outside) > 2 else ''}), which a replay cannot keep "
                  "apart from what is there" + (f"; what the existing ones held before is in {r.outside_backups}"
                                                if r.outside_backups else ""))
        if r.divergences:
            status = 1
            print(f"  DIVERGED: {len(r.divergences)} recomputed values differ from the recorded ones:", file=sys.stderr)
            for d in r.divergences[:10]:
                if d.get("main_loop_ended"):
                    print(f"    the main loop {d['name']!r} ended after {d['replayed']}; the record ran {d['recorded']}: "
                          "the script read something other than the record did (an environment variable, a file)",
                          file=sys.stderr)
                    continue
                print(f"    {d['name']} {_divergence_place(d)}: recorded {d['recorded']}, replayed {d['replayed']}", file=sys.stderr)
            plan = next((p for p in report.plans if p.run_id == r.run_id), None)
            diverged_at = [d["iteration"] for d in r.divergences if d.get("iteration") is not None and not d.get("main_loop_ended")]
            if plan is not None and not plan.draws_random and len(plan.segments) > 1 and diverged_at \
                    and min(diverged_at) >= plan.segments[0].end:
                print("  only segments that start mid-run diverged: their start restored a state the record did not "
                      "fully hold: an object the main loop changes that hl.checkpoints does not name (a replay buffer, an "
                      "environment, a counter a function changes: name it there for later runs), or something made once, "
                      "at the start (a DataLoader with persistent workers draws its seed when it is first iterated); "
                      "--workers 1 replays the run in one segment", file=sys.stderr)
            if r.dropped_diverged:
                print(f"  the {r.dropped_diverged} new values of the diverged segments were not kept: they were computed from "
                      "a state that is not the record's (--tolerance allows float noise; --keep-diverged keeps them)", file=sys.stderr)
    if report.skipped_runs:
        status = status or 1
    return status


def _missing_relative_path(last: str) -> str | None:
    """The relative path a worker's last line (``FileNotFoundError: ... 'data/val.pt'``) did not
    find in the replay's copy of the project."""
    import re

    found = re.match(r"FileNotFoundError: \[Errno 2\] No such file or directory: '([^']+)'", last)
    return found.group(1) if found is not None and not Path(found.group(1)).is_absolute() else None


def _outside_the_project(last: str, store: Any, run_id: str) -> str | None:
    """The folder a run ran in, outside its project, where a worker's ``FileNotFoundError``
    names a relative path that folder has (``python proj/train.py`` from the folder above)."""
    missing = _missing_relative_path(last)
    if missing is None or store is None:
        return None
    cwd = query.run_info(run_id, store=store).get("cwd")
    if not cwd or Path(cwd).resolve().is_relative_to(store.root) or not (Path(cwd) / missing).exists():
        return None
    return cwd


def _newer_than_the_run(last: str, store: Any) -> tuple[str, Path] | None:
    """The project's file that a worker's ``FileNotFoundError`` names, which the replay's copy of
    the project lacks (made or changed since the run started), with its path in the project."""
    missing = _missing_relative_path(last)
    if missing is None or store is None:
        return None
    candidate = store.root / missing
    return (missing, candidate) if candidate.exists() else None


def _failing_new_statement(tail: str, scratch: str | None, plan: Any) -> str | None:
    """``path:line`` of the statement added since the record that a worker's traceback ends in
    (its innermost frame in the run's own code), or None."""
    if not scratch or plan is None:
        return None
    import re

    ours = [(m.group(1), int(m.group(2))) for m in re.finditer(r'File "([^"]+)", line (\d+)', tail)
            if m.group(1).startswith(scratch.rstrip("/") + "/")]
    if not ours:
        return None
    path, line = ours[-1]
    rel = path[len(scratch.rstrip("/")) + 1:]
    if any(lo <= line <= hi for lo, hi in plan.new_statements.get(rel, [])):
        return f"{rel}:{line}"
    return None


#: How a worker's traceback ends when hindlog itself stopped the segment (``controller``'s checks).
_WORKER_REFUSAL = "hindlog.errors.ReplayError: "


def _divergence_place(divergence: dict[str, Any]) -> str:
    """Where a diverged value was logged: ``at iteration 3``, with the nested loops' indices
    (``at iteration 3, step 7``): a per-step value repeats in every iteration."""
    try:
        loops = json.loads(divergence.get("context") or "[]")
    except ValueError:
        loops = []
    if divergence.get("iteration") is None:
        # The first hl.loop is the main loop: any loop outside it comes after it.
        if loops:
            return "after the main loop, at " + ", ".join(f"{name} {index}" for name, index in loops)
        return divergence.get("outside") or "outside every loop"
    nested = "".join(f", {name} {index}" for name, index in loops[1:])
    return f"at iteration {divergence['iteration']}{nested}"


@command("resume")
def _resume(args: argparse.Namespace) -> int:
    from .resume import resume

    return resume(args.run, store=args.store)


@command("rm")
def _rm(args: argparse.Namespace) -> int:
    from .remove import remove_runs

    refs = list(args.runs)
    if args.failed:
        listed = _noting_warnings(query.runs, store=args.store)
        refs += [r for r in listed[listed["status"] == "failed"]["run_id"] if r not in refs]
        if not refs:
            print("No run failed here: nothing to delete.")
            return 0
    if not refs:
        print("hindlog rm: name the runs to delete, or --failed (`hindlog runs` lists them)", file=sys.stderr)
        return 2
    planned = remove_runs(refs, store=args.store, dry_run=True)
    what = (f"run{'s' if len(planned.runs) > 1 else ''} {', '.join(planned.runs)}, with {_count(planned.values, 'value')} "
            f"and {_count(planned.checkpoints, 'checkpointed iteration')}")
    if args.dry_run:
        print(f"would delete {what}")
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            print(f"hindlog rm: this deletes {what}; nobody is at a terminal to confirm: add --yes", file=sys.stderr)
            return 2
        answer = input(f"Delete {what}? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            print("Nothing deleted.")
            return 1
    done = remove_runs(planned.runs, store=args.store)
    print(f"deleted {what.replace(', '.join(planned.runs), ', '.join(done.runs))}; `hindlog gc` frees the stored "
          "objects their checkpoints no longer need")
    return 0


@command("gc")
def _gc(args: argparse.Namespace) -> int:
    from .gc import GRACE_SECONDS, gc
    from .store import Store

    grace = GRACE_SECONDS if args.grace is None else args.grace
    if args.script and args.keep_last is None:
        print("hindlog gc: --script chooses the runs --keep-last drops the checkpoints of; give --keep-last N too "
              "(`hindlog gc` alone drops no run's checkpoints)", file=sys.stderr)
        return 2
    script = Store.for_project(store=args.store).script_key(args.script) if args.script else None
    report = gc(store=args.store, keep_last=args.keep_last, grace=grace, script=script)
    extra = ""
    if args.keep_last is not None:
        of = "" if script is None else f" of {script}"
        whose = f"of every run{of}" if args.keep_last == 0 else \
            f"of the runs{of} before the {'latest' if args.keep_last == 1 else f'{args.keep_last} latest'}"
        extra = f", dropped {report.dropped_checkpoints} checkpoints {whose} (their logs are kept)"
    if report.removed_temporaries:
        extra += f", and {report.removed_temporaries} partly written files of killed processes"
    if report.removed_scratch:
        extra += f", and {report.removed_scratch} scratch copies of the code that killed replays or resumes left"
    if report.removed_kept_scratch:
        extra += (f", and {report.removed_kept_scratch} copies of the code that failed replays kept for their logs "
                  f"(handed over more than {_duration(grace)} ago)")
    print(f"removed {report.removed_objects} objects ({report.freed_bytes / 2**20:.1f} MiB){extra}")
    if report.kept_young:
        if report.active_runs:
            why = (f"used in the last {_duration(grace)}, or since the earliest of the {report.active_runs} run(s) recording, "
                   "replaying or resuming now started: they may be part of a checkpoint not committed yet. `hindlog gc` "
                   "frees them once those have ended")
        else:
            why = (f"written in the last {_duration(grace)}: a running process may still need them. `hindlog gc` frees "
                   "them later; `--grace 0` now")
        print(f"kept {report.kept_young} unreferenced objects ({report.kept_young_bytes / 2**20:.1f} MiB) {why}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
