"""Plotly figures: the headline panels, every series against the swept hyperparameter, heatmaps over layers and heads.

The axis (:func:`make_axis`) is the swept hyperparameter ``x`` (weight decay by default):

- numeric, log where it fits (every value >= 0 and the positive ones spanning at least a
  decade): x = log10(value); 0 is drawn one step left of the smallest positive value, where a
  step is the median spacing of the sorted log10 values (clipped to 0.5 .. 1.5 decades); a
  dotted line marks the break and the tick there reads "0". Ticks name the sweep's own values
  (decades when there are more than ten). A symlog would squeeze 0 next to tiny values or need
  a hand-picked linear threshold; this keeps every sweep point evenly readable.
- numeric, linear otherwise (e.g. training steps 1000 .. 4000);
- categorical (e.g. ``schedule``): one position per value, in sorted order.

Every line is one line of configurations (:mod:`.frame`: configurations that differ only in
``x``): the mean over each configuration's replicate seeds, a band across the seeds labelled
for what it is (the range of 2-3 seeds, a 95 % bootstrap over more), and each seed's value as a
dot. With one seed per configuration there is no band; where each checkpoint's value is one row
with a 95 % interval in the results, it is drawn as error bars and labelled as that interval.
Per-layer lines (mean over heads and seeds) and dashed baseline lines (``init="random"``) are
drawn where they exist. Heatmaps put the configurations' ``x`` on equally spaced, ordered
columns.
"""

from __future__ import annotations

import html
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative, sample_colorscale

from plastiscope.reports.baselines import Comparison, checkpoint_intervals, compare
from plastiscope.reports.frame import Prepared, Series, band_label, configuration_means, group_mean
from plastiscope.reports.markup import esc
from plastiscope.stats import spearman_rows

HEIGHT = 380
PANEL_HEIGHT = 240
LINE_COLORS = ["#d62728", *qualitative.D3[:3], *qualitative.D3[4:], *qualitative.Set2]
RHO_COLORS = [[0.0, "#2166ac"], [0.5, "#f7f7f7"], [1.0, "#b2182b"]]  # explicit: plotly.js and plotly.py differ on "RdBu"
MAX_PANELS = 6
BASELINE_COLORS = ["#7f7f7f", "#b07d2b", "#6a3d9a", "#1b7837"]


@dataclass
class FigureSpec:
    """A figure as plotly JSON (``spec``: data + layout, no template) and the numbers it draws.

    ``key`` names it, ``data`` is its CSV; ``figure`` builds the ``plotly.graph_objects.Figure``
    on first use (building validated Figures is slow, the HTML page only needs the JSON).
    """

    key: str
    section: str  # "panel" for the headline panels, else the analysis name
    kind: str  # "panel", "line", "layer_heatmap", "head_heatmap"
    series: str | None
    spec: dict
    data: pd.DataFrame
    wide: bool = False
    band: str = ""  # what the drawn interval is
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


def fmt_value(value: float, digits: int = 3) -> str:
    """A numeric axis value as a short label (``digits`` significant digits)."""
    return "0" if value == 0 else f"{value:.{digits}g}"


def value_labels(values) -> list[str]:
    """Distinct labels for distinct numeric values: as short as possible, longer where needed."""
    values = list(values)
    for digits in range(3, 18):
        labels = [fmt_value(v, digits) for v in values]
        if len(set(labels)) == len(set(values)):
            return labels
    return [repr(float(v)) for v in values]


def _round(values, digits: int = 5) -> list:
    """Values rounded to ``digits`` significant digits, NaN -> None (keeps the HTML small)."""
    out = []
    for v in np.asarray(values, dtype=float).ravel():
        out.append(None if not math.isfinite(v) else float(f"{v:.{digits}g}"))
    return out


