"""Batch generation: one report per results folder (or per group) plus an index.html linking them.

Layout of ``out_dir``::

    index.html
    <name>/report.html        one per results folder, or per value of group_by
    <name>/figures/*.png|svg  on request (kaleido)
    <name>/figures/*.csv      on request: the numbers behind each figure
    comparison/report.html    with group_by: all groups side by side
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from plastiscope.reports.figures import fmt_value
from plastiscope.reports.frame import DEFAULT_X, Prepared, ResultsLike, _source_name, prepare, read_inputs, text
from plastiscope.reports.markup import esc
from plastiscope.reports.page import shell
from plastiscope.reports.report import check_formats, safe_name, write_prepared


def _entry(prep: Prepared, name: str, report: Path, out_dir: Path, figures_dir: Path | None) -> dict:
    values = prep.checkpoints.loc[prep.has_x, "_x"]
    if prep.categorical:
        span = ", ".join(prep.categories)
    else:
        xs = sorted(v for v in values.unique() if math.isfinite(v))
        span = f"{fmt_value(xs[0])} … {fmt_value(xs[-1])}" if xs else ""
    return {
        "name": name,
        "href": report.relative_to(out_dir).as_posix(),
        "figures": figures_dir.relative_to(out_dir).as_posix() + "/" if figures_dir else "",
        "checkpoints": len(prep.checkpoints),
        "axis": f"{prep.x}: {span}",
        "analyses": ", ".join(dict.fromkeys(s.analysis for s in prep.series)),
        "groups": ", ".join(prep.groups) if prep.group_by else "",
    }


def _write_one(prep: Prepared, name: str, out_dir: Path, used: set[str], formats: tuple[str, ...], title: str) -> dict:
    folder = out_dir / safe_name(name, used)
    extra = [f for f in formats if f != "html"]
    figures_dir = folder / "figures" if extra else None
    report = write_prepared(prep, folder / "report.html", figures_dir, title=title, formats=extra)
    return _entry(prep, name, report, out_dir, figures_dir)


def write_reports(
    results_dirs: Sequence[ResultsLike] | Mapping[str, ResultsLike],
    out_dir: str | Path,
    group_by: str | None = None,
    formats: Iterable[str] = ("html",),
    title: str = "plastiscope reports",
    x: str = DEFAULT_X,
) -> Path:
    """Write one report per results folder, or per value of ``group_by``, and an ``index.html``.

    ``results_dirs``: results folders (or DataFrames; a dict names them). With ``group_by``
    (a hyperparameter column), the folders are pooled, one report is written per group plus
    ``comparison/report.html`` with the groups side by side. ``formats``: any of ``html``
    (always written), ``png``, ``svg`` (need kaleido) and ``csv``: figures and their data go to
    ``<report folder>/figures/``. ``x``: the swept hyperparameter on each report's axis.
    Returns the path of ``index.html``.
    """
    formats = check_formats(formats)
    if isinstance(results_dirs, (str, Path, pd.DataFrame)):
        results_dirs = [results_dirs]
    if not len(results_dirs):
        raise ValueError("no results folders given")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    used = {"index.html"}
    entries = []
    if group_by is None:
        if isinstance(results_dirs, Mapping):
            items = [(str(k), v) for k, v in results_dirs.items()]
        else:
            items = [(_source_name(item, i), item) for i, item in enumerate(results_dirs)]
        seen: set[str] = set()
        for name, item in items:
            base, k = name, 2
            while name in seen:
                name, k = f"{base}-{k}", k + 1
            seen.add(name)
            prep = prepare({name: item}, x=x)
            entries.append(_write_one(prep, name, out_dir, used, formats, f"plastiscope report: {name}"))
    else:
        frame, run_infos, sources, several = read_inputs(results_dirs)
        if group_by not in frame.columns:
            raise ValueError(f"group_by={group_by!r} is not a column of the results; columns: {list(frame.columns)}")
        comparison = prepare(frame, group_by=group_by, x=x)
        comparison.run_infos, comparison.sources = run_infos, sources
        used.add("comparison")
        entries.append(_write_one(comparison, "comparison", out_dir, set(), formats, f"plastiscope comparison by {group_by}")
                       | {"name": f"comparison by {group_by}"})
        labels = frame[group_by].map(lambda v: text(v) or "(none)")
        for group in comparison.groups:
            sub = frame[labels == group]
            prep = prepare(sub, x=x)
            sweeps = list(sub["sweep"].astype(str).unique()) if "sweep" in sub else list(sources)
            prep.run_infos = {k: v for k, v in run_infos.items() if k in sweeps} or run_infos
            prep.sources = {k: v for k, v in sources.items() if k in sweeps} or sources
            name = f"{group_by}={group}"
            entries.append(_write_one(prep, name, out_dir, used, formats, f"plastiscope report: {name}"))
    index = out_dir / "index.html"
    index.write_text(render_index(entries, title), encoding="utf-8")
    return index


def render_index(entries: list[dict], title: str) -> str:
    """The index page: one row per report, every name escaped, every link URL-quoted."""
    rows = []
    for e in entries:
        link = f"<a href='{esc(quote(e['href']))}'>{esc(e['name'])}</a>"
        figures = f"<a href='{esc(quote(e['figures']))}'>figures</a>" if e["figures"] else ""
        rows.append(f"<tr><td>{link}</td><td class='num'>{e['checkpoints']}</td><td>{esc(e['axis'])}</td>"
                    f"<td>{esc(e['analyses'])}</td><td>{esc(e['groups'])}</td><td>{figures}</td></tr>")
    table = ("<table class='ps-table ps-sortable' id='report-index'><thead><tr><th>report</th><th>checkpoints</th><th>axis</th>"
             f"<th>analyses</th><th>groups</th><th>files</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")
    return shell(title, [], table, [], plots=False)
