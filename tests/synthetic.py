"""A synthetic results frame in the tidy schema, for report tests, size checks and examples.

The numbers are made up (smooth trends in log weight decay plus seed noise), shaped like a
plasticity study that reproduces Han et al.: probe accuracy rises with weight decay, the W_QK
effective rank, the loss gap and scale-invariant sharpness fall, the basin widens, the loss
after fine-tuning falls while validation loss rises. Every analysis writes its ``variant``
column from its declared variant columns and carries per-row details, as the real ones do.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from plastiscope.metrics import attach
from plastiscope.results import tidy, variant_label
from plastiscope.runner import declarations

PROBE_METRICS = ("accuracy", "macro_f1", "cross_entropy", "selectivity_control_task", "mdl_codelength", "fisher_criterion")
ATTENTION_METRICS = ("entropy", "entropy_normalized", "effective_rank", "stable_rank", "sink_share", "mean_distance")
WEIGHT_METRICS = ("qk_effective_rank", "qk_frobenius_norm", "ov_frobenius_norm", "wq_norm")
VARIANTS = {"probes": ("task", "pooling"), "overfit": ("score", "position_bucket"), "plasticity": ("task", "finetune_lr"),
            "landscape": ("objective", "direction")}


def synthetic_results(
    n_checkpoints: int = 6,
    n_layers: int = 4,
    n_heads: int = 4,
    seed: int = 0,
    plasticity: bool = True,
    names: list[str] | None = None,
    extra_hyperparameters: dict[str, object] | None = None,
    seeds: int = 1,
    noise: float = 0.01,
    landscape: bool = True,
) -> pd.DataFrame:
    """Results of ``n_checkpoints`` weight decays (0 and log-spaced 1e-4 .. 1), each trained with ``seeds`` seeds.

    ``names`` overrides the checkpoint names (one per weight decay and seed);
    ``extra_hyperparameters`` adds constant columns; ``noise`` scales the seed-to-seed noise.
    Returns a frame in the ``plastiscope.results`` schema.
    """
    rng = np.random.default_rng(seed)
    wds = np.concatenate([[0.0], np.logspace(-4, 0, n_checkpoints - 1)]) if n_checkpoints > 1 else np.array([0.1])
    t = np.linspace(0, 1, n_checkpoints)  # trend in weight-decay order
    runs = [(i, s) for i in range(n_checkpoints) for s in range(seeds)]
    names = names or [f"wd{wds[i]:g}" + (f"-s{s}" if seeds > 1 else "") for i, s in runs]
    frames = []
    for (i, s), name in zip(runs, names):
        ti = t[i]

        def jitter(scale: float = 1.0) -> float:
            return float(rng.normal(0, noise * scale))

        hyper = {"checkpoint": name, "weight_decay": wds[i], "learning_rate": 3e-4, "seed": s,
                 "final_train_loss": 3.0 + 0.4 * ti + jitter(), "final_val_loss": 3.5 + 0.2 * ti + jitter()}
        hyper.update(extra_hyperparameters or {})
        records = []
        for task, offset in (("pos", 0.3), ("lexname", 0.0)):
            for init in ("trained", "random"):
                for layer in range(n_layers):
                    depth = layer / max(n_layers - 1, 1)
                    base = 0.4 + offset + (0.2 * ti + 0.1 * depth + jitter() if init == "trained" else 0.0)
                    for k, metric in enumerate(PROBE_METRICS):
                        value = base * (1 + k) + jitter()
                        records.append({"analysis": "probes", "metric": metric, "layer": layer, "value": value,
                                        "ci_low": value - 0.02, "ci_high": value + 0.02, "n": 500,
                                        "task": task, "pooling": "mean", "init": init})
        layer_idx, head_idx = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
        head_frames = []
        for analysis, metrics in (("attention", ATTENTION_METRICS), ("attention_weights", WEIGHT_METRICS)):
            for k, metric in enumerate(metrics):
                sign = -1.0 if metric == "qk_effective_rank" else 1.0
                values = (1 + k) * (1 + sign * 0.3 * ti * (1.2 + np.cos(layer_idx + head_idx))) + jitter() \
                    + rng.normal(0, 0.02, layer_idx.shape)
                head_frames.append(pd.DataFrame({"analysis": analysis, "metric": metric, "layer": layer_idx.ravel(),
                                                 "head": head_idx.ravel(), "value": values.ravel(), "n": 1000}))
        overfit = {"train_loss": 3.0 + 0.4 * ti, "val_loss": 3.5 + 0.2 * ti, "loss_gap": 0.5 - 0.2 * ti,
                   "exact_match_train": 0.1 - 0.08 * ti}
        for metric, value in overfit.items():
            value += jitter(0.5)
            records.append({"analysis": "overfit", "metric": metric, "value": value, "ci_low": value - 0.01,
                            "ci_high": value + 0.01, "n": 200})
        for score in ("loss", "zlib"):
            records.append({"analysis": "overfit", "metric": f"mia_auc_{score}", "score": score, "value": 0.7 - 0.15 * ti + jitter(),
                            "n": 400})
        for bucket in ("1-8", "9-16"):
            records.append({"analysis": "overfit", "metric": "loss_gap_by_position", "position_bucket": bucket,
                            "value": 0.5 - 0.2 * ti + jitter(), "n": 200})
        if plasticity:
            task = "topics"
            before = 4.0 + 0.1 * ti + jitter()
            after = 2.4 - 0.5 * ti + jitter()
            for metric, value in (("downstream_loss_before", before), ("downstream_loss_after", after),
                                  ("plasticity_gain", before - after), ("downstream_accuracy_after", 0.4 + 0.3 * ti + jitter())):
                records.append({"analysis": "plasticity", "metric": metric, "value": value, "ci_low": value - 0.05,
                                "ci_high": value + 0.05, "n": 100, "task": task, "selected_lr": 1e-3})
            for lr in (1e-3, 3e-3):
                records.append({"analysis": "plasticity", "metric": "downstream_selection_loss", "value": after + lr * 50,
                                "n": 50, "task": task, "finetune_lr": lr})
        if landscape:
            records.append({"analysis": "landscape", "metric": "hessian_max_eigenvalue", "value": 20 + 15 * ti + jitter(10),
                            "n": 32, "iterations": 12})
            records.append({"analysis": "landscape", "metric": "adaptive_max_eigenvalue", "value": 5 - 3 * ti + jitter(10),
                            "n": 32, "iterations": 9})
            for objective in ("loss", "accuracy"):
                for direction in ("random", "worst"):
                    sigma = (0.05 + 0.04 * ti) * (0.5 if direction == "worst" else 1.0) + jitter(0.1)
                    records.append({"analysis": "landscape", "metric": "basin_sigma", "objective": objective,
                                    "direction": direction, "value": sigma, "n": 8})
                    records.append({"analysis": "landscape", "metric": "basin_sigma_relative", "objective": objective,
                                    "direction": direction, "value": sigma / 0.02, "n": 8})
                    for r in (0.02, 0.05, 0.1):
                        records.append({"analysis": "landscape", "metric": "basin_curve", "objective": objective,
                                        "direction": direction, "sigma": r, "value": r / sigma, "n": 8})
        frame = pd.DataFrame.from_records(records)
        for analysis, variants in VARIANTS.items():
            rows = frame["analysis"] == analysis
            if rows.any():
                frame.loc[rows, "variant"] = [variant_label(r, variants) for r in frame[rows].to_dict("records")]
        frame = pd.concat([frame] + head_frames, ignore_index=True)
        for column, value in hyper.items():
            frame[column] = value
        frames.append(frame)
    return attach(tidy(pd.concat(frames, ignore_index=True)), declarations())  # what each metric means, as a run records it
