"""The ``probes`` analysis: linear separability of every layer's representations, per checkpoint.

Han et al. (2026, arXiv 2602.11137) find that larger weight decay gives more linearly
separable representations. For each checkpoint, layer, task and pooling this analysis
reports the cross-validated metrics of :func:`plastiscope.probes.evaluate.evaluate_layers`
for the trained weights (``init="trained"``) and for a random-init model of the same
architecture (``init="random"``, :meth:`~plastiscope.Checkpoint.random_init`), so a report
can show what training added.

Metrics (per layer; variant columns ``task`` and ``pooling``; ``n``: examples probed; 95 %
intervals: percentile bootstrap over the outer cross-validation folds, for MDL over the
transmitted examples):

- ``accuracy`` (higher = more separable): held-out accuracy of an L2 logistic-regression probe
  (Alain & Bengio 2016) whose ``C`` is chosen by inner cross-validation, on the data's own class
  distribution (the example cap ``max_examples`` samples stratified by class).
- ``macro_f1`` (higher): held-out unweighted mean of the per-class F1 scores.
- ``cross_entropy`` (lower): held-out negative log-likelihood of the true class, nats per example.
- ``selectivity_control_task`` (higher; token-level tasks only): accuracy minus the accuracy on
  Hewitt & Liang's (2019) control task, a fixed random label per word type; not reported where
  word types do not repeat (sequence-level tasks: one lemma per document).
- ``selectivity_shuffled`` (higher): accuracy minus the accuracy of the same protocol on
  permuted labels (Ojala & Garriga 2010), the part of the accuracy above what label frequencies
  alone give.
- ``mdl_codelength`` (bits; lower) and ``mdl_compression`` (uniform codelength / online
  codelength; higher): the online code of Voita & Titov (2020).
- ``fisher_criterion`` (higher): Fisher's ``tr(S_W^-1 S_B)`` on the standardised features with a
  Ledoit-Wolf-shrunk ``S_W`` (detail column ``shrinkage``: its intensity), per test fold.

Features come from the shared forward pass (a :class:`~plastiscope.probes.tasks.FeatureCollector`);
the random-init baseline needs its own pass over the data (a different model), run in
``finish()`` and memoised (:class:`~plastiscope.memo.Memo`): all checkpoints of a sweep share
one architecture, so the baseline is computed once per (architecture, tokenizer, data,
options, precision).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from plastiscope.activations import run_pass
from plastiscope.checkpoint import Checkpoint
from plastiscope.data import DataError, Documents, load_documents
from plastiscope.memo import Memo
from plastiscope.metrics import Baseline, Headline, Metric
from plastiscope.options import (
    Boolean,
    Function,
    Integer,
    ListOf,
    Nullable,
    OneOf,
    Option,
    OptionTable,
    Real,
    Text,
    validate,
)
from plastiscope.probes.evaluate import DEFAULT_CS, evaluate_layers
from plastiscope.probes.tasks import POOLINGS, Examples, FeatureCollector, select_examples, sequence_examples, token_examples
from plastiscope.results import make_frame
from plastiscope.runner import Analysis, Inputs, run_one
from plastiscope.sweep import Sweep

log = logging.getLogger("plastiscope")

NAME = "probes"
VARIANTS = ("task", "pooling")


def _check(o: dict[str, Any]) -> dict[str, Any]:
    if o["max_examples"] is not None and o["max_examples"] < 2 * o["min_per_class"]:
        raise ValueError(f"max_examples ({o['max_examples']}) must be >= 2 x min_per_class ({o['min_per_class']}): two classes")
    if o["min_per_class"] < o["folds"]:
        raise ValueError(f"min_per_class ({o['min_per_class']}) must be >= folds ({o['folds']}): every class in every fold")
    if o["token_labels"] is not None and o["level"] != "token":
        raise ValueError("token_labels= needs level='token'")
    return o


OPTIONS = OptionTable({
    "label_column": Option(None, Nullable(ListOf(Text(), scalar=True)),
                           "label column(s); null: 'pos' if the data has it, else 'label'"),
    "level": Option("sequence", OneOf("sequence", "token"), "a label per document (sequence) or per token"),
    "pooling": Option(["mean"], ListOf(OneOf(*POOLINGS), scalar=True), "pooling of sequence-level features"),
    "layers": Option(None, Nullable(ListOf(Integer())), "layer indices (negative counts from the end); null: all"),
    "max_examples": Option(10000, Nullable(Integer(1)),
                           "cap on examples per task, a sample stratified by class (class proportions kept); null: no cap"),
    "min_per_class": Option(10, Integer(2), "classes with fewer examples are dropped (with a warning that counts them)"),
    "folds": Option(5, Integer(2), "outer cross-validation folds (intervals are over these)"),
    "inner_folds": Option(3, Integer(2), "inner folds choosing C"),
    "Cs": Option(list(DEFAULT_CS), ListOf(Real(0, None, closed="neither")), "grid of inverse L2 strengths"),
    "class_weight": Option(None, Nullable(OneOf("balanced")), "null or 'balanced'"),
    "max_iter": Option(100, Integer(1), "L-BFGS iterations"),
    "tol": Option(1e-4, Real(0, None, closed="neither"), "L-BFGS tolerance on max |gradient|"),
    "control_task": Option(True, Boolean(), "report selectivity_control_task (token-level tasks: word types must repeat)"),
    "shuffled": Option(True, Boolean(), "report selectivity_shuffled (label-permutation baseline)"),
    "mdl": Option(True, Boolean(), "report mdl_codelength and mdl_compression"),
    "fisher": Option(True, Boolean(), "report fisher_criterion"),
    "random_baseline": Option(True, Boolean(), "the same metrics for a random-init model (init='random')"),
    "seed": Option(0, Integer(0), "seed of subsampling, folds and controls"),
    "token_labels": Option(None, Nullable(Function()), "Python API only: callable(token ids) -> label per position"),
}, check=_check)


def _label_columns(data: Documents, o: dict[str, Any]) -> list[str | None]:
    if o["token_labels"] is not None:
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

    def __init__(self, checkpoint: Checkpoint, data: Documents, options: dict[str, Any], memo: Memo):
        self.checkpoint = checkpoint
        self.memo = memo
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
                name, options["level"], *raw, max_examples=options["max_examples"],
                min_per_class=int(options["min_per_class"]), seed=int(options["seed"]),
            )
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
                tol=float(o["tol"]), control_task=bool(o["control_task"]) and examples.level == "token",
                shuffled=bool(o["shuffled"]),
                mdl=bool(o["mdl"]), fisher=bool(o["fisher"]), seed=int(o["seed"]),
            )
            for row in rows:
                row["layer"] = self.layers[row["layer"]]
                row.update(task=examples.task, pooling=pooling, init=init)
            records += rows
            del X
        return records

    def _random_key(self) -> dict[str, Any]:
        """What the random-init baseline depends on: architecture, tokenizer, data, options, precision."""
        config = self.checkpoint.hf_model.config.to_dict()
        config = {k: v for k, v in config.items() if not k.startswith("_") and k not in ("transformers_version", "dtype", "torch_dtype")}
        vocab = sorted(self.checkpoint.tokenizer.get_vocab().items())
        options = {k: (v if not callable(v) else getattr(v, "__qualname__", repr(v))) for k, v in self.o.items()}
        return {"architecture": config, "vocab": vocab, "data": self.data.sha256(), "options": options,
                "layers": self.layers, "dtype": str(self.checkpoint.dtype), "device": self.checkpoint.device_type}

    def _random_baseline(self) -> pd.DataFrame:
        baseline = self.checkpoint.random_init(seed=int(self.o["seed"]))
        try:
            collector = FeatureCollector(self.layers, list(self.collector.row), self.has_bos)
            run_pass(baseline, self.data, [collector], progress=False)
            return pd.DataFrame(self._records(collector, "random"))
        finally:
            baseline.unload()

    def finish(self) -> pd.DataFrame:
        """Probe rows of every task, pooling and layer, with the random-init baseline's when asked for."""
        records = self._records(self.collector, "trained")
        self.collector.features = None  # free before the baseline's pass
        if self.o["random_baseline"]:
            # every checkpoint of a sweep shares the architecture: the baseline is computed once
            records += self.memo.get("probes-random-init", self._random_key(), self._random_baseline).to_dict("records")
        return make_frame(self.checkpoint, NAME, records, VARIANTS)


