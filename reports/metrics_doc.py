"""What each metric means: the definitions printed in a report's methods section.

``METRICS`` maps a metric name to a :class:`MetricDoc`; ``PATTERNS`` covers families such as
``qk_*``/``ov_*`` or ``mia_auc_*``. A metric that matches neither gets "no description" and is
still plotted: reports never depend on this table to show a metric.

``better`` is the direction that counts as "better" when configurations are ranked by a
metric (the best configuration, the proxy's top-k pick and its regret): ``"lower"`` for losses
and codelengths, ``"higher"`` for accuracies and plasticity gain, ``None`` where the metric
describes a mechanism without a better direction (attention entropy, ranks, weight norms,
sharpness, basins): such metrics get correlations but no regret.
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
_LIRA = "Carlini et al. 2022 (Membership Inference Attacks From First Principles)"
_MEMO = "Carlini et al. 2022 (Quantifying Memorization)"
_HESSIAN = "Yao et al. 2020 (PyHessian); raw curvature scales with 1/||w||^2: Dinh et al. 2017"
_ADAPTIVE = "Kwon et al. 2021 (ASAM); Andriushchenko et al. 2023 (A Modern Look at Sharpness)"
_BASIN = "Chen et al. 2025 (arXiv 2505.17646)"

# The spectral metrics of attention patterns: what "over each document's first tokens" means.
_FIRST_TOKENS = (
    "first spectral_tokens tokens (default 128), averaged over documents: exact singular values of the pattern's leading "
    "[L, L] block, L = min(length, spectral_tokens), which under causal attention is the pattern of the document truncated "
    "to L tokens (the whole document when it is no longer)."
)

METRICS: dict[str, MetricDoc] = {
    # probes: linear separability of representations
    "accuracy": MetricDoc(
        "Held-out accuracy of a linear probe (logistic regression) on the pooled residual stream of a layer, on the "
        "data's own class distribution.",
        "higher", _PROBE),
    "macro_f1": MetricDoc("Held-out macro-averaged F1 of the linear probe (each class weighted equally).", "higher", _PROBE),
    "cross_entropy": MetricDoc("Held-out cross-entropy (nats) of the linear probe's predicted class distribution.", "lower", _PROBE),
    "selectivity_control_task": MetricDoc(
        "Probe accuracy on the real task minus accuracy on a control task that gives each word type a random label "
        "(token-level tasks only, where word types repeat); high selectivity means the representation, not the probe, "
        "carries the labels.",
        "higher", _CONTROL),
    "selectivity_shuffled": MetricDoc("Probe accuracy on the real labels minus accuracy on shuffled labels.", "higher", _CONTROL),
    "mdl_codelength": MetricDoc(
        "Online (prequential) codelength in bits of transmitting the labels with probes trained on growing prefixes of the data; "
        "shorter = more easily extractable.",
        "lower", _MDL),
    "mdl_compression": MetricDoc(
        "Uniform codelength divided by online codelength; higher = labels more compressible from the representation.",
        "higher", _MDL),
    "fisher_criterion": MetricDoc(
        "Fisher's criterion tr(S_W^-1 S_B) of the pooled representation (within-class scatter S_W shrunk towards a scaled "
        "identity); higher = classes more linearly separable.",
        "higher", "Fisher 1936; Ledoit & Wolf 2004 (shrinkage)"),
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
    "train_loss": MetricDoc("Next-token cross-entropy (nats/token) on training documents, token-weighted (every token counts once).",
                            "lower", ""),
    "val_loss": MetricDoc("Next-token cross-entropy (nats/token) on held-out validation documents, token-weighted.", "lower", ""),
    "train_loss_per_document": MetricDoc("Mean over training documents of each document's mean next-token cross-entropy (nats).",
                                         "lower", ""),
    "val_loss_per_document": MetricDoc("Mean over validation documents of each document's mean next-token cross-entropy (nats).",
                                       "lower", ""),
    "loss_gap": MetricDoc("Validation loss minus training loss (token-weighted): the generalization gap.", "lower", _PLASTICITY),
    "loss_ratio": MetricDoc("Validation loss divided by training loss.", "lower", ""),
    "mia_tpr_at_1fpr": MetricDoc(
        "Membership inference: true-positive rate at 1 % false-positive rate of telling training from validation documents "
        "by the score named in the variant; higher = more memorization.",
        "lower", _LIRA),
    "overlap_count": MetricDoc("Validation documents whose normalised text also occurs in the training sample (dropped).", None, ""),
    "skipped_short_train": MetricDoc("Training documents too short for the exact-memorization test.", None, ""),
    "skipped_short_val": MetricDoc("Validation documents too short for the exact-memorization test.", None, ""),
    # plasticity: the outcome
    "downstream_loss_before": MetricDoc("Downstream-task loss (nats) before fine-tuning.", "lower", _PLASTICITY),
    "downstream_loss_after": MetricDoc(
        "Downstream-task loss (nats) after fine-tuning with the same budget for every checkpoint: the outcome.",
        "lower", _PLASTICITY),
    "downstream_accuracy_before": MetricDoc("Downstream-task accuracy (labelled tasks) before fine-tuning.", "higher", _PLASTICITY),
    "downstream_accuracy_after": MetricDoc(
        "Downstream-task accuracy (labelled tasks) after fine-tuning: the outcome for labelled tasks.", "higher", _PLASTICITY),
    "plasticity_gain": MetricDoc(
        "Downstream loss before minus after fine-tuning; secondary: a model that starts worse can gain more and still end worse.",
        "higher", _PLASTICITY),
    "downstream_selection_loss": MetricDoc(
        "Loss on the held-out selection documents after fine-tuning at the learning rate in the variant (finetune_lr): "
        "what the learning rate is chosen by.",
        "lower", _PLASTICITY),
    "finetune_displacement": MetricDoc(
        "Distance ||theta_ft - theta_0|| the weights move in fine-tuning, to compare with the basin radius.", None, _BASIN),
    # loss landscape
    "hessian_max_eigenvalue": MetricDoc(
        "Largest Hessian eigenvalue of the pretraining loss: raw sharpness. It rises as weight decay shrinks the weights, "
        "so it does not compare flatness across weight decays.",
        None, _HESSIAN),
    "hessian_min_eigenvalue": MetricDoc("Smallest (most negative) Hessian eigenvalue of the pretraining loss.", None, _HESSIAN),
    "hessian_trace": MetricDoc(
        "Hutchinson estimate of the Hessian trace of the pretraining loss: raw, rises as the weights shrink (not flatness "
        "across weight decays).",
        None, _HESSIAN),
    "adaptive_max_eigenvalue": MetricDoc(
        "Largest eigenvalue of the Hessian rescaled by the weights' magnitudes (|w| H |w|): scale-invariant sharpness, "
        "comparable across weight decays; lower = flatter.",
        None, _ADAPTIVE),
    "adaptive_trace": MetricDoc(
        "Trace of the weight-rescaled Hessian (|w| H |w|): scale-invariant average curvature; lower = flatter.", None, _ADAPTIVE),
    "basin_sigma": MetricDoc(
        "Basin radius sigma: the largest scale of weight noise (Gaussian, rescaled to a standard Gaussian's norm; random or "
        "worst-case directions, variant 'direction') under which the expected drop of the objective (variant 'objective') "
        "stays within the threshold; wider = more room to fine-tune. Sigma is in weight units: weights that weight decay "
        "shrinks are moved relatively more by the same sigma, so across weight decays read it beside adaptive sharpness.",
        None, _BASIN),
    "basin_curve": MetricDoc("The objective under weight noise of each scale sigma (the curve the basin radius is read from).",
                             None, _BASIN),
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
        f"Exact memorization ({m.group(1)} documents): share of continuations reproduced token for token by greedy decoding.",
        "lower", _MEMO)),
    (re.compile(r"^matched_prefix_(.+)$"), lambda m: MetricDoc(
        f"Memorization ({m.group(1)} documents): mean number of continuation tokens greedy decoding reproduces before the "
        "first mismatch.",
        "lower", _MEMO)),
    (re.compile(r"^(.+)_by_position$"), lambda m: MetricDoc(
        f"{describe_metric(m.group(1)).description} By token position (variant position_bucket: positions after BOS).",
        describe_metric(m.group(1)).better, describe_metric(m.group(1)).citation)),
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
