"""The analyses in bfloat16 (on CUDA where a GPU exists) give the float32 CPU numbers within stated tolerances.

The forward runs in the checkpoint's dtype on its device; losses, pattern statistics, probe
features and metrics are computed in float32/float64 there (see plastiscope.activations). A
bfloat16 forward therefore changes the numbers only through bfloat16 rounding of the model's
activations: the tolerances below bound that change, measured on the CPU in bfloat16 (the
``cpu`` case, which runs everywhere) and required of CUDA (the ``cuda`` case, skipped without a GPU).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from plastiscope import Sweep
from plastiscope.demo.corpus import load_corpus
from plastiscope.runner import Inputs, run_analyses

ANALYSES = ["probes", "attention", "attention_weights", "overfit"]
OPTIONS = {
    "probes": {"folds": 3, "inner_folds": 2, "min_per_class": 5, "mdl": False, "shuffled": False},
    "attention": {"n_resamples": 50},
    "overfit": {"n_resamples": 50, "prefix_tokens": 4, "continuation_tokens": 4, "memorization_max_docs": 40},
}
# Largest |bfloat16 - float32| allowed per metric. Measured on the CPU (tiny demo model, these
# options): at most 2.4e-5 nats of entropy, 1.1e-3 of effective rank, 0.025 of numerical rank,
# 3.3e-4 nats of loss, 0.009 of probe selectivity, 0.025 tokens of matched prefix; the bounds
# leave room for other kernels (cuBLAS accumulates bfloat16 products differently).
TOLERANCE = {
    "entropy": 0.01, "entropy_normalized": 0.005, "sink_share": 0.005, "mean_distance": 0.02, "one_hot_share": 0.02,
    "effective_rank": 0.05, "stable_rank": 0.02, "numerical_rank": 0.5, "frobenius_norm": 0.005, "spectral_norm": 0.005,
    "nuclear_norm": 0.02,
    "accuracy": 0.05, "macro_f1": 0.05, "cross_entropy": 0.03, "selectivity_control_task": 0.05,
    "train_loss": 0.01, "val_loss": 0.01, "loss_gap": 0.005, "loss_ratio": 0.002, "train_loss_by_position": 0.01,
    "val_loss_by_position": 0.01, "loss_gap_by_position": 0.005, "mia_auc_loss": 0.05, "mia_auc_zlib": 0.05,
    "mia_auc_reference": 0.05, "mia_tpr_at_1fpr": 0.1, "exact_match_train": 0.05, "exact_match_val": 0.05,
    "matched_prefix_train": 0.5, "matched_prefix_val": 0.5, "accuracy_above_majority": 0.05, "accuracy_above_random_init": 0.05,
}
RELATIVE = 0.01  # any other metric (weight norms and ranks, counts): 1 % of its value


def frame_of(checkpoint, device: str, dtype: str) -> pd.DataFrame:
    inputs = Inputs(data=load_corpus("probe", 80), train_data=load_corpus("train", 30), val_data=load_corpus("validation", 30))
    results, failures = run_analyses(checkpoint.to(device=device, dtype=dtype), ANALYSES, inputs, OPTIONS, batch_size=16, progress=False)
    assert failures.empty, failures.to_dict("records")
    return results


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_bfloat16_forward_gives_the_float32_numbers(tiny_manifest, device):
    reference = frame_of(Sweep.from_manifest(tiny_manifest)[1], "cpu", "float32")
    low = frame_of(Sweep.from_manifest(tiny_manifest)[1], device, "bfloat16")
    key = ["analysis", "metric", "variant", "layer", "head", "init"]
    both = reference.merge(low, on=key, suffixes=("", "_low"), validate="one_to_one")
    assert len(both) == len(reference) == len(low) and set(both["analysis"]) == set(ANALYSES)
    checked = 0
    for row in both.itertuples():
        if np.isnan(row.value):
            assert np.isnan(row.value_low), row
            continue
        tol = TOLERANCE.get(row.metric, RELATIVE * abs(row.value) + 1e-9)
        assert abs(row.value_low - row.value) <= tol, (row.analysis, row.metric, row.layer, row.head, row.value, row.value_low)
        checked += 1
    assert checked > 150
    if device == "cuda":
        assert torch.cuda.max_memory_allocated() > 0  # the work ran on the GPU
