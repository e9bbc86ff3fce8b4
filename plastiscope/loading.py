"""Strict loading of a Hugging Face checkpoint folder: what it holds, whether it is sound, what its hash covers.

A model that loads wrongly gives plausible wrong numbers, so:

- nothing is fetched from a hub (``local_files_only=True`` on every ``transformers`` call)
  and no code from a checkpoint folder ever runs (``trust_remote_code=False``: a folder that
  needs its own code is refused, never prompted about);
- weights come from safetensors only (``model.safetensors`` (which ``transformers`` loads even
  beside an index), else ``model.safetensors.index.json`` and every shard it names, headers
  read with ``safetensors.safe_open``); pickles are never loaded, a folder with only pickles is
  refused with the conversion command; the file that loads is the file that is checked and hashed;
- before anything is allocated, ``config.json``'s sizes (layers, hidden size, vocabulary, ...)
  are checked against the headers' shapes, and integer tensors for floating-point parameters
  are refused; a context under two tokens (BOS and one token of text) is refused;
- every file a loader reads is a regular file (a named pipe or a device would block it or feed
  it for ever); a hub-cache ref must hold a commit hash whose snapshot lies in the repository;
- missing, unexpected or mis-shaped tensors (``transformers``' loading info; weights that are
  legitimately tied, such as an output layer tied to the embedding, are not missing), a
  ``model_type`` the weights do not fit, non-finite parameters, a model that is not a causal
  language model (multimodal, encoder-only, sequence-to-sequence), a tokenizer whose ids
  exceed the embedding or that reaches less than 90 % of its rows, a ``tokenizer.json`` whose
  BOS no file names, and a negative normalisation epsilon are refused, each with the path and
  the fix.

Also here: the files a folder's content hash covers (:func:`hashed_files`), the
hyperparameters trainers write beside a model (:func:`read_hyperparameters`), and the
offline lookup of a revision in the Hugging Face cache (:func:`hf_snapshot`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

HYPERPARAMETER_FILES = ("plastiscope.json", "training_args.json", "trainer_state.json", "hyperparameters.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
WEIGHTS, WEIGHTS_INDEX = "model.safetensors", "model.safetensors.index.json"
# files a loader never reads: pickles and other weight formats (never loaded), docs, version-control files
UNREAD_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".md", ".py", ".lock")
# a tokenizer must reach at least this share of the embedding's rows (real models pad a little:
# Pythia 50277 tokens for 50304 rows, Phi-2 50295 for 51200)
MIN_VOCABULARY_SHARE = 0.9
# config.json keys of the context length (the bridge's n_ctx) and of the sizes tensors have, most telling first
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")
SIZE_KEYS = ("vocab_size", "hidden_size", "n_embd", "d_model", "intermediate_size", "n_inner", "num_attention_heads",
             "num_key_value_heads", "head_dim", "max_position_embeddings", "n_positions")
# a commit hash: what a revision or the content of refs/<revision> in the hub cache must be
COMMIT = re.compile(r"[0-9a-f]{40}")
# a numbered block in a tensor name: model.layers.3., transformer.h.3., gpt_neox.layers.3.
LAYER_NAME = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")
# keys trainers use for the same hyperparameter -> our column name
KEY_ALIASES = {"lr": "learning_rate", "lr_scheduler_type": "schedule", "global_step": "step", "wd": "weight_decay"}
KEPT_KEYS = ("weight_decay", "learning_rate", "schedule", "seed", "step", "tokens", "label", "warmup_steps", "max_steps")
CONVERT = (
    "python -c \"from transformers import AutoModelForCausalLM as M; M.from_pretrained('{path}', use_safetensors=False)"
    ".save_pretrained('{path}', safe_serialization=True)\" (this reads the pickle: run it only on files you trust)"
)


class CheckpointError(ValueError):
    """A checkpoint cannot be used: the message names the path and the fix."""



def is_nan(value: Any) -> bool:
    """True for a float NaN (an empty manifest cell), False for anything else."""
    return isinstance(value, float) and math.isnan(value)


def _few(names: Sequence[Any], k: int = 4) -> str:
    """``'a', 'b', 'c' (+5 more)``: a short list for messages."""
    names = [str(n) for n in names]
    more = f" (+{len(names) - k} more)" if len(names) > k else ""
    return ", ".join(repr(n) for n in names[:k]) + more


def one_line(err: BaseException, k: int = 300) -> str:
    """A library's error message on one line (validation errors span several), cut to ``k`` characters."""
    return " ".join(str(err).split())[:k]


