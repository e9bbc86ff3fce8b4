"""Pretrain a small weight-decay sweep on the embedded corpus: one readable loop, no framework.

Every run of a sweep shares the seed, the data order, the tokenizer and every other
hyperparameter; only the AdamW weight decay differs. Models are Llama-style causal LMs
(``transformers.LlamaConfig``, random init). Following common practice (nanoGPT, the paper),
**weight decay applies to matrices only** (every parameter with two or more dimensions:
attention and MLP weights, embeddings, unembedding), not to norms and biases;
``decay_all=True`` decays every parameter.

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

from plastiscope.corpus import load_corpus
from plastiscope.data import Documents, encode
from plastiscope.data import pad as pad_ids
from plastiscope.tokenizer import train_tokenizer


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
        return f"wd-{weight_decay:g}"


QUICK = dict(steps=150, train_docs=1000, val_docs=200, n_layers=2, d_model=48, d_mlp=128, vocab_size=1024, eval_every=50)


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warmup, then constant or cosine decay to 10 % of the peak."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return config.learning_rate
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def batchify(ids: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists: ``tokens [batch, pos]`` and ``labels [batch, pos]`` (-100 on padding)."""
    tokens, mask = pad_ids(ids, pad)
    return tokens, tokens.masked_fill(~mask, -100)


@torch.no_grad()
def mean_loss(model: LlamaForCausalLM, ids: list[list[int]], pad: int, batch_size: int = 64) -> float:
    """Mean next-token cross-entropy per token over documents (nats)."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(ids), batch_size):
        tokens, labels = batchify(ids[start : start + batch_size], pad)
        n = int((labels[:, 1:] != -100).sum())
        total += float(model(tokens, attention_mask=(labels != -100).long(), labels=labels).loss) * n
        count += n
    model.train()
    return total / max(count, 1)


def train_one(
    config: TrainConfig, weight_decay: float, train_ids: list[list[int]], val_ids: list[list[int]], tokenizer, progress: bool = True
) -> tuple[LlamaForCausalLM, dict]:
    """Train one model of the sweep; return it and its log (final train/validation loss, time)."""
    torch.manual_seed(config.seed)
    model_config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.d_model, intermediate_size=config.d_mlp,
        num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads, max_position_embeddings=config.context,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(model_config)
    model.config.architectures = ["LlamaForCausalLM"]
    decay = [p for p in model.parameters() if config.decay_all or p.dim() >= 2]
    no_decay = [p for p in model.parameters() if not (config.decay_all or p.dim() >= 2)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate, betas=(0.9, 0.95),
    )
    data_order = torch.Generator().manual_seed(config.seed)  # same batches for every weight decay
    pad = tokenizer.pad_token_id
    log = {"curve": []}
    start = time.time()
    model.train()
    bar = tqdm(range(config.steps), desc=config.run_name(weight_decay), disable=not progress, leave=False)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        rows = torch.randint(len(train_ids), (config.batch_size,), generator=data_order).tolist()
        tokens, labels = batchify([train_ids[i] for i in rows], pad)
        loss = model(tokens, attention_mask=(labels != -100).long(), labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            val = mean_loss(model, val_ids, pad)
            log["curve"].append({"step": step + 1, "train_batch_loss": loss.item(), "val_loss": val})
            bar.set_postfix(loss=f"{loss.item():.3f}", val=f"{val:.3f}")
    model.eval()
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
