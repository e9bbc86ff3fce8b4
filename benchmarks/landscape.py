"""Benchmark of plastiscope.landscape: the cost of sharpness and basin estimates in forward passes.

Baseline, measured in the same run on the same fixed batch and the same model
(``checkpoint.hf_model``, as the analysis uses it): one forward pass computing the batch
loss under ``torch.no_grad``. Every estimate is reported as its time divided by that
forward time ("forward-pass equivalents", fwd-eq):

- gradient (forward + backward); one Hessian-vector product (a forward, a backward with
  ``create_graph`` and a double backward) on the batch in one micro-batch, and over
  micro-batches of ``--micro-docs`` documents each;
- ``hessian_max/min_eigenvalue``: one Lanczos run (at most ``lanczos_steps`` products, ``lanczos_tol``);
  ``adaptive_max_eigenvalue``: the same on ``|theta| H |theta|``;
- ``hessian_trace`` / ``adaptive_trace``: Hutchinson with ``trace_probes`` probes each;
- basins: random directions (``n_directions`` x ``len(sigmas)`` perturbed scores) and the
  worst-case search, on the loss and on the accuracy of a labelled task (the embedded
  corpus's held-out glosses labelled by topic, ``basin_docs`` of them);
- the whole analysis ``finish()`` at its default options (with the labelled task).

With ``--eigsh`` the extreme eigenvalues are also computed by ``scipy.sparse.linalg.eigsh``
(ARPACK, tol 1e-6) on a LinearOperator of the same products, and Lanczos's relative error
against it is printed.

The model is a Llama of the given size, briefly pretrained on the embedded corpus
(``--train-steps``, so the landscape is not that of a random init). Wall-clock and CPU time
(``time.process_time``) are both printed: on a shared machine wall time mostly measures the
neighbours. Run with ``OMP_NUM_THREADS=1``.

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
from plastiscope.downstream import DownstreamTask
from plastiscope.landscape import (
    OPTIONS,
    adaptive_operator,
    fixed_batch,
    gaussian_direction,
    hutchinson_samples,
    hvp_operator,
    lanczos_extremes,
    loss_pieces,
    perturbed_scores,
    start,
    worst_case_scores,
)
from plastiscope.landscape.analysis import LandscapeTask, beyond_basin, loss_value, math_attention
from plastiscope.memo import Memo
from plastiscope.options import validate
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
    """A Llama of ``size`` pretrained ``train_steps`` steps on the embedded corpus, as a checkpoint, and the corpus."""
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


def eigsh_extremes(hvp, params) -> tuple[float, float, int]:
    """``(largest, smallest, products)`` eigenvalues by ARPACK on a LinearOperator of ``hvp``."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    shapes, sizes = [p.shape for p in params], [p.numel() for p in params]
    count = [0]

    def matvec(x):
        count[0] += 1
        flat = torch.tensor(np.asarray(x).ravel(), dtype=torch.float32, device=params[0].device)
        v = [t.reshape(s) for t, s in zip(torch.split(flat, sizes), shapes)]
        return torch.cat([h.reshape(-1) for h in hvp(v)]).double().cpu().numpy()

    n = sum(sizes)
    operator = LinearOperator((n, n), matvec=matvec, dtype=np.float64)
    top = eigsh(operator, k=1, which="LA", tol=1e-6, return_eigenvectors=False)[0]
    bottom = eigsh(operator, k=1, which="SA", tol=1e-6, return_eigenvectors=False)[0]
    return float(top), float(bottom), count[0]


