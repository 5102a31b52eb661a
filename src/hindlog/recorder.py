"""The recording side of a run: its lifecycle, loop contexts and the log hot path.

A ``Recorder`` is created by ``hl.init`` or implicitly by the first hindlog
call. It inserts the run into the catalog, snapshots the code in the
background, starts the writer thread, and finishes the run at exit (normal,
exception, SIGINT or SIGTERM). ``hl.loop`` contexts live here; the hooks at
loop and iteration boundaries call the checkpointer and the replay
controller when there is one.
"""

from __future__ import annotations

import atexit
import os
import secrets
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from . import catalog, codeversion, config, environment
from .store import Store
from .values import capture, check_name
from .writer import Writer, recover_spills

_last_id_lock = threading.Lock()
_last_id = ""


def new_run_id() -> str:
    """A unique, time-sortable run id, e.g. ``20261127-071854-3f9a1c``."""
    global _last_id
    with _last_id_lock:
        while True:
            now = time.time()
            stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
            rid = f"{stamp}{int(now * 1000) % 1000:03d}-{secrets.token_hex(3)}"
            if rid > _last_id:
                _last_id = rid
                return rid


class Recorder:
    """The state of the current run in this process."""

    def __init__(
        self,
        store: Store,
        project: str | None = None,
        name: str | None = None,
        epsilon: float | None = None,
        script: str | None = None,
        argv: list[str] | None = None,
    ) -> None:
        self.store = store
        self.epsilon = config.epsilon(epsilon)
        self.argv = list(sys.argv if argv is None else argv)
        self.script = script if script is not None else _script_path(store.root, self.argv)
        self.project = project or store.root.name
        self.name = name
        self.started = time.time()
        self._clock_start = time.perf_counter()
        self.run_id = new_run_id()
        self.ctx: tuple[Any, ...] = ()
        self.depth = 0
        self.main_loop_done = False
        self.iteration: int | None = None
        self.block = 0
        self.args: dict[str, Any] = {}
        #: Seconds the training thread spent blocked inside hindlog (snapshots).
        self.blocked = 0.0
        self.checkpointer: Any = None
        self.controller: Any = None  # set in replay/resume processes
        self.finished = False
        self.status: str | None = None
        self._exc_status: str | None = None

        store.ensure()
        conn = store.connect()
        try:
            recover_spills(conn, store.spill_dir)
            self.run = catalog.insert_run(
                conn,
                {
                    "run_id": self.run_id,
                    "name": name,
                    "project": self.project,
                    "script": self.script,
                    "status": "running",
                    "argv": self.argv,
                    "env": environment.describe(),
                    "cwd": os.getcwd(),
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "started": self.started,
                    "heartbeat": self.started,
                    "epsilon": self.epsilon,
                },
            )
        finally:
            conn.close()
        self.writer = Writer(store.catalog_path, store.spill_dir, self.run, self.run_id)
        self.append = self.writer.append
        self._snapshot_thread = threading.Thread(target=self._snapshot_code, name="hindlog-code", daemon=True)
        self._snapshot_thread.start()
        self._install_exit_hooks()

    # ------------------------------------------------------------ code version

    def _snapshot_code(self) -> None:
        try:
            version = codeversion.snapshot(self.store, self.run_id)
        except Exception as e:
            warnings.warn(f"hindlog: could not snapshot the code of run {self.run_id}: {e}", RuntimeWarning)
            self.writer.command(lambda conn: catalog.add_run_flag(conn, self.run, "no_code_version"))
            return
        if version.skipped:
            warnings.warn(
                f"hindlog: left {len(version.skipped)} large untracked file(s) out of the code snapshot "
                f"(e.g. {version.skipped[0]}); add them to .gitignore or commit them.",
                RuntimeWarning,
            )
        fields = {"code_version": version.version, "code_kind": version.kind}
        self.writer.command(lambda conn: catalog.update_run(conn, self.run, fields))

    # ------------------------------------------------------------ logging

    def log_slow(self, name: Any, value: Any) -> Any:
        """``hl.log`` for everything but the fast path: validates, freezes, queues."""
        check_name(name)
        frozen = capture(value)
        if self.controller is not None:
            self.controller.on_log(name, frozen)
        self.append((self.ctx, name, frozen))
        return value

    def arg(self, name: str, default: Any) -> Any:
        if type(name) is not str or not name:
            raise TypeError(f"hl.arg name must be a non-empty string, got {name!r}")
        override = config.arg_override(name)
        value = default if override is None else cast_like(default, override, name)
        try:
            import json

            json.dumps(value)
        except (TypeError, ValueError):
            raise TypeError(
                f"hl.arg({name!r}) got a default of type {type(default).__name__}; "
                "use a number, bool, string, None, or a JSON-able list or dict"
            ) from None
        self.args[name] = value
        self.writer.command(lambda conn: catalog.set_arg(conn, self.run, name, value))
        return value

    # ------------------------------------------------------------ loops

    def loop(self, name: str, iterable: Iterable[Any]) -> Iterator[Any]:
        if type(name) is not str or not name:
            raise TypeError(f"hl.loop name must be a non-empty string, got {name!r}")
        if self.depth == 0 and not self.main_loop_done:
            return self._main_loop(name, iterable)
        if self.depth == 1 and self.iteration is not None and self.controller is not None:
            skipped = self.controller.maybe_skip_block(name)
            if skipped is not None:
                return skipped
        return self._inner_loop(name, iterable)

    def _main_loop(self, name: str, iterable: Iterable[Any]) -> Iterator[Any]:
        frame = sys._getframe(1)
        self.depth = 1
        start = 0
        it = iter(iterable)
        if self.controller is not None:
            start, it = self.controller.main_loop_start(name, it, frame)
        if self.checkpointer is not None:
            self.checkpointer.main_loop_started(name, frame)
        i = start
        try:
            for item in it:
                self.ctx = ((name, i, True),)
                self.iteration = i
                self.block = 0
                if self.controller is not None:
                    self.controller.iteration_begin(i)
                yield item
                self._iteration_end(i, frame)
                i += 1
        finally:
            self.ctx = ()
            self.depth = 0
            self.iteration = None
            self.main_loop_done = True
        if self.controller is not None:
            self.controller.main_loop_done()

    def _iteration_end(self, i: int, frame: Any) -> None:
        if self.checkpointer is not None:
            self.checkpointer.iteration_end(i, frame)
        if self.controller is not None:
            self.controller.iteration_end(i)
        self.writer.wake()

    def _inner_loop(self, name: str, iterable: Iterable[Any]) -> Iterator[Any]:
        frame = sys._getframe(1)
        parent = self.ctx
        self.depth += 1
        block_level = self.depth == 2 and self.iteration is not None
        i = 0
        try:
            for item in iterable:
                self.ctx = parent + ((name, i),)
                yield item
                i += 1
        finally:
            self.ctx = parent
            self.depth -= 1
            if block_level:
                self._block_exit(name, frame)

    def _block_exit(self, name: str, frame: Any) -> None:
        if self.checkpointer is not None:
            self.checkpointer.block_exit(self.iteration, self.block, name, frame)
        self.block += 1

    # ------------------------------------------------------------ lifecycle

    def _install_exit_hooks(self) -> None:
        atexit.register(self._atexit)
        previous_hook = sys.excepthook

        def excepthook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
            self._exc_status = "killed" if issubclass(exc_type, KeyboardInterrupt) else "failed"
            previous_hook(exc_type, exc, tb)

        sys.excepthook = excepthook
        if threading.current_thread() is threading.main_thread():
            try:
                previous = signal.getsignal(signal.SIGTERM)
                if previous in (signal.SIG_DFL, None):
                    signal.signal(signal.SIGTERM, self._on_sigterm)
            except (ValueError, OSError):
                pass

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.finish("killed")
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    def _atexit(self) -> None:
        self.finish(self._exc_status or "finished")

    def finish(self, status: str = "finished") -> None:
        """Flush everything, record the end of the run and stop the writer."""
        if self.finished:
            return
        self.finished = True
        self.status = status
        try:
            atexit.unregister(self._atexit)
        except Exception:
            pass
        if self.checkpointer is not None:
            self.checkpointer.close()
        if self.controller is not None:
            self.controller.close()
        self._snapshot_thread.join(timeout=120)
        ended = time.time()
        elapsed = time.perf_counter() - self._clock_start
        fields = {
            "status": status,
            "ended": ended,
            "overhead": (self.blocked / elapsed) if elapsed > 0 else 0.0,
        }
        self.writer.command(lambda conn: catalog.update_run(conn, self.run, fields))
        self.writer.close()


def _script_path(root: Path, argv: list[str]) -> str | None:
    if not argv or not argv[0] or argv[0] in ("-c", "-m", ""):
        return None
    path = Path(argv[0])
    if not path.is_file():
        return None
    path = path.resolve()
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def cast_like(default: Any, raw: str, name: str) -> Any:
    """Cast the text ``raw`` to the type of ``default`` (for HINDLOG_SET_ overrides)."""
    import json

    try:
        if isinstance(default, bool):
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, (list, dict)) or default is None:
            return json.loads(raw)
        return raw
    except ValueError:
        raise ValueError(
            f"HINDLOG_SET_{name}={raw!r} cannot be read as a {type(default).__name__} like the default {default!r}"
        ) from None
