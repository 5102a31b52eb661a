"""Hands-free instrumentation: find the main loop and its nested loops in unmodified code.

``instrument_script`` rewrites a script's syntax tree so that

- the main loop (the outermost ``for``/``while`` on the execution path that
  holds the training work) iterates through ``__hindlog__.main_loop``,
- the loops directly in its body, and the outermost loops of the project's
  functions, iterate through ``__hindlog__.nested_loop`` (which passes the
  iterable through unchanged when it runs outside the main loop),
- just before the main loop, ``__hindlog__.auto_state`` names the training
  state: the objects the main loop changes that exist before it.

Loops already written as ``hl.loop(...)`` are left as they are. Line numbers
are kept, so tracebacks and replay's placement see the user's lines.
"""

from __future__ import annotations

import ast
import builtins
from collections.abc import Callable
from dataclasses import dataclass, field

from .hindsight import call_name, loop_name as api_loop_name
from .sourceinfo import _mutated_containers

RUNTIME = "__hindlog__"
_TRAINING_CALLS = {"backward", "step", "partial_fit", "fit", "train_on_batch", "zero_grad", "update"}
#: Calls that are surely training, not an environment's ``step`` or a counter's ``update``: what a
#: generator's loop must reach to be the training loop.
_SURELY_TRAINING = {"backward", "partial_fit", "fit", "train_on_batch", "zero_grad"}


@dataclass
class Plan:
    """What the instrumentation found in one file."""

    main_loop: str | None = None
    main_line: int | None = None
    #: loop node line -> given name, for every loop that is wrapped (main and nested).
    names: dict[int, str] = field(default_factory=dict)
    state_candidates: list[str] = field(default_factory=list)
    #: Module globals that project functions the main loop calls rebind (``global step``).
    rebound_globals: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _target_name(loop: ast.For | ast.AsyncFor | ast.While) -> str:
    """``for epoch in ...`` -> epoch; ``for i, (x, y) in enumerate(loader)`` -> i;
    ``for x, y in train_loader`` -> train_loader; a ``while`` loop -> iteration."""
    if isinstance(loop, ast.While):
        return "iteration"
    target = loop.target
    if isinstance(target, ast.Name):
        return target.id
    it = loop.iter
    if isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "enumerate":
        if isinstance(target, ast.Tuple) and target.elts and isinstance(target.elts[0], ast.Name):
            return target.elts[0].id
    return _iter_name(loop) or "batch"


def _iter_name(loop: ast.AST) -> str | None:
    it = getattr(loop, "iter", None)
    while isinstance(it, ast.Call) and it.args:
        if isinstance(it.func, ast.Name) and it.func.id in ("enumerate", "zip", "iter", "tqdm", "reversed", "sorted", "list"):
            it = it.args[0]
        else:
            break
    if isinstance(it, ast.Name):
        return it.id
    if isinstance(it, ast.Attribute):
        return it.attr
    return None


