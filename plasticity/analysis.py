"""The ``plasticity`` analysis: how well a checkpoint does on a downstream task after fine-tuning.

Han, Bordt, Zhang, Kakade 2026 (arXiv 2602.11137): a checkpoint pretrained with more weight
decay can be worse by validation loss yet better after fine-tuning. Plasticity is measured
directly: every checkpoint is fine-tuned on the downstream task (``finetune_data``) with the
**same budget** (``steps`` AdamW steps of ``batch_size`` documents, the same batches in the same
order for every checkpoint, a small learning-rate grid ``learning_rates``), and the learning rate
kept per checkpoint is the one with the lowest loss on a held-out **selection** part of the
task's documents, never on the **evaluation** part the numbers below are computed on.
Fine-tuning never touches the checkpoint: each learning rate trains a copy
(:func:`plastiscope.checkpoint.trainable_copy`), freed afterwards.

Metrics (variant column ``task``, the task's name; ``selected_lr`` is the learning rate kept):

- ``downstream_loss_before`` / ``downstream_loss_after`` (nats): mean over evaluation
  documents of the per-document mean next-token cross-entropy (:mod:`plastiscope.losses`),
  before and after fine-tuning; bootstrap 95 % interval over documents.
- ``plasticity_gain`` (nats) = ``downstream_loss_before - downstream_loss_after``: mean over
  evaluation documents of the per-document loss difference, with a (paired) bootstrap 95 %
  interval over documents.
- ``downstream_accuracy_before`` / ``downstream_accuracy_after`` (labelled tasks only): the
  share of evaluation documents whose label ranks first among the task's candidate labels
  (:mod:`plastiscope.downstream`); bootstrap 95 % interval over documents.
- ``downstream_selection_loss`` (one row per learning rate, variant column ``finetune_lr``):
  mean per-document loss on the selection part after fine-tuning at that learning rate, the
  number the learning rate was chosen by (NaN when training diverged).

``n`` is the number of evaluation documents (selection documents for the selection loss).
The task's documents are shuffled with ``seed`` and split into ``eval_docs`` evaluation,
``select_docs`` selection and up to ``train_docs`` fine-tuning documents (disjoint).

**Fine-tuning** is :func:`plastiscope.training.train`: one document per sequence, padding
masked out of the loss, AdamW with betas (0.9, 0.95), weight decay ``finetune_weight_decay``
(default 0, so fine-tuning adds no regularisation of its own) on matrices only, gradient norm
clipped at 1, a constant learning rate. The copy keeps float32 master weights on the
checkpoint's device; a checkpoint run in bfloat16 or float16 fine-tunes under autocast to it.
"""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from plastiscope.checkpoint import Checkpoint, Sweep, trainable_copy
from plastiscope.data import Documents, load_documents, pad
from plastiscope.downstream import DownstreamTask, label_accuracy, split_indices, task_ids
from plastiscope.losses import document_losses, mean_per_document
from plastiscope.memo import Memo
from plastiscope.options import Integer, ListOf, Nullable, Option, OptionTable, Real, Text
from plastiscope.results import ResultsStore, make_frame
from plastiscope.runner import Analysis, Inputs, run_one
from plastiscope.stats import mean_ci
from plastiscope.training import adamw, train

log = logging.getLogger("plastiscope")

NAME = "plasticity"
VARIANTS = ("task", "finetune_lr")
OPTIONS = OptionTable({
    "label_column": Option(None, Nullable(Text()), "label column of finetune_data: a labelled task (accuracy reported); null: plain LM"),
    "task_name": Option(None, Nullable(Text()), "the task's name in the results; null: the data file's name"),
    "steps": Option(30, Integer(1), "AdamW steps per fine-tuning run"),
    "batch_size": Option(16, Integer(1), "documents per step"),
    "learning_rates": Option([1e-3, 3e-3], ListOf(Real(0, None, closed="neither"), scalar=True),
                             "the grid; the best by selection loss is kept per checkpoint"),
    "finetune_weight_decay": Option(0.0, Real(0, None), "AdamW weight decay of fine-tuning (matrices only)"),
    "train_docs": Option(512, Integer(1), "fine-tuning documents (at most)"),
    "select_docs": Option(64, Integer(1), "held-out documents that choose the learning rate"),
    "eval_docs": Option(128, Integer(1), "held-out documents every reported number is computed on"),
    "seed": Option(0, Integer(0), "data split and batch order: the same for every checkpoint"),
    "eval_batch_size": Option(64, Integer(1), "documents per evaluation batch"),
    "n_resamples": Option(1000, Integer(1), "bootstrap resamples"),
})


def finetune(
    model: Any, train_ids: Sequence[Sequence[int]], pad_id: int, steps: int, batch_size: int, learning_rate: float,
    weight_decay: float = 0.0, seed: int = 0, autocast: torch.dtype | None = None,
) -> tuple[Any, bool]:
    """``(tuned, diverged)``: a fine-tuned copy (:func:`trainable_copy`) of ``model``, which is untouched.

    Batches: ``batch_size`` documents drawn with replacement by a generator seeded with
    ``seed`` (the same batches for every model and learning rate), on the model's device.
    ``diverged`` is True when the loss became non-finite (training stopped there).
    """
    tuned = trainable_copy(model)
    device = next(tuned.parameters()).device
    order = torch.Generator().manual_seed(seed)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.randint(len(train_ids), (batch_size,), generator=order).tolist()
        tokens, mask = pad([train_ids[i] for i in rows], pad_id)
        return tokens.to(device), mask.to(device)

    history = train(tuned, adamw(tuned, learning_rate, weight_decay), batch, steps, autocast=autocast)
    return tuned, bool(history) and not math.isfinite(history[-1])


