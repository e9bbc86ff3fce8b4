"""Benchmark of plastiscope.landscape: passes over the fixed batch of the whole analysis, before -> after, and agreement.

Two protocols run in the same process, on the same model and fixed batch, at the analysis's
default options (loss basins; ``--accuracy`` adds the accuracy basins of a labelled task):

- **before**: the protocol this package used until the products were shared. Lanczos from a
  Gaussian start, stopping once each extreme's residual is ``lanczos_tol`` times its own
  magnitude (``lanczos_extremes(..., relative_to="each")``), raw and adaptive runs one after
  the other; Hutchinson traces with their own ``trace_probes`` products each; basins scored
  at every ``sigma`` of the grid up to the edge (``basin_search="grid"``);
- **after**: the analysis as it is (:func:`plastiscope.landscape.hessian.sharpness`: Lanczos
  runs started from the first trace probe, the smallest eigenvalue stopped on its residual
  relative to the spectrum's scale, products sharing a gradient graph in rounds, the graph
  kept across rounds when the batch is one micro-batch; ``basin_search="bisect"``, guessed at
  the edges the trace and top eigenvalue predict).

**Counting convention.** Every forward of the model is counted (a forward hook, weighted by
its tokens over the fixed batch's padded tokens) and every ``torch.autograd.grad`` call is
classified: a first-order backward (from a scalar loss, with or without ``create_graph``) or
a double backward (from the gradients, as a Hessian-vector product's second half). A
backward is weighted as the forward before it. Two conventions:

- **passes** (the headline): forward 1, backward 1, double backward 2 (it is a forward and a
  backward through the graph of the forward and the backward). One Hessian-vector product on
  its own is 4 passes, two forward+backward passes; in a round that shares the gradient graph
  each further product is 2; a gradient is 2;
- **FLOP-weighted**: a backward costs twice its forward (two products per matrix product of
  the forward), so forward 1, backward 2, double backward 6 (twice the forward and backward it
  differentiates): a product on its own is 9, a gradient 3.

The CPU time of each protocol's ``finish()`` over one no-grad forward of the batch is printed
too (this machine's cost; the FLOP-weighted count is what a GPU projection should use).

**Agreement.** Each reported number of the new protocol against the old one's: eigenvalues
within the sum of the two Ritz residuals (each bounds its value's distance to an
eigenvalue); traces (the same probes) to float rounding, and inside the old 95 % interval;
basin radii: random ones equal (the same directions scored at the same sigmas), worst-case ones
in the same grid interval (the grid's resolution); random curves equal where both scored a
sigma for every direction (worst-case curves are not compared: the search visits other
sigmas, so its direction at a sigma differs).

With ``--eigsh`` the extreme eigenvalues are also computed by ``scipy.sparse.linalg.eigsh``
(ARPACK, tol 1e-6) on the same products, against both protocols.

The model is a Llama of the given size, briefly pretrained on the embedded corpus
(``--train-steps``, so the landscape is not that of a random init). Run with ``OMP_NUM_THREADS=1``.

    python benchmarks/landscape.py            # the embedded sweep's size: d_model 64, 3 layers, context 64
    python benchmarks/landscape.py --full     # d_model 256, 6 layers, context 128, 64 documents
    python benchmarks/landscape.py --micro-batch-tokens 512   # the batch in 4 micro-batches: no graph kept across rounds
"""

from __future__ import annotations

import argparse
import contextlib
import time
import warnings
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from plastiscope import Checkpoint
from plastiscope.data import encode, pad
from plastiscope.demo.corpus import load_corpus
from plastiscope.demo.tokenizer import train_tokenizer
from plastiscope.landscape import (
    OPTIONS,
    fixed_batch,
    hutchinson_samples,
    hvp_operator,
    lanczos_extremes,
    loss_pieces,
    micro_batches,
    start,
)
from plastiscope.landscape.analysis import LandscapeTask, eigenvalue_records, loss_value, math_attention
from plastiscope.landscape.hessian import adaptive_operator
from plastiscope.memo import Memo
from plastiscope.options import validate
from plastiscope.plasticity import finetune
from plastiscope.runner import Inputs
from plastiscope.stats import mean_ci

