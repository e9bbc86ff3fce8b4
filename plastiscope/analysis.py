"""Run analyses over a sweep: one checkpoint in memory at a time, one forward pass per input.

An :class:`Analysis` says which inputs it reads (``data``, ``train_data``, ``val_data``, or
none for weights-only statistics) and starts a :class:`Task` per checkpoint. A task hands
:class:`~plastiscope.activations.Consumer` s to the shared forward pass over each input and,
after the passes, ``finish()`` es into rows of the results schema. Analyses that read the
same input share its pass; none runs the model over that input itself.

Results are cached per (checkpoint content hash, analysis, options, data hashes): a rerun
recomputes nothing already done. A checkpoint that fails (bad folder, corrupt weights,
tokenizer mismatch) is reported and skipped; the others still run.
"""

from __future__ import annotations

import importlib
import logging
import traceback
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pandas as pd
from tqdm.auto import tqdm

from plastiscope.activations import Consumer, run_pass
from plastiscope.checkpoint import Checkpoint, Sweep
from plastiscope.data import Documents
from plastiscope.results import ResultsStore, tidy

log = logging.getLogger("plastiscope")

FAILURE_COLUMNS = ["checkpoint", "path", "analysis", "error"]
INPUT_FLAGS = {"data": "--data", "train_data": "--train-data", "val_data": "--val-data"}


@dataclass
class Inputs:
    """The documents analyses read: ``data`` (probes, attention), ``train_data`` / ``val_data`` (overfit, landscape)."""

    data: Documents | None = None
    train_data: Documents | None = None
    val_data: Documents | None = None

    def hashes(self, names: Iterable[str]) -> dict[str, str]:
        return {n: getattr(self, n).sha256() for n in names if getattr(self, n) is not None}


class Task(Protocol):
    """One analysis of one checkpoint."""

    passes: Mapping[str, Sequence[Consumer]]  # input name -> consumers fed by that input's pass

    def finish(self) -> pd.DataFrame: ...


@dataclass(frozen=True)
class Analysis:
    """An analysis: ``start(checkpoint, inputs, **options) -> Task``; ``options`` are its defaults."""

    name: str
    inputs: tuple[str, ...]
    start: Callable[..., Task]
    options: Mapping[str, Any] = field(default_factory=dict)
    optional_inputs: tuple[str, ...] = ()


# name -> "module:attribute"; imported lazily so one analysis never breaks another.
REGISTRY = {
    "probes": "plastiscope.probes:ANALYSIS",
    "attention": "plastiscope.attention:ANALYSIS",
    "attention_weights": "plastiscope.attention:WEIGHTS_ANALYSIS",
    "overfit": "plastiscope.overfit:ANALYSIS",
    "plasticity": "plastiscope.plasticity:ANALYSIS",
    "landscape": "plastiscope.landscape:ANALYSIS",
}
# CLI names that expand to several analyses.
ALIASES = {"attention": ("attention", "attention_weights")}


def merge_options(name: str, defaults: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """``defaults`` updated with ``options``; a precise error naming an unknown option and the known ones."""
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {unknown}; options are {sorted(defaults)}")
    return {**defaults, **options}


def get_analysis(name: str) -> Analysis:
    if name not in REGISTRY:
        raise ValueError(f"unknown analysis {name!r}; choose from {', '.join(sorted(REGISTRY))}")
    module, attribute = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), attribute)


def available_analyses() -> list[str]:
    """Analyses whose module imports; the others are left out with a warning that says why."""
    names = []
    for name in REGISTRY:
        try:
            get_analysis(name)
            names.append(name)
        except (ImportError, AttributeError) as err:
            log.warning("analysis %r is unavailable and left out: %s: %s", name, type(err).__name__, err)
    return names


def as_sweep(sweep: Sweep | Checkpoint | Sequence[Checkpoint]) -> Sweep:
    if isinstance(sweep, Sweep):
        return sweep
    if isinstance(sweep, Checkpoint):
        return Sweep([sweep])
    return Sweep(list(sweep))


def prepare(
    analyses: Sequence[str | Analysis], inputs: Inputs, options: Mapping[str, Mapping[str, Any]] | None = None
) -> tuple[list[Analysis], dict[str, dict[str, Any]]]:
    """The analyses' specs and their full options; a clear error for a missing input."""
    specs = [a if isinstance(a, Analysis) else get_analysis(a) for a in analyses]
    for spec in specs:
        missing = [n for n in spec.inputs if getattr(inputs, n) is None]
        if missing:
            flags = " and ".join(INPUT_FLAGS[n] for n in missing)
            raise ValueError(f"analysis {spec.name!r} needs {flags} (documents to read); pass {flags} FILE")
    return specs, {s.name: {**s.options, **dict((options or {}).get(s.name, {}))} for s in specs}


