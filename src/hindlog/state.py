"""Training state: declaring it, freezing a consistent copy of it, and restoring it.

Freezing runs on the training thread and is the only part of checkpointing
that blocks training, so it does as little as it can: containers are rebuilt,
tensors and arrays are copied (GPU tensors asynchronously, into pinned host
memory), and a tensor unchanged since the last checkpoint (same object, same
in-place version counter) is not copied again at all. Everything else
(hashing, pickling the skeleton, writing) happens on the persister thread.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import io
import itertools
import math
import mmap
import os
import pickle
import random
import sys
import types
import weakref
from dataclasses import dataclass, field
from collections.abc import Collection
from typing import Any

import numpy as np

from . import instance_dicts
from .objects import digest

_IMMUTABLE = (int, float, complex, bool, str, bytes, type(None), range, slice)


# ----------------------------------------------------------------- declaring


@dataclass
class Declared:
    """One object named in ``hl.checkpoints``."""

    name: str
    obj: Any
    kind: str  # 'stateful' | 'module' | 'tensor' | 'array' | 'generator' | 'pickle'
    #: A model's plain attributes when it was declared, and those changed since (``state_of``).
    baseline: dict[str, dict[str, Any]] | None = None
    changed: set[tuple[str, str]] = field(default_factory=set)
    #: Per module (by index), its ``__dict__``'s size and the names of its plain attributes when
    #: last scanned: a checkpoint reads only those, and scans a module again when its size changed.
    watched: list[tuple[int, tuple[str, ...], dict[str, Any], tuple[str, ...]]] | None = None

    @property
    def held(self) -> Any:
        """The user's object (``obj`` may wrap it: a random generator)."""
        return self.obj.rng if isinstance(self.obj, RandomGeneratorState) else self.obj


def declare(name: str, obj: Any) -> Declared:
    """Classify ``obj``, or raise TypeError if hindlog cannot checkpoint it."""
    torch = sys.modules.get("torch")
    if torch is not None:
        if isinstance(obj, torch.nn.Module):
            return Declared(name, obj, "module", baseline=_plain_attributes(obj))
        if isinstance(obj, torch.Generator):
            return Declared(name, obj, "generator")
        if isinstance(obj, torch.Tensor):
            return Declared(name, obj, "tensor")
    if callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None)):
        return Declared(name, obj, "stateful")
    if is_random_generator(obj):
        return Declared(name, RandomGeneratorState(obj), "stateful")
    if isinstance(obj, np.ndarray):
        return Declared(name, obj, "array")
    try:
        _dumps(obj)
    except Exception as e:
        raise TypeError(
            f"hl.checkpoints cannot checkpoint {name}={type(obj).__module__}.{type(obj).__qualname__}: it has no "
            f"state_dict()/load_state_dict() and cannot be pickled ({type(e).__name__}: {e}). Declare the objects "
            "that hold its state instead, or give it state_dict()/load_state_dict()."
        ) from None
    return Declared(name, obj, "pickle")


def undeclared_generators(scope: dict[str, Any], held: set[int], taken: Collection[str] = ()) -> dict[str, Declared]:
    """The ``torch.Generator`` objects in ``scope`` (the main loop's) that are not in ``held``:
    named ones (``g``, drawn from with ``generator=g``), and those handed to a DataLoader or its
    sampler (as ``loader.generator``). What they draw next (the next epoch's order) is training
    state, as the global generators' is, which checkpoints always hold. Names in ``taken`` (the
    declared ones) are left to what they name."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    out: dict[str, Declared] = {}

    def add(name: str, value: Any) -> None:
        if isinstance(value, torch.Generator) and id(value) not in held and name not in taken:
            held.add(id(value))
            out[name] = Declared(name, value, "generator")

    loader_type = getattr(getattr(getattr(torch, "utils", None), "data", None), "DataLoader", None)
    for name, value in list(scope.items()):
        if isinstance(value, torch.Generator):
            add(name, value)
        elif loader_type is not None and isinstance(value, loader_type):
            sampler = getattr(value, "sampler", None)
            batch_sampler = getattr(value, "batch_sampler", None)
            for part in (value, sampler, batch_sampler, getattr(batch_sampler, "sampler", None)):
                add(f"{name}.generator", getattr(part, "generator", None))
    return out


class GlobalValue:
    """A module global that functions rebind (``global step; step += 1``), checkpointed by name:
    restoring it binds the name in the module again (a number cannot change in place)."""

    def __init__(self, namespace: dict[str, Any], name: str) -> None:
        self.namespace = namespace
        self.name = name

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.namespace.get(self.name)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.namespace[self.name] = state["value"]


def is_random_generator(value: Any) -> bool:
    """A random generator object of the script's own (``np.random.default_rng()``,
    ``RandomState``, ``random.Random``): what it draws next is training state like a model's."""
    return isinstance(value, (np.random.Generator, np.random.RandomState, random.Random))


