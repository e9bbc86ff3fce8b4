"""Statistics of each head's QK and OV circuits, from the weights alone.

Elhage et al. 2021 ("A Mathematical Framework for Transformer Circuits"): head ``h`` scores
query residual ``x_i`` against key residual ``x_j`` by the bilinear form
``x_i W_QK x_j^T`` with ``W_QK = W_Q W_K^T`` ``[d_model, d_model]``, and writes
``x_j W_OV`` with ``W_OV = W_V W_O`` ``[d_model, d_model]``. Both have rank at most
``d_head``; TransformerLens's :class:`~transformer_lens.FactoredMatrix` gives their singular
values from the ``[d_model, d_head]`` factors without forming the product. Han et al. 2026
(arXiv 2602.11137, section 4.2) tie weight decay to a lower-rank ``W_QK``.

Per head (metric names in brackets): [``qk_frobenius_norm``, ``qk_spectral_norm``,
``qk_nuclear_norm``, ``qk_stable_rank``, ``qk_effective_rank``] and the same with ``ov_``
(definitions in :mod:`.spectra`), and the Frobenius norms of the head's own weights
[``wq_norm``, ``wk_norm``, ``wv_norm``, ``wo_norm``].

What the weights are:
- The raw projection weights of the Hugging Face model as the ``TransformerBridge``
  exposes them (``blocks[l].attn.W_Q`` ``[head, d_model, d_head]``, ``W_O``
  ``[head, d_head, d_model]``): **no layer-norm folding** (the norm's gain, which scales the
  residual before ``W_Q``/``W_K``/``W_V``, is not multiplied in) and no centring.
- Biases (GPT-2's ``b_Q``, ``b_K``, ...) are not part of ``W_QK`` / ``W_OV``.
- Rotary models (Llama): the query-key form at relative distance ``d`` is
  ``W_Q R_d W_K^T`` with a rotation ``R_d``; ``W_QK`` is the form at distance 0. Its norms
  and ranks are what weight decay acts on, not the score at every distance.
- Grouped-query attention (Llama with ``num_key_value_heads < num_attention_heads``): the
  bridge exposes ``W_K``/``W_V`` per key-value head ``[kv_head, d_model, d_head]``; query
  head ``h`` reads key-value head ``h // (heads / kv_heads)`` (Hugging Face's ``repeat_kv``),
  so they are expanded to one per query head. ``wk_norm`` / ``wv_norm`` then repeat for
  the query heads sharing a key-value head (their mean over heads is unchanged).
"""

from __future__ import annotations

from typing import Any

import einops
import torch
from transformer_lens import FactoredMatrix

from .spectra import spectral_summary

CIRCUIT_METRICS = ("frobenius_norm", "spectral_norm", "nuclear_norm", "stable_rank", "effective_rank")
WEIGHT_METRICS = (
    *(f"qk_{m}" for m in CIRCUIT_METRICS),
    *(f"ov_{m}" for m in CIRCUIT_METRICS),
    "wq_norm",
    "wk_norm",
    "wv_norm",
    "wo_norm",
)


def expand_kv_heads(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Key/value weights ``[kv_head, ...]`` -> ``[head, ...]``: query head ``h`` gets kv head ``h // (head / kv_head)``."""
    n_kv = w.shape[0]
    if n_heads % n_kv:
        raise ValueError(f"{n_heads} query heads cannot share {n_kv} key-value heads evenly (grouped-query attention)")
    return einops.repeat(w, "kv ... -> (kv group) ...", group=n_heads // n_kv)


def layer_weights(bridge: Any, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(W_Q, W_K, W_V, W_O)`` of one layer from a ``TransformerBridge``, as stored (no folding).

    ``W_Q`` ``[head, d_model, d_head]``, ``W_K``/``W_V`` ``[kv_head, d_model, d_head]``,
    ``W_O`` ``[head, d_head, d_model]``.
    """
    attn = bridge.blocks[layer].attn
    try:
        weights = tuple(getattr(attn, name).detach() for name in ("W_Q", "W_K", "W_V", "W_O"))
    except Exception as err:
        raise ValueError(f"layer {layer}: the bridge exposes no attention weights W_Q/W_K/W_V/W_O ({err})") from err
    return weights  # type: ignore[return-value]


def weight_statistics(
    W_Q: torch.Tensor, W_K: torch.Tensor, W_V: torch.Tensor, W_O: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-head statistics of one layer's attention weights.

    ``W_Q`` ``[head, d_model, d_head]``; ``W_K``, ``W_V`` ``[kv_head, d_model, d_head]``
    (``kv_head`` divides ``head``; equal without grouped-query attention); ``W_O``
    ``[head, d_head, d_model]``. Returns ``{metric: [head]}`` (float64) for every metric
    of :data:`WEIGHT_METRICS`. Computed in float64.
    """
    if W_Q.ndim != 3 or W_K.ndim != 3 or W_V.ndim != 3 or W_O.ndim != 3:
        raise ValueError(
            f"expected W_Q/W_K/W_V [head, d_model, d_head] and W_O [head, d_head, d_model], got shapes "
            f"{[tuple(w.shape) for w in (W_Q, W_K, W_V, W_O)]}"
        )
    n_heads = W_Q.shape[0]
    W_Q, W_O = W_Q.double(), W_O.double()
    W_K = expand_kv_heads(W_K.double(), n_heads)
    W_V = expand_kv_heads(W_V.double(), n_heads)
    if W_K.shape != W_Q.shape or W_V.shape != W_Q.shape or W_O.shape != W_Q.transpose(-1, -2).shape:
        raise ValueError(
            f"inconsistent head shapes: W_Q {tuple(W_Q.shape)}, W_K {tuple(W_K.shape)}, W_V {tuple(W_V.shape)}, "
            f"W_O {tuple(W_O.shape)}"
        )
    qk = FactoredMatrix(W_Q, W_K.transpose(-1, -2))  # [head, d_model, d_model] = W_Q W_K^T
    ov = FactoredMatrix(W_V, W_O)  # [head, d_model, d_model] = W_V W_O
    stats: dict[str, torch.Tensor] = {}
    for prefix, circuit in (("qk", qk), ("ov", ov)):
        summary = spectral_summary(circuit.S)
        stats.update({f"{prefix}_{m}": summary[m] for m in CIRCUIT_METRICS})
    for name, w in (("wq_norm", W_Q), ("wk_norm", W_K), ("wv_norm", W_V), ("wo_norm", W_O)):
        stats[name] = torch.linalg.matrix_norm(w, ord="fro")
    return stats
