"""Separability metrics of probe predictions and of features, and the control tasks.

- Held-out accuracy, macro-F1 and cross-entropy of a linear probe (Alain & Bengio 2016).
- Control task (Hewitt & Liang 2019, "Designing and Interpreting Probes with Control
  Tasks"): every word type gets a fixed random label drawn from the task's label
  distribution; *selectivity* = task accuracy - control accuracy. It measures how much of the
  accuracy a probe could reach by memorising word types, so it is defined only where types
  repeat (token-level tasks); with one example per type it is a random label per example.
- Label-permutation baseline (Ojala & Garriga 2010, "Permutation Tests for Studying Classifier
  Performance", test 1): the same probe on the labels permuted across examples, which keeps
  the class distribution and breaks every link between features and labels.
- Online (prequential) codelength (Voita & Titov 2020, "Information-Theoretic Probing with
  Minimum Description Length"): the first block is sent with the uniform code, every later
  block with a probe trained on all examples before it.
- Fisher's criterion ``tr(S_W^-1 S_B)`` (Fisher 1936; multi-class form, Fukunaga 1990,
  "Introduction to Statistical Pattern Recognition", section 10.2, criterion J_1): the
  between-class scatter measured in units of the within-class scatter, summed over the
  discriminant directions; a probe-free measure of linear separability. ``S_W`` is shrunk
  towards a multiple of the identity by Ledoit & Wolf (2004), so it is invertible when
  features outnumber examples.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np
import torch
from sklearn.covariance import ledoit_wolf

# Voita & Titov (2020), section 3.2: block boundaries in percent of the data.
MDL_FRACTIONS = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.25, 12.5, 25.0, 50.0, 100.0)


def classification_scores(log_proba: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """``accuracy``, ``macro_f1`` and ``cross_entropy`` (nats per example) of predictions.

    ``log_proba``: ``[example, class]`` natural-log probabilities; ``y``: ``[example]`` class indices.
    Macro-F1 averages the F1 of every class present in ``y`` or the predictions (scikit-learn).
    """
    log_proba = np.asarray(log_proba, dtype=np.float64)
    y = np.asarray(y)
    pred = log_proba.argmax(1)
    return {
        "accuracy": float((pred == y).mean()),
        "macro_f1": macro_f1(y, pred),
        "cross_entropy": float(-log_proba[np.arange(len(y)), y].mean()),
    }


def macro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    """Unweighted mean of per-class F1 ``2 TP / (2 TP + FP + FN)`` over the classes in ``y`` or ``pred``
    (scikit-learn's ``f1_score(average="macro", zero_division=0)``, without its overhead)."""
    y, pred = np.asarray(y), np.asarray(pred)
    classes = np.union1d(y, pred)
    tp = np.array([np.sum((y == c) & (pred == c)) for c in classes], dtype=np.float64)
    true = np.array([np.sum(y == c) for c in classes], dtype=np.float64)
    predicted = np.array([np.sum(pred == c) for c in classes], dtype=np.float64)
    return float(np.mean(2 * tp / (true + predicted)))


def control_labels(types: Sequence[Hashable], y: np.ndarray, seed: int = 0) -> np.ndarray:
    """Hewitt & Liang (2019) control task: a fixed random label per word type.

    Each distinct value of ``types`` (``[example]``: a word, token id or lemma) gets one label
    drawn from the empirical distribution of ``y`` (``[example]`` class indices); every
    example of that type carries it. Returns ``[example]`` control labels.
    """
    y = np.asarray(y)
    if len(types) != len(y):
        raise ValueError(f"{len(types)} word types for {len(y)} labels")
    rng = np.random.default_rng(seed)
    codes: dict[Hashable, int] = {}
    type_index = np.array([codes.setdefault(t, len(codes)) for t in types], dtype=np.int64)
    draws = rng.choice(y, size=len(codes), replace=True)
    return draws[type_index]


def types_repeat(types: Sequence[Hashable], share: float = 0.5) -> bool:
    """Whether word types repeat enough for the control task: at least ``share`` of the examples
    have a type that occurs more than once (``types [example]``)."""
    codes: dict[Hashable, int] = {}
    index = np.array([codes.setdefault(t, len(codes)) for t in types], dtype=np.int64)
    counts = np.bincount(index, minlength=len(codes))
    return len(index) > 0 and float((counts[index] > 1).mean()) >= share


def shuffled_labels(y: np.ndarray, seed: int = 0) -> np.ndarray:
    """Label-permutation baseline (Ojala & Garriga 2010): the labels ``[example]`` permuted across
    examples, so the class distribution is kept and the features no longer predict them."""
    return np.random.default_rng(seed).permutation(np.asarray(y))


def mdl_block_ends(n: int, fractions: Sequence[float] = MDL_FRACTIONS) -> list[int]:
    """End indices (exclusive) of the online-code blocks for ``n`` examples.

    Block ``i`` covers examples ``ends[i-1]:ends[i]`` (block 0 starts at 0); ``fractions`` are
    percentages, the last one 100. Empty blocks (tiny ``n``) are merged; the first block has
    at least one example.
    """
    if not fractions or abs(fractions[-1] - 100.0) > 1e-9:
        raise ValueError("MDL block fractions are percentages ending at 100")
    ends = sorted({min(n, max(1, int(round(f / 100 * n)))) for f in fractions})
    return ends


def online_codelength(
    log_proba: np.ndarray, y: np.ndarray, first_block: int, n_classes: int
) -> tuple[float, np.ndarray]:
    """Online codelength in bits (Voita & Titov 2020, eq. 3).

    ``log_proba [example, class]``: row ``j >= first_block`` is the natural-log prediction for
    example ``j`` by the probe trained on the examples of all blocks before ``j``'s block
    (rows ``< first_block`` are ignored); ``y [example]`` the labels in transmission order.
    Codelength = ``first_block * log2(K) + sum_j -log2 p(y_j | x_j)``. Returns the codelength and
    the per-example code lengths of the transmitted examples ``[example - first_block]``.
    """
    log_proba = np.asarray(log_proba, dtype=np.float64)
    y = np.asarray(y)
    tail = -log_proba[np.arange(first_block, len(y)), y[first_block:]] / math.log(2)
    return float(first_block * math.log2(n_classes) + tail.sum()), tail


def fisher_criterion(Z: torch.Tensor, y: torch.Tensor | np.ndarray, shrinkage: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fisher's criterion ``tr(S_W^-1 S_B)`` per layer, with ``S_W`` shrunk (Ledoit & Wolf 2004).

    ``Z``: features ``[layer, example, feature]`` (plastiscope passes the standardised features
    the probe sees, so the shrinkage target treats every feature alike); ``y``: ``[example]``
    class indices. With ``p_c`` the share of class ``c``, ``mu_c`` its mean and ``mu`` the mean
    of all examples::

        S_B = sum_c p_c (mu_c - mu)(mu_c - mu)^T                      (between-class covariance)
        S_W = 1/n sum_c sum_{i in c} (z_i - mu_c)(z_i - mu_c)^T          (within-class covariance)
        S_W* = (1 - delta) S_W + delta tr(S_W)/d I                      (Ledoit-Wolf shrinkage)
        J = tr(S_W*^-1 S_B) = sum_c p_c (mu_c - mu)^T S_W*^-1 (mu_c - mu)

    ``J`` is the sum of the eigenvalues of ``S_W*^-1 S_B`` (the discriminant directions' squared
    class separations in within-class standard deviations; at most ``classes - 1`` non-zero):
    0 when the class means coincide, large when classes are tight and far apart. ``delta`` is
    the Ledoit-Wolf intensity of the pooled within-class residuals
    (:func:`sklearn.covariance.ledoit_wolf`, ``assume_centered=True``), or ``shrinkage`` when
    given (0: no shrinkage; then ``J`` equals the summed eigenvalues of scikit-learn's
    ``LinearDiscriminantAnalysis(solver="eigen")``). Returns ``(J [layer], delta [layer])``.

    A sample estimate is biased upwards: with labels unrelated to the features it is of order
    ``(K - 1) d / n`` rather than 0 (sampling noise in the class means), so compare values at the
    same ``n`` and ``d`` (across checkpoints of one sweep, or against the random-init baseline).
    Cost per layer: ``O(n d^2 + d^3)`` float64 on the CPU, one layer in memory at a time (about
    3 CPU seconds at ``n = 2000``, ``d = 2048``).
    """
    y = np.asarray(y, dtype=np.int64)
    classes, y = np.unique(y, return_inverse=True)
    onehot = np.eye(len(classes))[y]  # [n, K]
    share = onehot.mean(0)  # [K]
    L = Z.shape[0]
    J, delta = np.zeros(L), np.zeros(L)
    for layer in range(L):
        z = Z[layer].double().numpy()  # [n, d]
        means = onehot.T @ z / onehot.sum(0)[:, None]  # [K, d]
        residuals = z - means[y]
        if shrinkage is None:
            S, delta[layer] = ledoit_wolf(residuals, assume_centered=True)
        else:
            S = residuals.T @ residuals / len(z)
            delta[layer] = float(shrinkage)
            S = (1 - delta[layer]) * S + delta[layer] * np.trace(S) / S.shape[0] * np.eye(S.shape[0])
        M = means - z.mean(0)  # [K, d]
        try:
            X = np.linalg.solve(S, M.T)  # [d, K]
        except np.linalg.LinAlgError:  # singular (a feature constant within every class): on its range
            X = np.linalg.pinv(S, hermitian=True) @ M.T
        J[layer] = float(np.einsum("k,kd,dk->", share, M, X))
    return J, delta
