"""The ``landscape`` analysis: sharpness and basin size of the pretraining loss at a checkpoint.

Flatter minima and wider basins are the usual explanations of why some checkpoints adapt
better; this module measures both on a **fixed batch** of training data (the first
``n_docs`` documents of ``train_data``, one document per sequence as in
:mod:`plastiscope.data`). The loss ``L(theta)`` is the mean next-token cross-entropy (nats)
over every real target token of the batch (tokens after BOS; padding masked), computed with
``checkpoint.hf_model`` in float32, eval mode (no dropout), over **all** its parameters.

Metrics:

- ``hessian_top_eigenvalue``: the largest eigenvalue of the Hessian of ``L`` by power
  iteration on Hessian-vector products (Pearlmutter 1994: double backward through
  ``torch.autograd``; Yao et al. 2020, PyHessian). ``n`` is the number of documents of
  the batch; the details ``iterations`` (products run: a run stops once the relative change
  of its estimate falls below ``power_tol``, or after ``power_iterations``) and
  ``relative_change`` (the last relative change) say how far it converged; there is no
  interval. The Rayleigh quotient approaches the top eigenvalue from below, so an
  unconverged estimate is an underestimate. Power iteration finds the
  eigenvalue of largest magnitude; when that one is negative (away from a minimum), a
  second run on the shifted Hessian looks for the top one (:func:`top_eigenvalue`; ``n``
  counts both runs). That run converges slowly when the top eigenvalue is small against
  the negative one, and an unconverged one can be far below the truth: if it has not
  converged within ``power_iterations``, the value is NaN (``iterations`` and
  ``relative_change`` still say what was run).
- ``hessian_min_eigenvalue`` (only when the eigenvalue of largest magnitude is negative:
  the checkpoint is not at a minimum of ``L``): that eigenvalue, the most negative one,
  with its iterations and relative change as above.
- ``hessian_trace``: Hutchinson's estimator ``tr H = E[v^T H v]`` with Rademacher probes
  ``v`` (Hutchinson 1990; Yao et al. 2020); value and bootstrap 95 % interval are the mean
  over the ``trace_probes`` probes (``n``).
- ``basin_curve_loss``: the 1-D loss curves ``L(theta + r d)`` along ``n_directions``
  random directions ``d``, **filter-normalised** (Li et al. 2018, "Visualizing the Loss
  Landscape of Neural Nets"): ``d`` is Gaussian, then each filter (row ``i`` of a weight
  matrix: an output unit of a linear map, a token's embedding) is rescaled to the norm of
  the same filter of the weights, ``d_i <- d_i ||theta_i|| / ||d_i||``; 1-D parameters
  (norm gains, biases) are zero in ``d``, as in Li et al. Variant column ``radius`` (``r``,
  option ``radii``; one series per radius) and detail ``direction`` (0, 1, ...). Filter normalisation removes the scale
  symmetry that normalisation layers give the weights, so radii compare across weight decays.
- ``basin_radius``: per direction, the radius at which the loss first rises by
  ``basin_threshold`` nats over the loss at ``r = 0`` (linear interpolation between grid
  radii); a direction that never rises that much within the grid counts as the largest
  radius (censored: a lower bound; the extra column ``n_censored`` counts them). Value and
  bootstrap 95 % interval: mean over directions (``n``).

Perturbations change the checkpoint's weights in place and restore them bit-exactly from a
saved copy (:func:`~.basin.restored`), also on error. Random draws use ``seed``: every checkpoint of
a sweep sees the same probes and the same Gaussian draws behind its directions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch

from plastiscope.checkpoint import Checkpoint
from plastiscope.data import Documents, encode, pad
from plastiscope.losses import sequence_loss
from plastiscope.memo import Memo
from plastiscope.options import Integer, ListOf, Option, OptionTable, Real
from plastiscope.results import make_frame
from plastiscope.runner import Analysis, Inputs
from plastiscope.stats import mean_ci

from .basin import Params, basin_radius, filter_normalized_direction, loss_curve
from .hessian import Estimate, eigenvalue_extremes, hutchinson_samples, hvp_operator

NAME = "landscape"
VARIANTS = ("radius",)


def _check(config: dict[str, Any]) -> dict[str, Any]:
    if config["radii"][0] != 0:
        raise ValueError(f"radii must start at 0 and increase strictly (at least two), got {config['radii']!r}")
    return config


OPTIONS = OptionTable({
    "n_docs": Option(32, Integer(1), "the fixed batch: the first n_docs documents of train_data"),
    "power_iterations": Option(20, Integer(0), "power iterations at most (0: no eigenvalue)"),
    "power_tol": Option(1e-3, Real(0, None, closed="neither"), "stop when the relative change of the estimate is below this"),
    "trace_probes": Option(10, Integer(0), "Hutchinson probes (0: no trace)"),
    "n_directions": Option(4, Integer(0), "filter-normalised random directions (0: no basin)"),
    "radii": Option([0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0],
                    ListOf(Real(0, None), min_len=2, increasing=True), "radii of the basin curves, from 0"),
    "basin_threshold": Option(0.1, Real(0, None, closed="neither"), "loss rise (nats) that ends a basin"),
    "seed": Option(0, Integer(0), "seed of probes and directions"),
    "n_resamples": Option(1000, Integer(1), "bootstrap resamples"),
}, check=_check)

log = logging.getLogger("plastiscope")


def fixed_batch(checkpoint: Checkpoint, data: Documents, n_docs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``tokens [doc, pos]`` and ``mask [doc, pos]`` of the first ``n_docs`` documents (those with a target)."""
    tokenizer = checkpoint.tokenizer
    ids = [encode(tokenizer, text, checkpoint.n_ctx) for text in data.texts[:n_docs]]
    ids = [x for x in ids if len(x) >= 2]  # a document without a target token adds nothing
    if not ids:
        raise ValueError(f"{checkpoint.name}: no document of train_data has a token to predict")
    return pad(ids, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)


