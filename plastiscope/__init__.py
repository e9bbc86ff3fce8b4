"""plastiscope: measure the mechanisms of language-model plasticity across weight-decay sweeps.

Han, Bordt, Zhang, Kakade (2026), "Weight Decay Improves Language Model Plasticity",
arXiv 2602.11137: larger weight decay can give a worse base model that fine-tunes better,
through more linearly separable representations, regularized attention and less overfitting.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is fetched from a hub at run time
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from plastiscope.checkpoint import Checkpoint, CheckpointError, Sweep  # noqa: E402
from plastiscope.data import DataError, Documents, load_documents  # noqa: E402
from plastiscope.results import load_results  # noqa: E402

__all__ = ["Checkpoint", "CheckpointError", "Sweep", "Documents", "DataError", "load_documents", "load_results"]
__version__ = "0.1.0"