def start(checkpoint: Checkpoint, inputs: Inputs, options: dict[str, Any], memo: Memo) -> ProbesTask:
    """Start the probes of one checkpoint on ``inputs.data`` (see :data:`OPTIONS`)."""
    return ProbesTask(checkpoint, inputs.data, options, memo)


_PROBE = "Alain & Bengio 2016 (linear probes)"
_CONTROL = "Hewitt & Liang 2019 (control tasks)"
_MDL = "Voita & Titov 2020 (online codelength)"
_ABOVE_BASELINES = (Baseline(init="random", label="random-init model"), Baseline(init="majority", label="majority class"))
METRICS = (
    Metric("accuracy", "Held-out accuracy of a linear probe (logistic regression) on the pooled residual stream of a layer, on the "
           "data's own class distribution.", "fraction", "higher", _PROBE, _ABOVE_BASELINES,
           Headline("separability", "Separability: probe accuracy", "rise", "Han et al. 2026",
                    "run the probes analysis (--data with --label-column)", order=20)),
    Metric("macro_f1", "Held-out macro-averaged F1 of the linear probe (each class weighted equally).", "fraction", "higher", _PROBE,
           (Baseline(init="random", label="random-init model"),)),
    Metric("cross_entropy", "Held-out cross-entropy (nats) of the linear probe's predicted class distribution.", "nats", "lower", _PROBE,
           (Baseline(init="random", label="random-init model"),)),
    Metric("selectivity_control_task", "Probe accuracy on the real task minus accuracy on a control task that gives each word type a "
           "random label (token-level tasks only, where word types repeat); high selectivity means the representation, not the probe, "
           "carries the labels.", "fraction", "higher", _CONTROL, (Baseline(value=0.0, label="no selectivity"),)),
    Metric("selectivity_shuffled", "Probe accuracy on the real labels minus accuracy on shuffled labels.", "fraction", "higher", _CONTROL,
           (Baseline(value=0.0, label="no selectivity"),)),
    Metric("mdl_codelength", "Online (prequential) codelength in bits of transmitting the labels with probes trained on growing "
           "prefixes of the data; shorter = more easily extractable.", "bits", "lower", _MDL),
    Metric("mdl_compression", "Uniform codelength divided by online codelength; higher = labels more compressible from the "
           "representation.", "ratio", "higher", _MDL, (Baseline(value=1.0, label="uniform code"),)),
    Metric("fisher_criterion", "Fisher's criterion tr(S_W^-1 S_B) of the pooled representation (within-class scatter S_W shrunk "
           "towards a scaled identity); higher = classes more linearly separable.", "", "higher",
           "Fisher 1936; Ledoit & Wolf 2004 (shrinkage)", (Baseline(init="random", label="random-init model"),)),
)

