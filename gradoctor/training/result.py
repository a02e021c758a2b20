"""The result of a run: the same content as ``report.json``."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradoctor.recipe.schema import Recipe
from gradoctor.training.history import History, clean
from gradoctor.version import __version__


@dataclass
class TrainResult:
    """What ``gradoctor.train`` returns and ``report.json`` holds.

    The first keys are a contract other tools rely on: ``steps_completed``, ``final_loss``,
    ``skipped_steps``, ``loss_scale``, ``grad_norms`` (per module: last, max, median),
    ``memory`` (bytes), ``diagnoses``, ``recipe``, ``device``, ``precision``, ``duration_s``.
    Non-finite floats are written as the strings "nan", "inf", "-inf".
    """

    steps_completed: int
    final_loss: float | None
    skipped_steps: list[int]
    loss_scale: float | None
    grad_norms: dict[str, dict[str, Any]]
    memory: dict[str, Any]
    diagnoses: list[dict[str, Any]]
    recipe: dict[str, Any]
    device: str
    precision: str
    duration_s: float
    status: str = (
        "completed"  # completed | stopped (non-finite, on_nonfinite: stop) | interrupted | failed
    )
    error: str | None = None
    output_dir: str | None = None
    start_step: int = 0  # > 0 for a resumed run
    grad_norm_total: dict[str, Any] = field(default_factory=dict)
    update_ratios: dict[str, float] = field(default_factory=dict)  # per module, last log step
    overflow: list[dict[str, Any]] = field(default_factory=list)  # per skipped step: scale, params
    nonfinite: list[dict[str, Any]] = field(default_factory=list)  # replays of bad steps
    throughput: dict[str, Any] = field(default_factory=dict)
    history: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    distributed: dict[str, Any] | None = None  # world size, per-rank memory, first non-finite rank
    model: Any = field(default=None, repr=False, compare=False)  # the trained model (not in JSON)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}
        return clean(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainResult:
        names = {f.name for f in fields(cls)} - {"model"}
        return cls(**{k: v for k, v in data.items() if k in names})


def build_result(
    h: History,
    *,
    status: str,
    error: str | None,
    duration: float,
    steps_completed: int,
    start_step: int,
    fp16: bool,
    memory: dict[str, Any],
    recipe: Recipe,
    device: torch.device,
    out_dir: Path,
    nonfinite: list[dict[str, Any]],
    distributed: dict[str, Any] | None,
    model: torch.nn.Module | None,
) -> TrainResult:
    """The run's result from its history (host-side; diagnoses are added by the caller)."""
    skipped = set(h.skipped_steps)
    totals = [
        v for v, s in zip(h.grad_norm_total, h.steps) if s not in skipped and math.isfinite(v)
    ]
    mean_step = float(np.mean(h.step_time_s[1:] or h.step_time_s)) if h.step_time_s else None
    return TrainResult(
        steps_completed=max(steps_completed, h.steps[-1] if h.steps else 0),
        final_loss=h.loss[-1] if h.loss else None,
        skipped_steps=list(h.skipped_steps),
        loss_scale=h.loss_scale[-1] if h.loss_scale and fp16 else None,
        grad_norms=h.grad_norm_summary(),
        memory=memory,
        diagnoses=[],
        recipe=recipe.to_dict(),
        device=str(device),
        precision=recipe.precision,
        duration_s=duration,
        status=status,
        error=error,
        output_dir=str(out_dir),
        start_step=start_step,
        grad_norm_total={
            "last": h.grad_norm_total[-1] if h.grad_norm_total else None,
            "max": max(totals) if totals else None,
            "median": float(np.median(totals)) if totals else None,
        },
        update_ratios={k: v[-1] for k, v in h.update_ratio.items()},
        overflow=list(h.overflow),
        nonfinite=list(nonfinite),
        throughput={
            "step_s": mean_step,
            "samples_per_s": float(np.mean(h.samples_per_s[1:] or h.samples_per_s))
            if h.samples_per_s
            else None,
        },
        history=h.to_dict(),
        versions={"gradoctor": __version__, "torch": torch.__version__},
        distributed=distributed,
        model=model,
    )


__all__ = ["TrainResult", "asdict", "build_result"]
