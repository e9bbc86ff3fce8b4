"""Intervals and tests shared by every analysis and report.

- :func:`bootstrap_ci`: percentile bootstrap (Efron & Tibshirani 1993) over independent units
  (documents, folds, probe vectors); several samples are resampled each on its own (a
  stratified bootstrap, e.g. members and non-members); a fixed seed makes reruns identical.
- :func:`mean_ci`: the mean of a sample with its bootstrap interval and size.
- :func:`permutation_pvalue`: a permutation test of association whose permutations respect
  a block structure (replicate seeds), exact when the permutations can be enumerated.
- :func:`holm` and :func:`benjamini_hochberg`: p-values adjusted for multiple comparisons
  (Holm 1979, family-wise error; Benjamini & Hochberg 1995, false discovery rate).
- :func:`replicate_interval`: the mean of a configuration's replicate seeds with an interval
  across them, named for what it is (the range of 2-3 seeds, a bootstrap over 4 or more).
- :func:`cluster_association`: Spearman's rho between two quantities measured on units
  (checkpoints) grouped in clusters (configurations whose replicate seeds are averaged), with a
  two-stage cluster bootstrap interval (Davison & Hinkley 1997, sec. 3.8: resample clusters,
  then units within each; only with :data:`MIN_BOOTSTRAP_CLUSTERS` or more clusters) and a
  permutation p-value that permutes within blocks (seeds).
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import false_discovery_control, rankdata

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


def block_permutations(blocks: np.ndarray, n_permutations: int = 10000, seed: int = 0) -> tuple[np.ndarray, bool]:
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
    for g in groups:  # every row but the identity gets an independent shuffle of each block
        out[1:, g] = rng.permuted(np.tile(g, (n_permutations - 1, 1)), axis=1)
    return out, False


def permutation_pvalue(
    statistic: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    blocks: np.ndarray | None = None,
    n_permutations: int = 10000,
    seed: int = 0,
    permutations: tuple[np.ndarray, bool] | None = None,
) -> tuple[float, bool]:
    """Two-sided permutation p-value of ``|statistic(x)|`` with ``x`` permuted within ``blocks``.

    ``statistic`` maps ``x`` permuted as ``[permutation, unit]`` to ``[permutation]`` (e.g. a
    Spearman correlation of ``x`` with fixed outcomes). Permuting within blocks (e.g. units that
    share a replicate seed) keeps what a block shares out of the null distribution. Returns
    ``(p, exact)``; ``p = (#{|T*| >= |T|}) / N`` counts the observed arrangement among the ``N``
    permutations, so it is never 0. NaN when the observed statistic is NaN. ``permutations``:
    the result of :func:`block_permutations` for these blocks, to reuse it across statistics.
    """
    x = np.asarray(x)
    blocks = np.zeros(len(x), dtype=int) if blocks is None else np.asarray(blocks)
    perms, exact = permutations if permutations is not None else block_permutations(blocks, n_permutations, seed)
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
    """Benjamini-Hochberg adjusted p-values (false discovery rate; ``scipy.stats.false_discovery_control``);
    NaNs stay NaN and are not counted."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full_like(p, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        out[finite] = false_discovery_control(p[finite], method="bh")
    return out


def average_ranks(a: np.ndarray) -> np.ndarray:
    """Ranks (1-based) of ``a [..., unit]`` along the last axis, ties given their average rank (``scipy.stats.rankdata``)."""
    return rankdata(np.asarray(a, dtype=np.float64), axis=-1)


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho of ``x [..., unit]`` with ``y [..., unit]`` along the last axis (average ranks for ties).

    NaN where either side is constant or has a NaN. Broadcasts leading axes (e.g. permutations or resamples).
    """
    x, y = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    rx, ry = average_ranks(x), average_ranks(y)
    rx = rx - rx.mean(-1, keepdims=True)
    ry = ry - ry.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (rx * ry).sum(-1) / np.sqrt((rx**2).sum(-1) * (ry**2).sum(-1))
    return np.where(np.isnan(x).any(-1) | np.isnan(y).any(-1), np.nan, rho)


RANGE_MAX_SEEDS = 3  # up to this many replicates, the interval across them is their range


def replicate_interval(values: np.ndarray, n_resamples: int = 1000, seed: int = 0) -> tuple[float, float, float, int, str]:
    """``(mean, low, high, k, kind)`` of one configuration's replicate values ``[seed]`` (NaNs dropped).

    ``kind`` names the interval: ``""`` for one value (none), ``"range"`` (min to max) for 2 to
    :data:`RANGE_MAX_SEEDS` values, where a percentile interval could be no more than the range,
    ``"bootstrap"`` (95 % percentile bootstrap of the mean over seeds) for more.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    k = int(values.size)
    if k == 0:
        return math.nan, math.nan, math.nan, 0, ""
    mean = float(values.mean())
    if k == 1:
        return mean, math.nan, math.nan, 1, ""
    if k <= RANGE_MAX_SEEDS:
        return mean, float(values.min()), float(values.max()), k, "range"
    _, low, high = bootstrap_ci(values, n_resamples=n_resamples, seed=seed)
    return mean, float(low), float(high), k, "bootstrap"


def cluster_means(values: np.ndarray, clusters: np.ndarray, n_clusters: int) -> np.ndarray:
    """Mean of ``values [..., unit]`` per cluster (``clusters [unit]`` codes 0..n_clusters-1) -> ``[..., cluster]``."""
    values = np.asarray(values, dtype=np.float64)
    flat = values.reshape(-1, values.shape[-1])
    rows = len(flat)
    index = (clusters[None, :] + n_clusters * np.arange(rows)[:, None]).ravel()
    sums = np.bincount(index, weights=flat.ravel(), minlength=rows * n_clusters).reshape(rows, n_clusters)
    counts = np.bincount(clusters, minlength=n_clusters)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums / counts).reshape(values.shape[:-1] + (n_clusters,))


