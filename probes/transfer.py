"""Transferability estimators: how well a layer's features should serve a task, with no probe trained.

Four scores of the pooled features ``F [example, feature]`` of one layer, computed in
float64 on the CPU from the features the shared forward pass already collected:

- :func:`logme` (You, Liu, Wang, Long 2021, "LogME: Practical Assessment of Pre-trained
  Models for Transfer Learning", ICML): the log marginal evidence of a Bayesian linear
  regression from the features to each class's one-hot target, maximised over the prior
  precision ``alpha`` and the noise precision ``beta`` by the paper's fixed-point iteration
  (its Algorithm 1, MacKay's updates), averaged over classes and divided by the number of
  examples. Higher = the labels are a more probable linear function of the features.
- :func:`h_score` (Bao, Li, Huang, Zheng, Wang 2019, "An Information-Theoretic Approach to
  Transferability in Task Transfer Learning", ICIP): ``tr(cov(f)^-1 cov(E[f|y]))``, with the
  shrinkage-regularised covariance Ibrahim, Ponomareva & Mazumder (2022, "Newer is not always
  better: Rethinking transferability metrics, their peculiarities, stability and
  performance", ECML-PKDD) recommend. Higher = class means further apart in units of the
  features' spread.
- :func:`rankme` (Garrido, Balestriero, Najman, LeCun 2023, "RankMe: Assessing the downstream
  performance of pretrained self-supervised representations by their rank", ICML): the
  exponential of the entropy of the normalised singular values of the feature matrix, a
  smooth effective rank; label-free. Higher = more directions in use.
- :func:`alpha_req` (Agrawal, Mondal, Ghosh, Richards 2022, "alpha-ReQ: Assessing
  Representation Quality in Self-Supervised Learning by measuring eigenspectrum decay",
  NeurIPS): the exponent ``alpha`` of a power law ``lambda_i ~ i^-alpha`` fitted to the
  eigenvalues of the features' covariance; label-free. The paper finds downstream accuracy
  best near ``alpha = 1``: lower = a flatter, higher-rank spectrum, higher = faster decay.

LogME and RankMe read the raw features (as their papers do: LogME is unchanged by a global
rescaling of the features, RankMe by any rescaling), alpha-ReQ their covariance (centred),
the H-score the standardised features (the probe's view; without shrinkage the H-score is
unchanged by any invertible linear map of the features, standardising only makes the
shrinkage target, a multiple of the identity, treat every feature alike).

Cost per layer: one symmetric eigendecomposition of the smaller Gram matrix (``n x n`` or
``d x d``) shared by LogME and RankMe, the eigenvalues of the centred one, and one Ledoit-Wolf
covariance with a ``d x d`` solve; see ``benchmarks/probes.py --transfer`` for the measured time.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.linalg
import torch

TRANSFER_METRICS = ("logme", "h_score", "rankme", "alpha_req")
RANKME_EPS = 1e-7  # the epsilon of Garrido et al. (2023)


def gram(F: np.ndarray) -> np.ndarray:
    """The smaller Gram matrix of ``F [n, d]``: ``F F^T [n, n]`` when ``n <= d``, else ``F^T F [d, d]`` (float64)."""
    F = np.asarray(F, dtype=np.float64)
    return F @ F.T if F.shape[0] <= F.shape[1] else F.T @ F


def singular_spectrum(F: np.ndarray, G: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Non-zero squared singular values ``s2 [r]`` (descending) and left singular vectors ``U [n, r]`` of ``F [n, d]``.

    From the eigendecomposition of the smaller Gram matrix ``G`` (:func:`gram`; ``F F^T`` when
    ``n <= d``, else ``F^T F`` with ``U = F V / s``): the thin SVD's factors at about half its
    cost. Eigenvalues of a Gram matrix are exact to about ``eps s_max^2``, so squared singular
    values below ``max(n, d) eps s_max^2`` count as zero and are left out. That loses the small
    singular values of an ill-conditioned ``F`` (features with a large common offset, a few
    dimensions far larger than the rest): when the kept ones span more than 8 orders of magnitude
    (4 in ``s``) or fewer than ``min(n, d)`` are kept, the SVD of ``F`` itself is taken instead
    (exact to ``eps s_max``), keeping singular values above ``max(n, d) eps s_max``.
    """
    F = np.asarray(F, dtype=np.float64)
    n, d = F.shape
    eps = np.finfo(np.float64).eps
    s2, Q = np.linalg.eigh(gram(F) if G is None else G)
    order = np.argsort(s2)[::-1]
    s2, Q = s2[order], Q[:, order]
    keep = s2 > max(n, d) * eps * max(float(s2[0]), 0.0) if len(s2) else np.zeros(0, dtype=bool)
    s2, Q = s2[keep], Q[:, keep]
    if len(s2) and (len(s2) < min(n, d) or s2[0] > 1e8 * s2[-1]):
        U, s, _ = np.linalg.svd(F, full_matrices=False)
        keep = s > max(n, d) * eps * s[0]
        return s[keep] ** 2, U[:, keep]
    U = Q if n <= d else (F @ Q) / np.sqrt(s2)
    return s2, U


