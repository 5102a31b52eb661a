"""A small CNN with long epochs and a validation loop (synthetic 16x16 images, 10 classes)."""

import torch
import torch.nn as nn

import hindlog as hl

torch.manual_seed(0)
epochs = hl.arg("epochs", 6)
n = hl.arg("samples", 8192)

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
    val_loss, correct = 0.0, 0
    with torch.no_grad():
        for x, y in hl.loop("val", val_loader):
            out = model(x)
            val_loss += nn.functional.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
    hl.log("train_loss", loss.item())
    hl.log("val_loss", val_loss / len(val))
    hl.log("val_acc", correct / len(val))