def _between_share(codes: np.ndarray, y: np.ndarray, n_codes: int) -> np.ndarray:
    """Share of the variance of ``y [..., unit]`` between the groups ``codes [unit]`` (eta squared) -> ``[...]``."""
    means = cluster_means(y, codes, n_codes)  # [..., group]
    counts = np.bincount(codes, minlength=n_codes)
    grand = y.mean(-1, keepdims=True)
    between = (counts * (means - grand) ** 2).sum(-1)
    total = ((y - grand) ** 2).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, between / total, np.nan)


@dataclass(frozen=True)
class Association:
    """How two quantities go together across clusters of units (see :func:`cluster_association`).

    ``estimate``: Spearman's rho of the cluster means (categorical ``x``: the share of the
    units' variance between categories, eta squared); ``low``/``high``: its 95 % two-stage
    cluster bootstrap interval (NaN for categorical ``x`` and with fewer than 3 clusters);
    ``p``: the two-sided permutation p-value, ``exact`` when every permutation was enumerated;
    ``p_perfect``: the p-value a perfect association would reach with the same design (the
    smallest a monotone trend can get: when it is above the test level, these data cannot
    decide); ``n_clusters``, ``n_units``: what was used after dropping NaNs; ``no_interval``: why
    ``low``/``high`` are NaN (empty when they are not, or when there is no estimate).
    """

    estimate: float
    low: float
    high: float
    p: float
    exact: bool
    p_perfect: float
    n_clusters: int
    n_units: int
    no_interval: str = ""


MIN_BOOTSTRAP_CLUSTERS = 8
"""The fewest clusters a cluster bootstrap interval is given for.

With ``k`` clusters a resample is one of at most C(2k-1, k) multisets (10 for k = 3, 126 for
k = 5, 6435 for k = 8), and a resample that draws 3 or fewer distinct clusters gives a rank
correlation that is undefined or one of a few values (±1, ±0.5). A 95 % percentile interval
reads the outer 2.5 % of resamples on each side; such degenerate resamples make up 100 % of
them at k = 3, 58 % at k = 5, 8 % at k = 7 and 2.0 % at k = 8 (0.4 % at k = 9): 8 is the
fewest clusters at which they are below the 2.5 % a tail reads, so the interval's ends are not
set by them. With fewer, the interval is NaN with the reason in :attr:`Association.no_interval`
(three configurations would otherwise print ``ρ −1.00 [−1.00, −1.00]``).
"""


