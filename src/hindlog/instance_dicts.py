"""Keep attribute access fast on the objects that checkpoints pickle and restores unpickle.

CPython 3.11 and 3.12 keep the attributes of an ordinary object (an instance of a class
without ``__slots__``) in a small array inside the object, and the interpreter's attribute
caches read and write that array directly. The first time anything asks for the object's
``__dict__``, as pickling does to get its state and unpickling does to set it, the
attributes move for good into a "split" dictionary that those caches do not handle: every
``self.w`` of that object is then two to three times slower (a NumPy model trained with
small batches ran 6.5% slower after its checkpoints, which no overhead budget saw).

Rebuilding such a dictionary in place as an ordinary one gives back most of that speed
(that model: 2.3% slower, not 6.5%; an ordinary dictionary is a little slower than the
inline array, and nothing brings that back), keeps its identity and its content, and is invisible to the program. It is done
for every object a pickle of the training state reached (read from the pickler's memo)
and every object an unpickle made, whose attributes have moved. Python 3.10 has no inline
attributes; on 3.13 the slowdown is smaller (about 1.5x) and rebuilding does not remove it:
there this module does nothing.
"""

from __future__ import annotations

import gc
import operator
import sys
import types
from collections.abc import Iterable
from functools import partial
from typing import Any

#: Py_TPFLAGS_MANAGED_DICT: the type keeps its instances' attributes the way described above.
_MANAGED_DICT = 1 << 4
ACTIVE = sys.version_info[:2] in ((3, 11), (3, 12))
_MISSING = object()
#: Per type: the descriptor that gives its instances' own ``__dict__``, or None (a class that
#: overrides ``__dict__``, or one without it).
_dict_slots: dict[type, Any] = {}


def _dict_slot(cls: type) -> Any:
    for klass in cls.__mro__:
        slot = klass.__dict__.get("__dict__")
        if slot is not None:
            return slot if type(slot) is types.GetSetDescriptorType else None
    return None


def _rebuild(d: dict[Any, Any]) -> None:
    items: dict[Any, Any] = {}
    # Copied, cleared and refilled within one C-level call: no bytecode runs in between, so
    # no other thread runs either. None sees the object without its attributes, and none
    # sets an attribute between the copy and the refill (it would be lost). Nothing is freed
    # there (``items`` holds every key and value), so no finalizer runs.
    any(map(operator.call, (partial(items.update, d), d.clear, partial(d.update, items))))  # type: ignore[attr-defined]


def repack(objects: Iterable[Any]) -> None:
    """Give the ordinary objects among ``objects`` whose attributes sit in a split dictionary an
    ordinary dictionary again (the same one, refilled)."""
    if not ACTIVE:
        return
    slots = _dict_slots
    for obj in objects:
        cls = type(obj)
        if not cls.__flags__ & _MANAGED_DICT:
            continue
        slot = slots.get(cls, _MISSING)
        if slot is _MISSING:
            slot = slots[cls] = _dict_slot(cls)
        if slot is None:
            continue
        # Attributes still inline are left so: asking for the dict would move them. An object
        # holds a dict among what it references once its attributes have moved into one.
        if not any(type(r) is dict for r in gc.get_referents(obj)):
            continue
        d = slot.__get__(obj, cls)
        # Only string keys, as every split dictionary has: no key's own __hash__ or __eq__ (which
        # could let another thread run) is called while it is rebuilt.
        if type(d) is dict and d and set(map(type, d)) == {str}:
            _rebuild(d)


def repack_pickled(pickler: Any) -> None:
    """``repack`` the objects a finished ``pickle.Pickler`` reached."""
    if ACTIVE:
        repack(obj for _, obj in pickler.memo.copy().values())


def repack_unpickled(unpickler: Any) -> None:
    """``repack`` the objects a finished ``pickle.Unpickler`` made."""
    if ACTIVE:
        repack(unpickler.memo.copy().values())
