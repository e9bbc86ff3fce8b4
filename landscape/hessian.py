"""Hessian of a loss at the weights: products, extreme eigenvalues by Lanczos, trace by Hutchinson.

- :func:`hvp_operator`: Hessian-vector products ``v -> H v`` by Pearlmutter's trick (double
  backward through ``torch.autograd``), summed over micro-batches.
- :func:`adaptive_operator`: ``v -> |theta| * H(|theta| * v)``, the Hessian in the element-wise
  scaled coordinates of adaptive sharpness (Kwon et al. 2021, ASAM).
- :func:`lanczos_extremes`: the largest and smallest eigenvalues of a symmetric operator from
  one Lanczos run, each with its Ritz residual (Lanczos 1950; Golub & Van Loan, *Matrix
  Computations*, ch. 10; Ghorbani et al. 2019 use it on neural-network Hessians).
- :func:`hutchinson_samples`: ``v^T A v`` with Rademacher probes; their mean estimates ``tr A``
  (Hutchinson 1990; Yao et al. 2020, PyHessian).

Vectors are lists of tensors shaped like the parameters, on their devices and in their dtype
(float32: see :mod:`.analysis` for the precision policy); dot products accumulate in float64.
Random vectors are drawn on the CPU from a seeded generator and then moved to the parameters'
device, so a result does not depend on the device beyond float tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

Params = Sequence[torch.Tensor]
Vectors = list[torch.Tensor]
Operator = Callable[[Params], Vectors]


def dot(a: Params, b: Params) -> float:
    """``sum_i a_i . b_i`` accumulated in float64."""
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))


def gaussian_like(params: Params, generator: torch.Generator) -> Vectors:
    """Standard Gaussian entries shaped like ``params``: drawn on the CPU (``generator``), moved to each parameter's device."""
    return [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in params]


def rademacher_like(params: Params, generator: torch.Generator) -> Vectors:
    """Random signs (+-1) shaped like ``params``: drawn on the CPU (``generator``), moved to each parameter's device."""
    return [(torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).to(device=p.device, dtype=p.dtype) for p in params]


def _gradients(outputs: Sequence[torch.Tensor], params: Params, grad_outputs: Sequence[torch.Tensor] | None = None,
               **kwargs) -> Vectors:
    """``torch.autograd.grad`` with zeros for parameters (or outputs) that take no part in the graph."""
    if grad_outputs is not None:  # a gradient entry that depends on no parameter contributes nothing
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if o.requires_grad]
        outputs, grad_outputs = [o for o, _ in pairs], [g for _, g in pairs]
        if not outputs:
            return [torch.zeros_like(p) for p in params]
    return list(torch.autograd.grad(outputs, params, grad_outputs=grad_outputs, materialize_grads=True, **kwargs))


def hvp_operator(losses: Sequence[Callable[[], torch.Tensor]], params: Params) -> Operator:
    """``v -> H v``: the Hessian of ``sum_b losses[b]()`` w.r.t. ``params`` times ``v`` (Pearlmutter 1994).

    ``losses`` are the micro-batches' shares of one loss (for a token-weighted mean loss, each
    micro-batch's mean loss times its share of the target tokens), so ``H v`` is the sum of
    the micro-batches' products ``H_b v = d(g_b . v)/d theta``. Each product runs, micro-batch
    by micro-batch, a forward, a backward with ``create_graph=True`` and a double backward, so
    memory holds one micro-batch's graph and the running sum. (Keeping a one-micro-batch graph
    across products saves its forward and first backward, about 10 % of a product: the double
    backward dominates; not worth the memory.)
    """
    params = list(params)

    def hvp(v: Params) -> Vectors:
        total = [torch.zeros_like(p) for p in params]
        for loss in losses:
            grads = _gradients([loss()], params, create_graph=True)
            for t, h in zip(total, _gradients(grads, params, grad_outputs=list(v))):
                t.add_(h.detach())
            del grads
        return total

    return hvp


def adaptive_operator(hvp: Operator, params: Params) -> Operator:
    """``v -> |theta| * H(|theta| * v)``: the Hessian of ``w -> L(theta + |theta| * w)`` at ``w = 0``.

    Adaptive (element-wise scaled) sharpness (Kwon et al. 2021, ASAM; Andriushchenko et al.
    2023). ``|theta|`` is read from ``params`` at each product (no stored copy). Under any
    element-wise rescaling ``theta -> t * theta`` that leaves the loss unchanged (a weight
    matrix feeding a normalisation layer, the two factors of a product), ``H`` becomes
    ``H / (t t^T)`` and ``|theta|`` becomes ``t |theta|``, so this operator, its eigenvalues and
    its trace are unchanged.
    """

    def adaptive(v: Params) -> Vectors:
        hv = hvp([p.detach().abs() * x for p, x in zip(params, v)])
        return [p.detach().abs() * h for p, h in zip(params, hv)]

    return adaptive


