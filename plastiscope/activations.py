"""One forward pass of a checkpoint over documents, handed to consumers layer by layer.

Hook points are named as in TransformerLens (``blocks.{l}.hook_resid_post``,
``blocks.{l}.attn.hook_pattern``, ...); :data:`LOGITS` names the model's output. Documents
follow the convention of :mod:`plastiscope.data` (BOS + text, truncated to the context,
right-padded); they are batched in order of decreasing length, which keeps padding small.

**Streaming.** :func:`run_pass` gives each :class:`Consumer` every activation it asked for
*while the forward runs*, from a hook on that point, together with the batch's tokens, mask
and document indices (a :class:`Batch`); the consumer reduces it to what it keeps (per-document
statistics, a few selected rows) and lets it go. Nothing is cached: peak memory is that of the
forward itself (one layer's activations of one batch, e.g. the eager attention pattern
``[batch, head, pos, pos]``) plus the consumers' own small work buffers, whatever the number of
layers. Logits ``[batch, pos, vocab]`` are handed over after the forward, only when a consumer
asks for them (otherwise the unembedding runs on the last position only, where the model
allows it); :func:`plastiscope.losses.token_losses` reads them a slice of positions at a time.

**Precision and device.** The forward runs in the checkpoint's dtype on its device
(:meth:`plastiscope.checkpoint.Checkpoint.to`: e.g. bfloat16 on a GPU). Consumers receive
activations and logits as the model made them (that dtype, that device), compute on that
device, and accumulate their statistics in float32 or float64 (losses, pattern statistics,
probe features): a bfloat16 forward changes the inputs of a statistic by bfloat16 rounding,
never the arithmetic of the statistic.

**Failures.** With ``isolate=True`` (the runner's setting) a consumer that raises is no longer
fed and its error is returned, while the others finish the pass: one analysis's bug does not
fail the other analyses of a checkpoint.

:func:`stream` is the notebook iterator: it yields each batch with float32 copies of the
requested hooks of *every* requested layer, so it holds ``len(names)`` activations of one batch
at a time; analyses use :func:`run_pass`.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from tqdm.auto import tqdm

from plastiscope.data import Documents, encode, load_documents
from plastiscope.data import pad as pad_ids

if TYPE_CHECKING:
    from plastiscope.checkpoint import Checkpoint

LOGITS = "logits"  # not a hook point: the model's output [batch, pos, vocab], handed over after the forward


@dataclass
class Batch:
    """One batch of documents of a pass.

    - ``tokens``: ``[batch, pos]`` int64 token ids, right-padded, on the model's device.
    - ``mask``: ``[batch, pos]`` bool, True on real tokens (BOS included), on the model's device.
    - ``doc_index``: ``[batch]`` int64 on the CPU, each row's index in the :class:`Documents`.
    - ``activations`` (batches of :func:`stream` only): hook name -> float32 tensor, e.g.
      ``hook_resid_post`` ``[batch, pos, d_model]``, ``attn.hook_pattern`` ``[batch, head, query_pos, key_pos]``.
    - ``logits`` (batches of :func:`stream` with ``return_logits`` only): ``[batch, pos, vocab]``
      in the model's dtype.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    doc_index: torch.Tensor
    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None


class Consumer(Protocol):
    """Reads one shared forward pass (see :func:`run_pass`), one activation at a time.

    ``names``: the hook points it reads (and :data:`LOGITS` for the output). For each batch,
    ``read(batch, name, value)`` is called once per name: for a hook point inside the forward,
    as the hook fires (layers in the model's order), with ``value`` the live activation, e.g.
    ``[batch, pos, d_model]`` for ``blocks.{l}.hook_resid_post`` or ``[batch, head, pos, pos]``
    for ``blocks.{l}.attn.hook_pattern``; for :data:`LOGITS` after the forward, ``[batch, pos,
    vocab]``. Values are in the model's dtype on its device and must not be modified (the
    forward goes on with them) nor kept: keep what is derived from them, in float32 or float64.
    ``batch`` carries ``tokens``, ``mask`` and ``doc_index``; rows are right-padded.
    """

    names: Sequence[str]

    def read(self, batch: Batch, name: str, value: torch.Tensor) -> None:
        """Read one activation (or the logits) of one batch."""


def feed(consumer: Consumer, batch: Batch) -> None:
    """Give ``consumer`` what it reads from a batch of :func:`stream` (or one built by hand)."""
    for name in consumer.names:
        if name == LOGITS:
            if batch.logits is None:
                raise ValueError("this consumer reads the logits: stream with return_logits=True")
            consumer.read(batch, name, batch.logits)
        else:
            consumer.read(batch, name, batch.activations[name])


def tokenize(checkpoint: Checkpoint, data: Documents) -> list[list[int]]:
    """Token ids of every document under the convention, with the checkpoint's tokenizer and context."""
    tokenizer = checkpoint.tokenizer
    return [encode(tokenizer, text, checkpoint.n_ctx) for text in data.texts]


def batches(
    checkpoint: Checkpoint,
    data: Documents | Sequence[str],
    batch_size: int = 16,
    max_tokens: int | None = None,
    progress: bool = True,
) -> Iterator[Batch]:
    """Tokenized, right-padded batches of ``data`` on the model's device, longest documents first (no forward).

    ``max_tokens`` stops after the batch that passes that many real tokens.
    """
    data = load_documents(data) if not isinstance(data, Documents) else data
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
    pad = checkpoint.tokenizer.pad_token_id or 0
    device = input_device(checkpoint)
    seen = 0
    bar = tqdm(total=len(ids), desc=f"{checkpoint.name}", unit="doc", disable=not progress, leave=False)
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            tokens, mask = pad_ids([ids[i] for i in rows], pad)
            yield Batch(tokens=tokens.to(device), mask=mask.to(device), doc_index=torch.tensor(rows))
            bar.update(len(rows))
            seen += int(mask.sum())
            if max_tokens is not None and seen >= max_tokens:
                break
    finally:
        bar.close()


