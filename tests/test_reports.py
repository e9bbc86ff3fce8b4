"""Reports: safety, size, statistics against scipy, the ranking callout, figures, batch output."""

from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kendalltau, spearmanr
from synthetic import synthetic_results

from plastiscope.reports import correlation_table, figures, spearman_ci, summary, write_report, write_reports
from plastiscope.reports.figures import make_wd_axis
from plastiscope.reports.frame import prepare
from plastiscope.results import ResultsStore, tidy

INJECTION = "<script>alert(1)</script>"


def _frame(metrics: dict[str, list[float]], wds=(0.0, 0.001, 0.01, 0.1, 1.0), names=None, analysis="x", extra=None) -> pd.DataFrame:
    """One row per (checkpoint, metric); ``metrics`` maps metric -> value per checkpoint."""
    names = names or [f"c{i}" for i in range(len(wds))]
    rows = []
    for i, (name, wd) in enumerate(zip(names, wds)):
        for metric, values in metrics.items():
            a = "overfit" if metric == "val_loss" else analysis
            rows.append({"checkpoint": name, "weight_decay": wd, "analysis": a, "metric": metric, "value": values[i],
                         **(extra or {})})
    return tidy(pd.DataFrame(rows))


class _Scripts(HTMLParser):
    """Collect every <script> element: its attributes and its text."""

    def __init__(self):
        super().__init__()
        self.scripts: list[tuple[dict, str]] = []
        self._open: dict | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self._open = dict(attrs)
            self.scripts.append((self._open, ""))

    def handle_data(self, data):
        if self._open is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)

    def handle_endtag(self, tag):
        if tag == "script":
            self._open = None


# --- safety -------------------------------------------------------------------------------------

def test_injected_strings_are_escaped_everywhere(tmp_path):
    evil_metric = "<img src=x onerror=alert(2)>"
    names = ["ok", INJECTION, "c</script><!--x"]
    frame = _frame({"val_loss": [3.0, 3.1, 3.2], evil_metric: [1.0, 0.5, 0.2], "plasticity_gain": [0.1, 0.2, 0.3]},
                   wds=(0.0, 0.1, 1.0), names=names, extra={"note": "</script><!--", "task": "<b>bold</b>"})
    run_info = {"versions": {"torch": INJECTION}, "config": {"path": "/data/<script>x</script>"},
                "data": {"probe": {"sha256": "<!--", "path": INJECTION}}}
    path = write_report(frame, tmp_path / "r.html", title=INJECTION, run_info=run_info)
    text = path.read_text()
    plotly_js_end = text.index("</script>", text.index("<script>/**"))  # the inlined plotly.js bundle
    page = text[:text.index("<script>/**")] + text[plotly_js_end:]
    for raw in (INJECTION, evil_metric, "<b>bold</b>", "c</script><!--x", "/data/<script>"):
        assert raw not in page, raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # shown as text in the table and title
    assert "<!--" not in page
    parser = _Scripts()
    parser.feed(text)
    kinds = [attrs.get("type", "js") for attrs, _ in parser.scripts]
    n_figures = text.count("class='ps-plot'")
    assert kinds.count("js") == 2  # plotly.js and the page's own script, nothing injected
    assert kinds.count("application/json") == n_figures + 1  # one per figure + the shared template
    for attrs, content in parser.scripts:
        if attrs.get("type") == "application/json":
            assert "<" not in content and ">" not in content
            json.loads(content)
    parsed = json.dumps([json.loads(c) for a, c in parser.scripts if a.get("type") == "application/json"], ensure_ascii=False)
    assert INJECTION not in parsed and evil_metric not in parsed
    assert html.escape(INJECTION, quote=False) in parsed  # plotly draws the entities as literal text
    assert html.escape(evil_metric, quote=False) in parsed


def test_summary_styler_escapes(tmp_path):
    frame = _frame({"val_loss": [3.0, 3.1, 3.2], "acc": [0.5, 0.6, 0.7]}, wds=(0.0, 0.1, 1.0), names=["a", INJECTION, "c"])
    styled = summary(frame)
    out = styled.to_html()
    assert INJECTION not in out and "&lt;script&gt;" in out
    table = summary(frame, style=False)
    assert table.loc[(INJECTION, 0.1), "x.acc"] == pytest.approx(0.6)


