"""Code versions: the git snapshot under refs/hindlog/runs/<id> (and that the user's
HEAD, branch, index and working tree stay exactly as they were), the file snapshot
outside git, and the ways snapshotting can fail without hurting the run."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import Project
from hindlog import codeversion
from hindlog.errors import CodeVersionError
from hindlog.objects import digest

LOG_SCRIPT = """
import hindlog as hl
hl.log("x", 1.0)
print(hl.run_id())
"""


def tree_files(project: Project, rev: str) -> set[str]:
    out = project.git_bytes("ls-tree", "-r", "-z", "--name-only", rev)
    return {os.fsdecode(p) for p in out.split(b"\0") if p}


def working_tree_digest(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in (".git", ".hindlog")]
        for f in filenames:
            p = Path(dirpath) / f
            st = p.lstat()
            out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest() + f":{st.st_mode}:{st.st_mtime_ns}"
    return out


def user_git_state(project: Project) -> dict[str, object]:
    return {
        "HEAD": project.git("rev-parse", "HEAD", check=False),
        "branch": project.git("symbolic-ref", "-q", "HEAD", check=False),
        "refs": project.git("for-each-ref", "--format=%(refname) %(objectname)", "refs/heads", "refs/tags"),
        "reflog": project.git("reflog", "--format=%H %gs", check=False),
        "stash": project.git("stash", "list"),
        "diff_cached": project.git("diff", "--cached"),
        "ls_files": project.git("ls-files", "-s"),
        "status": project.git("status", "--porcelain", "--untracked-files=all"),
        # The store itself is ignored (it holds a '*' .gitignore); everything else ignored stays so.
        "ignored": [
            line
            for line in project.git("status", "--porcelain", "--ignored", "--untracked-files=all").splitlines()
            if line.startswith("!!") and not line.startswith("!! .hindlog/")
        ],
        "files": working_tree_digest(project.root),
    }


def make_messy_work_tree(project: Project) -> None:
    """Committed, modified, staged, deleted, untracked and ignored files."""
    project.write("train.py", LOG_SCRIPT)
    project.write("staged.txt", "v1\n")
    project.write("deleted.txt", "gone soon\n")
    project.git("add", "-A")
    project.git("commit", "-q", "-m", "second commit")
    project.write("staged.txt", "v2 (staged)\n")
    project.git("add", "staged.txt")
    project.write("staged.txt", "v3 (working tree)\n")
    (project.root / "deleted.txt").unlink()
    project.write("new_staged.txt", "new and staged\n")
    project.git("add", "new_staged.txt")
    project.write("untracked.py", "print('untracked')\n")
    project.write("sub/dir/untracked.txt", "nested untracked\n")
    project.write("x.ignored", "ignored by pattern\n")
    project.write("ignored_dir/y.txt", "ignored directory\n")


def test_git_snapshot_holds_the_working_tree_and_leaves_the_users_repo_alone(project: Project) -> None:
    make_messy_work_tree(project)
    project.git("status")  # let git refresh its index stat cache before we take the bytes
    before = user_git_state(project)
    index_before = (project.root / ".git" / "index").read_bytes()

    run_id = project.run().stdout.strip()

    index_after = (project.root / ".git" / "index").read_bytes()
    assert index_after == index_before, "the user's index file was rewritten"
    after = user_git_state(project)
    for key in before:
        assert after[key] == before[key], f"{key} changed"
    assert after["branch"].strip() == "refs/heads/main"

    ref = f"refs/hindlog/runs/{run_id}"
    commit = project.git("rev-parse", "--verify", ref).strip()
    info = project.run_info(run_id)
    assert info["code_version"] == commit and info["code_kind"] == "git"
    assert project.git("rev-parse", f"{commit}^").strip() == before["HEAD"].strip()  # parent is HEAD
    shown = project.cli("show", run_id).stdout
    assert f"code         {commit} (git: the working tree with uncommitted changes, on commit {before['HEAD'].strip()[:12]})" in shown, shown
    assert f"cwd          {project.root}" in shown, shown
    assert project.git("log", "-1", "--format=%s", commit).strip() == "hindlog: snapshot of the working tree"
    # The same code again is the same version; changed code is another.
    again = project.run().stdout.strip()
    assert project.run_info(again)["code_version"] == commit
    project.write("untracked.py", "print('changed')\n")
    assert project.run_info(project.run().stdout.strip())["code_version"] != commit
    files = tree_files(project, commit)
    assert files == {
        "README.md", ".gitignore", "train.py", "staged.txt", "new_staged.txt", "untracked.py", "sub/dir/untracked.txt"
    }
    assert project.git("show", f"{commit}:staged.txt") == "v3 (working tree)\n"
    assert project.git("show", f"{commit}:untracked.py") == "print('untracked')\n"
    # read_files gives the same snapshot back.
    read = codeversion.read_files(project.store(), commit)
    assert set(read) == files and read["staged.txt"] == b"v3 (working tree)\n"
    # No temporary index is left behind.
    assert not list((project.root / ".git").glob("*.lock"))


def test_a_temporary_index_left_by_a_killed_snapshot_is_removed_by_a_later_one(project: Project) -> None:
    git_dir = project.root / ".git"
    stale = git_dir / "hindlog-index-killed"  # what a run killed during its snapshot leaves
    stale.write_bytes(b"DIRC")
    os.utime(stale, (1_000_000_000, 1_000_000_000))
    in_flight = git_dir / "hindlog-index-running"  # another run's snapshot, still going on
    in_flight.write_bytes(b"DIRC")

    codeversion.working_tree(project.root)

    assert not stale.exists()
    assert in_flight.exists()
    assert sorted(p.name for p in git_dir.glob("hindlog-index-*")) == ["hindlog-index-running"]


@pytest.mark.usefixtures("clean_env")
def test_git_snapshot_in_a_repo_without_commits(tmp_path) -> None:
    root = tmp_path / "fresh"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    project = Project(root, is_git=True)
    run_id = project.run(LOG_SCRIPT).stdout.strip()
    commit = project.git("rev-parse", f"refs/hindlog/runs/{run_id}").strip()
    assert project.git("rev-list", "--parents", "-n", "1", commit).split() == [commit]  # no parent
    assert tree_files(project, commit) == {"train.py"}
    assert project.git("rev-parse", "--verify", "-q", "HEAD", check=False) == ""  # still unborn
    assert project.git("status", "--porcelain") == "?? train.py\n"


def test_git_snapshot_with_a_detached_head(project: Project) -> None:
    project.write("train.py", LOG_SCRIPT)
    project.git("add", "train.py")
    project.git("commit", "-q", "-m", "add train")
    head = project.git("rev-parse", "HEAD").strip()
    project.git("checkout", "-q", "--detach")
    run_id = project.run().stdout.strip()
    assert project.git("rev-parse", "HEAD").strip() == head
    assert project.git("symbolic-ref", "-q", "HEAD", check=False) == ""  # still detached
    # A clean working tree: the run's code is HEAD's commit itself.
    assert project.git("rev-parse", f"refs/hindlog/runs/{run_id}").strip() == head
    assert project.run_info(run_id)["code_version"] == head


def test_file_names_that_look_like_pathspec_magic_are_snapshotted(project: Project) -> None:
    names = [":odd.py", "[ab].py", "a.py", "with space.py", "ünïcode.py", "-dash.py", "*.py"]
    for name in names:
        (project.root / name).write_text(f"# {name}\n")
    raw = os.path.join(os.fsencode(project.root), b"latin1-\xe9.py")  # not valid UTF-8
    with open(raw, "w") as f:
        f.write("# latin-1 name\n")
    proc = project.run(LOG_SCRIPT)
    run_id = proc.stdout.strip()
    info = project.run_info(run_id)
    assert info["flags"] == [] and info["code_kind"] == "git", proc.stderr
    files = tree_files(project, info["code_version"])
    assert set(names) <= files
    assert os.fsdecode(b"latin1-\xe9.py") in files
    assert project.git("show", f"{info['code_version']}:[ab].py") == "# [ab].py\n"


def test_large_untracked_files_are_left_out_with_a_warning(project: Project) -> None:
    (project.root / "big.bin").write_bytes(b"\0" * (5 * 2**20 + 1))
    (project.root / "small.bin").write_bytes(b"\1" * 100)
    # Left out by its literal name: as a glob, "[ab].bin" would leave out a.bin and b.bin too.
    (project.root / "[ab].bin").write_bytes(b"\0" * (5 * 2**20 + 1))
    (project.root / "a.bin").write_bytes(b"\1" * 100)
    proc = project.run(LOG_SCRIPT)
    info = project.run_info(proc.stdout.strip())
    files = tree_files(project, info["code_version"])
    assert {"small.bin", "a.bin"} <= files and not {"big.bin", "[ab].bin"} & files
    assert "left 2 large untracked file(s)" in proc.stderr and "[ab].bin" in proc.stderr
    assert info["flags"] == []


def test_a_failing_git_snapshot_warns_flags_the_run_and_training_goes_on(project: Project) -> None:
    # A file where git wants the refs/hindlog directory: `git update-ref` must fail.
    (project.root / ".git" / "refs" / "hindlog").write_text("not a directory\n")
    proc = project.run(
        """
        import hindlog as hl
        for i in hl.loop("epoch", range(3)):
            hl.log("x", i)
        """
    )
    assert "could not snapshot the code" in proc.stderr
    runs = project.runs()
    assert runs["status"].tolist() == ["finished"]
    assert list(runs["flags"][0]) == ["no_code_version"]
    assert runs["code_version"][0] is None
    assert project.values("x") == [0, 1, 2]


def test_file_snapshot_outside_git(plain_project: Project) -> None:
    p = plain_project
    p.write("train.py", LOG_SCRIPT)
    p.write("conf/config.yaml", "lr: 0.1\n")
    p.write("lib/util.py", "X = 1\n")
    p.write("notes.md", "notes\n")
    (p.root / "data.bin").write_bytes(b"\0\1\2")
    p.write(".venv/lib/site.py", "skipped\n")
    p.write("__pycache__/cached.py", "skipped\n")
    p.write(".hidden/secret.py", "skipped\n")
    p.write("build/gen.py", "skipped\n")
    first = p.run().stdout.strip()
    second = p.run().stdout.strip()
    info = p.run_info(first)
    version = info["code_version"]
    assert info["code_kind"] == "snapshot" and version.startswith("snap-") and info["flags"] == []
    assert p.run_info(second)["code_version"] == version  # same code, same version
    files = codeversion.read_files(p.store(), version)
    assert set(files) == {"train.py", "conf/config.yaml", "lib/util.py", "notes.md"}
    assert files["lib/util.py"] == b"X = 1\n" and files["train.py"] == LOG_SCRIPT.lstrip("\n").encode()
    assert codeversion.read_file(p.store(), version, "conf/config.yaml") == b"lr: 0.1\n"
    assert codeversion.read_file(p.store(), version, "data.bin") is None
    dest = codeversion.materialize(p.store(), version, p.root.parent / "materialized")
    assert (dest / "lib" / "util.py").read_text() == "X = 1\n"
    # Stored files are content-addressed and checked when read back.
    store = p.store()
    util_object = store.objects.path(digest(b"X = 1\n"))
    assert util_object.read_bytes() == b"X = 1\n"
    util_object.write_bytes(b"X = 666\n")
    # Said as the run's code that cannot be read, with what that means.
    with pytest.raises(CodeVersionError, match=rf"the code of {version} cannot be read \(object \w+ .*is corrupt.*cannot be replayed"):
        codeversion.read_files(store, version)
    util_object.write_bytes(b"X = 1\n")
    # Changed code is a new version, and the diff shows the change.
    p.write("lib/util.py", "X = 2\n")
    third = p.run().stdout.strip()
    v3 = p.run_info(third)["code_version"]
    assert v3 != version
    text = codeversion.diff(p.store(), version, v3)
    assert "-X = 1" in text and "+X = 2" in text and "lib/util.py" in text
    assert "train.py" not in text


def test_file_snapshot_flushes_its_files_and_their_directories_before_its_manifest(
    plain_project: Project, flushed_paths: list[str]
) -> None:
    p = plain_project
    p.write("train.py", LOG_SCRIPT)
    p.write("lib/util.py", "X = 1\n")
    flushed = flushed_paths
    store = p.store()
    version = codeversion.snapshot(store, "run-1")
    assert version.kind == "snapshot"
    paths = [Path(store.objects.filename(digest(p.root.joinpath(rel).read_bytes()))).resolve() for rel in ("train.py", "lib/util.py")]
    # Each new file and its directory, then the manifest (written under a temporary name,
    # then its directory): a crash can leave files no manifest names, never the reverse.
    for path in paths:
        assert str(path) in flushed and str(path.parent) in flushed
    last_file = max(flushed.index(str(path)) for path in paths)
    assert len(flushed) > last_file + 1 and all(".tmp-" in f or Path(f).is_dir() for f in flushed[last_file + 1 :])
    # Files an earlier snapshot stored were flushed then.
    flushed.clear()
    assert codeversion.snapshot(store, "run-2").version == version.version
    assert not {str(path) for path in paths} & set(flushed)


def test_without_git_installed_the_code_is_snapshotted_as_files(project: Project) -> None:
    project.write("train.py", LOG_SCRIPT)
    proc = project.run(env={"PATH": ""})
    info = project.run_info(proc.stdout.strip())
    assert info["code_kind"] == "snapshot" and info["code_version"].startswith("snap-"), proc.stderr
    assert info["flags"] == [] and info["status"] == "finished"
    assert "train.py" in codeversion.read_files(project.store(), info["code_version"])
    assert project.git("for-each-ref", "refs/hindlog") == ""


def test_git_diff_between_runs_and_against_the_working_tree(project: Project) -> None:
    project.write("model.py", "LAYERS = 2\n")
    a = project.run(LOG_SCRIPT).stdout.strip()
    project.write("model.py", "LAYERS = 3\n")
    b = project.run().stdout.strip()
    store = project.store()
    va, vb = project.run_info(a)["code_version"], project.run_info(b)["code_version"]
    text = codeversion.diff(store, va, vb)
    assert "-LAYERS = 2" in text and "+LAYERS = 3" in text and "train.py" not in text
    assert codeversion.diff(store, vb, None) == ""  # the working tree is run b's code
    project.write("model.py", "LAYERS = 4\n")
    assert "+LAYERS = 4" in codeversion.diff(store, vb, None)
    assert codeversion.read_file(store, va, "model.py") == b"LAYERS = 2\n"
    assert codeversion.read_file(store, va, "missing.py") is None
    # Materializing a git version gives the snapshot's files.
    dest = codeversion.materialize(store, va, project.root.parent / "mat")
    assert (dest / "model.py").read_text() == "LAYERS = 2\n"
    # None of this touched the user's index or working tree.
    assert project.git("status", "--porcelain") == "?? model.py\n?? train.py\n"


@pytest.mark.parametrize("n", [3])
def test_each_run_gets_its_own_ref(project: Project, n: int) -> None:
    project.write("train.py", LOG_SCRIPT)
    ids = [project.run().stdout.strip() for _ in range(n)]
    refs = project.git("for-each-ref", "--format=%(refname)", "refs/hindlog/runs/").split()
    assert refs == [f"refs/hindlog/runs/{i}" for i in ids]
    # Unchanged code: the snapshots share one tree.
    trees = {project.git("rev-parse", f"{r}^{{tree}}").strip() for r in refs}
    assert len(trees) == 1


def test_helper_commands_run_without_pipes(tmp_path: Path) -> None:
    from hindlog.processes import run_captured

    done = run_captured(["sh", "-c", "cat; echo out; echo err >&2; exit 3"], input=b"in\n")
    assert (done.returncode, done.stdout, done.stderr) == (3, b"in\nout\n", b"err\n")
    assert run_captured(["git", "-C", str(tmp_path), "--version"]).stdout.startswith(b"git version")
    with pytest.raises(subprocess.TimeoutExpired):
        run_captured(["sleep", "5"], timeout=0.2)
    with pytest.raises(OSError):
        run_captured(["no-such-command-here"])


PERSISTENT_LOADER = """
import torch
import hindlog as hl

