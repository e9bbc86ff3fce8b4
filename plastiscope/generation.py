"""Greedy decoding through the public ``generate()`` API, with the checkpoint's own generation settings switched off.

``model.generate()`` fills every setting the caller leaves unset from the checkpoint's
``generation_config.json``: a ``repetition_penalty``, ``no_repeat_ngram_size``, ``bad_words_ids``
or an end-of-sequence token there silently change what "greedy" returns. :func:`greedy_generate`
sets the model's ``generation_config`` aside for the call, so its output is the argmax
continuation whatever the folder says (tested against a naive decoding loop).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import GenerationConfig


def greedy_generate(model: Any, prompts: torch.Tensor, n_new: int, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy (argmax) continuation of ``prompts [batch, prompt]`` by ``n_new`` tokens -> ``[batch, n_new]``.

    ``model`` is a plain ``transformers`` causal LM (a checkpoint's bridged ``hf_model`` is refused:
    see the error). Prompts of unequal length are left-padded with an
    ``attention_mask [batch, prompt]`` (1 on real tokens); without one every token is real. The
    model's training mode is restored afterwards.
    """
    if n_new < 1:
        raise ValueError(f"n_new must be >= 1, got {n_new}")
    if any(type(module).__module__.startswith("transformer_lens") for module in model.modules()):
        raise ValueError(
            "this model is wrapped by TransformerLens's bridge, whose modules decode wrong tokens under generate()'s "
            "KV cache; generate from a plain copy (plastiscope.training.trainable_copy(model))"
        )
    if attention_mask is None:
        attention_mask = torch.ones_like(prompts)
    # eos_token_id=[]: never stop early, every row gets exactly ``n_new`` tokens
    config = GenerationConfig(max_new_tokens=int(n_new), do_sample=False, num_beams=1, pad_token_id=0, eos_token_id=[])
    was_training, saved = model.training, model.generation_config
    model.eval()
    model.generation_config = GenerationConfig()  # the library's defaults fill what ``config`` leaves unset, not the folder's
    try:
        with torch.no_grad():
            out = model.generate(input_ids=prompts, attention_mask=attention_mask, generation_config=config)
    finally:
        model.generation_config = saved
        model.train(was_training)
    return out[:, prompts.shape[1] :]
