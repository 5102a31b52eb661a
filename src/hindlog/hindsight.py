"""Finding hindsight statements and placing them into recorded code.

``find_additions`` compares a file as recorded with the file as it is now and
returns the statements that were added (the hindsight code), or the lines
that changed otherwise (which replay refuses). ``place`` puts those
statements into another recorded version of the file by structural matching:
the same enclosing functions and loops, after the same neighbouring
statement. ``probed_loops`` tells which ``hl.loop`` loops a replay must run
because a new statement is in them or in a project function they call.
"""

from __future__ import annotations

import ast
import io
import tokenize
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Additions:
    """What changed in one file between a recorded version and now."""

    path: str
    #: Line ranges (1-based, inclusive) of the new statements in the new source.
    statements: list[tuple[int, int]] = field(default_factory=list)
    #: A unified diff of the lines that changed other than by adding statements.
    other_changes: str = ""
    #: Why the new source does not parse, if it does not.
    syntax_error: str = ""
    #: Lines where a new log statement shares its line with recorded code (``x = f(); print(x)``,
    #: which only --force replays): the other statements there are not new.
    shared_lines: list[int] = field(default_factory=list)


def code_lines(src: str) -> list[str]:
    """The lines of ``src`` without their comments (a comment added to a line changes no code),
    right-stripped; the raw lines where ``src`` does not tokenize."""
    lines = src.splitlines()
    try:
        comments = [tok for tok in tokenize.generate_tokens(io.StringIO(src).readline) if tok.type == tokenize.COMMENT]
    except (tokenize.TokenError, SyntaxError):
        return [l.rstrip() for l in lines]
    out = list(lines)
    for tok in comments:
        row, col = tok.start
        if row - 1 < len(out):
            out[row - 1] = out[row - 1][:col]
    return [l.rstrip() for l in out]


def span(stmt: ast.stmt) -> tuple[int, int]:
    """The lines a statement takes, its decorators included."""
    first = min([d.lineno for d in getattr(stmt, "decorator_list", []) or []] + [stmt.lineno])
    return first, stmt.end_lineno or stmt.lineno


def find_additions(path: str, old_src: str, new_src: str) -> Additions:
    """The statements ``new_src`` adds to ``old_src``, and any other change."""
    try:
        ast.parse(new_src, filename=path or "<unknown>")
    except SyntaxError as e:
        # Not a change --force could replay: the code must run.
        return Additions(path, syntax_error=f"{path} does not parse now: {e.msg} (line {e.lineno})")
    old_lines = old_src.splitlines()
    new_lines = new_src.splitlines()
    import difflib  # only replay diffs code; recording imports this module too

    matcher = difflib.SequenceMatcher(None, code_lines(old_src), code_lines(new_src), autojunk=False)
    inserted: set[int] = set()
    #: Lines of changed hunks (a line changed next to an added one): a log statement among them
    #: is still a new statement, which --force replays as such.
    changed: set[int] = set()
    bad: list[str] = []
    old_code, new_code = matcher.a, matcher.b
    tree = ast.parse(new_src)
    # Statements that begin their line (not the body of ``elif c: ...`` on its header's line),
    # by the non-blank lines they take.
    statements = [
        (stmt, {l for l in range(span(stmt)[0], span(stmt)[1] + 1) if new_code[l - 1].strip()}, _begins_line(new_lines, stmt))
        for stmt in _all_statements(tree)
    ]
    # ``a; b(`` over two lines: ``b`` shares ``a``'s line and is new with it.
    follows = {id(b): a for block in _statement_blocks(tree) for a, b in zip(block, block[1:]) if b.lineno == a.end_lineno}
    whole = [(stmt, own) for stmt, own, begins in statements if begins or id(stmt) in follows]
    opcodes = matcher.get_opcodes()
    for k, (tag, i1, i2, j1, j2) in enumerate(opcodes):
        if tag == "equal":
            continue
        removed = [l for l in old_code[i1:i2] if l.strip()]
        if tag in ("replace", "delete") and removed:
            bad.append(f"@@ -{i1 + 1},{i2 - i1} +{j1 + 1},{j2 - j1} @@")
            bad.extend("-" + l for l in old_lines[i1:i2])
            bad.extend("+" + l for l in new_lines[j1:j2])
            changed.update(j + 1 for j in range(j1, j2) if new_code[j].strip())
            continue
        if tag == "insert":
            j1, j2 = _aligned_insert(new_code, opcodes, k, whole)
        inserted.update(j + 1 for j in range(j1, j2) if new_code[j].strip())
    out = Additions(path)
    if not inserted and not changed:
        out.other_changes = "\n".join(bad)
        return out
    covered: set[int] = set()
    added: set[int] = set()
    for stmt, own, begins in statements:
        if own and id(follows.get(id(stmt))) in added and own <= inserted:
            out.statements.append(span(stmt))
            added.add(id(stmt))
            covered |= own
            continue
        if not own or covered & own:
            continue
        if own <= inserted and begins:
            out.statements.append(span(stmt))
            added.add(id(stmt))
            covered |= own
        elif own <= inserted | changed and _is_log_or_print(stmt):
            # A log statement on a changed line (``x = 1; hl.log("x", x)``) or on a new clause's
            # header line (``elif c: hl.log(...)``) is new for --force; its line is still a change.
            out.statements.append(span(stmt))
            out.shared_lines.extend(sorted(own & changed))
            if begins:
                covered |= own
    for line in sorted(inserted - covered):
        bad.append(f"@@ +{line} @@ (an added line that is not a whole new statement)")
        bad.append("+" + new_lines[line - 1])
    out.statements = sorted(set(out.statements))  # (``a = f(); hl.log("a", a)``: one line, two statements)
    out.other_changes = "\n".join(bad)
    return out


def _begins_line(lines: list[str], stmt: ast.stmt) -> bool:
    """Whether ``stmt`` begins its line (not ``x = 1; y = 2``'s second, nor ``if c: y()``'s body)."""
    return not lines[stmt.lineno - 1][: stmt.col_offset].strip()


def _aligned_insert(
    new_code: list[str], opcodes: list[tuple[str, int, int, int, int]], k: int, whole: list[tuple[ast.stmt, set[int]]]
) -> tuple[int, int]:
    """Where the lines of the insert ``opcodes[k]`` are, among the equally good alignments.

    Where an inserted block's last line equals the line before it (a closing ``)``), or its
    first line the line after it (a second ``with torch.no_grad():``), the diff may put the
    block one or more lines off the statement that was added; of the alignments the equal
    lines around it allow, the first whose lines are whole statements is taken."""
    _, _, _, j1, j2 = opcodes[k]
    lo = opcodes[k - 1][3] if k > 0 and opcodes[k - 1][0] == "equal" else j1
    hi = opcodes[k + 1][4] if k + 1 < len(opcodes) and opcodes[k + 1][0] == "equal" else j2

    def is_whole(a: int, b: int) -> bool:
        lines = {j + 1 for j in range(a, b) if new_code[j].strip()}
        covered: set[int] = set()
        for _stmt, own in whole:
            if own and own <= lines:
                covered |= own
        return covered == lines

    if is_whole(j1, j2):
        return j1, j2
    shift = 1
    while j1 - shift >= lo and new_code[j1 - shift] == new_code[j2 - shift]:
        if is_whole(j1 - shift, j2 - shift):
            return j1 - shift, j2 - shift
        shift += 1
    shift = 1
    while j2 + shift <= hi and new_code[j1 + shift - 1] == new_code[j2 + shift - 1]:
        if is_whole(j1 + shift, j2 + shift):
            return j1 + shift, j2 + shift
        shift += 1
    return j1, j2


def _is_log_or_print(stmt: ast.stmt) -> bool:
    """``hl.log(...)`` or ``print(...)`` as a statement of its own."""
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) and call_name(stmt.value) in ("log", "print")


