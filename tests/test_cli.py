"""The `hindlog` command line: runs, show, logs, diff, and help for every command.

Most checks run the installed console script in a subprocess; the rest call
``cli.main`` in this process (same parser, same code, same SQLite store) to keep
the suite fast."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import HINDLOG_SCRIPT, Project, recorded_project
from hindlog import cli


def main(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    """``hindlog --store <project store> ARGS`` in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["--store", str(project.store_path), *args])
    return subprocess.CompletedProcess(["hindlog", *args], code, out.getvalue(), err.getvalue())

TRAIN = """
import hindlog as hl
lr = hl.arg("lr", 0.1)
for epoch in hl.loop("epoch", range(3)):
    hl.log("loss", round(1.0 / (epoch + 1) * lr, 6))
    hl.log("acc", epoch / 4)
print(hl.run_id())
"""


def record_two_runs(project: Project) -> tuple[Project, str, str]:
    a = project.run(TRAIN).stdout.strip()
    project.write("train.py", TRAIN.replace("range(3)", "range(2)"))
    b = project.run(env={"HINDLOG_SET_lr": "0.2"}).stdout.strip()
    return project, a, b


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Project, str, str]:
    return recorded_project(tmp_path_factory, "cli", record_two_runs)


@pytest.fixture
def two_runs(recorded: tuple[Project, str, str], clean_env: None) -> tuple[Project, str, str]:
    """Two recorded runs (b with other code and args) shared by the tests that only read them."""
    return recorded


