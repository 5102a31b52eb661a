"""flordb 4.0.1 variant of bench/workloads/sklearn_sgd.py: same data, seeds, model and loops, same logged values.

flor.arg / flor.loop / flor.log instead of hindlog's calls; nothing to declare for
checkpoints (flordb replay re-executes the run from the start). Arguments default
to PEER_ARG_<name> (hindlog's defaults when unset). PEER_FLOR_OFF=1 runs the same
script without flordb (the plain side of the overhead ratio). See cnn.py and
bench/peers/README.md.
"""

import os

import numpy as np
from sklearn.linear_model import SGDClassifier

if os.environ.get("PEER_FLOR_OFF") == "1":
    import types

    flor = types.SimpleNamespace(arg=lambda name, default=None: default,
                                 loop=lambda name, it: it, log=lambda name, value: value)
else:
    import flordb as flor

epochs = flor.arg("epochs", int(os.environ.get("PEER_ARG_epochs", 30)))
rng_seed = flor.arg("seed", int(os.environ.get("PEER_ARG_seed", 0)))
np.random.seed(rng_seed)
X = np.random.randn(20000, 100)
w = np.random.randn(100)
y = (X @ w + 0.5 * np.random.randn(20000) > 0).astype(int)
Xv, yv = X[16000:], y[16000:]
X, y = X[:16000], y[:16000]

clf = SGDClassifier(loss="log_loss", alpha=1e-4, random_state=0)
classes = np.array([0, 1])

for epoch in flor.loop("epoch", range(epochs)):
    order = np.random.permutation(len(X))
    for start in flor.loop("batch", range(0, len(X), 500)):
        idx = order[start : start + 500]
        clf.partial_fit(X[idx], y[idx], classes=classes)
    flor.log("val_acc", float(clf.score(Xv, yv)))
