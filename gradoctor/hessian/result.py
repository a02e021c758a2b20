"""What ``gradoctor curvature`` returns: typed results with ``to_dict()`` (JSON-safe).

Eigenvalues and traces are in units of the loss per parameter² (the loss's own units, since
parameters are dimensionless numbers); ``hvps`` counts Hessian-vector products, each one a full
pass of forward + double derivative over every batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class TraceEstimate:
    """A trace estimate. ``stderr`` is the standard error of ``estimate`` (0 when exact);
    ``samples`` the number of Hutchinson probes behind it (n when exact)."""

    estimate: float
    stderr: float
    samples: int
    method: str  # "hutch++" | "exact"
    hvps: int = 0  # what it cost (not serialized: the result's ``hvps`` counts them all)

    def to_dict(self) -> dict[str, Any]:
        return {
            "estimate": self.estimate,
            "stderr": self.stderr,
            "samples": self.samples,
            "method": self.method,
        }


@dataclass
class Density:
    """Spectral density from stochastic Lanczos quadrature, Gaussian-broadened onto ``grid``.

    ``values`` integrates to ~1 over ``grid`` (a probability density over eigenvalues).
    ``nodes``/``weights`` are the raw quadrature (probes × steps Ritz values and their weights,
    weights summing to 1); they are kept for analysis and not serialized.
    """

    grid: np.ndarray  # [G] eigenvalue axis
    values: np.ndarray  # [G] density at each grid point
    lanczos_steps: int
    probes: int
    sigma: float  # Gaussian broadening (standard deviation), eigenvalue units
    nodes: np.ndarray = field(repr=False)  # [N] Ritz values
    weights: np.ndarray = field(repr=False)  # [N] quadrature weights (sum 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "grid": [float(x) for x in self.grid],
            "values": [float(x) for x in self.values],
            "lanczos_steps": self.lanczos_steps,
            "probes": self.probes,
        }


@dataclass
class LayerCurvature:
    """The diagonal block of H belonging to one module's own parameters."""

    eigenvalue: float  # largest algebraic eigenvalue of the block
    trace: float
    params: int  # block size
    trace_stderr: float = 0.0  # 0 when exact (not serialized; the contract has 3 keys)

    def to_dict(self) -> dict[str, Any]:
        return {"eigenvalue": self.eigenvalue, "trace": self.trace, "params": self.params}


@dataclass
class CurvatureResult:
    """The Hessian of the mean loss over the batches, w.r.t. every trainable parameter.

    ``eigenvalues`` descend (λ1 ≥ λ2 ≥ …); ``residuals[i]`` is ‖Hv−λv‖/|λ| of pair i, measured
    with one extra HVP each. ``eigenvectors`` ([P, k] float64, CPU, unit columns in the same
    order, of the preconditioned operator when one was given) are kept for warm starts and not
    serialized. ``stability`` is filled by the caller (see ``stability.py``).
    """

    eigenvalues: list[float]
    residuals: list[float]
    hvps: int
    hvp_method: str
    fallback: str | None
    batches: int
    parameters: int
    precision: str
    method: str = "lanczos (scipy eigsh)"  # or "lanczos (full reorthogonalisation, m steps)"
    trace: TraceEstimate | None = None
    density: Density | None = None
    per_layer: dict[str, LayerCurvature] | None = None
    stability: Any = None  # a Stability (stability.py) or a dict, set by the caller
    notes: list[str] = field(default_factory=list)
    eigenvectors: torch.Tensor | None = field(default=None, repr=False, compare=False)
    rayleigh: dict[str, float] | None = None  # ``hessian_spectrum(rayleigh=...)``; not serialized
    recipe: str | None = None  # set by ``gradoctor curvature`` (the recipe's name)
    device: str | None = None
    seconds: float | None = None  # wall time of the whole measurement

    def to_dict(self) -> dict[str, Any]:
        stability = self.stability
        if stability is not None and hasattr(stability, "to_dict"):
            stability = stability.to_dict()
        return {
            "eigenvalues": [float(x) for x in self.eigenvalues],
            "residuals": [float(x) for x in self.residuals],
            "hvps": int(self.hvps),
            "method": self.method,
            "hvp_method": self.hvp_method,
            "fallback": self.fallback,
            "trace": None if self.trace is None else self.trace.to_dict(),
            "density": None if self.density is None else self.density.to_dict(),
            "per_layer": None
            if self.per_layer is None
            else {name: layer.to_dict() for name, layer in self.per_layer.items()},
            "batches": int(self.batches),
            "parameters": int(self.parameters),
            "precision": self.precision,
            "stability": stability,
            "notes": list(self.notes),
            "recipe": self.recipe,
            "device": self.device,
            "seconds": self.seconds,
        }
