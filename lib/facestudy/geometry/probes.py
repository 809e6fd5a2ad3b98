"""Linear attribute probes on embeddings (chapter 1, "Attributes shape the embedding space").

If a logistic regression can read attribute ``a`` from the embedding, the model keeps information about
``a`` even if it does not use it to separate identities (METHODS.md section 4.2 step 7).
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.model_selection import GroupKFold, StratifiedKFold


def attribute_probes(embeddings: np.ndarray, attributes: pd.DataFrame, *, labels: np.ndarray | None = None,
                     normalize: bool = True, folds: int = 5, seed: int = 0, C: float = 1.0,
                     max_iter: int = 300) -> pd.DataFrame:
    """5-fold logistic-regression probes, one per attribute column: accuracy and balanced accuracy. Chapter 1.

    ``normalize`` L2-normalises the embeddings first (the cosine models). When ``labels`` (identities) are
    given, folds are grouped by identity, so a probe never sees the test person in training (stricter than
    the paper, which splits images). Attributes with fewer than ``folds`` images in a class get NaN.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-12)
    rows = []
    for col in attributes.columns:
        y = (attributes[col].to_numpy() > 0).astype(int)
        if min(y.sum(), len(y) - y.sum()) < folds:
            rows.append({"attribute": str(col), "accuracy": np.nan, "balanced_accuracy": np.nan})
            continue
        if labels is not None:
            splitter = GroupKFold(n_splits=folds)
            perm = np.random.default_rng(seed).permutation(len(y))
            splits = [(perm[a], perm[b]) for a, b in splitter.split(x[perm], y[perm], np.asarray(labels)[perm])]
        else:
            splits = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, y))
        pred = np.zeros_like(y)
        for tr, te in splits:
            if len(np.unique(y[tr])) < 2:
                pred[te] = y[tr][0]
                continue
            clf = LogisticRegression(C=C, max_iter=max_iter, class_weight="balanced")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                clf.fit(x[tr], y[tr])
            pred[te] = clf.predict(x[te])
        rows.append({"attribute": str(col), "accuracy": accuracy_score(y, pred),
                     "balanced_accuracy": balanced_accuracy_score(y, pred)})
    return pd.DataFrame(rows)
