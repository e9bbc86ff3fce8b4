"""The Ray executor: one Ray task per checkpoint, on a cluster or a local one.

:func:`plastiscope.runner.drive` looks the results store up first (nothing cached is
resubmitted) and hands this executor the checkpoints with work left. Each becomes one Ray
task that rebuilds the checkpoint from its :class:`~plastiscope.checkpoint.CheckpointSpec`
(folder or cache revision, hyperparameters, device, dtype, device map) and runs every
remaining analysis of it with :func:`plastiscope.runner.run_checkpoint`: one load, the
analyses reading the same documents share a forward pass, memoised values (the random-init
baseline) are computed once. The task returns each analysis's rows and failures; the driver
writes each piece into the same store as the in-process executor, so a cluster run and a
local run give identical tables, and a rerun resumes either way. No shared filesystem is
needed for results (checkpoint folders and data must be readable by the workers at the same
paths).

Resources: a task asks for ``num_cpus`` CPUs and ``num_gpus`` GPUs; by default the GPUs its
checkpoint's placement needs (:func:`gpus_needed`: one for a CUDA device, one per GPU a device
map names; a device map computed at load time, ``"auto"``, asks for one unless ``num_gpus`` says
more).

Fault tolerance: a task whose worker dies (killed, out of memory) is retried once by Ray
(``max_retries``); if it dies again its checkpoint becomes a row of ``failures``, the finished
tasks are kept. An exception inside an analysis (bad input) is not retried: it is deterministic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from plastiscope.checkpoint import Checkpoint
from plastiscope.results import ResultsStore
from plastiscope.runner import Analysis, Inputs, Job, Outcome, failure_row, run_analyses, run_spec, specs_of
from plastiscope.sweep import Sweep


def gpus_needed(device: str | None, device_map: Any) -> int:
    """GPUs a checkpoint placed on ``device`` / ``device_map`` needs: 0 on CPU, 1 for a CUDA device, the number
    of distinct GPUs a device-map mapping names (1 for a map computed at load time, such as ``"auto"``)."""
    if device_map is not None:
        if isinstance(device_map, str):
            return 0 if device_map in ("cpu", "disk", "meta") else 1
        values = device_map.values() if isinstance(device_map, Mapping) else [v for _, v in device_map]
        gpus = set()
        for value in values:
            text = str(value)
            if isinstance(value, int) and not isinstance(value, bool):
                gpus.add(value)
            elif text.startswith("cuda"):
                gpus.add(int(text.partition(":")[2] or 0))
        return len(gpus)
    return 1 if str(device or "cpu").startswith("cuda") else 0


@dataclass
class Ray:
    """Run each checkpoint as one Ray task.

    ``address`` joins a running cluster ("auto", "ray://host:10001"); None starts a local one
    (or uses the one already initialised). ``num_cpus`` / ``num_gpus`` / ``memory`` (bytes) are
    each task's resource request; ``num_gpus=None`` asks for what the checkpoint's placement needs
    (:func:`gpus_needed`). ``init_kwargs`` go to ``ray.init``.
    """

    address: str | None = None
    num_cpus: float = 1
    num_gpus: float | None = None
    memory: int | None = None
    max_retries: int = 1
    init_kwargs: Mapping[str, Any] = field(default_factory=dict)
    name = "ray"

    def check(self, sweep: Sweep) -> None:
        """Refuse in-memory checkpoints (a task rebuilds its checkpoint from its folder), and a missing Ray."""
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ImportError("the Ray executor needs Ray: pip install 'plastiscope[ray]'") from None
        specs_of(sweep, self.name)

    def gpus(self, checkpoint: Checkpoint) -> float:
        """The GPUs a task for ``checkpoint`` asks for."""
        return self.num_gpus if self.num_gpus is not None else gpus_needed(checkpoint.device, checkpoint.device_map)

    def run(self, work: Sequence[tuple[Checkpoint, Job]], memo_root: Path | None) -> Iterator[tuple[int, Outcome]]:
        """Submit one task per checkpoint; yield outcomes as they finish (memoised values stay in each task)."""
        import ray

        if not work:
            return
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False, **dict(self.init_kwargs))
        task = ray.remote(_task)
        inputs = ray.put(work[0][1].inputs)  # the documents travel once, not once per task
        pending = {}
        for index, (checkpoint, job) in enumerate(work):
            options = {"num_cpus": self.num_cpus, "num_gpus": self.gpus(checkpoint), "max_retries": self.max_retries,
                       "retry_exceptions": False, **({"memory": self.memory} if self.memory else {})}
            pending[task.options(**options).remote(checkpoint.spec(), dataclasses.replace(job, inputs=Inputs()), inputs)] = index
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(ref)
            try:
                outcome = ray.get(ref)
            except Exception as err:  # the worker died twice (killed, out of memory)
                outcome = Outcome(failures=[failure_row(work[index][0], "*", f"{type(err).__name__}: {str(err).splitlines()[0]}")])
            yield index, outcome


def _task(spec: Any, job: Job, inputs: Inputs) -> Outcome:
    """Body of one Ray task: the job with its documents (a Ray object shared by every task), on the checkpoint of ``spec``."""
    return run_spec(spec, dataclasses.replace(job, inputs=inputs))


def run_analyses_ray(
    sweep: Sweep | Sequence[Checkpoint],
    analyses: Sequence[str | Analysis],
    inputs: Inputs,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    store: ResultsStore | None = None,
    batch_size: int = 16,
    progress: bool = True,
    **executor: Any,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`plastiscope.runner.run_analyses` on the :class:`Ray` executor (``executor``: its fields)."""
    return run_analyses(sweep, analyses, inputs, options, store, batch_size, progress, Ray(**executor))
