"""The one long results schema every analysis returns, and the store that caches it.

Every analysis returns rows of::

    checkpoint, weight_decay, <other hyperparameters>, analysis, metric,
    layer, head, value, ci_low, ci_high, n   (+ task, pooling, ... where relevant)

``layer`` and ``head`` are nullable integers (``pd.Int64Dtype``), numbered from 0 as in
TransformerLens hook names (``blocks.{layer}...``); they are empty where a metric is not
per layer or per head. Reports read only this schema, so a new metric appears in reports
without report code changes.

The store keeps one parquet file per (checkpoint content hash, analysis, config) under
``RESULTS_DIR/cache/``; ``metrics.parquet`` and ``metrics.csv`` are the concatenation, so a
rerun after a crash or Ctrl-C recomputes nothing that is already done.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from plastiscope.checkpoint import Checkpoint

CORE_COLUMNS = ["analysis", "metric", "layer", "head", "value", "ci_low", "ci_high", "n"]
ID_COLUMNS = ["checkpoint", "weight_decay"]


def make_frame(checkpoint: Checkpoint, analysis: str, records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Turn metric records of one checkpoint into rows of the results schema.

    Each record needs ``metric`` and ``value``; it may carry ``layer``, ``head``,
    ``ci_low``, ``ci_high``, ``n`` and any analysis-specific columns (``task``,
    ``pooling``, ...). The checkpoint's name, weight decay and other hyperparameters
    are added to every row.
    """
    rows = []
    for record in records:
        if "metric" not in record or "value" not in record:
            raise ValueError(f"a result record needs 'metric' and 'value', got {sorted(record)}")
        row = {"checkpoint": checkpoint.name, "weight_decay": checkpoint.weight_decay}
        row.update({k: v for k, v in checkpoint.hyperparameters.items() if k not in ("weight_decay", "label", "path")})
        row["analysis"] = analysis
        row.update({"layer": None, "head": None, "ci_low": math.nan, "ci_high": math.nan, "n": None})
        row.update(record)
        rows.append(row)
    return tidy(pd.DataFrame(rows))


def tidy(frame: pd.DataFrame) -> pd.DataFrame:
    """Order the schema's columns first and give them their dtypes (nullable ints for layer/head/n)."""
    for column in ID_COLUMNS + CORE_COLUMNS:
        if column not in frame:
            frame[column] = None
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
        return self.cache / f"{analysis}-{checkpoint_hash[:16]}-{config_hash(config)}.parquet"

    def get(self, analysis: str, checkpoint_hash: str, config: Mapping[str, Any]) -> pd.DataFrame | None:
        path = self.key_path(analysis, checkpoint_hash, config)
        return pd.read_parquet(path) if path.exists() else None

    def put(self, analysis: str, checkpoint_hash: str, config: Mapping[str, Any], frame: pd.DataFrame) -> None:
        path = self.key_path(analysis, checkpoint_hash, config)
        tmp = path.with_suffix(".tmp")
        frame.to_parquet(tmp, index=False)
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
