"""Read results into what reports need: checkpoints, configurations, series and one score per checkpoint.

Reports read only the tidy results schema (``plastiscope.results``)::

    checkpoint, weight_decay, <hyperparameters and details>, analysis, metric, variant,
    layer, head, value, ci_low, ci_high, n

The vocabulary of a report:

- A *series* is one ``(analysis, metric, variant)``: ``variant`` is written by each analysis
  from its declared variant columns (``"task=pos, pooling=mean"``). No other column ever
  splits a series: every other extra column is a per-row *detail* (``iterations``,
  ``direction``, ``selected_lr``, ...), averaged over like layers and heads.
- A *hyperparameter* is a column with one value per checkpoint (``learning_rate``,
  ``schedule``, ``seed``, ``final_val_loss``). A column that varies within a checkpoint is a
  detail.
- A *configuration* is a checkpoint's hyperparameters but ``seed`` (and the trainer's final
  losses, which are measurements): checkpoints that share a configuration and differ in
  ``seed`` are *replicates*, averaged before anything is ranked or tested.
- The *axis* ``x`` is the swept hyperparameter (``weight_decay`` unless told otherwise),
  numeric or categorical. Configurations that differ in another hyperparameter than ``x`` (one
  not determined by ``x``, as ``tokens`` is by ``step``) are drawn as separate *lines*.
- A *baseline* row has ``init`` set and not ``"trained"`` (e.g. ``init="random"``, a probe on
  a randomly initialised copy): drawn dashed, left out of scores, correlations and rankings.

A *score* is one number per checkpoint and series: the mean of ``value`` over its trained
rows (layers, heads, details). Validation loss comes from the first metric declared with role
``validation_loss`` (:func:`metrics_with_role`) and falls back to the hyperparameter column
``final_val_loss`` the trainer writes; training loss from metric ``train_loss`` (the column's
own name), else ``final_train_loss``.

What a metric is to a report (the outcome, accuracy after fine-tuning, validation loss, another
quantity measured after fine-tuning) is its declared *role* (:mod:`plastiscope.metrics`), read
through :func:`metrics_with_role`; no report names an analysis's metric.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from plastiscope.metrics import Declarations, attach, read_declarations
from plastiscope.reports.outcomes import BETTER_COLUMN, SOURCE_COLUMN
from plastiscope.results import CORE_COLUMNS, ID_COLUMNS, load_results, tidy
from plastiscope.stats import replicate_interval

ResultsLike = pd.DataFrame | str | Path
ResultsInput = ResultsLike | Sequence[ResultsLike] | Mapping[str, ResultsLike]

TRAIN_LOSS_COLUMN, VAL_LOSS_COLUMN = "train_loss", "val_loss"  # columns of Prepared.checkpoints
LOSS_COLUMNS = {TRAIN_LOSS_COLUMN: "final_train_loss", VAL_LOSS_COLUMN: "final_val_loss"}  # column -> the trainer's fallback
LOSS_ROLES = {VAL_LOSS_COLUMN: "validation_loss"}  # column -> the declared role of the metrics it is read from
BASELINE_COLUMN = "init"
TRAINED_VALUES = {"trained", "pretrained", "checkpoint", "none", "", "nan"}
SWEEP_COLUMN = "sweep"
REPLICATE_COLUMN = "seed"
MEASURED_COLUMNS = ("tokens", "epochs", "tokens_per_parameter")  # measured by the trainer; they differ between seeds
NOT_CONFIGURATION = (REPLICATE_COLUMN, *LOSS_COLUMNS.values(), *MEASURED_COLUMNS)
DEFAULT_X = "weight_decay"
REQUIRED = ("checkpoint", "weight_decay", "analysis", "metric", "value")


@dataclass
class Series:
    """One plotted quantity: an (analysis, metric, variant) of the trained checkpoints."""

    key: str
    analysis: str
    metric: str
    variant: str  # "task=pos, pooling=mean" or ""
    has_layer: bool
    has_head: bool
    n_layers: int
    n_heads: int


@dataclass
class SeriesRows:
    """One series' rows as aligned numpy arrays ``[row]``.

    ``ck``: row of ``Prepared.checkpoints``; ``layer``/``head``: float, NaN where absent;
    ``baseline``: bool; ``baseline_label``: the ``init`` value of baseline rows.
    """

    ck: np.ndarray
    layer: np.ndarray
    head: np.ndarray
    value: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    baseline: np.ndarray
    baseline_label: np.ndarray

    def select(self, mask: np.ndarray) -> SeriesRows:
        """The rows where ``mask [row]`` is True."""
        return SeriesRows(**{k: v[mask] for k, v in self.__dict__.items()})

    def __len__(self) -> int:
        return len(self.value)


def group_mean(keys: list[np.ndarray], values: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Mean of ``values [row]`` per distinct combination of ``keys`` (each ``[row]``, no NaN).

    Returns the distinct keys (sorted lexicographically, one array per key) and the NaN-ignoring
    mean per combination (NaN where every value is NaN).
    """
    stacked = np.stack([np.asarray(k, dtype=float) for k in keys], axis=1)  # [row, key]
    if len(stacked) == 0:
        return [np.array([]) for _ in keys], np.array([])
    combos, inverse = np.unique(stacked, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    values = np.asarray(values, dtype=float)
    finite = np.isfinite(values)
    sums = np.bincount(inverse, weights=np.where(finite, values, 0.0), minlength=len(combos))
    counts = np.bincount(inverse, weights=finite.astype(float), minlength=len(combos))
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return [combos[:, j] for j in range(len(keys))], means


@dataclass
class Prepared:
    """Results made ready for reporting (see the module docstring for the vocabulary).

    ``checkpoints`` has one row per checkpoint, sorted by group, line, ``x`` and seed, with
    ``_id``, ``_label``, ``_group``, the hyperparameters, ``train_loss``, ``val_loss`` and
    ``_x`` (the axis value; NaN/None where missing), ``_config`` / ``_config_label``,
    ``_line`` / ``_line_label``, ``_seed``, ``_block`` (group x seed: what permutations keep
    apart) and ``_block_x`` (group x line x seed).
    """

    rows: pd.DataFrame  # tidy rows + _id, _label, _group, _baseline, _baseline_label, _series
    checkpoints: pd.DataFrame
    hyper: list[str]  # hyperparameter columns that vary between checkpoints
    shared: dict[str, Any]  # hyperparameters with one value for all checkpoints
    details: list[str]  # per-row detail columns (never a series)
    variant_columns: list[str]
    series: list[Series]
    scores: pd.DataFrame  # index _id, one column per series key (trained rows only)
    x: str
    categorical: bool
    categories: list[str]  # the categorical axis's values in order
    config_columns: list[str]
    line_columns: list[str]
    group_by: str | None
    groups: list[str]
    run_infos: dict[str, dict] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    declarations: Declarations = field(default_factory=Declarations)  # what each metric means (:mod:`plastiscope.metrics`)
    loss_sources: dict[str, str] = field(default_factory=dict)
    directions: dict[str, str] = field(default_factory=dict)  # metric -> "higher"/"lower" recorded in the rows (imported outcomes)
    outcome_choice: str | None = None  # the outcome the report ranks by (series key or metric); None: the default
    _by_series: dict[str, SeriesRows] | None = field(default=None, repr=False)
    _columns: dict[str, np.ndarray] | None = field(default=None, repr=False)

    def series_by_key(self, key: str) -> Series:
        """The series whose key is ``key``."""
        return next(s for s in self.series if s.key == key)

    def series_rows(self, key: str) -> SeriesRows:
        """The rows of one series (trained and baseline) as numpy arrays (see :class:`SeriesRows`)."""
        if self._by_series is None:
            rows = self.rows
            arrays = dict(
                ck=pd.Index(self.checkpoints["_id"]).get_indexer(rows["_id"]),
                layer=rows["layer"].to_numpy(dtype="float64", na_value=np.nan),
                head=rows["head"].to_numpy(dtype="float64", na_value=np.nan),
                value=rows["value"].to_numpy(dtype=float),
                ci_low=rows["ci_low"].to_numpy(dtype=float),
                ci_high=rows["ci_high"].to_numpy(dtype=float),
                baseline=rows["_baseline"].to_numpy(dtype=bool),
                baseline_label=rows["_baseline_label"].to_numpy(dtype=object),
            )
            codes, uniques = pd.factorize(rows["_series"])
            order = np.argsort(codes, kind="stable")
            starts = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
            self._by_series = {
                uniques[c]: SeriesRows(**{k: v[order[starts[c]:starts[c + 1]]] for k, v in arrays.items()})
                for c in range(len(uniques))
            }
        return self._by_series[key]

    @property
    def columns(self) -> dict[str, np.ndarray]:
        """Columns of ``checkpoints`` that figures and statistics read often, as object arrays (built once)."""
        if self._columns is None:
            self._columns = {c: self.checkpoints[c].to_numpy(dtype=object)
                             for c in ("_group", "_line", "_line_label", "_config_label", "_x", "_label")}
        return self._columns

    @property
    def labels(self) -> np.ndarray:
        """Checkpoint display labels, indexed like ``checkpoints``."""
        return self.checkpoints["_label"].to_numpy(dtype=object)

    @property
    def has_x(self) -> np.ndarray:
        """``[checkpoint]``: True where the checkpoint has a value of the axis column."""
        return self.checkpoints["_x"].notna().to_numpy()

    @property
    def seeds_per_configuration(self) -> tuple[int, int]:
        """The smallest and largest number of replicate checkpoints of a configuration."""
        counts = self.checkpoints[self.has_x].groupby("_config").size()
        return (int(counts.min()), int(counts.max())) if len(counts) else (0, 0)

    def score(self, key: str) -> np.ndarray:
        """``[checkpoint]``: the series' score of each checkpoint (NaN where it has none)."""
        if key not in self.scores:
            return np.full(len(self.checkpoints), np.nan)
        return self.scores[key].to_numpy(dtype=float)


def _read_one(item: ResultsLike) -> tuple[pd.DataFrame, dict | None, str]:
    if isinstance(item, pd.DataFrame):
        return item.copy(), None, "DataFrame"
    path = Path(item)
    frame = load_results(path)
    folder = path if path.is_dir() else path.parent
    attach(frame, read_declarations(folder))
    run_info = None
    if (folder / "run.json").exists():
        run_info = json.loads((folder / "run.json").read_text())
    return frame, run_info, str(path)


def _source_name(item: ResultsLike, index: int) -> str:
    if isinstance(item, pd.DataFrame):
        return f"sweep {index + 1}"
    path = Path(item)
    return (path if path.is_dir() else path.parent).name or f"sweep {index + 1}"


def read_inputs(results: ResultsInput) -> tuple[pd.DataFrame, dict[str, dict], dict[str, str], bool]:
    """Read one or several results (frames or folders) into one frame.

    Several inputs get a ``sweep`` column (the folder name, or the mapping's key) unless
    they already have one. Returns ``(frame, run_infos by sweep, source paths by sweep, several)``.
    """
    if isinstance(results, (pd.DataFrame, str, Path)):
        items: dict[str, ResultsLike] = {_source_name(results, 0): results}
    elif isinstance(results, Mapping):
        items = {str(k): v for k, v in results.items()}
    elif isinstance(results, Sequence):
        items = {}
        for i, item in enumerate(results):
            name = _source_name(item, i)
            base, k = name, 2
            while name in items:
                name, k = f"{base}-{k}", k + 1
            items[name] = item
    else:
        raise TypeError(f"results must be a DataFrame, a results folder, or a list of them; got {type(results).__name__}")
    if not items:
        raise ValueError("no results given: pass a results DataFrame or at least one results folder")
    frames, run_infos, sources = [], {}, {}
    several = len(items) > 1
    for name, item in items.items():
        frame, run_info, source = _read_one(item)
        if several and SWEEP_COLUMN not in frame:
            frame[SWEEP_COLUMN] = name
        frames.append(frame)
        if run_info is not None:
            run_infos[name] = run_info
        sources[name] = source
    frame = pd.concat(frames, ignore_index=True) if several else frames[0]
    declarations = Declarations()
    for part in frames:  # what each folder records, merged (pd.concat keeps attrs only when they are equal)
        declarations = declarations.merged(read_declarations(part))
    attach(frame, declarations)
    return frame, run_infos, sources, several


def validate(frame: pd.DataFrame) -> pd.DataFrame:
    """Check the schema's required columns and types; return a tidy copy."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"results must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise ValueError(
            f"results lack the column(s) {missing}; expected the plastiscope results schema "
            f"({', '.join(ID_COLUMNS + CORE_COLUMNS)}); got {list(frame.columns)}"
        )
    if len(frame) == 0:
        raise ValueError("results are empty: no rows to report; run `plastiscope analyze` first")
    frame = tidy(frame.copy())
    wd = frame["weight_decay"]
    if (wd < 0).any():
        bad = sorted(frame.loc[wd < 0, "checkpoint"].astype(str).unique())[:5]
        raise ValueError(f"negative weight decay for checkpoint(s) {bad}; weight decay must be >= 0")
    frame["checkpoint"] = frame["checkpoint"].astype(str)
    frame["analysis"] = frame["analysis"].astype(str)
    frame["metric"] = frame["metric"].astype(str)
    return frame


def text(value: Any) -> str | None:
    """A value as short text (``1.0`` -> ``"1"``); None for missing."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (float, np.floating)):
        return str(int(value)) if float(value).is_integer() else f"{float(value):.6g}"
    return str(value)


def _combination_labels(frame: pd.DataFrame, columns: list[str], label) -> np.ndarray:
    """``label([text of each column])`` for every row, computed once per distinct combination."""
    if not columns:
        return np.full(len(frame), label([]), dtype=object)
    factorized = [pd.factorize(frame[c], use_na_sentinel=True) for c in columns]  # NaN -> code -1
    stacked = np.stack([codes for codes, _ in factorized], axis=1)  # [row, column]
    combos, inverse = np.unique(stacked, axis=0, return_inverse=True)
    labels = np.empty(len(combos), dtype=object)
    for i, combo in enumerate(combos):
        labels[i] = label([text(uniques[code]) if code >= 0 else None for code, (_, uniques) in zip(combo, factorized)])
    return labels[inverse.ravel()]


def _analysis_rank(name: str, order: tuple[str, ...]) -> tuple[int, str]:
    """Analyses in declaration order; undeclared ones after them, by name."""
    return (order.index(name) if name in order else len(order), name)


def variant_columns(frame: pd.DataFrame) -> list[str]:
    """The columns named in the ``variant`` labels (``"task=pos, pooling=mean"`` -> task, pooling) that ``frame`` has."""
    names: set[str] = set()
    for label in frame["variant"].unique():
        for part in str(label).split(", "):
            name, sep, _ = part.partition("=")
            if sep and name in frame.columns:
                names.add(name)
    return [c for c in frame.columns if c in names]


def assign_labels(frame: pd.DataFrame, columns: list[str], sep: str = ", ") -> np.ndarray:
    """``"col=value, col2=value"`` for each row of ``frame`` (empty without columns)."""
    return _combination_labels(frame, columns, lambda values: sep.join(
        f"{c}={v}" for c, v in zip(columns, values) if v is not None))


def _codes(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """One integer per distinct combination of ``columns`` (NaN a value of its own)."""
    if not columns:
        return np.zeros(len(frame), dtype=np.int64)
    return frame.groupby(columns, dropna=False, sort=False).ngroup().to_numpy(dtype=np.int64)


def _check_constant(frame: pd.DataFrame, columns: list[str]) -> None:
    """Refuse results where a checkpoint name carries two values of an identity column (two checkpoints, one name)."""
    for column in columns:
        if column not in frame:
            continue
        counts = frame.groupby("_id", sort=False)[column].nunique(dropna=False)
        if (counts > 1).any():
            name = frame.loc[frame["_id"] == counts.index[counts > 1][0], "_label"].iloc[0]
            values = sorted(map(str, frame.loc[frame["_id"] == counts.index[counts > 1][0], column].unique()))
            raise ValueError(
                f"checkpoint {name!r} has rows with different {column} ({', '.join(values[:4])}): two checkpoints share "
                "one name; give each its own name (the manifest's label), or pass the results as separate folders "
                "(a list) to compare them")


def _axis_values(column: pd.Series) -> tuple[pd.Series, bool]:
    """The axis column as floats (numeric) or as text (categorical), and whether it is categorical."""
    numeric = pd.to_numeric(column, errors="coerce")
    present = column.notna()
    if present.any() and numeric[present].notna().all():
        return numeric.astype(float), False
    return column.map(text), True


def prepare(results: ResultsInput, group_by: str | None = None, run_info: dict | None = None,
            x: str = DEFAULT_X) -> Prepared:
    """Read and classify results for reporting.

    ``group_by`` names a column to compare groups by (several results folders: ``sweep``);
    ``x`` the hyperparameter on the horizontal axis (default ``weight_decay``).
    """
    frame, run_infos, sources, several = read_inputs(results)
    declarations = read_declarations(frame)
    frame = validate(frame)
    if run_info is not None:
        run_infos[next(iter(sources)) if not several else "given run_info"] = run_info
    if group_by is None and several:
        group_by = SWEEP_COLUMN
    if group_by is not None and group_by not in frame.columns:
        raise ValueError(f"group_by={group_by!r} is not a column of the results; columns: {list(frame.columns)}")

    several_sweeps = SWEEP_COLUMN in frame and frame[SWEEP_COLUMN].nunique() > 1
    id_columns = [c for c in (group_by, SWEEP_COLUMN if several_sweeps else None) if c]
    id_columns = list(dict.fromkeys(id_columns + ["checkpoint"]))
    frame["_id"] = _combination_labels(frame, id_columns, lambda values: json.dumps(values, ensure_ascii=False))
    if several_sweeps and SWEEP_COLUMN != group_by:
        frame["_label"] = frame[SWEEP_COLUMN].astype(str) + "/" + frame["checkpoint"]
    else:
        frame["_label"] = frame["checkpoint"]
    frame["_group"] = frame[group_by].map(lambda v: text(v) or "(none)") if group_by else ""
    _check_constant(frame, ["weight_decay", REPLICATE_COLUMN])

    # hyperparameters (one value per checkpoint) versus details (vary within a checkpoint)
    variants = variant_columns(frame)
    candidates = [c for c in frame.columns if c not in ID_COLUMNS + CORE_COLUMNS + variants + [BASELINE_COLUMN]
                  and c not in (BETTER_COLUMN, SOURCE_COLUMN) and not c.startswith("_")]
    hyper_all, details = [], []
    for column in candidates:
        if frame[column].isna().all():
            continue
        if frame.groupby("_id", sort=False)[column].nunique(dropna=False).max() <= 1 or column in (group_by, SWEEP_COLUMN):
            hyper_all.append(column)
        else:
            details.append(column)

    if BASELINE_COLUMN in frame:
        init = [text(v) for v in frame[BASELINE_COLUMN].tolist()]
        baseline = [v is not None and v.lower() not in TRAINED_VALUES for v in init]
        frame["_baseline"] = np.array(baseline, dtype=bool)
        frame["_baseline_label"] = [v if b else "" for v, b in zip(init, baseline)]
    else:
        frame["_baseline"] = False
        frame["_baseline_label"] = ""
    frame["_series"] = frame["analysis"] + "." + frame["metric"] + frame["variant"].map(lambda v: f" [{v}]" if v else "")

    # series, in analysis order then order of first appearance
    series = []
    firsts = frame.drop_duplicates("_series")
    ranks = firsts["analysis"].map(lambda a: _analysis_rank(a, declarations.order))
    firsts = firsts.assign(_rank=ranks).sort_values("_rank", kind="stable")
    by_series = frame.groupby("_series", sort=False)
    for row in firsts[["_series", "analysis", "metric", "variant"]].to_dict("records"):
        rows = by_series.get_group(row["_series"])
        layers, heads = rows["layer"].dropna(), rows["head"].dropna()
        series.append(Series(
            key=row["_series"], analysis=row["analysis"], metric=row["metric"], variant=row["variant"],
            has_layer=bool(len(layers)), has_head=bool(len(heads)), n_layers=int(layers.nunique()), n_heads=int(heads.nunique()),
        ))

    # one row per checkpoint
    first = frame.drop_duplicates("_id").set_index("_id")
    checkpoints = pd.DataFrame({"_id": first.index, "_label": first["_label"].values, "_group": first["_group"].values,
                                "checkpoint": first["checkpoint"].values, "weight_decay": first["weight_decay"].values})
    for column in hyper_all:
        checkpoints[column] = first[column].values
    trained = frame[~frame["_baseline"]]
    loss_sources = _losses(checkpoints, trained, declarations)

    # the axis, configurations, lines and replicates
    if x not in checkpoints.columns:
        varying = [c for c in ["weight_decay", *hyper_all] if checkpoints[c].astype(str).nunique() > 1]
        where = "a per-row detail or variant (it varies within a checkpoint)" if x in details + variants else "not a column of the results"
        raise ValueError(f"x={x!r} is {where}; choose a hyperparameter that varies between checkpoints: {varying}")
    if x == REPLICATE_COLUMN:
        raise ValueError(f"x={x!r}: {REPLICATE_COLUMN} marks replicates (averaged), not a swept setting; choose another column")
    checkpoints["_x"], categorical = _axis_values(checkpoints[x])
    shown = [c for c in hyper_all if c not in LOSS_COLUMNS.values()]
    varying = [c for c in ["weight_decay", *shown] if checkpoints[c].astype(str).nunique() > 1]
    config_columns = [c for c in varying if c not in NOT_CONFIGURATION and c not in (group_by, SWEEP_COLUMN)]
    config_columns = [x, *[c for c in config_columns if c != x]]
    has_x = checkpoints["_x"].notna()
    line_columns = [c for c in config_columns if c != x
                    and checkpoints[has_x].groupby("_x", dropna=False)[c].nunique(dropna=False).max() > 1]
    groups_of = ["_group"] if group_by else []
    checkpoints["_config"] = _codes(checkpoints, groups_of + config_columns)
    checkpoints["_config_label"] = assign_labels(checkpoints, config_columns)
    checkpoints["_line"] = _codes(checkpoints, groups_of + line_columns)
    checkpoints["_line_label"] = assign_labels(checkpoints, line_columns)
    has_seed = REPLICATE_COLUMN in checkpoints
    checkpoints["_seed"] = checkpoints[REPLICATE_COLUMN].map(lambda v: text(v) or "") if has_seed else ""
    checkpoints["_block"] = _codes(checkpoints, groups_of + ["_seed"])
    checkpoints["_block_x"] = _codes(checkpoints, groups_of + line_columns + ["_seed"])

    categories = sorted(checkpoints.loc[has_x, "_x"].unique(), key=str) if categorical else []
    order = checkpoints["_x"].map({c: i for i, c in enumerate(categories)}) if categorical else checkpoints["_x"]
    sort = checkpoints.assign(_order=order)
    sort_columns = (["_group"] if group_by else []) + line_columns + ["_order", "_seed", "_label"]
    checkpoints = sort.sort_values(sort_columns, kind="stable", na_position="last").drop(columns="_order").reset_index(drop=True)

    hyper = [c for c in shown if checkpoints[c].astype(str).nunique() > 1 or c == group_by]
    shared = {c: checkpoints[c].iloc[0] for c in shown if c not in hyper}
    scores = trained.pivot_table(index="_id", columns="_series", values="value", aggfunc="mean", sort=False)
    scores = scores.reindex(index=checkpoints["_id"], columns=[s.key for s in series if s.key in scores.columns])
    groups = list(dict.fromkeys(checkpoints["_group"])) if group_by else [""]
    return Prepared(
        rows=frame, checkpoints=checkpoints, hyper=hyper, shared=shared, details=details, variant_columns=variants,
        series=series, scores=scores, x=x, categorical=categorical, categories=categories, config_columns=config_columns,
        line_columns=line_columns, group_by=group_by, groups=groups, run_infos=run_infos, sources=sources,
        declarations=declarations,
        loss_sources=loss_sources, directions=recorded_directions(frame),
    )


def recorded_directions(frame: pd.DataFrame) -> dict[str, str]:
    """Metric -> ``"higher"``/``"lower"`` where the rows record it (imported outcomes' :data:`BETTER_COLUMN`)."""
    if BETTER_COLUMN not in frame:
        return {}
    given = frame.loc[frame[BETTER_COLUMN].isin(["higher", "lower"]), ["metric", BETTER_COLUMN]].drop_duplicates()
    return dict(zip(given["metric"], given[BETTER_COLUMN]))


def metrics_with_role(declarations: Declarations, role: str, present: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The ``(analysis, metric)`` pairs of ``present`` whose declared role is ``role``, in declaration order.

    A pair's declaration is ``declarations.lookup(metric, analysis)`` (its own analysis's first,
    then any analysis's); an undeclared metric has no role. Order: the first declaration with
    ``role`` that covers the metric (the analyses' declared order, then each analysis's metric
    order), then the order of ``present``; a pair given twice is kept once.
    """
    declared = declarations.with_role(role)
    found = []
    for analysis, metric in dict.fromkeys(present):
        own = declarations.lookup(metric, analysis)
        if own is None or own.role != role:
            continue
        covers = [i for i, (a, m) in enumerate(declared) if m.match(metric) is not None]
        same = [i for i in covers if declared[i][0] == analysis]
        found.append(((same or covers)[0], analysis, metric))
    return [(a, m) for _, a, m in sorted(found, key=lambda r: r[0])]


def _losses(checkpoints: pd.DataFrame, trained: pd.DataFrame, declarations: Declarations) -> dict[str, str]:
    """Add ``train_loss`` / ``val_loss`` columns to ``checkpoints``; return where each came from."""
    sources = {}
    pairs = list(dict.fromkeys(zip(trained["analysis"], trained["metric"])))
    for name, fallback in LOSS_COLUMNS.items():
        if name in LOSS_ROLES:
            declared = metrics_with_role(declarations, LOSS_ROLES[name], pairs)
            analysis, metric = declared[0] if declared else ("", "")
            from_metric = trained[(trained["analysis"] == analysis) & (trained["metric"] == metric)]
        else:
            analysis, metric = "", name
            from_metric = trained[trained["metric"] == name]
        values = from_metric.groupby("_id")["value"].mean().reindex(checkpoints["_id"]).to_numpy()
        used = []
        if np.isfinite(values).any():
            used.append(f"metric {metric}" + (f" ({analysis})" if analysis else ""))
        if fallback in checkpoints:
            fb = pd.to_numeric(checkpoints[fallback], errors="coerce").to_numpy(dtype=float)
            if np.isnan(values).any() and np.isfinite(fb[np.isnan(values)]).any():
                used.append(f"column {fallback}")
            values = np.where(np.isnan(values), fb, values)
        checkpoints[name] = values
        sources[name] = " and ".join(used)
    return sources


def configuration_means(prep: Prepared, values: np.ndarray, checkpoints: np.ndarray | None = None) -> pd.DataFrame:
    """Per configuration: the mean of ``values [checkpoint]`` over its replicate seeds, with an interval across them.

    ``checkpoints``: a boolean mask of the checkpoints to use (default: those with an axis
    value). One row per configuration that has a finite value, in the order of
    ``prep.checkpoints`` (group, line, axis): ``_group``, ``_line``, ``_line_label``,
    ``_config``, ``_config_label``, ``x``, ``value``, ``low``, ``high``, ``k`` (seeds with a
    value), ``band`` (:func:`plastiscope.stats.replicate_interval`'s kind), ``checkpoints``
    (their labels) and ``members`` (their row indices in ``prep.checkpoints``).
    """
    ck = prep.checkpoints
    values = np.asarray(values, dtype=float)
    mask = prep.has_x & np.isfinite(values)
    if checkpoints is not None:
        mask = mask & np.asarray(checkpoints, bool)
    rows = np.flatnonzero(mask)
    configs = ck["_config"].to_numpy()[rows]
    order = pd.unique(configs)  # configurations in checkpoint order
    columns_of = prep.columns
    groups = [rows[configs == config] for config in order]
    firsts = np.array([g[0] for g in groups], dtype=np.int64)
    stats = [replicate_interval(values[g]) for g in groups]
    members = np.empty(len(groups), dtype=object)
    members[:] = groups
    return pd.DataFrame({
        "_group": columns_of["_group"][firsts], "_line": columns_of["_line"][firsts], "_line_label": columns_of["_line_label"][firsts],
        "_config": np.asarray(order), "_config_label": columns_of["_config_label"][firsts], "x": columns_of["_x"][firsts],
        "value": np.array([st[0] for st in stats], dtype=float), "low": np.array([st[1] for st in stats], dtype=float),
        "high": np.array([st[2] for st in stats], dtype=float), "k": np.array([st[3] for st in stats], dtype=int),
        "band": np.array([st[4] for st in stats], dtype=object),
        "checkpoints": np.array([", ".join(str(v) for v in columns_of["_label"][g]) for g in groups], dtype=object),
        "members": members,
    })


def band_label(table: pd.DataFrame) -> str:
    """What the interval of :func:`configuration_means` rows is, e.g. ``"range of 2 seeds"``; empty without one."""
    if table.empty or not (table["k"] > 1).any():
        return ""
    parts = []
    for kind, name in (("range", "range of {} seeds"), ("bootstrap", "95 % bootstrap over {} seeds")):
        ks = sorted(table.loc[table["band"] == kind, "k"].unique())
        if ks:
            parts.append(name.format(f"{ks[0]}" if len(ks) == 1 else f"{ks[0]}-{ks[-1]}"))
    single = int((table["k"] == 1).sum())
    if single:
        parts.append(f"{single} configuration(s) with one seed: no interval")
    return "; ".join(parts)