class PlasticityTask:
    """Fine-tune one checkpoint in :meth:`finish` (no shared forward pass)."""

    def __init__(self, checkpoint: Checkpoint, task: DownstreamTask, config: dict[str, Any]):
        self.checkpoint, self.task, self.config = checkpoint, task, config
        self.passes: dict[str, list] = {}

    def _losses(self, model: Any, ids: list[list[int]], pad_id: int) -> np.ndarray:
        return mean_per_document(*document_losses(model, ids, pad_id, self.config["eval_batch_size"]))

    def finish(self) -> pd.DataFrame:
        """Fine-tune at every learning rate, keep the best by selection loss; the task's rows."""
        cfg, ckpt, task = self.config, self.checkpoint, self.task
        model, tokenizer, n_ctx = ckpt.hf_model, ckpt.tokenizer, ckpt.n_ctx
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        autocast = ckpt.dtype if ckpt.dtype != torch.float32 else None
        eval_rows, select_rows, train_rows = split_indices(
            len(task.documents), cfg["eval_docs"], cfg["select_docs"], cfg["train_docs"], cfg["seed"])
        eval_ids, select_ids, train_ids = (task_ids(task, tokenizer, n_ctx, r) for r in (eval_rows, select_rows, train_rows))
        bs, boot = cfg["eval_batch_size"], {"n_resamples": cfg["n_resamples"], "seed": cfg["seed"]}
        before = self._losses(model, eval_ids, pad_id)
        acc_before = label_accuracy(model, task, tokenizer, n_ctx, eval_rows, pad_id, bs) if task.labels else None
        records: list[dict[str, Any]] = []
        best, best_lr, best_loss = None, math.nan, math.inf
        for lr in cfg["learning_rates"]:
            tuned, diverged = finetune(model, train_ids, pad_id, cfg["steps"], cfg["batch_size"], lr,
                                       cfg["finetune_weight_decay"], cfg["seed"], autocast)
            selection = math.nan if diverged else float(np.mean(self._losses(tuned, select_ids, pad_id)))
            records.append({"metric": "downstream_selection_loss", "value": selection, "n": len(select_ids), "finetune_lr": lr})
            log.info("%s / %s: lr %g -> selection loss %.4f", ckpt.name, task.name, lr, selection)
            if math.isfinite(selection) and selection < best_loss:
                best, best_lr, best_loss = tuned, lr, selection
            tuned = None  # at most two copies alive: the best so far and the one in training
            gc.collect()
        records.append(_mean_record("downstream_loss_before", before, boot))
        if acc_before is not None:
            records.append(_mean_record("downstream_accuracy_before", acc_before, boot))
        if best is None:
            log.warning("%s / %s: fine-tuning diverged at every learning rate", ckpt.name, task.name)
            after = np.full_like(before, np.nan)
            acc_after = np.full_like(acc_before, np.nan) if acc_before is not None else None
        else:
            after = self._losses(best, eval_ids, pad_id)
            acc_after = label_accuracy(best, task, tokenizer, n_ctx, eval_rows, pad_id, bs) if task.labels else None
            best = None
            gc.collect()
        selected = {"selected_lr": best_lr}
        records.append(_mean_record("downstream_loss_after", after, boot) | selected)
        records.append(_mean_record("plasticity_gain", before - after, boot) | selected)
        if acc_after is not None:
            records.append(_mean_record("downstream_accuracy_after", acc_after, boot) | selected)
        return make_frame(ckpt, NAME, [r | {"task": task.name} for r in records], VARIANTS)


def _mean_record(metric: str, values: np.ndarray, boot: dict[str, int]) -> dict[str, Any]:
    if np.isnan(values).all():
        return {"metric": metric, "value": math.nan, "n": len(values)}
    value, low, high, n = mean_ci(values, **boot)
    return {"metric": metric, "value": value, "ci_low": low, "ci_high": high, "n": n}


def start(checkpoint: Checkpoint, inputs: Inputs, config: dict[str, Any], memo: Memo) -> PlasticityTask:
    """Start the plasticity analysis of one checkpoint on ``inputs.finetune_data``."""
    task = DownstreamTask.from_documents(inputs.finetune_data, config["label_column"], config["task_name"])
    split_indices(len(task.documents), config["eval_docs"], config["select_docs"], config["train_docs"], config["seed"])
    return PlasticityTask(checkpoint, task, config)


ANALYSIS = Analysis(name=NAME, inputs=("finetune_data",), start=start, options=OPTIONS, variants=VARIANTS)


def plasticity(
    sweep: Sweep | Checkpoint | Sequence[Checkpoint],
    finetune_data: Documents | Sequence[str] | str,
    label_column: str | None = None,
    store: ResultsStore | str | None = None,
    progress: bool = True,
    **options: Any,
) -> pd.DataFrame:
    """Fine-tune every checkpoint on ``finetune_data`` and measure it before and after (tidy results frame).

    ``finetune_data``: the downstream task's documents (anything :func:`plastiscope.load_documents`
    reads); ``label_column`` makes it a labelled task (accuracy is reported). ``options``: see
    :data:`OPTIONS`.
    """
    docs = load_documents(finetune_data, label_column=label_column)
    return run_one(sweep, ANALYSIS, Inputs(finetune_data=docs), {"label_column": label_column, **options}, store,
                   progress=progress)
