"""Shared fixtures: a tiny trained sweep on the embedded corpus (and a replicate of it), and every analysis's real output on them, built once per test session."""

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


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` are skipped where torch sees no CUDA GPU."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


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


# Small options for every analysis: a few seconds per checkpoint.
SMALL_OPTIONS = {
    "probes": {"label_column": "pos", "folds": 3, "inner_folds": 2, "Cs": [1.0]},
    "attention": {"n_resamples": 100},
    "overfit": {"prefix_tokens": 8, "continuation_tokens": 8, "memorization_max_docs": 32, "n_resamples": 100},
    "plasticity": {"label_column": "topic", "steps": 4, "batch_size": 8, "learning_rates": [1e-3, 3e-3], "eval_docs": 24,
                   "select_docs": 12, "train_docs": 64, "n_resamples": 100},
    "landscape": {"n_docs": 8, "lanczos_steps": 8, "trace_probes": 4, "n_directions": 2, "worst_case_steps": 1,
                  "sigmas": [0.0, 1e-4, 1e-3, 1e-2, 0.1], "label_column": "topic", "basin_docs": 16, "n_resamples": 100},
}


def analyze_every(manifest, out):
    """Run every registered analysis on ``manifest`` into the results folder ``out`` with :data:`SMALL_OPTIONS`."""
    from plastiscope.demo.corpus import load_corpus
    from plastiscope.pipeline import analyze
    from plastiscope.runner import Inputs, available_analyses

    names = available_analyses()
    options = {name: SMALL_OPTIONS.get(name, {}) for name in names}  # an option an analysis no longer has is refused
    inputs = Inputs(data=load_corpus("probe", 120), train_data=load_corpus("train", 400).head(64),
                    val_data=load_corpus("validation", 164).subset(range(100, 164)), finetune_data=load_corpus("finetune"))
    results, failures = analyze(manifest, out, names, inputs, options, progress=False)
    assert failures.empty, failures.to_dict("records")
    return out


@pytest.fixture(scope="session")
def tiny_results(tmp_path_factory, tiny_manifest):
    """Results folder of every analysis run on the tiny sweep (3 checkpoints, one seed)."""
    return analyze_every(tiny_manifest, tmp_path_factory.mktemp("tiny-results"))


@pytest.fixture(scope="session")
def tiny_manifest_seed1(tmp_path_factory):
    """manifest.csv of the tiny sweep trained again with seed 1 (weight decays 0, 0.1, 1.0)."""
    from plastiscope.demo.sweep import TrainConfig, train_sweep

    return train_sweep(tmp_path_factory.mktemp("sweep-seed1"), TrainConfig(weight_decays=(0.0, 0.1, 1.0), seed=1, **TINY),
                       progress=False)


@pytest.fixture(scope="session")
def replicated_manifest(tmp_path_factory, tiny_manifest, tiny_manifest_seed1):
    """One manifest of both tiny sweeps: 3 weight decays x seeds 0 and 1, labelled ``s{seed}-wd-{wd}``."""
    import csv

    rows = []
    for manifest in (tiny_manifest, tiny_manifest_seed1):
        with manifest.open(newline="") as f:
            for row in csv.DictReader(f):
                row["path"] = str((manifest.parent / row["path"]).resolve())
                row["label"] = f"s{row['seed']}-{row['label']}"
                rows.append(row)
    out = tmp_path_factory.mktemp("replicated") / "manifest.csv"
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


@pytest.fixture(scope="session")
def replicated_results(tmp_path_factory, tiny_results, replicated_manifest):
    """Results folder of every analysis on the replicated tiny sweep (seed-0 pieces reused from ``tiny_results``)."""
    import shutil

    out = tmp_path_factory.mktemp("replicated-results")
    shutil.copytree(tiny_results / "cache", out / "cache")
    return analyze_every(replicated_manifest, out)


def tiny_architecture(arch: str, vocab_size: int, seed: int = 0):
    """A random-init causal LM (eval mode) of one architecture, 2 layers, d_model 32, 4 heads, context 64.

    ``arch``: one of :data:`TINY_ARCHITECTURES`. Weights are drawn with std 0.2 (not 0.02), so attention is
    far from uniform. ``gemma2``: logit softcapping 2.0, a query scaling other than 1/sqrt(d_head) and a
    sliding window of 4 keys on alternating layers; ``mistral``: a sliding window of 4 keys on every layer;
    ``llama`` and ``olmo2``: grouped-query attention (2 key-value heads).
    """
    import transformers as tf

    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=64, initializer_range=0.2)
    configs = {
        "gpt2": lambda: tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                                         initializer_range=0.2, bos_token_id=0, eos_token_id=0)),
        "llama": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(num_key_value_heads=2, **common)),
        "gpt_neox": lambda: tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(rotary_pct=0.5, **common)),
        "olmo2": lambda: tf.Olmo2ForCausalLM(tf.Olmo2Config(num_key_value_heads=2, **common)),
        "gemma2": lambda: tf.Gemma2ForCausalLM(tf.Gemma2Config(num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=4,
                                                               attn_logit_softcapping=2.0, sliding_window=4, **common)),
        "mistral": lambda: tf.MistralForCausalLM(tf.MistralConfig(num_key_value_heads=2, sliding_window=4, **common)),
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return configs[arch]().eval()


TINY_ARCHITECTURES = ("gpt2", "llama", "gpt_neox", "olmo2", "gemma2", "mistral")


@pytest.fixture(scope="session")
def tiny_model():
    """:func:`tiny_architecture` as a fixture: ``tiny_model(arch, vocab_size, seed=0)``."""
    return tiny_architecture
