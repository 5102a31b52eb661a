"""A scikit-learn partial_fit loop with NumPy shuffling (no torch)."""

import numpy as np
from sklearn.linear_model import SGDClassifier

import hindlog as hl

epochs = hl.arg("epochs", 30)
rng_seed = hl.arg("seed", 0)
np.random.seed(rng_seed)
X = np.random.randn(20000, 100)
w = np.random.randn(100)
y = (X @ w + 0.5 * np.random.randn(20000) > 0).astype(int)
Xv, yv = X[16000:], y[16000:]
X, y = X[:16000], y[:16000]

clf = SGDClassifier(loss="log_loss", alpha=1e-4, random_state=0)
hl.checkpoints(clf=clf)
classes = np.array([0, 1])

for epoch in hl.loop("epoch", range(epochs)):
    order = np.random.permutation(len(X))
    for start in hl.loop("batch", range(0, len(X), 500)):
        idx = order[start : start + 500]
        clf.partial_fit(X[idx], y[idx], classes=classes)
    hl.log("val_acc", float(clf.score(Xv, yv)))
