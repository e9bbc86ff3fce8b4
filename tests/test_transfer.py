"""probes/transfer.py and probes/baselines.py: the transferability estimators against independent
computations (a generic optimiser on the Gaussian likelihood, naive formulas, population values,
known spectra), and the majority-class baseline and paired differences against scikit-learn and loops."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.stats import entropy
from sklearn.covariance import LedoitWolf
from sklearn.dummy import DummyClassifier
from sklearn.model_selection import StratifiedKFold, cross_val_score

from plastiscope.probes import (
    alpha_req,
    bayesian_evidence,
    evaluate_layers,
    h_score,
    ledoit_wolf_covariance,
    logme,
    majority_scores,
    paired_accuracy_difference,
    rankme,
    singular_spectrum,
    transfer_records,
)


def _evidence_by_optimiser(F: np.ndarray, t: np.ndarray) -> tuple[float, float, float]:
    """max over (alpha, beta) of log N(t; 0, F F^T / alpha + I / beta), by Nelder-Mead over the logs
    from several starts, with the n x n covariance evaluated directly (slogdet, solve)."""
    n = len(t)

    def negative(p: np.ndarray) -> float:
        alpha, beta = np.exp(p)
        C = F @ F.T / alpha + np.eye(n) / beta
        _, log_det = np.linalg.slogdet(C)
        return 0.5 * (n * math.log(2 * math.pi) + log_det + t @ np.linalg.solve(C, t))

    options = dict(xatol=1e-10, fatol=1e-12, maxiter=20000, maxfev=40000)
    best = min((minimize(negative, start, method="Nelder-Mead", options=options) for start in [(0, 0), (4, -2), (-4, 3)]),
               key=lambda r: r.fun)
    return -float(best.fun), *np.exp(best.x)


@pytest.mark.parametrize("n, d", [(70, 23), (45, 80)])
def test_logme_matches_evidence_maximised_by_a_generic_optimiser(n, d):
    """Random anisotropic features with a weak signal in one class, imbalanced labels, both n > d and n < d:
    LogME equals the mean over classes of the maximised Gaussian log likelihood / n."""
    rng = np.random.default_rng(n + d)
    F = rng.standard_normal((n, d)) * rng.uniform(0.2, 3.0, d) + rng.standard_normal(d)
    y = rng.choice(3, n, p=[0.5, 0.3, 0.2])
    F[y == 1, :3] += 1.5  # class 1 has a linear signal, the others mostly noise
    reference = [_evidence_by_optimiser(F, (y == k).astype(float)) for k in range(3)]
    assert logme(F, y) == pytest.approx(np.mean([r[0] for r in reference]) / n, abs=1e-7)
    # where the maximum is interior (the signal class), the precisions agree too
    s2, U = singular_spectrum(F)
    t = (y == 1).astype(float)
    value, alpha, beta = bayesian_evidence(s2, U.T @ t, t @ t, n, d)
    assert value == pytest.approx(reference[1][0], abs=1e-6)
    assert alpha == pytest.approx(reference[1][1], rel=1e-3) and beta == pytest.approx(reference[1][2], rel=1e-3)


def test_logme_recovers_the_generating_noise_precision():
    """Targets drawn from the model itself (known beta = 25): the evidence maximiser finds it."""
    rng = np.random.default_rng(3)
    n, d = 5000, 12
    F = rng.standard_normal((n, d)) * rng.uniform(0.5, 2.0, d)
    m = rng.standard_normal(d) / math.sqrt(2.0)  # alpha = 2
    t = F @ m + rng.standard_normal(n) / 5.0
    s2, U = singular_spectrum(F)
    _, alpha, beta = bayesian_evidence(s2, U.T @ t, t @ t, n, d)
    assert beta == pytest.approx(25.0, rel=0.05)
    assert alpha == pytest.approx(d / (m @ m), rel=0.1)  # with n >> d, gamma -> d and alpha -> d / ||m||^2


def test_logme_planted_signal_scores_above_noise():
    """The same labels, features with class-dependent means in a few directions versus pure noise."""
    rng = np.random.default_rng(5)
    n, d, K = 600, 40, 4
    y = rng.integers(0, K, n)
    noise = rng.standard_normal((n, d))
    planted = rng.standard_normal((n, d))
    planted[:, :K] += 1.5 * np.eye(K)[y]
    assert logme(planted, y) > logme(noise, y) + 0.05


@pytest.mark.parametrize("n, d", [(50, 20), (30, 60)])
def test_singular_spectrum_matches_numpy_svd(n, d):
    rng = np.random.default_rng(n)
    F = rng.standard_normal((n, d)) @ np.diag(rng.uniform(0.1, 4, d))
    s2, U = singular_spectrum(F)
    U_ref, s_ref, _ = np.linalg.svd(F, full_matrices=False)
    np.testing.assert_allclose(np.sqrt(s2), s_ref, rtol=1e-8)
    t = rng.standard_normal(n)
    np.testing.assert_allclose(np.abs(U.T @ t), np.abs(U_ref.T @ t), rtol=1e-6, atol=1e-9)


def _naive_h_score(Z: np.ndarray, y: np.ndarray) -> float:
    """tr(pinv(cov f) cov(E[f|y])) with class means written out."""
    mu = Z.mean(0)
    cov = (Z - mu).T @ (Z - mu) / len(Z)
    between = np.zeros_like(cov)
    for c in np.unique(y):
        share = np.mean(y == c)
        diff = Z[y == c].mean(0) - mu
        between += share * np.outer(diff, diff)
    return float(np.trace(np.linalg.pinv(cov) @ between))


@pytest.mark.parametrize("n, d", [(400, 15), (60, 90)])
def test_h_score_unshrunk_matches_the_naive_formula(n, d):
    rng = np.random.default_rng(d)
    y = rng.choice(4, n, p=[0.4, 0.3, 0.2, 0.1])
    Z = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + 0.7 * rng.standard_normal((4, d))[y]
    value, delta = h_score(Z, y, shrinkage=0.0)
    assert delta == 0 and value == pytest.approx(_naive_h_score(Z, y), rel=1e-6)


def test_h_score_shrunk_matches_sklearn_ledoit_wolf():
    """The Ledoit-Wolf version against scikit-learn's estimator and the formula written out."""
    rng = np.random.default_rng(11)
    n, d = 120, 70
    y = rng.integers(0, 3, n)
    Z = rng.standard_normal((n, d)) * rng.uniform(0.3, 2, d) + rng.standard_normal((3, d))[y] * 0.5
    value, delta = h_score(Z, y)
    lw = LedoitWolf().fit(Z)
    assert delta == pytest.approx(lw.shrinkage_, rel=1e-9)
    np.testing.assert_allclose(ledoit_wolf_covariance(Z - Z.mean(0))[0], lw.covariance_, rtol=1e-9, atol=1e-12)
    M = np.stack([Z[y == c].mean(0) - Z.mean(0) for c in range(3)])
    share = np.bincount(y) / n
    between = (M.T * share) @ M
    assert value == pytest.approx(float(np.trace(np.linalg.inv(lw.covariance_) @ ((1 - lw.shrinkage_) * between))), rel=1e-8)


