"""The sweep trainer: schedules that are what they say, a grid with replicate seeds, saved steps,
decay on matrices only, shared init and data within a seed, a scale that is measured."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from plastiscope import Sweep
from plastiscope.cli import app
from plastiscope.demo.corpus import load_corpus
from plastiscope.demo.sweep import (
    MANIFEST_COLUMNS,
    ConfigError,
    Run,
    TrainConfig,
    batch_order,
    build_model,
    train_sweep,
)
from plastiscope.training import learning_rate

# 2 weight decays x 2 seeds, 30 steps of 8 documents: 240 documents, each seen once
GRID = dict(weight_decays=(0.0, 1.0), seeds=(0, 1), steps=30, batch_size=8, context=32, warmup_steps=3, d_model=16,
            n_layers=1, n_heads=2, n_kv_heads=1, d_mlp=32, vocab_size=300, val_docs=40, eval_every=10, save_steps=(10, 20))


@pytest.fixture(scope="module")
def grid_manifest(tmp_path_factory):
    """A 2 x 2 grid with checkpoints saved after steps 10 and 20."""
    return train_sweep(tmp_path_factory.mktemp("grid"), TrainConfig(**GRID), progress=False)


def rows(manifest):
    with open(manifest, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------- schedules
def test_warmup_is_linear_to_the_peak():
    for schedule in ("cosine", "linear", "wsd", "wso"):
        assert learning_rate(0, 1.0, 105, 5, schedule) == pytest.approx(0.2)
        assert learning_rate(2, 1.0, 105, 5, schedule) == pytest.approx(0.6)
        assert learning_rate(4, 1.0, 105, 5, schedule) == pytest.approx(1.0)  # warmup's last step


@pytest.mark.parametrize("schedule, quarter, middle", [
    ("cosine", 0.1 + 0.45 * (1 + 0.5 ** 0.5), 0.55),  # 0.1 + 0.9 (1 + cos(pi / 4)) / 2, and (1 + 0.1) / 2
    ("linear", 0.775, 0.55),                          # 1 - 0.9 / 4, 1 - 0.9 / 2
    ("wso", 1.0, 1.0),
    ("constant", 1.0, 1.0),
])
def test_decaying_and_constant_schedules_by_hand(schedule, quarter, middle):
    # 106 steps, 5 of warmup: the decay runs from step 5 (the peak) to step 105, the last (the final fraction)
    lr = lambda step: learning_rate(step, 1.0, 106, 5, schedule, final_fraction=0.1)  # noqa: E731
    assert lr(5) == pytest.approx(1.0)
    assert lr(30) == pytest.approx(quarter)
    assert lr(55) == pytest.approx(middle)
    assert lr(105) == pytest.approx(0.1 if schedule in ("cosine", "linear") else 1.0)


def test_wsd_is_stable_then_decays_linearly_over_its_last_fraction():
    # 105 steps, decay over the last 20 %: 21 steps, 84..104; half way is step 94
    lr = lambda step: learning_rate(step, 2.0, 105, 5, "wsd", final_fraction=0.05, decay_fraction=0.2)  # noqa: E731
    assert lr(5) == 2.0 and lr(60) == 2.0 and lr(83) == 2.0 and lr(84) == 2.0
    assert lr(94) == pytest.approx(2.0 * (1 - 0.95 * 0.5))  # 1.05
    assert lr(104) == pytest.approx(0.1)
    assert lr(85) < 2.0


def test_schedule_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="choose from"):
        learning_rate(0, 1.0, 10, 0, "step")
    with pytest.raises(ValueError, match="final_fraction"):
        learning_rate(0, 1.0, 10, 0, "cosine", final_fraction=1.5)
    with pytest.raises(ValueError, match="warmup_steps"):
        learning_rate(0, 1.0, 10, 20)


def test_run_schedule_reaches_its_final_fraction_at_the_last_step(tiny_manifest):
    info = json.loads((tiny_manifest.parent / "wd-0.1" / "plastiscope.json").read_text())
    last = info["log"]["curve"][-1]
    assert last["step"] == info["max_steps"] == 40
    assert last["lr"] == pytest.approx(info["final_lr_fraction"] * info["learning_rate"])


# ---------------------------------------------------------------------- the grid
def test_grid_runs_and_names_say_what_varies():
    config = TrainConfig(weight_decays=(0.0, 0.1), seeds=(0, 1), schedules=("cosine", "wso"), final_lr_fractions=(0.1, 0.0))
    runs = config.runs()
    # cosine: 2 final fractions x 2 weight decays x 2 seeds; wso ends at the peak: 2 x 2
    assert len(runs) == 12 and len(set(runs)) == 12
    assert {r.final_lr_fraction for r in runs if r.schedule == "wso"} == {1.0}
    names = [config.run_name(r) for r in runs]
    assert len(set(names)) == 12
    assert config.run_name(Run(0.1, 1, "cosine", 0.0)) == "wd-0.1_cosine_final-0_seed-1"
    assert config.run_name(Run(0.0, 0, "wso", 1.0)) == "wd-0_wso_seed-0"
    single = TrainConfig(weight_decays=(0.0, 0.1), seeds=(3,))
    assert [single.run_name(r) for r in single.runs()] == ["wd-0", "wd-0.1"]
    assert {r.seed for r in single.runs()} == {3}
    assert TrainConfig(weight_decays=(0.0, 0.1), seed=3).runs() == single.runs()  # seed=N is seeds=(N,)
    with pytest.raises(ConfigError, match="give one of them"):
        TrainConfig(seeds=(0, 1), seed=2)


@pytest.mark.parametrize("field, value, message", [
    ("steps", 0, "integer >= 1"),
    ("weight_decays", (0.0, -0.1), "number >= 0"),
    ("weight_decays", (0.1, 0.1), "twice"),
    ("weight_decays", (), "at least one"),
    ("weight_decays", (float("nan"),), "number >= 0"),
    ("seeds", (0, -1), "integer >= 0"),
    ("schedules", ("cosine", "step"), "not a schedule"),
    ("schedules", ("wso", "constant"), "same schedule"),
    ("final_lr_fractions", (1.5,), "between 0 and 1"),
    ("save_steps", (10, 900), "not before the last step"),
    ("save_steps", (0,), "integer >= 1"),
    ("warmup_steps", 1000, "more than steps"),
    ("learning_rate", -1e-3, "number >= 0"),
    ("n_heads", 5, "split into n_heads"),
    ("train_docs", 3, "integer >= 64"),
])
def test_config_refuses_settings_that_cannot_work(field, value, message):
    with pytest.raises(ConfigError, match=message) as err:
        TrainConfig(**{field: value})
    assert err.value.field == field


def test_batch_order_is_epochs_of_a_seeded_permutation():
    lengths = [int(x) for x in torch.randint(2, 60, (100,), generator=torch.Generator().manual_seed(1))]
    order = batch_order(lengths, 10, 25, seed=0)  # 2.5 epochs
    epoch = lambda k: sorted(i for b in order[10 * k: 10 * (k + 1)] for i in b)  # noqa: E731
    assert epoch(0) == epoch(1) == list(range(100))  # every document once per epoch
    assert order == batch_order(lengths, 10, 25, seed=0)
    assert order != batch_order(lengths, 10, 25, seed=1)
    plain = batch_order(lengths, 10, 10, seed=0, group_by_length=False)
    width = lambda batches: sum(max(lengths[i] for i in b) * len(b) for b in batches)  # noqa: E731
    assert width(order[:10]) < 0.8 * width(plain)  # grouping by length pads less
    with pytest.raises(ConfigError, match="train_docs"):
        batch_order([5] * 3, 10, 1, seed=0)


# ---------------------------------------------------------------------- outputs
def test_sweep_outputs(tiny_manifest, tiny_sweep):
    assert [c.weight_decay for c in tiny_sweep] == [0.0, 0.1, 1.0]
    info = json.loads((tiny_manifest.parent / "wd-0.1" / "plastiscope.json").read_text())
    assert info["weight_decay"] == 0.1 and info["config"]["steps"] == 40 and info["seed"] == 0
    assert info["final_val_loss"] < math.log(512)  # it learned something
    wd0 = json.loads((tiny_manifest.parent / "wd-0" / "plastiscope.json").read_text())
    assert tiny_sweep[0].hyperparameters["final_val_loss"] == pytest.approx(wd0["final_val_loss"], abs=1e-4)


def test_manifest_columns_and_measured_scale(grid_manifest):
    table = rows(grid_manifest)
    assert list(table[0]) == list(MANIFEST_COLUMNS)
    assert len(table) == 4 * 3  # 4 runs x (steps 10, 20 and the last)
    last = [r for r in table if r["step"] == "30"]
    assert sorted((r["weight_decay"], r["seed"]) for r in last) == [("0.0", "0"), ("0.0", "1"), ("1.0", "0"), ("1.0", "1")]
    assert {r["schedule"] for r in table} == {"cosine"} and {r["final_lr_fraction"] for r in table} == {"0.1"}
    assert all(float(r["decay_fraction"]) == pytest.approx(27 / 30) for r in table)  # every step after warmup

    # parameters, counted from the weights file itself
    folder = grid_manifest.parent / "wd-0_seed-0"
    weights = load_file(folder / "model.safetensors")
    total = sum(t.numel() for t in weights.values())
    embedding = weights["model.embed_tokens.weight"].numel() + weights["lm_head.weight"].numel()
    assert all(int(r["parameters"]) == total and int(r["non_embedding_parameters"]) == total - embedding for r in table)

    # one epoch: every training document once, so the tokens are those of the first 240 glosses under the run's tokenizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    texts = load_corpus("train", 240).texts
    expected = sum(min(1 + len(tok(t, add_special_tokens=False)["input_ids"]), 32) for t in texts)
    assert all(int(r["tokens"]) == expected and float(r["epochs"]) == 1.0 for r in last)
    assert all(float(r["tokens_per_parameter"]) == pytest.approx(expected / total, abs=1e-3) for r in last)


def test_same_data_within_a_seed_different_across_seeds(grid_manifest):
    tokens = {(r["weight_decay"], r["seed"], r["step"]): int(r["tokens"]) for r in rows(grid_manifest)}
    for step in ("10", "20"):
        assert tokens[("0.0", "0", step)] == tokens[("1.0", "0", step)]
        assert tokens[("0.0", "1", step)] == tokens[("1.0", "1", step)]
        assert tokens[("0.0", "0", step)] != tokens[("0.0", "1", step)]
    assert tokens[("0.0", "0", "10")] < tokens[("0.0", "0", "20")] < tokens[("0.0", "0", "30")]


def test_saved_steps_load_as_a_sweep(grid_manifest):
    sweep = Sweep.from_manifest(grid_manifest)
    assert len(sweep) == 12 and not sweep.errors
    frame = sweep.to_frame()
    assert sorted(frame.groupby(["weight_decay", "seed"])["step"].apply(sorted).tolist()) == [[10, 20, 30]] * 4
    assert "wd-1_seed-1_step-20" in set(frame["checkpoint"])
    a, b = (load_file(grid_manifest.parent / n / "model.safetensors") for n in ("wd-1_seed-1_step-20", "wd-1_seed-1"))
    assert not torch.equal(a["lm_head.weight"], b["lm_head.weight"])  # a different moment, not a copy


def test_saved_step_loss_matches_transformers(grid_manifest):
    """The validation loss recorded at step 10 is transformers' own loss of the model saved then."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = grid_manifest.parent / "wd-1_seed-0_step-10"
    info = json.loads((folder / "plastiscope.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    total, count = 0.0, 0
    with torch.no_grad():
        for text in load_corpus("validation", 40).texts:
            ids = torch.tensor([([tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"])[:32]])
            n = ids.shape[1] - 1
            total += float(model(ids, labels=ids).loss) * n
            count += n
    assert info["step"] == 10 and info["final_val_loss"] == pytest.approx(total / count, rel=1e-4)


def test_decay_shrinks_matrices_not_norms(tiny_manifest):
    """Same seed and data: weight decay 1.0 has smaller matrices than 0, and norm weights stay undecayed."""
    w0 = load_file(tiny_manifest.parent / "wd-0" / "model.safetensors")
    w1 = load_file(tiny_manifest.parent / "wd-1" / "model.safetensors")
    matrices = [k for k, v in w0.items() if v.dim() >= 2]
    norms = [k for k, v in w0.items() if v.dim() == 1]
    assert norms and matrices
    assert sum(w1[k].norm() ** 2 for k in matrices) < sum(w0[k].norm() ** 2 for k in matrices)
    # norm weights start at 1; with decay they would be pulled toward 0 by lr*wd each step
    for k in norms:
        assert w1[k].mean() > 0.8


# ---------------------------------------------------------------------- reuse, replicates, workers
def test_rerun_reuses_trained_runs(tiny_manifest):
    from conftest import TINY

    before = {p: p.stat().st_mtime_ns for p in tiny_manifest.parent.glob("*/model.safetensors")}
    train_sweep(tiny_manifest.parent, TrainConfig(weight_decays=(0.0, 0.1, 1.0), **TINY), progress=False)
    assert {p: p.stat().st_mtime_ns for p in tiny_manifest.parent.glob("*/model.safetensors")} == before


def test_rerun_with_other_data_or_steps_retrains(tmp_path):
    config = TrainConfig(**{**GRID, "weight_decays": (0.1,), "seeds": (0,), "save_steps": ()})
    train_sweep(tmp_path, config, progress=False)
    weights = tmp_path / "wd-0.1" / "model.safetensors"
    first = weights.stat().st_mtime_ns
    train_sweep(tmp_path, config, val_data=load_corpus("validation", 80).subset(range(40, 80)), progress=False)
    second = weights.stat().st_mtime_ns
    assert second != first
    train_sweep(tmp_path, TrainConfig(**{**GRID, "weight_decays": (0.1,), "seeds": (0,), "save_steps": (5,)}),
                val_data=load_corpus("validation", 80).subset(range(40, 80)), progress=False)
    assert weights.stat().st_mtime_ns != second and (tmp_path / "wd-0.1_step-5" / "model.safetensors").exists()


def test_same_init_for_every_weight_decay_of_a_seed():
    from plastiscope.demo.sweep import train_one
    from plastiscope.demo.tokenizer import train_tokenizer

    tok = train_tokenizer(["a b c d e f g h"] * 20, 280)
    ids = [[tok.bos_token_id, 5, 6, 7]] * 8
    config = TrainConfig(steps=1, batch_size=2, context=8, warmup_steps=1, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1,
                         d_mlp=16, eval_every=1, learning_rate=0.0, vocab_size=280)
    a, _ = train_one(config, Run(0.0, 0), ids, ids, tok, progress=False)
    b, _ = train_one(config, Run(1.0, 0), ids, ids, tok, progress=False)
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, msg=k)  # lr 0: no update, identical init
    other = build_model(config, tok, seed=1).state_dict()
    assert not torch.equal(a.state_dict()["lm_head.weight"], other["lm_head.weight"])  # another seed, another init


def test_workers_train_the_same_checkpoints(grid_manifest, tmp_path):
    """Two runs at once, each in its own process, give the very weights of one after the other."""
    config = TrainConfig(**{**GRID, "save_steps": ()})
    manifest = train_sweep(tmp_path, config, progress=False, workers=2)
    for run in config.runs():
        name = config.run_name(run)
        a = load_file(tmp_path / name / "model.safetensors")
        b = load_file(grid_manifest.parent / name / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert [r["tokens"] for r in rows(manifest)] == [r["tokens"] for r in rows(grid_manifest) if r["step"] == "30"]


# ---------------------------------------------------------------------- the command
@pytest.mark.parametrize("args, flag", [
    (["--steps", "0"], "--steps"),
    (["--weight-decays", "0,-0.1"], "--weight-decays"),
    (["--weight-decays", "0,,1"], "--weight-decays"),
    (["--seeds", "0,a"], "--seeds"),
    (["--schedule", "cosine,step"], "--schedule"),
    (["--final-lr-fraction", "2"], "--final-lr-fraction"),
    (["--save-steps", "100000"], "--save-steps"),
    (["--learning-rate", "-1"], "--learning-rate"),
    (["--learning-rate", "0"], "--learning-rate"),
    (["--decay-fraction", "1.5"], "--decay-fraction"),
    (["--workers", "0"], "--workers"),
])
def test_train_sweep_command_names_the_bad_flag(tmp_path, args, flag):
    result = CliRunner().invoke(app, ["train-sweep", "--out", str(tmp_path / "s"), *args])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {flag}"), result.output
    assert not (tmp_path / "s" / "manifest.csv").exists()


def test_train_sweep_command_refuses_a_file_as_out(tmp_path):
    (tmp_path / "f").write_text("x")
    result = CliRunner().invoke(app, ["train-sweep", "--out", str(tmp_path / "f"), "--quick"])
    assert result.exit_code == 2 and result.output.startswith("error: --out") and (tmp_path / "f").read_text() == "x"


def test_train_sweep_command_schedule_grid(tmp_path):
    args = ["train-sweep", "--out", str(tmp_path), "--quick", "--steps", "6", "--warmup-steps", "2", "--weight-decays", "0.1",
            "--seeds", "0,1", "--schedule", "wsd,wso", "--final-lr-fraction", "0.05", "--decay-fraction", "0.5"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    table = {r["path"]: r for r in rows(tmp_path / "manifest.csv")}
    assert sorted(table) == ["wd-0.1_wsd_seed-0", "wd-0.1_wsd_seed-1", "wd-0.1_wso_seed-0", "wd-0.1_wso_seed-1"]
    wsd, wso = table["wd-0.1_wsd_seed-1"], table["wd-0.1_wso_seed-1"]
    assert (wsd["schedule"], float(wsd["final_lr_fraction"]), float(wsd["decay_fraction"])) == ("wsd", 0.05, 0.5)
    assert (wso["schedule"], float(wso["final_lr_fraction"]), float(wso["decay_fraction"])) == ("wso", 1.0, 0.0)
    curve = json.loads((tmp_path / "wd-0.1_wsd_seed-1" / "plastiscope.json").read_text())["log"]["curve"]
    assert curve[-1]["lr"] == pytest.approx(0.05 * float(wsd["learning_rate"]))
    assert {c.hyperparameters["schedule"] for c in Sweep.from_manifest(tmp_path / "manifest.csv")} == {"wsd", "wso"}