class _Namer:
    """Stable loop names: the target variable, made unique by the iterable's name, then an ordinal."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def name(self, loop: ast.AST) -> str:
        base = _target_name(loop)  # type: ignore[arg-type]
        if base not in self.used:
            self.used.add(base)
            return base
        it = _iter_name(loop)
        if it and f"{base}_{it}" not in self.used:
            self.used.add(f"{base}_{it}")
            return f"{base}_{it}"
        k = 2
        while f"{base}_{k}" in self.used:
            k += 1
        self.used.add(f"{base}_{k}")
        return f"{base}_{k}"


def _is_loop(node: ast.AST) -> bool:
    return isinstance(node, (ast.For, ast.AsyncFor, ast.While))


def _outer_loops(stmts: list[ast.stmt]) -> list[ast.AST]:
    """Loops in ``stmts`` not inside another loop, function or class."""
    out: list[ast.AST] = []
    stack = list(reversed(stmts))
    while stack:
        node = stack.pop()
        if _is_loop(node):
            out.append(node)
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        for child in reversed(list(ast.iter_child_nodes(node))):
            if isinstance(child, ast.stmt):
                stack.append(child)
    return out


def _functions(tree: ast.Module) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    return {n.name: n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _calls(node: ast.AST) -> list[str]:
    out = []
    for n in ast.walk(node):
        if isinstance(n, ast.Call):
            f = n.func
            if isinstance(f, ast.Name):
                out.append(f.id)
            elif isinstance(f, ast.Attribute):
                out.append(f.attr)
    return out


def is_main_guard(stmt: ast.stmt) -> bool:
    """Whether ``stmt`` is an ``if __name__ == "__main__":`` block."""
    if not isinstance(stmt, ast.If):
        return False
    test = stmt.test
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators)
    )


def _execution_path(tree: ast.Module, functions: dict[str, ast.AST]) -> list[list[ast.stmt]]:
    """Bodies that run when the script runs: the module, then the functions it calls, in call order."""
    bodies: list[list[ast.stmt]] = [tree.body]
    seen: set[str] = set()
    queue: list[list[ast.stmt]] = [tree.body]
    while queue:
        body = queue.pop(0)
        for stmt in body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            for name in _calls(stmt):
                fn = functions.get(name)
                if fn is not None and name not in seen:
                    seen.add(name)
                    bodies.append(fn.body)  # type: ignore[attr-defined]
                    queue.append(fn.body)  # type: ignore[attr-defined]
    return bodies


def _work_score(loop: ast.AST, functions: dict[str, ast.AST], depth: int = 0) -> tuple[int, int]:
    """(nested loops, training calls) reachable from a loop's body, through project functions."""
    nested = training = 0
    body = getattr(loop, "body", [])
    for stmt in body:
        nested += len(_outer_loops([stmt]))
    calls = [c for stmt in body for c in _calls(stmt)]
    training += sum(1 for c in calls if c in _TRAINING_CALLS)
    if depth < 3:
        for c in set(calls):
            fn = functions.get(c)
            if fn is not None:
                n, t = _fn_score(fn, functions, depth + 1)
                nested += n
                training += t
    return nested, training


def _fn_score(fn: ast.AST, functions: dict[str, ast.AST], depth: int) -> tuple[int, int]:
    body = getattr(fn, "body", [])
    nested = len(_outer_loops(body))
    calls = [c for stmt in body for c in _calls(stmt)]
    training = sum(1 for c in calls if c in _TRAINING_CALLS)
    if depth < 3:
        for c in set(calls):
            inner = functions.get(c)
            if inner is not None and inner is not fn:
                n, t = _fn_score(inner, functions, depth + 1)
                nested += n
                training += t
    return nested, training


def imported_modules(tree: ast.Module, read: Callable[[str], str | None], package: str | None = None) -> list[tuple[str, ast.Module]]:
    """The project modules ``tree`` imports, parsed, with their paths (``read`` gives a project
    module's source by its path relative to where top-level modules are found, or None).
    ``package``: the package of a module run with ``python -m``, against which its relative
    imports resolve."""
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or node.level):
            base = node.module
            if node.level:
                parts = (package or "").split(".") if package else []
                if node.level - 1 >= len(parts):
                    continue  # beyond the top package (or not in one): python refuses it too
                base = ".".join([*parts[: len(parts) - (node.level - 1)], *([node.module] if node.module else [])])
            modules.add(base)
            modules.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            modules.update(a.name for a in node.names)
    out = []
    for module in sorted(modules):
        base = module.replace(".", "/")
        for rel in (f"{base}.py", f"{base}/__init__.py"):
            src = read(rel)
            if src is None:
                continue
            try:
                out.append((rel, ast.parse(src)))
            except SyntaxError:
                pass
            break
    return out


def imported_functions(modules: list[tuple[str, ast.Module]]) -> dict[str, ast.AST]:
    """Top-level functions of the project modules a script imports (``imported_modules``), so
    that the main loop's work is seen through calls like ``train_one_epoch(...)`` defined in
    another file."""
    out: dict[str, ast.AST] = {}
    for _rel, other in modules:
        for stmt in other.body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.setdefault(stmt.name, stmt)
    return out


