"""A small CNN trained on synthetic images: the script the demo records and replays."""

import torch
import torch.nn as nn

import hindlog as hl

torch.manual_seed(0)
epochs = hl.arg("epochs", 8)
lr = hl.arg("lr", 0.05)

# Synthetic 10-class "images": each class is a noisy template.
templates = torch.randn(10, 1, 16, 16)
labels = torch.randint(0, 10, (8192,))
images = templates[labels] + 1.5 * torch.randn(8192, 1, 16, 16)
train = torch.utils.data.TensorDataset(images[:6144], labels[:6144])
val_x, val_y = images[6144:], labels[6144:]
loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True)

model = nn.Sequential(
    nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 4 * 4, 10),
)
opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
hl.checkpoints(model=model, opt=opt, sched=sched)

for epoch in hl.loop("epoch", range(epochs)):
    model.train()
    for x, y in hl.loop("step", loader):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    sched.step()
    model.eval()
    with torch.no_grad():
        pred = model(val_x).argmax(1)
    acc = (pred == val_y).float().mean().item()
    hl.log("loss", loss.item())
    hl.log("acc", acc)
    print(f"epoch {epoch}: loss {loss.item():.3f} acc {acc:.3f}")