# name -> (d_model, layers, heads, d_mlp, context, vocab, documents in the batch)
SIZES = {"default": (64, 3, 4, 192, 64, 2048, 32), "full": (256, 6, 8, 768, 128, 4096, 64)}
CONVENTIONS = {"passes": {"forward": 1, "backward": 1, "double backward": 2},
               "FLOP-weighted": {"forward": 1, "backward": 2, "double backward": 6}}


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


class PassCounter:
    """Forwards of ``model`` (weighted by tokens over ``batch_tokens``) and ``torch.autograd.grad`` calls, per phase."""

    def __init__(self, model: torch.nn.Module, batch_tokens: int):
        self.model, self.batch_tokens = model, batch_tokens
        self.counts: Counter = Counter()
        self.phase, self.weight = "other", 1.0

    def _forward(self, module: Any, args: tuple, kwargs: dict) -> None:
        tokens = args[0] if args else kwargs.get("input_ids")
        self.weight = tokens.numel() / self.batch_tokens
        self.counts[self.phase, "forward"] += self.weight

    @contextlib.contextmanager
    def counting(self):
        """Count while inside; the model and ``torch.autograd.grad`` are restored after."""
        hook = self.model.register_forward_pre_hook(self._forward, with_kwargs=True)
        grad = torch.autograd.grad

        def counted(outputs, inputs, *args, **kwargs):
            many = isinstance(outputs, (list, tuple)) and (len(outputs) > 1 or outputs[0].dim() > 0)
            self.counts[self.phase, "double backward" if many else "backward"] += self.weight
            return grad(outputs, inputs, *args, **kwargs)

        torch.autograd.grad = counted
        try:
            yield self
        finally:
            torch.autograd.grad = grad
            hook.remove()

    @contextlib.contextmanager
    def during(self, phase: str):
        """Attribute what runs inside to ``phase``."""
        before, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = before

    def total(self, convention: str, phase: str | None = None) -> float:
        """Passes of ``phase`` (all phases when None) under ``convention``."""
        costs = CONVENTIONS[convention]
        return sum(n * costs[kind] for (p, kind), n in self.counts.items() if phase in (None, p))


class OldProtocol(LandscapeTask):
    """The analysis with the former sharpness protocol: separate runs, Gaussian start, each extreme's own tolerance."""

    def _sharpness(self, pieces, params, n_docs, boot):
        cfg, records = self.config, []
        hvp = hvp_operator(pieces, params)  # one graph per product, as before
        for prefix, operator, minimum in (("hessian", hvp, True), ("adaptive", adaptive_operator(hvp, params), False)):
            if cfg["lanczos_steps"]:
                extremes = lanczos_extremes(operator, params, cfg["lanczos_steps"], cfg["lanczos_tol"], cfg["seed"], minimum,
                                            relative_to="each")
                records += eigenvalue_records(prefix, extremes, n_docs, minimum)
            if cfg["trace_probes"]:
                value, low, high, n = mean_ci(hutchinson_samples(operator, params, cfg["trace_probes"], cfg["seed"]), **boot)
                records.append({"metric": f"{prefix}_trace", "value": value, "ci_low": low, "ci_high": high, "n": n})
        return records


def run(task: LandscapeTask, counter: PassCounter) -> tuple[pd.DataFrame, float]:
    """``(frame, CPU seconds)`` of ``task.finish()``, its passes counted per phase (sharpness, basins)."""
    sharp, basins = task._sharpness, task._basins

    def counted_sharpness(*args, **kwargs):
        with counter.during("sharpness"):
            return sharp(*args, **kwargs)

    def counted_basins(*args, **kwargs):
        with counter.during("basins"):
            return basins(*args, **kwargs)

    task._sharpness, task._basins = counted_sharpness, counted_basins
    cpu = time.process_time()
    with counter.counting():
        frame = task.finish()
    return frame, time.process_time() - cpu


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


