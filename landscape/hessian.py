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
- :func:`sharpness`: both Lanczos runs (raw and adaptive) and both traces at once, in rounds whose
  products share one gradient graph (:func:`hvp_products`), each run starting from the traces'
  first probe so that its first product is also a trace sample.

Vectors are lists of tensors shaped like the parameters, on their devices and in their dtype
(float32: see :mod:`.analysis` for the precision policy); dot products accumulate in float64.
Random vectors are drawn on the CPU from a seeded generator and then moved to the parameters'
device, so a result does not depend on the device beyond float tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

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


def hvp_products(
    losses: Sequence[Callable[[], torch.Tensor]], params: Params, keep_graph: bool = True
) -> Callable[[Sequence[Params]], list[Vectors]]:
    """``[v_1, ..., v_m] -> [H v_1, ..., H v_m]``: Hessian-vector products sharing one gradient graph per micro-batch.

    ``H`` is the Hessian of ``sum_b losses[b]()`` w.r.t. ``params`` (Pearlmutter 1994, by double
    backward). ``losses`` are the micro-batches' shares of one loss (for a token-weighted mean
    loss, each micro-batch's mean loss times its share of the target tokens), so ``H v`` is the
    sum of the micro-batches' products ``H_b v = d(g_b . v)/d theta``. Micro-batch by
    micro-batch, one forward and one backward with ``create_graph=True`` build ``g_b`` and its
    graph, then one double backward per vector reads it: ``m`` products cost one forward and
    backward plus ``m`` double backwards (on the benchmark's CPU model a forward with its
    graph-keeping backward is about 40 % of a single product). Memory: one micro-batch's
    double-backward graph and the ``m`` running sums.

    With ``keep_graph`` and a single micro-batch, its graph is built at the first call and kept
    for every later one (the weights do not change between products): the products after the
    first cost their double backwards only, and the memory is the same, since every product
    holds that graph anyway. With several micro-batches keeping every graph would multiply the
    memory by their number: each call rebuilds them.
    """
    params = list(params)
    kept: list[Vectors] = []

    def products(vectors: Sequence[Params]) -> list[Vectors]:
        totals = [[torch.zeros_like(p) for p in params] for _ in vectors]
        keep = keep_graph and len(losses) == 1
        for loss in losses:
            grads = kept[0] if kept else _gradients([loss()], params, create_graph=True)
            if keep and not kept:
                kept.append(grads)
            for i, (total, v) in enumerate(zip(totals, vectors)):
                retain = keep or i < len(vectors) - 1
                for t, h in zip(total, _gradients(grads, params, grad_outputs=list(v), retain_graph=retain)):
                    t.add_(h.detach())
            del grads
        return totals

    return products


def hvp_operator(losses: Sequence[Callable[[], torch.Tensor]], params: Params) -> Operator:
    """``v -> H v``: the Hessian of ``sum_b losses[b]()`` w.r.t. ``params`` times ``v`` (Pearlmutter 1994).

    Per product and micro-batch a forward, a backward with ``create_graph=True`` and a double
    backward (:func:`hvp_products` of one vector, no graph kept between products), so memory
    holds one micro-batch's graph and the running sum.
    """
    products = hvp_products(losses, params, keep_graph=False)
    return lambda v: products([v])[0]


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
        return scaled(params, hvp(scaled(params, v)))

    return adaptive


def scaled(params: Params, v: Params) -> Vectors:
    """``|theta| * v``, element-wise (the scaling of :func:`adaptive_operator`)."""
    return [p.detach().abs() * x for p, x in zip(params, v)]


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


class Lanczos:
    """One plain Lanczos run on a symmetric operator, advanced one product at a time (see :func:`lanczos_extremes`).

    ``vector`` is the next vector to multiply; :meth:`step` takes its product ``A vector`` and
    updates ``result``; ``done`` turns True on convergence, breakdown or ``max_steps``.
    """

    def __init__(self, start: Params, max_steps: int, tol: float, minimum: bool, relative_to: str = "spectrum"):
        if relative_to not in ("spectrum", "each"):
            raise ValueError(f"relative_to must be 'spectrum' or 'each', got {relative_to!r}")
        norm = math.sqrt(dot(start, start))
        self.vector: Vectors = [x / norm for x in start]
        self.max_steps, self.tol, self.minimum, self.relative_to = max_steps, tol, minimum, relative_to
        self.previous: Vectors | None = None
        self.alphas: list[float] = []
        self.betas: list[float] = []
        self.beta = 0.0
        self.result = Extremes(math.nan, math.inf, math.nan, math.inf, 0)
        self.done = max_steps <= 0

    def step(self, product: Params) -> None:
        """Take ``A vector``: one Lanczos step (``w = A v_k - alpha_k v_k - beta_{k-1} v_{k-1}``), the new Ritz values."""
        v = self.vector
        w = [h.to(x.dtype) for h, x in zip(product, v)]
        alpha = dot(w, v)
        for wi, vi in zip(w, v):
            wi.sub_(vi, alpha=alpha)
        if self.previous is not None:
            for wi, pi in zip(w, self.previous):
                wi.sub_(pi, alpha=self.beta)
        beta = math.sqrt(max(dot(w, w), 0.0))
        self.alphas.append(alpha)
        theta, s = np.linalg.eigh(np.diag(self.alphas) + np.diag(self.betas, 1) + np.diag(self.betas, -1))
        residual = beta * np.abs(s[-1])
        step = len(self.alphas)
        self.result = Extremes(float(theta[-1]), float(residual[-1]), float(theta[0]), float(residual[0]), step)
        scale = max(abs(theta[0]), abs(theta[-1]))
        bottom = scale if self.relative_to == "spectrum" else abs(theta[0])
        converged = residual[-1] <= self.tol * abs(theta[-1]) and (not self.minimum or residual[0] <= self.tol * bottom)
        if (not (math.isfinite(beta) and math.isfinite(alpha)) or converged or beta <= 1e-10 * max(scale, 1e-30)
                or step >= self.max_steps):
            self.done = True
            self.vector, self.previous = [], None
            return
        self.betas.append(beta)
        self.beta = beta
        self.previous, self.vector = v, [wi / beta for wi in w]


