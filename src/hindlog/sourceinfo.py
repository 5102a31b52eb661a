"""Static facts about the user's loops, read from the source with ``ast``.

For a running ``for`` loop (found from its frame and line) this tells which
local names the loop assigns and later code reads: the values a checkpoint
must hold so that skipping the loop and restoring leaves the program as
running it did. Results are cached per code object and line.
"""

from __future__ import annotations

import ast
import builtins
import linecache
import sys
from dataclasses import dataclass
from functools import lru_cache
from types import FrameType, ModuleType


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
    #: Whether the loop has an ``else:`` clause (which runs unless the loop was left by ``break``).
    has_else: bool = False
    #: Names an iteration of the loop may read before it assigns them, or changes in place
    #: without assigning: what one iteration hands to the next (``stream`` in ``b = next(stream)``,
    #: not ``it`` in ``it = iter(loader)``, which each iteration makes afresh).
    handed_on: frozenset[str] = frozenset()
    #: Names the loop calls (``noise(shape)``): an object of the script's own class called may
    #: change itself (its ``__call__`` counts, draws from a generator it holds).
    called: frozenset[str] = frozenset()


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


def _imported_function_trees(tree: ast.Module, module_globals: dict) -> list[ast.Module]:
    """The source trees of the modules that the functions this module imports by name come
    from (``from utils import ema_update``), outside the installed packages and the standard
    library: what they change, a call of them changes."""
    import os
    import sysconfig
    import types

    # The standard library's and the installed packages' folders (not the interpreter's prefix:
    # a project in /usr/src/app lies under /usr).
    paths = sysconfig.get_paths()
    outside = tuple({os.path.realpath(paths[k]) + os.sep for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths})
    out, seen = [], set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        for alias in node.names:
            value = module_globals.get(alias.asname or alias.name)
            code = getattr(value, "__code__", None) if isinstance(value, types.FunctionType) else None
            if code is None or code.co_filename in seen:
                continue
            seen.add(code.co_filename)
            if os.path.realpath(code.co_filename).startswith(outside) or any(
                    part in code.co_filename for part in ("site-packages", "dist-packages")):
                continue
            other = _module_ast(code.co_filename)
            if other is not None:
                out.append(other)
    return out


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
            facts = _facts_for(scope, loop, Functions([tree, *_imported_function_trees(tree, frame.f_globals)]), tree)
    _facts_cache[key] = facts
    return facts


