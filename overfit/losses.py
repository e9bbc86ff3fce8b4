"""Per-document next-token losses, accumulated from the shared forward pass.

Convention (:mod:`plastiscope.data`): one document is one sequence ``[BOS] + tokens``,
truncated to the context. The loss of a document is the mean next-token cross-entropy
(nats) over its real tokens after BOS: position ``p`` (``1 <= p < length``) is predicted
from the logits at ``p - 1``; BOS itself and padding are never targets. This is exactly
``torch.nn.CrossEntropyLoss`` on the shifted logits and labels of a ``transformers`` causal
LM, one document at a time.

Only per-document numbers are kept (sum and count of token losses, overall and per
position bucket), so memory is ``O(documents x buckets)`` whatever the corpus size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from plastiscope.activations import LOGITS, Batch
from plastiscope.losses import token_losses


def default_bucket_edges(n_ctx: int, first: int = 8) -> list[int]:
    """Upper edges of position buckets doubling from ``first``: ``[8, 16, 32, ..., n_ctx - 1]``.

    Bucket ``i`` holds target positions ``edges[i-1] < p <= edges[i]`` (positions count from
    1, the first token after BOS), labelled ``"1-8"``, ``"9-16"``, ``"17-32"``, ...
    """
    last = max(1, n_ctx - 1)
    edges, edge = [], first
    while edge < last:
        edges.append(edge)
        edge *= 2
    edges.append(last)
    return edges


def bucket_labels(edges: Sequence[int]) -> list[str]:
    """``"1-8", "9-16", ...`` for upper ``edges`` ``[8, 16, ...]``."""
    lows = [1] + [e + 1 for e in edges[:-1]]
    return [f"{lo}-{hi}" if hi > lo else f"{lo}" for lo, hi in zip(lows, edges)]


class DocumentLosses:
    """Consumer of the shared pass: per-document sums of token losses, overall and per position bucket.

    ``n_docs`` is the size of the :class:`~plastiscope.data.Documents` the pass reads; rows are
    placed by ``Batch.doc_index``. It reads the logits ``[batch, pos, vocab]`` after the forward
    (:data:`~plastiscope.activations.LOGITS`) and turns them into losses a slice of positions at
    a time on their device (:func:`plastiscope.losses.token_losses`, float32; sums in float64).
    After the pass: :attr:`mean_loss` ``[doc]`` (NaN for documents with no target token),
    :attr:`n_targets` ``[doc]``, :attr:`bucket_mean` ``[doc, bucket]`` (NaN where a document
    has no token in a bucket).
    """

    names = [LOGITS]

    def __init__(self, n_docs: int, bucket_edges: Sequence[int]):
        self.bucket_edges = list(bucket_edges)
        self.loss_sum = np.zeros(n_docs)
        self.n_targets = np.zeros(n_docs, dtype=np.int64)
        self.bucket_sum = np.zeros((n_docs, len(self.bucket_edges)))
        self.bucket_count = np.zeros((n_docs, len(self.bucket_edges)), dtype=np.int64)
        self.seen = np.zeros(n_docs, dtype=bool)

    def read(self, batch: Batch, name: str, logits: torch.Tensor) -> None:
        """Add one batch's token losses to its documents' sums, overall and per position bucket."""
        with torch.no_grad():
            loss, target = token_losses(logits, batch.tokens, batch.mask)  # [batch, pos-1], float32
            loss = loss.double()
            positions = torch.arange(1, loss.shape[1] + 1, device=loss.device)  # of the predicted token; 1 = first after BOS
            edges = torch.tensor(self.bucket_edges, dtype=torch.long, device=loss.device)
            # positions past the last edge (user-given edges shorter than the context) go to the last bucket
            bucket = torch.bucketize(positions, edges).clamp(max=len(self.bucket_edges) - 1)
            one_hot = F.one_hot(bucket, len(self.bucket_edges)).double()  # [pos-1, bucket]
            docs = batch.doc_index.cpu().numpy()
            self.loss_sum[docs] += loss.sum(1).cpu().numpy()
            self.n_targets[docs] += target.sum(1).cpu().numpy()
            self.bucket_sum[docs] += (loss @ one_hot).cpu().numpy()
            self.bucket_count[docs] += (target.double() @ one_hot).round().long().cpu().numpy()
            self.seen[docs] = True

    @property
    def mean_loss(self) -> np.ndarray:
        """``[doc]`` mean per-token cross-entropy (nats); NaN for documents without a target token."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.n_targets > 0, self.loss_sum / np.maximum(self.n_targets, 1), np.nan)

    @property
    def bucket_mean(self) -> np.ndarray:
        """``[doc, bucket]`` mean cross-entropy of each document's tokens in each position bucket."""
        return np.where(self.bucket_count > 0, self.bucket_sum / np.maximum(self.bucket_count, 1), np.nan)
