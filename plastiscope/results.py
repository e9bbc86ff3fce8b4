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

The store keeps one parquet file ("piece") per (checkpoint content, analysis, cache key) under
``RESULTS_DIR/cache/``, so a rerun after a crash or Ctrl-C recomputes nothing that is already
done. A piece carries no identity columns (they are stamped from the sweep as it is now) but
records, in its parquet metadata, the identity its checkpoint had when it was written.
``metrics.parquet`` / ``metrics.csv`` hold every valid piece of the folder (in the CSV, text a
spreadsheet would run as a formula starts with ``'``: :func:`spreadsheet_safe`): running one more
analysis into a results folder adds to what is there. For a checkpoint of the current run
(matched by content), an analysis the run requested is the run's outcome (a fresh or cached
piece, or a row of ``failures.csv``: a piece computed earlier with other options, data or
precision is not shown beside it), an analysis it did not request keeps its latest piece.
Checkpoints not in the current run keep their latest piece per analysis, under the identity
they had; a checkpoint whose name is in the run but whose content changed loses its old pieces.
An unreadable piece (truncated, empty) is a cache miss with a warning naming the file; pieces
are written under unique temporary names and renamed, and the combined files are written
under a lock, so two processes may share one results folder.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from plastiscope.hashing import atomic_write, config_hash

if TYPE_CHECKING:
    from plastiscope.checkpoint import Checkpoint

log = logging.getLogger("plastiscope")

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


def stamp(frame: pd.DataFrame, checkpoint: Checkpoint | Mapping[str, Any]) -> pd.DataFrame:
    """``frame`` with the identity columns of ``checkpoint`` as it is now (old ones replaced), tidied;
    ``checkpoint`` may also be an identity itself (a dict of :func:`identity`)."""
    ident = dict(checkpoint) if isinstance(checkpoint, Mapping) else identity(checkpoint)
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


def _plain(value: Any) -> Any:
    """numpy scalars as Python ones, anything else as text: for JSON metadata."""
    return value.item() if hasattr(value, "item") else str(value)


class StoreError(ValueError):
    """A results folder cannot be used: the message names it and the fix."""


