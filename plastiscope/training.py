"""The one training loop: AdamW on the next-token loss, nanoGPT-style, used for pretraining and fine-tuning.

- :func:`adamw` configures the optimizer once: **weight decay on matrices only** (every
  parameter with two or more dimensions: attention and MLP weights, embeddings, unembedding),
  not on norms and biases, as nanoGPT and Han et al. 2026 (arXiv 2602.11137) do;
  ``decay_all=True`` decays every parameter.
- :func:`learning_rate` is the schedule: linear warmup, then ``cosine`` or ``linear`` decay to
  ``final_fraction`` of the peak, ``wsd`` (warmup-stable-decay, Hu et al. 2024, arXiv
  2404.06395: constant, then a linear decay over the last ``decay_fraction`` of the steps to
  ``final_fraction``), or ``wso`` (Warmup-Stable-Only, Yano et al. 2026, arXiv 2603.16127:
  constant after warmup; ``constant`` names the same schedule). A decaying schedule reaches
  ``final_fraction * peak`` at the last step taken.
- :func:`train` runs the loop: a batch, the loss (:func:`plastiscope.losses.sequence_loss`),
  backward, gradient-norm clipping, a step; it stops at the first non-finite loss.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable
from typing import Any

import torch

from plastiscope.losses import sequence_loss

SCHEDULES = ("cosine", "linear", "wsd", "wso", "constant")


def adamw(
    model: torch.nn.Module,
    learning_rate: float,
    weight_decay: float,
    decay_all: bool = False,
    betas: tuple[float, float] = (0.9, 0.95),
) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters, decaying matrices only (or all with ``decay_all``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if decay_all or p.dim() >= 2]
    rest = [p for p in params if not (decay_all or p.dim() >= 2)]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=learning_rate, betas=betas)


def learning_rate(
    step: int,
    peak: float,
    steps: int,
    warmup_steps: int = 0,
    schedule: str = "cosine",
    final_fraction: float = 0.1,
    decay_fraction: float = 0.2,
) -> float:
    """Learning rate at ``step`` (0-based) of ``steps``: linear warmup to ``peak``, then ``schedule``.

    Warmup: ``peak * (step + 1) / warmup_steps`` for the first ``warmup_steps`` steps.
    ``cosine``/``linear``: decay from ``peak`` (at ``step == warmup_steps``) to
    ``final_fraction * peak`` at the last step (``steps - 1``). ``wsd``: ``peak`` until the last
    ``decay_fraction`` of all steps, then a linear decay to ``final_fraction * peak`` at the
    last step. ``wso``/``constant``: ``peak`` after warmup.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r}: choose from {', '.join(SCHEDULES)}")
    if not 0 <= final_fraction <= 1:
        raise ValueError(f"final_fraction {final_fraction}: a fraction of the peak, between 0 and 1")
    if not 0 <= decay_fraction <= 1:
        raise ValueError(f"decay_fraction {decay_fraction}: a fraction of the steps, between 0 and 1")
    if not 0 <= warmup_steps <= steps:
        raise ValueError(f"warmup_steps {warmup_steps}: between 0 and steps ({steps})")
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    last = steps - 1
    if schedule in ("wso", "constant"):
        return peak
    if schedule == "wsd":
        decay_start = max(warmup_steps, steps - int(round(decay_fraction * steps)))
        progress = (step - decay_start) / max(1, last - decay_start) if step >= decay_start else 0.0
    else:
        progress = (step - warmup_steps) / max(1, last - warmup_steps)
    progress = min(progress, 1.0)
    if schedule == "cosine":
        return peak * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))
    return peak * (1 - (1 - final_fraction) * progress)


def train(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Callable[[int], tuple[torch.Tensor, ...]],
    steps: int,
    lr: Callable[[int], float] | None = None,
    clip: float | None = 1.0,
    autocast: torch.dtype | None = None,
    on_step: Callable[[int, float], Any] | None = None,
) -> list[float]:
    """Train ``model`` for ``steps`` steps; return the loss of every step taken.

    ``batch(step) -> (tokens, mask)`` gives each step's batch ``[batch, pos]`` (on the model's
    device); ``(tokens, mask, loss_mask)`` trains on the tokens where ``loss_mask`` is True only
    (a response-only loss, :func:`plastiscope.losses.sequence_loss`); ``lr(step)`` the learning
    rate (None keeps the optimizer's); ``clip`` the gradient
    norm bound; ``autocast`` a lower-precision dtype for the forward (master weights stay as they
    are); ``on_step(step, loss)`` is called after each step. Stops early, with the non-finite
    loss as the last entry, when the loss diverges. The model is left in eval mode.
    """
    model.train()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    history: list[float] = []
    device_type = next(model.parameters()).device.type
    for step in range(steps):
        if lr is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr(step)
        tokens, mask, *loss_mask = batch(step)
        context = torch.autocast(device_type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
        with context:
            loss = sequence_loss(model, tokens, mask, *loss_mask)
        history.append(float(loss.detach()))
        if not math.isfinite(history[-1]):
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        if on_step is not None:
            on_step(step, history[-1])
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    return history


def trainable_copy(model: Any, dtype: torch.dtype = torch.float32) -> Any:
    """A plain ``transformers`` model with ``model``'s config and a float32 copy of its parameters,
    on the device of its first parameter, ready to train (``dtype``: another precision for the copy,
    e.g. the checkpoint's own for a frozen base that adapters are trained on).

    A checkpoint's ``hf_model`` is wrapped in place by TransformerLens's bridge, whose hook
    closures keep pointing at the original modules through ``copy.deepcopy`` (a deep copy's
    forward writes into the original). So the copy is rebuilt from the config and the
    parameters are copied by name, with the bridge's ``._original_component`` wrappers
    stripped; every parameter must match.
    """
    from transformers import AutoModelForCausalLM

    device = next(model.parameters()).device
    with torch.device(device):
        fresh = AutoModelForCausalLM.from_config(copy.deepcopy(model.config), dtype=dtype, trust_remote_code=False)
    state = {name.replace("._original_component", ""): p.detach() for name, p in model.named_parameters()}
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    expected = {name for name, _ in fresh.named_parameters()}
    missing = [m for m in missing if m in expected]
    if missing or unexpected:
        raise RuntimeError(f"cannot copy the model for training (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for p in fresh.parameters():
        p.requires_grad_(True)
    return fresh