@dataclass
class Axis:
    """Maps values of the swept hyperparameter to x positions (module docstring)."""

    column: str
    kind: str  # "log", "linear" or "category"
    zero: float | None = None
    step: float = 1.0
    tickvals: list = field(default_factory=list)
    ticktext: list = field(default_factory=list)
    categories: list[str] = field(default_factory=list)

    def x(self, values) -> list:
        """x positions of ``values``: numbers (log10, 0 left of the break) or escaped category names."""
        if self.kind == "category":
            return [esc(v) for v in values]
        values = np.asarray(values, dtype=float)
        if self.kind == "linear":
            return _round(values)
        with np.errstate(divide="ignore", invalid="ignore"):
            pos = np.log10(values)
        return _round(np.where(values == 0, self.zero if self.zero is not None else np.nan, pos))

    def label(self, value) -> str:
        """The text of one value, as ticks name it."""
        if self.kind == "category":
            return str(value)
        return fmt_value(float(value), 4)

    @property
    def title(self) -> str:
        """The axis title (the column name, and how it is scaled)."""
        if self.kind == "log":
            return f"{self.column} (log scale{', 0 left of the break' if self.zero is not None else ''})"
        return self.column

    def layout(self, axis: str = "xaxis") -> dict:
        """Layout entries for one x axis (``"xaxis"``, ``"xaxis2"``, ...) drawn with this mapping."""
        if self.kind == "category":
            cats = [esc(c) for c in self.categories]
            return {axis: dict(type="category", categoryorder="array", categoryarray=cats, title=dict(text=esc(self.title)))}
        return {axis: dict(tickmode="array", tickvals=_round(self.tickvals), ticktext=self.ticktext,
                           title=dict(text=esc(self.title)))}

    def break_shape(self, xref: str = "x") -> list[dict]:
        """A dotted vertical line between 0 and the smallest positive value on a log axis."""
        if self.zero is None or self.kind != "log":
            return []
        x = _round([self.zero + self.step / 2])[0]
        return [dict(type="line", xref=xref, yref="paper", x0=x, x1=x, y0=0, y1=1, layer="below",
                     line=dict(color="#999", width=1, dash="dot"))]


def make_axis(values, column: str = "weight_decay", categorical: bool = False, categories: list[str] | None = None) -> Axis:
    """The axis of the swept values (module docstring): log with 0, linear, or categorical."""
    if categorical:
        return Axis(column, "category", categories=list(categories or sorted({str(v) for v in values if v is not None})))
    vals = np.unique(np.asarray(values, dtype=float))
    vals = vals[np.isfinite(vals)]
    positive = vals[vals > 0]
    if not ((vals >= 0).all() and len(positive) >= 2 and positive.max() / positive.min() >= 10):
        ticks = vals if len(vals) <= 10 else np.linspace(vals.min(), vals.max(), 6) if len(vals) else vals
        return Axis(column, "linear", tickvals=[float(v) for v in ticks], ticktext=value_labels(ticks))
    logs = np.log10(positive)
    step = float(np.clip(np.median(np.diff(logs)), 0.5, 1.5))
    zero = float(logs.min() - step) if (vals == 0).any() else None
    if len(positive) <= 10:
        tickvals, ticktext = [float(v) for v in logs], value_labels(positive)
    else:
        decades = np.arange(math.floor(logs.min()), math.ceil(logs.max()) + 1)
        tickvals, ticktext = [float(d) for d in decades], [fmt_value(10.0**d) for d in decades]
    if zero is not None:
        tickvals, ticktext = [zero] + tickvals, ["0"] + ticktext
    return Axis(column, "log", zero, step, tickvals, ticktext)


def prep_axis(prep: Prepared) -> Axis:
    """The axis of a prepared report."""
    return make_axis(prep.checkpoints.loc[prep.has_x, "_x"], prep.x, prep.categorical, prep.categories)


def _alpha(color: str, alpha: float) -> str:
    color = color.strip()
    if color.startswith("#") and len(color) == 7:
        r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
        return f"rgba({r},{g},{b},{alpha})"
    if color.startswith("rgb("):
        return "rgba(" + color[4:-1] + f",{alpha})"
    return color


