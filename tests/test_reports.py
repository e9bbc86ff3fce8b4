"""Reports: series identity and statistics on the real output of every analysis, verdicts, axes, safety, batches."""

from __future__ import annotations

import html
import itertools
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import false_discovery_control, spearmanr
from synthetic import synthetic_results

from plastiscope.metrics import attach, read_declarations, write_declarations
from plastiscope.reports import association_table, figures, summary, write_report, write_reports
from plastiscope.reports.correlate import ranked_predictors
from plastiscope.reports.figures import make_axis
from plastiscope.reports.frame import configuration_means, prepare
from plastiscope.reports.report import build
from plastiscope.results import ResultsStore, load_results, tidy
from plastiscope.runner import declarations

INJECTION = "<script>alert(1)</script>"


def _frame(metrics: dict[str, list[float]], wds=(0.0, 0.001, 0.01, 0.1, 1.0), names=None, extra=None, seeds=None) -> pd.DataFrame:
    """One row per (checkpoint, metric); ``metrics`` maps metric -> value per checkpoint; analyses by metric name."""
    analyses = {"val_loss": "overfit", "loss_gap": "overfit", "downstream_loss_after": "plasticity",
                "downstream_loss_before": "plasticity", "plasticity_gain": "plasticity", "accuracy": "probes"}
    names = names or [f"c{i}" for i in range(len(wds))]
    rows = []
    for i, (name, wd) in enumerate(zip(names, wds)):
        for metric, values in metrics.items():
            rows.append({"checkpoint": name, "weight_decay": wd, "analysis": analyses.get(metric, "x"), "metric": metric,
                         "value": values[i], **({"seed": seeds[i]} if seeds else {}), **(extra or {})})
    return attach(tidy(pd.DataFrame(rows)), declarations())


def _text(path: Path) -> str:
    return re.sub(r"<script>/\*\*.*?</script>", "", path.read_text(), flags=re.S)  # without the inlined plotly.js


# --- the real output of every analysis ---------------------------------------------------------

def test_no_series_is_split_by_a_detail_column(tiny_results):
    frame = load_results(tiny_results)
    prep = prepare(tiny_results)
    declared = {(a, m, v) for a, m, v in frame[["analysis", "metric", "variant"]].drop_duplicates().itertuples(index=False)}
    assert len(prep.series) == len(declared)
    assert {s.key for s in prep.series} == {f"{a}.{m}" + (f" [{v}]" if v else "") for a, m, v in declared}
    # every extra column that is neither a hyperparameter nor a declared variant column is a detail
    hyper = set(prep.checkpoints.columns)
    extras = [c for c in frame.columns if c not in ("analysis", "metric", "variant", "layer", "head", "value", "ci_low", "ci_high",
                                                     "n", "checkpoint", "init") and c not in hyper]
    assert set(extras) == set(prep.details) | set(prep.variant_columns)
    assert {"iterations", "direction", "selected_lr"} & set(prep.details), prep.details  # details the analyses write today
    for detail in prep.details:
        assert not any(f"{detail}=" in s.variant for s in prep.series), detail
    # one score per checkpoint and series: the mean of its trained rows, computed here with pandas
    trained = frame[frame["init"].isna() | (frame["init"] == "trained")]
    expected = trained.assign(key=trained["analysis"] + "." + trained["metric"] + trained["variant"].map(lambda v: f" [{v}]" if v else ""))
    expected = expected.pivot_table(index="checkpoint", columns="key", values="value", aggfunc="mean")
    scores = prep.scores.set_axis(prep.checkpoints["checkpoint"], axis=0)
    assert set(scores.columns) == set(expected.columns)
    for key in expected.columns:
        has_value = expected[key].notna()
        np.testing.assert_allclose(scores.loc[has_value.index[has_value], key], expected.loc[has_value, key], rtol=1e-12)
        assert scores[key].notna().sum() == has_value.sum(), key
    assert len([k for k in scores.columns if "downstream_selection_loss" in k]) == 2  # one per fine-tuning learning rate


def test_report_on_every_analysis_decides_what_one_seed_allows(tiny_results, tmp_path):
    path = write_report(tiny_results, tmp_path / "r.html")
    text = _text(path)
    built = build(tiny_results)
    present = {m for m in load_results(tiny_results)["metric"].unique()}
    for panel, metric in (("outcome", "downstream_loss_after"), ("separability", "accuracy"), ("attention", "qk_effective_rank"),
                          ("overfitting", "loss_gap"), ("sharpness", "adaptive_max_eigenvalue"), ("basin", "basin_sigma_relative")):
        block = re.search(rf"<div class='ps-panel[^']*' id='panel-{panel}'>(.*?)</div>(?=<div class='ps-panel|</div></section>)", text, re.S)
        assert block, panel
        if metric in present:
            assert "ps-word" in block.group(1), panel
        else:
            assert f"no {metric} in these results" in block.group(1), panel
    # 3 configurations, one seed: a perfect trend reaches p = 1/3 at best, so nothing can be decided
    assert "These data cannot decide" in text and "p = 0.33" in text
    assert {v.word for v in built.decision.verdicts} == {"inconclusive"}
    assert "Best after fine-tuning" in text and "mean of the rows" not in text


