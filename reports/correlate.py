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
- **With the outcome**: the chosen one (:func:`chosen_outcome`; by default the first metric
  present whose declaration has role ``outcome``, the loss after fine-tuning, else the first
  imported outcome, :mod:`.outcomes`): Spearman's rho of each series' configuration means with
  the outcome's, the same interval, a permutation p-value within seed blocks. Metrics measured
  after fine-tuning (roles ``outcome``, ``outcome_accuracy`` and ``after_finetuning``) are not
  predictors; validation loss (role ``validation_loss``) is ranked like any metric. Roles are
  read from the declarations recorded with the results (:func:`~.frame.metrics_with_role`).
- Intervals: a cluster bootstrap over fewer than
  :data:`~plastiscope.stats.MIN_BOOTSTRAP_CLUSTERS` configurations gives none, and the
  table says why (``*_note``).
- Which way a metric is better: :func:`better_direction`, the one place that reads it.
- Benjamini-Hochberg q-values across every series (the long list), separately for the axis
  and the outcome; the headline panels use Holm (:mod:`.verdict`).

Computed within each group of a comparison; baseline rows (``init="random"``) are left out.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from plastiscope.reports.frame import VAL_LOSS_COLUMN, Prepared, Series, metrics_with_role
from plastiscope.reports.outcomes import OUTCOME_ANALYSIS
from plastiscope.stats import NO_ASSOCIATION, Association, benjamini_hochberg, cluster_association

OUTCOME = "outcome"  # role: the loss after fine-tuning, the default outcome
OUTCOME_ACCURACY = "outcome_accuracy"  # role: accuracy after fine-tuning, a further outcome
VALIDATION_LOSS = "validation_loss"  # role: the loss before fine-tuning (the trade-off's other side)
AFTER_FINETUNING = "after_finetuning"  # role: another quantity measured after fine-tuning
MEASURED_AFTER = (OUTCOME, OUTCOME_ACCURACY, AFTER_FINETUNING)  # roles that are no predictor of the outcome
AFTER_SUFFIX, BEFORE_SUFFIX = "_after", "_before"  # how analyses name one quantity after and before fine-tuning
VAL_LOSS = VAL_LOSS_COLUMN  # the metric name of rows read from the trainer's final validation loss
VAL_LOSS_KEY = "validation loss"  # the key of validation loss when no series carries it (trainer's final_val_loss)
ALPHA = 0.05
N_RESAMPLES = 1000
N_PERMUTATIONS = 10000


def series_with_role(prep: Prepared, role: str) -> list[Series]:
    """The scored series (imported outcomes aside) whose metric is declared with ``role``, in declaration order."""
    scored = [s for s in prep.series if s.key in prep.scores and s.analysis != OUTCOME_ANALYSIS]
    order = {pair: i for i, pair in enumerate(metrics_with_role(prep.declarations, role, ((s.analysis, s.metric) for s in scored)))}
    return sorted((s for s in scored if (s.analysis, s.metric) in order), key=lambda s: order[(s.analysis, s.metric)])


def role_of(prep: Prepared, series: Series) -> str:
    """The declared role of a series' metric (``""`` when undeclared or an imported outcome)."""
    if series.analysis == OUTCOME_ANALYSIS:
        return ""
    declared = prep.declarations.lookup(series.metric, series.analysis)
    return declared.role if declared is not None else ""


def outcome_series(prep: Prepared, role: str = OUTCOME) -> list[Series]:
    """The series declared with ``role`` (default: the outcome, the loss after fine-tuning; one per downstream task)."""
    return series_with_role(prep, role)


