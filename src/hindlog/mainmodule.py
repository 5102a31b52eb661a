"""What ``python -m NAME`` runs, found without running anything.

Python imports a module's parent packages before it runs the module as
``__main__``, and their ``__init__`` may import torch or have side effects.
hindlog needs the module's file earlier than that: ``hindlog run -m`` must
install its import hook before the packages load, a run started with
``python -m`` may call hindlog while its package is still loading, and
``hindlog replay -m`` only needs the file. Packages are looked up on the given
directories level by level, as the import system's path finder does.
"""

from __future__ import annotations

import importlib.machinery
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec


def lookup(name: str, search: Sequence[str]) -> ModuleSpec | None:
    """The spec of module or package ``name`` on ``search`` (the directories ``sys.path`` would
    hold), its parent packages looked up, not imported; None if there is none."""
    parts = name.split(".")
    path = list(search)
    spec = None
    for k in range(len(parts)):
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[: k + 1]), path)
        if spec is None:
            return None
        if k < len(parts) - 1:
            if spec.submodule_search_locations is None:
                return None  # a module where a package must be
            path = list(spec.submodule_search_locations)
    return spec


def find(name: str, search: Sequence[str]) -> ModuleSpec | None:
    """The spec of the module ``python -m NAME`` runs (a package's ``__main__``) on ``search``,
    or None if there is none."""
    spec = lookup(name, search)
    if spec is not None and spec.submodule_search_locations is not None:
        spec = importlib.machinery.PathFinder.find_spec(f"{name}.__main__", list(spec.submodule_search_locations))
    return spec


def started_as() -> tuple[str, list[str]] | None:
    """While ``python -m NAME ARGS`` is still importing NAME's packages (``sys.argv`` is then
    ``['-m']``): NAME and the ``sys.argv`` the module will get. None otherwise."""
    if sys.argv[:1] != ["-m"]:
        return None
    orig = list(getattr(sys, "orig_argv", []))
    if "-m" not in orig[1:]:
        return None
    k = orig.index("-m", 1)
    if k + 1 >= len(orig):
        return None
    name = orig[k + 1]
    spec = find(name, sys.path)
    if spec is None or not spec.origin:
        return None
    return name, [spec.origin, *orig[k + 2:]]
