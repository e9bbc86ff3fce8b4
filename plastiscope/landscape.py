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
  ``torch.autograd``; Yao et al. 2020, PyHessian). ``n`` is the number of iterations run
  (a run stops once the relative change of its estimate falls below ``power_tol``, or
  after ``power_iterations``); the extra column ``relative_change`` is the last relative
  change. ``ci_low`` / ``ci_high`` are **not** a confidence interval but a convergence
  bracket: estimate -/+ the absolute change of the last iteration. The Rayleigh quotient
  approaches the top eigenvalue from below, so an unconverged estimate is an
  underestimate; read ``relative_change`` with the bracket. Power iteration finds the
  eigenvalue of largest magnitude; when that one is negative (away from a minimum), a
  second run on the shifted Hessian looks for the top one (:func:`top_eigenvalue`; ``n``
  counts both runs). That run converges slowly when the top eigenvalue is small against
  the negative one, and an unconverged one can be far below the truth: if it has not
  converged within ``power_iterations``, the value is NaN (``n`` and ``relative_change``
  still say what was run).
- ``hessian_min_eigenvalue`` (only when the eigenvalue of largest magnitude is negative:
  the checkpoint is not at a minimum of ``L``): that eigenvalue, the most negative one,
  with its iterations and bracket as above.
- ``hessian_trace``: Hutchinson's estimator ``tr H = E[v^T H v]`` with Rademacher probes
  ``v`` (Hutchinson 1990; Yao et al. 2020); value and bootstrap 95 % interval are the mean
  over the ``trace_probes`` probes (``n``).
