"""The diagnosis record (a contract: its keys and codes are stable and documented)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SEVERITIES = ("info", "warning", "error")
CODES = (
    "nonfinite_loss",
    "nonfinite_origin",
    "exploding_gradients",
    "vanishing_gradients",
    "dead_units",
    "frequent_overflow",
    "loss_scale_collapse",
    "update_ratio_high",
    "update_ratio_low",
    "loss_divergence",
    "fp16_headroom",
    "memory",
)


@dataclass
class Diagnosis:
    """One finding. ``modules`` are qualified names from ``named_modules()``, most implicated
    first; ``steps`` where it was seen; ``evidence`` the numbers behind it; ``fix`` what to do."""

    code: str
    severity: str
    message: str
    fix: str
    modules: list[str] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {
            k: data[k]
            for k in ("code", "severity", "modules", "steps", "message", "evidence", "fix")
        }


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else -1


def ranked(diagnoses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Most severe first; stable within a severity."""
    return sorted(diagnoses, key=lambda d: -severity_rank(d["severity"]))


def at_or_above(diagnoses: list[dict[str, Any]], level: str) -> bool:
    """True when any diagnosis is at least ``level`` (``never`` is never reached)."""
    if level == "never":
        return False
    return any(severity_rank(d["severity"]) >= severity_rank(level) for d in diagnoses)
