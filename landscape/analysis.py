"""The ``landscape`` analysis: sharpness and basins of a checkpoint's loss and downstream accuracy.

Flatter minima and wider basins are the usual explanations of why some checkpoints adapt
better. Sharpness is measured on a **fixed batch** of training data (the first ``n_docs``
documents of ``train_data`` that have a target token, one document per sequence as in
:mod:`plastiscope.data`): ``L(theta)`` is their token-weighted mean next-token cross-entropy
(nats; :func:`plastiscope.losses.sequence_loss`), over **all** the model's parameters, in eval
mode (no dropout).

**Sharpness, raw** (Hessian ``H`` of ``L``; products by Pearlmutter's double backward):

- ``hessian_max_eigenvalue`` / ``hessian_min_eigenvalue``: the largest / smallest eigenvalue
  of ``H`` from one Lanczos run (:func:`~.hessian.lanczos_extremes`; at most
  ``lanczos_steps`` products, fewer once the largest's Ritz residual is below ``lanczos_tol``
  times its magnitude and the smallest one's below ``lanczos_tol`` times the spectrum's scale
  ``max(|largest|, |smallest|)``, so that each is within ``lanczos_tol ||H||`` of an
  eigenvalue, and in practice far closer: of order residual^2 / gap. Near a minimum the
  smallest eigenvalue is near 0 in a cluster: against its own magnitude it would never
  converge). ``n``: documents of the batch; details ``residual`` (the Ritz residual
  ``|beta_k s_k|``: an eigenvalue of ``H`` lies within it of ``value``; a convergence
  measure, never an interval) and ``steps`` (products run). No interval: the batch is fixed,
  the estimate deterministic up to its residual. A negative minimum says the checkpoint is
  not at a minimum of ``L`` (a saddle or a slope).
- ``hessian_trace``: Hutchinson's ``tr H = E[v^T H v]`` with ``trace_probes`` Rademacher
  probes (Hutchinson 1990; Yao et al. 2020); value and bootstrap 95 % interval over the
  probes (``n``).

The eigenvalues and traces, raw and adaptive, are computed together
(:func:`~.hessian.sharpness`): each Lanczos run starts from the first trace probe, so its
first product is also that trace's first sample, and the products run in rounds of
``products_per_round`` that share one gradient graph (a forward and backward per round, a
double backward per product); when the batch is one micro-batch, its graph is built once and
kept for every round (:func:`~.hessian.hvp_products`).
The traces are those of separate Hutchinson runs with the same probes; the eigenvalues those
of separate Lanczos runs from that start.

Raw sharpness is not comparable across weight decays. Normalisation layers make the loss
invariant to rescaling the weights that feed them (and attention to ``W_Q -> c W_Q, W_K -> W_K /
c``), and under ``theta -> c theta`` the Hessian scales as ``1 / c^2`` (Dinh et al. 2017, "Sharp
Minima Can Generalize For Deep Nets"). Weight decay shrinks the weights, so it raises raw
curvature even where the function, and its basin in any scale-free sense, is unchanged or
wider: on a weight-decay sweep raw sharpness rising with weight decay is not evidence of
sharper, less adaptable minima.

**Sharpness, scale-invariant** (adaptive sharpness: Kwon et al. 2021, "ASAM"; Andriushchenko et
al. 2023, "A modern look at the relationship between sharpness and generalization"): the same
Lanczos and Hutchinson estimates on ``diag(|theta|) H diag(|theta|)``, the Hessian of
``w -> L(theta + |theta| * w)``, i.e. of perturbations measured relative to each weight's size
(:func:`~.hessian.adaptive_operator`). It is unchanged by any element-wise rescaling that
leaves the loss unchanged, so it compares checkpoints trained at different weight decays:

- ``adaptive_max_eigenvalue``: its largest eigenvalue (details as above);
- ``adaptive_trace``: its trace, ``sum_i theta_i^2 H_ii`` (Hutchinson, interval as above).

For every sharpness metric lower means flatter.

**Basins** (Chen et al. 2025, "Unveiling the Basin-Like Loss Landscape in Large Language
Models", arXiv 2505.17646; :mod:`.basin`): directions ``u`` rescaled to ``||u|| = sqrt(d)``
(``d`` parameters: the norm of a standard Gaussian), so ``theta + sigma u`` has the size of
Gaussian weight noise of standard deviation ``sigma`` (absolute, in weight units, over all
parameters). Two objectives (variant column ``objective``): ``"loss"``, ``L`` on the fixed
batch, and ``"accuracy"``, the rank-classification accuracy
(:func:`plastiscope.downstream.label_accuracy`) on ``basin_docs`` documents of the labelled
downstream task ``finetune_data`` (option ``label_column``; a 0-1 score as in Chen et al.).
Two kinds of direction (variant column ``direction``): ``"random"``, ``n_directions`` Gaussian
directions (the most-case landscape), and ``"worst_case"``, the direction of norm ``sigma
sqrt(d)`` found by ``worst_case_steps`` steps of norm-constrained gradient ascent at each
``sigma`` on the objective's loss (the worst-case landscape; for accuracy, whose gradient is
zero almost everywhere, the surrogate is the clipped margin of rank classification,
:func:`rank_loss_pieces`; a local search, so its drop is a lower bound on the worst
case).

- ``basin_curve`` (variant columns ``objective``, ``direction``, ``sigma``): the score at
  ``theta + sigma u`` at the ``sigma`` s of the grid ``sigmas`` that were scored. Random
  directions: the mean over the directions scored there, with a bootstrap 95 % interval over
  them (``n`` directions), an estimate of the expected score under Gaussian weight noise of
  scale ``sigma``; worst case: the worst score the one search found within radius ``sigma``
  (the ball of radius ``sigma`` holds every smaller one, so the curve never recovers; ``n`` =
  1, no interval). With ``basin_search="bisect"`` (default) only the ``sigma`` s that a
  bisection for each basin's edge needs are scored (:func:`~.basin.first_beyond`: about
  ``log2(len(sigmas))`` for the first direction, two for each further one, every direction
  at the grid points around the edge), so the curve has a few points; with ``"grid"`` every
  ``sigma`` is scored up to the basin's edge (the whole curve for random directions; the
  worst-case search stops past the edge either way). The default grid
  is log-spaced (1, 2, 5 per decade) from ``1e-6`` to ``0.1``: worst-case basins are orders of
  magnitude narrower than random ones and shrink like ``1 / sqrt(d)``.
- ``basin_sigma`` (variant columns ``objective``, ``direction``): the basin radius, the largest
  ``sigma`` up to which the drop (accuracy lost, or loss gained, against ``sigma = 0``; the
  mean over directions for random ones) stays ``<= tau`` (``accuracy_tau`` or ``loss_tau``,
  detail ``tau``), interpolated linearly on the grid. Bisection and grid give the same radius
  wherever the drop grows with ``sigma`` (a drop that crosses ``tau`` and falls back below it
  is found at one of its crossings, not necessarily the first): for random directions the
  same directions are scored at the same ``sigma`` s around the edge. The loss's worst-case
  search walks up from two grid points below the edge that the top eigenvalue predicts
  (``1/2 sigma^2 d lambda_max = tau``, :func:`predicted_edges`;
  :func:`~.basin.worst_case_near_edge`), so it refines its direction over fewer ``sigma`` s
  than a walk from the grid's start: a local search either way, its radius can come out a
  little wider (on the benchmark's model 1.3 %, in the same grid interval). Accuracy's
  worst-case search, with no prediction, walks from the grid's start as with ``"grid"``.
  The random basins' first guess is the edge the trace predicts: right, it saves scores;
  wrong, it costs two. Detail ``censored``: True when the drop
  never exceeds ``tau`` on the grid, so the radius is at least the value given (the grid's
  last ``sigma``). Detail ``below_grid``: True when the drop exceeds ``tau`` already at the
  grid's first ``sigma > 0``, so the radius is interpolated between 0 and that ``sigma`` (add
  smaller sigmas to resolve it). Random directions: bootstrap 95 % interval over directions (``n``); the
  documents are fixed (the same for every checkpoint), so the interval does not cover their
  sampling. Higher is better: a wider basin.

**Basin against fine-tuning displacement.** The plasticity analysis reports
``finetune_displacement`` ``= ||theta_ft - theta_0||_2`` over all parameters, for the fine-tuning
run it selects. Chen et al.'s bound (randomized smoothing: a ``[0, 1]`` score smoothed by
``N(0, sigma^2 I)`` is ``1 / (sqrt(2 pi) sigma)``-Lipschitz) says the Gaussian-smoothed
accuracy drops by at most ``finetune_displacement / (sqrt(2 pi) sigma)`` during that
fine-tuning. Both are measured in the same units over the same parameters, so with
``sigma = basin_sigma`` (objective ``accuracy``, direction ``random``), where the smoothing
itself costs at most ``tau``, the smoothed accuracy after fine-tuning is at least the
checkpoint's accuracy minus ``tau`` minus ``finetune_displacement / (sqrt(2 pi) basin_sigma)``.
That last quantity, in accuracy units, is what a report can show for each checkpoint: at or
below ``tau`` the run stayed within the basin's guarantee; at 1 or more the bound says nothing
(the wider the basin, the further fine-tuning may move under the same guarantee). The bound
holds for the bounded 0-1 score only, not for the loss. Note the
scales: ``sigma`` is a per-weight standard deviation and the displacement a norm over ``d``
weights, so a displacement equal to ``sigma sqrt(d)`` is one noise draw's length.

Basins are not scale-invariant: they are in absolute weight units, which is what makes them
commensurate with the displacement (the adaptive sharpness above is the scale-free
comparison).

**Device and precision.** Everything runs on the checkpoint's device. Second derivatives and
perturbations need float32 parameters: a checkpoint loaded in bfloat16 or float16 is
evaluated in a float32 copy on its device (:func:`plastiscope.training.trainable_copy`; its
forward passes then run in float32 too), freed afterwards; a float32 model is used in place and
its weights are restored bit-exactly after every perturbation (:func:`~.basin.restored`), also
on error. Random directions and probes are drawn on the CPU from generators seeded with
``seed`` and moved to the device: every checkpoint of a sweep sees the same draws, on any
device. Hessian-vector products, gradients and losses run over micro-batches of at most
``micro_batch_tokens`` padded tokens (at least one document each): the product of a
token-weighted mean loss is the token-weighted sum of the micro-batches' products, each
rebuilt per product (memory: one micro-batch's double-backward graph). Double backward
through attention needs PyTorch's math attention kernel (the fused ones have no second
derivative), so products run under it.
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
import torch.nn.functional as F
from einops import rearrange

from plastiscope.checkpoint import Checkpoint
from plastiscope.data import Documents, encode, load_documents, pad
from plastiscope.downstream import DownstreamTask, label_accuracy, label_reserve, labelled_ids
from plastiscope.losses import sequence_loss, token_losses
from plastiscope.memo import Memo
from plastiscope.metrics import Headline, Metric
from plastiscope.options import Integer, ListOf, Nullable, OneOf, Option, OptionTable, Real, Text
from plastiscope.results import ResultsStore, make_frame
from plastiscope.runner import Analysis, Inputs, run_one
from plastiscope.stats import bootstrap_ci, mean_ci
from plastiscope.sweep import Sweep
from plastiscope.training import trainable_copy

from .basin import (
    basin_sigma,
    bisected_random_curves,
    drops,
    gaussian_direction,
    mean_basin_sigma,
    n_weights,
    perturbed_scores,
    worst_case_near_edge,
    worst_so_far,
)
from .hessian import Extremes, Vectors, hvp_products, sharpness

NAME = "landscape"
VARIANTS = ("objective", "direction", "sigma")
Loss = Callable[[], torch.Tensor]


def _check(config: dict[str, Any]) -> dict[str, Any]:
    if config["sigmas"][0] != 0:
        raise ValueError(f"sigmas must start at 0 and increase strictly (at least two), got {config['sigmas']!r}")
    if not any(config[k] for k in ("lanczos_steps", "trace_probes", "n_directions", "worst_case_steps")):
        raise ValueError("lanczos_steps, trace_probes, n_directions and worst_case_steps are all 0: nothing to measure")
    return config


OPTIONS = OptionTable({
    "n_docs": Option(32, Integer(1), "the fixed batch: the first n_docs documents of train_data"),
    "micro_batch_tokens": Option(8192, Integer(1), "padded tokens per micro-batch of products, gradients and losses "
                                 "(at least one document); at 1B parameters and 2048-token documents on an 80 GB GPU: 2048"),
    "lanczos_steps": Option(40, Integer(0), "Lanczos steps (Hessian-vector products) at most, per operator (0: no eigenvalues)"),
    "lanczos_tol": Option(1e-3, Real(0, None), "stop once the largest eigenvalue's Ritz residual (an eigenvalue lies within it) is "
                          "below this times its magnitude, and the smallest one's below this times the larger magnitude of the two "
                          "(formerly its own magnitude, never reached near 0; on the benchmark's model both agree with that "
                          "criterion's to 1e-5 relative and with ARPACK's to 8e-6)"),
    "products_per_round": Option(2, Integer(1), "Hessian-vector products sharing one gradient graph (a forward and backward each "
                                 "round, once for all rounds when the batch is one micro-batch); each holds two parameter-sized "
                                 "float32 vectors while in flight (8 GB at 1B parameters); 1: the least memory"),
    "trace_probes": Option(10, Integer(0), "Hutchinson probes per trace (0: no traces)"),
    "sigmas": Option([0.0, 1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1],
                     ListOf(Real(0, None), min_len=2, increasing=True), "noise scales of the basins, from 0 (weight units)"),
    "n_directions": Option(5, Integer(0), "random Gaussian directions of the basins (0: none)"),
    "worst_case_steps": Option(3, Integer(0), "gradient-ascent steps per sigma of the worst-case search (0: no worst case)"),
    "basin_search": Option("bisect", OneOf("bisect", "grid"), "bisect: score the sigmas a bisection for each basin's edge needs "
                           "(random radii as grid's where the drop grows with sigma, worst-case ones to the grid's resolution; "
                           "basin_curve at those sigmas only); "
                           "grid: score every sigma up to the edge (the whole basin_curve, about 3x the forward passes)"),
    "loss_tau": Option(0.1, Real(0, None, closed="neither"), "loss rise (nats) that ends a basin"),
    "accuracy_tau": Option(0.05, Real(0, 1, closed="neither"), "accuracy drop that ends a basin"),
    "label_column": Option(None, Nullable(Text()), "label column of finetune_data: basins of its accuracy; null: loss only"),
    "basin_docs": Option(64, Integer(1), "documents of finetune_data whose accuracy is scored (a seeded sample)"),
    "seed": Option(0, Integer(0), "seed of probes, directions and the document sample"),
    "n_resamples": Option(1000, Integer(1), "bootstrap resamples"),
}, check=_check)

log = logging.getLogger("plastiscope")


def fixed_batch(checkpoint: Checkpoint, data: Documents, n_docs: int) -> list[list[int]]:
    """Token ids of the first ``n_docs`` documents of ``data`` (those with a target token)."""
    ids = [encode(checkpoint.tokenizer, text, checkpoint.n_ctx) for text in data.texts[:n_docs]]
    ids = [x for x in ids if len(x) >= 2]  # a document without a target token adds nothing
    if not ids:
        raise ValueError(f"{checkpoint.name}: no document of train_data has a token to predict")
    return ids


def micro_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Consecutive groups of document indices whose padded size (documents x longest) is at most ``max_tokens``.

    Every group holds at least one document, so a document longer than ``max_tokens`` is a group of its own.
    """
    groups: list[list[int]] = []
    width = 0
    for i, length in enumerate(lengths):
        if groups and (len(groups[-1]) + 1) * max(width, length) <= max_tokens:
            groups[-1].append(i)
            width = max(width, length)
        else:
            groups.append([i])
            width = length
    return groups


