"""What ``gradoctor memory-profile`` returns: typed results with ``to_dict()`` (JSON-safe).

Every size is in bytes, every share a fraction of the peak (0..1), FLOPs are counts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Category:
    """One slice of the peak: ``bytes`` alive at the peak and its ``share`` of the peak."""

    name: str  # parameters | gradients | optimizer_state | activations | temporaries |
    #            autocast_weights | rest
    bytes: int
    share: float


@dataclass
class ModuleMemory:
    """One module (first micro-batch). ``saved`` counts storages saved by ops running directly in
    it, ``saved_total`` anywhere inside it (each storage once, parameters excluded)."""

    name: str  # qualified name ("" is the whole model)
    type: str  # class name
    saved: int
    saved_total: int
    checkpoint_saves: int  # bytes freed between forward and backward if checkpointed
    recompute_spike: int  # bytes its recomputation allocates at once in backward
    recompute_flops: int  # its forward FLOPs (what checkpointing it recomputes)
    forward_time_share: float  # its inclusive forward time / the whole forward's
    calls: int = 1


@dataclass
class PeakInfo:
    """When a step's peak happens and what is alive then."""

    step: str  # "first" (optimizer state created) | "steady"
    bytes: int
    phase: str  # forward | backward | optimizer
    micro_batch: int
    module: str | None  # innermost module running at the peak (forward only)
    alive: list[dict[str, Any]] = field(default_factory=list)  # largest live storages


@dataclass
class WhatIf:
    """Predicted steady-state peak of one configuration."""

    precision: str
    checkpoint: str  # off | recipe | plan
    modules: list[str]
    batch_size: int
    predicted_peak: int
    peak_phase: str
    fits: bool | None  # under the budget (None without one)
    measured: bool  # whether the configuration itself was measured for the model (not a check)


@dataclass
class SelfCheck:
    """Predicted vs measured peak of one configuration actually run."""

    precision: str
    checkpoint: str
    batch_size: int
    predicted: int
    measured: int | None
    error_pct: float | None  # 100 * (predicted - measured) / measured
    status: str  # ok | over_tolerance (|error_pct| > tolerance_pct) | oom | skipped (predicted
    #              not to fit the device) | failed: <why>
    tolerance_pct: float | None = None  # the largest |error_pct| reported as ok


@dataclass
class CheckpointPlan:
    """The cheapest checkpoint set that fits the budget at the recipe's precision and batch."""

    budget: int | None
    budget_source: str  # --budget | device | none (then the plan halves the activation memory)
    modules: list[str]
    recipe_names: list[str]  # modules as train.checkpoint entries (a class name when all match)
    recipe_lines: str  # ready to paste into a recipe
    predicted_peak: int
    recompute_flops: int
    recompute_share: float  # recompute FLOPs / FLOPs of a training step (~3x forward)
    fits: bool
    max_batch_size: dict[str, dict[str, int | None]]  # precision -> {off, plan} -> size
    smallest: dict[str, Any] | None = None  # when nothing fits: the smallest configuration


@dataclass
class MemoryProfile:
    """The result of :func:`gradoctor.memory_profile`."""

    recipe: str
    device: str
    method: str  # cuda_allocator | tracked_tensors
    precision: str
    batch_size: int  # the recipe's micro-batch size
    accum_steps: int
    batch_sizes_measured: list[int]
    peak: int  # steady-state peak of the recipe's configuration without checkpointing
    breakdown: list[Category]
    first_step: PeakInfo
    steady: PeakInfo
    modules: list[ModuleMemory]
    what_if: list[WhatIf]
    plan: CheckpointPlan
    checks: list[SelfCheck]
    cost: dict[str, float]  # seconds, steps measured, step-equivalents
    notes: list[str] = field(default_factory=list)
    snapshot: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
