"""plasticity: performance on a downstream task after fine-tuning, the outcome the mechanisms explain.

Han, Bordt, Zhang, Kakade 2026 (arXiv 2602.11137): larger weight decay can give a worse base
model that is better after fine-tuning. :data:`ANALYSIS` (analysis ``"plasticity"``) fine-tunes
every checkpoint on ``finetune_data`` with one fixed recipe; its primary outcome is the downstream
loss (and, for labelled tasks, accuracy) **after** fine-tuning, with the values before, the gain
and the distance fine-tuning moved the weights as secondary rows; see :mod:`.analysis`.

    >>> from plastiscope.plasticity import plasticity
    >>> frame = plasticity(sweep, "downstream.jsonl", label_column="label")
"""

from plastiscope.downstream import DownstreamTask, label_accuracy, labelled_ids, split_indices, task_ids

from .analysis import ANALYSIS, OPTIONS, PlasticityTask, finetune, parameter_distance, plasticity

__all__ = [
    "ANALYSIS",
    "OPTIONS",
    "DownstreamTask",
    "PlasticityTask",
    "finetune",
    "label_accuracy",
    "labelled_ids",
    "parameter_distance",
    "plasticity",
    "split_indices",
    "task_ids",
]
