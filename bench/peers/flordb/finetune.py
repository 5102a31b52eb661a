"""flordb 4.0.1 variant of bench/workloads/finetune.py: same data, seeds, model and loops, same logged values.

flor.arg / flor.loop / flor.log instead of hindlog's calls; nothing to declare for
checkpoints (flordb replay re-executes the run from the start). Arguments default
to PEER_ARG_<name> (hindlog's defaults when unset). PEER_FLOR_OFF=1 runs the same
script without flordb (the plain side of the overhead ratio). See cnn.py and
bench/peers/README.md.
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
epochs = flor.arg("epochs", int(os.environ.get("PEER_ARG_epochs", 40)))
width = flor.arg("width", int(os.environ.get("PEER_ARG_width", 2048)))
steps = flor.arg("steps", int(os.environ.get("PEER_ARG_steps", 3)))

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

for epoch in flor.loop("epoch", range(epochs)):
    model.train()
    for x, y in flor.loop("step", loader):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    flor.log("loss", loss.item())
