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

Baselines (option ``majority_baseline``): rows ``init="majority"`` of ``accuracy`` and ``macro_f1``
for always predicting the training part's majority class, under the same outer folds and example
cap as the probe, intervals over folds as the probe's; one row per layer with the same value (the
predictor reads no features), so every layer's probe has its baseline beside it. And, on the
checkpoint's rows, whether its probe clears each baseline on the very same held-out examples
(:mod:`~plastiscope.probes.baselines`):

- ``accuracy_above_majority`` (higher): accuracy minus the majority baseline's, on every layer
  (also for ``init="random"``);
- ``accuracy_above_random_init`` (higher; needs ``random_baseline``): the trained probe's accuracy
  minus the random-init model's probe's, same examples and folds.

Both are the difference of the two reported fold-mean accuracies; their interval is a paired
bootstrap that resamples documents within each fold (``n``: documents), so it counts the
sampling of the held-out examples given the fitted probes. A lower end above 0 is the flag:
the checkpoint's accuracy is distinguishable from that baseline. Documents with identical
text are one document throughout: they share a fold (a copy in the training part would give
its twin's held-out answer away) and count once in ``n``.

Transferability estimators (option ``transfer``; on all examples, no probe trained, no interval
(NaN): a bootstrap that duplicates examples changes the spectrum they measure; ``n``: examples;
definitions in :mod:`~plastiscope.probes.transfer`):

- ``logme`` (higher): LogME (You et al. 2021), the maximised log evidence per example of a
  Bayesian linear model from the raw features to each class's one-hot target, mean over classes.
- ``h_score`` (higher): H-score (Bao et al. 2019) ``tr(cov(f)^-1 cov(E[f|y]))`` on the
  standardised features, with the Ledoit-Wolf-shrunk ``cov(f)`` of Ibrahim et al. (2022)
  (detail column ``shrinkage``).
- ``rankme`` (no better direction): RankMe (Garrido et al. 2023), the exponential of the entropy
  of the normalised singular values of the raw feature matrix; label-free.
- ``alpha_req`` (no better direction; near 1 is best in the paper): the power-law decay exponent of
  the covariance eigenspectrum (Agrawal et al. 2022), least squares in log-log over ranks 1 to half
  the non-zero eigenvalues (detail column ``fit_r2``); label-free.

Features come from the shared forward pass (a :class:`~plastiscope.probes.tasks.FeatureCollector`);
the random-init baseline needs its own pass over the data (a different model), run in
``finish()`` and memoised (:class:`~plastiscope.memo.Memo`): all checkpoints of a sweep share
one architecture, so the baseline is computed once per (architecture, tokenizer, data,
options, precision).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
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
)
from plastiscope.probes.baselines import paired_accuracy_difference
from plastiscope.probes.evaluate import DEFAULT_CS, HeldOut, cross_validate
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
    "transfer": Option(True, Boolean(), "report the transferability estimators logme, h_score, rankme, alpha_req"),
    "majority_baseline": Option(True, Boolean(), "majority-class rows (init='majority') and accuracy_above_majority"),
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
                min_per_class=options["min_per_class"], seed=options["seed"],
            )
            poolings = options["pooling"] if options["level"] == "sequence" else ["token"]
            for pooling in poolings:
                self.tasks.append((examples, pooling))
        self.has_bos = tokenizer.bos_token_id is not None
        self.collector = FeatureCollector(self.layers, [r for e, p in self.tasks for r in self._requests(e, p)], self.has_bos)
        self.passes = {"data": [self.collector]}

    def _units(self, examples: Examples) -> np.ndarray:
        """``[example]``: the independent unit of each example, its document, where identical texts are one document
        (the first of them): a duplicate in the training part of a fold would otherwise be its copy's held-out answer."""
        first: dict[str, int] = {}
        return np.asarray([first.setdefault(self.data.texts[d], d) for d in examples.doc.tolist()], dtype=np.int64)

    @staticmethod
    def _requests(examples: Examples, pooling: str) -> list[tuple[int, int | str]]:
        if pooling == "token":
            return list(zip(examples.doc.tolist(), examples.position.tolist()))
        return [(d, pooling) for d in examples.doc.tolist()]

    def _records(self, collector: FeatureCollector, init: str) -> tuple[list[dict[str, Any]], list[HeldOut]]:
        """Rows of every task and pooling for the model whose features ``collector`` holds, and each
        task's held-out predictions (in the order of ``self.tasks``). The majority-class rows, which
        read no features, come with the trained model's only."""
        o = self.o
        records, held_out = [], []
        for examples, pooling in self.tasks:
            X = collector.take(self._requests(examples, pooling))
            rows, held = cross_validate(
                X, examples.y, types=examples.types, groups=self._units(examples),
                n_classes=len(examples.classes), folds=int(o["folds"]), inner_folds=int(o["inner_folds"]),
                Cs=[float(c) for c in o["Cs"]], class_weight=o["class_weight"], max_iter=int(o["max_iter"]),
                tol=float(o["tol"]), control_task=bool(o["control_task"]) and examples.level == "token",
                shuffled=bool(o["shuffled"]),
                mdl=bool(o["mdl"]), fisher=bool(o["fisher"]), seed=int(o["seed"]),
                majority=bool(o["majority_baseline"]), transfer=bool(o["transfer"]),
            )
            for row in rows:
                if row.get("init") == "majority" and init != "trained":
                    continue
                row["layer"] = self.layers[row["layer"]]
                row.update(task=examples.task, pooling=pooling)
                row.setdefault("init", init)
                records.append(row)
            held_out.append(held)
            del X
        return records, held_out

    def _above_random_init(self, held_out: list[HeldOut], random_correct: np.ndarray) -> list[dict[str, Any]]:
        """``accuracy_above_random_init`` rows: the trained probe's hits against the random-init
        model's (``random_correct [layer, example]``, the tasks' examples one after another) on the same
        examples and folds, paired bootstrap over documents within folds."""
        records, offset = [], 0
        for (examples, pooling), held in zip(self.tasks, held_out):
            n = len(examples)
            other = random_correct[:, offset : offset + n]
            offset += n
            value, low, high, units = paired_accuracy_difference(held.correct, other, held.fold, self._units(examples),
                                                                 seed=int(self.o["seed"]))
            records += [
                {"layer": layer, "metric": "accuracy_above_random_init", "value": float(value[l]), "ci_low": float(low[l]),
                 "ci_high": float(high[l]), "n": units, "task": examples.task, "pooling": pooling, "init": "trained"}
                for l, layer in enumerate(self.layers)
            ]
        return records

    def _random_key(self) -> dict[str, Any]:
        """What the random-init baseline depends on: architecture, tokenizer, data, options, precision."""
        config = self.checkpoint.hf_model.config.to_dict()
        config = {k: v for k, v in config.items() if not k.startswith("_") and k not in ("transformers_version", "dtype", "torch_dtype")}
        vocab = sorted(self.checkpoint.tokenizer.get_vocab().items())
        options = {k: (v if not callable(v) else getattr(v, "__qualname__", repr(v))) for k, v in self.o.items()}
        return {"architecture": config, "vocab": vocab, "data": self.data.sha256(), "options": options,
                "layers": self.layers, "dtype": str(self.checkpoint.dtype), "device": self.checkpoint.device_type}

    def _random_baseline(self) -> tuple[pd.DataFrame, np.ndarray]:
        """The random-init model's rows and its probes' held-out hits ``[layer, example]`` (tasks one after another)."""
        baseline = self.checkpoint.random_init(seed=int(self.o["seed"]))
        try:
            collector = FeatureCollector(self.layers, list(self.collector.row), self.has_bos)
            run_pass(baseline, self.data, [collector], progress=False)
            records, held_out = self._records(collector, "random")
            return pd.DataFrame(records), np.concatenate([h.correct for h in held_out], axis=1)
        finally:
            baseline.unload()

    def _random(self) -> tuple[pd.DataFrame, np.ndarray]:
        """:meth:`_random_baseline`, memoised: every checkpoint of a sweep shares the architecture, so it is computed once."""
        key = self._random_key()
        computed: dict[str, Any] = {}

        def rows() -> pd.DataFrame:
            computed["rows"], computed["correct"] = self._random_baseline()
            return computed["rows"]

        frame = self.memo.get("probes-random-init", key, rows)
        # the hits were computed with the rows, unless the rows came from a memo file written without them
        correct = self.memo.get("probes-random-init-correct", key, lambda: computed["correct"] if computed else self._random_baseline()[1])
        return frame, correct

    def finish(self) -> pd.DataFrame:
        """Probe rows of every task, pooling and layer, with the baselines' rows when asked for."""
        records, held_out = self._records(self.collector, "trained")
        self.collector.features = None  # free before the baseline's pass
        if self.o["random_baseline"]:
            frame, random_correct = self._random()
            records += frame.to_dict("records")
            records += self._above_random_init(held_out, random_correct)
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
           _ABOVE_BASELINES),
    Metric("cross_entropy", "Held-out cross-entropy (nats) of the linear probe's predicted class distribution.", "nats", "lower", _PROBE,
           (Baseline(init="random", label="random-init model"),)),
    Metric("selectivity_control_task", "Probe accuracy on the real task minus accuracy on a control task that gives each word type a "
           "random label (token-level tasks only, where word types repeat); high selectivity means the representation, not the probe, "
           "carries the labels.", "fraction", "higher", _CONTROL, (Baseline(value=0.0, label="zero-selectivity level"),)),
    Metric("selectivity_shuffled", "Probe accuracy on the real labels minus accuracy on shuffled labels.", "fraction", "higher", _CONTROL,
           (Baseline(value=0.0, label="zero-selectivity level"),)),
    Metric("mdl_codelength", "Online (prequential) codelength in bits of transmitting the labels with probes trained on growing "
           "prefixes of the data; shorter = more easily extractable.", "bits", "lower", _MDL),
    Metric("mdl_compression", "Uniform codelength divided by online codelength; higher = labels more compressible from the "
           "representation.", "ratio", "higher", _MDL, (Baseline(value=1.0, label="uniform code"),)),
    Metric("fisher_criterion", "Fisher's criterion tr(S_W^-1 S_B) of the pooled representation (within-class scatter S_W shrunk "
           "towards a scaled identity); higher = classes more linearly separable.", "", "higher",
           "Fisher 1936; Ledoit & Wolf 2004 (shrinkage)", (Baseline(init="random", label="random-init model"),)),
    Metric("accuracy_above_majority", "Probe accuracy minus the accuracy of always predicting the training part's majority class, on "
           "the same held-out examples and folds; interval: paired bootstrap over documents within folds (lower end above 0: the "
           "probe beats the label frequencies).", "fraction", "higher", "Ojala & Garriga 2010 (baselines a classifier must beat)",
           (Baseline(value=0.0, label="majority class"),)),
    Metric("accuracy_above_random_init", "The checkpoint's probe accuracy minus the random-init model's probe accuracy, on the same "
           "held-out examples and folds; interval: paired bootstrap over documents within folds (lower end above 0: training added "
           "separability).", "fraction", "higher", _PROBE, (Baseline(value=0.0, label="random-init model"),)),
    Metric("logme", "LogME: the log marginal evidence per example of a Bayesian linear model from the layer's raw pooled features to "
           "each class's one-hot target, maximised over its prior and noise precisions, averaged over classes; no probe trained. "
           "Comparable only at the same examples and classes.", "nats per example", "higher",
           "You et al. 2021 (LogME, ICML)", (Baseline(init="random", label="random-init model"),)),
    Metric("h_score", "H-score tr(cov(f)^-1 cov(E[f|y])) of the standardised pooled features, cov(f) shrunk towards a scaled identity "
           "(Ledoit-Wolf) and cov(E[f|y]) scaled by the same factor; higher = class means further apart in units of the features' "
           "spread.", "", "higher", "Bao et al. 2019 (ICIP); Ibrahim et al. 2022 (shrinkage)",
           (Baseline(init="random", label="random-init model"),)),
    Metric("rankme", "RankMe: exp of the entropy of the normalised singular values of the layer's raw pooled feature matrix, an "
           "effective number of directions in use (label-free; at most min(examples, width)).", "directions", None,
           "Garrido et al. 2023 (RankMe, ICML)", (Baseline(init="random", label="random-init model"),)),
    Metric("alpha_req", "alpha-ReQ: decay exponent alpha of a power law lambda_i ~ i^-alpha fitted in log-log to the covariance "
           "eigenvalues of the layer's pooled features (ranks 1 to half the non-zero eigenvalues); smaller = flatter spectrum; the paper "
           "finds downstream accuracy best near 1 (label-free).", "", None, "Agrawal et al. 2022 (alpha-ReQ, NeurIPS)",
           (Baseline(init="random", label="random-init model"),)),
)

