"""Benchmark of attention-pattern statistics.

Model: random-init Llama (or GPT-2) with 6 layers, d_model 384, 6 heads, on documents of
exactly 128 tokens. Measures, in one run:

0. the analysis's path (statistics from every layer's queries and keys beside an SDPA forward,
   ``PatternStatistics(source="qk")``) against the eager-pattern path (``source="pattern"``):
   time of the whole pass each, and the largest difference between their numbers;
1. the extra time of all pattern statistics (every layer and head, every document) over
   the eager forward pass that produced the patterns (target <= 0.5x): both are timed inside
   the same ``run_pass``; the statistics' consumer times its own reads (hook-time, layer by
   layer); spectra over the first ``spectral_tokens`` (128) tokens, i.e. whole documents here;
2. plastiscope (batched ``svdvals`` on ``[batch * head, q, k]``, vectorised row
   statistics) against a plain numpy loop over documents, layers and heads computing the
   same numbers (and checks that they agree): with OpenBLAS at one thread (the fair
   comparison: plastiscope's SVDs run at one thread too) and, on a few documents, at
   numpy's default thread count;
3. one batched ``svdvals`` call at torch's thread count against one thread (why
   :mod:`plastiscope.attention.patterns` runs its SVDs single-threaded).

    python benchmarks/attention.py            # 32 documents (~1-2 min on 2 loaded cores)
    python benchmarks/attention.py --docs 128 --arch gpt2
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from plastiscope import Checkpoint
from plastiscope.activations import run_pass
from plastiscope.attention import PATTERN_METRICS, PatternStatistics
from plastiscope.attention.patterns import one_thread
from plastiscope.demo.corpus import load_corpus
from plastiscope.demo.tokenizer import train_tokenizer

LAYERS, D_MODEL, HEADS, SEQ = 6, 384, 6, 128


def build_checkpoint(arch: str) -> Checkpoint:
    tokenizer = train_tokenizer(load_corpus("train", 3000).texts, 2048)
    torch.manual_seed(0)
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            hidden_size=D_MODEL, intermediate_size=4 * D_MODEL, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
            num_key_value_heads=HEADS, vocab_size=len(tokenizer), max_position_embeddings=SEQ,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
        model = LlamaForCausalLM(config)
    else:
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(
            n_embd=D_MODEL, n_layer=LAYERS, n_head=HEADS, vocab_size=len(tokenizer), n_positions=SEQ,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        )
        model = GPT2LMHeadModel(config)
    return Checkpoint.from_model(model.eval(), tokenizer, weight_decay=0.0, name=f"bench-{arch}")


def long_documents(n: int) -> list[str]:
    """Documents of >= 128 tokens (truncated to the context): 30 random glosses joined."""
    texts = load_corpus("train").texts
    rng = random.Random(0)
    return [" ".join(rng.sample(texts, 30)) for _ in range(n)]


class Timed:
    """Wraps the statistics consumer: times its reads and keeps a copy of the patterns for the baseline."""

    def __init__(self, inner: PatternStatistics):
        self.inner, self.names = inner, inner.names
        self.seconds = 0.0
        self.kept: list[tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]] = []

    def read(self, batch, name, pattern) -> None:
        """Time the statistics of one layer of one batch and keep a copy of its pattern for the baseline."""
        start = time.perf_counter()
        self.inner.read(batch, name, pattern)
        self.seconds += time.perf_counter() - start
        if not name.endswith("hook_pattern"):  # the keys each row may attend to
            return
        if not self.kept or self.kept[-1][2] is not batch.doc_index:
            self.kept.append((batch.mask.clone(), {}, batch.doc_index))
        self.kept[-1][1][name] = pattern.clone()


def numpy_stats(A: np.ndarray, tol: float = 1e-2, threshold: float = 0.9) -> list[float]:
    """The same metrics for one [n, n] pattern of one head, in plain numpy (float64)."""
    n = A.shape[0]
    i = np.arange(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(A > 0, A * np.log(A), 0.0)
    H = -plogp.sum(axis=1)
    s = np.linalg.svd(A, compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return [
        H.mean(),
        np.mean(H[1:] / np.log(i[1:] + 1)) if n > 1 else np.nan,
        np.exp(-(p * np.log(p)).sum()),
        (s**2).sum() / s[0] ** 2,
        float((s > tol * s[0]).sum()),
        np.sqrt((s**2).sum()),
        s[0],
        s.sum(),
        A[:, 0].mean(),
        (A * (i[:, None] - i[None, :])).sum(axis=1).mean(),
        (A.max(axis=1) > threshold).mean(),
    ]


def threadpool_info_threads() -> int:
    return max((p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"), default=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=32, help="documents of 128 tokens (default 32)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--arch", choices=("llama", "gpt2"), default="llama")
    parser.add_argument("--numpy-default-docs", type=int, default=2, help="documents for the numpy run at default BLAS threads (slow)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    checkpoint = build_checkpoint(args.arch)
    docs = long_documents(args.docs)
    _ = checkpoint.bridge  # load outside the timings
    print(
        f"model: random-init {args.arch}, {LAYERS} layers, d_model {D_MODEL}, {HEADS} heads; {args.docs} documents x "
        f"{SEQ} tokens, batch {args.batch_size}; torch threads {torch.get_num_threads()}"
    )

    # warm-up (first-call overheads), not timed
    run_pass(checkpoint, docs[:2], [Timed(PatternStatistics(LAYERS, source="pattern"))], batch_size=args.batch_size, progress=False)
    run_pass(checkpoint, docs[:2], [PatternStatistics(LAYERS)], batch_size=args.batch_size, progress=False)

    qk = PatternStatistics(LAYERS)
    start = time.perf_counter()
    run_pass(checkpoint, docs, [qk], batch_size=args.batch_size, progress=False)
    qk_total = time.perf_counter() - start

    timed = Timed(PatternStatistics(LAYERS, source="pattern"))
    start = time.perf_counter()
    run_pass(checkpoint, docs, [timed], batch_size=args.batch_size, progress=False)
    total = time.perf_counter() - start
    (_, from_qk), (_, from_patterns) = qk.values(), timed.inner.values()
    agree = np.nanmax(np.abs(from_qk - from_patterns) / np.maximum(1.0, np.abs(from_patterns)))
    print(f"\n0. queries and keys beside an SDPA forward: {qk_total:.2f} s; eager patterns: {total:.2f} s "
          f"({total / qk_total:.2f}x); largest relative difference between their numbers {agree:.1e}")
    forward = total - timed.seconds
    width = timed.kept[0][0].shape[1]
    print(f"\n1. forward pass with pattern hooks: {forward:.2f} s; pattern statistics: {timed.seconds:.2f} s")
    print(f"   extra time of statistics / forward = {timed.seconds / forward:.2f}x  (target <= 0.5x; sequences of {width} tokens)")

    def numpy_loop(kept) -> dict[int, list]:
        rows = {}
        for mask, acts, doc_index in kept:
            for b in range(mask.shape[0]):
                n = int(mask[b].sum())
                rows[int(doc_index[b])] = [
                    [numpy_stats(acts[f"blocks.{layer}.attn.hook_pattern"][b, h, :n, :n].numpy().astype(np.float64)) for h in range(HEADS)]
                    for layer in range(LAYERS)
                ]
        return rows

    with threadpool_limits(limits=1, user_api="blas"):
        start = time.perf_counter()
        rows = numpy_loop(timed.kept)
        baseline = time.perf_counter() - start
    reference = np.array([rows[i] for i in sorted(rows)])  # [doc, layer, head, metric]
    _, ours = timed.inner.values()
    diff = np.nanmax(np.abs(ours - reference) / np.maximum(1.0, np.abs(reference)), axis=(0, 1, 2))
    few = [(m[: args.numpy_default_docs], {k: v[: args.numpy_default_docs] for k, v in a.items()}, d[: args.numpy_default_docs]) for m, a, d in timed.kept[:1]]
    start = time.perf_counter()
    numpy_loop(few)
    default_per_doc = (time.perf_counter() - start) / len(few[0][2])
    ours_per_doc = timed.seconds / args.docs
    print(f"\n2. numpy loop over documents x layers x heads (OpenBLAS at 1 thread, like plastiscope's SVD): {baseline:.2f} s; plastiscope: {timed.seconds:.2f} s")
    print(f"   speed ratio numpy / plastiscope = {baseline / timed.seconds:.1f}x")
    print(
        f"   numpy at its default {threadpool_info_threads()} BLAS threads, on {len(few[0][2])} documents: {default_per_doc:.2f} s per document "
        f"vs plastiscope {ours_per_doc:.3f} s per document = {default_per_doc / ours_per_doc:.1f}x"
    )
    print("   largest relative difference per metric: " + ", ".join(f"{m} {d:.1e}" for m, d in zip(PATTERN_METRICS, diff)))

    mask, acts, _ = timed.kept[0]
    matrices = acts["blocks.0.attn.hook_pattern"].flatten(0, 1).contiguous()
    torch.linalg.svdvals(matrices)
    start = time.perf_counter()
    torch.linalg.svdvals(matrices)
    threaded = time.perf_counter() - start
    with one_thread():
        start = time.perf_counter()
        torch.linalg.svdvals(matrices)
        single = time.perf_counter() - start
    print(
        f"\n3. one svdvals call on {tuple(matrices.shape)}: {threaded:.3f} s at {torch.get_num_threads()} threads, "
        f"{single:.3f} s at 1 thread ({threaded / single:.1f}x)"
    )


if __name__ == "__main__":
    main()
