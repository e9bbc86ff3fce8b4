"""Plasticity: fine-tuning copies, the loss convention, label scoring, downstream data, and the analysis end to end."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from plastiscope.data import Documents, encode, load_documents
from plastiscope.demo.corpus import load_corpus
from plastiscope.downstream import DownstreamTask, label_accuracy, labelled_ids, split_indices, task_ids
from plastiscope.losses import document_losses, mean_per_document
from plastiscope.plasticity import finetune, parameter_distance
from plastiscope.results import ResultsStore
from plastiscope.runner import Inputs, prepare, run_analyses
from plastiscope.training import trainable_copy

TINY_OPTIONS = {"steps": 4, "batch_size": 8, "learning_rates": [1e-4, 3e-3], "eval_docs": 24, "select_docs": 12,
                "train_docs": 64, "n_resamples": 200}


def test_split_is_disjoint_seeded_and_checked():
    ev, sel, tr = split_indices(100, 20, 10, 50, seed=0)
    assert len(ev) == 20 and len(sel) == 10 and len(tr) == 50
    assert len(set(ev) | set(sel) | set(tr)) == 80
    again = split_indices(100, 20, 10, 50, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip((ev, sel, tr), again))
    assert not np.array_equal(ev, split_indices(100, 20, 10, 50, seed=1)[0])
    with pytest.raises(ValueError, match="fewer than eval_docs"):
        split_indices(30, 20, 10, 50, seed=0)


def test_downstream_data_is_keyed_by_content(tiny_sweep, tmp_path):
    topic = DownstreamTask.from_documents(load_corpus("finetune"), "topic")
    assert topic.label_name == "topic" and set(topic.labels) == {"plant", "food", "weather"}
    assert DownstreamTask.from_documents(load_corpus("finetune")).labels is None

    file = tmp_path / "data.jsonl"
    file.write_text("\n".join(json.dumps({"text": f"doc {i}", "label": "ab"[i % 2]}) for i in range(120)))
    task = DownstreamTask.from_documents(load_documents(file, label_column="label"), "label")
    assert task.name == "data" and task.labels[:3] == ["a", "b", "a"]
    options = {"plasticity": {**TINY_OPTIONS, "steps": 1, "learning_rates": [1e-3], "label_column": "label"}}
    store = ResultsStore(tmp_path / "results")
    first, _ = run_analyses(tiny_sweep[:1], ["plasticity"], Inputs(finetune_data=load_documents(file)), options, store, progress=False)
    file.write_text(file.read_text().replace("doc 3", "doc three"))  # same name, new content: never a stale result
    pieces = set((tmp_path / "results" / "cache").glob("plasticity-*.parquet"))
    run_analyses(tiny_sweep[:1], ["plasticity"], Inputs(finetune_data=load_documents(file)), options, store, progress=False)
    assert len(set((tmp_path / "results" / "cache").glob("plasticity-*.parquet")) - pieces) == 1
    assert set(first.task) == {"data"}


def test_labelled_sequence_keeps_its_label_when_the_text_is_truncated(tiny_sweep):
    tokenizer = tiny_sweep[0].tokenizer
    ids, at = labelled_ids(tokenizer, "a plant with leaves", "topic", "plant", 48)
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids[1:]) == "a plant with leaves topic: plant"
    assert tokenizer.decode(ids[at:]) == " plant"
    long_text = " ".join(["green leaves"] * 100)
    ids, at = labelled_ids(tokenizer, long_text, "topic", "plant", 48)
    cue = tokenizer(" topic:", add_special_tokens=False)["input_ids"]
    assert len(ids) == 48 and tokenizer.decode(ids[at:]) == " plant" and ids[at - len(cue) : at] == cue
    assert ids[: at - len(cue)] == encode(tokenizer, long_text, at - len(cue))  # the text part, truncated


class _Favours(torch.nn.Module):
    """A stand-in language model whose next-token distribution always favours one token."""

    def __init__(self, vocab: int, token: int):
        super().__init__()
        self.vocab, self.token = vocab, token

    def forward(self, tokens, attention_mask=None):
        logits = torch.zeros(*tokens.shape, self.vocab)
        logits[..., self.token] = 5.0
        return SimpleNamespace(logits=logits)


def test_label_accuracy_is_rank_classification_of_candidates(tiny_sweep):
    tokenizer = tiny_sweep[0].tokenizer
    labels = ["the", "of", "of", "the", "of", "of", "the", "of"]
    task = DownstreamTask("toy", Documents([f"word {i}" for i in range(8)]), "label", labels)
    the = tokenizer(" the", add_special_tokens=False)["input_ids"]
    assert len(the) == 1 and len(tokenizer(" of", add_special_tokens=False)["input_ids"]) == 1
    rows = [0, 1, 2, 3, 6]
    correct = label_accuracy(_Favours(len(tokenizer), the[0]), task, tokenizer, 48, rows, tokenizer.pad_token_id, 2)
    np.testing.assert_array_equal(correct, [labels[i] == "the" for i in rows])  # always predicts "the"


def test_document_losses_match_per_document_hf_loss(tiny_sweep):
    checkpoint = tiny_sweep[0]
    model, tokenizer = checkpoint.hf_model, checkpoint.tokenizer
    texts = load_corpus("finetune", 7).texts
    ids = [encode(tokenizer, t, checkpoint.n_ctx) for t in texts]
    losses = mean_per_document(*document_losses(model, ids, tokenizer.pad_token_id, batch_size=3))  # padded batches
    with torch.no_grad():
        expected = [float(model(torch.tensor([x]), labels=torch.tensor([x])).loss) for x in ids]  # one at a time
    np.testing.assert_allclose(losses, expected, rtol=1e-5)


def _weights(model) -> dict[str, torch.Tensor]:
    """Parameters by name, without the bridge's wrapper names."""
    return {name.replace("._original_component", ""): p.detach().clone() for name, p in model.named_parameters()}


