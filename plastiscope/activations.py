"""Stream activations of a checkpoint over documents, one batch at a time.

Hook points are named as in TransformerLens (``blocks.{l}.hook_resid_post``,
``blocks.{l}.attn.hook_pattern``, ...). Only the requested hooks are cached
(``names_filter``), so memory is bounded by one batch whatever the dataset size.
Documents follow the convention of :mod:`plastiscope.data` (BOS + text, truncated to the
context, right-padded); sorting by length keeps padding small.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from tqdm.auto import tqdm

from plastiscope.data import Documents, encode, load_documents
from plastiscope.data import pad as pad_ids

if TYPE_CHECKING:
    from plastiscope.checkpoint import Checkpoint


@dataclass
class Batch:
    """One batch of documents and the activations of the requested hook points.

    - ``tokens``: ``[batch, pos]`` int64 token ids, right-padded.
    - ``mask``: ``[batch, pos]`` bool, True on real tokens (BOS included).
    - ``doc_index``: ``[batch]`` int64, each row's index in the :class:`Documents`.
    - ``activations``: hook name -> tensor, e.g. ``hook_resid_post`` ``[batch, pos, d_model]``,
      ``attn.hook_pattern`` ``[batch, head, query_pos, key_pos]`` (float32).
    - ``logits``: ``[batch, pos, vocab]`` float32 when requested, else None.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    doc_index: torch.Tensor
    activations: dict[str, torch.Tensor]
    logits: torch.Tensor | None = None


class Consumer(Protocol):
    """Reads batches of one shared forward pass (see :func:`run_pass`)."""

    names: Sequence[str]  # hook points it reads
    needs_logits: bool

    def update(self, batch: Batch) -> None:
        """Read one batch of the pass."""


def tokenize(checkpoint: Checkpoint, data: Documents) -> list[list[int]]:
    """Token ids of every document under the convention, with the checkpoint's tokenizer and context."""
    tokenizer = checkpoint.tokenizer
    return [encode(tokenizer, text, checkpoint.n_ctx) for text in data.texts]


def stream(
    checkpoint: Checkpoint,
    data: Documents | Sequence[str],
    names: Sequence[str] = (),
    batch_size: int = 16,
    max_tokens: int | None = None,
    return_logits: bool = False,
    progress: bool = True,
) -> Iterator[Batch]:
    """Yield :class:`Batch` es of ``names`` hook activations over ``data``.

    ``max_tokens`` stops after the batch that passes that many real tokens. Documents are
    processed in order of decreasing length (``doc_index`` maps rows back).
    """
    data = load_documents(data) if not isinstance(data, Documents) else data
    bridge = checkpoint.bridge
    unknown = sorted(set(names) - set(bridge.hook_dict))
    if unknown:
        raise KeyError(
            f"{checkpoint.name}: no hook point {unknown[:3]}; hook names look like "
            f"'blocks.0.hook_resid_post' and 'blocks.0.attn.hook_pattern'"
        )
    ids = tokenize(checkpoint, data)
    vocab = checkpoint.vocab_size
    for i, doc in enumerate(ids):
        if doc and max(doc) >= vocab:
            raise ValueError(
                f"{checkpoint.name}: document {i} of {data.source} has token id {max(doc)} >= the model's "
                f"vocabulary ({vocab}); the tokenizer does not belong to this model - save the training "
                f"tokenizer in the checkpoint folder"
            )
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    wanted = set(names)
    pad = checkpoint.tokenizer.pad_token_id or 0
    device = next(bridge.original_model.parameters()).device
    seen = 0
    bar = tqdm(total=len(ids), desc=f"{checkpoint.name}", unit="doc", disable=not progress, leave=False)
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            tokens, mask = pad_ids([ids[i] for i in rows], pad)
            with torch.no_grad():
                if wanted:
                    logits, cache = bridge.run_with_cache(
                        tokens.to(device), attention_mask=mask.long().to(device), names_filter=lambda n: n in wanted
                    )
                    acts = {name: cache[name].float() for name in names}
                else:
                    logits, acts = bridge(tokens.to(device), attention_mask=mask.long().to(device)), {}
            yield Batch(
                tokens=tokens.to(device),
                mask=mask.to(device),
                doc_index=torch.tensor(rows),
                activations=acts,
                logits=logits.float() if return_logits else None,
            )
            bar.update(len(rows))
            seen += int(mask.sum())
            if max_tokens is not None and seen >= max_tokens:
                break
    finally:
        bar.close()


def run_pass(
    checkpoint: Checkpoint,
    data: Documents,
    consumers: Sequence[Consumer],
    batch_size: int = 16,
    max_tokens: int | None = None,
    progress: bool = True,
) -> None:
    """One forward pass over ``data`` feeding every consumer: the union of their hooks is cached once."""
    if not consumers:
        return
    names = list(dict.fromkeys(name for c in consumers for name in c.names))
    needs_logits = any(c.needs_logits for c in consumers)
    for batch in stream(checkpoint, data, names, batch_size, max_tokens, needs_logits, progress):
        for consumer in consumers:
            consumer.update(batch)