def covariance_eigenvalues(F: np.ndarray, G: np.ndarray | None = None) -> np.ndarray:
    """Eigenvalues ``[min(n, d)]`` of the covariance ``1/(n-1) sum_i (f_i - mu)(f_i - mu)^T`` of ``F [n, d]``
    (the non-zero ones all among them), from the smaller Gram matrix ``G`` of :func:`gram`, centred in place
    of recomputing it: ``H G H`` (``H = I - 11^T/n``) when ``n <= d``, else ``G - n mu mu^T``. Centring ``G``
    subtracts numbers of the size of the features' mean: where the mean outweighs the spread (``tr G``
    over ``10^4`` times the centred trace, e.g. a constant offset of ``10^3`` spreads) the digits lost would
    shift the small eigenvalues, so the Gram matrix of the centred features is formed instead. When
    ``n <= d`` the smallest eigenvalue is exactly 0 (``H F`` has rank at most ``n - 1``)."""
    F = np.asarray(F, dtype=np.float64)
    n, d = F.shape
    G = gram(F) if G is None else G

    def centre(G: np.ndarray) -> np.ndarray:
        if n <= d:
            row = G.mean(1)
            return G - row[:, None] - row[None, :] + row.mean()
        mu = F.mean(0)
        return G - n * np.outer(mu, mu)

    centred = centre(G)
    if np.trace(G) > 1e4 * max(np.trace(centred), 0.0):
        centred = gram(F - F.mean(0))
    values = np.linalg.eigvalsh(centred)
    if n <= d:
        values[0] = 0.0
    return np.clip(values, 0, None) / max(n - 1, 1)


