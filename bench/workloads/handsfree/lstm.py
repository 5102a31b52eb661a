"""An LSTM regressor with dropout, a shuffling DataLoader and a validation loop; the last
training batch's ``loss`` is read after the nested loops. A plain script: no hindlog in it.
Sizes: BENCH_EPOCHS, BENCH_SAMPLES."""

import os

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 64, num_layers=2, dropout=0.2, batch_first=True)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(64, 1)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(self.drop(out[:, -1]))


epochs = int(os.environ.get("BENCH_EPOCHS", "10"))
n = int(os.environ.get("BENCH_SAMPLES", "4096"))
torch.manual_seed(0)
X = torch.randn(n + n // 4, 20, 8)
Y = 0.1 * X.sum(dim=(1, 2)).unsqueeze(1)
loader = DataLoader(TensorDataset(X[:n], Y[:n]), batch_size=64, shuffle=True)
val_loader = DataLoader(TensorDataset(X[n:], Y[n:]), batch_size=256)
model = Net()
opt = torch.optim.Adam(model.parameters(), lr=0.005)
for epoch in range(epochs):
    model.train()
    for x, y in loader:
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    model.eval()
    val_loss = 0.0
    with torch.no_grad():
        for xb, yb in val_loader:
            val_loss += nn.functional.mse_loss(model(xb), yb, reduction="sum").item()
    print(f"epoch {epoch} last batch loss {loss.item():.6f} val {val_loss / (n // 4):.6f}")
