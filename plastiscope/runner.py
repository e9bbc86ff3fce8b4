"""The runner: analyses over a sweep, one checkpoint in memory at a time, one forward pass per input.

An :class:`Analysis` declares what it reads (``data``, ``train_data``, ``val_data``,
``finetune_data``, or nothing for weights-only statistics), its options (an
:class:`~plastiscope.options.OptionTable`) and its variant columns, and starts a :class:`Task`
per checkpoint. A task hands :class:`~plastiscope.activations.Consumer` s to the shared forward
pass over each input and, after the passes, ``finish()`` es into rows of the results schema
(:mod:`plastiscope.results`). Analyses that read the same input share its pass; none runs the
model over that input itself. Options are validated once, for every analysis, before any model
is loaded.

Results are cached per (checkpoint content, analysis, cache key): the key holds the options
after validation, the content hashes of the documents the analysis reads, what its
``fingerprint`` names outside those (a reference model's content), the dtype and device
class, and the plastiscope version; the checkpoint's content hash covers its weight,
config and tokenizer files (:meth:`~plastiscope.checkpoint.Checkpoint.content_hash`), with
large files' digests reused while unchanged. So a rerun recomputes nothing already done,
and never serves a result computed from anything else. A checkpoint that fails (bad folder,
corrupt weights, tokenizer mismatch) is reported and skipped; the others still run.

This module is also the in-process executor (:func:`run_analyses`); :mod:`plastiscope.distributed`
runs the same tasks on a Ray cluster.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from plastiscope.activations import Consumer, run_pass
from plastiscope.checkpoint import Checkpoint
from plastiscope.console import Note, Progress, interactive, quiet
from plastiscope.data import Documents
from plastiscope.hashing import FileHashes, using_file_hashes
from plastiscope.memo import Memo
from plastiscope.metrics import Declarations, Metric, attach, declare
from plastiscope.options import OptionTable, validate
from plastiscope.results import ResultsStore, identity, stamp, tidy
from plastiscope.sweep import Sweep

log = logging.getLogger("plastiscope")

FAILURE_COLUMNS = ["checkpoint", "path", "analysis", "error"]
INPUT_FLAGS = {"data": "--data", "train_data": "--train-data", "val_data": "--val-data", "finetune_data": "--finetune-data"}


@dataclass
class Inputs:
    """The documents analyses read.

    ``data``: probes and attention patterns; ``train_data`` / ``val_data``: documents the
    checkpoints were trained on and held-out ones (overfit, landscape); ``finetune_data``: a
    downstream task's documents (plasticity, and the landscape's score-based basins).
    """

    data: Documents | None = None
    train_data: Documents | None = None
    val_data: Documents | None = None
    finetune_data: Documents | None = None

    def hashes(self, names: Iterable[str]) -> dict[str, str]:
        """Content hash of each named input that is present."""
        return {n: getattr(self, n).sha256() for n in names if getattr(self, n) is not None}


class Task(Protocol):
    """One analysis of one checkpoint: consumers for the shared passes, then ``finish()``."""

    passes: Mapping[str, Sequence[Consumer]]  # input name -> consumers fed by that input's pass

    def finish(self) -> pd.DataFrame:
        """The checkpoint's rows of the results schema, once every pass has run."""


@dataclass(frozen=True)
class Analysis:
    """An analysis as the runner sees it.

    - ``name``: its name in results and on the command line;
    - ``inputs`` / ``optional_inputs``: the :class:`Inputs` it needs / may use;
    - ``start(checkpoint, inputs, options, memo) -> Task``, with ``options`` already validated;
    - ``options``: the declared options (:mod:`plastiscope.options`);
    - ``variants``: the extra columns whose values make a row part of a different series
      (``task``, ``pooling``, ...): every other extra column is per-row detail;
    - ``fingerprint(options) -> dict``: what the results depend on besides the checkpoint, the
      options and the inputs (e.g. the content hash of a reference model an option names);
      it becomes part of the cache key, computed once per run before any model loads;
    - ``metrics``: the declared metrics (:mod:`plastiscope.metrics`), recorded with its results.
    """

    name: str
    inputs: tuple[str, ...]
    start: Callable[[Checkpoint, Inputs, dict[str, Any], Memo], Task]
    options: OptionTable
    variants: tuple[str, ...] = ()
    optional_inputs: tuple[str, ...] = ()
    fingerprint: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    metrics: tuple[Metric, ...] = ()


