"""Plotly figures of every series against weight decay, and heatmaps over layers and heads.

Weight-decay axis ("log with 0"): x = log10(weight decay) for positive values; weight decay 0
is drawn one step left of the smallest positive value, where a step is the median spacing of
the sweep's log10 weight decays (clipped to 0.5 .. 1.5 decades; one decade for a single positive
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
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative, sample_colorscale

from plastiscope.reports.frame import Prepared, Series, SeriesRows, group_mean
from plastiscope.reports.markup import esc
from plastiscope.stats import mean_ci, spearman_rows

HEIGHT = 380
GROUP_COLORS = qualitative.D3 + qualitative.Set2
RHO_COLORS = [[0.0, "#2166ac"], [0.5, "#f7f7f7"], [1.0, "#b2182b"]]  # explicit: plotly.js and plotly.py differ on "RdBu"


@dataclass
class FigureSpec:
    """A figure as plotly JSON (``spec``: data + layout, no template) and the numbers it draws.

    ``key`` names it, ``data`` is its CSV; ``figure`` builds the ``plotly.graph_objects.Figure``
    on first use (building validated Figures is slow, the HTML page only needs the JSON).
    """

    key: str
    section: str  # analysis name, or "summary"
    kind: str  # "weight_decay", "layer_heatmap", "head_heatmap", "correlation"
    series: str | None
    spec: dict
    data: pd.DataFrame
    wide: bool = False
    _figure: go.Figure | None = field(default=None, repr=False)

    @property
    def figure(self) -> go.Figure:
        """The ``plotly.graph_objects.Figure`` of :attr:`spec`, built once."""
        if self._figure is None:
            self._figure = go.Figure(self.spec)
        return self._figure


def panels_layout(n: int, titles: list[str] | None, spacing: float = 0.05) -> dict:
    """Layout of ``n`` side-by-side panels sharing the y axis ``y`` (x axes ``x``, ``x2``, ...)."""
    width = (1.0 - spacing * (n - 1)) / n
    layout: dict = {"yaxis": dict(anchor="x", domain=[0.0, 1.0])}
    annotations = []
    for i in range(n):
        x0 = i * (width + spacing)
        layout["xaxis" if i == 0 else f"xaxis{i + 1}"] = dict(domain=[round(x0, 4), round(x0 + width, 4)], anchor="y")
        if titles:
            annotations.append(dict(text=titles[i], x=round(x0 + width / 2, 4), y=1.0, xref="paper", yref="paper",
                                    xanchor="center", yanchor="bottom", showarrow=False, font=dict(size=12)))
    layout["annotations"] = annotations
    return layout


def axis_ref(i: int, kind: str = "x") -> str:
    """Trace axis reference of panel ``i`` (0-based): ``x``, ``x2``, ..."""
    return kind if i == 0 else f"{kind}{i + 1}"


def fmt_wd(wd: float, digits: int = 3) -> str:
    """A weight decay as a short label (``digits`` significant digits)."""
    return "0" if wd == 0 else f"{wd:.{digits}g}"


def wd_labels(wds) -> list[str]:
    """Distinct labels for distinct weight decays: as short as possible, longer where needed."""
    wds = list(wds)
    for digits in range(3, 18):
        labels = [fmt_wd(w, digits) for w in wds]
        if len(set(labels)) == len(set(wds)):
            return labels
    return [repr(float(w)) for w in wds]


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
        """The x positions of weight decays ``wd``: log10, 0 left of the break (the values themselves on a linear axis)."""
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
    """The weight-decay axis of a sweep: log with 0 (module docstring), linear when no weight decay is positive."""
    wds = np.unique(np.asarray(weight_decays, dtype=float))
    wds = wds[np.isfinite(wds)]
    positive = wds[wds > 0]
    if len(positive) == 0:
        return WDAxis(True, None, 1.0, _round(wds), [fmt_wd(w) for w in wds])
    logs = np.log10(positive)
    step = float(np.clip(np.median(np.diff(logs)), 0.5, 1.5)) if len(logs) > 1 else 1.0
    zero = float(logs.min() - step) if (wds == 0).any() else None
    if len(positive) <= 10:
        tickvals, ticktext = [float(v) for v in logs], wd_labels(positive)
    else:
        decades = np.arange(math.floor(logs.min()), math.ceil(logs.max()) + 1)
        tickvals, ticktext = [float(d) for d in decades], [fmt_wd(10.0**d) for d in decades]
    if zero is not None:
        tickvals, ticktext = [zero] + tickvals, ["0"] + ticktext
    return WDAxis(False, zero, step, tickvals, ticktext)


def _title(s: Series, what: str) -> str:
    variant = f" [{esc(s.variant)}]" if s.variant else ""
    return f"<b>{esc(s.analysis)} · {esc(s.metric)}</b>{variant}{what}"


def _band(r: SeriesRows, s: Series, labels: np.ndarray) -> tuple[dict[str, np.ndarray | list], str]:
    """Per weight decay: ``weight_decay``, ``value`` (mean), ``low``, ``high``, ``checkpoints``.

    ``r``: the rows of one line. A checkpoint's value is its mean over layers/heads/rows; a
    weight decay's value the mean over its checkpoints.
    """
    (ck,), value = group_mean([r.ck], r.value)
    _, low = group_mean([r.ck], r.ci_low)
    _, high = group_mean([r.ck], r.ci_high)
    _, ck_wd = group_mean([r.ck], r.weight_decay)
    (wds,), wd_value = group_mean([ck_wd], value)
    _, wd_low = group_mean([ck_wd], low)
    _, wd_high = group_mean([ck_wd], high)
    names = [", ".join(str(labels[int(c)]) for c in ck[ck_wd == wd]) for wd in wds]
    out = {"weight_decay": wds, "value": wd_value, "low": wd_low, "high": wd_high, "checkpoints": names}
    if np.isfinite(r.ci_low).any():
        return out, "95% CI (mean of the rows' intervals)"
    if s.has_layer and s.n_layers > 1 and np.isfinite(r.layer).all():
        (unit_wd, _), unit_value = group_mean([r.weight_decay, r.layer], r.value)
        label = "95% CI over layers"
    else:
        unit_wd, unit_value = ck_wd, value
        label = "95% CI over checkpoints"
    bounds = [mean_ci(unit_value[unit_wd == wd])[1:3] for wd in wds]
    out["low"] = np.array([b[0] for b in bounds])
    out["high"] = np.array([b[1] for b in bounds])
    return out, label


def _band_frame(band: dict, line: str, group: str) -> pd.DataFrame:
    return pd.DataFrame({"group": group, "line": line, "weight_decay": band["weight_decay"], "value": band["value"],
                         "low": band["low"], "high": band["high"], "checkpoints": band["checkpoints"]})


def _mean_traces(axis: WDAxis, band: dict, name: str, color: str, band_label: str, legendgroup: str,
                 dash: str | None = None, showlegend: bool = True) -> list[dict]:
    """Traces of one line with its band (the band only for solid lines)."""
    traces = []
    wd, low, high = np.asarray(band["weight_decay"]), np.asarray(band["low"]), np.asarray(band["high"])
    finite = np.isfinite(low) & np.isfinite(high)
    if finite.any() and dash is None:
        xb = _round(axis.x(wd[finite]))
        common = dict(type="scatter", x=xb, mode="lines", line=dict(width=0, color=color), hoverinfo="skip",
                      legendgroup=legendgroup, showlegend=False)
        traces.append(dict(common, y=_round(high[finite])))
        traces.append(dict(common, y=_round(low[finite]), fill="tonexty", fillcolor=_alpha(color, 0.18), name=band_label,
                           showlegend=showlegend))
    custom = [[fmt_wd(w), esc(c)] for w, c in zip(wd, band["checkpoints"])]
    traces.append(dict(
        type="scatter", x=_round(axis.x(wd)), y=_round(band["value"]), mode="lines+markers", name=name,
        legendgroup=legendgroup, showlegend=showlegend,
        line=dict(color=color, width=2.5 if dash is None else 1.5, dash=dash or "solid"), marker=dict(size=6 if dash is None else 4),
        customdata=custom, hovertemplate="wd=%{customdata[0]}<br>%{y:.4g}<br>%{customdata[1]}<extra>" + name + "</extra>",
    ))
    return traces


def _alpha(color: str, alpha: float) -> str:
    color = color.strip()
    if color.startswith("#") and len(color) == 7:
        r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
        return f"rgba({r},{g},{b},{alpha})"
    if color.startswith("rgb("):
        return "rgba(" + color[4:-1] + f",{alpha})"
    return color


def wd_line_figure(prep: Prepared, s: Series, axis: WDAxis) -> FigureSpec:
    """The series against weight decay: layer-averaged line with band, per-layer lines, baselines."""
    rows = prep.series_rows(s.key)
    rows = rows.select(np.isfinite(rows.weight_decay))
    trained, baseline = rows.select(~rows.baseline), rows.select(rows.baseline)
    labels = prep.labels
    traces: list[dict] = []
    data: list[pd.DataFrame] = []
    grouped = bool(prep.group_by)
    layered = trained.select(np.isfinite(trained.layer))
    if not grouped and s.has_layer and s.n_layers > 1 and len(layered):
        (layer, wd), value = group_mean([layered.layer, layered.weight_decay], layered.value)
        layers = np.unique(layer)
        colors = sample_colorscale("Viridis", [i / max(len(layers) - 1, 1) for i in range(len(layers))])
        last = int(layers[-1])
        for i, (lay, color) in enumerate(zip(layers, colors)):
            m = layer == lay
            traces.append(dict(
                type="scatter", x=_round(axis.x(wd[m])), y=_round(value[m]), mode="lines",
                line=dict(width=1, color=color), opacity=0.55, legendgroup="layers", showlegend=i == 0,
                name=f"per layer (0 dark … {last} light)", customdata=[fmt_wd(w) for w in wd[m]],
                hovertemplate=f"layer {int(lay)}<br>wd=%{{customdata}}<br>%{{y:.4g}}<extra></extra>",
            ))
        data.append(pd.DataFrame({"group": "", "line": [f"layer {int(v)}" for v in layer], "weight_decay": wd, "value": value}))
    for gi, group in enumerate(prep.groups):
        g_trained = trained.select(trained.group == gi)
        g_base = baseline.select(baseline.group == gi)
        color = GROUP_COLORS[gi % len(GROUP_COLORS)] if grouped else "#d62728"
        prefix = f"{esc(group)}: " if grouped else ""
        if len(g_trained):
            band, band_label = _band(g_trained, s, labels)
            what = "mean over layers" if s.has_layer else "value"
            traces += _mean_traces(axis, band, f"{prefix}{what}", color, f"{prefix}{esc(band_label)}", legendgroup=f"g{gi}")
            data.append(_band_frame(band, f"mean ({band_label})", group))
        for label in dict.fromkeys(g_base.baseline_label):
            band, band_label = _band(g_base.select(g_base.baseline_label == label), s, labels)
            traces += _mean_traces(axis, band, f"{prefix}baseline init={esc(label)}", "#7f7f7f" if not grouped else color,
                                   band_label, legendgroup=f"g{gi}b", dash="dash")
            data.append(_band_frame(band, f"baseline init={label}", group))
    layout = dict(title=dict(text=_title(s, " vs weight decay"), font=dict(size=14)), height=HEIGHT,
                  margin=dict(l=60, r=20, t=60, b=50), yaxis=dict(title=dict(text=esc(s.metric))),
                  legend=dict(orientation="h", yanchor="top", y=-0.22, font=dict(size=10)), hovermode="closest",
                  shapes=axis.break_shape())
    layout.update(axis.layout())
    frame = pd.concat(data, ignore_index=True) if data else pd.DataFrame(columns=["group", "line", "weight_decay", "value"])
    frame.insert(0, "series", s.key)
    return FigureSpec(f"{s.key}: vs weight decay", s.analysis, "weight_decay", s.key, {"data": traces, "layout": layout}, frame)


def _integer_ticks(values: np.ndarray, max_ticks: int = 12) -> dict:
    """Axis ticks on whole numbers only (layers, heads), at most about ``max_ticks`` of them."""
    values = np.asarray(values, dtype=float)
    span = float(values.max() - values.min()) if len(values) else 0.0
    return dict(tickmode="linear", tick0=0, dtick=max(1, int(math.ceil((span + 1) / max_ticks))))


def _matrix(row_keys: np.ndarray, col_keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pivot aligned ``[cell]`` arrays into ``(rows, cols, z [row, col])`` with NaN where missing."""
    rows, cols = np.unique(row_keys), np.unique(col_keys)
    z = np.full((len(rows), len(cols)), np.nan)
    z[np.searchsorted(rows, row_keys), np.searchsorted(cols, col_keys)] = values
    return rows, cols, z


