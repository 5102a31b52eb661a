"""The ``hindlog`` command line: each command parses its arguments and calls the Python API."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from . import query
from .errors import HindlogError

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    def register(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = fn
        return fn

    return register


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hindlog",
        description="Hindsight logging for model training: record, add log statements later, replay.",
    )
    parser.add_argument("--store", help="the .hindlog directory to use (default: <project root>/.hindlog, or $HINDLOG_DIR)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("runs", help="list the runs of this project")
    p.add_argument("--script", help="only runs of this script")

    p = sub.add_parser("show", help="show one run: status, code version, args, environment, checkpoints")
    p.add_argument("run", help="run id, unique prefix, name, or 'latest'")

    p = sub.add_parser("logs", help="print logged values as a table, CSV or JSON")
    p.add_argument("names", nargs="+", metavar="NAME", help="logged names, e.g. loss acc")
    p.add_argument("--run", action="append", dest="runs", metavar="RUN", help="only this run (repeatable; default: all)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")

    p = sub.add_parser("diff", help="code and args of RUN compared with RUN2 (default: the working tree)")
    p.add_argument("run")
    p.add_argument("run2", nargs="?")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except HindlogError as e:
        print(f"hindlog: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


def _time(ts: Any) -> str:
    if ts is None or (isinstance(ts, float) and pd.isna(ts)):
        return "-"
    if isinstance(ts, pd.Timestamp):
        return ts.strftime("%Y-%m-%d %H:%M:%S")
    return _dt.datetime.fromtimestamp(float(ts)).strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: Any) -> str:
    if seconds is None or pd.isna(seconds):
        return "-"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{sec:02d}s"


@command("runs")
def _runs(args: argparse.Namespace) -> int:
    df = query.runs(store=args.store)
    if args.script:
        df = df[df["script"] == args.script]
    if df.empty:
        print("No runs yet. Run a script that uses hindlog to record one.")
        return 0
    view = pd.DataFrame(
        {
            "run": df["run_id"],
            "name": df["name"].fillna(""),
            "script": df["script"].fillna(""),
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
    info = query.run_info(args.run, store=args.store)
    started, ended = info.get("started"), info.get("ended")
    lines = [
        f"run          {info['run_id']}" + (f"  ({info['name']})" if info.get("name") else ""),
        f"status       {info['status']}" + (f"  flags: {', '.join(info['flags'])}" if info.get("flags") else ""),
        f"script       {info.get('script') or '-'}",
        f"code         {info.get('code_version') or '-'} ({info.get('code_kind') or 'pending'})",
        f"argv         {' '.join(info.get('argv') or [])}",
        f"started      {_time(started)}",
        f"ended        {_time(ended)}" + (f"  ({_duration(ended - started)})" if ended and started else ""),
        f"records      {info['records']}  names: {', '.join(info['names']) or '-'}",
    ]
    if info["args"]:
        lines.append("args         " + ", ".join(f"{k}={v!r}" for k, v in info["args"].items()))
    env = info.get("env") or {}
    if env:
        pkgs = ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items())
        lines.append(f"python       {env.get('python')} on {env.get('host')}  ({pkgs})")
    ckpts = info["checkpoints"]
    overhead = info.get("overhead")
    ckpt_line = f"checkpoints  {len(ckpts)}"
    if ckpts:
        iterations = sorted({c["iteration"] for c in ckpts})
        total = sum(c["nbytes"] for c in ckpts)
        ckpt_line += f" at iterations {_ranges(iterations)} ({total / 2**20:.1f} MiB before dedup)"
    lines.append(ckpt_line)
    if overhead is not None:
        eps = info.get("epsilon")
        lines.append(f"overhead     {overhead * 100:.2f}% of wall time (bound {eps * 100:.1f}%)" if eps is not None else f"overhead     {overhead * 100:.2f}%")
    print("\n".join(lines))
    return 0


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
    df = query.dataframe(*args.names, runs=args.runs, store=args.store)
    if df.empty:
        print(f"No values logged under {', '.join(args.names)}.", file=sys.stderr)
        return 1
    if args.format == "csv":
        df.to_csv(sys.stdout, index=False)
    elif args.format == "json":
        print(df.to_json(orient="records", default_handler=_json_default))
    else:
        print(df.to_string(index=False))
    return 0


def _json_default(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)
    return tolist() if tolist else str(value)


@command("diff")
def _diff(args: argparse.Namespace) -> int:
    text, changed = query.code_diff(args.run, args.run2, store=args.store)
    if changed:
        print("args:")
        for k, (a, b) in changed.items():
            print(f"  {k}: {json.dumps(a)} -> {json.dumps(b)}")
    print(text if text else "(no code changes)", end="" if text.endswith("\n") else "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
