"""Batched multinomial logistic regression: every layer (and every fold, C, label set) at once.

Fitting one probe per layer is the hot loop of the suite. :func:`fit_logistic` fits
``L x P`` independent probes in one full-batch L-BFGS run: ``L`` feature sets (layers)
sharing the examples, and ``P`` *problems* per feature set (a label vector, per-example
weights and an inverse regularisation strength ``C``; folds are zero weights). Each
iteration reads the stacked features ``X [layer, example, feature]`` once for all problems.

Objective of each (layer, problem), identical to scikit-learn's
``LogisticRegression(C=C, solver="lbfgs")`` (multinomial) on standardised features::

    sum_i w_i * CE(softmax(z_i W + b), y_i) / S + ||W||^2 / (2 C S),   S = sum_i w_i

with ``z = (x - mean) / scale`` (standardisation folded into the linear map, so ``X`` is
never copied) and the intercept ``b`` unpenalised. With two classes scikit-learn fits one
coefficient vector; its objective is the symmetric multinomial one at ``C / 2``, which
:func:`fit_logistic` uses (``binary_as_sklearn=True``). Convergence as in scikit-learn:
``max |gradient| <= tol`` on the objective above.

Speed: L-BFGS runs in a preconditioned space ``W = Q diag((e + delta)^-1/2) Q^T V`` where
``Q diag(e) Q^T`` is the standardised features' correlation matrix (on a subsample; for
large ``d`` its top eigenpairs, the rest of the spectrum flattened to its mean) and
``delta = 4 / (C S)`` (the penalty's curvature over the largest logistic curvature 1/4). The
Hessian there is close to a multiple of the identity, so strongly correlated residual-stream
features need tens, not hundreds, of iterations. The optimum is unchanged (a change of
variables). Each problem has its own backtracking line search and stops on its own; an
iteration computes only the problems still running. Float32 data and matmuls, float64
loss accumulation; ``X`` is read, never copied.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import einops
import torch

# Below this many multiply-adds per pass over the features, one thread is faster: the many
# small tensor ops of L-BFGS lose more to thread synchronisation than they gain (several
# times slower with two threads on a loaded two-core machine).
SINGLE_THREAD_WORK = 2e8


@contextmanager
def threads_for(work: float) -> Iterator[None]:
    """Run the block single-threaded when ``work`` (multiply-adds per pass) is small."""
    before = torch.get_num_threads()
    if work < SINGLE_THREAD_WORK and before > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class LogisticFit:
    """Fitted probes on *raw* features (standardisation folded in).

    - ``coef``: ``[layer, problem, feature, class]``; ``intercept``: ``[layer, problem, class]``;
      logits of example ``x`` are ``x @ coef + intercept``.
    - ``n_iter``, ``converged``: ``[layer, problem]``; ``loss``: final objective ``[layer, problem]``.
    """

    coef: torch.Tensor
    intercept: torch.Tensor
    n_iter: torch.Tensor
    converged: torch.Tensor
    loss: torch.Tensor

    def logits(self, X: torch.Tensor, problems: list[int] | slice = slice(None)) -> torch.Tensor:
        """``X [layer, example, feature]`` -> logits ``[layer, problem, example, class]`` (of ``problems``)."""
        coef, intercept = self.coef[:, problems], self.intercept[:, problems]
        Z = torch.bmm(X, einops.rearrange(coef, "l p d k -> l d (p k)").to(X.dtype))  # [L, n, P*K]
        return einops.rearrange(Z, "l n (p k) -> l p n k", p=coef.shape[1]) + intercept[:, :, None, :]

    def log_proba(self, X: torch.Tensor, problems: list[int] | slice = slice(None)) -> torch.Tensor:
        """Log-probabilities ``[layer, problem, example, class]`` (of ``problems``)."""
        return torch.log_softmax(self.logits(X, problems), dim=-1)


def standardization(X: torch.Tensor, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer feature mean and scale ``[layer, feature]`` of ``X [layer, example, feature]``.

    As scikit-learn's ``StandardScaler`` (population std; constant features get scale 1).
    ``weights [example]`` (0/1) restricts the statistics to a training split. One layer at a
    time, so memory stays at one layer's copy.
    """
    L, n, d = X.shape
    w = None if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    mean = torch.zeros(L, d, dtype=torch.float64)
    var = torch.zeros(L, d, dtype=torch.float64)
    for layer in range(L):
        x = X[layer].float()
        if w is None:
            v, m = torch.var_mean(x, dim=0, correction=0)  # Welford: accurate in float32
            var[layer], mean[layer] = v.double(), m.double()
        else:
            total = w.double().sum()
            mean[layer] = (w @ x).double() / total
            var[layer] = (w @ (x - mean[layer].float()) ** 2).double() / total
    scale = var.sqrt()
    scale = torch.where(scale < 1e-12 * mean.abs().clamp_min(1), torch.ones_like(scale), scale)
    return mean.float(), scale.float()


