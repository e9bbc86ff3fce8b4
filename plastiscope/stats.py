"""Intervals and tests shared by every analysis and report.

- :func:`bootstrap_ci`: percentile bootstrap (Efron & Tibshirani 1993) over independent units
  (documents, folds, probe vectors); several samples are resampled each on its own (a
  stratified bootstrap, e.g. members and non-members); a fixed seed makes reruns identical.
- :func:`mean_ci`: the mean of a sample with its bootstrap interval and size.
- :func:`permutation_pvalue`: a permutation test of association whose permutations respect
  a block structure (replicate seeds), exact when the permutations can be enumerated.
- :func:`holm` and :func:`benjamini_hochberg`: p-values adjusted for multiple comparisons
  (Holm 1979, family-wise error; Benjamini & Hochberg 1995, false discovery rate).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np

Statistic = Callable[..., np.ndarray]


def bootstrap_ci(
    samples: np.ndarray | Sequence[np.ndarray],
    statistic: Statistic | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Estimate and percentile-bootstrap interval of ``statistic`` over resampled units.

    ``samples`` is one array ``[unit, ...]`` or a tuple of arrays, each ``[unit_i, ...]``,
    resampled independently with replacement. ``statistic(*resampled)`` maps arrays
    ``[resample, unit_i, ...]`` to ``[resample, ...]``; the default (one sample only) is the
    mean over units with NaNs skipped. Returns ``(estimate, low, high)``, each shaped like one
    resample's statistic. With fewer than two units in a sample the interval is NaN.
    """
    several = isinstance(samples, (tuple, list))
    arrays = [np.asarray(s, dtype=np.float64) for s in (samples if several else [samples])]
    if statistic is None and len(arrays) != 1:
        raise ValueError("bootstrap_ci: the default statistic (the mean) takes one sample; pass statistic= for several")
    mean = statistic is None
    with np.errstate(invalid="ignore", divide="ignore"):
        if mean:
            estimate = _nanmean_weighted(np.ones((1, len(arrays[0]))), arrays[0])[0]
        else:
            estimate = np.asarray(statistic(*[a[None] for a in arrays]))[0]
    if min(len(a) for a in arrays) < 2:
        nan = np.full_like(np.asarray(estimate, dtype=np.float64), np.nan)
        return estimate, nan, nan.copy()
    rng = np.random.default_rng(seed)
    size = sum(a.size for a in arrays) if not mean else len(arrays[0])
    chunk = max(1, min(n_resamples, int(2e7 // max(size, 1))))  # bounds the memory of one batch of resamples
    stats = []
    for start in range(0, n_resamples, chunk):
        rows = min(chunk, n_resamples - start)
        index = [rng.integers(0, len(a), size=(rows, len(a))) for a in arrays]
        if mean:  # the same resamples as counts: [resample, unit] @ [unit, ...] instead of gathered copies
            n = len(arrays[0])
            counts = np.bincount((index[0] + n * np.arange(rows)[:, None]).ravel(), minlength=rows * n).reshape(rows, n)
            stats.append(_nanmean_weighted(counts, arrays[0]))
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                stats.append(np.asarray(statistic(*[a[i] for a, i in zip(arrays, index)])))
    alpha = (1 - confidence) / 2
    with warnings.catch_warnings():  # an undefined statistic (all NaN) has a NaN interval, by design
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanquantile(np.concatenate(stats, axis=0), [alpha, 1 - alpha], axis=0)
    return estimate, low, high


def _nanmean_weighted(counts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Mean over units of ``values [unit, ...]`` weighted by ``counts [resample, unit]``, NaNs skipped."""
    flat = values.reshape(len(values), -1)
    present = ~np.isnan(flat)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (counts @ np.where(present, flat, 0.0)) / (counts @ present)
    return out.reshape((len(counts),) + values.shape[1:])


def mean_ci(values: np.ndarray, n_resamples: int = 1000, seed: int = 0) -> tuple[float, float, float, int]:
    """Mean of a 1-D sample (NaNs dropped) with its bootstrap 95 % interval and the sample size ``n``."""
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[~np.isnan(values)]
    if values.size == 0:
        return math.nan, math.nan, math.nan, 0
    estimate, low, high = bootstrap_ci(values, n_resamples=n_resamples, seed=seed)
    return float(estimate), float(low), float(high), int(values.size)


def _block_permutations(blocks: np.ndarray, n_permutations: int, seed: int) -> tuple[np.ndarray, bool]:
    """``([permutation, unit] index arrays, exact)``: permutations of units within each block.

    Exact (every distinct within-block permutation, the identity first) when their number is at
    most ``n_permutations``, else ``n_permutations`` random ones (the identity first).
    """
    groups = [np.flatnonzero(blocks == b) for b in np.unique(blocks)]
    total = math.prod(math.factorial(len(g)) for g in groups)
    n = len(blocks)
    if total <= n_permutations:
        out = []
        for choice in itertools.product(*[itertools.permutations(g) for g in groups]):
            perm = np.arange(n)
            for g, p in zip(groups, choice):
                perm[g] = p
            out.append(perm)
        return np.array(out), True
    rng = np.random.default_rng(seed)
    out = np.tile(np.arange(n), (n_permutations, 1))
    for row in out[1:]:
        for g in groups:
            row[g] = rng.permutation(g)
    return out, False


def permutation_pvalue(
    statistic: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    blocks: np.ndarray | None = None,
    n_permutations: int = 10000,
    seed: int = 0,
) -> tuple[float, bool]:
    """Two-sided permutation p-value of ``|statistic(x)|`` with ``x`` permuted within ``blocks``.

    ``statistic`` maps ``x`` permuted as ``[permutation, unit]`` to ``[permutation]`` (e.g. a
    Spearman correlation of ``x`` with fixed outcomes). Permuting within blocks (e.g. units that
    share a replicate seed) keeps what a block shares out of the null distribution. Returns
    ``(p, exact)``; ``p = (#{|T*| >= |T|}) / N`` counts the observed arrangement among the ``N``
    permutations, so it is never 0. NaN when the observed statistic is NaN.
    """
    x = np.asarray(x)
    blocks = np.zeros(len(x), dtype=int) if blocks is None else np.asarray(blocks)
    perms, exact = _block_permutations(blocks, n_permutations, seed)
    values = np.asarray(statistic(x[perms]), dtype=np.float64)
    observed = values[0]
    if not math.isfinite(observed):
        return math.nan, exact
    extreme = np.abs(values) >= abs(observed) - 1e-12
    return float(np.sum(extreme & np.isfinite(values)) / len(values)), exact


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error); NaNs stay NaN and are not counted."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full_like(p, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = len(finite)
    if m == 0:
        return out
    order = finite[np.argsort(p[finite], kind="stable")]
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adjusted, 1.0)
    return out


def benjamini_hochberg(pvalues: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate); NaNs stay NaN and are not counted."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full_like(p, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = len(finite)
    if m == 0:
        return out
    order = finite[np.argsort(p[finite], kind="stable")]
    scaled = p[order] * m / np.arange(1, m + 1)
    out[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return out


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho of ``x [..., unit]`` with ``y [..., unit]`` along the last axis (average ranks for ties).

    NaN where either side is constant. Broadcasts leading axes (e.g. permutations or resamples).
    """
    from scipy.stats import rankdata

    rx = rankdata(np.asarray(x, dtype=np.float64), axis=-1)
    ry = rankdata(np.asarray(y, dtype=np.float64), axis=-1)
    rx = rx - rx.mean(-1, keepdims=True)
    ry = ry - ry.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(-1) / np.sqrt((rx**2).sum(-1) * (ry**2).sum(-1))
