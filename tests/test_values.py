"""values.py: what hl.log accepts, how a value is frozen at the call, and the exact
round trip through its stored (kind, SQLite value) form, including a real SQLite column."""

from __future__ import annotations

import math
import sqlite3

import numpy as np
import pytest

from hindlog import catalog, config
from hindlog.values import capture, check_name, decode, encode, equal


def roundtrip(value):
    """capture -> encode -> a real SQLite column -> decode."""
    kind, stored = encode(capture(value))
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (kind INTEGER, value)")
    conn.execute("INSERT INTO t VALUES (?, ?)", (kind, stored))
    kind2, stored2 = conn.execute("SELECT kind, value FROM t").fetchone()
    conn.close()
    return decode(kind2, stored2)


@pytest.mark.parametrize(
    "value",
    [0, -1, 2**63 - 1, -(2**63), 2**63, 2**200, 0.1, -2.5e-300, 1e308, True, False, "", "héllo ✓", None,
     [1, [2, [3]]], {"a": {"b": [None, True]}}],
)
def test_plain_values_round_trip_exactly(value) -> None:
    out = roundtrip(value)
    assert out == value and type(out) is type(value)


@pytest.mark.parametrize("value", [math.inf, -math.inf])
def test_infinities_round_trip(value) -> None:
    assert encode(capture(value))[0] == catalog.KIND_FLOAT_TEXT
    assert roundtrip(value) == value


def test_nan_round_trips() -> None:
    assert math.isnan(roundtrip(float("nan")))


def test_tuple_is_stored_as_a_list() -> None:
    assert roundtrip((1, 2)) == [1, 2]


def test_subclasses_of_accepted_scalars() -> None:
    import enum

    class Color(enum.IntEnum):
        RED = 3

    assert roundtrip(Color.RED) == 3 and type(roundtrip(Color.RED)) is int
    assert roundtrip(np.float64(0.25)) == 0.25 and type(roundtrip(np.float64(0.25))) is float


@pytest.mark.parametrize(
    "value, expected, typ",
    [
        (np.float32(1.5), 1.5, float),
        (np.float16(0.5), 0.5, float),
        (np.int8(-5), -5, int),
        (np.uint64(2**64 - 1), 2**64 - 1, int),
        (np.bool_(False), False, bool),
        (np.str_("x"), "x", str),
    ],
)
def test_numpy_scalars_become_python_scalars(value, expected, typ) -> None:
    out = roundtrip(value)
    assert out == expected and type(out) is typ


@pytest.mark.parametrize(
    "value",
    [np.complex64(1 - 1j), np.complex128(2j), np.longdouble(1.25), np.datetime64("2021-03-04T05:06"),
     np.timedelta64(5, "s"), np.bytes_(b"ab")],
)
def test_numpy_scalars_without_a_python_equivalent_are_kept_not_dropped(value) -> None:
    # Accepted at the call, so they must also be storable by the writer (not silently dropped there).
    out = roundtrip(value)
    assert isinstance(out, np.ndarray) and out.shape == () and out.dtype == value.dtype and out == value


@pytest.mark.parametrize(
    "arr",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.array([[1, 2], [3, 4]], dtype=np.uint8),
        np.array([True, False]),
        np.array([1 + 2j]),
        np.array(["a", "bc"]),
        np.zeros((0, 3)),
        np.array(5.0),
        np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]),
    ],
)
def test_arrays_round_trip_with_dtype_and_shape(arr) -> None:
    out = roundtrip(arr)
    assert isinstance(out, np.ndarray) and out.dtype == arr.dtype and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


def test_arrays_are_frozen_at_capture() -> None:
    a = np.arange(4.0)
    captured = capture(a)
    a[:] = -1
    np.testing.assert_array_equal(decode(*encode(captured)), np.arange(4.0))
    base = np.arange(10)
    captured_view = capture(base[2:5])
    base[:] = 0
    assert decode(*encode(captured_view)).tolist() == [2, 3, 4]


def test_lists_and_dicts_are_frozen_at_capture() -> None:
    d = {"a": [1]}
    captured = capture(d)
    d["a"].append(2)
    assert decode(*encode(captured)) == {"a": [1]}