def _facts_for(scope: ast.AST, loop: ast.For | ast.While, functions: Functions | None = None,
               module: ast.Module | None = None) -> LoopFacts:
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
    # Functions the code after the loop calls may read what the loop assigned, as globals or
    # closure variables of this scope.
    live |= assigned & names_read_by_callees(scope, [*following, *outermost.body])  # type: ignore[attr-defined]
    # Values carried from one pass of the outermost loop to the next are live too (its own
    # target is bound afresh at the top of every pass, so reading it is not such a value).
    fresh = assigned_names([outermost.target]) if isinstance(outermost, (ast.For, ast.AsyncFor)) else set()
    live |= assigned & _read_before_written(outermost.body, fresh)  # type: ignore[attr-defined]
    live |= assigned & _mutated_containers(outermost.body, functions)  # type: ignore[attr-defined]
    # ``global step; step += 1`` in a function the loop calls, or ``nonlocal step`` in a closure
    # it calls: the loop changes a name of this frame as surely as an assignment in its body would.
    live |= _rebound_by_calls([*loop.body, *loop.orelse], scope, module)
    mutated = _mutated_containers([*loop.body, *loop.orelse], functions)
    own_target = assigned_names([loop.target]) if isinstance(loop, (ast.For, ast.AsyncFor)) else set()
    carried = _assigned_outside_loops(loop.body) - own_target
    handed_on = (_read_before_written(loop.body, set(own_target)) | (mutated - assigned)) - own_target
    called = {n.func.id for n in ast.walk(ast.Module(body=[*loop.body, *loop.orelse], type_ignores=[]))
              if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    return LoopFacts(
        loop.lineno, loop.end_lineno or loop.lineno, frozenset(assigned), frozenset(live), frozenset(mutated), frozenset(carried),
        bool(loop.orelse), frozenset(handed_on), frozenset(called),
    )


def _rebound_by_calls(stmts: list[ast.stmt], scope: ast.AST, module: ast.Module | None = None) -> set[str]:
    """The variables that functions called by name from ``stmts`` (directly or through one
    another) rebind: the module's globals that its functions declare ``global``, and, in a
    function ``scope``, its variables that the closures defined in it declare ``nonlocal``."""
    if isinstance(scope, ast.Module):
        module = scope
    top = module.body if module is not None else []
    defined = {f.name: f for f in top if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
    nested: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
    if not isinstance(scope, ast.Module):
        nested = {f.name: f for f in ast.walk(scope) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f is not scope}
    if not defined and not nested:
        return set()
    rebound_globals: set[str] = set()
    rebound_cells: set[str] = set()
    seen: set[int] = set()
    todo = [stmts]
    while todo:
        for node in ast.walk(ast.Module(body=list(todo.pop()), type_ignores=[])):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                fn = nested.get(node.func.id) or defined.get(node.func.id)  # a closure hides a global function
                if fn is not None and id(fn) not in seen:
                    seen.add(id(fn))
                    assigned = assigned_names(fn.body)
                    rebound_globals |= assigned & {n for g in ast.walk(fn) if isinstance(g, ast.Global) for n in g.names}
                    rebound_cells |= assigned & {n for g in ast.walk(fn) if isinstance(g, ast.Nonlocal) for n in g.names}
                    todo.append(fn.body)
    if isinstance(scope, ast.Module):
        return rebound_globals
    # A ``nonlocal`` may name a variable of a function between this one and the closure; a
    # global that this function binds as its own is not the one rebound.
    own = assigned_names(scope.body) | {a.arg for a in ast.walk(scope.args) if isinstance(a, ast.arg)}  # type: ignore[attr-defined]
    own_globals = {n for g in ast.walk(scope) if isinstance(g, ast.Global) for n in g.names}
    return (rebound_cells & own) | (rebound_globals - (own - own_globals))


def free_names(function: ast.AST, names: set[str]) -> set[str]:
    """Those of ``names`` that ``function`` does not bind (its parameters and assignments, less
    what it declares ``global`` or ``nonlocal``)."""
    local = assigned_names(function.body) | {a.arg for a in ast.walk(function.args) if isinstance(a, ast.arg)}  # type: ignore[attr-defined]
    declared = {n for g in ast.walk(function) if isinstance(g, (ast.Global, ast.Nonlocal)) for n in g.names}
    return names - (local - declared)


def names_read_by_callees(scope: ast.AST, nodes: list[ast.AST]) -> set[str]:
    """The names that functions defined in ``scope`` read without binding them (its globals, or
    a closure's variables), where ``nodes`` call those functions, directly or through others:
    ``hl.log("o", summary())`` reads the ``out`` that ``summary`` returns."""
    functions = {f.name: f for f in ast.walk(scope) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f is not scope}
    if not functions:
        return set()
    out: set[str] = set()
    seen: set[str] = set()
    pending = list(nodes)
    from .hindsight import _called_names

    while pending:
        for name in _called_names(pending.pop()):
            f = functions.get(name)
            if f is None or name in seen:
                continue
            seen.add(name)
            read = {m.id for m in ast.walk(f) if isinstance(m, ast.Name) and isinstance(m.ctx, ast.Load)}
            out |= free_names(f, read)
            pending.append(f)
    return out - set(functions)


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


#: Methods that change the object they are called on, whatever it is reached through
#: (``history["loss"].append(x)``, ``self.opt.step()``, ``e.mul_(0.9)``); a PyTorch method whose
#: name ends in ``_`` works in place too.
MUTATING_METHODS = frozenset({
    "append", "extend", "insert", "pop", "popitem", "remove", "clear", "update", "setdefault", "add",
    "discard", "sort", "reverse", "appendleft", "extendleft", "rotate", "fill", "resize", "put", "push",
    "store", "step", "zero_grad", "partial_fit", "fit", "train", "eval", "load_state_dict", "update_parameters",
})

#: Functions that change their first argument in place (``random.shuffle(data)``,
#: ``np.copyto(dst, src)``, ``heapq.heappush(heap, x)``); one whose name ends in ``_`` does too
#: (``torch.nn.init.zeros_(w)``, ``torch._foreach_mul_(ema, d)``).
MUTATING_FUNCTIONS = frozenset({"shuffle", "copyto", "heappush", "heappop", "heapify", "heapreplace", "heappushpop", "next"})


def _mutated_containers(stmts: list[ast.stmt], functions: Functions | None = None,
                        _seen: frozenset[int] = frozenset()) -> set[str]:
    """Names whose objects the statements change in place: ``x.append(...)``, ``x[k] = v``,
    ``x.a = v``, ``x["k"].append(v)``, ``random.shuffle(x)``, ``np.add(a, b, out=x)``; and the
    objects an element or part changed in place belongs to (``for e, p in zip(ema, params):
    e.mul_(d)`` changes ``ema``; ``w = state["w"]; w += g`` changes ``state``).

    With ``functions`` (the project's, by name), a call of one of them changes the arguments
    it changes, and the globals: ``ema_update(ema, model)``, ``meter.add(loss)``."""
    out: set[str] = set()
    in_place: set[str] = set()  # changed by an operation that surely works in place

    def changed(expr: ast.expr | None) -> None:
        base = _base_name(expr) if expr is not None else None
        if base is not None:
            out.add(base)
            in_place.add(base)

    #: Names bound to other names' objects, their elements or parts (loop targets, ``w = s["w"]``).
    parts_of: dict[str, set[str]] = {}
    #: Names also bound to a new object (``x = x.to(device)``): what changes through them later
    #: may be that object, so they are no one's part.
    rebound: set[str] = set()
    for node in ast.walk(ast.Module(body=list(stmts), type_ignores=[])):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            for k in node.keywords:
                if k.arg == "out":
                    changed(k.value)
            if isinstance(f, ast.Attribute):
                surely = name in MUTATING_METHODS or (name.endswith("_") and not name.startswith("__"))
                if isinstance(f.value, ast.Name):
                    out.add(f.value.id)
                    if surely:
                        in_place.add(f.value.id)
                elif surely:
                    changed(f.value)
            # A function that changes its argument (random.shuffle(x)); of the in-place ``_`` names,
            # only functions (torch.nn.init.zeros_(w)), not methods (x.add_(y) leaves y alone).
            if node.args and (name in MUTATING_FUNCTIONS or (name.endswith("_") and not name.startswith("__") and (
                    isinstance(f, ast.Name) or _module_path(f.value)))):
                changed(node.args[0])
            callee = functions.find(name, method=isinstance(f, ast.Attribute)) if functions is not None else None
            if callee is not None and id(callee) not in _seen:
                params, free = _changes_of(callee, functions, _seen | {id(callee)})
                names = [a.arg for a in (*callee.args.posonlyargs, *callee.args.args)]
                if isinstance(f, ast.Attribute) and names and names[0] in ("self", "cls"):
                    if names[0] in params:
                        changed(f.value)
                    names = names[1:]
                for param, arg in zip(names, node.args):
                    if param in params:
                        changed(arg)
                for k in node.keywords:
                    if k.arg in params:
                        changed(k.value)
                out.update(free)
                in_place.update(free)
        elif isinstance(node, (ast.Subscript, ast.Attribute)) and isinstance(node.ctx, (ast.Store, ast.Del)):
            changed(node.value)
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            in_place.add(node.target.id)  # in place for arrays and tensors (rebinding for numbers)
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
            for target, sources in _loop_bindings(node.target, node.iter):
                _bind(parts_of, target, sources)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                for t, value in _pairs(target, node.value):
                    base = _alias_base(value)
                    if base is not None:
                        _bind(parts_of, t, {base})
                    else:
                        rebound.update(_bound_names(t))
        elif isinstance(node, (ast.AnnAssign, ast.NamedExpr)) and isinstance(node.target, ast.Name):
            rebound.add(node.target.id)
    # A part changed in place changes the object it belongs to.
    pending = [n for n in in_place if n in parts_of and n not in rebound]
    while pending:
        for source in parts_of.get(pending.pop(), ()):
            if source not in out or source not in in_place:
                out.add(source)
                in_place.add(source)
                if source not in rebound:
                    pending.append(source)
    return out


class Functions:
    """The project's functions by name, as a call names them: plain functions for ``f(x)``,
    methods for ``obj.f(x)`` (a method of a class, not a function that happens to share the
    name of a library method such as ``opt.step``)."""

    def __init__(self, trees: list[ast.AST]) -> None:
        self.plain: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
        self.methods: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
        for tree in trees:
            methods: set[int] = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef):
                    for item in node.body:
                        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                            self.methods.setdefault(item.name, item)
                            methods.add(id(item))
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and id(node) not in methods:
                    self.plain.setdefault(node.name, node)
        self._changes: dict[int, tuple[frozenset[str], frozenset[str]]] = {}

    def find(self, name: str, method: bool) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
        return (self.methods if method else self.plain).get(name)


def _changes_of(fn: ast.FunctionDef | ast.AsyncFunctionDef, functions: Functions,
                seen: frozenset[int]) -> tuple[frozenset[str], frozenset[str]]:
    """The parameters whose objects ``fn`` changes in place, and the free names (globals,
    closure variables) it changes."""
    known = functions._changes.get(id(fn))
    if known is not None:
        return known
    changed = _mutated_containers(fn.body, functions, seen)
    params = {a.arg for a in ast.walk(fn.args) if isinstance(a, ast.arg)}
    # ``target *= decay`` changes the caller's array or tensor in place (a number it only rebinds).
    changed |= {n.target.id for n in ast.walk(fn) if isinstance(n, ast.AugAssign) and isinstance(n.target, ast.Name)} & params
    # A name the function binds is its own local, unless it declares it global or nonlocal.
    declared = {n for g in ast.walk(fn) if isinstance(g, (ast.Global, ast.Nonlocal)) for n in g.names}
    own = (assigned_names(fn.body) | params) - declared
    result = (frozenset(changed & params), frozenset(changed - own))
    functions._changes[id(fn)] = result
    return result


#: Modules whose in-place functions are called through a plain name (``torch._foreach_mul_(xs, d)``,
#: ``init.zeros_(w)``), not objects whose in-place methods leave their arguments alone.
_MODULE_LIKE = frozenset({"torch", "init", "nn", "F"})


def _module_path(expr: ast.expr) -> bool:
    """Whether ``expr`` names a module (``torch``, ``torch.nn.init``), not an object."""
    while isinstance(expr, ast.Attribute):
        expr = expr.value
    return isinstance(expr, ast.Name) and expr.id in _MODULE_LIKE


def _bound_names(target: ast.expr) -> list[str]:
    """The names an assignment or loop target binds (``a`` and ``b`` of ``a, *b``; none of
    ``x.w`` or ``x[0]``, which change ``x``)."""
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, ast.Starred):
        return _bound_names(target.value)
    if isinstance(target, (ast.Tuple, ast.List)):
        return [n for e in target.elts for n in _bound_names(e)]
    return []


