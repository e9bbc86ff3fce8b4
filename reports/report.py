"""Public entry points: one HTML report, figures for notebooks, exported figure files.

``write_report(results, out)`` writes ONE self-contained HTML file (plotly.js inline, no
network request) for a sweep, or for several sweeps compared side by side (``group_by``);
``x`` picks the swept hyperparameter on the horizontal axis (weight decay by default).
``figures(results)`` gives the same plotly figures for a notebook, ``summary(results)`` a
checkpoint x metric table that renders nicely in Jupyter, and ``export_figures`` writes each
figure as PNG/SVG (needs the optional ``kaleido``) and the numbers behind it as CSV.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from plastiscope.reports.correlate import N_RESAMPLES, association_table, val_loss_key, values_of
from plastiscope.reports.figures import FigureSpec, build_figures
from plastiscope.reports.frame import DEFAULT_X, Prepared, ResultsInput, prepare
from plastiscope.reports.outcomes import add_outcomes, import_outcomes
from plastiscope.reports.page import generator_versions, render_page
from plastiscope.reports.verdict import Decision, decide, panel_series
from plastiscope.reports.verdict import panels as headline_panels

FORMATS = ("html", "png", "svg", "csv")
IMAGE_FORMATS = ("png", "svg")
KALEIDO_HINT = "pip install kaleido"


def _prepared(results: ResultsInput | Prepared, group_by: str | None = None, run_info: dict | None = None,
              x: str = DEFAULT_X) -> Prepared:
    return results if isinstance(results, Prepared) else prepare(results, group_by=group_by, run_info=run_info, x=x)


def check_formats(formats: Iterable[str]) -> tuple[str, ...]:
    """Validate output formats (``html``, ``png``, ``svg``, ``csv``); PNG/SVG need kaleido."""
    if isinstance(formats, str):
        formats = [f for f in formats.split(",") if f.strip()]
    formats = tuple(dict.fromkeys(str(f).strip().lower().lstrip(".") for f in formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown format(s) {unknown}; choose from {list(FORMATS)}")
    if any(f in IMAGE_FORMATS for f in formats) and importlib.util.find_spec("kaleido") is None:
        raise RuntimeError(
            f"PNG/SVG export needs the optional package kaleido: `{KALEIDO_HINT}` (it drives a Chrome or Chromium "
            "browser; on Debian `apt-get install chromium`). HTML and CSV need nothing extra."
        )
    return formats


def safe_name(text: str, used: set[str] | None = None) -> str:
    """A file-name-safe version of ``text`` (no path separators, no leading dots), unique within ``used``."""
    name = re.sub(r"[^A-Za-z0-9._=+-]+", "_", str(text)).strip("._") or "figure"
    name = name[:120]
    if used is not None:
        base, k = name, 2
        while name.lower() in used:
            name, k = f"{base}-{k}", k + 1
        used.add(name.lower())
    return name


@dataclass
class Built:
    """Everything a report shows: prepared results, their statistics, the decision and the figures."""

    prep: Prepared
    stats: pd.DataFrame
    decision: Decision
    specs: list[FigureSpec]


def with_outcomes(results: ResultsInput, outcomes: str | Path | Sequence[str | Path] | None) -> ResultsInput:
    """``results`` with imported outcomes (:mod:`.outcomes`): stored in a results folder, added to a DataFrame in memory."""
    if not outcomes:
        return results
    if isinstance(results, pd.DataFrame):
        return add_outcomes(results, outcomes)
    if isinstance(results, (str, Path)):
        import_outcomes(results, outcomes)
        return results
    raise ValueError("--outcomes: pass one results folder (or DataFrame); import outcomes into each folder on its own")


def build(results: ResultsInput | Prepared, group_by: str | None = None, x: str = DEFAULT_X, n_resamples: int = N_RESAMPLES,
          directions: Mapping[str, str] | None = None, outcome: str | None = None,
          outcomes: str | Path | Sequence[str | Path] | None = None) -> Built:
    """Prepare results, compute their statistics and decision, and build every figure with the data behind it.

    ``outcomes``: outcome files or folders to import first (:func:`with_outcomes`); ``outcome``:
    the outcome to rank by (a series key or metric; default: the first metric declared with role ``outcome`` present).
    """
    if not isinstance(results, Prepared):
        results = with_outcomes(results, outcomes)
    prep = _prepared(results, group_by, x=x)
    if outcome is not None:
        prep.outcome_choice = outcome
    stats = association_table(prep, n_resamples=n_resamples, directions=dict(directions or {}))
    decision = decide(prep, stats)
    panels = []
    for panel in headline_panels(prep):
        keys = panel_series(prep, panel)
        if not keys:
            continue
        secondary = None
        if panel.key == "outcome" and np.isfinite(values_of(prep, val_loss_key(prep))).any():
            secondary = ("validation loss", values_of(prep, val_loss_key(prep)))
        panels.append((panel.key, keys, secondary))
    return Built(prep, stats, decision, build_figures(prep, panels))


def figures(results: ResultsInput, group_by: str | None = None, x: str = DEFAULT_X) -> dict[str, go.Figure]:
    """The report's plotly figures, keyed by what they show.

    Keys look like ``"panel: separability"`` (the headline panels), ``"probes.accuracy
    [task=pos, pooling=mean]: vs weight_decay"``, ``"...: layer x weight_decay"`` and ``"...:
    head x layer"``; every series (``analysis.metric [variant]``) has at least the second kind.
    ``x``: the hyperparameter on the horizontal axis (default weight decay).
    """
    return {spec.key: spec.figure for spec in build(results, group_by=group_by, x=x).specs}


def write_report(
    results: ResultsInput,
    out: str | Path,
    title: str | None = None,
    run_info: dict | None = None,
    group_by: str | None = None,
    formats: Iterable[str] = (),
    directions: Mapping[str, str] | None = None,
    x: str = DEFAULT_X,
    outcomes: str | Path | Sequence[str | Path] | None = None,
    outcome: str | None = None,
) -> Path:
    """Write one self-contained HTML report and return its path.

    ``results``: a results DataFrame, a results folder (its ``run.json`` is read for the
    methods section unless ``run_info`` is given), or a list/dict of them to compare several
    sweeps (grouped by the added ``sweep`` column unless ``group_by`` names another column).
    ``group_by``: a hyperparameter column; groups are drawn side by side on the same axes.
    ``x``: the swept hyperparameter on the horizontal axis (default ``weight_decay``; any
    hyperparameter column, numeric or categorical, e.g. ``schedule`` or ``step``).
    ``formats``: also write ``png``/``svg`` figures (kaleido) and/or ``csv`` data into
    ``<out stem>_figures/``. ``directions``: {metric: "higher"|"lower"} overrides which way
    is better. ``outcomes``: outcome files or folders (tables or lm-evaluation-harness results)
    imported into the results first (:mod:`.outcomes`; stored in a results folder);
    ``outcome``: the outcome the report ranks by (default: the first metric declared with role ``outcome`` present).
    """
    formats = check_formats(formats)
    results = with_outcomes(results, outcomes)
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        out = out.with_suffix(out.suffix + ".html") if out.suffix else out.with_suffix(".html")
    prep = prepare(results, group_by=group_by, run_info=run_info, x=x)
    extra = [f for f in formats if f != "html"]
    figures_dir = out.with_name(out.stem + "_figures") if extra else None
    return write_prepared(prep, out, figures_dir, title=title, formats=extra, directions=directions, outcome=outcome)


def write_prepared(prep: Prepared, out: Path, figures_dir: Path | None = None, title: str | None = None,
                   formats: Iterable[str] = (), directions: Mapping[str, str] | None = None, outcome: str | None = None) -> Path:
    """Write the report of already prepared results to ``out`` and, with ``figures_dir``, its figures in ``formats``."""
    built = build(prep, directions=directions, outcome=outcome)
    if title is None:
        names = ", ".join(n for n in prep.sources if prep.sources[n] != "DataFrame")
        title = f"plastiscope report: {names}" if names else "plastiscope report"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_page(prep, built.specs, built.stats, built.decision, title, generator_versions()), encoding="utf-8")
    if figures_dir is not None and formats:
        export_figures(built.specs, figures_dir, formats, statistics=built.stats)
    return out


def export_figures(specs: list[FigureSpec] | ResultsInput, out_dir: str | Path, formats: Iterable[str] = ("csv",),
                   group_by: str | None = None, statistics: pd.DataFrame | None = None, width: int = 1000,
                   x: str = DEFAULT_X) -> list[Path]:
    """Write each figure as ``<key>.png``/``.svg`` (kaleido) and its data as ``<key>.csv`` into ``out_dir``.

    ``specs`` may be figure specs or results (then built here). With ``csv``, the statistics
    table (every series against the axis and the outcome) goes to ``statistics.csv``. Returns
    the written paths.
    """
    formats = [f for f in check_formats(formats) if f != "html"]
    if not (isinstance(specs, list) and all(isinstance(s, FigureSpec) for s in specs)):
        built = build(specs, group_by=group_by, x=x)
        specs, statistics = built.specs, built.stats
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    names = [safe_name(spec.key, used) for spec in specs]
    written: list[Path] = []
    if "csv" in formats:
        for spec, name in zip(specs, names):
            path = out_dir / f"{name}.csv"
            spec.data.to_csv(path, index=False)
            written.append(path)
        if statistics is not None and not statistics.empty:
            path = out_dir / "statistics.csv"
            statistics.to_csv(path, index=False)
            written.append(path)
    for fmt in (f for f in formats if f in IMAGE_FORMATS):
        import plotly.io as pio

        paths = [out_dir / f"{name}.{fmt}" for name in names]
        try:
            pio.write_images([spec.figure for spec in specs], paths, format=fmt, width=width)
        except Exception as error:  # kaleido without a browser, or a browser that fails to start
            raise RuntimeError(
                f"exporting {fmt.upper()} with kaleido failed ({error}); kaleido needs Chrome or Chromium "
                "(Debian: `apt-get install chromium`)"
            ) from error
        written += paths
    return written


def summary(results: ResultsInput, group_by: str | None = None, style: bool = True, x: str = DEFAULT_X):
    """Checkpoint x series table of scores (mean over layers and heads), for notebooks.

    Rows: checkpoints in axis order (index: [group,] checkpoint, ``x``, seed where present;
    train/val loss columns first); columns: ``analysis.metric [variant]``. With ``style``
    (default) returns a pandas ``Styler`` with 4 significant digits and a per-column colour
    scale (no matplotlib needed); else the DataFrame.
    """
    prep = _prepared(results, group_by, x=x)
    ck = prep.checkpoints
    index_cols = (["_group"] if prep.group_by else []) + ["_label", prep.x] + (["seed"] if "seed" in prep.hyper else [])
    table = prep.scores.copy()
    table.insert(0, "val_loss", ck.set_index("_id")["val_loss"].reindex(table.index))
    table.insert(0, "train_loss", ck.set_index("_id")["train_loss"].reindex(table.index))
    table = table.dropna(axis=1, how="all")
    index = pd.MultiIndex.from_frame(ck.set_index("_id").reindex(table.index)[index_cols].rename(
        columns={"_group": prep.group_by or "group", "_label": "checkpoint"}))
    table.index = index
    table.columns.name = None
    if not style:
        return table

    def shade(column: pd.Series) -> list[str]:
        values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        if finite.size == 0 or np.ptp(finite) == 0:
            return [""] * len(values)
        lo, hi = finite.min(), finite.max()
        out = []
        for v in values:
            if not math.isfinite(v):
                out.append("")
                continue
            a = (v - lo) / (hi - lo)
            out.append(f"background-color: rgba(36, 86, 166, {0.08 + 0.5 * a:.2f})")
        return out

    styler = table.style.format("{:.4g}", na_rep="", escape="html").apply(shade, axis=0)
    return styler.format_index(escape="html", axis=0).format_index(escape="html", axis=1)