def training_loop_elsewhere(tree: ast.Module, modules: list[tuple[str, ast.Module]]) -> tuple[str, bool] | None:
    """For a script whose own code holds no main loop: where the loop that holds its training
    work is, in a function or method of another project module that the script calls
    (``trainer.fit()``), as ``"trainer.py:14, in fit"``, and whether it is an ``hl.loop``
    (which records as in any script that calls hindlog). None if there is none."""
    defs: dict[str, list[tuple[str, ast.AST]]] = {}
    for rel, other in modules:
        for node in ast.walk(other):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                defs.setdefault(node.name, []).append((rel, node))
    functions = {name: found[0][1] for name, found in defs.items()}
    seen: set[str] = set()
    pending = [c for body in _execution_path(tree, _functions(tree)) for stmt in body for c in _calls(stmt)]
    while pending:
        name = pending.pop(0)
        if name in seen or name not in defs:
            continue
        seen.add(name)
        for rel, fn in defs[name]:
            for loop in _outer_loops(fn.body):  # type: ignore[attr-defined]
                if _work_score(loop, functions) != (0, 0):
                    return f"{rel}:{loop.lineno}, in {name}", api_loop_name(loop) is not None  # type: ignore[attr-defined]
            pending.extend(c for stmt in fn.body for c in _calls(stmt))  # type: ignore[attr-defined]
    return None


def find_main_loop(
    tree: ast.Module, external: dict[str, ast.AST] | None = None
) -> tuple[ast.AST | None, list[ast.stmt] | None]:
    """The main loop and the body (module or function) that holds it."""
    local = _functions(tree)
    functions = {**(external or {}), **local}
    # A generator's loop that does no training makes the data a loop reads (``while True: for
    # batch in loader: yield batch``): nested and all, it is not the training loop. (A generator
    # that trains, yielding each epoch's loss, holds it.)
    generators = {id(fn.body) for fn in local.values() if _is_generator(fn)}
    best: tuple[tuple[int, int], ast.AST, list[ast.stmt]] | None = None
    for body in _execution_path(tree, local):
        for loop in _outer_loops(body):
            nested, training = _work_score(loop, functions)
            if nested == 0 and training == 0 or id(body) in generators and not _reaches(loop, functions, _SURELY_TRAINING):
                continue
            score = (1 if nested else 0, training)
            if best is None or score > best[0]:
                best = (score, loop, body)
            if nested and training:
                return loop, body
    return (best[1], best[2]) if best else (None, None)


def _reaches(loop: ast.AST, functions: dict[str, ast.AST], calls: set[str], depth: int = 0) -> bool:
    """Whether ``loop``'s body calls one of ``calls``, directly or through project functions."""
    found = [c for stmt in getattr(loop, "body", []) for c in _calls(stmt)]
    if any(c in calls for c in found):
        return True
    return depth < 3 and any(_reaches(functions[c], functions, calls, depth + 1) for c in set(found)
                             if c in functions and functions[c] is not loop)


def _is_generator(fn: ast.AST) -> bool:
    """Whether ``fn``'s own body yields (nested functions' yields are theirs)."""
    stack = list(getattr(fn, "body", []))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Yield, ast.YieldFrom)):
            return True
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        stack.extend(ast.iter_child_nodes(node))
    return False


#: Builtins that change what they are given: ``next(stream)`` advances it, ``setattr(cfg, k, v)``.
_CHANGING_BUILTINS = frozenset({"next", "setattr", "delattr"})


