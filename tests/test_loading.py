"""Strict loading on real broken folders: no code from a folder runs, no pickle loads, no wrong model loads."""

from __future__ import annotations

import json
import os
import pickle
import pty
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_checkpoint import ARCHITECTURES, save
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BertConfig,
    BertForMaskedLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PhiConfig,
    PhiForCausalLM,
    PreTrainedTokenizerFast,
)

from plastiscope import Checkpoint, CheckpointError, Sweep
from plastiscope.demo.corpus import load_corpus
from plastiscope.demo.tokenizer import train_tokenizer
from plastiscope.runner import Inputs, run_analyses


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(load_corpus("train", 500).texts, 300)


@pytest.fixture()
def llama(tokenizer, tmp_path):
    torch.manual_seed(0)
    return save(ARCHITECTURES["llama"](len(tokenizer)), tokenizer, tmp_path / "llama")


def _rewrite(folder: Path, change) -> dict:
    """Load model.safetensors, apply ``change(state)`` and save it back (a real, well-formed safetensors file)."""
    state = load_file(folder / "model.safetensors")
    change(state)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    return state


# ---------------------------------------------------------------------- code from the folder
CHILD = """
import sys
from plastiscope import Checkpoint, CheckpointError
try:
    Checkpoint.from_pretrained(sys.argv[1], weight_decay=0.0).{attribute}
    print("LOADED")
except CheckpointError as err:
    print("REFUSED", err)
"""


def _on_a_terminal(code: str, *args: str, timeout: float = 240) -> str:
    """Run ``python -c code args`` under a pseudo-terminal, answering "y" to any prompt (a careless user)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: a Python process whose stdin and stdout are a terminal
        os.execv(sys.executable, [sys.executable, "-c", code, *args])
    out, start = b"", time.monotonic()
    try:
        while time.monotonic() - start < timeout:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
            if b"[y/N]" in out and b"<answered>" not in out:
                os.write(fd, b"y\n")
                out += b"<answered>"
    finally:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if not done:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    return out.decode(errors="replace")


def test_tokenizer_code_never_runs_and_nothing_prompts_on_a_terminal(llama):
    marker = llama / "MARKER"
    (llama / "tokenization_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import PreTrainedTokenizerFast\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n"
    )
    config = json.loads((llama / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": [None, "tokenization_evil.EvilTokenizer"]})
    (llama / "tokenizer_config.json").write_text(json.dumps(config))
    start = time.monotonic()
    out = _on_a_terminal(CHILD.format(attribute="tokenizer"), str(llama))
    assert not marker.exists(), out
    assert "[y/N]" not in out and "REFUSED" in out, out
    assert str(llama) in out and "never runs code from a checkpoint" in out
    assert time.monotonic() - start < 120  # no prompt waiting for an answer


def test_config_code_is_refused(llama):
    marker = llama / "MARKER"
    (llama / "configuration_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = json.loads((llama / "config.json").read_text())
    config.update(model_type="evil", auto_map={"AutoConfig": "configuration_evil.EvilConfig",
                                                 "AutoModelForCausalLM": "modeling_evil.EvilModel"})
    (llama / "config.json").write_text(json.dumps(config))
    ckpt = Checkpoint.from_pretrained(llama, weight_decay=0.0)
    with pytest.raises(CheckpointError, match=r"llama: config.json has model_type 'evil'.*auto_map.*never runs code"):
        ckpt.bridge
    assert not marker.exists()


# ---------------------------------------------------------------------- weights: safetensors only
class _Plant:
    """Unpickling this writes a file: it shows whether a pickle was ever loaded."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_beside_a_decoy_safetensors_is_never_loaded(llama, monkeypatch):
    marker = llama / "MARKER"
    state = load_file(llama / "model.safetensors")
    (llama / "model.safetensors").unlink()
    with open(llama / "pytorch_model.bin", "wb") as f:
        pickle.dump({"weights": _Plant(marker), **{k: v for k, v in state.items()}}, f)
    save_file({"unrelated": torch.zeros(3)}, llama / "decoy.safetensors")  # makes '*.safetensors present' true
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    with pytest.raises(CheckpointError, match=r"no model.safetensors or model.safetensors.index.json \(decoy.safetensors is "
                                              r"not the model's weights\); pytorch_model.bin are pickles and are never loaded"):
        Checkpoint.from_pretrained(llama, weight_decay=0.0).bridge
    assert loads == [] and not marker.exists()


