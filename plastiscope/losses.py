"""The one next-token loss every part of plastiscope uses.

Convention (:mod:`plastiscope.data`): a document is one sequence ``[BOS] + tokens``, right-padded
in a batch with a mask. The target at position ``p`` (``1 <= p < length``) is token ``p``,
predicted from the logits at ``p - 1``; BOS and padding are never targets. The loss of a token
is its cross-entropy in nats, ``logsumexp(logits) - logit of the token``, computed in float32
whatever the model's dtype.

- :func:`token_losses`: per-token losses of a batch from its logits, computed a slice of
  positions at a time so that no float32 copy of the whole ``[batch, pos, vocab]`` logits is
  ever made (a bfloat16 model's logits stay bfloat16).
- :func:`sequence_loss`: the token-weighted mean over a batch, differentiable: the number a
  trainer logs and optimises, equal to ``transformers``' own ``labels=`` loss.
- :func:`document_losses`: each document's summed loss and target count over a corpus (no
  gradients), from which per-document means and the token-weighted corpus mean follow.

**Response-only loss** (supervised fine-tuning on prompt/response documents): a ``loss_mask``
``[batch, pos]`` (True on the tokens that count as targets, e.g. the response) narrows the
targets further; :func:`document_losses` takes each document's ``first_target`` (where its
response starts). With prompt positions masked, the loss equals ``transformers``' own
``labels=`` loss with the prompt's labels set to -100.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from einops import rearrange

from plastiscope.data import pad

# Float32 elements of one slice of logits (batch x positions x vocab) turned into losses at once: 64 MiB,
# e.g. 32 positions of a 16-document batch at a 32k vocabulary; and at most 1/LOGIT_SLICES of the
# positions, so that the work buffers stay a small fraction of the logits themselves.
LOGIT_BUDGET = 1 << 24
LOGIT_SLICES = 16


def token_losses(
    logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, loss_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy at every position of a right-padded batch.

    ``logits [batch, pos, vocab]`` (any float dtype), ``tokens [batch, pos]``, ``mask
    [batch, pos]`` (True on real tokens, BOS included). Returns ``(loss, target)``, both
    ``[batch, pos - 1]``: column ``p - 1`` is the loss (nats, float32) of token ``p``, 0 where
    ``target`` is False (padding; with ``loss_mask [batch, pos]``, also every token where it is False).
    Positions are processed in slices so that the float32 work
    buffers stay under :data:`LOGIT_BUDGET` elements and 1/:data:`LOGIT_SLICES` of the logits:
    no float32 copy of the whole logits is made. Differentiable.
    """
    batch, pos, vocab = logits.shape
    target = mask[:, 1:] & mask[:, :-1]
    if loss_mask is not None:
        target = target & loss_mask[:, 1:].to(target.device)
    step = max(1, min(LOGIT_BUDGET // max(1, batch * vocab), -(-pos // LOGIT_SLICES)))
    pieces = []
    for start in range(0, pos - 1, step):
        stop = min(pos - 1, start + step)
        chunk = logits[:, start:stop].float()
        picked = chunk.gather(2, rearrange(tokens[:, start + 1 : stop + 1], "batch pos -> batch pos 1"))
        pieces.append(torch.logsumexp(chunk, dim=-1) - rearrange(picked, "batch pos 1 -> batch pos"))
    loss = torch.cat(pieces, dim=1) if pieces else logits.new_zeros((batch, 0), dtype=torch.float32)
    return torch.where(target, loss, torch.zeros((), dtype=loss.dtype, device=loss.device)), target


def model_device(model: Any) -> torch.device:
    """Where ``model``'s parameters are (the CPU for a model without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def sequence_loss(model: Any, tokens: torch.Tensor, mask: torch.Tensor, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Token-weighted mean next-token cross-entropy of a batch under ``model`` (a scalar, differentiable).

    ``model`` is a ``transformers`` causal LM; ``tokens``, ``mask`` ``[batch, pos]`` as in
    :func:`token_losses`. Equals ``model(tokens, attention_mask=mask, labels=tokens with -100
    on padding).loss``: the sum of every real target token's loss over their number. ``loss_mask``
    (optional, ``[batch, pos]``): only tokens where it is True are targets (labels -100 elsewhere).
    """
    logits = model(tokens, attention_mask=mask.long()).logits
    loss, target = token_losses(logits, tokens, mask, loss_mask)
    return loss.sum() / target.sum().clamp_min(1)


@torch.no_grad()
def document_losses(
    model: Any, ids: Sequence[Sequence[int]], pad_id: int, batch_size: int = 16, device: torch.device | str | None = None,
    first_target: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(loss_sum [doc], n_targets [doc])``: each document's summed next-token loss (nats) and target count.

    ``ids`` are token lists under the documents convention; the model runs in eval mode on
    ``device`` (default: where its parameters are) and is put back in its previous mode.
    ``loss_sum / n_targets`` is a document's mean loss; ``loss_sum.sum() / n_targets.sum()``
    the token-weighted mean over the corpus (what a trainer logs). ``first_target[i]`` (optional):
    the first position of document ``i`` that is a target (its response's first token); the
    tokens before it are context only.
    """
    device = device or model_device(model)
    was_training = model.training
    model.eval()
    sums, counts = np.zeros(len(ids)), np.zeros(len(ids), dtype=np.int64)
    try:
        for start in range(0, len(ids), batch_size):
            tokens, mask = pad(ids[start : start + batch_size], pad_id)
            tokens, mask = tokens.to(device), mask.to(device)
            starts = None if first_target is None else first_target[start : start + batch_size]
            loss, target = token_losses(model(tokens, attention_mask=mask.long()).logits, tokens, mask,
                                        None if starts is None else from_position(mask, starts))
            sums[start : start + len(tokens)] = loss.double().sum(1).cpu().numpy()
            counts[start : start + len(tokens)] = target.sum(1).cpu().numpy()
    finally:
        model.train(was_training)
    return sums, counts


def from_position(mask: torch.Tensor, starts: Sequence[int]) -> torch.Tensor:
    """``[batch, pos]`` True from position ``starts[i]`` of row ``i`` on (and within ``mask``): a response-only loss mask."""
    first = torch.as_tensor(list(starts), device=mask.device)
    return mask & (torch.arange(mask.shape[1], device=mask.device) >= first[:, None])


def mean_per_document(loss_sum: np.ndarray, n_targets: np.ndarray) -> np.ndarray:
    """``[doc]`` mean loss per target token of each document; NaN for a document without a target."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_targets > 0, loss_sum / np.maximum(n_targets, 1), np.nan)