class RandomGeneratorState:
    """A random generator seen as a stateful object, so that a restore sets its state in place
    (the script's own reference to it then draws what the recorded run drew)."""

    def __init__(self, rng: Any) -> None:
        self.rng = rng

    def state_dict(self) -> dict[str, Any]:
        rng = self.rng
        if isinstance(rng, np.random.Generator):
            return {"bit_generator": rng.bit_generator.state}
        if isinstance(rng, np.random.RandomState):
            return {"state": rng.get_state(legacy=False)}
        return {"state": rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rng = self.rng
        if isinstance(rng, np.random.Generator):
            rng.bit_generator.state = state["bit_generator"]
        elif isinstance(rng, np.random.RandomState):
            rng.set_state(state["state"])
        else:
            rng.setstate(_as_tuple(state["state"]))


def trained_by(state: dict[str, Any], scope: dict[str, Any]) -> dict[str, Any]:
    """The modules and tensors in ``scope`` that an optimizer in ``state`` trains, not in ``state``.

    ``opt.step()`` shows that the optimizer changes; the model it changes may only be called
    (``model(x)``) or read (``x @ w``) in the main loop, which changes nothing visible in the
    code, yet its parameters are the training's main state."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    trained: set[int] = set()
    for value in state.values():
        if isinstance(value, torch.optim.Optimizer):
            trained.update(id(p) for group in value.param_groups for p in group["params"])
    if not trained:
        return {}
    held = {id(v) for v in state.values()}
    # Parameters of a module in ``state`` are checkpointed with it: a loop variable that is one
    # of them (``for p in model.parameters()``), or a submodule, is not missing.
    covered = {id(p) for v in state.values() if isinstance(v, torch.nn.Module) for p in v.parameters()}
    out = {}
    for name, value in scope.items():
        if name.startswith("__") or id(value) in held:
            continue
        if isinstance(value, torch.nn.Module):
            params = [id(p) for p in value.parameters()]
            if any(p in trained for p in params) and not all(p in covered for p in params):
                out[name] = value
        elif isinstance(value, torch.Tensor) and id(value) in trained and id(value) not in covered:
            out[name] = value
    return out


def _dumps(obj: Any) -> bytes:
    try:
        return _dump_with(pickle.Pickler, obj)[0]
    except Exception:
        import cloudpickle

        return _dump_with(cloudpickle.CloudPickler, obj)[0]


def _dump_with(pickler_class: Any, obj: Any, **attributes: Any) -> tuple[bytes, Any]:
    """``obj`` pickled by a new ``pickler_class`` given these attributes; the bytes and the pickler."""
    buf = io.BytesIO()
    pickler = pickler_class(buf, protocol=pickle.HIGHEST_PROTOCOL)
    for name, value in attributes.items():
        setattr(pickler, name, value)
    try:
        pickler.dump(obj)
    finally:
        instance_dicts.repack_pickled(pickler)  # also after a failed dump: it reached some
    return buf.getvalue(), pickler


def _load_with(unpickler: Any) -> Any:
    """What ``unpickler`` loads, the objects it made given fast attributes again."""
    value = unpickler.load()
    instance_dicts.repack_unpickled(unpickler)
    return value


def _loads(data: bytes) -> Any:
    return _load_with(pickle.Unpickler(io.BytesIO(data)))


# ----------------------------------------------------------------- frozen values


class TensorRef:
    """A placeholder for the ``index``-th tensor of a frozen skeleton."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> tuple[Any, ...]:
        return (TensorRef, (self.index,))


class Pickled:
    """A leaf pickled at freeze time (its object may change after)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.data,))  # PickledWithRefs too


class PickledWithRefs(Pickled):
    """A local value pickled with references in place of the declared objects it holds (a
    trainer's ``self.model``) and of its large arrays and tensors (stored as tensors of the
    checkpoint, deduplicated). It is unpickled only when restored (``resolve``), where the
    references become the live declared objects: a restored trainer trains the model the
    checkpoints restore, not a copy of it."""

    __slots__ = ()


class DeclaredRef:
    """A declared object (by its name) within a frozen local value."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __reduce__(self) -> tuple[Any, ...]:
        return (DeclaredRef, (self.name,))


class NotLoaded:
    """A pickled value this process could not unpickle (an object of a class the recorded script
    defines, read by ``hindlog resume`` or a notebook's ``hl.restore``): the checkpoint is
    intact, and ``resolve`` raises for this value only, where it is used."""

    __slots__ = ("error", "data")

    def __init__(self, error: str, data: bytes) -> None:
        self.error, self.data = error, data


class Unresolved:
    """A ``PickledWithRefs`` read back, with its checkpoint's tensors, waiting for ``resolve``."""

    __slots__ = ("data", "tensors")

    def __init__(self, data: bytes, tensors: list[Any]) -> None:
        self.data, self.tensors = data, tensors


#: Types that never hold a declared object or a large array: pickled as they are, at once.
_PLAIN = frozenset({str, bytes, int, float, bool, complex, type(None)})


def _persistent_id(pickler: Any, obj: Any) -> Any:
    """For the picklers of ``Freezer.pickle_with_refs``: a reference for a declared object, for
    the root object itself met again (a callback holding its trainer), or for a large array or
    tensor (appended to the checkpoint's tensors, once however often it is met); else None."""
    t = type(obj)
    if t in _PLAIN:
        return None
    key = id(obj)
    pid = pickler.pids.get(key)
    if pid is not None:
        return pid
    name = pickler.freezer.declared_ids.get(key)
    if name is not None:
        pid = ("declared", name)
    elif key == pickler.root_id:
        if not pickler.root_seen:
            pickler.root_seen = True  # the object being pickled: by value
            return None
        pid = ("root",)
    elif isinstance(obj, np.ndarray) and t in (np.ndarray, np.memmap) and not obj.dtype.hasobject \
            and obj.nbytes >= OWN_OBJECT_BYTES:
        pickler.tensors.append(pickler.freezer._freeze_array(obj))
        pid = ("tensor", len(pickler.tensors) - 1)
    else:
        torch = sys.modules.get("torch")
        # A view is pickled with its whole storage (a validation slice of the data set): the size
        # that counts is the storage's.
        if torch is None or t is not torch.Tensor or obj.requires_grad or obj.device.type != "cpu" \
                or obj.untyped_storage().nbytes() < OWN_OBJECT_BYTES:
            return None
        pickler.tensors.append(pickler.freezer._freeze_tensor(torch, obj))
        pid = ("tensor", len(pickler.tensors) - 1)
    pickler.pids[key] = pid  # met again (an alias), it is the same object after restore too
    pickler.keep.append(obj)  # ids stay unique while the pickle is made
    return pid


class _RefPickler(pickle.Pickler):
    persistent_id = _persistent_id


class _RefUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, tensors: list[Any], live: dict[str, Any], root: Any) -> None:
        super().__init__(file)
        self.tensors, self.live, self.root = tensors, live, root

    def persistent_load(self, pid: Any) -> Any:
        if pid[0] == "tensor":
            return self.tensors[pid[1]]
        if pid[0] == "root":
            return self.root
        if pid[1] not in self.live:
            import warnings

            warnings.warn(f"hindlog: a restored value refers to the checkpointed object {pid[1]!r}, which was not "
                          f"given: it gets None there (pass {pid[1]}=... too)", RuntimeWarning, stacklevel=2)
        return self.live.get(pid[1])


def resolve(value: Any, live: dict[str, Any], current: Any = None) -> Any:
    """A thawed value with its references made the live declared objects (by name), and
    references to itself ``current`` (the object it is restored into)."""
    if isinstance(value, Unresolved):
        return _load_with(_RefUnpickler(io.BytesIO(value.data), value.tensors, live, current))
    if isinstance(value, NotLoaded):
        return _loads(value.data)  # (raises as it did, unless the class is there now)
    if isinstance(value, DeclaredRef):
        return live.get(value.name)
    if type(value) is dict:
        return {k: resolve(v, live) for k, v in value.items()}
    if type(value) is list:
        return [resolve(v, live) for v in value]
    if type(value) is tuple:
        return tuple(resolve(v, live) for v in value)
    return value


@dataclass
class FrozenTensor:
    """A tensor or array copied at freeze time (or known by hash, when unchanged)."""

    framework: str  # 'torch' | 'numpy'
    dtype: str
    shape: tuple[int, ...]
    data: Any = None  # a CPU torch tensor or numpy array, until persisted
    event: Any = None  # CUDA event to wait for before reading data
    digest: str | None = None
    cache_entry: Any = None
    pool: Any = None
    pinned: bool = False
    #: The object name of ``data`` when freezing already computed it (NumPy arrays).
    content: str | None = None
    #: No copy: the tensor was unchanged since a copy taken earlier in the same iteration,
    #: and ``content`` names its live bytes; the persister checks the store holds that object.
    by_name: bool = False

    def release(self) -> None:
        """The copy has been written: hand its buffer back for the next checkpoint."""
        data, self.data, self.event = self.data, None, None
        if self.pool is not None and data is not None:
            self.pool.give(data, self.pinned)

    @property
    def nbytes(self) -> int:
        n = math.prod(self.shape)  # not np.prod: 5 µs a call, on every tensor of every checkpoint
        return n * _itemsize(self.framework, self.dtype)


