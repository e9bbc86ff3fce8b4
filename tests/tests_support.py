"""Small helpers shared by tests and their subprocesses: random-init models, peak resident memory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch


def tokenizer():
    """The demo's BPE tokenizer (512 tokens) trained on the embedded corpus, built once per process."""
    global _TOKENIZER
    if _TOKENIZER is None:
        from plastiscope.demo.corpus import load_corpus
        from plastiscope.demo.tokenizer import train_tokenizer

        _TOKENIZER = train_tokenizer(load_corpus("train", 1000).texts, 512)
    return _TOKENIZER


_TOKENIZER = None


def tiny_llama(layers: int, heads: int = 4, d_model: int = 32, context: int = 64, seed: int = 0, sharpen: float = 1.0):
    """A random-init Llama checkpoint (eval mode) with the given depth; ``sharpen`` scales W_Q and W_K."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from plastiscope import Checkpoint

    tok = tokenizer()
    config = LlamaConfig(
        hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=heads, vocab_size=len(tok), max_position_embeddings=context, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(sharpen)
            layer.self_attn.k_proj.weight.mul_(sharpen)
    return Checkpoint.from_model(model, tok, weight_decay=0.0, name=f"llama-{layers}")


def peak_rss_during(fn: Callable[[], object]) -> int:
    """Bytes by which the peak resident memory of this process rises above its level before ``fn()`` (Linux)."""
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current resident size
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) * 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")