def call_name(call: ast.Call) -> str | None:
    """The name a call calls: ``f`` of ``f(...)`` and of ``obj.f(...)``."""
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


def _all_statements(tree: ast.AST) -> list[ast.stmt]:
    """Statements in source order, outer before inner."""
    out: list[ast.stmt] = []

    def visit(block: list[ast.stmt]) -> None:
        for stmt in block:
            out.append(stmt)
            for child in _child_blocks(stmt):
                visit(child)

    visit(tree.body)  # type: ignore[attr-defined]
    return out


def _statement_blocks(tree: ast.AST) -> Iterator[list[ast.stmt]]:
    """Every block of statements: the module's body and each compound statement's."""
    yield tree.body  # type: ignore[attr-defined]
    for stmt in _all_statements(tree):
        yield from _child_blocks(stmt)


def _child_blocks(stmt: ast.stmt) -> list[list[ast.stmt]]:
    blocks = []
    for name in ("body", "orelse", "finalbody"):
        block = getattr(stmt, name, None)
        if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
            blocks.append(block)
    for handler in getattr(stmt, "handlers", []) or []:
        blocks.append(handler.body)
    for case in getattr(stmt, "cases", []) or []:
        blocks.append(case.body)
    return blocks


# ----------------------------------------------------------------- structural placement


def _header(stmt: ast.stmt) -> str:
    """A compound statement's identity: its kind and header, without its body."""
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return f"{type(stmt).__name__} {stmt.name}"
    if isinstance(stmt, (ast.For, ast.AsyncFor)):
        return f"for {ast.unparse(stmt.target)} in {ast.unparse(stmt.iter)}"
    if isinstance(stmt, ast.While):
        return f"while {ast.unparse(stmt.test)}"
    if isinstance(stmt, ast.If):
        return f"if {ast.unparse(stmt.test)}"
    if isinstance(stmt, (ast.With, ast.AsyncWith)):
        return "with " + ", ".join(ast.unparse(i) for i in stmt.items)
    if isinstance(stmt, ast.Match):
        return f"match {ast.unparse(stmt.subject)}"
    return type(stmt).__name__


def _text(stmt: ast.stmt) -> str:
    if _child_blocks(stmt):
        return _header(stmt)
    return ast.unparse(stmt)


@dataclass
class _Block:
    path: tuple[str, ...]  # headers of the enclosing compound statements (with the field name)
    stmts: list[ast.stmt]
    parent: ast.stmt | None


def _blocks(tree: ast.Module) -> list[_Block]:
    out: list[_Block] = []

    def visit(block: list[ast.stmt], path: tuple[str, ...], parent: ast.stmt | None) -> None:
        out.append(_Block(path, block, parent))
        for stmt in block:
            for name in ("body", "orelse", "finalbody"):
                sub = getattr(stmt, name, None)
                if isinstance(sub, list) and sub and isinstance(sub[0], ast.stmt):
                    visit(sub, path + (f"{_header(stmt)}.{name}",), stmt)
            # A handler or case is known by what it catches or matches, not by its position
            # (a version may add one before it).
            for handler in getattr(stmt, "handlers", []) or []:
                caught = ast.unparse(handler.type) if handler.type is not None else ""
                visit(handler.body, path + (f"{_header(stmt)}.except {caught} as {handler.name}",), stmt)
            for case in getattr(stmt, "cases", []) or []:
                guard = f" if {ast.unparse(case.guard)}" if case.guard is not None else ""
                visit(case.body, path + (f"{_header(stmt)}.case {ast.unparse(case.pattern)}{guard}",), stmt)

    visit(tree.body, (), None)
    return out


@dataclass
class Unit:
    """Consecutive new statements of one block, with what surrounds them in the new source."""

    lines: tuple[int, int]
    path: tuple[str, ...]
    before: str | None  # text of the nearest old statement before the unit, in the same block
    after: str | None  # text of the nearest old statement after it
    #: The statement before it occurs more than once in its block: only an occurrence that the
    #: statement after it follows too is the place.
    before_repeated: bool = False
    #: Its statements: whole (``ast.unparse``), as anchors (``_text``), and their lines.
    texts: tuple[str, ...] = ()
    anchors: tuple[str, ...] = ()
    spans: tuple[tuple[int, int], ...] = ()


def units(new_src: str, statements: list[tuple[int, int]]) -> list[Unit]:
    """Group new statements by block and record their anchors."""
    tree = ast.parse(new_src)
    new_set = set(statements)
    out: list[Unit] = []
    for block in _blocks(tree):
        parent = block.parent
        if parent is not None and any(lo <= parent.lineno and (parent.end_lineno or parent.lineno) <= hi for lo, hi in statements):
            continue  # inside a new compound statement, which is placed whole (`if c: hl.log(x)` on one line)
        run: list[ast.stmt] = []
        for idx, stmt in enumerate(block.stmts + [None]):  # type: ignore[operator]
            is_new = stmt is not None and span(stmt) in new_set
            if is_new:
                run.append(stmt)
                continue
            if run:
                first = block.stmts.index(run[0])
                before = next((_text(s) for s in reversed(block.stmts[:first]) if span(s) not in new_set), None)
                after = _text(stmt) if stmt is not None else None
                repeated = before is not None and sum(
                    1 for s in block.stmts if span(s) not in new_set and _text(s) == before) > 1
                out.append(Unit((span(run[0])[0], span(run[-1])[1]), block.path, before, after, repeated,
                                tuple(ast.unparse(s) for s in run), tuple(_text(s) for s in run), tuple(span(s) for s in run)))
                run = []
    return out


class PlacementError(Exception):
    """A new statement cannot be placed unambiguously into a recorded version."""


def place(new_src: str, statements: list[tuple[int, int]], target_src: str) -> str:
    """``target_src`` with the new statements of ``new_src`` inserted by structural matching."""
    new_lines = new_src.splitlines(keepends=True)
    target_lines = target_src.splitlines(keepends=True)
    if target_lines and not target_lines[-1].endswith("\n"):
        target_lines[-1] += "\n"
    tree = ast.parse(target_src)
    blocks = [b for b in _blocks(tree)]
    insertions: list[tuple[int, list[str]]] = []
    placed = units(new_src, statements)
    inside_strings = _lines_inside_strings(new_src)
    for lo, hi in statements:
        if not any(u.lines[0] <= lo and hi <= u.lines[1] for u in placed):
            raise PlacementError(f"cannot place the statement at line {lo}: its block has no counterpart hindlog can match")
    for unit in placed:
        candidates = [b for b in blocks if b.path == unit.path]
        trimmed = _not_yet_there(unit, candidates)
        if trimmed is None:
            continue
        unit = trimmed
        spots: list[tuple[int, str, _Block]] = []  # (insert before line index, indentation, block)
        if unit.before is not None:
            # After the statement it follows in the new code; where that statement occurs more
            # than once in the block, after the occurrence that the following one follows too.
            matches = [(b, k) for b in candidates for k, s in enumerate(b.stmts) if _text(s) == unit.before]
            if unit.before_repeated:
                # Which of the new code's occurrences it follows, only the next statement tells.
                matches = [(b, k) for b, k in matches if (k + 1 < len(b.stmts) and _text(b.stmts[k + 1]) == unit.after)
                           or (unit.after is None and k + 1 == len(b.stmts))]
            elif len(matches) > 1:
                def followed(b: _Block, k: int) -> bool:
                    if k + 1 == len(b.stmts):
                        return True
                    texts = [_text(s) for s in b.stmts]
                    return unit.after is not None and (texts[k + 1] == unit.after or unit.after not in texts)
                matches = [m for m in matches if followed(*m)] or matches
            for b, k in matches:
                s = b.stmts[k]
                if k + 1 < len(b.stmts) and b.stmts[k + 1].lineno == (s.end_lineno or s.lineno):
                    raise PlacementError(f"cannot place the statement at line {unit.lines[0]} (after `{unit.before}`): "
                                         "the recorded version has another statement on the same line")
                spots.append(((s.end_lineno or s.lineno), _indent(target_lines, b.stmts[0]), b))
        elif unit.after is not None:
            for b in candidates:
                if b.stmts and _text(b.stmts[0]) == unit.after:
                    spots.append((span(b.stmts[0])[0] - 1, _indent(target_lines, b.stmts[0]), b))
        if len(spots) == 1 and not _begins_line(target_lines, spots[0][2].stmts[0]):
            raise PlacementError(f"cannot place the statement at line {unit.lines[0]}: the recorded version writes its "
                                 "block on the line of its header")
        if len(spots) != 1:
            what = f"after `{unit.before}`" if unit.before else f"before `{unit.after}`"
            what_is = f"`{unit.before}`" if unit.before else f"`{unit.after}`"
            reason = (f"no place matches: this version of the code has no {what_is} there" if not spots
                      else f"{len(spots)} places match")
            raise PlacementError(f"cannot place the statement at line {unit.lines[0]} ({what}): {reason}")
        line_index, indent, _ = spots[0]
        chunk = new_lines[unit.lines[0] - 1 : unit.lines[1]]
        literal = [unit.lines[0] + k in inside_strings for k in range(len(chunk))]
        insertions.append((line_index, _reindent(chunk, indent, literal)))
    for line_index, chunk in sorted(insertions, key=lambda x: -x[0]):
        target_lines[line_index:line_index] = chunk
    return "".join(target_lines)


