"""Statistics of attention patterns, per document and head, for a whole batch at once.

An attention pattern ``A`` (``blocks.{l}.attn.hook_pattern``) of one head on one document
of ``n`` real tokens is the ``[n, n]`` matrix of softmax weights: row ``i`` (query
position, BOS = 0) distributes attention over keys ``j <= i`` (causal). Per document and
head (the metric names of the results schema in brackets):

- **Entropy** [``entropy``]: mean over the ``n`` query rows (the first included) of
  ``-sum_j A_ij log A_ij`` in nats (Shannon; ``0 log 0 = 0``). Uniform causal attention has
  entropy ``log(i + 1)`` on row ``i``, a one-hot row 0.
- **Normalised entropy** [``entropy_normalized``]: the same, each row divided by
  ``log(i + 1)``, the entropy of uniform attention over the ``i + 1`` keys it may attend to;
  row 0 (one key) is left out, so a one-token document has none (NaN, dropped from means).
  In [0, 1]: 1 is uniform attention. Assumes full causal attention (no sliding window).
- **Rank and norms** of ``A`` from its singular values (:mod:`.spectra`): [``effective_rank``]
  (Roy & Vetterli 2007), [``stable_rank``] (Rudelson & Vershynin 2007), [``numerical_rank``]
  (singular values above ``tol * sigma_max``), [``frobenius_norm``], [``spectral_norm``],
  [``nuclear_norm``].
- **Where attention goes**, means over the ``n`` query rows: [``sink_share``] the weight on
  the first token ``A_i0`` (the attention sink; Xiao et al. 2023); [``mean_distance``]
  ``sum_j A_ij (i - j)`` in tokens; [``one_hot_share``] the share of rows whose largest
  weight exceeds ``one_hot_threshold`` (0.9). Row 0 always puts its whole weight on
  itself (sink 1, distance 0, one-hot), as for the entropy.

Padding: batches are right-padded; rows and columns of padded positions are zeroed before
anything is computed, so a zero-padded ``[pos, pos]`` matrix has the singular values of the
real ``[n, n]`` block plus zeros (which are set to exactly 0 and change no metric), and row
means run over real rows only. Every value equals that of the document alone.

Efficiency: the singular values of all heads of all documents of a batch come from one
batched ``torch.linalg.svdvals`` call on ``[batch * head, q, k]``; everything else is
vectorised over the batch. The computation runs with one intra-op thread: LAPACK's SVD of
attention-sized matrices gains little from threads and, on a loaded machine, loses 4-20x
to thread contention (``benchmarks/attention.py`` measures it); one thread also makes the
numbers independent of the thread count.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import einops
import torch

from .spectra import spectral_summary

PATTERN_METRICS = (
    "entropy",
    "entropy_normalized",
    "effective_rank",
    "stable_rank",
    "numerical_rank",
    "frobenius_norm",
    "spectral_norm",
    "nuclear_norm",
    "sink_share",
    "mean_distance",
    "one_hot_share",
)
CAUSAL_TOLERANCE = 1e-4  # largest weight above the diagonal still taken as causal (float noise)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the enclosed torch calls with one intra-op thread, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def check_pattern(pattern: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Validate ``pattern [batch, head, q, k]`` against ``mask [batch, pos]``; return the lengths ``[batch]``."""
    if pattern.ndim != 4:
        raise ValueError(f"pattern must be [batch, head, query_pos, key_pos], got shape {tuple(pattern.shape)}")
    batch, _, q, k = pattern.shape
    if mask.shape != (batch, q) or q != k:
        raise ValueError(
            f"pattern {tuple(pattern.shape)} and mask {tuple(mask.shape)} disagree: expected pattern "
            f"[batch, head, pos, pos] and mask [batch, pos] with the same batch and pos"
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool (True on real tokens), got {mask.dtype}")
    lengths = mask.sum(dim=1)
    positions = torch.arange(q, device=mask.device)
    if not torch.equal(mask, positions[None, :] < lengths[:, None]):
        raise ValueError("mask must be right-padded: each row True on its first n tokens, then False")
    if bool((lengths == 0).any()):
        raise ValueError("every document needs at least one real token (BOS); got an all-padding row")
    if not bool(torch.isfinite(pattern).all()):
        raise ValueError("the attention pattern has non-finite values (NaN/inf): the model's weights or inputs are broken")
    return lengths


def pattern_statistics(
    pattern: torch.Tensor, mask: torch.Tensor, tol: float = 1e-2, one_hot_threshold: float = 0.9
) -> dict[str, torch.Tensor]:
    """Per-document, per-head statistics of a batch of causal attention patterns.

    ``pattern``: ``[batch, head, pos, pos]`` softmax weights (query, key); ``mask``:
    ``[batch, pos]`` bool, True on real tokens (right-padded). Returns
    ``{metric: [batch, head]}`` (float64) for every metric of :data:`PATTERN_METRICS`
    (see the module docstring for definitions).
    """
    with one_thread():
        return _pattern_statistics(pattern, mask, tol, one_hot_threshold)


def _pattern_statistics(
    pattern: torch.Tensor, mask: torch.Tensor, tol: float, one_hot_threshold: float
) -> dict[str, torch.Tensor]:
    lengths = check_pattern(pattern, mask)
    if not 0 < one_hot_threshold < 1:
        raise ValueError(f"one_hot_threshold={one_hot_threshold!r} must be in (0, 1), e.g. 0.9")
    batch, _, pos, _ = pattern.shape
    real = mask.to(pattern.dtype)
    A = pattern * einops.rearrange(real, "b q -> b 1 q 1") * einops.rearrange(real, "b k -> b 1 1 k")
    above = torch.triu(A, diagonal=1).abs().amax().item() if pos > 1 else 0.0
    if above > CAUSAL_TOLERANCE:
        raise ValueError(
            f"the attention pattern puts weight {above:.3g} above the diagonal: only causal attention "
            f"(query i attends to keys j <= i) is supported"
        )

    # per query row: [batch, head, q]
    row_entropy = -torch.xlogy(A, A).sum(dim=-1).double()
    position = torch.arange(pos, device=A.device)
    offset = (position[:, None] - position[None, :]).to(A.dtype)  # i - j, [q, k]
    row_distance = (A * offset).sum(dim=-1).double()
    row_sink = A[..., 0].double()
    row_one_hot = (A.amax(dim=-1) > one_hot_threshold).double()

    rows = einops.rearrange(mask.double(), "b q -> b 1 q")
    n_rows = einops.rearrange(lengths.double(), "b -> b 1")
    multi_key = rows * (position >= 1).double()  # rows with at least two keys
    log_keys = torch.log((position + 1).clamp_min(2).double())

    def row_mean(values: torch.Tensor) -> torch.Tensor:
        return (values * rows).sum(dim=-1) / n_rows

    stats = {
        "entropy": row_mean(row_entropy),
        "entropy_normalized": (row_entropy / log_keys * multi_key).sum(dim=-1) / (n_rows - 1),  # 0/0 = NaN for n = 1
        "sink_share": row_mean(row_sink),
        "mean_distance": row_mean(row_distance),
        "one_hot_share": row_mean(row_one_hot),
    }

    s = torch.linalg.svdvals(einops.rearrange(A, "b h q k -> (b h) q k"))
    s = einops.rearrange(s, "(b h) r -> b h r", b=batch)
    # the real [n, n] block has at most n non-zero singular values; the rest are exactly 0
    s = s * (position[None, None, :] < lengths[:, None, None])
    stats.update(spectral_summary(s, tol=tol))
    return {name: stats[name] for name in PATTERN_METRICS}
