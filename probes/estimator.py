"""``LinearProbe``: a scikit-learn classifier on plastiscope's torch trainer."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import check_array
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from plastiscope.probes.evaluate import class_weights
from plastiscope.probes.trainer import fit_logistic, standardization


def _sample_weight(sample_weight: Any, n: int) -> np.ndarray:
    """``[example]`` float64 weights: a number (the same for all) or one finite value per example."""
    if isinstance(sample_weight, (int, float, np.number)):
        return np.full(n, float(sample_weight))
    weights = check_array(sample_weight, ensure_2d=False, dtype=np.float64, input_name="sample_weight")
    if weights.shape != (n,):
        raise ValueError(f"sample_weight.shape == {weights.shape}, expected {(n,)}")
    return weights


class LinearProbe(ClassifierMixin, BaseEstimator):
    """Linear probe (Alain & Bengio 2016): L2-regularised multinomial logistic regression.

    Same objective as ``StandardScaler`` + ``LogisticRegression(C=C, solver="lbfgs")``:
    ``sum_i w_i CE(z_i W + b, y_i) + ||W||^2 / (2 C)`` on standardised features ``z``
    (when ``standardize``), intercept unpenalised; solved by the batched L-BFGS of
    :func:`plastiscope.probes.trainer.fit_logistic`.

    Parameters
    ----------
    C : inverse L2 strength (scikit-learn's meaning; larger = weaker regularisation).
    standardize : z-score features with the training data's mean and std.
    class_weight : None, ``"balanced"`` (weights ``n / (K * n_c)``) or ``{class: weight}``, as scikit-learn.
    max_iter, tol : L-BFGS iterations and tolerance on ``max |gradient|`` of the mean-scaled objective.

    Attributes after ``fit``: ``classes_``, ``coef_ [class, feature]`` and ``intercept_ [class]``
    on the raw features, ``n_iter_``, ``n_features_in_``.
    """

    def __init__(
        self,
        C: float = 1.0,
        standardize: bool = True,
        class_weight: str | dict | None = None,
        max_iter: int = 100,
        tol: float = 1e-4,
    ):
        self.C = C
        self.standardize = standardize
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> LinearProbe:
        """Fit on ``X [example, feature]`` and labels ``y [example]`` (any hashable labels)."""
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        if not (isinstance(self.C, (int, float)) and self.C > 0):
            raise ValueError(f"C must be a positive number, got {self.C!r}")
        self.classes_, y_index = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"need at least 2 classes to fit a probe; got 1 class ({self.classes_[0]!r})")
        weights = np.ones(len(y)) if sample_weight is None else _sample_weight(sample_weight, len(y))
        if isinstance(self.class_weight, dict):
            weights = weights * np.array([self.class_weight.get(c, 1.0) for c in self.classes_])[y_index]
        else:
            weights = weights * class_weights(y_index, np.ones(len(y), dtype=bool), self.class_weight)
        if not (weights > 0).any():
            raise ValueError("sample weights are all zero: nothing to fit")
        features = torch.as_tensor(np.asarray(X, dtype=np.float32))[None]  # [1, n, d]
        w = torch.as_tensor(weights, dtype=torch.float32)
        if self.standardize:
            mean, scale = standardization(features, w)  # weighted, as StandardScaler(sample_weight)
        else:
            mean, scale = torch.zeros(1, X.shape[1]), torch.ones(1, X.shape[1])
        fit = fit_logistic(
            features, torch.as_tensor(y_index), float(self.C), w,
            n_classes=len(self.classes_), mean=mean, scale=scale, max_iter=self.max_iter, tol=self.tol,
        )
        self.coef_ = fit.coef[0, 0].T.double().numpy()  # [class, feature]
        self.intercept_ = fit.intercept[0, 0].double().numpy()
        self.n_iter_ = np.array([int(fit.n_iter[0, 0])])
        return self

    def _logits(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return np.asarray(X, dtype=np.float64) @ self.coef_.T + self.intercept_

    def decision_function(self, X: Any) -> np.ndarray:
        """Logits ``[example, class]``; with two classes the positive class's margin ``[example]`` (scikit-learn)."""
        z = self._logits(X)
        return z[:, 1] - z[:, 0] if len(self.classes_) == 2 else z

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Log class probabilities ``[example, class]`` in the order of ``classes_``."""
        z = self._logits(X)
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``[example, class]`` in the order of ``classes_``."""
        return np.exp(self.predict_log_proba(X))

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each example ``[example]``, as a label of ``classes_``."""
        index = self._logits(X).argmax(1)
        return self.classes_[index]