def _itemsize(framework: str, dtype: str) -> int:
    if framework == "numpy":
        return np.dtype(dtype).itemsize
    import torch

    return torch.empty((), dtype=getattr(torch, dtype)).element_size()


def page_aligned(nbytes: int, populate: bool = False) -> np.ndarray:
    """A zeroed uint8 array of ``nbytes`` whose data starts on a page boundary; with
    ``populate``, its pages are mapped now rather than on first touch.

    Small pages: transparent huge pages made each pass over a snapshot cheaper (XXH3 and the
    ``O_DIRECT`` write, about 3 ms of CPU per 156 MB), but mapping them the first time in a
    process cost ten times more (0.38 s for 156 MB, charged before the first checkpoint;
    docs/checkpointing.md)."""
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    if populate:
        flags |= getattr(mmap, "MAP_POPULATE", 0)
    return np.frombuffer(mmap.mmap(-1, max(nbytes, 1), flags=flags), dtype=np.uint8)[:nbytes]


class BufferPool:
    """Host buffers reused from one checkpoint to the next.

    Copying into memory that is already mapped costs a fraction of copying into
    fresh memory (no page faults), and the copy is the only part of a
    checkpoint that blocks training. Small tensors are not pooled.
    """

    MIN_BYTES = 64 * 1024

    def __init__(self) -> None:
        self._free: dict[tuple[Any, ...], list[Any]] = {}

    def take(self, torch: Any, shape: tuple[int, ...], dtype: Any, pinned: bool = False) -> Any:
        free = self._free.get((shape, dtype, pinned))
        if free:
            try:
                return free.pop()
            except IndexError:
                pass
        if pinned:
            return torch.empty(shape, dtype=dtype, device="cpu", pin_memory=True)
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if nbytes < self.MIN_BYTES:
            return torch.empty(shape, dtype=dtype, device="cpu")
        # Page-aligned, so the persister can write it around the page cache (objects.py).
        return torch.from_numpy(page_aligned(nbytes)).view(dtype).reshape(shape)

    def reserve(self, torch: Any, specs: list[tuple[tuple[int, ...], Any]], copies: int = 1) -> None:
        """Map ``copies`` buffers for each CPU tensor of these shapes and dtypes ahead of the
        first checkpoint.

        Copying into fresh memory is dominated by page faults (156 MB: about 60 ms
        against 11 ms into mapped buffers; bench/bench_persist.py). Done by the
        persister while training runs, the first checkpoint blocks no longer than
        the later ones. Pinned buffers for GPU tensors are not reserved: pinning 1.2 GB
        took 0.8 s of CPU on an H100 machine, which the policy charged to ε, and a
        30-epoch run then had no budget left for any checkpoint."""
        wanted: dict[tuple[Any, ...], int] = {}
        for shape, dtype in specs:
            wanted[(shape, dtype, False)] = wanted.get((shape, dtype, False), 0) + copies
        for (shape, dtype, _pinned), count in wanted.items():
            nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            if nbytes < self.MIN_BYTES:
                continue
            free = self._free.setdefault((shape, dtype, False), [])
            for _ in range(count - len(free)):
                free.append(torch.from_numpy(page_aligned(nbytes, populate=True)).view(dtype).reshape(shape))

    def give(self, buf: Any, pinned: bool = False) -> None:
        if buf.numel() * buf.element_size() < self.MIN_BYTES:
            return
        self._free.setdefault((tuple(buf.shape), buf.dtype, pinned), []).append(buf)


class _CacheEntry:
    __slots__ = ("ref", "version", "frozen", "iteration", "generation")

    def __init__(self, ref: Any, version: int, frozen: FrozenTensor, iteration: int | None = None, generation: int = 0) -> None:
        self.ref, self.version, self.frozen, self.iteration = ref, version, frozen, iteration
        self.generation = generation


#: Arrays and tensors at least this large inside a pickled local value are stored as tensors
#: of their own (deduplicated across checkpoints), not inside its pickle.
OWN_OBJECT_BYTES = 64 * 1024

#: Below this size a tensor is copied rather than named by hash: the copy costs little, and
#: small copies are stored inline in the checkpoint's skeleton, not as objects of their own.
BY_NAME_MIN_BYTES = 1 << 20

#: Tensors named by hash in one checkpoint are hashed on several threads from this many bytes in all.
PARALLEL_HASH_BYTES = 8 << 20


