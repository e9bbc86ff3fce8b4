"""Cross-validated probe metrics for every layer at once, from stacked features.

:func:`evaluate_layers` takes features ``X [layer, example, feature]`` and labels and returns
metric records per layer (accuracy, macro-F1, cross-entropy, selectivities, MDL, Fisher's
criterion), each with a 95 % interval. Protocol:

1. Outer stratified K-fold (grouped by document for token-level tasks). Features are
   standardised with the statistics of all examples: label-free, so no label information
   reaches a held-out fold, and one standardisation serves every batched problem.
2. Inside each outer training part, ``C`` is picked per layer by inner stratified
   cross-validation over ``Cs`` (held-out accuracy, ties broken by cross-entropy): the inner
   folds x Cs x outer folds x layers are one batched fit (:func:`~plastiscope.probes.trainer.fit_logistic`).
   This is scikit-learn's ``cross_val_score(GridSearchCV(StandardScaler + LogisticRegression))``
   protocol, on the examples as given: accuracy is that of the data's own class distribution.
3. The probe is refit on the outer training part at that ``C`` -- with the task's labels and,
   in the same batched fit, the control task's (Hewitt & Liang 2019: same ``C``) and the
   permuted labels (Ojala & Garriga 2010) -- and scored on the outer test part.
4. Values are means over outer folds, intervals percentile-bootstrap over folds
   (:func:`plastiscope.stats.bootstrap_ci`); Fisher's criterion is computed on each test part.
5. MDL: one online code (Voita & Titov 2020) over a seeded random order of all examples,
   blocks at :data:`~plastiscope.probes.metrics.MDL_FRACTIONS`, every block's probe fitted in
   one batched call at the ``C`` chosen most often across outer folds; interval by bootstrap
   over the transmitted examples' code lengths.
6. With ``majority=True``: the majority-class baseline under the same outer folds
   (:mod:`~plastiscope.probes.baselines`), as rows with ``init="majority"``, and the probe's
   ``accuracy_above_majority`` with a paired bootstrap interval over the held-out examples.
7. With ``transfer=True``: the transferability estimators of
   :mod:`~plastiscope.probes.transfer` on all examples (no probe, no folds).

:func:`cross_validate` also returns every example's held-out hit (:class:`HeldOut`), from which
a caller compares two models' probes on the same examples and folds.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from plastiscope.probes.baselines import majority_scores, paired_accuracy_difference
from plastiscope.probes.metrics import (
    MDL_FRACTIONS,
    classification_scores,
    control_labels,
    fisher_criterion,
    mdl_block_ends,
    online_codelength,
    shuffled_labels,
    types_repeat,
)
from plastiscope.probes.trainer import Preconditioner, fit_logistic, preconditioner, standardization, threads_for
from plastiscope.probes.transfer import refuse_non_finite, transfer_records
from plastiscope.stats import bootstrap_ci

log = logging.getLogger("plastiscope")

DEFAULT_CS = (0.01, 0.1, 1.0, 10.0)


@dataclass
class HeldOut:
    """Every example's held-out prediction in the outer cross-validation.

    ``fold [example]``: the outer fold whose test part holds the example; ``correct [layer,
    example]``: the probe (task labels) predicts it right; ``majority [example]``: the training
    part's majority class is right.
    """

    fold: np.ndarray
    correct: np.ndarray
    majority: np.ndarray


def class_weights(y: np.ndarray, train: np.ndarray, mode: str | None) -> np.ndarray:
    """Per-example weights ``[example]``: 1 on ``train`` (bool mask), 0 elsewhere; with
    ``mode="balanced"`` scikit-learn's ``n / (K * n_c)`` over the classes present in ``train``."""
    w = train.astype(np.float64)
    if mode is None:
        return w
    if mode != "balanced":
        raise ValueError(f"class_weight must be None or 'balanced', got {mode!r}")
    counts = np.bincount(y[train], minlength=int(y.max()) + 1).astype(np.float64)
    present = counts > 0
    per_class = np.zeros_like(counts)
    per_class[present] = train.sum() / (present.sum() * counts[present])
    return w * per_class[y]


