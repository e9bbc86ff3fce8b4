"""HTML reports that relate every mechanism to the swept hyperparameter.

Reports read only the tidy results schema of :mod:`plastiscope.results`, so a new metric,
analysis or extra column appears without report code changes.

- :func:`write_report` — one self-contained HTML file per sweep (or a comparison of several
  sweeps with ``group_by``); opens offline, no network request.
- :func:`write_reports` — one report per results folder or per group, plus ``index.html``;
  optional PNG/SVG (kaleido) and CSV of each figure.
- :func:`figures` — the plotly figures for notebooks; :func:`summary` — a styled checkpoint x
  metric table for Jupyter; :func:`export_figures` — figure files and their data.
- :func:`describe_metric` / ``METRICS`` — the metric definitions shown in the methods section.
"""

from plastiscope.reports.batch import write_reports
from plastiscope.reports.correlate import correlation_table, spearman_ci
from plastiscope.reports.metrics_doc import METRICS, MetricDoc, describe_metric
from plastiscope.reports.report import export_figures, figures, summary, write_report

__all__ = ["write_report", "write_reports", "figures", "summary", "export_figures", "correlation_table", "spearman_ci",
           "describe_metric", "METRICS", "MetricDoc"]