def no_interval_reason(k: int) -> str:
    """Why an association over ``k`` clusters has no cluster bootstrap interval (empty when it may have one)."""
    if k >= MIN_BOOTSTRAP_CLUSTERS:
        return ""
    return f"no interval: {k} configurations; a cluster bootstrap needs at least {MIN_BOOTSTRAP_CLUSTERS}"


NO_ASSOCIATION = Association(math.nan, math.nan, math.nan, math.nan, False, math.nan, 0, 0)


@functools.lru_cache(maxsize=32)
def _cached_permutations(blocks: tuple[int, ...], n_permutations: int, seed: int) -> tuple[np.ndarray, bool]:
    """:func:`block_permutations` of one design, computed once (every series of a report shares its design)."""
    perms, exact = block_permutations(np.array(blocks, dtype=np.int64), n_permutations, seed)
    perms.setflags(write=False)
    return perms, exact


def _codes(values: np.ndarray) -> tuple[np.ndarray, int]:
    uniques, inverse = np.unique(np.asarray(values), return_inverse=True)
    return inverse.ravel().astype(np.int64), len(uniques)


def cluster_association(
    x: np.ndarray,
    y: np.ndarray,
    clusters: np.ndarray,
    blocks: np.ndarray | None = None,
    categorical: bool = False,
    n_resamples: int = 1000,
    n_permutations: int = 10000,
    seed: int = 0,
) -> Association:
    """Association of ``x [unit]`` with ``y [unit]`` when units come in clusters of replicates.

    Units are e.g. checkpoints; ``clusters [unit]`` their configuration (the hyperparameters but
    the seed), so replicate seeds of a configuration are averaged before ranking; ``blocks
    [unit]`` what permutations must keep apart (e.g. the seed: units that share a seed share
    its initialisation and data order). Units with a NaN in ``x`` or ``y`` are dropped.

    - Numeric ``x``: Spearman's rho (Spearman 1904) of the cluster means of ``x`` and ``y``.
      Interval: a two-stage cluster bootstrap (Davison & Hinkley 1997, sec. 3.8): resample
      clusters with replacement, then each drawn cluster's units with replacement, average,
      rank; percentile 95 %. Replicates stay together, so repeating a seed never narrows it.
      Only with at least :data:`MIN_BOOTSTRAP_CLUSTERS` clusters; with fewer the interval is
      NaN and ``no_interval`` says why.
    - Categorical ``x`` (group labels): eta squared, the share of the units' variance of ``y``
      between the groups; no interval.

    p-value: ``y`` permuted among the units of each block (:func:`permutation_pvalue`; for an
    ``x`` fixed per cluster this is the same as permuting ``x`` within the blocks). The test
    statistic is computed on the units, not the cluster means: Spearman's rho of ``x`` and ``y``
    over units (two-sided; ties within a cluster get average ranks), whose permutation
    distribution is fine enough for replicates to pay off (5 configurations x 2 seeds allow
    p down to about 1e-4 where cluster means allow about 1e-2); eta squared (one-sided) for groups.
    """
    x = np.asarray(x)
    y = np.asarray(y, dtype=np.float64)
    clusters = np.asarray(clusters)
    blocks = np.zeros(len(y), dtype=np.int64) if blocks is None else np.asarray(blocks)
    keep = np.isfinite(y) & (np.ones(len(x), bool) if categorical else np.isfinite(np.asarray(x, dtype=np.float64)))
    x, y, clusters, blocks = x[keep], y[keep], clusters[keep], blocks[keep]
    cl, k = _codes(clusters)
    if k < 3 or len(y) < 3:
        return Association(math.nan, math.nan, math.nan, math.nan, False, math.nan, k, len(y))
    perms = _cached_permutations(tuple(_codes(blocks)[0].tolist()), n_permutations, seed)
    if categorical:
        codes, n_codes = _codes(x)

        def share(values: np.ndarray) -> np.ndarray:
            return _between_share(codes, values, n_codes)

        estimate = float(share(y[None])[0])
        p, exact = _one_sided_pvalue(share, y, perms)
        p_perfect, _ = _one_sided_pvalue(share, codes.astype(np.float64), perms)
        return Association(estimate, math.nan, math.nan, p, exact, p_perfect, k, len(y), "no interval for eta squared")
    x = x.astype(np.float64)
    x_means = cluster_means(x, cl, k)

    def rho(values: np.ndarray) -> np.ndarray:
        return spearman_rows(x_means, cluster_means(values, cl, k))

    estimate = float(rho(y[None])[0])
    # the ranks of a permuted sample are the permuted ranks: rank once, permute the ranks
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    scale = np.sqrt((rx**2).sum() * (ry**2).sum())

    def unit_rho(ranks: np.ndarray) -> np.ndarray:  # [permutation, unit] -> [permutation]
        with np.errstate(invalid="ignore", divide="ignore"):
            return ranks @ rx / scale

    p, exact = permutation_pvalue(lambda idx: unit_rho(ry[idx]), np.arange(len(y)), permutations=perms)
    scale = (rx**2).sum()
    p_perfect, _ = permutation_pvalue(lambda idx: unit_rho(rx[idx]), np.arange(len(y)), permutations=perms)
    reason = no_interval_reason(k)
    if reason or not math.isfinite(estimate):
        return Association(estimate, math.nan, math.nan, p, exact, p_perfect, k, len(y), reason)
    low, high = _cluster_bootstrap_rho(x, y, cl, k, n_resamples, seed)
    return Association(estimate, low, high, p, exact, p_perfect, k, len(y))


