"""Replayed values against a fresh run's: exact equality of logged values, context by context."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def same(a: Any, b: Any) -> bool:
    """Exact equality of logged values (arrays element-wise, NaN equal to NaN)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def assert_same_values(got: dict[Any, Any], want: dict[Any, Any], what: str) -> None:
    assert want, f"{what}: the ground truth has no values (bad test)"
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    assert not missing and not extra, f"{what}: contexts differ; missing {missing[:5]}, extra {extra[:5]}"
    wrong = [(k, got[k], want[k]) for k in sorted(want) if not same(got[k], want[k])]
    assert not wrong, f"{what}: {len(wrong)} of {len(want)} values differ, e.g. " + "; ".join(
        f"{k}: replayed {g!r}, fresh run {w!r}" for k, g, w in wrong[:3]
    )
