"""Streaming: padding never reaches a metric, only requested hooks are kept, early stop works."""

from __future__ import annotations

import pytest
import torch

from plastiscope.activations import run_pass, stream


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


def test_run_pass_feeds_every_consumer_from_one_pass(tiny_sweep, probe_docs, monkeypatch):
    class Counter:
        def __init__(self, names, logits):
            self.names, self.needs_logits, self.docs = names, logits, 0

        def update(self, batch):
            assert set(self.names) <= set(batch.activations)
            assert (batch.logits is not None) or not self.needs_logits
            self.docs += len(batch.doc_index)

    ckpt = tiny_sweep[0]
    calls = []
    original = type(ckpt.bridge).run_with_cache
    monkeypatch.setattr(type(ckpt.bridge), "run_with_cache", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    a, b = Counter(["blocks.0.hook_resid_post"], False), Counter(["blocks.1.attn.hook_pattern"], True)
    run_pass(ckpt, probe_docs.subset(range(20)), [a, b], batch_size=10, progress=False)
    assert a.docs == b.docs == 20 and len(calls) == 2  # two batches, one forward each, shared


def test_reduced_precision_forward_gives_float32_statistics(tiny_manifest, probe_docs):
    from plastiscope import Sweep

    full, half = Sweep.from_manifest(tiny_manifest)[2], Sweep.from_manifest(tiny_manifest)[2].to(device="auto", dtype="bfloat16")
    assert half.device == "cpu" and half.dtype == torch.bfloat16
    name = "blocks.1.hook_resid_post"
    (a,) = stream(full, probe_docs.subset(range(4)), [name], batch_size=4, return_logits=True, progress=False)
    (b,) = stream(half, probe_docs.subset(range(4)), [name], batch_size=4, return_logits=True, progress=False)
    assert next(half.hf_model.parameters()).dtype == torch.bfloat16
    assert b.activations[name].dtype == torch.float32 and b.logits.dtype == torch.float32
    real = a.mask
    rel = (a.activations[name][real] - b.activations[name][real]).norm() / a.activations[name][real].norm()
    assert 0 < rel < 0.05  # bfloat16 rounding, not garbage
    with pytest.raises(ValueError, match="dtype 'float8': choose from float32, bfloat16, float16"):
        full.to(dtype="float8")