def _state_candidates(loop: ast.AST, holder: list[ast.stmt], functions: dict[str, ast.AST]) -> list[str]:
    """Names defined before the main loop that it may change: method-call bases, stored-into
    objects, and arguments passed to project functions."""
    body = getattr(loop, "body", [])
    names = set(_mutated_containers(body))
    instances = _project_instances(holder, loop, functions)
    for node in ast.walk(ast.Module(body=list(body), type_ignores=[])):
        if isinstance(node, ast.Call):
            f = node.func
            fname = call_name(node)
            if isinstance(f, ast.Name) and hasattr(builtins, f.id) and f.id not in _CHANGING_BUILTINS:
                continue  # len(x), float(v), print(...) change nothing
            # Objects handed to other code may be changed by it (train_one_epoch(model, loader, opt)),
            # unless that code is a project function seen to only read them.
            callee = _project_callee(node, functions, instances)
            kept = _possibly_changed_args(node, callee) if callee is not None else None
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                if isinstance(arg, ast.Name) and (kept is None or arg.id in kept):
                    names.add(arg.id)
            if fname in functions:
                names |= _global_reads(functions[fname])
    defined_before: set[str] = set()
    for stmt in holder:
        if stmt is loop or any(n is loop for n in ast.walk(stmt)):
            break
        for node in ast.walk(stmt):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                defined_before.add(node.id)
    # The main loop's own target is rebound every iteration: not state.
    names -= {n.id for n in ast.walk(getattr(loop, "target", ast.Tuple(elts=[], ctx=ast.Store()))) if isinstance(n, ast.Name)}
    # A comprehension's own variable (``sum(p.norm() for p in model.parameters())``) is not the
    # ``p`` defined before the loop (an argparse parser), unless the loop uses that one too.
    names -= _comprehension_only_names(body)
    # Function parameters of the holder are defined before too.
    return sorted(n for n in names if n in defined_before or n not in _assigned_in(body))


def _comprehension_only_names(body: list[ast.stmt]) -> set[str]:
    """Names ``body`` binds as a comprehension's variable and reads nowhere outside comprehensions."""
    comprehensions = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
    targets: set[str] = set()
    outside: set[str] = set()
    pending: list[ast.AST] = list(body)
    while pending:
        node = pending.pop()
        if isinstance(node, comprehensions):
            for gen in node.generators:  # type: ignore[attr-defined]
                targets.update(n.id for n in ast.walk(gen.target) if isinstance(n, ast.Name))
                pending.append(gen.iter)  # (evaluated in the enclosing scope)
            continue
        if isinstance(node, ast.Name):
            outside.add(node.id)
        pending.extend(ast.iter_child_nodes(node))
    return targets - outside


def _project_instances(holder: list[ast.stmt], loop: ast.AST, functions: dict[str, ast.AST]) -> dict[str, ast.ClassDef]:
    """Names bound, before the main loop, to an instance of a class the script defines
    (``model = LinearModel(...)``), so that ``model.step(x)`` is known to run its code."""
    classes: dict[str, list[ast.ClassDef]] = {}
    for stmt in holder:
        for node in ast.walk(stmt):
            if isinstance(node, ast.ClassDef):
                classes.setdefault(node.name, []).append(node)
    out: dict[str, ast.ClassDef] = {}
    for stmt in holder:
        if stmt is loop:
            break
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name) \
                and isinstance(stmt.value, ast.Call) and isinstance(stmt.value.func, ast.Name):
            found = classes.get(stmt.value.func.id, [])
            name = stmt.targets[0].id
            if len(found) == 1 and stmt.value.func.id not in functions:
                out[name] = found[0]
            else:
                out.pop(name, None)
    # A name rebound anywhere else may hold something else by the time the loop calls it.
    rebound = [n.id for s in holder for n in ast.walk(s) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)]
    return {k: v for k, v in out.items() if rebound.count(k) == 1}


def _project_callee(call: ast.Call, functions: dict[str, ast.AST], instances: dict[str, ast.ClassDef]) -> tuple[ast.AST, int] | None:
    """The project function a call runs, and how many of its leading parameters the call does
    not pass (1 for ``self``), when that is certain; None otherwise."""
    f = call.func
    if isinstance(f, ast.Name) and f.id in functions and f.id not in instances:
        fn = functions[f.id]
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) or fn.decorator_list:
            return None
        first = [p.arg for p in [*fn.args.posonlyargs, *fn.args.args]][:1]
        return None if first in (["self"], ["cls"]) else (fn, 0)  # a method of that name, not a function
    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in instances:
        methods = [n for n in instances[f.value.id].body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == f.attr]
        if len(methods) == 1 and not methods[0].decorator_list:
            return methods[0], 1
    return None


