"""What a sweep of a few configurations and one seed can still answer.

- :func:`choice_table` — *which metric would have chosen the winner?* For every metric
  measured before fine-tuning that has a better direction, and validation loss: the
  configuration it picks, the outcome's regret of that pick (top-1; and top-k: the outcome of
  the best of its k best minus the best outcome), and leave-one-configuration-out agreement
  (drop each configuration in turn: does the metric still pick the outcome's winner among the
  rest). Regret is the decision regret of Wang et al. 2025 (arXiv 2512.24503), in the
  outcome's units, signed so that 0 is no loss and more is worse. Ties are broken against the
  metric (:data:`TIE_RULE`).
- :func:`noise_table` — *does the ordering survive measurement noise?* Each checkpoint's
  metric carries a 95 % interval over its units (documents, folds, directions:
  ``ci_low``/``ci_high``); every checkpoint's score is redrawn from a normal with
  sd = (ci_high − ci_low) / 3.92 (:data:`NOISE_MODEL`; the schema keeps no unit-level draws),
  and the configuration means, their ordering, the best configuration and Spearman's rho with
  the axis are recomputed per draw. This is measurement noise only: seed-to-seed variation
  needs replicate seeds and is unknown without them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from plastiscope.reports.correlate import (
    VAL_LOSS,
    VAL_LOSS_KEY,
    axis_values,
    better_direction,
    is_predictor,
    val_loss_key,
    values_of,
)
from plastiscope.reports.frame import VAL_LOSS_COLUMN, Prepared
from plastiscope.stats import cluster_means, spearman_rows

N_DRAWS = 2000
TOP_K = 2
TIE_RULE = ("configurations that tie on a metric (equal to 9 significant digits) are counted as its pick in the order of "
            "their outcome, worst first: a tie never lowers the regret")
NOISE_MODEL = ("parametric: each checkpoint's score redrawn from a normal with sd = (ci_high − ci_low) / 3.92 of its rows' "
               "95 % intervals (rows of one checkpoint, e.g. layers, taken to share their error: the mean of their sds); "
               "the results keep no unit-level draws; a checkpoint without an interval is held at its value")


def _direction_of(prep: Prepared, key: str) -> str | None:
    metric = VAL_LOSS if key == VAL_LOSS_KEY else prep.series_by_key(key).metric
    return better_direction(prep, metric)


def _config_values(prep: Prepared, key: str, mask: np.ndarray) -> pd.Series:
    """Mean over replicate seeds per configuration (index ``_config``) of a series within ``mask``."""
    values = values_of(prep, key)
    ck = prep.checkpoints
    keep = mask & prep.has_x & np.isfinite(values)
    return pd.Series(values[keep]).groupby(ck["_config"].to_numpy()[keep]).mean()


def _goodness(values: np.ndarray, better: str) -> np.ndarray:
    return np.asarray(values, dtype=float) * (1.0 if better == "higher" else -1.0)


def pick_order(metric: np.ndarray, metric_better: str, outcome: np.ndarray, outcome_better: str) -> np.ndarray:
    """Indices of configurations from the metric's best to its worst; a tie (9 significant digits) puts the worse outcome first."""
    good_m = _goodness(metric, metric_better)
    finite = np.abs(good_m[np.isfinite(good_m)])
    scale = finite.max() if len(finite) else 0.0
    if scale > 0:  # 9 significant digits of the largest value (a metric that is 0 everywhere is one tie as it stands)
        good_m = np.round(good_m / scale, 9)
    good_o = _goodness(outcome, outcome_better)
    return np.lexsort((good_o, -good_m))  # last key first: metric goodness descending, then outcome goodness ascending


def regret_of(order: np.ndarray, outcome: np.ndarray, outcome_better: str, k: int) -> float:
    """The best outcome overall minus the best outcome among the first ``k`` of ``order``, in the outcome's units (>= 0)."""
    good = _goodness(outcome, outcome_better)
    return float(good.max() - good[order[:k]].max())


