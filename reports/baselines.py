"""What a metric's trained values must clear: its declared baselines, compared checkpoint by checkpoint.

A metric's declaration (:mod:`plastiscope.metrics`) names its baselines: a constant (chance
AUC 0.5, the uniform attention pattern's normalised entropy 1.0, zero selectivity) or the rows
of a baseline model in the same series (``init="random"``: a randomly initialised copy;
``init="majority"``: the majority-class predictor), with the same task, pooling, layer and
head columns.

Per checkpoint, the trained rows are averaged over the units (layer, head) the baseline also
has (every unit when the baseline's rows have no layer or head), their 95 % intervals with them
(the mean of the rows' ``ci_low`` and of their ``ci_high``); the baseline rows likewise. A
checkpoint *clears* a baseline when the two are apart on the baseline's side
(:meth:`plastiscope.metrics.Baseline.side_for`: declared, or the metric's better direction:
higher, the trained interval's low end above the baseline's high end; lower, the reverse; no
better direction, apart either way); a constant is an interval of zero width, and a value
without an interval is its own interval. A checkpoint that does not clear a baseline is
*indistinguishable* from it (its interval overlaps the baseline's or contains the constant),
and the page flags it.

A line of the report (a series in one group) *clears* its baselines when more than half of its
checkpoints clear every baseline that was measured: a mechanism whose metric does not clear its
baseline is never said to hold (:mod:`.verdict`). A declared baseline without rows in the
results is reported as not measured and decides nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from plastiscope.metrics import Baseline, Metric
from plastiscope.reports.frame import Prepared


@dataclass
class Comparison:
    """One series against one declared baseline, per checkpoint (arrays ``[checkpoint]``, NaN where not compared).

    ``value``/``low``/``high``: the trained rows' mean and mean interval over the shared units;
    ``base``/``base_low``/``base_high``: the baseline's; ``cleared``: 1.0 where the checkpoint
    clears the baseline, 0.0 where it does not, NaN where there is nothing to compare.
    ``better``: the metric's better direction; ``measured``: False when the baseline has no rows in these results.
    """

    baseline: Baseline
    better: str | None
    measured: bool
    value: np.ndarray
    low: np.ndarray
    high: np.ndarray
    base: np.ndarray
    base_low: np.ndarray
    base_high: np.ndarray
    cleared: np.ndarray

    @property
    def label(self) -> str:
        """How the page names the baseline."""
        return self.baseline.name


@dataclass
class Check:
    """A report line (one series in one group) against its declared baselines."""

    comparisons: list[Comparison] = field(default_factory=list)
    checkpoints: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # [checkpoint] the line's checkpoints

    @property
    def measured(self) -> list[Comparison]:
        """The comparisons whose baseline was measured (a constant always is)."""
        return [c for c in self.comparisons if c.measured]

    def counts(self, comparison: Comparison) -> tuple[int, int]:
        """``(cleared, compared)`` checkpoints of the line for one baseline."""
        cleared = comparison.cleared[self.checkpoints]
        compared = np.isfinite(cleared)
        return int((cleared[compared] == 1.0).sum()), int(compared.sum())

    @property
    def clears(self) -> bool:
        """More than half of the line's compared checkpoints clear every measured baseline (True without any)."""
        for c in self.measured:
            cleared, compared = self.counts(c)
            if compared and 2 * cleared <= compared:
                return False
        return True

    def indistinguishable(self, prep: Prepared) -> dict[str, list[str]]:
        """Baseline label -> labels of the line's checkpoints that do not clear it."""
        out = {}
        for c in self.measured:
            flagged = np.flatnonzero(self.checkpoints & (c.cleared == 0.0))
            if len(flagged):
                out[c.label] = [str(v) for v in prep.labels[flagged]]
        return out

    def parts(self) -> list[tuple[Comparison, str]]:
        """Each baseline with its text: ``"above the random-init model: 3 of 3 checkpoints"``, or that it was not measured."""
        out = []
        for c in self.comparisons:
            if not c.measured:
                out.append((c, f"{c.label}: not in these results"))
                continue
            cleared, compared = self.counts(c)
            if compared:
                side = c.baseline.side_for(c.better)
                out.append((c, f"{'apart from' if side == 'apart' else side} the {c.label}: {cleared} of {compared} checkpoints"))
        return out

    def sentence(self) -> str:
        """Every baseline's text (:meth:`parts`) joined by ``"; "``; empty without baselines."""
        return "; ".join(text for _, text in self.parts())