- ``basin_curve_loss``: the 1-D loss curves ``L(theta + r d)`` along ``n_directions``
  random directions ``d``, **filter-normalised** (Li et al. 2018, "Visualizing the Loss
  Landscape of Neural Nets"): ``d`` is Gaussian, then each filter (row ``i`` of a weight
  matrix: an output unit of a linear map, a token's embedding) is rescaled to the norm of
  the same filter of the weights, ``d_i <- d_i ||theta_i|| / ||d_i||``; 1-D parameters
  (norm gains, biases) are zero in ``d``, as in Li et al. Extra columns ``radius`` (``r``,
  option ``radii``) and ``direction`` (0, 1, ...). Filter normalisation removes the scale
  symmetry that normalisation layers give the weights, so radii compare across weight decays.
- ``basin_radius``: per direction, the radius at which the loss first rises by
  ``basin_threshold`` nats over the loss at ``r = 0`` (linear interpolation between grid
  radii); a direction that never rises that much within the grid counts as the largest
  radius (censored: a lower bound; the extra column ``n_censored`` counts them). Value and
  bootstrap 95 % interval: mean over directions (``n``).

Perturbations change the checkpoint's weights in place and restore them bit-exactly from a
saved copy (:func:`restored`), also on error. Random draws use ``seed``: every checkpoint of
a sweep sees the same probes and the same Gaussian draws behind its directions.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from einops import rearrange

from plastiscope.analysis import Analysis, Inputs, merge_options
from plastiscope.checkpoint import Checkpoint
from plastiscope.data import Documents, encode
from plastiscope.results import make_frame
from plastiscope.stats import mean_ci
from plastiscope.train import batchify

NAME = "landscape"
DEFAULTS: dict[str, Any] = {
    "n_docs": 32,  # the fixed batch: the first n_docs documents of train_data
    "power_iterations": 20,  # at most
    "power_tol": 1e-3,  # stop when the relative change of the estimate is below this
    "trace_probes": 10,
    "n_directions": 4,
    "radii": [0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0],
    "basin_threshold": 0.1,  # nats
    "seed": 0,
    "n_resamples": 1000,
}

log = logging.getLogger("plastiscope")

Params = Sequence[torch.Tensor]
Vectors = list[torch.Tensor]
Estimate = tuple[float, int, float]  # (eigenvalue, iterations, last change)


# ---------------------------------------------------------------------- loss on a fixed batch
def fixed_batch(checkpoint: Checkpoint, data: Documents, n_docs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``tokens [doc, pos]`` and ``labels [doc, pos]`` (-100 on padding) of the first ``n_docs`` documents."""
    tokenizer = checkpoint.tokenizer
    ids = [encode(tokenizer, text, checkpoint.n_ctx) for text in data.texts[:n_docs]]
    ids = [x for x in ids if len(x) >= 2]  # a document without a target token adds nothing
    if not ids:
        raise ValueError(f"{checkpoint.name}: no document of train_data has a token to predict")
    return batchify(ids, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)


def batch_loss_fn(model: Any, tokens: torch.Tensor, labels: torch.Tensor) -> Callable[[], torch.Tensor]:
    """``L()``: mean next-token cross-entropy over the real target tokens of the batch (a scalar tensor)."""
    mask = (labels != -100).long()
    return lambda: model(tokens, attention_mask=mask, labels=labels).loss


# ---------------------------------------------------------------------- Hessian
def _dot(a: Params, b: Params) -> torch.Tensor:
    """``sum_i a_i . b_i`` accumulated in float64 (no cancellation in shifted Rayleigh quotients)."""
    return sum((x.double() * y.double()).sum() for x, y in zip(a, b))


def _normalize(v: Vectors) -> Vectors:
    norm = torch.sqrt(_dot(v, v))
    return [(x / norm).to(x.dtype) for x in v]


def hvp_operator(loss_fn: Callable[[], torch.Tensor], params: Params) -> Callable[[Params], Vectors]:
    """``v -> H v``, the Hessian of ``loss_fn()`` w.r.t. ``params`` times ``v`` (Pearlmutter's trick).

    The gradient graph is built once (``create_graph=True``); each product is one more
    backward pass through it: ``H v = d(g . v)/d theta``.
    """
    grads = torch.autograd.grad(loss_fn(), params, create_graph=True)

    def hvp(v: Params) -> Vectors:
        return list(torch.autograd.grad(grads, params, grad_outputs=list(v), retain_graph=True))

    return hvp


def dominant_eigenvalue(
    hvp: Callable[[Params], Vectors], params: Params, max_iter: int = 20, tol: float = 1e-3, seed: int = 0,
    shift: float = 0.0,
) -> tuple[float, int, float]:
    """Power iteration on ``H - shift I``: ``(eigenvalue of H, iterations, last change)``.

    Starts from a Gaussian vector (``seed``); each iteration ``v <- (H - shift I) v / ||.||``,
    so ``v`` converges to the eigenvector of ``H - shift I`` of largest magnitude, and the
    estimate is the Rayleigh quotient of ``H`` itself, ``v^T H v`` (float64; never ``shift``
    plus a small difference). Stops when the estimate changes by less than ``tol`` times its
    magnitude, or after ``max_iter`` products. ``last change`` is ``|estimate - previous
    estimate|`` of the last iteration (inf after one).
    """
    generator = torch.Generator().manual_seed(seed)
    v = _normalize([torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params])
    estimate, change = math.nan, math.inf
    for iteration in range(1, max_iter + 1):
        hv = [h.detach() for h in hvp(v)]
        previous, estimate = estimate, float(_dot(hv, v))
        v = _normalize([h - shift * x for h, x in zip(hv, v)] if shift else hv)
        if iteration > 1:
            change = abs(estimate - previous)
            if change <= tol * abs(previous):
                break
    return estimate, iteration, change


def top_eigenvalue(
    hvp: Callable[[Params], Vectors], params: Params, max_iter: int = 20, tol: float = 1e-3, seed: int = 0
) -> tuple[float, int, float]:
    """The algebraically largest Hessian eigenvalue: ``(eigenvalue, iterations, last change)``.

    Power iteration (:func:`dominant_eigenvalue`) finds the eigenvalue of largest magnitude,
    the top one near a minimum. Away from a minimum it can be a negative one, ``lambda_neg``;
    then a second power iteration on ``H - lambda_neg I`` (whose spectrum is >= 0 and whose
    largest eigenvalue is ``lambda_max - lambda_neg``) finds the top one. ``iterations``
    counts both runs (each at most ``max_iter``); ``last change`` is the last run's. The
    shifted run converges slowly when ``lambda_max`` is small against ``|lambda_neg|`` (the
    bulk of near-zero eigenvalues becomes a cluster near the top): then it usually stops at
    ``max_iter`` with an underestimate, and its last change understates the error.
    """
    top, _ = eigenvalue_extremes(hvp, params, max_iter, tol, seed)
    return top


def eigenvalue_extremes(
    hvp: Callable[[Params], Vectors], params: Params, max_iter: int = 20, tol: float = 1e-3, seed: int = 0
) -> tuple[Estimate, Estimate | None]:
    """``(top, negative)``: :func:`top_eigenvalue`'s estimate and, when the dominant eigenvalue
    is negative, that one's (the most negative eigenvalue; else None). ``top``'s iterations
    count both runs."""
    value, iterations, change = dominant_eigenvalue(hvp, params, max_iter, tol, seed)
    if value >= 0:
        return (value, iterations, change), None
    top, more, top_change = dominant_eigenvalue(hvp, params, max_iter, tol, seed + 1, shift=value)
    return (top, iterations + more, top_change), (value, iterations, change)


def hutchinson_samples(hvp: Callable[[Params], Vectors], params: Params, n_probes: int = 16, seed: int = 0) -> np.ndarray:
    """``[probe]`` samples ``v^T H v`` with Rademacher ``v``; their mean estimates ``tr H`` (Hutchinson 1990)."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(n_probes):
        v = [(torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).to(p.dtype) for p in params]
        samples.append(float(_dot(hvp(v), v)))
    return np.array(samples)


# ---------------------------------------------------------------------- basin
def filter_normalized_direction(params: Params, generator: torch.Generator) -> Vectors:
    """A Gaussian direction rescaled filter-wise to the weights' norms (Li et al. 2018).

    For a parameter of 2 or more dimensions ``[filter, ...]`` each filter ``d_i`` gets the
    norm of ``theta_i``; 1-D parameters (biases, norm gains) get zeros.
    """
    direction = []
    for p in params:
        d = torch.randn(p.shape, generator=generator, dtype=p.dtype)
        if p.dim() < 2:
            direction.append(torch.zeros_like(p))
            continue
        rows_d = rearrange(d, "f ... -> f (...)")
        rows_p = rearrange(p.detach(), "f ... -> f (...)")
        scale = rows_p.norm(dim=1, keepdim=True) / rows_d.norm(dim=1, keepdim=True).clamp_min(1e-12)
        direction.append((rows_d * scale).reshape(p.shape))
    return direction


@contextlib.contextmanager
def restored(params: Params) -> Iterator[list[torch.Tensor]]:
    """Yield a saved copy of ``params``; on exit (also on error) copy it back bit-exactly."""
    saved = [p.detach().clone() for p in params]
    try:
        yield saved
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


def loss_curve(loss_fn: Callable[[], torch.Tensor], params: Params, direction: Params, radii: Sequence[float]) -> np.ndarray:
    """``[radius]`` loss at ``theta + r d`` for every ``r`` of ``radii``; the weights are restored after."""
    losses = []
    with restored(params) as origin, torch.no_grad():
        for r in radii:
            for p, o, d in zip(params, origin, direction):
                p.copy_(o).add_(d, alpha=float(r))
            losses.append(float(loss_fn()))
    return np.array(losses)


def basin_radius(radii: Sequence[float], losses: Sequence[float], threshold: float) -> tuple[float, bool]:
    """``(radius, censored)``: where ``losses`` first exceed ``losses[0] + threshold``.

    ``radii`` increase from 0; the crossing is interpolated linearly between grid radii.
    ``censored`` is True when the loss never exceeds it (the radius is then ``radii[-1]``).
    A NaN/inf loss counts as above the threshold.
    """
    radii, losses = np.asarray(radii, dtype=float), np.asarray(losses, dtype=float)
    rise = np.where(np.isfinite(losses), losses - losses[0], np.inf)
    above = np.flatnonzero(rise >= threshold)
    if not above.size:
        return float(radii[-1]), True
    i = int(above[0])
    if i == 0:  # the loss at r = 0 itself is not finite
        return float(radii[0]), False
    if not np.isfinite(rise[i]):
        return float(radii[i - 1]), False
    r0, r1, y0, y1 = radii[i - 1], radii[i], rise[i - 1], rise[i]
    return float(r0 + (threshold - y0) * (r1 - r0) / (y1 - y0)), False


# ---------------------------------------------------------------------- the task
def _check_options(options: dict[str, Any]) -> dict[str, Any]:
    config = merge_options("landscape", DEFAULTS, options)
    for key in ("n_docs", "power_iterations", "trace_probes", "n_directions", "n_resamples"):
        if not isinstance(config[key], int) or isinstance(config[key], bool) or config[key] < 0:
            raise ValueError(f"landscape: {key} must be an integer >= 0, got {config[key]!r}")
    if config["n_docs"] < 1:
        raise ValueError("landscape: n_docs must be at least 1")
    radii = [float(r) for r in config["radii"]]
    if len(radii) < 2 or radii[0] != 0 or any(b <= a for a, b in zip(radii, radii[1:])):
        raise ValueError(f"landscape: radii must start at 0 and increase strictly (at least two), got {config['radii']!r}")
    config["radii"] = radii
    if not config["basin_threshold"] > 0:
        raise ValueError(f"landscape: basin_threshold must be > 0 nats, got {config['basin_threshold']!r}")
    return config


class LandscapeTask:
    """Sharpness and basin size of one checkpoint, computed in :meth:`finish` (gradients: no shared pass)."""

    def __init__(self, checkpoint: Checkpoint, train_data: Documents, config: dict[str, Any]):
        self.checkpoint, self.train_data, self.config = checkpoint, train_data, config
        self.passes: dict[str, list] = {}

    def finish(self) -> pd.DataFrame:
        cfg = self.config
        model = self.checkpoint.hf_model
        tokens, labels = fixed_batch(self.checkpoint, self.train_data, cfg["n_docs"])
        loss_fn = batch_loss_fn(model, tokens, labels)
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
                    records += eigenvalue_records(top, negative, cfg["power_tol"], self.checkpoint.name)
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
        return make_frame(self.checkpoint, NAME, records)

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


def _eigenvalue_record(metric: str, estimate: Estimate) -> dict[str, Any]:
    value, iterations, change = estimate
    return {"metric": metric, "value": value, "ci_low": value - change, "ci_high": value + change, "n": iterations,
            "relative_change": change / abs(value) if value else math.nan}


def eigenvalue_records(top: Estimate, negative: Estimate | None, tol: float, name: str = "") -> list[dict[str, Any]]:
    """Rows ``hessian_top_eigenvalue`` (+ ``hessian_min_eigenvalue`` when the dominant one is negative).

    The top eigenvalue of a shifted run that did not converge (relative change above
    ``tol``) is NaN: such an estimate can be far below the truth.
    """
    record = _eigenvalue_record("hessian_top_eigenvalue", top)
    if negative is None:
        return [record]
    if not record["relative_change"] <= tol:
        log.warning("%s: the Hessian's dominant eigenvalue is negative (%.4g) and the shifted power iteration for the top "
                    "one did not converge (relative change %.2g); hessian_top_eigenvalue is NaN",
                    name, negative[0], record["relative_change"])
        record.update(value=math.nan, ci_low=math.nan, ci_high=math.nan)
    return [record, _eigenvalue_record("hessian_min_eigenvalue", negative)]


def start(checkpoint: Checkpoint, inputs: Inputs, **options: Any) -> LandscapeTask:
    return LandscapeTask(checkpoint, inputs.train_data, _check_options(options))


ANALYSIS = Analysis(name=NAME, inputs=("train_data",), start=start, options=dict(DEFAULTS))
