"""Assemble one self-contained HTML page: inline plotly.js, figure specs as JSON, small vanilla JS.

Safety: every user-supplied string (checkpoint names, hyperparameters, metric names, run
metadata, paths) goes through :func:`~plastiscope.reports.markup.esc` before it reaches HTML, and every
JSON placed in a ``<script>`` goes through :func:`json_script`, which writes ``<``, ``>`` and
``&`` as ``\\u003c``, ``\\u003e``, ``\\u0026`` so no string can close the script element or open
a comment. Figures are drawn by ``Plotly.newPlot`` from those JSON blocks, lazily as they
scroll into view (``window.plastiscopeReport.renderAll()`` draws them all). Nothing is
fetched: no CDN, no web fonts, no MathJax.
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
import plotly
import plotly.offline
import plotly.utils

from plastiscope.reports.correlate import disagreements
from plastiscope.reports.figures import FigureSpec, fmt_wd
from plastiscope.reports.frame import Prepared
from plastiscope.reports.markup import esc
from plastiscope.reports.metrics_doc import describe_metric

KEY_METRICS = ("accuracy", "selectivity_control_task", "mdl_compression", "entropy_normalized", "effective_rank",
               "sink_share", "qk_frobenius_norm", "loss_gap", "mia_auc_", "plasticity_gain")
MAX_KEY_METRICS = 8
MAX_CALLOUT = 12


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


def key_metric_columns(prep: Prepared) -> list[str]:
    """Series keys shown in the overview table: the documented key metrics, else the first series."""
    keys = []
    for wanted in KEY_METRICS:
        for s in prep.series:
            if s.key in prep.scores and (s.metric == wanted or (wanted.endswith("_") and s.metric.startswith(wanted))):
                keys.append(s.key)
                break
    if not keys:
        keys = [s.key for s in prep.series if s.key in prep.scores][:6]
    return keys[:MAX_KEY_METRICS]


def overview_section(prep: Prepared) -> str:
    """The overview section: what the sweep holds, and one row per checkpoint with its losses and key metrics."""
    ck = prep.checkpoints
    wds = sorted(w for w in ck["weight_decay"].unique() if math.isfinite(w))
    analyses = list(dict.fromkeys(s.analysis for s in prep.series))
    key_series = key_metric_columns(prep)
    columns = [("checkpoint", "checkpoint name")]
    if prep.group_by and prep.group_by not in prep.hyper:
        columns.append((prep.group_by, "group"))
    columns.append(("weight_decay", "weight decay"))
    hyper = [c for c in prep.hyper if c != "weight_decay"]
    columns += [(c, "hyperparameter") for c in hyper]
    columns += [("train loss", f"from {prep.loss_sources.get('train_loss') or 'nowhere: not in the results'}"),
                ("val loss", f"from {prep.loss_sources.get('val_loss') or 'nowhere: not in the results'}")]
    columns += [(k, "mean over layers and heads" if prep.series_by_key(k).has_layer else "value") for k in key_series]
    rows = []
    for rec in ck.to_dict("records"):
        row = [rec["_label"]]
        if prep.group_by and prep.group_by not in prep.hyper:
            row.append(rec["_group"])
        row.append(rec["weight_decay"])
        row += [rec[c] for c in hyper]
        row += [rec["train_loss"], rec["val_loss"]]
        row += [prep.scores.at[rec["_id"], k] for k in key_series]
        rows.append(row)
    wd_text = ", ".join(fmt_wd(w) for w in wds) if len(wds) <= 12 else f"{fmt_wd(wds[0])} … {fmt_wd(wds[-1])}"
    facts = (f"<p>{len(ck)} checkpoints; weight decay {esc(wd_text)} ({len(wds)} values); analyses: "
             f"{esc(', '.join(analyses))}; {len(prep.series)} series.")
    if prep.group_by:
        facts += f" Grouped by <code>{esc(prep.group_by)}</code>: {esc(', '.join(prep.groups))}."
    facts += "</p>"
    shared = ""
    if prep.shared:
        shared = "<p class='ps-muted'>Same for all checkpoints: " + "; ".join(
            f"<code>{esc(k)}</code> = {esc(fmt(v))}" for k, v in prep.shared.items()) + "</p>"
    missing_wd = ck["weight_decay"].isna().sum()
    note = f"<p class='ps-muted'>{missing_wd} checkpoint(s) without a weight decay are left out of the plots.</p>" if missing_wd else ""
    return (f"<section id='overview'><h2>Overview</h2>{facts}{shared}{note}"
            + table(columns, rows, "checkpoint-table", caption="Checkpoints (click a column header to sort)")
            + "</section>")


def _ci_text(value: float, low: float, high: float) -> str:
    if not math.isfinite(value):
        return ""
    if math.isfinite(low) and math.isfinite(high):
        return f"{value:.2f} [{low:.2f}, {high:.2f}]"
    return f"{value:.2f}"


def callout(prep: Prepared, corr: pd.DataFrame) -> str:
    """The ranking-disagreement callout (or a short note that rankings agree / cannot be compared)."""
    if prep.checkpoints["val_loss"].isna().all():
        return ("<div class='ps-callout ps-info' id='ranking-note'>No validation loss in the results (metric "
                "<code>val_loss</code> or column <code>final_val_loss</code>), so rankings are not compared.</div>")
    found = disagreements(corr)
    if found.empty:
        directional = (corr["verdict"] == "agrees").sum() if "verdict" in corr else 0
        return (f"<div class='ps-callout ps-ok' id='ranking-agree'>Ranking checkpoints by validation loss agrees with "
                f"ranking them by each of the {directional} metric(s) that have a better direction.</div>")
    found = found.assign(_p=(found["metric"] != "plasticity_gain").astype(int)).sort_values("_p", kind="stable")
    items = []
    for r in found.head(MAX_CALLOUT).itertuples(index=False):
        group = f"[{esc(r.group)}] " if prep.group_by else ""
        tau = f"Kendall τ = {r.tau_agreement:.2f}" if math.isfinite(r.tau_agreement) else "τ undefined"
        kind = "opposite ranking" if r.verdict == "opposite" else "best checkpoint differs"
        items.append(f"<li class='ps-{'opposite' if r.verdict == 'opposite' else 'differs'}'>{group}<b>{esc(r.series)}</b> "
                     f"({esc(r.better)} is better): {kind}, {tau}; best by validation loss: <code>{esc(r.best_val_loss)}</code>, "
                     f"best by {esc(r.metric)}: <code>{esc(r.best_metric)}</code></li>")
    if len(found) > MAX_CALLOUT:
        items.append(f"<li>… and {len(found) - MAX_CALLOUT} more: see the correlation table.</li>")
    undirected = int((corr["better"] == "").sum()) if "better" in corr else 0
    note = (f"<p class='ps-muted'>{undirected} series without a better direction (e.g. attention entropy, ranks, norms) are "
            "compared with validation loss by Kendall τ in the table only.</p>") if undirected else ""
    n_opp = (found["verdict"] == "opposite").sum()
    return (f"<div class='ps-callout ps-warn' id='ranking-callout' role='note'><strong>Ranking by validation loss disagrees "
            f"with {len(found)} metric(s)</strong> ({n_opp} with an opposite overall order, τ &lt; 0). A checkpoint that "
            f"looks worse by validation loss may be better by these:<ul>{''.join(items)}</ul>{note}</div>")


def plasticity_predictors(corr: pd.DataFrame, top: int = 10) -> pd.DataFrame:
    """Series ranked by how well they predict ``plasticity_gain`` across checkpoints: |Spearman rho|, descending.

    The plasticity analysis's own rows (the gain and the downstream losses it is made of) are
    the target, not predictors, and are left out; validation loss is ranked like any metric.
    """
    if "rho_plasticity" not in corr:
        return corr.iloc[0:0]
    candidates = corr[(corr["analysis"] != "plasticity") & corr["rho_plasticity"].notna()]
    order = candidates["rho_plasticity"].abs().sort_values(ascending=False, kind="stable").index
    ranked = candidates.loc[order].reset_index(drop=True)
    ranked.insert(0, "rank", np.arange(1, len(ranked) + 1))
    return ranked


def predictors_html(corr: pd.DataFrame, top: int = 10) -> str:
    """The callout of the ``top`` series that best predict plasticity (one per group), or nothing without plasticity."""
    if "group" in corr and corr["group"].nunique() > 1:  # one ranking per group of a comparison report
        return "".join(predictors_html(sub.assign(group=None), top).replace("predicts plasticity?</strong>",
                       f"predicts plasticity? ({esc(group)})</strong>", 1) for group, sub in corr.groupby("group"))
    ranked = plasticity_predictors(corr)
    if ranked.empty:
        return ""
    items = "".join(
        f"<li><strong>{esc(r['series'])}</strong>: ρ = {fmt(r['rho_plasticity'])} "
        f"[{fmt(r['rho_plasticity_low'])}, {fmt(r['rho_plasticity_high'])}]</li>"
        for r in ranked.head(top).to_dict("records")
    )
    val = ranked[ranked["metric"] == "val_loss"]
    where = (f"Validation loss ranks <strong>{int(val['rank'].iloc[0])} of {len(ranked)}</strong> "
             f"(ρ = {fmt(val['rho_plasticity'].iloc[0])}).") if len(val) else (
                 "No validation-loss series to rank (run the overfit analysis).")
    return (f"<div class='ps-callout' id='plasticity-predictors'><strong>Which metric predicts plasticity?</strong> "
            f"Series ranked by |Spearman ρ| with plasticity_gain across checkpoints (95 % bootstrap interval). {where}"
            f"<ol>{items}</ol></div>")


def correlation_section(prep: Prepared, corr: pd.DataFrame, plot_html: str) -> str:
    """The correlations section: the ranking callouts, the summary plots ``plot_html`` and the correlation table."""
    plasticity = "rho_plasticity" in corr and corr["rho_plasticity"].notna().any()
    columns = ([("group", "group")] if prep.group_by else []) + [
        ("series", "analysis.metric [variant]"), ("better", "direction counted as better"),
        ("n", "checkpoints"), ("ρ with wd", "Spearman rho with weight decay"),
        ("ρ low", "95% bootstrap CI, lower"), ("ρ high", "95% bootstrap CI, upper")]
    if plasticity:
        columns += [("ρ with plasticity", "Spearman rho with plasticity_gain"), ("ρp low", "95% CI lower"), ("ρp high", "95% CI upper")]
    columns += [("τ with val loss", "Kendall tau of the metric with validation loss"),
                ("vs val-loss ranking", "agrees / opposite (tau<0) / best differs, for metrics with a better direction"),
                ("best by metric", "top checkpoint by the metric")]
    rows = []
    for r in corr.to_dict("records"):
        row = ([r["group"]] if prep.group_by else []) + [r["series"], r["better"], r["n"], r["rho_wd"], r["rho_wd_low"], r["rho_wd_high"]]
        if plasticity:
            row += [r["rho_plasticity"], r["rho_plasticity_low"], r["rho_plasticity_high"]]
        verdict = r.get("verdict", "")
        if verdict and math.isfinite(r.get("tau_agreement", math.nan)):
            verdict = f"{verdict} (τ={r['tau_agreement']:.2f})"
        row += [r.get("tau_val_loss", math.nan), verdict, r.get("best_metric", "")]
        rows.append(row)
    tbl = table(columns, rows, "correlation-table", caption="Correlation summary (click a column header to sort)") if rows else ""
    return (f"<section id='correlations'><h2>Correlations and rankings</h2>{callout(prep, corr)}{predictors_html(corr)}{plot_html}"
            f"<details><summary>Correlation table</summary>{tbl}</details></section>")


def methods_section(prep: Prepared, extra_versions: Mapping[str, str]) -> str:
    """The methods section: how the figures are made, the metrics' definitions, the run information and the results read."""
    present: dict[str, list[str]] = {}
    for s in prep.series:
        present.setdefault(s.metric, [])
        if s.analysis not in present[s.metric]:
            present[s.metric].append(s.analysis)
    rows = []
    for metric, analyses in present.items():
        doc = describe_metric(metric)
        rows.append([metric, ", ".join(analyses), doc.description, doc.better or "", doc.citation])
    metric_table = table([("metric", ""), ("analysis", ""), ("definition", ""), ("better", ""), ("reference", "")], rows,
                         "metrics-table", sortable=True)
    how = """
<ul>
<li><b>Weight-decay axis.</b> Line plots put log10(weight decay) on x; weight decay 0 is drawn one step left of the
smallest positive value (a step is the median spacing of the sweep's log weight decays, 0.5–1.5 decades) and a dotted
line marks the break. Heatmaps use the weight decays as equally spaced, ordered categories.</li>
<li><b>Scores.</b> A checkpoint's score for a per-layer or per-head metric is its mean over layers and heads; lines
show the mean over checkpoints that share a weight decay. Per-layer lines average over heads.</li>
<li><b>Bands.</b> Where the results carry intervals (<code>ci_low</code>/<code>ci_high</code>), the band is their mean
(exact if the layers' errors are perfectly correlated, conservative otherwise); otherwise it is a 95% percentile
bootstrap interval of the mean over layers (or over checkpoints).</li>
<li><b>Baselines.</b> Rows with <code>init</code> other than "trained" (e.g. a probe on a randomly initialised model)
are drawn dashed and left out of correlations and rankings.</li>
<li><b>Variants.</b> Extra columns that vary within a checkpoint (<code>task</code>, <code>pooling</code>, …) split a
metric into series, e.g. <code>probes.accuracy [task=pos, pooling=mean]</code>.</li>
<li><b>Correlations.</b> Spearman's ρ of checkpoint scores with weight decay (and with <code>plasticity_gain</code>
when measured), with a 95% percentile bootstrap interval over checkpoints (1000 resamples, seed 0). Kendall's τ with
validation loss. For metrics with a better direction, the ranking is <i>opposite</i> when the Kendall τ between the
two best-first orders is negative, and <i>best differs</i> when the top checkpoints differ. In a comparison, all of
this is computed within each group.</li>
<li><b>Validation loss</b> is the metric <code>val_loss</code> (analysis <code>overfit</code> first) where measured,
else the column <code>final_val_loss</code> written by the trainer (used here: """ + esc(
        prep.loss_sources.get("val_loss") or "none"
    ) + """).</li>
<li><b>Head heatmaps</b> show each head at the lowest and highest weight decay and the Spearman ρ of its value with
weight decay across checkpoints.</li>
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
    sources = kv_table(prep.sources)
    return (f"<section id='methods'><h2>Methods</h2><h3>How the figures are made</h3>{how}"
            f"<h3>Metric definitions</h3>{metric_table}<h3>Run</h3>{runs}"
            f"<h3>Report</h3>{kv_table(dict(extra_versions))}<h4>Results read</h4>{sources}</section>")


CSS = """
:root{--fg:#1d2330;--muted:#5b6475;--line:#dde1e8;--bg:#fff;--accent:#2456a6}
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;\
color:var(--fg);background:var(--bg);margin:0;line-height:1.45}
header{padding:18px 28px;border-bottom:1px solid var(--line);background:#f6f8fb}
header h1{margin:0 0 4px;font-size:1.45rem}
nav{font-size:.92rem}nav a{margin-right:14px;color:var(--accent);text-decoration:none}
main{padding:8px 28px 40px;max-width:1500px;margin:auto}
h2{border-bottom:2px solid var(--line);padding-bottom:4px;margin-top:32px}
.ps-muted{color:var(--muted);font-size:.9rem}
.ps-scroll{overflow-x:auto;max-width:100%}
.ps-table{border-collapse:collapse;font-size:.85rem;margin:8px 0}
.ps-table caption{text-align:left;color:var(--muted);padding:4px 0;font-size:.85rem}
.ps-table th,.ps-table td{border:1px solid var(--line);padding:3px 8px;text-align:left;vertical-align:top}
.ps-table td.num{text-align:right;font-variant-numeric:tabular-nums}
.ps-table thead th{background:#eef2f7;position:sticky;top:0}
.ps-sortable thead th{cursor:pointer;user-select:none}
.ps-sortable thead th[aria-sort=ascending]::after{content:" \\25B2"}
.ps-sortable thead th[aria-sort=descending]::after{content:" \\25BC"}
.ps-table tbody tr:nth-child(even){background:#fafbfd}
.ps-kv th{width:14em;background:#f6f8fb}
.ps-kv pre{margin:0;white-space:pre-wrap;word-break:break-all;font-size:.8rem}
.ps-callout{border-left:5px solid;padding:10px 14px;margin:12px 0;border-radius:3px}
.ps-warn{border-color:#d9822b;background:#fff6ec}.ps-ok{border-color:#3a9a5b;background:#effaf3}.ps-info{border-color:#7a8699;background:#f4f6f9}
.ps-callout ul{margin:6px 0 0;padding-left:20px}
.ps-grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:14px}
.ps-cell{border:1px solid var(--line);border-radius:4px;padding:4px;min-width:0}
.ps-cell.ps-wide{grid-column:1/-1}
.ps-plot{width:100%;min-height:380px}
details>summary{cursor:pointer;font-weight:600;margin:8px 0}
details.ps-analysis>summary{font-size:1.25rem}
code{background:#f1f3f7;padding:0 3px;border-radius:2px}
"""

JS = r"""
(function () {
  'use strict';
  var template = JSON.parse(document.getElementById('ps-template').textContent);
  var config = {displaylogo: false, responsive: true, showSendToCloud: false, showEditInChartStudio: false,
                showLink: false, plotlyServerURL: '', toImageButtonOptions: {format: 'png', scale: 2}};
  var plots = Array.prototype.slice.call(document.querySelectorAll('.ps-plot'));
  function render(div) {
    if (div.getAttribute('data-state')) return;
    div.setAttribute('data-state', 'rendering');
    var spec = JSON.parse(document.getElementById(div.getAttribute('data-spec')).textContent);
    spec.layout.template = template;
    Plotly.newPlot(div, spec.data, spec.layout, config).then(function () {
      div.setAttribute('data-state', 'rendered');
    }, function (err) {
      div.setAttribute('data-state', 'failed');
      div.textContent = 'This figure could not be drawn: ' + err;
    });
  }
  if ('IntersectionObserver' in window) {
    var io = new IntersectionObserver(function (entries) {
      entries.forEach(function (e) { if (e.isIntersecting) { io.unobserve(e.target); render(e.target); } });
    }, {rootMargin: '800px 0px'});
    plots.forEach(function (p) { io.observe(p); });
  } else {
    plots.forEach(render);
  }
  window.plastiscopeReport = {
    plots: plots.length,
    renderAll: function () { plots.forEach(render); },
    rendered: function () { return document.querySelectorAll('.ps-plot[data-state=rendered]').length; }
  };
  window.addEventListener('beforeprint', function () { plots.forEach(render); });

  function sortValue(cell) {
    var raw = cell.getAttribute('data-sort');
    if (raw === null) raw = cell.textContent;
    var num = raw.trim() === '' ? NaN : Number(raw);
    return {empty: raw.trim() === '', num: num, text: raw.toLowerCase()};
  }
  function compare(a, b) {
    if (a.empty || b.empty) return a.empty === b.empty ? 0 : (a.empty ? 1 : -1);
    var an = !isNaN(a.num), bn = !isNaN(b.num);
    if (an && bn) return a.num - b.num;
    if (an !== bn) return an ? -1 : 1;
    return a.text < b.text ? -1 : (a.text > b.text ? 1 : 0);
  }
  function sortTable(table, column, header) {
    var ascending = header.getAttribute('aria-sort') !== 'ascending';
    Array.prototype.forEach.call(header.parentNode.cells, function (th) { th.removeAttribute('aria-sort'); });
    header.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows).map(function (row, i) {
      return {row: row, key: sortValue(row.cells[column]), i: i};
    });
    rows.sort(function (x, y) {
      if (x.key.empty !== y.key.empty) return x.key.empty ? 1 : -1;  // empty cells last either way
      var c = compare(x.key, y.key);
      return (ascending ? c : -c) || x.i - y.i;
    });
    rows.forEach(function (r) { body.appendChild(r.row); });
  }
  Array.prototype.forEach.call(document.querySelectorAll('table.ps-sortable'), function (table) {
    if (!table.tHead) return;
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, column) {
      th.addEventListener('click', function () { sortTable(table, column, th); });
      th.addEventListener('keydown', function (e) {
        if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); sortTable(table, column, th); }
      });
    });
  });
})();
"""


def plotly_template() -> dict:
    """plotly's default template as JSON: written once per page, applied to every figure."""
    import plotly.io as pio

    return json.loads(json.dumps(pio.templates[pio.templates.default].to_plotly_json(), cls=plotly.utils.PlotlyJSONEncoder))


