"""The ``probes`` analysis: linear separability of every layer's representations, per checkpoint.

Han et al. (2026, arXiv 2602.11137) find that larger weight decay gives more linearly
separable representations. For each checkpoint, layer, task and pooling this analysis
reports the cross-validated metrics of :func:`plastiscope.probes.evaluate.evaluate_layers`
for the trained weights (``init="trained"``) and for a random-init model of the same
architecture (``init="random"``, :meth:`~plastiscope.Checkpoint.random_init`), so a report
can show what training added.

Features come from the shared forward pass (a :class:`~plastiscope.probes.tasks.FeatureCollector`);
the random-init baseline needs its own pass over the data (a different model), run in
``finish()`` and memoised in-process: all checkpoints of a sweep share one architecture,
so the baseline is computed once per (architecture, tokenizer, data, options).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from plastiscope.activations import run_pass
from plastiscope.analysis import Analysis, Inputs, merge_options, run_one
from plastiscope.checkpoint import Checkpoint, Sweep
from plastiscope.data import DataError, Documents, load_documents
from plastiscope.probes.evaluate import DEFAULT_CS, evaluate_layers
from plastiscope.probes.tasks import POOLINGS, Examples, FeatureCollector, select_examples, sequence_examples, token_examples
from plastiscope.results import make_frame

log = logging.getLogger("plastiscope")

DEFAULT_OPTIONS: dict[str, Any] = {
    "label_column": None,  # str or list of str; None: "pos" if the data has it, else "label"
    "level": "sequence",  # "sequence" (a label per document) or "token" (a label per token)
    "pooling": "mean",  # sequence level: "mean", "last", or a list of both
    "layers": None,  # list of layer indices (negative counts from the end); None: all
    "max_per_class": 1000,  # cap on examples per class (memory and time bound); None: no cap
    "min_per_class": 10,  # classes with fewer examples are dropped
    "folds": 5,  # outer cross-validation folds (intervals are over these)
    "inner_folds": 3,  # inner folds choosing C
    "Cs": list(DEFAULT_CS),  # grid of inverse L2 strengths (scikit-learn's C, standardised features)
    "class_weight": None,  # None or "balanced"
    "max_iter": 100,
    "tol": 1e-4,
    "control_task": True,  # selectivity_control_task
    "shuffled": True,  # selectivity_shuffled
    "mdl": True,  # mdl_codelength, mdl_compression
    "fisher": True,  # fisher_ratio
    "random_baseline": True,  # the same metrics for a random-init model (init="random")
    "seed": 0,
    "token_labels": None,  # Python API only: callable(token ids) -> label per position (level="token")
}

_RANDOM_MEMO: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
_MEMO_SIZE = 8


def _check_options(options: dict[str, Any]) -> dict[str, Any]:
    o = merge_options("probes", DEFAULT_OPTIONS, options)
    if o["level"] not in ("sequence", "token"):
        raise ValueError(f"probes: level must be 'sequence' or 'token', got {o['level']!r}")
    pooling = [o["pooling"]] if isinstance(o["pooling"], str) else list(o["pooling"])
    bad = [p for p in pooling if p not in POOLINGS]
    if bad or not pooling:
        raise ValueError(f"probes: pooling must be one of {POOLINGS} (or a list of them), got {o['pooling']!r}")
    o["pooling"] = pooling
    if o["class_weight"] not in (None, "balanced"):
        raise ValueError(f"probes: class_weight must be None or 'balanced', got {o['class_weight']!r}")
    if not o["Cs"] or any(not isinstance(c, (int, float)) or c <= 0 for c in o["Cs"]):
        raise ValueError(f"probes: Cs must be a non-empty list of positive numbers, got {o['Cs']!r}")
    if int(o["folds"]) < 2 or int(o["inner_folds"]) < 2:
        raise ValueError("probes: folds and inner_folds must be >= 2")
    if o["max_per_class"] is not None and int(o["max_per_class"]) < int(o["min_per_class"]):
        raise ValueError(f"probes: max_per_class ({o['max_per_class']}) must be >= min_per_class ({o['min_per_class']})")
    if int(o["min_per_class"]) < int(o["folds"]):
        raise ValueError(f"probes: min_per_class ({o['min_per_class']}) must be >= folds ({o['folds']}): every class in every fold")
    if o["token_labels"] is not None and not callable(o["token_labels"]):
        raise ValueError("probes: token_labels must be a function of a document's token ids")
    return o


def _label_columns(data: Documents, o: dict[str, Any]) -> list[str | None]:
    if o["token_labels"] is not None:
        if o["level"] != "token":
            raise ValueError("probes: token_labels= needs level='token'")
        return [None]
    column = o["label_column"]
    if column is None:
        column = "pos" if "pos" in data.columns else "label"
        if column not in data.columns:
            raise DataError(
                f"{data.source}: no label column given and no 'pos' or 'label' column; columns are "
                f"{sorted(data.columns) or 'none'} (choose one with --label-column / label_column=)"
            )
    columns = [column] if isinstance(column, str) else list(column)
    for c in columns:
        data.column(c)  # precise error when missing
    return columns


def _layers(checkpoint: Checkpoint, layers: Sequence[int] | None) -> list[int]:
    n = checkpoint.n_layers
    if layers is None:
        return list(range(n))
    out = []
    for l in layers:
        if not isinstance(l, int) or not -n <= l < n:
            raise ValueError(f"probes: layer {l!r} out of range for {checkpoint.name} ({n} layers: 0..{n - 1})")
        out.append(l % n)
    return sorted(set(out))


class ProbesTask:
    """One checkpoint's probes: collects features in the shared pass, fits in ``finish()``."""

    def __init__(self, checkpoint: Checkpoint, data: Documents, options: dict[str, Any]):
        self.checkpoint = checkpoint
        self.data = data
        self.o = options
        self.layers = _layers(checkpoint, options["layers"])
        tokenizer = checkpoint.tokenizer
        self.tasks: list[tuple[Examples, str]] = []  # (examples, pooling)
        for column in _label_columns(data, options):
            if options["level"] == "sequence":
                raw = sequence_examples(data, column)
            else:
                raw = token_examples(data, tokenizer, checkpoint.n_ctx, column, options["token_labels"])
            name = column if column is not None else getattr(options["token_labels"], "__name__", "token_labels")
            examples = select_examples(
                name, options["level"], *raw, max_per_class=options["max_per_class"],
                min_per_class=int(options["min_per_class"]), seed=int(options["seed"]),
            )
            if examples.dropped:
                log.warning("probes: task %r drops classes with < %s examples: %s", name, options["min_per_class"], examples.dropped)
            poolings = options["pooling"] if options["level"] == "sequence" else ["token"]
            for pooling in poolings:
                self.tasks.append((examples, pooling))
        self.has_bos = tokenizer.bos_token_id is not None
        self.collector = FeatureCollector(self.layers, [r for e, p in self.tasks for r in self._requests(e, p)], self.has_bos)
        self.passes = {"data": [self.collector]}

    @staticmethod
    def _requests(examples: Examples, pooling: str) -> list[tuple[int, int | str]]:
        if pooling == "token":
            return list(zip(examples.doc.tolist(), examples.position.tolist()))
        return [(d, pooling) for d in examples.doc.tolist()]

    def _records(self, collector: FeatureCollector, init: str) -> list[dict[str, Any]]:
        o = self.o
        records = []
        for examples, pooling in self.tasks:
            X = collector.take(self._requests(examples, pooling))
            rows = evaluate_layers(
                X, examples.y, types=examples.types,
                groups=examples.doc if examples.level == "token" else None,
                n_classes=len(examples.classes), folds=int(o["folds"]), inner_folds=int(o["inner_folds"]),
                Cs=[float(c) for c in o["Cs"]], class_weight=o["class_weight"], max_iter=int(o["max_iter"]),
                tol=float(o["tol"]), control_task=bool(o["control_task"]), shuffled=bool(o["shuffled"]),
                mdl=bool(o["mdl"]), fisher=bool(o["fisher"]), seed=int(o["seed"]),
            )
            for row in rows:
                row["layer"] = self.layers[row["layer"]]
                row.update(task=examples.task, pooling=pooling, init=init)
            records += rows
            del X
        return records

    def _random_key(self) -> str:
        config = self.checkpoint.hf_model.config.to_dict()
        config = {k: v for k, v in config.items() if not k.startswith("_") and k not in ("transformers_version", "dtype", "torch_dtype")}
        vocab = sorted(self.checkpoint.tokenizer.get_vocab().items())
        options = {k: (v if not callable(v) else getattr(v, "__qualname__", repr(v))) for k, v in self.o.items()}
        blob = json.dumps([config, vocab, self.data.sha256(), options, self.layers], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _random_records(self) -> list[dict[str, Any]]:
        key = self._random_key()
        if key in _RANDOM_MEMO:
            _RANDOM_MEMO.move_to_end(key)
            return [dict(r) for r in _RANDOM_MEMO[key]]
        baseline = self.checkpoint.random_init(seed=int(self.o["seed"]))
        try:
            collector = FeatureCollector(self.layers, list(self.collector.row), self.has_bos)
            run_pass(baseline, self.data, [collector], progress=False)
            records = self._records(collector, "random")
        finally:
            baseline.unload()
            del baseline
        _RANDOM_MEMO[key] = [dict(r) for r in records]
        while len(_RANDOM_MEMO) > _MEMO_SIZE:
            _RANDOM_MEMO.popitem(last=False)
        return records

    def finish(self) -> pd.DataFrame:
        records = self._records(self.collector, "trained")
        self.collector.features = None  # free before the baseline's pass
        if self.o["random_baseline"]:
            records += self._random_records()
        return make_frame(self.checkpoint, "probes", records)


def start(checkpoint: Checkpoint, inputs: Inputs, **options: Any) -> ProbesTask:
    """Start the probes of one checkpoint on ``inputs.data`` (see :data:`DEFAULT_OPTIONS`)."""
    if inputs.data is None:
        raise ValueError("probes needs --data (documents with a label column)")
    return ProbesTask(checkpoint, inputs.data, _check_options(options))


ANALYSIS = Analysis(name="probes", inputs=("data",), start=start, options=DEFAULT_OPTIONS)


def probe_sweep(
    sweep: Sweep | Checkpoint | Sequence[Checkpoint],
    data: Documents | Sequence[str] | str | None = None,
    task: str | Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    pooling: str | Sequence[str] = "mean",
    label_column: str | Sequence[str] | None = None,
    level: str = "sequence",
    token_labels: Callable[[list[int]], Sequence[Any]] | None = None,
    random_baseline: bool = True,
    store: Any = None,
    batch_size: int = 16,
    progress: bool = True,
    **options: Any,
) -> pd.DataFrame:
    """Probe every layer of every checkpoint; return the tidy results frame.

    - ``data``: documents (anything :func:`plastiscope.load_documents` reads); default the
      embedded corpus's ``probe`` split (columns ``pos``, ``lexname``, ``lemma``).
    - ``task`` / ``label_column``: the label column(s), e.g. the built-in ``"pos"`` or
      ``"lexname"``, or any column of ``data`` (``label_column`` wins; default ``pos`` if
      present, else ``label``).
    - ``pooling``: ``"mean"`` or ``"last"`` (or both) for sequence-level tasks.
    - ``level="token"`` with a column of word-level labels, or with ``token_labels(ids)``.
    - other ``options``: see :data:`DEFAULT_OPTIONS` (``folds``, ``Cs``, ``max_per_class``, ...).

    Rows: ``metric`` in ``accuracy, macro_f1, cross_entropy, selectivity_control_task,
    selectivity_shuffled, mdl_codelength, mdl_compression, fisher_ratio`` per ``layer``,
    with columns ``task``, ``pooling`` and ``init`` (``trained`` / ``random``). Failed
    checkpoints are warned about and listed in ``frame.attrs["failures"]``.
    """
    if data is None:
        from plastiscope.corpus import load_corpus

        docs = load_corpus("probe")
    else:
        docs = load_documents(data)
    opts = {
        **options,
        "label_column": label_column if label_column is not None else task,
        "layers": None if layers is None else list(layers),
        "pooling": pooling if isinstance(pooling, str) else list(pooling),
        "level": level,
        "token_labels": token_labels,
        "random_baseline": random_baseline,
    }
    _label_columns(docs, _check_options(opts))  # fail early, before any model is loaded
    return run_one(sweep, ANALYSIS, Inputs(data=docs), opts, store, batch_size, progress)
