"""Membership inference: can per-document scores tell training documents from held-out ones?

Scores (lower = "more likely a member", as the model fits its training data better):

- ``loss``: the document's mean per-token cross-entropy (Yeom et al. 2018; Carlini et al.
  2021, "Extracting Training Data from Large Language Models", the perplexity metric).
- ``zlib``: ``loss / zlib_entropy(text)`` (Carlini et al. 2021, the zlib metric): the loss
  calibrated by how compressible the text is, so generic, repetitive text is not mistaken
  for memorised text. ``zlib_entropy`` is the length in **bytes** of
  ``zlib.compress(text.encode("utf-8"))`` at zlib's default level, as in the authors'
  code; bits would be 8 x bytes, which changes no AUC.
- ``reference``: ``loss / reference_loss`` (Carlini et al. 2021, the "Small" and "Medium"
  metrics: the ratio of the log-perplexities of the target model and of a reference model
  trained on similar data, log-perplexity being the mean per-token loss). A text the target
  finds much easier than the reference does scores low. The reference must have learnt the
  language: a random-init model's loss is about ``ln(vocabulary)`` on every text, which makes
  the score the plain loss up to a constant factor (same AUC).

Attack quality is the ROC AUC of ``-score`` for members (label 1) against non-members
(label 0) and the TPR at 1 % FPR (Carlini et al. 2022, "Membership Inference Attacks From
First Principles"). Intervals are a percentile bootstrap resampling members and
non-members separately (stratified, :func:`plastiscope.stats.bootstrap_ci` with two samples),
so every resample keeps both classes.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score


def zlib_entropy(text: str) -> int:
    """Bytes of ``zlib.compress(text.encode("utf-8"))`` (default level): Carlini et al. 2021's zlib entropy."""
    return len(zlib.compress(text.encode("utf-8")))


def zlib_scores(losses: np.ndarray, texts: Sequence[str]) -> np.ndarray:
    """``[doc]`` zlib-calibrated loss: mean per-token loss (nats) / zlib entropy (bytes) of the scored text."""
    losses = np.asarray(losses, dtype=np.float64)
    if len(losses) != len(texts):
        raise ValueError(f"zlib_scores: {len(losses)} losses for {len(texts)} texts")
    return losses / np.array([zlib_entropy(t) for t in texts], dtype=np.float64)


def auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """ROC AUC of telling members from non-members by ``-score`` (lower score = member): sklearn's ``roc_auc_score``."""
    member_scores, nonmember_scores = np.asarray(member_scores), np.asarray(nonmember_scores)
    labels = np.r_[np.ones(len(member_scores)), np.zeros(len(nonmember_scores))]
    return float(roc_auc_score(labels, -np.r_[member_scores, nonmember_scores]))


def auc_batched(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> np.ndarray:
    """AUC of many resamples at once via the Mann-Whitney U statistic (ties count half).

    ``member_scores`` ``[resample, member]``, ``nonmember_scores`` ``[resample, nonmember]``
    -> ``[resample]``; equals :func:`auc` row by row.
    """
    n_pos, n_neg = member_scores.shape[-1], nonmember_scores.shape[-1]
    ranks = rankdata(-np.concatenate([member_scores, nonmember_scores], axis=-1), axis=-1)
    return (ranks[..., :n_pos].sum(-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def tpr_at_fpr_batched(member_scores: np.ndarray, nonmember_scores: np.ndarray, fpr: float = 0.01) -> np.ndarray:
    """Highest true-positive rate at a false-positive rate <= ``fpr``, per resample.

    Members are flagged when ``-score`` exceeds a threshold; the lowest threshold admitting
    at most ``floor(fpr * n_nonmembers)`` non-members is used (the ROC curve's operating point
    with the largest TPR subject to ``FPR <= fpr``). ``[resample, member]``,
    ``[resample, nonmember]`` -> ``[resample]``.
    """
    pos, neg = -np.asarray(member_scores, dtype=np.float64), -np.asarray(nonmember_scores, dtype=np.float64)
    allowed = int(np.floor(fpr * neg.shape[-1] + 1e-9))
    if allowed >= neg.shape[-1]:
        return np.ones(pos.shape[:-1])
    threshold = -np.sort(-neg, axis=-1)[..., allowed]  # (allowed+1)-th highest non-member value
    return (pos > threshold[..., None]).mean(-1)


def tpr_at_fpr(member_scores: np.ndarray, nonmember_scores: np.ndarray, fpr: float = 0.01) -> float:
    """TPR at ``FPR <= fpr`` of one sample (see :func:`tpr_at_fpr_batched`)."""
    return float(tpr_at_fpr_batched(np.asarray(member_scores)[None], np.asarray(nonmember_scores)[None], fpr)[0])
