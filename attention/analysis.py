"""The ``attention`` and ``attention_weights`` analyses: glue between the forward pass and the math.

``attention`` (:data:`ANALYSIS`, reads ``data``): every head's attention pattern on every
document, summarised per document by the statistics of :mod:`.patterns`, computed exactly
from each layer's queries and keys (:func:`.qk.qk_statistics`, reading
``blocks.{l}.attn.inputs`` from a forward that runs fused SDPA: the pattern is never made);
per (layer, head, metric) the mean over documents with a percentile-bootstrap 95 % interval
over documents (:func:`plastiscope.stats.bootstrap_ci`). ``n`` is the number of documents
behind a value (one-token documents have no ``entropy_normalized``). The spectral metrics
(effective, stable and numerical rank, spectral and nuclear norm) are those of each
document's first ``spectral_tokens`` tokens (exact for shorter documents; see
:mod:`.patterns`). Streaming: each layer is read as the forward reaches it and only the
per-document numbers are kept (documents x layers x heads x 11 floats), so memory is the
forward's own plus a block of scores. :class:`PatternStatistics` with ``source="pattern"``
reads the eager patterns (``blocks.{l}.attn.hook_pattern``) instead, to the same numbers.

``attention_weights`` (:data:`WEIGHTS_ANALYSIS`, no data): per (layer, head) statistics of
the QK and OV circuits and the projection weights (:mod:`.weights`); no interval, ``n``
empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from plastiscope.activations import AttentionInputs, Batch, attention_inputs_name, attention_keys_name
from plastiscope.checkpoint import Checkpoint
from plastiscope.data import Documents, load_documents
from plastiscope.memo import Memo
from plastiscope.metrics import Baseline, Headline, Metric
from plastiscope.options import Integer, Nullable, Option, OptionTable, Real
from plastiscope.results import ResultsStore, make_frame
from plastiscope.runner import Analysis, Inputs, run_one
from plastiscope.stats import bootstrap_ci
from plastiscope.sweep import Sweep

from .patterns import PATTERN_METRICS, SPECTRAL_TOKENS, pattern_statistics
from .qk import qk_statistics
from .weights import WEIGHT_METRICS, layer_weights, weight_statistics

NAME = "attention"
WEIGHTS_NAME = "attention_weights"
OPTIONS = OptionTable({
    "tol": Option(1e-2, Real(0, 1, closed="neither"), "relative tolerance of numerical_rank: singular values above tol * sigma_max"),
    "spectral_tokens": Option(SPECTRAL_TOKENS, Nullable(Integer(1)),
                              "ranks and spectral/nuclear norms are those of each document's first spectral_tokens tokens "
                              "(O(spectral_tokens^3) per head); null: whole documents (O(pos^3))"),
    "one_hot_threshold": Option(0.9, Real(0, 1, closed="neither"), "a query row is near one-hot when its largest weight exceeds this"),
    "n_resamples": Option(1000, Integer(1), "bootstrap resamples of documents"),
    "seed": Option(0, Integer(0), "bootstrap seed"),
})
WEIGHT_OPTIONS = OptionTable({})


def pattern_hook(layer: int) -> str:
    """TransformerLens hook name of layer ``layer``'s attention pattern ``[batch, head, q, k]``."""
    return f"blocks.{layer}.attn.hook_pattern"


