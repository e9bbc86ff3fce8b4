"""Assemble one self-contained HTML page: inline plotly.js, figure specs as JSON, small vanilla JS.

The page opens with the decision (the best configuration after fine-tuning, the trade-off, one
panel per mechanism with its verdict, the best predictors of the outcome) and keeps every other
series below, folded (``<details>``).

Safety: every user-supplied string (checkpoint names, hyperparameters, metric names, run
metadata, paths) goes through :func:`~plastiscope.reports.markup.esc` before it reaches HTML, and every
JSON placed in a ``<script>`` goes through :func:`json_script`, which writes ``<``, ``>`` and
``&`` as ``\\u003c``, ``\\u003e``, ``\\u0026`` so no string can close the script element or open
a comment. Figures are drawn by ``Plotly.newPlot`` from those JSON blocks, lazily as they
scroll into view (``window.plastiscopeReport.renderAll()`` unfolds the page and draws them all).
Nothing is fetched: no CDN, no web fonts, no MathJax. The styles and the page's script are
package files (``reports/assets/report.css``, ``report.js``), read with :mod:`importlib.resources`
and inlined, so the page stays one offline file; :func:`shell` is the one page around a report
and around the index of several (:mod:`.batch`).
"""

from __future__ import annotations

import importlib.resources
import json
import math
import platform
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
import plotly
import plotly.offline
import plotly.utils

from plastiscope.reports.choice import choice_section, noise_section, summary_html
from plastiscope.reports.correlate import ALPHA, TIE_RULE, fmt_p, ranked_predictors, val_loss_key
from plastiscope.reports.figures import FigureSpec
from plastiscope.reports.frame import DEFAULT_X, Prepared
from plastiscope.reports.markup import esc
from plastiscope.reports.verdict import Best, Decision, Verdict
from plastiscope.reports.verdict import panels as headline_panels

SHORT_LIST = 5
MAX_VERDICT_LINES = 4


def json_script(element_id: str, obj: Any) -> str:
    """A ``<script type="application/json">`` block whose content cannot break out of the element."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return f'<script type="application/json" id="{esc(element_id)}">{text}</script>'


def fmt(value: Any) -> str:
    """A table cell's text: numbers with 4 significant digits, missing as an empty string."""
    if value is None or value is pd.NA:
        return ""
    if isinstance(value, (float, np.floating)):
        return "" if not math.isfinite(value) else f"{value:.4g}"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return str(value)


def _sort_key(value: Any) -> str | None:
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return repr(float(value)) if math.isfinite(float(value)) else ""
    return None


