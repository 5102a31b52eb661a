"""Queries over the catalog, as pandas DataFrames: ``hl.runs()`` and ``hl.dataframe()``."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import catalog
from .errors import CodeVersionError, RunNotFound, StoreError, warn_user
from .store import Store
from .values import decode

if TYPE_CHECKING:
    import pandas as pd

RUN_COLUMNS = ["run_id", "name", "project", "script", "status", "code_version", "started", "ended", "duration", "overhead", "flags"]
#: Names an arg takes ``_arg`` after: the columns, and ``rank``, a distributed run's column.
_RESERVED = frozenset([*RUN_COLUMNS, "rank"])


def _open(store: str | os.PathLike[str] | Store | None) -> Store:
    if isinstance(store, Store):
        return store
    if store is not None and Path(store).name == ".hindlog":
        # A project's own store: its project (where code diffs are read) is its parent, not the cwd.
        st = Store(Path(store))
    else:
        st = Store.for_project(store=store)
    if st.path.exists() and not st.path.is_dir():
        raise StoreError(f"{st.path} is a file, not a hindlog store (a store is a directory, such as a project's .hindlog)")
    return st


#: Damaged catalogs set aside that a read in this process has mentioned already.
_noticed_set_aside: set[Path] = set()


def _notice_set_aside(st: Store) -> None:
    """Say, once per process, that the runs recorded before a damaged catalog was set aside are
    not in what this store returns (``Store.set_aside_damaged_catalog``), and that records a
    run could not write wait in spill files."""
    for aside in st.damaged_catalogs():
        if aside not in _noticed_set_aside:
            _noticed_set_aside.add(aside)
            warn_user(f"hindlog: {catalog.set_aside_notice(aside)}")
    try:
        waiting = sorted({p.name.split(".", 1)[0] for p in st.spill_dir.glob("*.pkl")})
    except OSError:
        waiting = []
    if waiting and st.spill_dir not in _noticed_set_aside:
        _noticed_set_aside.add(st.spill_dir)
        warn_user(f"hindlog: records of run(s) {', '.join(waiting[:3])}{' and more' if len(waiting) > 3 else ''} wait in "
                  f"{st.spill_dir} (the catalog could not be written when they were logged): the next run that records "
                  "in this project writes them into the catalog; until then they are not shown here")


def _flush_own_run() -> None:
    """A reader in the recording process sees its own writes."""
    from . import record

    rec = record._recorder
    if rec is not None and not rec.finished:
        rec.writer.flush()


def runs(store: str | os.PathLike[str] | Store | None = None) -> pd.DataFrame:
    """One row per run: id, name, script, status, code version, times, overhead, flags and args
    (an arg named like one of these columns, or ``rank``, gets a column ``<name>_arg``); with a
    ``rank`` column after ``script`` where runs are ranks of a distributed launch."""
    import pandas as pd

    _flush_own_run()
    st = _open(store)
    if not st.exists():
        return pd.DataFrame(columns=RUN_COLUMNS)
    _notice_set_aside(st)
    conn = st.connect()
    try:
        rows = catalog.list_runs(conn)
        args = _settings(rows, catalog.run_args(conn))
    finally:
        conn.close()
    out = []
    for r in rows:
        row = {c: r.get(c) for c in RUN_COLUMNS if c != "duration"}
        row["duration"] = run_duration(r)
        row["started"] = pd.to_datetime(r["started"], unit="s") if r.get("started") else None
        row["ended"] = pd.to_datetime(r["ended"], unit="s") if r.get("ended") else None
        row.update({(f"{k}_arg" if k in _RESERVED else k): v for k, v in args.get(r["id"], {}).items()})
        out.append(row)
    frame = pd.DataFrame(out, columns=None if out else RUN_COLUMNS)
    ranks = [((r.get("env") or {}).get("distributed") or {}).get("rank") for r in rows]
    if any(rank is not None for rank in ranks):
        # The ranks of a torchrun launch record a run each: which process a row is.
        frame.insert(RUN_COLUMNS.index("script") + 1, "rank", pd.array(ranks, dtype="Int64"))
    for column in [c for c in frame.columns if c not in RUN_COLUMNS and c != "rank"]:
        present = [row[column] for row in out if row.get(column) is not None]
        if present and len(present) < len(out) and all(type(v) is int and -(2**63) <= v < 2**63 for v in present):
            # An int arg that a run lacks (it failed before asking): 8, not 8.0, beside the gap.
            frame[column] = pd.array([row.get(column) for row in out], dtype="Int64")
    return frame


def resolve_runs(conn: Any, refs: Sequence[str] | str | None) -> list[dict[str, Any]]:
    """Runs for a list of references (ids, unique starts or ends of ids, names, 'latest'); None means all."""
    if refs is None:
        return catalog.list_runs(conn)
    if isinstance(refs, str):
        refs = [refs]
    return [catalog.get_run(conn, ref) for ref in refs]


def run_duration(run: dict[str, Any]) -> float | None:
    """Seconds the run ran: from start to end, less the time it stood killed before a resume."""
    if not (run.get("ended") and run.get("started")):
        return None
    return run["ended"] - run["started"] - float((run.get("info") or {}).get("stopped_seconds") or 0.0)


#: What to know of values that a replay kept with --keep-diverged although it diverged.
_UNCHECKED_ADVICE = ("they were computed from a state that may not be the run's. A later replay of the run whose "
                     "recomputed values match the record's replaces them.")


def dataframe(*names: str, runs: Sequence[str] | str | None = None, store: str | os.PathLike[str] | Store | None = None) -> pd.DataFrame:
    """Values of ``names`` with one row per run and loop context.

    Columns: ``run_id``, ``script`` (the path of the run's script in its
    project), ``code_version``, each of the run's args, each loop's index (e.g.
    ``epoch``, ``step``), then one column per name. Recorded and replayed values
    appear together. A logged name that is also a loop's or one of the first
    three columns' gets the column ``<name>_logged``; an arg whose name is a
    loop's or a logged name's, ``<name>_arg``.
    A name whose values are all integers has a nullable integer column (``Int64``),
    so that a context without a value does not turn them into floats.
    """
    frame, logged = logged_frame(*names, runs=runs, store=store)
    # (By the name asked for: a column renamed ``<name>_logged`` beside a loop's is that name's.)
    never = [str(c)[: -len("_logged")] if str(c).endswith("_logged") and str(c)[: -len("_logged")] in names else str(c)
             for c in logged.columns if not logged[c].any()]
    if never and not frame.empty:
        warnings.warn(f"hl.dataframe: nothing was logged under {', '.join(never)} in these runs (a typo? or new statements whose replay failed or diverged, which keeps none of their values); "
                      "its column is empty", RuntimeWarning, stacklevel=2)
    elif frame.empty and names and (runs is None or isinstance(runs, str) or len(runs) > 0):
        logged = logged_names(runs=runs, store=store)
        known = f"names logged: {', '.join(logged[:20])}{', ...' if len(logged) > 20 else ''}" if logged else "none is logged yet"
        warnings.warn(f"hl.dataframe: nothing was logged under {', '.join(map(str, names))} in these runs (a typo? or new statements whose replay failed or diverged, which keeps none of their values); "
                      f"{known}", RuntimeWarning, stacklevel=2)
    return frame


def logged_frame(
    *names: str, runs: Sequence[str] | str | None = None, store: str | os.PathLike[str] | Store | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``dataframe(*names)`` and, for its value columns, a frame of booleans that is True where
    a value was logged: a logged NaN or None is then told apart from no value (``hindlog logs``)."""
    import numpy as np
    import pandas as pd

    if not names:
        raise ValueError("hl.dataframe needs at least one name, e.g. hl.dataframe('loss')")
    for n in names:
        if type(n) is not str or not n:
            raise TypeError(f"hl.dataframe names must be non-empty strings, got {n!r}")
    names = tuple(dict.fromkeys(names))  # a name asked for twice is one column
    _flush_own_run()
    st = _open(store)
    if not st.exists():
        return pd.DataFrame(columns=["run_id", "script", "code_version", *names]), pd.DataFrame(columns=list(names), dtype=bool)
    _notice_set_aside(st)
    conn = st.connect()
    try:
        selected = resolve_runs(conn, runs)
        by_key = {r["id"]: r for r in selected}
        rows = catalog.query_records(conn, names, list(by_key)) if by_key else []
        args = _settings(selected, catalog.run_args(conn, list(by_key))) if by_key else {}
    finally:
        conn.close()

    loop_names: list[str] = []
    repeated: dict[str, int] = {}
    table: dict[tuple[int, str], dict[str, Any]] = {}
    unchecked: dict[tuple[str, int], int] = {}
    for run, _ctx, _iteration, loops_json, name, kind, value, source in rows:
        if source == catalog.SOURCE_REPLAY_DIVERGED:
            unchecked[name, run] = unchecked.get((name, run), 0) + 1
        loops_json = loops_json or "[]"
        key = (run, loops_json)
        row = table.get(key)
        if row is None:
            row = {}
            for loop_name, index in json.loads(loops_json):
                if loop_name not in loop_names:
                    loop_names.append(loop_name)
                row[loop_name] = index
            table[key] = row
        if (name,) in row:
            repeated[name] = repeated.get(name, 0) + 1
        row[(name,)] = decode(kind, value)  # a tuple key: a value never overwrites a loop's index
    if repeated:
        warn_user(
            "hl.dataframe: " + ", ".join(f"{n!r} has {k} more value(s)" for n, k in repeated.items())
            + " in a loop context that already has one (logged in a plain `for` inside an hl.loop, in two loops of "
            "the same name, twice in one iteration, or outside every loop both before and after the main loop); each "
            "cell shows the last. Wrap the inner loop in hl.loop(\"name\", ...) so each value has a row, log them "
            "under different names, or name the loops apart."
        )

    if unchecked:
        warn_user(
            "hl.dataframe: " + "; ".join(f"{k} value(s) of {n!r} in run {by_key[run]['run_id']}" for (n, run), k in unchecked.items())
            + f" come from a replay whose recomputed values differed from the record's, kept with --keep-diverged: {_UNCHECKED_ADVICE}"
        )

    fixed = {"run_id", "script", "code_version", *loop_names}
    value_column = {n: f"{n}_logged" if n in fixed else n for n in names}
    arg_column: dict[str, str] = {}
    for a in args.values():
        for k in a:
            if k not in arg_column:
                arg_column[k] = f"{k}_arg" if k in fixed or k in names else k
    records = []
    for (run, _), row in table.items():
        r = by_key[run]
        full = {"run_id": r["run_id"], "script": r.get("script"), "code_version": r.get("code_version")}
        for k, column in arg_column.items():
            full[column] = args.get(run, {}).get(k)
        for k, v in row.items():
            full[value_column[k[0]] if isinstance(k, tuple) else k] = v
        records.append(full)
    columns = ["run_id", "script", "code_version", *arg_column.values(), *loop_names, *value_column.values()]
    df = pd.DataFrame(records, columns=columns)
    logged = pd.DataFrame({c: [c in rec for rec in records] for c in value_column.values()}, columns=list(value_column.values()), dtype=bool)
    for loop_name in loop_names:
        if df[loop_name].notna().all():
            df[loop_name] = df[loop_name].astype("int64")
        else:
            df[loop_name] = df[loop_name].astype("Int64")
    def gaps_in_integers(present: list[Any]) -> bool:
        """Integers only, with rows that lack them: pandas would make them floats (2.0 for 2)."""
        return bool(present) and len(present) < len(records) and all(
            (type(v) is int or isinstance(v, np.integer)) and -(2**63) <= int(v) < 2**63 for v in present
        )

    for column in value_column.values():
        present = [rec[column] for rec in records if column in rec]
        if any(v is None for v in present):
            # A logged None stays None (not NaN, which would read as a logged NaN or no value).
            df[column] = pd.Series([rec.get(column, np.nan) for rec in records], dtype=object, index=df.index)
        elif gaps_in_integers(present):
            df[column] = df[column].astype("Int64")
    for column in arg_column.values():
        if gaps_in_integers([rec[column] for rec in records if rec.get(column) is not None]):
            df[column] = df[column].astype("Int64")  # runs without the arg: <NA>
    order = df.sort_values(["run_id", *loop_names], kind="stable", na_position="first").index
    return df.loc[order].reset_index(drop=True), logged.loc[order].reset_index(drop=True)