def render_page(prep: Prepared, specs: list[FigureSpec], corr: pd.DataFrame, title: str,
                extra_versions: Mapping[str, str]) -> str:
    """The whole report as one HTML string."""
    blocks: dict[str, list[str]] = {}
    scripts = []
    for i, spec in enumerate(specs):
        spec_id = f"ps-spec-{i}"
        scripts.append(json_script(spec_id, spec.spec))
        cls = "ps-cell ps-wide" if spec.wide else "ps-cell"
        height = int(spec.spec["layout"].get("height") or 380)
        cell = (f"<div class='{cls}'><div class='ps-plot' id='ps-plot-{i}' data-spec='{spec_id}' data-kind='{esc(spec.kind)}' "
                f"aria-label='{esc(spec.key)}' style='min-height:{height}px'></div></div>")
        blocks.setdefault(spec.section, []).append(cell)
    summary_plots = "<div class='ps-grid'>" + "".join(blocks.pop("summary", [])) + "</div>"
    analysis_sections = []
    nav = ["<a href='#overview'>Overview</a>", "<a href='#correlations'>Correlations</a>"]
    for i, (analysis, cells) in enumerate(blocks.items()):
        anchor = f"analysis-{i}"
        nav.append(f"<a href='#{anchor}'>{esc(analysis)}</a>")
        analysis_sections.append(f"<section id='{anchor}'><details class='ps-analysis' open><summary>{esc(analysis)}</summary>"
                                 f"<div class='ps-grid'>{''.join(cells)}</div></details></section>")
    nav.append("<a href='#methods'>Methods</a>")
    body = (overview_section(prep) + correlation_section(prep, corr, summary_plots)
            + "<h2>Metrics against weight decay</h2>" + "".join(analysis_sections) + methods_section(prep, extra_versions))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline'; \
style-src 'unsafe-inline'; img-src data: blob:; font-src data:">
<link rel="icon" href="data:,">
<title>{esc(title)}</title>
<style>{CSS}</style>
</head><body>
<header><h1>{esc(title)}</h1><nav>{''.join(nav)}</nav></header>
<main>{body}</main>
<script>{plotly.offline.get_plotlyjs()}</script>
{json_script("ps-template", plotly_template())}
{''.join(scripts)}
<script>{JS}</script>
</body></html>
"""


def generator_versions() -> dict[str, str]:
    """Versions of the packages that built the report, and when it was generated (UTC)."""
    import scipy

    import plastiscope

    return {"plastiscope": getattr(plastiscope, "__version__", "?"), "plotly": plotly.__version__, "pandas": pd.__version__,
            "numpy": np.__version__, "scipy": scipy.__version__, "python": platform.python_version(),
            "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