def _not_yet_there(unit: Unit, candidates: list[_Block]) -> Unit | None:
    """``unit`` less its first statements that the recorded version has right after the statement
    it follows, and its last ones right before the statement it precedes (statements removed
    since and added back: its runs logged their values, and placing them again would log each
    twice); None if it has them all there. The same text elsewhere in the block is another
    statement, and does not count."""
    n = len(unit.texts)
    lo = hi = 0
    for b in candidates:
        texts = [ast.unparse(s) for s in b.stmts]
        anchors = [_text(s) for s in b.stmts]
        starts = [k + 1 for k, a in enumerate(anchors) if a == unit.before] if unit.before is not None else [0]
        for start in starts:
            k = 0
            while k < n and start + k < len(texts) and texts[start + k] == unit.texts[k]:
                k += 1
            lo = max(lo, k)
        ends = [k for k, a in enumerate(anchors) if a == unit.after] if unit.after is not None else [len(texts)]
        for end in ends:
            k = 0
            while k < n and end - 1 - k >= 0 and texts[end - 1 - k] == unit.texts[n - 1 - k]:
                k += 1
            hi = max(hi, k)
    if lo == n or hi == n or lo + hi >= n:
        return None  # (its first ones after one neighbour, the rest before the other: all there)
    if not lo and not hi:
        return unit
    keep = slice(lo, n - hi)
    return Unit(
        (unit.spans[lo][0], unit.spans[n - hi - 1][1]), unit.path,
        unit.anchors[lo - 1] if lo else unit.before, unit.anchors[n - hi] if hi else unit.after,
        unit.before_repeated and not lo, unit.texts[keep], unit.anchors[keep], unit.spans[keep],
    )


def _indent(lines: list[str], stmt: ast.stmt) -> str:
    """The indentation of ``stmt``'s block as written (spaces or tabs)."""
    line = lines[span(stmt)[0] - 1]
    return line[: len(line) - len(line.lstrip())]


def _lines_inside_strings(src: str) -> set[int]:
    """The lines that begin inside a string literal (the second and later lines of a
    triple-quoted string): their text is the string's, so reindenting them would change it."""
    out: set[int] = set()
    try:
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type == tokenize.STRING or tok.type == getattr(tokenize, "FSTRING_MIDDLE", None):
                out.update(range(tok.start[0] + 1, tok.end[0] + 1))
    except (tokenize.TokenError, SyntaxError):
        pass
    return out


def _reindent(lines: list[str], indent: str, literal: list[bool]) -> list[str]:
    """``lines`` moved to ``indent``, but for those that begin inside a string (``literal``)."""
    first = lines[0]
    current = first[: len(first) - len(first.lstrip())]
    out = []
    for line, inside_string in zip(lines, literal):
        if line.strip() and not inside_string:
            # Deeper lines keep what they have beyond the first line's indentation.
            rest = line[len(current):] if line.startswith(current) else line.lstrip()
            out.append(indent + rest)
        else:
            out.append(line)
    if out and not out[-1].endswith("\n"):
        out[-1] += "\n"
    return out


# ----------------------------------------------------------------- which loops must run


def api_loop_name(node: ast.AST) -> str | None:
    """The name of a ``for ... in hl.loop("name", ...)`` loop, or None. The ``hl.loop`` call may
    be handed to others: ``enumerate(hl.loop("step", loader))``, ``tqdm(...)``, ``zip(...)``."""
    if not isinstance(node, (ast.For, ast.AsyncFor)):
        return None
    # (A new loop in a replay's copy of the code reads its iterable through ``_hindsight_iter``:
    # isolate_new_code; the search below sees through it like through ``enumerate``.)
    calls = [node.iter]
    while calls:
        call = calls.pop(0)
        if not isinstance(call, ast.Call):
            continue
        if call_name(call) == "loop" and call.args and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str):
            return call.args[0].value
        calls.extend(a.value if isinstance(a, ast.Starred) else a for a in call.args)
        calls.extend(k.value for k in call.keywords)
    return None


def _called_names(node: ast.AST) -> set[str]:
    return {name for n in ast.walk(node) if isinstance(n, ast.Call) and (name := call_name(n)) is not None}


def _used_names(node: ast.AST, aliases: dict[str, str]) -> set[str]:
    """The names ``node`` calls or refers to (a function handed to ``sorted(key=...)`` is called
    there), with the imported names its aliases rename."""
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load):
            out.add(n.id)
            if n.id in aliases:
                out.add(aliases[n.id])
        elif isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Load):
            out.add(n.attr)
    return out


@dataclass
class _Names:
    """What the names of one file are bound to, as far as calls through them go."""

    #: Names bound by imports (modules, and functions or classes of other packages) ...
    imported: set[str]
    #: ... and those of them that rename what they import (``as``): alias -> imported name.
    aliases: dict[str, str]


def _file_names(tree: ast.AST, project_modules: set[str]) -> _Names:
    imported: set[str] = set()
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            # What the project's own modules define (``from nets import net``: a model) is not
            # explained by importing it.
            project = isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "") in project_modules)
            for a in node.names:
                bound = a.asname or a.name.split(".")[0]
                if not project and not (isinstance(node, ast.Import) and a.name in project_modules):
                    imported.add(bound)
                if a.asname and isinstance(node, ast.ImportFrom):
                    aliases[a.asname] = a.name
    return _Names(imported, aliases)


def _module_names(paths: list[str]) -> set[str]:
    """The dotted names the project's files may be imported by (``src/pkg/mod.py``: ``src.pkg.mod``,
    ``pkg.mod``, ``mod``)."""
    out: set[str] = set()
    for path in paths:
        if not path.endswith(".py"):
            continue
        parts = path[:-3].replace("\\", "/").split("/")
        if parts[-1] == "__init__":
            parts = parts[:-1]
        for k in range(len(parts)):
            out.add(".".join(parts[k:]))
    return out


def _called_implicitly(name: str) -> bool:
    """Methods Python calls without naming them at the call: ``model(x)`` runs ``forward``
    (through ``nn.Module.__call__``), a ``DataLoader`` a data set's ``__getitem__``, and so on
    for every special method."""
    return name == "forward" or (name.startswith("__") and name.endswith("__") and name != "__init__")
_BUILTINS = frozenset(dir(__import__("builtins")))


def _root(node: ast.AST) -> ast.AST:
    """``torch`` of ``torch.nn.functional.relu``, ``self`` of ``self.layers[0].fc``."""
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node


