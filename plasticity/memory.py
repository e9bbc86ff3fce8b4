"""How much device memory fine-tuning needs, estimated before it starts, and a refusal that names what would fit.

:func:`finetune_memory` estimates the peak memory of one fine-tuning run of a copy of the
checkpoint (the checkpoint itself is already loaded and is not counted; the device's free
memory excludes it), in bytes, as the sum of:

- **weights** of the copy: ``4 P`` for full fine-tuning (float32 master weights); with LoRA the
  frozen base is copied in the checkpoint's dtype, ``b P``, plus ``4 T`` for the adapters
  (``P`` parameters of the model, ``T`` trainable ones, ``b`` bytes per element of the
  checkpoint's dtype); under autocast to a narrower dtype (``a < 4``), plus the float32 weights'
  copies in that dtype, which autocast keeps for the backward pass: ``a P`` (full), ``a T`` (LoRA);
- **gradients** ``4 T`` and **AdamW state** ``8 T`` (two float32 moments), trainable parameters only;
- **activations** kept for the backward pass of a batch of ``B`` documents of ``L`` tokens (the
  longest fine-tuning document), in the compute dtype (``a`` bytes: the checkpoint's dtype under
  autocast, else 4), after Korthikanti et al. 2022 (arXiv 2205.05198, sec. 4) adapted to a
  gated-MLP, grouped-query decoder of ``N`` layers, width ``d``, key/value width ``d_kv``, MLP
  width ``f``, ``h`` heads and vocabulary ``V``::

      per layer:  B L a (8 d + 3 d_kv + 4 f)  [+ B h L^2 a with eager attention, the probabilities]
      logits:     B L V (2 a + 4)             (the logits, their float32 copy for the loss, their gradient)

  all ``N`` layers and the logits without gradient checkpointing; with it, each layer's input
  ``B L d a`` for ``N`` layers plus the larger of one layer recomputed and the logits (the
  logits' memory is freed before the first layer is recomputed);
- **evaluation** after fine-tuning, which does not overlap training: the weights of the copy plus
  the logits of an evaluation batch, ``E L V a`` (``E`` documents per evaluation batch), and,
  with generation, the key/value cache ``2 N E (L + n_new) d_kv a``; the peak is the larger of
  the two phases.

It does not count the CUDA context, allocator fragmentation or temporary work buffers: the
refusal asks for the estimate to stay under :data:`HEADROOM` of the free memory. The memory
available is :func:`free_memory` (``torch.cuda.mem_get_info`` on CUDA; on the CPU, available
RAM), or ``memory_limit_gb`` when the user sets it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

HEADROOM = 0.9
GIB = 1 << 30


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated bytes of each part of a fine-tuning run (module docstring for the formula)."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    evaluation: int

    @property
    def total(self) -> int:
        """The peak: training (weights + gradients + AdamW + activations) or evaluation, whichever is larger."""
        return max(self.weights + self.gradients + self.optimizer + self.activations, self.evaluation)

    def describe(self) -> str:
        """``~18.2 GiB (weights 4.0 GiB + gradients 4.0 GiB + AdamW 8.0 GiB + activations 2.2 GiB; evaluation 5.0 GiB)``."""
        parts = (f"weights {size(self.weights)} + gradients {size(self.gradients)} + AdamW {size(self.optimizer)} + "
                 f"activations {size(self.activations)}; evaluation {size(self.evaluation)}")
        return f"~{size(self.total)} ({parts})"


def size(n_bytes: float) -> str:
    """``n_bytes`` in GiB (``12.3 GiB``), or in MiB below 1 GiB (``310.5 MiB``)."""
    return f"{n_bytes / GIB:.1f} GiB" if n_bytes >= GIB else f"{n_bytes / (1 << 20):.1f} MiB"


def shape(config: Any) -> dict[str, int]:
    """The sizes the formula needs from a ``transformers`` config: layers, width, heads, key/value width, MLP width, vocab."""
    d = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or d // heads)
    mlp = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * d
    return {"layers": int(config.num_hidden_layers), "d": d, "heads": heads, "d_kv": kv_heads * head_dim,
            "mlp": int(mlp), "vocab": int(config.vocab_size)}


def finetune_memory(
    config: Any, n_params: int, n_trainable: int, batch_size: int, length: int, *, lora: bool, base_bytes: int,
    compute_bytes: int, gradient_checkpointing: bool, eager_attention: bool, eval_batch_size: int, new_tokens: int = 0,
) -> MemoryEstimate:
    """Estimated peak bytes of fine-tuning a copy of a model with ``config`` (module docstring: the formula).

    ``n_params``: the model's parameters; ``n_trainable``: those trained (all for full
    fine-tuning, the adapters' for LoRA); ``batch_size`` x ``length``: the training batch;
    ``base_bytes``: bytes per element of the checkpoint's dtype; ``compute_bytes``: of the forward
    pass's dtype; ``new_tokens``: generated tokens per evaluation prompt (0: no generation).
    """
    s = shape(config)
    tokens, a = batch_size * length, compute_bytes
    weights = (base_bytes * n_params + 4 * n_trainable) if lora else 4 * n_params
    if a < 4:  # autocast's copies of the float32 weights in the compute dtype
        weights += a * (n_trainable if lora else n_params)
    layer = tokens * a * (8 * s["d"] + 3 * s["d_kv"] + 4 * s["mlp"])
    if eager_attention:
        layer += batch_size * s["heads"] * length * length * a
    logits = tokens * s["vocab"] * (2 * a + 4)
    if gradient_checkpointing:
        activations = s["layers"] * tokens * s["d"] * a + max(layer, logits)
    else:
        activations = s["layers"] * layer + logits
    cache = 2 * s["layers"] * eval_batch_size * (length + new_tokens) * s["d_kv"] * a if new_tokens else 0
    evaluation = weights + eval_batch_size * length * s["vocab"] * a + cache
    return MemoryEstimate(weights, 4 * n_trainable, 8 * n_trainable, activations, evaluation)


def free_memory(device: torch.device) -> int | None:
    """Bytes free on ``device``: ``torch.cuda.mem_get_info`` on CUDA, available RAM on the CPU
    (``psutil`` when installed, else ``MemAvailable`` of ``/proc/meminfo``, else ``os.sysconf``); None elsewhere."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


class MemoryRefusal(RuntimeError):
    """Fine-tuning would not fit the device's memory: the message names the options that would."""


def check_fits(need: MemoryEstimate, available: int | None, where: str, alternatives: dict[str, MemoryEstimate]) -> None:
    """Raise :class:`MemoryRefusal` when ``need.total`` exceeds :data:`HEADROOM` of ``available`` bytes.

    ``where`` says what is fine-tuned where; ``alternatives`` maps a ``-o plasticity.KEY=VALUE``
    setting (or several, joined by a space) to its estimate: those that fit are named in the message.
    """
    if available is None or need.total <= HEADROOM * available:
        return
    fits = [f"{setting} ({estimate.describe().split(' (')[0]})" for setting, estimate in alternatives.items()
            if estimate.total <= HEADROOM * available]
    fix = ("set " + " or ".join(fits) if fits else
           "none of LoRA, gradient checkpointing or batch size 1 fits: use a device with more memory")
    raise MemoryRefusal(f"plasticity: fine-tuning {where} needs {need.describe()}, more than {HEADROOM:.0%} of the "
                        f"{size(available)} available; {fix}")
