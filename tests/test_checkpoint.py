"""Checkpoints and sweeps: the listed architectures load offline, bad inputs fail clearly."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
)

from plastiscope import Checkpoint, CheckpointError, Sweep
from plastiscope.activations import stream
from plastiscope.demo.corpus import load_corpus
from plastiscope.demo.tokenizer import train_tokenizer

ARCHITECTURES = {
    "gpt2": lambda v: GPT2LMHeadModel(GPT2Config(vocab_size=v, n_embd=32, n_layer=2, n_head=4, n_positions=48)),
    "llama": lambda v: LlamaForCausalLM(LlamaConfig(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=48)),
    "gpt_neox": lambda v: GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                           num_attention_heads=4, max_position_embeddings=48)),
    "olmo2": lambda v: Olmo2ForCausalLM(Olmo2Config(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=48)),
}


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(load_corpus("train", 500).texts, 300)


def save(model, tokenizer, folder, **hyper):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if hyper:
        (folder / "plastiscope.json").write_text(json.dumps(hyper))
    return folder


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_architecture_loads_and_matches_transformers(arch, tokenizer, tmp_path):
    """Every listed architecture boots from a local folder and streams the same numbers as HF."""
    torch.manual_seed(0)
    model = ARCHITECTURES[arch](len(tokenizer)).eval()
    folder = save(model, tokenizer, tmp_path / arch)
    ckpt = Checkpoint.from_pretrained(folder, weight_decay=0.1)
    assert ckpt.name == arch and ckpt.weight_decay == 0.1 and ckpt._bridge is None  # lazy
    docs = load_corpus("probe", 6)
    names = [f"blocks.{l}.hook_resid_post" for l in range(2)] + [f"blocks.{l}.attn.hook_pattern" for l in range(2)]
    reference = AutoModelForCausalLM_eager(folder)
    for batch in stream(ckpt, docs, names, batch_size=3, return_logits=True, progress=False):
        with torch.no_grad():
            out = reference(batch.tokens, attention_mask=batch.mask.long(), output_hidden_states=True, output_attentions=True)
        real = batch.mask
        # resid_post of block 0 is HF's hidden_states[1]; patterns are HF's attentions
        torch.testing.assert_close(batch.activations["blocks.0.hook_resid_post"][real], out.hidden_states[1][real], atol=1e-5, rtol=1e-4)
        for layer in range(2):
            pattern = batch.activations[f"blocks.{layer}.attn.hook_pattern"]
            for row, n in enumerate(real.sum(1).tolist()):
                torch.testing.assert_close(pattern[row, :, :n, :n], out.attentions[layer][row, :, :n, :n], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(batch.logits[real], out.logits[real], atol=1e-4, rtol=1e-4)
    ckpt.unload()
    assert ckpt._bridge is None


def AutoModelForCausalLM_eager(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_in_memory_model_and_bridge(arch, tokenizer):
    """A notebook's in-memory model (or a TransformerBridge built from it) streams like a folder."""
    torch.manual_seed(0)
    model = ARCHITECTURES[arch](len(tokenizer)).eval()
    ckpt = Checkpoint.from_model(model, tokenizer, weight_decay=0.3, name="mine", seed=1)
    assert ckpt.hyperparameters == {"weight_decay": 0.3, "seed": 1}
    (batch,) = stream(ckpt, ["a small test sentence"], ["blocks.1.hook_resid_post"], return_logits=True, progress=False)
    with torch.no_grad():
        ref = model(batch.tokens).logits
    torch.testing.assert_close(batch.logits, ref, atol=1e-5, rtol=1e-4)
    again = Checkpoint.from_model(ckpt.bridge, tokenizer, weight_decay=0.3, name="bridge")
    (batch2,) = stream(again, ["a small test sentence"], ["blocks.1.hook_resid_post"], progress=False)
    torch.testing.assert_close(batch2.activations["blocks.1.hook_resid_post"], batch.activations["blocks.1.hook_resid_post"])
    assert ckpt.content_hash() == again.content_hash()


def test_bos_convention_and_truncation(tokenizer):
    model = ARCHITECTURES["llama"](len(tokenizer)).eval()
    ckpt = Checkpoint.from_model(model, tokenizer, weight_decay=0.0)
    long_text = " ".join(["word"] * 500)
    (batch,) = stream(ckpt, [long_text, "hi"], [], progress=False)
    assert batch.tokens.shape[1] == 48  # truncated to the context, BOS included
    assert (batch.tokens[:, 0] == tokenizer.bos_token_id).all()
    expected = [tokenizer.bos_token_id] + tokenizer("hi", add_special_tokens=False)["input_ids"]
    short = batch.doc_index.tolist().index(1)
    assert batch.tokens[short, : len(expected)].tolist() == expected
    assert batch.mask[short].sum() == len(expected)