def test_finetune_trains_a_copy_and_never_the_checkpoint(tiny_sweep):
    checkpoint = tiny_sweep[0]
    model, tokenizer = checkpoint.hf_model, checkpoint.tokenizer
    before = _weights(model)
    ids = task_ids(DownstreamTask.from_documents(load_corpus("finetune")), tokenizer, checkpoint.n_ctx, range(32))
    copied = trainable_copy(model)
    assert _weights(copied).keys() == before.keys() and all(torch.equal(v, before[k]) for k, v in _weights(copied).items())
    tokens = torch.tensor([ids[0]])
    with torch.no_grad():
        assert torch.equal(copied(tokens).logits, model(tokens).logits)
    tuned, diverged = finetune(model, ids, tokenizer.pad_token_id, steps=3, batch_size=4, learning_rate=1e-2, seed=0)
    assert not diverged
    assert all(torch.equal(v, before[k]) for k, v in _weights(model).items())
    after = _weights(tuned)
    assert any(not torch.equal(after[k], before[k]) for k in before)
    again, _ = finetune(model, ids, tokenizer.pad_token_id, steps=3, batch_size=4, learning_rate=1e-2, seed=0)
    assert all(torch.equal(v, after[k]) for k, v in _weights(again).items())  # same batches, same result
    losses = mean_per_document(*document_losses(model, ids, tokenizer.pad_token_id))
    assert mean_per_document(*document_losses(tuned, ids, tokenizer.pad_token_id)).mean() < losses.mean()


def test_finetuning_gains_little_on_own_training_data_and_more_on_new_data(tiny_sweep):
    """A held-out domain (the finetune split) gains clearly more than the checkpoint's own training data.

    The tiny checkpoints saw only 40 steps, so continued training on their own first 400 documents
    still lowers the loss (about 0.56x the new-domain gain here), just clearly less than new data."""
    options = {"steps": 15, "learning_rates": [1e-3], "eval_docs": 48, "select_docs": 16, "train_docs": 256, "n_resamples": 500}
    frames = []
    for name, docs in (("own", load_corpus("train", 400)), ("finetune", load_corpus("finetune"))):
        results, failures = run_analyses(tiny_sweep[:1], ["plasticity"], Inputs(finetune_data=docs),
                                         options={"plasticity": {**options, "task_name": name}}, progress=False)
        assert failures.empty, failures.to_dict("records")
        frames.append(results)
    results = pd.concat(frames)
    gain = results[results.metric == "plasticity_gain"].set_index("task")
    assert gain.loc["finetune", "ci_low"] > 0
    assert gain.loc["own", "ci_high"] < gain.loc["finetune", "ci_low"]
    assert gain.loc["own", "value"] < 0.75 * gain.loc["finetune", "value"]