# ---------------------------------------------------------------------- patterns
class PatternStatistics:
    """Consumer of a forward pass: per-document pattern statistics of every layer and head.

    ``source="qk"`` (the analysis's): reads ``blocks.{l}.attn.inputs`` (the layer's queries,
    keys and mask, :class:`~plastiscope.activations.AttentionInputs`) and computes the
    statistics without the pattern (:func:`.qk.qk_statistics`), beside an SDPA forward.
    ``source="pattern"``: reads ``blocks.{l}.attn.keys`` ``[batch, pos]`` (keys each row may
    attend to) and ``blocks.{l}.attn.hook_pattern`` ``[batch, head, pos, pos]`` from the
    bridge's eager attention (:func:`.patterns.pattern_statistics`). Either way it keeps
    ``[layer, head, metric]`` float64 numbers per document; after the pass, :meth:`values`
    gives ``(doc_index [doc], values [doc, layer, head, metric])`` in document order (metrics
    as in :data:`PATTERN_METRICS`).
    """

    def __init__(
        self, n_layers: int, tol: float = 1e-2, one_hot_threshold: float = 0.9, spectral_tokens: int | None = SPECTRAL_TOKENS,
        source: str = "qk",
    ):
        if source == "qk":
            self.names = [attention_inputs_name(layer) for layer in range(n_layers)]
        elif source == "pattern":
            self.names = [attention_keys_name(layer) for layer in range(n_layers)] + [pattern_hook(layer) for layer in range(n_layers)]
        else:
            raise ValueError(f"source={source!r}: choose 'qk' (queries and keys, SDPA forward) or 'pattern' (eager patterns)")
        self.n_layers = n_layers
        self.layer_of = {name: int(name.split(".")[1]) for name in self.names}
        self.tol = tol
        self.one_hot_threshold = one_hot_threshold
        self.spectral_tokens = spectral_tokens
        self._keys: dict[int, torch.Tensor] = {}  # layer -> [batch, pos] of the batch being read (source="pattern")
        self._rows: dict[int, np.ndarray] = {}  # doc -> [layer, head, metric]
        self._read: dict[int, np.ndarray] = {}  # doc -> [layer] bool

    def read(self, batch: Batch, name: str, value: torch.Tensor | AttentionInputs) -> None:
        """Add the statistics of one layer of one batch's documents (from its queries and keys, or its patterns)."""
        layer = self.layer_of[name]
        if name.endswith(".attn.keys"):
            self._keys[layer] = value
            return
        try:
            if isinstance(value, AttentionInputs):
                stats = qk_statistics(value, batch.mask, self.tol, self.one_hot_threshold, self.spectral_tokens)
            else:
                keys = self._keys.pop(layer, None)
                stats = pattern_statistics(value, batch.mask, self.tol, self.one_hot_threshold, self.spectral_tokens, keys)
        except ValueError as err:
            raise ValueError(f"layer {layer}: {err}") from err
        values = torch.stack([stats[m] for m in PATTERN_METRICS], dim=-1).cpu().numpy()  # [batch, head, metric]
        for b, doc in enumerate(batch.doc_index.tolist()):
            if doc not in self._rows:
                self._rows[doc] = np.full((self.n_layers,) + values.shape[1:], np.nan)
                self._read[doc] = np.zeros(self.n_layers, dtype=bool)
            self._rows[doc][layer] = values[b]
            self._read[doc][layer] = True

    def values(self) -> tuple[np.ndarray, np.ndarray]:
        """``(doc_index [doc], values [doc, layer, head, metric])`` of every document read, in document order."""
        if not self._rows:
            raise ValueError("attention: no documents were read (empty data?)")
        doc_index = np.array(sorted(self._rows))  # batch order (by length) must not change the bootstrap
        unread = [int(d) for d in doc_index if not self._read[d].all()]
        if unread:
            raise RuntimeError(f"attention: the pass stopped before every layer of documents {unread[:5]} was read")
        return doc_index, np.stack([self._rows[d] for d in doc_index])


