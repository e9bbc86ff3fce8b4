"""The one long results schema every analysis returns, and the store that caches it.

Every analysis returns rows of::

    checkpoint, weight_decay, <other hyperparameters>, analysis, metric, variant,
    layer, head, value, ci_low, ci_high, n   (+ variant columns and per-row details)

What the columns mean, for every metric:

- ``checkpoint`` and the hyperparameters (``weight_decay``, ``learning_rate``, ``seed``, ...)
  identify the model; they always come from the sweep as it is now (a cached piece never
  carries them).
- ``analysis``, ``metric``: what was measured; each metric's docstring says how.
- ``variant``: which series of the metric the row belongs to, written from the analysis's
  declared variant columns (``"task=pos, pooling=mean"``; empty when it has none). Those
  columns are kept too; every other extra column (``iterations``, ``radius``, ``selected_lr``,
  ...) is a per-row detail, never a series of its own.
- ``layer``, ``head``: nullable integers numbered from 0 as in TransformerLens hook names
  (``blocks.{layer}...``), empty where a metric is not per layer or per head.
- ``value``: the estimate.
- ``ci_low``, ``ci_high``: a 95 % interval of ``value``: a percentile bootstrap over the units
  that ``n`` counts unless the metric's docstring says otherwise; NaN where there is none.
  Nothing else (a convergence range, a min-max) is ever written there.
- ``n``: the number of independent units behind ``value`` (documents, folds, probe vectors,
  directions), as the metric's docstring names them.
- ``init``: on rows of a baseline model of the same architecture (``"random"``: random
  initialisation) the baseline's name; ``"trained"`` on the checkpoint's own rows.

Reports read only this schema, so a new metric appears in reports without report code changes.
The store keeps one parquet file per (checkpoint content, analysis, configuration) under
``RESULTS_DIR/cache/``; ``metrics.parquet`` and ``metrics.csv`` are the concatenation, so a
rerun after a crash or Ctrl-C recomputes nothing that is already done.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from plastiscope.checkpoint import Checkpoint

CORE_COLUMNS = ["analysis", "metric", "variant", "layer", "head", "value", "ci_low", "ci_high", "n"]
ID_COLUMNS = ["checkpoint", "weight_decay"]
NOT_STAMPED = ("label", "path")  # hyperparameters that name a checkpoint rather than describe it


def identity(checkpoint: Checkpoint) -> dict[str, Any]:
    """The columns that identify ``checkpoint`` in every row: its name and hyperparameters."""
    hyper = {k: v for k, v in checkpoint.hyperparameters.items() if k not in NOT_STAMPED}
    return {"checkpoint": checkpoint.name, **hyper, "weight_decay": checkpoint.weight_decay}


def variant_label(row: Mapping[str, Any], variants: Sequence[str]) -> str:
    """``"task=pos, pooling=mean"`` from a row's values of the ``variants`` columns (missing ones left out)."""
    parts = []
    for column in variants:
        value = row.get(column)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        parts.append(f"{column}={value}")
    return ", ".join(parts)


def make_frame(
    checkpoint: Checkpoint, analysis: str, records: Iterable[Mapping[str, Any]], variants: Sequence[str] = ()
) -> pd.DataFrame:
    """Turn metric records of one checkpoint into rows of the results schema.

    Each record needs ``metric`` and ``value``; it may carry ``layer``, ``head``, ``ci_low``,
    ``ci_high``, ``n``, the analysis's ``variants`` columns and per-row details. The
    ``variant`` column is written from ``variants``; the checkpoint's identity is added.
    """
    rows = []
    for record in records:
        if "metric" not in record or "value" not in record:
            raise ValueError(f"a result record needs 'metric' and 'value', got {sorted(record)}")
        row = {"analysis": analysis, "layer": None, "head": None, "ci_low": math.nan, "ci_high": math.nan, "n": None}
        row.update(record)
        row["variant"] = variant_label(row, variants)
        rows.append(row)
    return stamp(pd.DataFrame(rows), checkpoint)


