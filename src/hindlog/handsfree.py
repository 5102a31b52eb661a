"""``hindlog run SCRIPT``: record (or replay) an unmodified script, as ``python SCRIPT`` would run it.

The script runs as ``__main__`` with its own ``sys.argv``, ``__file__`` and
``sys.path[0]``, compiled under its own file name so tracebacks show the
user's lines. Its syntax tree, and that of every project module it imports,
is instrumented (``instrument.py``); the names the instrumented code calls
live in ``Runtime``, bound as ``__hindlog__`` in each instrumented module.
Lines the script prints are still shown and are also recorded per main-loop
iteration under the name ``@stdout``.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import importlib.machinery
import itertools
import os
import sys
import time
import collections
import types
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from . import catalog, config, instrument, options, record
from .instrument import RUNTIME
from .state import is_random_generator, trained_by
from .values import capture

STDOUT = "@stdout"
#: True in a process that ``hindlog run`` started (hindlog's advice to the user differs there).
RUNNING = False
_SKIP_TYPES = ("DataLoader", "Dataset", "Sampler", "Logger", "SummaryWriter", "tqdm", "Thread", "Lock", "Random")


class WhileCondition:
    """The iterations of ``while COND:``: the next one exists while ``condition()`` is true.

    Checking the condition in the iterator, not in the loop's body, means the final,
    failing check is not an iteration of its own. A replay or resume that starts at
    iteration k skips the first k without checking (the state they would be checked
    on is restored afterwards)."""

    def __init__(self, condition: Callable[[], Any]) -> None:
        self.condition = condition
        self.position = 0

    def __iter__(self) -> WhileCondition:
        return self

    def __next__(self) -> int:
        if not self.condition():
            raise StopIteration
        self.position += 1
        return self.position - 1

    def skip(self, n: int) -> None:
        self.position += n


class Runtime:
    """What instrumented code calls."""

    count = staticmethod(itertools.count)
    while_condition = WhileCondition

    def __init__(self) -> None:
        self.report: list[str] = []
        self.declared: list[str] = []

    def main_loop(self, name: str, iterable: Iterable[Any]) -> Iterator[Any] | Iterable[Any]:
        return record.loop(name, iterable)

    def nested_loop(self, name: str, iterable: Iterable[Any]) -> Iterator[Any] | Iterable[Any]:
        rec = record._recorder
        if rec is None or rec.depth == 0:
            return iterable  # not inside the main loop: an ordinary loop
        return rec.loop(name, iterable)

    def auto_state(self, names: list[str], rebound: list[str] | None = None) -> None:
        """Declare, as training state, the candidates found by analysis that can be checkpointed.
        ``rebound``: module globals that functions rebind (``global step``), held by name."""
        rec = record.current()
        if rec is None:
            return
        if rec.controller is not None and "state_candidates" in rec.controller.spec:
            # Replay and resume declare what the recording declared, not what the changed code suggests.
            names = rec.controller.spec["state_candidates"]
        frame = sys._getframe(1)
        scope = {**frame.f_globals, **frame.f_locals}
        chosen: dict[str, Any] = {}
        skipped: list[str] = []
        for name in names:
            if name not in scope:
                continue
            value = scope[name]
            verdict = _classify(value)
            if verdict is None:
                continue
            if verdict is True:
                chosen[name] = value
            else:
                skipped.append(f"{name} ({verdict})")
        for name in rebound or []:
            if name in names and name in frame.f_globals:
                from .state import GlobalValue

                # Held by name, not by the object it names now: the function binds a new one.
                skipped = [s for s in skipped if not s.startswith(f"{name} (")]
                chosen[name] = GlobalValue(frame.f_globals, name)
        chosen.update(trained_by(chosen, scope))
        accepted = {}
        for name, value in chosen.items():
            try:
                from .state import declare

                declare(name, value)
                accepted[name] = value
            except TypeError as e:
                skipped.append(f"{name} ({type(value).__name__}: {str(e).split(': ')[-1][:80]})")
        if accepted:
            rec.checkpoints(accepted)
        self.declared = sorted(accepted)
        if rec.controller is not None:
            return
        message = f"hindlog: checkpointing {', '.join(sorted(accepted)) or 'no objects'} and the random generators"
        if skipped:
            message += (
                "; not checkpointed: " + ", ".join(skipped) + ". A replay that starts after the first "
                "iteration gets these as the script creates them before the main loop, not as they were then"
            )
        print(message, file=sys.stderr)

    def hindsight_print(self, *args: Any, **kwargs: Any) -> None:
        """A ``print`` added after the fact: printed, and stored for the run and iteration."""
        _Tee.hindsight += 1
        try:
            print(*args, **kwargs)
        finally:
            _Tee.hindsight -= 1
        if kwargs.get("file") not in (None, sys.stdout):
            return
        text = kwargs.get("sep", " ").join(str(a) for a in args)
        rec = record._recorder
        if rec is None:
            return
        position = getattr(rec.controller, "printed_position", None)
        if rec.controller is not None and not rec.controller.on_log(STDOUT, text):
            return
        rec.append((rec.ctx, STDOUT, text))
        if position is not None:
            # Its place among the recorded lines of its context, for show --output.
            rec.append((rec.ctx, catalog.STDOUT_AT, capture(position())))


def _classify(value: Any) -> bool | str | None:
    """True: checkpoint it. A string: why not. None: not state at all (ignore silently)."""
    if value is None or isinstance(value, (int, float, complex, str, bytes, bool, tuple, frozenset, range)):
        return None
    if isinstance(value, (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType, type)):
        return None
    if is_random_generator(value):
        return True
    tname = type(value).__name__
    if any(t in tname for t in _SKIP_TYPES):
        return f"{tname}: re-created by the script"
    if isinstance(value, (types.GeneratorType, Iterator)) or hasattr(value, "fileno") and hasattr(value, "read"):
        return f"{tname}: cannot be checkpointed"
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Generator):
        return True
    if torch is not None and isinstance(value, torch.Tensor):
        return True if value.requires_grad else None
    if callable(getattr(value, "state_dict", None)) and callable(getattr(value, "load_state_dict", None)):
        return True
    if isinstance(value, np.ndarray):
        return True
    if isinstance(value, (list, dict, set, collections.deque)) or hasattr(value, "__dict__"):
        return True
    return None


class _Tee:
    """stdout that also records complete lines under ``@stdout`` (in a replay: checks them
    against the recorded ones)."""

    #: Above 0 while a hindsight ``print`` writes: its lines are stored by it, not checked.
    hindsight = 0

    def __init__(self, real: Any) -> None:
        self._real = real
        self._partial = ""

    def write(self, text: str) -> int:
        n = self._real.write(text)
        rec = record._recorder
        if rec is None or rec.finished:
            return n
        controller = rec.controller
        check = getattr(controller, "check_printed", None)
        if controller is not None and (_Tee.hindsight or (check is None and not controller.on_log(STDOUT, None))):
            # A replay stores hindsight prints itself; a resumed run records what it prints
            # from its main loop on (the killed process recorded what came before).
            return n
        data = self._partial + text
        *lines, self._partial = data.split("\n")
        for line in lines:
            if check is not None:
                check(line)
            else:
                rec.append((rec.ctx, STDOUT, line))
        return n

    def flush(self) -> None:
        self._real.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


# ----------------------------------------------------------------- importing project modules


class _Finder:
    """Instruments the project's own modules (files under the project root, outside environments).

    A meta path finder by protocol (``find_spec``), not by subclassing ``importlib.abc``: that
    module's import costs every ``hindlog run`` a few milliseconds of its start."""

    def __init__(self, root: Path, runtime: Runtime, skip: dict[str, set[int]]) -> None:
        self.root = root.resolve()
        self.runtime = runtime
        self.skip = skip
        self._sys_path: list[str] | None = None  # sys.path when _dirs was made from it
        self._dirs: list[str] = []

    def _top_level_dirs(self) -> list[str]:
        """Where python finds the project's top-level modules: the entries of ``sys.path`` inside
        the project (the script's directory, PYTHONPATH's, an editable install's), as sys.path
        gives them so that modules' ``__file__`` is what python gives. Made again only when
        sys.path changes, not at every import."""
        if sys.path != self._sys_path:
            self._sys_path = list(sys.path)
            self._dirs = project_dirs(self.root)
        return self._dirs

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        # Asked about every import the script makes (torch's hundreds of submodules too):
        # answer "not mine" with a couple of stat calls, never with a second search of sys.path.
        root = str(self.root)
        if path is None:
            top = fullname.partition(".")[0]
            dirs = self._top_level_dirs()
            if not any(os.path.exists(os.path.join(d, top + ".py")) or os.path.isdir(os.path.join(d, top)) for d in dirs):
                return None
            search = dirs
        else:
            search = [p for p in path if str(p).startswith(root)]
            if not search:
                return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, search)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            return None
        origin = Path(spec.origin).resolve()
        if not _is_project_file(origin, self.root):
            return None
        spec.loader = _Loader(fullname, str(origin), self)
        return spec


