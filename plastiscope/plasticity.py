"""The ``plasticity`` analysis: how much a checkpoint gains when it is fine-tuned.

Han, Bordt, Zhang, Kakade 2026 (arXiv 2602.11137): a checkpoint pretrained with more
weight decay can be worse by validation loss yet better after fine-tuning. Plasticity is
measured directly: every checkpoint is fine-tuned on each downstream task with the **same
budget** (``steps`` AdamW steps of ``batch_size`` documents, the same batches in the same
order for every checkpoint, a small learning-rate grid ``learning_rates``), and the
learning rate kept per checkpoint is the one with the lowest loss on a held-out
**selection** part of the task's documents, never on the **evaluation** part the numbers
below are computed on. Fine-tuning never touches the checkpoint: each learning rate
trains a copy of ``checkpoint.hf_model`` (:func:`trainable_copy`), freed afterwards.

Metrics (extra column ``task``; rows after fine-tuning also carry ``finetune_lr``, the
learning rate selected):

- ``downstream_loss_before`` / ``downstream_loss_after`` (nats): mean over evaluation
  documents of the per-document mean next-token cross-entropy (the loss convention of
  :mod:`plastiscope.data` and ``overfit``: targets are the tokens after BOS, padding never
  counts), before and after fine-tuning; bootstrap 95 % interval over documents.
- ``plasticity_gain`` (nats) = ``downstream_loss_before - downstream_loss_after``: mean over
  evaluation documents of the per-document loss difference, with a (paired) bootstrap 95 %
  interval over documents. Positive: fine-tuning lowered the loss; larger is more plastic.
- ``downstream_accuracy_before`` / ``downstream_accuracy_after`` (labelled tasks only):
  fraction of evaluation documents whose label is ranked first among the task's candidate
  labels (see *Labelled tasks*); bootstrap 95 % interval over documents.
- ``downstream_selection_loss`` (one row per learning rate, column ``finetune_lr``): mean
  per-document loss on the selection part after fine-tuning at that learning rate, the
  number the learning rate was chosen by (NaN when training diverged).

``n`` is the number of evaluation documents (selection documents for the selection loss).

**Tasks** (option ``tasks``, a list):

- ``"finetune"``: the embedded corpus's ``finetune`` split (food, plant and weather glosses, a
  domain held out of pretraining), plain language modelling.
- ``"finetune_topic"``: the same documents as a labelled task, cast as text
  ``"<gloss> topic: <label>"`` with the label ``plant``, ``food`` or ``weather`` (the
  ``lexname`` column without its part-of-speech prefix). About 75 % of the split is
  ``plant``: that is the majority-class accuracy.
- a user dataset: :func:`task_spec` ``(path_or_documents, text_column=..., label_column=...)``
  returns the JSON-serialisable option that names it **with its content hash**, so cached
  results are keyed by the data, not by its path. In-memory :class:`~plastiscope.data.Documents`
  are kept in this process and found again by their hash.

Each task's documents are shuffled with ``seed`` and split into ``eval_docs`` evaluation,
``select_docs`` selection and up to ``train_docs`` fine-tuning documents (disjoint).

**Labelled tasks.** A document with text ``t`` and label ``y`` becomes the token sequence
``encode(t) + tokens(" <name>:") + tokens(" <y>")`` (``<name>`` is ``topic`` or the label
column's name): the text part is truncated so the label always fits the context. Fine-tuning
and the losses use the whole sequence. Accuracy scores each candidate label ``c`` (every
distinct label of the task) by the summed log-probability of ``tokens(" <c>")`` after
``encode(t) + tokens(" <name>:")`` and predicts the highest-scoring one (rank
classification, greedy over candidates; ties go to the first candidate in sorted order).

**Fine-tuning** follows :mod:`plastiscope.train`: one document per sequence, right padding
masked out of the loss, AdamW with betas (0.9, 0.95), weight decay ``finetune_weight_decay``
(default 0, so fine-tuning adds no regularisation of its own) on matrices only, gradient
norm clipped at 1, a constant learning rate. The model is float32 in train mode (the tiny
Llama models have no dropout).
"""

from __future__ import annotations

import copy
import gc
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from plastiscope.analysis import Analysis, Inputs, merge_options
from plastiscope.checkpoint import Checkpoint
from plastiscope.corpus import load_corpus
from plastiscope.data import DataError, Documents, encode, load_documents
from plastiscope.data import pad as pad_ids
from plastiscope.results import make_frame
from plastiscope.stats import mean_ci

log = logging.getLogger("plastiscope")