def _bind(parts_of: dict[str, set[str]], target: ast.expr, sources: set[str]) -> None:
    for name in _bound_names(target):
        if sources:
            parts_of.setdefault(name, set()).update(sources)


def _pairs(target: ast.expr, value: ast.expr) -> list[tuple[ast.expr, ast.expr]]:
    """The targets of an assignment with the values they get: ``W, b = m["W"], m["b"]`` pairs
    them; ``W1, b1 = params`` binds each to a part of ``params``."""
    if isinstance(target, (ast.Tuple, ast.List)) and isinstance(value, (ast.Tuple, ast.List)) \
            and len(target.elts) == len(value.elts) and not any(isinstance(e, ast.Starred) for e in (*target.elts, *value.elts)):
        return [pair for t, v in zip(target.elts, value.elts) for pair in _pairs(t, v)]
    return [(target, value)]


def _alias_base(expr: ast.expr) -> str | None:
    """The name whose object ``expr`` is, or is a part of, without a call or a computed index
    (``state``, ``state["w"]``, ``self.ema``, ``x[:, 0]``; not ``x.float()`` nor ``X[perm]``)."""
    while isinstance(expr, (ast.Subscript, ast.Attribute)):
        if isinstance(expr, ast.Subscript) and not _simple_index(expr.slice):
            return None
        expr = expr.value
    return expr.id if isinstance(expr, ast.Name) else None