def main() -> None:
    """Measure and print every estimate's cost in forward-pass equivalents."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="d_model 256, 6 layers, context 128, 64 documents")
    parser.add_argument("--train-steps", type=int, default=60, help="pretraining steps before measuring (0: random init)")
    parser.add_argument("--repeats", type=int, default=5, help="forward-pass repeats (the fastest is the baseline)")
    parser.add_argument("--micro-docs", type=int, default=8, help="documents per micro-batch for the micro-batched product")
    parser.add_argument("--eigsh", action="store_true", help="also compute the extreme eigenvalues with scipy's eigsh")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    size = "full" if args.full else "default"
    d_model, layers, heads, d_mlp, context, vocab, n_docs = SIZES[size]
    checkpoint, train = build(size, args.train_steps)
    finetune_data = load_corpus("finetune")
    model = checkpoint.hf_model
    params = list(model.parameters())
    pad_id = checkpoint.tokenizer.pad_token_id
    ids = fixed_batch(checkpoint, train, n_docs)
    cfg = validate("landscape", OPTIONS, {"n_docs": n_docs, "label_column": "topic"})
    pieces = loss_pieces(model, ids, pad_id, cfg["micro_batch_tokens"])
    width = max(len(x) for x in ids)
    micro = loss_pieces(model, ids, pad_id, args.micro_docs * width)
    print(f"size {size}: d_model {d_model}, {layers} layers, context {context}, vocab {len(checkpoint.tokenizer)}, "
          f"{sum(p.numel() for p in params):,} parameters; batch {len(ids)} documents x {width} positions "
          f"({sum(len(x) - 1 for x in ids)} target tokens); pretrained {args.train_steps} steps; torch threads {torch.get_num_threads()}")

    loss, base_wall, base_cpu = timed(loss_value(pieces), args.repeats)
    rows = [("forward (baseline)", base_wall, base_cpu, f"loss {loss:.3f}")]
    _, wall, cpu = timed(lambda: torch.autograd.grad(pieces[0](), params), 3)
    rows.append(("forward + backward (gradient)", wall, cpu, ""))
    with math_attention():
        v = [torch.randn_like(p) for p in params]
        _, wall, cpu = timed(lambda: hvp_operator(pieces, params)(v), 3)
        rows.append(("one HVP, one micro-batch", wall, cpu, ""))
        _, wall, cpu = timed(lambda: hvp_operator(micro, params)(v), 3)
        rows.append((f"one HVP, {len(micro)} micro-batches", wall, cpu, f"{args.micro_docs} documents each"))

        steps, tol, probes, seed = cfg["lanczos_steps"], cfg["lanczos_tol"], cfg["trace_probes"], cfg["seed"]
        raw, wall, cpu = timed(lambda: lanczos_extremes(hvp_operator(pieces, params), params, steps, tol, seed))
        rows.append(("hessian max/min eigenvalue (Lanczos)", wall, cpu,
                     f"max {raw.max_value:.5g} (residual {raw.max_residual:.2g}), min {raw.min_value:.5g} "
                     f"(residual {raw.min_residual:.2g}), {raw.steps} products"))
        adaptive, wall, cpu = timed(
            lambda: lanczos_extremes(adaptive_operator(hvp_operator(pieces, params), params), params, steps, tol, seed, minimum=False))
        rows.append(("adaptive max eigenvalue (Lanczos)", wall, cpu,
                     f"max {adaptive.max_value:.5g} (residual {adaptive.max_residual:.2g}), {adaptive.steps} products"))
        for name, make in (("hessian_trace", lambda: hvp_operator(pieces, params)),
                           ("adaptive_trace", lambda: adaptive_operator(hvp_operator(pieces, params), params))):
            samples, wall, cpu = timed(lambda make=make: hutchinson_samples(make(), params, probes, seed))
            rows.append((f"{name} (Hutchinson)", wall, cpu, f"{samples.mean():.4g} +- {samples.std(ddof=1) / np.sqrt(len(samples)):.2g} "
                         f"(s.e., {len(samples)} probes)"))
        if args.eigsh:
            (top, bottom, count), wall, cpu = timed(lambda: eigsh_extremes(hvp_operator(pieces, params), params))
            rows.append(("eigsh reference (ARPACK, tol 1e-6)", wall, cpu,
                         f"max {top:.6g}, min {bottom:.6g}, {count} products; Lanczos relative error: max "
                         f"{abs(raw.max_value / top - 1):.1e}, min {abs(raw.min_value / bottom - 1):.1e}"))

    task = LandscapeTask(checkpoint, train, DownstreamTask.from_documents(finetune_data, "topic"), cfg)
    objectives = task._objectives(model, pieces, pad_id)
    sigmas = cfg["sigmas"]
    for name, (score, gradient, higher, tau) in objectives.items():
        def random(score=score):
            generator = torch.Generator().manual_seed(seed)
            return [perturbed_scores({"s": score}, params, gaussian_direction(params, generator), sigmas)["s"]
                    for _ in range(cfg["n_directions"])]

        _, wall, cpu = timed(random)
        rows.append((f"basin, {name}, random ({cfg['n_directions']} x {len(sigmas)} sigmas)", wall, cpu, ""))
        until = beyond_basin(score(), higher, tau)
        (curve, _), wall, cpu = timed(lambda score=score, gradient=gradient, until=until: worst_case_scores(
            gradient, score, params, sigmas, cfg["worst_case_steps"], torch.Generator().manual_seed(seed + 1), until=until))
        rows.append((f"basin, {name}, worst case", wall, cpu, f"{len(curve)} sigmas x {cfg['worst_case_steps']} steps"))

    task = start(checkpoint, Inputs(train_data=train, finetune_data=finetune_data), cfg, Memo())
    frame, wall, cpu = timed(task.finish)
    rows.append(("whole landscape finish() at defaults", wall, cpu, f"{len(frame)} rows"))

    print(f"\n{'estimate':48s} {'wall s':>8s} {'fwd-eq':>8s} {'cpu s':>8s} {'fwd-eq':>8s}  note")
    for name, wall, cpu, note in rows:
        print(f"{name:48s} {wall:8.3f} {wall / base_wall:8.1f} {cpu:8.3f} {cpu / base_cpu:8.1f}  {note}")
    print("\nfwd-eq: time / time of one no-grad forward pass on the same batch (the first line).")
    print(frame[frame.metric == "basin_sigma"][["objective", "direction", "value", "ci_low", "ci_high", "censored"]].to_string())


if __name__ == "__main__":
    main()