def _one_sided_pvalue(statistic: Callable[[np.ndarray], np.ndarray], y: np.ndarray,
                      permutations: tuple[np.ndarray, bool]) -> tuple[float, bool]:
    """``#{T* >= T} / N`` over the permutations (the identity first); NaN when T is NaN."""
    perms, exact = permutations
    values = statistic(y[perms])
    if not math.isfinite(values[0]):
        return math.nan, exact
    return float(np.sum(values >= values[0] - 1e-12) / len(values)), exact


def _cluster_bootstrap_rho(x: np.ndarray, y: np.ndarray, clusters: np.ndarray, k: int, n_resamples: int,
                           seed: int, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of Spearman's rho of cluster means under the two-stage cluster bootstrap."""
    rng = np.random.default_rng(seed)
    sizes = np.bincount(clusters, minlength=k)
    width = int(sizes.max())
    members = np.zeros((k, width), dtype=np.int64)  # [cluster, member] unit indices (padded)
    order = np.argsort(clusters, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    for c in range(k):
        members[c, : sizes[c]] = order[starts[c]: starts[c] + sizes[c]]
    rhos = []
    chunk = max(1, min(n_resamples, int(2e6 // max(k * width, 1))))
    for start in range(0, n_resamples, chunk):
        rows = min(chunk, n_resamples - start)
        pick = rng.integers(0, k, size=(rows, k))  # stage 1: clusters [resample, slot]
        n = sizes[pick]  # [resample, slot]
        draw = np.floor(rng.random((rows, k, width)) * n[..., None]).astype(np.int64)  # stage 2: members
        units = members[pick[..., None], draw]  # [resample, slot, member]
        used = np.arange(width) < n[..., None]
        xm = np.where(used, x[units], 0.0).sum(-1) / n
        ym = np.where(used, y[units], 0.0).sum(-1) / n
        rhos.append(spearman_rows(xm, ym))
    alpha = (1 - confidence) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanquantile(np.concatenate(rhos), [alpha, 1 - alpha])
    return float(low), float(high)
