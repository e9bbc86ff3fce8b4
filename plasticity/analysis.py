"""The ``plasticity`` analysis: how well a checkpoint does on a downstream task after fine-tuning.

Han, Bordt, Zhang, Kakade 2026 (arXiv 2602.11137): a checkpoint pretrained with more weight
decay can be worse by validation loss yet **better after fine-tuning**; their claim is about
downstream performance after fine-tuning, so that is this analysis's primary outcome. Every
checkpoint is fine-tuned on the downstream task (``finetune_data``) with the **same budget**
(``steps`` AdamW steps of ``batch_size`` documents, the same batches in the same order for every
checkpoint, a small learning-rate grid ``learning_rates``), and the learning rate kept per
checkpoint is the one with the lowest loss on a held-out **selection** part of the task's
documents, never on the **evaluation** part the numbers below are computed on. Fine-tuning never
touches the checkpoint: each learning rate trains a copy (:func:`plastiscope.training.trainable_copy`),
freed afterwards.

Metrics, in the order of the rows (variant column ``task``, the task's name; ``selected_lr``,
a detail column, is the learning rate kept; ``n``: evaluation documents; intervals: 95 %
percentile bootstrap over evaluation documents):

- **Primary outcome.** ``downstream_loss_after`` (nats; lower = better after fine-tuning): mean
  over evaluation documents of each document's mean next-token cross-entropy
  (:mod:`plastiscope.losses`) under the fine-tuned copy. ``downstream_accuracy_after`` (labelled
  tasks only; higher = better): the share of evaluation documents whose label ranks first among
  the task's candidate labels (:mod:`plastiscope.downstream`).
- ``downstream_loss_before`` / ``downstream_accuracy_before``: the same, before fine-tuning.
- ``plasticity_gain`` (nats; secondary) = ``downstream_loss_before - downstream_loss_after``,
  the mean of the per-document differences, with a paired bootstrap interval. Not the outcome:
  a checkpoint that starts far worse can gain more and still end worse.
- ``finetune_displacement`` (secondary; no interval, the run is deterministic): the Euclidean
  distance ``||theta_ft - theta_0||_2`` over all parameters between the checkpoint and its
  selected fine-tuned copy (float64 accumulation); how far fine-tuning moved, to set beside the
  basin radii of the loss landscape (Chen et al. 2025, arXiv 2505.17646). ``n``: fine-tuning
  documents.
- ``downstream_selection_loss`` (one row per learning rate, variant column ``finetune_lr``):
  mean per-document loss on the selection part after fine-tuning at that learning rate, the
  number the learning rate was chosen by (NaN when training diverged); ``n``: selection documents.

The task's documents are shuffled with ``seed`` and split into ``eval_docs`` evaluation,
``select_docs`` selection and up to ``train_docs`` fine-tuning documents (disjoint).

**Fine-tuning** is :func:`plastiscope.training.train`: one document per sequence, padding
masked out of the loss, AdamW with betas (0.9, 0.95), weight decay ``finetune_weight_decay``
(default 0, so fine-tuning adds no regularisation of its own) on matrices only, gradient norm
clipped at 1, a constant learning rate. The copy keeps float32 master weights on the
checkpoint's device; a checkpoint run in bfloat16 or float16 fine-tunes, and its fine-tuned copy
is evaluated, under autocast to that dtype, so before and after are measured in one precision.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from plastiscope.checkpoint import Checkpoint
from plastiscope.data import Documents, load_documents, pad
from plastiscope.downstream import DownstreamTask, label_accuracy, split_indices, task_ids
from plastiscope.losses import document_losses, mean_per_document, model_device
from plastiscope.memo import Memo
from plastiscope.metrics import Headline, Metric
from plastiscope.options import Integer, ListOf, Nullable, Option, OptionTable, Real, Text
from plastiscope.results import ResultsStore, make_frame
from plastiscope.runner import Analysis, Inputs, run_one
from plastiscope.stats import mean_ci
from plastiscope.sweep import Sweep
from plastiscope.training import adamw, train, trainable_copy

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


def parameter_distance(model: Any, tuned: Any, chunk: int = 1 << 24) -> float:
    """``||theta_tuned - theta_model||_2`` over every parameter of ``tuned``, matched to ``model``'s by name
    (TransformerLens's ``._original_component`` wrappers stripped), accumulated in float64 a slice of
    ``chunk`` elements at a time (no float64 copy of a whole large tensor)."""
    original = {name.replace("._original_component", ""): p for name, p in model.named_parameters(remove_duplicate=False)}
    total = torch.zeros((), dtype=torch.float64, device=model_device(tuned))
    for name, p in tuned.named_parameters():
        if name not in original:
            raise KeyError(f"parameter {name!r} of the fine-tuned copy has no counterpart in the checkpoint")
        a, b = p.detach().reshape(-1), original[name].detach().reshape(-1)
        for start in range(0, a.numel(), chunk):
            diff = a[start : start + chunk].double() - b[start : start + chunk].to(a.device).double()
            total += (diff * diff).sum()
    return float(total.sqrt())


@contextlib.contextmanager
def precision(model: Any, autocast: torch.dtype | None) -> Iterator[None]:
    """Run ``model``'s forward passes under autocast to ``autocast`` (None: as it is)."""
    if autocast is None:
        yield
        return
    with torch.autocast(model_device(model).type, dtype=autocast):
        yield


class PlasticityTask:
    """Fine-tune one checkpoint in :meth:`finish` (no shared forward pass)."""

    def __init__(self, checkpoint: Checkpoint, task: DownstreamTask, config: dict[str, Any]):
        self.checkpoint, self.task, self.config = checkpoint, task, config
        self.passes: dict[str, list] = {}

    def _losses(self, model: Any, ids: list[list[int]], pad_id: int, autocast: torch.dtype | None = None) -> np.ndarray:
        with precision(model, autocast):
            return mean_per_document(*document_losses(model, ids, pad_id, self.config["eval_batch_size"]))

    def finish(self) -> pd.DataFrame:
        """Fine-tune at every learning rate, keep the best by selection loss; the task's rows, outcome first."""
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
        selection_records: list[dict[str, Any]] = []
        best, best_lr, best_loss, displacement = None, math.nan, math.inf, math.nan
        for lr in cfg["learning_rates"]:
            tuned, diverged = finetune(model, train_ids, pad_id, cfg["steps"], cfg["batch_size"], lr,
                                       cfg["finetune_weight_decay"], cfg["seed"], autocast)
            selection = math.nan if diverged else float(np.mean(self._losses(tuned, select_ids, pad_id, autocast)))
            selection_records.append(
                {"metric": "downstream_selection_loss", "value": selection, "n": len(select_ids), "finetune_lr": lr})
            log.info("%s / %s: lr %g -> selection loss %.4f", ckpt.name, task.name, lr, selection)
            if math.isfinite(selection) and selection < best_loss:
                best, best_lr, best_loss = tuned, lr, selection
                displacement = parameter_distance(model, tuned)
            tuned = None  # at most two copies alive: the best so far and the one in training
            gc.collect()
        if best is None:
            log.warning("%s / %s: fine-tuning diverged at every learning rate", ckpt.name, task.name)
            after = np.full_like(before, np.nan)
            acc_after = np.full_like(acc_before, np.nan) if acc_before is not None else None
        else:
            after = self._losses(best, eval_ids, pad_id, autocast)
            with precision(best, autocast):
                acc_after = label_accuracy(best, task, tokenizer, n_ctx, eval_rows, pad_id, bs) if task.labels else None
            best = None
            gc.collect()
        selected = {"selected_lr": best_lr}
        records = [_mean_record("downstream_loss_after", after, boot) | selected]
        if acc_after is not None:
            records.append(_mean_record("downstream_accuracy_after", acc_after, boot) | selected)
        records.append(_mean_record("downstream_loss_before", before, boot))
        if acc_before is not None:
            records.append(_mean_record("downstream_accuracy_before", acc_before, boot))
        records.append(_mean_record("plasticity_gain", before - after, boot) | selected)
        records.append({"metric": "finetune_displacement", "value": displacement, "n": len(train_ids)} | selected)
        records += selection_records
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


_PLASTICITY = "Han, Bordt, Zhang, Kakade 2026 (arXiv 2602.11137)"
METRICS = (
    Metric("downstream_loss_after", "Downstream-task loss (nats) after fine-tuning with the same budget for every checkpoint: the "
           "outcome.", "nats", "lower", _PLASTICITY, role="outcome",
           headline=Headline("outcome", "Outcome: loss after fine-tuning", "fall", "Han et al. 2026",
                             "run the plasticity analysis (name it, with a downstream task as --finetune-data)", order=10)),
    Metric("downstream_loss_before", "Downstream-task loss (nats) before fine-tuning.", "nats", "lower", _PLASTICITY),
    Metric("downstream_accuracy_before", "Downstream-task accuracy (labelled tasks) before fine-tuning.", "fraction", "higher",
           _PLASTICITY),
    Metric("downstream_accuracy_after", "Downstream-task accuracy (labelled tasks) after fine-tuning: the outcome for labelled tasks.",
           "fraction", "higher", _PLASTICITY, role="outcome_accuracy"),
    Metric("plasticity_gain", "Downstream loss before minus after fine-tuning; secondary: a model that starts worse can gain more and "
           "still end worse.", "nats", "higher", _PLASTICITY),
    Metric("downstream_selection_loss", "Loss on the held-out selection documents after fine-tuning at the learning rate in the "
           "variant (finetune_lr): what the learning rate is chosen by.", "nats", "lower", _PLASTICITY),
    Metric("finetune_displacement", "Distance ||theta_ft - theta_0|| the weights move in fine-tuning, to compare with the basin radius.",
           "weight units", None, "Chen et al. 2025 (arXiv 2505.17646)"),
)

ANALYSIS = Analysis(name=NAME, inputs=("finetune_data",), start=start, options=OPTIONS, variants=VARIANTS, metrics=METRICS)


def plasticity(
    sweep: Sweep | Checkpoint | Sequence[Checkpoint],
    finetune_data: Documents | Sequence[str] | str,
    label_column: str | None = None,
    store: ResultsStore | str | None = None,
    progress: bool = True,
    **options: Any,
) -> pd.DataFrame:
    """Fine-tune every checkpoint on ``finetune_data`` and measure it after and before (tidy results frame).

    The outcome to rank checkpoints by is ``downstream_loss_after`` (lower is better) and, for a
    labelled task, ``downstream_accuracy_after`` (higher is better); the module docstring lists
    every row. ``finetune_data``: the downstream task's documents (anything
    :func:`plastiscope.load_documents` reads); ``label_column`` makes it a labelled task (accuracy
    is reported). ``options``: see :data:`OPTIONS`.
    """
    docs = load_documents(finetune_data, label_column=label_column)
    return run_one(sweep, ANALYSIS, Inputs(finetune_data=docs), {"label_column": label_column, **options}, store,
                   progress=progress)