def test_h_score_two_gaussian_classes_reaches_the_population_value():
    """f | y ~ N(mu_y, Sigma), equal priors: H = q / (1 + q), q = Delta^T Sigma^-1 Delta / 4 (Sherman-Morrison)."""
    rng = np.random.default_rng(2)
    d, n = 6, 40000
    A = rng.standard_normal((d, d))
    Sigma = A @ A.T + np.eye(d)
    delta_mu = rng.standard_normal(d)
    q = delta_mu @ np.linalg.solve(Sigma, delta_mu) / 4
    y = rng.integers(0, 2, n)
    Z = rng.multivariate_normal(np.zeros(d), Sigma, n) + np.outer(y, delta_mu)
    assert h_score(Z, y, shrinkage=0.0)[0] == pytest.approx(q / (1 + q), rel=0.02)
    assert h_score(Z, y)[0] == pytest.approx(q / (1 + q), rel=0.03)  # n >> d: little shrinkage


@pytest.mark.parametrize("k, n, d", [(7, 50, 30), (12, 40, 90)])
def test_rankme_of_k_equal_singular_values_is_k(k, n, d):
    rng = np.random.default_rng(k)
    U = np.linalg.qr(rng.standard_normal((n, k)))[0]
    V = np.linalg.qr(rng.standard_normal((d, k)))[0]
    F = 3.7 * U @ V.T
    records = transfer_records(torch.tensor(F)[None], rng.integers(0, 2, n))
    value = next(r["value"] for r in records if r["metric"] == "rankme")
    assert value == pytest.approx(k, rel=1e-4)


