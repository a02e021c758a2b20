"""``ReproResult``: what ``gradoctor repro`` found (``to_dict()`` is the JSON contract)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gradoctor.reproducibility.compare import Divergence


@dataclass
class DeterministicCheck:
    """The re-run under ``torch.use_deterministic_algorithms(True)``. ``reproducible``: the
    two deterministic-mode runs were bitwise identical; ``time_ratio``: the median plain step
    time in deterministic mode over the ordinary one, measured side by side in one process
    (``worker.deterministic_cost``); ``error``: what
    deterministic mode raised (an op with no deterministic implementation), if it did;
    ``first_divergence``: where the deterministic-mode runs still differ."""

    reproducible: bool
    time_ratio: float | None
    error: str | None = None
    first_divergence: Divergence | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "reproducible": self.reproducible,
            "time_ratio": self.time_ratio,
            "error": self.error,
            "first_divergence": (
                self.first_divergence.to_dict() if self.first_divergence is not None else None
            ),
        }


@dataclass
class ReproResult:
    """``reproducible``: the two runs' op streams are bitwise identical over ``steps``
    optimizer steps. ``first_divergence``: the root of the first difference (None when
    reproducible). ``deterministic_mode``: the deterministic-mode re-run (None when the runs
    were reproducible, or when it was not asked for). ``ops``: records per run (ops, batch
    tensors and initial tensors); ``step_seconds``: median recorded step time of each run;
    ``seconds``: wall time of the whole check."""

    reproducible: bool
    steps: int
    first_divergence: Divergence | None
    deterministic_mode: DeterministicCheck | None
    recipe: str
    device: str
    ops: list[int] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "reproducible": self.reproducible,
            "steps": self.steps,
            "first_divergence": (
                self.first_divergence.to_dict() if self.first_divergence is not None else None
            ),
            "deterministic_mode": (
                self.deterministic_mode.to_dict() if self.deterministic_mode is not None else None
            ),
            "recipe": self.recipe,
            "device": self.device,
            "ops": self.ops,
            "step_seconds": self.step_seconds,
            "seconds": self.seconds,
        }


__all__ = ["DeterministicCheck", "ReproResult"]