def _calls_an_object(node: ast.AST, names: _Names, defined: set[str]) -> bool:
    """Whether ``node`` may call an object of a project class (``model(x)``, ``self.net(x)``) or
    a function it was handed (a hook, a callback): a call through a name that no import,
    builtin or project definition explains, or a call that hands such a name to a library
    (``checkpoint(model, x)``). Method calls on values (``loss.backward()``) count too: their
    syntax is that of calling an attribute that holds a model."""

    def explained(expr: ast.AST) -> bool:
        root = _root(expr)
        return isinstance(root, ast.Name) and (root.id in names.imported or root.id in _BUILTINS or root.id in defined)

    for n in ast.walk(node):
        if not isinstance(n, ast.Call):
            continue
        f = n.func
        if isinstance(f, ast.Name):
            if not explained(f):
                return True
        elif isinstance(f, ast.Attribute):
            if not explained(f) and f.attr not in defined:
                return True
        else:
            return True  # handlers[k](x), (lambda: ...)()
        if any(isinstance(a, (ast.Name, ast.Attribute, ast.Subscript)) and not explained(a)
               for a in [*n.args, *(k.value for k in n.keywords)]):
            return True
    return False


def _referenced_not_called(trees: dict[str, ast.AST], functions: set[str]) -> bool:
    """Whether one of ``functions`` is used as a value (a hook, a callback, ``partial(f)``):
    whatever it is handed to may call it from anywhere."""
    for tree in trees.values():
        called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
        for n in ast.walk(tree):
            if id(n) in called:
                continue
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id in functions:
                return True
            if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Load) and n.attr in functions:
                return True  # self.on_output, monitor.on_output
    return False


def _parse_all(files: dict[str, str]) -> dict[str, ast.Module]:
    """The syntax trees of the sources that parse."""
    trees = {}
    for path, src in files.items():
        try:
            trees[path] = ast.parse(src)
        except SyntaxError:
            continue
    return trees


def _loop_namer(names: dict[str, dict[int, str]] | None) -> Any:
    """``loop_name(node, path)``: a loop's ``hl.loop`` name, or the one ``names`` (path -> line ->
    name, hands-free instrumentation's) gives it; None for other nodes."""
    given_names = names or {}

    def loop_name(node: ast.AST, path: str = "") -> str | None:
        given = given_names.get(path, {}).get(getattr(node, "lineno", -1))
        if given is not None and isinstance(node, (ast.For, ast.AsyncFor, ast.While)):
            return given
        return api_loop_name(node)

    return loop_name


def probed_loops(
    files: dict[str, str],
    new_statements: dict[str, list[tuple[int, int]]],
    names: dict[str, dict[int, str]] | None = None,
) -> set[str]:
    """Names of the loops that contain a new statement, directly or through calls.

    ``files`` maps paths to (patched) sources; ``new_statements`` maps paths to
    the line ranges of new statements in those sources. Loops are named by
    their ``hl.loop("name", ...)`` call, or by ``names`` (path -> line -> name,
    the names hands-free instrumentation gives).
    """
    loop_name = _loop_namer(names)
    trees = _parse_all(files)
    probed: set[str] = set()
    touched_functions: set[str] = set()
    for path, ranges in new_statements.items():
        tree = trees.get(path)
        if tree is None:
            continue
        for lo, hi in ranges:
            for node in ast.walk(tree):
                end = getattr(node, "end_lineno", None)
                if end is None or not (node.lineno <= lo and hi <= end) or (node.lineno == lo and end == hi):
                    continue
                name = loop_name(node, path)
                if name:
                    probed.add(name)
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    touched_functions.add(node.name)
    # Functions the new statements define (a hook they register) log wherever they are called;
    # a new lambda, wherever it is handed to.
    new_lambda = False
    for path, ranges in new_statements.items():
        tree = trees.get(path)
        if tree is None:
            continue
        for stmt in _all_statements(tree):
            if span(stmt) in set(ranges):
                for node in ast.walk(stmt):
                    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        touched_functions.add(node.name)
                    new_lambda = new_lambda or isinstance(node, ast.Lambda)
    # Functions that (transitively) call a touched function are touched too.
    project_modules = _module_names(list(trees))
    file_names = {path: _file_names(tree, project_modules) for path, tree in trees.items()}
    functions: dict[str, list[tuple[ast.AST, _Names]]] = {}
    defined: set[str] = set()
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.setdefault(node.name, []).append((node, file_names[path]))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(node.name)
    # A touched ``forward`` runs wherever a model is called, and a touched hook or callback
    # wherever what it was handed to runs: calls through unknown names reach them.
    indirect = False

    def reaches(node: ast.AST, names: _Names) -> bool:
        return bool(_used_names(node, names.aliases) & touched_functions) or (indirect and _calls_an_object(node, names, defined))

    changed = True
    while changed:
        changed = False
        if not indirect:
            indirect = new_lambda or any(_called_implicitly(f) for f in touched_functions) \
                or _referenced_not_called(trees, touched_functions)
        for fname, defs in functions.items():
            if fname in touched_functions:
                continue
            if any(reaches(d, names) for d, names in defs):
                touched_functions.add(fname)
                changed = True
    for path, tree in trees.items():
        for node in ast.walk(tree):
            name = loop_name(node, path)
            if name and reaches(node, file_names[path]):
                probed.add(name)
    # A loop whose checkpoint lacks a value that a new statement reads must run too.
    for path, ranges in new_statements.items():
        if path in trees and ranges:
            probed |= _loops_feeding(files[path], ranges, lambda node, path=path: loop_name(node, path),
                                     declared=None if names else declared_names(trees.values()),
                                     others=[t for p, t in trees.items() if p != path])
    # A probed loop's enclosing loops run too (except the outermost, which always runs).
    for path, tree in trees.items():
        for node in ast.walk(tree):
            name = loop_name(node, path)
            if name is None:
                continue
            for inner in ast.walk(node):
                if inner is not node and loop_name(inner, path) in probed:
                    probed.add(name)
    return probed


loop_name = api_loop_name


def loops_new_code_runs(
    files: dict[str, str],
    new_statements: dict[str, list[tuple[int, int]]],
    names: dict[str, dict[int, str]] | None = None,
) -> set[str]:
    """Names of the loops in project functions that the new statements call (directly or through
    other functions): a new ``hl.log("test", evaluate(test_loader))`` runs ``evaluate``'s loop
    itself, apart from the loops the record ran."""
    loop_name = _loop_namer(names)
    trees = _parse_all(files)
    functions: dict[str, list[tuple[str, ast.AST]]] = {}
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.setdefault(node.name, []).append((path, node))
    pending: list[ast.AST] = []
    for path, ranges in new_statements.items():
        tree = trees.get(path)
        if tree is not None:
            pending.extend(s for s in _all_statements(tree) if span(s) in set(ranges))
    out: set[str] = set()
    seen: set[str] = set()
    while pending:
        for called in _called_names(pending.pop()):
            if called in seen:
                continue
            seen.add(called)
            for path, fn in functions.get(called, []):
                for node in ast.walk(fn):
                    name = loop_name(node, path)
                    if name:
                        out.add(name)
                pending.append(fn)
    return out


def declared_names(trees: Any) -> set[str]:
    """The names of the objects that ``hl.checkpoints(...)`` calls declare (their keywords and the
    variables given), which every checkpoint restores."""
    out: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and call_name(node) == "checkpoints":
                for k in node.keywords:
                    if k.arg:
                        out.add(k.arg)
                    if isinstance(k.value, ast.Name):
                        out.add(k.value.id)
    return out