ANALYSIS = Analysis(name=NAME, inputs=("data",), start=start, options=OPTIONS, variants=VARIANTS, metrics=METRICS)


def probe_sweep(
    sweep: Sweep | Checkpoint | Sequence[Checkpoint],
    data: Documents | Sequence[str] | str,
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

    - ``data``: documents (anything :func:`plastiscope.load_documents` reads) with label columns.
    - ``task`` / ``label_column``: the label column(s), e.g. the built-in ``"pos"`` or
      ``"lexname"``, or any column of ``data`` (``label_column`` wins; default ``pos`` if
      present, else ``label``).
    - ``pooling``: ``"mean"`` or ``"last"`` (or both) for sequence-level tasks.
    - ``level="token"`` with a column of word-level labels, or with ``token_labels(ids)``.
    - other ``options``: see :data:`OPTIONS` (``folds``, ``Cs``, ``max_examples``, ...).

    Rows: ``metric`` in ``accuracy, macro_f1, cross_entropy, selectivity_shuffled,
    mdl_codelength, mdl_compression, fisher_criterion`` per ``layer`` (and
    ``selectivity_control_task`` for token-level tasks), with columns ``task``, ``pooling`` and
    ``init`` (``trained`` / ``random``); the module docstring says what each means. Failed
    checkpoints are warned about and listed in ``frame.attrs["failures"]``.
    """
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
    _label_columns(docs, validate(NAME, OPTIONS, opts))  # fail early, before any model is loaded
    return run_one(sweep, ANALYSIS, Inputs(data=docs), opts, store, batch_size, progress)
