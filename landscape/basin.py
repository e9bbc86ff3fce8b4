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
    direction = gaussian_direction(params, generator)
    out = []
    with restored(params) as origin:
        for sigma in sigmas:
            _ascend(gradient, params, origin, direction, sigma, steps)
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


def first_beyond(beyond_at: Callable[[int], bool], n: int, guess: int | None = None, upper: int | None = None) -> int:
    """The first index ``j`` of ``1..n-1`` with ``beyond_at(j)`` (``n`` when none), by bracketing and bisection.

    Assumes ``beyond_at`` is monotone (False up to some index, True after), as a drop that
    grows with ``sigma`` makes it; it is then the index a walk over ``1..n-1`` stops at, found
    with about ``log2(n)`` calls instead of up to ``n - 1``. With ``guess`` (an index where the
    crossing is expected: another direction's) the guess and its neighbour below (or above,
    if the guess is inside) are tried first: two calls when the guess is right. With ``upper``
    (an index expected to be beyond: the random basin's edge bounds the worst case's) the
    bisection runs below it and calls it only if the answer would be ``upper`` itself, going
    on above it if it is not beyond after all (a ``guess`` comes first). Index 0 (``sigma = 0``) is never called: it is
    inside by definition.
    """

    def bisect(lo: int, hi: int) -> int:  # lo is inside (or 0), hi beyond (or n: past the grid)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if beyond_at(mid) else (mid, hi)
        return hi

    if guess is None and upper is not None and 1 <= upper <= n - 1:
        found = bisect(0, upper)
        return found if found < upper or beyond_at(upper) else bisect(upper, n)
    lo, hi = 0, n
    if guess is not None and 1 <= guess <= n - 1:
        if beyond_at(guess):
            hi = guess
            if guess - 1 >= 1:
                lo, hi = (lo, guess - 1) if beyond_at(guess - 1) else (guess - 1, hi)
        else:
            lo = guess
            if guess + 1 <= n - 1:
                lo, hi = (lo, guess + 1) if beyond_at(guess + 1) else (guess + 1, hi)
    return bisect(lo, hi)


def bisected_random_curves(
    score: Callable[[], float], params: Params, sigmas: Sequence[float], n_directions: int, generator: torch.Generator,
    beyond: Callable[[float], bool], base: float, guess: int | None = None,
) -> np.ndarray:
    """``[direction, sigma]`` scores along ``n_directions`` Gaussian directions, at the ``sigmas`` a bisection needs (NaN elsewhere).

    The same directions as a walk over the grid draws (:func:`gaussian_direction`, in order,
    from ``generator``) and the same score at each ``sigma`` evaluated, so the basin radius of
    the mean drop (:func:`basin_sigma` on the columns every direction has) is the walk's,
    where each direction's drop grows with ``sigma`` (a drop that crosses ``tau`` and comes
    back is seen at a later crossing, or missed). Each direction's own first crossing is
    bisected (:func:`first_beyond`; ``beyond(score)``: its drop exceeds ``tau``), guessed at
    the previous direction's (the first at ``guess``, a prediction, if any); the mean's
    crossing, and a bootstrap resample's, lies between the directions' first and last
    crossings, so every direction is then also scored at the grid points from just below the
    first to the last (a direction drawn again from its saved generator state when it lacks
    some). Column 0 is ``base`` (``sigma = 0``, scored once by the caller). Costs about
    ``log2(len(sigmas))`` scores for the first direction (2 with a right guess) and 2 for each
    further one whose crossing is the same, against ``len(sigmas) - 1`` per direction.
    """
    n = len(sigmas)
    curves = np.full((n_directions, n), np.nan)
    curves[:, 0] = base
    states, crossings = [], []
    for k in range(n_directions):
        states.append(generator.get_state())
        direction = gaussian_direction(params, generator)
        with restored(params) as origin:
            row = curves[k]

            def beyond_at(j: int, row: np.ndarray = row, direction: Vectors = direction, origin: Params = origin) -> bool:
                if np.isnan(row[j]):
                    _move(params, origin, direction, sigmas[j])
                    row[j] = score()
                return beyond(row[j])

            crossings.append(first_beyond(beyond_at, n, crossings[-1] if crossings else guess))
        del direction
    needed = range(max(1, min(crossings) - 1), min(max(crossings), n - 1) + 1) if n_directions else range(0)
    for k in range(n_directions):
        missing = [j for j in needed if np.isnan(curves[k, j])]
        if missing:
            again = torch.Generator()
            again.set_state(states[k])
            direction = gaussian_direction(params, again)
            curves[k, missing] = perturbed_scores({"s": score}, params, direction, [sigmas[j] for j in missing])["s"]
    return curves


def _ascend(gradient: Callable[[], tuple[float, Vectors]], params: Params, origin: Params, direction: Vectors, sigma: float,
            steps: int) -> None:
    """``steps`` steps of normalized gradient ascent of ``direction`` on the sphere of radius ``sigma sqrt(d)`` (in place)."""
    root_d = math.sqrt(n_weights(params))
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


def worst_case_near_edge(
    gradient: Callable[[], tuple[float, Vectors]], score: Callable[[], float], params: Params, sigmas: Sequence[float],
    steps: int, generator: torch.Generator, beyond: Callable[[float], bool], base: float, guess: int | None = None,
) -> np.ndarray:
    """``[sigma]`` worst-case scores from two grid points below a predicted edge up to the basin's edge (NaN elsewhere).

    The search of :func:`worst_case_scores` (``steps`` steps of norm-constrained gradient
    ascent at each ``sigma`` scored, each starting from the direction the previous one ended
    with, the first from a Gaussian direction), walking up the grid to the first ``sigma``
    whose score is ``beyond`` the basin, but from two grid points below ``guess`` (a predicted
    edge; column 0 is ``base``): the search keeps refining its direction over the last
    ``sigma`` s below the edge, where it matters, and skips the many far below it, where the
    loss is nearly linear in the step and the walk's steps only turn the direction towards
    the gradient. If the start is already beyond, the edge is bisected below it
    (:func:`first_beyond`). Without ``guess`` the walk starts at the grid's first ``sigma``:
    :func:`worst_case_scores` itself (a search that needs many steps, such as the rank margin
    of accuracy, finds a far milder worst case when started near its edge).

    Pass the result through :func:`worst_so_far` over the scored ``sigmas`` for the curve. A
    local search either way: the full walk refines its direction at every smaller ``sigma``,
    so its worst case can be harsher and its radius narrower where the search is far from
    converged; on the benchmark's model the loss's radii agree to 1.3 %, in the same grid
    interval.
    """
    n = len(sigmas)
    curve = np.full(n, np.nan)
    curve[0] = base
    direction = gaussian_direction(params, generator)
    with restored(params) as origin:

        def beyond_at(j: int) -> bool:
            if np.isnan(curve[j]):
                _ascend(gradient, params, origin, direction, sigmas[j], steps)
                _move(params, origin, direction, sigmas[j])
                curve[j] = score()
            return beyond(curve[j])

        j = max(1, guess - 2) if guess is not None and 1 <= guess <= n - 1 else 1
        if beyond_at(j):
            first_beyond(beyond_at, n, upper=j)
        else:
            while j < n - 1 and not beyond_at(j + 1):
                j += 1
    return curve
