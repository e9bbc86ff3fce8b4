"""Tests of plastiscope.overfit against independent references (transformers loop, sklearn, zlib)."""

from __future__ import annotations

import warnings
import zlib

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from plastiscope import Checkpoint
from plastiscope.activations import Batch, feed
from plastiscope.data import Documents, encode
from plastiscope.demo.corpus import load_corpus
from plastiscope.demo.tokenizer import train_tokenizer
from plastiscope.generation import greedy_generate
from plastiscope.overfit import (
    DocumentLosses,
    auc,
    document_scores,
    exact_memorization,
    match_lengths,
    overfit,
    tpr_at_fpr,
    zlib_entropy,
)
from plastiscope.overfit.losses import bucket_labels, default_bucket_edges
from plastiscope.overfit.membership import auc_batched, tpr_at_fpr_batched
from plastiscope.runner import Inputs, run_analyses
from plastiscope.stats import bootstrap_ci
from plastiscope.training import trainable_copy

N_CTX = 64
FAST = {"n_resamples": 200}


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(load_corpus("train", 2000).texts, 512)


def tiny_llama(tokenizer, seed: int = 0, hidden: int = 32) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=N_CTX,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def memorised_set(tokenizer) -> Documents:
    """16 training glosses of 14-40 tokens, never in the validation split."""
    pool = load_corpus("train", 3000)
    rows = [i for i in range(2000, 3000) if 14 <= len(encode(tokenizer, pool.texts[i], 10**6)) <= 40][:16]
    return pool.subset(rows)


@pytest.fixture(scope="module")
def val_docs() -> Documents:
    return load_corpus("validation", 64)