def _simple_index(index: ast.expr) -> bool:
    """A constant, a slice or a key variable: an index that names a part (a view, an entry)."""
    if isinstance(index, ast.Tuple):
        return all(_simple_index(e) for e in index.elts)
    return isinstance(index, (ast.Constant, ast.Slice, ast.Name)) or (
        isinstance(index, ast.UnaryOp) and isinstance(index.operand, ast.Constant))


def _base_name(expr: ast.expr) -> str | None:
    """The name an expression reaches its object through: ``a`` of ``a.b[0].c`` and of
    ``a.setdefault(k, [])``."""
    while True:
        if isinstance(expr, (ast.Subscript, ast.Attribute)):
            expr = expr.value
        elif isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute):
            expr = expr.func.value
        else:
            return expr.id if isinstance(expr, ast.Name) else None


#: Builtins whose result iterates over the elements of their arguments.
_ELEMENT_ITERATORS = frozenset({"zip", "enumerate", "reversed", "iter", "list", "tuple", "sorted", "chain"})


def _loop_bindings(target: ast.expr, iterable: ast.expr) -> list[tuple[ast.expr, set[str]]]:
    """What each part of a loop's target is bound to an element of: ``e`` of ``ema`` and ``p`` of
    ``params`` in ``for e, p in zip(ema, params)``, ``x`` of ``xs`` in ``for i, x in enumerate(xs)``
    (and in ``for i, (e, p) in enumerate(zip(ema, params))``)."""
    if isinstance(iterable, ast.Call) and isinstance(target, ast.Tuple) and not any(isinstance(a, ast.Starred) for a in iterable.args):
        func = iterable.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if name == "zip" and len(target.elts) == len(iterable.args):
            return [(t, _iterated(a)) for t, a in zip(target.elts, iterable.args)]
        if name == "enumerate" and len(target.elts) == 2 and iterable.args:
            inner = target.elts[1]
            if isinstance(inner, ast.Tuple) and isinstance(iterable.args[0], ast.Call):
                return _loop_bindings(inner, iterable.args[0])
            return [(inner, _iterated(iterable.args[0]))]
    return [(target, _iterated(iterable))]


