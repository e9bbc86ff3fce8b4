"""The embedded demo: what the demo needs and the library does not.

A corpus (:mod:`.corpus`, WordNet 3.0 glosses), a tokenizer trainer (:mod:`.tokenizer`) and a
sweep trainer (:mod:`.sweep`) build a small weight-decay sweep from nothing; :func:`run_demo`
trains it (or reuses it), analyses it with every analysis and writes the report.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any


def run_demo(
    out: str | Path, quick: bool = False, progress: bool = True, config: Any = None, n_docs: int | None = None
) -> Path:
    """Train (or reuse) the embedded sweep, analyze it with every analysis, write the report.

    Returns the report's path. ``quick`` trains smaller models for fewer steps, for tests and a
    first look; ``config`` (a :class:`~plastiscope.demo.sweep.TrainConfig`) and ``n_docs``
    override both. Runs on one torch thread: models this small gain little from intra-op threads
    and lose much when the cores are shared.
    """
    import torch

    from plastiscope.demo.corpus import load_corpus
    from plastiscope.demo.sweep import QUICK, TrainConfig, train_sweep
    from plastiscope.pipeline import analyze
    from plastiscope.reports import write_report
    from plastiscope.runner import Inputs, available_analyses

    torch.set_num_threads(1)
    out = Path(out)
    config = config or (TrainConfig(**QUICK) if quick else TrainConfig())
    manifest = train_sweep(out / "sweep", config, progress=progress)
    n_docs = n_docs or (300 if quick else 1000)
    inputs = Inputs(
        data=load_corpus("probe", n_docs),
        # the documents the models were trained on, and unseen ones of the same kind
        train_data=load_corpus("train", config.train_docs).head(n_docs),
        val_data=load_corpus("validation", config.val_docs + n_docs).subset(range(config.val_docs, config.val_docs + n_docs)),
        # a domain held out of pretraining (food, plant and weather glosses), labelled by topic
        finetune_data=load_corpus("finetune"),
    )
    # exact memorization: glosses are short (about 20 tokens), so an 8-token prefix and continuation
    options = {"probes": {"label_column": "pos"}, "overfit": {"prefix_tokens": 8, "continuation_tokens": 8},
               "plasticity": {"label_column": "topic"}}
    analyze(manifest, out / "results", available_analyses(), inputs, options, progress=progress,
            config={"demo": True, "quick": quick, "train": asdict(config)})
    return Path(write_report(out / "results", out / "report.html"))