def test_rankme_matches_scipy_entropy_of_numpy_singular_values():
    rng = np.random.default_rng(4)
    F = rng.standard_normal((80, 50)) * np.geomspace(10, 0.01, 50)
    s = np.linalg.svd(F, compute_uv=False)
    reference = math.exp(entropy(s / s.sum() + 1e-7))  # scipy normalises again: a relative change of ~5e-6
    records = transfer_records(torch.tensor(F)[None], rng.integers(0, 2, 80))
    assert next(r["value"] for r in records if r["metric"] == "rankme") == pytest.approx(reference, rel=1e-4)
    assert rankme(s) == pytest.approx(math.exp(-np.sum((s / s.sum() + 1e-7) * np.log(s / s.sum() + 1e-7))), rel=1e-12)


def test_alpha_req_of_a_power_law_spectrum():
    """An exact spectrum i^-1.3 gives 1.3 with a perfect fit; Gaussian data with that covariance
    (n >> d) gives it to a few percent through the features' covariance."""
    exact = np.arange(1, 201, dtype=float) ** -1.3
    alpha, r2 = alpha_req(np.random.default_rng(0).permutation(exact))
    assert alpha == pytest.approx(1.3, abs=1e-10) and r2 == pytest.approx(1.0, abs=1e-12)
    rng = np.random.default_rng(1)
    d, n = 60, 30000
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0]
    F = (rng.standard_normal((n, d)) * np.arange(1, d + 1) ** -0.65) @ basis.T + 5.0  # covariance eigenvalues i^-1.3
    records = transfer_records(torch.tensor(F)[None], rng.integers(0, 2, n))
    assert next(r["value"] for r in records if r["metric"] == "alpha_req") == pytest.approx(1.3, rel=0.04)


def test_transfer_records_on_planted_versus_noise_layers():
    """Each estimator through the per-layer records: a layer with class structure scores higher on the
    label-aware ones than pure noise; the records carry n and no interval."""
    rng = np.random.default_rng(9)
    n, d, K = 300, 24, 3
    y = rng.integers(0, K, n)
    noise = rng.standard_normal((n, d))
    planted = rng.standard_normal((n, d))
    planted[:, :K] += 2.0 * np.eye(K)[y]
    records = transfer_records(torch.tensor(np.stack([noise, planted]), dtype=torch.float32), y)
    value = {(r["layer"], r["metric"]): r for r in records}
    assert value[(1, "logme")]["value"] > value[(0, "logme")]["value"]
    assert value[(1, "h_score")]["value"] > 5 * value[(0, "h_score")]["value"]
    assert value[(0, "h_score")]["value"] == pytest.approx(h_score((noise - noise.mean(0)) / noise.std(0), y)[0], rel=1e-5)
    assert all(r["n"] == n and math.isnan(r["ci_low"]) and math.isnan(r["ci_high"]) for r in records)


