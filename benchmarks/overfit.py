"""Benchmark of plastiscope.overfit: the loss-gap estimator against a bare ``transformers`` loop.

Measured in one run, on the same documents and the same model weights:

1. **baseline**: a hand-written loop on an untouched copy of the ``transformers`` model
   (tokenize under the BOS convention, sort by length, pad, forward, ``CrossEntropyLoss``
   per document) -> tokens per second;
2. **estimator pass**: the shared forward pass (TransformerBridge) feeding
   :class:`plastiscope.overfit.DocumentLosses` over train and validation documents;
3. **loss-gap estimator**: the pass plus per-document scores, length matching and the loss
   gap, ratio and by-position gap with 1000-resample bootstrap intervals; the whole
   ``finish()`` (adding membership AUC/TPR intervals) is timed separately: a fixed cost per
   checkpoint, independent of the model's size;
4. **exact memorization**: seconds per tested document of the greedy-continuation test
   (``k`` + ``m`` tokens), and that against the per-document cost of the loss pass.

Timings alternate baseline and estimator ``--repeats`` times and keep each side's fastest
run. Both wall-clock and CPU time (``time.process_time``) are reported: on a shared
machine wall time mostly measures the neighbours, CPU time of a one-thread run does not.
Target: estimator / baseline time <= 1.10.

    python benchmarks/overfit.py                # default size: d_model 256, 6 layers (< 2 min)
    python benchmarks/overfit.py --size tiny    # d_model 128, 4 layers: per-call overheads dominate
    python benchmarks/overfit.py --full         # d_model 512, 8 layers, 1000 + 1000 documents

The last table line splits the estimator's overhead: the TransformerBridge forward against
the pristine ``transformers`` forward on identical batches (a per-module-call cost of the
shared pass, large relative to tiny models, small for real ones) - the loss consumer itself
adds only the per-token ``logsumexp`` the baseline also pays.
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from plastiscope import Checkpoint
from plastiscope.activations import run_pass, stream
from plastiscope.data import encode
from plastiscope.demo.corpus import load_corpus
from plastiscope.demo.tokenizer import train_tokenizer
from plastiscope.memo import Memo
from plastiscope.options import validate
from plastiscope.overfit import exact_memorization
from plastiscope.overfit.analysis import OPTIONS, loss_gap_records, position_records, start
from plastiscope.overfit.losses import bucket_labels
from plastiscope.runner import Inputs


def bare_loss_loop(model, tokenizer, texts, n_ctx: int, batch_size: int) -> tuple[np.ndarray, int]:
    """Per-document mean next-token loss with nothing but ``transformers`` and torch."""
    ids = [encode(tokenizer, t, n_ctx) for t in texts]
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    losses = np.zeros(len(ids))
    loss_fn = torch.nn.CrossEntropyLoss(reduction="none")
    with torch.no_grad():
        for start_row in range(0, len(order), batch_size):
            rows = order[start_row : start_row + batch_size]
            width = max(len(ids[i]) for i in rows)
            tokens = torch.full((len(rows), width), tokenizer.pad_token_id)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                tokens[r, : len(ids[i])], mask[r, : len(ids[i])] = torch.tensor(ids[i]), 1
            logits = model(input_ids=tokens, attention_mask=mask).logits
            vocab = logits.shape[-1]
            token_loss = loss_fn(logits[:, :-1].reshape(-1, vocab), tokens[:, 1:].reshape(-1)).view(len(rows), -1)
            token_loss = token_loss * mask[:, 1:]
            losses[rows] = (token_loss.sum(1) / mask[:, 1:].sum(1)).numpy()
    return losses, sum(len(d) - 1 for d in ids)


# name -> (d_model, layers, context, documents per side)
SIZES = {"tiny": (128, 4, 128, 400), "default": (256, 6, 128, 200), "full": (512, 8, 256, 1000)}


class Clock:
    """Wall-clock and CPU seconds since construction."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> np.ndarray:
        """``[wall, cpu]`` seconds since construction."""
        return np.array([time.perf_counter() - self.wall, time.process_time() - self.cpu])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="default", help="model and data size (see SIZES)")
    parser.add_argument("--full", action="store_true", help="same as --size full")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared machine)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    size = "full" if args.full else args.size
    torch.set_num_threads(args.threads)
    d_model, layers, n_ctx, n_docs = SIZES[size]

    tokenizer = train_tokenizer(load_corpus("train", 2000).texts, 2048)
    train, val = load_corpus("train", n_docs), load_corpus("validation", n_docs)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=d_model, intermediate_size=4 * d_model, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=n_ctx,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    bare = copy.deepcopy(model)  # the bridge wraps the model it boots; the baseline keeps a pristine copy
    checkpoint = Checkpoint.from_model(model, tokenizer, weight_decay=0.1, name="bench")
    _ = checkpoint.bridge  # boot once, outside the timings
    print(
        f"size: {size}; d_model {d_model}, {layers} layers, context {n_ctx}, "
        f"vocab {len(tokenizer)}, {len(train)} train + {len(val)} val documents, batch {args.batch_size}, "
        f"{args.threads} thread(s)"
    )

    options = validate("overfit", OPTIONS, {"reference": None, "memorization_max_docs": 0})
    inputs = Inputs(train_data=train, val_data=val)
    base_times, pass_times, gap_times, finish_times = [], [], [], []
    for _ in range(args.repeats):
        clock = Clock()
        base_train, n_train = bare_loss_loop(bare, tokenizer, train.texts, n_ctx, args.batch_size)
        base_val, n_val = bare_loss_loop(bare, tokenizer, val.texts, n_ctx, args.batch_size)
        base_times.append(clock.read())

        clock = Clock()
        task = start(checkpoint, inputs, options, Memo())
        for name, consumers in task.passes.items():
            run_pass(checkpoint, getattr(inputs, name), consumers, batch_size=args.batch_size, progress=False)
        pass_times.append(clock.read())
        docs = task.documents()  # per-document losses, zlib scores, length matching
        used = docs[docs["matched"]]
        train_rows, val_rows = used[used["split"] == "train"], used[used["split"] == "val"]
        boot = {"n_resamples": 1000, "seed": 0}
        gap_records = loss_gap_records(
            train_rows["loss_sum"].to_numpy(), train_rows["n_targets"].to_numpy(),
            val_rows["loss_sum"].to_numpy(), val_rows["n_targets"].to_numpy(), boot,
        )
        t_docs, v_docs = train_rows["doc"].to_numpy(), val_rows["doc"].to_numpy()
        gap_records += position_records(
            task.train_losses.bucket_sum[t_docs], task.train_losses.bucket_count[t_docs],
            task.val_losses.bucket_sum[v_docs], task.val_losses.bucket_count[v_docs],
            bucket_labels(task.bucket_edges), boot,
        )
        gap_times.append(clock.read())
        clock = Clock()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            task.finish()
        finish_times.append(clock.read())
    tokens = n_train + n_val
    diff = max(
        np.abs(task.train_losses.mean_loss - base_train).max(), np.abs(task.val_losses.mean_loss - base_val).max()
    )
    base, passed, gap_time, finish = (np.min(t, axis=0) for t in (base_times, pass_times, gap_times, finish_times))
    print(f"target tokens scored: {tokens}; max |loss difference| estimator vs baseline: {diff:.2e}")
    print(f"{'':44s} {'wall tokens/s':>14s} {'wall s':>7s} {'ratio':>6s} | {'CPU tokens/s':>13s} {'CPU s':>7s} {'ratio':>6s}")
    for label, t in (
        ("bare transformers loop", base),
        ("estimator pass (per-document losses)", passed),
        ("loss-gap estimator (pass + gap/ratio/by-position CIs)", gap_time),
    ):
        print(
            f"{label:44s} {tokens / t[0]:14.0f} {t[0]:7.2f} {t[0] / base[0]:6.3f} | "
            f"{tokens / t[1]:13.0f} {t[1]:7.2f} {t[1] / base[1]:6.3f}"
        )
    print("target: loss-gap estimator / bare loop <= 1.10")
    batches = [(b.tokens, b.mask) for b in stream(checkpoint, train, [], args.batch_size, progress=False)]
    forward = []
    for model_call in (lambda t, m: bare(input_ids=t, attention_mask=m), lambda t, m: checkpoint.bridge(t, attention_mask=m)):
        clock = Clock()
        with torch.no_grad():
            for tokens_batch, mask_batch in batches:
                model_call(tokens_batch, mask_batch.long())
        forward.append(clock.read())
    print(
        f"  of which TransformerBridge forward / transformers forward on the same train batches: "
        f"{forward[1][0] / forward[0][0]:.3f} wall, {forward[1][1] / forward[0][1]:.3f} CPU"
    )
    print(
        f"whole finish() incl. membership AUC/TPR CIs (fixed cost per checkpoint, no reference/memorization): "
        f"{finish[0]:.2f} s wall, {finish[1]:.2f} s CPU"
    )
    gap = next(r for r in gap_records if r["metric"] == "loss_gap")
    print(f"  (loss_gap {gap['value']:+.4f} [{gap['ci_low']:+.4f}, {gap['ci_high']:+.4f}], n={gap['n']})")

    k, m = 32, 16
    texts = [t for t in val.texts if len(encode(tokenizer, t, 10**6)) >= 1 + k + m]
    texts = texts[: 256 if size == "full" else 64]
    if len(texts) < 8:  # short glosses: fall back to a shorter test, and say so
        k, m = 8, 8
        texts = [t for t in val.texts if len(encode(tokenizer, t, 10**6)) >= 1 + k + m][:64]
    clock = Clock()
    result = exact_memorization(checkpoint.hf_model, tokenizer, texts, n_ctx, k, m, max_docs=None, batch_size=args.batch_size)
    memo = clock.read()[1]  # CPU seconds
    per_doc_pass = passed[1] / (len(train) + len(val))
    print(
        f"exact memorization (k={k}, m={m}): {len(result.exact)} documents in {memo:.2f} CPU s = "
        f"{1000 * memo / max(1, len(result.exact)):.1f} ms/document "
        f"({memo / max(1, len(result.exact)) / per_doc_pass:.1f}x the loss pass's {1000 * per_doc_pass:.2f} ms/document)"
    )


if __name__ == "__main__":
    main()
