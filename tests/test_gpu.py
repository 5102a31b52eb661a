"""Record, restore and replay a model trained on a CUDA device (skipped without one).

The script asks PyTorch for deterministic kernels, so a run restored or replayed from a
checkpoint can be compared exactly with the original: what these tests check is that the
checkpoints carry GPU tensors and the CUDA generator (dropout on the GPU draws from it)
faithfully, and that replay workers train on the GPU as the record did.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from replay_helpers import ReplayProject, assert_same_values, dedent, ground_truth, insert_after

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    shutil.which("nvidia-smi") is None and not Path("/dev/nvidiactl").exists(), reason="needs a CUDA device")]

#: Dropout runs on the GPU (the CUDA generator), the DataLoader shuffles on the CPU (torch's
#: global generator); Adam's moments and the scheduler live beside the model.
GPU_SETUP = """
import json, sys
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import hindlog as hl

torch.use_deterministic_algorithms(True)
torch.manual_seed(0)
dev = "cuda"
X = torch.randn(512, 32)
Y = (X[:, 0] + X[:, 1] > 0).long()
loader = DataLoader(TensorDataset(X, Y), batch_size=64, shuffle=True)
model = nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Dropout(0.3), nn.Linear(256, 2)).to(dev)
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.8)
"""

GPU_TRAIN = GPU_SETUP + """
hl.checkpoints(model=model, opt=opt, sched=sched)

for epoch in hl.loop("epoch", range(6)):
    model.train()
    for x, y in hl.loop("step", loader):
        x, y = x.to(dev), y.to(dev)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    sched.step()
    hl.log("loss", loss.item())
    hl.log("noise", torch.rand(1, device=dev).item())
    hl.log("w", model[0].weight)
print(json.dumps({"run": hl.run_id()}))
"""

#: The training above, resumed in a fresh process from a checkpoint restored into new objects.
GPU_CONTINUE = GPU_SETUP + """
run, k = sys.argv[1], int(sys.argv[2])
hl.restore(run, iteration=k, rng=True, model=model, opt=opt, sched=sched)
assert model[0].weight.is_cuda and opt.state[model[0].weight]["exp_avg"].is_cuda
values = {}
for epoch in range(k + 1, 6):
    model.train()
    for x, y in loader:
        x, y = x.to(dev), y.to(dev)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    sched.step()
    values[epoch] = {"loss": loss.item(), "noise": torch.rand(1, device=dev).item(),
                     "w": model[0].weight.detach().cpu().numpy().tolist()}
print(json.dumps(values))
"""

DENSE = {"HINDLOG_EPSILON": "0.9", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}


@pytest.fixture
def gpu_run(tmp_path: Path) -> tuple[ReplayProject, str]:
    proj = ReplayProject(tmp_path)
    run = proj.record(dedent(GPU_TRAIN), env=DENSE)
    assert json.loads(proj.sql("SELECT env FROM runs WHERE run_id=?", (run,))[0][0])["gpus"], "the record lists its GPU"
    return proj, run


def _checkpointed(proj: ReplayProject, run: str) -> list[int]:
    return [r[0] for r in proj.sql(
        "SELECT DISTINCT c.iteration FROM checkpoints c JOIN runs u ON u.id=c.run WHERE u.run_id=? ORDER BY 1", (run,))]


def test_restore_a_gpu_checkpoint_into_fresh_objects_and_continue_identically(gpu_run: tuple[ReplayProject, str]) -> None:
    proj, run = gpu_run
    iterations = [i for i in _checkpointed(proj, run) if 1 <= i <= 3]
    assert iterations, f"no checkpoint to continue from: {_checkpointed(proj, run)}"
    k = iterations[0]
    proj.write("continue.py", dedent(GPU_CONTINUE))
    out = proj.python("continue.py", args=[run, str(k)], env=DENSE).stdout
    continued = {int(e): v for e, v in json.loads(out.strip().splitlines()[-1]).items()}
    assert sorted(continued) == list(range(k + 1, 6))
    for name in ("loss", "noise", "w"):
        recorded = {dict(ctx)["epoch"]: v for ctx, v in proj.values(name, run).items()}
        for epoch, got in continued.items():
            want = recorded[epoch].tolist() if name == "w" else recorded[epoch]
            assert got[name] == want, f"epoch {epoch} {name}: continued {str(got[name])[:80]}, recorded {str(want)[:80]}"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_replay_of_a_gpu_run_equals_a_fresh_run(gpu_run: tuple[ReplayProject, str], workers: str) -> None:
    proj, run = gpu_run
    text = insert_after(proj.read(), "loss.backward()", 'hl.log("gnorm", model[0].weight.grad.norm().item())')
    text = insert_after(text, 'hl.log("w", model[0].weight)', 'hl.log("bias", model[3].bias.sum().item())')
    proj.write("train.py", text)
    truth = ground_truth(proj.base, {"train.py": text}, ["gnorm", "bias"], env=DENSE)
    out = proj.replay("train.py", "--workers", workers, env=DENSE).stdout
    assert "recorded values checked" in out, out
    for name in ("gnorm", "bias"):
        assert_same_values(proj.values(name, run), truth[name], f"{workers} worker(s): {name}")
