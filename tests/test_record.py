"""The record API (hl.log, hl.arg, hl.loop, hl.init, hl.finish) end to end:
scripts run in real subprocesses, results read back from the real SQLite store."""

from __future__ import annotations

import json
import math
import platform
import re
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import Project


def test_log_stores_plain_python_values_and_returns_them(project: Project) -> None:
    project.run(
        """
        import hindlog as hl
        assert hl.log("f", 0.5) == 0.5
        hl.log("i", 7)
        hl.log("t", True)
        hl.log("fa", False)
        hl.log("s", "hello")
        hl.log("empty", "")
        hl.log("none", None)
        lst = [1, 2.5, "x", None, [True]]
        assert hl.log("lst", lst) is lst
        d = {"a": 1, "b": [1, 2], "c": {"d": None}}
        assert hl.log("d", d) is d
        lst.append("changed after the call")   # the stored value is the one at the call
        d["a"] = 99
        hl.log("tup", (1, 2))
        """
    )
    v = project.values
    assert v("f") == [0.5] and type(v("f")[0]) is float
    assert v("i") == [7] and type(v("i")[0]) is int
    assert v("t") == [True] and type(v("t")[0]) is bool
    assert v("fa") == [False] and type(v("fa")[0]) is bool
    assert v("s") == ["hello"]
    assert v("empty") == [""]
    assert v("none") == [None]
    assert v("lst") == [[1, 2.5, "x", None, [True]]]
    assert v("d") == [{"a": 1, "b": [1, 2], "c": {"d": None}}]
    assert v("tup") == [[1, 2]]


def test_non_finite_floats_and_huge_ints_round_trip(project: Project) -> None:
    project.run(
        """
        import hindlog as hl
        for x in hl.loop("k", [float("nan"), float("inf"), float("-inf"), -0.0, 1e308, 5e-324]):
            hl.log("float", x)
        for x in [2**63 - 1, -2**63, 2**63, 2**70, -2**80, 10**40]:
            hl.log("int", x)
        hl.log("nan_in_list", [1.0, float("nan")])
        """
    )
    floats = project.values("float")
    assert math.isnan(floats[0])
    assert floats[1:3] == [math.inf, -math.inf]
    assert floats[3] == 0.0 and math.copysign(1, floats[3]) == -1
    assert floats[4:] == [1e308, 5e-324]
    ints = project.values("int")
    assert ints == [2**63 - 1, -(2**63), 2**63, 2**70, -(2**80), 10**40]
    assert all(type(i) is int for i in ints)
    lst = project.values("nan_in_list")[0]
    assert lst[0] == 1.0 and math.isnan(lst[1])
    # The dataframe reads them back too (one row per loop index).
    df = project.df("float")
    assert df["k"].tolist() == list(range(6))
    assert df["float"].isna().sum() == 1 and np.isinf(df["float"]).sum() == 2


def test_numpy_scalars_and_arrays(project: Project) -> None:
    project.run(
        """
        import numpy as np
        import hindlog as hl
        hl.log("f32", np.float32(1.5))
        hl.log("f64", np.float64(2.25))
        hl.log("i64", np.int64(-3))
        hl.log("u64", np.uint64(2**64 - 1))
        hl.log("npbool", np.bool_(True))
        hl.log("npstr", np.str_("abc"))
        a = np.arange(6, dtype=np.float32).reshape(2, 3)
        assert hl.log("arr", a) is a
        a += 100                                   # changed in place after the call
        hl.log("ints", np.array([1, -2, 3], dtype=np.int16))
        hl.log("mask", np.array([True, False]))
        hl.log("empty", np.zeros((0, 4)))
        hl.log("fortran", np.asfortranarray(np.arange(4.0).reshape(2, 2)))
        hl.log("strided", np.arange(10)[::3])
        hl.log("cplx", np.complex128(1 + 2j))
        hl.log("date", np.datetime64("2020-01-02"))
        hl.log("carr", np.array([1j, 2]))
        """
    )
    v = lambda n: project.values(n)[0]  # noqa: E731
    assert v("f32") == 1.5 and type(v("f32")) is float
    assert v("f64") == 2.25
    assert v("i64") == -3 and type(v("i64")) is int
    assert v("u64") == 2**64 - 1
    assert v("npbool") is True
    assert v("npstr") == "abc"
    arr = v("arr")
    assert isinstance(arr, np.ndarray) and arr.dtype == np.float32 and arr.shape == (2, 3)
    np.testing.assert_array_equal(arr, np.arange(6, dtype=np.float32).reshape(2, 3))
    ints = v("ints")
    assert ints.dtype == np.int16 and ints.tolist() == [1, -2, 3]
    assert v("mask").dtype == bool and v("mask").tolist() == [True, False]
    assert v("empty").shape == (0, 4)
    np.testing.assert_array_equal(v("fortran"), np.arange(4.0).reshape(2, 2))
    assert v("strided").tolist() == [0, 3, 6, 9]
    assert complex(v("cplx")) == 1 + 2j
    assert v("date") == np.datetime64("2020-01-02")
    assert v("carr").tolist() == [1j, 2]


