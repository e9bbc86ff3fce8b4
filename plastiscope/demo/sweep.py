"""Pretrain a small sweep on the embedded corpus with :func:`plastiscope.training.train`.

A sweep is a grid of runs: weight decays x seeds, optionally x learning-rate schedules x
final-LR fractions (:class:`TrainConfig`); every run shares the tokenizer, the data and every
other hyperparameter. A seed fixes the initialisation and the data order, so the runs of one
seed differ only in the swept settings, and runs that differ only in ``seed`` are replicates.
Models are Llama-style causal LMs (``transformers.LlamaConfig``, random init). Weight decay
applies to matrices only (:func:`plastiscope.training.adamw`); ``decay_all=True`` decays every
parameter.

Data: one gloss per sequence under the documents convention of :mod:`plastiscope.data` (BOS
prepended, truncated to the context, padding excluded from the loss), in epochs of a seeded
permutation (every document once per epoch; by default ``steps x batch_size`` documents, so a
single epoch). Batches group documents of similar length (``group_by_length``, as Hugging
Face's trainer option of that name does), which nearly halves the padding's compute.

Output: one Hugging Face folder per run (``config.json``, ``model.safetensors``, tokenizer,
``plastiscope.json`` with its hyperparameters and scale), one more per intermediate step asked
for (``save_steps``), and ``manifest.csv`` for :meth:`plastiscope.Sweep.from_manifest`, one row
per folder. The scale is measured, not estimated: ``parameters`` (all, embeddings included, as
Hoffmann et al. 2022 count them), ``non_embedding_parameters`` (as Kaplan et al. 2020 count
them), ``tokens`` (the non-padding tokens of every batch trained on), ``tokens_per_parameter``
(tokens / parameters) and ``epochs`` (documents drawn / training documents).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import multiprocessing
import numbers
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from plastiscope.data import Documents, encode
from plastiscope.data import pad as pad_ids
from plastiscope.demo.corpus import load_corpus
from plastiscope.demo.tokenizer import train_tokenizer
from plastiscope.losses import document_losses
from plastiscope.training import SCHEDULES, adamw, learning_rate, train

GRID = ("weight_decays", "seeds", "schedules", "final_lr_fractions")
CONSTANT_SCHEDULES = ("wso", "constant")  # no decay: a final-LR fraction does not apply
LENGTH_POOL = 32  # batches per pool that length grouping sorts


class ConfigError(ValueError):
    """A training setting that cannot work; ``field`` names it (the CLI maps it to its flag)."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class DivergedError(RuntimeError):
    """A run's training loss became non-finite; the message names the run(s) and the fix."""


@dataclass(frozen=True)
class Run:
    """One point of a sweep's grid: the settings in which its runs differ."""

    weight_decay: float
    seed: int = 0
    schedule: str = "cosine"
    final_lr_fraction: float = 0.1


