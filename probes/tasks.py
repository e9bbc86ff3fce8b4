"""Probing tasks: which (document, token) examples carry which label, and the streamed features.

Two levels:

- **sequence**: one label per document (a column of the data, e.g. ``pos`` or ``lexname`` of
  the embedded WordNet glosses); the feature is the residual stream ``blocks.{l}.hook_resid_post``
  pooled over the document -- ``mean`` over its real tokens after BOS, or the ``last`` real token.
- **token**: one label per token, either word-level labels aligned to tokens (a column holding a
  list of labels, or a whitespace-separated string, one per whitespace-separated word of the
  text; each word's label goes to its *last* token, the first position where a causal model
  has read the whole word) or a function of the token ids (``token_labels(ids) -> labels``,
  ``None`` to skip a position).

Examples are chosen before the forward pass (labels are known from the data and the tokenizer):
at most ``max_examples`` of them, a seeded sample stratified by class, so the class proportions
of the data are kept (accuracy stays the accuracy on the user's distribution) and the features
kept in memory are bounded by ``max_examples x layers x d_model`` float32 whatever the dataset
size (10,000 examples of a 16-layer, ``d_model`` 2048 model: 1.3 GB). Classes with fewer than
``min_per_class`` examples left cannot be spread over the cross-validation folds; they are
dropped with a warning that counts them.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from plastiscope.activations import Batch
from plastiscope.data import DataError, Documents, encode

# Built-in tasks on the embedded corpus (plastiscope.demo.corpus.load_corpus("probe")).
BUILTIN_TASKS = {
    "pos": "part of speech of the WordNet synset whose gloss is the document (noun, verb, adj, adv)",
    "lexname": "lexicographer file of the synset (45 classes such as noun.animal)",
}
POOLINGS = ("mean", "last")
_WORD = re.compile(r"\S+")


@dataclass
class Examples:
    """The probed examples of one task, ``[example]`` arrays.

    ``doc``: document index; ``position``: token position (-1 for a pooled document);
    ``y``: class index into ``classes``; ``types``: word type for the control task;
    ``dropped``: classes left out for having too few examples.
    """

    task: str
    level: str
    doc: np.ndarray
    position: np.ndarray
    y: np.ndarray
    classes: list[Any]
    types: list[Hashable]
    dropped: list[Any]

    def __len__(self) -> int:
        return len(self.y)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip())


def sequence_examples(data: Documents, column: str) -> tuple[list[int], list[int], list[Any], list[Hashable]]:
    """Documents with a label in ``column``: ``(doc, position=-1, label, type)`` lists.

    The control task's word type is the document's ``lemma`` column if present, else its first word.
    """
    labels = data.column(column)
    lemmas = data.columns.get("lemma")
    docs, types, ys = [], [], []
    for i, label in enumerate(labels):
        if _missing(label):
            continue
        if isinstance(label, (list, tuple, dict)):
            raise DataError(f"{data.source}: document {i}, column {column!r} holds a {type(label).__name__}; a sequence-level label is "
                            "one value per document (a list of labels per word is a token-level task: level='token')")
        docs.append(i)
        ys.append(label)
        if lemmas is not None and not _missing(lemmas[i]):
            types.append(str(lemmas[i]).lower())
        else:
            words = data.texts[i].split()
            types.append(words[0].lower() if words else "")
    return docs, [-1] * len(docs), ys, types


def _word_labels(value: Any, n_words: int, where: str) -> list[Any]:
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{where}: a token-level label column holds a list of labels (or a whitespace-separated string) per document")
    if len(value) != n_words:
        raise DataError(
            f"{where}: {len(value)} labels for {n_words} whitespace-separated words; give one label per word"
        )
    return list(value)


def token_examples(
    data: Documents,
    tokenizer: Any,
    max_length: int,
    column: str | None = None,
    token_labels: Callable[[list[int]], Sequence[Any]] | None = None,
) -> tuple[list[int], list[int], list[Any], list[Hashable]]:
    """Token-level examples ``(doc, position, label, type)`` under the tokenization convention.

    With ``column``: word-level labels aligned to tokens through the tokenizer's character offsets
    (:func:`plastiscope.data.encode` with ``return_offsets=True``); a word's label goes to its
    last token; words cut off by truncation are skipped; the type is the lower-cased word.
    With ``token_labels``: ``token_labels(ids)`` gives a label (or None) per position of the
    encoded document (BOS included); the type is the token id.
    """
    if (column is None) == (token_labels is None):
        raise ValueError("token-level task: give exactly one of a label column or token_labels=")
    rows: list[tuple[int, int, Any, Hashable]] = []  # (doc, position, label, type)
    for i, text in enumerate(data.texts):
        if token_labels is not None:
            ids = encode(tokenizer, text, max_length)
            labels = list(token_labels(list(ids)))
            if len(labels) != len(ids):
                raise ValueError(f"token_labels returned {len(labels)} labels for {len(ids)} tokens (document {i})")
            rows += [(i, p, label, int(token)) for p, (token, label) in enumerate(zip(ids, labels)) if not _missing(label)]
            continue
        value = data.column(column)[i]
        if not isinstance(value, (list, tuple)) and _missing(value):
            continue
        words = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(text)]
        labels = _word_labels(value, len(words), f"{data.source}: document {i}, column {column!r}")
        ids, offsets = encode(tokenizer, text, max_length, return_offsets=True)
        last_token: dict[int, int] = {}
        w = 0
        for p, (start, end) in enumerate(offsets):
            if end <= start:  # BOS and other zero-width tokens
                continue
            while w < len(words) and words[w][1] <= start:
                w += 1
            for v in range(w, len(words)):  # every word this token overlaps
                if words[v][0] >= end:
                    break
                last_token[v] = p
        for v, p in sorted(last_token.items()):
            # a word is complete only if its last character lies in the (untruncated) tokens
            if offsets[p][1] >= words[v][1] and not _missing(labels[v]):
                rows.append((i, p, labels[v], words[v][2].lower()))
    docs, positions, ys, types = (list(column) for column in zip(*rows)) if rows else ([], [], [], [])
    return docs, positions, ys, types


def _refuse_one_number_written_twice(task: str, labels: list[Any], keys: np.ndarray) -> None:
    """Refuse labels that compare as different texts but are one number (``1``, ``1.0``, ``"1.0"``, ``True``): they would
    split one class in two."""
    seen: dict[float, str] = {}
    for value, key in zip(labels, keys):
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if seen.setdefault(number, key) != key:
            raise DataError(f"task {task!r}: labels {seen[number]!r} and {key!r} are one number written two ways (mixed types in the "
                            "label column, e.g. JSON 1 and 1.0 or true); write each label one way")


def select_examples(
    task: str,
    level: str,
    docs: list[int],
    positions: list[int],
    labels: list[Any],
    types: list[Hashable],
    max_examples: int | None = None,
    min_per_class: int = 10,
    seed: int = 0,
) -> Examples:
    """At most ``max_examples`` examples, a seeded sample stratified by class; then classes with
    fewer than ``min_per_class`` examples are dropped (with a warning that counts them).

    The stratified sample (scikit-learn's ``train_test_split(stratify=...)``) keeps every class's
    share of the examples up to rounding, so metrics describe the data's own class distribution.
    Classes too small to be stratified (a single example) are dropped before sampling.
    """
    if min_per_class < 2:
        raise ValueError(f"min_per_class must be >= 2 (a class needs an example in training and in testing), got {min_per_class}")
    keys = np.array([str(v) for v in labels], dtype=object)  # labels from CSV, JSON and Python compare as text
    _refuse_one_number_written_twice(task, labels, keys)
    total = dict(zip(*np.unique(keys, return_counts=True))) if len(keys) else {}
    chosen = np.flatnonzero([total[k] >= min_per_class for k in keys]) if len(keys) else np.zeros(0, dtype=np.int64)
    if max_examples is not None and len(chosen) > max_examples and len(set(keys[chosen])) > 1:
        chosen, _ = train_test_split(chosen, train_size=max_examples, stratify=keys[chosen], random_state=seed)
    chosen = np.sort(chosen)
    count = dict(zip(*np.unique(keys[chosen], return_counts=True))) if len(chosen) else {}
    kept_classes = sorted(str(c) for c in count if count[c] >= min_per_class)
    dropped = sorted(set(total) - set(kept_classes))
    if len(kept_classes) < 2:
        raise DataError(
            f"task {task!r}: fewer than 2 classes with >= {min_per_class} examples "
            f"(class counts {dict(sorted((str(k), int(v)) for k, v in total.items()))}); add data or lower min_per_class"
        )
    if dropped:
        n_dropped = int(sum(total[c] for c in dropped))
        capped = f" in the stratified sample of {max_examples}" if max_examples is not None and len(keys) > max_examples else ""
        names = ", ".join(dropped[:10]) + (", ..." if len(dropped) > 10 else "")
        warnings.warn(
            f"probes: task {task!r} leaves out {len(dropped)} of {len(total)} classes ({n_dropped} of {len(keys)} examples): "
            f"fewer than {min_per_class} examples{capped}, too few for stratified cross-validation ({names})",
            stacklevel=2,
        )
    index = {c: i for i, c in enumerate(kept_classes)}
    chosen = chosen[np.isin(keys[chosen], kept_classes)]
    return Examples(
        task=task,
        level=level,
        doc=np.asarray([docs[j] for j in chosen], dtype=np.int64),
        position=np.asarray([positions[j] for j in chosen], dtype=np.int64),
        y=np.asarray([index[keys[j]] for j in chosen], dtype=np.int64),
        classes=kept_classes,
        types=[types[j] for j in chosen],
        dropped=dropped,
    )


class FeatureCollector:
    """A :class:`~plastiscope.activations.Consumer` keeping the residual-stream features of chosen examples.

    ``requests``: ``(doc, where)`` keys, ``where`` a token position (int >= 0) or a pooling
    (``"mean"``: mean over real tokens after BOS; ``"last"``: last real token). It reads
    ``blocks.{l}.hook_resid_post`` ``[batch, pos, d_model]`` of each layer as the forward makes
    it, selects and pools the requested rows on the model's device in float32, and stores them
    on the CPU: after the pass, ``features`` is ``[layer, request, d_model]`` (float32) in the
    order of ``requests``, the input of the probe fits.
    """

    def __init__(self, layers: Sequence[int], requests: Sequence[tuple[int, int | str]], has_bos: bool = True):
        self.layers = list(layers)
        self.names = [f"blocks.{l}.hook_resid_post" for l in self.layers]
        self.layer_of = {name: i for i, name in enumerate(self.names)}
        self.row = {key: r for r, key in enumerate(dict.fromkeys(requests))}
        self.by_doc: dict[int, list[tuple[int | str, int]]] = {}
        for (doc, where), r in self.row.items():
            self.by_doc.setdefault(int(doc), []).append((where, r))
        self.has_bos = has_bos
        self.features: torch.Tensor | None = None
        self.filled = torch.zeros(len(self.layers), len(self.row), dtype=torch.bool)
        self._selected: tuple[Batch, Any] | None = None

    def _select(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """``(request rows, batch rows, positions, mean-pooling weights [mean request, pos])`` of one batch
        (position -1 marks a mean), computed once per batch; None if no request is in it."""
        if self._selected is not None and self._selected[0] is batch:
            return self._selected[1]
        lengths = batch.mask.sum(1).tolist()  # [batch]
        rows, batch_rows, positions = [], [], []
        for b, doc in enumerate(batch.doc_index.tolist()):
            for where, r in self.by_doc.get(doc, ()):
                if where == "mean":
                    position = -1
                elif where == "last":
                    position = lengths[b] - 1
                else:
                    if where >= lengths[b]:
                        raise ValueError(f"document {doc}: token position {where} beyond its {lengths[b]} tokens")
                    position = int(where)
                rows.append(r), batch_rows.append(b), positions.append(position)
        selection = None
        if rows:
            device = batch.mask.device
            b_index, p_index = torch.tensor(batch_rows, device=device), torch.tensor(positions, device=device)
            body = batch.mask[b_index[p_index < 0]].float()  # [mean request, pos]
            if self.has_bos:
                body[:, 0] = (body.sum(1) == 1).float()  # the tokens after BOS (BOS alone if nothing else)
            selection = (torch.tensor(rows), b_index, p_index, body / body.sum(1, keepdim=True).clamp_min(1))
        self._selected = (batch, selection)
        return selection

    def read(self, batch: Batch, name: str, acts: torch.Tensor) -> None:
        """Store the features of the requests whose documents are in the batch, for the layer of ``acts [batch, pos, d]``."""
        selection = self._select(batch)
        if selection is None:
            return
        rows, b_index, p_index, weights = selection
        if self.features is None:
            self.features = torch.zeros(len(self.layers), len(self.row), acts.shape[-1])
        features = acts[b_index, p_index.clamp_min(0)].float()  # [request, d]
        is_mean = p_index < 0
        if bool(is_mean.any()):
            pooled = acts[b_index[is_mean]].float()  # [mean request, pos, d]: the pooled documents only
            features[is_mean] = torch.einsum("rpd,rp->rd", pooled, weights)
        layer = self.layer_of[name]
        self.features[layer, rows] = features.cpu()
        self.filled[layer, rows] = True

    def take(self, requests: Sequence[tuple[int, int | str]]) -> torch.Tensor:
        """Features ``[layer, example, d_model]`` of ``requests`` (each must have been seen in the pass)."""
        if self.features is None:
            raise RuntimeError("no batches were seen: the forward pass did not run over the data")
        index = torch.as_tensor([self.row[key] for key in requests])
        if not bool(self.filled[:, index].all()):
            raise RuntimeError("some probed documents never appeared in the forward pass")
        if len(index) and bool((index == torch.arange(int(index[0]), int(index[0]) + len(index))).all()):
            return self.features[:, int(index[0]) : int(index[0]) + len(index)]  # a view: no copy
        return self.features[:, index]
