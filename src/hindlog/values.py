"""What ``hl.log`` accepts, and how values are captured, stored and read back.

Capture happens on the training thread and must be cheap: it freezes the
value as it is at the call (copying arrays and tensors, starting an
asynchronous device-to-host copy for GPU tensors without waiting for it).
Encoding into SQLite values happens later, on the background writer.
"""

from __future__ import annotations

import collections
import io
import json
import math
import sys
import threading
import time
from typing import Any

import numpy as np

from . import config
from .catalog import KIND_BOOL, KIND_FLOAT_TEXT, KIND_JSON, KIND_NATIVE, KIND_NPY

ACCEPTED = (
    "numbers, bools, strings, None, NumPy and torch scalars, NumPy arrays or torch tensors, "
    "lists and dicts of these, and pandas Series and DataFrames (JSON: a dict's keys become strings)"
)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class JsonValue:
    """A list or dict, frozen as JSON text at the call."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


class DeviceCopy:
    """A GPU tensor being copied to pinned host memory; resolved by the writer."""

    __slots__ = ("host", "event", "scalar", "slot", "value")

    def __init__(self, host: Any, event: Any, scalar: bool, slot: int | None = None) -> None:
        self.host, self.event, self.scalar, self.slot = host, event, scalar, slot
        self.value: Any = None

    def resolve(self) -> Any:
        if self.host is not None:
            wait_for_event(self.event)
            arr = self.host.numpy()
            self.value = arr.item() if self.scalar else arr.copy()
            self.host = self.event = None
            if self.slot is not None:
                _PINNED_SLOTS.give(self.slot)
        return self.value


def wait_for_event(event: Any) -> None:
    """Wait in a background thread for a CUDA event by polling it (answering within 5 ms).

    A thread waiting in ``cudaEventSynchronize`` may hold up the training thread's own CUDA
    calls: on an H100, an ``hl.log`` of a 4-byte GPU value was seen taking the second of work
    queued on the GPU while the writer waited for an event. Polling holds nothing."""
    delay = 0.0002
    while not event.query():
        time.sleep(delay)
        delay = min(delay * 2, 0.005)


class _PinnedSlots:
    """Small pinned host buffers for GPU values, allocated together once and then reused.

    Allocating pinned memory (``cudaHostAlloc``) waits for the GPU's queued work, so a
    pinned buffer allocated per ``hl.log`` call would stall training whenever the GPU is
    busy. The first GPU value allocates the slots (the one wait); the writer hands each
    slot back once it has read it. Larger values, or more in flight than there are slots,
    get buffers from PyTorch's pinned-memory cache, which waits only when it must grow."""

    SLOT_BYTES = 4096
    COUNT = 256

    def __init__(self) -> None:
        self._arena: Any = None
        self._free: collections.deque[int] = collections.deque()
        self._lock = threading.Lock()

    def take(self, torch: Any, t: Any) -> tuple[Any, int] | None:
        nbytes = t.numel() * t.element_size()
        if nbytes > self.SLOT_BYTES:
            return None
        if self._arena is None:
            with self._lock:
                if self._arena is None:
                    self._free.extend(range(self.COUNT))
                    self._arena = torch.empty(self.SLOT_BYTES * self.COUNT, dtype=torch.uint8, pin_memory=True)
        try:
            k = self._free.popleft()
        except IndexError:
            return None
        start = k * self.SLOT_BYTES
        return self._arena[start:start + nbytes].view(t.dtype).reshape(t.shape), k

    def give(self, k: int) -> None:
        self._free.append(k)


_PINNED_SLOTS = _PinnedSlots()


def check_name(name: Any) -> None:
    if type(name) is not str or not name:
        raise TypeError(f"hl.log name must be a non-empty string, got {name!r} ({type(name).__name__})")


