"""Distributed training under ``torchrun`` (gloo on CPU, two ranks): each rank records a run of
its own; a replay under the same launcher replays each rank's run of the launch, skipping only
the loops that every rank has a checkpoint for (a rank that skipped a loop the other runs would
leave it waiting in an all-reduce), matched by name (a loop that only rank 0 runs comes first);
a replay or resume outside the launcher is refused with what to do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from replay_helpers import PY, ReplayProject, dedent
from script_edits import insert_after

torch = pytest.importorskip("torch")
if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)
if not sys.platform.startswith("linux"):
    pytest.skip("torchrun's standalone rendezvous is tested on Linux", allow_module_level=True)

TRAIN = dedent("""
    import torch
    import torch.distributed as dist
    import torch.nn as nn
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    import hindlog as hl

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    X = torch.randn(256, 8)
    Y = (X[:, :2].sum(1) > 0).long()
    data = TensorDataset(X, Y)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=32, sampler=sampler)
    torch.manual_seed(1)
    model = DDP(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 2)))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    hl.checkpoints(model=model, opt=opt)
    for epoch in hl.loop("epoch", range(4)):
        sampler.set_epoch(epoch)
        if rank == 0:  # a loop of one rank, before the loop all ranks run
            for k in hl.loop("probe", range(2)):
                probe = float(model.module[0].weight.sum())
        for x, y in hl.loop("step", loader):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        total = torch.tensor([loss.item()])
        dist.all_reduce(total)
        if rank == 0:
            hl.log("loss", total.item())
    dist.destroy_process_group()
""")
NEW = 'hl.log("wnorm", float(sum(p.detach().norm() for p in model.parameters())))'
DENSE = {"HINDLOG_EPSILON": "0.9"}


def torchrun(proj: ReplayProject, *args: str, env: dict[str, str] | None = None) -> str:
    """``torchrun --standalone --nproc_per_node 2 ARGS`` in the project; its output."""
    proc = subprocess.run([PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args],
                          cwd=proj.root, env=proj.env(env), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def wnorms(proj: ReplayProject, run: str) -> list[float]:
    return [v for _ctx, v in sorted(proj.values("wnorm", run).items())]


def test_each_rank_replays_its_own_run_and_skips_only_what_every_rank_can(tmp_path: Path) -> None:
    proj = ReplayProject(tmp_path)
    proj.write("train.py", TRAIN)
    proj.commit("ddp")
    torchrun(proj, "train.py", env=DENSE)
    runs = proj.run_ids()
    assert len(runs) == 2, runs
    ranks = {}
    for run in runs:
        (env,) = proj.sql("SELECT env FROM runs WHERE run_id=?", (run,))[0]
        ranks[json.loads(env)["distributed"]["rank"]] = run
    assert sorted(ranks) == [0, 1]
    shown = proj.hindlog("show", ranks[1], check=True).stdout
    assert "distributed  rank 1 of 2 processes of one launch" in shown, shown
    listed = {line.split()[0]: line.split() for line in proj.hindlog("runs", check=True).stdout.splitlines()[1:]}
    assert listed[ranks[0]][2] == "0" and listed[ranks[1]][2] == "1", listed  # run, script, rank, status, ...
    import hindlog as hl

    frame = hl.runs(store=proj.store)
    assert dict(zip(frame["run_id"], frame["rank"])) == {ranks[0]: 0, ranks[1]: 1}, frame
    checkpointed = proj.sql("SELECT DISTINCT iteration FROM checkpoints c JOIN runs r ON r.id=c.run WHERE r.run_id=?", (ranks[1],))
    assert (1,) in checkpointed, "the test needs a checkpoint of rank 1 at iteration 1 to take away"
    # Rank 1's policy skipped iteration 1 (taken away here): no rank may skip that iteration's loop.
    proj.sql("DELETE FROM checkpoints WHERE iteration=1 AND run=(SELECT id FROM runs WHERE run_id=?)", (ranks[1],))

    proj.write("train.py", insert_after(TRAIN, "dist.all_reduce(total)", NEW))
    # Outside the launcher: refused, with the command that replays it.
    alone = proj.replay("train.py", check=False)
    assert alone.returncode != 0, alone.stdout
    assert "processes of a distributed launch (torchrun)" in alone.stderr, alone.stderr
    assert any(f"torchrun --nproc_per_node 2 -m hindlog replay train.py --run-id {run}" in alone.stderr for run in runs), alone.stderr

    # --run-id (torchrun takes --run for its --run-path) naming rank 1's run: each rank replays its own.
    out = torchrun(proj, "-m", "hindlog", "replay", "train.py", "--run-id", ranks[1], "--workers", "2")
    for run in runs:
        assert f"run {run}: 4 new values stored" in out, out
    assert "one worker, not 2" in out, out

    truth = ReplayProject(tmp_path, "truth")
    truth.write("train.py", insert_after(TRAIN, "dist.all_reduce(total)", NEW))
    truth.commit("ddp with the new statement")
    torchrun(truth, "train.py", env=DENSE)
    expected = wnorms(truth, truth.run_ids()[0])
    assert len(expected) == 4
    for run in runs:
        assert wnorms(proj, run) == expected, run

    # A second launch: --all under torchrun names two launches, which one replay cannot join.
    proj.write("train.py", TRAIN)
    torchrun(proj, "train.py", env=DENSE)
    proj.write("train.py", insert_after(TRAIN, "dist.all_reduce(total)", NEW))
    both = subprocess.run([PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "hindlog",
                           "replay", "train.py", "--all"], cwd=proj.root, env=proj.env(), capture_output=True, text=True, timeout=240)
    assert both.returncode != 0 and "these runs are of 2 distributed launches" in both.stdout + both.stderr, both.stderr

    # Resuming one rank alone would train from its own latest checkpoint: refused.
    proj.sql("UPDATE runs SET status='killed' WHERE run_id=?", (ranks[0],))
    resumed = proj.hindlog("resume", ranks[0])
    assert resumed.returncode != 0 and "resuming a distributed run is not supported" in resumed.stderr, resumed.stderr
