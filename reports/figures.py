"""Plotly figures of every series against weight decay, and heatmaps over layers and heads.

Weight-decay axis ("log with 0"): x = log10(weight decay) for positive values; weight decay 0
is drawn one step left of the smallest positive value, where a step is the median spacing of
the sweep's log10 weight decays (clipped to 0.3 .. 1.5 decades; one decade for a single positive
value). A dotted line marks the break and the tick there reads "0". Ticks name the sweep's own
weight decays (decades when there are more than ten). A true symlog would squeeze 0 next to
tiny values or need a hand-picked linear threshold; this keeps every sweep point evenly
readable. Heatmaps use weight decay as ordered categories (equal spacing, labelled by value).

Figures built per series (see ``frame.Series``):

- ``weight_decay``: the layer-averaged score per weight decay (mean over layers, heads and
  checkpoints with that weight decay) with a 95 % band, per-layer lines (mean over heads),
  and dashed baseline lines (``init="random"``). The band averages the rows' own intervals
  (``ci_low``/``ci_high``) where the results carry them, else is a bootstrap interval of the
  mean over layers (or over checkpoints). In a comparison, each group is one colour and
  per-layer lines are left out.
- ``layer_heatmap``: layer x weight decay, mean over heads (one panel per group).
- ``head_heatmap``: head x layer at the lowest and highest weight decay, and the Spearman rho
  of each head's value with weight decay across checkpoints (only rho per group in a
  comparison).
"""

from __future__ import annotations

import html
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative, sample_colorscale
from plotly.subplots import make_subplots
from scipy.stats import rankdata

from plastiscope.reports.frame import Prepared, Series
from plastiscope.stats import mean_ci

HEIGHT = 380
GROUP_COLORS = qualitative.D3 + qualitative.Set2


@dataclass
class FigureSpec:
    """A figure with the numbers it draws: ``key`` names it, ``data`` is its CSV."""

    key: str
    section: str  # analysis name, or "summary"
    kind: str  # "weight_decay", "layer_heatmap", "head_heatmap", "correlation"
    series: str | None
    figure: go.Figure
    data: pd.DataFrame
    wide: bool = False


def esc(text: object) -> str:
    """Escape user text for plotly's pseudo-HTML (titles, ticks, hover): shown literally."""
    return html.escape(str(text), quote=False)


def fmt_wd(wd: float) -> str:
    return "0" if wd == 0 else f"{wd:g}"


def _round(values, digits: int = 5) -> list:
    """Values rounded to ``digits`` significant digits, NaN -> None (keeps the HTML small)."""
    out = []
    for v in np.asarray(values, dtype=float).ravel():
        out.append(None if not math.isfinite(v) else float(f"{v:.{digits}g}"))
    return out


@dataclass
class WDAxis:
    """Maps weight decays to x positions on a log axis that also shows 0 (module docstring)."""

    linear: bool
    zero: float | None
    step: float
    tickvals: list[float]
    ticktext: list[str]

    def x(self, wd) -> np.ndarray:
        wd = np.asarray(wd, dtype=float)
        if self.linear:
            return wd
        with np.errstate(divide="ignore", invalid="ignore"):
            pos = np.log10(wd)
        return np.where(wd == 0, self.zero if self.zero is not None else np.nan, pos)

    def layout(self, axis: str = "xaxis") -> dict:
        """Layout entries for one x axis (``"xaxis"``, ``"xaxis2"``, ...) drawn with this mapping."""
        title = "weight decay" if self.linear else "weight decay (log scale, 0 left of the break)"
        return {axis: dict(tickmode="array", tickvals=_round(self.tickvals), ticktext=self.ticktext, title=dict(text=title))}

    def break_shape(self, xref: str = "x") -> list[dict]:
        """A dotted vertical line between 0 and the smallest positive weight decay."""
        if self.zero is None or self.linear:
            return []
        x = _round([self.zero + self.step / 2])[0]
        return [dict(type="line", xref=xref, yref="paper", x0=x, x1=x, y0=0, y1=1, layer="below",
                     line=dict(color="#999", width=1, dash="dot"))]


