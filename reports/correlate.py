"""A report's statistics: how each series moves with the swept hyperparameter, and how well it predicts the outcome.

The units are checkpoints; a checkpoint's score is the mean of its trained rows
(:mod:`.frame`). Checkpoints that share a configuration (all hyperparameters but ``seed``)
are replicates: every statistic works on configuration means, with intervals and tests that
keep replicates together (:func:`plastiscope.stats.cluster_association`).

- **With the axis** (``x``, weight decay by default): Spearman's rho of the configurations'
  mean score with ``x``, a two-stage cluster bootstrap 95 % interval over configurations, and
  a permutation p-value permuting ``x`` within blocks of checkpoints that share a seed (and any
  other swept hyperparameter, so only ``x`` is tested). A categorical axis (e.g. a schedule)
  gets eta squared, the share of variance between its values, with the same permutation test.
- **With the outcome**, the downstream loss after fine-tuning (``downstream_loss_after``,
  plasticity analysis; lower is better): Spearman's rho of each series' configuration means
  with the outcome's, the same interval, a permutation p-value within seed blocks. Metrics
  measured after fine-tuning (the outcome itself, the gain, the selection loss, the
  displacement) are not predictors; validation loss is ranked like any metric.
- Benjamini-Hochberg q-values across every series (the long list), separately for the axis
  and the outcome; the headline panels use Holm (:mod:`.verdict`).

Computed within each group of a comparison; baseline rows (``init="random"``) are left out.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from plastiscope.reports.frame import Prepared, Series
from plastiscope.reports.metrics_doc import describe_metric
from plastiscope.stats import NO_ASSOCIATION, Association, benjamini_hochberg, cluster_association

OUTCOME_METRIC = "downstream_loss_after"
OUTCOME_ACCURACY = "downstream_accuracy_after"
AFTER_FINETUNING = ("downstream_loss_after", "downstream_accuracy_after", "plasticity_gain", "downstream_selection_loss",
                    "finetune_displacement")
VAL_LOSS = "val_loss"
VAL_LOSS_KEY = "validation loss"  # the key of validation loss when no series carries it (trainer's final_val_loss)
ALPHA = 0.05
N_RESAMPLES = 1000
N_PERMUTATIONS = 10000


def outcome_series(prep: Prepared, metric: str = OUTCOME_METRIC) -> list[Series]:
    """The series of ``metric`` (one per downstream task), the plasticity analysis's first."""
    found = [s for s in prep.series if s.metric == metric and s.key in prep.scores]
    return sorted(found, key=lambda s: s.analysis != "plasticity")


def val_loss_key(prep: Prepared) -> str:
    """The key under which validation loss appears in tables: its series, else :data:`VAL_LOSS_KEY`."""
    found = [s for s in prep.series if s.metric == VAL_LOSS and s.key in prep.scores]
    found.sort(key=lambda s: s.analysis != "overfit")
    return found[0].key if found else VAL_LOSS_KEY


def values_of(prep: Prepared, key: str) -> np.ndarray:
    """``[checkpoint]`` scores of a series key, or the checkpoints' validation loss for :data:`VAL_LOSS_KEY`."""
    if key == VAL_LOSS_KEY:
        return prep.checkpoints["val_loss"].to_numpy(dtype=float)
    return prep.score(key)


def axis_values(prep: Prepared) -> np.ndarray:
    """``[checkpoint]`` axis values: floats, or category text for a categorical axis."""
    column = prep.checkpoints["_x"]
    return column.to_numpy(dtype=object) if prep.categorical else column.to_numpy(dtype=float)


def with_axis(prep: Prepared, values: np.ndarray, mask: np.ndarray, n_resamples: int = N_RESAMPLES,
              n_permutations: int = N_PERMUTATIONS) -> Association:
    """Association of ``values [checkpoint]`` with the axis over the checkpoints in ``mask`` (see module docstring)."""
    ck = prep.checkpoints
    mask = mask & prep.has_x & np.isfinite(values)
    if mask.sum() < 3:
        return NO_ASSOCIATION
    return cluster_association(axis_values(prep)[mask], values[mask], ck["_config"].to_numpy()[mask],
                               ck["_block_x"].to_numpy()[mask], categorical=prep.categorical,
                               n_resamples=n_resamples, n_permutations=n_permutations)