@dataclass
class TrainConfig:
    """Everything that defines a sweep: the grid (:data:`GRID` fields) and the settings all runs share.

    The defaults are the embedded demo's sweep with one seed (the demo trains two: :data:`DEMO`).
    ``seed=N`` is short for ``seeds=(N,)``. ``final_lr_fractions`` apply to the decaying
    schedules (``cosine``, ``linear``, ``wsd``); a ``wso``/``constant`` run ends at the peak
    (final-LR fraction 1). ``decay_fraction`` is the share of the steps ``wsd`` decays over.
    ``train_docs=None`` takes ``steps x batch_size`` documents: each seen once. ``save_steps``
    also saves the model after each of these steps (a full checkpoint with its own manifest row).
    """

    weight_decays: tuple[float, ...] = (0.0, 0.1, 0.3, 1.0)
    seeds: tuple[int, ...] = (0,)
    seed: int | None = None
    schedules: tuple[str, ...] = ("cosine",)
    final_lr_fractions: tuple[float, ...] = (0.1,)
    decay_fraction: float = 0.2
    steps: int = 700
    batch_size: int = 64
    context: int = 64
    learning_rate: float = 1e-2
    warmup_steps: int = 50
    d_model: int = 40
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    d_mlp: int = 112
    vocab_size: int = 512
    train_docs: int | None = None
    val_docs: int = 500
    group_by_length: bool = True
    decay_all: bool = False
    eval_every: int = 100
    save_steps: tuple[int, ...] = ()
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.seed is not None:
            if tuple(self.seeds) not in ((0,), (self.seed,)):
                raise ConfigError("seed", f"seed={self.seed!r} and seeds={self.seeds!r}: give one of them")
            self.seeds, self.seed = (self.seed,), None
        for name in GRID + ("save_steps",):
            value = getattr(self, name)
            values = tuple(value) if isinstance(value, Iterable) and not isinstance(value, str) else (value,)
            setattr(self, name, values)
            if name != "save_steps" and not values:
                raise ConfigError(name, "give at least one value")
            if len(set(values)) != len(values):
                raise ConfigError(name, f"{list(values)} lists a value twice")
        for name in ("steps", "batch_size", "eval_every", "n_layers", "n_heads", "n_kv_heads", "d_model", "d_mlp", "val_docs"):
            _integer(name, getattr(self, name), 1)
        _integer("context", self.context, 2)
        _integer("warmup_steps", self.warmup_steps, 0)
        if self.warmup_steps > self.steps:
            raise ConfigError("warmup_steps", f"{self.warmup_steps} is more than steps ({self.steps})")
        if self.train_docs is not None:
            _integer("train_docs", self.train_docs, self.batch_size)
        _integer("vocab_size", self.vocab_size, 259)  # the 256 bytes and 3 special tokens come first
        if self.d_model % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ConfigError("n_heads", f"d_model ({self.d_model}) must split into n_heads ({self.n_heads}) heads, "
                                         f"and n_heads into n_kv_heads ({self.n_kv_heads}) groups")
        _real("learning_rate", self.learning_rate, 0, None)
        _real("decay_fraction", self.decay_fraction, 0, 1)
        for wd in self.weight_decays:
            _real("weight_decays", wd, 0, None)
        for fraction in self.final_lr_fractions:
            _real("final_lr_fractions", fraction, 0, 1)
        for seed in self.seeds:
            _integer("seeds", seed, 0)
        for schedule in self.schedules:
            if schedule not in SCHEDULES:
                raise ConfigError("schedules", f"{schedule!r} is not a schedule; choose from {', '.join(SCHEDULES)}")
        if set(CONSTANT_SCHEDULES) <= set(self.schedules):
            raise ConfigError("schedules", "wso and constant name the same schedule; keep one")
        for step in self.save_steps:
            _integer("save_steps", step, 1)
            if step >= self.steps:
                raise ConfigError("save_steps", f"{step} is not before the last step ({self.steps}, always saved)")
        self.weight_decays = tuple(float(x) for x in self.weight_decays)
        self.final_lr_fractions = tuple(float(x) for x in self.final_lr_fractions)
        self.seeds = tuple(int(x) for x in self.seeds)
        self.save_steps = tuple(sorted(int(x) for x in self.save_steps))

    def runs(self) -> list[Run]:
        """The grid's runs: schedules x final-LR fractions (decaying schedules only) x weight decays x seeds."""
        runs = []
        for schedule in self.schedules:
            fractions = (1.0,) if schedule in CONSTANT_SCHEDULES else self.final_lr_fractions
            runs += [Run(wd, seed, schedule, f) for f in fractions for wd in self.weight_decays for seed in self.seeds]
        return runs

    def run_name(self, run: Run) -> str:
        """The label and folder name of ``run``: its weight decay and every other setting the grid varies,
        e.g. ``wd-0.1``, ``wd-0.1_seed-1``, ``wd-0.1_wsd_final-0.01_seed-0``."""
        parts = [f"wd-{run.weight_decay:g}"]
        if len(self.schedules) > 1:
            parts.append(run.schedule)
        if len(self.final_lr_fractions) > 1 and run.schedule not in CONSTANT_SCHEDULES:
            parts.append(f"final-{run.final_lr_fraction:g}")
        if len(self.seeds) > 1:
            parts.append(f"seed-{run.seed}")
        return "_".join(parts)

    def identity(self, run: Run, data: dict[str, str]) -> dict[str, Any]:
        """Everything a trained run depends on, as JSON stores it: a finished run with the same identity is reused."""
        shared = {k: v for k, v in asdict(self).items() if k not in GRID + ("seed", "save_steps", "extra")}
        return json.loads(json.dumps({**shared, **self.extra, **asdict(run), "data": data}))