def layer_heatmap(prep: Prepared, s: Series) -> FigureSpec | None:
    """Layer x weight decay (mean over heads and checkpoints); one panel per group."""
    if not (s.has_layer and s.n_layers > 1):
        return None
    r = prep.series_rows(s.key)
    r = r.select(~r.baseline & np.isfinite(r.layer) & np.isfinite(r.weight_decay))
    if not len(r):
        return None
    (group, layer, wd), value = group_mean([r.group, r.layer, r.weight_decay], r.value)
    groups = [int(g) for g in np.unique(group)]
    layout = panels_layout(len(groups), [esc(prep.groups[g]) for g in groups] if prep.group_by else None, spacing=0.03)
    traces = []
    for i, g in enumerate(groups):
        m = group == g
        layers, wds, z = _matrix(layer[m], wd[m], value[m])
        traces.append(dict(type="heatmap", x=wd_labels(wds), y=[int(v) for v in layers],
                           z=[_round(row) for row in z], coloraxis="coloraxis", xaxis=axis_ref(i), yaxis="y",
                           hovertemplate="layer %{y}<br>wd=%{x}<br>%{z:.4g}<extra></extra>"))
        layout["xaxis" if i == 0 else f"xaxis{i + 1}"].update(type="category", title=dict(text="weight decay"))
    layout["yaxis"].update(title=dict(text="layer"), **_integer_ticks(np.unique(layer)))
    layout.update(title=dict(text=_title(s, ": layer × weight decay"), font=dict(size=14)), height=HEIGHT,
                  margin=dict(l=60, r=20, t=70, b=50),
                  coloraxis=dict(colorscale="Viridis", cmin=_round([np.nanmin(value)])[0], cmax=_round([np.nanmax(value)])[0],
                                 colorbar=dict(title=dict(text=esc(s.metric), side="right"))))
    data = pd.DataFrame({"series": s.key, "group": [prep.groups[int(g)] if prep.group_by else "" for g in group],
                         "layer": layer.astype(int), "weight_decay": wd, "value": value})
    return FigureSpec(f"{s.key}: layer x weight decay", s.analysis, "layer_heatmap", s.key, {"data": traces, "layout": layout},
                      data, wide=len(groups) > 2)