def check_results_folder(root: str | Path) -> Path:
    """``root`` as a path; :class:`StoreError` when it names an existing file (a results folder is a folder)."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise StoreError(f"{root}: a file, not a results folder; pass a folder (it is created if missing)")
    return root


class ResultsStore:
    """Results of a sweep on disk: one cached parquet piece per (checkpoint, analysis, cache key).

    ``RESULTS_DIR/cache/{analysis}-{checkpoint hash}-{key hash}.parquet`` holds one finished
    piece; :meth:`write` combines this run's results with every other valid piece into
    ``metrics.parquet`` and ``metrics.csv`` (the rules are in this module's docstring);
    ``failures.csv`` lists the (checkpoint, analysis) pairs of the run that failed.
    """

    def __init__(self, root: str | Path):
        from filelock import FileLock

        self.root = check_results_folder(root)
        self.cache = self.root / "cache"
        try:
            self.cache.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"{self.root}: cannot create the results folder ({err}); pass a writable folder") from None
        self.lock = FileLock(str(self.root / ".lock"))
        self.seen: dict[str, tuple[str, dict[str, Any]]] = {}  # checkpoint name -> (content hash, identity)

    def key_path(self, analysis: str, checkpoint_hash: str, config: Mapping[str, Any]) -> Path:
        """The cache file of one (analysis, checkpoint, config) piece."""
        return self.cache / f"{analysis}-{checkpoint_hash[:16]}-{config_hash(config)}.parquet"

    def note(self, checkpoint: Checkpoint, checkpoint_hash: str) -> None:
        """Record that this run saw ``checkpoint`` with this content (see :meth:`write`)."""
        self.seen[checkpoint.name] = (checkpoint_hash, identity(checkpoint))

    def get(self, analysis: str, checkpoint_hash: str, config: Mapping[str, Any]) -> pd.DataFrame | None:
        """The cached piece of one (analysis, checkpoint, config), or None when it is not there or unreadable
        (a truncated or empty file: a warning names it, and it is computed again)."""
        path = self.key_path(analysis, checkpoint_hash, config)
        if not path.exists():
            return None
        read = self._read(path)
        if read is None:
            return None
        frame, meta = read
        key = json.loads(json.dumps(dict(config), sort_keys=True, default=_plain))
        if meta.get("key", key) != key or meta.get("checkpoint_hash", checkpoint_hash) != checkpoint_hash:
            return None  # another configuration under the same short file name
        return frame

    def put(self, analysis: str, checkpoint_hash: str, config: Mapping[str, Any], frame: pd.DataFrame,
            identity: Mapping[str, Any] | None = None) -> None:
        """Store one finished piece without the ``identity`` columns (stamped anew on reading), recording
        ``identity`` in the file's metadata; written under a unique temporary name and renamed."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        ident = dict(identity or {})
        path = self.key_path(analysis, checkpoint_hash, config)
        meta = {"analysis": analysis, "checkpoint_hash": checkpoint_hash, "key": dict(config), "identity": ident,
                "written": time.time()}
        table = pa.Table.from_pandas(frame.drop(columns=[c for c in ident if c in frame.columns]), preserve_index=False)
        schema_meta = dict(table.schema.metadata or {})
        schema_meta[b"plastiscope"] = json.dumps(meta, sort_keys=True, default=_plain).encode()
        atomic_write(path, lambda tmp: pq.write_table(table.replace_schema_metadata(schema_meta), tmp))  # never half-written

    def _read(self, path: Path, metadata_only: bool = False) -> tuple[pd.DataFrame | None, dict[str, Any]] | None:
        """``(frame, metadata)`` of a piece, or None (with a warning naming it) when it cannot be read."""
        import pyarrow.parquet as pq

        try:
            if metadata_only:
                schema, frame = pq.read_schema(path), None
            else:
                table = pq.read_table(path)
                schema, frame = table.schema, table.to_pandas()
            meta = json.loads((schema.metadata or {}).get(b"plastiscope", b"{}"))
        except Exception as err:  # unreadable: recompute, never fail on a cache
            log.warning("%s: unreadable cache piece (%s: %s); it is computed again", path, type(err).__name__, err)
            return None
        return frame, meta

    def pieces(self) -> list[tuple[Path, dict[str, Any]]]:
        """``(file, metadata)`` of every readable piece that records its identity."""
        found = []
        for path in sorted(self.cache.glob("*.parquet")):
            read = self._read(path, metadata_only=True)
            if read is not None and (read[1].get("identity") or {}).get("checkpoint") and read[1].get("checkpoint_hash"):
                found.append((path, read[1]))
        return found

    def collect(self, current: Mapping[str, tuple[str | None, Mapping[str, Any]]], analyses: Iterable[str]) -> list[pd.DataFrame]:
        """The stored pieces that belong in ``metrics.parquet`` beside a run's own results, stamped.

        ``current``: the run's checkpoints, name -> (content hash or None when it failed before
        hashing, identity); ``analyses``: those the run requested. See the module docstring.
        """
        analyses = set(analyses)
        by_hash: dict[str, list[Mapping[str, Any]]] = {}
        for content, ident in current.values():
            if content is not None:
                by_hash.setdefault(content, []).append(ident)
        chosen: dict[tuple[str, str, str], tuple[float, Path, dict[str, Any]]] = {}
        for path, meta in self.pieces():
            content, analysis, name = meta["checkpoint_hash"], meta.get("analysis"), meta["identity"].get("checkpoint")
            if content in by_hash:
                if analysis in analyses:
                    continue  # the run's own outcome for this pair stands
                group = ("content", content, analysis)
            elif name in current:
                continue  # a checkpoint of this run whose content changed: its old results are gone
            else:
                group = ("name", name, analysis)
            written = float(meta.get("written", 0.0))
            if group not in chosen or written > chosen[group][0]:
                chosen[group] = (written, path, meta)
        frames = []
        for (kind, content, _), (_, path, meta) in sorted(chosen.items()):
            read = self._read(path)
            if read is None:
                continue
            for ident in by_hash[content] if kind == "content" else [meta["identity"]]:
                frames.append(stamp(read[0], ident))
        return frames

    def write(self, frame: pd.DataFrame, failures: pd.DataFrame | None = None,
              current: Mapping[str, tuple[str | None, Mapping[str, Any]]] | None = None, analyses: Iterable[str] = ()) -> Path:
        """Write ``metrics.parquet`` / ``metrics.csv`` and ``failures.csv`` (when there are failures), atomically
        and under the folder's lock. With ``current`` (a run's checkpoints, see :meth:`collect`) the other valid
        pieces of the folder are added to ``frame``; without it, ``frame`` is written as it is."""
        with self.lock:
            parts = [frame] + (self.collect(current, analyses) if current is not None else [])
            parts = [p for p in parts if len(p)] or [frame]
            combined = tidy(pd.concat(parts, ignore_index=True)) if len(parts) > 1 else frame
            self._replace("metrics.parquet", lambda tmp: combined.to_parquet(tmp, index=False))
            self._replace("metrics.csv", lambda tmp: spreadsheet_safe(combined).to_csv(tmp, index=False))
            if failures is not None and len(failures):
                self._replace("failures.csv", lambda tmp: spreadsheet_safe(failures).to_csv(tmp, index=False))
            elif (self.root / "failures.csv").exists():
                (self.root / "failures.csv").unlink()
        return self.root / "metrics.parquet"

    def _replace(self, name: str, writer: Any) -> None:
        """Write ``root/name`` through ``writer(tmp)`` and an atomic rename."""
        atomic_write(self.root / name, writer)


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` for a CSV file: text a spreadsheet would run as a formula gets a leading ``'``.

    The OWASP rule against CSV injection: a text cell or column name starting with ``=``, ``+``,
    ``-``, ``@``, a tab or a carriage return (a manifest label ``=HYPERLINK(...)``) is prefixed
    with an apostrophe, which spreadsheets show as text. Numbers (``-0.5``), and text that is a
    plain number, stay as they are; ``metrics.parquet`` always keeps the true values.
    """
    out = frame.copy()
    for column in out.columns:
        if not (pd.api.types.is_numeric_dtype(out[column]) or pd.api.types.is_bool_dtype(out[column])):
            out[column] = out[column].astype(object).map(_inert)
    out.columns = [_inert(c) for c in out.columns]
    return out


def _inert(value: Any) -> Any:
    if not isinstance(value, str) or not value.startswith(FORMULA_STARTS):
        return value
    if value[0] not in "\t\r":
        try:
            float(value)
            return value  # a number written as text: a spreadsheet reads it as that number
        except ValueError:
            pass
    return "'" + value


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
