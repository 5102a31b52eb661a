"""How runs end: kill -9, SIGTERM, SIGINT (KeyboardInterrupt), an uncaught exception,
os._exit. Real processes, real signals; the catalog is checked afterwards.

Scripts that wait for a signal sleep in short steps, like a training loop that keeps
running bytecode: CPython runs a Python signal handler only between bytecodes, and a
signal that lands just before a long blocking call (one ``time.sleep(30)``; the window
widens while another thread, such as hindlog's writer or code snapshot, holds the GIL)
is handled only when that call returns."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from conftest import Lines, Project, stop, wait_for


def integrity_ok(project: Project) -> bool:
    conn = project.db()
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def test_kill_9_loses_at_most_the_last_half_second_and_shows_killed(project: Project) -> None:
    # Default flush interval, no hl.loop: only the writer's timer commits.
    proc = project.start(
        """
        import time
        import hindlog as hl
        hl.log("start", 1)
        print(hl.run_id(), flush=True)
        i = 0
        while True:
            hl.log("t", time.time())
            hl.log("i", i)
            hl.log("payload", [i, "x" * 20])
            i += 1
            time.sleep(0.002)  # commits of a few hundred records: on a loaded machine a commit of
                               # thousands can take longer than the interval this test bounds
        """
    )
    lines = Lines(proc)
    try:
        run_id = lines.next()
        time.sleep(1.5)
        killed_at = time.time()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        stop(proc)
    assert proc.returncode == -signal.SIGKILL
    assert integrity_ok(project)
    ts = project.values("t")
    ii = project.values("i")
    payload = project.values("payload")
    assert len(ii) > 100, "the writer committed almost nothing before the kill"
    # What is there is a consistent prefix of what was logged: no gaps, no torn rows.
    assert ii == list(range(len(ii)))
    assert len(ts) - len(ii) in (0, 1) and len(ii) - len(payload) in (0, 1)
    assert payload == [[k, "x" * 20] for k in range(len(payload))]
    assert ts == sorted(ts)
    missing = killed_at - ts[-1]
    assert missing <= 0.5, f"the last {missing:.3f} s of records were lost"
    runs = project.runs()
    assert runs["run_id"].tolist() == [run_id] and runs["status"].tolist() == ["killed"]
    conn = project.db()
    try:
        assert conn.execute("SELECT status FROM runs").fetchone()[0] == "running"  # as the dead process left it
    finally:
        conn.close()
    shown = project.cli("show", run_id).stdout
    assert "killed" in shown
    assert "killed" in project.cli("runs").stdout
    # The store stays usable: the next run records normally.
    project.run("import hindlog as hl\nhl.log('after', 1)\n", script="next.py")
    assert project.runs()["status"].tolist() == ["killed", "finished"]


def test_kill_9_keeps_every_main_loop_iteration_that_ended(project: Project) -> None:
    # The timer would commit only every 30 s: what survives was committed as each iteration
    # ended. Iterations of 1 ms are committed together (at most every COMMIT_GAP, 0.2 s), slow
    # ones each.
    proc = project.start(
        """
        import time
        import hindlog as hl
        for epoch in hl.loop("epoch", range(1000)):
            for step in hl.loop("step", range(10)):
                hl.log("fast", epoch * 10 + step)
            if epoch < 300:
                time.sleep(0.001)
                continue
            hl.log("slow", epoch)
            time.sleep(0.3)
            print(epoch, flush=True)
            if epoch == 303:
                while True:                  # killed mid-iteration
                    time.sleep(0.05)
        """,
        env={"HINDLOG_FLUSH_INTERVAL": "30"},
    )
    lines = Lines(proc)
    try:
        assert [lines.next() for _ in range(4)] == ["300", "301", "302", "303"]
        # Iteration 302 ended 0.3 s before "303" was printed; the timer is 30 s away, so only
        # the iteration's end can commit it.
        wait_for(lambda: project.values("slow")[:3] == [300, 301, 302], timeout=10, interval=0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        stop(proc)
    # (303's record may be in the commit of 302's end too: it is logged right after.)
    assert project.values("slow") in ([300, 301, 302], [300, 301, 302, 303])
    # Every iteration up to 302 ended, and its records were committed at its end.
    assert project.values("fast")[: 303 * 10] == list(range(303 * 10))
    assert integrity_ok(project)


def test_sigterm_flushes_everything_and_marks_killed(project: Project) -> None:
    proc = project.start(
        """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # even if our parent ignores SIGTERM
        import hindlog as hl
        for i in hl.loop("step", range(10**9)):
            hl.log("i", i)
            hl.log("arr", [i])
            if i == 5000:
                print("mid", flush=True)
                while True:                          # SIGTERM arrives here, mid-iteration
                    time.sleep(0.05)
        """,
        env={"HINDLOG_FLUSH_INTERVAL": "30"},       # only the exit path can have written the last records
    )
    lines = Lines(proc)
    try:
        assert lines.next() == "mid"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        stop(proc)
    assert proc.returncode == -signal.SIGTERM  # the signal's default action still ends the process
    assert project.values("i") == list(range(5001))
    assert project.values("arr")[-1] == [5000]
    runs = project.runs()
    assert runs["status"].tolist() == ["killed"] and runs["ended"].notna().all()
    df = project.df("i")
    assert df["step"].tolist() == list(range(5001))
    assert integrity_ok(project)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_that_ends_leaves_its_parents_run_alone(project: Project) -> None:
    """A child forked while a run records (a multiprocessing pool's worker) holds a copy of the
    recorder: ended by SIGTERM (``Pool.terminate``) or by ``sys.exit`` (atexit), it finished the
    parent's run, marked it ended while it still trained, and wrote the queued records again."""
    project.run(
        """
        import os, signal, sys, time
        import hindlog as hl
        for epoch in hl.loop("epoch", range(4)):
            hl.log("e", epoch)
            pid = os.fork()
            if pid == 0:
                if epoch % 2:
                    sys.exit(0)          # atexit runs in the child
                time.sleep(30)           # until the parent's SIGTERM
                os._exit(0)
            time.sleep(0.1)
            if epoch % 2 == 0:
                os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
            print(hl.run_id(), flush=True)
        """,
        env={"HINDLOG_FLUSH_INTERVAL": "30"},  # the records stay queued while the children end
    )
    assert project.values("e") == [0, 1, 2, 3]
    runs = project.runs()
    assert runs["status"].tolist() == ["finished"], runs
    assert integrity_ok(project)


def test_keyboard_interrupt_flushes_everything_and_marks_killed(project: Project) -> None:
    proc = project.start(
        """
        import signal, time
        signal.signal(signal.SIGINT, signal.default_int_handler)  # even if our parent ignores SIGINT
        import hindlog as hl
        for i in range(3000):
            hl.log("i", i)
        print("logged", flush=True)
        while True:
            time.sleep(0.05)
        """,
        env={"HINDLOG_FLUSH_INTERVAL": "30"},
    )
    lines = Lines(proc)
    try:
        assert lines.next() == "logged"
        proc.send_signal(signal.SIGINT)
        _, err = lines.rest(timeout=30)
    finally:
        stop(proc)
    assert "KeyboardInterrupt" in err
    assert proc.returncode != 0
    assert project.values("i") == list(range(3000))
    runs = project.runs()
    assert runs["status"].tolist() == ["killed"] and runs["ended"].notna().all()


INTERRUPT_WHILE_FINISHING = """
import os, signal, threading, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if our parent ignores SIGINT
import hindlog as hl
from hindlog import record

def interrupt_when_finishing():
    rec = record._recorder
    while not rec.finished:
        time.sleep(0.0002)
    os.kill(os.getpid(), signal.SIGINT)

for epoch in hl.loop("epoch", range(3)):
    for i in hl.loop("step", range(1000)):
        hl.log("i", epoch * 1000 + i)
threading.Thread(target=interrupt_when_finishing, daemon=True).start()
"""


def test_ctrl_c_while_the_run_finishes_at_exit_waits_until_everything_is_saved(project: Project) -> None:
    # Ctrl-C a moment after the last line: it reached hindlog's exit handler, which lost the
    # records still queued, the code version and the run's end (the run then showed "killed").
    out = project.run(INTERRUPT_WHILE_FINISHING, env={"HINDLOG_FLUSH_INTERVAL": "30"})
    assert out.returncode == 0, out.stderr
    assert project.values("i") == list(range(3000))
    info = project.run_info()
    assert info["status"] == "finished" and info["ended"] is not None and info["code_version"]
    assert "saving the run's records before stopping" in out.stderr


def test_sigterm_while_the_run_finishes_at_exit_dies_once_everything_is_saved(project: Project) -> None:
    """A scheduler's SIGTERM a moment after the script's last line: the handler saw a run
    already finishing and let the process die at once, which lost every record still queued
    and left the run "running". It now dies by SIGTERM once the run is saved."""
    script = INTERRUPT_WHILE_FINISHING.replace("os.kill(os.getpid(), signal.SIGINT)", "os.kill(os.getpid(), signal.SIGTERM)")
    out = project.run(script, env={"HINDLOG_FLUSH_INTERVAL": "30"}, check=False)
    assert out.returncode == -signal.SIGTERM, (out.returncode, out.stderr)
    assert project.values("i") == list(range(3000))
    info = project.run_info()
    assert info["status"] == "finished" and info["ended"] is not None and info["code_version"]


def test_ctrl_c_during_finish_is_raised_once_the_run_is_saved(project: Project) -> None:
    out = project.run(
        INTERRUPT_WHILE_FINISHING + """
try:
    hl.finish()
except KeyboardInterrupt:
    print("interrupted after finish", record._recorder is None, flush=True)
""",
        env={"HINDLOG_FLUSH_INTERVAL": "30"},
    )
    assert out.returncode == 0, out.stderr
    assert "interrupted after finish True" in out.stdout
    assert project.values("i") == list(range(3000))
    assert project.run_info()["status"] == "finished"


def test_ctrl_c_while_a_hands_free_run_finishes_keeps_the_scripts_exit_code(project: Project) -> None:
    project.write("train.py", INTERRUPT_WHILE_FINISHING)
    out = project.cli("run", "train.py", check=False, env={"HINDLOG_FLUSH_INTERVAL": "30"})
    assert out.returncode == 0 and "interrupted" not in out.stderr, out.stderr
    assert project.values("i") == list(range(3000))
    assert project.run_info()["status"] == "finished"


def test_a_sigint_handler_of_the_script_is_left_alone_while_the_run_finishes(project: Project) -> None:
    # A script's graceful stop (a flag its handler sets) gets the signal; hindlog does not turn
    # it into a KeyboardInterrupt after saving.
    out = project.run(
        INTERRUPT_WHILE_FINISHING.replace(
            "signal.signal(signal.SIGINT, signal.default_int_handler)  # even if our parent ignores SIGINT",
            "stop = []\nsignal.signal(signal.SIGINT, lambda signum, frame: stop.append(signum))")
        + """
hl.finish()
while not stop:
    time.sleep(0.001)
print("stop requested", stop, flush=True)
""",
        env={"HINDLOG_FLUSH_INTERVAL": "30"},
    )
    assert out.returncode == 0, out.stderr
    assert "stop requested [2]" in out.stdout and "saving the run's records" not in out.stderr
    assert project.values("i") == list(range(3000))


def test_uncaught_exception_marks_failed_and_keeps_every_record(project: Project) -> None:
    proc = project.run(
        """
        import hindlog as hl
        for epoch in hl.loop("epoch", range(10)):
            for step in hl.loop("step", range(100)):
                hl.log("loss", epoch + step / 100)
            if epoch == 3:
                raise RuntimeError("boom in epoch 3")
        """,
        env={"HINDLOG_FLUSH_INTERVAL": "30"},
        check=False,
    )
    assert proc.returncode == 1
    assert "RuntimeError: boom in epoch 3" in proc.stderr  # the user's traceback is still printed
    df = project.df("loss")
    assert len(df) == 400 and df["epoch"].max() == 3
    runs = project.runs()
    assert runs["status"].tolist() == ["failed"] and runs["ended"].notna().all()
    assert "\nerror        RuntimeError: boom in epoch 3\n" in project.cli("show").stdout


@pytest.mark.parametrize("call, status, code", [("sys.exit(1)", "failed", 1), ('sys.exit("diverged")', "failed", 1),
                                                ("sys.exit(0)", "finished", 0), ("sys.exit()", "finished", 0),
                                                ("exit(2)", "failed", 2), ("quit(3)", "failed", 3), ("exit()", "finished", 0)])
def test_sys_exit_with_a_non_zero_status_marks_the_run_failed(project: Project, call: str, status: str, code: int) -> None:
    """``sys.exit`` and the builtins ``exit`` and ``quit`` end a script without an exception that
    reaches ``sys.excepthook``: a non-zero status still marks the run failed (resume takes it)."""
    proc = project.run(
        f"""
        import sys
        import hindlog as hl
        for epoch in hl.loop("epoch", range(5)):
            hl.log("loss", 1.0 / (epoch + 1))
            if epoch == 2:
                {call}
        """,
        check=False,
    )
    assert proc.returncode == code
    assert project.values("loss") == [1.0, 0.5, 1.0 / 3]
    runs = project.runs()
    assert runs["status"].tolist() == [status] and runs["ended"].notna().all()
    if '"' in call:  # a message: what Python prints, and what `hindlog show` names
        assert "\nerror        diverged\n" in project.cli("show").stdout


def test_caught_exception_is_not_a_failure(project: Project) -> None:
    project.run(
        """
        import hindlog as hl
        try:
            for i in hl.loop("epoch", range(5)):
                hl.log("x", i)
                if i == 2:
                    raise ValueError("handled")
        except ValueError:
            pass
        hl.log("after", 1)
        """
    )
    assert project.runs()["status"].tolist() == ["finished"]
    assert project.values("x") == [0, 1, 2] and project.values("after") == [1]


def test_os_exit_leaves_a_run_shown_as_killed(project: Project) -> None:
    proc = project.run(
        """
        import os
        import hindlog as hl
        hl.log("x", 1)
        hl.runs()                                    # commits x
        os._exit(3)                                  # no atexit, no finish
        """,
        check=False,
    )
    assert proc.returncode == 3
    assert project.values("x") == [1]
    assert project.runs()["status"].tolist() == ["killed"]


def test_sigterm_flushes_a_second_run_started_with_init(project: Project) -> None:
    proc = project.start(
        """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        import hindlog as hl
        hl.init(name="one")
        hl.log("a", 1)
        hl.finish()
        hl.init(name="two")
        for i in range(3000):
            hl.log("b", i)
        print("logged", flush=True)
        while True:
            time.sleep(0.05)
        """,
        env={"HINDLOG_FLUSH_INTERVAL": "30"},
    )
    lines = Lines(proc)
    try:
        assert lines.next() == "logged"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        stop(proc)
    runs = project.runs()
    assert runs["status"].tolist() == ["finished", "killed"]
    assert project.values("b") == list(range(3000))
    assert runs["ended"].notna().all()


def _unshare_works() -> bool:
    import shutil
    import subprocess

    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _unshare_works(),
                    reason="needs Linux PID namespaces (unshare --pid, as root)")
