"""The main job: analyze a sweep into a results folder.

``RESULTS_DIR`` holds ``metrics.parquet`` / ``metrics.csv`` (the tidy schema of
:mod:`plastiscope.results`: this run's results and every other valid piece of the folder, so
one more analysis run into a folder adds to it), ``run.json`` (versions, configuration, data
hashes; earlier runs' configurations under ``earlier``), ``metrics.json`` (what each metric
means: the analyses' declarations, :mod:`plastiscope.metrics`), ``failures.csv`` when some
(checkpoint, analysis) of this run failed, and ``cache/`` (one piece per checkpoint x
analysis x cache key, so a rerun resumes).
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

from plastiscope.checkpoint import CheckpointError
from plastiscope.hashing import atomic_write
from plastiscope.metrics import write_declarations
from plastiscope.results import ResultsStore, check_results_folder, identity
from plastiscope.runner import ALIASES, Analysis, Inputs, available_analyses, declarations, get_analysis, prepare, run_analyses
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


def analyze(
    sweep: Sweep | str | Path,
    out: str | Path,
    analyses: Sequence[str | Analysis] | None = None,
    inputs: Inputs | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    batch_size: int = 16,
    progress: bool = True,
    config: Mapping[str, Any] | None = None,
    executor: str = "local",
    executor_options: Mapping[str, Any] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run ``analyses`` and write ``out``.

    Default: every analysis whose inputs are given, except ``plasticity``, which fine-tunes
    every checkpoint and runs only when named.

    Returns ``(results, failures)``. Cached pieces in ``out/cache`` are reused.
    ``executor="ray"`` runs each (checkpoint, analysis) as a Ray task
    (:func:`plastiscope.distributed.run_analyses_ray`; ``executor_options`` go to it).
    """
    if executor not in ("local", "ray"):
        raise ValueError(f"executor {executor!r}: choose local or ray")
    check_results_folder(out)  # before anything is read
    sweep = open_sweep(sweep) if not isinstance(sweep, Sweep) else sweep
    inputs = inputs or Inputs()
    if analyses is None:
        analyses = [a for a in available_analyses() if a != "plasticity"
                    and all(getattr(inputs, n) is not None for n in get_analysis(a).inputs)]
    analyses = expand_analyses(analyses)
    prepare(analyses, inputs, options)  # bad options fail here, before the results folder is made
    store = ResultsStore(out)
    if executor == "ray":
        from plastiscope.distributed import run_analyses_ray

        results, failures = run_analyses_ray(sweep, analyses, inputs, options, store, batch_size, progress, **dict(executor_options or {}))
    else:
        results, failures = run_analyses(sweep, analyses, inputs, options, store, batch_size, progress)
    current = {c.name: store.seen.get(c.name, (None, identity(c))) for c in sweep}
    current.update({e["checkpoint"]: (None, {}) for e in sweep.errors})
    names = [a if isinstance(a, str) else a.name for a in analyses]
    store.write(results, failures, current=current, analyses=names)
    write_declarations(out, declarations([a for a in analyses if not isinstance(a, str)]))
    run = {
        "versions": versions(),
        "config": {"analyses": names,
                   "options": {k: dict(v) for k, v in (options or {}).items()},
                   "batch_size": batch_size, "executor": executor, **dict(config or {})},
        "data": {
            name: {"source": docs.source, "documents": len(docs), "sha256": docs.sha256()}
            for name in ("data", "train_data", "val_data", "finetune_data")
            if (docs := getattr(inputs, name)) is not None
        },
        "checkpoints": sweep.to_frame().astype(str).to_dict("records"),
        "failures": failures.to_dict("records"),
    }
    previous = Path(out) / "run.json"
    if previous.exists():
        try:
            old = json.loads(previous.read_text())
            run["earlier"] = (old.get("earlier") or [])[-19:] + [{"config": old.get("config"), "data": old.get("data")}]
        except (ValueError, AttributeError) as err:
            log.warning("%s: unreadable (%s); this run's run.json replaces it", previous, err)
    text = json.dumps(run, indent=1, default=str)
    atomic_write(Path(out) / "run.json", lambda tmp: Path(tmp).write_text(text))
    return results, failures
