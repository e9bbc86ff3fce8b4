"""attention/: pattern and weight statistics against numpy/scipy references and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from plastiscope import Checkpoint, load_documents
from plastiscope.activations import Batch, feed, run_pass
from plastiscope.attention import (
    ANALYSIS,
    PATTERN_METRICS,
    WEIGHT_METRICS,
    WEIGHTS_ANALYSIS,
    PatternStatistics,
    attention,
    attention_weights,
    pattern_statistics,
    spectral_summary,
    summarize,
    weight_statistics,
)
from plastiscope.attention.weights import layer_weights
from plastiscope.data import encode
from plastiscope.results import CORE_COLUMNS, ID_COLUMNS
from plastiscope.runner import Inputs, run_analyses

TOL = 1e-2


# ---------------------------------------------------------------------- references
def reference_stats(A: np.ndarray, tol: float = TOL, threshold: float = 0.9) -> dict[str, float]:
    """Every pattern metric of one real [n, n] pattern, one head, by numpy/scipy (float64)."""
    A = np.asarray(A, dtype=np.float64)
    n = A.shape[0]
    rows = np.arange(n)
    H = np.array([scipy.stats.entropy(A[i][A[i] > 0]) if A[i].sum() > 0 else 0.0 for i in rows])
    s = np.linalg.svd(A, compute_uv=False)
    spectral = np.linalg.norm(A, 2)
    return {
        "entropy": H.mean(),
        "entropy_normalized": np.mean(H[1:] / np.log(rows[1:] + 1)) if n > 1 else np.nan,
        "effective_rank": np.exp(scipy.stats.entropy(s[s > 0])),
        "stable_rank": np.linalg.norm(A, "fro") ** 2 / spectral**2,
        "numerical_rank": np.linalg.matrix_rank(A, tol=tol * spectral),
        "frobenius_norm": np.linalg.norm(A, "fro"),
        "spectral_norm": spectral,
        "nuclear_norm": np.linalg.norm(A, "nuc"),
        "sink_share": A[:, 0].mean(),
        "mean_distance": np.mean([(A[i] * (i - rows)).sum() for i in rows]),
        "one_hot_share": np.mean(A.max(axis=1) > threshold),
    }


def causal_softmax(n: int, heads: int, generator: torch.Generator, scale: float = 2.0) -> torch.Tensor:
    """Random causal attention patterns [heads, n, n]."""
    scores = torch.randn(heads, n, n, generator=generator, dtype=torch.float64) * scale
    scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), -math.inf)
    return scores.softmax(-1)


def pad_batch(patterns: list[torch.Tensor], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad [head, n_i, n_i] patterns into [batch, head, pos, pos]; padded rows get junk (softmax over all keys)."""
    heads, pos = patterns[0].shape[0], max(p.shape[-1] for p in patterns)
    batch = torch.randn(len(patterns), heads, pos, pos, generator=generator, dtype=torch.float64).softmax(-1)
    mask = torch.zeros(len(patterns), pos, dtype=torch.bool)
    for b, p in enumerate(patterns):
        n = p.shape[-1]
        batch[b, :, :n, :] = 0.0
        batch[b, :, :n, :n] = p
        mask[b, :n] = True
    return batch.float(), mask


def stats_of(A: torch.Tensor, **kwargs) -> dict[str, float]:
    """pattern_statistics of one unpadded [n, n] pattern, one head."""
    out = pattern_statistics(A[None, None].float(), torch.ones(1, A.shape[-1], dtype=torch.bool), **kwargs)
    return {k: float(v[0, 0]) for k, v in out.items()}


