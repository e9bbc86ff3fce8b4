"""Fine-tuning as teams do it: prompt/response data, response-only loss, generative scoring, LoRA, the memory check."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from plastiscope.data import DataError, Documents, load_documents
from plastiscope.demo.corpus import load_corpus
from plastiscope.downstream import (
    DownstreamTask,
    exact_match,
    generation_prompts,
    generative_scores,
    greedy_continuations,
    normalize_answer,
    sft_ids,
    split_indices,
)
from plastiscope.losses import document_losses, from_position, mean_per_document, sequence_loss
from plastiscope.options import validate
from plastiscope.plasticity import analysis as plasticity_analysis
from plastiscope.plasticity.analysis import OPTIONS, finetune, lora_config, memory_estimate
from plastiscope.plasticity.memory import GIB, HEADROOM
from plastiscope.runner import Inputs, run_analyses

HERE = Path(__file__).parent
TINY_SFT = {"steps": 20, "batch_size": 8, "learning_rates": [3e-3, 1e-2], "eval_docs": 24, "select_docs": 12, "train_docs": 96,
            "n_resamples": 200}


def topic_records(n: int | None = None) -> list[dict[str, str]]:
    """The embedded corpus's fine-tuning split as prompt/response records: a gloss, then its topic word."""
    docs = load_corpus("finetune", n)
    return [{"prompt": f"{text} topic:", "response": f" {topic}"} for text, topic in zip(docs.texts, docs.column("topic"))]


def topic_task(tmp_path: Path, n: int | None = None) -> DownstreamTask:
    """:func:`topic_records` written as JSONL and read back as a prompt/response task (no flags)."""
    path = tmp_path / "topics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in topic_records(n)))
    return DownstreamTask.from_documents(load_documents(path))


def _config(**options):
    return validate("plasticity", OPTIONS, options)


# -- data ------------------------------------------------------------------------------------------------------


def test_prompt_response_and_chat_records_are_fine_tuning_documents(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "2+2=", "response": " 4"}\n{"prompt": "3+3=", "response": " 6", "id": 7}\n')
    docs = load_documents(pairs)
    assert docs.texts == ["2+2= 4", "3+3= 6"] and docs.columns["response"] == [" 4", " 6"] and docs.columns["id"] == [None, 7]
    assert DownstreamTask.from_documents(docs).sft == ("prompt", "response")
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n")
    task = DownstreamTask.from_documents(load_documents(chat))
    assert task.sft == ("messages",) and task.reference(0) == "hello"
    assert task.documents.texts == ["system: be brief\nuser: hi\nassistant: hello"]
    assert DownstreamTask.from_documents(load_corpus("finetune", 10)).sft is None  # a text column: a plain task
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": ""}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: .*response non-empty"):
        load_documents(bad)
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: the last message must be a non-empty \"assistant\" message"):
        load_documents(bad)


def test_sequences_plain_and_through_a_chat_template(tiny_sweep, tmp_path):
    tokenizer = tiny_sweep[0].tokenizer
    task = topic_task(tmp_path, 20)
    record = topic_records(20)[3]
    ids, at = sft_ids(task, tokenizer, 1000, [3])[0]
    words = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert ids == [tokenizer.bos_token_id] + words(record["prompt"]) + words(record["response"]) + [tokenizer.eos_token_id]
    assert at == 1 + len(words(record["prompt"]))
    # a long prompt keeps BOS, its end and the whole response
    short, at = sft_ids(task, tokenizer, 8, [3])[0]
    response = words(record["response"]) + [tokenizer.eos_token_id]
    assert len(short) == 8 and short[0] == tokenizer.bos_token_id and short[at:] == response
    assert short[1:at] == words(record["prompt"])[-(at - 1) :]
    # with a chat template: the rendered chat, the response after the generation prompt
    templated = copy.deepcopy(tokenizer)
    templated.chat_template = ("{% for m in messages %}{{ m['role'] }}:{{ m['content'] }}<|eos|>{% endfor %}"
                               "{% if add_generation_prompt %}assistant:{% endif %}")
    ids, at = sft_ids(task, templated, 1000, [3])[0]
    prompt_text = f"user:{record['prompt']}<|eos|>assistant:"
    assert ids == tokenizer(prompt_text + record["response"] + "<|eos|>", add_special_tokens=False)["input_ids"]
    assert ids[:at] == tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids[at:]) == record["response"] + "<|eos|>"