def test_replicates_are_averaged_with_a_band_across_seeds(replicated_results, tmp_path):
    frame = load_results(replicated_results)
    prep = prepare(replicated_results)
    assert len(prep.checkpoints) == 6 and prep.checkpoints["_config"].nunique() == 3
    assert prep.config_columns == ["weight_decay"] and prep.seeds_per_configuration == (2, 2)
    key = next(s.key for s in prep.series if s.metric == "downstream_loss_after")
    table = configuration_means(prep, prep.score(key))
    rows = frame[frame["metric"] == "downstream_loss_after"]
    per_ck = rows.groupby(["weight_decay", "seed"])["value"].mean()
    expected = per_ck.groupby(level=0).agg(["mean", "min", "max"])
    np.testing.assert_allclose(table["value"], expected["mean"].to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(table["low"], expected["min"].to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(table["high"], expected["max"].to_numpy(), rtol=1e-12)
    assert set(table["band"]) == {"range"} and set(table["k"]) == {2}
    built = build(replicated_results)
    best = built.decision.best[0]
    assert best.after["x"].iloc[0] == expected["mean"].idxmin()
    text = _text(write_report(replicated_results, tmp_path / "r.html"))
    assert "range of 2 seeds" in text and "3 configurations × 2 seeds each" in text
    assert "p = 0.056" in text  # 3 weight decays x 2 seeds: 36 within-seed permutations, a perfect trend gets 2/36


def test_statistics_on_real_replicates_match_scipy_and_brute_force(replicated_results):
    prep = prepare(replicated_results)
    table = association_table(prep, n_resamples=200)
    ck = prep.checkpoints
    key = next(s.key for s in prep.series if s.metric == "loss_gap")
    row = table[table["series"] == key].iloc[0]
    values = prep.score(key)
    means = pd.Series(values).groupby(ck["weight_decay"].to_numpy()).mean()
    assert row["x_effect"] == pytest.approx(spearmanr(means.index, means.to_numpy()).statistic, abs=1e-12)
    # brute force: every permutation of the weight decays within each seed, |rho| over checkpoints
    wd, seed = ck["weight_decay"].to_numpy(), ck["seed"].to_numpy()
    observed = abs(spearmanr(wd, values).statistic)
    blocks = [np.flatnonzero(seed == s) for s in np.unique(seed)]
    count = total = 0
    for choice in itertools.product(*[itertools.permutations(b) for b in blocks]):
        perm = np.arange(len(wd))
        for b, c in zip(blocks, choice):
            perm[b] = c
        count += abs(spearmanr(wd[perm], values).statistic) >= observed - 1e-12
        total += 1
    assert total == 36 and row["p_x_effect"] == pytest.approx(count / total)
    # 3 configurations: too few clusters for a bootstrap interval (no [-1.00, -1.00]); the table says why
    assert np.isnan(row["x_effect_low"]) and np.isnan(row["x_effect_high"])
    assert row["x_effect_note"] == "no interval: 3 configurations; a cluster bootstrap needs at least 8"


# --- verdicts, best configuration, trade-off ---------------------------------------------------

def test_verdicts_hold_with_replicates_and_say_opposite_or_inconclusive():
    frame = synthetic_results(n_checkpoints=5, n_layers=2, n_heads=2, seeds=2)
    acc = (frame["metric"] == "accuracy") & (frame["variant"] == "task=pos, pooling=mean")
    frame.loc[acc, "value"] = -frame.loc[acc, "value"]  # falls with weight decay: opposite
    rank = frame["metric"] == "qk_effective_rank"
    frame.loc[rank, "value"] = np.random.default_rng(3).normal(size=rank.sum())  # noise: inconclusive
    decision = build(frame, n_resamples=100).decision
    words = {(v.panel, v.label): v.word for v in decision.verdicts}
    assert words[("outcome", "")] == "holds"
    assert words[("outcome", "validation loss (the trade-off)")] == "holds"
    assert words[("separability", "task=pos, pooling=mean")] == "opposite"
    assert words[("separability", "task=lexname, pooling=mean")] == "holds"
    assert words[("attention", "")] == "inconclusive"
    assert words[("overfitting", "")] == words[("sharpness", "")] == words[("basin", "")] == "holds"
    assert not decision.missing
    # Holm across every headline line: the adjusted p-values are Holm's of the raw ones
    raw = [v.row["p_x_effect"] for v in decision.verdicts]
    m = len(raw)
    order = np.argsort(raw)
    expected = np.minimum(1, np.maximum.accumulate([(m - i) * raw[j] for i, j in enumerate(order)]))
    np.testing.assert_allclose([decision.verdicts[j].p_holm for j in order], expected)


def test_one_seed_and_five_configurations_cannot_decide(tmp_path):
    frame = synthetic_results(n_checkpoints=5, n_layers=2, n_heads=2, seeds=1)
    built = build(frame, n_resamples=100)
    assert {v.word for v in built.decision.verdicts} == {"inconclusive"}
    p = min(v.row["p_x_effect"] for v in built.decision.verdicts)
    assert p == pytest.approx(2 / 120)  # a perfect trend over 5 configurations: 2 of 5! permutations
    text = _text(write_report(frame, tmp_path / "r.html"))
    assert "These data cannot decide" in text and "p = 0.017" in text


def test_best_after_finetuning_and_the_tradeoff(tmp_path):
    after = [2.4, 2.3, 2.0, 1.8, 1.6]
    val = [3.0, 3.1, 3.2, 3.3, 3.4]
    frame = _frame({"downstream_loss_after": after, "val_loss": val})
    text = _text(write_report(frame, tmp_path / "r.html"))
    decision = re.search(r"<div class='ps-callout ps-decision' id='decision'>(.*?)</div>", text, re.S).group(1)
    assert re.search(r"Best after fine-tuning.*?<code>weight_decay=1</code> 1\.6", decision)
    assert re.search(r"Best before fine-tuning</b> by validation loss: <code>weight_decay=0</code> 3", decision)
    assert "Trade-off" in decision and "(validation loss 3.4 vs 3) but better after it (1.6 vs 2.4)" in decision
    assert "not settled" not in decision
    # two seeds per configuration: a trade-off within the seeds' ranges is flagged as not settled
    seeds, wds = [0, 1] * 3, [0.0, 0.0, 0.1, 0.1, 1.0, 1.0]
    close = _frame({"downstream_loss_after": [2.40, 2.50, 2.38, 2.48, 2.60, 2.70], "val_loss": [3.0, 3.2, 3.1, 3.3, 3.5, 3.6]},
                   wds=wds, seeds=seeds)
    noisy = re.search(r"id='decision'>(.*?)</div>", _text(write_report(close, tmp_path / "c.html")), re.S).group(1)
    assert "Trade-off" in noisy and "their seed ranges overlap before or after, so it is not settled" in noisy
    apart = _frame({"downstream_loss_after": [2.40, 2.41, 2.00, 2.01, 2.60, 2.70], "val_loss": [3.0, 3.01, 3.5, 3.51, 3.8, 3.9]},
                   wds=wds, seeds=seeds)
    settled = re.search(r"id='decision'>(.*?)</div>", _text(write_report(apart, tmp_path / "s.html")), re.S).group(1)
    assert "Trade-off" in settled and "not settled" not in settled
    aligned = _text(write_report(_frame({"downstream_loss_after": val, "val_loss": val}), tmp_path / "a.html"))
    assert "No trade-off" in aligned and "Trade-off</b>" not in aligned
    absent = _text(write_report(_frame({"val_loss": val, "loss_gap": after}), tmp_path / "n.html"))
    assert "No outcome after fine-tuning in these results" in absent and "run the plasticity analysis" in absent
    assert "no downstream_loss_after in these results" in absent  # the outcome panel says so in one line


def test_predictors_are_ranked_by_rho_with_the_outcome_and_bh_adjusted():
    frame = synthetic_results(n_checkpoints=6, n_layers=2, n_heads=2, seeds=2, noise=0.3, seed=4)
    prep = prepare(frame)
    table = association_table(prep, n_resamples=100)
    ranked = ranked_predictors(table)
    outcome = prep.score(next(s.key for s in prep.series if s.metric == "downstream_loss_after"))
    wd = prep.checkpoints["weight_decay"].to_numpy()
    means_outcome = pd.Series(outcome).groupby(wd).mean()
    for row in ranked.head(8).to_dict("records"):
        values = prep.checkpoints["val_loss"].to_numpy() if row["series"] == "overfit.val_loss" else prep.score(row["series"])
        means = pd.Series(values).groupby(wd).mean()
        assert row["rho_outcome"] == pytest.approx(spearmanr(means, means_outcome).statistic, abs=1e-12)
    assert (ranked["rho_outcome"].abs().diff().dropna() <= 1e-12).all()  # best first
    assert not ranked["metric"].isin(["downstream_loss_after", "plasticity_gain", "downstream_selection_loss",
                                      "downstream_accuracy_after"]).any()
    p = table["p_rho_outcome"].to_numpy()
    finite = np.isfinite(p)
    np.testing.assert_allclose(table.loc[finite, "q_outcome"], false_discovery_control(p[finite]), rtol=1e-12)
    assert set(ranked["verdict"]) <= {"predicts", "inconclusive"}


# --- the axis -----------------------------------------------------------------------------------

def test_any_numeric_hyperparameter_as_the_axis_says_increases_or_decreases():
    frame = synthetic_results(n_checkpoints=5, n_layers=2, n_heads=2, seeds=2)
    frame["learning_rate"] = frame["weight_decay"].map(dict(zip(sorted(frame["weight_decay"].unique()), [1e-4, 3e-4, 1e-3, 3e-3, 1e-2])))
    built = build(frame, x="learning_rate", n_resamples=100)
    words = {v.word for v in built.decision.verdicts}
    assert words <= {"increases", "decreases"} and {"increases", "decreases"} <= words
    assert built.prep.x == "learning_rate" and built.prep.config_columns[0] == "learning_rate"
    assert "panel: outcome" in {s.key for s in built.specs}
    assert any(s.key.endswith(": vs learning_rate") for s in built.specs)


def test_categorical_axis(tmp_path):
    parts = []
    for i, schedule in enumerate(["cosine", "wsd", "wso"]):
        part = synthetic_results(n_checkpoints=1, n_layers=2, n_heads=2, seeds=5, seed=i,
                                 names=[f"{schedule}-s{s}" for s in range(5)], extra_hyperparameters={"schedule": schedule})
        part.loc[part["metric"] == "downstream_loss_after", "value"] += i  # the schedules differ in the outcome
        parts.append(part)
    frame = pd.concat(parts, ignore_index=True)
    built = build(frame, x="schedule", n_resamples=100)
    assert built.prep.categorical and built.prep.categories == ["cosine", "wsd", "wso"]
    outcome = next(v for v in built.decision.verdicts if v.panel == "outcome" and v.label == "")
    assert outcome.row["axis"] == "eta2" and outcome.word == "differs"
    spec = next(s for s in built.specs if s.key == "panel: outcome")
    assert spec.spec["layout"]["xaxis"]["type"] == "category"
    assert [t["x"] for t in spec.spec["data"] if t.get("mode") == "lines+markers"][0] == ["cosine", "wsd", "wso"]
    text = _text(write_report(frame, tmp_path / "s.html", x="schedule"))
    assert "differs" in text and "η²" in text


def test_training_steps_draw_one_line_per_configuration():
    parts = []
    for wd in (0.0, 0.1):
        for step in (100, 200, 300, 400):
            part = _frame({"downstream_loss_after": [3.0 - step / 1000 - wd], "val_loss": [3.5 - step / 2000 + wd]}, wds=(wd,),
                          names=[f"wd{wd}-step{step}"], extra={"step": step, "tokens": step * 4096})
            parts.append(part)
    frame = pd.concat(parts, ignore_index=True)
    built = build(frame, x="step", n_resamples=50)
    assert built.prep.line_columns == ["weight_decay"]  # tokens follow the step: not a line of its own
    spec = next(s for s in built.specs if s.key == "panel: outcome")
    lines = [t for t in spec.spec["data"] if t.get("mode") == "lines+markers" and t.get("yaxis") == "y"]
    assert [t["name"] for t in lines] == ["weight_decay=0", "weight_decay=0.1"]
    assert all(t["x"] == [100, 200, 300, 400] for t in lines)
    assert make_axis([100, 200, 300, 400], "step").kind == "linear"


def test_axis_scales():
    axis = make_axis([0.0, 1e-4, 1e-3, 1e-2, 0.1, 1.0])
    assert axis.kind == "log" and axis.x([0.0, 1e-4, 1.0]) == [-5.0, -4.0, 0.0]
    assert axis.ticktext[0] == "0" and axis.tickvals[0] == pytest.approx(-5)
    assert make_axis([0.0, 0.0]).kind == "linear"
    no_zero = make_axis([0.01, 0.1])
    assert no_zero.zero is None and "0" not in no_zero.ticktext
    category = make_axis(["wsd", "<b>x</b>"], "schedule", categorical=True)
    assert category.kind == "category" and category.x(["<b>x</b>"]) == ["&lt;b&gt;x&lt;/b&gt;"]


def test_axis_and_identity_errors(tmp_path):
    frame = synthetic_results(n_checkpoints=4, n_layers=2, n_heads=2)
    with pytest.raises(ValueError, match=r"x='nope' is not a column of the results; choose a hyperparameter .*weight_decay"):
        prepare(frame, x="nope")
    with pytest.raises(ValueError, match=r"x='sigma' is a per-row detail or variant"):
        prepare(frame, x="sigma")
    with pytest.raises(ValueError, match=r"x='seed': seed marks replicates"):
        prepare(frame, x="seed")
    twins = pd.concat([frame.assign(seed=0), frame.assign(seed=1)], ignore_index=True)  # two seeds under one name
    with pytest.raises(ValueError, match=r"checkpoint 'wd0' has rows with different seed \(0, 1\): two checkpoints share one name"):
        write_report(twins, tmp_path / "r.html")
    with pytest.raises(ValueError, match="lack the column"):
        write_report(pd.DataFrame({"checkpoint": ["a"], "value": [1.0]}), tmp_path / "r.html")
    with pytest.raises(ValueError, match="negative weight decay"):
        write_report(_frame({"m": [1.0, 2.0]}, wds=(-1.0, 0.1)), tmp_path / "r.html")
    with pytest.raises(ValueError, match="group_by='nope'"):
        write_report(_frame({"m": [1.0, 2.0]}, wds=(0.0, 0.1)), tmp_path / "r.html", group_by="nope")
    with pytest.raises(ValueError, match="unknown format"):
        write_report(_frame({"m": [1.0, 2.0]}, wds=(0.0, 0.1)), tmp_path / "r.html", formats=("gif",))


# --- figures ------------------------------------------------------------------------------------

def test_figures_cover_every_series_and_draw_seed_means_and_ranges():
    frame = synthetic_results(n_checkpoints=4, n_layers=3, n_heads=2, seeds=2, noise=0.05)
    figs = figures(frame)
    prep = prepare(frame)
    for s in prep.series:
        assert f"{s.key}: vs weight_decay" in figs
        assert (f"{s.key}: layer x weight_decay" in figs) == (s.has_layer and s.n_layers > 1)
        assert (f"{s.key}: head x layer" in figs) == s.has_head
    assert {f"panel: {p}" for p in ("outcome", "separability", "attention", "overfitting", "sharpness", "basin")} <= set(figs)
    fig = figs["probes.accuracy [task=pos, pooling=mean]: vs weight_decay"]
    mean = next(t for t in fig.data if t.mode == "lines+markers" and t.line.dash == "solid")
    rows = frame[(frame["metric"] == "accuracy") & (frame["task"] == "pos") & (frame["init"] == "trained")]
    per_ck = rows.groupby(["weight_decay", "seed"])["value"].mean().groupby(level=0)
    np.testing.assert_allclose(mean.y, per_ck.mean().to_numpy(), rtol=1e-4)
    band = [t for t in fig.data if t.fill == "tonexty"]
    assert len(band) == 1 and band[0].name == "band: range of 2 seeds"
    np.testing.assert_allclose(band[0].y, per_ck.min().to_numpy(), rtol=1e-4)
    assert len([t for t in fig.data if t.legendgroup == "layers"]) == 3
    baseline = [t for t in fig.data if "baseline init=random" in (t.name or "")]
    assert len(baseline) == 1 and baseline[0].line.dash == "dash"


def test_one_seed_draws_each_checkpoints_own_interval_not_an_average_of_intervals():
    frame = _frame({"downstream_loss_after": [2.4, 2.3, 2.0, 1.8, 1.6]})
    frame["ci_low"], frame["ci_high"] = frame["value"] - 0.1, frame["value"] + 0.2
    fig = figures(frame)["plasticity.downstream_loss_after: vs weight_decay"]
    trace = next(t for t in fig.data if t.mode == "lines+markers")
    np.testing.assert_allclose(trace.error_y.array, 0.2, rtol=1e-4)
    np.testing.assert_allclose(trace.error_y.arrayminus, 0.1, rtol=1e-4)
    assert not [t for t in fig.data if t.fill == "tonexty"]


def test_baseline_rows_are_left_out_of_scores():
    frame = synthetic_results(n_checkpoints=5, n_layers=2, n_heads=2)
    frame.loc[frame["init"] == "random", "value"] = 1000.0  # would dominate any mean that included them
    prep = prepare(frame)
    assert prep.scores["probes.accuracy [task=pos, pooling=mean]"].max() < 10
    fig = figures(frame)["probes.accuracy [task=pos, pooling=mean]: vs weight_decay"]
    baseline = [t for t in fig.data if "baseline init=random" in (t.name or "")]
    assert len(baseline) == 1 and set(baseline[0].y) == {1000.0}


# --- safety and size ----------------------------------------------------------------------------

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


def test_injected_strings_are_escaped_everywhere(tmp_path):
    evil_metric = "<img src=x onerror=alert(2)>"
    names = ["ok", INJECTION, "c</script><!--x"]
    frame = _frame({"val_loss": [3.0, 3.1, 3.2], evil_metric: [1.0, 0.5, 0.2], "downstream_loss_after": [0.3, 0.2, 0.1]},
                   wds=(0.0, 0.1, 1.0), names=names, extra={"note": "</script><!--", "schedule": "<b>bold</b>"})
    run_info = {"versions": {"torch": INJECTION}, "config": {"path": "/data/<script>x</script>"},
                "data": {"probe": {"sha256": "<!--", "path": INJECTION}}}
    path = write_report(frame, tmp_path / "r.html", title=INJECTION, run_info=run_info)
    text = path.read_text()
    page = _text(path)
    for raw in (INJECTION, evil_metric, "<b>bold</b>", "c</script><!--x", "/data/<script>"):
        assert raw not in page, raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<!--" not in page
    parser = _Scripts()
    parser.feed(text)
    kinds = [attrs.get("type", "js") for attrs, _ in parser.scripts]
    assert kinds.count("js") == 2  # plotly.js and the page's own script, nothing injected
    assert kinds.count("application/json") == text.count("class='ps-plot'") + 1  # one per figure + the shared template
    for attrs, content in parser.scripts:
        if attrs.get("type") == "application/json":
            assert "<" not in content and ">" not in content
            json.loads(content)
    parsed = json.dumps([json.loads(c) for a, c in parser.scripts if a.get("type") == "application/json"], ensure_ascii=False)
    assert INJECTION not in parsed and evil_metric not in parsed
    assert html.escape(evil_metric, quote=False) in parsed  # plotly draws the entities as literal text
    # a categorical axis of user values is escaped too
    schedules = pd.concat([_frame({"downstream_loss_after": [1.0 + i]}, wds=(0.1,), names=[f"s{i}"], extra={"schedule": s})
                           for i, s in enumerate(["cos", INJECTION, "wsd"])], ignore_index=True)
    path = write_report(schedules, tmp_path / "c.html", x="schedule")
    assert INJECTION not in _text(path)


def test_summary_styler_escapes():
    frame = _frame({"val_loss": [3.0, 3.1, 3.2], "acc": [0.5, 0.6, 0.7]}, wds=(0.0, 0.1, 1.0), names=["a", INJECTION, "c"])
    out = summary(frame).to_html()
    assert INJECTION not in out and "&lt;script&gt;" in out
    assert summary(frame, style=False).loc[(INJECTION, 0.1), "x.acc"] == pytest.approx(0.6)


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


# --- comparisons and batches --------------------------------------------------------------------

def _results_dir(root: Path, name: str, frame: pd.DataFrame, run_info: dict | None = None) -> Path:
    folder = root / name
    ResultsStore(folder).write(frame)
    write_declarations(folder, read_declarations(frame))  # what each metric means, beside the results as a run writes it
    if run_info is not None:
        (folder / "run.json").write_text(json.dumps(run_info))
    return folder


def test_comparison_report_puts_groups_on_the_same_axes(tmp_path):
    a = synthetic_results(4, 2, 2, seed=1, extra_hyperparameters={"schedule": "cosine"})
    b = synthetic_results(4, 2, 2, seed=2, extra_hyperparameters={"schedule": "wsd"})
    dirs = [_results_dir(tmp_path, "A", a), _results_dir(tmp_path, "B", b)]
    built = build(prepare(dirs, group_by="schedule"), n_resamples=50)
    fig = next(s for s in built.specs if s.key == "probes.accuracy [task=pos, pooling=mean]: vs weight_decay").figure
    names = [t.name for t in fig.data if t.mode == "lines+markers" and t.line.dash == "solid"]
    assert names == ["cosine", "wsd"]
    heat = next(s for s in built.specs if s.key == "probes.accuracy [task=pos, pooling=mean]: layer x weight_decay")
    assert len(heat.spec["data"]) == 2  # one panel per group
    assert set(built.stats["group"]) == {"cosine", "wsd"}
    assert {b.group for b in built.decision.best} == {"cosine", "wsd"}
    assert len(prepare(dirs).checkpoints) == 8  # the same checkpoint names in both sweeps stay distinct
    text = _text(write_report(dirs, tmp_path / "cmp.html", group_by="schedule"))
    assert "<b>cosine</b>: <b>Best after fine-tuning" in text and "<b>wsd</b>: <b>Best after fine-tuning" in text


def test_batch_index_links_each_report(tmp_path):
    info = {"versions": {"plastiscope": "0.1.0"}, "config": {"analyses": ["probes"]}, "data": {"probe": {"sha256": "abc123"}}}
    a = _results_dir(tmp_path / "results", "sweep-a", synthetic_results(3, 2, 2, seed=1, extra_hyperparameters={"lr_schedule": "cos"}), info)
    b = _results_dir(tmp_path / "results", "sweep-b", synthetic_results(3, 2, 2, seed=2, extra_hyperparameters={"lr_schedule": "lin"}))
    index = write_reports([a, b], tmp_path / "out", formats=("html", "csv"))
    text = index.read_text()
    hrefs = re.findall(r"href='([^']+)'", text)
    assert [h for h in hrefs if h.endswith("report.html")] == ["sweep-a/report.html", "sweep-b/report.html"]
    for href in hrefs:
        assert (index.parent / href).exists(), href
    assert "weight_decay: 0 … 1" in text
    assert "abc123" in (index.parent / "sweep-a/report.html").read_text()  # run.json read into methods
    csvs = list((index.parent / "sweep-a" / "figures").glob("*.csv"))
    assert len(csvs) > 10 and (index.parent / "sweep-a" / "figures" / "statistics.csv").exists()
    data = pd.read_csv(next(p for p in csvs if p.name.startswith("probes.accuracy") and "vs_weight_decay" in p.name))
    assert {"series", "line", "weight_decay", "value", "low", "high", "seeds", "interval"} <= set(data.columns)
    index = write_reports([a, b], tmp_path / "grouped", group_by="lr_schedule")
    hrefs = [h for h in re.findall(r"href='([^']+)'", index.read_text()) if h.endswith(".html")]
    assert hrefs == ["comparison/report.html", "lr_schedule%3Dcos/report.html", "lr_schedule%3Dlin/report.html"]
    for href in hrefs:
        assert (index.parent / href.replace("%3D", "=")).exists()


def test_report_command_takes_any_axis(tmp_path):
    from typer.testing import CliRunner

    from plastiscope.cli import app

    frame = synthetic_results(n_checkpoints=4, n_layers=2, n_heads=2, seeds=1)
    frame["final_lr_fraction"] = frame["weight_decay"].map(dict(zip(sorted(frame["weight_decay"].unique()), [0.0, 0.1, 0.5, 1.0])))
    folder = _results_dir(tmp_path, "res", frame)
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(folder), "--out", str(tmp_path / "r.html"), "--x", "final_lr_fraction"])
    assert result.exit_code == 0, result.output
    text = _text(tmp_path / "r.html")
    assert "Every series against final_lr_fraction" in text and "no direction is expected" in text
    bad = runner.invoke(app, ["report", str(folder), "--out", str(tmp_path / "b.html"), "--x", "nope"])
    assert bad.exit_code == 2 and "x='nope' is not a column of the results" in bad.output
    assert "final_lr_fraction" in bad.output  # the error lists the columns that can be the axis


