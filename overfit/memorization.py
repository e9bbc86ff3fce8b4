"""Exact memorization by greedy continuation (Carlini et al. 2022, "Quantifying Memorization
Across Neural Language Models").

A document is *extractable* with a ``k``-token prefix when greedy decoding from that
prefix reproduces the document's next ``m`` tokens exactly. Under the foundation's
convention every sequence the model saw starts with BOS, so the prompt is
``[BOS] + first k tokens`` (BOS is not counted in ``k``) and the target is tokens
``k+1 .. k+m`` after BOS. Documents with fewer than ``k + m`` tokens after BOS are skipped
and counted, never an error. Also reported: the matched-prefix length, the number of
leading continuation tokens reproduced before the first mismatch (0..m).

Greedy decoding reproduces the target exactly when, at every target position, the model's argmax
given the prompt and the *true* preceding target tokens is the true token: by induction the
greedy continuation then equals the target, and at the first position where the argmax differs,
greedy decoding leaves the target too. So one teacher-forced forward pass over
``[BOS] + k + m`` tokens gives both the exact-match flag and the matched-prefix length, with no
decoding loop and no KV cache: nothing depends on a library's generation or cache API. The pass
runs the model's own attention modules with fused SDPA (:func:`plastiscope.activations.native_attention`).
``tests/test_overfit.py`` checks the equality against ``generate()``-based decoding
(:func:`plastiscope.generation.greedy_generate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from plastiscope.activations import native_attention
from plastiscope.data import encode


@dataclass
class Memorization:
    """Per-document results: ``doc_index [doc]`` (rows of the Documents tested),
    ``exact [doc]`` bool, ``matched [doc]`` int in ``0..m``; ``skipped_short``: documents too
    short for ``k + m`` tokens; ``not_sampled``: long-enough documents left out by the cap."""

    doc_index: np.ndarray
    exact: np.ndarray
    matched: np.ndarray
    skipped_short: int
    not_sampled: int


def exact_memorization(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    n_ctx: int,
    prefix_tokens: int = 32,
    continuation_tokens: int = 16,
    max_docs: int | None = 256,
    batch_size: int = 16,
    seed: int = 0,
) -> Memorization:
    """Greedy-continuation test of ``texts`` (see module docstring) on at most ``max_docs`` of them.

    When more documents are long enough than ``max_docs``, a seeded random sample is tested.
    """
    k, m = int(prefix_tokens), int(continuation_tokens)
    if k < 1 or m < 1:
        raise ValueError(f"prefix_tokens and continuation_tokens must be >= 1, got {k} and {m}")
    n_bos = 1 if tokenizer.bos_token_id is not None else 0
    if n_bos + k + m > n_ctx:
        raise ValueError(
            f"prefix_tokens + continuation_tokens = {k + m} (+ BOS) exceeds the model's context of {n_ctx} tokens; "
            f"lower them"
        )
    ids = [encode(tokenizer, text, n_bos + k + m) for text in texts]
    eligible = np.array([i for i, doc in enumerate(ids) if len(doc) == n_bos + k + m], dtype=np.int64)
    skipped = len(ids) - len(eligible)
    chosen = eligible
    if max_docs is not None and len(eligible) > max_docs:
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(eligible, size=max_docs, replace=False))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    exact, matched = [], []
    for start in range(0, len(chosen), batch_size):
        rows = torch.tensor([ids[i] for i in chosen[start : start + batch_size]], dtype=torch.long, device=device)
        truth = rows[:, n_bos + k :]  # [batch, m]
        with torch.no_grad(), native_attention(model):  # logits at the last m + 1 positions; the final one predicts past the target
            logits = model(input_ids=rows, logits_to_keep=m + 1).logits[:, :-1]
        same = (logits.argmax(-1) == truth).cpu()  # [batch, m]
        exact.append(same.all(dim=1))
        matched.append(same.long().cumprod(dim=1).sum(dim=1))  # leading run of matches
    model.train(was_training)
    return Memorization(
        doc_index=chosen,
        exact=torch.cat(exact).numpy() if exact else np.zeros(0, dtype=bool),
        matched=torch.cat(matched).numpy() if matched else np.zeros(0, dtype=np.int64),
        skipped_short=int(skipped),
        not_sampled=int(len(eligible) - len(chosen)),
    )
