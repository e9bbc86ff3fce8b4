"""Run a sweep's analyses on a Ray cluster: one Ray task per (checkpoint, analysis).

The driver looks up the results store first (nothing cached is resubmitted), submits each
remaining (checkpoint, analysis) as a Ray task with its resource request, and writes each
finished piece into the same store as the in-process executor, one file per task — so a
cluster run and a local run give identical tables, and a rerun resumes either way. Workers
return their rows to the driver; no shared filesystem is needed for results (checkpoint
folders and data must be readable by the workers at the same paths).

Fault tolerance: a task whose worker dies (killed, out of memory) is retried once by Ray
(``max_retries``); if it dies again it becomes a row of ``failures``, the finished tasks
are kept. An exception inside an analysis (bad input) is not retried: it is deterministic.

Trade-off against the local executor: analyses reading the same documents share a forward
pass in-process, but not across Ray tasks; on a cluster the parallelism is worth more.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from plastiscope.checkpoint import Checkpoint
from plastiscope.results import ResultsStore, identity
from plastiscope.runner import (
    Analysis,
    Inputs,
    as_sweep,
    cache_key,
    cached,
    check_batch_size,
    combine,
    failure_row,
    file_hashes,
    prepare,
    run_analyses,
    run_keys,
)
from plastiscope.sweep import Sweep


def _task(
    spec: dict[str, Any], analysis: str | Analysis, inputs: Inputs, options: dict[str, Any], batch_size: int
) -> tuple[pd.DataFrame, list]:
    """Body of one Ray task: rebuild the checkpoint from its folder, run one analysis, return rows."""
    device, dtype = spec.pop("device"), spec.pop("dtype")
    checkpoint = Checkpoint(**spec).to(device=device, dtype=dtype)
    name = analysis if isinstance(analysis, str) else analysis.name
    results, failures = run_analyses(checkpoint, [analysis], inputs, {name: options}, None, batch_size, progress=False)
    return results, failures.to_dict("records")


def run_analyses_ray(
    sweep: Sweep | Sequence[Checkpoint],
    analyses: Sequence[str | Analysis],
    inputs: Inputs,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    store: ResultsStore | None = None,
    batch_size: int = 16,
    progress: bool = True,
    address: str | None = None,
    num_cpus: float = 1,
    num_gpus: float = 0,
    memory: int | None = None,
    max_retries: int = 1,
    init_kwargs: Mapping[str, Any] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Like :func:`plastiscope.runner.run_analyses`, with every (checkpoint, analysis) a Ray task.

    ``address`` joins a running cluster ("auto", "ray://host:10001"); None starts a local one
    (or uses the one already initialised). ``num_cpus`` / ``num_gpus`` / ``memory`` (bytes)
    are each task's resource request. Checkpoints must be folders (in-memory models stay in
    the notebook: use the local executor for them).
    """
    try:
        import ray
    except ImportError:
        raise ImportError("the Ray executor needs Ray: pip install 'plastiscope[ray]'") from None
    check_batch_size(batch_size)
    sweep = as_sweep(sweep)
    in_memory = [c.name for c in sweep if c.path is None]
    if in_memory:
        raise ValueError(
            f"checkpoints {in_memory} are in memory; the Ray executor needs checkpoint folders (save_pretrained), "
            f"or use the local executor"
        )
    specs, configs = prepare(analyses, inputs, options)
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, **dict(init_kwargs or {}))
    remote = ray.remote(_task).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries, retry_exceptions=False,
                                       **({"memory": memory} if memory else {}))
    inputs_ref = ray.put(inputs)
    frames: list[pd.DataFrame] = []
    failures: list[dict[str, Any]] = sweep.load_errors()
    pending: dict[Any, tuple[Checkpoint, Analysis, str | None]] = {}
    with file_hashes(store) as hashes:
        keys = run_keys(specs, configs, inputs) if store is not None else {}
        for checkpoint in sweep:
            try:
                todo, content = cached(checkpoint, specs, keys, store, frames)
            except Exception as err:  # e.g. its files changed since the sweep was read
                failures.append(failure_row(checkpoint, "*", err))
                continue
            hashes.save()
            for spec in todo:
                rebuild = {"name": checkpoint.name, "weight_decay": checkpoint.weight_decay, "hyperparameters": checkpoint.hyperparameters,
                           "path": checkpoint.path, "device": checkpoint.device, "dtype": checkpoint.dtype}
                analysis = spec.name if not _is_ad_hoc(spec) else spec
                pending[remote.remote(rebuild, analysis, inputs_ref, configs[spec.name], batch_size)] = (checkpoint, spec, content)
    bar = tqdm(total=len(pending), desc="ray tasks", unit="task", disable=not progress)
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        checkpoint, spec, content = pending.pop(ref)
        try:
            frame, task_failures = ray.get(ref)
        except Exception as err:  # the worker died twice (killed, out of memory)
            failures.append(failure_row(checkpoint, spec.name, f"{type(err).__name__}: {str(err).splitlines()[0]}"))
        else:
            failures += task_failures
            if not task_failures:
                if store is not None and content is not None:
                    store.put(spec.name, content, cache_key(keys[spec.name], checkpoint), frame, identity=identity(checkpoint))
                frames.append(frame)
        bar.update(1)
    bar.close()
    return combine(frames, failures)


def _is_ad_hoc(spec: Analysis) -> bool:
    """An Analysis object not in the registry (a notebook's own) travels by value."""
    from plastiscope.runner import REGISTRY

    return spec.name not in REGISTRY
