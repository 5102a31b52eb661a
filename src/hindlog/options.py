"""The options a script's argparse parser returns for its command line, defaults included.

They are recorded as the run's ``info.options``: what ``hindlog replay --where`` and ``hindlog
show`` see of a script's arguments besides its ``hl.arg`` calls. A script usually parses its
command line before its first hindlog call starts the run, so ``watch`` wraps
``ArgumentParser.parse_known_args`` as soon as hindlog is imported, or as soon as argparse is
imported when that comes later, and keeps what the parses return until a run takes them
(``attach``). Recording never changes what the script gets.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

#: What the command-line parses returned so far, plain values only.
_parsed: dict[str, Any] = {}
#: Where new options go (the recording run), if any.
_sink: Callable[[dict[str, Any]], None] | None = None
_real_parse: Any = None


class _WhenImported:
    """A ``sys.meta_path`` entry that calls ``watch`` once argparse is imported. Importing
    argparse here instead would add its import (2 ms) to every script that never uses it."""

    @classmethod
    def find_spec(cls, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "argparse":
            return None
        # The finders after this one find it (this one stays until argparse has run: a
        # find_spec that imports nothing, importlib.util.find_spec, must not end the wait).
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None) if finder is not cls else None
            spec = find(name, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _ThenWatch(spec.loader)
        return spec


class _ThenWatch:
    """argparse's own loader, which calls ``watch`` once the module has run."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.loader.exec_module(module)
        try:
            watch()
        except Exception:  # noqa: BLE001 - recording the options must never break an import
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)  # get_source and the rest, for tracebacks and inspect


def _stop_waiting() -> None:
    try:
        sys.meta_path.remove(_WhenImported)  # type: ignore[arg-type]
    except ValueError:
        pass


def watch() -> None:
    """Wrap ``argparse.ArgumentParser.parse_known_args`` (once), now if argparse is imported,
    else when it is."""
    global _real_parse
    argparse = sys.modules.get("argparse")
    if _real_parse is not None:
        return
    if argparse is None:
        if _WhenImported not in sys.meta_path:
            sys.meta_path.insert(0, _WhenImported)  # type: ignore[arg-type]
        return
    _stop_waiting()
    real = _real_parse = argparse.ArgumentParser.parse_known_args

    def parse_known_args(self: Any, args: Any = None, namespace: Any = None) -> Any:
        result = real(self, args, namespace)
        # Parses of the command line, or of what an earlier parse left of it (a config
        # pre-parser, then the main parser on the rest), not of lists of the script's own.
        if args is None or (isinstance(args, list) and args and set(args) <= set(sys.argv[1:])):
            try:
                _parsed.update({k: v for k, v in vars(result[0]).items() if v is None or type(v) in (bool, int, float, str)})
                if _sink is not None:
                    _sink(dict(_parsed))
            except Exception:
                pass  # recording the options never changes what the script gets
        return result

    argparse.ArgumentParser.parse_known_args = parse_known_args


def attach(sink: Callable[[dict[str, Any]], None] | None) -> None:
    """Send the options parsed so far, and those parsed from now on, to ``sink`` (a run's
    ``info``); None stops sending."""
    global _sink
    watch()
    _sink = sink
    if sink is not None and _parsed:
        try:
            sink(dict(_parsed))
        except Exception:
            pass


def forget() -> None:
    """Drop the options parsed so far (hands-free mode: hindlog's own command line's)."""
    _parsed.clear()
