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

**Prompt/response tasks** (documents with ``prompt`` and ``response`` fields, or chat
``messages``: supervised fine-tuning data, recognised without further options; sequences as
:mod:`plastiscope.downstream` builds them, through the tokenizer's chat template when it has
one). The loss, in training and in every row, is on the response tokens only (the prompt is
context), and the fine-tuned copy is also scored by generation. Rows, in this order:

- **Primary outcome.** ``response_loss_after`` (nats; lower = better): mean over evaluation
  documents of each document's mean cross-entropy on its response tokens, equal to
  ``transformers``' ``labels=`` loss with the prompt's labels at -100.
  ``generative_accuracy_after`` (higher = better): the share of evaluation prompts whose greedy
  continuation (``max_new_tokens`` tokens, stopped at EOS) states the reference answer: exact
  match after :func:`plastiscope.downstream.normalize_answer` (the text after the last
  ``####``/``answer is`` marker, else the first line; lowercased, whitespace and trailing
  punctuation stripped, numbers written canonically), as GSM8K is scored (Cobbe et al. 2021,
  arXiv 2110.14168). ``generative_score_after``: the mean of the user's ``scorer(prediction,
  reference) -> float`` (Python API option ``scorer``), when given.
- ``response_loss_before`` / ``generative_accuracy_before`` / ``generative_score_before``: the
  same, before fine-tuning.
- ``plasticity_gain`` = ``response_loss_before - response_loss_after``; ``finetune_displacement``
  and ``downstream_selection_loss`` (the response loss on the selection part) as above.

Every row also carries ``finetune_method`` (``full`` or ``lora``), a detail column.

The task's documents are shuffled with ``seed`` and split into ``eval_docs`` evaluation,
``select_docs`` selection and up to ``train_docs`` fine-tuning documents (disjoint).

**Fine-tuning** is :func:`plastiscope.training.train`: one document per sequence, padding
masked out of the loss, AdamW with betas (0.9, 0.95), weight decay ``finetune_weight_decay``
(default 0, so fine-tuning adds no regularisation of its own) on matrices only, gradient norm
clipped at 1, a constant learning rate. The copy keeps float32 master weights on the
checkpoint's device; a checkpoint run in bfloat16 or float16 fine-tunes, and its fine-tuned copy
is evaluated, under autocast to that dtype, so before and after are measured in one precision.

``method="lora"`` trains low-rank adapters (Hu et al. 2021, arXiv 2106.09685; ``peft``'s
``LoraConfig``: ``lora_rank``, ``lora_alpha``, ``lora_dropout``, ``lora_target_modules``,
default every linear layer but the output) on a frozen copy kept in the checkpoint's dtype,
adapters in float32; its displacement is that of the merged weights.
``gradient_checkpointing=true`` recomputes each layer's activations in the backward pass.
**Before fine-tuning**, the memory it needs on the checkpoint's device is estimated
(:mod:`plastiscope.plasticity.memory`: weights, gradients and AdamW state of the trainable
parameters, activations at the batch and the longest fine-tuning document, the evaluation
after) and compared with the device's free memory (or ``memory_limit_gb``): a run that would not
fit is refused, naming the settings that would (LoRA, gradient checkpointing, a smaller batch),
instead of running out of memory halfway through a sweep. One fine-tuned copy is alive at a
time: a learning rate's copy is evaluated as soon as its selection loss is the best so far.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from plastiscope.activations import native_attention, use_fused_attention
from plastiscope.checkpoint import Checkpoint
from plastiscope.data import Documents, load_documents, pad
from plastiscope.downstream import DownstreamTask, exact_match, generative_scores, label_accuracy, sft_ids, split_indices, task_ids
from plastiscope.losses import document_losses, from_position, mean_per_document, model_device
from plastiscope.memo import Memo
from plastiscope.metrics import Headline, Metric
from plastiscope.options import AnyOf, Boolean, Function, Integer, ListOf, Nullable, OneOf, Option, OptionTable, Real, Text
from plastiscope.results import ResultsStore, make_frame
from plastiscope.runner import Analysis, Inputs, run_one
from plastiscope.stats import mean_ci
from plastiscope.sweep import Sweep
from plastiscope.training import adamw, train, trainable_copy

