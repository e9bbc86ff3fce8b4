"""Confidence intervals shared by all analyses.

Percentile bootstrap (Efron & Tibshirani 1993) over independent units (documents, folds),
with a fixed seed so reruns give identical intervals.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np


def bootstrap_ci(
    values: np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray] | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point estimate and percentile-bootstrap interval over the first axis of ``values``.

    ``values``: ``[unit, ...]``; units are resampled with replacement. ``statistic`` maps a
    ``[resample, unit, ...]`` array to ``[resample, ...]`` (default: mean over units).
    Returns ``(estimate, low, high)``, each shaped like ``values[0]``. With fewer than two
    units the interval is NaN.
    """
    values = np.asarray(values, dtype=np.float64)
    mean = statistic is None
    if mean:
        statistic = lambda x: np.nanmean(x, axis=1)  # noqa: E731
    with np.errstate(invalid="ignore", divide="ignore"):
        estimate = statistic(values[None])[0] if not mean else _nanmean_weighted(np.ones((1, len(values))), values)[0]
    n = values.shape[0]
    if n < 2:
        nan = np.full_like(estimate, np.nan, dtype=np.float64)
        return estimate, nan, nan.copy()
    rng = np.random.default_rng(seed)
    per_chunk = values.size if not mean else n
    chunk = max(1, min(n_resamples, int(2e7 // max(per_chunk, 1))))
    stats = []
    for start in range(0, n_resamples, chunk):
        rows = min(chunk, n_resamples - start)
        idx = rng.integers(0, n, size=(rows, n))
        if mean:  # same resamples, as counts: [resample, unit] @ [unit, ...] instead of gathering copies
            counts = np.bincount((idx + n * np.arange(rows)[:, None]).ravel(), minlength=rows * n).reshape(rows, n)
            stats.append(_nanmean_weighted(counts, values))
        else:
            stats.append(statistic(values[idx]))
    stats = np.concatenate(stats, axis=0)
    alpha = (1 - confidence) / 2
    with warnings.catch_warnings():  # an undefined metric (all NaN) has a NaN interval, by design
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanquantile(stats, [alpha, 1 - alpha], axis=0)
    return estimate, low, high


def _nanmean_weighted(counts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Mean over units of ``values [unit, ...]`` weighted by ``counts [resample, unit]``, NaNs skipped."""
    flat = values.reshape(len(values), -1)
    present = ~np.isnan(flat)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (counts @ np.where(present, flat, 0.0)) / (counts @ present)
    return out.reshape((len(counts),) + values.shape[1:])


def mean_ci(values: np.ndarray, n_resamples: int = 1000, seed: int = 0) -> tuple[float, float, float, int]:
    """Mean of a 1-D sample with its bootstrap 95 % interval and the sample size ``n``."""
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan"), float("nan"), 0
    estimate, low, high = bootstrap_ci(values, n_resamples=n_resamples, seed=seed)
    return float(estimate), float(low), float(high), int(values.size)
