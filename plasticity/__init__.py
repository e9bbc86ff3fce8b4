"""plasticity: performance on a downstream task after fine-tuning, the outcome the mechanisms explain.

Han, Bordt, Zhang, Kakade 2026 (arXiv 2602.11137): larger weight decay can give a worse base
model that is better after fine-tuning. :data:`ANALYSIS` (analysis ``"plasticity"``) fine-tunes
every checkpoint on ``finetune_data`` with one fixed recipe and reports the downstream loss (and,
for labelled tasks, accuracy) before and after; see :mod:`.analysis`.

    >>> from plastiscope.plasticity import plasticity
    >>> frame = plasticity(sweep, "downstream.jsonl", label_column="label")
"""

from plastiscope.downstream import DownstreamTask, label_accuracy, labelled_ids, split_indices, task_ids

from .analysis import ANALYSIS, OPTIONS, PlasticityTask, finetune, plasticity

__all__ = [
    "ANALYSIS",
    "OPTIONS",
    "DownstreamTask",
    "PlasticityTask",
    "finetune",
    "label_accuracy",
    "labelled_ids",
    "plasticity",
    "split_indices",
    "task_ids",
]
