"""The content-addressed object store: names, atomic writes, direct I/O and verification."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from hindlog.errors import CorruptObject
from hindlog.objects import DIRECT_MIN_BYTES, ObjectStore, digest
from hindlog.state import page_aligned


def _random(nbytes: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8)


@pytest.mark.parametrize("extra", [0, 1, 4095, 12345])
def test_large_page_aligned_buffer_round_trips(tmp_path: Path, extra: int) -> None:
    # Sizes that are and are not a multiple of the page: the aligned head goes around the
    # page cache, the tail through it; the object must be the exact bytes either way.
    store = ObjectStore(tmp_path / "objects")
    nbytes = 2 * DIRECT_MIN_BYTES + extra
    buf = page_aligned(nbytes)
    buf[:] = _random(nbytes)
    assert buf.ctypes.data % 4096 == 0
    name = store.put(memoryview(buf))
    assert name == digest(bytes(buf))
    assert store.path(name).stat().st_size == nbytes
    assert store.get(name) == bytes(buf)
    assert bytes(store.get_mapped(name)) == bytes(buf)


def test_unaligned_and_small_buffers_are_written_too(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "objects")
    big = _random(DIRECT_MIN_BYTES + 100, seed=1)
    unaligned = memoryview(big)[3:]
    for data in (unaligned, b"small", bytes(big[:5000])):
        name = store.put(data)
        assert store.get(name) == bytes(data)
    assert not list((tmp_path / "objects").rglob(".tmp-*"))


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs a tmpfs at /dev/shm")
def test_large_objects_on_tmpfs(monkeypatch: pytest.MonkeyPatch) -> None:
    # tmpfs refuses O_DIRECT on older kernels and accepts it on newer ones: either way the
    # object must be written whole (the store falls back to buffered writes when refused).
    monkeypatch.setattr(ObjectStore, "direct_io", ObjectStore.direct_io)
    root = Path("/dev/shm") / f"hindlog-objects-{os.getpid()}"
    try:
        store = ObjectStore(root)
        buf = page_aligned(2 * DIRECT_MIN_BYTES)
        buf[:] = _random(buf.nbytes, seed=2)
        name = store.put(memoryview(buf))
        assert store.get(name) == bytes(buf)
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def test_same_content_is_stored_once(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "objects")
    a = store.put(b"weights" * 1000)
    b = store.put(bytearray(b"weights" * 1000))
    assert a == b
    assert list(store.names()) == [a]


def test_storing_content_already_there_marks_it_used_and_replaces_a_truncated_file(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "objects")
    data = b"weights" * 1000
    name = store.put(data)
    path = store.path(name)
    os.utime(path, (1_000_000, 1_000_000))
    assert store.put(data) == name
    assert path.stat().st_mtime > 1_000_000, "found again, it is in use: gc's grace starts anew"
    path.write_bytes(data[:100])  # damaged (a disk that lost its tail)
    assert store.put(data) == name
    assert store.get(name) == data


def test_corruption_is_detected_on_read(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "objects")
    name = store.put(b"x" * 100_000)
    path = store.path(name)
    data = bytearray(path.read_bytes())
    data[50_000] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptObject, match=name[:12]):
        store.get(name)
    with pytest.raises(CorruptObject, match="corrupt"):
        store.get_mapped(name)
    path.unlink()
    with pytest.raises(CorruptObject, match="missing"):
        store.get(name)


def test_objects_named_by_sha256_are_still_verified(tmp_path: Path) -> None:
    # Stores written before the switch to XXH3 name objects by SHA-256 (64 hex digits).
    store = ObjectStore(tmp_path / "objects")
    content = b"an older object"
    old = hashlib.sha256(content).hexdigest()
    store.put(content, old)
    assert store.get(old) == content
    store.path(old).write_bytes(b"an altered object")
    with pytest.raises(CorruptObject):
        store.get(old)


def test_a_durable_put_flushes_the_file_and_its_directory(tmp_path: Path, flushed_paths: list[str]) -> None:
    flushed = flushed_paths
    store = ObjectStore(tmp_path / "objects")
    name = store.put(b"durable content")
    path = Path(store.filename(name)).resolve()
    # A new fan-out folder's name is flushed into the store's root first; then the data under
    # its temporary name, then the folder holding its final name.
    assert len(flushed) == 3 and flushed[0] == str(path.parent.parent), flushed
    assert Path(flushed[1]).parent == path.parent and flushed[2] == str(path.parent)
    # In that folder again: the data and the folder only; not durable: nothing.
    same_folder = [c for c in (f"content {k}".encode() for k in range(5000)) if digest(c)[:2] == name[:2]]
    store.put(same_folder[0])
    assert len(flushed) == 5 and flushed[4] == str(path.parent), flushed
    store.put(same_folder[1], durable=False)
    assert len(flushed) == 5
