"""The embedded demo: what the demo needs and the library does not.

A corpus (:mod:`.corpus`, WordNet 3.0 glosses), a tokenizer trainer (:mod:`.tokenizer`) and a
sweep trainer (:mod:`.sweep`) build a small weight-decay sweep with replicate seeds from
nothing; :func:`run_demo` trains it (or reuses it), analyses it with every analysis and writes
the report.

The sweep: AdamW with cosine decay, as Han et al. 2026 (arXiv 2602.11137) train, but
data-constrained, the regime where overfitting is real and their third mechanism applies, at a
size two CPU cores train in minutes: weight decays 0, 0.1, 0.3 and 1 x seeds 0 and 1 of a
Llama-style model of 77,640 parameters (2 layers, width 40, a 512-token BPE vocabulary; 36,680
without the embeddings), 700 steps of 64 glosses drawn from 1,500 training glosses: about 1.6M
tokens, 20 per parameter, each gloss seen about 30 times; peak learning rate 1e-2, cosine to a
tenth. ``quick``: weight decays 0, 0.1 and 1 x 2 seeds of 57,504 parameters, 300 steps of 32
glosses from 640 (15 epochs).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

# Analysis options of the demo. Documents: ``n_docs`` of each input (probe, train, validation).
# Fine-tuning (the outcome): the held-out domain, labelled by topic, with a budget large enough
# for the models to adapt. Glosses are short (about 35 tokens under the demo's tokenizer), so
# exact memorization tests a 16-token prefix and an 8-token continuation.
ANALYSIS_OPTIONS = {
    "probes": {"label_column": "pos"},
    "overfit": {"prefix_tokens": 16, "continuation_tokens": 8},
    "plasticity": {"label_column": "topic", "steps": 100, "train_docs": 2048, "select_docs": 128, "eval_docs": 512},
}
QUICK_ANALYSIS_OPTIONS = {
    "probes": {"label_column": "pos", "mdl": False},
    "overfit": {"prefix_tokens": 16, "continuation_tokens": 8, "memorization_max_docs": 128},
    "plasticity": {"label_column": "topic", "steps": 40, "train_docs": 640, "select_docs": 64, "eval_docs": 256},
    "landscape": {"lanczos_steps": 10, "trace_probes": 4, "n_directions": 2, "worst_case_steps": 1},
}
N_DOCS = 1000
QUICK_N_DOCS = 300


def run_demo(
    out: str | Path,
    quick: bool = False,
    progress: bool = True,
    config: Any = None,
    n_docs: int | None = None,
    workers: int = 2,
    options: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Train (or reuse) the embedded sweep, analyze it with every analysis, write the report.

    Returns the report's path. ``quick`` trains smaller models on less data and analyses
    fewer documents, for tests and a first look; ``config`` (a
    :class:`~plastiscope.demo.sweep.TrainConfig`), ``n_docs`` and ``options`` (per analysis,
    merged over the demo's) override either. Training runs ``workers`` runs at once, each in
    its own process; everything runs on one torch thread per process: models this small gain
    little from intra-op threads and lose much when the cores are shared. With ``workers > 1``
    the analyses also run in that many processes, one checkpoint per task (the driver's
    :class:`~plastiscope.runner.ProcessPool` executor). ``demo.json`` in
    ``out`` records the sweep's scale and the seconds each part took.
    """
    import torch

    from plastiscope.console import interactive
    from plastiscope.demo.corpus import load_corpus
    from plastiscope.demo.sweep import DEMO, QUICK, TrainConfig, scale, train_sweep
    from plastiscope.pipeline import analyze
    from plastiscope.reports import write_report
    from plastiscope.runner import Inputs, available_analyses

    torch.set_num_threads(1)
    out = Path(out)
    config = config or TrainConfig(**(QUICK if quick else DEMO))
    n_docs = n_docs or (QUICK_N_DOCS if quick else N_DOCS)
    demo_options, options = (QUICK_ANALYSIS_OPTIONS if quick else ANALYSIS_OPTIONS), options or {}
    options = {name: {**demo_options.get(name, {}), **options.get(name, {})} for name in {**demo_options, **options}}
    seconds: dict[str, float] = {}
    cpu_seconds: dict[str, float] = {}

    def timed(part: str, work: Any) -> Any:
        clock, cpu = time.time(), cpu_time()
        value = work()
        seconds[part], cpu_seconds[part] = time.time() - clock, cpu_time() - cpu
        return value

    bars = progress and interactive()  # training bars on a terminal or in a notebook; a log gets no escape codes
    manifest = timed("train", lambda: train_sweep(out / "sweep", config, progress=bars, workers=workers))
    sizes = scale(manifest)
    n_train = config.train_docs or config.steps * config.batch_size
    inputs = Inputs(
        data=load_corpus("probe", n_docs),
        # documents every model was trained on (the first of its training set), and unseen ones of the same kind
        train_data=load_corpus("train", min(n_docs, n_train)),
        val_data=load_corpus("validation", config.val_docs + n_docs).subset(range(config.val_docs, config.val_docs + n_docs)),
        # a domain held out of pretraining (food, plant and weather glosses), labelled by topic
        finetune_data=load_corpus("finetune"),
    )
    names = available_analyses()

    def analyze_all() -> None:
        parallel = {"executor": "process", "executor_options": {"workers": workers}} if workers > 1 else {}
        analyze(manifest, out / "results", names, inputs, options, progress=progress,
                about={"demo": True, "quick": quick, "train": asdict(config), "scale": sizes, "note": regime_note(config, sizes)},
                **parallel)

    timed("analyze", analyze_all)
    report = timed("report", lambda: Path(write_report(out / "results", out / "report.html")))
    record = {"scale": sizes, "seconds": {k: round(v, 1) for k, v in seconds.items()},
              "cpu_seconds": {k: round(v, 1) for k, v in cpu_seconds.items()}, "workers": workers,
              "train": asdict(config), "n_docs": n_docs, "options": options}
    (out / "demo.json").write_text(json.dumps(record, indent=1))
    if progress:
        print(f"seconds: {', '.join(f'{k} {v:.0f}' for k, v in seconds.items())}", file=sys.stderr)
    return report


