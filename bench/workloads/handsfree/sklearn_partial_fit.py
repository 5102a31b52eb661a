"""scikit-learn partial_fit over minibatches, shuffled each epoch with a NumPy RandomState of
the script's own, with noise from NumPy's global generator. A plain script: no hindlog in it.
Sizes: BENCH_EPOCHS, BENCH_SAMPLES."""

import os

import numpy as np
from sklearn.datasets import make_classification
from sklearn.linear_model import SGDClassifier

epochs = int(os.environ.get("BENCH_EPOCHS", "12"))
n = int(os.environ.get("BENCH_SAMPLES", "40000"))
batch = 200
X, y = make_classification(n_samples=n + n // 5, n_features=100, n_informative=30, random_state=0)
Xv, yv = X[n:], y[n:]
X, y = X[:n], y[:n]
classes = np.unique(y)
clf = SGDClassifier(loss="log_loss", alpha=1e-4, random_state=0)
np.random.seed(0)
shuffler = np.random.RandomState(1)
scores = []
for epoch in range(epochs):
    perm = np.arange(len(X))
    shuffler.shuffle(perm)
    for start in range(0, len(X), batch):
        idx = perm[start:start + batch]
        noisy = X[idx] + np.random.normal(scale=0.05, size=(len(idx), X.shape[1]))
        clf.partial_fit(noisy, y[idx], classes=classes)
    scores.append(clf.score(Xv, yv))
    print(f"epoch {epoch} val acc {scores[-1]:.4f} coef0 {clf.coef_[0, 0]:.6f}")
