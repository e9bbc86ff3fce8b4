"""A synthetic results frame in the tidy schema, for tests, size checks and examples.

The numbers are made up (smooth trends in log weight decay plus noise); they exercise every
part of a report: per-layer probe metrics with a random-init baseline and two tasks, per-head
attention metrics, checkpoint-level overfitting metrics, and optionally plasticity.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from plastiscope.results import tidy

PROBE_METRICS = ("accuracy", "macro_f1", "cross_entropy", "selectivity_control_task", "mdl_codelength", "fisher_ratio")
ATTENTION_METRICS = ("entropy", "entropy_normalized", "effective_rank", "stable_rank", "sink_share", "mean_distance")
WEIGHT_METRICS = ("qk_frobenius_norm", "ov_frobenius_norm", "qk_effective_rank", "wq_norm")
OVERFIT_METRICS = ("train_loss", "val_loss", "loss_gap", "mia_auc_loss", "exact_match_32")


def synthetic_results(
    n_checkpoints: int = 6,
    n_layers: int = 4,
    n_heads: int = 4,
    seed: int = 0,
    plasticity: bool = True,
    names: list[str] | None = None,
    extra_hyperparameters: dict[str, object] | None = None,
) -> pd.DataFrame:
    """Results of ``n_checkpoints`` checkpoints (weight decay 0 and log-spaced 1e-4 .. 1).

    ``names`` overrides the checkpoint names; ``extra_hyperparameters`` adds constant columns.
    Returns a frame in the ``plastiscope.results`` schema.
    """
    rng = np.random.default_rng(seed)
    wds = np.concatenate([[0.0], np.logspace(-4, 0, n_checkpoints - 1)]) if n_checkpoints > 1 else np.array([0.1])
    names = names or [f"wd{w:g}" for w in wds]
    t = np.linspace(0, 1, n_checkpoints)  # trend in weight-decay order
    frames = []
    for i, (name, wd) in enumerate(zip(names, wds)):
        hyper = {"checkpoint": name, "weight_decay": wd, "lr": 3e-4, "seed": i % 3,
                 "final_train_loss": 3.0 + 0.4 * t[i] + rng.normal(0, 0.01),
                 "final_val_loss": 3.5 + 0.2 * t[i] + rng.normal(0, 0.01)}
        hyper.update(extra_hyperparameters or {})
        records = []
        for task, offset in (("pos", 0.3), ("lexname", 0.0)):
            for init in ("trained", "random"):
                for layer in range(n_layers):
                    depth = layer / max(n_layers - 1, 1)
                    base = 0.4 + offset + (0.2 * t[i] + 0.1 * depth if init == "trained" else 0.0)
                    for metric in PROBE_METRICS:
                        value = base * (1 + PROBE_METRICS.index(metric)) + rng.normal(0, 0.01)
                        records.append({"analysis": "probes", "metric": metric, "layer": layer, "value": value,
                                        "ci_low": value - 0.02, "ci_high": value + 0.02, "n": 500,
                                        "task": task, "pooling": "mean", "init": init})
        layer_idx, head_idx = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
        head_frames = []
        for analysis, metrics in (("attention", ATTENTION_METRICS), ("attention_weights", WEIGHT_METRICS)):
            for k, metric in enumerate(metrics):
                values = (1 + k) * (1 + 0.3 * t[i] * np.cos(layer_idx + head_idx)) + rng.normal(0, 0.02, layer_idx.shape)
                head_frames.append(pd.DataFrame({"analysis": analysis, "metric": metric, "layer": layer_idx.ravel(),
                                                 "head": head_idx.ravel(), "value": values.ravel(), "n": 1000}))
        for k, metric in enumerate(OVERFIT_METRICS):
            value = [3.0 + 0.4 * t[i], 3.5 + 0.2 * t[i], 0.5 - 0.2 * t[i], 0.7 - 0.15 * t[i], 0.1 - 0.08 * t[i]][k]
            value += rng.normal(0, 0.005)
            records.append({"analysis": "overfit", "metric": metric, "value": value, "ci_low": value - 0.01,
                            "ci_high": value + 0.01, "n": 200})
        if plasticity:
            gain = 0.2 + 0.5 * t[i] + rng.normal(0, 0.01)
            records.append({"analysis": "plasticity", "metric": "plasticity_gain", "value": gain, "n": 100})
            records.append({"analysis": "plasticity", "metric": "downstream_loss_after", "value": 2.5 - gain, "n": 100})
        frame = pd.concat([pd.DataFrame.from_records(records)] + head_frames, ignore_index=True)
        for column, value in hyper.items():
            frame[column] = value
        frames.append(frame)
    return tidy(pd.concat(frames, ignore_index=True))