def test_pickle_only_folder_names_the_conversion(llama):
    (llama / "model.safetensors").rename(llama / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as err:
        Checkpoint.from_pretrained(llama, weight_decay=0.0)
    assert str(llama) in str(err.value) and "save_pretrained" in str(err.value) and "safe_serialization=True" in str(err.value)


def test_sharded_weights_load_and_a_missing_shard_is_refused(tokenizer, tmp_path):
    torch.manual_seed(0)
    model = ARCHITECTURES["llama"](len(tokenizer)).eval()
    folder = tmp_path / "sharded"
    model.save_pretrained(folder, max_shard_size="20KB")
    tokenizer.save_pretrained(folder)
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 1 and (folder / "model.safetensors.index.json").exists()
    ckpt = Checkpoint.from_pretrained(folder, weight_decay=0.0)
    ids = torch.tensor([[1, 5, 9, 20]])
    with torch.no_grad():
        torch.testing.assert_close(ckpt.hf_model(ids).logits, model(ids).logits)
    ckpt.unload()
    shards[-1].unlink()
    with pytest.raises(CheckpointError, match=rf"index.json: 1 shard\(s\) it names are missing: '{shards[-1].name}'"):
        Checkpoint.from_pretrained(folder, weight_decay=0.0)


# ---------------------------------------------------------------------- weights that do not fit
def test_missing_tensor_is_refused(llama):
    _rewrite(llama, lambda s: s.pop("model.layers.1.self_attn.q_proj.weight"))
    ckpt = Checkpoint.from_pretrained(llama, weight_decay=0.0)
    with pytest.raises(CheckpointError, match=r"llama: 1 tensor\(s\) the model needs are missing from the weights \(they would be "
                                              r"random\): 'model.layers.1.self_attn.q_proj.weight'"):
        ckpt.bridge


def test_unexpected_and_misshaped_tensors_are_refused(llama, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(llama, other)
    _rewrite(llama, lambda s: s.update({"model.layers.0.extra.weight": torch.zeros(4)}))
    with pytest.raises(CheckpointError, match=r"1 tensor\(s\) in the weights have no place in the model: 'model.layers.0.extra.weight'"):
        Checkpoint.from_pretrained(llama, weight_decay=0.0).bridge
    _rewrite(other, lambda s: s.update({"model.layers.0.mlp.up_proj.weight": torch.zeros(65, 32)}))
    with pytest.raises(CheckpointError, match=r"another shape than config.json implies: 'model.layers.0.mlp.up_proj.weight \[65, 32\] "
                                              r"in the weights, \[64, 32\] in the model'"):
        Checkpoint.from_pretrained(other, weight_decay=0.0).bridge


def test_model_type_that_does_not_fit_the_weights_is_refused(llama, tokenizer):
    gpt2 = {**ARCHITECTURES["gpt2"](len(tokenizer)).config.to_dict(), "architectures": ["GPT2LMHeadModel"]}
    (llama / "config.json").write_text(json.dumps(gpt2))  # the config of another model, as save_pretrained writes it
    with pytest.raises(CheckpointError, match=r"the weights do not fit model_type 'gpt2' \(GPT2LMHeadModel\) of config.json"):
        Checkpoint.from_pretrained(llama, weight_decay=0.0).bridge


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "llama_tied"])
def test_legitimately_tied_weights_load(arch, tokenizer, tmp_path):
    """An output layer tied to the embedding is stored once; it is not a missing tensor."""
    torch.manual_seed(0)
    if arch == "llama_tied":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=48,
                                             tie_word_embeddings=True))
    elif arch == "gpt_neox":
        model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                 num_attention_heads=4, max_position_embeddings=48, tie_word_embeddings=True))
    else:
        model = ARCHITECTURES["gpt2"](len(tokenizer))
    folder = save(model.eval(), tokenizer, tmp_path / arch)
    stored = load_file(folder / "model.safetensors")
    assert not any(k.startswith(("lm_head", "embed_out")) for k in stored)  # really stored once
    ckpt = Checkpoint.from_pretrained(folder, weight_decay=0.0)
    ids = torch.tensor([[1, 7, 3]])
    with torch.no_grad():
        torch.testing.assert_close(ckpt.hf_model(ids).logits, model(ids).logits)