def test_torch_scalars_and_tensors_are_stored_as_numpy_frozen_at_the_call(project: Project) -> None:
    pytest.importorskip("torch")
    project.run(
        """
        import torch
        import hindlog as hl
        t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
        assert hl.log("t", t) is t
        t.add_(100)                                 # in place, after the call
        base = torch.zeros(4)
        hl.log("view", base[1:3])
        base.fill_(7)                               # changes the view's storage
        hl.log("scalar", torch.tensor(2.5))
        hl.log("int_scalar", torch.tensor(3))
        hl.log("bool_scalar", torch.tensor(True))
        w = torch.ones(3, requires_grad=True)
        hl.log("grad", w * 2)
        hl.log("bf16", torch.tensor([1.5, 2.0], dtype=torch.bfloat16))
        hl.log("half", torch.tensor([0.5], dtype=torch.float16))
        hl.log("long", torch.tensor([2**40, -1]))
        hl.log("conj", torch.tensor([1 + 1j]).conj())
        hl.log("neg", torch.tensor([1.0, 2.0])._neg_view())
        hl.log("cplx_scalar", torch.tensor(1 + 2j))
        """
    )
    v = lambda n: project.values(n)[0]  # noqa: E731
    t = v("t")
    assert isinstance(t, np.ndarray) and t.dtype == np.float32 and t.shape == (2, 3)
    np.testing.assert_array_equal(t, np.arange(6, dtype=np.float32).reshape(2, 3))
    assert v("view").tolist() == [0.0, 0.0]
    assert v("scalar") == 2.5 and type(v("scalar")) is float
    assert v("int_scalar") == 3 and type(v("int_scalar")) is int
    assert v("bool_scalar") is True
    assert v("grad").tolist() == [2.0, 2.0, 2.0]
    assert v("bf16").tolist() == [1.5, 2.0]
    assert v("half").dtype == np.float16 and v("half").tolist() == [0.5]
    assert v("long").dtype == np.int64 and v("long").tolist() == [2**40, -1]
    assert v("conj").tolist() == [1 - 1j]
    assert v("neg").tolist() == [-1.0, -2.0]
    assert complex(v("cplx_scalar")) == 1 + 2j


def test_bad_names_and_values_raise_at_the_call_and_leave_nothing(inproc: Project) -> None:
    import hindlog as hl

    bad_names = [(3, "3"), ("", "''"), (None, "None"), (b"loss", "b'loss'"), (["a"], "['a']")]
    for name, shown in bad_names:
        with pytest.raises(TypeError) as e:
            hl.log(name, 1.0)
        assert shown in str(e.value) and "non-empty string" in str(e.value)
    bad_values = [
        (object(), "object"),
        ({1, 2}, "set"),
        (b"raw", "bytes"),
        (1 + 2j, "complex"),
        ({"a": object()}, "dict"),
        ([lambda: 0], "list"),
        (np.array([object()], dtype=object), "object"),
        (pd.DataFrame({"a": [object()]}), "DataFrame"),
    ]
    for value, shown in bad_values:
        with pytest.raises(TypeError) as e:
            hl.log("bad", value)
        assert shown in str(e.value), str(e.value)
        assert "accepted" in str(e.value)
    with pytest.raises(ValueError) as e:
        hl.log("bad", np.zeros(8 * 2**20 + 1))  # 64 MiB + 8 bytes
    assert "64 MiB" in str(e.value)
    assert hl.log("good", 1.0) == 1.0
    run = hl.run_id()
    hl.finish()
    assert inproc.values("bad") == []
    assert inproc.values("good", run) == [1.0]
    assert inproc.run_info(run)["names"] == ["good"]


def test_arg_overrides_are_cast_to_the_default_type(project: Project) -> None:
    out = project.run(
        """
        import json
        import hindlog as hl
        vals = dict(
            i=hl.arg("i", 1), f=hl.arg("f", 0.5), b=hl.arg("b", False), b2=hl.arg("b2", True),
            s=hl.arg("s", "adam"), l=hl.arg("l", [1, 2]), d=hl.arg("d", {"k": 1}), keep=hl.arg("keep", 3),
        )
        print(json.dumps({k: [v, type(v).__name__] for k, v in vals.items()}))
        """,
        env={
            "HINDLOG_SET_i": "5",
            "HINDLOG_SET_f": "1e-3",
            "HINDLOG_SET_b": "true",
            "HINDLOG_SET_b2": "0",
            "HINDLOG_SET_s": "sgd",
            "HINDLOG_SET_l": "[3, 4, 5]",
            "HINDLOG_SET_d": '{"k": 2}',
        },
    ).stdout
    got = json.loads(out)
    assert got == {
        "i": [5, "int"],
        "f": [0.001, "float"],
        "b": [True, "bool"],
        "b2": [False, "bool"],
        "s": ["sgd", "str"],
        "l": [[3, 4, 5], "list"],
        "d": [{"k": 2}, "dict"],
        "keep": [3, "int"],
    }
    info = project.run_info()
    assert info["args"] == {"i": 5, "f": 0.001, "b": True, "b2": False, "s": "sgd", "l": [3, 4, 5], "d": {"k": 2}, "keep": 3}
    runs = project.runs()
    assert runs.loc[0, "i"] == 5 and runs.loc[0, "s"] == "sgd" and bool(runs.loc[0, "b"]) is True
    # The override is part of the recorded environment, so a replay can set it again.
    assert info["env"]["variables"]["HINDLOG_SET_i"] == "5"