# ---------------------------------------------------------------------- bad input
@pytest.fixture()
def good_folder(tokenizer, tmp_path):
    torch.manual_seed(0)
    return save(ARCHITECTURES["llama"](len(tokenizer)), tokenizer, tmp_path / "good", weight_decay=0.1)


def test_weight_decay_read_from_json(good_folder):
    assert Checkpoint.from_pretrained(good_folder).weight_decay == 0.1


def test_missing_weight_decay(good_folder):
    (good_folder / "plastiscope.json").unlink()
    with pytest.raises(CheckpointError, match=r"good: weight decay unknown; pass weight_decay="):
        Checkpoint.from_pretrained(good_folder)


def test_not_a_model_folder(tmp_path):
    (tmp_path / "notes").mkdir()
    with pytest.raises(CheckpointError, match=r"notes: not a model folder \(no config.json\); save the model with"):
        Checkpoint.from_pretrained(tmp_path / "notes", weight_decay=0)
    with pytest.raises(CheckpointError, match="no such folder"):
        Checkpoint.from_pretrained(tmp_path / "missing", weight_decay=0)


def test_missing_tokenizer(good_folder):
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (good_folder / f).unlink()
    with pytest.raises(CheckpointError, match=r"good: no tokenizer files; save the training tokenizer"):
        Checkpoint.from_pretrained(good_folder)


@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_corrupt_safetensors(good_folder, damage):
    weights = good_folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\xff" * 64 + data[64:])
    with pytest.raises(CheckpointError, match=r"model.safetensors: truncated or corrupt safetensors file.*re-copy"):
        Checkpoint.from_pretrained(good_folder)


def test_pickle_weights_never_loaded(good_folder):
    (good_folder / "model.safetensors").unlink()
    (good_folder / "pytorch_model.bin").write_bytes(b"not even a pickle")
    with pytest.raises(CheckpointError, match=r"no \*.safetensors weights \(pytorch_model.bin are pickles and are never loaded\)"):
        Checkpoint.from_pretrained(good_folder)


def test_tokenizer_vocabulary_mismatch(good_folder, tmp_path):
    big = train_tokenizer(load_corpus("train", 500).texts, 600)  # 600 > the model's 300-token vocabulary
    big.save_pretrained(good_folder)
    ckpt = Checkpoint.from_pretrained(good_folder)
    with pytest.raises(CheckpointError, match=r"tokenizer has \d+ tokens but the model's vocabulary has 300"):
        ckpt.bridge


# ---------------------------------------------------------------------- sweeps
@pytest.fixture()
def three_runs(tokenizer, tmp_path):
    root = tmp_path / "sweep"
    for wd in (0.0, 0.1, 1.0):
        torch.manual_seed(0)
        save(ARCHITECTURES["llama"](len(tokenizer)), tokenizer, root / f"run-{wd:g}")
    return root


@pytest.mark.parametrize("kind", ["csv", "json", "yaml"])
def test_manifest_formats(three_runs, kind):
    rows = [{"path": f"run-{wd:g}", "weight_decay": wd, "learning_rate": 0.003, "seed": 7} for wd in (0.0, 0.1, 1.0)]
    rows[2]["label"] = "strong"
    manifest = three_runs / f"manifest.{kind}"
    if kind == "csv":
        keys = ["path", "weight_decay", "learning_rate", "seed", "label"]
        manifest.write_text("\n".join([",".join(keys)] + [",".join(str(r.get(k, "")) for k in keys) for r in rows]) + "\n")
    elif kind == "json":
        manifest.write_text(json.dumps(rows))
    else:
        import yaml

        manifest.write_text(yaml.safe_dump({"checkpoints": rows}))
    sweep = Sweep.from_manifest(manifest)
    assert [c.name for c in sweep] == ["run-0", "run-0.1", "strong"]
    assert [c.weight_decay for c in sweep] == [0.0, 0.1, 1.0]
    assert sweep[0].hyperparameters["learning_rate"] == 0.003 and sweep[0].hyperparameters["seed"] == 7
    assert len(sweep.filter(weight_decay=[0.0, 1.0])) == 2
    assert [c.name for c in sweep.filter(weight_decay=lambda w: w > 0)] == ["run-0.1", "strong"]
    assert sweep["strong"].weight_decay == 1.0 and isinstance(sweep[1:], Sweep)


