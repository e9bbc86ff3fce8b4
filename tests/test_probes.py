"""probes/: the batched trainer against scikit-learn, metrics against hand computations and numpy,
and the ``probes`` analysis end to end on a tiny in-memory checkpoint."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from plastiscope.probes import (
    LinearProbe,
    control_labels,
    evaluate_layers,
    fisher_criterion,
    fit_logistic,
    mdl_block_ends,
    mdl_records,
    online_codelength,
    standardization,
)

SEQUENCE_METRICS = {
    "accuracy", "macro_f1", "cross_entropy", "selectivity_shuffled", "mdl_codelength", "mdl_compression", "fisher_criterion",
}
METRICS = SEQUENCE_METRICS | {"selectivity_control_task"}  # token level: word types repeat
# what the analysis adds by default: the baselines' paired differences and the transferability estimators
ANALYSIS_METRICS = SEQUENCE_METRICS | {"accuracy_above_majority", "accuracy_above_random_init", "logme", "h_score", "rankme", "alpha_req"}
FAST = dict(folds=3, inner_folds=2, Cs=[0.1, 1.0], max_examples=240, min_per_class=6)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tokenizer(tiny_sweep):
    return tiny_sweep[0].tokenizer


def tiny_checkpoint(tokenizer, seed: int, name: str, weight_decay: float = 0.1):
    from transformers import LlamaConfig, LlamaForCausalLM

    from plastiscope import Checkpoint

    config = LlamaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        vocab_size=len(tokenizer), max_position_embeddings=64, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return Checkpoint.from_model(LlamaForCausalLM(config).eval(), tokenizer, weight_decay=weight_decay, name=name)


@pytest.fixture(scope="module")
def checkpoint(tokenizer):
    return tiny_checkpoint(tokenizer, seed=123, name="tiny")


@pytest.fixture(scope="module")
def docs():
    """A random sample of the probe split (the split is ordered by part of speech)."""
    from plastiscope.demo.corpus import load_corpus

    full = load_corpus("probe")
    return full.subset(np.random.default_rng(0).choice(len(full), 500, replace=False).tolist())


@pytest.fixture(scope="module")
def pos_features(tiny_sweep, docs):
    """Mean-pooled residual stream ``[layer, doc, d]`` of a tiny trained model, and pos labels of ``docs``."""
    from plastiscope.activations import stream

    checkpoint = tiny_sweep[1]
    names = [f"blocks.{l}.hook_resid_post" for l in range(checkpoint.n_layers)]
    X = torch.zeros(len(names), len(docs), 32)
    for batch in stream(checkpoint, docs, names, batch_size=32, progress=False):
        acts = torch.stack([batch.activations[n] for n in names])  # [layer, batch, pos, d]
        mask = batch.mask.clone()
        mask[:, 0] = False  # BOS
        X[:, batch.doc_index] = (acts * mask[None, :, :, None]).sum(2) / mask.sum(1)[None, :, None]
    classes, y = np.unique(docs.column("pos"), return_inverse=True)
    return X, y


# ----------------------------------------------------------------------------- trainer
@pytest.mark.parametrize("C", [0.1, 1.0])
def test_trainer_matches_sklearn_on_real_activations(pos_features, C):
    """Same splits, same C, standardised features: held-out accuracy within 1 point of
    scikit-learn's LogisticRegression(lbfgs), and an objective at least as low."""
    X, y = pos_features
    n = len(y)
    for train, test in StratifiedKFold(3, shuffle=True, random_state=0).split(np.zeros(n), y):
        mask = torch.zeros(n, dtype=torch.bool)
        mask[train] = True
        mean, scale = standardization(X, mask)
        fit = fit_logistic(X, torch.as_tensor(y), C, mask.float(), n_classes=4, mean=mean, scale=scale, max_iter=500)
        ours = fit.logits(X)[:, 0].argmax(-1).numpy()  # [layer, n]
        for layer in range(X.shape[0]):
            pipe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000))
            pipe.fit(X[layer, train].double().numpy(), y[train])
            theirs = pipe.predict(X[layer, test].double().numpy())
            acc_ours = (ours[layer, test] == y[test]).mean()
            acc_theirs = (theirs == y[test]).mean()
            assert abs(acc_ours - acc_theirs) <= 0.01, (layer, acc_ours, acc_theirs)
            # objective (mean log-loss + ||W||^2 / (2 C n)) of both solutions
            Z = pipe[0].transform(X[layer, train].double().numpy())
            logp = pipe[1].predict_log_proba(Z)
            sk_obj = -logp[np.arange(len(train)), y[train]].mean() + (pipe[1].coef_**2).sum() / (2 * C * len(train))
            assert float(fit.loss[layer, 0]) <= sk_obj + 1e-5