# --- the outcome comes from the declared roles ----------------------------------------------------


def _decision_text(path: Path) -> str:
    return re.search(r"<div class='ps-callout ps-decision' id='decision'>(.*?)</div>", _text(path), re.S).group(1)


def _best_line(decision: str, key: str) -> tuple[str, float]:
    """The configuration and value the summary names as best after fine-tuning by ``key``."""
    found = re.search(rf"Best after fine-tuning</b> by <code>{re.escape(html.escape(key, quote=True))}</code> \([^)]*\): "
                      r"<code>weight_decay=([^<]*)</code> ([-+0-9.e]+)", decision)
    assert found, (key, decision)
    return found.group(1), float(found.group(2))


def test_a_prompt_response_run_is_ranked_by_its_declared_outcomes(tiny_manifest, tmp_path):
    """A results folder of the plasticity analysis on prompt/response data (``analyze`` writes metrics.json beside the
    rows): the summary, the predictor table and the choice table use response loss and generative accuracy after fine-tuning."""
    from typer.testing import CliRunner

    from plastiscope.cli import app
    from plastiscope.demo.corpus import load_corpus
    from plastiscope.reports.correlate import chosen_outcome

    docs = load_corpus("finetune", 80)
    path = tmp_path / "sft.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"{t} topic:", "response": f" {w}"}) for t, w in zip(docs.texts, docs.column("topic"))))
    options = ["-o", "plasticity.steps=20", "-o", "plasticity.learning_rates=0.01", "-o", "plasticity.eval_docs=16",
               "-o", "plasticity.select_docs=4", "-o", "plasticity.train_docs=60", "-o", "plasticity.n_resamples=50"]
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["analyze", str(tiny_manifest), "--out", str(out), "--finetune-data", str(path),
                                      "--analyses", "plasticity", *options])
    assert result.exit_code == 0, result.output
    rows = load_results(out)
    assert "downstream_loss_after" not in set(rows["metric"])

    def per_checkpoint(metric: str) -> pd.Series:  # the reference: one value per weight decay, read from the parquet
        return rows[rows["metric"] == metric].groupby("weight_decay")["value"].mean()

    loss_key, accuracy_key = "plasticity.response_loss_after [task=sft]", "plasticity.generative_accuracy_after [task=sft]"
    decision = _decision_text(write_report(out, tmp_path / "r.html"))
    for key, metric, best in ((loss_key, "response_loss_after", min), (accuracy_key, "generative_accuracy_after", max)):
        label, value = _best_line(decision, key)
        reference = per_checkpoint(metric)
        assert value == pytest.approx(best(reference), rel=1e-3)
        assert reference[float(label)] == pytest.approx(best(reference), rel=1e-3)  # the named configuration has that value
    assert "the outcome this report ranks by" in decision.split(accuracy_key)[0]  # response loss, named first
    assert "by response loss before fine-tuning:" in decision
    panel = re.search(r"id='panel-outcome'>(.*?)</div>(?=<div class='ps-panel|</div></section>)", _text(tmp_path / "r.html"), re.S)
    assert panel and "response_loss_after" in panel.group(1) and "no downstream_loss_after" not in panel.group(1)
    before = per_checkpoint("response_loss_before")
    assert re.search(rf"by response loss before fine-tuning: <code>weight_decay={before.idxmin():g}</code>", decision)

    built = build(out, n_resamples=50)
    assert chosen_outcome(built.prep) == loss_key
    outcome = per_checkpoint("response_loss_after")
    table = built.stats
    measured_after = {"response_loss_after", "generative_accuracy_after", "generative_score_after", "plasticity_gain",
                      "finetune_displacement", "downstream_selection_loss"}
    assert not table.loc[table["predictor"], "metric"].isin(measured_after).any()
    assert set(table.loc[table["metric"].isin(measured_after), "outcome"]) == {""}
    ranked = ranked_predictors(table)
    assert set(ranked["outcome"]) == {loss_key} and "response_loss_before" in set(ranked["metric"])
    ck = built.prep.checkpoints
    for row in ranked.to_dict("records"):  # the trainer's final validation loss, or one metric (no variants here)
        values = pd.Series(ck["val_loss"].to_numpy(), index=ck["weight_decay"]) if row["series"] == "validation loss" \
            else per_checkpoint(row["metric"])
        assert row["rho_outcome"] == pytest.approx(spearmanr(values.reindex(outcome.index), outcome).statistic, abs=1e-12), row
    choice = built.decision.choice
    assert choice.attrs["outcome"] == loss_key and choice.attrs["outcome_better"] == "lower"
    assert not {s.split(".", 1)[1].split(" [")[0] for s in choice["series"] if "." in s} & measured_after
    pick = choice[choice["series"] == "plasticity.response_loss_before [task=sft]"].iloc[0]
    assert pick["pick"] == f"weight_decay={before.idxmin():g}"
    assert pick["regret"] == pytest.approx(outcome[before.idxmin()] - outcome.min(), abs=1e-9)