# name -> "module:attribute"; imported lazily so one analysis never breaks another.
REGISTRY = {
    "probes": "plastiscope.probes:ANALYSIS",
    "attention": "plastiscope.attention:ANALYSIS",
    "attention_weights": "plastiscope.attention:WEIGHTS_ANALYSIS",
    "overfit": "plastiscope.overfit:ANALYSIS",
    "plasticity": "plastiscope.plasticity:ANALYSIS",
    "landscape": "plastiscope.landscape:ANALYSIS",
}
# command-line names that expand to several analyses
ALIASES = {"attention": ("attention", "attention_weights")}


def get_analysis(name: str) -> Analysis:
    """The registered analysis ``name``; a clear error lists the known ones."""
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


def declarations(specs: Sequence[Analysis] = ()) -> Declarations:
    """The metric declarations of every registered analysis (registry order), then of ``specs`` not registered."""
    found = []
    for name in REGISTRY:
        try:
            found.append((name, get_analysis(name).metrics))
        except ImportError as err:  # one analysis that cannot be imported must not hide the others' declarations
            log.warning("analysis %s: its metric declarations are not recorded (%s)", name, err)
    found += [(s.name, s.metrics) for s in specs if s.name not in REGISTRY]
    return declare(found)


def as_sweep(sweep: Sweep | Checkpoint | Sequence[Checkpoint]) -> Sweep:
    """A :class:`Sweep` of one checkpoint, a list of them, or the sweep itself."""
    if isinstance(sweep, Sweep):
        return sweep
    if isinstance(sweep, Checkpoint):
        return Sweep([sweep])
    return Sweep(list(sweep))


def prepare(
    analyses: Sequence[str | Analysis], inputs: Inputs, options: Mapping[str, Mapping[str, Any]] | None = None
) -> tuple[list[Analysis], dict[str, dict[str, Any]]]:
    """The analyses' specs and their validated options; a clear error for a missing input,
    an unknown analysis, or an option that names no requested analysis."""
    specs = [a if isinstance(a, Analysis) else get_analysis(a) for a in analyses]
    options = dict(options or {})
    names = {s.name for s in specs}
    stray = sorted(set(options) - names)
    if stray:
        known = sorted(set(REGISTRY) | names)
        unknown = [s for s in stray if s not in known]
        what = f"unknown analysis {unknown}" if unknown else f"analysis {stray} is not among those run ({sorted(names)})"
        raise ValueError(f"options given for {what}; option names look like ANALYSIS.KEY with ANALYSIS one of {sorted(names)}")
    for spec in specs:
        missing = [n for n in spec.inputs if getattr(inputs, n) is None]
        if missing:
            flags = " and ".join(INPUT_FLAGS[n] for n in missing)
            raise ValueError(f"analysis {spec.name!r} needs {flags} (documents to read); pass {flags} FILE")
    return specs, {s.name: validate(s.name, s.options, options.get(s.name)) for s in specs}


@dataclass(frozen=True)
class Job:
    """What a run does on each checkpoint: ``analyses`` with their validated ``options`` (by name),
    the ``inputs``, documents per forward pass (``batch_size``), whether the passes draw bars
    (``progress``) and whether libraries may print (``verbose``). Built by :func:`plan`."""

    analyses: tuple[Analysis, ...]
    options: Mapping[str, dict[str, Any]]
    inputs: Inputs
    batch_size: int = 16
    progress: bool = False
    verbose: bool = False

    def only(self, analyses: Sequence[Analysis]) -> Job:
        """The same job restricted to ``analyses`` (those a checkpoint has not cached)."""
        return dataclasses.replace(self, analyses=tuple(analyses))