class Freezer:
    """Copies state consistently; remembers tensors so unchanged ones are not copied again."""

    def __init__(self) -> None:
        self._cache: dict[int, _CacheEntry] = {}
        self.pool = BufferPool()
        #: The main-loop iteration being frozen, set by the checkpointer (see ``_by_name``).
        self.iteration: int | None = None
        #: Counts checkpoints (``begin``); 0 before the first, when nothing is deduplicated.
        self.generation = 0
        #: ``id`` of each declared object -> its name: in a local value, a reference to it is kept.
        self.declared_ids: dict[int, str] = {}
        #: Tensors ``_by_name`` chose in this checkpoint and their live bytes, hashed by ``end``.
        self._to_name: list[tuple[FrozenTensor, memoryview]] = []
        #: The checkpoint whose copies this one takes as they are (see ``begin``).
        self._reuse_generation: int | None = None
        self.named_by_hash = False

    def begin(self, iteration: int | None, reuse: int | None = None) -> None:
        """A new checkpoint starts, in main-loop ``iteration`` (None: no naming by hash).

        ``reuse``: the ``generation`` of an earlier checkpoint of this iteration after which
        nothing can have written a tensor without moving its version counter (the code in
        between only logged and read values, ``sourceinfo.read_only_tail``). A tensor copied or
        verified by that checkpoint, whose counter has not moved since, is taken as it is:
        neither copied again nor hashed."""
        self.iteration = iteration
        self.generation += 1
        self._reuse_generation = reuse
        self._to_name = []  # left by a checkpoint whose freezing failed before its end()

    def freeze(self, value: Any, tensors: list[FrozenTensor]) -> Any:
        """A skeleton of ``value`` safe to pickle later, with tensors appended to ``tensors``."""
        t = type(value)
        if value is None or t in _IMMUTABLE:
            return value
        if t is Pickled:  # already frozen (state_of pickles opaque objects): not pickled twice
            return value
        if t is dict or (isinstance(value, dict) and t.__module__ == "collections"):
            return {k: self.freeze(v, tensors) for k, v in value.items()}
        if t is list:
            return [self.freeze(v, tensors) for v in value]
        if t is tuple:
            return tuple(self.freeze(v, tensors) for v in value)
        if isinstance(value, np.ndarray) and not value.dtype.hasobject:
            tensors.append(self._freeze_array(value))
            return TensorRef(len(tensors) - 1)
        if isinstance(value, np.generic):
            return value.item() if value.dtype.kind != "V" else Pickled(_dumps(value))
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(value, torch.Tensor):
            tensors.append(self._freeze_tensor(torch, value))
            return TensorRef(len(tensors) - 1)
        if isinstance(value, _IMMUTABLE):
            return value
        if self.declared_ids:
            name = self.declared_ids.get(id(value))
            if name is not None:
                return DeclaredRef(name)
            return self.pickle_with_refs(value, tensors)
        return Pickled(_dumps(value))

    def pickle_with_refs(self, value: Any, tensors: list[FrozenTensor]) -> Pickled:
        """``value`` pickled with references for the declared objects and the large arrays and
        tensors in it (``PickledWithRefs``), or plainly if it holds none."""
        mark = len(tensors)

        def dump(kind: Any) -> tuple[bytes, Any]:
            return _dump_with(kind, value, freezer=self, tensors=tensors, pids={}, keep=[], root_id=id(value), root_seen=False)

        try:
            data, pickler = dump(_RefPickler)
        except Exception:
            del tensors[mark:]
            data, pickler = dump(_cloud_ref_pickler())  # the script's own functions, by value
        if not pickler.pids:
            return Pickled(data)  # no reference in it: an ordinary pickle
        return PickledWithRefs(data)

    def _freeze_array(self, value: np.ndarray) -> FrozenTensor:
        if value.nbytes < BufferPool.MIN_BYTES:
            return FrozenTensor("numpy", value.dtype.str, tuple(value.shape), np.array(value, copy=True, order="C"))
        # NumPy has no version counter: an array unchanged since the last checkpoint (a
        # validation set, frozen weights) is recognised by the hash of its content, which
        # costs a tenth of copying it, and is then neither copied nor written again.
        content = digest(memoryview(np.ascontiguousarray(value).reshape(-1).view(np.uint8)))
        key = id(value)
        entry = self._cache.get(key)
        if entry is not None and entry.ref() is value and entry.version == content and entry.frozen.shape == tuple(value.shape) \
                and entry.frozen.dtype == value.dtype.str:
            return entry.frozen
        copy = page_aligned(value.nbytes).view(value.dtype).reshape(value.shape)
        np.copyto(copy, value)
        frozen = FrozenTensor("numpy", value.dtype.str, tuple(value.shape), copy, content=content)
        try:
            ref = weakref.ref(value)
        except TypeError:
            return frozen
        entry = _CacheEntry(ref, content, frozen, self.iteration)
        frozen.cache_entry = entry
        self._cache[key] = entry
        return frozen

    def _freeze_tensor(self, torch: Any, t: Any) -> FrozenTensor:
        original = t
        key = id(original)
        dtype = str(t.dtype).replace("torch.", "")
        entry = self._cache.get(key)
        if entry is not None and entry.ref() is original:
            if entry.generation == self.generation and self.generation:
                # Twice in one checkpoint (tied weights, a parameter declared on its own too):
                # one copy. Nothing ran in between, and it must not be named by a hash of a
                # copy this same checkpoint has not written yet.
                return entry.frozen
            frozen = entry.frozen
            if (self._reuse_generation is not None and entry.generation == self._reuse_generation and entry.version == original._version
                    and frozen.shape == tuple(original.shape) and frozen.dtype == dtype):
                entry.generation = self.generation
                return frozen
            if _unchanged(torch, original, dtype, entry):
                entry.generation = self.generation  # verified for this checkpoint: the next may reuse it
                return frozen
            named = self._by_name(torch, original, dtype, entry)
            if named is not None:
                return named
        t = t.detach()
        shape = tuple(t.shape)
        if t.is_cuda:
            host = self.pool.take(torch, shape, t.dtype, pinned=True)
            host.copy_(t, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            frozen = FrozenTensor("torch", dtype, shape, host, event, pool=self.pool, pinned=True)
        elif t.device.type == "cpu":
            buf = self.pool.take(torch, shape, t.dtype)
            buf.copy_(t)
            frozen = FrozenTensor("torch", dtype, shape, buf, pool=self.pool)
        else:
            frozen = FrozenTensor("torch", dtype, shape, t.cpu())
        try:
            ref = weakref.ref(original)
        except TypeError:
            return frozen
        entry = _CacheEntry(ref, original._version, frozen, self.iteration, self.generation)
        frozen.cache_entry = entry
        self._cache[key] = entry
        if len(self._cache) > 100_000:
            self._cache = {k: e for k, e in self._cache.items() if e.ref() is not None}
        return frozen

    def _by_name(self, torch: Any, t: Any, dtype: str, entry: _CacheEntry) -> FrozenTensor | None:
        """A tensor copied earlier in this iteration (at a nested loop's exit), whose copy is not
        written yet and whose version counter has not moved since: named by the hash of its live
        bytes instead of copied again (the hash reads the bytes once; a copy reads and writes them).

        The persister writes the earlier copy first and finds an object of this name in the store
        only if the bytes are the same. If they are not (a write that skipped the version counter
        in between), nothing holds these bytes and it drops this checkpoint. Only within one
        iteration: across iterations such writes (BatchNorm's statistics at every training step)
        are the rule, and a dropped checkpoint would be the common case."""
        frozen = entry.frozen
        if self.iteration is None or entry.iteration != self.iteration or entry.version != t._version:
            return None
        if frozen.digest is not None or frozen.nbytes < BY_NAME_MIN_BYTES:
            return None
        if frozen.shape != tuple(t.shape) or frozen.dtype != dtype:
            return None
        flat = _live_bytes(torch, t)
        if flat is None:
            return None
        named = FrozenTensor("torch", dtype, frozen.shape, by_name=True)
        self._to_name.append((named, flat))
        return named

    def end(self) -> None:
        """Name the tensors of this checkpoint that ``_by_name`` chose, by hashing their live
        bytes: spread over the cores, which training leaves idle while it waits here (XXH3
        releases the GIL; 77 MB took 5.7 ms on one core and 2.7 ms on two)."""
        pending, self._to_name = self._to_name, []
        #: Whether this checkpoint named tensors by hash: the persister may drop it (and hand its
        #: copies back), so a later checkpoint must not take its copies as they are.
        self.named_by_hash = bool(pending)
        if len(pending) > 1 and sum(view.nbytes for _, view in pending) >= PARALLEL_HASH_BYTES:
            digests = list(_hash_pool().map(digest, [view for _, view in pending]))
        else:
            digests = [digest(view) for _, view in pending]
        for (named, _), name in zip(pending, digests):
            named.content = name


def _live_bytes(torch: Any, t: Any) -> memoryview | None:
    """A CPU tensor's bytes, in place (None where they are not one plain block)."""
    if t.device.type != "cpu" or t.layout != torch.strided or not t.is_contiguous() or t.is_conj() or t.is_neg():
        return None
    flat = t.detach().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def _live_digest(torch: Any, t: Any) -> str | None:
    """The object name of a CPU tensor's bytes, read in place (None where they are not one plain block)."""
    flat = _live_bytes(torch, t)
    return None if flat is None else digest(flat)


_HASH_POOL: Any = None


def _hash_pool() -> Any:
    global _HASH_POOL
    if _HASH_POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _HASH_POOL = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="hindlog-hash")
    return _HASH_POOL


