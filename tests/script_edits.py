"""Hindsight statements added to test scripts: lines inserted after (or before) an anchor
line, indented like it, as a user adds them to a script."""

from __future__ import annotations

from isolation import dedent


def insert_after(text: str, anchor: str, new: str, occurrence: int = 1) -> str:
    """``text`` with the lines ``new`` inserted after the line containing ``anchor``
    (its ``occurrence``-th), indented like that line."""
    return _insert(text, anchor, new, occurrence, after=True)


def insert_before(text: str, anchor: str, new: str, occurrence: int = 1) -> str:
    """Like ``insert_after``, before the anchor's line."""
    return _insert(text, anchor, new, occurrence, after=False)


def _insert(text: str, anchor: str, new: str, occurrence: int, after: bool) -> str:
    lines = text.splitlines(keepends=True)
    hits = [k for k, line in enumerate(lines) if anchor in line]
    assert len(hits) >= occurrence, f"anchor {anchor!r} occurs {len(hits)} times"
    k = hits[occurrence - 1]
    indent = lines[k][: len(lines[k]) - len(lines[k].lstrip())]
    block = [indent + line + "\n" if line.strip() else "\n" for line in dedent(new).splitlines()]
    at = k + 1 if after else k
    return "".join(lines[:at] + block + lines[at:])


def apply_edits(text: str, edits: list[tuple[str, str]]) -> str:
    """Apply ``(anchor, new lines)`` insertions in order: after the anchor's first line, or
    before it when the anchor starts with ``^``."""
    text = dedent(text)
    for anchor, new in edits:
        if anchor.startswith("^"):
            text = insert_before(text, anchor[1:], new)
        else:
            text = insert_after(text, anchor, new)
    return text