@dataclass
class Preconditioner:
    """Spectrum of the standardised features' correlation matrix, per layer.

    ``Q [layer, feature, rank]`` top eigenvectors, ``e [layer, rank]`` their eigenvalues,
    ``tail [layer]`` the mean of the remaining eigenvalues (0 when ``rank == feature``).
    """

    e: torch.Tensor
    Q: torch.Tensor
    tail: torch.Tensor

    def __getitem__(self, layers: slice) -> Preconditioner:
        return Preconditioner(self.e[layers], self.Q[layers], self.tail[layers])


def preconditioner(
    X: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor, max_rows: int = 2048, rank: int = 192,
    exact_below: int = 384, seed: int = 0,
) -> Preconditioner:
    """Eigen-decomposition of the standardised features' correlation matrix (on at most
    ``max_rows`` seeded examples): exact for ``d <= exact_below``, else the top ``rank``
    eigenpairs by randomized subspace iteration (Halko et al. 2011) plus the tail's mean."""
    L, n, d = X.shape
    generator = torch.Generator().manual_seed(seed)
    sub = X[:, torch.randperm(n, generator=generator)[:max_rows]] if n > max_rows else X
    Z = (sub - mean[:, None, :]) / scale[:, None, :]
    cov = torch.bmm(Z.transpose(1, 2), Z) / Z.shape[1]  # [L, d, d]
    if d <= exact_below:
        e, Q = torch.linalg.eigh(cov.double())
        return Preconditioner(e.clamp_min(0).float(), Q.float(), torch.zeros(L))
    k = min(d, rank + 16)
    Y = torch.bmm(cov, torch.randn(L, d, k, generator=generator))
    for _ in range(3):
        Y = torch.bmm(cov, torch.linalg.qr(Y).Q)
    basis = torch.linalg.qr(Y).Q  # [L, d, k]
    e, S = torch.linalg.eigh(torch.bmm(basis.transpose(1, 2), torch.bmm(cov, basis)).double())
    e, Q = e[:, -rank:].clamp_min(0).float(), torch.bmm(basis, S[:, :, -rank:].float())
    tail = ((cov.diagonal(dim1=1, dim2=2).sum(1) - e.sum(1)) / (d - rank)).clamp_min(0)
    return Preconditioner(e, Q, tail)


