"""The main job: analyze a sweep into a results folder, from Python or from a run configuration.

``RESULTS_DIR`` holds ``metrics.parquet`` / ``metrics.csv`` (the tidy schema of
:mod:`plastiscope.results`: this run's results and every other valid piece of the folder, so
one more analysis run into a folder adds to it), ``run.json`` (versions, the run's
configuration, data hashes; earlier runs' configurations under ``earlier``), ``metrics.json``
(what each metric means: the analyses' declarations, :mod:`plastiscope.metrics`),
``failures.csv`` when some (checkpoint, analysis) of this run failed, and ``cache/`` (one piece
per checkpoint x analysis x cache key, so a rerun resumes).

A run configuration (:data:`RUN_KEYS`) is :func:`analyze`'s keyword arguments as JSON or YAML::

    sweep: sweeps/wd/manifest.csv        # a manifest, a sweep folder or one checkpoint folder
    out: results
    analyses: [probes, attention, overfit]
    data: {path: probe.jsonl, label_column: pos}     # or just a path; text_column per input too
    train_data: train.txt
    val_data: val.txt
    finetune_data: {path: task.jsonl, label_column: topic}
    options: {overfit: {prefix_tokens: 8}}
    batch_size: 16
    device: cpu

``run.json`` records the run's configuration under ``config`` in this schema, with absolute
paths, so ``plastiscope analyze --config results/run.json`` replays it; relative paths in a
configuration file are read from the file's folder.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import platform
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from plastiscope.checkpoint import Checkpoint, CheckpointError
from plastiscope.data import Documents, load_documents
from plastiscope.hashing import atomic_write
from plastiscope.loading import check_out_folder
from plastiscope.metrics import write_declarations
from plastiscope.results import ResultsStore, check_results_folder, identity
from plastiscope.runner import (
    ALIASES,
    Analysis,
    Executor,
    Inputs,
    as_sweep,
    available_analyses,
    declarations,
    drive,
    executor_named,
    get_analysis,
    plan,
)
from plastiscope.sweep import Sweep

log = logging.getLogger("plastiscope")


def open_sweep(source: str | Path) -> Sweep:
    """A manifest file (.csv/.json/.yaml), a folder of checkpoints, or one checkpoint folder."""
    source = Path(source)
    if source.is_file():
        return Sweep.from_manifest(source)
    if source.is_dir():
        for name in ("manifest.csv", "manifest.json", "manifest.yaml", "manifest.yml"):
            if (source / name).exists():
                return Sweep.from_manifest(source / name)
        return Sweep.from_directory(source)
    raise CheckpointError(f"{source}: no such manifest or folder; pass a manifest file or the folder of the sweep")


def expand_analyses(names: Sequence[str | Analysis]) -> list[str | Analysis]:
    """CLI names to registry names (``attention`` runs pattern and weight statistics)."""
    out: list[str | Analysis] = []
    for name in names:
        expanded = ALIASES.get(name, (name,)) if isinstance(name, str) else (name,)
        out += [n for n in expanded if n not in out]
    return out


def versions() -> dict[str, str]:
    """Installed versions of Python, plastiscope and every package it requires (those missing are left out)."""
    found = {"python": platform.python_version()}
    required = [re.split(r"[ ;<>=!~\[]", r, maxsplit=1)[0] for r in importlib.metadata.requires("plastiscope") or [] if "extra ==" not in r]
    for package in ("plastiscope", *required, "peft", "accelerate", "ray"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


INPUT_NAMES = ("data", "train_data", "val_data", "finetune_data")
# the analysis options a label column of an input fills in, where the analysis runs and the option is not given
LABEL_OPTIONS = {"data": (("probes", "label_column"),),
                 "finetune_data": (("plasticity", "label_column"), ("landscape", "label_column"))}
RUN_KEYS = ("sweep", "out", "analyses", *INPUT_NAMES, "text_column", "label_column", "finetune_label_column", "max_docs",
            "options", "batch_size", "device", "dtype", "device_map", "executor", "executor_options")
INPUT_KEYS = ("path", "text_column", "label_column")


def read_run_config(path: str | Path) -> dict[str, Any]:
    """A run configuration (YAML or JSON; ``run.json`` of a results folder too, whose ``config`` it reads) as
    :func:`analyze`'s keyword arguments, with relative paths read from the file's folder; a clear error names
    the file and an unknown key."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file; pass a run configuration (YAML or JSON) or a results folder's run.json")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ValueError(f"{where}: not valid YAML or JSON ({getattr(err, 'problem', err)}); fix the file") from None
    if isinstance(loaded, dict) and "config" in loaded and "versions" in loaded:  # a results folder's run.json
        loaded = loaded["config"]
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: a run configuration is a mapping of {', '.join(RUN_KEYS)}")
    if "source" in loaded and "sweep" not in loaded:  # the name run.json gave the sweep before the schema was analyze's
        loaded = {("sweep" if k == "source" else k): v for k, v in loaded.items()}
    unknown = sorted(set(loaded) - set(RUN_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; a run configuration has {', '.join(RUN_KEYS)}")
    config = {k: v for k, v in loaded.items() if v is not None}
    options = config.get("options", {})
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise ValueError(f"{path}: options is a mapping of analysis names to their options, e.g. {{overfit: {{prefix_tokens: 8}}}}")
    for key, kind in (("analyses", list), ("executor_options", dict)):
        if key in config and not isinstance(config[key], kind):
            raise ValueError(f"{path}: {key} is a {'list' if kind is list else 'mapping'}; got {config[key]!r}")
    base = path.resolve().parent
    for key in ("sweep", "out"):
        if isinstance(config.get(key), str):
            config[key] = str(base / config[key])
    for name in INPUT_NAMES:
        spec = config.get(name)
        if isinstance(spec, str):
            config[name] = str(base / spec)
        elif isinstance(spec, dict):
            bad = sorted(set(spec) - set(INPUT_KEYS))
            if bad or "path" not in spec:
                raise ValueError(f"{path}: {name} is a path or a mapping with path (and text_column, label_column); "
                                 f"got keys {sorted(spec)}")
            config[name] = {**spec, "path": str(base / spec["path"])}
        elif spec is not None:
            raise ValueError(f"{path}: {name} is a path or a mapping with path, text_column, label_column; got {spec!r}")
    return config


def input_documents(
    name: str, spec: Any, text_column: str = "text", label_column: str | None = None, max_docs: int | None = None
) -> tuple[Documents | None, dict[str, Any]]:
    """The documents of input ``name`` and their record for the run configuration: ``spec`` is anything
    :func:`plastiscope.load_documents` reads, or a mapping ``{path, text_column, label_column}``."""
    if spec is None:
        return None, {}
    if isinstance(spec, Mapping):
        bad = sorted(set(spec) - set(INPUT_KEYS))
        if bad or "path" not in spec:
            raise ValueError(f"{name}: a mapping with path (and text_column, label_column); got keys {sorted(spec)}")
        text_column = spec.get("text_column") or text_column
        label_column = spec.get("label_column") or label_column
        spec = spec["path"]
    docs = load_documents(spec, text_column, label_column, max_docs)
    source = str(Path(spec).resolve()) if isinstance(spec, (str, Path)) else docs.source
    record = {"path": source, "text_column": text_column, **({"label_column": label_column} if label_column else {})}
    return docs, record


def check_placement(device: str | None, device_map: Any) -> None:
    """Refuse, before any model loads, a device or device map this machine cannot run: a CUDA device
    (or a device map naming GPUs) where torch sees none or fewer, an MPS device without MPS, a name torch
    does not know."""
    import torch

    def gpu(text: str, flag: str) -> None:
        index = int(text.partition(":")[2] or 0)
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if index >= count:
            seen = f"only {count} GPU(s) (cuda:0 to cuda:{count - 1})" if count else "no CUDA GPU"
            raise ValueError(f"{flag} {text}: torch sees {seen} on this machine; use --device cpu (or auto)")

    if device not in (None, "auto"):
        try:
            parsed = torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(f"--device {device!r}: not a device; use cpu, cuda, cuda:N, mps or auto") from None
        if parsed.type == "cuda":
            gpu(str(device), "--device")
        elif parsed.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    if isinstance(device_map, Mapping):
        for value in device_map.values():
            if isinstance(value, int) and not isinstance(value, bool):
                gpu(f"cuda:{value}", "--device-map")
            elif str(value).startswith("cuda"):
                gpu(str(value), "--device-map")


def analyze(
    sweep: Sweep | Checkpoint | Sequence[Checkpoint] | str | Path,
    out: str | Path,
    analyses: Sequence[str | Analysis] | None = None,
    inputs: Inputs | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    data: Any = None,
    train_data: Any = None,
    val_data: Any = None,
    finetune_data: Any = None,
    text_column: str = "text",
    label_column: str | None = None,
    finetune_label_column: str | None = None,
    max_docs: int | None = None,
    batch_size: int = 16,
    device: str | None = None,
    dtype: str | None = None,
    device_map: str | Mapping[str, Any] | None = None,
    executor: str | Executor = "local",
    executor_options: Mapping[str, Any] | None = None,
    progress: bool = True,
    verbose: bool = False,
    about: Mapping[str, Any] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run ``analyses`` on ``sweep`` and write the results folder ``out``; return ``(results, failures)``.

    ``sweep``: a :class:`~plastiscope.sweep.Sweep`, checkpoints, or the path of a manifest, a sweep
    folder or a checkpoint folder. ``analyses``: names (``attention`` also runs ``attention_weights``);
    default every analysis whose inputs are given, except ``plasticity``, which fine-tunes every
    checkpoint and runs only when named. The documents: ``data`` (probes, attention), ``train_data``
    and ``val_data`` (overfit, landscape), ``finetune_data`` (plasticity, landscape), each anything
    :func:`plastiscope.load_documents` reads or ``{"path": ..., "text_column": ..., "label_column": ...}``;
    or ``inputs``, an :class:`~plastiscope.runner.Inputs` already loaded. ``text_column`` and
    ``max_docs`` apply to every input; ``label_column`` is the label of ``data`` (probes' default)
    and ``finetune_label_column`` that of ``finetune_data`` (plasticity's and landscape's default).
    ``options``: ``{analysis: {option: value}}`` (``plastiscope options`` lists them).
    ``device`` / ``dtype`` / ``device_map`` place every checkpoint (checked before any loads).
    ``executor``: ``"local"`` (this process), ``"process"`` (``executor_options={"workers": N}``) or
    ``"ray"`` (:class:`plastiscope.distributed.Ray`'s fields); cached pieces in ``out/cache`` are reused.
    ``about``: free-form notes recorded in ``run.json``. Libraries' bars and warnings show only with
    ``verbose``.
    """
    out = check_results_folder(out)  # before anything is read
    if isinstance(sweep, (str, Path)) and Path(sweep).is_dir():
        check_out_folder(out, sweep)
    source = str(Path(sweep).resolve()) if isinstance(sweep, (str, Path)) else None
    sweep = open_sweep(sweep) if isinstance(sweep, (str, Path)) else as_sweep(sweep)
    for checkpoint in sweep:
        if checkpoint.path is not None:
            check_out_folder(out, checkpoint.path)  # its results would change the checkpoint's content hash
    given = {"data": data, "train_data": train_data, "val_data": val_data, "finetune_data": finetune_data}
    records: dict[str, Any] = {}
    if inputs is not None and any(v is not None for v in given.values()):
        raise ValueError("pass the documents as inputs=Inputs(...) or as data=, train_data=, ..., not both")
    if inputs is None:
        labels = {"data": label_column, "finetune_data": finetune_label_column}
        loaded = {}
        for name, spec in given.items():
            loaded[name], records[name] = input_documents(name, spec, text_column, labels.get(name), max_docs)
        inputs = Inputs(**loaded)
    if analyses is None:
        analyses = [a for a in available_analyses() if a != "plasticity"
                    and all(getattr(inputs, n) is not None for n in get_analysis(a).inputs)]
    analyses = expand_analyses(analyses)
    names = [a if isinstance(a, str) else a.name for a in analyses]
    options = {k: dict(v) for k, v in (options or {}).items()}
    for name, targets in LABEL_OPTIONS.items():
        column = (records.get(name) or {}).get("label_column")
        for analysis, key in targets if column else ():
            if analysis in names and key not in options.get(analysis, {}):
                options.setdefault(analysis, {})[key] = column
    if device is not None or dtype is not None or device_map is not None:
        sweep = sweep.to(device=device, dtype=dtype, device_map=dict(device_map) if isinstance(device_map, Mapping) else device_map)
    run_on = executor_named(executor, **dict(executor_options or {}))
    if run_on.name != "ray":  # a Ray worker may have GPUs this machine lacks
        for placement in {(c.device, str(c.device_map)): c for c in sweep}.values():
            check_placement(placement.device, placement.device_map)
    job = plan(analyses, inputs, options, batch_size, progress, verbose)  # bad options fail here, before the folder is made
    store = ResultsStore(out)
    results, failures = drive(sweep, job, store, run_on, progress)
    current = {c.name: store.seen.get(c.name, (None, identity(c))) for c in sweep}
    current.update({e["checkpoint"]: (None, {}) for e in sweep.errors})
    store.write(results, failures, current=current, analyses=names)
    write_declarations(out, declarations([a for a in analyses if not isinstance(a, str)]))
    config = {
        "sweep": source, "out": str(out.resolve()), "analyses": names,
        **{name: records[name] for name in INPUT_NAMES if records.get(name)},
        "text_column": text_column, "max_docs": max_docs, "options": options, "batch_size": batch_size,
        "device": device, "dtype": dtype, "device_map": dict(device_map) if isinstance(device_map, Mapping) else device_map,
        "executor": run_on.name, "executor_options": dict(executor_options or {}),
    }
    run = {
        "versions": versions(),
        "config": config,
        **({"about": dict(about)} if about else {}),
        "data": {
            name: {"source": docs.source, "documents": len(docs), "sha256": docs.sha256()}
            for name in INPUT_NAMES
            if (docs := getattr(inputs, name)) is not None
        },
        "checkpoints": sweep.to_frame().astype(str).to_dict("records"),
        "failures": failures.to_dict("records"),
    }
    previous = out / "run.json"
    if previous.exists():
        try:
            old = json.loads(previous.read_text())
            run["earlier"] = (old.get("earlier") or [])[-19:] + [{"config": old.get("config"), "data": old.get("data")}]
        except (ValueError, AttributeError) as err:
            log.warning("%s: unreadable (%s); this run's run.json replaces it", previous, err)
    text = json.dumps(run, indent=1, default=str)
    atomic_write(out / "run.json", lambda tmp: Path(tmp).write_text(text))
    return results, failures


def row_count(out: str | Path) -> int:
    """Rows of ``out/metrics.parquet`` (read from its metadata)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(Path(out) / "metrics.parquet").metadata.num_rows


def report(results: Any, out: str | Path, **options: Any) -> Path:
    """Write one self-contained HTML report of ``results`` (a results folder, a frame, or several) to ``out``
    and return its path: :func:`plastiscope.reports.write_report` (``group_by``, ``x``, ``formats``, ...)."""
    from plastiscope.reports import write_report

    return write_report(results, out, **options)