def lanczos_extremes(
    operator: Operator, params: Params, max_steps: int = 40, tol: float = 1e-3, seed: int = 0, minimum: bool = True,
    start: Params | None = None, relative_to: str = "spectrum",
) -> Extremes:
    """Largest and smallest eigenvalues of the symmetric ``operator`` by plain Lanczos (three-term recurrence).

    From ``start`` (default: a Gaussian vector drawn with ``seed``), normalized, step ``k``
    computes ``w = A v_k - alpha_k v_k - beta_{k-1} v_{k-1}``; the tridiagonal ``T_k`` of the
    ``alpha`` s and ``beta`` s has Ritz values ``theta_i`` (its eigenvalues, eigenvectors
    ``s_i``) whose extremes converge to the extreme eigenvalues of ``A`` from inside (Cauchy
    interlacing: ``theta_max <= lambda_max``, ``theta_min >= lambda_min``), and fast where power
    iteration is slow: a small gap between the top two eigenvalues, or a negative eigenvalue of
    larger magnitude than the top one (Kaniel-Paige-Saad bounds, Golub & Van Loan sec. 10.1.5).
    The residual of a Ritz pair, ``||A y_i - theta_i y_i|| = |beta_k s_i[k]|``, bounds the
    distance from ``theta_i`` to the nearest eigenvalue of ``A``; for an isolated extreme
    eigenvalue the error is typically far smaller (of order residual^2 / gap).

    Stops when the largest Ritz value's residual is at most ``tol`` times its magnitude and,
    with ``minimum``, the smallest one's at most ``tol`` times the spectrum's scale
    ``max(|theta_max|, |theta_min|)`` (``relative_to="spectrum"``, an estimate of ``||A||_2``:
    the smallest eigenvalue is then resolved to ``tol ||A||``, the criterion of ARPACK-style
    solvers), when ``beta`` vanishes (an invariant subspace: the Ritz values are eigenvalues),
    or after ``max_steps`` products. ``relative_to="each"`` asks the smallest one's residual
    to be ``tol`` times its own magnitude instead: a smallest eigenvalue near 0 in a cluster
    (near a minimum of the loss) then never meets it and the run takes ``max_steps`` (the
    criterion this package used before; kept to reproduce it). The largest eigenvalue keeps
    its own relative tolerance: a loose one lets the run stop on a Ritz value close to the
    second eigenvalue before the first has been seen (on the tests' MLP, ``tol`` 1e-2 stopped
    4 % below the top eigenvalue with a residual of 1 %).

    Memory: three parameter-sized vectors (``v_{k-1}``, ``v_k``, ``w``), whatever ``max_steps``.
    There is no reorthogonalization (it would store all ``k`` vectors: ``k`` times the model's
    size). Without it the Lanczos vectors lose orthogonality once a Ritz value converges and
    copies ("ghosts") of converged eigenvalues appear among the Ritz values, but the extreme
    Ritz values still converge to the extreme eigenvalues and the residual bound stays valid
    up to rounding (Paige 1976, 1980; Golub & Van Loan sec. 10.3). A start vector orthogonal to
    an eigenvector would miss that eigenvalue: with a Gaussian start this has probability zero;
    with a random-sign (Rademacher) start, as :func:`sharpness` uses, it needs an eigenvector
    supported on a handful of coordinates, with probability ``2^-(support - 1)`` at most.
    """
    run = Lanczos(gaussian_like(params, torch.Generator().manual_seed(seed)) if start is None else start, max_steps, tol,
                  minimum, relative_to)
    while not run.done:
        run.step(operator(run.vector))
    return run.result


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