NAME = "plasticity"
EMBEDDED_TASKS = ("finetune", "finetune_topic")
DEFAULTS: dict[str, Any] = {
    "tasks": ["finetune", "finetune_topic"],  # names of EMBEDDED_TASKS or task_spec(...) dicts
    "steps": 30,  # AdamW steps per fine-tuning run
    "batch_size": 16,  # documents per step
    "learning_rates": [1e-3, 3e-3],  # the grid; the best by selection loss is kept per checkpoint
    "finetune_weight_decay": 0.0,
    "train_docs": 512,  # fine-tuning documents (at most)
    "select_docs": 64,  # held-out documents that choose the learning rate
    "eval_docs": 128,  # held-out documents every reported number is computed on
    "seed": 0,  # data split and batch order: the same for every checkpoint
    "eval_batch_size": 64,
    "n_resamples": 1000,
}

# in-memory Documents given to task_spec, by content hash (options must stay JSON)
_DOCUMENTS: dict[str, Documents] = {}


# ---------------------------------------------------------------------- tasks
@dataclass
class DownstreamTask:
    """A downstream task's documents; ``labels[i]`` is document ``i``'s label (None for plain LM)."""

    name: str
    documents: Documents
    label_name: str | None = None
    labels: list[str] | None = None


def task_spec(
    source: str | Path | Sequence[str] | Documents,
    text_column: str = "text",
    label_column: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """The ``tasks`` option entry for a user dataset: JSON, with the data's content hash.

    ``source`` is anything :func:`plastiscope.load_documents` reads. A path is recorded
    with its hash (a changed file is refused later rather than served from a stale cache);
    in-memory documents are kept in this process under their hash. With ``label_column``
    the task is labelled (accuracy is reported).
    """
    docs = load_documents(source, text_column=text_column, label_column=label_column)
    digest = docs.sha256()
    spec: dict[str, Any] = {"name": name or _default_name(source, docs), "sha256": digest,
                            "text_column": text_column, "label_column": label_column}
    if isinstance(source, (str, Path)):
        spec["path"] = str(Path(source).resolve())
    else:
        _DOCUMENTS[digest] = docs
    return spec


def _default_name(source: Any, docs: Documents) -> str:
    if isinstance(source, (str, Path)):
        return Path(source).stem
    return docs.source if docs.source != "<list>" else f"documents-{docs.sha256()[:8]}"


def resolve_task(spec: str | dict[str, Any]) -> DownstreamTask:
    """The documents (and labels) of one ``tasks`` entry; a precise error for a bad entry."""
    if isinstance(spec, str):
        if spec not in EMBEDDED_TASKS:
            raise ValueError(
                f"plasticity: unknown task {spec!r}; use one of {list(EMBEDDED_TASKS)} or "
                f"plastiscope.plasticity.task_spec(path) for your own data (it records the data hash the cache needs)"
            )
        docs = load_corpus("finetune")
        if spec == "finetune":
            return DownstreamTask(spec, docs)
        labels = [str(x).split(".")[-1] for x in docs.column("lexname")]
        return DownstreamTask(spec, docs, "topic", labels)
    if not isinstance(spec, dict) or "sha256" not in spec:
        raise ValueError(f"plasticity: a task is a name {list(EMBEDDED_TASKS)} or a task_spec(...) dict, got {spec!r}")
    label_column = spec.get("label_column")
    if "path" in spec:
        docs = load_documents(spec["path"], text_column=spec.get("text_column", "text"), label_column=label_column)
        if docs.sha256() != spec["sha256"]:
            raise DataError(f"{spec['path']}: the file changed since its task_spec was made; call task_spec(path) again")
    elif spec["sha256"] in _DOCUMENTS:
        docs = _DOCUMENTS[spec["sha256"]]
    else:
        raise ValueError(
            f"plasticity: task {spec.get('name')!r} names in-memory documents this process does not hold; "
            f"call task_spec(documents) in the same process, or save them to a file and use task_spec(path)"
        )
    name = str(spec.get("name") or docs.source)
    if label_column is None:
        return DownstreamTask(name, docs)
    return DownstreamTask(name, docs, str(label_column), [str(x) for x in docs.column(label_column)])


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


# ---------------------------------------------------------------------- tokens
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


def _target_logprobs(model: Any, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[batch, pos - 1]`` log-probability of each next token (0 where the target is padding)."""
    logits = model(tokens, attention_mask=mask.long()).logits.float()
    logp = -F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    return logp * mask[:, 1:]


# ---------------------------------------------------------------------- losses and scores
@torch.no_grad()
def document_losses(model: Any, ids: Sequence[Sequence[int]], pad: int, batch_size: int = 64) -> np.ndarray:
    """``[doc]`` mean next-token cross-entropy (nats) of each document over its tokens after BOS."""
    was_training = model.training
    model.eval()
    out = np.full(len(ids), np.nan)
    try:
        for start in range(0, len(ids), batch_size):
            tokens, mask = pad_ids(ids[start : start + batch_size], pad)
            logp = _target_logprobs(model, tokens, mask)
            count = mask[:, 1:].sum(1).clamp(min=1)
            out[start : start + len(tokens)] = (-logp.sum(1) / count).double().numpy()
    finally:
        model.train(was_training)
    return out


@torch.no_grad()
def label_accuracy(model: Any, task: DownstreamTask, tokenizer: Any, max_length: int, rows: Sequence[int],
                   pad: int, batch_size: int = 64) -> np.ndarray:
    """``[doc]`` 1.0 where the true label scores highest among the candidates (see module docstring)."""
    candidates = sorted(set(task.labels))
    reserve = label_reserve(task, tokenizer)
    scores = np.zeros((len(rows), len(candidates)))
    was_training = model.training
    model.eval()
    try:
        for c, label in enumerate(candidates):
            seqs = [labelled_ids(tokenizer, task.documents.texts[i], task.label_name, label, max_length, reserve)
                    for i in rows]
            for start in range(0, len(seqs), batch_size):
                chunk = seqs[start : start + batch_size]
                tokens, mask = pad_ids([s for s, _ in chunk], pad)
                logp = _target_logprobs(model, tokens, mask)  # target p+1 sits at column p
                label_part = torch.zeros_like(mask[:, 1:])
                for r, (seq, at) in enumerate(chunk):
                    label_part[r, at - 1 : len(seq) - 1] = True
                scores[start : start + len(chunk), c] = (logp * label_part).sum(1).double().numpy()
    finally:
        model.train(was_training)
    truth = np.array([candidates.index(task.labels[i]) for i in rows])
    return (scores.argmax(1) == truth).astype(np.float64)


# ---------------------------------------------------------------------- fine-tuning
def trainable_copy(model: Any) -> Any:
    """A plain ``transformers`` model with ``model``'s config and a copy of its parameters.

    ``checkpoint.hf_model`` is wrapped in place by TransformerLens's bridge, whose hook
    closures keep pointing at the original modules through ``copy.deepcopy`` (a deep copy's
    forward writes into the original). So the copy is rebuilt from the config and the
    parameters are copied by name, with the bridge's ``._original_component`` wrappers
    stripped; every parameter must match.
    """
    from transformers import AutoModelForCausalLM

    fresh = AutoModelForCausalLM.from_config(copy.deepcopy(model.config)).float()
    state = {name.replace("._original_component", ""): p.detach() for name, p in model.named_parameters()}
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    expected = {name for name, _ in fresh.named_parameters()}
    missing = [m for m in missing if m in expected]
    if missing or unexpected:
        raise RuntimeError(f"plasticity: cannot copy the model for fine-tuning (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return fresh


def finetune(
    model: Any, train_ids: Sequence[Sequence[int]], pad: int, steps: int, batch_size: int, learning_rate: float,
    weight_decay: float = 0.0, seed: int = 0,
) -> Any:
    """A fine-tuned copy (:func:`trainable_copy`) of ``model``, which is untouched; nanoGPT-style AdamW loop.

    Batches: ``batch_size`` documents drawn with replacement by a generator seeded with
    ``seed`` (same batches for every model and learning rate). Loss: mean next-token
    cross-entropy over the real tokens of the batch (``labels`` -100 on padding).
    """
    tuned = trainable_copy(model)
    tuned.train()
    params = [p for p in tuned.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
         {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
        lr=learning_rate, betas=(0.9, 0.95),
    )
    order = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        rows = torch.randint(len(train_ids), (batch_size,), generator=order).tolist()
        tokens, mask = pad_ids([train_ids[i] for i in rows], pad)
        labels = tokens.masked_fill(~mask, -100)
        loss = tuned(tokens, attention_mask=mask.long(), labels=labels).loss
        if not torch.isfinite(loss):
            break  # diverged: its selection loss is NaN and it is never chosen
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    tuned.eval()
    return tuned


# ---------------------------------------------------------------------- the task
def _check_options(options: dict[str, Any]) -> dict[str, Any]:
    config = merge_options("plasticity", DEFAULTS, options)
    for key in ("steps", "batch_size", "train_docs", "select_docs", "eval_docs", "eval_batch_size", "n_resamples"):
        if not isinstance(config[key], int) or isinstance(config[key], bool) or config[key] < 1:
            raise ValueError(f"plasticity: {key} must be a positive integer, got {config[key]!r}")
    rates = config["learning_rates"]
    if isinstance(rates, (int, float)):
        rates = [rates]
    if not rates or not all(isinstance(r, (int, float)) and r > 0 for r in rates):
        raise ValueError(f"plasticity: learning_rates must be a non-empty list of positive numbers, got {rates!r}")
    config["learning_rates"] = [float(r) for r in rates]
    tasks = config["tasks"]
    config["tasks"] = [tasks] if isinstance(tasks, (str, dict)) else list(tasks)
    if not config["tasks"]:
        raise ValueError("plasticity: tasks is empty; e.g. tasks=['finetune']")
    return config


class PlasticityTask:
    """Fine-tune one checkpoint on every task in :meth:`finish` (no shared forward pass)."""

    def __init__(self, checkpoint: Checkpoint, config: dict[str, Any]):
        self.checkpoint, self.config = checkpoint, config
        self.passes = {}
        self.tasks = [resolve_task(spec) for spec in config["tasks"]]  # fail early on a bad task

    def finish(self) -> pd.DataFrame:
        records: list[dict[str, Any]] = []
        for task in self.tasks:
            records += self.run_task(task)
        return make_frame(self.checkpoint, NAME, records)

    def run_task(self, task: DownstreamTask) -> list[dict[str, Any]]:
        """Fine-tune at every learning rate, keep the best by selection loss; the task's records."""
        cfg, ckpt = self.config, self.checkpoint
        model, tokenizer, n_ctx = ckpt.hf_model, ckpt.tokenizer, ckpt.n_ctx
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        eval_rows, select_rows, train_rows = split_indices(
            len(task.documents), cfg["eval_docs"], cfg["select_docs"], cfg["train_docs"], cfg["seed"])
        eval_ids, select_ids, train_ids = (task_ids(task, tokenizer, n_ctx, r) for r in (eval_rows, select_rows, train_rows))
        bs, boot = cfg["eval_batch_size"], {"n_resamples": cfg["n_resamples"], "seed": cfg["seed"]}
        before = document_losses(model, eval_ids, pad, bs)
        acc_before = label_accuracy(model, task, tokenizer, n_ctx, eval_rows, pad, bs) if task.labels else None
        records: list[dict[str, Any]] = []
        best, best_lr, best_loss = None, math.nan, math.inf
        for lr in cfg["learning_rates"]:
            tuned = finetune(model, train_ids, pad, cfg["steps"], cfg["batch_size"], lr, cfg["finetune_weight_decay"], cfg["seed"])
            selection = float(np.mean(document_losses(tuned, select_ids, pad, bs)))
            records.append({"metric": "downstream_selection_loss", "value": selection, "n": len(select_ids), "finetune_lr": lr})
            log.info("%s / %s: lr %g -> selection loss %.4f", ckpt.name, task.name, lr, selection)
            if math.isfinite(selection) and selection < best_loss:
                best, best_lr, best_loss = tuned, lr, selection
            tuned = None  # at most two copies alive: the best so far and the one in training
            gc.collect()
        row = {"task": task.name}
        records = [{**r, **row} for r in records]
        records.append(_mean_record("downstream_loss_before", before, boot) | row)
        if acc_before is not None:
            records.append(_mean_record("downstream_accuracy_before", acc_before, boot) | row)
        if best is None:
            log.warning("%s / %s: fine-tuning diverged at every learning rate", ckpt.name, task.name)
            after = np.full_like(before, np.nan)
            acc_after = np.full_like(acc_before, np.nan) if acc_before is not None else None
        else:
            after = document_losses(best, eval_ids, pad, bs)
            acc_after = label_accuracy(best, task, tokenizer, n_ctx, eval_rows, pad, bs) if task.labels else None
            best = None
            gc.collect()
        row = {**row, "finetune_lr": best_lr}
        records.append(_mean_record("downstream_loss_after", after, boot) | row)
        records.append(_mean_record("plasticity_gain", before - after, boot) | row)
        if acc_after is not None:
            records.append(_mean_record("downstream_accuracy_after", acc_after, boot) | row)
        return records


def _mean_record(metric: str, values: np.ndarray, boot: dict[str, int]) -> dict[str, Any]:
    if np.isnan(values).all():
        return {"metric": metric, "value": math.nan, "n": len(values)}
    value, low, high, n = mean_ci(values, **boot)
    return {"metric": metric, "value": value, "ci_low": low, "ci_high": high, "n": n}


def start(checkpoint: Checkpoint, inputs: Inputs, **options: Any) -> PlasticityTask:
    return PlasticityTask(checkpoint, _check_options(options))


ANALYSIS = Analysis(name=NAME, inputs=(), start=start, options=dict(DEFAULTS))
