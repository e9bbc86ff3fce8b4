"""plastiscope: measure the mechanisms of language-model plasticity across hyperparameter sweeps.

Han, Bordt, Zhang, Kakade (2026), "Weight Decay Improves Language Model Plasticity",
arXiv 2602.11137: larger weight decay can give a worse base model that fine-tunes better,
through more linearly separable representations, regularized attention and less overfitting.

    >>> import plastiscope
    >>> results, failures = plastiscope.analyze("sweep/manifest.csv", "results", data="probe.jsonl", label_column="pos")
    >>> plastiscope.report("results", "report.html")

``analyze`` runs the analyses into a results folder, ``report`` writes its HTML report;
``Sweep`` and ``Checkpoint`` describe checkpoints, ``load_documents`` and ``Inputs`` the
documents, ``load_results`` reads a results folder. Each analysis package has a notebook
function named like it (``plastiscope.probes.probes``, ``plastiscope.overfit.overfit``, ...).
"""

import importlib

# name -> module it lives in; imported on first use, so that light parts (results, reports) don't pay for torch
_EXPORTS = {
    "analyze": "plastiscope.pipeline",
    "report": "plastiscope.pipeline",
    "Inputs": "plastiscope.runner",
    "load_documents": "plastiscope.data",
    "load_results": "plastiscope.results",
    "Sweep": "plastiscope.sweep",
    "Checkpoint": "plastiscope.checkpoint",
    "CheckpointError": "plastiscope.checkpoint",
    "Documents": "plastiscope.data",
    "DataError": "plastiscope.data",
}
__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """The public names of :data:`__all__`, imported from their module on first use."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'plastiscope' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names (what ``dir(plastiscope)`` and tab completion offer), though not imported yet."""
    return sorted(set(__all__) | {"__version__"})