def split(y: np.ndarray, groups: np.ndarray | None, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds (grouped when ``groups`` repeat: examples of one document stay together)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")
        if groups is not None and len(np.unique(groups)) < len(groups):
            folds = StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)
            return list(folds.split(np.zeros(len(y)), y, groups))
        return list(StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def _held_out_scores(
    fit, X: torch.Tensor, y: np.ndarray, groups: Sequence[tuple[list[int], np.ndarray]], n_problems: int
) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and cross-entropy ``[layer, problem]``; ``groups``: (problems, held-out examples) pairs."""
    L = X.shape[0]
    acc = np.zeros((L, n_problems))
    ce = np.zeros_like(acc)
    for problems, examples in groups:
        logp = fit.log_proba(X[:, examples], problems).double()  # [L, p, n_eval, K]
        yv = torch.as_tensor(y[examples])
        acc[:, problems] = (logp.argmax(-1) == yv).double().mean(-1).numpy()
        index = yv[None, None, :, None].expand(L, len(problems), -1, 1)
        ce[:, problems] = (-logp.gather(-1, index).squeeze(-1)).mean(-1).numpy()
    return acc, ce


def _ci(values: np.ndarray) -> tuple[float, float, float]:
    """Mean over folds ``[fold]`` and its bootstrap interval."""
    estimate, low, high = bootstrap_ci(np.asarray(values, dtype=np.float64))
    return float(estimate), float(low), float(high)


def evaluate_layers(X: torch.Tensor, y: np.ndarray, **options: Any) -> list[dict[str, Any]]:
    """The metric records of :func:`cross_validate` (same arguments), without the held-out predictions."""
    return cross_validate(X, y, **options)[0]


def class_indices(y: Any) -> np.ndarray:
    """``y`` as int64 class indices; labels that are not whole numbers >= 0 (text, 0.5, -1) are refused, not truncated."""
    raw = np.asarray(y)
    if raw.dtype.kind == "b":
        return raw.astype(np.int64)
    whole = raw.dtype.kind in "iu" or (raw.dtype.kind == "f" and bool(np.all(np.isfinite(raw) & (raw == np.round(raw)))))
    if not whole or (raw.size and raw.min() < 0):
        shown = ", ".join(repr(v) for v in raw.ravel()[:3].tolist())
        raise ValueError(f"probe labels must be class indices 0..K-1 (whole numbers >= 0); got {shown}, ...: map labels to indices, "
                         "e.g. np.unique(labels, return_inverse=True)[1]")
    return raw.astype(np.int64)


def cross_validate(
    X: torch.Tensor,
    y: np.ndarray,
    types: Sequence[Hashable] | None = None,
    groups: np.ndarray | None = None,
    n_classes: int | None = None,
    folds: int = 5,
    inner_folds: int = 3,
    Cs: Sequence[float] = DEFAULT_CS,
    class_weight: str | None = None,
    max_iter: int = 100,
    tol: float = 1e-4,
    control_task: bool = True,
    shuffled: bool = True,
    mdl: bool = True,
    fisher: bool = True,
    seed: int = 0,
    majority: bool = False,
    transfer: bool = False,
) -> tuple[list[dict[str, Any]], HeldOut]:
    """Metric records ``{layer, metric, value, ci_low, ci_high, n}`` for every layer of ``X``, and every example's
    held-out prediction (:class:`HeldOut`).

    - ``X``: features ``[layer, example, feature]`` (layer index = position in ``X``).
    - ``y``: ``[example]`` class indices ``0..K-1``.
    - ``types``: ``[example]`` word types of the control task. It is reported only when types
      are given and repeat (:func:`~plastiscope.probes.metrics.types_repeat`: at least half the
      examples share their type with another); otherwise it is left out with a warning.
    - ``groups``: ``[example]`` document ids; examples of one document share a fold.

    Metric names (all held-out, means over outer folds): ``accuracy``, ``macro_f1``,
    ``cross_entropy`` (nats per example), ``selectivity_control_task`` (accuracy minus the
    control task's accuracy), ``selectivity_shuffled`` (accuracy minus the accuracy on permuted
    labels), ``mdl_codelength`` (bits), ``mdl_compression``, ``fisher_criterion`` (detail
    column ``shrinkage``: the mean Ledoit-Wolf intensity over folds).
    ``majority=True`` adds the majority-class baseline's ``accuracy`` and ``macro_f1`` (records
    with ``init="majority"``, the same value on every layer) and ``accuracy_above_majority``;
    ``transfer=True`` adds ``logme``, ``h_score``, ``rankme``, ``alpha_req``.
    Three batched fits: every outer fold's inner cross-validation (outer folds x inner folds x
    Cs problems), the refits at the chosen C (outer folds x label sets), the MDL blocks.
    Features are standardised with the statistics of all examples (label-free, so no label
    leaks into the held-out scores); folds never share an example.
    """
    X = X.float()
    refuse_non_finite(X)
    L, n, _ = X.shape
    y = class_indices(y)
    if len(y) != n:
        raise ValueError(f"{len(y)} labels for {n} examples")
    K = int(n_classes if n_classes is not None else y.max() + 1)
    if len(y) and y.max() >= K:
        raise ValueError(f"labels go up to {int(y.max())} but n_classes is {K}; pass n_classes > the largest class index")
    counts = np.bincount(y, minlength=K)
    if (counts[counts > 0] < folds).any() or (counts > 0).sum() < 2:
        raise ValueError(f"need at least 2 classes with >= {folds} examples each (outer folds); class counts {counts.tolist()}")
    Cs = [float(c) for c in Cs]
    if control_task and (types is None or not types_repeat(types)):
        warnings.warn(
            "probes: no selectivity_control_task: the control task (Hewitt & Liang 2019) needs word types that repeat "
            "(token-level tasks); " + ("none were given" if types is None else "most examples here have a type of their own"),
            stacklevel=2,
        )
        control_task = False
    with threads_for(L * n * X.shape[2] * K * folds * inner_folds * len(Cs)):
        return _evaluate(X, y, K, types, groups, folds, inner_folds, Cs, class_weight, max_iter, tol,
                         control_task, shuffled, mdl, fisher, seed, majority, transfer)


def _evaluate(X, y, K, types, groups, folds, inner_folds, Cs, class_weight, max_iter, tol,
              control_task, shuffled, mdl, fisher, seed, majority, transfer) -> tuple[list[dict[str, Any]], HeldOut]:
    L, n, _ = X.shape
    mean, scale = standardization(X)
    pre = preconditioner(X, mean, scale, seed=seed)
    common = dict(n_classes=K, mean=mean, scale=scale, max_iter=max_iter, tol=tol, precondition=pre, seed=seed)
    outer = split(y, groups, folds, seed)

    # 1. inner cross-validation of every outer fold: problem = (outer fold, inner fold, C)
    chosen = np.full((len(outer), L), Cs[0])
    if len(Cs) > 1:
        weights, C, held_out, owner = [], [], [], []
        for f, (train, _) in enumerate(outer):
            inner = split(y[train], None if groups is None else groups[train], inner_folds, seed + 1 + f)
            for tr, va in inner:
                mask = np.zeros(n, dtype=bool)
                mask[train[tr]] = True
                w = class_weights(y, mask, class_weight)
                held_out.append((list(range(len(weights), len(weights) + len(Cs))), train[va]))
                for c in Cs:
                    owner.append((f, c))
                    weights.append(w)
                    C.append(c)
        fit = fit_logistic(X, torch.as_tensor(y), torch.as_tensor(C), torch.as_tensor(np.stack(weights), dtype=torch.float32), **common)
        acc, ce = _held_out_scores(fit, X, y, held_out, len(weights))
        for f in range(len(outer)):
            for l in range(L):
                cols = {c: [j for j, o in enumerate(owner) if o == (f, c)] for c in Cs}
                score = {c: (round(float(acc[l, cols[c]].mean()), 12), -float(ce[l, cols[c]].mean())) for c in Cs}
                chosen[f, l] = max(Cs, key=lambda c: score[c])  # best accuracy, then lowest cross-entropy

    # 2. refit on each outer training part at the chosen C: the task's labels and the controls
    label_sets = {"task": y}
    if control_task:
        label_sets["control_task"] = control_labels(types, y, seed)
    if shuffled:
        label_sets["shuffled"] = shuffled_labels(y, seed)
    Y, weights, C = [], [], []
    for f, (train, _) in enumerate(outer):
        mask = np.zeros(n, dtype=bool)
        mask[train] = True
        for labels in label_sets.values():
            Y.append(labels)
            weights.append(class_weights(labels, mask, class_weight))
            C.append(chosen[f])
    fit = fit_logistic(
        X, torch.as_tensor(np.stack(Y)), torch.as_tensor(np.stack(C, axis=1)),
        torch.as_tensor(np.stack(weights), dtype=torch.float32), **common,
    )
    scores: dict[str, np.ndarray] = {}  # metric -> [fold, layer]
    shrinkage = np.zeros((len(outer), L))
    fold_of = np.zeros(n, dtype=np.int64)
    correct = np.zeros((L, n), dtype=bool)
    for f, (_, test) in enumerate(outer):
        Xt = X[:, test]
        base = f * len(label_sets)
        logp = fit.log_proba(Xt, list(range(base, base + len(label_sets)))).double().numpy()  # [L, sets, n_test, K]
        fold_of[test] = f
        correct[:, test] = logp[:, 0].argmax(-1) == y[test]
        per = {
            name: [classification_scores(logp[l, i], labels[test]) for l in range(L)]
            for i, (name, labels) in enumerate(label_sets.items())
        }
        for metric in ("accuracy", "macro_f1", "cross_entropy"):
            scores.setdefault(metric, np.zeros((len(outer), L)))[f] = [s[metric] for s in per["task"]]
        for name in label_sets:
            if name != "task":
                scores.setdefault(f"selectivity_{name}", np.zeros((len(outer), L)))[f] = [
                    a["accuracy"] - b["accuracy"] for a, b in zip(per["task"], per[name])
                ]
        if fisher:
            Zt = (Xt - mean[:, None, :]) / scale[:, None, :]
            scores.setdefault("fisher_criterion", np.zeros((len(outer), L)))[f], shrinkage[f] = fisher_criterion(Zt, y[test])
    records = []
    for metric, values in scores.items():
        for l in range(L):
            estimate, low, high = _ci(values[:, l])
            records.append({"layer": l, "metric": metric, "value": estimate, "ci_low": low, "ci_high": high, "n": n})
            if metric == "fisher_criterion":
                records[-1]["shrinkage"] = float(shrinkage[:, l].mean())
    baseline, majority_correct = majority_scores(y, outer)
    if majority:
        records += majority_records(baseline, n, L)
        difference, low, high, units = paired_accuracy_difference(correct, majority_correct, fold_of, groups, seed=seed)
        records += [
            {"layer": l, "metric": "accuracy_above_majority", "value": float(difference[l]), "ci_low": float(low[l]),
             "ci_high": float(high[l]), "n": units}
            for l in range(L)
        ]
    if transfer:
        records += transfer_records(X, y, mean, scale)

    # 3. MDL at the C chosen most often across outer folds
    if mdl:
        mdl_C = np.array([Counter(chosen[:, l].tolist()).most_common(1)[0][0] for l in range(L)])
        records += mdl_records(X, y, K, mdl_C, class_weight, max_iter, tol, seed, precondition=pre, mean=mean, scale=scale)
    log.debug("probe C per fold and layer: %s", chosen.tolist())
    return records, HeldOut(fold=fold_of, correct=correct, majority=majority_correct)


def majority_records(scores: dict[str, np.ndarray], n: int, n_layers: int) -> list[dict[str, Any]]:
    """Rows ``init="majority"`` of the majority-class baseline's per-fold ``scores`` (``{metric: [fold]}``),
    one per layer (the baseline reads no features: the same value on every layer), intervals over folds as the probe's."""
    records = []
    for metric, values in scores.items():
        estimate, low, high = _ci(values)
        records += [
            {"layer": l, "metric": metric, "value": estimate, "ci_low": low, "ci_high": high, "n": n, "init": "majority"}
            for l in range(n_layers)
        ]
    return records


