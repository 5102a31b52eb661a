"""pyflor 2.5.6 variant of bench/workloads/finetune.py: same data, seeds, model and loops.

``carry`` keeps the last ``loss`` of the nested loop so that a replay that skips
the loop can still log it (pyflor restores only checkpointed objects; see cnn.py).
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
epochs = int(os.environ.get("PEER_ARG_epochs", 30))
width = int(os.environ.get("PEER_ARG_width", 1376))
steps = int(os.environ.get("PEER_ARG_steps", 16))

model = nn.Sequential(
    nn.Linear(512, width), nn.ReLU(),
    nn.Linear(width, width), nn.ReLU(),
    nn.Linear(width, width), nn.ReLU(),
    nn.Linear(width, width), nn.ReLU(),
    nn.Linear(width, 10),
)
opt = torch.optim.Adam(model.parameters(), lr=1e-4)
X = torch.randn(steps * 16, 512)
Y = torch.randint(0, 10, (steps * 16,))
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=16, shuffle=True)
carry = Carry()
Flor.checkpoints(model, opt, carry)

for epoch in Flor.loop(range(epochs)):
    model.train()
    for x, y in Flor.loop(loader, name="step"):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        carry["loss"] = loss.detach()
    loss = carry["loss"]
    flor.log("loss", loss.item())
