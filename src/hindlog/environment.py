"""What a run records about where it ran: Python, packages, host, GPUs, variables."""

from __future__ import annotations

import os
import platform
import socket
import sys
from typing import Any

KEY_PACKAGES = ("hindlog", "torch", "numpy", "pandas", "scikit-learn", "scipy", "jax", "tensorflow", "transformers", "lightning")
#: Environment variables that change what a training script computes; replay sets them again.
_RECORDED_PREFIXES = ("HINDLOG_SET_", "CUDA_", "CUBLAS_", "PYTHONHASHSEED", "OMP_", "MKL_", "TORCH_", "NCCL_")
_SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL")


def package_versions() -> dict[str, str]:
    """Versions of the key packages installed (reading their metadata takes tens of
    milliseconds: recording asks for them in the background)."""
    from importlib import metadata

    out = {}
    for name in KEY_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def recorded_variables() -> dict[str, str]:
    """The environment variables worth restoring at replay (never secrets)."""
    return {
        k: v
        for k, v in os.environ.items()
        if k.startswith(_RECORDED_PREFIXES) and not any(w in k.upper() for w in _SECRET_WORDS)
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


def describe(packages: bool = True) -> dict[str, Any]:
    out = {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "gpus": gpus(),
        "variables": recorded_variables(),
    }
    if packages:
        out["packages"] = package_versions()
    return out