def _side_clear(side: str, low: np.ndarray, high: np.ndarray, base_low: np.ndarray, base_high: np.ndarray) -> np.ndarray:
    """1.0 where the trained interval lies on ``side`` of the baseline's ("above", "below", "apart"), 0.0 where not, NaN without values."""
    above = low > base_high
    below = high < base_low
    apart = above if side == "above" else below if side == "below" else (above | below)
    out = np.where(apart, 1.0, 0.0)
    valid = np.isfinite(low) & np.isfinite(high) & np.isfinite(base_low) & np.isfinite(base_high)
    return np.where(valid, out, np.nan)


def _unit_means(prep: Prepared, key: str, mask_rows: np.ndarray) -> pd.DataFrame:
    """Mean value and interval of the series' selected rows per (checkpoint, layer, head); a missing interval is the value."""
    r = prep.series_rows(key).select(mask_rows)
    low = np.where(np.isfinite(r.ci_low), r.ci_low, r.value)
    high = np.where(np.isfinite(r.ci_high), r.ci_high, r.value)
    frame = pd.DataFrame({"ck": r.ck, "layer": np.nan_to_num(r.layer, nan=-1.0), "head": np.nan_to_num(r.head, nan=-1.0),
                          "value": r.value, "low": low, "high": high})
    return frame.groupby(["ck", "layer", "head"], as_index=False)[["value", "low", "high"]].mean()


def _per_checkpoint(n: int, frame: pd.DataFrame, columns: tuple[str, ...]) -> list[np.ndarray]:
    """``[checkpoint]`` arrays of ``columns`` averaged per checkpoint (NaN where a checkpoint has no row)."""
    means = frame.groupby("ck")[list(columns)].mean()
    out = []
    for column in columns:
        values = np.full(n, np.nan)
        values[means.index.to_numpy(dtype=int)] = means[column].to_numpy(dtype=float)
        out.append(values)
    return out


def compare(prep: Prepared, key: str, declaration: Metric | None) -> list[Comparison]:
    """The series ``key`` against each baseline its declaration names (empty without a declaration or baselines)."""
    if declaration is None or not declaration.baselines:
        return []
    n = len(prep.checkpoints)
    rows = prep.series_rows(key)
    trained = _unit_means(prep, key, ~rows.baseline)
    out = []
    for baseline in declaration.baselines:
        if baseline.value is not None:
            value, low, high = _per_checkpoint(n, trained, ("value", "low", "high"))
            constant = np.full(n, float(baseline.value))
            base = base_low = base_high = np.where(np.isfinite(value), constant, np.nan)
            measured = True
        else:
            mine = _unit_means(prep, key, rows.baseline & (rows.baseline_label == baseline.init))
            measured = len(mine) > 0
            whole = len(mine) > 0 and bool((mine["layer"] == -1).all() and (mine["head"] == -1).all())
            joined = (trained.merge(mine.drop(columns=["layer", "head"]), on="ck", suffixes=("", "_base")) if whole  # one row: all units
                      else trained.merge(mine, on=["ck", "layer", "head"], suffixes=("", "_base")))
            value, low, high, base, base_low, base_high = _per_checkpoint(
                n, joined, ("value", "low", "high", "value_base", "low_base", "high_base"))
        cleared = _side_clear(baseline.side_for(declaration.better), low, high, base_low, base_high)
        out.append(Comparison(baseline, declaration.better, measured, value, low, high, base, base_low, base_high, cleared))
    return out


def check(prep: Prepared, key: str, group: str = "") -> Check:
    """The series ``key`` in ``group`` against its declared baselines (its declaration: ``prep.declarations``)."""
    s = prep.series_by_key(key)
    declaration = prep.declarations.lookup(s.metric, s.analysis)
    in_group = (prep.checkpoints["_group"] == group).to_numpy() if prep.group_by else np.ones(len(prep.checkpoints), bool)
    return Check(compare(prep, key, declaration), in_group & prep.has_x)


def checkpoint_intervals(prep: Prepared, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(value, low, high) [checkpoint]``: each checkpoint's trained rows averaged over its units (layers, heads), with the
    mean of their 95 % intervals; ``low``/``high`` are NaN where the rows carry no interval."""
    rows = prep.series_rows(key)
    r = rows.select(~rows.baseline)
    n = len(prep.checkpoints)
    missing = ~(np.isfinite(r.ci_low) & np.isfinite(r.ci_high))
    frame = pd.DataFrame({"ck": r.ck, "value": r.value, "low": r.ci_low, "high": r.ci_high, "missing": missing.astype(float)})
    value, low, high, some_missing = _per_checkpoint(n, frame, ("value", "low", "high", "missing"))
    incomplete = ~(some_missing == 0.0)  # a checkpoint with a row without an interval gets none
    return value, np.where(incomplete, np.nan, low), np.where(incomplete, np.nan, high)
