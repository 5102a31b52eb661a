"""``python -m hindlog ...``: the same command line as ``hindlog ...``."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