def _loops_feeding(src: str, ranges: list[tuple[int, int]], name_of: Any, declared: set[str] | None = None,
                   others: list[ast.Module] | None = None) -> set[str]:
    """Loops that assign a local which a new statement of their scope reads, where the recorded
    code does not read that local after the loop. A loop's checkpoint holds only the locals the
    recorded code reads after it, so skipping such a loop would leave the new statement reading
    a stale or unbound name.

    ``declared``: the names ``hl.checkpoints`` declares; with it, an object that the loop changes
    in place (``tracker.last = loss``) and that is not declared counts too (no checkpoint holds
    it). None: hands-free mode, which checkpoints every object its main loop changes.
    ``others``: the project's other files, whose functions a loop may call to change objects."""
    from .sourceinfo import Functions, _facts_for, _read_before_written, _surely_assigned, assigned_names, free_names, names_read_by_callees

    tree = ast.parse(src)
    wanted = set(ranges)
    new_nodes = [s for s in _all_statements(tree) if span(s) in wanted]
    if not new_nodes:
        return set()
    # The names each scope's new statements read, leaving out those that statements just before
    # them in their block (new ones included) surely assigned after any loop there.
    siblings = {id(stmt): block.stmts[:k] for block in _blocks(tree) for k, stmt in enumerate(block.stmts)}
    by_scope: dict[int, tuple[ast.AST, list[ast.stmt]]] = {}
    reads: dict[int, set[str]] = {}
    for node in new_nodes:
        scope = _scope_of(tree, node)
        by_scope.setdefault(id(scope), (scope, []))[1].append(node)
        fresh: set[str] = set()
        for before in siblings.get(id(node), []):
            if any(isinstance(n, (ast.For, ast.AsyncFor, ast.While)) for n in ast.walk(before)):
                fresh -= assigned_names([before])
            else:
                fresh = (fresh - assigned_names([before])) | _surely_assigned([before])
        # A loop around the statement binds its target before the statement runs: reading
        # ``y`` in ``for x, y in val_loader:`` does not read the ``y`` an earlier loop left.
        for outer in ast.walk(scope):
            if isinstance(outer, (ast.For, ast.AsyncFor)) and outer is not node and \
                    any(n is node for stmt in outer.body for n in ast.walk(stmt)):
                fresh |= assigned_names([outer.target])
        own = _read_before_written([node]) - _comprehension_names([node]) - fresh
        reads.setdefault(id(scope), set()).update(own)
        # What a function reads and never binds comes from the functions around it or the
        # module, whose loops may have assigned it (``report()`` logging the last batch's
        # ``out``); so do the globals of the file's functions that the statement calls.
        callees = names_read_by_callees(tree, [node])
        reads[id(scope)] |= callees
        free = (free_names(scope, own) if scope is not tree else set()) | callees
        for outer in _enclosing_scopes(tree, node):
            if outer is not scope and free:
                by_scope.setdefault(id(outer), (outer, []))
                reads.setdefault(id(outer), set()).update(free)
    not_state = {n for n in assigned_names([s for s in ast.walk(tree) if isinstance(s, (ast.Import, ast.ImportFrom))])} | {
        s.name for s in ast.walk(tree) if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    # The recorded code is the tree without the new statements.
    _strip(tree, {id(n) for n in new_nodes})
    functions = Functions([tree, *(others or [])])
    out: set[str] = set()
    for key, (scope, nodes) in by_scope.items():
        for loop in _scope_loops(scope):
            name = name_of(loop)
            if name is None or any(loop.lineno <= n.lineno <= (loop.end_lineno or loop.lineno) for n in nodes):
                continue
            facts = _facts_for(scope, loop, functions)
            # Modules are not state (``hl.log(...)`` is no change of ``hl``), nor are the file's
            # own functions and classes.
            changed = facts.assigned | (facts.mutated - declared - not_state if declared is not None else frozenset())
            if (reads[key] & changed) - facts.live_after:
                out.add(name)
    return out


def _enclosing_scopes(tree: ast.Module, node: ast.stmt) -> list[ast.AST]:
    """The functions whose bodies hold ``node``, innermost first, then the module."""
    around = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n is not node
              and n.lineno < node.lineno <= (n.end_lineno or n.lineno)]
    return sorted(around, key=lambda n: -n.lineno) + [tree]


def _scope_of(tree: ast.Module, node: ast.stmt) -> ast.AST:
    """The innermost function (or the module) whose body holds ``node``."""
    best: ast.AST = tree
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n is not node:
            if n.lineno < node.lineno <= (n.end_lineno or n.lineno):
                if best is tree or n.lineno > best.lineno:  # type: ignore[attr-defined]
                    best = n
    return best


def _scope_loops(scope: ast.AST) -> list[ast.For | ast.AsyncFor | ast.While]:
    """The loops of a scope, not those of the functions or classes defined in it."""
    out: list[ast.For | ast.AsyncFor | ast.While] = []
    stack = list(scope.body)  # type: ignore[attr-defined]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, (ast.For, ast.AsyncFor, ast.While)):
            out.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return out


def _comprehension_names(nodes: list[ast.stmt]) -> set[str]:
    """Names bound by comprehensions and lambdas inside ``nodes`` (they have scopes of their own)."""
    out: set[str] = set()
    for node in nodes:
        for n in ast.walk(node):
            if isinstance(n, ast.comprehension):
                out |= {t.id for t in ast.walk(n.target) if isinstance(t, ast.Name)}
            elif isinstance(n, ast.Lambda):
                out |= {a.arg for a in ast.walk(n.args) if isinstance(a, ast.arg)}
    return out


def _strip(tree: ast.AST, ids: set[int]) -> None:
    """Remove the statements whose ids are in ``ids`` from every block of ``tree``."""
    for node in ast.walk(tree):
        for name in ("body", "orelse", "finalbody"):
            block = getattr(node, name, None)
            if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                kept = [s for s in block if id(s) not in ids]
                if len(kept) != len(block):
                    setattr(node, name, kept or [ast.Pass()])
        for handler in getattr(node, "handlers", []) or []:
            handler.body = [s for s in handler.body if id(s) not in ids] or [ast.Pass()]


#: Functions and methods that draw random numbers (torch, NumPy, ``random``, generator objects).
RANDOM_DRAWS = frozenset({
    "rand", "randn", "randint", "randperm", "rand_like", "randn_like", "randint_like", "normal", "uniform",
    "bernoulli", "multinomial", "poisson", "random", "integers", "choice", "shuffle", "permutation", "sample",
    "gauss", "randrange", "binomial", "exponential", "standard_normal", "random_sample", "choices",
    "uniform_", "normal_", "bernoulli_", "random_", "exponential_", "geometric_", "cauchy_", "log_normal_",
})


#: What a replay's copy of the code puts before a new simple statement that begins its line, and
#: around the iterable of a new ``for`` loop (``controller.hindsight_code``, ``hindsight_mark``
#: and ``hindsight_iter``): the run's random generators are where new code found them after it.
#: Both leave every line where it was.
HINDSIGHT_PREFIX = 'with __import__("hindlog")._hindsight_code(): '
HINDSIGHT_ITER = '__import__("hindlog")._hindsight_iter(__import__("hindlog")._hindsight_mark(), ('
HINDSIGHT_ITER_END = "))"
#: Around the value of a new statement where a ``with`` cannot go (after ``if c:`` or ``a;`` on
#: its line), and around the test of a new ``if`` or ``while`` (``controller.hindsight_call``).
HINDSIGHT_CALL = '__import__("hindlog")._hindsight_call(lambda: ('
HINDSIGHT_CALL_END = "))"
#: Calls that draw no random numbers: a statement that makes only these (``hl.log("loss",
#: loss.item())``) is not wrapped, which would cost it 0.1-0.2 ms each time it runs.
#: (Not ``list``, ``sorted``, ``min`` and the like: they read an iterable, and reading a loader draws.)
_DRAW_FREE_CALLS = frozenset({
    "log", "item", "tolist", "float", "int", "str", "bool", "len", "round", "abs", "print",
    "append", "detach", "cpu", "numpy", "clone", "format", "isinstance",
    "keys", "values", "items", "get", "numel", "size", "copy", "sqrt", "exp", "log10", "argmax", "argmin",
})


