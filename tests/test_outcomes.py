"""Imported outcomes (tables and lm-evaluation-harness results), the choice table, orderings under measurement noise."""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm, spearmanr
from typer.testing import CliRunner

from plastiscope.cli import app
from plastiscope.metrics import attach, write_declarations
from plastiscope.reports import import_outcomes, write_report
from plastiscope.reports.choice import choice_table, measurement_noise
from plastiscope.reports.frame import prepare
from plastiscope.reports.outcomes import direction_from_name, read_outcomes
from plastiscope.reports.report import build
from plastiscope.results import ResultsStore, load_results, tidy
from plastiscope.runner import declarations

WDS = (0.0, 0.1, 1.0)
NAMES = ("wd0", "wd0.1", "wd1")


def _sweep(metrics: dict[str, list[float]], wds=WDS, names=NAMES, halfwidth: dict[str, list[float]] | None = None,
           extra: dict | None = None) -> pd.DataFrame:
    """A one-seed sweep: one row per (checkpoint, metric), two layers for probe accuracy, intervals where given."""
    analyses = {"val_loss": "overfit", "loss_gap": "overfit", "downstream_loss_after": "plasticity",
                "downstream_loss_before": "plasticity", "accuracy": "probes", "qk_effective_rank": "attention_weights"}
    halfwidth = halfwidth or {}
    rows = []
    for i, (name, wd) in enumerate(zip(names, wds)):
        for metric, values in metrics.items():
            layers = (0, 1) if metric == "accuracy" else (None,)
            for layer in layers:
                h = halfwidth.get(metric, [math.nan] * len(wds))[i]
                rows.append({"checkpoint": name, "weight_decay": wd, "seed": 0, "analysis": analyses.get(metric, "x"), "metric": metric,
                             "layer": layer, "value": values[i], "ci_low": values[i] - h, "ci_high": values[i] + h, "n": 100,
                             **{k: v[i] for k, v in (extra or {}).items()}})
    return attach(tidy(pd.DataFrame(rows)), declarations())  # what each metric means, as a run records it


def _text(path: Path) -> str:
    return re.sub(r"<script>/\*\*.*?</script>", "", path.read_text(), flags=re.S)


def _decision(text: str) -> str:
    return re.search(r"<div class='ps-callout ps-decision' id='decision'>(.*?)</div>", text, re.S).group(1)