def _unchanged(torch: Any, t: Any, dtype: str, entry: _CacheEntry) -> bool:
    """Whether tensor ``t`` still holds what ``entry`` froze, so that copy can be reused.

    An in-place write through autograd moves a tensor's version counter, but fused optimizers
    (``Adam(fused=True)``), BatchNorm's running statistics, and writes through ``.data`` or a
    NumPy view do not. So a counter that did not move proves nothing: the tensor's bytes are
    hashed (about half the time of copying them) and compared with the name of the earlier
    copy. While that copy is not written yet its name is unknown: within one iteration
    ``Freezer._by_name`` names the tensor by its hash instead, otherwise it is copied.
    GPU tensors are always copied: the copy is asynchronous, the GPU does it."""
    frozen = entry.frozen
    if entry.version != t._version or frozen.digest is None or frozen.shape != tuple(t.shape) or frozen.dtype != dtype:
        return False
    live = _live_digest(torch, t)
    return live is not None and live == frozen.digest


def tensor_specs(value: Any, torch: Any) -> list[tuple[tuple[int, ...], Any]]:
    """Shapes and dtypes of the CPU tensors in a state value (dicts, lists and tuples of them)."""
    out: list[tuple[tuple[int, ...], Any]] = []
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
        elif isinstance(v, torch.Tensor) and v.device.type == "cpu":
            out.append((tuple(v.shape), v.dtype))
    return out


def thaw(skeleton: Any, tensors: list[Any]) -> Any:
    """Rebuild a frozen value from its skeleton and loaded tensors."""
    if isinstance(skeleton, TensorRef):
        return tensors[skeleton.index]
    if isinstance(skeleton, PickledWithRefs):
        return Unresolved(skeleton.data, tensors)
    if isinstance(skeleton, Pickled):
        try:
            return _loads(skeleton.data)
        except Exception as e:  # noqa: BLE001 - its class is not in this process: see NotLoaded
            return NotLoaded(f"{type(e).__name__}: {e}", skeleton.data)
    if type(skeleton) is dict:
        return {k: thaw(v, tensors) for k, v in skeleton.items()}
    if type(skeleton) is list:
        return [thaw(v, tensors) for v in skeleton]
    if type(skeleton) is tuple:
        return tuple(thaw(v, tensors) for v in skeleton)
    return skeleton


# ----------------------------------------------------------------- what one checkpoint holds


#: The key under which a module's checkpoint holds what its state_dict leaves out, beside it.
MODULE_ATTRIBUTES = "__hindlog_attributes__"
_PLAIN = (int, float, bool, str, type(None))


def _plain_attributes(module: Any, modules: list[Any] | None = None) -> dict[str, dict[str, Any]]:
    """The plain attributes of ``module`` and of its submodules, by their index in
    ``module.modules()``: a ``Warmup`` layer of the project counting its calls, a dropout's ``p``
    the script sets to 0 after warm-up, a batch norm's ``momentum``."""
    out = {}
    for k, m in enumerate(module.modules() if modules is None else modules):
        attrs = {a: v for a, v in vars(m).items() if _plain_attribute(a, v)}
        if attrs:
            out[str(k)] = attrs
    return out


def _plain_attribute(name: str, value: Any) -> bool:
    return not name.startswith("_") and name != "training" and (
        type(value) in _PLAIN or (type(value) is tuple and all(type(x) in _PLAIN for x in value)))


def _changed_attributes(d: Declared, modules: list[Any]) -> dict[str, dict[str, Any]]:
    """The plain attributes of ``modules`` that differ from ``d.baseline`` now or did at an
    earlier checkpoint. Only the names found plain in a module's last scan are read (a full scan
    of every module's ``__dict__`` took 3 ms of blocked time for 240 modules, ten times this)."""
    if d.baseline is None:  # (declared by a hindlog that kept no baseline)
        d.baseline = _plain_attributes(d.obj, modules)
    if d.watched is None or len(d.watched) != len(modules):
        d.watched = [(-1, (), {}, ())] * len(modules)
    baseline, changed, watched = d.baseline, d.changed, d.watched
    for k, m in enumerate(modules):
        own = m.__dict__
        size, names, before, tensor_names = watched[k]
        if len(own) != size:
            names = tuple(a for a, v in own.items() if _plain_attribute(a, v))
            before = baseline.get(str(k), {})
            # (None too: ``self.last_att = None`` until a forward pass sets it.)
            tensor_names = tuple(a for a, v in own.items() if not a.startswith("_") and (v is None or _tensor_attribute(v)))
            watched[k] = (len(own), names, before, tensor_names)
        for a in names:
            was = before.get(a, _MISSING)
            if was is not own.get(a) and was != own.get(a) and _plain_attribute(a, own.get(a)):
                changed.add((str(k), a))
    out: dict[str, dict[str, Any]] = {}
    for k, a in changed:
        m = modules[int(k)] if int(k) < len(modules) else None
        v = m.__dict__.get(a, _MISSING) if m is not None else _MISSING
        if v is not _MISSING and _plain_attribute(a, v):
            out.setdefault(k, {})[a] = v
    return out


_MISSING = object()

#: The largest tensor held as a plain attribute of a module that a checkpoint keeps.
_TENSOR_ATTRIBUTE_BYTES = 64 << 20


def _tensor_attribute(value: Any) -> bool:
    """A dense tensor in memory of a size a checkpoint keeps (not a meta, nested, sparse or
    quantized one, which the freezer cannot copy)."""
    torch = sys.modules.get("torch")
    return torch is not None and type(value) is torch.Tensor and value.layout == torch.strided \
        and value.device.type in ("cpu", "cuda") and not value.is_quantized and not value.is_nested \
        and value.numel() * value.element_size() <= _TENSOR_ATTRIBUTE_BYTES


def _tensor_attributes(d: Declared | None, modules: list[Any]) -> dict[str, Any]:
    """Tensors the modules hold as plain attributes, neither parameters nor buffers, by
    "index:name": a router's bias a mixture of experts updates in ``forward``, the attention
    weights a layer keeps for inspection (``self.last_att = att.detach()``), the weight an old-style
    ``spectral_norm`` computes, a trained ``log_alpha``. The tensors themselves: the freezer
    copies an unchanged one only once (by identity and version)."""
    out = {}
    for k, m in enumerate(modules):
        names = d.watched[k][3] if d is not None and d.watched is not None and k < len(d.watched) else \
            tuple(a for a, v in vars(m).items() if not a.startswith("_") and (v is None or _tensor_attribute(v)))
        for a in names:
            v = m.__dict__.get(a)
            if _tensor_attribute(v):
                out[f"{k}:{a}"] = v
    return out