ANALYSIS = Analysis(name=NAME, inputs=("data",), start=start, options=OPTIONS, variants=VARIANTS, metrics=METRICS)


def probes(
    sweep: Sweep | Checkpoint | Sequence[Checkpoint],
    data: Documents | Sequence[str] | str,
    *,
    store: Any = None,
    batch_size: int = 16,
    progress: bool = True,
    executor: Any = None,
    **options: Any,
) -> pd.DataFrame:
    """Probe every layer of every checkpoint; return the tidy results frame.

    - ``data``: documents (anything :func:`plastiscope.load_documents` reads) with label columns.
    - ``options``: any of :data:`OPTIONS`, validated by it, e.g. ``label_column`` (the label
      column(s): the built-in ``"pos"`` or ``"lexname"``, or any column of ``data``; default ``pos``
      if present, else ``label``), ``pooling`` (``"mean"`` or ``"last"``, or both, for
      sequence-level tasks), ``level="token"`` with a column of word-level labels or with
      ``token_labels(ids)``, ``layers``, ``random_baseline``, ``folds``, ``Cs``, ``max_examples``.
    - ``executor``: ``"local"`` (default), ``"process"`` or ``"ray"`` (:func:`plastiscope.runner.executor_named`).

    Rows: ``metric`` in ``accuracy, macro_f1, cross_entropy, selectivity_shuffled,
    mdl_codelength, mdl_compression, fisher_criterion, accuracy_above_majority,
    accuracy_above_random_init, logme, h_score, rankme, alpha_req`` per ``layer`` (and
    ``selectivity_control_task`` for token-level tasks), with columns ``task``, ``pooling`` and
    ``init`` (``trained`` / ``random``, and ``majority`` for the majority-class baseline's
    ``accuracy`` and ``macro_f1``); the module docstring says what each means. Failed
    checkpoints are warned about and listed in ``frame.attrs["failures"]``.
    """
    docs = load_documents(data)
    return run_one(sweep, ANALYSIS, Inputs(data=docs), options, store, batch_size, progress, executor,
                   check=lambda config: _label_columns(docs, config))  # fail early, before any model is loaded
