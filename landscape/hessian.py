"""Hessian of a loss at the weights: products, extreme eigenvalues, trace.

- :func:`hvp_operator`: Hessian-vector products ``v -> H v`` by Pearlmutter's trick (double
  backward through ``torch.autograd``).
- :func:`dominant_eigenvalue`, :func:`top_eigenvalue`, :func:`eigenvalue_extremes`: power
  iteration on ``H`` (and on ``H - shift I``), as in Yao et al. 2020 (PyHessian).
- :func:`hutchinson_samples`: ``v^T H v`` with Rademacher probes; their mean estimates ``tr H``
  (Hutchinson 1990).

Vectors are lists of tensors shaped like the parameters; dot products accumulate in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

Params = Sequence[torch.Tensor]
Vectors = list[torch.Tensor]
Estimate = tuple[float, int, float]  # (eigenvalue, iterations, last change)


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
