"""An LSTM language-model-like loop with dropout and a shuffling DataLoader."""

import torch
import torch.nn as nn

import hindlog as hl

torch.manual_seed(0)
epochs = hl.arg("epochs", 6)
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
hl.checkpoints(model=model, opt=opt)

for epoch in hl.loop("epoch", range(epochs)):
    model.train()
    total = 0.0
    for x, y in hl.loop("step", loader):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x).reshape(-1, vocab), y.reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        total += loss.item()
    hl.log("loss", total / len(loader))