# ----------------------------------------------------------------------------- baselines
def test_majority_scores_match_sklearn_dummy_classifier():
    rng = np.random.default_rng(0)
    y = rng.choice(4, 503, p=[0.35, 0.33, 0.2, 0.12])
    folds = list(StratifiedKFold(5, shuffle=True, random_state=3).split(np.zeros(len(y)), y))
    scores, correct = majority_scores(y, folds)
    reference = cross_val_score(DummyClassifier(strategy="most_frequent"), np.zeros((len(y), 1)), y, cv=folds)
    np.testing.assert_allclose(scores["accuracy"], reference)
    f1 = cross_val_score(DummyClassifier(strategy="most_frequent"), np.zeros((len(y), 1)), y, cv=folds, scoring="f1_macro")
    np.testing.assert_allclose(scores["macro_f1"], f1)
    assert correct.mean() == pytest.approx(np.average(reference, weights=[len(t) for _, t in folds]))


def _naive_paired_bootstrap(a, b, fold, units, resamples, seed):
    """Resample units within each fold with a loop; statistic: mean over folds of the accuracy difference."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        per_fold = []
        for f in np.unique(fold):
            members = np.unique(units[fold == f])
            drawn = rng.choice(members, len(members), replace=True)
            index = np.concatenate([np.flatnonzero((units == u) & (fold == f)) for u in drawn])
            per_fold.append(a[index].mean() - b[index].mean())
        values.append(np.mean(per_fold))
    return np.quantile(values, [0.025, 0.975])


@pytest.mark.parametrize("grouped", [False, True])
def test_paired_accuracy_difference_against_a_naive_bootstrap(grouped):
    """Strongly correlated predictors (the baseline differs on 8 % of examples): the paired interval
    is the naive loop's (up to Monte Carlo error) and far narrower than an unpaired one."""
    rng = np.random.default_rng(1)
    n = 400
    units = rng.integers(0, 120, n) if grouped else np.arange(n)
    unit_fold = rng.integers(0, 4, units.max() + 1)
    fold = unit_fold[units]
    a = rng.random(n) < 0.7
    b = a.copy()
    flip = rng.random(n) < 0.08
    b[flip] = ~b[flip]
    value, low, high, count = paired_accuracy_difference(a, b, fold, units if grouped else None, n_resamples=2000)
    expected = np.mean([a[fold == f].mean() - b[fold == f].mean() for f in range(4)])
    assert value == pytest.approx(expected, abs=1e-12) and count == len(np.unique(units))
    ref_low, ref_high = _naive_paired_bootstrap(a, b, fold, units, 2000, seed=7)
    assert low == pytest.approx(ref_low, abs=0.006) and high == pytest.approx(ref_high, abs=0.006)
    unpaired = 2 * 1.96 * math.sqrt(a.var() / n + b.var() / n)
    assert high - low < 0.5 * unpaired


def test_evaluate_layers_majority_rows_and_differences():
    """Majority rows equal scikit-learn's DummyClassifier under the same outer folds, on every layer;
    accuracy_above_majority is exactly accuracy minus that row."""
    rng = np.random.default_rng(0)
    n, d = 300, 8
    y = rng.choice(3, n, p=[0.5, 0.3, 0.2])
    signal = rng.standard_normal((n, d))
    signal[:, 0] += 2.0 * y
    X = torch.tensor(np.stack([rng.standard_normal((n, d)), signal]), dtype=torch.float32)
    records = evaluate_layers(X, y, folds=4, inner_folds=2, Cs=[1.0], mdl=False, fisher=False, shuffled=False,
                              control_task=False, majority=True, transfer=True, seed=2)
    rows = {(r["layer"], r["metric"], r.get("init", "model")): r for r in records}
    folds = StratifiedKFold(4, shuffle=True, random_state=2).split(np.zeros(n), y)
    reference = cross_val_score(DummyClassifier(strategy="most_frequent"), np.zeros((n, 1)), y, cv=folds).mean()
    for layer in (0, 1):
        assert rows[(layer, "accuracy", "majority")]["value"] == pytest.approx(reference)
        above = rows[(layer, "accuracy_above_majority", "model")]
        assert above["value"] == pytest.approx(rows[(layer, "accuracy", "model")]["value"] - reference, abs=1e-12)
        assert above["ci_low"] <= above["value"] <= above["ci_high"]
        assert {(layer, m, "model") for m in ("logme", "h_score", "rankme", "alpha_req")} <= set(rows)
    assert rows[(1, "accuracy_above_majority", "model")]["ci_low"] > 0.1  # a strong signal clears the baseline
    assert rows[(0, "accuracy_above_majority", "model")]["ci_low"] < 0  # noise does not