def _lm_eval(path: Path, pretrained: str, hellaswag: float, stderr: float = 0.0046, ppl: float = 40.0) -> Path:
    """A results file as lm-evaluation-harness's --output_path writes it (fields as in its 0.4 releases)."""
    data = {
        "results": {
            "hellaswag": {"alias": "hellaswag", "acc,none": hellaswag - 0.04, "acc_stderr,none": stderr,
                          "acc_norm,none": hellaswag, "acc_norm_stderr,none": stderr},
            "wikitext": {"alias": "wikitext", "word_perplexity,none": ppl, "word_perplexity_stderr,none": "N/A",
                         "bits_per_byte,none": 0.9, "bits_per_byte_stderr,none": "N/A"},
            "gsm8k": {"alias": "gsm8k", "exact_match,strict-match": 0.02, "exact_match_stderr,strict-match": 0.004,
                      "exact_match,flexible-extract": 0.03, "exact_match_stderr,flexible-extract": 0.005},
        },
        "group_subtasks": {"hellaswag": [], "wikitext": [], "gsm8k": []},
        "configs": {"hellaswag": {"task": "hellaswag", "num_fewshot": 0}},
        "versions": {"hellaswag": 1.0, "wikitext": 2.0, "gsm8k": 3.0},
        "n-shot": {"hellaswag": 0, "wikitext": 0, "gsm8k": 5},
        "higher_is_better": {"hellaswag": {"acc": True, "acc_norm": True}, "wikitext": {"word_perplexity": False, "bits_per_byte": False},
                             "gsm8k": {"exact_match": True}},
        "n-samples": {"hellaswag": {"original": 10042, "effective": 10042}, "wikitext": {"original": 62, "effective": 62},
                      "gsm8k": {"original": 1319, "effective": 1319}},
        "config": {"model": "hf", "model_args": f"pretrained={pretrained},dtype=float32", "batch_size": "8", "device": "cpu",
                   "limit": None, "bootstrap_iters": 100000},
        "git_hash": "a1b2c3d", "date": 1717000000.0, "model_name": pretrained,
        "model_name_sanitized": pretrained.replace("/", "__"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


def _folder(tmp_path: Path, frame: pd.DataFrame, paths: dict[str, str] | None = None) -> Path:
    """A results folder whose checkpoints have cache pieces (content hashes) and, with ``paths``, run.json paths."""
    folder = tmp_path / "results"
    store = ResultsStore(folder)
    for name, part in frame.groupby("checkpoint", sort=False):
        ident = {c: part[c].iloc[0] for c in ("checkpoint", "weight_decay", "seed")}
        store.put("probes", f"hash-{name}", {"k": 1}, part.reset_index(drop=True), identity=ident)
    store.write(frame)
    write_declarations(folder, declarations())
    if paths:
        (folder / "run.json").write_text(json.dumps({"checkpoints": [{"checkpoint": n, "path": p} for n, p in paths.items()]}))
    return folder


# --- tables ----------------------------------------------------------------------------------------

def test_imported_table_round_trips_exactly_and_survives_a_rebuild(tmp_path):
    frame = _sweep({"accuracy": [0.61, 0.72, 0.66], "val_loss": [3.0, 3.1, 3.3]})
    folder = _folder(tmp_path, frame)
    rng = np.random.default_rng(0)
    values = rng.normal(size=3) / 7  # not round in decimal
    table = pd.DataFrame({"checkpoint": list(NAMES), "metric": "mmlu_acc", "value": values, "ci_low": values - 0.01,
                          "ci_high": values + 0.02, "n": [100, 200, 300]})
    table.to_csv(tmp_path / "mine.csv", index=False)
    import_outcomes(folder, tmp_path / "mine.csv")
    for stored in (load_results(folder), pd.read_csv(folder / "metrics.csv")):
        rows = stored[stored["analysis"] == "outcome"].set_index("checkpoint").loc[list(NAMES)]
        assert rows["value"].tolist() == values.tolist()  # bit for bit
        assert rows["ci_low"].tolist() == (values - 0.01).tolist() and rows["n"].astype(int).tolist() == [100, 200, 300]
        assert set(rows["outcome_better"]) == {"higher"}  # from the name: accuracy-like
        assert rows["weight_decay"].tolist() == list(WDS)
    # a later run into the folder rebuilds metrics.parquet from the pieces: the outcome piece stays
    current = {n: (f"hash-{n}", {"checkpoint": n, "weight_decay": wd, "seed": 0}) for n, wd in zip(NAMES, WDS)}
    ResultsStore(folder).write(frame[frame["metric"] == "accuracy"], current=current, analyses=["probes"])
    rebuilt = load_results(folder)
    rows = rebuilt[rebuilt["analysis"] == "outcome"].set_index("checkpoint").loc[list(NAMES)]
    assert rows["value"].tolist() == values.tolist()
    # importing again replaces the metric's rows rather than adding to them
    table.assign(value=values + 1, ci_low=values + 0.99, ci_high=values + 1.02).to_csv(tmp_path / "mine.csv", index=False)
    again = load_results(import_outcomes(folder, tmp_path / "mine.csv").pipe(lambda _: folder))
    assert sorted(again.loc[again["analysis"] == "outcome", "value"]) == sorted((values + 1).tolist())


@pytest.mark.parametrize("suffix", ["tsv", "json", "parquet"])
def test_every_table_format_reads_the_same(tmp_path, suffix):
    table = pd.DataFrame({"checkpoint": ["wd1", "wd0"], "metric": ["score", "score"], "value": [0.25, 0.5],
                          "higher_is_better": [False, False]})
    path = tmp_path / f"t.{suffix}"
    {"tsv": lambda: table.to_csv(path, sep="\t", index=False), "json": lambda: table.to_json(path, orient="records"),
     "parquet": lambda: table.to_parquet(path)}[suffix]()
    checkpoints = pd.DataFrame({"checkpoint": list(NAMES)})
    read = read_outcomes(path, checkpoints)
    assert read["checkpoint"].tolist() == ["wd1", "wd0"] and read["value"].tolist() == [0.25, 0.5]
    assert read["better"].tolist() == ["lower", "lower"]  # from the file, though "score" says nothing


def test_direction_from_the_name_or_refused():
    assert [direction_from_name(m) for m in ("mmlu/acc_norm", "exact_match,strict-match", "val_ppl", "word_perplexity",
                                             "bits_per_byte", "test_error", "em", "pass@1", "rouge_l")] == \
        ["higher", "higher", "lower", "lower", "lower", "lower", "higher", "higher", "higher"]
    assert direction_from_name("elo_score") is None and direction_from_name("emission") is None
    checkpoints = pd.DataFrame({"checkpoint": list(NAMES)})
    with pytest.raises(ValueError, match=r"cannot tell whether higher or lower is better for \['elo_score'\]; add a higher_is_better"):
        read_outcomes(_write(pd.DataFrame({"checkpoint": ["wd0"], "metric": ["elo_score"], "value": [1.0]})), checkpoints)


def _write(table: pd.DataFrame, path: Path | None = None) -> Path:
    import tempfile

    path = path or Path(tempfile.mkdtemp()) / "t.csv"
    table.to_csv(path, index=False)
    return path


def test_unmatched_and_ambiguous_names_are_refused_by_name():
    checkpoints = pd.DataFrame({"checkpoint": ["a", "b", "c"], "path": ["/m/x/final", "/m/y/final", "/m/c"]})
    good = read_outcomes(_write(pd.DataFrame({"checkpoint": ["a", "/m/y/final", "/m/c"], "metric": "acc", "value": [1.0, 2.0, 3.0]})),
                         checkpoints)
    assert good["checkpoint"].tolist() == ["a", "b", "c"]  # by name, by path, by path
    bad = pd.DataFrame({"checkpoint": ["nope", "final", "a"], "metric": "acc", "value": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match=r"no checkpoint matches 'nope' .*several checkpoints match 'final' \(.*: a, b\)"):
        read_outcomes(_write(bad), checkpoints)
    twice = pd.DataFrame({"checkpoint": ["a", "/m/x/final"], "metric": "acc", "value": [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"given twice: a acc"):
        read_outcomes(_write(twice), checkpoints)


# --- lm-evaluation-harness ----------------------------------------------------------------------

def test_lm_eval_results_match_by_model_path_or_a_manifest_column(tmp_path):
    checkpoints = pd.DataFrame({"checkpoint": list(NAMES), "path": [f"/models/sweep/{n}" for n in NAMES]})
    out = tmp_path / "lm_eval"
    for name, score in zip(NAMES, (0.30, 0.36, 0.33)):
        _lm_eval(out / f"__models__sweep__{name}" / "results_2024-06-01T10-00-00.000001.json", f"/models/sweep/{name}", score)
    read = read_outcomes(out, checkpoints)  # a folder: every results file under it
    acc = read[read["metric"] == "hellaswag/acc_norm"].set_index("checkpoint").loc[list(NAMES)]
    assert acc["value"].tolist() == [0.30, 0.36, 0.33]
    z = norm.ppf(0.975)
    np.testing.assert_allclose(acc["ci_low"], acc["value"] - z * 0.0046, rtol=1e-12)
    np.testing.assert_allclose(acc["ci_high"], acc["value"] + z * 0.0046, rtol=1e-12)
    assert acc["n"].tolist() == [10042] * 3 and set(acc["better"]) == {"higher"}
    ppl = read[read["metric"] == "wikitext/word_perplexity"]
    assert ppl["ci_low"].isna().all() and set(ppl["better"]) == {"lower"}  # stderr "N/A": no interval; direction from the file
    assert {"gsm8k/exact_match,strict-match", "gsm8k/exact_match,flexible-extract", "hellaswag/acc"} <= set(read["metric"])
    assert not read["metric"].str.contains("stderr|alias|,none").any()
    # a manifest column naming each checkpoint's results file wins over the model it records
    files = {n: _lm_eval(tmp_path / "elsewhere" / f"{n}.json", "/somewhere/else/model", s) for n, s in zip(NAMES, (0.1, 0.2, 0.3))}
    named = checkpoints.assign(eval_file=[str(files[n]) for n in NAMES])
    by_column = read_outcomes(tmp_path / "elsewhere", named)
    assert by_column[by_column["metric"] == "hellaswag/acc_norm"].set_index("checkpoint")["value"].to_dict() == \
        {"wd0": 0.1, "wd0.1": 0.2, "wd1": 0.3}
    with pytest.raises(ValueError, match=r"no checkpoint matches '/somewhere/else/model'"):
        read_outcomes(tmp_path / "elsewhere", checkpoints)


def test_an_imported_lm_eval_outcome_drives_the_summary_and_the_predictor_table(tmp_path):
    accuracy = [0.61, 0.72, 0.66]
    frame = _sweep({"accuracy": accuracy, "val_loss": [3.0, 3.1, 3.3], "loss_gap": [0.5, 0.2, 0.3]},
                   halfwidth={"accuracy": [0.02, 0.02, 0.02]})
    folder = _folder(tmp_path, frame, paths={n: f"/models/sweep/{n}" for n in NAMES})
    hellaswag = [0.30, 0.36, 0.33]
    for name, score in zip(NAMES, hellaswag):
        _lm_eval(tmp_path / "lm" / name / "results_2024-06-01T10-00-00.json", f"/models/sweep/{name}", score)
    import_outcomes(folder, tmp_path / "lm")
    built = build(folder, outcome="hellaswag/acc_norm", n_resamples=100)
    assert built.decision.best[0].outcome == "outcome.hellaswag/acc_norm"
    assert built.decision.best[0].after["_config_label"].iloc[0] == "weight_decay=0.1"
    ranked = built.stats[built.stats["predictor"]]
    assert set(ranked["outcome"]) == {"outcome.hellaswag/acc_norm"}
    assert not ranked["series"].str.startswith("outcome.").any()  # imported outcomes are not predictors
    row = ranked.set_index("series").loc["probes.accuracy"]
    assert row["rho_outcome"] == pytest.approx(spearmanr(accuracy, hellaswag).statistic, abs=1e-12)
    choice = built.decision.choice
    assert choice.attrs["outcome"] == "outcome.hellaswag/acc_norm" and choice.attrs["outcome_better"] == "higher"
    assert choice.set_index("series").loc["probes.accuracy", "pick"] == "weight_decay=0.1"
    text = _text(write_report(folder, tmp_path / "r.html", outcome="hellaswag/acc_norm"))
    decision = _decision(text)
    assert re.search(r"Best after fine-tuning</b> by <code>outcome\.hellaswag/acc_norm</code> \(higher is better — the outcome this "
                     r"report ranks by\): <code>weight_decay=0\.1</code> 0\.36", decision)
    assert "<code>outcome.hellaswag/acc_norm</code> (higher is better;" in text  # the predictor table's outcome and direction
    assert "Best by mean rank</b> over the" in decision  # several outcomes from one file: each named, and their mean rank


# --- the summary and the choice table -----------------------------------------------------------

def test_an_imported_outcome_that_prefers_another_checkpoint_is_named_as_best(tmp_path):
    frame = _sweep({"downstream_loss_after": [2.4, 2.2, 2.0], "val_loss": [3.0, 3.1, 3.3], "downstream_loss_before": [3.5, 3.4, 3.6]})
    folder = _folder(tmp_path, frame)
    _write(pd.DataFrame({"checkpoint": list(NAMES), "metric": "mmlu_acc", "value": [0.40, 0.47, 0.44]}), tmp_path / "mmlu.csv")
    default = _decision(_text(write_report(folder, tmp_path / "d.html", outcomes=tmp_path / "mmlu.csv")))
    assert re.search(r"Best after fine-tuning</b> by <code>plasticity\.downstream_loss_after</code> \(lower is better — the outcome "
                     r"this report ranks by\): <code>weight_decay=1</code>", default)
    assert re.search(r"Best after fine-tuning</b> by <code>outcome\.mmlu_acc</code> \(higher is better\): <code>weight_decay=0\.1</code>",
                     default)
    # mean ranks: wd=1 (1, 2) -> 1.5; wd=0.1 (2, 1) -> 1.5, tie broken by the chosen outcome; wd=0 (3, 3)
    assert "Best by mean rank</b> over the 2 outcomes: <code>weight_decay=1</code> (mean rank 1.5 of 3" in default
    chosen = _decision(_text(write_report(folder, tmp_path / "c.html", outcome="mmlu_acc")))
    assert re.search(r"by <code>outcome\.mmlu_acc</code> \(higher is better — the outcome this report ranks by\): "
                     r"<code>weight_decay=0\.1</code> 0\.47", chosen)
    # one best-before line (both losses before fine-tuning in it), one trade-off statement, by the chosen outcome
    for decision in (default, chosen):
        assert decision.count("Best before fine-tuning") == 1 and decision.count("class='ps-flag'>Trade-off") <= 1
        assert decision.count("class='ps-tradeoff'") == 1
    assert "by validation loss: <code>weight_decay=0</code> 3; by downstream loss before fine-tuning: <code>weight_decay=0.1</code>" \
        in chosen
    assert ("Trade-off</b> (Han et al.) by <code>outcome.mmlu_acc</code>: <code>weight_decay=0.1</code> is worse before fine-tuning "
            "(validation loss 3.1 vs 3) but better after it (0.47 vs 0.4)") in chosen
    with pytest.raises(ValueError, match=r"--outcome 'nope': not an outcome of these results; outcomes: \["):
        build(folder, outcome="nope")


def _naive_choice(metric: dict, outcome: dict, better: str, outcome_better: str, k: int) -> tuple[float, float, float]:
    """Regret, regret@k and leave-one-out share by brute force: ties resolved to the worst outcome."""
    sign_m = 1 if better == "higher" else -1
    sign_o = 1 if outcome_better == "higher" else -1

    def worst_pick(names, size):
        best_sets = []
        for subset in itertools.combinations(names, size):  # the metric's top `size`, every tie-resolution
            rest = [n for n in names if n not in subset]
            if all(sign_m * metric[a] >= sign_m * metric[b] for a in subset for b in rest):
                best_sets.append(max(sign_o * outcome[n] for n in subset))
        return min(best_sets)

    names = list(metric)
    top = max(sign_o * outcome[n] for n in names)
    loo = np.mean([worst_pick([n for n in names if n != d], 1) == max(sign_o * outcome[n] for n in names if n != d) for d in names])
    return top - worst_pick(names, 1), top - worst_pick(names, k), loo


def test_choice_table_against_brute_force_with_ties():
    rng = np.random.default_rng(3)
    wds = tuple(float(w) for w in (0.0, 0.01, 0.03, 0.1, 0.3, 1.0))
    names = tuple(f"c{i}" for i in range(6))
    outcome = rng.normal(2.0, 0.3, 6)
    probe = np.round(rng.normal(0.6, 0.05, 6), 2)
    probe[[1, 4]] = probe.max() + 0.01  # a tie for the best probe accuracy
    val = rng.normal(3.0, 0.2, 6)
    frame = _sweep({"downstream_loss_after": outcome.tolist(), "accuracy": probe.tolist(), "val_loss": val.tolist(),
                    "qk_effective_rank": rng.normal(8, 1, 6).tolist()}, wds=wds, names=names)
    prep = prepare(frame)
    table = choice_table(prep, "plasticity.downstream_loss_after", top_k=2).set_index("series")
    assert "attention_weights.qk_effective_rank" not in table.index  # no better direction: it picks nothing
    assert table.attrs["undirected"] == ["attention_weights.qk_effective_rank"]
    for key, values, better in (("probes.accuracy", probe, "higher"), ("overfit.val_loss", val, "lower")):
        regret, regret_k, loo = _naive_choice(dict(zip(names, values)), dict(zip(names, outcome)), better, "lower", 2)
        row = table.loc[key]
        assert row["regret"] == pytest.approx(regret, abs=1e-12) and row["regret_k"] == pytest.approx(regret_k, abs=1e-12)
        assert row["loo_agree"] / row["loo_n"] == pytest.approx(loo) and row["loo_n"] == 6
    assert table.loc["probes.accuracy", "tied"] == 2
    tied = [f"weight_decay={wds[i]:g}" for i in (1, 4)]
    worse = tied[int(np.argmax(outcome[[1, 4]]))]
    assert table.loc["probes.accuracy", "pick"] == worse  # a tie is counted against the metric


def test_three_checkpoints_one_seed_page_has_no_degenerate_interval_and_says_what_noise_allows(tmp_path):
    after, val, acc = [2.4, 2.2, 2.0], [3.0, 3.1, 3.3], [0.60, 0.70, 0.65]
    frame = _sweep({"downstream_loss_after": after, "val_loss": val, "accuracy": acc, "qk_effective_rank": [10.0, 8.0, 6.0]},
                   halfwidth={"downstream_loss_after": [0.05, 0.3, 0.3], "val_loss": [0.02] * 3, "accuracy": [0.01] * 3})
    built = build(frame, n_resamples=200)
    assert built.stats["x_effect_low"].isna().all() and built.stats["rho_outcome_low"].isna().all()
    assert set(built.stats.loc[built.stats["x_effect"].notna(), "x_effect_note"]) == {
        "no interval: 3 configurations; a cluster bootstrap needs at least 8"}
    text = _text(write_report(frame, tmp_path / "r.html"))
    assert not re.search(r"\[([+−-]\d\.\d\d), \1\]", text)  # no [a, a] interval anywhere
    assert "[—]" in text and "No cluster bootstrap interval for ρ: 3 configurations, and an interval needs at least 8" in text
    assert "p = 0.33" in text  # the smallest p a perfect trend over 3 configurations reaches, still stated
    # measurement noise per headline metric, seed-to-seed said to be unknown
    noise = built.decision.noise.set_index("series")
    assert {"plasticity.downstream_loss_after", "overfit.val_loss"} <= set(noise.index)
    assert set(noise["seeds"]) == {"unknown: one seed per configuration"}
    # best wd=1 (2.0 ± 0.3/1.96) against wd=0.1 (2.2 ± 0.3/1.96): the normal probability that it stays below
    sd = 0.3 / 1.96
    expected = norm.cdf(0.2 / (sd * math.sqrt(2)))  # wd=0 (2.4 ± 0.05/1.96) is never best
    assert noise.loc["plasticity.downstream_loss_after", "best_kept"] == pytest.approx(expected, abs=4 * math.sqrt(0.25 / 2000))
    flat = measurement_noise(built.prep, "attention_weights.qk_effective_rank", np.ones(3, bool), None)
    assert flat.with_interval == 0 and math.isnan(flat.order_kept)  # no interval: nothing to redraw
    assert 'id="noise-table"' in text and "Seed-to-seed variation: unknown: one seed per configuration" in text
    # the choice table replaces tied ranks
    assert 'id="choice-table"' in text and "tied with" not in text
    choice = built.decision.choice.set_index("series")
    assert choice.loc["overfit.val_loss", "pick"] == "weight_decay=0" and choice.loc["overfit.val_loss", "regret"] == pytest.approx(0.4)
    assert choice.loc["probes.accuracy", "regret"] == pytest.approx(0.2) and choice.loc["probes.accuracy", "regret_k"] == 0.0
    decision = _decision(text)
    assert "best in" in decision and "of measurement-noise draws, seed-to-seed variation unknown" in decision


def test_measurement_noise_best_kept_matches_the_normal_probability():
    frame = _sweep({"accuracy": [0.60, 0.62, 0.40]}, halfwidth={"accuracy": [0.04, 0.04, 0.04]})
    prep = prepare(frame)
    result = measurement_noise(prep, "probes.accuracy", np.ones(3, bool), "higher", n_draws=4000)
    sd = 0.04 / 1.96
    assert result.best_kept == pytest.approx(norm.cdf(0.02 / (sd * math.sqrt(2))), abs=4 * math.sqrt(0.25 / 4000))
    assert result.with_interval == 3 and result.best == "weight_decay=0.1"


def test_report_command_imports_outcomes_and_refuses_unknown_names(tmp_path):
    frame = _sweep({"downstream_loss_after": [2.4, 2.2, 2.0], "val_loss": [3.0, 3.1, 3.3]})
    folder = _folder(tmp_path, frame)
    _write(pd.DataFrame({"checkpoint": list(NAMES), "metric": "arc_err", "value": [0.3, 0.2, 0.25]}), tmp_path / "arc.csv")
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(folder), "--outcomes", str(tmp_path / "arc.csv"), "--outcome", "arc_err",
                                 "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    assert "by <code>outcome.arc_err</code> (lower is better — the outcome this report ranks by): <code>weight_decay=0.1</code>" in \
        _text(tmp_path / "r.html")
    _write(pd.DataFrame({"checkpoint": ["wd0", "wd7"], "metric": "arc_err", "value": [0.3, 0.2]}), tmp_path / "bad.csv")
    bad = runner.invoke(app, ["report", str(folder), "--outcomes", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "b.html")])
    assert bad.exit_code == 2 and "no checkpoint matches 'wd7'" in bad.output


def test_compare_sees_imported_outcomes_with_their_direction(tmp_path):
    from plastiscope.reports import sweep_agreement

    recipes = {"recipe": ["web", "code", "books"]}
    sides = {}
    for side, err in (("proxy", [0.30, 0.20, 0.25]), ("target", [0.28, 0.22, 0.21])):
        folder = _folder(tmp_path / side, _sweep({"val_loss": [3.0, 3.1, 3.3]}, extra=recipes))
        _write(pd.DataFrame({"checkpoint": list(NAMES), "metric": "arc_err", "value": err}), tmp_path / f"{side}.csv")
        import_outcomes(folder, tmp_path / f"{side}.csv")
        sides[side] = folder
    table = sweep_agreement(sides["proxy"], sides["target"], key="recipe", n_resamples=50).set_index("series")
    row = table.loc["outcome.arc_err"]
    # lower is better (from the name): the proxy picks code (0.20), whose target error is 0.22; the target's best is books, 0.21
    assert row["better"] == "lower" and row["proxy_top"] == "code" and row["target_best"] == "books"
    assert row["regret"] == pytest.approx(0.01)


# --- careless and hostile outcome files ------------------------------------------------------------

@pytest.mark.parametrize("name, content, refusal", [
    ("nan.csv", "checkpoint,metric,value\nwd0,acc,0.5\nwd1,acc,nan\n", r"nan\.csv, line 3 \(wd1 acc\): value is nan; an outcome is a finite"),
    ("blank.csv", "checkpoint,metric,value\nwd0,acc,\n", r"blank\.csv, line 2 \(wd0 acc\): value is nan"),
    ("inf.tsv", "checkpoint\tmetric\tvalue\nwd0\tacc\tinf\n", r"inf\.tsv, line 2 \(wd0 acc\): value is inf"),
    ("huge.csv", "checkpoint,metric,value\nwd0,acc,1e999\n", r"huge\.csv, line 2 \(wd0 acc\): value is inf"),
    ("yes.json", json.dumps([{"checkpoint": "wd0", "metric": "acc", "value": True}]), r"yes\.json, record 1: value is 'True', not a number"),
    ("pct.csv", "checkpoint,metric,value\nwd0,acc,45%\n", r"pct\.csv, line 2: value is '45%', not a number"),
    ("ci.csv", "checkpoint,metric,value,ci_low,ci_high\nwd0,acc,0.4,0.5,0.6\n",
     r"ci\.csv, line 2 \(wd0 acc\): the interval \[0\.5, 0\.6\] does not hold the value 0\.4"),
    ("half.csv", "checkpoint,metric,value,ci_low,ci_high\nwd0,acc,0.4,0.3,\n", r"half\.csv, line 2 \(wd0 acc\): an interval needs both"),
    ("citext.csv", "checkpoint,metric,value,ci_low,ci_high\nwd0,acc,0.4,low,0.6\n", r"citext\.csv, line 2: ci_low is 'low', not a number"),
    ("n.csv", "checkpoint,metric,value,n\nwd0,acc,0.4,100\nwd1,acc,0.4,2.5\n", r"n\.csv, line 3 \(wd1 acc\): n is 2\.5; n counts"),
    ("noname.csv", "checkpoint,metric,value\nwd0,acc,0.4\n,acc,0.5\n", r"noname\.csv, line 3: no checkpoint; fill it in"),
    ("nometric.csv", "checkpoint,metric,value\nwd0,,0.4\n", r"nometric\.csv, line 2: no metric"),
    ("latin1.csv", "checkpoint,metric,value\nwd0,précision,0.4\n".encode("latin-1"), r"latin1\.csv: not UTF-8 text; save it as UTF-8"),
    ("empty.csv", "", r"empty\.csv: an empty file; write the header"),
    ("header.csv", "checkpoint,metric,value\n", r"header\.csv: a table without rows"),
    ("package.json", json.dumps({"name": "x", "version": "1"}), r"package\.json: neither an outcome table .* nor an lm-eval results file"),
    ("broken.json", "{bad json", r"broken\.json: not valid JSON \(Expecting property name"),
    ("twice.json", '[{"checkpoint": "wd0", "metric": "acc", "value": 0.5, "value": 0.9}]', r"twice\.json: the key\(s\) \['value'\] given twice"),
    ("twice.csv", "checkpoint,metric,value,value\nwd0,acc,0.5,0.9\n", r"twice\.csv:1: the header names a column twice"),
    ("long.csv", "checkpoint,metric,value\nwd0,acc,0.5\nwd1,acc,0.5,0.9\n", r"long\.csv:3: 4 fields where the header has 3"),
    ("first.csv", "checkpoint,metric,value\nx,wd0,acc,0.5\n", r"first\.csv:2: 4 fields where the header has 3"),
    ("junk.parquet", "checkpoint,metric,value\n", r"junk\.parquet: not a readable parquet file"),
])
def test_a_broken_outcome_table_is_refused_naming_the_file_and_row(tmp_path, name, content, refusal):
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    with pytest.raises(ValueError, match=refusal):
        read_outcomes(path, pd.DataFrame({"checkpoint": list(NAMES)}))


def test_excel_and_pandas_tables_read_the_same_rows(tmp_path):
    """A BOM and CRLF (Excel), spaces around names, and checkpoint names that look like numbers keep their text."""
    checkpoints = pd.DataFrame({"checkpoint": ["007", "7", "1.0"]})
    (tmp_path / "excel.csv").write_bytes("\ufeffcheckpoint,metric,value\r\n007 , acc ,0.25\r\n7,acc,0.5\r\n1.0,acc,0.75\r\n".encode())
    read = read_outcomes(tmp_path / "excel.csv", checkpoints)
    assert read[["checkpoint", "metric", "value"]].values.tolist() == [["007", "acc", 0.25], ["7", "acc", 0.5], ["1.0", "acc", 0.75]]


def test_a_name_both_or_neither_loss_and_accuracy_like_needs_higher_is_better():
    # words, not letters inside other words: "glossary" holds no loss, "apples" no perplexity, "incorrect" is not "correct"
    assert [direction_from_name(m) for m in ("glossary_acc", "apples_acc", "valloss", "top1acc", "num_correct")] == \
        ["higher", "higher", "lower", "higher", "higher"]
    assert [direction_from_name(m) for m in ("loss_acc", "acc_loss", "perplexity_acc", "incorrect")] == [None] * 4
    checkpoints = pd.DataFrame({"checkpoint": list(NAMES)})
    with pytest.raises(ValueError, match=r"cannot tell whether higher or lower is better for \['loss_acc'\]"):
        read_outcomes(_write(pd.DataFrame({"checkpoint": ["wd0"], "metric": ["loss_acc"], "value": [1.0]})), checkpoints)
    marked = read_outcomes(_write(pd.DataFrame({"checkpoint": ["wd0"], "metric": ["loss_acc"], "value": [1.0],
                                                "higher_is_better": ["False"]})), checkpoints)
    assert marked["better"].tolist() == ["lower"]


@pytest.mark.parametrize("edit, refusal", [
    (lambda d: d["results"]["hellaswag"].update({"acc,none": "N/A"}), r"results\.hellaswag\['acc,none'\] is 'N/A', not a finite number"),
    (lambda d: d["results"]["hellaswag"].update({"acc,none": float("nan")}), r"results\.hellaswag\['acc,none'\] is nan"),
    (lambda d: d["results"]["gsm8k"].update({"exact_match,strict-match": None}), r"results\.gsm8k\['exact_match,strict-match'\] is None"),
    (lambda d: d["results"]["hellaswag"].update({"acc_stderr,none": -0.01}), r"results\.hellaswag\['acc,none'\]: its standard error is -0\.01"),
    (lambda d: d["n-samples"]["hellaswag"].update({"effective": "all"}), r"n-samples\.hellaswag\.effective is 'all'"),
])
def test_a_broken_lm_eval_results_file_is_refused_naming_it(tmp_path, edit, refusal):
    path = _lm_eval(tmp_path / "lm" / "results_2024.json", "/models/sweep/wd0", 0.3)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))  # NaN as JSON's NaN, as Python's json writes it
    checkpoints = pd.DataFrame({"checkpoint": list(NAMES), "path": [f"/models/sweep/{n}" for n in NAMES]})
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": " + refusal):
        read_outcomes(tmp_path / "lm", checkpoints)


def test_two_results_files_for_one_checkpoint_are_refused_naming_both(tmp_path):
    _lm_eval(tmp_path / "lm" / "a" / "results_1.json", "/models/sweep/wd0", 0.3)
    _lm_eval(tmp_path / "lm" / "b" / "results_2.json", "/models/sweep/wd0/", 0.31)  # the same folder, with a trailing slash
    checkpoints = pd.DataFrame({"checkpoint": list(NAMES), "path": [f"/models/sweep/{n}" for n in NAMES]})
    with pytest.raises(ValueError, match=r"given twice: wd0 hellaswag/acc \(in results_1\.json and results_2\.json\)"):
        read_outcomes(tmp_path / "lm", checkpoints)


def test_an_outcome_measured_on_some_configurations_names_those_it_did_not_measure(tmp_path):
    frame = _sweep({"accuracy": [0.61, 0.72, 0.66], "val_loss": [3.0, 3.1, 3.3]})
    folder = _folder(tmp_path, frame)
    _write(pd.DataFrame({"checkpoint": ["wd0", "wd1"], "metric": "mmlu_acc", "value": [0.40, 0.44]}), tmp_path / "part.csv")
    decision = _decision(_text(write_report(folder, tmp_path / "r.html", outcomes=tmp_path / "part.csv", outcome="mmlu_acc")))
    assert re.search(r"Best after fine-tuning</b> by <code>outcome\.mmlu_acc</code> \(higher is better\): <code>weight_decay=1</code> "
                     r"0\.44; next <code>weight_decay=0</code> 0\.4[^<]*; best of the 2 configurations it measures, not of "
                     r"<code>weight_decay=0\.1</code> \(no value\)\.</p>", decision)
    _write(pd.DataFrame({"checkpoint": list(NAMES), "metric": "mmlu_acc", "value": [0.40, 0.47, 0.44]}), tmp_path / "all.csv")
    whole = _decision(_text(write_report(folder, tmp_path / "w.html", outcomes=tmp_path / "all.csv", outcome="mmlu_acc")))
    assert "Best after fine-tuning</b> by <code>outcome.mmlu_acc</code>" in whole and "it measures" not in whole


def test_a_folder_here_that_is_not_the_recorded_one_is_another_model_of_that_name(tmp_path):
    """An earlier sweep's wd0 evaluated with lm-eval is not this sweep's wd0, though their folders share a name; a path that
    does not exist here (evaluated on another machine) still matches by its last part."""
    for sweep in ("new", "old"):
        for name in NAMES:
            (tmp_path / sweep / name).mkdir(parents=True)
    checkpoints = pd.DataFrame({"checkpoint": list(NAMES), "path": [str(tmp_path / "new" / n) for n in NAMES]})
    _lm_eval(tmp_path / "lm" / "results_old.json", str(tmp_path / "old" / "wd0"), 0.3)
    with pytest.raises(ValueError, match=r"no checkpoint matches '" + re.escape(str(tmp_path / "old" / "wd0")) + "'"):
        read_outcomes(tmp_path / "lm", checkpoints)
    _lm_eval(tmp_path / "lm" / "results_old.json", str(tmp_path / "new" / "wd0") + "/", 0.3)  # the recorded folder, spelled with a slash
    _lm_eval(tmp_path / "lm" / "results_remote.json", "/cluster/scratch/sweep/wd1", 0.4)  # not a folder here: by its last part
    read = read_outcomes(tmp_path / "lm", checkpoints)
    assert read[read["metric"] == "hellaswag/acc_norm"].set_index("checkpoint")["value"].to_dict() == {"wd0": 0.3, "wd1": 0.4}


def test_a_checkpoint_named_by_a_link_loop_is_refused_as_unmatched(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    table = _write(pd.DataFrame({"checkpoint": [str(tmp_path / "loop")], "metric": "acc", "value": [0.5]}), tmp_path / "t.csv")
    with pytest.raises(ValueError, match=r"no checkpoint matches '" + re.escape(str(tmp_path / "loop")) + "'"):
        read_outcomes(table, pd.DataFrame({"checkpoint": list(NAMES), "path": [f"/models/sweep/{n}" for n in NAMES]}))


def test_importing_a_metric_again_in_the_other_direction_for_some_checkpoints_is_refused(tmp_path):
    """Re-importing one checkpoint of a metric with the opposite higher_is_better would leave one metric with two directions;
    the folder is left as it was. Re-importing every checkpoint of it with the new direction replaces it."""
    frame = _sweep({"accuracy": [0.61, 0.72, 0.66], "val_loss": [3.0, 3.1, 3.3]})
    folder = _folder(tmp_path, frame)
    first = pd.DataFrame({"checkpoint": list(NAMES), "metric": "score", "value": [1.0, 2.0, 3.0], "higher_is_better": True})
    import_outcomes(folder, _write(first, tmp_path / "a.csv"))
    with pytest.raises(ValueError, match=r"metric 'score' is imported as lower is better, but the results already hold it as higher "
                                         r"is better for wd0\.1, wd1; import every checkpoint of it again"):
        import_outcomes(folder, _write(first.head(1).assign(value=5.0, higher_is_better=False), tmp_path / "b.csv"))
    stored = load_results(folder)
    assert stored.loc[stored["analysis"] == "outcome", "value"].tolist() == [1.0, 2.0, 3.0]
    import_outcomes(folder, _write(first.assign(higher_is_better=False), tmp_path / "c.csv"))
    assert set(load_results(folder).query("analysis == 'outcome'")["outcome_better"]) == {"lower"}


def test_an_lm_eval_file_of_an_adapter_is_not_matched_to_its_base_model(tmp_path):
    """model_args pretrained=BASE,peft=ADAPTER evaluates the adapter on the base: the base checkpoint's name is not the model's;
    a manifest column naming the file still places it."""
    checkpoints = pd.DataFrame({"checkpoint": list(NAMES), "path": [f"/models/sweep/{n}" for n in NAMES]})
    path = _lm_eval(tmp_path / "lm" / "results_1.json", "/models/sweep/wd0", 0.3)
    data = json.loads(path.read_text())
    data["config"]["model_args"] = "pretrained=/models/sweep/wd0,peft=/adapters/task-a,dtype=float32"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"no checkpoint matches .*results_1\.json' \(evaluates peft=/adapters/task-a on top of "
                                         r"/models/sweep/wd0; name the file in a manifest column of its checkpoint\)"):
        read_outcomes(tmp_path / "lm", checkpoints)
    named = checkpoints.assign(eval_file=[str(path), "", ""])
    read = read_outcomes(tmp_path / "lm", named)
    assert set(read["checkpoint"]) == {"wd0"} and read.set_index("metric").loc["hellaswag/acc_norm", "value"] == 0.3


@pytest.mark.parametrize("run_json", ["[]", '{"checkpoints": 3}', '{"checkpoints": [1, 2]}', "not json"])
def test_a_run_json_that_analyze_did_not_write_records_no_paths(tmp_path, run_json):
    """Names still match; a path cannot be matched to a checkpoint without the paths run.json records, so it is refused."""
    folder = _folder(tmp_path, _sweep({"accuracy": [0.61, 0.72, 0.66]}))
    (folder / "run.json").write_text(run_json)
    import_outcomes(folder, _write(pd.DataFrame({"checkpoint": list(NAMES), "metric": "mmlu_acc", "value": [0.4, 0.5, 0.6]}),
                                   tmp_path / "names.csv"))
    assert sorted(load_results(folder).query("analysis == 'outcome'")["value"]) == [0.4, 0.5, 0.6]
    with pytest.raises(ValueError, match=r"no checkpoint matches '/models/elsewhere/model'"):
        import_outcomes(folder, _write(pd.DataFrame({"checkpoint": ["/models/elsewhere/model"], "metric": "mmlu_acc", "value": [0.4]}),
                                       tmp_path / "paths.csv"))
