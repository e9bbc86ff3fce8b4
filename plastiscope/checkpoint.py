"""Checkpoints and sweeps: local Hugging Face folders, the Hugging Face cache, or in-memory models.

A :class:`Checkpoint` is one pretrained model with its weight decay and other
hyperparameters; its model is loaded through TransformerLens 4's ``TransformerBridge``
(over ``transformers``) only when an analysis needs it, and freed with :meth:`unload`.
A :class:`Sweep` is a sequence of checkpoints, read from a manifest, discovered in a
folder, or taken from the revisions of one repository in the Hugging Face cache.

Loading is strict, because a model that loads wrongly gives plausible wrong numbers:

- nothing is fetched from a hub (``local_files_only=True`` on every ``transformers`` call)
  and no code from a checkpoint folder ever runs (``trust_remote_code=False``: a folder that
  needs its own code is refused, never prompted about);
- weights come from safetensors only (``model.safetensors``, or ``model.safetensors.index.json``
  and every shard it names, headers checked); pickles are never loaded, a folder with only
  pickles is refused with the conversion command;
- missing, unexpected or mis-shaped tensors (``transformers``' loading info; weights that are
  legitimately tied, such as an output layer tied to the embedding, are not missing), a
  ``model_type`` the weights do not fit, non-finite parameters, a model that is not a causal
  language model (multimodal, encoder-only, sequence-to-sequence), and a tokenizer whose ids
  exceed the embedding or that reaches less than 90 % of its rows are refused, each with the
  path and the fix.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import io
import json
import math
import re
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from plastiscope.memo import file_digest

HYPERPARAMETER_FILES = ("plastiscope.json", "training_args.json", "trainer_state.json", "hyperparameters.json")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
WEIGHTS, WEIGHTS_INDEX = "model.safetensors", "model.safetensors.index.json"
# files a loader never reads: pickles and other weight formats (never loaded), docs, version-control files
UNREAD_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".md", ".py", ".lock")
# a tokenizer must reach at least this share of the embedding's rows (real models pad a little:
# Pythia 50277 tokens for 50304 rows, Phi-2 50295 for 51200)
MIN_VOCABULARY_SHARE = 0.9
# keys trainers use for the same hyperparameter -> our column name
KEY_ALIASES = {"lr": "learning_rate", "lr_scheduler_type": "schedule", "global_step": "step", "wd": "weight_decay"}
KEPT_KEYS = ("weight_decay", "learning_rate", "schedule", "seed", "step", "tokens", "label", "warmup_steps", "max_steps")
CONVERT = (
    "python -c \"from transformers import AutoModelForCausalLM as M; M.from_pretrained('{path}', use_safetensors=False)"
    ".save_pretrained('{path}', safe_serialization=True)\" (this reads the pickle: run it only on files you trust)"
)


class CheckpointError(ValueError):
    """A checkpoint cannot be used: the message names the path and the fix."""


@dataclass(frozen=True)
class CheckpointSpec:
    """Everything that makes a folder checkpoint what it is, picklable and hashable: what another
    process needs to rebuild it (:meth:`checkpoint`), built by :meth:`Checkpoint.spec`.

    ``path`` is the model folder (for a Hugging Face cache checkpoint, the snapshot its revision
    resolved to); ``repo``, ``revision`` and ``cache_dir`` say where in the cache it came from.
    ``hyperparameters`` are ``(key, value)`` pairs without ``weight_decay`` (lists frozen to
    tuples, mappings to sorted pairs); ``dtype`` is a torch dtype's name (``"float32"``);
    ``device_map`` is ``None``, a string (``"auto"``) or a mapping frozen to sorted pairs.
    """

    name: str
    weight_decay: float
    hyperparameters: tuple[tuple[str, Any], ...] = ()
    path: str | None = None
    repo: str | None = None
    revision: str | None = None
    cache_dir: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    device_map: str | tuple[tuple[str, Any], ...] | None = None

    def checkpoint(self) -> Checkpoint:
        """The checkpoint this spec describes, placed on its device, dtype and device map (not loaded yet).

        A spec with a ``repo`` and no ``path`` resolves its revision in the cache now.
        """
        path = Path(self.path) if self.path is not None else None
        if path is None and self.repo is not None:
            path = hf_snapshot(self.repo, self.revision or "main", self.cache_dir)
        if path is None:
            raise CheckpointError(f"{self.name}: the spec names no folder (path) nor cache repository (repo); give one")
        dtype = getattr(torch, self.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise CheckpointError(f"{self.name}: dtype {self.dtype!r} is not a torch dtype; choose from {', '.join(DTYPES)}")
        device_map = dict(self.device_map) if isinstance(self.device_map, tuple) else self.device_map
        checkpoint = Checkpoint(self.name, self.weight_decay, {k: _thaw(v) for k, v in self.hyperparameters}, path=path,
                                device=self.device, dtype=dtype)  # fmt: skip
        checkpoint.device_map = device_map
        checkpoint.repo, checkpoint.revision = self.repo, self.revision
        checkpoint.cache_dir = Path(self.cache_dir) if self.cache_dir is not None else None
        return checkpoint


def _freeze(value: Any) -> Any:
    """A hashable stand-in for a hyperparameter or device-map value: lists to tuples, mappings to sorted pairs."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple, set)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    """Tuples back to lists (a hyperparameter read from JSON or YAML is a list, never a tuple)."""
    return [_thaw(v) for v in value] if isinstance(value, tuple) else value


class Checkpoint:
    """One model of a sweep: ``name``, ``weight_decay``, ``hyperparameters``; the model loads lazily.

    Build with :meth:`from_pretrained` (a local Hugging Face folder), :meth:`from_hf_cache`
    (a revision in the local Hugging Face cache) or :meth:`from_model` (an in-memory
    ``transformers`` model or ``TransformerBridge``).
    """

    def __init__(
        self,
        name: str,
        weight_decay: float,
        hyperparameters: dict[str, Any] | None = None,
        path: Path | None = None,
        model: Any = None,
        tokenizer: Any = None,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.name = str(name)
        self.weight_decay = float(weight_decay)
        self.hyperparameters = {"weight_decay": self.weight_decay, **(hyperparameters or {})}
        self.hyperparameters["weight_decay"] = self.weight_decay
        self.path = path
        self.device = device
        self.dtype = dtype
        self.device_map: str | dict | None = None
        # where in the Hugging Face cache a folder came from (from_hf_cache): repository, revision, cache folder
        self.repo: str | None = None
        self.revision: str | None = None
        self.cache_dir: Path | None = None
        self._model = model  # in-memory model handed over from a notebook
        self._tokenizer = tokenizer
        self._bridge = None

    def __repr__(self) -> str:
        where = str(self.path) if self.path else "in memory"
        return f"Checkpoint({self.name!r}, weight_decay={self.weight_decay:g}, {where})"

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls, path: str | Path, weight_decay: float | None = None, name: str | None = None, **hyperparameters: Any
    ) -> Checkpoint:
        """A local Hugging Face model folder (config.json, model.safetensors, tokenizer files).

        Hyperparameters not given are read from JSON files the trainers write in the folder
        or its parent (``plastiscope.json``, ``training_args.json``, ``trainer_state.json``).
        """
        path = Path(path)
        check_folder(path)
        found = read_hyperparameters(path)
        found.update({k: v for k, v in hyperparameters.items() if v is not None})
        if weight_decay is not None:
            found["weight_decay"] = weight_decay
        wd = found.pop("weight_decay", None)
        if wd is None or (isinstance(wd, float) and math.isnan(wd)):
            raise CheckpointError(
                f"{path}: weight decay unknown; pass weight_decay=..., add a weight_decay column to the "
                f"manifest, or write {{\"weight_decay\": ...}} to {path / 'plastiscope.json'}"
            )
        try:
            wd = float(wd)
        except (TypeError, ValueError):
            raise CheckpointError(f"{path}: weight decay {wd!r} is not a number; fix it in the manifest") from None
        label = found.get("label")
        name = name or (str(label) if label not in (None, "") and not _isnan(label) else path.name)
        return cls(name, wd, found, path=path)

    @classmethod
    def from_hf_cache(
        cls,
        repo: str,
        revision: str = "main",
        cache_dir: str | Path | None = None,
        weight_decay: float | None = None,
        name: str | None = None,
        **hyperparameters: Any,
    ) -> Checkpoint:
        """One revision of a repository in the local Hugging Face hub cache; nothing is downloaded.

        ``revision`` is a branch or tag the cache holds a ref for (``main``, ``step1000``) or a
        commit hash; ``cache_dir`` defaults to the hub's (``HF_HUB_CACHE`` / ``HF_HOME``). A
        revision named ``stepN`` gives the hyperparameter ``step=N``. The name is
        ``repo@revision`` unless ``name`` or a ``label`` is given. ``weight_decay`` is required
        (the value the model was trained with).
        """
        snapshot = hf_snapshot(repo, revision, cache_dir)
        where = f"{repo}@{revision} ({snapshot})"
        if weight_decay is None and hyperparameters.get("weight_decay") is None:
            raise CheckpointError(
                f"{where}: weight decay unknown; pass weight_decay=... (the value the model was trained with) "
                f"or add a weight_decay column to the manifest"
            )
        step = re.fullmatch(r"step(\d+)", revision)
        if step and hyperparameters.get("step") is None:
            hyperparameters["step"] = int(step.group(1))
        label = hyperparameters.get("label")
        name = name or (str(label) if label not in (None, "") and not _isnan(label) else f"{repo}@{revision}")
        try:
            checkpoint = cls.from_pretrained(snapshot, weight_decay=weight_decay, name=name, **hyperparameters)
        except CheckpointError as err:
            raise CheckpointError(f"{repo}@{revision}: {err}") from None
        checkpoint.repo, checkpoint.revision = str(repo), str(revision)
        checkpoint.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        return checkpoint

    @classmethod
    def from_model(
        cls, model: Any, tokenizer: Any, weight_decay: float, name: str | None = None, **hyperparameters: Any
    ) -> Checkpoint:
        """An in-memory ``transformers`` causal LM or ``TransformerBridge`` and its tokenizer.

        The bridge wraps the model's modules in place (TransformerBridge's design): pass a copy
        (``copy.deepcopy(model)``) if the notebook will keep training or saving the original.
        Non-finite parameters and a tokenizer that does not fit the embedding are refused on
        first use, as for folders.
        """
        if tokenizer is None:
            raise CheckpointError("from_model: a tokenizer is required (the one the model was trained with)")
        if weight_decay is None:
            raise CheckpointError("from_model: weight_decay is required (pass weight_decay=...)")
        name = name or hyperparameters.get("label") or f"model-{id(model):x}"
        return cls(name, weight_decay, hyperparameters, model=model, tokenizer=tokenizer)

    def spec(self) -> CheckpointSpec:
        """What another process needs to rebuild this checkpoint (:meth:`CheckpointSpec.checkpoint`).

        Folders and Hugging Face cache revisions only: an in-memory model (:meth:`from_model`)
        cannot travel to another process (save it with ``save_pretrained`` and use the folder).
        """
        if self.path is None:
            raise CheckpointError(
                f"{self.where}: an in-memory model cannot be rebuilt in another process; save it with "
                f"model.save_pretrained(folder) and tokenizer.save_pretrained(folder), then use Checkpoint.from_pretrained(folder)"
            )
        hyper = tuple((str(k), _freeze(v)) for k, v in self.hyperparameters.items() if k != "weight_decay")
        return CheckpointSpec(
            name=self.name, weight_decay=self.weight_decay, hyperparameters=hyper, path=str(self.path), repo=self.repo,
            revision=self.revision, cache_dir=str(self.cache_dir) if self.cache_dir is not None else None,
            device=str(self.device), dtype=str(self.dtype).removeprefix("torch."), device_map=_freeze(self.device_map),
        )  # fmt: skip

    # ------------------------------------------------------------------ loading
    def to(self, device: str | None = None, dtype: str | torch.dtype | None = None, device_map: str | dict | None = None) -> Checkpoint:
        """Where and in which precision the model runs: ``device`` ("cpu", "cuda", "cuda:1",
        "auto" = cuda when available), ``dtype`` (float32, bfloat16, float16: the forward pass
        only; every statistic accumulates in float32), or ``device_map`` ("auto", a dict) to
        spread or offload a large checkpoint (folders only). Frees the loaded model if it changes.
        """
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise ValueError(f"dtype {dtype!r}: choose from {', '.join(DTYPES)}")
            dtype = DTYPES[dtype]
        changed = (device or self.device, dtype or self.dtype, device_map) != (self.device, self.dtype, self.device_map)
        self.device, self.dtype, self.device_map = device or self.device, dtype or self.dtype, device_map
        if changed and self._model is not None and self.device_map is None:
            self._model = self._model.to(device=self.device, dtype=self.dtype)
            self._bridge = None
        elif changed:
            self.unload()
        return self

    @property
    def device_type(self) -> str:
        """``"cuda"``, ``"cpu"``, ...: the kind of device the forward runs on (part of cache keys)."""
        if self.device_map is not None:
            return "device_map"
        return torch.device(self.device).type

    @property
    def where(self) -> str:
        """The folder, or the name of an in-memory model: how messages name this checkpoint."""
        return str(self.path) if self.path is not None else f"{self.name} (in memory)"

    @property
    def tokenizer(self) -> Any:
        """The checkpoint's own tokenizer, loaded on first use (never with code from the folder)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.path)
        return self._tokenizer

    @property
    def bridge(self) -> Any:
        """The ``TransformerBridge`` of this checkpoint, loaded on first use (eval mode, no grad needed)."""
        if self._bridge is None:
            self._bridge = self._load()
        return self._bridge

    def _load(self) -> Any:
        from transformer_lens.model_bridge import TransformerBridge

        if self._model is not None:
            model = self._model.original_model if isinstance(self._model, TransformerBridge) else self._model
            if not isinstance(self._model, TransformerBridge):
                check_causal_lm(model.config, self.where, [type(model).__name__])  # the bridge would look for processors
            check_finite(model, self.where, self.dtype)
            check_vocabulary(self.tokenizer, model, self.where)
            if isinstance(self._model, TransformerBridge):
                bridge = self._model
            else:
                config = self._model.config
                if not getattr(config, "architectures", None):
                    config.architectures = [type(self._model).__name__]
                bridge = TransformerBridge.boot_transformers(
                    f"in-memory/{self.name}", hf_model=self._model, tokenizer=_bridge_tokenizer(self.tokenizer), device=self.device
                )
        else:
            model = load_model(self.path, self.dtype, self.device, self.device_map)
            check_finite(model, self.where, self.dtype)
            check_vocabulary(self.tokenizer, model, self.where)
            try:
                bridge = TransformerBridge.boot_transformers(
                    str(self.path), hf_model=model, tokenizer=_bridge_tokenizer(self.tokenizer),
                    device=self.device if self.device_map is None else None, dtype=self.dtype,
                )  # fmt: skip
            except Exception as err:
                raise CheckpointError(
                    f"{self.path}: the model does not load through TransformerBridge ({type(err).__name__}: "
                    f"{str(err)[:300]}); check that TransformerLens supports its architecture"
                ) from err
        bridge.eval()
        return bridge

    def unload(self) -> None:
        """Free the loaded model (the next use loads it again)."""
        if self._bridge is not None and self._model is None:
            self._bridge = None
            gc.collect()

    @property
    def hf_model(self) -> Any:
        """The underlying ``transformers`` model."""
        return self.bridge.original_model

    @property
    def n_ctx(self) -> int:
        """The context length in tokens."""
        return int(self.bridge.cfg.n_ctx)

    @property
    def n_layers(self) -> int:
        """The number of transformer blocks."""
        return int(self.bridge.cfg.n_layers)

    @property
    def n_heads(self) -> int:
        """The number of attention heads per layer."""
        return int(self.bridge.cfg.n_heads)

    @property
    def vocab_size(self) -> int:
        """The size of the model's vocabulary (rows of the embedding)."""
        return int(self.bridge.cfg.d_vocab)

    def content_hash(self) -> str:
        """Hash of what results depend on in the checkpoint itself: identifies its results in caches.

        A folder: every file of :func:`hashed_files` (weights, config, tokenizer and the other
        files a loader may read; not the hyperparameter files, which results take from the
        sweep as it is now), digests of large files reused while unchanged
        (:class:`plastiscope.memo.FileHashes`). An in-memory model: its parameters and buffers
        (name, dtype, shape, bytes) and its tokenizer.
        """
        digest = hashlib.blake2b(digest_size=16)
        if self.path is not None:
            for file in hashed_files(self.path):
                digest.update(f"{file.name}\0{file_digest(file)}\0".encode())
        else:
            for key, tensor in sorted(self.hf_model.state_dict().items()):
                digest.update(f"{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
                digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
            digest.update(tokenizer_fingerprint(self.tokenizer).encode())
        return digest.hexdigest()

    def random_init(self, seed: int = 0) -> Checkpoint:
        """The same architecture with fresh random weights (seeded; the global RNG is left as it was),
        on this checkpoint's device and in its dtype: a baseline for what training added."""
        from transformers import AutoModelForCausalLM

        config = copy.deepcopy(self.hf_model.config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=False).eval()
        hyper = {**self.hyperparameters, "init": "random"}
        hyper.pop("weight_decay", None)
        baseline = Checkpoint.from_model(model, self.tokenizer, self.weight_decay, name=f"{self.name} (random init)", **hyper)
        return baseline.to(device=self.device if self.device_map is None else "cpu", dtype=self.dtype)


def trainable_copy(model: Any) -> Any:
    """A plain ``transformers`` model with ``model``'s config and a float32 copy of its parameters,
    on the device of its first parameter, ready to train.

    A checkpoint's ``hf_model`` is wrapped in place by TransformerLens's bridge, whose hook
    closures keep pointing at the original modules through ``copy.deepcopy`` (a deep copy's
    forward writes into the original). So the copy is rebuilt from the config and the
    parameters are copied by name, with the bridge's ``._original_component`` wrappers
    stripped; every parameter must match.
    """
    from transformers import AutoModelForCausalLM

    device = next(model.parameters()).device
    with torch.device(device):
        fresh = AutoModelForCausalLM.from_config(copy.deepcopy(model.config), dtype=torch.float32, trust_remote_code=False)
    state = {name.replace("._original_component", ""): p.detach() for name, p in model.named_parameters()}
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    expected = {name for name, _ in fresh.named_parameters()}
    missing = [m for m in missing if m in expected]
    if missing or unexpected:
        raise RuntimeError(f"cannot copy the model for training (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for p in fresh.parameters():
        p.requires_grad_(True)
    return fresh


def _isnan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _few(names: Sequence[Any], k: int = 4) -> str:
    """``'a', 'b', 'c' (+5 more)``: a short list for messages."""
    names = [str(n) for n in names]
    more = f" (+{len(names) - k} more)" if len(names) > k else ""
    return ", ".join(repr(n) for n in names[:k]) + more


def _bridge_tokenizer(tokenizer: Any) -> Any:
    """A copy the bridge may reconfigure; our own tokenization never uses it."""
    tok = copy.deepcopy(tokenizer)
    tok.init_kwargs.setdefault("name_or_path", getattr(tok, "name_or_path", ""))
    if tok.bos_token is not None:
        tok.init_kwargs["add_bos_token"] = True  # stops the bridge from re-loading a BOS variant from the folder
    return tok


# ---------------------------------------------------------------------- strict loading
def _asks_for_code(err: BaseException) -> bool:
    text = str(err)
    return "custom code" in text or "trust_remote_code" in text


def load_tokenizer(path: Path) -> Any:
    """The tokenizer saved in ``path``; never runs code from the folder, never prompts."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as err:
        if _asks_for_code(err):
            raise CheckpointError(
                f"{path}: the tokenizer needs code from the folder (auto_map in tokenizer_config.json); plastiscope never "
                f"runs code from a checkpoint: save a tokenizer transformers knows there (e.g. tokenizer.json with "
                f"PreTrainedTokenizerFast, via tokenizer.save_pretrained())"
            ) from None
        raise CheckpointError(
            f"{path}: the tokenizer does not load ({type(err).__name__}: {str(err)[:300]}); save the training "
            f"tokenizer there with tokenizer.save_pretrained()"
        ) from err


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
        raise CheckpointError(f"{path}: config.json does not load ({type(err).__name__}: {str(err)[:300]}); fix or re-save it") from err
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


def load_model(path: Path, dtype: torch.dtype, device: str, device_map: str | dict | None = None) -> Any:
    """The ``transformers`` causal LM of ``path``: safetensors only, no code from the folder, every tensor accounted for."""
    from transformers import AutoModelForCausalLM

    check_folder(path)  # the files may have changed since the sweep was read
    config = load_config(path)
    where = {"device_map": device_map} if device_map is not None else {}
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            str(path), config=config, local_files_only=True, trust_remote_code=False, use_safetensors=True,
            output_loading_info=True, attn_implementation="eager", dtype=dtype, ignore_mismatched_sizes=True, **where,
        )  # fmt: skip
    except Exception as err:
        raise CheckpointError(
            f"{path}: the weights do not load ({type(err).__name__}: {str(err)[:300]}); re-save the model with save_pretrained()"
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
    read_config(path)
    weight_files(path)
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        raise CheckpointError(f"{path}: no tokenizer files; save the training tokenizer there with tokenizer.save_pretrained()")


def read_config(path: Path) -> dict[str, Any]:
    """``config.json`` of ``path`` as a dict; a clear error when it is not a JSON object."""
    file = path / "config.json"
    try:
        data = json.loads(file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file}: not valid JSON ({err}); restore the config.json saved with the model") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: not a JSON object; restore the config.json saved with the model")
    return data


def weight_files(path: Path) -> list[Path]:
    """The weight files ``transformers`` loads from ``path`` with ``use_safetensors=True``, checked.

    ``model.safetensors.index.json`` and every shard it names (each present, each header sound,
    every tensor of the index in its shard), else ``model.safetensors``. Any other
    ``*.safetensors`` file is not the model's weights and does not make a folder loadable;
    pickles (``pytorch_model.bin``, ``*.pt``) are never loaded.
    """
    index, single = path / WEIGHTS_INDEX, path / WEIGHTS
    if index.exists():
        try:
            weight_map = json.loads(index.read_bytes().decode("utf-8"))["weight_map"]
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise ValueError("weight_map is not a map of tensor names to shard files")
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{index}: not a valid safetensors index ({err}); re-save the model with save_pretrained()") from None
        shards = sorted(set(weight_map.values()))
        outside = [s for s in shards if Path(s).name != s]
        if outside:
            raise CheckpointError(f"{index}: names shards outside the folder ({_few(outside)}); re-save the model with save_pretrained()")
        missing = [s for s in shards if not (path / s).exists()]
        if missing:
            raise CheckpointError(f"{index}: {len(missing)} shard(s) it names are missing: {_few(missing)}; copy them into {path}")
        found: set[str] = set()
        for shard in shards:
            found |= set(check_safetensors(path / shard))
        absent = sorted(set(weight_map) - found)
        if absent:
            raise CheckpointError(f"{index}: tensors {_few(absent)} are in no shard; re-copy the checkpoint")
        return [index] + [path / s for s in shards]
    if single.exists() or single.is_symlink():
        check_safetensors(single)
        return [single]
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


def check_safetensors(file: Path) -> list[str]:
    """Check a safetensors file's header and size without loading it (catches truncated or corrupt files);
    return the names of its tensors."""
    if not file.exists():
        raise CheckpointError(f"{file}: a link to a missing file (an incomplete download?); download or copy the checkpoint again")
    size = file.stat().st_size
    try:
        with file.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(size - 8, 100 << 20):
                raise ValueError("header length beyond the file")
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except Exception as err:
        raise CheckpointError(f"{file}: truncated or corrupt safetensors file ({err}); re-copy or re-save the checkpoint") from None
    if 8 + n + end != size:
        raise CheckpointError(
            f"{file}: truncated or corrupt safetensors file ({size} bytes, header says {8 + n + end}); re-copy the checkpoint"
        )
    return [k for k in header if k != "__metadata__"]


def hashed_files(path: Path) -> list[Path]:
    """The files of a checkpoint folder its content hash covers, sorted by name.

    Every file a loader may read: the weights ``transformers`` loads (:func:`weight_files`),
    config files, every tokenizer file whatever its name, and any other file beside them. Left
    out: the hyperparameter files (:data:`HYPERPARAMETER_FILES`: results take hyperparameters
    from the sweep as it is now), ``*.safetensors`` files that are not the weights, pickles and
    other weight formats (never loaded), Python files (never run), docs and hidden files.
    """
    weights = set(weight_files(path))
    files = []
    for file in sorted(path.iterdir()):
        name = file.name
        if name.startswith(".") or not file.is_file() or name in HYPERPARAMETER_FILES:
            continue
        if name.endswith(".safetensors") and file not in weights:
            continue
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
            try:
                data = json.loads(file.read_bytes().decode("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
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
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        commit = revision
    else:
        ref = folder.joinpath("refs", *parts)
        if not ref.is_file():
            refs = sorted(str(p.relative_to(folder / "refs")) for p in (folder / "refs").rglob("*") if p.is_file())
            raise CheckpointError(
                f"{where}: the cache {folder} has no ref for revision {revision!r} (it has {refs or 'none'}); {fetch}"
            )
        commit = ref.read_text(encoding="utf-8").strip()
    snapshot = folder / "snapshots" / commit
    if not snapshot.is_dir():
        raise CheckpointError(f"{where}: commit {commit} has no snapshot in {folder / 'snapshots'} (an incomplete download?); {fetch}")
    return snapshot


# ---------------------------------------------------------------------- sweeps
class Sweep(Sequence[Checkpoint]):
    """A sequence of checkpoints; ``errors`` keeps those that could not be built (reported, skipped)."""

    def __init__(self, checkpoints: Sequence[Checkpoint], errors: Sequence[dict[str, Any]] = ()):
        self.checkpoints = list(checkpoints)
        self.errors = list(errors)
        names = [c.name for c in self.checkpoints]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise CheckpointError(f"several checkpoints are named {dupes}; give each a distinct label (a 'label' column)")

    def __len__(self) -> int:
        return len(self.checkpoints)

    def __iter__(self) -> Iterator[Checkpoint]:
        return iter(self.checkpoints)

    def __getitem__(self, key: int | slice | str) -> Any:
        if isinstance(key, slice):
            return Sweep(self.checkpoints[key])
        if isinstance(key, str):
            for c in self.checkpoints:
                if c.name == key:
                    return c
            raise KeyError(f"no checkpoint named {key!r}; names are {[c.name for c in self.checkpoints]}")
        return self.checkpoints[key]

    def __repr__(self) -> str:
        return f"Sweep({len(self)} checkpoints, weight decays {sorted({c.weight_decay for c in self})}" + (
            f", {len(self.errors)} skipped)" if self.errors else ")"
        )

    def filter(self, predicate: Callable[[Checkpoint], bool] | None = None, **criteria: Any) -> Sweep:
        """Checkpoints matching every ``hyperparameter=value`` (a value, a list of values, or a predicate)."""

        def keep(c: Checkpoint) -> bool:
            if predicate is not None and not predicate(c):
                return False
            for key, want in criteria.items():
                have = c.hyperparameters.get(key)
                if callable(want):
                    if not want(have):
                        return False
                elif isinstance(want, (list, tuple, set)):
                    if have not in want:
                        return False
                elif have != want:
                    return False
            return True

        return Sweep([c for c in self if keep(c)])

    def to_frame(self) -> pd.DataFrame:
        """One row per checkpoint: name, path and hyperparameters."""
        return pd.DataFrame(
            [{"checkpoint": c.name, "path": str(c.path) if c.path else None, **c.hyperparameters} for c in self]
        )

    def to(self, device: str | None = None, dtype: str | torch.dtype | None = None, device_map: str | dict | None = None) -> Sweep:
        """Set device / precision of every checkpoint (see :meth:`Checkpoint.to`)."""
        for checkpoint in self:
            checkpoint.to(device, dtype, device_map)
        return self

    def load_errors(self) -> list[dict[str, Any]]:
        """Failure rows (checkpoint, path, analysis, error) of the checkpoints that could not be built, as copies."""
        return [dict(e) for e in self.errors]

    @classmethod
    def from_hf_cache(
        cls,
        repo: str,
        revisions: Sequence[str] = ("main",),
        cache_dir: str | Path | None = None,
        labels: Sequence[str] | None = None,
        **hyperparameters: Any,
    ) -> Sweep:
        """Revisions of one repository in the local Hugging Face hub cache, e.g. Pythia's training steps::

            Sweep.from_hf_cache("EleutherAI/pythia-160m", revisions=["step1000", "step143000"], weight_decay=0.01)

        Each revision is a :meth:`Checkpoint.from_hf_cache` named ``repo@revision`` (or its
        entry of ``labels``); ``hyperparameters`` (``weight_decay`` required) apply to all. A
        revision that is not in the cache is reported in ``errors``; the others still load.
        """
        if isinstance(revisions, str):
            revisions = [revisions]
        if labels is not None and len(labels) != len(revisions):
            raise CheckpointError(f"{repo}: {len(labels)} labels for {len(revisions)} revisions; give one label per revision")
        checkpoints, errors = [], []
        for i, revision in enumerate(revisions):
            hyper = dict(hyperparameters)
            if labels is not None:
                hyper["label"] = labels[i]
            try:
                checkpoints.append(Checkpoint.from_hf_cache(repo, revision, cache_dir, **hyper))
            except CheckpointError as err:
                errors.append({"checkpoint": hyper.get("label") or f"{repo}@{revision}", "path": str(hf_cache_dir(cache_dir)),
                               "analysis": "load", "error": str(err)})
        return cls(checkpoints, errors)

    @classmethod
    def from_manifest(cls, path: str | Path) -> Sweep:
        """A CSV, JSON or YAML manifest: one row per checkpoint with ``path`` (a model folder, relative to the
        manifest) or ``repo`` and ``revision`` (the Hugging Face cache; optional ``cache_dir``), ``weight_decay``
        and any metadata."""
        path = Path(path)
        rows = read_manifest(path)
        checkpoints, errors = [], []
        for number, row in enumerate(rows, 1):
            row = {k: v for k, v in row.items() if v not in (None, "") and not _isnan(v)}
            if ("path" in row) == ("repo" in row):
                what = "both 'path' and 'repo'" if "path" in row else "no 'path' (nor 'repo')"
                errors.append({"checkpoint": f"row {number}", "path": str(path), "analysis": "load",
                               "error": f"{path}: row {number} has {what}; give each row either the checkpoint folder "
                                        f"(path) or a Hugging Face cache repository and revision (repo, revision)"})
                continue
            hyper = {k: _number(v) for k, v in row.items() if k not in ("path", "repo", "revision", "cache_dir")}
            try:
                if "repo" in row:
                    cache = row.get("cache_dir")
                    cache = path.parent / Path(str(cache)).expanduser() if cache is not None else None
                    where = str(hf_cache_dir(cache))
                    checkpoints.append(Checkpoint.from_hf_cache(str(row["repo"]), str(row.get("revision", "main")), cache, **hyper))
                else:
                    folder = (path.parent / str(row["path"])).resolve()
                    where = str(folder)
                    checkpoints.append(Checkpoint.from_pretrained(folder, **hyper))
            except CheckpointError as err:
                fallback = f"{row['repo']}@{row.get('revision', 'main')}" if "repo" in row else Path(where).name
                errors.append({"checkpoint": row.get("label", fallback), "path": where, "analysis": "load", "error": str(err)})
        if not checkpoints and not errors:
            raise CheckpointError(f"{path}: the manifest lists no checkpoints; add one row per checkpoint (path, weight_decay)")
        return cls(checkpoints, errors)

    @classmethod
    def from_directory(cls, path: str | Path) -> Sweep:
        """Every model folder below ``path`` (up to two levels), hyperparameters from the trainers' JSON files."""
        root = Path(path)
        if not root.is_dir():
            raise CheckpointError(f"{root}: no such folder; pass the folder that holds the checkpoint folders")
        candidates = [root] if (root / "config.json").exists() else []
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            if (sub / "config.json").exists() or any(sub.glob("*.safetensors")):
                candidates.append(sub)
            else:
                candidates += sorted(
                    q for q in sub.iterdir() if q.is_dir() and ((q / "config.json").exists() or any(q.glob("*.safetensors")))
                )
        if not candidates:
            raise CheckpointError(f"{root}: no model folders found (folders with config.json); pass the sweep folder or a manifest")
        checkpoints, errors = [], []
        for folder in candidates:
            try:
                name = folder.name if folder.parent == root or folder == root else f"{folder.parent.name}/{folder.name}"
                hyper = read_hyperparameters(folder)
                checkpoints.append(Checkpoint.from_pretrained(folder, name=None if hyper.get("label") else name))
            except CheckpointError as err:
                errors.append({"checkpoint": folder.name, "path": str(folder), "analysis": "load", "error": str(err)})
        return cls(checkpoints, errors)


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """The rows of a CSV, JSON or YAML manifest, one dict per checkpoint; syntax errors name the line."""
    from plastiscope.data import DataError, read_table, read_utf8

    if not path.exists():
        raise CheckpointError(f"{path}: no such manifest; pass a .csv, .json or .yaml file (or a sweep folder)")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file; pass a .csv, .json or .yaml manifest")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json", ".yaml", ".yml"):
        raise CheckpointError(f"{path}: unknown manifest type {suffix!r}; use .csv, .json or .yaml")
    try:
        text = read_utf8(path)
        if suffix == ".csv":
            return [record for _, record in read_table(path, text, delimiter=",")]
    except DataError as err:
        raise CheckpointError(str(err)) from None
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path}:{err.lineno}: the manifest is not valid JSON ({err.msg}); fix its syntax") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(io.StringIO(text))
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise CheckpointError(f"{path}{line}: the manifest is not valid YAML ({problem}); fix its syntax") from None
    if isinstance(data, dict):
        data = data.get("checkpoints", data)
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise CheckpointError(f"{path}: a manifest is a list of rows (or {{'checkpoints': [...]}}), each with path and weight_decay")
    return data


def _number(value: Any) -> Any:
    """CSV cells are strings: turn numbers back into numbers."""
    if isinstance(value, str):
        for cast in (int, float):
            try:
                return cast(value)
            except ValueError:
                pass
    return value