@dataclass
class Outcome:
    """What :func:`run_checkpoint` gives back: each finished analysis's rows by name, the failure rows,
    and our warnings (:class:`~plastiscope.console.Note`) when it ran in another process."""

    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)


def plan(
    analyses: Sequence[str | Analysis],
    inputs: Inputs,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    batch_size: int = 16,
    progress: bool = True,
    verbose: bool = False,
) -> Job:
    """The :class:`Job` of a run: the analyses' specs and their options validated once (:func:`prepare`);
    a clear error for a bad batch size, option or missing input, before any model loads."""
    check_batch_size(batch_size)
    specs, configs = prepare(analyses, inputs, options)
    return Job(tuple(specs), configs, inputs, batch_size, progress, verbose)


def run_passes(checkpoint: Checkpoint, job: Job, memo: Memo) -> tuple[dict[str, tuple[Analysis, Task]], list[dict[str, Any]]]:
    """Start every analysis of ``job`` on ``checkpoint`` and run the shared pass over each input.

    Returns the tasks whose passes went well, ready to ``finish()``, by analysis name, and the failure
    rows of the others (a task that did not start, a consumer that raised: its analysis only).
    """
    tasks: dict[str, tuple[Analysis, Task]] = {}
    failures = []
    for spec in job.analyses:
        try:
            tasks[spec.name] = (spec, spec.start(checkpoint, job.inputs, job.options[spec.name], memo))
        except Exception as err:
            failures.append(failure_row(checkpoint, spec.name, err))
    for input_name in INPUT_FLAGS:
        owners = [(name, c) for name, (_, task) in tasks.items() for c in task.passes.get(input_name, ())]
        if owners:
            errors = run_pass(checkpoint, getattr(job.inputs, input_name), [c for _, c in owners], batch_size=job.batch_size,
                              progress=job.progress and interactive(), isolate=True)
            for index, err in errors.items():  # a consumer that raised fails its own analysis only
                name = owners[index][0]
                if tasks.pop(name, None) is not None:
                    failures.append(failure_row(checkpoint, name, err))
    return tasks, failures


def run_checkpoint(checkpoint: Checkpoint, job: Job, memo: Memo) -> Outcome:
    """Every analysis of ``job`` on one checkpoint: start, the shared passes, finish; each analysis's rows or failure."""
    tasks, failures = run_passes(checkpoint, job, memo)
    outcome = Outcome(failures=failures)
    for name, (_, task) in tasks.items():
        try:
            outcome.frames[name] = task.finish()
        except Exception as err:
            outcome.failures.append(failure_row(checkpoint, name, err))
    return outcome


def run_spec(spec: Any, job: Job, memo_root: str | None = None) -> Outcome:
    """:func:`run_checkpoint` in another process: rebuild the checkpoint from its
    :class:`~plastiscope.checkpoint.CheckpointSpec`, run, free it. Our warnings travel back in the outcome."""
    with quiet(job.verbose, emit=False) as notes:
        checkpoint = None
        try:
            checkpoint = spec.checkpoint()
            outcome = run_checkpoint(checkpoint, job, Memo(memo_root))
        except Exception as err:  # a broken checkpoint must not sink the sweep
            outcome = Outcome(failures=[failure_row(checkpoint if checkpoint is not None else spec, "*", err)])
        finally:
            if checkpoint is not None:
                checkpoint.unload()
    outcome.notes = list(notes.items)
    return outcome


class Executor(Protocol):
    """Where :func:`run_checkpoint` runs: :class:`InProcess`, :class:`ProcessPool`, :class:`plastiscope.distributed.Ray`."""

    name: str

    def check(self, sweep: Sweep) -> None:
        """Refuse, before any model loads, a sweep this executor cannot run (a clear ValueError)."""

    def run(self, work: Sequence[tuple[Checkpoint, Job]], memo_root: Path | None) -> Iterator[tuple[int, Outcome]]:
        """Run each ``(checkpoint, job)``; yield ``(its index in work, outcome)`` as each finishes."""