def run_info(ref: str, store: str | os.PathLike[str] | Store | None = None) -> dict[str, Any]:
    """Everything recorded about one run: the run row, its args, names, counts and checkpoints."""
    _flush_own_run()
    st = _open(store)
    if not st.exists():  # a read must not create a store
        raise RunNotFound(f"There are no runs in {st.path} yet. Record one first (run a script that uses hindlog).")
    _notice_set_aside(st)
    conn = st.connect()
    try:
        run = catalog.get_run(conn, ref)
        run["args"] = catalog.run_args(conn, [run["id"]]).get(run["id"], {})
        run["names"] = [n for n in catalog.logged_names(conn, run["id"]) if n != catalog.STDOUT_AT]
        run["records"] = catalog.count_records(conn, run["id"])
        run["checkpoints"] = [
            {"iteration": it, "block": block, "loop": loop, "nbytes": nbytes}
            for it, block, loop, _manifest, nbytes in catalog.list_checkpoints(conn, run["id"])
        ]
    finally:
        conn.close()
    return run


def logged_names(runs: Sequence[str] | str | None = None, store: str | os.PathLike[str] | Store | None = None) -> list[str]:
    """The names values were logged under (in these runs, or any), replayed ones included."""
    _flush_own_run()
    st = _open(store)
    if not st.exists():
        return []
    conn = st.connect()
    try:
        if runs is None:
            found = catalog.logged_names(conn)
        else:
            found = sorted({n for r in resolve_runs(conn, runs) for n in catalog.logged_names(conn, r["id"])})
    finally:
        conn.close()
    return [n for n in found if not n.startswith("@")]  # hands-free output is shown by `show --output`


