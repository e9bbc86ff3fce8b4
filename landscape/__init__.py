"""landscape: sharpness and basins of a checkpoint's loss and downstream accuracy (analysis ``"landscape"``).

Flatter minima and wider basins are the usual explanations of why some checkpoints adapt
better. :data:`ANALYSIS` measures the Hessian's extreme eigenvalues and trace, raw and
scale-invariant (adaptive), by Lanczos and Hutchinson on Hessian-vector products that share
their gradient graphs (:mod:`.hessian`), and basins under Gaussian weight noise along random and worst-case directions
(:mod:`.basin`); see :mod:`.analysis` for the metrics.
"""

from .analysis import (
    ANALYSIS,
    OPTIONS,
    VARIANTS,
    LandscapeTask,
    fixed_batch,
    landscape,
    loss_pieces,
    micro_batches,
    rank_loss_pieces,
    start,
)
from .basin import (
    basin_sigma,
    bisected_random_curves,
    drops,
    first_beyond,
    gaussian_direction,
    perturbed_scores,
    restored,
    worst_case_near_edge,
    worst_case_scores,
    worst_so_far,
)
from .hessian import (
    Extremes,
    Lanczos,
    Sharpness,
    adaptive_operator,
    hutchinson_samples,
    hvp_operator,
    hvp_products,
    lanczos_extremes,
    sharpness,
)

__all__ = [
    "ANALYSIS",
    "OPTIONS",
    "VARIANTS",
    "Extremes",
    "Lanczos",
    "LandscapeTask",
    "Sharpness",
    "adaptive_operator",
    "basin_sigma",
    "bisected_random_curves",
    "drops",
    "first_beyond",
    "fixed_batch",
    "gaussian_direction",
    "hutchinson_samples",
    "hvp_operator",
    "hvp_products",
    "rank_loss_pieces",
    "lanczos_extremes",
    "landscape",
    "loss_pieces",
    "micro_batches",
    "perturbed_scores",
    "restored",
    "sharpness",
    "start",
    "worst_case_near_edge",
    "worst_case_scores",
    "worst_so_far",
]
