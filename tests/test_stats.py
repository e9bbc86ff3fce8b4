"""Statistics: bootstrap intervals, ranks and permutation tests against scipy and brute force, adjustments, clusters."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from plastiscope.stats import bootstrap_ci, mean_ci


def test_fast_mean_equals_general_statistic_with_nans():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(200, 3, 2))
    values[5, 1, 0] = np.nan
    fast = bootstrap_ci(values)
    slow = bootstrap_ci(values, statistic=lambda x: np.nanmean(x, axis=1))
    for a, b in zip(fast, slow):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fast[0], np.nanmean(values, axis=0))


def test_interval_width_matches_normal_theory():
    rng = np.random.default_rng(0)
    sample = rng.normal(loc=3.0, scale=2.0, size=400)
    mean, low, high, n = mean_ci(sample, n_resamples=4000)
    assert n == 400 and mean == pytest.approx(sample.mean())
    assert low < 3.0 < high
    expected = 2 * 1.96 * sample.std(ddof=1) / np.sqrt(400)
    assert high - low == pytest.approx(expected, rel=0.1)


def test_degenerate_samples():
    assert np.isnan(bootstrap_ci(np.array([2.0]))[1])
    assert mean_ci(np.array([np.nan]))[3] == 0


# --- ranks, permutations, adjustments, replicates and clusters -----------------------------------

def test_average_ranks_and_spearman_match_scipy():
    from scipy.stats import rankdata, spearmanr

    from plastiscope.stats import average_ranks, spearman_rows

    rng = np.random.default_rng(2)
    ties = rng.integers(0, 4, size=(40, 9)).astype(float)
    np.testing.assert_array_equal(average_ranks(ties), rankdata(ties, axis=-1))
    other = rng.normal(size=(40, 9))
    rho = spearman_rows(ties, other)
    np.testing.assert_allclose(rho, [spearmanr(a, b).statistic for a, b in zip(ties, other)], atol=1e-12)
    assert np.isnan(spearman_rows([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])) and np.isnan(spearman_rows([1.0, np.nan, 2.0], [1, 2, 3]))


def test_permutation_pvalue_matches_scipy_permutation_test():
    from scipy.stats import permutation_test, spearmanr

    from plastiscope.stats import cluster_association

    rng = np.random.default_rng(5)
    x, y = rng.normal(size=6), rng.normal(size=6)
    y = y + 0.8 * x
    a = cluster_association(x, y, np.arange(6))  # one unit per cluster, one block: a plain permutation test
    reference = permutation_test((y,), lambda v: abs(spearmanr(x, v).statistic), permutation_type="pairings",
                                 n_resamples=np.inf, alternative="greater")
    assert a.exact and a.p == pytest.approx(reference.pvalue, abs=1e-12)
    assert a.estimate == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert a.p_perfect == pytest.approx(2 / 720)  # a perfect order: the identity and its reversal of 6! permutations


def test_blocked_permutation_p_value_by_brute_force():
    from scipy.stats import spearmanr

    from plastiscope.stats import cluster_association

    rng = np.random.default_rng(7)
    wd = np.repeat([0.0, 0.01, 0.1, 1.0], 2)  # 4 configurations x 2 seeds
    seed = np.tile([0, 1], 4)
    y = np.log1p(10 * wd) + 0.3 * seed + rng.normal(0, 0.3, 8)  # a seed offset: only within-seed permutations keep it out
    a = cluster_association(wd, y, wd, seed)
    blocks = [np.flatnonzero(seed == s) for s in (0, 1)]
    observed, count, total = abs(spearmanr(wd, y).statistic), 0, 0
    for choice in itertools.product(*[itertools.permutations(b) for b in blocks]):
        perm = np.arange(8)
        for b, c in zip(blocks, choice):
            perm[b] = c
        count += abs(spearmanr(wd, y[perm]).statistic) >= observed - 1e-12
        total += 1
    assert a.exact and total == 576 and a.p == pytest.approx(count / total)
    means = [y[wd == w].mean() for w in np.unique(wd)]
    assert a.estimate == pytest.approx(spearmanr(np.unique(wd), means).statistic)
    assert a.n_clusters == 4 and a.n_units == 8


def test_categorical_association_is_eta_squared_with_a_blocked_permutation_test():
    from plastiscope.stats import cluster_association

    groups = np.repeat(["a", "b", "c"], 3)
    seed = np.tile([0, 1, 2], 3)
    y = np.array([1.0, 1.2, 0.9, 2.0, 2.1, 1.8, 1.5, 1.4, 1.6])
    a = cluster_association(groups, y, groups, seed, categorical=True)
    grand = y.mean()
    between = sum(3 * (y[groups == g].mean() - grand) ** 2 for g in "abc")
    assert a.estimate == pytest.approx(between / ((y - grand) ** 2).sum())
    blocks = [np.flatnonzero(seed == s) for s in range(3)]

    def eta(v):
        return sum(3 * (v[groups == g].mean() - v.mean()) ** 2 for g in "abc") / ((v - v.mean()) ** 2).sum()

    count = total = 0
    for choice in itertools.product(*[itertools.permutations(b) for b in blocks]):
        perm = np.arange(9)
        for b, c in zip(blocks, choice):
            perm[b] = c
        count += eta(y[perm]) >= a.estimate - 1e-12
        total += 1
    assert a.p == pytest.approx(count / total) and a.p_perfect == pytest.approx(6 / 216)  # the 3! relabellings of 216
    assert np.isnan(a.low) and np.isnan(a.high)


def test_cluster_bootstrap_keeps_replicates_together():
    from plastiscope.stats import cluster_association

    rng = np.random.default_rng(11)
    x = np.arange(8, dtype=float)
    y = x + rng.normal(0, 3, 8)
    single = cluster_association(x, y, np.arange(8), n_resamples=2000)
    # each configuration measured twice with the same value: replicates add no information
    doubled = cluster_association(np.repeat(x, 2), np.repeat(y, 2), np.repeat(np.arange(8), 2), n_resamples=2000)
    assert (doubled.low, doubled.high) == pytest.approx((single.low, single.high))
    # a bootstrap that treats the 16 rows as independent units is narrower: the error the clusters prevent
    naive = cluster_association(np.repeat(x, 2), np.repeat(y, 2), np.arange(16), n_resamples=2000)
    assert naive.high - naive.low < 0.85 * (single.high - single.low)
    # seed noise widens the interval of the same configuration means
    noisy = cluster_association(np.repeat(x, 2), np.repeat(y, 2) + np.tile([-2.0, 2.0], 8), np.repeat(np.arange(8), 2),
                                n_resamples=2000)
    assert noisy.estimate == pytest.approx(single.estimate)
    assert noisy.high - noisy.low > single.high - single.low
    assert single.low <= single.estimate <= single.high


def test_too_few_clusters_and_constant_values_give_no_association():
    from plastiscope.stats import cluster_association

    few = cluster_association([0.0, 1.0, 0.0, 1.0], [1.0, 2.0, 1.5, 2.5], [0, 1, 0, 1])
    assert few.n_clusters == 2 and np.isnan(few.estimate) and np.isnan(few.p)
    flat = cluster_association([0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0], [0, 1, 2, 3])
    assert np.isnan(flat.estimate) and np.isnan(flat.p)
    dropped = cluster_association([0.0, 1.0, 2.0, 3.0, np.nan], [1.0, 2.0, 3.0, 5.0, 9.0], [0, 1, 2, 3, 4])
    assert dropped.n_units == 4 and dropped.estimate == pytest.approx(1.0)


def test_holm_and_benjamini_hochberg():
    from scipy.stats import false_discovery_control

    from plastiscope.stats import benjamini_hochberg, holm

    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, np.nan, 0.01]), [0.5, np.nan, 0.02])
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 0.2, 30)
    np.testing.assert_allclose(benjamini_hochberg(p), false_discovery_control(p), rtol=1e-12)
    with_nan = np.concatenate([p[:5], [np.nan]])
    np.testing.assert_allclose(benjamini_hochberg(with_nan)[:5], false_discovery_control(p[:5]), rtol=1e-12)
    assert np.isnan(benjamini_hochberg(with_nan)[5])


def test_replicate_interval_says_what_it_is():
    from plastiscope.stats import replicate_interval

    assert replicate_interval(np.array([2.0]))[3:] == (1, "")
    assert np.isnan(replicate_interval(np.array([2.0]))[1])
    assert replicate_interval(np.array([1.0, 3.0, np.nan])) == (2.0, 1.0, 3.0, 2, "range")
    assert replicate_interval(np.array([1.0, 3.0, 2.0]))[1:] == (1.0, 3.0, 3, "range")
    values = np.array([1.0, 2.0, 4.0, 3.0, 5.0])
    mean, low, high, k, kind = replicate_interval(values)
    _, b_low, b_high = bootstrap_ci(values)
    assert (mean, low, high, k, kind) == (3.0, pytest.approx(b_low), pytest.approx(b_high), 5, "bootstrap")
    assert replicate_interval(np.array([np.nan]))[3] == 0


def test_block_permutations_stay_within_blocks():
    from plastiscope.stats import block_permutations

    blocks = np.array([0, 0, 1, 1, 1])
    perms, exact = block_permutations(blocks, 100)
    assert exact and len(perms) == 2 * 6 and len({tuple(p) for p in perms}) == 12
    assert (perms[0] == np.arange(5)).all()
    blocks = np.repeat(np.arange(3), 4)
    perms, exact = block_permutations(blocks, 500, seed=1)
    assert not exact and perms.shape == (500, 12) and (perms[0] == np.arange(12)).all()
    assert (blocks[perms] == blocks).all()  # every unit stays in its block
    assert len({tuple(p) for p in perms}) > 400


def test_no_cluster_bootstrap_interval_below_eight_clusters():
    from math import comb

    from plastiscope.stats import MIN_BOOTSTRAP_CLUSTERS, cluster_association

    rng = np.random.default_rng(4)
    x = np.arange(8, dtype=float)
    y = x + rng.normal(0, 2, 8)
    seven = cluster_association(x[:7], y[:7], np.arange(7), n_resamples=500)
    assert np.isnan(seven.low) and np.isnan(seven.high) and math.isfinite(seven.estimate) and math.isfinite(seven.p)
    assert seven.no_interval == "no interval: 7 configurations; a cluster bootstrap needs at least 8"
    eight = cluster_association(x, y, np.arange(8), n_resamples=500)
    assert eight.low < eight.estimate < eight.high and eight.no_interval == ""
    three = cluster_association(x[:3], [3.0, 2.0, 1.0], np.arange(3))
    assert three.estimate == -1.0 and np.isnan(three.low)  # never "-1.00 [-1.00, -1.00]"
    # the rule's reason, by enumeration: the share of resamples that draw 3 or fewer distinct clusters
    def degenerate(k: int) -> float:
        draws = np.array(list(itertools.product(range(k), repeat=k)), dtype=np.int8) if k <= 7 else rng.integers(0, k, size=(400000, k))
        distinct = 1 + (np.diff(np.sort(draws, axis=1), axis=1) != 0).sum(axis=1)
        return float(np.mean(distinct <= 3))

    assert degenerate(7) > 0.025 > degenerate(MIN_BOOTSTRAP_CLUSTERS) and comb(2 * 8 - 1, 8) == 6435
