"""plasticity: performance on a downstream task after fine-tuning, the outcome the mechanisms explain.

Han, Bordt, Zhang, Kakade 2026 (arXiv 2602.11137): larger weight decay can give a worse base
model that is better after fine-tuning. :data:`ANALYSIS` (analysis ``"plasticity"``) fine-tunes
every checkpoint on ``finetune_data`` with one fixed recipe; its primary outcome is the downstream
loss (and, for labelled tasks, accuracy) **after** fine-tuning, with the values before, the gain
and the distance fine-tuning moved the weights as secondary rows; see :mod:`.analysis`. A
prompt/response task (supervised fine-tuning data) is trained and measured on its responses and
scored by greedy generation; fine-tuning may be full or LoRA (``method``), and its memory is
estimated before it starts (:mod:`.memory`).

    >>> from plastiscope.plasticity import plasticity
    >>> frame = plasticity(sweep, "downstream.jsonl", label_column="label")
    >>> frame = plasticity(sweep, "sft.jsonl", method="lora", gradient_checkpointing=True)  # prompt/response records
"""

from plastiscope.downstream import (
    DownstreamTask,
    exact_match,
    generative_scores,
    label_accuracy,
    labelled_ids,
    normalize_answer,
    sft_ids,
    split_indices,
    task_ids,
)

from .analysis import ANALYSIS, OPTIONS, PlasticityTask, finetune, lora_config, memory_estimate, parameter_distance, plasticity
from .memory import MemoryEstimate, MemoryRefusal, finetune_memory, free_memory

__all__ = [
    "ANALYSIS",
    "OPTIONS",
    "DownstreamTask",
    "MemoryEstimate",
    "MemoryRefusal",
    "PlasticityTask",
    "exact_match",
    "finetune",
    "finetune_memory",
    "free_memory",
    "generative_scores",
    "label_accuracy",
    "labelled_ids",
    "lora_config",
    "memory_estimate",
    "normalize_answer",
    "parameter_distance",
    "plasticity",
    "sft_ids",
    "split_indices",
    "task_ids",
]
