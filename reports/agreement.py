"""Sweep agreement: does a proxy sweep rank configurations the way a target sweep does?

Small proxy models are used to choose among configurations (data recipes, hyperparameters)
before a large run; Wang et al. 2025 (arXiv 2512.24503) find their rankings agree with large
runs only at a reduced learning rate. Given the results of a proxy sweep and of a target sweep
that share a key column (e.g. ``recipe``), for every metric both measured and for validation
loss:

- the configurations are matched on the key (replicate seeds averaged on each side);
- Spearman's rho between the two sweeps' values of the matched configurations, with a 95 %
  bootstrap interval over configurations and a permutation p-value
  (:func:`plastiscope.stats.cluster_association`, one configuration per cluster);
- the top-k decision regret (Wang et al. 2025): pick the proxy's ``k`` best configurations by
  the metric's better direction; regret = the best target value overall minus the best target
  value among those ``k``, in the target metric's units, signed so that 0 is no loss and more
  is worse. Metrics without a better direction have no regret.

``by`` (a hyperparameter of the proxy, e.g. its learning rate) evaluates each proxy setting on
its own. Errors name the side, the column and the fix: a key missing on one side, no matched
configuration, configurations that match only in part (each unmatched one named, on both
sides), or several checkpoints with one key that differ in more than their seed. Fewer than
:data:`~plastiscope.stats.MIN_BOOTSTRAP_CLUSTERS` matched configurations give rho no interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from plastiscope.reports.correlate import (
    OUTCOME,
    OUTCOME_ACCURACY,
    VAL_LOSS,
    VAL_LOSS_KEY,
    VALIDATION_LOSS,
    better_direction,
    fmt_p,
    role_of,
    val_loss_key,
)
from plastiscope.reports.frame import LOSS_COLUMNS, NOT_CONFIGURATION, VAL_LOSS_COLUMN, Prepared, ResultsInput, prepare, text
from plastiscope.reports.markup import esc
from plastiscope.stats import cluster_association

LOSS_ROLES = (VALIDATION_LOSS, OUTCOME, OUTCOME_ACCURACY)  # declared roles of the rows shown first and drawn
N_RESAMPLES = 1000


def _keys(value: str | Sequence[str]) -> list[str]:
    keys = [k.strip() for k in (value.split(",") if isinstance(value, str) else value) if str(k).strip()]
    if not keys:
        raise ValueError("--key: name at least one column that identifies a configuration in both sweeps")
    return keys


def _side(results: ResultsInput, name: str, keys: list[str], by: str | None) -> Prepared:
    prep = prepare(results)
    source = ", ".join(prep.sources.values())
    columns = list(prep.checkpoints.columns)
    hyper = [c for c in columns if not c.startswith("_") and c != "checkpoint" and c not in LOSS_COLUMNS]
    for column in keys + ([by] if by else []):
        if column not in prep.checkpoints:
            raise ValueError(f"{name} ({source}): no hyperparameter {column!r}; its hyperparameters are {hyper}")
    return prep


def _check_replicates(prep: Prepared, name: str, keys: list[str], by: str | None) -> None:
    """Checkpoints that share the key (and ``by``) must differ only in their seed."""
    ck = prep.checkpoints
    ignore = set(NOT_CONFIGURATION) | set(keys) | {by, "checkpoint", *LOSS_COLUMNS}
    compared = [c for c in ck.columns if not c.startswith("_") and c not in ignore]
    for key, part in ck.groupby(keys + ([by] if by else []), dropna=False, sort=False):
        if len(part) < 2:
            continue
        differ = [c for c in compared if part[c].astype(str).nunique() > 1]
        if differ:
            values = ", ".join(f"{c}={text(v)}" for c, v in zip(keys, key if isinstance(key, tuple) else (key,)))
            hint = f"pass --by {differ[0]} to evaluate each {differ[0]} on its own, or " if name == "proxy" and not by else ""
            raise ValueError(
                f"{name} ({', '.join(prep.sources.values())}): {len(part)} checkpoints share {values} but differ in {differ}; "
                f"replicates differ only in seed: {hint}filter the results to one configuration per key")


def _label(values: tuple) -> str:
    return ", ".join(text(v) or "" for v in values)


def _means(prep: Prepared, keys: list[str], mask: np.ndarray) -> pd.DataFrame:
    """One row per key (text) and one column per series (plus validation loss): means over replicates."""
    ck = prep.checkpoints[mask]
    scores = prep.scores[mask].copy()
    if val_loss_key(prep) == VAL_LOSS_KEY:  # no validation-loss series: the trainer's final validation loss
        scores[VAL_LOSS_KEY] = ck[VAL_LOSS_COLUMN].to_numpy(dtype=float)
    labels = [_label(tuple(row)) for row in ck[keys].itertuples(index=False)]
    return scores.set_axis(labels, axis=0).groupby(level=0, sort=False).mean()


def _metric(prep: Prepared, key: str) -> str:
    return VAL_LOSS if key == VAL_LOSS_KEY else prep.series_by_key(key).metric


def _role(prep: Prepared, key: str) -> str:
    """The declared role of a column of :func:`_means` (the trainer's validation loss: ``validation_loss``)."""
    return VALIDATION_LOSS if key == VAL_LOSS_KEY else role_of(prep, prep.series_by_key(key))


def regret_record(proxy: np.ndarray, target: np.ndarray, names: np.ndarray, better: str, k: int) -> dict:
    """Top-``k`` decision regret of choosing by ``proxy [config]`` when ``target [config]`` is what counts.

    ``regret``: best target overall minus best target among the proxy's ``k`` best (both by
    ``better``), signed so that 0 is no loss and a positive value is how much worse the pick is
    in the target's units; ``proxy_top``: the picked names; ``target_best``: the target's best.
    """
    goodness_p = proxy if better == "higher" else -proxy
    goodness_t = target if better == "higher" else -target
    top = np.argsort(-goodness_p, kind="stable")[:k]
    best = int(np.argmax(goodness_t))
    return {"regret": float(goodness_t[best] - goodness_t[top].max()), "proxy_top": "; ".join(map(str, names[top])),
            "target_best": str(names[best])}


def sweep_agreement(proxy: ResultsInput, target: ResultsInput, key: str | Sequence[str], by: str | None = None,
                    top_k: int = 1, n_resamples: int = N_RESAMPLES, seed: int = 0) -> pd.DataFrame:
    """How the proxy sweep ranks the matched configurations against the target sweep (module docstring).

    ``key``: the column(s) that identify a configuration in both sweeps (a comma-separated
    string or a list). ``by``: a proxy hyperparameter to evaluate each value of separately.
    Returns one row per (``by`` value, series): by, series, metric, role (its declared role, e.g. ``validation_loss``;
    the loss rows first), better, n_configs, rho,
    rho_low, rho_high, rho_note (why there is no interval), p, top_k, regret, proxy_top (the proxy's top-k keys), target_best.
    """
    keys = _keys(key)
    if top_k < 1:
        raise ValueError(f"top_k={top_k}: pick at least one configuration")
    if by is not None and by in keys:
        raise ValueError(f"--by {by!r} is also a key column; --by splits the proxy sweep, the key matches configurations")
    proxy_prep = _side(proxy, "proxy", keys, by)
    target_prep = _side(target, "target", keys, None)
    _check_replicates(proxy_prep, "proxy", keys, by)
    _check_replicates(target_prep, "target", keys, None)
    target_means = _means(target_prep, keys, np.ones(len(target_prep.checkpoints), bool))
    by_values = [None] if by is None else list(dict.fromkeys(proxy_prep.checkpoints[by]))
    records = []
    for value in by_values:
        mask = np.ones(len(proxy_prep.checkpoints), bool) if by is None else (proxy_prep.checkpoints[by] == value).to_numpy()
        proxy_means = _means(proxy_prep, keys, mask)
        matched = [k for k in proxy_means.index if k in target_means.index]
        where = f" at {by}={text(value)}" if by else ""
        if not matched:
            raise ValueError(
                f"no configuration matches on {keys}{where}: the proxy has "
                f"{list(proxy_means.index)[:6]}, the target {list(target_means.index)[:6]}; the key's values must be equal in both")
        only_proxy = [k for k in proxy_means.index if k not in target_means.index]
        only_target = [k for k in target_means.index if k not in proxy_means.index]
        if only_proxy or only_target:
            sides = ([f"proxy {', '.join(map(repr, only_proxy[:8]))} not in the target"] if only_proxy else []) + (
                [f"target {', '.join(map(repr, only_target[:8]))} not in the proxy"] if only_target else [])
            raise ValueError(
                f"configurations match on {keys}{where} only in part ({len(matched)} matched): {'; '.join(sides)}; compare "
                "sweeps of the same configurations (filter the results of either side to the configurations both have)")
        common = [c for c in proxy_means.columns if c in target_means.columns]
        common.sort(key=lambda c: LOSS_ROLES.index(_role(proxy_prep, c)) if _role(proxy_prep, c) in LOSS_ROLES else len(LOSS_ROLES))
        for series in common:
            p_values = proxy_means.loc[matched, series].to_numpy(dtype=float)
            t_values = target_means.loc[matched, series].to_numpy(dtype=float)
            both = np.isfinite(p_values) & np.isfinite(t_values)
            if both.sum() == 0:
                continue
            names = np.array(matched, dtype=object)[both]
            pv, tv = p_values[both], t_values[both]
            metric = _metric(proxy_prep, series)
            better = better_direction(proxy_prep, metric) or better_direction(target_prep, metric)
            a = cluster_association(pv, tv, np.arange(len(pv)), n_resamples=n_resamples, seed=seed)
            record = {"by": text(value) if by else "", "series": series, "metric": metric, "role": _role(proxy_prep, series),
                      "better": better or "",
                      "n_configs": int(both.sum()), "rho": a.estimate, "rho_low": a.low, "rho_high": a.high,
                      "rho_note": a.no_interval if math.isfinite(a.estimate) else "", "p": a.p,
                      "top_k": min(top_k, len(pv)), "regret": math.nan, "proxy_top": "", "target_best": ""}
            if better in ("higher", "lower"):
                record.update(regret_record(pv, tv, names, better, record["top_k"]))
            records.append(record)
    columns = ["by", "series", "metric", "role", "better", "n_configs", "rho", "rho_low", "rho_high", "rho_note", "p", "top_k", "regret",
               "proxy_top", "target_best"]
    table = pd.DataFrame.from_records(records, columns=columns)
    table.attrs.update(key=keys, by=by or "", proxy=", ".join(proxy_prep.sources.values()),
                       target=", ".join(target_prep.sources.values()))
    return table


def format_agreement(table: pd.DataFrame, max_rows: int = 20) -> str:
    """The agreement table as plain text for a terminal: the loss rows first, then the rest."""
    lines = []
    header = f"{'by':<12} {'series':<48} {'n':>3}  {'Spearman rho [95% CI]':<24} {'p':>7}  {'regret@k':>10}"
    lines.append(header)
    for r in table.head(max_rows).to_dict("records"):
        interval = f"{r['rho']:+.2f}" if math.isfinite(r["rho"]) else "-"
        if math.isfinite(r["rho_low"]):
            interval += f" [{r['rho_low']:+.2f}, {r['rho_high']:+.2f}]"
        elif math.isfinite(r["rho"]):
            interval += " [—]"
        regret = f"{r['regret']:.4g}@{r['top_k']}" if math.isfinite(r["regret"]) else "-"
        lines.append(f"{r['by'][:12]:<12} {r['series'][:48]:<48} {r['n_configs']:>3}  {interval:<24} {fmt_p(r['p']):>7}  {regret:>10}")
    if len(table) > max_rows:
        lines.append(f"... and {len(table) - max_rows} more rows (write them with --out)")
    notes = [n for n in table.get("rho_note", pd.Series(dtype=object)).dropna().unique() if n]
    if notes:
        lines.append(f"[—] {notes[0]}")
    return "\n".join(lines)


def agreement_section(table: pd.DataFrame) -> str:
    """The agreement as an HTML section: what was matched, a figure anchor and the full table (escaped)."""
    from plastiscope.reports.page import table as html_table

    keys, by = table.attrs.get("key", []), table.attrs.get("by", "")
    intro = (f"<p>Configurations matched on <code>{esc(', '.join(keys))}</code>"
             + (f", each proxy <code>{esc(by)}</code> on its own" if by else "")
             + f"; proxy: {esc(table.attrs.get('proxy', ''))}; target: {esc(table.attrs.get('target', ''))}. Spearman ρ between "
             "the sweeps' values of the matched configurations (replicates averaged) with a 95 % bootstrap interval over "
             "configurations; regret@k: the best target value overall minus the best target value among the proxy's top k, "
             "in the target metric's units (0: the proxy's pick is the target's best; Wang et al. 2025).</p>")
    columns = [("by", by or "proxy setting"), ("series", "analysis.metric [variant]"), ("better", ""), ("configurations", ""),
               ("ρ", "Spearman ρ"), ("ρ low", "95 % bootstrap"), ("ρ high", ""), ("p", "permutation p-value"), ("k", "top k"),
               ("regret@k", "target units"), ("proxy's top k", ""), ("target's best", "")]
    rows = [[r["by"], r["series"], r["better"], r["n_configs"], r["rho"], r["rho_low"], r["rho_high"], fmt_p(r["p"]),
             r["top_k"], r["regret"], r["proxy_top"], r["target_best"]] for r in table.to_dict("records")]
    return (f"<section id='agreement'><h2>Sweep agreement</h2>{intro}<div class='ps-plot-slot'></div>"
            + html_table(columns, rows, "agreement-table", caption="Click a column header to sort") + "</section>")


def agreement_figure(table: pd.DataFrame) -> dict | None:
    """Spearman rho with its interval for the loss rows, per proxy setting (plotly JSON), or None without loss rows."""
    rows = table[table["role"].isin(LOSS_ROLES) & table["rho"].notna()]
    if rows.empty:
        return None
    traces = []
    for series, part in rows.groupby("series", sort=False):
        rho, low, high = (part[c].to_numpy(dtype=float) for c in ("rho", "rho_low", "rho_high"))
        traces.append(dict(type="scatter", mode="markers+lines", x=[esc(v) or "all" for v in part["by"]], y=rho.tolist(),
                           name=esc(series), error_y=dict(type="data", symmetric=False, array=np.nan_to_num(high - rho).tolist(),
                                                          arrayminus=np.nan_to_num(rho - low).tolist())))
    layout = dict(height=320, margin=dict(l=60, r=20, t=50, b=60), yaxis=dict(range=[-1.05, 1.05], title=dict(text="Spearman ρ")),
                  xaxis=dict(type="category", title=dict(text=esc(table.attrs.get("by") or "proxy"))),
                  title=dict(text="<b>Rank agreement of proxy and target</b> (95 % bootstrap over configurations)", font=dict(size=14)),
                  legend=dict(orientation="h", yanchor="top", y=-0.25))
    return {"data": traces, "layout": layout}


def write_agreement(table: pd.DataFrame, out: str | Path, title: str = "plastiscope sweep agreement") -> Path:
    """Write the agreement of :func:`sweep_agreement` as one self-contained HTML page; return its path."""
    from plastiscope.reports.page import json_script, shell

    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        out = out.with_suffix(".html")
    section = agreement_section(table)
    figure = agreement_figure(table)
    scripts = []
    if figure is not None:
        scripts.append(json_script("ps-spec-0", figure))
        plot = "<div class='ps-plot' id='ps-plot-0' data-spec='ps-spec-0' data-kind='agreement' style='height:320px'></div>"
        section = section.replace("<div class='ps-plot-slot'></div>", plot)
    else:
        section = section.replace("<div class='ps-plot-slot'></div>", "")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(shell(title, ["<a href='#agreement'>Agreement</a>"], section, scripts), encoding="utf-8")
    return out
