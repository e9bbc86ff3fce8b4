"""Checkpoints: local Hugging Face folders, the Hugging Face cache, or in-memory models.

A :class:`Checkpoint` is one pretrained model with its weight decay and other
hyperparameters; its model is loaded through TransformerLens 4's ``TransformerBridge``
(over ``transformers``) only when an analysis needs it, and freed with :meth:`Checkpoint.unload`.
Loading is strict (:mod:`plastiscope.loading`). A :class:`CheckpointSpec` describes a folder
checkpoint completely and travels to another process, which rebuilds it. Sweeps of
checkpoints live in :mod:`plastiscope.sweep`.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from plastiscope.hashing import file_digest
from plastiscope.loading import (
    CheckpointError,
    check_causal_lm,
    check_finite,
    check_folder,
    check_vocabulary,
    hashed_files,
    hf_snapshot,
    is_nan,
    load_model,
    load_tokenizer,
    read_hyperparameters,
    tokenizer_fingerprint,
)

__all__ = ["Checkpoint", "CheckpointError", "CheckpointSpec"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
        if wd is None or is_nan(wd):
            raise CheckpointError(
                f"{path}: weight decay unknown; pass weight_decay=..., add a weight_decay column to the "
                f"manifest, or write {{\"weight_decay\": ...}} to {path / 'plastiscope.json'}"
            )
        wd = check_weight_decay(wd, path)
        label = found.get("label")
        name = name or (str(label) if label not in (None, "") and not is_nan(label) else path.name)
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
        name = name or (str(label) if label not in (None, "") and not is_nan(label) else f"{repo}@{revision}")
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

        A ``transformers`` model is left exactly as it is (its modules, training mode, device,
        dtype, ``requires_grad``, config): the bridge wraps a copy of its module tree that shares
        its parameters (:func:`module_tree_copy`; a converted copy only where :meth:`to` asks
        for another device or dtype). The checkpoint runs where the model's parameters are and
        in their dtype unless :meth:`to` says otherwise. A ``TransformerBridge`` is used as it
        is (and set to eval mode). Non-finite parameters and a tokenizer that does not fit the
        embedding are refused on first use, as for folders.
        """
        if tokenizer is None:
            raise CheckpointError("from_model: a tokenizer is required (the one the model was trained with)")
        if weight_decay is None:
            raise CheckpointError("from_model: weight_decay is required (pass weight_decay=...)")
        weight_decay = check_weight_decay(weight_decay, name or "from_model")
        name = name or hyperparameters.get("label") or f"model-{id(model):x}"
        checkpoint = cls(name, weight_decay, hyperparameters, model=model, tokenizer=tokenizer)
        first = next((p for p in model.parameters() if p.is_floating_point()), None) if hasattr(model, "parameters") else None
        if first is not None:
            checkpoint.device, checkpoint.dtype = str(first.device), first.dtype
        return checkpoint

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
        if changed:
            self._bridge = None  # rebuilt where asked on next use (an in-memory model itself never moves)
            gc.collect()
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
                bridge = self._model.to(device=self.device, dtype=self.dtype)  # a bridge is used as it is: moved if asked
            else:
                tree = module_tree_copy(self._model, self.device, self.dtype)
                if not getattr(tree.config, "architectures", None):
                    tree.config.architectures = [type(self._model).__name__]
                bridge = TransformerBridge.boot_transformers(
                    f"in-memory/{self.name}", hf_model=tree, tokenizer=_bridge_tokenizer(self.tokenizer), device=self.device
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
        (:class:`plastiscope.hashing.FileHashes`). An in-memory model: its parameters and buffers
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
        device = self.device if self.device_map is None else "cpu"
        model = model.to(device=device, dtype=self.dtype)  # ours: moved, not copied
        hyper = {**self.hyperparameters, "init": "random"}
        hyper.pop("weight_decay", None)
        baseline = Checkpoint.from_model(model, self.tokenizer, self.weight_decay, name=f"{self.name} (random init)", **hyper)
        return baseline.to(device=device, dtype=self.dtype)


def _bridge_tokenizer(tokenizer: Any) -> Any:
    """A copy the bridge may reconfigure; our own tokenization never uses it."""
    tok = copy.deepcopy(tokenizer)
    tok.init_kwargs.setdefault("name_or_path", getattr(tok, "name_or_path", ""))
    if tok.bos_token is not None:
        tok.init_kwargs["add_bos_token"] = True  # stops the bridge from re-loading a BOS variant from the folder
    return tok


def check_weight_decay(value: Any, where: Any) -> float:
    """``value`` as a float; a clear error for text, a yes/no (YAML's ``yes`` is True, which is 1.0 to Python),
    an infinite or negative value (none is a weight decay a model was trained with)."""
    try:
        if isinstance(value, bool):
            raise ValueError
        wd = float(value)
    except (TypeError, ValueError):
        raise CheckpointError(f"{where}: weight decay {value!r} is not a number; fix it in the manifest") from None
    if not math.isfinite(wd) or wd < 0:
        raise CheckpointError(f"{where}: weight decay {value!r} is not a finite number >= 0; fix it in the manifest")
    return wd


def module_tree_copy(model: torch.nn.Module, device: str | torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A new module tree over ``model``'s tensors, for a wrapper that changes modules in place.

    Every module is a shallow copy with its own children, parameter, buffer and hook tables and
    its own training flag; the config is a deep copy. Parameters and buffers already on
    ``device`` in ``dtype`` (floating-point ones) are the same tensors (no memory is copied;
    tied weights stay tied); others are converted copies. So wrapping the copy (TransformerLens
    replaces submodules with bridge components), setting it to eval mode or moving it leaves
    ``model`` as it was.
    """
    target = torch.device(device)
    config = copy.deepcopy(model.config) if hasattr(model, "config") else None
    tensors: dict[int, Any] = {}
    modules: dict[int, torch.nn.Module] = {}

    def tensor(value: Any, parameter: bool) -> Any:
        if value is None:
            return None
        if id(value) not in tensors:
            want = dtype if value.is_floating_point() else value.dtype
            same_device = value.device.type == target.type and target.index in (None, value.device.index)
            if same_device and value.dtype == want:
                tensors[id(value)] = value
            else:
                data = value.detach().to(device=target, dtype=want)
                tensors[id(value)] = torch.nn.Parameter(data, requires_grad=value.requires_grad) if parameter else data
        return tensors[id(value)]

    def tree(module: torch.nn.Module) -> torch.nn.Module:
        if id(module) in modules:
            return modules[id(module)]
        new = copy.copy(module)
        modules[id(module)] = new
        for key, value in vars(module).items():
            if isinstance(value, (dict, list, set)):
                vars(new)[key] = copy.copy(value)  # hook tables, sets of names: the copy's own
            elif config is not None and value is model.config:
                vars(new)[key] = config
        new._parameters = {k: tensor(p, True) for k, p in module._parameters.items()}
        new._buffers = {k: tensor(b, False) for k, b in module._buffers.items()}
        new._modules = {k: tree(m) if m is not None else None for k, m in module._modules.items()}
        return new

    return tree(model)

