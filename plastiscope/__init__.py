"""plastiscope: measure the mechanisms of language-model plasticity across hyperparameter sweeps.

Han, Bordt, Zhang, Kakade (2026), "Weight Decay Improves Language Model Plasticity",
arXiv 2602.11137: larger weight decay can give a worse base model that fine-tunes better,
through more linearly separable representations, regularized attention and less overfitting.
"""

import importlib

# Imported on first use, so that light parts (results, reports) don't pay for torch.
_EXPORTS = {
    "Checkpoint": "plastiscope.checkpoint",
    "CheckpointError": "plastiscope.checkpoint",
    "Sweep": "plastiscope.sweep",
    "Documents": "plastiscope.data",
    "DataError": "plastiscope.data",
    "load_documents": "plastiscope.data",
    "load_results": "plastiscope.results",
}
__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'plastiscope' has no attribute {name!r}")