def _module_attributes(module: Any, saved: dict[str, Any], d: Declared | None = None) -> dict[str, Any]:
    """What ``module``'s ``state_dict`` (``saved``, taken with ``keep_vars``) leaves out: the
    plain attributes of it and of its submodules that the script changed since it declared the
    model (``model.steps_seen += 1``, ``model.drop.p = 0.0``; not the settings a wrapper keeps,
    DistributedDataParallel's device or bucket size, which are the process's, not training
    state; once changed, always kept), the training flag of each module (``model.eval()`` in a
    validation loop), which parameters train (``requires_grad``), and the buffers registered
    ``persistent=False``. Kept cheap: it runs in every checkpoint's blocked time (about 0.3 ms
    for 240 modules, on top of the state_dict's 0.3 ms)."""
    modules = list(module.modules())
    buffers = {}
    for k, m in enumerate(modules):
        for name in getattr(m, "_non_persistent_buffers_set", ()):
            b = m._buffers.get(name)
            if b is not None:
                buffers[f"{k}:{name}"] = b
    import torch

    attributes = _plain_attributes(module, modules) if d is None else _changed_attributes(d, modules)
    return {
        "attributes": attributes,
        "tensors": _tensor_attributes(d, modules),
        "training": [m.training for m in modules],
        "trainable": {k: v.requires_grad for k, v in saved.items() if isinstance(v, torch.nn.Parameter)},
        "buffers": buffers,
    }


def _set_module_attributes(module: Any, extra: dict[str, Any], modes: bool = True) -> None:
    if "trainable" not in extra:
        return  # (the form of a development version's checkpoints: not restored)
    modules = list(module.modules())
    for k, attrs in extra["attributes"].items():
        if int(k) < len(modules):
            for a, v in attrs.items():
                setattr(modules[int(k)], a, v)
    if modes and len(modules) == len(extra["training"]):
        for m, training in zip(modules, extra["training"]):
            m.training = training
    trainable = extra["trainable"]
    for name, p in module.named_parameters():
        if name in trainable and p.requires_grad != trainable[name]:
            p.requires_grad_(trainable[name])
    for key, value in (extra.get("tensors") or {}).items():
        k, name = key.split(":", 1)
        if int(k) < len(modules):
            m = modules[int(k)]
            current = m.__dict__.get(name)
            if _tensor_attribute(current) and current.shape == value.shape and current.dtype == value.dtype:
                with _no_grad():
                    current.copy_(value)  # (in place: an optimizer may hold it, ``log_alpha``)
            else:
                # On the device of the module's own tensors (a mask cached in forward, None here).
                device = next((t.device for t in itertools.chain(m.parameters(recurse=False), m.buffers(recurse=False))), None)
                m.__dict__[name] = value.clone() if device is None else value.to(device, copy=True)
    if extra["buffers"]:
        import torch

        with torch.no_grad():
            for key, value in extra["buffers"].items():
                k, name = key.split(":", 1)
                b = modules[int(k)]._buffers.get(name) if int(k) < len(modules) else None
                if b is not None and b.shape == value.shape:
                    b.copy_(value)


def state_of(d: Declared) -> Any:
    """The value to freeze for a declared object."""
    if d.kind == "module":
        # Not the gradients: they double the copy; replay runs the loops before code that reads them.
        state = d.obj.state_dict(keep_vars=True)
        state[MODULE_ATTRIBUTES] = _module_attributes(d.obj, state, d)
        return state
    if d.kind == "stateful":
        return d.obj.state_dict()
    if d.kind == "generator":
        return d.obj.get_state()
    if d.kind in ("tensor", "array"):
        return d.obj
    return Pickled(_dumps(d.obj))


def rng_state() -> dict[str, Any]:
    """The state of every global random generator in use."""
    out: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state()}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = torch.get_rng_state()
        try:
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                out["cuda"] = torch.cuda.get_rng_state_all()
        except Exception:
            pass
    return out


#: The global random generators' states when hindlog was imported, pickled: what an unseeded
#: script drew its model's initial weights and fixed noise from, before the main loop.
INITIAL_GENERATORS: bytes | None = None
INITIAL_GENERATORS_HAVE_TORCH = False


def note_initial_generators() -> None:
    global INITIAL_GENERATORS, INITIAL_GENERATORS_HAVE_TORCH
    try:
        states: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state()}
        torch = sys.modules.get("torch")
        if torch is not None:
            states["torch"] = torch.get_rng_state().numpy()
        INITIAL_GENERATORS = pickle.dumps(states)
        INITIAL_GENERATORS_HAVE_TORCH = torch is not None
    except Exception:  # noqa: BLE001 - replay and resume then start from fresh generators
        INITIAL_GENERATORS = None