def test_broken_checkpoint_is_skipped_not_fatal(three_runs):
    (three_runs / "run-0.1" / "config.json").unlink()
    (three_runs / "m.csv").write_text("path,weight_decay\nrun-0,0\nrun-0.1,0.1\nrun-1,1\nrun-9,9\n")
    sweep = Sweep.from_manifest(three_runs / "m.csv")
    assert [c.name for c in sweep] == ["run-0", "run-1"]
    errors = {e["checkpoint"]: e["error"] for e in sweep.errors}
    assert "not a model folder" in errors["run-0.1"] and "no such folder" in errors["run-9"]


def test_from_directory_reads_trainer_json_and_skips_pickles(three_runs):
    for wd in (0.0, 0.1, 1.0):
        folder = three_runs / f"run-{wd:g}"
        (folder / "training_args.json").write_text(json.dumps({"weight_decay": wd, "learning_rate": 1e-3, "lr_scheduler_type": "cosine", "seed": 3}))
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": 500, "log_history": [{"loss": 2.0}]}))
        (folder / "training_args.bin").write_bytes(b"\x80\x04 a pickle that must never be read")
    sweep = Sweep.from_directory(three_runs)
    assert sorted(c.weight_decay for c in sweep) == [0.0, 0.1, 1.0]
    hyper = sweep["run-0.1"].hyperparameters
    assert hyper["learning_rate"] == 1e-3 and hyper["schedule"] == "cosine" and hyper["step"] == 500 and hyper["seed"] == 3
    assert "log_history" not in hyper


def test_from_directory_without_weight_decay_reports_each(three_runs):
    sweep = Sweep.from_directory(three_runs)
    assert len(sweep) == 0 and len(sweep.errors) == 3
    assert all("weight decay unknown" in e["error"] for e in sweep.errors)


def test_manifest_syntax_errors_name_the_line(tmp_path):
    (tmp_path / "m.yaml").write_text("checkpoints:\n  - path: a\n    weight_decay: 0.1\n  - path: [b\n")
    with pytest.raises(CheckpointError, match=r"m.yaml:5: the manifest is not valid YAML \(.*\); fix its syntax"):
        Sweep.from_manifest(tmp_path / "m.yaml")
    (tmp_path / "m.json").write_text('[{"path": "a",\n "weight_decay": 0.1,,}]')
    with pytest.raises(CheckpointError, match=r"m.json:2: the manifest is not valid JSON"):
        Sweep.from_manifest(tmp_path / "m.json")
    (tmp_path / "m.csv").write_bytes(b"path,weight_decay\nr\xe9sum\xe9,0.1\n")
    with pytest.raises(CheckpointError, match=r"m.csv:2: byte 0xe9 is not UTF-8"):
        Sweep.from_manifest(tmp_path / "m.csv")
    (tmp_path / "n.csv").write_text("path,weight_decay\na,0.1,extra\n")
    with pytest.raises(CheckpointError, match=r"n.csv:2: 3 fields where the header has 2"):
        Sweep.from_manifest(tmp_path / "n.csv")


def test_spec_round_trips_every_field_through_pickle(good_folder, tmp_path):
    """A checkpoint's spec survives pickling and rebuilds a checkpoint with every field equal, device_map included."""
    import pickle

    from plastiscope.checkpoint import CheckpointSpec

    ckpt = Checkpoint.from_pretrained(good_folder, weight_decay=0.3, label="wd0.3", seed=7, step=100, tags=["a", "b"])
    ckpt.to(device="cpu", dtype="bfloat16", device_map={"model.embed_tokens": "cpu", "lm_head": 0})
    ckpt.repo, ckpt.revision, ckpt.cache_dir = "org/model", "step100", tmp_path / "hub"
    spec = ckpt.spec()
    assert isinstance(spec, CheckpointSpec) and hash(spec) == hash(pickle.loads(pickle.dumps(spec)))
    back = pickle.loads(pickle.dumps(spec))
    assert back == spec
    rebuilt = back.checkpoint()
    fields = ("name", "weight_decay", "hyperparameters", "path", "repo", "revision", "cache_dir", "device", "dtype", "device_map")
    for field in fields:
        assert getattr(rebuilt, field) == getattr(ckpt, field), field
    assert rebuilt.device_map == {"model.embed_tokens": "cpu", "lm_head": 0} and rebuilt.dtype is torch.bfloat16
    assert rebuilt.hyperparameters["tags"] == ["a", "b"] and rebuilt.spec() == spec
    assert rebuilt._bridge is None  # not loaded until used


def test_spec_of_in_memory_model_is_refused(tokenizer):
    model = ARCHITECTURES["gpt2"](len(tokenizer)).eval()
    ckpt = Checkpoint.from_model(model, tokenizer, weight_decay=0.1, name="mem")
    with pytest.raises(ValueError, match="in-memory model cannot be rebuilt in another process.*save_pretrained"):
        ckpt.spec()