def leave_one_out(metric: np.ndarray, metric_better: str, outcome: np.ndarray, outcome_better: str) -> tuple[int, int]:
    """``(agreements, drops)``: dropping each configuration in turn, does the metric's pick have the best outcome of the rest?"""
    n = len(metric)
    agree = 0
    for drop in range(n):
        rest = np.arange(n) != drop
        order = pick_order(metric[rest], metric_better, outcome[rest], outcome_better)
        agree += regret_of(order, outcome[rest], outcome_better, 1) <= 1e-12 * max(1.0, float(np.abs(outcome[rest]).max()))
    return agree, n


def choice_table(prep: Prepared, outcome_key: str, top_k: int = TOP_K) -> pd.DataFrame:
    """One row per (group, metric measured before fine-tuning with a better direction, and validation loss), best first.

    Columns: group, series, better, n_configs, pick (the configuration it picks), pick_outcome,
    winner (the outcome's best configuration), winner_outcome, regret (top-1, outcome units),
    top_k, regret_k, loo_agree, loo_n, tied (configurations tied for the metric's best).
    Order: regret, then regret_k, then leave-one-out agreement (most first), then the name.
    ``attrs``: outcome, outcome_better, undirected (series left out: no better direction).
    """
    columns = ["group", "series", "better", "n_configs", "pick", "pick_outcome", "winner", "winner_outcome", "regret", "top_k",
               "regret_k", "loo_agree", "loo_n", "tied"]
    if not outcome_key:
        return pd.DataFrame(columns=columns)
    outcome_better = _direction_of(prep, outcome_key) or "lower"
    keys = [s.key for s in prep.series if s.key in prep.scores and is_predictor(prep, s)]
    if val_loss_key(prep) == VAL_LOSS_KEY and np.isfinite(prep.checkpoints[VAL_LOSS_COLUMN].to_numpy(dtype=float)).any():
        keys.append(VAL_LOSS_KEY)
    labels = prep.checkpoints.drop_duplicates("_config").set_index("_config")["_config_label"]
    records, undirected = [], []
    for group in prep.groups:
        mask = (prep.checkpoints["_group"] == group).to_numpy()
        outcome = _config_values(prep, outcome_key, mask)
        for key in keys:
            better = _direction_of(prep, key)
            if better not in ("higher", "lower"):
                undirected.append(key)
                continue
            metric = _config_values(prep, key, mask)
            common = outcome.index.intersection(metric.index)
            if len(common) < 2:
                continue
            m, o = metric.loc[common].to_numpy(float), outcome.loc[common].to_numpy(float)
            order = pick_order(m, better, o, outcome_better)
            winner = int(np.argmax(_goodness(o, outcome_better)))
            k = min(top_k, len(common) - 1)
            top = _goodness(m[order[0]], better)
            tied = int(np.sum(np.isclose(_goodness(m, better), top, rtol=1e-9, atol=0.0)))
            agree, drops = leave_one_out(m, better, o, outcome_better) if len(common) >= 3 else (0, 0)
            records.append({"group": group, "series": key if key != VAL_LOSS_KEY else VAL_LOSS_KEY, "better": better,
                            "n_configs": len(common), "pick": labels[common[order[0]]], "pick_outcome": o[order[0]],
                            "winner": labels[common[winner]], "winner_outcome": o[winner],
                            "regret": regret_of(order, o, outcome_better, 1), "top_k": k,
                            "regret_k": regret_of(order, o, outcome_better, k), "loo_agree": agree, "loo_n": drops, "tied": tied})
    table = pd.DataFrame.from_records(records, columns=columns)
    if len(table):
        table["_loo"] = -(table["loo_agree"] / table["loo_n"].where(table["loo_n"] > 0)).fillna(0.0)
        table = table.sort_values(["group", "regret", "regret_k", "_loo", "series"], kind="stable").drop(columns="_loo")
        table = table.reset_index(drop=True)
    table.attrs.update(outcome=outcome_key, outcome_better=outcome_better, undirected=sorted(set(undirected)))
    return table