def _settings(runs: Sequence[dict[str, Any]], args: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Each run's settings as the tables show them (what ``hindlog replay --where`` sees too):
    the options its script's argparse parser returned, defaults included, and its ``hl.arg``
    values over them."""
    return {r["id"]: {**((r.get("info") or {}).get("options") or {}), **args.get(r["id"], {})} for r in runs}


def argv_options(argv: Sequence[str] | None) -> dict[str, Any]:
    """The ``--name value``, ``--name=value`` and ``--flag`` options of a command line, as an
    argparse script would name them (``--batch-size 32`` -> ``batch_size: 32``), with numbers
    as numbers: what ``--where`` sees of a run recorded with ``hindlog run``."""
    out: dict[str, Any] = {}
    args = list(argv or [])[1:]
    k = 0
    while k < len(args):
        token = args[k]
        k += 1
        if not token.startswith("--") or token == "--":
            continue
        name, eq, value = token[2:].partition("=")
        if not eq:
            if k < len(args) and not args[k].startswith("--"):
                value = args[k]
                k += 1
            else:
                out[name.replace("-", "_")] = True
                continue
        out[name.replace("-", "_")] = _number(value)
    return out


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def code_diff(ref: str, other: str | None = None, store: str | os.PathLike[str] | Store | None = None) -> tuple[str, dict[str, tuple[Any, Any]]]:
    """The code diff and the changed args from run ``ref`` to run ``other`` (default: the working tree).

    Returns ``(unified diff text, {arg: (value in ref, value in other)})``.
    """
    from . import codeversion

    st = _open(store)
    a = run_info(ref, st)
    b = run_info(other, st) if other else None
    if not a.get("code_version"):
        raise CodeVersionError(f"run {a['run_id']} has no code version (its snapshot failed or is still being made)")
    text = codeversion.diff(st, a["code_version"], b["code_version"] if b else None)
    changed: dict[str, tuple[Any, Any]] = {}
    if b is not None:
        # The settings the tables show: argparse's options, defaults included, and hl.arg values.
        sa, sb = _settings([a], {a["id"]: a["args"]})[a["id"]], _settings([b], {b["id"]: b["args"]})[b["id"]]
        for k in sorted(sa.keys() | sb.keys()):
            if sa.get(k) != sb.get(k):
                changed[k] = (sa.get(k), sb.get(k))
    return text, changed


def _group_order(group: Any) -> tuple[int, int]:
    """Before the main loop, its iterations in order, after it."""
    if group == "pre":
        return (0, 0)
    if group == "post":
        return (2, 0)
    return (1, group)


def output(ref: str, store: str | os.PathLike[str] | Store | None = None) -> list[tuple[int | None, int, str]]:
    """Lines a hands-free run printed: ``(main-loop iteration, source, text)`` in order.

    Source 0 is the recording, 1 a replay (lines of ``print`` calls added after the fact). A
    replayed line goes where it was printed among the recorded lines of its loop context (the
    replay stores how many came before it). One whose nested loop printed nothing in the record
    goes where it was printed among its iteration's main-loop lines. Any other goes right after
    the replayed line printed before it in its iteration (or before the one after it); if none of
    its iteration's has a place, before the next iteration's lines."""
    _flush_own_run()
    st = _open(store)
    if not st.exists():  # a read must not create a store
        raise RunNotFound(f"There are no runs in {st.path} yet. Record one first (run a script that uses hindlog).")
    conn = st.connect()
    try:
        run = catalog.get_run(conn, ref)
        rows = conn.execute(
            "SELECT r.rowid, r.ctx, c.iteration, c.loops, n.name, r.kind, r.value, r.source FROM records r "
            "JOIN names n ON n.id=r.name LEFT JOIN contexts c ON c.run=r.run AND c.id=r.ctx "
            "WHERE r.run=? AND n.name IN (?, ?) AND r.source != ? ORDER BY r.rowid",
            (run["id"], "@stdout", catalog.STDOUT_AT, catalog.SOURCE_PENDING),
        ).fetchall()
    finally:
        conn.close()
    after_main = catalog.split_outside_loops(run.get("info") or {})

    recorded: list[tuple[Any, int | None, str]] = []  # (group, iteration, text)
    recorded_in: dict[str, list[int]] = {}  # context key -> indices into recorded
    # A replay worker's lines and their places, by context id (each worker has its own ids):
    # a line and its place are paired in the order that worker stored them.
    replayed: dict[int, list[tuple[int, int | None, str, str]]] = {}
    positions: dict[int, list[Any]] = {}
    unchecked = 0
    for rowid, ctx, it, loops, name, kind, value, src in rows:
        loops = loops or "[]"
        if src == 0:
            if name == "@stdout":
                post = after_main is not None and after_main(loops, name, it)
                recorded_in.setdefault(catalog.context_key(loops, post), []).append(len(recorded))
                recorded.append((it if it is not None else ("post" if post else "pre"), it, decode(kind, value)))
        elif name == "@stdout":
            replayed.setdefault(ctx, []).append((rowid, it, loops, decode(kind, value)))
            unchecked += src == catalog.SOURCE_REPLAY_DIVERGED
        else:
            positions.setdefault(ctx, []).append(decode(kind, value))
    if unchecked:
        warn_user(f"{unchecked} replayed line(s) of run {run['run_id']} come from a replay whose recomputed values differed "
                  f"from the record's, kept with --keep-diverged: {_UNCHECKED_ADVICE}")

    first_of: dict[Any, int] = {}
    last_of: dict[Any, int] = {}
    for k, (g, _i, _t) in enumerate(recorded):
        first_of.setdefault(g, k)
        last_of[g] = k
    groups_with_lines = sorted(first_of, key=_group_order)

    def anchor(group: Any) -> tuple[int, int] | None:
        """Where a group's lines go when none has a place of its own."""
        if group in last_of:
            return (last_of[group], 3)
        later = [g for g in groups_with_lines if _group_order(g) > _group_order(group)]
        if later:
            return (first_of[later[0]], 0)
        return (len(recorded) - 1, 3) if recorded else None

    pending: list[tuple[int, Any, tuple[int, int] | None, tuple[int | None, int, str]]] = []  # (rowid, group, place, line)
    for ctx, lines in replayed.items():
        at = positions.get(ctx, [])
        if len(at) != len(lines) or not all(isinstance(a, list) and len(a) in (2, 3) for a in at):
            at = [None] * len(lines)  # stored without places
        for (rowid, it, loops, text), position in zip(lines, at):
            after_loop = bool(position[1]) if position is not None else it is None
            group = it if it is not None else ("post" if after_loop else "pre")
            indices = recorded_in.get(catalog.context_key(loops, after_loop), [])
            place = None
            if position is not None and indices:
                count = position[0]
                place = (indices[count], 0) if count < len(indices) else (indices[-1], 2)
            elif position is not None and len(position) == 3:
                # A nested loop that printed nothing in the record: among its iteration's lines.
                outer = recorded_in.get(catalog.context_key(json.dumps(json.loads(loops)[:1]), False), [])
                if outer:
                    count = position[2]
                    place = (outer[count], 0) if count < len(outer) else (outer[-1], 2)
            pending.append((rowid, group, place, (it, 1, text)))
    # Within a worker the stored order is the printed order: the lines without a place of their
    # own take their neighbours'.
    pending.sort(key=lambda p: p[0])
    by_group: dict[Any, list[list[Any]]] = {}
    for rowid, group, place, line in pending:
        by_group.setdefault(group, []).append([rowid, place, line])
    keyed: list[tuple[tuple[Any, ...], tuple[int | None, int, str]]] = []
    for group, items in by_group.items():
        previous = None
        for n, item in enumerate(items):
            if item[1] is None:
                following = next((other[1] for other in items[n + 1:] if other[1] is not None), None)
                item[1] = previous or following or anchor(group)
            previous = item[1]
            order = _group_order(group)
            keyed.append(((0, *item[1], order, item[0]) if item[1] is not None else (1, order, item[0]), item[2]))
    keyed.extend(((0, k, 1, (0, 0), 0), (it, 0, text)) for k, (_g, it, text) in enumerate(recorded))
    keyed.sort(key=lambda kv: kv[0])
    return [line for _k, line in keyed]
