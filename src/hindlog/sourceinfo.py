"""Static facts about the user's loops, read from the source with ``ast``.

For a running ``for`` loop (found from its frame and line) this tells which
local names the loop assigns and later code reads: the values a checkpoint
must hold so that skipping the loop and restoring leaves the program as
running it did. Results are cached per code object and line.
"""

from __future__ import annotations

import ast
import linecache
from dataclasses import dataclass
from functools import lru_cache
from types import FrameType


@dataclass(frozen=True)
class LoopFacts:
    """What a loop assigns and what of it is read outside the loop."""

    lineno: int
    end_lineno: int
    assigned: frozenset[str]
    #: Names assigned in the loop (or its target) that code outside the loop reads.
    live_after: frozenset[str]
    #: Names whose objects the loop changes in place (``history.append(x)``, ``d[k] = v``).
    mutated: frozenset[str]
    #: Names the loop's body assigns outside its nested loops. For the main loop these are all
    #: kept at iteration ends (``best_epoch``), even if the recorded code never reads them
    #: again: a statement added later may, and a replay segment starting there must find them.
    carried: frozenset[str] = frozenset()


def _scope_nodes(tree: ast.AST, lineno: int) -> tuple[ast.AST, ast.For | ast.While | None]:
    """The innermost function (or module) containing ``lineno`` and the innermost loop whose header holds it."""
    best_scope: ast.AST = tree
    best_loop: ast.For | ast.While | None = None
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            if node.lineno <= lineno <= (node.end_lineno or node.lineno):
                if best_scope is tree or node.lineno >= getattr(best_scope, "lineno", 0):
                    best_scope = node
        if isinstance(node, (ast.For, ast.AsyncFor, ast.While)):
            header_end = node.iter.end_lineno if isinstance(node, (ast.For, ast.AsyncFor)) else node.test.end_lineno
            if node.lineno <= lineno <= (header_end or node.lineno):
                if best_loop is None or node.lineno >= best_loop.lineno:
                    best_loop = node  # type: ignore[assignment]
    return best_scope, best_loop


def assigned_names(nodes: list[ast.stmt] | ast.AST) -> set[str]:
    """Names bound by the statements (not inside nested functions or classes)."""
    out: set[str] = set()
    stack = list(nodes) if isinstance(nodes, list) else [nodes]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            out.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
            continue
        elif isinstance(node, ast.Lambda):
            continue
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                out.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            out.add(node.name)
        stack.extend(ast.iter_child_nodes(node))
    return out


def loaded_names(nodes: list[ast.AST], skip: ast.AST | None = None) -> set[str]:
    """Names read by the nodes (including inside nested functions), leaving out ``skip``'s subtree."""
    out: set[str] = set()
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if node is skip:
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            out.add(node.id)
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            out.add(node.target.id)
        stack.extend(ast.iter_child_nodes(node))
    return out


@lru_cache(maxsize=64)
def _parse(filename: str, text: str) -> ast.Module | None:
    try:
        return ast.parse(text, filename)
    except SyntaxError:
        return None


def _module_ast(filename: str, module_globals: dict | None = None) -> ast.Module | None:
    lines = linecache.getlines(filename, module_globals)
    if not lines:
        return None
    return _parse(filename, "".join(lines))


_facts_cache: dict[tuple[object, int], LoopFacts | None] = {}


def loop_facts(frame: FrameType, lineno: int | None = None) -> LoopFacts | None:
    """Facts about the loop running in ``frame`` at ``lineno`` (default: the frame's line)."""
    line = lineno if lineno is not None else frame.f_lineno
    key = (frame.f_code, line)
    if key in _facts_cache:
        return _facts_cache[key]
    facts = None
    tree = _module_ast(frame.f_code.co_filename, frame.f_globals)
    if tree is not None:
        scope, loop = _scope_nodes(tree, line)
        if loop is not None:
            facts = _facts_for(scope, loop)
    _facts_cache[key] = facts
    return facts


def _facts_for(scope: ast.AST, loop: ast.For | ast.While) -> LoopFacts:
    targets = [loop.target] if isinstance(loop, (ast.For, ast.AsyncFor)) else []
    assigned = assigned_names([*targets, *loop.body, *loop.orelse])
    body = scope.body if isinstance(scope.body, list) else [scope.body]  # type: ignore[attr-defined]
    following: list[ast.stmt] = []
    outermost: ast.AST = loop
    path = _path_to(body, loop)
    for depth in range(len(path) - 1, -1, -1):
        block, index = path[depth]
        following.extend(block[index + 1 :])
        if depth > 0:
            parent_block, parent_index = path[depth - 1]
            parent = parent_block[parent_index]
            if isinstance(parent, ast.Try) or type(parent).__name__ == "TryStar":
                # After a loop inside ``try:`` come its ``else:`` and ``finally:`` blocks.
                if block is parent.body:
                    following.extend(parent.orelse)
                if block is not parent.finalbody:
                    following.extend(parent.finalbody)
        if isinstance(block[index], (ast.For, ast.AsyncFor, ast.While)):
            outermost = block[index]
    live = assigned & _read_before_written(following)
    # Values carried from one pass of the outermost loop to the next are live too (its own
    # target is bound afresh at the top of every pass, so reading it is not such a value).
    fresh = assigned_names([outermost.target]) if isinstance(outermost, (ast.For, ast.AsyncFor)) else set()
    live |= assigned & _read_before_written(outermost.body, fresh)  # type: ignore[attr-defined]
    live |= assigned & _mutated_containers(outermost.body)  # type: ignore[attr-defined]
    mutated = _mutated_containers([*loop.body, *loop.orelse])
    own_target = assigned_names([loop.target]) if isinstance(loop, (ast.For, ast.AsyncFor)) else set()
    carried = _assigned_outside_loops(loop.body) - own_target
    return LoopFacts(
        loop.lineno, loop.end_lineno or loop.lineno, frozenset(assigned), frozenset(live), frozenset(mutated), frozenset(carried)
    )


