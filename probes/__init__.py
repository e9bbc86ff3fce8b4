"""Linear probes: how linearly separable each layer's representations are, across a sweep.

The first mechanism of Han, Bordt, Zhang, Kakade (2026, arXiv 2602.11137): larger weight
decay gives more linearly separable representations. Public API:

- :class:`LinearProbe` -- a scikit-learn classifier (standardise + L2 multinomial logistic
  regression, solved in torch).
- :func:`fit_logistic` -- the batched trainer: all layers x folds x C values in one L-BFGS run.
- :func:`evaluate_layers` -- cross-validated metrics of stacked features ``[layer, example, feature]``.
- :func:`probes` and :data:`ANALYSIS` (analysis name ``"probes"``) -- every checkpoint,
  layer, task and pooling; metrics ``accuracy``, ``macro_f1``, ``cross_entropy``,
  ``selectivity_control_task`` (token-level tasks), ``selectivity_shuffled``, ``mdl_codelength``,
  ``mdl_compression``, ``fisher_criterion``, for ``init="trained"`` and ``init="random"``
  (meanings in :mod:`plastiscope.probes.analysis`); the majority-class baseline (``init="majority"``)
  and the paired differences ``accuracy_above_majority`` / ``accuracy_above_random_init``.
- :func:`logme`, :func:`h_score`, :func:`rankme`, :func:`alpha_req` -- transferability
  estimators with no probe trained (:mod:`plastiscope.probes.transfer`).
"""

from plastiscope.probes.analysis import ANALYSIS, OPTIONS, probes, start
from plastiscope.probes.baselines import majority_scores, paired_accuracy_difference
from plastiscope.probes.estimator import LinearProbe
from plastiscope.probes.evaluate import HeldOut, cross_validate, evaluate_layers, mdl_records
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
from plastiscope.probes.tasks import BUILTIN_TASKS, FeatureCollector, select_examples, sequence_examples, token_examples
from plastiscope.probes.trainer import LogisticFit, Preconditioner, fit_logistic, preconditioner, standardization
from plastiscope.probes.transfer import (
    TRANSFER_METRICS,
    alpha_req,
    bayesian_evidence,
    h_score,
    ledoit_wolf_covariance,
    logme,
    rankme,
    singular_spectrum,
    transfer_records,
)

__all__ = [
    "ANALYSIS",
    "BUILTIN_TASKS",
    "OPTIONS",
    "MDL_FRACTIONS",
    "FeatureCollector",
    "HeldOut",
    "TRANSFER_METRICS",
    "alpha_req",
    "bayesian_evidence",
    "cross_validate",
    "h_score",
    "ledoit_wolf_covariance",
    "logme",
    "majority_scores",
    "paired_accuracy_difference",
    "rankme",
    "singular_spectrum",
    "transfer_records",
    "LinearProbe",
    "LogisticFit",
    "Preconditioner",
    "classification_scores",
    "control_labels",
    "evaluate_layers",
    "fisher_criterion",
    "fit_logistic",
    "mdl_block_ends",
    "mdl_records",
    "online_codelength",
    "preconditioner",
    "probes",
    "select_examples",
    "sequence_examples",
    "shuffled_labels",
    "standardization",
    "start",
    "token_examples",
    "types_repeat",
]