@pytest.mark.parametrize("label_column", [None, "topic"])
def test_plasticity_end_to_end_schema_selection_and_cache(tiny_sweep, tmp_path, label_column):
    options = {**TINY_OPTIONS, "label_column": label_column}
    store = ResultsStore(tmp_path)
    inputs = Inputs(finetune_data=load_corpus("finetune"))
    results, failures = run_analyses(tiny_sweep, ["plasticity"], inputs, options={"plasticity": options}, store=store,
                                     progress=False)
    assert failures.empty, failures.to_dict("records")
    assert sorted(results.weight_decay.unique()) == [0.0, 0.1, 1.0]
    for (name, task), group in results.groupby(["checkpoint", "task"], sort=False):
        m = group.set_index("metric")
        expected = {"downstream_loss_before", "downstream_loss_after", "plasticity_gain", "finetune_displacement",
                    "downstream_selection_loss"}
        if label_column is not None:
            expected |= {"downstream_accuracy_before", "downstream_accuracy_after"}
        assert set(m.index) == expected
        # the outcome first: performance after fine-tuning, then before, then the secondary rows
        first = ["downstream_loss_after"] + (["downstream_accuracy_after"] if label_column else []) + ["downstream_loss_before"]
        assert list(group["metric"])[: len(first)] == first
        assert m.loc["plasticity_gain", "value"] == pytest.approx(
            m.loc["downstream_loss_before", "value"] - m.loc["downstream_loss_after", "value"], abs=1e-9)
        assert m.loc["plasticity_gain", "ci_low"] <= m.loc["plasticity_gain", "value"] <= m.loc["plasticity_gain", "ci_high"]
        assert m.loc["downstream_loss_after", "n"] == 24
        selection = m.loc["downstream_selection_loss"]
        assert sorted(selection.finetune_lr) == [1e-4, 3e-3]
        best = selection.finetune_lr.to_numpy()[np.argmin(selection.value.to_numpy())]
        assert m.loc["downstream_loss_after", "selected_lr"] == best
        assert m.loc["finetune_displacement", "selected_lr"] == best and m.loc["finetune_displacement", "value"] > 0
    cached, _ = run_analyses(tiny_sweep, ["plasticity"], inputs, options={"plasticity": options}, store=store, progress=False)
    np.testing.assert_array_equal(cached.value.to_numpy(), results.value.to_numpy())


def test_finetune_displacement_is_the_distance_of_the_selected_run(tiny_sweep):
    """finetune_displacement against a direct computation: the selected run repeated (same batches), the
    flattened parameters compared in float64 with numpy."""
    checkpoint = tiny_sweep[2]
    options = {**TINY_OPTIONS, "learning_rates": [3e-3, 1e-2]}
    results, failures = run_analyses(checkpoint, ["plasticity"], Inputs(finetune_data=load_corpus("finetune")),
                                     options={"plasticity": options}, progress=False)
    assert failures.empty, failures.to_dict("records")
    row = results[results.metric == "finetune_displacement"].iloc[0]
    assert row.n == TINY_OPTIONS["train_docs"]
    task = DownstreamTask.from_documents(load_corpus("finetune"))
    _, _, train_rows = split_indices(len(task.documents), 24, 12, 64, seed=0)
    ids = task_ids(task, checkpoint.tokenizer, checkpoint.n_ctx, train_rows)
    tuned, _ = finetune(checkpoint.hf_model, ids, checkpoint.tokenizer.pad_token_id, steps=4, batch_size=8,
                        learning_rate=row.selected_lr, seed=0)
    before = _weights(checkpoint.hf_model)
    after = _weights(tuned)
    assert after.keys() == before.keys()
    flat = lambda weights: np.concatenate([weights[k].double().numpy().ravel() for k in sorted(weights)])  # noqa: E731
    want = np.linalg.norm(flat(after) - flat(before))
    assert row.value == pytest.approx(want, rel=1e-9)
    assert parameter_distance(checkpoint.hf_model, tuned) == pytest.approx(want, rel=1e-12)
    assert parameter_distance(checkpoint.hf_model, trainable_copy(checkpoint.hf_model)) == 0.0