def _assigned_outside_loops(stmts: list[ast.stmt]) -> set[str]:
    """Names the statements assign, not counting those assigned only inside nested loops
    (batch temporaries) or nested functions and classes."""
    out: set[str] = set()
    for stmt in stmts:
        if isinstance(stmt, (ast.For, ast.AsyncFor, ast.While, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if isinstance(stmt, (ast.If, ast.With, ast.AsyncWith, ast.Try)) or type(stmt).__name__ == "TryStar":
            for field in ("body", "orelse", "finalbody"):
                out |= _assigned_outside_loops(getattr(stmt, field, []) or [])
            for handler in getattr(stmt, "handlers", []) or []:
                out |= _assigned_outside_loops(handler.body)
            if isinstance(stmt, (ast.With, ast.AsyncWith)):
                out |= assigned_names([i.optional_vars for i in stmt.items if i.optional_vars])
            continue
        out |= assigned_names([stmt])
    return out


def _path_to(block: list[ast.stmt], target: ast.AST) -> list[tuple[list[ast.stmt], int]]:
    """The (block, index) pairs from ``block`` down to the statement ``target``."""
    for i, stmt in enumerate(block):
        if stmt is target:
            return [(block, i)]
        for field in ("body", "orelse", "finalbody", "handlers"):
            sub = getattr(stmt, field, None)
            if not isinstance(sub, list):
                continue
            if field == "handlers":
                for handler in sub:
                    found = _path_to(handler.body, target)
                    if found:
                        return [(block, i), *found]
                continue
            found = _path_to(sub, target)
            if found:
                return [(block, i), *found]
    return []


def _mutated_containers(stmts: list[ast.stmt]) -> set[str]:
    """Names whose objects the statements change in place: ``x.append(...)``, ``x[k] = v``, ``x.a = v``."""
    out: set[str] = set()
    for node in ast.walk(ast.Module(body=list(stmts), type_ignores=[])):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
            out.add(node.func.value.id)
        elif isinstance(node, (ast.Subscript, ast.Attribute)) and isinstance(node.ctx, (ast.Store, ast.Del)):
            base = node.value
            while isinstance(base, (ast.Subscript, ast.Attribute)):
                base = base.value
            if isinstance(base, ast.Name):
                out.add(base.id)
    return out


def _read_before_written(stmts: list[ast.stmt], defined: set[str] | None = None) -> set[str]:
    """Names a block may read before it has surely assigned them (a conservative liveness)."""
    live: set[str] = set()
    _walk_block(stmts, defined or set(), live)
    return live


def _walk_block(stmts: list[ast.stmt], defined: set[str], live: set[str]) -> None:
    defined = set(defined)
    for stmt in stmts:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            live |= loaded_names(stmt.body) - defined  # closures read at call time
            defined.add(stmt.name)
        elif isinstance(stmt, ast.Assign):
            live |= loaded_names([stmt.value]) - defined
            live |= loaded_names(list(stmt.targets)) - defined  # subscripts and attributes read their base
            defined |= assigned_names(list(stmt.targets))
        elif isinstance(stmt, ast.AnnAssign):
            if stmt.value is not None:
                live |= loaded_names([stmt.value]) - defined
                defined |= assigned_names([stmt.target])
        elif isinstance(stmt, ast.AugAssign):
            live |= loaded_names([stmt.value, stmt.target]) - defined
            if isinstance(stmt.target, ast.Name) and stmt.target.id not in defined:
                live.add(stmt.target.id)
            defined |= assigned_names([stmt.target])
        elif isinstance(stmt, (ast.For, ast.AsyncFor)):
            live |= loaded_names([stmt.iter]) - defined
            inner = defined | assigned_names([stmt.target])
            _walk_block(stmt.body, inner, live)
            _walk_block(stmt.orelse, defined, live)
        elif isinstance(stmt, ast.While):
            live |= loaded_names([stmt.test]) - defined
            _walk_block(stmt.body, defined, live)
            _walk_block(stmt.orelse, defined, live)
        elif isinstance(stmt, ast.If):
            live |= loaded_names([stmt.test]) - defined
            _walk_block(stmt.body, defined, live)
            _walk_block(stmt.orelse, defined, live)
        elif isinstance(stmt, (ast.With, ast.AsyncWith)):
            live |= loaded_names([i.context_expr for i in stmt.items]) - defined
            inner = defined | assigned_names([i.optional_vars for i in stmt.items if i.optional_vars])
            _walk_block(stmt.body, inner, live)
            defined = inner | _surely_assigned(stmt.body)
        elif isinstance(stmt, ast.Try):
            for block in (stmt.body, stmt.orelse, stmt.finalbody):
                _walk_block(block, defined, live)
            for handler in stmt.handlers:
                _walk_block(handler.body, defined | ({handler.name} if handler.name else set()), live)
        else:
            live |= loaded_names([stmt]) - defined
            defined |= assigned_names([stmt])


def _surely_assigned(stmts: list[ast.stmt]) -> set[str]:
    out: set[str] = set()
    for stmt in stmts:
        if isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)):
            out |= assigned_names([stmt])
    return out
