"""A ``while`` main loop with early stopping: linear regression by minibatch SGD, the state in
plain Python objects (a model class holding NumPy arrays, an early stopper, lists) and a NumPy
generator. A plain script: no hindlog in it. Sizes: BENCH_SAMPLES, BENCH_FEATURES."""

import os

import numpy as np


class LinearModel:
    def __init__(self, n, rng):
        self.w = rng.normal(size=n) * 0.1
        self.b = 0.0

    def loss(self, x, y):
        return float(np.mean((x @ self.w + self.b - y) ** 2))

    def step(self, x, y, lr):
        err = x @ self.w + self.b - y
        self.w -= lr * 2 * x.T @ err / len(y)
        self.b -= lr * 2 * float(err.mean())
        return float(np.mean(err ** 2))


class EarlyStopping:
    def __init__(self, patience):
        self.patience = patience
        self.best = float("inf")
        self.bad_epochs = 0

    def update(self, value):
        if value < self.best - 1e-4:
            self.best = value
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience


n = int(os.environ.get("BENCH_SAMPLES", "250000"))
features = int(os.environ.get("BENCH_FEATURES", "100"))
batch = 32
rng = np.random.default_rng(0)
X = rng.normal(size=(n + n // 5, features))
true_w = rng.normal(size=features) * (rng.random(features) < 0.3)
y = X @ true_w + 0.8 * rng.normal(size=n + n // 5)
Xv, yv = X[n:], y[n:]
X, y = X[:n], y[:n]
model = LinearModel(features, rng)
stopper = EarlyStopping(patience=3)
history = []
lrs = [0.01]
epoch = 0
stop = False
while not stop and epoch < 100:
    order = rng.permutation(len(X))
    for start in range(0, len(X), batch):
        idx = order[start:start + batch]
        loss = model.step(X[idx], y[idx], lrs[-1])
    val = model.loss(Xv, yv)
    history.append(val)
    lrs.append(lrs[-1] * 0.8)
    print(f"epoch {epoch} loss {loss:.6f} val {val:.6f}")
    stop = stopper.update(val)
    epoch += 1
print(f"best {min(history):.6f} after {len(history)} epochs")