# -- the response-only loss --------------------------------------------------------------------------------------


def test_response_only_loss_equals_transformers_loss_with_prompt_labels_ignored(tiny_sweep, tmp_path):
    checkpoint = tiny_sweep[1]
    model, tokenizer = checkpoint.hf_model, checkpoint.tokenizer
    task = topic_task(tmp_path, 40)
    pairs = sft_ids(task, tokenizer, checkpoint.n_ctx, range(9))
    ids, starts = [p for p, _ in pairs], [a for _, a in pairs]
    assert len({len(x) for x in ids}) > 3 and len(set(starts)) > 3  # padded batches, responses at different places
    expected = []
    for x, at in pairs:  # one document at a time, transformers' own loss: labels -100 on the prompt
        labels = torch.tensor([[-100] * at + x[at:]])
        with torch.no_grad():
            expected.append(float(model(torch.tensor([x]), labels=labels).loss))
    got = mean_per_document(*document_losses(model, ids, tokenizer.pad_token_id, batch_size=4, first_target=starts))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # the training loss of a padded batch: labels -100 on the prompt and the padding, one mean over the batch's targets
    tokens = torch.full((len(ids), max(map(len, ids))), tokenizer.pad_token_id)
    labels = torch.full_like(tokens, -100)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    for i, (x, at) in enumerate(pairs):
        tokens[i, : len(x)] = torch.tensor(x)
        labels[i, at : len(x)] = torch.tensor(x[at:])
        mask[i, : len(x)] = True
    with torch.no_grad():
        want = float(model(tokens, attention_mask=mask.long(), labels=labels).loss)
        have = float(sequence_loss(model, tokens, mask, from_position(mask, starts)))
        whole = float(sequence_loss(model, tokens, mask))
    assert have == pytest.approx(want, rel=1e-5)
    assert abs(whole - want) > 0.1  # the prompt's tokens really were left out


# -- generative scoring ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "answer"), [
    ("The answer is 72.", "72"), ("so 3 + 4 = 7\n#### 1,234", "1234"), ("$1,200.50", "1200.5"), ("4.0", "4"),
    ("  Paris.\nThe capital of France.", "paris"), ("The Answer is:  New   York!", "new york"), ("-0.0", "0"),
])
def test_normalize_answer(text, answer):
    assert normalize_answer(text) == answer


def _naive_greedy(model, prompt: list[int], max_new_tokens: int, eos: int) -> list[int]:
    """Argmax decoding one token at a time, the whole sequence through the model each time (no cache, no padding)."""
    out = list(prompt)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(model(torch.tensor([out])).logits[0, -1].argmax())
            if token == eos:
                break
            out.append(token)
    return out[len(prompt) :]


def test_generative_exact_match_equals_a_naive_decoding_loop(tiny_sweep, tmp_path):
    checkpoint = tiny_sweep[0]
    model, tokenizer = checkpoint.hf_model, checkpoint.tokenizer
    task = topic_task(tmp_path)
    eval_rows, _, train_rows = split_indices(len(task.documents), 20, 4, 128, seed=0)
    train = sft_ids(task, tokenizer, checkpoint.n_ctx, train_rows)
    tuned, _ = finetune(model, [x for x, _ in train], tokenizer.pad_token_id, 25, 8, 1e-2, first_target=[a for _, a in train])
    new = 4
    prompts = generation_prompts(task, tokenizer, checkpoint.n_ctx, eval_rows, new)
    assert len({len(p) for p in prompts}) > 3  # left padding matters
    naive = [_naive_greedy(tuned, p, new, tokenizer.eos_token_id) for p in prompts]
    assert greedy_continuations(tuned, prompts, new, tokenizer.eos_token_id, batch_size=6) == naive
    references = [task.reference(r) for r in eval_rows]
    want = [float(normalize_answer(tokenizer.decode(c, skip_special_tokens=True)) == normalize_answer(ref))
            for c, ref in zip(naive, references)]
    seen = []

    def contains(prediction: str, reference: str) -> float:
        seen.append(reference)
        return float(reference.strip() in prediction)

    scores = generative_scores(tuned, task, tokenizer, checkpoint.n_ctx, eval_rows, new, [exact_match, contains], batch_size=7)
    np.testing.assert_array_equal(scores[:, 0], want)
    assert 0 < scores[:, 0].mean() < 1  # some answers right, some wrong: the comparison is not trivial
    assert seen == references and set(np.unique(scores[:, 1])) <= {0.0, 1.0}