X = torch.randn(128, 4)
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X), batch_size=32, shuffle=True,
                                     num_workers=2, persistent_workers=True)
w = torch.zeros(4)
hl.checkpoints(w=w)
for epoch in hl.loop("epoch", range(3)):
    for (x,) in hl.loop("step", loader):
        w += x.mean(0)
    hl.log("w", float(w.sum()))
print(hl.run_id())
"""


@pytest.mark.slow
def test_a_dataloader_forking_persistent_workers_while_the_code_is_snapshotted(project: Project) -> None:
    """The workers fork while git runs in the background: a pipe they inherit (subprocess's
    own, for the exec) once kept the run from ending for 120 s and lost its code version."""
    pytest.importorskip("torch")
    project.write("train.py", PERSISTENT_LOADER)
    for _ in range(3):
        proc = project.run(timeout=60)
        info = project.run_info(proc.stdout.strip())
        assert info["code_kind"] == "git" and info["code_version"], proc.stderr


def test_a_script_edited_after_its_run_started_is_flagged(project: Project) -> None:
    """The next experiment's edit made while this run still imports its libraries: the run
    executes the code as Python read it, but the snapshot taken at its first hindlog call holds
    the edit, and its replays then fail or diverge with no word of why."""
    text = (
        "import os, time\n"
        "while not os.path.exists('edited'):\n"
        "    time.sleep(0.01)  # (a slow import of torch, while the user edits)\n"
        "import hindlog as hl\n"
        "for epoch in hl.loop('epoch', range(2)):\n"
        "    hl.log('x', epoch)\n"
    )
    project.write("train.py", text)
    proc = project.start()
    time.sleep(0.3)
    project.write("train.py", text + "# the next experiment\n")
    (project.root / "edited").write_text("")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "train.py changed after this run started" in err, err
    assert "code_changed_after_start" in project.run_info()["flags"]
    # A run whose code stays as it was is not flagged.
    (project.root / "edited").unlink()
    second = project.start()
    time.sleep(0.3)
    (project.root / "edited").write_text("")
    out, err = second.communicate(timeout=60)
    assert "changed after this run started" not in err, err
    assert "code_changed_after_start" not in project.run_info()["flags"]