# --- size ---------------------------------------------------------------------------------------

def test_report_for_20_checkpoints_24_layers_16_heads_is_under_10_mb(tmp_path):
    frame = synthetic_results(n_checkpoints=20, n_layers=24, n_heads=16)
    assert frame.loc[frame["analysis"] == "attention", ["layer", "head"]].drop_duplicates().shape[0] == 24 * 16
    path = write_report(frame, tmp_path / "big.html")
    size = path.stat().st_size
    print(f"report size {size / 1e6:.2f} MB for {len(frame)} rows")
    assert size < 10e6
    text = path.read_text()
    assert text.count("<script>/**") == 1  # plotly.js inlined once
    assert "cdn" not in text.lower().split("<script>/**")[0]


# --- statistics ---------------------------------------------------------------------------------

def test_spearman_ci_matches_scipy():
    rng = np.random.default_rng(1)
    x = np.array([0, 0, 1e-3, 1e-2, 1e-2, 0.1, 1.0, 1.0])  # ties, as in a sweep with repeats
    y = 0.3 * np.log1p(x * 100) + rng.normal(0, 0.1, len(x))
    rho, low, high, n = spearman_ci(x, y)
    assert rho == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert n == len(x) and -1 <= low <= rho <= high <= 1
    # NaN pairs are dropped
    y2 = y.copy()
    y2[2] = np.nan
    keep = np.isfinite(y2)
    assert spearman_ci(x, y2)[0] == pytest.approx(spearmanr(x[keep], y2[keep]).statistic, abs=1e-12)
    assert np.isnan(spearman_ci(x[:2], y[:2])[0])


def test_correlation_table_matches_scipy_on_layer_means():
    frame = synthetic_results(n_checkpoints=7, n_layers=3, n_heads=2, seed=3)
    prep = prepare(frame)
    table = correlation_table(prep, n_resamples=200)
    trained = frame[frame["init"].isna() | (frame["init"] == "trained")]
    for series, analysis, metric, task in [("probes.accuracy [task=pos, pooling=mean]", "probes", "accuracy", "pos"),
                                           ("attention.entropy", "attention", "entropy", None),
                                           ("overfit.loss_gap", "overfit", "loss_gap", None)]:
        rows = trained[(trained["analysis"] == analysis) & (trained["metric"] == metric)]
        if task:
            rows = rows[rows["task"] == task]
        scores = rows.groupby("checkpoint").agg(wd=("weight_decay", "first"), v=("value", "mean"))
        val = frame[frame["metric"] == "val_loss"].groupby("checkpoint")["value"].mean().reindex(scores.index)
        row = table[table["series"] == series].iloc[0]
        assert row["rho_wd"] == pytest.approx(spearmanr(scores["wd"], scores["v"]).statistic, abs=1e-12)
        assert row["tau_val_loss"] == pytest.approx(kendalltau(val, scores["v"]).statistic, abs=1e-12)
        gain = trained[trained["metric"] == "plasticity_gain"].groupby("checkpoint")["value"].mean().reindex(scores.index)
        assert row["rho_plasticity"] == pytest.approx(spearmanr(gain, scores["v"]).statistic, abs=1e-12)
        assert row["rho_wd_low"] <= row["rho_wd"] <= row["rho_wd_high"]


def test_head_rho_matches_scipy():
    from plastiscope.reports.figures import _head_rho

    frame = synthetic_results(n_checkpoints=6, n_layers=2, n_heads=3, seed=5)
    prep = prepare(frame)
    layer, head, rho = _head_rho(prep.series_rows("attention.entropy").select(slice(None)))
    att = frame[frame["metric"] == "entropy"]
    for l, h, r in zip(layer, head, rho):
        cell = att[(att["layer"] == l) & (att["head"] == h)]
        assert r == pytest.approx(spearmanr(cell["weight_decay"], cell["value"]).statistic, abs=1e-12)