def with_outcome(prep: Prepared, values: np.ndarray, outcome: np.ndarray, mask: np.ndarray, n_resamples: int = N_RESAMPLES,
                 n_permutations: int = N_PERMUTATIONS) -> Association:
    """Association of ``values [checkpoint]`` with ``outcome [checkpoint]`` over configurations (see module docstring)."""
    ck = prep.checkpoints
    mask = mask & prep.has_x & np.isfinite(values) & np.isfinite(outcome)
    if mask.sum() < 3:
        return NO_ASSOCIATION
    return cluster_association(values[mask], outcome[mask], ck["_config"].to_numpy()[mask], ck["_block"].to_numpy()[mask],
                               n_resamples=n_resamples, n_permutations=n_permutations)


def _record(prefix: str, a: Association) -> dict:
    return {prefix: a.estimate, f"{prefix}_low": a.low, f"{prefix}_high": a.high, f"p_{prefix}": a.p,
            f"p_{prefix}_perfect": a.p_perfect}


def association_table(prep: Prepared, n_resamples: int = N_RESAMPLES, n_permutations: int = N_PERMUTATIONS,
                      directions: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per (group, series): association with the axis and with the outcome (module docstring).

    Columns: group, series, analysis, metric, variant, better, n_configs, n_checkpoints, axis
    (``rho`` or ``eta2``), x_effect (+ _low, _high), p_x_effect, p_x_effect_perfect, q_x
    (Benjamini-Hochberg), outcome (the outcome's series key or ""), rho_outcome (+ _low,
    _high), p_rho_outcome, p_rho_outcome_perfect, q_outcome, predictor (False for metrics
    measured after fine-tuning). ``directions`` overrides metrics' better direction by name.
    """
    directions = directions or {}
    outcomes = outcome_series(prep)
    outcome_key = outcomes[0].key if outcomes else ""
    keys = [(s.key, s.analysis, s.metric, s.variant) for s in prep.series if s.key in prep.scores]
    val_key = val_loss_key(prep)
    if val_key == VAL_LOSS_KEY and np.isfinite(prep.checkpoints["val_loss"].to_numpy(dtype=float)).any():
        keys.append((VAL_LOSS_KEY, "trainer", VAL_LOSS, ""))
    records = []
    for group in prep.groups:
        in_group = (prep.checkpoints["_group"] == group).to_numpy()
        outcome = values_of(prep, outcome_key) if outcome_key else None
        for key, analysis, metric, variant in keys:
            values = values_of(prep, key)
            if not np.isfinite(values[in_group]).any():
                continue
            a = with_axis(prep, values, in_group, n_resamples, n_permutations)
            predictor = metric not in AFTER_FINETUNING
            o = with_outcome(prep, values, outcome, in_group, n_resamples, n_permutations) \
                if outcome is not None and predictor else NO_ASSOCIATION
            record = {"group": group, "series": key, "analysis": analysis, "metric": metric, "variant": variant,
                      "better": directions.get(metric, describe_metric(metric).better) or "",
                      "n_configs": a.n_clusters, "n_checkpoints": a.n_units, "axis": "eta2" if prep.categorical else "rho",
                      **_record("x_effect", a), "outcome": outcome_key if predictor else "", **_record("rho_outcome", o),
                      "predictor": predictor}
            records.append(record)
    table = pd.DataFrame.from_records(records)
    if table.empty:
        return table
    table["q_x"] = benjamini_hochberg(table["p_x_effect"].to_numpy(dtype=float))
    table["q_outcome"] = benjamini_hochberg(table["p_rho_outcome"].to_numpy(dtype=float))
    return table


def ranked_predictors(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of :func:`association_table` with an outcome association, best predictors first (|rho|, then q).

    Adds ``rank`` (within each group; series with the same |rho| share the best rank) and
    ``verdict``: ``"predicts"`` where the
    Benjamini-Hochberg q-value is below :data:`ALPHA`, else ``"inconclusive"``.
    """
    if table.empty or "rho_outcome" not in table:
        return table.iloc[0:0]
    ranked = table[table["predictor"] & table["rho_outcome"].notna()].copy()
    ranked["_abs"] = -ranked["rho_outcome"].abs().round(9)
    ranked = ranked.sort_values(["group", "_abs", "q_outcome"], kind="stable")
    ranked.insert(0, "rank", ranked.groupby("group")["_abs"].rank(method="min").astype(int))  # ties share the best rank
    ranked = ranked.drop(columns="_abs")
    ranked["verdict"] = np.where(ranked["q_outcome"] < ALPHA, "predicts", "inconclusive")
    return ranked.reset_index(drop=True)


def fmt_p(p: float) -> str:
    """A p-value as text: 2 significant digits, ``"–"`` when undefined."""
    if not math.isfinite(p):
        return "–"
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"
