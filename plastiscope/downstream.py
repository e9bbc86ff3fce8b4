"""Downstream tasks: documents as token sequences, and rank-classification accuracy on a labelled task.

A task is a set of documents (the ``finetune_data`` input), plain (language modelling) or
labelled; the plasticity analysis fine-tunes on it, the landscape analysis scores it. A
labelled document with text ``t`` and label ``y`` becomes the token sequence
``encode(t) + tokens(" <name>:") + tokens(" <y>")`` (``<name>`` is the label column's name):
the text part is truncated so the label always fits the context, and fine-tuning and the
losses use the whole sequence. Accuracy scores each candidate label ``c`` (every distinct label
of the task) by the summed log-probability of ``tokens(" <c>")`` after ``encode(t) +
tokens(" <name>:")`` and predicts the highest-scoring one (rank classification; ties go to the
first candidate in sorted order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plastiscope.data import Documents, encode, pad
from plastiscope.losses import model_device, token_losses

DOCUMENT_SUFFIXES = (".txt", ".jsonl", ".ndjson", ".json", ".csv", ".tsv")


@dataclass
class DownstreamTask:
    """A downstream task's documents; ``labels[i]`` is document ``i``'s label (None for plain LM)."""

    name: str
    documents: Documents
    label_name: str | None = None
    labels: list[str] | None = None

    @classmethod
    def from_documents(cls, documents: Documents, label_column: str | None = None, name: str | None = None) -> DownstreamTask:
        """The task of ``documents``, labelled by ``label_column`` when given; named ``name`` or after its source."""
        name = name or _default_name(documents)
        if label_column is None:
            return cls(name, documents)
        return cls(name, documents, label_column, [str(x) for x in documents.column(label_column)])


def _default_name(documents: Documents) -> str:
    """A file's stem (``downstream.jsonl`` -> ``downstream``), another source's text, or a content tag."""
    source = documents.source
    if source.startswith("<") or not source:
        return f"documents-{documents.sha256()[:8]}"
    path = Path(source)
    return path.stem if path.suffix.lower() in DOCUMENT_SUFFIXES or path.is_dir() else source


def split_indices(n: int, eval_docs: int, select_docs: int, train_docs: int, seed: int) -> tuple[np.ndarray, ...]:
    """Disjoint ``(eval, select, train)`` document indices of a seeded shuffle of ``range(n)``."""
    if n < eval_docs + select_docs + 1:
        raise ValueError(
            f"plasticity: the task has {n} documents, fewer than eval_docs + select_docs + 1 = "
            f"{eval_docs + select_docs + 1}; lower eval_docs / select_docs or give more documents"
        )
    order = np.random.default_rng(seed).permutation(n)
    return (order[:eval_docs], order[eval_docs : eval_docs + select_docs],
            order[eval_docs + select_docs : eval_docs + select_docs + train_docs])


def _label_tokens(tokenizer: Any, label_name: str, label: str) -> tuple[list[int], list[int]]:
    cue = tokenizer(f" {label_name}:", add_special_tokens=False)["input_ids"]
    return cue, tokenizer(f" {label}", add_special_tokens=False)["input_ids"]


def labelled_ids(
    tokenizer: Any, text: str, label_name: str, label: str, max_length: int, reserve: int = 0
) -> tuple[list[int], int]:
    """Token ids of ``"<text> <label_name>: <label>"`` and where the label starts.

    ``encode(text)`` (BOS + text) is truncated so the cue and ``max(reserve, label tokens)``
    always fit in ``max_length``: with ``reserve`` = the longest candidate label, every
    candidate sees the same text.
    """
    cue, tail = _label_tokens(tokenizer, label_name, label)
    room = max_length - len(cue) - max(len(tail), reserve)
    if room < 2:
        raise ValueError(f"plasticity: the label {label!r} takes {len(cue) + len(tail)} tokens; no room left in a context of {max_length}")
    prefix = encode(tokenizer, text, room) + cue
    return prefix + tail, len(prefix)


def label_reserve(task: DownstreamTask, tokenizer: Any) -> int:
    """Tokens of the longest candidate label of ``task`` (0 for plain tasks)."""
    if task.labels is None:
        return 0
    return max(len(_label_tokens(tokenizer, task.label_name, c)[1]) for c in set(task.labels))


def task_ids(task: DownstreamTask, tokenizer: Any, max_length: int, rows: Sequence[int]) -> list[list[int]]:
    """Token ids of documents ``rows`` of ``task`` (labelled documents include their label)."""
    if task.labels is None:
        return [encode(tokenizer, task.documents.texts[i], max_length) for i in rows]
    reserve = label_reserve(task, tokenizer)
    return [labelled_ids(tokenizer, task.documents.texts[i], task.label_name, task.labels[i], max_length, reserve)[0]
            for i in rows]


@torch.no_grad()
def label_accuracy(model: Any, task: DownstreamTask, tokenizer: Any, max_length: int, rows: Sequence[int],
                   pad_id: int, batch_size: int = 64) -> np.ndarray:
    """``[doc]`` 1.0 where the true label scores highest among the candidates (module docstring)."""
    candidates = sorted(set(task.labels))
    reserve = label_reserve(task, tokenizer)
    scores = np.zeros((len(rows), len(candidates)))
    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        for c, label in enumerate(candidates):
            seqs = [labelled_ids(tokenizer, task.documents.texts[i], task.label_name, label, max_length, reserve)
                    for i in rows]
            for start in range(0, len(seqs), batch_size):
                chunk = seqs[start : start + batch_size]
                tokens, mask = pad([s for s, _ in chunk], pad_id)
                tokens, mask = tokens.to(device), mask.to(device)
                loss, _ = token_losses(model(tokens, attention_mask=mask.long()).logits, tokens, mask)
                label_part = torch.zeros_like(mask[:, 1:])  # target p+1 sits at column p
                for r, (seq, at) in enumerate(chunk):
                    label_part[r, at - 1 : len(seq) - 1] = True
                scores[start : start + len(chunk), c] = -(loss * label_part).sum(1).double().cpu().numpy()
    finally:
        model.train(was_training)
    truth = np.array([candidates.index(task.labels[i]) for i in rows])
    return (scores.argmax(1) == truth).astype(np.float64)
