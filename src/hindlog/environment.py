"""What a run records about where it ran: Python, packages, host, GPUs, variables."""

from __future__ import annotations

import os
import platform
import re
import sys
from typing import Any

KEY_PACKAGES = ("hindlog", "torch", "numpy", "pandas", "scikit-learn", "scipy", "jax", "tensorflow", "transformers", "lightning")
#: Environment variables that change what a training script computes; replay sets them again.
_RECORDED_PREFIXES = ("HINDLOG_SET_", "CUDA_", "CUBLAS_", "PYTHONHASHSEED", "OMP_", "MKL_", "TORCH_", "NCCL_",
                      # A job array's index, which a sweep's script reads to choose its settings.
                      "SLURM_ARRAY_TASK_ID", "PBS_ARRAYID", "PBS_ARRAY_INDEX", "LSB_JOBINDEX", "SGE_TASK_ID",
                      "AWS_BATCH_JOB_ARRAY_INDEX")
_SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL")


def hostname() -> str:
    """This machine's name, as ``socket.gethostname()`` gives it (without importing ``socket``,
    a few milliseconds of every run's start)."""
    try:
        return os.uname().nodename
    except AttributeError:  # Windows
        import socket

        return socket.gethostname()


_PID_NAMESPACE: list[str | None] = []


def pid_namespace() -> str | None:
    """This process's PID namespace (Linux): processes of another (a container on the same
    host name) cannot be seen by their pid from here. None where there are no namespaces."""
    if not _PID_NAMESPACE:
        try:
            _PID_NAMESPACE.append(str(os.stat("/proc/self/ns/pid").st_ino))
        except OSError:
            _PID_NAMESPACE.append(None)
    return _PID_NAMESPACE[0]


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_packages() -> dict[str, str]:
    """Every installed distribution and its version, in import order (the first one on
    ``sys.path`` wins, as for imports).

    Read from the names of the ``*.dist-info`` and ``*.egg-info`` directories on
    ``sys.path`` (``numpy-2.1.0.dist-info``): a directory listing per path entry. Asking
    ``importlib.metadata`` opens every distribution's metadata file and took 15-25 ms of
    CPU at each run's start, a measurable share of a short run's overhead budget."""
    out: dict[str, str] = {}
    for entry in sys.path:
        try:
            with os.scandir(entry or ".") as it:
                names = [e.name for e in it]
        except OSError:
            continue
        for dirname in names:
            stem, dot, suffix = dirname.rpartition(".")
            if not dot or suffix not in ("dist-info", "egg-info"):
                continue
            # "name-version" or, for eggs, "name-version-pyX.Y"; names have "-" escaped to "_".
            parts = stem.split("-")
            if len(parts) < 2 or not parts[1][:1].isdigit():
                continue
            out.setdefault(_normalized(parts[0]), parts[1])
    return out


def package_versions(installed: dict[str, str]) -> dict[str, str]:
    """Versions of the key packages among ``installed``, the ones ``hindlog show`` names."""
    out = {}
    for name in KEY_PACKAGES:
        version = installed.get(_normalized(name))
        if version is None:
            module = sys.modules.get(name.replace("-", "_"))
            version = getattr(module, "__version__", None)
        if isinstance(version, str):
            out[name] = version
    return out


def recorded_variables() -> dict[str, str]:
    """The environment variables worth restoring at replay (never secrets)."""
    return {
        k: v
        for k, v in os.environ.items()
        if k.startswith(_RECORDED_PREFIXES) and not any(w in k.upper() for w in _SECRET_WORDS)
    }


def distributed() -> dict[str, Any] | None:
    """This process's place among the processes of one distributed launch (``torchrun``,
    ``torch.distributed.launch``: they set ``RANK`` and ``WORLD_SIZE``): its rank, their
    number and what tells the launch apart; None for a process no launcher started."""
    try:
        world_size, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    except (KeyError, ValueError):
        return None
    if world_size < 1:
        return None
    # (One rank too: a script launched by torchrun reads RANK, and fails without the launcher.)
    return {
        "rank": rank,
        "world_size": world_size,
        # What the ranks of one launch share and another launch's do not: torchrun's run id is
        # "none" unless given, and a fixed --master_port repeats; the local ranks' parent is
        # their launcher's agent process, which a restart (--max-restarts) keeps.
        "launch": [os.environ.get("TORCHELASTIC_RUN_ID"), os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT"),
                   hostname(), os.getppid(), os.environ.get("TORCHELASTIC_RESTART_COUNT")],
    }


def gpus() -> list[str]:
    """Names of the visible GPUs, asked only of a torch that the script already imported."""
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:
        pass
    return []


def packages_description() -> dict[str, Any]:
    """The ``packages`` (key ones, shown) and ``installed`` (all) entries of a run's environment."""
    installed = installed_packages()
    return {"packages": package_versions(installed), "installed": installed}


def _platform() -> str:
    """Like ``platform.platform()`` ("Linux-6.1.0-x86_64-with-glibc2.36"), without the ``uname
    -p`` process and the scan of the interpreter's binary for its libc that it costs at start."""
    u = os.uname()
    out = f"{u.sysname}-{u.release}-{u.machine}"
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError, AttributeError):
        libc = ""
    return out + ("-with-" + libc.replace(" ", "") if libc else "")


def describe(packages: bool = True) -> dict[str, Any]:
    out = {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": _platform(),
        "executable": sys.executable,
        "host": hostname(),
        "pid_namespace": pid_namespace(),
        "cpus": os.cpu_count(),
        "gpus": gpus(),
        "variables": recorded_variables(),
        # Where the script's imports were found besides its own directory; replay points the
        # entries inside the project at its copy of the recorded code (None: not set).
        "pythonpath": os.environ.get("PYTHONPATH"),
    }
    launch = distributed()
    if launch is not None:
        out["distributed"] = launch
    if packages:
        out.update(packages_description())
    return out
