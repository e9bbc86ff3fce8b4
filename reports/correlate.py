"""Correlation summary: how each metric moves with weight decay, plasticity and validation loss.

- Spearman's rank correlation rho (Spearman 1904) of each series' checkpoint scores with weight
  decay, and with ``plasticity_gain`` when the results have it, with a percentile-bootstrap 95 %
  interval over checkpoints (``plastiscope.stats.bootstrap_ci``, 1000 resamples, seed 0).
- Kendall's tau (Kendall 1938) of each series with validation loss, and, for metrics with a known
  "better" direction (``metrics_doc``), whether ranking checkpoints best-first by the metric
  agrees with ranking them by validation loss (lowest first): *opposite* when the agreement tau
  is negative, *best differs* when the top checkpoint differs, else *agrees*.

Computed within each group of a comparison; baseline rows (``init="random"``) are left out.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

from plastiscope.reports.frame import Prepared
from plastiscope.reports.metrics_doc import describe_metric
from plastiscope.stats import bootstrap_ci, spearman_rows

PLASTICITY_METRIC = "plasticity_gain"
N_RESAMPLES = 1000


def _spearman_rows(pairs: np.ndarray) -> np.ndarray:
    """Spearman rho of ``pairs [resample, unit, 2]`` -> ``[resample]`` (NaN where a column is constant)."""
    return spearman_rows(pairs[..., 0], pairs[..., 1])


def spearman_ci(x: np.ndarray, y: np.ndarray, n_resamples: int = N_RESAMPLES, seed: int = 0) -> tuple[float, float, float, int]:
    """Spearman rho of paired samples ``x [n]``, ``y [n]`` with a bootstrap 95 % CI over pairs.

    Pairs with a NaN are dropped. Returns ``(rho, low, high, n)``; rho is NaN with fewer than
    three pairs or a constant side, the interval NaN with fewer than four pairs.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    pairs = np.stack([x[keep], y[keep]], axis=1)  # [unit, 2]
    n = len(pairs)
    if n < 3:
        return math.nan, math.nan, math.nan, n
    rho, low, high = bootstrap_ci(pairs, statistic=_spearman_rows, n_resamples=n_resamples, seed=seed)
    if n < 4:
        low = high = math.nan
    return float(rho), float(low), float(high), n


def _goodness(values: np.ndarray, better: str) -> np.ndarray:
    return values if better == "higher" else -values


def ranking_verdict(val_loss: np.ndarray, values: np.ndarray, better: str | None, labels: list[str]) -> dict:
    """Compare ranking by validation loss (lowest first) with ranking by a metric (best first)."""
    keep = np.isfinite(val_loss) & np.isfinite(values)
    out = {"tau_val_loss": math.nan, "tau_agreement": math.nan, "best_val_loss": "", "best_metric": "", "verdict": ""}
    if keep.sum() < 2:
        return out
    v, m = val_loss[keep], values[keep]
    kept = [lab for lab, k in zip(labels, keep) if k]
    if np.ptp(v) > 0 and np.ptp(m) > 0:
        out["tau_val_loss"] = float(kendalltau(v, m).statistic)
    if better not in ("higher", "lower"):
        return out
    goodness = _goodness(m, better)
    out["best_val_loss"] = kept[int(np.argmin(v))]
    out["best_metric"] = kept[int(np.argmax(goodness))]
    if np.ptp(v) > 0 and np.ptp(goodness) > 0:
        out["tau_agreement"] = float(kendalltau(-v, goodness).statistic)
    if out["tau_agreement"] < 0:
        out["verdict"] = "opposite"
    elif out["best_val_loss"] != out["best_metric"] and np.ptp(goodness) > 0:
        out["verdict"] = "best differs"
    else:
        out["verdict"] = "agrees"
    return out


def correlation_table(prep: Prepared, n_resamples: int = N_RESAMPLES, directions: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per (group, series): Spearman with weight decay / plasticity, Kendall with val loss.

    ``directions`` overrides the "better" direction of metrics by name (``"higher"``/``"lower"``).
    Columns: group, series, analysis, metric, variant, better, n, rho_wd, rho_wd_low,
    rho_wd_high, rho_plasticity(+_low, _high), tau_val_loss, tau_agreement, best_val_loss,
    best_metric, verdict.
    """
    directions = directions or {}
    plasticity_keys = [s.key for s in prep.series if s.metric == PLASTICITY_METRIC]
    records = []
    for group in prep.groups:
        ckpts = prep.checkpoints[prep.checkpoints["_group"] == group] if prep.group_by else prep.checkpoints
        scores = prep.scores.reindex(ckpts["_id"])
        wd = ckpts["weight_decay"].to_numpy(dtype=float)
        val_loss = ckpts["val_loss"].to_numpy(dtype=float)
        labels = ckpts["_label"].tolist()
        plasticity = scores[plasticity_keys].mean(axis=1).to_numpy(dtype=float) if plasticity_keys else None
        for s in prep.series:
            if s.key not in scores:
                continue
            values = scores[s.key].to_numpy(dtype=float)
            if not np.isfinite(values).any():
                continue
            better = directions.get(s.metric, describe_metric(s.metric).better)
            rho, low, high, n = spearman_ci(wd, values, n_resamples=n_resamples)
            record = {"group": group, "series": s.key, "analysis": s.analysis, "metric": s.metric, "variant": s.variant,
                      "better": better or "", "n": n, "rho_wd": rho, "rho_wd_low": low, "rho_wd_high": high}
            if plasticity is not None:
                if s.metric == PLASTICITY_METRIC:
                    record.update(rho_plasticity=math.nan, rho_plasticity_low=math.nan, rho_plasticity_high=math.nan)
                else:
                    r, lo, hi, _ = spearman_ci(plasticity, values, n_resamples=n_resamples)
                    record.update(rho_plasticity=r, rho_plasticity_low=lo, rho_plasticity_high=hi)
            if s.metric == "val_loss":
                record.update(tau_val_loss=math.nan, tau_agreement=math.nan, best_val_loss="", best_metric="", verdict="")
            else:
                record.update(ranking_verdict(val_loss, values, better, labels))
            records.append(record)
    return pd.DataFrame.from_records(records)


def disagreements(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``correlation_table`` whose ranking disagrees with validation loss (opposite first)."""
    if table.empty or "verdict" not in table:
        return table.iloc[0:0]
    out = table[table["verdict"].isin(["opposite", "best differs"])]
    return out.assign(_o=out["verdict"].map({"opposite": 0, "best differs": 1})).sort_values(["_o", "tau_agreement"]).drop(columns="_o")