def test_numpy_and_torch_values_inside_lists_and_dicts_are_stored_as_json() -> None:
    """``{"acc": acc}`` with a tensor, ``[np.float32(0.5)]``: rejected before, so a run crashed
    at the first such call."""
    torch = pytest.importorskip("torch")
    value = {"acc": torch.tensor(0.5), "per_class": torch.tensor([1, 2]), "f": [np.float32(0.25), np.int64(3)],
             "hist": np.array([[1.0, 2.0]]), "flag": np.bool_(True), 7: (np.float64(1.5),)}
    captured = capture(value)
    value["per_class"].add_(10)  # frozen at the call
    assert roundtrip_captured(captured) == {"acc": 0.5, "per_class": [1, 2], "f": [0.25, 3], "hist": [[1.0, 2.0]],
                                            "flag": True, "7": [1.5]}
    for bad in ({"c": np.complex64(1j)}, [torch.tensor([1j])], {"o": np.array([None])}):
        with pytest.raises(TypeError, match="not JSON-able"):
            capture(bad)
    with pytest.raises(ValueError, match="MiB"):
        capture([np.zeros(config.MAX_ARRAY_BYTES // 8 + 1)])


def test_pandas_series_and_frames_are_stored_as_json() -> None:
    """A tabular user's natural values: a Series of per-feature weights, a small summary table.
    Rejected before, which ended the run at the first such call."""
    pd = pytest.importorskip("pandas")
    series = pd.Series([0.5, np.float32(1.5)], index=["a", 7])
    frame = pd.DataFrame({"loss": [0.25, 0.125], "n": [np.int64(1), np.int64(2)]})
    assert roundtrip_captured(capture(series)) == {"a": 0.5, "7": 1.5}
    assert roundtrip_captured(capture(frame)) == {"loss": [0.25, 0.125], "n": [1, 2]}
    with pytest.raises(TypeError, match="not JSON-able"):
        capture(pd.Series([object()]))


def test_array_size_limit() -> None:
    limit = config.MAX_ARRAY_BYTES
    assert limit == 64 * 2**20
    ok = np.zeros(limit, dtype=np.uint8)  # exactly 64 MiB is accepted
    assert capture(ok).nbytes == limit
    del ok
    with pytest.raises(ValueError) as e:
        capture(np.zeros(limit + 1, dtype=np.uint8))
    assert "64.0 MiB" in str(e.value) and "limit is 64 MiB" in str(e.value)


@pytest.mark.parametrize(
    "value, shown",
    [(object(), "builtins.object"), ({1}, "builtins.set"), (b"x", "builtins.bytes"), (bytearray(b"x"), "bytearray"),
     (1j, "builtins.complex"), (range(3), "builtins.range"), ({"a": {1}}, "dict"), ([object()], "list"),
     (np.array([None]), "dtype object"), (np.void(b"ab"), "numpy.void")],
)
def test_unsupported_values_raise_type_error_naming_the_type(value, shown) -> None:
    with pytest.raises(TypeError) as e:
        capture(value)
    assert shown in str(e.value) and "accepted:" in str(e.value)


@pytest.mark.parametrize("name", ["", None, 3, b"x", ("a",)])
def test_bad_names(name) -> None:
    with pytest.raises(TypeError) as e:
        check_name(name)
    assert repr(name) in str(e.value) and type(name).__name__ in str(e.value)


def test_check_name_accepts_strings() -> None:
    check_name("loss")
    check_name("train/loss ✓")


def test_decode_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="kind"):
        decode(99, b"")


def test_equal() -> None:
    assert equal(1.0, 1.0) and not equal(1.0, 1.0 + 1e-9)
    assert equal(1.0, 1.0 + 1e-9, tolerance=1e-6)
    assert equal(float("nan"), float("nan"))
    assert equal(np.array([1.0, np.nan]), np.array([1.0, np.nan]))
    assert not equal(np.zeros(2), np.zeros(3))
    assert equal(np.ones(3), np.ones(3) + 1e-9, tolerance=1e-6)
    assert equal("a", "a") and not equal("a", "b")


# ---------------------------------------------------------------- torch (in this process)


def test_torch_values() -> None:
    torch = pytest.importorskip("torch")
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    captured = capture(t)
    t.mul_(0)
    out = roundtrip_captured(captured)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, np.arange(6, dtype=np.float32).reshape(2, 3))
    assert roundtrip(torch.tensor(1.5)) == 1.5
    assert roundtrip(torch.tensor(7, dtype=torch.int32)) == 7
    assert roundtrip(torch.tensor(False)) is False
    assert roundtrip(torch.ones(2, requires_grad=True) * 3).tolist() == [3.0, 3.0]
    assert roundtrip(torch.tensor([0.5], dtype=torch.bfloat16)).dtype == np.float32
    assert complex(roundtrip(torch.tensor(3 - 4j))) == 3 - 4j
    assert roundtrip(torch.tensor([1 + 2j]).conj()).tolist() == [1 - 2j]


def test_torch_size_limit() -> None:
    torch = pytest.importorskip("torch")
    ok = torch.zeros(config.MAX_ARRAY_BYTES // 4, dtype=torch.float32)
    assert capture(ok).nbytes == config.MAX_ARRAY_BYTES
    del ok
    with pytest.raises(ValueError, match="MiB"):
        capture(torch.zeros(config.MAX_ARRAY_BYTES // 4 + 1, dtype=torch.float32))
    # The check is made before any copy: an expanded view is measured by its logical size.
    big_view = torch.zeros(1).expand(config.MAX_ARRAY_BYTES // 4 + 1)
    with pytest.raises(ValueError, match="MiB"):
        capture(big_view)


def roundtrip_captured(captured):
    return decode(*encode(captured))