def project_dirs(root: Path) -> list[str]:
    """The entries of ``sys.path`` inside the project at ``root`` (resolved), environments left
    out, as sys.path gives them: where python finds the project's top-level modules."""
    dirs: list[str] = []
    for entry in sys.path:
        if not isinstance(entry, str) or entry in dirs:
            continue
        try:
            resolved = Path(entry or ".").resolve()
        except (OSError, RuntimeError):
            continue
        if resolved == root or _is_project_file(resolved, root):
            dirs.append(entry)
    return dirs


def _is_project_file(path: Path, root: Path) -> bool:
    try:
        rel = path.relative_to(root)
    except ValueError:
        return False
    parts = set(rel.parts)
    if parts & {"site-packages", "dist-packages", ".venv", "venv", ".hindlog", ".git"}:
        return False
    # An environment inside the project under another name (a conda env in ./env): its
    # standard library is not the project's code.
    return not any(path.is_relative_to(prefix) for prefix in _prefixes_inside(root))


def _prefixes_inside(root: Path) -> list[Path]:
    """The interpreter's environment directories that lie inside the project at ``root``."""
    out = []
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix}:
        resolved = Path(prefix).resolve()
        if resolved != root and resolved.is_relative_to(root):
            out.append(resolved)
    return out


class _Loader(importlib.machinery.SourceFileLoader):
    def __init__(self, fullname: str, path: str, finder: _Finder) -> None:
        super().__init__(fullname, path)
        self.finder = finder

    def source_to_code(self, data: Any, path: Any, *, _optimize: int = -1) -> types.CodeType:  # type: ignore[override]
        tree = ast.parse(data, path)
        rel = _rel(Path(path), self.finder.root)
        new_lines = self.finder.skip.get(rel, set())
        instrument.instrument(tree, is_script=False, skip_lines=new_lines)
        if new_lines:
            # print(...) calls added to a project module are hindsight statements too.
            _hindsight_prints(tree, new_lines)
            ast.fix_missing_locations(tree)
        return compile(tree, path, "exec", dont_inherit=True)

    def exec_module(self, module: types.ModuleType) -> None:
        module.__dict__[RUNTIME] = self.finder.runtime
        super().exec_module(module)

    def get_code(self, fullname: str) -> Any:
        # Never use or write cached bytecode: it would be the uninstrumented module's.
        source = self.get_data(self.path)
        return self.source_to_code(source, self.path)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        return str(path)