def agreement(old: pd.DataFrame, new: pd.DataFrame, sigmas: list[float]) -> pd.DataFrame:
    """One row per reported number of both protocols: old, new, difference, the tolerance it is checked against, within."""
    keys = ["metric", "objective", "direction", "sigma"]
    both = old.merge(new, on=keys, how="inner", suffixes=("_old", "_new"))
    rows = []
    grid = np.asarray(sigmas)
    for _, r in both.iterrows():
        a, b = r.value_old, r.value_new
        if r.metric.endswith("eigenvalue"):
            tol, name = r.residual_old + r.residual_new, "residual old + new"
            ok = abs(a - b) <= tol
        elif r.metric.endswith("trace"):
            tol, name = r.ci_high_old - r.ci_low_old, "old 95 % interval"
            ok = r.ci_low_old <= b <= r.ci_high_old and abs(a - b) <= 1e-4 * abs(a)
        elif r.metric == "basin_sigma":
            i, j = np.searchsorted(grid, a), np.searchsorted(grid, b)
            tol, name = (grid[min(i, len(grid) - 1)] - grid[max(i - 1, 0)]), "grid interval"
            ok = (abs(a - b) <= 1e-9 * max(abs(a), 1e-30)) if r.direction == "random" else i == j
        elif r.n_old != r.n_new or r.direction == "worst_case":  # a mean over fewer directions; another search path
            continue
        else:
            tol, name = 0.0, "equal"
            ok = abs(a - b) <= 1e-6 * max(abs(a), 1e-30)
        where = r.objective if isinstance(r.objective, str) and r.objective else ""
        where += f" {r.direction}" if isinstance(r.direction, str) and r.direction else ""
        where += f" sigma {r.sigma:g}" if np.isfinite(r.sigma) else ""
        rows.append({"metric": r.metric, "where": where.strip(), "old": a, "new": b, "|new - old|": abs(b - a),
                     "tolerance": tol, "against": name, "within": bool(ok)})
    return pd.DataFrame(rows)


