"""hl.runs, hl.dataframe and the run lookups behind the CLI, over real recorded stores."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import hindlog as hl
from conftest import Project, recorded_project
from hindlog import query
from hindlog.errors import RunNotFound

TRAIN = """
import hindlog as hl
lr = hl.arg("lr", 0.1)
opt = hl.arg("opt", "sgd")
for epoch in hl.loop("epoch", range(2)):
    for step in hl.loop("step", range(2)):
        hl.log("loss", lr * (epoch * 2 + step))
    hl.log("acc", epoch / 2)
print(hl.run_id())
"""


def record_two_runs(project: Project) -> tuple[Project, str, str]:
    a = project.run(TRAIN).stdout.strip()
    b = project.run(env={"HINDLOG_SET_lr": "0.5"}).stdout.strip()
    return project, a, b


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Project, str, str]:
    return recorded_project(tmp_path_factory, "query", record_two_runs)


@pytest.fixture
def two_runs(recorded: tuple[Project, str, str], clean_env: None) -> tuple[Project, str, str]:
    """Two recorded runs shared by the tests of this module, which only read them."""
    return recorded


def test_dataframe_over_several_runs(two_runs) -> None:
    project, a, b = two_runs
    df = project.df("loss")
    assert list(df.columns) == ["run_id", "script", "code_version", "lr", "opt", "epoch", "step", "loss"]
    assert df["run_id"].tolist() == [a] * 4 + [b] * 4
    assert df["lr"].tolist() == [0.1] * 4 + [0.5] * 4 and (df["opt"] == "sgd").all()
    np.testing.assert_allclose(df["loss"], [0.1 * k for k in range(4)] + [0.5 * k for k in range(4)])
    code = {r: project.run_info(r)["code_version"] for r in (a, b)}
    assert df.groupby("run_id")["code_version"].first().to_dict() == code


def test_dataframe_selects_runs_by_id_prefix_name_and_latest(two_runs) -> None:
    project, a, b = two_runs
    assert set(project.df("acc", runs=a)["run_id"]) == {a}
    assert set(project.df("acc", runs=[b])["run_id"]) == {b}
    assert set(project.df("acc", runs="latest")["run_id"]) == {b}
    assert set(project.df("acc", runs=[a, "latest"])["run_id"]) == {a, b}
    prefix = b[: len(b) - 3]
    if not a.startswith(prefix):
        assert set(project.df("acc", runs=prefix)["run_id"]) == {b}
    # The end of an id, its random part, is what tells runs of one hour apart.
    assert set(project.df("acc", runs=b[-6:])["run_id"]) == {b}
    assert project.run_info(a[-6:])["run_id"] == a
    with pytest.raises(hl.RunNotFound, match="No run matches"):
        project.run_info("zzzzzz")
    with pytest.raises(hl.RunNotFound, match="No run matches"):
        project.run_info(b[-3:])  # too short to be meant as an id's end (a row number, a typo)
    acc = project.df("acc", runs=a)
    assert list(acc.columns) == ["run_id", "script", "code_version", "lr", "opt", "epoch", "acc"]
    assert acc["acc"].tolist() == [0.0, 0.5]


def test_dataframe_with_several_names_shares_rows_by_context(two_runs) -> None:
    project, a, _ = two_runs
    df = project.df("loss", "acc", runs=a)
    assert len(df) == 6
    per_epoch = df[df["step"].isna()]
    assert per_epoch["acc"].tolist() == [0.0, 0.5] and per_epoch["loss"].isna().all()
    per_step = df[df["step"].notna()]
    assert per_step["acc"].isna().all() and len(per_step) == 4


def test_dataframe_bad_arguments(two_runs) -> None:
    project, _, _ = two_runs
    with pytest.raises(ValueError, match="at least one name"):
        hl.dataframe(store=project.store_path)
    with pytest.raises(TypeError, match="non-empty strings"):
        hl.dataframe("loss", 3, store=project.store_path)
    with pytest.raises(RunNotFound, match="No run matches 'nope'"):
        project.df("loss", runs="nope")


def test_dataframe_of_a_name_never_logged_is_empty_and_names_the_logged_ones(two_runs) -> None:
    project, _, _ = two_runs
    with pytest.warns(RuntimeWarning, match=r"nothing was logged under never in these runs \(a typo\? or new statements whose replay failed or diverged, "
                      r"which keeps none of their values\); names logged: acc, loss"):
        df = project.df("never")
    assert df.empty and list(df.columns)[:3] == ["run_id", "script", "code_version"] and "never" in df.columns
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no run chosen: nothing to call a typo
        assert project.df("loss", runs=[]).empty


def test_dataframe_says_which_names_were_never_logged_beside_others(two_runs) -> None:
    project, a, _ = two_runs
    with pytest.warns(RuntimeWarning, match="nothing was logged under nevr in these runs"):
        df = project.df("acc", "nevr", runs=a)
    assert df["acc"].tolist() == [0.0, 0.5] and df["nevr"].isna().all()
    # A name that is also a loop's gets the column `epoch_logged`; the warning names what was asked.
    with pytest.warns(RuntimeWarning, match="nothing was logged under epoch in these runs"):
        df = project.df("acc", "epoch", runs=a)
    assert "epoch_logged" in df.columns


def test_queries_on_a_project_without_a_store_create_nothing(project: Project) -> None:
    runs = project.runs()
    assert runs.empty and list(runs.columns) == query.RUN_COLUMNS
    with pytest.warns(RuntimeWarning, match="none is logged yet"):
        df = project.df("loss")
    assert df.empty and list(df.columns) == ["run_id", "script", "code_version", "loss"]
    with pytest.raises(RunNotFound):
        project.run_info("latest")
    assert not project.store_path.exists()


def test_run_lookup_errors(two_runs) -> None:
    project, a, b = two_runs
    assert project.run_info(a)["run_id"] == a
    assert project.run_info("latest")["run_id"] == b
    common = ""
    for x, y in zip(a, b):
        if x != y:
            break
        common += x
    with pytest.raises(RunNotFound) as e:
        project.run_info(common)
    assert "matches 2 runs" in str(e.value) and a in str(e.value) and b in str(e.value)
    with pytest.raises(RunNotFound) as e:
        project.run_info("zzz")
    assert "No run matches 'zzz'" in str(e.value)


def test_run_info(two_runs) -> None:
    project, a, _ = two_runs
    info = project.run_info(a)
    assert info["args"] == {"lr": 0.1, "opt": "sgd"}
    assert info["names"] == ["acc", "loss"]
    assert info["records"] == 6
    assert info["checkpoints"] == []
    assert info["status"] == "finished" and info["script"] == "train.py"


def test_code_diff_reports_code_and_args(project: Project) -> None:
    project, a, b = record_two_runs(project)
    text, changed = query.code_diff(a, b, store=project.store_path)
    assert text == "" and changed == {"lr": (0.1, 0.5)}
    project.write("train.py", TRAIN.replace("range(2)", "range(3)"))
    c = project.run(env={"HINDLOG_SET_opt": "adam"}).stdout.strip()
    text, changed = query.code_diff(a, c, store=project.store_path)
    assert "-for epoch in hl.loop(\"epoch\", range(2)):" in text
    assert "+for epoch in hl.loop(\"epoch\", range(3)):" in text
    assert changed == {"opt": ("sgd", "adam")}


def test_a_script_reads_its_own_records_at_once(project: Project) -> None:
    out = project.run(
        """
        import hindlog as hl
        for i in hl.loop("step", range(5)):
            hl.log("x", i * 2)
        df = hl.dataframe("x")                     # no waiting for the writer's timer
        print(df["x"].tolist(), hl.runs()["status"].tolist())
        """,
        env={"HINDLOG_FLUSH_INTERVAL": "30"},
    ).stdout.strip()
    assert out == "[0, 2, 4, 6, 8] ['running']"


def test_a_scripts_argparse_options_are_columns_beside_its_hl_args(project: Project) -> None:
    """What ``--where`` sees, the tables show: the options the script's argparse parser returned
    (defaults included) are columns of ``hl.dataframe`` and ``hl.runs()``; an ``hl.arg`` of the
    same name wins."""
    text = """
        import argparse
        import hindlog as hl
        p = argparse.ArgumentParser()
        p.add_argument("--lr", type=float, default=0.1)
        p.add_argument("--batch", type=int, default=8)
        a = p.parse_args()
        batch = hl.arg("batch", 16)
        for epoch in hl.loop("epoch", range(2)):
            hl.log("loss", a.lr * (epoch + 1))
        """
    project.run(text)
    project.run(text, args=["--lr", "0.5"])
    df = project.df("loss")
    assert sorted(df["lr"].unique().tolist()) == [0.1, 0.5] and set(df["batch"]) == {16}
    runs = hl.runs(store=project.store_path)
    assert sorted(runs["lr"].tolist()) == [0.1, 0.5]
    logs = project.cli("logs", "loss", "--format", "csv").stdout
    assert logs.splitlines()[0].startswith("run_id,script,code_version,") and ",lr," in logs.splitlines()[0], logs


def test_names_that_are_also_loops_columns_or_args_get_columns_of_their_own(project: Project) -> None:
    project.run(
        """
        import hindlog as hl
        step = hl.arg("step", 7)
        lr = hl.arg("lr", 0.5)
        for epoch in hl.loop("epoch", range(2)):
            hl.log("epoch", epoch * 10)
            hl.log("run_id", "x")
            hl.log("lr", lr / (epoch + 1))
            for s in hl.loop("step", range(2)):
                hl.log("v", s)
        """
    )
    df = project.df("epoch", "run_id", "v", "v", "lr")
    assert list(df.columns) == ["run_id", "script", "code_version", "lr_arg", "step_arg", "epoch", "step", "epoch_logged",
                                "run_id_logged", "v", "lr"]
    assert (df["step_arg"] == 7).all() and (df["lr_arg"] == 0.5).all()  # (an arg named like a logged name was left out)
    assert df.dropna(subset=["lr"])["lr"].tolist() == [0.5, 0.25]
    at_epoch = df[df["step"].isna()]
    assert at_epoch["epoch"].tolist() == [0, 1] and at_epoch["epoch_logged"].tolist() == [0, 10]
    assert (at_epoch["run_id_logged"] == "x").all() and df["run_id"].str.len().min() > 1
    assert df.dropna(subset=["v"])["v"].tolist() == [0, 1, 0, 1]
    out = project.cli("logs", "epoch").stdout
    assert "epoch_logged" in out and "Traceback" not in out


def test_an_int_arg_a_run_lacks_stays_an_int_in_the_runs_table(project: Project) -> None:
    project.run("import hindlog as hl\nhl.arg('epochs', 8)\nhl.log('x', 1)\n")
    project.run("import hindlog as hl\nhl.log('x', 1)\nraise SystemExit('stopped before its args')\n", check=False)
    runs = project.runs()
    assert str(runs["epochs"].dtype) == "Int64" and runs["epochs"].tolist()[0] == 8 and runs["epochs"].isna().tolist() == [False, True]


def test_an_arg_named_rank_is_not_taken_for_a_distributed_runs_rank(project: Project) -> None:
    """``hl.arg("rank", 16)`` (a LoRA rank): ``hindlog runs`` showed it in the column of a
    distributed run's rank."""
    project.run("import hindlog as hl\nhl.arg('rank', 16)\nhl.log('x', 1)\n")
    runs = project.runs()
    assert "rank" not in runs.columns and runs["rank_arg"].tolist() == [16]
    assert "rank" not in project.cli("runs").stdout.splitlines()[0].split()


