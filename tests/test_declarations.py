"""Metric declarations: recorded with the results, read by reports, and the baselines every headline must clear."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pandas as pd
import pytest
from synthetic import synthetic_results

from plastiscope.metrics import (
    Baseline,
    DeclarationError,
    Declarations,
    Headline,
    Metric,
    attach,
    declare,
    read_declarations,
    write_declarations,
)
from plastiscope.reports import write_report
from plastiscope.reports.baselines import check
from plastiscope.reports.frame import prepare
from plastiscope.reports.report import build
from plastiscope.results import ResultsStore
from plastiscope.runner import declarations

ACCURACY = "probes.accuracy [task=pos, pooling=mean]"


def _text(path) -> str:
    return re.sub(r"<script>/\*\*.*?</script>", "", path.read_text(), flags=re.S)  # without the inlined plotly.js


def _with(decls: Declarations, analysis: str, name: str, **changes) -> Declarations:
    """``decls`` with one metric's declaration changed."""
    metrics = tuple(dataclasses.replace(m, **changes) if m.name == name else m for m in decls.analyses[analysis])
    return Declarations({**decls.analyses, analysis: metrics})


def test_every_analysis_declares_its_metrics_once_with_valid_fields():
    decls = declarations()
    assert decls.order == ("probes", "attention", "attention_weights", "overfit", "plasticity", "landscape")
    for analysis, metrics in decls.analyses.items():
        assert metrics, analysis
        for m in metrics:
            assert m.description and m.better in ("higher", "lower", None), (analysis, m.name)
    panels = [(a, m.name, m.headline.panel) for a, m in decls.headlines()]
    assert [p[2] for p in panels] == ["outcome", "separability", "attention", "overfitting", "sharpness", "basin"]
    # a family: the placeholder fills the description
    auc = decls.lookup("mia_auc_zlib")
    assert auc is not None and "by the zlib score" in auc.description and auc.baselines[0].value == 0.5
    assert decls.lookup("no_such_metric") is None
    # JSON round trip keeps everything, including the order and the headline's variant
    again = Declarations.from_json(json.loads(json.dumps(decls.to_json())))
    assert again == decls and again.order == decls.order
    assert again.lookup("basin_sigma_relative").headline.variant == (("objective", "loss"), ("direction", "random"))


def test_bad_declarations_are_refused_with_the_field_named():
    with pytest.raises(DeclarationError, match="exactly one of value"):
        Baseline(value=0.5, init="random")
    with pytest.raises(DeclarationError, match="better must be"):
        Metric("m", "d", better="up")
    with pytest.raises(DeclarationError, match="expected must be"):
        Headline("p", "P", "grows")
    with pytest.raises(DeclarationError, match="declares m more than once"):
        declare([("a", (Metric("m", "d"), Metric("m", "e")))])


def test_results_folder_records_declarations_and_reports_read_them(tmp_path):
    frame = synthetic_results(n_checkpoints=3, n_layers=2, n_heads=2)
    store = ResultsStore(tmp_path / "results")
    store.write(frame.drop(columns=[]))
    assert not read_declarations(tmp_path / "results")  # nothing recorded yet: every metric shows by name only
    assert prepare(tmp_path / "results").declarations == Declarations()
    write_declarations(tmp_path / "results", declarations())
    prep = prepare(tmp_path / "results")
    assert prep.declarations == declarations()
    # the series follow the declarations' analysis order (probes first), not the order of the rows
    order = list(dict.fromkeys(s.analysis for s in prep.series))
    assert order == [a for a in declarations().order if a in order]
    # a second record merges: an analysis of an earlier run stays, one of this run replaces it
    extra = declare([("custom", (Metric("custom_metric", "A custom metric."),))])
    write_declarations(tmp_path / "results", extra)
    merged = read_declarations(tmp_path / "results")
    assert merged.order[-1] == "custom" and merged.lookup("accuracy") is not None
    # a frame that went through pd.concat with another analysis's frame keeps the record
    a, b = attach(frame.iloc[:5].copy(), declarations()), attach(frame.iloc[5:].copy(), declarations())
    assert read_declarations(pd.concat([a, b])) == declarations()