def test_trainer_binary_matches_sklearn_objective():
    """Two classes: scikit-learn fits one coefficient vector; the trainer reproduces its solution."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((400, 10)) * rng.uniform(0.1, 5, 10)
    y = (X[:, 0] / X[:, 0].std() + rng.standard_normal(400) > 0).astype(int)
    fit = fit_logistic(torch.tensor(X, dtype=torch.float32)[None], torch.as_tensor(y), 0.5, tol=1e-7, max_iter=500)
    sk = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, tol=1e-10, max_iter=5000)).fit(X, y)
    p_ours = torch.softmax(fit.logits(torch.tensor(X, dtype=torch.float32)[None])[0, 0], -1)[:, 1].numpy()
    np.testing.assert_allclose(p_ours, sk.predict_proba(X)[:, 1], atol=2e-4)


def test_trainer_batches_problems_independently():
    """A batched fit of several (C, weights, labels) problems equals fitting each one alone.

    tol=1e-4: at 1e-5 the C=10 problem stops at float32's precision floor on some BLAS builds (reported, rightly,
    as not converged), which says nothing about batching."""
    rng = np.random.default_rng(2)
    X = torch.tensor(rng.standard_normal((2, 300, 8)), dtype=torch.float32)
    y = torch.as_tensor(rng.integers(0, 3, 300))
    Y = torch.stack([y, y.flip(0), y])
    W = torch.as_tensor(rng.random((3, 300)) < 0.7, dtype=torch.float32)
    C = torch.tensor([0.1, 1.0, 10.0])
    mean, scale = standardization(X)
    batched = fit_logistic(X, Y, C, W, n_classes=3, mean=mean, scale=scale, tol=1e-4, max_iter=300)
    for p in range(3):
        alone = fit_logistic(X, Y[p], float(C[p]), W[p], n_classes=3, mean=mean, scale=scale, tol=1e-4, max_iter=300)
        np.testing.assert_allclose(batched.loss[:, p], alone.loss[:, 0], rtol=1e-6)
        assert bool(batched.converged[:, p].all())


# ----------------------------------------------------------------------------- estimator
def test_linear_probe_in_cross_val_score(pos_features):
    X, y = pos_features
    features = X[1].numpy()
    labels = np.array(["adj", "adv", "noun", "verb"])[y]  # string labels
    ours = cross_val_score(LinearProbe(C=1.0), features, labels, cv=3)
    theirs = cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000)), features, labels, cv=3)
    assert np.abs(ours - theirs).max() <= 0.01
    probe = LinearProbe(C=1.0, class_weight="balanced").fit(features, labels)
    assert set(probe.predict(features)) <= set(labels)
    np.testing.assert_allclose(probe.predict_proba(features).sum(1), 1.0, atol=1e-6)
    assert 0 <= probe.score(features, labels) <= 1
    sk = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000)).fit(features, labels)
    assert (probe.predict(features) == sk.predict(features)).mean() >= 0.98
    with pytest.raises(ValueError, match="C must be a positive"):
        LinearProbe(C=-1).fit(features, labels)


def test_linear_probe_passes_sklearn_estimator_checks():
    import warnings

    from sklearn.exceptions import SkipTestWarning
    from sklearn.utils.estimator_checks import check_estimator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkipTestWarning)  # array-API checks need SCIPY_ARRAY_API
        check_estimator(
            LinearProbe(),
            expected_failed_checks={
                "check_sample_weight_equivalence_on_dense_data": "float32 solver at tol=1e-4: probabilities agree to ~1e-3, not 1e-7",
            },
        )


# ----------------------------------------------------------------------------- metrics
def test_separable_toy_set_and_pure_noise():
    """A linearly separable layer scores ~1.0; a pure-noise layer ~chance with ~0 selectivity."""
    rng = np.random.default_rng(0)
    n, d, K = 600, 16, 4
    y = rng.integers(0, K, n)
    noise = rng.standard_normal((n, d))
    separable = rng.standard_normal((n, d)) * 0.1
    separable[np.arange(n), y] += 3.0  # class k lives on axis k
    X = torch.tensor(np.stack([noise, separable]), dtype=torch.float32)
    types = rng.integers(0, 300, n).tolist()  # word types that repeat (about twice each), unrelated to the classes
    records = evaluate_layers(X, y, types=types, folds=5, inner_folds=3, Cs=[0.01, 0.1, 1.0], mdl=True)
    value = {(r["layer"], r["metric"]): r["value"] for r in records}
    assert {m for _, m in value} == METRICS
    assert value[(1, "accuracy")] >= 0.99
    assert value[(1, "macro_f1")] >= 0.99
    assert abs(value[(0, "accuracy")] - 1 / K) < 0.06
    assert abs(value[(0, "selectivity_control_task")]) < 0.06
    assert abs(value[(0, "selectivity_shuffled")]) < 0.06
    assert value[(1, "selectivity_control_task")] > 0.6
    assert value[(0, "cross_entropy")] > math.log(K) - 0.05  # no better than uniform
    assert value[(1, "mdl_compression")] > 5 > 1.1 > value[(0, "mdl_compression")]
    assert value[(1, "fisher_criterion")] > 10 * value[(0, "fisher_criterion")]
    for r in records:
        if r["metric"] in ("accuracy", "mdl_codelength"):
            assert r["ci_low"] <= r["value"] <= r["ci_high"]
    # without word types, or with one type per example (a lemma per document), no control task
    for no_types in (None, list(range(n))):
        with pytest.warns(UserWarning, match="no selectivity_control_task"):
            records = evaluate_layers(X, y, types=no_types, folds=3, inner_folds=2, Cs=[1.0], mdl=False, fisher=False)
        assert "selectivity_control_task" not in {r["metric"] for r in records}


def test_control_task_labels():
    """Hewitt & Liang control task: one fixed label per word type, drawn from the label distribution."""
    types = ["a", "b", "a", "c", "b", "a"] * 50
    y = np.array([0, 1, 2, 0, 1, 2] * 50)
    control = control_labels(types, y, seed=3)
    for t in set(types):
        assert len({c for c, u in zip(control, types) if u == t}) == 1
    assert set(control) <= set(y)
    many = control_labels(list(range(20000)), np.array([0] * 15000 + [1] * 5000), seed=0)
    assert abs(many.mean() - 0.25) < 0.02  # the label distribution is kept


def test_mdl_block_ends():
    assert mdl_block_ends(1000) == [1, 2, 4, 8, 16, 32, 62, 125, 250, 500, 1000]
    assert mdl_block_ends(10) == [1, 2, 5, 10]  # empty blocks merged


def test_online_codelength_hand_computed():
    y = np.array([0, 1, 1, 0, 1])
    logp = np.log(np.array([[0.5, 0.5], [0.5, 0.5], [0.25, 0.75], [0.5, 0.5], [0.1, 0.9]]))
    total, per_example = online_codelength(logp, y, first_block=2, n_classes=2)
    expected = 2 * 1.0 + (-math.log2(0.75)) + 1.0 + (-math.log2(0.9))
    assert total == pytest.approx(expected)
    np.testing.assert_allclose(per_example, [-math.log2(0.75), 1.0, -math.log2(0.9)])


def test_mdl_codelength_matches_hand_computed_case():
    """Constant features: every block's probe is the intercept-only model, i.e. the class
    frequencies of the examples before the block, so the online code is computable by hand."""
    y = np.array([0, 1, 0, 1] + [0, 0, 1, 0, 0, 0] + [0, 0, 1, 1, 0, 1, 0, 0, 1, 0])
    X = torch.zeros(1, len(y), 3)
    records = mdl_records(X, y, 2, C=1.0, fractions=(20, 50, 100), order=np.arange(len(y)), tol=1e-7, max_iter=500)
    value = {r["metric"]: r["value"] for r in records}
    # block 1 (4 examples): uniform, 1 bit each; block 2 (6): p = (2/4, 2/4); block 3 (10): p = (7/10, 3/10)
    expected = 4 * 1.0 + 6 * 1.0 + 6 * -math.log2(0.7) + 4 * -math.log2(0.3)
    assert value["mdl_codelength"] == pytest.approx(expected, rel=1e-4)
    assert value["mdl_compression"] == pytest.approx(len(y) / expected, rel=1e-4)


def _ledoit_wolf_numpy(R: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit & Wolf (2004, Lemma 3.2 / Theorem 3.3) for centred rows ``R [n, d]``: the shrunk covariance and intensity."""
    n, d = R.shape
    S = R.T @ R / n
    mu = np.trace(S) / d
    d2 = ((S - mu * np.eye(d)) ** 2).sum()
    b2 = sum(((np.outer(r, r) - S) ** 2).sum() for r in R) / n**2
    delta = min(b2, d2) / d2
    return (1 - delta) * S + delta * mu * np.eye(d), delta