class InProcess:
    """Run the checkpoints here, one after the other; one :class:`~plastiscope.memo.Memo` serves the whole run."""

    name = "local"

    def check(self, sweep: Sweep) -> None:
        """Any sweep runs in this process (in-memory models included)."""

    def run(self, work: Sequence[tuple[Checkpoint, Job]], memo_root: Path | None) -> Iterator[tuple[int, Outcome]]:
        """Each checkpoint in turn: run, free, yield."""
        memo = Memo(memo_root)
        for index, (checkpoint, job) in enumerate(work):
            try:
                outcome = run_checkpoint(checkpoint, job, memo)
            except Exception as err:  # a broken checkpoint must not sink the sweep
                outcome = Outcome(failures=[failure_row(checkpoint, "*", err)])
            finally:
                checkpoint.unload()
            yield index, outcome


def specs_of(sweep: Sweep, executor: str) -> None:
    """Refuse in-memory checkpoints for an executor that rebuilds them in other processes."""
    in_memory = [c.name for c in sweep if c.path is None]
    if in_memory:
        raise ValueError(f"checkpoints {in_memory} are in memory; the {executor} executor rebuilds checkpoints from their "
                         f"folders (save_pretrained), or use the local executor")


@dataclass
class ProcessPool:
    """Run the checkpoints in ``workers`` local processes at once (spawned, each on ``threads`` torch threads),
    each rebuilt from its :class:`~plastiscope.checkpoint.CheckpointSpec`; memoised values are shared on disk."""

    workers: int = 2
    threads: int = 1
    name = "process"

    def check(self, sweep: Sweep) -> None:
        """Refuse a bad worker count, and in-memory checkpoints (they cannot travel to another process)."""
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"workers={self.workers!r}: processes at once must be an integer >= 1")
        specs_of(sweep, self.name)

    def run(self, work: Sequence[tuple[Checkpoint, Job]], memo_root: Path | None) -> Iterator[tuple[int, Outcome]]:
        """Submit every checkpoint's spec to the pool; yield outcomes as they finish."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        if not work:
            return
        root = str(memo_root) if memo_root is not None else None
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(self.workers, len(work)), mp_context=context, initializer=_set_threads,
                                 initargs=(self.threads,)) as pool:
            futures = {pool.submit(run_spec, checkpoint.spec(), job, root): i for i, (checkpoint, job) in enumerate(work)}
            for future in as_completed(futures):
                index = futures[future]
                try:
                    outcome = future.result()
                except Exception as err:  # the worker process died
                    outcome = Outcome(failures=[failure_row(work[index][0], "*", f"{type(err).__name__}: {err}")])
                yield index, outcome


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def executor_named(name: str | Executor | None, **options: Any) -> Executor:
    """An executor by name (``local``, ``process``, ``ray``) with its ``options``, or the executor given."""
    if name is None or name == "local":
        if options:
            raise ValueError(f"the local executor takes no options; got {sorted(options)}")
        return InProcess()
    if name not in ("process", "ray"):
        if isinstance(name, str):
            raise ValueError(f"executor {name!r}: choose local, process or ray")
        return name
    if name == "process":
        kind = ProcessPool
    else:
        from plastiscope.distributed import Ray as kind
    known = [f.name for f in dataclasses.fields(kind)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"executor {name!r}: unknown option(s) {unknown}; its options are {known}")
    return kind(**options)


def drive(
    sweep: Sweep | Checkpoint | Sequence[Checkpoint],
    job: Job,
    store: ResultsStore | None = None,
    executor: Executor | None = None,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run ``job`` on every checkpoint of ``sweep``; return ``(results, failures)``.

    Cached pieces come from ``store``; the rest runs on ``executor`` (default :class:`InProcess`) and
    each finished piece is stored as it arrives, so an interrupted run loses only the checkpoints in
    flight. Rows are in sweep order, whatever the executor. ``failures`` has one row per
    (checkpoint, analysis) that failed (``analysis`` ``"*"``: the whole checkpoint). Libraries' bars
    and warnings are silenced unless ``job.verbose`` (:func:`plastiscope.console.quiet`); each of our
    warnings is emitted once per run.
    """
    sweep = as_sweep(sweep)
    executor = executor or InProcess()
    executor.check(sweep)
    pieces: dict[tuple[int, str], pd.DataFrame] = {}
    failures: list[dict[str, Any]] = sweep.load_errors()
    with quiet(job.verbose, names=[c.name for c in sweep]) as notes, file_hashes(store) as hashes:
        keys = run_keys(job.analyses, job.options, job.inputs) if store is not None else {}
        work: list[tuple[int, Checkpoint, Job, str | None]] = []
        for position, checkpoint in enumerate(sweep):
            try:
                pending, content = cached(checkpoint, job.analyses, keys, store, pieces, position)
                hashes.save()
            except Exception as err:  # e.g. its files changed since the sweep was read
                failures.append(failure_row(checkpoint, "*", err))
                continue
            if pending:
                work.append((position, checkpoint, job.only(pending), content))
        bar = Progress(len(work), "checkpoints", enabled=progress)
        try:
            for index, outcome in executor.run([(c, j) for _, c, j, _ in work], store.cache / "memo" if store is not None else None):
                position, checkpoint, _, content = work[index]
                for name, frame in outcome.frames.items():
                    frame = stamp(frame, checkpoint)  # the identity as the driver knows it, whichever process ran it
                    if store is not None and content is not None:
                        store.put(name, content, cache_key(keys[name], checkpoint), frame, identity=identity(checkpoint))
                    pieces[position, name] = frame
                failures += outcome.failures
                notes.extend(outcome.notes)
                bar.update(checkpoint.name)
        finally:
            bar.close()
    order = {s.name: i for i, s in enumerate(job.analyses)}
    frames = [pieces[k] for k in sorted(pieces, key=lambda k: (k[0], order.get(k[1], len(order))))]
    results, failures = combine(frames, failures)
    attach(results, declarations(job.analyses))  # the same record on every analysis's frame, so pd.concat keeps it
    return results, failures