def _plasticity_in(device: str, dtype: str, path) -> pd.DataFrame:
    from plastiscope import Checkpoint

    checkpoint = Checkpoint.from_pretrained(path).to(device=device, dtype=dtype)
    model = checkpoint.hf_model
    assert next(model.parameters()).device.type == device and next(model.parameters()).dtype == getattr(torch, dtype)
    copied = trainable_copy(model)  # float32 master weights on the checkpoint's device
    assert {(p.device.type, p.dtype) for p in copied.parameters()} == {(device, torch.float32)}
    options = {**TINY_OPTIONS, "steps": 8, "learning_rates": [3e-3], "label_column": "topic"}
    results, failures = run_analyses(checkpoint, ["plasticity"], Inputs(finetune_data=load_corpus("finetune")),
                                      options={"plasticity": options}, progress=False)
    assert failures.empty, failures.to_dict("records")
    m = results.set_index("metric")
    assert np.isfinite(m.loc[["downstream_loss_after", "downstream_loss_before", "finetune_displacement"], "value"]).all()
    assert m.loc["downstream_loss_after", "value"] < m.loc["downstream_loss_before", "value"]
    return results


def test_plasticity_on_a_bfloat16_checkpoint(tiny_sweep):
    """A bfloat16 checkpoint fine-tunes float32 master weights under bfloat16 autocast, and before and after are
    measured in bfloat16: after and before agree with the float32 run to bfloat16 precision."""
    bf16 = _plasticity_in("cpu", "bfloat16", tiny_sweep[1].path).set_index("metric")
    fp32 = _plasticity_in("cpu", "float32", tiny_sweep[1].path).set_index("metric")
    for metric in ("downstream_loss_before", "downstream_loss_after"):
        assert bf16.loc[metric, "value"] == pytest.approx(fp32.loc[metric, "value"], rel=0.02)
        assert bf16.loc[metric, "value"] != fp32.loc[metric, "value"]  # bfloat16 really was used


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_plasticity_on_cuda(tiny_sweep, dtype):
    """The fine-tuned copy lives on the checkpoint's CUDA device; the outcome matches the CPU run."""
    cuda = _plasticity_in("cuda", dtype, tiny_sweep[1].path).set_index("metric")
    cpu = _plasticity_in("cpu", dtype, tiny_sweep[1].path).set_index("metric")
    for metric in ("downstream_loss_before", "downstream_loss_after", "finetune_displacement"):
        assert cuda.loc[metric, "value"] == pytest.approx(cpu.loc[metric, "value"], rel=0.03 if dtype == "bfloat16" else 0.01)


def test_plasticity_rejects_bad_options(tiny_sweep):
    inputs = Inputs(finetune_data=load_corpus("finetune"))
    with pytest.raises(ValueError, match="unknown option"):
        prepare(["plasticity"], inputs, {"plasticity": {"lr": 1e-3}})
    with pytest.raises(ValueError, match="learning_rates"):
        prepare(["plasticity"], inputs, {"plasticity": {"learning_rates": []}})
    with pytest.raises(ValueError, match="needs --finetune-data"):
        prepare(["plasticity"], Inputs(), {})
    _, failures = run_analyses(tiny_sweep[0], ["plasticity"], inputs, {"plasticity": {"label_column": "sentiment"}}, progress=False)
    assert "no column 'sentiment'" in failures.error.item()