def table(columns: list[tuple[str, str]], rows: list[list[Any]], table_id: str, sortable: bool = True, caption: str = "") -> str:
    """An HTML table; ``columns`` are (header, tooltip); numeric cells carry ``data-sort``."""
    tabindex = ' tabindex="0"' if sortable else ""
    head = "".join(f'<th scope="col" title="{esc(tip)}"{tabindex}>{esc(name)}</th>' for name, tip in columns)
    body = []
    for row in rows:
        cells = []
        for value in row:
            key = _sort_key(value)
            attr = f' data-sort="{esc(key)}"' if key is not None else ""
            cls = ' class="num"' if key is not None else ""
            cells.append(f"<td{attr}{cls}>{esc(fmt(value))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cls = "ps-table ps-sortable" if sortable else "ps-table"
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return (f'<div class="ps-scroll"><table class="{cls}" id="{esc(table_id)}">{cap}<thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def flatten(mapping: Mapping[str, Any], prefix: str = "", depth: int = 2) -> dict[str, Any]:
    """Nested dicts as dotted keys, down to ``depth`` levels (deeper values stay nested)."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and depth > 1:
            out.update(flatten(value, f"{name}.", depth - 1))
        else:
            out[name] = value
    return out


def kv_table(mapping: Mapping[str, Any]) -> str:
    """Key/value table (nested dicts as dotted keys); deeper values as pretty JSON in ``<pre>``; all escaped."""
    if not mapping:
        return "<p class='ps-muted'>none recorded</p>"
    rows = []
    for key, value in flatten(mapping).items():
        if isinstance(value, (dict, list, tuple)):
            cell = f"<pre>{esc(json.dumps(value, indent=2, default=str, ensure_ascii=False))}</pre>"
        else:
            cell = esc(fmt(value))
        rows.append(f"<tr><th scope='row'>{esc(key)}</th><td>{cell}</td></tr>")
    return f"<table class='ps-table ps-kv'><tbody>{''.join(rows)}</tbody></table>"


def _interval(value: float, low: float, high: float, digits: int = 2, note: str = "") -> str:
    if not math.isfinite(value):
        return "–"
    if math.isfinite(low) and math.isfinite(high):
        return f"{value:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"
    return f"{value:+.{digits}f} [—]" if note else f"{value:+.{digits}f}"


def _overlap(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return all(math.isfinite(v) for v in (a["low"], a["high"], b["low"], b["high"])) and a["low"] <= b["high"] and b["low"] <= a["high"]


def best_html(prep: Prepared, best: Best, decision: Decision | None = None) -> str:
    """One group's summary: the best configuration by each outcome, the best before fine-tuning, one trade-off."""
    return summary_html(prep, best, decision.noise if decision is not None else None)


def expected_text(prep: Prepared, panel) -> str:
    """What the panel expects, and from whom; on another axis, that there is no expectation for it."""
    direction = {"rise": "rises", "fall": "falls"}[panel.expected]
    text = f"expected: {panel.metric} {direction} with weight decay ({panel.source})"
    if prep.x != DEFAULT_X:
        text += f"; against {prep.x} no direction is expected"
    return text


MAX_FLAGGED = 4


def baseline_html(prep: Prepared, verdict: Verdict) -> str:
    """A verdict line's baselines: how many checkpoints clear each, a flag when the line does not, and the checkpoints
    indistinguishable from a baseline (their interval overlaps the baseline's or contains the constant)."""
    check = verdict.baseline
    if check is None or not check.comparisons:
        return ""
    flagged = check.indistinguishable(prep)
    parts = []
    for comparison, text in check.parts():
        names = flagged.get(comparison.label, [])
        _, compared = check.counts(comparison) if comparison.measured else (0, 0)
        more = f" and {len(names) - MAX_FLAGGED} more" if len(names) > MAX_FLAGGED else ""
        which = "all indistinguishable" if len(names) == compared else "indistinguishable: " + ", ".join(names[:MAX_FLAGGED]) + more
        flag = f" (<span class='ps-flag ps-indistinguishable'>{esc(which)}</span>)" if names else ""
        parts.append(esc(text) + flag)
    verdict_flag = "" if check.clears else " <b class='ps-flag ps-not-cleared'>Does not clear its baseline: no direction is claimed.</b>"
    return f"<br><span class='ps-baseline'>baselines: {'; '.join(parts)}.</span>{verdict_flag}"


def panel_html(prep: Prepared, panel, decision: Decision, cell: str, band: str) -> str:
    """One headline panel: title, verdict lines, figure, what it expects and what its band is."""
    anchor = f"panel-{panel.key}"
    if panel.key in decision.missing:
        return (f"<div class='ps-panel ps-absent' id='{anchor}'><h3>{esc(panel.title)}</h3>"
                f"<p class='ps-muted'>{esc(decision.missing[panel.key])}</p></div>")
    lines = [v for v in decision.verdicts if v.panel == panel.key]
    items = []
    for v in lines[:MAX_VERDICT_LINES]:
        group = f"{esc(v.group)}: " if prep.group_by else ""
        label = f"{esc(v.label)}: " if v.label else ""
        items.append(f"<li><span class='ps-word ps-{esc(v.word)}'>{esc(v.word)}</span> {group}{label}"
                     f"<span class='ps-evidence'>{esc(v.sentence(prep))}</span>{baseline_html(prep, v)}</li>")
    if len(lines) > MAX_VERDICT_LINES:
        items.append(f"<li class='ps-muted'>{len(lines) - MAX_VERDICT_LINES} more in the table of all verdicts below</li>")
    note = esc(expected_text(prep, panel)) + (f"; {esc(band)}" if band else "")
    return (f"<div class='ps-panel' id='{anchor}'><h3>{esc(panel.title)}</h3><ul class='ps-verdicts'>{''.join(items)}</ul>"
            f"{cell}<p class='ps-note'>{note}</p></div>")


def outcome_hint(prep: Prepared) -> str:
    """How to obtain the outcome, as its declaration says (``": run the ... analysis"``); empty without a declared outcome."""
    declared = [m for _, m in prep.declarations.with_role("outcome") if m.headline is not None and m.headline.absent]
    return f": {declared[0].headline.absent}" if declared else ""  # type: ignore[union-attr]


def summary_section(prep: Prepared, decision: Decision, cells: dict[str, tuple[str, str]]) -> str:
    """The opening section: the run's note (``run.json``'s ``about.note``), best configuration, trade-off, what the design
    supports, one panel per mechanism."""
    if decision.best:
        best = "".join(best_html(prep, b, decision) for b in decision.best)
    else:
        best = ("<p class='ps-best'>No outcome after fine-tuning in these results, so no best checkpoint after "
                f"fine-tuning{esc(outcome_hint(prep))}.</p>")
    notes = [info["about"]["note"] for info in prep.run_infos.values()
             if isinstance(info, Mapping) and isinstance(info.get("about"), Mapping) and info["about"].get("note")]
    best = "".join(f"<p class='ps-note'>{esc(note)}</p>" for note in dict.fromkeys(notes)) + best
    design = "".join(f"<li>{esc(line)}</li>" for line in decision.design)
    how = (f"Verdicts test each metric against {esc(prep.x)} across configurations (replicate seeds averaged): Spearman ρ "
           f"with a 95 % cluster bootstrap interval, permutation p within seed blocks, Holm-adjusted across every headline "
           f"line (α = {ALPHA}).")
    panels = "".join(panel_html(prep, panel, decision, *cells.get(panel.key, ("", ""))) for panel in headline_panels(prep))
    return (f"<section id='summary'><h2>Summary</h2><div class='ps-callout ps-decision' id='decision'>{best}"
            f"<ul class='ps-design' id='design'>{design}</ul><p class='ps-muted'>{how}</p></div>"
            f"<div class='ps-panels'>{panels}</div></section>")


def _predictor_row(r: Mapping[str, Any], grouped: bool) -> list[Any]:
    return ([r["group"]] if grouped else []) + [
        r["rank"], r["series"],
        _interval(r["rho_outcome"], r["rho_outcome_low"], r["rho_outcome_high"], note=r.get("rho_outcome_note", "")),
        r["n_configs"], fmt_p(r["p_rho_outcome"]), fmt_p(r["q_outcome"]), r["verdict"]]


def predictors_section(prep: Prepared, stats: pd.DataFrame) -> str:
    """Which metric predicts the outcome: the best few and validation loss, visible; every series folded below."""
    ranked = ranked_predictors(stats)
    grouped = bool(prep.group_by)
    columns = ([("group", "group")] if grouped else []) + [
        ("rank", "by |ρ| with the outcome"), ("series", "analysis.metric [variant]"),
        ("ρ with outcome [95 % CI]", "Spearman ρ of configuration means with the outcome; two-stage cluster bootstrap "
         "(— : fewer than 8 configurations, no interval)"),
        ("configurations", "configurations with both values"), ("p", "permutation p-value (within seed blocks)"),
        ("q (BH)", "Benjamini-Hochberg across all series"), ("verdict", f"predicts where q < {ALPHA}")]
    if ranked.empty:
        outcome = ("<p class='ps-muted' id='no-outcome'>No outcome to predict: the results have no outcome after "
                   f"fine-tuning{esc(outcome_hint(prep))}.</p>")
        short = ""
    else:
        outcome_key = ranked["outcome"].iloc[0]
        val_key = val_loss_key(prep)
        sentences = []
        for group, part in ranked.groupby("group", sort=False):
            val = part[part["series"] == val_key]
            where = f"{esc(group)}: " if grouped else ""
            if len(val):
                v = val.iloc[0]
                tie = f"; {int(v['tied'])} other series have the same |ρ|" if v.get("tied") else ""
                rho = _interval(v['rho_outcome'], v['rho_outcome_low'], v['rho_outcome_high'], note=v.get("rho_outcome_note", ""))
                sentences.append(f"{where}validation loss: ρ = {esc(rho)}, q = {esc(fmt_p(v['q_outcome']))}{esc(tie)} "
                                 "(whether it picks the winner: the choice table below).")
            n_pred = int((part["verdict"] == "predicts").sum())
            sentences.append(f"{n_pred} of {len(part)} series predict the outcome at q &lt; {ALPHA}."
                             if n_pred else f"No series predicts the outcome at q &lt; {ALPHA}: inconclusive.")
        position = ranked.groupby("group").cumcount()
        shown = ranked[(position < SHORT_LIST) | (ranked["series"] == val_key)]
        short = table(columns, [_predictor_row(r, grouped) for r in shown.to_dict("records")], "predictors-table", sortable=False)
        better = next((r["better"] for r in stats.to_dict("records") if r["series"] == outcome_key), "") or "?"
        outcome = (f"<p>Series measured before fine-tuning, ranked by |Spearman ρ| of their configuration means with "
                   f"<code>{esc(outcome_key)}</code> ({esc(better)} is better; {esc(TIE_RULE)}). {' '.join(sentences)}</p>")
    return f"<section id='predictors'><h2>Which metric predicts the outcome?</h2>{outcome}{short}</section>"


def all_statistics(prep: Prepared, stats: pd.DataFrame, decision: Decision) -> str:
    """Folded: every series' association with the axis and the outcome, and every headline verdict."""
    if stats.empty:
        return ""
    grouped = bool(prep.group_by)
    eta = prep.categorical
    ranked = ranked_predictors(stats).set_index(["group", "series"])
    columns = ([("group", "group")] if grouped else []) + [
        ("series", "analysis.metric [variant]"), ("better", "direction counted as better"),
        ("configurations", "configurations with a value"),
        (f"{'η²' if eta else 'ρ'} with {prep.x}" + ("" if eta else " [95 % CI]"),
         "share of variance between axis values" if eta else "Spearman ρ of configuration means; cluster bootstrap"),
        ("p", "permutation p-value (within seed blocks)"), ("q (BH)", "Benjamini-Hochberg across all series"),
        ("ρ with outcome [95 % CI]", "Spearman ρ with the outcome"), ("p outcome", ""), ("q outcome", ""), ("predicts", "")]
    rows = []
    for r in stats.to_dict("records"):
        effect = _interval(r["x_effect"], r["x_effect_low"], r["x_effect_high"], note=r.get("x_effect_note", ""))
        if eta:
            effect = f"{r['x_effect']:.2f}" if math.isfinite(r["x_effect"]) else "–"
        verdict = ranked["verdict"].get((r["group"], r["series"]), "") if len(ranked) else ""
        rows.append(([r["group"]] if grouped else []) + [
            r["series"], r["better"], r["n_configs"], effect, fmt_p(r["p_x_effect"]), fmt_p(r["q_x"]),
            _interval(r["rho_outcome"], r["rho_outcome_low"], r["rho_outcome_high"], note=r.get("rho_outcome_note", "")),
            fmt_p(r["p_rho_outcome"]),
            fmt_p(r["q_outcome"]), verdict])
    verdict_rows = [([v.group] if grouped else []) + [v.panel, v.label, v.word, v.sentence(prep) + (
        f"; baselines: {v.baseline.sentence()}" if v.baseline is not None and v.baseline.comparisons else "")]
        for v in decision.verdicts]
    verdict_columns = ([("group", "")] if grouped else []) + [("panel", ""), ("series", ""), ("verdict", ""), ("evidence", "")]
    return (f"<details class='ps-fold' id='all-statistics'><summary>All {len(stats)} series: association with {esc(prep.x)} "
            f"and with the outcome</summary>"
            + table(columns, rows, "statistics-table", caption="Click a column header to sort")
            + "<h3>Every headline verdict</h3>" + table(verdict_columns, verdict_rows, "verdicts-table", sortable=False)
            + "</details>")


def checkpoints_section(prep: Prepared) -> str:
    """Folded: what the sweep holds, and one row per checkpoint with its configuration, losses and seed."""
    ck = prep.checkpoints
    columns = [("checkpoint", "checkpoint name")]
    if prep.group_by and prep.group_by not in prep.hyper:
        columns.append((prep.group_by, "group"))
    hyper = list(dict.fromkeys(["weight_decay", *prep.hyper]))
    columns += [(c, "hyperparameter") for c in hyper]
    columns += [("configuration", "the hyperparameters but the seed"),
                ("train loss", f"from {prep.loss_sources.get('train_loss') or 'nowhere: not in the results'}"),
                ("val loss", f"from {prep.loss_sources.get('val_loss') or 'nowhere: not in the results'}")]
    rows = []
    for rec in ck.to_dict("records"):
        row = [rec["_label"]] + ([rec["_group"]] if prep.group_by and prep.group_by not in prep.hyper else [])
        row += [rec[c] for c in hyper] + [rec["_config_label"], rec["train_loss"], rec["val_loss"]]
        rows.append(row)
    analyses = list(dict.fromkeys(s.analysis for s in prep.series))
    facts = (f"<p>{len(ck)} checkpoints in {ck['_config'].nunique()} configurations (by "
             f"{esc(', '.join(prep.config_columns))}; replicates differ in <code>seed</code>); axis <code>{esc(prep.x)}</code>"
             f"{' (categorical)' if prep.categorical else ''}; analyses: {esc(', '.join(analyses))}; {len(prep.series)} series.")
    if prep.line_columns:
        facts += f" One line per <code>{esc(', '.join(prep.line_columns))}</code>."
    if prep.group_by:
        facts += f" Grouped by <code>{esc(prep.group_by)}</code>: {esc(', '.join(prep.groups))}."
    facts += "</p>"
    for column in ("step", "tokens"):
        if column != prep.x and column in ck and ck[column].astype(str).nunique() > 1 and prep.x not in ("step", "tokens"):
            facts += (f"<p class='ps-muted'>Several training {column}s per run: <code>plastiscope report --x {column}</code> "
                      "draws each configuration across them.</p>")
            break
    if prep.shared:
        facts += "<p class='ps-muted'>Same for all checkpoints: " + "; ".join(
            f"<code>{esc(k)}</code> = {esc(fmt(v))}" for k, v in prep.shared.items()) + "</p>"
    missing = int((~prep.has_x).sum())
    if missing:
        facts += f"<p class='ps-muted'>{missing} checkpoint(s) without a value of {esc(prep.x)} are left out of plots and statistics.</p>"
    if prep.details:
        facts += ("<p class='ps-muted'>Per-row details (averaged like layers, never a series of their own): "
                  + esc(", ".join(prep.details)) + ".</p>")
    return (f"<details class='ps-fold' id='checkpoints'><summary>Checkpoints and configurations</summary>{facts}"
            + table(columns, rows, "checkpoint-table", caption="Checkpoints (click a column header to sort)") + "</details>")


def methods_section(prep: Prepared, extra_versions: Mapping[str, str]) -> str:
    """The methods section: how the figures and verdicts are made, the metrics' definitions, the run information."""
    present: dict[str, list[str]] = {}
    for s in prep.series:
        present.setdefault(s.metric, [])
        if s.analysis not in present[s.metric]:
            present[s.metric].append(s.analysis)
    rows = []
    for metric, analyses in present.items():
        doc = prep.declarations.lookup(metric, analyses[0])
        if doc is None:
            rows.append([metric, ", ".join(analyses), "", "", "", "", ""])
            continue
        baselines = ", ".join(b.name + (f" = {b.value:g}" if b.value is not None else f" (rows init={b.init})") for b in doc.baselines)
        rows.append([metric, ", ".join(analyses), doc.description, doc.unit, doc.better or "", baselines, doc.citation])
    metric_table = table([("metric", ""), ("analysis", ""), ("definition", "as the analysis declares it; empty: not declared"),
                          ("unit", ""), ("better", "direction counted as better"), ("baseline", "what trained values must clear"),
                          ("reference", "")], rows, "metrics-table", sortable=True)
    how = f"""
<ul>
<li><b>Series.</b> A series is one (analysis, metric, variant); the variant is written by each analysis from its
declared variant columns (<code>task</code>, <code>pooling</code>, ...). Every other extra column is a per-row detail,
averaged over like layers and heads, never a series of its own.</li>
<li><b>Scores.</b> A checkpoint's score for a series is the mean of its trained rows (over layers, heads and details).
Baseline rows (<code>init</code> other than "trained", e.g. a probe on a randomly initialised copy) are drawn dashed and
left out of scores and statistics.</li>
<li><b>Configurations and replicates.</b> A configuration is a checkpoint's hyperparameters but <code>seed</code> (here:
{esc(', '.join(prep.config_columns))}); checkpoints that share one are replicates, averaged before anything is ranked or
tested. Lines join the configurations that differ only in <code>{esc(prep.x)}</code>.</li>
<li><b>Bands</b> are across replicate seeds, labelled for what they are: the range of 2-3 seeds, a 95 % percentile
bootstrap over 4 or more. With one seed there is no band; where each checkpoint's value is one row with a 95 % interval in
the results (a bootstrap over that metric's units), it is drawn as error bars. Dots are single seeds.</li>
<li><b>Axis.</b> Numeric values on a log scale where the positive ones span a decade or more (0 drawn one step left of the
smallest positive value, a dotted line marks the break), else linear; categorical values equally spaced, sorted.</li>
<li><b>Statistics.</b> Spearman's ρ of configuration means, with a 95 % two-stage cluster bootstrap interval (resample
configurations, then seeds within each; Davison &amp; Hinkley 1997), and a two-sided permutation p-value that permutes
the axis within blocks of checkpoints sharing a seed (and any other swept hyperparameter), so what a seed shares stays out
of the null distribution; the test statistic is ρ over checkpoints. A categorical axis gets η², the share of variance
between its values, with the same permutation test. Predictors of the outcome use the same ρ, interval and permutations
(within seed blocks).</li>
<li><b>Few configurations.</b> With few configurations and one seed the bootstrap interval of ρ is optimistic: a
perfectly ordered sweep resamples to ρ = ±1 every time. The permutation p-value, and the floor a perfect trend would
reach (stated in the summary), say what the data can decide.</li>
<li><b>Multiple comparisons.</b> Headline verdicts: Holm's step-down adjustment across every headline line (Holm 1979);
the full list: Benjamini-Hochberg q-values (Benjamini &amp; Hochberg 1995). A verdict is <i>holds</i> / <i>opposite</i>
(the expected direction with weight decay, or not) or <i>increases</i> / <i>decreases</i> (another numeric axis) or
<i>differs</i> (a categorical axis) where the adjusted p is below {ALPHA}; else <i>inconclusive</i>. The report says so
when even a perfect monotone trend could not reach that level with these configurations and seeds.</li>
<li><b>Baselines.</b> A metric's declaration names what its trained values must clear: a constant (chance, the uniform
pattern) or a baseline model's rows (<code>init</code> "random", "majority"). Each checkpoint is compared through its
own 95 % interval (the mean of its rows' intervals, over the layers and heads the baseline also has); one whose interval
overlaps the baseline's, or contains the constant, is flagged as indistinguishable from it, and a headline line whose
checkpoints do not clear a measured baseline in more than half of them is <i>inconclusive</i> whatever its trend.</li>
<li><b>Validation loss</b> is the first metric declared with role <code>validation_loss</code> where measured,
else the column <code>final_val_loss</code> written by the trainer (used here: {esc(prep.loss_sources.get("val_loss") or "none")}).</li>
</ul>"""
    runs = ""
    for name, info in prep.run_infos.items():
        info = info if isinstance(info, Mapping) else {"run_info": info}
        parts = [f"<h4>{esc(name)}</h4>"] if len(prep.run_infos) > 1 else []
        for section in ("data", "versions", "config"):
            title = {"data": "Data used", "versions": "Versions", "config": "Configuration"}[section]
            parts.append(f"<h4>{title}</h4>{kv_table(info.get(section) or {})}")
        others = {k: v for k, v in info.items() if k not in ("data", "versions", "config")}
        if others:
            parts.append(f"<h4>Other run information</h4>{kv_table(others)}")
        runs += "".join(parts)
    if not runs:
        runs = "<p class='ps-muted'>No run information (run.json) was given: data hashes, versions and configuration are unknown.</p>"
    return (f"<details class='ps-fold' id='methods'><summary>Methods</summary><h3>How the figures and verdicts are made</h3>{how}"
            f"<h3>Metric definitions</h3>{metric_table}<h3>Run</h3>{runs}"
            f"<h3>Report</h3>{kv_table(dict(extra_versions))}<h4>Results read</h4>{kv_table(prep.sources)}</details>")





def plotly_template() -> dict:
    """plotly's default template as JSON: written once per page, applied to every figure."""
    import plotly.io as pio

    return json.loads(json.dumps(pio.templates[pio.templates.default].to_plotly_json(), cls=plotly.utils.PlotlyJSONEncoder))


def plot_cells(specs: list[FigureSpec]) -> tuple[list[str], dict[str, list[tuple[FigureSpec, str]]]]:
    """The JSON script blocks of ``specs`` and each spec's plot ``<div>``, by page section."""
    scripts, cells = [], {}
    for i, spec in enumerate(specs):
        spec_id = f"ps-spec-{i}"
        scripts.append(json_script(spec_id, spec.spec))
        height = int(spec.spec["layout"].get("height") or 380)
        div = (f"<div class='ps-plot' id='ps-plot-{i}' data-spec='{spec_id}' data-kind='{esc(spec.kind)}' "
               f"aria-label='{esc(spec.key)}' style='height:{height}px'></div>")
        cells.setdefault(spec.section, []).append((spec, div))
    return scripts, cells


def asset(name: str) -> str:
    """A page asset of the package (``report.css``, ``report.js`` in ``reports/assets``) as text, to inline in the page."""
    text = importlib.resources.files("plastiscope.reports").joinpath("assets").joinpath(name).read_text(encoding="utf-8")
    if "</" in text:
        raise ValueError(f"reports/assets/{name} contains '</', which would end its inline element early")
    return text


def shell(title: str, nav: list[str], body: str, scripts: list[str], plots: bool = True) -> str:
    """The one page around ``body`` (a report or the index of several): head, styles, navigation, and with ``plots``
    plotly.js inlined once and the figures' JSON; the page's script always (sortable tables). Nothing is fetched."""
    figures = f"""<script>{plotly.offline.get_plotlyjs()}</script>
{json_script("ps-template", plotly_template())}
{''.join(scripts)}""" if plots else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline'; \
style-src 'unsafe-inline'; img-src data: blob:; font-src data:">
<link rel="icon" href="data:,">
<title>{esc(title)}</title>
<style>{asset("report.css")}</style>
</head><body>
<header><h1>{esc(title)}</h1><nav>{''.join(nav)}</nav></header>
<main>{body}</main>
{figures}
<script>{asset("report.js")}</script>
</body></html>
"""


def folded(section: str) -> str:
    """A page section (``<section id='...'><h2>title</h2>...</section>``) folded: a ``<details>`` with the same id and
    content whose summary is the section's title (a link to its id unfolds it); any other HTML is returned as it is."""
    match = re.fullmatch(r"<section id='([^']*)'><h2>(.*?)</h2>(.*)</section>", section, flags=re.S)
    if match is None:
        return section
    anchor, title, rest = match.groups()
    return f"<details class='ps-fold' id='{anchor}'><summary>{title}</summary>{rest}</details>"


def render_page(prep: Prepared, specs: list[FigureSpec], stats: pd.DataFrame, decision: Decision, title: str,
                extra_versions: Mapping[str, str]) -> str:
    """The whole report as one HTML string."""
    scripts, cells = plot_cells(specs)
    panel_cells = {spec.key.split(": ", 1)[1]: (div, spec.band) for spec, div in cells.pop("panel", [])}
    sections = []
    nav = ["<a href='#summary'>Summary</a>", "<a href='#predictors'>Predictors</a>", "<a href='#choice'>Choice</a>",
           "<a href='#noise'>Noise</a>", "<a href='#all-statistics'>All statistics</a>",
           "<a href='#checkpoints'>Checkpoints</a>"]
    for i, (analysis, items) in enumerate(cells.items()):
        anchor = f"analysis-{i}"
        nav.append(f"<a href='#{anchor}'>{esc(analysis)}</a>")
        grid = "".join(f"<div class='ps-cell{' ps-wide' if spec.wide else ''}'>{div}</div>" for spec, div in items)
        sections.append(f"<section id='{anchor}'><details class='ps-analysis'><summary>{esc(analysis)} "
                        f"({len({spec.series for spec, _ in items})} series)</summary><div class='ps-grid'>{grid}</div>"
                        f"</details></section>")
    nav.append("<a href='#methods'>Methods</a>")
    # the decision and the predictors open; the robustness checks folded, so the summary stays within two screens
    body = (summary_section(prep, decision, panel_cells) + predictors_section(prep, stats)
            + folded(choice_section(prep, decision.choice)) + folded(noise_section(prep, decision.noise))
            + all_statistics(prep, stats, decision)
            + checkpoints_section(prep) + f"<h2>Every series against {esc(prep.x)}</h2>" + "".join(sections)
            + methods_section(prep, extra_versions))
    return shell(title, nav, body, scripts)


def generator_versions() -> dict[str, str]:
    """Versions of the packages that built the report, and when it was generated (UTC)."""
    import scipy

    import plastiscope

    return {"plastiscope": getattr(plastiscope, "__version__", "?"), "plotly": plotly.__version__, "pandas": pd.__version__,
            "numpy": np.__version__, "scipy": scipy.__version__, "python": platform.python_version(),
            "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