# ---------------------------------------------------------------------- hand-made patterns
def test_uniform_causal_attention_has_entropy_log_i_plus_1():
    n = 20
    A = torch.ones(n, n).tril()
    A = A / A.sum(-1, keepdim=True)
    out = stats_of(A)
    rows = np.arange(n)
    assert out["entropy"] == pytest.approx(np.mean(np.log(rows + 1)), rel=1e-5)
    assert out["entropy_normalized"] == pytest.approx(1.0, rel=1e-5)
    assert out["sink_share"] == pytest.approx(np.mean(1 / (rows + 1)), rel=1e-5)
    assert out["mean_distance"] == pytest.approx(np.mean(rows / 2), rel=1e-5)  # mean of 0..i is i/2
    assert out["one_hot_share"] == pytest.approx(1 / n)  # only row 0
    ref = reference_stats(A.numpy())
    for metric in PATTERN_METRICS:
        assert out[metric] == pytest.approx(ref[metric], rel=1e-4, abs=1e-6), metric


def test_one_hot_rows_have_zero_entropy_and_known_spectra():
    n = 12
    identity = torch.eye(n)
    out = stats_of(identity)
    assert out["entropy"] == 0 and out["entropy_normalized"] == 0 and out["one_hot_share"] == 1
    assert out["effective_rank"] == pytest.approx(n) and out["stable_rank"] == pytest.approx(n)
    assert out["numerical_rank"] == n and out["nuclear_norm"] == pytest.approx(n)
    assert out["frobenius_norm"] == pytest.approx(math.sqrt(n)) and out["spectral_norm"] == pytest.approx(1)
    assert out["mean_distance"] == 0 and out["sink_share"] == pytest.approx(1 / n)

    sink = torch.zeros(n, n)
    sink[:, 0] = 1  # every row on BOS: rank one
    out = stats_of(sink)
    assert out["entropy"] == 0 and out["sink_share"] == 1 and out["one_hot_share"] == 1
    assert out["effective_rank"] == pytest.approx(1) and out["numerical_rank"] == 1
    assert out["stable_rank"] == pytest.approx(1) and out["spectral_norm"] == pytest.approx(math.sqrt(n))
    assert out["mean_distance"] == pytest.approx((n - 1) / 2)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_rank_k_pattern_has_numerical_rank_k(k):
    g = torch.Generator().manual_seed(k)
    n = 16
    A = causal_softmax(n, 1, g)[0]
    # rows from k on attend only to the first k keys, all with the same distribution: rank k
    A[k:] = 0
    A[k:, :k] = torch.rand(k, generator=g, dtype=torch.float64).softmax(-1) + 0.1
    A[k:] /= A[k:].sum(-1, keepdim=True)
    assert np.linalg.matrix_rank(A.numpy()) == k
    out = stats_of(A)
    assert out["numerical_rank"] == k
    ref = reference_stats(A.numpy())
    for metric in PATTERN_METRICS:
        assert out[metric] == pytest.approx(ref[metric], rel=1e-4, abs=1e-6), metric


def test_numerical_rank_follows_tol():
    s = torch.tensor([[1.0, 0.5, 0.05, 0.005, 0.0]])
    assert spectral_summary(s, tol=0.1)["numerical_rank"].item() == 2
    assert spectral_summary(s, tol=0.01)["numerical_rank"].item() == 3
    assert spectral_summary(s, tol=0.001)["numerical_rank"].item() == 4
    p = np.array([1.0, 0.5, 0.05, 0.005]) / 1.555
    assert spectral_summary(s)["effective_rank"].item() == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    zero = spectral_summary(torch.zeros(1, 3))
    assert math.isnan(zero["effective_rank"].item()) and zero["numerical_rank"].item() == 0


def test_random_patterns_match_numpy_and_padding_changes_nothing():
    g = torch.Generator().manual_seed(0)
    lengths = [9, 1, 17, 4, 17]
    heads = 3
    docs = [causal_softmax(n, heads, g, scale=3.0) for n in lengths]
    pattern, mask = pad_batch(docs, g)
    batched = pattern_statistics(pattern, mask, tol=TOL)
    for b, doc in enumerate(docs):
        alone = pattern_statistics(doc[None].float(), torch.ones(1, lengths[b], dtype=torch.bool), tol=TOL)
        for h in range(heads):
            ref = reference_stats(doc[h].numpy())
            for metric in PATTERN_METRICS:
                got, single = float(batched[metric][b, h]), float(alone[metric][0, h])
                if np.isnan(ref[metric]):
                    assert np.isnan(got) and np.isnan(single), (metric, b, h)
                    continue
                assert got == pytest.approx(ref[metric], rel=1e-4, abs=1e-5), (metric, b, h)
                assert got == pytest.approx(single, rel=1e-5, abs=1e-6), (metric, b, h)