def test_a_run_in_another_pid_namespace_is_judged_by_its_heartbeat(project: Project) -> None:
    """A container that shares the host's name has pids of its own: a live run there was shown
    killed (its pid absent here), and a dead one with pid 1 was shown running for ever (pid 1
    lives here), which kept `hindlog rm` and `resume` refusing it."""
    import subprocess

    from conftest import PY

    project.write("train.py", """
import time
import hindlog as hl
for epoch in hl.loop("epoch", range(10**6)):
    hl.log("e", epoch)
    if epoch == 0:
        print(hl.run_id(), flush=True)
    time.sleep(0.05)
""")
    # 300 processes first: the script's pid in its namespace is one this namespace has not got.
    proc = subprocess.Popen(["unshare", "--pid", "--kill-child", "--mount-proc", "sh", "-c",
                             f"for i in $(seq 300); do /bin/true; done; {PY} train.py"],
                            cwd=project.root, env=project.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = Lines(proc)
    try:
        run_id = lines.next()
        wait_for(lambda: len(project.values("e")) > 3)
        assert project.runs()["status"].tolist() == ["running"]
        assert project.run_info(run_id)["pid"] > 300
        removal = project.cli("rm", run_id, "--yes", check=False)
        assert removal.returncode != 0 and "is still recording" in removal.stderr, removal.stderr
    finally:
        stop(proc)
    # Dead now; its heartbeat falls silent: once as old as a remote run's limit, it reads killed.
    conn = project.db()
    with conn:
        conn.execute("UPDATE runs SET pid=1, heartbeat=heartbeat-600")  # (pid 1: what it had as the namespace's first)
    conn.close()
    assert project.runs()["status"].tolist() == ["killed"]
