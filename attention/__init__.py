"""Attention-matrix statistics per head: entropy, rank and norms of patterns and of weights.

Han, Bordt, Zhang, Kakade 2026 (arXiv 2602.11137): weight decay regularizes attention
matrices. Two analyses measure it per (checkpoint, layer, head):

- ``attention`` (:data:`ANALYSIS`): the attention patterns on documents (entropy, effective /
  stable / numerical rank, norms, attention sink, distance, one-hot share), see
  :mod:`.patterns`, computed exactly from each layer's queries and keys beside an SDPA forward
  (:mod:`.qk`); mean over documents with a bootstrap interval.
- ``attention_weights`` (:data:`WEIGHTS_ANALYSIS`): the ``W_QK`` and ``W_OV`` circuits and
  the projection weights, no data needed, see :mod:`.weights`.

Quick use::

    import plastiscope.attention
    patterns = plastiscope.attention.attention(sweep, docs)   # tidy results frame
    weights = plastiscope.attention.attention_weights(sweep)
"""

from .analysis import (
    ANALYSIS,
    OPTIONS,
    WEIGHTS_ANALYSIS,
    PatternStatistics,
    attention,
    attention_weights,
    summarize,
)
from .patterns import PATTERN_METRICS, pattern_statistics
from .qk import qk_statistics
from .spectra import spectral_summary
from .weights import WEIGHT_METRICS, expand_kv_heads, layer_weights, weight_statistics

__all__ = [
    "ANALYSIS",
    "WEIGHTS_ANALYSIS",
    "OPTIONS",
    "PATTERN_METRICS",
    "WEIGHT_METRICS",
    "PatternStatistics",
    "attention",
    "attention_weights",
    "pattern_statistics",
    "qk_statistics",
    "weight_statistics",
    "spectral_summary",
    "summarize",
    "expand_kv_heads",
    "layer_weights",
]
