"""The demo end to end: train the embedded sweep, run every analysis, write a report that works in a browser."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from conftest import TINY
from test_reports_browser import CHROMIUM, assert_clean, check_report_in_browser

from plastiscope.demo import run_demo as demo
from plastiscope.demo.sweep import TrainConfig


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory, tiny_manifest):
    out = tmp_path_factory.mktemp("demo")
    shutil.copytree(tiny_manifest.parent, out / "sweep")  # the tiny sweep is reused, not retrained
    config = TrainConfig(weight_decays=(0.0, 0.1, 1.0), **TINY)
    report = demo(out, progress=False, config=config, n_docs=80)
    return out, report


def test_demo_runs_every_analysis(demo_dir):
    out, report = demo_dir
    results = pd.read_parquet(out / "results" / "metrics.parquet")
    expected = {"probes", "attention", "attention_weights", "overfit"}
    assert expected <= set(results["analysis"]), set(results["analysis"])
    assert not (out / "results" / "failures.csv").exists(), (out / "results" / "failures.csv").read_text()
    assert sorted(results["weight_decay"].unique()) == [0.0, 0.1, 1.0]
    run = json.loads((out / "results" / "run.json").read_text())
    assert run["config"]["demo"] and run["data"]["data"]["documents"] == 80
    assert report == out / "report.html" and report.stat().st_size < 10_000_000
    text = report.read_text()
    for needle in ("probes", "accuracy", "entropy", "effective_rank", "loss_gap", "mia_auc_loss"):
        assert needle in text, needle


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (make browser)")
def test_demo_report_in_browser(demo_dir, tmp_path):
    out, report = demo_dir
    expected = report.read_text().count("class='ps-plot'")
    check = check_report_in_browser(report, tmp_path)
    assert_clean(check, report, expected)
    assert check.sort_changed_order