@pytest.fixture(scope="module")
def memorised(tokenizer, memorised_set) -> Checkpoint:
    """A tiny Llama trained (no weight decay) until it reproduces its 16 training documents."""
    model = tiny_llama(tokenizer).train()
    ids = [encode(tokenizer, t, N_CTX) for t in memorised_set.texts]
    width = max(map(len, ids))
    tokens = torch.full((len(ids), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for r, doc in enumerate(ids):
        tokens[r, : len(doc)], mask[r, : len(doc)] = torch.tensor(doc), 1
    labels = tokens.masked_fill(mask == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(100):
        loss = model(input_ids=tokens, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.3
    return Checkpoint.from_model(model.eval(), tokenizer, weight_decay=0.0, name="memorised")


@pytest.fixture(scope="module")
def untrained(tokenizer) -> Checkpoint:
    return Checkpoint.from_model(tiny_llama(tokenizer, seed=1), tokenizer, weight_decay=0.1, name="untrained")


def metric(frame: pd.DataFrame, name: str, **extra) -> pd.Series:
    rows = frame[frame["metric"] == name]
    for column, value in extra.items():
        rows = rows[rows[column] == value]
    assert len(rows) == 1, f"{name} {extra}: {len(rows)} rows"
    return rows.iloc[0]


def hf_document_losses(model, tokenizer, texts) -> np.ndarray:
    """Reference: each document alone through the transformers model, CrossEntropyLoss on shifted labels."""
    losses = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([encode(tokenizer, text, N_CTX)])
            logits = model(input_ids=ids).logits
            losses.append(torch.nn.CrossEntropyLoss()(logits[0, :-1], ids[0, 1:]).item())
    return np.array(losses)


# ---------------------------------------------------------------------- losses
def test_losses_match_transformers_loop(memorised, memorised_set, val_docs):
    docs = document_scores(memorised, memorised_set, val_docs, reference=None, batch_size=5)
    for split, data in (("train", memorised_set), ("val", val_docs)):
        got = docs[docs["split"] == split].sort_values("doc")["loss"].to_numpy()
        want = hf_document_losses(memorised.hf_model, memorised.tokenizer, data.texts)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    lengths = [len(encode(memorised.tokenizer, t, N_CTX)) - 1 for t in val_docs.texts]
    assert docs[docs["split"] == "val"]["n_targets"].tolist() == lengths


def hf_corpus_loss(model, tokenizer, texts) -> tuple[float, np.ndarray]:
    """transformers' own ``labels=`` loss of each document, combined over the corpus by target tokens, and per document."""
    losses, targets = [], []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([encode(tokenizer, text, N_CTX)])
            losses.append(model(input_ids=ids, labels=ids).loss.item())
            targets.append(ids.shape[1] - 1)
    losses, targets = np.array(losses), np.array(targets)
    return float((losses * targets).sum() / targets.sum()), losses


def test_train_and_val_loss_are_token_weighted_like_transformers(memorised, memorised_set, val_docs):
    """train_loss / val_loss: transformers' labels= loss summed over the corpus (token-weighted), within 1e-4;
    the per-document means get their own names."""
    frame = overfit(memorised, memorised_set, val_docs, progress=False, length_matching="none",
                             memorization_max_docs=0, **FAST)
    for split, data in (("train", memorised_set), ("val", val_docs)):
        corpus, per_document = hf_corpus_loss(memorised.hf_model, memorised.tokenizer, data.texts)
        row = metric(frame, f"{split}_loss")
        assert row.value == pytest.approx(corpus, abs=1e-4) and row.n == len(data.texts)
        assert row.ci_low < row.value < row.ci_high
        assert metric(frame, f"{split}_loss_per_document").value == pytest.approx(per_document.mean(), abs=1e-4)
    # the validation glosses differ in length and the short ones are harder: the two means differ
    assert abs(metric(frame, "val_loss").value - metric(frame, "val_loss_per_document").value) > 0.01
    gap = metric(frame, "loss_gap")
    assert gap.value == pytest.approx(metric(frame, "val_loss").value - metric(frame, "train_loss").value, abs=1e-12)
    assert metric(frame, "loss_ratio").value == pytest.approx(metric(frame, "val_loss").value / metric(frame, "train_loss").value)


def test_position_buckets_match_hand_computation():
    torch.manual_seed(0)
    logits = torch.randn(3, 12, 7)
    tokens = torch.randint(0, 7, (3, 12))
    mask = torch.zeros(3, 12, dtype=torch.bool)
    for row, length in enumerate((12, 5, 1)):  # the last document is BOS only: no target
        mask[row, :length] = True
    edges = [2, 4, 11]
    acc = DocumentLosses(5, edges)
    feed(acc, Batch(tokens=tokens, mask=mask, doc_index=torch.tensor([4, 0, 2]), activations={}, logits=logits))
    logp = torch.log_softmax(logits.double(), -1)
    for row, doc, length in ((0, 4, 12), (1, 0, 5)):
        per_token = np.array([-logp[row, p - 1, tokens[row, p]].item() for p in range(1, length)])
        positions = np.arange(1, length)
        assert acc.mean_loss[doc] == pytest.approx(per_token.mean(), abs=1e-6)
        for j, (lo, hi) in enumerate(((1, 2), (3, 4), (5, 11))):
            inside = (positions >= lo) & (positions <= hi)
            want = per_token[inside].mean() if inside.any() else np.nan
            np.testing.assert_allclose(acc.bucket_mean[doc, j], want, atol=1e-6)
    assert np.isnan(acc.mean_loss[2]) and acc.n_targets[2] == 0
    assert acc.seen.tolist() == [True, False, True, False, True]
    assert bucket_labels(edges) == ["1-2", "3-4", "5-11"]
    assert bucket_labels(default_bucket_edges(128)) == ["1-8", "9-16", "17-32", "33-64", "65-127"]


# ---------------------------------------------------------------------- membership statistics
def test_auc_and_tpr_match_sklearn():
    rng = np.random.default_rng(0)
    members = np.round(rng.normal(0.0, 1.0, 150), 1)  # rounded: ties between and within classes
    nonmembers = np.round(rng.normal(0.7, 1.0, 230), 1)
    labels = np.r_[np.ones(150), np.zeros(230)]
    want = roc_auc_score(labels, -np.r_[members, nonmembers])
    assert auc(members, nonmembers) == pytest.approx(want)
    assert auc_batched(members[None], nonmembers[None])[0] == pytest.approx(want)
    for fpr in (0.0, 0.01, 0.05, 0.3):
        roc_fpr, roc_tpr, _ = roc_curve(labels, -np.r_[members, nonmembers], drop_intermediate=False)
        assert tpr_at_fpr(members, nonmembers, fpr) == pytest.approx(roc_tpr[roc_fpr <= fpr + 1e-12].max())
    # hand case: 2 of 4 members strictly below every non-member
    assert tpr_at_fpr_batched(np.array([[0.0, 1.0, 5.0, 6.0]]), np.array([[2.0, 3.0, 4.0]]))[0] == 0.5
    value, low, high = bootstrap_ci((members, nonmembers), auc_batched, n_resamples=300)
    assert low < value < high and value == pytest.approx(want)


def test_zlib_scores_match_python_zlib(memorised, memorised_set):
    long_text = " ".join(load_corpus("validation", 40).texts)  # longer than the context: truncated
    fitting = [t for t in load_corpus("validation", 30).texts if len(encode(memorised.tokenizer, t, 10**6)) <= N_CTX]
    val = Documents(fitting[:10] + [long_text])
    docs = document_scores(memorised, memorised_set, val, reference=None)
    for split, data in (("train", memorised_set), ("val", val)):
        rows = docs[docs["split"] == split].sort_values("doc")
        texts = list(data.texts)
        if split == "val":  # the loss covers only the kept tokens of the truncated text
            ids = memorised.tokenizer(long_text, add_special_tokens=False)["input_ids"][: N_CTX - 1]
            texts[-1] = memorised.tokenizer.decode(ids)
            assert len(texts[-1]) < len(long_text) and long_text.startswith(texts[-1])
        want = np.array([len(zlib.compress(t.encode("utf-8"))) for t in texts])
        np.testing.assert_array_equal(rows["zlib_bytes"].to_numpy(), want)
        np.testing.assert_allclose(rows["zlib_score"].to_numpy(), rows["loss"].to_numpy() / want)
    assert zlib_entropy("aaaa" * 100) < zlib_entropy("the quick brown fox jumps over the lazy dog" * 2)


# ---------------------------------------------------------------------- whole analysis
def test_memorised_model_is_caught(memorised, memorised_set, val_docs):
    frame = overfit(
        memorised, memorised_set, val_docs, progress=False, prefix_tokens=4, continuation_tokens=4, **FAST
    )
    gap = metric(frame, "loss_gap")
    assert gap.value > 3.0 and gap.ci_low > 2.0
    assert metric(frame, "val_loss").value - metric(frame, "train_loss").value == pytest.approx(gap.value)
    assert metric(frame, "loss_ratio").value > 5.0
    for score in ("loss", "zlib"):
        assert metric(frame, f"mia_auc_{score}").value > 0.97
    assert not (frame["metric"] == "mia_auc_reference").any()  # no reference unless a folder is given
    assert metric(frame, "mia_tpr_at_1fpr", score="loss").value > 0.8
    assert metric(frame, "exact_match_train").value >= 0.9
    assert metric(frame, "exact_match_val").value <= 0.05
    assert metric(frame, "matched_prefix_train").value > 3.5
    assert metric(frame, "matched_prefix_val").value < 1.0
    by_position = frame[frame["metric"] == "loss_gap_by_position"]
    assert set(by_position["position_bucket"]) >= {"1-8", "9-16", "17-32"}
    assert (by_position["value"] > 1.0).all()
    assert frame["analysis"].eq("overfit").all() and frame["checkpoint"].eq("memorised").all()


def test_untrained_model_shows_no_gap(untrained):
    train, val = load_corpus("train", 300), load_corpus("validation", 300)
    frame = overfit(
        untrained, train, val, progress=False, reference=None, prefix_tokens=4, continuation_tokens=4,
        memorization_max_docs=32, **FAST,
    )  # fmt: skip
    gap = metric(frame, "loss_gap")
    assert abs(gap.value) < 0.02 and gap.ci_low < 0 < gap.ci_high
    assert metric(frame, "loss_ratio").value == pytest.approx(1.0, abs=0.005)
    for score in ("loss", "zlib"):
        row = metric(frame, f"mia_auc_{score}")
        assert abs(row.value - 0.5) < 0.08 and row.ci_low < 0.5 < row.ci_high
    assert not (frame["metric"] == "mia_auc_reference").any()  # reference=None skips it
    assert metric(frame, "exact_match_train").value == metric(frame, "exact_match_val").value == 0.0


def test_short_documents_are_skipped_with_a_count(memorised, tokenizer):
    texts = ["cat", "a dog", *load_corpus("validation", 20).texts]
    k, m = 6, 5
    n_short = sum(len(encode(tokenizer, t, 10**6)) < 1 + k + m for t in texts)
    assert 2 <= n_short < len(texts)
    result = exact_memorization(memorised.hf_model, tokenizer, texts, N_CTX, k, m, max_docs=None)
    assert result.skipped_short == n_short and len(result.exact) == len(texts) - n_short
    capped = exact_memorization(memorised.hf_model, tokenizer, texts, N_CTX, k, m, max_docs=3)
    assert len(capped.exact) == 3 and capped.not_sampled == len(texts) - n_short - 3
    with pytest.raises(ValueError, match="exceeds the model's context"):
        exact_memorization(memorised.hf_model, tokenizer, texts, N_CTX, 60, 10)
    frame = overfit(
        memorised, load_corpus("train", 30), Documents(texts), progress=False, reference=None,
        prefix_tokens=k, continuation_tokens=m, **FAST,
    )  # fmt: skip
    row = metric(frame, "skipped_short_val")
    assert row.value == n_short and row.n == len(texts)
    assert metric(frame, "exact_match_val").n == len(texts) - n_short


def naive_greedy(model, prompts, n_new):
    """The reference: argmax of a full forward pass over the whole sequence at every step, no cache, no generate()."""
    sequence = prompts
    with torch.no_grad():
        for _ in range(n_new):
            sequence = torch.cat([sequence, model(input_ids=sequence).logits[:, -1:].argmax(-1)], dim=1)
    return sequence[:, prompts.shape[1]:]


def test_greedy_generate_matches_naive_decoding_whatever_the_checkpoint_asks(memorised, memorised_set, tokenizer):
    with pytest.raises(ValueError, match="wrapped by TransformerLens's bridge"):
        greedy_generate(memorised.hf_model, torch.tensor([[0, 5, 6]]), 3)  # the bridged modules decode wrong tokens
    model = trainable_copy(memorised.hf_model).eval()
    prompts = torch.tensor([encode(tokenizer, t, 6) for t in memorised_set.texts[:5]])
    want = naive_greedy(model, prompts, 7)
    # a generation_config.json that would change greedy decoding if it were honoured: a repetition penalty, an
    # end-of-sequence token that the continuations contain, a banned n-gram size
    saved = model.generation_config
    model.generation_config = GenerationConfig(repetition_penalty=2.0, no_repeat_ngram_size=2, eos_token_id=int(want[0, 2]),
                                               pad_token_id=0)
    try:
        assert torch.equal(greedy_generate(model, prompts, 7), want)
        # the same settings do change what generate() returns when left to the checkpoint: the test can fail
        assert not torch.equal(model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=7,
                                              do_sample=False)[:, 6:], want)
    finally:
        model.generation_config = saved


def test_exact_memorization_equals_generate_based_reference(memorised, memorised_set, val_docs, tokenizer):
    k, m = 4, 6
    plain = trainable_copy(memorised.hf_model).eval()
    for texts in (memorised_set.texts, val_docs.texts[:40]):
        result = exact_memorization(memorised.hf_model, tokenizer, texts, N_CTX, k, m, max_docs=None)
        rows = torch.tensor([encode(tokenizer, texts[i], 1 + k + m) for i in result.doc_index])
        same = greedy_generate(plain, rows[:, : 1 + k], m) == rows[:, 1 + k :]
        assert np.array_equal(result.exact, same.all(dim=1).numpy())
        assert np.array_equal(result.matched, same.long().cumprod(dim=1).sum(dim=1).numpy())
    assert result.exact.mean() < 0.2 < 0.9 < exact_memorization(memorised.hf_model, tokenizer, memorised_set.texts, N_CTX, k, m).exact.mean()


def test_overlap_is_detected_and_dropped(memorised, memorised_set, val_docs):
    dupes = [memorised_set.texts[0], "  " + memorised_set.texts[1].replace(" ", "  "), memorised_set.texts[2]]
    val = Documents(list(val_docs.texts[:30]) + dupes)
    with pytest.warns(UserWarning, match="3 of 33 validation documents also occur"):
        frame = overfit(
            memorised, memorised_set, val, progress=False, reference=None, length_matching="none",
            prefix_tokens=4, continuation_tokens=4, **FAST,
        )  # fmt: skip
    assert metric(frame, "overlap_count").value == 3
    assert metric(frame, "val_loss").n == 30  # the duplicates are not held-out documents
    assert metric(frame, "exact_match_val").value <= 0.05
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="every validation document"):
            overfit(memorised, memorised_set, memorised_set, progress=False, reference=None, **FAST)


def test_length_matching_equalises_length_distributions():
    rng = np.random.default_rng(0)
    train = rng.integers(5, 60, 400)
    val = rng.integers(20, 100, 150)
    t, v = match_lengths(train, val, n_bins=8, seed=0)
    assert len(t) == len(v) > 0 and len(set(t)) == len(t)
    pooled = np.r_[train, val]
    edges = np.unique(np.quantile(pooled, np.linspace(0, 1, 9)[1:-1]))
    np.testing.assert_array_equal(
        np.bincount(np.searchsorted(edges, train[t], side="right"), minlength=len(edges) + 1),
        np.bincount(np.searchsorted(edges, val[v], side="right"), minlength=len(edges) + 1),
    )
    assert abs(train[t].mean() - val[v].mean()) < 3 < abs(train.mean() - val.mean())


def test_untrained_reference_folder_is_warned_about_and_registry(tmp_path, memorised, untrained, memorised_set, val_docs):
    # the same weights as ``untrained``, saved before a bridge wraps them (a bridged model does not save)
    tiny_llama(untrained.tokenizer, seed=1).save_pretrained(tmp_path / "ref")
    untrained.tokenizer.save_pretrained(tmp_path / "ref")
    with pytest.warns(UserWarning, match="close to ln"):
        docs = document_scores(memorised, memorised_set, val_docs, reference=str(tmp_path / "ref"))
    plain = document_scores(untrained, memorised_set, val_docs, reference=None)
    np.testing.assert_allclose(docs["reference_loss"], plain["loss"], atol=1e-5)
    np.testing.assert_allclose(docs["reference_score"], docs["loss"] / plain["loss"], rtol=1e-5)
    # through the registry, as the CLI runs it
    inputs = Inputs(train_data=memorised_set, val_data=val_docs)
    options = {"overfit": {"reference": None, "memorization_max_docs": 0, **FAST}}
    results, failures = run_analyses(memorised, ["overfit"], inputs, options=options, progress=False)
    assert failures.empty and metric(results, "mia_auc_loss").value > 0.97
    assert not results["metric"].str.startswith("exact_match").any()
    with pytest.raises(ValueError, match="--val-data"):
        run_analyses(memorised, ["overfit"], Inputs(train_data=memorised_set), progress=False)


def test_reference_score_is_carlini_ratio_to_a_trained_reference(tiny_sweep):
    """A trained reference folder (another checkpoint of the sweep): reference_loss is that model's own
    transformers loss, reference_score = loss / reference_loss, and it ranks documents unlike the loss."""
    from scipy.stats import spearmanr
    from transformers import AutoModelForCausalLM

    target, reference = tiny_sweep[0], tiny_sweep[2]
    train, val = load_corpus("train", 120), load_corpus("validation", 120)
    docs = document_scores(target, train, val, reference=str(reference.path))
    ref_model = AutoModelForCausalLM.from_pretrained(reference.path).eval()
    for split, data in (("train", train), ("val", val)):
        rows = docs[docs["split"] == split].sort_values("doc")
        want = []
        with torch.no_grad():
            for text in data.texts:
                ids = torch.tensor([encode(reference.tokenizer, text, reference.n_ctx)])
                want.append(ref_model(input_ids=ids, labels=ids).loss.item())
        np.testing.assert_allclose(rows["reference_loss"], want, atol=1e-4)
    np.testing.assert_allclose(docs["reference_score"], docs["loss"] / docs["reference_loss"], rtol=1e-12)
    assert docs["reference_loss"].std() > 0.1  # a trained reference: its loss varies from document to document
    assert spearmanr(docs["reference_score"], docs["loss"]).statistic < 0.9  # not the plain loss in disguise
    frame = overfit(target, train, val, reference=str(reference.path), progress=False, memorization_max_docs=0, **FAST)
    with pytest.warns(UserWarning, match="this checkpoint itself"):
        itself = overfit(reference, train, val, reference=str(reference.path), progress=False, memorization_max_docs=0, **FAST)
    assert not (itself["metric"] == "mia_auc_reference").any() and (itself["metric"] == "mia_auc_loss").any()
    by_loss, by_reference = metric(frame, "mia_auc_loss").value, metric(frame, "mia_auc_reference").value
    used = docs[docs["matched"]]
    m, v = used[used["split"] == "train"], used[used["split"] == "val"]
    assert by_reference == pytest.approx(roc_auc_score(np.r_[np.ones(len(m)), np.zeros(len(v))],
                                                       -np.r_[m["reference_score"], v["reference_score"]]))
    assert by_reference != pytest.approx(by_loss, abs=1e-3)


def test_short_context_keeps_the_loss_gap_and_sizes_memorization(tiny_sweep):
    """A 48-token context with the default k=32, m=16 (+ BOS = 49): memorization is scaled to fit, with a warning."""
    from plastiscope.overfit.analysis import memorization_lengths

    checkpoint = tiny_sweep[1]
    assert checkpoint.n_ctx == 48
    long_train = [t for t in load_corpus("train", 400).texts if len(encode(checkpoint.tokenizer, t, 10**6)) >= 48]
    with pytest.warns(UserWarning, match="k=31, m=16 instead"):
        frame = overfit(checkpoint, Documents(long_train[:40]), load_corpus("validation", 80), progress=False, **FAST)
    gap = metric(frame, "loss_gap")
    assert np.isfinite(gap.value) and gap.ci_low <= gap.value <= gap.ci_high
    exact = metric(frame, "exact_match_train")
    assert exact.prefix_tokens == 31 and exact.continuation_tokens == 16 and exact.n > 0
    assert memorization_lengths(32, 16, 64, 1) == (32, 16)
    assert memorization_lengths(32, 16, 48, 1) == (31, 16)
    assert memorization_lengths(8, 8, 5, 1) == (2, 2)
    assert memorization_lengths(8, 8, 2, 1) is None  # no room: only the memorization rows are skipped


def test_options_are_validated(memorised, memorised_set, val_docs):
    with pytest.raises(ValueError, match="unknown option"):
        overfit(memorised, memorised_set, val_docs, prefix_length=4)
    with pytest.raises(ValueError, match="length_matching"):
        overfit(memorised, memorised_set, val_docs, length_matching="stratify-ish")
    with pytest.raises(ValueError, match="not a folder"):
        overfit(memorised, memorised_set, val_docs, reference="/no/such/model")
    with pytest.raises(ValueError, match="plain loss in disguise"):
        overfit(memorised, memorised_set, val_docs, reference="random_init")


def test_tiny_sweep_end_to_end(tiny_sweep):
    """Checkpoints from folders (the shared tiny sweep), trained on the first 400 training glosses."""
    frame = overfit(
        tiny_sweep, load_corpus("train", 100), load_corpus("validation", 100), progress=False, reference=None,
        prefix_tokens=4, continuation_tokens=4, memorization_max_docs=16, **FAST,
    )  # fmt: skip
    assert sorted(frame["weight_decay"].unique()) == [0.0, 0.1, 1.0]
    wanted = {"train_loss", "val_loss", "loss_gap", "loss_ratio", "train_loss_per_document", "val_loss_per_document", "mia_auc_loss", "mia_auc_zlib", "mia_tpr_at_1fpr",
              "exact_match_train", "exact_match_val", "matched_prefix_train", "matched_prefix_val", "overlap_count"}  # fmt: skip
    for _, rows in frame.groupby("checkpoint"):
        assert wanted <= set(rows["metric"])
        gap = metric(rows, "loss_gap")
        assert np.isfinite(gap.value) and gap.ci_low <= gap.value <= gap.ci_high
        assert metric(rows, "val_loss").value == pytest.approx(metric(rows, "train_loss").value + gap.value)
