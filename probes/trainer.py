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
``Q diag(e) Q^T`` is the features' correlation matrix (estimated on a subsample) and
``delta = 4 / (C S)``; the Hessian there is close to a multiple of the identity, so
anisotropic residual-stream features need tens, not hundreds, of iterations. The optimum is
unchanged (a change of variables). Per-problem backtracking line search, float32 data with
float64 loss accumulation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import einops
import torch


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

    def logits(self, X: torch.Tensor) -> torch.Tensor:
        """``X [layer, example, feature]`` -> logits ``[layer, problem, example, class]``."""
        L, P, d, K = self.coef.shape
        W = einops.rearrange(self.coef, "l p d k -> l d (p k)")
        Z = torch.bmm(X, W.to(X.dtype))
        Z = einops.rearrange(Z, "l n (p k) -> l p n k", p=P) + self.intercept[:, :, None, :]
        return Z

    def log_proba(self, X: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``[layer, problem, example, class]``."""
        return torch.log_softmax(self.logits(X), dim=-1)


def standardization(X: torch.Tensor, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer feature mean and scale ``[layer, feature]`` of ``X [layer, example, feature]``.

    As scikit-learn's ``StandardScaler`` (population std; constant features get scale 1).
    ``weights [example]`` (0/1) restricts the statistics to a training split.
    """
    if weights is None:
        mean = X.mean(1, dtype=torch.float64)
        var = (X.double() ** 2).mean(1) - mean**2 if X.shape[1] < 2**16 else X.double().var(1, unbiased=False)
    else:
        w = weights.to(torch.float64)
        w = w / w.sum()
        mean = torch.einsum("n,lnd->ld", w, X.double())
        var = torch.einsum("n,lnd->ld", w, X.double() ** 2) - mean**2
    scale = var.clamp_min(0).sqrt()
    scale = torch.where(scale < 10 * torch.finfo(torch.float32).eps * mean.abs().clamp_min(1), torch.ones_like(scale), scale)
    return mean.float(), scale.float()


def _preconditioner(X: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor, max_rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition ``(e [layer, feature], Q [layer, feature, feature])`` of the features' correlation matrix."""
    L, n, d = X.shape
    if n > max_rows:
        rows = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_rows]
        sub = X[:, rows]
    else:
        sub = X
    Z = (sub - mean[:, None, :]) / scale[:, None, :]
    cov = torch.bmm(Z.transpose(1, 2), Z) / Z.shape[1]
    e, Q = torch.linalg.eigh(cov.double())
    return e.clamp_min(0).float(), Q.float()


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
    precondition: bool = True,
    precondition_rows: int = 4096,
    binary_as_sklearn: bool = True,
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
      (default: statistics of all of ``X``; pass a training split's, from
      :func:`standardization`, to keep held-out examples out of them).
    - ``n_classes``: K (default ``y.max() + 1``).

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
    S = weights.double().sum(1)  # [P]
    if bool((S <= 0).any()):
        raise ValueError("every problem needs some examples with positive weight")
    if mean is None or scale is None:
        mean, scale = standardization(X)
    lam = (1.0 / (C * S[None, :])).float()  # [L, P] penalty on the mean-scaled objective

    if precondition:
        e, Q = _preconditioner(X, mean, scale, precondition_rows, seed)
        # per (layer, problem) diagonal of the preconditioner in Q's basis
        D = (e[:, None, :] + 4 * lam[:, :, None]).rsqrt()  # [L, P, d]
    else:
        Q, D = None, None

    inv_scale = 1.0 / scale  # [L, d]
    shift = mean * inv_scale  # [L, d]
    w_norm = (weights.double() / S[:, None]).float()  # [P, n]
    onehot_y = y.T  # [n, P]

    def to_W(V: torch.Tensor) -> torch.Tensor:  # V [L, P, d, K] -> W (standardised-feature coefficients)
        if Q is None:
            return V
        U = torch.einsum("lde,lpek->lpdk", Q.transpose(1, 2), V) * D[..., None]
        return torch.einsum("lde,lpek->lpdk", Q, U)

    def evaluate(V: torch.Tensor, b: torch.Tensor):
        """Objective [L, P] (float64), gradients wrt V and b, max |gradient| wrt (W, b)."""
        W = to_W(V)
        Weff = W * inv_scale[:, None, :, None]
        beff = b - torch.einsum("ld,lpdk->lpk", shift, W)
        Z = torch.bmm(X, einops.rearrange(Weff, "l p d k -> l d (p k)"))
        Z = einops.rearrange(Z, "l n (p k) -> l n p k", p=P) + beff[:, None]
        logp = torch.log_softmax(Z, dim=-1)
        nll = -logp.gather(-1, onehot_y[None, :, :, None].expand(L, n, P, 1)).squeeze(-1)  # [L, n, P]
        data_loss = torch.einsum("lnp,pn->lp", nll.double(), w_norm.double())
        loss = data_loss + 0.5 * lam.double() * (W.double() ** 2).sum((2, 3))
        G = logp.exp_()
        G.scatter_add_(-1, onehot_y[None, :, :, None].expand(L, n, P, 1), -torch.ones(L, n, P, 1))
        G.mul_(w_norm.T[None, :, :, None])  # [L, n, P, K]
        grad_beff = G.sum(1)  # [L, P, K]
        grad_Weff = torch.bmm(einops.rearrange(G, "l n p k -> l (p k) n"), X)  # [L, PK, d]  (fast layout)
        grad_Weff = einops.rearrange(grad_Weff, "l (p k) d -> l p d k", p=P)
        grad_W = grad_Weff * inv_scale[:, None, :, None] - torch.einsum("ld,lpk->lpdk", shift, grad_beff) + lam[..., None, None] * W
        gmax = torch.maximum(grad_W.abs().amax((2, 3)), grad_beff.abs().amax(2))
        grad_V = to_W(grad_W)  # the preconditioner is symmetric
        return loss, grad_V, grad_beff, gmax

    # ---- batched L-BFGS over the L*P independent problems, parameters theta = (V, b)
    V = torch.zeros(L, P, d, K)
    b = torch.zeros(L, P, K)

    def flat(V_, b_):
        return torch.cat([einops.rearrange(V_, "l p d k -> l p (d k)"), b_], dim=2)

    def unflat(t):
        return einops.rearrange(t[..., : d * K], "l p (d k) -> l p d k", d=d), t[..., d * K :]

    theta = flat(V, b)
    loss, gV, gb, gmax = evaluate(V, b)
    grad = flat(gV, gb)
    s_hist = torch.zeros(history, L, P, theta.shape[-1])
    y_hist = torch.zeros_like(s_hist)
    rho = torch.zeros(history, L, P)  # 0 marks an empty or skipped pair: it then does nothing
    gamma = torch.zeros(L, P)  # initial inverse-Hessian scale s'y / y'y of the newest good pair
    n_stored = 0
    n_iter = torch.zeros(L, P, dtype=torch.long)
    active = gmax > tol
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        # two-loop recursion, newest pair first
        slots = [(n_stored - 1 - i) % history for i in range(min(n_stored, history))]
        q = grad.clone()
        alphas = []
        for slot in slots:
            a = rho[slot] * (s_hist[slot] * q).sum(-1)
            q -= a[..., None] * y_hist[slot]
            alphas.append(a)
        first = 1.0 / grad.norm(dim=-1).clamp_min(1.0)  # first step: at most unit length
        r = q * torch.where(gamma > 0, gamma, first)[..., None]
        for slot, a in zip(reversed(slots), reversed(alphas)):
            beta = rho[slot] * (y_hist[slot] * r).sum(-1)
            r += (a - beta)[..., None] * s_hist[slot]
        direction = -r
        slope = (direction * grad).sum(-1)  # [L, P]
        bad = slope >= 0
        if bool(bad.any()):  # not a descent direction: fall back to scaled steepest descent
            direction = torch.where(bad[..., None], -grad * first[..., None], direction)
            slope = (direction * grad).sum(-1)
        direction = direction * active[..., None]
        # backtracking (Armijo) line search, each problem with its own step
        step = torch.ones(L, P)
        accepted = ~active
        new_theta, new_loss, new_grad, new_gmax = theta.clone(), loss.clone(), grad.clone(), gmax.clone()
        for _ in range(30):
            trial = theta + step[..., None] * direction
            t_loss, t_gV, t_gb, t_gmax = evaluate(*unflat(trial))
            ok = ~accepted & (t_loss <= loss + 1e-4 * step.double() * slope.double())
            if bool(ok.any()):
                new_theta = torch.where(ok[..., None], trial, new_theta)
                new_loss = torch.where(ok, t_loss, new_loss)
                new_grad = torch.where(ok[..., None], flat(t_gV, t_gb), new_grad)
                new_gmax = torch.where(ok, t_gmax, new_gmax)
                accepted = accepted | ok
            if bool(accepted.all()):
                break
            step = torch.where(accepted, step, step * 0.5)
        stalled = ~accepted  # no decrease found: at the float32 precision floor
        s = new_theta - theta
        yv = new_grad - grad
        sy = (s * yv).sum(-1)
        yy = (yv * yv).sum(-1)
        good = active & accepted & (sy > 1e-10 * yy) & (yy > 0)
        slot = n_stored % history
        s_hist[slot] = s * good[..., None]
        y_hist[slot] = yv * good[..., None]
        rho[slot] = torch.where(good, 1.0 / sy.clamp_min(1e-30), torch.zeros_like(sy))
        gamma = torch.where(good, sy / yy.clamp_min(1e-30), gamma)
        n_stored += 1
        n_iter += active.long()
        change = (loss - new_loss).abs() / torch.maximum(loss.abs(), torch.ones_like(loss))
        theta, loss, grad, gmax = new_theta, new_loss, new_grad, new_gmax
        active = active & (gmax > tol) & ~stalled & (change > 1e-12)

    V, b = unflat(theta)
    W = to_W(V)
    coef = W * inv_scale[:, None, :, None]
    intercept = b - torch.einsum("ld,lpdk->lpk", shift, W)
    return LogisticFit(coef=coef, intercept=intercept, n_iter=n_iter, converged=gmax <= tol, loss=loss)