def make_wd_axis(weight_decays) -> WDAxis:
    wds = np.unique(np.asarray(weight_decays, dtype=float))
    wds = wds[np.isfinite(wds)]
    positive = wds[wds > 0]
    if len(positive) == 0:
        return WDAxis(True, None, 1.0, _round(wds), [fmt_wd(w) for w in wds])
    logs = np.log10(positive)
    step = float(np.clip(np.median(np.diff(logs)), 0.3, 1.5)) if len(logs) > 1 else 1.0
    zero = float(logs.min() - step) if (wds == 0).any() else None
    if len(positive) <= 10:
        tickvals, ticktext = [float(v) for v in logs], [fmt_wd(w) for w in positive]
    else:
        decades = np.arange(math.floor(logs.min()), math.ceil(logs.max()) + 1)
        tickvals, ticktext = [float(d) for d in decades], [fmt_wd(10.0**d) for d in decades]
    if zero is not None:
        tickvals, ticktext = [zero] + tickvals, ["0"] + ticktext
    return WDAxis(False, zero, step, tickvals, ticktext)


def _title(s: Series, what: str) -> str:
    variant = f" [{esc(s.variant)}]" if s.variant else ""
    return f"<b>{esc(s.analysis)} · {esc(s.metric)}</b>{variant}{what}"


def _band(rows: pd.DataFrame, s: Series) -> tuple[pd.DataFrame, str]:
    """Per weight decay: value (mean), low, high, checkpoints. ``rows`` are one series' rows of one line."""
    per_ckpt = rows.groupby("_id", sort=False).agg(weight_decay=("weight_decay", "first"), label=("_label", "first"),
                                                   value=("value", "mean"), low=("ci_low", "mean"), high=("ci_high", "mean"))
    grouped = per_ckpt.groupby("weight_decay")
    out = grouped[["value", "low", "high"]].mean()
    out["checkpoints"] = grouped["label"].agg(lambda x: ", ".join(map(str, x)))
    out = out.reset_index()
    if rows["ci_low"].notna().any():
        return out, "95% CI (mean of the rows' intervals)"
    if s.has_layer and s.n_layers > 1:
        units = rows.groupby(["weight_decay", "layer"])["value"].mean()
        label = "95% CI over layers"
    else:
        units = per_ckpt.set_index("weight_decay")["value"]
        label = "95% CI over checkpoints"
    by_wd = {wd: v.to_numpy(dtype=float) for wd, v in units.groupby(level=0)}
    bounds = [mean_ci(by_wd.get(wd, np.array([])))[1:3] for wd in out["weight_decay"]]
    out["low"] = [b[0] for b in bounds]
    out["high"] = [b[1] for b in bounds]
    return out, label


def _mean_traces(axis: WDAxis, table: pd.DataFrame, name: str, color: str, band_label: str, legendgroup: str,
                 dash: str | None = None, xaxis: str = "x", yaxis: str = "y", showlegend: bool = True) -> list[dict]:
    """Traces of one line with its band (the band only for solid lines)."""
    traces = []
    finite = table["low"].notna() & table["high"].notna()
    if finite.any() and dash is None:
        t = table[finite]
        xb = _round(axis.x(t["weight_decay"]))
        common = dict(type="scatter", x=xb, mode="lines", line=dict(width=0, color=color), hoverinfo="skip",
                      legendgroup=legendgroup, showlegend=False, xaxis=xaxis, yaxis=yaxis)
        traces.append(dict(common, y=_round(t["high"])))
        traces.append(dict(common, y=_round(t["low"]), fill="tonexty", fillcolor=_alpha(color, 0.18), name=esc(band_label)))
    custom = [[fmt_wd(w), esc(c)] for w, c in zip(table["weight_decay"], table["checkpoints"])]
    traces.append(dict(
        type="scatter", x=_round(axis.x(table["weight_decay"])), y=_round(table["value"]), mode="lines+markers", name=name,
        legendgroup=legendgroup, showlegend=showlegend, xaxis=xaxis, yaxis=yaxis,
        line=dict(color=color, width=2.5 if dash is None else 1.5, dash=dash or "solid"), marker=dict(size=6 if dash is None else 4),
        customdata=custom, hovertemplate="wd=%{customdata[0]}<br>%{y:.4g}<br>%{customdata[1]}<extra>" + name + "</extra>",
    ))
    return traces


def _alpha(color: str, alpha: float) -> str:
    color = color.strip()
    if color.startswith("#") and len(color) == 7:
        r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
        return f"rgba({r},{g},{b},{alpha})"
    if color.startswith("rgb(") :
        return "rgba(" + color[4:-1] + f",{alpha})"
    return color