def test_console_script_is_installed_and_has_help() -> None:
    assert HINDLOG_SCRIPT.exists()
    out = subprocess.run([str(HINDLOG_SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for name in ("runs", "show", "logs", "diff"):
        assert name in out.stdout
    import hindlog

    version = subprocess.run([str(HINDLOG_SCRIPT), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.strip() == f"hindlog {hindlog.__version__}"


def test_python_dash_m_hindlog_is_the_same_command_line(two_runs: tuple[Project, str, str]) -> None:
    project, a, b = two_runs
    via_script = project.cli("runs")
    proc = subprocess.run(
        [sys.executable, "-m", "hindlog", "runs"], cwd=project.root, env=project.env(), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert a in proc.stdout and b in proc.stdout
    assert proc.stdout == via_script.stdout
    # Errors exit the same way too, naming the program as the user knows it.
    bad = subprocess.run([sys.executable, "-m", "hindlog", "show", "no-such-run"], cwd=project.root, env=project.env(),
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("hindlog: ")


def _subcommands() -> dict[str, tuple[argparse.ArgumentParser, str | None]]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in sub._choices_actions}
    return {name: (p, helps.get(name)) for name, p in sub.choices.items()}


def test_every_subcommand_has_help_text(capsys: pytest.CaptureFixture[str]) -> None:
    commands = _subcommands()
    assert {"runs", "show", "logs", "diff"} <= set(commands)
    assert set(commands) == set(cli.COMMANDS), "a subcommand without an implementation, or the reverse"
    for name, (parser, help_text) in commands.items():
        assert help_text and len(help_text) > 10, f"`hindlog {name}` has no help text"
        with pytest.raises(SystemExit) as e:
            cli.main([name, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert f"usage: hindlog {name}" in out
    # The top-level help lists every command with its help text.
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    top = " ".join(capsys.readouterr().out.split())
    for name, (_, help_text) in commands.items():
        assert f"{name} {' '.join(help_text.split())}" in top


@pytest.mark.parametrize("argv", [
    ["run", "--epsilon", "0.1", "--set", "lr=0.1", "train.py", "--lr", "3", "-v"],
    ["--store", "/tmp/s", "run", "train.py"],
    ["--store=/tmp/s", "show", "latest", "--output"],
    ["logs", "loss", "acc", "--run", "a", "--format", "csv", "--store", "/tmp/t"],
    ["replay", "train.py", "--where", "lr > 0.01", "--workers", "2", "--dry-run"],
    ["gc", "--keep-last", "3"],
])
def test_the_parser_of_the_named_command_alone_parses_as_the_full_one(argv: list[str]) -> None:
    # main() builds only the named command's parser (hindlog run starts faster): same result.
    only = cli._command_named(argv)
    assert only is not None
    assert cli.build_parser(only=only).parse_args(argv) == cli.build_parser().parse_args(argv)


def test_every_argument_has_help_text() -> None:
    missing = [
        f"{name} {action.dest}"
        for name, (parser, _) in _subcommands().items()
        for action in parser._actions
        if action.dest != "help" and not action.help
    ]
    assert missing == []


def test_runs_on_an_empty_project(project: Project) -> None:
    out = project.cli("runs")
    assert "No runs yet" in out.stdout
    assert not project.store_path.exists()


def test_runs_lists_every_run(two_runs) -> None:
    project, a, b = two_runs
    out = project.cli("runs").stdout
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["run", "name", "script", "status"]
    assert a in lines[1] and b in lines[2]
    assert out.count("finished") == 2 and out.count("train.py") == 2
    code_a = project.run_info(a)["code_version"]
    assert code_a[:12] in lines[1]


def test_show_by_id_prefix_and_latest(two_runs) -> None:
    project, a, b = two_runs
    by_id = project.cli("show", a).stdout
    assert f"run          {a}" in by_id
    assert "status       finished" in by_id
    assert "lr=0.1" in by_id
    assert project.run_info(a)["code_version"] in by_id
    assert "records      6" in by_id and "acc, loss" in by_id
    latest = main(project, "show", "latest").stdout
    assert b in latest and "lr=0.2" in latest
    assert main(project, "show").stdout == latest                   # no run named: the latest
    prefix = b[:-2]
    assert not a.startswith(prefix)
    assert b in main(project, "show", prefix).stdout


def test_store_is_taken_before_or_after_the_command(two_runs, tmp_path) -> None:
    project, a, b = two_runs
    elsewhere = {"HINDLOG_DIR": str(tmp_path / "nowhere")}  # only --store finds the runs
    after = project.cli("runs", "--store", str(project.store_path), env=elsewhere).stdout
    before = project.cli("--store", str(project.store_path), "runs", env=elsewhere).stdout
    assert a in after and b in after and after == before
    shown = project.cli("show", b, "--store", str(project.store_path), env=elsewhere).stdout
    assert f"run          {b}" in shown and "project      " in shown


def test_show_unknown_or_ambiguous_run_fails_clearly(two_runs) -> None:
    project, a, b = two_runs
    out = project.cli("show", "nope", check=False)
    assert out.returncode != 0
    assert "No run matches 'nope'" in out.stderr and "Traceback" not in out.stderr
    common = os.path.commonprefix([a, b])
    assert common
    out = main(project, "show", common)
    assert out.returncode != 0 and "matches 2 runs" in out.stderr


def test_show_without_a_store(project: Project) -> None:
    for args in (["show", "latest"], ["show", "--output"]):
        out = project.cli(*args, check=False)
        assert out.returncode != 0 and "no runs" in out.stderr.lower() and "Traceback" not in out.stderr, out.stderr
        assert not project.store_path.exists()


def test_runs_filters_by_the_script_as_given_and_says_when_none_matches(two_runs) -> None:
    project, a, b = two_runs
    for given in ("train.py", "./train.py", str(project.root / "train.py")):
        listed = project.cli("runs", "--script", given).stdout
        assert a in listed and b in listed, (given, listed)
    for option in (["--script", "other.py"], ["--project", "nope"]):
        none = project.cli("runs", *option).stdout
        assert "among the 2 runs recorded here" in none and "No runs yet" not in none, none


def test_runs_and_show_give_a_runs_start_in_the_same_local_time(two_runs) -> None:
    project, a, _b = two_runs
    for zone in ("UTC", "America/New_York", "Asia/Kolkata"):
        listed = project.cli("runs", env={"TZ": zone}).stdout
        shown = project.cli("show", a, env={"TZ": zone}).stdout
        started = next(line for line in shown.splitlines() if line.startswith("started")).split(None, 1)[1].strip()
        assert started in next(line for line in listed.splitlines() if a in line), (zone, started, listed)


def test_an_arg_named_like_a_run_column_gets_a_column_of_its_own(project: Project) -> None:
    project.run("import hindlog as hl\nhl.arg('status', 'draft')\nhl.arg('name', 'baseline')\nhl.arg('duration', 30)\nhl.log('x', 1)\n")
    runs = project.runs()
    assert runs["status"].tolist() == ["finished"] and runs["name"].isna().all() and runs["duration"].iloc[0] < 30
    assert runs[["status_arg", "name_arg", "duration_arg"]].iloc[0].tolist() == ["draft", "baseline", 30]
    listed = project.cli("runs").stdout
    assert "finished" in listed and "draft" not in listed, listed


def test_logs_csv_matches_the_python_api(two_runs) -> None:
    project, a, b = two_runs
    out = project.cli("logs", "loss", "acc", "--format", "csv").stdout
    got = pd.read_csv(io.StringIO(out))
    expected = project.df("loss", "acc")
    assert list(got.columns) == list(expected.columns) == ["run_id", "script", "code_version", "lr", "epoch", "loss", "acc"]
    assert got["run_id"].tolist() == expected["run_id"].tolist() == [a] * 3 + [b] * 2
    assert got["epoch"].tolist() == [0, 1, 2, 0, 1]
    np.testing.assert_allclose(got["loss"], expected["loss"])
    np.testing.assert_allclose(got["acc"], expected["acc"])
    np.testing.assert_allclose(got["lr"], [0.1] * 3 + [0.2] * 2)


def test_logs_json_and_table_and_run_filter(two_runs) -> None:
    project, a, b = two_runs
    rows = json.loads(main(project, "logs", "loss", "--format", "json", "--run", b).stdout)
    assert [r["run_id"] for r in rows] == [b, b]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert [r["loss"] for r in rows] == [0.2, 0.1]
    table = main(project, "logs", "acc", "--run", a).stdout
    assert table.splitlines()[0].split() == ["run_id", "script", "code_version", "lr", "epoch", "acc"]
    assert len(table.splitlines()) == 4 and "0.50" in table
    both = json.loads(main(project, "logs", "acc", "--format", "json", "--run", a, "--run", "latest").stdout)
    assert {r["run_id"] for r in both} == {a, b}


def test_logs_of_arrays_as_json(project: Project) -> None:
    project.run("import numpy as np, hindlog as hl\nhl.log('w', np.arange(3))\nhl.log('d', {'k': [1]})\n")
    rows = json.loads(main(project, "logs", "w", "d", "--format", "json").stdout)
    assert rows[0]["w"] == [0, 1, 2] and rows[0]["d"] == {"k": [1]}


def test_logs_of_an_unknown_name(two_runs) -> None:
    project, _, _ = two_runs
    out = main(project, "logs", "nothing")
    assert out.returncode != 0 and "No values logged under nothing" in out.stderr
    assert "`hindlog logs` with no name lists the names logged" in out.stderr, out.stderr


def test_logs_without_names_lists_the_names_logged(two_runs) -> None:
    project, a, _ = two_runs
    out = main(project, "logs")
    assert out.returncode == 0 and out.stdout.splitlines()[-1].split() == ["acc", "loss"], out.stdout
    assert "hindlog logs acc loss" in out.stdout


def test_show_says_why_a_run_got_no_checkpoint(project: Project) -> None:
    project.write("train.py", """
import time
import numpy as np
import hindlog as hl
state = np.zeros(10)
hl.checkpoints(state=state)
for epoch in hl.loop("epoch", range(5)):
    state += 1
    time.sleep(0.05)
""")
    project.run(env={"HINDLOG_EPSILON": "0.001"})
    shown = main(project, "show").stdout
    # Which of the two fixed costs the line names depends on the machine: the larger one.
    line = next(x for x in shown.splitlines() if x.startswith("checkpoints  0"))
    assert line.startswith(("checkpoints  0 (hindlog's start-up", "checkpoints  0 (the snapshot of the code")), line
    assert "ε = 0.001" in line, line


def test_show_says_why_the_charge_in_all_ended_above_epsilon() -> None:
    from hindlog.cli import _over_bound_reason

    decided = {"elapsed_seconds": 10.0, "spent_seconds": 0.4, "background_weight": 1.2, "persister_cpu_seconds": 0.5}
    charged = {"background_weight": 2.0, "persister_cpu_seconds": 0.6, "last_decision": decided}
    # 0.4 s charged at the decision, then 0.8 x 0.5 s recharged and 2.0 x 0.1 s of the last write.
    reason = _over_bound_reason(charged, in_all=1.0, window=11.0, epsilon=0.05)
    assert reason is not None and "10.0s after the process started, 4.00% was charged; after it," in reason, reason
    assert "measured later at 2.00 (it was 1.20), charged the background work before it 0.40s more" in reason, reason
    assert "the last checkpoints' writes) was charged 0.20s" in reason and "blocked time" not in reason, reason
    assert "the machine's load rising" in reason, reason
    # The weight unchanged: the rest after the decision is blocked time; nothing said of a weight.
    steady = {**charged, "background_weight": 1.2}
    reason = _over_bound_reason(steady, in_all=0.62, window=11.0, epsilon=0.05)
    assert reason is not None and "0.10s more was blocked time" in reason and "weight" not in reason, reason
    # Already above ε at the decision: start-up costs of a short run.
    short = {**charged, "last_decision": {**decided, "elapsed_seconds": 1.0}}
    assert "already, by hindlog's start-up" in _over_bound_reason(short, in_all=1.0, window=2.0, epsilon=0.05)
    assert _over_bound_reason(charged, in_all=0.5, window=11.0, epsilon=0.05) is None  # under ε: nothing to explain


def test_a_run_keeps_what_was_charged_at_its_last_checkpoint_decision(project: Project) -> None:
    project.write("train.py", """
import time
import numpy as np
import hindlog as hl
state = np.zeros(1000)
hl.checkpoints(state=state)
for epoch in hl.loop("epoch", range(8)):
    state += 1
    time.sleep(0.03)
""")
    project.run(env={"HINDLOG_EPSILON": "0.5"})  # checkpoints, so that `show` gives the charge
    info = project.run_info()
    charged = info["info"]["checkpoint_charged"]
    decided = charged["last_decision"]
    # The last decision came in the last iteration, before the process's end, and saw part of its costs.
    assert 0.03 * 7 < decided["elapsed_seconds"] < charged["elapsed_seconds"], charged
    assert charged["elapsed_seconds"] >= info["ended"] - info["started"], "the process ran before and after the run"
    assert 0 < decided["spent_seconds"] and decided["persister_cpu_seconds"] <= charged["persister_cpu_seconds"], charged
    assert decided["background_weight"] >= 1.0
    # `show` gives the charge in all over the same window.
    in_all = sum(charged[k] for k in ("startup_seconds", "exit_seconds", "blocked_seconds", "writer_cpu_seconds",
                                      "nested_loop_seconds")) + charged["background_weight"] * charged["persister_cpu_seconds"]
    shown = main(project, "show").stdout
    assert f"; {in_all / charged['elapsed_seconds'] * 100:.2f}% charged in all" in shown, (shown, charged)


def test_diff_shows_code_and_args_changes(project: Project) -> None:
    project, a, b = record_two_runs(project)
    out = project.cli("diff", a, b).stdout
    assert "args:" in out and "lr: 0.1 -> 0.2" in out
    assert '-for epoch in hl.loop("epoch", range(3)):' in out
    assert '+for epoch in hl.loop("epoch", range(2)):' in out
    same = main(project, "diff", a, a).stdout
    assert same.strip() == "(no code changes)"
    # One run: compared with the working tree.
    project.write("train.py", TRAIN.replace("range(3)", "range(5)"))
    out = main(project, "diff", b).stdout
    assert '-for epoch in hl.loop("epoch", range(2)):' in out and '+for epoch in hl.loop("epoch", range(5)):' in out
    bad = main(project, "diff", "nope")
    assert bad.returncode != 0 and "No run matches" in bad.stderr


def test_diff_outside_git(plain_project: Project) -> None:
    a = plain_project.run(TRAIN).stdout.strip()
    plain_project.write("train.py", TRAIN.replace("0.1", "0.3"))
    b = plain_project.run().stdout.strip()
    out = main(plain_project, "diff", a, b).stdout
    assert "lr: 0.1 -> 0.3" in out
    assert '-lr = hl.arg("lr", 0.1)' in out and '+lr = hl.arg("lr", 0.3)' in out


def test_store_option_and_environment_variable(two_runs, tmp_path) -> None:
    project, a, b = two_runs
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for extra_args, env in ((["--store", str(project.store_path)], None), ([], {"HINDLOG_DIR": str(project.store_path)})):
        out = subprocess.run(
            [str(HINDLOG_SCRIPT), *extra_args, "runs"],
            cwd=elsewhere,
            env=project.env(env),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert a in out.stdout and b in out.stdout
    # A diff given the project's store from elsewhere reads the project's repository.
    out = subprocess.run(
        [str(HINDLOG_SCRIPT), "--store", str(project.store_path), "diff", a, b],
        cwd=elsewhere, env=project.env(), capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "lr: 0.1 -> 0.2" in out.stdout and "+for epoch" in out.stdout
    assert not (elsewhere / ".hindlog").exists()


def test_logs_tells_a_logged_nan_from_no_value_and_keeps_integers(project: Project) -> None:
    project.run(
        "import hindlog as hl\nhl.log('answer', 42)\n"
        "for epoch in hl.loop('epoch', range(3)):\n"
        "    hl.log('loss', float('nan') if epoch == 1 else 1.0 / (epoch + 1))\n"
        "    hl.log('big', float('inf') if epoch == 2 else 3)\n"
    )
    df = project.df("answer", "big")
    assert str(df["answer"].dtype) == "Int64" and df["answer"].iloc[0] == 42
    rows = json.loads(main(project, "logs", "answer", "loss", "big", "--format", "json").stdout)
    assert [r["answer"] for r in rows] == [42, None, None, None]  # 42, not 42.0
    assert [r["loss"] for r in rows] == [None, 1.0, "NaN", 1 / 3]
    assert [r["big"] for r in rows] == [None, 3, 3, "Infinity"]
    csv = pd.read_csv(io.StringIO(main(project, "logs", "answer", "loss", "--format", "csv").stdout), keep_default_na=False)
    assert csv["loss"].tolist() == ["", "1.0", "nan", "0.3333333333333333"]
    assert csv["answer"].astype(str).tolist() == ["42", "", "", ""]
    table = main(project, "logs", "answer", "loss").stdout.splitlines()
    assert table[1].split()[-1] == "42" and table[3].split()[-1] == "nan"
    assert "NaN" not in "\n".join(table) and "<NA>" not in "\n".join(table)


def test_logs_csv_holds_arrays_and_dicts_whole(project: Project) -> None:
    # A 2,000-element array was written as NumPy's display text: "[0. 0.333 ... 666.3]".
    project.run("import numpy as np, hindlog as hl\n"
                "for epoch in hl.loop('epoch', range(2)):\n"
                "    hl.log('big', np.arange(2000, dtype=np.float64) / 3 + epoch)\n"
                "    hl.log('d', {'lr': 0.1, 'layers': [epoch, 2]})\n")
    csv = pd.read_csv(io.StringIO(main(project, "logs", "big", "d", "--format", "csv").stdout))
    assert [json.loads(cell) for cell in csv["big"]] == [(np.arange(2000) / 3 + e).tolist() for e in range(2)]
    assert [json.loads(cell) for cell in csv["d"]] == [{"lr": 0.1, "layers": [e, 2]} for e in range(2)]


def test_logs_json_of_nested_nans_a_logged_none_and_a_missing_arg(project: Project) -> None:
    project.run("import numpy as np, hindlog as hl\nhl.arg('lr', 0.1)\n"
                "hl.log('vec', np.array([np.nan, 1.0]))\nhl.log('d', {'a': float('nan'), 'b': [float('-inf')]})\n"
                "for i in hl.loop('it', range(3)):\n    hl.log('maybe', None if i == 1 else 0.5)\n")
    project.run("import hindlog as hl\nhl.log('vec', [2.0])\n")  # no hl.arg: no lr
    rows = json.loads(main(project, "logs", "vec", "d", "maybe", "--format", "json").stdout)
    assert rows[0]["vec"] == ["NaN", 1.0] and rows[0]["d"] == {"a": "NaN", "b": ["-Infinity"]}
    assert [r["it"] for r in rows[:4]] == [None, 0, 1, 2]
    assert [r["maybe"] for r in rows[:4]] == [None, 0.5, None, 0.5]
    assert rows[0]["lr"] == 0.1 and rows[-1]["lr"] is None and rows[-1]["vec"] == [2.0]
    table = main(project, "logs", "maybe").stdout.splitlines()
    assert [l.split()[-1] for l in table[1:]] == ["0.5", "None", "0.5"]
    nested = main(project, "logs", "d", "vec").stdout  # the floats inside a list or dict, as Python shows them
    assert "{'a': nan, 'b': [-inf]}" in nested and "[2.0]" in nested and "'2.0'" not in nested, nested
    assert project.df("maybe")["maybe"].tolist()[1] is None


def test_a_store_option_that_names_a_file_says_so(tmp_path: Path) -> None:
    plain = tmp_path / "notes.txt"
    plain.write_text("not a store\n")
    for command in (["runs"], ["show"], ["logs", "loss"]):
        out = subprocess.run([str(HINDLOG_SCRIPT), "--store", str(plain), *command], capture_output=True, text=True,
                             timeout=60, cwd=tmp_path)
        assert out.returncode == 2 and f"{plain} is a file, not a hindlog store" in out.stderr, (command, out.stderr)