def test_invalid_inputs_are_named():
    A = torch.ones(1, 1, 4, 4).tril() / torch.arange(1, 5).view(4, 1)
    with pytest.raises(ValueError, match="right-padded"):
        pattern_statistics(A, torch.tensor([[True, False, True, True]]))
    with pytest.raises(ValueError, match="above the diagonal"):
        pattern_statistics(torch.full((1, 1, 4, 4), 0.25), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="disagree"):
        pattern_statistics(A, torch.ones(1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="non-finite"):
        pattern_statistics(A * math.nan, torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="tol"):
        pattern_statistics(A, torch.ones(1, 4, dtype=torch.bool), tol=0)


# ---------------------------------------------------------------------- spectra of the first tokens, cost
SPECTRAL = ("effective_rank", "stable_rank", "numerical_rank", "spectral_norm", "nuclear_norm")


def reference_truncated(A: np.ndarray, L: int | None) -> dict[str, float]:
    """The documented quantities: spectral metrics of the leading [L, L] block, everything else of the whole pattern."""
    whole = reference_stats(A)
    if L is not None:
        whole.update({m: v for m, v in reference_stats(A[:L, :L]).items() if m in SPECTRAL})
    return whole


def assert_matches(got: dict[str, float], ref: dict[str, float], where) -> None:
    for metric in PATTERN_METRICS:
        if np.isnan(ref[metric]):
            assert np.isnan(got[metric]), (metric, where)
        else:
            assert got[metric] == pytest.approx(ref[metric], rel=2e-5, abs=1e-5), (metric, where)


@pytest.mark.parametrize("L", [1, 7, 16, None])
def test_spectra_of_the_first_tokens_on_hand_made_patterns(L):
    """Flat spectra (diagonal-heavy heads, where low-rank estimates fail), low rank (sink) and random causal
    patterns: spectral metrics equal numpy's exact SVD of the leading block, the rest numpy's on the whole pattern."""
    g = torch.Generator().manual_seed(4)
    n = 40
    diagonal = 0.9 * torch.eye(n, dtype=torch.float64) + 0.1 * torch.ones(n, n, dtype=torch.float64).tril() / torch.arange(1, n + 1).view(n, 1)
    sink = torch.zeros(n, n, dtype=torch.float64)
    sink[:, 0] = 1
    patterns = torch.stack([diagonal, sink, causal_softmax(n, 1, g)[0], causal_softmax(n, 1, g, scale=0.1)[0]])
    got = pattern_statistics(patterns[None].float(), torch.ones(1, n, dtype=torch.bool), spectral_tokens=L)
    for h, A in enumerate(patterns.numpy()):
        assert_matches({m: float(v[0, h]) for m, v in got.items()}, reference_truncated(A, L), (L, h))
    if L == 16:  # the flat head's ranks really are those of 16 tokens, not of 40
        assert float(got["numerical_rank"][0, 0]) == 16 and float(got["frobenius_norm"][0, 0]) == pytest.approx(np.linalg.norm(diagonal))


def test_spectra_of_the_first_tokens_on_a_trained_model(tiny_sweep, probe_docs):
    """Real patterns of a trained model, padded batches: every metric against numpy on each document's own
    pattern; the leading block is the pattern of the document truncated to its first L tokens (causality)."""
    from plastiscope.activations import stream

    ckpt, L = tiny_sweep[2], 12
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(2)]
    seen = 0
    for batch in stream(ckpt, probe_docs.subset(range(10)), names, batch_size=5, progress=False):
        for name in names:
            got = pattern_statistics(batch.activations[name], batch.mask, spectral_tokens=L)
            for b in range(len(batch.doc_index)):
                n = int(batch.mask[b].sum())
                assert n > L  # truncation is exercised
                with torch.no_grad():
                    _, cache = ckpt.bridge.run_with_cache(batch.tokens[b : b + 1, :L], names_filter=name)
                for h in range(ckpt.n_heads):
                    A = batch.activations[name][b, h, :n, :n].double().numpy()
                    np.testing.assert_allclose(A[:L, :L], cache[name][0, h].double().numpy(), atol=1e-6)
                    assert_matches({m: float(v[b, h]) for m, v in got.items()}, reference_truncated(A, L), (name, b, h))
                    seen += 1
    assert seen == 10 * 2 * ckpt.n_heads