# ---------------------------------------------------------------------- strict loading
def _asks_for_code(err: BaseException) -> bool:
    text = str(err)
    return "custom code" in text or "trust_remote_code" in text


def load_tokenizer(path: Path) -> Any:
    """The tokenizer saved in ``path``; never runs code from the folder, never prompts.

    A ``tokenizer.json`` with special tokens but without ``tokenizer_config.json`` or
    ``special_tokens_map.json`` (the files that say which token is BOS) is refused: it loads
    without a BOS token, and every document would be encoded without the BOS the model was
    trained with.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as err:
        if _asks_for_code(err):
            raise CheckpointError(
                f"{path}: the tokenizer needs code from the folder (auto_map in tokenizer_config.json); plastiscope never "
                f"runs code from a checkpoint: save a tokenizer transformers knows there (e.g. tokenizer.json with "
                f"PreTrainedTokenizerFast, via tokenizer.save_pretrained())"
            ) from None
        raise CheckpointError(
            f"{path}: the tokenizer does not load ({type(err).__name__}: {one_line(err)}); save the training "
            f"tokenizer there with tokenizer.save_pretrained()"
        ) from err
    roles = ("tokenizer_config.json", "special_tokens_map.json")
    if tokenizer.bos_token is None and (path / "tokenizer.json").is_file() and not any((path / f).exists() for f in roles):
        special = [t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special]
        if special:
            raise CheckpointError(
                f"{path}: tokenizer.json without tokenizer_config.json: which of its special tokens ({_few(special, 3)}) is BOS "
                f"is not recorded, so documents would lose the BOS the model was trained with; save the training tokenizer "
                f"there with tokenizer.save_pretrained()"
            )
    return tokenizer


def load_config(path: Path) -> Any:
    """The ``transformers`` config of ``path``, refused when it needs code from the folder or is no causal LM."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    raw = read_config(path)
    model_type = raw.get("model_type")
    if model_type not in CONFIG_MAPPING_NAMES:
        code = f"; it asks to run code from the folder (auto_map {raw['auto_map']})" if raw.get("auto_map") else ""
        raise CheckpointError(
            f"{path}: config.json has model_type {model_type!r}, which transformers does not know{code}; plastiscope never "
            f"runs code from a checkpoint: convert the model to an architecture transformers supports and re-save it"
        )
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as err:
        if _asks_for_code(err):
            raise CheckpointError(f"{path}: config.json needs code from the folder; plastiscope never runs it") from None
        raise CheckpointError(f"{path}: config.json does not load ({type(err).__name__}: {one_line(err)}); fix or re-save it") from err
    check_causal_lm(config, path)
    return config