def seed_torch_when_imported(seed: int) -> None:
    """In a replay or resume worker whose script imports PyTorch after hindlog: give PyTorch's
    generator, as soon as PyTorch is imported, the seed the record's drew at its import (what
    an unseeded script's model was initialised from)."""
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)
        return
    import importlib.abc
    import importlib.util

    class SeedOnImport(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
            if name != "torch":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec("torch")
            if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
                return spec
            run_module = spec.loader.exec_module

            def exec_module(module: Any) -> None:
                run_module(module)
                try:
                    module.manual_seed(seed)
                except Exception:  # noqa: BLE001 - fresh generator then
                    pass

            spec.loader.exec_module = exec_module  # type: ignore[method-assign]
            return spec

    sys.meta_path.insert(0, SeedOnImport())


def set_initial_generators(data: bytes) -> None:
    """In a replay or resume worker, at hindlog's import: the generators as the record's were
    at that point (a seeded script reseeds them next, as it did)."""
    states = pickle.loads(data)
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch = sys.modules.get("torch")
    if torch is not None and "torch" in states:
        torch.set_rng_state(torch.from_numpy(states["torch"]))


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    np.random.set_state(_as_tuple(state["numpy"]))
    torch = sys.modules.get("torch")
    if torch is not None and "torch" in state:
        torch.set_rng_state(_as_cpu_byte_tensor(torch, state["torch"]))
        if "cuda" in state:
            torch.cuda.set_rng_state_all([_as_cpu_byte_tensor(torch, s) for s in state["cuda"]])


def _as_tuple(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_as_tuple(v) for v in value)
    return value


def _as_cpu_byte_tensor(torch: Any, value: Any) -> Any:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    return value.to(dtype=torch.uint8, device="cpu")


def load_into(d: Declared, value: Any, modes: bool = True) -> Any:
    """Load a thawed state into a declared object, in place where possible. Returns the object.
    ``modes``: a model's training flags too (see ``restore.apply``)."""
    obj = d.obj
    torch = sys.modules.get("torch")
    if d.kind == "stateful" and torch is not None and isinstance(obj, torch.optim.Optimizer):
        _load_optimizer(torch, obj, value)
    elif d.kind == "module":
        attributes = value.get(MODULE_ATTRIBUTES)  # (none in an older hindlog's checkpoints)
        _load_module(obj, {k: v for k, v in value.items() if k != MODULE_ATTRIBUTES} if attributes is not None else value)
        if attributes:
            _set_module_attributes(obj, attributes, modes)
    elif d.kind == "stateful":
        obj.load_state_dict(value)
    elif d.kind == "generator":
        obj.set_state(value)
    elif d.kind == "tensor":
        with _no_grad():
            obj.copy_(value)
    elif d.kind == "array":
        obj[...] = value
    else:
        return replace_in_place(obj, value)
    return obj


def _load_module(module: Any, saved: dict[str, Any]) -> None:
    """``module.load_state_dict(saved)``, leaving out the tensors that hold the saved values
    already. A copy into a parameter bumps its version counter even when nothing changes, and
    a graph built before the restore (a rollout loop's log-probabilities, run in a replay
    before a skipped loop that did not touch the model) could no longer be differentiated."""
    import torch

    try:
        current = module.state_dict(keep_vars=True)
        if current.keys() != saved.keys():
            raise LookupError
        changed = {}
        for k, v in saved.items():
            t = current[k]
            # (The saved tensors are in host memory; a model on a GPU compares on its device.)
            if not (isinstance(t, torch.Tensor) and isinstance(v, torch.Tensor) and t.shape == v.shape
                    and t.dtype == v.dtype and torch.equal(t.detach(), v.to(t.device))):
                changed[k] = v
    except Exception:  # noqa: BLE001 - load the whole state, as load_state_dict does
        module.load_state_dict(saved)
        return
    if len(changed) == len(saved):
        module.load_state_dict(saved)
    elif changed:
        module.load_state_dict(changed, strict=False)


def is_optimizer(d: Declared) -> bool:
    torch = sys.modules.get("torch")
    return d.kind == "stateful" and torch is not None and isinstance(d.obj, torch.optim.Optimizer)


def optimizer_groups_fit(d: Declared, value: Any) -> bool:
    """Whether a checkpoint's ``value`` of the declared ``d`` has the parameter groups (and their
    sizes) of the live optimizer: a run that adds one as it trains (unfreezing a backbone) has
    checkpoints a process that has not added it yet cannot load. True for anything else."""
    if not is_optimizer(d) or not isinstance(value, dict):
        return True
    held = [len(g.get("params", [])) for g in value.get("param_groups", [])]
    return held == [len(g["params"]) for g in d.obj.param_groups]


def _load_optimizer(torch: Any, opt: Any, value: Any) -> None:
    """``opt.load_state_dict(value)``, then the loaded values copied into the state tensors
    the optimizer already had, which stay in place.

    ``load_state_dict`` keeps the loaded tensors themselves as the new state, and a
    checkpoint's tensors are private maps of its files: the next step would write every
    page of them, a page fault each (on the 156 MB fine-tuning state, more than the three
    optimizer steps a restore stood in for). The memory the optimizer already used is
    mapped, and keeping it also keeps references to it valid."""
    held = [len(g.get("params", [])) for g in value.get("param_groups", [])] if isinstance(value, dict) else None
    live = [len(g["params"]) for g in opt.param_groups]
    if held is not None and held != live:  # (replay starts from an earlier checkpoint: optimizer_groups_fit)
        from .errors import CheckpointError

        raise CheckpointError(
            f"the checkpoint's optimizer has {len(held)} parameter group(s) of {held} parameters, the script's has "
            f"{len(live)} of {live}: the run changed its groups while it trained (opt.add_param_group when unfreezing "
            "a backbone), and a resume that starts after the change has not made it yet: such a run cannot be resumed "
            "past the change")
    old: dict[tuple[int, Any], Any] = {}
    for param, st in opt.state.items():
        for key, v in st.items():
            if isinstance(v, torch.Tensor):
                old[(id(param), key)] = v
    opt.load_state_dict(value)
    if not old:
        return
    with torch.no_grad():
        for param, st in opt.state.items():
            for key, v in list(st.items()):
                prev = old.get((id(param), key))
                if (prev is not None and prev is not v and isinstance(v, torch.Tensor) and prev.shape == v.shape
                        and prev.dtype == v.dtype and prev.device == v.device and prev.layout == v.layout):
                    prev.copy_(v)
                    st[key] = prev


def _no_grad() -> Any:
    torch = sys.modules.get("torch")
    return torch.no_grad() if torch is not None else _Null()


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _element_in_place(current: Any, new: Any) -> Any:
    """An element of a restored list or dict: a tensor or array of the same shape and type gets
    the new values in place, and the objects that share it see them too (``ema_params =
    list(ema.parameters())``: restoring the list restores ``ema``); anything else is replaced."""
    if isinstance(current, np.ndarray) and isinstance(new, np.ndarray):
        if current.shape == new.shape and current.dtype == new.dtype and current.flags.writeable:
            current[...] = new
            return current
        return new
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(current, torch.Tensor) and isinstance(new, torch.Tensor) \
            and current.shape == new.shape and current.dtype == new.dtype and current.layout == new.layout:
        with torch.no_grad():
            current.copy_(new)
        return current
    return new


def replace_in_place(current: Any, new: Any) -> Any:
    """Make ``current`` equal ``new`` without changing its identity where its type allows."""
    if current is new:
        return current
    if isinstance(current, dict) and isinstance(new, dict):
        values = {k: _element_in_place(current[k], v) if k in current else v for k, v in new.items()}
        current.clear()
        current.update(values)
        return current
    if isinstance(current, list) and isinstance(new, list):
        current[:] = [_element_in_place(c, n) for c, n in zip(current, new)] if len(current) == len(new) else new
        return current
    if isinstance(current, set) and isinstance(new, set):
        current.clear()
        current.update(new)
        return current
    if isinstance(current, collections.deque) and isinstance(new, collections.deque) and current.maxlen == new.maxlen:
        current.clear()  # (a replay buffer: the loops that fill it hold the same deque)
        current.extend(new)
        return current
    if isinstance(current, bytearray) and isinstance(new, (bytes, bytearray)):
        current[:] = new
        return current
    if isinstance(current, np.ndarray) and isinstance(new, np.ndarray) and current.shape == new.shape:
        current[...] = new
        return current
    if same_class(type(current), type(new)) and hasattr(current, "__dict__") and not isinstance(current, type):
        current.__dict__.clear()
        current.__dict__.update(new.__dict__)
        return current
    return new


# ----------------------------------------------------------------- frame locals


def capturable_locals(frame: types.FrameType, names: frozenset[str] | set[str], exclude_ids: set[int]) -> dict[str, Any]:
    """The values of ``names`` in ``frame`` that a checkpoint can hold."""
    f_locals = frame.f_locals
    own = frame_variables(frame)
    out = {}
    for name in names:
        if name.endswith(CLOSURE_SUFFIX):
            cells = closure_cells(f_locals.get(name[: -len(CLOSURE_SUFFIX)], frame.f_globals.get(name[: -len(CLOSURE_SUFFIX)])))
            if cells:
                out[name] = cells
            continue
        if name in f_locals:
            value = f_locals[name]
        elif own is not None and name not in own and name in frame.f_globals:
            value = frame.f_globals[name]  # ``global step`` in the function, or in one it calls
        else:
            continue
        if id(value) in exclude_ids or isinstance(value, (types.ModuleType, types.FunctionType, type, types.BuiltinFunctionType, types.MethodType)):
            continue
        if isinstance(value, io.IOBase) and value.closed:
            continue  # (``with open(...) as f`` in the loop: a closed file holds nothing to restore)
        out[name] = value
    return out


def set_frame_locals(frame: types.FrameType, values: dict[str, Any], live: dict[str, Any] | None = None) -> None:
    """Bind ``values`` in a running frame (module globals, or a function's fast locals), their
    references resolved to the ``live`` declared objects and to the values they replace."""
    if not values:
        return
    f_locals = frame.f_locals
    closures = {k: v for k, v in values.items() if k.endswith(CLOSURE_SUFFIX)}
    for k, v in closures.items():
        base = k[: -len(CLOSURE_SUFFIX)]
        _set_closure_cells(f_locals.get(base, frame.f_globals.get(base)), resolve(v, live or {}))
    if closures:
        values = {k: v for k, v in values.items() if k not in closures}
    if frame.f_code.co_flags & 0x0002 == 0 and f_locals is frame.f_globals:  # module level
        for k, v in values.items():
            current = frame.f_globals.get(k)
            frame.f_globals[k] = _restore_value(current, resolve(v, live or {}, current))
        return
    own = frame_variables(frame)
    for k, v in values.items():
        if own is not None and k not in own:  # a global the loop rebinds
            current = frame.f_globals.get(k)
            frame.f_globals[k] = _restore_value(current, resolve(v, live or {}, current))
            continue
        current = f_locals.get(k)
        f_locals[k] = _restore_value(current, resolve(v, live or {}, current))
    if sys.version_info < (3, 13):
        ctypes.pythonapi.PyFrame_LocalsToFast(ctypes.py_object(frame), ctypes.c_int(0))


#: The suffix of a checkpoint's "local" that holds the cells of a closure the loop calls.
CLOSURE_SUFFIX = "()"


def closure_cells(fn: Any) -> dict[str, Any]:
    """The plain-data cells of a closure (``count`` of ``bump = make_counter()``), by name; not
    those holding functions, modules or the like, which are its code, not its state."""
    if not isinstance(fn, types.FunctionType) or not fn.__closure__:
        return {}
    out = {}
    for name, cell in zip(fn.__code__.co_freevars, fn.__closure__):
        try:
            value = cell.cell_contents
        except ValueError:  # not bound yet
            continue
        if _scalar(value) or isinstance(value, np.ndarray) or (
                isinstance(value, (list, dict, set, tuple, collections.deque)) and len(value) <= 10_000
                and all(_scalar(x) for x in (value.values() if isinstance(value, dict) else value))):
            out[name] = value  # (not tensors, models or data sets: references the closure uses, not its state)
    return out


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (int, float, str, bool, bytes, np.generic))


