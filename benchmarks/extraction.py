"""Activation streaming cost: plastiscope vs a bare ``transformers`` forward, and memory vs data size.

1. Time of a shared pass (:func:`plastiscope.activations.run_pass`) handing a consumer
   ``blocks.{l}.hook_resid_post`` and ``blocks.{l}.attn.hook_pattern`` of every layer, at hook
   time, against a bare ``transformers`` forward with ``output_hidden_states=True,
   output_attentions=True`` (eager attention) on the same weights and the same padded batches;
   and of a pass handing only ``hook_resid_post`` (which runs SDPA) against the bare forward
   with ``output_hidden_states=True`` and SDPA. Target ratios <= 1.10.
2. Peak resident memory of such a pass over N documents and 10 N documents (each in a fresh
   process, so the peaks do not mix). Target: flat (ratio ~1). (Flat in the number of layers:
   ``tests/test_activations.py`` and ``benchmarks/scale_context.py``.)

Run: ``python benchmarks/extraction.py [--docs 256] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from plastiscope import Checkpoint
from plastiscope.activations import batches, run_pass
from plastiscope.demo.corpus import load_corpus
from plastiscope.demo.tokenizer import train_tokenizer

LAYERS, D_MODEL, HEADS, CONTEXT = 4, 256, 8, 128


def setup(n_docs: int):
    tokenizer = train_tokenizer(load_corpus("train", 2000).texts, 2048)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=D_MODEL, intermediate_size=4 * D_MODEL, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=CONTEXT)
    model = LlamaForCausalLM(config).eval()
    # long documents (several glosses joined) so the forward pass dominates, as with real data
    texts = load_corpus("probe").texts
    docs = [" ".join(texts[i * 6 : i * 6 + 6]) for i in range(n_docs)]
    plain = copy.deepcopy(model)  # the bridge wraps the checkpoint's model in place: the bare forward runs a copy
    return Checkpoint.from_model(model, tokenizer, weight_decay=0.0, name="bench"), docs, plain


def names(patterns: bool = True) -> list[str]:
    resid = [f"blocks.{l}.hook_resid_post" for l in range(LAYERS)]
    return resid + ([f"blocks.{l}.attn.hook_pattern" for l in range(LAYERS)] if patterns else [])


class Touch:
    """A consumer that reads one number of every activation it is handed."""

    def __init__(self, patterns: bool = True):
        self.names, self.total = names(patterns), 0.0

    def read(self, batch, name, value) -> None:
        """Touch the activation (so that it is materialised), keep nothing."""
        self.total += float(value.flatten()[0])


def time_plastiscope(ckpt, docs, batch_size, patterns: bool = True) -> tuple[float, list]:
    start = time.perf_counter()
    run_pass(ckpt, docs, [Touch(patterns)], batch_size=batch_size, progress=False)
    seconds = time.perf_counter() - start
    return seconds, [(b.tokens, b.mask) for b in batches(ckpt, docs, batch_size, progress=False)]


def time_transformers(model, batches, patterns: bool = True) -> float:
    model.set_attn_implementation("eager" if patterns else "sdpa")
    start = time.perf_counter()
    with torch.no_grad():
        for tokens, mask in batches:
            out = model(tokens, attention_mask=mask.long(), output_hidden_states=True, output_attentions=patterns)
            _ = sum(float(h[0, 0, 0]) for h in out.hidden_states[1:]) + sum(float(a[0, 0, 0, 0]) for a in out.attentions or ())
    return time.perf_counter() - start


def peak_memory_child(n_docs: int, batch_size: int) -> None:
    ckpt, docs, _ = setup(n_docs)
    _ = ckpt.bridge  # load before measuring the baseline
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run_pass(ckpt, docs, [Touch()], batch_size=batch_size, progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"docs": n_docs, "peak_mib": peak / 1024, "growth_mib": (peak - base) / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child is not None:
        return peak_memory_child(args.memory_child, args.batch_size)

    ckpt, docs, plain = setup(args.docs)
    print(f"model: Llama {LAYERS} layers, d={D_MODEL}, {HEADS} heads; {args.docs} docs, batch {args.batch_size}")
    for patterns, what, bare in ((True, "resid_post + pattern, all layers", "hidden_states + attentions, eager"),
                                 (False, "resid_post, all layers", "hidden_states, SDPA")):
        time_plastiscope(ckpt, docs[: args.batch_size], args.batch_size, patterns)  # warm up
        ours, theirs = [], []
        for _ in range(args.repeats):  # interleaved, best of n: robust to a busy machine
            t, batches = time_plastiscope(ckpt, docs, args.batch_size, patterns)
            ours.append(t)
            theirs.append(time_transformers(plain, batches, patterns))
        print(f"plastiscope pass ({what}): {min(ours):.2f} s; bare transformers ({bare}): {min(theirs):.2f} s; "
              f"ratio {min(ours) / min(theirs):.2f}  (target <= 1.10)")

    peaks = []
    for n in (args.docs, 10 * args.docs):
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(n), "--batch-size", str(args.batch_size)],
                             capture_output=True, text=True, check=True)
        peaks.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for p in peaks:
        print(f"peak RSS of a pass over {p['docs']:>6} docs: {p['peak_mib']:.0f} MiB (growth during streaming {p['growth_mib']:.0f} MiB)")
    print(f"peak memory ratio 10x data / 1x data: {peaks[1]['peak_mib'] / peaks[0]['peak_mib']:.2f}  (target: flat, ~1.0)")


if __name__ == "__main__":
    main()
