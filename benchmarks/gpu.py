"""The bare forward and every analysis of a 1B-shaped Llama on one GPU: seconds, tokens/s, peak memory.

- **Model**: a random-init ``transformers`` Llama (seed 0), by default of 1B shape: d_model 2048,
  16 layers, 32 heads, 8 key/value heads, SwiGLU MLP 8192, a 32,000-token byte-level BPE vocabulary
  trained on the embedded corpus (``plastiscope.demo``), untied unembedding: 1.10 B parameters. Saved
  as a Hugging Face folder (safetensors, tokenizer) in a temporary folder and loaded through
  ``plastiscope.Checkpoint.from_pretrained(...).to(device, dtype)``, bfloat16 on ``cuda``.
- **Documents**: glosses of the embedded corpus joined into documents longer than the context
  (``--pos`` tokens, 2048), so every document has exactly ``pos`` tokens. ``--docs`` documents
  (64) for probes and attention (label: two alternating classes: the model is random, the cost is
  what counts), half as many each as overfit's training and held-out data, as many for fine-tuning.
- **Parts**: ``load`` (folder to device, every analysis run pays it once); the bare forward of a
  plain ``LlamaForCausalLM`` with fused attention (``sdpa``: logits only, ``use_cache=False``, under
  ``torch.no_grad()``) and with ``eager`` attention (reference), over the same right-padded batches;
  then each analysis through ``plastiscope.analyze`` (load, passes, finish, results written):
  probes (defaults, no random-init baseline: once per sweep), attention, attention_weights, overfit
  (defaults), plasticity (a small budget: 10 steps at one learning rate, 4 documents a step),
  landscape (defaults: 32 documents; 2048 tokens per micro-batch, the documented setting at 1B and
  2048 tokens; with ``--tiny`` 2 documents and a few Lanczos steps, probes and directions).
- **Measure**: wall time between ``torch.cuda.synchronize()`` calls; peak ``torch.cuda.max_memory_allocated()``
  reset before each part (model weights included). Ratio: the part's seconds (less ``load`` for an
  analysis) against the SDPA forward's time for the part's own tokens (plasticity: the tokens it
  trains on; landscape: its fixed batch), i.e. forward passes' worth of work.

    python benchmarks/gpu.py --out gpu.json          # one 80 GB GPU, bfloat16
    python benchmarks/gpu.py --tiny --device cpu     # 1.5 M parameters, 256 tokens: a smoke test, ~20 s on one CPU thread
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as transformers_logging

import plastiscope
from plastiscope.data import Documents, encode, pad
from plastiscope.demo.corpus import load_corpus
from plastiscope.demo.tokenizer import train_tokenizer
from plastiscope.runner import get_analysis

SHAPES = {  # d_model, layers, heads, key/value heads, MLP width, vocabulary
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, intermediate_size=8192, vocab=32000),
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=512, vocab=4096),
}
ANALYSES = ("probes", "attention", "attention_weights", "overfit", "plasticity", "landscape")


def build_folder(folder: Path, shape: dict, pos: int, device: str, dtype: torch.dtype) -> int:
    """A random-init Llama of ``shape`` with a tokenizer filling its vocabulary, saved to ``folder``; its parameter count."""
    shape = dict(shape)
    tokenizer = train_tokenizer(load_corpus("train").texts, shape.pop("vocab"))
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=pos, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **shape)
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: seconds on a GPU, not minutes on a CPU
        model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def long_documents(n: int, pos: int) -> list[str]:
    """``n`` documents of consecutive training glosses, each of more than ``pos`` words (so at least ``pos`` tokens)."""
    docs, current, words = [], [], 0
    for text in load_corpus("train").texts:
        current.append(text)
        words += len(text.split())
        if words > pos:
            docs.append(" ".join(current))
            current, words = [], 0
            if len(docs) == n:
                return docs
    raise SystemExit(f"the corpus holds fewer than {n} documents of {pos} tokens; lower --docs or --pos")


def timed(device: str, fn) -> tuple[float, float | None]:
    """``(seconds, peak GiB)`` of ``fn()``: synchronized wall time, peak CUDA memory since a reset (None off CUDA)."""
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, torch.cuda.max_memory_allocated() / 2**30 if cuda else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="~1.5 M parameters, 256 tokens, 24 documents: a smoke test")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--pos", type=int, default=None, help="tokens per document (2048; 256 with --tiny)")
    parser.add_argument("--docs", type=int, default=None, help="documents for probes and attention (64; 24 with --tiny)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--parts", default="forward," + ",".join(ANALYSES), help="comma-separated: forward and analyses to measure")
    parser.add_argument("--out", default=None, help="write the table as JSON here")
    args = parser.parse_args()
    transformers_logging.disable_progress_bar()
    pos, n = args.pos or (256 if args.tiny else 2048), args.docs or (24 if args.tiny else 64)
    dtype, shape = getattr(torch, args.dtype), SHAPES["tiny" if args.tiny else "1b"]
    cuda = torch.device(args.device).type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA device here; for a smoke test on the CPU: --tiny --device cpu")
    parts = args.parts.split(",")
    unknown = set(parts) - {"forward", *ANALYSES}
    if unknown:
        raise SystemExit(f"--parts: unknown {sorted(unknown)}; choose from forward, {', '.join(ANALYSES)}")

    root = Path(tempfile.mkdtemp(prefix="plastiscope-gpu-"))
    atexit.register(shutil.rmtree, root, True)  # the model folder (2.2 GB at 1B) and the results folders
    params = build_folder(root / "model", shape, pos, args.device, dtype)
    docs = long_documents(n * 3, pos)
    data = Documents(docs[:n], {"label": [str(i % 2) for i in range(n)]}, source="joined glosses")
    half = n // 2
    inputs = plastiscope.Inputs(data=data, train_data=Documents(docs[n : n + half]), val_data=Documents(docs[n + half : 2 * n]),
                                finetune_data=Documents(docs[2 * n :]))
    plasticity = dict(steps=10, learning_rates=[1e-3], batch_size=4, train_docs=n // 2, select_docs=n // 4, eval_docs=n // 4,
                      eval_batch_size=args.batch_size)
    options = {"probes": {"label_column": "label", "random_baseline": False}, "plasticity": plasticity,
               "landscape": {"n_docs": 2, "lanczos_steps": 8, "trace_probes": 2, "n_directions": 1} if args.tiny
               else {"micro_batch_tokens": 2048}}
    tokens = {"probes": n * pos, "attention": n * pos, "attention_weights": 0, "overfit": 2 * half * pos,
              "plasticity": len(plasticity["learning_rates"]) * plasticity["steps"] * plasticity["batch_size"] * pos,
              "landscape": min(options["landscape"].get("n_docs", 32), half) * pos}
    name = f"llama-{'tiny' if args.tiny else '1b'}-shape"
    checkpoint = plastiscope.Checkpoint.from_pretrained(root / "model", weight_decay=0.0, name=name).to(args.device, dtype)
    print(f"random-init Llama {shape}: {params / 1e6:.1f} M parameters; {pos} tokens per document, {n} documents, "
          f"batches of {args.batch_size}, {args.dtype} on {args.device}")

    about = {"shape": shape, "parameters": params, "pos": pos, "docs": n, "batch_size": args.batch_size, "dtype": args.dtype,
             "device": torch.cuda.get_device_name() if cuda else args.device, "options": options, "torch": torch.__version__}
    rows: dict[str, dict] = {}

    def measure(name: str, fn, tokens: int) -> None:
        """Time ``fn`` into ``rows[name]``; a failure (out of memory, a refused option) is recorded and the next part runs."""
        try:
            rows[name] = dict(zip(("seconds", "peak_gib"), timed(args.device, fn), strict=True), tokens=tokens)
        except Exception as err:
            rows[name] = {"error": f"{type(err).__name__}: {err}"[:1000]}
            print(f"{name} failed: {rows[name]['error']}")
            if cuda:
                torch.cuda.empty_cache()
        if args.out:  # after every part: a run cut short keeps what it measured
            Path(args.out).write_text(json.dumps({"setup": about, "parts": derived(rows)}, indent=1))

    measure("load", lambda: checkpoint.bridge, 0)
    checkpoint.unload()
    if "forward" in parts:
        tokenizer = checkpoint.tokenizer
        ids = [encode(tokenizer, text, pos) for text in data.texts]
        assert all(len(i) == pos for i in ids), "a document shorter than the context"
        batches = [pad(ids[i : i + args.batch_size], tokenizer.pad_token_id) for i in range(0, n, args.batch_size)]
        model = LlamaForCausalLM.from_pretrained(root / "model", dtype=dtype).to(args.device).eval()
        for implementation in ("sdpa", "eager"):
            model.set_attn_implementation(implementation)

            def forward(batches=batches) -> None:
                with torch.no_grad():
                    for tokens_, mask in batches:
                        model(tokens_.to(args.device), attention_mask=mask.long().to(args.device), use_cache=False).logits  # noqa: B018

            forward(batches[:1])  # warm-up: kernels, allocator
            measure(f"forward_{implementation}", forward, n * pos)
        del model
        if cuda:
            torch.cuda.empty_cache()
    for name in [p for p in ANALYSES if p in parts]:
        measure(name, lambda name=name: analyze_one(checkpoint, name, inputs, options, root / f"results-{name}", args.batch_size),
                tokens[name])

    print("\n| part | seconds | tokens | tokens/s | peak GiB | x SDPA forward |\n|---|---|---|---|---|---|")
    for name, r in derived(rows).items():
        cells = [r["error"]] if "error" in r else [f"{r['seconds']:.2f}", str(r["tokens"] or ""), *(
            f"{r[k]:{f}}" if r[k] is not None else "" for k, f in (("tokens_per_s", ",.0f"), ("peak_gib", ".2f"), ("ratio", ".2f")))]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("(analyses: plastiscope.analyze, seconds include one load; tokens/s and the ratio do not)")
    if any("error" in r for r in rows.values()):
        raise SystemExit(1)


def derived(rows: dict[str, dict]) -> dict[str, dict]:
    """``rows`` with tokens/s and the ratio to the SDPA forward's time for as many tokens; an analysis's time less one load."""
    load, sdpa = rows.get("load", {}).get("seconds", 0.0), rows.get("forward_sdpa", {})
    out = {}
    for name, row in rows.items():
        out[name] = row = dict(row)
        if "error" in row:
            continue
        net = row["seconds"] - (load if name in ANALYSES else 0.0)
        row["tokens_per_s"] = row["tokens"] / net if row["tokens"] else None
        row["ratio"] = net * sdpa["tokens"] / (sdpa["seconds"] * row["tokens"]) if row["tokens"] and "seconds" in sdpa else None
    return out


def analyze_one(checkpoint, name: str, inputs, options: dict, out: Path, batch_size: int) -> None:
    """One analysis through the public driver (``plastiscope.analyze``); its failure raises with the driver's message."""
    _, failures = plastiscope.analyze(checkpoint, out, [get_analysis(name)], inputs, {k: v for k, v in options.items() if k == name},
                                      batch_size=batch_size, progress=False)
    if len(failures):
        raise RuntimeError(f"{failures.to_dict('records')}")


if __name__ == "__main__":
    main()