def test_a_new_metric_declared_as_the_outcome_is_ranked_by_without_report_code(tmp_path):
    import dataclasses

    from plastiscope.metrics import Declarations, Metric, declare
    from plastiscope.reports.correlate import chosen_outcome

    after, before = [0.31, 0.52, 0.47, 0.66, 0.58], [0.40, 0.35, 0.42, 0.30, 0.33]
    val, gap, spread = [3.0, 3.1, 3.25, 3.2, 3.4], [0.1, 0.3, 0.2, 0.5, 0.4], [1.0, 0.2, 0.9, 0.1, 0.5]
    wds = np.array([0.0, 0.001, 0.01, 0.1, 1.0])
    made_up = declare([("x", (
        Metric("zq_yield_after", "A made-up yield after fine-tuning.", "fraction", "higher", role="outcome"),
        Metric("zq_yield_before", "The same yield before fine-tuning.", "fraction", "higher"),
        Metric("zq_spread", "A made-up quantity measured after fine-tuning.", "", "lower", role="after_finetuning")))])
    frame = _frame({"zq_yield_after": after, "zq_yield_before": before, "val_loss": val, "loss_gap": gap, "zq_spread": spread})
    attach(frame, declarations().merged(made_up))
    decision = _decision_text(write_report(frame, tmp_path / "r.html"))
    outcome = np.array(after)
    assert _best_line(decision, "x.zq_yield_after") == (f"{wds[outcome.argmax()]:g}", outcome.max())
    # its own value before fine-tuning, by its declared direction (higher is better), beside validation loss
    assert (f"by validation loss: <code>weight_decay=0</code> 3; by zq yield before fine-tuning: "
            f"<code>weight_decay={wds[np.argmax(before)]:g}</code> {max(before):g}") in decision
    assert "Trade-off</b> (Han et al.) by <code>x.zq_yield_after</code>" in decision

    built = build(frame, n_resamples=50)
    assert chosen_outcome(built.prep) == "x.zq_yield_after"
    ranked = ranked_predictors(built.stats)
    assert list(ranked["series"].sort_values()) == ["overfit.loss_gap", "overfit.val_loss", "x.zq_yield_before"]
    for row in ranked.to_dict("records"):
        values = {"overfit.loss_gap": gap, "overfit.val_loss": val, "x.zq_yield_before": before}[row["series"]]
        assert row["rho_outcome"] == pytest.approx(spearmanr(values, after).statistic, abs=1e-12)
    choice = built.decision.choice
    assert choice.attrs["outcome"] == "x.zq_yield_after" and choice.attrs["outcome_better"] == "higher"
    for row in choice.to_dict("records"):
        values = {"overfit.loss_gap": gap, "overfit.val_loss": val, "x.zq_yield_before": before}[row["series"]]
        pick = int(np.argmax(values) if row["better"] == "higher" else np.argmin(values))
        assert row["pick"] == f"weight_decay={wds[pick]:g}" and row["regret"] == pytest.approx(outcome.max() - outcome[pick])
    # the same rows without the role: no outcome at all, and the after-fine-tuning quantity is a predictor again
    plain = Declarations({a: tuple(dataclasses.replace(m, role="") if a == "x" else m for m in ms)
                          for a, ms in declarations().merged(made_up).analyses.items()})
    bare = build(attach(frame.copy(), plain), n_resamples=50)
    assert chosen_outcome(bare.prep) == "" and bare.decision.best == []
    assert bare.stats.set_index("series").loc["x.zq_spread", "predictor"]


def test_choice_order_of_a_metric_that_is_zero_everywhere_is_one_tie():
    """Every configuration ties on an all-zero metric (exact memorization of a model that memorises nothing): the order
    puts the worse outcome first, as for any tie, with no NaN from rounding to significant digits."""
    import warnings

    from plastiscope.reports.choice import pick_order

    outcome = np.array([2.5, 2.4, 2.6])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(pick_order(np.zeros(3), "higher", outcome, "lower")) == [2, 0, 1]
        assert list(pick_order(np.array([1e-12, 3e-12, 2e-12]), "higher", outcome, "lower")) == [1, 2, 0]
        assert list(pick_order(np.array([1.0, 1.0 + 1e-12, 0.5]), "higher", outcome, "lower")) == [0, 1, 2]
