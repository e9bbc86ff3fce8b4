"""One forward pass of a checkpoint over documents, handed to consumers layer by layer.

Hook points are named as in TransformerLens (``blocks.{l}.hook_resid_post``,
``blocks.{l}.attn.hook_pattern``, ...); :data:`LOGITS` names the model's output. Documents
follow the convention of :mod:`plastiscope.data` (BOS + text, truncated to the context,
right-padded); they are batched in order of decreasing length, which keeps padding small.

**Streaming.** :func:`run_pass` gives each :class:`Consumer` every activation it asked for
*while the forward runs*, from a hook on that point, together with the batch's tokens, mask
and document indices (a :class:`Batch`); the consumer reduces it to what it keeps (per-document
statistics, a few selected rows) and lets it go. Nothing is cached: peak memory is that of the
forward itself (one layer's activations of one batch; the eager attention pattern
``[batch, head, pos, pos]`` only in a pass that reads a pattern) plus the consumers' own small
work buffers, whatever the number of layers. Logits ``[batch, pos, vocab]`` are handed over after the forward, only when a consumer
asks for them (otherwise the unembedding runs on the last position only, where the model
allows it); :func:`plastiscope.losses.token_losses` reads them a slice of positions at a time.

**Precision and device.** The forward runs in the checkpoint's dtype on its device
(:meth:`plastiscope.checkpoint.Checkpoint.to`: e.g. bfloat16 on a GPU). Consumers receive
activations and logits as the model made them (that dtype, that device), compute on that
device, and accumulate their statistics in float32 or float64 (losses, pattern statistics,
probe features): a bfloat16 forward changes the inputs of a statistic by bfloat16 rounding,
never the arithmetic of the statistic.

**Attention implementation.** TransformerBridge recomputes every attention layer itself and
materialises the softmax pattern ``[batch, head, pos, pos]`` (eager attention), whether or not
anything reads it. A pass whose consumers read no hook point inside an attention block
(``blocks.{l}.attn.*``, ``blocks.{l}.hook_attn_out``) runs on the model's own attention
modules with PyTorch's fused scaled-dot-product attention instead (:func:`native_attention`,
the floor a bare ``transformers`` forward reaches): residual-stream hooks and logits are the
same to float rounding, at a fraction of the time and memory at long contexts. Two names that
are not hook points come from that path: ``blocks.{l}.attn.inputs``
(:func:`attention_inputs_name`), the layer's post-rotary queries and keys with the model's
scaling, softcapping and mask (:class:`AttentionInputs`), from which the attention statistics
are computed exactly without the pattern; and ``blocks.{l}.attn.keys``
(:func:`attention_keys_name`), ``[batch, pos]`` the number of keys each query row may attend
to under the layer's own mask (sliding windows included), which is also handed out beside an
eager pattern.

A pass whose consumers read both a pattern and ``blocks.{l}.attn.inputs`` runs two forwards
per batch: the bridge's (eager) for every hook point, keys and logits, then the SDPA one for
the queries and keys.

**Failures.** With ``isolate=True`` (the runner's setting) a consumer that raises is no longer
fed and its error is returned, while the others finish the pass: one analysis's bug does not
fail the other analyses of a checkpoint.

:func:`stream` is the notebook iterator: it yields each batch with float32 copies of the
requested hooks of *every* requested layer, so it holds ``len(names)`` activations of one batch
at a time; analyses use :func:`run_pass`.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from tqdm.auto import tqdm

from plastiscope.data import Documents, encode, load_documents
from plastiscope.data import pad as pad_ids

if TYPE_CHECKING:
    from plastiscope.checkpoint import Checkpoint

LOGITS = "logits"  # not a hook point: the model's output [batch, pos, vocab], handed over after the forward
ATTENTION_IMPLEMENTATION = "plastiscope_fused"  # the attention function registered with transformers (see native_attention)
_ATTENTION_NAME = re.compile(r"^blocks\.(\d+)\.attn\.(inputs|keys)$")


def attention_inputs_name(layer: int) -> str:
    """Name (not a hook point) of layer ``layer``'s :class:`AttentionInputs`, handed out by passes on the model's own attention."""
    return f"blocks.{layer}.attn.inputs"


def attention_keys_name(layer: int) -> str:
    """Name (not a hook point) of ``[batch, pos]`` int64: the number of keys each query row of layer ``layer`` may attend to."""
    return f"blocks.{layer}.attn.keys"


@dataclass
class AttentionInputs:
    """What one attention layer's softmax is computed from, as the model's attention function receives it.

    - ``query``: ``[batch, head, pos, d_head]``, after the rotary embedding and any query/key norm.
    - ``key``: ``[batch, kv_head, pos, d_head]`` (grouped-query attention: query head ``h`` reads
      key head ``h // (head / kv_head)``, as ``transformers``' ``repeat_kv``).
    - ``allowed``: ``[batch, 1, pos, pos]`` bool, True where query ``i`` may attend to key ``j``
      (causality, padding, sliding windows); None: plain causal attention (``j <= i``).
    - ``scaling``: the factor of ``q . k`` (``1/sqrt(d_head)`` unless the model sets another).
    - ``softcap``: logit softcapping ``c`` (scores ``c tanh(s / c)``, Gemma 2), or None.

    The pattern is ``softmax_j(softcap(scaling * q_i . k_j))`` over the allowed keys.
    """

    query: torch.Tensor
    key: torch.Tensor
    allowed: torch.Tensor | None
    scaling: float
    softcap: float | None


@dataclass
class Batch:
    """One batch of documents of a pass.

    - ``tokens``: ``[batch, pos]`` int64 token ids, right-padded, on the model's device.
    - ``mask``: ``[batch, pos]`` bool, True on real tokens (BOS included), on the model's device.
    - ``doc_index``: ``[batch]`` int64 on the CPU, each row's index in the :class:`Documents`.
    - ``activations`` (batches of :func:`stream` only): hook name -> float32 tensor, e.g.
      ``hook_resid_post`` ``[batch, pos, d_model]``, ``attn.hook_pattern`` ``[batch, head, query_pos, key_pos]``
      (``attn.keys``: int64 ``[batch, pos]``; ``attn.inputs``: :class:`AttentionInputs` with float32 q and k).
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
    """A clear error for a name that is neither a hook point of the model, :data:`LOGITS`, nor an attention name of a layer it has."""
    n_layers = checkpoint.n_layers
    attention = {n for n in names if (m := _ATTENTION_NAME.match(n)) and int(m.group(1)) < n_layers}
    unknown = sorted(set(names) - set(checkpoint.bridge.hook_dict) - {LOGITS} - attention)
    if unknown:
        raise KeyError(
            f"{checkpoint.name}: no hook point {unknown[:3]}; hook names look like "
            f"'blocks.0.hook_resid_post' and 'blocks.0.attn.hook_pattern' (or '{LOGITS}' for the output, "
            f"'{attention_inputs_name(0)}' and '{attention_keys_name(0)}' for what attention is computed from)"
        )


def _keys_of(allowed: torch.Tensor | None, batch: int, pos: int) -> torch.Tensor:
    """``[batch, pos]`` int64 on the CPU: keys each query row may attend to (``allowed [batch, 1, q, k]``; None: causal)."""
    if allowed is None:
        return torch.arange(1, pos + 1).expand(batch, pos).clone()
    return allowed[:, 0].sum(-1).to(torch.int64).expand(batch, pos).cpu()


def reads_attention_internals(bridge: Any, names: Sequence[str]) -> bool:
    """Whether any of ``names`` is a hook point inside an attention block (the pattern, scores, rotary q/k, ...).

    Those fire only in TransformerBridge's own (eager) attention; aliases such as
    ``blocks.{l}.hook_attn_out`` count by the hook point they name.
    """
    inside = {id(m) for block in bridge.blocks for m in block.attn.modules()}
    return any(name in bridge.hook_dict and id(bridge.hook_dict[name]) in inside for name in names)


# ---------------------------------------------------------------------- the model's own attention
_LISTENER: contextvars.ContextVar[Callable[..., None] | None] = contextvars.ContextVar("plastiscope_attention_listener", default=None)
_NATIVE: set[int] = set()  # ids of the models inside native_attention
_REGISTERED = False


def _attention_function(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None,
    dropout: float = 0.0, scaling: float | None = None, softcap: float | None = None, **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The attention function of :func:`native_attention`, called by a ``transformers`` attention module.

    Hands ``query [batch, head, pos, d_head]`` and ``key [batch, kv_head, pos, d_head]`` to the pass's
    listener (if any), then computes attention with ``transformers``' SDPA function; with logit
    softcapping, which SDPA cannot apply, the same exact softmax is computed as eager attention does.
    Returns ``(output [batch, pos, head, d_head], None)``.
    """
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    listener = _LISTENER.get()
    if listener is not None:
        listener(module, AttentionInputs(query.detach(), key.detach(), _allowed(attention_mask), scale, softcap))
    if softcap is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scores = torch.tanh(torch.matmul(query, key.transpose(-2, -1)) * scale / softcap) * softcap
    if attention_mask is None:
        n = query.shape[-2]
        attention_mask = torch.ones(n, key.shape[-2], dtype=torch.bool, device=query.device).tril(key.shape[-2] - n)
    if attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)  # finite, as eager: a padded row stays finite
    else:
        scores = scores + attention_mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), None


def _allowed(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """``[batch, 1, q, k]`` bool (True: may attend) from a ``transformers`` mask (bool, or additive float); None stays None."""
    if attention_mask is None or attention_mask.dtype == torch.bool:
        return attention_mask
    return attention_mask > torch.finfo(attention_mask.dtype).min / 2


def _register() -> None:
    """Register :data:`ATTENTION_IMPLEMENTATION` with ``transformers`` (attention function and SDPA's mask), once, on first use."""
    global _REGISTERED
    if not _REGISTERED:
        from transformers import AttentionInterface, AttentionMaskInterface
        from transformers.masking_utils import sdpa_mask

        AttentionInterface.register(ATTENTION_IMPLEMENTATION, _attention_function)
        AttentionMaskInterface.register(ATTENTION_IMPLEMENTATION, sdpa_mask)
        _REGISTERED = True


def use_fused_attention(model: Any) -> Any:
    """Set a plain ``transformers`` model (no bridge inside, e.g. :func:`plastiscope.training.trainable_copy`'s)
    to the fused attention function :data:`ATTENTION_IMPLEMENTATION` (SDPA; the exact softmax under logit
    softcapping); return it. For training and evaluation that read no pattern; not for double backward
    (Hessian-vector products), which SDPA's CPU kernel lacks."""
    _register()
    model.set_attn_implementation(ATTENTION_IMPLEMENTATION)
    return model


@contextlib.contextmanager
def native_attention(model: Any) -> Iterator[None]:
    """Run ``model``'s attention on its own ``transformers`` modules with fused SDPA, then put the bridge's back.

    ``model``: a checkpoint's ``bridge``, its ``hf_model``, or a copy of either (plasticity's
    fine-tuned copies). TransformerBridge puts its own attention component in each layer, which
    recomputes attention eagerly (the ``[batch, head, pos, pos]`` pattern, for its hook points);
    inside this context each layer holds the model's own attention module again (the one the
    bridge wraps, same weights) and the model runs the attention function
    :data:`ATTENTION_IMPLEMENTATION`, registered with ``transformers``' ``AttentionInterface``:
    ``transformers``' SDPA function (exact softmax attention, fused: no pattern in memory),
    except under logit softcapping (Gemma 2), which SDPA cannot apply, where it computes the
    eager softmax itself. Residual-stream hooks, logits and gradients are those of the bridge
    to float rounding; hook points inside attention (``blocks.{l}.attn.*``) do not fire. SDPA's
    CPU kernel has no double backward (Hessian-vector products need the bridge's eager
    attention). On exit the model is on eager attention again (the implementation
    TransformerBridge sets). Re-entering for the same model changes nothing.
    """
    from transformer_lens.model_bridge.generalized_components import AttentionBridge
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    hf = getattr(model, "original_model", model)
    if id(hf) in _NATIVE:
        yield
        return
    _register()
    swapped = []
    for parent in hf.modules():
        if isinstance(parent, GeneralizedComponent):
            continue  # the bridge's own tree keeps its components
        for child_name, child in list(parent.named_children()):
            if isinstance(child, AttentionBridge) and child.original_component is not None:
                swapped.append((parent, child_name, child))
    _NATIVE.add(id(hf))
    try:
        hf.set_attn_implementation(ATTENTION_IMPLEMENTATION)
        for parent, child_name, child in swapped:
            setattr(parent, child_name, child.original_component)
        yield
    finally:
        for parent, child_name, child in swapped:
            setattr(parent, child_name, child)
        hf.set_attn_implementation("eager")
        _NATIVE.discard(id(hf))


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
        if isinstance(value, torch.Tensor):
            value = value.detach()
        elif not isinstance(value, AttentionInputs):
            raise TypeError(f"{checkpoint.name}: hook point {name!r} gave a {type(value).__name__}, not a tensor")
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
    eager = reads_attention_internals(bridge, names)  # someone reads the pattern: the bridge's own attention
    wanted = {(int(m.group(1)), m.group(2)): name for name in names if (m := _ATTENTION_NAME.match(name))}
    # q and k come from the model's own attention only: beside a pattern reader, a second (SDPA) forward hands them out
    second = {key: name for key, name in wanted.items() if key[1] == "inputs"} if eager else {}
    first = {key: name for key, name in wanted.items() if key not in second}
    blocks = list(bridge.blocks)
    native_layer = {id(block.attn.original_component): layer for layer, block in enumerate(blocks)}
    bridge_layer = {id(block.attn): layer for layer, block in enumerate(blocks)}
    current: list[Batch] = []
    listening: list[dict[tuple[int, str], str]] = [first]

    def listen(module: torch.nn.Module, inputs: AttentionInputs) -> None:  # native attention: the layer's q, k and mask
        layer, wanted_now = native_layer.get(id(module)), listening[0]
        if (layer, "keys") in wanted_now:
            give(current[0], wanted_now[layer, "keys"], _keys_of(inputs.allowed, inputs.query.shape[0], inputs.query.shape[-2]))
        if (layer, "inputs") in wanted_now:
            give(current[0], wanted_now[layer, "inputs"], inputs)

    def mask_hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:  # eager attention: the layer's mask
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        give(current[0], first[bridge_layer[id(module)], "keys"],
             _keys_of(_allowed(kwargs.get("attention_mask")), hidden.shape[0], hidden.shape[1]))

    def forward(batch: Batch, hook_names: Sequence[str], on_bridge: bool, attention: dict[tuple[int, str], str], **kwargs: Any) -> Any:
        hooks = [(name, lambda value, hook, name=name: give(batch, name, value)) for name in hook_names]
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.no_grad())
            stack.enter_context(bridge.hooks(fwd_hooks=hooks))
            if on_bridge:
                for layer in {layer for layer, _ in attention}:
                    stack.callback(blocks[layer].attn.register_forward_pre_hook(mask_hook, with_kwargs=True).remove)
            else:
                stack.enter_context(native_attention(bridge))
                listening[0] = attention
                token = _LISTENER.set(listen if attention else None)
                stack.callback(_LISTENER.reset, token)
            return bridge(batch.tokens, attention_mask=batch.mask.long(), **kwargs)

    hook_names = [name for name in names if name != LOGITS and not _ATTENTION_NAME.match(name)]
    last_only = {"use_cache": False} | ({"logits_to_keep": 1} if _accepts_logits_to_keep(bridge.original_model) else {})
    for batch in batches(checkpoint, data, batch_size, max_tokens, progress):
        current[:] = [batch]
        logits = forward(batch, hook_names, eager, first, **extra)
        if second:
            forward(batch, [], False, second, **last_only)
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

    def read(self, batch: Batch, name: str, value: Any) -> None:
        """Keep a float32 copy of an activation (the logits in the model's dtype, counts as they are)."""
        if isinstance(value, AttentionInputs):
            self.kept[name] = AttentionInputs(value.query.float(), value.key.float(), value.allowed, value.scaling, value.softcap)
        elif name == LOGITS or not value.is_floating_point():
            self.kept[name] = value if name == LOGITS else value.clone()
        else:
            self.kept[name] = value.float().clone()


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