# -- LoRA ------------------------------------------------------------------------------------------------------


def test_lora_at_full_rank_moves_the_loss_like_full_fine_tuning(tiny_sweep):
    """Full-rank LoRA (r = d_model = 32, the smaller side of every matrix, alpha = r) on every matrix against full fine-tuning,
    same batches, steps and learning rate: the held-out loss decrease agrees within 25 %.

    Not equal: LoRA trains ``W + B A`` from ``B = 0``, whose Adam steps differ from Adam's on ``W``, and full fine-tuning
    also trains the norms; measured, the ratio is 1.10 at lr 1e-3 and 0.97 at 3e-3. A rank-2 LoRA, by contrast, moves
    the loss at most half as much (measured 0.26-0.33): the comparison can tell ranks apart."""
    checkpoint = tiny_sweep[1]
    model, tokenizer = checkpoint.hf_model, checkpoint.tokenizer
    task = DownstreamTask.from_documents(load_corpus("finetune"))
    from plastiscope.downstream import task_ids

    ids = task_ids(task, tokenizer, checkpoint.n_ctx, range(200))
    train, held = ids[:160], ids[160:]
    base = mean_per_document(*document_losses(model, held, tokenizer.pad_token_id)).mean()
    matrices = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head", "embed_tokens"]

    def drop(rank: int | None) -> float:
        lora = None if rank is None else lora_config(_config(method="lora", lora_rank=rank, lora_alpha=float(rank),
                                                                 lora_target_modules=matrices))
        tuned, diverged = finetune(model, train, tokenizer.pad_token_id, 30, 8, 3e-3, seed=0, lora=lora)
        assert not diverged
        return base - mean_per_document(*document_losses(tuned, held, tokenizer.pad_token_id)).mean()

    full, full_rank, rank2 = drop(None), drop(32), drop(2)
    assert full > 0.2
    assert 0.8 < full_rank / full < 1.25
    assert rank2 / full < 0.5


# -- the memory check ------------------------------------------------------------------------------------------


def test_memory_estimate_parts_follow_the_formula(tiny_sweep):
    model = tiny_sweep[0].hf_model
    n = sum(p.numel() for p in model.parameters())
    full = memory_estimate(model, _config(batch_size=4), 40, None)
    assert (full.weights, full.gradients, full.optimizer) == (4 * n, 4 * n, 8 * n)
    lora_options = _config(method="lora", lora_rank=4)
    lora = memory_estimate(model, lora_options, 40, None)
    tuned, _ = finetune(model, [[1, 2, 3, 4]] * 2, 0, 1, 2, 1e-3, lora=lora_config(lora_options))
    trainable, total = tuned.get_nb_trainable_parameters()  # counted by peft on the real adapters
    assert (lora.weights, lora.gradients, lora.optimizer) == (4 * n + 4 * trainable, 4 * trainable, 8 * trainable)
    assert total == n + trainable
    checkpointed = memory_estimate(model, _config(batch_size=4, gradient_checkpointing=True), 40, None)
    assert checkpointed.activations < full.activations
    double = memory_estimate(model, _config(batch_size=8), 40, None)
    assert double.activations == 2 * full.activations


_MEASURE = """
import gc, sys
import torch
sys.path.insert(0, {here!r})
torch.set_num_threads(1)
from tests_support import peak_rss_during, tiny_llama
from plastiscope.options import validate
from plastiscope.plasticity.analysis import OPTIONS, finetune, lora_config, memory_estimate
model = tiny_llama(4, d_model=128, context=128).hf_model
rows = torch.randint(3, 500, (64, 128), generator=torch.Generator().manual_seed(0)).tolist()
for method, checkpointing in (("full", False), ("lora", True)):
    config = validate("plasticity", OPTIONS, {{"method": method, "gradient_checkpointing": checkpointing, "batch_size": 16}})
    lora = lora_config(config) if method == "lora" else None
    finetune(model, rows[:2], 0, 1, 1, 1e-3, lora=lora, gradient_checkpointing=checkpointing)  # lazy imports, first allocations
    gc.collect()
    peak = peak_rss_during(lambda: finetune(model, rows, 0, 2, 16, 1e-3, lora=lora, gradient_checkpointing=checkpointing))
    e = memory_estimate(model, config, 128, None)
    print(method, peak, e.weights + e.gradients + e.optimizer + e.activations)
"""


