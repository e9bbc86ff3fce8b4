"""The pattern statistics of :mod:`.patterns`, computed exactly from queries and keys, without the pattern.

An attention layer's pattern on one document of ``n`` real tokens is, per head,
``A_ij = softmax_j(s_ij)`` over the keys ``j`` that query ``i`` may attend to, with scores
``s_ij = softcap(scaling * q_i . k_j)`` (``softcap(s) = c tanh(s / c)`` under Gemma 2's logit
softcapping, the identity otherwise): ``q`` and ``k`` after the rotary embedding (and any
query/key norm), ``scaling`` the model's own (``1/sqrt(d_head)`` unless it sets another), the
allowed keys those of the model's own attention mask of that layer (causal, sliding window).
This is what :class:`plastiscope.activations.AttentionInputs` carries, from a forward that runs
fused SDPA and never makes the pattern.

Every metric of :data:`.patterns.PATTERN_METRICS` follows from the rows' log-normaliser
``lse_i = log sum_j exp(s_ij)`` (``A_ij = exp(s_ij - lse_i)``):

- entropy ``H_i = lse_i - sum_j A_ij s_ij`` (the Shannon entropy of the row, in nats);
- normalised entropy ``H_i / log(k_i)`` with ``k_i`` the number of allowed keys of row ``i``
  (rows with one key left out), as in :mod:`.patterns`;
- sink ``A_i0``, distance ``sum_j A_ij (i - j)``, one-hot ``max_j A_ij > threshold``, squares
  ``sum_j A_ij^2`` (the Frobenius norm);
- spectra of the first ``L = min(n, spectral_tokens)`` tokens from the exact ``[L, L]`` block of
  the pattern, built from its scores (causal: rows ``i < L`` see only keys ``j < L``).

Cost: the scores of a block of query rows over the keys they may see (keys before every row's
window are skipped), all heads of one document, at most :data:`QK_BLOCK_ELEMENTS` floats
(O(block x pos) per head) in two reused float32 buffers; each row's softmax is taken over all
its keys at once (``max_j A_ij = 1 / sum_j exp(s_ij - max_j s_ij)`` gives ``lse_i``), so the
statistics are exact to float32 rounding, whatever the document's length. This is the model's
own arithmetic (eager attention takes the same float32 softmax): against the eager pattern's
statistics every metric agrees to float32 rounding (tests/test_attention.py, on GPT-2, Llama
with grouped-query attention, GPT-NeoX, OLMo-2, Gemma 2 and Mistral). One document and layer
at 2048 tokens and 16 heads of 32 dimensions costs ~2x the SDPA attention of that layer on
one CPU thread (scores, a fused softmax and five reductions over them, against one fused
kernel); the whole analysis against a bare SDPA forward: ``benchmarks/scale_context.py``.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange

from plastiscope.activations import AttentionInputs

from .patterns import PATTERN_METRICS, SPECTRAL_TOKENS, check_options, one_thread, summarize_rows
from .spectra import spectral_summary


def check_inputs(inputs: AttentionInputs, mask: torch.Tensor) -> torch.Tensor:
    """Validate ``inputs`` against ``mask [batch, pos]`` (bool, right-padded); return the lengths ``[batch]``."""
    q, k = inputs.query, inputs.key
    if q.ndim != 4 or k.ndim != 4 or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:] or q.shape[1] % k.shape[1]:
        raise ValueError(
            f"query {tuple(q.shape)} and key {tuple(k.shape)} must be [batch, head, pos, d_head] and "
            f"[batch, kv_head, pos, d_head] with kv_head dividing head"
        )
    if mask.dtype != torch.bool or mask.shape != (q.shape[0], q.shape[2]):
        raise ValueError(f"mask must be bool [batch, pos] = {(q.shape[0], q.shape[2])}, got {mask.dtype} {tuple(mask.shape)}")
    lengths = mask.sum(dim=1)
    if not torch.equal(mask, torch.arange(mask.shape[1], device=mask.device)[None, :] < lengths[:, None]):
        raise ValueError("mask must be right-padded: each row True on its first n tokens, then False")
    if bool((lengths == 0).any()):
        raise ValueError("every document needs at least one real token (BOS); got an all-padding row")
    if inputs.allowed is not None and inputs.allowed.shape[-2:] != (q.shape[2], q.shape[2]):
        raise ValueError(f"allowed {tuple(inputs.allowed.shape)} must be [batch, 1, pos, pos] with pos = {q.shape[2]}")
    return lengths


def qk_statistics(
    inputs: AttentionInputs,
    mask: torch.Tensor,
    tol: float = 1e-2,
    one_hot_threshold: float = 0.9,
    spectral_tokens: int | None = SPECTRAL_TOKENS,
) -> dict[str, torch.Tensor]:
    """Per-document, per-head pattern statistics of one layer from its queries and keys (module docstring).

    ``inputs``: the layer's :class:`~plastiscope.activations.AttentionInputs` (``query [batch,
    head, pos, d_head]``, ``key [batch, kv_head, pos, d_head]``, mask, scaling, softcap);
    ``mask``: ``[batch, pos]`` bool, True on real tokens (right-padded). Returns ``{metric:
    [batch, head]}`` (float64, on the queries' device) for every metric of :data:`PATTERN_METRICS`,
    equal to :func:`.patterns.pattern_statistics` of the layer's pattern with its ``keys``.
    """
    lengths = check_inputs(inputs, mask)
    check_options(tol, one_hot_threshold, spectral_tokens)
    batch, heads = inputs.query.shape[:2]
    out = {m: torch.empty(batch, heads, dtype=torch.float64, device=inputs.query.device) for m in PATTERN_METRICS}
    for b, n in enumerate(lengths.tolist()):
        if inputs.allowed is None:
            allowed = torch.ones(n, n, dtype=torch.bool, device=inputs.query.device).tril()
        else:
            allowed = inputs.allowed[b if inputs.allowed.shape[0] > 1 else 0, 0, :n, :n]
        stats = document_qk_statistics(
            inputs.query[b, :, :n], inputs.key[b, :, :n], allowed, inputs.scaling, inputs.softcap, tol, one_hot_threshold, spectral_tokens
        )
        for metric, value in stats.items():
            out[metric][b] = value
    return out


QK_BLOCK_ELEMENTS = 1 << 20  # scores held at once (all heads of a block of query rows, their keys): 4 MiB in float32
MASKED = -1e30  # score of a key a row may not attend to: finite, so its weight is exactly 0 and 0 * log 0 stays 0


def blocked_columns(allowed: torch.Tensor) -> list[slice]:
    """Column ranges of ``allowed [rows, keys]`` that hold a blocked (False) entry: under causal or sliding-window masks
    a prefix (keys out of the window) and a suffix (the block's own triangle); the whole range otherwise."""
    blocked = (~allowed).any(0)
    if not bool(blocked.any()):
        return []
    free = (~blocked).nonzero()[:, 0]
    if len(free) == 0 or bool((blocked[free[0] : free[-1] + 1]).any()):
        return [slice(0, allowed.shape[1])]
    return [r for r in (slice(0, int(free[0])), slice(int(free[-1]) + 1, allowed.shape[1])) if r.stop > r.start]


def scores(
    q: torch.Tensor, k: torch.Tensor, scaling: float, softcap: float | None, allowed: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Float32 scores ``[kv_head, group * rows, keys]`` of ``q [kv_head, group, rows, d]`` against ``k [kv_head, keys, d]``,
    :data:`MASKED` where ``allowed [rows, keys]`` is False, into ``out``."""
    groups = q.shape[1]
    q = rearrange(q.float(), "kv g r d -> kv (g r) d")
    k = k.float().transpose(-2, -1)
    shape = (q.shape[0], q.shape[1], k.shape[-1])
    out = torch.empty(shape, device=q.device) if out is None else out[: math.prod(shape)].view(shape)
    if softcap is None:
        torch.baddbmm(out, q, k, beta=0.0, alpha=scaling, out=out)
    else:
        torch.bmm(q, k, out=out).mul_(scaling / softcap).tanh_().mul_(softcap)
    for cols in blocked_columns(allowed):
        out[..., cols].masked_fill_(~allowed[:, cols].repeat(groups, 1), MASKED)
    return out


def document_qk_statistics(
    q: torch.Tensor, k: torch.Tensor, allowed: torch.Tensor, scaling: float, softcap: float | None,
    tol: float, one_hot_threshold: float, spectral_tokens: int | None, block: int | None = None,
) -> dict[str, torch.Tensor]:
    """Every metric of :data:`PATTERN_METRICS` for one document: ``q [head, n, d]``, ``k [kv_head, n, d]``,
    ``allowed [n, n]`` bool (query, key); ``{metric: [head]}`` float64. Raises for attention above the
    diagonal, a row with no key, or non-finite scores. Work memory: two float32 buffers of ``block`` elements."""
    heads, n, _ = q.shape
    if bool(allowed.triu(1).any()):
        raise ValueError("the attention mask lets queries attend to later keys: only causal attention (key j <= query i) is supported")
    keys = allowed.sum(-1)  # [n]
    if bool((keys == 0).any()):
        raise ValueError("the attention mask leaves a real query row with no key to attend to")
    groups = heads // k.shape[0]
    qg = rearrange(q, "(kv g) n d -> kv g n d", g=groups)  # head h reads key head h // groups (repeat_kv)
    rows = {name: torch.empty(heads, n, device=q.device) for name in ("entropy", "sink", "distance", "one_hot")}
    squares = torch.zeros(heads, dtype=torch.float64, device=q.device)
    positions = torch.arange(n, device=q.device, dtype=torch.float32)
    step = max(1, (block or QK_BLOCK_ELEMENTS) // max(1, heads * n))  # query rows per block
    size = heads * min(step, n) * n
    S, P = torch.empty(size, device=q.device), torch.empty(size, device=q.device)  # reused: no allocation per block
    per_row = lambda x: rearrange(x, "kv (g r) -> (kv g) r", g=groups)  # noqa: E731
    for i0 in range(0, n, step):
        i1 = min(n, i0 + step)
        lo = int(allowed[i0:i1, :i1].any(0).nonzero()[0, 0])  # keys before lo are out of every row's window: never computed
        s = scores(qg[:, :, i0:i1], k[:, lo:i1], scaling, softcap, allowed[i0:i1, lo:i1], out=S)  # [kv, (g rows), keys]
        p = torch.softmax(s, dim=-1, out=P[: s.numel()].view(s.shape))  # the pattern's rows A_ij, 0 where not allowed
        top = p.amax(-1)  # max_j A_ij = 1 / sum_j exp(s_ij - max_j s_ij), so lse_i = max_j s_ij - log max_j A_ij
        lse = s.amax(-1) - top.log()
        rows["sink"][:, i0:i1] = per_row(p[..., 0]) if lo == 0 else 0.0
        rows["distance"][:, i0:i1] = per_row(positions[i0:i1].repeat(groups) - p @ positions[lo:i1])  # sum_j A_ij (i - j)
        rows["one_hot"][:, i0:i1] = per_row((top > one_hot_threshold).float())
        squares += per_row(torch.linalg.vector_norm(p, dim=-1).square()).double().sum(-1)
        rows["entropy"][:, i0:i1] = per_row(lse - p.mul_(s).sum(-1))  # lse_i - sum_j A_ij s_ij (p used up)
    checks = torch.stack([rows["entropy"].sum(), rows["distance"].sum(), squares.sum().float()])
    if not bool(torch.isfinite(checks).all()):
        raise ValueError("the attention scores are non-finite (NaN/inf): the model's weights or inputs are broken")
    stats = summarize_rows(rows | {"squares": squares}, keys)
    L = n if spectral_tokens is None else min(n, spectral_tokens)
    block_pattern = torch.softmax(scores(qg[:, :, :L], k[:, :L], scaling, softcap, allowed[:L, :L]), dim=-1)
    block_pattern = rearrange(block_pattern, "kv (g i) j -> (kv g) i j", g=groups)  # the pattern's leading [L, L] block
    with one_thread():
        singular_values = torch.linalg.svdvals(block_pattern)  # [head, L]
    return spectral_summary(singular_values, tol) | stats