def _possibly_changed_args(call: ast.Call, callee: tuple[ast.AST, int]) -> set[str] | None:
    """Names passed to ``call`` that the callee may change (None: any of them)."""
    fn, skipped = callee
    a = fn.args  # type: ignore[attr-defined]
    if call.keywords and any(k.arg is None for k in call.keywords) or any(isinstance(x, ast.Starred) for x in call.args):
        return None
    positional = [p.arg for p in [*a.posonlyargs, *a.args]][skipped:]
    changed = _changed_params(fn)
    out: set[str] = set()
    for i, arg in enumerate(call.args):
        if not isinstance(arg, ast.Name):
            continue
        if i >= len(positional) or positional[i] in changed:
            out.add(arg.id)
    for k in call.keywords:
        if isinstance(k.value, ast.Name) and (k.arg not in {p.arg for p in [*a.args, *a.kwonlyargs]} or k.arg in changed):
            out.add(k.value.id)
    return out


#: Parents in which a parameter (or an attribute or item of it) is only read: operands and
#: arguments of builtins. Anything else (a method call, passing it on, storing or returning it,
#: an augmented assignment) may change it or let other code do so.
_READING = (ast.BinOp, ast.UnaryOp, ast.Compare, ast.FormattedValue)


def _changed_params(fn: ast.AST) -> set[str]:
    """Parameters of ``fn`` that it may change, or hand to code that may."""
    a = fn.args  # type: ignore[attr-defined]
    params = {p.arg for p in [*a.posonlyargs, *a.args, *a.kwonlyargs]}
    parents: dict[int, ast.AST] = {}
    for node in ast.walk(fn):
        for child in ast.iter_child_nodes(node):
            parents[id(child)] = node
    changed: set[str] = set()
    for node in ast.walk(fn):
        if not (isinstance(node, ast.Name) and node.id in params):
            continue
        if isinstance(node.ctx, ast.Store) and not isinstance(parents.get(id(node)), ast.AugAssign):
            continue  # rebinding the name changes nothing the caller holds
        top = node
        while isinstance(parents.get(id(top)), (ast.Attribute, ast.Subscript)) and getattr(parents[id(top)], "value", None) is top \
                and isinstance(parents[id(top)].ctx, ast.Load):
            top = parents[id(top)]
        parent = parents.get(id(top))
        if isinstance(node.ctx, ast.Load) and isinstance(parent, _READING):
            continue
        if isinstance(parent, ast.Call) and top is not parent.func and isinstance(parent.func, ast.Name) \
                and hasattr(builtins, parent.func.id) and parent.func.id != "next":
            continue
        changed.add(node.id)
    return changed


