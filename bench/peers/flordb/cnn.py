"""flordb 4.0.1 variant of bench/workloads/cnn.py: same data, seeds, model, loops and logged values.

Differences from the hindlog workload (see bench/peers/README.md):
- ``import flordb as flor``; ``flor.arg`` / ``flor.loop`` / ``flor.log`` instead of
  hindlog's calls. flordb has no checkpoint declaration: its replay re-executes
  the run from the start, so there is nothing like ``hl.checkpoints``.
- arguments: ``flor.arg(name, default)`` with the default taken from the
  ``PEER_ARG_<name>`` environment variable (hindlog's default when unset), so the
  value is recorded by flordb and the benchmark passes quick settings the way it
  does for pyflor. flordb replay needs at least one ``flor.arg``.
- ``PEER_FLOR_OFF=1`` runs the same script without flordb (not even imported):
  arg/loop/log become pass-throughs. That is the "plain" side of the record
  overhead ratio.
"""

import os

import torch
import torch.nn as nn

if os.environ.get("PEER_FLOR_OFF") == "1":
    import types

    flor = types.SimpleNamespace(arg=lambda name, default=None: default,
                                 loop=lambda name, it: it, log=lambda name, value: value)
else:
    import flordb as flor

torch.manual_seed(0)
epochs = flor.arg("epochs", int(os.environ.get("PEER_ARG_epochs", 6)))
n = flor.arg("samples", int(os.environ.get("PEER_ARG_samples", 8192)))

templates = torch.randn(10, 1, 16, 16)
labels = torch.randint(0, 10, (n + 2048,))
images = templates[labels] + 1.5 * torch.randn(n + 2048, 1, 16, 16)
train = torch.utils.data.TensorDataset(images[:n], labels[:n])
val = torch.utils.data.TensorDataset(images[n:], labels[n:])
loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True)
val_loader = torch.utils.data.DataLoader(val, batch_size=256)

model = nn.Sequential(
    nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 4 * 4, 10),
)
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
sched = torch.optim.lr_scheduler.StepLR(opt, 2, 0.5)

for epoch in flor.loop("epoch", range(epochs)):
    model.train()
    for x, y in flor.loop("step", loader):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    sched.step()
    model.eval()
    val_loss, correct = 0.0, 0
    with torch.no_grad():
        for x, y in flor.loop("val", val_loader):
            out = model(x)
            val_loss += nn.functional.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
    flor.log("train_loss", loss.item())
    flor.log("val_loss", val_loss / len(val))
    flor.log("val_acc", correct / len(val))