@dataclass(frozen=True)
class Extremes:
    """The extreme eigenvalue estimates of one Lanczos run.

    ``max_value`` / ``min_value``: the largest / smallest Ritz values; ``max_residual`` /
    ``min_residual``: their Ritz residuals ``|beta_k s_k|`` (an eigenvalue of the operator
    lies within that distance of the Ritz value); ``steps``: products run.
    """

    max_value: float
    max_residual: float
    min_value: float
    min_residual: float
    steps: int


def lanczos_extremes(
    operator: Operator, params: Params, max_steps: int = 40, tol: float = 1e-3, seed: int = 0, minimum: bool = True
) -> Extremes:
    """Largest and smallest eigenvalues of the symmetric ``operator`` by plain Lanczos (three-term recurrence).

    From a Gaussian start vector (``seed``), step ``k`` computes ``w = A v_k - alpha_k v_k -
    beta_{k-1} v_{k-1}``; the tridiagonal ``T_k`` of the ``alpha`` s and ``beta`` s has Ritz
    values ``theta_i`` (its eigenvalues, eigenvectors ``s_i``) whose extremes converge to the
    extreme eigenvalues of ``A`` from inside (Cauchy interlacing: ``theta_max <= lambda_max``,
    ``theta_min >= lambda_min``), and fast where power iteration is slow: a small gap between
    the top two eigenvalues, or a negative eigenvalue of larger magnitude than the top one
    (Kaniel-Paige-Saad bounds, Golub & Van Loan sec. 10.1.5). The residual of a Ritz pair,
    ``||A y_i - theta_i y_i|| = |beta_k s_i[k]|``, bounds the distance from ``theta_i`` to the
    nearest eigenvalue of ``A``; for an isolated extreme eigenvalue the error is typically far
    smaller (of order residual^2 / gap). Stops when the largest Ritz value's residual is at most
    ``tol`` times its magnitude (and the smallest one's too, with ``minimum``), when ``beta``
    vanishes (an invariant subspace: the Ritz values are eigenvalues), or after ``max_steps``
    products. A smallest eigenvalue near 0 in a cluster (near a minimum of the loss) converges
    slowly relative to its magnitude: the run then takes ``max_steps`` and the residual says
    how far it is resolved.

    Memory: three parameter-sized vectors (``v_{k-1}``, ``v_k``, ``w``), whatever ``max_steps``.
    There is no reorthogonalization (it would store all ``k`` vectors: ``k`` times the model's
    size). Without it the Lanczos vectors lose orthogonality once a Ritz value converges and
    copies ("ghosts") of converged eigenvalues appear among the Ritz values, but the extreme
    Ritz values still converge to the extreme eigenvalues and the residual bound stays valid
    up to rounding (Paige 1976, 1980; Golub & Van Loan sec. 10.3). A start vector orthogonal to
    an eigenvector would miss that eigenvalue: with a Gaussian start this has probability zero.
    """
    generator = torch.Generator().manual_seed(seed)
    v = gaussian_like(params, generator)
    norm = math.sqrt(dot(v, v))
    v = [x / norm for x in v]
    previous: Vectors | None = None
    alphas: list[float] = []
    betas: list[float] = []
    beta = 0.0
    result = Extremes(math.nan, math.inf, math.nan, math.inf, 0)
    for step in range(1, max_steps + 1):
        w = [h.to(x.dtype) for h, x in zip(operator(v), v)]
        alpha = dot(w, v)
        for wi, vi in zip(w, v):
            wi.sub_(vi, alpha=alpha)
        if previous is not None:
            for wi, pi in zip(w, previous):
                wi.sub_(pi, alpha=beta)
        beta = math.sqrt(max(dot(w, w), 0.0))
        alphas.append(alpha)
        theta, s = np.linalg.eigh(np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1))
        residual = beta * np.abs(s[-1])
        result = Extremes(float(theta[-1]), float(residual[-1]), float(theta[0]), float(residual[0]), step)
        scale = max(abs(theta[0]), abs(theta[-1]))
        if not (math.isfinite(beta) and math.isfinite(alpha)):
            break
        converged = residual[-1] <= tol * abs(theta[-1]) and (not minimum or residual[0] <= tol * abs(theta[0]))
        if converged or beta <= 1e-10 * max(scale, 1e-30):
            break
        betas.append(beta)
        previous, v = v, [wi / beta for wi in w]
        del w
    return result


def hutchinson_samples(operator: Operator, params: Params, n_probes: int = 10, seed: int = 0) -> np.ndarray:
    """``[probe]`` samples ``v^T A v`` with Rademacher ``v``; their mean estimates ``tr A`` (Hutchinson 1990).

    ``Var(v^T A v) = 2 (||A||_F^2 - sum_i A_ii^2)``; the probes are independent, so a bootstrap
    over them gives the estimate's interval.
    """
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(n_probes):
        v = rademacher_like(params, generator)
        samples.append(dot(operator(v), v))
    return np.array(samples)