def stamp(frame: pd.DataFrame, checkpoint: Checkpoint) -> pd.DataFrame:
    """``frame`` with the identity columns of ``checkpoint`` as it is now (old ones replaced), tidied."""
    ident = identity(checkpoint)
    frame = frame.drop(columns=[c for c in ident if c in frame.columns])
    for column, value in reversed(list(ident.items())):
        frame.insert(0, column, [value] * len(frame))
    return tidy(frame)


def tidy(frame: pd.DataFrame) -> pd.DataFrame:
    """Order the schema's columns first and give them their dtypes (nullable ints for layer/head/n)."""
    for column in ID_COLUMNS + CORE_COLUMNS:
        if column not in frame:
            frame[column] = "" if column == "variant" else None
    frame["variant"] = frame["variant"].fillna("").astype(str)
    for column in ("layer", "head", "n"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    for column in ("weight_decay", "value", "ci_low", "ci_high"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    hyper = [c for c in frame.columns if c not in ID_COLUMNS + CORE_COLUMNS]
    return frame[ID_COLUMNS + hyper + CORE_COLUMNS].reset_index(drop=True)


def config_hash(config: Mapping[str, Any]) -> str:
    """A short stable hash of an analysis configuration (JSON with sorted keys)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class ResultsStore:
    """Results of a sweep on disk: one cached parquet per (checkpoint, analysis, config).

    ``RESULTS_DIR/cache/{analysis}-{checkpoint hash}-{config hash}.parquet`` holds one
    finished piece; :meth:`write` concatenates all pieces into ``metrics.parquet`` and
    ``metrics.csv``; ``failures.csv`` lists checkpoints that could not be analysed.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.cache = self.root / "cache"
        self.cache.mkdir(parents=True, exist_ok=True)

    def key_path(self, analysis: str, checkpoint_hash: str, config: Mapping[str, Any]) -> Path:
        """The cache file of one (analysis, checkpoint, config) piece."""
        return self.cache / f"{analysis}-{checkpoint_hash[:16]}-{config_hash(config)}.parquet"

    def get(self, analysis: str, checkpoint_hash: str, config: Mapping[str, Any]) -> pd.DataFrame | None:
        """The cached piece of one (analysis, checkpoint, config), or None when it was not computed yet."""
        path = self.key_path(analysis, checkpoint_hash, config)
        return pd.read_parquet(path) if path.exists() else None

    def put(self, analysis: str, checkpoint_hash: str, config: Mapping[str, Any], frame: pd.DataFrame,
            identity_columns: Sequence[str] = ()) -> None:
        """Store one finished piece, without the ``identity_columns`` (they are stamped anew on reading)."""
        path = self.key_path(analysis, checkpoint_hash, config)
        tmp = path.with_suffix(".tmp")
        frame.drop(columns=[c for c in identity_columns if c in frame.columns]).to_parquet(tmp, index=False)
        tmp.replace(path)  # atomic: a crash never leaves a half-written piece

    def write(self, frame: pd.DataFrame, failures: pd.DataFrame | None = None) -> Path:
        """Write the combined results (and failures, if any) next to the cache."""
        frame.to_parquet(self.root / "metrics.parquet", index=False)
        frame.to_csv(self.root / "metrics.csv", index=False)
        if failures is not None and len(failures):
            failures.to_csv(self.root / "failures.csv", index=False)
        elif (self.root / "failures.csv").exists():
            (self.root / "failures.csv").unlink()
        return self.root / "metrics.parquet"


def load_results(path: str | Path) -> pd.DataFrame:
    """Read a results folder (or a ``metrics.parquet`` / ``metrics.csv`` file) into the schema."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / "metrics.parquet", path / "metrics.csv"]
        path = next((p for p in candidates if p.exists()), candidates[0])
    if not path.exists():
        raise FileNotFoundError(f"{path}: no results here; run `plastiscope analyze ... --out {path.parent}` first")
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    return tidy(frame)