def main() -> None:
    """Count and time both protocols at the default options; print their agreement."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="d_model 256, 6 layers, context 128, 64 documents")
    parser.add_argument("--train-steps", type=int, default=60, help="pretraining steps before measuring (0: random init)")
    parser.add_argument("--repeats", type=int, default=5, help="forward-pass repeats (the fastest is the baseline)")
    parser.add_argument("--accuracy", action="store_true", help="also the accuracy basins of a labelled task (label_column)")
    parser.add_argument("--eigsh", action="store_true", help="also compute the extreme eigenvalues with scipy's eigsh")
    parser.add_argument("--micro-batch-tokens", type=int, default=None,
                        help="option micro_batch_tokens for both protocols (default: the option's default, one micro-batch here); "
                             "512 splits the batch in 4, as a 1B model's batch is split")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    size = "full" if args.full else "default"
    d_model, layers, heads, d_mlp, context, vocab, n_docs = SIZES[size]
    checkpoint, train = build(size, args.train_steps)
    finetune_data = load_corpus("finetune") if args.accuracy else None
    model = checkpoint.hf_model
    params = list(model.parameters())
    pad_id = checkpoint.tokenizer.pad_token_id
    ids = fixed_batch(checkpoint, train, n_docs)
    given = {"n_docs": n_docs} | ({"label_column": "topic"} if args.accuracy else {})
    given |= {"micro_batch_tokens": args.micro_batch_tokens} if args.micro_batch_tokens else {}
    cfg = validate("landscape", OPTIONS, given)
    pieces = loss_pieces(model, ids, pad_id, cfg["micro_batch_tokens"])
    groups = micro_batches([len(x) for x in ids], cfg["micro_batch_tokens"])
    batch_tokens = sum(pad([ids[i] for i in group], pad_id)[0].numel() for group in groups)
    print(f"size {size}: d_model {d_model}, {layers} layers, context {context}, vocab {len(checkpoint.tokenizer)}, "
          f"{sum(p.numel() for p in params):,} parameters; batch {len(ids)} documents ({batch_tokens} padded tokens); "
          f"pretrained {args.train_steps} steps; {len(groups)} micro-batch(es); options: defaults"
          f"{' + label_column=topic' if args.accuracy else ''}"
          f"{f' + micro_batch_tokens={args.micro_batch_tokens}' if args.micro_batch_tokens else ''}")

    forward = loss_value(pieces)
    base = min(timed_cpu(forward) for _ in range(args.repeats))
    inputs = Inputs(train_data=train, finetune_data=finetune_data)
    results = {}
    for name, config, make in (("before", cfg | {"basin_search": "grid"}, OldProtocol), ("after", cfg, None)):
        task = start(checkpoint, inputs, config, Memo())
        if make is not None:
            task = make(task.checkpoint, task.train_data, task.task, task.config)
        counter = PassCounter(model, batch_tokens)
        frame, cpu = run(task, counter)
        results[name] = (frame, cpu, counter)

    print(f"\n{'protocol':10s} {'phase':10s} {'forwards':>9s} {'backwards':>10s} {'double bw':>10s} {'passes':>8s} "
          f"{'FLOP-wtd':>9s} {'CPU fwd-eq':>11s}")
    for name, (_, cpu, counter) in results.items():
        for phase in ("sharpness", "basins", None):
            count = {kind: sum(n for (p, k), n in counter.counts.items() if k == kind and phase in (None, p))
                     for kind in ("forward", "backward", "double backward")}
            time_ratio = f"{cpu / base:11.0f}" if phase is None else ""
            print(f"{name:10s} {phase or 'total':10s} {count['forward']:9.1f} {count['backward']:10.1f} "
                  f"{count['double backward']:10.1f} {counter.total('passes', phase):8.0f} "
                  f"{counter.total('FLOP-weighted', phase):9.0f} {time_ratio}")
    (old, _, old_count), (new, _, new_count) = results["before"], results["after"]
    print(f"\npasses at defaults: {old_count.total('passes'):.0f} -> {new_count.total('passes'):.0f} "
          f"({old_count.total('passes') / new_count.total('passes'):.1f}x fewer); FLOP-weighted "
          f"{old_count.total('FLOP-weighted'):.0f} -> {new_count.total('FLOP-weighted'):.0f}; CPU time "
          f"{results['before'][1] / base:.0f} -> {results['after'][1] / base:.0f} forwards "
          f"(one no-grad forward of the batch: {base * 1e3:.0f} ms CPU)")
    steps = {n: f.set_index("metric").loc[["hessian_max_eigenvalue", "adaptive_max_eigenvalue"], "steps"].tolist()
             for n, (f, _, _) in results.items()}
    print(f"Lanczos steps (raw, adaptive): before {steps['before']}, after {steps['after']}")

    table = agreement(old, new, cfg["sigmas"])
    with pd.option_context("display.width", 200, "display.max_rows", 200, "display.float_format", "{:.6g}".format):
        print("\nagreement of each number (after against before):")
        print(table.to_string(index=False))
    print(f"\nwithin tolerance: {int(table.within.sum())} of {len(table)}")

    if args.eigsh:
        model.eval()
        for p in params:
            p.requires_grad_(True)
        with math_attention():
            top, bottom, count = eigsh_extremes(hvp_operator(pieces, params), params)
        for name, (frame, _, _) in results.items():
            values = frame.set_index("metric").value
            print(f"eigsh ({count} products): max {top:.7g}, min {bottom:.7g}; {name}: relative error max "
                  f"{abs(values['hessian_max_eigenvalue'] / top - 1):.1e}, min {abs(values['hessian_min_eigenvalue'] / bottom - 1):.1e}")


def timed_cpu(fn) -> float:
    """CPU seconds of one call of ``fn``."""
    cpu = time.process_time()
    fn()
    return time.process_time() - cpu


if __name__ == "__main__":
    main()
