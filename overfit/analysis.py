"""The ``overfit`` analysis: how differently a checkpoint treats its training data from unseen data.

Han, Bordt, Zhang, Kakade 2026 (arXiv 2602.11137): weight decay reduces overfitting on
the pretraining data. Per checkpoint, from one shared forward pass over the training
sample (``train_data``, documents the checkpoint was trained on) and one over held-out
documents of the same distribution (``val_data``), on length-matched samples (:mod:`.matching`).
``n`` is the number of documents behind a number (train + validation for two-sample metrics);
intervals are 95 % percentile bootstraps over documents (train and validation resampled each
on its own).

- **Loss gap** (nats per token; :mod:`.losses` for the convention):

  - ``train_loss`` / ``val_loss`` (lower = better fit): the **token-weighted** mean next-token
    cross-entropy, ``sum of every target token's loss / number of target tokens`` over the
    documents: the number a trainer logs, equal to ``transformers``' ``labels=`` loss over the
    corpus. Interval: the ratio estimator ``sum / sum`` recomputed on documents resampled with
    their token counts (Efron & Tibshirani 1993, ch. 10).
  - ``loss_gap`` = ``val_loss - train_loss`` (lower = less overfitting; 0: none) and
    ``loss_ratio`` = ``val_loss / train_loss`` (lower; 1: none), the generalisation gap.
  - ``train_loss_per_document`` / ``val_loss_per_document`` (lower): the mean over documents of
    each document's mean token loss (every document weighs the same, whatever its length).
  - By token position: ``train_loss_by_position``, ``val_loss_by_position``,
    ``loss_gap_by_position`` (lower), token-weighted within each bucket, with the variant column
    ``position_bucket`` (``"1-8"``, ``"9-16"``, ``"17-32"``, ...: positions after BOS).

- **Membership inference** (:mod:`.membership`) [``mia_auc_loss``, ``mia_auc_zlib``,
  ``mia_auc_reference``, ``mia_tpr_at_1fpr``] (lower = less memorised; AUC 0.5: members look
  like non-members): ROC AUC of telling train from validation documents by each score, and the
  TPR at 1 % FPR; these rows carry the variant column ``score`` (``loss``, ``zlib``,
  ``reference``).
- **Exact memorization** (:mod:`.memorization`) [``exact_match_train``,
  ``exact_match_val``, ``matched_prefix_train``, ``matched_prefix_val``] (lower on the training
  side = less memorised), with the counts ``skipped_short_train`` / ``skipped_short_val``
  (documents shorter than ``k + m``); the ``k`` and ``m`` used are the detail columns
  ``prefix_tokens`` and ``continuation_tokens``.
- **Overlap** [``overlap_count``]: validation documents whose whitespace-normalised text
  hash also occurs in the training sample; they are dropped from the validation side
  (with a warning).

Options (:data:`OPTIONS`; JSON values, part of the cache key):

- ``length_matching``: ``"subsample"`` (default; equal length distributions by coarsened
  exact matching, see :mod:`.matching`) or ``"none"``; ``length_bins``: its bin count.
- ``position_bucket_edges``: upper edges of the position buckets (default doubling from 8).
- ``reference``: the folder of a reference model for ``mia_auc_reference`` (Carlini et al. 2021:
  a model trained on similar data but not on these documents, e.g. a smaller model of the same
  family), or ``None`` (default: no reference score). A random-init model is refused: its loss
  is about ``ln(vocabulary)`` on every document, so its score would be the plain loss in
  disguise. The reference runs in :func:`start`, before the checkpoint is loaded, on the
  checkpoint's device and in its dtype, and its losses are cached across a sweep.
- ``prefix_tokens`` (``k``, default 32) and ``continuation_tokens`` (``m``, default 16) of
  the memorization test; BOS is prepended to the prefix and not counted in ``k``. When
  ``BOS + k + m`` exceeds the model's context, both are scaled down to fit (with a warning);
  a context too short for ``k = m = 1`` skips only the memorization rows. Demo models on short
  documents need smaller values (e.g. 8 and 8), else most documents are skipped as short.
  ``memorization_max_docs`` caps the documents tested per side (seeded sample; 0 skips the test).
- ``n_resamples``, ``seed``: the bootstrap; ``batch_size``: of the memorization test and the
  reference pass (the shared pass uses the runner's).
"""

from __future__ import annotations