def test_nonfinite_weight_is_refused_naming_the_tensor(llama):
    def poison(state):
        state["model.layers.0.mlp.down_proj.weight"][3, 5] = float("inf")

    _rewrite(llama, poison)
    with pytest.raises(CheckpointError, match=r"llama: non-finite \(NaN or infinite\) parameters: "
                                              r"'model.layers.0.mlp.down_proj.weight \(1 of 2048 values\)'"):
        Checkpoint.from_pretrained(llama, weight_decay=0.0).bridge


def test_float16_overflow_is_refused_with_the_dtype_named(llama):
    _rewrite(llama, lambda s: s["model.norm.weight"].fill_(1e6))  # fine in float32, inf in float16
    assert Checkpoint.from_pretrained(llama, weight_decay=0.0).hf_model is not None
    with pytest.raises(CheckpointError, match=r"in float16; weights beyond its range of 65504 overflow: use --dtype bfloat16"):
        Checkpoint.from_pretrained(llama, weight_decay=0.0).to(dtype="float16").bridge


def test_in_memory_model_gets_the_same_checks(tokenizer):
    torch.manual_seed(0)
    model = ARCHITECTURES["llama"](len(tokenizer)).eval()
    with torch.no_grad():
        model.model.layers[1].self_attn.v_proj.weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=r"mine \(in memory\): non-finite .*'model.layers.1.self_attn.v_proj.weight \(1 of"):
        Checkpoint.from_model(model, tokenizer, weight_decay=0.0, name="mine").bridge
    bert = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                      intermediate_size=64, max_position_embeddings=48))
    with pytest.raises(CheckpointError, match=r"bert \(in memory\): architectures \['BertForMaskedLM'\] is not a text-only causal"):
        Checkpoint.from_model(bert, tokenizer, weight_decay=0.0, name="bert").bridge
    big = ARCHITECTURES["llama"](2 * len(tokenizer)).eval()  # a 600-row embedding for a 300-token tokenizer
    with pytest.raises(CheckpointError, match=r"tokenizer has 300 tokens but the model's vocabulary has 600 \(300 rows no token reaches\)"):
        Checkpoint.from_model(big, tokenizer, weight_decay=0.0, name="big").bridge


# ---------------------------------------------------------------------- tokenizer and vocabulary
def test_tokenizer_much_smaller_than_the_embedding_is_refused(tokenizer, tmp_path):
    torch.manual_seed(0)
    folder = save(ARCHITECTURES["llama"](600), tokenizer, tmp_path / "padded")
    with pytest.raises(CheckpointError) as err:
        Checkpoint.from_pretrained(folder, weight_decay=0.0).bridge
    message = str(err.value)
    assert str(folder) in message and "300 tokens" in message and "vocabulary has 600" in message
    assert "model.resize_token_embeddings(300)" in message and "save the training tokenizer" in message


def _word_tokenizer(size: int) -> PreTrainedTokenizerFast:
    """A real word-level tokenizer with exactly ``size`` tokens (BOS/EOS among them)."""
    vocab = {"<|endoftext|>": 0, "<unk>": 1, **{f"w{i}": i + 2 for i in range(size - 2)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<unk>")


@pytest.mark.parametrize("family, tokens, rows", [("pythia", 50277, 50304), ("phi-2", 50295, 51200)])
def test_real_models_padded_embeddings_load(family, tokens, rows):
    """Pythia (GPT-NeoX) and Phi-2 pad their embeddings a little beyond the tokenizer: they must load."""
    torch.manual_seed(0)
    if family == "pythia":
        model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=rows, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                                 num_attention_heads=2, max_position_embeddings=16))
    else:
        model = PhiForCausalLM(PhiConfig(vocab_size=rows, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, max_position_embeddings=16))
    tok = _word_tokenizer(tokens)
    assert len(tok) == tokens
    ckpt = Checkpoint.from_model(model.eval(), tok, weight_decay=0.01, name=family)
    assert ckpt.vocab_size == rows