def _lines(prep: Prepared, table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The table's (group, line) parts with their names, in order."""
    out = []
    lines = table["_line"].to_numpy()
    for line in pd.unique(lines):
        part = table[lines == line]
        group, label = part["_group"].iat[0], part["_line_label"].iat[0]
        out.append((": ".join(n for n in (group if prep.group_by else "", label) if n), part))
    return out


def row_intervals(prep: Prepared, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(low, high) [checkpoint]`` when every checkpoint's score is one trained row with an interval, else None."""
    r = prep.series_rows(key)
    r = r.select(~r.baseline)
    counts = np.bincount(r.ck, minlength=len(prep.checkpoints))
    present = counts > 0
    if not present.any() or counts.max() > 1 or not np.isfinite(r.ci_low).all():
        return None
    low = np.full(len(counts), np.nan)
    high = np.full(len(counts), np.nan)
    low[r.ck], high[r.ck] = r.ci_low, r.ci_high
    return low, high


def line_traces(prep: Prepared, axis: Axis, values: np.ndarray, color: str, name: str, legendgroup: str,
                table: pd.DataFrame, dash: str | None = None, showlegend: bool = True, yaxis: str = "y",
                rows: tuple[np.ndarray, np.ndarray] | None = None, band_name: str = "") -> list[dict]:
    """Traces of one line of configurations: band (or row error bars), mean line, seed dots."""
    traces: list[dict] = []
    xs = axis.x(table["x"])
    low, high = table["low"].to_numpy(dtype=float), table["high"].to_numpy(dtype=float)
    finite = np.isfinite(low) & np.isfinite(high)
    error = None
    if finite.any() and dash is None and axis.kind != "category":
        xb = [x for x, f in zip(xs, finite) if f]
        common = dict(type="scatter", x=xb, mode="lines", line=dict(width=0, color=color), hoverinfo="skip",
                      legendgroup=legendgroup, showlegend=False, yaxis=yaxis)
        traces.append(dict(common, y=_round(high[finite])))
        traces.append(dict(common, y=_round(low[finite]), fill="tonexty", fillcolor=_alpha(color, 0.18),
                           name=esc(band_name), showlegend=showlegend and bool(band_name)))
    elif finite.any() and dash is None:
        mean = table["value"].to_numpy(dtype=float)
        error = dict(type="data", symmetric=False, array=_round(high - mean), arrayminus=_round(mean - low), thickness=1.2)
    elif rows is not None and dash is None:
        first = np.array([m[0] for m in table["members"]])
        mean = table["value"].to_numpy(dtype=float)
        error = dict(type="data", symmetric=False, array=_round(rows[1][first] - mean), arrayminus=_round(mean - rows[0][first]),
                     thickness=1.2)
    custom = [[esc(axis.label(v)), esc(c), int(k)] for v, c, k in zip(table["x"], table["checkpoints"], table["k"])]
    trace = dict(type="scatter", x=xs, y=_round(table["value"]), mode="lines+markers", name=name, legendgroup=legendgroup,
                 showlegend=showlegend, yaxis=yaxis,
                 line=dict(color=color, width=2.5 if dash is None else 1.5, dash=dash or "solid"),
                 marker=dict(size=6 if dash is None else 4), customdata=custom,
                 hovertemplate=f"{esc(axis.column)}=%{{customdata[0]}}<br>%{{y:.4g}} (mean of %{{customdata[2]}})"
                               f"<br>%{{customdata[1]}}<extra>{name}</extra>")
    if error is not None:
        trace["error_y"] = dict(error, color=color)
    traces.append(trace)
    if dash is None and (table["k"] > 1).any():
        members = np.concatenate(list(table["members"]))
        x_members = [x for x, m in zip(xs, table["members"]) for _ in m]
        traces.append(dict(type="scatter", x=x_members, y=_round(values[members]), mode="markers", yaxis=yaxis,
                           marker=dict(color=color, size=5, opacity=0.55, symbol="circle-open"), legendgroup=legendgroup,
                           showlegend=False, name=f"{name} seeds", customdata=[esc(v) for v in prep.labels[members]],
                           hovertemplate="%{customdata}<br>%{y:.4g}<extra>seed</extra>"))
    return traces


def _title(s: Series, what: str) -> str:
    variant = f" [{esc(s.variant)}]" if s.variant else ""
    return f"<b>{esc(s.analysis)} · {esc(s.metric)}</b>{variant}{what}"


def _band_note(table: pd.DataFrame, rows: tuple | None) -> str:
    label = band_label(table)
    if label:
        return f"band: {label}"
    if rows is not None:
        return "bars: each checkpoint's 95 % interval from the results"
    return "one seed per configuration: no interval across seeds"


def _frame(table: pd.DataFrame, line: str, axis: Axis) -> pd.DataFrame:
    return pd.DataFrame({"group": table["_group"].values, "line": line, axis.column: table["x"].values,
                         "configuration": table["_config_label"].values, "value": table["value"].values,
                         "low": table["low"].values, "high": table["high"].values, "seeds": table["k"].values,
                         "interval": table["band"].values, "checkpoints": table["checkpoints"].values})


def _layout(title: str | None, y_title: str, axis: Axis, height: int, legend: bool) -> dict:
    below = dict(orientation="h", yanchor="top", y=-0.25, font=dict(size=10))
    above = dict(orientation="h", yanchor="bottom", y=1.0, x=0, font=dict(size=10))
    layout = dict(height=height, margin=dict(l=60, r=20, t=60 if title else (28 if legend else 10), b=50), hovermode="closest",
                  yaxis=dict(title=dict(text=y_title)), shapes=axis.break_shape(), showlegend=legend,
                  legend=below if title else above)
    if title:
        layout["title"] = dict(text=title, font=dict(size=14))
    layout.update(axis.layout())
    return layout


def series_figure(prep: Prepared, s: Series, axis: Axis) -> FigureSpec:
    """One series against the axis: configuration means with seed bands, per-layer lines, baselines."""
    values = prep.score(s.key)
    table = configuration_means(prep, values)
    lines = _lines(prep, table)
    rows = row_intervals(prep, s.key) if not (table["k"] > 1).any() else None
    band = _band_note(table, rows)
    traces: list[dict] = []
    data: list[pd.DataFrame] = []
    if len(lines) == 1 and s.has_layer and s.n_layers > 1:
        traces += _layer_traces(prep, s, axis, data)
    for i, (name, part) in enumerate(lines):
        color = LINE_COLORS[i % len(LINE_COLORS)]
        label = esc(name) if name else ("mean over layers" if s.has_layer else "value")
        traces += line_traces(prep, axis, values, color, label, f"l{i}", part, rows=rows, band_name=band if i == 0 else "")
        data.append(_frame(part, name or "mean", axis))
    traces += _baseline_traces(prep, s, axis, data)
    layout = _layout(_title(s, f" vs {esc(prep.x)}"), esc(s.metric), axis, HEIGHT, True)
    constants = [c for c in compare(prep, s.key, prep.declarations.lookup(s.metric, s.analysis)) if c.baseline.value is not None]
    _constant_lines(layout, constants)
    frame = pd.concat(data, ignore_index=True) if data else pd.DataFrame()
    frame.insert(0, "series", s.key)
    return FigureSpec(f"{s.key}: vs {prep.x}", s.analysis, "line", s.key, {"data": traces, "layout": layout}, frame, band=band)


def _per_checkpoint(prep: Prepared, key: str, mask_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean value of the series' selected rows per checkpoint: ``(checkpoint index, value)`` arrays."""
    r = prep.series_rows(key).select(mask_rows)
    (ck,), value = group_mean([r.ck], r.value)
    return ck.astype(int), value


def _layer_traces(prep: Prepared, s: Series, axis: Axis, data: list[pd.DataFrame]) -> list[dict]:
    """Thin lines, one per layer: the mean over heads and seeds of each configuration."""
    configs, z = _cells_by_config(prep, s.key, lambda r: np.where(np.isfinite(r.layer), r.layer, -1))
    layers = configs["cell_keys"].iloc[0] if len(configs) else np.array([])
    keep = layers >= 0
    layers, z = layers[keep], z[keep]
    colors = sample_colorscale("Viridis", [i / max(len(layers) - 1, 1) for i in range(len(layers))])
    xs = axis.x(configs["x"])
    custom = [esc(axis.label(v)) for v in configs["x"]]
    traces = []
    for i, (lay, color) in enumerate(zip(layers, colors)):
        traces.append(dict(type="scatter", x=xs, y=_round(z[i]), mode="lines", line=dict(width=1, color=color), opacity=0.55,
                           legendgroup="layers", showlegend=i == 0, name=f"per layer (0 dark … {int(layers[-1])} light)",
                           customdata=custom,
                           hovertemplate=f"layer {int(lay)}<br>{esc(axis.column)}=%{{customdata}}<br>%{{y:.4g}}<extra></extra>"))
    if len(layers):
        data.append(pd.DataFrame({"group": "", "line": np.repeat([f"layer {int(v)}" for v in layers], len(configs)),
                                  axis.column: np.tile(configs["x"].to_numpy(), len(layers)),
                                  "configuration": np.tile(configs["_config_label"].to_numpy(), len(layers)),
                                  "value": z.ravel()}))
    return traces


def _baseline_traces(prep: Prepared, s: Series, axis: Axis, data: list[pd.DataFrame]) -> list[dict]:
    """Dashed lines of the series' baseline rows, one per ``init`` value (named as the metric's declaration names it)."""
    r = prep.series_rows(s.key)
    traces = []
    declared = prep.declarations.lookup(s.metric, s.analysis)
    names = {b.init: b.label for b in declared.baselines if b.init and b.label} if declared is not None else {}
    for label in dict.fromkeys(r.baseline_label[r.baseline]):
        ck, value = _per_checkpoint(prep, s.key, r.baseline & (r.baseline_label == label))
        values = np.full(len(prep.checkpoints), np.nan)
        values[ck] = value
        table = configuration_means(prep, values)
        for i, (name, part) in enumerate(_lines(prep, table)):
            title = f"{esc(name) + ': ' if name else ''}baseline init={esc(label)}" + (f" ({esc(names[label])})" if label in names else "")
            traces += line_traces(prep, axis, values, "#7f7f7f", title, f"b{i}", part, dash="dash")
            data.append(_frame(part, f"{name + ': ' if name else ''}baseline init={label}", axis))
    return traces


def _constant_lines(layout: dict, comparisons: list[Comparison], yref: str = "y") -> None:
    """Dashed horizontal lines at constant baselines (chance, the uniform pattern), labelled at the right edge."""
    seen = set()
    for i, c in enumerate(comparisons):
        if c.baseline.value is None or (c.baseline.value, c.label) in seen:
            continue
        seen.add((c.baseline.value, c.label))
        color = BASELINE_COLORS[i % len(BASELINE_COLORS)]
        y = float(c.baseline.value)
        layout.setdefault("shapes", []).append(dict(type="line", xref="paper", x0=0, x1=1, yref=yref, y0=y, y1=y,
                                                    line=dict(color=color, width=1.5, dash="dash")))
        layout.setdefault("annotations", []).append(dict(text=f"{esc(c.label)} ({y:g})", xref="paper", x=1, xanchor="right",
                                                         yref=yref, y=y, yanchor="bottom", showarrow=False,
                                                         font=dict(size=10, color=color)))


def _interval_trace(prep: Prepared, axis: Axis, key: str, color: str, legendgroup: str, showlegend: bool,
                    data: list[pd.DataFrame]) -> list[dict]:
    """Each checkpoint's own 95 % interval from the results (mean over its layers and heads) as error bars."""
    value, low, high = checkpoint_intervals(prep, key)
    keep = np.flatnonzero(prep.has_x & np.isfinite(value) & np.isfinite(low) & np.isfinite(high))
    if not len(keep):
        return []
    xs = axis.x(prep.checkpoints["_x"].to_numpy(dtype=object)[keep])
    labels = [esc(v) for v in prep.labels[keep]]
    data.append(pd.DataFrame({"group": prep.checkpoints["_group"].to_numpy()[keep], "line": "checkpoint interval",
                              axis.column: prep.checkpoints["_x"].to_numpy()[keep], "configuration": labels,
                              "value": value[keep], "low": low[keep], "high": high[keep]}).assign(series=key))
    error = dict(type="data", symmetric=False, array=_round(high[keep] - value[keep]), arrayminus=_round(value[keep] - low[keep]),
                 thickness=1.2, width=3, color=color)
    return [dict(type="scatter", x=xs, y=_round(value[keep]), mode="markers", error_y=error, legendgroup=legendgroup,
                 marker=dict(color=color, size=5, symbol="diamond"), name="checkpoints' 95 % intervals", showlegend=showlegend,
                 customdata=[[lab, lo, hi] for lab, lo, hi in zip(labels, _round(low[keep]), _round(high[keep]))],
                 hovertemplate="%{customdata[0]}<br>%{y:.4g} [%{customdata[1]:.4g}, %{customdata[2]:.4g}]<extra>95 % interval</extra>")]


def _baseline_band(prep: Prepared, axis: Axis, c: Comparison, color: str, legendgroup: str, data: list[pd.DataFrame],
                   key: str, showlegend: bool = True) -> list[dict]:
    """A baseline model's rows: its configuration means dashed, with a band from its checkpoints' mean intervals."""
    traces: list[dict] = []
    table = configuration_means(prep, c.base)
    lows = configuration_means(prep, c.base_low)
    highs = configuration_means(prep, c.base_high)
    for i, (name, part) in enumerate(_lines(prep, table)):
        title = f"{esc(name) + ': ' if name else ''}{esc(c.label)}"
        rows = table["_line"] == part["_line"].iat[0]
        low, high = lows[lows["_line"] == part["_line"].iat[0]], highs[highs["_line"] == part["_line"].iat[0]]
        if len(low) == rows.sum() and len(high) == rows.sum() and (high["value"].to_numpy() > low["value"].to_numpy()).any():
            xb = axis.x(part["x"])
            common = dict(type="scatter", x=xb, mode="lines", line=dict(width=0, color=color), hoverinfo="skip",
                          legendgroup=f"{legendgroup}{i}", showlegend=False)
            traces.append(dict(common, y=_round(high["value"])))
            traces.append(dict(common, y=_round(low["value"]), fill="tonexty", fillcolor=_alpha(color, 0.15)))
        traces += line_traces(prep, axis, c.base, color, title, f"{legendgroup}{i}", part, dash="dash", showlegend=showlegend)
        data.append(_frame(part, f"{name + ': ' if name else ''}baseline {c.label}", axis).assign(series=key))
    return traces


def panel_figure(prep: Prepared, key: str, keys: list[str], axis: Axis, secondary: tuple[str, np.ndarray] | None = None) -> FigureSpec:
    """A headline panel: the series ``keys`` against the axis (compact), each checkpoint's interval, the declared baselines
    (dashed: a constant as a line, a baseline model as its line with a band), and ``secondary`` (a name and values) on the right."""
    traces, data, bands = [], [], []
    several = len(keys) > 1
    n_lines = 0
    comparisons: list[Comparison] = []
    for series_key in keys:
        values = prep.score(series_key)
        table = configuration_means(prep, values)
        s = prep.series_by_key(series_key)
        found = compare(prep, series_key, prep.declarations.lookup(s.metric, s.analysis))
        bands.append(_band_note(table, None) if (table["k"] > 1).any() else "")
        color = LINE_COLORS[n_lines % len(LINE_COLORS)]
        for name, part in _lines(prep, table):
            label = ", ".join(n for n in (s.variant if several else "", name) if n)
            color = LINE_COLORS[n_lines % len(LINE_COLORS)]
            traces += line_traces(prep, axis, values, color, esc(label) or esc(s.metric), f"p{n_lines}", part)
            data.append(_frame(part, label, axis).assign(series=series_key))
            n_lines += 1
        intervals = _interval_trace(prep, axis, series_key, color, f"p{n_lines - 1}", False, data)  # the note names them
        if intervals:
            bands.append("bars: checkpoints' 95 % intervals")
        elif not (table["k"] > 1).any():
            bands.append("no interval: the results carry none and each configuration has one seed")
        traces += intervals
        for j, c in enumerate(x for x in found if x.measured and x.baseline.init is not None):
            first = c.label not in {d.label for d in comparisons}
            traces += _baseline_band(prep, axis, c, BASELINE_COLORS[j % len(BASELINE_COLORS)], f"b{series_key}{j}", data, series_key,
                                     showlegend=first)
        comparisons += found
    constants = list(dict.fromkeys(c.label for c in comparisons if c.measured and c.baseline.value is not None))
    if constants:  # a baseline model is named in the legend, a constant at its line
        bands.append("dashed: " + ", ".join(constants))
    s = prep.series_by_key(keys[0])
    baseline_rows = any(c.measured and c.baseline.init is not None for c in comparisons)
    layout = _layout(None, esc(s.metric), axis, PANEL_HEIGHT, n_lines > 1 or secondary is not None or baseline_rows)
    _constant_lines(layout, comparisons)
    if secondary is not None:
        name, values = secondary
        table = configuration_means(prep, values)
        for i, (line, part) in enumerate(_lines(prep, table)):
            label = f"{name}{' (' + line + ')' if line else ''} →"
            traces += line_traces(prep, axis, values, "#555555", esc(label), f"s{i}", part, dash="dot", yaxis="y2")
            data.append(_frame(part, label, axis).assign(series=name))
        layout["yaxis2"] = dict(overlaying="y", side="right", showgrid=False, title=dict(text=esc(name)))
        layout["margin"]["r"] = 60
    frame = pd.concat(data, ignore_index=True) if data else pd.DataFrame()
    band = "; ".join(b for b in dict.fromkeys(bands) if b)
    return FigureSpec(f"panel: {key}", "panel", "panel", keys[0], {"data": traces, "layout": layout}, frame, band=band)


def _matrix(row_keys: np.ndarray, col_keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pivot aligned ``[cell]`` arrays into ``(rows, cols, z [row, col])`` with NaN where missing."""
    rows, cols = np.unique(row_keys), np.unique(col_keys)
    z = np.full((len(rows), len(cols)), np.nan)
    z[np.searchsorted(rows, row_keys), np.searchsorted(cols, col_keys)] = values
    return rows, cols, z


def _integer_ticks(values: np.ndarray, max_ticks: int = 12) -> dict:
    """Axis ticks on whole numbers only (layers, heads), at most about ``max_ticks`` of them."""
    values = np.asarray(values, dtype=float)
    span = float(values.max() - values.min()) if len(values) else 0.0
    return dict(tickmode="linear", tick0=0, dtick=max(1, int(math.ceil((span + 1) / max_ticks))))


def _cells_by_config(prep: Prepared, key: str, cell_of) -> tuple[pd.DataFrame, np.ndarray]:
    """Per (configuration, cell): the mean over seeds of each checkpoint's mean in the cell.

    ``cell_of(rows)`` maps the trained rows to integer cell keys. Returns the configurations
    (``configuration_means`` order, one per configuration) and ``z [cell key, configuration]``.
    """
    r = prep.series_rows(key)
    r = r.select(~r.baseline)
    (ck, cell), value = group_mean([r.ck, cell_of(r)], r.value)
    ck = ck.astype(int)
    cells = np.unique(cell)
    per_ck = np.full((len(cells), len(prep.checkpoints)), np.nan)
    per_ck[np.searchsorted(cells, cell), ck] = value
    configs = configuration_means(prep, np.where(np.isfinite(per_ck).any(0), 0.0, np.nan))
    with warnings.catch_warnings():  # a cell without a value in a configuration stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        z = np.stack([np.nanmean(per_ck[:, m], axis=1) for m in configs["members"]], axis=1) if len(configs) \
            else np.zeros((len(cells), 0))
    return configs.assign(cell_keys=[cells] * len(configs)), z


def layer_heatmap(prep: Prepared, s: Series, axis: Axis) -> FigureSpec | None:
    """Layer x axis value (mean over heads and seeds); one panel per line of configurations (at most six)."""
    if not (s.has_layer and s.n_layers > 1):
        return None
    configs, z = _cells_by_config(prep, s.key, lambda r: np.where(np.isfinite(r.layer), r.layer, -1))
    if configs.empty:
        return None
    layers = configs["cell_keys"].iloc[0]
    keep = layers >= 0
    layers, z = layers[keep], z[keep]
    lines = _lines(prep, configs)
    if len(lines) > MAX_PANELS or not len(layers):
        return None
    layout = panels_layout(len(lines), [esc(name) for name, _ in lines] if len(lines) > 1 else None, spacing=0.03)
    traces, data = [], []
    for i, (name, part) in enumerate(lines):
        cols = [configs.index.get_loc(j) for j in part.index]
        labels = [esc(axis.label(v)) for v in part["x"]]
        traces.append(dict(type="heatmap", x=labels, y=[int(v) for v in layers], z=[_round(row) for row in z[:, cols]],
                           coloraxis="coloraxis", xaxis=axis_ref(i), yaxis="y",
                           hovertemplate=f"layer %{{y}}<br>{esc(axis.column)}=%{{x}}<br>%{{z:.4g}}<extra></extra>"))
        layout["xaxis" if i == 0 else f"xaxis{i + 1}"].update(type="category", title=dict(text=esc(axis.column)))
        for c, (xv, label) in zip(cols, zip(part["x"], part["_config_label"])):
            data.append(pd.DataFrame({"line": name, axis.column: xv, "configuration": label, "layer": layers.astype(int),
                                      "value": z[:, c]}))
    layout["yaxis"].update(title=dict(text="layer"), **_integer_ticks(layers))
    finite = z[np.isfinite(z)]
    layout.update(title=dict(text=_title(s, f": layer × {esc(prep.x)}"), font=dict(size=14)),
                  height=HEIGHT, margin=dict(l=60, r=20, t=70, b=50),
                  coloraxis=dict(colorscale="Viridis", cmin=_round([finite.min()])[0] if finite.size else None,
                                 cmax=_round([finite.max()])[0] if finite.size else None,
                                 colorbar=dict(title=dict(text=esc(s.metric), side="right"))))
    frame = pd.concat(data, ignore_index=True)
    frame.insert(0, "series", s.key)
    return FigureSpec(f"{s.key}: layer x {prep.x}", s.analysis, "layer_heatmap", s.key, {"data": traces, "layout": layout},
                      frame, wide=len(lines) > 2)


def head_rho(configs: pd.DataFrame, z: np.ndarray) -> np.ndarray:
    """Spearman rho of each cell's configuration means ``z [cell, configuration]`` with the axis value ``[cell]``.

    Cells missing in some configuration are ranked over the configurations where they have a
    value (at least 3).
    """
    x = configs["x"].to_numpy(dtype=float)
    rho = spearman_rows(x, z) if z.size else np.full(len(z), np.nan)
    for j in np.flatnonzero(~np.isfinite(z).all(axis=1)):
        keep = np.isfinite(z[j])
        rho[j] = spearman_rows(x[keep], z[j, keep]) if keep.sum() >= 3 else np.nan
    return rho


def head_heatmap(prep: Prepared, s: Series, axis: Axis) -> FigureSpec | None:
    """Head x layer at the lowest and highest axis value, and each head's Spearman rho with the axis (per line)."""
    if not s.has_head:
        return None
    def cell(r) -> np.ndarray:
        return np.where(np.isfinite(r.layer), r.layer, 0) * 1_000_000 + np.where(np.isfinite(r.head), r.head, -1)

    configs, z = _cells_by_config(prep, s.key, cell)
    if configs.empty:
        return None
    cells = configs["cell_keys"].iloc[0]
    keep = cells % 1_000_000 != 999_999  # rows without a head
    cells, z = cells[keep], z[keep]
    layer, head = cells // 1_000_000, cells % 1_000_000
    lines = _lines(prep, configs)
    panels: list[tuple[str, np.ndarray, str]] = []  # (title, values [cell], coloraxis)
    if len(lines) == 1:
        part = lines[0][1]
        for j in dict.fromkeys([part.index[0], part.index[-1]]):
            panels.append((f"{esc(prep.x)} = {esc(axis.label(configs.loc[j, 'x']))}", z[:, configs.index.get_loc(j)], "coloraxis"))
    if not prep.categorical:
        for name, part in lines[:4]:
            cols = [configs.index.get_loc(j) for j in part.index]
            title = f"{esc(name) + ': ' if name else ''}Spearman ρ with {esc(prep.x)}"
            panels.append((title, head_rho(part, z[:, cols]), "coloraxis2"))
    panels = [p for p in panels if np.isfinite(p[1]).any()]
    if not panels:
        return None
    layout = panels_layout(len(panels), [p[0] for p in panels], spacing=0.06)
    traces, data = [], []
    has_values = any(p[2] == "coloraxis" for p in panels)
    for i, (title, values, coloraxis) in enumerate(panels):
        layers, heads, matrix = _matrix(layer, head, values)
        traces.append(dict(type="heatmap", x=[int(h) for h in heads], y=[int(v) for v in layers],
                           z=[_round(row, 4) for row in matrix], coloraxis=coloraxis, xaxis=axis_ref(i), yaxis="y",
                           hovertemplate="layer %{y}, head %{x}<br>%{z:.3g}<extra></extra>"))
        layout["xaxis" if i == 0 else f"xaxis{i + 1}"].update(title=dict(text="head"), **_integer_ticks(heads))
        data.append(pd.DataFrame({"panel": html.unescape(title), "layer": layer.astype(int), "head": head.astype(int), "value": values}))
    layout["yaxis"].update(title=dict(text="layer"), **_integer_ticks(np.unique(layer)))
    layout.update(title=dict(text=_title(s, ": head × layer"), font=dict(size=14)), height=HEIGHT + 40,
                  margin=dict(l=60, r=20, t=80, b=50),
                  coloraxis2=dict(colorscale=RHO_COLORS, cmin=-1, cmax=1,
                                  colorbar=dict(title=dict(text="ρ", side="right"), x=1.14 if has_values else 1.0)))
    if has_values:
        values = np.concatenate([p[1] for p in panels if p[2] == "coloraxis"])
        values = values[np.isfinite(values)]
        layout["coloraxis"] = dict(colorscale="Viridis", cmin=_round([values.min()])[0], cmax=_round([values.max()])[0],
                                   colorbar=dict(title=dict(text=esc(s.metric), side="right"), x=1.0))
    frame = pd.concat(data, ignore_index=True)
    frame.insert(0, "series", s.key)
    return FigureSpec(f"{s.key}: head x layer", s.analysis, "head_heatmap", s.key, {"data": traces, "layout": layout}, frame, wide=True)


def build_figures(prep: Prepared, panels: list[tuple[str, list[str], tuple[str, np.ndarray] | None]] = ()) -> list[FigureSpec]:
    """All figures of a report, in page order: the headline panels, then every series with its heatmaps.

    ``panels``: ``(panel key, series keys, secondary)`` of each headline panel that has data.
    """
    axis = prep_axis(prep)
    specs = [panel_figure(prep, key, keys, axis, secondary) for key, keys, secondary in panels]
    for s in prep.series:
        if s.key not in prep.scores and not prep.series_rows(s.key).baseline.any():
            continue
        specs.append(series_figure(prep, s, axis))
        for builder in (layer_heatmap, head_heatmap):
            spec = builder(prep, s, axis)
            if spec is not None:
                specs.append(spec)
    return specs