def before_finetuning(prep: Prepared, outcome: Series) -> Series | None:
    """The series measuring before fine-tuning what an outcome measures after it, or None.

    The counterpart of a declared outcome ``<stem>_after`` is ``<stem>_before`` of the same
    analysis and variant (the analyses' naming of a quantity measured on both sides). For an
    imported outcome (no counterpart of its own): the first declared outcome's counterpart.
    """
    declared = outcome_series(prep)
    if outcome.analysis != OUTCOME_ANALYSIS:
        declared = [s for s in declared if s.analysis == outcome.analysis and s.variant == outcome.variant]
    for after in declared:
        if not after.metric.endswith(AFTER_SUFFIX):
            continue
        before = after.metric[:-len(AFTER_SUFFIX)] + BEFORE_SUFFIX
        found = [s for s in prep.series if s.key in prep.scores and s.metric == before
                 and s.analysis == after.analysis and s.variant == after.variant]
        if found:
            return found[0]
    return None


def better_direction(prep: Prepared, metric: str, directions: dict[str, str] | None = None) -> str | None:
    """Which way ``metric`` is better: ``"higher"``, ``"lower"`` or None (a mechanism without a better direction).

    In order: ``directions`` (the caller's overrides), the direction the rows record (an
    imported outcome's file or name, :mod:`.outcomes`), the direction the metric's analysis
    declares (``prep.declarations``, :mod:`plastiscope.metrics`); None for an undeclared metric.
    """
    if directions and metric in directions:
        return directions[metric]
    if metric in prep.directions:
        return prep.directions[metric]
    declared = prep.declarations.lookup(metric)
    return declared.better if declared is not None else None


def is_predictor(prep: Prepared, series: Series) -> bool:
    """Whether a series is measured before fine-tuning (so it may predict the outcome): not imported, no after-fine-tuning role."""
    return series.analysis != OUTCOME_ANALYSIS and role_of(prep, series) not in MEASURED_AFTER


def outcome_keys(prep: Prepared) -> list[str]:
    """Every outcome series: the chosen one (:func:`chosen_outcome`) first, then imported ones, then the declared outcomes
    (role ``outcome``, in declaration order), then accuracy after fine-tuning (role ``outcome_accuracy``)."""
    imported = [s for s in prep.series if s.key in prep.scores and s.analysis == OUTCOME_ANALYSIS]
    found = imported + outcome_series(prep) + outcome_series(prep, OUTCOME_ACCURACY)
    chosen = chosen_outcome(prep)
    return list(dict.fromkeys(([chosen] if chosen else []) + [s.key for s in found]))


def chosen_outcome(prep: Prepared) -> str:
    """The key of the outcome a report ranks by: ``prep.outcome_choice`` (a series key or metric name), else the first
    declared outcome present (role ``outcome``), else the first imported outcome, else the first accuracy after
    fine-tuning (role ``outcome_accuracy``); ``""`` without one."""
    imported = [s for s in prep.series if s.key in prep.scores and s.analysis == OUTCOME_ANALYSIS]
    declared = outcome_series(prep)
    accuracy = outcome_series(prep, OUTCOME_ACCURACY)
    choice = prep.outcome_choice
    if choice:
        found = declared + accuracy + imported  # a metric name shared by a declared and an imported outcome: the declared one
        matches = [s for s in found if s.key == choice] or [s for s in found if s.metric == choice]
        if not matches:
            raise ValueError(f"--outcome {choice!r}: not an outcome of these results; outcomes: "
                             f"{[s.key for s in imported + declared + accuracy] or 'none'} (import one with --outcomes FILE)")
        return matches[0].key
    first = (declared or imported or accuracy)[:1]
    return first[0].key if first else ""


def val_loss_key(prep: Prepared) -> str:
    """The key under which validation loss appears in tables: the first series declared with role ``validation_loss``,
    else :data:`VAL_LOSS_KEY` (the trainer's final validation loss)."""
    found = series_with_role(prep, VALIDATION_LOSS)
    return found[0].key if found else VAL_LOSS_KEY


