"""HTML reports that say which checkpoint is best after fine-tuning, and which mechanism says so.

Reports read only the tidy results schema of :mod:`plastiscope.results`, so a new metric,
analysis or extra column appears without report code changes.

- :func:`write_report` — one self-contained HTML file per sweep (or a comparison of several
  sweeps with ``group_by``); opens offline, no network request. It opens with the best
  configuration after fine-tuning, the trade-off against validation loss, one panel per
  mechanism with a verdict, and the best predictors of the outcome; every series below.
  ``x`` picks the swept hyperparameter (weight decay by default; any numeric or categorical
  hyperparameter, or ``step`` for training dynamics).
- :func:`write_reports` — one report per results folder or per group, plus ``index.html``;
  optional PNG/SVG (kaleido) and CSV of each figure.
- :func:`figures` — the plotly figures for notebooks; :func:`summary` — a styled checkpoint x
  metric table for Jupyter; :func:`export_figures` — figure files and their data.
- :func:`association_table` — every series against the axis and the outcome, with intervals
  and multiple-comparison-aware p-values.
- :func:`sweep_agreement` / :func:`format_agreement` / :func:`write_agreement` — how a proxy sweep ranks configurations
  against a target sweep (Spearman with intervals, top-k decision regret).
- :func:`import_outcomes` / :func:`read_outcomes` — outcomes a team already has (tables,
  lm-evaluation-harness results) as rows of the results schema (analysis ``outcome``).
- :func:`read_declarations` — what each metric means, as the results record it (``metrics.json``
  beside them, or a frame's ``attrs``; declared by each analysis, :mod:`plastiscope.metrics`).
"""

from plastiscope.metrics import read_declarations
from plastiscope.reports.agreement import format_agreement, sweep_agreement, write_agreement
from plastiscope.reports.batch import write_reports
from plastiscope.reports.correlate import association_table
from plastiscope.reports.outcomes import import_outcomes, read_outcomes
from plastiscope.reports.report import export_figures, figures, summary, write_report

__all__ = ["write_report", "write_reports", "figures", "summary", "export_figures", "association_table", "sweep_agreement",
           "format_agreement", "write_agreement", "read_declarations", "import_outcomes", "read_outcomes"]
