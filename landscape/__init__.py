"""landscape: sharpness and basin size of the pretraining loss at a checkpoint (analysis ``"landscape"``).

Flatter minima and wider basins are the usual explanations of why some checkpoints adapt
better. :data:`ANALYSIS` measures the Hessian's extreme eigenvalues and trace (:mod:`.hessian`)
and the loss along random directions (:mod:`.basin`) on a fixed batch of training documents;
see :mod:`.analysis` for the metrics.
"""

from .analysis import ANALYSIS, OPTIONS, LandscapeTask, batch_loss_fn, eigenvalue_records, fixed_batch
from .basin import basin_radius, filter_normalized_direction, loss_curve, restored
from .hessian import dominant_eigenvalue, eigenvalue_extremes, hutchinson_samples, hvp_operator, top_eigenvalue

__all__ = [
    "ANALYSIS",
    "OPTIONS",
    "LandscapeTask",
    "basin_radius",
    "batch_loss_fn",
    "dominant_eigenvalue",
    "eigenvalue_extremes",
    "eigenvalue_records",
    "filter_normalized_direction",
    "fixed_batch",
    "hutchinson_samples",
    "hvp_operator",
    "loss_curve",
    "restored",
    "top_eigenvalue",
]
