"""The result of a run: the same content as ``report.json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from gradoctor.training.history import clean


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


__all__ = ["TrainResult", "asdict"]