def regime_note(config: Any, sizes: dict[str, Any]) -> str:
    """What the demo's sweep is and why, for the report's summary."""
    regime = (f"data-constrained, {config.train_docs:,} training glosses seen about {sizes['epochs']:.0f} times each, the regime "
              f"where overfitting is real and weight decay can order the outcome at this size" if config.train_docs
              else "one epoch")
    return (f"The embedded demo: Llama-style models of {sizes['parameters']:,} parameters pretrained on WordNet glosses at weight "
            f"decays {', '.join(f'{w:g}' for w in config.weight_decays)} x {len(config.seeds)} seeds, {regime}; the outcome is "
            f"fine-tuning on a held-out domain. A demonstration of the method at a size two CPU cores train, not evidence for "
            f"the paper at scale.")


def fill_cache(
    manifest: Path, results: Path, analyses: list[str], inputs: Any, options: dict, workers: int, progress: bool = True
) -> None:
    """Analyse the sweep in ``workers`` processes at once, one checkpoint per task, into the results cache of
    ``results`` (the driver with the :class:`~plastiscope.runner.ProcessPool` executor); a failed piece is not
    cached, so a later ``analyze`` tries it again and reports it."""
    from plastiscope.results import ResultsStore
    from plastiscope.runner import ProcessPool, run_analyses
    from plastiscope.sweep import Sweep

    run_analyses(Sweep.from_manifest(manifest), analyses, inputs, options, ResultsStore(results), progress=progress,
                 executor=ProcessPool(workers))


def cpu_time() -> float:
    """CPU seconds of this process and its finished children (training workers): on a quiet machine,
    about the wall time one core needs."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