# The demo's sweep: the defaults, two seeds per weight decay, data-constrained: 1,500 training glosses seen about
# 30 times each (700 steps x 64 sequences), the regime where overfitting is real and weight decay decides the outcome.
DEMO = dict(seeds=(0, 1), train_docs=1500)
QUICK = dict(weight_decays=(0.0, 0.1, 1.0), seeds=(0, 1), steps=300, batch_size=32, warmup_steps=30, d_model=32, d_mlp=96,
             val_docs=200, eval_every=100, train_docs=640)  # the quick demo's: 15 epochs


def _integer(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ConfigError(name, f"{value!r} must be an integer >= {low}")


def _real(name: str, value: Any, low: float, high: float | None) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (high is not None and value > high):
        span = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
        raise ConfigError(name, f"{value!r} must be a number {span}")


def lr_at(step: int, config: TrainConfig, run: Run) -> float:
    """The learning rate of ``step`` of ``run`` (:func:`plastiscope.training.learning_rate`)."""
    return learning_rate(step, config.learning_rate, config.steps, config.warmup_steps, run.schedule,
                         run.final_lr_fraction, config.decay_fraction)


def decaying_fraction(config: TrainConfig, run: Run) -> float:
    """The share of the steps over which ``run``'s learning rate decays: ``decay_fraction`` for
    ``wsd``, every step after warmup for ``cosine``/``linear``, none for ``wso``/``constant``."""
    if run.schedule in CONSTANT_SCHEDULES:
        return 0.0
    if run.schedule == "wsd":
        return min(round(config.decay_fraction * config.steps), config.steps - config.warmup_steps) / config.steps
    return (config.steps - config.warmup_steps) / config.steps


def batch_order(lengths: Sequence[int], batch_size: int, steps: int, seed: int, group_by_length: bool = True) -> list[list[int]]:
    """Document indices of each step's batch ``[steps][batch_size]``.

    Epochs of a permutation seeded by ``seed``: every document once per epoch (the last
    incomplete batch of an epoch is dropped). With ``group_by_length``, each pool of
    ``LENGTH_POOL`` consecutive batches is sorted by document length, cut into batches again,
    and the pool's batches are shuffled: the same documents in nearly the same order, with
    batches of similar lengths (little padding).
    """
    generator = torch.Generator().manual_seed(seed)
    per_epoch = len(lengths) // batch_size
    if per_epoch == 0:
        raise ConfigError("train_docs", f"{len(lengths)} training documents do not fill one batch of {batch_size}")
    order: list[list[int]] = []
    while len(order) < steps:
        perm = torch.randperm(len(lengths), generator=generator).tolist()
        batches = [perm[i * batch_size: (i + 1) * batch_size] for i in range(per_epoch)]
        if group_by_length:
            grouped = []
            for start in range(0, per_epoch, LENGTH_POOL):
                pool = sorted((i for b in batches[start: start + LENGTH_POOL] for i in b), key=lambda i: lengths[i])
                chunks = [pool[i: i + batch_size] for i in range(0, len(pool), batch_size)]
                grouped += [chunks[i] for i in torch.randperm(len(chunks), generator=generator).tolist()]
            batches = grouped
        order += batches
    return order[:steps]


@torch.no_grad()
def mean_loss(model: LlamaForCausalLM, ids: list[list[int]], pad: int, batch_size: int = 64) -> float:
    """Token-weighted mean next-token cross-entropy over documents (nats): what a trainer logs."""
    sums, counts = document_losses(model, ids, pad, batch_size)
    return float(sums.sum() / max(counts.sum(), 1))


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """``(parameters, non_embedding_parameters)``: all of them, and all but the token embedding and the unembedding."""
    total = sum(p.numel() for p in model.parameters())
    embedding = {id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None for p in m.parameters()}
    return total, total - sum(p.numel() for p in model.parameters() if id(p) in embedding)


def build_model(config: TrainConfig, tokenizer: Any, seed: int) -> LlamaForCausalLM:
    """The run's randomly initialised Llama model (seeded: the same for every run of a seed; the global RNG is left as it was)."""
    model_config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.d_model, intermediate_size=config.d_mlp,
        num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads, max_position_embeddings=config.context,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(model_config)
    model.config.architectures = ["LlamaForCausalLM"]
    return model


def train_one(
    config: TrainConfig,
    run: Run,
    train_ids: list[list[int]],
    val_ids: list[list[int]],
    tokenizer: Any,
    progress: bool = True,
    on_save: Callable[[int, LlamaForCausalLM, dict, dict], Any] | None = None,
) -> tuple[LlamaForCausalLM, dict]:
    """Train one run of the sweep; return the model and its log (losses, tokens, scale, time).

    ``on_save(step, model, log, moment)`` is called after each of ``config.save_steps``:
    ``moment`` holds that step's tokens, epochs, ``train_loss`` and ``val_loss``.
    """
    model = build_model(config, tokenizer, run.seed)
    optimizer = adamw(model, config.learning_rate, run.weight_decay, decay_all=config.decay_all)
    order = batch_order([len(x) for x in train_ids], config.batch_size, config.steps, run.seed, config.group_by_length)
    pad = tokenizer.pad_token_id
    parameters, non_embedding = count_parameters(model)
    log: dict = {"curve": [], "tokens": 0, "parameters": parameters, "non_embedding_parameters": non_embedding}
    start, cpu_start = time.time(), time.process_time()
    bar = tqdm(total=config.steps, desc=config.run_name(run), disable=not progress, leave=False)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, mask = pad_ids([train_ids[i] for i in order[step]], pad)
        log["tokens"] += int(mask.sum())
        return tokens, mask

    def on_step(step: int, loss: float) -> None:
        bar.update(1)
        done = step + 1
        if done % config.eval_every == 0 or done == config.steps or done in config.save_steps:
            val = mean_loss(model, val_ids, pad)
            log["curve"].append({"step": done, "tokens": log["tokens"], "lr": lr_at(step, config, run),
                                 "train_batch_loss": loss, "val_loss": val})
            bar.set_postfix(loss=f"{loss:.3f}", val=f"{val:.3f}")
            if done in config.save_steps and on_save is not None:
                on_save(done, model, log, snapshot(done, val))
            model.train()

    def snapshot(step: int, val: float) -> dict:
        seen = step * config.batch_size
        return {"step": step, "tokens": log["tokens"], "epochs": seen / len(train_ids), "val_loss": val,
                "train_loss": mean_loss(model, train_ids[: len(val_ids)], pad), "seconds": time.time() - start}

    history = train(model, optimizer, batch, config.steps, lr=lambda step: lr_at(step, config, run), on_step=on_step)
    bar.close()
    if not math.isfinite(history[-1]):
        raise DivergedError(
            f"{config.run_name(run)}: training diverged at step {len(history)} (loss {history[-1]}); lower the learning rate"
        )
    log.update(snapshot(config.steps, log["curve"][-1]["val_loss"]))
    log["seconds_per_step"] = log["seconds"] / config.steps
    log["cpu_seconds"] = time.process_time() - cpu_start
    return model, log


def checkpoint_info(config: TrainConfig, run: Run, name: str, log: dict, identity: dict, moment: dict) -> dict:
    """The ``plastiscope.json`` of a saved checkpoint: its hyperparameters and scale at ``moment`` (a snapshot of the log)."""
    return {
        "weight_decay": run.weight_decay, "seed": run.seed, "schedule": run.schedule,
        "final_lr_fraction": run.final_lr_fraction, "decay_fraction": round(decaying_fraction(config, run), 6),
        "learning_rate": config.learning_rate, "warmup_steps": config.warmup_steps, "max_steps": config.steps,
        "step": moment["step"], "tokens": moment["tokens"], "epochs": round(moment["epochs"], 4),
        "parameters": log["parameters"], "non_embedding_parameters": log["non_embedding_parameters"],
        "tokens_per_parameter": round(moment["tokens"] / log["parameters"], 3),
        "label": name, "final_train_loss": moment["train_loss"], "final_val_loss": moment["val_loss"],
        "config": identity,
        "log": {"seconds": moment["seconds"], "curve": [c for c in log["curve"] if c["step"] <= moment["step"]]},
    }


def save_checkpoint(folder: Path, model: LlamaForCausalLM, tokenizer: Any, info: dict) -> None:
    """Write a Hugging Face folder: weights (safetensors), config, tokenizer, and ``plastiscope.json`` last
    (a folder without it is unfinished)."""
    from transformers.utils import logging as hf_logging

    (folder / "plastiscope.json").unlink(missing_ok=True)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a bar per file written would bury the training bars
    try:
        model.save_pretrained(folder, safe_serialization=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(folder)
    (folder / "plastiscope.json").write_text(json.dumps(info, indent=1))


def train_run(
    config: TrainConfig, run: Run, out: Path, train_ids: list[list[int]], val_ids: list[list[int]], tokenizer: Any,
    identity: dict, progress: bool = True, threads: int | None = None,
) -> list[dict]:
    """Train ``run`` and save its checkpoints under ``out`` (one per ``save_steps``, then the last);
    return their ``plastiscope.json`` contents in step order. ``threads`` pins torch's threads (in a worker)."""
    if threads:
        torch.set_num_threads(threads)
    name = config.run_name(run)
    infos: list[dict] = []

    def on_save(step: int, model: LlamaForCausalLM, log: dict, moment: dict) -> None:
        info = checkpoint_info(config, run, step_name(name, step), log, identity, moment)
        save_checkpoint(out / info["label"], model, tokenizer, info)
        infos.append(info)

    model, log = train_one(config, run, train_ids, val_ids, tokenizer, progress, on_save)
    info = checkpoint_info(config, run, name, log, identity, log)
    info["log"].update(seconds_per_step=log["seconds_per_step"], cpu_seconds=log["cpu_seconds"],
                       tokens_per_second=log["tokens"] / log["seconds"])
    save_checkpoint(out / name, model, tokenizer, info)
    return infos + [info]


def step_name(name: str, step: int) -> str:
    """The folder and label of a run's checkpoint saved after ``step``, e.g. ``wd-0.1_seed-1_step-200``."""
    return f"{name}_step-{step}"


def finished(out: Path, config: TrainConfig, run: Run, identity: dict) -> list[dict] | None:
    """The saved checkpoints' infos of ``run`` when every one of them is there with this identity, else None."""
    name = config.run_name(run)
    infos = []
    for folder in [out / step_name(name, s) for s in config.save_steps] + [out / name]:
        try:
            info = json.loads((folder / "plastiscope.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(info, dict) or info.get("config") != identity or not (folder / "model.safetensors").exists():
            return None
        infos.append(info)
    return infos


MANIFEST_COLUMNS = (
    "path", "label", "weight_decay", "seed", "schedule", "final_lr_fraction", "decay_fraction", "learning_rate",
    "warmup_steps", "max_steps", "step", "tokens", "epochs", "parameters", "non_embedding_parameters",
    "tokens_per_parameter", "final_train_loss", "final_val_loss",
)


def train_sweep(
    out_dir: str | Path,
    config: TrainConfig | None = None,
    train_data: Documents | None = None,
    val_data: Documents | None = None,
    progress: bool = True,
    workers: int = 1,
) -> Path:
    """Train every run of ``config``'s grid into ``out_dir``; return the manifest path.

    Runs already there with the same settings and data are kept, so an interrupted sweep
    resumes. Defaults to the embedded corpus (``train`` and ``validation`` splits).
    ``workers > 1`` trains that many runs at once, each in its own process on one torch thread.
    A run that diverges is left out of the manifest and reported by an error after the others.
    """
    config = config or TrainConfig()
    _integer("workers", workers, 1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_train = config.train_docs or config.steps * config.batch_size
    train_data = (load_corpus("train", n_train) if train_data is None else train_data).head(n_train)
    val_data = (load_corpus("validation", config.val_docs) if val_data is None else val_data).head(config.val_docs)
    if len(train_data) < config.batch_size or not len(val_data):
        raise ConfigError("train_docs", f"{len(train_data)} training and {len(val_data)} validation documents: "
                                        f"need at least a batch ({config.batch_size}) and one")
    data = {"train": train_data.sha256(), "validation": val_data.sha256()}
    runs = config.runs()
    identities = {run: config.identity(run, data) for run in runs}
    done = {run: finished(out, config, run, identities[run]) for run in runs}
    todo = [run for run in runs if done[run] is None]
    errors = []
    if todo:
        tokenizer = train_tokenizer(train_data.texts, config.vocab_size)
        train_ids = [encode(tokenizer, t, config.context) for t in train_data.texts]
        val_ids = [encode(tokenizer, t, config.context) for t in val_data.texts]
        jobs = [(config, run, out, train_ids, val_ids, tokenizer, identities[run]) for run in todo]
        workers = min(workers, len(todo))
        with contextlib.ExitStack() as stack:
            if workers == 1:
                results = (_attempt(train_run, *job, progress=progress) for job in jobs)
            else:
                pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")))
                futures = [pool.submit(_attempt, train_run, *job, progress=False, threads=1) for job in jobs]
                results = (f.result() for f in futures)
            for run, (infos, error) in tqdm(zip(todo, results), total=len(todo), desc="runs", unit="run",
                                            disable=not progress or workers == 1):
                done[run] = infos
                errors += [error] if error else []
    rows = [{"path": info["label"], **{k: info.get(k) for k in MANIFEST_COLUMNS[1:]}} for run in runs for info in done[run] or []]
    for row in rows:
        row["final_train_loss"], row["final_val_loss"] = round(row["final_train_loss"], 5), round(row["final_val_loss"], 5)
    if not rows:
        raise DivergedError("; ".join(errors))
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(MANIFEST_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    if progress:
        print(scale_summary(scale(manifest)), file=sys.stderr)
    if errors:
        raise DivergedError(f"{len(errors)} of {len(runs)} runs failed (the others are in {manifest}): " + "; ".join(errors))
    return manifest


def _attempt(function: Callable, *args: Any, **kwargs: Any) -> tuple[list[dict] | None, str | None]:
    """``(function(...), None)``, or ``(None, the error)`` when it diverged: one run never sinks the others."""
    try:
        return function(*args, **kwargs), None
    except DivergedError as err:
        return None, str(err)


def scale(manifest: str | Path) -> dict[str, Any]:
    """The scale of a sweep's runs (their last checkpoints), read from its manifest: parameters
    (all, and non-embedding), tokens trained on (mean, min, max over runs), tokens per parameter
    (all, and non-embedding), epochs."""
    import pandas as pd

    frame = pd.read_csv(manifest)
    last = frame[frame["step"] == frame["max_steps"]]
    params, non_embedding = int(last["parameters"].max()), int(last["non_embedding_parameters"].max())
    tokens = last["tokens"]
    return {
        "runs": len(last), "parameters": params, "non_embedding_parameters": non_embedding,
        "tokens": int(round(tokens.mean())), "tokens_min": int(tokens.min()), "tokens_max": int(tokens.max()),
        "tokens_per_parameter": round(float(tokens.mean()) / params, 2),
        "tokens_per_non_embedding_parameter": round(float(tokens.mean()) / non_embedding, 2),
        "epochs": round(float(last["epochs"].mean()), 3),
    }


def scale_summary(sizes: dict[str, Any]) -> str:
    """One line on a sweep's scale (:func:`scale`)."""
    return (f"{sizes['runs']} runs of {sizes['parameters']:,} parameters ({sizes['non_embedding_parameters']:,} non-embedding), "
            f"{sizes['tokens']:,} tokens each ({sizes['tokens_min']:,}-{sizes['tokens_max']:,}): "
            f"{sizes['tokens_per_parameter']:.1f} tokens per parameter "
            f"({sizes['tokens_per_non_embedding_parameter']:.1f} per non-embedding parameter), {sizes['epochs']:.2f} epochs")