from .memory import GIB, HEADROOM, MemoryEstimate, check_fits, finetune_memory, free_memory

log = logging.getLogger("plastiscope")

NAME = "plasticity"
VARIANTS = ("task", "finetune_lr")
METHODS = ("full", "lora")


def _check(o: dict[str, Any]) -> dict[str, Any]:
    if o["method"] == "full" and o["lora_dropout"] > 0:
        raise ValueError("lora_dropout applies to method='lora'; set -o plasticity.method=lora or leave it at 0")
    return o


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
    "eval_batch_size": Option(64, Integer(1), "documents per evaluation batch (and per generation batch)"),
    "n_resamples": Option(1000, Integer(1), "bootstrap resamples"),
    "method": Option("full", OneOf(*METHODS), "full: every parameter (float32 master weights); lora: low-rank adapters (peft) "
                     "on a frozen copy in the checkpoint's dtype"),
    "lora_rank": Option(8, Integer(1), "LoRA rank r (method=lora)"),
    "lora_alpha": Option(16.0, Real(0, None, closed="neither"), "LoRA alpha: the update is scaled by alpha / r (method=lora)"),
    "lora_dropout": Option(0.0, Real(0, 1, closed="left"), "dropout on the LoRA branch's input (method=lora)"),
    "lora_target_modules": Option("all-linear", AnyOf(OneOf("all-linear"), ListOf(Text(), scalar=True)),
                                  "modules that get adapters: all-linear (every linear layer but the output) or a list of "
                                  "module names, e.g. [\"q_proj\", \"v_proj\"] (method=lora)"),
    "gradient_checkpointing": Option(False, Boolean(), "recompute each layer's activations in the backward pass (less memory, "
                                     "~1/3 more time)"),
    "memory_limit_gb": Option(None, Nullable(Real(0, None, closed="neither")),
                              "GiB fine-tuning may use; null: the device's free memory (the check before fine-tuning)"),
    "max_new_tokens": Option(None, Nullable(Integer(1)), "prompt/response tasks: tokens generated per prompt; null: as many as "
                             "the longest evaluation response"),
    "scorer": Option(None, Nullable(Function()), "Python API only, prompt/response tasks: scorer(prediction, reference) -> float, "
                     "reported as generative_score_before/after beside exact match"),
}, check=_check)


def lora_config(config: dict[str, Any]) -> Any:
    """The ``peft.LoraConfig`` of the options (rank, alpha, dropout, target modules) for a causal LM."""
    from peft import LoraConfig

    return LoraConfig(r=config["lora_rank"], lora_alpha=config["lora_alpha"], lora_dropout=config["lora_dropout"],
                      target_modules=config["lora_target_modules"], task_type="CAUSAL_LM")


def finetune(
    model: Any, train_ids: Sequence[Sequence[int]], pad_id: int, steps: int, batch_size: int, learning_rate: float,
    weight_decay: float = 0.0, seed: int = 0, autocast: torch.dtype | None = None, first_target: Sequence[int] | None = None,
    lora: Any = None, gradient_checkpointing: bool = False,
) -> tuple[Any, bool]:
    """``(tuned, diverged)``: a fine-tuned copy (:func:`trainable_copy`) of ``model``, which is untouched.

    Batches: ``batch_size`` documents drawn with replacement by a generator seeded with
    ``seed`` (the same batches for every model and learning rate), on the model's device.
    ``first_target[i]``: where document ``i``'s response starts (the loss is on the response
    only); None: every token after the first is a target. ``lora``: a ``peft.LoraConfig``; the
    copy then keeps ``model``'s dtype, is frozen, and only the adapters train (``tuned`` is a
    ``peft`` model). ``gradient_checkpointing``: recompute activations in the backward pass
    (``transformers``' ``gradient_checkpointing_enable``, non-reentrant). ``diverged`` is True
    when the loss became non-finite (training stopped there).
    """
    tuned = use_fused_attention(trainable_copy(model, next(model.parameters()).dtype if lora is not None else torch.float32))
    if gradient_checkpointing:
        tuned.config.use_cache = False
        tuned.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora is not None:
        from peft import get_peft_model

        tuned = get_peft_model(tuned, lora)
    device = next(tuned.parameters()).device
    order = torch.Generator().manual_seed(seed)

    def batch(step: int) -> tuple[torch.Tensor, ...]:
        rows = torch.randint(len(train_ids), (batch_size,), generator=order).tolist()
        tokens, mask = pad([train_ids[i] for i in rows], pad_id)
        tokens, mask = tokens.to(device), mask.to(device)
        if first_target is None:
            return tokens, mask
        return tokens, mask, from_position(mask, [first_target[i] for i in rows])

    history = train(tuned, adamw(tuned, learning_rate, weight_decay), batch, steps, autocast=autocast)
    return tuned, bool(history) and not math.isfinite(history[-1])


