"""Loading a recorded checkpoint back into live objects: ``hl.restore`` and the shared apply step."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from . import catalog
from .checkpoint import ITERATION_END, Loaded, checkpoint_rows, latest_readable, read_checkpoint
from .errors import CheckpointError, CorruptObject
from .state import MODULE_ATTRIBUTES, Declared, declare, load_into, resolve, set_frame_locals, set_rng_state
from .store import Store


@dataclass
class Restored:
    """What ``hl.restore`` loaded."""

    run_id: str
    iteration: int
    #: The declared objects, restored (in place where their type allows; immutable ones are new objects).
    objects: dict[str, Any]
    #: The loop-carried local values the checkpoint holds (e.g. ``best_acc``).
    locals: dict[str, Any]
    #: Locals that cannot be loaded in this process, with why (an object of a class defined in
    #: the training script, which a notebook does not have); the objects asked for are restored.
    locals_not_loaded: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        # Names, not values: a restored replay buffer or a model printed whole filled a notebook.
        return (f"Restored(run_id={self.run_id!r}, iteration={self.iteration}, objects={list(self.objects)}, "
                f"locals={list(self.locals)}, locals_not_loaded={list(self.locals_not_loaded)})")


def _live(declared: dict[str, Declared]) -> dict[str, Any]:
    """The objects restored into, by name: what references in restored values resolve to."""
    return {name: d.held for name, d in declared.items()}


def apply(
    loaded: Loaded, declared: dict[str, Declared], frame: FrameType | None = None, rng: bool = True, strict: bool = True,
    modes: bool = True,
) -> dict[str, Any]:
    """Load a checkpoint into declared objects, the random generators and (optionally) a frame's locals.

    With ``strict=False`` (replay and resume), objects declared now but not when the
    checkpoint was taken are left as they are. ``modes``: set models' training flags as the
    run had them (replay and resume; not ``hl.restore``, whose caller chose them)."""
    missing = [n for n in declared if n not in loaded.objects]
    if missing and strict:
        raise CheckpointError(
            f"the checkpoint of iteration {loaded.iteration} holds no state for {', '.join(missing)} "
            f"(it holds: {', '.join(loaded.objects) or 'nothing'})"
        )
    live = _live(declared)
    out = {name: load_into(d, resolve(loaded.objects[name], live, d.held), modes=modes)
           for name, d in declared.items() if name in loaded.objects}
    if rng:
        set_rng_state(loaded.rng)
    if frame is not None:
        set_frame_locals(frame, loaded.locals, live)
    return out


def restore(
    run: str = "latest",
    iteration: int | None = None,
    store: str | os.PathLike[str] | Store | None = None,
    rng: Any = False,
    **objects: Any,
) -> Restored:
    """Load run ``run``'s checkpoint at the end of ``iteration`` (default: the latest) into ``objects``.

    ``hl.restore("latest", model=net, opt=opt)`` restores, in place, the model and
    optimizer as they were at the end of the latest checkpointed iteration. Pass
    ``rng=True`` to restore the random generators too. A corrupt checkpoint is
    detected by its hash; without an explicit iteration an earlier one is used.
    A random generator object declared as ``rng`` (``hl.checkpoints(rng=rng)``) is restored
    with ``rng=rng``: any value but True or False names an object.
    """
    if not isinstance(rng, bool):
        objects["rng"], rng = rng, False
    if not objects:
        raise TypeError("hl.restore needs the objects to load into, e.g. hl.restore('latest', model=net, opt=opt)")
    if iteration is not None and not isinstance(iteration, int):
        if isinstance(iteration, str) and iteration.strip().lstrip("-").isdigit():
            iteration = int(iteration)
        else:
            raise TypeError(f"hl.restore's iteration is a main-loop iteration number, not {iteration!r}")
    st = store if isinstance(store, Store) else Store.for_project(store=store)
    if not st.exists():  # nothing to restore, and no store to create
        raise CheckpointError(f"there is no hindlog store at {st.path}; no run can be restored")
    conn = st.connect()
    try:
        run_row = catalog.get_run(conn, run)
        rows = checkpoint_rows(conn, run_row["id"])
    finally:
        conn.close()
    if not rows:
        if (run_row.get("info") or {}).get("checkpoints_dropped_by_gc"):
            raise CheckpointError(f"run {run_row['run_id']} has no checkpoints: `hindlog gc --keep-last` dropped them "
                                  "(its logs are kept)")
        raise CheckpointError(f"run {run_row['run_id']} has no checkpoints (the run may have been too short for "
                              "its overhead budget, ε; `hindlog show` says)")
    if iteration is None:
        loaded = latest_readable(st.objects, rows)
        if loaded is None:
            if not any(ITERATION_END in blocks for blocks in rows.values()):
                raise CheckpointError(f"run {run_row['run_id']} has no checkpoint at the end of an iteration to restore")
            raise CheckpointError(f"none of the checkpoints of run {run_row['run_id']} can be read")
    else:
        entry = rows.get(iteration, {}).get(ITERATION_END)
        if entry is None:
            have = ", ".join(str(i) for i in sorted(rows) if ITERATION_END in rows[i]) or "none at an iteration's end"
            raise CheckpointError(f"run {run_row['run_id']} has no checkpoint at iteration {iteration} (it has: {have})")
        try:
            loaded = read_checkpoint(st.objects, entry[1])
        except CorruptObject as e:
            raise CheckpointError(f"the checkpoint of run {run_row['run_id']} at iteration {iteration} is damaged: {e}") from None
    declared = {name: declare(name, obj) for name, obj in objects.items()}
    where = f"run {run_row['run_id']}'s checkpoint of iteration {loaded.iteration}"
    # Every object is checked before any is changed: a restore that fails leaves them all as they were.
    for name, d in declared.items():
        if name in loaded.objects:
            problem = mismatch(d, loaded.objects[name])
            if problem:
                raise CheckpointError(f"cannot restore {name} from {where}: {problem}; nothing was restored")
    try:
        restored = apply(loaded, declared, rng=rng, modes=False)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"restoring from {where} failed ({type(e).__name__}: {e}); the objects passed may be "
                              "partly restored") from e
    values, not_loaded = _resolve_locals(loaded.locals, _live(declared))
    if not_loaded:
        warnings.warn(
            f"hindlog: restored {', '.join(objects)}; the checkpoint's local value(s) {', '.join(not_loaded)} cannot be "
            f"loaded here ({next(iter(not_loaded.values()))}) and are left out of .locals",
            RuntimeWarning,
            stacklevel=2,
        )
    return Restored(run_row["run_id"], loaded.iteration, restored, values, not_loaded)


def _type_name(value: Any) -> str:
    t = type(value)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _shape_and_dtype(value: Any) -> tuple[tuple[int, ...], str]:
    return tuple(getattr(value, "shape", ())), str(getattr(value, "dtype", ""))


def mismatch(d: Declared, value: Any) -> str | None:
    """Why the checkpoint's ``value`` cannot be loaded into the declared object, or None.

    What a user hands ``hl.restore`` may not be what the run checkpointed: another model's
    shape, an optimizer of another class, an array of another dtype. Loading it would fail
    half-way or, for arrays and plain objects, silently broadcast or do nothing."""
    obj = d.held
    if d.kind in ("tensor", "array"):
        if not hasattr(value, "shape") or type(value).__module__.split(".")[0] != type(obj).__module__.split(".")[0]:
            return f"the checkpoint holds a {_type_name(value)}, not a {_type_name(obj)}"
        held, given = _shape_and_dtype(value), _shape_and_dtype(obj)
        if held != given:
            return f"the checkpoint holds shape {held[0]} of {held[1]}, the object passed is {given[0]} of {given[1]}"
        return None
    if d.kind == "module" and not isinstance(value, dict):
        return f"the checkpoint holds a {_type_name(value)}, not the state of a {_type_name(obj)}"
    if d.kind == "stateful":
        current = d.obj.state_dict()
        if not isinstance(current, dict) or not isinstance(value, dict):
            if type(current) is not type(value):
                return f"the checkpoint holds a {_type_name(value)}, not the state of a {_type_name(obj)}"
            return None
    if d.kind == "module":
        current = obj.state_dict()
        value = {k: v for k, v in value.items() if k != MODULE_ATTRIBUTES}
        missing, unexpected = [k for k in current if k not in value], [k for k in value if k not in current]
        if missing or unexpected:
            return (f"the checkpoint's state has {len(value)} entries, the model passed {len(current)}"
                    + (f"; not in the checkpoint: {', '.join(missing[:3])}" if missing else "")
                    + (f"; not in the model: {', '.join(unexpected[:3])}" if unexpected else ""))
        for k, v in current.items():
            if _shape_and_dtype(v)[0] != _shape_and_dtype(value[k])[0]:
                return f"{k} has shape {_shape_and_dtype(value[k])[0]} in the checkpoint, {_shape_and_dtype(v)[0]} in the model passed"
        return None
    if d.kind == "stateful" and ("param_groups" in value) != ("param_groups" in current):
        held = "an optimizer's state" if "param_groups" in value else "the state of something other than an optimizer"
        return f"the checkpoint holds {held}, and a {_type_name(obj)} was passed"
    if d.kind == "stateful" and "param_groups" in value:
        held_groups, groups = value["param_groups"], current["param_groups"]
        if [len(g.get("params", [])) for g in held_groups] != [len(g.get("params", [])) for g in groups]:
            return (f"the checkpoint's optimizer has {[len(g['params']) for g in held_groups]} parameters per group, "
                    f"the one passed {[len(g['params']) for g in groups]}")
        held_options = set().union(*(set(g) for g in held_groups)) if held_groups else set()
        # Options of the class passed that the checkpoint's groups lack: another class (SGD's
        # momentum and dampening, Adam's betas and eps). One alone may be an option a newer
        # PyTorch added; extra ones in the checkpoint may be a scheduler's (initial_lr).
        lacking = set(getattr(d.obj, "defaults", {}) or {}) - held_options
        if held_groups and len(lacking) >= 2:
            return (f"the checkpoint's optimizer has none of the options {', '.join(sorted(lacking))} of the "
                    f"{_type_name(obj)} passed: it was another kind of optimizer")
        return None
    if d.kind == "pickle" and type(value) is not type(obj):
        return f"the checkpoint holds a {_type_name(value)}, not a {_type_name(obj)}"
    return None


def _resolve_locals(values: dict[str, Any], live: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The locals that can be loaded in this process, and why the others cannot."""
    out: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for name, value in values.items():
        try:
            out[name] = resolve(value, live)
        except Exception as e:
            failed[name] = f"{type(e).__name__}: {e}"
    return out, failed
