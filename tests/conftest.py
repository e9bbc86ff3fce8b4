"""Shared fixtures: a tiny trained sweep on the embedded corpus, built once per test session."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tiny test models gain nothing from intra-op threads, and oversubscribed threads on a
# loaded 2-core machine make them several times slower.
torch.set_num_threads(1)

TINY = dict(
    steps=40, batch_size=16, context=48, warmup_steps=5, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
    d_mlp=64, vocab_size=512, train_docs=400, val_docs=100, eval_every=20,
)


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory):
    """manifest.csv of 3 tiny Llama checkpoints trained at weight decays 0, 0.1 and 1.0."""
    from plastiscope.demo.sweep import TrainConfig, train_sweep

    return train_sweep(tmp_path_factory.mktemp("sweep"), TrainConfig(weight_decays=(0.0, 0.1, 1.0), **TINY), progress=False)


@pytest.fixture(scope="session")
def tiny_sweep(tiny_manifest):
    """The tiny sweep as a plastiscope.Sweep (weight decays 0, 0.1, 1.0)."""
    from plastiscope import Sweep

    return Sweep.from_manifest(tiny_manifest)


@pytest.fixture(scope="session")
def probe_docs():
    """200 documents of the embedded corpus's probe split (columns pos, lexname, lemma)."""
    from plastiscope.demo.corpus import load_corpus

    return load_corpus("probe", 200)