def _iterated(expr: ast.expr) -> set[str]:
    """The names whose elements a loop over ``expr`` binds: ``ema`` and ``model`` in
    ``zip(ema, model.parameters())``, ``d`` in ``d.values()``, ``a`` and ``b`` in ``[a, b]``."""
    if isinstance(expr, ast.Call):
        func = expr.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if name in _ELEMENT_ITERATORS and (isinstance(func, ast.Name) or name == "chain"):
            return set().union(*(_iterated(a) for a in expr.args)) if expr.args else set()
    if isinstance(expr, (ast.List, ast.Tuple, ast.Set)):
        return {b for e in expr.elts if (b := _alias_base(e)) is not None}
    base = _base_name(expr)
    return {base} if base is not None else set()


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


# ---------------------------------------------------------------- read-only tails

#: Builtins a read-only tail may call (they convert or print values; they write no tensor).
_READING_BUILTINS = frozenset({"print", "float", "int", "str", "bool", "round", "len", "abs", "min", "max", "sum", "repr",
                               "format", "isinstance", "list", "tuple", "dict"})
#: Tensor and array methods that read their receiver and return a new value.
_READING_METHODS = frozenset({"item", "tolist", "detach", "cpu", "numpy", "float", "double", "mean", "sum", "norm", "max", "min",
                              "argmax", "argmin", "std", "var", "abs", "size", "dim", "numel", "clone", "sqrt"})