def test_baseline_rows_are_left_out_of_scores():
    frame = synthetic_results(n_checkpoints=5, n_layers=2, n_heads=2)
    random_rows = frame["init"] == "random"
    frame.loc[random_rows, "value"] = 1000.0  # would dominate any mean that included them
    prep = prepare(frame)
    assert not any("random" in s.key for s in prep.series)
    acc = prep.scores["probes.accuracy [task=pos, pooling=mean]"]
    assert acc.max() < 10
    fig = figures(frame)["probes.accuracy [task=pos, pooling=mean]: vs weight decay"]
    baseline = [t for t in fig.data if "baseline init=random" in (t.name or "")]
    assert len(baseline) == 1 and set(baseline[0].y) == {1000.0}


# --- the ranking callout ------------------------------------------------------------------------

def test_callout_appears_when_rankings_disagree(tmp_path):
    frame = _frame({"val_loss": [3.0, 3.1, 3.2, 3.3, 3.4], "plasticity_gain": [0.1, 0.2, 0.3, 0.4, 0.5],
                    "accuracy": [0.5, 0.4, 0.3, 0.2, 0.1]})
    text = write_report(frame, tmp_path / "r.html").read_text()
    callout = re.search(r"<div class='ps-callout ps-warn' id='ranking-callout'.*?</div>", text, re.S)
    assert callout, "no callout although plasticity_gain ranks the checkpoints opposite to validation loss"
    assert "plasticity_gain" in callout.group(0) and "c4" in callout.group(0)  # best by plasticity
    assert "x.accuracy" not in callout.group(0)  # accuracy agrees with val loss here
    assert "ranking-agree" not in text


def test_no_callout_when_rankings_agree(tmp_path):
    frame = _frame({"val_loss": [3.0, 3.1, 3.2, 3.3, 3.4], "plasticity_gain": [0.5, 0.4, 0.3, 0.2, 0.1],
                    "accuracy": [0.5, 0.4, 0.3, 0.2, 0.1], "entropy": [1, 2, 3, 2, 1]})
    text = write_report(frame, tmp_path / "r.html").read_text()
    assert "id='ranking-callout'" not in text
    assert "id='ranking-agree'" in text


def test_callout_uses_final_val_loss_when_val_loss_metric_is_absent(tmp_path):
    frame = _frame({"plasticity_gain": [0.1, 0.2, 0.3, 0.4, 0.5]})
    frame["final_val_loss"] = frame["weight_decay"].map({0.0: 3.0, 0.001: 3.1, 0.01: 3.2, 0.1: 3.3, 1.0: 3.4})
    frame["final_train_loss"] = frame["final_val_loss"] - 0.5
    prep = prepare(frame)
    assert prep.checkpoints["val_loss"].tolist() == [3.0, 3.1, 3.2, 3.3, 3.4]
    assert "final_val_loss" in prep.loss_sources["val_loss"]
    text = write_report(frame, tmp_path / "r.html").read_text()
    assert "id='ranking-callout'" in text
    # no validation loss at all: a note instead of a verdict
    text = write_report(_frame({"plasticity_gain": [0.1, 0.2, 0.3, 0.4, 0.5]}), tmp_path / "n.html").read_text()
    assert "id='ranking-note'" in text and "id='ranking-callout'" not in text


# --- figures ------------------------------------------------------------------------------------

def test_figures_cover_every_metric_including_new_ones():
    frame = synthetic_results(n_checkpoints=4, n_layers=3, n_heads=2)
    new = frame[frame["metric"] == "val_loss"].assign(analysis="landscape", metric="brand_new_metric", direction_kind="a")
    new2 = new.assign(direction_kind="b", value=new["value"] * 2)
    frame = pd.concat([frame, new, new2], ignore_index=True)
    figs = figures(frame)
    prep = prepare(frame)
    assert "direction_kind" in prep.extras
    for s in prep.series:
        assert f"{s.key}: vs weight decay" in figs
        assert (f"{s.key}: layer x weight decay" in figs) == (s.has_layer and s.n_layers > 1)
        assert (f"{s.key}: head x layer" in figs) == s.has_head
    assert "landscape.brand_new_metric [direction_kind=a]: vs weight decay" in figs
    assert "landscape.brand_new_metric [direction_kind=b]: vs weight decay" in figs
    assert "summary: Spearman correlations" in figs
    assert {m for m in frame["metric"].unique()} <= {s.metric for s in prep.series}


