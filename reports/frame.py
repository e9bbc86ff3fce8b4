"""Read results into what reports need: checkpoints, series and one score per checkpoint.

Reports read only the tidy results schema (``plastiscope.results``)::

    checkpoint, weight_decay, <hyperparameters and extras>, analysis, metric,
    layer, head, value, ci_low, ci_high, n

Columns between ``weight_decay`` and ``analysis`` are of two kinds, told apart by the data:

- a *hyperparameter* has one value per checkpoint (``lr``, ``schedule``, ``final_val_loss``);
- an *extra* varies within a checkpoint (``task``, ``pooling``, ``score``, ``position_bucket``)
  or is one of :data:`KNOWN_EXTRAS`. Each combination of extras is a *variant*: its own series,
  e.g. ``probes.accuracy [task=pos, pooling=mean]``. Any unknown extra column becomes a
  variant dimension, so new columns never break a report.

Rows whose ``init`` is set and is not ``"trained"`` (e.g. ``init="random"``, a probe on a
randomly initialised copy) are a *baseline*: drawn as a dashed reference line, left out of
correlations and rankings.

A *score* is one number per checkpoint and series: the mean of ``value`` over layers, heads and
any repeated rows. Validation loss comes from metric ``val_loss`` (analysis ``overfit`` first)
and falls back to the hyperparameter column ``final_val_loss`` the trainer writes; the same for
training loss (``train_loss`` / ``final_train_loss``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from plastiscope.results import CORE_COLUMNS, ID_COLUMNS, load_results, tidy

ResultsLike = pd.DataFrame | str | Path
ResultsInput = ResultsLike | Sequence[ResultsLike] | Mapping[str, ResultsLike]

KNOWN_EXTRAS = ("task", "pooling", "init", "score", "position_bucket", "split", "control", "dataset", "direction")
LOSS_COLUMNS = {"train_loss": "final_train_loss", "val_loss": "final_val_loss"}
BASELINE_COLUMN = "init"
TRAINED_VALUES = {"trained", "pretrained", "checkpoint", "none", "", "nan"}
SWEEP_COLUMN = "sweep"
ANALYSIS_ORDER = ("plasticity", "probes", "attention", "attention_weights", "overfit", "landscape")
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

    ``ck``: row of ``Prepared.checkpoints``; ``group``: index into ``Prepared.groups``;
    ``layer``/``head``: float, NaN where absent; ``baseline``: bool; ``baseline_label``: the
    ``init`` value of baseline rows.
    """

    ck: np.ndarray
    group: np.ndarray
    weight_decay: np.ndarray
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
    """Results made ready for reporting (see the module docstring for the vocabulary)."""

    rows: pd.DataFrame  # tidy rows + _id, _label, _group, _variant, _baseline, _baseline_label, _series
    checkpoints: pd.DataFrame  # one row per checkpoint: _id, _label, _group, weight_decay, hyperparameters, train_loss, val_loss
    hyper: list[str]  # hyperparameter columns that vary between checkpoints
    shared: dict[str, Any]  # hyperparameters with one value for all checkpoints
    extras: list[str]
    series: list[Series]
    scores: pd.DataFrame  # index _id, one column per series key (trained rows only)
    group_by: str | None
    groups: list[str]
    run_infos: dict[str, dict] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    loss_sources: dict[str, str] = field(default_factory=dict)
    _by_series: dict[str, SeriesRows] | None = field(default=None, repr=False)

    def series_by_key(self, key: str) -> Series:
        """The series whose key is ``key``."""
        return next(s for s in self.series if s.key == key)

    def series_rows(self, key: str) -> SeriesRows:
        """The rows of one series (trained and baseline) as numpy arrays (see :class:`SeriesRows`)."""
        if self._by_series is None:
            rows = self.rows
            group_index = {g: i for i, g in enumerate(self.groups)}
            arrays = dict(
                ck=pd.Index(self.checkpoints["_id"]).get_indexer(rows["_id"]),
                group=rows["_group"].map(group_index).to_numpy(dtype=int) if self.group_by else np.zeros(len(rows), int),
                weight_decay=rows["weight_decay"].to_numpy(dtype=float),
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
    def labels(self) -> np.ndarray:
        """Checkpoint display labels, indexed like ``checkpoints``."""
        return self.checkpoints["_label"].to_numpy(dtype=object)


def _read_one(item: ResultsLike) -> tuple[pd.DataFrame, dict | None, str]:
    if isinstance(item, pd.DataFrame):
        return item.copy(), None, "DataFrame"
    path = Path(item)
    frame = load_results(path)
    folder = path if path.is_dir() else path.parent
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


def _text(value: Any) -> str | None:
    """A variant/group value as text; None for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
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
        labels[i] = label([_text(uniques[code]) if code >= 0 else None for code, (_, uniques) in zip(combo, factorized)])
    return labels[inverse.ravel()]


def _analysis_rank(name: str) -> tuple[int, str]:
    return (ANALYSIS_ORDER.index(name) if name in ANALYSIS_ORDER else len(ANALYSIS_ORDER), name)


def prepare(results: ResultsInput, group_by: str | None = None, run_info: dict | None = None) -> Prepared:
    """Read and classify results for reporting; ``group_by`` names a column to compare groups by."""
    frame, run_infos, sources, several = read_inputs(results)
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
    frame["_group"] = frame[group_by].map(lambda v: _text(v) or "(none)") if group_by else ""

    # hyperparameters (one value per checkpoint) versus extras (vary within a checkpoint)
    candidates = [c for c in frame.columns if c not in ID_COLUMNS + CORE_COLUMNS and not c.startswith("_")]
    hyper_all, extras = [], []
    for column in candidates:
        if frame[column].isna().all():
            continue
        if column in KNOWN_EXTRAS and column not in (group_by, SWEEP_COLUMN):
            extras.append(column)
            continue
        forced = column in LOSS_COLUMNS.values() or column in (group_by, SWEEP_COLUMN)
        per_checkpoint = frame.groupby("_id", sort=False)[column].nunique(dropna=False)
        if forced or per_checkpoint.max() <= 1:
            hyper_all.append(column)
        else:
            extras.append(column)

    baseline_extras = [c for c in extras if c == BASELINE_COLUMN]
    variant_extras = [c for c in extras if c != BASELINE_COLUMN]
    if baseline_extras:
        init = [_text(v) for v in frame[BASELINE_COLUMN].tolist()]
        baseline = [v is not None and v.lower() not in TRAINED_VALUES for v in init]
        frame["_baseline"] = np.array(baseline, dtype=bool)
        frame["_baseline_label"] = [v if b else "" for v, b in zip(init, baseline)]
    else:
        frame["_baseline"] = False
        frame["_baseline_label"] = ""
    frame["_variant"] = _combination_labels(
        frame, variant_extras, lambda values: ", ".join(f"{c}={v}" for c, v in zip(variant_extras, values) if v is not None))
    frame["_series"] = frame["analysis"] + "." + frame["metric"] + frame["_variant"].map(lambda v: f" [{v}]" if v else "")

    # series, in analysis order then order of first appearance
    series = []
    firsts = frame.drop_duplicates("_series")
    firsts = firsts.assign(_rank=firsts["analysis"].map(_analysis_rank)).sort_values("_rank", kind="stable")
    by_series = frame.groupby("_series", sort=False)
    for row in firsts[["_series", "analysis", "metric", "_variant"]].to_dict("records"):
        rows = by_series.get_group(row["_series"])
        layers = rows["layer"].dropna()
        heads = rows["head"].dropna()
        series.append(Series(
            key=row["_series"], analysis=row["analysis"], metric=row["metric"], variant=row["_variant"],
            has_layer=bool(len(layers)), has_head=bool(len(heads)),
            n_layers=int(layers.nunique()), n_heads=int(heads.nunique()),
        ))

    # one row per checkpoint
    first = frame.drop_duplicates("_id").set_index("_id")
    checkpoints = pd.DataFrame({"_id": first.index, "_label": first["_label"].values, "_group": first["_group"].values,
                                "checkpoint": first["checkpoint"].values, "weight_decay": first["weight_decay"].values})
    for column in hyper_all:
        checkpoints[column] = first[column].values
    trained = frame[~frame["_baseline"]]
    loss_sources = {}
    for name, fallback in LOSS_COLUMNS.items():
        from_metric = trained[trained["metric"] == name]
        preferred = from_metric[from_metric["analysis"] == "overfit"]
        from_metric = preferred if len(preferred) else from_metric
        values = from_metric.groupby("_id")["value"].mean().reindex(checkpoints["_id"]).to_numpy()
        used = []
        if np.isfinite(values).any():
            used.append(f"metric {name}")
        if fallback in checkpoints:
            fb = pd.to_numeric(checkpoints[fallback], errors="coerce").to_numpy(dtype=float)
            if np.isnan(values).any() and np.isfinite(fb[np.isnan(values)]).any():
                used.append(f"column {fallback}")
            values = np.where(np.isnan(values), fb, values)
        checkpoints[name] = values
        loss_sources[name] = " and ".join(used)
    sort_columns = ([group_by] if group_by else []) + ["weight_decay", "_label"]
    checkpoints = checkpoints.sort_values(sort_columns, kind="stable", na_position="last").reset_index(drop=True)

    shown = [c for c in hyper_all if c not in LOSS_COLUMNS.values()]
    hyper = [c for c in shown if checkpoints[c].astype(str).nunique() > 1 or c == group_by]
    shared = {c: checkpoints[c].iloc[0] for c in shown if c not in hyper}

    scores = trained.pivot_table(index="_id", columns="_series", values="value", aggfunc="mean", sort=False)
    scores = scores.reindex(index=checkpoints["_id"], columns=[s.key for s in series if s.key in scores.columns])

    groups = list(dict.fromkeys(checkpoints["_group"])) if group_by else [""]
    return Prepared(
        rows=frame, checkpoints=checkpoints, hyper=hyper, shared=shared, extras=extras, series=series,
        scores=scores, group_by=group_by, groups=groups, run_infos=run_infos, sources=sources, loss_sources=loss_sources,
    )
