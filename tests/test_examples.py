"""The example notebooks run top to bottom, and each shows what its study is about.

Each notebook runs in ``tmp_path`` as a reader would run it (it trains its tiny models and writes its folder
there); the assertions read that folder's real output and check it against the study's claims and against
independent computations (scipy's Spearman, numpy's interpolation of the basin curves).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"


def execute(name: str, path: Path, monkeypatch) -> list:
    """Execute ``examples/<name>`` in ``path``; return its code cells' outputs (none of them an error)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(EXAMPLES / name, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    errors = [f"{o.ename}: {o.evalue}" for o in outputs if o.output_type == "error"]
    assert not errors, errors
    return outputs


def shown_text(outputs: list) -> str:
    """Everything the notebook printed or displayed as plain text."""
    return "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)


def test_quickstart_notebook_executes_on_a_manifest_the_demo_did_not_write(tiny_manifest, tmp_path, monkeypatch):
    """Checkpoint folders without the demo trainer's plastiscope.json, listed by a manifest of path and weight_decay only."""
    import shutil

    sweep = tmp_path / "other-sweep"
    lines = ["path,weight_decay"]
    for row in pd.read_csv(tiny_manifest).itertuples():
        folder = shutil.copytree(tiny_manifest.parent / row.path, sweep / f"model-{row.Index}")
        (folder / "plastiscope.json").unlink()
        lines.append(f"{folder.name},{row.weight_decay}")
    (sweep / "manifest.csv").write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("PLASTISCOPE_MANIFEST", str(sweep / "manifest.csv"))
    outputs = execute("quickstart.ipynb", tmp_path, monkeypatch)
    text = shown_text(outputs)
    assert "figures, e.g." in text and "model-2" in text and "tokens_per_parameter" not in text


def test_schedules_notebook(tmp_path, monkeypatch):
    from plastiscope import load_results

    outputs = execute("schedules.ipynb", tmp_path, monkeypatch)
    out = tmp_path / "plastiscope-demo-schedules"
    results = load_results(out / "results")
    metrics = ["hessian_trace", "adaptive_trace", "downstream_loss_after"]
    rows = results[results["metric"].isin(metrics)]
    final = rows[rows["step"] == rows["max_steps"]]
    for metric in metrics:
        part = final[final["metric"] == metric]
        assert sorted(part["schedule"]) == ["cosine", "wsd", "wso"], metric
        assert np.isfinite(part["value"]).all() and (part["n"] > 1).all(), metric
        assert ((part["ci_low"] <= part["value"]) & (part["value"] <= part["ci_high"]) & (part["ci_low"] < part["ci_high"])).all()
    values = rows.pivot_table(index=["metric", "step"], columns="schedule", values="value")
    assert sorted(values.index.get_level_values("step").unique()) == [40, 80, 120]
    # WSD holds the peak like WSO until its decay (the last 20 % of steps): the same weights at steps 40 and 80,
    # so every number agrees there; the decay then changes the weights and the numbers.
    for metric in metrics:
        for step in (40, 80):
            assert values.loc[(metric, step), "wsd"] == pytest.approx(values.loc[(metric, step), "wso"], rel=1e-9)
        assert values.loc[(metric, 120), "wsd"] != pytest.approx(values.loc[(metric, 120), "wso"], rel=1e-6)
        assert values.loc[(metric, 120), "cosine"] != pytest.approx(values.loc[(metric, 120), "wso"], rel=1e-6)
    shown = shown_text(outputs)
    assert all(word in shown for word in ("hessian_trace", "adaptive_trace", "downstream_loss_after", "cosine", "wsd", "wso"))

    by_schedule = (out / "schedules.html").read_text(encoding="utf-8")
    assert "axis <code>schedule</code> (categorical)" in by_schedule
    assert "wd-0.1_wso" in by_schedule and "wd-0.1_wso_step-40" not in by_schedule  # the final checkpoints only
    over_training = (out / "training-dynamics.html").read_text(encoding="utf-8")
    assert "axis <code>step</code>" in over_training and "One line per <code>schedule" in over_training
    assert "wd-0.1_cosine_step-40" in over_training