def test_line_figure_draws_layer_means_and_interval_means():
    frame = synthetic_results(n_checkpoints=4, n_layers=3, n_heads=2)
    fig = figures(frame)["probes.accuracy [task=pos, pooling=mean]: vs weight decay"]
    mean = next(t for t in fig.data if t.name == "mean over layers")
    rows = frame[(frame["metric"] == "accuracy") & (frame["task"] == "pos") & (frame["init"] == "trained")]
    expected = rows.groupby("weight_decay")["value"].mean().sort_index()
    np.testing.assert_allclose(mean.y, expected.to_numpy(), rtol=1e-4)
    band = [t for t in fig.data if t.fill == "tonexty"]
    assert len(band) == 1
    np.testing.assert_allclose(band[0].y, rows.groupby("weight_decay")["ci_low"].mean().sort_index(), rtol=1e-4)
    per_layer = [t for t in fig.data if t.legendgroup == "layers"]
    assert len(per_layer) == 3


def test_weight_decay_axis_shows_zero_left_of_the_smallest_positive_value():
    axis = make_wd_axis([0.0, 1e-4, 1e-3, 1e-2, 0.1, 1.0])
    x = axis.x([0.0, 1e-4, 1.0])
    assert x[1] == pytest.approx(-4) and x[2] == pytest.approx(0)
    assert x[0] == pytest.approx(-5)  # one median step (a decade) to the left
    assert axis.ticktext[0] == "0" and axis.tickvals[0] == pytest.approx(-5)
    assert make_wd_axis([0.0, 0.0]).linear
    no_zero = make_wd_axis([0.01, 0.1])
    assert no_zero.zero is None and "0" not in no_zero.ticktext


def test_input_validation_messages(tmp_path):
    with pytest.raises(ValueError, match="lack the column"):
        write_report(pd.DataFrame({"checkpoint": ["a"], "value": [1.0]}), tmp_path / "r.html")
    with pytest.raises(ValueError, match="negative weight decay"):
        write_report(_frame({"m": [1.0, 2.0]}, wds=(-1.0, 0.1)), tmp_path / "r.html")
    with pytest.raises(ValueError, match="group_by='nope'"):
        write_report(_frame({"m": [1.0, 2.0]}, wds=(0.0, 0.1)), tmp_path / "r.html", group_by="nope")
    with pytest.raises(ValueError, match="unknown format"):
        write_report(_frame({"m": [1.0, 2.0]}, wds=(0.0, 0.1)), tmp_path / "r.html", formats=("gif",))


def test_image_export_without_kaleido_names_the_install(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "kaleido" else real(name, *a))
    with pytest.raises(RuntimeError, match="pip install kaleido"):
        write_report(_frame({"m": [1.0, 2.0]}, wds=(0.0, 0.1)), tmp_path / "r.html", formats=("png",))


# --- comparisons and batches --------------------------------------------------------------------

def _results_dir(root: Path, name: str, frame: pd.DataFrame, run_info: dict | None = None) -> Path:
    folder = root / name
    ResultsStore(folder).write(frame)
    if run_info is not None:
        (folder / "run.json").write_text(json.dumps(run_info))
    return folder


def test_comparison_report_puts_groups_on_the_same_axes(tmp_path):
    a = synthetic_results(4, 2, 2, seed=1, extra_hyperparameters={"schedule": "cosine"})
    b = synthetic_results(4, 2, 2, seed=2, extra_hyperparameters={"schedule": "wsd"})
    dirs = [_results_dir(tmp_path, "A", a), _results_dir(tmp_path, "B", b)]
    figs = figures(dirs, group_by="schedule")
    fig = figs["probes.accuracy [task=pos, pooling=mean]: vs weight decay"]
    names = [t.name for t in fig.data if t.mode == "lines+markers"]
    assert "cosine: mean over layers" in names and "wsd: mean over layers" in names
    heat = figs["probes.accuracy [task=pos, pooling=mean]: layer x weight decay"]
    assert len(heat.data) == 2  # one panel per group
    table = correlation_table(prepare(dirs, group_by="schedule"), n_resamples=50)
    assert set(table["group"]) == {"cosine", "wsd"}
    # same checkpoint names in both sweeps stay distinct
    assert len(prepare(dirs).checkpoints) == 8