def check_causal_lm(config: Any, where: Any, architectures: Sequence[str] | None = None) -> None:
    """Refuse a config that is not a text-only causal language model (multimodal, encoder-only, seq2seq, ...).

    ``architectures``: the model classes (default: the config's ``architectures``). TransformerBridge
    would otherwise load processors for such models (and may try to install packages for them);
    plastiscope measures next-token models only.
    """
    from transformer_lens.utilities import architectures as tl
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    other = set().union(
        *(getattr(tl, n) for n in ("MULTIMODAL_ARCHITECTURES", "AUDIO_ARCHITECTURES", "AUDIO_TEXT_ARCHITECTURES",
                                   "AUDIO_CLASSIFICATION_ARCHITECTURES", "VISION_ARCHITECTURES", "VISION_MODEL_ARCHITECTURES",
                                   "VISION_CLASSIFICATION_ARCHITECTURES", "SEQ2SEQ_ARCHITECTURES", "MASKED_LM_ARCHITECTURES")
          if hasattr(tl, n))
    )  # fmt: skip
    model_type = getattr(config, "model_type", None)
    causal = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    architectures = list(architectures or getattr(config, "architectures", None) or [])
    sub = [k for k in ("vision_config", "audio_config", "encoder", "decoder") if getattr(config, k, None) is not None]
    wrong = [a for a in architectures if a in other or not (a == causal or a.endswith(("ForCausalLM", "LMHeadModel")))]
    if causal is None or causal in other or sub or wrong:
        what = f"architectures {architectures}" if architectures else f"model_type {model_type!r}"
        raise CheckpointError(
            f"{where}: {what} is not a text-only causal language model (multimodal, encoder-only or sequence-to-sequence "
            f"models are not supported); pass the folder of a *ForCausalLM model"
        )


def load_model(
    path: Path, dtype: torch.dtype, device: str, device_map: str | dict | None = None, attn_implementation: str = "eager"
) -> Any:
    """The ``transformers`` causal LM of ``path``: safetensors only, no code from the folder, every tensor accounted for."""
    from transformers import AutoModelForCausalLM

    check_folder(path)  # the files may have changed since the sweep was read
    config = load_config(path)
    check_config_fits_weights(path, config)  # before from_pretrained allocates what config.json says
    where = {"device_map": device_map} if device_map is not None else {}
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            str(path), config=config, local_files_only=True, trust_remote_code=False, use_safetensors=True,
            output_loading_info=True, attn_implementation=attn_implementation, dtype=dtype, ignore_mismatched_sizes=True, **where,
        )  # fmt: skip
    except Exception as err:
        raise CheckpointError(
            f"{path}: the weights do not load ({type(err).__name__}: {one_line(err)}); re-save the model with save_pretrained()"
        ) from err
    check_loading_info(path, config, info)
    if device_map is None:
        model = model.to(device)
    return model.eval()


