"""Checkpoints and sweeps: local Hugging Face folders or in-memory models, loaded lazily.

A :class:`Checkpoint` is one pretrained model with its weight decay and other
hyperparameters; its model is loaded through TransformerLens 4's ``TransformerBridge``
(over ``transformers``) only when an analysis needs it, and freed with :meth:`unload`.
A :class:`Sweep` is a sequence of checkpoints, read from a manifest or discovered in a
folder. Loading never touches a hub (``HF_HUB_OFFLINE``) and never unpickles: weights
come from safetensors only.
"""

from __future__ import annotations

import copy
import csv
import gc
import hashlib
import json
import math
import struct
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

HYPERPARAMETER_FILES = ("plastiscope.json", "training_args.json", "trainer_state.json", "hyperparameters.json")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
# keys trainers use for the same hyperparameter -> our column name
KEY_ALIASES = {"lr": "learning_rate", "lr_scheduler_type": "schedule", "global_step": "step", "wd": "weight_decay"}
KEPT_KEYS = ("weight_decay", "learning_rate", "schedule", "seed", "step", "tokens", "label", "warmup_steps", "max_steps")


class CheckpointError(ValueError):
    """A checkpoint cannot be used: the message names the path and the fix."""


class Checkpoint:
    """One model of a sweep: ``name``, ``weight_decay``, ``hyperparameters``; the model loads lazily.

    Build with :meth:`from_pretrained` (a local Hugging Face folder) or :meth:`from_model`
    (an in-memory ``transformers`` model or ``TransformerBridge``).
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
        self._model = model  # in-memory model handed over from a notebook
        self._tokenizer = tokenizer
        self._bridge = None
        self._hash: str | None = None

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
    def from_model(
        cls, model: Any, tokenizer: Any, weight_decay: float, name: str | None = None, **hyperparameters: Any
    ) -> Checkpoint:
        """An in-memory ``transformers`` causal LM or ``TransformerBridge`` and its tokenizer.

        The bridge wraps the model's modules in place (TransformerBridge's design): pass a copy
        (``copy.deepcopy(model)``) if the notebook will keep training or saving the original.
        """
        if tokenizer is None:
            raise CheckpointError("from_model: a tokenizer is required (the one the model was trained with)")
        if weight_decay is None:
            raise CheckpointError("from_model: weight_decay is required (pass weight_decay=...)")
        name = name or hyperparameters.get("label") or f"model-{id(model):x}"
        return cls(name, weight_decay, hyperparameters, model=model, tokenizer=tokenizer)

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
    def tokenizer(self) -> Any:
        """The checkpoint's own tokenizer, loaded on first use."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
            except Exception as err:
                raise CheckpointError(
                    f"{self.path}: the tokenizer does not load ({type(err).__name__}: {err}); save the training "
                    f"tokenizer there with tokenizer.save_pretrained()"
                ) from err
        return self._tokenizer

    @property
    def bridge(self) -> Any:
        """The ``TransformerBridge`` of this checkpoint, loaded on first use (eval mode, no grad needed)."""
        if self._bridge is None:
            self._bridge = self._load()
        return self._bridge

    def _load(self) -> Any:
        from transformer_lens.model_bridge import TransformerBridge

        tokenizer = _bridge_tokenizer(self.tokenizer)
        if self._model is not None:
            if isinstance(self._model, TransformerBridge):
                bridge = self._model
            else:
                config = self._model.config
                if not getattr(config, "architectures", None):
                    config.architectures = [type(self._model).__name__]
                bridge = TransformerBridge.boot_transformers(
                    f"in-memory/{self.name}", hf_model=self._model, tokenizer=tokenizer, device=self.device
                )
        else:
            try:
                where = {"device_map": self.device_map} if self.device_map is not None else {"device": self.device}
                bridge = TransformerBridge.boot_transformers(str(self.path), tokenizer=tokenizer, dtype=self.dtype, **where)
            except Exception as err:
                raise CheckpointError(
                    f"{self.path}: the model does not load through TransformerBridge ({type(err).__name__}: "
                    f"{str(err)[:300]}); check config.json and the weights, or re-save with save_pretrained()"
                ) from err
        bridge.eval()
        vocab = bridge.cfg.d_vocab
        if len(self.tokenizer) > vocab:
            raise CheckpointError(
                f"{self.path or self.name}: the tokenizer has {len(self.tokenizer)} tokens but the model's "
                f"vocabulary has {vocab}; the tokenizer does not belong to this model - save the training tokenizer with it"
            )
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
        """Hash of the weights and config: identifies this checkpoint's results in caches."""
        if self._hash is None:
            digest = hashlib.blake2b(digest_size=16)
            if self.path is not None:
                for file in sorted(self.path.glob("*.safetensors")) + [self.path / "config.json"]:
                    digest.update(file.name.encode())
                    with file.open("rb") as f:
                        for chunk in iter(lambda: f.read(1 << 22), b""):
                            digest.update(chunk)
            else:
                model = self.hf_model
                for key, tensor in sorted(model.state_dict().items()):
                    digest.update(key.encode())
                    digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
            self._hash = digest.hexdigest()
        return self._hash

    def random_init(self, seed: int = 0) -> Checkpoint:
        """The same architecture with fresh random weights (seeded; the global RNG is left as it was),
        on this checkpoint's device and in its dtype: a baseline for what training added."""
        from transformers import AutoModelForCausalLM

        config = copy.deepcopy(self.hf_model.config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config).eval()
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
        fresh = AutoModelForCausalLM.from_config(copy.deepcopy(model.config), dtype=torch.float32)
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