def wd_line_figure(prep: Prepared, s: Series, axis: WDAxis) -> FigureSpec:
    rows = prep.series_rows(s.key)
    rows = rows[rows["weight_decay"].notna()]
    trained, baseline = rows[~rows["_baseline"]], rows[rows["_baseline"]]
    traces: list[dict] = []
    data = []
    grouped = bool(prep.group_by)
    if not grouped and s.has_layer and s.n_layers > 1 and len(trained):
        per_layer = trained.groupby(["layer", "weight_decay"])["value"].mean().reset_index()
        layers = sorted(int(v) for v in per_layer["layer"].unique())
        colors = sample_colorscale("Viridis", [i / max(len(layers) - 1, 1) for i in range(len(layers))])
        for i, ((layer, t), color) in enumerate(zip(per_layer.groupby("layer", sort=True), colors)):
            traces.append(dict(
                type="scatter", x=_round(axis.x(t["weight_decay"])), y=_round(t["value"]), mode="lines",
                line=dict(width=1, color=color), opacity=0.55, legendgroup="layers", showlegend=i == 0,
                name=f"per layer (0 dark … {layers[-1]} light)", customdata=[fmt_wd(w) for w in t["weight_decay"]],
                hovertemplate=f"layer {int(layer)}<br>wd=%{{customdata}}<br>%{{y:.4g}}<extra></extra>",
            ))
        data.append(per_layer.assign(line="layer " + per_layer["layer"].astype(int).astype(str), group=""))
    for gi, group in enumerate(prep.groups):
        g_trained = trained[trained["_group"] == group] if grouped else trained
        g_base = baseline[baseline["_group"] == group] if grouped else baseline
        color = GROUP_COLORS[gi % len(GROUP_COLORS)] if grouped else "#d62728"
        prefix = f"{esc(group)}: " if grouped else ""
        if len(g_trained):
            table, band_label = _band(g_trained, s)
            what = "mean over layers" if s.has_layer else "value"
            traces += _mean_traces(axis, table, f"{prefix}{what}", color, band_label, legendgroup=f"g{gi}")
            data.append(table.assign(line=f"mean ({band_label})", group=group))
        for label, b in g_base.groupby("_baseline_label"):
            table, band_label = _band(b, s)
            traces += _mean_traces(axis, table, f"{prefix}baseline init={esc(label)}", "#7f7f7f" if not grouped else color,
                                   band_label, legendgroup=f"g{gi}b", dash="dash")
            data.append(table.assign(line=f"baseline init={label}", group=group))
    layout = dict(title=dict(text=_title(s, " vs weight decay"), font=dict(size=14)), height=HEIGHT,
                  margin=dict(l=60, r=20, t=60, b=50), yaxis=dict(title=dict(text=esc(s.metric))),
                  legend=dict(orientation="h", yanchor="top", y=-0.22, font=dict(size=10)), hovermode="closest",
                  shapes=axis.break_shape())
    layout.update(axis.layout())
    frame = pd.concat(data, ignore_index=True) if data else pd.DataFrame(columns=["group", "line", "weight_decay", "value"])
    frame.insert(0, "series", s.key)
    return FigureSpec(f"{s.key}: vs weight decay", s.analysis, "weight_decay", s.key, go.Figure(data=traces, layout=layout), frame)


def _wd_categories(values) -> tuple[list[float], list[str]]:
    wds = sorted(set(float(v) for v in values if math.isfinite(v)))
    return wds, [fmt_wd(w) for w in wds]