def batch_loss_fn(model: Any, tokens: torch.Tensor, mask: torch.Tensor) -> Callable[[], torch.Tensor]:
    """``L()``: the token-weighted mean next-token cross-entropy of the batch (a scalar tensor)."""
    return lambda: sequence_loss(model, tokens, mask)


class LandscapeTask:
    """Sharpness and basin size of one checkpoint, computed in :meth:`finish` (gradients: no shared pass)."""

    def __init__(self, checkpoint: Checkpoint, train_data: Documents, config: dict[str, Any]):
        self.checkpoint, self.train_data, self.config = checkpoint, train_data, config
        self.passes: dict[str, list] = {}

    def finish(self) -> pd.DataFrame:
        """Hessian eigenvalues, trace and basin rows of the fixed batch; the weights are left as they were."""
        cfg = self.config
        model = self.checkpoint.hf_model
        device = next(model.parameters()).device
        tokens, mask = fixed_batch(self.checkpoint, self.train_data, cfg["n_docs"])
        n_docs = len(tokens)
        loss_fn = batch_loss_fn(model, tokens.to(device), mask.to(device))
        params = list(model.parameters())
        boot = {"n_resamples": cfg["n_resamples"], "seed": cfg["seed"]}
        records: list[dict[str, Any]] = []
        was_training, flags = model.training, [p.requires_grad for p in params]
        model.eval()
        try:
            for p in params:
                p.requires_grad_(True)
            if cfg["power_iterations"] or cfg["trace_probes"]:
                hvp = hvp_operator(loss_fn, params)
                if cfg["power_iterations"]:
                    top, negative = eigenvalue_extremes(hvp, params, cfg["power_iterations"], cfg["power_tol"], cfg["seed"])
                    records += eigenvalue_records(top, negative, cfg["power_tol"], n_docs, self.checkpoint.name)
                if cfg["trace_probes"]:
                    samples = hutchinson_samples(hvp, params, cfg["trace_probes"], cfg["seed"])
                    value, low, high, n = mean_ci(samples, **boot)
                    records.append({"metric": "hessian_trace", "value": value, "ci_low": low, "ci_high": high, "n": n})
                del hvp
            if cfg["n_directions"]:
                records += self._basin(loss_fn, params, boot)
        finally:
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)
            model.train(was_training)
        return make_frame(self.checkpoint, NAME, records, VARIANTS)

    def _basin(self, loss_fn: Callable[[], torch.Tensor], params: Params, boot: dict[str, int]) -> list[dict[str, Any]]:
        cfg, radii = self.config, self.config["radii"]
        generator = torch.Generator().manual_seed(cfg["seed"])
        records, found = [], []
        for k in range(cfg["n_directions"]):
            direction = filter_normalized_direction(params, generator)
            curve = loss_curve(loss_fn, params, direction, radii)
            records += [{"metric": "basin_curve_loss", "value": loss, "radius": r, "direction": k} for r, loss in zip(radii, curve)]
            found.append(basin_radius(radii, curve, cfg["basin_threshold"]))
        value, low, high, n = mean_ci(np.array([r for r, _ in found]), **boot)
        records.append({"metric": "basin_radius", "value": value, "ci_low": low, "ci_high": high, "n": n,
                        "n_censored": sum(c for _, c in found)})
        return records


def _eigenvalue_record(metric: str, estimate: Estimate, n_docs: int) -> dict[str, Any]:
    value, iterations, change = estimate
    return {"metric": metric, "value": value, "n": n_docs, "iterations": iterations,
            "relative_change": change / abs(value) if value else math.nan}


def eigenvalue_records(top: Estimate, negative: Estimate | None, tol: float, n_docs: int, name: str = "") -> list[dict[str, Any]]:
    """Rows ``hessian_top_eigenvalue`` (+ ``hessian_min_eigenvalue`` when the dominant one is negative).

    ``n`` is the number of documents of the fixed batch; the details ``iterations`` and
    ``relative_change`` say how far the iteration went. The top eigenvalue of a shifted run
    that did not converge (relative change above ``tol``) is NaN: such an estimate can be far
    below the truth.
    """
    record = _eigenvalue_record("hessian_top_eigenvalue", top, n_docs)
    if negative is None:
        return [record]
    if not record["relative_change"] <= tol:
        log.warning("%s: the Hessian's dominant eigenvalue is negative (%.4g) and the shifted power iteration for the top "
                    "one did not converge (relative change %.2g); hessian_top_eigenvalue is NaN",
                    name, negative[0], record["relative_change"])
        record.update(value=math.nan)
    return [record, _eigenvalue_record("hessian_min_eigenvalue", negative, n_docs)]


def start(checkpoint: Checkpoint, inputs: Inputs, config: dict[str, Any], memo: Memo) -> LandscapeTask:
    """Start the landscape analysis of one checkpoint on a fixed batch of ``inputs.train_data``."""
    return LandscapeTask(checkpoint, inputs.train_data, config)


ANALYSIS = Analysis(name=NAME, inputs=("train_data",), start=start, options=OPTIONS, variants=VARIANTS)
