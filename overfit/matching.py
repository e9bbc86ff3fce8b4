"""Length matching of training and held-out documents (coarsened exact matching on length).

Longer documents have lower mean loss (more context per token), so a train/validation loss
gap or a membership AUC would partly measure a length difference between the two samples.
We **subsample** to equal length distributions: lengths (target tokens per document) are cut
into ``n_bins`` bins at the quantiles of the pooled lengths, and within each bin the same
number of documents, ``min(n_train_bin, n_val_bin)``, is drawn at random (seeded) from each
side. Every downstream statistic (mean losses, AUC, TPR) then compares like with like by
one mechanism; stratified reweighting would only serve mean-type statistics.
"""

from __future__ import annotations

import numpy as np


def match_lengths(
    train_lengths: np.ndarray, val_lengths: np.ndarray, n_bins: int = 8, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train_idx, val_idx)`` of length-matched subsamples (sorted), equally many per length bin."""
    if n_bins < 1:
        raise ValueError(f"length_bins must be >= 1, got {n_bins}")
    train_lengths, val_lengths = np.asarray(train_lengths), np.asarray(val_lengths)
    pooled = np.concatenate([train_lengths, val_lengths]).astype(np.float64)
    if pooled.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    edges = np.unique(np.quantile(pooled, np.linspace(0, 1, n_bins + 1)[1:-1]))
    train_bin = np.searchsorted(edges, train_lengths, side="right")
    val_bin = np.searchsorted(edges, val_lengths, side="right")
    rng = np.random.default_rng(seed)
    keep_train, keep_val = [], []
    for b in range(len(edges) + 1):
        t, v = np.flatnonzero(train_bin == b), np.flatnonzero(val_bin == b)
        n = min(len(t), len(v))
        keep_train.append(rng.choice(t, size=n, replace=False))
        keep_val.append(rng.choice(v, size=n, replace=False))
    return np.sort(np.concatenate(keep_train)).astype(np.int64), np.sort(np.concatenate(keep_val)).astype(np.int64)