def loss_pieces(model: Any, ids: Sequence[Sequence[int]], pad_id: int, max_tokens: int) -> list[Loss]:
    """Micro-batch shares of the token-weighted mean loss of ``ids``: they sum to ``sequence_loss`` of the whole batch.

    Piece ``b`` is ``sequence_loss`` of micro-batch ``b`` times its share of the target
    tokens; differentiable, on the model's device.
    """
    device = next(model.parameters()).device
    total = sum(len(x) - 1 for x in ids)
    pieces = []
    for group in micro_batches([len(x) for x in ids], max_tokens):
        tokens, mask = pad([ids[i] for i in group], pad_id)
        share = sum(len(ids[i]) - 1 for i in group) / total
        pieces.append(_share_of_mean_loss(model, tokens.to(device), mask.to(device), share))
    return pieces


def _share_of_mean_loss(model: Any, tokens: torch.Tensor, mask: torch.Tensor, share: float) -> Loss:
    return lambda: sequence_loss(model, tokens, mask) * share


def _share_of_rank_loss(model: Any, tokens: torch.Tensor, mask: torch.Tensor, part: torch.Tensor, truth: torch.Tensor,
                        total: int) -> Loss:
    def piece() -> torch.Tensor:
        loss, _ = token_losses(model(tokens, attention_mask=mask.long()).logits, tokens, mask)
        scores = rearrange(-(loss * part).sum(1), "(doc candidate) -> doc candidate", doc=len(truth))
        true = scores.gather(1, rearrange(truth, "doc -> doc 1"))
        best_other = scores.masked_fill(F.one_hot(truth, scores.shape[1]).bool(), -torch.inf).amax(1, keepdim=True)
        return (best_other - true).clamp(max=0).sum() / total

    return piece


