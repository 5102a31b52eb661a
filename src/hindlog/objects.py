"""Content-addressed object store: immutable blobs under ``.hindlog/objects``.

An object's name is the 128-bit XXH3 hash of its content (32 hex digits).
Writes go to a temporary file that is renamed into place, so a reader never
sees a partial object, and identical content (a frozen layer, an unchanged
file) is stored once. Reads verify the hash.

Why XXH3 and direct I/O: the persister competes with training for the CPU,
and on a 156 MB fine-tuning checkpoint (bench/bench_persist.py) SHA-256 took
95 ms of CPU where XXH3-128 takes 8 ms, and a buffered write took 40-420 ms of
CPU (page-cache allocation and copy) where an ``O_DIRECT`` write of the same
page-aligned buffer takes 12 ms, the disk doing the rest. The hash guards
against corruption and names content for dedup within one store, not against
an adversary, so a fast non-cryptographic 128-bit hash is enough. Objects
named by SHA-256 (64 hex digits) are still verified with SHA-256.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import mmap
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import xxhash

from .errors import CorruptObject

#: Writes at least this large go around the page cache when their buffer is page-aligned.
DIRECT_MIN_BYTES = 1 << 20
_ALIGN = 4096
_CHUNK = 16 << 20
#: Objects are written under a temporary name starting so, then renamed into place.
TEMPORARY_PREFIX = ".tmp-"
_temporaries = itertools.count()


def digest(data: bytes | bytearray | memoryview) -> str:
    """The object name of ``data``."""
    return xxhash.xxh3_128_hexdigest(data)


#: What fsync answers on a file system that cannot flush (some network or virtual ones): the
#: data is as durable there as it will get, so it is not an error.
_CANNOT_FSYNC = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EROFS, errno.EBADF, errno.EACCES, errno.EISDIR}


def fsync_path(path: str) -> None:
    """Flush a file or a directory (a renamed file's new name) to disk. A file system that
    cannot is left as it is; any other failure (the disk full or failing when the data is
    written back, the file gone) raises ``OSError``: a commit that names the file must not
    follow."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        if e.errno in _CANNOT_FSYNC:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in _CANNOT_FSYNC:
            raise
    finally:
        os.close(fd)


def fsync_together(paths: list[str]) -> None:
    """Flush files written without ``durable``, then once each directory holding their new
    names: what a commit that names them needs on disk first."""
    for path in paths:
        fsync_path(path)
    for folder in {path.rpartition("/")[0] for path in paths}:
        fsync_path(folder)


def matches(name: str, data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` is the content named ``name``."""
    if len(name) == 64:  # named by SHA-256 (stores of earlier versions)
        import hashlib

        return hashlib.sha256(data).hexdigest() == name
    return digest(data) == name


def _address(view: memoryview) -> int | None:
    """The address of a contiguous buffer, or None when it cannot be known."""
    import numpy as np  # only a writer of large objects needs it, and it has it loaded

    try:
        return int(np.frombuffer(view, dtype=np.uint8).ctypes.data)
    except (TypeError, ValueError, BufferError):
        return None


class ObjectStore:
    """A directory of immutable, hash-named blobs."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._root = os.fspath(self.root)
        #: Fan-out directories known to exist: the persister writes several objects per
        #: checkpoint, and it runs under the GIL that training needs, so each write does as
        #: little Python work, and as few system calls, as it can.
        self._made: set[str] = set()

    def path(self, name: str) -> Path:
        return self.root / name[:2] / name[2:]

    def filename(self, name: str) -> str:
        """``path(name)`` as a string, built without pathlib (the persister's hot path)."""
        return f"{self._root}/{name[:2]}/{name[2:]}"

    def exists(self, name: str) -> bool:
        return os.path.exists(self.filename(name))

    def have(self, name: str, size: int) -> bool:
        """Whether the store holds object ``name`` with ``size`` bytes. It is marked as just used:
        ``hindlog gc`` keeps what a running process used since it started, so an object found
        here and about to be named by a new checkpoint is not removed before that is committed.
        A file of another size is damaged: False, and writing the object again replaces it."""
        stat = self._touched(self.filename(name))
        return stat is not None and stat.st_size == size

    def put(self, data: bytes | bytearray | memoryview, name: str | None = None, durable: bool = True) -> str:
        """Store ``data`` (whose hash may be given when already known) and return its name."""
        name = name or digest(data)
        if not self.have(name, memoryview(data).nbytes):
            self.write([data], name, durable=durable)
        return name

    #: False once the file system refused an O_DIRECT write (tmpfs, some network file systems).
    direct_io = hasattr(os, "O_DIRECT")

    def write(self, chunks: Iterable[bytes | bytearray | memoryview], name: str, durable: bool = True) -> None:
        """Write an object whose name is already known from its chunks, atomically (replacing a
        damaged file of that name)."""
        target = self.filename(name)
        fd, tmp = self._temporary(name[:2])
        try:
            chunks = list(chunks)
            if not (len(chunks) == 1 and self._write_direct(fd, chunks[0])):
                for chunk in chunks:
                    view = memoryview(chunk).cast("B")
                    written = 0
                    while written < view.nbytes:
                        written += os.write(fd, view[written:])
            if durable:
                os.fsync(fd)
            os.close(fd)
            fd = -1
            os.replace(tmp, target)
            if durable:
                fsync_path(target.rpartition("/")[0])  # the new name is durable only then
        except BaseException:
            if fd >= 0:
                os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def _temporary(self, sub: str) -> tuple[int, str]:
        """A new temporary file in fan-out directory ``sub``, opened for writing. Its name
        starts with ``TEMPORARY_PREFIX``: readers skip such files, and ``hindlog gc`` removes
        those a killed writer left."""
        folder = f"{self._root}/{sub}"
        if sub not in self._made:
            if not os.path.isdir(folder):
                os.makedirs(folder, exist_ok=True)
                fsync_path(self._root)  # the fan-out folder's own name, before objects are named in it
            self._made.add(sub)
        while True:
            tmp = f"{folder}/{TEMPORARY_PREFIX}{os.getpid()}-{next(_temporaries)}"
            try:
                return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), tmp
            except FileExistsError:
                continue  # left by a killed process that had the same pid
            except FileNotFoundError:
                # The folder was removed under us (a store deleted and made again).
                os.makedirs(folder, exist_ok=True)

    def temporaries(self) -> Iterator[Path]:
        """Temporary files in the store: objects being written, or left by a killed writer."""
        if not self.root.exists():
            return
        for sub in self.root.iterdir():
            if sub.is_dir() and len(sub.name) == 2:
                for f in sub.iterdir():
                    if f.name.startswith(TEMPORARY_PREFIX):
                        yield f

    def _write_direct(self, fd: int, data: bytes | bytearray | memoryview) -> bool:
        """Write a large page-aligned buffer with O_DIRECT (the page-aligned part; the tail
        through the page cache). False, having written nothing, when that does not apply."""
        if not self.direct_io:
            return False
        view = memoryview(data).cast("B") if not isinstance(data, memoryview) or data.format != "B" else data
        size = view.nbytes
        if size < DIRECT_MIN_BYTES or not view.c_contiguous:
            return False
        address = _address(view)
        if address is None or address % _ALIGN:
            return False
        head = size - size % _ALIGN
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
        except OSError:
            type(self).direct_io = False
            return False
        written = 0
        try:
            while written < head:
                written += os.write(fd, view[written : min(head, written + _CHUNK)])
        except OSError as e:
            if e.errno != errno.EINVAL or written:
                raise
            type(self).direct_io = False  # not supported here: buffered from now on
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)
            return False
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)
        while written < size:
            written += os.write(fd, view[written:])
        return True

    def get(self, name: str, verify: bool = True) -> bytes:
        """Read an object; raise CorruptObject if it is missing or its content does not match its name."""
        try:
            data = self.path(name).read_bytes()
        except FileNotFoundError:
            raise CorruptObject(f"object {name[:12]} is missing from {self.root}") from None
        if verify and not matches(name, data):
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
        if verify and not matches(name, view):
            raise CorruptObject(f"object {name[:12]} in {self.root} is corrupt (its content does not match its hash)")
        return view

    def prefetch(self, names: Iterable[str]) -> None:
        """Ask the kernel to start reading these objects into the page cache, and return at once.

        Checkpoint data are written around the page cache (``O_DIRECT``), so the first
        restore after a record, and any restore days later, reads them from disk. Read
        through a memory map, page fault by page fault, 2.2 GB of checkpoints took 3.4 s
        on the reference machine; with every file of a checkpoint announced first, 2.1 s
        (``cat`` of the same files: 1.7 s). A hint only: a missing object is reported
        when it is read."""
        advise = getattr(os, "posix_fadvise", None)
        if advise is None:
            return
        for name in names:
            try:
                fd = os.open(self.path(name), os.O_RDONLY)
            except OSError:
                continue
            try:
                advise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass
            finally:
                os.close(fd)

    def touch(self, name: str) -> bool:
        """Mark an existing object as just used (gc keeps recently used objects). False when
        the store no longer holds it: ``hindlog gc`` sets an object aside before it removes it,
        so a use it did not see fails here and the caller must not name the object."""
        return self._touched(self.filename(name)) is not None

    @staticmethod
    def _touched(path: str) -> os.stat_result | None:
        """Set the file's time to now, then read what is at its path (None: nothing). In that
        order: gc, which renames an object aside and reads its time before removing it, has then
        either not set it aside yet (and will see the new time) or put it back. (utime can find
        the file at its path and set the time after gc read it.)"""
        try:
            os.utime(path)
        except FileNotFoundError:
            return None
        except OSError:
            pass  # a read-only store: the object is there, only its time stays
        try:
            return os.stat(path)
        except OSError:
            return None

    def names(self) -> Iterator[str]:
        """Every stored object's name."""
        if not self.root.exists():
            return
        for sub in self.root.iterdir():
            if sub.is_dir() and len(sub.name) == 2:
                for f in sub.iterdir():
                    if not f.name.startswith(TEMPORARY_PREFIX):
                        yield sub.name + f.name

    def size(self, name: str) -> int:
        return self.path(name).stat().st_size