def check_loading_info(path: Path, config: Any, info: dict[str, Any]) -> None:
    """Refuse missing, unexpected or mis-shaped tensors reported by ``from_pretrained(output_loading_info=True)``.

    ``transformers`` reports tied weights (an output layer tied to the embedding) as neither
    missing nor unexpected, and leaves out keys a model declares harmless (old attention-mask
    buffers), so anything reported is a tensor that would be random or ignored.
    """
    missing = sorted(info.get("missing_keys") or ())
    unexpected = sorted(info.get("unexpected_keys") or ())
    mismatched = sorted(info.get("mismatched_keys") or ())
    errors = list(info.get("error_msgs") or ())
    if not (missing or unexpected or mismatched or errors):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensor(s) the model needs are missing from the weights (they would be random): {_few(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} tensor(s) in the weights have no place in the model: {_few(unexpected)}")
    if mismatched:
        shapes = [f"{m[0]} {list(m[1])} in the weights, {list(m[2])} in the model" if isinstance(m, (tuple, list)) and len(m) == 3
                  else str(m) for m in mismatched]  # fmt: skip
        parts.append(f"{len(mismatched)} tensor(s) have another shape than config.json implies: {_few(shapes, 2)}")
    if errors:
        parts.append(f"loading errors: {_few(errors, 2)}")
    architectures = getattr(config, "architectures", None)
    if missing and unexpected:
        named = f"model_type {config.model_type!r}" + (f" ({', '.join(architectures)})" if architectures else "")
        fix = f"the weights do not fit {named} of config.json: restore the config.json saved with these weights"
    else:
        fix = "the weights and config.json do not belong together: re-save the model with save_pretrained() or re-copy the folder"
    raise CheckpointError(f"{path}: {'; '.join(parts)}; {fix}")


def check_finite(model: Any, where: str, dtype: torch.dtype | None = None) -> None:
    """Refuse a model with a NaN or infinite parameter, naming the tensors (chunked: no full-size temporary)."""
    bad = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.device.type == "meta" or not p.is_floating_point() or p.numel() == 0:
                continue  # offloaded by a device_map: not in memory, so not checked here
            flat = p.detach().reshape(-1)
            if not bool(torch.stack([torch.isfinite(c).all() for c in flat.split(1 << 24)]).all()):
                bad.append(f"{name} ({int((~torch.isfinite(flat)).sum())} of {flat.numel()} values)")
    if bad:
        hint = ""
        if dtype == torch.float16:
            hint = " (in float16; weights beyond its range of 65504 overflow: use --dtype bfloat16 or float32)"
        raise CheckpointError(
            f"{where}: non-finite (NaN or infinite) parameters{hint}: {_few(bad)}; the checkpoint is corrupt or its "
            f"training diverged: use another checkpoint or re-copy the folder"
        )


def tokenizer_size(tokenizer: Any) -> int:
    """How many ids the tokenizer can produce: its length, or its largest id + 1 if that is larger."""
    vocab = tokenizer.get_vocab()
    return max(len(tokenizer), max(vocab.values(), default=-1) + 1)


def check_vocabulary(tokenizer: Any, model: Any, where: str) -> None:
    """Refuse a tokenizer whose ids exceed the embedding, or that reaches fewer than 90 % of its rows.

    A few unused rows are normal (embeddings are padded to a multiple: Pythia has 50277 tokens
    for 50304 rows, Phi-2 50295 for 51200); many unused rows mean another model's tokenizer.
    """
    rows = int(model.get_input_embeddings().weight.shape[0])
    size = tokenizer_size(tokenizer)
    if size > rows:
        raise CheckpointError(
            f"{where}: the tokenizer has {size} tokens but the model's vocabulary has {rows} (ids {rows}-{size - 1} have no "
            f"embedding); the tokenizer does not belong to this model - save the training tokenizer with it"
        )
    if size < MIN_VOCABULARY_SHARE * rows:
        raise CheckpointError(
            f"{where}: the tokenizer has {size} tokens but the model's vocabulary has {rows} ({rows - size} rows no token "
            f"reaches); the tokenizer does not belong to this model - save the training tokenizer with it, or, if the "
            f"embedding was padded on purpose, shrink it: model.resize_token_embeddings({size}) and save_pretrained()"
        )


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A text that changes whenever the tokenization can: the full serialization of a fast tokenizer
    (vocabulary, merges, normalizer), else the vocabulary, plus the special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    special = [type(tokenizer).__name__, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
               sorted(map(str, tokenizer.all_special_tokens))]  # fmt: skip
    return body + json.dumps(special, default=str)


# ---------------------------------------------------------------------- folder checks
def check_folder(path: Path) -> None:
    """Raise :class:`CheckpointError` unless ``path`` is a usable Hugging Face model folder."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such folder; fix the path (manifest paths are relative to the manifest)")
    if not path.is_dir():
        raise CheckpointError(
            f"{path}: not a folder; a checkpoint is a Hugging Face model folder (config.json, model.safetensors, tokenizer)"
        )
    if not (path / "config.json").exists():
        raise CheckpointError(f"{path}: not a model folder (no config.json); save the model with model.save_pretrained()")
    for entry in path.iterdir():
        if not entry.name.startswith(".") and entry.exists() and not entry.is_dir():
            check_regular(entry)  # a pipe would block a reader, a device feed it for ever
    raw = read_config(path)
    check_context(raw, path / "config.json")
    check_norm_eps(raw, path / "config.json")
    weight_files(path)
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        raise CheckpointError(f"{path}: no tokenizer files; save the training tokenizer there with tokenizer.save_pretrained()")


def check_context(config: dict[str, Any], file: Path) -> None:
    """Refuse a context (``max_position_embeddings``, GPT-2's ``n_positions``, ...) under two tokens.

    A document is BOS and its text truncated to the context (:func:`plastiscope.data.encode`): a
    context of one token holds BOS alone, so every statistic would be one of no text at all.
    """
    for key in CONTEXT_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value < 2:
            raise CheckpointError(
                f"{file}: {key}={value} leaves no text token after BOS (a document needs BOS and at least one token); "
                f"restore the config.json saved with the model"
            )


def check_norm_eps(config: dict[str, Any], file: Path) -> None:
    """Refuse a normalisation epsilon (``rms_norm_eps``, ``layer_norm_eps``, ``layer_norm_epsilon``, ...) that is negative or not finite.

    The norm divides by ``sqrt(variance + eps)``: a negative ``eps`` gives NaN wherever the variance
    is below ``-eps`` and silently wrong activations elsewhere; no weight shape can tell.
    """
    for key, value in config.items():
        if re.search(r"(?:^|_)(?:eps|epsilon)$", str(key)) and isinstance(value, (int, float)) and not isinstance(value, bool) \
                and not (math.isfinite(value) and value >= 0):
            raise CheckpointError(f"{file}: {key}={value!r}; a normalisation epsilon is a small number >= 0 (the model was trained "
                                  "with one, e.g. 1e-5): restore the config.json saved with the model")


def check_config_fits_weights(path: Path, config: Any) -> None:
    """Refuse a ``config.json`` whose sizes the weights do not have, from the safetensors headers alone.

    The layer count is compared with the numbered blocks of the tensor names (a config may not
    ask for more than the weights hold), then the model is
    built on the ``meta`` device (shapes, no memory) and every tensor it shares a name with is
    compared with the header's shape. So ``num_hidden_layers=100000`` or ``vocab_size=10**9``
    beside small weights is refused before anything is allocated, naming config.json and the
    field, where ``transformers`` would first allocate the model and then blame the weights.
    """
    from transformers import AutoModelForCausalLM

    file = path / "config.json"
    headers = weight_headers(path)
    shapes = {name: (weights, shape) for weights, names in headers.items() for name, (_, shape) in names.items()}
    dtypes = {name: (weights, dtype) for weights, names in headers.items() for name, (dtype, _) in names.items()}
    blocks = {int(m.group(1)) for name in shapes if (m := LAYER_NAME.search(name))}
    layers = getattr(config, "num_hidden_layers", None)
    # more layers than the weights hold; extra blocks in the weights (multi-token-prediction heads a model does not
    # load) are left to transformers' loading info, which knows the ones a model ignores
    if blocks and isinstance(layers, int) and layers > max(blocks) + 1:
        key = config.attribute_map.get("num_hidden_layers", "num_hidden_layers")
        raise CheckpointError(
            f"{file}: {key}={layers} but the weights ({_names(shapes)}) hold {max(blocks) + 1} layers; "
            f"restore the config.json saved with these weights"
        )
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except Exception as err:
        raise CheckpointError(f"{file}: no model can be built from it ({type(err).__name__}: {one_line(err, 200)}); restore it") from None
    sizes = {k: v for k, v in config.to_dict().items() if isinstance(v, int) and not isinstance(v, bool)}
    floating = {name for name, tensor in model.state_dict().items() if tensor.is_floating_point()}
    for name in sorted(floating & set(dtypes)):
        weights, dtype = dtypes[name]
        if not dtype.startswith(("F", "BF")):
            raise CheckpointError(
                f"{weights}: {name} is stored as {dtype}, not a floating-point type, for a floating-point parameter (transformers would "
                f"cast it without a word); quantized or corrupt weights are not loaded: re-save the model in float precision"
            )
    state = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items() if name in shapes}
    fitting = {size for name, shape in state.items() if shape == shapes[name][1] for size in shape}
    for name, shape in state.items():
        weights, stored = shapes[name]
        if shape == stored:
            continue
        differ = {a for a, b in zip(shape, stored) if a != b} if len(shape) == len(stored) else set(shape)
        # a size some other tensor has in the weights too is the config's right: this tensor is then the odd one,
        # which transformers' loading info names (check_loading_info)
        fields = [k for k in (*SIZE_KEYS, *sizes) if sizes.get(k) in differ - fitting]
        if fields:
            raise CheckpointError(
                f"{file}: {fields[0]}={sizes[fields[0]]} does not fit the weights: {name} is {list(stored)} in {weights.name}, "
                f"the config implies {list(shape)}; restore the config.json saved with these weights"
            )


def _names(shapes: dict[str, tuple[Path, tuple[int, ...]]]) -> str:
    files = sorted({weights.name for weights, _ in shapes.values()})
    return ", ".join(files[:2]) + (f" (+{len(files) - 2} more)" if len(files) > 2 else "")


def check_out_folder(out: str | Path, folder: str | Path) -> None:
    """Refuse a results folder that is a checkpoint folder or lies inside one.

    Results written there (``metrics.parquet``, ``run.json``, ...) would be files of the
    checkpoint: its content hash (:func:`hashed_files`) would change on every run, and no run
    would ever find its cached results. ``folder`` that is no model folder (no ``config.json``:
    a sweep folder, a manifest) is no objection.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        return
    out_abs, folder_abs = Path(out).resolve(), folder.resolve()
    if out_abs == folder_abs or out_abs.is_relative_to(folder_abs):
        raise CheckpointError(
            f"{out}: the results folder is inside the checkpoint folder {folder} (its files would change the checkpoint's "
            f"content hash on every run); pass a results folder (--out) outside the checkpoint folders"
        )


def check_regular(file: Path) -> None:
    """Refuse a file (or the target of a link) that is not a regular file: a named pipe, a device, a socket."""
    if file.exists() and not file.is_file():
        raise CheckpointError(
            f"{file}: not a regular file (a pipe, device or socket{', linked' if file.is_symlink() else ''}); a checkpoint's "
            f"files are plain files: re-copy the checkpoint"
        )


def read_config(path: Path) -> dict[str, Any]:
    """``config.json`` of ``path`` as a dict; a clear error when it is not a JSON object."""
    file = path / "config.json"
    check_regular(file)
    try:
        data = json.loads(file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise CheckpointError(f"{file}: not valid JSON ({err}); restore the config.json saved with the model") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: not a JSON object; restore the config.json saved with the model")
    return data


def weight_files(path: Path) -> list[Path]:
    """The weight files ``transformers`` loads from ``path`` with ``use_safetensors=True``, checked.

    ``model.safetensors`` when it is there: ``transformers`` loads it even beside a
    ``model.safetensors.index.json`` (which re-saving a sharded model unsharded leaves behind),
    so the file it loads, never the index, decides what is checked and hashed. Else
    ``model.safetensors.index.json`` and every shard it names (each present, each header sound,
    every tensor of the index in its shard). Any other ``*.safetensors`` file is not the model's
    weights and does not make a folder loadable; pickles (``pytorch_model.bin``, ``*.pt``) are
    never loaded.
    """
    return list(weight_headers(path))


def weight_headers(path: Path) -> dict[Path, dict[str, tuple[str, tuple[int, ...]]]]:
    """``(dtype, shape)`` of every tensor of the weights ``transformers`` loads (:func:`weight_files`), by file
    and tensor name (dtype as safetensors writes it: ``F32``, ``BF16``, ``I64``), from the headers alone."""
    index, single = path / WEIGHTS_INDEX, path / WEIGHTS
    if single.exists() or single.is_symlink():
        return {single: safetensors_header(single)}
    if index.exists():
        check_regular(index)
        try:
            weight_map = json.loads(index.read_bytes().decode("utf-8"))["weight_map"]
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise ValueError("weight_map is not a map of tensor names to shard files")
        except (ValueError, KeyError, TypeError, RecursionError) as err:
            raise CheckpointError(f"{index}: not a valid safetensors index ({err}); re-save the model with save_pretrained()") from None
        shards = sorted(set(weight_map.values()))
        outside = [s for s in shards if Path(s).name != s or s in (".", "..")]
        if outside:
            raise CheckpointError(f"{index}: names shards outside the folder ({_few(outside)}); re-save the model with save_pretrained()")
        missing = [s for s in shards if not (path / s).exists()]
        if missing:
            raise CheckpointError(f"{index}: {len(missing)} shard(s) it names are missing: {_few(missing)}; copy them into {path}")
        shapes = {path / shard: safetensors_header(path / shard) for shard in shards}
        found = set().union(*(set(names) for names in shapes.values()))
        absent = sorted(set(weight_map) - found)
        if absent:
            raise CheckpointError(f"{index}: tensors {_few(absent)} are in no shard; re-copy the checkpoint")
        twice = sorted(name for name in found if sum(name in names for names in shapes.values()) > 1)
        if twice:
            raise CheckpointError(f"{index}: tensors {_few(twice)} are in more than one shard; re-save the model with save_pretrained()")
        return {index: {}, **shapes}
    pickles = sorted(p.name for p in path.iterdir() if p.name.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt", ".bin.index.json")))
    others = sorted(p.name for p in path.glob("*.safetensors"))
    if pickles and not others:
        raise CheckpointError(
            f"{path}: no *.safetensors weights ({', '.join(pickles)} are pickles and are never loaded); unpickling can run "
            f"code, so convert them once to safetensors: {CONVERT.format(path=path)}"
        )
    found_text = f" ({', '.join(others)} {'is' if len(others) == 1 else 'are'} not the model's weights)" if others else ""
    pickle_text = f"; {', '.join(pickles)} are pickles and are never loaded" if pickles else ""
    raise CheckpointError(
        f"{path}: no {WEIGHTS} or {WEIGHTS_INDEX}{found_text}{pickle_text}; save the model there with "
        f"model.save_pretrained(path) (safetensors)"
    )


def safetensors_header(file: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``(dtype, shape)`` of each tensor in a safetensors file, from its header alone; a truncated or corrupt
    file (header length, JSON, offsets against the file's size, a header over 100 MB) is refused naming it."""
    from safetensors import safe_open

    if not file.exists():
        raise CheckpointError(f"{file}: a link to a missing file (an incomplete download?); download or copy the checkpoint again")
    check_regular(file)
    try:
        with safe_open(str(file), framework="pt") as f:
            return {name: (f.get_slice(name).get_dtype(), tuple(f.get_slice(name).get_shape())) for name in f.keys()}
    except Exception as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{file}: truncated or corrupt safetensors file ({reason}); re-copy or re-save the checkpoint") from None


def hashed_files(path: Path) -> list[Path]:
    """The files of a checkpoint folder its content hash covers, sorted by name.

    Every file a loader may read: the weights ``transformers`` loads (:func:`weight_files`),
    config files, every tokenizer file whatever its name, and any other file beside them. Left
    out: the hyperparameter files (:data:`HYPERPARAMETER_FILES`: results take hyperparameters
    from the sweep as it is now), ``*.safetensors`` files and an index that are not the weights, pickles and
    other weight formats (never loaded), Python files (never run), docs and hidden files.
    """
    weights = set(weight_files(path))
    files = []
    for file in sorted(path.iterdir()):
        name = file.name
        if name.startswith(".") or not file.is_file() or name in HYPERPARAMETER_FILES:
            continue
        if (name.endswith(".safetensors") or name == WEIGHTS_INDEX) and file not in weights:
            continue  # weights transformers does not load: another model's, or an index beside model.safetensors
        if name.lower().endswith(UNREAD_SUFFIXES) or name.startswith("events.out.tfevents"):
            continue
        files.append(file)
    return files


def read_hyperparameters(path: Path) -> dict[str, Any]:
    """Hyperparameters from JSON files in ``path`` or its parent; pickles (training_args.bin) are skipped."""
    found: dict[str, Any] = {}
    for folder in (path.parent, path):  # the folder's own files win
        for name in HYPERPARAMETER_FILES:
            file = folder / name
            if not file.exists():
                continue
            check_regular(file)
            try:
                data = json.loads(file.read_bytes().decode("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
                raise CheckpointError(f"{file}: not valid JSON ({err}); fix or remove it") from None
            if isinstance(data, dict):
                for key, value in data.items():
                    key = KEY_ALIASES.get(key, key)
                    scalar = isinstance(value, (str, int, float, bool))
                    if scalar and (key in KEPT_KEYS or name == "plastiscope.json"):
                        found[key] = value
    return found


# ---------------------------------------------------------------------- the Hugging Face cache
def hf_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, or the hub cache ``transformers`` uses (``HF_HUB_CACHE``, else ``HF_HOME/hub``)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hf_snapshot(repo: str, revision: str = "main", cache_dir: str | Path | None = None) -> Path:
    """The snapshot folder of ``repo`` at ``revision`` in the hub cache, read offline.

    The cache layout: ``models--{org}--{name}/refs/{revision}`` holds a commit hash,
    ``snapshots/{commit}/`` the files (often links into ``blobs/``). A 40-hex-digit revision is
    a commit itself. Errors name the repository, the revision and the cache folder looked in.
    """
    cache = hf_cache_dir(cache_dir)
    where = f"{repo}@{revision}"
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", str(repo)) or ".." in str(repo):
        raise CheckpointError(f"{where}: {repo!r} is not a repository id; write ORG/NAME, e.g. EleutherAI/pythia-160m")
    parts = str(revision).split("/")
    if not revision or any(p in ("", ".", "..") for p in parts):
        raise CheckpointError(f"{where}: {revision!r} is not a revision; write a branch, tag or commit, e.g. main or step1000")
    folder = cache / ("models--" + str(repo).replace("/", "--"))
    fetch = f"download it while online (hf download {repo} --revision {revision}) or pass the cache folder that holds it (cache_dir)"
    if not folder.is_dir():
        raise CheckpointError(f"{where}: not in the Hugging Face cache {cache} (no {folder.name}); {fetch}")
    if COMMIT.fullmatch(revision):
        commit = revision
    else:
        ref = folder.joinpath("refs", *parts)
        if not ref.is_file():
            refs = sorted(str(p.relative_to(folder / "refs")) for p in (folder / "refs").rglob("*") if p.is_file())
            raise CheckpointError(
                f"{where}: the cache {folder} has no ref for revision {revision!r} (it has {refs or 'none'}); {fetch}"
            )
        try:
            commit = ref.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{where}: the ref {ref} is unreadable ({err}); {fetch}") from None
        if not COMMIT.fullmatch(commit):
            raise CheckpointError(
                f"{where}: the ref {ref} holds {commit[:80]!r}, which is not a commit hash (40 hex digits); a ref names a "
                f"snapshot of this repository, never a path: {fetch}"
            )
    snapshots = folder / "snapshots"
    snapshot = snapshots / commit
    if not snapshot.is_dir():
        raise CheckpointError(f"{where}: commit {commit} has no snapshot in {snapshots} (an incomplete download?); {fetch}")
    if snapshot.resolve().parent != snapshots.resolve():
        raise CheckpointError(
            f"{where}: the snapshot {snapshot} is a link to {snapshot.resolve()}, outside the repository's snapshots; {fetch}"
        )
    repository = folder.resolve()
    for file in snapshot.iterdir():  # the hub links a snapshot's files to the repository's blobs, nowhere else
        if file.is_symlink() and not file.resolve().is_relative_to(repository):
            raise CheckpointError(
                f"{where}: {file} is a link to {file.resolve()}, outside the repository {folder} (a cache file links into "
                f"its blobs); {fetch}"
            )
    return snapshot