# ----------------------------------------------------------------- running


def _hindsight_prints(tree: ast.Module, lines: set[int]) -> None:
    """Turn ``print(...)`` calls on new lines into ``__hindlog__.hindsight_print(...)``."""
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
            and node.lineno in lines
        ):
            node.func = ast.copy_location(
                ast.Attribute(value=ast.Name(id=RUNTIME, ctx=ast.Load()), attr="hindsight_print", ctx=ast.Load()), node.func
            )


def _expand(ranges: dict[str, list[list[int]]]) -> dict[str, set[int]]:
    return {path: {ln for lo, hi in rs for ln in range(lo, hi + 1)} for path, rs in ranges.items()}


#: Top-level packages whose import imports NumPy: a script importing one would pay for NumPy anyway.
_NUMPY_STACK = {"numpy", "torch", "sklearn", "scipy", "pandas", "jax", "tensorflow", "transformers", "lightning", "matplotlib"}


def _imports_any(tree: ast.Module, packages: frozenset[str] | set[str] = _NUMPY_STACK) -> bool:
    """Whether the script imports any of ``packages`` (by default, those that import NumPy)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] in packages for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] in packages:
            return True
    return False


def _run_plainly(abs_path: Path, module: str | None = None) -> int:
    import runpy

    try:
        if module is not None:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(str(abs_path), run_name="__main__")
    except SystemExit as e:
        return _exit_code(e.code)
    except BaseException:
        import traceback

        traceback.print_exc()
        return 1
    return 0


def _main_module_spec(name: str) -> Any:
    """What ``python -m NAME`` runs: the module's spec (a package's ``__main__``'s), found from
    the current directory as python finds it (from ``$HINDLOG_MODULE_DIR`` in a resume, which
    runs in the recorded directory with the recorded code elsewhere), without importing its
    packages yet; or the message python gives when there is none."""
    from . import mainmodule

    sys.path[0] = os.environ.pop("HINDLOG_MODULE_DIR", None) or os.getcwd()
    python = sys.executable
    spec = mainmodule.find(name, sys.path)
    if spec is None:
        package = mainmodule.lookup(name, sys.path)
        if package is not None and package.submodule_search_locations is not None:
            return f"{python}: No module named {name}.__main__; {name!r} is a package and cannot be directly executed"
        return f"{python}: No module named {name}"
    if not spec.origin or not spec.origin.endswith(".py") or not os.path.isfile(spec.origin):
        return f"hindlog: {name} is not a module with Python source ({spec.origin}); hindlog run -m needs one"
    return spec


#: Modules that launch the processes of a distributed training run.
_LAUNCHERS = ("torch.distributed.run", "torch.distributed.launch")


def run_script(script: str, args: list[str], epsilon: float | None = None, sets: list[str] | None = None,
               module: bool = False) -> int:
    """Run ``script`` with ``args`` under hands-free recording (``module``: ``script`` names a
    module, run as ``python -m`` runs it); returns its exit code."""
    global RUNNING
    if (module and script in _LAUNCHERS) or (not module and Path(script).name in ("torchrun", "torch.distributed.run")):
        # The launcher's own process trains nothing: its ranks must be recorded, each in itself.
        print(f"hindlog: {script} launches processes that train; `hindlog run` would record only the launcher. Put "
              "hindlog inside the launch, so that each rank records its run: `torchrun [options] -m hindlog run "
              "train.py ...`", file=sys.stderr)
        return 2
    RUNNING = True
    module_spec = None
    if module:
        module_spec = _main_module_spec(script)
        if isinstance(module_spec, str):
            print(module_spec, file=sys.stderr)
            return 1
        path = Path(module_spec.origin)
    else:
        path = Path(script)
    if not path.is_file():
        print(f"{Path(sys.executable).name}: can't open file {str(path.resolve())!r}: [Errno 2] No such file or directory", file=sys.stderr)
        return 2
    source = path.read_bytes()
    try:
        tree = ast.parse(source, str(path.resolve()))  # python reports the absolute path
    except SyntaxError as e:
        import traceback

        traceback.print_exception(type(e), e, None)
        return 1
    try:
        config.epsilon(epsilon)
    except ValueError as e:
        print(f"hindlog: --epsilon: {e}", file=sys.stderr)
        return 2
    for item in sets or []:
        if "=" not in item:
            print(f"hindlog: --set takes NAME=VALUE, got {item!r}", file=sys.stderr)
            return 2
        name, value = item.split("=", 1)
        os.environ[f"HINDLOG_SET_{name}"] = value

    abs_path = path.resolve()
    if module_spec is not None:
        # As python -m: argv[0] is the module's file, and the current directory is on sys.path
        # (set by _main_module_spec), not the module's own.
        sys.argv = [module_spec.origin, *args]
    else:
        sys.argv = [script, *args]
        sys.path[0] = str(abs_path.parent)
    if config.disabled():
        print("hindlog: HINDLOG_DISABLED is set: the script runs plainly, and nothing is recorded", file=sys.stderr)
        return _run_plainly(abs_path, script if module else None)
    from .controller import current_spec

    spec = current_spec() or {}
    new_lines = _expand(spec.get("new_lines", {}))
    if record._recorder is None:
        options.forget()  # hindlog's own command line's, parsed by now
        record.init(epsilon=epsilon)
    rec = record._recorder
    root = rec.store.root if rec is not None else abs_path.parent
    rel = _rel(abs_path, root)
    skip = new_lines
    runtime = Runtime()

    top_dirs = project_dirs(root.resolve())

    def read_project_module(rel_path: str) -> str | None:
        for top in top_dirs:
            candidate = Path(top or ".") / rel_path
            if candidate.is_file():
                return candidate.read_text()
        return None

    package = module_spec.parent if module_spec is not None else None
    modules = instrument.imported_modules(tree, read_project_module, package)
    plan = instrument.instrument(tree, is_script=True, skip_lines=skip.get(rel, set()), modules=modules)
    if rel in new_lines:
        _hindsight_prints(tree, new_lines[rel])
        ast.fix_missing_locations(tree)
    for notes in plan.notes:
        print(f"hindlog: {notes}", file=sys.stderr)
    if rec is not None and rec.controller is None:
        info = {"handsfree": True, "main_loop": plan.main_loop, "state_candidates": plan.state_candidates}
        if module:
            info["module"] = script
        rec.writer.change("info", info)
    finder = _Finder(root, runtime, skip)
    sys.meta_path.insert(0, finder)
    code = compile(tree, str(abs_path), "exec", dont_inherit=True)
    if rec is not None:
        # Everything hindlog did before the script starts (import, analysis, set-up) is its cost.
        import hindlog

        rec.startup_seconds = time.perf_counter() - hindlog.IMPORT_STARTED
        if _imports_any(tree):
            rec.startup_seconds -= hindlog.NUMPY_IMPORT_SECONDS
        if _imports_any(tree, {"torch"}):
            from . import checkpoint

            rec.startup_seconds -= checkpoint.TORCH_IMPORT_SECONDS  # (a resume read its checkpoint first)
    main = types.ModuleType("__main__")
    main.__dict__.update({"__file__": str(abs_path), "__builtins__": builtins, RUNTIME: runtime, "__cached__": None})
    if module_spec is not None:
        # What runpy gives a module run as __main__: its relative imports resolve in its package.
        main.__dict__.update({"__file__": module_spec.origin, "__spec__": module_spec, "__package__": module_spec.parent,
                              "__loader__": module_spec.loader})
    saved_main = sys.modules.get("__main__")
    sys.modules["__main__"] = main
    real_stdout = sys.stdout
    sys.stdout = _Tee(real_stdout)
    status, code_out = "finished", 0
    try:
        if module_spec is not None and module_spec.parent:
            # As python -m, the module's packages first; with the import hook in place, the
            # modules their __init__ imports are instrumented too.
            importlib.import_module(module_spec.parent)
        exec(code, main.__dict__)
    except SystemExit as e:
        code_out = _exit_code(e.code)
        status = "finished" if code_out == 0 else "failed"
        if isinstance(e.code, str) and record._recorder is not None:
            record._recorder.error = e.code  # sys.exit("giving up"): what Python prints
    except KeyboardInterrupt:
        status, code_out = "killed", 130
        _print_user_traceback(*sys.exc_info(), str(abs_path))
    except BaseException:
        status, code_out = "failed", 1
        if record._recorder is not None:
            record._recorder.note_error(sys.exc_info()[1])
        _print_user_traceback(*sys.exc_info(), str(abs_path))
    finally:
        sys.stdout.flush()
        sys.stdout = real_stdout
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)
        if saved_main is not None:
            sys.modules["__main__"] = saved_main
    rec = record._recorder
    if rec is not None and not rec.finished:
        rec.finish(status, at_exit=True)  # the script's end: its exit code stands
    return code_out


def _exit_code(code: Any) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _print_user_traceback(exc_type: Any, exc: Any, tb: Any, script: str) -> None:
    """The traceback as ``python SCRIPT`` would show it: hindlog's own frames left out."""
    import traceback

    package = str(Path(__file__).resolve().parent)
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(package):
        tb = tb.tb_next
    sys.stderr.flush()
    if exc is not None:
        exc = exc.with_traceback(tb)  # a hook may print the exception's own traceback
    if sys.excepthook is not sys.__excepthook__:
        # The script installed its own (rich's pretty tracebacks, a crash reporter): python
        # would have called it.
        try:
            sys.excepthook(exc_type, exc, tb)
            return
        except Exception:
            pass
    traceback.print_exception(exc_type, exc, tb)
