"""Curvature of a model's loss (``gradoctor curvature``): Hessian eigenvalues, trace, spectral
density and per-layer blocks from Hessian-vector products, plus optimizer stability thresholds.
(The package is ``hessian`` so that the API function ``gradoctor.curvature`` never shadows it;
``recipe_curvature.py`` holds that function, which runs this on a recipe.)

``hessian_spectrum(model, loss_fn, batches, ...) -> CurvatureResult``;
``stability_threshold(optimizer) -> Stability``; ``adam_preconditioner(optimizer, model)``
gives the diagonal to measure Adam's preconditioned sharpness with
``hessian_spectrum(..., preconditioner=d)``. Across processes, ``hessian_spectrum(...,
process_group=torch.distributed.group.WORLD)`` takes each rank's own batches and all-reduces
every HVP (``ranks.py``).
"""

from gradoctor.hessian.api import hessian_spectrum
from gradoctor.hessian.result import CurvatureResult, Density, LayerCurvature, TraceEstimate
from gradoctor.hessian.stability import Stability, adam_preconditioner, stability_threshold

__all__ = [
    "CurvatureResult",
    "Density",
    "LayerCurvature",
    "Stability",
    "TraceEstimate",
    "adam_preconditioner",
    "hessian_spectrum",
    "stability_threshold",
]
