"""The ``overfit`` analysis: how differently a checkpoint treats its training data from unseen data.

Han, Bordt, Zhang, Kakade 2026 (arXiv 2602.11137): weight decay reduces overfitting on
the pretraining data. Per checkpoint, from one shared forward pass over the training
sample (``train_data``, documents the checkpoint was trained on) and one over held-out
documents of the same distribution (``val_data``):

- **Loss gap** [``train_loss``, ``val_loss``, ``loss_gap`` = val - train, ``loss_ratio`` =
  val / train]: means over documents of the per-document mean next-token cross-entropy
  (nats, :mod:`.losses`), on length-matched samples (:mod:`.matching`); bootstrap 95 %
  intervals over documents. By token position: ``train_loss_by_position``,
  ``val_loss_by_position``, ``loss_gap_by_position`` with the extra column
  ``position_bucket`` (``"1-8"``, ``"9-16"``, ``"17-32"``, ...: positions after BOS), each
  document contributing its mean loss over its tokens in the bucket.
- **Membership inference** (:mod:`.membership`) [``mia_auc_loss``, ``mia_auc_zlib``,
  ``mia_auc_reference``, ``mia_tpr_at_1fpr``]: ROC AUC of telling train from validation
  documents by each score, and TPR at 1 % FPR; these rows carry the extra column
  ``score`` (``loss``, ``zlib``, ``reference``): ``mia_tpr_at_1fpr`` has one row per score.
- **Exact memorization** (:mod:`.memorization`) [``exact_match_train``,
  ``exact_match_val``, ``matched_prefix_train``, ``matched_prefix_val``], with the counts
  ``skipped_short_train`` / ``skipped_short_val`` (documents shorter than ``k + m``).
- **Overlap** [``overlap_count``]: validation documents whose whitespace-normalised text
  hash also occurs in the training sample; they are dropped from the validation side
  (with a warning).

``n`` is the number of documents behind a number (train + validation for two-sample
metrics).

Options (:data:`OPTIONS`; JSON values, part of the cache key):

- ``length_matching``: ``"subsample"`` (default; equal length distributions by coarsened
  exact matching, see :mod:`.matching`) or ``"none"``; ``length_bins``: its bin count.
- ``position_bucket_edges``: upper edges of the position buckets (default doubling from 8).
- ``reference``: the reference model of ``mia_auc_reference``: ``"random_init"`` (default:
  the same architecture with seed-0 random weights, :meth:`Checkpoint.random_init`), the
  path of a model folder (e.g. the sweep's smallest model), or ``None`` to skip. It runs in
  :func:`start`, before the checkpoint is loaded, and its losses are cached across a sweep.
- ``prefix_tokens`` (``k``, default 32) and ``continuation_tokens`` (``m``, default 16) of
  the memorization test; BOS is prepended to the prefix and not counted in ``k``. Demo
  models on short documents need smaller values (e.g. 8 and 8), else most documents are
  skipped as short. ``memorization_max_docs`` caps the documents tested per side (seeded
  sample; 0 skips the test).
- ``n_resamples``, ``seed``: the bootstrap; ``batch_size``: of the memorization test and the
  reference pass (the shared pass uses the runner's).
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from plastiscope.activations import run_pass
from plastiscope.checkpoint import Checkpoint, Sweep
from plastiscope.data import Documents, load_documents
from plastiscope.memo import Memo
from plastiscope.options import AnyOf, Integer, ListOf, Nullable, OneOf, Option, OptionTable, Text, validate
from plastiscope.results import ResultsStore, make_frame
from plastiscope.runner import Analysis, Inputs, run_one
from plastiscope.stats import bootstrap_ci, mean_ci

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
    if reference not in (None, "random_init") and not Path(reference).is_dir():
        raise ValueError(f"reference must be null, 'random_init' or a model folder; {reference!r} is not a folder")
    return config


OPTIONS = OptionTable({
    "length_matching": Option("subsample", OneOf("subsample", "none"), "equal length distributions by subsampling, or none"),
    "length_bins": Option(8, Integer(1), "length bins of the matching"),
    "position_bucket_edges": Option(None, Nullable(ListOf(Integer(1), increasing=True)),
                                    "upper edges of the position buckets; null: doubling from 8 to the context"),
    "reference": Option("random_init", Nullable(AnyOf(OneOf("random_init"), Text())),
                        "reference model of mia_auc_reference: null, 'random_init' or a model folder"),
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
    """The reference model the user chose: None, ``"random_init"`` (same architecture, seed 0), or a folder."""
    if reference is None:
        return None
    if reference == "random_init":
        return checkpoint.random_init(seed=0)
    # the weight decay of a reference model plays no part; 0 only satisfies the constructor
    return Checkpoint.from_pretrained(Path(reference), weight_decay=0.0, name=f"reference:{Path(reference).name}")


def fingerprint(config: dict[str, Any]) -> dict[str, Any]:
    """The content hash of a reference model folder (part of the cache key): a replaced reference recomputes."""
    reference = config["reference"]
    if reference in (None, "random_init"):
        return {}
    return {"reference": Checkpoint.from_pretrained(Path(reference), weight_decay=0.0).content_hash()}


def reference_losses(reference: Checkpoint, data: Documents, memo: Memo, batch_size: int = 16) -> np.ndarray:
    """``[doc]`` mean per-token loss of ``data`` under the reference model (its own tokenizer and context).

    Memoised by (reference weights, data, precision), so one reference serves a whole sweep.
    """

    def compute() -> np.ndarray:
        losses = DocumentLosses(len(data), [max(1, reference.n_ctx - 1)])
        run_pass(reference, data, [losses], batch_size=batch_size, progress=False)
        return losses.mean_loss

    key = {"reference": reference.content_hash(), "data": data.sha256(), "dtype": str(reference.dtype)}
    return memo.get("overfit-reference-losses", key, compute)


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
        ``n_targets``, ``loss``, ``zlib_bytes``, ``zlib_score``, ``reference_loss``, ``reference_score``,
        ``overlap`` (validation row dropped as a training duplicate), ``matched`` (in the length-matched sample).
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
                        "loss": loss,
                        "zlib_bytes": zbytes,
                        "zlib_score": loss / zbytes,
                        "reference_loss": ref_loss,
                        "reference_score": loss - ref_loss,
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
        records += loss_gap_records(train["loss"].to_numpy(), val["loss"].to_numpy(), boot)
        records += position_records(
            self.train_losses.bucket_mean[train["doc"].to_numpy()],
            self.val_losses.bucket_mean[val["doc"].to_numpy()],
            bucket_labels(self.bucket_edges),
            boot,
        )
        records += membership_records(train, val, boot)
        if cfg["memorization_max_docs"] > 0:
            records += self._memorization(boot)
        return make_frame(self.checkpoint, NAME, records, VARIANTS)

    def _memorization(self, boot: dict[str, int]) -> list[dict[str, Any]]:
        cfg, checkpoint = self.config, self.checkpoint
        records = []
        for split, data in (("train", self.train), ("val", self.val.subset(np.flatnonzero(~self.val_overlap)))):
            result = exact_memorization(
                checkpoint.hf_model, checkpoint.tokenizer, data.texts, checkpoint.n_ctx,
                prefix_tokens=cfg["prefix_tokens"], continuation_tokens=cfg["continuation_tokens"],
                max_docs=cfg["memorization_max_docs"], batch_size=cfg["batch_size"], seed=cfg["seed"],
            )  # fmt: skip
            records.append({"metric": f"skipped_short_{split}", "value": float(result.skipped_short), "n": len(data)})
            for metric, values in ((f"exact_match_{split}", result.exact), (f"matched_prefix_{split}", result.matched)):
                mean, low, high, n = mean_ci(values.astype(np.float64), **boot)
                records.append({"metric": metric, "value": mean, "ci_low": low, "ci_high": high, "n": n})
        return records


def loss_gap_records(train_loss: np.ndarray, val_loss: np.ndarray, boot: dict[str, int]) -> list[dict[str, Any]]:
    """``train_loss``, ``val_loss`` (means over documents), ``loss_gap`` (val - train), ``loss_ratio`` (val / train).

    ``train_loss`` ``[train doc]``, ``val_loss`` ``[val doc]``: per-document mean losses.
    """
    records = []
    for metric, values in (("train_loss", train_loss), ("val_loss", val_loss)):
        mean, low, high, n = mean_ci(values, **boot)
        records.append({"metric": metric, "value": mean, "ci_low": low, "ci_high": high, "n": n})
    for metric, statistic in (
        ("loss_gap", lambda x, y: y.mean(-1) - x.mean(-1)),
        ("loss_ratio", lambda x, y: y.mean(-1) / x.mean(-1)),
    ):
        value, low, high = bootstrap_ci((train_loss, val_loss), statistic, **boot)
        records.append(
            {"metric": metric, "value": value, "ci_low": low, "ci_high": high, "n": len(train_loss) + len(val_loss)}
        )
    return records


def position_records(
    train_buckets: np.ndarray, val_buckets: np.ndarray, labels: Sequence[str], boot: dict[str, int]
) -> list[dict[str, Any]]:
    """``{train,val}_loss_by_position`` and ``loss_gap_by_position`` per position bucket (extra column ``position_bucket``).

    ``train_buckets`` ``[train doc, bucket]``, ``val_buckets`` ``[val doc, bucket]``: each document's mean
    loss over its tokens in a bucket (NaN: none there). A bucket needs documents on both sides.
    """
    records = []
    for j, label in enumerate(labels):
        x, y = train_buckets[:, j], val_buckets[:, j]
        x, y = x[~np.isnan(x)], y[~np.isnan(y)]
        if len(x) == 0 or len(y) == 0:
            continue
        for metric, values in (("train_loss_by_position", x), ("val_loss_by_position", y)):
            mean, low, high, n = mean_ci(values, **boot)
            records.append({"metric": metric, "value": mean, "ci_low": low, "ci_high": high, "n": n, "position_bucket": label})
        value, low, high = bootstrap_ci((x, y), lambda p, q: q.mean(-1) - p.mean(-1), **boot)
        records.append(
            {"metric": "loss_gap_by_position", "value": value, "ci_low": low, "ci_high": high,
             "n": len(x) + len(y), "position_bucket": label}
        )  # fmt: skip
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


ANALYSIS = Analysis(name=NAME, inputs=("train_data", "val_data"), start=start, options=OPTIONS, variants=VARIANTS,
                    fingerprint=fingerprint)


# ---------------------------------------------------------------------- API
def memorization_gap(
    sweep: Sweep | Checkpoint | Sequence[Checkpoint],
    train_data: Any,
    val_data: Any,
    store: ResultsStore | str | Path | None = None,
    batch_size: int = 16,
    progress: bool = True,
    **options: Any,
) -> pd.DataFrame:
    """The overfit metrics of every checkpoint of ``sweep`` as a tidy results frame.

    ``train_data``: documents the checkpoints were trained on; ``val_data``: held-out
    documents of the same distribution (anything :func:`plastiscope.load_documents` reads).
    ``options``: see :data:`OPTIONS` (e.g. ``reference=None``, ``prefix_tokens=8``). Checkpoints
    that fail are reported by a warning; if all fail, the first error is raised.
    """
    inputs = Inputs(train_data=load_documents(train_data), val_data=load_documents(val_data))
    return run_one(sweep, ANALYSIS, inputs, options, store, batch_size, progress)


def document_scores(
    checkpoint: Checkpoint, train_data: Any, val_data: Any, batch_size: int = 16, progress: bool = False, **options: Any
) -> pd.DataFrame:
    """Per-document losses and membership scores of one checkpoint (see :meth:`OverfitTask.documents`)."""
    inputs = Inputs(train_data=load_documents(train_data), val_data=load_documents(val_data))
    task = start(checkpoint, inputs, validate(NAME, OPTIONS, options), Memo())
    for name, consumers in task.passes.items():
        run_pass(checkpoint, getattr(inputs, name), consumers, batch_size=batch_size, progress=progress)
    return task.documents()