def input_device(checkpoint: Checkpoint) -> torch.device:
    """Where the model takes its input (its first parameter's device: the embedding under a device map)."""
    return next(checkpoint.bridge.original_model.parameters()).device


def check_names(checkpoint: Checkpoint, names: Sequence[str]) -> None:
    """A clear error for a name that is neither a hook point of the model nor :data:`LOGITS`."""
    unknown = sorted(set(names) - set(checkpoint.bridge.hook_dict) - {LOGITS})
    if unknown:
        raise KeyError(
            f"{checkpoint.name}: no hook point {unknown[:3]}; hook names look like "
            f"'blocks.0.hook_resid_post' and 'blocks.0.attn.hook_pattern' (or '{LOGITS}' for the output)"
        )


def _accepts_logits_to_keep(model: Any) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def run_pass(
    checkpoint: Checkpoint,
    data: Documents | Sequence[str],
    consumers: Sequence[Consumer],
    batch_size: int = 16,
    max_tokens: int | None = None,
    progress: bool = True,
    isolate: bool = False,
) -> dict[int, Exception]:
    """One forward pass over ``data`` feeding every consumer, layer by layer (see the module docstring).

    Returns ``{index in consumers: error}`` of the consumers that raised, when ``isolate``;
    those were no longer fed after their error, the others read the whole pass. Without
    ``isolate`` the first error is raised. The pass stops early when every consumer has failed.
    """
    failed: dict[int, Exception] = {}
    for _ in _passes(checkpoint, data, consumers, batch_size, max_tokens, progress, failed if isolate else None):
        pass
    return failed


def _passes(
    checkpoint: Checkpoint,
    data: Documents | Sequence[str],
    consumers: Sequence[Consumer],
    batch_size: int,
    max_tokens: int | None,
    progress: bool,
    failed: dict[int, Exception] | None,
) -> Iterator[Batch]:
    """Run the forward over ``data`` batch by batch, feeding ``consumers``; yield each batch once read.

    ``failed``: where a consumer's error is recorded (then it is skipped); None: errors propagate.
    """
    if not consumers:
        return
    names = list(dict.fromkeys(name for c in consumers for name in c.names))
    check_names(checkpoint, names)
    bridge = checkpoint.bridge
    readers = {name: [(i, c) for i, c in enumerate(consumers) if name in c.names] for name in names}

    def give(batch: Batch, name: str, value: Any) -> None:
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{checkpoint.name}: hook point {name!r} gave a {type(value).__name__}, not a tensor")
        value = value.detach()
        for i, consumer in readers[name]:
            if failed is not None and i in failed:
                continue
            try:
                consumer.read(batch, name, value)
            except Exception as err:
                if failed is None:
                    raise
                failed[i] = err

    extra = {"use_cache": False}
    wants_logits = LOGITS in readers
    if not wants_logits and _accepts_logits_to_keep(bridge.original_model):
        extra["logits_to_keep"] = 1  # nobody reads the logits: unembed the last position only
    for batch in batches(checkpoint, data, batch_size, max_tokens, progress):
        hooks = [(name, lambda value, hook, name=name, batch=batch: give(batch, name, value)) for name in names if name != LOGITS]
        with torch.no_grad(), bridge.hooks(fwd_hooks=hooks):
            logits = bridge(batch.tokens, attention_mask=batch.mask.long(), **extra)
        if wants_logits:
            give(batch, LOGITS, logits)
        del logits
        yield batch
        if failed is not None and len(failed) == len(consumers):
            return


class _Keep:
    """The consumer behind :func:`stream`: float32 copies of the activations, logits as they are."""

    def __init__(self, names: Sequence[str]):
        self.names = list(names)
        self.kept: dict[str, torch.Tensor] = {}

    def read(self, batch: Batch, name: str, value: torch.Tensor) -> None:
        """Keep a float32 copy of an activation (the logits in the model's dtype)."""
        self.kept[name] = value if name == LOGITS else value.float().clone()


def stream(
    checkpoint: Checkpoint,
    data: Documents | Sequence[str],
    names: Sequence[str] = (),
    batch_size: int = 16,
    max_tokens: int | None = None,
    return_logits: bool = False,
    progress: bool = True,
) -> Iterator[Batch]:
    """Yield :class:`Batch` es holding the ``names`` activations (float32 copies) of every batch of ``data``.

    For notebooks: a batch holds every requested hook of every requested layer at once, so
    memory grows with ``len(names)``; with ``return_logits`` it also holds the logits
    ``[batch, pos, vocab]`` in the model's dtype. Analyses read the pass layer by layer with
    :func:`run_pass` instead. ``max_tokens`` stops after the batch that passes that many real
    tokens; documents come longest first (``doc_index`` maps rows back). With neither names
    nor logits, the batches carry tokens and masks only (no forward runs).
    """
    check_names(checkpoint, names)
    keep = _Keep(list(names) + ([LOGITS] if return_logits else []))
    if not keep.names:  # tokens and masks only: no forward to run
        yield from batches(checkpoint, data, batch_size, max_tokens, progress)
        return
    for batch in _passes(checkpoint, data, [keep], batch_size, max_tokens, progress, None):
        batch.activations = {name: keep.kept[name] for name in names}
        batch.logits = keep.kept.get(LOGITS) if return_logits else None
        keep.kept = {}
        yield batch
