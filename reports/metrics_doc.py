"""What each metric means: the definitions printed in a report's methods section.

``METRICS`` maps a metric name to a :class:`MetricDoc`; ``PATTERNS`` covers families such as
``qk_*``/``ov_*`` or ``mia_auc_*``. A metric that matches neither gets "no description" and is
still plotted: reports never depend on this table to show a metric.

``better`` is the direction that counts as "better" when checkpoints are ranked by a metric
(used by the ranking-disagreement callout): ``"lower"`` for losses and codelengths,
``"higher"`` for accuracies and plasticity gain, ``None`` where the metric describes a
mechanism without a better direction (attention entropy, ranks, weight norms): such metrics get correlations
but no agreement verdict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class MetricDoc:
    """What a metric means, which direction counts as better (``"higher"``, ``"lower"`` or None), and its source."""

    description: str
    better: str | None = None  # "higher", "lower" or None
    citation: str = ""


NO_DESCRIPTION = MetricDoc("no description")

_PROBE = "Alain & Bengio 2016 (linear probes)"
_CONTROL = "Hewitt & Liang 2019 (control tasks)"
_MDL = "Voita & Titov 2020 (online codelength)"
_CIRCUITS = "Elhage et al. 2021 (A Mathematical Framework for Transformer Circuits)"
_PLASTICITY = "Han, Bordt, Zhang, Kakade 2026 (arXiv 2602.11137)"
_MIA = "Carlini et al. 2021 (Extracting Training Data from Large Language Models)"
_MEMO = "Carlini et al. 2022 (Quantifying Memorization)"
_HESSIAN = "Yao et al. 2020 (PyHessian)"
_LANDSCAPE = "Li et al. 2018 (Visualizing the Loss Landscape)"

# The spectral metrics of attention patterns: what "over each document's first tokens" means.
_FIRST_TOKENS = (
    "first spectral_tokens tokens (default 128), averaged over documents: exact singular values of the pattern's leading "
    "[L, L] block, L = min(length, spectral_tokens), which under causal attention is the pattern of the document truncated "
    "to L tokens (the whole document when it is no longer)."
)

METRICS: dict[str, MetricDoc] = {
    # probes: linear separability of representations
    "accuracy": MetricDoc(
        "Held-out accuracy of a linear probe (logistic regression) on the pooled residual stream of a layer.",
        "higher", _PROBE),
    "macro_f1": MetricDoc("Held-out macro-averaged F1 of the linear probe (each class weighted equally).", "higher", _PROBE),
    "cross_entropy": MetricDoc("Held-out cross-entropy (nats) of the linear probe's predicted class distribution.", "lower", _PROBE),
    "selectivity_control_task": MetricDoc(
        "Probe accuracy on the real task minus accuracy on a control task that assigns each word type a random label; "
        "high selectivity means the representation, not the probe, carries the labels.",
        "higher", _CONTROL),
    "selectivity_shuffled": MetricDoc("Probe accuracy on the real labels minus accuracy on shuffled labels.", "higher", _CONTROL),
    "mdl_codelength": MetricDoc(
        "Online (prequential) codelength in bits of transmitting the labels with probes trained on growing prefixes of the data; "
        "shorter = more easily extractable.",
        "lower", _MDL),
    "mdl_compression": MetricDoc(
        "Uniform codelength divided by online codelength; higher = labels more compressible from the representation.",
        "higher", _MDL),
    "fisher_ratio": MetricDoc(
        "Fisher discriminant ratio: between-class scatter over within-class scatter of the pooled representation (trace ratio); "
        "higher = classes more linearly separable.",
        "higher", "Fisher 1936"),
    # attention patterns
    "entropy": MetricDoc(
        "Mean attention entropy -sum_j A_ij log A_ij over query rows (nats).",
        None, "Shannon 1948 (entropy of each query row)"),
    "entropy_normalized": MetricDoc(
        "Attention entropy of each query row divided by log(number of visible keys), averaged; 0 = one-hot, 1 = uniform.",
        None, "Shannon 1948 (entropy of each query row)"),
    "effective_rank": MetricDoc(
        "Effective rank exp(H(p)), p_i = s_i / sum(s), of the singular values s of the attention pattern over each document's "
        + _FIRST_TOKENS, None, "Roy & Vetterli 2007"),
    "stable_rank": MetricDoc(
        "Stable rank ||A||_F^2 / ||A||_2^2 of the attention pattern over each document's " + _FIRST_TOKENS,
        None, "Rudelson & Vershynin 2007"),
    "numerical_rank": MetricDoc(
        "Number of singular values above tol (0.01) times the largest, of the attention pattern over each document's " + _FIRST_TOKENS,
        None, ""),
    "spectral_norm": MetricDoc("Largest singular value ||A||_2 of the attention pattern over each document's " + _FIRST_TOKENS, None, ""),
    "nuclear_norm": MetricDoc(
        "Sum of the singular values ||A||_* of the attention pattern over each document's " + _FIRST_TOKENS, None, ""),
    "frobenius_norm": MetricDoc("Frobenius norm ||A||_F of each document's whole attention pattern, averaged over documents.", None, ""),
    "sink_share": MetricDoc(
        "Share of attention mass placed on the first (BOS) token: the attention-sink share.",
        None, "Xiao et al. 2023 (attention sinks)"),
    "mean_distance": MetricDoc("Mean query-key distance in tokens, weighted by attention.", None, ""),
    "one_hot_share": MetricDoc("Share of query rows whose largest attention weight exceeds a threshold (near one-hot rows).", None, ""),
    # attention weights
    "wq_norm": MetricDoc("Frobenius norm of the head's query weight matrix W_Q.", None, _CIRCUITS),
    "wk_norm": MetricDoc("Frobenius norm of the head's key weight matrix W_K.", None, _CIRCUITS),
    "wv_norm": MetricDoc("Frobenius norm of the head's value weight matrix W_V.", None, _CIRCUITS),
    "wo_norm": MetricDoc("Frobenius norm of the head's output weight matrix W_O.", None, _CIRCUITS),
    # overfitting
    "train_loss": MetricDoc("Mean next-token cross-entropy (nats/token) on training documents.", "lower", ""),
    "val_loss": MetricDoc("Mean next-token cross-entropy (nats/token) on held-out validation documents.", "lower", ""),
    "loss_gap": MetricDoc("Validation loss minus training loss: the generalization gap.", "lower", ""),
    "loss_ratio": MetricDoc("Validation loss divided by training loss.", "lower", ""),
    # plasticity
    "downstream_loss_before": MetricDoc("Downstream-task loss before fine-tuning.", "lower", _PLASTICITY),
    "downstream_loss_after": MetricDoc("Downstream-task loss after fine-tuning: what plasticity buys.", "lower", _PLASTICITY),
    "plasticity_gain": MetricDoc(
        "Reduction of downstream loss through fine-tuning (before minus after); higher = more plastic.",
        "higher", _PLASTICITY),
    # loss landscape
    "hessian_top_eigenvalue": MetricDoc("Largest Hessian eigenvalue of the loss (power iteration): sharpness.", None, _HESSIAN),
    "hessian_trace": MetricDoc("Hutchinson estimate of the Hessian trace of the loss.", None, _HESSIAN),
}

_MATRIX_STATS = {
    "frobenius_norm": "Frobenius norm",
    "fro_norm": "Frobenius norm",
    "norm": "Frobenius norm",
    "spectral_norm": "largest singular value",
    "nuclear_norm": "sum of singular values",
    "effective_rank": "effective rank exp(H(s/sum s)) (Roy & Vetterli 2007)",
    "stable_rank": "stable rank ||M||_F^2/||M||_2^2 (Rudelson & Vershynin 2007)",
    "numerical_rank": "numerical rank",
}

PATTERNS: list[tuple[re.Pattern[str], object]] = [
    (re.compile(r"^qk_(.+)$"), lambda m: MetricDoc(
        f"QK circuit W_Q W_K^T of each head: {_MATRIX_STATS.get(m.group(1), m.group(1).replace('_', ' '))}.",
        None, _CIRCUITS)),
    (re.compile(r"^ov_(.+)$"), lambda m: MetricDoc(
        f"OV circuit W_V W_O of each head: {_MATRIX_STATS.get(m.group(1), m.group(1).replace('_', ' '))}.",
        None, _CIRCUITS)),
    (re.compile(r"^mia_auc_(.+)$"), lambda m: MetricDoc(
        f"Membership-inference ROC AUC separating training from validation documents by the {m.group(1)} score; "
        "0.5 = no leakage, higher = more memorization.",
        "lower", _MIA)),
    (re.compile(r"^exact_match_(.+)$"), lambda m: MetricDoc(
        f"Exact memorization ({m.group(1)}): share of training continuations reproduced token for token by greedy decoding.",
        "lower", _MEMO)),
    (re.compile(r"^w([qkvo])_(.+)$"), lambda m: MetricDoc(
        f"W_{m.group(1).upper()} weight matrix of each head: {_MATRIX_STATS.get(m.group(2), m.group(2).replace('_', ' '))}.",
        None, _CIRCUITS)),
]


def describe_metric(metric: str) -> MetricDoc:
    """The documented meaning of ``metric``, or ``NO_DESCRIPTION`` when it is unknown."""
    metric = str(metric)
    if metric in METRICS:
        return METRICS[metric]
    for pattern, make in PATTERNS:
        match = pattern.match(metric)
        if match:
            return make(match)  # type: ignore[operator]
    return NO_DESCRIPTION