#: Module functions a read-only tail may call, by module.
_READING_FUNCTIONS = {"hindlog": frozenset({"log"}), "time": frozenset({"time", "perf_counter", "monotonic", "process_time"}),
                      "math": frozenset({"sqrt", "exp", "log", "isfinite", "isnan", "fsum"})}
#: Context managers a read-only tail may enter and leave.
_READING_CONTEXTS = {"torch": frozenset({"no_grad", "inference_mode", "enable_grad"})}

#: One condition checked on the running frame: (kind, name, detail). Kinds: "builtin" (``name``
#: is the builtin ``detail``), "context" (``name`` is the module ``detail``), "attribute"
#: (``name.detail(...)`` is one of the module functions or tensor methods above), "array"
#: (``name`` holds a tensor or array), "container" (``name`` holds a list or dict).
Requirement = tuple[str, str, str]


class _NotReadOnly(Exception):
    pass


def _tail_requirements(stmts: list[ast.stmt]) -> list[Requirement]:
    """What must hold at run time for ``stmts`` to write no tensor; raises _NotReadOnly when
    they may write one whatever the values (a call to the script's own function, an optimizer
    step, a nested loop)."""
    out: list[Requirement] = []
    for stmt in stmts:
        if isinstance(stmt, ast.Expr):
            _expr_requirements(stmt.value, out)
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            if stmt.value is not None:
                _expr_requirements(stmt.value, out)
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for target in targets:
                _target_requirements(target, out)
        elif isinstance(stmt, ast.If):
            _expr_requirements(stmt.test, out)
            out += _tail_requirements(stmt.body) + _tail_requirements(stmt.orelse)
        elif isinstance(stmt, ast.With):
            for item in stmt.items:
                _context_requirements(item.context_expr, out)
                if item.optional_vars is not None:
                    _target_requirements(item.optional_vars, out)
            out += _tail_requirements(stmt.body)
        elif isinstance(stmt, (ast.Pass, ast.Break, ast.Continue, ast.Global, ast.Nonlocal)):
            pass
        else:
            raise _NotReadOnly
    return out


def _target_requirements(target: ast.expr, out: list[Requirement]) -> None:
    if isinstance(target, ast.Name):
        return
    if isinstance(target, (ast.Tuple, ast.List)):
        for element in target.elts:
            _target_requirements(element, out)
    elif isinstance(target, ast.Starred):
        _target_requirements(target.value, out)
    elif isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name):
        # history[epoch] = acc: an item of a list or dict (of a tensor it would be a write)
        _expr_requirements(target.slice, out)
        out.append(("container", target.value.id, ""))
    else:
        raise _NotReadOnly  # obj.attr = ...: may be a parameter's .data


def _context_requirements(expr: ast.expr, out: list[Requirement]) -> None:
    if (isinstance(expr, ast.Call) and not expr.args and not expr.keywords and isinstance(expr.func, ast.Attribute)
            and isinstance(expr.func.value, ast.Name)):
        for module, names in _READING_CONTEXTS.items():
            if expr.func.attr in names:
                out.append(("context", expr.func.value.id, module))
                return
    raise _NotReadOnly


def _array_root(expr: ast.expr) -> str | None:
    """The name at the root of ``loss``, ``loss.detach().cpu()`` or ``out[0]``: reading methods and
    indexing of a tensor give tensors or numbers."""
    while True:
        if isinstance(expr, ast.Name):
            return expr.id
        if isinstance(expr, ast.Subscript):
            expr = expr.value
        elif (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute) and expr.func.attr in _READING_METHODS):
            expr = expr.func.value
        else:
            return None