def test_proxy_agreement_notebook(tmp_path, monkeypatch):
    from scipy.stats import spearmanr

    from plastiscope import load_results

    outputs = execute("proxy_agreement.ipynb", tmp_path, monkeypatch)
    out = tmp_path / "plastiscope-demo-proxy"
    table = pd.read_csv(out / "agreement.csv")
    outcome = table[table["metric"] == "downstream_loss_after"]
    assert sorted(outcome["by"]) == [0.002, 0.01]
    assert set(table.loc[table["metric"] == "val_loss", "by"]) == {0.002, 0.01}
    for row in outcome.to_dict("records"):
        assert row["n_configs"] == 5 and row["top_k"] == 1
        assert -1 <= row["rho"] <= 1, row
        assert math.isnan(row["rho_low"]) and math.isnan(row["rho_high"]), row  # 5 configurations: too few clusters for an interval
        assert math.isfinite(row["regret"]) and row["regret"] >= 0, row

    def outcome_by_recipe(folder: Path) -> pd.Series:
        results = load_results(folder)
        return results[results["metric"] == "downstream_loss_after"].set_index("weight_decay")["value"].sort_index()

    target = outcome_by_recipe(out / "target" / "results")
    proxies = sorted((out).glob("proxy-*/results"))
    assert len(proxies) == 2
    for folder in proxies:
        lr = load_results(folder)["learning_rate"].unique()
        assert len(lr) == 1
        proxy = outcome_by_recipe(folder)
        assert list(proxy.index) == list(target.index) == [0.0, 0.1, 0.3, 1.0, 3.0]
        row = outcome[np.isclose(outcome["by"], lr[0])].iloc[0]
        assert row["rho"] == pytest.approx(spearmanr(proxy, target).statistic)
        picked = proxy.idxmin()  # lower loss is better
        assert float(row["proxy_top"]) == picked
        assert row["regret"] == pytest.approx(target[picked] - target.min())
    assert "Spearman rho" in shown_text(outputs)
    assert "Sweep agreement" in (out / "agreement.html").read_text(encoding="utf-8")


def test_basins_notebook(tmp_path, monkeypatch):
    from plastiscope import load_results

    outputs = execute("basins.ipynb", tmp_path, monkeypatch)
    out = tmp_path / "plastiscope-demo-basins"
    results = load_results(out / "results")
    radius = results[results["metric"] == "basin_sigma"]
    curves = results[results["metric"] == "basin_curve"]
    sigmas = np.sort(curves["sigma"].unique())
    checkpoints = sorted(results["checkpoint"].unique())
    assert checkpoints == ["wd-0", "wd-0.1", "wd-1"]
    for name in checkpoints:
        mine = radius[radius["checkpoint"] == name].set_index(["objective", "direction"])["value"]
        assert sorted(mine.index) == [("accuracy", "random"), ("accuracy", "worst_case"), ("loss", "random"), ("loss", "worst_case")]
        assert (mine >= 0).all() and np.isfinite(mine).all()
        assert mine[("loss", "worst_case")] <= mine[("loss", "random")]
        # the random loss radius from the mean curve, independently: the first grid crossing of tau, interpolated
        curve = curves[(curves["checkpoint"] == name) & (curves["objective"] == "loss") & (curves["direction"] == "random")]
        curve = curve.set_index("sigma")["value"].sort_index()
        drop = curve.to_numpy() - curve.iloc[0]
        i = int(np.argmax(drop > 0.1))
        assert i > 0, "the loss never left its basin on the grid"
        expected = np.interp(0.1, drop[i - 1: i + 1], curve.index[i - 1: i + 1])
        assert mine[("loss", "random")] == pytest.approx(expected, rel=1e-6)
        worst = curves[(curves["checkpoint"] == name) & (curves["direction"] == "worst_case") & (curves["objective"] == "loss")]
        assert np.all(np.diff(worst.sort_values("sigma")["value"].to_numpy()) >= 0)  # the worst case never recovers

    table = pd.read_csv(out / "basins.csv", index_col=0)
    assert sorted(table.index) == checkpoints
    moved = results[results["metric"] == "finetune_displacement"].set_index("checkpoint")["value"]
    accuracy_radius = radius[(radius["objective"] == "accuracy") & (radius["direction"] == "random")].set_index("checkpoint")
    for name in checkpoints:
        assert 0 < moved[name] < math.inf
        sigma = accuracy_radius.loc[name, "value"]
        assert table.loc[name, "bound: displacement / (sqrt(2π) σ)"] == pytest.approx(moved[name] / (math.sqrt(2 * math.pi) * sigma))
        assert bool(table.loc[name, "censored"]) == bool(accuracy_radius.loc[name, "censored"])
        if accuracy_radius.loc[name, "censored"]:
            assert sigma == sigmas[-1]  # a censored radius is the grid's largest sigma: a lower bound
    figures = [o for o in outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
    names = {trace["name"] for figure in figures for trace in figure["data"]["application/vnd.plotly.v1+json"]["data"]}
    assert {"wd-0, random", "wd-0, worst_case", "wd-1, random", "wd-1, worst_case"} <= names
    assert "label shares of the task" in shown_text(outputs)