def test_arg_override_of_a_tuple_default(inproc: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    import hindlog as hl

    monkeypatch.setenv("HINDLOG_SET_betas", "[0.8, 0.99]")
    assert hl.arg("betas", (0.9, 0.999)) in ((0.8, 0.99), [0.8, 0.99])


@pytest.mark.parametrize(
    "default, raw",
    [(1, "abc"), (1, "1.5"), (0.5, "fast"), (False, "maybe"), ([1], "not json"), ({"a": 1}, "{bad")],
)
def test_bad_arg_override_is_a_clear_value_error(inproc: Project, monkeypatch: pytest.MonkeyPatch, default, raw) -> None:
    import hindlog as hl

    monkeypatch.setenv("HINDLOG_SET_x", raw)
    with pytest.raises(ValueError) as e:
        hl.arg("x", default)
    msg = str(e.value)
    assert f"HINDLOG_SET_x={raw!r}" in msg and type(default).__name__ in msg and "set it to" in msg
    assert " a int" not in msg
    assert ("make the default a float (hl.arg('x', 1.0))" in msg) == (raw == "1.5"), msg
    # The script did ask for x: the run's end must not say the override had no effect.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hl.finish()
    assert not [w for w in caught if "had no effect" in str(w.message)], [str(w.message) for w in caught]


def test_bad_arg_name_or_default(inproc: Project) -> None:
    import hindlog as hl

    with pytest.raises(TypeError, match="non-empty string"):
        hl.arg("", 1)
    with pytest.raises(TypeError, match="non-empty string"):
        hl.arg(5, 1)
    with pytest.raises(TypeError, match="object"):
        hl.arg("x", object())
    assert hl.arg("ok", 2) == 2


def test_an_arg_asked_for_twice_has_one_value(inproc: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replay sets each recorded argument by its name: one name cannot stand for two values."""
    import hindlog as hl

    assert hl.arg("scale", 2) == 2
    assert hl.arg("scale", 2) == 2  # the same again: fine
    assert hl.arg("nan", float("nan")) != hl.arg("nan", float("nan"))  # NaN is one value too
    with pytest.raises(ValueError, match=r"'scale' is already an argument of this run, with the value 2"):
        hl.arg("scale", 10)
    with pytest.raises(ValueError, match="already an argument"):
        hl.arg("scale", 2.0)
    monkeypatch.setenv("HINDLOG_SET_lr", "0.5")
    assert hl.arg("lr", 0.1) == 0.5 and hl.arg("lr", 0.2) == 0.5  # overridden: one value whatever the default
    rec = hl.record.current()
    assert rec.args == {"scale": 2, "nan": rec.args["nan"], "lr": 0.5}


def test_runs_one_after_another_in_one_process_keep_their_warnings_without_stacking_hooks(inproc: Project) -> None:
    """A sweep of runs in one process (hl.init ... hl.finish): the hook that keeps hindlog's
    warnings for ``hindlog show`` is installed once (a hook per run made each warning go through
    every earlier one, and a thousand of them overflowed the stack)."""
    import hindlog as hl

    hooks = set()
    for k in range(3):
        hl.init(name=f"trial-{k}")
        warnings.warn(f"hindlog: trial {k} warned", RuntimeWarning)
        hooks.add(warnings.showwarning)
        hl.finish()
    assert len(hooks) == 1
    shown = {row.name: row for row in inproc.runs().itertuples()}
    assert [inproc.run_info(shown[f"trial-{k}"].run_id)["info"].get("warnings") for k in range(3)] == \
        [[f"hindlog: trial {k} warned"] for k in range(3)]


def test_an_override_no_arg_asks_for_is_named_at_the_end(project: Project) -> None:
    script = """
        import hindlog as hl
        scale = hl.arg("scale", 2)
        for epoch in hl.loop("epoch", range(2)):
            hl.log("x", scale * epoch)
        """
    typo = project.run(script, env={"HINDLOG_SET_scal": "5"})
    # Said when the main loop starts (at the end of a long run, the run was spent), once.
    assert ("HINDLOG_SET_scal has had no effect so far: the script has not called hl.arg with that name before its main "
            "loop (its args: scale); a typo?") in typo.stderr, typo.stderr
    assert typo.stderr.count("HINDLOG_SET_scal") == 1, typo.stderr
    late = project.run(script.replace('        for epoch in hl.loop("epoch", range(2)):',
                                      '        for epoch in hl.loop("epoch", range(2)):\n            hl.arg("late", 1)'),
                       env={"HINDLOG_SET_scal": "5"})
    assert "so far" in late.stderr and "never called" not in late.stderr, late.stderr
    right = project.run(script, env={"HINDLOG_SET_scale": "5"})
    assert "no effect" not in right.stderr, right.stderr


def test_hl_checkpoints_inside_the_main_loop_is_warned_about(project: Project) -> None:
    out = project.run(
        """
        import numpy as np
        import hindlog as hl
        w = np.zeros(3)
        for epoch in hl.loop("epoch", range(3)):
            if epoch == 1:
                hl.checkpoints(w=w)
            w += 1
        """
    )
    assert "hl.checkpoints(w) was called inside the main loop (iteration 1)" in out.stderr, out.stderr
    assert "train.py" in out.stderr  # points at the user's line
    assert out.stderr.count("inside the main loop") == 1


def test_nested_loops_give_index_columns_and_shared_rows(project: Project) -> None:
    out = project.run(
        """
        import hindlog as hl
        lr = hl.arg("lr", 0.1)
        hl.log("setup", 1.0)                       # outside every loop
        seen = []
        for epoch in hl.loop("epoch", range(2)):
            for step, (x, y) in hl.loop("step", enumerate(zip("abc", "def"))):
                seen.append(x + y)
                hl.log("loss", epoch * 10 + step)
                hl.log("lr_now", lr)               # same context as loss: same row
                for micro in hl.loop("micro", range(2)):
                    hl.log("grad", epoch * 100 + step * 10 + micro)
            hl.log("val", epoch + 0.5)
        print(",".join(seen))
        """
    ).stdout
    assert out.strip() == "ad,be,cf,ad,be,cf"  # items pass through unchanged

    df = project.df("loss", "lr_now")
    assert list(df.columns) == ["run_id", "script", "code_version", "lr", "epoch", "step", "loss", "lr_now"]
    assert len(df) == 6
    assert df["epoch"].tolist() == [0, 0, 0, 1, 1, 1] and df["step"].tolist() == [0, 1, 2, 0, 1, 2]
    assert df["epoch"].dtype == np.int64
    assert (df["loss"] == df["epoch"] * 10 + df["step"]).all()
    assert (df["lr_now"] == 0.1).all() and (df["lr"] == 0.1).all()
    assert df["run_id"].nunique() == 1 and re.fullmatch(r"[0-9a-f]{40}", df["code_version"][0])

    grad = project.df("grad")
    assert list(grad.columns) == ["run_id", "script", "code_version", "lr", "epoch", "step", "micro", "grad"]
    assert len(grad) == 12
    assert (grad["grad"] == grad["epoch"] * 100 + grad["step"] * 10 + grad["micro"]).all()

    mixed = project.df("loss", "val")
    assert len(mixed) == 8
    epoch_rows = mixed[mixed["val"].notna()]
    assert epoch_rows["epoch"].tolist() == [0, 1] and epoch_rows["step"].isna().all()
    assert epoch_rows["loss"].isna().all() and epoch_rows["val"].tolist() == [0.5, 1.5]

    setup = project.df("setup")
    assert list(setup.columns) == ["run_id", "script", "code_version", "lr", "setup"] and setup["setup"].tolist() == [1.0]


def test_a_record_after_a_nested_loop_exits_belongs_to_the_enclosing_iteration(project: Project) -> None:
    # A nested loop's context is built when something is logged; after the loop ends (by
    # exhaustion or break), records belong to the enclosing loop's current iteration again.
    project.run(
        """
        import hindlog as hl
        for epoch in hl.loop("epoch", range(2)):
            for step in hl.loop("step", range(3)):
                for micro in hl.loop("micro", range(5)):
                    if micro == 2:
                        break
                    hl.log("grad", epoch * 100 + step * 10 + micro)
                hl.log("after_break", epoch * 10 + step)
                for quiet in hl.loop("quiet", range(4)):   # logs nothing
                    pass
                hl.log("after_quiet", [epoch, step])        # not a number: the slow path
            hl.log("val", epoch)
        hl.log("end", 1)
        """
    )
    grad = project.df("grad")
    assert grad["micro"].tolist() == [0, 1] * 6
    assert (grad["grad"] == grad["epoch"] * 100 + grad["step"] * 10 + grad["micro"]).all()
    after = project.df("after_break")
    assert list(after.columns) == ["run_id", "script", "code_version", "epoch", "step", "after_break"]
    assert (after["after_break"] == after["epoch"] * 10 + after["step"]).all() and len(after) == 6
    quiet = project.df("after_quiet")
    assert list(quiet.columns) == ["run_id", "script", "code_version", "epoch", "step", "after_quiet"]
    assert [list(v) for v in quiet["after_quiet"]] == [[e, s] for e, s in zip(quiet["epoch"], quiet["step"])]
    val = project.df("val")
    assert list(val.columns) == ["run_id", "script", "code_version", "epoch", "val"] and val["val"].tolist() == [0, 1]
    assert list(project.df("end").columns) == ["run_id", "script", "code_version", "end"]


def test_loop_is_lazy_and_works_with_generators_and_break(project: Project) -> None:
    project.run(
        """
        import hindlog as hl
        def gen():
            for i in range(100):
                yield i
        for i in hl.loop("epoch", gen()):
            hl.log("x", i)
            if i == 4:
                break
        hl.log("after", 1)                           # outside the loop again
        for j in hl.loop("second", range(2)):       # a later top-level loop
            hl.log("y", j)
        """
    )
    df = project.df("x")
    assert df["epoch"].tolist() == [0, 1, 2, 3, 4] and df["x"].tolist() == [0, 1, 2, 3, 4]
    after = project.df("after")
    assert list(after.columns) == ["run_id", "script", "code_version", "after"]
    y = project.df("y")
    assert y["second"].tolist() == [0, 1] and y["y"].tolist() == [0, 1]


def test_loops_in_lockstep_or_left_open_keep_the_contexts_right(project: Project) -> None:
    out = project.run(
        """
        import hindlog as hl
        for epoch in hl.loop("epoch", range(2)):
            for a, b in zip(hl.loop("a", range(3)), hl.loop("b", range(3))):
                hl.log("ab", a * 10 + b)
            hl.log("e", epoch)                       # after the zip: the epoch's context again
            kept = hl.loop("step", range(5))         # epoch 1: the generator kept from epoch 0 closes here
            hl.log("after_kept", epoch)
            for s in kept:                           # left by break, kept alive until the next epoch
                if s == 1:
                    break
        """
    )
    assert "advances in lockstep" in out.stderr and "zip(...)" in out.stderr, out.stderr
    ab = project.df("ab")
    assert ab[["epoch", "a", "b", "ab"]].values.tolist() == [[e, k, k, 11 * k] for e in range(2) for k in range(3)]
    for name in ("e", "after_kept"):
        df = project.df(name)
        assert list(df.columns) == ["run_id", "script", "code_version", "epoch", name], df
        assert df[name].tolist() == [0, 1]


def test_a_loop_inside_a_generator_another_loop_iterates_is_not_lockstep(project: Project) -> None:
    out = project.run(
        """
        import hindlog as hl
        def batches(n):
            for i in hl.loop("i", range(n)):
                yield i * 10
        for epoch in hl.loop("epoch", range(2)):
            for b in hl.loop("batch", batches(3)):
                hl.log("b", b)
            hl.log("e", epoch)
        """
    )
    assert "lockstep" not in out.stderr, out.stderr
    b = project.df("b")
    assert b["b"].tolist() == [0, 10, 20] * 2 and b["batch"].tolist() == [0, 1, 2] * 2
    e = project.df("e")
    assert list(e.columns) == ["run_id", "script", "code_version", "epoch", "e"] and e["e"].tolist() == [0, 1]


def test_hl_init_after_hl_checkpoints_or_hl_arg_takes_over_the_run_they_started(project: Project) -> None:
    out = project.run(
        """
        import time
        import numpy as np
        import hindlog as hl
        lr = hl.arg("lr", 0.05)
        state = {"w": np.zeros(2)}
        hl.checkpoints(state=state)
        hl.init(name=f"lr={lr}")
        for epoch in hl.loop("epoch", range(3)):
            state["w"] += lr
            time.sleep(0.05)  # (iterations long enough that a loaded machine's start-up leaves a checkpoint room)
            hl.log("w", float(state["w"].sum()))
        print(hl.run_id())
        """,
        env={"HINDLOG_SET_lr": "0.2", "HINDLOG_EPSILON": "0.9"},
    )
    assert "had no effect" not in out.stderr, out.stderr
    runs = project.runs()
    assert len(runs) == 1 and runs["name"].tolist() == ["lr=0.2"] and runs["lr"].tolist() == [0.2]
    info = project.run_info(out.stdout.strip())
    assert info["checkpoints"], "the state declared before hl.init is checkpointed"


def test_runs_table(project: Project) -> None:
    script = """
        import hindlog as hl
        hl.arg("lr", 0.1)
        for i in hl.loop("epoch", range(3)):
            hl.log("loss", 1.0 / (i + 1))
        """
    project.run(script)
    project.run(script, env={"HINDLOG_SET_lr": "0.2"})
    runs = project.runs()
    for col in ["run_id", "name", "script", "status", "code_version", "started", "ended", "duration", "overhead", "flags", "lr"]:
        assert col in runs.columns, col
    assert len(runs) == 2
    assert runs["run_id"].is_unique and runs["run_id"].tolist() == sorted(runs["run_id"])
    assert runs["status"].tolist() == ["finished", "finished"]
    assert runs["script"].tolist() == ["train.py", "train.py"]
    assert runs["lr"].tolist() == [0.1, 0.2]
    assert (runs["duration"] > 0).all() and (runs["ended"] >= runs["started"]).all()
    assert all(re.fullmatch(r"[0-9a-f]{40}", v) for v in runs["code_version"])
    assert [list(f) for f in runs["flags"]] == [[], []]
    assert ((runs["overhead"] >= 0) & (runs["overhead"] < 1)).all()


def test_run_records_argv_environment_and_times(project: Project) -> None:
    project.run(
        """
        import argparse
        import hindlog as hl
        p = argparse.ArgumentParser()
        p.add_argument("--lr", type=float, default=0.1)
        a = p.parse_args()
        hl.log("lr", a.lr)
        """,
        args=["--lr", "0.3"],
    )
    info = project.run_info("latest")
    assert info["argv"][1:] == ["--lr", "0.3"] and info["argv"][0].endswith("train.py")
    assert project.values("lr") == [0.3]
    env = info["env"]
    assert env["python"] == platform.python_version()
    assert env["packages"]["numpy"] == np.__version__ and "hindlog" in env["packages"]
    # Every installed distribution, by normalized name, as importlib.metadata knows it.
    from importlib import metadata
    assert env["installed"]["numpy"] == np.__version__ and env["installed"]["pytest"] == metadata.version("pytest")
    assert env["packages"]["scikit-learn"] == env["installed"]["scikit-learn"] == metadata.version("scikit-learn")
    assert info["host"] == socket.gethostname() and env["host"] == socket.gethostname()
    assert env["executable"] == sys.executable
    assert info["started"] <= info["ended"] and info["status"] == "finished"
    assert info["cwd"] == str(project.root)
    assert info["script"] == "train.py"


def test_argparse_options_are_recorded_when_argparse_is_imported_after_hindlog(project: Project) -> None:
    """The command line is parsed before the first hindlog call starts the run, and argparse is
    imported only after hindlog: the options (defaults included) are still recorded, and
    argparse works as usual (its source is readable, as tracebacks and inspect need)."""
    project.run(
        """
        import hindlog as hl
        import inspect
        import sys
        assert "argparse" not in sys.modules
        import argparse
        assert "class ArgumentParser" in inspect.getsource(argparse)
        p = argparse.ArgumentParser()
        p.add_argument("--lr", type=float, default=0.1)
        p.add_argument("--layers", type=int, default=3)
        a = p.parse_args()
        hl.log("lr", a.lr)
        """,
        args=["--lr", "0.3"],
    )
    assert project.run_info("latest")["info"]["options"] == {"lr": 0.3, "layers": 3}
    assert project.values("lr") == [0.3]


def test_run_records_gpus(project: Project) -> None:
    project.run("import hindlog as hl\nhl.log('x', 1)\n")
    assert isinstance(project.run_info()["env"].get("gpus"), list)


def test_init_and_finish_are_optional_and_explicit_runs_work(project: Project) -> None:
    out = project.run(
        """
        import hindlog as hl
        assert hl.run_id() is None
        a = hl.init(name="first", project="myproj")
        assert hl.run_id() == a
        hl.log("x", 1.0)
        hl.finish()
        assert hl.run_id() is None
        b = hl.init(name="second")
        hl.log("x", 2.0)
        c = hl.init(name="third")                   # finishes "second" first
        hl.log("x", 3.0)
        print(a, b, c)                              # "third" finishes at exit
        """
    ).stdout
    a, b, c = out.split()
    assert a < b < c
    runs = project.runs()
    assert runs["run_id"].tolist() == [a, b, c]
    assert runs["name"].tolist() == ["first", "second", "third"]
    assert runs["status"].tolist() == ["finished"] * 3
    assert project.run_info(a)["project"] == "myproj"
    assert project.run_info(c)["project"] == "proj"  # default: the project directory's name
    assert [project.values("x", r) for r in (a, b, c)] == [[1.0], [2.0], [3.0]]
    # A run can be looked up by its name, too.
    assert project.run_info("second")["run_id"] == b


def test_a_value_logged_after_finish_starts_a_new_run_of_the_same_project_and_says_so(project: Project) -> None:
    proc = project.run(
        """
        import hindlog as hl
        first = hl.init(project="sweep", epsilon=0.2)
        hl.log("acc", 0.5)
        hl.finish()
        hl.log("test_acc", 0.4)                     # line 5: after finish
        print(first, hl.run_id())
        """
    )
    first, second = proc.stdout.split()
    assert first != second and project.runs()["run_id"].tolist() == [first, second]
    assert project.run_info(second)["project"] == "sweep" and project.run_info(second)["epsilon"] == 0.2
    assert project.values("test_acc", second) == [0.4]
    warning = [line for line in proc.stderr.splitlines() if "after hl.finish()" in line]
    assert len(warning) == 1 and "train.py:5:" in warning[0] and second in warning[0], proc.stderr
    # hl.init() after hl.finish() is the explicit way: no warning.
    proc = project.run(
        """
        import hindlog as hl
        hl.init(project="sweep")
        hl.log("acc", 0.5)
        hl.finish()
        hl.init(project="sweep")
        hl.log("acc", 0.6)
        """
    )
    assert "after hl.finish()" not in proc.stderr


def test_runs_can_be_listed_by_project(project: Project) -> None:
    for name in ("vision", "text", "vision"):
        project.run(f"import hindlog as hl\nhl.init(project={name!r})\nhl.log('x', 1)\n")
    runs = project.runs()
    assert runs["project"].tolist() == ["vision", "text", "vision"]
    listing = project.cli("runs").stdout
    assert "project" in listing.splitlines()[0].split() and "text" in listing
    vision = project.cli("runs", "--project", "vision").stdout
    assert len(vision.strip().splitlines()) == 3 and "text" not in vision
    assert runs["run_id"][1] not in vision


def test_implicit_run_starts_at_first_call(project: Project) -> None:
    out = project.run(
        """
        import hindlog as hl
        assert hl.run_id() is None
        hl.log("x", 1)
        print(hl.run_id())
        """
    ).stdout.strip()
    assert project.runs()["run_id"].tolist() == [out]


def test_init_rejects_a_bad_epsilon(inproc: Project) -> None:
    import hindlog as hl

    with pytest.raises(ValueError, match="epsilon"):
        hl.init(epsilon=2.0)


@pytest.mark.parametrize("raw", ["1", "5%", "-0.1"])
def test_a_bad_epsilon_in_the_environment_is_named_and_training_goes_on(project: Project, raw: str) -> None:
    proc = project.run(
        """
        import hindlog as hl
        total = 0
        for i in hl.loop("step", range(3)):
            total += hl.log("x", i)
        print("total", total)
        """,
        env={"HINDLOG_EPSILON": raw},
    )
    assert proc.stdout.strip() == "total 3"
    assert "HINDLOG_EPSILON=" in proc.stderr and raw in proc.stderr, proc.stderr
    assert "Fix the setting" in proc.stderr and "writable" not in proc.stderr
    # An explicit hl.init() without an epsilon of its own reads the same setting: same warning, no crash.
    proc = project.run(
        """
        import hindlog as hl
        hl.init(name="explicit")
        print("total", sum(hl.log("x", i) for i in hl.loop("step", range(3))))
        """,
        env={"HINDLOG_EPSILON": raw},
    )
    assert proc.stdout.strip() == "total 3" and "train.py:2: RuntimeWarning" in proc.stderr, proc.stderr


def test_disabled_is_a_pass_through_and_creates_no_store(project: Project) -> None:
    project.run(
        """
        import numpy as np
        import hindlog as hl
        arr = np.zeros(3)
        assert hl.log("a", arr) is arr
        huge = np.zeros(9 * 2**20)                  # over the size limit: not even looked at
        assert hl.log("h", huge) is huge
        it = [1, 2, 3]
        assert hl.loop("epoch", it) is it
        assert hl.arg("lr", 0.1) == 0.5              # overrides still apply
        assert hl.arg("n", 3) == 3
        assert hl.init(name="x") is None
        assert hl.run_id() is None
        for i in hl.loop("epoch", range(3)):
            hl.log("i", i)
        hl.finish()
        print("ok")
        """,
        env={"HINDLOG_DISABLED": "1", "HINDLOG_SET_lr": "0.5"},
    )
    assert not any(p.name == ".hindlog" for p in project.root.rglob("*"))
    assert project.git("for-each-ref", "refs/hindlog") == ""
    assert project.git("status", "--porcelain").splitlines() == ["?? train.py"]


def test_store_dir_override(project: Project, tmp_path) -> None:
    elsewhere = tmp_path / "elsewhere" / "store"
    project.run("import hindlog as hl\nhl.log('x', 1.5)\n", env={"HINDLOG_DIR": str(elsewhere)})
    assert not project.store_path.exists()
    assert (elsewhere / "catalog.db").exists()
    import hindlog as hl

    runs = hl.runs(store=elsewhere)
    assert len(runs) == 1 and runs["status"][0] == "finished"
    assert hl.dataframe("x", store=elsewhere)["x"].tolist() == [1.5]
    # The code is still snapshotted from the project's repository.
    assert project.git("for-each-ref", "--format=%(refname)", "refs/hindlog/runs/").strip() == (
        f"refs/hindlog/runs/{runs['run_id'][0]}"
    )


def test_store_is_at_the_git_top_level_when_run_from_a_subdirectory(project: Project) -> None:
    project.write("sub/deeper/train.py", "import hindlog as hl\nhl.log('x', 1)\n")
    project.run(script="sub/deeper/train.py", cwd=project.root / "sub" / "deeper")
    assert project.catalog_path.exists()
    assert not (project.root / "sub" / "deeper" / ".hindlog").exists()
    assert project.runs()["script"].tolist() == ["sub/deeper/train.py"]
    # The store ignores itself, so the user's `git status` does not show it.
    assert project.git("status", "--porcelain").splitlines() == ["?? sub/"]


def test_the_project_root_is_the_one_git_finds_worktrees_and_submodules_included(
    project: Project, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hindlog.store import project_root

    # Without git's environment variables hindlog looks for .git itself, as git does.
    monkeypatch.delenv("GIT_CEILING_DIRECTORIES", raising=False)

    project.write("a.py", "x = 1\n")
    project.git("add", "a.py")
    project.git("commit", "-q", "-m", "a")
    other = tmp_path / "linked"
    project.git("worktree", "add", "-q", str(other))  # a worktree's .git is a file
    (other / "deep" / "er").mkdir(parents=True)
    (project.root / "deep").mkdir()
    for start in (project.root / "deep", other / "deep" / "er", tmp_path):
        git = subprocess.run(["git", "-C", str(start), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
        want = Path(git.stdout.strip()) if git.returncode == 0 else start
        assert project_root(start) == want.resolve(), start


def test_store_is_in_the_current_directory_outside_git(plain_project: Project) -> None:
    plain_project.write("a/train.py", "import hindlog as hl\nhl.log('x', 1)\n")
    plain_project.run(script="a/train.py", cwd=plain_project.root / "a")
    assert (plain_project.root / "a" / ".hindlog" / "catalog.db").exists()
    assert not plain_project.store_path.exists()


def test_a_script_run_from_another_project_is_recorded_into_its_own(project: Project, tmp_path: Path) -> None:
    """``python ../other/train.py`` from another repository, or from a folder outside git above
    it: the run was recorded into the current directory's store, with that project's code as its
    code version (not the script's), and from /tmp every file under it was snapshotted."""
    from conftest import new_git_project

    project.write("train.py", "import hindlog as hl\nfor e in hl.loop('epoch', range(2)):\n    hl.log('x', e)\n")
    project.git("add", "train.py")
    project.git("commit", "-q", "-m", "train")
    elsewhere = new_git_project(tmp_path / "elsewhere")
    outside = tmp_path / "outside"
    outside.mkdir()
    for cwd in (elsewhere.root, outside):
        proc = project.run(cwd=cwd)
        assert proc.returncode == 0, proc.stderr
        assert not (cwd / ".hindlog").exists(), cwd
        assert f"hindlog: recording into {project.store_path}, the store of train.py's project" in proc.stderr, proc.stderr
    runs = project.runs()
    assert runs["script"].tolist() == ["train.py", "train.py"]
    assert set(runs["code_version"]) == {project.git("rev-parse", "HEAD").strip()}
    # Its values, asked for from the other project by the script's path, come from its own store.
    logs = elsewhere.cli("logs", "x", "--script", str(project.root / "train.py"), "--format", "csv").stdout.splitlines()
    assert len(logs) == 5 and all(",train.py," in line for line in logs[1:]), logs
    # An installed tool that runs the code (a notebook kernel's launcher, pytest) is not the script:
    # the run is the current directory's project's.
    launcher = tmp_path / "env" / "lib" / "site-packages" / "kernel_launcher.py"
    launcher.parent.mkdir(parents=True)
    launcher.write_text("import hindlog as hl\nhl.log('cell', 1)\n")
    proc = subprocess.run([sys.executable, str(launcher)], cwd=elsewhere.root, capture_output=True, text=True,
                          env=elsewhere.env())
    assert proc.returncode == 0 and "recording into" not in proc.stderr, proc.stderr
    assert (elsewhere.root / ".hindlog" / "catalog.db").exists() and not (launcher.parent / ".hindlog").exists()


def test_a_git_project_run_from_a_folder_outside_git_above_it_is_recorded_into_its_own(plain_project: Project) -> None:
    """``python proj/train.py`` from a home directory that is not in git: the home directory was
    taken for the project, its store got the run and its files were snapshotted."""
    from conftest import new_git_project

    inner = new_git_project(plain_project.root / "proj")
    inner.write("train.py", "import hindlog as hl\nfor e in hl.loop('epoch', range(2)):\n    hl.log('x', e)\n")
    inner.git("add", "train.py")
    inner.git("commit", "-q", "-m", "train")
    proc = inner.run(cwd=plain_project.root)
    assert f"hindlog: recording into {inner.store_path}, the store of train.py's project" in proc.stderr, proc.stderr
    assert not plain_project.store_path.exists()
    run = inner.runs()
    assert run["code_version"].tolist() == [inner.git("rev-parse", "HEAD").strip()] and run["script"].tolist() == ["train.py"]


def test_a_snapshot_outside_git_stops_at_its_file_limit_and_says_so(plain_project: Project) -> None:
    from hindlog import codeversion
    from hindlog.store import Store

    for k in range(codeversion.MAX_SNAPSHOT_FILES + 40):  # a home directory's worth of source files
        plain_project.write(f"d{k // 500:02d}/f{k}.py", f"x = {k}\n")
    proc = plain_project.run("import hindlog as hl\nhl.log('x', 1)\n")
    assert f"stopped at {codeversion.MAX_SNAPSHOT_FILES} source files" in proc.stderr, proc.stderr
    info = plain_project.run_info()
    assert "code_snapshot_truncated" in info["flags"], info["flags"]
    assert len(codeversion.read_files(Store(plain_project.store_path, plain_project.root), info["code_version"])) == \
        codeversion.MAX_SNAPSHOT_FILES


def test_hl_log_in_a_dataloader_worker_is_reported_not_silently_lost(project: Project) -> None:
    """``hl.log`` in a Dataset's ``__getitem__`` with ``num_workers=2``: the forked workers have
    no writer, and the values vanished without a word."""
    pytest.importorskip("torch")
    proc = project.run(
        """
        import torch
        import hindlog as hl
        from torch.utils.data import DataLoader, Dataset

        class Data(Dataset):
            def __len__(self):
                return 8
            def __getitem__(self, k):
                hl.log("item", k)
                return torch.tensor([float(k)])

        loader = DataLoader(Data(), batch_size=4, num_workers=2)
        for epoch in hl.loop("epoch", range(2)):
            for batch in hl.loop("step", loader):
                hl.log("b", float(batch.sum()))
        """
    )
    assert proc.stderr.count("hl.log was called in a child process of this run") == 1, proc.stderr
    assert "logged_in_child_process" in project.run_info()["flags"]
    assert project.values("item") == [] and len(project.values("b")) == 4


def test_a_loop_that_logs_faster_than_the_writer_commits_waits_for_it_at_its_end(project: Project) -> None:
    """Logging faster than SQLite takes the records grew the writer's queue without bound (640 MB
    for 2M values) and a ``kill -9`` lost seconds of them: a loop's end now waits, as blocked
    time, while more than QUEUE_HIGH records are queued."""
    proc = project.run(
        """
        import hindlog as hl
        from hindlog import record, recorder

        most = 0
        for epoch in hl.loop("epoch", range(2)):
            for k in range(3):
                for i in hl.loop("step", range(recorder.QUEUE_HIGH // 2)):
                    hl.log("v", float(i))
                most = max(most, len(record._recorder.writer.queue))
        print(most, recorder.QUEUE_HIGH)
        """,
        env={"HINDLOG_FLUSH_INTERVAL": "30"},  # the writer commits only when woken
        timeout=300,
    )
    most, high = map(int, proc.stdout.split())
    assert most <= high, (most, high)
    assert len(project.values("v")) == 2 * 3 * (high // 2)
    assert project.run_info()["overhead"] > 0  # the waits are blocked time


def test_a_store_that_cannot_be_created_never_breaks_training(project: Project, tmp_path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    proc = project.run(
        """
        import hindlog as hl
        for i in hl.loop("epoch", range(3)):
            assert hl.log("x", float(i)) == float(i)
        assert hl.arg("lr", 0.1) == 0.5
        try:
            hl.log("bad", object())                 # still validated
        except TypeError as e:
            print("TypeError:", e)
        print("done")
        """,
        env={"HINDLOG_DIR": str(blocker / "store"), "HINDLOG_SET_lr": "0.5"},
    )
    assert proc.stdout.splitlines()[-1] == "done" and "TypeError: hl.log cannot store" in proc.stdout
    assert proc.stderr.count("hindlog: could not start recording") == 1, proc.stderr
    # The advice is about the store that was asked for, not the project directory.
    assert f"Check that HINDLOG_DIR={blocker / 'store'} names a directory" in proc.stderr, proc.stderr
    assert blocker.read_text() == "not a directory"


def _has_cuda_device() -> bool:
    import shutil
    from pathlib import Path

    return shutil.which("nvidia-smi") is not None or Path("/dev/nvidiactl").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not _has_cuda_device(), reason="needs a CUDA device")
def test_cuda_tensors_are_frozen_at_the_call_without_waiting_for_the_gpu(project: Project) -> None:
    out = project.run(
        """
        import json, time
        import torch
        import hindlog as hl
        assert torch.cuda.is_available()
        x = torch.arange(1000, device="cuda", dtype=torch.float32)
        hl.log("warmup", x)
        a = torch.randn(4096, 4096, device="cuda")
        torch.cuda.synchronize()
        for _ in range(400):                        # queue about a second of work on the stream
            a = (a @ a) / 4096
        busy_before = not torch.cuda.current_stream().query()
        t0 = time.perf_counter()
        hl.log("x", x)
        hl.log("s", x.sum())
        dt = time.perf_counter() - t0
        busy = not torch.cuda.current_stream().query()   # the GPU was still working when hl.log returned
        x.add_(1)                                   # in place, after the call
        torch.cuda.synchronize()
        print(json.dumps({"dt": dt, "busy_before": busy_before, "busy": busy}))
        """,
        timeout=120,
    ).stdout
    result = json.loads(out)
    assert result["busy_before"], f"the queued work was too short to tell: {result}"
    assert result["busy"], f"hl.log waited for the GPU: {result}"
    assert result["dt"] < 0.05
    x = project.values("x")[0]
    assert isinstance(x, np.ndarray) and x.dtype == np.float32
    np.testing.assert_array_equal(x, np.arange(1000, dtype=np.float32))
    assert project.values("s") == [float(sum(range(1000)))]


def test_the_core_works_without_torch(project: Project) -> None:
    out = project.run(
        """
        import sys
        sys.modules["torch"] = None                 # `import torch` now raises ImportError
        import numpy as np
        import hindlog as hl
        hl.arg("lr", 0.1)
        for i in hl.loop("epoch", range(2)):
            hl.log("x", float(i))
            hl.log("a", np.ones(2))
        print(hl.dataframe("x")["x"].tolist())
        """
    ).stdout
    assert out.strip() == "[0.0, 1.0]"
    assert project.runs()["status"].tolist() == ["finished"]


def test_importing_hindlog_does_not_import_torch(project: Project) -> None:
    out = project.run("import sys\nimport hindlog as hl\nhl.log('x', 1)\nprint('torch' in sys.modules)\n").stdout
    assert out.strip() == "False"


def test_a_nested_loop_named_as_an_enclosing_one_is_warned_about(project: Project) -> None:
    """``hl.loop("epoch")`` inside ``hl.loop("epoch")``: stored apart, but every query showed one
    ``epoch`` column with the inner index (outer epoch 1's values under epoch 0), unsaid."""
    out = project.run(
        "import hindlog as hl\n"
        "for epoch in hl.loop('epoch', range(2)):\n"
        "    for k in hl.loop('epoch', range(3)):\n"
        "        hl.log('x', epoch * 10 + k)\n"
        "    for i in hl.loop('step', range(2)):\n"
        "        hl.log('y', i)\n"
    )
    assert out.stderr.count("hl.loop('epoch') runs inside a loop of the same name") == 1, out.stderr
    assert "train.py:3" in out.stderr and "'step'" not in out.stderr, out.stderr