# ---------------------------------------------------------------------- not a causal LM
def test_masked_lm_is_refused(tokenizer, tmp_path):
    model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                       intermediate_size=64, max_position_embeddings=48))
    folder = save(model, tokenizer, tmp_path / "bert")
    with pytest.raises(CheckpointError, match=r"bert: architectures \['BertForMaskedLM'\] is not a text-only causal language model"):
        Checkpoint.from_pretrained(folder, weight_decay=0.0).bridge


def test_multimodal_config_is_refused_and_nothing_is_installed(llama, monkeypatch):
    from transformers import LlavaConfig

    config = {**json.loads(LlavaConfig().to_json_string()), "architectures": ["LlavaForConditionalGeneration"]}
    (llama / "config.json").write_text(json.dumps(config))
    calls = []
    monkeypatch.setattr(subprocess, "check_call", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    with pytest.raises(CheckpointError, match=r"llama: architectures \['LlavaForConditionalGeneration'\] is not a text-only causal"):
        Checkpoint.from_pretrained(llama, weight_decay=0.0).bridge
    assert calls == []


# ---------------------------------------------------------------------- the rest of the sweep runs
def test_refused_checkpoint_does_not_sink_the_sweep(tokenizer, tmp_path):
    for name in ("good", "missing", "inf"):
        torch.manual_seed(0)
        save(ARCHITECTURES["llama"](len(tokenizer)), tokenizer, tmp_path / name)
    _rewrite(tmp_path / "missing", lambda s: s.pop("model.norm.weight"))
    _rewrite(tmp_path / "inf", lambda s: s["lm_head.weight"].fill_(float("-inf")))
    (tmp_path / "m.csv").write_text("path,weight_decay\ngood,0\nmissing,0.1\ninf,1\n")
    results, failures = run_analyses(Sweep.from_manifest(tmp_path / "m.csv"), ["attention_weights"], Inputs(), progress=False)
    assert set(results["checkpoint"]) == {"good"}
    errors = dict(zip(failures["checkpoint"], failures["error"]))
    assert set(errors) == {"missing", "inf"}
    assert "missing from the weights" in errors["missing"] and str(tmp_path / "missing") in errors["missing"]
    assert "non-finite" in errors["inf"] and "'lm_head.weight" in errors["inf"]


def test_every_transformers_call_is_local_and_runs_no_code(llama, monkeypatch):
    """Strict loading passes the safety flags on every transformers call."""
    import transformers

    seen = []
    for cls in (transformers.AutoConfig, transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
        real = cls.from_pretrained.__func__

        def spy(klass, *args, _real=real, **kwargs):
            seen.append((klass.__name__, kwargs))
            return _real(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    ckpt = Checkpoint.from_pretrained(llama, weight_decay=0.0)
    assert ckpt.n_layers == 2
    assert {name for name, _ in seen} == {"AutoConfig", "AutoTokenizer", "AutoModelForCausalLM"}
    for name, kwargs in seen:
        assert kwargs.get("local_files_only") is True and kwargs.get("trust_remote_code") is False, (name, kwargs)
    model_kwargs = next(k for n, k in seen if n == "AutoModelForCausalLM")
    assert model_kwargs["use_safetensors"] is True and model_kwargs["output_loading_info"] is True


# ---------------------------------------------------------------------- the loaded file decides
def test_single_file_beside_a_stale_index_is_what_loads_is_checked_and_hashed(tokenizer, tmp_path):
    """``transformers`` loads ``model.safetensors`` when a folder also holds a sharded index; the checks and the
    content hash follow the file it loads, so replacing it is seen, and a stale index with missing shards is no error."""
    folder = tmp_path / "both"
    torch.manual_seed(0)
    ARCHITECTURES["llama"](len(tokenizer)).save_pretrained(folder, max_shard_size="20KB")  # index + shards
    tokenizer.save_pretrained(folder)
    models = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        models.append(ARCHITECTURES["llama"](len(tokenizer)).eval())
    save_file(models[0].state_dict(), folder / "model.safetensors", metadata={"format": "pt"})
    assert (folder / "model.safetensors.index.json").exists()
    ids = torch.tensor([[1, 5, 9, 20]])
    first = Checkpoint.from_pretrained(folder, weight_decay=0.0)
    with torch.no_grad():
        torch.testing.assert_close(first.hf_model(ids).logits, models[0](ids).logits)
    before = first.content_hash()
    state = {k: v.contiguous() for k, v in models[1].state_dict().items()}
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    second = Checkpoint.from_pretrained(folder, weight_decay=0.0)
    assert second.content_hash() != before
    with torch.no_grad():
        torch.testing.assert_close(second.hf_model(ids).logits, models[1](ids).logits)
    for shard in folder.glob("model-*.safetensors"):
        shard.unlink()  # what re-saving unsharded over a sharded save leaves: the index, no shards
    assert Checkpoint.from_pretrained(folder, weight_decay=0.0).content_hash() == second.content_hash()


# ---------------------------------------------------------------------- config.json against the weights
def _set_config(folder: Path, **fields) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(fields)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("field, value", [("num_hidden_layers", 3), ("num_hidden_layers", 100000), ("hidden_size", 64),
                                          ("hidden_size", 10**7), ("vocab_size", 301), ("vocab_size", 10**9),
                                          ("intermediate_size", 10**8)])
def test_config_sizes_that_the_weights_do_not_have_are_refused_before_allocating(llama, field, value):
    """A config.json whose sizes the weights do not have is refused from the safetensors headers alone, naming
    config.json and the field (not the weights), before any tensor of those sizes is allocated."""
    from tests_support import peak_rss_during

    _set_config(llama, **{field: value})
    ckpt = Checkpoint.from_pretrained(llama, weight_decay=0.0)
    raised = []

    def load():
        with pytest.raises(CheckpointError) as err:
            ckpt.bridge
        raised.append(str(err.value))

    start = time.monotonic()
    grew = peak_rss_during(load)
    (message,) = raised
    assert f"{llama / 'config.json'}: {field}={value}" in message and "model.safetensors" in message, message
    assert "\n" not in message and grew < 200 << 20 and time.monotonic() - start < 60


@pytest.mark.parametrize("field", ["max_position_embeddings", "n_positions"])
def test_a_context_that_leaves_no_text_token_is_refused(llama, tokenizer, tmp_path, field):
    """A context of one token holds BOS alone: every document would be BOS and every statistic one of nothing."""
    if field == "n_positions":
        torch.manual_seed(0)
        llama = save(ARCHITECTURES["gpt2"](len(tokenizer)), tokenizer, tmp_path / "gpt2")
    _set_config(llama, **{field: 1})
    with pytest.raises(CheckpointError, match=rf"config.json: {field}=1 leaves no text token after BOS"):
        Checkpoint.from_pretrained(llama, weight_decay=0.0)


def test_a_results_folder_inside_a_checkpoint_folder_is_refused(llama, tmp_path):
    """Results written into a checkpoint folder would change its content hash on every run: refused before anything runs."""
    from plastiscope.loading import check_out_folder
    from plastiscope.pipeline import analyze

    (tmp_path / "manifest.csv").write_text("path,weight_decay\nllama,0.0\n")
    for out in (llama, llama / "results", llama / "a" / ".." / "results"):
        with pytest.raises(CheckpointError, match=rf"{out}: the results folder is inside the checkpoint folder .*llama"):
            analyze(tmp_path / "manifest.csv", out, ["attention_weights"], progress=False)
    assert not (llama / "results").exists() and not (llama / "run.json").exists()
    check_out_folder(tmp_path / "results", llama)  # beside it: fine
    check_out_folder(tmp_path / "results", tmp_path)  # a sweep folder, no model folder itself: fine


# ---------------------------------------------------------------------- hostile folders
def test_integer_weights_for_floating_parameters_are_refused(llama):
    """transformers casts an int8 tensor into a float parameter without a word (a model of rounded, mostly zero
    weights); the header's dtype is checked against the parameter's kind first."""
    _rewrite(llama, lambda s: s.update({"model.layers.0.mlp.up_proj.weight": (s["model.layers.0.mlp.up_proj.weight"] * 100).to(torch.int8)}))
    with pytest.raises(CheckpointError, match=r"model.safetensors: model.layers.0.mlp.up_proj.weight is stored as I8, not a "
                                              r"floating-point type, for a floating-point parameter"):
        Checkpoint.from_pretrained(llama, weight_decay=0.0).bridge


def test_a_fifo_or_device_in_place_of_a_file_is_refused_without_blocking(llama):
    """A named pipe as config.json (or a link to a device as the weights) would block a reader for ever or feed it
    endless bytes: files a loader reads must be regular files."""
    import threading

    (llama / "config.json").unlink()
    os.mkfifo(llama / "config.json")
    outcome = []

    def build():
        try:
            Checkpoint.from_pretrained(llama, weight_decay=0.0)
        except CheckpointError as err:
            outcome.append(str(err))

    thread = threading.Thread(target=build, daemon=True)
    thread.start()
    thread.join(60)
    if thread.is_alive():
        fd = os.open(llama / "config.json", os.O_WRONLY | os.O_NONBLOCK)  # release the blocked reader
        os.close(fd)
        pytest.fail("reading a named pipe as config.json blocked")
    assert outcome and "config.json: not a regular file" in outcome[0], outcome
    (llama / "config.json").unlink()


def test_weights_linked_to_a_device_are_refused(llama):
    (llama / "model.safetensors").unlink()
    (llama / "model.safetensors").symlink_to("/dev/zero")
    with pytest.raises(CheckpointError, match=r"model.safetensors: not a regular file"):
        Checkpoint.from_pretrained(llama, weight_decay=0.0)


def test_a_sweep_listing_one_folder_twice_is_refused(llama, tmp_path):
    """Two manifest rows naming one folder (however spelled) would put one model at two weight decays."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "manifest.csv").write_text("path,weight_decay,label\nllama,0.0,a\nsub/../llama/,0.1,b\n")
    with pytest.raises(CheckpointError, match=r"'a' and 'b' are the same checkpoint folder .*llama \(one model at two .*list each checkpoint once"):
        Sweep.from_manifest(tmp_path / "manifest.csv")


def test_manifest_cells_hold_one_value_and_rows_name_a_column_once(llama, tmp_path):
    """A YAML cell that is a nest of aliases (nine levels of nine: 387 million leaves once expanded, as every JSON
    dump of the hyperparameters would) is refused as a row error; a column given twice in a JSON or YAML row (the
    parsers keep the last silently) is refused naming it."""
    levels = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    (tmp_path / "bomb.yaml").write_text("\n".join(levels) + "\ncheckpoints:\n  - {path: llama, weight_decay: 0.0, note: *l8}\n")
    start = time.monotonic()
    sweep = Sweep.from_manifest(tmp_path / "bomb.yaml")
    assert not len(sweep) and time.monotonic() - start < 30
    assert "bomb.yaml: row 1: column 'note' holds a list" in sweep.errors[0]["error"]
    (tmp_path / "twice.json").write_text('[{"path": "llama", "weight_decay": 0.1, "weight_decay": 1.0}]')
    with pytest.raises(CheckpointError, match=r"twice.json: a row names the column 'weight_decay' twice"):
        Sweep.from_manifest(tmp_path / "twice.json")
    (tmp_path / "twice.yaml").write_text("- path: llama\n  weight_decay: 0.1\n  weight_decay: 1.0\n")
    with pytest.raises(CheckpointError, match=r"twice.yaml:3: the manifest is not valid YAML \(the column 'weight_decay' is given twice"):
        Sweep.from_manifest(tmp_path / "twice.yaml")
    (tmp_path / "fine.yaml").write_text("- path: llama\n  weight_decay: 0.1\n")
    assert Sweep.from_manifest(tmp_path / "fine.yaml")[0].weight_decay == 0.1


@pytest.mark.parametrize("name", ["config.json", "plastiscope.json", "model.safetensors.index.json"])
def test_json_nested_beyond_the_parser_is_refused_naming_the_file(llama, name):
    """A JSON file of 100000 nested lists exhausts Python's recursion limit: a one-line refusal naming it, not a traceback."""
    if name == "model.safetensors.index.json":
        (llama / "model.safetensors").unlink()
    (llama / name).write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(CheckpointError, match=rf"llama/{re.escape(name)}: not (valid JSON|a valid safetensors index)"):
        Checkpoint.from_pretrained(llama, weight_decay=0.0)


@pytest.mark.parametrize("suffix, text", [(".json", "[" * 100000 + "]" * 100000), (".yaml", "[" * 100000 + "]" * 100000)])
def test_a_manifest_nested_beyond_the_parser_is_refused(tmp_path, suffix, text):
    (tmp_path / f"m{suffix}").write_text(text)
    with pytest.raises(CheckpointError, match=rf"m{suffix}: the manifest nests deeper than a"):
        Sweep.from_manifest(tmp_path / f"m{suffix}")


@pytest.mark.parametrize("field, value", [("rms_norm_eps", -1e-5), ("rms_norm_eps", -1.0)])
def test_a_negative_normalisation_epsilon_is_refused(llama, field, value):
    """The norm divides by sqrt(variance + eps): a negative eps gives NaN logits where the variance is small and silently
    different activations elsewhere; no weight shape tells, so config.json is refused naming the field."""
    _set_config(llama, **{field: value})
    with pytest.raises(CheckpointError, match=re.escape(f"{llama / 'config.json'}: {field}={value!r}; a normalisation epsilon")):
        Checkpoint.from_pretrained(llama, weight_decay=0.0)


@pytest.mark.parametrize("value", [32.0, "32"])
def test_a_config_size_of_the_wrong_type_is_refused_on_one_line(llama, value):
    _set_config(llama, hidden_size=value)
    with pytest.raises(CheckpointError, match=r"config.json does not load .*hidden_size") as err:
        Checkpoint.from_pretrained(llama, weight_decay=0.0).bridge
    assert "\n" not in str(err.value)


def test_a_sweep_whose_folders_link_to_one_weights_file_is_refused(llama, tmp_path):
    """Two folders, the second's model.safetensors a link to the first's: one model at two weight decays."""
    other = tmp_path / "other"
    shutil.copytree(llama, other)
    (other / "model.safetensors").unlink()
    (other / "model.safetensors").symlink_to(llama / "model.safetensors")
    (tmp_path / "manifest.csv").write_text(f"path,weight_decay,label\n{llama},0.0,a\nother,0.1,b\n")
    with pytest.raises(CheckpointError, match=r"checkpoints 'a' and 'b' load the same weights file .*llama/model\.safetensors \(.*other/model\."
                                              r"safetensors links to it: one model at two sets of hyperparameters\)"):
        Sweep.from_manifest(tmp_path / "manifest.csv")


def test_a_tokenizer_json_without_the_file_naming_its_bos_is_refused(llama):
    """Without tokenizer_config.json transformers loads tokenizer.json with no BOS token: every document would be encoded
    without the BOS the model was trained with. With special_tokens_map.json (which names it) the folder loads with its BOS."""
    (llama / "tokenizer_config.json").unlink()
    with pytest.raises(CheckpointError, match=r"tokenizer\.json without tokenizer_config\.json: which of its special tokens "
                                              r"\('<\|bos\|>', .*\) is BOS is not recorded"):
        Checkpoint.from_pretrained(llama, weight_decay=0.0).tokenizer
    (llama / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<|bos|>", "eos_token": "<|eos|>"}))
    assert Checkpoint.from_pretrained(llama, weight_decay=0.0).tokenizer.bos_token == "<|bos|>"


def test_a_manifest_path_that_links_to_itself_is_a_row_error(llama, tmp_path):
    """A link loop in a manifest path fails its row with the path named; the sweep keeps the other checkpoints."""
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "manifest.csv").write_text(f"path,weight_decay,label\nloop,0.0,x\n{llama},0.1,y\n")
    sweep = Sweep.from_manifest(tmp_path / "manifest.csv")
    assert [c.name for c in sweep] == ["y"]
    (error,) = sweep.errors
    assert error["checkpoint"] == "x" and error["error"].startswith(f"{tmp_path / 'loop'}: the path does not resolve")