def test_a_declaration_change_shows_on_the_page_without_report_code(tmp_path):
    frame = synthetic_results(n_checkpoints=5, n_layers=2, n_heads=2, seeds=2)
    frame = frame[frame["metric"].isin(["accuracy", "downstream_loss_after", "entropy_normalized", "wq_norm"])]
    decls = _with(declarations(), "probes", "accuracy", description="Accuracy as newly defined ZQX.", unit="percent points",
                  headline=Headline("separability", "Separability, retitled ZQY", "rise", "someone 2030", "run it", order=20))
    decls = _with(decls, "attention", "entropy_normalized",
                  headline=Headline("focus", "Focus: normalised entropy ZQW", "fall", "someone else 2031", "run attention", order=25))
    decls = Declarations({a: ms for a, ms in decls.analyses.items() if a != "attention_weights"})  # wq_norm: undeclared
    text = _text(write_report(attach(frame.copy(), decls), tmp_path / "r.html"))
    assert "Accuracy as newly defined ZQX." in text and "percent points" in text
    assert "Separability, retitled ZQY" in text and "someone 2030" in text
    assert "Focus: normalised entropy ZQW" in text and "id='panel-focus'" in text
    assert text.index("id='panel-separability'") < text.index("id='panel-focus'") < text.index("id='panel-overfitting'")
    # the undeclared metric is still drawn, under its name, with an empty definition
    assert "attention_weights.wq_norm" in text
    row = re.search(r"<tr><td>wq_norm</td><td>attention_weights</td>(.*?)</tr>", text)
    assert row and re.fullmatch(r"(<td></td>)+", row.group(1)), row
    # without any declaration there are no headline panels, and every series still shows
    bare = frame.copy()
    bare.attrs = {}
    built = build(bare, n_resamples=50)
    n_series = len(frame[["analysis", "metric", "variant"]].drop_duplicates())
    assert n_series == 5 and built.decision.verdicts == [] and len([s for s in built.specs if s.kind == "line"]) == n_series


def _naive_cleared(frame: pd.DataFrame, checkpoint: str, init: str) -> bool:
    """Reference: mean over layers of the trained rows' ci_low above the mean over the same layers of the baseline's ci_high."""
    rows = frame[(frame["checkpoint"] == checkpoint) & (frame["metric"] == "accuracy") & (frame["task"] == "pos")]
    trained = rows[rows["init"] == "trained"].groupby("layer")["ci_low"].mean()
    base = rows[rows["init"] == init].groupby("layer")["ci_high"].mean()
    layers = trained.index.intersection(base.index)
    return bool(trained[layers].mean() > base[layers].mean())


def test_a_headline_that_does_not_clear_its_baseline_is_inconclusive_never_holds(tmp_path):
    frame = synthetic_results(n_checkpoints=6, n_layers=2, n_heads=2, seeds=2)
    before = build(frame, n_resamples=50).decision
    words = {(v.panel, v.label): v.word for v in before.verdicts}
    assert words[("separability", "task=pos, pooling=mean")] == "holds"  # far above its random-init rows
    # the random-init model as good as the trained one: the rising trend stays, the mechanism may not hold
    trained = frame["init"].eq("trained") & frame["metric"].eq("accuracy")
    random = frame["init"].eq("random") & frame["metric"].eq("accuracy") & frame["task"].eq("pos")  # task lexname unchanged
    shifted = frame.copy()
    key = ["checkpoint", "task", "layer"]
    level = shifted[trained].set_index(key)["value"]
    rows = shifted[random].set_index(key).index
    rng = np.random.default_rng(5)
    shifted.loc[random, "value"] = level.reindex(rows).to_numpy() + rng.normal(0, 0.01, len(rows))
    shifted.loc[random, "ci_low"] = shifted.loc[random, "value"] - 0.03
    shifted.loc[random, "ci_high"] = shifted.loc[random, "value"] + 0.03
    built = build(shifted, n_resamples=50)
    lines = {(v.panel, v.label): v for v in built.decision.verdicts}
    line = lines[("separability", "task=pos, pooling=mean")]
    assert line.row["x_effect"] > 0.8 and line.p_holm < 0.05  # the trend alone would say "holds"
    assert line.word == "inconclusive" and not line.baseline.clears
    # the checkpoint-level comparison agrees with a naive loop over the rows
    comparison = next(c for c in line.baseline.comparisons if c.baseline.init == "random")
    prep = built.prep
    for i, name in enumerate(prep.checkpoints["checkpoint"]):
        assert bool(comparison.cleared[i] == 1.0) == _naive_cleared(shifted, name, "random"), name
    text = _text(write_report(shifted, tmp_path / "r.html"))
    assert "Does not clear its baseline" in text and re.search(r"above the random-init model: \d+ of 12 checkpoints \(<span[^>]*>(all )?indistinguishable", text)
    # the other separability line (task lexname) still clears and still holds
    assert lines[("separability", "task=lexname, pooling=mean")].word == "holds"


