"""The probe's baselines under its own cross-validation, and paired differences against them.

- :func:`majority_scores`: the held-out accuracy and macro-F1 of always predicting the
  training part's most frequent class, per outer fold -- the accuracy a probe reaches from
  the label frequencies alone (Ojala & Garriga 2010 call it the baseline a classifier must beat).
- :func:`paired_accuracy_difference`: accuracy of one predictor minus another's on the very
  same held-out examples and folds (the probe against the majority class, a checkpoint's probe
  against the random-init model's), with a percentile bootstrap interval of the difference
  that resamples units within each fold (a paired, stratified bootstrap:
  :func:`plastiscope.stats.bootstrap_ci` with one sample per fold).

The interval is conditional on the fitted probes: it counts the sampling of the held-out
examples, not the variation from refitting on other training sets (Dietterich 1998,
"Approximate Statistical Tests for Comparing Supervised Classification Learning Algorithms").
Its lower end above 0 says the difference is larger than the test examples' sampling noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from plastiscope.probes.metrics import macro_f1
from plastiscope.stats import bootstrap_ci


def majority_scores(y: np.ndarray, folds: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Held-out scores of predicting each training part's majority class.

    ``y [example]``: class indices; ``folds``: the outer ``(train, test)`` index pairs. The
    majority class is the most frequent one in ``train`` (the lowest index on ties). Returns
    ``({"accuracy": [fold], "macro_f1": [fold]}, correct [example])``: per-fold scores (macro-F1
    over the classes in the test part or predicted, as the probe's) and, per example, whether
    the prediction of the fold that holds it out is right.
    """
    y = np.asarray(y, dtype=np.int64)
    accuracy, f1 = np.zeros(len(folds)), np.zeros(len(folds))
    correct = np.zeros(len(y), dtype=bool)
    for f, (train, test) in enumerate(folds):
        majority = int(np.bincount(y[train]).argmax())
        prediction = np.full(len(test), majority)
        correct[test] = y[test] == majority
        accuracy[f] = correct[test].mean()
        f1[f] = macro_f1(y[test], prediction)
    return {"accuracy": accuracy, "macro_f1": f1}, correct


def paired_accuracy_difference(
    correct: np.ndarray,
    baseline: np.ndarray,
    fold: np.ndarray,
    units: np.ndarray | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Accuracy minus the baseline's on the same held-out examples, with a paired bootstrap interval.

    - ``correct``: ``[layer, example]`` (or ``[example]``) bools, the predictor's held-out hits;
    - ``baseline``: the same shape or ``[example]``, the baseline's hits on the same examples;
    - ``fold [example]``: the outer fold whose test part holds each example;
    - ``units [example]``: the independent units (documents) examples belong to; default: each
      example its own. A unit lies in one fold (folds are grouped by document).

    The value is the mean over folds of (fold accuracy - baseline's fold accuracy), which is
    exactly the difference of the two reported (fold-averaged) accuracies. The interval
    resamples units with replacement within each fold, each unit carrying its examples' hits
    of both predictors (paired). Returns ``(difference, low, high)`` each ``[layer]`` (or
    scalars for 1-D input) and the number of units.
    """
    correct = np.asarray(correct, dtype=np.float64)
    squeeze = correct.ndim == 1
    correct = np.atleast_2d(correct)
    baseline = np.broadcast_to(np.asarray(baseline, dtype=np.float64), correct.shape)
    fold = np.asarray(fold)
    n = correct.shape[1]
    units = np.arange(n) if units is None else np.asarray(units)
    samples = []
    for f in np.unique(fold):
        members = np.flatnonzero(fold == f)
        codes, index = np.unique(units[members], return_inverse=True)
        per_unit = np.zeros((len(codes), correct.shape[0], 2))  # [unit, layer, (hit difference sum, examples)]
        np.add.at(per_unit[:, :, 0], index, (correct[:, members] - baseline[:, members]).T)
        np.add.at(per_unit[:, :, 1], index, 1.0)
        samples.append(per_unit)

    def statistic(*parts: np.ndarray) -> np.ndarray:  # each [resample, unit, layer, 2] -> [resample, layer]
        return np.mean([p[..., 0].sum(1) / p[..., 1].sum(1) for p in parts], axis=0)

    estimate, low, high = bootstrap_ci(samples, statistic=statistic, n_resamples=n_resamples, seed=seed)
    n_units = int(sum(len(s) for s in samples))
    if squeeze:
        return estimate[0], low[0], high[0], n_units
    return estimate, low, high, n_units