def checkpoint_sd(prep: Prepared, key: str) -> np.ndarray:
    """``[checkpoint]``: the sd of a checkpoint's score from its trained rows' 95 % intervals (NaN without one).

    sd = (ci_high − ci_low) / 3.92 per row (a normal 95 % interval is ±1.96 sd); a checkpoint's
    sd is the mean over its rows with an interval (rows taken to share their error).
    """
    out = np.full(len(prep.checkpoints), np.nan)
    if key == VAL_LOSS_KEY or key not in prep.scores:
        return out
    rows = prep.series_rows(key)
    rows = rows.select(~rows.baseline & np.isfinite(rows.value))
    sd = (rows.ci_high - rows.ci_low) / 3.92
    finite = np.isfinite(sd)
    if finite.any():
        sums = np.bincount(rows.ck[finite], weights=sd[finite], minlength=len(out))
        counts = np.bincount(rows.ck[finite], minlength=len(out))
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return out


@dataclass(frozen=True)
class NoiseRobustness:
    """How one metric's configurations fare under measurement noise (see :func:`measurement_noise`)."""

    n_configs: int
    n_checkpoints: int
    with_interval: int  # checkpoints whose score has an interval (the others are held at their value)
    order_kept: float  # share of draws with the observed ordering of configurations
    best_kept: float  # share of draws with the observed best configuration (NaN without a better direction)
    best: str  # the observed best configuration ("" without a better direction)
    rho: float  # Spearman rho of the configuration means with the axis (NaN on a categorical axis)
    rho_low: float  # 2.5 % and 97.5 % of rho over the draws
    rho_high: float
    sign_kept: float  # share of draws whose rho has the observed sign


def measurement_noise(prep: Prepared, key: str, mask: np.ndarray, better: str | None, n_draws: int = N_DRAWS,
                      seed: int = 0) -> NoiseRobustness | None:
    """Redraw every checkpoint's score of ``key`` within ``mask`` from its interval (:data:`NOISE_MODEL`) and recompute.

    None with fewer than 2 configurations; the shares are NaN when no checkpoint has an interval.
    """
    values = values_of(prep, key)
    keep = mask & prep.has_x & np.isfinite(values)
    if not keep.any():
        return None
    configs = prep.checkpoints["_config"].to_numpy()[keep]
    uniques, codes = np.unique(configs, return_inverse=True)
    k = len(uniques)
    if k < 2:
        return None
    sd = np.nan_to_num(checkpoint_sd(prep, key)[keep], nan=0.0)
    rng = np.random.default_rng(seed)
    draws = values[keep][None, :] + rng.standard_normal((n_draws, int(keep.sum()))) * sd[None, :]  # [draw, checkpoint]
    observed = cluster_means(values[keep][None, :], codes, k)[0]  # [config]
    means = cluster_means(draws, codes, k)  # [draw, config]
    order = np.argsort(observed, kind="stable")
    order_kept = float(np.mean((np.argsort(means, axis=1, kind="stable") == order[None, :]).all(axis=1)))
    best_kept, best = math.nan, ""
    if better in ("higher", "lower"):
        top = int(np.argmax(_goodness(observed, better)))
        best_kept = float(np.mean(np.argmax(_goodness(means, better), axis=1) == top))
        best = str(prep.checkpoints.loc[prep.checkpoints["_config"] == uniques[top], "_config_label"].iloc[0])
    rho = rho_low = rho_high = sign_kept = math.nan
    if not prep.categorical and k >= 3:
        x = cluster_means(np.asarray(axis_values(prep)[keep], dtype=float)[None, :], codes, k)[0]
        rho = float(spearman_rows(x, observed))
        rhos = spearman_rows(x[None, :], means)
        if math.isfinite(rho) and np.isfinite(rhos).any():
            rho_low, rho_high = (float(v) for v in np.nanquantile(rhos, [0.025, 0.975]))
            sign_kept = float(np.mean(np.sign(rhos) == np.sign(rho)))
    if not (sd > 0).any():  # nothing to redraw: the draws only repeat the observation
        order_kept = best_kept = rho_low = rho_high = sign_kept = math.nan
    return NoiseRobustness(k, int(keep.sum()), int((sd > 0).sum()), order_kept, best_kept, best, rho, rho_low, rho_high, sign_kept)