import hashlib
import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from plastiscope.activations import run_pass
from plastiscope.checkpoint import Checkpoint
from plastiscope.data import Documents, load_documents
from plastiscope.memo import Memo
from plastiscope.metrics import Baseline, Headline, Metric
from plastiscope.options import Integer, ListOf, Nullable, OneOf, Option, OptionTable, Text
from plastiscope.results import ResultsStore, make_frame
from plastiscope.runner import Analysis, Inputs, plan, run_one, run_passes
from plastiscope.stats import bootstrap_ci, mean_ci
from plastiscope.sweep import Sweep

from .losses import DocumentLosses, bucket_labels, default_bucket_edges
from .matching import match_lengths
from .membership import auc, auc_batched, tpr_at_fpr, tpr_at_fpr_batched, zlib_entropy
from .memorization import exact_memorization

log = logging.getLogger("plastiscope")

NAME = "overfit"
FPR = 0.01
VARIANTS = ("score", "position_bucket")


def _check(config: dict[str, Any]) -> dict[str, Any]:
    reference = config["reference"]
    if reference == "random_init":
        raise ValueError(
            "reference='random_init' is refused: a random-init model's loss is about ln(vocabulary) on every document, "
            "so its reference score would be the plain loss in disguise; give the folder of a model trained on similar "
            "data (e.g. a smaller model of the same family), or null for no reference score"
        )
    if reference is not None and not Path(reference).is_dir():
        raise ValueError(f"reference must be null or a model folder; {reference!r} is not a folder")
    return config


OPTIONS = OptionTable({
    "length_matching": Option("subsample", OneOf("subsample", "none"), "equal length distributions by subsampling, or none"),
    "length_bins": Option(8, Integer(1), "length bins of the matching"),
    "position_bucket_edges": Option(None, Nullable(ListOf(Integer(1), increasing=True)),
                                    "upper edges of the position buckets; null: doubling from 8 to the context"),
    "reference": Option(None, Nullable(Text()),
                        "folder of a reference model trained on similar data (mia_auc_reference); null: no reference score"),
    "prefix_tokens": Option(32, Integer(1), "k of the exact-memorization test (BOS not counted)"),
    "continuation_tokens": Option(16, Integer(1), "m of the exact-memorization test"),
    "memorization_max_docs": Option(256, Integer(0), "documents tested per side; 0 skips the test"),
    "n_resamples": Option(1000, Integer(1), "bootstrap resamples"),
    "seed": Option(0, Integer(0), "seed of the matching, the memorization sample and the bootstrap"),
    "batch_size": Option(16, Integer(1), "batch of the memorization test and the reference pass"),
}, check=_check)