def test_memory_estimate_is_within_a_quarter_of_the_measured_peak_on_cpu():
    """Peak resident memory of fine-tuning (4 layers, d_model 128, 16 x 128 tokens, float32; full and LoRA with gradient
    checkpointing) in a fresh process, with glibc returning every freed block over 64 KiB to the system
    (``MALLOC_MMAP_THRESHOLD_``) so that the resident size follows the live tensors: the estimate of training is within a
    factor 1.25 of it either way (measured / estimated: 0.97 full, 1.04 LoRA)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _MEASURE.format(here=str(HERE))], capture_output=True, text=True, env=env,
                         timeout=600, check=True)
    lines = [line.split() for line in out.stdout.splitlines() if line.startswith(("full ", "lora "))]
    assert [m for m, _, _ in lines] == ["full", "lora"]
    for method, measured, estimated in lines:
        assert 1 / 1.25 < int(measured) / int(estimated) < 1.25, (method, measured, estimated)


def test_a_run_that_cannot_fit_is_refused_before_training_and_names_what_fits(tmp_path, monkeypatch):
    sys.path.insert(0, str(HERE))
    from tests_support import tiny_llama

    checkpoint = tiny_llama(4, d_model=256, context=32)  # 3.4 M parameters: the weights and AdamW state dominate
    docs = Documents([r["prompt"] + r["response"] for r in topic_records(120)],
                     {k: [r[k] for r in topic_records(120)] for k in ("prompt", "response")})
    options = {**TINY_SFT, "steps": 2, "batch_size": 2, "learning_rates": [1e-3], "eval_batch_size": 8}
    full = memory_estimate(checkpoint.hf_model, _config(**options), 32, None, 8)
    lora = memory_estimate(checkpoint.hf_model, _config(**options, method="lora"), 32, None, 8)
    assert lora.total < full.total / 2
    limit = (lora.total + full.total) / 2 / HEADROOM / GIB  # full fine-tuning does not fit, LoRA does
    trained = []
    real_train = plasticity_analysis.train
    monkeypatch.setattr(plasticity_analysis, "train", lambda *a, **k: trained.append(1) or real_train(*a, **k))

    _, failures = run_analyses(checkpoint, ["plasticity"], Inputs(finetune_data=docs),
                               {"plasticity": {**options, "memory_limit_gb": limit}}, progress=False)
    error = failures.error.item()
    assert "needs ~" in error and "MiB available" in error and "set -o plasticity.method=lora (" in error
    assert "gradient_checkpointing=true (" not in error.replace("method=lora -o plasticity.gradient", "")  # it would not fit
    assert trained == []  # refused before any training step
    results, failures = run_analyses(checkpoint, ["plasticity"], Inputs(finetune_data=docs),
                                     {"plasticity": {**options, "memory_limit_gb": limit, "method": "lora"}}, progress=False)
    assert failures.empty, failures.to_dict("records")
    assert trained == [1] and set(results.finetune_method.dropna()) == {"lora"}
    _, failures = run_analyses(checkpoint, ["plasticity"], Inputs(finetune_data=docs),
                               {"plasticity": {**options, "memory_limit_gb": 1e-4}}, progress=False)
    assert "none of LoRA, gradient checkpointing or batch size 1 fits" in failures.error.item()


# -- the analysis end to end --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["full", "lora"])
def test_sft_task_with_generative_accuracy_under_plasticity(tiny_sweep, tmp_path, method):
    path = tmp_path / "topics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in topic_records()))
    calls = []

    def starts_right(prediction: str, reference: str) -> float:
        calls.append(reference)
        return float(prediction.strip()[:3] == reference.strip()[:3])

    # LoRA adapts the output layer too: these 40-step checkpoints never ended a gloss with " topic: <word><|eos|>"
    lora = {"lora_rank": 8, "lora_alpha": 32.0, "gradient_checkpointing": True,
            "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]}
    options = {**TINY_SFT, "method": method, "scorer": starts_right, **(lora if method == "lora" else {})}
    results, failures = run_analyses(tiny_sweep, ["plasticity"], Inputs(finetune_data=load_documents(path)),
                                     {"plasticity": options}, progress=False)
    assert failures.empty, failures.to_dict("records")
    # each checkpoint: before, then after each learning rate that was the best so far (one or two), every evaluation prompt
    assert 3 * 2 * 24 <= len(calls) <= 3 * 3 * 24 and len(calls) % 24 == 0
    records = topic_records()
    eval_rows = split_indices(len(records), 24, 12, 96, seed=0)[0]
    assert calls[:24] == [records[i]["response"] for i in eval_rows]  # the scorer sees the evaluation documents' responses
    for _, group in results.groupby("checkpoint"):
        m = group.set_index("metric")
        assert list(group.metric[:3]) == ["response_loss_after", "generative_accuracy_after", "generative_score_after"]
        assert {"response_loss_before", "generative_accuracy_before", "generative_score_before", "plasticity_gain",
                "finetune_displacement", "downstream_selection_loss"} <= set(m.index)
        assert "downstream_loss_after" not in m.index
        assert m.loc["response_loss_after", "n"] == 24 and m.loc["generative_accuracy_after", "n"] == 24
        assert m.loc["response_loss_after", "value"] < m.loc["response_loss_before", "value"]
        assert m.loc["plasticity_gain", "ci_low"] > 0
        low, value, high = m.loc["generative_accuracy_after", ["ci_low", "value", "ci_high"]]
        assert 0 <= low <= value <= high <= 1
        assert m.loc["response_loss_after", "finetune_method"] == method
    accuracy = results[results.metric == "generative_accuracy_after"].value
    assert accuracy.max() > results[results.metric == "generative_accuracy_before"].value.max()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("method", "checkpointing"), [("full", False), ("full", True), ("lora", True)])
def test_memory_estimate_against_cuda_peak_in_bfloat16(method, checkpointing):
    """On a GPU: the estimate of training (bfloat16 checkpoint, autocast, SDPA) against ``torch.cuda.max_memory_allocated``
    above what was allocated before, within a factor 1.5 either way (the allocator's rounding and work buffers are not in
    the formula)."""
    sys.path.insert(0, str(HERE))
    from tests_support import tiny_llama

    checkpoint = tiny_llama(4, d_model=256, context=256).to(device="cuda", dtype="bfloat16")
    model = checkpoint.hf_model
    rows = torch.randint(3, 500, (64, 256), generator=torch.Generator().manual_seed(0)).tolist()
    config = _config(method=method, gradient_checkpointing=checkpointing, batch_size=16)
    lora = lora_config(config) if method == "lora" else None
    finetune(model, rows[:2], 0, 1, 1, 1e-3, autocast=torch.bfloat16, lora=lora, gradient_checkpointing=checkpointing)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    finetune(model, rows, 0, 2, 16, 1e-3, autocast=torch.bfloat16, lora=lora, gradient_checkpointing=checkpointing)
    measured = torch.cuda.max_memory_allocated() - before
    e = memory_estimate(model, config, 256, torch.bfloat16)
    estimated = e.weights + e.gradients + e.optimizer + e.activations
    assert 1 / 1.5 < measured / estimated < 1.5, (measured, estimated)


def test_a_prompt_response_jsonl_as_finetune_data_needs_no_flag(tiny_manifest, tmp_path):
    import csv

    import pandas as pd
    from typer.testing import CliRunner

    from plastiscope.cli import app

    path = tmp_path / "sft.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in topic_records(80)))
    with tiny_manifest.open(newline="") as f:
        folder = tiny_manifest.parent / next(csv.DictReader(f))["path"]
    options = ["-o", "plasticity.steps=2", "-o", "plasticity.learning_rates=0.003", "-o", "plasticity.eval_docs=8",
               "-o", "plasticity.select_docs=4", "-o", "plasticity.n_resamples=50", "-o", "plasticity.method=lora"]
    result = CliRunner().invoke(app, ["analyze", str(folder), "--out", str(tmp_path / "out"), "--finetune-data", str(path),
                                      "--analyses", "plasticity", *options])
    assert result.exit_code == 0, result.output
    metrics = set(pd.read_parquet(tmp_path / "out" / "metrics.parquet").metric)
    assert {"response_loss_after", "generative_accuracy_after", "response_loss_before", "generative_accuracy_before"} <= metrics