def _assigned_in(body: list[ast.stmt]) -> set[str]:
    return {n.id for s in body for n in ast.walk(s) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


def _global_writes(fn: ast.AST) -> set[str]:
    """Names a function declares ``global`` and assigns: it rebinds the module's variable."""
    declared = {n for node in ast.walk(fn) if isinstance(node, ast.Global) for n in node.names}
    return declared & {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


def _rebound_globals(loop: ast.AST, functions: dict[str, ast.AST]) -> set[str]:
    """Module globals rebound by the project functions the main loop calls (by name)."""
    out: set[str] = set()
    for node in ast.walk(ast.Module(body=list(getattr(loop, "body", [])), type_ignores=[])):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in functions:
            out |= _global_writes(functions[node.func.id])
    return out


def _global_reads(fn: ast.AST) -> set[str]:
    params = {a.arg for a in ast.walk(fn) if isinstance(a, ast.arg)}
    stored = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    loaded = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return loaded - params - stored


def _wrap(loop: ast.AST, func: str, name: str) -> list[ast.stmt]:
    """The loop rewritten to iterate through ``__hindlog__.<func>(name, ...)``."""
    call = lambda iterable: ast.Call(  # noqa: E731
        func=ast.Attribute(value=ast.Name(id=RUNTIME, ctx=ast.Load()), attr=func, ctx=ast.Load()),
        args=[ast.Constant(value=name), iterable],
        keywords=[],
    )
    if isinstance(loop, (ast.For, ast.AsyncFor)):
        loop.iter = ast.copy_location(call(loop.iter), loop.iter)
        return [loop]
    assert isinstance(loop, ast.While)
    if not any(isinstance(n, (ast.NamedExpr, ast.Yield, ast.YieldFrom, ast.Await)) for n in ast.walk(loop.test)):
        # while COND: BODY else: ELSE  ->  for _ in loop(while_condition(lambda: COND)): BODY else: ELSE
        condition = ast.Call(
            func=ast.Attribute(value=ast.Name(id=RUNTIME, ctx=ast.Load()), attr="while_condition", ctx=ast.Load()),
            args=[ast.Lambda(args=ast.arguments(posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[]), body=loop.test)],
            keywords=[],
        )
        new = ast.For(
            target=ast.Name(id=f"__hindlog_{name}", ctx=ast.Store()),
            iter=call(condition),
            body=loop.body,
            orelse=loop.orelse,
            type_comment=None,
        )
        ast.copy_location(new, loop)
        return [new]
    # A condition that assigns (``:=``) or yields cannot move into a lambda: it is checked at the
    # top of the body instead, and its last, failing check is an iteration of its own.
    # while COND: BODY  ->  for _ in loop(count()): if not COND: break / BODY
    # With ``else: ELSE``, a flag set by the failing check runs ELSE after the loop, where a
    # ``break`` or ``continue`` in it still means the enclosing loop's.
    counter = ast.Call(
        func=ast.Attribute(value=ast.Name(id=RUNTIME, ctx=ast.Load()), attr="count", ctx=ast.Load()), args=[], keywords=[]
    )
    flag = f"__hindlog_{name}_exhausted"
    check = ast.If(
        test=ast.UnaryOp(op=ast.Not(), operand=loop.test),
        body=[*([ast.Assign(targets=[ast.Name(id=flag, ctx=ast.Store())], value=ast.Constant(value=True))] if loop.orelse else []),
              ast.Break()],
        orelse=[],
    )
    new = ast.For(
        target=ast.Name(id=f"__hindlog_{name}", ctx=ast.Store()),
        iter=call(counter),
        body=[check, *loop.body],
        orelse=[],
        type_comment=None,
    )
    ast.copy_location(new, loop)
    ast.copy_location(check, loop.test)
    if not loop.orelse:
        return [new]
    before = ast.copy_location(ast.Assign(targets=[ast.Name(id=flag, ctx=ast.Store())], value=ast.Constant(value=False)), loop)
    after = ast.copy_location(ast.If(test=ast.Name(id=flag, ctx=ast.Load()), body=loop.orelse, orelse=[]), loop.orelse[0])
    return [before, new, after]


class _Rewriter(ast.NodeTransformer):
    def __init__(self, wrap: dict[int, tuple[str, str]], state_before: int | None, candidates: list[str],
                 rebound: list[str] | None = None) -> None:
        self.wrap = wrap  # id(loop node) -> (function, name)
        self.state_before = state_before
        self.candidates = candidates
        self.rebound = rebound or []

    def _visit_block(self, stmts: list[ast.stmt]) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for stmt in stmts:
            if self.state_before is not None and id(stmt) == self.state_before:
                declare = ast.Expr(
                    value=ast.Call(
                        func=ast.Attribute(value=ast.Name(id=RUNTIME, ctx=ast.Load()), attr="auto_state", ctx=ast.Load()),
                        args=[ast.List(elts=[ast.Constant(value=n) for n in self.candidates], ctx=ast.Load()),
                              ast.List(elts=[ast.Constant(value=n) for n in self.rebound], ctx=ast.Load())],
                        keywords=[],
                    )
                )
                out.append(ast.copy_location(declare, stmt))
            new = self.visit(stmt)
            if isinstance(new, list):
                out.extend(new)
            elif new is not None:
                out.append(new)
        return out

    def generic_visit(self, node: ast.AST) -> ast.AST | list[ast.stmt]:  # type: ignore[override]
        for fieldname in ("body", "orelse", "finalbody"):
            block = getattr(node, fieldname, None)
            if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                setattr(node, fieldname, self._visit_block(block))
        for handler in getattr(node, "handlers", []) or []:
            handler.body = self._visit_block(handler.body)
        for case in getattr(node, "cases", []) or []:
            case.body = self._visit_block(case.body)
        if id(node) in self.wrap:
            func, name = self.wrap[id(node)]
            return _wrap(node, func, name)
        return node


def instrument(
    tree: ast.Module, is_script: bool, skip_lines: set[int] | None = None, modules: list[tuple[str, ast.Module]] | None = None
) -> Plan:
    """Rewrite ``tree`` in place (see the module docstring) and say what was done.

    ``modules``: the project modules the script imports (``imported_modules``), whose
    functions help judge which loop holds the training work."""
    skip_lines = skip_lines or set()
    external = imported_functions(modules) if modules is not None else None
    plan = Plan()
    functions = {**(external or {}), **_functions(tree)}
    namer = _Namer()
    wrap: dict[int, tuple[str, str]] = {}
    main = holder = None
    if is_script:
        main, holder = find_main_loop(tree, external)
        if isinstance(main, ast.AsyncFor):
            plan.notes.append(f"the main loop (line {main.lineno}) is an `async for`, which hindlog cannot follow: "
                              "the script runs plainly, without checkpoints")
            main = holder = None
    # Names given with hl.loop are taken: a loop named from its target never reuses one.
    namer.used |= {n for n in map(api_loop_name, ast.walk(tree)) if n}
    if main is not None:
        name = api_loop_name(main)
        if name is None:
            name = namer.name(main)
            wrap[id(main)] = ("main_loop", name)
            plan.names[main.lineno] = name  # type: ignore[attr-defined]
        plan.main_loop, plan.main_line = name, main.lineno  # type: ignore[attr-defined]
        # The loops in its body are nested loops, also when the main loop itself is an hl.loop.
        for inner in _outer_loops(main.body):  # type: ignore[attr-defined]
            if api_loop_name(inner) is None and inner.lineno not in skip_lines and not isinstance(inner, ast.AsyncFor):  # type: ignore[attr-defined]
                n = namer.name(inner)
                wrap[id(inner)] = ("nested_loop", n)
                plan.names[inner.lineno] = n  # type: ignore[attr-defined]
    elif is_script and not plan.notes:
        elsewhere = training_loop_elsewhere(tree, modules or [])
        if elsewhere is None:
            plan.notes.append("no loop holds training work here: the script runs plainly, without checkpoints")
        elif not elsewhere[1]:  # an hl.loop records as in any script that calls hindlog
            plan.notes.append(
                f"the loop that holds the training work is in another module ({elsewhere[0]}), and hindlog run looks for "
                f"the main loop in the script and its functions: the script runs plainly, without checkpoints. "
                f"To checkpoint it, mark that loop with hl.loop(\"epoch\", ...) and name its state with "
                f"hl.checkpoints(...) (see the README's Use it), or move the loop into the script")
    all_functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    for fn in sorted(all_functions, key=lambda f: f.lineno):
        for loop in _outer_loops(fn.body):
            if id(loop) in wrap or api_loop_name(loop) is not None or loop.lineno in skip_lines or isinstance(loop, ast.AsyncFor):  # type: ignore[attr-defined]
                continue
            if main is not None and any(loop is n for n in ast.walk(main)):
                continue
            n = namer.name(loop)
            wrap[id(loop)] = ("nested_loop", n)
            plan.names[loop.lineno] = n  # type: ignore[attr-defined]
    state_before = None
    if main is not None and holder is not None:
        plan.rebound_globals = sorted(_rebound_globals(main, functions))
        plan.state_candidates = sorted(set(_state_candidates(main, holder, functions)) | set(plan.rebound_globals))
        # Declared right before the main loop, in the block that holds it: under ``if __name__ ==
        # "__main__":`` or in a ``with``, the state is made in that block, after the statement
        # of the module or function that encloses the loop has begun.
        state_before = id(main)
    _Rewriter(wrap, state_before, plan.state_candidates, plan.rebound_globals).visit(tree)
    ast.fix_missing_locations(tree)
    return plan


def loop_names(
    source: str, is_script: bool, skip_lines: set[int] | None = None, read: Callable[[str], str | None] | None = None
) -> dict[int, str]:
    """Line of each loop -> the name instrumentation gives it (for replay's planning)."""
    tree = ast.parse(source)
    modules = imported_modules(tree, read) if is_script and read is not None else None
    plan = instrument(tree, is_script, skip_lines, modules)
    out = dict(plan.names)
    for node in ast.walk(ast.parse(source)):
        name = api_loop_name(node)
        if name:
            out[node.lineno] = name  # type: ignore[attr-defined]
    return out