def test_each_row_names_the_script_whose_run_logged_it(project: Project) -> None:
    """Two scripts that log the same name: their rows were told apart only by a join with hl.runs()."""
    for script, scale in (("train.py", 1), ("tools/finetune.py", 10)):
        project.run(f"import hindlog as hl\nfor e in hl.loop('epoch', range(2)):\n    hl.log('loss', {scale} * e)\n", script=script)
    df = project.df("loss")
    assert df.groupby("script")["loss"].sum().to_dict() == {"train.py": 1, "tools/finetune.py": 10}
    assert project.cli("logs", "loss", "--format", "csv").stdout.splitlines()[0].startswith("run_id,script,code_version,")
    only = project.cli("logs", "loss", "--script", "tools/finetune.py", "--format", "csv").stdout.splitlines()
    assert len(only) == 3 and all(",tools/finetune.py," in line for line in only[1:]), only
    none = project.cli("logs", "loss", "--script", "eval.py", check=False)
    assert none.returncode == 1 and "No run of eval.py is recorded here" in none.stderr, none.stderr


def test_a_name_logged_twice_in_one_context_is_warned_about_and_kept(project: Project) -> None:
    project.run(
        """
        import hindlog as hl
        for epoch in hl.loop("epoch", range(2)):
            hl.log("twice", 1.0)
            hl.log("twice", 2.0)
            hl.log("once", 3.0)
        """
    )
    with pytest.warns(RuntimeWarning, match=r"'twice' has 2 more value\(s\) in a loop context that already has one"):
        df = project.df("twice", "once")
    assert df["twice"].tolist() == [2.0, 2.0] and df["once"].tolist() == [3.0, 3.0]
    import sqlite3

    conn = sqlite3.connect(project.store_path / "catalog.db")
    try:
        stored = conn.execute("SELECT COUNT(*) FROM records r JOIN names n ON n.id=r.name WHERE n.name='twice'").fetchone()[0]
    finally:
        conn.close()
    assert stored == 4


def test_argv_options_are_named_as_argparse_names_them() -> None:
    from hindlog.query import argv_options

    argv = ["train.py", "pos", "--lr", "0.1", "--batch-size=32", "--fast", "--name", "resnet", "--last"]
    assert argv_options(argv) == {"lr": 0.1, "batch_size": 32, "fast": True, "name": "resnet", "last": True}
    assert argv_options(None) == {} and argv_options(["train.py"]) == {}


def test_code_diff_reports_argparse_options_too(project: Project) -> None:
    """The same command line, a changed argparse default: ``hindlog diff`` listed only the
    ``hl.arg`` values, while ``hl.runs()`` showed the option differ."""
    text = (
        "import argparse\nimport hindlog as hl\n"
        "ap = argparse.ArgumentParser()\nap.add_argument('--epochs', type=int, default=2)\na = ap.parse_args()\n"
        "for e in hl.loop('epoch', range(a.epochs)):\n    hl.log('x', e)\nprint(hl.run_id())\n"
    )
    a = project.run(text).stdout.strip()
    b = project.run(text.replace("default=2", "default=3")).stdout.strip()
    _text, changed = query.code_diff(a, b, store=project.store_path)
    assert changed == {"epochs": (2, 3)}, changed
