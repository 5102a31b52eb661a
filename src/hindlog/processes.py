"""Running short helper commands (git) from inside a training process.

The training process may fork at any moment, from another thread: a PyTorch
DataLoader starts its workers with ``fork``. A child forked while a pipe to a
helper command is open holds that pipe's ends for as long as it lives (a
persistent DataLoader worker lives until the script exits), so whoever waits
for the pipe's end waits that long. ``subprocess`` itself waits on such a pipe
for the helper's ``exec`` to succeed. Helpers are therefore started with
``posix_spawn`` (no pipe: the parent is told of the ``exec`` directly), and
their input and output go through temporary files, which a forked child can
hold without keeping anyone waiting.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path


def run_captured(
    cmd: Sequence[str], env: dict[str, str] | None = None, input: bytes | None = None, timeout: float = 120,
) -> subprocess.CompletedProcess[bytes]:
    """Like ``subprocess.run(cmd, capture_output=True, input=input, timeout=timeout)``, without
    pipes. Raises ``OSError`` if the command cannot be started, ``subprocess.TimeoutExpired``
    if it runs longer than ``timeout`` (it is then killed)."""
    cmd = list(cmd)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as inp:
        if input is not None:
            inp.write(input)
            inp.seek(0)
        spawn = getattr(os, "posix_spawn", None)
        if spawn is None:  # not POSIX: no DataLoader forks either
            proc = subprocess.run(cmd, env=env, stdin=inp, stdout=out, stderr=err, timeout=timeout)
            returncode = proc.returncode
        else:
            exe = shutil.which(cmd[0], path=(env or os.environ).get("PATH"))
            if exe is None:
                raise FileNotFoundError(f"{cmd[0]} is not on PATH")
            actions = [(os.POSIX_SPAWN_DUP2, inp.fileno(), 0), (os.POSIX_SPAWN_DUP2, out.fileno(), 1),
                       (os.POSIX_SPAWN_DUP2, err.fileno(), 2)]
            pid = spawn(exe, cmd, dict(os.environ if env is None else env), file_actions=actions)
            returncode = _wait(pid, cmd, timeout)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(cmd, returncode, out.read(), err.read())


#: CPU seconds the commands started here have used, once finished: work that competes with
#: training for the machine's cores, which the checkpoint policy charges to its budget.
children_cpu = 0.0


def _wait(pid: int, cmd: list[str], timeout: float) -> int:
    global children_cpu
    deadline = time.monotonic() + timeout
    pause = 0.0005
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            children_cpu += usage.ru_utime + usage.ru_stime
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise subprocess.TimeoutExpired(cmd, timeout)
        time.sleep(pause)
        pause = min(pause * 2, 0.02)
