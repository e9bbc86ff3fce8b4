"""Benchmark of plastiscope.landscape: the cost of sharpness and basin estimates in forward passes.

Baseline, measured in the same run on the same fixed batch and the same model
(``checkpoint.hf_model``, as the analysis uses it): one forward pass computing the batch
loss under ``torch.no_grad``. Every estimate is reported as its time divided by that
forward time ("forward-pass equivalents"):

- gradient (forward + backward) and the Hessian-vector-product setup (a forward and a
  backward with ``create_graph``), and one Hessian-vector product;
- ``hessian_top_eigenvalue``: power iteration (``power_iterations`` at most, ``power_tol``);
- ``hessian_trace``: Hutchinson with ``trace_probes`` probes;
- ``basin_radius`` + curves: ``n_directions`` x ``len(radii)`` perturbed forwards;
- the whole analysis ``finish()`` at its default options.

The model is a Llama of the given size, briefly pretrained on the embedded corpus
(``--train-steps``, so the landscape is not that of a random init; power-iteration counts
depend on it). Wall-clock and CPU time (``time.process_time``) are both printed: on a
shared machine wall time mostly measures the neighbours. Run with ``OMP_NUM_THREADS=1``.

    python benchmarks/landscape.py            # the embedded sweep's size: d_model 64, 3 layers, context 64
    python benchmarks/landscape.py --full     # d_model 256, 6 layers, context 128, 64 documents
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from plastiscope import Checkpoint
from plastiscope.data import encode
from plastiscope.demo.corpus import load_corpus
from plastiscope.demo.tokenizer import train_tokenizer
from plastiscope.landscape import (
    OPTIONS,
    basin_radius,
    batch_loss_fn,
    eigenvalue_extremes,
    filter_normalized_direction,
    fixed_batch,
    hutchinson_samples,
    hvp_operator,
    loss_curve,
    start,
)
from plastiscope.plasticity import finetune
from plastiscope.runner import Inputs

# name -> (d_model, layers, heads, d_mlp, context, vocab, documents in the batch)
SIZES = {"default": (64, 3, 4, 192, 64, 2048, 32), "full": (256, 6, 8, 768, 128, 4096, 64)}


def timed(fn, repeats: int = 1):
    """``(result, wall seconds, cpu seconds)`` of the fastest of ``repeats`` calls."""
    best = (None, np.inf, np.inf)
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if wall < best[1]:
            best = (result, wall, cpu)
    return best


def build(size: str, train_steps: int) -> tuple[Checkpoint, object]:
    d_model, layers, heads, d_mlp, context, vocab, n_docs = SIZES[size]
    train = load_corpus("train", 2000)
    tokenizer = train_tokenizer(train.texts, vocab)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=context,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    if train_steps:
        ids = [encode(tokenizer, t, context) for t in train.texts]
        model, _ = finetune(model, ids, tokenizer.pad_token_id, steps=train_steps, batch_size=32, learning_rate=3e-3, seed=0)
    model.config.architectures = ["LlamaForCausalLM"]
    return Checkpoint.from_model(model.eval(), tokenizer, weight_decay=0.1, name=f"bench-{size}"), train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="d_model 256, 6 layers, context 128, 64 documents")
    parser.add_argument("--train-steps", type=int, default=60, help="pretraining steps before measuring (0: random init)")
    parser.add_argument("--repeats", type=int, default=5, help="forward-pass repeats (the fastest is the baseline)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    size = "full" if args.full else "default"
    d_model, layers, heads, d_mlp, context, vocab, n_docs = SIZES[size]
    checkpoint, train = build(size, args.train_steps)
    model = checkpoint.hf_model
    params = list(model.parameters())
    tokens, mask = fixed_batch(checkpoint, train, n_docs)
    loss_fn = batch_loss_fn(model, tokens, mask)
    n_targets = int((mask[:, 1:] & mask[:, :-1]).sum())
    print(f"size {size}: d_model {d_model}, {layers} layers, context {context}, vocab {len(checkpoint.tokenizer)}, "
          f"{sum(p.numel() for p in params):,} parameters; batch {tokens.shape[0]} documents x {tokens.shape[1]} positions "
          f"({n_targets} target tokens); pretrained {args.train_steps} steps; torch threads {torch.get_num_threads()}")

    def forward():
        with torch.no_grad():
            return float(loss_fn())

    def gradient():
        return torch.autograd.grad(loss_fn(), params)

    loss, base_wall, base_cpu = timed(forward, args.repeats)
    rows = [("forward (baseline)", base_wall, base_cpu, f"loss {loss:.3f}")]
    _, wall, cpu = timed(gradient, 3)
    rows.append(("forward + backward (gradient)", wall, cpu, ""))
    hvp, wall, cpu = timed(lambda: hvp_operator(loss_fn, params), 3)
    rows.append(("HVP setup (create_graph)", wall, cpu, ""))
    v = [torch.randn_like(p) for p in params]
    _, wall, cpu = timed(lambda: hvp(v), 3)
    rows.append(("one Hessian-vector product", wall, cpu, ""))

    cfg = OPTIONS.defaults()
    ((eig, iters, change), negative), wall, cpu = timed(
        lambda: eigenvalue_extremes(hvp_operator(loss_fn, params), params, cfg["power_iterations"], cfg["power_tol"], cfg["seed"]))
    note = f"{eig:.4g} after {iters} iterations, last change {change:.2g}"
    if negative is not None:
        note += f" (dominant eigenvalue {negative[0]:.4g} < 0 after {negative[1]}: then a shifted run)"
    rows.append(("hessian_top_eigenvalue (incl. setup)", wall, cpu, note))
    samples, wall, cpu = timed(lambda: hutchinson_samples(hvp_operator(loss_fn, params), params, cfg["trace_probes"], cfg["seed"]))
    rows.append(("hessian_trace (incl. setup)", wall, cpu, f"{samples.mean():.1f} +- {samples.std(ddof=1) / np.sqrt(len(samples)):.1f} "
                 f"(s.e., {len(samples)} probes)"))

    def basin():
        generator = torch.Generator().manual_seed(cfg["seed"])
        radii = []
        for _ in range(cfg["n_directions"]):
            direction = filter_normalized_direction(params, generator)
            radii.append(basin_radius(cfg["radii"], loss_curve(loss_fn, params, direction, cfg["radii"]), cfg["basin_threshold"])[0])
        return radii

    radii, wall, cpu = timed(basin)
    rows.append((f"basin ({cfg['n_directions']} directions x {len(cfg['radii'])} radii)", wall, cpu,
                 f"radius {np.mean(radii):.3f} (per direction {np.round(radii, 3).tolist()})"))
    task = start(checkpoint, Inputs(train_data=train))
    frame, wall, cpu = timed(task.finish)
    rows.append(("whole landscape finish() at defaults", wall, cpu, f"{len(frame)} rows"))

    print(f"\n{'estimate':44s} {'wall s':>8s} {'fwd-eq':>8s} {'cpu s':>8s} {'fwd-eq':>8s}  note")
    for name, wall, cpu, note in rows:
        print(f"{name:44s} {wall:8.3f} {wall / base_wall:8.1f} {cpu:8.3f} {cpu / base_cpu:8.1f}  {note}")
    print("\nfwd-eq: time / time of one no-grad forward pass on the same batch (the first line).")


if __name__ == "__main__":
    main()