@dataclass(frozen=True)
class Sharpness:
    """Both Lanczos runs and both traces of :func:`sharpness`.

    ``hessian`` / ``adaptive``: the Lanczos extremes of ``H`` and of ``|theta| H |theta|``
    (None without Lanczos steps); ``hessian_samples`` / ``adaptive_samples``: ``[probe]``
    Hutchinson samples of their traces; ``products``: Hessian-vector products run; ``rounds``:
    gradient graphs built (one per round, shared by the round's products).
    """

    hessian: Extremes | None
    adaptive: Extremes | None
    hessian_samples: np.ndarray
    adaptive_samples: np.ndarray
    products: int
    rounds: int


class _Probe:
    """One Hutchinson sample ``u^T H u`` (``u = z`` raw, ``u = |theta| z`` adaptive): one product."""

    def __init__(self, u: Vectors):
        self.vector, self.done, self.sample = u, False, math.nan

    def step(self, product: Params) -> None:
        self.sample, self.done, self.vector = dot(product, self.vector), True, []


def sharpness(
    products: Callable[[Sequence[Params]], list[Vectors]], params: Params, max_steps: int, tol: float, n_probes: int,
    seed: int = 0, width: int = 2,
) -> Sharpness:
    """Lanczos extremes and Hutchinson traces of ``H`` and ``|theta| H |theta|``, their products shared in rounds.

    The same estimates as :func:`lanczos_extremes` (``minimum`` for ``H`` only) and
    :func:`hutchinson_samples` (the same Rademacher probes ``z_1..z_n``, drawn with ``seed``:
    the same samples), computed with fewer passes over the batch:

    - both Lanczos runs start from the first probe ``z_1`` (a Rademacher vector, normalized),
      so each run's first product is also its trace's first sample: ``z^T A z = d alpha_1``
      with ``||z||^2 = d`` (the first step of stochastic Lanczos quadrature, Ubaru, Chen & Saad
      2017). One product per trace is saved;
    - the products are run in rounds of up to ``width`` (``products``, :func:`hvp_products`):
      each round builds one gradient graph per micro-batch and runs its products' double
      backwards on it. The two Lanczos runs go first (each needs its previous product), the
      remaining probes fill the free places.

    Memory: the two runs' last two vectors each and, per product in flight, its input and its
    sum: at most ``4 + 2 width`` parameter-sized vectors (8 at ``width`` 2), against about 5
    for one Lanczos run. ``width=1`` runs one product per round (the cost of separate runs,
    unless :func:`hvp_products` keeps a one-micro-batch graph across rounds).

    Hutch++ (Meyer et al. 2021) on the Lanczos space is no cheaper here: deflating 14 Krylov
    vectors cut the per-probe standard deviation of the raw trace of the benchmark's model by
    15 % only (the Hessian's Frobenius norm sits in its bulk, not its outliers), and needs
    the vectors stored (14 times the model).
    """
    params = list(params)
    start = rademacher_like(params, torch.Generator().manual_seed(seed)) if n_probes else None
    raw = Lanczos(start if n_probes else gaussian_like(params, torch.Generator().manual_seed(seed)), max_steps, tol, True) \
        if max_steps else None
    adaptive = Lanczos(raw.vector, max_steps, tol, False) if raw is not None else None
    del start
    shared = 1 if max_steps and n_probes else 0
    sources = [_probes(params, seed, shared, n_probes, adaptive=False), _probes(params, seed, shared, n_probes, adaptive=True)]
    samples: list[list[_Probe]] = [[], []]
    count, rounds = 0, 0
    while True:
        jobs: list[Any] = [job for job in (raw, adaptive) if job is not None and not job.done][: max(1, width)]
        for source, out in zip(sources, samples):
            while len(jobs) < max(1, width):
                probe = next(source, None)
                if probe is None:
                    break
                jobs.append(probe)
                out.append(probe)
        if not jobs:
            break
        vectors = [scaled(params, job.vector) if job is adaptive else job.vector for job in jobs]
        results = products(vectors)
        del vectors
        for job, product in zip(jobs, results):
            job.step(scaled(params, product) if job is adaptive else product)
        count, rounds = count + len(jobs), rounds + 1
    d = sum(p.numel() for p in params)
    first = ([raw.alphas[0] * d], [adaptive.alphas[0] * d]) if shared and raw and adaptive else ([], [])
    return Sharpness(
        raw.result if raw else None, adaptive.result if adaptive else None,
        np.array(first[0] + [p.sample for p in samples[0]]), np.array(first[1] + [p.sample for p in samples[1]]), count, rounds,
    )


def _probes(params: list[torch.Tensor], seed: int, skip: int, n: int, adaptive: bool) -> Iterator[_Probe]:
    """Probe jobs ``skip+1..n`` of the Rademacher sequence drawn with ``seed``, each drawn when asked for."""
    generator = torch.Generator().manual_seed(seed)
    for k in range(n):
        z = rademacher_like(params, generator)
        if k >= skip:
            yield _Probe(scaled(params, z) if adaptive else z)
