"""Norms and ranks of a matrix from its singular values, batched over leading dimensions.

One definition serves attention patterns (:mod:`.patterns`: the leading ``[L, L]`` block of
each document's pattern, its first ``spectral_tokens`` tokens) and weight circuits
(:mod:`.weights`). For singular values ``s_1 >= s_2 >= ... >= 0`` of a matrix ``A``:

- Frobenius norm ``||A||_F = sqrt(sum_i s_i^2)``; spectral norm ``||A||_2 = s_1``; nuclear
  norm ``||A||_* = sum_i s_i``.
- Stable rank ``||A||_F^2 / ||A||_2^2`` (Rudelson & Vershynin 2007): between 1 and the rank,
  insensitive to tiny singular values.
- Effective rank ``exp(H(p))``, ``p_i = s_i / sum_j s_j`` (Roy & Vetterli 2007): the
  exponential of the Shannon entropy (nats) of the normalised spectrum; zero singular values
  contribute nothing (``0 log 0 = 0``), so padding a matrix with zero rows/columns leaves it unchanged.
- Numerical rank at relative tolerance ``tol``: the number of ``s_i > tol * s_1``.

A zero matrix has every norm 0 and its ranks are NaN (stable and effective rank are
undefined) or 0 (numerical rank).
"""

from __future__ import annotations

import torch

SPECTRAL_METRICS = ("frobenius_norm", "spectral_norm", "nuclear_norm", "stable_rank", "effective_rank", "numerical_rank")


def spectral_summary(singular_values: torch.Tensor, tol: float = 1e-2) -> dict[str, torch.Tensor]:
    """Norms and ranks from singular values ``[..., r]`` (any order, non-negative).

    Returns ``{metric: [...]}`` for the metrics of :data:`SPECTRAL_METRICS`, in float64.
    """
    if not 0 < tol < 1:
        raise ValueError(f"tol={tol!r}: the relative tolerance of the numerical rank must be in (0, 1), e.g. 1e-2")
    s = singular_values.double().clamp_min(0)
    s_max = s.amax(dim=-1)
    sum_s = s.sum(dim=-1)
    sum_s2 = s.square().sum(dim=-1)
    p = s / sum_s.unsqueeze(-1)  # NaN for a zero matrix
    entropy = -torch.xlogy(p, p).sum(dim=-1)
    return {
        "frobenius_norm": sum_s2.sqrt(),
        "spectral_norm": s_max,
        "nuclear_norm": sum_s,
        "stable_rank": sum_s2 / s_max.square(),
        "effective_rank": entropy.exp(),
        "numerical_rank": (s > tol * s_max.unsqueeze(-1)).sum(dim=-1).double(),
    }