def parameter_distance(model: Any, tuned: Any, chunk: int = 1 << 24) -> float:
    """``||theta_tuned - theta_model||_2`` over every parameter of ``tuned``, matched to ``model``'s by name
    (TransformerLens's ``._original_component`` wrappers stripped), accumulated in float64 a slice of
    ``chunk`` elements at a time (no float64 copy of a whole large tensor). A ``peft`` model is
    compared through its merged weights (``merge_and_unload``, which consumes its adapters)."""
    if hasattr(tuned, "merge_and_unload"):
        tuned = tuned.merge_and_unload()
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


def memory_estimate(model: Any, config: dict[str, Any], length: int, autocast: torch.dtype | None, new_tokens: int = 0,
                    **overrides: Any) -> MemoryEstimate:
    """:func:`plastiscope.plasticity.memory.finetune_memory` of fine-tuning ``model`` as ``config`` (with ``overrides``)
    says, at batches of documents of ``length`` tokens, ``new_tokens`` generated per evaluation prompt; attention is
    taken to be SDPA's (no stored probabilities), the forward's dtype ``autocast`` (None: float32)."""
    config = {**config, **overrides}
    n_params = sum(p.numel() for p in model.parameters())
    lora = config["method"] == "lora"
    trainable = lora_trainable(model.config, lora_config(config)) if lora else n_params
    base_bytes = next(model.parameters()).element_size()
    compute_bytes = torch.finfo(autocast).bits // 8 if autocast is not None else 4
    return finetune_memory(model.config, n_params, trainable, config["batch_size"], length, lora=lora, base_bytes=base_bytes,
                           compute_bytes=compute_bytes,
                           gradient_checkpointing=config["gradient_checkpointing"], eager_attention=False,
                           eval_batch_size=config["eval_batch_size"], new_tokens=new_tokens)


def lora_trainable(model_config: Any, lora: Any) -> int:
    """Trainable parameters of ``lora`` adapters on a model of ``model_config``, counted on the meta device (no memory)."""
    import copy

    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(copy.deepcopy(model_config), trust_remote_code=False)
    return int(get_peft_model(skeleton, copy.deepcopy(lora)).get_nb_trainable_parameters()[0])


