"""Scaling workload: an MLP of a chosen size in MB of float32 parameters, fine-tuned with Adam.

The first half of its hidden layers is frozen (the fine-tuning shape): their
tensors never change, so hindlog stores them once however many checkpoints it
takes, while a ``torch.save`` per epoch writes them again every epoch. The
trainable half and its Adam state change every step.

Arguments (``hl.arg``, overridable with ``HINDLOG_SET_<name>``): ``size_mb``
(parameters, MB), ``epochs``, ``steps`` (optimizer steps per epoch).
``BENCH_TORCH_SAVE_DIR=<dir>``: also ``torch.save`` the model and optimizer
state into a new file there after every epoch (the naive checkpointing that
bench/bench_scaling.py compares against).
"""

import os

import torch
import torch.nn as nn

import hindlog as hl

torch.manual_seed(0)
size_mb = hl.arg("size_mb", 8.0)
epochs = hl.arg("epochs", 10)
steps = hl.arg("steps", 4)
save_dir = os.environ.get("BENCH_TORCH_SAVE_DIR")

# Four width x width layers hold most of the parameters: about 4 * width**2 float32 values.
width = max(16, int((float(size_mb) * 2**20 / 4 / 4) ** 0.5))
layers = [nn.Linear(256, width), nn.ReLU()]
for _ in range(4):
    layers += [nn.Linear(width, width), nn.ReLU()]
layers += [nn.Linear(width, 10)]
model = nn.Sequential(*layers)
for layer in list(model)[:6]:  # the input layer and the next two (about half of the weights) stay frozen
    for p in layer.parameters():
        p.requires_grad_(False)
opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
X = torch.randn(steps * 32, 256)
Y = torch.randint(0, 10, (steps * 32,))
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=32, shuffle=True)
hl.checkpoints(model=model, opt=opt)

for epoch in hl.loop("epoch", range(epochs)):
    model.train()
    for x, y in hl.loop("step", loader):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    hl.log("loss", loss.item())
    if save_dir:
        torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, os.path.join(save_dir, f"epoch-{epoch}.pt"))
