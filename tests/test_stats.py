"""Bootstrap intervals: the fast mean path equals the general one, widths match normal theory."""

from __future__ import annotations

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