def rank_loss_pieces(model: Any, task: DownstreamTask, tokenizer: Any, n_ctx: int, rows: Sequence[int], pad_id: int,
                     max_tokens: int) -> list[Loss]:
    """Micro-batch shares of the mean clipped rank-classification margin over documents ``rows`` of ``task``.

    Each candidate label ``c`` of a document scores the summed log-probability ``s_c`` of its
    tokens after ``text + cue``, as :func:`plastiscope.downstream.label_accuracy` scores it; a
    document's margin is ``max_{c != true} s_c - s_true`` (negative while it is classified
    right) and the loss is ``min(margin, 0)``, averaged over the documents (the margin loss of
    Carlini & Wagner 2017); the pieces sum to it. Raising it flips right documents to wrong
    ones and ignores documents already wrong, so it attacks accuracy itself, where a
    cross-entropy could grow without bound on the wrong ones: the worst-case search's
    surrogate. A micro-batch holds every candidate of its documents.
    """
    device = next(model.parameters()).device
    candidates = sorted(set(task.labels))
    reserve = label_reserve(task, tokenizer)
    sequences = [[labelled_ids(tokenizer, task.documents.texts[i], task.label_name, c, n_ctx, reserve) for c in candidates]
                 for i in rows]
    lengths = [max(len(ids) for ids, _ in doc) for doc in sequences]
    pieces = []
    for group in micro_batches(lengths, max(1, max_tokens // len(candidates))):
        chunk = [pair for i in group for pair in sequences[i]]  # document-major: [doc, candidate]
        tokens, mask = pad([ids for ids, _ in chunk], pad_id)
        part = torch.zeros_like(mask[:, 1:])  # target p + 1 sits at column p
        for r, (ids, at) in enumerate(chunk):
            part[r, at - 1 : len(ids) - 1] = True
        truth = torch.tensor([candidates.index(task.labels[rows[i]]) for i in group])
        pieces.append(_share_of_rank_loss(model, tokens.to(device), mask.to(device), part.to(device), truth.to(device), len(rows)))
    return pieces


def gradient_fn(pieces: Sequence[Loss], params: Sequence[torch.Tensor]) -> Callable[[], tuple[float, Vectors]]:
    """``() -> (loss, gradient)`` of the summed ``pieces``, accumulated over micro-batches."""

    def gradient() -> tuple[float, Vectors]:
        total, grads = 0.0, [torch.zeros_like(p) for p in params]
        for piece in pieces:
            loss = piece()
            for g, h in zip(grads, torch.autograd.grad(loss, params, materialize_grads=True)):
                g.add_(h)
            total += float(loss.detach())
        return total, grads

    return gradient


def loss_value(pieces: Sequence[Loss]) -> Callable[[], float]:
    """``() -> float``: the summed ``pieces`` without gradients."""

    def value() -> float:
        with torch.no_grad():
            return float(sum(float(piece()) for piece in pieces))

    return value


@contextlib.contextmanager
def math_attention() -> Iterator[None]:
    """PyTorch's math attention kernel: the fused ones have no double backward."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        yield


def working_model(model: Any) -> tuple[Any, bool]:
    """``(model in float32, is_copy)``: the model itself when all its parameters are float32, else a float32 copy on its device."""
    if all(p.dtype == torch.float32 for p in model.parameters()):
        return model, False
    return trainable_copy(model), True


def eigenvalue_records(prefix: str, extremes: Extremes, n_docs: int, minimum: bool) -> list[dict[str, Any]]:
    """Rows ``{prefix}_max_eigenvalue`` (and ``{prefix}_min_eigenvalue`` when ``minimum``): value, ``n``, ``residual``, ``steps``."""
    rows = [{"metric": f"{prefix}_max_eigenvalue", "value": extremes.max_value, "residual": extremes.max_residual}]
    if minimum:
        rows.append({"metric": f"{prefix}_min_eigenvalue", "value": extremes.min_value, "residual": extremes.min_residual})
    return [r | {"n": n_docs, "steps": extremes.steps} for r in rows]


def basin_records(
    objective: str, direction: str, sigmas: Sequence[float], curves: np.ndarray, higher_is_better: bool, tau: float,
    boot: dict[str, int],
) -> list[dict[str, Any]]:
    """``basin_curve`` rows and the ``basin_sigma`` row of ``curves [direction, sigma]`` (one row for the worst case).

    A NaN is a ``sigma`` not scored for that direction (a bisection scores few): the curve has
    a row at each ``sigma`` scored for some direction (their mean, ``n`` of them), and the
    radius is that of the mean drop over the ``sigmas`` scored for every direction, which
    hold the grid points around each crossing (:func:`~.basin.bisected_random_curves`).
    """
    variant = {"objective": objective, "direction": direction}
    curves = np.asarray(curves, dtype=float)
    records = []
    for j, sigma in enumerate(sigmas):
        scored = curves[~np.isnan(curves[:, j]), j]
        if not len(scored):
            continue
        value, low, high, n = mean_ci(scored, **boot)
        records.append({"metric": "basin_curve", "value": value, "ci_low": low, "ci_high": high, "n": len(scored),
                        "sigma": float(sigma)} | variant)
    complete = ~np.isnan(curves).any(axis=0)
    grid, drop = np.asarray(sigmas, dtype=float)[complete], drops(curves[:, complete], higher_is_better)
    radius, censored = basin_sigma(grid, drop.mean(axis=0), tau)
    _, low, high = bootstrap_ci(drop, statistic=lambda d: mean_basin_sigma(grid, d, tau), **boot)
    below_grid = not censored and radius <= sigmas[1]  # past tau already at the grid's first sigma > 0
    censored = censored and bool(complete[-1])  # the mean drop stays within tau up to the grid's last sigma
    records.append({"metric": "basin_sigma", "value": radius, "ci_low": float(low), "ci_high": float(high), "n": len(curves),
                    "tau": tau, "censored": censored, "below_grid": below_grid} | variant)
    return records


def predicted_edges(records: list[dict[str, Any]], sigmas: Sequence[float], tau: float, params: list[torch.Tensor]) -> dict[str, int]:
    """Grid indices where the loss basins' edges are expected, from the sharpness just measured: bisection's first guesses.

    The quadratic model ``L(theta + delta) - L(theta) = g . delta + 1/2 delta^T H delta``
    along a random direction of norm ``sigma sqrt(d)`` averages ``1/2 sigma^2 tr H`` (the
    gradient term averages 0), so the random basin's edge is near ``sqrt(2 tau / tr H)``;
    along the top eigenvector it is ``1/2 sigma^2 d lambda_max``, the worst case's edge near
    ``sqrt(2 tau / (d lambda_max))`` (nearer 0 where the gradient adds to it). A guess only
    saves scores when right (:func:`~.basin.first_beyond`); the radius is measured either way.
    """
    values = {r["metric"]: r["value"] for r in records}
    d = sum(p.numel() for p in params)
    edges = {"loss random": values.get("hessian_trace", np.nan), "loss worst_case": d * values.get("hessian_max_eigenvalue", np.nan)}
    return {key: int(np.searchsorted(sigmas, np.sqrt(2 * tau / curvature))) for key, curvature in edges.items()
            if np.isfinite(curvature) and curvature > 0}


def beyond_basin(base: float, higher_is_better: bool, tau: float) -> Callable[[float], bool]:
    """``score -> True`` when its drop from ``base`` exceeds ``tau`` (or is not a number)."""
    return lambda score: not drops(np.array([base, score]), higher_is_better)[1] <= tau


class LandscapeTask:
    """Sharpness and basins of one checkpoint, computed in :meth:`finish` (gradients: no shared pass)."""

    def __init__(self, checkpoint: Checkpoint, train_data: Documents, task: DownstreamTask | None, config: dict[str, Any]):
        self.checkpoint, self.train_data, self.task, self.config = checkpoint, train_data, task, config
        self.passes: dict[str, list] = {}

    def finish(self) -> pd.DataFrame:
        """Sharpness and basin rows; the checkpoint's weights are left as they were."""
        cfg = self.config
        model, _ = working_model(self.checkpoint.hf_model)
        params = list(model.parameters())
        pad_id = self.checkpoint.tokenizer.pad_token_id
        pad_id = 0 if pad_id is None else pad_id
        ids = fixed_batch(self.checkpoint, self.train_data, cfg["n_docs"])
        pieces = loss_pieces(model, ids, pad_id, cfg["micro_batch_tokens"])
        boot = {"n_resamples": cfg["n_resamples"], "seed": cfg["seed"]}
        records: list[dict[str, Any]] = []
        was_training, flags = model.training, [p.requires_grad for p in params]
        model.eval()
        try:
            for p in params:
                p.requires_grad_(True)
            if cfg["lanczos_steps"] or cfg["trace_probes"]:
                with math_attention():
                    records += self._sharpness(pieces, params, len(ids), boot)
            records += self._basins(model, params, pieces, pad_id, boot, predicted_edges(records, cfg["sigmas"], cfg["loss_tau"], params))
        finally:
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)
            model.train(was_training)
        return make_frame(self.checkpoint, NAME, records, VARIANTS)

    def _sharpness(self, pieces: list[Loss], params: list[torch.Tensor], n_docs: int, boot: dict[str, int]) -> list[dict[str, Any]]:
        cfg, records = self.config, []
        found = sharpness(hvp_products(pieces, params), params, cfg["lanczos_steps"], cfg["lanczos_tol"], cfg["trace_probes"], cfg["seed"],
                          cfg["products_per_round"])
        for prefix, extremes, samples in (("hessian", found.hessian, found.hessian_samples),
                                          ("adaptive", found.adaptive, found.adaptive_samples)):
            if extremes is not None:
                records += eigenvalue_records(prefix, extremes, n_docs, minimum=prefix == "hessian")
            if len(samples):
                value, low, high, n = mean_ci(samples, **boot)
                records.append({"metric": f"{prefix}_trace", "value": value, "ci_low": low, "ci_high": high, "n": n})
        return records

    def _objectives(self, model: Any, pieces: list[Loss], pad_id: int) -> dict[str, tuple[Callable, Callable, bool, float]]:
        """``{objective: (score, gradient of its surrogate, higher is better, tau)}``."""
        cfg, params = self.config, list(model.parameters())
        objectives = {"loss": (loss_value(pieces), gradient_fn(pieces, params), False, cfg["loss_tau"])}
        task = self.task
        if task is not None and task.labels is not None:
            tokenizer, n_ctx = self.checkpoint.tokenizer, self.checkpoint.n_ctx
            rows = np.random.default_rng(cfg["seed"]).permutation(len(task.documents))[: cfg["basin_docs"]]
            batch = max(1, cfg["micro_batch_tokens"] // n_ctx)

            def accuracy() -> float:
                return float(label_accuracy(model, task, tokenizer, n_ctx, rows, pad_id, batch).mean())

            surrogate = gradient_fn(rank_loss_pieces(model, task, tokenizer, n_ctx, rows, pad_id, cfg["micro_batch_tokens"]), params)
            objectives["accuracy"] = (accuracy, surrogate, True, cfg["accuracy_tau"])
        return objectives

    def _basins(self, model: Any, params: list[torch.Tensor], pieces: list[Loss], pad_id: int, boot: dict[str, int],
                guesses: dict[str, int]) -> list[dict[str, Any]]:
        cfg, sigmas = self.config, self.config["sigmas"]
        objectives = self._objectives(model, pieces, pad_id)
        if not (cfg["n_directions"] or cfg["worst_case_steps"]):
            return []
        base = {name: o[0]() for name, o in objectives.items()}  # sigma = 0: the checkpoint itself, scored once
        records: list[dict[str, Any]] = []
        if cfg["n_directions"] and cfg["basin_search"] == "grid":
            generator = torch.Generator().manual_seed(cfg["seed"])
            curves = {name: np.tile(base[name], (cfg["n_directions"], len(sigmas))) for name in objectives}
            for k in range(cfg["n_directions"]):
                direction = gaussian_direction(params, generator)
                scores = perturbed_scores({name: o[0] for name, o in objectives.items()}, params, direction, sigmas[1:])
                for name in objectives:
                    curves[name][k, 1:] = scores[name]
                del direction
            for name, (_, _, higher, tau) in objectives.items():
                records += basin_records(name, "random", sigmas, curves[name], higher, tau, boot)
        elif cfg["n_directions"]:
            for name, (score, _, higher, tau) in objectives.items():
                generator = torch.Generator().manual_seed(cfg["seed"])  # every objective sees the same directions
                curve = bisected_random_curves(score, params, sigmas, cfg["n_directions"], generator,
                                               beyond_basin(base[name], higher, tau), base[name], guesses.get(f"{name} random"))
                records += basin_records(name, "random", sigmas, curve, higher, tau, boot)
        if cfg["worst_case_steps"]:
            for name, (score, gradient, higher, tau) in objectives.items():
                generator = torch.Generator().manual_seed(cfg["seed"] + 1)
                guess = guesses.get(f"{name} worst_case") if cfg["basin_search"] == "bisect" else None  # None: the whole walk
                curve = worst_case_near_edge(gradient, score, params, sigmas, cfg["worst_case_steps"], generator,
                                             beyond_basin(base[name], higher, tau), base[name], guess)
                scored = ~np.isnan(curve)
                curve[scored] = worst_so_far(curve[scored], higher)
                last = int(np.flatnonzero(scored)[-1])
                records += basin_records(name, "worst_case", sigmas[: last + 1], curve[None, : last + 1], higher, tau, boot)
        rms = math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in params) / n_weights(params))
        records += [r | {"metric": "basin_sigma_relative", "value": r["value"] / rms, "ci_low": r["ci_low"] / rms,
                         "ci_high": r["ci_high"] / rms, "weight_rms": rms} for r in records if r["metric"] == "basin_sigma"]
        for r in records:
            if r["metric"] == "basin_sigma" and r["censored"]:
                log.info("%s: the %s basin (%s directions) is wider than the largest sigma %g; basin_sigma is a lower bound",
                         self.checkpoint.name, r["objective"], r["direction"], sigmas[-1])
        return records