def test_fisher_criterion_matches_numpy_and_sklearn_lda(pos_features):
    """tr(S_W^-1 S_B) on real activations: against a numpy computation with the Ledoit-Wolf formula
    written out, and, unshrunk, against the summed eigenvalues of scikit-learn's LDA."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    X, y = pos_features
    Z = (X - X.mean(1, keepdim=True)) / X.std(1, keepdim=True)
    ours, delta = fisher_criterion(Z[:, :150], y[:150])  # 150 examples of 32 features: shrinkage matters
    for layer in range(Z.shape[0]):
        z, labels = Z[layer, :150].double().numpy(), y[:150]
        classes = np.unique(labels)
        means = np.stack([z[labels == c].mean(0) for c in classes])
        S_W, want_delta = _ledoit_wolf_numpy(z - means[np.searchsorted(classes, labels)])
        S_B = sum((labels == c).mean() * np.outer(m - z.mean(0), m - z.mean(0)) for c, m in zip(classes, means))
        assert delta[layer] == pytest.approx(want_delta, rel=1e-6) and 0 < delta[layer] < 1
        assert ours[layer] == pytest.approx(np.trace(np.linalg.solve(S_W, S_B)), rel=1e-6)
    # no shrinkage, all 500 examples: LDA's discriminant coordinates have unit within-class variance,
    # and their between-class variances are the eigenvalues of S_W^-1 S_B
    unshrunk, _ = fisher_criterion(Z, y, shrinkage=0.0)
    for layer in range(Z.shape[0]):
        z = Z[layer].double().numpy()
        T = LinearDiscriminantAnalysis(solver="eigen").fit(z, y).transform(z)  # [n, classes - 1]
        shares = np.bincount(y) / len(y)
        class_means = np.stack([T[y == c].mean(0) for c in range(len(shares))])
        within = sum(shares[c] * T[y == c].var(0) for c in range(len(shares)))
        np.testing.assert_allclose(within, 1.0, rtol=1e-6)
        between = (shares[:, None] * (class_means - T.mean(0)) ** 2).sum(0)
        assert unshrunk[layer] == pytest.approx(between.sum(), rel=1e-6)
    assert (fisher_criterion(Z[:, :150], y[:150], shrinkage=0.0)[0] > ours).all()  # shrinkage pulls the criterion down
    # no separation: identical class means give 0
    flat = torch.tensor(np.tile(np.random.default_rng(5).standard_normal((50, 4)), (2, 1)))[None]
    assert fisher_criterion(flat, np.repeat([0, 1], 50))[0][0] == pytest.approx(0, abs=1e-12)


# ----------------------------------------------------------------------------- tasks and analysis
def test_word_labels_align_to_last_token(tokenizer):
    from plastiscope.data import Documents, encode
    from plastiscope.probes import token_examples

    text = "the photosynthesis of plants"
    data = Documents([text], {"tags": [["DET", "NOUN", "ADP", "NOUN"]]})
    docs, positions, labels, types = token_examples(data, tokenizer, 64, column="tags")
    ids, offsets = encode(tokenizer, text, 64, return_offsets=True)
    assert labels == ["DET", "NOUN", "ADP", "NOUN"] and types == ["the", "photosynthesis", "of", "plants"]
    for position, word in zip(positions, types):  # the labelled token ends its word
        assert text[: offsets[position][1]].endswith(word)
    assert positions == sorted(positions) and positions[-1] == len(ids) - 1
    # truncation drops words that no longer fit
    docs, positions, labels, types = token_examples(data, tokenizer, 3, column="tags")
    assert all(p < 3 for p in positions) and len(labels) < 4
    # a function of the token ids
    docs, positions, labels, types = token_examples(data, tokenizer, 64, token_labels=lambda ids: [i % 2 for i in ids])
    assert labels == [i % 2 for i in ids] and types == ids


def test_select_examples_keeps_class_proportions_and_counts_dropped_classes():
    from plastiscope.probes import select_examples

    rng = np.random.default_rng(3)
    labels = rng.permutation(["a"] * 700 + ["b"] * 220 + ["c"] * 60 + ["d"] * 16 + ["e"] * 4).tolist()
    n = len(labels)
    with pytest.warns(UserWarning, match=r"leaves out 2 of 5 classes \(20 of 1000 examples\)") as caught:
        ex = select_examples("t", "sequence", list(range(n)), [-1] * n, labels, labels, max_examples=500, min_per_class=10)
    assert "d, e" in str(caught[0].message)
    assert ex.classes == ["a", "b", "c"] and ex.dropped == ["d", "e"]
    counts = np.bincount(ex.y)
    natural = np.array([700, 220, 60]) / 980  # shares among the classes kept
    assert 490 <= len(ex) <= 493  # the cap of 500 less d's ~8 sampled examples (16 of the 996 kept before sampling)
    np.testing.assert_allclose(counts / counts.sum(), natural, atol=1.5 / 500)
    assert all(labels[d] == ex.classes[c] for d, c in zip(ex.doc, ex.y))
    assert len(set(ex.doc)) == len(ex) and list(ex.doc) == sorted(ex.doc)
    again = select_examples("t", "sequence", list(range(n)), [-1] * n, labels, labels, max_examples=500, min_per_class=3)
    assert again.classes == ["a", "b", "c", "d"] and np.bincount(again.y).tolist() == [350, 110, 30, 8]  # e (4) left out
    everything = select_examples("t", "sequence", list(range(n)), [-1] * n, labels, labels, max_examples=None, min_per_class=2)
    assert np.bincount(everything.y).tolist() == [700, 220, 60, 16, 4] and not everything.dropped


def test_a_label_column_mixing_number_types_is_refused_not_split_in_two_classes(tmp_path):
    """JSONL labels 1 and 1.0 (and true) are one class written two ways; "1" (text) and 1 compare equal and stay one class."""
    import json

    from plastiscope.data import DataError, load_documents
    from plastiscope.probes import select_examples, sequence_examples

    path = tmp_path / "mixed.jsonl"
    values = [1, 0, 1.0, 0, "1", 1, 0, 1, 0, 1] * 3
    path.write_text("".join(json.dumps({"text": f"doc {i}", "label": v}) + "\n" for i, v in enumerate(values)))
    docs, positions, labels, types = sequence_examples(load_documents(path), "label")
    with pytest.raises(DataError, match=r"task 'label': labels '1' and '1\.0' are one number written two ways"):
        select_examples("label", "sequence", docs, positions, labels, types, min_per_class=2)
    text_and_int = [v if v != 1.0 or isinstance(v, int) or isinstance(v, str) else 1 for v in values]
    ex = select_examples("label", "sequence", list(range(30)), [-1] * 30, text_and_int, text_and_int, min_per_class=2)
    assert ex.classes == ["0", "1"] and np.bincount(ex.y).tolist() == [12, 18]
    with pytest.raises(DataError, match=r"labels '1' and 'True'"):
        select_examples("t", "sequence", list(range(4)), [-1] * 4, [1, 0, True, 0], ["a"] * 4, min_per_class=2)


def test_a_list_label_at_the_sequence_level_is_refused(tmp_path):
    """Word-level labels (a list per document) probed at the default sequence level would make each distinct list a class."""
    import json

    from plastiscope.data import DataError, load_documents
    from plastiscope.probes import sequence_examples

    path = tmp_path / "words.jsonl"
    path.write_text("".join(json.dumps({"text": "the cat", "tags": ["DET", "NOUN"]}) + "\n" for _ in range(20)))
    with pytest.raises(DataError, match=r"words\.jsonl: document 0, column 'tags' holds a list; a sequence-level label is one value "
                                        r"per document .*level='token'"):
        sequence_examples(load_documents(path), "tags")


def test_identical_documents_share_a_fold_and_count_once(checkpoint, docs, monkeypatch):
    """Data listing each document twice: a copy in the training part would answer its twin's held-out question, so the
    twins share every outer fold and the paired intervals count each text once."""
    import plastiscope.probes.analysis as analysis
    from plastiscope.data import Documents
    from plastiscope.probes.evaluate import cross_validate
    from plastiscope.probes.tasks import select_examples
    from plastiscope.runner import Inputs, run_analyses

    half = docs.head(60)
    twice = Documents(half.texts * 2, {k: v * 2 for k, v in half.columns.items()}, "twice")
    chosen, folds = [], []

    def select(*args, **kwargs):
        chosen.append(select_examples(*args, **kwargs))
        return chosen[-1]

    def fit(*args, **kwargs):
        out = cross_validate(*args, **kwargs)
        folds.append(out[1].fold)
        return out

    monkeypatch.setattr(analysis, "select_examples", select)
    monkeypatch.setattr(analysis, "cross_validate", fit)
    options = {**FAST, "label_column": "pos", "min_per_class": 3, "majority_baseline": True}
    results, failures = run_analyses([checkpoint], ["probes"], Inputs(data=twice), options={"probes": options}, progress=False)
    assert failures.empty, failures.to_dict("records")
    (examples,) = chosen
    texts = [twice.texts[d] for d in examples.doc]
    pairs = [(i, j) for i in range(len(texts)) for j in range(i + 1, len(texts)) if texts[i] == texts[j]]
    assert len(pairs) >= 40 and folds
    for fold in folds:
        assert all(fold[i] == fold[j] for i, j in pairs)
    above = results[results["metric"] == "accuracy_above_majority"]
    assert set(above["n"]) == {len(set(texts))}


def test_probes_analysis_end_to_end(tokenizer, checkpoint, docs):
    """run_analyses on a tiny in-memory checkpoint: the results schema, both inits, every metric."""
    from plastiscope.runner import Inputs, run_analyses

    other = tiny_checkpoint(tokenizer, seed=7, name="tiny-b", weight_decay=1.0)
    results, failures = run_analyses(
        [checkpoint, other], ["probes"], Inputs(data=docs),
        options={"probes": {"label_column": "pos", "pooling": ["mean", "last"], **FAST}}, progress=False,
    )
    assert failures.empty, failures.to_dict("records")
    for column in ("checkpoint", "weight_decay", "analysis", "metric", "layer", "head", "value", "ci_low", "ci_high", "n",
                   "task", "pooling", "init"):
        assert column in results.columns
    assert set(results["metric"]) == ANALYSIS_METRICS  # no control task at the sequence level
    assert set(results["init"]) == {"trained", "random", "majority"}
    assert set(results.loc[results["init"] == "majority", "metric"]) == {"accuracy", "macro_f1"}
    assert set(results.loc[results["init"] == "random", "metric"]) == ANALYSIS_METRICS - {"accuracy_above_random_init"}
    assert set(results["pooling"]) == {"mean", "last"} and set(results["task"]) == {"pos"}
    assert set(results["layer"]) == {0, 1} and results["head"].isna().all()
    assert set(results["checkpoint"]) == {"tiny", "tiny-b"} and (results["analysis"] == "probes").all()
    assert np.isfinite(results["value"]).all()
    acc = results[results["metric"] == "accuracy"]
    assert ((acc["value"] >= 0.25) & (acc["value"] <= 1)).all()
    # one row per (checkpoint, init, task, pooling, layer, metric)
    assert not results.duplicated(["checkpoint", "init", "task", "pooling", "layer", "metric"]).any()
    # the random-init baseline does not depend on which checkpoint of the architecture it came from
    random = results[results["init"] == "random"].set_index(["checkpoint", "pooling", "layer", "metric"])["value"]
    np.testing.assert_allclose(random.loc["tiny"].sort_index(), random.loc["tiny-b"].sort_index())
    trained = results[results["init"] == "trained"].set_index(["checkpoint", "pooling", "layer", "metric"])["value"]
    assert not np.allclose(trained.loc["tiny"].sort_index(), trained.loc["tiny-b"].sort_index())
    # the paired differences are the differences of the reported accuracies, per checkpoint, pooling and layer
    majority = results[results["init"] == "majority"].set_index(["checkpoint", "pooling", "layer", "metric"])["value"]
    for key, value in trained.items():
        checkpoint_name, pooling, layer, metric = key
        if metric == "accuracy_above_majority":
            assert value == pytest.approx(trained[(checkpoint_name, pooling, layer, "accuracy")] - majority[key[:3] + ("accuracy",)])
        if metric == "accuracy_above_random_init":
            assert value == pytest.approx(trained[(checkpoint_name, pooling, layer, "accuracy")] - random[key[:3] + ("accuracy",)])
    # the majority class reads no features: one value per pooling, on every layer and checkpoint
    assert (majority.groupby(level=["pooling", "metric"]).nunique() == 1).all()


def test_probe_sweep_token_level_and_errors(checkpoint, docs):
    from collections import Counter

    from plastiscope.data import DataError, Documents, encode
    from plastiscope.probes import probes

    data = docs.subset(range(80))
    counts = Counter(i for text in data.texts for i in encode(checkpoint.tokenizer, text, checkpoint.n_ctx)[1:])
    frequent = {token for token, _ in counts.most_common(3)}
    frame = probes(
        checkpoint, data, level="token", token_labels=lambda ids: [i if i in frequent else None for i in ids],
        layers=[-1], random_baseline=False, mdl=False, progress=False, **FAST,
    )
    assert set(frame["pooling"]) == {"token"} and set(frame["layer"]) == {1} and set(frame["init"]) == {"trained", "majority"}
    trained = frame[frame["init"] == "trained"]
    # the residual stream at a position carries the token's embedding: its identity is decodable
    assert trained[trained["metric"] == "accuracy"]["value"].item() > 0.9
    # token types repeat: the control task is reported (the type is the token, so its label is learnable too)
    assert set(frame["metric"]) == METRICS - {"mdl_codelength", "mdl_compression"} | {
        "accuracy_above_majority", "logme", "h_score", "rankme", "alpha_req"}
    # grouped folds: the paired difference's units are documents, fewer than the tokens probed
    above = trained[trained["metric"] == "accuracy_above_majority"]
    assert above["n"].item() < trained[trained["metric"] == "accuracy"]["n"].item() and above["ci_low"].item() > 0
    # word-level labels in a column (one per whitespace-separated word), grouped folds by document
    function_words = {"the", "a", "an", "of", "or", "and", "to", "in"}
    tags = [["FUNC" if w.lower() in function_words else "CONTENT" for w in text.split()] for text in data.texts]
    tagged = Documents(data.texts, {"tags": tags})
    frame = probes(checkpoint, tagged, level="token", label_column="tags", layers=[0], random_baseline=False,
                        mdl=False, progress=False, **FAST)
    assert set(frame["task"]) == {"tags"} and frame[(frame["metric"] == "accuracy") & (frame["init"] == "trained")]["value"].item() > 0.8
    with pytest.raises(ValueError, match="unknown option"):
        probes(checkpoint, docs, bogus=1, progress=False)
    with pytest.raises(ValueError, match="pooling"):
        probes(checkpoint, docs, pooling="max", progress=False)
    unlabelled = Documents(["a b c"] * 30, {"other": ["x"] * 30})
    with pytest.raises(DataError, match="no label column"):
        probes(checkpoint, unlabelled, progress=False)
    with pytest.raises(DataError, match="no column 'label'"):
        probes(checkpoint, unlabelled, label_column="label", progress=False)


def test_probe_sweep_on_tiny_trained_sweep(tiny_sweep, probe_docs):
    """The embedded-corpus task on a trained sweep: one row set per checkpoint, weight decays carried."""
    from plastiscope.probes import probes

    frame = probes(tiny_sweep, probe_docs, label_column="pos", progress=False, **FAST)
    assert sorted(set(frame["weight_decay"])) == [0.0, 0.1, 1.0]
    acc = frame[(frame["metric"] == "accuracy") & (frame["init"] == "trained")]
    assert len(acc) == 3 * tiny_sweep[0].n_layers
    assert acc["value"].between(0.25, 1).all()


@pytest.mark.parametrize("column", ["pos", "lexname"])
def test_probe_accuracy_at_defaults_matches_sklearn_on_the_natural_distribution(tiny_sweep, column):
    """Default options, an imbalanced label of the embedded corpus, real activations of a trained checkpoint:
    accuracy per layer within 0.01 of scikit-learn's nested cross-validation (StandardScaler +
    LogisticRegression, C by GridSearchCV over the same grid) on every document of the kept classes."""
    from sklearn.model_selection import GridSearchCV

    from plastiscope.activations import stream
    from plastiscope.demo.corpus import load_corpus
    from plastiscope.probes import probes
    from plastiscope.probes.evaluate import DEFAULT_CS

    data = load_corpus("probe", 800)
    checkpoint = tiny_sweep[1]
    frame = probes(checkpoint, data, label_column=column, random_baseline=False, mdl=False, progress=False)
    ours = frame[(frame["metric"] == "accuracy") & (frame["init"] == "trained")].set_index("layer")
    # the natural distribution: every document of every class with >= 10 examples (the default min_per_class)
    labels = np.array(data.column(column))
    names, counts = np.unique(labels, return_counts=True)
    keep = np.flatnonzero(np.isin(labels, names[counts >= 10]))
    classes, y = np.unique(labels[keep], return_inverse=True)
    assert (ours["n"] == len(keep)).all() and np.bincount(y).max() >= 5 * np.bincount(y).min()  # imbalanced, none left out
    names_ = [f"blocks.{l}.hook_resid_post" for l in range(checkpoint.n_layers)]
    X = np.zeros((len(names_), len(data), 32))
    for batch in stream(checkpoint, data, names_, batch_size=32, progress=False):
        mask = batch.mask.clone()
        mask[:, 0] = False  # mean over the tokens after BOS
        for l, name in enumerate(names_):
            X[l, batch.doc_index] = ((batch.activations[name] * mask[..., None]).sum(1) / mask.sum(1)[:, None]).numpy()
    # documents with identical text are one unit (the split holds one such pair): their folds group them, as ours do
    first: dict[str, int] = {}
    units = np.array([first.setdefault(data.texts[d], d) for d in keep])

    def folds(k: int, seed: int, rows: np.ndarray):
        grouped = len(np.unique(units[rows])) < len(rows)
        scheme = (StratifiedGroupKFold if grouped else StratifiedKFold)(k, shuffle=True, random_state=seed)
        return list(scheme.split(rows, y[rows], units[rows] if grouped else None))

    for layer in range(len(names_)):
        Z = X[layer, keep]
        accuracy = []
        for f, (train, test) in enumerate(folds(5, 0, np.arange(len(keep)))):
            search = GridSearchCV(
                make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)), {"logisticregression__C": list(DEFAULT_CS)},
                cv=folds(3, 1 + f, train),
            )
            with threadpool_limits(1):  # BLAS threads on small problems: many times slower on a loaded machine
                accuracy.append(search.fit(Z[train], y[train]).score(Z[test], y[test]))
        assert abs(ours.loc[layer, "value"] - np.mean(accuracy)) <= 0.01, (layer, ours.loc[layer, "value"], np.mean(accuracy))


def test_feature_collector_pools_real_tokens(checkpoint, docs):
    """mean: over the real tokens after BOS (padding never counts); last: the last real token;
    an int: that token position -- each checked against the raw activations."""
    from plastiscope.activations import run_pass, stream
    from plastiscope.probes import FeatureCollector

    data = docs.subset(range(40))
    requests = [(i, "mean") for i in range(40)] + [(i, "last") for i in range(40)] + [(i, 1) for i in range(40)]
    collector = FeatureCollector([0, 1], requests)
    run_pass(checkpoint, data, [collector], batch_size=8, progress=False)
    features = collector.take(requests)  # [layer, request, d]
    names = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    for batch in stream(checkpoint, data, names, batch_size=8, progress=False):
        for b, doc in enumerate(batch.doc_index.tolist()):
            length = int(batch.mask[b].sum())
            for layer, name in enumerate(names):
                acts = batch.activations[name][b]
                torch.testing.assert_close(features[layer, doc], acts[1:length].mean(0))
                torch.testing.assert_close(features[layer, 40 + doc], acts[length - 1])
                torch.testing.assert_close(features[layer, 80 + doc], acts[1])