def test_batch_index_links_each_report(tmp_path):
    info = {"versions": {"plastiscope": "0.1.0"}, "config": {"analyses": ["probes"]}, "data": {"probe": {"sha256": "abc123"}}}
    a = _results_dir(tmp_path / "results", "sweep-a", synthetic_results(3, 2, 2, seed=1, extra_hyperparameters={"lr_schedule": "cos"}), info)
    b = _results_dir(tmp_path / "results", "sweep-b", synthetic_results(3, 2, 2, seed=2, extra_hyperparameters={"lr_schedule": "lin"}))
    index = write_reports([a, b], tmp_path / "out", formats=("html", "csv"))
    text = index.read_text()
    hrefs = re.findall(r"href='([^']+)'", text)
    reports = [h for h in hrefs if h.endswith("report.html")]
    assert reports == ["sweep-a/report.html", "sweep-b/report.html"]
    for href in hrefs:
        assert (index.parent / href).exists(), href
    assert "abc123" in (index.parent / "sweep-a/report.html").read_text()  # run.json read into methods
    csvs = list((index.parent / "sweep-a" / "figures").glob("*.csv"))
    assert len(csvs) > 10 and (index.parent / "sweep-a" / "figures" / "correlations.csv").exists()
    data = pd.read_csv(next(p for p in csvs if p.name.startswith("probes.accuracy") and "vs_weight_decay" in p.name))
    assert {"series", "line", "weight_decay", "value"} <= set(data.columns)
    # grouped: one report per group plus the comparison
    index = write_reports([a, b], tmp_path / "grouped", group_by="lr_schedule")
    hrefs = [h for h in re.findall(r"href='([^']+)'", index.read_text()) if h.endswith(".html")]
    assert hrefs == ["comparison/report.html", "lr_schedule%3Dcos/report.html", "lr_schedule%3Dlin/report.html"]
    for href in hrefs:
        assert (index.parent / href.replace("%3D", "=")).exists()


def test_plasticity_predictor_ranking_matches_scipy(tmp_path):
    """Every metric (validation loss included) ranked by |Spearman rho| with plasticity_gain."""
    from scipy.stats import spearmanr

    from plastiscope.reports import write_report
    from plastiscope.reports.correlate import correlation_table
    from plastiscope.reports.page import plasticity_predictors
    from plastiscope.reports.report import _prepared
    from plastiscope.results import tidy

    gain = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    series = {("plasticity", "plasticity_gain"): gain, ("probes", "accuracy"): [0.1, 0.3, 0.2, 0.5, 0.4, 0.6],
              ("overfit", "val_loss"): [3.0, 1.0, 2.0, 6.0, 4.0, 5.0], ("overfit", "loss_gap"): [6.0, 5.0, 4.0, 3.0, 1.0, 2.0]}
    rows = [{"checkpoint": f"c{i}", "weight_decay": wd, "analysis": a, "metric": m, "value": v[i]}
            for (a, m), v in series.items() for i, wd in enumerate([0.0, 0.001, 0.01, 0.1, 0.3, 1.0])]
    frame = tidy(pd.DataFrame(rows))
    ranked = plasticity_predictors(correlation_table(_prepared(frame), n_resamples=50))
    expected = sorted(((abs(spearmanr(v, gain)[0]), m) for (a, m), v in series.items() if a != "plasticity"), key=lambda t: -t[0])
    assert ranked["metric"].tolist() == [m for _, m in expected]
    np.testing.assert_allclose(ranked["rho_plasticity"].abs(), [r for r, _ in expected])
    text = write_report(frame, tmp_path / "r.html").read_text()
    rank = ranked.index[ranked["metric"] == "val_loss"][0] + 1
    assert "Which metric predicts plasticity?" in text and f"Validation loss ranks <strong>{rank} of 3</strong>" in text