def start(checkpoint: Checkpoint, inputs: Inputs, config: dict[str, Any], memo: Memo) -> LandscapeTask:
    """Start the landscape analysis of one checkpoint on ``inputs.train_data`` (and ``inputs.finetune_data``'s accuracy)."""
    task = None
    if config["label_column"] is not None:
        if inputs.finetune_data is None:
            raise ValueError(f"landscape: option label_column={config['label_column']!r} scores the accuracy of a labelled "
                             f"downstream task, but no finetune_data was given; pass --finetune-data FILE or drop label_column")
        task = DownstreamTask.from_documents(inputs.finetune_data, config["label_column"])
        if len(set(task.labels)) < 2:
            raise ValueError(f"landscape: label column {config['label_column']!r} of finetune_data has fewer than two distinct "
                             f"labels; accuracy needs candidates to choose from")
    return LandscapeTask(checkpoint, inputs.train_data, task, config)


_HESSIAN = "Yao et al. 2020 (PyHessian); raw curvature scales with 1/||w||^2: Dinh et al. 2017"
_ADAPTIVE = "Kwon et al. 2021 (ASAM); Andriushchenko et al. 2023 (A Modern Look at Sharpness)"
_BASIN = "Chen et al. 2025 (arXiv 2505.17646)"
METRICS = (
    Metric("hessian_max_eigenvalue", "Largest Hessian eigenvalue of the pretraining loss: raw sharpness. It rises as weight decay "
           "shrinks the weights, so it does not compare flatness across weight decays.", "", None, _HESSIAN),
    Metric("hessian_min_eigenvalue", "Smallest (most negative) Hessian eigenvalue of the pretraining loss.", "", None, _HESSIAN),
    Metric("hessian_trace", "Hutchinson estimate of the Hessian trace of the pretraining loss: raw, rises as the weights shrink (not "
           "flatness across weight decays).", "", None, _HESSIAN),
    Metric("adaptive_max_eigenvalue", "Largest eigenvalue of the Hessian rescaled by the weights' magnitudes (|w| H |w|): "
           "scale-invariant sharpness, comparable across weight decays; lower = flatter.", "", None, _ADAPTIVE,
           headline=Headline("sharpness", "Sharpness: adaptive max eigenvalue", "fall",
                             "related work (Kwon et al. 2021; Andriushchenko et al. 2023), not Han et al.",
                             "run the landscape analysis (--train-data) with lanczos_steps > 0", order=50)),
    Metric("adaptive_trace", "Trace of the weight-rescaled Hessian (|w| H |w|): scale-invariant average curvature; lower = flatter.",
           "", None, _ADAPTIVE),
    Metric("basin_sigma", "Basin radius sigma: the largest scale of weight noise (Gaussian, rescaled to a standard Gaussian's norm; "
           "random or worst-case directions, variant 'direction') under which the expected drop of the objective (variant "
           "'objective') stays within the threshold; wider = more room to fine-tune. Sigma is in weight units: weights that weight "
           "decay shrinks are moved relatively more by the same sigma, so across weight decays read basin_sigma_relative.",
           "weight units", None, _BASIN),
    Metric("basin_sigma_relative", "Basin radius relative to the weights: basin_sigma divided by the root mean square of the "
           "perturbed weights (detail weight_rms), i.e. the noise's norm at the basin's edge over the weights' norm. Unitless and "
           "unchanged when the weights are rescaled, so it compares basins across weight decays; wider = more room to fine-tune.",
           "", "higher", _BASIN,
           headline=Headline("basin", "Basin radius relative to the weights (loss, random directions)", "rise",
                             "related work (Chen et al. 2025), not Han et al.",
                             "run the landscape analysis (--train-data) with n_directions > 0",
                             (("objective", "loss"), ("direction", "random")), order=60)),
    Metric("basin_curve", "The objective under weight noise of each scale sigma scored (the curve the basin radius is read from; "
           "by default only the scales around the basin's edge).", "", None, _BASIN),
)