FAST_PROBES = dict(folds=3, inner_folds=2, Cs=[0.1, 1.0], max_examples=240, min_per_class=4)


def _module_state(model):
    """Everything about a model an analysis must leave alone: module classes and modes, parameters' identity,
    device, dtype and requires_grad, the config."""
    modules = [(name, type(m).__name__, m.training) for name, m in model.named_modules()]
    parameters = [(name, p.device, p.dtype, p.requires_grad, p.data_ptr(), id(p)) for name, p in model.named_parameters()]
    return modules, parameters, model.config.to_dict()


def test_analyses_leave_an_in_memory_model_as_it_was(tokenizer, probe_docs, tmp_path):
    """An analysis of ``from_model`` wraps a copy of the module tree (sharing the parameters), never the user's model:
    its modules, training mode, device, dtype and requires_grad are unchanged, and the numbers equal those of the
    same model loaded from disk."""
    import plastiscope.attention
    import plastiscope.probes

    torch.manual_seed(0)
    model = ARCHITECTURES["llama"](len(tokenizer)).train()  # a notebook model left in training mode
    for p in model.model.layers[0].parameters():
        p.requires_grad_(False)
    before = _module_state(model)
    data = probe_docs.subset(range(80))
    ckpt = Checkpoint.from_model(model, tokenizer, weight_decay=0.1, name="m")
    patterns = plastiscope.attention.attention(ckpt, data, progress=False, n_resamples=50)
    probed = plastiscope.probes.probes(ckpt, data, label_column="pos", layers=[0, 1], random_baseline=False, mdl=False, progress=False, **FAST_PROBES)
    ckpt.to(dtype="bfloat16")
    plastiscope.attention.attention(ckpt, data.subset(range(4)), progress=False, n_resamples=10)
    assert _module_state(model) == before
    assert model.training and model.model.embed_tokens.weight.dtype == torch.float32
    folder = save(model, tokenizer, tmp_path / "m")
    disk = Checkpoint.from_pretrained(folder, weight_decay=0.1, name="m")
    columns = ["metric", "layer", "head", "value", "ci_low", "ci_high"]
    pd.testing.assert_frame_equal(plastiscope.attention.attention(disk, data, progress=False, n_resamples=50)[columns], patterns[columns],
                                  check_exact=False, rtol=1e-4, atol=1e-6)
    on_disk = plastiscope.probes.probes(disk, data, label_column="pos", layers=[0, 1], random_baseline=False, mdl=False, progress=False, **FAST_PROBES)
    pd.testing.assert_frame_equal(on_disk[columns], probed[columns], check_exact=False, rtol=1e-4, atol=1e-6)


def test_weight_decays_that_no_model_was_trained_with_are_refused(good_folder, tmp_path):
    """YAML's ``yes`` (True, 1.0 to Python), infinity and negative values are manifest mistakes, not weight decays."""
    (good_folder / "plastiscope.json").unlink()
    rows = "".join(f"  - {{path: {good_folder}, weight_decay: {wd}, label: r{i}}}\n" for i, wd in enumerate(["yes", ".inf", "-0.1", "0.5"]))
    (tmp_path / "m.yaml").write_text("checkpoints:\n" + rows)
    sweep = Sweep.from_manifest(tmp_path / "m.yaml")
    assert [c.weight_decay for c in sweep] == [0.5]
    assert [e["checkpoint"] for e in sweep.errors] == ["r0", "r1", "r2"]
    assert all("is not a finite number >= 0" in e["error"] or "is not a number" in e["error"] for e in sweep.errors)
    for wd, shown in ((True, "True"), (float("inf"), "inf"), (-0.1, "-0.1"), ("abc", "'abc'")):
        with pytest.raises(CheckpointError, match=rf"good: weight decay {shown} is not a"):
            Checkpoint.from_pretrained(good_folder, weight_decay=wd)


@pytest.mark.cuda
def test_an_in_memory_model_run_on_the_gpu_stays_on_its_device(tokenizer):
    """``to("cuda")`` runs a converted copy on the GPU; the user's model stays on the CPU, untouched."""
    torch.manual_seed(0)
    model = ARCHITECTURES["llama"](len(tokenizer)).eval()
    before = _module_state(model)
    ckpt = Checkpoint.from_model(model, tokenizer, weight_decay=0.1).to(device="cuda", dtype="bfloat16")
    (batch,) = stream(ckpt, ["a small test sentence"], ["blocks.1.hook_resid_post"], return_logits=True, progress=False)
    assert next(ckpt.hf_model.parameters()).device.type == "cuda" and _module_state(model) == before
    with torch.no_grad():
        torch.testing.assert_close(batch.logits.float().cpu(), model(batch.tokens.cpu()).logits, atol=0.1, rtol=0.05)
