"""Basins: loss along filter-normalised random directions (Li et al. 2018) and the radius where it rises.

Perturbations change the weights in place and restore them bit-exactly from a saved copy
(:func:`restored`), also on error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from einops import rearrange

Params = Sequence[torch.Tensor]
Vectors = list[torch.Tensor]


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