def _may_draw(node: ast.AST) -> bool:
    """Whether ``node`` may draw random numbers: it calls anything else than ``_DRAW_FREE_CALLS``
    or iterates (a comprehension over a loader)."""
    return any((isinstance(n, ast.Call) and call_name(n) not in _DRAW_FREE_CALLS) or isinstance(n, ast.comprehension)
               for n in ast.walk(node))


def isolate_new_code(src: str, ranges: list[tuple[int, int]], shared_lines: Collection[int] = ()) -> str:
    """``src`` with the new statements in ``ranges`` run so that they leave the run's random
    generators as they found them: a new simple statement that begins its line and may draw
    gets ``HINDSIGHT_PREFIX``; one that follows another on its line (``if c: hl.log(...)``)
    has its value computed through ``HINDSIGHT_CALL``, as have the tests of new ``if`` and
    ``while`` statements; a new ``for`` loop reads its iterable through ``HINDSIGHT_ITER``.
    Line numbers do not change (the replay finds new code by them). Not covered: new lambdas that
    recorded code calls later (a hook), and where a lambda would change what the expression means
    (in a class body, or with ``:=``, ``super()``, ``locals()``); the statements of a new function
    are wrapped like any other. On ``shared_lines`` (``Additions.shared_lines``) only the log
    statements are new."""
    if not ranges:
        return src
    tree = ast.parse(src)
    # Lines as the parser counts them (``str.splitlines`` also splits at form feeds and more).
    lines = src.split("\n")
    encoded = [line.encode() for line in lines]
    # The new statements and the statements within them; not a recorded statement that shares
    # a line with a new one (``x = f(); print(x)`` under --force).
    wanted = {tuple(r) for r in ranges}
    new_ids: set[int] = set()
    for stmt in _all_statements(tree):
        if id(stmt) not in new_ids and span(stmt) in wanted and (stmt.lineno not in shared_lines or _is_log_or_print(stmt)):
            new_ids.update(id(n) for n in ast.walk(stmt) if isinstance(n, ast.stmt))
    new = lambda node: id(node) in new_ids  # noqa: E731
    in_class = _class_level_statements(tree)
    # (line, byte column, text): inserted right to left, so earlier offsets stay valid.
    edits: list[tuple[int, int, str]] = []

    def wrap(expr: ast.expr, around: str, end: str) -> None:
        edits.append((expr.end_lineno or expr.lineno, expr.end_col_offset or 0, end))
        edits.append((expr.lineno, expr.col_offset, around))

    simple: dict[int, list[ast.stmt]] = {}  # simple statements, new or not, by the line they start on
    for node in ast.walk(tree):
        if not isinstance(node, ast.stmt):
            continue
        if not _child_blocks(node):
            simple.setdefault(node.lineno, []).append(node)
        elif not new(node):
            continue
        elif isinstance(node, ast.For):
            # A generator suspended between the wrapper's two halves would set the run's
            # generators back over what other code drew meanwhile.
            if not _suspends(node.iter):
                wrap(node.iter, HINDSIGHT_ITER, HINDSIGHT_ITER_END)
        elif isinstance(node, (ast.If, ast.While)):
            if id(node) not in in_class and _may_draw(node.test) and _lambda_keeps_meaning(node.test):
                wrap(node.test, HINDSIGHT_CALL, HINDSIGHT_CALL_END)
    for lineno, line_statements in simple.items():
        nodes = [n for n in line_statements if new(n)]
        if not any(_may_draw(n) for n in nodes):  # ``import``, ``pass``, ``break`` call nothing
            continue
        first = min(nodes, key=lambda n: n.col_offset)
        previous = lines[lineno - 2].rstrip() if lineno > 1 else ""
        # A ``with`` goes only where a statement may begin its logical line (not after ``if
        # c:``, ``a;`` or a backslash that continues the line before), and only over new code.
        if (len(nodes) == len(line_statements) and not encoded[lineno - 1][: first.col_offset].strip()
                and not previous.endswith("\\")):
            if (
                # ``global`` must stay where it is; a docstring stays one.
                not any(isinstance(n, (ast.Global, ast.Nonlocal)) for n in nodes)
                and not (len(nodes) == 1 and isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant))
                and not any(_suspends(n) for n in nodes)
            ):
                # One ``with`` covers the statements that share the line.
                edits.append((lineno, first.col_offset, HINDSIGHT_PREFIX))
            continue
        for n in nodes:
            value = getattr(n, "value", None) if isinstance(n, (ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Return)) else None
            if value is not None and id(n) not in in_class and _may_draw(value) and _lambda_keeps_meaning(value):
                wrap(value, HINDSIGHT_CALL, HINDSIGHT_CALL_END)
    for lineno, col, text in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
        raw = encoded[lineno - 1]
        encoded[lineno - 1] = raw[:col] + text.encode() + raw[col:]  # AST columns count UTF-8 bytes
    return "\n".join(raw.decode() for raw in encoded)


def _suspends(node: ast.AST) -> bool:
    return any(isinstance(n, (ast.Yield, ast.YieldFrom, ast.Await)) for n in ast.walk(node))


#: Calls whose meaning depends on the function they are made in: a lambda would change it.
_SCOPE_CALLS = frozenset({"super", "locals", "vars", "dir", "eval", "exec"})


def _lambda_keeps_meaning(expr: ast.expr) -> bool:
    """Whether ``lambda: (expr)`` computes what ``expr`` does where it stands: it neither
    suspends nor assigns (``:=`` would bind in the lambda) nor asks for its own scope."""
    return not any(
        isinstance(n, (ast.Yield, ast.YieldFrom, ast.Await, ast.NamedExpr))
        or (isinstance(n, ast.comprehension) and n.is_async)  # only in an ``async def``
        or (isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in _SCOPE_CALLS)
        for n in ast.walk(expr)
    )


def _class_level_statements(tree: ast.AST) -> set[int]:
    """The ids of statements that run in a class body, where a lambda cannot see the names the
    body defined."""
    found: set[int] = set()

    def visit(stmts: list[ast.stmt], in_class: bool) -> None:
        for stmt in stmts:
            if in_class:
                found.add(id(stmt))
            if isinstance(stmt, ast.ClassDef):
                visit(stmt.body, True)
            elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(stmt.body, False)
            else:
                for block in _child_blocks(stmt):
                    visit(block, in_class)

    visit(getattr(tree, "body", []), False)
    return found


def _new_calls(files: dict[str, str], new_statements: dict[str, list[tuple[int, int]]]) -> Iterator[ast.Call]:
    """The calls that the new statements make."""
    for path, ranges in new_statements.items():
        try:
            tree = ast.parse(files.get(path, ""))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and any(lo <= node.lineno <= hi for lo, hi in ranges):
                yield node


def draws_random_numbers(files: dict[str, str], new_statements: dict[str, list[tuple[int, int]]]) -> bool:
    """Whether a new statement calls a function that draws random numbers: every later draw of
    the run then differs from the record's."""
    return any(call_name(node) in RANDOM_DRAWS and not any(k.arg == "generator" for k in node.keywords)
               for node in _new_calls(files, new_statements))  # (``generator=g``: its own generator's)


#: Methods that write output a replay does not store: a logger's, a stream's ``write``.
UNSTORED_OUTPUT = frozenset({"debug", "info", "warning", "warn", "error", "critical", "exception", "write"})


def writes_unstored_output(files: dict[str, str], new_statements: dict[str, list[tuple[int, int]]]) -> bool:
    """Whether a new statement writes output other than ``print(...)`` to stdout and ``hl.log``
    (``logger.info(...)``, ``sys.stdout.write(...)``, ``print(..., file=sys.stderr)``): it runs,
    but what it writes is not stored."""
    return any(
        (isinstance(node.func, ast.Attribute) and node.func.attr in UNSTORED_OUTPUT)
        or (isinstance(node.func, ast.Name) and node.func.id == "print" and any(k.arg == "file" for k in node.keywords))
        for node in _new_calls(files, new_statements)
    )


