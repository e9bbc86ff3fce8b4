"""Sweep agreement: a proxy that ranks like the target, one that reverses it, replicates, regret, errors, the CLI."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from typer.testing import CliRunner

from plastiscope.cli import app
from plastiscope.metrics import attach, write_declarations
from plastiscope.reports import sweep_agreement, write_agreement
from plastiscope.reports.agreement import regret_record
from plastiscope.results import ResultsStore, tidy
from plastiscope.runner import declarations

RECIPES = ["web", "code", "books", "wiki", "math"]
TARGET_LOSS = np.array([3.1, 2.8, 3.4, 2.9, 3.6])  # the target's validation loss per recipe: code best, math worst


def _sweep(values: dict[str, np.ndarray], seeds: int = 1, extra: dict | None = None, name: str = "m") -> pd.DataFrame:
    """A results frame: one checkpoint per recipe (and seed) with the given metric values per recipe."""
    analyses = {"val_loss": "overfit", "downstream_loss_after": "plasticity", "accuracy": "probes", "entropy": "attention"}
    rows = []
    for i, recipe in enumerate(RECIPES):
        for seed in range(seeds):
            for metric, v in values.items():
                rows.append({"checkpoint": f"{name}-{recipe}-s{seed}", "weight_decay": 0.1, "recipe": recipe, "seed": seed,
                             "analysis": analyses[metric], "metric": metric, "value": v[i] + 0.01 * (seed - (seeds - 1) / 2),
                             **(extra or {})})
    return attach(tidy(pd.DataFrame(rows)), declarations())  # what each metric means, as a run records it


def _target(seeds: int = 2) -> pd.DataFrame:
    return _sweep({"val_loss": TARGET_LOSS, "downstream_loss_after": TARGET_LOSS - 1, "accuracy": 1 / TARGET_LOSS,
                   "entropy": TARGET_LOSS ** 2}, seeds=seeds, name="big")


def _proxy(order: np.ndarray, extra: dict | None = None) -> pd.DataFrame:
    """A proxy whose values are a monotone function of ``order`` (each recipe's value)."""
    return _sweep({"val_loss": 4 + order / 10, "downstream_loss_after": 3 + order / 10, "accuracy": 1 / (4 + order),
                   "entropy": order}, extra=extra, name="small")


def test_a_proxy_that_ranks_like_the_target_agrees_and_one_that_reverses_it_does_not():
    agree = sweep_agreement(_proxy(TARGET_LOSS * 2), _target(), key="recipe", n_resamples=200)
    assert set(agree["series"]) == {"overfit.val_loss", "plasticity.downstream_loss_after", "probes.accuracy", "attention.entropy"}
    assert agree["series"].tolist()[:2] == ["overfit.val_loss", "plasticity.downstream_loss_after"]  # the losses first
    assert (agree["rho"] == 1.0).all() and (agree["n_configs"] == 5).all()
    assert agree.loc[agree["better"] != "", "regret"].tolist() == [0.0, 0.0, 0.0]
    assert agree.loc[agree["metric"] == "val_loss", "proxy_top"].item() == "code"
    assert np.isnan(agree.loc[agree["metric"] == "entropy", "regret"].item())  # no better direction, no regret
    reverse = sweep_agreement(_proxy(-TARGET_LOSS), _target(), key="recipe", n_resamples=200)
    assert (reverse["rho"] == -1.0).all()
    val = reverse[reverse["metric"] == "val_loss"].iloc[0]
    # the proxy picks the target's worst recipe (math, 3.6); the best was code (2.8): regret 0.8 nats
    assert val["proxy_top"] == "math" and val["target_best"] == "code" and val["regret"] == pytest.approx(0.8)
    acc = reverse[reverse["metric"] == "accuracy"].iloc[0]
    assert acc["regret"] == pytest.approx(1 / 2.8 - 1 / 3.6)  # higher is better: best overall minus best picked


def test_rho_interval_and_replicates_against_an_independent_computation():
    rng = np.random.default_rng(0)
    noisy = TARGET_LOSS + rng.normal(0, 0.2, 5)
    table = sweep_agreement(_proxy(noisy), _target(seeds=3), key="recipe", n_resamples=500)
    row = table[table["metric"] == "val_loss"].iloc[0]
    target = _target(seeds=3)
    means = target[target["metric"] == "val_loss"].groupby("recipe")["value"].mean().reindex(RECIPES)  # replicates averaged
    assert row["rho"] == pytest.approx(spearmanr(4 + noisy / 10, means).statistic, abs=1e-12)
    # 5 matched configurations: too few clusters for a bootstrap interval, and the table says why
    assert np.isnan(row["rho_low"]) and np.isnan(row["rho_high"])
    assert row["rho_note"] == "no interval: 5 configurations; a cluster bootstrap needs at least 8"
    assert 0 < row["p"] <= 1


def test_partly_matching_keys_are_refused_naming_both_sides():
    """3 proxy configurations and 1 target configuration: a regret from one matched configuration would mean nothing."""
    proxy = _proxy(TARGET_LOSS)
    proxy = proxy[proxy["recipe"].isin(["web", "code", "books"])]
    target = _target()
    target = target[target["recipe"].isin(["code", "math"])]
    with pytest.raises(ValueError, match=r"configurations match on \['recipe'\] only in part \(1 matched\): proxy 'books', 'web' "
                                         r"not in the target; target 'math' not in the proxy"):
        sweep_agreement(proxy, target, key="recipe")
    with pytest.raises(ValueError, match=r"only in part \(1 matched\): proxy 'books', 'web' not in the target; compare"):
        sweep_agreement(proxy, target[target["recipe"] == "code"], key="recipe")


def test_top_k_regret_by_hand():
    proxy = np.array([1.0, 2.0, 3.0, 4.0])
    target = np.array([4.0, 3.0, 1.0, 2.0])
    names = np.array(["a", "b", "c", "d"])
    assert regret_record(proxy, target, names, "lower", 1) == {"regret": 3.0, "proxy_top": "a", "target_best": "c"}
    assert regret_record(proxy, target, names, "lower", 2)["regret"] == 2.0  # picks a, b: best of them 3 vs 1
    assert regret_record(proxy, target, names, "lower", 3)["regret"] == 0.0
    assert regret_record(proxy, target, names, "higher", 1) == {"regret": 2.0, "proxy_top": "d", "target_best": "a"}


def test_by_evaluates_each_proxy_setting(tmp_path):
    proxy = pd.concat([_proxy(TARGET_LOSS, extra={"learning_rate": 1e-3}), _proxy(-TARGET_LOSS, extra={"learning_rate": 1e-2})],
                      ignore_index=True)
    proxy["checkpoint"] = proxy["checkpoint"] + "-lr" + proxy["learning_rate"].astype(str)
    table = sweep_agreement(proxy, _target(), key="recipe", by="learning_rate", n_resamples=200)
    val = table[table["metric"] == "val_loss"].set_index("by")["rho"]
    assert val.to_dict() == {"0.001": 1.0, "0.01": -1.0}
    path = write_agreement(table, tmp_path / "agreement.html")
    text = path.read_text()
    assert 'id="agreement-table"' in text and "learning_rate" in text and text.count("class='ps-plot'") == 1


def test_clear_errors_when_keys_do_not_match():
    with pytest.raises(ValueError, match=r"target \(DataFrame\): no hyperparameter 'mix'"):
        sweep_agreement(_proxy(TARGET_LOSS).assign(mix="a"), _target(), key="mix")
    renamed = _proxy(TARGET_LOSS)
    renamed["recipe"] = renamed["recipe"].str.upper()
    with pytest.raises(ValueError, match=r"no configuration matches on \['recipe'\]: the proxy has \['BOOKS'"):
        sweep_agreement(renamed, _target(), key="recipe")
    two_lrs = pd.concat([_proxy(TARGET_LOSS, extra={"learning_rate": 1e-3}), _proxy(TARGET_LOSS, extra={"learning_rate": 1e-2})],
                        ignore_index=True)
    two_lrs["checkpoint"] = two_lrs["checkpoint"] + "-lr" + two_lrs["learning_rate"].astype(str)
    with pytest.raises(ValueError, match=r"proxy \(DataFrame\): 2 checkpoints share recipe=\w+ but differ in \['learning_rate'\]; "
                                         r"replicates differ only in seed: pass --by learning_rate"):
        sweep_agreement(two_lrs, _target(), key="recipe")
    with pytest.raises(ValueError, match="--by 'recipe' is also a key column"):
        sweep_agreement(_proxy(TARGET_LOSS), _target(), key="recipe", by="recipe")


def test_compare_command(tmp_path):
    proxy, target = tmp_path / "proxy", tmp_path / "target"
    ResultsStore(proxy).write(_proxy(-TARGET_LOSS))
    ResultsStore(target).write(_target())
    for folder in (proxy, target):
        write_declarations(folder, declarations())
    runner = CliRunner()
    result = runner.invoke(app, ["compare", str(proxy), str(target), "--key", "recipe", "--top-k", "2",
                                 "--out", str(tmp_path / "a.html"), "--csv", str(tmp_path / "a.csv")])
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.output.splitlines() if "overfit.val_loss" in ln)
    assert re.search(r"overfit\.val_loss\s+5\s+-1\.00 \[—\]", line), line  # no degenerate interval from 5 configurations
    assert "[—] no interval: 5 configurations; a cluster bootstrap needs at least 8" in result.output
    assert "0.6@2" in line  # the two worst recipes picked (math 3.6, books 3.4): 3.4 - 2.8
    assert (tmp_path / "a.html").exists() and len(pd.read_csv(tmp_path / "a.csv")) == 4
    bad = runner.invoke(app, ["compare", str(proxy), str(target), "--key", "nope"])
    assert bad.exit_code == 2 and "no hyperparameter 'nope'" in bad.output
    partial = tmp_path / "partial"
    ResultsStore(partial).write(_target().query("recipe == 'code'"))
    refused = runner.invoke(app, ["compare", str(proxy), str(partial), "--key", "recipe"])
    assert refused.exit_code == 2 and "only in part (1 matched): proxy 'books', 'math', 'web', 'wiki' not in the target" in refused.output
    assert "regret" not in refused.output
    missing = runner.invoke(app, ["compare", str(tmp_path / "none"), str(target), "--key", "recipe"])
    assert missing.exit_code == 2 and "no such results folder" in missing.output
