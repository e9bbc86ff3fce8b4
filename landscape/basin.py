"""Basins as Chen et al. define them: the score under Gaussian weight noise, along random and worst-case directions.

Chen, Dong, Wei, Huang, Zhang, Su, Zhu, "Unveiling the Basin-Like Loss Landscape in Large
Language Models" (arXiv 2505.17646; its sections on the most-case and worst-case landscapes,
and its theoretical analysis for the bound below). A score ``S`` of the weights (a 0-1 benchmark score such
as a downstream task's accuracy, or the loss) is followed along a direction ``u`` rescaled to
the norm of a standard Gaussian in ``d`` dimensions, ``||u|| = sqrt(d)``, so that ``theta +
sigma u`` is as far from ``theta`` as Gaussian noise ``N(0, sigma^2 I)`` is and ``sigma`` reads
as that noise's per-weight standard deviation:

- the **most-case** landscape: ``u`` a random Gaussian direction
  (:func:`gaussian_direction`); in high dimension Gaussian noise concentrates on the sphere of
  radius ``sigma sqrt(d)``, so the mean over directions estimates the expected score under
  Gaussian weight noise of scale ``sigma``, ``E_eps S(theta + eps)``;
- the **worst-case** landscape: the direction of norm ``sigma sqrt(d)`` that degrades the score
  most, found by a norm-constrained gradient search (:func:`worst_case_scores`).

The **drop** at ``sigma`` is ``S(theta) - S(theta + sigma u)`` for a score that is higher when
better (accuracy) and ``S(theta + sigma u) - S(theta)`` for the loss; the **basin** is the
range of ``sigma`` where the (expected) drop stays ``<= tau``, and its radius ``basin_sigma``
the largest such ``sigma`` (:func:`basin_sigma`). Chen et al.'s bound on fine-tuning
(randomized smoothing): for a score in ``[0, 1]`` the Gaussian-smoothed score ``g(theta) =
E_eps S(theta + eps)`` is ``1 / (sqrt(2 pi) sigma)``-Lipschitz, so a fine-tuning that moves
the weights by ``||delta theta||`` lowers it by at most ``||delta theta|| / (sqrt(2 pi) sigma)``.

Every perturbation changes the weights in place and restores them bit-exactly from a saved
copy (:func:`restored`), also on error.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from .hessian import Params, Vectors, dot, gaussian_like


def n_weights(params: Params) -> int:
    """``d``: the number of weights in ``params``."""
    return sum(p.numel() for p in params)


def gaussian_direction(params: Params, generator: torch.Generator) -> Vectors:
    """A Gaussian direction rescaled to ``sqrt(d)``, the norm of a standard Gaussian in ``d = n_weights(params)`` dimensions.

    Drawn on the CPU from ``generator`` (the same for every checkpoint and device) and moved
    to each parameter's device.
    """
    z = gaussian_like(params, generator)
    scale = math.sqrt(n_weights(params) / dot(z, z))
    return [x.mul_(scale) for x in z]


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


def _move(params: Params, origin: Params, direction: Params, sigma: float) -> None:
    """Set ``params`` to ``origin + sigma * direction``."""
    with torch.no_grad():
        for p, o, u in zip(params, origin, direction):
            p.copy_(o).add_(u, alpha=float(sigma))


def perturbed_scores(
    scores: dict[str, Callable[[], float]], params: Params, direction: Params, sigmas: Sequence[float]
) -> dict[str, np.ndarray]:
    """``{name: [sigma] score at theta + sigma * direction}`` for each score function; the weights are restored after."""
    out = {name: np.full(len(sigmas), np.nan) for name in scores}
    with restored(params) as origin:
        for j, sigma in enumerate(sigmas):
            _move(params, origin, direction, sigma)
            for name, score in scores.items():
                out[name][j] = score()
    return out


def worst_case_scores(
    gradient: Callable[[], tuple[float, Vectors]], score: Callable[[], float], params: Params,
    sigmas: Sequence[float], steps: int, generator: torch.Generator, until: Callable[[float], bool] | None = None,
) -> tuple[np.ndarray, Vectors]:
    """``([sigma] score, last direction)``: the score along the worst-case direction found at each ``sigma``.

    ``gradient()`` returns ``(surrogate, d surrogate / d theta)`` at the current weights, where
    the surrogate is a differentiable quantity whose increase degrades the score (the loss
    itself; for accuracy, the loss of the true labels). At each ``sigma > 0`` the search runs
    ``steps`` steps of normalized gradient ascent on the sphere of radius ``rho = sigma sqrt(d)``
    around ``theta`` (Chen et al.'s norm-constrained search for worst-case directions):
    ``delta <- rho * normalize(delta / rho + g / ||g||)``, starting from a random Gaussian
    direction at the first ``sigma`` and from the previous ``sigma``'s direction after. On a
    quadratic ``L = 1/2 x^T A x`` at its minimum this is power iteration on ``A`` shifted by a
    positive multiple of the identity, which converges to the top eigenvector: the exact worst
    case. In general it is a local search, so the drop it finds is a lower bound on the
    worst-case drop. ``score()`` is read at the last iterate. With ``until``, the search ends
    after the first ``sigma`` whose score satisfies ``until(score)`` (past the basin's edge the
    worst case only gets worse), and the scores returned are those of the ``sigmas`` reached.
    Memory: the saved weights, the direction and one gradient. The returned direction has norm
    ``sqrt(d)``.
    """
    root_d = math.sqrt(n_weights(params))
    direction = gaussian_direction(params, generator)
    out = []
    with restored(params) as origin:
        for sigma in sigmas:
            for _ in range(steps if sigma > 0 else 0):
                _move(params, origin, direction, sigma)
                _, grad = gradient()
                norm = math.sqrt(dot(grad, grad))
                if not math.isfinite(norm) or norm == 0:
                    break
                with torch.no_grad():
                    for u, g in zip(direction, grad):
                        u.div_(root_d).add_(g, alpha=1 / norm)
                    scale = root_d / math.sqrt(dot(direction, direction))
                    for u in direction:
                        u.mul_(scale)
                del grad
            _move(params, origin, direction, sigma)
            out.append(score())
            if until is not None and until(out[-1]):
                break
    return np.array(out), direction


def worst_so_far(curve: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """``[sigma]`` the worst score of ``curve [sigma]`` at any ``sigma`` up to each one.

    The worst case within a ball of radius ``sigma`` includes every smaller ball's, so the
    worst-case curve never recovers; a local search (on a chance-level score, say) can land
    on better scores at a larger ``sigma`` than it found at a smaller one.
    """
    curve = np.asarray(curve, dtype=float)
    return np.minimum.accumulate(curve) if higher_is_better else np.maximum.accumulate(curve)


def drops(curves: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """``[..., sigma]`` drop of each curve from its value at ``sigma = 0`` (the first column), positive when worse."""
    curves = np.asarray(curves, dtype=float)
    change = curves - curves[..., :1]
    return -change if higher_is_better else change


def basin_sigma(sigmas: Sequence[float], drop: Sequence[float], tau: float) -> tuple[float, bool]:
    """``(sigma, censored)``: the largest ``sigma`` up to which ``drop`` stays ``<= tau``.

    ``sigmas`` increase from 0; the first crossing (``drop > tau``) is interpolated linearly
    between grid points. ``censored`` is True when the drop never exceeds ``tau`` on the grid:
    the radius is then at least ``sigmas[-1]``, the value returned. A NaN/inf drop (a diverged
    score) counts as above ``tau``.
    """
    sigmas, drop = np.asarray(sigmas, dtype=float), np.asarray(drop, dtype=float)
    drop = np.where(np.isfinite(drop), drop, np.inf)
    above = np.flatnonzero(drop > tau)
    if not above.size:
        return float(sigmas[-1]), True
    i = int(above[0])
    if i == 0:  # the score at sigma = 0 itself is not finite
        return float(sigmas[0]), False
    if not np.isfinite(drop[i]):
        return float(sigmas[i - 1]), False
    s0, s1, y0, y1 = sigmas[i - 1], sigmas[i], drop[i - 1], drop[i]
    return float(s0 + (tau - y0) * (s1 - s0) / (y1 - y0)), False


def mean_basin_sigma(sigmas: Sequence[float], drop: np.ndarray, tau: float) -> np.ndarray:
    """``[...]`` :func:`basin_sigma` of the mean drop over directions, for ``drop [..., direction, sigma]``.

    The statistic the bootstrap over directions resamples (:func:`plastiscope.stats.bootstrap_ci`).
    """
    mean = np.mean(drop, axis=-2)
    flat = mean.reshape(-1, mean.shape[-1])
    return np.array([basin_sigma(sigmas, row, tau)[0] for row in flat]).reshape(mean.shape[:-1])
