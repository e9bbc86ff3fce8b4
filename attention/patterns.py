"""Statistics of attention patterns, per document and head, at O(pos^2) cost per head.

An attention pattern ``A`` (``blocks.{l}.attn.hook_pattern``) of one head on one document
of ``n`` real tokens is the ``[n, n]`` matrix of softmax weights: row ``i`` (query
position, BOS = 0) distributes attention over keys ``j <= i`` (causal). Per document and
head (the metric names of the results schema in brackets):

- **Entropy** [``entropy``]: mean over the ``n`` query rows (the first included) of
  ``-sum_j A_ij log A_ij`` in nats (Shannon; ``0 log 0 = 0``). Uniform causal attention has
  entropy ``log(i + 1)`` on row ``i``, a one-hot row 0.
- **Normalised entropy** [``entropy_normalized``]: the same, each row divided by
  ``log(k_i)``, the entropy of uniform attention over the ``k_i`` keys row ``i`` may attend
  to under the layer's own attention mask: ``i + 1`` under full causal attention,
  ``min(i + 1, w)`` under a sliding window of ``w`` keys (Mistral, Gemma 2's local layers);
  rows with one key are left out (row 0 always), so a one-token document has none (NaN,
  dropped from means). In [0, 1]: 1 is uniform attention over the keys the row may see.
  ``keys`` gives ``k_i`` (the pass's ``blocks.{l}.attn.keys``); without it, full causal
  attention is assumed.
- **Where attention goes**, means over the ``n`` query rows: [``sink_share``] the weight on
  the first token ``A_i0`` (the attention sink; Xiao et al. 2023, arXiv 2309.17453);
  [``mean_distance``] ``sum_j A_ij (i - j)`` in tokens; [``one_hot_share``] the share of rows
  whose largest weight exceeds ``one_hot_threshold`` (0.9). Row 0 always puts its whole
  weight on itself (sink 1, distance 0, one-hot), as for the entropy.
- [``frobenius_norm``] ``||A||_F = sqrt(sum_ij A_ij^2)`` of the whole ``[n, n]`` pattern.
- **Spectra of the first** ``L = min(n, spectral_tokens)`` **tokens** (:mod:`.spectra`):
  [``effective_rank``] (Roy & Vetterli 2007), [``stable_rank``] (Rudelson & Vershynin 2007,
  with the block's own Frobenius norm), [``numerical_rank``] (singular values above
  ``tol * sigma_max``), [``spectral_norm``], [``nuclear_norm``], all from the exact singular
  values (LAPACK/cuSOLVER ``svdvals``) of the leading ``[L, L]`` block ``A[:L, :L]``. Under
  causal attention, row ``i < L`` attends only to keys ``j <= i < L``, so this block *is* the
  pattern the model produces on the document truncated to its first ``L`` tokens: exactly
  the spectrum of the whole pattern for documents of at most ``spectral_tokens`` tokens, and
  the spectrum over their first ``spectral_tokens`` tokens for longer ones. ``spectral_tokens
  = None`` uses the whole document (O(n^3) per head; at 2048 tokens that made the attention
  analysis of a d_model-256 Llama cost 22x its bare forward).

Everything except the spectra is exact and O(n^2) per head; the spectra cost
O(spectral_tokens^3) per head, independent of the document's length. The only error is
floating-point rounding: row statistics are computed in float32 per row (on the pattern's
device) and averaged in float64; singular values in float32, summarised in float64 (against
numpy's float64 SVD every metric agrees to a relative 1e-6: ``benchmarks/attention.py``). A
bfloat16 pattern is read as float32 a block of rows at a time.

Padding: batches are right-padded. Each document is read from its own ``[n, n]`` block, so
padded query rows are never read and padded keys (``j >= n > i``) lie above the diagonal;
every value equals that of the document alone.

Memory and cost: only the causal (lower) triangle is read, a block of query rows at a time
(all heads of one document, at most :data:`BLOCK_ELEMENTS` weights and 1/:data:`BLOCK_FRACTION`
of the batch's pattern), into two reused float32 buffers of a block each, so the temporaries
stay a small fraction of one pattern (2 x 16 MiB against 2 GiB for a 16-document, 16-head
bfloat16 batch at 2048 tokens); above the diagonal only a maximum is taken (the causality
check). The SVDs
run with one intra-op thread: LAPACK's SVD of attention-sized matrices gains little from
threads and, on a loaded machine, loses 4-20x to thread contention.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

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
SPECTRAL_TOKENS = 128  # default leading block of the spectral metrics (the ``spectral_tokens`` option)
BLOCK_ELEMENTS = 1 << 22  # pattern weights read at once (all heads of a block of query rows): 16 MiB in float32,
BLOCK_FRACTION = 16  # and at most 1/16 of the batch's pattern


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
    return lengths


def check_options(tol: float, one_hot_threshold: float, spectral_tokens: int | None) -> None:
    """A clear error for an option out of its range."""
    if not 0 < one_hot_threshold < 1:
        raise ValueError(f"one_hot_threshold={one_hot_threshold!r} must be in (0, 1), e.g. 0.9")
    if not 0 < tol < 1:
        raise ValueError(f"tol={tol!r}: the relative tolerance of the numerical rank must be in (0, 1), e.g. 1e-2")
    if spectral_tokens is not None and spectral_tokens < 1:
        raise ValueError(f"spectral_tokens={spectral_tokens!r} must be a positive number of tokens, or None for whole documents")


def check_keys(keys: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """``keys [batch, pos]`` (keys each query row may attend to) validated against ``mask``; None: full causal (``i + 1``)."""
    lengths = mask.sum(dim=1)
    if keys is None:
        return torch.arange(1, mask.shape[1] + 1).expand(mask.shape).clone()
    if keys.shape != mask.shape:
        raise ValueError(f"keys {tuple(keys.shape)} must be [batch, pos] like the mask {tuple(mask.shape)}")
    keys = keys.cpu()
    real = torch.arange(mask.shape[1])[None, :] < lengths.cpu()[:, None]
    rows = torch.arange(1, mask.shape[1] + 1).expand(mask.shape)
    if bool(((keys < 1) & real).any()) or bool(((keys > rows) & real).any()):
        raise ValueError("keys: each real query row i may attend to between 1 and i + 1 keys (causal attention)")
    return keys


def pattern_statistics(
    pattern: torch.Tensor,
    mask: torch.Tensor,
    tol: float = 1e-2,
    one_hot_threshold: float = 0.9,
    spectral_tokens: int | None = SPECTRAL_TOKENS,
    keys: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-document, per-head statistics of a batch of causal attention patterns.

    ``pattern``: ``[batch, head, pos, pos]`` softmax weights (query, key), any float dtype;
    ``mask``: ``[batch, pos]`` bool, True on real tokens (right-padded); ``keys``: ``[batch, pos]``
    the number of keys each query row may attend to under the layer's attention mask (the
    normalised entropy's denominator; None: full causal, ``i + 1``). Returns
    ``{metric: [batch, head]}`` (float64, on the pattern's device) for every metric of
    :data:`PATTERN_METRICS` (definitions and cost in the module docstring).
    """
    lengths = check_pattern(pattern, mask)
    check_options(tol, one_hot_threshold, spectral_tokens)
    keys = check_keys(keys, mask)
    batch, heads = pattern.shape[:2]
    block = max(1, min(BLOCK_ELEMENTS, pattern.numel() // BLOCK_FRACTION))
    out = {m: torch.empty(batch, heads, dtype=torch.float64, device=pattern.device) for m in PATTERN_METRICS}
    for b, n in enumerate(lengths.tolist()):
        A = pattern[b, :, :n, :n]  # [head, n, n], a view
        for metric, value in document_statistics(A, tol, one_hot_threshold, spectral_tokens, block, keys[b, :n]).items():
            out[metric][b] = value
    return out


def document_statistics(
    A: torch.Tensor, tol: float, one_hot_threshold: float, spectral_tokens: int | None, block: int = BLOCK_ELEMENTS,
    keys: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Every metric of :data:`PATTERN_METRICS` for one document's patterns ``A [head, n, n]`` (no padding): ``{metric: [head]}``.

    ``keys [n]``: keys each row may attend to (None: ``i + 1``).
    """
    n = A.shape[-1]
    stats = summarize_rows(row_statistics(A, one_hot_threshold, block), keys if keys is not None else torch.arange(1, n + 1))
    L = n if spectral_tokens is None else min(n, spectral_tokens)
    with one_thread():
        singular_values = torch.linalg.svdvals(A[:, :L, :L].float())  # [head, L]
    return spectral_summary(singular_values, tol) | stats  # the Frobenius norm is the whole pattern's, not the block's


def summarize_rows(rows: dict[str, torch.Tensor], keys: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-document means (float64 ``[head]``) of :func:`row_statistics`' rows ``[head, n]``, and the Frobenius norm.

    ``keys [n]``: the number of keys each row may attend to; rows with one key have no
    normalised entropy (NaN when no row has more).
    """
    entropy = rows["entropy"].double()  # [head, n]
    several = keys.to(entropy.device) > 1
    log_keys = torch.log(keys.to(device=entropy.device, dtype=torch.float64)[several])
    normalized = (entropy[:, several] / log_keys).mean(-1) if bool(several.any()) else entropy.new_full(entropy.shape[:1], math.nan)
    return {
        "entropy": entropy.mean(-1),
        "entropy_normalized": normalized,
        "sink_share": rows["sink"].double().mean(-1),
        "mean_distance": rows["distance"].double().mean(-1),
        "one_hot_share": rows["one_hot"].double().mean(-1),
        "frobenius_norm": rows["squares"].sqrt(),  # of the whole pattern, not only the first spectral_tokens tokens
    }


def row_statistics(A: torch.Tensor, one_hot_threshold: float, block: int = BLOCK_ELEMENTS) -> dict[str, torch.Tensor]:
    """Per-row statistics of one document's causal patterns ``A [head, n, n]``, reading the lower triangle
    ``block`` weights at a time: ``entropy``, ``sink``, ``distance``, ``one_hot`` ``[head, n]`` (float32)
    and ``squares`` ``[head]`` (sum of squared weights, float64). Raises for weight above the diagonal
    or non-finite weights. Work memory: two float32 buffers of ``block`` elements."""
    heads, n, _ = A.shape
    out = {k: torch.empty(heads, n, device=A.device) for k in ("entropy", "sink", "distance", "one_hot")}
    squares = torch.zeros(heads, dtype=torch.float64, device=A.device)
    above = torch.zeros((), device=A.device)
    step = max(1, block // max(1, heads * n))  # query rows per block
    work = torch.empty(heads * min(step, n) * n, device=A.device)
    copy = torch.empty_like(work) if A.dtype != torch.float32 else None
    for i0 in range(0, n, step):
        i1 = min(n, i0 + step)
        X = A[:, i0:i1, :i1]  # [head, rows, keys <= last row]
        if copy is not None:
            X = copy[: X.numel()].view(X.shape).copy_(X)
        W = work[: X.numel()].view(X.shape)
        offset = (torch.arange(i0, i1, device=A.device)[:, None] - torch.arange(i1, device=A.device)[None, :]).float()  # i - j
        out["entropy"][:, i0:i1] = -torch.xlogy(X, X, out=W).sum(-1)
        out["distance"][:, i0:i1] = torch.mul(X, offset, out=W).sum(-1)
        out["sink"][:, i0:i1] = X[..., 0]
        out["one_hot"][:, i0:i1] = (X.amax(-1) > one_hot_threshold).float()
        squares += torch.linalg.vector_norm(X, dim=(-2, -1)).double().square()
        diagonal = torch.mul(X[..., i0:i1], offset[:, i0:i1] < 0, out=W[..., : i1 - i0])  # above the diagonal, within the block
        above = torch.maximum(above, torch.maximum(diagonal.amax(), -diagonal.amin()))
        if i1 < n:  # the rest of these rows
            rest = A[:, i0:i1, i1:]
            above = torch.maximum(above, torch.maximum(rest.amax(), -rest.amin()).float())
    checks = torch.stack([above, out["entropy"].sum(), out["distance"].sum(), squares.sum().float()]).tolist()
    if not all(math.isfinite(v) for v in checks):
        raise ValueError("the attention pattern has non-finite values (NaN/inf): the model's weights or inputs are broken")
    if checks[0] > CAUSAL_TOLERANCE:
        raise ValueError(
            f"the attention pattern puts weight {checks[0]:.3g} above the diagonal: only causal attention "
            f"(query i attends to keys j <= i) is supported"
        )
    out["squares"] = squares
    return out
