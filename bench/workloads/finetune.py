"""Fine-tuning shape: a 6.4M-parameter MLP (26 MB; 77 MB of state with Adam's two moments)
trained with Adam, epochs of about 0.3 s. ``HINDLOG_SET_width=2048 HINDLOG_SET_steps=3``: 156 MB
of state and 0.13 s epochs (bench_record's finetune-large). ``HINDLOG_SET_device=cuda`` trains on
the GPU (bench_record's finetune-gpu, with a wider model and larger batches)."""

import torch
import torch.nn as nn

import hindlog as hl

torch.manual_seed(0)
epochs = hl.arg("epochs", 30)
width = hl.arg("width", 1376)
steps = hl.arg("steps", 16)
batch = hl.arg("batch", 16)
device = hl.arg("device", "cpu")

model = nn.Sequential(
    nn.Linear(512, width), nn.ReLU(),
    nn.Linear(width, width), nn.ReLU(),
    nn.Linear(width, width), nn.ReLU(),
    nn.Linear(width, width), nn.ReLU(),
    nn.Linear(width, 10),
).to(device)
opt = torch.optim.Adam(model.parameters(), lr=1e-4)
X = torch.randn(steps * batch, 512)
Y = torch.randint(0, 10, (steps * batch,))
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=batch, shuffle=True)
hl.checkpoints(model=model, opt=opt)

for epoch in hl.loop("epoch", range(epochs)):
    model.train()
    for x, y in hl.loop("step", loader):
        x, y = x.to(device), y.to(device)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    hl.log("loss", loss.item())