def _bridge_tokenizer(tokenizer: Any) -> Any:
    """A copy the bridge may reconfigure; our own tokenization never uses it."""
    tok = copy.deepcopy(tokenizer)
    tok.init_kwargs.setdefault("name_or_path", getattr(tok, "name_or_path", ""))
    if tok.bos_token is not None:
        tok.init_kwargs["add_bos_token"] = True  # stops the bridge from re-downloading a BOS variant
    return tok


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
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        pickles = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        hint = f" ({', '.join(pickles)} are pickles and are never loaded)" if pickles else ""
        raise CheckpointError(
            f"{path}: no *.safetensors weights{hint}; convert with model.save_pretrained(path, safe_serialization=True)"
        )
    for file in weights:
        check_safetensors(file)
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        raise CheckpointError(f"{path}: no tokenizer files; save the training tokenizer there with tokenizer.save_pretrained()")


def check_safetensors(file: Path) -> None:
    """Check a safetensors file's header and size without loading it (catches truncated or corrupt files)."""
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


def read_hyperparameters(path: Path) -> dict[str, Any]:
    """Hyperparameters from JSON files in ``path`` or its parent; pickles (training_args.bin) are skipped."""
    found: dict[str, Any] = {}
    for folder in (path.parent, path):  # the folder's own files win
        for name in HYPERPARAMETER_FILES:
            file = folder / name
            if not file.exists():
                continue
            try:
                data = json.loads(file.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise CheckpointError(f"{file}: not valid JSON ({err}); fix or remove it") from None
            if isinstance(data, dict):
                for key, value in data.items():
                    key = KEY_ALIASES.get(key, key)
                    scalar = isinstance(value, (str, int, float, bool))
                    if scalar and (key in KEPT_KEYS or name == "plastiscope.json"):
                        found[key] = value
    return found


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
    def from_manifest(cls, path: str | Path) -> Sweep:
        """A CSV, JSON or YAML manifest: one row per checkpoint with ``path``, ``weight_decay`` and any metadata."""
        path = Path(path)
        rows = read_manifest(path)
        checkpoints, errors = [], []
        for number, row in enumerate(rows, 1):
            row = {k: v for k, v in row.items() if v not in (None, "") and not _isnan(v)}
            if "path" not in row:
                errors.append({"checkpoint": f"row {number}", "path": str(path), "analysis": "load",
                               "error": f"{path}: row {number} has no 'path'; every row needs the checkpoint folder"})
                continue
            folder = (path.parent / str(row.pop("path"))).resolve()
            try:
                checkpoints.append(Checkpoint.from_pretrained(folder, **{k: _number(v) for k, v in row.items()}))
            except CheckpointError as err:
                errors.append({"checkpoint": row.get("label", folder.name), "path": str(folder), "analysis": "load", "error": str(err)})
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
    """The rows of a CSV, JSON or YAML manifest, one dict per checkpoint."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such manifest; pass a .csv, .json or .yaml file (or a sweep folder)")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with path.open(newline="") as f:
                return list(csv.DictReader(f))
        if suffix == ".json":
            data = json.loads(path.read_text())
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(path.read_text())
        else:
            raise CheckpointError(f"{path}: unknown manifest type {suffix!r}; use .csv, .json or .yaml")
    except (json.JSONDecodeError, ValueError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{path}: the manifest does not parse ({err}); fix its syntax") from None
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
