"""Cost of the data-reading analyses against a bare forward pass, by context length and width.

For tokens per document in {256, 512, 1024, 2048} (and a second width at fewer lengths), each
data-reading analysis's (``probes``, ``attention``, ``overfit``) time and peak memory as a ratio
to the bare forward pass of the same model on the same batches, and a fit of how each grows.

- **Model**: a random-init Llama (``transformers``, seed 0): ``--layers`` blocks, ``--d-model``
  width, ``--heads`` heads, SwiGLU MLP of ``8/3 d_model`` (rounded to 256), a ``--vocab`` of
  8192 tokens, float32, one torch thread, a context of exactly ``pos`` tokens. The vocabulary
  keeps the unembedding's share of the forward (25-40 % here) nearer a 1B model's (~8 % at
  32k tokens) than a 32k vocabulary at this width would (~75 %): probes and attention skip the
  unembedding, so a larger share would flatter them. Documents: ``--docs``
  texts of the embedded corpus (glosses joined) longer than the context, so every document has
  ``pos`` tokens; batches of ``--batch-size``.
- **Bare forward (the baseline)**: a plain ``transformers`` ``LlamaForCausalLM`` with the same
  weights and PyTorch's fused scaled-dot-product attention (``set_attn_implementation("sdpa")``,
  the floor a forward reaches), ``model(tokens, attention_mask=mask, use_cache=False).logits``
  under ``torch.no_grad()``: logits only (no hidden states, no attentions), over the same padded
  batches. The same forward with eager attention (``"eager"``: the ``[batch, head, pos, pos]``
  softmax made at every layer) is measured beside it, for reference.
- **An analysis**: its ``start`` and the shared passes over its inputs with its own consumers
  (:func:`plastiscope.activations.run_pass`), exactly what the runner does before ``finish``.
  ``probes``: token-level probes (4 classes from the token id, 64 examples per class) at every
  layer, 2 folds grouped by document, no random-init baseline (a second model's pass, computed once per sweep);
  ``attention``: every pattern statistic at default options; ``overfit``: the losses of the
  first half of the documents as training data and of the second half as validation data, no
  reference model and no memorization test (a second model's pass and a generation, both
  independent of the checkpoint's pass). ``finish`` (bootstrap, probe fits) does not read the
  model's activations and depends on the number of documents and examples, not on their length:
  its time is printed once, apart.
- **Time**: CPU time of the process (``time.process_time``; everything runs on one thread),
  which other processes on a shared machine disturb far less than wall time; median over
  ``--repeats`` interleaved rounds, after one warm-up round on short inputs.
- **Peak memory**: in a fresh process per (width, length), the rise of the resident memory's high
  water mark (``VmHWM``, reset through ``/proc/self/clear_refs``) over its level before the run,
  with the model, its bridge and the baseline model already loaded; glibc's mmap threshold is
  fixed (``MALLOC_MMAP_THRESHOLD_``) so that freed tensors go back to the system between runs.
  Maximum over the rounds.
- **Fits**: exponent of time and memory in ``pos`` (least squares on log-log over the lengths
  of the main width) and in ``d_model`` (between the two widths at each shared length).

Targets, at 2048 tokens, against the SDPA bare forward: probes and overfit <= 1.2x its time, attention
<= 1.5x (its statistics read every layer's queries and keys beside an SDPA forward); every analysis
<= 1.3x its peak memory.

    python benchmarks/scale_context.py             # ~8-10 minutes on 2 cores
    python benchmarks/scale_context.py --quick     # 256 and 512 tokens, one repeat: a smoke test
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ANALYSES = ("probes", "attention", "overfit")
MODES = ("bare", "bare_eager") + ANALYSES
TIME_TARGETS = {"probes": 1.2, "attention": 1.5, "overfit": 1.2}
MEMORY_TARGET = 1.3
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536", "TOKENIZERS_PARALLELISM": "false"}


# ---------------------------------------------------------------------- child: one (width, length)
def peak_rss_during(fn) -> tuple[float, int]:
    """``(seconds, bytes)``: CPU time of ``fn()`` (one thread) and the rise of the peak resident memory over the level before it."""
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark restarts from the current resident size
    before = _status_kib("VmRSS")
    start = time.process_time()
    fn()
    seconds = time.process_time() - start
    return seconds, (_status_kib("VmHWM") - before) * 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(d_model: int, pos: int, args: argparse.Namespace) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from plastiscope import Checkpoint
    from plastiscope.activations import batches, run_pass
    from plastiscope.attention import ANALYSIS as ATTENTION
    from plastiscope.data import Documents
    from plastiscope.demo.corpus import load_corpus
    from plastiscope.demo.tokenizer import train_tokenizer
    from plastiscope.memo import Memo
    from plastiscope.options import validate
    from plastiscope.overfit import ANALYSIS as OVERFIT
    from plastiscope.probes import ANALYSIS as PROBES
    from plastiscope.runner import Inputs

    torch.set_num_threads(1)
    tokenizer = train_tokenizer(load_corpus("train", 20000).texts, args.vocab)  # a tokenizer that fills the vocabulary
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=d_model, intermediate_size=256 * round(8 * d_model / 3 / 256), num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.heads, max_position_embeddings=pos,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    bare, bare_eager = LlamaForCausalLM(copy.deepcopy(config)).eval(), LlamaForCausalLM(copy.deepcopy(config)).eval()  # own configs:
    # the attention implementation is a setting of the config, which models built from one config object share
    for baseline, implementation in ((bare, "sdpa"), (bare_eager, "eager")):
        baseline.load_state_dict(model.state_dict())
        baseline.set_attn_implementation(implementation)
    checkpoint = Checkpoint.from_model(model, tokenizer, weight_decay=0.0, name=f"d{d_model}-pos{pos}")
    _ = checkpoint.bridge

    texts = load_corpus("train").texts
    long = [" ".join(texts[i * 300 : (i + 1) * 300]) for i in range(args.docs)]  # ~7,000 tokens each
    short = [" ".join(texts[i * 300 : i * 300 + 3]) for i in range(args.docs)]
    half = args.docs // 2

    def run_bare(docs: list[str], baseline=bare) -> None:
        with torch.no_grad():
            for batch in batches(checkpoint, docs, args.batch_size, progress=False):
                baseline(batch.tokens, attention_mask=batch.mask.long(), use_cache=False).logits  # noqa: B018

    def token_class(ids: list[int]) -> list[int]:
        return [t % 4 for t in ids]

    specs = {
        "probes": (PROBES, {"level": "token", "token_labels": token_class, "max_examples": 256, "random_baseline": False,
                   "folds": 2, "inner_folds": 2}),
        "attention": (ATTENTION, {}),
        "overfit": (OVERFIT, {"reference": None, "memorization_max_docs": 0}),
    }

    def inputs_of(name: str, docs: list[str]) -> Inputs:
        if name == "overfit":
            return Inputs(train_data=Documents(docs[:half]), val_data=Documents(docs[half:]))
        return Inputs(data=Documents(docs))

    tasks = {}

    def run_analysis(name: str, docs: list[str]) -> None:
        spec, options = specs[name]
        inputs = inputs_of(name, docs)
        task = spec.start(checkpoint, inputs, validate(spec.name, spec.options, options), Memo())
        for input_name, consumers in task.passes.items():
            run_pass(checkpoint, getattr(inputs, input_name), consumers, batch_size=args.batch_size, progress=False)
        tasks[name] = task

    def run(mode: str, docs: list[str]) -> None:
        if mode.startswith("bare"):
            return run_bare(docs, bare if mode == "bare" else bare_eager)
        return run_analysis(mode, docs)

    for mode in MODES:  # warm-up: first-call costs, on short inputs
        run(mode, short)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    peaks: dict[str, int] = dict.fromkeys(MODES, 0)
    for _ in range(args.repeats):
        for mode in MODES:
            tasks.pop(mode, None)
            seconds, peak = peak_rss_during(lambda mode=mode: run(mode, long))
            times[mode].append(seconds)
            peaks[mode] = max(peaks[mode], peak)
    finish = {}
    if args.finish:
        for name in ANALYSES:
            start = time.process_time()
            tasks[name].finish()
            finish[name] = time.process_time() - start
    tokens = sum(int(b.mask.sum()) for b in batches(checkpoint, long, args.batch_size, progress=False))
    return {"d_model": d_model, "pos": pos, "tokens": tokens, "times": times, "peaks": peaks, "finish": finish}


# ---------------------------------------------------------------------- parent
def measure(d_model: int, pos: int, args: argparse.Namespace, finish: bool) -> dict:
    command = [sys.executable, __file__, "--child", f"{d_model},{pos}", "--layers", str(args.layers), "--heads", str(args.heads),
               "--docs", str(args.docs), "--vocab", str(args.vocab), "--batch-size", str(args.batch_size), "--repeats", str(args.repeats)]
    if finish:
        command.append("--finish")
    out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **ENV})
    if out.returncode:
        sys.exit(f"measurement d_model={d_model} pos={pos} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def slope(x: list[float], y: list[float]) -> float:
    """Least-squares exponent b of y ~ x^b."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--second-d-model", type=int, default=1024)
    parser.add_argument("--lengths", default="256,512,1024,2048")
    parser.add_argument("--second-lengths", default="256,512", help="lengths measured at the second width")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--docs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="256 and 512 tokens, one repeat, no second width")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--finish", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        d_model, pos = (int(v) for v in args.child.split(","))
        print(json.dumps(child(d_model, pos, args)))
        return
    if not Path("/proc/self/clear_refs").exists():
        sys.exit("this benchmark measures peak memory through /proc/self/clear_refs (Linux)")
    lengths = [int(v) for v in args.lengths.split(",")]
    second = [int(v) for v in args.second_lengths.split(",") if v]
    if args.quick:
        lengths, second, args.repeats = [256, 512], [], 1

    started = time.perf_counter()
    main_runs = [measure(args.d_model, pos, args, finish=pos == max(lengths)) for pos in lengths]
    second_runs = [measure(args.second_d_model, pos, args, finish=False) for pos in second]

    print(f"random-init Llama, {args.layers} layers, {args.heads} heads, vocabulary {args.vocab}, float32, 1 torch thread; "
          f"{args.docs} documents per run in batches of {args.batch_size}; median of {args.repeats} rounds; "
          f"measured in {time.perf_counter() - started:.0f} s")
    header = ("| d_model | tokens/doc | bare forward (SDPA) CPU s | eager forward | " + " | ".join(f"{a} time" for a in ANALYSES)
              + " | bare forward peak MiB | eager forward peak | " + " | ".join(f"{a} peak" for a in ANALYSES) + " |")
    print("\n" + header)
    print("|" + "---|" * header.count(" | ") + "---|")
    for run in main_runs + second_runs:
        t = {m: statistics.median(run["times"][m]) for m in MODES}
        p = run["peaks"]
        print(f"| {run['d_model']} | {run['pos']} | {t['bare']:.2f} | {t['bare_eager'] / t['bare']:.2f}x | "
              + " | ".join(f"{t[a] / t['bare']:.2f}x ({t[a] / t['bare_eager']:.2f}x eager)" for a in ANALYSES)
              + f" | {p['bare'] / 2**20:.0f} | {p['bare_eager'] / p['bare']:.2f}x | " + " | ".join(f"{p[a] / p['bare']:.2f}x" for a in ANALYSES) + " |")
    print("\n(ratios to the SDPA bare forward; in brackets, to the eager bare forward)")

    pos = [r["pos"] for r in main_runs]
    if len(pos) > 1:
        print("\nexponent in tokens per document (time ~ pos^b, least squares over "
              f"{', '.join(map(str, lengths))} at d_model {args.d_model}; last: between the two longest):")
    for mode in MODES if len(pos) > 1 else ():
        t = [statistics.median(r["times"][mode]) for r in main_runs]
        m = [r["peaks"][mode] for r in main_runs]
        last = np.log(t[-1] / t[-2]) / np.log(pos[-1] / pos[-2])
        print(f"  {mode:<9} time b = {slope(pos, t):.2f} (last {last:.2f}), peak memory b = {slope(pos, m):.2f}")
    if second_runs:
        print(f"\nexponent in d_model (time ~ d_model^b, between {args.d_model} and {args.second_d_model}):")
        for run2 in second_runs:
            run1 = next(r for r in main_runs if r["pos"] == run2["pos"])
            ratio = np.log(args.second_d_model / args.d_model)
            cells = []
            for mode in MODES:
                b_t = np.log(statistics.median(run2["times"][mode]) / statistics.median(run1["times"][mode])) / ratio
                b_m = np.log(run2["peaks"][mode] / run1["peaks"][mode]) / ratio
                cells.append(f"{mode} time {b_t:.2f} / memory {b_m:.2f}")
            print(f"  at {run2['pos']} tokens: " + ", ".join(cells))

    last = main_runs[-1]
    if last["finish"]:
        print(f"\nafter the pass (finish: bootstrap, probe fits), once, at {last['pos']} tokens: "
              + ", ".join(f"{a} {last['finish'][a]:.1f} s" for a in ANALYSES)
              + f" (bare forward {statistics.median(last['times']['bare']):.1f} s)")
    print(f"\ntargets at {last['pos']} tokens, d_model {args.d_model}, against the SDPA bare forward:")
    t = {m: statistics.median(last["times"][m]) for m in MODES}
    for a in ANALYSES:
        time_ratio, memory_ratio = t[a] / t["bare"], last["peaks"][a] / last["peaks"]["bare"]
        verdict = "holds" if time_ratio <= TIME_TARGETS[a] and memory_ratio <= MEMORY_TARGET else "MISSED"
        print(f"  {a:<9} time {time_ratio:.2f}x (<= {TIME_TARGETS[a]}x), peak memory {memory_ratio:.2f}x (<= {MEMORY_TARGET}x): {verdict}"
              f"   [eager forward: time {t[a] / t['bare_eager']:.2f}x, memory {last['peaks'][a] / last['peaks']['bare_eager']:.2f}x]")

if __name__ == "__main__":
    main()
