"""pyflor 2.5.6 variant of bench/workloads/sklearn_sgd.py: same data, seed and loops.

pyflor 2.5.6 can record a scikit-learn estimator (it cloudpickles objects that
have no ``state_dict``) but cannot restore it: its journal reader turns such a
record into a DataFrame record and fails with ``KeyError: 'csv_ref'``
(flor/journal/entry/__init__.py, make_entry). What pyflor does restore is an
object with ``state_dict``/``load_state_dict``, saved with torch.save and loaded
with torch.load (weights_only), so the estimator is checkpointed through
``Estimator``, which pickles it into a uint8 tensor. Set PEER_SKLEARN_RAW=1 to
checkpoint the bare estimator instead (records; replay fails as described).
"""

import os
import pickle

import numpy as np
import torch  # pyflor imports torch itself; used here only for the checkpoint adapter
from sklearn.linear_model import SGDClassifier

import flor
from flor import MTK as Flor


class Estimator:
    """Checkpoint adapter: pyflor restores state_dict/load_state_dict objects."""

    def __init__(self, est):
        self.est = est

    def state_dict(self):
        return {"pickle": torch.frombuffer(bytearray(pickle.dumps(self.est)), dtype=torch.uint8)}

    def load_state_dict(self, d):
        self.est.__dict__.update(pickle.loads(d["pickle"].numpy().tobytes()).__dict__)


epochs = int(os.environ.get("PEER_ARG_epochs", 30))
rng_seed = int(os.environ.get("PEER_ARG_seed", 0))
np.random.seed(rng_seed)
X = np.random.randn(20000, 100)
w = np.random.randn(100)
y = (X @ w + 0.5 * np.random.randn(20000) > 0).astype(int)
Xv, yv = X[16000:], y[16000:]
X, y = X[:16000], y[:16000]

clf = SGDClassifier(loss="log_loss", alpha=1e-4, random_state=0)
Flor.checkpoints(clf if os.environ.get("PEER_SKLEARN_RAW") == "1" else Estimator(clf))
classes = np.array([0, 1])

for epoch in Flor.loop(range(epochs)):
    order = np.random.permutation(len(X))
    for start in Flor.loop(range(0, len(X), 500), name="batch"):
        idx = order[start : start + 500]
        clf.partial_fit(X[idx], y[idx], classes=classes)
    flor.log("val_acc", float(clf.score(Xv, yv)))