ANALYSIS = Analysis(name=NAME, inputs=("train_data",), start=start, options=OPTIONS, variants=VARIANTS,
                    optional_inputs=("finetune_data",), metrics=METRICS)


def landscape(
    sweep: Sweep | Checkpoint | Sequence[Checkpoint],
    train_data: Documents | Sequence[str] | str,
    finetune_data: Documents | Sequence[str] | str | None = None,
    *,
    store: ResultsStore | str | None = None,
    progress: bool = True,
    executor: Any = None,
    **options: Any,
) -> pd.DataFrame:
    """Sharpness and basins of every checkpoint (tidy results frame; metrics in the module docstring).

    ``train_data``: documents the checkpoints were trained on (the fixed batch);
    ``finetune_data`` with the option ``label_column``: a labelled downstream task whose accuracy
    basins are measured too (anything :func:`plastiscope.load_documents` reads). ``options``: any of
    :data:`OPTIONS`, validated by it.
    ``executor``: ``"local"`` (default), ``"process"`` or ``"ray"`` (:func:`plastiscope.runner.executor_named`).
    """
    label_column = options.get("label_column")
    inputs = Inputs(train_data=load_documents(train_data),
                    finetune_data=None if finetune_data is None else load_documents(finetune_data, label_column=label_column))
    return run_one(sweep, ANALYSIS, inputs, options, store, progress=progress, executor=executor)