def summarize(values: np.ndarray, n_resamples: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """Records (metric, layer, head, value, ci_low, ci_high, n) from ``values [doc, layer, head, metric]``.

    Mean over documents (NaN left out) with a percentile-bootstrap 95 % interval; all
    entries share the same document resamples.
    """
    estimate, low, high = bootstrap_ci(values, n_resamples=n_resamples, seed=seed)
    counts = (~np.isnan(values)).sum(axis=0)
    _, n_layers, n_heads, n_metrics = values.shape
    return [
        {
            "metric": PATTERN_METRICS[m],
            "layer": layer,
            "head": head,
            "value": float(estimate[layer, head, m]),
            "ci_low": float(low[layer, head, m]),
            "ci_high": float(high[layer, head, m]),
            "n": int(counts[layer, head, m]),
        }
        for layer in range(n_layers)
        for head in range(n_heads)
        for m in range(n_metrics)
    ]


@dataclass
class PatternTask:
    """The attention-pattern analysis of one checkpoint: statistics in the ``data`` pass, summarised in :meth:`finish`."""

    checkpoint: Checkpoint
    consumer: PatternStatistics
    config: dict[str, Any]
    passes: dict[str, Sequence[PatternStatistics]] = field(init=False)

    def __post_init__(self) -> None:
        self.passes = {"data": [self.consumer]}

    def finish(self) -> pd.DataFrame:
        """Per (metric, layer, head) rows: mean over documents with a bootstrap 95 % interval."""
        _, values = self.consumer.values()
        records = summarize(values, self.config["n_resamples"], self.config["seed"])
        return make_frame(self.checkpoint, NAME, records)


def start_patterns(checkpoint: Checkpoint, inputs: Inputs, config: dict[str, Any], memo: Memo) -> PatternTask:
    """Start the pattern statistics of one checkpoint (read from the shared pass over ``data``)."""
    consumer = PatternStatistics(checkpoint.n_layers, config["tol"], config["one_hot_threshold"], config["spectral_tokens"])
    return PatternTask(checkpoint, consumer, config)


# ---------------------------------------------------------------------- weights
@dataclass
class WeightTask:
    """The attention-weight analysis of one checkpoint, computed in :meth:`finish` (no data)."""

    checkpoint: Checkpoint
    passes: dict[str, Sequence[Any]] = field(default_factory=dict)  # no data

    def finish(self) -> pd.DataFrame:
        """Per (metric, layer, head) rows of the QK, OV and projection weight statistics."""
        bridge = self.checkpoint.bridge
        records = []
        with torch.no_grad():
            for layer in range(self.checkpoint.n_layers):  # one layer in memory (float64) at a time
                stats = weight_statistics(*layer_weights(bridge, layer))
                for metric in WEIGHT_METRICS:
                    records += [
                        {"metric": metric, "layer": layer, "head": head, "value": float(v)}
                        for head, v in enumerate(stats[metric].tolist())
                    ]
        return make_frame(self.checkpoint, WEIGHTS_NAME, records)


def start_weights(checkpoint: Checkpoint, inputs: Inputs, config: dict[str, Any], memo: Memo) -> WeightTask:
    """Start the weight statistics of one checkpoint (no data)."""
    return WeightTask(checkpoint)


_FIRST_TOKENS = (
    "first spectral_tokens tokens (default 128), averaged over documents: exact singular values of the pattern's leading "
    "[L, L] block, L = min(length, spectral_tokens), which under causal attention is the pattern of the document truncated "
    "to L tokens (the whole document when it is no longer).")
_CIRCUITS = "Elhage et al. 2021 (A Mathematical Framework for Transformer Circuits)"
_SHANNON = "Shannon 1948 (entropy of each query row)"
METRICS = (
    Metric("entropy", "Mean attention entropy -sum_j A_ij log A_ij over query rows (nats).", "nats", None, _SHANNON),
    Metric("entropy_normalized", "Attention entropy of each query row divided by log(number of keys it may attend to under the "
           "layer's own mask, a sliding window's included), averaged; 0 = one-hot, 1 = uniform.", "", None, _SHANNON,
           (Baseline(value=1.0, label="uniform pattern", side="below"),)),
    Metric("effective_rank", "Effective rank exp(H(p)), p_i = s_i / sum(s), of the singular values s of the attention pattern over "
           "each document's " + _FIRST_TOKENS, "", None, "Roy & Vetterli 2007"),
    Metric("stable_rank", "Stable rank ||A||_F^2 / ||A||_2^2 of the attention pattern over each document's " + _FIRST_TOKENS, "", None,
           "Rudelson & Vershynin 2007"),
    Metric("numerical_rank", "Number of singular values above tol (0.01) times the largest, of the attention pattern over each "
           "document's " + _FIRST_TOKENS),
    Metric("spectral_norm", "Largest singular value ||A||_2 of the attention pattern over each document's " + _FIRST_TOKENS),
    Metric("nuclear_norm", "Sum of the singular values ||A||_* of the attention pattern over each document's " + _FIRST_TOKENS),
    Metric("frobenius_norm", "Frobenius norm ||A||_F of each document's whole attention pattern, averaged over documents."),
    Metric("sink_share", "Share of attention mass placed on the first (BOS) token: the attention-sink share.", "fraction", None,
           "Xiao et al. 2023 (attention sinks)"),
    Metric("mean_distance", "Mean query-key distance in tokens, weighted by attention.", "tokens"),
    Metric("one_hot_share", "Share of query rows whose largest attention weight exceeds a threshold (near one-hot rows).", "fraction"),
)
_MATRIX_STATS = {"frobenius_norm": "Frobenius norm", "spectral_norm": "largest singular value", "nuclear_norm": "sum of singular values",
                 "effective_rank": "effective rank exp(H(s/sum s)) (Roy & Vetterli 2007)",
                 "stable_rank": "stable rank ||M||_F^2/||M||_2^2 (Rudelson & Vershynin 2007)"}
WEIGHT_METRIC_DECLARATIONS = (
    *(Metric(f"{circuit}_{stat}", f"{name} circuit {matrix} of each head: {text}.", "", None, _CIRCUITS,
             headline=Headline("attention", "Attention: W_QK effective rank", "fall", "Han et al. 2026", "run the attention analysis",
                               order=30) if (circuit, stat) == ("qk", "effective_rank") else None)
      for circuit, name, matrix in (("qk", "QK", "W_Q W_K^T"), ("ov", "OV", "W_V W_O")) for stat, text in _MATRIX_STATS.items()),
    *(Metric(f"w{m}_norm", f"Frobenius norm of the head's {what} weight matrix W_{m.upper()}.", "", None, _CIRCUITS)
      for m, what in (("q", "query"), ("k", "key"), ("v", "value"), ("o", "output"))),
)

ANALYSIS = Analysis(NAME, ("data",), start_patterns, OPTIONS, metrics=METRICS)
WEIGHTS_ANALYSIS = Analysis(WEIGHTS_NAME, (), start_weights, WEIGHT_OPTIONS, metrics=WEIGHT_METRIC_DECLARATIONS)


# ---------------------------------------------------------------------- API
def attention(
    sweep: Sweep | Checkpoint | Sequence[Checkpoint],
    data: Documents | Sequence[str] | str,
    *,
    store: ResultsStore | str | None = None,
    batch_size: int = 16,
    progress: bool = True,
    executor: Any = None,
    **options: Any,
) -> pd.DataFrame:
    """Attention-pattern statistics of every head of every checkpoint over ``data`` (tidy results frame).

    ``data``: anything :func:`plastiscope.load_documents` reads. ``options``: any of :data:`OPTIONS`
    (``tol``, ``spectral_tokens``, ``one_hot_threshold``, ``n_resamples``, ``seed``), validated by it.
    ``executor``: ``"local"`` (default), ``"process"`` or ``"ray"`` (:func:`plastiscope.runner.executor_named`).
    Checkpoints that fail are reported by a warning; if all fail, an error is raised.
    """
    return run_one(sweep, ANALYSIS, Inputs(data=load_documents(data)), options, store, batch_size, progress, executor)


def attention_weights(
    sweep: Sweep | Checkpoint | Sequence[Checkpoint],
    *,
    store: ResultsStore | str | None = None,
    progress: bool = True,
    executor: Any = None,
    **options: Any,
) -> pd.DataFrame:
    """QK/OV circuit and projection-weight statistics of every head of every checkpoint (tidy results frame);
    ``options``: any of the options of :data:`WEIGHTS_ANALYSIS`, validated by them."""
    return run_one(sweep, WEIGHTS_ANALYSIS, Inputs(), options, store, 16, progress, executor)