def text_hash(text: str) -> str:
    """SHA-256 of a text with whitespace runs collapsed: how overlapping documents are detected."""
    return hashlib.sha256(" ".join(text.split()).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------- reference model
def reference_checkpoint(checkpoint: Checkpoint, reference: str | None) -> Checkpoint | None:
    """The reference model in folder ``reference`` (None: no reference), set to run where ``checkpoint`` runs,
    in its dtype."""
    if reference is None:
        return None
    # the weight decay of a reference model plays no part; 0 only satisfies the constructor
    model = Checkpoint.from_pretrained(Path(reference), weight_decay=0.0, name=f"reference:{Path(reference).name}")
    return model.to(device=checkpoint.device, dtype=checkpoint.dtype, device_map=checkpoint.device_map)


def fingerprint(config: dict[str, Any]) -> dict[str, Any]:
    """The content hash of a reference model folder (part of the cache key): a replaced reference recomputes."""
    reference = config["reference"]
    if reference in (None, "random_init"):
        return {}
    return {"reference": Checkpoint.from_pretrained(Path(reference), weight_decay=0.0).content_hash()}


def reference_losses(reference: Checkpoint, data: Documents, memo: Memo, batch_size: int = 16) -> np.ndarray:
    """``[doc]`` mean per-token loss of ``data`` under the reference model (its own tokenizer and context).

    Memoised by (reference weights, data, precision, device), so one reference serves a whole sweep.
    """

    def compute() -> np.ndarray:
        losses = DocumentLosses(len(data), [max(1, reference.n_ctx - 1)])
        run_pass(reference, data, [losses], batch_size=batch_size, progress=False)
        return losses.mean_loss

    key = {"reference": reference.content_hash(), "data": data.sha256(), "dtype": str(reference.dtype),
           "device": reference.device_type}
    return memo.get("overfit-reference-losses", key, compute)


def memorization_lengths(prefix_tokens: int, continuation_tokens: int, n_ctx: int, n_bos: int) -> tuple[int, int] | None:
    """``(k, m)`` of the memorization test that fit the context: as asked when ``n_bos + k + m <= n_ctx``,
    else both scaled down in proportion (``k`` rounded down, at least 1 each); None when not even
    ``k = m = 1`` fits."""
    k, m = int(prefix_tokens), int(continuation_tokens)
    room = n_ctx - n_bos
    if k + m <= room:
        return k, m
    if room < 2:
        return None
    k = max(1, k * room // (k + m))
    return k, room - k


# ---------------------------------------------------------------------- the task
class OverfitTask:
    """The overfit analysis of one checkpoint: feed :attr:`passes`, then :meth:`finish`."""

    def __init__(self, checkpoint: Checkpoint, train: Documents, val: Documents, config: dict[str, Any], memo: Memo):
        self.checkpoint, self.train, self.val, self.config = checkpoint, train, val, config
        train_hashes = {text_hash(t) for t in train.texts}
        self.val_overlap = np.array([text_hash(t) in train_hashes for t in val.texts], dtype=bool)
        n_overlap = int(self.val_overlap.sum())
        if n_overlap:
            message = (
                f"{checkpoint.name}: {n_overlap} of {len(val)} validation documents also occur in the training sample "
                f"(same text up to whitespace); they are dropped from the validation side"
            )
            warnings.warn(message, stacklevel=2)
            log.warning(message)
        if n_overlap == len(val):
            raise ValueError(
                f"{checkpoint.name}: every validation document also occurs in the training sample; "
                f"pass held-out documents as --val-data"
            )
        # the reference runs first, before the checkpoint itself is loaded, so that a reference
        # folder is freed before the checkpoint's passes (one model in memory at a time)
        self.reference_train = self.reference_val = None
        reference = reference_checkpoint(checkpoint, config["reference"])
        if reference is not None and checkpoint.path is not None and reference.path.resolve() == Path(checkpoint.path).resolve():
            message = (f"{checkpoint.name}: the reference model is this checkpoint itself (every reference score would be 1); "
                       f"no mia_auc_reference for it")
            warnings.warn(message, stacklevel=2)
            log.warning(message)
            reference = None
        if reference is not None:
            if reference.tokenizer.get_vocab() != checkpoint.tokenizer.get_vocab():
                warnings.warn(
                    f"{checkpoint.name}: the reference model's tokenizer differs; its per-token losses are in other "
                    f"units, so mia_auc_reference compares per-document means of different tokenizations",
                    stacklevel=2,
                )
            try:
                self.reference_train = reference_losses(reference, train, memo, config["batch_size"])
                self.reference_val = reference_losses(reference, val, memo, config["batch_size"])
            finally:
                reference.unload()
            uniform = math.log(len(reference.tokenizer))
            mean = float(np.nanmean(np.r_[self.reference_train, self.reference_val]))
            if mean > 0.95 * uniform:
                message = (
                    f"{checkpoint.name}: the reference model {config['reference']} has a mean loss of {mean:.2f} nats, "
                    f"close to ln(vocabulary) = {uniform:.2f}, the loss of a model that has learnt nothing: its reference "
                    f"score is then about the plain loss; give a reference trained on similar data"
                )
                warnings.warn(message, stacklevel=2)
                log.warning(message)
        edges = config["position_bucket_edges"]
        self.bucket_edges = list(edges) if edges is not None else default_bucket_edges(checkpoint.n_ctx)
        self.train_losses = DocumentLosses(len(train), self.bucket_edges)
        self.val_losses = DocumentLosses(len(val), self.bucket_edges)
        self.passes = {"train_data": [self.train_losses], "val_data": [self.val_losses]}

    # ------------------------------------------------------------------ per document
    def _scored_texts(self, data: Documents, n_targets: np.ndarray) -> list[str]:
        """The text each loss covers: the document, or the decoded kept tokens when it was truncated.

        Only documents that fill the context can have been truncated; only those are re-tokenized.
        """
        tokenizer, n_ctx = self.checkpoint.tokenizer, self.checkpoint.n_ctx
        n_bos = 1 if tokenizer.bos_token_id is not None else 0
        texts = list(data.texts)
        for i in np.flatnonzero(n_targets + 1 >= n_ctx):
            ids = tokenizer(texts[i], add_special_tokens=False)["input_ids"]
            if len(ids) + n_bos > n_ctx:
                texts[i] = tokenizer.decode(ids[: n_ctx - n_bos])
        return texts

    def documents(self) -> pd.DataFrame:
        """One row per document (after the passes): ``split`` (train/val), ``doc`` (row in its Documents),
        ``n_targets``, ``loss_sum`` (summed token losses), ``loss`` (``loss_sum / n_targets``), ``zlib_bytes``,
        ``zlib_score``, ``reference_loss``, ``reference_score`` (``loss / reference_loss``), ``overlap``
        (validation row dropped as a training duplicate), ``matched`` (in the length-matched sample).
        """
        frames = []
        for split, data, losses, ref in (
            ("train", self.train, self.train_losses, self.reference_train),
            ("val", self.val, self.val_losses, self.reference_val),
        ):
            if not losses.seen.all():
                raise RuntimeError(f"{self.checkpoint.name}: the {split} pass did not cover every document; run the passes first")
            texts = self._scored_texts(data, losses.n_targets)
            loss = losses.mean_loss
            zbytes = np.array([zlib_entropy(t) for t in texts], dtype=np.int64)
            ref_loss = ref if ref is not None else np.full(len(data), np.nan)
            frames.append(
                pd.DataFrame(
                    {
                        "split": split,
                        "doc": np.arange(len(data)),
                        "n_targets": losses.n_targets,
                        "loss_sum": losses.loss_sum,
                        "loss": loss,
                        "zlib_bytes": zbytes,
                        "zlib_score": loss / zbytes,
                        "reference_loss": ref_loss,
                        "reference_score": loss / ref_loss,
                        "overlap": self.val_overlap if split == "val" else False,
                    }
                )
            )
        train, val = frames
        usable_train = np.flatnonzero(train["n_targets"].to_numpy() > 0)
        usable_val = np.flatnonzero((val["n_targets"].to_numpy() > 0) & ~val["overlap"].to_numpy())
        if self.config["length_matching"] == "subsample":
            t, v = match_lengths(
                train["n_targets"].to_numpy()[usable_train],
                val["n_targets"].to_numpy()[usable_val],
                self.config["length_bins"],
                self.config["seed"],
            )
            usable_train, usable_val = usable_train[t], usable_val[v]
        train["matched"] = np.isin(np.arange(len(train)), usable_train)
        val["matched"] = np.isin(np.arange(len(val)), usable_val)
        return pd.concat([train, val], ignore_index=True)

    # ------------------------------------------------------------------ metrics
    def finish(self) -> pd.DataFrame:
        """The task's rows: overlap count, loss gap (overall and by position), membership inference, memorization."""
        docs = self.documents()
        cfg = self.config
        boot = {"n_resamples": cfg["n_resamples"], "seed": cfg["seed"]}
        records: list[dict[str, Any]] = [
            {"metric": "overlap_count", "value": float(docs["overlap"].sum()), "n": int((docs["split"] == "val").sum())}
        ]
        used = docs[docs["matched"]]
        train, val = used[used["split"] == "train"], used[used["split"] == "val"]
        if len(train) == 0 or len(val) == 0:
            raise ValueError(
                f"{self.checkpoint.name}: no {'training' if len(train) == 0 else 'validation'} document left to compare "
                f"after length matching ({(docs['split'] == 'train').sum()} train, {(docs['split'] == 'val').sum()} val "
                f"documents given); pass more documents or set length_matching='none'"
            )
        records += loss_gap_records(
            train["loss_sum"].to_numpy(), train["n_targets"].to_numpy(), val["loss_sum"].to_numpy(), val["n_targets"].to_numpy(), boot
        )
        t_docs, v_docs = train["doc"].to_numpy(), val["doc"].to_numpy()
        records += position_records(
            self.train_losses.bucket_sum[t_docs], self.train_losses.bucket_count[t_docs],
            self.val_losses.bucket_sum[v_docs], self.val_losses.bucket_count[v_docs],
            bucket_labels(self.bucket_edges), boot,
        )  # fmt: skip
        records += membership_records(train, val, boot)
        if cfg["memorization_max_docs"] > 0:
            records += self._memorization(boot)
        return make_frame(self.checkpoint, NAME, records, VARIANTS)

    def _memorization(self, boot: dict[str, int]) -> list[dict[str, Any]]:
        cfg, checkpoint = self.config, self.checkpoint
        n_bos = 1 if checkpoint.tokenizer.bos_token_id is not None else 0
        asked = (cfg["prefix_tokens"], cfg["continuation_tokens"])
        lengths = memorization_lengths(*asked, checkpoint.n_ctx, n_bos)
        if lengths != asked:
            message = (
                f"{checkpoint.name}: prefix_tokens + continuation_tokens = {sum(asked)} (+ BOS) exceed the context of "
                f"{checkpoint.n_ctx} tokens; "
                + (f"the memorization test uses k={lengths[0]}, m={lengths[1]} instead (set -o overfit.prefix_tokens=... "
                   f"-o overfit.continuation_tokens=... to choose)" if lengths else "no memorization rows for this checkpoint")
            )
            warnings.warn(message, stacklevel=2)
            log.warning(message)
        if lengths is None:
            return []
        k, m = lengths
        records = []
        for split, data in (("train", self.train), ("val", self.val.subset(np.flatnonzero(~self.val_overlap)))):
            result = exact_memorization(
                checkpoint.hf_model, checkpoint.tokenizer, data.texts, checkpoint.n_ctx, prefix_tokens=k, continuation_tokens=m,
                max_docs=cfg["memorization_max_docs"], batch_size=cfg["batch_size"], seed=cfg["seed"],
            )  # fmt: skip
            records.append({"metric": f"skipped_short_{split}", "value": float(result.skipped_short), "n": len(data)})
            for metric, values in ((f"exact_match_{split}", result.exact), (f"matched_prefix_{split}", result.matched)):
                mean, low, high, n = mean_ci(values.astype(np.float64), **boot)
                records.append({"metric": metric, "value": mean, "ci_low": low, "ci_high": high, "n": n})
        return [r | {"prefix_tokens": k, "continuation_tokens": m} for r in records]


def _token_mean(pairs: np.ndarray) -> np.ndarray:
    """Token-weighted mean loss of ``pairs [..., doc, 2]`` (summed loss, target count per document) -> ``[...]``."""
    return pairs[..., 0].sum(-1) / pairs[..., 1].sum(-1)


def _pairs(loss_sum: np.ndarray, n_targets: np.ndarray) -> np.ndarray:
    return np.stack([np.asarray(loss_sum, dtype=np.float64), np.asarray(n_targets, dtype=np.float64)], axis=1)


def _two_sample_records(
    train: np.ndarray, val: np.ndarray, boot: dict[str, int], names: tuple[str, str, str], extra: dict[str, Any]
) -> list[dict[str, Any]]:
    """Token-weighted train and validation loss and their difference from ``[doc, 2]`` pairs (ratio bootstrap)."""
    records = []
    for metric, pairs in ((names[0], train), (names[1], val)):
        value, low, high = bootstrap_ci(pairs, _token_mean, **boot)
        records.append({"metric": metric, "value": float(value), "ci_low": float(low), "ci_high": float(high), "n": len(pairs)} | extra)
    value, low, high = bootstrap_ci((train, val), lambda t, v: _token_mean(v) - _token_mean(t), **boot)
    records.append(
        {"metric": names[2], "value": float(value), "ci_low": float(low), "ci_high": float(high), "n": len(train) + len(val)} | extra
    )
    return records


def loss_gap_records(
    train_sum: np.ndarray, train_targets: np.ndarray, val_sum: np.ndarray, val_targets: np.ndarray, boot: dict[str, int]
) -> list[dict[str, Any]]:
    """``train_loss``, ``val_loss``, ``loss_gap``, ``loss_ratio`` (token-weighted) and the per-document means.

    ``train_sum`` / ``train_targets`` ``[train doc]``: each document's summed token loss and its number
    of target tokens (:class:`~plastiscope.overfit.losses.DocumentLosses`), likewise ``val_*``; documents
    without a target token are left out. Token-weighted means are ratio estimators ``sum / sum``
    whose intervals resample documents (with their token counts).
    """
    train, val = _pairs(train_sum, train_targets), _pairs(val_sum, val_targets)
    train, val = train[train[:, 1] > 0], val[val[:, 1] > 0]
    records = _two_sample_records(train, val, boot, ("train_loss", "val_loss", "loss_gap"), {})
    value, low, high = bootstrap_ci((train, val), lambda t, v: _token_mean(v) / _token_mean(t), **boot)
    records.append({"metric": "loss_ratio", "value": float(value), "ci_low": float(low), "ci_high": float(high),
                    "n": len(train) + len(val)})  # fmt: skip
    for metric, pairs in (("train_loss_per_document", train), ("val_loss_per_document", val)):
        mean, low, high, n = mean_ci(pairs[:, 0] / pairs[:, 1], **boot)
        records.append({"metric": metric, "value": mean, "ci_low": low, "ci_high": high, "n": n})
    return records


def position_records(
    train_sum: np.ndarray, train_count: np.ndarray, val_sum: np.ndarray, val_count: np.ndarray,
    labels: Sequence[str], boot: dict[str, int],
) -> list[dict[str, Any]]:
    """``{train,val}_loss_by_position`` and ``loss_gap_by_position`` per position bucket (variant column ``position_bucket``).

    ``train_sum`` / ``train_count`` ``[train doc, bucket]``: each document's summed token loss and token
    count in each bucket, likewise ``val_*``. Token-weighted within a bucket, over the documents with a
    token there; a bucket needs documents on both sides.
    """  # fmt: skip
    records = []
    for j, label in enumerate(labels):
        train, val = _pairs(train_sum[:, j], train_count[:, j]), _pairs(val_sum[:, j], val_count[:, j])
        train, val = train[train[:, 1] > 0], val[val[:, 1] > 0]
        if len(train) == 0 or len(val) == 0:
            continue
        names = ("train_loss_by_position", "val_loss_by_position", "loss_gap_by_position")
        records += _two_sample_records(train, val, boot, names, {"position_bucket": label})
    return records


def membership_records(train: pd.DataFrame, val: pd.DataFrame, boot: dict[str, int]) -> list[dict[str, Any]]:
    """``mia_auc_{loss,zlib,reference}`` and ``mia_tpr_at_1fpr`` (one row per score, extra column ``score``).

    ``train`` / ``val``: rows of :meth:`OverfitTask.documents` (members / non-members); a score
    that is NaN everywhere (no reference chosen) is skipped.
    """
    records = []
    for score, column in (("loss", "loss"), ("zlib", "zlib_score"), ("reference", "reference_score")):
        x, y = train[column].to_numpy(), val[column].to_numpy()
        x, y = x[~np.isnan(x)], y[~np.isnan(y)]
        if len(x) == 0 or len(y) == 0:
            continue
        _, low, high = bootstrap_ci((x, y), auc_batched, **boot)
        records.append(
            {"metric": f"mia_auc_{score}", "value": auc(x, y), "ci_low": low, "ci_high": high,
             "n": len(x) + len(y), "score": score}
        )  # fmt: skip
        _, low, high = bootstrap_ci((x, y), lambda p, q: tpr_at_fpr_batched(p, q, FPR), **boot)
        records.append(
            {"metric": "mia_tpr_at_1fpr", "value": tpr_at_fpr(x, y, FPR), "ci_low": low, "ci_high": high,
             "n": len(x) + len(y), "score": score}
        )  # fmt: skip
    return records


def start(checkpoint: Checkpoint, inputs: Inputs, config: dict[str, Any], memo: Memo) -> OverfitTask:
    """Start the overfit analysis of ``checkpoint`` on ``inputs.train_data`` and ``inputs.val_data``."""
    return OverfitTask(checkpoint, inputs.train_data, inputs.val_data, config, memo)


_LIRA = "Carlini et al. 2022 (Membership Inference Attacks From First Principles)"
_MEMO = "Carlini et al. 2022 (Quantifying Memorization)"
_BY_POSITION = " By token position (variant position_bucket: positions after BOS)."
METRICS = (
    Metric("train_loss", "Next-token cross-entropy (nats/token) on training documents, token-weighted (every token counts once).",
           "nats", "lower"),
    Metric("val_loss", "Next-token cross-entropy (nats/token) on held-out validation documents, token-weighted.", "nats", "lower",
           role="validation_loss"),
    Metric("train_loss_per_document", "Mean over training documents of each document's mean next-token cross-entropy (nats).",
           "nats", "lower"),
    Metric("val_loss_per_document", "Mean over validation documents of each document's mean next-token cross-entropy (nats).",
           "nats", "lower"),
    Metric("loss_gap", "Validation loss minus training loss (token-weighted): the generalization gap.", "nats", "lower",
           "Han, Bordt, Zhang, Kakade 2026 (arXiv 2602.11137)",
           headline=Headline("overfitting", "Overfitting: loss gap (validation − training)", "fall", "Han et al. 2026",
                             "run the overfit analysis (--train-data and --val-data)", order=40)),
    Metric("loss_ratio", "Validation loss divided by training loss.", "ratio", "lower"),
    Metric("train_loss_by_position", "Next-token cross-entropy (nats/token) on training documents, token-weighted." + _BY_POSITION,
           "nats", "lower"),
    Metric("val_loss_by_position", "Next-token cross-entropy (nats/token) on held-out validation documents, token-weighted."
           + _BY_POSITION, "nats", "lower"),
    Metric("loss_gap_by_position", "Validation loss minus training loss (token-weighted): the generalization gap." + _BY_POSITION,
           "nats", "lower"),
    Metric("mia_auc_{score}", "Membership-inference ROC AUC separating training from validation documents by the {score} score; "
           "0.5 = no leakage, higher = more memorization.", "", "lower",
           "Carlini et al. 2021 (Extracting Training Data from Large Language Models)",
           (Baseline(value=0.5, label="chance level", side="above"),)),
    Metric("mia_tpr_at_1fpr", "Membership inference: true-positive rate at 1 % false-positive rate of telling training from "
           "validation documents by the score named in the variant; higher = more memorization.", "fraction", "lower", _LIRA,
           (Baseline(value=0.01, label="chance level (TPR = FPR)", side="above"),)),
    Metric("exact_match_{split}", "Exact memorization ({split} documents): share of continuations reproduced token for token by "
           "greedy decoding.", "fraction", "lower", _MEMO),
    Metric("matched_prefix_{split}", "Memorization ({split} documents): mean number of continuation tokens greedy decoding "
           "reproduces before the first mismatch.", "tokens", "lower", _MEMO),
    Metric("overlap_count", "Validation documents whose normalised text also occurs in the training sample (dropped).", "documents"),
    Metric("skipped_short_train", "Training documents too short for the exact-memorization test.", "documents"),
    Metric("skipped_short_val", "Validation documents too short for the exact-memorization test.", "documents"),
)

ANALYSIS = Analysis(name=NAME, inputs=("train_data", "val_data"), start=start, options=OPTIONS, variants=VARIANTS,
                    fingerprint=fingerprint, metrics=METRICS)


# ---------------------------------------------------------------------- API
def overfit(
    sweep: Sweep | Checkpoint | Sequence[Checkpoint],
    train_data: Any,
    val_data: Any,
    *,
    store: ResultsStore | str | Path | None = None,
    batch_size: int = 16,
    progress: bool = True,
    executor: Any = None,
    **options: Any,
) -> pd.DataFrame:
    """The overfit metrics of every checkpoint of ``sweep`` as a tidy results frame.

    ``train_data``: documents the checkpoints were trained on; ``val_data``: held-out
    documents of the same distribution (anything :func:`plastiscope.load_documents` reads).
    ``options``: any of :data:`OPTIONS`, validated by it (e.g. ``reference=None``,
    ``prefix_tokens=8``). Checkpoints that fail are reported by a warning; if all fail, the first
    error is raised. ``executor``: ``"local"`` (default), ``"process"`` or ``"ray"`` (:func:`plastiscope.runner.executor_named`).
    """
    inputs = Inputs(train_data=load_documents(train_data), val_data=load_documents(val_data))
    return run_one(sweep, ANALYSIS, inputs, options, store, batch_size, progress, executor)


def document_scores(
    checkpoint: Checkpoint, train_data: Any, val_data: Any, batch_size: int = 16, progress: bool = False, **options: Any
) -> pd.DataFrame:
    """Per-document losses and membership scores of one checkpoint (see :meth:`OverfitTask.documents`):
    the driver's passes (:func:`plastiscope.runner.run_passes`), without the metrics of :meth:`OverfitTask.finish`."""
    inputs = Inputs(train_data=load_documents(train_data), val_data=load_documents(val_data))
    tasks, failures = run_passes(checkpoint, plan([ANALYSIS], inputs, {NAME: options}, batch_size, progress), Memo())
    if failures:
        raise RuntimeError(f"{checkpoint.name}: {failures[0]['error']}")
    return tasks[NAME][1].documents()