def run_analyses(
    sweep: Sweep | Checkpoint | Sequence[Checkpoint],
    analyses: Sequence[str | Analysis],
    inputs: Inputs,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    store: ResultsStore | None = None,
    batch_size: int = 16,
    progress: bool = True,
    executor: str | Executor | None = None,
    verbose: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run ``analyses`` on every checkpoint; return ``(results, failures)``: :func:`plan`, then :func:`drive`.

    ``options[name]`` overrides the defaults of analysis ``name``. ``failures`` has one row
    per (checkpoint, analysis) that raised, with the error message; the other results are
    kept (and cached in ``store``, if given). ``executor``: ``"local"`` (default), ``"process"``,
    ``"ray"`` or an executor object.
    """
    job = plan(analyses, inputs, options, batch_size, progress, verbose)
    return drive(sweep, job, store, executor_named(executor), progress)


def check_batch_size(batch_size: int) -> None:
    """Refuse a batch size below 1 (or not an integer)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: documents per forward pass must be an integer >= 1 (--batch-size)")


@contextlib.contextmanager
def file_hashes(store: ResultsStore | None) -> Iterator[FileHashes]:
    """File digests kept in ``store`` (``cache/file-hashes.json``) for the block; in memory without a store."""
    hashes = FileHashes(store.cache / "file-hashes.json" if store is not None else None)
    with using_file_hashes(hashes):
        yield hashes


def run_one(
    sweep: Sweep | Checkpoint | Sequence[Checkpoint],
    analysis: Analysis,
    inputs: Inputs,
    options: Mapping[str, Any],
    store: ResultsStore | str | Path | None = None,
    batch_size: int = 16,
    progress: bool = True,
    executor: str | Executor | None = None,
    check: Callable[[dict[str, Any]], Any] | None = None,
) -> pd.DataFrame:
    """One analysis over a sweep, for the notebook functions (``probes``, ``attention``, ...), on ``executor``
    (:func:`executor_named`; default in this process). ``options`` are validated once by the analysis's
    table; ``check``, if given, is called with the validated options before any model loads (a check
    against the documents, say).

    Checkpoints that fail are reported by a warning (and kept as records in ``frame.attrs["failures"]``);
    if every checkpoint fails, the errors are raised.
    """
    if store is not None and not isinstance(store, ResultsStore):
        store = ResultsStore(store)
    job = plan([analysis], inputs, {analysis.name: options}, batch_size, progress)
    if check is not None:
        check(job.options[analysis.name])
    results, failures = drive(sweep, job, store, executor_named(executor), progress)
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


def run_key(spec: Analysis, config: Mapping[str, Any], inputs: Inputs) -> dict[str, Any]:
    """The part of a cache key shared by every checkpoint of a run: options, data, fingerprint, version."""
    from plastiscope import __version__

    key = {
        "options": dict(config),
        "data": inputs.hashes(spec.inputs + spec.optional_inputs),
        "version": __version__,
    }
    if spec.fingerprint is not None:
        key["fingerprint"] = spec.fingerprint(dict(config))
    return key


def run_keys(specs: Sequence[Analysis], configs: Mapping[str, Mapping[str, Any]], inputs: Inputs) -> dict[str, dict[str, Any]]:
    """:func:`run_key` of each analysis, computed once per run (a bad fingerprint fails here, before any model loads)."""
    return {s.name: run_key(s, configs[s.name], inputs) for s in specs}


def cache_key(key: Mapping[str, Any], checkpoint: Checkpoint) -> dict[str, Any]:
    """A piece's cache key: the run's ``key`` (:func:`run_key`) with the checkpoint's dtype and device class."""
    return {**key, "dtype": str(checkpoint.dtype), "device": checkpoint.device_type}


def cached(
    checkpoint: Checkpoint,
    specs: Sequence[Analysis],
    keys: Mapping[str, Mapping[str, Any]],
    store: ResultsStore | None,
    pieces: dict[tuple[int, str], pd.DataFrame],
    position: int = 0,
) -> tuple[list[Analysis], str | None]:
    """Put the cached pieces of ``checkpoint`` into ``pieces`` (under ``(position, analysis)``); return the
    analyses still to run and the checkpoint's content hash (None without a store)."""
    if store is None:
        return list(specs), None
    pending = []
    content = checkpoint.content_hash()
    store.note(checkpoint, content)
    for spec in specs:
        piece = store.get(spec.name, content, cache_key(keys[spec.name], checkpoint))
        if piece is None:
            pending.append(spec)
        else:
            pieces[position, spec.name] = stamp(piece, checkpoint)  # names and hyperparameters as they are now
    return pending, content


def failure_row(checkpoint: Checkpoint | Any, analysis: str, err: BaseException | str) -> dict[str, Any]:
    """One row of ``failures`` (which checkpoint, where, which analysis, what went wrong), logged as an error;
    ``checkpoint`` may be a :class:`~plastiscope.checkpoint.CheckpointSpec` (one that could not be rebuilt)."""
    if isinstance(err, BaseException):
        log.debug("".join(traceback.format_exception(err)))
        err = f"{type(err).__name__}: {err}"
    log.error("%s / %s: %s", checkpoint.name, analysis, err, extra={"failure": True})
    path = str(checkpoint.path) if getattr(checkpoint, "path", None) else "<in memory>"
    return {"checkpoint": checkpoint.name, "path": path, "analysis": analysis, "error": err}
