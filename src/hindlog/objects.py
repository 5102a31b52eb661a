"""Content-addressed object store: immutable blobs under ``.hindlog/objects``.

An object's name is the SHA-256 of its content. Writes go to a temporary file
that is fsynced and renamed into place, so a reader never sees a partial
object, and identical content (a frozen layer, an unchanged file) is stored
once. Reads verify the hash.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import CorruptObject


def digest(data: bytes | bytearray | memoryview) -> str:
    """The object name of ``data``."""
    return hashlib.sha256(data).hexdigest()


class ObjectStore:
    """A directory of immutable, hash-named blobs."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, name: str) -> Path:
        return self.root / name[:2] / name[2:]

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    def put(self, data: bytes | bytearray | memoryview, name: str | None = None, durable: bool = True) -> str:
        """Store ``data`` (whose hash may be given when already known) and return its name."""
        name = name or digest(data)
        target = self.path(name)
        if target.exists():
            return name
        self.put_chunks([data], name, durable=durable)
        return name

    def put_chunks(self, chunks: Iterable[bytes | bytearray | memoryview], name: str, durable: bool = True) -> None:
        """Write an object whose name is already known from its chunks, atomically."""
        target = self.path(name)
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                f.flush()
                if durable:
                    os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def get(self, name: str, verify: bool = True) -> bytes:
        """Read an object; raise CorruptObject if it is missing or its content does not match its name."""
        try:
            data = self.path(name).read_bytes()
        except FileNotFoundError:
            raise CorruptObject(f"object {name[:12]} is missing from {self.root}") from None
        if verify and digest(data) != name:
            raise CorruptObject(f"object {name[:12]} in {self.root} is corrupt (its content does not match its hash)")
        return data

    def get_mapped(self, name: str, verify: bool = True) -> memoryview:
        """A read-only memory map of an object (no copy), verified by hash."""
        path = self.path(name)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size == 0:
                    view = memoryview(b"")
                else:
                    view = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
        except FileNotFoundError:
            raise CorruptObject(f"object {name[:12]} is missing from {self.root}") from None
        if verify and digest(view) != name:
            raise CorruptObject(f"object {name[:12]} in {self.root} is corrupt (its content does not match its hash)")
        return view

    def touch(self, name: str) -> None:
        """Mark an existing object as just used (gc keeps recently used objects)."""
        try:
            os.utime(self.path(name))
        except OSError:
            pass

    def delete(self, name: str) -> None:
        try:
            self.path(name).unlink()
        except FileNotFoundError:
            pass

    def names(self) -> Iterator[str]:
        """Every stored object's name."""
        if not self.root.exists():
            return
        for sub in self.root.iterdir():
            if sub.is_dir() and len(sub.name) == 2:
                for f in sub.iterdir():
                    if not f.name.startswith(".tmp-"):
                        yield sub.name + f.name

    def size(self, name: str) -> int:
        return self.path(name).stat().st_size