def test_majority_class_rows_and_constants_are_baselines_too():
    frame = synthetic_results(n_checkpoints=6, n_layers=2, n_heads=2, seeds=2)
    trained = frame[(frame["init"] == "trained") & (frame["metric"] == "accuracy")]
    majority = trained.assign(init="majority", value=0.97, ci_low=np.nan, ci_high=np.nan)  # 97 % of the task is one class
    with_majority = attach(pd.concat([frame, majority], ignore_index=True), declarations())
    auc_rows = with_majority.index[with_majority["metric"] == "mia_auc_loss"]
    with_majority.loc[auc_rows[:4], "value"] = [0.45, 0.5, 0.5, 0.52]  # at or below chance, and just above it
    prep = prepare(with_majority)
    result = check(prep, ACCURACY)
    labels = {c.label: c for c in result.comparisons}
    assert labels["majority class"].measured and labels["random-init model"].measured
    # no checkpoint's pos accuracy (0.7 + up to 0.25) reaches 0.97: none clears the majority class
    assert np.nansum(labels["majority class"].cleared) == 0 and not result.clears
    # a constant: membership AUC against chance 0.5 (no interval: the value itself is compared)
    auc = check(prep, "overfit.mia_auc_loss [score=loss]")
    chance = auc.comparisons[0]
    values = prep.score("overfit.mia_auc_loss [score=loss]")
    np.testing.assert_array_equal(chance.cleared[prep.has_x], (values[prep.has_x] > 0.5).astype(float))  # leakage: above chance
    assert (chance.cleared[prep.has_x] == 0).sum() == 3
    assert chance.baseline.value == 0.5 and "above the chance level: 9 of 12 checkpoints" in auc.sentence()


def test_a_notebook_frame_carries_the_declarations(tiny_sweep):
    from plastiscope.attention import attention_weights

    frame = attention_weights(tiny_sweep, progress=False)
    assert read_declarations(frame) == declarations()
    prep = prepare(frame)
    assert prep.declarations.lookup("qk_effective_rank", "attention_weights").headline.panel == "attention"
    assert [s.analysis for s in prep.series] == ["attention_weights"] * len(prep.series)


def test_a_baseline_without_layers_is_compared_with_every_layer():
    frame = synthetic_results(n_checkpoints=4, n_layers=3, n_heads=2)
    accuracy = frame[(frame["metric"] == "accuracy") & (frame["init"] == "trained") & (frame["task"] == "pos")]
    one = accuracy.drop_duplicates("checkpoint").assign(init="majority", layer=pd.NA, ci_low=0.74, ci_high=0.76, value=0.75)
    prep = prepare(attach(pd.concat([frame, one], ignore_index=True), declarations()))
    majority = next(c for c in check(prep, ACCURACY).comparisons if c.label == "majority class")
    for i, name in enumerate(prep.checkpoints["checkpoint"]):  # reference: the mean over all layers of ci_low against 0.76
        low = accuracy.loc[accuracy["checkpoint"] == name, "ci_low"].mean()
        assert majority.cleared[i] == float(low > 0.76), name
    assert 0 < np.nansum(majority.cleared) < 4  # the rising trend crosses the baseline: a comparison that can fail
