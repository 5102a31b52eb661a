"""flordb 4.0.1 variant of bench/workloads/lstm.py: same data, seeds, model and loops, same logged values.

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
epochs = flor.arg("epochs", int(os.environ.get("PEER_ARG_epochs", 6)))
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

for epoch in flor.loop("epoch", range(epochs)):
    model.train()
    total = 0.0
    for x, y in flor.loop("step", loader):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x).reshape(-1, vocab), y.reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        total += loss.item()
    flor.log("loss", total / len(loader))
