"""The embedded sweep trainer: decay on matrices only, shared init and data, a schedule that is what it says."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from plastiscope.demo.sweep import TrainConfig, lr_at


def test_schedule():
    c = TrainConfig(steps=110, warmup_steps=10, learning_rate=1.0)
    assert lr_at(0, c) == pytest.approx(0.1) and lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(10, c) == pytest.approx(1.0) and lr_at(110, c) == pytest.approx(0.1)
    assert lr_at(60, c) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(100, TrainConfig(steps=110, warmup_steps=10, learning_rate=1.0, schedule="constant")) == 1.0


def test_sweep_outputs(tiny_manifest, tiny_sweep):
    assert [c.weight_decay for c in tiny_sweep] == [0.0, 0.1, 1.0]
    info = json.loads((tiny_manifest.parent / "wd-0.1" / "plastiscope.json").read_text())
    assert info["weight_decay"] == 0.1 and info["config"]["steps"] == 40
    assert info["final_val_loss"] < math.log(512)  # it learned something
    assert tiny_sweep[0].hyperparameters["final_val_loss"] == pytest.approx(info and json.loads((tiny_manifest.parent / "wd-0" / "plastiscope.json").read_text())["final_val_loss"], abs=1e-4)


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


def test_rerun_reuses_trained_runs(tiny_manifest):
    from conftest import TINY

    from plastiscope.demo.sweep import train_sweep

    before = {p: p.stat().st_mtime_ns for p in tiny_manifest.parent.glob("*/model.safetensors")}
    train_sweep(tiny_manifest.parent, TrainConfig(weight_decays=(0.0, 0.1, 1.0), **TINY), progress=False)
    assert {p: p.stat().st_mtime_ns for p in tiny_manifest.parent.glob("*/model.safetensors")} == before


def test_same_init_for_every_weight_decay():

    from plastiscope.demo.sweep import train_one
    from plastiscope.demo.tokenizer import train_tokenizer

    tok = train_tokenizer(["a b c d e f g h"] * 20, 280)
    ids = [[tok.bos_token_id, 5, 6, 7]] * 8
    config = TrainConfig(steps=1, batch_size=2, context=8, warmup_steps=1, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_mlp=16, eval_every=1, learning_rate=0.0)
    a, _ = train_one(config, 0.0, ids, ids, tok, progress=False)
    b, _ = train_one(config, 1.0, ids, ids, tok, progress=False)
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, msg=k)  # lr 0: no update, identical init