def layer_heatmap(prep: Prepared, s: Series) -> FigureSpec | None:
    if not (s.has_layer and s.n_layers > 1):
        return None
    rows = prep.series_rows(s.key)
    rows = rows[~rows["_baseline"] & rows["layer"].notna() & rows["weight_decay"].notna()]
    if rows.empty:
        return None
    table = rows.groupby(["_group", "layer", "weight_decay"])["value"].mean().reset_index()
    groups = [g for g in prep.groups if (table["_group"] == g).any()]
    fig = make_subplots(rows=1, cols=len(groups), shared_yaxes=True, horizontal_spacing=0.03,
                        subplot_titles=[esc(g) for g in groups] if prep.group_by else None)
    zmin, zmax = np.nanmin(table["value"]), np.nanmax(table["value"])
    for col, group in enumerate(groups, start=1):
        t = table[table["_group"] == group]
        wds, labels = _wd_categories(t["weight_decay"])
        layers = sorted(int(v) for v in t["layer"].unique())
        z = t.pivot(index="layer", columns="weight_decay", values="value").reindex(index=layers, columns=wds)
        fig.add_trace(go.Heatmap(x=labels, y=layers, z=[_round(r) for r in z.to_numpy()], coloraxis="coloraxis",
                                 hovertemplate="layer %{y}<br>wd=%{x}<br>%{z:.4g}<extra></extra>"), row=1, col=col)
        fig.update_xaxes(type="category", title_text="weight decay", row=1, col=col)
    fig.update_yaxes(title_text="layer", row=1, col=1)
    fig.update_layout(title=dict(text=_title(s, ": layer × weight decay"), font=dict(size=14)), height=HEIGHT,
                      margin=dict(l=60, r=20, t=70, b=50),
                      coloraxis=dict(colorscale="Viridis", cmin=_round([zmin])[0], cmax=_round([zmax])[0],
                                     colorbar=dict(title=dict(text=esc(s.metric), side="right"))))
    data = table.rename(columns={"_group": "group"})
    data.insert(0, "series", s.key)
    return FigureSpec(f"{s.key}: layer x weight decay", s.analysis, "layer_heatmap", s.key, fig, data, wide=len(groups) > 2)


def _head_rho(rows: pd.DataFrame) -> pd.DataFrame:
    """Spearman rho of each (layer, head)'s value with weight decay across checkpoints.

    Ranks with ties averaged, as ``scipy.stats.spearmanr``; a cell missing in some checkpoint
    is computed over the checkpoints that have it.
    """
    per = rows.groupby(["_id", "layer", "head"])["value"].mean().unstack(["layer", "head"])  # [checkpoint, cell]
    wd = rows.groupby("_id")["weight_decay"].first().reindex(per.index).to_numpy(dtype=float)
    if len(per) < 3 or len(np.unique(wd)) < 2:
        return pd.DataFrame(columns=["layer", "head", "value"])
    values = per.to_numpy(dtype=float)
    if np.isnan(values).any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rho = per.corrwith(pd.Series(wd, index=per.index), method="spearman").to_numpy(dtype=float)
    else:
        ranks = rankdata(values, axis=0) - (len(values) + 1) / 2  # centred ranks [checkpoint, cell]
        wd_ranks = rankdata(wd) - (len(wd) + 1) / 2
        with np.errstate(invalid="ignore", divide="ignore"):
            rho = (ranks * wd_ranks[:, None]).sum(0) / np.sqrt((ranks**2).sum(0) * (wd_ranks**2).sum())
    return pd.DataFrame({"layer": per.columns.get_level_values(0), "head": per.columns.get_level_values(1), "value": rho})


