"""The shared pass: activations handed over layer by layer inside the forward, padding never reaches a
metric, one forward feeds every consumer, a failing consumer fails alone, memory flat in the number of layers."""

from __future__ import annotations

import contextlib
import functools
import json
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import pytest
import torch

from plastiscope.activations import LOGITS, run_pass, stream


def test_padding_does_not_change_activations(tiny_sweep, probe_docs):
    ckpt = tiny_sweep[1]
    names = ["blocks.1.hook_resid_post", "blocks.0.attn.hook_pattern"]
    docs = probe_docs.subset(range(12))
    batched = {}
    for batch in stream(ckpt, docs, names, batch_size=6, progress=False):
        for row, doc in enumerate(batch.doc_index.tolist()):
            n = int(batch.mask[row].sum())
            batched[doc] = {k: v[row] for k, v in batch.activations.items()}, n
    for doc in range(12):
        (alone,) = stream(ckpt, docs.subset([doc]), names, batch_size=1, progress=False)
        acts, n = batched[doc]
        assert alone.tokens.shape[1] == n
        torch.testing.assert_close(acts["blocks.1.hook_resid_post"][:n], alone.activations["blocks.1.hook_resid_post"][0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(acts["blocks.0.attn.hook_pattern"][:, :n, :n], alone.activations["blocks.0.attn.hook_pattern"][0], atol=1e-5, rtol=1e-4)


def test_only_requested_hooks_and_doc_index(tiny_sweep, probe_docs):
    docs = probe_docs.subset(range(10))
    seen = []
    for batch in stream(tiny_sweep[0], docs, ["blocks.0.hook_resid_post"], batch_size=4, progress=False):
        assert list(batch.activations) == ["blocks.0.hook_resid_post"] and batch.logits is None
        seen += batch.doc_index.tolist()
        lengths = batch.mask.sum(1).tolist()
        assert lengths == sorted(lengths, reverse=True)
    assert sorted(seen) == list(range(10))


def test_max_tokens_stops_early(tiny_sweep, probe_docs):
    batches = list(stream(tiny_sweep[0], probe_docs, [], batch_size=4, max_tokens=30, progress=False))
    assert len(batches) == 1


def test_unknown_hook_names_the_vocabulary(tiny_sweep):
    with pytest.raises(KeyError, match="hook names look like 'blocks.0.hook_resid_post'"):
        next(stream(tiny_sweep[0], ["x"], ["blocks.0.resid_post"], progress=False))
    with pytest.raises(KeyError, match="no hook point"):
        run_pass(tiny_sweep[0], ["x"], [Recorder(["blocks.9.hook_resid_post"])], progress=False)


class Recorder:
    """Records, for every value it reads, the name, the batch's documents and whether the forward was still running."""

    def __init__(self, names):
        self.names = list(names)
        self.calls, self.values = [], {}

    def read(self, batch, name, value):
        self.calls.append((name, tuple(batch.doc_index.tolist()), FORWARD_RUNNING[0]))
        for row, doc in enumerate(batch.doc_index.tolist()):
            n = int(batch.mask[row].sum())
            self.values[name, doc] = value[row, :n].float().clone() if value.ndim == 3 else value[row, :, :n, :n].float().clone()


FORWARD_RUNNING = [False]


def test_one_forward_per_batch_feeds_every_consumer_layer_by_layer(tiny_sweep, probe_docs, monkeypatch):
    """Hook-time delivery: activations arrive while the model's forward runs, in layer order, one forward
    per batch shared by every consumer; logits arrive after it; the values are the model's own."""
    ckpt = tiny_sweep[0]
    model = ckpt.hf_model
    original = type(model).forward
    forwards = []

    @functools.wraps(original)  # keeps the signature: the pass asks it whether logits_to_keep is accepted
    def forward(self, *args, **kwargs):
        forwards.append(kwargs.get("logits_to_keep"))
        FORWARD_RUNNING[0] = True
        try:
            return original(self, *args, **kwargs)
        finally:
            FORWARD_RUNNING[0] = False

    monkeypatch.setattr(type(model), "forward", forward)
    docs = probe_docs.subset(range(20))
    resid = Recorder(["blocks.1.hook_resid_post", "blocks.0.hook_resid_post"])
    patterns = Recorder(["blocks.1.attn.hook_pattern"])
    run_pass(ckpt, docs, [resid, patterns], batch_size=10, progress=False)
    assert forwards == [1, 1]  # two batches, one forward each; no consumer reads logits: last position unembedded only
    assert all(running for _, _, running in resid.calls + patterns.calls)
    batches = list(dict.fromkeys(docs for _, docs, _ in resid.calls))
    assert len(batches) == 2 and sorted(sum(batches, ())) == list(range(20))
    assert [name for name, _, _ in resid.calls] == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"] * 2  # model order

    logits = Recorder([LOGITS])
    forwards.clear()
    run_pass(ckpt, docs, [logits], batch_size=10, progress=False)
    assert forwards == [None, None] and not any(running for _, _, running in logits.calls)

    # independent reference: transformers' own hidden states, attentions and logits of each document alone
    from transformers import AutoModelForCausalLM

    from plastiscope.data import encode

    model = AutoModelForCausalLM.from_pretrained(ckpt.path, attn_implementation="eager").eval()
    for doc, text in enumerate(docs.texts):
        ids = torch.tensor([encode(ckpt.tokenizer, text, ckpt.n_ctx)])
        with torch.no_grad():
            out = model(ids, output_hidden_states=True, output_attentions=True)
        torch.testing.assert_close(resid.values["blocks.0.hook_resid_post", doc], out.hidden_states[1][0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(patterns.values["blocks.1.attn.hook_pattern", doc], out.attentions[1][0], atol=1e-5, rtol=1e-4)
        n = ids.shape[1]
        torch.testing.assert_close(logits.values[LOGITS, doc][:n], out.logits[0], atol=1e-4, rtol=1e-4)


class Fails:
    """A consumer that raises on its second read."""

    def __init__(self, name):
        self.names, self.reads = [name], 0

    def read(self, batch, name, value):
        self.reads += 1
        if self.reads == 2:
            raise RuntimeError("consumer bug")


def test_a_failing_consumer_stops_alone(tiny_sweep, probe_docs):
    docs = probe_docs.subset(range(30))
    good, bad = Recorder(["blocks.0.hook_resid_post"]), Fails("blocks.0.hook_resid_post")
    errors = run_pass(tiny_sweep[0], docs, [bad, good], batch_size=10, progress=False, isolate=True)
    assert list(errors) == [0] and str(errors[0]) == "consumer bug"
    assert bad.reads == 2 and len(good.calls) == 3  # the bad one was not fed after its error
    with pytest.raises(RuntimeError, match="consumer bug"):
        run_pass(tiny_sweep[0], docs, [Fails("blocks.0.hook_resid_post")], batch_size=10, progress=False)


def test_a_failing_analysis_does_not_fail_the_others_of_the_checkpoint(tiny_sweep, probe_docs):
    """A consumer that raises inside the shared pass beside the real attention analysis: the attention rows
    are those of a run without it, the broken analysis is reported failed for every checkpoint."""
    from plastiscope.options import OptionTable
    from plastiscope.runner import Analysis, Inputs, run_analyses

    class BrokenTask:
        def __init__(self, checkpoint, inputs, options, memo):
            self.passes = {"data": [Fails("blocks.1.attn.hook_pattern")]}

        def finish(self):
            raise AssertionError("finish must not run after the pass failed")

    broken = Analysis("broken", ("data",), BrokenTask, OptionTable({}))
    inputs = Inputs(data=probe_docs.subset(range(12)))
    options = {"attention": {"n_resamples": 50}}
    alone, _ = run_analyses(tiny_sweep[:2], ["attention"], inputs, options, batch_size=4, progress=False)
    both, failures = run_analyses(tiny_sweep[:2], ["attention", broken], inputs, options, batch_size=4, progress=False)
    assert failures["analysis"].tolist() == ["broken", "broken"]
    assert failures["checkpoint"].tolist() == [c.name for c in tiny_sweep[:2]]
    assert failures["error"].str.fullmatch("RuntimeError: consumer bug").all()
    assert len(alone) == 2 * 2 * 4 * 11 and both["analysis"].eq("attention").all()
    key = ["checkpoint", "metric", "layer", "head"]
    a, b = alone.sort_values(key).reset_index(drop=True), both.sort_values(key).reset_index(drop=True)
    torch.testing.assert_close(torch.tensor(b["value"].to_numpy()), torch.tensor(a["value"].to_numpy()), rtol=0, atol=0)


class Live:
    """For every value read, counts the earlier-read activations whose memory is still alive (weak
    references to their storage: a cached copy or view of them would keep it alive)."""

    def __init__(self, layers):
        self.names = [n for l in range(layers) for n in (f"blocks.{l}.attn.hook_pattern", f"blocks.{l}.hook_resid_post")]
        self.refs, self.alive = [], []

    def read(self, batch, name, value):
        kind = name.rsplit(".", 1)[-1]
        self.alive.append((kind, sum(k == kind and ref() is not None for k, ref in self.refs)))
        self.refs.append((kind, weakref.ref(value.untyped_storage())))


@pytest.mark.parametrize("layers", [2, 8])
def test_earlier_layers_are_freed_before_later_layers_are_read(probe_docs, layers):
    """Instrumented count of live activations: when a layer's pattern is read, no earlier pattern (of this
    batch or an earlier one) is alive anywhere; of the residual stream only the block's input is."""
    from tests_support import tiny_llama

    live = Live(layers)
    run_pass(tiny_llama(layers), probe_docs.subset(range(8)), [live], batch_size=4, progress=False)
    assert len(live.alive) == 2 * 2 * layers
    assert max(n for kind, n in live.alive if kind == "hook_pattern") == 0, live.alive
    assert max(n for kind, n in live.alive if kind == "hook_resid_post") <= 1, live.alive


PEAK_CHILD = textwrap.dedent("""
    import json, sys, torch
    torch.set_num_threads(1)
    sys.path.insert(0, sys.argv[2])
    from tests_support import tiny_llama, peak_rss_during
    from plastiscope.activations import run_pass
    layers = int(sys.argv[1])
    ckpt = tiny_llama(layers, heads=8, context=512)
    _ = ckpt.bridge
    docs = [" ".join(["word"] * 600)] * 4  # 4 documents of 512 tokens: 8.4 MB of patterns per layer
    class Reads:
        names = [f"blocks.{l}.attn.hook_pattern" for l in range(layers)] + [f"blocks.{l}.hook_resid_post" for l in range(layers)]
        def read(self, batch, name, value):
            pass
    run_pass(ckpt, docs[:1], [Reads()], batch_size=4, progress=False)  # warm up
    print(json.dumps({"growth": peak_rss_during(lambda: run_pass(ckpt, docs, [Reads()], batch_size=4, progress=False))}))
""")


def test_peak_memory_does_not_grow_with_layers():
    """Peak resident memory of a pass reading every layer's pattern and residual stream, in fresh
    processes: 8 layers against 2 (caching a batch's layers would make it ~2x)."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak resident memory")
    here = str(Path(__file__).parent)
    def growth_of(layers: int) -> int:
        out = subprocess.run([sys.executable, "-c", PEAK_CHILD, str(layers), here], capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])["growth"]

    # the least of two fresh processes: an allocator's occasional spike is not the pass's memory,
    # while caching layers would add its 50 MB to every run
    growth = {layers: min(growth_of(layers) for _ in range(2)) for layers in (2, 8)}
    pattern_bytes = 4 * 8 * 512 * 512 * 4
    assert growth[2] > pattern_bytes  # the forward's own transients are measured at all
    assert growth[8] < 1.3 * growth[2], growth  # caching 8 layers would add 6 more patterns (+50 MB)


def test_reduced_precision_forward_gives_float32_statistics(tiny_manifest, probe_docs):
    from plastiscope import Sweep
    from plastiscope.overfit.losses import DocumentLosses

    full, half = Sweep.from_manifest(tiny_manifest)[2], Sweep.from_manifest(tiny_manifest)[2].to(device="auto", dtype="bfloat16")
    assert half.device == "cpu" and half.dtype == torch.bfloat16
    name = "blocks.1.hook_resid_post"
    docs = probe_docs.subset(range(4))
    (a,) = stream(full, docs, [name], batch_size=4, return_logits=True, progress=False)
    (b,) = stream(half, docs, [name], batch_size=4, return_logits=True, progress=False)
    assert next(half.hf_model.parameters()).dtype == torch.bfloat16
    assert b.activations[name].dtype == torch.float32 and b.logits.dtype == torch.bfloat16  # logits never copied to float32
    real = a.mask
    rel = (a.activations[name][real] - b.activations[name][real]).norm() / a.activations[name][real].norm()
    assert 0 < rel < 0.05  # bfloat16 rounding, not garbage
    losses = {}
    for ckpt in (full, half):
        consumer = DocumentLosses(len(docs), [47])
        run_pass(ckpt, docs, [consumer], progress=False)
        losses[ckpt.dtype] = consumer.mean_loss
    assert losses[torch.bfloat16].dtype == "float64"
    diff = abs(losses[torch.bfloat16] - losses[torch.float32])
    assert 0 < diff.max() < 0.05  # nats: the inputs are rounded, the arithmetic is float32
    with pytest.raises(ValueError, match="dtype 'float8': choose from float32, bfloat16, float16"):
        full.to(dtype="float8")


# ---------------------------------------------------------------------- SDPA unless a pattern is read
class CountsSDPA:
    """Counts calls of torch's fused scaled-dot-product attention (monkeypatched in for a test)."""

    def __init__(self, monkeypatch):
        self.calls, original = 0, torch.nn.functional.scaled_dot_product_attention

        def counted(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox", "olmo2", "gemma2", "mistral"])
def test_a_pass_that_reads_no_pattern_runs_sdpa_with_the_eager_numbers(arch, tiny_model, monkeypatch):
    """Residual stream and logits of the SDPA pass equal those of the bridge's eager attention (the pass that also
    reads a pattern); SDPA ran only in the first (Gemma 2's softcapping runs the exact softmax instead); afterwards
    the bridge's attention is back in every layer and the model on eager attention."""
    from tests_support import tokenizer
    from transformer_lens.model_bridge.generalized_components import AttentionBridge

    from plastiscope import Checkpoint

    tok = tokenizer()
    ckpt = Checkpoint.from_model(tiny_model(arch, len(tok)), tok, weight_decay=0.0, name=arch)
    docs = ["the cat sat on the mat while the dog slept in the sun all day", "a short one", "words words words and more words"]
    names = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"]
    sdpa = CountsSDPA(monkeypatch)
    native = list(stream(ckpt, docs, names, batch_size=2, return_logits=True, progress=False))
    assert (sdpa.calls == 0) == (arch == "gemma2") and sdpa.calls in (0, 2 * len(native))
    sdpa.calls = 0
    eager = list(stream(ckpt, docs, names + ["blocks.0.attn.hook_pattern"], batch_size=2, return_logits=True, progress=False))
    assert sdpa.calls == 0
    for a, b in zip(native, eager):
        real = a.mask
        for name in names:
            torch.testing.assert_close(a.activations[name][real], b.activations[name][real], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.logits[real], b.logits[real], atol=1e-5, rtol=1e-5)
    assert all(isinstance(block.attn, AttentionBridge) for block in ckpt.bridge.blocks)
    layers = [m for m in ckpt.hf_model.modules() if type(m).__name__.endswith(("DecoderLayer", "Block", "Layer"))]
    assert layers and all(any(isinstance(c, AttentionBridge) for c in layer.children()) for layer in layers)


def test_probes_and_overfit_give_the_eager_numbers(tiny_sweep, monkeypatch):
    """probes (features of the residual stream, the random-init baseline's too) and overfit (per-document losses
    from the logits) under SDPA equal the same analyses with every pass forced onto the bridge's eager attention."""
    from conftest import SMALL_OPTIONS

    import plastiscope.activations as activations
    import plastiscope.overfit.memorization as memorization
    from plastiscope.demo.corpus import load_corpus
    from plastiscope.runner import Inputs, run_analyses

    inputs = Inputs(data=load_corpus("probe", 60), train_data=load_corpus("train", 200).head(24),
                    val_data=load_corpus("validation", 164).subset(range(100, 124)))
    options = {name: SMALL_OPTIONS[name] for name in ("probes", "overfit")}
    sdpa = CountsSDPA(monkeypatch)
    fast, failures = run_analyses(tiny_sweep[:1], ["probes", "overfit"], inputs, options, batch_size=8, progress=False)
    assert failures.empty, failures.to_dict("records")
    assert sdpa.calls > 0
    monkeypatch.setattr(activations, "reads_attention_internals", lambda bridge, names: True)
    monkeypatch.setattr(memorization, "native_attention", lambda model: contextlib.nullcontext())  # its teacher-forced pass too
    sdpa.calls = 0
    eager, failures = run_analyses(tiny_sweep[:1], ["probes", "overfit"], inputs, options, batch_size=8, progress=False)
    assert failures.empty and sdpa.calls == 0
    key = [c for c in fast.columns if c not in ("value", "ci_low", "ci_high", "n") and fast[c].notna().any()]
    fast, eager = fast.sort_values(key).reset_index(drop=True), eager.sort_values(key).reset_index(drop=True)
    assert len(fast) == len(eager) and set(fast.analysis) == {"probes", "overfit"}
    for column in ("value", "ci_low", "ci_high"):
        torch.testing.assert_close(torch.tensor(fast[column].to_numpy(dtype=float)), torch.tensor(eager[column].to_numpy(dtype=float)),
                                   rtol=1e-4, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox", "olmo2", "gemma2", "mistral"])
def test_keys_each_row_may_attend_to_come_from_the_layers_mask(arch, tiny_model):
    """``blocks.{l}.attn.keys``: i + 1 under full causal attention, min(i + 1, 4) on a sliding window of 4 keys (every
    Mistral layer, Gemma 2's even layers), the same from the SDPA pass and from the eager pass beside a pattern."""
    from tests_support import tokenizer

    from plastiscope import Checkpoint
    from plastiscope.activations import attention_keys_name

    tok = tokenizer()
    ckpt = Checkpoint.from_model(tiny_model(arch, len(tok)), tok, weight_decay=0.0, name=arch)
    docs = ["the cat sat on the mat while the dog slept in the sun", "a short one"]
    names = [attention_keys_name(0), attention_keys_name(1)]
    (native,) = stream(ckpt, docs, names, progress=False)
    (eager,) = stream(ckpt, docs, names + ["blocks.0.attn.hook_pattern"], progress=False)
    for layer, name in enumerate(names):
        windowed = arch == "mistral" or (arch == "gemma2" and layer % 2 == 0)
        for batch in (native, eager):
            for row in range(2):
                n = int(batch.mask[row].sum())
                i = torch.arange(n)
                expected = torch.minimum(i + 1, torch.tensor(4)) if windowed else i + 1
                assert torch.equal(batch.activations[name][row, :n], expected), (arch, layer, row)