def run_analyses(
    sweep: Sweep | Checkpoint | Sequence[Checkpoint],
    analyses: Sequence[str | Analysis],
    inputs: Inputs,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    store: ResultsStore | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run ``analyses`` on every checkpoint; return ``(results, failures)``.

    ``options[name]`` overrides the defaults of analysis ``name``. ``failures`` has one row
    per (checkpoint, analysis) that raised, with the error message; the other results are
    kept (and cached in ``store``, if given).
    """
    sweep = as_sweep(sweep)
    specs, configs = prepare(analyses, inputs, options)
    frames: list[pd.DataFrame] = []
    failures: list[dict[str, Any]] = sweep.load_errors()
    for checkpoint in tqdm(sweep, desc="checkpoints", unit="ckpt", disable=not progress):
        try:
            todo = cached(checkpoint, specs, configs, inputs, store, frames)
            if todo:
                _run_checkpoint(checkpoint, todo, configs, inputs, store, frames, failures, batch_size, progress)
        except Exception as err:  # a broken checkpoint must not sink the sweep
            failures.append(failure_row(checkpoint, "*", err))
        finally:
            checkpoint.unload()
    return combine(frames, failures)


def run_one(
    sweep: Sweep | Checkpoint | Sequence[Checkpoint],
    analysis: Analysis,
    inputs: Inputs,
    options: Mapping[str, Any],
    store: ResultsStore | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> pd.DataFrame:
    """One analysis over a sweep, for the notebook functions (``probe_sweep``, ``attention_stats``, ...).

    Checkpoints that fail are reported by a warning (and kept as records in ``frame.attrs["failures"]``);
    if every checkpoint fails, the errors are raised.
    """
    results, failures = run_analyses(sweep, [analysis], inputs, {analysis.name: options}, store, batch_size, progress)
    if len(failures):
        lines = "; ".join(f"{r.checkpoint}: {r.error}" for r in failures.itertuples())
        if results.empty:
            raise RuntimeError(f"{analysis.name} failed on every checkpoint: {lines}")
        warnings.warn(f"{analysis.name} failed on {len(failures)} checkpoint(s): {lines}", stacklevel=3)
    results.attrs["failures"] = failures.to_dict("records")  # plain records: pandas compares attrs on concat
    return results


def combine(frames: list[pd.DataFrame], failures: list[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Concatenate result pieces into the schema, and failure rows into a frame."""
    results = tidy(pd.concat(frames, ignore_index=True)) if frames else tidy(pd.DataFrame())
    return results, pd.DataFrame(failures, columns=FAILURE_COLUMNS)


def cache_key(spec: Analysis, config: Mapping[str, Any], inputs: Inputs) -> dict[str, Any]:
    """What a cached piece depends on besides the checkpoint's content: options and data hashes."""
    return {"options": dict(config), "data": inputs.hashes(spec.inputs + spec.optional_inputs)}


def cached(
    checkpoint: Checkpoint,
    specs: Sequence[Analysis],
    configs: Mapping[str, Mapping[str, Any]],
    inputs: Inputs,
    store: ResultsStore | None,
    frames: list[pd.DataFrame],
) -> list[Analysis]:
    """Append the cached pieces of ``checkpoint`` to ``frames``; return the analyses still to run."""
    if store is None:
        return list(specs)
    todo = []
    content = checkpoint.content_hash()
    for spec in specs:
        piece = store.get(spec.name, content, cache_key(spec, configs[spec.name], inputs))
        if piece is None:
            todo.append(spec)
        else:
            # names and hyperparameters may have been relabelled since: take the current ones
            piece["checkpoint"] = checkpoint.name
            piece["weight_decay"] = checkpoint.weight_decay
            frames.append(piece)
    return todo


def _run_checkpoint(checkpoint, specs, configs, inputs, store, frames, failures, batch_size, progress):
    tasks = {}
    for spec in specs:
        try:
            tasks[spec.name] = (spec, spec.start(checkpoint, inputs, **configs[spec.name]))
        except Exception as err:
            failures.append(failure_row(checkpoint, spec.name, err))
    for input_name in INPUT_FLAGS:
        consumers = [c for _, task in tasks.values() for c in task.passes.get(input_name, ())]
        if consumers:
            run_pass(checkpoint, getattr(inputs, input_name), consumers, batch_size=batch_size, progress=progress)
    for name, (spec, task) in tasks.items():
        try:
            frame = task.finish()
        except Exception as err:
            failures.append(failure_row(checkpoint, name, err))
            continue
        if store is not None:
            store.put(name, checkpoint.content_hash(), cache_key(spec, configs[name], inputs), frame)
        frames.append(frame)


def failure_row(checkpoint: Checkpoint, analysis: str, err: BaseException | str) -> dict[str, Any]:
    """One row of ``failures`` (which checkpoint, where, which analysis, what went wrong), logged as an error."""
    if isinstance(err, BaseException):
        log.debug("".join(traceback.format_exception(err)))
        err = f"{type(err).__name__}: {err}"
    log.error("%s / %s: %s", checkpoint.name, analysis, err)
    path = str(checkpoint.path) if checkpoint.path else "<in memory>"
    return {"checkpoint": checkpoint.name, "path": path, "analysis": analysis, "error": err}