def noise_table(prep: Prepared, lines: list[tuple[str, str, str]], n_draws: int = N_DRAWS, seed: int = 0) -> pd.DataFrame:
    """One row per headline line ``(group, label, series key)`` with :class:`NoiseRobustness` columns and ``seeds``.

    ``seeds``: what is known of seed-to-seed variation (``"unknown: one seed per
    configuration"`` without replicates).
    """
    low, high = prep.seeds_per_configuration
    seeds = "unknown: one seed per configuration" if high < 2 else (
        f"measured by {low}-{high} seeds per configuration (their ranges in the summary and the figures)" if low != high
        else f"measured by {low} seeds per configuration (their ranges in the summary and the figures)")
    records = []
    for group, label, key in lines:
        mask = (prep.checkpoints["_group"] == group).to_numpy()
        result = measurement_noise(prep, key, mask, _direction_of(prep, key), n_draws, seed)
        if result is None:
            continue
        records.append({"group": group, "label": label, "series": key, **result.__dict__, "seeds": seeds})
    return pd.DataFrame.from_records(records)


# --- HTML ------------------------------------------------------------------------------------------

def _pct(share: float) -> str:
    return f"{100 * share:.3g} %" if math.isfinite(share) else "—"


def _num(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and math.isfinite(value) else "—"


def config_html(row) -> str:
    """A configuration's mean with its seed interval, as escaped HTML."""
    from plastiscope.reports.markup import esc

    value = f"{row['value']:.4g}"
    if row["band"] == "range":
        value += f" (range of {row['k']} seeds {row['low']:.4g}–{row['high']:.4g})"
    elif row["band"] == "bootstrap":
        value += f" (95 % bootstrap over {row['k']} seeds {row['low']:.4g}–{row['high']:.4g})"
    return f"<code>{esc(row['_config_label'])}</code> {esc(value)}"


def _overlap(a, b) -> bool:
    return all(math.isfinite(v) for v in (a["low"], a["high"], b["low"], b["high"])) and a["low"] <= b["high"] and b["low"] <= a["high"]


def _noise_of(noise: pd.DataFrame | None, group: str, key: str) -> dict | None:
    if noise is None or noise.empty:
        return None
    found = noise[(noise["group"] == group) & (noise["series"] == key)]
    return found.iloc[0].to_dict() if len(found) else None


def _unmeasured(prep: Prepared, group: str, means: pd.DataFrame) -> list[str]:
    """Labels of the group's configurations (with an axis value) missing from an outcome's configuration ``means``."""
    ck = prep.checkpoints[(prep.checkpoints["_group"] == group).to_numpy() & prep.has_x]
    missing = ck[~ck["_config"].isin(means["_config"])].drop_duplicates("_config")
    return [str(label) for label in missing["_config_label"]]


def summary_html(prep: Prepared, best, noise: pd.DataFrame | None = None) -> str:
    """One group's summary: one best-after line per outcome, the best by mean rank, one best-before line, one trade-off.

    ``best`` is a :class:`~.verdict.Best`; ``noise`` the :func:`noise_table`, read for how often
    each best survives measurement noise when there is one seed per configuration.
    """
    from plastiscope.reports.markup import esc
    from plastiscope.reports.verdict import tradeoff

    group = f"<b>{esc(best.group)}</b>: " if prep.group_by else ""
    one_seed = prep.seeds_per_configuration[1] < 2
    parts = []
    for key, (means, better) in best.outcomes.items():
        rows = means.to_dict("records")
        chosen = " — the outcome this report ranks by" if key == best.outcome and len(best.outcomes) > 1 else ""
        line = (f"<p class='ps-best'>{group}<b>Best after fine-tuning</b> by <code>{esc(key)}</code> ({esc(better)} is better"
                f"{esc(chosen)}): {config_html(rows[0])}")
        if len(rows) > 1:
            note = ""
            if _overlap(rows[0], rows[1]):
                note = "; their seed ranges overlap, so the order is not settled"
            elif one_seed:
                n = _noise_of(noise, best.group, key)
                if n and n.get("with_interval", 0):
                    note = f"; best in {_pct(n['best_kept'])} of measurement-noise draws, seed-to-seed variation unknown"
                else:
                    note = "; no measurement interval and one seed: how settled this is is unknown"
            line += f"; next {config_html(rows[1])}{esc(note)}"
        unmeasured = _unmeasured(prep, best.group, means)
        if unmeasured:
            more = f" (+{len(unmeasured) - 4} more)" if len(unmeasured) > 4 else ""
            line += (f"; best of the {len(rows)} configurations it measures, not of "
                     + ", ".join(f"<code>{esc(u)}</code>" for u in unmeasured[:4]) + f"{esc(more)} (no value)")
        parts.append(line + ".</p>")
    if best.mean_rank is not None and not best.mean_rank.empty:
        top = best.mean_rank.iloc[0]
        parts.append(f"<p class='ps-best'>{group}<b>Best by mean rank</b> over the {len(best.outcomes)} outcomes: "
                     f"<code>{esc(top['_config_label'])}</code> (mean rank {top['mean_rank']:.3g} of {len(best.mean_rank)}; "
                     "ties broken by the first outcome).</p>")
    if best.before:
        items = [f"by {esc(name)}: {config_html(means.iloc[0])}" for name, means in best.before.items()]
        parts.append(f"<p class='ps-before'>{group}<b>Best before fine-tuning</b> {'; '.join(items)}.</p>")
        name, means = next(iter(best.before.items()))
        first = means.iloc[0]
        found = tradeoff(best, name)
        top = best.after.iloc[0]
        head = f"<p class='ps-tradeoff'>{group}"
        if len(found):
            worse = found.iloc[0]
            ref = best.after.set_index("_config").loc[first["_config"]]
            others = f" ({len(found) - 1} more such configuration(s))" if len(found) > 1 else ""
            if _overlap(means.set_index("_config").loc[worse["_config"]], first) or _overlap(worse, ref):
                note = "; their seed ranges overlap before or after, so it is not settled"
            elif one_seed:
                note = "; one seed per configuration, so whether it holds across seeds is unknown"
            else:
                note = ""
            parts.append(head + f"<b class='ps-flag'>Trade-off</b> (Han et al.) by <code>{esc(best.outcome)}</code>: "
                         f"<code>{esc(worse['_config_label'])}</code> is worse before fine-tuning ({esc(name)} {worse['before']:.4g} "
                         f"vs {first['value']:.4g}) but better after it ({worse['value']:.4g} vs {ref['value']:.4g}){esc(note)}"
                         f"{esc(others)}.</p>")
        elif first["_config"] == top["_config"]:
            parts.append(head + f"No trade-off by <code>{esc(best.outcome)}</code>: the best before fine-tuning (by {esc(name)}) "
                         "is also the best after it.</p>")
        else:
            parts.append(head + f"No trade-off by <code>{esc(best.outcome)}</code>: no configuration is worse before "
                         f"(by {esc(name)}) yet better after it.</p>")
    return "".join(parts)


def choice_section(prep: Prepared, table: pd.DataFrame | None) -> str:
    """The table a team reads to decide what to measure next time: each metric's pick, its regret, leave-one-out agreement."""
    from plastiscope.reports.markup import esc
    from plastiscope.reports.page import table as html_table

    head = "<section id='choice'><h2>Which metric would have chosen the winner?</h2>"
    if table is None or table.empty:
        return head + "<p class='ps-muted'>No outcome, or no metric with a better direction measured before fine-tuning.</p></section>"
    grouped = bool(prep.group_by)
    outcome, better = table.attrs.get("outcome", ""), table.attrs.get("outcome_better", "")
    k = int(table["top_k"].max())
    sentences = []
    for group, part in table.groupby("group", sort=False):
        where = f"{esc(group)}: " if grouped else ""
        zero = int((part["regret"] <= 0).sum())
        sentences.append(f"{where}{zero} of {len(part)} metrics pick the outcome's winner (regret 0)"
                         + (f", {int(((part['regret'] <= 0) & (part['loo_agree'] == part['loo_n'])).sum())} of them in every "
                            "leave-one-out subset." if zero else "."))
        val = part[part["series"].isin([val_loss_key(prep), VAL_LOSS_KEY])]
        if len(val):
            v = val.iloc[0]
            sentences.append(f"{where}validation loss picks <code>{esc(v['pick'])}</code>: regret {_num(v['regret'])}, "
                             f"regret@{v['top_k']} {_num(v['regret_k'])}, leave-one-out {v['loo_agree']}/{v['loo_n']}.")
    undirected = table.attrs.get("undirected", [])
    intro = (f"<p>For each metric measured before fine-tuning (and validation loss): the configuration it would pick by its "
             f"better direction, and the regret of that pick in <code>{esc(outcome)}</code> ({esc(better)} is better): the "
             f"best outcome minus the pick's outcome, in the outcome's units (0: it picks the winner; Wang et al. 2025). "
             f"regret@{k}: the same for the best of its {k} best. Leave-one-out: dropping each configuration in turn, how often "
             f"it still picks the outcome's winner among the rest. Ties: {esc(TIE_RULE)}. Rows: least regret first, then "
             f"regret@{k}, then leave-one-out agreement, then name. {' '.join(sentences)}"
             + (f" {len(undirected)} series have no better direction (mechanism descriptors) and pick nothing; the predictor "
                "table ranks them by association." if undirected else "") + "</p>")
    columns = ([("group", "")] if grouped else []) + [
        ("series", "analysis.metric [variant]"), ("better", "its better direction"), ("configurations", ""),
        ("picks", "its best configuration"), ("pick's outcome", ""), ("winner", "the outcome's best"), ("winner's outcome", ""),
        ("regret", "outcome units; 0 = the winner"), (f"regret@{k}", f"best of its top {k}"),
        ("leave-one-out", "picks the winner of the rest"),
        ("tied", "configurations tied for its best")]
    rows = [([r["group"]] if grouped else []) + [
        r["series"], r["better"], r["n_configs"], r["pick"], _num(r["pick_outcome"]), r["winner"], _num(r["winner_outcome"]),
        _num(r["regret"]), _num(r["regret_k"]), f"{r['loo_agree']}/{r['loo_n']}" if r["loo_n"] else "—", r["tied"]]
        for r in table.to_dict("records")]
    return head + intro + html_table(columns, rows, "choice-table", caption="Click a column header to sort") + "</section>"


def noise_section(prep: Prepared, table: pd.DataFrame | None) -> str:
    """Per headline metric: how often the best configuration, the ordering and the sign of ρ survive measurement noise."""
    from plastiscope.reports.markup import esc
    from plastiscope.reports.page import table as html_table

    head = "<section id='noise'><h2>Does the order survive measurement noise?</h2>"
    if table is None or table.empty:
        return head + "<p class='ps-muted'>No headline metric with 2 or more configurations.</p></section>"
    grouped = bool(prep.group_by)
    seeds = table["seeds"].iloc[0]
    intro = (f"<p>Measurement noise only, {N_DRAWS} draws: {esc(NOISE_MODEL)}. Seed-to-seed variation: {esc(seeds)}. "
             "— where no checkpoint has an interval (nothing to redraw). Columns: how often the best configuration and the "
             "full ordering of configurations are the observed ones, and "
             f"Spearman ρ with {esc(prep.x)} over the draws (2.5–97.5 %), with how often it keeps its sign.</p>")
    columns = ([("group", "")] if grouped else []) + [
        ("headline metric", ""), ("series", ""), ("configurations", ""), ("checkpoints with an interval", ""),
        ("best", "observed best configuration"), ("best kept", "share of draws"), ("order kept", "share of draws"),
        (f"ρ with {prep.x}", "observed"), ("ρ under noise", "2.5–97.5 % of draws"), ("sign kept", "share of draws")]
    rows = []
    for r in table.to_dict("records"):
        spread = f"{r['rho_low']:+.2f} to {r['rho_high']:+.2f}" if math.isfinite(r["rho_low"]) else "—"
        rows.append(([r["group"]] if grouped else []) + [
            r["label"], r["series"], r["n_configs"], f"{r['with_interval']} of {r['n_checkpoints']}", r["best"] or "—",
            _pct(r["best_kept"]), _pct(r["order_kept"]), f"{r['rho']:+.2f}" if math.isfinite(r["rho"]) else "—", spread,
            _pct(r["sign_kept"])])
    return head + intro + html_table(columns, rows, "noise-table", sortable=False) + "</section>"