def _expr_requirements(expr: ast.expr, out: list[Requirement]) -> None:
    for node in ast.walk(expr):
        if isinstance(node, (ast.Lambda, ast.Await, ast.Yield, ast.YieldFrom)):
            raise _NotReadOnly
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name):
            if func.id not in _READING_BUILTINS:
                raise _NotReadOnly
            out.append(("builtin", func.id, func.id))
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and (
                func.attr in _READING_METHODS or any(func.attr in names for names in _READING_FUNCTIONS.values())):
            out.append(("attribute", func.value.id, func.attr))  # hl.log(...), time.time(), loss.item()
        elif isinstance(func, ast.Attribute) and func.attr in _READING_METHODS:
            root = _array_root(func.value)
            if root is None:
                raise _NotReadOnly
            out.append(("array", root, ""))
        else:
            raise _NotReadOnly


_tail_cache: dict[tuple[object, int, int], tuple[Requirement, ...] | None] = {}


def _tail_after(main: ast.For | ast.While, inner: ast.For | ast.While) -> tuple[list[ast.stmt], list[ast.expr]] | None:
    """The statements of ``main``'s body that run after its nested loop ``inner`` finishes, to
    the end of the iteration, and the context managers that are left on the way (None if
    ``inner`` is not in the body, or a loop or ``try`` lies between)."""
    path = _path_to(main.body, inner)
    if not path:
        return None
    tail: list[ast.stmt] = []
    contexts: list[ast.expr] = []
    for depth in range(len(path) - 1, -1, -1):
        block, index = path[depth]
        tail.extend(block[index + 1 :])
        if depth > 0:
            parent = path[depth - 1][0][path[depth - 1][1]]
            if not isinstance(parent, (ast.If, ast.With)):
                return None  # the rest of a loop or a try is not one sequence of statements
            if isinstance(parent, ast.With):
                contexts.extend(item.context_expr for item in parent.items)
    return tail, contexts


def read_only_tail(frame: FrameType, loop_line: int) -> bool:
    """Whether the code that ran in ``frame`` from the exit of the nested loop at ``loop_line`` to
    the end of the main loop's iteration (``frame`` stands at the main loop's header) can have
    written no tensor: it only calls ``hl.log``, ``print``, conversions and tensors' reading
    methods (``loss.item()``), checked against the values the names hold now."""
    key = (frame.f_code, frame.f_lineno, loop_line)
    if key in _tail_cache:
        requirements = _tail_cache[key]
    else:
        requirements = None
        tree = _module_ast(frame.f_code.co_filename, frame.f_globals)
        if tree is not None:
            main = _scope_nodes(tree, frame.f_lineno)[1]
            inner = _scope_nodes(tree, loop_line)[1]
            found = _tail_after(main, inner) if main is not None and inner is not None and inner is not main else None
            if found is not None:
                tail, contexts = found
                try:
                    out = _tail_requirements(tail)
                    for context in contexts:
                        _context_requirements(context, out)
                    requirements = tuple(dict.fromkeys(out))
                except _NotReadOnly:
                    requirements = None
        _tail_cache[key] = requirements
    if requirements is None:
        return False
    f_locals = frame.f_locals  # a function frame's is built on each access: once
    return all(_holds(f_locals, frame.f_globals, r) for r in requirements)


_MISSING = object()


def _holds(f_locals: dict, f_globals: dict, requirement: Requirement) -> bool:
    kind, name, detail = requirement
    value = f_locals.get(name, _MISSING)
    if value is _MISSING:
        value = f_globals.get(name, _MISSING)
    if value is _MISSING:
        value = getattr(builtins, name, _MISSING)
    if kind == "builtin":
        return value is getattr(builtins, detail, None)
    if kind == "container":
        return type(value) in (list, dict)
    module = getattr(value, "__name__", None) if isinstance(value, ModuleType) else None
    if kind == "context":
        return module == detail
    np, torch = sys.modules.get("numpy"), sys.modules.get("torch")
    is_array = (np is not None and isinstance(value, (np.ndarray, np.generic))) or (torch is not None and isinstance(value, torch.Tensor))
    if kind == "array":
        return is_array
    # "attribute": a reading function of an allowed module, or a reading method of a tensor
    return (module is not None and detail in _READING_FUNCTIONS.get(module, ())) or (is_array and detail in _READING_METHODS)