def values_of(prep: Prepared, key: str) -> np.ndarray:
    """``[checkpoint]`` scores of a series key, or the checkpoints' validation loss for :data:`VAL_LOSS_KEY`."""
    if key == VAL_LOSS_KEY:
        return prep.checkpoints[VAL_LOSS_COLUMN].to_numpy(dtype=float)
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
            f"p_{prefix}_perfect": a.p_perfect, f"{prefix}_note": a.no_interval if math.isfinite(a.estimate) else ""}


def association_table(prep: Prepared, n_resamples: int = N_RESAMPLES, n_permutations: int = N_PERMUTATIONS,
                      directions: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per (group, series): association with the axis and with the outcome (module docstring).

    Columns: group, series, analysis, metric, variant, better, n_configs, n_checkpoints, axis
    (``rho`` or ``eta2``), x_effect (+ _low, _high), p_x_effect, p_x_effect_perfect, q_x
    (Benjamini-Hochberg), outcome (the chosen outcome's series key or ""), rho_outcome (+ _low,
    _high), p_rho_outcome, p_rho_outcome_perfect, q_outcome, predictor (False for outcomes and
    metrics measured after fine-tuning); ``x_effect_note`` / ``rho_outcome_note`` say why an
    interval is missing. ``directions`` overrides metrics' better direction by name.
    """
    directions = directions or {}
    outcome_key = chosen_outcome(prep)
    keys = [(s.key, s.analysis, s.metric, s.variant, is_predictor(prep, s)) for s in prep.series if s.key in prep.scores]
    val_key = val_loss_key(prep)
    if val_key == VAL_LOSS_KEY and np.isfinite(prep.checkpoints[VAL_LOSS_COLUMN].to_numpy(dtype=float)).any():
        keys.append((VAL_LOSS_KEY, "trainer", VAL_LOSS, "", True))
    records = []
    for group in prep.groups:
        in_group = (prep.checkpoints["_group"] == group).to_numpy()
        outcome = values_of(prep, outcome_key) if outcome_key else None
        for key, analysis, metric, variant, predictor in keys:
            values = values_of(prep, key)
            if not np.isfinite(values[in_group]).any():
                continue
            a = with_axis(prep, values, in_group, n_resamples, n_permutations)
            o = with_outcome(prep, values, outcome, in_group, n_resamples, n_permutations) \
                if outcome is not None and predictor else NO_ASSOCIATION
            record = {"group": group, "series": key, "analysis": analysis, "metric": metric, "variant": variant,
                      "better": better_direction(prep, metric, directions) or "",
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


TIE_RULE = "ties in |ρ| broken by q, then by the series' name"


def ranked_predictors(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of :func:`association_table` with an outcome association, best predictors first.

    Order within each group: |rho| (largest first), then the q-value, then the series' name
    (:data:`TIE_RULE`), so ``rank`` is 1, 2, 3, ... with no shared rank; ``tied`` counts the
    other series with the same |rho| (rounded to 9 digits). ``verdict``: ``"predicts"`` where
    the Benjamini-Hochberg q-value is below :data:`ALPHA`, else ``"inconclusive"``.
    """
    if table.empty or "rho_outcome" not in table:
        return table.iloc[0:0]
    ranked = table[table["predictor"] & table["rho_outcome"].notna()].copy()
    ranked["_abs"] = -ranked["rho_outcome"].abs().round(9)
    ranked["_q"] = ranked["q_outcome"].fillna(np.inf)
    ranked = ranked.sort_values(["group", "_abs", "_q", "series"], kind="stable")
    ranked.insert(0, "rank", ranked.groupby("group").cumcount() + 1)
    ranked.insert(1, "tied", ranked.groupby(["group", "_abs"])["series"].transform("size") - 1)
    ranked = ranked.drop(columns=["_abs", "_q"])
    ranked["verdict"] = np.where(ranked["q_outcome"] < ALPHA, "predicts", "inconclusive")
    return ranked.reset_index(drop=True)


def fmt_p(p: float) -> str:
    """A p-value as text: 2 significant digits, ``"–"`` when undefined."""
    if not math.isfinite(p):
        return "–"
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"