def check_memory(model: Any, config: dict[str, Any], length: int, autocast: torch.dtype | None, new_tokens: int,
                 where: str) -> MemoryEstimate:
    """The estimate of fine-tuning as configured; :class:`MemoryRefusal` naming the settings that would fit when it
    exceeds the memory available (``memory_limit_gb``, else the device's free memory)."""
    need = memory_estimate(model, config, length, autocast, new_tokens)
    limit = config["memory_limit_gb"]
    available = int(limit * GIB) if limit is not None else free_memory(model_device(model))
    if available is None or need.total <= HEADROOM * available:
        return need
    options: dict[str, dict[str, Any]] = {}
    if not config["gradient_checkpointing"]:
        options["-o plasticity.gradient_checkpointing=true"] = {"gradient_checkpointing": True}
    if config["method"] == "full":
        options["-o plasticity.method=lora"] = {"method": "lora"}
        if not config["gradient_checkpointing"]:
            options["-o plasticity.method=lora -o plasticity.gradient_checkpointing=true"] = {"method": "lora",
                                                                                               "gradient_checkpointing": True}
    size = config["batch_size"] // 2
    while size >= 1:
        estimate = memory_estimate(model, config, length, autocast, new_tokens, batch_size=size)
        if estimate.total <= HEADROOM * available:
            options[f"-o plasticity.batch_size={size}"] = {"batch_size": size}
            break
        size //= 2
    if config["eval_batch_size"] > 1 and need.evaluation > HEADROOM * available:
        options[f"-o plasticity.eval_batch_size={max(1, config['eval_batch_size'] // 4)}"] = {
            "eval_batch_size": max(1, config["eval_batch_size"] // 4)}
    alternatives = {k: memory_estimate(model, config, length, autocast, new_tokens, **v)
                    for k, v in options.items()}
    check_fits(need, available, where, alternatives)
    return need


class PlasticityTask:
    """Fine-tune one checkpoint in :meth:`finish` (no shared forward pass)."""

    def __init__(self, checkpoint: Checkpoint, task: DownstreamTask, config: dict[str, Any]):
        self.checkpoint, self.task, self.config = checkpoint, task, config
        self.passes: dict[str, list] = {}

    def _losses(self, model: Any, ids: list[list[int]], pad_id: int, autocast: torch.dtype | None = None,
                first_target: Sequence[int] | None = None) -> np.ndarray:
        with precision(model, autocast), native_attention(model):
            return mean_per_document(*document_losses(model, ids, pad_id, self.config["eval_batch_size"],
                                                      first_target=first_target))

    def _scores(self, model: Any, rows: np.ndarray, ids: list[list[int]], starts: Sequence[int] | None, pad_id: int,
                autocast: torch.dtype | None, new_tokens: int) -> dict[str, np.ndarray]:
        """Every per-document measurement of ``model`` on the evaluation documents: ``{"loss": [doc], ...}``."""
        cfg, ckpt, task = self.config, self.checkpoint, self.task
        out = {"loss": self._losses(model, ids, pad_id, autocast, starts)}
        with precision(model, autocast), native_attention(model):
            if task.labels:
                out["accuracy"] = label_accuracy(model, task, ckpt.tokenizer, ckpt.n_ctx, rows, pad_id, cfg["eval_batch_size"])
            if task.sft is not None:
                scorers = [exact_match] + ([cfg["scorer"]] if cfg["scorer"] is not None else [])
                scores = generative_scores(model, task, ckpt.tokenizer, ckpt.n_ctx, rows, new_tokens, scorers,
                                           cfg["eval_batch_size"])
                out["generative_accuracy"] = scores[:, 0]
                if cfg["scorer"] is not None:
                    out["generative_score"] = scores[:, 1]
        return out

    def finish(self) -> pd.DataFrame:
        """Fine-tune at every learning rate, keep the best by selection loss; the task's rows, outcome first.

        One fine-tuned copy is alive at a time: the evaluation of a learning rate's copy is
        measured as soon as its selection loss is the best so far, then the copy is freed.
        """
        cfg, ckpt, task = self.config, self.checkpoint, self.task
        model, tokenizer, n_ctx = ckpt.hf_model, ckpt.tokenizer, ckpt.n_ctx
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        autocast = ckpt.dtype if ckpt.dtype != torch.float32 else None
        eval_rows, select_rows, train_rows = split_indices(
            len(task.documents), cfg["eval_docs"], cfg["select_docs"], cfg["train_docs"], cfg["seed"])
        if task.sft is not None:
            (eval_ids, eval_starts), (select_ids, select_starts), (train_ids, train_starts) = (
                _unzip(sft_ids(task, tokenizer, n_ctx, r)) for r in (eval_rows, select_rows, train_rows))
            new_tokens = cfg["max_new_tokens"] or max(len(ids) - at for ids, at in zip(eval_ids, eval_starts))
        else:
            eval_ids, select_ids, train_ids = (task_ids(task, tokenizer, n_ctx, r) for r in (eval_rows, select_rows, train_rows))
            eval_starts = select_starts = train_starts = None
            new_tokens = 0
        length = max(len(x) for x in train_ids)
        need = check_memory(model, cfg, length, autocast, new_tokens, f"{ckpt.name} ({cfg['method']}, batch {cfg['batch_size']} "
                            f"x {length} tokens) on {model_device(model)}")
        log.info("%s / %s: fine-tuning needs %s", ckpt.name, task.name, need.describe())
        boot = {"n_resamples": cfg["n_resamples"], "seed": cfg["seed"]}
        lora = lora_config(cfg) if cfg["method"] == "lora" else None
        if task.sft is not None:  # generate() needs a plain model, not the bridge: a frozen copy in the checkpoint's dtype
            plain = trainable_copy(model, next(model.parameters()).dtype).requires_grad_(False)
            before = self._scores(plain, eval_rows, eval_ids, eval_starts, pad_id, None, new_tokens)
            plain = None
            gc.collect()
        else:
            before = self._scores(model, eval_rows, eval_ids, eval_starts, pad_id, None, new_tokens)
        selection_records: list[dict[str, Any]] = []
        after, best_lr, best_loss, displacement = None, math.nan, math.inf, math.nan
        for lr in cfg["learning_rates"]:
            tuned, diverged = finetune(model, train_ids, pad_id, cfg["steps"], cfg["batch_size"], lr, cfg["finetune_weight_decay"],
                                       cfg["seed"], autocast, train_starts, lora, cfg["gradient_checkpointing"])
            selection = math.nan if diverged else float(np.mean(self._losses(tuned, select_ids, pad_id, autocast, select_starts)))
            selection_records.append(
                {"metric": "downstream_selection_loss", "value": selection, "n": len(select_ids), "finetune_lr": lr})
            log.info("%s / %s: lr %g -> selection loss %.4f", ckpt.name, task.name, lr, selection)
            if math.isfinite(selection) and selection < best_loss:
                best_lr, best_loss = lr, selection
                after = self._scores(tuned, eval_rows, eval_ids, eval_starts, pad_id, autocast, new_tokens)
                displacement = parameter_distance(model, tuned)
            tuned = None
            gc.collect()
        if after is None:
            log.warning("%s / %s: fine-tuning diverged at every learning rate", ckpt.name, task.name)
            after = {k: np.full_like(v, np.nan) for k, v in before.items()}
        selected = {"selected_lr": best_lr, "finetune_method": cfg["method"]}
        loss_name = "response_loss" if task.sft is not None else "downstream_loss"
        accuracy_name = "generative_accuracy" if task.sft is not None else "downstream_accuracy"
        names = {"loss": loss_name, "accuracy": accuracy_name, "generative_accuracy": accuracy_name,
                 "generative_score": "generative_score"}
        records = [_mean_record(f"{names[k]}_after", after[k], boot) | selected for k in after]
        records += [_mean_record(f"{names[k]}_before", before[k], boot) for k in before]
        records.append(_mean_record("plasticity_gain", before["loss"] - after["loss"], boot) | selected)
        records.append({"metric": "finetune_displacement", "value": displacement, "n": len(train_ids)} | selected)
        records += [r | {"finetune_method": cfg["method"]} for r in selection_records]
        return make_frame(ckpt, NAME, [r | {"task": task.name} for r in records], VARIANTS)


def _unzip(pairs: list[tuple[list[int], int]]) -> tuple[list[list[int]], list[int]]:
    return [ids for ids, _ in pairs], [at for _, at in pairs]


def _mean_record(metric: str, values: np.ndarray, boot: dict[str, int]) -> dict[str, Any]:
    if np.isnan(values).all():
        return {"metric": metric, "value": math.nan, "n": len(values)}
    value, low, high, n = mean_ci(values, **boot)
    return {"metric": metric, "value": value, "ci_low": low, "ci_high": high, "n": n}


def start(checkpoint: Checkpoint, inputs: Inputs, config: dict[str, Any], memo: Memo) -> PlasticityTask:
    """Start the plasticity analysis of one checkpoint on ``inputs.finetune_data``."""
    task = DownstreamTask.from_documents(inputs.finetune_data, config["label_column"], config["task_name"])
    split_indices(len(task.documents), config["eval_docs"], config["select_docs"], config["train_docs"], config["seed"])
    if task.sft is None and (config["scorer"] is not None or config["max_new_tokens"] is not None):
        raise ValueError(f"plasticity: scorer and max_new_tokens apply to prompt/response tasks; {task.name} has no prompt and "
                         f"response (or messages) fields")
    return PlasticityTask(checkpoint, task, config)


def fingerprint(config: dict[str, Any]) -> dict[str, Any]:
    """What the results depend on beyond the options' text: the scorer's qualified name and a hash of its code."""
    scorer = config.get("scorer")
    if scorer is None:
        return {}
    code = getattr(scorer, "__code__", None)
    digest = hashlib.sha256((code.co_code + repr(code.co_consts).encode()) if code is not None else repr(scorer).encode())
    return {"scorer": f"{getattr(scorer, '__module__', '')}.{getattr(scorer, '__qualname__', type(scorer).__name__)}:"
                      f"{digest.hexdigest()[:12]}"}


_PLASTICITY = "Han, Bordt, Zhang, Kakade 2026 (arXiv 2602.11137)"
_SFT = ("Ouyang et al. 2022 (arXiv 2203.02155: supervised fine-tuning on demonstrations); "
        "Cobbe et al. 2021 (arXiv 2110.14168: exact match of the final answer)")
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
    Metric("plasticity_gain", "Downstream loss (the response loss of a prompt/response task) before minus after fine-tuning; "
           "secondary: a model that starts worse can gain more and "
           "still end worse.", "nats", "higher", _PLASTICITY, role="after_finetuning"),
    Metric("downstream_selection_loss", "Loss on the held-out selection documents after fine-tuning at the learning rate in the "
           "variant (finetune_lr): what the learning rate is chosen by.", "nats", "lower", _PLASTICITY, role="after_finetuning"),
    Metric("finetune_displacement", "Distance ||theta_ft - theta_0|| the weights move in fine-tuning, to compare with the basin radius.",
           "weight units", None, "Chen et al. 2025 (arXiv 2505.17646)", role="after_finetuning"),
    Metric("response_loss_after", "Prompt/response tasks: mean over evaluation documents of each document's mean cross-entropy on "
           "its response tokens (the prompt is context only) after fine-tuning with the same budget for every checkpoint: the "
           "outcome.", "nats", "lower", _SFT, role="outcome"),
    Metric("response_loss_before", "Prompt/response tasks: the response-token loss before fine-tuning.", "nats", "lower", _SFT),
    Metric("generative_accuracy_after", "Prompt/response tasks: share of evaluation prompts whose greedy continuation states the "
           "reference answer (exact match of normalised answers) after fine-tuning: the outcome by generation.", "fraction",
           "higher", _SFT, role="outcome_accuracy"),
    Metric("generative_accuracy_before", "Prompt/response tasks: exact-match accuracy of greedy generation before fine-tuning.",
           "fraction", "higher", _SFT),
    Metric("generative_score_after", "Prompt/response tasks: mean of the user's scorer(prediction, reference) over evaluation "
           "prompts after fine-tuning.", "", "higher", "", role="after_finetuning"),
    Metric("generative_score_before", "Prompt/response tasks: mean of the user's scorer(prediction, reference) before "
           "fine-tuning.", "", "higher", ""),
)

ANALYSIS = Analysis(name=NAME, inputs=("finetune_data",), start=start, options=OPTIONS, variants=VARIANTS, metrics=METRICS,
                    fingerprint=fingerprint)


def plasticity(
    sweep: Sweep | Checkpoint | Sequence[Checkpoint],
    finetune_data: Documents | Sequence[str] | str,
    *,
    store: ResultsStore | str | None = None,
    progress: bool = True,
    executor: Any = None,
    **options: Any,
) -> pd.DataFrame:
    """Fine-tune every checkpoint on ``finetune_data`` and measure it after and before (tidy results frame).

    The outcome to rank checkpoints by is ``downstream_loss_after`` (lower is better) and, for a
    labelled task, ``downstream_accuracy_after`` (higher is better); for a prompt/response task
    (``prompt``/``response`` or ``messages`` fields) ``response_loss_after`` and
    ``generative_accuracy_after``; the module docstring lists every row. ``finetune_data``: the
    downstream task's documents (anything :func:`plastiscope.load_documents` reads);
    ``options``: any of :data:`OPTIONS`, validated by it, e.g. ``label_column`` (a labelled
    task: accuracy is reported), ``method="lora"``, ``gradient_checkpointing=True``,
    ``scorer=lambda prediction, reference: ...``.
    ``executor``: ``"local"`` (default), ``"process"`` or ``"ray"`` (:func:`plastiscope.runner.executor_named`).
    """
    docs = load_documents(finetune_data, label_column=options.get("label_column"))
    return run_one(sweep, ANALYSIS, Inputs(finetune_data=docs), options, store, progress=progress, executor=executor)
