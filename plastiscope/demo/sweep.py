"""Pretrain a small weight-decay sweep on the embedded corpus with :func:`plastiscope.training.train`.

Every run of a sweep shares the seed, the data order, the tokenizer and every other
hyperparameter; only the AdamW weight decay differs. Models are Llama-style causal LMs
(``transformers.LlamaConfig``, random init). Weight decay applies to matrices only
(:func:`plastiscope.training.adamw`); ``decay_all=True`` decays every parameter.

Sequences follow the documents convention of :mod:`plastiscope.data` (one gloss per
sequence, BOS prepended, truncated to the context, padding excluded from the loss).

Output: one Hugging Face folder per run (``config.json``, ``model.safetensors``, tokenizer,
``plastiscope.json`` with its hyperparameters) and ``manifest.csv`` for
:meth:`plastiscope.Sweep.from_manifest`.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from plastiscope.data import Documents, encode
from plastiscope.data import pad as pad_ids
from plastiscope.demo.corpus import load_corpus
from plastiscope.demo.tokenizer import train_tokenizer
from plastiscope.losses import document_losses
from plastiscope.training import adamw, learning_rate, train


@dataclass
class TrainConfig:
    """Everything that defines a sweep (all runs share it but ``weight_decays``)."""

    weight_decays: tuple[float, ...] = (0.0, 0.01, 0.1, 0.3, 1.0)
    steps: int = 600
    batch_size: int = 32
    context: int = 64
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    schedule: str = "cosine"  # or "constant" after warmup
    d_model: int = 64
    n_layers: int = 3
    n_heads: int = 4
    n_kv_heads: int = 2
    d_mlp: int = 192
    vocab_size: int = 2048
    train_docs: int = 4000  # pretraining documents: a small set, seen several times, so overfitting can show
    val_docs: int = 500
    seed: int = 0
    decay_all: bool = False
    eval_every: int = 100
    extra: dict = field(default_factory=dict)

    def run_name(self, weight_decay: float) -> str:
        """The label and folder name of the run with ``weight_decay``, e.g. ``wd-0.1``."""
        return f"wd-{weight_decay:g}"


QUICK = dict(steps=150, train_docs=1000, val_docs=200, n_layers=2, d_model=48, d_mlp=128, vocab_size=1024, eval_every=50)


def lr_at(step: int, config: TrainConfig) -> float:
    """The learning rate of ``step`` under ``config`` (:func:`plastiscope.training.learning_rate`)."""
    return learning_rate(step, config.learning_rate, config.steps, config.warmup_steps, config.schedule)


@torch.no_grad()
def mean_loss(model: LlamaForCausalLM, ids: list[list[int]], pad: int, batch_size: int = 64) -> float:
    """Token-weighted mean next-token cross-entropy over documents (nats): what a trainer logs."""
    sums, counts = document_losses(model, ids, pad, batch_size)
    return float(sums.sum() / max(counts.sum(), 1))


def train_one(
    config: TrainConfig, weight_decay: float, train_ids: list[list[int]], val_ids: list[list[int]], tokenizer, progress: bool = True
) -> tuple[LlamaForCausalLM, dict]:
    """Train one model of the sweep; return it and its log (final train/validation loss, time)."""
    model_config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.d_model, intermediate_size=config.d_mlp,
        num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads, max_position_embeddings=config.context,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # the same initialisation for every weight decay
        model = LlamaForCausalLM(model_config)
    model.config.architectures = ["LlamaForCausalLM"]
    optimizer = adamw(model, config.learning_rate, weight_decay, decay_all=config.decay_all)
    data_order = torch.Generator().manual_seed(config.seed)  # the same batches for every weight decay
    pad = tokenizer.pad_token_id
    log: dict = {"curve": []}
    start = time.time()
    bar = tqdm(total=config.steps, desc=config.run_name(weight_decay), disable=not progress, leave=False)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.randint(len(train_ids), (config.batch_size,), generator=data_order).tolist()
        return pad_ids([train_ids[i] for i in rows], pad)

    def on_step(step: int, loss: float) -> None:
        bar.update(1)
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            val = mean_loss(model, val_ids, pad)
            model.train()
            log["curve"].append({"step": step + 1, "train_batch_loss": loss, "val_loss": val})
            bar.set_postfix(loss=f"{loss:.3f}", val=f"{val:.3f}")

    history = train(model, optimizer, batch, config.steps, lr=lambda step: lr_at(step, config), on_step=on_step)
    bar.close()
    if not math.isfinite(history[-1]):
        raise RuntimeError(
            f"{config.run_name(weight_decay)}: training diverged at step {len(history)} (loss {history[-1]}); lower the learning rate"
        )
    log["final_train_loss"] = mean_loss(model, train_ids[: len(val_ids)], pad)
    log["final_val_loss"] = log["curve"][-1]["val_loss"]
    log["seconds"] = time.time() - start
    return model, log


def train_sweep(
    out_dir: str | Path,
    config: TrainConfig | None = None,
    train_data: Documents | None = None,
    val_data: Documents | None = None,
    progress: bool = True,
) -> Path:
    """Train every weight decay of ``config`` into ``out_dir``; return the manifest path.

    Runs already present (same config) are kept, so an interrupted sweep resumes.
    Defaults to the embedded corpus (``train`` and ``validation`` splits).
    """
    config = config or TrainConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_data = train_data or load_corpus("train", config.train_docs)
    val_data = val_data or load_corpus("validation", config.val_docs)
    train_data, val_data = train_data.head(config.train_docs), val_data.head(config.val_docs)
    tokenizer = train_tokenizer(train_data.texts, config.vocab_size)
    train_ids = [encode(tokenizer, t, config.context) for t in train_data.texts]
    val_ids = [encode(tokenizer, t, config.context) for t in val_data.texts]
    shared = {k: v for k, v in asdict(config).items() if k not in ("weight_decays", "extra")} | config.extra
    rows = []
    for wd in config.weight_decays:
        folder = out / config.run_name(wd)
        info_file = folder / "plastiscope.json"
        info = json.loads(info_file.read_text()) if info_file.exists() else None
        if info is None or info.get("config") != shared or not (folder / "model.safetensors").exists():
            model, log = train_one(config, wd, train_ids, val_ids, tokenizer, progress)
            model.save_pretrained(folder, safe_serialization=True)
            tokenizer.save_pretrained(folder)
            info = {
                "weight_decay": wd, "learning_rate": config.learning_rate, "schedule": config.schedule,
                "seed": config.seed, "step": config.steps, "tokens": log_tokens(train_ids, config),
                "label": config.run_name(wd), "final_train_loss": log["final_train_loss"],
                "final_val_loss": log["final_val_loss"], "config": shared,
                "log": {"seconds": log["seconds"], "curve": log["curve"], "train_data_sha256": train_data.sha256()},
            }
            info_file.write_text(json.dumps(info, indent=1))
        rows.append({
            "path": folder.name, "weight_decay": wd, "learning_rate": config.learning_rate,
            "schedule": config.schedule, "seed": config.seed, "step": config.steps, "tokens": info["tokens"],
            "label": info["label"], "final_train_loss": round(info["final_train_loss"], 5),
            "final_val_loss": round(info["final_val_loss"], 5),
        })
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def log_tokens(train_ids: list[list[int]], config: TrainConfig) -> int:
    """Approximate tokens seen: steps x batch x mean document length."""
    mean_len = sum(len(x) for x in train_ids) / len(train_ids)
    return int(config.steps * config.batch_size * mean_len)