#: Library functions that read the gradients of what they are given (``torch.nn.utils``'s).
GRADIENT_READERS = frozenset({"clip_grad_norm_", "clip_grad_norm", "clip_grad_value_", "get_total_norm", "clip_grads_with_norm_"})


def _gradient_reader(trees: dict[str, ast.Module], skipped: Any = None, flow: "_GradientFlow | None" = None) -> Any:
    """``reads(node, path)``: whether ``node`` (of file ``path``) reads ``.grad`` or calls a
    ``GRADIENT_READERS`` function, directly or in a project function it calls; not inside the
    loops ``skipped(node, path)`` names (those a replay skips, or runs whole). With ``flow``,
    calls are followed as it follows them (``f(...)`` and ``self.f(...)``: ``sched.step()`` is
    no project optimizer's ``step``); without, ``obj.f(...)`` leads to any project ``f`` too."""
    by_name = flow is None
    flow = flow or _GradientFlow(trees)
    # ``from torch.nn.utils import clip_grad_norm_ as clip``: the names they go by.
    readers = GRADIENT_READERS | {a.asname for t in trees.values() for n in ast.walk(t) if isinstance(n, ast.ImportFrom)
                                  for a in n.names if a.asname and a.name in GRADIENT_READERS}
    seen: set[int] = set()

    def nodes(node: ast.AST, path: str) -> Iterator[ast.AST]:
        pending = [node]
        while pending:
            n = pending.pop()
            if skipped is not None and n is not node and skipped(n, path):
                continue
            yield n
            pending.extend(ast.iter_child_nodes(n))

    def reads(node: ast.AST, path: str = "") -> bool:
        for n in nodes(node, path):
            if isinstance(n, ast.Attribute) and n.attr == "grad" and isinstance(n.ctx, ast.Load):
                return True
            if isinstance(n, ast.Call) and call_name(n) in readers:
                return True
        for n in nodes(node, path):
            if not isinstance(n, ast.Call):
                continue
            found = flow.functions.get(call_name(n) or "") if by_name else flow.callee(n)
            if found is not None and id(found[1]) not in seen:
                seen.add(id(found[1]))
                if reads(found[1], found[0]):
                    return True
        return False

    return reads


def reads_gradients(files: dict[str, str], new_statements: dict[str, list[tuple[int, int]]]) -> bool:
    """Whether a new statement reads ``.grad`` or calls a ``GRADIENT_READERS`` function (directly
    or in a project function it calls).

    Checkpoints do not hold gradients, so replay runs the nested loops before such statements."""
    trees = _parse_all(files)
    reads = _gradient_reader(trees)
    for path, ranges in new_statements.items():
        tree = trees.get(path)
        if tree is None:
            continue
        for stmt in _all_statements(tree):
            if span(stmt) in {tuple(r) for r in ranges} and reads(stmt):
                return True
    return False


_LOOPS = (ast.For, ast.AsyncFor, ast.While)


class _GradientFlow:
    """Where the project's code computes and clears gradients, following its calls of project
    functions: plain calls and ``self.name(...)`` (``model.train()`` or ``sched.step()`` is no
    project function of that name)."""

    def __init__(self, trees: dict[str, ast.Module]) -> None:
        self.functions = {n.name: (path, n) for path, t in trees.items() for n in ast.walk(t)
                          if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}

    def callee(self, call: ast.Call) -> tuple[str, ast.AST] | None:
        f = call.func
        if isinstance(f, ast.Name):
            return self.functions.get(f.id)
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "self":
            return self.functions.get(f.attr)
        return None

    def callees(self, node: ast.AST) -> list[tuple[str, ast.AST]]:
        """The project functions ``node`` calls, directly or through others (each once)."""
        out: list[tuple[str, ast.AST]] = []
        seen: set[int] = set()
        pending = [node]
        while pending:
            for n in ast.walk(pending.pop()):
                found = self.callee(n) if isinstance(n, ast.Call) else None
                if found is not None and id(found[1]) not in seen:
                    seen.add(id(found[1]))
                    out.append(found)
                    pending.append(found[1])
        return out

    def reaches_backward(self, node: ast.AST) -> bool:
        """Whether ``node``, or a project function it calls, calls ``.backward()``."""
        return any(_is_backward(n) for body in [node, *(fn for _p, fn in self.callees(node))] for n in ast.walk(body))

    def own_backward(self, node: ast.AST, seen: set[int] | None = None) -> bool:
        """Whether ``node`` calls ``.backward()`` outside every loop inside it (a loop's steps are
        that loop's own), also in the project functions it calls there."""
        seen = set() if seen is None else seen
        pending = list(ast.iter_child_nodes(node))
        while pending:
            n = pending.pop()
            if isinstance(n, _LOOPS):
                continue
            if _is_backward(n):
                return True
            found = self.callee(n) if isinstance(n, ast.Call) else None
            if found is not None and id(found[1]) not in seen:
                seen.add(id(found[1]))
                if self.own_backward(found[1], seen):
                    return True
            pending.extend(ast.iter_child_nodes(n))
        return False

    def cleared_before_each_backward(self, stmts: list[ast.stmt], cleared: bool = False) -> bool:
        """Whether every ``.backward()`` of ``stmts`` (outside their loops) comes after a statement
        of its own block, or of a block around it, that clears the gradients: ``if i >= warmup:
        opt.zero_grad(); loss.backward(); opt.step()`` leaves gradients behind, but the next
        backward clears them first, so none go on into a later step."""
        for stmt in stmts:
            if self.clears(stmt):
                cleared = True
                continue
            if isinstance(stmt, _LOOPS) or isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue  # a loop's steps are its own; a definition runs nothing
            blocks = _child_blocks(stmt)
            if blocks:
                if not all(self.cleared_before_each_backward(b, cleared) for b in blocks):
                    return False
                if _is_backward_in(getattr(stmt, "test", None)) or _is_backward_in(getattr(stmt, "items", None)):
                    return False  # (a backward in a condition: nothing clears before it there)
                continue
            if not cleared and self.own_backward(stmt):
                return False
        return True

    def clears(self, stmt: ast.AST, seen: frozenset[int] = frozenset()) -> bool:
        """Whether ``stmt`` surely clears gradients: ``opt.zero_grad()``, ``model.zero_grad()``,
        ``p.grad = None``, or a project function that does so unconditionally."""
        value = getattr(stmt, "value", None) if isinstance(stmt, (ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign)) else None
        if isinstance(value, ast.Call):
            # (``loss = train_step(batch)``, ``losses.append(update(x))``, ``hl.log("td", update(x))``)
            for call in (n for n in ast.walk(value) if isinstance(n, ast.Call)):
                if call_name(call) == "zero_grad":
                    return True
                found = self.callee(call)
                if found is not None and id(found[1]) not in seen and \
                        any(self.clears(s, seen | {id(found[1])}) for s in getattr(found[1], "body", [])):
                    return True
            return False
        if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Constant) and stmt.value.value is None:
            return any(isinstance(t, ast.Attribute) and t.attr == "grad" for t in stmt.targets)
        if isinstance(stmt, (ast.For, ast.AsyncFor)) and stmt.body:
            return all(self.clears(s, seen) for s in stmt.body)  # for p in model.parameters(): p.grad = None
        if isinstance(stmt, (ast.With, ast.AsyncWith)):
            return any(self.clears(s, seen) for s in stmt.body)
        return False


def _is_backward_in(node: Any) -> bool:
    """Whether ``node`` (an expression, a list of with-items, or None) calls ``.backward()``."""
    if node is None:
        return False
    return any(_is_backward(n) for item in (node if isinstance(node, list) else [node]) for n in ast.walk(item))


