"""pyflor 2.5.6 variant of bench/workloads/cnn.py: same data, seeds, model and loops.

Differences forced by pyflor (see bench/peers/README.md):
- pyflor restores only the objects given to ``Flor.checkpoints`` when it skips a
  nested loop, so the values a skipped loop leaves behind (the last ``loss``,
  ``val_loss``, ``correct``) live in ``carry``, a dict with
  ``state_dict``/``load_state_dict`` (pyflor saves and restores such objects with
  torch.save/torch.load). hindlog restores loop-carried locals itself.
- nested loops get distinct names: pyflor counts iterations of the main loop by
  the first nested loop's name, so two unnamed nested loops would be miscounted.
- arguments come from PEER_ARG_<name> environment variables (pyflor 2.5.6 has
  no ``flor.arg``); defaults equal hindlog's.
"""

import os

import torch
import torch.nn as nn

import flor
from flor import MTK as Flor


class Carry(dict):
    def state_dict(self):
        return dict(self)

    def load_state_dict(self, d):
        self.update(d)


torch.manual_seed(0)
epochs = int(os.environ.get("PEER_ARG_epochs", 6))
n = int(os.environ.get("PEER_ARG_samples", 8192))

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
carry = Carry()
Flor.checkpoints(model, opt, sched, carry)

for epoch in Flor.loop(range(epochs)):
    model.train()
    for x, y in Flor.loop(loader, name="step"):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        carry["loss"] = loss.detach()
    loss = carry["loss"]
    sched.step()
    model.eval()
    val_loss, correct = 0.0, 0
    with torch.no_grad():
        for x, y in Flor.loop(val_loader, name="val"):
            out = model(x)
            val_loss += nn.functional.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            carry["val_loss"], carry["correct"] = val_loss, correct
    val_loss, correct = carry["val_loss"], carry["correct"]
    flor.log("train_loss", loss.item())
    flor.log("val_loss", val_loss / len(val))
    flor.log("val_acc", correct / len(val))
