"""overfit: train/validation memorization-gap estimators (analysis ``"overfit"``).

The third mechanism of Han, Bordt, Zhang, Kakade 2026 (arXiv 2602.11137): weight decay
reduces overfitting on the training data. Per checkpoint: the loss gap between training
and held-out documents (overall and by token position), membership-inference AUCs by loss,
zlib-calibrated loss and reference-calibrated loss (Carlini et al. 2021), and exact
memorization by greedy continuation (Carlini et al. 2022). See :mod:`.analysis` for the
metric names and options.

    >>> import plastiscope.overfit
    >>> frame = plastiscope.overfit.overfit(sweep, train_docs, val_docs, prefix_tokens=8, continuation_tokens=8)
"""

from .analysis import ANALYSIS, OPTIONS, OverfitTask, document_scores, overfit, text_hash
from .losses import DocumentLosses
from .matching import match_lengths
from .membership import auc, tpr_at_fpr, zlib_entropy, zlib_scores
from .memorization import Memorization, exact_memorization

__all__ = [
    "ANALYSIS",
    "OPTIONS",
    "DocumentLosses",
    "Memorization",
    "OverfitTask",
    "auc",
    "document_scores",
    "exact_memorization",
    "match_lengths",
    "overfit",
    "text_hash",
    "tpr_at_fpr",
    "zlib_entropy",
    "zlib_scores",
]