def _set_closure_cells(fn: Any, cells: dict[str, Any]) -> None:
    if not isinstance(fn, types.FunctionType) or not fn.__closure__:
        return
    by_name = dict(zip(fn.__code__.co_freevars, fn.__closure__))
    for name, value in cells.items():
        cell = by_name.get(name)
        if cell is not None:
            try:
                current = cell.cell_contents
            except ValueError:
                current = None
            cell.cell_contents = _restore_value(current, value)


def own_code(fn: types.FunctionType) -> bool:
    """Whether ``fn`` is the project's (not Python's or an installed package's)."""
    path = fn.__code__.co_filename
    return "site-packages" not in path and "dist-packages" not in path and not path.startswith("<") \
        and (fn.__module__ or "").split(".")[0] not in sys.stdlib_module_names and fn.__module__ != "hindlog" \
        and not (fn.__module__ or "").startswith("hindlog.")


def frame_variables(frame: types.FrameType) -> frozenset[str] | None:
    """The names a function frame binds itself (its locals and closure cells); None for module
    level, where every variable is a global."""
    code = frame.f_code
    if code.co_flags & 0x0002 == 0 and frame.f_locals is frame.f_globals:
        return None
    return frozenset(code.co_varnames + code.co_cellvars + code.co_freevars)


def _restore_value(current: Any, new: Any) -> Any:
    # Containers, and objects of the script's own class (a trainer's ``self``), are restored in
    # place: the frames further up the stack that hold them see the restored state too. (Not a
    # tensor: a local the loop rebinds, such as ``loss``, may be the one the code after it kept
    # in a list in the previous iteration.)
    if current is not None and same_class(type(current), type(new)) and (
            type(current) in (list, dict, set, collections.deque) or own_class(type(current))):
        return replace_in_place(current, new)
    return new


def is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def same_class(a: type, b: type) -> bool:
    """``a is b``, or ``b`` a copy of the script's class ``a`` that an older hindlog's checkpoint
    held by value (cloudpickle's way with ``__main__``): an object of it is restored in place."""
    return a is b or (a.__module__ == b.__module__ == "__main__" and a.__qualname__ == b.__qualname__)


@functools.lru_cache(maxsize=4096)
def own_class(cls: type) -> bool:
    """Whether ``cls`` is defined by the user's code, not by Python or an installed package."""
    if cls.__module__ == "__main__":
        return True
    path = getattr(sys.modules.get(cls.__module__), "__file__", None) or ""
    top = cls.__module__.split(".")[0]
    return bool(path) and top not in sys.stdlib_module_names and top != "hindlog" \
        and "site-packages" not in path and "dist-packages" not in path


_CLOUD_REF_PICKLER: Any = None


def _cloud_ref_pickler() -> Any:
    global _CLOUD_REF_PICKLER
    if _CLOUD_REF_PICKLER is None:
        import cloudpickle

        def reducer_override(self: Any, obj: Any) -> Any:
            # cloudpickle pickles the script's own classes and functions by value: a replay or
            # resume would unpickle a copy of ``Trainer`` (an object that then cannot be restored
            # in place: its class is another) and of its functions as recorded (without the
            # statements added since). Those the script's module names are pickled by name, as
            # the standard pickler does; lambdas and nested ones still go by value.
            if isinstance(obj, (type, types.FunctionType)) and _named_in_main(obj):
                return NotImplemented
            return cloudpickle.CloudPickler.reducer_override(self, obj)

        _CLOUD_REF_PICKLER = type("_CloudRefPickler", (cloudpickle.CloudPickler,),
                                  {"persistent_id": _persistent_id, "reducer_override": reducer_override})
    return _CLOUD_REF_PICKLER


def _named_in_main(obj: Any) -> bool:
    """Whether ``obj`` (a class or function) is what its qualified name names in ``__main__``."""
    if getattr(obj, "__module__", None) != "__main__":
        return False
    found: Any = sys.modules.get("__main__")
    for part in getattr(obj, "__qualname__", "<").split("."):
        found = getattr(found, part, None)
    return found is obj


def dumps_skeleton(skeleton: Any) -> bytes:
    buf = io.BytesIO()
    pickle.dump(skeleton, buf, protocol=pickle.HIGHEST_PROTOCOL)
    return buf.getvalue()


@dataclass
class Frozen:
    """A checkpoint in memory: what the persister writes."""

    iteration: int
    block: int
    loop: str | None
    skeleton: dict[str, Any]
    tensors: list[FrozenTensor] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)