def _is_backward(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "backward"


def gradients_carry_over(files: dict[str, str], main_loop: str | None, names: dict[str, dict[int, str]] | None = None) -> str | None:
    """A loop of the replayed main loop's iterations (the main loop itself, a nested loop, or a
    plain loop of a function it calls) whose steps call ``.backward()`` and clear the gradients
    only under a condition (``if (k + 1) % accum == 0: opt.step(); opt.zero_grad()``), with
    nothing clearing them unconditionally around it: the gradients of its last steps go on into
    the next iteration of the main loop. Checkpoints do not hold gradients, so no restore can
    stand for the iterations before. Returns the loop's name (or where it is), or None."""
    if main_loop is None:
        return None
    loop_name = _loop_namer(names)
    trees = _parse_all(files)
    flow = _GradientFlow(trees)
    for path, tree in trees.items():
        for main in ast.walk(tree):
            if not isinstance(main, _LOOPS) or loop_name(main, path) != main_loop:
                continue
            if any(flow.clears(s) for s in main.body):
                continue  # cleared at the top level of every iteration: nothing goes on
            if flow.own_backward(main) and not flow.cleared_before_each_backward(main.body):
                return main_loop  # a step-based main loop accumulating over its own iterations
            for where, scope in [(path, main), *flow.callees(main)]:
                for block in _statement_blocks(scope):
                    for loop in block:
                        if loop is main or not isinstance(loop, _LOOPS) or not flow.own_backward(loop):
                            continue
                        # Cleared in every step, or around the loop in its block (before it, or
                        # after it before the iteration ends).
                        if any(flow.clears(s) for s in loop.body) or any(flow.clears(s) for s in block if s is not loop) \
                                or flow.cleared_before_each_backward(loop.body):
                            continue
                        return loop_name(loop, where) or f"at {where}:{loop.lineno}"
    return None


def new_state_carried(
    files: dict[str, str],
    new_statements: dict[str, list[tuple[int, int]]],
    main_loop: str | None,
    names: dict[str, dict[int, str]] | None = None,
) -> list[str]:
    """Names a new statement before the main loop binds (``best = 0.0``, ``window =
    deque(maxlen=3)``) and a new statement in it rebinds or changes (``best = max(best, acc)``,
    ``window.append(acc)``): state of the new code that one iteration hands to the next, which
    no checkpoint holds (the record had no such variable). A segment starting mid-run would
    start it afresh."""
    if main_loop is None:
        return []
    loop_name = _loop_namer(names)
    out: list[str] = []
    for path, tree in _parse_all({p: files[p] for p in new_statements if p in files}).items():
        ranges = new_statements[path]

        def is_new(node: ast.AST) -> bool:
            line = getattr(node, "lineno", -1)
            return any(lo <= line <= hi for lo, hi in ranges)

        for main in ast.walk(tree):
            if not isinstance(main, _LOOPS) or loop_name(main, path) != main_loop:
                continue
            before: set[str] = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.stmt) and is_new(node) and node.lineno < main.lineno:
                    for target in _assigned_targets(node):
                        before.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
            if not before:
                continue
            for node in ast.walk(main):
                if not (isinstance(node, ast.stmt) and is_new(node)):
                    continue
                changed = {n.id for t in _assigned_targets(node) for n in ast.walk(t) if isinstance(n, ast.Name)}
                for n in ast.walk(node):
                    if isinstance(n, ast.NamedExpr) and isinstance(n.target, ast.Name):
                        changed.add(n.target.id)  # (``best := max(best, acc)``)
                    elif isinstance(n, ast.Call):
                        root = _root_name(n.func.value) if isinstance(n.func, ast.Attribute) else None
                        if root is not None:
                            changed.add(root)  # (``history["acc"].append(acc)``)
                        # What a call is given it may change (``heapq.heappush(top, acc)``), but
                        # not ``hl.log("best", best)`` or ``len(window)``.
                        if call_name(n) not in _DRAW_FREE_CALLS | _READING_CALLS:
                            changed.update(a.id for a in [*n.args, *(k.value for k in n.keywords)] if isinstance(a, ast.Name))
                out.extend(sorted((changed & before) - set(out)))
    return out


#: Builtins that read what they are given.
_READING_CALLS = frozenset({"sum", "max", "min", "sorted", "list", "tuple", "set", "dict", "any", "all", "mean",
                            "repr", "hash", "id", "type", "zip", "enumerate", "reversed", "map", "filter"})


def _root_name(node: ast.AST) -> str | None:
    """The name an attribute or subscript chain starts from (``history["acc"]`` -> history)."""
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _assigned_targets(node: ast.AST) -> list[ast.AST]:
    if isinstance(node, ast.Assign):
        return list(node.targets)
    if isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        return [node.target]
    return []


def main_loop_calls_backward(files: dict[str, str], main_loop: str | None, names: dict[str, dict[int, str]] | None = None) -> bool:
    """Whether the main loop's own code (outside every loop in it, and in the project functions
    it calls there) calls ``.backward()``: REINFORCE's update after the episode's rollout loop."""
    if main_loop is None:
        return False
    loop_name = _loop_namer(names)
    trees = _parse_all(files)
    flow = _GradientFlow(trees)
    return any(flow.own_backward(node) for path, tree in trees.items() for node in ast.walk(tree)
               if isinstance(node, _LOOPS) and loop_name(node, path) == main_loop)


def main_loop_reads_gradients(files: dict[str, str], main_loop: str | None, names: dict[str, dict[int, str]] | None = None) -> bool:
    """Whether the main loop's own code (outside its nested loops, which a replay may skip)
    reads gradients: a recorded ``hl.log("grad_norm", ...)`` after the step loop. It would read
    none, or stale ones, where that loop was skipped."""
    if main_loop is None:
        return False
    loop_name = _loop_namer(names)
    trees = _parse_all(files)

    def nested(node: ast.AST, path: str) -> bool:
        return isinstance(node, (ast.For, ast.AsyncFor, ast.While)) and loop_name(node, path) is not None

    flow = _GradientFlow(trees)
    reads = _gradient_reader(trees, nested, flow)

    def skipped_backward(main: ast.AST, path: str) -> bool:
        """Whether a nested loop of the main loop's iterations (in its body or in a project
        function it calls) computes gradients: those a skipped loop would not leave behind."""
        for where, scope in [(path, main), *flow.callees(main)]:
            for n in ast.walk(scope):
                if n is not main and nested(n, where) and flow.reaches_backward(n):
                    return True
        return False

    for path, tree in trees.items():
        for node in ast.walk(tree):
            if loop_name(node, path) != main_loop:
                continue
            # Gradients computed by the main loop's own steps are there whatever is skipped.
            if not skipped_backward(node, path):
                continue
            pending: list[ast.AST] = list(getattr(node, "body", []))
            while pending:
                stmt = pending.pop()
                if isinstance(stmt, (ast.For, ast.AsyncFor, ast.While)) and loop_name(stmt, path) is not None:
                    continue  # a nested loop: skipped with its checkpoint, or run whole
                if isinstance(stmt, (ast.For, ast.AsyncFor, ast.While, ast.If, ast.With, ast.AsyncWith, ast.Try)) or \
                        type(stmt).__name__ in ("TryStar", "Match"):
                    header = [getattr(stmt, f) for f in ("test", "iter", "subject") if getattr(stmt, f, None) is not None]
                    header += [item.context_expr for item in getattr(stmt, "items", [])]
                    if any(reads(h, path) for h in header):
                        return True
                    for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                        pending.extend(getattr(stmt, field, None) or [])
                    continue
                if isinstance(stmt, (ast.ExceptHandler,)) or type(stmt).__name__ == "match_case":
                    pending.extend(stmt.body)  # type: ignore[attr-defined]
                    continue
                if reads(stmt, path):
                    return True
    return False