def capture(value: Any) -> Any:
    """Freeze ``value`` as it is now, or raise TypeError/ValueError if it is not accepted."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        if value.dtype.kind in "OV":
            return _reject(value)
        item = value.item()
        # complex, long double, datetime, bytes...: no plain SQLite value; keep them as 0-d arrays
        return item if type(item) in (bool, int, float, str) else np.array(value)
    if isinstance(value, np.ndarray):
        return _capture_array(value)
    if isinstance(value, (list, tuple, dict)):
        try:
            return JsonValue(json.dumps(value, default=_json_element))
        except _TooLarge:
            raise
        except (TypeError, ValueError) as e:
            raise TypeError(f"hl.log got a {type(value).__name__} that is not JSON-able ({e}); accepted: {ACCEPTED}") from None
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return _capture_tensor(torch, value)
    if (type(value).__module__ or "").split(".")[0] == "pandas" and hasattr(value, "to_dict") and hasattr(value, "size"):
        return _capture_pandas(value)
    return _reject(value)


def _capture_pandas(value: Any) -> JsonValue:
    """A pandas Series as a dict by its index, a DataFrame as a dict of its columns' lists (JSON:
    the labels become strings)."""
    _check_size(int(value.size) * 8)
    if getattr(value, "ndim", 1) == 1:
        content = {str(k): v for k, v in value.to_dict().items()}
    else:
        content = {str(k): v for k, v in value.to_dict(orient="list").items()}
    try:
        return JsonValue(json.dumps(content, default=_json_element))
    except (TypeError, ValueError) as e:
        raise TypeError(f"hl.log got a {type(value).__name__} that is not JSON-able ({e}); accepted: {ACCEPTED}") from None


def _json_element(value: Any) -> Any:
    """A NumPy or torch scalar, array or tensor inside a logged list or dict, as JSON takes it
    (``{"acc": acc_tensor}``, ``[np.float32(0.5)]``); anything else is not JSON-able."""
    if isinstance(value, np.generic) and value.dtype.kind not in "OVc":
        return value.item()
    if isinstance(value, np.ndarray) and value.dtype.kind not in "OVc":
        _check_size(value.nbytes)
        return value.tolist()
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor) and not value.is_complex():
        _check_size(value.numel() * value.element_size())
        return value.detach().cpu().tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _reject(value: Any) -> Any:
    raise TypeError(f"hl.log cannot store a value of type {type(value).__module__}.{type(value).__qualname__}; accepted: {ACCEPTED}")


class _TooLarge(ValueError):
    pass


def _check_size(nbytes: int) -> None:
    if nbytes > config.MAX_ARRAY_BYTES:
        raise _TooLarge(
            f"hl.log got an array of {nbytes / 2**20:.1f} MiB; the limit is "
            f"{config.MAX_ARRAY_BYTES / 2**20:.0f} MiB. Log a summary (a histogram, a norm) or a slice instead."
        )


def _capture_array(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.hasobject:
        raise TypeError(f"hl.log cannot store a NumPy array of dtype object; accepted: {ACCEPTED}")
    _check_size(arr.nbytes)
    return np.array(arr, copy=True)


def _capture_tensor(torch: Any, t: Any) -> Any:
    t = t.detach()
    _check_size(t.numel() * t.element_size())
    if t.dtype in (torch.bfloat16,):
        t = t.float()
    if t.is_cuda:
        taken = _PINNED_SLOTS.take(torch, t)
        host, slot = taken if taken is not None else (torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=True), None)
        host.copy_(t, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return DeviceCopy(host, event, t.dim() == 0 and not t.is_complex(), slot)
    if t.device.type != "cpu":
        t = t.cpu()
    if t.dim() == 0 and not t.is_complex():
        return t.item()
    return t.resolve_conj().resolve_neg().numpy().copy() if t.is_conj() or t.is_neg() else t.numpy().copy()


def encode(value: Any) -> tuple[int, Any]:
    """``(kind, sqlite value)`` of a captured value."""
    if type(value) is DeviceCopy:
        value = value.resolve()
    t = type(value)
    if t is float:
        if math.isfinite(value):
            return KIND_NATIVE, value
        return KIND_FLOAT_TEXT, repr(value)
    if t is bool:
        return KIND_BOOL, int(value)
    if t is int:
        if _INT64_MIN <= value <= _INT64_MAX:
            return KIND_NATIVE, value
        return KIND_JSON, json.dumps(value)
    if value is None or t is str:
        return KIND_NATIVE, value
    if t is JsonValue:
        return KIND_JSON, value.text
    if isinstance(value, np.ndarray):
        buf = io.BytesIO()
        np.save(buf, value, allow_pickle=False)
        return KIND_NPY, buf.getvalue()
    # Subclasses of the accepted scalars (IntEnum, numpy float64 is a float subclass).
    if isinstance(value, bool):
        return KIND_BOOL, int(value)
    if isinstance(value, int):
        return encode(int(value))
    if isinstance(value, float):
        return encode(float(value))
    if isinstance(value, str):
        return KIND_NATIVE, str(value)
    raise TypeError(f"cannot encode {type(value)!r}")


def decode(kind: int, value: Any) -> Any:
    """The Python value of a stored ``(kind, value)``."""
    if kind == KIND_NATIVE:
        return value
    if kind == KIND_BOOL:
        return bool(value)
    if kind == KIND_JSON:
        return json.loads(value)
    if kind == KIND_NPY:
        return np.load(io.BytesIO(value), allow_pickle=False)
    if kind == KIND_FLOAT_TEXT:
        return float(value)
    raise ValueError(f"unknown value kind {kind}")


def equal(a: Any, b: Any, tolerance: float = 0.0) -> bool:
    """Whether a recorded and a replayed value agree (exactly, or within ``tolerance`` for floats)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a_arr, b_arr = np.asarray(a), np.asarray(b)
        if a_arr.shape != b_arr.shape:
            return False
        if tolerance and a_arr.dtype.kind in "fc":
            return bool(np.allclose(a_arr, b_arr, rtol=tolerance, atol=tolerance, equal_nan=True))
        return bool(np.array_equal(a_arr, b_arr, equal_nan=a_arr.dtype.kind in "fc"))
    if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        if math.isnan(a) and math.isnan(b):
            return True
        if tolerance:
            return math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance)
        return a == b
    return a == b