def _spearman_columns(x: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Spearman rho of ``x [unit]`` with each column of ``values [unit, column]`` (ties averaged, NaN pairs dropped)."""
    rho = np.full(values.shape[1], np.nan)
    for j in range(values.shape[1]):
        keep = np.isfinite(values[:, j])
        if keep.sum() >= 3:
            rho[j] = spearman_rows(x[keep], values[keep, j])
    return rho


def _head_rho(r: SeriesRows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spearman rho of each (layer, head)'s value with weight decay across checkpoints -> (layer, head, rho)."""
    (ck, layer, head), value = group_mean([r.ck, r.layer, r.head], r.value)
    cell = layer * 1_000_000 + head
    cks, cells, matrix = _matrix(ck, cell, value)  # [checkpoint, cell]
    (_,), wd = group_mean([r.ck], r.weight_decay)
    if len(cks) < 3 or len(np.unique(wd)) < 2:
        return np.array([]), np.array([]), np.array([])
    return cells // 1_000_000, cells % 1_000_000, _spearman_columns(wd, matrix)


def head_heatmap(prep: Prepared, s: Series) -> FigureSpec | None:
    """Head x layer at the lowest and highest weight decay, and each head's Spearman rho with weight decay."""
    if not s.has_head:
        return None
    r = prep.series_rows(s.key)
    r = r.select(~r.baseline & np.isfinite(r.head) & np.isfinite(r.weight_decay))
    if not len(r):
        return None
    r.layer = np.where(np.isfinite(r.layer), r.layer, 0.0)
    panels: list[tuple[str, tuple[np.ndarray, np.ndarray, np.ndarray], str]] = []  # (title, (layer, head, value), coloraxis)
    if prep.group_by:
        for gi, group in enumerate(prep.groups):
            g = r.select(r.group == gi)
            if len(g):
                panels.append((f"{esc(group)}: ρ with wd", _head_rho(g), "coloraxis2"))
    else:
        wds = np.unique(r.weight_decay)
        for wd in dict.fromkeys([wds[0], wds[-1]]):
            sub = r.select(r.weight_decay == wd)
            (layer, head), value = group_mean([sub.layer, sub.head], sub.value)
            panels.append((f"wd = {fmt_wd(wd)}", (layer, head, value), "coloraxis"))
        panels.append(("Spearman ρ with wd (per head)", _head_rho(r), "coloraxis2"))
    panels = [p for p in panels if len(p[1][0])]
    if not panels:
        return None
    layout = panels_layout(len(panels), [p[0] for p in panels], spacing=0.06)
    traces, data = [], []
    has_values = any(p[2] == "coloraxis" for p in panels)
    for i, (title, (layer, head, value), coloraxis) in enumerate(panels):
        layers, heads, z = _matrix(layer, head, value)
        traces.append(dict(type="heatmap", x=[int(h) for h in heads], y=[int(v) for v in layers],
                           z=[_round(row, 4) for row in z], coloraxis=coloraxis, xaxis=axis_ref(i), yaxis="y",
                           hovertemplate="layer %{y}, head %{x}<br>%{z:.3g}<extra></extra>"))
        layout["xaxis" if i == 0 else f"xaxis{i + 1}"].update(title=dict(text="head"), **_integer_ticks(heads))
        data.append(pd.DataFrame({"panel": html.unescape(title), "layer": layer.astype(int), "head": head.astype(int), "value": value}))
    layout["yaxis"].update(title=dict(text="layer"), **_integer_ticks(np.unique(np.concatenate([p[1][0] for p in panels]))))
    layout.update(title=dict(text=_title(s, ": head × layer"), font=dict(size=14)), height=HEIGHT + 40,
                  margin=dict(l=60, r=20, t=80, b=50),
                  coloraxis2=dict(colorscale=RHO_COLORS, cmin=-1, cmax=1,
                                  colorbar=dict(title=dict(text="ρ", side="right"), x=1.14 if has_values else 1.0)))
    if has_values:
        values = np.concatenate([p[1][2] for p in panels if p[2] == "coloraxis"])
        layout["coloraxis"] = dict(colorscale="Viridis", cmin=_round([np.nanmin(values)])[0], cmax=_round([np.nanmax(values)])[0],
                                   colorbar=dict(title=dict(text=esc(s.metric), side="right"), x=1.0))
    frame = pd.concat(data, ignore_index=True)
    frame.insert(0, "series", s.key)
    return FigureSpec(f"{s.key}: head x layer", s.analysis, "head_heatmap", s.key, {"data": traces, "layout": layout}, frame, wide=True)


def correlation_figure(prep: Prepared, table: pd.DataFrame) -> FigureSpec | None:
    """Forest plot: Spearman rho of each series with weight decay (and plasticity) with 95 % CIs."""
    if table.empty or table["rho_wd"].isna().all():
        return None
    has_plasticity = "rho_plasticity" in table and table["rho_plasticity"].notna().any()
    columns = [("rho_wd", "ρ with weight decay")] + ([("rho_plasticity", "ρ with plasticity_gain")] if has_plasticity else [])
    keys = list(dict.fromkeys(table["series"]))
    layout = panels_layout(len(columns), [c[1] for c in columns], spacing=0.04)
    traces, shapes = [], []
    categories = [esc(k) for k in keys]
    for i, (name, _) in enumerate(columns):
        for gi, group in enumerate(prep.groups):
            t = table[table["group"] == group]
            color = GROUP_COLORS[gi % len(GROUP_COLORS)]
            traces.append(dict(
                type="scatter", x=_round(t[name], 3), y=[esc(k) for k in t["series"]], mode="markers",
                marker=dict(color=color, size=7), xaxis=axis_ref(i), yaxis="y",
                name=esc(group) if prep.group_by else "Spearman ρ", legendgroup=f"g{gi}",
                showlegend=i == 0 and bool(prep.group_by),
                error_x=dict(type="data", symmetric=False, array=_round(t[f"{name}_high"] - t[name], 3),
                             arrayminus=_round(t[name] - t[f"{name}_low"], 3), thickness=1.2, width=0),
                hovertemplate="%{y}<br>ρ=%{x:.3f}<extra></extra>",
            ))
        shapes.append(dict(type="line", xref=axis_ref(i), yref="paper", x0=0, x1=0, y0=0, y1=1, layer="below",
                           line=dict(color="#999", width=1)))
        layout["xaxis" if i == 0 else f"xaxis{i + 1}"]["range"] = [-1.05, 1.05]
    layout["yaxis"].update(autorange="reversed", type="category", categoryorder="array", categoryarray=categories, automargin=True)
    layout.update(title=dict(text="<b>Spearman correlation with 95% bootstrap CI over checkpoints</b>", font=dict(size=14)),
                  height=max(300, 120 + 18 * len(keys)), margin=dict(l=20, r=20, t=70, b=40), shapes=shapes)
    keep = ["group", "series", "n"] + [c for name, _ in columns for c in (name, f"{name}_low", f"{name}_high")]
    return FigureSpec("summary: Spearman correlations", "summary", "correlation", None, {"data": traces, "layout": layout},
                      table[keep].copy(), wide=True)


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