@pytest.mark.parametrize("n, d, offset", [(60, 8, 1e7), (20, 40, 1e6), (200, 64, 1e6)])
def test_features_with_a_huge_common_offset_keep_their_small_singular_values(n, d, offset):
    """A common offset far above the spread (residual streams with massive activations) makes the Gram matrix lose the
    small squared singular values; the spectrum, LogME and alpha-ReQ still match numpy's SVD of the features and the
    eigenvalues of numpy's covariance (which centres the features before multiplying)."""
    rng = np.random.default_rng(n)
    y = rng.integers(0, 3, n)
    F = rng.standard_normal((n, d)) * np.linspace(1, 3, d) + 2 * y[:, None] * (np.arange(d) == 0) + offset
    U_ref, s_ref, _ = np.linalg.svd(F, full_matrices=False)
    s2, U = singular_spectrum(F)
    np.testing.assert_allclose(np.sqrt(s2), s_ref, rtol=1e-6)
    T = (y[:, None] == np.arange(3)).astype(float)
    evidence = bayesian_evidence(s_ref**2, U_ref.T @ T, T.sum(0), n, d)[0]
    assert logme(F, y) == pytest.approx(np.mean(evidence) / n, rel=1e-6)
    records = {r["metric"]: r["value"] for r in transfer_records(torch.tensor(F)[None], y)}
    assert records["alpha_req"] == pytest.approx(alpha_req(np.linalg.eigvalsh(np.cov(F.T)))[0], rel=1e-6)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_features_holding_nan_or_infinity_are_refused_naming_the_layer(bad):
    rng = np.random.default_rng(0)
    X = torch.tensor(rng.standard_normal((3, 40, 6)))
    X[2, 7, 1] = bad
    y = np.arange(40) % 2
    with pytest.raises(ValueError, match=r"layer position 2 \(counting the probed layers from 0\) holds 1 NaN or infinite values "
                                         r"\(first at example 7\)"):
        transfer_records(X, y)
    with pytest.raises(ValueError, match=r"layer position 2 .* \(first at example 7\)"):
        evaluate_layers(X, y, folds=2, inner_folds=2, Cs=[1.0], control_task=False, mdl=False)


def test_rankme_of_all_zero_features_is_nan_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(rankme(np.zeros(5)))
        records = transfer_records(torch.zeros(1, 30, 5, dtype=torch.float64), np.arange(30) % 2)
    assert math.isnan(next(r["value"] for r in records if r["metric"] == "rankme"))


@pytest.mark.parametrize("labels, refusal", [
    (np.tile([0.0, 1.0, 0.5], 14)[:40], r"got 0\.0, 1\.0, 0\.5"),  # int64 would truncate 0.5 to class 0
    (np.tile(["a", "b"], 20), r"got 'a', 'b', 'a'"),
    (np.tile([-1, 1], 20), r"got -1, 1, -1"),
])
def test_probe_labels_that_are_not_class_indices_are_refused_not_truncated(labels, refusal):
    X = torch.tensor(np.random.default_rng(0).standard_normal((1, 40, 4)))
    with pytest.raises(ValueError, match=r"probe labels must be class indices 0\.\.K-1 \(whole numbers >= 0\); " + refusal):
        evaluate_layers(X, labels, folds=2, inner_folds=2, Cs=[1.0], control_task=False, mdl=False)
    with pytest.raises(ValueError, match=r"labels go up to 2 but n_classes is 2"):
        evaluate_layers(X, np.arange(40) % 3, n_classes=2, folds=2, inner_folds=2, Cs=[1.0], control_task=False, mdl=False)