def mdl_records(
    X: torch.Tensor,
    y: np.ndarray,
    n_classes: int,
    C: float | np.ndarray,
    class_weight: str | None = None,
    max_iter: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    fractions: Sequence[float] = MDL_FRACTIONS,
    precondition: bool | Preconditioner = True,
    mean: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    order: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """``mdl_codelength`` (bits) and ``mdl_compression`` (uniform / online codelength) per layer.

    Online code of Voita & Titov (2020) over a seeded random order of the examples: block
    ``i``'s probe is trained on blocks ``< i`` (all blocks' probes in one batched fit;
    standardisation uses all features, which the receiver knows -- only labels are sent).
    ``C [layer]``: regularisation per layer; ``order``: transmission order (default: seeded shuffle).
    """
    L, n, _ = X.shape
    order = np.random.default_rng(seed).permutation(n) if order is None else np.asarray(order)
    ends = mdl_block_ends(n, fractions)
    if len(ends) < 2:
        return []
    y = np.asarray(y, dtype=np.int64)
    y_ord = y[order]
    C = np.broadcast_to(np.asarray(C, dtype=np.float64), (L,)).copy()
    weights = []
    for end in ends[:-1]:
        mask = np.zeros(n, dtype=bool)
        mask[order[:end]] = True
        weights.append(class_weights(y, mask, class_weight))
    fit = fit_logistic(
        X, torch.as_tensor(y), torch.as_tensor(C)[:, None].expand(L, len(weights)),
        torch.as_tensor(np.stack(weights), dtype=torch.float32), n_classes=n_classes,
        mean=mean, scale=scale, max_iter=max_iter, tol=tol, precondition=precondition, seed=seed,
    )
    logp = np.zeros((L, n, n_classes))
    for p, (start, end) in enumerate(zip(ends[:-1], ends[1:])):
        block = order[start:end]
        logp[:, start:end] = fit.log_proba(X[:, block], [p])[:, 0].double().numpy()
    uniform = n * math.log2(n_classes)
    records = []
    for l in range(L):
        total, tail = online_codelength(logp[l], y_ord, ends[0], n_classes)
        head = ends[0] * math.log2(n_classes)
        _, low, high = bootstrap_ci(tail, statistic=lambda x: x.sum(1))
        low, high = head + float(low), head + float(high)
        records.append({"layer": l, "metric": "mdl_codelength", "value": total, "ci_low": low, "ci_high": high, "n": n})
        records.append(
            {"layer": l, "metric": "mdl_compression", "value": uniform / total, "ci_low": uniform / high, "ci_high": uniform / low, "n": n}
        )
    return records
