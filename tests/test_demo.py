"""The demo end to end: train the embedded sweep, run every analysis, write a report that works in a browser."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from conftest import TINY
from test_reports_browser import CHROMIUM, assert_clean, check_report_in_browser

from plastiscope.demo import ANALYSIS_OPTIONS, QUICK_ANALYSIS_OPTIONS
from plastiscope.demo import run_demo as demo
from plastiscope.demo.corpus import load_corpus
from plastiscope.demo.sweep import DEMO, QUICK, TrainConfig
from plastiscope.runner import Inputs, available_analyses, prepare

# the tiny sweep's models fine-tune within this budget; the demo's own is larger
TEST_OPTIONS = {"plasticity": {"steps": 30, "train_docs": 512, "eval_docs": 128}}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory, tiny_manifest):
    out = tmp_path_factory.mktemp("demo")
    shutil.copytree(tiny_manifest.parent, out / "sweep")  # the tiny sweep is reused, not retrained
    config = TrainConfig(weight_decays=(0.0, 0.1, 1.0), **TINY)
    report = demo(out, progress=False, config=config, n_docs=80, options=TEST_OPTIONS, workers=1)
    return out, report


def test_demo_runs_every_analysis(demo_dir):
    out, report = demo_dir
    results = pd.read_parquet(out / "results" / "metrics.parquet")
    expected = {"probes", "attention", "attention_weights", "overfit"}
    assert expected <= set(results["analysis"]), set(results["analysis"])
    assert not (out / "results" / "failures.csv").exists(), (out / "results" / "failures.csv").read_text()
    assert sorted(results["weight_decay"].unique()) == [0.0, 0.1, 1.0]
    run = json.loads((out / "results" / "run.json").read_text())
    assert run["about"]["demo"] and run["data"]["data"]["documents"] == 80
    assert report == out / "report.html" and report.stat().st_size < 10_000_000
    text = report.read_text()
    for needle in ("probes", "accuracy", "entropy", "effective_rank", "loss_gap", "mia_auc_loss"):
        assert needle in text, needle
    # the summary says which regime the demo is and why
    epochs = round(pd.read_csv(out / "sweep" / "manifest.csv")["epochs"].mean())
    assert f"data-constrained, 400 training glosses seen about {epochs} times each" in text and epochs >= 2


def test_demo_states_its_scale_and_costs(demo_dir):
    out, _ = demo_dir
    manifest = pd.read_csv(out / "sweep" / "manifest.csv")
    record = json.loads((out / "demo.json").read_text())
    scale = record["scale"]
    assert scale["runs"] == 3 and scale["parameters"] == manifest["parameters"].iloc[0]
    assert scale["tokens"] == round(manifest["tokens"].mean())
    assert scale["tokens_per_parameter"] == pytest.approx(manifest["tokens"].mean() / manifest["parameters"].iloc[0], abs=0.01)
    assert json.loads((out / "results" / "run.json").read_text())["about"]["scale"] == scale
    assert set(record["seconds"]) == set(record["cpu_seconds"]) == {"train", "analyze", "report"}
    assert record["options"]["plasticity"] == {**ANALYSIS_OPTIONS["plasticity"], **TEST_OPTIONS["plasticity"]}


def test_demo_sweep_has_replicates_and_is_data_constrained():
    """The demo's sweeps (full and quick) train two seeds or more per weight decay, many epochs of a small training set."""
    for config in (TrainConfig(**DEMO), TrainConfig(**QUICK)):
        assert len(config.seeds) >= 2 and len(config.weight_decays) >= 3
        assert config.train_docs <= len(load_corpus("train")) and config.steps * config.batch_size >= 10 * config.train_docs


def test_demo_analysis_options_are_valid():
    docs = load_corpus("finetune", 50)
    inputs = Inputs(data=docs, train_data=docs, val_data=docs, finetune_data=docs)
    for options in (ANALYSIS_OPTIONS, QUICK_ANALYSIS_OPTIONS):
        specs, configs = prepare(available_analyses(), inputs, options)
        assert {"probes", "plasticity", "landscape", "overfit"} <= {s.name for s in specs}


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (make browser)")
def test_demo_report_in_browser(demo_dir, tmp_path):
    out, report = demo_dir
    expected = report.read_text().count("class='ps-plot'")
    check = check_report_in_browser(report, tmp_path)
    assert_clean(check, report, expected)
    assert check.sort_changed_order


def test_parallel_analysis_fills_the_cache_with_the_sequential_results(tiny_manifest, tmp_path):
    """Two processes, each analysing a share of the checkpoints, leave every piece in the cache; the
    table read from it is the one a single process computes."""
    from plastiscope.demo import fill_cache
    from plastiscope.pipeline import analyze

    inputs = Inputs(data=load_corpus("probe", 24))
    names = ["attention", "attention_weights"]
    fill_cache(tiny_manifest, tmp_path / "parallel", names, inputs, {}, workers=2, progress=False)
    assert len(list((tmp_path / "parallel" / "cache").glob("*.parquet"))) == 3 * 2
    parallel, _ = analyze(tiny_manifest, tmp_path / "parallel", names, inputs, progress=False)
    sequential, _ = analyze(tiny_manifest, tmp_path / "sequential", names, inputs, progress=False)
    key = ["checkpoint", "analysis", "metric", "layer", "head"]
    pd.testing.assert_frame_equal(parallel.sort_values(key).reset_index(drop=True), sequential.sort_values(key).reset_index(drop=True))


def test_demo_exact_memorization_equals_a_generate_reference(demo_dir):
    """Each demo checkpoint's exact memorization and matched prefix on its training documents, recomputed independently:
    the folder loaded as a plain transformers model and decoded greedily by generate()."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from plastiscope.data import encode
    from plastiscope.generation import greedy_generate

    out, _ = demo_dir
    results = pd.read_parquet(out / "results" / "metrics.parquet")
    manifest = pd.read_csv(out / "sweep" / "manifest.csv")
    k, m = ANALYSIS_OPTIONS["overfit"]["prefix_tokens"], ANALYSIS_OPTIONS["overfit"]["continuation_tokens"]
    for label, path in zip(manifest["label"], manifest["path"]):
        folder = out / "sweep" / path
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        config = TrainConfig(**TINY)
        n_train = config.train_docs or config.steps * config.batch_size  # as run_demo chooses the training documents
        ids = [encode(tokenizer, t, 1 + k + m) for t in load_corpus("train", min(80, n_train)).texts]
        rows = torch.tensor([doc for doc in ids if len(doc) == 1 + k + m])
        same = (greedy_generate(model, rows[:, : 1 + k], m) == rows[:, 1 + k :]).long()
        mine = results[(results["checkpoint"] == label) & (results["analysis"] == "overfit")].set_index("metric")["value"]
        assert mine["exact_match_train"] == pytest.approx(same.all(dim=1).float().mean().item(), abs=1e-12)
        assert mine["matched_prefix_train"] == pytest.approx(np.mean(same.cumprod(dim=1).sum(dim=1).numpy()), abs=1e-12)