def test_bfloat16_patterns_give_the_float32_statistics_of_their_values():
    g = torch.Generator().manual_seed(5)
    docs = [causal_softmax(n, 3, g) for n in (30, 12)]
    pattern, mask = pad_batch(docs, g)
    half = pattern.bfloat16()
    got = pattern_statistics(half, mask, spectral_tokens=8)
    same = pattern_statistics(half.float(), mask, spectral_tokens=8)
    for metric in PATTERN_METRICS:
        assert got[metric].dtype == torch.float64
        torch.testing.assert_close(got[metric], same[metric], rtol=1e-6, atol=1e-7, equal_nan=True)


class LargestOutput(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the largest floating-point tensor any torch operation creates (views of ``inputs`` left out)."""

    def __init__(self, *inputs):
        super().__init__()
        self.inputs = {t.untyped_storage().data_ptr() for t in inputs}
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.untyped_storage().data_ptr() not in self.inputs:
                self.largest = max(self.largest, t.numel())
        return out


def test_statistics_make_no_pattern_sized_temporaries():
    """Every temporary stays under 1/16 of the batch's pattern (a mask product or a float32 copy would not)."""
    g = torch.Generator().manual_seed(6)
    docs = [causal_softmax(n, 4, g) for n in (256, 256, 200, 100)]
    pattern, mask = pad_batch(docs, g)
    for p in (pattern, pattern.bfloat16()):
        with LargestOutput(p) as mode:
            pattern_statistics(p, mask, spectral_tokens=128)
        assert 0 < mode.largest <= p.numel() // 16, (p.dtype, mode.largest, p.numel())
        with LargestOutput(p) as mode:
            (p * mask[:, None, :, None]).sum()  # the test can fail: a masked copy is pattern-sized
        assert mode.largest == p.numel()


def test_spectral_tokens_option(tiny_sweep, probe_docs):
    with pytest.raises(ValueError, match="spectral_tokens"):
        attention(tiny_sweep[:1], probe_docs.head(4), spectral_tokens=0, progress=False)
    docs = probe_docs.head(6)
    whole = attention(tiny_sweep[:1], docs, spectral_tokens=None, n_resamples=20, progress=False).set_index(["metric", "layer", "head"]).sort_index()
    short = attention(tiny_sweep[:1], docs, spectral_tokens=4, n_resamples=20, progress=False).set_index(["metric", "layer", "head"]).sort_index()
    for metric in PATTERN_METRICS:
        same = np.allclose(whole.loc[metric, "value"], short.loc[metric, "value"])
        assert same == (metric not in SPECTRAL), metric


# ---------------------------------------------------------------------- streaming
def _batch(patterns: list[torch.Tensor], doc_index: list[int], g: torch.Generator) -> Batch:
    """A Batch of hand-made patterns for two layers (layer 1 = layer 0 squared towards one-hot)."""
    pattern, mask = pad_batch(patterns, g)
    sharper = pattern**4 * mask[:, None, :, None]
    sharper = sharper / sharper.sum(-1, keepdim=True).clamp_min(1e-30)
    causal = torch.arange(1, mask.shape[1] + 1).expand(mask.shape)  # keys each row may attend to
    return Batch(
        tokens=torch.zeros(mask.shape, dtype=torch.long),
        mask=mask,
        doc_index=torch.tensor(doc_index),
        activations={"blocks.0.attn.hook_pattern": pattern, "blocks.1.attn.hook_pattern": sharper,
                     "blocks.0.attn.keys": causal, "blocks.1.attn.keys": causal},
    )


def test_streaming_equals_all_at_once():
    g = torch.Generator().manual_seed(1)
    lengths = [5, 12, 3, 8, 1, 10, 7]
    docs = [causal_softmax(n, 2, g) for n in lengths]
    whole = PatternStatistics(n_layers=2, source="pattern")
    feed(whole, _batch(docs, list(range(len(docs))), torch.Generator().manual_seed(2)))
    streamed = PatternStatistics(n_layers=2, source="pattern")
    for part in ([5, 1], [0, 3, 6], [4, 2]):  # another order and other batches
        feed(streamed, _batch([docs[i] for i in part], part, torch.Generator().manual_seed(3)))
    (idx_a, a), (idx_b, b) = whole.values(), streamed.values()
    assert (idx_a == np.arange(len(docs))).all() and (idx_b == idx_a).all()
    assert a.shape == (len(docs), 2, 2, len(PATTERN_METRICS))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    rec_a, rec_b = summarize(a, n_resamples=200), summarize(b, n_resamples=200)
    for x, y in zip(rec_a, rec_b):
        assert x["metric"] == y["metric"] and x["n"] == y["n"]
        np.testing.assert_allclose([x["value"], x["ci_low"], x["ci_high"]], [y["value"], y["ci_low"], y["ci_high"]], rtol=1e-5, atol=1e-6)
    entropy = [r for r in rec_a if r["metric"] == "entropy" and r["layer"] == 0 and r["head"] == 1][0]
    assert entropy["value"] == pytest.approx(np.mean([reference_stats(d[1].numpy())["entropy"] for d in docs]), rel=1e-5)
    normalized = [r for r in rec_a if r["metric"] == "entropy_normalized"][0]
    assert normalized["n"] == len(docs) - 1  # the one-token document has none


# ---------------------------------------------------------------------- models
@pytest.fixture(scope="module")
def tokenizer():
    from plastiscope.demo.corpus import load_corpus
    from plastiscope.demo.tokenizer import train_tokenizer

    return train_tokenizer(load_corpus("train", 2000).texts, 512)


@pytest.fixture(scope="module")
def gqa_checkpoint(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=len(tokenizer), max_position_embeddings=64, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # sharper attention than the 0.02-std init, so the statistics vary
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(20)
            layer.self_attn.k_proj.weight.mul_(20)
    return Checkpoint.from_model(model, tokenizer, weight_decay=0.1, name="gqa")


@pytest.fixture(scope="module")
def docs():
    from plastiscope.demo.corpus import load_corpus

    texts = load_corpus("probe", 11).texts
    return texts + ["a"]  # a very short document too


def dense_weight_reference(q, k, v, o, n_heads: int, n_kv: int) -> dict[str, np.ndarray]:
    """Per-head weight metrics by numpy from [d_model, heads*d_head]-style (input-major) matrices."""
    d_head = q.shape[1] // n_heads
    out: dict[str, list[float]] = {m: [] for m in WEIGHT_METRICS}
    for h in range(n_heads):
        kv = h // (n_heads // n_kv)  # Hugging Face repeat_kv
        wq, wk = q[:, h * d_head : (h + 1) * d_head], k[:, kv * d_head : (kv + 1) * d_head]
        wv, wo = v[:, kv * d_head : (kv + 1) * d_head], o[h * d_head : (h + 1) * d_head, :]
        for prefix, M in (("qk", wq @ wk.T), ("ov", wv @ wo)):
            s = np.linalg.svd(M, compute_uv=False)
            out[f"{prefix}_frobenius_norm"].append(np.linalg.norm(M, "fro"))
            out[f"{prefix}_spectral_norm"].append(np.linalg.norm(M, 2))
            out[f"{prefix}_nuclear_norm"].append(np.linalg.norm(M, "nuc"))
            out[f"{prefix}_stable_rank"].append(np.linalg.norm(M, "fro") ** 2 / np.linalg.norm(M, 2) ** 2)
            out[f"{prefix}_effective_rank"].append(np.exp(scipy.stats.entropy(s[s > 1e-12 * s[0]])))
        for name, w in (("wq_norm", wq), ("wk_norm", wk), ("wv_norm", wv), ("wo_norm", wo)):
            out[name].append(np.linalg.norm(w))
    return {m: np.array(v) for m, v in out.items()}


def test_gqa_weight_statistics_match_dense_hf_weights(gqa_checkpoint):
    model = gqa_checkpoint.hf_model
    for layer, block in enumerate(model.model.layers):
        a = block.self_attn
        to_np = lambda w: w.detach().double().numpy()  # noqa: E731
        # nn.Linear stores [out, in]: transpose to input-major
        ref = dense_weight_reference(to_np(a.q_proj.weight.T), to_np(a.k_proj.weight.T), to_np(a.v_proj.weight.T), to_np(a.o_proj.weight.T), 4, 2)
        W_Q, W_K, W_V, W_O = layer_weights(gqa_checkpoint.bridge, layer)
        assert W_K.shape[0] == 2  # the bridge keeps one K/V per key-value head
        got = weight_statistics(W_Q, W_K, W_V, W_O)
        for metric in WEIGHT_METRICS:
            np.testing.assert_allclose(got[metric].numpy(), ref[metric], rtol=1e-5, err_msg=metric)
    assert not np.allclose(ref["qk_frobenius_norm"][1], ref["qk_frobenius_norm"][2])  # a wrong kv mapping would show


def test_gpt2_fused_qkv_weight_statistics_match_dense(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=len(tokenizer), n_positions=64,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(1)
    ckpt = Checkpoint.from_model(GPT2LMHeadModel(config).eval(), tokenizer, weight_decay=0.0, name="gpt2")
    attn = ckpt.hf_model.transformer.h[0].attn
    W = attn.c_attn.weight.detach().double().numpy()  # Conv1D: [d_model, 3 d_model], x @ W
    q, k, v = np.split(W, 3, axis=1)
    ref = dense_weight_reference(q, k, v, attn.c_proj.weight.detach().double().numpy(), 4, 4)
    frame = attention_weights(ckpt, progress=False)
    assert set(frame.metric) == set(WEIGHT_METRICS) and len(frame) == 4 * len(WEIGHT_METRICS)
    for metric in WEIGHT_METRICS:
        rows = frame[frame.metric == metric].sort_values("head")
        np.testing.assert_allclose(rows.value.to_numpy(), ref[metric], rtol=1e-5, err_msg=metric)


def test_end_to_end_matches_documents_alone(gqa_checkpoint, docs):
    """run_analyses over padded batches = numpy metrics of each document's own unpadded pattern."""
    results, failures = run_analyses(
        gqa_checkpoint, [ANALYSIS, "attention_weights"], Inputs(data=load_documents(docs)),
        options={"attention": {"n_resamples": 200}}, batch_size=5, progress=False,
    )
    assert failures.empty, failures.to_dict("records")
    assert list(results.columns[:2]) == ID_COLUMNS and list(results.columns[-len(CORE_COLUMNS):]) == CORE_COLUMNS
    patterns = results[results.analysis == "attention"]
    weights = results[results.analysis == "attention_weights"]
    assert len(patterns) == 2 * 4 * len(PATTERN_METRICS) and set(patterns.metric) == set(PATTERN_METRICS)
    assert len(weights) == 2 * 4 * len(WEIGHT_METRICS) and weights.n.isna().all()
    assert (patterns.weight_decay == 0.1).all() and (patterns.checkpoint == "gqa").all()
    ok = patterns.dropna(subset=["ci_low"])
    assert ((ok.ci_low <= ok.value + 1e-9) & (ok.value <= ok.ci_high + 1e-9)).all()
    assert (patterns[patterns.metric == "entropy"].n == len(docs)).all()
    assert (patterns[patterns.metric == "entropy_normalized"].n == len(docs)).all()

    bridge = gqa_checkpoint.bridge
    per_doc = {(layer, head): [] for layer in range(2) for head in range(4)}
    for text in docs:
        tokens = torch.tensor([encode(gqa_checkpoint.tokenizer, text, gqa_checkpoint.n_ctx)])
        with torch.no_grad():
            _, cache = bridge.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
        for layer in range(2):
            for head in range(4):
                per_doc[layer, head].append(reference_stats(cache[f"blocks.{layer}.attn.hook_pattern"][0, head].numpy()))
    for (layer, head), refs in per_doc.items():
        rows = patterns[(patterns.layer == layer) & (patterns["head"] == head)].set_index("metric")
        for metric in PATTERN_METRICS:
            expected = np.nanmean([r[metric] for r in refs])
            assert rows.loc[metric, "value"] == pytest.approx(expected, rel=1e-4, abs=1e-5), (layer, head, metric)
    values = patterns.set_index(["metric", "layer", "head"]).value
    assert values["entropy_normalized"].std() > 0.01  # the model's heads differ: the check above had teeth


def test_api_validates_options_and_runs_the_sweep(tiny_sweep, probe_docs):
    with pytest.raises(ValueError, match="unknown option"):
        attention(tiny_sweep, probe_docs, tolerance=0.1)
    with pytest.raises(ValueError, match="tol"):
        attention(tiny_sweep, probe_docs, tol=2)
    frame = attention(tiny_sweep, probe_docs.head(16), n_resamples=100, progress=False)
    weights = attention_weights(tiny_sweep, progress=False)
    for f, metrics in ((frame, PATTERN_METRICS), (weights, WEIGHT_METRICS)):
        assert sorted(f.weight_decay.unique()) == [0.0, 0.1, 1.0]
        assert len(f) == 3 * tiny_sweep[0].n_layers * tiny_sweep[0].n_heads * len(metrics)
        assert f.value.notna().all()
    assert WEIGHTS_ANALYSIS.inputs == () and ANALYSIS.inputs == ("data",)


# ---------------------------------------------------------------------- statistics from queries and keys (SDPA forward)
ARCHITECTURES = ["gpt2", "llama", "gpt_neox", "olmo2", "gemma2", "mistral"]


def window_reference(A: np.ndarray, **kwargs) -> dict[str, float]:
    """reference_stats with the normalised entropy divided by log(keys the row attends to), the keys read off the
    pattern's support (a disallowed key has weight exactly 0, an allowed one a positive weight)."""
    ref = reference_stats(A, **kwargs)
    keys = (A > 0).sum(axis=1)
    H = np.array([scipy.stats.entropy(row[row > 0]) for row in A])
    several = keys > 1
    ref["entropy_normalized"] = np.mean(H[several] / np.log(keys[several])) if several.any() else np.nan
    return ref


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_qk_statistics_equal_numpy_on_each_documents_eager_pattern(arch, tiny_model, tokenizer, docs):
    """The analysis (queries and keys beside an SDPA forward, padded batches) against numpy on the bridge's eager
    pattern of each document alone; GQA, partial rotary (NeoX), query/key norms (OLMo-2), softcapping and a
    query scaling of its own on alternating sliding-window layers (Gemma 2), sliding windows (Mistral)."""
    ckpt = Checkpoint.from_model(tiny_model(arch, len(tokenizer)), tokenizer, weight_decay=0.0, name=arch)
    L = 6
    consumer = PatternStatistics(2, spectral_tokens=L)
    run_pass(ckpt, docs, [consumer], batch_size=5, progress=False)
    doc_index, values = consumer.values()
    assert list(doc_index) == list(range(len(docs)))
    windowed = 0
    for d, text in enumerate(docs):
        tokens = torch.tensor([encode(ckpt.tokenizer, text, ckpt.n_ctx)])
        with torch.no_grad():
            _, cache = ckpt.bridge.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
        for layer in range(2):
            for head in range(4):
                A = cache[f"blocks.{layer}.attn.hook_pattern"][0, head].double().numpy()
                windowed += int(((A > 0).sum(axis=1) < np.arange(1, len(A) + 1)).any())
                ref = reference_truncated(A, L) | {k: v for k, v in window_reference(A).items() if k not in SPECTRAL}
                assert_matches(dict(zip(PATTERN_METRICS, values[d, layer, head].tolist())), ref, (arch, d, layer, head))
    assert (windowed > 0) == (arch in ("gemma2", "mistral"))  # the windows were exercised where the model has them


def test_sliding_window_normalisation_by_hand(tokenizer):
    """Mistral with a window of 4 keys and zero query/key weights attends uniformly to the min(i + 1, 4) keys it may
    see: every row's entropy is log(min(i + 1, 4)) and the normalised entropy is 1 (dividing by log(i + 1), as for full
    causal attention, would report less), in both the eager-pattern and the query/key path."""
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=64, sliding_window=4)
    torch.manual_seed(0)
    model = MistralForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.zero_()
            layer.self_attn.k_proj.weight.zero_()
    ckpt = Checkpoint.from_model(model, tokenizer, weight_decay=0.0, name="mistral-w4")
    text = "the quick brown fox jumps over the lazy dog and keeps running far away"
    n = len(encode(ckpt.tokenizer, text, ckpt.n_ctx))
    assert n > 8
    i = np.arange(n)
    keys = np.minimum(i + 1, 4)
    expected = {
        "entropy": np.mean(np.log(keys)),
        "entropy_normalized": 1.0,
        "sink_share": np.mean(np.where(i < 4, 1 / (i + 1), 0.0)),
        "mean_distance": np.mean((keys - 1) / 2),
        "one_hot_share": 1 / n,
        "frobenius_norm": math.sqrt(np.sum(1 / keys)),
    }
    causal = np.mean(np.log(keys[1:]) / np.log(i[1:] + 1))  # what full-causal normalisation would say
    assert causal < 0.9
    for source in ("qk", "pattern"):
        consumer = PatternStatistics(2, source=source)
        run_pass(ckpt, [text], [consumer], progress=False)
        _, values = consumer.values()
        for metric, value in expected.items():
            np.testing.assert_allclose(values[0, :, :, PATTERN_METRICS.index(metric)], value, rtol=1e-5, err_msg=(source, metric))


def test_qk_blocks_of_rows_change_nothing_and_stay_small():
    """Query rows read a few at a time give the one-block numbers; the scores held at once stay a block, far below a pattern."""
    from plastiscope.activations import AttentionInputs
    from plastiscope.attention.qk import document_qk_statistics, qk_statistics

    g = torch.Generator().manual_seed(7)
    heads, kv, n, d = 4, 2, 256, 8
    q, k = torch.randn(heads, n, d, generator=g) * 2, torch.randn(kv, n, d, generator=g) * 2
    allowed = torch.ones(n, n, dtype=torch.bool).tril() & ~torch.ones(n, n, dtype=torch.bool).tril(-9)  # a window of 9 keys
    args = (q, k, allowed, 0.35, 3.0, TOL, 0.9, 16)
    whole = document_qk_statistics(*args, block=heads * n * n)
    block = 4 * n * heads  # 4 query rows at a time
    with LargestOutput(q, k, allowed) as mode:
        parts = document_qk_statistics(*args, block=block)
    for metric in PATTERN_METRICS:
        torch.testing.assert_close(parts[metric], whole[metric], rtol=1e-5, atol=1e-6)
    assert mode.largest <= block < heads * n * n // 16
    with pytest.raises(ValueError, match="only causal"):
        qk_statistics(AttentionInputs(q[None], k[None], torch.ones(1, 1, n, n, dtype=torch.bool), 1.0, None), torch.ones(1, n, dtype=torch.bool))