def fit_logistic(
    X: torch.Tensor,
    y: torch.Tensor,
    C: float | torch.Tensor = 1.0,
    weights: torch.Tensor | None = None,
    n_classes: int | None = None,
    mean: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    max_iter: int = 100,
    tol: float = 1e-4,
    history: int = 10,
    precondition: bool | Preconditioner = True,
    binary_as_sklearn: bool = True,
    max_elements: int = 2**24,
    seed: int = 0,
) -> LogisticFit:
    """Fit ``layer x problem`` L2-regularised multinomial logistic regressions at once.

    - ``X``: features ``[layer, example, feature]`` (float32; not modified, not copied).
    - ``y``: labels in ``0..K-1``, ``[example]`` or ``[problem, example]``.
    - ``C``: inverse L2 strength (scikit-learn's meaning): a float, ``[problem]`` or
      ``[layer, problem]``.
    - ``weights``: per-example weights ``[example]`` or ``[problem, example]`` (0 leaves an
      example out: folds; class weights go here too). Default: all ones.
    - ``mean``, ``scale``: ``[layer, feature]`` standardisation shared by all problems
      (default: statistics of all of ``X``; :func:`standardization` computes a split's).
    - ``n_classes``: K (default ``y.max() + 1``).
    - ``precondition``: True, False, or a precomputed :func:`preconditioner`.
    - ``max_elements``: layers and problems are fitted in chunks whose logits
      ``[layer, problem, class, example]`` stay below this size (memory bound).

    Returns a :class:`LogisticFit` with ``coef [layer, problem, feature, class]`` on raw features.
    """
    if X.ndim != 3:
        raise ValueError(f"X must be [layer, example, feature], got shape {tuple(X.shape)}")
    X = X.float()
    L, n, d = X.shape
    y = torch.as_tensor(y, dtype=torch.long)
    if y.ndim == 1:
        y = y[None]
    if y.shape[-1] != n:
        raise ValueError(f"y has {y.shape[-1]} examples, X has {n}")
    K = int(n_classes if n_classes is not None else int(y.max()) + 1)
    if K < 2:
        raise ValueError("need at least 2 classes to fit a probe")
    if int(y.min()) < 0 or int(y.max()) >= K:
        raise ValueError(f"labels must lie in 0..{K - 1}")
    if weights is None:
        weights = torch.ones(1, n)
    weights = torch.as_tensor(weights, dtype=torch.float32)
    if weights.ndim == 1:
        weights = weights[None]
    C = torch.as_tensor(C, dtype=torch.float64)
    P = max(y.shape[0], weights.shape[0], C.shape[-1] if C.ndim else 1)
    y = y.expand(P, n)
    weights = weights.expand(P, n)
    C = C.expand(L, P) if C.ndim < 2 else C
    if C.shape != (L, P):
        raise ValueError(f"C must be a float, [problem] or [layer, problem] = [{L}, {P}], got {tuple(C.shape)}")
    if bool((C <= 0).any()):
        raise ValueError("C must be positive")
    if binary_as_sklearn and K == 2:
        C = C / 2  # scikit-learn's binary objective == symmetric multinomial at C / 2
    if bool((weights.double().sum(1) <= 0).any()):
        raise ValueError("every problem needs some examples with positive weight")
    if mean is None or scale is None:
        mean, scale = standardization(X)
    if precondition is True:
        precondition = preconditioner(X, mean, scale, seed=seed)
    pre = precondition if isinstance(precondition, Preconditioner) else None
    # chunks of layers x problems whose logits stay below max_elements
    per_problem = K * n
    p_chunk = max(1, min(P, max_elements // per_problem))
    l_chunk = max(1, min(L, max_elements // (per_problem * p_chunk)))
    parts = []
    with threads_for(l_chunk * p_chunk * per_problem * d):
        for l0 in range(0, L, l_chunk):
            ls = slice(l0, l0 + l_chunk)
            row = []
            for p0 in range(0, P, p_chunk):
                ps = slice(p0, p0 + p_chunk)
                row.append(
                    _lbfgs(
                        X[ls], y[ps], C[ls, ps], weights[ps], K, mean[ls], scale[ls],
                        None if pre is None else pre[ls], max_iter, tol, history,
                    )
                )
            parts.append(row)
    if len(parts) == 1 and len(parts[0]) == 1:
        return parts[0][0]
    cat = lambda name: torch.cat([torch.cat([getattr(f, name) for f in row], dim=1) for row in parts], dim=0)  # noqa: E731
    return LogisticFit(**{name: cat(name) for name in ("coef", "intercept", "n_iter", "converged", "loss")})


def _lbfgs(
    X: torch.Tensor,
    y: torch.Tensor,
    C: torch.Tensor,
    weights: torch.Tensor,
    K: int,
    mean: torch.Tensor,
    scale: torch.Tensor,
    pre: Preconditioner | None,
    max_iter: int,
    tol: float,
    history: int,
) -> LogisticFit:
    """Batched L-BFGS on ``X [L, n, d]``, ``y [P, n]``, ``C [L, P]``, ``weights [P, n]``.

    Each iteration computes only the problems (columns ``p``) still running in some layer, so
    a few slow problems do not keep the converged ones busy.
    """
    L, n, d = X.shape
    P = y.shape[0]
    S = weights.double().sum(1)  # [P]
    lam = (1.0 / (C * S[None, :])).float()  # [L, P] penalty on the mean-scaled objective
    if pre is not None:  # W = c V + Q diag(D - c) Q^T V: D on the top eigenvectors, c on the rest
        Q = pre.Q  # [L, d, r]
        c = (pre.tail[:, None] + 4 * lam).rsqrt() if Q.shape[-1] < d else torch.zeros_like(lam)  # [L, P]
        D_minus_c = (pre.e[:, None, :] + 4 * lam[:, :, None]).rsqrt() - c[..., None]  # [L, P, r]
    else:
        Q = None
    inv_scale = 1.0 / scale  # [L, d]
    shift = mean * inv_scale  # [L, d]
    w_norm = (weights.double() / S[:, None]).float()  # [P, n]

    # Coefficients are class-major, [L, P, K, d]: contiguous for both matmuls.
    def to_W(V: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Preconditioned parameters V -> W, the coefficients of standardised features (symmetric map)."""
        if Q is None:
            return V
        p = len(cols)
        U = torch.bmm(einops.rearrange(V, "l p k d -> l (p k) d"), Q)  # [L, p*K, r]
        U = einops.rearrange(U, "l (p k) r -> l p k r", p=p) * D_minus_c[:, cols, None, :]
        W = torch.bmm(einops.rearrange(U, "l p k r -> l (p k) r"), Q.transpose(1, 2))
        return einops.rearrange(W, "l (p k) d -> l p k d", p=p) + c[:, cols, None, None] * V

    def evaluate(theta: torch.Tensor, cols: torch.Tensor):
        """Objective [L, p] (float64), gradient wrt theta, max |gradient| wrt (W, b), for problems ``cols``."""
        p = len(cols)
        V = einops.rearrange(theta[..., : d * K], "l p (k d) -> l p k d", k=K)
        b = theta[..., d * K :]
        W = to_W(V, cols)
        Weff = W * inv_scale[:, None, None, :]
        beff = b - torch.einsum("ld,lpkd->lpk", shift, W)
        Z = torch.bmm(X, einops.rearrange(Weff, "l p k d -> l d (p k)"))  # [L, n, p*K]: fast on CPU
        Z = einops.rearrange(Z, "l n (p k) -> l p k n", p=p).contiguous() + beff[..., None]
        logp = torch.log_softmax(Z, dim=2)  # over classes; examples innermost
        index = y[cols][None, :, None, :].expand(L, p, 1, n)
        wn = w_norm[cols][None, :, None, :]
        loss = -(logp.gather(2, index).double() * wn.double()).sum((2, 3))
        loss += 0.5 * lam[:, cols].double() * (W.double() ** 2).sum((2, 3))
        G = logp.exp_()
        G.scatter_add_(2, index, -torch.ones(L, p, 1, n))
        G.mul_(wn)  # d loss / d logits, [L, p, K, n]
        grad_beff = G.sum(-1)  # [L, p, K]
        grad_Weff = torch.bmm(einops.rearrange(G, "l p k n -> l (p k) n"), X)  # [L, p*K, d]
        grad_Weff = einops.rearrange(grad_Weff, "l (p k) d -> l p k d", p=p)
        grad_W = grad_Weff * inv_scale[:, None, None, :] - torch.einsum("ld,lpk->lpkd", shift, grad_beff)
        grad_W += lam[:, cols, None, None] * W
        gmax = torch.maximum(grad_W.abs().amax((2, 3)), grad_beff.abs().amax(2))
        grad_V = to_W(grad_W, cols)  # the preconditioner is symmetric
        grad = torch.cat([einops.rearrange(grad_V, "l p k d -> l p (k d)"), grad_beff], dim=2)
        return loss, grad, gmax

    # ---- batched L-BFGS over the L x P independent problems, parameters theta = (V, b)
    every = torch.arange(P)
    theta = torch.zeros(L, P, (d + 1) * K)
    loss, grad, gmax = evaluate(theta, every)
    s_hist = torch.zeros(L, P, history, theta.shape[-1])
    y_hist = torch.zeros_like(s_hist)
    rho = torch.zeros(L, P, history)  # 0 marks an empty or skipped pair: it then does nothing
    gamma = torch.zeros(L, P)  # initial inverse-Hessian scale s'y / y'y of the newest good pair
    n_iter = torch.zeros(L, P, dtype=torch.long)
    active = gmax > tol
    for it in range(max_iter):
        cols = active.any(0).nonzero().squeeze(1)
        if not len(cols):
            break
        act = active[:, cols]
        th, g, f = theta[:, cols], grad[:, cols], loss[:, cols]
        sh, yh, rh = s_hist[:, cols], y_hist[:, cols], rho[:, cols]
        # two-loop recursion, newest pair first
        slots = [(it - 1 - i) % history for i in range(min(it, history))]
        q = g.clone()
        alphas = []
        for slot in slots:
            a = rh[..., slot] * (sh[..., slot, :] * q).sum(-1)
            q -= a[..., None] * yh[..., slot, :]
            alphas.append(a)
        first = 1.0 / g.norm(dim=-1).clamp_min(1.0)  # first step: at most unit length
        gm = gamma[:, cols]
        r = q * torch.where(gm > 0, gm, first)[..., None]
        for slot, a in zip(reversed(slots), reversed(alphas)):
            beta = rh[..., slot] * (yh[..., slot, :] * r).sum(-1)
            r += (a - beta)[..., None] * sh[..., slot, :]
        direction = -r
        slope = (direction * g).sum(-1)
        bad = slope >= 0
        if bool(bad.any()):  # not a descent direction: scaled steepest descent
            direction = torch.where(bad[..., None], -g * first[..., None], direction)
            slope = (direction * g).sum(-1)
        direction = direction * act[..., None]
        # backtracking (Armijo) line search, each problem with its own step
        step = torch.ones_like(f, dtype=torch.float32)
        accepted = ~act
        new_th, new_f, new_g, new_gmax = th.clone(), f.clone(), g.clone(), gmax[:, cols].clone()
        for _ in range(30):
            trial = th + step[..., None] * direction
            t_f, t_g, t_gmax = evaluate(trial, cols)
            ok = ~accepted & (t_f <= f + 1e-4 * step.double() * slope.double())
            if bool(ok.any()):
                new_th = torch.where(ok[..., None], trial, new_th)
                new_f = torch.where(ok, t_f, new_f)
                new_g = torch.where(ok[..., None], t_g, new_g)
                new_gmax = torch.where(ok, t_gmax, new_gmax)
                accepted |= ok
            if bool(accepted.all()):
                break
            step = torch.where(accepted, step, step * 0.5)
        stalled = ~accepted  # no decrease found: at the float32 precision floor
        s = new_th - th
        yv = new_g - g
        sy = (s * yv).sum(-1)
        yy = (yv * yv).sum(-1)
        good = act & accepted & (sy > 1e-10 * yy) & (yy > 0)
        slot = it % history
        sh[..., slot, :] = s * good[..., None]
        yh[..., slot, :] = yv * good[..., None]
        rh[..., slot] = torch.where(good, 1.0 / sy.clamp_min(1e-30), torch.zeros_like(sy))
        change = (f - new_f).abs() / torch.maximum(f.abs(), torch.ones_like(f))
        s_hist[:, cols], y_hist[:, cols], rho[:, cols] = sh, yh, rh
        gamma[:, cols] = torch.where(good, sy / yy.clamp_min(1e-30), gm)
        theta[:, cols], loss[:, cols], grad[:, cols], gmax[:, cols] = new_th, new_f, new_g, new_gmax
        n_iter[:, cols] += act.long()
        active[:, cols] = act & (new_gmax > tol) & ~stalled & (change > 1e-12)

    W = to_W(einops.rearrange(theta[..., : d * K], "l p (k d) -> l p k d", k=K), every)
    coef = einops.rearrange(W * inv_scale[:, None, None, :], "l p k d -> l p d k")
    intercept = theta[..., d * K :] - torch.einsum("ld,lpkd->lpk", shift, W)
    return LogisticFit(coef=coef, intercept=intercept, n_iter=n_iter, converged=gmax <= tol, loss=loss)