def ledoit_wolf_covariance(centred: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit & Wolf (2004) shrinkage of the covariance of centred rows ``[n, d]``: ``((1 - delta) S + delta mu I, delta)``.

    The estimate of :func:`sklearn.covariance.ledoit_wolf` (``assume_centered=True``) with one
    ``d x d`` product instead of three: ``S = X^T X / n``, ``mu = tr(S) / d``, the intensity
    ``delta = min(b, c) / c`` with ``c = ||S - mu I||_F^2 / d`` and
    ``b = (sum_i ||x_i||^4 / n - ||S||_F^2) / (d n)``: their ``b^2 = 1/n^2 sum_i ||x_i x_i^T - S||^2 / d``,
    with ``sum_i ||x_i x_i^T - S||^2 = sum_i ||x_i||^4 - n ||S||^2`` in place of the products of squares.
    """
    X = np.asarray(centred, dtype=np.float64)
    n, d = X.shape
    S = X.T @ X / n
    mu = float(np.trace(S)) / d
    norm2 = float((S**2).sum())
    c = (norm2 - 2 * mu * float(np.trace(S)) + d * mu**2) / d
    b = (float(((X**2).sum(1) ** 2).sum()) / n - norm2) / (d * n)
    delta = 0.0 if c <= 0 else min(b, c) / c
    S *= 1 - delta
    S[np.diag_indices(d)] += delta * mu
    return S, delta


def bayesian_evidence(
    s2: np.ndarray, z: np.ndarray, t2: float | np.ndarray, n: int, d: int, tol: float = 1e-12, max_iter: int = 5000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximised log evidence of ``t = F m + noise``, from the SVD of ``F [n, d]``; several targets at once.

    Model (You et al. 2021): ``m ~ N(0, alpha^-1 I_d)``, ``t | F, m ~ N(F m, beta^-1 I_n)``;
    log evidence ``L = n/2 log beta + d/2 log alpha - n/2 log 2 pi - beta/2 ||F m - t||^2
    - alpha/2 ||m||^2 - 1/2 log|A|`` with ``A = alpha I + beta F^T F`` and ``m = beta A^-1 F^T t``
    the posterior mean. ``alpha`` and ``beta`` start at 1 and follow the paper's fixed point
    (Algorithm 1): ``gamma = sum_i beta s_i^2 / (alpha + beta s_i^2)``, ``alpha <- gamma / ||m||^2``,
    ``beta <- (n - gamma) / ||F m - t||^2``, until both change by less than ``tol`` (relative) or
    ``L`` by less than ``tol * n``.

    ``s2 [r]``: the non-zero squared singular values of ``F``; ``z = U^T t`` (``[r]`` or ``[r,
    target]``; ``U [n, r]`` the left singular vectors); ``t2 = ||t||^2`` (per target). With ``F = U
    diag(s) V^T`` every quantity is a sum over ``i``, written in ``rho = beta / alpha`` and
    ``c_i = 1 / (1 + rho s2_i)`` so that neither a target without signal (``alpha -> inf``) nor one
    without noise (``beta -> inf``) overflows: ``gamma = sum 1 - c_i``, ``alpha ||m||^2 = beta rho
    sum s2 z^2 c^2``, ``||F m - t||^2 = sum z^2 c^2 + t2 - ||z||^2`` and ``d/2 log alpha - 1/2 log|A|
    = -1/2 sum log(1 + rho s2_i)``. Where the evidence keeps growing with ``alpha`` (no linear
    signal) the iteration stops once ``rho s2_max < 1e-15``: ``L`` is then its limit to machine
    precision. Returns ``(L, alpha, beta)``, each ``[target]`` (scalars for one target); ``L`` is NaN
    for an all-zero target or features, and where an update leaves the finite numbers (a target with
    no component in the features' span, or one they fit with no noise at all).
    """
    s2 = np.asarray(s2, dtype=np.float64)
    z = np.asarray(z, dtype=np.float64)
    one = z.ndim == 1
    z2 = (z[:, None] if one else z) ** 2  # [r, target]
    t2 = np.broadcast_to(np.asarray(t2, dtype=np.float64), (z2.shape[1],))
    outside = np.clip(t2 - z2.sum(0), 0.0, None)  # the part of each t orthogonal to the features' span
    top = float(s2[0]) if len(s2) else 0.0

    def evaluate(alpha: np.ndarray, beta: np.ndarray, which: np.ndarray) -> tuple[np.ndarray, ...]:
        """``(gamma, n - gamma, alpha ||m||^2, ||F m - t||^2, L)`` of the targets ``which``."""
        rho = beta / alpha
        c = 1.0 / (1.0 + s2[:, None] * rho[None, :])  # [r, target]
        gamma = (1.0 - c).sum(0)
        rest = c.sum(0) + (n - len(s2))
        alpha_m2 = beta * rho * (s2[:, None] * z2[:, which] * c**2).sum(0)
        r2 = (z2[:, which] * c**2).sum(0) + outside[which]
        L = n / 2 * np.log(beta) - n / 2 * math.log(2 * math.pi) - beta / 2 * r2 - alpha_m2 / 2 + np.log(c).sum(0) / 2
        return gamma, rest, alpha_m2, r2, L

    alpha, beta = np.ones(z2.shape[1]), np.ones(z2.shape[1])
    active = (t2 > 0) & (top > 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        L = evaluate(alpha, beta, np.arange(len(alpha)))[4]
        for _ in range(max_iter):
            if not active.any():
                break
            index = np.flatnonzero(active)
            gamma, rest, alpha_m2, r2, _ = evaluate(alpha[index], beta[index], index)
            new_alpha, new_beta = gamma * alpha[index] / alpha_m2, rest / r2
            new_L = evaluate(new_alpha, new_beta, index)[4]
            ok = np.isfinite(new_alpha) & np.isfinite(new_beta) & (new_alpha > 0) & (new_beta > 0) & np.isfinite(new_L)
            done = (
                ((np.abs(new_alpha - alpha[active]) <= tol * alpha[active]) & (np.abs(new_beta - beta[active]) <= tol * beta[active]))
                | (np.abs(new_L - L[active]) <= tol * n)
                | (new_beta / new_alpha * top < 1e-15)
            )
            alpha[index[ok]], beta[index[ok]], L[index[ok]] = new_alpha[ok], new_beta[ok], new_L[ok]
            L[index[~ok]] = np.nan
            active[index[done | ~ok]] = False
    L = np.where((t2 > 0) & (top > 0), L, np.nan)  # no evidence for an empty target or all-zero features
    if one:
        return L[0], alpha[0], beta[0]
    return L, alpha, beta


def logme(F: np.ndarray, y: np.ndarray, spectrum: tuple[np.ndarray, np.ndarray] | None = None) -> float:
    """LogME (You et al. 2021): the mean over classes of the maximised log evidence per example.

    ``F [n, d]``: features (raw: the paper's choice); ``y [n]``: class indices. For each class
    ``k`` the target is its one-hot column ``t_k = (y == k)``; ``LogME = 1/K sum_k L_k / n``
    with ``L_k`` of :func:`bayesian_evidence`. ``spectrum``: :func:`singular_spectrum` of ``F`` if
    already computed. Cost after the decomposition: ``O(n r K)``.
    """
    F = np.asarray(F, dtype=np.float64)
    n, d = F.shape
    y = np.asarray(y)
    s2, U = spectrum if spectrum is not None else singular_spectrum(F)
    classes = np.unique(y)
    T = (y[:, None] == classes[None, :]).astype(np.float64)  # [n, K]
    L, _, _ = bayesian_evidence(s2, U.T @ T, T.sum(0), n, d)
    return float(np.mean(L)) / n


def h_score(Z: np.ndarray, y: np.ndarray, shrinkage: float | None = None) -> tuple[float, float]:
    """Shrinkage H-score ``tr(S_delta^-1 (1 - delta) S_B)`` (Bao et al. 2019; Ibrahim et al. 2022).

    ``Z [n, d]``: features; ``y [n]``: class indices. With ``p_c`` the share of class ``c``, ``mu_c``
    its mean and ``mu`` the mean of all examples::

        S   = 1/n sum_i (z_i - mu)(z_i - mu)^T                   cov(f)
        S_B = sum_c p_c (mu_c - mu)(mu_c - mu)^T                  cov(E[f | y])
        S_delta = (1 - delta) S + delta tr(S)/d I                 Ledoit-Wolf shrinkage of cov(f)
        H = tr(S_delta^-1 (1 - delta) S_B)

    Bao et al.'s H-score is ``tr(cov(f)^-1 cov(E[f|y]))``; its plug-in estimate is unstable when
    ``d`` approaches ``n``, so, as Ibrahim et al. (2022) recommend, ``cov(f)`` is replaced by
    its Ledoit & Wolf (2004) shrinkage estimate (intensity ``delta``,
    :func:`ledoit_wolf_covariance`) and ``cov(E[f|y])`` scaled by the same ``1 - delta``.
    ``shrinkage``: a fixed ``delta`` instead (0: Bao et al.'s plug-in, computed on the range of
    ``S`` when it is singular). Returns ``(H, delta)``.
    """
    Z = np.asarray(Z, dtype=np.float64)
    y = np.asarray(y)
    classes, index = np.unique(y, return_inverse=True)
    onehot = np.eye(len(classes))[index]  # [n, K]
    share = onehot.mean(0)
    centred = Z - Z.mean(0)
    if shrinkage is None:
        S, delta = ledoit_wolf_covariance(centred)
    else:
        delta = float(shrinkage)
        S = centred.T @ centred / len(Z)
        S = (1 - delta) * S + delta * np.trace(S) / S.shape[0] * np.eye(S.shape[0])
    M = onehot.T @ centred / onehot.sum(0)[:, None]  # [K, d] class means minus the overall mean
    if delta > 0 and np.trace(S) > 0:  # positive definite: a Cholesky solve
        X = scipy.linalg.solve(S, M.T, assume_a="pos", overwrite_a=True)  # [d, K]
    else:  # the plug-in covariance is singular when d >= n: its pseudo-inverse, on its range
        X = np.linalg.pinv(S, hermitian=True) @ M.T
    return float((1 - delta) * np.einsum("k,kd,dk->", share, M, X)), delta


def rankme(singular_values: np.ndarray, eps: float = RANKME_EPS) -> float:
    """RankMe (Garrido et al. 2023): ``exp(-sum_k p_k log p_k)``, ``p_k = s_k / ||s||_1 + eps``.

    ``singular_values [k]``: of the feature matrix ``[n, d]`` (all ``min(n, d)`` of them; the
    zero ones add ``eps`` terms, as in the paper). Between about 1 (one direction) and
    ``min(n, d)`` (a flat spectrum): ``k`` equal non-zero singular values give ``k``. NaN for
    all-zero features (no direction to count).
    """
    s = np.abs(np.asarray(singular_values, dtype=np.float64))
    if not s.sum() > 0:
        return math.nan
    p = s / s.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def alpha_req(eigenvalues: np.ndarray, start: int = 1, stop: int | None = None) -> tuple[float, float]:
    """alpha-ReQ (Agrawal et al. 2022): the decay exponent of ``lambda_i ~ c i^-alpha``.

    ``eigenvalues [k]``: of the features' covariance, any order. Least squares of ``log lambda_i``
    on ``log i`` over ranks ``i = start .. stop`` (1-based, descending order; default ``stop``:
    half the number of positive eigenvalues, at least 2 points, so the tail that a finite sample
    pushes towards 0 -- the lower edge of the Marchenko-Pastur law when ``d`` is near ``n`` --
    does not bend the fit). Returns ``(alpha, r2)``: the exponent and the fit's coefficient of
    determination in log-log. NaN with fewer than 2 positive eigenvalues in range.
    """
    lam = np.sort(np.asarray(eigenvalues, dtype=np.float64))[::-1]
    lam = lam[lam > lam[0] * 1e-12] if len(lam) and lam[0] > 0 else lam[:0]
    stop = max(len(lam) // 2, 2) if stop is None else stop
    ranks = np.arange(start, min(stop, len(lam)) + 1)
    if len(ranks) < 2:
        return math.nan, math.nan
    x, v = np.log(ranks.astype(np.float64)), np.log(lam[ranks - 1])
    slope, intercept = np.polyfit(x, v, 1)
    residual = v - (slope * x + intercept)
    total = ((v - v.mean()) ** 2).sum()
    return float(-slope), float(1 - (residual**2).sum() / total) if total > 0 else math.nan


def refuse_non_finite(X: torch.Tensor) -> None:
    """Refuse features ``[layer, example, feature]`` holding NaN or infinity, naming the first such layer and example."""
    bad = ~torch.isfinite(X)
    if bad.any():
        layer, example, _ = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"probe features: layer position {layer} (counting the probed layers from 0) holds {int(bad[layer].sum())} "
                         f"NaN or infinite values (first at example {example}): the model's activations overflowed; load the checkpoint "
                         "in float32 or check its weights")


def transfer_records(
    X: torch.Tensor, y: np.ndarray, mean: torch.Tensor | None = None, scale: torch.Tensor | None = None
) -> list[dict[str, Any]]:
    """Records ``{layer, metric, value, ci_low, ci_high, n}`` of :data:`TRANSFER_METRICS` per layer of ``X``.

    ``X``: features ``[layer, example, feature]``; ``y``: ``[example]`` class indices; ``mean``,
    ``scale`` ``[layer, feature]``: the standardisation of the H-score's features (default: the
    examples' own). ``n`` is the number of examples. No interval (NaN): a bootstrap over examples
    draws them with replacement, and the duplicated rows change the very spectrum these scores
    are computed from (with ``d`` near ``n``, every duplicate removes a direction), so its
    interval would describe the resampling, not the sampling of examples; it would also cost
    one decomposition per resample. Compare values at the same ``n`` and ``d`` (across the
    checkpoints of a sweep, or against the random-init baseline). Detail columns: ``shrinkage``
    (the H-score's Ledoit-Wolf intensity) and ``fit_r2`` (alpha-ReQ's fit in log-log).
    """
    L, n, d = X.shape
    y = np.asarray(y)
    refuse_non_finite(X)
    records: list[dict[str, Any]] = []
    for layer in range(L):
        F = X[layer].double().numpy()
        G = gram(F)
        s2, U = singular_spectrum(F, G)
        singular = np.concatenate([np.sqrt(s2), np.zeros(min(n, d) - len(s2))])
        alpha, r2 = alpha_req(covariance_eigenvalues(F, G))
        del G
        if mean is not None and scale is not None:
            Z = (F - mean[layer].double().numpy()) / scale[layer].double().numpy()
        else:
            std = F.std(0)
            Z = (F - F.mean(0)) / np.where(std > 0, std, 1.0)
        h, delta = h_score(Z, y)
        del Z
        common = {"layer": layer, "ci_low": math.nan, "ci_high": math.nan, "n": n}
        records += [
            {**common, "metric": "logme", "value": logme(F, y, (s2, U))},
            {**common, "metric": "h_score", "value": h, "shrinkage": delta},
            {**common, "metric": "rankme", "value": rankme(singular)},
            {**common, "metric": "alpha_req", "value": alpha, "fit_r2": r2},
        ]
    return records