def head_heatmap(prep: Prepared, s: Series) -> FigureSpec | None:
    if not s.has_head:
        return None
    rows = prep.series_rows(s.key)
    rows = rows[~rows["_baseline"] & rows["head"].notna() & rows["weight_decay"].notna()]
    rows = rows.assign(layer=rows["layer"].fillna(0))
    if rows.empty:
        return None
    panels: list[tuple[str, pd.DataFrame, str]] = []  # (title, table[layer, head, value], coloraxis)
    if prep.group_by:
        for group in prep.groups:
            g = rows[rows["_group"] == group]
            if len(g):
                panels.append((f"{esc(group)}: ρ with wd", _head_rho(g), "coloraxis2"))
    else:
        wds = sorted(rows["weight_decay"].unique())
        for wd in dict.fromkeys([wds[0], wds[-1]]):
            t = rows[rows["weight_decay"] == wd].groupby(["layer", "head"])["value"].mean().reset_index()
            panels.append((f"wd = {fmt_wd(wd)}", t, "coloraxis"))
        panels.append(("Spearman ρ with wd (per head)", _head_rho(rows), "coloraxis2"))
    panels = [p for p in panels if len(p[1])]
    if not panels:
        return None
    fig = make_subplots(rows=1, cols=len(panels), shared_yaxes=True, horizontal_spacing=0.06,
                        subplot_titles=[p[0] for p in panels])
    data = []
    values = pd.concat([p[1]["value"] for p in panels if p[2] == "coloraxis"]) if any(p[2] == "coloraxis" for p in panels) else None
    for col, (title, t, coloraxis) in enumerate(panels, start=1):
        layers = sorted(int(v) for v in t["layer"].unique())
        heads = sorted(int(v) for v in t["head"].unique())
        z = t.pivot(index="layer", columns="head", values="value").reindex(index=layers, columns=heads)
        fig.add_trace(go.Heatmap(x=heads, y=layers, z=[_round(r, 4) for r in z.to_numpy()], coloraxis=coloraxis,
                                 hovertemplate="layer %{y}, head %{x}<br>%{z:.3g}<extra></extra>"), row=1, col=col)
        fig.update_xaxes(title_text="head", row=1, col=col)
        data.append(t.assign(panel=title.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")))
    fig.update_yaxes(title_text="layer", row=1, col=1)
    layout = dict(title=dict(text=_title(s, ": head × layer"), font=dict(size=14)), height=HEIGHT + 40,
                  margin=dict(l=60, r=20, t=80, b=50),
                  coloraxis2=dict(colorscale="RdBu", cmin=-1, cmax=1, reversescale=True,
                                  colorbar=dict(title=dict(text="ρ", side="right"), x=1.0 if values is None else 1.08)))
    if values is not None:
        layout["coloraxis"] = dict(colorscale="Viridis", cmin=_round([np.nanmin(values)])[0], cmax=_round([np.nanmax(values)])[0],
                                   colorbar=dict(title=dict(text=esc(s.metric), side="right"), x=1.0))
    fig.update_layout(**layout)
    frame = pd.concat(data, ignore_index=True)
    frame.insert(0, "series", s.key)
    return FigureSpec(f"{s.key}: head x layer", s.analysis, "head_heatmap", s.key, fig, frame, wide=True)


def correlation_figure(prep: Prepared, table: pd.DataFrame) -> FigureSpec | None:
    """Forest plot: Spearman rho of each series with weight decay (and plasticity) with 95 % CIs."""
    if table.empty or table["rho_wd"].isna().all():
        return None
    has_plasticity = "rho_plasticity" in table and table["rho_plasticity"].notna().any()
    columns = [("rho_wd", "ρ with weight decay")] + ([("rho_plasticity", "ρ with plasticity_gain")] if has_plasticity else [])
    keys = list(dict.fromkeys(table["series"]))
    fig = make_subplots(rows=1, cols=len(columns), shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=[c[1] for c in columns])
    groups = prep.groups
    for col, (name, _) in enumerate(columns, start=1):
        for gi, group in enumerate(groups):
            t = table[table["group"] == group]
            color = GROUP_COLORS[gi % len(GROUP_COLORS)]
            fig.add_trace(go.Scatter(
                x=_round(t[name], 3), y=[esc(k) for k in t["series"]], mode="markers", marker=dict(color=color, size=7),
                name=esc(group) if prep.group_by else "Spearman ρ", legendgroup=f"g{gi}", showlegend=col == 1 and bool(prep.group_by),
                error_x=dict(type="data", symmetric=False, array=_round(t[f"{name}_high"] - t[name], 3),
                             arrayminus=_round(t[name] - t[f"{name}_low"], 3), thickness=1.2, width=0),
                hovertemplate="%{y}<br>ρ=%{x:.3f}<extra></extra>",
            ), row=1, col=col)
        fig.add_vline(x=0, line_color="#999", line_width=1, row=1, col=col)
        fig.update_xaxes(range=[-1.05, 1.05], row=1, col=col)
    fig.update_yaxes(autorange="reversed", categoryorder="array", categoryarray=[esc(k) for k in keys], automargin=True)
    fig.update_layout(title=dict(text="<b>Spearman correlation with 95% bootstrap CI over checkpoints</b>", font=dict(size=14)),
                      height=max(300, 120 + 18 * len(keys)), margin=dict(l=20, r=20, t=70, b=40))
    keep = ["group", "series", "n"] + [c for name, _ in columns for c in (name, f"{name}_low", f"{name}_high")]
    return FigureSpec("summary: Spearman correlations", "summary", "correlation", None, fig, table[keep].copy(), wide=True)


def build_figures(prep: Prepared, table: pd.DataFrame | None = None) -> list[FigureSpec]:
    """All figures of a report, in page order: the correlation summary, then per series."""
    specs: list[FigureSpec] = []
    if table is not None:
        corr = correlation_figure(prep, table)
        if corr is not None:
            specs.append(corr)
    axis = make_wd_axis(prep.checkpoints["weight_decay"])
    for s in prep.series:
        specs.append(wd_line_figure(prep, s, axis))
        for builder in (layer_heatmap, head_heatmap):
            spec = builder(prep, s)
            if spec is not None:
                specs.append(spec)
    return specs
