"""pyflor 2.5.6 variant of bench/workloads/lstm.py: same data, seeds, model and loops.

``carry`` keeps the epoch's running ``total`` so that a replay that skips the
nested loop can still log the mean loss (pyflor restores only checkpointed
objects; see cnn.py).
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
vocab, seq, n = 200, 32, 2048

data = torch.randint(0, vocab, (n, seq + 1))
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data[:, :-1], data[:, 1:]), batch_size=64, shuffle=True)


class LM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, 128)
        self.lstm = nn.LSTM(128, 256, num_layers=2, dropout=0.3, batch_first=True)
        self.drop = nn.Dropout(0.3)
        self.out = nn.Linear(256, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.emb(x))
        return self.out(self.drop(h))


model = LM()
opt = torch.optim.Adam(model.parameters(), lr=2e-3)
carry = Carry()
Flor.checkpoints(model, opt, carry)

for epoch in Flor.loop(range(epochs)):
    model.train()
    total = 0.0
    for x, y in Flor.loop(loader, name="step"):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x).reshape(-1, vocab), y.reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        total += loss.item()
        carry["total"] = total
    total = carry["total"]
    flor.log("loss", total / len(loader))
